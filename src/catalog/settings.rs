//! Gateway identity and settings (key/value), and the log of integrity failures.

use crate::catalog::{Catalog, CatalogError};
use rusqlite::OptionalExtension;

/// Setting keys written at activation. Kept here so no other module spells a key.
pub mod keys {
    pub const GATEWAY_ID: &str = "gateway.id";
    pub const GATEWAY_NAME: &str = "gateway.name";
    pub const BUCKET_URL: &str = "bucket.url";
    pub const KEY_FINGERPRINT: &str = "key.fingerprint";
    pub const ACTIVATED_AT: &str = "gateway.activated_at";
    /// File-handle generation: NFS handles carry it, so they stay valid across restarts.
    pub const FILES_HANDLE_GENERATION: &str = "files.handle_generation";
    /// Clients that held locks or opens when the gateway last ran (hex of their owner ids,
    /// comma-separated): after a restart only they may reclaim, in the grace period.
    pub const FILES_LOCK_CLIENTS: &str = "files.lock_clients";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegrityEvent {
    pub at_unix: i64,
    pub object: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IntegritySummary {
    pub count: u64,
    pub last: Option<IntegrityEvent>,
}

impl Catalog {
    pub fn setting(&self, key: &str) -> Result<Option<String>, CatalogError> {
        Ok(self
            .conn()
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Sets several settings in one transaction: all or none.
    pub fn set_settings(&self, pairs: &[(&str, &str)]) -> Result<(), CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for (key, value) in pairs {
            tx.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records that `object` failed verification, stamped with the current time.
    pub fn record_integrity_event(&self, object: &str, reason: &str) -> Result<(), CatalogError> {
        self.conn().execute(
            "INSERT INTO integrity_events (at_unix, object, reason)
             VALUES (CAST(strftime('%s', 'now') AS INTEGER), ?1, ?2)",
            rusqlite::params![object, reason],
        )?;
        Ok(())
    }

    pub fn integrity_summary(&self) -> Result<IntegritySummary, CatalogError> {
        let conn = self.conn();
        let count: i64 =
            conn.query_row("SELECT count(*) FROM integrity_events", [], |r| r.get(0))?;
        let last = conn
            .query_row(
                "SELECT at_unix, object, reason FROM integrity_events ORDER BY id DESC LIMIT 1",
                [],
                |r| {
                    Ok(IntegrityEvent {
                        at_unix: r.get(0)?,
                        object: r.get(1)?,
                        reason: r.get(2)?,
                    })
                },
            )
            .optional()?;
        Ok(IntegritySummary {
            count: u64::try_from(count).unwrap_or(0),
            last,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_and_events() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("c.db")).unwrap();
        assert_eq!(c.setting(keys::GATEWAY_NAME).unwrap(), None);
        c.set_settings(&[(keys::GATEWAY_NAME, "a"), (keys::BUCKET_URL, "s3://b")])
            .unwrap();
        c.set_settings(&[(keys::GATEWAY_NAME, "b")]).unwrap();
        assert_eq!(c.setting(keys::GATEWAY_NAME).unwrap().as_deref(), Some("b"));
        assert_eq!(c.integrity_summary().unwrap(), IntegritySummary::default());
        for i in 0..3 {
            c.record_integrity_event(&format!("chunks/{i}"), "x")
                .unwrap();
        }
        let s = c.integrity_summary().unwrap();
        assert_eq!(s.count, 3);
        let last = s.last.unwrap();
        assert_eq!(last.object, "chunks/2");
        assert!(
            last.at_unix > 1_700_000_000,
            "stamped with the current time"
        );
    }
}
