//! The layer rules of docs/design.md §1 and CONTRIBUTING.md, checked on the source: only `store`
//! talks to the bucket and holds the crypto crates, only `catalog` holds SQL, the cache crate knows
//! nothing of tidegate, and no front end imports another.

use std::path::{Path, PathBuf};

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
fn gateway_knows_no_front_end_and_config_is_a_leaf() {
    let bad = offenders("crate::frontend", &["frontend/", "daemon/", "cli/"]);
    assert!(bad.is_empty(), "{bad:?}");
    let src = root().join("src/config");
    for file in rust_files(&src) {
        let text = std::fs::read_to_string(&file).unwrap();
        for layer in [
            "crate::store",
            "crate::catalog",
            "crate::gateway",
            "crate::daemon",
            "crate::cli",
        ] {
            assert!(!text.contains(layer), "{} imports {layer}", file.display());
        }
    }
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

#[test]
fn the_s3_front_end_speaks_only_gateway() {
    for file in rust_files(&root().join("src/frontend/s3")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for layer in [
            "crate::store",
            "crate::catalog",
            "tidegate_cache",
            "crate::frontend::nfs",
            "crate::frontend::fuse",
            "crate::frontend::iscsi",
            "crate::frontend::api",
            "crate::scsi",
        ] {
            assert!(!text.contains(layer), "{} imports {layer}", file.display());
        }
    }
}

#[test]
fn the_nfs_and_fuse_front_ends_speak_only_gateway() {
    let files = rust_files(&root().join("src/frontend/nfs"))
        .into_iter()
        .map(|f| (f, "crate::frontend::fuse"))
        .chain(
            rust_files(&root().join("src/frontend/fuse"))
                .into_iter()
                .map(|f| (f, "crate::frontend::nfs")),
        );
    for (file, sibling) in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for layer in [
            "crate::store",
            "crate::catalog",
            "tidegate_cache",
            "crate::frontend::iscsi",
            "crate::scsi",
            sibling,
        ] {
            assert!(!text.contains(layer), "{} imports {layer}", file.display());
        }
    }
}
