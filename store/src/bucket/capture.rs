//! An SDK interceptor that keeps two facts the typed S3 outputs drop: the response's `Date`
//! header (the server's clock, for matching it to PostgreSQL's) and, for
//! ListObjectVersions, the document order of `<Version>` and `<DeleteMarker>` entries (the
//! SDK splits them into two lists, but only their interleaving orders a delete marker
//! against versions of the same key written within the same second).

use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    AfterDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use chrono::{DateTime, Utc};

/// One entry kind of a ListObjectVersions page, in document order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Version,
    DeleteMarker,
}

/// What one request's response said, plus when (by the local clock) it was sent and
/// answered.
#[derive(Debug, Default, Clone)]
pub(crate) struct Captured {
    pub date: Option<DateTime<Utc>>,
    pub sent: Option<DateTime<Utc>>,
    pub received: Option<DateTime<Utc>>,
    pub order: Vec<EntryKind>,
}

/// Attach a fresh one to each request (`customize().interceptor(..)`), read it after.
#[derive(Debug, Clone, Default)]
pub(crate) struct Capture(pub Arc<Mutex<Captured>>);

impl Capture {
    pub fn take(&self) -> Captured {
        self.0
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }
}

impl Intercept for Capture {
    fn name(&self) -> &'static str {
        "tidemark-response-capture"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Ok(mut c) = self.0.lock() {
            // A retried attempt restarts the measurement.
            c.sent = Some(Utc::now());
        }
        Ok(())
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response();
        let date = response
            .headers()
            .get("date")
            .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
            .map(|d| d.with_timezone(&Utc));
        let order = response.body().bytes().map(entry_order).unwrap_or_default();
        if let Ok(mut c) = self.0.lock() {
            c.received = Some(Utc::now());
            c.date = date;
            c.order = order;
        }
        Ok(())
    }
}

/// The kinds of ListObjectVersions entries in document order. Keys and other text are
/// XML-escaped, so a literal `<Version>` or `<DeleteMarker>` is always an element.
fn entry_order(body: &[u8]) -> Vec<EntryKind> {
    const VERSION: &[u8] = b"<Version>";
    const MARKER: &[u8] = b"<DeleteMarker>";
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(offset) = body[i..].iter().position(|&b| b == b'<') {
        let at = &body[i + offset..];
        if at.starts_with(VERSION) {
            out.push(EntryKind::Version);
        } else if at.starts_with(MARKER) {
            out.push(EntryKind::DeleteMarker);
        }
        i += offset + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_order_follows_the_document() {
        let xml = b"<ListVersionsResult><Name>b</Name><Version><Key>a&lt;Version&gt;</Key><VersionId>3</VersionId></Version>\
            <DeleteMarker><Key>a</Key><VersionId>2</VersionId></DeleteMarker><Version><Key>a</Key><VersionId>1</VersionId></Version>\
            <VersionIdMarker></VersionIdMarker></ListVersionsResult>";
        assert_eq!(
            entry_order(xml),
            [
                EntryKind::Version,
                EntryKind::DeleteMarker,
                EntryKind::Version
            ]
        );
        assert!(entry_order(b"").is_empty());
    }
}
