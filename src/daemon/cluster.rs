//! Device clusters (issue 19, docs/operations.md "Device clusters"): several devices hold one
//! job's data set in a Garage cluster, one Garage node per device, each device its own zone,
//! three copies of everything, `consistency_mode = "degraded"`.
//!
//! Owns the cluster's files under `DATA_DIR/cluster/` (`cluster.json`: this device's place in
//! the cluster and the shared secrets; `garage.toml`; Garage's `meta/` and `data/`;
//! `garage.log`; `garage.pid`), the join token, the supervised `garage` process, bringing the
//! cluster up (connect, layout, key, bucket) and watching its health. Must not: touch object
//! data (the gateway does, through the bucket it is handed). Invariant: the write gate is closed
//! whenever Garage reports a partition without its write quorum.
//!
//! Why `degraded`: with 3 copies on 5 zones, one device down leaves every partition 2 copies,
//! a quorum for reads and writes in every mode; two down leave some partitions 1 copy, which
//! `consistent` cannot read and `degraded` can (reads need 1 copy, writes still 2), while
//! `dangerous` would also accept writes onto that single copy.

mod admin;
mod files;
mod restore;
mod supervise;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{BucketConfig, BucketLocation, Credentials};
use crate::gateway::import::{ClusterLink, Members, TableSync, WriteGate};
use crate::store::Bucket;

pub use files::{ClusterFile, Setup, cluster_dir, create, join, token};
pub use supervise::Supervisor;

/// Garage's replication factor for a device cluster: a device may be lost with two copies left.
pub const REPLICATION: usize = 3;
/// The S3 region Garage is configured with (only tidegate talks to this endpoint).
const REGION: &str = "garage";
/// How often health is read from Garage.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// Garage's RPC timeout (`rpc_timeout_msec`; Garage's default is 300 s). Garage copies a block a
/// node has just learnt of (a returned node, from the synced tables) 2 × this later, so it bounds
/// how soon a returned device is fully redundant; between devices on one LAN, moving blocks of
/// 1 MiB, an RPC that has not answered in 20 s has failed.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(20);
/// How long bringing the cluster up waits for the other devices.
const BRING_UP_LIMIT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Setup(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the join token is not valid: {0}")]
    Token(String),
    #[error("no garage binary found: {0}")]
    NoGarage(String),
    #[error("garage's admin API: {0}")]
    Admin(String),
    #[error("the cluster did not come up within {limit:?}: {waiting}")]
    Timeout { limit: Duration, waiting: String },
}

/// One device as the cluster sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceHealth {
    pub name: String,
    pub up: bool,
    /// For a device that is down: seconds since Garage last heard from it.
    pub last_seen_secs: Option<u64>,
}

/// The cluster's health as `device status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub this_device: String,
    pub layout_version: u64,
    pub devices: Vec<DeviceHealth>,
    /// Garage's word: `healthy`, `degraded` or `unavailable`.
    pub garage: String,
    pub partitions: usize,
    /// Partitions with a write quorum (2 of 3 copies reachable).
    pub partitions_quorum: usize,
    /// Partitions with all 3 copies reachable.
    pub partitions_all_ok: usize,
    /// Blocks Garage still has to copy to bring every node up to date (summed over nodes).
    pub resync_queue: u64,
    /// Why writes are refused, while they are.
    pub writes_refused: Option<String>,
    /// While a device that was down is being brought up to date (`restore.rs`): what is
    /// waited for.
    #[serde(default)]
    pub restoring: Option<String>,
    /// While the live nodes' tables are being synced after a return or a loss: what is waited
    /// for (until then a device may miss objects another lists).
    #[serde(default)]
    pub syncing: Option<String>,
    /// Nodes that left the layout (replaced devices) and still hold copies in a layout version
    /// Garage has not finished moving away from.
    #[serde(default)]
    pub draining: usize,
}

impl ClusterStatus {
    /// The devices Garage reports down.
    pub fn missing(&self) -> Vec<&str> {
        self.named(false)
    }

    /// The devices Garage reports up.
    pub fn present(&self) -> Vec<&str> {
        self.named(true)
    }

    fn named(&self, up: bool) -> Vec<&str> {
        self.devices
            .iter()
            .filter(|d| d.up == up)
            .map(|d| d.name.as_str())
            .collect()
    }

    /// Every device is up, every partition has all its copies reachable, and every copy is up
    /// to date: since the last return, every node has pushed its table entries to the others
    /// and the blocks the returned devices missed have been copied (`restore.rs`). Garage's
    /// resync queue is shown beside it but not required to be empty: it also holds the checks
    /// Garage schedules for every newly written block.
    pub fn fully_redundant(&self) -> bool {
        self.partitions > 0
            && self.partitions_all_ok == self.partitions
            && self.missing().is_empty()
            && self.restoring.is_none()
            && self.draining == 0
    }

    /// The lines `device status` prints.
    pub fn lines(&self) -> Vec<String> {
        let up = self.devices.iter().filter(|d| d.up).count();
        let mut out = vec![format!(
            "cluster: {up} of {} devices up (this device: {}; layout version {}; {REPLICATION} copies, \
             consistency degraded)",
            self.devices.len(),
            self.this_device,
            self.layout_version
        )];
        for d in &self.devices {
            out.push(match (d.up, d.last_seen_secs) {
                (true, _) => format!("device {}: up", d.name),
                (false, Some(s)) => format!("device {}: DOWN (last seen {s} s ago)", d.name),
                (false, None) => format!(
                    "device {}: DOWN (not seen since this device started)",
                    d.name
                ),
            });
        }
        out.push(format!(
            "partitions: {} of {} with all copies, {} with a write quorum; resync queue {} blocks",
            self.partitions_all_ok, self.partitions, self.partitions_quorum, self.resync_queue
        ));
        let missing = self.missing();
        out.push(if self.fully_redundant() {
            "redundancy: full (every device up, every partition with all its copies, every copy \
             up to date)"
                .to_owned()
        } else if missing.is_empty() && self.draining > 0 {
            format!(
                "redundancy: RESTORING (Garage is moving the copies of {} replaced device{} to \
                 the devices of the layout)",
                self.draining,
                if self.draining == 1 { "" } else { "s" }
            )
        } else if missing.is_empty() && self.partitions_all_ok < self.partitions {
            "redundancy: RESTORING (every device is up; Garage is still connecting)".to_owned()
        } else if missing.is_empty() {
            format!(
                "redundancy: RESTORING ({})",
                self.restoring.as_deref().unwrap_or("")
            )
        } else {
            match &self.syncing {
                Some(phase) => format!(
                    "redundancy: DEGRADED (missing devices: {}; {phase})",
                    missing.join(", ")
                ),
                None => format!(
                    "redundancy: DEGRADED (missing devices: {})",
                    missing.join(", ")
                ),
            }
        });
        out.push(match &self.writes_refused {
            Some(reason) => format!("writes: REFUSED ({reason})"),
            None => "writes: accepted".to_owned(),
        });
        out
    }
}

/// A device's running cluster membership: the supervised Garage node, the link the device
/// writes through, and the health watch.
#[derive(Debug)]
pub struct Running {
    pub link: ClusterLink,
    pub status: Arc<RwLock<ClusterStatus>>,
    supervisor: Supervisor,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops the health watch and the Garage node.
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.supervisor.stop().await;
    }

    pub fn snapshot(&self) -> ClusterStatus {
        self.status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Starts this device's Garage node and brings the cluster up far enough to serve: the node is
/// connected, the layout holds every device (the creating device applies it once `size`
/// devices are staged; a replacement waits for a live device to apply its change), and the
/// bucket answers with the cluster's key. `progress` receives one line per change of what is
/// waited for.
pub async fn start(
    data_dir: &Path,
    file: &ClusterFile,
    progress: impl Fn(&str),
) -> Result<Running, ClusterError> {
    let supervisor = Supervisor::start(data_dir, file)?;
    let admin = admin::Admin::new(file)?;
    let node_log = cluster_dir(data_dir).join(supervise::LOG);
    let up = admin::bring_up(&admin, file, &node_log, &progress);
    let up = tokio::time::timeout(BRING_UP_LIMIT, up).await;
    match up {
        Ok(Ok(_node)) => {}
        Ok(Err(e)) => {
            supervisor.stop().await;
            return Err(e);
        }
        Err(_) => {
            supervisor.stop().await;
            return Err(ClusterError::Timeout {
                limit: BRING_UP_LIMIT,
                waiting: "the layout or the bucket".into(),
            });
        }
    }
    admin::tune_resync(&admin).await;
    if let Some(dead) = &file.replaces {
        if let Err(e) = file.joined(data_dir) {
            supervisor.stop().await;
            return Err(e);
        }
        progress(&format!(
            "cluster: device {} replaces device {dead} in the layout; Garage copies its data here",
            file.name
        ));
    }
    let bucket = Arc::new(cluster_bucket(file, file.s3_addr)?);
    // The bucket answers once this node has the bucket and key tables (they spread from the
    // device that made them).
    let mut waited = 0u32;
    while let Err(e) = bucket.check().await {
        waited += 1;
        if waited.is_multiple_of(50) {
            progress(&format!("cluster: waiting for the cluster bucket ({e})"));
        }
        if waited > 3000 {
            supervisor.stop().await;
            return Err(ClusterError::Setup(format!(
                "the cluster bucket does not answer: {e}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let link = ClusterLink {
        bucket,
        gate: WriteGate::default(),
        tables: TableSync::default(),
        device: file.name.clone(),
        members: Members::default(),
        creator: file.creator,
    };
    // Dialling the nodes it sees down starts before the table sync below: a returning node is
    // seen back by the others (and they by it) only once connections both ways are made.
    let dialer = tokio::spawn(admin::dialer(admin.clone(), HEALTH_EVERY));
    // This node may have been down while the others took writes: before serving, every node
    // pushes it what it lacks (bounded; the restorer task carries on if this runs out).
    let restore = Arc::new(restore::Restore::new(link.tables.clone()));
    let mut said = String::new();
    restore::initial_tables(&admin, file, &restore, &mut |line: String| {
        if line != said {
            progress(&line);
            said = line;
        }
    })
    .await;
    let status = Arc::new(RwLock::new(ClusterStatus {
        this_device: file.name.clone(),
        ..ClusterStatus::default()
    }));
    let mut tasks = vec![dialer];
    let mut seen = Seen::default();
    if let Ok(s) = admin::read_status(&admin, &file.name).await {
        seen.update(&s, &restore);
        apply_health(&s, &link.gate, &status, &restore);
        let (up, down) = up_and_down(&s);
        link.members.set(up, down);
    }
    tasks.push(tokio::spawn(restore::restorer(
        admin.clone(),
        file.clone(),
        restore.clone(),
    )));
    tasks.push(tokio::spawn(watch_health(
        admin.clone(),
        file.name.clone(),
        (link.gate.clone(), link.members.clone()),
        status.clone(),
        restore.clone(),
        (seen, supervisor.starts()),
    )));
    tasks.push(tokio::spawn(admin::keep_layout(admin, file.name.clone())));
    Ok(Running {
        link,
        status,
        supervisor,
        tasks,
    })
}

/// The link to the cluster through this device's Garage node while another process (its
/// unlocked device) supervises the node: for `job import` beside a serving device. Absences are
/// not trusted (the serving device alone knows whether the tables are whole) and the
/// membership is unknown (a seal is not run from here).
pub fn attach(file: &ClusterFile) -> Result<ClusterLink, ClusterError> {
    Ok(ClusterLink {
        bucket: Arc::new(cluster_bucket(file, file.s3_addr)?),
        gate: WriteGate::default(),
        tables: TableSync::default(),
        device: file.name.clone(),
        members: Members::default(),
        creator: file.creator,
    })
}

/// The layout tag by which a device's node publishes its S3 address (so the others can compare
/// what each node answers, `restore.rs`).
fn s3_tag(addr: std::net::SocketAddr) -> String {
    format!("{S3_TAG}{addr}")
}
const S3_TAG: &str = "s3=";

/// The cluster's bucket through the Garage node whose S3 API is at `s3_addr` (this device's
/// own, but for comparisons). Few retries: a write that cannot reach its quorum should fail
/// quickly as unavailable, not hang in backoff.
fn cluster_bucket(
    file: &ClusterFile,
    s3_addr: std::net::SocketAddr,
) -> Result<Bucket, ClusterError> {
    let mut cfg = BucketConfig::local(PathBuf::new());
    cfg.location = BucketLocation::S3 {
        bucket: file.bucket.clone(),
        prefix: String::new(),
    };
    cfg.endpoint = Some(format!("http://{s3_addr}"));
    cfg.region = REGION.to_owned();
    cfg.path_style = true;
    cfg.max_retries = 2;
    cfg.retry_timeout = Duration::from_secs(15);
    cfg.credentials = Credentials::Static {
        access_key_id: file.access_key.clone(),
        secret_access_key: file.secret_key.clone(),
    };
    Bucket::open(&cfg, false).map_err(|e| ClusterError::Setup(e.to_string()))
}

/// What the health watch has seen: which devices were up, whether this device's own node
/// answered, and how many times it has been started. A change from down to up (or a restart)
/// is a return: the returned node's tables may lack what was written meanwhile.
#[derive(Debug, Default)]
struct Seen {
    up: HashMap<String, bool>,
    own_lost: bool,
    starts: u64,
}

impl Seen {
    fn update(&mut self, s: &ClusterStatus, restore: &restore::Restore) {
        // A device new to the layout (one joining later, or replacing another) holds nothing
        // yet: bringing it up to date is the same as for a return.
        let first = self.up.is_empty();
        let mut lost = Vec::new();
        for d in &s.devices {
            match self.up.insert(d.name.clone(), d.up) {
                Some(false) if d.up => restore.returned(&format!("device {} returned", d.name)),
                Some(true) if !d.up => lost.push(d.name.as_str()),
                None if !first => restore.returned(&format!("device {} joined", d.name)),
                _ => {}
            }
        }
        // With a partition short of its write quorum Garage's sync of that partition fails and
        // the full sync never completes; nothing is written then, and the return that ends it
        // runs the sync.
        if !lost.is_empty() && s.partitions > 0 && s.partitions_quorum == s.partitions {
            let s = if lost.len() == 1 { "" } else { "s" };
            restore.lost(&format!("device{s} {} went down", lost.join(", ")));
        }
        if std::mem::take(&mut self.own_lost) {
            restore.returned("this device's Garage node returned");
        }
    }

    fn own_node(&mut self, starts: &AtomicU64, restore: &restore::Restore) {
        let now = starts.load(Ordering::SeqCst);
        if self.starts != 0 && now != self.starts {
            restore.returned("this device's Garage node restarted");
        }
        self.starts = now;
    }
}

async fn watch_health(
    admin: admin::Admin,
    name: String,
    (gate, members): (WriteGate, Members),
    status: Arc<RwLock<ClusterStatus>>,
    restore: Arc<restore::Restore>,
    (mut seen, starts): (Seen, Arc<AtomicU64>),
) {
    seen.own_node(&starts, &restore);
    loop {
        tokio::time::sleep(HEALTH_EVERY).await;
        seen.own_node(&starts, &restore);
        match admin::read_status(&admin, &name).await {
            Ok(s) => {
                seen.update(&s, &restore);
                apply_health(&s, &gate, &status, &restore);
                let (up, down) = up_and_down(&s);
                members.set(up, down);
            }
            Err(e) => {
                seen.own_lost = true;
                // This device's own node does not answer: nothing it would write can be
                // acknowledged, so writes stop until it is back (the supervisor restarts it).
                let reason = format!("this device's Garage node does not answer ({e})");
                gate.refuse(reason.clone());
                status
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .writes_refused = Some(reason);
            }
        }
    }
}

/// The names of the devices Garage reports up, and of those it reports down.
fn up_and_down(s: &ClusterStatus) -> (Vec<String>, Vec<String>) {
    let owned = |v: Vec<&str>| v.into_iter().map(str::to_owned).collect();
    (owned(s.present()), owned(s.missing()))
}

/// Closes the write gate while some partition lacks its write quorum, naming the lost devices;
/// publishes the status with what restoring after a return still waits for.
fn apply_health(
    s: &ClusterStatus,
    gate: &WriteGate,
    status: &Arc<RwLock<ClusterStatus>>,
    restore: &restore::Restore,
) {
    let mut s = s.clone();
    s.restoring = restore.pending();
    s.syncing = restore.tables_pending();
    if s.partitions > 0 && s.partitions_quorum < s.partitions {
        let missing = s.missing();
        let who = if missing.is_empty() {
            "every device is in the layout but this node is not yet connected to enough of them"
                .to_owned()
        } else {
            format!(
                "{} of {} devices are down ({})",
                missing.len(),
                s.devices.len(),
                missing.join(", ")
            )
        };
        let reason = format!(
            "write quorum lost: {who}; {} of {} data partitions have fewer than 2 of their \
             {REPLICATION} copies reachable. Reads continue; writes resume when a device returns",
            s.partitions - s.partitions_quorum,
            s.partitions
        );
        if gate.refused().as_deref() != Some(reason.as_str()) {
            tracing::warn!(%reason, "device cluster: refusing writes");
        }
        gate.refuse(reason.clone());
        s.writes_refused = Some(reason);
    } else {
        if gate.refused().is_some() {
            tracing::info!("device cluster: write quorum back, accepting writes");
        }
        gate.allow();
        s.writes_refused = None;
    }
    *status.write().unwrap_or_else(|p| p.into_inner()) = s;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(up: &[bool], quorum: usize) -> ClusterStatus {
        ClusterStatus {
            this_device: "d1".into(),
            layout_version: 1,
            devices: up
                .iter()
                .enumerate()
                .map(|(i, &up)| DeviceHealth {
                    name: format!("d{}", i + 1),
                    up,
                    last_seen_secs: (!up).then_some(3),
                })
                .collect(),
            garage: String::new(),
            partitions: 256,
            partitions_quorum: quorum,
            partitions_all_ok: if up.iter().all(|u| *u) { 256 } else { 100 },
            resync_queue: 0,
            writes_refused: None,
            restoring: None,
            syncing: None,
            draining: 0,
        }
    }

    #[test]
    fn health_closes_the_gate_only_without_a_write_quorum_and_names_the_lost_devices() {
        let gate = WriteGate::default();
        let shared = Arc::new(RwLock::new(ClusterStatus::default()));
        let restore = restore::Restore::new(TableSync::default());
        let cases = [
            (vec![true; 5], 256, None),
            (vec![true, true, true, true, false], 256, None),
            (vec![true, true, true, false, false], 180, Some("d4, d5")),
            (vec![true; 5], 256, None),
        ];
        for (up, quorum, refused) in cases {
            apply_health(&status(&up, quorum), &gate, &shared, &restore);
            let got = gate.refused();
            match refused {
                Some(names) => {
                    let reason = got.expect("refused");
                    assert!(
                        reason.contains("write quorum lost") && reason.contains(names),
                        "{reason}"
                    );
                }
                None => assert!(got.is_none(), "{got:?}"),
            }
        }
        let lines = status(&[true, false, true], 256).lines().join("\n");
        assert!(
            lines.contains("device d2: DOWN") && lines.contains("missing devices: d2"),
            "{lines}"
        );
        assert!(
            status(&[true; 3], 256)
                .lines()
                .join("\n")
                .contains("redundancy: full")
        );
    }

    #[test]
    fn a_replaced_device_keeps_redundancy_restoring_until_garage_leaves_its_layout() {
        let mut s = status(&[true; 3], 256);
        s.draining = 1;
        assert!(!s.fully_redundant());
        let lines = s.lines().join("\n");
        assert!(
            lines.contains("RESTORING (Garage is moving the copies of 1 replaced device to"),
            "{lines}"
        );
    }

    #[test]
    fn a_device_new_to_the_layout_is_restored_like_a_returning_one() {
        let restore = restore::Restore::new(TableSync::default());
        let mut seen = Seen::default();
        // The first look names every device: nothing joined, this device's start is pending.
        seen.update(&status(&[true, true, true], 256), &restore);
        let pending = restore.pending().expect("the start is pending");
        assert!(pending.contains("this device started"), "{pending}");
        // d1 replaced by d4: the layout now holds d2, d3, d4.
        let mut replaced = status(&[true, true, true], 256);
        replaced.devices[0].name = "d4".into();
        seen.update(&replaced, &restore);
        let pending = restore.pending().expect("the join is pending");
        assert!(pending.contains("device d4 joined"), "{pending}");
    }

    #[test]
    fn a_device_going_down_syncs_the_tables_only_while_the_others_keep_a_write_quorum() {
        let restore = restore::Restore::new(TableSync::default());
        let mut seen = Seen::default();
        seen.update(&status(&[true; 5], 256), &restore);
        restore.tables_done_for_test();
        assert!(restore.tables_pending().is_none());
        seen.update(&status(&[true, true, false, true, true], 256), &restore);
        let syncing = restore.tables_pending().expect("the loss is synced");
        assert!(syncing.contains("device d3 went down"), "{syncing}");
        let gate = WriteGate::default();
        let shared = Arc::new(RwLock::new(ClusterStatus::default()));
        apply_health(
            &status(&[true, true, false, true, true], 256),
            &gate,
            &shared,
            &restore,
        );
        let lines = shared.read().unwrap().lines().join("\n");
        assert!(
            lines.contains("DEGRADED (missing devices: d3; device d3 went down; bringing"),
            "{lines}"
        );
        restore.tables_done_for_test();
        // A second loss takes the quorum of some partitions: no sync could complete.
        seen.update(&status(&[true, true, false, false, true], 180), &restore);
        assert!(restore.tables_pending().is_none());
    }
}
