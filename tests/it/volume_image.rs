//! VM images (issue 5): `volume import` of qcow2, vmdk and raw images against qemu-img writing
//! the same image over iSCSI, an ext4 image checked by e2fsck after the round trip, `volume
//! export` to raw and qcow2 after the daemon stopped with uploads pending, and the refusals:
//! a running daemon, a damaged or missing image, a tampered chunk.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::iscsi_volume::{create_volume, start, url, wait_for_target};
use crate::support::gateway::Gateway;
use crate::support::{
    error_lines, noise, run, stderr, stdout, tamper_with_the_only_chunk, tidegate, tool,
};

const MIB: usize = 1 << 20;

fn tidegate_ok(data: &Path, args: &[&str]) -> Output {
    let out = run(tidegate(data).args(args));
    assert!(out.status.success(), "tidegate {args:?}: {}", stderr(&out));
    out
}

fn import(data: &Path, image: &Path, name: &str, extra: &[&str]) -> Output {
    run(tidegate(data)
        .args(["volume", "import"])
        .arg(image)
        .args(["--name", name])
        .args(extra))
}

fn qemu_img(args: &[&str], paths: &[&Path]) {
    let out = run(Command::new(tool("qemu-img")).args(args).args(paths));
    assert!(out.status.success(), "qemu-img {args:?}: {}", stderr(&out));
}

/// Creates volume `name`, starts the daemon and writes `image` onto the LUN with qemu-img, as
/// an operator deploys an image without tidegate's help. Returns the daemon and the LUN's URL.
fn serve_written(
    data: &Path,
    name: &str,
    size: &str,
    image: &Path,
    format: &str,
) -> (Gateway, String) {
    create_volume(data, None, name, size);
    let gw = start(data, None);
    let target = url(&gw, name);
    wait_for_target(&target);
    qemu_img(
        &["convert", "-n", "-f", format, "-O", "raw"],
        &[image, Path::new(&target)],
    );
    (gw, target)
}

fn assert_contains(text: &str, needle: &str) {
    assert!(text.contains(needle), "{needle:?} not in: {text}");
}

/// `NAME.raw` holding `data` and its conversion `NAME.FORMAT`.
fn image_files(dir: &Path, name: &str, data: &[u8], format: &str) -> (PathBuf, PathBuf) {
    let raw = dir.join(format!("{name}.raw"));
    std::fs::write(&raw, data).unwrap();
    let converted = dir.join(format!("{name}.{format}"));
    qemu_img(&["convert", "-f", "raw", "-O", format], &[&raw, &converted]);
    (raw, converted)
}

/// `image_files` of `bytes` of noise.
fn noise_image(dir: &Path, name: &str, bytes: usize, format: &str) -> (PathBuf, PathBuf) {
    image_files(dir, name, &noise(bytes, bytes as u64), format)
}

/// Reads a whole LUN back through the initiator.
fn read_lun(target: &str, dir: &Path, name: &str) -> Vec<u8> {
    let back = dir.join(name);
    let out = run(Command::new(tool("qemu-img"))
        .args(["convert", "-f", "raw", "-O", "raw", target])
        .arg(&back));
    assert!(out.status.success(), "reading {target}: {}", stderr(&out));
    std::fs::read(&back).unwrap()
}

/// `lun` holds `image` followed by zeros up to its whole-MiB size.
fn assert_holds(lun: &[u8], image: &[u8], what: &str) {
    assert_eq!(lun.len(), image.len().div_ceil(MIB) * MIB, "{what}: size");
    assert!(lun[..image.len()] == image[..], "{what}: data differs");
    assert!(
        lun[image.len()..].iter().all(|&b| b == 0),
        "{what}: tail not zero"
    );
}

/// A 64 MiB ext4 file system populated from a directory of files (noise, text, a subdir).
fn ext4_image(dir: &Path) -> PathBuf {
    let src = dir.join("rootfs");
    std::fs::create_dir_all(src.join("etc/deep")).unwrap();
    std::fs::write(src.join("noise.bin"), noise(5 * MIB + 123, 7)).unwrap();
    std::fs::write(src.join("etc/motd"), "deployed by tidegate\n".repeat(1000)).unwrap();
    std::fs::write(src.join("etc/deep/small"), b"x").unwrap();
    let image = dir.join("ext4.raw");
    let out = run(Command::new(tool("mke2fs"))
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&src)
        .arg(&image)
        .arg("64M"));
    assert!(out.status.success(), "mke2fs: {}", stderr(&out));
    image
}

#[test]
fn qcow2_import_equals_qemu_img_convert_and_passes_e2fsck() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let raw_path = ext4_image(dir.path());
    let qcow2 = dir.path().join("ext4.qcow2");
    qemu_img(
        &["convert", "-f", "raw", "-O", "qcow2"],
        &[&raw_path, &qcow2],
    );

    let (gw, a) = serve_written(&data, "a", "64MiB", &qcow2, "qcow2");

    // Imported while the daemon runs: it serves the volume after its catalog sync.
    let out = import(&data, &qcow2, "b", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_contains(&stdout(&out), "(qcow2, 64 MiB) as volume b");
    // The progress summary (stderr is not a terminal here).
    assert_contains(&stderr(&out), "uploading: 64 MiB in");
    let b = url(&gw, "b");
    wait_for_target(&b);

    let raw = std::fs::read(&raw_path).unwrap();
    let lun_a = read_lun(&a, dir.path(), "a.raw");
    let lun_b = read_lun(&b, dir.path(), "b.raw");
    assert!(lun_a == lun_b, "qemu-img convert and import differ");
    assert_holds(&lun_b, &raw, "imported LUN");

    let fsck = run(Command::new(tool("e2fsck"))
        .args(["-fn"])
        .arg(dir.path().join("b.raw")));
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "e2fsck on the LUN read back: {}{}",
        stdout(&fsck),
        stderr(&fsck)
    );
    assert_eq!(gw.stop(), Some(0));
    let tmp = data.join("staging");
    assert!(
        std::fs::read_dir(&tmp).map_or(true, |mut d| d.next().is_none()),
        "temp files left in {}",
        tmp.display()
    );
}

#[test]
fn vmdk_raw_and_overlay_imports_read_back_identical() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Noise, a zero gap, noise; 5 MiB + 512 bytes, so the volume is rounded up to 6 MiB.
    let mut image = noise(2 * MIB, 21);
    image.resize(4 * MIB, 0);
    image.extend(noise(MIB + 512, 22));
    let (raw, vmdk) = image_files(dir.path(), "odd", &image, "vmdk");

    let out = import(&data, &raw, "from-raw", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_contains(
        &stdout(&out),
        "(raw, 5.0 MiB) as volume from-raw (6 MiB, 4 chunks",
    );
    let out = import(&data, &vmdk, "from-vmdk", &["--format", "vmdk"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_contains(&stdout(&out), "(vmdk, 5.0 MiB)");
    // An overlay with nothing of its own: the volume is the disk its backing file makes.
    let overlay = dir.path().join("overlay.qcow2");
    qemu_img(
        &["create", "-q", "-f", "qcow2", "-F", "raw", "-b"],
        &[&raw, &overlay],
    );
    let out = import(&data, &overlay, "from-overlay", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_contains(&stderr(&out), "is an overlay on");

    let gw = start(&data, None);
    for name in ["from-raw", "from-vmdk", "from-overlay"] {
        let target = url(&gw, name);
        wait_for_target(&target);
        assert_holds(&read_lun(&target, dir.path(), name), &image, name);
    }
    assert_eq!(gw.stop(), Some(0));
}

#[test]
fn export_round_trips_after_the_daemon_stops_and_is_refused_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut image = noise(3 * MIB, 31);
    image.resize(10 * MIB, 0);
    image.extend(b"tidegate ".iter().copied().cycle().take(6 * MIB));
    let source = dir.path().join("source.raw");
    std::fs::write(&source, &image).unwrap();

    let (gw, _) = serve_written(&data, "vol", "16MiB", &source, "raw");

    let out_raw = dir.path().join("out.raw");
    let refused = run(tidegate(&data)
        .args(["volume", "export", "vol"])
        .arg(&out_raw));
    assert_eq!(refused.status.code(), Some(1));
    let line = error_lines(&refused).join("\n");
    assert!(
        line.contains("running") && line.contains("stop it, or export a snapshot"),
        "{line}"
    );
    assert!(!out_raw.exists());

    // Stopped at once: what the daemon had not uploaded yet is in its upload buffer, and the
    // export must upload it before reading the chunk map.
    assert_eq!(gw.stop(), Some(0));
    let out = run(tidegate(&data)
        .args(["volume", "export", "vol"])
        .arg(&out_raw));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&out_raw).unwrap(), image);

    let out_qcow2 = dir.path().join("out.qcow2");
    tidegate_ok(
        &data,
        &["volume", "export", "vol", out_qcow2.to_str().unwrap()],
    );
    let out_vmdk = dir.path().join("out.img");
    tidegate_ok(
        &data,
        &[
            "volume",
            "export",
            "vol",
            out_vmdk.to_str().unwrap(),
            "--format",
            "vmdk",
        ],
    );
    for (file, format) in [(&out_qcow2, "qcow2"), (&out_vmdk, "vmdk")] {
        let compare = run(Command::new(tool("qemu-img"))
            .args(["compare", "-f", format, "-F", "raw"])
            .arg(file)
            .arg(&source));
        assert_eq!(
            compare.status.code(),
            Some(0),
            "{format}: {}{}",
            stdout(&compare),
            stderr(&compare)
        );
    }
}

#[test]
fn damaged_or_missing_images_fail_on_one_line_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (raw, qcow2) = noise_image(dir.path(), "disk", 8 * MIB, "qcow2");
    let vmdk = dir.path().join("disk.vmdk");
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk"], &[&raw, &vmdk]);
    let huge = dir.path().join("huge.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2"], &[&huge, Path::new("40T")]);
    // Cut both in half: qemu-img itself would convert them, reading the lost part as zeros.
    let truncate = |path: &Path| {
        let bytes = std::fs::read(path).unwrap();
        let cut = dir.path().join(format!(
            "cut-{}",
            path.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        cut
    };

    for (image, name, expect) in [
        (dir.path().join("missing.qcow2"), "m", "does not exist"),
        (truncate(&qcow2), "q", "damaged or truncated"),
        (truncate(&vmdk), "v", "qemu-img check"),
        (raw.clone(), "Bad Name", "volume name"),
        (huge, "huge", "a volume holds 1 MiB to 32 TiB"),
    ] {
        let out = import(&data, &image, name, &[]);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(&out));
        let lines = error_lines(&out);
        assert_eq!(lines.len(), 1, "{name}: {lines:?}");
        assert!(lines[0].contains(expect), "{name}: {}", lines[0]);
    }
    let list = tidegate_ok(&data, &["volume", "list"]);
    assert_eq!(stdout(&list).lines().count(), 1, "{}", stdout(&list));
    let tmp = data.join("staging");
    assert!(
        std::fs::read_dir(&tmp).map_or(true, |mut d| d.next().is_none()),
        "temp files left"
    );
}

#[test]
fn export_of_a_tampered_chunk_fails_naming_it_and_writes_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let raw = dir.path().join("one.raw");
    std::fs::write(&raw, noise(MIB, 51)).unwrap();
    let out = import(&data, &raw, "one", &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    let id = tamper_with_the_only_chunk(&data);

    let out_file = dir.path().join("out.raw");
    let out = run(tidegate(&data)
        .args(["volume", "export", "one"])
        .arg(&out_file));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_lines(&out).join("\n");
    assert!(
        line.contains("chunk 0 of the volume") && line.contains(&format!("chunks/{id}")),
        "{line}"
    );
    assert!(!out_file.exists(), "a file was written");
    // Recorded where `status` looks.
    let status = run(tidegate(&data).arg("status"));
    assert_eq!(status.status.code(), Some(1), "{}", stdout(&status));
    assert_contains(&stdout(&status), &format!("chunks/{id}"));
    assert!(!dir.path().join("out.raw.partial").exists());
}

/// Image temp files (`image-import-<pid>-...`) in the data dir's staging area.
fn image_temp_files(data: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data.join("staging"))
        .map(|d| {
            d.map(|e| e.unwrap().path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("image-")
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_killed_import_leaves_no_volume_and_the_next_one_clears_its_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Big enough that converting and uploading take seconds, so the kill lands mid-way.
    let (_, qcow2) = noise_image(dir.path(), "big", 192 * MIB, "qcow2");

    let mut child = tidegate(&data)
        .args(["volume", "import"])
        .arg(&qcow2)
        .args(["--name", "big"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while image_temp_files(&data).is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the import ended before it could be interrupted"
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(60));
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let list = tidegate_ok(&data, &["volume", "list"]);
    assert_eq!(stdout(&list).lines().count(), 1, "{}", stdout(&list));
    assert_eq!(image_temp_files(&data).len(), 1, "the killed import's file");

    let (_, small) = noise_image(dir.path(), "small", MIB, "qcow2");
    let out = import(&data, &small, "small", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(image_temp_files(&data).is_empty(), "orphan left");
}

/// A boot sector (16-bit real mode, loaded at 0x7c00) that writes `BOOT_MESSAGE` to the first
/// serial port and then powers QEMU off through its `isa-debug-exit` device at port 0xf4.
const BOOT_CODE: [u8; 26] = [
    0xfa, // cli
    0x31, 0xc0, // xor ax, ax
    0x8e, 0xd8, // mov ds, ax
    0xbe, 0x1a, 0x7c, // mov si, 0x7c1a (the message, right after this code)
    0xba, 0xf8, 0x03, // mov dx, 0x3f8 (COM1)
    0xac, // next: lodsb
    0x84, 0xc0, // test al, al
    0x74, 0x03, // jz done
    0xee, // out dx, al
    0xeb, 0xf8, // jmp next
    0xb0, 0x10, // done: mov al, 0x10
    0xe6, 0xf4, // out 0xf4, al (QEMU exits with status 0x10 << 1 | 1)
    0xf4, // hlt
    0xeb, 0xfd, // jmp hlt
];
const BOOT_MESSAGE: &[u8] = b"tidegate boot ok\r\n\0";
/// QEMU's exit status for the value the boot sector writes to isa-debug-exit.
const BOOT_EXIT_STATUS: i32 = (0x10 << 1) | 1;

#[test]
fn a_vm_boots_from_an_imported_lun() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut disk = [&BOOT_CODE[..], BOOT_MESSAGE].concat();
    disk.resize(510, 0);
    disk.extend([0x55, 0xaa]);
    disk.resize(4 * MIB, 0);
    let (_, qcow2) = image_files(dir.path(), "boot", &disk, "qcow2");
    let out = import(&data, &qcow2, "vm1", &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    let gw = start(&data, None);
    let target = url(&gw, "vm1");
    wait_for_target(&target);
    // As docs/operations.md shows, with TCG instead of KVM and the serial port to a file.
    let serial = dir.path().join("serial.txt");
    let mut vm = Command::new(tool("qemu-system-x86_64"))
        .args(["-machine", "q35,accel=tcg", "-m", "64", "-display", "none"])
        .args(["-nic", "none", "-no-reboot", "-serial"])
        .arg(format!("file:{}", serial.display()))
        .args([
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-drive",
        ])
        .arg(format!("file={target},format=raw,if=virtio,cache=none"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = vm.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > std::time::Duration::from_secs(120) {
            vm.kill().unwrap();
            panic!(
                "the VM did not power off; serial: {:?}",
                std::fs::read_to_string(&serial).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut qemu_err = String::new();
    std::io::Read::read_to_string(&mut vm.stderr.take().unwrap(), &mut qemu_err).unwrap();
    assert_eq!(status.code(), Some(BOOT_EXIT_STATUS), "qemu: {qemu_err}");
    assert_contains(
        &std::fs::read_to_string(&serial).unwrap(),
        "tidegate boot ok",
    );
    assert_eq!(gw.stop(), Some(0));
}
