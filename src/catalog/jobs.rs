//! Import/export jobs and the objects a device holds (docs/design.md §7).
//!
//! The catalog stores what `gateway/import` hands it: object records arrive sealed and are
//! returned as they were; only sizes and import states are plain, for progress and `status`.
//! Invariant: an object's record and its state change in one statement, and a completed
//! multipart upload becomes an object and loses its parts in one transaction.

use rusqlite::{OptionalExtension, Row, params};

use crate::catalog::shares::u64_at;
use crate::catalog::{Catalog, CatalogError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub id: String,
    pub kind: String,
    pub bucket_url: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub state: String,
    pub reason: Option<String>,
    pub key_check: String,
    pub created_unix: i64,
    pub updated_unix: i64,
    pub sealed_unix: Option<i64>,
    pub finished_unix: Option<i64>,
}

/// Per-state object counts of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobCounts {
    pub objects: u64,
    pub bytes: u64,
    pub imported: u64,
    pub imported_bytes: u64,
    pub failed: u64,
}

/// One stored object: its opaque name id, sealed record, size and import state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobObjectRow {
    pub name_id: Vec<u8>,
    pub record: Vec<u8>,
    pub size: u64,
    pub state: String,
    pub reason: Option<String>,
}

const JOB_COLUMNS: &str = "id, kind, bucket_url, endpoint, region, state, reason, key_check, \
     created_unix, updated_unix, sealed_unix, finished_unix";

fn row_to_job(r: &Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        bucket_url: r.get(2)?,
        endpoint: r.get(3)?,
        region: r.get(4)?,
        state: r.get(5)?,
        reason: r.get(6)?,
        key_check: r.get(7)?,
        created_unix: r.get(8)?,
        updated_unix: r.get(9)?,
        sealed_unix: r.get(10)?,
        finished_unix: r.get(11)?,
    })
}

fn size_param(size: u64) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

/// Inserts or replaces an object (state back to `stored`); returns the record it replaced.
fn upsert_object(
    tx: &rusqlite::Transaction<'_>,
    job: &str,
    name_id: &[u8],
    record: &[u8],
    size: u64,
) -> Result<Option<Vec<u8>>, CatalogError> {
    let old = previous_record(tx, job, name_id)?;
    tx.execute(
        "INSERT INTO job_objects (job_id, name_id, record, size, state, reason)
         VALUES (?1, ?2, ?3, ?4, 'stored', NULL)
         ON CONFLICT (job_id, name_id) DO UPDATE SET record = excluded.record,
             size = excluded.size, state = 'stored', reason = NULL",
        params![job, name_id, record, size_param(size)],
    )?;
    Ok(old)
}

fn previous_record(
    tx: &rusqlite::Transaction<'_>,
    job: &str,
    name_id: &[u8],
) -> Result<Option<Vec<u8>>, CatalogError> {
    Ok(tx
        .query_row(
            "SELECT record FROM job_objects WHERE job_id = ?1 AND name_id = ?2",
            params![job, name_id],
            |r| r.get(0),
        )
        .optional()?)
}

impl Catalog {
    pub fn insert_job(&self, job: &JobRow) -> Result<(), CatalogError> {
        self.conn().execute(
            &format!(
                "INSERT INTO jobs ({JOB_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)"
            ),
            params![
                job.id,
                job.kind,
                job.bucket_url,
                job.endpoint,
                job.region,
                job.state,
                job.reason,
                job.key_check,
                job.created_unix,
                job.updated_unix,
                job.sealed_unix,
                job.finished_unix
            ],
        )?;
        Ok(())
    }

    pub fn job(&self, id: &str) -> Result<Option<JobRow>, CatalogError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                row_to_job,
            )
            .optional()?)
    }

    pub fn jobs(&self) -> Result<Vec<JobRow>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_unix, id"
        ))?;
        let rows = stmt.query_map([], row_to_job)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Moves a job to `state` (with a reason for FAILED, cleared otherwise); stamps the seal
    /// time at SEALED or READY and the finish time at COMPLETE or FAILED.
    pub fn set_job_state(
        &self,
        id: &str,
        state: &str,
        reason: Option<&str>,
    ) -> Result<(), CatalogError> {
        let t = crate::clock::unix_secs();
        self.conn().execute(
            "UPDATE jobs SET state = ?2, reason = ?3, updated_unix = ?4,
                 sealed_unix = CASE WHEN ?2 IN ('SEALED', 'READY') THEN ?4 ELSE sealed_unix END,
                 finished_unix = CASE WHEN ?2 IN ('COMPLETE', 'FAILED') THEN ?4 ELSE finished_unix END
             WHERE id = ?1",
            params![id, state, reason, t],
        )?;
        Ok(())
    }

    pub fn job_counts(&self, id: &str) -> Result<JobCounts, CatalogError> {
        Ok(self.conn().query_row(
            "SELECT COUNT(*), COALESCE(SUM(size), 0),
                    COALESCE(SUM(state = 'imported'), 0),
                    COALESCE(SUM(CASE WHEN state = 'imported' THEN size ELSE 0 END), 0),
                    COALESCE(SUM(state = 'failed'), 0)
             FROM job_objects WHERE job_id = ?1",
            [id],
            |r| {
                Ok(JobCounts {
                    objects: u64_at(r, 0)?,
                    bytes: u64_at(r, 1)?,
                    imported: u64_at(r, 2)?,
                    imported_bytes: u64_at(r, 3)?,
                    failed: u64_at(r, 4)?,
                })
            },
        )?)
    }

    /// Every object of a job (sealed records), in name-id order.
    pub fn job_objects(&self, id: &str) -> Result<Vec<JobObjectRow>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name_id, record, size, state, reason FROM job_objects
             WHERE job_id = ?1 ORDER BY name_id",
        )?;
        let rows = stmt.query_map([id], |r| {
            Ok(JobObjectRow {
                name_id: r.get(0)?,
                record: r.get(1)?,
                size: u64_at(r, 2)?,
                state: r.get(3)?,
                reason: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Inserts or replaces an object (state back to `stored`); returns the record it replaced.
    pub fn put_job_object(
        &self,
        job: &str,
        name_id: &[u8],
        record: &[u8],
        size: u64,
    ) -> Result<Option<Vec<u8>>, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let old = upsert_object(&tx, job, name_id, record, size)?;
        tx.commit()?;
        Ok(old)
    }

    /// Inserts or replaces several objects (state back to `stored`) in one transaction: one
    /// fsync for all of them, so a batch of small objects does not pay one each.
    pub fn put_job_objects(
        &self,
        job: &str,
        objects: &[([u8; 32], Vec<u8>, u64)],
    ) -> Result<(), CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for (name_id, record, size) in objects {
            upsert_object(&tx, job, name_id, record, *size)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes an object; returns its record if it existed.
    pub fn delete_job_object(
        &self,
        job: &str,
        name_id: &[u8],
    ) -> Result<Option<Vec<u8>>, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let old = previous_record(&tx, job, name_id)?;
        tx.execute(
            "DELETE FROM job_objects WHERE job_id = ?1 AND name_id = ?2",
            params![job, name_id],
        )?;
        tx.commit()?;
        Ok(old)
    }

    /// Records the import outcome of one object.
    pub fn set_job_object_state(
        &self,
        job: &str,
        name_id: &[u8],
        state: &str,
        reason: Option<&str>,
    ) -> Result<(), CatalogError> {
        self.conn().execute(
            "UPDATE job_objects SET state = ?3, reason = ?4 WHERE job_id = ?1 AND name_id = ?2",
            params![job, name_id, state, reason],
        )?;
        Ok(())
    }

    /// The multipart upload an import has open in the target for an object, and its part size.
    pub fn target_upload(
        &self,
        job: &str,
        name_id: &[u8],
    ) -> Result<Option<(String, u64)>, CatalogError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT upload_id, part_size FROM job_target_uploads
                 WHERE job_id = ?1 AND name_id = ?2",
                params![job, name_id],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()?
            .map(|(id, size)| (id, u64::try_from(size).unwrap_or(0))))
    }

    pub fn set_target_upload(
        &self,
        job: &str,
        name_id: &[u8],
        upload_id: &str,
        part_size: u64,
    ) -> Result<(), CatalogError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO job_target_uploads (job_id, name_id, upload_id, part_size)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                job,
                name_id,
                upload_id,
                i64::try_from(part_size).unwrap_or(i64::MAX)
            ],
        )?;
        Ok(())
    }

    pub fn clear_target_upload(&self, job: &str, name_id: &[u8]) -> Result<(), CatalogError> {
        self.conn().execute(
            "DELETE FROM job_target_uploads WHERE job_id = ?1 AND name_id = ?2",
            params![job, name_id],
        )?;
        Ok(())
    }

    pub fn insert_job_upload(
        &self,
        job: &str,
        upload_id: &str,
        record: &[u8],
    ) -> Result<(), CatalogError> {
        self.conn().execute(
            "INSERT INTO job_uploads (job_id, upload_id, record, created_unix)
             VALUES (?1, ?2, ?3, ?4)",
            params![job, upload_id, record, crate::clock::unix_secs()],
        )?;
        Ok(())
    }

    /// (upload id, sealed record, created) of every multipart upload in progress.
    pub fn job_uploads(&self, job: &str) -> Result<Vec<(String, Vec<u8>, i64)>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT upload_id, record, created_unix FROM job_uploads WHERE job_id = ?1
             ORDER BY created_unix, upload_id",
        )?;
        let rows = stmt.query_map([job], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn job_upload(&self, job: &str, upload_id: &str) -> Result<Option<Vec<u8>>, CatalogError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT record FROM job_uploads WHERE job_id = ?1 AND upload_id = ?2",
                params![job, upload_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Stores a part; returns the record of the part it replaced (same number), if any.
    pub fn put_job_part(
        &self,
        job: &str,
        upload_id: &str,
        number: u32,
        record: &[u8],
        size: u64,
    ) -> Result<Option<Vec<u8>>, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let old: Option<Vec<u8>> = tx
            .query_row(
                "SELECT record FROM job_parts WHERE job_id = ?1 AND upload_id = ?2
                 AND part_number = ?3",
                params![job, upload_id, number],
                |r| r.get(0),
            )
            .optional()?;
        tx.execute(
            "INSERT INTO job_parts (job_id, upload_id, part_number, record, size)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (job_id, upload_id, part_number) DO UPDATE
                 SET record = excluded.record, size = excluded.size",
            params![job, upload_id, number, record, size_param(size)],
        )?;
        tx.commit()?;
        Ok(old)
    }

    /// The sealed record of one part of an upload, if stored.
    pub fn job_part(
        &self,
        job: &str,
        upload_id: &str,
        number: u32,
    ) -> Result<Option<Vec<u8>>, CatalogError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT record FROM job_parts WHERE job_id = ?1 AND upload_id = ?2
                 AND part_number = ?3",
                params![job, upload_id, number],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// (part number, sealed record, size) of an upload's parts, in order.
    pub fn job_parts(
        &self,
        job: &str,
        upload_id: &str,
    ) -> Result<Vec<(u32, Vec<u8>, u64)>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT part_number, record, size FROM job_parts WHERE job_id = ?1 AND upload_id = ?2
             ORDER BY part_number",
        )?;
        let rows = stmt.query_map(params![job, upload_id], |r| {
            Ok((
                crate::catalog::shares::u32_at(r, 0)?,
                r.get(1)?,
                u64_at(r, 2)?,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Ends a multipart upload (its parts go with it); with `object`, the completed object
    /// (name id, record, size) replaces any earlier one in the same transaction. Returns the
    /// record it replaced.
    pub fn finish_job_upload(
        &self,
        job: &str,
        upload_id: &str,
        object: Option<(&[u8], &[u8], u64)>,
    ) -> Result<Option<Vec<u8>>, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut old = None;
        if let Some((name_id, record, size)) = object {
            old = upsert_object(&tx, job, name_id, record, size)?;
        }
        tx.execute(
            "DELETE FROM job_parts WHERE job_id = ?1 AND upload_id = ?2",
            params![job, upload_id],
        )?;
        tx.execute(
            "DELETE FROM job_uploads WHERE job_id = ?1 AND upload_id = ?2",
            params![job, upload_id],
        )?;
        tx.commit()?;
        Ok(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> JobRow {
        JobRow {
            id: id.to_owned(),
            kind: "import".to_owned(),
            bucket_url: "s3://b/p".to_owned(),
            endpoint: None,
            region: "r".to_owned(),
            state: "CREATED".to_owned(),
            reason: None,
            key_check: "00".to_owned(),
            created_unix: 1,
            updated_unix: 1,
            sealed_unix: None,
            finished_unix: None,
        }
    }

    #[test]
    fn objects_uploads_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("c.db")).unwrap();
        c.insert_job(&job("j1")).unwrap();
        assert_eq!(c.put_job_object("j1", b"a", b"ra", 10).unwrap(), None);
        assert_eq!(
            c.put_job_object("j1", b"a", b"ra2", 12).unwrap(),
            Some(b"ra".to_vec())
        );
        c.put_job_object("j1", b"b", b"rb", 5).unwrap();
        c.set_job_object_state("j1", b"b", "imported", None)
            .unwrap();
        let n = c.job_counts("j1").unwrap();
        assert_eq!(
            (n.objects, n.bytes, n.imported, n.imported_bytes),
            (2, 17, 1, 5)
        );

        c.insert_job_upload("j1", "u1", b"ur").unwrap();
        c.put_job_part("j1", "u1", 2, b"p2", 3).unwrap();
        c.put_job_part("j1", "u1", 1, b"p1", 4).unwrap();
        assert_eq!(
            c.job_part("j1", "u1", 2).unwrap().as_deref(),
            Some(&b"p2"[..])
        );
        assert_eq!(c.job_part("j1", "u1", 3).unwrap(), None);
        let parts = c.job_parts("j1", "u1").unwrap();
        assert_eq!(parts[0].0, 1);
        assert_eq!(parts[1].0, 2);
        let old = c
            .finish_job_upload("j1", "u1", Some((b"a", b"rc", 7)))
            .unwrap();
        assert_eq!(old, Some(b"ra2".to_vec()));
        assert!(c.job_uploads("j1").unwrap().is_empty());
        assert!(c.job_parts("j1", "u1").unwrap().is_empty());
        c.set_job_state("j1", "SEALED", None).unwrap();
        assert!(c.job("j1").unwrap().unwrap().sealed_unix.is_some());
        assert_eq!(
            c.delete_job_object("j1", b"a").unwrap(),
            Some(b"rc".to_vec())
        );
        assert_eq!(c.job_counts("j1").unwrap().objects, 1);
    }
}
