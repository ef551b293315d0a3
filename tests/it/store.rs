//! The bucket store against the real S3 servers (Garage, moto, Ceph RGW): the contract suite on
//! each, and the one-line errors an operator gets for an unreachable endpoint, a missing bucket
//! and bad credentials.

use crate::support::garage::Garage;
use crate::support::moto::Moto;
use crate::support::rgw::Rgw;
use crate::support::s3::S3Server;
use crate::support::{error_lines, free_port, run, stderr, tidegate};
use std::os::unix::fs::PermissionsExt;

use tidegate::store::{Bucket, StoreError, contract};

/// The contract suite (src/store/contract.rs) through a prefix of the server's bucket;
/// `conditional` is whether the server honours If-None-Match and If-Match on PUT
/// (docs/compatibility.md).
pub(crate) fn passes_the_store_contract(server: &dyn S3Server, conditional: bool) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cfg = server.bucket_config("contract-prefix");
    // Small parts so the multipart path is exercised without a huge object.
    cfg.multipart_threshold = 5 << 20;
    cfg.part_size = 5 << 20;
    let bucket = std::sync::Arc::new(Bucket::open(&cfg, false).unwrap());
    rt.block_on(async {
        bucket.check().await.unwrap();
        contract::objects(&bucket, server.name(), 12 << 20)
            .await
            .unwrap();
        assert_eq!(
            contract::conditional_create(&bucket, server.name()).await,
            Ok(conditional),
            "{}: conditional create",
            server.name()
        );
        contract::chunks(bucket.clone()).await.unwrap();
        contract::catalog_copy_race(bucket.clone(), conditional)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", server.name()));
    });
    let race = server.open_bucket("contract-pairing");
    rt.block_on(contract::pairing_race(&race, conditional))
        .unwrap_or_else(|e| panic!("{}: {e}", server.name()));
    // The prefix really scopes the objects: nothing landed at the bucket root.
    let root = server.open_bucket("");
    let stray = rt.block_on(root.list("contract/")).unwrap();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn garage_passes_the_store_contract() {
    passes_the_store_contract(&Garage::start(), false);
}

#[test]
fn moto_passes_the_store_contract() {
    passes_the_store_contract(&*Moto::start(), true);
}

#[test]
fn rgw_passes_the_store_contract() {
    passes_the_store_contract(&*Rgw::start(), true);
}

/// The suite sees a difference a server might have: the same moto bucket seen through a wrapper
/// whose multipart ETags lack `-<parts>` fails the contract, naming the ETag.
#[test]
fn an_injected_multipart_etag_difference_fails_the_contract() {
    let moto = Moto::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cfg = moto.bucket_config("injected");
    cfg.multipart_threshold = 5 << 20;
    cfg.part_size = 5 << 20;
    let bucket = contract::with_unsuffixed_multipart_etags(&cfg).unwrap();
    let err = rt
        .block_on(contract::objects(&bucket, "injected", 12 << 20))
        .unwrap_err();
    assert!(err.starts_with("multipart ETag"), "{err}");
}

#[test]
fn bucket_errors_are_one_clear_line() {
    let garage = Garage::start();
    let rt = tokio::runtime::Runtime::new().unwrap();

    let mut missing = garage.bucket_config("");
    missing.location = tidegate::config::BucketLocation::S3 {
        bucket: "no-such-bucket".into(),
        prefix: String::new(),
    };
    let err = rt
        .block_on(Bucket::open(&missing, false).unwrap().check())
        .unwrap_err();
    assert!(matches!(err, StoreError::NoSuchBucket { .. }), "{err}");

    let mut bad_secret = garage.bucket_config("");
    bad_secret.credentials = tidegate::config::Credentials::Static {
        access_key_id: garage.access_key.clone(),
        secret_access_key: "0".repeat(64),
    };
    let err = rt
        .block_on(Bucket::open(&bad_secret, false).unwrap().check())
        .unwrap_err();
    assert!(matches!(err, StoreError::AccessDenied { .. }), "{err}");

    // Any closed port, and one whose number reads "403" (a port of 14031 once made a refused
    // connection read as access denied).
    // Below `free_port`'s range and the ephemeral ports, so no other test listens there.
    let port_403 = (4030..4040)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in 4030-4039");
    for port in [free_port(), port_403] {
        let mut closed = garage.bucket_config("");
        closed.endpoint = Some(format!("http://127.0.0.1:{port}"));
        let err = rt
            .block_on(Bucket::open(&closed, false).unwrap().check())
            .unwrap_err();
        assert!(matches!(err, StoreError::Unreachable { .. }), "{err}");
    }

    // The same three through the CLI: exit 1 and exactly one error line saying what is wrong.
    let dir = tempfile::tempdir().unwrap();
    let creds = garage.credentials_file(dir.path());
    let bad_creds = dir.path().join("bad-creds.toml");
    std::fs::write(
        &bad_creds,
        format!(
            "access_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
            garage.access_key,
            "1".repeat(64)
        ),
    )
    .unwrap();
    std::fs::set_permissions(&bad_creds, PermissionsExt::from_mode(0o600)).unwrap();
    let closed = format!("http://127.0.0.1:{}", free_port());
    let cases = [
        (
            "s3://no-such-bucket",
            &garage.endpoint,
            &creds,
            "does not exist",
        ),
        ("s3://tidegate-test", &closed, &creds, "unreachable"),
        (
            "s3://tidegate-test",
            &garage.endpoint,
            &bad_creds,
            "access denied",
        ),
    ];
    for (i, (url, endpoint, creds, want)) in cases.into_iter().enumerate() {
        let out = run(tidegate(&dir.path().join(format!("d{i}")))
            .args(["activate", "--bucket", url, "--endpoint", endpoint])
            .args(["--region", "garage", "--credentials-file"])
            .arg(creds));
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let lines = error_lines(&out);
        assert_eq!(lines.len(), 1, "{}", stderr(&out));
        assert!(lines[0].contains(want), "{}", lines[0]);
    }
}
