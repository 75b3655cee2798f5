//! Environment operations: list, show, create, remove, and revealing hidden names for the factor.

use super::audit::source_name;
use super::check_env_name;
use super::vars::save;
use crate::broker::Broker;
use crate::broker::factor_ops::{self, Proof};
use crate::broker::guard::{Need, guard_stored, recheck};
use crate::broker::state::{Inner, OpError, OpResult, unknown_env};
use crate::factor_proof;
use jiff::Timestamp;
use keyveil_proto::ErrorCode;
use keyveil_proto::op;
use keyveil_vault::Environment;
use serde_json::{Value, json};
use std::sync::Arc;

pub(super) fn env_list(broker: &Broker) -> OpResult<op::Environments> {
    let inner = broker.lock();
    let v = inner.vault()?;
    let environments = v
        .data()
        .environments
        .iter()
        .map(|(name, e)| op::EnvSummary {
            name: name.clone(),
            description: e.description.clone(),
            variables: sorted_shown(&inner, name, e),
        })
        .collect();
    Ok(op::Environments { environments })
}

/// The aliases of an environment's variables with the real names behind them, for a caller
/// who presents the factor (passphrase or TOTP; `confirm` is not enough). Audited.
pub(super) async fn env_reveal(
    broker: &Arc<Broker>,
    env: &str,
    proof: Proof,
) -> OpResult<op::EnvRevealed> {
    {
        let inner = broker.lock();
        let v = inner.vault()?;
        if !v.data().environments.contains_key(env) {
            return Err(unknown_env(env, v));
        }
    }
    let required = factor_ops::rule_change_factor(broker, env);
    let verified =
        factor_ops::verify_factor(broker, proof, required, json!({"env_reveal": env})).await?;
    let mut inner = broker.lock();
    inner.audit_log_mut().ready("env_reveal")?;
    let v = inner.vault()?;
    let e = v
        .data()
        .environments
        .get(env)
        .ok_or_else(|| unknown_env(env, v))?;
    let hidden = e.policy.hide_names;
    let names: Vec<op::RevealedName> = e
        .variables
        .iter()
        .map(|(n, var)| op::RevealedName {
            alias: v.name_alias(env, n),
            real_name: n.clone(),
            description: var.description.clone(),
        })
        .collect();
    // The audit entry names the environment only (the names are what is being protected).
    inner.audit(
        "env_reveal",
        json!({"environment": env, "count": names.len()}),
    );
    // The names travel sealed for the CLI that proved the factor: a relay at the socket reads
    // nothing (the approval page, which has no transit key, gets them in the page over its own
    // loopback connection).
    match verified.transit {
        Some((key, nonce)) => {
            let plain = serde_json::to_vec(&names).unwrap_or_default();
            let sealed = factor_proof::seal_in_transit(&key, &nonce, b"env_reveal", &plain)
                .map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))?;
            Ok(op::EnvRevealed {
                environment: env.to_owned(),
                hide_names: hidden,
                sealed_names: Some(sealed),
                names: None,
            })
        }
        None => Ok(op::EnvRevealed {
            environment: env.to_owned(),
            hide_names: hidden,
            sealed_names: None,
            names: Some(names),
        }),
    }
}

/// An environment's variable names as clients see them, sorted as shown: where names are
/// hidden, the order of the real names would betray them.
pub(super) fn sorted_shown(inner: &Inner, env: &str, e: &Environment) -> Vec<String> {
    let mut shown: Vec<String> = e
        .variables
        .keys()
        .map(|n| inner.names().shown_name(env, n))
        .collect();
    shown.sort();
    shown
}

pub(super) fn env_show(broker: &Broker, name: &str) -> OpResult<op::EnvDetail> {
    let inner = broker.lock();
    let v = inner.vault()?;
    let e = v
        .data()
        .environments
        .get(name)
        .ok_or_else(|| unknown_env(name, v))?;
    // A description can say what a hidden name would ("Stripe live key").
    let hidden = e.policy.hide_names;
    let mut variables: Vec<op::VariableInfo> = e
        .variables
        .iter()
        .map(|(n, var)| op::VariableInfo {
            name: inner.names().shown_name(name, n),
            description: if hidden {
                String::new()
            } else {
                var.description.clone()
            },
            source: source_name(var.source),
            set: var.value.is_some() || var.dynamic.is_some(),
            created_at: var.created_at,
            rotated_at: var.rotated_at,
            compromised: crate::broker::sweep_ops::mark(&inner, name, n),
            kv_version: None,
            stored_by_factor: var.stored.as_ref().map(|s| s.factor),
            stored_at: var.stored.as_ref().map(|s| s.at),
            engine: var.dynamic.as_ref().map(|d| d.engine.clone()),
        })
        .collect();
    // Sorted as shown (where names are hidden, the real names' order would betray them).
    variables.sort_by(|a, b| a.name.cmp(&b.name));
    let policy = match serde_json::to_value(&e.policy) {
        Ok(Value::Object(map)) => map,
        _ => {
            return Err(OpError::new(
                ErrorCode::Failed,
                "cannot encode the environment's policy",
            ));
        }
    };
    Ok(op::EnvDetail {
        name: name.to_owned(),
        description: e.description.clone(),
        variables,
        policy,
    })
}

/// [`env_show`], plus (with `versions`) the KV v2 version of each variable linked to an
/// OpenBao KV path: one request per (node list, namespace, mount, path), with the variable's
/// own login; a path OpenBao does not answer for shows no version (the broker log says why).
pub(super) async fn env_show_versions(
    broker: &Broker,
    name: &str,
    versions: bool,
) -> OpResult<op::EnvDetail> {
    #[cfg_attr(not(feature = "openbao"), allow(unused_mut))]
    let mut d = env_show(broker, name)?;
    if !versions {
        return Ok(d);
    }
    #[cfg(feature = "openbao")]
    {
        use crate::dynamic::{DynamicSpec, EngineKind};
        let (linked, logins) = {
            let inner = broker.lock();
            let v = inner.vault()?;
            let mut linked = Vec::new();
            if let Some(e) = v.data().environments.get(name) {
                for (n, var) in &e.variables {
                    if let Some(spec) = var
                        .dynamic
                        .as_ref()
                        .and_then(|src| {
                            DynamicSpec::from_source(src, e.policy.insecure_loopback).ok()
                        })
                        .filter(|s| s.engine == EngineKind::OpenbaoKv)
                    {
                        linked.push((inner.names().shown_name(name, n), spec));
                    }
                }
            }
            (linked, inner.dynamic().logins())
        };
        let mut seen: std::collections::HashMap<String, Option<u64>> = Default::default();
        for (shown, spec) in linked {
            let key = format!(
                "{}\0{}\0{}",
                spec.shown_target(),
                spec.opt("namespace").unwrap_or(""),
                spec.opt("auth").unwrap_or("")
            );
            let version = match seen.get(&key) {
                Some(v) => *v,
                None => {
                    let v = match crate::dynamic::openbao::kv_version(&spec, &logins).await {
                        Ok(v) => Some(v),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read a KV version for env show");
                            None
                        }
                    };
                    seen.insert(key, v);
                    v
                }
            };
            if let Some(info) = d.variables.iter_mut().find(|i| i.name == shown) {
                info.kv_version = version;
            }
        }
    }
    Ok(d)
}

pub(super) fn env_create(
    broker: &Broker,
    name: &str,
    description: String,
) -> OpResult<op::EnvCreated> {
    check_env_name(name)?;
    let mut inner = broker.lock();
    inner.audit_log_mut().ready("env_create")?;
    let v = inner.vault_mut()?;
    if v.data().environments.contains_key(name) {
        return Err(OpError::new(
            ErrorCode::Failed,
            format!("environment '{name}' already exists"),
        ));
    }
    v.data_mut().environments.insert(
        name.to_owned(),
        Environment {
            description,
            variables: Default::default(),
            policy: Default::default(),
            created_at: Timestamp::now(),
        },
    );
    save(v)?;
    inner.audit("env_create", json!({"environment": name}));
    Ok(op::EnvCreated {
        name: name.to_owned(),
    })
}

pub(super) fn env_remove(broker: &Broker, name: &str, verified: bool) -> OpResult<op::EnvRemoved> {
    let mut inner = broker.lock();
    recheck(&inner, name, None, verified)?;
    inner.audit_log_mut().ready("env_remove")?;
    let v = inner.vault_mut()?;
    if v.data_mut().environments.remove(name).is_none() {
        return Err(unknown_env(name, v));
    }
    // The compromise marks of its variables go too: a mark keeps the value a sweep found
    // (`keyveil_vault::Compromise::value`), and a removed value is not kept.
    let prefix = format!("{name}/");
    v.data_mut()
        .compromised
        .retain(|id, _| !id.starts_with(&prefix));
    save(v)?;
    // Grants on a removed environment die with it.
    let ids: Vec<String> = inner
        .grants()
        .iter()
        .filter(|g| g.environment() == name)
        .map(|g| g.id().to_owned())
        .collect();
    for id in ids {
        inner.revoke(&id, "environment removed");
    }
    inner.audit("env_remove", json!({"environment": name}));
    Ok(op::EnvRemoved {
        removed: name.to_owned(),
    })
}

/// `env_remove` as a request, after [`guard_stored`] (the factor where values are stored).
pub(super) async fn remove_request(
    broker: &Arc<Broker>,
    o: op::EnvRemove,
    digest: Option<[u8; crate::factor_proof::LEN]>,
) -> OpResult<op::EnvRemoved> {
    let op::EnvRemove { name, factor } = o;
    let stored = broker.lock().names().stored_names(&name, None);
    let verified = guard_stored(broker, &name, Need::stored(stored), factor, digest).await?;
    env_remove(broker, &name, verified.is_some())
}
