//! The virtual tape library with a real initiator: a small client of our own linked against
//! libiscsi (`vtl_client.c`, compiled here with cc) drives the changer and a drive through an
//! iSCSI login, checking data and sense data; libiscsi's `iscsi-inq` reads both identities;
//! tapes survive `kill -9` after WRITE FILEMARKS; an ejected tape is archived with a tree hash
//! equal to botocore's, retrieved read-only with the same bytes, and refused when tampered with.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::gateway::Gateway;
use crate::support::s3::S3Server;
use crate::support::{activate_on, python_with_botocore, run, stderr, stdout, tidegate, tool};

const TARGET: &str = "iqn.2026-11.org.tidegate:tidegate:vtl";
/// The records `vtl_client full` writes, as (length, seed), in order.
const RECORDS: [(usize, u32); 7] = [
    (1000, 0),
    (65536, 1),
    (7, 2),
    (300000, 3),
    (512, 4),
    (4096, 10),
    (10, 11),
];

/// The client, compiled once per test run into the target's temp dir.
fn client() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        assert!(
            Path::new("/usr/include/iscsi/iscsi.h").exists(),
            "libiscsi-dev is not installed; run ./scripts/test (apt-get install libiscsi-dev)"
        );
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(dir).unwrap();
        let src = dir.join("vtl_client.c");
        std::fs::write(&src, include_str!("vtl_client.c")).unwrap();
        let exe = dir.join(format!("vtl_client-{}", std::process::id()));
        let out = Command::new(tool("cc"))
            .args(["-Wall", "-Werror", "-O1", "-o"])
            .arg(&exe)
            .arg(&src)
            .arg("-liscsi")
            .output()
            .unwrap();
        assert!(out.status.success(), "cc: {}", stderr(&out));
        exe
    })
}

fn start(data: &Path) -> Gateway {
    Gateway::start_with(data, None, &["--iscsi-listen", "127.0.0.1:0"]).unwrap()
}

fn url(gw: &Gateway) -> String {
    let portal = gw.ready_value("iscsi").expect("iscsi in run/ready.toml");
    format!("iscsi://{portal}/{TARGET}")
}

fn vtl_client(gw: &Gateway, mode: &str) -> Output {
    Command::new(client())
        .arg(url(gw))
        .arg(mode)
        .output()
        .unwrap()
}

pub(crate) fn ok(gw: &Gateway, mode: &str) -> String {
    let out = vtl_client(gw, mode);
    let text = stdout(&out);
    assert!(
        out.status.success() && text.ends_with("ok\n"),
        "vtl_client {mode}: {text}{}\n{}",
        stderr(&out),
        gw.log_text()
    );
    text
}

fn create_tapes(data: &Path, n: u32) {
    let out = run(tidegate(data).args([
        "tape",
        "create",
        "--barcode-prefix",
        "TDG",
        "--count",
        &n.to_string(),
        "--size",
        "100GiB",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `tape show` as key/value pairs.
fn show(data: &Path, barcode: &str) -> std::collections::BTreeMap<String, String> {
    let out = run(tidegate(data).args(["tape", "show", barcode]));
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The client's `fill`: the bytes of record `seed` (see vtl_client.c).
fn fill(len: usize, seed: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32 * 7 + seed * 13 + (i as u32 >> 9)) as u8)
        .collect()
}

/// (address, element type, barcode) lines of one `element` block of the client's output.
fn elements(block: &str) -> Vec<(u32, u32, String)> {
    block
        .lines()
        .filter_map(|l| l.strip_prefix("element "))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].to_owned(),
            )
        })
        .collect()
}

fn assert_each_barcode_once(list: &[(u32, u32, String)], want: &[&str]) {
    let mut seen: Vec<&str> = list.iter().map(|(_, _, b)| b.as_str()).collect();
    seen.sort_unstable();
    assert_eq!(seen, want, "{list:?}");
}

#[test]
fn vtl_changer_and_drive_through_libiscsi() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    create_tapes(&data, 3);
    let gw = start(&data);
    let text = ok(&gw, "full");
    // The element listings: before the session's moves, with a tape loaded, after.
    let lists: Vec<Vec<(u32, u32, String)>> = text.split("--\n").map(elements).collect();
    assert_eq!(lists.len(), 3, "{text}");
    let all = ["TDG00001", "TDG00002", "TDG00003"];
    for list in &lists {
        assert_each_barcode_once(list, &all);
    }
    let after = &lists[2];
    // Storage slots are element type 2 from 0x400; each tape sits in the slot it was made in,
    // and the loaded tape went back to its own slot.
    for (i, b) in all.iter().enumerate() {
        assert!(
            after.contains(&(1024 + i as u32, 2, (*b).to_owned())),
            "{after:?}"
        );
    }
    // With the tape loaded, TDG00001 is in the first drive (0x100, type 4) and nowhere else.
    assert!(
        lists[1].contains(&(256, 4, "TDG00001".to_owned())),
        "{text}"
    );

    // libiscsi's iscsi-inq sees an STK L700 changer at LUN 0 and an IBM LTO-5 drive at LUN 1.
    for (lun, kind, vendor, product) in [
        (0, "MEDIA_CHANGER", "STK", "L700"),
        (1, "SEQUENTIAL_ACCESS", "IBM", "ULT3580-TD5"),
    ] {
        let out = Command::new(tool("iscsi-inq"))
            .arg(format!("{}/{lun}", url(&gw)))
            .output()
            .unwrap();
        let text = stdout(&out);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            text.contains(&format!("Peripheral Device Type:{kind}")),
            "{text}"
        );
        assert!(text.contains(&format!("Vendor:{vendor}")), "{text}");
        assert!(text.contains(&format!("Product:{product}")), "{text}");
        assert!(text.contains("Removable:1"), "{text}");
        let serial = Command::new(tool("iscsi-inq"))
            .args(["-e", "1", "-c", "0x80"])
            .arg(format!("{}/{lun}", url(&gw)))
            .output()
            .unwrap();
        assert!(serial.status.success(), "{}", stderr(&serial));
    }
    // Unloading synced the tape: the catalog has all of it.
    let t = show(&data, "TDG00001");
    let bytes: usize = RECORDS.iter().map(|r| r.0).sum();
    assert_eq!(t["data_bytes"], bytes.to_string());
    assert_eq!(t["objects"], "10");
    assert_eq!(t["state"], "AVAILABLE");
    assert!(t["location"].starts_with("slot 1"), "{t:?}");
}

#[test]
fn vtl_acknowledged_filemark_survives_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    create_tapes(&data, 1);
    let gw = start(&data);
    ok(&gw, "write");
    gw.kill9();
    let gw = start(&data);
    ok(&gw, "verify");
}

fn wait_state(data: &Path, barcode: &str, state: &str, gw: &Gateway) {
    let start = Instant::now();
    loop {
        let t = show(data, barcode);
        if t["state"] == state {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{barcode} never became {state}: {t:?}\n{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes the client's records on TDG00001 and ejects it: it must reach the shelf with
/// botocore's tree hash of its data, which is returned.
fn archive_first_tape(dir: &Path, data: &Path, gw: &Gateway) -> String {
    ok(gw, "full");
    ok(gw, "eject");
    wait_state(data, "TDG00001", "ARCHIVED", gw);
    let t = show(data, "TDG00001");
    assert_eq!(t["location"], "shelf");
    let stream: Vec<u8> = RECORDS.iter().flat_map(|&(l, s)| fill(l, s)).collect();
    let file = dir.join("stream");
    std::fs::write(&file, &stream).unwrap();
    let out = Command::new(python_with_botocore())
        .args([
            "-c",
            "import sys; from botocore.utils import calculate_tree_hash; \
             print(calculate_tree_hash(open(sys.argv[1], 'rb')))",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = stdout(&out).trim().to_owned();
    assert_eq!(t["tree_hash"], expected);
    expected
}

/// `tape verify` (the archive read back from the bucket gives `expected`), then `tape retrieve`:
/// TDG00001 is back in a slot, read-only, with the records the client wrote.
fn verify_and_retrieve_first_tape(data: &Path, gw: &Gateway, expected: &str) {
    let verify = run(tidegate(data).args(["tape", "verify", "TDG00001"]));
    assert!(verify.status.success(), "{}", stderr(&verify));
    assert!(stdout(&verify).contains(expected));
    let out = run(tidegate(data).args(["tape", "retrieve", "TDG00001"]));
    assert!(out.status.success(), "{}\n{}", stderr(&out), gw.log_text());
    let t = show(data, "TDG00001");
    assert_eq!(
        (t["state"].as_str(), t["read_only"].as_str()),
        ("RETRIEVED", "true")
    );
    ok(gw, "readonly");
}

/// The tape smoke of the compatibility suite (tests/it/compat.rs): a library on `server`'s
/// bucket; a tape written, ejected to the shelf with botocore's tree hash, verified from the
/// bucket, and retrieved read-only with the same records.
pub(crate) fn tape_shelved_and_retrieved(server: &dyn S3Server) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    activate_on(server, dir.path(), &data, "vtl", &[]);
    create_tapes(&data, 2);
    let gw = start(&data);
    let expected = archive_first_tape(dir.path(), &data, &gw);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let inventory = rt
        .block_on(server.open_bucket("vtl").get("shelf/inventory.json"))
        .unwrap();
    assert!(
        String::from_utf8_lossy(&inventory).contains(&expected),
        "inventory lacks the tree hash"
    );
    verify_and_retrieve_first_tape(&data, &gw, &expected);
}

#[test]
fn vtl_shelf_archive_retrieve_and_tamper() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    create_tapes(&data, 2);
    let gw = start(&data);
    let expected = archive_first_tape(dir.path(), &data, &gw);
    let bucket = data.join("bucket");
    let inventory = std::fs::read_to_string(bucket.join("shelf/inventory.json")).unwrap();
    assert!(inventory.contains(&expected), "{inventory}");
    assert!(bucket.join("shelf/TDG00001/part-000000").is_file());
    assert!(bucket.join("shelf/TDG00001/index").is_file());
    let listed = stdout(&run(tidegate(&data).args(["tape", "list"])));
    assert!(listed.contains("ARCHIVED"), "{listed}");
    // Verified from the bucket, then retrieved read-only into a slot with the same bytes.
    verify_and_retrieve_first_tape(&data, &gw, &expected);

    // A retrieved tape ejected goes straight back to ARCHIVED; then one flipped byte in its
    // archive makes retrieval and verification refuse, naming the tape.
    let listing = ok(&gw, "elements");
    assert!(
        elements(&listing).contains(&(256, 4, "TDG00001".to_owned())),
        "{listing}"
    );
    move_back_and_eject(&gw);
    wait_state(&data, "TDG00001", "ARCHIVED", &gw);
    let part = bucket.join("shelf/TDG00001/part-000000");
    let mut bytes = std::fs::read(&part).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&part, bytes).unwrap();
    let out = run(tidegate(&data).args(["tape", "verify", "TDG00001"]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("tape TDG00001"), "{}", stderr(&out));
    let out = run(tidegate(&data).args(["tape", "retrieve", "TDG00001"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("tape TDG00001") && err.contains("integrity"),
        "{err}"
    );
    let t = show(&data, "TDG00001");
    assert_eq!(t["state"], "DAMAGED");
    assert_eq!(t["location"], "shelf");
    let status = stdout(&run(tidegate(&data).arg("status")));
    assert!(status.contains("1 DAMAGED"), "{status}");
    assert!(status.contains("PROBLEM:        tape TDG00001"), "{status}");
}

/// Unloads the retrieved tape from its drive back to a slot, then ejects it.
fn move_back_and_eject(gw: &Gateway) {
    ok(gw, "unload");
    ok(gw, "eject");
}
