//! The supervised `garage server` of this device: started with the device, restarted when it
//! exits on its own (after a pause, so a node that cannot start does not spin), stopped with the
//! device. Its output goes to `DATA_DIR/cluster/garage.log`; its pid to `garage.pid`, so a node
//! left running by a device that was killed is stopped before a new one starts on its ports.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{ClusterError, ClusterFile, cluster_dir};

/// The node's output, in the cluster directory.
pub const LOG: &str = "garage.log";

/// Pause before restarting a node that exited.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// The garage binary: the cluster file's `garage_bin`, else `$TIDEGATE_GARAGE`, else `garage`
/// on `PATH`, else `~/.cargo/bin/garage` (where `cargo install garage` puts it).
pub fn garage_binary(configured: Option<&Path>) -> Result<PathBuf, ClusterError> {
    if let Some(p) = configured {
        return if p.is_file() {
            Ok(p.to_owned())
        } else {
            Err(ClusterError::NoGarage(format!(
                "{} does not exist",
                p.display()
            )))
        };
    }
    if let Some(p) = std::env::var_os("TIDEGATE_GARAGE") {
        return garage_binary(Some(Path::new(&p)));
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("garage"))
                .find(|p| p.is_file())
        })
        .unwrap_or_default();
    let cargo = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/garage"));
    on_path.or(cargo.filter(|p| p.is_file())).ok_or_else(|| {
        ClusterError::NoGarage(
            "not on PATH nor in ~/.cargo/bin; install Garage 2.x or give --garage-bin (or \
                 TIDEGATE_GARAGE)"
                .into(),
        )
    })
}

/// The running node; `stop` ends it.
#[derive(Debug)]
pub struct Supervisor {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    starts: Arc<AtomicU64>,
}

impl Supervisor {
    pub fn start(data_dir: &Path, file: &ClusterFile) -> Result<Self, ClusterError> {
        let bin = garage_binary(file.garage_bin.as_deref())?;
        let dir = cluster_dir(data_dir);
        let conf = file.garage_toml(data_dir);
        stop_leftover(&dir, &conf);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let starts = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(bin, dir, conf, stop_rx, starts.clone()));
        Ok(Self { stop, task, starts })
    }

    /// How many times the node has been started: a restart means its tables may have missed
    /// writes (the health watch then has them brought up to date).
    pub fn starts(&self) -> Arc<AtomicU64> {
        self.starts.clone()
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn pid_file(dir: &Path) -> PathBuf {
    dir.join("garage.pid")
}

/// Kills a node that an earlier run of this device left behind (its pid file names a process
/// still running with our config), so the new one can bind the ports.
fn stop_leftover(dir: &Path, conf: &Path) {
    let Ok(text) = std::fs::read_to_string(pid_file(dir)) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let ours = String::from_utf8_lossy(&cmdline).contains(&*conf.to_string_lossy());
    if let (true, Some(pid)) = (ours, rustix::process::Pid::from_raw(pid)) {
        tracing::info!(
            pid = pid.as_raw_nonzero().get(),
            "stopping a garage node left running"
        );
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn run(
    bin: PathBuf,
    dir: PathBuf,
    conf: PathBuf,
    mut stop: tokio::sync::watch::Receiver<bool>,
    starts: Arc<AtomicU64>,
) {
    loop {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(LOG));
        let (out, err) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
            Err(e) => {
                tracing::warn!(error = %e, "opening garage.log; garage's output is dropped");
                (Stdio::null(), Stdio::null())
            }
        };
        let spawned = tokio::process::Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(garage = %bin.display(), error = %e, "cannot start garage");
                tokio::select! {
                    _ = tokio::time::sleep(RESTART_PAUSE) => continue,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        };
        starts.fetch_add(1, Ordering::SeqCst);
        if let Some(pid) = child.id() {
            let _ = std::fs::write(pid_file(&dir), format!("{pid}\n"));
        }
        let exited = tokio::select! {
            status = child.wait() => Some(status),
            _ = stop.wait_for(|s| *s) => None,
        };
        match exited {
            Some(status) => {
                tracing::warn!(status = ?status.ok(), "garage exited; restarting it");
                tokio::select! {
                    _ = tokio::time::sleep(RESTART_PAUSE) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            None => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                let _ = std::fs::remove_file(pid_file(&dir));
                return;
            }
        }
    }
}
