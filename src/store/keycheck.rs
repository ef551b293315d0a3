//! Pairing a bucket with a key: the `gateway/keycheck` object (docs/design.md §3).
//!
//! Owns the one object that tells a wrong key before anything else is read: a frame sealed under
//! the master key holding a known value. Invariant: a bucket that holds a key check is never
//! given a second one; a gateway whose key does not open it stops with `StoreError::WrongKey`.
//! Two activations racing on one bucket are told apart where the server honours conditional
//! writes (RGW, AWS, moto: the key check is created with If-None-Match, and the loser verifies
//! the winner's); Garage ignores the condition, so there the last writer wins, as before
//! (docs/compatibility.md).

use bytes::Bytes;

use crate::store::frame::{Codec, FrameError};
use crate::store::keys::KEYCHECK;
use crate::store::{Bucket, StoreError};

const CONTENT: &[u8] = b"tidegate key check v1\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pairing {
    /// The bucket had no key check; one was written for this key.
    Created,
    /// The bucket's key check opened with this key.
    Verified,
}

/// Verifies the bucket's key check against `codec`'s key; when the bucket has none, writes one
/// if `create` is set and otherwise reports the bucket as not activated.
pub async fn ensure(bucket: &Bucket, codec: &Codec, create: bool) -> Result<Pairing, StoreError> {
    match bucket.get(KEYCHECK).await {
        Ok(frame) => verify(bucket, codec, frame),
        Err(StoreError::NotFound { .. }) if create => create_once(bucket, codec).await,
        Err(StoreError::NotFound { .. }) => Err(StoreError::NotActivated {
            bucket: bucket.describe().to_owned(),
            key: KEYCHECK,
        }),
        Err(e) => Err(e),
    }
}

fn verify(bucket: &Bucket, codec: &Codec, frame: Bytes) -> Result<Pairing, StoreError> {
    match codec.open(KEYCHECK, Vec::from(frame)) {
        Ok(content) if content.as_ref() == CONTENT => Ok(Pairing::Verified),
        Ok(_) | Err(FrameError::Corrupt { .. }) => Err(StoreError::WrongKey {
            bucket: bucket.describe().to_owned(),
            key: KEYCHECK,
            fingerprint: codec.key().fingerprint(),
        }),
        Err(e) => Err(StoreError::Corrupt(e)),
    }
}

/// Writes the key check unless one appeared since the caller saw none (another gateway
/// activating at the same moment); then that one is verified instead. On a server that ignores
/// If-None-Match this overwrites, which is the behaviour before conditional writes were used.
pub(crate) async fn create_once(bucket: &Bucket, codec: &Codec) -> Result<Pairing, StoreError> {
    let frame = codec.seal(KEYCHECK, CONTENT).map_err(StoreError::Corrupt)?;
    if bucket.put_if_absent(KEYCHECK, Bytes::from(frame)).await? {
        return Ok(Pairing::Created);
    }
    verify(bucket, codec, bucket.get(KEYCHECK).await?)
}
