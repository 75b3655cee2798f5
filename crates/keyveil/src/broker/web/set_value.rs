//! The value-entry form (`/set`): a one-time link bound to one declared variable without a value
//! opens a session that can only store that value, once.

use super::auth::same;
use super::checks::bad_form;
use super::checks::forbidden;
use super::view::prose;
use super::{AppState, SET_TOKEN_TTL, html, notice, see_other, start, view};
use crate::broker::Broker;
use crate::broker::state::{OpError, OpResult};
use askama::Template;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyveil_proto::op;
use keyveil_proto::{ErrorCode, Passphrase, Reply};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

/// The state of one variable: `Ok(Some(description))` when it exists without a value,
/// `Ok(None)` when it does not exist yet, an error when it already has a value (the page
/// never replaces a value) or the environment is unknown or the vault locked.
/// Whether `name` (a real name) of `environment` awaits a value: `Ok(description)` if it does or
/// does not exist yet (no description where the environment hides names). Messages name it as `shown` (what the caller may see: the name it gave,
/// or the alias where names are hidden).
pub(super) async fn awaiting(
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
        .ok_or_else(|| crate::broker::state::unknown_env(environment, v))?;
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
            inner.names().hides_names(environment),
            inner.names().real_name(environment, name),
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
    broker.lock().audit_log_mut().ready("web_set_link")?;
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

pub(super) fn no_set_session() -> Response {
    notice(
        StatusCode::UNAUTHORIZED,
        "This page needs a fresh link",
        "Run `keyveil set ENV VAR --web` in your terminal and open the link it gives you (or use `keyveil set ENV VAR` at a hidden prompt). Links work once.",
    )
}

pub(super) fn form_page(
    environment: &str,
    name: &str,
    description: &str,
    csrf: String,
    error: Option<String>,
) -> Response {
    html(view::set_form(environment, name, description, csrf, error).render())
}

pub(super) async fn set_page(
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
        .names()
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
pub(super) struct SetValueForm {
    pub(super) csrf: Option<String>,
    pub(super) value: Option<Passphrase>,
}

pub(super) async fn set_value(
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
    let shown_name = st.broker.lock().names().shown_name(&environment, &name);
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
    let reply = crate::broker::ops::call(
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
