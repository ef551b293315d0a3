//! tidegate's integration tests: one binary (one link step), real processes, real clients.
//! See docs/testing.md for what each module covers and how to run one test.

// All of this binary is test code, helpers included; a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod api;
mod appliance;
mod cli;
mod compat;
mod console;
mod device;
mod device_cluster;
mod device_cluster_import;
mod device_cluster_multipart;
mod device_cluster_replace;
mod device_export;
mod device_full;
mod device_functions;
mod device_nfs;
mod device_resume;
mod fuse;
mod hard_links;
mod iscsi_volume;
mod layering;
mod malformed;
mod nfs4;
mod nfs_guest;
mod nfs_share;
mod regression;
mod rpcbind;
mod snapshots;
mod special_files;
mod store;
mod stored_volumes;
mod support;
mod systemd;
mod volume_image;
mod vtl;
mod vtl_guest;
