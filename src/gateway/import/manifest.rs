//! The signed device manifest, written at seal: `DEVICE_DIR/manifest.jsonl`.
//!
//! Line 1 is a header (format, job, object count, bytes, time); then one line per object:
//! `{"id": name id, "entry": sealed {key, size, sha256, etag}, "mac": HMAC(id "\n" entry)}`;
//! the last line is `{"mac": HMAC(header line, every entry mac)}`. The HMACs are under the job
//! key's manifest subkey, the entries sealed like every record, so the file names nothing in
//! the clear. Invariant: an entry is trusted only if its own HMAC and seal verify; an entry
//! that does not, or an object the manifest does not list, is reported and never imported,
//! and a trailer that does not verify marks the whole device as tampered.

use std::collections::HashMap;
use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::gateway::GatewayError;
use crate::gateway::import::device::Device;
use crate::gateway::import::job::{JobKind, JobState};
use crate::store::device as keys;
use crate::store::keys::{hex, parse_hex};

const FORMAT: &str = "tidegate-device-manifest/1";
const FILE: &str = "manifest.jsonl";

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: String,
    job: String,
    objects: u64,
    bytes: u64,
    sealed_unix: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    id: String,
    entry: String,
    mac: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Trailer {
    mac: String,
}

/// What the manifest says about one object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Entry {
    pub key: String,
    pub size: u64,
    pub sha256: String,
    pub etag: String,
}

/// The outcome of verifying a device manifest.
#[derive(Debug, Default)]
pub struct ManifestCheck {
    /// Entries that verified, by name id.
    pub(crate) entries: HashMap<Vec<u8>, Entry>,
    /// Name ids (hex) of entry lines that did not verify.
    pub bad_entries: Vec<String>,
    /// Whether the header and trailer verified (no lines added, removed or reordered).
    pub trailer_ok: bool,
    /// Why the file as a whole did not verify, if it did not.
    pub problem: Option<String>,
}

impl ManifestCheck {
    pub fn tampered(&self) -> bool {
        !self.trailer_ok || !self.bad_entries.is_empty() || self.problem.is_some()
    }
}

fn entry_aad(job: &str, id: &str) -> String {
    format!("device/{job}/manifest/{id}")
}

impl Device {
    /// Seals the job: no more changes, uploads in progress are dropped, and the signed manifest
    /// is written (fsynced) before the state becomes SEALED. Sealing a sealed job rewrites
    /// nothing and succeeds.
    pub async fn seal(&self) -> Result<(u64, u64), GatewayError> {
        self.seal_as(JobKind::Import).await
    }

    /// Seals a job of `kind`: an import job becomes SEALED, an export job (sealed by the
    /// export once every object is copied, never by a client) READY.
    pub(crate) async fn seal_as(&self, kind: JobKind) -> Result<(u64, u64), GatewayError> {
        let row = self
            .inner
            .catalog
            .job(&self.inner.job)?
            .ok_or_else(|| GatewayError::NotFound(format!("job {}", self.inner.job)))?;
        if row.kind != kind.as_str() {
            return Err(GatewayError::InvalidArgument(format!(
                "job {} is an {} job; `job export` seals it when every object is copied",
                row.id, row.kind
            )));
        }
        let sealed_state = match kind {
            JobKind::Import => JobState::Sealed,
            JobKind::Export => JobState::Ready,
        };
        let state = JobState::parse(&row.state).unwrap_or(JobState::Failed);
        if !state.accepts_writes() {
            // Sealed already: a cluster's seal that had to keep its unreferenced segments
            // (a device was down) removes them now, when it can.
            if self.in_cluster() && state == JobState::Sealed {
                self.sweep_after_seal().await;
            }
            return Ok(self.object_count());
        }
        if self.in_cluster() {
            return self.seal_cluster().await;
        }
        let _guard = self.lock_after_functions().await;
        self.inner
            .sealed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.drop_uploads().await?;
        let (text, objects, bytes) = self.manifest_text()?;
        self.write_manifest(&text)?;
        self.inner
            .catalog
            .set_job_state(&self.inner.job, sealed_state.as_str(), None)?;
        Ok((objects, bytes))
    }

    /// The signed manifest of the index as it is now, with its object count and bytes.
    pub(crate) fn manifest_text(&self) -> Result<(String, u64, u64), GatewayError> {
        let (objects, bytes) = self.object_count();
        let header = serde_json::to_string(&Header {
            format: FORMAT.to_owned(),
            job: self.inner.job.clone(),
            objects,
            bytes,
            sealed_unix: crate::clock::unix_secs(),
        })
        .map_err(|e| GatewayError::Internal(Box::new(e)))?;
        let mut text = String::with_capacity(256 * usize::try_from(objects).unwrap_or(0));
        text.push_str(&header);
        text.push('\n');
        let mut all_macs = header.clone().into_bytes();
        {
            let index = self.read_index();
            for rec in index.values() {
                let id = hex(&keys::name_id(&self.inner.key, &rec.key));
                let entry = Entry {
                    key: rec.key.clone(),
                    size: rec.size,
                    sha256: rec.sha256.clone(),
                    etag: rec.etag.clone(),
                };
                let sealed = crate::gateway::import::record::seal(
                    &self.inner.codec,
                    &entry_aad(&self.inner.job, &id),
                    &entry,
                )?;
                let entry_hex = hex(&sealed);
                let mac =
                    keys::manifest_mac(&self.inner.key, format!("{id}\n{entry_hex}").as_bytes());
                all_macs.extend_from_slice(mac.as_bytes());
                let line = serde_json::to_string(&Line {
                    id,
                    entry: entry_hex,
                    mac,
                })
                .map_err(|e| GatewayError::Internal(Box::new(e)))?;
                text.push_str(&line);
                text.push('\n');
            }
        }
        let trailer = serde_json::to_string(&Trailer {
            mac: keys::manifest_mac(&self.inner.key, &all_macs),
        })
        .map_err(|e| GatewayError::Internal(Box::new(e)))?;
        text.push_str(&trailer);
        text.push('\n');
        Ok((text, objects, bytes))
    }

    /// Writes the manifest file (fsynced, then renamed into place).
    pub(crate) fn write_manifest(&self, text: &str) -> Result<(), GatewayError> {
        let path = self.manifest_path();
        let tmp = path.with_extension("tmp");
        let io = |e: std::io::Error| {
            GatewayError::Internal(format!("writing {}: {e}", path.display()).into())
        };
        {
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(())
    }

    pub fn manifest_path(&self) -> std::path::PathBuf {
        self.inner.segs.dir.join(FILE)
    }

    /// Reads and verifies the device manifest line by line.
    pub fn check_manifest(&self) -> ManifestCheck {
        let mut check = ManifestCheck::default();
        let text = match std::fs::read_to_string(self.manifest_path()) {
            Ok(t) => t,
            Err(e) => {
                check.problem = Some(format!("the device manifest cannot be read: {e}"));
                return check;
            }
        };
        let mut lines: Vec<&str> = text.lines().collect();
        let trailer = lines.pop();
        let header = if lines.is_empty() {
            None
        } else {
            Some(lines.remove(0))
        };
        let (Some(header), Some(trailer)) = (header, trailer) else {
            check.problem = Some("the device manifest is truncated".into());
            return check;
        };
        match serde_json::from_str::<Header>(header) {
            Ok(h) if h.format == FORMAT && h.job == self.inner.job => {}
            _ => check.problem = Some("the device manifest header is not this job's".into()),
        }
        let mut all_macs = header.as_bytes().to_vec();
        for line in lines {
            let Ok(l) = serde_json::from_str::<Line>(line) else {
                check.bad_entries.push(String::from("<unparseable line>"));
                continue;
            };
            all_macs.extend_from_slice(l.mac.as_bytes());
            let signed = format!("{}\n{}", l.id, l.entry);
            let opened = if keys::manifest_mac_matches(&self.inner.key, signed.as_bytes(), &l.mac) {
                crate::store::keys::unhex(&l.entry).and_then(|sealed| {
                    crate::gateway::import::record::open::<Entry>(
                        &self.inner.codec,
                        &entry_aad(&self.inner.job, &l.id),
                        sealed,
                    )
                    .ok()
                })
            } else {
                None
            };
            match (opened, parse_hex::<32>(&l.id)) {
                (Some(entry), Some(id)) if keys::name_id(&self.inner.key, &entry.key) == id => {
                    check.entries.insert(id.to_vec(), entry);
                }
                _ => check.bad_entries.push(l.id.clone()),
            }
        }
        check.trailer_ok = serde_json::from_str::<Trailer>(trailer)
            .is_ok_and(|t| keys::manifest_mac_matches(&self.inner.key, &all_macs, &t.mac));
        if !check.trailer_ok && check.problem.is_none() {
            check.problem = Some(
                "the device manifest's signature does not verify (lines added, removed or edited)"
                    .into(),
            );
        }
        check
    }
}
