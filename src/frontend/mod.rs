//! Front ends: each speaks one protocol and calls `gateway` (or `scsi`), never another front end.

pub mod api;
pub mod fuse;
pub mod iscsi;
pub mod nfs;
pub mod s3;
