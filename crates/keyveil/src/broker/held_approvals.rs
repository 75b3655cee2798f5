//! Approving where names are hidden (`policy.hide_names`): the human sees the real names of
//! the request's variables before anything is granted (issue 17, item 7).
//!
//! Every card shows aliases (`state/names.rs`: the broker cannot tell the human's CLI from the agent's
//! without the factor). So the human's `keyveil approve` approves in two steps:
//!
//! 1. [`reveal`] (`op::ApproveReveal`): the factor is checked (at least TOTP even under a
//!    `confirm` policy, as for `env show --reveal-names`), the card matched, and the approval
//!    *held*: nothing is granted. The reply is the request's names (alias = real name) and a
//!    one-time ticket, sealed under the transit key of the factor proof, so only the CLI that
//!    typed the factor can read either (a relay at the socket reads neither).
//! 2. [`confirm`] (`op::ApproveConfirm`): the human said yes; the ticket (single use, bound to
//!    the request, its card and the options of step one, [`TICKET_TTL`]) grants exactly that.
//!
//! Why not grant first and revoke on a "no": the agent's `run` waits on the request and starts
//! the command the moment it is approved, so a grant the human takes back a second later has
//! already been used. Held, nothing runs before the yes. The ticket is no weaker than the
//! factor it stands for: 32 random bytes, only ever in the sealed reply and the CLI's
//! (non-dumpable) memory, and it can only complete the approval the factor was given for.

use std::sync::Arc;
use std::time::Duration;

use keyveil_proto::ErrorCode;
use keyveil_proto::op;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::Broker;
use super::access::{self, ApproveOptions};
use super::factor_ops::{self, Proof};
use super::state::{HeldApproval, OpError, OpResult};
use crate::factor_proof;

/// How long a held approval waits for the human's yes.
pub(crate) const TICKET_TTL: Duration = Duration::from_secs(120);
/// Most approvals held at once (the oldest is dropped first: it only has to be approved again).
const MAX_HELD: usize = 8;

/// Step one: checks the factor and the card, holds the approval, and returns the request's
/// names with a ticket, sealed for the CLI that proved the factor.
///
/// # Errors
/// As [`access::approve`]; the proof is not a CLI-made one (nothing to seal with); the OS
/// random source fails.
pub(crate) async fn reveal(
    broker: &Arc<Broker>,
    id: u64,
    card: &str,
    proof: Proof,
    options: ApproveOptions,
) -> OpResult<op::ApprovalHeld> {
    let policy = access::pending_factor(broker, id)?;
    let env = broker
        .lock()
        .requests()
        .get(id)
        .map(|r| r.environment().to_owned())
        .unwrap_or_default();
    // Names need at least what revealing them with `env show --reveal-names` needs: a plain
    // confirmation (which an agent can give under a `confirm` policy) never reveals them.
    let required = factor_ops::stronger(policy, factor_ops::rule_change_factor(broker, &env));
    let verified = factor_ops::verify_factor(
        broker,
        proof,
        required,
        json!({"request_id": id, "reveal": true}),
    )
    .await?;
    let Some((key, nonce)) = verified.transit else {
        return Err(OpError::new(
            ErrorCode::Usage,
            "names are revealed only to a CLI that proved the factor",
        )
        .hint("approve from your terminal with `keyveil approve ID`"));
    };
    access::check_card(broker, id, card)?;
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut raw[..]).map_err(|e| {
        OpError::new(
            ErrorCode::Failed,
            format!("the OS random source failed: {e}"),
        )
    })?;
    let ticket = zeroize::Zeroizing::new(hex::encode(&raw[..]));
    let mut inner = broker.lock();
    inner.audit_log_mut().ready("approve_reveal")?;
    let v = inner.vault()?;
    let mut names: Vec<op::RevealedName> = inner
        .requests()
        .get(id)
        .map(|r| {
            r.variables()
                .iter()
                .map(|n| op::RevealedName {
                    alias: v.name_alias(r.environment(), n),
                    real_name: n.clone(),
                    description: String::new(),
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort_by(|a, b| a.alias.cmp(&b.alias));
    let plain = serde_json::to_vec(&op::HeldReveal {
        ticket: ticket.to_string(),
        names,
    })
    .unwrap_or_default();
    let sealed = factor_proof::seal_in_transit(&key, &nonce, b"approve_reveal", &plain)
        .map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))?;
    inner.held_approvals_mut().hold(
        digest(&ticket),
        HeldApproval::new(id, card.to_owned(), options, verified.used),
        TICKET_TTL,
        MAX_HELD,
    );
    // The entry names the environment only (the names are what is being protected).
    inner.audit(
        "approve_reveal",
        json!({"request_id": id, "environment": env, "factor": verified.used}),
    );
    Ok(op::ApprovalHeld {
        request_id: id,
        sealed,
        expires_in_seconds: TICKET_TTL.as_secs(),
    })
}

/// Step two: grants the held approval `ticket` names, if it is live, for request `id`, and its
/// card is still the one shown. The ticket is spent whatever the outcome.
///
/// # Errors
/// No such ticket (wrong, used or expired), another request, a changed card, the request no
/// longer pending.
pub(crate) fn confirm(broker: &Broker, id: u64, ticket: &str) -> OpResult<op::Approved> {
    let held = broker
        .lock()
        .held_approvals_mut()
        .take(&digest(ticket))
        .filter(|h| h.at().elapsed() < TICKET_TTL && h.request_id() == id);
    let Some(h) = held else {
        return Err(OpError::new(
            ErrorCode::Denied,
            format!("no approval of request #{id} is waiting for a yes (it lasts {} s and works once); nothing was approved", TICKET_TTL.as_secs()),
        )
        .hint(format!("approve again with `keyveil approve {id}`")));
    };
    access::check_card(broker, id, h.card())?;
    access::grant_pending(broker, id, h.options(), h.used())
}

fn digest(ticket: &str) -> [u8; 32] {
    Sha256::digest(ticket.as_bytes()).into()
}
