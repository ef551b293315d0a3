//! Catalog rows as the management API shows them: each function turns one row kind into its
//! reply type (`frontend::api::types`), so the API, the console, `/metrics` and the CLI read the
//! same fields and labels.

use crate::catalog::jobs::JobCounts;
use crate::catalog::shares::{ShareRow, ShareSyncStats};
use crate::catalog::snapshots::SnapshotRow;
use crate::catalog::tapes::{ElementKind, LockMode, TapeRow, TapeState};
use crate::catalog::volumes::VolumeRow;
use crate::config::bandwidth::Window as WindowConfig;
use crate::frontend::api::types::{Job, Share, Snapshot, Tape, TapeLocation, Volume, Window};
use crate::gateway::library::{Element, Layout};

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// `target`: the volume's iSCSI target name (it depends on the gateway's name).
pub fn volume(v: &VolumeRow, mapped_chunks: u64, target: String) -> Volume {
    Volume {
        name: v.name.clone(),
        size_bytes: v.size_bytes,
        mode: v.mode.as_str().to_owned(),
        target,
        in_bucket_bytes: mapped_chunks.saturating_mul(v.chunk_size),
        local_path: v.local_path.clone(),
        origin_snapshot: v.origin_snapshot.clone(),
    }
}

pub fn snapshot(s: &SnapshotRow) -> Snapshot {
    Snapshot {
        id: s.id.clone(),
        volume: s.volume_name.clone(),
        size_bytes: s.size_bytes,
        state: s.state.as_str().to_owned(),
        error: s.error.clone(),
        description: s.description.clone(),
        scheduled: s.scheduled,
        requested_unix: s.requested_unix,
        completed_unix: s.completed_unix,
        chunks: s.chunks,
        new_chunks: s.new_chunks,
        uploaded_bytes: s.uploaded_bytes,
    }
}

pub fn share(r: &ShareRow, sync: &ShareSyncStats) -> Share {
    Share {
        name: r.name.clone(),
        prefix: r.bucket_prefix.clone(),
        read_only: r.read_only,
        squash: r.squash.as_str().to_owned(),
        allowed_clients: r
            .allowed_clients
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect(),
        refresh_secs: r.refresh_secs,
        dirty_files: sync.dirty_files,
        dirty_bytes: sync.dirty_bytes,
        pending_deletes: sync.pending_deletes,
        last_upload_unix: sync.last_upload_unix,
        in_bucket: sync.dirty_files == 0 && sync.pending_deletes == 0,
    }
}

/// A tape with the labels people read: where it is (`slot 3 (0x0402)`) and its state with the
/// shelf progress (`ARCHIVING 40%`).
pub fn tape(layout: &Layout, t: &TapeRow) -> Tape {
    let (location, location_label) = match t.location {
        None => (None, "shelf".to_owned()),
        Some((kind, i)) => {
            let (name, e) = match kind {
                ElementKind::Slot => ("slot", Element::Slot(i)),
                ElementKind::Drive => ("drive", Element::Drive(i)),
                ElementKind::Mail => ("mail slot", Element::Mail(i)),
            };
            let address = layout.address(e);
            (
                Some(TapeLocation {
                    kind: kind.as_str().to_owned(),
                    number: i + 1,
                    address,
                }),
                format!("{name} {} ({address:#06x})", i + 1),
            )
        }
    };
    let moving = matches!(t.state, TapeState::Archiving | TapeState::Retrieving);
    let state_label = if moving && t.data_bytes > 0 {
        format!(
            "{} {}%",
            t.state.label(),
            t.progress_bytes.saturating_mul(100) / t.data_bytes
        )
    } else {
        t.state.label().to_owned()
    };
    Tape {
        barcode: t.barcode.clone(),
        size_bytes: t.size_bytes,
        state: t.state.as_str().to_owned(),
        state_label,
        location,
        location_label,
        data_bytes: t.data_bytes,
        objects: t.objects,
        read_only: t.read_only,
        retention_until_unix: t.retention_until_unix,
        lock_mode: t.lock_mode.map(|l| LockMode::as_str(l).to_owned()),
        tree_hash: t.tree_hash.map(|h| crate::store::keys::hex(&h)),
        archived_unix: t.archived_unix,
        progress_bytes: moving.then_some(t.progress_bytes),
        error: t.error.clone(),
    }
}

pub fn job(j: &crate::gateway::import::JobStatus) -> Job {
    let c: &JobCounts = &j.counts;
    Job {
        id: j.row.id.clone(),
        kind: j.row.kind.clone(),
        target: (j.row.kind == "import").then(|| j.row.bucket_url.clone()),
        source: (j.row.kind == "export").then(|| j.row.bucket_url.clone()),
        state: j.row.state.to_ascii_lowercase(),
        reason: j.row.reason.clone(),
        created_unix: j.row.created_unix,
        updated_unix: j.row.updated_unix,
        sealed_unix: j.row.sealed_unix,
        finished_unix: j.row.finished_unix,
        objects: c.objects,
        bytes: c.bytes,
        imported_objects: c.imported,
        imported_bytes: c.imported_bytes,
        failed_objects: c.failed,
        progress: if c.bytes == 0 {
            // Only empty objects: done when all of them are.
            if c.objects > 0 && c.imported == c.objects {
                1.0
            } else {
                0.0
            }
        } else {
            c.imported_bytes as f64 / c.bytes as f64
        },
    }
}

pub fn window(w: &WindowConfig) -> Window {
    let hhmm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
    Window {
        days: DAYS
            .iter()
            .enumerate()
            .filter(|(i, _)| w.days & (1 << i) != 0)
            .map(|(_, d)| (*d).to_owned())
            .collect(),
        start: hhmm(w.start),
        end: hhmm(w.end),
        upload: w.upload,
        download: w.download,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::jobs::JobRow;
    use crate::gateway::import::JobStatus;

    fn tape_row(state: TapeState, location: Option<(ElementKind, u32)>) -> TapeRow {
        TapeRow {
            id: 1,
            barcode: "T00001".into(),
            size_bytes: 100,
            state,
            location,
            home_slot: None,
            read_only: false,
            data_bytes: 200,
            objects: 2,
            created_unix: 0,
            retention_until_unix: Some(9),
            lock_mode: Some(LockMode::Governance),
            tree_hash: None,
            archived_unix: None,
            progress_bytes: 50,
            error: None,
        }
    }

    #[test]
    fn tapes_carry_the_labels_people_read() {
        let layout = Layout {
            drives: 1,
            slots: 4,
            mail_slots: 1,
        };
        let cases = [
            (
                TapeState::Available,
                Some((ElementKind::Slot, 2)),
                "AVAILABLE",
                "slot 3 (",
                None,
            ),
            (
                TapeState::Archiving,
                None,
                "ARCHIVING 25%",
                "shelf",
                Some(50),
            ),
            (
                TapeState::Retrieved,
                Some((ElementKind::Drive, 0)),
                "RETRIEVED",
                "drive 1 (",
                None,
            ),
        ];
        for (state, at, label, location, progress) in cases {
            let t = tape(&layout, &tape_row(state, at));
            assert!(t.state_label.starts_with(label), "{t:?}");
            assert!(t.location_label.starts_with(location), "{t:?}");
            assert_eq!(t.progress_bytes, progress, "{t:?}");
            assert_eq!(t.location.is_none(), at.is_none());
            assert_eq!(t.lock_mode.as_deref(), Some("governance"));
        }
    }

    #[test]
    fn job_progress_counts_bytes_or_empty_objects() {
        let row = |kind: &str| JobRow {
            id: "j".into(),
            kind: kind.into(),
            bucket_url: "s3://b/p".into(),
            endpoint: None,
            region: "r".into(),
            state: "IMPORTING".into(),
            reason: None,
            key_check: String::new(),
            created_unix: 0,
            updated_unix: 0,
            sealed_unix: None,
            finished_unix: None,
        };
        let counts = |objects, bytes, imported, imported_bytes| JobCounts {
            objects,
            bytes,
            imported,
            imported_bytes,
            failed: 0,
        };
        let cases = [
            ("import", counts(4, 400, 1, 100), 0.25),
            ("import", counts(2, 0, 2, 0), 1.0),
            ("export", counts(0, 0, 0, 0), 0.0),
        ];
        for (kind, c, progress) in cases {
            let j = job(&JobStatus {
                row: row(kind),
                counts: c,
            });
            assert_eq!(j.progress, progress, "{c:?}");
            assert_eq!(j.state, "importing");
            assert_eq!(j.target.is_some(), kind == "import");
            assert_eq!(j.source.is_some(), kind == "export");
        }
    }

    #[test]
    fn windows_name_their_days_and_times() {
        let w = window(&WindowConfig {
            days: 0b100_0001,
            start: 8 * 60 + 5,
            end: 1440,
            upload: Some(5),
            download: None,
        });
        assert_eq!(w.days, ["mon", "sun"]);
        assert_eq!((w.start.as_str(), w.end.as_str()), ("08:05", "24:00"));
    }
}
