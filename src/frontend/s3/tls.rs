//! HTTPS for the device's S3 endpoint: a self-signed certificate made at unlock and the rustls
//! acceptor that serves it.
//!
//! Every unlock makes a fresh ECDSA P-256 key that lives only in this process's memory (it is
//! never written anywhere); only the certificate goes to disk, so that clients can trust it
//! (`aws --ca-bundle`, `s3cmd --ca-certs`, boto3 `verify=`). The certificate names the listen
//! address, `localhost` and the names the operator adds. Must not: read or write anything but the
//! certificate it is handed back. rustls runs on the aws-lc-rs provider the bucket client already
//! links, named explicitly so that enabling another provider elsewhere cannot change it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A client gets this long to finish its handshake; one that stalls holds only its own task.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "{name:?} is neither an IP address nor a DNS name (letters, digits, '-' and '.') for the certificate"
    )]
    BadName { name: String },
    #[error("making the endpoint's certificate")]
    Certificate(#[source] rcgen::Error),
    #[error("setting up TLS with the endpoint's certificate")]
    Config(#[source] rustls::Error),
}

/// This unlock's certificate and the acceptor holding its key.
#[derive(Clone)]
pub struct EndpointTls {
    pub(crate) acceptor: TlsAcceptor,
    cert_pem: String,
    fingerprint: String,
}

impl std::fmt::Debug for EndpointTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointTls")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl EndpointTls {
    /// A self-signed certificate for `listen` (left out when it is the unspecified address,
    /// which no client dials), `localhost` and `names` (IP addresses or DNS names).
    pub fn self_signed(listen: IpAddr, names: &[String], job: &str) -> Result<Self, TlsError> {
        let mut params = CertificateParams::default();
        let mut sans = Vec::new();
        if !listen.is_unspecified() {
            sans.push(SanType::IpAddress(listen));
        }
        for name in std::iter::once("localhost").chain(names.iter().map(String::as_str)) {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) if is_dns_name(name) => {
                    SanType::DnsName(name.try_into().map_err(|_| TlsError::BadName {
                        name: name.to_owned(),
                    })?)
                }
                Err(_) => {
                    return Err(TlsError::BadName {
                        name: name.to_owned(),
                    });
                }
            };
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        params.subject_alt_names = sans;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "tidegate device");
        dn.push(DnType::CommonName, format!("tidegate device, job {job}"));
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        // Valid from a day back (clocks on site may lag) for ten years: the certificate lives
        // as long as one unlock, and an expiry mid-transfer would be worse than a long one.
        let now = crate::clock::since_epoch();
        params.not_before = rcgen::date_time_ymd(1970, 1, 1) + now - Duration::from_secs(86_400);
        params.not_after = params.not_before + Duration::from_secs(10 * 365 * 86_400);
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(TlsError::Certificate)?;
        let cert = params.self_signed(&key).map_err(TlsError::Certificate)?;
        let fingerprint = fingerprint(cert.der());
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key_der)
            .map_err(TlsError::Config)?;
        // The endpoint speaks HTTP/1.1 only (frontend/s3 serves hyper's http1).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(EndpointTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cert_pem: cert.pem(),
            fingerprint,
        })
    }

    /// The certificate (no key) in PEM, for the clients' CA bundle.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 of the certificate's DER, colon-separated upper-case hex as `openssl x509
    /// -fingerprint -sha256` prints it, so an operator can compare the two by eye.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// RFC 1123 host names: labels of letters, digits and hyphens, not starting or ending with one.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_sans_and_bad_names_are_refused() {
        let tls = EndpointTls::self_signed(
            "10.1.2.3".parse().unwrap(),
            &["device.example".into(), "192.168.7.7".into()],
            "job1",
        )
        .unwrap();
        assert!(tls.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!tls.cert_pem().contains("PRIVATE KEY"));
        assert_eq!(tls.fingerprint().len(), 32 * 3 - 1);
        for bad in ["bad name", "dévice", "-x.example", "a..b", ""] {
            let err = EndpointTls::self_signed("0.0.0.0".parse().unwrap(), &[bad.into()], "job1")
                .unwrap_err();
            assert!(matches!(err, TlsError::BadName { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn every_unlock_gets_a_fresh_key() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = EndpointTls::self_signed(ip, &[], "j").unwrap();
        let b = EndpointTls::self_signed(ip, &[], "j").unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
