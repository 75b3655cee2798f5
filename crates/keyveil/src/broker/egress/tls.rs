//! The TLS side of a run's proxy: a CA minted for the run (its key never leaves the broker's
//! memory and dies with the run), leaf certificates minted per host and cached for the run, the
//! bundle the child trusts (system roots plus the run's CA), and the client configuration that
//! verifies upstream servers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The system's root certificate bundles, by the paths distributions install them at (root-
/// owned files; the broker's own environment, `SSL_CERT_FILE` included, is not read: an agent
/// that starts the broker could set it).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Errors of the TLS side, worded for the run's error reply.
pub(crate) type TlsError = String;

/// The ring provider: no C toolchain needed (aws-lc-rs, which adds post-quantum key exchange,
/// needs one); rustls marks its defaults deprecated for that reason only.
#[allow(deprecated)]
fn crypto() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's roots, as DER certificates and as the PEM text they came from.
pub(crate) fn system_roots() -> (Vec<CertificateDer<'static>>, String) {
    for p in SYSTEM_BUNDLES {
        if let Ok(text) = std::fs::read_to_string(p) {
            let certs: Vec<_> = CertificateDer::pem_slice_iter(text.as_bytes())
                .flatten()
                .collect();
            if !certs.is_empty() {
                return (certs, text);
            }
        }
    }
    (Vec::new(), String::new())
}

/// The client side towards upstream servers: the system roots plus `extra_pem` (the
/// environment's `egress-roots` policy, set with the human's factor), TLS 1.2 and 1.3; ALPN
/// offers HTTP/2 and HTTP/1.1 (the proxy speaks what the server picks).
pub(crate) fn upstream_config(
    system: &[CertificateDer<'static>],
    extra_pem: Option<&str>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let (_added, _ignored) = roots.add_parsable_certificates(system.iter().cloned());
    if let Some(pem) = extra_pem {
        for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let c =
                c.map_err(|e| format!("the egress-roots policy holds a bad certificate: {e}"))?;
            roots
                .add(c)
                .map_err(|e| format!("the egress-roots policy holds a bad certificate: {e}"))?;
        }
    }
    let mut c = ClientConfig::builder_with_provider(crypto())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// A CA for one run, and the leaf certificates it minted.
pub(crate) struct RunCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub(crate) cert_pem: String,
    cert_der: CertificateDer<'static>,
    leaves: Mutex<HashMap<String, Arc<ServerConfig>>>,
}

impl RunCa {
    /// Mints a CA (ECDSA P-256, path length 0: it signs leaves only; rcgen's default
    /// validity: the key is what bounds it, and it lives in the broker's memory for one run). Errors: key generation or signing failed.
    pub(crate) fn new(run_id: &str) -> Result<RunCa, TlsError> {
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        params.distinguished_name.push(
            DnType::CommonName,
            format!("keyveil egress CA for run {run_id}"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        Ok(RunCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The server configuration presenting a leaf for `host` (a name or an IP address),
    /// minted once per host and run; ALPN offers HTTP/2 and HTTP/1.1 to the child.
    pub(crate) fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, TlsError> {
        let mut leaves = self.leaves.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = leaves.get(host) {
            return Ok(c.clone());
        }
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params =
            CertificateParams::new(vec![host.to_owned()]).map_err(|e| e.to_string())?;
        params.distinguished_name.push(DnType::CommonName, host);
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| e.to_string())?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut c = ServerConfig::builder_with_provider(crypto())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), self.cert_der.clone()], key_der)
            .map_err(|e| e.to_string())?;
        c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let c = Arc::new(c);
        leaves.insert(host.to_owned(), c.clone());
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A TLS handshake in memory between a client trusting only `ca` and asking for `host`,
    /// and `server`; the error if it fails.
    fn handshake(ca: &RunCa, host: &str, server: Arc<ServerConfig>) -> Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der.clone()).unwrap();
        let client = ClientConfig::builder_with_provider(crypto())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(host.to_owned()).unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = rustls::ServerConnection::new(server).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn leaves_are_minted_once_per_host_and_chain_to_the_runs_ca() {
        let ca = RunCa::new("test").unwrap();
        let a = ca.server_config("api.example").unwrap();
        // Cached for the run: the same configuration (the same leaf and key) every time.
        assert!(Arc::ptr_eq(&a, &ca.server_config("api.example").unwrap()));
        let b = ca.server_config("127.0.0.1").unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(ca.leaves.lock().unwrap().len(), 2);
        assert_eq!(a.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        // A client trusting the run's CA accepts each leaf for its own host only.
        handshake(&ca, "api.example", a.clone()).unwrap();
        handshake(&ca, "127.0.0.1", b).unwrap();
        assert!(handshake(&ca, "other.example", a.clone()).is_err());
        // Another run's CA is not trusted by this run's clients.
        let other = RunCa::new("other").unwrap();
        assert!(handshake(&other, "api.example", a).is_err());
    }
}
