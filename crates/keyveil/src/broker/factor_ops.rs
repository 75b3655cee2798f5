//! Factors and policy: verifying the human's factor (passphrase or TOTP), TOTP enrolment, and
//! policy changes — which always need a factor, so a same-user agent can never loosen policy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use keyveil_vault::{AutoApproveRule, DenyRule, FactorKind, SecretValue, TotpFactor};
use serde_json::{Value, json};

use super::Broker;
use super::state::{OpError, OpResult, unknown_env};
use crate::factor;
use crate::protocol::{ErrorCode, Passphrase, PolicyChange};

/// How long a started TOTP enrolment waits for its confirming code.
const ENROLL_WINDOW: Duration = Duration::from_secs(600);

/// The proof a human offers.
pub enum Proof {
    /// The vault passphrase.
    Passphrase(Passphrase),
    /// A TOTP code.
    Totp(String),
    /// No secret: a plain confirmation.
    Confirm,
}

impl Proof {
    /// From the request fields.
    pub fn from_fields(passphrase: Passphrase, totp: Option<String>, confirm: bool) -> Proof {
        match (totp, confirm) {
            (Some(code), _) => Proof::Totp(code),
            (None, true) if passphrase.expose().is_empty() => Proof::Confirm,
            _ => Proof::Passphrase(passphrase),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Proof::Passphrase(_) => "passphrase",
            Proof::Totp(_) => "totp",
            Proof::Confirm => "confirm",
        }
    }
}

/// Verifies a proof against the factor `required` (passphrase always satisfies; TOTP satisfies
/// `totp` and `confirm`; a plain confirmation only `confirm`). Failures are rate-limited (5,
/// then a doubling lockout) and audited with `purpose`. Returns the factor name used.
pub async fn verify_factor(
    broker: &Arc<Broker>,
    proof: Proof,
    required: FactorKind,
    purpose: Value,
) -> OpResult<&'static str> {
    let used = proof.name();
    {
        let mut inner = broker.lock();
        inner.vault()?;
        if let Err(secs) = inner.factor.check(Instant::now()) {
            inner.audit_note(
                "factor_locked",
                json!({"for": purpose, "seconds_left": secs}),
            );
            return Err(OpError::new(
                ErrorCode::Denied,
                format!("approvals are locked after repeated wrong factors; try again in {secs} s"),
            ));
        }
    }
    let allowed = matches!(
        (&proof, required),
        (Proof::Passphrase(_), _)
            | (Proof::Totp(_), FactorKind::Totp | FactorKind::Confirm)
            | (Proof::Confirm, FactorKind::Confirm)
    );
    if !allowed {
        return Err(OpError::new(
            ErrorCode::Denied,
            format!("the policy requires the {} factor; a {used} is not enough here", factor_word(required)),
        )
        .hint("approve with the vault passphrase (prompted), or a TOTP code where the policy allows it"));
    }
    let ok = match proof {
        Proof::Confirm => Ok(()),
        Proof::Passphrase(p) => {
            let checker = broker.lock().vault()?.passphrase_checker();
            let good = tokio::task::spawn_blocking(move || checker.check(p.expose().as_bytes()))
                .await
                .unwrap_or(false);
            if good {
                Ok(())
            } else {
                Err("wrong passphrase".to_owned())
            }
        }
        Proof::Totp(code) => check_totp(broker, &code),
    };
    let mut inner = broker.lock();
    match ok {
        Ok(()) => {
            inner.factor.succeed();
            Ok(used)
        }
        Err(why) => {
            let lockout = inner.factor.fail(Instant::now());
            inner.audit_note(
                "factor_failed",
                json!({"for": purpose, "factor": used, "why": why, "lockout_seconds": lockout.map(|d| d.as_secs())}),
            );
            Err(OpError::new(
                ErrorCode::Denied,
                format!("{why}; nothing was approved or changed"),
            )
            .hint(match lockout {
                Some(d) => format!(
                    "too many failures: approvals are locked for {} s",
                    d.as_secs()
                ),
                None => "try again with the right factor".to_owned(),
            }))
        }
    }
}

fn factor_word(k: FactorKind) -> &'static str {
    match k {
        FactorKind::Passphrase => "passphrase",
        FactorKind::Totp => "totp",
        FactorKind::Confirm => "confirm",
    }
}

/// Checks a TOTP code against the enrolled seed and records its step (replay protection that
/// survives restarts: the step is saved in the vault).
fn check_totp(broker: &Broker, code: &str) -> Result<(), String> {
    let mut inner = broker.lock();
    let Ok(v) = inner.vault_mut() else {
        return Err("the vault is locked".to_owned());
    };
    let Some(t) = v.data().factors.totp.clone() else {
        return Err("no TOTP authenticator is enrolled (`keyveil factor enroll totp`)".to_owned());
    };
    let seed_b32 = t.seed_base32.open().map_err(|e| e.to_string())?;
    let seed = factor::from_base32(seed_b32.expose()).map_err(|e| e.to_string())?;
    drop(seed_b32);
    let step = factor::verify(&seed, code, factor::now_seconds(), t.last_step)
        .map_err(|e| e.to_string())?;
    if let Some(t) = v.data_mut().factors.totp.as_mut() {
        t.last_step = step;
    }
    v.save()
        .map_err(|e| format!("cannot record the code's use: {e}"))?;
    Ok(())
}

/// Starts TOTP enrolment: passphrase required. Returns the URI and QR text once.
pub async fn enroll(broker: &Arc<Broker>, pass: Passphrase) -> OpResult<Value> {
    verify_factor(
        broker,
        Proof::Passphrase(pass),
        FactorKind::Passphrase,
        json!("factor_enroll"),
    )
    .await?;
    let seed = factor::new_seed().map_err(|e| {
        OpError::new(
            ErrorCode::Failed,
            format!("the OS random source failed: {e}"),
        )
    })?;
    let account = std::env::var("USER").unwrap_or_else(|_| "user".to_owned());
    let uri =
        factor::uri(&seed, &account).map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))?;
    let qr = factor::qr_text(&uri);
    let mut inner = broker.lock();
    inner.audit_ready("factor_enroll_started")?;
    inner.pending_totp = Some((SecretValue::new(factor::to_base32(&seed)), Instant::now()));
    inner.audit("factor_enroll_started", json!({"factor": "totp"}));
    Ok(json!({"uri": uri, "qr": qr}))
}

/// Finishes enrolment with a first code.
pub fn confirm(broker: &Broker, code: &str) -> OpResult<Value> {
    let mut inner = broker.lock();
    let Some((seed_b32, at)) = inner.pending_totp.take() else {
        return Err(
            OpError::new(ErrorCode::Failed, "no TOTP enrolment is in progress")
                .hint("start one with `keyveil factor enroll totp`"),
        );
    };
    if at.elapsed() > ENROLL_WINDOW {
        return Err(
            OpError::new(ErrorCode::Timeout, "the TOTP enrolment expired")
                .hint("start again with `keyveil factor enroll totp`"),
        );
    }
    let seed = factor::from_base32(seed_b32.expose())
        .map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))?;
    let step = match factor::verify(&seed, code, factor::now_seconds(), 0) {
        Ok(s) => s,
        Err(e) => {
            // Keep the enrolment open for another try.
            inner.pending_totp = Some((seed_b32, at));
            inner.audit_note(
                "factor_failed",
                json!({"for": "factor_confirm", "factor": "totp", "why": e.to_string()}),
            );
            return Err(OpError::new(ErrorCode::Denied, e.to_string())
                .hint("type the code your authenticator shows now"));
        }
    };
    if let Err(e) = inner.audit_ready("factor_enrolled") {
        // Keep the enrolment open: the code can be tried again once the log has room.
        inner.pending_totp = Some((seed_b32, at));
        return Err(e);
    }
    let seed_b32 = keyveil_vault::SealedValue::seal(seed_b32)
        .map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))?;
    let v = inner.vault_mut()?;
    v.data_mut().factors.totp = Some(TotpFactor {
        seed_base32: seed_b32,
        last_step: step,
        enrolled_at: Timestamp::now(),
    });
    v.save()
        .map_err(|e| OpError::new(ErrorCode::Failed, format!("cannot save the vault: {e}")))?;
    inner.audit("factor_enrolled", json!({"factor": "totp"}));
    Ok(json!({"enrolled": "totp"}))
}

/// An environment's policy as JSON.
pub fn policy_show(broker: &Broker, env: &str) -> OpResult<Value> {
    let inner = broker.lock();
    let v = inner.vault()?;
    let e = v
        .data()
        .environments
        .get(env)
        .ok_or_else(|| unknown_env(env, v))?;
    Ok(json!({
        "environment": env,
        "policy": e.policy,
        "effective_path": inner.policy_path(env),
        "totp_enrolled": v.data().factors.totp.is_some(),
    }))
}

/// Applies one policy change after verifying the factor (passphrase or TOTP; never a plain
/// confirmation, whatever the policy says).
pub async fn policy_set(
    broker: &Arc<Broker>,
    env: &str,
    proof: Proof,
    change: PolicyChange,
) -> OpResult<Value> {
    if matches!(proof, Proof::Confirm) {
        return Err(OpError::new(
            ErrorCode::Denied,
            "changing policy needs the passphrase or a TOTP code",
        ));
    }
    {
        let inner = broker.lock();
        let v = inner.vault()?;
        if !v.data().environments.contains_key(env) {
            return Err(unknown_env(env, v));
        }
    }
    // Validate before asking for the factor, so a typo costs no attempt.
    let change = normalise(change)?;
    verify_factor(broker, proof, FactorKind::Totp, json!({"policy_set": env})).await?;
    let mut inner = broker.lock();
    inner.audit_ready("policy_set")?;
    let v = inner.vault_mut()?;
    let Some(e) = v.data_mut().environments.get_mut(env) else {
        return Err(OpError::new(
            ErrorCode::NotFound,
            format!("no environment named '{env}'"),
        ));
    };
    let p = &mut e.policy;
    let mut warning = None;
    match &change {
        PolicyChange::Factor { factor } => {
            p.factor = match factor.as_str() {
                "passphrase" => FactorKind::Passphrase,
                "totp" => FactorKind::Totp,
                "confirm" => {
                    warning = Some(
                        "with `confirm`, anyone who can run `keyveil approve` as you (your agent too) can approve requests in this environment: use it only for low-risk values",
                    );
                    FactorKind::Confirm
                }
                other => {
                    return Err(OpError::new(
                        ErrorCode::Usage,
                        format!("unknown factor {other:?}: use passphrase, totp or confirm"),
                    ));
                }
            }
        }
        PolicyChange::MaxTtl { seconds } => p.max_ttl_seconds = *seconds,
        PolicyChange::Path { path } => p.path = path.clone(),
        PolicyChange::AutoApproveAdd {
            argv,
            prefix,
            cwd,
            ttl_seconds,
        } => p.auto_approve.push(AutoApproveRule {
            argv: argv.clone(),
            prefix: *prefix,
            cwd: cwd.clone(),
            ttl_seconds: *ttl_seconds,
        }),
        PolicyChange::AutoApproveRemove { index } => {
            if *index >= p.auto_approve.len() {
                return Err(OpError::new(
                    ErrorCode::NotFound,
                    format!("no auto-approve rule #{index}"),
                ));
            }
            p.auto_approve.remove(*index);
        }
        PolicyChange::DenyAdd { argv, prefix } => p.deny.push(DenyRule {
            argv: argv.clone(),
            prefix: *prefix,
        }),
        PolicyChange::DenyRemove { index } => {
            if *index >= p.deny.len() {
                return Err(OpError::new(
                    ErrorCode::NotFound,
                    format!("no deny rule #{index}"),
                ));
            }
            p.deny.remove(*index);
        }
        PolicyChange::WriteLeaks { .. } => {}
        PolicyChange::HideNames { hide } => p.hide_names = *hide,
    }
    if let PolicyChange::WriteLeaks { action } = &change {
        p.write_leaks = match action.as_str() {
            "report" => keyveil_vault::WriteLeakAction::Report,
            "quarantine" => keyveil_vault::WriteLeakAction::Quarantine,
            "fail" => keyveil_vault::WriteLeakAction::Fail,
            other => {
                return Err(OpError::new(
                    ErrorCode::Usage,
                    format!("unknown action {other:?}: use report, quarantine or fail"),
                ));
            }
        };
    }
    let policy = p.clone();
    v.save()
        .map_err(|e| OpError::new(ErrorCode::Failed, format!("cannot save the vault: {e}")))?;
    inner.audit("policy_set", json!({"environment": env, "change": change}));
    Ok(json!({"environment": env, "policy": policy, "warning": warning}))
}

fn normalise(change: PolicyChange) -> OpResult<PolicyChange> {
    Ok(match change {
        PolicyChange::AutoApproveAdd {
            argv,
            prefix,
            cwd,
            ttl_seconds,
        } => {
            if argv.is_empty() {
                return Err(OpError::new(
                    ErrorCode::Usage,
                    "an auto-approve rule needs a command",
                ));
            }
            let cwd = super::access::canonical_cwd(&cwd)?;
            PolicyChange::AutoApproveAdd {
                argv,
                prefix,
                cwd,
                ttl_seconds: ttl_seconds.max(1),
            }
        }
        PolicyChange::Path { path: Some(p) } => {
            if p.split(':').any(|d| !d.starts_with('/')) {
                return Err(OpError::new(
                    ErrorCode::Usage,
                    "every PATH entry must be an absolute directory",
                ));
            }
            PolicyChange::Path { path: Some(p) }
        }
        PolicyChange::DenyAdd { argv, .. } if argv.is_empty() => {
            return Err(OpError::new(
                ErrorCode::Usage,
                "a deny rule needs a command",
            ));
        }
        other => other,
    })
}

/// Whether a rule's argv matches an ask's argv (exact, or token prefix without code options).
pub fn rule_matches(rule_argv: &[String], prefix: bool, argv: &[String]) -> bool {
    if !prefix {
        return rule_argv == argv;
    }
    argv.len() >= rule_argv.len()
        && argv.get(..rule_argv.len()) == Some(rule_argv)
        && argv
            .get(rule_argv.len()..)
            .unwrap_or_default()
            .iter()
            .all(|t| {
                let opt = t.split('=').next().unwrap_or(t);
                !super::state::CODE_OPTIONS.contains(&opt)
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_tokens() {
        let r: Vec<String> = vec!["cargo".into(), "test".into()];
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(rule_matches(&r, false, &a(&["cargo", "test"])));
        assert!(!rule_matches(&r, false, &a(&["cargo", "test", "-q"])));
        assert!(rule_matches(&r, true, &a(&["cargo", "test", "-q"])));
        assert!(!rule_matches(
            &r,
            true,
            &a(&["cargo", "test", "--config", "x"])
        ));
        assert!(!rule_matches(&r, true, &a(&["cargo"])));
    }
}
