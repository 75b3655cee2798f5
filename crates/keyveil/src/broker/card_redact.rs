//! Cards never carry a stored value.
//!
//! What a request card shows of a process (a run's argv and cwd, a mount reader's argv, its
//! code-loading environment, the requester's pass-through values, its parents) can come from a
//! granted child, which holds values: `sh -c 'tool --password "$DB_PASSWORD"'` where `tool` reads
//! a mounted `.env`, or asks `keyveil run` itself. The agent reads cards and the audit log
//! without any factor, so the broker masks in them every value that is secret from the agent
//! before they leave it: a card's strings, a grant listing's argv, cwd and pinned
//! paths, every audit entry (`Inner::scrub_entry`), and the desktop notification's text (the
//! notifier's command line is readable in `/proc`).
//!
//! Which values, and what is matched: requester-supplied strings that a matcher marks are an
//! oracle (plant a guess in an argv, read whether the card masks it). So the match is of the
//! **whole value, as stored, byte for byte** ([`WholeValues`]), never of fragments, encodings or
//! parts of it (a value with a known part would then be read one character per request, a
//! short JSON `password` inside a value guessed among 10,000: `tests/it/redteam_s8b.rs`), and
//! only of values no agent can guess ([`super::sweep_ops::guessable`]: 16 bytes or more and
//! about 80 bits or more), never a value the agent may have chosen itself (stored without the
//! factor: shown on cards by design, `access::chosen_values`). Confirming a planted guess of a
//! whole value of 80 bits or more tells the agent nothing it did not have. A guessable value, or
//! a value written encoded or in part, that a granted child puts on a command line still reaches
//! a card: `docs/threat-model.md` says so.
//!
//! The matcher is cached in [`Inner`] under a digest of which secret values exist (names,
//! creation, rotation and storing times, held dynamic credentials), built again only after one
//! of them changes, and dropped with the vault at `lock`.

use std::sync::Arc;

use serde_json::Value;
use sha2::Digest as _;
use zeroize::Zeroizing;

use super::state::Inner;

/// Whole secret values, matched exactly (raw bytes), each replaced by `[REDACTED:NAME]`
/// (the name as clients see it: an alias where the policy hides names). Leftmost match first;
/// at one position the longest value wins. Holds the values in plain form (wiped on drop).
pub(crate) struct WholeValues {
    values: Vec<(String, Zeroizing<Vec<u8>>)>,
}

impl std::fmt::Debug for WholeValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WholeValues")
            .field("values", &self.values.len())
            .finish_non_exhaustive()
    }
}

impl WholeValues {
    /// `input` with every whole value masked, and how many were.
    pub(crate) fn redact(&self, input: &[u8]) -> (Vec<u8>, usize) {
        let mut out = Vec::with_capacity(input.len());
        let (mut at, mut n) = (0usize, 0usize);
        loop {
            let rest = input.get(at..).unwrap_or_default();
            let mut best: Option<(usize, usize, &str)> = None;
            for (name, v) in &self.values {
                if v.len() > rest.len() {
                    continue;
                }
                if let Some(p) = memchr::memmem::find(rest, v)
                    && best.is_none_or(|(bp, bl, _)| p < bp || (p == bp && v.len() > bl))
                {
                    best = Some((p, v.len(), name));
                }
            }
            let Some((p, len, name)) = best else {
                out.extend_from_slice(rest);
                return (out, n);
            };
            out.extend_from_slice(rest.get(..p).unwrap_or_default());
            out.extend_from_slice(format!("[REDACTED:{name}]").as_bytes());
            at += p + len;
            n += 1;
        }
    }
}

/// The cached matcher and the digest of the secret values it was built from.
pub(crate) struct CardRedactor {
    key: [u8; 32],
    matcher: Arc<WholeValues>,
}

impl std::fmt::Debug for CardRedactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardRedactor").finish_non_exhaustive()
    }
}

/// A secret value for the card matcher: what the marker names and the bytes.
type Secret = (String, Zeroizing<Vec<u8>>);

impl Inner {
    /// The matcher of every whole value that is secret from the agent, built again when the set
    /// of such values changed since the last call; `None` while the vault is locked.
    pub(crate) fn card_redactor(&mut self) -> Option<Arc<WholeValues>> {
        let key = self.secrets_key()?;
        if let Some(c) = &self.card_redactor
            && c.key == key
        {
            return Some(c.matcher.clone());
        }
        let mut values = self.card_secrets();
        // Longest first, so that at one position the longest value is found first too.
        values.sort_by_key(|v| std::cmp::Reverse(v.1.len()));
        let matcher = Arc::new(WholeValues { values });
        self.card_redactor = Some(CardRedactor {
            key,
            matcher: matcher.clone(),
        });
        Some(matcher)
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
pub(crate) fn redact_str(r: &WholeValues, s: &str) -> String {
    let (out, n) = r.redact(s.as_bytes());
    if n > 0 {
        String::from_utf8_lossy(&out).into_owned()
    } else {
        s.to_owned()
    }
}

/// Redacts every string inside `v` (object keys included) with `r`.
pub(crate) fn redact_json(r: &WholeValues, v: &mut Value) {
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

/// `card` with every whole value masked by `r` (the typed card goes through its JSON form, so a
/// field added later is covered too); `None` when that form does not read back (the card is then
/// not listed, so it cannot be shown or approved: fail closed).
pub(crate) fn redact_card(
    r: &WholeValues,
    card: keyveil_proto::op::RequestCard,
) -> Option<keyveil_proto::op::RequestCard> {
    let mut v = serde_json::to_value(&card).ok()?;
    redact_json(r, &mut v);
    serde_json::from_value(v).ok()
}
