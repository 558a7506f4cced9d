//! TLS for `mqtts://`: a rustls client configuration on the `ring` provider.
//!
//! Built again before every connection attempt, so a renewed certificate or
//! a key made readable is picked up without a restart, and an unreadable
//! file is one clear log line per attempt rather than a bridge that never
//! starts. TLS 1.2 and 1.3 only (rustls has nothing older); the broker's
//! name is checked against its certificate by rustls (rumqttc passes the
//! URL's host as the server name).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::config::MqttBridgeConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} holds no PEM certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("key_file {0} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(PathBuf),
    #[error("no trusted CA certificates: the system store (/etc/ssl/certs) is empty or unreadable; install ca-certificates or set ca_file")]
    NoRoots,
    #[error("the client certificate and key are not usable together: {0}")]
    ClientAuth(rustls::Error),
    #[error("TLS setup: {0}")]
    Setup(rustls::Error),
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The client configuration for `cfg` (an `mqtts://` bridge).
pub fn client_config(cfg: &MqttBridgeConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            let (added, _) = roots.add_parsable_certificates(certs("ca_file", path)?);
            if added == 0 {
                return Err(TlsError::NoCertificate {
                    what: "ca_file",
                    path: path.clone(),
                });
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(TlsError::NoRoots);
            }
        }
    }
    // ring, not aws-lc-rs: no C toolchain beyond cc, no cmake. rustls 0.23.48
    // deprecates it only for lacking post-quantum key exchange, which MQTT
    // brokers do not offer widely yet.
    #[allow(deprecated)]
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Setup)?
            .with_root_certificates(roots);
    let config = match (&cfg.cert_file, &cfg.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certs("cert_file", cert)?;
            let pem = read("key_file", key)?;
            let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut pem.as_slice())
                .ok()
                .flatten()
                .ok_or_else(|| TlsError::NoKey(key.clone()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(TlsError::ClientAuth)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A connection error in words an operator can act on: rumqttc wraps the
/// TLS cause in I/O errors, so walk the chain for the rustls error.
pub fn describe(e: &(dyn std::error::Error + 'static), host: &str) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as R};
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<R>() {
            let what = match r {
                R::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
                    "the broker's certificate has expired".to_string()
                }
                R::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
                    "the broker's certificate is not valid yet".to_string()
                }
                R::InvalidCertificate(C::UnknownIssuer) => {
                    "the broker's certificate is not signed by a trusted CA (ca_file, or the system store)"
                        .to_string()
                }
                R::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                    format!("the broker's certificate is not valid for the name '{host}' in the url")
                }
                R::InvalidCertificate(c) => format!("the broker's certificate is not acceptable: {c:?}"),
                R::AlertReceived(A::CertificateRequired | A::HandshakeFailure | A::BadCertificate) => {
                    format!("the broker refused the TLS handshake ({r}); does it require a client certificate (cert_file, key_file) it trusts?")
                }
                R::AlertReceived(A::CertificateExpired) => {
                    "the broker refused our client certificate: it has expired".to_string()
                }
                R::AlertReceived(A::UnknownCA) => {
                    "the broker does not trust our client certificate's CA".to_string()
                }
                other => format!("TLS: {other}"),
            };
            return format!("{what} [{e}]");
        }
        // io::Error::source() skips the error it wraps; look inside.
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            cur = Some(inner);
            continue;
        }
        cur = err.source();
    }
    e.to_string()
}
