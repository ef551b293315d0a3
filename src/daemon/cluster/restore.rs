//! Bringing the cluster whole again after a device returns, and knowing when it is (ADR 0014).
//!
//! Why this is needed: with `consistency_mode = "degraded"` Garage answers a read from one copy
//! (this node's when it holds the partition, else the closest one), and its table anti-entropy
//! is push-only: a node sends the entries it has to the other holders of a partition and never
//! asks for theirs. A node that was down therefore holds none of the entries written meanwhile
//! until every *other* node has run a full sync after its return, which Garage does on its own
//! only every 10 minutes, and until then it answers listings and reads from its stale tables.
//! Blocks it missed are copied by Garage's resync, 2 × `rpc_timeout_msec` after the node learns
//! of them (from the synced `block_ref` table).
//!
//! So, after each return (a device seen down then up, this device's own node restarted, or this
//! device starting), every node is told to run a full table sync (`LaunchRepairOperation`
//! `tables` on all nodes), and the tables count as whole once every live node's sync workers
//! have drained and, checked end to end, every live node's S3 API lists the same objects (each
//! node that holds the bucket's index partition answers a listing from its own table, so equal
//! listings mean equal copies; a node that was not reachable from the others yet when they
//! synced shows up here, and the sync is run again). The cluster counts as whole once, in
//! addition, the resync delay has passed with no block due for resync and none in error on any
//! node. Owns: the `Restore` state the
//! health watch reads. Must not: decide membership or the write gate.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::admin::Admin;
use super::{ClusterError, ClusterFile, RPC_TIMEOUT, S3_TAG};
use crate::gateway::import::TableSync;

/// Pause between polls of the nodes' workers.
const POLL: Duration = Duration::from_millis(300);
/// Polls in a row that must find every sync worker idle: a repair request reaches a node's
/// worker through a channel, so one idle poll right after it may predate the request.
const QUIET_POLLS: u32 = 4;
/// How long the table phase waits for Merkle trees to catch up before syncing anyway.
const MERKLE_LIMIT: Duration = Duration::from_secs(30);
/// How long one table sync may take before the attempt is given up and retried.
const TABLES_LIMIT: Duration = Duration::from_secs(120);
/// Margin past the resync delay before blocks are checked.
const RESYNC_MARGIN: Duration = Duration::from_secs(5);
/// Pause before a failed restore is tried again.
const RETRY: Duration = Duration::from_secs(5);
/// The device's object namespaces in the cluster bucket (records and segments).
const PREFIXES: [&str; 2] = ["rec/", "seg/"];
/// Objects this much younger than a sync's start are left out of the comparison: they were
/// written with every node up (so to every copy) and may still be on their way to the last.
const SETTLE_SECS: i64 = 2;

#[derive(Debug, Default)]
struct State {
    /// Bumped at each return; starts at 1 (this device's start counts as one).
    wanted: u64,
    /// The last `wanted` whose table sync completed.
    tables: u64,
    /// The last `wanted` whose block resync completed too.
    whole: u64,
    /// What is being waited for, for `device status`.
    phase: String,
}

/// Whether the cluster is whole again since the last return, shared by the health watch (which
/// reports returns and reads the state) and the restorer task (which does the work).
#[derive(Debug)]
pub struct Restore {
    state: Mutex<State>,
    wake: tokio::sync::Notify,
    tables: TableSync,
}

impl Restore {
    pub fn new(tables: TableSync) -> Self {
        tables.set(false);
        Self {
            state: Mutex::new(State {
                wanted: 1,
                phase: "this device started; bringing its tables up to date".into(),
                ..State::default()
            }),
            wake: tokio::sync::Notify::new(),
            tables,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A node that was unreachable is back, this device's node restarted, or a device joined
    /// (`what` says which): its tables may be stale (or empty) until the next table sync.
    pub fn returned(&self, what: &str) {
        self.resync(format!("{what}; bringing its tables up to date"));
        tracing::info!(
            what,
            "device cluster: a node returned or joined; syncing tables"
        );
    }

    /// A device went down while the others keep a write quorum (`what` names it). A write it
    /// coordinated, or one still on its way to the third copy when it died, may have reached
    /// it and only one other holder: the remaining holder then lacks it, and `degraded` reads
    /// answered there miss an acknowledged object until the holder that has it pushes it, which
    /// Garage does by itself only every 10 minutes. The same table sync as after a return closes
    /// that window.
    pub fn lost(&self, what: &str) {
        self.resync(format!(
            "{what}; bringing the other copies of its partitions up to date"
        ));
        tracing::info!(
            what,
            "device cluster: a device went down; syncing the live nodes' tables"
        );
    }

    fn resync(&self, phase: String) {
        let mut s = self.lock();
        s.wanted += 1;
        s.phase = phase;
        self.tables.set(false);
        drop(s);
        self.wake.notify_one();
    }

    /// `None` when the cluster is whole since the last return, else what is being waited for.
    pub fn pending(&self) -> Option<String> {
        let s = self.lock();
        (s.whole < s.wanted).then(|| s.phase.clone())
    }

    /// `None` once the live nodes' tables are synced since the last return or loss, else what
    /// is being waited for.
    pub fn tables_pending(&self) -> Option<String> {
        let s = self.lock();
        (s.tables < s.wanted).then(|| s.phase.clone())
    }

    fn set_phase(&self, generation: u64, phase: String) {
        let mut s = self.lock();
        if s.wanted == generation {
            s.phase = phase;
        }
    }

    fn tables_done(&self, generation: u64) {
        let mut s = self.lock();
        s.tables = s.tables.max(generation);
        if s.wanted == generation {
            self.tables.set(true);
        }
    }

    fn whole_done(&self, generation: u64) {
        let mut s = self.lock();
        s.whole = s.whole.max(generation);
    }

    /// The table phase of the latest return or loss completes (as the restorer's would).
    #[cfg(test)]
    pub(crate) fn tables_done_for_test(&self) {
        let generation = self.lock().wanted;
        self.tables_done(generation);
    }
}

/// Runs the table phase once for this device's start, before it serves (bounded; on failure the
/// restorer task tries again and the device serves with `TableSync` false meanwhile).
pub async fn initial_tables(
    admin: &Admin,
    file: &ClusterFile,
    restore: &Restore,
    say: &mut impl FnMut(String),
) {
    let generation = restore.lock().wanted;
    match sync_tables(admin, file, say).await {
        Ok(()) => restore.tables_done(generation),
        Err(e) => tracing::warn!(error = %e, "device cluster: table sync at start not finished"),
    }
}

/// The restorer task: after each return, the table phase, then the block phase.
pub async fn restorer(admin: Admin, file: ClusterFile, restore: Arc<Restore>) {
    loop {
        let (generation, tables) = {
            let s = restore.lock();
            (s.wanted, s.tables)
        };
        if restore.lock().whole >= generation {
            restore.wake.notified().await;
            continue;
        }
        let result = async {
            if tables < generation {
                let mut say = |line: String| restore.set_phase(generation, line);
                sync_tables(&admin, &file, &mut say).await?;
                restore.tables_done(generation);
                tracing::info!("device cluster: every live node lists the same objects again");
            }
            wait_blocks(&admin, &restore, generation).await
        }
        .await;
        match result {
            Ok(true) => {
                restore.whole_done(generation);
                tracing::info!("device cluster: tables and blocks whole again");
            }
            // Another device returned meanwhile: its table sync comes first, and the block
            // resync delay counts from that.
            Ok(false) => {}
            Err(e) => {
                restore.set_phase(generation, format!("restoring failed, retrying: {e}"));
                tracing::warn!(error = %e, "device cluster: restoring after a return");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Every node in the layout that Garage sees up.
async fn up_nodes(admin: &Admin) -> Result<Vec<String>, ClusterError> {
    let status = admin.get("GetClusterStatus").await?;
    Ok(status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["role"].is_object() && n["isUp"].as_bool() == Some(true))
        .filter_map(|n| n["id"].as_str().map(str::to_owned))
        .collect())
}

/// The S3 address each node published in its layout role (`super::s3_tag`).
async fn s3_endpoints(admin: &Admin, nodes: &[String]) -> Result<Vec<SocketAddr>, ClusterError> {
    let layout = admin.get("GetClusterLayout").await?;
    let roles = layout["roles"].as_array().cloned().unwrap_or_default();
    nodes
        .iter()
        .map(|n| {
            roles
                .iter()
                .find(|r| r["id"].as_str() == Some(n))
                .and_then(|r| r["tags"].as_array())
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str()?.strip_prefix(S3_TAG)?.parse().ok())
                .next()
                .ok_or_else(|| {
                    ClusterError::Admin(format!("node {n} publishes no S3 address in its role"))
                })
        })
        .collect()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// An object as a listing shows it: key, ETag, size.
type Listed = (String, Option<String>, u64);

/// `None` when every node's S3 API lists the same objects written before `before_unix`, else
/// which node differs from the first and by how many objects. The nodes are listed all at once:
/// one after the other, five nodes' listings of a few thousand objects took 5-8 s of a
/// returning device's wait on loopback.
async fn listings_differ(
    file: &ClusterFile,
    endpoints: &[SocketAddr],
    before_unix: i64,
) -> Result<Option<String>, ClusterError> {
    let listings = futures::future::try_join_all(
        endpoints
            .iter()
            .map(|&addr| listing(file, addr, before_unix)),
    )
    .await?;
    let mut pairs = endpoints.iter().zip(&listings);
    let Some((first_addr, first)) = pairs.next() else {
        return Ok(None);
    };
    for (addr, listed) in pairs {
        if listed != first {
            return Ok(Some(format!(
                "the node at {addr} lists {} objects not on the node at {first_addr}, which \
                 lists {} not on it",
                listed.difference(first).count(),
                first.difference(listed).count()
            )));
        }
    }
    Ok(None)
}

/// The device's objects written before `before_unix` as the node at `addr` lists them.
async fn listing(
    file: &ClusterFile,
    addr: SocketAddr,
    before_unix: i64,
) -> Result<BTreeSet<Listed>, ClusterError> {
    let bucket = super::cluster_bucket(file, addr)?;
    let mut listed = BTreeSet::new();
    for prefix in PREFIXES {
        let objects = bucket
            .list(prefix)
            .await
            .map_err(|e| ClusterError::Admin(format!("listing through {addr}: {e}")))?;
        listed.extend(
            objects
                .into_iter()
                .filter(|o| o.modified_unix < before_unix)
                .map(|o| (o.key, o.etag, o.size)),
        );
    }
    Ok(listed)
}

/// One node's answer to a call made on all nodes (`?node=*`); an error names the first live
/// node that did not answer.
fn answers<'a>(answer: &'a Value, nodes: &[String]) -> Result<Vec<&'a Value>, ClusterError> {
    nodes
        .iter()
        .map(|n| {
            answer["success"].get(n).ok_or_else(|| {
                ClusterError::Admin(format!(
                    "node {n} did not answer: {}",
                    answer["error"][n].as_str().unwrap_or("no answer")
                ))
            })
        })
        .collect()
}

/// One node's workers whose name satisfies `pick`.
fn workers(list: &Value, pick: impl Fn(&str) -> bool) -> impl Iterator<Item = &Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter(move |w| w["name"].as_str().is_some_and(&pick))
}

/// A table sync worker with nothing to do: idle (not busy, not throttled after an error) with
/// no partition queued.
fn sync_idle(list: &Value) -> bool {
    workers(list, |n| n.ends_with(" sync"))
        .all(|w| w["state"] == "idle" && w["queueLength"].as_u64().unwrap_or(0) == 0)
}

/// Block resync workers with no block due, and no block repair worker still running.
fn blocks_idle(list: &Value) -> bool {
    workers(list, |n| n.starts_with("Block resync worker")).all(|w| w["state"] == "idle")
        && workers(list, |n| n == "Block repair worker").all(|w| w["state"] == "done")
}

fn table_stat(stats: &Value, field: &str) -> u64 {
    stats["tableStats"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t[field].as_u64())
        .sum()
}

/// Has every live node push its table entries to every other holder of each partition, waits
/// until all of them have finished, and checks that every node now lists the same objects;
/// runs again (bounded) while they differ.
async fn sync_tables(
    admin: &Admin,
    file: &ClusterFile,
    say: &mut impl FnMut(String),
) -> Result<(), ClusterError> {
    let start = tokio::time::Instant::now();
    loop {
        let started_unix = unix_now();
        push_everywhere(admin, start, say).await?;
        let nodes = up_nodes(admin).await?;
        let endpoints = s3_endpoints(admin, &nodes).await?;
        match listings_differ(file, &endpoints, started_unix - SETTLE_SECS).await? {
            None => return Ok(()),
            Some(diff) => {
                if start.elapsed() > TABLES_LIMIT {
                    return Err(ClusterError::Timeout {
                        limit: TABLES_LIMIT,
                        waiting: format!("the nodes' tables to agree ({diff})"),
                    });
                }
                tracing::info!(%diff, "device cluster: nodes still differ after a table sync");
                say(format!("cluster: syncing tables again ({diff})"));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// One round: every live node syncs its tables with the others; returns once all are idle.
async fn push_everywhere(
    admin: &Admin,
    start: tokio::time::Instant,
    say: &mut impl FnMut(String),
) -> Result<(), ClusterError> {
    let merkle_start = tokio::time::Instant::now();
    // A sync compares Merkle trees, which trail the tables: entries not yet in a node's tree
    // would not be sent. Wait (bounded) until every node's tree has caught up.
    loop {
        let nodes = up_nodes(admin).await?;
        let stats = admin.get("GetNodeStatistics?node=*").await?;
        let behind: u64 = answers(&stats, &nodes)?
            .iter()
            .map(|s| table_stat(s, "merkleQueueLen"))
            .sum();
        if behind == 0 {
            break;
        }
        if merkle_start.elapsed() > MERKLE_LIMIT {
            tracing::warn!(
                behind,
                "device cluster: merkle trees still behind; syncing anyway"
            );
            break;
        }
        say(format!(
            "cluster: waiting for Merkle trees ({behind} entries)"
        ));
        tokio::time::sleep(POLL).await;
    }
    let nodes = up_nodes(admin).await?;
    let launched = admin
        .post(
            "LaunchRepairOperation?node=*",
            json!({ "repairType": "tables" }),
        )
        .await?;
    answers(&launched, &nodes)?;
    let mut quiet = 0;
    while quiet < QUIET_POLLS {
        if start.elapsed() > TABLES_LIMIT {
            return Err(ClusterError::Timeout {
                limit: TABLES_LIMIT,
                waiting: "the nodes' table syncs".into(),
            });
        }
        tokio::time::sleep(POLL).await;
        let listed = admin
            .post("ListWorkers?node=*", json!({ "busyOnly": false }))
            .await?;
        let lists = answers(&listed, &nodes)?;
        let busy = lists.iter().filter(|l| !sync_idle(l)).count();
        if busy == 0 {
            quiet += 1;
        } else {
            quiet = 0;
            say(format!(
                "cluster: syncing tables ({busy} of {} nodes still sending)",
                nodes.len()
            ));
        }
    }
    Ok(())
}

/// Waits until the blocks a returned node missed have been copied to it: past the resync delay
/// Garage gives a block a node has just learnt of, with no block due for resync and none in
/// error on any live node. Errors from before the return are retried at once. `Ok(false)` when
/// another return superseded this one.
async fn wait_blocks(
    admin: &Admin,
    restore: &Restore,
    generation: u64,
) -> Result<bool, ClusterError> {
    let nodes = up_nodes(admin).await?;
    // No block anywhere (a new cluster): none can be missing.
    let stats = admin.get("GetNodeStatistics?node=*").await?;
    let blocks: u64 = answers(&stats, &nodes)?
        .iter()
        .filter_map(|s| s["blockManagerStats"]["rcEntries"].as_u64())
        .sum();
    if blocks == 0 {
        return Ok(true);
    }
    let retried = admin
        .post("RetryBlockResync?node=*", json!({ "all": true }))
        .await?;
    answers(&retried, &nodes)?;
    let due = tokio::time::Instant::now() + 2 * RPC_TIMEOUT + RESYNC_MARGIN;
    loop {
        if restore.lock().wanted != generation {
            return Ok(false);
        }
        let now = tokio::time::Instant::now();
        if now < due {
            restore.set_phase(
                generation,
                format!(
                    "tables up to date; Garage copies the blocks returned or new devices lack \
                     ({} s left)",
                    (due - now).as_secs()
                ),
            );
            tokio::time::sleep(POLL.max(Duration::from_secs(1)).min(due - now)).await;
            continue;
        }
        let listed = admin
            .post("ListWorkers?node=*", json!({ "busyOnly": false }))
            .await?;
        let stats = admin.get("GetNodeStatistics?node=*").await?;
        let busy = answers(&listed, &nodes)?
            .iter()
            .filter(|l| !blocks_idle(l))
            .count();
        let errors: u64 = answers(&stats, &nodes)?
            .iter()
            .filter_map(|s| s["blockManagerStats"]["resyncErrors"].as_u64())
            .sum();
        if busy == 0 && errors == 0 {
            return Ok(true);
        }
        restore.set_phase(
            generation,
            format!(
                "tables up to date; Garage is copying blocks ({busy} nodes resyncing, {errors} \
                 blocks in error)"
            ),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_idle_needs_every_sync_worker_idle_with_nothing_queued() {
        let idle = json!([
            {"name": "object sync", "state": "idle", "queueLength": 0},
            {"name": "Block resync worker #1", "state": "busy", "queueLength": 9},
        ]);
        assert!(sync_idle(&idle));
        let queued = json!([{"name": "version sync", "state": "idle", "queueLength": 3}]);
        assert!(!sync_idle(&queued));
        let throttled = json!([
            {"name": "object sync", "state": {"throttled": {"durationSecs": 1.5}}, "queueLength": 0}
        ]);
        assert!(!sync_idle(&throttled));
    }

    #[test]
    fn a_return_makes_the_cluster_pending_until_both_phases_complete() {
        let flag = TableSync::default();
        let r = Restore::new(flag.clone());
        assert!(r.pending().is_some() && !flag.synced());
        r.tables_done(1);
        assert!(flag.synced() && r.pending().is_some());
        r.whole_done(1);
        assert!(r.pending().is_none());
        r.returned("device dev5 returned");
        assert!(!flag.synced());
        assert!(r.pending().is_some_and(|p| p.contains("dev5")));
        // A phase that completes for an older return does not clear a newer one.
        r.tables_done(1);
        assert!(!flag.synced());
        r.tables_done(2);
        r.whole_done(2);
        assert!(flag.synced() && r.pending().is_none());
    }
}
