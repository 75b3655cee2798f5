//! The proxy's sessions: HTTP/1.1 from the child (hyper), `CONNECT` tunnels passed through or,
//! to a bound host, handed to [`super::intercept`] (TLS terminated with tokio-rustls, a leaf of
//! the run's CA; HTTP/2 or HTTP/1.1 as the child's ALPN chooses; each request forwarded to the
//! verified upstream with placeholders swapped for values); plain HTTP forwarded unless it
//! carries a placeholder.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1 as client_http1;
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use super::http::{Body, BoxError, PROXY_HEADERS, carries, fields_carry, shown_dests, text};
use super::intercept::intercept;
use super::watch::Watch;
use super::{Shared, owner};

/// Refused connections audited one by one per run (then one in 64).
const REFUSALS_AUDITED: u64 = 8;

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

/// One request of the child's HTTP/1.1 connection: a `CONNECT` (tunnelled, or intercepted
/// for a bound host) or a plain HTTP request.
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
/// its trailers, if any, are checked like headers): one ends the body with an error (the
/// upstream request is cut off) and is reported as blocked.
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
