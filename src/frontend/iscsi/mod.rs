//! The iSCSI target (RFC 7143), transport only: PDUs, login and negotiation, sessions and
//! connections, task management. SCSI semantics live in `crate::scsi`.
//!
//! Entry point: `serve` accepts connections on a listener until shutdown. Invariant: one
//! connection's failure (malformed input, a panic in a task) never affects another; every
//! connection is bounded by the shutdown signal.

mod chap;
mod connection;
mod login;
mod params;
/// The PDU codec is public so integration tests (`tests/it/malformed.rs`) can build PDUs.
pub mod pdu;
mod session;
mod task;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::scsi::LunMap;

/// How long shutdown waits for connections to finish before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed accept (e.g. out of file descriptors) so we do not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

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
    /// Idle time after which the target pings the initiator with a NOP-In (RFC 7143 §11.19);
    /// a connection that stays silent for a second interval is deemed dead and closed, which
    /// ends its session (ERL 0) and releases what its nexus held. `None` disables pings.
    pub nop_in_interval: Option<Duration>,
}

impl PortalConfig {
    /// The usual idle ping interval: long enough not to disturb a busy initiator.
    pub const DEFAULT_NOP_IN_INTERVAL: Duration = Duration::from_secs(30);
}

/// Counters for `status` and tests. All monotonic except `sessions` (live count, read through
/// `Stats::snapshot`).
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub logins: AtomicU64,
    pub logins_failed: AtomicU64,
    pub commands: AtomicU64,
    pub rejects: AtomicU64,
}

/// A point-in-time copy of `Stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub connections: u64,
    pub logins: u64,
    pub logins_failed: u64,
    pub commands: u64,
    pub rejects: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            connections: self.connections.load(Ordering::Relaxed),
            logins: self.logins.load(Ordering::Relaxed),
            logins_failed: self.logins_failed.load(Ordering::Relaxed),
            commands: self.commands.load(Ordering::Relaxed),
            rejects: self.rejects.load(Ordering::Relaxed),
        }
    }
}

/// What every connection of one portal shares.
pub(crate) struct Shared {
    pub(crate) registry: Arc<Registry>,
    pub(crate) portal: PortalConfig,
    pub(crate) sessions: session::Sessions,
    pub(crate) stats: Arc<Stats>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// Serves iSCSI on `listener` until `shutdown` completes, then asks initiators to log out and
/// closes every connection (waiting at most `SHUTDOWN_GRACE`).
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    portal: PortalConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    serve_with_stats(
        listener,
        registry,
        portal,
        Arc::new(Stats::default()),
        shutdown,
    )
    .await
}

/// `serve`, counting into `stats`.
pub async fn serve_with_stats(
    listener: TcpListener,
    registry: Arc<Registry>,
    portal: PortalConfig,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let (stop, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        registry,
        portal,
        sessions: session::Sessions::default(),
        stats,
        shutdown: stop_rx,
    });
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
                    conns.spawn(connection::run(stream, peer, shared.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "iscsi accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(done) = conns.join_next(), if !conns.is_empty() => {
                if let Some(e) = done.as_ref().err().filter(|e| e.is_panic()) {
                    tracing::error!(error = %e, "iscsi connection task panicked");
                }
            }
        }
    }
    stop.send_replace(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        conns.abort_all();
    }
    Ok(())
}
