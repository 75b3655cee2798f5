//! Cards never carry a stored value.
//!
//! What a request card shows of a process (a run's argv and cwd, a mount reader's argv, its
//! code-loading environment, the requester's pass-through values, its parents) can come from a
//! granted child, which holds values: `sh -c 'tool --password "$DB_PASSWORD"'` where `tool` reads
//! a mounted `.env`, or asks `keyveil run` itself. The agent reads cards and the audit log
//! without any factor, so the broker redacts them with a redactor of the values that are secret
//! from the agent before they leave it: a card's strings, a grant listing's argv, cwd and pinned
//! paths, every audit entry (`Inner::scrub_entry`), and the desktop notification's text (the
//! notifier's command line is readable in `/proc`).
//!
//! Which values, and why not all: requester-supplied strings that a matcher marks are an oracle
//! (plant a guess in an argv, read whether the card masks it). So only values no agent can
//! guess are matched ([`super::sweep_ops::guessable`]: 16 bytes or more and about 80 bits or
//! more; the redactor's fragments of such a value are 12 bytes of it), and never a value the
//! agent may have chosen itself (stored without the factor: shown on cards by design,
//! `access::chosen_values`). A guessable value a granted child puts on a command line can still
//! reach a card: `docs/threat-model.md` says so.
//! The check is of the whole value only: its 12-byte fragments (a value with a known part
//! longer than 11 bytes, read one character per request) and its structured leaves (a short
//! JSON `password`) still answer planted guesses (`tests/it/redteam_s8b.rs`, ignored `LEAK`
//! tests; the threat model's honest limits).
//!
//! The redactor is cached in [`Inner`] under a digest of which secret values exist (names,
//! creation, rotation and storing times, held dynamic credentials), built again only after one
//! of them changes, and dropped with the vault at `lock`.

use std::sync::Arc;

use serde_json::Value;
use sha2::Digest as _;
use zeroize::Zeroizing;

use super::state::Inner;
use crate::redact::Redactor;

/// The cached redactor and the digest of the secret values it was built from.
pub(crate) struct CardRedactor {
    key: [u8; 32],
    redactor: Arc<Redactor>,
}

impl std::fmt::Debug for CardRedactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardRedactor").finish_non_exhaustive()
    }
}

/// A secret value for the card redactor: what the marker names (`ENV/SHOWN`) and the bytes.
type Secret = (String, Zeroizing<Vec<u8>>);

impl Inner {
    /// The redactor of every value that is secret from the agent, built when the set of such
    /// values changed since the last call; `None` while the vault is locked.
    pub(crate) fn card_redactor(&mut self) -> Option<Arc<Redactor>> {
        let key = self.secrets_key()?;
        if let Some(c) = &self.card_redactor
            && c.key == key
        {
            return Some(c.redactor.clone());
        }
        let secrets = self.card_secrets();
        let redactor = Arc::new(Redactor::new(
            secrets.iter().map(|(k, v)| (k.clone(), v.as_slice())),
        ));
        self.card_redactor = Some(CardRedactor {
            key,
            redactor: redactor.clone(),
        });
        Some(redactor)
    }

    /// A digest of which secret values exist: environment, name, creation, rotation and storing
    /// times of every variable with a value, and the held dynamic credentials by grant. No value
    /// is opened; a value the agent stored changes nothing.
    fn secrets_key(&self) -> Option<[u8; 32]> {
        let v = self.vault.as_ref()?;
        let mut h = sha2::Sha256::new();
        for (env, e) in &v.data().environments {
            for (name, var) in &e.variables {
                if !is_secret(var) {
                    continue;
                }
                let line = format!(
                    "{env}\0{name}\0{}\0{:?}\0{:?}\0{}\n",
                    var.created_at, var.rotated_at, var.stored, e.policy.hide_names
                );
                h.update(line.as_bytes());
            }
        }
        for (grant, var, _) in self.dynamic.held_values() {
            h.update(format!("minted\0{grant}\0{var}\n").as_bytes());
        }
        Some(h.finalize().into())
    }

    /// The secret values (see the module's documentation), named as clients see them.
    fn card_secrets(&self) -> Vec<Secret> {
        let Ok(v) = self.vault() else {
            return Vec::new();
        };
        let mut out: Vec<Secret> = Vec::new();
        let mut add = |env: &str, real: &str, bytes: &[u8]| {
            if bytes.is_empty() || super::sweep_ops::guessable(bytes) {
                return;
            }
            let shown = self.shown_name(env, real);
            out.push((shown, Zeroizing::new(bytes.to_vec())));
        };
        for (env, e) in &v.data().environments {
            for (name, var) in &e.variables {
                if !is_secret(var) {
                    continue;
                }
                if let Some(sealed) = &var.value
                    && let Ok(val) = sealed.open()
                {
                    add(env, name, val.expose().as_bytes());
                }
                if let Some(d) = &var.dynamic {
                    add(env, name, d.admin.expose().as_bytes());
                }
            }
        }
        for (grant, var, val) in self.dynamic.held_values() {
            if let Some(g) = self.grants.get(&grant) {
                let env = g.environment.clone();
                add(&env, &var, val.expose().as_bytes());
            }
        }
        out
    }
}

/// Whether `var` holds something secret from the agent: a value (or a dynamic source's admin
/// credential) that was not stored by a call without the factor.
fn is_secret(var: &keyveil_vault::Variable) -> bool {
    (var.value.is_some() || var.dynamic.is_some()) && super::access::agent_chosen(var).is_none()
}

/// `s` redacted by `r` (the same string when nothing matched).
pub(crate) fn redact_str(r: &Redactor, s: &str) -> String {
    let (out, n) = r.redact(s.as_bytes());
    if n > 0 {
        String::from_utf8_lossy(&out).into_owned()
    } else {
        s.to_owned()
    }
}

/// Redacts every string inside `v` (object keys included) with `r`.
pub(crate) fn redact_json(r: &Redactor, v: &mut Value) {
    match v {
        Value::String(s) => {
            let (out, n) = r.redact(s.as_bytes());
            if n > 0 {
                *s = String::from_utf8_lossy(&out).into_owned();
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| redact_json(r, x)),
        Value::Object(o) => {
            let old = std::mem::take(o);
            for (k, mut x) in old {
                redact_json(r, &mut x);
                let (out, n) = r.redact(k.as_bytes());
                let k = if n > 0 {
                    String::from_utf8_lossy(&out).into_owned()
                } else {
                    k
                };
                o.insert(k, x);
            }
        }
        _ => {}
    }
}

/// `card` with every string redacted by `r` (the typed card goes through its JSON form, so a
/// field added later is covered too); the card unchanged if that form does not read back.
pub(crate) fn redact_card(
    r: &Redactor,
    card: keyveil_proto::op::RequestCard,
) -> keyveil_proto::op::RequestCard {
    let Ok(mut v) = serde_json::to_value(&card) else {
        return card;
    };
    redact_json(r, &mut v);
    serde_json::from_value(v).unwrap_or(card)
}
