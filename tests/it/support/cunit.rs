//! Running libiscsi's conformance suite (`iscsi-test-cu`) and reading its CUnit XML results.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Result per `Suite.Test`: true = passed (CUnit also counts a test that skipped itself, e.g.
/// "not supported", as passed; it does so for both targets alike).
pub type Results = BTreeMap<String, bool>;

/// Runs `iscsi-test-cu --dataloss -t <family>` against `url` in `dir` and parses the results.
pub fn run(family: &str, url: &str, dir: &Path) -> Results {
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new(super::tool("iscsi-test-cu"))
        .args(["--dataloss", "--silent", "--xml", "-t", family, url])
        .current_dir(dir)
        .output()
        .unwrap();
    let xml = std::fs::read_to_string(dir.join("CUnitAutomated-Results.xml")).unwrap_or_else(|e| {
        panic!(
            "iscsi-test-cu wrote no results ({e}); it printed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    parse(&xml)
}

pub fn parse(xml: &str) -> Results {
    let mut results = Results::new();
    let mut suite = String::new();
    let mut outcome: Option<bool> = None;
    let text = |line: &str, tag: &str| {
        line.trim()
            .strip_prefix(&format!("<{tag}>"))
            .and_then(|l| l.strip_suffix(&format!("</{tag}>")))
            .map(|s| s.trim().to_owned())
    };
    for line in xml.lines() {
        let l = line.trim();
        if let Some(name) = text(l, "SUITE_NAME") {
            suite = name;
        } else if l.starts_with("<CUNIT_RUN_TEST_SUCCESS>") {
            outcome = Some(true);
        } else if l.starts_with("<CUNIT_RUN_TEST_FAILURE>") {
            outcome = Some(false);
        } else if let (Some(name), Some(ok)) = (text(l, "TEST_NAME"), outcome) {
            // A failing test has one FAILURE record per failed assertion: any failure fails it.
            let entry = results.entry(format!("{suite}.{name}")).or_insert(ok);
            *entry &= ok;
            outcome = None;
        }
    }
    results
}
