//! The TLS client of an OpenBao connection: the CA the human gave (its PEM text from the
//! sealed vault) or the system's root bundle, an optional client certificate read from PEM
//! files at each connection, and hints for TLS failures.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::dynamic::{DynamicError, DynamicSpec};

/// The system's root bundles (root-owned paths; see `broker::egress::tls`).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// What to do about a TLS failure (`reason`) reaching `host`.
pub(super) fn tls_hint(reason: &str, host: &str) -> String {
    if reason.contains("UnknownIssuer") || reason.contains("unknown issuer") {
        "the node's certificate is not signed by a CA keyveil trusts: give the cluster's CA certificate with `keyveil dynamic add ... --ca-file CA.pem` (replacing the variable asks for your factor)".into()
    } else if reason.contains("NotValidForName") || reason.contains("not valid for name") {
        format!(
            "the node's certificate does not name {host:?}: use the host name it was issued for in --address"
        )
    } else if reason.contains("Expired") || reason.contains("expired") {
        "the node's certificate has expired (or this machine's clock is wrong): ask the cluster's operator to renew it".into()
    } else if reason.contains("CertificateRequired")
        || reason.contains("certificate required")
        || reason.contains("BadCertificate")
        || reason.contains("bad certificate")
    {
        "the node wants a client certificate it accepts: give --client-cert and --client-key".into()
    } else {
        "check the address (https:// to a TLS listener, http:// to a plain one) and the CA given with --ca-file".into()
    }
}

/// The `ring` provider (the same stack as the egress proxy).
#[allow(deprecated)]
fn crypto() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS client for a spec: its CA (`ca_pem` option) or the system roots; its client
/// certificate (`client_cert`, `client_key`: PEM files).
pub(super) fn client_config(spec: &DynamicSpec) -> Result<Arc<rustls::ClientConfig>, DynamicError> {
    let cfg = |m: String| DynamicError::Config(m);
    let mut roots = rustls::RootCertStore::empty();
    match spec.opt("ca_pem") {
        Some(pem) => {
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let c = c.map_err(|e| cfg(format!("the OpenBao CA is not PEM: {e}")))?;
                roots
                    .add(c)
                    .map_err(|e| cfg(format!("the OpenBao CA certificate is unusable: {e}")))?;
            }
            if roots.is_empty() {
                return Err(cfg("the OpenBao CA file holds no certificate".into()));
            }
        }
        None => {
            for p in SYSTEM_BUNDLES {
                if let Ok(b) = std::fs::read(p) {
                    let certs: Vec<_> = CertificateDer::pem_slice_iter(&b).flatten().collect();
                    if !certs.is_empty() {
                        let _ = roots.add_parsable_certificates(certs);
                        break;
                    }
                }
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(crypto())
        .with_safe_default_protocol_versions()
        .map_err(|e| cfg(e.to_string()))?
        .with_root_certificates(roots);
    let mut c = match (spec.opt("client_cert"), spec.opt("client_key")) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let read = |p: &str, what: &str| {
                read_pem_file(p).map_err(|e| {
                    cfg(format!("cannot read the client {what} {p}: {e} (give it again with `keyveil dynamic add ... --client-{what} PATH`)"))
                })
            };
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(&read(cert, "cert")?)
                    .collect::<Result<_, _>>()
                    .map_err(|e| cfg(format!("the client certificate is not PEM: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(&read(key, "key")?)
                .map_err(|_| cfg("the client key is not a PEM private key".into()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| cfg(format!("the client certificate and key do not fit: {e}")))?
        }
        _ => {
            return Err(cfg("--client-cert and --client-key go together".into()));
        }
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// The most a client certificate or key file may hold.
const MAX_PEM_FILE: u64 = 1 << 20;

/// Reads a client certificate or key file (read at each connection, so whoever can write the
/// path decides what is there): a regular file of at most [`MAX_PEM_FILE`] bytes, opened
/// without blocking, outside `/proc`, `/sys` and `/dev`. A FIFO (which would block a broker
/// thread until some writer came), a device (`/dev/zero`: an endless read) or the broker's own
/// `/proc/self` files are refused. Symlinks are followed (certificate renewers use them).
fn read_pem_file(p: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let odd = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_owned());
    let canon = std::fs::canonicalize(p)?;
    if ["/proc", "/sys", "/dev"]
        .iter()
        .any(|root| canon.starts_with(root))
    {
        return Err(odd("it is under /proc, /sys or /dev, not a PEM file"));
    }
    let (f, m) = crate::pin::open_regular(&canon)
        .map_err(|_| odd("it is not a regular file (a FIFO, socket, device or directory)"))?;
    if m.len() > MAX_PEM_FILE {
        return Err(odd("it is larger than 1 MiB"));
    }
    let mut out = Vec::new();
    f.take(MAX_PEM_FILE + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_PEM_FILE {
        return Err(odd("it is larger than 1 MiB"));
    }
    Ok(out)
}
