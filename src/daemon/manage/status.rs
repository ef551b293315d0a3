//! The one status snapshot (`types::Status`): the catalog's lists and, while the daemon runs,
//! its live counters. `GET /api/v1/status`, `/metrics`, `run/status.toml` and `tidegate status`
//! are renderings of what `gather` returns, and the problems in it are worded once
//! (`daemon::health`).
//!
//! Gathering changes nothing: with no daemon it reads the cache areas only if they exist and
//! the catalog only if it is given one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crate::catalog::Catalog;
use crate::catalog::tapes::{TapeRow, TapeState};
use crate::config::Config;
use crate::config::sizing::Role;
use crate::daemon::health;
use crate::daemon::volumes::target_name;
use crate::frontend::api::types::{
    self, BucketTraffic, DriveIo, FilesFigures, Limits, ShareTraffic, Status, StoredProgress,
    VolumeIo,
};
use crate::gateway::GatewayError;
use crate::gateway::import::JobState;

use super::{Live, views};

const TAPE_STATES: [TapeState; 7] = [
    TapeState::Available,
    TapeState::InTransit,
    TapeState::Archiving,
    TapeState::Archived,
    TapeState::Retrieving,
    TapeState::Retrieved,
    TapeState::Damaged,
];

const JOB_STATES: [JobState; 8] = [
    JobState::Created,
    JobState::Loading,
    JobState::Sealed,
    JobState::Importing,
    JobState::Complete,
    JobState::Failed,
    JobState::Exporting,
    JobState::Ready,
];

/// What the catalog lists, the part of the snapshot that costs catalog queries (a count over
/// each volume's chunk map among them), kept apart so a caller may reuse it for a while.
#[derive(Debug, Clone, Default)]
pub struct Listed {
    volumes: Vec<types::Volume>,
    snapshots: BTreeMap<String, u64>,
    shares: Vec<types::Share>,
    /// Share ids and names, to label the live traffic counters (kept by id).
    share_ids: Vec<(i64, String)>,
    tapes: Vec<types::Tape>,
    tape_states: BTreeMap<String, u64>,
    damaged_tapes: Vec<String>,
    jobs: Vec<types::Job>,
    job_states: BTreeMap<String, u64>,
    integrity_failures: u64,
    /// The catalog could not be read: said as a problem rather than failing the whole look,
    /// as the live figures still help.
    problem: Option<String>,
}

/// The snapshot now. `catalog`: none while the data dir has no catalog yet; `live`: the
/// running daemon's parts, none for a look from outside with no daemon.
pub fn gather(config: &Config, catalog: Option<&Arc<Catalog>>, live: Option<&Live>) -> Status {
    assemble(config, list(config, catalog), live)
}

pub fn list(config: &Config, catalog: Option<&Arc<Catalog>>) -> Listed {
    let mut l = Listed::default();
    if let Some(c) = catalog
        && let Err(e) = from_catalog(config, c, &mut l)
    {
        l.problem = Some(format!("the catalog could not be read: {e}"));
    }
    l
}

/// The snapshot from the catalog's lists and the live figures (or, with no daemon, the disks).
pub fn assemble(config: &Config, listed: Listed, live: Option<&Live>) -> Status {
    let mut s = Status {
        gateway: config.name.clone(),
        bucket: config.bucket.location.to_string(),
        updated_unix: crate::daemon::unix_now(),
        running: live.is_some(),
        volumes: listed.volumes,
        snapshots: listed.snapshots,
        shares: listed.shares,
        tapes: listed.tapes,
        tape_states: listed.tape_states,
        jobs: listed.jobs,
        job_states: listed.job_states,
        integrity_failures: listed.integrity_failures,
        ..Status::default()
    };
    s.cache.capacity = config.cache.size.bytes();
    s.cache.sizing = config.cache.sizing.describe(Role::Cache, s.cache.capacity);
    s.upload_buffer.sizing = config
        .upload_buffer
        .sizing
        .describe(Role::UploadBuffer, config.upload_buffer.size.bytes());
    match live {
        Some(l) => {
            from_live(l, &mut s);
            share_traffic(l, &listed.share_ids, &mut s);
        }
        None => from_disk(config, &mut s),
    }
    s.problems = health::problems(&health::Inputs {
        writers_waiting: s.writers_waiting,
        buffer_bytes: s.upload_buffer.bytes,
        buffer_capacity: s.upload_buffer.capacity,
        upload_errors: s.upload_errors,
        dirty_bytes: s.cache.dirty_bytes,
        integrity_failures: s.integrity_failures,
        damaged_tapes: listed.damaged_tapes,
        disks: health::disks(config, s.cache.bytes, s.upload_buffer.bytes),
    });
    s.problems.extend(listed.problem);
    if let Some(l) = live {
        s.warnings.extend(health::buffer_warning(
            &l.history.samples(),
            s.upload_buffer.capacity,
        ));
    }
    s.healthy = s.problems.is_empty();
    s
}

fn from_catalog(config: &Config, c: &Arc<Catalog>, l: &mut Listed) -> Result<(), GatewayError> {
    l.volumes = crate::gateway::volumes::list(c)?
        .iter()
        .map(|v| views::volume(&v.row, v.mapped_chunks, target_name(config, &v.row.name)))
        .collect();
    for snap in c.snapshots(None)? {
        *l.snapshots
            .entry(snap.state.as_str().to_owned())
            .or_insert(0) += 1;
    }
    for r in crate::gateway::files::list_shares(c)? {
        l.shares.push(views::share(&r, &c.share_sync_stats(r.id)?));
        l.share_ids.push((r.id, r.name));
    }
    let tapes: Vec<TapeRow> = c.tapes()?;
    let layout = crate::daemon::library::layout(config);
    l.tapes = tapes.iter().map(|t| views::tape(&layout, t)).collect();
    l.tape_states = TAPE_STATES
        .iter()
        .map(|st| {
            let n = tapes.iter().filter(|t| t.state == *st).count() as u64;
            (st.as_str().to_owned(), n)
        })
        .collect();
    l.damaged_tapes = health::damaged_tapes(&tapes);
    let jobs = crate::gateway::import::job_status(c, None)?;
    l.jobs = jobs.iter().map(views::job).collect();
    l.job_states = JOB_STATES
        .iter()
        .map(|st| {
            let n = jobs.iter().filter(|j| j.row.state == st.as_str()).count() as u64;
            (st.as_str().to_ascii_lowercase(), n)
        })
        .collect();
    l.integrity_failures = c.integrity_summary()?.count;
    Ok(())
}

/// Every served share's calls; one not called yet starts at zero.
fn share_traffic(l: &Live, shares: &[(i64, String)], s: &mut Status) {
    let traffic = l.files.share_traffic();
    for (id, name) in shares {
        let mut t = ShareTraffic {
            share: name.clone(),
            ..ShareTraffic::default()
        };
        if let Some(c) = traffic.get(id) {
            (t.reads, t.writes, t.commits) = (
                c.reads.load(Relaxed),
                c.writes.load(Relaxed),
                c.commits.load(Relaxed),
            );
            t.other = c
                .calls
                .load(Relaxed)
                .saturating_sub(t.reads + t.writes + t.commits);
            t.read_bytes = c.read_bytes.load(Relaxed);
            t.write_bytes = c.write_bytes.load(Relaxed);
            t.uploads = c.uploads.load(Relaxed);
            t.upload_bytes = c.upload_bytes.load(Relaxed);
        }
        s.share_traffic.push(t);
    }
}

fn from_live(l: &Live, s: &mut Status) {
    let c = l.cache.stats();
    s.cache.bytes = c.cache_bytes;
    s.cache.dirty_bytes = c.dirty_bytes;
    s.cache.oldest_dirty_secs = c.oldest_dirty_age.map_or(0, |d| d.as_secs());
    s.cache.hits = c.hits;
    s.cache.misses = c.misses;
    s.upload_buffer.bytes = c.buffer_bytes;
    s.upload_buffer.capacity = c.buffer_capacity;
    s.uploads = c.uploads;
    s.upload_errors = c.upload_errors;
    s.writers_waiting = c.writers_waiting;
    let bucket = l.chunks.bucket();
    let (upload, download) = bucket.limits();
    s.bandwidth = Limits { upload, download };
    let t = bucket.traffic();
    s.bucket_traffic = BucketTraffic {
        puts: t.puts,
        put_bytes: t.put_bytes,
        gets: t.gets,
        get_bytes: t.get_bytes,
        errors: t.errors,
    };
    let u = l.files.upload_counters();
    let staging = l.files.staging_use();
    let (locks_held, share_reservations, grace) = l.files.locks().figures();
    s.files = FilesFigures {
        uploads: u.uploads.load(Relaxed),
        upload_errors: u.errors.load(Relaxed),
        download_bytes: u.downloaded.load(Relaxed),
        clean_read_bytes: u.clean_read.load(Relaxed),
        clean_bytes: staging.clean_bytes,
        early_uploads: u.early_completed.load(Relaxed),
        early_abandoned: u.early_abandoned.load(Relaxed),
        staging_bytes: staging.bytes,
        staging_limit_bytes: staging.limit_bytes.unwrap_or(0),
        writers_waiting: staging.writers_waiting,
        locks_held,
        share_reservations,
        lock_grace_secs: grace.as_secs_f64().ceil() as u64,
    };
    s.volume_io = l
        .volumes
        .io()
        .iter()
        .map(|(name, c)| VolumeIo {
            volume: name.clone(),
            reads: c.reads.load(Relaxed),
            writes: c.writes.load(Relaxed),
            read_bytes: c.read_bytes.load(Relaxed),
            write_bytes: c.write_bytes.load(Relaxed),
            errors: c.errors.load(Relaxed),
        })
        .collect();
    s.stored = l
        .volumes
        .stored_progress()
        .into_iter()
        .map(|(volume, p)| {
            let (initial_done, initial_total) = p.initial_upload.unwrap_or((0, 0));
            StoredProgress {
                volume,
                dirty_chunks: p.dirty_chunks,
                download_pending: p.download_pending,
                download_total: p.download_total,
                initial_done,
                initial_total,
                uploaded_chunks: p.uploaded_chunks,
                upload_errors: p.upload_errors,
            }
        })
        .collect();
    s.drives = l
        .library
        .bays()
        .iter()
        .map(|bay| DriveIo {
            drive: bay.index + 1,
            written_bytes: bay.written_bytes.load(Relaxed),
            read_bytes: bay.read_bytes.load(Relaxed),
        })
        .collect();
}

/// No daemon: what the cache areas hold on disk. The upload buffer's capacity stays 0: what it
/// holds goes up at the next start, so how full it is is no problem now.
fn from_disk(config: &Config, s: &mut Status) {
    s.cache.bytes = crate::daemon::status::area_status(&config.cache)
        .used
        .unwrap_or(0);
    s.upload_buffer.bytes = crate::daemon::status::area_status(&config.upload_buffer)
        .used
        .unwrap_or(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_with_nothing_yet_is_healthy_and_empty() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::embedded(dir.path()).unwrap();
        let s = gather(&config, None, None);
        assert!(!s.running);
        assert!(s.healthy, "{:?}", s.problems);
        assert!(s.volumes.is_empty() && s.tapes.is_empty());
        assert_eq!(s.cache.capacity, config.cache.size.bytes());
        assert!(
            !dir.path().join("cache").exists(),
            "looking created the cache"
        );
    }

    #[test]
    fn the_catalog_lists_every_state_and_the_volumes() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::embedded(dir.path()).unwrap();
        let catalog = Arc::new(Catalog::open(&dir.path().join("catalog.db")).unwrap());
        crate::gateway::volumes::create(
            &catalog,
            &crate::gateway::volumes::CreateVolume {
                name: "v1",
                size_bytes: Some(16 << 20),
                mode: crate::catalog::volumes::VolumeMode::Cached,
                local_path: None,
                preserve_existing: false,
            },
        )
        .unwrap();
        let s = gather(&config, Some(&catalog), None);
        assert_eq!(s.volumes.len(), 1);
        assert_eq!(s.volumes[0].name, "v1");
        assert!(
            s.volumes[0].target.ends_with(".v1"),
            "{}",
            s.volumes[0].target
        );
        assert_eq!(s.tape_states.len(), TAPE_STATES.len());
        assert_eq!(s.job_states.get("created"), Some(&0));
        assert!(s.healthy, "{:?}", s.problems);
    }
}
