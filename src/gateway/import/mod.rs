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
//!
//! Must not: know which protocol called it, talk to a bucket except through `store`, or keep the
//! job key anywhere but in memory. Invariant: an object is visible (listed, readable, in the
//! manifest) only once its segments are durable and its record committed; a job's data set
//! never changes after SEALED.

mod device;
mod etag;
mod export;
mod functions;
mod job;
mod manifest;
mod multipart;
mod objects;
mod record;
mod report;
mod segments;
mod share;
mod transfer;

pub use device::{Device, ListedObject, Listing, ObjectAttrs, ObjectInfo, PutResult, device_dir};
pub use export::{ExportOptions, ExportReport, open_export, run_export};
pub use functions::{
    FunctionError, FunctionRequest, FunctionSpec, FunctionsReport, Outcome, OutcomeStatus,
    install_function,
};
pub use job::{
    CreatedJob, JobKind, JobManifestFile, JobRequest, JobState, JobStatus, complete_job,
    create_job, job_status, unlock_job,
};
pub use manifest::ManifestCheck;
pub use multipart::{PartInfo, UploadInfo};
pub use objects::DeviceObjects;
pub use record::ExpectedDigests;
pub use report::{Failure, ReportRow};
pub use segments::{DigestMismatch, SegmentWriter};
pub use share::{DEFAULT_STAGING_ROOT, DeviceShare};
pub use transfer::{ImportOptions, ImportProgress, ImportReport, run_import};
