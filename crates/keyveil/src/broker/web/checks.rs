//! The checks every request passes (Host, Origin, Referer, Sec-Fetch-Site; then session and CSRF
//! for a POST) and the headers every response carries.

use super::auth::{Digest32, Server, same};
use super::{AppState, CSP, REFERRER_POLICY, notice};
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;

pub(super) fn forbidden(why: &str) -> Response {
    tracing::warn!(why, "approval page refused a request");
    notice(StatusCode::FORBIDDEN, "Refused", why)
}

pub(super) fn one_header<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a str>, ()> {
    let mut all = headers.get_all(name).iter();
    let first = all.next();
    if all.next().is_some() {
        return Err(());
    }
    match first {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| ()),
    }
}

/// Host, Origin, Referer and Sec-Fetch-Site checks. `Err` says why the request is refused.
pub(super) fn check(
    server: &Server,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(), &'static str> {
    // DNS rebinding: a page of evil.example that re-resolves to 127.0.0.1 sends its own name.
    let host = one_header(headers, &header::HOST)
        .ok()
        .flatten()
        .ok_or("missing or repeated Host header")?;
    if !server.host_ok(host) {
        return Err(
            "wrong Host header: this page answers only to 127.0.0.1 and localhost at its own port",
        );
    }
    if let Some(a) = uri.authority()
        && !server.host_ok(a.as_str())
    {
        return Err("wrong authority in the request line");
    }
    let origins = server.origins();
    let origin = one_header(headers, &header::ORIGIN).map_err(|()| "repeated Origin header")?;
    if let Some(o) = origin
        && !origins.iter().any(|x| x == o)
    {
        return Err("a request from another origin");
    }
    // Fetch metadata: refuse requests another site (or another port of 127.0.0.1) started.
    if let Ok(Some(site)) = one_header(headers, &HeaderName::from_static("sec-fetch-site"))
        && matches!(site, "cross-site" | "same-site")
    {
        return Err(
            "a request started by another site; open the link directly (paste it into the address bar)",
        );
    }
    if method != Method::GET && method != Method::HEAD && origin.is_none() {
        // A state change must say where it comes from.
        let referer = one_header(headers, &header::REFERER)
            .ok()
            .flatten()
            .ok_or("a form post without Origin or Referer")?;
        if !origins.iter().any(|o| {
            referer
                .strip_prefix(o.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
        }) {
            return Err("a form post from another origin");
        }
    }
    Ok(())
}

pub(super) fn harden(headers: &mut HeaderMap) {
    let set = |h: &mut HeaderMap, k: HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(headers, header::CONTENT_SECURITY_POLICY, CSP);
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::REFERRER_POLICY, REFERRER_POLICY);
    set(headers, header::CACHE_CONTROL, "no-store");
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(
        headers,
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        headers,
        HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    // No CORS, ever: nothing here adds such headers; make sure nothing slipped in.
    let cors: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for k in cors {
        headers.remove(k);
    }
}

pub(super) async fn guard(
    State(st): State<AppState>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let mut resp = match check(&st.server, req.method(), req.uri(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(why) => forbidden(why),
    };
    harden(resp.headers_mut());
    resp
}

pub(super) fn no_session() -> Response {
    notice(
        StatusCode::UNAUTHORIZED,
        "This page needs a fresh link",
        "Run `keyveil approve --web` in your terminal and open the link it gives you. Links work once and for 5 minutes.",
    )
}

/// A refusal response, boxed (a `Response` is large).
pub(super) type Refusal = Box<Response>;

pub(super) fn session(st: &AppState, headers: &HeaderMap) -> Result<Digest32, Refusal> {
    st.server
        .session_of(headers, Instant::now())
        .ok_or_else(|| Box::new(no_session()))
}

/// Session, then CSRF; returns the session key.
/// A posted form that carries the session's CSRF token.
pub(super) trait CsrfForm {
    /// The token the form posted, if any.
    fn csrf(&self) -> Option<&str>;
}

/// The preamble of every POST handler of a session page: the form and the session's key, or
/// the refusal, in the order a visitor learns them: no (or an expired) session first, whatever
/// the form; then a malformed form; then a missing or wrong CSRF token.
pub(super) fn checked_form<F: CsrfForm>(
    st: &AppState,
    headers: &HeaderMap,
    form: Result<Form<F>, FormRejection>,
) -> Result<(F, Digest32), Refusal> {
    let Ok(Form(f)) = form else {
        return Err(match session(st, headers) {
            Err(r) => r,
            Ok(_) => Box::new(bad_form()),
        });
    };
    let key = post_checks(st, headers, f.csrf())?;
    Ok((f, key))
}

/// The answer to a form that does not parse.
pub(super) fn bad_form() -> Response {
    notice(
        StatusCode::BAD_REQUEST,
        "Malformed form",
        "Reload the page and try again.",
    )
}

pub(super) fn post_checks(
    st: &AppState,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Result<Digest32, Refusal> {
    let key = session(st, headers)?;
    let expected = st.server.csrf_of(&key).unwrap_or_default();
    match csrf {
        Some(c) if !expected.is_empty() && same(c, &expected) => Ok(key),
        _ => Err(Box::new(forbidden(
            "missing or wrong CSRF token; reload the page and try again",
        ))),
    }
}
