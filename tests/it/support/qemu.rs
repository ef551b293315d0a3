//! A QEMU virtual machine for tests (TCG: this machine has no usable /dev/kvm): its serial port
//! goes to a file the test waits on, its QMP socket asks for an ACPI power-down, and it is
//! killed on drop.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::tool;

/// UEFI firmware from Debian's `ovmf`: code (read-only) and a template for the variable store.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

pub struct Vm {
    child: Child,
    serial: PathBuf,
    qmp: PathBuf,
    started: Instant,
}

impl Vm {
    /// Starts `qemu-system-x86_64` (q35, TCG, no display) with `args` added; the serial port
    /// and the QMP socket live in `dir`.
    pub fn start(dir: &Path, args: &[String]) -> Vm {
        let serial = dir.join("serial.log");
        let qmp = dir.join("qmp.sock");
        let child = Command::new(tool("qemu-system-x86_64"))
            .args([
                "-machine",
                "q35,accel=tcg",
                "-display",
                "none",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting qemu-system-x86_64");
        Vm {
            child,
            serial,
            qmp,
            started: Instant::now(),
        }
    }

    /// Adds an EFI firmware pair to `args`: OVMF's code read-only, and a private copy of its
    /// variable store in `dir` (the firmware writes boot entries there).
    pub fn uefi_args(dir: &Path) -> Vec<String> {
        for f in [OVMF_CODE, OVMF_VARS] {
            assert!(
                Path::new(f).is_file(),
                "{f} is missing: run ./scripts/test, which installs Debian's ovmf"
            );
        }
        let vars = dir.join("OVMF_VARS.fd");
        std::fs::copy(OVMF_VARS, &vars).expect("copying the OVMF variable store");
        vec![
            "-drive".into(),
            format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
        ]
    }

    /// The serial log so far. Firmware and GRUB write terminal control bytes that are not
    /// UTF-8, so it is read lossily.
    pub fn serial(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until a serial line contains `good` and returns that line; panics with the serial
    /// log's tail if a line contains one of `bad` first, QEMU exits, or `limit` passes.
    pub fn wait_for_line(&mut self, good: &str, bad: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.serial();
            for line in log.lines() {
                if line.contains(good) {
                    return line.to_owned();
                }
                if let Some(b) = bad.iter().find(|b| line.contains(**b)) {
                    panic!("serial console says {b:?}: {line}\n{}", tail(&log));
                }
            }
            if let Some(status) = self.child.try_wait().expect("polling qemu") {
                panic!(
                    "qemu exited ({status}) before {good:?}: {}\n{}",
                    self.stderr(),
                    tail(&log)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "no {good:?} on the serial console within {limit:?}\n{}",
                    tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Asks the guest to shut down (ACPI power button, through QMP) and waits for QEMU to exit.
    pub fn power_down(&mut self, limit: Duration) -> ExitStatus {
        qmp(&self.qmp, "system_powerdown");
        self.wait_exit(limit)
    }

    /// Waits for QEMU to exit (the guest powered off); panics with the serial log's tail after
    /// `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling qemu") {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "the guest did not power off within {limit:?}\n{}",
                    tail(&self.serial())
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut text);
        }
        text
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One QMP command without arguments, after the capabilities handshake (QMP spec: the server
/// greets, the client must send `qmp_capabilities` before anything else).
fn qmp(socket: &Path, command: &str) {
    let stream = UnixStream::connect(socket).expect("connecting to QEMU's QMP socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line).expect("QMP greeting");
    for c in ["qmp_capabilities", command] {
        writeln!(writer, "{{\"execute\": \"{c}\"}}").unwrap();
        loop {
            line.clear();
            reader.read_line(&mut line).expect("QMP reply");
            if line.contains("\"return\"") {
                break;
            }
            assert!(!line.contains("\"error\""), "QMP {c}: {line}");
        }
    }
}

/// The last lines of a serial log, for failure messages.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let from = lines.len().saturating_sub(60);
    format!(
        "--- serial (last 60 lines) ---\n{}",
        lines[from..].join("\n")
    )
}
