//! What every real S3 server in the rig offers a test: where it listens, its bucket and keys.
//! Garage, moto and Ceph RGW implement it, so one test body runs against each (tests/it/compat.rs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidegate::config::{BucketConfig, BucketLocation, Credentials};
use tidegate::store::Bucket;

pub trait S3Server {
    /// The server's name as the compatibility table in docs/compatibility.md spells it.
    fn name(&self) -> &'static str;
    /// `http://127.0.0.1:PORT`
    fn endpoint(&self) -> &str;
    fn bucket(&self) -> &str;
    fn region(&self) -> &str;
    fn access_key(&self) -> &str;
    fn secret_key(&self) -> &str;

    fn bucket_config(&self, prefix: &str) -> BucketConfig {
        let mut cfg = BucketConfig::local(PathBuf::new());
        cfg.location = BucketLocation::S3 {
            bucket: self.bucket().to_owned(),
            prefix: prefix.to_owned(),
        };
        cfg.endpoint = Some(self.endpoint().to_owned());
        cfg.region = self.region().to_owned();
        cfg.credentials = Credentials::Static {
            access_key_id: self.access_key().to_owned(),
            secret_access_key: self.secret_key().to_owned(),
        };
        cfg
    }

    fn open_bucket(&self, prefix: &str) -> Arc<Bucket> {
        Arc::new(Bucket::open(&self.bucket_config(prefix), false).expect("bucket client"))
    }

    /// Writes a credentials file (mode 0600) for `tidegate activate --credentials-file`.
    fn credentials_file(&self, dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(format!("{}-credentials.toml", self.name()));
        std::fs::write(
            &path,
            format!(
                "access_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
                self.access_key(),
                self.secret_key()
            ),
        )
        .expect("writing credentials");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    }
}

/// A server's address and keys, for the servers whose harness holds nothing else a test uses
/// (moto, RGW): they hand it out by `Deref`, so `&*server` is the `&dyn S3Server`.
pub struct Address {
    pub name: &'static str,
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
}

impl S3Server for Address {
    fn name(&self) -> &'static str {
        self.name
    }
    fn endpoint(&self) -> &str {
        &self.endpoint
    }
    fn bucket(&self) -> &str {
        &self.bucket
    }
    fn region(&self) -> &str {
        &self.region
    }
    fn access_key(&self) -> &str {
        &self.access_key
    }
    fn secret_key(&self) -> &str {
        &self.secret_key
    }
}

/// Creates the test bucket with boto3 (object_store has no CreateBucket), retrying for a bound
/// while the server finishes starting.
pub fn create_bucket(server: &dyn S3Server, limit: Duration) -> Result<(), String> {
    let script = "import sys, boto3\n\
        c = boto3.client('s3', endpoint_url=sys.argv[1], region_name=sys.argv[2],\n\
            aws_access_key_id=sys.argv[3], aws_secret_access_key=sys.argv[4])\n\
        c.create_bucket(Bucket=sys.argv[5])\n";
    let python = super::python_with("boto3", "python3-boto3");
    let start = Instant::now();
    loop {
        let out = Command::new(&python)
            .args(["-c", script])
            .args([
                server.endpoint(),
                server.region(),
                server.access_key(),
                server.secret_key(),
                server.bucket(),
            ])
            .env_remove("AWS_CA_BUNDLE")
            .output()
            .expect("running python3");
        if out.status.success() {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (bounded) until a listing of the server's bucket succeeds through tidegate's store.
pub fn wait_listable(server: &dyn S3Server, limit: Duration) -> bool {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let bucket = server.open_bucket("");
    let start = Instant::now();
    while start.elapsed() < limit {
        if rt.block_on(bucket.check()).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
