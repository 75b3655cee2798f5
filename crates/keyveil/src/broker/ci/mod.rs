//! CI mode (`keyveil ci`, `docs/ci.md`): a broker with no human at the keyboard. `start` makes
//! an ephemeral vault under a random key, freezes the manifest and the allowlist, and logs in
//! to OpenBao with the job's OIDC token; from then on a request that a frozen rule covers runs
//! (audited `auto_approve`), every other one is refused at once ([`refused_ask`]), and every
//! operation that needs a factor is refused ([`gate`]): none exists. `finish` scans artifacts
//! and ends the broker with a signed audit chain.

mod finish;
mod rules;
mod start;

pub(crate) use finish::{finish, scan};
pub(crate) use start::start;

use std::sync::Mutex;

use keyveil_proto::{ErrorCode, Request};
use serde_json::json;

use crate::broker::Broker;
use crate::broker::state::{Ask, Inner, OpError};
use crate::ci_sign::Signer;

/// What a CI broker holds besides its state: the signing key (memory only) and every value
/// its runs were given, for `ci scan`.
#[derive(Debug)]
pub(crate) struct Session {
    /// Signs the audit chain's head at `ci finish`.
    signer: Signer,
    /// (variable, value) of every value a run was given, each once.
    used: Mutex<Vec<(String, keyveil_vault::SecretValue)>>,
}

/// The operations a CI broker answers: reading, running, asking (refused unless a rule covers
/// it), revoking, the audit, and its own scan and finish. Everything else changes what the
/// human decided or needs a factor, and no factor exists here.
fn allowed(req: &Request) -> bool {
    matches!(
        req,
        Request::Status
            | Request::EnvList
            | Request::EnvShow(_)
            | Request::Run(_)
            | Request::Start(_)
            | Request::Logs(_)
            | Request::Stop(_)
            | Request::RequestAccess(_)
            | Request::AccessStatus(_)
            | Request::Requests
            | Request::Grants(_)
            | Request::Revoke(_)
            | Request::Audit(_)
            | Request::AuditVerify
            | Request::PolicyShow(_)
            | Request::ProjectStatus
            | Request::Mounts(_)
            | Request::CiScan(_)
            | Request::CiFinish(_)
    )
}

/// The refusal of a request a CI broker never answers (a factor, an approval, a policy or
/// vault change, a lock or stop), or `None` when the broker is not in CI mode or answers it.
pub(crate) fn gate(broker: &Broker, req: &Request) -> Option<OpError> {
    broker.ci.get()?;
    if allowed(req) {
        return None;
    }
    let op = req.op();
    broker
        .lock()
        .audit_note("ci_refused_op", json!({ "op": op }));
    Some(
        OpError::new(
            ErrorCode::Denied,
            format!(
                "refused: this broker runs in CI mode (`keyveil ci start`), where no factor exists; `{op}` would need one or would change what was frozen at start"
            ),
        )
        .hint("the allowlist and keyveil.toml were frozen when the job started: change them in the repository and run the job again; `keyveil ci finish` ends this broker"),
    )
}

/// The refusal of an ask no frozen rule covers (CI mode: no human will ever decide it),
/// audited as `ci_refused` with its argv masked as a card's would be.
pub(crate) fn refused_ask(
    inner: &mut Inner,
    ask: &Ask,
    key: &str,
    flags: &[String],
    masked: bool,
) -> OpError {
    inner.audit_note_as(
        "ci_refused",
        json!({"client": key, "environment": ask.environment, "argv": ask.argv, "flags": flags}),
        masked,
    );
    let why = if flags.is_empty() {
        String::new()
    } else {
        format!(" (flags: {})", flags.join(", "))
    };
    OpError::new(
        ErrorCode::Denied,
        format!(
            "refused: no rule of the CI allowlist covers this request in environment '{}'{why}; in CI mode nothing waits for a human",
            ask.environment
        ),
    )
    .hint(format!(
        "run a command the allowlist covers, as written there and in its directory (`keyveil policy show {}` lists the rules); do not retry this one",
        ask.environment
    ))
}

/// Records the values a run is given (CI mode only), for `ci scan`.
pub(crate) fn note_values(broker: &Broker, values: &[(String, keyveil_vault::SecretValue)]) {
    let Some(s) = broker.ci.get() else {
        return;
    };
    let mut used = s.used.lock().unwrap_or_else(|p| p.into_inner());
    for (name, v) in values {
        if !used.iter().any(|(n, u)| n == name && u == v) {
            used.push((name.clone(), v.clone()));
        }
    }
}
