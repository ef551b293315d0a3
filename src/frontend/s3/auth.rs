//! SigV4 credentials: the device's one key pair (derived from the job key at unlock). s3s
//! verifies the signature with the secret handed back here; an unknown access key is
//! AccessDenied (as the commercial device answers), a wrong secret SignatureDoesNotMatch, both
//! 403.

use s3s::S3Result;
use s3s::auth::{S3Auth, SecretKey};

pub struct DeviceAuth {
    access_key: String,
    secret: SecretKey,
}

impl DeviceAuth {
    pub fn new(access_key: String, secret: String) -> Self {
        Self {
            access_key,
            secret: SecretKey::from(secret),
        }
    }
}

#[async_trait::async_trait]
impl S3Auth for DeviceAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        if access_key == self.access_key {
            Ok(self.secret.clone())
        } else {
            Err(s3s::s3_error!(
                AccessDenied,
                "the access key is not this device's"
            ))
        }
    }
}
