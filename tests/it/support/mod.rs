//! Shared test rig: resolving client tools, running the tidegate binary, a real Garage S3
//! server, and a daemon started and waited for by its readiness file.

pub mod cunit;
pub mod garage;
pub mod gateway;
pub mod nfs;
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
    for candidate in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(candidate)
            .args(["-c", "import botocore.utils"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return PathBuf::from(candidate);
        }
    }
    panic!(
        "python3 with botocore is not installed; run ./scripts/test (apt-get install \
         python3-botocore)"
    )
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

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running tidegate")
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

/// Activates a gateway in `data` on the Garage bucket under `prefix`; returns its config path.
pub fn activate_on(
    garage: &garage::Garage,
    dir: &Path,
    data: &Path,
    prefix: &str,
    extra: &[&str],
) -> std::path::PathBuf {
    let out = run(tidegate(data)
        .args([
            "activate",
            "--bucket",
            &format!("s3://{}/{prefix}", garage.bucket),
        ])
        .args([
            "--endpoint",
            &garage.endpoint,
            "--region",
            "garage",
            "--credentials-file",
        ])
        .arg(garage.credentials_file(dir))
        .args(extra));
    assert!(out.status.success(), "{}", stderr(&out));
    // activate wrote DATA_DIR/tidegate.toml, which every later command finds by itself.
    data.join("tidegate.toml")
}
