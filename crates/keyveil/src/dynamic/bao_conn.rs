//! The connection to an OpenBao (or HashiCorp Vault) node, and the logins that give the broker
//! its tokens.
//!
//! Transport: HTTP/1.1 over `hyper`; `https://` to any host through `rustls` (ring provider,
//! the same stack as the egress proxy), verified against the system's root bundle (read from
//! the distributions' root-owned paths, never from `SSL_CERT_FILE`) or, when the variable has
//! one, only the CA the human gave at `dynamic add` (its PEM text is stored in the sealed vault,
//! so swapping a file on disk cannot redirect trust); an optional client certificate (PEM
//! files read at each connection). Plain `http://` is accepted for a loopback address only (a
//! local `bao proxy` or a test server): a token never crosses a network in clear.
//! A namespace goes into `X-Vault-Namespace` on every request.
//!
//! Logins (option `auth`): `token` (the stored secret is the token), `approle` (the stored
//! secret is the secret id; option `role_id`), `jwt` (the stored secret is the JWT; option
//! `auth_role`) and `userpass` (the stored secret is the password; option `username`). A login's token lives in [`Logins`], in the broker's memory only: renewed at
//! half its TTL while the vault is unlocked, revoked (`auth/token/revoke-self`) when the vault
//! is locked or the broker stops. It is never written to disk, an argument, a log or an error.

// `serde_json::Value` indexing by key returns `Null` for a missing key: it never panics.
#![allow(clippy::indexing_slicing)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::HeaderValue;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use keyveil_vault::SecretValue;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use sha2::Digest;

use super::target::Target;
use super::{DynamicError, DynamicSpec, EngineKind, scrub, timed};

/// The system's root bundles (root-owned paths; see `broker::egress::tls`).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// A cached token is used while it has at least this long left; else the broker logs in again.
const MIN_LEFT: Duration = Duration::from_secs(30);

/// How the broker gets its token for a variable (option `auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthKind {
    /// The stored secret is the token.
    Token,
    /// AppRole: `role_id` option, the stored secret is the secret id.
    AppRole,
    /// JWT auth: `auth_role` option, the stored secret is the JWT.
    Jwt,
    /// Userpass: `username` option, the stored secret is the password.
    Userpass,
}

impl AuthKind {
    /// Reads the `auth` option (default `token`).
    pub(crate) fn of(spec: &DynamicSpec) -> Result<AuthKind, DynamicError> {
        match spec.opt("auth").unwrap_or("token") {
            "token" => Ok(AuthKind::Token),
            "approle" => Ok(AuthKind::AppRole),
            "jwt" | "oidc" => Ok(AuthKind::Jwt),
            "userpass" => Ok(AuthKind::Userpass),
            other => Err(DynamicError::Config(format!(
                "unknown OpenBao login {:?}: use token, approle, jwt or userpass",
                keyveil_proto::display::clip(other, 40)
            ))),
        }
    }

    fn default_mount(self) -> &'static str {
        match self {
            AuthKind::Token => "token",
            AuthKind::AppRole => "approle",
            AuthKind::Jwt => "jwt",
            AuthKind::Userpass => "userpass",
        }
    }
}

/// Checks the connection and login options of an OpenBao spec (address, TLS, namespace, login).
pub(crate) fn check_options(spec: &DynamicSpec) -> Result<(), DynamicError> {
    Conn::new(spec)?;
    let auth = AuthKind::of(spec)?;
    if let Some(m) = spec.opt("auth_mount") {
        super::openbao::check_path("auth mount", m)?;
    }
    match auth {
        AuthKind::AppRole if spec.opt("role_id").is_none() => Err(DynamicError::Config(
            "an AppRole login needs --role-id (the secret id is read like a token: never from argv)".into(),
        )),
        AuthKind::Jwt if spec.opt("auth_role").is_none() => Err(DynamicError::Config(
            "a JWT login needs --auth-role (the role of OpenBao's JWT auth method)".into(),
        )),
        AuthKind::Userpass => match spec.opt("username") {
            Some(u) if valid_username(u) => Ok(()),
            Some(_) => Err(DynamicError::Config(
                "the OpenBao user name must be 1 to 128 letters, digits, '_', '-', '.' or '@'"
                    .into(),
            )),
            None => Err(DynamicError::Config(
                "a userpass login needs --username (the password is read like a token: from /dev/tty or --admin-stdin, never from argv)".into(),
            )),
        },
        _ => Ok(()),
    }
}

/// The nodes of an OpenBao cluster, as a variable names them (option `address`: one address,
/// or several separated by commas, tried in turn; see [`Conn::request`]).
pub(crate) struct Conn {
    /// The address option as given (`scheme://host:port[,scheme://host:port...]`), shown in
    /// errors and used as the key of the node last found serving.
    pub(crate) address: String,
    nodes: Vec<Node>,
    tls: Option<Arc<rustls::ClientConfig>>,
    namespace: Option<String>,
    engine: EngineKind,
    /// The key of this connection's entry in [`SERVING`]: [`login_key`] of its spec (nodes,
    /// namespace, login, CA, client certificate and secret), so one variable's failover never
    /// reorders another's nodes.
    serving_key: [u8; 32],
}

/// A userpass user name goes into the login's URL path: letters, digits, `_-.@`, 1 to 128.
fn valid_username(u: &str) -> bool {
    (1..=128).contains(&u.len())
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'))
}

/// One node: `scheme://host:port` and its parsed form.
struct Node {
    address: String,
    target: Target,
}

/// The most nodes one variable may list.
const MAX_NODES: usize = 9;

/// How long a request to a cluster (two nodes or more) keeps trying the listed nodes while
/// none serves it (a leader election, a node restarting): OpenBao's Raft elects a new leader
/// within a few heartbeat timeouts (1 to 5 s each, after `performance_multiplier`).
const FAILOVER_WINDOW: Duration = Duration::from_secs(20);

/// A TCP connect to one node gives up after this long (a black-holed node must not eat the
/// window: the next node is tried).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The node of each cluster that served last: tried first next time. Keyed per login
/// ([`login_key`]), not per address list: a variable the agent adds (no factor) listing the
/// same nodes with its own CA or token must not move the human's variable to a node the agent
/// serves (a listed node's port the agent squats while it is down).
static SERVING: std::sync::LazyLock<Mutex<HashMap<[u8; 32], usize>>> =
    std::sync::LazyLock::new(|| Mutex::new(HashMap::new()));

/// An error with the node, what was attempted, the reason and what to do.
pub(crate) fn bao_error(
    engine: EngineKind,
    node: &str,
    what: impl Into<String>,
    reason: impl Into<String>,
    hint: impl Into<String>,
) -> DynamicError {
    DynamicError::Bao {
        engine: engine.name(),
        node: node.to_owned(),
        what: what.into(),
        reason: reason.into(),
        hint: hint.into(),
    }
}

/// Whether an answer means "this node cannot serve now, another may": a standby's redirect to
/// the active node (307: keyveil follows no redirect, whose target the node chooses; it tries
/// the nodes the human listed), a standby or performance-standby refusal (429, 472, 473), a
/// sealed or unready node (503), a gateway error (502, 504), or a standby that cannot forward
/// to the active node (500 naming forwarding or the active node: during an election).
fn node_cannot_serve(status: u16, v: &Value) -> bool {
    match status {
        307 | 429 | 472 | 473 | 502 | 503 | 504 => true,
        500 => {
            let e = v["errors"].to_string().to_ascii_lowercase();
            [
                "forward",
                "active node",
                "active cluster node",
                "standby",
                "leader",
            ]
            .iter()
            .any(|w| e.contains(w))
        }
        _ => false,
    }
}

impl Conn {
    /// Reads the address, TLS and namespace options. Errors: `Config` for a malformed address
    /// (or one of a list), plain HTTP to a non-loopback host, a bad CA or client certificate.
    pub(crate) fn new(spec: &DynamicSpec) -> Result<Conn, DynamicError> {
        let address = spec
            .opt("address")
            .unwrap_or("")
            .trim()
            .trim_end_matches('/')
            .to_owned();
        let mut nodes = Vec::new();
        for one in address.split(',') {
            let one = one.trim().trim_end_matches('/');
            let target = Target::parse(one, &["http", "https"], 8200).map_err(|_| {
                DynamicError::Config(
                    "the OpenBao address must look like https://bao.example.com:8200 (or http://127.0.0.1:8200 on loopback); the nodes of a cluster are separated by commas".into(),
                )
            })?;
            if target.user.is_some() || !target.path.is_empty() || target.query.is_some() {
                return Err(DynamicError::Config(
                    "the OpenBao address is scheme://host:port only".into(),
                ));
            }
            if target.scheme == "http" && !target.is_loopback() {
                return Err(DynamicError::Config(
                    "keyveil sends a token over plain HTTP to loopback only: use https://HOST:PORT (with --ca-file if the cluster has its own CA), or run `bao proxy` locally and give its address, e.g. http://127.0.0.1:8100".into(),
                ));
            }
            if nodes.iter().any(|n: &Node| n.address == one) {
                return Err(DynamicError::Config(format!(
                    "the OpenBao node {one} is listed twice"
                )));
            }
            nodes.push(Node {
                address: one.to_owned(),
                target,
            });
        }
        if nodes.len() > MAX_NODES {
            return Err(DynamicError::Config(format!(
                "at most {MAX_NODES} OpenBao nodes per variable"
            )));
        }
        if nodes
            .iter()
            .any(|n| n.target.scheme != nodes[0].target.scheme)
        {
            return Err(DynamicError::Config(
                "the nodes of a cluster are all https:// (or all http:// on loopback)".into(),
            ));
        }
        let address = nodes
            .iter()
            .map(|n| n.address.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let namespace = spec.opt("namespace").map(str::to_owned);
        if let Some(ns) = &namespace {
            super::openbao::check_path("namespace", ns)?;
        }
        let tls = if nodes[0].target.scheme == "https" {
            Some(client_config(spec)?)
        } else {
            if spec.opt("ca_pem").is_some() || spec.opt("client_cert").is_some() {
                return Err(DynamicError::Config(
                    "--ca-file and --client-cert need an https:// address".into(),
                ));
            }
            None
        };
        Ok(Conn {
            address,
            nodes,
            tls,
            namespace,
            engine: spec.engine,
            serving_key: login_key(spec),
        })
    }

    /// The namespace, if any.
    pub(crate) fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// How many nodes are listed.
    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// One request with `token` (if any); returns the status and JSON body (`Null` if empty).
    ///
    /// One node: one attempt (10 s at most). Several: the node that served last is tried
    /// first, then the others in the order listed; a node that cannot be reached or cannot
    /// serve now ([`node_cannot_serve`]) passes the request to the next, round after round
    /// (100 ms, then up to 1 s apart) for up to [`FAILOVER_WINDOW`]. Only listed nodes are
    /// ever sent the token: a redirect is never followed. When no node serves, the last
    /// answer is returned (or the last transport error, naming every node).
    ///
    /// A transport failure is a [`DynamicError::Bao`] that names the node and says what to
    /// do; `secrets` are scrubbed from every reason.
    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        token: Option<&SecretValue>,
        secrets: &[&str],
    ) -> Result<(u16, Value), DynamicError> {
        if self.nodes.len() == 1 {
            return timed(
                self.engine,
                &self.address,
                self.request_node(0, method, path, body, token, secrets),
            )
            .await;
        }
        let first = SERVING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&self.serving_key)
            .copied()
            .unwrap_or(0)
            % self.nodes.len();
        let t0 = Instant::now();
        let mut pause = Duration::from_millis(100);
        let mut rounds = 0u32;
        loop {
            rounds += 1;
            let mut last = None;
            for k in 0..self.nodes.len() {
                let i = (first + k) % self.nodes.len();
                let node = &self.nodes[i].address;
                let got = timed(
                    self.engine,
                    node,
                    self.request_node(i, method.clone(), path, body, token, secrets),
                )
                .await;
                match got {
                    Ok((status, v)) if !node_cannot_serve(status, &v) => {
                        if i != first || rounds > 1 {
                            tracing::info!(
                                node,
                                rounds,
                                waited_ms = t0.elapsed().as_millis() as u64,
                                "OpenBao: another node serves"
                            );
                        }
                        SERVING
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(self.serving_key, i);
                        return Ok((status, v));
                    }
                    other => last = Some(other),
                }
            }
            if t0.elapsed() + pause >= FAILOVER_WINDOW {
                return match last {
                    Some(Err(DynamicError::Bao { reason, .. })) => Err(bao_error(
                        self.engine,
                        &self.address,
                        format!(
                            "has no node that serves (tried each for {} s)",
                            t0.elapsed().as_secs()
                        ),
                        reason,
                        "check the cluster (`bao operator raft list-peers`, `bao status` on each node): a leader may be missing or the nodes sealed",
                    )),
                    Some(other) => other,
                    None => Err(DynamicError::Config("no OpenBao node".into())),
                };
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// One request to node `i`.
    async fn request_node(
        &self,
        i: usize,
        method: Method,
        path: &str,
        body: Option<&Value>,
        token: Option<&SecretValue>,
        secrets: &[&str],
    ) -> Result<(u16, Value), DynamicError> {
        let node = &self.nodes[i];
        let mut req = Request::builder()
            .method(method)
            .uri(format!("/v1/{path}"))
            .header("host", node.target.host_port())
            .header("content-type", "application/json");
        if let Some(t) = token {
            let mut h = HeaderValue::from_str(t.expose()).map_err(|_| {
                DynamicError::Config("the OpenBao token has characters a header cannot hold".into())
            })?;
            h.set_sensitive(true);
            req = req.header("x-vault-token", h);
        }
        if let Some(ns) = &self.namespace {
            req = req.header("x-vault-namespace", ns.as_str());
        }
        let payload = body.map(|v| Bytes::from(v.to_string())).unwrap_or_default();
        let req = req
            .body(Full::new(payload))
            .map_err(|e| DynamicError::Config(format!("cannot build the request: {e}")))?;
        let (status, bytes) = self
            .exchange(node, req)
            .await
            .map_err(|(stage, e)| self.transport_error(node, stage, &scrub(e, secrets)))?;
        let v: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok((status, v))
    }

    async fn exchange(
        &self,
        node: &Node,
        req: Request<Full<Bytes>>,
    ) -> Result<(u16, Bytes), (Stage, String)> {
        let target = &node.target;
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((target.host.as_str(), target.port)),
        )
        .await
        .map_err(|_| (Stage::Connect, "connect timed out".to_owned()))?
        .map_err(|e| (Stage::Connect, e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => exchange_on(TokioIo::new(tcp), req).await,
            Some(cfg) => {
                let name = ServerName::try_from(target.host.clone())
                    .map_err(|e| (Stage::Tls, e.to_string()))?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| (Stage::Tls, e.to_string()))?;
                exchange_on(TokioIo::new(tls), req).await
            }
        }
    }

    fn transport_error(&self, node: &Node, stage: Stage, reason: &str) -> DynamicError {
        let address = &node.address;
        let (what, hint) = match stage {
            Stage::Connect => (
                "cannot be reached",
                format!(
                    "check that OpenBao listens at {address} (`bao status -address={address}`) and that this machine may reach it"
                ),
            ),
            Stage::Tls => (
                "refused the TLS handshake",
                tls_hint(reason, &node.target.host),
            ),
            Stage::Http => {
                let hint = if reason.contains("alert") || reason.contains("Certificate") {
                    tls_hint(reason, &node.target.host)
                } else {
                    "the node closed the connection: check its logs, or try another node".into()
                };
                ("did not answer the request", hint)
            }
        };
        bao_error(self.engine, address, what, reason, hint)
    }
}

/// Where a transport failure happened.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Connect,
    Tls,
    Http,
}

async fn exchange_on<IO>(
    io: TokioIo<IO>,
    req: Request<Full<Bytes>>,
) -> Result<(u16, Bytes), (Stage, String)>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let err = |e: hyper::Error| {
        // hyper wraps the TLS alert (a client certificate the server wanted) in its cause.
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(c) = src {
            s.push_str(": ");
            s.push_str(&c.to_string());
            src = c.source();
        }
        (Stage::Http, s)
    };
    let (mut sender, conn) = http1::handshake::<_, Full<Bytes>>(io).await.map_err(err)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await.map_err(err)?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.map_err(err)?.to_bytes();
    Ok((status, bytes))
}

fn tls_hint(reason: &str, host: &str) -> String {
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

#[allow(deprecated)]
fn crypto() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS client for a spec: its CA (`ca_pem` option) or the system roots; its client
/// certificate (`client_cert`, `client_key`: PEM files).
fn client_config(spec: &DynamicSpec) -> Result<Arc<rustls::ClientConfig>, DynamicError> {
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

/// A token the broker got by logging in.
#[derive(Debug, Clone)]
struct Session {
    token: SecretValue,
    accessor: String,
    /// Where to renew and revoke it (the spec that logged in).
    spec: DynamicSpec,
    /// When its TTL was last set, and the TTL (zero: no expiry).
    since: Instant,
    ttl: Duration,
    renewable: bool,
}

impl Session {
    fn left(&self) -> Option<Duration> {
        (!self.ttl.is_zero()).then(|| self.ttl.saturating_sub(self.since.elapsed()))
    }
}

/// The tokens the broker holds from logins, in memory only. One per (node, namespace, login,
/// login secret).
#[derive(Debug, Default)]
pub(crate) struct Logins {
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    /// Serialises logins, so two grants starting at once share one token.
    gate: tokio::sync::Mutex<()>,
    /// Set at lock: no login until the next unlock.
    closed: AtomicBool,
    renewing: AtomicBool,
}

fn login_key(spec: &DynamicSpec) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    for k in [
        "address",
        "namespace",
        "auth",
        "auth_mount",
        "role_id",
        "auth_role",
        "username",
        "ca_pem",
        "client_cert",
    ] {
        h.update(spec.opt(k).unwrap_or("").as_bytes());
        h.update([0]);
    }
    h.update(spec.admin.expose().as_bytes());
    h.finalize().into()
}

impl Logins {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many tokens are held (for tests).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.sessions().len()
    }

    /// The token for `spec`: the stored one (`auth=token`), a cached login's, or a fresh login.
    /// Returns the token and whether it came from a login (a refused request then logs in
    /// again once: the token may have been revoked at the server).
    ///
    /// Errors: the vault is locked (no login), the login was refused (with a hint).
    pub(crate) async fn token(
        &self,
        spec: &DynamicSpec,
    ) -> Result<(SecretValue, bool), DynamicError> {
        let auth = AuthKind::of(spec)?;
        if auth == AuthKind::Token {
            return Ok((spec.admin.clone(), false));
        }
        let key = login_key(spec);
        let fresh = |s: &Session| s.left().is_none_or(|l| l > MIN_LEFT);
        if let Some(s) = self.sessions().get(&key).filter(|s| fresh(s)) {
            return Ok((s.token.clone(), true));
        }
        let _one = self.gate.lock().await;
        if let Some(s) = self.sessions().get(&key).filter(|s| fresh(s)) {
            return Ok((s.token.clone(), true));
        }
        if self.closed.load(Ordering::SeqCst) {
            return Err(DynamicError::Config(
                "the vault is locked: keyveil logs in to OpenBao again after `keyveil unlock`"
                    .into(),
            ));
        }
        let s = login(spec, auth).await?;
        let token = s.token.clone();
        if let Some(old) = self.sessions().insert(key, s) {
            // An expiring token replaced by a fresh one: end it now.
            tokio::spawn(async move { revoke_session(&old).await });
        }
        Ok((token, true))
    }

    /// Forgets the cached token of `spec` (refused by the server: expired or revoked there).
    pub(crate) fn forget(&self, spec: &DynamicSpec) {
        self.sessions().remove(&login_key(spec));
    }

    /// Allows logins again (at unlock).
    pub(crate) fn reopen(&self) {
        self.closed.store(false, Ordering::SeqCst);
    }

    /// Refuses logins until [`Logins::reopen`] and revokes every token held; returns the
    /// accessors revoked and the number that could not be (they end at their TTL).
    pub(crate) async fn close(&self) -> (Vec<String>, usize) {
        self.closed.store(true, Ordering::SeqCst);
        let _one = self.gate.lock().await;
        let all: Vec<Session> = self.sessions().drain().map(|(_, s)| s).collect();
        let mut revoked = Vec::new();
        let mut failed = 0;
        for s in all {
            if revoke_session(&s).await {
                revoked.push(s.accessor.clone());
            } else {
                failed += 1;
            }
        }
        (revoked, failed)
    }

    /// Renews, in the background, every token past half its TTL (called from the broker's tick
    /// while the vault is unlocked). A token that cannot be renewed is dropped: the next use
    /// logs in again.
    pub(crate) fn renew_due(self: &Arc<Self>) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let due: Vec<([u8; 32], Session)> = self
            .sessions()
            .iter()
            .filter(|(_, s)| s.renewable && s.left().is_some_and(|l| l * 2 < s.ttl))
            .map(|(k, s)| (*k, s.clone()))
            .collect();
        if due.is_empty() || self.renewing.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.renewing.store(false, Ordering::SeqCst);
            return;
        };
        rt.spawn(async move {
            for (k, s) in due {
                let renewed = renew_session(&s).await;
                let mut map = me.sessions();
                match renewed {
                    Some((ttl, renewable)) => {
                        if let Some(e) = map.get_mut(&k).filter(|e| e.accessor == s.accessor) {
                            e.since = Instant::now();
                            e.ttl = ttl;
                            e.renewable = renewable && !ttl.is_zero();
                        }
                    }
                    None => {
                        if map.get(&k).is_some_and(|e| e.accessor == s.accessor) {
                            map.remove(&k);
                        }
                    }
                }
            }
            me.renewing.store(false, Ordering::SeqCst);
        });
    }
}

/// Logs in; the answer's `auth` block becomes a session.
async fn login(spec: &DynamicSpec, auth: AuthKind) -> Result<Session, DynamicError> {
    let conn = Conn::new(spec)?;
    let mount = spec.opt("auth_mount").unwrap_or(auth.default_mount());
    let path = match auth {
        AuthKind::Userpass => {
            let user = spec.opt("username").unwrap_or("");
            if !valid_username(user) {
                return Err(DynamicError::Config(
                    "the OpenBao user name is malformed".into(),
                ));
            }
            format!("auth/{mount}/login/{user}")
        }
        _ => format!("auth/{mount}/login"),
    };
    let body = match auth {
        AuthKind::AppRole => {
            json!({"role_id": spec.opt("role_id").unwrap_or(""), "secret_id": spec.admin.expose()})
        }
        AuthKind::Jwt => {
            json!({"role": spec.opt("auth_role").unwrap_or(""), "jwt": spec.admin.expose()})
        }
        AuthKind::Userpass => json!({"password": spec.admin.expose()}),
        AuthKind::Token => return Err(DynamicError::Config("a token needs no login".into())),
    };
    let secrets = [spec.admin.expose()];
    let (status, v) = conn
        .request(Method::POST, &path, Some(&body), None, &secrets)
        .await?;
    let token = v["auth"]["client_token"].as_str().unwrap_or("");
    if !(200..300).contains(&status) || token.is_empty() {
        let reason = scrub(super::openbao::errors_of(status, &v), &secrets);
        let hint = match (auth, status) {
            (_, 404) | (_, 405) => format!(
                "no {} auth method is mounted at auth/{mount}{}: check --auth-mount",
                match auth {
                    AuthKind::Jwt => "JWT",
                    AuthKind::Userpass => "userpass",
                    _ => "AppRole",
                },
                ns_note(conn.namespace())
            ),
            (AuthKind::AppRole, _) => "the role id or secret id is wrong, expired or used up: get a new secret id from your OpenBao operator and give it with `keyveil dynamic add ... --auth approle` (replacing the variable asks for your factor)".into(),
            (AuthKind::Userpass, _) => "the user name or password was refused: give the right password with `keyveil dynamic add ... --auth userpass --username NAME` (asked at the terminal; replacing the variable asks for your factor)".into(),
            _ => "the JWT was refused (expired, wrong audience or issuer, or not signed by a key the role trusts): give a fresh one with `keyveil dynamic add ... --auth jwt --admin-stdin` (or --admin-env VAR in CI)".into(),
        };
        return Err(bao_error(
            spec.engine,
            &conn.address,
            format!("refused the login at {path}{}", ns_note(conn.namespace())),
            reason,
            hint,
        ));
    }
    let ttl = Duration::from_secs(v["auth"]["lease_duration"].as_u64().unwrap_or(0));
    tracing::info!(
        accessor = v["auth"]["accessor"].as_str().unwrap_or(""),
        ttl_s = ttl.as_secs(),
        node = conn.address,
        "logged in to OpenBao"
    );
    Ok(Session {
        token: SecretValue::new(token.to_owned()),
        accessor: v["auth"]["accessor"].as_str().unwrap_or("").to_owned(),
        spec: spec.clone(),
        since: Instant::now(),
        renewable: v["auth"]["renewable"].as_bool().unwrap_or(false) && !ttl.is_zero(),
        ttl,
    })
}

/// " in namespace N" or "".
pub(crate) fn ns_note(ns: Option<&str>) -> String {
    ns.map(|n| format!(" in namespace {n}")).unwrap_or_default()
}

async fn renew_session(s: &Session) -> Option<(Duration, bool)> {
    let conn = Conn::new(&s.spec).ok()?;
    let (status, v) = conn
        .request(
            Method::POST,
            "auth/token/renew-self",
            Some(&json!({})),
            Some(&s.token),
            &[s.token.expose(), s.spec.admin.expose()],
        )
        .await
        .ok()?;
    ((200..300).contains(&status)).then(|| {
        (
            Duration::from_secs(v["auth"]["lease_duration"].as_u64().unwrap_or(0)),
            v["auth"]["renewable"].as_bool().unwrap_or(false),
        )
    })
}

/// Revokes a login's token (and so every lease it created); `true` when it is gone.
async fn revoke_session(s: &Session) -> bool {
    let Ok(conn) = Conn::new(&s.spec) else {
        return false;
    };
    match conn
        .request(
            Method::POST,
            "auth/token/revoke-self",
            Some(&json!({})),
            Some(&s.token),
            &[s.token.expose(), s.spec.admin.expose()],
        )
        .await
    {
        // 403: already revoked or expired at the server.
        Ok((status, _)) if (200..300).contains(&status) || status == 403 => true,
        Ok((status, v)) => {
            tracing::warn!(accessor = s.accessor, status, error = %super::openbao::errors_of(status, &v), "cannot revoke an OpenBao token; it ends at its TTL");
            false
        }
        Err(e) => {
            tracing::warn!(accessor = s.accessor, error = %e, "cannot revoke an OpenBao token; it ends at its TTL");
            false
        }
    }
}

#[cfg(test)]
mod tests;
