//! `upstream.tls:` and the rustls client configuration built from it: the CA roots (a file or the
//! system's), and a client certificate for brokers that require mutual TLS.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use crate::pem::{read_certs, read_key};
use crate::settings::Problems;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// PEM file of the CA(s) that signed the broker's certificate; without it the system's roots
    /// (`/etc/ssl/certs`) are used.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) and its private key, for brokers that require mutual TLS
    /// (AWS IoT Core does).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings { enabled: true, ca_file: None, client_cert: None, client_key: None }
    }
}

fn yes() -> bool {
    true
}

impl TlsSettings {
    /// Builds the rustls client configuration now, so a missing or unreadable certificate is a config
    /// error at `check` time, located at its key (relative to `tls:`), rather than a reconnect loop later.
    pub fn client_config(&self, p: &mut Problems) -> Option<Arc<rustls::ClientConfig>> {
        client_config(self, p)
    }
}

fn client_config(raw: &TlsSettings, p: &mut Problems) -> Option<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match &raw.ca_file {
        Some(path) => {
            let certs = read_certs(path, "ca_file", p)?;
            for c in certs {
                if let Err(e) = roots.add(c) {
                    p.add("ca_file", format!("{}: not a usable CA certificate: {e}", path.display()));
                    return None;
                }
            }
        }
        None => {
            // Unreadable entries in the system store are skipped, as OpenSSL does.
            let (added, _) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if added == 0 {
                p.add("", "no system CA certificates found (install `ca-certificates`) and no `ca_file` given");
                return None;
            }
        }
    }
    let builder =
        match rustls::ClientConfig::builder_with_provider(crate::pem::crypto()).with_safe_default_protocol_versions() {
            Ok(b) => b.with_root_certificates(roots),
            Err(e) => {
                p.add("", format!("TLS setup failed: {e}"));
                return None;
            }
        };
    let config = match (&raw.client_cert, &raw.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert, "client_cert", p)?;
            let key_der = read_key(key, "client_key", p)?;
            match builder.with_client_auth_cert(chain, key_der) {
                Ok(c) => c,
                Err(e) => {
                    p.add("client_key", format!("does not match `client_cert`: {e}"));
                    return None;
                }
            }
        }
        (Some(_), None) => {
            p.add("client_cert", "needs `client_key` as well");
            return None;
        }
        (None, Some(_)) => {
            p.add("client_key", "needs `client_cert` as well");
            return None;
        }
    };
    Some(Arc::new(config))
}
