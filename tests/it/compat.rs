//! The compatibility suite (issue 21): the same checks against every real S3 server in the rig,
//! so a difference between servers shows up here rather than at a user's. For each of moto (AWS
//! S3's semantics) and Ceph RGW: the store contract (in store.rs), and one gateway smoke per
//! mode — volumes (written, cache lost, recovered and read back from the bucket, gc, snapshot
//! restored), a share (foreign objects refreshed, metadata round trip), a tape (shelved with its
//! tree hash, verified, retrieved) and a device import (every object verified by ETag). Garage
//! runs the same bodies in the modules they come from (and the tape smoke here). docs/compatibility.md lists what differs
//! between the servers and what tidegate does about it.

use crate::support::garage::Garage;
use crate::support::moto::Moto;
use crate::support::rgw::Rgw;

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
