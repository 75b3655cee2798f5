//! OpenBao control groups (OpenBao 2.7): two-person approval that OpenBao enforces, keyveil
//! only waits for.
//!
//! A policy can put a path under a `control_group` (`factor "NAME" { controlled_capabilities =
//! ["read"] identity { group_names = ["approvers"] approvals = 1 } }`, and a `ttl`). A read by a
//! token under that policy is not served: OpenBao stores the request and answers a **response
//! wrapping token** (`wrap_info`: token, accessor, ttl) instead of the data. A member of the
//! named identity group, with a policy allowing `sys/control-group/authorize`, authorizes the
//! accessor; until then `sys/wrapping/unwrap` with the wrapping token answers 400 "wrapping
//! token is not valid or does not exist". Once approved, the same unwrap runs the stored request
//! again, as the original token, and answers its response (a KV read's `data`, a database
//! lease).
//!
//! What OpenBao 2.7.2 does, measured (`docs/dynamic-credentials.md`, "Control groups"):
//!
//! * the `ttl` of the control group is needed: it is both the wrapping TTL and how long an
//!   approval counts, and without it an approval expires the moment it is given (OpenBao
//!   answers `approved: false` for ever) and an unwrapped read is answered `200` with neither
//!   `data` nor `wrap_info` ([`empty_answer`]);
//! * the client must **not** ask for wrapping itself (`X-Vault-Wrap-TTL`, which keyveil never
//!   sends): the stored request keeps its wrap TTL, so the approved unwrap answers yet another
//!   wrapping token, itself under the control group.
//!
//! The wrapping token lives in the broker's memory only ([`PENDING`]) for as long as its
//! request waits, and is revoked once released (an approved token would otherwise run the
//! request again at every unwrap until its TTL): it is never logged, stored or shown. Its accessor is not a secret (it cannot
//! unwrap) and is what the approver needs: it goes into the audit log and the error a run
//! gets.

// `serde_json::Value` indexing by key returns `Null` for a missing key: it never panics.
#![allow(clippy::indexing_slicing)]

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use keyveil_vault::SecretValue;
use serde_json::{Value, json};

use super::bao_conn::{Conn, bao_error, errors_of, login_key, ns_note, request_id_of};
use super::{CgWait, DynamicError, DynamicSpec};

/// How often a waiting run asks OpenBao whether the request was approved.
const POLL: Duration = Duration::from_secs(1);

/// OpenBao's answer to an unwrap of a wrapping token that is not (yet) valid: not approved,
/// expired, or never existed.
const NOT_VALID: &str = "wrapping token is not valid or does not exist";

/// A request OpenBao holds for its control group: the wrapping token (broker memory only), its
/// accessor and when it expires.
#[derive(Clone)]
struct Held {
    token: SecretValue,
    accessor: String,
    expires: Instant,
}

/// The requests waiting for a second approver, by (login, path): a run that gives up waiting
/// leaves its request here until its wrapping TTL, so the next run waits for the same accessor
/// (the one the approver was told) instead of filing a new one.
static PENDING: LazyLock<Mutex<HeldMap>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// The held requests by (login key, path).
type HeldMap = HashMap<([u8; 32], String), Held>;

fn pending() -> std::sync::MutexGuard<'static, HeldMap> {
    PENDING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether OpenBao already holds a request for this login and path (one still within its
/// wrapping TTL), to be waited on instead of filing another.
pub(crate) fn is_held(spec: &DynamicSpec, path: &str) -> bool {
    let key = (login_key(spec), path.to_owned());
    let mut map = pending();
    map.retain(|_, h| h.expires > Instant::now());
    map.contains_key(&key)
}

/// Whether an answer is a control-group deferral: a wrapping token keyveil did not ask for.
pub(crate) fn is_wrapped(v: &Value) -> bool {
    v["wrap_info"]["token"]
        .as_str()
        .is_some_and(|t| !t.is_empty())
        && v["data"].is_null()
}

/// Whether a `2xx` answer to a read is OpenBao's empty answer to a controlled request it did
/// not wrap: no `data`, no `wrap_info` (a control group without `ttl`).
pub(crate) fn empty_answer(v: &Value) -> bool {
    v["data"].is_null() && v["wrap_info"].is_null() && v["errors"].is_null()
}

/// The error for [`empty_answer`].
pub(crate) fn empty_answer_error(conn: &Conn, spec: &DynamicSpec, path: &str) -> DynamicError {
    bao_error(
        spec.engine,
        &conn.address,
        format!(
            "answered a read of {path}{} with neither data nor a wrapping token",
            ns_note(conn.namespace())
        ),
        "OpenBao deferred the request for a control group but did not wrap it (HTTP 200, data: null, wrap_info: null)",
        "the policy's control_group has no ttl: OpenBao 2.7 then neither wraps the answer nor counts an approval; ask your OpenBao operator to add one (control_group = { ttl = \"1h\" factor ... }), then run again",
    )
}

/// The value behind a wrapping token `v` (a control-group deferral of a request to `path`):
/// waits, within `wait`, for a second approver to authorize it in OpenBao, then answers what
/// the unwrap gives. `token_secrets` are scrubbed from every reason.
///
/// Errors: not approved within the wait (the accessor and what to do), the wrapping TTL
/// passed (expired: run again for a new request), an unwrap OpenBao refuses otherwise, an
/// approved answer that is itself wrapped (keyveil asked for no wrapping: a control group
/// under a policy that also wraps).
pub(crate) async fn released(
    conn: &Conn,
    spec: &DynamicSpec,
    path: &str,
    v: Option<&Value>,
    wait: &CgWait<'_>,
    token_secrets: &[&str],
) -> Result<Value, DynamicError> {
    let key = (login_key(spec), path.to_owned());
    let held = match v {
        Some(v) => {
            let accessor = v["wrap_info"]["accessor"].as_str().unwrap_or("");
            if !accessor_ok(accessor) {
                return Err(fail(
                    conn,
                    spec,
                    path,
                    "answered a wrapping token whose accessor is not of OpenBao's form",
                    "is this an OpenBao server? keyveil sent no X-Vault-Wrap-TTL",
                ));
            }
            let ttl = v["wrap_info"]["ttl"].as_u64().unwrap_or(0);
            let h = Held {
                token: SecretValue::new(v["wrap_info"]["token"].as_str().unwrap_or("").to_owned()),
                accessor: accessor.to_owned(),
                expires: Instant::now() + Duration::from_secs(ttl),
            };
            pending().insert(key.clone(), h.clone());
            h
        }
        None => match pending().get(&key) {
            Some(h) => h.clone(),
            None => {
                return Err(fail(
                    conn,
                    spec,
                    path,
                    "no request is held for this path",
                    "run again",
                ));
            }
        },
    };
    wait.note(
        "control_group_pending",
        json!({
            "target": spec.shown_target(),
            "path": path,
            "accessor": held.accessor,
            "wrap_ttl_left_s": held.expires.saturating_duration_since(Instant::now()).as_secs(),
        }),
    );
    let mut secrets: Vec<&str> = token_secrets.to_vec();
    secrets.push(held.token.expose());
    loop {
        let (status, u) = conn
            .request(
                Method::POST,
                "sys/wrapping/unwrap",
                None,
                Some(&held.token),
                &secrets,
            )
            .await?;
        if (200..300).contains(&status) {
            pending().remove(&key);
            // Once approved, OpenBao runs the stored request again at every unwrap until the
            // wrapping TTL ends: the token is revoked now (best effort), so it reads nothing
            // more even if it leaked from the broker's memory.
            let revoked = conn
                .request(
                    Method::POST,
                    "auth/token/revoke-self",
                    None,
                    Some(&held.token),
                    &secrets,
                )
                .await;
            if !matches!(revoked, Ok((s, _)) if (200..300).contains(&s)) {
                tracing::warn!(accessor = %held.accessor, "cannot revoke a released control-group wrapping token; it ends at its TTL");
            }
            if is_wrapped(&u) {
                return Err(fail(
                    conn,
                    spec,
                    path,
                    "answered the approved request with another wrapping token",
                    "the request was stored with a wrap TTL of its own, so OpenBao wraps it again under the control group: keyveil never asks for wrapping; check that nothing between keyveil and OpenBao (a proxy) adds X-Vault-Wrap-TTL",
                ));
            }
            wait.note(
                "control_group_released",
                json!({
                    "target": spec.shown_target(),
                    "path": path,
                    "accessor": held.accessor,
                    "request_id": request_id_of(&u),
                }),
            );
            return Ok(u);
        }
        let why = errors_of(status, &u);
        if !(status == 400 && why.contains(NOT_VALID)) {
            pending().remove(&key);
            return Err(fail(
                conn,
                spec,
                path,
                &format!("refused to unwrap the control group's answer: {why}"),
                "see OpenBao's error; the node's audit log has the request",
            ));
        }
        let now = Instant::now();
        if now >= held.expires {
            pending().remove(&key);
            return Err(fail(
                conn,
                spec,
                path,
                &format!(
                    "holds the request for a control group and its approval window ended before a second approver authorized accessor {} (the wrapping token expired)",
                    held.accessor
                ),
                "run again to file a new request in OpenBao, then have a member of the policy's approver group authorize the new accessor within the control group's ttl (bao write sys/control-group/authorize accessor=...)",
            ));
        }
        if wait.wanted.is_some_and(|w| !w()) {
            return Err(fail(
                conn,
                spec,
                path,
                &format!(
                    "was waiting for a second approver on accessor {} when the grant ended",
                    held.accessor
                ),
                "the grant was revoked or expired in keyveil: ask again; the request stays in OpenBao until its wrapping TTL and the next run waits on it",
            ));
        }
        let waited_enough = match wait.until {
            None => true,
            Some(t) => now >= t,
        };
        if waited_enough {
            return Err(fail(
                conn,
                spec,
                path,
                &format!(
                    "requires a second approver: the request waits in OpenBao for its control group under accessor {}",
                    held.accessor
                ),
                &format!(
                    "ask a member of the approver group named in the policy's control_group to run `bao write sys/control-group/authorize accessor={}` with their own login (yours cannot approve your own request), then run again: keyveil keeps waiting for this accessor until its wrapping TTL ends",
                    held.accessor
                ),
            ));
        }
        let mut step = POLL.min(held.expires.saturating_duration_since(now));
        if let Some(t) = wait.until {
            step = step.min(t.saturating_duration_since(now));
        }
        tokio::time::sleep(step.max(Duration::from_millis(50))).await;
    }
}

/// Whether an accessor looks like OpenBao's (letters, digits and `._-`, 1 to 64): it goes into
/// the audit log and an error.
fn accessor_ok(a: &str) -> bool {
    (1..=64).contains(&a.len())
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn fail(conn: &Conn, spec: &DynamicSpec, path: &str, what: &str, hint: &str) -> DynamicError {
    bao_error(
        spec.engine,
        &conn.address,
        format!("(read of {path}{})", ns_note(conn.namespace())),
        what.to_owned(),
        hint.to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_and_empty_answers_are_told_apart() {
        let wrapped = json!({"data": null, "wrap_info": {"token": "x", "accessor": "a"}});
        assert!(is_wrapped(&wrapped) && !empty_answer(&wrapped));
        let empty = json!({"data": null, "wrap_info": null});
        assert!(!is_wrapped(&empty) && empty_answer(&empty));
        let data = json!({"data": {"data": {}}, "wrap_info": null});
        assert!(!is_wrapped(&data) && !empty_answer(&data));
        assert!(accessor_ok("YR6Mg1NrRGfxwAiSaKixVtz7"));
        assert!(!accessor_ok("a b") && !accessor_ok("") && !accessor_ok("x\ny"));
    }
}
