//! The connection to an OpenBao (or HashiCorp Vault) node, and the logins that give the broker
//! its tokens.
//!
//! Transport: HTTP/1.1 over `hyper`; `https://` to any host through `rustls` (ring provider,
//! the same stack as the egress proxy), verified against the system's root bundle (read from
//! the distributions' root-owned paths, never from `SSL_CERT_FILE`) or, when the variable has
//! one, only the CA the human gave at `dynamic add` (its PEM text is stored in the sealed vault,
//! so swapping a file on disk cannot redirect trust); an optional client certificate (PEM
//! files read at each connection). Plain `http://` is accepted for a loopback address only (a
//! local `bao proxy` or a test server): a token never crosses a network in clear. On such a
//! connection nothing is sent until the kernel's socket table says who holds its server side
//! ([`owner`]): a listener of another user (a proxy run as a service user) is sent the request,
//! one of the broker's own user (any process of that uid, an agent too, can hold the port while
//! the proxy is down) only where the environment's `insecure-loopback` policy allows it.
//! A namespace goes into `X-Vault-Namespace` on every request.
//!
//! Logins (option `auth`): `token` (the stored secret is the token), `approle` (the stored
//! secret is the secret id; option `role_id`), `jwt` (the stored secret is the JWT; option
//! `auth_role`) and `userpass` (the stored secret is the password; option `username`); the
//! tokens they give are held by [`super::bao_login::Logins`]. The TLS client is built in
//! [`tls`].

// `serde_json::Value` indexing by key returns `Null` for a missing key: it never panics.
#![allow(clippy::indexing_slicing)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::HeaderValue;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use keyveil_vault::SecretValue;
use rustls_pki_types::ServerName;
use serde_json::Value;
use sha2::Digest;

use super::target::Target;
use super::{DynamicError, DynamicSpec, EngineKind, scrub, timed};

mod tls;

use super::owner;

use tls::{client_config, tls_hint};

/// Checks a mount, role or path: `[A-Za-z0-9_.-]` segments separated by `/`, no `..`.
pub(crate) fn check_path(what: &str, p: &str) -> Result<(), DynamicError> {
    let ok = !p.is_empty()
        && p.len() <= 512
        && p.split('/').all(|seg| {
            !seg.is_empty()
                && seg != ".."
                && seg != "."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        });
    if ok {
        Ok(())
    } else {
        Err(DynamicError::Config(format!(
            "the OpenBao {what} must be segments of letters, digits, '_', '-', '.' separated by '/'"
        )))
    }
}

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

    /// Where this login is mounted unless `auth_mount` says otherwise.
    pub(super) fn default_mount(self) -> &'static str {
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
        check_path("auth mount", m)?;
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
    /// Plain-HTTP loopback nodes held by the broker's own user may be sent requests
    /// ([`DynamicSpec::same_user_loopback`]).
    same_user_loopback: bool,
}

/// A userpass user name goes into the login's URL path: letters, digits, `_-.@`, 1 to 128.
pub(super) fn valid_username(u: &str) -> bool {
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
            check_path("namespace", ns)?;
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
            same_user_loopback: spec.same_user_loopback,
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
            None => {
                self.check_listener(&tcp)?;
                exchange_on(TokioIo::new(tcp), req).await
            }
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

    /// Before anything is sent over plain HTTP: the connection's server side must belong to
    /// another user, or to ours where the policy allows it (see [`owner`]).
    fn check_listener(&self, tcp: &tokio::net::TcpStream) -> Result<(), (Stage, String)> {
        owner::check_stream(tcp, self.same_user_loopback).map_err(|why| {
            (
                Stage::Owner,
                format!("{why}; the login secret was not sent"),
            )
        })
    }

    fn transport_error(&self, node: &Node, stage: Stage, reason: &str) -> DynamicError {
        let address = &node.address;
        let (what, hint) = match stage {
            Stage::Owner if reason.contains(crate::subuid::SUBUID_MARK) => (
                "is not trusted over plain HTTP",
                owner::SUBUID_UNREADABLE_HINT.to_owned(),
            ),
            Stage::Owner => (
                "is not trusted over plain HTTP",
                "use https:// (with --ca-file for your own CA), or run `bao proxy` as another user (not one of your own subordinate uids of /etc/subuid); for a proxy or dev server of your own, allow it for this environment with `keyveil policy set ENV insecure-loopback on` (your factor)".to_owned(),
            ),
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
    /// A plain-HTTP loopback listener the broker may not send to ([`Conn::check_listener`]).
    Owner,
    Connect,
    Tls,
    Http,
}

/// One HTTP/1.1 request over `io`: the status and body, or where and why the transport failed.
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

/// The key of a spec's login and of its entry in [`SERVING`]: a digest of its nodes,
/// namespace, login, CA, client certificate and secret.
pub(super) fn login_key(spec: &DynamicSpec) -> [u8; 32] {
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

/// " in namespace N" or "".
pub(crate) fn ns_note(ns: Option<&str>) -> String {
    ns.map(|n| format!(" in namespace {n}")).unwrap_or_default()
}

/// OpenBao's `errors` list as one line, after the HTTP status.
pub(crate) fn errors_of(status: u16, v: &Value) -> String {
    let list: Vec<String> = v["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str())
                .map(|e| keyveil_proto::display::clip(e, 200))
                .collect()
        })
        .unwrap_or_default();
    if list.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {}", list.join("; "))
    }
}

/// OpenBao's `request_id` of an answer (a UUID its audit device logs as `request.id`), kept
/// only when it looks like one (hex digits and dashes, at most 64 characters): it goes into
/// keyveil's audit log.
pub(crate) fn request_id_of(v: &Value) -> String {
    let id = v["request_id"].as_str().unwrap_or("");
    if id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        id.to_owned()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests;
