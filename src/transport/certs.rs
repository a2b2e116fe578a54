//! The relay's certificate, live: one resolver serves the WebTransport, raw QUIC and HTTPS
//! listeners, so a renewed or replaced certificate is used by every new handshake while open
//! sessions go on with the one they began with (nothing is rebound or dropped).
//!
//! [`watch`] looks again every `cert_check_interval_ms`: a generated development certificate
//! is renewed when under [`super::tls::RENEW_BEFORE`] of its life remains (it lives 13 days,
//! so a relay running for weeks would otherwise serve an expired one), and configured PEM
//! files are reloaded when their certificate changed (a CA renewal). A file that does not load
//! is logged and the current certificate kept.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use super::tls::{Identity, TlsError};

/// Where the certificate comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Generated into this directory, renewed near expiry.
    Dev(PathBuf),
    /// Configured PEM files (`tls_cert`, `tls_key`), used as they are.
    Files { cert: PathBuf, key: PathBuf },
}

/// What clients are told about the certificate in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Lowercase hex SHA-256 of the leaf.
    pub sha256: String,
    /// Whether it is a generated development certificate.
    pub generated: bool,
    /// Whether browsers should pin it with `serverCertificateHashes`: a self-signed leaf valid
    /// for at most 14 days (the only kind they accept that way). A CA-issued certificate is
    /// verified by the browser as any HTTPS site is, and must not be pinned.
    pub pin: bool,
    /// When it expires, if known.
    pub not_after: Option<SystemTime>,
}

struct Current {
    key: Arc<CertifiedKey>,
    facts: Facts,
    /// SHA-256 over the whole chain and the key: a change to any of them is a new identity
    /// (an intermediate replaced alone, a chain first read half-written).
    fingerprint: [u8; 32],
}

fn fingerprint(identity: &Identity) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for cert in &identity.chain {
        h.update((cert.len() as u64).to_be_bytes());
        h.update(cert.as_ref());
    }
    h.update(identity.key.secret_der());
    h.finalize().into()
}

/// The certificate in use, shared by every listener. Cheap to clone.
#[derive(Clone)]
pub struct Certificates {
    source: Source,
    current: Arc<RwLock<Current>>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("source", &self.source)
            .field("facts", &self.facts())
            .finish()
    }
}

/// The longest validity browsers accept for a certificate pinned by hash.
const PIN_MAX_VALIDITY: Duration = Duration::from_secs(14 * 24 * 3600);

fn current(identity: &Identity) -> Result<Current, TlsError> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signer = provider
        .key_provider
        .load_private_key(identity.key.clone_key())?;
    let key = Arc::new(CertifiedKey::new(identity.chain.clone(), signer));
    key.keys_match()?;
    let pin = identity.chain.first().is_some_and(|leaf| {
        x509_parser::parse_x509_certificate(leaf.as_ref()).is_ok_and(|(_, c)| {
            let v = c.validity();
            let valid_secs = v.not_after.timestamp() - v.not_before.timestamp();
            c.issuer() == c.subject() && valid_secs <= PIN_MAX_VALIDITY.as_secs() as i64
        })
    });
    Ok(Current {
        key,
        facts: Facts {
            sha256: identity.sha256_hex(),
            generated: identity.generated,
            pin,
            not_after: identity.not_after,
        },
        fingerprint: fingerprint(identity),
    })
}

impl Certificates {
    /// Loads (or generates) the certificate from `source`.
    pub fn load(source: Source) -> Result<Self, TlsError> {
        let identity = Self::read(&source)?;
        Ok(Self {
            current: Arc::new(RwLock::new(current(&identity)?)),
            source,
        })
    }

    fn read(source: &Source) -> Result<Identity, TlsError> {
        match source {
            Source::Dev(dir) => Identity::dev(dir),
            Source::Files { cert, key } => Identity::load(cert, key),
        }
    }

    /// The certificate's facts now.
    pub fn facts(&self) -> Facts {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .facts
            .clone()
    }

    /// Looks at the source again (renewing a development certificate near its end). Returns
    /// the new facts if the certificate changed.
    pub fn reload(&self) -> Result<Option<Facts>, TlsError> {
        let identity = Self::read(&self.source)?;
        let same = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .fingerprint
            == fingerprint(&identity);
        if same {
            return Ok(None);
        }
        let next = current(&identity)?;
        let facts = next.facts.clone();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(Some(facts))
    }

    /// The resolver every listener's TLS configuration uses.
    pub fn resolver(&self) -> Arc<dyn ResolvesServerCert> {
        Arc::new(Resolver(self.current.clone()))
    }
}

#[derive(Debug)]
struct Resolver(Arc<RwLock<Current>>);

impl std::fmt::Debug for Current {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.facts.fmt(f)
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).key.clone())
    }
}

/// Reloads `certs` every `every` until `shutdown`.
pub async fn watch(certs: Certificates, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        // Generating a key and writing files is blocking work.
        let c = certs.clone();
        match tokio::task::spawn_blocking(move || c.reload()).await {
            Ok(Ok(Some(facts))) => {
                tracing::info!(sha256 = %facts.sha256, generated = facts.generated, "certificate replaced; new handshakes use it")
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "certificate reload failed; the current one stays")
            }
            Err(e) => tracing::warn!(error = %e, "certificate reload task failed"),
        }
    }
}
