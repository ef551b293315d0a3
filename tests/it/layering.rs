//! The layer rules of docs/design.md §1, checked on the source. `ALLOWED` is the table in
//! CONTRIBUTING.md ("Layers"): which module may import which. Every `crate::` path in the code
//! under src/ (test modules aside) is checked against it, and a violation names the file, the
//! line and the rule. Besides the table: only `store` holds the bucket and crypto crates, only
//! `catalog` holds SQL, and the cache crate knows nothing of tidegate.

use std::path::{Path, PathBuf};

/// Modules anyone may import: they import nothing of tidegate themselves.
const LEAVES: &[&str] = &["config", "clock", "error_chain", "percent"];

/// Module → the modules it may import besides itself and the leaves. Front ends are separate
/// entries (`frontend::nfs`), so one importing another is a violation like any other; `cache`
/// stands for the `tidegate-cache` crate.
const ALLOWED: &[(&str, &[&str])] = &[
    // The CLI posts the management API's own request/reply types to a running daemon.
    (
        "cli",
        &["daemon", "frontend::api", "gateway", "store", "catalog"],
    ),
    (
        "daemon",
        &[
            "frontend",
            "frontend::api",
            "frontend::fuse",
            "frontend::iscsi",
            "frontend::nfs",
            "frontend::s3",
            "scsi",
            "gateway",
            "cache",
            "store",
            "catalog",
        ],
    ),
    ("frontend", &[]),
    ("frontend::api", &["gateway"]),
    ("frontend::fuse", &["gateway"]),
    ("frontend::iscsi", &["scsi", "gateway"]),
    ("frontend::nfs", &["gateway"]),
    ("frontend::s3", &["gateway"]),
    ("scsi", &["gateway"]),
    ("gateway", &["cache", "store", "catalog"]),
    ("store", &[]),
    ("catalog", &[]),
    ("config", &[]),
    ("clock", &[]),
    ("error_chain", &[]),
    ("percent", &[]),
];

/// The module a file under src/ belongs to (`gateway/files/ops.rs` → `gateway`,
/// `frontend/nfs/rpc.rs` → `frontend::nfs`); `None` for the crate root and `main.rs`, which
/// may use everything.
fn module_of(rel: &Path) -> Option<String> {
    let parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    match parts.as_slice() {
        [root] if root == "lib" || root == "main" => None,
        [front, sub, ..] if front == "frontend" && sub != "mod" => Some(format!("frontend::{sub}")),
        [top, ..] => Some(top.clone()),
        [] => None,
    }
}

/// The module a `crate::` path names, at the granularity of `ALLOWED`.
fn target_of(path: &str) -> String {
    let mut segments = path.split("::");
    let top = segments.next().unwrap_or_default();
    match (top, segments.next()) {
        ("frontend", Some(sub)) if !sub.is_empty() && sub.chars().all(is_ident) => {
            format!("frontend::{sub}")
        }
        _ => top.to_owned(),
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every module a line of code imports: `crate::a::b` paths (and the members of
/// `crate::{a, b::c}` groups), and the cache crate.
fn imports(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        // `tidegate_cache::` and other crates' `..._crate::` are not our `crate::`.
        let preceded = rest[..at].chars().next_back().is_some_and(is_ident);
        rest = &rest[at + "crate::".len()..];
        if preceded {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for member in group[..end].split(',') {
                let member = member.trim();
                if !member.is_empty() {
                    out.push(target_of(member));
                }
            }
        } else {
            let end = rest
                .find(|c: char| !(is_ident(c) || c == ':'))
                .unwrap_or(rest.len());
            out.push(target_of(&rest[..end]));
        }
    }
    if line.contains("tidegate_cache::") || line.contains("tidegate_cache;") {
        out.push("cache".to_owned());
    }
    out
}

/// The rule each import in `source` (a file of `module`) breaks, as `(line, message)`. Comments
/// and the test module at the bottom of a file (`#[cfg(test)] mod tests`) are not checked:
/// tests may reach lower layers to build fixtures.
fn violations(module: &str, source: &str) -> Vec<(usize, String)> {
    let allowed = ALLOWED
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, a)| *a)
        .unwrap_or_else(|| panic!("module {module} is missing from the allow-table"));
    let lines: Vec<&str> = source.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = line.trim_start();
        if code == "#[cfg(test)]"
            && lines[i + 1..]
                .iter()
                .find(|l| !l.trim().is_empty())
                .is_some_and(|l| l.trim_start().starts_with("mod "))
        {
            break;
        }
        if code.starts_with("//") {
            continue;
        }
        for target in imports(code) {
            let ok = target == module
                || LEAVES.contains(&target.as_str())
                || allowed.contains(&target.as_str());
            if !ok {
                out.push((
                    i + 1,
                    format!("{module} may not import {target} (may import: {allowed:?} + leaves)"),
                ));
            }
        }
    }
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_import_follows_the_allow_table() {
    let src = root().join("src");
    let mut broken = Vec::new();
    for file in rust_files(&src) {
        let rel = file.strip_prefix(&src).unwrap();
        // A `tests.rs` beside a module is that module's test code.
        if rel.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let Some(module) = module_of(rel) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, rule) in violations(&module, &text) {
            broken.push(format!("src/{}:{line}: {rule}", rel.display()));
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

#[test]
fn the_checker_catches_upward_and_sideways_imports() {
    let cases = [
        ("gateway", "use crate::daemon::unix_now;", true),
        ("gateway", "    let now = crate::daemon::unix_now();", true),
        ("store", "use crate::catalog::Catalog;", true),
        (
            "frontend::nfs",
            "use crate::frontend::fuse::FuseShare;",
            true,
        ),
        ("frontend::s3", "use crate::store::Bucket;", true),
        ("frontend::fuse", "use tidegate_cache::Cache;", true),
        (
            "scsi",
            "use crate::{gateway::block::BlockDevice, frontend::iscsi::Pdu};",
            true,
        ),
        ("gateway", "use crate::store::{Bucket, ChunkStore};", false),
        ("gateway", "use crate::clock::unix_secs;", false),
        ("frontend::iscsi", "use crate::scsi::LunMap;", false),
        ("frontend::nfs", "use crate::frontend::nfs::rpc;", false),
        (
            "gateway",
            "// crate::daemon is mentioned in a comment",
            false,
        ),
        (
            "gateway",
            "fn f() {}\n#[cfg(test)]\nmod tests {\n    use crate::daemon::Engine;\n}",
            false,
        ),
    ];
    for (module, source, broken) in cases {
        let found = violations(module, source);
        assert_eq!(!found.is_empty(), broken, "{module}: {source}: {found:?}");
    }
    let found = violations("gateway", "fn f() {}\nuse crate::daemon::unix_now;");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, 2, "line number");
    assert!(
        found[0].1.contains("gateway may not import daemon"),
        "{found:?}"
    );
}

/// Files under src/ (outside `allowed`) that mention `needle` in code.
fn offenders(needle: &str, allowed: &[&str]) -> Vec<String> {
    let src = root().join("src");
    rust_files(&src)
        .into_iter()
        .filter(|p| {
            let rel = p.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            !allowed.iter().any(|a| rel.starts_with(a))
        })
        .filter(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .any(|l| l.contains(needle))
        })
        .map(|p| p.display().to_string())
        .collect()
}

#[test]
fn only_store_talks_to_the_bucket_and_holds_crypto() {
    for krate in [
        "object_store::",
        "aws_lc_rs::",
        "aes_gcm::",
        "blake3::",
        "lz4_flex::",
        "argon2::",
    ] {
        // The device endpoint's TLS names rustls's aws-lc-rs provider and hashes its
        // certificate: transport security, not the at-rest crypto this rule keeps in store/.
        // And the device implements object_store's trait over its own sealed data set, so a
        // file share can run on it (ADR 0009); it talks to no bucket.
        let allowed: &[&str] = if krate == "aws_lc_rs::" {
            &["store/", "frontend/s3/tls.rs"]
        } else if krate == "object_store::" {
            &["store/", "gateway/import/objects.rs"]
        } else {
            &["store/"]
        };
        let bad = offenders(krate, allowed);
        assert!(bad.is_empty(), "{krate} used outside store/: {bad:?}");
    }
}

#[test]
fn only_catalog_holds_sql() {
    let bad = offenders("rusqlite", &["catalog/"]);
    assert!(bad.is_empty(), "rusqlite used outside catalog/: {bad:?}");
}

#[test]
fn the_cache_crate_knows_nothing_of_tidegate() {
    for file in rust_files(&root().join("cache/src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("tidegate::"), "{}", file.display());
    }
    let manifest = std::fs::read_to_string(root().join("cache/Cargo.toml")).unwrap();
    assert!(
        !manifest.contains("tidegate ="),
        "cache crate depends on tidegate"
    );
}
