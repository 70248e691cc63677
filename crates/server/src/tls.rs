//! TLS for the client listener (rustls), with the certificate reloaded on SIGHUP.
//!
//! A reload swaps the certificate that *new* handshakes get; connections already established keep the
//! keys they negotiated and are not touched, so renewing a certificate (certbot, cert-manager) drops
//! nobody. A reload that fails (a half-written file, a key that does not match) keeps the previous
//! certificate and says why in the log.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsAcceptor;

/// The `[tls]` section. TLS is on when both files are set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Checks the two keys go together (the files themselves are read at start).
    pub fn validate(&self) -> Result<(), String> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => Err("[tls] cert_file is set but key_file is not".into()),
            (None, Some(_)) => Err("[tls] key_file is set but cert_file is not".into()),
            _ => Ok(()),
        }
    }
}

/// Why the certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("[tls] {key} {path:?}: {message}")]
    File {
        /// `cert_file` or `key_file`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The key does not fit the certificate, or rustls refused them.
    #[error("[tls] the key in {key:?} cannot serve the certificate in {cert:?}: {message}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        message: String,
    },
}

/// The certificate in use, swappable.
struct Reloadable {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for Reloadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloadable")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read()))
    }
}

/// The TLS side of the client listener.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    certs: Arc<Reloadable>,
}

impl Tls {
    /// Loads the certificate and key named by `config` (both must be set).
    pub fn new(config: &TlsConfig) -> Result<Self, TlsError> {
        let (Some(cert_file), Some(key_file)) = (&config.cert_file, &config.key_file) else {
            return Err(TlsError::File {
                key: "cert_file",
                path: PathBuf::new(),
                message: "both cert_file and key_file must be set".into(),
            });
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = load(cert_file, key_file, &provider)?;
        let certs = Arc::new(Reloadable {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            provider: Arc::clone(&provider),
            current: RwLock::new(Arc::new(current)),
        });
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Mismatch {
                cert: cert_file.clone(),
                key: key_file.clone(),
                message: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&certs) as Arc<dyn ResolvesServerCert>);
        // WebSocket and the fallbacks run over HTTP/1.1; say so, so that clients do not try h2.
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            certs,
        })
    }

    /// Reads the files again; new handshakes get the new certificate. On error the old one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load(
            &self.certs.cert_file,
            &self.certs.key_file,
            &self.certs.provider,
        )?;
        *self.certs.current.write() = Arc::new(fresh);
        Ok(())
    }

    /// The acceptor for incoming connections.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("certs", &self.certs).finish()
    }
}

fn load(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let file_error = |key: &'static str, path: &Path, message: String| TlsError::File {
        key,
        path: path.to_owned(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| file_error("cert_file", cert_file, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error("cert_file", cert_file, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(
            "cert_file",
            cert_file,
            "no CERTIFICATE block found".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| file_error("key_file", key_file, e.to_string()))?;
    let mismatch = |message: String| TlsError::Mismatch {
        cert: cert_file.to_owned(),
        key: key_file.to_owned(),
        message,
    };
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| mismatch(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| mismatch(e.to_string()))?;
    Ok(certified)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.cert.pem()).unwrap();
        std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn loads_refuses_mismatches_and_keeps_the_old_certificate_on_a_bad_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_a, key_a) = write_pair(dir.path(), "a");
        let (_cert_b, key_b) = write_pair(dir.path(), "b");
        let config = TlsConfig {
            cert_file: Some(cert_a.clone()),
            key_file: Some(key_a.clone()),
        };
        let tls = Tls::new(&config).unwrap();
        let mismatched = TlsConfig {
            cert_file: Some(cert_a.clone()),
            key_file: Some(key_b.clone()),
        };
        let e = Tls::new(&mismatched).unwrap_err().to_string();
        assert!(e.contains("cannot serve the certificate"), "{e}");
        // A half-written certificate: the reload fails and the old certificate stays in use.
        let before = Arc::clone(&tls.certs.current.read());
        std::fs::write(&cert_a, "-----BEGIN CERTIFICATE-----\ngarbage").unwrap();
        let e = tls.reload().unwrap_err().to_string();
        assert!(e.contains("cert_file"), "{e}");
        assert!(Arc::ptr_eq(&before, &tls.certs.current.read()));
        let missing = TlsConfig {
            cert_file: Some(dir.path().join("nope.crt")),
            key_file: Some(key_a),
        };
        assert!(
            Tls::new(&missing)
                .unwrap_err()
                .to_string()
                .contains("nope.crt")
        );
    }

    #[test]
    fn both_files_or_neither() {
        let half = TlsConfig {
            cert_file: Some("a".into()),
            key_file: None,
        };
        assert!(half.validate().unwrap_err().contains("key_file"));
        assert!(TlsConfig::default().validate().is_ok());
        assert!(!TlsConfig::default().enabled());
    }
}
