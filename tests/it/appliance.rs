//! The appliance image (issue 9): `appliance/build` makes it from Debian's packages, QEMU (TCG)
//! boots it from its own disk through UEFI firmware (no `-kernel`), first boot activates it from
//! a seed disk, and the host reaches it only through QEMU's user-mode port forwarding: the
//! management API with the token first boot provisioned, an NFS share with libnfs's clients and
//! a volume with libiscsi's.
//!
//! The image is cached under the target directory, keyed by a hash of everything that goes into
//! it, so a second run with the same binary and recipe only boots. The gateway inside uses its
//! local-directory bucket (no bucket in the seed): what is under test is the appliance, not S3.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::qemu::Vm;
use crate::support::{free_port, tool};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const GATEWAY: &str = "appliance-test";

#[test]
fn appliance_image_boots_activates_from_a_seed_and_serves_through_port_forwarding() {
    let image = built_image();
    let dir = tempfile::tempdir().unwrap();

    // First boot writes to its disk: boot an overlay, so the cached image stays as built.
    let disk = dir.path().join("disk.qcow2");
    run(Command::new(tool("qemu-img"))
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&image)
        .arg(&disk));
    let token = tidegate::store::master::random_hex::<16>().unwrap();
    let seed = seed_disk(
        dir.path(),
        &format!(
            "# the appliance test's seed\nNAME={GATEWAY}\nHOSTNAME=tg-test\nAPI_TOKEN=\"{token}\"\n\
             CACHE_SIZE=512MiB\nUPLOAD_BUFFER_SIZE=512MiB\nSHARE=share\nSHARE_SQUASH=none\n"
        ),
    );

    let (api, nfs, iscsi) = (free_port(), free_port(), free_port());
    let mut args = Vm::uefi_args(dir.path());
    args.extend(
        [
            "-m",
            "1024",
            "-smp",
            "2",
            "-drive",
            &format!("file={},if=virtio,format=qcow2", disk.display()),
            "-drive",
            &format!("file={},if=virtio,format=raw,readonly=on", seed.display()),
            "-netdev",
            &format!(
                "user,id=net0,hostfwd=tcp:127.0.0.1:{api}-:8733,\
                 hostfwd=tcp:127.0.0.1:{nfs}-:2049,hostfwd=tcp:127.0.0.1:{iscsi}-:3260"
            ),
            "-device",
            "virtio-net-pci,netdev=net0",
        ]
        .map(String::from),
    );
    let mut vm = Vm::start(dir.path(), &args);

    // tidegate-banner.service is ordered after tidegate.service (Type=notify), so its line
    // comes once systemd has the daemon's READY=1, and says what `systemctl is-active` says.
    let line = vm.wait_for_line(
        "tidegate.service is active",
        &[
            "tidegate.service is failed",
            "tidegate.service is inactive",
            "tidegate.service is activating",
            "tidegate-firstboot: FAILED",
            "Kernel panic",
        ],
        Duration::from_secs(720),
    );
    eprintln!("ready after {:.0?}: {line}", vm.elapsed());
    let serial = vm.serial();
    assert!(
        serial.contains(&format!("gateway {GATEWAY} activated")),
        "first boot did not activate from the seed\n{}",
        crate::support::qemu::tail(&serial)
    );
    // The seed's host name is the one the serial console's login prompt shows.
    vm.wait_for_line("tg-test login:", &[], Duration::from_secs(120));

    // The management API, through the forwarded port, with the seeded token only.
    let base = format!("http://127.0.0.1:{api}");
    let (code, body) = curl(&[&format!("{base}/api/v1/status")]);
    assert_eq!(code, 401, "no token: {body}");
    let auth = format!("Authorization: Bearer {token}");
    let (code, body) = curl(&["-H", &auth, &format!("{base}/api/v1/status")]);
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["healthy"], true, "{body}");
    let (code, body) = curl(&["-H", &auth, &format!("{base}/api/v1/shares")]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"share\""), "the seeded share: {body}");

    // NFS: a file written into the seeded share and read back, and listed.
    let payload = crate::support::noise(3 * 1024 * 1024 + 17, 9);
    let local = dir.path().join("payload.bin");
    std::fs::write(&local, &payload).unwrap();
    let url = |path: &str| format!("nfs://127.0.0.1/share/{path}?nfsport={nfs}&mountport={nfs}");
    run(Command::new(tool("nfs-cp"))
        .arg(&local)
        .arg(url("payload.bin")));
    let back = dir.path().join("back.bin");
    run(Command::new(tool("nfs-cp"))
        .arg(url("payload.bin"))
        .arg(&back));
    assert!(
        std::fs::read(&back).unwrap() == payload,
        "NFS read-back differs"
    );
    let listing = run(Command::new(tool("nfs-ls")).arg(url("")));
    assert!(listing.contains("payload.bin"), "{listing}");

    // iSCSI: a volume created through the API answers INQUIRY and READ CAPACITY at the
    // forwarded portal.
    let (code, body) = curl(&[
        "-H",
        &auth,
        "-X",
        "POST",
        "-d",
        r#"{"name": "vol1", "size": "64MiB"}"#,
        &format!("{base}/api/v1/volumes"),
    ]);
    assert!(code == 200 || code == 201, "{code} {body}");
    let lun = format!("iscsi://127.0.0.1:{iscsi}/iqn.2026-11.org.tidegate:{GATEWAY}.vol1/0");
    let inquiry = retry(|| run_ok(Command::new(tool("iscsi-inq")).arg(&lun)));
    assert!(inquiry.to_lowercase().contains("tidegate"), "{inquiry}");
    let capacity = run(Command::new(tool("iscsi-readcapacity16")).arg(&lun));
    assert!(
        capacity.contains(&(64 * 1024 * 1024 / 512).to_string())
            || capacity.contains(&(64 * 1024 * 1024).to_string()),
        "{capacity}"
    );

    // A clean power-off: systemd stops the gateway (SIGTERM, flush) and the guest halts.
    let status = vm.power_down(Duration::from_secs(240));
    assert!(status.success(), "qemu: {status}");
    let serial = vm.serial();
    assert!(
        serial.contains("tidegate.service: Deactivated successfully"),
        "the gateway did not stop cleanly\n{}",
        crate::support::qemu::tail(&serial)
    );
}

/// The image for the current binary and recipe, built once per change.
fn built_image() -> PathBuf {
    let binary = Path::new(crate::support::bin());
    // target/<profile>/tidegate: the image cache sits beside the profiles.
    let cache = binary.parent().unwrap().parent().unwrap().join("appliance");
    std::fs::create_dir_all(&cache).unwrap();
    let image = cache.join(format!("tidegate-{}.qcow2", inputs_hash(binary)));
    if image.is_file() {
        return image;
    }
    for entry in std::fs::read_dir(&cache).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("tidegate-") && name.ends_with(".qcow2") {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let started = Instant::now();
    let out = Command::new(Path::new(REPO).join("appliance/build"))
        .arg("--binary")
        .arg(binary)
        .arg("--out")
        .arg(&image)
        .arg("--cache-dir")
        .arg(&cache)
        .output()
        .expect("running appliance/build");
    assert!(
        out.status.success(),
        "appliance/build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "built {} ({} MiB) in {:.0?}",
        image.display(),
        std::fs::metadata(&image).unwrap().len() >> 20,
        started.elapsed()
    );
    image
}

/// A hash of everything the image is made of: the binary, the unit, the recipe (its README
/// aside) and the documents copied into it.
fn inputs_hash(binary: &Path) -> String {
    let mut files = vec![
        binary.to_path_buf(),
        Path::new(REPO).join("systemd/tidegate.service"),
    ];
    for doc in ["operations.md", "install.md", "shares.md", "nfs-clients.md"] {
        files.push(Path::new(REPO).join("docs").join(doc));
    }
    let mut recipe = Vec::new();
    collect(&Path::new(REPO).join("appliance"), &mut recipe);
    recipe.sort();
    files.extend(recipe);
    let mut hasher = blake3::Hasher::new();
    for f in files {
        hasher.update(f.to_string_lossy().as_bytes());
        hasher.update(&std::fs::read(&f).unwrap());
    }
    hasher.finalize().to_hex()[..16].to_owned()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_none_or(|e| e != "md") {
            out.push(path);
        }
    }
}

/// A small FAT disk labelled TIDEGATE holding `tidegate-seed.conf`, made without mounting.
fn seed_disk(dir: &Path, conf: &str) -> PathBuf {
    let file = dir.join("tidegate-seed.conf");
    std::fs::write(&file, conf).unwrap();
    let image = dir.join("seed.img");
    run(Command::new(tool("mkfs.vfat"))
        .args(["-n", "TIDEGATE", "-C"])
        .arg(&image)
        .arg("1440"));
    run(Command::new(tool("mcopy"))
        .arg("-i")
        .arg(&image)
        .arg(&file)
        .arg("::/tidegate-seed.conf"));
    image
}

/// `curl` with its status code: (code, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = run(Command::new(tool("curl"))
        .args(["-sS", "--max-time", "60", "-w", "\n%{http_code}"])
        .args(args));
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    (code.parse().unwrap(), body.to_owned())
}

fn run(cmd: &mut Command) -> String {
    run_ok(cmd).unwrap_or_else(|e| panic!("{e}"))
}

fn run_ok(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The daemon serves a new volume within a second of its creation; allow a TCG guest longer.
fn retry(mut f: impl FnMut() -> Result<String, String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}
