//! Ceph's RADOS Gateway on a single-host cluster (one monitor, one manager, one OSD on memstore),
//! one per test, brought up by `ceph-rgw.sh` beside this file from Debian's ceph packages. About
//! 12 s to start on this machine; everything lives in a temp dir and in the daemons' memory, and
//! the daemons are killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tidegate::store::master::random_hex;

use super::s3::{Address, create_bucket, wait_listable};

pub struct Rgw {
    pub dir: tempfile::TempDir,
    address: Address,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/ceph-rgw.sh")
}

impl Rgw {
    pub fn start() -> Rgw {
        for tool in [
            "ceph-mon",
            "ceph-osd",
            "ceph-mgr",
            "radosgw",
            "radosgw-admin",
        ] {
            super::tool(tool);
        }
        for attempt in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let (mon, s3) = (super::free_port(), super::free_port());
            let rgw = Rgw {
                dir,
                // RGW's default zonegroup accepts any region name in a SigV4 scope.
                address: Address {
                    name: "rgw",
                    endpoint: format!("http://127.0.0.1:{s3}"),
                    bucket: "tidegate-test".to_owned(),
                    region: "us-east-1".to_owned(),
                    access_key: random_hex::<10>().expect("random").to_uppercase(),
                    secret_key: random_hex::<20>().expect("random"),
                },
            };
            // `timeout` bounds a cluster that never forms (a monitor waiting for quorum blocks
            // every later command); the daemons themselves are detached and outlive it.
            let out = Command::new("timeout")
                .arg("120")
                .arg(script())
                .arg(rgw.dir.path())
                .args([&mon.to_string(), &s3.to_string()])
                .args([&rgw.address.access_key, &rgw.address.secret_key])
                .stdin(Stdio::null())
                .output()
                .expect("running ceph-rgw.sh");
            if out.status.success() {
                let made = create_bucket(&rgw.address, Duration::from_secs(60));
                if made.is_ok() && wait_listable(&rgw.address, Duration::from_secs(60)) {
                    return rgw;
                }
                eprintln!("rgw attempt {attempt}: bucket not ready: {made:?}");
            }
            eprintln!(
                "rgw attempt {attempt} failed ({}): {}\nrgw log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(rgw.dir.path().join("client.rgw.a.log"))
                    .unwrap_or_default()
            );
            // A step that failed at once (a port taken between choosing and binding it, a
            // daemon of the previous attempt still going away) may not fail a moment later.
            std::thread::sleep(Duration::from_secs(2));
        }
        panic!("ceph rgw did not start after 3 attempts");
    }
}

impl std::ops::Deref for Rgw {
    type Target = Address;
    fn deref(&self) -> &Address {
        &self.address
    }
}

impl Drop for Rgw {
    fn drop(&mut self) {
        // The daemons hold everything in memory (memstore): SIGKILL loses nothing worth keeping
        // and ends them at once.
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("run")) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "pid")
                && let Ok(pid) = std::fs::read_to_string(&path)
            {
                let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            }
        }
    }
}
