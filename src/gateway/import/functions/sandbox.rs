//! Runs one function invocation in a bubblewrap sandbox (docs/decisions/0015-functions-on-put-
//! in-bubblewrap.md): the object on stdin, its description in the environment, stdout kept
//! (bounded) for the protocol, the tail of stderr kept for the report.
//!
//! The sandbox: new user, PID, network, IPC, UTS and cgroup namespaces (the network one holds
//! only a loopback with nothing listening), every capability dropped, uid/gid 65534; a root
//! that is read-only and holds only `/usr`, the loader's files from `/etc`, a fresh `/proc`, a
//! minimal read-only `/dev` and the program itself; `/tmp`, a tmpfs of `scratch_bytes`, is the
//! one writable place. `prlimit` sets RLIMIT_CPU, RLIMIT_AS and RLIMIT_CORE before bwrap
//! starts. Invariant: every process of a run dies when it ends: a timeout kills bwrap, whose
//! sandboxed init dies with it (`--die-with-parent`), taking its PID namespace along.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::gateway::import::device::ByteStream;

/// How much of stderr the report keeps (its end: where programs say why they failed).
const STDERR_TAIL_BYTES: usize = 2048;
/// How long a killed sandbox's pipes may take to close before the run is abandoned.
const REAP_GRACE: Duration = Duration::from_secs(5);
/// Where the program is bound inside the sandbox.
const PROGRAM_DIR: &str = "/function";
/// Files of `/etc` programs need: the dynamic loader's cache and configuration, the names of
/// users and groups, the time zone and the alternatives that some `/usr/bin` links go through.
const ETC_FILES: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
];
/// Top-level directories that merged-/usr systems make links into `/usr` (and older ones keep
/// as directories); each is reproduced as it is on the host.
const ROOT_LINKS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "{tool} was not found on PATH (install the Debian package {package}); functions on PUT \
         run in its sandbox"
    )]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("starting the sandbox for {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for the sandbox")]
    Wait(#[source] std::io::Error),
}

/// The programs the sandbox is made of, found once.
#[derive(Debug, Clone)]
pub struct Tools {
    bwrap: PathBuf,
    prlimit: PathBuf,
}

impl Tools {
    pub fn find() -> Result<Self, SandboxError> {
        Ok(Self {
            bwrap: which("bwrap").ok_or(SandboxError::MissingTool {
                tool: "bwrap",
                package: "bubblewrap",
            })?,
            prlimit: which("prlimit").ok_or(SandboxError::MissingTool {
                tool: "prlimit",
                package: "util-linux",
            })?,
        })
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Limits of one run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock time before the sandbox is killed; also its CPU time limit.
    pub timeout: Duration,
    /// RLIMIT_AS of every process in the sandbox, and the size of its scratch tmpfs.
    pub memory_bytes: u64,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The sandbox's exit status: the program's, or 128 + a signal that killed it.
    Exited(i32),
    /// Killed by the device at its timeout.
    TimedOut,
    /// Killed because its stdout passed the protocol's limit.
    OutputTooLarge,
}

#[derive(Debug)]
pub struct Finished {
    pub ending: Ending,
    pub stdout: Vec<u8>,
    pub stderr_tail: String,
    pub elapsed: Duration,
    /// Why the object could not be fed in full (a device read error), if so. A program that
    /// stops reading early is not an error.
    pub input_error: Option<String>,
}

/// The bwrap and prlimit command line for `program` (a file on the host) under `limits`.
fn command(tools: &Tools, program: &Path, limits: Limits) -> tokio::process::Command {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "program".to_owned());
    let inside = format!("{PROGRAM_DIR}/{name}");
    let cpu_secs = limits.timeout.as_secs().max(1) + u64::from(limits.timeout.subsec_nanos() > 0);
    let mut cmd = tokio::process::Command::new(&tools.prlimit);
    cmd.arg(format!("--cpu={cpu_secs}"))
        .arg(format!("--as={}", limits.memory_bytes))
        .arg("--core=0")
        .arg("--")
        .arg(&tools.bwrap)
        .args([
            "--unshare-all",
            "--unshare-user",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--uid",
            "65534",
            "--gid",
            "65534",
            "--hostname",
            "tidegate-function",
            "--ro-bind",
            "/usr",
            "/usr",
        ]);
    for top in ROOT_LINKS {
        let host = Path::new("/").join(top);
        match std::fs::read_link(&host) {
            Ok(target) => {
                cmd.arg("--symlink").arg(target).arg(&host);
            }
            Err(_) if host.is_dir() => {
                cmd.arg("--ro-bind").arg(&host).arg(&host);
            }
            Err(_) => {}
        }
    }
    for etc in ETC_FILES {
        cmd.args(["--ro-bind-try", etc, etc]);
    }
    cmd.arg("--ro-bind")
        .arg(program)
        .arg(&inside)
        .args(["--proc", "/proc", "--dev", "/dev", "--size"])
        .arg(limits.memory_bytes.to_string())
        .args([
            "--tmpfs",
            "/tmp",
            "--remount-ro",
            "/dev",
            "--remount-ro",
            "/",
            "--chdir",
            "/tmp",
            "--",
        ])
        .arg(&inside);
    cmd
}

/// Runs `program` with `env` (the whole environment: nothing of the device's is passed on),
/// `input` on its stdin, under `limits`.
pub async fn run(
    tools: &Tools,
    program: &Path,
    env: &[(String, String)],
    input: ByteStream,
    limits: Limits,
) -> Result<Finished, SandboxError> {
    let mut cmd = command(tools, program, limits);
    cmd.env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|source| SandboxError::Spawn {
        program: program.to_owned(),
        source,
    })?;
    let feed = child
        .stdin
        .take()
        .map(|stdin| tokio::spawn(feed(stdin, input)));
    let out = child.stdout.take().map(|s| tokio::spawn(read_bounded(s)));
    let err = child.stderr.take().map(|s| tokio::spawn(read_tail(s)));
    let (too_large_tx, too_large_rx) = tokio::sync::oneshot::channel::<()>();
    let out = out.map(|handle| {
        tokio::spawn(async move {
            let result = handle.await.unwrap_or_default();
            if result.1 {
                let _ = too_large_tx.send(());
            }
            result
        })
    });
    let ending = tokio::select! {
        status = child.wait() => Ending::Exited(exit_code(status.map_err(SandboxError::Wait)?)),
        _ = tokio::time::sleep(limits.timeout) => Ending::TimedOut,
        Ok(()) = too_large_rx => Ending::OutputTooLarge,
    };
    if !matches!(ending, Ending::Exited(_)) {
        // The sandbox outlived its limit: kill bwrap; its init and PID namespace follow.
        let _ = child.start_kill();
        let _ = tokio::time::timeout(REAP_GRACE, child.wait()).await;
    }
    let elapsed = started.elapsed();
    let input_error = joined(feed).await;
    let (stdout, _) = joined(out).await;
    let stderr_tail = joined(err).await;
    Ok(Finished {
        ending,
        stdout,
        stderr_tail,
        elapsed,
        input_error,
    })
}

/// What a reader or writer task returned, or its default if it is gone or does not end in
/// time (a pipe some stray process still holds).
async fn joined<T: Default>(task: Option<tokio::task::JoinHandle<T>>) -> T {
    let Some(task) = task else {
        return T::default();
    };
    tokio::time::timeout(REAP_GRACE, task)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// Streams the object into stdin. A program that exits or closes stdin early ends the feed
/// quietly; only a device read error is reported.
async fn feed(mut stdin: tokio::process::ChildStdin, mut input: ByteStream) -> Option<String> {
    while let Some(piece) = input.next().await {
        match piece {
            Ok(bytes) => {
                if stdin.write_all(&bytes).await.is_err() {
                    return None;
                }
            }
            Err(e) => return Some(e.to_string()),
        }
    }
    let _ = stdin.shutdown().await;
    None
}

/// Reads stdout up to the protocol's limit; `true` when the limit was passed.
async fn read_bounded(mut out: tokio::process::ChildStdout) -> (Vec<u8>, bool) {
    let limit = super::protocol::MAX_OUTPUT_BYTES;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        match out.read(&mut chunk).await {
            Ok(0) | Err(_) => return (buf, false),
            Ok(n) => {
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                if buf.len() > limit {
                    return (buf, true);
                }
            }
        }
    }
}

/// Reads stderr to its end, keeping the last `STDERR_TAIL_BYTES`.
async fn read_tail(mut err: tokio::process::ChildStderr) -> String {
    let mut tail: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 8 << 10];
    loop {
        match err.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(chunk.get(..n).unwrap_or_default());
                if tail.len() > STDERR_TAIL_BYTES {
                    tail.drain(..tail.len() - STDERR_TAIL_BYTES);
                }
            }
        }
    }
    String::from_utf8_lossy(&tail).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn input(data: &'static [u8]) -> ByteStream {
        Box::pin(futures::stream::iter([Ok(Bytes::from_static(data))]))
    }

    const LIMITS: Limits = Limits {
        timeout: Duration::from_secs(20),
        memory_bytes: 256 << 20,
    };

    #[tokio::test]
    async fn a_program_reads_stdin_and_env_and_nothing_outside_scratch_is_writable() {
        let tools = Tools::find().expect("bubblewrap is needed: apt-get install bubblewrap");
        let dir = tempfile::tempdir().unwrap();
        let host_file = dir.path().join("host-file");
        let prog = script(
            dir.path(),
            "p.sh",
            &format!(
                "#!/bin/sh\nwc -c | tr -d ' '\necho \"$TIDEGATE_KEY\"\n\
                 echo x > /tmp/ok && echo scratch-ok\n\
                 for p in /x /usr/x /etc/x /dev/shm/x {host}; do echo x > $p 2>/dev/null && echo wrote $p; done\n\
                 test -e {dir} && echo sees-host-dir\nexit 3\n",
                host = host_file.display(),
                dir = dir.path().display()
            ),
        );
        let env = vec![("TIDEGATE_KEY".to_owned(), "a/b.txt".to_owned())];
        let done = run(&tools, &prog, &env, input(b"12345"), LIMITS)
            .await
            .unwrap();
        assert_eq!(done.ending, Ending::Exited(3), "{done:?}");
        assert_eq!(
            String::from_utf8_lossy(&done.stdout),
            "5\na/b.txt\nscratch-ok\n",
            "{done:?}"
        );
        assert!(!host_file.exists());
    }

    #[tokio::test]
    async fn a_program_past_its_timeout_is_killed_with_its_children() {
        let tools = Tools::find().expect("bubblewrap is needed: apt-get install bubblewrap");
        let dir = tempfile::tempdir().unwrap();
        // Odd durations mark this test's processes in the host's process table.
        let prog = script(
            dir.path(),
            "s.sh",
            "#!/bin/sh\nsleep 987.651 &\nexec sleep 987.652\n",
        );
        let limits = Limits {
            timeout: Duration::from_millis(1500),
            ..LIMITS
        };
        let done = run(&tools, &prog, &[], input(b""), limits).await.unwrap();
        assert_eq!(done.ending, Ending::TimedOut);
        assert!(
            done.elapsed < REAP_GRACE + Duration::from_secs(2),
            "{done:?}"
        );
        let left: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains("987.65"))
            .collect();
        assert!(left.is_empty(), "still running: {left:?}");
    }
}
