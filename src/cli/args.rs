//! The command line, as typed (clap derive). Parsing only; `cli::run` turns it into actions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::ByteSize;

#[derive(Debug, Parser)]
#[command(
    name = "tidegate",
    version,
    about = "A storage gateway between on-premise clients and an S3-compatible bucket",
    after_help = "Exit status: 0 ok, 1 runtime failure, 2 usage or configuration error."
)]
pub struct Cli {
    /// Config file [default: DATA_DIR/tidegate.toml if it exists, else the embedded default]
    #[arg(long, global = true, env = "TIDEGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data dir for the embedded default and for configs that do not set gateway.data_dir
    /// [default: $XDG_DATA_HOME/tidegate, else ./tidegate-data]
    #[arg(long, global = true, env = "TIDEGATE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (with no config: the embedded default, a local-directory bucket).
    Serve {
        /// Overrides iscsi.listen (e.g. 127.0.0.1:0 for any free port; see run/ready.toml).
        #[arg(long, value_name = "IP:PORT")]
        iscsi_listen: Option<std::net::SocketAddr>,
        /// Overrides api.listen (the management API and /metrics; see run/ready.toml).
        #[arg(long, value_name = "IP:PORT")]
        api_listen: Option<std::net::SocketAddr>,
        /// Overrides nfs.listen (NFS, MOUNT and portmapper GETPORT on one port).
        #[arg(long, value_name = "IP:PORT")]
        nfs_listen: Option<std::net::SocketAddr>,
        /// Overrides nfs.rpcbind: `off`, `on` (port 111 on the NFS address) or IP:PORT.
        #[arg(long, value_name = "on|off|IP:PORT")]
        rpcbind: Option<String>,
        /// Also mount a share locally through FUSE (repeatable); unmounted at shutdown.
        #[arg(long, value_name = "SHARE=DIR", value_parser = parse_mount)]
        fuse: Vec<(String, PathBuf)>,
    },
    /// Run the gateway with SHARE mounted at DIR through FUSE (`serve --fuse SHARE=DIR`).
    Mount {
        share: String,
        dir: PathBuf,
        #[arg(long, value_name = "IP:PORT")]
        nfs_listen: Option<std::net::SocketAddr>,
        #[arg(long, value_name = "on|off|IP:PORT")]
        rpcbind: Option<String>,
        #[arg(long, value_name = "IP:PORT")]
        iscsi_listen: Option<std::net::SocketAddr>,
        #[arg(long, value_name = "IP:PORT")]
        api_listen: Option<std::net::SocketAddr>,
    },
    /// Show the gateway's health: bucket, key, daemon, cache, upload buffer, integrity.
    Status,
    /// Pair this appliance with a bucket and a key, and write its config.
    Activate(Box<ActivateArgs>),
    /// Print the Glacier SHA-256 tree hash of files, like sha256sum ("-" for stdin).
    Treehash {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Measure the speed of the codec and its primitives.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Read back and verify every chunk in the bucket.
    Scrub,
    /// Create, list and delete block volumes (served over iSCSI by `serve`).
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Point-in-time snapshots of volumes into the bucket.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Delete bucket chunks no volume or snapshot references (mark and sweep).
    Gc {
        /// Report what would be freed; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Never delete an object younger than this (uploads and snapshots in flight).
        #[arg(long, default_value = "24h", value_parser = parse_duration, value_name = "DURATION")]
        grace: std::time::Duration,
    },
    /// Rebuild a lost gateway from its bucket and key file on a fresh data dir.
    Recover(Box<RecoverArgs>),
    /// Create, list, delete and refresh file shares (served over NFS by `serve`).
    #[command(subcommand)]
    Share(ShareCommand),
    /// Virtual tapes: create, list, show, delete, retrieve from and verify on the shelf.
    #[command(subcommand)]
    Tape(TapeCommand),
    /// Low-level chunk access, for debugging and tests.
    #[command(subcommand, hide = true)]
    Chunk(ChunkCommand),
    /// Bulk import/export jobs (the device mode): create, seal, import, export, complete, status.
    #[command(subcommand)]
    Job(JobCommand),
    /// Unlock a job's device (serves its S3 endpoint until locked) or lock it.
    #[command(subcommand)]
    Device(DeviceCommand),
}

#[derive(Debug, Subcommand)]
pub enum TapeCommand {
    /// Create tapes in free storage slots of the library (a running daemon sees them at once).
    Create {
        /// Barcodes are PREFIX followed by a number (1 to 12 characters of A-Z, 0-9).
        #[arg(long)]
        barcode_prefix: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Capacity of each tape, 100GiB to 5TiB.
        #[arg(long)]
        size: ByteSize,
        /// Keep the tapes at least this many days after creation.
        #[arg(long, requires = "lock")]
        retention_days: Option<u32>,
        #[arg(long, value_enum, requires = "retention_days")]
        lock: Option<LockArg>,
    },
    /// List tapes with their state, location and data.
    List,
    /// One tape in detail.
    Show { barcode: String },
    /// Delete a tape: empty in the library, or archived and past its retention.
    Delete {
        barcode: String,
        /// Override a governance-mode retention lock (never a compliance one).
        #[arg(long)]
        bypass_governance: bool,
    },
    /// Bring an archived tape back into a storage slot, read-only, after verifying it.
    Retrieve { barcode: String },
    /// Re-read an archived tape's archive objects and check their tree hashes.
    Verify { barcode: String },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LockArg {
    /// Deletable before the date with --bypass-governance.
    Governance,
    /// Not deletable before the date by anyone.
    Compliance,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Seal/open 1 MiB chunks and the tree hash, with ratios to their primitives.
    Codec {
        /// A couple of iterations only: shows every step runs, says nothing about speed.
        #[arg(long)]
        quick: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume; a running daemon exposes it within a second or two.
    Create {
        #[arg(long)]
        name: String,
        /// Size, a whole number of MiB up to 32TiB (e.g. 100GiB, 2TiB).
        #[arg(
            long,
            required_unless_present_any = ["from_snapshot", "preserve_existing"],
            conflicts_with = "from_snapshot"
        )]
        size: Option<ByteSize>,
        /// Restore: the new volume starts with this snapshot's content (its size too).
        #[arg(long, value_name = "SNAPSHOT")]
        from_snapshot: Option<String>,
        #[arg(long, value_enum, default_value_t = VolumeModeArg::Cached)]
        mode: VolumeModeArg,
        /// Stored volumes: the local file (created if missing) or block device holding the data.
        #[arg(long, value_name = "PATH")]
        local_path: Option<String>,
        /// Stored volumes: keep the data already on the local disk and upload it.
        #[arg(long, conflicts_with = "from_snapshot")]
        preserve_existing: bool,
    },
    /// List volumes with their iSCSI target names.
    List,
    /// Delete a volume and its chunk map (its bucket chunks are freed by garbage collection).
    Delete { name: String },
    /// Deploy a VM image (raw, qcow2, vmdk, ...) as a new volume, straight into the bucket.
    /// Formats other than raw need qemu-img and temporary space in DATA_DIR/staging.
    Import {
        /// The image file.
        #[arg(value_name = "IMAGE")]
        image: PathBuf,
        /// Name of the new volume (its size is the image's, rounded up to whole MiB).
        #[arg(long)]
        name: String,
        /// The image's format; auto asks qemu-img (or, without it, the file's magic number).
        #[arg(long, value_enum, default_value_t = ImageFormatArg::Auto)]
        format: ImageFormatArg,
    },
    /// Write a volume's current content to an image file. Refused while the daemon runs: stop
    /// it first (this uploads what its upload buffer still holds).
    Export {
        volume: String,
        /// The image file to write (replaced if it exists, once the export is complete).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The file's format; auto goes by its extension (.qcow2, .vmdk, else raw).
        #[arg(long, value_enum, default_value_t = ImageFormatArg::Auto)]
        format: ImageFormatArg,
        /// Export this snapshot of the volume instead (works while the daemon runs).
        #[arg(long, value_name = "SNAPSHOT")]
        snapshot: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageFormatArg {
    Auto,
    Raw,
    Qcow2,
    Vmdk,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Take a crash-consistent snapshot now: every write acknowledged before the call is in.
    Create {
        volume: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Return once requested instead of waiting for the snapshot to commit.
        #[arg(long)]
        no_wait: bool,
    },
    /// List snapshots (of one volume if given).
    List { volume: Option<String> },
    /// Delete a snapshot (its chunks are freed by `tidegate gc` if nothing else uses them).
    Delete { snapshot: String },
    /// Take snapshots of a volume on a schedule, keeping the newest few.
    Schedule {
        volume: String,
        /// Interval, e.g. 1h, 30m, 1d (at least 1m).
        #[arg(long, value_parser = parse_duration, value_name = "DURATION", required_unless_present = "off")]
        every: Option<std::time::Duration>,
        /// Scheduled snapshots to keep (older ones are deleted; manual ones never are).
        #[arg(long, default_value_t = 24)]
        keep: u32,
        /// Remove the volume's schedule.
        #[arg(long, conflicts_with = "every")]
        off: bool,
    },
}

/// `90s`, `30m`, `1h`, `2d`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with s, m, h or d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use s, m, h or d)")),
    };
    n.checked_mul(scale)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    #[command(flatten)]
    pub bucket: BucketArgs,
    /// The lost gateway's key file (required: nothing in the bucket reads without it).
    #[arg(long, value_name = "FILE")]
    pub key_file: PathBuf,
    /// Which gateway's catalog to recover when the bucket holds several.
    #[arg(long, value_name = "ID")]
    pub gateway_id: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum VolumeModeArg {
    /// The bucket is the source of truth; the local cache holds the hot set.
    Cached,
    /// The local disk is the source of truth, backed up to the bucket asynchronously.
    Stored,
}

#[derive(Debug, Subcommand)]
pub enum ShareCommand {
    /// Create a share; a running daemon exports it at once as /NAME.
    Create(ShareCreateArgs),
    /// List shares with their bucket prefixes and policies.
    List,
    /// Remove a share from the catalog (its objects stay in the bucket).
    Delete {
        name: String,
        /// Delete even if files are not uploaded yet (their changes are lost).
        #[arg(long)]
        force: bool,
    },
    /// Make the share re-list the bucket (all of it, or PATH and below) on next access.
    Refresh { name: String, path: Option<String> },
    /// Files and bytes not yet uploaded, and when the last upload completed.
    Status { name: String },
}

#[derive(Debug, Args)]
pub struct ShareCreateArgs {
    pub name: String,
    /// Key prefix in the bucket [default: shares/NAME/]
    #[arg(long, value_name = "PREFIX")]
    pub bucket_prefix: Option<String>,
    #[arg(long)]
    pub read_only: bool,
    /// Which callers become the anonymous user (65534).
    #[arg(long, value_enum, default_value_t = SquashArg::Root)]
    pub squash: SquashArg,
    /// Comma-separated addresses or CIDRs allowed to mount [default: any]
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    pub allowed_clients: Vec<String>,
    /// Owner of objects that carry no owner metadata.
    #[arg(long, default_value_t = 0)]
    pub default_uid: u32,
    #[arg(long, default_value_t = 0)]
    pub default_gid: u32,
    /// Mode (octal) of files whose objects carry none.
    #[arg(long, default_value = "644", value_parser = parse_octal)]
    pub default_mode: u32,
    /// Mode (octal) of directories implied by prefixes.
    #[arg(long, default_value = "755", value_parser = parse_octal)]
    pub default_dir_mode: u32,
    /// Seconds before a directory listing is checked against the bucket again (0 = always).
    #[arg(long, default_value_t = crate::gateway::files::DEFAULT_REFRESH_SECS)]
    pub refresh_secs: u64,
}

fn parse_mount(s: &str) -> Result<(String, PathBuf), String> {
    let (share, dir) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected SHARE=DIR"))?;
    Ok((share.to_owned(), PathBuf::from(dir)))
}

fn parse_octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{s:?} is not an octal mode"))
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SquashArg {
    /// uid 0 becomes 65534 (the NFS default).
    Root,
    /// Every caller becomes 65534.
    All,
    /// Callers keep their uid and gid.
    None,
}

#[derive(Debug, Subcommand)]
pub enum ChunkCommand {
    /// Store a file (up to 64 MiB) as one chunk and print its id.
    Put { file: PathBuf },
    /// Fetch and verify a chunk, writing it to stdout or a file.
    Get {
        id: String,
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

/// Which bucket, and how to reach it (`activate` and `recover`).
#[derive(Debug, Args)]
pub struct BucketArgs {
    /// Gateway name.
    #[arg(long, default_value = crate::config::defaults::NAME)]
    pub name: String,
    /// s3://bucket[/prefix] or file:///absolute/dir
    #[arg(long, value_name = "URL")]
    pub bucket: String,
    /// S3 endpoint, e.g. http://127.0.0.1:3900 (default: AWS).
    #[arg(long)]
    pub endpoint: Option<String>,
    #[arg(long)]
    pub region: Option<String>,
    /// Virtual-hosted-style addressing (bucket.endpoint/key) instead of path style.
    #[arg(long)]
    pub virtual_hosted: bool,
    /// TOML file with access_key_id and secret_access_key (mode 0600); referenced, not copied.
    /// Without it the AWS environment variables are used.
    #[arg(long, value_name = "FILE")]
    pub credentials_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ActivateArgs {
    #[command(flatten)]
    pub bucket: BucketArgs,
    /// Key file; created (0600) if missing. Give an existing one to re-pair after recovery.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    #[arg(long, value_name = "DIR")]
    pub cache_path: Option<PathBuf>,
    #[arg(long, value_name = "SIZE")]
    pub cache_size: Option<ByteSize>,
    #[arg(long, value_name = "DIR")]
    pub upload_buffer_path: Option<PathBuf>,
    #[arg(long, value_name = "SIZE")]
    pub upload_buffer_size: Option<ByteSize>,
    /// Upload bandwidth limit, bytes per second (e.g. 50MiB).
    #[arg(long, value_name = "RATE")]
    pub upload_limit: Option<ByteSize>,
    #[arg(long, value_name = "RATE")]
    pub download_limit: Option<ByteSize>,
}

/// The manifest file and unlock code that together unlock a job.
#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// The job's manifest file (written by `job create`).
    #[arg(long, value_name = "FILE")]
    pub manifest: PathBuf,
    /// The job's unlock code (printed by `job create`); TIDEGATE_UNLOCK_CODE keeps it out of
    /// the process list.
    #[arg(
        long,
        env = "TIDEGATE_UNLOCK_CODE",
        hide_env_values = true,
        value_name = "CODE"
    )]
    pub unlock_code: String,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Create a job; prints its id, unlock code and S3 credentials and writes the manifest file.
    Create {
        #[command(subcommand)]
        kind: JobKindArgs,
    },
    /// Show one job (or all): state, objects, bytes, imported, failed.
    Status { job: Option<String> },
    /// Freeze the data set and write the signed device manifest. Talks to the unlocked device
    /// if one runs, else unlocks with --manifest/--unlock-code.
    Seal {
        #[arg(long, value_name = "FILE", requires = "unlock_code")]
        manifest: Option<PathBuf>,
        #[arg(
            long,
            env = "TIDEGATE_UNLOCK_CODE",
            hide_env_values = true,
            value_name = "CODE"
        )]
        unlock_code: Option<String>,
    },
    /// Import a sealed job into its target bucket, verifying every object; resumable.
    Import {
        #[command(flatten)]
        unlock: UnlockArgs,
        /// Objects in flight at once.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
        /// Caps the upload rate to the target (bytes per second, e.g. 50MiB), to share a link.
        #[arg(long, value_name = "RATE")]
        upload_limit: Option<ByteSize>,
        /// On a device cluster: import share I of N of the data set (run the N shares on N
        /// devices at once; each share's objects are fixed by the signed manifest). The last
        /// share to finish writes the one report.
        #[arg(long, value_name = "I/N", default_value = "1/1")]
        share: crate::gateway::import::Share,
    },
    /// Copy an export job's source onto the device, verifying every object, then seal it for
    /// clients (READY); resumable. Source credentials from AWS_ACCESS_KEY_ID/_SECRET_ACCESS_KEY.
    Export {
        #[command(flatten)]
        unlock: UnlockArgs,
        /// Objects copied at once.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
    },
    /// Mark a READY export job COMPLETE (its clients have read the data set).
    Complete { job: String },
}

#[derive(Debug, Subcommand)]
pub enum JobKindArgs {
    /// Clients load the device; the data is then imported into TARGET.
    Import {
        /// s3://bucket[/prefix]: where the data goes.
        #[arg(long, value_name = "URL")]
        target: String,
        #[command(flatten)]
        common: JobCreateArgs,
        #[command(flatten)]
        on_put: OnPutArgs,
    },
    /// The device is filled from SOURCE (`job export`) for clients to read.
    Export {
        /// s3://bucket[/prefix]: where the data comes from.
        #[arg(long, value_name = "URL")]
        source: String,
        #[command(flatten)]
        common: JobCreateArgs,
    },
}

#[derive(Debug, Args)]
pub struct JobCreateArgs {
    /// S3 endpoint of the bucket (e.g. http://127.0.0.1:3900); default AWS.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    #[arg(long, default_value = crate::config::defaults::REGION)]
    pub region: String,
    /// Where to write the manifest file (never over an existing file) [default: ./job.manifest.json]
    #[arg(long, value_name = "FILE")]
    pub manifest_out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Unlock a job's device and serve its S3 endpoint (and NFS export) until `device lock` or
    /// SIGTERM.
    Unlock {
        #[command(flatten)]
        unlock: UnlockArgs,
        /// The S3 endpoint's address (loopback by default; 127.0.0.1:0 picks a free port).
        #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:8734")]
        s3_listen: std::net::SocketAddr,
        /// Serve plain HTTP instead of HTTPS; only on a loopback address.
        #[arg(long, conflicts_with = "tls_name")]
        plain_http: bool,
        /// Another name (DNS name or IP address) clients use to reach the endpoint, added to
        /// its certificate beside the listen address and localhost; repeatable.
        #[arg(long, value_name = "NAME")]
        tls_name: Vec<String>,
        /// Also export the data set over NFSv3 here (NFS, MOUNT and portmapper on one port; 2049
        /// is the standard one). Off by default.
        #[arg(long, value_name = "IP:PORT")]
        nfs_listen: Option<std::net::SocketAddr>,
    },
    /// Lock the unlocked device: its key is dropped and the endpoint stops.
    Lock,
    /// The unlocked device's job and, in a device cluster, every device's state, the data
    /// set's redundancy and whether writes are accepted.
    Status,
    /// Device clusters: several devices hold one job's data set in a Garage cluster
    /// (docs/operations.md, "Device clusters").
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// On the first device: set up its Garage node for the job and print the join token for
    /// the others. `device unlock` then runs the node and waits for the other devices.
    Create {
        /// The job's manifest file (written by `job create` on this device).
        #[arg(long, value_name = "FILE")]
        manifest: PathBuf,
        /// How many devices the cluster has (at least 3: one per copy); the first layout is
        /// applied once this many have joined.
        #[arg(long)]
        devices: usize,
        #[command(flatten)]
        node: ClusterNodeArgs,
    },
    /// On every other device: join the cluster with the token `cluster create` printed and a
    /// copy of the job's manifest file.
    Join {
        /// The join token (TIDEGATE_CLUSTER_TOKEN keeps it out of the process list).
        #[arg(long, env = "TIDEGATE_CLUSTER_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long, value_name = "FILE")]
        manifest: PathBuf,
        /// Join in the place of device NAME, which is down for good: at `device unlock` its role
        /// in the cluster's layout is removed and this device's added in one change, and Garage
        /// copies its data here. Refused at unlock if NAME is up or not in the cluster.
        #[arg(long, value_name = "NAME")]
        replaces: Option<String>,
        #[command(flatten)]
        node: ClusterNodeArgs,
    },
    /// On any device of the cluster: print a join token that names this device's node (the
    /// token `cluster create` printed names the first device, which a joining device cannot
    /// reach while it is down).
    Token,
}

/// This device's Garage node.
#[derive(Debug, clap::Args)]
pub struct ClusterNodeArgs {
    /// This device's name in the cluster (its Garage zone); unique per device.
    #[arg(long)]
    pub name: String,
    /// Garage's RPC address, bound and announced to the other devices (must be reachable
    /// from them).
    #[arg(long, value_name = "IP:PORT")]
    pub rpc_addr: std::net::SocketAddr,
    /// Garage's S3 API, used only by this device's tidegate.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:3900")]
    pub garage_s3_listen: std::net::SocketAddr,
    /// Garage's admin API, used only by this device's tidegate.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:3903")]
    pub garage_admin_listen: std::net::SocketAddr,
    /// Capacity this device offers to the cluster (default: the data dir's free space).
    #[arg(long)]
    pub capacity: Option<ByteSize>,
    /// The garage binary (default: $TIDEGATE_GARAGE, `garage` on PATH, ~/.cargo/bin/garage).
    #[arg(long, value_name = "PATH")]
    pub garage_bin: Option<PathBuf>,
}

/// A function on PUT for an import job (docs/device.md, "Functions on PUT").
#[derive(Debug, Args)]
pub struct OnPutArgs {
    /// Run PROGRAM (an executable file; copied into the job) in a sandbox for each object
    /// stored whose key matches --match: the object on stdin, its key, size, ETag and metadata
    /// in TIDEGATE_* variables.
    #[arg(long, value_name = "PROGRAM")]
    pub on_put: Option<PathBuf>,
    /// Which keys: a prefix, or a glob over the whole key where `*` matches any characters
    /// (`*.txt`) [default: every key]
    #[arg(long = "match", value_name = "PATTERN", requires = "on_put")]
    pub pattern: Option<String>,
    /// Wall-clock (and CPU) time one run may take before it is killed [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "on_put")]
    pub timeout: Option<std::time::Duration>,
    /// Address space of each process of a run, and the size of its scratch /tmp [default: 256MiB]
    #[arg(long, value_name = "SIZE", requires = "on_put")]
    pub memory: Option<ByteSize>,
}
