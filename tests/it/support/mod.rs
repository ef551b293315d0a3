//! Shared test rig: resolving client tools, running the tidegate binary, real S3 servers
//! (Garage, moto, Ceph RGW), and a daemon started and waited for by its readiness file.

pub mod cunit;
pub mod garage;
pub mod gateway;
pub mod guest;
pub mod moto;
pub mod nfs;
pub mod nfs4;
pub mod qemu;
pub mod rgw;
pub mod rpcbind;
pub mod s3;
pub mod tgt;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Resolves a client binary from PATH (and ~/.cargo/bin), or panics with how to install it.
/// A missing tool is a failed test, never a skipped one.
pub fn tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    // e2fsprogs lives in sbin, which a non-root PATH often leaves out.
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "required test tool `{name}` is not installed; run ./scripts/test, which installs \
                 every tool the tests need (see docs/testing.md)"
            )
        })
}

/// A Python 3 interpreter that can import botocore.
pub fn python_with_botocore() -> PathBuf {
    python_with("botocore.utils", "python3-botocore")
}

/// A python3 that can import `module` (Debian's, whose packages the test script installs,
/// before whatever `python3` is first on PATH); panics naming the package otherwise.
pub fn python_with(module: &str, package: &str) -> PathBuf {
    for candidate in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(candidate)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return PathBuf::from(candidate);
        }
    }
    panic!("python3 with {module} is not installed; run ./scripts/test (apt-get install {package})")
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tidegate")
}

/// A tidegate command with a clean environment: no inherited TIDEGATE_* or XDG_DATA_HOME, so a
/// developer's own settings never leak into a test.
pub fn tidegate(data_dir: &Path) -> Command {
    let mut cmd = Command::new(bin());
    cmd.env_remove("TIDEGATE_CONFIG")
        .env_remove("XDG_DATA_HOME")
        .env("TIDEGATE_DATA_DIR", data_dir)
        .env("RUST_LOG", "info")
        .current_dir(data_dir.parent().unwrap_or(data_dir));
    cmd
}

/// `tidegate activate` on a local-directory bucket (created here), which writes the gateway's
/// config file `data_dir/tidegate.toml` for a test to extend.
pub fn activate_with_dir_bucket(data_dir: &Path, bucket: &Path) {
    std::fs::create_dir_all(bucket).unwrap();
    let out = run(tidegate(data_dir).args([
        "activate",
        "--bucket",
        &format!("file://{}", bucket.display()),
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running tidegate")
}

/// `o`, once it is known to have succeeded; else a panic naming `what` with its output.
pub fn succeeded(what: &str, o: Output) -> Output {
    assert!(o.status.success(), "{what}: {}{}", stdout(&o), stderr(&o));
    o
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The lines tidegate printed as its final error (`tidegate: ...`).
pub fn error_lines(o: &Output) -> Vec<String> {
    stderr(o)
        .lines()
        .filter(|l| l.starts_with("tidegate: "))
        .map(str::to_owned)
        .collect()
}

pub use tidegate::store::bench::noise;

/// A loopback port nothing listens on now, for a server a test starts later (often much later:
/// a cluster's Garage nodes are given their ports at `cluster create` and bind them at unlock).
///
/// Taken below the kernel's ephemeral range: a port from there (what binding port 0 gives) can
/// be handed out meanwhile to another test's `:0` listener or as the source port of any
/// outgoing connection, and the server then fails to bind it. That happened in CI with a
/// cluster's Garage node. Below the range only another `free_port` can pick the same port; the
/// pick is spread by process, time and a counter, and checked by binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static TAKEN: AtomicU64 = AtomicU64::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    const FIRST: u32 = 10_000;
    if low > FIRST + 1_000 {
        let span = u64::from(low - FIRST);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        let mut seed = nanos ^ (u64::from(std::process::id()) << 32);
        for _ in 0..64 {
            // splitmix64: a cheap, well-spread step from one seed to the next.
            seed = seed
                .wrapping_add(TAKEN.fetch_add(1, Ordering::Relaxed))
                .wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let port = (u64::from(FIRST) + z % span) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

/// Flips one byte in the middle of the only chunk in the embedded default's local-directory
/// bucket under `data_dir`; returns the chunk's id (its file name).
pub fn tamper_with_the_only_chunk(data_dir: &Path) -> String {
    let chunks: Vec<_> = std::fs::read_dir(data_dir.join("bucket/chunks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(chunks.len(), 1, "{chunks:?}");
    let mut bytes = std::fs::read(&chunks[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&chunks[0], bytes).unwrap();
    chunks[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Activates a gateway in `data` on a real server's bucket under `prefix`; returns its config path.
pub fn activate_on(
    server: &dyn s3::S3Server,
    dir: &Path,
    data: &Path,
    prefix: &str,
    extra: &[&str],
) -> std::path::PathBuf {
    let out = run(tidegate(data)
        .args([
            "activate",
            "--bucket",
            &format!("s3://{}/{prefix}", server.bucket()),
        ])
        .args([
            "--endpoint",
            server.endpoint(),
            "--region",
            server.region(),
            "--credentials-file",
        ])
        .arg(server.credentials_file(dir))
        .args(extra));
    assert!(out.status.success(), "{}", stderr(&out));
    // activate wrote DATA_DIR/tidegate.toml, which every later command finds by itself.
    data.join("tidegate.toml")
}
