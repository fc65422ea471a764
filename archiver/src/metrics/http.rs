//! The `/metrics` endpoint: HTTP/1.1 on hyper, one task per connection. It never stops
//! archiving: a failed accept or connection is logged and the server carries on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Metrics;
use crate::error::ArchiverError;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Prometheus's classic text format, for scrapers that do not ask for OpenMetrics
/// (`curl`, `promtool check metrics`, older agents).
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Listen on `addr` (before streaming starts, so a taken port is refused at once).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ArchiverError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ArchiverError::MetricsListen { addr, source })
}

/// Answer scrapes on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<u32>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = respond(&metrics, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "metrics endpoint: connection failed");
            }
        });
    }
}

fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body, content_type) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let openmetrics = req
                .headers()
                .get_all(ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/openmetrics-text"));
            match openmetrics {
                true => (StatusCode::OK, metrics.render(), OPENMETRICS),
                false => (
                    StatusCode::OK,
                    prometheus_text(&metrics.render()),
                    PROMETHEUS_TEXT,
                ),
            }
        }
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET\n".to_string(),
            "text/plain; charset=utf-8",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "not found; the metrics are at /metrics\n".to_string(),
            "text/plain; charset=utf-8",
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}

/// OpenMetrics text as Prometheus's 0.0.4 text format: a counter family is named with
/// its `_total` suffix, and the `# UNIT` and `# EOF` lines that format lacks are left out.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{tag}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_take_their_total_name_and_openmetrics_only_lines_go() {
        let om = "# HELP a_bytes Stored.\n# TYPE a_bytes counter\n# UNIT a_bytes bytes\na_bytes_total 3\n\
                  # HELP g Gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            prometheus_text(om),
            "# HELP a_bytes_total Stored.\n# TYPE a_bytes_total counter\na_bytes_total 3\n\
             # HELP g Gauge.\n# TYPE g gauge\ng 1\n"
        );
    }
}
