//! A tidegate daemon under test: spawned with its own data dir, waited for through its
//! readiness file (bounded, never a fixed sleep), killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub struct Gateway {
    child: Option<Child>,
    pub data_dir: PathBuf,
    log: PathBuf,
}

impl Gateway {
    /// Starts `tidegate serve` (embedded default unless `config` is given). Returns the daemon's
    /// stderr as the error if it exits before becoming ready.
    pub fn start(data_dir: &Path, config: Option<&Path>) -> Result<Gateway, String> {
        Self::start_with(data_dir, config, &[])
    }

    /// Like `start`, with extra `serve` arguments (e.g. `--iscsi-listen 127.0.0.1:0`).
    pub fn start_with(
        data_dir: &Path,
        config: Option<&Path>,
        args: &[&str],
    ) -> Result<Gateway, String> {
        std::fs::create_dir_all(data_dir).map_err(|e| e.to_string())?;
        let log = data_dir.with_extension("log");
        let file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut cmd = super::tidegate(data_dir);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        // Tests run in parallel: the API takes any free port unless the test chooses one.
        let api: &[&str] = if args.contains(&"--api-listen") {
            &[]
        } else {
            &["--api-listen", "127.0.0.1:0"]
        };
        // NFS on a free port unless the test chose one: tests run in parallel, and the default
        // (2049) can be held by only one of them.
        let nfs_default: &[&str] = if args.contains(&"--nfs-listen") {
            &[]
        } else {
            &["--nfs-listen", "127.0.0.1:0"]
        };
        // Port 111 can be held by one process only: rpcbind is off unless the test asks (those
        // tests run one at a time, see .config/nextest.toml).
        let rpcbind_default: &[&str] = if args.contains(&"--rpcbind") {
            &[]
        } else {
            &["--rpcbind", "off"]
        };
        let child = cmd
            .arg("serve")
            .args(args)
            .args(api)
            .args(nfs_default)
            .args(rpcbind_default)
            .stdin(Stdio::null())
            .stdout(file.try_clone().map_err(|e| e.to_string())?)
            .stderr(file)
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut gw = Gateway {
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            log,
        };
        gw.wait_ready(Duration::from_secs(60))?;
        Ok(gw)
    }

    pub fn ready_file(&self) -> PathBuf {
        self.data_dir.join("run/ready.toml")
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        let pid = self.pid();
        while start.elapsed() < limit {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!(
                    "tidegate exited with {status}: {}",
                    self.log_text()
                ));
            }
            if std::fs::read_to_string(self.ready_file())
                .is_ok_and(|t| t.contains(&format!("pid = {pid}")))
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "tidegate not ready after {limit:?}: {}",
            self.log_text()
        ))
    }

    /// A value from the readiness file, e.g. `iscsi` (the bound portal address).
    pub fn ready_value(&self, key: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.ready_file()).ok()?;
        let table: toml::Table = toml::from_str(&text).ok()?;
        table.get(key)?.as_str().map(str::to_owned)
    }

    /// A value from the status snapshot the daemon rewrites every second; `key` is a dotted
    /// path (`cache.dirty_bytes`).
    pub fn status_value(&self, key: &str) -> Option<i64> {
        let text = std::fs::read_to_string(self.data_dir.join("run/status.toml")).ok()?;
        let table: toml::Value = toml::from_str(&text).ok()?;
        key.split('.')
            .try_fold(&table, |v, k| v.get(k))?
            .as_integer()
    }

    /// A stored volume's figure from the status file's `[[stored]]` entries.
    pub fn stored_value(&self, volume: &str, key: &str) -> Option<i64> {
        let text = std::fs::read_to_string(self.data_dir.join("run/status.toml")).ok()?;
        let table: toml::Table = toml::from_str(&text).ok()?;
        table
            .get("stored")?
            .as_array()?
            .iter()
            .find(|v| v.get("volume").and_then(|n| n.as_str()) == Some(volume))?
            .get(key)?
            .as_integer()
    }

    /// SIGKILL: a crash, no clean-up.
    pub fn kill9(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().ok()?.code()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
