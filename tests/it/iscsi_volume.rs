//! Cached volumes over iSCSI with real initiators: libiscsi's conformance suite against tgt as a
//! reference, qemu-img/qemu-io moving images and patterns, crashes, bucket outages and a dropped
//! cache.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::garage::Garage;
use crate::support::gateway::Gateway;
use crate::support::tgt::Tgt;
use crate::support::{
    activate_on, activate_with_dir_bucket, cunit, noise, run, stderr, stdout,
    tamper_with_the_only_chunk, tidegate, tool,
};

pub(crate) const MIB: u64 = 1 << 20;

pub(crate) fn create_volume(data_dir: &Path, config: Option<&Path>, name: &str, size: &str) {
    let mut cmd = tidegate(data_dir);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let out = run(cmd.args(["volume", "create", "--name", name, "--size", size]));
    assert!(out.status.success(), "{}", stderr(&out));
}

pub(crate) fn start(data_dir: &Path, config: Option<&Path>) -> Gateway {
    Gateway::start_with(data_dir, config, &["--iscsi-listen", "127.0.0.1:0"]).unwrap()
}

pub(crate) fn url(gw: &Gateway, volume: &str) -> String {
    let portal = gw
        .ready_value("iscsi")
        .expect("iscsi portal in run/ready.toml");
    format!("iscsi://{portal}/iqn.2026-11.org.tidegate:tidegate.{volume}/0")
}

/// Waits (bounded) until the volume's target answers: the daemon picks new volumes up by
/// watching the catalog.
pub(crate) fn wait_for_target(url: &str) {
    let start = Instant::now();
    loop {
        let out = Command::new(tool("iscsi-inq")).arg(url).output().unwrap();
        if out.status.success() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{url} never answered: {}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn qemu_io(url: &str, commands: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(tool("qemu-io"));
    cmd.args(["-f", "raw"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    cmd.arg(url).output().unwrap()
}

/// qemu-io prints "Pattern verification failed" (and still exits 0) on a mismatch.
pub(crate) fn assert_pattern(url: &str, pattern: u8, offset: u64, len: u64) {
    let out = qemu_io(url, &[&format!("read -P 0x{pattern:02x} {offset} {len}")]);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        out.status.success() && !text.contains("failed") && !text.contains("error"),
        "pattern 0x{pattern:02x} at {offset}+{len}: {text}"
    );
}

/// Waits until a status written after this call reports nothing dirty (the file is rewritten
/// every second, so an older one may predate the writes being waited for).
pub(crate) fn wait_drained(gw: &Gateway, limit: Duration) {
    let called = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let start = Instant::now();
    loop {
        let fresh = gw.status_value("updated_unix").is_some_and(|t| t > called);
        if fresh && gw.status_value("cache.dirty_bytes") == Some(0) {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "upload did not drain: dirty_bytes = {:?}",
            gw.status_value("cache.dirty_bytes")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// With the daemon stopped after a drain, removes the cache and the upload buffer: everything in
/// them is in the bucket, so reads afterwards can only be served from the bucket.
pub(crate) fn drop_local_copies(data: &Path) {
    std::fs::remove_dir_all(data.join("cache")).unwrap();
    std::fs::remove_dir_all(data.join("upload-buffer")).unwrap();
}

#[test]
fn conformance_no_regressions_against_tgt() {
    let dir = tempfile::tempdir().unwrap();
    let size = 256 * MIB;
    let tgt = Tgt::start(size);
    let data = dir.path().join("data");
    create_volume(&data, None, "conformance", "256MiB");
    let gw = start(&data, None);
    let ours = url(&gw, "conformance");
    wait_for_target(&ours);

    let mut regressions = Vec::new();
    let mut remaining = Vec::new();
    for family in ["SCSI", "iSCSI"] {
        let reference = cunit::run(
            family,
            &tgt.url(),
            &dir.path().join(format!("tgt-{family}")),
        );
        let tidegate = cunit::run(
            family,
            &ours,
            &dir.path().join(format!("tidegate-{family}")),
        );
        assert!(!tidegate.is_empty(), "{family}: no results from tidegate");
        for (test, &passed) in &tidegate {
            if !passed {
                let tgt_passed = reference.get(test).copied().unwrap_or(false);
                remaining.push(format!(
                    "{family}.{test} (tgt: {})",
                    if tgt_passed { "pass" } else { "fail" }
                ));
                if tgt_passed {
                    regressions.push(format!("{family}.{test}"));
                }
            }
        }
        for (test, &passed) in &reference {
            if passed && !tidegate.contains_key(test) {
                regressions.push(format!("{family}.{test} (did not run on tidegate)"));
            }
        }
        let passed = tidegate.values().filter(|p| **p).count();
        let tgt_passed = reference.values().filter(|p| **p).count();
        eprintln!(
            "{family}: tidegate {passed}/{} passed, tgt {tgt_passed}/{}",
            tidegate.len(),
            reference.len()
        );
    }
    eprintln!("tests tidegate fails:\n  {}", remaining.join("\n  "));
    assert!(
        regressions.is_empty(),
        "tests tgt passes and tidegate fails:\n  {}",
        regressions.join("\n  ")
    );
}

#[test]
fn qemu_img_round_trip_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // 64 MiB: noise, a zero gap, noise again, a compressible tail.
    let mut raw = noise(24 * MIB as usize, 11);
    raw.resize(40 * MIB as usize, 0);
    raw.extend(noise(16 * MIB as usize, 12));
    raw.extend(b"tidegate ".iter().copied().cycle().take(8 * MIB as usize));
    let source_raw = dir.path().join("source.raw");
    std::fs::write(&source_raw, &raw).unwrap();
    let image = dir.path().join("source.qcow2");
    let qemu_img = tool("qemu-img");
    let out = run(Command::new(&qemu_img)
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&source_raw)
        .arg(&image));
    assert!(out.status.success(), "{}", stderr(&out));

    create_volume(&data, None, "image", "64MiB");
    let gw = start(&data, None);
    let target = url(&gw, "image");
    wait_for_target(&target);
    let out = run(Command::new(&qemu_img)
        .args(["convert", "-n", "-f", "qcow2", "-O", "raw"])
        .arg(&image)
        .arg(&target));
    assert!(out.status.success(), "qemu-img to iSCSI: {}", stderr(&out));
    let back = dir.path().join("back.raw");
    let out = run(Command::new(&qemu_img)
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(&target)
        .arg(&back));
    assert!(
        out.status.success(),
        "qemu-img from iSCSI: {}",
        stderr(&out)
    );
    let back = std::fs::read(&back).unwrap();
    assert_eq!(back.len(), raw.len());
    assert!(back == raw, "image read back differs");
}

#[test]
fn acknowledged_writes_survive_kill_9_and_reach_the_bucket() {
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = activate_on(&garage, dir.path(), &data, "crash", &[]);
    create_volume(&data, Some(&config), "crash", "64MiB");
    let gw = start(&data, Some(&config));
    let target = url(&gw, "crash");
    wait_for_target(&target);

    // Acknowledged by SYNCHRONIZE CACHE (qemu-io flush) and by FUA writes (-f).
    let out = qemu_io(
        &target,
        &[
            "write -P 0x77 0 4M",
            "flush",
            "write -f -P 0x99 8M 1M",
            "write -f -P 0x31 20M 4k",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    gw.kill9();

    let gw = start(&data, Some(&config));
    let target = url(&gw, "crash");
    wait_for_target(&target);
    assert_pattern(&target, 0x77, 0, 4 * MIB);
    assert_pattern(&target, 0x99, 8 * MIB, MIB);
    assert_pattern(&target, 0x31, 20 * MIB, 4096);
    assert_pattern(&target, 0x00, 30 * MIB, MIB);

    // The bucket catches up; then the volume reads back whole with the cache (and the drained
    // upload buffer) dropped.
    wait_drained(&gw, Duration::from_secs(120));
    assert_eq!(gw.stop(), Some(0));
    drop_local_copies(&data);
    let gw = start(&data, Some(&config));
    let target = url(&gw, "crash");
    wait_for_target(&target);
    assert_pattern(&target, 0x77, 0, 4 * MIB);
    assert_pattern(&target, 0x99, 8 * MIB, MIB);
    assert_pattern(&target, 0x31, 20 * MIB, 4096);
    assert_eq!(gw.stop(), Some(0));
}

#[test]
fn bucket_outage_holds_writes_then_drains_without_loss() {
    let mut garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = activate_on(
        &garage,
        dir.path(),
        &data,
        "outage",
        &["--cache-size", "64MiB", "--upload-buffer-size", "64MiB"],
    );
    create_volume(&data, Some(&config), "outage", "192MiB");
    let gw = start(&data, Some(&config));
    let target = url(&gw, "outage");
    wait_for_target(&target);

    // 160 MiB of incompressible data: more than the 64 MiB upload buffer holds.
    let source = dir.path().join("source.raw");
    std::fs::write(&source, noise(160 * MIB as usize, 99)).unwrap();
    garage.stop();
    let mut writer: Child = Command::new(tool("qemu-img"))
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&source)
        .arg(&target)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // The writer fills the buffer and is then held (not failed).
    let start_wait = Instant::now();
    while gw.status_value("writers_waiting").unwrap_or(0) == 0 {
        assert!(
            writer.try_wait().unwrap().is_none(),
            "writer finished or failed during the outage"
        );
        assert!(
            start_wait.elapsed() < Duration::from_secs(120),
            "writes never backed up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        writer.try_wait().unwrap().is_none(),
        "a held writer must not fail"
    );

    garage.restart();
    let status = writer.wait().unwrap();
    assert!(status.success(), "writer failed after the bucket came back");
    wait_drained(&gw, Duration::from_secs(300));

    // Nothing lost: compare through the target, then once more from the bucket alone.
    let back = dir.path().join("back.raw");
    let out = run(Command::new(tool("qemu-img"))
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(&target)
        .arg(&back));
    assert!(out.status.success(), "{}", stderr(&out));
    let back = std::fs::read(&back).unwrap();
    let source = std::fs::read(&source).unwrap();
    assert!(
        back[..source.len()] == source[..],
        "data differs after the outage"
    );
    assert!(back[source.len()..].iter().all(|&b| b == 0));
    assert_eq!(gw.stop(), Some(0));
}

#[test]
fn chap_from_the_config_is_required_and_mutual_chap_works() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    activate_with_dir_bucket(&data, &dir.path().join("bucket"));
    let config = data.join("tidegate.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "\n[iscsi]\nchap_user = \"alice\"\nchap_secret = \"alicesecret1\"\n\
         mutual_chap_user = \"gateway\"\nmutual_chap_secret = \"gatewaysecret\"\n",
    );
    std::fs::write(&config, text).unwrap();
    create_volume(&data, None, "secure", "16MiB");
    let gw = start(&data, None);
    let portal = gw.ready_value("iscsi").unwrap();
    let target = "iqn.2026-11.org.tidegate:tidegate.secure/0";
    let inq = |url: String| Command::new(tool("iscsi-inq")).arg(url).output().unwrap();

    let anonymous = inq(format!("iscsi://{portal}/{target}"));
    assert!(
        !anonymous.status.success(),
        "logged in without CHAP: {}",
        stdout(&anonymous)
    );
    let wrong = inq(format!("iscsi://alice%wrongsecret1@{portal}/{target}"));
    assert!(!wrong.status.success(), "logged in with a wrong secret");

    // One-way CHAP, then mutual: the initiator checks the gateway's answer too.
    let start = Instant::now();
    loop {
        let ok = inq(format!("iscsi://alice%alicesecret1@{portal}/{target}"));
        if ok.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "CHAP login failed: {}",
            stderr(&ok)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mutual = inq(format!(
        "iscsi://alice%alicesecret1@{portal}/{target}?target_user=gateway&target_password=gatewaysecret"
    ));
    assert!(
        mutual.status.success(),
        "mutual CHAP failed: {}",
        stderr(&mutual)
    );
    let bad_mutual = inq(format!(
        "iscsi://alice%alicesecret1@{portal}/{target}?target_user=gateway&target_password=notthesecret"
    ));
    assert!(
        !bad_mutual.status.success(),
        "initiator accepted a gateway with the wrong secret"
    );
    assert_eq!(gw.stop(), Some(0));
}

#[test]
fn a_tampered_chunk_is_a_read_error_and_shows_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    create_volume(&data, None, "tamper", "16MiB");
    let gw = start(&data, None);
    let target = url(&gw, "tamper");
    wait_for_target(&target);
    let out = qemu_io(&target, &["write -P 0x42 0 1M", "flush"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_drained(&gw, Duration::from_secs(60));
    assert_eq!(gw.stop(), Some(0));

    // Drop the local copies too, so the next read must come from the bucket.
    let name = tamper_with_the_only_chunk(&data);
    drop_local_copies(&data);

    let gw = start(&data, None);
    let target = url(&gw, "tamper");
    wait_for_target(&target);
    let out = qemu_io(&target, &["read -P 0x42 0 4k"]);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains("read failed"),
        "tampered data was served: {text}"
    );
    // The rest of the volume (never written) still reads as zeros.
    assert_pattern(&target, 0x00, 2 * MIB, MIB);
    let status = run(tidegate(&data).arg("status"));
    assert_eq!(status.status.code(), Some(1), "{}", stdout(&status));
    assert!(
        stdout(&status).contains(&format!("chunks/{name}")),
        "{}",
        stdout(&status)
    );
    assert_eq!(gw.stop(), Some(0));
}

/// A tmpfs mounted for one test and unmounted when it ends, even by a failed assertion.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let out = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at));
        assert!(
            out.status.success(),
            "this test mounts a tmpfs as a small disk and needs root: {}",
            stderr(&out)
        );
        Self(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_upload_buffer_disk_is_no_space_and_status_names_it() {
    let mut garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The upload buffer may grow to 256 MiB, but its disk holds 48 MiB.
    let disk = SmallDisk::mount(&dir.path().join("small"), "48m");
    let buffer = disk.0.join("upload-buffer");
    let config = activate_on(
        &garage,
        dir.path(),
        &data,
        "fulldisk",
        &[
            "--cache-size",
            "64MiB",
            "--upload-buffer-size",
            "256MiB",
            "--upload-buffer-path",
            buffer.to_str().unwrap(),
        ],
    );
    create_volume(&data, Some(&config), "full", "256MiB");

    // Said before anything is written: the configured size does not fit the disk.
    let status = run(tidegate(&data).arg("status"));
    let text = stdout(&status);
    assert!(!status.status.success(), "{text}");
    assert!(
        text.contains("PROBLEM:        disk nearly full")
            && text.contains(&format!("upload buffer ({})", buffer.display())),
        "{text}"
    );

    let gw = start(&data, Some(&config));
    let target = url(&gw, "full");
    wait_for_target(&target);
    let status = crate::api::Api::of(&gw, &data).ok("GET", "/api/v1/status", None);
    assert_eq!(status["healthy"], false, "{status}");
    assert!(
        status["problems"][0]
            .as_str()
            .is_some_and(|p| p.starts_with("disk nearly full")),
        "{status}"
    );
    // With the bucket down nothing drains, so the journal fills the small disk.
    garage.stop();
    let out = qemu_io(&target, &["write -P 0x5a 200M 8M", "flush"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Written from offset 0, clear of the pattern above.
    let source = dir.path().join("source.raw");
    std::fs::write(&source, noise(96 * MIB as usize, 7)).unwrap();
    let out = run(Command::new(tool("qemu-img"))
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&source)
        .arg(&target));
    // SPACE ALLOCATION FAILED (DATA PROTECT 27h/07h), which initiators report as ENOSPC,
    // not an I/O error.
    assert!(!out.status.success(), "96 MiB fitted on a 48 MiB disk?");
    assert!(
        stderr(&out).contains("No space left on device"),
        "{}",
        stderr(&out)
    );
    assert!(
        gw.log_text().contains("upload buffer disk is full"),
        "{}",
        gw.log_text()
    );
    // Acknowledged data is untouched and the volume still answers.
    assert_pattern(&target, 0x5a, 200 * MIB, 8 * MIB);

    // Once the bucket is back the buffer drains and writes fit again.
    garage.restart();
    wait_drained(&gw, Duration::from_secs(300));
    let out = qemu_io(&target, &["write -P 0x6b 16M 8M", "flush"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_pattern(&target, 0x6b, 16 * MIB, 8 * MIB);
    assert_pattern(&target, 0x5a, 200 * MIB, 8 * MIB);
    assert_eq!(gw.stop(), Some(0));
}
