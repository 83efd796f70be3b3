//! PEM certificate and key files named in TLS settings, read when the config is checked: a missing,
//! unreadable or wrong file is a problem at its key, not a handshake failure at 3 a.m. Also the one
//! crypto provider both TLS ends (the upstream link, the broker's listeners) are built with.

use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::settings::Problems;

/// ring, named where each TLS config is built rather than left to rustls's process-wide default:
/// rmqtt's quinn puts rustls in the tree too, and a second provider enabled there would make the
/// default ambiguous (a panic at the first handshake). ring is C and assembly that Debian's cross gcc
/// builds; aws-lc-rs would need cmake and a C toolchain per target.
pub fn crypto() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

pub fn read_file(path: &Path, key: &str, p: &mut Problems) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) => {
            p.add(key, format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

/// Every certificate in a PEM file (at least one).
pub fn read_certs(path: &Path, key: &str, p: &mut Problems) -> Option<Vec<CertificateDer<'static>>> {
    let pem = read_file(path, key, p)?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_slice()).collect();
    match certs {
        Ok(c) if !c.is_empty() => Some(c),
        Ok(_) => {
            p.add(key, format!("{}: no PEM certificate found", path.display()));
            None
        }
        Err(e) => {
            p.add(key, format!("{}: not a PEM certificate file: {e}", path.display()));
            None
        }
    }
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn read_key(path: &Path, key: &str, p: &mut Problems) -> Option<PrivateKeyDer<'static>> {
    let pem = read_file(path, key, p)?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(k)) => Some(k),
        _ => {
            p.add(key, format!("{}: no PEM private key found", path.display()));
            None
        }
    }
}
