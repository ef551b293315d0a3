//! The web console in a real headless browser (Debian's chromium, driven by selenium through
//! chromedriver): sign in with the token, see the gateway healthy, see a tape created through
//! the API and an import job listed with their states, create a volume and a share from the
//! page and see them listed. The screenshot is kept in `target/test-artifacts/console.png`.

use std::process::Command;

use crate::iscsi_volume::start;
use crate::support::{stderr, stdout, tool};

const DRIVE: &str = r#"
import sys
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

base, token, shot, chromium, driver = sys.argv[1:6]
options = Options()
options.binary_location = chromium
for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
    options.add_argument(arg)
browser = webdriver.Chrome(service=Service(driver), options=options)
try:
    wait = WebDriverWait(browser, 30)
    browser.get(base + "/")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "connect").click()
    wait.until(lambda b: b.find_element(By.ID, "health").text == "healthy")
    wait.until(lambda b: "bench-vol" in b.find_element(By.ID, "volumes").text)
    wait.until(lambda b: "WEB00001" in b.find_element(By.ID, "tapes").text)
    tapes = browser.find_element(By.ID, "tapes").text
    if "AVAILABLE" not in tapes or "slot 1" not in tapes:
        raise SystemExit("tapes table: " + tapes)
    wait.until(lambda b: "s3://elsewhere/web" in b.find_element(By.ID, "jobs").text)
    jobs = browser.find_element(By.ID, "jobs").text
    if "created" not in jobs:
        raise SystemExit("jobs table: " + jobs)
    print("tapes and jobs listed")
    browser.find_element(By.ID, "volume-name").send_keys("from-browser")
    browser.find_element(By.ID, "volume-size").send_keys("64MiB")
    browser.find_element(By.ID, "volume-create").click()
    wait.until(lambda b: "from-browser" in b.find_element(By.ID, "volumes").text)
    shares = browser.find_element(By.ID, "shares-section")
    if shares.is_displayed():
        browser.find_element(By.ID, "share-name").send_keys("browser-share")
        browser.find_element(By.ID, "share-prefix").send_keys("browser-share")
        browser.find_element(By.ID, "share-create").click()
        wait.until(lambda b: "browser-share" in b.find_element(By.ID, "shares").text)
        print("share created")
    browser.save_screenshot(shot)
    print("console ok")
finally:
    browser.quit()
"#;

#[test]
fn the_console_signs_in_and_creates_a_volume_and_a_share_in_a_real_browser() {
    let chromium = tool("chromium");
    let driver = tool("chromedriver");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    crate::iscsi_volume::create_volume(&data, None, "bench-vol", "16MiB");
    crate::api::create_job(&data, &dir.path().join("job.json"), "s3://elsewhere/web");
    let gw = start(&data, None);
    crate::api::Api::of(&gw, &data).ok(
        "POST",
        "/api/v1/tapes",
        Some(r#"{"barcode_prefix":"WEB","size":"100GiB"}"#),
    );
    let token = std::fs::read_to_string(data.join("api.token")).unwrap();
    let base = format!("http://{}", gw.ready_value("api").unwrap());
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("console.png");
    let _ = std::fs::remove_file(&shot);
    let script = dir.path().join("drive.py");
    std::fs::write(&script, DRIVE).unwrap();
    let python = crate::support::python_with("selenium.webdriver", "python3-selenium");
    let out = Command::new(python)
        .arg(&script)
        .args([&base, token.trim(), shot.to_str().unwrap()])
        .arg(&chromium)
        .arg(&driver)
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "browser: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("console ok"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("tapes and jobs listed"),
        "{}",
        stdout(&out)
    );
    // The volume made in the page exists for the gateway, not only on screen.
    let list = crate::support::run(crate::support::tidegate(&data).args(["volume", "list"]));
    assert!(stdout(&list).contains("from-browser"), "{}", stdout(&list));
    assert!(stdout(&out).contains("share created"), "{}", stdout(&out));
    let shares = crate::support::run(crate::support::tidegate(&data).args(["share", "list"]));
    assert!(
        stdout(&shares).contains("browser-share"),
        "{}",
        stdout(&shares)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot"
    );
    assert_eq!(gw.stop(), Some(0));
}
