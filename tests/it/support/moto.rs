//! moto's S3 server (PyPI `moto[server]`) on loopback, one per test: a stand-in for AWS S3's
//! semantics (conditional writes, checksums, error codes), which these machines cannot reach.
//! It keeps everything in memory; the process ending is the cleanup.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::s3::{Address, create_bucket, wait_listable};

pub struct Moto {
    child: Child,
    pub dir: tempfile::TempDir,
    address: Address,
}

impl Moto {
    /// Starts `moto_server` on a free port, creates the test bucket and waits until it lists.
    pub fn start() -> Moto {
        let moto = super::tool("moto_server");
        for attempt in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = super::free_port();
            let log = std::fs::File::create(dir.path().join("moto.log")).expect("log file");
            let child = Command::new(&moto)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("starting moto_server");
            let mut m = Moto {
                child,
                dir,
                // moto accepts any key pair; these are AWS's documented example keys.
                address: Address {
                    name: "moto",
                    endpoint: format!("http://127.0.0.1:{port}"),
                    bucket: "tidegate-test".to_owned(),
                    region: "us-east-1".to_owned(),
                    access_key: "AKIAIOSFODNN7EXAMPLE".to_owned(),
                    secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned(),
                },
            };
            let made = create_bucket(&m.address, Duration::from_secs(30));
            if made.is_ok() && wait_listable(&m.address, Duration::from_secs(30)) {
                return m;
            }
            let _ = m.child.kill();
            eprintln!(
                "moto attempt {attempt} did not become ready ({made:?}); log:\n{}",
                std::fs::read_to_string(m.dir.path().join("moto.log")).unwrap_or_default()
            );
        }
        panic!("moto_server did not start after 3 attempts");
    }
}

impl std::ops::Deref for Moto {
    type Target = Address;
    fn deref(&self) -> &Address {
        &self.address
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
