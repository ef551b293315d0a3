//! The bucket store against a real S3 server (Garage): the contract suite, and the one-line
//! errors an operator gets for an unreachable endpoint, a missing bucket and bad credentials.

use crate::support::garage::Garage;
use crate::support::{error_lines, free_port, run, stderr, tidegate};
use std::os::unix::fs::PermissionsExt;

use tidegate::store::{Bucket, StoreError, contract};

#[test]
fn garage_passes_the_store_contract() {
    let garage = Garage::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cfg = garage.bucket_config("contract-prefix");
    // Small parts so the multipart path is exercised without a huge object.
    cfg.multipart_threshold = 5 << 20;
    cfg.part_size = 5 << 20;
    let bucket = std::sync::Arc::new(Bucket::open(&cfg, false).unwrap());
    rt.block_on(async {
        bucket.check().await.unwrap();
        contract::objects(&bucket, "garage", 12 << 20)
            .await
            .unwrap();
        contract::chunks(bucket.clone()).await.unwrap();
    });
    // The prefix really scopes the objects: nothing landed at the bucket root.
    let root = garage.open_bucket("");
    let stray = rt.block_on(root.list("contract/")).unwrap();
    assert!(stray.is_empty(), "{stray:?}");
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

    let mut closed = garage.bucket_config("");
    closed.endpoint = Some(format!("http://127.0.0.1:{}", free_port()));
    let err = rt
        .block_on(Bucket::open(&closed, false).unwrap().check())
        .unwrap_err();
    assert!(matches!(err, StoreError::Unreachable { .. }), "{err}");

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
