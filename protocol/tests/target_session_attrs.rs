//! Several hosts and `target_session_attrs` on walsender connections against a real
//! primary and its streaming standby, on every supported major: the walsender reports
//! `in_hot_standby` and `default_transaction_read_only` at startup, so each setting
//! picks the host libpq would, skipping hosts that are down.

use tidemark_fixtures::{pg_majors, Cluster, ClusterOptions};
use tidemark_protocol::{ConnInfo, ReplicationClient, ReplicationError};

fn conninfo(ports: &[u16], attrs: &str) -> ConnInfo {
    let hosts = vec!["127.0.0.1"; ports.len()].join(",");
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let attrs = if attrs.is_empty() {
        String::new()
    } else {
        format!(" target_session_attrs={attrs}")
    };
    ConnInfo::parse_with_env(
        &format!(
            "host={hosts} port={} user=postgres sslmode=disable connect_timeout=5{attrs}",
            ports.join(",")
        ),
        &|_| None,
    )
    .unwrap()
}

async fn reached(ports: &[u16], attrs: &str) -> Result<String, ReplicationError> {
    ReplicationClient::connect(&conninfo(ports, attrs))
        .await
        .map(|c| c.host().to_string())
}

#[tokio::test]
async fn target_session_attrs_picks_the_primary_or_the_standby_on_every_major() {
    let majors = pg_majors();
    assert!(!majors.is_empty(), "no PostgreSQL major to test");
    for major in majors {
        let opts = ClusterOptions {
            major,
            wal_segsize_mb: 1,
            ..ClusterOptions::default()
        };
        let primary = Cluster::start(opts).expect("primary");
        let standby = primary.start_standby().expect("standby");
        primary.wait_streaming(1).expect("standby streams");
        // A port nothing listens on: a host that is down.
        let down = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (p, s) = (primary.port(), standby.port());
        let at = |port: u16| format!("127.0.0.1:{port}");
        for (attrs, order, expected) in [
            ("", [s, p], s),
            ("any", [down, s], s),
            ("read-write", [s, p], p),
            ("primary", [s, p], p),
            ("read-only", [p, s], s),
            ("standby", [p, s], s),
            ("prefer-standby", [p, s], s),
        ] {
            let got = reached(&order, attrs).await;
            assert_eq!(got.ok(), Some(at(expected)), "PG {major} {attrs} {order:?}");
        }
        let got = reached(&[down, s, p], "primary").await.unwrap();
        assert_eq!(
            got,
            at(p),
            "PG {major}: a down host and a standby are skipped"
        );
        // prefer-standby falls back to the primary when no standby is reachable.
        assert_eq!(reached(&[down, p], "prefer-standby").await.unwrap(), at(p));
        // No host matches: every host's reason, and worth retrying (a standby may be
        // promoted).
        let err = reached(&[down, s], "read-write").await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&at(down)) && text.contains("a standby (in hot standby)"),
            "PG {major}: {text}"
        );
        assert!(err.is_connection_failure(), "PG {major}: {err:?}");
        // One host that is not wanted: its own error.
        let err = reached(&[s], "primary").await.unwrap_err();
        assert!(
            matches!(err, ReplicationError::WrongRole { .. }),
            "PG {major}: {err:?}"
        );
    }
}
