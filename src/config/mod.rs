//! Validated configuration: what every other module reads. `file.rs` is the TOML as written,
//! `defaults.rs` the embedded no-config default, `size.rs` byte sizes.
//!
//! A leaf: it depends on nothing else in tidegate. Invariant: a `Config` that exists is complete
//! and consistent (paths absolute, credentials loaded, sizes in range); every problem found on the
//! way is a `ConfigError` that names the file, the line where known, and the dotted key, on one
//! line, so the binary can print it and exit with status 2.

pub mod bandwidth;
pub mod defaults;
pub mod file;
pub mod size;
pub mod sizing;

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use size::ByteSize;

use file::{
    ApiSection, BucketSection, CredentialsFile, DiskSection, FileConfig, IscsiSection, NfsSection,
};

/// Where the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    /// No config file: the embedded default (a local-directory bucket under the data dir).
    Embedded,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub origin: Origin,
    pub name: String,
    pub data_dir: PathBuf,
    pub key_file: PathBuf,
    pub bucket: BucketConfig,
    pub cache: DiskConfig,
    pub upload_buffer: DiskConfig,
    pub iscsi: IscsiConfig,
    pub api: ApiConfig,
    pub bandwidth: bandwidth::Schedule,
    pub nfs: NfsConfig,
    pub files: FilesConfig,
    pub library: LibraryConfig,
    /// Shares to mount locally through FUSE, (share name, mount point); from the command line.
    pub fuse_mounts: Vec<(String, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub token_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsConfig {
    pub listen: SocketAddr,
    /// NFSv4.1 lease: a client silent this long loses its opens and locks; also the grace
    /// period after a restart.
    pub lease: Duration,
    /// NFSv4 owner strings as `uid@domain` when set, plain numbers when not.
    pub id_domain: Option<String>,
    pub rpcbind: Rpcbind,
}

/// Whether the gateway answers portmapper/rpcbind queries (port 111) for its NFS and MOUNT
/// services, so clients find them without being told the port (`nfs.rpcbind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpcbind {
    Off,
    /// Serve at this address, or register with the system rpcbind when one holds it; failing
    /// both stops the daemon.
    On(SocketAddr),
    /// The embedded default: like `On`, but when neither works (port 111 needs root or
    /// CAP_NET_BIND_SERVICE) the daemon warns and serves NFS without it.
    BestEffort(SocketAddr),
}

impl Rpcbind {
    /// Parses `nfs.rpcbind` / `--rpcbind`: `off`, `on` (port 111 on the NFS listener's
    /// address) or an `ip:port`.
    pub fn parse(v: &str, nfs_listen: SocketAddr) -> Option<Self> {
        match v {
            "off" => Some(Self::Off),
            "on" => Some(Self::On(SocketAddr::new(
                nfs_listen.ip(),
                defaults::RPCBIND_PORT,
            ))),
            addr => addr.parse().ok().map(Self::On),
        }
    }

    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            Self::Off => None,
            Self::On(a) | Self::BestEffort(a) => Some(a),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesConfig {
    pub upload_delay: Duration,
}

/// The tape library's element counts and the smallest tape (`gateway::library` checks the
/// counts against its address plan).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LibraryConfig {
    pub drives: u32,
    pub slots: u32,
    pub mail_slots: u32,
    pub min_tape_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiConfig {
    pub listen: SocketAddr,
    pub advertise: Option<SocketAddr>,
    pub chap: Option<ChapSecrets>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct ChapSecrets {
    pub user: String,
    pub secret: String,
    pub mutual: Option<(String, String)>,
}

impl fmt::Debug for ChapSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ChapSecrets {{ user: {:?}, mutual: {} }}",
            self.user,
            self.mutual.is_some()
        )
    }
}

impl Config {
    pub fn catalog_path(&self) -> PathBuf {
        self.data_dir.join("catalog.db")
    }

    /// Snapshot stage files and other transient local work (raw images on their way through
    /// qemu-img too).
    pub fn staging_dir(&self) -> PathBuf {
        self.data_dir.join("staging")
    }

    /// Pid and readiness files of a running daemon.
    pub fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }

    /// Staging files of the file gateway (one per file being written). Its own directory:
    /// the file gateway removes files there that no inode owns.
    pub fn files_staging_dir(&self) -> PathBuf {
        self.data_dir.join("files-staging")
    }

    pub fn is_embedded(&self) -> bool {
        self.origin == Origin::Embedded
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub size: ByteSize,
    /// Where `size` came from: the config file, or the sizing rule (`sizing.rs`).
    pub sizing: sizing::Sizing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketLocation {
    /// A directory standing in for a bucket (`file:///dir`).
    Local {
        dir: PathBuf,
    },
    S3 {
        bucket: String,
        prefix: String,
    },
}

impl fmt::Display for BucketLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local { dir } => write!(f, "file://{}", dir.display()),
            Self::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Static {
        access_key_id: String,
        secret_access_key: String,
    },
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and the rest of the usual AWS variables).
    Environment,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Static { access_key_id, .. } => {
                write!(
                    f,
                    "Static {{ access_key_id: {access_key_id:?}, secret: <redacted> }}"
                )
            }
            Self::Environment => f.write_str("Environment"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketConfig {
    pub location: BucketLocation,
    pub endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    pub credentials: Credentials,
    pub upload_limit: Option<u64>,
    pub download_limit: Option<u64>,
    pub max_retries: u32,
    pub retry_timeout: Duration,
    pub multipart_threshold: u64,
    pub part_size: u64,
}

impl BucketConfig {
    /// A local-directory bucket with default tuning.
    pub fn local(dir: PathBuf) -> Self {
        Self {
            location: BucketLocation::Local { dir },
            endpoint: None,
            region: defaults::REGION.to_owned(),
            path_style: true,
            credentials: Credentials::Environment,
            upload_limit: None,
            download_limit: None,
            max_retries: defaults::MAX_RETRIES,
            retry_timeout: Duration::from_secs(defaults::RETRY_TIMEOUT_SECS),
            multipart_threshold: defaults::MULTIPART_THRESHOLD,
            part_size: defaults::PART_SIZE,
        }
    }
}

/// A configuration problem, printed as one line naming the file, line and key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{line}: ", file.display())?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            (None, _) => {}
        }
        if self.key.is_empty() {
            write!(f, "{}", self.problem)
        } else {
            write!(f, "`{}`: {}", self.key, self.problem)
        }
    }
}

impl ConfigError {
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            file: None,
            line: None,
            key: key.into(),
            problem: problem.into(),
        }
    }

    fn in_file(mut self, file: &Path, source: Option<&str>) -> Self {
        self.file = Some(file.to_path_buf());
        if self.line.is_none() && !self.key.is_empty() {
            self.line = source.and_then(|s| line_of_key(s, &self.key));
        }
        self
    }
}

impl Config {
    /// Reads and validates a config file. Relative paths in it are taken from the config file's
    /// directory (`gateway.data_dir`) or from the data dir (everything else).
    pub fn load(path: &Path, default_data_dir: &Path) -> Result<Self, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("", format!("cannot read config: {e}")).in_file(path, None)
        })?;
        Self::parse(&source, path, default_data_dir)
    }

    /// Validates config text as if it were the file at `path` (which need not exist yet).
    pub fn parse(source: &str, path: &Path, default_data_dir: &Path) -> Result<Self, ConfigError> {
        let source = source.to_owned();
        let parsed: FileConfig =
            toml::from_str(&source).map_err(|e| toml_error(&e, &source).in_file(path, None))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_file(
            parsed,
            Origin::File(path.to_path_buf()),
            base,
            default_data_dir,
        )
        .map_err(|e| e.in_file(path, Some(&source)))
    }

    /// The embedded default: no file, everything under `data_dir`, a local-directory bucket.
    pub fn embedded(data_dir: &Path) -> Result<Self, ConfigError> {
        Self::from_file(FileConfig::default(), Origin::Embedded, data_dir, data_dir)
    }

    fn from_file(
        file: FileConfig,
        origin: Origin,
        base: &Path,
        default_data_dir: &Path,
    ) -> Result<Self, ConfigError> {
        let gateway = file.gateway.unwrap_or_default();
        let name = gateway.name.unwrap_or_else(|| defaults::NAME.to_owned());
        validate_name(&name)?;
        let data_dir = absolute(
            base,
            &gateway
                .data_dir
                .unwrap_or_else(|| default_data_dir.to_path_buf()),
        );
        let key_file = absolute(
            &data_dir,
            &gateway.key_file.unwrap_or_else(|| PathBuf::from("key")),
        );
        let (cache_path, cache_size) = disk_section(file.cache, "cache", &data_dir)?;
        let (buffer_path, buffer_size) =
            disk_section(file.upload_buffer, "upload_buffer", &data_dir)?;
        // Measured only when the config leaves a size open: statvfs and a walk of the areas.
        let [cache_auto, buffer_auto] = if cache_size.is_none() || buffer_size.is_none() {
            sizing::plan(&cache_path, &buffer_path, &data_dir).map(Some)
        } else {
            [None, None]
        };
        let disk = |path: PathBuf, size: Option<ByteSize>, auto: Option<(u64, sizing::Sizing)>| {
            let (size, sizing) = match (size, auto) {
                (Some(size), _) => (size, sizing::Sizing::Configured),
                (None, Some((bytes, how))) => (ByteSize(bytes), how),
                (None, None) => (
                    ByteSize(sizing::FLOOR),
                    sizing::Sizing::Unmeasured {
                        fs_path: path.clone(),
                    },
                ),
            };
            DiskConfig { path, size, sizing }
        };
        let cache = disk(cache_path, cache_size, cache_auto);
        let upload_buffer = disk(buffer_path, buffer_size, buffer_auto);
        let bucket = match file.bucket {
            Some(section) => bucket_config(section, &data_dir)?,
            None if origin == Origin::Embedded => {
                BucketConfig::local(data_dir.join(defaults::LOCAL_BUCKET_DIR))
            }
            None => {
                return Err(ConfigError::new(
                    "bucket.url",
                    "missing: a config file must name its bucket (s3://bucket/prefix or file:///dir)",
                ));
            }
        };
        let iscsi = iscsi_config(file.iscsi.unwrap_or_default())?;
        let api = api_config(file.api.unwrap_or_default(), &data_dir)?;
        let bandwidth = bandwidth::Schedule::from_section(file.bandwidth.unwrap_or_default())?;
        let nfs = nfs_config(file.nfs.unwrap_or_default(), origin == Origin::Embedded)?;
        let files = FilesConfig {
            upload_delay: Duration::from_millis(
                file.files
                    .and_then(|f| f.upload_delay_ms)
                    .unwrap_or(defaults::UPLOAD_DELAY_MS),
            ),
        };
        let lib = file.library.unwrap_or_default();
        let library = LibraryConfig {
            drives: lib.drives.unwrap_or(defaults::LIBRARY_DRIVES),
            slots: lib.slots.unwrap_or(defaults::LIBRARY_SLOTS),
            mail_slots: lib.mail_slots.unwrap_or(defaults::LIBRARY_MAIL_SLOTS),
            min_tape_size: lib
                .min_tape_size
                .map_or(defaults::MIN_TAPE_SIZE, |s| s.bytes()),
        };
        for (key, n) in [
            ("library.drives", library.drives),
            ("library.slots", library.slots),
            ("library.mail_slots", library.mail_slots),
        ] {
            if n == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        if library.min_tape_size < 1 << 20 {
            return Err(ConfigError::new(
                "library.min_tape_size",
                "must be at least 1MiB",
            ));
        }
        Ok(Self {
            origin,
            name,
            data_dir,
            key_file,
            bucket,
            cache,
            upload_buffer,
            iscsi,
            api,
            bandwidth,
            nfs,
            files,
            library,
            fuse_mounts: Vec::new(),
        })
    }
}

fn api_config(s: ApiSection, data_dir: &Path) -> Result<ApiConfig, ConfigError> {
    let listen = s.listen.as_deref().unwrap_or(defaults::API_LISTEN);
    Ok(ApiConfig {
        listen: listen.parse().map_err(|_| {
            ConfigError::new(
                "api.listen",
                format!("{listen:?} is not an ip:port address"),
            )
        })?,
        token_file: s
            .token_file
            .unwrap_or_else(|| data_dir.join(defaults::API_TOKEN_FILE)),
    })
}

fn validate_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            "gateway.name",
            format!("{name:?}: use 1 to 64 characters of A-Z, a-z, 0-9, '-', '_' or '.'"),
        ))
    }
}

/// Parses a bucket URL: `s3://bucket[/prefix]` or `file:///absolute/dir`.
pub fn parse_bucket_url(url: &str) -> Result<BucketLocation, String> {
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !valid_bucket {
            return Err(format!(
                "{bucket:?} is not a bucket name (3-63 characters of a-z, 0-9, '-', '.')"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..") {
            return Err("the prefix may not contain '.' or '..' segments".to_owned());
        }
        Ok(BucketLocation::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    } else if let Some(path) = url.strip_prefix("file://") {
        let dir = PathBuf::from(path);
        if !dir.is_absolute() {
            return Err("a file:// bucket needs an absolute path, e.g. file:///srv/bucket".into());
        }
        Ok(BucketLocation::Local { dir })
    } else {
        Err(format!(
            "{url:?}: expected s3://bucket[/prefix] or file:///absolute/dir"
        ))
    }
}

fn bucket_config(s: BucketSection, data_dir: &Path) -> Result<BucketConfig, ConfigError> {
    let location = parse_bucket_url(&s.url).map_err(|p| ConfigError::new("bucket.url", p))?;
    if let Some(endpoint) = &s.endpoint
        && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
    {
        return Err(ConfigError::new(
            "bucket.endpoint",
            format!("{endpoint:?}: expected an http:// or https:// URL"),
        ));
    }
    let credentials = match (s.credentials_file, s.access_key_id, s.secret_access_key) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(ConfigError::new(
                "bucket.credentials_file",
                "give either credentials_file or access_key_id/secret_access_key, not both",
            ));
        }
        (Some(path), None, None) => load_credentials(&absolute(data_dir, &path))?,
        (None, Some(access_key_id), Some(secret_access_key)) => Credentials::Static {
            access_key_id,
            secret_access_key,
        },
        (None, Some(_), None) => {
            return Err(ConfigError::new(
                "bucket.secret_access_key",
                "missing: access_key_id is set without it",
            ));
        }
        (None, None, Some(_)) => {
            return Err(ConfigError::new(
                "bucket.access_key_id",
                "missing: secret_access_key is set without it",
            ));
        }
        (None, None, None) => Credentials::Environment,
    };
    let part_size = s.part_size.map_or(defaults::PART_SIZE, ByteSize::bytes);
    // S3's own limits on multipart parts.
    if !(5 << 20..=5 << 30).contains(&part_size) {
        return Err(ConfigError::new(
            "bucket.part_size",
            "must be between 5MiB and 5GiB (the S3 multipart limits)",
        ));
    }
    let multipart_threshold = s
        .multipart_threshold
        .map_or(defaults::MULTIPART_THRESHOLD, ByteSize::bytes);
    if multipart_threshold < part_size {
        return Err(ConfigError::new(
            "bucket.multipart_threshold",
            "must be at least bucket.part_size",
        ));
    }
    let limit = |v: Option<ByteSize>, key: &str| match v {
        Some(ByteSize(0)) => Err(ConfigError::new(
            key,
            "0 would stop all traffic; leave the key out for no limit",
        )),
        other => Ok(other.map(ByteSize::bytes)),
    };
    let path_style = s.path_style.unwrap_or(true);
    Ok(BucketConfig {
        location,
        region: s.region.unwrap_or_else(|| defaults::REGION.to_owned()),
        endpoint: s.endpoint,
        path_style,
        credentials,
        upload_limit: limit(s.upload_limit, "bucket.upload_limit")?,
        download_limit: limit(s.download_limit, "bucket.download_limit")?,
        max_retries: s.max_retries.unwrap_or(defaults::MAX_RETRIES),
        retry_timeout: Duration::from_secs(
            s.retry_timeout_secs.unwrap_or(defaults::RETRY_TIMEOUT_SECS),
        ),
        multipart_threshold,
        part_size,
    })
}

fn iscsi_config(s: IscsiSection) -> Result<IscsiConfig, ConfigError> {
    let addr = |key: &str, v: &str| {
        v.parse::<SocketAddr>()
            .map_err(|_| ConfigError::new(key, format!("{v:?} is not an ip:port address")))
    };
    let listen = addr(
        "iscsi.listen",
        s.listen.as_deref().unwrap_or(defaults::ISCSI_LISTEN),
    )?;
    let advertise = s
        .advertise
        .as_deref()
        .map(|v| addr("iscsi.advertise", v))
        .transpose()?;
    if advertise.is_some_and(|a| a.ip().is_unspecified()) {
        return Err(ConfigError::new(
            "iscsi.advertise",
            "must be an address initiators can reach, not a wildcard",
        ));
    }
    if listen.ip().is_unspecified() && advertise.is_none() {
        return Err(ConfigError::new(
            "iscsi.advertise",
            "missing: iscsi.listen is a wildcard address, so say which address initiators use",
        ));
    }
    let secret = |key: &str, v: &str| {
        // RFC 7143 §12.1.3 wants 96-bit secrets at least; open-iscsi accepts up to 16 bytes.
        if (12..=16).contains(&v.len()) {
            Ok(())
        } else {
            Err(ConfigError::new(
                key,
                "a CHAP secret must be 12 to 16 characters",
            ))
        }
    };
    let mutual_without_chap = s.chap_user.is_none() && s.mutual_chap_user.is_some();
    let chap = match (s.chap_user, s.chap_secret) {
        (None, None) => None,
        (Some(user), Some(pass)) => {
            secret("iscsi.chap_secret", &pass)?;
            let mutual = match (s.mutual_chap_user, s.mutual_chap_secret) {
                (None, None) => None,
                (Some(u), Some(p)) => {
                    secret("iscsi.mutual_chap_secret", &p)?;
                    if p == pass {
                        return Err(ConfigError::new(
                            "iscsi.mutual_chap_secret",
                            "must differ from iscsi.chap_secret",
                        ));
                    }
                    Some((u, p))
                }
                (Some(_), None) => {
                    return Err(ConfigError::new("iscsi.mutual_chap_secret", "missing"));
                }
                (None, Some(_)) => {
                    return Err(ConfigError::new("iscsi.mutual_chap_user", "missing"));
                }
            };
            Some(ChapSecrets {
                user,
                secret: pass,
                mutual,
            })
        }
        (Some(_), None) => return Err(ConfigError::new("iscsi.chap_secret", "missing")),
        (None, Some(_)) => return Err(ConfigError::new("iscsi.chap_user", "missing")),
    };
    if mutual_without_chap {
        return Err(ConfigError::new(
            "iscsi.chap_user",
            "mutual CHAP needs one-way CHAP set too",
        ));
    }
    Ok(IscsiConfig {
        listen,
        advertise,
        chap,
    })
}

fn nfs_config(s: NfsSection, embedded: bool) -> Result<NfsConfig, ConfigError> {
    let v = s.listen.as_deref().unwrap_or(defaults::NFS_LISTEN);
    let listen = v
        .parse::<SocketAddr>()
        .map_err(|_| ConfigError::new("nfs.listen", format!("{v:?} is not an ip:port address")))?;
    let lease_secs = s.lease_secs.unwrap_or(defaults::NFS_LEASE_SECS);
    if !(5..=3600).contains(&lease_secs) {
        return Err(ConfigError::new(
            "nfs.lease_secs",
            "must be between 5 and 3600 seconds",
        ));
    }
    let id_domain = match s.id_domain {
        Some(d) if d.is_empty() || d.contains(['@', ' ', '/']) => {
            return Err(ConfigError::new(
                "nfs.id_domain",
                format!("{d:?} is not a domain name"),
            ));
        }
        d => d,
    };
    let rpcbind = match s.rpcbind.as_deref() {
        Some(v) => Rpcbind::parse(v, listen).ok_or_else(|| {
            ConfigError::new(
                "nfs.rpcbind",
                format!("{v:?} is not \"on\", \"off\" or an ip:port address"),
            )
        })?,
        // The embedded default is for trying the gateway out: a plain `mount` should work
        // when it can, without making the daemon depend on root.
        None if embedded => {
            Rpcbind::BestEffort(SocketAddr::new(listen.ip(), defaults::RPCBIND_PORT))
        }
        None => Rpcbind::Off,
    };
    if rpcbind.addr().is_some_and(|a| a.port() == 0) {
        return Err(ConfigError::new(
            "nfs.rpcbind",
            "port 0: clients look for rpcbind on a fixed port (111)",
        ));
    }
    Ok(NfsConfig {
        listen,
        rpcbind,
        lease: Duration::from_secs(lease_secs),
        id_domain,
    })
}

fn load_credentials(path: &Path) -> Result<Credentials, ConfigError> {
    let key = "bucket.credentials_file";
    let shown = path.display();
    let meta =
        std::fs::metadata(path).map_err(|e| ConfigError::new(key, format!("{shown}: {e}")))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(ConfigError::new(
            key,
            format!("{shown} is readable by group or others; run `chmod 600 {shown}`"),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(key, format!("{shown}: {e}")))?;
    let creds: CredentialsFile = toml::from_str(&text)
        .map_err(|e| ConfigError::new(key, format!("{shown}: {}", e.message().trim())))?;
    Ok(Credentials::Static {
        access_key_id: creds.access_key_id,
        secret_access_key: creds.secret_access_key,
    })
}

/// An area's path and, when the file gives one, its size (checked against the smallest area).
fn disk_section(
    section: Option<DiskSection>,
    name: &str,
    data_dir: &Path,
) -> Result<(PathBuf, Option<ByteSize>), ConfigError> {
    let section = section.unwrap_or_default();
    if let Some(size) = section.size
        && size.bytes() < defaults::MIN_DISK_SIZE
    {
        return Err(ConfigError::new(
            format!("{name}.size"),
            format!(
                "{size} is too small (at least {})",
                ByteSize(defaults::MIN_DISK_SIZE)
            ),
        ));
    }
    let path = absolute(
        data_dir,
        &section
            .path
            .unwrap_or_else(|| PathBuf::from(name.replace('_', "-"))),
    );
    Ok((path, section.size))
}

fn absolute(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::path::absolute(base.join(path)).unwrap_or_else(|_| base.join(path))
    }
}

/// Turns a TOML/serde error into one line with the dotted key, found from the error's span.
fn toml_error(e: &toml::de::Error, source: &str) -> ConfigError {
    let message = e.message().trim().replace('\n', " ");
    let Some(span) = e.span() else {
        return ConfigError::new("", message);
    };
    let line = source[..span.start.min(source.len())].matches('\n').count() + 1;
    let mut table = String::new();
    let mut key = String::new();
    for (i, text) in source.lines().enumerate() {
        let text = text.trim();
        if text.starts_with('[') {
            table = text
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned();
            key.clear();
        } else if let Some((k, _)) = text.split_once('=') {
            key = k.trim().trim_matches('"').to_owned();
        }
        if i + 1 == line {
            break;
        }
    }
    // An unknown field's name is in the message; the span points at it.
    if let Some(field) = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split('`').next())
    {
        key = field.to_owned();
    }
    let dotted = match (table.is_empty(), key.is_empty()) {
        (true, _) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    };
    ConfigError {
        file: None,
        line: Some(line),
        key: dotted,
        problem: message,
    }
}

/// The line on which a dotted key is set, for errors found after parsing.
fn line_of_key(source: &str, dotted: &str) -> Option<usize> {
    let (table, key) = dotted.rsplit_once('.').unwrap_or(("", dotted));
    let mut current = String::new();
    for (i, text) in source.lines().enumerate() {
        let text = text.trim();
        if text.starts_with('[') {
            current = text
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned();
        } else if let Some((k, _)) = text.split_once('=')
            && current == table
            && k.trim().trim_matches('"') == key
        {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tidegate.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path, dir.path())
    }

    #[test]
    fn embedded_default_is_complete() {
        let c = Config::embedded(Path::new("/srv/tg")).unwrap();
        assert_eq!(c.name, "tidegate");
        assert_eq!(
            c.bucket.location,
            BucketLocation::Local {
                dir: "/srv/tg/bucket".into()
            }
        );
        assert_eq!(c.key_file, Path::new("/srv/tg/key"));
        assert_eq!(c.cache.path, Path::new("/srv/tg/cache"));
        assert_eq!(c.upload_buffer.path, Path::new("/srv/tg/upload-buffer"));
    }

    #[test]
    fn rpcbind_is_best_effort_in_the_embedded_default_and_off_in_a_file_unless_set() {
        let embedded = Config::embedded(Path::new("/srv/tg")).unwrap();
        assert_eq!(
            embedded.nfs.rpcbind,
            Rpcbind::BestEffort("127.0.0.1:111".parse().unwrap())
        );
        let bucket = "[bucket]\nurl = \"s3://bucket\"\n";
        let cases = [
            ("", Rpcbind::Off),
            ("[nfs]\nrpcbind = \"off\"\n", Rpcbind::Off),
            (
                "[nfs]\nlisten = \"0.0.0.0:2049\"\nrpcbind = \"on\"\n",
                Rpcbind::On("0.0.0.0:111".parse().unwrap()),
            ),
            (
                "[nfs]\nrpcbind = \"127.0.0.2:1111\"\n",
                Rpcbind::On("127.0.0.2:1111".parse().unwrap()),
            ),
        ];
        for (text, want) in cases {
            let c = load(&format!("{bucket}{text}")).unwrap();
            assert_eq!(c.nfs.rpcbind, want, "{text:?}");
        }
    }

    #[test]
    fn full_file_loads() {
        let c = load(
            r#"
[gateway]
name = "gw-1"
[bucket]
url = "s3://my-bucket/some/prefix/"
endpoint = "http://127.0.0.1:3900"
region = "garage"
access_key_id = "GK1"
secret_access_key = "s"
upload_limit = "10MiB"
[cache]
size = "20GiB"
path = "/var/cache/tidegate"
"#,
        )
        .unwrap();
        assert_eq!(c.name, "gw-1");
        assert_eq!(c.bucket.location.to_string(), "s3://my-bucket/some/prefix");
        assert_eq!(c.bucket.upload_limit, Some(10 << 20));
        assert_eq!(c.cache.size, ByteSize(20 << 30));
        assert_eq!(c.cache.path, Path::new("/var/cache/tidegate"));
        assert!(matches!(c.bucket.credentials, Credentials::Static { .. }));
    }

    /// Each bad config names the key and (where it can) the line, on one line.
    #[test]
    fn errors_name_the_key_and_line() {
        let cases: &[(&str, &str, Option<usize>)] = &[
            ("[bucket]\nurl = \"s3://b\"\n", "bucket.url", Some(2)),
            ("[cache]\nsiz = \"1GiB\"\n", "cache.siz", Some(2)),
            ("[cache]\nsize = \"12XB\"\n", "cache.size", Some(2)),
            ("[cache]\nsize = 5\n", "cache.size", Some(2)),
            ("[gateway]\nname = \"a b\"\n", "gateway.name", Some(2)),
            ("[bucket]\nurl = \"ftp://x\"\n", "bucket.url", Some(2)),
            (
                "[bucket]\nurl = \"s3://bucket\"\nendpoint = \"localhost:9000\"\n",
                "bucket.endpoint",
                Some(3),
            ),
            (
                "[bucket]\nurl = \"s3://bucket\"\naccess_key_id = \"x\"\n",
                "bucket.secret_access_key",
                None,
            ),
            ("[gateway]\nname = \"x\"\n", "bucket.url", None),
            (
                "[bucket]\nurl = \"s3://bucket\"\npart_size = \"1MiB\"\n",
                "bucket.part_size",
                Some(3),
            ),
            (
                "[bucket]\nurl = \"s3://bucket\"\nupload_limit = 0\n",
                "bucket.upload_limit",
                Some(3),
            ),
            ("[cache\n", "cache", Some(1)),
            (
                "[bucket]\nurl = \"s3://bucket\"\n[iscsi]\nlisten = \"0.0.0.0:3260\"\n",
                "iscsi.advertise",
                None,
            ),
            (
                "[bucket]\nurl = \"s3://bucket\"\n[iscsi]\nlisten = \"nope\"\n",
                "iscsi.listen",
                Some(4),
            ),
            (
                "[bucket]\nurl = \"s3://bucket\"\n[iscsi]\nchap_user = \"u\"\nchap_secret = \"short\"\n",
                "iscsi.chap_secret",
                Some(5),
            ),
            (
                "[bucket]\nurl = \"s3://bucket\"\n[nfs]\nrpcbind = \"yes\"\n",
                "nfs.rpcbind",
                Some(4),
            ),
            (
                "[bucket]\nurl = \"s3://bucket\"\n[nfs]\nrpcbind = \"127.0.0.1:0\"\n",
                "nfs.rpcbind",
                Some(4),
            ),
        ];
        for (text, key, line) in cases {
            let e = load(text).unwrap_err();
            assert_eq!(&e.key, key, "{text:?}: {e}");
            if line.is_some() {
                assert_eq!(&e.line, line, "{text:?}: {e}");
            }
            let shown = e.to_string();
            assert!(!shown.contains('\n'), "{shown}");
            assert!(shown.contains("tidegate.toml"), "{shown}");
        }
    }

    #[test]
    fn credentials_file_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        std::fs::write(&creds, "access_key_id = \"a\"\nsecret_access_key = \"b\"\n").unwrap();
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            format!(
                "[bucket]\nurl = \"s3://bucket\"\ncredentials_file = {:?}\n",
                creds.display().to_string()
            ),
        )
        .unwrap();
        let e = Config::load(&path, dir.path()).unwrap_err();
        assert!(e.problem.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::load(&path, dir.path()).unwrap();
        assert_eq!(
            c.bucket.credentials,
            Credentials::Static {
                access_key_id: "a".into(),
                secret_access_key: "b".into()
            }
        );
        assert!(!format!("{:?}", c.bucket.credentials).contains("\"b\""));
    }

    #[test]
    fn bucket_urls() {
        assert!(parse_bucket_url("s3://ab").is_err());
        assert!(parse_bucket_url("s3://Bucket").is_err());
        assert!(parse_bucket_url("s3://bucket/../x").is_err());
        assert!(parse_bucket_url("file://rel/dir").is_err());
        assert_eq!(
            parse_bucket_url("s3://bucket/a/b/").unwrap().to_string(),
            "s3://bucket/a/b"
        );
    }
}
