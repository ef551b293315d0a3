//! The compatibility suite (issue 21): the same checks against every real S3 server in the rig,
//! so a difference between servers shows up here rather than at a user's. For each of moto (AWS
//! S3's semantics) and Ceph RGW: the store contract (in store.rs), and one gateway smoke per
//! mode — volumes (written, cache lost, recovered and read back from the bucket, gc, snapshot
//! restored), a share (foreign objects refreshed, metadata round trip), a tape (shelved with its
//! tree hash, verified, retrieved) and a device import (every object verified by ETag). Garage
//! runs the same bodies in the modules they come from (and the tape smoke here). docs/compatibility.md lists what differs
//! between the servers and what tidegate does about it.

use std::time::{Duration, Instant};

use crate::iscsi_volume::start;
use crate::support::activate_on;
use crate::support::garage::Garage;
use crate::support::moto::Moto;
use crate::support::rgw::Rgw;
use crate::support::s3::S3Server;
use crate::support::stderr;

macro_rules! smokes {
    ($server:ident, $start:expr) => {
        mod $server {
            use super::*;

            #[test]
            fn volumes_recover_gc_and_restore() {
                crate::snapshots::lost_gateway_recovered_then_gc(&*$start);
            }

            #[test]
            fn share_refresh_and_metadata_round_trip() {
                crate::nfs_share::foreign_objects_refresh_and_metadata_round_trip(&*$start);
            }

            #[test]
            fn tape_shelved_and_retrieved() {
                crate::vtl::tape_shelved_and_retrieved(&*$start);
            }

            #[test]
            fn device_import_verified() {
                crate::device::import_smoke(&*$start);
            }

            #[test]
            fn twin_daemons_the_older_is_told() {
                super::twin_daemons(&*$start, true);
            }
        }
    };
}

smokes!(moto, Moto::start());
smokes!(rgw, Rgw::start());

/// Garage runs the volume, share and device bodies in snapshots.rs, nfs_share.rs and device.rs;
/// its tape library test (vtl.rs) uses the embedded default, so the shelf on Garage runs here.
#[test]
fn garage_tape_shelved_and_retrieved() {
    crate::vtl::tape_shelved_and_retrieved(&Garage::start());
}

/// Garage ignores conditional writes: two daemons as one gateway go undetected there, as they
/// always have (docs/compatibility.md).
#[test]
fn garage_twin_daemons_go_undetected() {
    twin_daemons(&Garage::start(), false);
}

/// Generations of the catalog copies in the bucket under `prefix`.
fn copies(server: &dyn S3Server, prefix: &str) -> Vec<u64> {
    let bucket = server.open_bucket(prefix);
    let listed = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(bucket.list("gateway/"))
        .unwrap();
    let mut found: Vec<u64> = listed
        .iter()
        .filter_map(|o| tidegate::store::keys::parse_catalog_backup(&o.key).map(|(_, g)| g))
        .collect();
    found.sort_unstable();
    found
}

fn wait_for_copy_after(server: &dyn S3Server, prefix: &str, after: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(&g) = copies(server, prefix).iter().find(|&&g| g > after) {
            return g;
        }
        assert!(Instant::now() < deadline, "no catalog copy after {after}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The appliance is recovered from its bucket while the old one still runs: both are gateway
/// `<id>`. Where the server honours conditional writes (`conditional`), the recovered daemon
/// takes the catalog copies over and the old one, at its next copy (here its shutdown copy),
/// is refused, writes nothing and says which daemon has them. Where not, the old one's copy
/// lands as before.
pub(crate) fn twin_daemons(server: &dyn S3Server, conditional: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (old_data, new_data) = (dir.path().join("old"), dir.path().join("new"));
    let key = dir.path().join("gateway.key");
    let key_arg = key.to_str().unwrap().to_owned();
    let config = activate_on(
        server,
        dir.path(),
        &old_data,
        "twins",
        &["--key-file", &key_arg],
    );
    let old = start(&old_data, Some(&config));
    let first = wait_for_copy_after(server, "twins", 0);
    let out = crate::snapshots::recover(server, "twins", dir.path(), &new_data, &key);
    assert!(out.status.success(), "recover: {}", stderr(&out));
    let new = start(&new_data, Some(&new_data.join("tidegate.toml")));
    let taken = wait_for_copy_after(server, "twins", first);
    assert_eq!(old.stop(), Some(0));
    let log = std::fs::read_to_string(old_data.with_extension("log")).unwrap();
    let after = copies(server, "twins");
    let told = log.contains("catalog copies are now written by gateway \"")
        && log.contains("running since");
    if conditional {
        assert!(told, "the old daemon was not told: {log}");
        assert_eq!(
            after.last(),
            Some(&taken),
            "the old daemon still took a copy"
        );
    } else {
        assert!(!told, "{log}");
        assert!(
            after.last() > Some(&taken),
            "the old daemon's copy is missing"
        );
    }
    assert_eq!(new.stop(), Some(0));
}
