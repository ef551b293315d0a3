//! The bandwidth limits in force: the schedule's window if one is open, else the defaults
//! (the config's bucket limits, or those last set through the API, kept in the catalog).
//! Re-evaluated every second by the daemon and at once when the API changes the defaults.

use std::sync::{Arc, Mutex};

use crate::catalog::Catalog;
use crate::config::bandwidth::Schedule;
use crate::store::ChunkStore;

const UPLOAD_LIMIT: &str = "bandwidth.upload";
const DOWNLOAD_LIMIT: &str = "bandwidth.download";

pub type Limits = (Option<u64>, Option<u64>);

pub struct Bandwidth {
    schedule: Schedule,
    defaults: Mutex<Limits>,
    catalog: Arc<Catalog>,
    chunks: Arc<ChunkStore>,
}

fn setting(v: Option<u64>) -> String {
    v.map_or_else(|| "none".to_owned(), |n| n.to_string())
}

impl Bandwidth {
    /// Defaults: the config's limits (already on the bucket), overridden by any saved through
    /// the API.
    pub fn new(schedule: Schedule, catalog: Arc<Catalog>, chunks: Arc<ChunkStore>) -> Self {
        let (mut up, mut down) = chunks.bucket().limits();
        let parse = |s: String| if s == "none" { None } else { s.parse().ok() };
        if let Ok(Some(s)) = catalog.setting(UPLOAD_LIMIT) {
            up = parse(s);
        }
        if let Ok(Some(s)) = catalog.setting(DOWNLOAD_LIMIT) {
            down = parse(s);
        }
        let b = Self {
            schedule,
            defaults: Mutex::new((up, down)),
            catalog,
            chunks,
        };
        b.apply(crate::daemon::unix_now());
        b
    }

    pub fn defaults(&self) -> Limits {
        *self.defaults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The limits in force at `unix` and the schedule window they come from, if any.
    pub fn effective(&self, unix: i64) -> (Limits, Option<usize>) {
        match self.schedule.active(unix) {
            Some((i, w)) => ((w.upload, w.download), Some(i)),
            None => (self.defaults(), None),
        }
    }

    /// Puts the limits in force on the bucket (a no-op when they did not change).
    pub fn apply(&self, unix: i64) {
        let ((up, down), _) = self.effective(unix);
        if self.chunks.bucket().limits() != (up, down) {
            tracing::info!(upload = ?up, download = ?down, "bandwidth limits now in force");
            self.chunks.bucket().set_limits(up, down);
        }
    }

    /// New defaults (from the API): saved, and in force at once unless a window is open.
    pub fn set_defaults(&self, limits: Limits) -> Result<(), crate::catalog::CatalogError> {
        self.catalog.set_settings(&[
            (UPLOAD_LIMIT, &setting(limits.0)),
            (DOWNLOAD_LIMIT, &setting(limits.1)),
        ])?;
        *self.defaults.lock().unwrap_or_else(|p| p.into_inner()) = limits;
        self.apply(crate::daemon::unix_now());
        Ok(())
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }
}
