//! A real Garage S3 server on loopback, one per test, with its own data dir and ports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidegate::config::{BucketConfig, BucketLocation, Credentials};
use tidegate::store::Bucket;
use tidegate::store::master::random_hex;

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
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let bucket = Bucket::open(&self.bucket_config(""), false).expect("bucket client");
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if rt.block_on(bucket.check()).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    pub fn bucket_config(&self, prefix: &str) -> BucketConfig {
        let mut cfg = BucketConfig::local(PathBuf::new());
        cfg.location = BucketLocation::S3 {
            bucket: self.bucket.clone(),
            prefix: prefix.to_owned(),
        };
        cfg.endpoint = Some(self.endpoint.clone());
        cfg.region = "garage".to_owned();
        cfg.credentials = Credentials::Static {
            access_key_id: self.access_key.clone(),
            secret_access_key: self.secret_key.clone(),
        };
        cfg
    }

    pub fn open_bucket(&self, prefix: &str) -> Arc<Bucket> {
        Arc::new(Bucket::open(&self.bucket_config(prefix), false).expect("bucket client"))
    }

    /// Writes a credentials file (mode 0600) for `tidegate activate --credentials-file`.
    pub fn credentials_file(&self, dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("garage-credentials.toml");
        std::fs::write(
            &path,
            format!(
                "access_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
                self.access_key, self.secret_key
            ),
        )
        .expect("writing credentials");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
