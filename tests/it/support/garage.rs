//! A real Garage S3 server on loopback, one per test, with its own data dir and ports.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tidegate::store::master::random_hex;

use super::s3::{S3Server, wait_listable};

pub struct Garage {
    child: Child,
    conf: PathBuf,
    pub dir: tempfile::TempDir,
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

impl Garage {
    /// Starts Garage single-node with a default bucket and key, and waits (bounded) until an S3
    /// listing of that bucket succeeds.
    pub fn start() -> Garage {
        let garage = super::tool("garage");
        for attempt in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let (rpc, s3, admin) = (super::free_port(), super::free_port(), super::free_port());
            let conf = dir.path().join("garage.toml");
            std::fs::write(
                &conf,
                format!(
                    "metadata_dir = {meta:?}\ndata_dir = {data:?}\ndb_engine = \"sqlite\"\n\
                     replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                     [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
                     root_domain = \".s3.garage.localhost\"\n\
                     [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\nadmin_token = \"{token}\"\n",
                    meta = dir.path().join("meta").display().to_string(),
                    data = dir.path().join("data").display().to_string(),
                    secret = random_hex::<32>().expect("random"),
                    token = random_hex::<16>().expect("random"),
                ),
            )
            .expect("writing garage.toml");
            let access_key = format!("GK{}", random_hex::<12>().expect("random"));
            let secret_key = random_hex::<32>().expect("random");
            let bucket = "tidegate-test".to_owned();
            let log = std::fs::File::create(dir.path().join("garage.log")).expect("log file");
            let child = Command::new(&garage)
                .args([
                    "-c",
                    conf.to_str().expect("utf-8 path"),
                    "server",
                    "--single-node",
                    "--default-bucket",
                ])
                .env("GARAGE_DEFAULT_ACCESS_KEY", &access_key)
                .env("GARAGE_DEFAULT_SECRET_KEY", &secret_key)
                .env("GARAGE_DEFAULT_BUCKET", &bucket)
                .env("RUST_LOG", "garage=warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("starting garage");
            let mut g = Garage {
                child,
                conf: conf.clone(),
                dir,
                endpoint: format!("http://127.0.0.1:{s3}"),
                bucket,
                access_key,
                secret_key,
            };
            if g.wait_ready(Duration::from_secs(60)) {
                return g;
            }
            eprintln!(
                "garage attempt {attempt} did not become ready; log:\n{}",
                std::fs::read_to_string(g.dir.path().join("garage.log")).unwrap_or_default()
            );
        }
        panic!("garage did not start after 3 attempts");
    }

    /// Kills the server (an outage); `restart` brings it back with the same data and ports.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("garage.log"))
            .expect("log file");
        self.child = Command::new(super::tool("garage"))
            .args([
                "-c",
                self.conf.to_str().expect("utf-8 path"),
                "server",
                "--single-node",
                "--default-bucket",
            ])
            .env("GARAGE_DEFAULT_ACCESS_KEY", &self.access_key)
            .env("GARAGE_DEFAULT_SECRET_KEY", &self.secret_key)
            .env("GARAGE_DEFAULT_BUCKET", &self.bucket)
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("restarting garage");
        assert!(
            self.wait_ready(Duration::from_secs(60)),
            "garage did not come back"
        );
    }

    fn wait_ready(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if wait_listable(self, Duration::from_millis(100)) {
                return true;
            }
        }
        false
    }
}

impl S3Server for Garage {
    fn name(&self) -> &'static str {
        "garage"
    }
    fn endpoint(&self) -> &str {
        &self.endpoint
    }
    fn bucket(&self) -> &str {
        &self.bucket
    }
    fn region(&self) -> &str {
        "garage"
    }
    fn access_key(&self) -> &str {
        &self.access_key
    }
    fn secret_key(&self) -> &str {
        &self.secret_key
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
