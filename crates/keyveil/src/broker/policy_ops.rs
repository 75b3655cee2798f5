//! Policy: showing an environment's policy and changing it (always for the human's factor, at least
//! the one the environment demands: [`rule_change_factor`]), and how auto-approve rules match and
//! bind a request's pins.

use super::factor_ops::Proof;
use super::factor_ops::rule_change_factor;
use super::factor_ops::verify_factor;
use crate::broker::Broker;
use crate::broker::state::{OpError, OpResult, unknown_env};
use crate::factor_proof;
use keyveil_proto::op;
use keyveil_proto::{ErrorCode, PolicyChange};
use keyveil_vault::{AutoApproveRule, DenyRule, FactorKind};
use serde_json::{Value, json};
use std::sync::Arc;

/// An environment's policy.
pub(crate) fn policy_show(broker: &Broker, env: &str) -> OpResult<op::PolicyShown> {
    let inner = broker.lock();
    let v = inner.vault()?;
    let e = v
        .data()
        .environments
        .get(env)
        .ok_or_else(|| unknown_env(env, v))?;
    Ok(op::PolicyShown {
        environment: env.to_owned(),
        policy: policy_view(&e.policy),
        effective_path: inner.policy_path(env),
        totp_enrolled: v.data().factors.totp.is_some(),
    })
}

/// Applies one policy change after verifying the factor: at least the one the environment's
/// policy demands for approvals, and never less than a TOTP code ([`rule_change_factor`]), so a
/// weaker factor never changes the rules of a stronger one.
pub(crate) async fn policy_set(
    broker: &Arc<Broker>,
    env: &str,
    proof: Proof,
    change: PolicyChange,
) -> OpResult<op::PolicyChanged> {
    {
        let inner = broker.lock();
        let v = inner.vault()?;
        if !v.data().environments.contains_key(env) {
            return Err(unknown_env(env, v));
        }
    }
    // Validate before asking for the factor, so a typo costs no attempt.
    let change = normalise(change)?;
    if let PolicyChange::Bind { variable, .. } = &change {
        let inner = broker.lock();
        let v = inner.vault()?;
        if !v
            .data()
            .environments
            .get(env)
            .is_some_and(|e| e.variables.contains_key(variable))
        {
            return Err(OpError::new(
                ErrorCode::NotFound,
                format!("no variable named {variable:?} in {env}"),
            )
            .hint(format!("list the variables with `keyveil env show {env}`")));
        }
    }
    // An auto-approve rule binds what its command runs now (executable and inputs, pinned as a
    // request would pin them): a request it covers later must run the same.
    let bound = match &change {
        PolicyChange::AutoApproveAdd { argv, cwd, .. } => {
            let (search_path, home) = {
                let inner = broker.lock();
                (inner.policy_path(env), inner.child_home())
            };
            let pins = crate::broker::access::prepare_bounded(
                argv.clone(),
                cwd.clone(),
                search_path,
                home,
            )
            .await
            .map_err(|e| {
                let message = format!("the rule's command cannot be pinned: {}", e.message);
                OpError { message, ..e }
            })?;
            Some(bind(&pins))
        }
        _ => None,
    };
    let required = rule_change_factor(broker, env);
    verify_factor(broker, proof, required, json!({"policy_set": env})).await?;
    let mut inner = broker.lock();
    inner.audit_log_mut().ready("policy_set")?;
    let v = inner.vault_mut()?;
    let Some(e) = v.data_mut().environments.get_mut(env) else {
        return Err(OpError::new(
            ErrorCode::NotFound,
            format!("no environment named '{env}'"),
        ));
    };
    let p = &mut e.policy;
    let warning = apply_change(p, &change, bound.as_ref(), env)?;
    let policy = p.clone();
    v.save()
        .map_err(|e| OpError::new(ErrorCode::Failed, format!("cannot save the vault: {e}")))?;
    inner.audit(
        "policy_set",
        json!({"environment": env, "change": change, "bound": bound}),
    );
    Ok(op::PolicyChanged {
        environment: env.to_owned(),
        policy: policy_view(&policy),
        warning: warning.map(str::to_owned),
    })
}

/// One policy change applied to `p` in memory (the caller saves the vault); `bound` is what an
/// added auto-approve rule binds. Returns the warning to show, if any. Errors (an unknown
/// factor or action, a rule that is not the one shown, a variable not bound) leave `p` as it was.
fn apply_change(
    p: &mut keyveil_vault::Policy,
    change: &PolicyChange,
    bound: Option<&std::collections::BTreeMap<String, String>>,
    env: &str,
) -> OpResult<Option<&'static str>> {
    let mut warning = None;
    match change {
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
            bound: bound.cloned().unwrap_or_default(),
        }),
        PolicyChange::AutoApproveRemove { index, rule } => {
            let shown = p.auto_approve.get(*index).map(rule_digest);
            check_rule_shown(shown, rule, "auto-approve", *index)?;
            p.auto_approve.remove(*index);
        }
        PolicyChange::DenyAdd { argv, prefix } => p.deny.push(DenyRule {
            argv: argv.clone(),
            prefix: *prefix,
        }),
        PolicyChange::DenyRemove { index, rule } => {
            let shown = p.deny.get(*index).map(rule_digest);
            check_rule_shown(shown, rule, "deny", *index)?;
            p.deny.remove(*index);
        }
        PolicyChange::WriteLeaks { .. } => {}
        PolicyChange::HideNames { hide } => p.hide_names = *hide,
        PolicyChange::InsecureLoopback { allow } => p.insecure_loopback = *allow,
        PolicyChange::Bind {
            variable,
            hosts,
            url,
            body,
        } => {
            p.bindings.insert(variable.clone(), hosts.clone());
            let bound_in = keyveil_vault::BoundIn {
                url: *url,
                body: *body,
            };
            if bound_in.is_headers_only() {
                p.bound_in.remove(variable);
            } else {
                p.bound_in.insert(variable.clone(), bound_in);
            }
        }
        PolicyChange::Unbind { variable } => {
            p.bound_in.remove(variable);
            if p.bindings.remove(variable).is_none() {
                return Err(OpError::new(
                    ErrorCode::NotFound,
                    format!("{variable} is not bound to hosts in {env}"),
                )
                .hint(format!("see the bindings with `keyveil policy show {env}`")));
            }
        }
        PolicyChange::EgressRoots { pem } => p.egress_roots = pem.clone(),
    }
    if let PolicyChange::WriteLeaks { action } = change {
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
    Ok(warning)
}

/// A policy as clients read it: the vault's fields, with the same JSON names and omissions.
pub(crate) fn policy_view(p: &keyveil_vault::Policy) -> op::PolicyView {
    let mut other = serde_json::Map::new();
    if let Some(path) = &p.path {
        other.insert("path".to_owned(), Value::String(path.clone()));
    }
    if !p.write_leaks.is_report()
        && let Ok(v) = serde_json::to_value(p.write_leaks)
    {
        other.insert("write_leaks".to_owned(), v);
    }
    if p.insecure_loopback {
        other.insert("insecure_loopback".to_owned(), Value::Bool(true));
    }
    op::PolicyView {
        factor: match serde_json::to_value(p.factor) {
            Ok(Value::String(s)) => s,
            _ => String::new(),
        },
        max_ttl_seconds: p.max_ttl_seconds,
        hide_names: p.hide_names,
        auto_approve: p
            .auto_approve
            .iter()
            .map(|r| op::AutoApproveRule {
                argv: r.argv.clone(),
                prefix: r.prefix,
                cwd: r.cwd.clone(),
                ttl_seconds: r.ttl_seconds,
                bound: r.bound.clone(),
            })
            .collect(),
        deny: p
            .deny
            .iter()
            .map(|r| op::DenyRule {
                argv: r.argv.clone(),
                prefix: r.prefix,
            })
            .collect(),
        // A list of `{variable, hosts}`: the field name `variable` is aliased where names are
        // hidden (a map keyed by names would not be).
        bindings: p
            .bindings
            .iter()
            .map(|(k, v)| {
                let bound_in = p.bound_in_of(k);
                op::BoundVariable {
                    variable: k.clone(),
                    hosts: v.clone(),
                    url: bound_in.url,
                    body: bound_in.body,
                }
            })
            .collect(),
        egress_roots: p
            .egress_roots
            .as_ref()
            .map(|pem| pem.matches("-----BEGIN CERTIFICATE-----").count()),
        other,
    }
}

/// `factor_proof::card_digest` of a rule as `policy show` lists it.
fn rule_digest<T: serde::Serialize>(rule: &T) -> String {
    factor_proof::card_digest(&serde_json::to_value(rule).unwrap_or(Value::Null))
}

/// A rule is removed only if it is the one the human was shown (by digest), so a relay that
/// reorders the listing cannot make the human remove another rule.
fn check_rule_shown(actual: Option<String>, shown: &str, kind: &str, index: usize) -> OpResult<()> {
    match actual {
        None => Err(
            OpError::new(ErrorCode::NotFound, format!("no {kind} rule #{index}"))
                .hint("list the rules with `keyveil policy show ENV`"),
        ),
        Some(a) if a == shown => Ok(()),
        Some(_) => Err(OpError::new(
            ErrorCode::Denied,
            format!("{kind} rule #{index} is not the one you were shown; nothing was changed"),
        )
        .hint("list the rules again with `keyveil policy show ENV`")),
    }
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
            let cwd = crate::broker::cwd::canonical_cwd(&cwd)?;
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
        PolicyChange::Bind {
            variable,
            hosts,
            url,
            body,
        } => {
            if hosts.is_empty() {
                return Err(OpError::new(
                    ErrorCode::Usage,
                    format!("binding {variable} needs at least one host"),
                )
                .hint("e.g. `keyveil policy set ENV bind API_TOKEN api.example.com`"));
            }
            let mut shown = Vec::new();
            for h in &hosts {
                let d = crate::broker::egress::Dest::parse(h).map_err(|e| {
                    OpError::new(ErrorCode::Usage, e)
                        .hint("give host names such as api.example.com or localhost:8443")
                })?;
                if !shown.contains(&d.shown()) {
                    shown.push(d.shown());
                }
            }
            PolicyChange::Bind {
                variable,
                hosts: shown,
                url,
                body,
            }
        }
        PolicyChange::EgressRoots { pem: Some(pem) } => {
            use rustls_pki_types::pem::PemObject;
            let certs: Result<Vec<_>, _> =
                rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
            match certs {
                Ok(c) if !c.is_empty() => PolicyChange::EgressRoots { pem: Some(pem) },
                _ => {
                    return Err(OpError::new(
                        ErrorCode::Usage,
                        "no PEM certificate found in the egress roots",
                    )
                    .hint("give a file of -----BEGIN CERTIFICATE----- blocks, or `default`"));
                }
            }
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

/// What an auto-approve rule binds of a command's pins: canonical path → digest of the
/// executable and of every input.
pub(crate) fn bind(
    pins: &crate::broker::access::Pins,
) -> std::collections::BTreeMap<String, String> {
    pins.executable
        .iter()
        .map(|e| (e.path.clone(), e.sha256.clone()))
        .chain(
            pins.inputs
                .iter()
                .map(|i| (i.path.clone(), i.sha256.clone())),
        )
        .collect()
}

/// Whether a request's pins are all bound by a rule (same paths, same digests). A rule that
/// binds nothing (made before rules bound their inputs) covers no request.
pub(crate) fn rule_binds(rule: &AutoApproveRule, pins: &crate::broker::access::Pins) -> bool {
    !rule.bound.is_empty()
        && bind(pins)
            .iter()
            .all(|(path, digest)| rule.bound.get(path) == Some(digest))
}

/// Whether an auto-approve rule's argv covers an ask's argv: exact, or (with `prefix`) followed
/// only by the extras `prefix.rs` allows (positional arguments, the tool's safe options).
pub(crate) fn rule_matches(rule_argv: &[String], prefix: bool, argv: &[String]) -> bool {
    if prefix {
        crate::broker::prefix::allowlist_covers(rule_argv, argv)
    } else {
        rule_argv == argv
    }
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

    #[test]
    fn rules_bind_what_their_command_ran() {
        use crate::pin::{FilePin, InputPin};
        let pins = crate::broker::access::Pins {
            executable: Some(FilePin {
                path: "/usr/bin/git".into(),
                dev: 1,
                ino: 2,
                size: 3,
                mtime_ns: 4,
                ctime_ns: 5,
                sha256: "e".into(),
            }),
            inputs: vec![InputPin {
                role: "git-config".into(),
                path: "/p/.git/config".into(),
                sha256: "c".into(),
                detail: None,
            }],
            writable: false,
        };
        let mut rule = AutoApproveRule {
            argv: vec!["git".into(), "status".into()],
            prefix: false,
            cwd: "/p".into(),
            ttl_seconds: 60,
            bound: bind(&pins),
        };
        assert!(rule_binds(&rule, &pins));
        // A changed input, a new input, or a rule that binds nothing: not covered.
        let mut changed = pins.clone();
        changed.inputs[0].sha256 = "d".into();
        assert!(!rule_binds(&rule, &changed));
        let mut more = pins.clone();
        more.inputs.push(InputPin {
            role: "git-hooks".into(),
            path: "/p/.git/hooks/pre-commit".into(),
            sha256: "h".into(),
            detail: None,
        });
        assert!(!rule_binds(&rule, &more));
        rule.bound.clear();
        assert!(!rule_binds(&rule, &pins));
    }
}
