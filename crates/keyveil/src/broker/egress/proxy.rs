//! The proxy's sessions: HTTP/1.1 from the child (hyper), `CONNECT` tunnels passed through or,
//! to a bound host, TLS terminated (tokio-rustls, a leaf of the run's CA; HTTP/2 or HTTP/1.1 as
//! the child's ALPN chooses) and each request forwarded to the verified upstream (HTTP/2 when
//! it offers it, else HTTP/1.1) with placeholders swapped for values; plain HTTP forwarded
//! unless it carries a placeholder.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Body as _, Frame, Incoming};
use hyper::client::conn::http1 as client_http1;
use hyper::client::conn::http2 as client_http2;
use hyper::header::HeaderValue;
use hyper::server::conn::http1 as server_http1;
use hyper::server::conn::http2 as server_http2;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use memchr::memmem;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use zeroize::Zeroizing;

use super::placeholder::{Swap, swap_all};
use super::watch::Watch;
use super::{Binding, Shared, owner};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;
type Upstream = tokio::sync::Mutex<Result<Sender, String>>;

/// A session's connection to the upstream server: HTTP/2 when its ALPN chose it (requests
/// multiplexed), else HTTP/1.1 (requests take turns).
enum Sender {
    H1(client_http1::SendRequest<Body>),
    H2(client_http2::SendRequest<Body>),
}

/// Headers of one HTTP/1.1 connection, never sent over HTTP/2 (RFC 9113, 8.2.2).
const CONNECTION_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// Refused connections audited one by one per run (then one in 64).
const REFUSALS_AUDITED: u64 = 8;

/// Headers meant for the proxy, never forwarded.
const PROXY_HEADERS: &[&str] = &["proxy-authorization", "proxy-connection"];

/// Accepts the run's connections until the proxy is closed; each from a process outside the
/// run's tree is refused (closed at once) and audited.
pub(super) async fn serve(listener: TcpListener, s: Arc<Shared>) {
    loop {
        let (stream, peer) = tokio::select! {
            () = s.token.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        // Small requests and answers go out at once (no Nagle delay against delayed ACKs).
        let _ = stream.set_nodelay(true);
        let s = s.clone();
        tokio::spawn(async move {
            let root = s.root_pid.load(Ordering::SeqCst);
            let local = s.local;
            let holder = if root > 0 {
                tokio::task::spawn_blocking(move || {
                    owner::socket_inode(peer, local).and_then(|i| owner::holder_in_tree(root, i))
                })
                .await
                .ok()
                .flatten()
            } else {
                None
            };
            if holder.is_none() {
                drop(stream);
                // The first few per run are audited one by one, then one in 64 with the count:
                // a process outside the run cannot flood the log by connecting in a loop.
                let n = s.refused.fetch_add(1, Ordering::SeqCst) + 1;
                if n <= REFUSALS_AUDITED || n.is_multiple_of(64) {
                    s.audit(
                        "egress_refused",
                        json!({"run_id": s.run_id, "refused": n, "why": "a process outside the run connected to its proxy"}),
                    );
                }
                return;
            }
            let s2 = s.clone();
            let svc = service_fn(move |req| outer(req, s2.clone()));
            let conn = server_http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            tokio::select! {
                () = s.token.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

fn text(status: StatusCode, msg: String) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(msg + "\n"))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    r
}

async fn outer(req: Request<Incoming>, s: Arc<Shared>) -> Result<Response<Body>, Infallible> {
    if req.method() == Method::CONNECT {
        let Some(auth) = req.uri().authority().cloned() else {
            return Ok(text(
                StatusCode::BAD_REQUEST,
                "keyveil: CONNECT needs host:port".into(),
            ));
        };
        let host = auth
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = auth.port_u16().unwrap_or(443);
        let token = s.token.clone();
        tokio::spawn(async move {
            let work = async move {
                let Ok(up) = hyper::upgrade::on(req).await else {
                    return;
                };
                if s.intercepts(&host, port) {
                    intercept(TokioIo::new(up), host, port, s).await;
                } else {
                    tunnel(TokioIo::new(up), &host, port, &s).await;
                }
            };
            tokio::select! {
                () = token.cancelled() => {}
                () = work => {}
            }
        });
        let mut r = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
        *r.status_mut() = StatusCode::OK;
        return Ok(r);
    }
    Ok(plain(req, &s).await)
}

/// A host no variable of the run is bound to: bytes both ways, untouched, while the child's
/// bytes are watched for a placeholder sent in clear text ([`Watch`]): one ends the tunnel at
/// once and is reported as blocked.
async fn tunnel(client: TokioIo<hyper::upgrade::Upgraded>, host: &str, port: u16, s: &Shared) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(up) = TcpStream::connect((host, port)).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let (mut from_child, mut to_child) = tokio::io::split(client);
    let (mut from_up, mut to_up) = up.into_split();
    let upward = async {
        let mut watch = Watch::default();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = from_child.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                let _ = to_up.shutdown().await;
                return false;
            }
            let chunk = buf.get(..n).unwrap_or_default();
            if let Some(b) = watch.find(&s.bindings, chunk) {
                s.report_blocked(
                    &b.shown,
                    &format!("tunnel {host}:{port}"),
                    "sent in clear text through a tunnel to a host it is not bound to",
                );
                return true;
            }
            if to_up.write_all(chunk).await.is_err() {
                return false;
            }
        }
    };
    let downward = async {
        let _ = tokio::io::copy(&mut from_up, &mut to_child).await;
        let _ = to_child.shutdown().await;
    };
    tokio::pin!(upward, downward);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            blocked = &mut upward, if !up_done => {
                if blocked {
                    return; // both connections close here
                }
                up_done = true;
            }
            () = &mut downward, if !down_done => down_done = true,
        }
    }
}

/// Whether the placeholder appears in the request line or a header, as it is or inside an
/// HTTP Basic credential (`Authorization: Basic base64(user:password)`).
fn carries(parts: &hyper::http::request::Parts, placeholder: &str) -> bool {
    memmem::find(parts.uri.to_string().as_bytes(), placeholder.as_bytes()).is_some()
        || fields_carry(&parts.headers, placeholder)
}

/// Whether a header or trailer field holds the placeholder, as it is or inside an HTTP Basic
/// credential.
fn fields_carry(fields: &hyper::HeaderMap, placeholder: &str) -> bool {
    let p = placeholder.as_bytes();
    fields.values().any(|v| {
        memmem::find(v.as_bytes(), p).is_some()
            || basic_credential(v).is_some_and(|c| memmem::find(&c, p).is_some())
    })
}

/// The decoded `user:password` of an HTTP Basic credential (`Basic base64`, RFC 7617; the
/// scheme's name in any case), or `None` for any other header value.
fn basic_credential(v: &HeaderValue) -> Option<Zeroizing<Vec<u8>>> {
    use base64::Engine as _;
    let b = v.as_bytes();
    let scheme = b.get(..6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let rest = b.get(6..)?.trim_ascii();
    base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()
        .map(Zeroizing::new)
}

/// `v` with each placeholder of `here` swapped for its value inside an HTTP Basic credential
/// (decoded, swapped, encoded again: the same length, since a placeholder has its value's),
/// or `None` when `v` is no Basic credential holding one.
fn swap_in_basic(v: &HeaderValue, here: &[&Binding]) -> Option<HeaderValue> {
    use base64::Engine as _;
    let mut cred = basic_credential(v)?;
    let mut changed = false;
    for b in here {
        if let Some(x) = swap_all(&cred, b.placeholder.as_bytes(), &b.value) {
            cred = Zeroizing::new(x);
            changed = true;
        }
    }
    if !changed {
        return None;
    }
    let encoded = Zeroizing::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(&*cred)
    ));
    let mut n = HeaderValue::from_str(&encoded).ok()?;
    n.set_sensitive(true);
    Some(n)
}

/// Plain HTTP (absolute-form): forwarded as is, unless it carries a placeholder (a value never
/// travels in clear, and a placeholder sent there is reported).
async fn plain(req: Request<Incoming>, s: &Arc<Shared>) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let Some(host) = parts.uri.host().map(str::to_owned) else {
        return text(
            StatusCode::BAD_REQUEST,
            "keyveil: the proxy takes absolute http:// URLs and CONNECT".into(),
        );
    };
    let port = parts.uri.port_u16().unwrap_or(80);
    let dest = format!("http://{host}:{port}");
    for b in &s.bindings {
        if carries(&parts, &b.placeholder) {
            s.report_blocked(&b.shown, &dest, "sent over plain HTTP");
            return text(
                StatusCode::FORBIDDEN,
                format!(
                    "keyveil: blocked: {} may only be sent to {} over HTTPS",
                    b.shown,
                    shown_dests(b)
                ),
            );
        }
    }
    let tcp = match TcpStream::connect((host.as_str(), port)).await {
        Ok(t) => {
            let _ = t.set_nodelay(true);
            t
        }
        Err(e) => return text(StatusCode::BAD_GATEWAY, format!("keyveil: {dest}: {e}")),
    };
    let (mut sender, conn) = match client_http1::handshake(TokioIo::new(tcp)).await {
        Ok(x) => x,
        Err(e) => return text(StatusCode::BAD_GATEWAY, format!("keyveil: {dest}: {e}")),
    };
    let token = s.token.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = token.cancelled() => {}
            _ = conn => {}
        }
    });
    parts.uri = match parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
    {
        Ok(u) => u,
        Err(_) => return text(StatusCode::BAD_REQUEST, "keyveil: bad URL".into()),
    };
    for h in PROXY_HEADERS {
        parts.headers.remove(*h);
    }
    let req = Request::from_parts(parts, watched(body, s.clone(), dest.clone()));
    match sender.send_request(req).await {
        Ok(r) => r.map(|b| b.map_err(BoxError::from).boxed_unsync()),
        Err(e) => text(StatusCode::BAD_GATEWAY, format!("keyveil: {dest}: {e}")),
    }
}

/// A plain request's body, passed on chunk by chunk while [`Watch`] looks for a placeholder (and
/// its trailers, if any, are checked like headers):
/// one ends the body with an error (the upstream request is cut off) and is reported as
/// blocked.
fn watched(body: Incoming, s: Arc<Shared>, dest: String) -> Body {
    if body.is_end_stream() {
        return body.map_err(BoxError::from).boxed_unsync();
    }
    let stream = futures::stream::unfold(
        (body, Watch::default(), false),
        move |(mut body, mut watch, done)| {
            let s = s.clone();
            let dest = dest.clone();
            async move {
                if done {
                    return None;
                }
                let frame = match body.frame().await? {
                    Ok(f) => f,
                    Err(e) => return Some((Err(BoxError::from(e)), (body, watch, true))),
                };
                if let Some(data) = frame.data_ref()
                    && let Some(b) = watch.find(&s.bindings, data)
                {
                    s.report_blocked(&b.shown, &dest, "sent in a plain HTTP body");
                    let e = BoxError::from("keyveil: blocked: a placeholder in a plain HTTP body");
                    return Some((Err(e), (body, watch, true)));
                }
                // Chunked trailers (`Trailer: X-K` ... `X-K: PLACEHOLDER`) are forwarded by
                // the client too: checked like headers.
                if let Some(t) = frame.trailers_ref()
                    && let Some(b) = s.bindings.iter().find(|b| fields_carry(t, &b.placeholder))
                {
                    s.report_blocked(&b.shown, &dest, "sent in a plain HTTP body's trailers");
                    let e =
                        BoxError::from("keyveil: blocked: a placeholder in a plain HTTP trailer");
                    return Some((Err(e), (body, watch, true)));
                }
                Some((Ok(frame), (body, watch, false)))
            }
        },
    );
    StreamBody::new(stream).boxed_unsync()
}

fn shown_dests(b: &Binding) -> String {
    b.dests
        .iter()
        .map(super::Dest::shown)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A bound host: TLS terminated with the run's leaf for it, one verified upstream connection
/// per session, each request forwarded with [`forward`].
async fn intercept(
    client: TokioIo<hyper::upgrade::Upgraded>,
    host: String,
    port: u16,
    s: Arc<Shared>,
) {
    let Ok(cfg) = s.ca.server_config(&host) else {
        return;
    };
    let Ok(tls) = tokio_rustls::TlsAcceptor::from(cfg).accept(client).await else {
        return;
    };
    let upstream: Arc<Upstream> = Arc::new(tokio::sync::Mutex::new(
        connect_upstream(&s, &host, port).await,
    ));
    let host = Arc::new(host);
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let svc = service_fn(move |req| {
        let s = s.clone();
        let host = host.clone();
        let upstream = upstream.clone();
        async move { Ok::<_, Infallible>(forward(req, &s, &host, port, &upstream).await) }
    });
    if h2 {
        let _ = server_http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(tls), svc)
            .await;
    } else {
        let _ = server_http1::Builder::new()
            .serve_connection(TokioIo::new(tls), svc)
            .await;
    }
}

async fn connect_upstream(s: &Shared, host: &str, port: u16) -> Result<Sender, String> {
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot reach {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(s.upstream.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("cannot verify {host}:{port}: {e}"))?;
    let token = s.token.clone();
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        let (sender, conn) = client_http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| format!("{host}:{port}: {e}"))?;
        tokio::spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                _ = conn => {}
            }
        });
        return Ok(Sender::H2(sender));
    }
    let (sender, conn) = client_http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("{host}:{port}: {e}"))?;
    tokio::spawn(async move {
        tokio::select! {
            () = token.cancelled() => {}
            _ = conn => {}
        }
    });
    Ok(Sender::H1(sender))
}

/// One request to a bound host: refused if it carries the placeholder of a variable not bound
/// there; otherwise each bound placeholder is swapped for its value (request line, headers,
/// body), the response's copies of the value swapped back, and one audit entry written when
/// the response's body ends.
async fn forward(
    req: Request<Incoming>,
    s: &Arc<Shared>,
    host: &str,
    port: u16,
    upstream: &Upstream,
) -> Response<Body> {
    let dest = super::Dest {
        host: host.to_owned(),
        port,
    };
    let shown_dest = format!("https://{}", dest.shown());
    let (mut parts, body) = req.into_parts();
    let here: Vec<&Binding> = s
        .bindings
        .iter()
        .filter(|b| b.dests.contains(&dest))
        .collect();
    for b in s.bindings.iter().filter(|b| !b.dests.contains(&dest)) {
        if carries(&parts, &b.placeholder) {
            s.report_blocked(&b.shown, &shown_dest, "not bound to this host");
            return text(
                StatusCode::FORBIDDEN,
                format!(
                    "keyveil: blocked: {} is bound to {}, not {}",
                    b.shown,
                    shown_dests(b),
                    dest.shown()
                ),
            );
        }
    }
    // The request must be for the host the tunnel was opened to: a shared front (a CDN) routes
    // by Host, so `CONNECT api.example.com` carrying `Host: attacker.example` would take the
    // value to another origin behind the same front.
    // HTTP/2 names it in `:authority` (the URI), HTTP/1.1 in `Host`: each one given must
    // name the tunnel's host, and at least one must be given.
    let host_header = parts.headers.get(hyper::header::HOST).map(|h| {
        h.to_str()
            .ok()
            .and_then(|h| h.parse::<hyper::http::uri::Authority>().ok())
    });
    // An authority with userinfo (`evil.example@host`) names `host` to us but is forwarded as
    // it is, and a front may read its start: a Host never has one (RFC 9110, 7.2), refused.
    let norm = |a: &hyper::http::uri::Authority| {
        (!a.as_str().contains('@')).then(|| {
            a.host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase()
        })
    };
    let named: Vec<Option<String>> = host_header
        .iter()
        .map(|a| a.as_ref().and_then(norm))
        .chain(parts.uri.authority().map(norm))
        .collect();
    // A second `Host` is never checked by `get` (the first only) but would be forwarded to an
    // HTTP/1.1 upstream, where a front may route by it: one `Host` at most.
    let hosts = parts.headers.get_all(hyper::header::HOST).iter().count();
    if named.is_empty() || hosts > 1 || named.iter().any(|n| n.as_deref() != Some(host)) {
        for b in &here {
            s.report_blocked(&b.shown, &shown_dest, "Host is not the bound host");
        }
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "keyveil: blocked: a request through the tunnel to {} must name it in Host",
                dest.shown()
            ),
        );
    }
    let authority = host_header
        .flatten()
        .or_else(|| parts.uri.authority().cloned())
        .map_or_else(|| dest.shown(), |a| a.to_string());
    // The path as audited: no query, each placeholder replaced by its variable's name.
    let mut audit_path = parts.uri.path().to_owned();
    for b in &s.bindings {
        audit_path = audit_path.replace(&b.placeholder, &format!("[{}]", b.shown));
    }
    let mut pq = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .as_bytes()
        .to_vec();
    for b in &here {
        if let Some(x) = swap_all(&pq, b.placeholder.as_bytes(), &b.value) {
            pq = x;
        }
    }
    parts.uri = match hyper::Uri::try_from(pq) {
        Ok(u) => u,
        Err(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                "keyveil: the URL cannot carry this value (characters a URL may not hold)".into(),
            );
        }
    };
    for h in PROXY_HEADERS {
        parts.headers.remove(*h);
    }
    for v in parts.headers.values_mut() {
        if let Some(n) = swap_in_basic(v, &here) {
            *v = n;
        }
        for b in &here {
            if let Some(x) = swap_all(v.as_bytes(), b.placeholder.as_bytes(), &b.value)
                && let Ok(n) = HeaderValue::from_bytes(&x)
            {
                let mut n = n;
                n.set_sensitive(true);
                *v = n;
            }
        }
    }
    let to_value = Swap::new(
        here.iter()
            .map(|b| (b.placeholder.as_bytes().to_vec(), b.value.clone()))
            .collect(),
    );
    let method = parts.method.to_string();
    // The body is watched for the placeholders of variables not bound here (the request line
    // and headers were checked above).
    let others = || {
        (here.len() < s.bindings.len()).then(|| Others {
            s: s.clone(),
            dest: dest.clone(),
            shown: shown_dest.clone(),
            watch: Watch::default(),
        })
    };
    let sent = {
        let mut guard = upstream.lock().await;
        let alive = match guard.as_mut() {
            Ok(Sender::H1(x)) => x.ready().await.is_ok(),
            Ok(Sender::H2(x)) => x.ready().await.is_ok(),
            Err(_) => false,
        };
        if !alive {
            *guard = connect_upstream(s, host, port).await;
        }
        match guard.as_mut() {
            Err(e) => return text(StatusCode::BAD_GATEWAY, format!("keyveil: {e}")),
            // HTTP/1.1: origin-form and `Host`; the connection is this request's until its
            // response's head is in.
            Ok(Sender::H1(x)) => {
                parts.version = Version::HTTP_11;
                if !parts.headers.contains_key(hyper::header::HOST) {
                    match HeaderValue::from_str(&authority) {
                        Ok(v) => {
                            parts.headers.insert(hyper::header::HOST, v);
                        }
                        Err(_) => {
                            return text(StatusCode::BAD_REQUEST, "keyveil: bad authority".into());
                        }
                    }
                }
                let req = Request::from_parts(parts, swapped(body, to_value, None, others()));
                x.send_request(req).await
            }
            // HTTP/2: the authority in the URI, no connection headers; streams multiplexed
            // (the lock is not held while this one waits).
            Ok(Sender::H2(x)) => {
                let mut x = x.clone();
                drop(guard);
                parts.version = Version::HTTP_2;
                let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                parts.uri = match hyper::Uri::try_from(format!("https://{authority}{pq}")) {
                    Ok(u) => u,
                    Err(_) => {
                        return text(StatusCode::BAD_REQUEST, "keyveil: bad authority".into());
                    }
                };
                parts.headers.remove(hyper::header::HOST);
                for h in CONNECTION_HEADERS {
                    parts.headers.remove(*h);
                }
                if parts
                    .headers
                    .get(hyper::header::TE)
                    .is_some_and(|v| v.as_bytes() != b"trailers")
                {
                    parts.headers.remove(hyper::header::TE);
                }
                let req = Request::from_parts(parts, swapped(body, to_value, None, others()));
                x.send_request(req).await
            }
        }
    };
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            return text(
                StatusCode::BAD_GATEWAY,
                format!("keyveil: {}: {e}", dest.shown()),
            );
        }
    };
    let (mut rparts, rbody) = resp.into_parts();
    for v in rparts.headers.values_mut() {
        for b in &here {
            if let Some(x) = swap_all(v.as_bytes(), &b.value, b.placeholder.as_bytes())
                && let Ok(n) = HeaderValue::from_bytes(&x)
            {
                *v = n;
            }
        }
    }
    let to_placeholder = Swap::new(
        here.iter()
            .map(|b| {
                (
                    b.value.to_vec(),
                    Zeroizing::new(b.placeholder.as_bytes().to_vec()),
                )
            })
            .collect(),
    );
    let audit = AuditOnEnd {
        s: s.clone(),
        method,
        host: dest.shown(),
        path: audit_path,
        status: rparts.status.as_u16(),
        variables: here.iter().map(|b| b.shown.clone()).collect(),
        bytes: 0,
    };
    Response::from_parts(rparts, swapped(rbody, to_placeholder, Some(audit), None))
}

/// The audit entry of one request to a bound host, written when its response body ends (or is
/// abandoned): method, host, path, status, response bytes, the variables swapped in.
struct AuditOnEnd {
    s: Arc<Shared>,
    method: String,
    host: String,
    path: String,
    status: u16,
    variables: Vec<String>,
    bytes: u64,
}

impl Drop for AuditOnEnd {
    fn drop(&mut self) {
        self.s.audit(
            "egress_request",
            json!({
                "run_id": self.s.run_id,
                "method": self.method,
                "host": self.host,
                "path": self.path,
                "status": self.status,
                "bytes": self.bytes,
                "variables": self.variables,
            }),
        );
    }
}

/// The placeholders of the variables not bound to a request's destination, watched for in its
/// body ([`swapped`]): one ends the body (the upstream request is cut off) and is reported.
struct Others {
    s: Arc<Shared>,
    dest: super::Dest,
    shown: String,
    watch: Watch,
}

/// A body passed through `swap` chunk by chunk (same-length swaps: `Content-Length` holds),
/// watched for `others` first when given.
fn swapped(body: Incoming, swap: Swap, audit: Option<AuditOnEnd>, others: Option<Others>) -> Body {
    struct St {
        body: Incoming,
        swap: Swap,
        done: bool,
        audit: Option<AuditOnEnd>,
        trailers: Option<Frame<Bytes>>,
        others: Option<Others>,
    }
    if swap.is_empty() && audit.is_none() && body.is_end_stream() {
        return body.map_err(BoxError::from).boxed_unsync();
    }
    let st = St {
        body,
        swap,
        done: false,
        audit,
        trailers: None,
        others,
    };
    let stream = futures::stream::unfold(st, |mut st| async move {
        if let Some(t) = st.trailers.take() {
            return Some((Ok(t), st));
        }
        if st.done {
            return None;
        }
        loop {
            match st.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(Others {
                            s,
                            dest,
                            shown,
                            watch,
                        }) = &mut st.others
                            && let Some(b) = watch
                                .find(s.bindings.iter().filter(|b| !b.dests.contains(dest)), &data)
                        {
                            s.report_blocked(
                                &b.shown,
                                shown,
                                "sent in a body, not bound to this host",
                            );
                            st.done = true;
                            let e = BoxError::from(
                                "keyveil: blocked: a placeholder in a body to a host it is not bound to",
                            );
                            return Some((Err(e), st));
                        }
                        if let Some(a) = &mut st.audit {
                            a.bytes += data.len() as u64;
                        }
                        let out = if st.swap.is_empty() {
                            data
                        } else {
                            st.swap.push_bytes(data)
                        };
                        if out.is_empty() {
                            continue;
                        }
                        return Some((Ok(Frame::data(out)), st));
                    }
                    Err(frame) => {
                        st.done = true;
                        let rest = st.swap.finish();
                        if rest.is_empty() {
                            return Some((Ok(frame), st));
                        }
                        st.trailers = Some(frame);
                        return Some((Ok(Frame::data(Bytes::from(rest))), st));
                    }
                },
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(BoxError::from(e)), st));
                }
                None => {
                    st.done = true;
                    let rest = st.swap.finish();
                    if rest.is_empty() {
                        return None;
                    }
                    return Some((Ok(Frame::data(Bytes::from(rest))), st));
                }
            }
        }
    });
    StreamBody::new(stream).boxed_unsync()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use base64::Engine as _;

    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn a_placeholder_inside_basic_is_seen_and_swapped_for_its_value_only() {
        let value = format!("v{}", "7".repeat(20));
        let placeholder = super::super::placeholder::placeholder(&value).unwrap();
        let b = Binding {
            shown: "API_TOKEN".into(),
            placeholder: placeholder.clone(),
            value: Zeroizing::new(value.clone().into_bytes()),
            dests: Vec::new(),
        };
        let basic =
            HeaderValue::from_str(&format!("Basic {}", b64(&format!("me:{placeholder}")))).unwrap();
        let req = Request::get("https://api.example/")
            .header("authorization", basic.clone())
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        assert!(carries(&parts, &placeholder), "seen inside base64");
        let lower =
            HeaderValue::from_str(&format!("basic {}", b64(&format!("{placeholder}:x")))).unwrap();
        assert!(basic_credential(&lower).is_some(), "the scheme in any case");
        let swapped = swap_in_basic(&basic, &[&b]).unwrap();
        assert_eq!(
            swapped.to_str().unwrap(),
            format!("Basic {}", b64(&format!("me:{value}")))
        );
        assert_eq!(swapped.len(), basic.len());
        // Not a Basic credential, or one without the placeholder: left alone.
        let other = HeaderValue::from_str(&format!("Basic {}", b64("me:other"))).unwrap();
        assert!(swap_in_basic(&other, &[&b]).is_none());
        let bearer = HeaderValue::from_str(&format!("Bearer {}", b64(&placeholder))).unwrap();
        assert!(basic_credential(&bearer).is_none());
    }
}
