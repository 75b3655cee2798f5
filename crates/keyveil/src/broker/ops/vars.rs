//! Variable operations: `set` (plain or sealed under the factor key), `generate`, `unset`,
//! `declare`, and the vault write they share.

use super::lifecycle::vault_err;
use super::{check_name, usage};
use crate::broker::Broker;
use crate::broker::factor_ops;
use crate::broker::guard::{Need, guard_stored, recheck};
use crate::broker::state::{Inner, OpError, OpResult, unknown_env};
use crate::factor_proof;
use jiff::Timestamp;
use keyveil_proto::op;
use keyveil_proto::{Charset, ErrorCode, Passphrase};
use keyveil_vault::{Source, Variable, Vault};
use serde_json::json;
use std::sync::Arc;

/// Longest value `generate` makes (characters).
pub(super) const MAX_GENERATED: usize = 4096;

/// The real name a human's `set`/`generate`/`unset` names (an alias is understood), and why the
/// change needs the factor. Where names are hidden, a name that is not an alias always needs it,
/// whether or not a variable of that name exists, so a guess confirms nothing.
pub(super) fn target_of_change(broker: &Broker, env: &str, given: &str) -> (String, Need) {
    let inner = broker.lock();
    if inner.names().hides_names(env) && inner.names().real_name(env, given).is_none() {
        return (given.to_owned(), Need::HiddenName);
    }
    let name = inner.names().human_name(env, given);
    let stored = inner.names().stored_names(env, Some(&name));
    (name, Need::stored(stored))
}

/// The value of a `set`: plain (a first value, no factor) or sealed under the factor key.
pub(super) fn value_of_set(
    plain: Option<Passphrase>,
    sealed: Option<String>,
    verified: Option<&factor_ops::Verified>,
    aad: &[u8],
) -> OpResult<Passphrase> {
    match (plain, sealed, verified.and_then(|v| v.transit.as_ref())) {
        (Some(p), None, None) => Ok(p),
        (None, Some(s), Some((key, nonce))) => {
            let bytes = factor_proof::open_in_transit(key, nonce, aad, &s)
                .map_err(|e| usage(format!("the sealed value cannot be opened: {e}")))?;
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| usage("the value is not UTF-8"))?
                .to_owned();
            Ok(Passphrase::new(text))
        }
        (None, Some(_), None) => Err(usage(
            "a sealed value needs a factor proof from the keyveil CLI",
        )),
        (Some(_), _, Some(_)) => Err(usage(
            "with a factor, a value travels sealed (`sealed_value`), never in plain text",
        )),
        _ => Err(usage(
            "give the value (`value`) or, with a factor, `sealed_value`",
        )),
    }
}

pub(super) fn save(v: &mut Vault) -> OpResult<()> {
    v.save().map_err(save_err)
}

/// Persists one variable's change through the vault's journal (one small sealed append and its
/// sync, not a rewrite of the whole vault; see `Vault::save_variable`).
pub(super) fn save_variable(v: &mut Vault, env: &str, name: &str) -> OpResult<()> {
    v.save_variable(env, name).map_err(save_err)
}

pub(super) fn save_err(e: keyveil_vault::VaultError) -> OpError {
    {
        let hint = match e {
            keyveil_vault::VaultError::ChangedOnDisk { .. } => {
                "the vault file was replaced behind the broker's back; nothing was written. Run `keyveil lock` then `keyveil unlock` to reload it"
            }
            _ => "nothing was changed on disk; check free space and permissions of KEYVEIL_HOME",
        };
        OpError::new(ErrorCode::Failed, format!("cannot save the vault: {e}")).hint(hint)
    }
}

/// Stores (or declares) variable `name` of `env` and records `audit(existed)`'s entry; returns
/// whether the variable existed. The change goes to the vault's journal; its `fdatasync`
/// overlaps the audit entry's own sync, and the change is acknowledged (and kept in memory)
/// only once both are done.
#[allow(clippy::too_many_arguments)]
pub(super) fn store(
    inner: &mut Inner,
    env: &str,
    name: &str,
    value: Option<String>,
    source: Source,
    description: Option<String>,
    verified: bool,
    audit: impl FnOnce(bool) -> (&'static str, serde_json::Value),
) -> OpResult<bool> {
    check_name("variable", name)?;
    if let Some((message, hint)) = value
        .as_deref()
        .and_then(|v| keyveil_proto::env_string_too_long(name, v.len()))
    {
        return Err(OpError::new(ErrorCode::Usage, message).hint(hint));
    }
    if crate::loaders::is_injection_var(name) {
        // A vault variable is injected into granted children: one named BASH_ENV, LD_PRELOAD,
        // PATH, NODE_OPTIONS, ... would let whoever sets it (no factor is needed to set a value)
        // make an approved command run other code.
        return Err(OpError::new(
            ErrorCode::Denied,
            format!("refused: a variable named {name} would make granted commands load or run other code"),
        )
        .hint("choose another name; keyveil never injects code-loading variables into a granted process"));
    }
    let v = inner.vault_mut()?;
    let e = match v.data_mut().environments.get_mut(env) {
        Some(e) => e,
        None => return Err(unknown_env(env, v)),
    };
    let now = Timestamp::now();
    let existed = e.variables.contains_key(name);
    // Kept to undo the change in memory if the save fails: what the broker serves must be what
    // the vault file holds.
    let previous = e.variables.get(name).cloned();
    let sealed = value
        .map(|val| keyveil_vault::SealedValue::seal(keyveil_vault::SecretValue::new(val)))
        .transpose()
        .map_err(vault_err)?;
    match e.variables.get_mut(name) {
        Some(var) => {
            if let Some(val) = sealed {
                var.value = Some(val);
                var.rotated_at = Some(now);
                var.source = source;
                var.dynamic = None;
                var.stored = Some(keyveil_vault::StoreRecord {
                    at: now,
                    factor: verified,
                });
            }
            if let Some(d) = description {
                var.description = d;
            }
        }
        None => {
            e.variables.insert(
                name.to_owned(),
                Variable {
                    value: sealed,
                    description: description.unwrap_or_default(),
                    source,
                    created_at: now,
                    rotated_at: None,
                    dynamic: None,
                    stored: Some(keyveil_vault::StoreRecord {
                        at: now,
                        factor: verified,
                    }),
                },
            );
        }
    }
    let pending = match v.save_variable_unsynced(env, name).map_err(save_err) {
        Ok(p) => p,
        Err(err) => {
            put_back(v, env, name, previous);
            return Err(err);
        }
    };
    let (event, fields) = audit(existed);
    let Some(pending) = pending else {
        // A full save (already durable).
        inner.audit(event, fields);
        return Ok(existed);
    };
    let synced = std::thread::scope(|s| {
        let sync = s.spawn(|| pending.sync().map_err(|e| e.to_string()));
        inner.audit(event, fields);
        sync.join()
            .unwrap_or_else(|_| Err("the journal's sync thread panicked".to_owned()))
    });
    if let Err(why) = synced {
        if let Ok(v) = inner.vault_mut() {
            v.undo_append(pending);
            put_back(v, env, name, previous);
        }
        inner.audit(
            "store_failed",
            json!({"environment": env, "variable": name, "event": event}),
        );
        return Err(OpError::new(
            ErrorCode::Failed,
            format!("cannot save the vault: {why}; the change was undone"),
        )
        .hint("nothing was changed; check free space and the disk of KEYVEIL_HOME, then retry"));
    }
    Ok(existed)
}

/// Puts a variable back as it was before a change that could not be saved: what the broker
/// serves must be what the vault file holds.
pub(super) fn put_back(v: &mut Vault, env: &str, name: &str, previous: Option<Variable>) {
    if let Some(e) = v.data_mut().environments.get_mut(env) {
        match previous {
            Some(p) => {
                e.variables.insert(name.to_owned(), p);
            }
            None => {
                e.variables.remove(name);
            }
        }
    }
}

pub(super) fn var_set(
    broker: &Broker,
    env: &str,
    name: &str,
    value: Passphrase,
    verified: bool,
) -> OpResult<op::VarStored> {
    if value.expose().is_empty() {
        return Err(usage("the value is empty; nothing was stored"));
    }
    if value.expose().contains('\0') {
        return Err(usage(
            "the value contains a NUL byte, which an environment variable cannot hold; nothing was stored",
        ));
    }
    let short = value.expose().len() < 8;
    let mut inner = broker.lock();
    recheck(&inner, env, Some(name), verified)?;
    inner.audit_log_mut().ready("var_set")?;
    let existed = store(
        &mut inner,
        env,
        name,
        Some(value.expose().to_owned()),
        Source::Human,
        None,
        verified,
        |existed| {
            (
                "var_set",
                json!({"environment": env, "variable": name, "replaced": existed}),
            )
        },
    )?;
    Ok(op::VarStored {
        environment: env.to_owned(),
        name: name.to_owned(),
        status: op::VarStatus::Set,
        replaced: existed,
        short_value: short,
    })
}

pub(super) fn var_generate(
    broker: &Broker,
    env: &str,
    name: &str,
    length: usize,
    charset: Charset,
    description: Option<String>,
    verified: bool,
) -> OpResult<op::VarChanged> {
    if !(8..=MAX_GENERATED).contains(&length) {
        return Err(usage(format!(
            "length must be between 8 and {MAX_GENERATED} characters"
        )));
    }
    let value = generate(length, charset)?;
    let mut inner = broker.lock();
    recheck(&inner, env, Some(name), verified)?;
    inner.audit_log_mut().ready("var_generate")?;
    store(
        &mut inner,
        env,
        name,
        Some(value),
        Source::Generated,
        description,
        verified,
        |existed| {
            (
                "var_generate",
                json!({"environment": env, "variable": name, "length": length, "replaced": existed}),
            )
        },
    )?;
    Ok(op::VarChanged {
        environment: env.to_owned(),
        name: name.to_owned(),
        status: op::VarStatus::Set,
    })
}

/// A uniformly random string over the charset (rejection sampling, no modulo bias).
pub(crate) fn generate(length: usize, charset: Charset) -> OpResult<String> {
    let alphabet: Vec<u8> = match charset {
        Charset::Alnum => (b'A'..=b'Z')
            .chain(b'a'..=b'z')
            .chain(b'0'..=b'9')
            .collect(),
        Charset::Hex => (b'0'..=b'9').chain(b'a'..=b'f').collect(),
        Charset::Base64url => (b'A'..=b'Z')
            .chain(b'a'..=b'z')
            .chain(b'0'..=b'9')
            .chain([b'-', b'_'])
            .collect(),
        Charset::Ascii => (b'!'..=b'~').collect(),
    };
    let n = alphabet.len();
    let limit = 256 - (256 % n);
    let mut out = String::with_capacity(length);
    let mut buf = [0u8; 64];
    while out.len() < length {
        getrandom::fill(&mut buf).map_err(|e| {
            OpError::new(
                ErrorCode::Failed,
                format!("the OS random source failed: {e}"),
            )
        })?;
        for &b in &buf {
            if usize::from(b) < limit
                && out.len() < length
                && let Some(&c) = alphabet.get(usize::from(b) % n)
            {
                out.push(char::from(c));
            }
        }
    }
    Ok(out)
}

pub(super) fn var_unset(
    broker: &Broker,
    env: &str,
    name: &str,
    verified: bool,
) -> OpResult<op::VarChanged> {
    let mut inner = broker.lock();
    recheck(&inner, env, Some(name), verified)?;
    inner.audit_log_mut().ready("var_unset")?;
    // The name as clients see it, taken while the variable still exists (after the removal
    // the alias rewriting no longer knows it).
    let shown = inner.names().shown_name(env, name);
    let v = inner.vault_mut()?;
    let e = match v.data_mut().environments.get_mut(env) {
        Some(e) => e,
        None => return Err(unknown_env(env, v)),
    };
    if e.variables.remove(name).is_none() {
        return Err(OpError::new(
            ErrorCode::NotFound,
            format!("environment '{env}' has no variable '{name}'"),
        ));
    }
    // Its compromise mark goes too: the mark keeps the value a sweep found
    // (`keyveil_vault::Compromise::value`), and a removed value is not kept. The journal holds
    // variables only, so that takes a full save.
    if v.data_mut()
        .compromised
        .remove(&format!("{env}/{name}"))
        .is_some()
    {
        save(v)?;
    } else {
        save_variable(v, env, name)?;
    }
    inner.audit("var_unset", json!({"environment": env, "variable": shown}));
    Ok(op::VarChanged {
        environment: env.to_owned(),
        name: shown,
        status: op::VarStatus::Unset,
    })
}

pub(super) fn var_declare(
    broker: &Broker,
    env: &str,
    name: &str,
    description: Option<String>,
    generate_now: bool,
    length: Option<usize>,
) -> OpResult<op::Declared> {
    check_name("variable", name)?;
    // Where names are hidden, only an alias names a variable; any other name gets one answer,
    // whether or not it exists (a guess confirms nothing).
    let aliased = {
        let inner = broker.lock();
        if inner.names().hides_names(env) {
            match inner.names().real_name(env, name) {
                Some(real) => Some(real),
                None => {
                    return Err(OpError::new(
                        ErrorCode::Denied,
                        format!("names in '{env}' are hidden: variables are added there by the user, not declared by an agent"),
                    )
                    .hint(format!(
                        "ask the user to add it with `keyveil set {env} NAME` in their own terminal (it asks for their factor)"
                    )));
                }
            }
        } else {
            None
        }
    };
    let name = aliased.as_deref().unwrap_or(name);
    {
        let inner = broker.lock();
        let v = inner.vault()?;
        let e = v
            .data()
            .environments
            .get(env)
            .ok_or_else(|| unknown_env(env, v))?;
        if let Some(var) = e.variables.get(name)
            && (var.value.is_some() || var.dynamic.is_some())
        {
            // Declaring never overwrites: an agent must not be able to replace a value.
            return Ok(op::Declared {
                status: op::VarStatus::Set,
                hint: Some(
                    "the variable already has a value; declaring again changes nothing".to_owned(),
                ),
            });
        }
    }
    if generate_now {
        var_generate(
            broker,
            env,
            name,
            length.unwrap_or(32),
            Charset::Alnum,
            description,
            false,
        )?;
        return Ok(op::Declared {
            status: op::VarStatus::Set,
            hint: None,
        });
    }
    let mut inner = broker.lock();
    // Never over a value stored since the check above.
    recheck(&inner, env, Some(name), false)?;
    inner.audit_log_mut().ready("var_declare")?;
    store(
        &mut inner,
        env,
        name,
        None,
        Source::Human,
        description,
        false,
        |_| ("var_declare", json!({"environment": env, "variable": name})),
    )?;
    Ok(op::Declared {
        status: op::VarStatus::AwaitingValue,
        hint: Some(format!(
            "ask the user to run `keyveil set {env} {name}` in their own terminal; never ask them to paste the value into the chat"
        )),
    })
}

/// The factor proof's digest of the request that carried it (`factor_proof::request_digest`).
type Digest = Option<[u8; crate::factor_proof::LEN]>;

/// `var_set` as a request: a value-free probe, a plain first value, or a value sealed under
/// the factor key, after [`guard_stored`] (the factor where the change needs it).
pub(super) async fn set_request(
    broker: &Arc<Broker>,
    o: op::VarSet,
    digest: Digest,
) -> OpResult<op::VarSetReply> {
    let op::VarSet {
        environment,
        name,
        value,
        sealed_value,
        factor,
    } = o;
    // The associated data of a sealed value is the name as the CLI gave it.
    let aad = format!("{environment}/{name}");
    let (given, need) = target_of_change(broker, &environment, &name);
    let probe = value.is_none() && sealed_value.is_none() && factor.is_none();
    let verified = guard_stored(broker, &environment, need, factor, digest).await?;
    if probe {
        // A value-free probe: nothing to store, and no factor needed.
        return Ok(op::VarSetReply::Probe {
            probe: true,
            needs_factor: false,
        });
    }
    let value = value_of_set(value, sealed_value, verified.as_ref(), aad.as_bytes())?;
    var_set(broker, &environment, &given, value, verified.is_some()).map(op::VarSetReply::Stored)
}

/// `var_generate` as a request, after [`guard_stored`].
pub(super) async fn generate_request(
    broker: &Arc<Broker>,
    o: op::VarGenerate,
    digest: Digest,
) -> OpResult<op::VarChanged> {
    let op::VarGenerate {
        environment,
        name,
        length,
        charset,
        factor,
    } = o;
    let (name, need) = target_of_change(broker, &environment, &name);
    let verified = guard_stored(broker, &environment, need, factor, digest).await?;
    var_generate(
        broker,
        &environment,
        &name,
        length,
        charset,
        None,
        verified.is_some(),
    )
}

/// `var_unset` as a request, after [`guard_stored`].
pub(super) async fn unset_request(
    broker: &Arc<Broker>,
    o: op::VarUnset,
    digest: Digest,
) -> OpResult<op::VarChanged> {
    let op::VarUnset {
        environment,
        name,
        factor,
    } = o;
    let (name, need) = target_of_change(broker, &environment, &name);
    let verified = guard_stored(broker, &environment, need, factor, digest).await?;
    var_unset(broker, &environment, &name, verified.is_some())
}
