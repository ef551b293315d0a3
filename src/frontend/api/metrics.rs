//! `/metrics`: the status snapshot in Prometheus text exposition format (0.0.4), written by
//! hand (a few dozen families need no crate). It renders only what `types::Status` holds, so
//! the metrics can never say something `GET /api/v1/status` does not.
//!
//! Tapes and jobs by state list every state the snapshot names, zeros too (the daemon fills
//! them from the state enums): a dashboard's series do not vanish when a state empties.

use std::fmt::Write as _;

use super::types::Status;

#[derive(Default)]
struct Metrics(String);

impl Metrics {
    fn family(&mut self, name: &str, help: &str, kind: &str, samples: &[(String, f64)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            if labels.is_empty() {
                let _ = writeln!(self.0, "{name} {value}");
            } else {
                let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
            }
        }
    }

    fn gauge(&mut self, name: &str, help: &str, samples: &[(String, f64)]) {
        self.family(name, help, "gauge", samples);
    }

    fn counter(&mut self, name: &str, help: &str, samples: &[(String, f64)]) {
        self.family(name, help, "counter", samples);
    }

    /// A family of one unlabelled sample.
    fn scalar(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, help, kind, &[(String::new(), value)]);
    }
}

/// One sample per item, labelled by `label`.
fn each<T>(
    items: &[T],
    label: impl Fn(&T) -> String,
    value: impl Fn(&T) -> u64,
) -> Vec<(String, f64)> {
    items.iter().map(|t| (label(t), value(t) as f64)).collect()
}

fn by_state(counts: &std::collections::BTreeMap<String, u64>) -> Vec<(String, f64)> {
    counts
        .iter()
        .map(|(state, n)| (format!("state=\"{state}\""), *n as f64))
        .collect()
}

pub fn render(s: &Status) -> String {
    let mut m = Metrics::default();
    let c = &s.cache;
    let lookups = c.hits + c.misses;
    let hit_ratio = if lookups == 0 {
        1.0
    } else {
        c.hits as f64 / lookups as f64
    };
    let f = &s.files;
    let scalars: [(&str, &str, &str, f64); 18] = [
        (
            "tidegate_cache_bytes",
            "gauge",
            "Bytes held in the local cache.",
            c.bytes as f64,
        ),
        (
            "tidegate_cache_dirty_bytes",
            "gauge",
            "Bytes written but not yet in the bucket.",
            c.dirty_bytes as f64,
        ),
        (
            "tidegate_upload_buffer_bytes",
            "gauge",
            "Bytes used in the upload buffer.",
            s.upload_buffer.bytes as f64,
        ),
        (
            "tidegate_upload_buffer_capacity_bytes",
            "gauge",
            "Size of the upload buffer.",
            s.upload_buffer.capacity as f64,
        ),
        (
            "tidegate_cache_hits_total",
            "counter",
            "Reads served from the cache.",
            c.hits as f64,
        ),
        (
            "tidegate_cache_misses_total",
            "counter",
            "Reads that needed the bucket.",
            c.misses as f64,
        ),
        (
            "tidegate_cache_hit_ratio",
            "gauge",
            "Cache hits over all lookups since start (1 before any).",
            hit_ratio,
        ),
        (
            "tidegate_uploads_total",
            "counter",
            "Objects uploaded by the cache.",
            s.uploads as f64,
        ),
        (
            "tidegate_upload_errors_total",
            "counter",
            "Failed upload attempts (retried).",
            s.upload_errors as f64,
        ),
        (
            "tidegate_upload_backlog_age_seconds",
            "gauge",
            "Age of the oldest data not yet in the bucket.",
            c.oldest_dirty_secs as f64,
        ),
        (
            "tidegate_writers_waiting",
            "gauge",
            "Writers held because the upload buffer is full.",
            s.writers_waiting as f64,
        ),
        (
            "tidegate_files_staging_bytes",
            "gauge",
            "Bytes the file gateway's staging files take on disk.",
            f.staging_bytes as f64,
        ),
        (
            "tidegate_files_clean_bytes",
            "gauge",
            "Bytes of uploaded files kept on local disk for reads (within the staging limit).",
            f.clean_bytes as f64,
        ),
        (
            "tidegate_files_clean_read_bytes_total",
            "counter",
            "Bytes of file data read from local clean copies instead of the bucket.",
            f.clean_read_bytes as f64,
        ),
        (
            "tidegate_files_staging_limit_bytes",
            "gauge",
            "The most staging may take (cache.size; 0: unbounded).",
            f.staging_limit_bytes as f64,
        ),
        (
            "tidegate_files_writers_waiting",
            "gauge",
            "File writers held until uploads free staging room.",
            f.writers_waiting as f64,
        ),
        (
            "tidegate_files_locks_held",
            "gauge",
            "Byte-range locks held on share files (NFSv4.1 and FUSE).",
            f.locks_held as f64,
        ),
        (
            "tidegate_files_lock_grace_seconds",
            "gauge",
            "Seconds left of the lock grace period after a restart (0: none).",
            f.lock_grace_secs as f64,
        ),
    ];
    for (name, kind, help, value) in scalars {
        m.scalar(name, kind, help, value);
    }
    let t = &s.bucket_traffic;
    m.counter(
        "tidegate_bucket_requests_total",
        "Object requests to the bucket.",
        &[
            ("op=\"put\"".into(), t.puts as f64),
            ("op=\"get\"".into(), t.gets as f64),
        ],
    );
    m.counter(
        "tidegate_bucket_bytes_total",
        "Bytes sent to and received from the bucket.",
        &[
            ("direction=\"upload\"".into(), t.put_bytes as f64),
            ("direction=\"download\"".into(), t.get_bytes as f64),
        ],
    );
    m.scalar(
        "tidegate_bucket_errors_total",
        "counter",
        "Bucket requests that failed.",
        t.errors as f64,
    );
    m.gauge(
        "tidegate_bandwidth_limit_bytes_per_second",
        "Bandwidth limit in force (0: unlimited).",
        &[
            (
                "direction=\"upload\"".into(),
                s.bandwidth.upload.unwrap_or(0) as f64,
            ),
            (
                "direction=\"download\"".into(),
                s.bandwidth.download.unwrap_or(0) as f64,
            ),
        ],
    );
    m.scalar(
        "tidegate_integrity_failures_total",
        "counter",
        "Chunks or objects that failed verification (ever).",
        s.integrity_failures as f64,
    );
    volumes(&mut m, s);
    shares(&mut m, s);
    tapes(&mut m, s);
    jobs(&mut m, s);
    m.0
}

fn volumes(m: &mut Metrics, s: &Status) {
    let per_op = |op: &str, f: fn(&super::types::VolumeIo) -> u64| {
        each(
            &s.volume_io,
            |v| format!("volume=\"{}\",op=\"{op}\"", v.volume),
            f,
        )
    };
    let mut ops = per_op("read", |v| v.reads);
    ops.extend(per_op("write", |v| v.writes));
    m.counter(
        "tidegate_volume_ops_total",
        "Block reads and writes per volume.",
        &ops,
    );
    let mut bytes = per_op("read", |v| v.read_bytes);
    bytes.extend(per_op("write", |v| v.write_bytes));
    m.counter(
        "tidegate_volume_bytes_total",
        "Bytes read and written per volume.",
        &bytes,
    );
    let volume = |v: &super::types::VolumeIo| format!("volume=\"{}\"", v.volume);
    m.counter(
        "tidegate_volume_errors_total",
        "Failed block I/O per volume.",
        &each(&s.volume_io, volume, |v| v.errors),
    );
    let stored = |v: &super::types::StoredProgress| format!("volume=\"{}\"", v.volume);
    m.gauge(
        "tidegate_stored_dirty_chunks",
        "Stored volumes: chunks not yet in the bucket.",
        &each(&s.stored, stored, |p| p.dirty_chunks),
    );
    m.gauge(
        "tidegate_stored_download_pending_chunks",
        "Stored volumes restored from a snapshot: chunks still to download.",
        &each(&s.stored, stored, |p| p.download_pending),
    );
    m.gauge(
        "tidegate_snapshots",
        "Snapshots by state.",
        &by_state(&s.snapshots),
    );
}

/// File shares: traffic since start (per-volume I/O's counterpart) and the upload state from
/// the catalog, so an alert can say a share's data is not yet in the bucket.
fn shares(m: &mut Metrics, s: &Status) {
    let mut ops = Vec::new();
    let mut bytes = Vec::new();
    for t in &s.share_traffic {
        let l = format!("share=\"{}\"", t.share);
        for (op, n) in [
            ("read", t.reads),
            ("write", t.writes),
            ("commit", t.commits),
            ("other", t.other),
        ] {
            ops.push((format!("{l},op=\"{op}\""), n as f64));
        }
        bytes.push((format!("{l},op=\"read\""), t.read_bytes as f64));
        bytes.push((format!("{l},op=\"write\""), t.write_bytes as f64));
    }
    let traffic = |t: &super::types::ShareTraffic| format!("share=\"{}\"", t.share);
    let share = |t: &super::types::Share| format!("share=\"{}\"", t.name);
    m.counter(
        "tidegate_share_ops_total",
        "Calls per file share (read, write, commit; other: lookups, attributes, names).",
        &ops,
    );
    m.counter(
        "tidegate_share_bytes_total",
        "Bytes read and written per file share.",
        &bytes,
    );
    type TrafficFigure = fn(&super::types::ShareTraffic) -> u64;
    let counters: [(&str, &str, TrafficFigure); 2] = [
        (
            "tidegate_share_uploads_total",
            "Objects uploaded per file share.",
            |t| t.uploads,
        ),
        (
            "tidegate_share_upload_bytes_total",
            "File bytes uploaded per file share.",
            |t| t.upload_bytes,
        ),
    ];
    for (name, help, f) in counters {
        m.counter(name, help, &each(&s.share_traffic, traffic, f));
    }
    type ShareFigure = fn(&super::types::Share) -> u64;
    let gauges: [(&str, &str, ShareFigure); 3] = [
        (
            "tidegate_share_dirty_files",
            "Files, symlinks and changes not yet in the bucket, per share (0: all there).",
            |t| t.dirty_files,
        ),
        (
            "tidegate_share_dirty_bytes",
            "Bytes of files not yet in the bucket, per share.",
            |t| t.dirty_bytes,
        ),
        (
            "tidegate_share_pending_deletes",
            "Objects still to delete from the bucket (removed or renamed files), per share.",
            |t| t.pending_deletes,
        ),
    ];
    for (name, help, f) in gauges {
        m.gauge(name, help, &each(&s.shares, share, f));
    }
    m.gauge(
        "tidegate_share_last_upload_timestamp_seconds",
        "When the share's last upload completed (Unix time; 0: never).",
        &each(&s.shares, share, |t| {
            t.last_upload_unix
                .and_then(|u| u64::try_from(u).ok())
                .unwrap_or(0)
        }),
    );
}

fn tapes(m: &mut Metrics, s: &Status) {
    m.gauge(
        "tidegate_tapes",
        "Tapes by state.",
        &by_state(&s.tape_states),
    );
    m.gauge(
        "tidegate_tape_data_bytes",
        "Bytes of data on each tape.",
        &each(
            &s.tapes,
            |t| format!("barcode=\"{}\"", t.barcode),
            |t| t.data_bytes,
        ),
    );
    let mut io = Vec::new();
    for d in &s.drives {
        io.push((
            format!("drive=\"{}\",op=\"write\"", d.drive),
            d.written_bytes as f64,
        ));
        io.push((
            format!("drive=\"{}\",op=\"read\"", d.drive),
            d.read_bytes as f64,
        ));
    }
    m.counter(
        "tidegate_tape_drive_bytes_total",
        "Bytes clients wrote to and read from tapes, per drive.",
        &io,
    );
    // Tapes on their way to or from the shelf carry their progress.
    let moving: Vec<(String, u64, u64)> = s
        .tapes
        .iter()
        .filter_map(|t| {
            let op = match t.state.as_str() {
                "archiving" => "archive",
                "retrieving" => "retrieve",
                _ => return None,
            };
            let label = format!("barcode=\"{}\",op=\"{op}\"", t.barcode);
            Some((label, t.progress_bytes.unwrap_or(0), t.data_bytes))
        })
        .collect();
    m.gauge(
        "tidegate_shelf_progress_bytes",
        "Tapes being archived or retrieved: bytes done.",
        &each(&moving, |t| t.0.clone(), |t| t.1),
    );
    m.gauge(
        "tidegate_shelf_total_bytes",
        "Tapes being archived or retrieved: bytes in all.",
        &each(&moving, |t| t.0.clone(), |t| t.2),
    );
}

fn jobs(m: &mut Metrics, s: &Status) {
    m.gauge(
        "tidegate_jobs",
        "Import and export jobs by state.",
        &by_state(&s.job_states),
    );
    let job = |j: &super::types::Job| format!("job=\"{}\",state=\"{}\"", j.id, j.state);
    type Figure = fn(&super::types::Job) -> u64;
    let families: [(&str, &str, Figure); 5] = [
        (
            "tidegate_job_objects",
            "Objects a job holds on the device.",
            |j| j.objects,
        ),
        (
            "tidegate_job_imported_objects",
            "Objects an import job has imported.",
            |j| j.imported_objects,
        ),
        (
            "tidegate_job_failed_objects",
            "Objects an import job could not import.",
            |j| j.failed_objects,
        ),
        (
            "tidegate_job_bytes",
            "Bytes a job holds on the device.",
            |j| j.bytes,
        ),
        (
            "tidegate_job_imported_bytes",
            "Bytes an import job has imported.",
            |j| j.imported_bytes,
        ),
    ];
    for (name, help, f) in families {
        m.gauge(name, help, &each(&s.jobs, job, f));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::api::types::{Job, Limits, Share, ShareTraffic, Tape, VolumeIo};

    fn tape(barcode: &str, state: &str, progress: Option<u64>) -> Tape {
        Tape {
            barcode: barcode.into(),
            size_bytes: 100,
            state: state.into(),
            state_label: state.to_uppercase(),
            location: None,
            location_label: "shelf".into(),
            data_bytes: 40,
            objects: 1,
            read_only: false,
            retention_until_unix: None,
            lock_mode: None,
            tree_hash: None,
            archived_unix: None,
            progress_bytes: progress,
            error: None,
        }
    }

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    fn status() -> Status {
        Status {
            bandwidth: Limits {
                upload: Some(1024),
                download: None,
            },
            volume_io: vec![VolumeIo {
                volume: "v".into(),
                reads: 2,
                write_bytes: 4096,
                ..VolumeIo::default()
            }],
            share_traffic: vec![ShareTraffic {
                share: "docs".into(),
                writes: 3,
                ..ShareTraffic::default()
            }],
            shares: vec![Share {
                name: "docs".into(),
                prefix: "docs".into(),
                read_only: false,
                squash: "root".into(),
                allowed_clients: vec![],
                refresh_secs: 60,
                dirty_files: 1,
                dirty_bytes: 10,
                pending_deletes: 0,
                last_upload_unix: None,
                in_bucket: false,
            }],
            tapes: vec![
                tape("A00001", "available", None),
                tape("A00002", "archiving", Some(30)),
            ],
            tape_states: [("available", 1), ("archiving", 1), ("damaged", 0)]
                .map(|(k, n)| (k.to_owned(), n))
                .into(),
            job_states: [("sealed".to_owned(), 1)].into(),
            jobs: vec![Job {
                id: "j1".into(),
                kind: "import".into(),
                target: None,
                source: None,
                state: "sealed".into(),
                reason: None,
                created_unix: 0,
                updated_unix: 0,
                sealed_unix: None,
                finished_unix: None,
                objects: 3,
                bytes: 300,
                imported_objects: 0,
                imported_bytes: 0,
                failed_objects: 0,
                progress: 0.0,
            }],
            ..Status::default()
        }
    }

    #[test]
    fn every_figure_of_the_snapshot_becomes_its_series() {
        let text = render(&status());
        let cases: [(&str, f64); 13] = [
            ("tidegate_cache_hit_ratio", 1.0),
            (
                r#"tidegate_bandwidth_limit_bytes_per_second{direction="upload"}"#,
                1024.0,
            ),
            (
                r#"tidegate_bandwidth_limit_bytes_per_second{direction="download"}"#,
                0.0,
            ),
            (r#"tidegate_volume_ops_total{volume="v",op="read"}"#, 2.0),
            (
                r#"tidegate_volume_bytes_total{volume="v",op="write"}"#,
                4096.0,
            ),
            (r#"tidegate_share_ops_total{share="docs",op="write"}"#, 3.0),
            (r#"tidegate_share_dirty_files{share="docs"}"#, 1.0),
            (
                r#"tidegate_share_last_upload_timestamp_seconds{share="docs"}"#,
                0.0,
            ),
            (r#"tidegate_tapes{state="available"}"#, 1.0),
            (r#"tidegate_tapes{state="damaged"}"#, 0.0),
            (
                r#"tidegate_shelf_progress_bytes{barcode="A00002",op="archive"}"#,
                30.0,
            ),
            (r#"tidegate_jobs{state="sealed"}"#, 1.0),
            (r#"tidegate_job_bytes{job="j1",state="sealed"}"#, 300.0),
        ];
        for (series, want) in cases {
            assert_eq!(sample(&text, series), Some(want), "{series}\n{text}");
        }
        assert_eq!(
            sample(
                &text,
                r#"tidegate_shelf_progress_bytes{barcode="A00001",op="archive"}"#
            ),
            None,
            "a tape at rest has no shelf progress"
        );
    }

    #[test]
    fn each_family_has_one_help_and_one_type_line() {
        let text = render(&status());
        let mut seen = std::collections::HashSet::new();
        for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = l.split(' ').nth(2).unwrap();
            assert!(seen.insert(name.to_owned()), "{name} twice");
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
        }
        assert!(seen.len() > 30, "{}", seen.len());
    }
}
