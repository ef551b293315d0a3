//! Who writes a gateway's catalog copies: the sealed `gateway/<id>/writer` record
//! (docs/design.md §2, docs/compatibility.md).
//!
//! A daemon claims the record before its first catalog copy and checks it before every later
//! one. Where the server honours conditional writes, the record is created with If-None-Match
//! and replaced only with If-Match on the ETag this daemon read or last wrote, so when a second
//! daemon runs as the same gateway (an appliance recovered while the old one still runs) the
//! newer one takes the record over and the older one's next check is refused with
//! `StoreError::Conflict` naming the newer one, instead of the two interleaving copies and
//! pruning each other's. Where the server ignores conditions (Garage), the claim is a plain PUT
//! and the checks are skipped: nothing is detected, as before this record existed. Invariant: a
//! refused check is reported, never retried as a plain write.

use bytes::Bytes;

use crate::store::{ChunkStore, Precondition, StoreError};

const MAGIC: &str = "tidegate writer v1\n";

/// One running daemon, as its record in the bucket names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    /// Random per daemon start: two daemons with one gateway id still differ here.
    pub instance: String,
    /// The gateway's configured name.
    pub name: String,
    pub host: String,
    pub since_unix: i64,
}

impl Writer {
    fn encode(&self) -> Bytes {
        let one_line = |s: &str| s.replace(['\n', '\r'], " ");
        Bytes::from(format!(
            "{MAGIC}instance {}\nname {}\nhost {}\nsince {}\n",
            one_line(&self.instance),
            one_line(&self.name),
            one_line(&self.host),
            self.since_unix
        ))
    }

    fn decode(data: &[u8]) -> Option<Writer> {
        let text = std::str::from_utf8(data).ok()?.strip_prefix(MAGIC)?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .map(str::to_owned)
        };
        Some(Writer {
            instance: field("instance")?,
            name: field("name")?,
            host: field("host")?,
            since_unix: field("since")?.parse().ok()?,
        })
    }

    /// `gateway "x" on host h (instance i, running since …)`, for errors and logs.
    pub fn describe(&self) -> String {
        format!(
            "gateway \"{}\" on host {} (instance {}, running since {})",
            self.name,
            self.host,
            self.instance,
            crate::store::rfc3339(self.since_unix)
        )
    }
}

/// This daemon's hold on a writer record.
#[derive(Debug)]
pub struct Claim {
    key: String,
    me: Writer,
    /// The ETag of the record as this daemon last wrote it; `None` when the server gave none or
    /// ignores conditions, and then nothing is checked.
    etag: Option<String>,
}

impl Claim {
    /// Makes `me` the writer of the record at `key`, replacing whoever wrote it before (a
    /// restarted or recovered gateway takes over from its earlier self). Returns the claim and
    /// the writer it replaced. Another daemon claiming between this one's read and write is
    /// `StoreError::Conflict` naming it.
    pub async fn take(
        chunks: &ChunkStore,
        key: &str,
        me: Writer,
    ) -> Result<(Claim, Option<Writer>), StoreError> {
        let conditional = chunks.bucket().conditional_writes().await?;
        let (previous, condition) = match chunks.get_sealed_tagged(key).await {
            Ok((data, etag)) => (Writer::decode(&data), etag.map(Precondition::Matches)),
            Err(StoreError::NotFound { .. }) => (None, Some(Precondition::Absent)),
            Err(e) => return Err(e),
        };
        let condition = condition.filter(|_| conditional);
        let written = match chunks
            .put_sealed_if(key, me.encode(), condition.as_ref())
            .await
        {
            Err(StoreError::Conflict { .. }) => return Err(taken_over(chunks, key).await),
            other => other?,
        };
        let claim = Claim {
            key: key.to_owned(),
            me,
            etag: written.filter(|_| conditional),
        };
        Ok((claim, previous))
    }

    /// Whether this daemon still holds the record: rewrites it with If-Match on the ETag it last
    /// wrote. `StoreError::Conflict` naming the other daemon when another took it over. A no-op
    /// where conditions are ignored.
    pub async fn check(&mut self, chunks: &ChunkStore) -> Result<(), StoreError> {
        let Some(etag) = self.etag.clone() else {
            return Ok(());
        };
        match chunks
            .put_sealed_if(
                &self.key,
                self.me.encode(),
                Some(&Precondition::Matches(etag)),
            )
            .await
        {
            Ok(etag) => {
                self.etag = etag;
                Ok(())
            }
            Err(StoreError::Conflict { .. }) => Err(taken_over(chunks, &self.key).await),
            Err(e) => Err(e),
        }
    }

    /// True when the server honours conditions and `check` really checks.
    pub fn is_checked(&self) -> bool {
        self.etag.is_some()
    }
}

/// The conflict error for `key`, naming the writer its record names now.
async fn taken_over(chunks: &ChunkStore, key: &str) -> StoreError {
    let by = match chunks.get_sealed(key).await {
        Ok(data) => Writer::decode(&data).map_or_else(
            || "another writer (its record does not parse)".to_owned(),
            |w| w.describe(),
        ),
        Err(e) => format!(
            "another writer (its record cannot be read: {})",
            crate::error_chain::one_line(&e)
        ),
    };
    StoreError::Conflict {
        bucket: chunks.bucket().describe().to_owned(),
        key: key.to_owned(),
        by,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_reject_other_text() {
        let w = Writer {
            instance: "0123456789abcdef".into(),
            name: "gw one\nforged".into(),
            host: "host-a".into(),
            since_unix: 1_700_000_000,
        };
        let back = Writer::decode(&w.encode()).unwrap();
        assert_eq!(back.name, "gw one forged");
        assert_eq!(back.instance, w.instance);
        assert_eq!(back.since_unix, w.since_unix);
        assert!(back.describe().contains("2023-11-14T22:13:20Z"));
        for bad in [
            &b""[..],
            b"tidegate writer v1\n",
            b"SQLite format 3\0",
            b"\xff\xfe",
        ] {
            assert_eq!(Writer::decode(bad), None);
        }
    }
}
