//! The check every run, access request and approval for an environment pinned to a project
//! manifest (`keyveil.toml`, `docs/manifest.md`) makes first: a file that changed since the
//! human approved its digest (an agent edited it) ends the environment's grants and refuses the
//! request until the human applies it again with the factor (`broker/ops/project.rs`).

use serde_json::json;

use super::Broker;
use super::state::{OpError, OpResult, RequestState};
use crate::manifest;
use keyveil_proto::ErrorCode;

/// Why grants end and requests are refused when a pinned manifest changed.
const CHANGED_WHY: &str = "manifest changed since approved";

/// The file name a pin's path ends with (what the refusal calls it).
pub(crate) fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Checks `env`'s manifest pin, if it has one: `Ok` when the file still has the approved
/// digest. Otherwise every live grant of `env` ends (audited, `revoke` with why
/// [`CHANGED_WHY`]), the change is audited (`manifest_changed`), and the request is refused,
/// saying so, until the human applies the manifest again with the factor.
///
/// # Errors
/// [`ErrorCode::Denied`] when the file changed, went missing or cannot be read.
pub(crate) fn check_pin(broker: &Broker, env: &str) -> OpResult<()> {
    let pin = {
        let inner = broker.lock();
        let Ok(v) = inner.vault() else {
            return Ok(());
        };
        match v.data().manifests.get(env) {
            Some(p) => p.clone(),
            None => return Ok(()),
        }
    };
    let now =
        manifest::read_file(std::path::Path::new(&pin.path)).map(|b| manifest::sha256_hex(&b));
    if now.as_deref() == Ok(pin.sha256.as_str()) {
        return Ok(());
    }
    let mut inner = broker.lock();
    let ids: Vec<String> = inner
        .grants()
        .iter()
        .filter(|g| g.environment() == env && !g.revoked())
        .map(|g| g.id().to_owned())
        .collect();
    let ended = ids.len();
    for id in ids {
        inner.revoke(&id, CHANGED_WHY);
    }
    // Requests of the environment waiting for the human are refused too, saying why: the
    // waiting `keyveil run` (or `access_status`) reports it.
    let name = file_name(&pin.path);
    let refusal = format!("{name} changed since approved: run `keyveil project apply`");
    let pending: Vec<u64> = inner
        .requests()
        .pending()
        .filter(|r| r.environment() == env)
        .map(|r| r.id())
        .collect();
    for id in &pending {
        let denied = RequestState::Denied {
            reason: Some(refusal.clone()),
        };
        inner.requests_mut().decide(*id, denied);
        inner.audit_note("deny", json!({"request_id": id, "reason": refusal}));
    }
    inner.audit(
        "manifest_changed",
        json!({
            "environment": env,
            "path": pin.path,
            "approved": pin.sha256,
            "now": now.as_deref().unwrap_or("unreadable"),
            "grants_ended": ended,
        }),
    );
    drop(inner);
    if !pending.is_empty() {
        broker.notify();
    }
    let what = match &now {
        Ok(d) => format!(
            "its SHA-256 was {} and is now {}",
            short(&pin.sha256),
            short(d)
        ),
        Err(e) => e.clone(),
    };
    Err(OpError::new(
        ErrorCode::Denied,
        format!("{refusal} ({what})"),
    )
    .hint(format!(
        "environment {env} is pinned to {}; review the change (git diff), then run `keyveil project apply` in that directory and approve it with your factor",
        pin.path
    )))
}

/// The first 12 hex digits of a digest.
fn short(d: &str) -> &str {
    d.get(..12).unwrap_or(d)
}
