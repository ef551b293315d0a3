//! The store's contract suite (garage `src/db/test.rs` style): one function that every bucket
//! backend must pass, run by unit tests on `file://` and by the integration tests on a real S3
//! server (Garage).
//!
//! Test support only; nothing on the data path calls it. It writes under a fresh prefix of its own
//! and deletes what it wrote, so it can run against a bucket that holds other data. `inject`
//! wraps a bucket with a server difference on purpose, to show that the suite catches one.

use std::sync::Arc;

use bytes::Bytes;

use crate::store::device::{Md5, multipart_etag};
use crate::store::frame::CorruptReason;
use crate::store::keys::hex;
use crate::store::{Bucket, ChunkRef, ChunkStore, Codec, FrameError, MasterKey, StoreError};

mod inject;
pub use inject::with_unsuffixed_multipart_etags;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn md5(data: &[u8]) -> [u8; 16] {
    let mut m = Md5::default();
    m.update(data);
    m.finish()
}

/// The ETag forms the device import's verification relies on (gateway/import/transfer.rs): a
/// single PUT's ETag is the MD5 of its bytes, a multipart upload's the MD5 of its parts' MD5s
/// followed by `-<parts>`, and a listing reports the same ETag as a HEAD. Only where the store
/// has content ETags at all (an S3 server; a `file://` bucket's are file versions, and the import
/// hashes the bytes read back there instead).
async fn etags(
    bucket: &Bucket,
    dir: &str,
    small: (&str, &[u8]),
    large: (&str, &[u8]),
) -> Result<(), String> {
    if !bucket.keeps_user_metadata() {
        return Ok(());
    }
    let etag_of = |key: &str| {
        let key = key.to_owned();
        async move {
            let head = bucket.head_object(&key).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(
                head.and_then(|h| h.etag)
                    .map(|e| e.trim_matches('"').to_owned())
                    .unwrap_or_default(),
            )
        }
    };
    let want = hex(&md5(small.1));
    let got = etag_of(small.0).await?;
    ensure!(
        got == want,
        "single-part ETag {got:?}, expected the MD5 {want}"
    );
    let parts: Vec<[u8; 16]> = large.1.chunks(bucket.part_size).map(md5).collect();
    let want = multipart_etag(&parts);
    let got = etag_of(large.0).await?;
    ensure!(
        got == want,
        "multipart ETag {got:?}, expected {want} (MD5 of the part MD5s, then -<parts>)"
    );
    let listed = bucket.list(dir).await.map_err(|e| e.to_string())?;
    let listed = listed
        .iter()
        .find(|o| o.key == large.0)
        .and_then(|o| o.etag.clone());
    ensure!(
        listed.as_deref() == Some(got.as_str()),
        "listing gave ETag {listed:?}, HEAD gave {got}"
    );
    Ok(())
}

/// Object operations: put/get/range/head/list/delete, missing objects, multipart, ETag forms.
/// `large` is the size of the object that must go up as a multipart upload.
pub async fn objects(bucket: &Bucket, run: &str, large: usize) -> Result<(), String> {
    let p = format!("contract/{run}");
    let small = pattern(10_000, 1);
    let key = format!("{p}/small");
    bucket
        .put(&key, small.clone())
        .await
        .map_err(|e| e.to_string())?;
    let back = bucket.get(&key).await.map_err(|e| e.to_string())?;
    ensure!(back == small, "get returned different bytes");
    let range = bucket
        .get_range(&key, 100..1100)
        .await
        .map_err(|e| e.to_string())?;
    ensure!(
        range == small.slice(100..1100),
        "ranged get returned the wrong bytes"
    );
    ensure!(
        bucket.head(&key).await.map_err(|e| e.to_string())? == Some(10_000),
        "head size"
    );

    let missing = format!("{p}/missing");
    match bucket.get(&missing).await {
        Err(StoreError::NotFound { key, .. }) => ensure!(key == missing, "NotFound names {key}"),
        other => return Err(format!("get of a missing object gave {other:?}")),
    }
    ensure!(
        bucket
            .head(&missing)
            .await
            .map_err(|e| e.to_string())?
            .is_none(),
        "head of a missing object"
    );
    bucket
        .delete(&missing)
        .await
        .map_err(|e| format!("deleting a missing object must succeed: {e}"))?;

    // Overwrite replaces the whole object.
    let other = pattern(300, 9);
    bucket
        .put(&key, other.clone())
        .await
        .map_err(|e| e.to_string())?;
    ensure!(
        bucket.get(&key).await.map_err(|e| e.to_string())? == other,
        "overwrite"
    );

    let big = pattern(large, 3);
    let big_key = format!("{p}/large");
    bucket
        .put(&big_key, big.clone())
        .await
        .map_err(|e| e.to_string())?;
    ensure!(
        bucket.get(&big_key).await.map_err(|e| e.to_string())? == big,
        "multipart object read back differently"
    );
    let tail = (large as u64 - 5000)..(large as u64);
    ensure!(
        bucket
            .get_range(&big_key, tail.clone())
            .await
            .map_err(|e| e.to_string())?
            == big.slice(large - 5000..),
        "ranged get across parts"
    );
    etags(bucket, &format!("{p}/"), (&key, &other), (&big_key, &big)).await?;

    for i in 0..5 {
        bucket
            .put(&format!("{p}/dir/{i}"), Bytes::from(vec![i; 10]))
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut listed: Vec<String> = bucket
        .list(&format!("{p}/dir/"))
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|o| o.key)
        .collect();
    listed.sort();
    let want: Vec<String> = (0..5).map(|i| format!("{p}/dir/{i}")).collect();
    ensure!(listed == want, "list gave {listed:?}");

    for o in bucket
        .list(&format!("{p}/"))
        .await
        .map_err(|e| e.to_string())?
    {
        bucket.delete(&o.key).await.map_err(|e| e.to_string())?;
    }
    ensure!(
        bucket
            .list(&format!("{p}/"))
            .await
            .map_err(|e| e.to_string())?
            .is_empty(),
        "objects left after delete"
    );
    Ok(())
}

/// Whether the server honours a conditional create (PUT with If-None-Match: *): `Ok(true)` if a
/// second create of the same key is refused and the first object kept, `Ok(false)` if the
/// second overwrites it (the condition ignored), an error for anything else. The suite asserts
/// the answer each server must give, as docs/compatibility.md states it.
pub async fn conditional_create(bucket: &Bucket, run: &str) -> Result<bool, String> {
    let key = format!("contract/{run}/conditional");
    bucket.delete(&key).await.map_err(|e| e.to_string())?;
    let first = bucket
        .put_if_absent(&key, Bytes::from_static(b"first"))
        .await
        .map_err(|e| e.to_string())?;
    ensure!(first, "a create of an absent key was refused");
    let second = bucket
        .put_if_absent(&key, Bytes::from_static(b"second"))
        .await
        .map_err(|e| e.to_string())?;
    let now = bucket.get(&key).await.map_err(|e| e.to_string())?;
    bucket.delete(&key).await.map_err(|e| e.to_string())?;
    match (second, &now[..]) {
        (false, b"first") => Ok(true),
        (true, b"second") => Ok(false),
        (refused, body) => Err(format!(
            "second create {} but the object holds {:?}",
            if refused { "succeeded" } else { "was refused" },
            String::from_utf8_lossy(body)
        )),
    }
}

/// Two gateways pairing one bucket at the same moment, the second (another key) having seen no
/// key check: on a server that honours conditional writes the second is refused with `WrongKey`
/// and the first's key check stays; on one that ignores them (Garage) the second overwrites it,
/// as it always has. `conditional` says which the server is. Uses `gateway/keycheck` of the
/// bucket given, so give it a prefix of its own.
pub async fn pairing_race(bucket: &Bucket, conditional: bool) -> Result<(), String> {
    use crate::store::keycheck::{Pairing, create_once, ensure};
    let first = Codec::new(MasterKey::generate().map_err(|e| e.to_string())?);
    let second = Codec::new(MasterKey::generate().map_err(|e| e.to_string())?);
    let paired = ensure(bucket, &first, true)
        .await
        .map_err(|e| e.to_string())?;
    ensure!(paired == Pairing::Created, "first pairing gave {paired:?}");
    let raced = create_once(bucket, &second).await;
    let survivor = if conditional { &first } else { &second };
    let result = match (conditional, raced) {
        (true, Err(StoreError::WrongKey { .. })) | (false, Ok(Pairing::Created)) => {
            match ensure(bucket, survivor, false).await {
                Ok(Pairing::Verified) => Ok(()),
                other => Err(format!("the surviving key check gave {other:?}")),
            }
        }
        (_, other) => Err(format!("the racing pairing gave {other:?}")),
    };
    bucket
        .delete(crate::store::keys::KEYCHECK)
        .await
        .map_err(|e| e.to_string())?;
    result
}

/// Two daemons running as one gateway on one bucket (the old appliance still up after its
/// replacement was recovered). `conditional` is what `Bucket::conditional_writes` must answer
/// for this server. Where honoured: the writer record taken over by the second daemon makes the
/// first one's next check `Conflict` naming the second, and a second copy at a copy's key is
/// refused rather than overwriting it. Where ignored (Garage): neither is detected, the
/// behaviour before conditional writes were used. Uses `gateway/race/…` of the bucket given.
pub async fn catalog_copy_race(bucket: Arc<Bucket>, conditional: bool) -> Result<(), String> {
    use crate::store::keys::{catalog_backup, catalog_writer, part_key};
    use crate::store::writer::{Claim, Writer};
    let honoured = bucket
        .conditional_writes()
        .await
        .map_err(|e| e.to_string())?;
    ensure!(
        honoured == conditional,
        "conditional writes honoured: {honoured}"
    );
    let chunks = ChunkStore::new(
        bucket.clone(),
        Codec::new(MasterKey::generate().map_err(|e| e.to_string())?),
    );
    let writer = |instance: &str, name: &str| Writer {
        instance: instance.to_owned(),
        name: name.to_owned(),
        host: "contract".to_owned(),
        since_unix: 1_700_000_000,
    };
    let record = catalog_writer("race");
    let (mut old, previous) = Claim::take(&chunks, &record, writer("0a", "old appliance"))
        .await
        .map_err(|e| e.to_string())?;
    ensure!(
        previous.is_none(),
        "a fresh record had a writer: {previous:?}"
    );
    old.check(&chunks).await.map_err(|e| e.to_string())?;
    let (_new, previous) = Claim::take(&chunks, &record, writer("0b", "recovered appliance"))
        .await
        .map_err(|e| e.to_string())?;
    ensure!(
        previous.as_ref().map(|p| p.instance.as_str()) == Some("0a"),
        "the takeover saw {previous:?}"
    );
    let checked = old.check(&chunks).await;
    match (conditional, &checked) {
        (true, Err(StoreError::Conflict { by, .. })) => ensure!(
            by.contains("\"recovered appliance\"") && by.contains("instance 0b"),
            "the conflict names {by}"
        ),
        (false, Ok(())) => {}
        _ => return Err(format!("the old writer's check gave {checked:?}")),
    }

    let copy = catalog_backup("race", 1);
    let file = std::env::temp_dir().join(format!("tidegate-contract-{}", std::process::id()));
    std::fs::write(&file, b"first copy").map_err(|e| e.to_string())?;
    // Created only if absent where the server can be trusted with it, as the daemon does.
    let first = chunks
        .put_sealed_file(&copy, &file, 1 << 20, conditional)
        .await;
    std::fs::write(&file, b"second copy").map_err(|e| e.to_string())?;
    let second = chunks
        .put_sealed_file(&copy, &file, 1 << 20, conditional)
        .await;
    let kept = chunks.get_sealed_file(&copy, &file).await;
    let kept = kept.map(|_| std::fs::read(&file).unwrap_or_default());
    let _ = std::fs::remove_file(&file);
    for key in [record, part_key(&copy, 1), copy] {
        bucket.delete(&key).await.map_err(|e| e.to_string())?;
    }
    first.map_err(|e| e.to_string())?;
    match (conditional, second, kept) {
        (true, Err(StoreError::Conflict { .. }), Ok(k)) if k == b"first copy" => Ok(()),
        (false, Ok(_), Ok(k)) if k == b"second copy" => Ok(()),
        (_, second, kept) => Err(format!(
            "a second copy at one key gave {second:?}, leaving {kept:?}"
        )),
    }
}

/// Chunks through the codec: round trip, zero chunks, dedup, and a tampered object reported as
/// corrupt with its name. `tamper` overwrites an object with the given bytes behind the store's
/// back (a file write for `file://`, a raw PUT for S3).
pub async fn chunks(bucket: Arc<Bucket>) -> Result<(), String> {
    let codec = Codec::new(MasterKey::generate().map_err(|e| e.to_string())?);
    let store = ChunkStore::new(bucket.clone(), codec);
    let data = pattern(1 << 20, 7);
    let ChunkRef::Stored(id) = store.put(data.clone()).await.map_err(|e| e.to_string())? else {
        return Err("non-zero data stored as a zero chunk".into());
    };
    ensure!(
        store.get(id).await.map_err(|e| e.to_string())? == data,
        "chunk read back differently"
    );
    ensure!(
        store
            .put(pattern(1 << 20, 7))
            .await
            .map_err(|e| e.to_string())?
            == ChunkRef::Stored(id),
        "equal data must get the same id"
    );
    let zero = store
        .put(Bytes::from(vec![0u8; 1 << 20]))
        .await
        .map_err(|e| e.to_string())?;
    ensure!(zero == ChunkRef::Zero, "zero chunk was stored");

    // Tamper: flip one byte in the middle of the stored frame.
    let key = id.object_key();
    let mut raw = bucket.get(&key).await.map_err(|e| e.to_string())?.to_vec();
    let mid = raw.len() / 2;
    raw[mid] ^= 0x40;
    bucket
        .put(&key, raw.into())
        .await
        .map_err(|e| e.to_string())?;
    match store.get(id).await {
        Err(StoreError::Corrupt(FrameError::Corrupt { object, reason })) => {
            ensure!(object == key, "corruption named {object}, not {key}");
            ensure!(reason == CorruptReason::Authentication, "reason {reason}");
        }
        other => return Err(format!("tampered chunk gave {other:?}")),
    }
    ensure!(store.corrupt_reads() == 1, "corruption not counted");
    bucket.delete(&key).await.map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BucketConfig;

    #[tokio::test]
    async fn local_directory_passes_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = BucketConfig::local(dir.path().join("bucket"));
        cfg.multipart_threshold = 5 << 20;
        cfg.part_size = 5 << 20;
        let bucket = Arc::new(Bucket::open(&cfg, true).unwrap());
        bucket.check().await.unwrap();
        objects(&bucket, "local", 12 << 20).await.unwrap();
        assert_eq!(conditional_create(&bucket, "local").await, Ok(true));
        pairing_race(&bucket, true).await.unwrap();
        // A local directory creates conditionally but cannot compare ETags: not honoured.
        catalog_copy_race(bucket.clone(), false).await.unwrap();
        chunks(bucket).await.unwrap();
    }

    #[tokio::test]
    async fn missing_local_bucket_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = BucketConfig::local(dir.path().join("nope"));
        let err = Bucket::open(&cfg, false).unwrap_err();
        assert!(matches!(err, StoreError::NoSuchBucket { .. }), "{err}");
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
