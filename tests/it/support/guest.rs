//! A Debian guest for driving tidegate with the kernel's own clients and the tools users run:
//! a `debootstrap` root with a fixed package list, packed as an initramfs, and the kernel of
//! `linux-image-amd64` (guest/build.sh). Built once per change of the package list or the
//! recipe, cached under the target directory. Each boot appends the test's script to the
//! initramfs as a second cpio archive (the kernel unpacks concatenated archives in order); the
//! guest's /init runs it with its output on the serial console and powers off.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::qemu::Vm;
use super::tool;

/// What the tape tests need inside: the iSCSI initiator, the changer and drive tools, tar (in
/// minbase already), Bacula's storage daemon with btape and mtx-changer; iproute2 and kmod to
/// bring up the network and load the drivers.
pub const TAPE_PACKAGES: &str = "open-iscsi,mtx,mt-st,tar,bacula-sd,iproute2,kmod";
/// The kernel modules the guest keeps (with their dependencies): the network, the iSCSI
/// initiator (and the crc32c it asks the crypto API for at login), and the SCSI generic, tape and changer drivers.
pub const TAPE_MODULES: &str =
    "virtio_pci virtio_net scsi_transport_iscsi iscsi_tcp crc32c_generic sg st ch";

/// What the NFS client tests need inside: mount.nfs (nfs-common) and /etc/protocols (netbase;
/// without it mount.nfs cannot name `tcp` and fails with "Protocol not supported"); iproute2
/// and kmod to bring up the network and load the client. In a file of its own because
/// benches/nfs4.sh builds the same guest plus fio.
pub const NFS_PACKAGES: &str = include_str!("../guest/nfs.packages");
/// The kernel's NFS client, v3 and v4 (nfsv4 needs dns_resolver, which modprobe does not find
/// as a dependency on its own), and the network (a file of its own, as NFS_PACKAGES).
pub const NFS_MODULES: &str = include_str!("../guest/nfs.modules");

const BUILD: &str = include_str!("../guest/build.sh");
const INIT: &str = include_str!("../guest/init.sh");
/// The `step` helper the test scripts source (markers the host reads with `section` and `rc`).
const STEPS: &str = include_str!("../guest/steps.sh");

pub struct Image {
    pub kernel: PathBuf,
    pub root: PathBuf,
}

/// The tape-client guest, built (or found in the cache) once per test run.
pub fn tape_client() -> &'static Image {
    static BUILT: OnceLock<Image> = OnceLock::new();
    BUILT.get_or_init(|| build("tape", TAPE_PACKAGES, TAPE_MODULES))
}

/// The NFS-client guest (the kernel's NFS client and mount.nfs), built once per test run.
pub fn nfs_client() -> &'static Image {
    static BUILT: OnceLock<Image> = OnceLock::new();
    BUILT.get_or_init(|| build("nfs", NFS_PACKAGES, NFS_MODULES))
}

/// Builds the guest `kind` (each kind keeps its own cache directory, so building one never
/// evicts another).
fn build(kind: &str, packages: &str, modules: &str) -> Image {
    // The lists kept in files end with a newline; the cache key is of the lists themselves.
    let (packages, modules) = (packages.trim(), modules.trim());
    for t in ["debootstrap", "dpkg-deb", "cpio", "apt-get"] {
        tool(t);
    }
    let mut hasher = blake3::Hasher::new();
    for part in [packages, modules, BUILD, INIT] {
        hasher.update(part.as_bytes());
        hasher.update(b"\0");
    }
    let key = &hasher.finalize().to_hex()[..16];
    // target/<profile>/tidegate: the guest cache sits beside the profiles.
    let cache = Path::new(super::bin())
        .parent()
        .and_then(Path::parent)
        .expect("the binary is under target/<profile>")
        .join("guest")
        .join(kind);
    let out = cache.join(key);
    let image = Image {
        kernel: out.join("vmlinuz"),
        root: out.join("root.cpio"),
    };
    if image.kernel.is_file() && image.root.is_file() {
        return image;
    }
    std::fs::create_dir_all(&cache).unwrap();
    // Older builds are dead weight (a few hundred MiB each).
    for entry in std::fs::read_dir(&cache).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n != key) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
    let scripts = cache.join(format!("{key}.scripts"));
    std::fs::create_dir_all(&scripts).unwrap();
    std::fs::write(scripts.join("build.sh"), BUILD).unwrap();
    std::fs::write(scripts.join("init.sh"), INIT).unwrap();
    let started = Instant::now();
    let run = Command::new(tool("bash"))
        .arg(scripts.join("build.sh"))
        .arg(&out)
        .env("PACKAGES", packages)
        .env("MODULES", modules)
        .env("INIT", scripts.join("init.sh"))
        .output()
        .expect("running guest/build.sh");
    assert!(
        run.status.success(),
        "guest/build.sh failed (it needs root, debootstrap and Debian's mirror):\n{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let _ = std::fs::remove_dir_all(&scripts);
    eprintln!(
        "built the guest ({} MiB root) in {:.0?}",
        std::fs::metadata(&image.root).unwrap().len() >> 20,
        started.elapsed()
    );
    image
}

/// Boots `image` with `script` as /test.sh and user-mode networking (the host's loopback is
/// 10.0.2.2 inside); the serial log and the initramfs live in `dir`.
pub fn boot(dir: &Path, image: &Image, script: &str) -> Vm {
    let initrd = dir.join("initrd.cpio");
    std::fs::copy(&image.root, &initrd).expect("copying the guest's root");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&initrd)
        .unwrap();
    let files = [
        ("test.sh", 0o100755, script.as_bytes()),
        ("steps.sh", 0o100644, STEPS.as_bytes()),
    ];
    std::io::Write::write_all(&mut f, &newc(&files)).unwrap();
    let args: Vec<String> = [
        "-m",
        "2048",
        "-smp",
        "2",
        "-kernel",
        &image.kernel.to_string_lossy(),
        "-initrd",
        &initrd.to_string_lossy(),
        "-append",
        "console=ttyS0 rdinit=/init panic=-1 loglevel=4",
        "-netdev",
        "user,id=net0",
        "-device",
        "virtio-net-pci,netdev=net0",
    ]
    .map(String::from)
    .to_vec();
    Vm::start(dir, &args)
}

/// Waits for the guest's script to finish (init prints `GUEST: power off`), then for QEMU to
/// exit; returns the serial log.
pub fn run_to_end(vm: &mut Vm, limit: Duration) -> String {
    vm.wait_for_line("GUEST: power off", &["Kernel panic"], limit);
    vm.wait_exit(Duration::from_secs(60));
    vm.serial()
}

/// A cpio archive in the "newc" format the kernel's initramfs unpacker reads: for each file an
/// ASCII-hex header, its name and its data, each padded to 4 bytes; a TRAILER!!! entry ends it.
fn newc(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut entry = |ino: usize, name: &str, mode: u32, data: &[u8]| {
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    };
    for (i, (name, mode, data)) in files.iter().enumerate() {
        entry(i + 1, name, *mode, data);
    }
    entry(0, "TRAILER!!!", 0, &[]);
    out
}

/// The lines between `== BEGIN name` and `== END name` of a serial log.
pub fn section<'a>(log: &'a str, name: &str) -> Vec<&'a str> {
    let begin = format!("== BEGIN {name}");
    let end = format!("== END {name}");
    log.lines()
        .map(|l| l.trim_end_matches('\r'))
        .skip_while(|l| *l != begin)
        .skip(1)
        .take_while(|l| *l != end)
        .collect()
}

/// The exit status the guest reported for step `name` (`== RC name N`), if it ran.
pub fn rc(log: &str, name: &str) -> Option<i32> {
    let prefix = format!("== RC {name} ");
    log.lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}
