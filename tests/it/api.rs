//! The management API and /metrics against a running daemon, with real clients: curl for HTTP,
//! Prometheus's own `promtool` for the metrics format, qemu-io/qemu-img writing over iSCSI.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::iscsi_volume::{MIB, qemu_io, start, url, wait_for_target};
use crate::snapshots::{random_file, write_image};
use crate::support::gateway::Gateway;
use crate::support::{stderr, stdout, tool};

struct Api {
    base: String,
    token: String,
}

impl Api {
    fn of(gw: &Gateway, data: &Path) -> Api {
        let token = std::fs::read_to_string(data.join("api.token"))
            .unwrap()
            .trim()
            .to_owned();
        Api {
            base: format!(
                "http://{}",
                gw.ready_value("api").expect("api in run/ready.toml")
            ),
            token,
        }
    }

    /// (HTTP status, body) of a request; `token` None sends no Authorization header.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, String) {
        let mut cmd = Command::new(tool("curl"));
        cmd.args(["-sS", "-X", method, "-w", "\n%{http_code}"]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data", b]);
        }
        let out = cmd.arg(format!("{}{path}", self.base)).output().unwrap();
        assert!(out.status.success(), "curl: {}", stderr(&out));
        let text = stdout(&out);
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.trim().parse().unwrap(), body.to_owned())
    }

    fn ok(&self, method: &str, path: &str, body: Option<&str>) -> serde_json::Value {
        let (code, text) = self.call(method, path, body, Some(&self.token));
        assert_eq!(code, 200, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    fn metric(&self, sample: &str) -> f64 {
        let (code, text) = self.call("GET", "/metrics", None, None);
        assert_eq!(code, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{sample} not in /metrics"))
            .parse()
            .unwrap()
    }
}

#[test]
fn the_api_manages_volumes_and_snapshots_behind_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gw = start(&data, None);
    let api = Api::of(&gw, &data);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("api.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    for token in [None, Some("not-the-token")] {
        let (code, body) = api.call("GET", "/api/v1/status", None, token);
        assert_eq!(code, 401, "{body}");
        assert!(body.contains("\"code\":\"unauthorized\""), "{body}");
    }
    let status = api.ok("GET", "/api/v1/status", None);
    assert_eq!(status["healthy"], true, "{status}");

    let made = api.ok(
        "POST",
        "/api/v1/volumes",
        Some(r#"{"name":"apivol","size":"16MiB"}"#),
    );
    assert_eq!(made["size_bytes"], 16 * MIB);
    let target = url(&gw, "apivol");
    wait_for_target(&target);
    let list = api.ok("GET", "/api/v1/volumes", None);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    for (body, code, error) in [
        (r#"{"name":"apivol","size":"16MiB"}"#, 409, "already_exists"),
        (r#"{"name":"Bad Name","size":"16MiB"}"#, 400, "bad_request"),
        (r#"{"name":"x","size":"lots"}"#, 400, "bad_request"),
        ("{not json", 400, "bad_request"),
    ] {
        let (got, text) = api.call("POST", "/api/v1/volumes", Some(body), Some(&api.token));
        assert_eq!(got, code, "{body}: {text}");
        assert!(
            text.contains(&format!("\"code\":\"{error}\"")),
            "{body}: {text}"
        );
    }
    let (code, text) = api.call("DELETE", "/api/v1/volumes/nope", None, Some(&api.token));
    assert_eq!((code, text.contains("not_found")), (404, true), "{text}");

    assert!(qemu_io(&target, &["write -P 0x42 0 2M"]).status.success());
    let snap = api.ok(
        "POST",
        "/api/v1/snapshots",
        Some(r#"{"volume":"apivol","description":"api"}"#),
    );
    let id = snap["id"].as_str().unwrap().to_owned();
    let start = Instant::now();
    loop {
        let all = api.ok("GET", "/api/v1/snapshots", None);
        let state = all
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id.as_str())
            .map(|s| s["state"].as_str().unwrap().to_owned());
        if state.as_deref() == Some("complete") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "snapshot state {state:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    api.ok("DELETE", &format!("/api/v1/snapshots/{id}"), None);
    api.ok("DELETE", "/api/v1/volumes/apivol", None);
    assert_eq!(
        api.ok("GET", "/api/v1/volumes", None)
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(gw.stop(), Some(0));
}

/// `promtool check metrics` on a /metrics body; fails the test with promtool's complaint.
fn promtool_check(text: &str) {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn metrics_pass_promtool_and_move_with_client_writes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    crate::iscsi_volume::create_volume(&data, None, "m", "32MiB");
    let gw = start(&data, None);
    let api = Api::of(&gw, &data);
    let target = url(&gw, "m");
    wait_for_target(&target);

    let (_, before) = api.call("GET", "/metrics", None, None);
    promtool_check(&before);
    let written = r#"tidegate_volume_bytes_total{volume="m",op="write"}"#;
    let uploaded = r#"tidegate_bucket_bytes_total{direction="upload"}"#;
    let w0 = api.metric(written);
    let u0 = api.metric(uploaded);
    assert!(
        qemu_io(&target, &["write -P 0x17 0 8M", "flush"])
            .status
            .success()
    );
    assert_eq!(api.metric(written) - w0, (8 * MIB) as f64);
    let start = Instant::now();
    while api.metric(uploaded) <= u0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no upload counted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, after) = api.call("GET", "/metrics", None, None);
    promtool_check(&after);
    assert_eq!(gw.stop(), Some(0));
}

/// A 10 MiB/s upload limit set through the API paces a 200 MiB upload to about 20 s; lifting
/// it through the API takes effect within a second.
#[test]
fn bandwidth_limits_apply_live() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    crate::iscsi_volume::create_volume(&data, None, "bw", "512MiB");
    let gw = start(&data, None);
    let api = Api::of(&gw, &data);
    let target = url(&gw, "bw");
    wait_for_target(&target);
    let set = api.ok("PUT", "/api/v1/bandwidth", Some(r#"{"upload":"10MiB"}"#));
    assert_eq!(set["upload"], 10 * MIB);
    let image = dir.path().join("r.raw");
    random_file(&image, 300);
    let uploaded = r#"tidegate_bucket_bytes_total{direction="upload"}"#;
    let base = api.metric(uploaded);
    let started = Instant::now();
    write_image(&image, &target);
    let wait_for = |bytes: f64, limit: Duration| {
        loop {
            if api.metric(uploaded) - base >= bytes {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "upload stalled at {}",
                api.metric(uploaded) - base
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for((200 * MIB) as f64, Duration::from_secs(60));
    let took = started.elapsed().as_secs_f64();
    println!("200 MiB uploaded in {took:.1} s at a 10 MiB/s limit");
    assert!(
        (17.0..=23.0).contains(&took),
        "200 MiB at 10 MiB/s took {took:.1} s"
    );

    // About 100 MiB are still waiting (10 s at the old limit); lifted, they go at once.
    let lifted = Instant::now();
    api.ok("PUT", "/api/v1/bandwidth", Some(r#"{"upload":null}"#));
    wait_for((300 * MIB) as f64, Duration::from_secs(60));
    let rest = lifted.elapsed().as_secs_f64();
    println!("the last 100 MiB took {rest:.1} s after the limit was lifted");
    assert!(
        rest < 3.0,
        "lifting the limit took effect only after {rest:.1} s"
    );
    assert_eq!(gw.stop(), Some(0));
}

/// A schedule window covering every moment puts its limits in force; defaults set through the
/// API are kept for outside the windows and do not override an open window.
#[test]
fn a_bandwidth_schedule_window_wins_over_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("tidegate.toml");
    let days = r#"["mon", "tue", "wed", "thu", "fri", "sat", "sun"]"#;
    std::fs::write(
        &config,
        format!(
            "[bucket]\nurl = \"file://{}\"\n[[bandwidth.schedule]]\ndays = {days}\n\
             start = \"00:00\"\nend = \"24:00\"\nupload = \"5MiB\"\n",
            dir.path().join("bucket").display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("bucket")).unwrap();
    let activated = crate::support::run(crate::support::tidegate(&data).arg("activate").args([
        "--bucket",
        &format!("file://{}", dir.path().join("bucket").display()),
    ]));
    assert!(activated.status.success(), "{}", stderr(&activated));
    // Activation wrote DATA_DIR/tidegate.toml; use ours, with the schedule, and the same key.
    let key = data.join("key");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            "[gateway]\nkey_file = \"{}\"\ndata_dir = \"{}\"\n{text}",
            key.display(),
            data.display()
        ),
    )
    .unwrap();
    let gw = start(&data, Some(&config));
    let api = Api::of(&gw, &data);
    let bw = api.ok("GET", "/api/v1/bandwidth", None);
    assert_eq!(bw["upload"], 5 * MIB, "{bw}");
    assert_eq!(bw["active_window"], 0, "{bw}");
    let set = api.ok("PUT", "/api/v1/bandwidth", Some(r#"{"upload":"20MiB"}"#));
    assert_eq!(set["defaults"]["upload"], 20 * MIB, "{set}");
    assert_eq!(set["upload"], 5 * MIB, "the open window still wins: {set}");
    let metric = api.metric(r#"tidegate_bandwidth_limit_bytes_per_second{direction="upload"}"#);
    assert_eq!(metric, (5 * MIB) as f64);
    assert_eq!(gw.stop(), Some(0));
}

/// A share's traffic and upload state in /metrics, `share status` and the shares API follow an
/// NFS client: an UNSTABLE write shows as written and dirty (not in the bucket), its COMMIT
/// lets it go up, and then the share reads as safely in the bucket; a read counts its bytes.
#[test]
fn share_metrics_and_status_follow_an_nfs_client() {
    let dir = tempfile::tempdir().unwrap();
    let (_garage, gw, config) =
        crate::nfs_share::docs_on_garage(dir.path(), crate::support::free_port());
    let api = Api::of(&gw, &dir.path().join("data"));
    let status = || crate::nfs_share::tg(&gw, Some(&config), &["share", "status", "docs"]);
    let sample =
        |name: &str, labels: &str| api.metric(&format!("{name}{{share=\"docs\"{labels}}}"));
    let (_, before) = api.call("GET", "/metrics", None, None);
    promtool_check(&before);
    let written = || sample("tidegate_share_bytes_total", ",op=\"write\"");
    let w0 = written();
    let uploads0 = sample("tidegate_share_uploads_total", "");

    let mut c = crate::support::nfs::Client::connect(&crate::nfs_share::nfs_addr(&gw));
    let root = c.mount("/docs").unwrap();
    let fh = c.create(&root, "m.bin", 0, 0o644).unwrap();
    let data = crate::support::noise(MIB as usize, 5);
    c.write(&fh, 0, &data, 0).unwrap();
    // Uncommitted: written, dirty, and not uploaded (it waits for COMMIT).
    assert_eq!(written() - w0, MIB as f64);
    assert!(sample("tidegate_share_ops_total", ",op=\"write\"") >= 1.0);
    assert_eq!(sample("tidegate_share_dirty_files", ""), 1.0);
    assert_eq!(sample("tidegate_share_dirty_bytes", ""), MIB as f64);
    let s = status();
    assert!(s.contains("dirty files: 1\n"), "{s}");
    assert!(s.contains("in the bucket: not yet, 1 files"), "{s}");
    let shares = api.ok("GET", "/api/v1/shares", None);
    assert_eq!(shares[0]["in_bucket"], false, "{shares}");

    c.commit(&fh).unwrap();
    let start = Instant::now();
    while !status().contains("in the bucket: yes") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not uploaded: {}",
            status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(sample("tidegate_share_dirty_files", ""), 0.0);
    assert_eq!(sample("tidegate_share_dirty_bytes", ""), 0.0);
    assert!(sample("tidegate_share_uploads_total", "") > uploads0);
    assert!(sample("tidegate_share_upload_bytes_total", "") >= MIB as f64);
    assert!(sample("tidegate_share_last_upload_timestamp_seconds", "") > 1.7e9);
    assert!(sample("tidegate_share_ops_total", ",op=\"commit\"") >= 1.0);
    let shares = api.ok("GET", "/api/v1/shares", None);
    assert_eq!(shares[0]["in_bucket"], true, "{shares}");

    let r0 = sample("tidegate_share_bytes_total", ",op=\"read\"");
    let (back, _) = c.read(&fh, 0, MIB as u32).unwrap();
    assert!(back == data);
    assert_eq!(
        sample("tidegate_share_bytes_total", ",op=\"read\"") - r0,
        MIB as f64
    );
    let (_, after) = api.call("GET", "/metrics", None, None);
    promtool_check(&after);
    assert_eq!(gw.stop(), Some(0));
}
