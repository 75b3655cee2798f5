//! A value keyveil made at random, found in the strings of a request whose requester holds no
//! values (`value-outside-custody`).
//!
//! Such strings are masked of the values keyveil made at random (`card_redact.rs`: an ask a
//! daemon outside every run makes for a granted child holds one), and that masking answers
//! whoever wrote the strings: with all but a few characters of a value known from a partial
//! leak, an ask of its own listing the candidates singles out the right one. The broker keeps
//! the masking and makes such a match loud instead (`docs/threat-model.md`, "Cards"): the card
//! carries the flag on every surface, the audit gets an entry naming the variables (never a
//! value), and the variable is marked compromised in the vault (kind [`REQUEST_STRINGS`]), which
//! `keyveil status` lists and later cards flag until the value is rotated. Whoever wrote those
//! strings holds the value, or all but a guess of it.

use super::*;

/// The risk flag of a request whose own strings hold a value keyveil made at random.
pub(crate) const FLAG: &str = "value-outside-custody";

/// The kind of place a compromise mark names for a value found in a request's own strings.
pub(crate) const REQUEST_STRINGS: &str = "request-strings";

/// The names (as cards show them) of the values keyveil made at random found in the strings
/// of `req`, and those strings; nothing when its requester may hold values (a granted child's
/// strings may hold values by design: they are masked of every value, and say nothing of who
/// holds them) or while the vault is locked.
pub(super) fn found(inner: &mut Inner, req: &AccessReq) -> (Vec<String>, Vec<String>) {
    if req.masked() {
        return (Vec::new(), Vec::new());
    }
    let Some(made) = inner.card_matcher(false) else {
        return (Vec::new(), Vec::new());
    };
    let mut strings = Vec::new();
    if let Ok(v) = serde_json::to_value(super::cards::card_of(req, Vec::new())) {
        strings_of(&v, &mut strings);
    }
    let mut names: Vec<String> = strings
        .iter()
        .flat_map(|s| made.names_in(s.as_bytes()))
        .collect();
    names.sort();
    names.dedup();
    (names, strings)
}

/// Every string of `v`, object keys included.
fn strings_of(v: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings_of(x, out)),
        Value::Object(o) => {
            for (k, x) in o {
                out.push(k.clone());
                strings_of(x, out);
            }
        }
        _ => {}
    }
}

/// Records values keyveil made at random (`names`, as cards show them) found in the strings
/// (`strings`) of request `id`: an audit entry naming the variables, and a compromise mark in
/// the vault for each stored variable whose current value is among them (unless one is live
/// already), which `keyveil status` lists until the value is rotated. A minted credential is
/// named in the audit only (it ends with its lease).
pub(super) fn record(inner: &mut Inner, id: u64, names: &[String], strings: &[String]) {
    let marked = mark(inner, names, strings);
    inner.audit_note_as(
        "value_outside_custody",
        json!({
            "request_id": id,
            "variables": names,
            "marked_compromised": marked,
            "hint": "whoever wrote this request's strings holds these values: rotate them (`keyveil generate ENV NAME` or `keyveil set ENV NAME`)",
        }),
        false,
    );
}

/// Marks compromised each stored variable made at random whose shown name is among `names`
/// and whose value one of `strings` holds; the variables marked (`ENV/NAME` as shown).
fn mark(inner: &mut Inner, names: &[String], strings: &[String]) -> Vec<String> {
    // (environment, real name, shown name, live mark already there, the mark to add).
    type Found = (String, String, String, bool, keyveil_vault::Compromise);
    let found: Vec<Found> = {
        let Ok(vault) = inner.vault() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (env, e) in &vault.data().environments {
            for (real, var) in &e.variables {
                let shown = inner.names().shown_name(env, real);
                if !names.contains(&shown)
                    || !crate::broker::card_redact::made_at_random(var.source, false)
                {
                    continue;
                }
                let live = crate::broker::sweep_ops::mark(inner, env, real).is_some();
                let Some(sealed) = &var.value else { continue };
                let Ok(open) = sealed.open() else { continue };
                let v = open.expose();
                if v.is_empty() || !strings.iter().any(|s| s.contains(v)) {
                    continue;
                }
                out.push((
                    env.clone(),
                    real.clone(),
                    shown,
                    live,
                    keyveil_vault::Compromise {
                        found_at: Timestamp::now(),
                        kinds: vec![REQUEST_STRINGS.to_owned()],
                        copies: 1,
                        value: Some(sealed.clone()),
                        value_by_factor: var.stored.as_ref().is_some_and(|s| s.factor),
                    },
                ));
            }
        }
        out
    };
    if found.is_empty() {
        return Vec::new();
    }
    let Ok(v) = inner.vault_mut() else {
        return Vec::new();
    };
    let mut marked = Vec::new();
    for (env, real, shown, live, m) in found {
        let id = format!("{env}/{real}");
        match v.data_mut().compromised.get_mut(&id) {
            // A live mark (a sweep's): it names this kind of place too.
            Some(old) if live => {
                if !old.kinds.iter().any(|k| k == REQUEST_STRINGS) {
                    old.kinds.push(REQUEST_STRINGS.to_owned());
                    old.kinds.sort();
                }
            }
            _ => {
                v.data_mut().compromised.insert(id, m);
            }
        }
        marked.push(format!("{env}/{shown}"));
    }
    // A mark that cannot be saved still stands for the broker's life (the audit says which).
    if let Err(e) = v.save() {
        tracing::warn!("cannot save a compromise mark in the vault: {e}");
    }
    marked
}

/// The variables marked compromised because a value keyveil made at random was found in a
/// request's own strings, and not rotated since: `keyveil status` lists them (empty while the
/// vault is locked).
pub(crate) fn outside_custody(inner: &Inner) -> Vec<op::OutsideCustody> {
    let Ok(vault) = inner.vault() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (id, m) in &vault.data().compromised {
        if !m.kinds.iter().any(|k| k == REQUEST_STRINGS) {
            continue;
        }
        let Some((env, real)) = id.split_once('/') else {
            continue;
        };
        if let Some(live) = crate::broker::sweep_ops::mark(inner, env, real) {
            out.push(op::OutsideCustody {
                environment: env.to_owned(),
                variable: inner.names().shown_name(env, real),
                found_at: live.found_at,
            });
        }
    }
    out
}
