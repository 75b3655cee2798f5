//! Approvals (a grant created, scoped as the human chose) and denials.

use super::cards::state_word;
use super::*;

/// Approves a request with the human's factor, creating a grant.
///
/// `card` is the `factor_proof::card_digest` of the request as the human was shown it (the CLI
/// and the approval page send it); the approval is refused when the request no longer has it.
pub(crate) async fn approve(
    broker: &Arc<Broker>,
    id: u64,
    card: Option<&str>,
    proof: Proof,
    o: ApproveOptions,
) -> OpResult<op::Approved> {
    let required = pending_factor(broker, id)?;
    // A pinned manifest that changed refuses before the factor is spent on it.
    check_request_pin(broker, id)?;
    // The factor first (so a forged proof is counted and audited whatever else it carries),
    // then the card: an approval applies only to the request as the human was shown it.
    let used = verify_factor(broker, proof, required, json!({"request_id": id}))
        .await?
        .used;
    if let Some(card) = card {
        check_card(broker, id, card)?;
    }
    grant_pending(broker, id, o, used)
}

/// Refuses approving request `id` while its environment's pinned manifest differs from the
/// approved one (`manifest_pin::check_pin`, which also ends the environment's grants).
fn check_request_pin(broker: &Broker, id: u64) -> OpResult<()> {
    let env = broker
        .lock()
        .requests()
        .get(id)
        .map(|r| r.environment().to_owned());
    match env {
        Some(env) => crate::broker::manifest_pin::check_pin(broker, &env),
        None => Ok(()),
    }
}

/// The factor approving pending request `id` needs (its environment's policy).
///
/// # Errors
/// The vault is locked; no such request; it is no longer pending.
pub(crate) fn pending_factor(broker: &Broker, id: u64) -> OpResult<FactorKind> {
    let mut inner = broker.lock();
    inner.vault()?;
    inner.expire_requests();
    let env = match inner.requests().get(id) {
        None => return Err(no_request(id)),
        Some(r) if r.state() != &RequestState::Pending => {
            return Err(no_longer_pending(id, r.state()));
        }
        Some(r) => r.environment().to_owned(),
    };
    Ok(inner
        .vault()?
        .data()
        .environments
        .get(&env)
        .map(|e| e.policy.factor)
        .unwrap_or(FactorKind::Passphrase))
}

/// Refuses (and audits) an approval of request `id` whose card is not `card`, the digest of
/// the request as the human was shown it.
pub(crate) fn check_card(broker: &Broker, id: u64, card: &str) -> OpResult<()> {
    if card_digest_of(broker, id).as_deref() == Some(card) {
        return Ok(());
    }
    broker.lock().audit_note(
        "approve_refused",
        json!({"request_id": id, "why": "the card the human was shown is not this request"}),
    );
    Err(OpError::new(
        ErrorCode::Denied,
        format!("request #{id} is not the one you were shown; nothing was approved"),
    )
    .hint("the request changed, or something between your terminal and the broker showed you another card: list requests again with `keyveil requests`"))
}

/// Grants pending request `id` (its factor, `used`, already checked) with options `o`.
pub(crate) fn grant_pending(
    broker: &Broker,
    id: u64,
    o: ApproveOptions,
    used: &str,
) -> OpResult<op::Approved> {
    check_request_pin(broker, id)?;
    let mut inner = broker.lock();
    // Re-check under the lock: a concurrent approval may have won the race.
    let Some(req) = inner.requests().get(id).cloned() else {
        return Err(no_request(id));
    };
    if req.state() != &RequestState::Pending {
        return Err(no_longer_pending(id, req.state()));
    }
    let out = grant_request(&mut inner, &req, o, used, None)?;
    drop(inner);
    broker.notify();
    Ok(out)
}

/// Creates the grant for a request (approved by `factor`, or by auto-approve rule `rule`).
pub(super) fn grant_request(
    inner: &mut Inner,
    req: &AccessReq,
    o: ApproveOptions,
    factor: &str,
    rule: Option<usize>,
) -> OpResult<op::Approved> {
    inner.audit_log_mut().ready("approve")?;
    let id = req.id();
    let max_ttl = inner
        .vault()?
        .data()
        .environments
        .get(req.environment())
        .map(|e| e.policy.max_ttl_seconds)
        .unwrap_or(ONCE_GRANT_TTL_SECONDS);
    let (grant, ttl) = Grant::approved(new_id("g-"), req, o, max_ttl);
    let gid = grant.id().to_owned();
    let out = op::Approved {
        request_id: id,
        grant_id: gid.clone(),
        expires_at: grant.expires_at(),
        uses_left: grant.uses_left(),
        any_command: grant.argv().is_none(),
        prefix: grant.prefix(),
        subdirs: grant.subdirs(),
    };
    // Recorded before the grant exists: no grant the log does not show.
    inner.must_audit(
        if rule.is_some() {
            "auto_approve"
        } else {
            "approve"
        },
        json!({
            "request_id": id,
            "grant_id": gid,
            "factor": factor,
            "rule": rule,
            "environment": grant.environment(),
            "variables": grant.variables(),
            "any_command": grant.argv().is_none(),
            "prefix": grant.prefix(),
            "subdirs": grant.subdirs(),
            "ttl_seconds": ttl,
            "uses": grant.uses_left(),
        }),
    )?;
    if let Some(a) = &req.argv() {
        inner
            .approval_memory_mut()
            .record_approval(req.environment(), a, req.masked());
    }
    inner.grants_mut().insert(grant);
    inner
        .requests_mut()
        .decide(id, RequestState::Approved { grant_id: gid });
    Ok(out)
}

/// "No request #`id`" (none was ever made with that number, or it was forgotten), with the
/// way to see the ones that are pending.
fn no_request(id: u64) -> OpError {
    OpError::new(ErrorCode::NotFound, format!("no request #{id}"))
        .hint("list pending requests with `keyveil requests`")
}

/// Request `id` was decided already (`state`): nothing is left to approve or deny.
fn no_longer_pending(id: u64, state: &RequestState) -> OpError {
    OpError::new(
        ErrorCode::Failed,
        format!(
            "request #{id} is no longer pending ({})",
            state_word(state)
        ),
    )
    .hint("nothing was changed; list pending requests with `keyveil requests`, live grants with `keyveil grants`")
}

/// Denies a request.
pub(crate) fn deny(broker: &Broker, id: u64, reason: Option<String>) -> OpResult<op::Denied> {
    let mut inner = broker.lock();
    let r = inner.requests().get(id).ok_or_else(|| no_request(id))?;
    if r.state() != &RequestState::Pending {
        return Err(no_longer_pending(id, r.state()));
    }
    let denied = RequestState::Denied {
        reason: reason.clone(),
    };
    let r = inner
        .requests_mut()
        .decide(id, denied)
        .ok_or_else(|| no_request(id))?;
    let argv = r.argv().to_owned().unwrap_or_default();
    let masked = r.masked();
    let now = Instant::now();
    let behaviour = risk::behaviour(&argv);
    inner
        .approval_memory_mut()
        .record_denial(argv, masked, behaviour, now, DENIED_FLAG_MEMORY);
    inner.audit_note("deny", json!({"request_id": id, "reason": reason}));
    drop(inner);
    broker.notify();
    Ok(op::Denied {
        request_id: id,
        status: "denied".to_owned(),
    })
}
