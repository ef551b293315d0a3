//! tidegate: one daemon that turns a machine into a gateway between on-premise clients and an
//! S3-compatible bucket.
//!
//! The module tree is the layer diagram (DESIGN §1); dependencies point down only:
//!
//! ```text
//!  cli ─▶ daemon ─▶ (frontend/* ─▶ scsi ─▶) gateway ─▶ tidegate-cache (crate)
//!                                             │
//!                                             ├─▶ store   (codec, keys, tree hash, bucket I/O)
//!                                             └─▶ catalog (SQLite; the only SQL)
//!  config and error types: leaves anyone may use
//! ```
//!
//! Front ends (NFS, FUSE, iSCSI, S3) arrive with their issues; this crate today holds the
//! engine they stand on.

pub mod catalog;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod frontend;
pub mod gateway;
pub mod scsi;
pub mod store;
