//! Values the requester could have chosen (pass-through values, variables stored without the
//! factor, variables read from an OpenBao KV secret linked without it): found at request time,
//! shown on the card, bound into the grant and checked at a run.

use super::*;

/// The values of a request the requester could have chosen: its pass-through values, the
/// requested variables whose value was stored (as typed, not generated) by a call that proved no
/// factor, and those read from a KV secret linked without it (fetched before, in
/// [`Ask::linked`]). Values stored with the factor are never read here.
pub(super) fn chosen_values(inner: &Inner, ask: &Ask) -> OpResult<Vec<ChosenValue>> {
    let mut out: Vec<ChosenValue> = ask
        .pass_values
        .iter()
        .map(|(n, v)| ChosenValue {
            name: Some(n.clone()),
            // A mount's reader passes nothing: these are its own environment (`broker/mounts/`).
            origin: if ask.mount.is_some() {
                "reader-env"
            } else {
                "pass-env"
            },
            ..ChosenValue::of(v.as_deref())
        })
        .collect();
    // A locked broker refuses the request a little later; nothing to show then.
    let Ok(vault) = inner.vault() else {
        return Ok(out);
    };
    let Some(e) = vault.data().environments.get(&ask.environment) else {
        return Ok(out);
    };
    for n in &ask.variables {
        let Some(var) = e.variables.get(n) else {
            continue;
        };
        if let Some(at) = agent_chosen(var) {
            let Some(sealed) = var.value.as_ref() else {
                continue;
            };
            let open = sealed.open().map_err(|e| {
                OpError::new(
                    ErrorCode::Failed,
                    format!("cannot read a stored value: {e}"),
                )
            })?;
            out.push(ChosenValue {
                origin: "stored-without-factor",
                variable: Some(n.clone()),
                stored_at: Some(at),
                ..ChosenValue::of(Some(open.expose()))
            });
        }
    }
    // Fetched outside the lock; only for variables still linked without the factor.
    out.extend(
        ask.linked
            .iter()
            .filter(|c| {
                c.variable.as_ref().is_some_and(|n| {
                    ask.variables.contains(n) && e.variables.get(n).and_then(agent_linked).is_some()
                })
            })
            .cloned(),
    );
    Ok(out)
}

/// When `var` is read from an OpenBao KV secret whose source (server, path, login) was linked
/// by a call that proved no factor: its server may be the agent's, so its values are the
/// agent's to choose. `None` for every other variable.
pub(crate) fn agent_linked(var: &keyveil_vault::Variable) -> Option<Timestamp> {
    match (var.stored, &var.dynamic) {
        (Some(r), Some(d)) if !r.factor && d.engine == "openbao-kv" => Some(r.at),
        _ => None,
    }
}

/// What a value the grant bound is, in words, for the message that ends the grant.
fn chosen_kind(var: &keyveil_vault::Variable) -> Option<&'static str> {
    if agent_chosen(var).is_some() {
        Some("a value stored without the factor")
    } else if agent_linked(var).is_some() {
        Some("a value read from an OpenBao KV secret linked without the factor")
    } else {
        None
    }
}

/// One value a grant bound by digest, as a run checks it ([`chosen_expected`]).
#[derive(Debug)]
pub(crate) struct Expected {
    /// The variable's name in the vault.
    name: String,
    /// The keyed digest (hex, `state::value_digest`) bound at approval; `None`: none bound, so no value may be injected.
    want: Option<String>,
    /// The name as clients see it (an alias where names are hidden).
    shown: String,
    /// What the value is, in words.
    kind: &'static str,
}

/// Checks the pass-through values a grant bound by digest against a run. `Err` says, in
/// words, which value changed since the approval. Cheap (the run's own values, already in the
/// request): the stored values the agent could have chosen are checked by [`chosen_expected`]
/// and [`check_chosen_values`] on the very copies the run injects, outside the broker's lock.
pub(crate) fn check_chosen(inner: &Inner, gid: &str, ask: &Ask) -> Result<(), String> {
    let Some(g) = inner.grants().get(gid) else {
        return Ok(());
    };
    for (n, v) in &ask.pass_values {
        let now = v
            .as_deref()
            .map(|v| crate::broker::state::value_digest(v.as_bytes()));
        if g.pass_values().get(n).cloned().unwrap_or(None) != now {
            return Err(format!(
                "the pass-through value of {} is not the one approved (changed since approval)",
                keyveil_proto::display::visible(n)
            ));
        }
    }
    Ok(())
}

/// For the variables among `names` (of grant `gid`'s environment) whose value the agent could
/// have chosen (stored without the factor, or read from a KV secret linked without it), the
/// keyed digest (hex) the grant bound at approval (`None`: none bound, so no value may be
/// injected), with the name as clients see it. Taken under the lock with the sealed copies the
/// run will inject; nothing is opened here.
pub(crate) fn chosen_expected(inner: &Inner, gid: &str, names: &[String]) -> Vec<Expected> {
    let Some(g) = inner.grants().get(gid) else {
        return Vec::new();
    };
    let Ok(vault) = inner.vault() else {
        return Vec::new();
    };
    let Some(e) = vault.data().environments.get(g.environment()) else {
        return Vec::new();
    };
    names
        .iter()
        .filter_map(|n| Some((n, e.variables.get(n).and_then(chosen_kind)?)))
        .map(|(n, kind)| Expected {
            name: n.clone(),
            want: g.chosen_vars().get(n).cloned(),
            shown: inner.names().shown_name(g.environment(), n),
            kind,
        })
        .collect()
}

/// Compares the opened values a run is about to inject with the digests [`chosen_expected`]
/// gave. Outside the lock: opening and hashing thousands of values must not stall the broker.
/// `Err` says which variable holds a value that is not the one approved.
pub(crate) fn check_chosen_values(
    expected: &[Expected],
    values: &[(String, keyveil_vault::SecretValue)],
) -> Result<(), String> {
    // By name: with thousands of values a scan per expected name would be quadratic.
    let by_name: std::collections::HashMap<&str, &keyveil_vault::SecretValue> =
        values.iter().map(|(k, v)| (k.as_str(), v)).collect();
    for x in expected {
        let now = by_name
            .get(x.name.as_str())
            .map(|v| crate::broker::state::value_digest(v.expose().as_bytes()));
        if now.is_none() || x.want.as_ref() != now.as_ref() {
            return Err(format!(
                "{} holds {} that is not the one approved (changed since approval)",
                x.shown, x.kind
            ));
        }
    }
    Ok(())
}
