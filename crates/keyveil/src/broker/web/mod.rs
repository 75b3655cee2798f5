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

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use askama::Template;
use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{DefaultBodyLimit, Form, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::Broker;
use super::factor_ops::Proof;
use super::state::{OpError, OpResult};
use keyveil_proto::op;
use keyveil_proto::{ErrorCode, Passphrase, Reply};
use view::prose;

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

type Digest32 = [u8; 32];

/// A signed approval-page token or session cookie: 8 random bytes, a deadline (milliseconds
/// after the server started, big-endian) and the first 16 bytes of
/// `HMAC-SHA256(server key, purpose ‖ nonce ‖ deadline)`: 32 bytes, 64 hex digits. The broker
/// keeps no table of live tokens or sessions, so no number of links or logins the agent makes
/// can push the human's out; only spent tokens are remembered, to keep each single-use.
struct Signed {
    nonce: [u8; 8],
    deadline_ms: u64,
}

/// What a [`Signed`] string is for (part of the MAC, so one can never stand for the other).
const LOGIN: &[u8] = b"keyveil/v1/web-login";
const SESSION: &[u8] = b"keyveil/v1/web-session";
const CSRF: &[u8] = b"keyveil/v1/web-csrf";
/// Derives a new key from the old one when the OS random source fails at `lock`.
const ROTATE: &[u8] = b"keyveil/v1/web-rotate";

/// A value-entry link's or session's one variable, and its deadline.
#[derive(Clone)]
struct SetTarget {
    environment: String,
    name: String,
    deadline: Instant,
}

/// A value-entry session: one variable, its own CSRF token.
struct SetSession {
    target: SetTarget,
    csrf: String,
}

#[derive(Default)]
struct Auth {
    /// Nonce of a spent URL token → its deadline (milliseconds after the server started).
    spent: HashMap<[u8; 8], u64>,
    /// Digest of a session cookie → the message to show on its next page.
    flashes: HashMap<Digest32, view::Flash>,
    /// Digest of an unused value-entry token → its variable.
    set_tokens: HashMap<Digest32, SetTarget>,
    /// Digest of a value-entry cookie → its session.
    set_sessions: HashMap<Digest32, SetSession>,
}

/// The running server: its port, the key that signs its tokens and sessions, and what it
/// remembers of them (in memory only).
pub(crate) struct Server {
    port: u16,
    /// Signs tokens, sessions and CSRF tokens; replaced by [`Web::end_sessions`] (on `lock`),
    /// which voids every link and session signed before.
    key: Mutex<zeroize::Zeroizing<[u8; 32]>>,
    started: Instant,
    auth: Mutex<Auth>,
}

fn digest(s: &str) -> Digest32 {
    Sha256::digest(s.as_bytes()).into()
}

fn random_hex() -> OpResult<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| {
        OpError::new(
            ErrorCode::Failed,
            format!("the OS random source failed: {e}"),
        )
    })?;
    Ok(hex::encode(b))
}

/// Compares two strings in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    use hmac::Mac;
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for 32 bytes.
    let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(key) else {
        return [0u8; 32];
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// A fresh signing key from the OS random source.
fn new_key() -> OpResult<zeroize::Zeroizing<[u8; 32]>> {
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut key[..]).map_err(|e| {
        OpError::new(
            ErrorCode::Failed,
            format!("the OS random source failed: {e}"),
        )
    })?;
    Ok(key)
}

impl Server {
    fn new(port: u16) -> OpResult<Server> {
        Ok(Server {
            port,
            key: Mutex::new(new_key()?),
            started: Instant::now(),
            auth: Mutex::new(Auth::default()),
        })
    }

    fn millis(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }

    fn tag(&self, purpose: &[u8], nonce: &[u8; 8], deadline_ms: u64) -> [u8; 32] {
        hmac(&self.key(), &[purpose, nonce, &deadline_ms.to_be_bytes()])
    }

    /// A new signed string for `purpose`, valid until `deadline`.
    fn sign(&self, purpose: &[u8], deadline: Instant) -> OpResult<String> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| {
            OpError::new(
                ErrorCode::Failed,
                format!("the OS random source failed: {e}"),
            )
        })?;
        let deadline_ms = self.millis(deadline);
        let tag = self.tag(purpose, &nonce, deadline_ms);
        let mut out = [0u8; 32];
        out[..8].copy_from_slice(&nonce);
        out[8..16].copy_from_slice(&deadline_ms.to_be_bytes());
        out[16..].copy_from_slice(&tag[..16]);
        Ok(hex::encode(out))
    }

    /// The signed string `text` for `purpose`, if its MAC is right and it is live at `now`.
    fn verify(&self, purpose: &[u8], text: &str, now: Instant) -> Option<Signed> {
        let mut raw = [0u8; 32];
        hex::decode_to_slice(text, &mut raw).ok()?;
        let mut nonce = [0u8; 8];
        nonce.copy_from_slice(&raw[..8]);
        let mut d = [0u8; 8];
        d.copy_from_slice(&raw[8..16]);
        let deadline_ms = u64::from_be_bytes(d);
        let tag = self.tag(purpose, &nonce, deadline_ms);
        let ok: bool = subtle::ConstantTimeEq::ct_eq(&tag[..16], &raw[16..]).into();
        (ok && deadline_ms > self.millis(now)).then_some(Signed { nonce, deadline_ms })
    }

    /// A copy of the current signing key.
    fn key(&self) -> zeroize::Zeroizing<[u8; 32]> {
        self.key.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the signing key and forgets every value-entry link and session and every
    /// flash: no link, session cookie or CSRF token made before works after this.
    /// Without the OS random source, the new key is derived from the old one (an HMAC under
    /// it), which only the broker knows: old signatures fail either way.
    fn rotate(&self) {
        {
            let mut key = self.key.lock().unwrap_or_else(|p| p.into_inner());
            *key = new_key().unwrap_or_else(|_| zeroize::Zeroizing::new(hmac(&key, &[ROTATE])));
        }
        let mut auth = self.auth();
        auth.flashes.clear();
        auth.set_tokens.clear();
        auth.set_sessions.clear();
        auth.spent.clear();
    }

    fn auth(&self) -> MutexGuard<'_, Auth> {
        self.auth.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a new one-time URL token valid for [`TOKEN_TTL`] from `now`. Nothing is stored:
    /// the token is signed, so minting any number of them voids none.
    fn mint(&self, now: Instant) -> OpResult<String> {
        self.sign(LOGIN, now + TOKEN_TTL)
    }

    /// Spends a URL token: `true` if it is genuine, live and not spent before (it is spent
    /// now). `false` too when [`MAX_SPENT`] tokens were spent within the last [`TOKEN_TTL`].
    fn redeem(&self, token: &str, now: Instant) -> bool {
        let Some(t) = self.verify(LOGIN, token, now) else {
            return false;
        };
        let now_ms = self.millis(now);
        let mut auth = self.auth();
        if auth.spent.len() >= MAX_SPENT {
            auth.spent.retain(|_, deadline| *deadline > now_ms);
        }
        if auth.spent.contains_key(&t.nonce) || auth.spent.len() >= MAX_SPENT {
            return false;
        }
        auth.spent.insert(t.nonce, t.deadline_ms);
        true
    }

    /// Opens a session; returns the cookie value (signed: no session is stored, so no number of
    /// other logins ends it).
    fn open_session(&self, now: Instant) -> OpResult<String> {
        self.sign(SESSION, now + SESSION_TTL)
    }

    /// Makes a value-entry token for one variable, valid for [`SET_TOKEN_TTL`].
    fn mint_set(&self, environment: &str, name: &str, now: Instant) -> OpResult<String> {
        let token = random_hex()?;
        let mut auth = self.auth();
        auth.set_tokens.retain(|_, t| t.deadline > now);
        while auth.set_tokens.len() >= MAX_TOKENS {
            let Some(oldest) = auth
                .set_tokens
                .iter()
                .min_by_key(|(_, t)| t.deadline)
                .map(|(k, _)| *k)
            else {
                break;
            };
            auth.set_tokens.remove(&oldest);
        }
        auth.set_tokens.insert(
            digest(&token),
            SetTarget {
                environment: environment.to_owned(),
                name: name.to_owned(),
                deadline: now + SET_TOKEN_TTL,
            },
        );
        Ok(token)
    }

    /// Spends a value-entry token and opens its session: the cookie value and the variable.
    fn redeem_set(&self, token: &str, now: Instant) -> OpResult<Option<(String, SetTarget)>> {
        let Some(target) = self
            .auth()
            .set_tokens
            .remove(&digest(token))
            .filter(|t| t.deadline > now)
        else {
            return Ok(None);
        };
        let cookie = random_hex()?;
        let csrf = random_hex()?;
        let mut auth = self.auth();
        auth.set_sessions.retain(|_, s| s.target.deadline > now);
        while auth.set_sessions.len() >= MAX_SESSIONS {
            let Some(oldest) = auth
                .set_sessions
                .iter()
                .min_by_key(|(_, s)| s.target.deadline)
                .map(|(k, _)| *k)
            else {
                break;
            };
            auth.set_sessions.remove(&oldest);
        }
        let target = SetTarget {
            deadline: now + SET_SESSION_TTL,
            ..target
        };
        auth.set_sessions.insert(
            digest(&cookie),
            SetSession {
                target: target.clone(),
                csrf,
            },
        );
        Ok(Some((cookie, target)))
    }

    fn set_cookie_name(&self) -> String {
        format!("keyveil_set_{}", self.port)
    }

    /// The live value-entry session a request's cookie names: its key, variable and CSRF.
    fn set_session_of(
        &self,
        headers: &HeaderMap,
        now: Instant,
    ) -> Option<(Digest32, SetTarget, String)> {
        let value = cookie_value(headers, &self.set_cookie_name())?;
        let key = digest(&value);
        let mut auth = self.auth();
        match auth.set_sessions.get(&key) {
            Some(s) if s.target.deadline > now => Some((key, s.target.clone(), s.csrf.clone())),
            Some(_) => {
                auth.set_sessions.remove(&key);
                None
            }
            None => None,
        }
    }

    fn end_set_session(&self, key: &Digest32) {
        self.auth().set_sessions.remove(key);
    }

    fn cookie_name(&self) -> String {
        format!("keyveil_session_{}", self.port)
    }

    /// The session a request's cookie names, if live.
    fn session_of(&self, headers: &HeaderMap, now: Instant) -> Option<Digest32> {
        let name = self.cookie_name();
        let value = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.trim().to_owned())?;
        self.verify(SESSION, &value, now)?;
        Some(digest(&value))
    }

    /// The CSRF token of the session whose cookie digests to `key`: derived, not stored.
    fn csrf_of(&self, key: &Digest32) -> Option<String> {
        Some(hex::encode(hmac(&self.key(), &[CSRF, key])))
    }

    fn set_flash(&self, key: &Digest32, flash: view::Flash) {
        let mut auth = self.auth();
        if auth.flashes.len() >= MAX_FLASHES {
            auth.flashes.clear();
        }
        auth.flashes.insert(*key, flash);
    }

    fn take_flash(&self, key: &Digest32) -> Option<view::Flash> {
        self.auth().flashes.remove(key)
    }

    fn origins(&self) -> [String; 2] {
        [
            format!("http://127.0.0.1:{}", self.port),
            format!("http://localhost:{}", self.port),
        ]
    }

    fn host_ok(&self, host: &str) -> bool {
        host == format!("127.0.0.1:{}", self.port)
            || host.eq_ignore_ascii_case(&format!("localhost:{}", self.port))
    }
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

fn forbidden(why: &str) -> Response {
    tracing::warn!(why, "approval page refused a request");
    notice(StatusCode::FORBIDDEN, "Refused", why)
}

fn one_header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, ()> {
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
fn check(
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

fn harden(headers: &mut HeaderMap) {
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

async fn guard(State(st): State<AppState>, req: axum::extract::Request, next: Next) -> Response {
    let mut resp = match check(&st.server, req.method(), req.uri(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(why) => forbidden(why),
    };
    harden(resp.headers_mut());
    resp
}

fn no_session() -> Response {
    notice(
        StatusCode::UNAUTHORIZED,
        "This page needs a fresh link",
        "Run `keyveil approve --web` in your terminal and open the link it gives you. Links work once and for 5 minutes.",
    )
}

/// A refusal response, boxed (a `Response` is large).
type Refusal = Box<Response>;

fn session(st: &AppState, headers: &HeaderMap) -> Result<Digest32, Refusal> {
    st.server
        .session_of(headers, Instant::now())
        .ok_or_else(|| Box::new(no_session()))
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

async fn login(State(st): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let token = q.as_deref().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| v)
    });
    let now = Instant::now();
    let valid = token.is_some_and(|t| {
        t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) && st.server.redeem(t, now)
    });
    if !valid {
        tracing::warn!("approval page: a missing, wrong, used or expired link");
        return notice(
            StatusCode::FORBIDDEN,
            "This link is not valid",
            "Links work once and for 5 minutes. Run `keyveil approve --web` in your terminal for a new one.",
        );
    }
    // A session that approves must be on the record: refused when the log cannot be written.
    if let Err(e) = st.broker.lock().audit_ready("web_login") {
        let text = format!("{} ({})", e.message, e.hint.unwrap_or_default());
        return notice(StatusCode::SERVICE_UNAVAILABLE, "Not opened", &text);
    }
    let cookie = match st.server.open_session(now) {
        Ok(c) => c,
        Err(e) => return notice(StatusCode::INTERNAL_SERVER_ERROR, "No session", &e.message),
    };
    st.broker
        .lock()
        .audit("web_login", json!({"port": st.server.port}));
    tracing::info!("approval page: a browser session was opened");
    let set_cookie = format!(
        "{}={cookie}; HttpOnly; SameSite=Strict; Path=/",
        st.server.cookie_name()
    );
    let mut resp = see_other("/");
    match HeaderValue::from_str(&set_cookie) {
        Ok(v) => {
            resp.headers_mut().insert(header::SET_COOKIE, v);
            resp
        }
        Err(_) => notice(
            StatusCode::INTERNAL_SERVER_ERROR,
            "No session",
            "bad cookie",
        ),
    }
}

async fn pending(st: &AppState) -> Result<Vec<view::CardView>, Refusal> {
    match super::ops::call(&st.broker, op::Requests).await {
        Ok(data) => Ok(view::cards(&data)),
        Err(Reply::Error { message, .. }) => Err(Box::new(notice(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cannot list requests",
            &prose(&message),
        ))),
        _ => Err(Box::new(notice(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cannot list requests",
            "unexpected reply",
        ))),
    }
}

async fn index(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let key = match session(&st, &headers) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let cards = match pending(&st).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let grants = match super::ops::call(&st.broker, op::Grants { client: None }).await {
        Ok(d) => view::grants(&d, jiff::Timestamp::now()),
        Err(_) => Vec::new(),
    };
    let csrf = st.server.csrf_of(&key).unwrap_or_default();
    let flash = st.server.take_flash(&key);
    html(
        view::Page {
            cards,
            grants,
            csrf,
            flash,
        }
        .render(),
    )
}

async fn fragment(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let key = match session(&st, &headers) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let cards = match pending(&st).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let csrf = st.server.csrf_of(&key).unwrap_or_default();
    html(view::List { cards, csrf }.render())
}

async fn events(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = session(&st, &headers) {
        return *r;
    }
    let rx = st.broker.changed.subscribe();
    let hello = futures::stream::once(async {
        Ok::<Event, Infallible>(Event::default().event("hello").data("0"))
    });
    let changes = futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let n = *rx.borrow_and_update();
        Some((
            Ok::<Event, Infallible>(Event::default().event("changed").data(n.to_string())),
            rx,
        ))
    });
    let stop = st.broker.shutdown.clone();
    let stream = hello
        .chain(changes)
        .take_until(async move { stop.cancelled().await });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// The approve form. Every field is optional so that a missing one gets the right refusal
/// (no CSRF token: 403) rather than a generic parse error. The factor is a [`Passphrase`]:
/// zeroized on drop, `[sensitive]` in any debug output, never echoed.
#[derive(Deserialize)]
struct ApproveForm {
    csrf: Option<String>,
    request_id: Option<String>,
    /// `factor_proof::card_digest` of the request the page showed: the approval applies only to it.
    card: Option<String>,
    factor: Option<Passphrase>,
    duration: Option<String>,
}

#[derive(Deserialize)]
struct DenyForm {
    csrf: Option<String>,
    request_id: Option<String>,
}

#[derive(Deserialize)]
struct RevokeForm {
    csrf: Option<String>,
    grant_id: Option<String>,
}

/// Session, then CSRF; returns the session key.
fn post_checks(
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

fn bad_form() -> Response {
    notice(
        StatusCode::BAD_REQUEST,
        "Malformed form",
        "Reload the page and try again.",
    )
}

fn is_totp(s: &str) -> bool {
    s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit())
}

fn parse_id(s: Option<&str>) -> Option<u64> {
    s.and_then(|s| s.trim().parse().ok())
}

fn flash_of<T>(reply: Result<T, Reply>, ok: impl FnOnce(&T) -> String) -> view::Flash {
    match reply {
        Ok(data) => view::Flash {
            ok: true,
            text: ok(&data),
            hint: None,
        },
        Err(Reply::Error { message, hint, .. }) => view::Flash {
            ok: false,
            text: prose(&message),
            hint: hint.as_deref().map(prose),
        },
        _ => view::Flash {
            ok: false,
            text: "unexpected reply from the broker".into(),
            hint: None,
        },
    }
}

async fn approve(
    State(st): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<ApproveForm>, FormRejection>,
) -> Response {
    let Ok(Form(f)) = form else {
        // Still say "no session" first when there is none.
        return match session(&st, &headers) {
            Err(r) => *r,
            Ok(_) => bad_form(),
        };
    };
    let key = match post_checks(&st, &headers, f.csrf.as_deref()) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let (Some(id), Some(factor)) = (parse_id(f.request_id.as_deref()), f.factor) else {
        return bad_form();
    };
    let ttl_seconds = match f.duration.as_deref().unwrap_or("once") {
        "once" => None,
        "30m" => Some(30 * 60),
        "8h" => Some(8 * 3600),
        _ => return bad_form(),
    };
    // One field for the factor: six digits are a TOTP code (a vault passphrase has at least 8
    // characters), anything else is the passphrase. The page posts it to the broker's own
    // server: it never crosses the Unix socket.
    let proof = if is_totp(factor.expose()) {
        Proof::TypedTotp(factor.expose().to_owned())
    } else {
        Proof::Typed(factor)
    };
    let outcome = super::access::approve(
        &st.broker,
        id,
        f.card.as_deref(),
        proof,
        super::access::ApproveOptions {
            ttl_seconds,
            uses: None,
            any_command: false,
            prefix: false,
            subdirs: false,
        },
    )
    .await;
    let flash = flash_of(outcome.map_err(|e| e.reply()), |d| {
        let uses = match d.uses_left {
            Some(1) => "1 use".to_owned(),
            Some(n) => format!("{n} uses"),
            None => "any number of uses".to_owned(),
        };
        format!(
            "Approved request #{id}: grant {}, {uses} until {}.",
            prose(&d.grant_id),
            view::when(&d.expires_at.to_string()),
        )
    });
    st.server.set_flash(&key, flash);
    see_other("/")
}

async fn deny(
    State(st): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<DenyForm>, FormRejection>,
) -> Response {
    let Ok(Form(f)) = form else {
        return match session(&st, &headers) {
            Err(r) => *r,
            Ok(_) => bad_form(),
        };
    };
    let key = match post_checks(&st, &headers, f.csrf.as_deref()) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let Some(id) = parse_id(f.request_id.as_deref()) else {
        return bad_form();
    };
    let reply = super::ops::call(
        &st.broker,
        op::Deny {
            request_id: id,
            reason: None,
        },
    )
    .await;
    let flash = flash_of(reply, |_| format!("Denied request #{id}."));
    st.server.set_flash(&key, flash);
    see_other("/")
}

/// `POST /revoke`: ends one grant and stops its runs (session and CSRF, no factor: it only
/// takes access away, as `keyveil revoke` does).
async fn revoke(
    State(st): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<RevokeForm>, FormRejection>,
) -> Response {
    let Ok(Form(f)) = form else {
        return match session(&st, &headers) {
            Err(r) => *r,
            Ok(_) => bad_form(),
        };
    };
    let key = match post_checks(&st, &headers, f.csrf.as_deref()) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let Some(id) = f
        .grant_id
        .filter(|g| !g.is_empty() && g.len() <= 64 && g.bytes().all(|b| b.is_ascii_graphic()))
    else {
        return bad_form();
    };
    let reply = super::ops::call(
        &st.broker,
        op::Revoke {
            grant_id: Some(id.clone()),
            all: false,
            client: None,
        },
    )
    .await;
    let flash = flash_of(reply, |d| {
        let runs = match d.stopped.runs_stopped {
            0 => String::new(),
            1 => "; 1 run stopped".to_owned(),
            n => format!("; {n} runs stopped"),
        };
        format!("Revoked grant {}{runs}.", prose(&id))
    });
    st.server.set_flash(&key, flash);
    see_other("/")
}

/// The value of cookie `name` in a request, if present.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
}

/// The state of one variable: `Ok(Some(description))` when it exists without a value,
/// `Ok(None)` when it does not exist yet, an error when it already has a value (the page
/// never replaces a value) or the environment is unknown or the vault locked.
/// Whether `name` (a real name) of `environment` awaits a value: `Ok(description)` if it does or
/// does not exist yet (no description where the environment hides names). Messages name it as `shown` (what the caller may see: the name it gave,
/// or the alias where names are hidden).
async fn awaiting(
    broker: &Arc<Broker>,
    environment: &str,
    name: &str,
    shown: &str,
) -> OpResult<Option<String>> {
    let inner = broker.lock();
    let v = inner.vault()?;
    let env = v
        .data()
        .environments
        .get(environment)
        .ok_or_else(|| super::state::unknown_env(environment, v))?;
    match env.variables.get(name) {
        None => Ok(None),
        Some(var) if var.value.is_some() || var.dynamic.is_some() => Err(OpError::new(
            ErrorCode::Failed,
            format!("{environment}/{shown} already has a value"),
        )
        .hint(format!(
            "the page only fills variables that await a value; to replace it, run `keyveil set {environment} {shown}` in a terminal"
        ))),
        // A description can say what a hidden name would: blank where names are hidden.
        Some(_) if env.policy.hide_names => Ok(None),
        Some(var) => Ok(Some(var.description.clone())),
    }
}

/// A one-time link to the value-entry form of one variable that has no value yet, starting the
/// page if needed: `{"url": "http://127.0.0.1:PORT/set?token=...", "expires_in_seconds": 900}`.
/// The link opens a session that can only store that variable's value, once.
///
/// Errors: the environment does not exist, the vault is locked, the variable already has a
/// value, the name is invalid; the loopback port cannot be bound.
pub(crate) async fn set_url(
    broker: &Arc<Broker>,
    environment: &str,
    name: &str,
) -> OpResult<op::OneTimeLink> {
    if !keyveil_vault::is_valid_name(name) {
        return Err(OpError::new(
            ErrorCode::Usage,
            format!(
                "invalid variable name {:?}",
                keyveil_proto::display::clip(name, 80)
            ),
        ));
    }
    // Where names are hidden the agent names the variable by its alias.
    // Messages repeat the name as given: never the alias of a guessed real name, never the
    // real name behind an alias.
    let given = name;
    let (hidden, real) = {
        let inner = broker.lock();
        (
            inner.hides_names(environment),
            inner.real_name(environment, name),
        )
    };
    if hidden && real.is_none() {
        // One answer for every name that is not an alias, existing or not.
        return Err(OpError::new(
            ErrorCode::Denied,
            format!("names in '{environment}' are hidden: the value page opens only for a variable named by its alias"),
        )
        .hint(format!(
            "list the aliases with describe_environment; new variables are added by the user with `keyveil set {environment} NAME`"
        )));
    }
    let name = real.as_deref().unwrap_or(name);
    awaiting(broker, environment, name, given).await?;
    let server = broker
        .web
        .server
        .get_or_try_init(|| start(broker.clone()))
        .await?;
    // A link that lets a value be set must be on the record.
    broker.lock().audit_ready("web_set_link")?;
    let token = server.mint_set(environment, name, Instant::now())?;
    broker.lock().audit(
        "web_set_link",
        json!({"environment": environment, "variable": name}),
    );
    Ok(op::OneTimeLink {
        url: format!("http://127.0.0.1:{}/set?token={token}", server.port),
        expires_in_seconds: SET_TOKEN_TTL.as_secs(),
    })
}

fn no_set_session() -> Response {
    notice(
        StatusCode::UNAUTHORIZED,
        "This page needs a fresh link",
        "Run `keyveil set ENV VAR --web` in your terminal and open the link it gives you (or use `keyveil set ENV VAR` at a hidden prompt). Links work once.",
    )
}

fn form_page(
    environment: &str,
    name: &str,
    description: &str,
    csrf: String,
    error: Option<String>,
) -> Response {
    html(view::set_form(environment, name, description, csrf, error).render())
}

async fn set_page(
    State(st): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let now = Instant::now();
    let token = q.as_deref().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| v.to_owned())
    });
    if let Some(t) = token {
        let redeemed = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            st.server.redeem_set(&t, now)
        } else {
            Ok(None)
        };
        let (cookie, target) = match redeemed {
            Ok(Some(x)) => x,
            Ok(None) => {
                tracing::warn!("value-entry page: a missing, wrong, used or expired link");
                return notice(
                    StatusCode::FORBIDDEN,
                    "This link is not valid",
                    "Links work once and for 15 minutes. Run `keyveil set ENV VAR --web` in your terminal for a new one.",
                );
            }
            Err(e) => return notice(StatusCode::INTERNAL_SERVER_ERROR, "No session", &e.message),
        };
        st.broker.lock().audit(
            "web_set_open",
            json!({"environment": target.environment, "variable": target.name}),
        );
        // Drop the token from the address bar (history, referrers): the form lives at /set.
        let mut resp = see_other("/set");
        let set_cookie = format!(
            "{}={cookie}; HttpOnly; SameSite=Strict; Path=/set",
            st.server.set_cookie_name()
        );
        return match HeaderValue::from_str(&set_cookie) {
            Ok(v) => {
                resp.headers_mut().insert(header::SET_COOKIE, v);
                resp
            }
            Err(_) => notice(
                StatusCode::INTERNAL_SERVER_ERROR,
                "No session",
                "bad cookie",
            ),
        };
    }
    let Some((_, target, csrf)) = st.server.set_session_of(&headers, now) else {
        return no_set_session();
    };
    let shown_name = st
        .broker
        .lock()
        .shown_name(&target.environment, &target.name);
    match awaiting(&st.broker, &target.environment, &target.name, &shown_name).await {
        // The link went through the agent, so the page shows what the agent may see.
        Ok(desc) => form_page(
            &target.environment,
            &shown_name,
            desc.as_deref().unwrap_or(""),
            csrf,
            None,
        ),
        Err(e) => notice(
            StatusCode::CONFLICT,
            "Nothing to set here",
            &prose(&match e.hint {
                Some(h) => format!("{} ({h})", e.message),
                None => e.message,
            }),
        ),
    }
}

/// The value form. The value is a [`Passphrase`]: zeroized on drop, `[sensitive]` in any
/// debug output, never rendered back or logged.
#[derive(Deserialize)]
struct SetValueForm {
    csrf: Option<String>,
    value: Option<Passphrase>,
}

async fn set_value(
    State(st): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<SetValueForm>, FormRejection>,
) -> Response {
    let Some((key, target, csrf)) = st.server.set_session_of(&headers, Instant::now()) else {
        return no_set_session();
    };
    let Ok(Form(f)) = form else {
        return bad_form();
    };
    if !f.csrf.as_deref().is_some_and(|c| same(c, &csrf)) {
        return forbidden("missing or wrong CSRF token; reload the page and try again");
    }
    let (environment, name) = (target.environment.clone(), target.name.clone());
    let shown_name = st.broker.lock().shown_name(&environment, &name);
    let desc = match awaiting(&st.broker, &environment, &name, &shown_name).await {
        Ok(d) => d.unwrap_or_default(),
        Err(e) => {
            st.server.end_set_session(&key);
            return notice(
                StatusCode::CONFLICT,
                "Nothing to set here",
                &prose(&e.message),
            );
        }
    };
    let shown = shown_name;
    let Some(value) = f.value.filter(|v| !v.expose().is_empty()) else {
        return form_page(
            &environment,
            &shown,
            &desc,
            csrf,
            Some("The value is empty.".to_owned()),
        );
    };
    let reply = super::ops::call(
        &st.broker,
        op::VarSet {
            environment: environment.clone(),
            name: name.clone(),
            value: Some(value),
            sealed_value: None,
            factor: None,
        },
    )
    .await;
    match reply {
        Ok(stored) => {
            st.server.end_set_session(&key);
            tracing::info!("value-entry page: a value was stored");
            let short = matches!(
                stored,
                op::VarSetReply::Stored(op::VarStored {
                    short_value: true,
                    ..
                })
            );
            let short = if short {
                " It is shorter than 8 bytes, so it is redacted only where it stands as a whole token; prefer long random values."
            } else {
                ""
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                view::Notice {
                    title: format!("Stored {}/{}", view::prose(&environment), view::prose(&shown)),
                    text: format!("The value is in your vault. You can close this page and tell the agent it is set.{short}"),
                    ok: true,
                }
                .render()
                .unwrap_or_else(|_| "Stored.".to_owned()),
            )
                .into_response()
        }
        Err(Reply::Error { message, hint, .. }) => form_page(
            &environment,
            &shown,
            &desc,
            csrf,
            Some(prose(&match hint {
                Some(h) => format!("{message} ({h})"),
                None => message,
            })),
        ),
        Err(_) => form_page(
            &environment,
            &shown,
            &desc,
            csrf,
            Some("unexpected reply from the broker".to_owned()),
        ),
    }
}

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
    use super::*;

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
