//! Bulk import/export jobs: the device mode (docs/design.md §7).
//!
//! A job is created with an unlock code and a manifest file (`job.rs`); both unlock the device
//! (`Device`, `device.rs`), whose data set clients fill through the S3 front end. Everything
//! the device keeps is sealed under the job key with the store's frame codec: object data in
//! segments (`segments.rs`), names and metadata in sealed records (`record.rs`). `seal` freezes
//! the data set and writes the HMAC-signed device manifest (`manifest.rs`); `transfer.rs`
//! imports it into the target bucket, verifying every object, and writes the report. The same
//! data set can be filled over NFS: `objects.rs` shows it as an object store and `share.rs`
//! runs a file-gateway share over that (docs/decisions/0009-device-nfs.md). An import job may
//! have a function on PUT (`functions.rs`): the operator's program, run in a sandbox for each
//! object stored, behind the PUT (docs/decisions/0015-functions-on-put-in-bubblewrap.md).
//! A device of a device cluster keeps its data set in the cluster's bucket (`cluster.rs`); it
//! seals for every device of the cluster (`seal.rs`) and imports in shares that meet in the
//! cluster with one report (`parts.rs`, docs/decisions/0017-cluster-seal-and-shared-import.md);
//! its multipart uploads' records live in the cluster too (`uploads.rs`), so any device carries
//! on an upload begun on another.
//!
//! Must not: know which protocol called it, talk to a bucket except through `store`, or keep the
//! job key anywhere but in memory. Invariant: an object is visible (listed, readable, in the
//! manifest) only once its segments are durable and its record committed; a job's data set
//! never changes after SEALED.

mod claim;
mod cluster;
mod device;
mod etag;
mod export;
mod functions;
mod job;
mod manifest;
mod multipart;
mod objects;
mod parts;
mod record;
mod report;
mod seal;
mod segments;
mod share;
mod transfer;
mod uploads;

pub use cluster::{ClusterLink, Members, QuorumLost, TableSync, WriteGate};
pub use device::{Device, ListedObject, Listing, ObjectAttrs, ObjectInfo, PutResult, device_dir};
pub use export::{ExportOptions, ExportReport, open_export, run_export};
pub use functions::{
    FunctionError, FunctionRequest, FunctionSpec, FunctionsReport, Outcome, OutcomeStatus,
    install_function,
};
pub use job::{
    CreatedJob, JobKind, JobManifestFile, JobRequest, JobState, JobStatus, adopt_job, check_unlock,
    complete_job, create_job, job_status, unlock_job, unlock_job_in,
};
pub use manifest::ManifestCheck;
pub use multipart::{PartInfo, UploadInfo, UploadRecordInvalid};
pub use objects::DeviceObjects;
pub use parts::{Share, ShareRun, ShareSummary};
pub use record::ExpectedDigests;
pub use report::{Failure, ReportRow};
pub use segments::{DigestMismatch, SegmentWriter};
pub use share::{DEFAULT_STAGING_ROOT, DeviceShare};
pub use transfer::{ImportOptions, ImportProgress, ImportReport, run_import};
pub use uploads::ForeignUploadObject;
