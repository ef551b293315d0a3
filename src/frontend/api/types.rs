//! The management API's request and reply types: one struct per request body and per answer,
//! shared by the HTTP routes (which serialise them), the daemon's implementation (which builds
//! them) and the CLI (which sends and prints them, in-process or over HTTP), as garage's admin
//! API pairs a request and a response struct per endpoint.
//!
//! These are the wire format: field names are the JSON (and `run/status.toml`) keys documented
//! in docs/operations.md, so renaming one is an API change. Fields added later carry
//! `#[serde(default)]` so an older daemon's answer still reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// A size in a request: a number of bytes or a string such as `"10GiB"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

/// A file mode in a request: an octal string as people write it (`"0644"`) or a number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Mode {
    Number(u32),
    Octal(String),
}

/// `Some(None)` for an explicit `null`, `None` for a field left out: a `PUT` that changes some
/// fields and clears others.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// The answer to a `DELETE`: what was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    pub deleted: String,
}

// ---- volumes -------------------------------------------------------------------------------

/// `POST /api/v1/volumes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateVolume {
    pub name: String,
    /// Required unless `from_snapshot` is given (the snapshot's size is used).
    #[serde(default)]
    pub size: Option<Size>,
    /// `cached` (the default) or `stored`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Stored volumes: the local file or block device that holds the data.
    #[serde(default)]
    pub local_path: Option<String>,
    /// Restore: the snapshot the new volume starts from.
    #[serde(default)]
    pub from_snapshot: Option<String>,
    /// Stored volumes: keep (and upload) what the local path already holds.
    #[serde(default)]
    pub preserve_existing: bool,
}

/// A volume, as `GET /api/v1/volumes` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub size_bytes: u64,
    pub mode: String,
    /// The iSCSI target name.
    pub target: String,
    /// Bytes of the volume whose chunks are in the bucket.
    pub in_bucket_bytes: u64,
    pub local_path: Option<String>,
    pub origin_snapshot: Option<String>,
}

// ---- snapshots -----------------------------------------------------------------------------

/// `POST /api/v1/snapshots`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSnapshot {
    pub volume: String,
    #[serde(default)]
    pub description: String,
}

/// A snapshot, as `GET /api/v1/snapshots` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub volume: String,
    pub size_bytes: u64,
    /// `requested`, `cutting`, `uploading`, `complete` or `failed`.
    pub state: String,
    pub error: Option<String>,
    pub description: String,
    pub scheduled: bool,
    pub requested_unix: i64,
    pub completed_unix: Option<i64>,
    pub chunks: u64,
    pub new_chunks: u64,
    pub uploaded_bytes: u64,
}

/// `PUT /api/v1/volumes/{name}/schedule`: a snapshot every `every_secs`, keeping `keep`;
/// `off` removes the schedule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetSchedule {
    #[serde(default)]
    pub every_secs: u64,
    #[serde(default)]
    pub keep: u32,
    #[serde(default)]
    pub off: bool,
}

/// The schedule in force after a `PUT .../schedule` (`None` fields: no schedule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub volume: String,
    pub every_secs: Option<u64>,
    pub keep: Option<u32>,
}

// ---- shares --------------------------------------------------------------------------------

/// `POST /api/v1/shares`; all but the name optional, with the CLI's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateShare {
    pub name: String,
    /// Where its objects go in the bucket (default: the share's name).
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub read_only: bool,
    /// `root` (the default), `all` or `none`.
    #[serde(default)]
    pub squash: Option<String>,
    /// CIDRs; none or empty: any client.
    #[serde(default)]
    pub allowed_clients: Option<Vec<String>>,
    #[serde(default)]
    pub default_uid: Option<u32>,
    #[serde(default)]
    pub default_gid: Option<u32>,
    #[serde(default)]
    pub default_mode: Option<Mode>,
    #[serde(default)]
    pub default_dir_mode: Option<Mode>,
    #[serde(default)]
    pub refresh_secs: Option<u64>,
}

/// A share with its upload state, as `GET /api/v1/shares` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    pub name: String,
    pub prefix: String,
    pub read_only: bool,
    pub squash: String,
    pub allowed_clients: Vec<String>,
    pub refresh_secs: u64,
    /// Files, symlinks and changes not yet in the bucket.
    pub dirty_files: u64,
    pub dirty_bytes: u64,
    /// Objects still to delete from the bucket (removed or renamed files).
    pub pending_deletes: u64,
    pub last_upload_unix: Option<i64>,
    /// True when everything written so far is in the bucket.
    pub in_bucket: bool,
}

/// `POST /api/v1/shares/{name}/refresh`: the directory (and those below it) to re-list from
/// the bucket on next access; none: the whole share.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshShare {
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refreshed {
    pub share: String,
    /// Directories that will be re-listed.
    pub directories: u64,
}

// ---- tapes ---------------------------------------------------------------------------------

/// `POST /api/v1/tapes`, as `tape create` takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTapes {
    pub barcode_prefix: String,
    /// How many (default 1).
    #[serde(default)]
    pub count: Option<u32>,
    pub size: Option<Size>,
    /// Retention: days, with a `lock` of `governance` or `compliance` (both or neither).
    #[serde(default)]
    pub retention_days: Option<u32>,
    #[serde(default)]
    pub lock: Option<String>,
}

/// Where a tape sits in the library (a tape on the shelf has none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapeLocation {
    /// `slot`, `drive` or `mail`.
    pub kind: String,
    /// 1-based, as people count.
    pub number: u32,
    /// The SMC element address.
    pub address: u16,
}

/// A tape, as the API, the console and `tidegate tape` show it: the raw fields plus the labels
/// people read (`state_label` with the shelf progress, `location_label`), so every client
/// prints the same thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tape {
    pub barcode: String,
    pub size_bytes: u64,
    pub state: String,
    pub state_label: String,
    pub location: Option<TapeLocation>,
    pub location_label: String,
    pub data_bytes: u64,
    pub objects: u64,
    pub read_only: bool,
    pub retention_until_unix: Option<i64>,
    pub lock_mode: Option<String>,
    /// Hex SHA-256 tree hash of the archive, once archived.
    pub tree_hash: Option<String>,
    pub archived_unix: Option<i64>,
    /// Archiving or retrieving: bytes done so far.
    pub progress_bytes: Option<u64>,
    pub error: Option<String>,
}

// ---- jobs ----------------------------------------------------------------------------------

/// An import or export job, as `GET /api/v1/jobs` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    /// `import` or `export`.
    pub kind: String,
    /// Import: the bucket URL imported into; export: the one exported from.
    pub target: Option<String>,
    pub source: Option<String>,
    /// Lower case: `created`, `loading`, `sealed`, `importing`, `complete`, `failed`, ...
    pub state: String,
    pub reason: Option<String>,
    pub created_unix: i64,
    pub updated_unix: i64,
    pub sealed_unix: Option<i64>,
    pub finished_unix: Option<i64>,
    pub objects: u64,
    pub bytes: u64,
    pub imported_objects: u64,
    pub imported_bytes: u64,
    pub failed_objects: u64,
    /// 0.0 to 1.0.
    pub progress: f64,
}

// ---- bandwidth and history -----------------------------------------------------------------

/// Upload and download limits in bytes per second; `None`: unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub upload: Option<u64>,
    pub download: Option<u64>,
}

/// One window of the configured schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// `mon` .. `sun`.
    pub days: Vec<String>,
    /// `HH:MM`, local time.
    pub start: String,
    pub end: String,
    pub upload: Option<u64>,
    pub download: Option<u64>,
}

/// `GET /api/v1/bandwidth`: the limits in force, the defaults outside the windows, and the
/// schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bandwidth {
    pub upload: Option<u64>,
    pub download: Option<u64>,
    pub defaults: Limits,
    pub schedule: Vec<Window>,
    /// The index of the open schedule window, if one is.
    pub active_window: Option<usize>,
}

/// `PUT /api/v1/bandwidth`: a field left out keeps its value, `null` removes the limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetBandwidth {
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub upload: Option<Option<Size>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub download: Option<Option<Size>>,
}

/// One sample of `GET /api/v1/history`: cumulative since start, bytes to and from the bucket
/// and read and written by clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub unix: i64,
    pub upload_bytes: u64,
    pub download_bytes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    /// The upload buffer's fill level when sampled.
    #[serde(default)]
    pub buffer_bytes: u64,
}

// ---- status --------------------------------------------------------------------------------

/// The cache's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheFigures {
    pub capacity: u64,
    /// Why the capacity is what it is: the config, or the sizing rule and what it measured.
    #[serde(default)]
    pub sizing: String,
    pub bytes: u64,
    pub dirty_bytes: u64,
    /// Age of the oldest data not yet in the bucket.
    pub oldest_dirty_secs: u64,
    pub hits: u64,
    pub misses: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferFigures {
    pub bytes: u64,
    pub capacity: u64,
    /// Why the capacity is what it is (as `CacheFigures::sizing`).
    #[serde(default)]
    pub sizing: String,
}

/// Requests to the bucket since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketTraffic {
    pub puts: u64,
    pub put_bytes: u64,
    pub gets: u64,
    pub get_bytes: u64,
    /// Failed requests (after retries).
    pub errors: u64,
}

/// The file gateway's uploader and staging.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesFigures {
    pub uploads: u64,
    pub upload_errors: u64,
    /// Bytes read from the bucket.
    pub download_bytes: u64,
    /// Bytes read from clean copies (files kept on local disk after their upload) instead.
    #[serde(default)]
    pub clean_read_bytes: u64,
    /// Bytes the clean copies take on disk, within what staging leaves of its limit.
    #[serde(default)]
    pub clean_bytes: u64,
    /// Large files whose upload started before the upload delay ran out, and such uploads
    /// abandoned because the file changed.
    pub early_uploads: u64,
    pub early_abandoned: u64,
    pub staging_bytes: u64,
    /// 0: unbounded.
    pub staging_limit_bytes: u64,
    pub writers_waiting: u64,
    /// Byte-range locks and share reservations held by NFSv4.1 and FUSE clients.
    #[serde(default)]
    pub locks_held: u64,
    #[serde(default)]
    pub share_reservations: u64,
    /// Seconds left of the grace period after a restart (0: none), in which only the clients
    /// of the last run may take back their locks.
    #[serde(default)]
    pub lock_grace_secs: u64,
}

/// Block I/O on one volume since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeIo {
    pub volume: String,
    pub reads: u64,
    pub writes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub errors: u64,
}

/// A stored volume's background work.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredProgress {
    pub volume: String,
    /// Chunks changed locally and not yet in the bucket.
    pub dirty_chunks: u64,
    /// Restore: chunks still to download, of how many.
    pub download_pending: u64,
    pub download_total: u64,
    /// Initial upload of preserved data: chunks compared so far, of how many (0 of 0 when done).
    pub initial_done: u64,
    pub initial_total: u64,
    pub uploaded_chunks: u64,
    pub upload_errors: u64,
}

/// Calls on one file share since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareTraffic {
    pub share: String,
    pub reads: u64,
    pub writes: u64,
    pub commits: u64,
    /// Lookups, attributes, names: every call that is not a read, write or commit.
    pub other: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub uploads: u64,
    pub upload_bytes: u64,
}

/// Bytes clients wrote to and read from tapes in one drive since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveIo {
    /// 1-based.
    pub drive: u32,
    pub written_bytes: u64,
    pub read_bytes: u64,
}

/// Everything `GET /api/v1/status` answers, `/metrics` renders, the daemon writes to
/// `run/status.toml` every second and `tidegate status` prints: one snapshot, taken at
/// `updated_unix`, so the four can never disagree.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub gateway: String,
    pub bucket: String,
    pub updated_unix: i64,
    /// False while the snapshot comes from a data dir with no daemon (figures on disk only).
    pub running: bool,
    pub healthy: bool,
    pub problems: Vec<String>,
    /// Advice that does not make the gateway unhealthy (an upload buffer small for the
    /// volumes' write bursts).
    #[serde(default)]
    pub warnings: Vec<String>,
    pub cache: CacheFigures,
    pub upload_buffer: BufferFigures,
    pub uploads: u64,
    pub upload_errors: u64,
    pub writers_waiting: u64,
    /// The limits in force.
    pub bandwidth: Limits,
    pub bucket_traffic: BucketTraffic,
    /// Chunks or objects that ever failed verification.
    pub integrity_failures: u64,
    pub files: FilesFigures,
    pub volumes: Vec<Volume>,
    pub volume_io: Vec<VolumeIo>,
    pub stored: Vec<StoredProgress>,
    /// Snapshot count per state.
    pub snapshots: BTreeMap<String, u64>,
    pub shares: Vec<Share>,
    pub share_traffic: Vec<ShareTraffic>,
    pub tapes: Vec<Tape>,
    /// Tape count per state, every state listed.
    pub tape_states: BTreeMap<String, u64>,
    pub drives: Vec<DriveIo>,
    pub jobs: Vec<Job>,
    /// Job count per state (lower case), every state listed.
    pub job_states: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_bandwidth_tells_null_from_absent() {
        let cases: [(&str, SetBandwidth); 3] = [
            ("{}", SetBandwidth::default()),
            (
                r#"{"upload":null}"#,
                SetBandwidth {
                    upload: Some(None),
                    download: None,
                },
            ),
            (
                r#"{"upload":"10MiB","download":5}"#,
                SetBandwidth {
                    upload: Some(Some(Size::Text("10MiB".into()))),
                    download: Some(Some(Size::Bytes(5))),
                },
            ),
        ];
        for (json, want) in cases {
            let got: SetBandwidth = serde_json::from_str(json).unwrap();
            assert_eq!(got, want, "{json}");
            // And back: what the CLI posts is what the daemon reads.
            let again: SetBandwidth =
                serde_json::from_str(&serde_json::to_string(&got).unwrap()).unwrap();
            assert_eq!(again, want, "{json}");
        }
    }

    #[test]
    fn sizes_and_modes_take_numbers_or_text() {
        let v: CreateVolume = serde_json::from_str(r#"{"name":"a","size":"16MiB"}"#).unwrap();
        assert_eq!(v.size, Some(Size::Text("16MiB".into())));
        let v: CreateVolume = serde_json::from_str(r#"{"name":"a","size":1024}"#).unwrap();
        assert_eq!(v.size, Some(Size::Bytes(1024)));
        let s: CreateShare =
            serde_json::from_str(r#"{"name":"s","default_mode":"0640","default_dir_mode":493}"#)
                .unwrap();
        assert_eq!(s.default_mode, Some(Mode::Octal("0640".into())));
        assert_eq!(s.default_dir_mode, Some(Mode::Number(493)));
    }

    #[test]
    fn the_status_snapshot_round_trips_through_toml_and_json() {
        let s = Status {
            gateway: "gw".into(),
            bucket: "file:///b".into(),
            updated_unix: 1_795_435_200,
            running: true,
            healthy: false,
            problems: vec!["upload buffer full".into()],
            bandwidth: Limits {
                upload: Some(10 << 20),
                download: None,
            },
            stored: vec![StoredProgress {
                volume: "v".into(),
                dirty_chunks: 3,
                ..StoredProgress::default()
            }],
            snapshots: [("complete".to_owned(), 2)].into(),
            jobs: vec![Job {
                id: "j".into(),
                kind: "import".into(),
                target: Some("s3://b/p".into()),
                source: None,
                state: "created".into(),
                reason: None,
                created_unix: 1,
                updated_unix: 2,
                sealed_unix: None,
                finished_unix: None,
                objects: 0,
                bytes: 0,
                imported_objects: 0,
                imported_bytes: 0,
                failed_objects: 0,
                progress: 0.5,
            }],
            ..Status::default()
        };
        let toml_text = toml::to_string(&s).unwrap();
        assert_eq!(toml::from_str::<Status>(&toml_text).unwrap(), s);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), s);
    }
}
