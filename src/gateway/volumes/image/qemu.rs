//! `qemu-img` as a subprocess, for the image formats tidegate does not read itself: probing
//! (format, virtual size), metadata checks and conversion to or from raw, with its progress.
//!
//! Owns the command lines and the reading of qemu-img's output; never touches volumes. A missing
//! qemu-img is `ImageError::NoQemuImg`, one line saying what to install.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{ImageError, ImageFormat, Progress};

const QEMU_IMG: &str = "qemu-img";

/// What `qemu-img info` says about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: String,
    pub virtual_size: u64,
    /// An overlay's backing file, which qemu-img follows when reading the image.
    pub backing_file: Option<String>,
}

fn spawn_error(what: String) -> impl FnOnce(std::io::Error) -> ImageError {
    move |e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ImageError::NoQemuImg { what }
        } else {
            ImageError::Io {
                path: PathBuf::from(QEMU_IMG),
                source: e,
            }
        }
    }
}

/// qemu-img's own last words, without its name in front: the line an operator needs.
fn last_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let line = text
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("no message");
    line.strip_prefix("qemu-img: ").unwrap_or(line).to_owned()
}

/// Fails with `NoQemuImg` naming `what` when qemu-img is not installed.
pub fn version(what: &str) -> Result<(), ImageError> {
    Command::new(QEMU_IMG)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(spawn_error(what.to_owned()))?;
    Ok(())
}

/// Probes `image` (as `format`, or detecting it).
pub fn info(image: &Path, format: Option<ImageFormat>) -> Result<ImageInfo, ImageError> {
    let mut cmd = Command::new(QEMU_IMG);
    cmd.args(["info", "--output=json"]);
    if let Some(f) = format {
        cmd.args(["-f", f.as_str()]);
    }
    let out = cmd.arg(image).output().map_err(spawn_error(format!(
        "reading {} as {}",
        image.display(),
        format.map_or("anything but raw", ImageFormat::as_str)
    )))?;
    let failed = |detail: String| ImageError::Qemu {
        op: "info",
        image: image.to_path_buf(),
        detail,
    };
    if !out.status.success() {
        return Err(failed(last_line(&out.stderr)));
    }
    parse_info(&out.stdout).ok_or_else(|| failed("unexpected output".into()))
}

/// The image's own format and size: the top-level keys (its children, e.g. the file holding it,
/// carry the same keys).
fn parse_info(json: &[u8]) -> Option<ImageInfo> {
    let value: serde_json::Value = serde_json::from_slice(json).ok()?;
    Some(ImageInfo {
        format: value.get("format")?.as_str()?.to_owned(),
        virtual_size: value.get("virtual-size")?.as_u64()?,
        backing_file: value
            .get("backing-filename")
            .and_then(|b| b.as_str())
            .map(str::to_owned),
    })
}

/// Checks the image's metadata. A truncated qcow2 or vmdk still converts without an error (what
/// is missing reads as zeros), so this is what tells a damaged image from a good one. Leaked
/// clusters are harmless to a reader; formats without a check pass.
pub fn check(image: &Path, format: &str) -> Result<(), ImageError> {
    let out = Command::new(QEMU_IMG)
        .args(["check", "--output=json", "-f", format])
        .arg(image)
        .output()
        .map_err(spawn_error(format!(
            "checking {} ({format})",
            image.display()
        )))?;
    // qemu-img(1): 0 no errors, 1 check incomplete, 2 corruption, 3 leaks only, 63 unsupported.
    match out.status.code() {
        Some(0 | 3 | 63) => Ok(()),
        code => Err(ImageError::Qemu {
            op: "check",
            image: image.to_path_buf(),
            detail: format!(
                "the {format} image is damaged or truncated ({}; `qemu-img check` lists all)",
                if code == Some(2) {
                    "corrupt metadata".to_owned()
                } else {
                    last_line(&out.stderr)
                }
            ),
        }),
    }
}

/// Converts `src` (`src_format`) into a new file `dst` (`dst_format`; raw output is sparse),
/// reporting qemu-img's progress as bytes of `total_bytes`.
pub fn convert(
    src: &Path,
    src_format: &str,
    dst: &Path,
    dst_format: &str,
    total_bytes: u64,
    progress: &mut dyn Progress,
) -> Result<(), ImageError> {
    let mut child = Command::new(QEMU_IMG)
        .args(["convert", "-p", "-f", src_format, "-O", dst_format])
        .arg(src)
        .arg(dst)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error(format!(
            "converting {} from {src_format} to {dst_format}",
            src.display()
        )))?;
    let io = |source| ImageError::Io {
        path: PathBuf::from(QEMU_IMG),
        source,
    };
    // Drained on its own thread so a chatty stderr can never block the child.
    let mut stderr = child.stderr.take();
    let errors = std::thread::spawn(move || {
        let mut text = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut text);
        }
        text
    });
    if let Some(mut stdout) = child.stdout.take() {
        let mut reported = 0u64;
        let mut pending = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            let n = stdout.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            pending.extend_from_slice(&buf[..n]);
            // `-p` redraws "    (12.34/100%)" ending in '\r'.
            while let Some(end) = pending.iter().position(|&b| b == b'\r' || b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Some(pct) = parse_percent(&line) {
                    let done = (total_bytes as f64 * pct / 100.0) as u64;
                    if done > reported {
                        progress.advance(done - reported);
                        reported = done;
                    }
                }
            }
        }
        if total_bytes > reported {
            progress.advance(total_bytes - reported);
        }
    }
    let status = child.wait().map_err(io)?;
    let stderr = errors.join().unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        let _ = std::fs::remove_file(dst);
        Err(ImageError::Qemu {
            op: "convert",
            image: src.to_path_buf(),
            detail: last_line(&stderr),
        })
    }
}

/// "    (12.34/100%)" → 12.34.
fn parse_percent(line: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(line).ok()?.trim();
    let inner = text.strip_prefix('(')?.strip_suffix("/100%)")?;
    inner.parse().ok()
}

/// The format an image's first bytes announce, when qemu-img is not there to ask; None for
/// anything else, which is read as raw.
pub fn sniff(image: &Path) -> Result<Option<&'static str>, ImageError> {
    let mut head = Vec::with_capacity(64);
    std::fs::File::open(image)
        .and_then(|f| f.take(64).read_to_end(&mut head))
        .map_err(|source| ImageError::Io {
            path: image.to_path_buf(),
            source,
        })?;
    const MAGIC: [(&[u8], &str); 6] = [
        (b"QFI\xfb", "qcow2"),
        (b"KDMV", "vmdk"),
        (b"# Disk DescriptorFile", "vmdk"),
        (b"conectix", "vpc"),
        (b"vhdxfile", "vhdx"),
        (b"<<< ", "vdi"),
    ];
    Ok(MAGIC
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map(|(_, format)| *format))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_reads_the_top_level_keys_not_the_childrens() {
        let json = br#"{"children": [{"name": "file", "info": {"virtual-size": 9,
            "format": "file"}}], "virtual-size": 52428800, "format": "qcow2"}"#;
        assert_eq!(
            parse_info(json),
            Some(ImageInfo {
                format: "qcow2".into(),
                virtual_size: 52428800,
                backing_file: None,
            })
        );
        let overlay = br#"{"virtual-size": 1048576, "format": "qcow2",
            "backing-filename": "base.qcow2"}"#;
        assert_eq!(
            parse_info(overlay).and_then(|i| i.backing_file),
            Some("base.qcow2".into())
        );
        assert_eq!(parse_info(b"{}"), None);
        assert_eq!(parse_info(b"not json"), None);
    }

    #[test]
    fn progress_lines_parse() {
        for (line, pct) in [
            (&b"    (0.00/100%)\r"[..], Some(0.0)),
            (b"    (12.34/100%)\r", Some(12.34)),
            (b"    (100.00/100%)\n", Some(100.0)),
            (b"\r", None),
            (b"qemu-img: error\n", None),
        ] {
            assert_eq!(parse_percent(line), pct);
        }
    }

    #[test]
    fn last_line_drops_the_program_name() {
        assert_eq!(
            last_line(b"warning\nqemu-img: Could not open 'x': No such file\n\n"),
            "Could not open 'x': No such file"
        );
        assert_eq!(last_line(b""), "no message");
    }
}
