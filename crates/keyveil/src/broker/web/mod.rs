//! The local web approval page: an HTTP/1 server on `127.0.0.1` at a random port, started
//! inside the broker the first time a client asks for its URL (`keyveil approve --web`).
//!
//! The page is a front-end of the same operations the CLI uses (`Requests`, `Approve`, `Deny`
//! through [`super::ops::dispatch`]); it adds no authority. Approving still needs the human's
//! factor, checked and rate-limited by the `Approve` operation. What the page adds is a browser,
//! and browsers are attack surface, so every request passes these checks (see
//! `docs/approval-page.md`):
//!
//! - `Host` is exactly `127.0.0.1:PORT` or `localhost:PORT` (DNS rebinding);
//! - an `Origin` header, when present, is this server's origin; a POST must carry a matching
//!   `Origin`, or failing that a matching `Referer`; `Sec-Fetch-Site: cross-site|same-site` is
//!   refused (cross-site request forgery, other servers on 127.0.0.1);
//! - a session comes only from a one-time URL token (32 random bytes, 5 minutes, single use),
//!   exchanged for an `HttpOnly; SameSite=Strict` cookie; every other route needs the session;
//! - `keyveil lock` replaces the key that signs links, sessions and CSRF tokens, so every page
//!   session and unspent link ends with the unlock it was opened under;
//! - every POST carries the session's CSRF token;
//! - no CORS headers, ever; a strict CSP with no inline script; no framing; no caching.
//!
//! The page also has a value-entry form (`/set`, see [`set_url`]): a one-time link bound to one
//! declared variable that has no value yet opens a session that can do exactly one thing, store
//! that variable's value, and nothing else (no approvals, no other variable). It is what MCP
//! URL-mode elicitation sends the human to: the value goes from the browser to the broker and
//! never through the agent host.
//!
//! Tokens and cookies are kept as SHA-256 digests, so a lookup's timing says nothing about a
//! stored value, and none is ever logged.

mod view;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use askama::Template;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::Broker;
use super::state::{OpError, OpResult};
use keyveil_proto::ErrorCode;
use keyveil_proto::op;

mod approvals;
mod auth;
mod checks;
mod reveal;
mod set_value;
use approvals::{approve, deny, events, fragment, index, login, revoke};
pub(crate) use auth::Server;
use checks::guard;
use reveal::reveal;
use set_value::{set_page, set_url, set_value};

/// Answers the requests for the page's links (`WebUrl`: the approval page's one-time URL,
/// `SetUrl`: a value-entry link), which the accept loop routes here rather than to the
/// dispatcher (the page is a client of the dispatcher, `ops::call`): each with its typed
/// reply, names hidden as in every reply.
pub(crate) async fn answer(
    broker: &Arc<Broker>,
    req: keyveil_proto::Request,
) -> keyveil_proto::Reply {
    use super::ops::{answer, reply_of, typed};
    use keyveil_proto::Request;
    let r = match req {
        Request::WebUrl => answer(op::WebUrl, url(broker).await),
        Request::SetUrl(o) => typed(&o).answer(set_url(broker, &o.environment, &o.name).await),
        other => Err(OpError::new(
            ErrorCode::Usage,
            format!("{} is not a request of the approval page", other.op()),
        )),
    };
    reply_of(broker, r, true)
}

/// How long a URL token may wait for its first use.
pub(crate) const TOKEN_TTL: Duration = Duration::from_secs(300);
/// How long a browser session lasts (absolute, from login).
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Value-entry tokens kept at once; minting more drops the oldest.
const MAX_TOKENS: usize = 32;
/// Value-entry sessions kept at once; a new one past this drops the oldest.
const MAX_SESSIONS: usize = 16;
/// Spent approval-page tokens remembered (each until its deadline) so that none is used twice.
/// When full, a login is refused (fail closed) until the oldest expire; nothing live is ever
/// dropped. Reaching it takes this many logins within [`TOKEN_TTL`].
const MAX_SPENT: usize = 65_536;
/// Sessions opened by a factor (`POST /reveal`, showing hidden names) kept at once.
const MAX_REVEALED: usize = 64;
/// Flash messages (the outcome of the last approve or deny) kept at once; dropping one loses
/// only that message.
const MAX_FLASHES: usize = 256;
/// How long a value-entry link may wait for its first use.
pub(crate) const SET_TOKEN_TTL: Duration = Duration::from_secs(900);
/// How long a value-entry session lasts.
pub(crate) const SET_SESSION_TTL: Duration = Duration::from_secs(1800);
/// Largest request body accepted (a form with a passphrase is far smaller).
const MAX_BODY: usize = 16 * 1024;

/// The `Content-Security-Policy` of every response.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'";

/// `Referrer-Policy` of every response. Not `no-referrer`: under that policy browsers send
/// `Origin: null` on same-origin form POSTs (Fetch standard, "append a request `Origin`
/// header"), which would make the POST origin check impossible. `same-origin` sends a referrer
/// only to this server itself and never to anyone else (the page loads nothing from elsewhere).
pub(crate) const REFERRER_POLICY: &str = "same-origin";

const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// The approval page's place in the broker: empty until the first `WebUrl` request.
#[derive(Default)]
pub(crate) struct Web {
    server: tokio::sync::OnceCell<Arc<Server>>,
}

/// The approval page's URL with a fresh one-time token, starting the server if needed:
/// a [`op::OneTimeLink`] to `http://127.0.0.1:PORT/login?token=...` (5 minutes).
///
/// Errors: the loopback port cannot be bound; the OS random source fails.
pub(crate) async fn url(broker: &Arc<Broker>) -> OpResult<op::OneTimeLink> {
    let server = broker
        .web
        .server
        .get_or_try_init(|| start(broker.clone()))
        .await?;
    let token = server.mint(Instant::now())?;
    Ok(op::OneTimeLink {
        url: format!("http://127.0.0.1:{}/login?token={token}", server.port),
        expires_in_seconds: TOKEN_TTL.as_secs(),
    })
}

impl Web {
    /// Ends every approval-page session, link and value-entry session (`keyveil lock`): the
    /// page's signing key is replaced, so a browser (or an agent) holding an old cookie must
    /// log in again with a new link. A page that was never started has nothing to end.
    pub(crate) fn end_sessions(&self) {
        if let Some(s) = self.server.get() {
            s.rotate();
        }
    }
}

#[derive(Clone)]
struct AppState {
    broker: Arc<Broker>,
    server: Arc<Server>,
}

async fn start(broker: Arc<Broker>) -> OpResult<Arc<Server>> {
    let fail = |e: std::io::Error| {
        OpError::new(
            ErrorCode::Failed,
            format!("cannot start the approval page on 127.0.0.1: {e}"),
        )
        .hint("approve in a terminal instead: `keyveil approve --watch`")
    };
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(fail)?;
    let port = listener.local_addr().map_err(fail)?.port();
    let server = Arc::new(Server::new(port)?);
    let app = router(AppState {
        broker: broker.clone(),
        server: server.clone(),
    });
    let stop = broker.shutdown.clone();
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the approval page stopped");
        }
    });
    tracing::info!(port, "approval page listening on 127.0.0.1");
    Ok(server)
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/login", get(login))
        .route("/", get(index))
        .route("/requests", get(fragment))
        .route("/events", get(events))
        .route("/approve", post(approve))
        .route("/deny", post(deny))
        .route("/revoke", post(revoke))
        .route("/reveal", post(reveal))
        .route("/set", get(set_page).post(set_value))
        .route("/static/app.js", get(js))
        .route("/static/app.css", get(css))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Checks on every request, and headers on every response.

fn notice(status: StatusCode, title: &str, text: &str) -> Response {
    let body = view::Notice {
        title: title.to_owned(),
        text: text.to_owned(),
        ok: false,
    }
    .render()
    .unwrap_or_else(|_| title.to_owned());
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn html(body: askama::Result<String>) -> Response {
    match body {
        Ok(b) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            b,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "approval page template failed");
            notice(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The page could not be drawn",
                "See the broker log; approve in a terminal with `keyveil approve --watch`.",
            )
        }
    }
}

fn see_other(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

// ---------------------------------------------------------------------------------------------
// Routes.

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response()
}

async fn not_found() -> Response {
    notice(StatusCode::NOT_FOUND, "Not found", "Nothing here.")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::auth::same;
    use super::checks::check;
    use super::*;
    use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

    #[test]
    fn tokens_are_single_use_and_expire() {
        let s = Server::new(4242).unwrap();
        let t0 = Instant::now();
        let a = s.mint(t0).unwrap();
        assert_eq!(a.len(), 64);
        assert!(s.redeem(&a, t0));
        assert!(!s.redeem(&a, t0), "replayed");
        let b = s.mint(t0).unwrap();
        assert!(!s.redeem(&b, t0 + TOKEN_TTL), "expired");
        assert!(!s.redeem(&"0".repeat(64), t0));
    }

    #[test]
    fn no_number_of_new_links_or_logins_voids_an_earlier_one() {
        let s = Server::new(1).unwrap();
        let t0 = Instant::now();
        let first = s.mint(t0).unwrap();
        let session = s.open_session(t0).unwrap();
        for _ in 0..1000 {
            let t = s.mint(t0).unwrap();
            assert!(s.redeem(&t, t0));
            s.open_session(t0).unwrap();
        }
        assert!(s.redeem(&first, t0), "an earlier link was voided");
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{}={session}", s.cookie_name())).unwrap(),
        );
        assert!(s.session_of(&h, t0).is_some(), "an earlier session ended");
        assert!(s.session_of(&h, t0 + SESSION_TTL).is_none(), "expired");
    }

    #[test]
    fn spent_tokens_are_bounded_and_fail_closed() {
        let s = Server::new(1).unwrap();
        let t0 = Instant::now();
        for _ in 0..MAX_SPENT {
            let t = s.mint(t0).unwrap();
            assert!(s.redeem(&t, t0));
        }
        let t = s.mint(t0).unwrap();
        assert!(!s.redeem(&t, t0), "a login past the bound is refused");
        assert!(s.auth().spent.len() <= MAX_SPENT);
        // Once the spent ones expire, logins work again.
        let later = t0 + TOKEN_TTL + Duration::from_millis(1);
        let t = s.mint(later).unwrap();
        assert!(s.redeem(&t, later));
    }

    #[test]
    fn a_signed_string_is_bound_to_its_purpose_and_key() {
        let s = Server::new(1).unwrap();
        let other = Server::new(1).unwrap();
        let t0 = Instant::now();
        let cookie = s.open_session(t0).unwrap();
        assert!(!s.redeem(&cookie, t0), "a session cookie is no login link");
        let t = other.mint(t0).unwrap();
        assert!(!s.redeem(&t, t0), "another server's link");
        let mut forged = s.mint(t0).unwrap().into_bytes();
        forged[20] = if forged[20] == b'0' { b'1' } else { b'0' };
        assert!(!s.redeem(std::str::from_utf8(&forged).unwrap(), t0));
    }

    #[test]
    fn host_and_origin_checks() {
        let s = Server::new(5555).unwrap();
        let mut h = HeaderMap::new();
        let uri: Uri = "/".parse().unwrap();
        assert!(check(&s, &Method::GET, &uri, &h).is_err(), "no Host");
        h.insert(header::HOST, HeaderValue::from_static("evil.example:5555"));
        assert!(check(&s, &Method::GET, &uri, &h).is_err());
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:5556"));
        assert!(check(&s, &Method::GET, &uri, &h).is_err());
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:5555"));
        assert!(check(&s, &Method::GET, &uri, &h).is_ok());
        h.insert(header::HOST, HeaderValue::from_static("localhost:5555"));
        assert!(check(&s, &Method::GET, &uri, &h).is_ok());
        assert!(
            check(&s, &Method::POST, &uri, &h).is_err(),
            "POST without Origin/Referer"
        );
        h.insert(
            header::REFERER,
            HeaderValue::from_static("http://127.0.0.1:5555.evil.example/"),
        );
        assert!(check(&s, &Method::POST, &uri, &h).is_err());
        h.insert(
            header::REFERER,
            HeaderValue::from_static("http://127.0.0.1:5555/"),
        );
        assert!(check(&s, &Method::POST, &uri, &h).is_ok());
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(check(&s, &Method::POST, &uri, &h).is_err(), "Origin: null");
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://localhost:5555"),
        );
        assert!(check(&s, &Method::POST, &uri, &h).is_ok());
        h.insert(
            HeaderName::from_static("sec-fetch-site"),
            HeaderValue::from_static("same-site"),
        );
        assert!(check(&s, &Method::POST, &uri, &h).is_err());
        let abs: Uri = "http://evil.example:5555/".parse().unwrap();
        h.remove("sec-fetch-site");
        assert!(check(&s, &Method::GET, &abs, &h).is_err());
    }

    #[test]
    fn constant_time_compare() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
    }
}
