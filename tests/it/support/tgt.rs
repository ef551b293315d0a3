//! tgt (Debian's `tgt`), the reference iSCSI target, with one file-backed LUN, on its own port
//! and control port so tests never touch a system tgtd.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Tgt {
    child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub iqn: String,
    control: u16,
}

impl Tgt {
    /// tgtd serving `iqn` with a `size`-byte file as LUN 1 (tgt keeps LUN 0 for its controller).
    pub fn start(size: u64) -> Tgt {
        let tgtd = super::tool("tgtd");
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        std::fs::File::create(&disk).unwrap().set_len(size).unwrap();
        let port = super::free_port();
        // Control ports select tgtd's unix socket; pick one from the port to avoid clashes.
        let control = port % 1000 + 1000;
        let log = std::fs::File::create(dir.path().join("tgtd.log")).unwrap();
        let child = Command::new(tgtd)
            .args(["-f", "-C", &control.to_string(), "--iscsi"])
            .arg(format!("portal=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut tgt = Tgt {
            child,
            dir,
            port,
            iqn: "iqn.2026-11.org.tidegate:tgt-reference".into(),
            control,
        };
        tgt.configure(&disk);
        tgt
    }

    fn tgtadm(&self, args: &[&str]) -> bool {
        Command::new(super::tool("tgtadm"))
            .args(["-C", &self.control.to_string(), "--lld", "iscsi"])
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn configure(&mut self, disk: &Path) {
        let start = Instant::now();
        // tgtd creates its control socket shortly after start; retry the first command.
        while !self.tgtadm(&[
            "--op", "new", "--mode", "target", "--tid", "1", "-T", &self.iqn,
        ]) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "tgtd did not come up: {}",
                std::fs::read_to_string(self.dir.path().join("tgtd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let disk = disk.to_str().unwrap();
        assert!(self.tgtadm(&[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "-b",
            disk
        ]));
        assert!(self.tgtadm(&[
            "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"
        ]));
    }

    pub fn url(&self) -> String {
        format!("iscsi://127.0.0.1:{}/{}/1", self.port, self.iqn)
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
