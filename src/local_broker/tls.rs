//! A broker listener's `tls:`: its certificate and key, and optionally the CA whose client
//! certificates it requires (mutual TLS). rustls with ring, as the bridge uses, so the ARM cross
//! builds need no cmake or aws-lc; files are read when the config is checked.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use crate::pem::{read_certs, read_key};
use crate::settings::Problems;

/// `broker.listeners[].tls`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// PEM certificate chain the listener presents (the server's first).
    pub cert: PathBuf,
    /// Its PEM private key.
    pub key: PathBuf,
    /// PEM CA certificate(s): when given, a client must present a certificate one of them signed.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// A listener's TLS settings and the rustls configuration built from them.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub settings: ListenerTls,
    pub config: Arc<rustls::ServerConfig>,
}

/// Same files, same TLS (a reload cannot tell renewed file contents; a restart reads them again).
impl PartialEq for ServerTls {
    fn eq(&self, other: &Self) -> bool {
        self.settings == other.settings
    }
}

impl ListenerTls {
    /// The server configuration, or the problems at their keys (relative to `tls:`).
    pub fn server_config(&self, p: &mut Problems) -> Option<ServerTls> {
        let chain = read_certs(&self.cert, "cert", p);
        let key = read_key(&self.key, "key", p);
        let builder = match rustls::ServerConfig::builder_with_provider(crate::pem::crypto())
            .with_safe_default_protocol_versions()
        {
            Ok(b) => b,
            Err(e) => {
                p.add("", format!("TLS setup failed: {e}"));
                return None;
            }
        };
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in read_certs(path, "client_ca", p)? {
                    if let Err(e) = roots.add(c) {
                        p.add("client_ca", format!("{}: not a usable CA certificate: {e}", path.display()));
                        return None;
                    }
                }
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::pem::crypto());
                match verifier.build() {
                    Ok(v) => builder.with_client_cert_verifier(v),
                    Err(e) => {
                        p.add("client_ca", format!("{}: {e}", path.display()));
                        return None;
                    }
                }
            }
        };
        let config = match builder.with_single_cert(chain?, key?) {
            Ok(c) => c,
            Err(e) => {
                p.add("key", format!("does not fit `cert`: {e}"));
                return None;
            }
        };
        Some(ServerTls { settings: self.clone(), config: Arc::new(config) })
    }
}
