//! The iSCSI target (RFC 7143), transport only: PDUs, login and negotiation, sessions and
//! connections, task management. SCSI semantics live in `crate::scsi`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use crate::scsi::LunMap;

/// CHAP secrets for one target (RFC 7143 §12.1.3). Secrets are 12 to 16 bytes for
/// interoperability with open-iscsi; shorter ones are rejected at configuration time.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapConfig {
    /// What the initiator must prove: its CHAP name and secret.
    pub user: String,
    pub secret: String,
    /// Mutual CHAP: the name and secret the target proves itself with.
    pub mutual: Option<(String, String)>,
}

impl std::fmt::Debug for ChapConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapConfig")
            .field("user", &self.user)
            .field("mutual", &self.mutual.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

/// One target: an IQN, its LUNs, and whether CHAP is required to log in.
#[derive(Debug, Clone)]
pub struct TargetEntry {
    pub iqn: String,
    pub luns: Arc<LunMap>,
    pub chap: Option<ChapConfig>,
}

/// The targets a portal serves. Volumes come and go while the daemon runs, so it is shared
/// and mutable; sessions look their target up at login.
#[derive(Debug, Default)]
pub struct Registry {
    targets: RwLock<BTreeMap<String, TargetEntry>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&self, entry: TargetEntry) {
        self.write().insert(entry.iqn.clone(), entry);
    }

    pub fn remove(&self, iqn: &str) -> Option<TargetEntry> {
        self.write().remove(iqn)
    }

    pub fn get(&self, iqn: &str) -> Option<TargetEntry> {
        self.targets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(iqn)
            .cloned()
    }

    pub fn list(&self) -> Vec<TargetEntry> {
        self.targets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, TargetEntry>> {
        self.targets.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Portal settings.
#[derive(Debug, Clone)]
pub struct PortalConfig {
    /// The address advertised in SendTargets (never a wildcard: a reachable address).
    pub advertise: SocketAddr,
    /// Target portal group tag.
    pub tpgt: u16,
    /// CHAP required for discovery sessions, if set.
    pub discovery_chap: Option<ChapConfig>,
}
