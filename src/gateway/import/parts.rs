//! Importing a device cluster's data set from several devices at once (issue 19 item 4,
//! docs/decisions/0017): `job import --share I/N` on N devices (or one after another) imports
//! share I of N, and the shares' results meet in the cluster.
//!
//! - **Which objects are whose** (`assign`) is a function of the signed manifest alone, which
//!   every device reads the same from the cluster: objects in decreasing size (then name id)
//!   each go to the share with the fewest bytes so far (a per-object cost counted as
//!   `OBJECT_COST_BYTES`), so shares are disjoint and even without any coordination, and
//!   no conditional write (which Garage ignores) is needed.
//! - **What a share has done** is its part, `imp/part/<N>-<I>` in the cluster, sealed under the
//!   job key: one row per object verified in the target or refused, and the share's runs. It is
//!   rewritten at most every `CHECKPOINT_EVERY` during a run and at its end, so a run killed
//!   mid-way loses at most that much; the next run of the share (on any device) skips what any
//!   part lists as imported, and first asks the target for the rest (`import_one`'s caller
//!   hashes the device's data and compares size and ETag), so an object that reached the
//!   target whole is never sent again.
//! - **The report**: the run that finds every part of the N complete merges all parts' rows
//!   into the job's one report (written as on a standalone device).
//!
//! Must not: talk to the target (the transfer does). Invariant: a row says `imported` only for
//! an object verified in the target.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::gateway::GatewayError;
use crate::gateway::import::Device;
use crate::gateway::import::claim::ShareClaim;
use crate::gateway::import::manifest::Entry;
use crate::gateway::import::record;
use crate::gateway::import::report::ReportRow;
use crate::store::keys::hex;
use crate::store::{Bucket, StoreError};

const PARTS: &str = "imp/part/";
/// What one object costs an import besides its bytes (requests, verification), in bytes of
/// transfer: a share of many small objects gets fewer bytes.
const OBJECT_COST_BYTES: u64 = 256 << 10;
/// How often a running share records its progress in the cluster.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// How long the last share to finish looks for the others' parts (a listing through one node
/// may trail a write by moments).
const MERGE_TRIES: u32 = 4;

/// Share `index` (from 1) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub index: u32,
    pub count: u32,
}

impl Share {
    pub const WHOLE: Share = Share { index: 1, count: 1 };
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Share {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a share: write I/N, e.g. 1/2 (1 <= I <= N <= 1000)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || index > count || count > 1000 {
            return Err(bad());
        }
        Ok(Share { index, count })
    }
}

/// The share (from 1) of every manifest entry, by name id: largest first to the lightest share.
pub(crate) fn assign(entries: &HashMap<Vec<u8>, Entry>, count: u32) -> HashMap<Vec<u8>, u32> {
    let mut order: Vec<(&Vec<u8>, u64)> = entries
        .iter()
        .map(|(id, e)| (id, e.size.saturating_add(OBJECT_COST_BYTES)))
        .collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut load = vec![0u64; count.max(1) as usize];
    let mut out = HashMap::with_capacity(order.len());
    for (id, weight) in order {
        let (lightest, _) = load
            .iter()
            .enumerate()
            .min_by_key(|(i, l)| (**l, *i))
            .expect("at least one share");
        load[lightest] += weight;
        out.insert(id.clone(), lightest as u32 + 1);
    }
    out
}

/// The share of an object the manifest does not name (its failure row is reported once).
pub(crate) fn share_of_stray(id: &[u8], count: u32) -> u32 {
    let mut first = [0u8; 8];
    for (d, s) in first.iter_mut().zip(id) {
        *d = *s;
    }
    (u64::from_be_bytes(first) % u64::from(count.max(1))) as u32 + 1
}

/// One object's outcome as a part keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    key: String,
    size: u64,
    sha256: String,
    etag: String,
    status: String,
    reason: String,
}

impl Row {
    fn of(r: &ReportRow) -> Self {
        Row {
            key: r.key.clone(),
            size: r.size,
            sha256: r.sha256.clone(),
            etag: r.etag.clone(),
            status: r.status.to_owned(),
            reason: r.reason.clone(),
        }
    }

    fn report_row(&self) -> ReportRow {
        ReportRow {
            key: self.key.clone(),
            size: self.size,
            sha256: self.sha256.clone(),
            etag: self.etag.clone(),
            status: if self.status == "imported" {
                "imported"
            } else {
                "failed"
            },
            reason: self.reason.clone(),
        }
    }
}

/// One run of a share, as the report lists it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShareRun {
    pub device: String,
    pub started_unix: i64,
    pub seconds: f64,
    /// Objects and bytes sent to the target and verified there.
    pub sent_objects: u64,
    pub sent_bytes: u64,
    /// PUT requests to the target (parts counted one each).
    pub put_requests: u64,
    /// Objects found whole in the target (sent by an interrupted run) and not sent again.
    pub found_objects: u64,
    /// Whether the run got to its end (a killed run's counts stop at its last checkpoint).
    pub finished: bool,
}

/// A share's record in the cluster.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Part {
    complete: bool,
    /// By name id (hex).
    rows: BTreeMap<String, Row>,
    runs: Vec<ShareRun>,
}

/// A share as the merged report lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ShareSummary {
    pub share: String,
    pub objects: u64,
    pub runs: Vec<ShareRun>,
}

/// A share's import in progress: its part, checkpointed into the cluster.
pub(crate) struct ShareImport {
    device: Device,
    bucket: std::sync::Arc<Bucket>,
    pub share: Share,
    part: Mutex<(Part, Instant)>,
    started: Instant,
    /// Name ids any part lists as imported.
    pub imported: HashSet<Vec<u8>>,
    /// Whether this share ran before (its objects may be in the target unrecorded).
    pub resumed: bool,
    /// This run's hold on the share: no other run imports it at the same time.
    claim: ShareClaim,
}

/// What the end of a share's run found.
pub(crate) enum Finished {
    /// Every share is complete: all rows and every share's runs.
    Merged(Vec<ReportRow>, Vec<ShareSummary>),
    /// These shares are not complete yet.
    Pending(Vec<String>),
}

fn part_key(share: Share) -> String {
    format!("{PARTS}{}-{}", share.count, share.index)
}

fn part_aad(job: &str, key: &str) -> String {
    format!("device/{job}/{key}")
}

impl ShareImport {
    /// Reads every part in the cluster and opens this share's run.
    pub async fn begin(device: &Device, share: Share) -> Result<Self, GatewayError> {
        let link = device
            .link()
            .ok_or_else(|| GatewayError::Internal("a share import needs a cluster".into()))?;
        let bucket = link.bucket.clone();
        let claim = ShareClaim::take(device, bucket.clone(), &link.device, share).await?;
        let mut imported = HashSet::new();
        let mut own = None;
        for (key, part) in read_parts(device, &bucket).await? {
            for (id, row) in &part.rows {
                if row.status == "imported"
                    && let Some(id) = crate::store::keys::unhex(id)
                {
                    imported.insert(id);
                }
            }
            if key == part_key(share) {
                own = Some(part);
            }
        }
        let resumed = own.is_some();
        let mut part = own.unwrap_or_default();
        part.complete = false;
        part.runs.push(ShareRun {
            device: link.device.clone(),
            started_unix: crate::clock::unix_secs(),
            ..ShareRun::default()
        });
        Ok(Self {
            device: device.clone(),
            bucket,
            share,
            part: Mutex::new((part, Instant::now())),
            started: Instant::now(),
            imported,
            resumed,
            claim,
        })
    }

    /// Records one object's outcome (`found`: it was already whole in the target) and the
    /// run's PUT count; checkpoints the part when one is due.
    pub async fn note(&self, row: &ReportRow, found: bool, puts: u64) -> Result<(), GatewayError> {
        let sealed = {
            let mut guard = self.part.lock().unwrap_or_else(|p| p.into_inner());
            let (part, last) = &mut *guard;
            let id = hex(&crate::store::device::name_id(
                &self.device.inner.key,
                &row.key,
            ));
            if let Some(run) = part.runs.last_mut() {
                run.put_requests = puts;
                run.seconds = self.started.elapsed().as_secs_f64();
                if row.status == "imported" {
                    if found {
                        run.found_objects += 1;
                    } else {
                        run.sent_objects += 1;
                        run.sent_bytes += row.size;
                    }
                }
            }
            part.rows.insert(id, Row::of(row));
            if last.elapsed() < CHECKPOINT_EVERY {
                return Ok(());
            }
            *last = Instant::now();
            self.seal(part)?
        };
        self.bucket
            .put(&part_key(self.share), sealed.into())
            .await?;
        Ok(())
    }

    fn seal(&self, part: &Part) -> Result<Vec<u8>, GatewayError> {
        record::seal(
            &self.device.inner.codec,
            &part_aad(&self.device.inner.job, &part_key(self.share)),
            part,
        )
    }

    /// Ends the run: every row of the share, the part marked complete; then, when every share
    /// of the N is complete, the merge of all parts.
    pub async fn finish(&self, rows: &[ReportRow], puts: u64) -> Result<Finished, GatewayError> {
        let sealed = {
            let mut guard = self.part.lock().unwrap_or_else(|p| p.into_inner());
            let (part, _) = &mut *guard;
            for row in rows {
                let id = hex(&crate::store::device::name_id(
                    &self.device.inner.key,
                    &row.key,
                ));
                part.rows.insert(id, Row::of(row));
            }
            part.complete = true;
            if let Some(run) = part.runs.last_mut() {
                run.put_requests = puts;
                run.seconds = self.started.elapsed().as_secs_f64();
                run.finished = true;
            }
            self.seal(part)?
        };
        self.bucket
            .put(&part_key(self.share), sealed.into())
            .await?;
        self.claim.release().await;
        let mut tries = 0;
        loop {
            tries += 1;
            let parts = read_parts(&self.device, &self.bucket).await?;
            let pending: Vec<String> = (1..=self.share.count)
                .map(|index| Share {
                    index,
                    count: self.share.count,
                })
                .filter(|s| !parts.iter().any(|(k, p)| *k == part_key(*s) && p.complete))
                .map(|s| s.to_string())
                .collect();
            if pending.is_empty() {
                return Ok(merge(parts, self.share.count));
            }
            if tries >= MERGE_TRIES {
                return Ok(Finished::Pending(pending));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Every part in the cluster that opens, by key; one that does not is logged and left out.
async fn read_parts(device: &Device, bucket: &Bucket) -> Result<Vec<(String, Part)>, GatewayError> {
    let mut out = Vec::new();
    for obj in bucket.list(PARTS).await? {
        let sealed = match bucket.get(&obj.key).await {
            Ok(b) => b,
            Err(StoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let aad = part_aad(&device.inner.job, &obj.key);
        match record::open::<Part>(&device.inner.codec, &aad, sealed.to_vec()) {
            Ok(part) => out.push((obj.key, part)),
            Err(e) => tracing::warn!(key = %obj.key, error = %e, "an import part does not verify"),
        }
    }
    Ok(out)
}

/// All parts' rows, one per object (an `imported` row wins over another part's failure), and
/// the shares of `count` with their runs.
fn merge(parts: Vec<(String, Part)>, count: u32) -> Finished {
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut shares = Vec::new();
    for (key, part) in parts {
        for (id, row) in &part.rows {
            let keep = rows
                .get(id)
                .is_none_or(|old| old.status != "imported" && row.status == "imported");
            if keep {
                rows.insert(id.clone(), row.clone());
            }
        }
        if let Some(name) = key.strip_prefix(PARTS)
            && let Some((n, i)) = name.split_once('-')
            && n == count.to_string()
        {
            shares.push(ShareSummary {
                share: format!("{i}/{n}"),
                objects: part.rows.len() as u64,
                runs: part.runs,
            });
        }
    }
    shares.sort_by(|a, b| a.share.cmp(&b.share));
    let mut rows: Vec<ReportRow> = rows.values().map(Row::report_row).collect();
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    Finished::Merged(rows, shares)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(sizes: &[u64]) -> HashMap<Vec<u8>, Entry> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                (
                    vec![i as u8; 32],
                    Entry {
                        key: format!("k{i}"),
                        size,
                        sha256: String::new(),
                        etag: String::new(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn shares_are_disjoint_cover_everything_and_balance_bytes() {
        let mut sizes = vec![1 << 30];
        sizes.extend((0..2000).map(|i| 1000 + i * 37));
        let e = entries(&sizes);
        for count in [1, 2, 3, 5] {
            let a = assign(&e, count);
            assert_eq!(a.len(), e.len(), "every object has one share");
            let mut bytes = vec![0u64; count as usize];
            for (id, share) in &a {
                assert!((1..=count).contains(share));
                bytes[*share as usize - 1] += e[id].size + OBJECT_COST_BYTES;
            }
            let (min, max) = (bytes.iter().min().unwrap(), bytes.iter().max().unwrap());
            // The 1 GiB object alone may outweigh the rest; else the shares are within one
            // object of each other.
            assert!(
                *max - *min <= (1 << 30) + OBJECT_COST_BYTES,
                "{count}: {bytes:?}"
            );
            // The same manifest gives the same shares, whoever computes them.
            assert_eq!(a, assign(&e, count));
        }
        let small = entries(&[10; 9]);
        let a = assign(&small, 3);
        for s in 1..=3 {
            assert_eq!(a.values().filter(|v| **v == s).count(), 3);
        }
    }

    fn row(key: &str, status: &str) -> Row {
        Row {
            key: key.into(),
            size: 1,
            sha256: String::new(),
            etag: String::new(),
            status: status.into(),
            reason: String::new(),
        }
    }

    #[test]
    fn the_merge_lists_each_object_once_and_an_import_wins_over_a_failure() {
        let part = |rows: &[(&str, &str, &str)], runs: usize| Part {
            complete: true,
            rows: rows
                .iter()
                .map(|(id, key, status)| (id.to_string(), row(key, status)))
                .collect(),
            runs: vec![ShareRun::default(); runs],
        };
        let parts = vec![
            (
                format!("{PARTS}2-1"),
                part(&[("01", "a", "imported"), ("02", "b", "failed")], 2),
            ),
            (format!("{PARTS}2-2"), part(&[("03", "c", "imported")], 1)),
            // A part of an earlier split (1 share) imported b: that wins over share 1/2's
            // failure, and its runs are not one of the 2 shares'.
            (format!("{PARTS}1-1"), part(&[("02", "b", "imported")], 1)),
        ];
        let Finished::Merged(rows, shares) = merge(parts, 2) else {
            panic!("not merged");
        };
        let got: Vec<(&str, &str)> = rows.iter().map(|r| (r.key.as_str(), r.status)).collect();
        assert_eq!(
            got,
            [("a", "imported"), ("b", "imported"), ("c", "imported")]
        );
        let shares: Vec<(&str, u64, usize)> = shares
            .iter()
            .map(|s| (s.share.as_str(), s.objects, s.runs.len()))
            .collect();
        assert_eq!(shares, [("1/2", 2, 2), ("2/2", 1, 1)]);
    }

    #[test]
    fn shares_parse_as_index_over_count() {
        assert_eq!("2/3".parse::<Share>(), Ok(Share { index: 2, count: 3 }));
        for bad in ["0/2", "3/2", "1", "a/b", "1/0", "1/1001"] {
            assert!(bad.parse::<Share>().is_err(), "{bad}");
        }
        for id in [[0u8; 32], [255; 32], [7; 32]] {
            assert!((1..=4).contains(&share_of_stray(&id, 4)));
        }
    }
}
