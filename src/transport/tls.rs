//! TLS material: the configured certificate, or a generated development certificate.
//!
//! Browsers accept a self-signed certificate through WebTransport's `serverCertificateHashes`
//! only if it is ECDSA P-256 and valid for at most 14 days. The generated one is valid for 13
//! days and is regenerated at start when fewer than [`RENEW_BEFORE`] remain.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Lifetime of a generated certificate (browsers refuse hashes of certificates over 14 days).
pub const DEV_CERT_LIFETIME: Duration = Duration::from_secs(13 * 24 * 3600);
/// A generated certificate with less than this left is replaced.
pub const RENEW_BEFORE: Duration = Duration::from_secs(3 * 24 * 3600);

const DEV_CERT_FILE: &str = "dev-cert.pem";
const DEV_KEY_FILE: &str = "dev-key.pem";

/// Errors loading or generating TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    /// Certificate generation failed.
    #[error("generating certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A certificate chain and its key, plus the SHA-256 of the leaf for `serverCertificateHashes`.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub sha256: [u8; 32],
    /// When the leaf expires, if it could be read.
    pub not_after: Option<SystemTime>,
    /// Whether this is a generated development certificate.
    pub generated: bool,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            sha256: self.sha256,
            not_after: self.not_after,
            generated: self.generated,
        }
    }
}

impl Identity {
    /// Lowercase hex SHA-256 of the leaf certificate.
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Loads configured PEM files as they are.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError::Pem {
                path: cert.to_owned(),
                reason: e.to_string(),
            })?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError::Pem {
                path: cert.to_owned(),
                reason: "no certificate found".into(),
            });
        };
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
            path: key.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            sha256: Sha256::digest(leaf.as_ref()).into(),
            not_after: not_after(leaf),
            chain,
            key,
            generated: false,
        })
    }

    /// Loads the development certificate from `dir`, generating it when missing or near expiry.
    pub fn dev(dir: &Path) -> Result<Self, TlsError> {
        let cert = dir.join(DEV_CERT_FILE);
        let key = dir.join(DEV_KEY_FILE);
        if let Ok(existing) = Self::load(&cert, &key) {
            let fresh = existing
                .not_after
                .and_then(|t| t.duration_since(SystemTime::now()).ok())
                .is_some_and(|left| left > RENEW_BEFORE);
            if fresh {
                return Ok(Self {
                    generated: true,
                    ..existing
                });
            }
        }
        generate(&cert, &key, DEV_CERT_LIFETIME)?;
        Ok(Self {
            generated: true,
            ..Self::load(&cert, &key)?
        })
    }
}

fn not_after(leaf: &CertificateDer<'_>) -> Option<SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let secs = cert.validity().not_after.timestamp();
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Writes a development certificate valid for `lifetime` into `dir` (where [`Identity::dev`]
/// reads it), replacing any there.
pub fn write_dev_cert(dir: &Path, lifetime: Duration) -> Result<(), TlsError> {
    generate(&dir.join(DEV_CERT_FILE), &dir.join(DEV_KEY_FILE), lifetime)
}

fn generate(cert_path: &Path, key_path: &Path, lifetime: Duration) -> Result<(), TlsError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + lifetime;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "roomcast development");
    let cert = params.self_signed(&key)?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Io { path, source }
    };
    if let Some(dir) = cert_path.parent() {
        private_dir(dir).map_err(io(dir))?;
    }
    // Each file replaced whole (written aside, then renamed): a reader never sees half of one.
    let aside = |p: &Path| p.with_extension("pem.new");
    write_private(&aside(key_path), key.serialize_pem().as_bytes()).map_err(io(key_path))?;
    std::fs::rename(aside(key_path), key_path).map_err(io(key_path))?;
    std::fs::write(aside(cert_path), cert.pem()).map_err(io(cert_path))?;
    std::fs::rename(aside(cert_path), cert_path).map_err(io(cert_path))?;
    Ok(())
}

/// Creates `dir` (and its parents) and makes it accessible to its owner only (0700): it holds
/// keys, the token secret or the database.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes a file readable only by its owner.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    opts.open(path)?.write_all(data)
}

/// A rustls server config offering `alpn`, with the certificate `certs` holds at each
/// handshake.
pub fn server_config(
    certs: &super::certs::Certificates,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(certs.resolver());
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.max_early_data_size = 0;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_browser_acceptable_certificate_and_reuses_it() {
        let dir = std::env::temp_dir().join(format!("roomcast-tls-{}", uuid::Uuid::new_v4()));
        let first = Identity::dev(&dir).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(first.chain[0].as_ref()).unwrap();
        let validity = cert.validity();
        let days = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86400;
        assert!(days < 14, "validity {days} days");
        assert_eq!(
            cert.public_key().algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
        let again = Identity::dev(&dir).unwrap();
        assert_eq!(first.sha256, again.sha256, "fresh certificate is reused");
        assert_eq!(first.sha256_hex().len(), 64);
        let certs =
            super::super::certs::Certificates::load(super::super::certs::Source::Dev(dir.clone()))
                .unwrap();
        assert!(certs.facts().pin && certs.facts().generated);
        server_config(&certs, &[b"h3"]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_files_give_a_clear_error() {
        let err = Identity::load(
            Path::new("/nonexistent/c.pem"),
            Path::new("/nonexistent/k.pem"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/c.pem"), "{err}");
    }
}
