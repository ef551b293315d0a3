//! Misses: one shared fetch per object, filled into the cache where it holds nothing newer.
//!
//! Owns the in-flight fetch table's protocol (entries live in `State::fetching`). Invariant: a
//! fetch runs in its own task and always publishes a result, so no caller waits forever because
//! another one was cancelled; the fill never overwrites a range the cache already holds.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use crate::{CacheError, Inner, SinkError, SinkErrorKind};

/// The object's bucket content, fetched once for all concurrent callers and filled into the
/// cache where it holds nothing newer. The fetch runs in its own task, so a cancelled caller
/// never strands the others.
pub(crate) async fn fetch_shared(inner: &Arc<Inner>, name: &str) -> Result<Bytes, CacheError> {
    let mut rx = {
        let mut st = inner.state();
        if st.closed {
            return Err(CacheError::Closed);
        }
        match st.fetching.get(name) {
            Some(rx) => rx.clone(),
            None => {
                let (tx, rx) = watch::channel(None);
                st.fetching.insert(name.to_owned(), rx.clone());
                tokio::spawn(fetch_task(inner.clone(), name.to_owned(), tx));
                rx
            }
        }
    };
    let result = rx
        .wait_for(Option::is_some)
        .await
        .map_err(|_| CacheError::Closed)?
        .clone();
    match result {
        Some(Ok(base)) => Ok(base),
        Some(Err(source)) => Err(CacheError::Sink {
            name: name.to_owned(),
            source,
        }),
        None => Err(CacheError::Closed),
    }
}

async fn fetch_task(
    inner: Arc<Inner>,
    name: String,
    tx: watch::Sender<Option<Result<Bytes, SinkError>>>,
) {
    let size = inner.config.object_size;
    let result = match inner.sink.fetch(&name).await {
        Ok(Some(b)) if b.len() as u64 == size => Ok(b),
        Ok(Some(b)) => Err(SinkError::new(
            SinkErrorKind::Corrupt,
            format!("object is {} bytes, expected {size}", b.len()),
        )),
        Ok(None) => Ok(Bytes::from(vec![0u8; size as usize])),
        Err(e) => Err(e),
    };
    let mut st = inner.state();
    st.fetching.remove(&name);
    if st.closed {
        return;
    }
    let result = match result {
        Ok(base) => match st.fill(&name, &base) {
            Ok(()) => Ok(base),
            Err(e) => Err(SinkError::new(
                SinkErrorKind::Other,
                format!("filling the cache file: {e}"),
            )),
        },
        Err(e) => Err(e),
    };
    drop(st);
    let _ = tx.send(Some(result));
}
