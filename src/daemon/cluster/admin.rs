//! Garage's admin API v2 (on this device's node, loopback): connecting to the creating device,
//! the layout (each device its own zone), the cluster's key and bucket, and health. Each call is
//! idempotent, so every device may run `bring_up` at every start.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::{ClusterError, ClusterFile, ClusterStatus, DeviceHealth};

/// Pause between rounds while waiting for the other devices.
const POLL: Duration = Duration::from_millis(500);
/// How often the creating device looks for staged layout changes (devices that joined later).
const LAYOUT_EVERY: Duration = Duration::from_secs(5);
/// Rounds of `POLL` a starting node may take before the wait for it is reported (a node starts
/// in well under a second on loopback).
const NODE_QUIET_ROUNDS: u32 = 10;

#[derive(Debug, Clone)]
pub struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
}

fn admin_err(what: &str, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Admin(format!("{what}: {e}"))
}

impl Admin {
    pub fn new(file: &ClusterFile) -> Result<Self, ClusterError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| admin_err("client", e))?;
        Ok(Self {
            http,
            base: format!("http://{}/v2", file.admin_addr),
            token: file.admin_token.clone(),
        })
    }

    /// One call; `Ok(Err((status, body)))` when Garage answered with an error.
    async fn call(
        &self,
        endpoint: &str,
        body: Option<Value>,
    ) -> Result<Result<Value, (u16, String)>, ClusterError> {
        let url = format!("{}/{endpoint}", self.base);
        let req = match &body {
            Some(b) => self
                .http
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.to_string()),
            None => self.http.get(&url),
        };
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| admin_err(endpoint, e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| admin_err(endpoint, e))?;
        if !status.is_success() {
            return Ok(Err((status.as_u16(), text)));
        }
        let value = serde_json::from_str(&text).map_err(|e| admin_err(endpoint, e))?;
        Ok(Ok(value))
    }

    pub(super) async fn get(&self, endpoint: &str) -> Result<Value, ClusterError> {
        self.call(endpoint, None)
            .await?
            .map_err(|(s, t)| admin_err(endpoint, format!("{s}: {t}")))
    }

    pub(super) async fn post(&self, endpoint: &str, body: Value) -> Result<Value, ClusterError> {
        self.call(endpoint, Some(body))
            .await?
            .map_err(|(s, t)| admin_err(endpoint, format!("{s}: {t}")))
    }
}

/// This node's id (the first node GetNodeInfo?node=self answers for).
async fn node_id(admin: &Admin) -> Result<String, ClusterError> {
    let v = admin.get("GetNodeInfo?node=self").await?;
    v["success"]
        .as_object()
        .and_then(|m| m.keys().next().cloned())
        .ok_or_else(|| admin_err("GetNodeInfo", "no node in the answer"))
}

/// Node ids in the current layout and in staged changes that add a role.
fn layout_nodes(layout: &Value) -> (Vec<String>, Vec<String>) {
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter(|r| r.get("remove").is_none())
                    .filter_map(|r| r["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    (ids(&layout["roles"]), ids(&layout["stagedRoleChanges"]))
}

/// Brings this device's node into the cluster and waits until it can serve; returns the node id.
pub async fn bring_up(
    admin: &Admin,
    file: &ClusterFile,
    node_log: &std::path::Path,
    progress: &impl Fn(&str),
) -> Result<String, ClusterError> {
    let mut said = String::new();
    let mut say = |line: String| {
        if line != said {
            progress(&line);
            said = line;
        }
    };
    // The admin API answers once the node runs. A node that cannot start (a port taken, a
    // broken data dir) is restarted by the supervisor and never answers: say so, with the
    // reason, rather than wait in silence until the bring-up's time limit.
    let mut rounds = 0u32;
    let node = loop {
        match node_id(admin).await {
            Ok(id) => break id,
            Err(e) => {
                rounds += 1;
                if rounds >= NODE_QUIET_ROUNDS {
                    say(format!(
                        "cluster: waiting for this device's Garage node ({e}; its output is in \
                         {})",
                        node_log.display()
                    ));
                }
                tokio::time::sleep(POLL).await;
            }
        }
    };
    if let (false, Some(peer)) = (file.creator, &file.peer) {
        loop {
            let answer = admin.post("ConnectClusterNodes", json!([peer])).await?;
            if answer[0]["success"].as_bool() == Some(true) {
                break;
            }
            say(format!(
                "cluster: waiting for the creating device's node {peer} ({})",
                answer[0]["error"].as_str().unwrap_or("no answer")
            ));
            tokio::time::sleep(POLL).await;
        }
    }
    loop {
        let layout = admin.get("GetClusterLayout").await?;
        let (current, staged) = layout_nodes(&layout);
        if current.contains(&node) {
            break;
        }
        if !staged.contains(&node) {
            let mut roles = vec![
                json!({"id": node, "zone": file.name, "capacity": file.capacity_bytes, "tags": [super::s3_tag(file.s3_addr)]}),
            ];
            if let Some(dead) = &file.replaces {
                let id = down_for_good(admin, dead, &file.name, &mut say).await?;
                // One change: the dead device's copies move straight to this one.
                roles.insert(0, json!({"id": id, "remove": true}));
            }
            admin
                .post("UpdateClusterLayout", json!({ "roles": roles }))
                .await?;
            continue;
        }
        if let Some(dead) = &file.replaces {
            say(format!(
                "cluster: waiting for a live device to apply the layout that replaces {dead} \
                 with {}",
                file.name
            ));
            tokio::time::sleep(POLL).await;
            continue;
        }
        let known = current.len() + staged.iter().filter(|s| !current.contains(s)).count();
        if file.creator && known >= file.size {
            apply(admin, &layout).await?;
            continue;
        }
        say(format!(
            "cluster: {known} of {} devices in the layout; waiting for the others",
            file.size
        ));
        tokio::time::sleep(POLL).await;
    }
    // The key and bucket tables are written to every node at a quorum: right after the layout
    // is applied this node may not be connected to enough of the others yet (Garage answers
    // 503). Retried until the bring-up's own time limit.
    while file.creator
        && let Err(e) = ensure_key_and_bucket(admin, file).await
    {
        say(format!(
            "cluster: waiting to create the cluster's key and bucket ({e})"
        ));
        tokio::time::sleep(POLL).await;
    }
    Ok(node)
}

/// For `join --replaces`: the node id of device `dead`, once it is sure that device is down.
/// The cluster's layout reaches a new node from its peer; `dead` must have a role in it, and no
/// other device may already go by this device's `name`. Garage counts a node up only once it
/// has connected to it, and learns the other nodes' addresses from the peers it is connected
/// to (which send only the nodes they are connected to), so `dead` counts as down once it has
/// not been reached for `SETTLE` after every other device of the layout was, or after
/// `SETTLE_LIMIT` when another device is down too.
async fn down_for_good(
    admin: &Admin,
    dead: &str,
    name: &str,
    say: &mut impl FnMut(String),
) -> Result<String, ClusterError> {
    let start = tokio::time::Instant::now();
    let mut others_up_since = None;
    loop {
        let layout = admin.get("GetClusterLayout").await?;
        let status = admin.get("GetClusterStatus").await?;
        match replacement_check(&layout, &status, dead, name)? {
            Replacement::NoLayoutYet => {
                say(
                    "cluster: waiting for the cluster's layout from the device named in the token"
                        .into(),
                );
                others_up_since = None;
            }
            Replacement::Down { id, others_up } => {
                if !others_up {
                    others_up_since = None;
                }
                let since = *others_up_since.get_or_insert_with(tokio::time::Instant::now);
                if (others_up && since.elapsed() >= SETTLE) || start.elapsed() >= SETTLE_LIMIT {
                    return Ok(id);
                }
                say(format!(
                    "cluster: checking that device {dead} is down (connecting to the other devices)"
                ));
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How long a device to be replaced must stay unreached once every other device is reached.
/// A new node hears of every node its peers are connected to with their first answer and
/// connects within milliseconds on a LAN.
const SETTLE: Duration = Duration::from_secs(3);
/// How long the check waits for the other devices when some of them are down too.
const SETTLE_LIMIT: Duration = Duration::from_secs(20);

#[derive(Debug, PartialEq, Eq)]
enum Replacement {
    /// The layout has not reached this node yet.
    NoLayoutYet,
    /// `dead` is not up; whether every other device of the layout is.
    Down { id: String, others_up: bool },
}

/// One look at whether device `dead` may be replaced by device `name`: refused when the layout
/// has no device `dead`, when it is up, or when another device is already called `name`.
fn replacement_check(
    layout: &Value,
    status: &Value,
    dead: &str,
    name: &str,
) -> Result<Replacement, ClusterError> {
    if layout["version"].as_u64().unwrap_or(0) == 0 {
        return Ok(Replacement::NoLayoutYet);
    }
    let roles: Vec<(&str, &str)> = layout["roles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["id"].as_str()?, r["zone"].as_str()?)))
        .collect();
    let up = |id: &str| {
        status["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["id"].as_str() == Some(id) && n["isUp"].as_bool() == Some(true))
    };
    if roles.iter().any(|(_, zone)| *zone == name) {
        return Err(ClusterError::Setup(format!(
            "a device named {name} is already in the cluster: a replacement needs a name of \
             its own (`device cluster join --name`)"
        )));
    }
    let Some((id, _)) = roles.iter().find(|(_, zone)| *zone == dead) else {
        let mut names: Vec<&str> = roles.iter().map(|(_, zone)| *zone).collect();
        names.sort_unstable();
        return Err(ClusterError::Setup(format!(
            "there is no device {dead} in the cluster (its devices: {}): `--replaces` names a \
             device as `device status` lists it",
            names.join(", ")
        )));
    };
    if up(id) {
        return Err(ClusterError::Setup(format!(
            "device {dead} is up (this device's Garage node reached it): only a device that is \
             down can be replaced. Join again naming the device that is down (`device cluster \
             join --replaces NAME`), or stop {dead} first if it is to leave the cluster"
        )));
    }
    let others_up = roles.iter().filter(|(i, _)| i != id).all(|(i, _)| up(i));
    Ok(Replacement::Down {
        id: (*id).to_owned(),
        others_up,
    })
}

/// Keeps this node dialling the nodes of the layout that it sees down, every `every`, at the
/// address each had when it was last seen up. Garage retries a lost peer with a growing backoff
/// and counts a peer up only once its own connection to it is made (a connection the peer makes
/// does not count), and it forgets a lost peer's address; so without this a device that returns
/// is seen back by the others 10-30 s after its node listens (measured on loopback), and until
/// then it syncs its tables with part of the cluster only and the others go on without it. A
/// node still down refuses the connection (or times out); nothing else changes.
pub(super) async fn dialer(admin: Admin, every: Duration) {
    let mut last_addr: HashMap<String, String> = HashMap::new();
    loop {
        if let Ok(status) = admin.get("GetClusterStatus").await {
            let mut down = Vec::new();
            for n in status["nodes"].as_array().into_iter().flatten() {
                let Some(id) = n["id"].as_str() else { continue };
                if let Some(addr) = n["addr"].as_str() {
                    last_addr.insert(id.to_owned(), addr.to_owned());
                }
                if n["role"].is_object() && n["isUp"].as_bool() != Some(true) {
                    down.extend(last_addr.get(id).map(|addr| format!("{id}@{addr}")));
                }
            }
            if !down.is_empty() {
                // Failures are the expected answer while a device is down.
                let _ = admin.post("ConnectClusterNodes", json!(down)).await;
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Garage's block resync on this node, as a device wants it. Garage's defaults (one worker,
/// `resync-tranquility` 2: idle twice as long as it worked) suit a server shared with other
/// work; a device is a dedicated box, and the blocks a returning device missed are what stands
/// between the cluster and full redundancy. Measured before this (docs/testing.md,
/// `benches/device_cluster.sh`): 44–48 s after `ready` for 100 missed objects, 248 s for 1,000.
/// Set at every start (Garage keeps them, but a node made before this kept its defaults).
const RESYNC_WORKERS: &str = "2";
const RESYNC_TRANQUILITY: &str = "0";

/// Applies [`RESYNC_WORKERS`] and [`RESYNC_TRANQUILITY`]; a failure costs only speed, so it is
/// logged and start-up goes on.
pub(super) async fn tune_resync(admin: &Admin) {
    for (variable, value) in [
        ("resync-worker-count", RESYNC_WORKERS),
        ("resync-tranquility", RESYNC_TRANQUILITY),
    ] {
        let body = json!({ "variable": variable, "value": value });
        if let Err(e) = admin.post("SetWorkerVariable?node=self", body).await {
            tracing::warn!(variable, value, error = %e, "device cluster: could not tune Garage's block resync");
        }
    }
}

async fn apply(admin: &Admin, layout: &Value) -> Result<(), ClusterError> {
    let version = layout["version"].as_u64().unwrap_or(0) + 1;
    let applied = admin
        .post("ApplyClusterLayout", json!({ "version": version }))
        .await?;
    tracing::info!(version, message = %applied["message"], "device cluster: layout applied");
    Ok(())
}

/// The cluster's S3 key (the token's) and bucket, with the key allowed on the bucket.
async fn ensure_key_and_bucket(admin: &Admin, file: &ClusterFile) -> Result<(), ClusterError> {
    let key_info = admin
        .call(&format!("GetKeyInfo?id={}", file.access_key), None)
        .await?;
    if key_info.is_err() {
        admin
            .post(
                "ImportKey",
                json!({"accessKeyId": file.access_key, "secretAccessKey": file.secret_key, "name": "tidegate-device-cluster"}),
            )
            .await?;
    }
    let bucket = match admin
        .call(&format!("GetBucketInfo?globalAlias={}", file.bucket), None)
        .await?
    {
        Ok(info) => info,
        Err(_) => {
            admin
                .post("CreateBucket", json!({"globalAlias": file.bucket}))
                .await?
        }
    };
    let id = bucket["id"]
        .as_str()
        .ok_or_else(|| admin_err("CreateBucket", "no bucket id in the answer"))?;
    admin
        .post(
            "AllowBucketKey",
            json!({"bucketId": id, "accessKeyId": file.access_key, "permissions": {"read": true, "write": true, "owner": true}}),
        )
        .await?;
    Ok(())
}

/// On every device: applies staged layout changes (a device that joined after the first layout,
/// or a replacement) as they appear, when this device is the one to (`applier`), so they are
/// applied whichever devices are down, the creating one included.
pub async fn keep_layout(admin: Admin, name: String) {
    loop {
        tokio::time::sleep(LAYOUT_EVERY).await;
        let Ok(layout) = admin.get("GetClusterLayout").await else {
            continue;
        };
        let staged = layout["stagedRoleChanges"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
        if !staged {
            continue;
        }
        let Ok(status) = admin.get("GetClusterStatus").await else {
            continue;
        };
        if applier(&status).as_deref() != Some(name.as_str()) {
            continue;
        }
        if let Err(e) = apply(&admin, &layout).await {
            tracing::warn!(error = %e, "device cluster: applying a staged layout change");
        }
    }
}

/// How long a device must have been out of reach before the next device takes over applying
/// layout changes from it. Garage's ping, every 15 s, refreshes when a node was last seen.
const APPLIER_GONE_AFTER: Duration = Duration::from_secs(30);

/// The device that applies staged layout changes: the first by name of the layout's devices that
/// are up or were seen less than `APPLIER_GONE_AFTER` ago. One device only: two applying
/// different staged changes under one version number break Garage's layout ("inconsistent
/// layout histories"), and a device briefly out of reach of another must not make that one
/// apply too. (Two that did apply the same changes would compute the same layout: Garage's
/// assignment is deterministic.)
fn applier(status: &Value) -> Option<String> {
    status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| {
            n["isUp"].as_bool() == Some(true)
                || n["lastSeenSecsAgo"]
                    .as_u64()
                    .is_some_and(|s| s < APPLIER_GONE_AFTER.as_secs())
        })
        .filter_map(|n| n["role"]["zone"].as_str())
        .min()
        .map(str::to_owned)
}

/// Health and membership as `device status` shows them.
pub async fn read_status(admin: &Admin, this: &str) -> Result<ClusterStatus, ClusterError> {
    let health = admin.get("GetClusterHealth").await?;
    let status = admin.get("GetClusterStatus").await?;
    let mut devices: Vec<DeviceHealth> = status["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| {
                    let zone = n["role"]["zone"].as_str()?;
                    Some(DeviceHealth {
                        name: zone.to_owned(),
                        up: n["isUp"].as_bool().unwrap_or(false),
                        last_seen_secs: n["lastSeenSecsAgo"].as_u64(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    let resync_queue = status["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| n["resyncQueueLen"].as_u64())
                .sum()
        })
        .unwrap_or(0);
    let count = |k: &str| {
        health[k]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0)
    };
    Ok(ClusterStatus {
        this_device: this.to_owned(),
        layout_version: status["layoutVersion"].as_u64().unwrap_or(0),
        devices,
        garage: health["status"].as_str().unwrap_or("unknown").to_owned(),
        partitions: count("partitions"),
        partitions_quorum: count("partitionsQuorum"),
        partitions_all_ok: count("partitionsAllOk"),
        resync_queue,
        writes_refused: None,
        restoring: None,
        syncing: None,
        draining: status["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["draining"].as_bool() == Some(true))
            .count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_nodes_reads_roles_and_staged_additions_not_removals() {
        let layout = json!({
            "version": 1,
            "roles": [{"id": "a", "zone": "d1"}, {"id": "b", "zone": "d2"}],
            "stagedRoleChanges": [{"id": "c", "zone": "d3", "capacity": 1, "tags": []}, {"id": "b", "remove": true}],
        });
        assert_eq!(
            layout_nodes(&layout),
            (vec!["a".to_owned(), "b".to_owned()], vec!["c".to_owned()])
        );
    }

    fn three_devices() -> Value {
        json!({
            "version": 2,
            "roles": [{"id": "a", "zone": "dev1"}, {"id": "b", "zone": "dev2"}, {"id": "c", "zone": "dev3"}],
        })
    }

    fn nodes(up: &[(&str, bool)]) -> Value {
        json!({"nodes": up.iter().map(|(id, up)| json!({"id": id, "isUp": up})).collect::<Vec<_>>()})
    }

    #[test]
    fn a_replacement_is_refused_for_a_device_that_is_up_missing_or_named_twice() {
        let layout = three_devices();
        let cases: [(&str, &str, Value, Result<Replacement, &str>); 6] = [
            (
                "dev1",
                "dev4",
                nodes(&[("b", true), ("c", true)]),
                Ok(Replacement::Down {
                    id: "a".into(),
                    others_up: true,
                }),
            ),
            (
                "dev1",
                "dev4",
                nodes(&[("a", false), ("b", true), ("c", false)]),
                Ok(Replacement::Down {
                    id: "a".into(),
                    others_up: false,
                }),
            ),
            (
                "dev2",
                "dev4",
                nodes(&[("b", true)]),
                Err("device dev2 is up"),
            ),
            (
                "dev9",
                "dev4",
                nodes(&[]),
                Err("no device dev9 in the cluster (its devices: dev1, dev2, dev3)"),
            ),
            (
                "dev1",
                "dev3",
                nodes(&[]),
                Err("a device named dev3 is already"),
            ),
            (
                "dev1",
                "dev4",
                json!({}),
                Ok(Replacement::Down {
                    id: "a".into(),
                    others_up: false,
                }),
            ),
        ];
        for (dead, name, status, want) in cases {
            let got = replacement_check(&layout, &status, dead, name);
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{dead} by {name}"),
                (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{e}"),
                (got, want) => panic!("{dead} by {name}: {got:?}, wanted {want:?}"),
            }
        }
        let fresh = json!({"version": 0, "roles": []});
        assert_eq!(
            replacement_check(&fresh, &nodes(&[]), "dev1", "dev4").unwrap(),
            Replacement::NoLayoutYet
        );
    }

    #[test]
    fn the_applier_is_the_first_device_up_or_seen_lately() {
        let node = |zone: &str, up: bool, seen: Option<u64>| json!({"id": zone, "role": {"zone": zone}, "isUp": up, "lastSeenSecsAgo": seen});
        let cases = [
            // Every device up: the first by name.
            (
                vec![node("dev2", true, None), node("dev1", true, None)],
                Some("dev1"),
            ),
            // dev1 out of reach for 5 s: still dev1's turn (it may be up for the others).
            (
                vec![node("dev1", false, Some(5)), node("dev2", true, None)],
                Some("dev1"),
            ),
            // dev1 gone for a minute, or never seen since this node started: dev2.
            (
                vec![node("dev1", false, Some(60)), node("dev2", true, None)],
                Some("dev2"),
            ),
            (
                vec![node("dev1", false, None), node("dev3", true, None)],
                Some("dev3"),
            ),
            // A node without a role (a removed device) never applies.
            (
                vec![json!({"id": "x", "isUp": true}), node("dev5", true, None)],
                Some("dev5"),
            ),
            (vec![], None),
        ];
        for (nodes, want) in cases {
            let status = json!({ "nodes": nodes });
            assert_eq!(applier(&status).as_deref(), want, "{status}");
        }
    }
}
