//! The cluster's files and the join token: `cluster.json` and `garage.toml` (both mode 0600:
//! they hold the cluster's RPC secret and S3 key), written by `device cluster create|join`.
//!
//! The join token carries what every device shares (job, cluster size, RPC secret, the S3 key
//! of the cluster bucket, and the creating device's node address); whoever holds it can join
//! the cluster's Garage, so it is handled like the unlock code. It never carries the job key:
//! everything in the cluster is sealed under that, so Garage's disks hold ciphertext only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::ClusterError;
use crate::store::master::random_hex;

const FORMAT: &str = "tidegate-device-cluster/1";
const TOKEN_PREFIX: &str = "TDGC1-";

/// `DATA_DIR/cluster`.
pub fn cluster_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster")
}

/// This device's place in its cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterFile {
    pub format: String,
    pub job: String,
    /// This device's name: its Garage zone.
    pub name: String,
    /// Devices the first layout waits for.
    pub size: usize,
    /// Whether this device created the cluster (it applies layout changes).
    pub creator: bool,
    /// The creating device's node, `<node id>@<ip:port>`.
    pub peer: Option<String>,
    pub rpc_addr: SocketAddr,
    pub s3_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub rpc_secret: String,
    pub admin_token: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    /// The capacity this device offers in the layout, in bytes.
    pub capacity_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub garage_bin: Option<PathBuf>,
    /// The device this one joins in place of (`join --replaces`), until the layout holds this
    /// device: its bring-up then removes that device's role and adds its own in one change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

/// What the token carries (see the module header).
#[derive(Debug, Serialize, Deserialize)]
struct Token {
    job: String,
    size: usize,
    peer: String,
    rpc_secret: String,
    access_key: String,
    secret_key: String,
    bucket: String,
}

/// `device cluster create|join` options for this device.
#[derive(Debug, Clone)]
pub struct Setup {
    pub name: String,
    pub rpc_addr: SocketAddr,
    pub s3_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub capacity_bytes: Option<u64>,
    pub garage_bin: Option<PathBuf>,
}

impl ClusterFile {
    fn path(data_dir: &Path) -> PathBuf {
        cluster_dir(data_dir).join("cluster.json")
    }

    /// The device's cluster file; `None` for a standalone device.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, ClusterError> {
        let path = Self::path(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ClusterError::Io { path, source }),
        };
        let file: Self = serde_json::from_str(&text)
            .map_err(|e| ClusterError::Setup(format!("{}: {e}", path.display())))?;
        if file.format != FORMAT {
            return Err(ClusterError::Setup(format!(
                "{}: format {:?} is not one this tidegate reads",
                path.display(),
                file.format
            )));
        }
        Ok(Some(file))
    }

    /// Records that the layout holds this device: a replacement is done and is not attempted
    /// again at the next start (its device is gone from the layout by then).
    pub(super) fn joined(&self, data_dir: &Path) -> Result<(), ClusterError> {
        let file = Self {
            replaces: None,
            ..self.clone()
        };
        file.save(data_dir)
    }

    fn save(&self, data_dir: &Path) -> Result<(), ClusterError> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| ClusterError::Setup(e.to_string()))?;
        write_private(&Self::path(data_dir), text.as_bytes())
    }

    pub fn garage_toml(&self, data_dir: &Path) -> PathBuf {
        cluster_dir(data_dir).join("garage.toml")
    }

    /// Garage's configuration for this device's node.
    fn write_garage_toml(&self, data_dir: &Path) -> Result<(), ClusterError> {
        let dir = cluster_dir(data_dir);
        let peers = match &self.peer {
            Some(p) if !self.creator => format!("[{p:?}]"),
            _ => "[]".to_owned(),
        };
        let text = format!(
            "# Written by tidegate (device cluster {job}); rewritten by `device cluster create|join`.\n\
             metadata_dir = {meta:?}\n\
             data_dir = {data:?}\n\
             db_engine = \"sqlite\"\n\
             replication_factor = {rf}\n\
             consistency_mode = \"degraded\"\n\
             rpc_timeout_msec = {rpc_timeout}\n\
             rpc_bind_addr = \"{rpc}\"\n\
             rpc_public_addr = \"{rpc}\"\n\
             rpc_secret = \"{secret}\"\n\
             bootstrap_peers = {peers}\n\
             [s3_api]\n\
             s3_region = \"{region}\"\n\
             api_bind_addr = \"{s3}\"\n\
             [admin]\n\
             api_bind_addr = \"{admin}\"\n\
             admin_token = \"{token}\"\n",
            job = self.job,
            meta = dir.join("meta").display().to_string(),
            data = dir.join("data").display().to_string(),
            rf = super::REPLICATION,
            rpc_timeout = super::RPC_TIMEOUT.as_millis(),
            rpc = self.rpc_addr,
            secret = self.rpc_secret,
            region = super::REGION,
            s3 = self.s3_addr,
            admin = self.admin_addr,
            token = self.admin_token,
        );
        write_private(&self.garage_toml(data_dir), text.as_bytes())
    }
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), ClusterError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| ClusterError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn random<const N: usize>() -> Result<String, ClusterError> {
    random_hex::<N>().map_err(|e| ClusterError::Setup(e.to_string()))
}

/// Refuses a second set-up of a device already in a cluster, but for a replacement of `job`
/// that has not joined yet (refused at its unlock, say because the device it named is up): it
/// may be joined again, naming another device.
fn refuse_existing(data_dir: &Path, job: Option<&str>) -> Result<(), ClusterError> {
    if let Some(existing) = ClusterFile::load(data_dir)? {
        if existing.replaces.is_some() && job == Some(existing.job.as_str()) {
            return Ok(());
        }
        return Err(ClusterError::Setup(format!(
            "this device is already in the cluster of job {} as {:?} ({})",
            existing.job,
            existing.name,
            ClusterFile::path(data_dir).display()
        )));
    }
    Ok(())
}

/// The capacity offered when none is given: the free space of the data dir's file system.
fn free_bytes(data_dir: &Path) -> Result<u64, ClusterError> {
    let st = rustix::fs::statvfs(data_dir).map_err(|e| ClusterError::Io {
        path: data_dir.to_owned(),
        source: e.into(),
    })?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// `device cluster create`: this device's files, its node key (Garage is started once to make
/// it), and the join token for the others.
pub fn create(
    data_dir: &Path,
    job: &str,
    size: usize,
    setup: &Setup,
) -> Result<(ClusterFile, String), ClusterError> {
    if size < super::REPLICATION {
        return Err(ClusterError::Setup(format!(
            "a device cluster needs at least {} devices (one per copy), not {size}",
            super::REPLICATION
        )));
    }
    refuse_existing(data_dir, None)?;
    let mut file = ClusterFile {
        format: FORMAT.to_owned(),
        job: job.to_owned(),
        name: setup.name.clone(),
        size,
        creator: true,
        peer: None,
        rpc_addr: setup.rpc_addr,
        s3_addr: setup.s3_addr,
        admin_addr: setup.admin_addr,
        rpc_secret: random::<32>()?,
        admin_token: random::<24>()?,
        access_key: format!("GK{}", random::<12>()?),
        secret_key: random::<32>()?,
        bucket: format!("tidegate-{}", job.to_ascii_lowercase()),
        capacity_bytes: match setup.capacity_bytes {
            Some(c) => c,
            None => free_bytes(data_dir)?,
        },
        garage_bin: setup.garage_bin.clone(),
        replaces: None,
    };
    file.write_garage_toml(data_dir)?;
    let node = make_node_key(data_dir, &file)?;
    file.peer = Some(format!("{node}@{}", file.rpc_addr));
    file.save(data_dir)?;
    let token = encode_token(&file, &node)?;
    Ok((file, token))
}

/// A join token naming this device's node as the one to connect to: `create` prints one, and
/// `device cluster token` prints one on any device of the cluster (a device joining while the
/// creating device is down cannot reach it through the first token).
pub fn token(data_dir: &Path) -> Result<(ClusterFile, String), ClusterError> {
    let file = ClusterFile::load(data_dir)?.ok_or_else(|| {
        ClusterError::Setup(format!(
            "this device is in no device cluster (no {})",
            ClusterFile::path(data_dir).display()
        ))
    })?;
    let node = make_node_key(data_dir, &file)?;
    let token = encode_token(&file, &node)?;
    Ok((file, token))
}

fn encode_token(file: &ClusterFile, node: &str) -> Result<String, ClusterError> {
    let token = Token {
        job: file.job.clone(),
        size: file.size,
        peer: format!("{node}@{}", file.rpc_addr),
        rpc_secret: file.rpc_secret.clone(),
        access_key: file.access_key.clone(),
        secret_key: file.secret_key.clone(),
        bucket: file.bucket.clone(),
    };
    let json = serde_json::to_vec(&token).map_err(|e| ClusterError::Setup(e.to_string()))?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    ))
}

/// `device cluster join`: this device's files from the token; the job must be the token's. With
/// `replaces`, the device joins in the place of that one (checked and done at its unlock).
pub fn join(
    data_dir: &Path,
    job: &str,
    token: &str,
    setup: &Setup,
    replaces: Option<&str>,
) -> Result<ClusterFile, ClusterError> {
    let bad = |m: &str| ClusterError::Token(m.to_owned());
    let body = token
        .trim()
        .strip_prefix(TOKEN_PREFIX)
        .ok_or_else(|| bad("it does not start with TDGC1-"))?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| bad("it is not base64url"))?;
    let token: Token =
        serde_json::from_slice(&json).map_err(|_| bad("its content is unreadable"))?;
    if token.job != job {
        return Err(ClusterError::Setup(format!(
            "the token is for job {}, the manifest file for job {job}",
            token.job
        )));
    }
    if replaces == Some(setup.name.as_str()) {
        return Err(ClusterError::Setup(format!(
            "--replaces {:?} names this device itself: a replacement joins under a name of its \
             own",
            setup.name
        )));
    }
    refuse_existing(data_dir, Some(job))?;
    let file = ClusterFile {
        format: FORMAT.to_owned(),
        job: token.job,
        name: setup.name.clone(),
        size: token.size,
        creator: false,
        peer: Some(token.peer),
        rpc_addr: setup.rpc_addr,
        s3_addr: setup.s3_addr,
        admin_addr: setup.admin_addr,
        rpc_secret: token.rpc_secret,
        admin_token: random::<24>()?,
        access_key: token.access_key,
        secret_key: token.secret_key,
        bucket: token.bucket,
        capacity_bytes: match setup.capacity_bytes {
            Some(c) => c,
            None => free_bytes(data_dir)?,
        },
        garage_bin: setup.garage_bin.clone(),
        replaces: replaces.map(str::to_owned),
    };
    file.write_garage_toml(data_dir)?;
    file.save(data_dir)?;
    Ok(file)
}

/// Starts Garage once so it makes its node key, and returns the node id (hex of the public
/// key Garage keeps in `meta/node_key.pub`).
fn make_node_key(data_dir: &Path, file: &ClusterFile) -> Result<String, ClusterError> {
    let public = cluster_dir(data_dir).join("meta").join("node_key.pub");
    if !public.exists() {
        let bin = super::supervise::garage_binary(file.garage_bin.as_deref())?;
        let mut child = std::process::Command::new(&bin)
            .arg("-c")
            .arg(file.garage_toml(data_dir))
            .arg("server")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| ClusterError::Setup(format!("starting {}: {e}", bin.display())))?;
        let start = Instant::now();
        while !public.exists() && start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(ClusterError::Setup(format!(
                    "garage exited ({status}) before making its node key; run it by hand: {} -c {} server",
                    bin.display(),
                    file.garage_toml(data_dir).display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Garage writes the key before it opens anything else; a short grace lets the file
        // reach its full length.
        std::thread::sleep(Duration::from_millis(200));
        let _ = child.kill();
        let _ = child.wait();
    }
    let key = std::fs::read(&public).map_err(|source| ClusterError::Io {
        path: public.clone(),
        source,
    })?;
    if key.len() != 32 {
        return Err(ClusterError::Setup(format!(
            "{}: {} bytes, not a node key",
            public.display(),
            key.len()
        )));
    }
    Ok(crate::store::keys::hex(&key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replacement_may_join_again_until_the_layout_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let first = ClusterFile {
            format: FORMAT.to_owned(),
            job: "J1".into(),
            name: "dev2".into(),
            size: 3,
            creator: false,
            peer: None,
            rpc_addr: addr,
            s3_addr: addr,
            admin_addr: addr,
            rpc_secret: "00".repeat(32),
            admin_token: "t".into(),
            access_key: "GK00".into(),
            secret_key: "s".into(),
            bucket: "tidegate-j1".into(),
            capacity_bytes: 1,
            garage_bin: None,
            replaces: None,
        };
        let token = encode_token(&first, "ab12").unwrap();
        let setup = Setup {
            name: "dev4".into(),
            rpc_addr: addr,
            s3_addr: addr,
            admin_addr: addr,
            capacity_bytes: Some(1 << 30),
            garage_bin: None,
        };
        let e = join(dir.path(), "J1", &token, &setup, Some("dev4")).unwrap_err();
        assert!(e.to_string().contains("names this device itself"), "{e}");
        let file = join(dir.path(), "J1", &token, &setup, Some("dev2")).unwrap();
        assert_eq!(file.replaces.as_deref(), Some("dev2"));
        assert_eq!(file.peer.as_deref(), Some("ab12@127.0.0.1:1"));
        // Refused at its unlock (dev2 was up): joined again, naming the device that is down.
        let file = join(dir.path(), "J1", &token, &setup, Some("dev1")).unwrap();
        assert_eq!(ClusterFile::load(dir.path()).unwrap(), Some(file.clone()));
        // In the layout: the replacement is done, and a second join is refused.
        file.joined(dir.path()).unwrap();
        let loaded = ClusterFile::load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.replaces, None);
        let e = join(dir.path(), "J1", &token, &setup, Some("dev3")).unwrap_err();
        assert!(e.to_string().contains("already in the cluster"), "{e}");
    }
}
