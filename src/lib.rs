//! tidegate: one daemon that turns a machine into a gateway between on-premise clients and an
//! S3-compatible bucket.
//!
//! The module tree is the layer diagram (docs/design.md §1); dependencies point down only:
//!
//! ```text
//!  cli ─▶ daemon ─▶ frontend/{nfs,fuse,s3,api} ────────▶ gateway ─▶ tidegate-cache
//!                   frontend/iscsi ─▶ scsi (SBC|SSC|SMC) ─▶  │
//!                                                            ├─▶ store   (codec, bucket I/O)
//!                                                            └─▶ catalog (SQLite; the only SQL)
//!  config, clock, error_chain and percent: leaves anyone may use
//! ```
//!
//! `daemon` is the composition root that wires them together; `tests/it/layering.rs` holds the
//! allow-table (also in CONTRIBUTING.md) and fails on any import against these arrows.

pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod error_chain;
pub mod frontend;
pub mod gateway;
pub mod percent;
pub mod scsi;
pub mod store;
