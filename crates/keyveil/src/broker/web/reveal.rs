//! `POST /reveal`: the human's factor typed into the approval page opens a new session whose
//! pages show the real names where a policy hides them (issue 17, item 7).
//!
//! A page session alone proves nothing: the agent can get one (`keyveil approve --web --print`
//! and a GET of the link). So names are shown only to a session opened by the factor: the page
//! checks it (rate-limited and audited like an approval's), then opens a *new* session cookie
//! and marks that one. The old cookie stays a plain session: a cookie the agent planted in the
//! browser (or got from its own link) never becomes one that shows names.

use super::AppState;
use super::approvals::{flash_of, is_totp};
use super::checks::{CsrfForm, bad_form, checked_form};
use super::{SESSION_TTL, notice, see_other, view};
use crate::broker::factor_ops::{self, Proof};
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use keyveil_proto::Passphrase;
use keyveil_vault::FactorKind;
use serde::Deserialize;
use serde_json::json;
use std::time::Instant;

/// The reveal form: the session's CSRF token and the factor (a zeroizing [`Passphrase`]).
#[derive(Deserialize)]
pub(super) struct RevealForm {
    csrf: Option<String>,
    factor: Option<Passphrase>,
}

impl CsrfForm for RevealForm {
    fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

pub(super) async fn reveal(
    State(st): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<RevealForm>, FormRejection>,
) -> Response {
    let (f, key) = match checked_form(&st, &headers, form) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let Some(factor) = f.factor else {
        return bad_form();
    };
    let proof = if is_totp(factor.expose()) {
        Proof::TypedTotp(factor.expose().to_owned())
    } else {
        Proof::Typed(factor)
    };
    // At least a TOTP code (a plain confirmation never reveals); which environments a code
    // reveals is decided per page (`Inner::page_names`).
    let verified = factor_ops::verify_factor(
        &st.broker,
        proof,
        FactorKind::Totp,
        json!({"web_reveal": true}),
    )
    .await;
    let used = match verified {
        Ok(v) => v.used,
        Err(e) => {
            st.server
                .set_flash(&key, flash_of::<()>(Err(e.reply()), |_| String::new()));
            return see_other("/");
        }
    };
    let now = Instant::now();
    let cookie = match st.server.open_session(now) {
        Ok(c) => c,
        Err(e) => return notice(StatusCode::INTERNAL_SERVER_ERROR, "No session", &e.message),
    };
    let new_key = super::auth::digest(&cookie);
    st.server.reveal(new_key, used, now + SESSION_TTL);
    st.broker
        .lock()
        .audit("web_reveal", json!({"factor": used}));
    st.server.set_flash(
        &new_key,
        view::Flash {
            ok: true,
            text: "Real names are shown on this page (to this browser only, until the vault is locked).".into(),
            hint: (used == "totp").then(|| {
                "A TOTP code shows the names of environments whose policy accepts it; the others need the passphrase.".to_owned()
            }),
        },
    );
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
