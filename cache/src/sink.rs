//! The seam between the cache and the bucket: the [`Sink`] the gateway implements.
//!
//! Owns only the contract; the cache never knows what is behind it. Key invariant: the cache
//! hands the sink whole objects (exactly `object_size` bytes) and treats `upload` as idempotent,
//! so replaying the journal after a crash may upload the same content twice.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

/// A boxed future, so `Sink` stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where dirty objects go and where missing pages come from.
///
/// Contract: `fetch` returns the object's last successfully uploaded content (or `None` if it was
/// never uploaded, which reads as zeros); `upload` returns only once the content is durable in the
/// bucket. Both may be called concurrently for different objects; the cache never runs two
/// uploads of the same object at once. Futures may be dropped (on shutdown) at any await point.
pub trait Sink: Send + Sync + 'static {
    /// The object's current content (exactly `object_size` bytes), or `None` if never written.
    fn fetch(&self, name: &str) -> BoxFuture<'_, Result<Option<Bytes>, SinkError>>;
    /// Make `data` (exactly `object_size` bytes) the object's content, durably. Idempotent.
    fn upload(&self, name: &str, data: Bytes) -> BoxFuture<'_, Result<(), SinkError>>;
}

/// What went wrong in the sink, as far as the cache's callers must tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkErrorKind {
    /// The object failed an integrity check: a medium error, never retried into a wrong answer.
    Corrupt,
    /// The bucket is unreachable for now: "not ready, retry".
    Unavailable,
    /// Anything else; the uploader retries it like `Unavailable`.
    Other,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("sink {kind:?}: {message}")]
pub struct SinkError {
    pub kind: SinkErrorKind,
    pub message: String,
}

impl SinkError {
    pub fn new(kind: SinkErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}
