//! Snapshot jobs and schedules.
//!
//! A row tracks a snapshot from request to completion and caches its manifest's summary; the
//! manifest in the bucket is the truth (a `complete` row whose manifest is gone is reported, and
//! a manifest without a row is adopted by `recover`). Requests are rows in state `requested`:
//! the CLI inserts them and the daemon takes them, so the two need no other channel.

use rusqlite::{OptionalExtension, params};

use crate::catalog::volumes::as_i64;
use crate::catalog::{Catalog, CatalogError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotState {
    Requested,
    Staging,
    Uploading,
    Complete,
    Failed,
}

impl SnapshotState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Staging => "staging",
            Self::Uploading => "uploading",
            Self::Complete => "complete",
            Self::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "requested" => Self::Requested,
            "staging" => Self::Staging,
            "uploading" => Self::Uploading,
            "complete" => Self::Complete,
            "failed" => Self::Failed,
            _ => return None,
        })
    }

    /// Still being taken: must not be deleted, and its chunks may not be in any manifest yet.
    pub fn in_flight(self) -> bool {
        matches!(self, Self::Requested | Self::Staging | Self::Uploading)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    pub id: String,
    pub volume_id: i64,
    pub volume_name: String,
    pub size_bytes: u64,
    pub description: String,
    pub scheduled: bool,
    pub state: SnapshotState,
    pub error: Option<String>,
    pub requested_unix: i64,
    pub completed_unix: Option<i64>,
    /// Chunks holding data in the snapshot.
    pub chunks: u64,
    /// Of those, chunks not in the volume's previous snapshot.
    pub new_chunks: u64,
    /// Bytes this snapshot itself stored (chunks staged at the cut, manifest).
    pub uploaded_bytes: u64,
}

const COLUMNS: &str = "id, volume_id, volume_name, size_bytes, description, scheduled, state, \
                       error, requested_unix, completed_unix, chunks, new_chunks, uploaded_bytes";

fn row_to_snapshot(r: &rusqlite::Row<'_>) -> rusqlite::Result<SnapshotRow> {
    let conv = |i: usize| rusqlite::Error::IntegralValueOutOfRange(i, -1);
    let unsigned = |i: usize| -> rusqlite::Result<u64> {
        u64::try_from(r.get::<_, i64>(i)?).map_err(|_| conv(i))
    };
    let state: String = r.get(6)?;
    Ok(SnapshotRow {
        id: r.get(0)?,
        volume_id: r.get(1)?,
        volume_name: r.get(2)?,
        size_bytes: unsigned(3)?,
        description: r.get(4)?,
        scheduled: r.get::<_, i64>(5)? != 0,
        state: SnapshotState::parse(&state).ok_or_else(|| conv(6))?,
        error: r.get(7)?,
        requested_unix: r.get(8)?,
        completed_unix: r.get(9)?,
        chunks: unsigned(10)?,
        new_chunks: unsigned(11)?,
        uploaded_bytes: unsigned(12)?,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub volume_id: i64,
    pub every_secs: u64,
    pub keep: u32,
    pub last_unix: Option<i64>,
}

impl Catalog {
    /// Records a new snapshot row (a request, or an adopted manifest when `row.state` is
    /// complete). Fails if the id exists.
    pub fn insert_snapshot(&self, row: &SnapshotRow) -> Result<(), CatalogError> {
        self.conn().execute(
            &format!("INSERT INTO snapshots ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
            params![
                row.id,
                row.volume_id,
                row.volume_name,
                as_i64(row.size_bytes)?,
                row.description,
                i64::from(row.scheduled),
                row.state.as_str(),
                row.error,
                row.requested_unix,
                row.completed_unix,
                as_i64(row.chunks)?,
                as_i64(row.new_chunks)?,
                as_i64(row.uploaded_bytes)?,
            ],
        )?;
        Ok(())
    }

    pub fn snapshot(&self, id: &str) -> Result<Option<SnapshotRow>, CatalogError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM snapshots WHERE id = ?1"),
                [id],
                row_to_snapshot,
            )
            .optional()?)
    }

    /// Snapshots, oldest first; of one volume (by name) when given.
    pub fn snapshots(&self, volume_name: Option<&str>) -> Result<Vec<SnapshotRow>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM snapshots WHERE ?1 IS NULL OR volume_name = ?1
             ORDER BY requested_unix, rowid"
        ))?;
        let rows = stmt.query_map([volume_name], row_to_snapshot)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn snapshots_in_state(
        &self,
        state: SnapshotState,
    ) -> Result<Vec<SnapshotRow>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM snapshots WHERE state = ?1 ORDER BY requested_unix, rowid"
        ))?;
        let rows = stmt.query_map([state.as_str()], row_to_snapshot)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Moves a snapshot to `state`, only from `from` (so a daemon and a CLI never both take
    /// the same request). Returns whether it moved.
    pub fn move_snapshot(
        &self,
        id: &str,
        from: SnapshotState,
        state: SnapshotState,
        error: Option<&str>,
    ) -> Result<bool, CatalogError> {
        Ok(self.conn().execute(
            "UPDATE snapshots SET state = ?3, error = ?4 WHERE id = ?1 AND state = ?2",
            params![id, from.as_str(), state.as_str(), error],
        )? > 0)
    }

    pub fn complete_snapshot(
        &self,
        id: &str,
        chunks: u64,
        new_chunks: u64,
        uploaded_bytes: u64,
        completed_unix: i64,
    ) -> Result<(), CatalogError> {
        self.conn().execute(
            "UPDATE snapshots SET state = 'complete', error = NULL, chunks = ?2, new_chunks = ?3,
                                  uploaded_bytes = ?4, completed_unix = ?5
             WHERE id = ?1",
            params![
                id,
                as_i64(chunks)?,
                as_i64(new_chunks)?,
                as_i64(uploaded_bytes)?,
                completed_unix
            ],
        )?;
        Ok(())
    }

    pub fn delete_snapshot_row(&self, id: &str) -> Result<bool, CatalogError> {
        Ok(self
            .conn()
            .execute("DELETE FROM snapshots WHERE id = ?1", [id])?
            > 0)
    }

    pub fn set_schedule(
        &self,
        volume_id: i64,
        every_secs: u64,
        keep: u32,
    ) -> Result<(), CatalogError> {
        self.conn().execute(
            "INSERT INTO snapshot_schedules (volume_id, every_secs, keep) VALUES (?1, ?2, ?3)
             ON CONFLICT (volume_id) DO UPDATE SET every_secs = excluded.every_secs,
                                                   keep = excluded.keep",
            params![volume_id, as_i64(every_secs)?, i64::from(keep)],
        )?;
        Ok(())
    }

    pub fn remove_schedule(&self, volume_id: i64) -> Result<bool, CatalogError> {
        Ok(self.conn().execute(
            "DELETE FROM snapshot_schedules WHERE volume_id = ?1",
            [volume_id],
        )? > 0)
    }

    pub fn schedules(&self) -> Result<Vec<Schedule>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT volume_id, every_secs, keep, last_unix FROM snapshot_schedules
             ORDER BY volume_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Schedule {
                volume_id: r.get(0)?,
                every_secs: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(u64::MAX),
                keep: u32::try_from(r.get::<_, i64>(2)?).unwrap_or(u32::MAX),
                last_unix: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn schedule_ran(&self, volume_id: i64, at_unix: i64) -> Result<(), CatalogError> {
        self.conn().execute(
            "UPDATE snapshot_schedules SET last_unix = ?2 WHERE volume_id = ?1",
            params![volume_id, at_unix],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, state: SnapshotState) -> SnapshotRow {
        SnapshotRow {
            id: id.to_owned(),
            volume_id: 1,
            volume_name: "v".into(),
            size_bytes: 1 << 20,
            description: String::new(),
            scheduled: false,
            state,
            error: None,
            requested_unix: 10,
            completed_unix: None,
            chunks: 0,
            new_chunks: 0,
            uploaded_bytes: 0,
        }
    }

    #[test]
    fn snapshot_rows_move_once() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("c.db")).unwrap();
        c.insert_snapshot(&row("snap-1", SnapshotState::Requested))
            .unwrap();
        assert!(
            c.insert_snapshot(&row("snap-1", SnapshotState::Requested))
                .is_err()
        );
        let taken = |c: &Catalog| {
            c.move_snapshot(
                "snap-1",
                SnapshotState::Requested,
                SnapshotState::Staging,
                None,
            )
            .unwrap()
        };
        assert!(taken(&c));
        assert!(!taken(&c), "a request is taken once");
        c.complete_snapshot("snap-1", 3, 2, 100, 20).unwrap();
        let got = c.snapshot("snap-1").unwrap().unwrap();
        assert_eq!(
            (got.state, got.chunks, got.new_chunks),
            (SnapshotState::Complete, 3, 2)
        );
        assert_eq!(c.snapshots(Some("v")).unwrap().len(), 1);
        assert_eq!(c.snapshots(Some("w")).unwrap().len(), 0);
        assert!(c.delete_snapshot_row("snap-1").unwrap());
    }
}
