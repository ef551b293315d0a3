//! The TOML configuration as an operator writes it: every key optional where a default exists,
//! unknown keys rejected so a typo is an error rather than a silently ignored setting.
//!
//! This is only the shape of the file; `config::Config` is what the rest of the program reads
//! after validation. `tidegate activate` writes this same shape, so what it writes always loads.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::size::ByteSize;

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewaySection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<BucketSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<DiskSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_buffer: Option<DiskSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iscsi: Option<IscsiSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<crate::config::bandwidth::BandwidthSection>,
    pub nfs: Option<NfsSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<LibrarySection>,
}

/// The virtual tape library (docs/tapes.md).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LibrarySection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drives: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail_slots: Option<u32>,
    /// The smallest tape `tape create` accepts (100 GiB; test rigs lower it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tape_size: Option<ByteSize>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// `ip:port` of the management API and /metrics; port 0 picks a free one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The bearer token file (created 0600 at first start if missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NfsSection {
    /// `ip:port` for NFS, MOUNT and the in-port portmapper; port 0 picks a free one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// NFSv4.1 lease and grace period, in seconds (default 90).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_secs: Option<u64>,
    /// NFSv4 id-mapping domain: owners go out as `uid@DOMAIN` (default: plain numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_domain: Option<String>,
    /// Portmapper/rpcbind for clients that look on port 111: `"off"`, `"on"` (port 111 on the
    /// listen address) or an `ip:port`. Absent: off, except in the embedded default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpcbind: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSection {
    /// How long a committed file stays idle before it is uploaded, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_delay_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IscsiSection {
    /// `ip:port` to listen on; port 0 picks a free one (reported in run/ready.toml).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The portal address given to initiators in discovery; required when `listen` is a
    /// wildcard address, since a wildcard is not reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// CHAP the initiator must pass (12 to 16 character secret), for every volume target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap_secret: Option<String>,
    /// Mutual CHAP: what the gateway proves itself with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_chap_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_chap_secret: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Catalog, run files and (by default) the key file, cache and upload buffer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BucketSection {
    /// `s3://bucket[/prefix]` or `file:///absolute/dir`.
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`); on by default when an endpoint is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    /// A TOML file with `access_key_id` and `secret_access_key`; without it (and without the
    /// inline keys) the usual AWS environment variables are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// Bytes per second; absent means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_limit: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_limit: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_timeout_secs: Option<u64>,
    /// Objects at least this large go up as multipart uploads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multipart_threshold: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_size: Option<ByteSize>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<ByteSize>,
}

/// The credentials file named by `bucket.credentials_file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsFile {
    pub access_key_id: String,
    pub secret_access_key: String,
}
