//! A `CONNECT` to a bound host: TLS terminated with the run's leaf for it, one verified
//! upstream connection per session (HTTP/2 when it offers it, else HTTP/1.1), and each request
//! forwarded with its placeholders swapped for their values (request line, headers, body), the
//! response's copies of the values swapped back, and one audit entry per request.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1 as client_http1;
use hyper::client::conn::http2 as client_http2;
use hyper::header::HeaderValue;
use hyper::server::conn::http1 as server_http1;
use hyper::server::conn::http2 as server_http2;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use super::body::{AuditOnEnd, Others, Tally, not_in_body, swapped};
use super::http::{Body, PROXY_HEADERS, carries, shown_dests, swap_in_basic, text};
use super::placeholder::{Swap, swap_all};
use super::watch::Watch;
use super::{Binding, Shared};

/// A session's upstream connection, or why it could not be made.
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

/// A bound host: TLS terminated with the run's leaf for it, one verified upstream connection
/// per session, each request forwarded with [`forward`].
pub(super) async fn intercept(
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

/// A verified TLS connection to the bound host, HTTP/2 when its ALPN chose it, else HTTP/1.1.
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
    let (mut parts, body) = req.into_parts();
    let here: Vec<&Binding> = s
        .bindings
        .iter()
        .filter(|b| b.dests.contains(&dest))
        .collect();
    if let Some(refused) = refuse_unbound(&parts, s, &dest) {
        return refused;
    }
    let authority = match named_authority(&parts, s, &dest, &here) {
        Ok(a) => a,
        Err(refused) => return *refused,
    };
    let audit_path = audited_path(&parts, s);
    let used = match swap_into_head(&mut parts, &here, s, &dest) {
        Ok(used) => used,
        Err(refused) => return *refused,
    };
    identity_only(&mut parts.headers);
    let audit = Arc::new(AuditOnEnd {
        s: s.clone(),
        method: parts.method.to_string(),
        host: dest.shown(),
        path: audit_path,
        status: AtomicU16::new(0),
        variables: here.iter().map(|b| b.shown.clone()).collect(),
        used: Mutex::new(used),
        bytes: AtomicU64::new(0),
    });
    // Bodies get the values of bindings that name them only (`bind --body`); the others keep
    // an empty pattern (never matched), so the swap's hits stay in the order of `here`.
    let to_value = Swap::new(
        here.iter()
            .map(|b| {
                if b.bound_in.body {
                    (b.placeholder.as_bytes().to_vec(), b.value.clone())
                } else {
                    (Vec::new(), Zeroizing::new(Vec::new()))
                }
            })
            .collect(),
    );
    // The body is watched for the placeholders of variables not bound here, and of those
    // bound here for headers only (the request line and headers were checked above).
    let others = s
        .bindings
        .iter()
        .any(|b| not_in_body(b, &dest))
        .then(|| Others {
            s: s.clone(),
            dest: dest.clone(),
            shown: format!("https://{}", dest.shown()),
            watch: Watch::default(),
        });
    let body = swapped(body, to_value, Some(Tally::Request(audit.clone())), others);
    let resp = match send_upstream(upstream, s, &dest, &authority, parts, body).await {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    audit
        .status
        .store(resp.status().as_u16().max(1), Ordering::Relaxed);
    if let Some(coding) = encoded(&resp) {
        // The audit entry is written when the request's last part is done (`audit` drops).
        return text(
            StatusCode::BAD_GATEWAY,
            format!(
                "keyveil: the answer of {} is encoded ({coding}) although the proxy asked for \
                 none: a value echoed inside it could not be swapped back, so it is not passed on\n\
                 hint: the server ignores `Accept-Encoding: identity`; ask its owner, or unbind \
                 the variable from {}",
                dest.shown(),
                dest.shown()
            ),
        );
    }
    swap_out_of_response(resp, &here, audit)
}

/// Asks the bound host for an answer in clear: `Accept-Encoding: identity`, and `TE` only as
/// `trailers`. A compressed or transfer-coded answer would carry an echoed value in bytes the
/// response swap cannot see (`tests/it/redteam_s11_egress.rs`); the child's client takes an
/// uncompressed answer whatever it asked for.
fn identity_only(headers: &mut hyper::HeaderMap) {
    headers.insert(
        hyper::header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    let trailers = headers
        .get_all(hyper::header::TE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|t| {
            let t = t.split(|b| *b == b';').next().unwrap_or_default();
            t.trim_ascii().eq_ignore_ascii_case(b"trailers")
        });
    headers.remove(hyper::header::TE);
    if trailers {
        headers.insert(hyper::header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The coding of a response whose body is encoded despite [`identity_only`] (a
/// `Content-Encoding` other than `identity`, or a transfer coding other than `chunked`), as
/// shown in the refusal; `None` for a body in clear or no body.
fn encoded(resp: &Response<Incoming>) -> Option<String> {
    if resp.body().is_end_stream() {
        return None;
    }
    let h = resp.headers();
    let listed = |name: hyper::header::HeaderName, clear: &[&str]| {
        h.get_all(&name)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
            .find(|t| !t.is_empty() && !clear.contains(&t.as_str()))
            .map(|t| format!("{name}: {t}"))
    };
    listed(hyper::header::CONTENT_ENCODING, &["identity"])
        .or_else(|| listed(hyper::header::TRANSFER_ENCODING, &["chunked"]))
}

/// A response the proxy answers itself instead of forwarding (a refusal or a failure); boxed,
/// as it travels in the `Err` of each step of [`forward`].
type Refusal = Box<Response<Body>>;

/// The refusal of a request to `dest` that carries the placeholder of a variable not bound
/// there (reported as blocked), or `None` when it carries none.
fn refuse_unbound(
    parts: &hyper::http::request::Parts,
    s: &Shared,
    dest: &super::Dest,
) -> Option<Response<Body>> {
    let shown_dest = format!("https://{}", dest.shown());
    let b = s
        .bindings
        .iter()
        .filter(|b| !b.dests.contains(dest))
        .find(|b| carries(parts, &b.placeholder))?;
    s.report_blocked(&b.shown, &shown_dest, "not bound to this host");
    Some(text(
        StatusCode::FORBIDDEN,
        format!(
            "keyveil: blocked: {} is bound to {}, not {}",
            b.shown,
            shown_dests(b),
            dest.shown()
        ),
    ))
}

/// The authority the request names (its `Host`, else its URI's, else the tunnel's), once
/// checked to be the destination the tunnel was opened to ([`names_tunnel`]); a request naming
/// another host or port, or none, is refused and reported for each variable bound `here`.
fn named_authority(
    parts: &hyper::http::request::Parts,
    s: &Shared,
    dest: &super::Dest,
    here: &[&Binding],
) -> Result<String, Refusal> {
    if !names_tunnel(parts, dest) {
        let shown_dest = format!("https://{}", dest.shown());
        for b in here {
            s.report_blocked(&b.shown, &shown_dest, "Host is not the bound host and port");
        }
        return Err(Box::new(text(
            StatusCode::FORBIDDEN,
            format!(
                "keyveil: blocked: a request through the tunnel to {} must name it in Host \
                 (host and port)",
                dest.shown()
            ),
        )));
    }
    let host_header = parts
        .headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<hyper::http::uri::Authority>().ok());
    Ok(host_header
        .or_else(|| parts.uri.authority().cloned())
        .map_or_else(|| dest.shown(), |a| a.to_string()))
}

/// Whether a request inside the tunnel to `dest` names `dest` and nothing else: its `Host`
/// (HTTP/1.1) and its URI's authority (`:authority` in HTTP/2, or an absolute-form target),
/// each one given, must be `dest`'s host **and port**, and at least one must be given.
///
/// A shared front (a CDN) routes by `Host`, so `CONNECT api.example.com:443` carrying
/// `Host: attacker.example`, or `Host: api.example.com:8443` (another service, or another
/// tenant, behind the same front), would take the value elsewhere. An authority without a
/// port names the default port of its scheme: `Host` (always inside this TLS tunnel) and an
/// `https://` target 443, an `http://` target 80 (RFC 9110, 4.2 and 7.2). A second `Host` is
/// refused (`get` reads the first only, but an HTTP/1.1 upstream gets both and a front may
/// route by either), and so is an authority with userinfo (`evil.example@host`), which names
/// `host` here but is forwarded as it is and which a front may read from its start.
fn names_tunnel(parts: &hyper::http::request::Parts, dest: &super::Dest) -> bool {
    use hyper::http::uri::Authority;
    // The port is read from what follows the host: `http` accepts `host:x` as an authority
    // (and reads no port in it), which must not pass for the default port.
    let norm = |a: &Authority, default_port: u16| {
        if a.as_str().contains('@') {
            return None;
        }
        let port = match a.as_str().get(a.host().len()..)? {
            "" | ":" => default_port,
            rest => {
                let digits = rest.strip_prefix(':')?;
                if !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                digits.parse::<u16>().ok()?
            }
        };
        let host = a
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        Some((host, port))
    };
    let host_header = parts.headers.get(hyper::header::HOST).map(|h| {
        h.to_str()
            .ok()
            .and_then(|h| h.parse::<Authority>().ok())
            .and_then(|a| norm(&a, 443))
    });
    let uri_default = if parts.uri.scheme() == Some(&hyper::http::uri::Scheme::HTTP) {
        80
    } else {
        443
    };
    let named: Vec<Option<(String, u16)>> = host_header
        .into_iter()
        .chain(parts.uri.authority().map(|a| norm(a, uri_default)))
        .collect();
    let hosts = parts.headers.get_all(hyper::header::HOST).iter().count();
    !named.is_empty()
        && hosts <= 1
        && named.iter().all(|n| {
            n.as_ref()
                .is_some_and(|(h, p)| *h == dest.host && *p == dest.port)
        })
}

/// The request's path as audited: no query, each placeholder replaced by its variable's name.
fn audited_path(parts: &hyper::http::request::Parts, s: &Shared) -> String {
    let mut audit_path = parts.uri.path().to_owned();
    for b in &s.bindings {
        audit_path = audit_path.replace(&b.placeholder, &format!("[{}]", b.shown));
    }
    audit_path
}

/// Swaps each placeholder bound `here` for its value in the request line and the headers
/// (inside an `Authorization` Basic credential too) and drops the headers meant for the proxy; refused
/// when the swapped URL is not a valid one. Returns, for each of `here`, whether it was
/// swapped in.
fn swap_into_head(
    parts: &mut hyper::http::request::Parts,
    here: &[&Binding],
    s: &Shared,
    dest: &super::Dest,
) -> Result<Vec<bool>, Refusal> {
    let mut used = vec![false; here.len()];
    let mut pq = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .as_bytes()
        .to_vec();
    for (b, u) in here.iter().zip(used.iter_mut()) {
        if let Some(x) = swap_all(&pq, b.placeholder.as_bytes(), &b.value) {
            if !b.bound_in.url {
                // A host may log or store a URL and show it back later: the value goes into
                // a URL only where the binding says so.
                s.report_blocked(
                    &b.shown,
                    &format!("https://{}", dest.shown()),
                    "sent in a URL; its binding covers headers only",
                );
                return Err(Box::new(text(
                    StatusCode::FORBIDDEN,
                    format!(
                        "keyveil: blocked: {} is bound to {} for headers only, and the request \
                         put it in the URL\nhint: if this API takes the key in the URL, bind it \
                         with `keyveil policy set ENV bind {} HOST --url` (your factor)",
                        b.shown,
                        dest.shown(),
                        b.shown
                    ),
                )));
            }
            pq = x;
            *u = true;
        }
    }
    parts.uri = match hyper::Uri::try_from(pq) {
        Ok(u) => u,
        Err(_) => {
            return Err(Box::new(text(
                StatusCode::BAD_REQUEST,
                "keyveil: the URL cannot carry this value (characters a URL may not hold)".into(),
            )));
        }
    };
    for h in PROXY_HEADERS {
        parts.headers.remove(*h);
    }
    for (name, v) in &mut parts.headers {
        // Inside a Basic credential in `Authorization` only: elsewhere (`X-Note: Basic …`, a
        // header the host may echo) the proxy would hand the child the value base64-encoded,
        // a form the response swap does not recognise (`tests/it/redteam_s11b_egress.rs`).
        if name == hyper::header::AUTHORIZATION
            && let Some(n) = swap_in_basic(v, here, &mut used)
        {
            *v = n;
        }
        for (b, u) in here.iter().zip(used.iter_mut()) {
            if let Some(x) = swap_all(v.as_bytes(), b.placeholder.as_bytes(), &b.value)
                && let Ok(n) = HeaderValue::from_bytes(&x)
            {
                let mut n = n;
                n.set_sensitive(true);
                *v = n;
                *u = true;
            }
        }
    }
    Ok(used)
}

/// Sends the (swapped) request over the session's upstream connection, reconnected first when
/// it is gone, shaped for the protocol that connection speaks (see [`for_h1`], [`for_h2`]);
/// the upstream's response, or the proxy's own answer when it cannot be sent.
async fn send_upstream(
    upstream: &Upstream,
    s: &Shared,
    dest: &super::Dest,
    authority: &str,
    mut parts: hyper::http::request::Parts,
    body: Body,
) -> Result<Response<Incoming>, Refusal> {
    let mut guard = upstream.lock().await;
    let alive = match guard.as_mut() {
        Ok(Sender::H1(x)) => x.ready().await.is_ok(),
        Ok(Sender::H2(x)) => x.ready().await.is_ok(),
        Err(_) => false,
    };
    if !alive {
        *guard = connect_upstream(s, &dest.host, dest.port).await;
    }
    let sent = match guard.as_mut() {
        Err(e) => {
            return Err(Box::new(text(
                StatusCode::BAD_GATEWAY,
                format!("keyveil: {e}"),
            )));
        }
        // HTTP/1.1: the connection is this request's until its response's head is in.
        Ok(Sender::H1(x)) => {
            for_h1(&mut parts, authority)?;
            x.send_request(Request::from_parts(parts, body)).await
        }
        // HTTP/2: streams multiplexed (the lock is not held while this one waits).
        Ok(Sender::H2(x)) => {
            let mut x = x.clone();
            drop(guard);
            for_h2(&mut parts, authority)?;
            x.send_request(Request::from_parts(parts, body)).await
        }
    };
    sent.map_err(|e| {
        // hyper's own words ("error from user's Body stream") hide the reason: a body this
        // proxy cut off says why in its source, with what to do.
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(inner) = source {
            why = format!("{why}: {inner}");
            source = inner.source();
        }
        Box::new(text(
            StatusCode::BAD_GATEWAY,
            format!("keyveil: {}: {why}", dest.shown()),
        ))
    })
}

/// Shapes a request head for HTTP/1.1: origin-form, and a `Host` (the `authority`) when it
/// has none.
fn for_h1(parts: &mut hyper::http::request::Parts, authority: &str) -> Result<(), Refusal> {
    parts.version = Version::HTTP_11;
    if !parts.headers.contains_key(hyper::header::HOST) {
        let Ok(v) = HeaderValue::from_str(authority) else {
            return Err(Box::new(text(
                StatusCode::BAD_REQUEST,
                "keyveil: bad authority".into(),
            )));
        };
        parts.headers.insert(hyper::header::HOST, v);
    }
    Ok(())
}

/// Shapes a request head for HTTP/2: the `authority` in the URI, no `Host` and no connection
/// headers, `TE` only as `trailers`.
fn for_h2(parts: &mut hyper::http::request::Parts, authority: &str) -> Result<(), Refusal> {
    parts.version = Version::HTTP_2;
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match hyper::Uri::try_from(format!("https://{authority}{pq}")) {
        Ok(u) => u,
        Err(_) => {
            return Err(Box::new(text(
                StatusCode::BAD_REQUEST,
                "keyveil: bad authority".into(),
            )));
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
    Ok(())
}

/// The upstream's response as the child gets it: each value bound `here` swapped back for its
/// placeholder in the headers and the body, and `audit` written when the body ends.
fn swap_out_of_response(
    resp: Response<Incoming>,
    here: &[&Binding],
    audit: Arc<AuditOnEnd>,
) -> Response<Body> {
    let (mut rparts, rbody) = resp.into_parts();
    // An HTTP/1.1 upstream's reason phrase that is not the standard one is kept by hyper and
    // sent on to an HTTP/1.1 child: an API that echoes input there would hand over the value.
    if let Some(r) = rparts.extensions.get::<hyper::ext::ReasonPhrase>() {
        let mut phrase = r.as_bytes().to_vec();
        for b in here {
            if let Some(x) = swap_all(&phrase, &b.value, b.placeholder.as_bytes()) {
                phrase = x;
            }
        }
        match hyper::ext::ReasonPhrase::try_from(phrase) {
            Ok(r) => {
                rparts.extensions.insert(r);
            }
            Err(_) => {
                rparts.extensions.remove::<hyper::ext::ReasonPhrase>();
            }
        }
    }
    for v in rparts.headers.values_mut() {
        for b in here {
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
    Response::from_parts(
        rparts,
        swapped(rbody, to_placeholder, Some(Tally::Response(audit)), None),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dest(host: &str, port: u16) -> super::super::Dest {
        super::super::Dest {
            host: host.into(),
            port,
        }
    }

    /// A request head with `uri` and each of `hosts` as a `Host` header.
    fn head(uri: &str, hosts: &[&str]) -> hyper::http::request::Parts {
        let mut b = Request::get(uri);
        for h in hosts {
            b = b.header(hyper::header::HOST, *h);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_request_must_name_the_tunnels_host_and_port() {
        let api = dest("api.example", 443);
        let alt = dest("localhost", 8443);
        // Named as the tunnel: with or without the default port, by Host or by `:authority`.
        for (d, uri, hosts) in [
            (&api, "/v1", &["api.example"][..]),
            (&api, "/v1", &["API.Example:443"][..]),
            (&api, "https://api.example/v1", &[][..]),
            (&api, "https://api.example:443/v1", &["api.example"][..]),
            (&alt, "/v1", &["localhost:8443"][..]),
            (&alt, "https://localhost:8443/v1", &["localhost:8443"][..]),
            (&dest("::1", 8443), "/v1", &["[::1]:8443"][..]),
        ] {
            assert!(names_tunnel(&head(uri, hosts), d), "{uri} {hosts:?}");
        }
        // The bound host on another port, the default port where the tunnel is on another,
        // another host, a port in one of Host and `:authority` only, none, two, userinfo.
        for (d, uri, hosts) in [
            (&api, "/v1", &["api.example:8443"][..]),
            (&api, "https://api.example:8443/v1", &[][..]),
            (&api, "/v1", &["api.example:80"][..]),
            (&api, "http://api.example/v1", &[][..]),
            (&alt, "/v1", &["localhost"][..]),
            (&alt, "/v1", &["localhost:443"][..]),
            (&alt, "https://localhost/v1", &[][..]),
            (&alt, "/v1", &["localhost:9443"][..]),
            (&alt, "https://localhost:8443/v1", &["localhost:9443"][..]),
            (&alt, "https://localhost:9443/v1", &["localhost:8443"][..]),
            (&api, "/v1", &["attacker.example"][..]),
            (&api, "/v1", &[][..]),
            (&api, "/v1", &["api.example", "api.example"][..]),
            (&api, "https://evil.example@api.example/v1", &[][..]),
            (&api, "/v1", &["api.example:x"][..]),
            (&api, "/v1", &["api.example:+443"][..]),
            (&alt, "/v1", &["localhost:70000"][..]),
        ] {
            assert!(!names_tunnel(&head(uri, hosts), d), "{uri} {hosts:?}");
        }
    }
}
