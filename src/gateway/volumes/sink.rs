//! The cache's sink for volume and tape chunks: where a cached chunk comes from and goes to.
//!
//! `upload` seals and PUTs the chunk, then records it in the chunk map — in that order, so the
//! map never points at a chunk that is not in the bucket (catalog::volumes invariant). An
//! all-zero chunk removes its map row instead: it reads as zeros and costs nothing.
//! `fetch` resolves the map and reads the chunk back, verified; a map entry whose chunk is
//! missing or fails verification is `Corrupt`, never zeros.

use std::sync::Arc;

use bytes::Bytes;
use tidegate_cache::{BoxFuture, Sink, SinkError, SinkErrorKind};

use crate::catalog::Catalog;
use crate::gateway::volumes::parse_object_name;

/// Whose chunk map a cache object belongs to.
#[derive(Debug, Clone, Copy)]
enum Owner {
    Volume(i64),
    Tape(i64),
}

fn owner_of(name: &str) -> Option<(Owner, u64)> {
    if let Some((v, i)) = parse_object_name(name) {
        return Some((Owner::Volume(v), i));
    }
    crate::gateway::tapes::parse_object_name(name).map(|(t, i)| (Owner::Tape(t), i))
}
use crate::store::{ChunkId, ChunkRef, ChunkStore, StoreError};

#[derive(Debug)]
pub struct BucketSink {
    catalog: Arc<Catalog>,
    chunks: Arc<ChunkStore>,
}

impl BucketSink {
    pub fn new(catalog: Arc<Catalog>, chunks: Arc<ChunkStore>) -> Self {
        Self { catalog, chunks }
    }
}

fn not_ours(name: &str) -> SinkError {
    SinkError::new(
        SinkErrorKind::Other,
        format!("{name:?} is not a volume or tape chunk"),
    )
}

fn catalog_error(e: crate::catalog::CatalogError) -> SinkError {
    SinkError::new(SinkErrorKind::Other, e.to_string())
}

fn store_error(e: StoreError) -> SinkError {
    let kind = match &e {
        // A chunk the map points at must exist and verify; anything else is damage.
        StoreError::Corrupt(_) | StoreError::NotFound { .. } | StoreError::WrongKey { .. } => {
            SinkErrorKind::Corrupt
        }
        StoreError::Unreachable { .. }
        | StoreError::NoSuchBucket { .. }
        | StoreError::AccessDenied { .. }
        | StoreError::NotActivated { .. }
        | StoreError::Setup { .. }
        | StoreError::Conflict { .. }
        | StoreError::Other { .. } => SinkErrorKind::Unavailable,
    };
    SinkError::new(kind, e.to_string())
}

impl Sink for BucketSink {
    fn fetch(&self, name: &str) -> BoxFuture<'_, Result<Option<Bytes>, SinkError>> {
        let parsed = owner_of(name);
        let name = name.to_owned();
        Box::pin(async move {
            let (owner, index) = parsed.ok_or_else(|| not_ours(&name))?;
            let mapped = match owner {
                Owner::Volume(v) => self.catalog.chunk(v, index),
                Owner::Tape(t) => self.catalog.tape_chunk(t, index),
            };
            let Some(id) = mapped.map_err(catalog_error)? else {
                return Ok(None);
            };
            let id = ChunkId(id);
            match self.chunks.get(id).await {
                Ok(data) => Ok(Some(data)),
                Err(e) => {
                    let e = store_error(e);
                    if e.kind == SinkErrorKind::Corrupt {
                        // Counted where `status` looks, not only in this process's memory.
                        if let Err(db) = self
                            .catalog
                            .record_integrity_event(&id.object_key(), &e.message)
                        {
                            tracing::error!(error = %db, "recording an integrity failure");
                        }
                    }
                    Err(e)
                }
            }
        })
    }

    fn upload(&self, name: &str, data: Bytes) -> BoxFuture<'_, Result<(), SinkError>> {
        let parsed = owner_of(name);
        let name = name.to_owned();
        Box::pin(async move {
            let (owner, index) = parsed.ok_or_else(|| not_ours(&name))?;
            let stored = self.chunks.put(data).await.map_err(store_error)?;
            let id = match stored {
                ChunkRef::Zero => None,
                ChunkRef::Stored(id) => Some(id.0),
            };
            // A synchronous SQLite commit (an fsync): on a blocking thread, not on one of the
            // runtime's few workers, where it stalled every client's I/O once per upload.
            let catalog = self.catalog.clone();
            tokio::task::spawn_blocking(move || match owner {
                Owner::Volume(v) => catalog.set_chunk(v, index, id.as_ref()),
                Owner::Tape(t) => catalog.set_tape_chunk(t, index, id.as_ref()),
            })
            .await
            .map_err(|e| SinkError::new(SinkErrorKind::Other, e.to_string()))?
            .map_err(catalog_error)
        })
    }
}
