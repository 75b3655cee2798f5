//! The approval page's routes: login with a one-time link, the list of pending requests and live
//! grants (with live updates), and the approve, deny and revoke forms.

use super::checks::{CsrfForm, Refusal, bad_form, checked_form, session};
use super::view::prose;
use super::{AppState, html, notice, see_other, view};
use crate::broker::factor_ops::Proof;
use askama::Template;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use keyveil_proto::op;
use keyveil_proto::{Passphrase, Reply};
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;
use std::time::{Duration, Instant};

pub(super) async fn login(State(st): State<AppState>, RawQuery(q): RawQuery) -> Response {
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
    if let Err(e) = st.broker.lock().audit_log_mut().ready("web_login") {
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

/// The real names this session may see (`reveal.rs`): per environment, alias → real name;
/// empty for a session not opened by the factor.
pub(super) fn names_for(st: &AppState, key: &super::auth::Digest32) -> view::NameMap {
    match st.server.revealed_by(key, Instant::now()) {
        Some(used) => st.broker.lock().names().page_names(used),
        None => view::NameMap::new(),
    }
}

pub(super) async fn pending(
    st: &AppState,
    names: &view::NameMap,
) -> Result<Vec<view::CardView>, Refusal> {
    match crate::broker::ops::call(&st.broker, op::Requests).await {
        Ok(data) => Ok(view::cards(&data, names)),
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

/// While the vault is locked, what the page says instead of cards: which asks wait, and that
/// approving them is done at the terminal (one passphrase entry unlocks and approves). The page
/// cannot unlock: the passphrase goes only to a broker the CLI starts itself (a locked process
/// cannot prove it is the human's broker), and the unlocked broker is a new process with a page
/// of its own. `None` when the vault is unlocked.
fn locked_notice(st: &AppState) -> Option<Response> {
    let inner = st.broker.lock();
    if inner.is_unlocked() {
        return None;
    }
    let ids: Vec<String> = inner
        .locked_asks()
        .keys()
        .map(|id| format!("#{id}"))
        .collect();
    drop(inner);
    let text = match ids.first() {
        None => "No request waits. Unlock it at your terminal with `keyveil unlock`; this page cannot unlock the vault.".to_owned(),
        Some(first) => format!(
            "{} waiting for it: {}. Approve at your terminal with `keyveil approve {}`: one passphrase entry unlocks the vault and approves. This page cannot unlock the vault (the passphrase goes only to a broker your terminal starts itself); after the unlock, open a new link with `keyveil approve --web`.",
            if ids.len() == 1 { "1 request is" } else { "Requests are" },
            ids.join(", "),
            first.trim_start_matches('#'),
        ),
    };
    Some(notice(StatusCode::OK, "The vault is locked", &text))
}

pub(super) async fn index(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let key = match session(&st, &headers) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    if let Some(r) = locked_notice(&st) {
        return r;
    }
    let names = names_for(&st, &key);
    let cards = match pending(&st, &names).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let grants = match crate::broker::ops::call(&st.broker, op::Grants { client: None }).await {
        Ok(d) => view::grants(&d, jiff::Timestamp::now(), &names),
        Err(_) => Vec::new(),
    };
    let csrf = st.server.csrf_of(&key).unwrap_or_default();
    let flash = st.server.take_flash(&key);
    let names_shown = st.server.revealed_by(&key, Instant::now()).is_some();
    let offer_reveal = !names_shown && st.broker.lock().names().any_hides_names();
    html(
        view::Page {
            cards,
            grants,
            csrf,
            flash,
            names_shown,
            offer_reveal,
        }
        .render(),
    )
}

pub(super) async fn fragment(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let key = match session(&st, &headers) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let names = names_for(&st, &key);
    let cards = match pending(&st, &names).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let csrf = st.server.csrf_of(&key).unwrap_or_default();
    html(view::List { cards, csrf }.render())
}

pub(super) async fn events(State(st): State<AppState>, headers: HeaderMap) -> Response {
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
pub(super) struct ApproveForm {
    pub(super) csrf: Option<String>,
    pub(super) request_id: Option<String>,
    /// `factor_proof::card_digest` of the request the page showed: the approval applies only to it.
    pub(super) card: Option<String>,
    pub(super) factor: Option<Passphrase>,
    pub(super) duration: Option<String>,
}

impl CsrfForm for ApproveForm {
    fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

#[derive(Deserialize)]
pub(super) struct DenyForm {
    pub(super) csrf: Option<String>,
    pub(super) request_id: Option<String>,
}

impl CsrfForm for DenyForm {
    fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

#[derive(Deserialize)]
pub(super) struct RevokeForm {
    pub(super) csrf: Option<String>,
    pub(super) grant_id: Option<String>,
}

impl CsrfForm for RevokeForm {
    fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

pub(super) fn is_totp(s: &str) -> bool {
    s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit())
}

pub(super) fn parse_id(s: Option<&str>) -> Option<u64> {
    s.and_then(|s| s.trim().parse().ok())
}

pub(super) fn flash_of<T>(reply: Result<T, Reply>, ok: impl FnOnce(&T) -> String) -> view::Flash {
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

pub(super) async fn approve(
    State(st): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<ApproveForm>, FormRejection>,
) -> Response {
    let (f, key) = match checked_form(&st, &headers, form) {
        Ok(x) => x,
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
    let outcome = crate::broker::access::approve(
        &st.broker,
        id,
        f.card.as_deref(),
        proof,
        crate::broker::access::ApproveOptions {
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

pub(super) async fn deny(
    State(st): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<DenyForm>, FormRejection>,
) -> Response {
    let (f, key) = match checked_form(&st, &headers, form) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let Some(id) = parse_id(f.request_id.as_deref()) else {
        return bad_form();
    };
    let reply = crate::broker::ops::call(
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
pub(super) async fn revoke(
    State(st): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<RevokeForm>, FormRejection>,
) -> Response {
    let (f, key) = match checked_form(&st, &headers, form) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let Some(id) = f
        .grant_id
        .filter(|g| !g.is_empty() && g.len() <= 64 && g.bytes().all(|b| b.is_ascii_graphic()))
    else {
        return bad_form();
    };
    let reply = crate::broker::ops::call(
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
