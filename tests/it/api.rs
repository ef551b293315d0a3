//! The management API and /metrics against a running daemon, with real clients: curl for HTTP,
//! Prometheus's own `promtool` for the metrics format, qemu-io/qemu-img writing over iSCSI.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::iscsi_volume::{MIB, qemu_io, start, url, wait_for_target};
use crate::snapshots::{random_file, write_image};
use crate::support::gateway::Gateway;
use crate::support::{stderr, stdout, tool};

pub(crate) struct Api {
    base: String,
    token: String,
}

impl Api {
    pub(crate) fn of(gw: &Gateway, data: &Path) -> Api {
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

    pub(crate) fn ok(&self, method: &str, path: &str, body: Option<&str>) -> serde_json::Value {
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

/// `promtool check metrics` accepts the exposition.
fn promtool(text: &str) {
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
    promtool(&before);
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
    promtool(&after);
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
    // Timed from the first 50 MiB on: the start (the image write, the settle time before
    // uploads begin) depends on the machine's load, the limiter's pace does not.
    wait_for((50 * MIB) as f64, Duration::from_secs(60));
    let paced = Instant::now();
    wait_for((200 * MIB) as f64, Duration::from_secs(90));
    let took = paced.elapsed().as_secs_f64();
    println!("150 MiB uploaded in {took:.1} s at a 10 MiB/s limit");
    assert!(
        (12.0..=25.0).contains(&took),
        "150 MiB at 10 MiB/s took {took:.1} s"
    );

    // About 100 MiB are still waiting (10 s at the old limit); lifted, they go at once (well
    // under those 10 s even on a loaded machine, where seals run niced).
    let lifted = Instant::now();
    api.ok("PUT", "/api/v1/bandwidth", Some(r#"{"upload":null}"#));
    wait_for((300 * MIB) as f64, Duration::from_secs(90));
    let rest = lifted.elapsed().as_secs_f64();
    println!("the last 100 MiB took {rest:.1} s after the limit was lifted");
    assert!(
        rest < 6.0,
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

/// While a daemon runs, the CLI changes volumes and shares through its API: a wrong token makes
/// the CLI fail (it never goes behind the daemon's back), and with the right one the CLI and the
/// API show the same things, errors exiting 2 as they do with no daemon.
#[test]
fn the_cli_goes_through_the_running_daemons_api() {
    use crate::support::{run, tidegate};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gw = start(&data, None);
    let api = Api::of(&gw, &data);

    let made =
        run(tidegate(&data).args(["volume", "create", "--name", "clivol", "--size", "8MiB"]));
    assert!(made.status.success(), "{}", stderr(&made));
    assert!(
        stdout(&made).contains("created volume clivol (8 MiB, cached)"),
        "{}",
        stdout(&made)
    );
    let listed = api.ok("GET", "/api/v1/volumes", None);
    assert!(listed.to_string().contains("\"clivol\""), "{listed}");
    // Served at once: the API syncs the daemon's volumes instead of waiting for its catalog poll.
    wait_for_target(&url(&gw, "clivol"));
    let again =
        run(tidegate(&data).args(["volume", "create", "--name", "clivol", "--size", "8MiB"]));
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );

    let share = run(tidegate(&data).args([
        "share",
        "create",
        "clishare",
        "--squash",
        "all",
        "--allowed-clients",
        "10.0.0.0/8,127.0.0.1/32",
        "--default-mode",
        "640",
    ]));
    assert!(share.status.success(), "{}", stderr(&share));
    let shares = api.ok("GET", "/api/v1/shares", None);
    let ours = shares
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "clishare")
        .unwrap_or_else(|| panic!("{shares}"));
    assert_eq!(ours["squash"], "all", "{ours}");
    assert_eq!(
        ours["allowed_clients"].as_array().unwrap().len(),
        2,
        "{ours}"
    );
    let list = run(tidegate(&data).args(["share", "list"]));
    assert!(
        stdout(&list)
            .lines()
            .any(|l| l.starts_with("clishare") && l.contains("10.0.0.0/8")),
        "{}",
        stdout(&list)
    );
    let refreshed = run(tidegate(&data).args(["share", "refresh", "clishare"]));
    assert!(refreshed.status.success(), "{}", stderr(&refreshed));
    let gone = run(tidegate(&data).args(["share", "delete", "clishare"]));
    assert!(gone.status.success(), "{}", stderr(&gone));
    let gone = run(tidegate(&data).args(["share", "delete", "clishare"]));
    assert_eq!(gone.status.code(), Some(2), "{}", stderr(&gone));

    // A token the daemon does not accept: the CLI fails rather than writing the catalog itself.
    let token = data.join("api.token");
    let real = std::fs::read_to_string(&token).unwrap();
    std::fs::write(&token, "not-the-token\n").unwrap();
    let refused = run(tidegate(&data).args(["volume", "delete", "clivol"]));
    std::fs::write(&token, real).unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("unauthorized"),
        "{}",
        stderr(&refused)
    );
    assert!(
        api.ok("GET", "/api/v1/volumes", None)
            .to_string()
            .contains("clivol")
    );

    let deleted = run(tidegate(&data).args(["volume", "delete", "clivol"]));
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert_eq!(
        api.ok("GET", "/api/v1/volumes", None),
        serde_json::json!([])
    );
    assert_eq!(gw.stop(), Some(0));
}

/// Creates an import job (state CREATED) whose target is never reached, writing its manifest
/// to `manifest`; returns the job id.
pub(crate) fn create_job(data: &Path, manifest: &Path, target: &str) -> String {
    use crate::support::{run, tidegate};
    let job = run(tidegate(data)
        .args(["job", "create", "import", "--target", target])
        .args(["--endpoint", "http://127.0.0.1:9", "--region", "garage"])
        .arg("--manifest-out")
        .arg(manifest));
    assert!(job.status.success(), "{}", stderr(&job));
    stdout(&job)
        .lines()
        .find_map(|l| l.strip_prefix("job: "))
        .unwrap()
        .to_owned()
}

/// Tapes and jobs through the API, the CLI going through it while the daemon runs (and printing
/// what it prints without one), and their metrics moving as libiscsi writes to and reads from a
/// tape.
#[test]
fn tapes_and_jobs_through_the_api_cli_and_metrics() {
    use crate::support::{run, tidegate};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let job_id = create_job(&data, &dir.path().join("job.json"), "s3://elsewhere/in");
    let gw = start(&data, None);
    let api = Api::of(&gw, &data);

    let made = api.ok(
        "POST",
        "/api/v1/tapes",
        Some(r#"{"barcode_prefix":"API","count":2,"size":"100GiB"}"#),
    );
    let barcodes: Vec<&str> = made
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["barcode"].as_str().unwrap())
        .collect();
    assert_eq!(barcodes, ["API00001", "API00002"], "{made}");
    assert_eq!(made[0]["state"], "available", "{made}");
    assert_eq!(made[0]["location"]["kind"], "slot", "{made}");
    for (body, code, error) in [
        (
            r#"{"barcode_prefix":"API","size":"1GiB"}"#,
            400,
            "bad_request",
        ),
        (r#"{"size":"100GiB"}"#, 400, "bad_request"),
        (
            r#"{"barcode_prefix":"API","size":"100GiB","retention_days":3}"#,
            400,
            "bad_request",
        ),
    ] {
        let (got, text) = api.call("POST", "/api/v1/tapes", Some(body), Some(&api.token));
        assert_eq!(got, code, "{body}: {text}");
        assert!(text.contains(&format!("\"code\":\"{error}\"")), "{text}");
    }
    let (code, text) = api.call(
        "POST",
        "/api/v1/tapes/API00001/retrieve",
        None,
        Some(&api.token),
    );
    assert_eq!(code, 400, "an available tape is not on the shelf: {text}");
    let (code, text) = api.call("DELETE", "/api/v1/tapes/NOPE0001", None, Some(&api.token));
    assert_eq!((code, text.contains("not_found")), (404, true), "{text}");

    // The CLI goes through the API: what it creates is the API's, its errors are the API's.
    let cli = run(tidegate(&data).args([
        "tape",
        "create",
        "--barcode-prefix",
        "CLI",
        "--size",
        "100GiB",
        "--retention-days",
        "1",
        "--lock",
        "governance",
    ]));
    assert!(cli.status.success(), "{}", stderr(&cli));
    assert!(
        stdout(&cli).starts_with("created tape CLI00001 (100 GiB) in slot 3 ("),
        "{}",
        stdout(&cli)
    );
    let listed = api.ok("GET", "/api/v1/tapes", None);
    let cli_tape = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["barcode"] == "CLI00001")
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(cli_tape["lock_mode"], "governance", "{cli_tape}");
    let locked = run(tidegate(&data).args(["tape", "delete", "CLI00001"]));
    assert_eq!(locked.status.code(), Some(1), "{}", stderr(&locked));
    assert!(
        stderr(&locked).contains("governance retention"),
        "{}",
        stderr(&locked)
    );
    let gone = run(tidegate(&data).args(["tape", "delete", "CLI00001", "--bypass-governance"]));
    assert!(gone.status.success(), "{}", stderr(&gone));
    // A token the daemon refuses: the CLI fails instead of reading the catalog behind it.
    let token = data.join("api.token");
    let real = std::fs::read_to_string(&token).unwrap();
    std::fs::write(&token, "not-the-token\n").unwrap();
    let refused = run(tidegate(&data).args(["tape", "list"]));
    std::fs::write(&token, real).unwrap();
    assert!(
        stderr(&refused).contains("unauthorized"),
        "{}",
        stderr(&refused)
    );

    let jobs = api.ok("GET", "/api/v1/jobs", None);
    assert_eq!(jobs[0]["id"], job_id.as_str(), "{jobs}");
    assert_eq!(jobs[0]["target"], "s3://elsewhere/in", "{jobs}");
    assert_eq!(jobs[0]["objects"], 0, "{jobs}");
    assert_eq!(jobs[0]["state"], "created", "{jobs}");

    // Metrics: tapes by state, job progress, and drive bytes that follow a real initiator.
    let written = r#"tidegate_tape_drive_bytes_total{drive="1",op="write"}"#;
    let read = r#"tidegate_tape_drive_bytes_total{drive="1",op="read"}"#;
    assert_eq!(api.metric(r#"tidegate_tapes{state="available"}"#), 2.0);
    assert_eq!(api.metric(r#"tidegate_tapes{state="archived"}"#), 0.0);
    assert_eq!(api.metric(r#"tidegate_jobs{state="created"}"#), 1.0);
    let job_objects = format!(r#"tidegate_job_objects{{job="{job_id}",state="created"}}"#);
    assert_eq!(api.metric(&job_objects), 0.0);
    let (w0, r0) = (api.metric(written), api.metric(read));
    crate::vtl::ok(&gw, "write");
    // vtl_client's five records (see `sizes` in vtl_client.c).
    let records = (1000 + 65536 + 7 + 300000 + 512) as f64;
    assert_eq!(api.metric(written) - w0, records);
    crate::vtl::ok(&gw, "verify");
    assert_eq!(api.metric(read) - r0, records);
    let tape = &api.ok("GET", "/api/v1/tapes", None)[0];
    assert_eq!(tape["data_bytes"], records as u64, "{tape}");
    assert_eq!(tape["location"]["kind"], "drive", "{tape}");
    let (_, text) = api.call("GET", "/metrics", None, None);
    promtool(&text);
    assert!(
        text.contains(&format!(
            "tidegate_tape_data_bytes{{barcode=\"API00001\"}} {records}"
        )),
        "{text}"
    );

    // The same listing with and without the daemon.
    let through = stdout(&run(tidegate(&data).args(["tape", "list"])));
    assert!(through.contains("API00001"), "{through}");
    assert_eq!(gw.stop(), Some(0));
    let offline = stdout(&run(tidegate(&data).args(["tape", "list"])));
    assert_eq!(through, offline);
}

/// A job's progress in the API and /metrics follows real clients: boto3 loads the device
/// (objects and bytes held), then `job import` into Garage (bytes imported reach the total).
#[test]
fn job_progress_in_the_api_and_metrics_follows_load_and_import() {
    use crate::device::{CLIENT, Unlocked, boto3, create_job, import, lock_and_seal};
    let garage = crate::support::garage::Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let job = create_job(dir.path(), &garage, "apijob");
    let dev = Unlocked::start(&job);
    let sizes = [1000usize, 200_000, 3 << 20];
    let out = boto3(
        &format!(
            "{CLIENT}
for i, n in enumerate({sizes:?}):
    s3.put_object(Bucket='tidegate-test', Key='o/%d' % i, Body=os.urandom(n))
print('ok')
"
        ),
        |c| dev.env(c),
    );
    assert_eq!(out.trim(), "ok");
    lock_and_seal(dev, &job);

    let gw = start(&job.data, None);
    let api = Api::of(&gw, &job.data);
    let total: usize = sizes.iter().sum();
    let jobs = api.ok("GET", "/api/v1/jobs", None);
    let j = &jobs[0];
    assert_eq!(j["id"], job.id.as_str(), "{jobs}");
    assert_eq!(j["state"], "sealed", "{jobs}");
    assert_eq!(
        (j["objects"].as_u64(), j["bytes"].as_u64()),
        (Some(3), Some(total as u64))
    );
    assert_eq!(j["imported_bytes"], 0, "{jobs}");
    let sample = |family: &str, state: &str| {
        api.metric(&format!("{family}{{job=\"{}\",state=\"{state}\"}}", job.id))
    };
    assert_eq!(sample("tidegate_job_bytes", "sealed"), total as f64);
    assert_eq!(sample("tidegate_job_imported_bytes", "sealed"), 0.0);
    assert_eq!(api.metric(r#"tidegate_jobs{state="sealed"}"#), 1.0);

    let o = import(&job, &garage, &[]);
    assert!(o.status.success(), "import: {}{}", stdout(&o), stderr(&o));
    let j = &api.ok("GET", "/api/v1/jobs", None)[0];
    assert_eq!(j["state"], "complete", "{j}");
    assert_eq!(j["imported_bytes"], total as u64, "{j}");
    assert_eq!(j["imported_objects"], 3, "{j}");
    assert_eq!(j["progress"], 1.0, "{j}");
    assert_eq!(
        sample("tidegate_job_imported_bytes", "complete"),
        total as f64
    );
    assert_eq!(sample("tidegate_job_imported_objects", "complete"), 3.0);
    assert_eq!(api.metric(r#"tidegate_jobs{state="sealed"}"#), 0.0);
    let (_, text) = api.call("GET", "/metrics", None, None);
    promtool(&text);
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
    promtool(&before);
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
    promtool(&after);
    assert_eq!(gw.stop(), Some(0));
}

/// Issue 20: the embedded default sizes the cache and the upload buffer from the file system
/// that holds them, and the API and `tidegate status` say how large they are and why; a size
/// set in the config wins and says so.
#[test]
fn issue_20_status_shows_the_area_sizes_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gw = start(&data, None);
    let status = Api::of(&gw, &data).ok("GET", "/api/v1/status", None);
    // The rule's input measured with coreutils: free space of the file system (the areas hold
    // next to nothing yet). Other processes write meanwhile, so allow 2 GiB of drift.
    let df = Command::new(tool("stat"))
        .args(["-f", "--format", "%a %S"])
        .arg(&data)
        .output()
        .unwrap();
    let fields: Vec<u64> = stdout(&df)
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    let free = fields[0] * fields[1];
    let expected = (free / 100 * 30).clamp(1 << 30, 512 << 30);
    for area in ["cache", "upload_buffer"] {
        let capacity = status[area]["capacity"].as_u64().unwrap();
        assert!(
            capacity.abs_diff(expected) < 2 << 30,
            "{area}: {capacity} for {free} free: {status}"
        );
        let why = status[area]["sizing"].as_str().unwrap();
        assert!(why.starts_with("automatic: 30% of "), "{area}: {why}");
    }
    let text = stdout(&crate::support::run(
        crate::support::tidegate(&data).arg("status"),
    ));
    assert_eq!(
        text.matches("automatic: 30% of ").count(),
        2,
        "both areas, with their reason: {text}"
    );
    drop(gw);

    // A configured size is used as given and named as such; the cache still follows the disk.
    let data2 = dir.path().join("data2");
    crate::support::activate_with_dir_bucket(&data2, &dir.path().join("bucket2"));
    let config = data2.join("tidegate.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[upload_buffer]\nsize = \"256MiB\"\n");
    std::fs::write(&config, text).unwrap();
    let out = crate::support::run(crate::support::tidegate(&data2).arg("status"));
    let text = stdout(&out);
    assert!(text.contains("256 MiB (not created yet)"), "{text}");
    assert!(
        text.contains("upload_buffer.size set in the config"),
        "{text}"
    );
    assert!(text.contains("automatic: 30% of "), "{text}");
}
