//! Cards never carry a stored value.
//!
//! What a request card shows of a process (a run's argv and cwd, a mount reader's argv, its
//! code-loading environment, the requester's pass-through values, its parents) can come from a
//! granted child, which holds values: `sh -c 'tool --password "$DB_PASSWORD"'` where `tool` reads
//! a mounted `.env`, or asks `keyveil run` itself. The agent reads cards and the audit log
//! without any factor, so the broker masks in them every value that is secret from the agent
//! before they leave it: a card's strings, a grant listing's argv, cwd and pinned
//! paths, a run's argv as `status` and `logs` show it (masked when the run starts), every audit
//! entry (scrubbed in `state/inner.rs`, the egress proxy's batched entries included), and the desktop
//! notification's text (the notifier's command line is readable in `/proc`).
//!
//! Whose strings, and which values: every value in the strings of a request whose requester may
//! hold values (`Inner::peer_holds_values`: it is, or descends from, a live run's process or a
//! mount reader that was written values; `AccessReq::masked`, `Grant::masked`, a run's shown
//! argv). Any other requester's strings are masked only of the values keyveil made at random
//! ([`made_at_random`]: `keyveil generate`, a dynamic engine's minted credential). Such a
//! requester is usually the agent, whose strings are its own: showing them reveals nothing,
//! while masking a planted guess of a value whose shape it knows would confirm it (10,000
//! candidate URLs in one argv, `tests/it/redteam_s9.rs`). But it may also be a daemon outside
//! every run that a granted child had start its ask (`tmux new-window "keyveil run -- tool
//! $VALUE"` answered by a tmux server the agent started before, `systemd-run --user`, `at`),
//! whose argv holds the value: a value made at random is masked there too, and that answers no
//! planted guess, since no agent can plant a right guess of ≥ 80 random bits whatever it knows
//! (`tests/it/redteam_s10c.rs`). A value a human typed is not, in such strings: the estimate
//! of its guessability cannot see a known shape around a short secret (`docs/threat-model.md`
//! states this limit). A requester the broker cannot place (no pid, exited, pid reused, a
//! parent unreadable) is refused (`access::strings_masked`).
//!
//! Masking a value made at random in any requester's strings is itself an answer to whoever
//! wrote them: an agent that knows all but a few characters of such a value (a partial leak)
//! lists the candidates in an ask of its own and sees which one is masked
//! (`tests/it/redteam_s14.rs`, a stated limit in `docs/threat-model.md`). Any visible reaction
//! to a match is the same oracle, so the masking stays and the match is made loud:
//! `access/custody.rs` flags the card `value-outside-custody`, audits the variable's name and
//! marks it compromised until rotated. And the matcher never sees a clipped value: what a card
//! quotes of a value the requester supplied is kept whole, masked, then clipped
//! (`state/shown.rs`), so a value across the clip is still whole when matched.
//!
//! Which values, and what is matched: requester-supplied strings that a matcher marks are an
//! oracle (plant a guess in an argv, read whether the card masks it). So the match is of the
//! **whole value, as stored, byte for byte** ([`WholeValues`]), never of fragments, encodings or
//! parts of it (a value with a known part would then be read one character per request, a
//! short JSON `password` inside a value guessed among 10,000: `tests/it/redteam_s8b.rs`), and
//! only of values no agent can guess ([`guessable`]: 16 bytes or more and
//! about 80 bits or more), never a value the agent may have chosen itself (stored without the
//! factor: shown on cards by design, `access::chosen_values`). Confirming a planted guess of a
//! whole value of 80 bits or more tells the agent nothing it did not have; but the 80 bits are
//! estimated from length and character classes, so a value of a shape the agent knows (a URL
//! whose only unknown is a short password) would be confirmed by a planted guess, were the
//! agent's own strings matched: they are not (above); code the agent controls inside a granted
//! child (which holds the values anyway) still can (`docs/threat-model.md`). A guessable value, or
//! a value written encoded or in part, that a granted child puts on a command line still reaches
//! a card: `docs/threat-model.md` says so.
//!
//! The matchers are cached in the broker's state ([`CardRedactor`], `Inner::card_matcher`) under
//! a digest of which secret values exist ([`secrets_key`]: names, creation, rotation and storing
//! times, held dynamic credentials), built again only after one of them changes, and dropped
//! with the vault at `lock`. This file knows nothing of the state: it is given the vault and
//! the minted values.

use std::sync::Arc;

use serde_json::Value;
use sha2::Digest as _;
use zeroize::Zeroizing;

use super::state::agent_chosen;

/// Whole secret values, matched exactly (raw bytes), each replaced by `[REDACTED:NAME]`
/// (the name as clients see it: an alias where the policy hides names). Leftmost match first;
/// at one position the longest value wins.
///
/// It holds no value in plain form (the broker keeps values sealed in memory, `docs/hardening.md`
/// §1): per value only its length, a polynomial hash modulo 2^61 − 1 under a random base (to
/// find candidate windows in one pass per length) and a SHA-256 keyed by a random key (to
/// confirm a candidate). Both keys are made per build and never leave the broker; the values are
/// not guessable (80 bits or more), so neither digest can be searched back to a value.
pub(crate) struct WholeValues {
    key: Zeroizing<[u8; 32]>,
    base: u64,
    by_len: std::collections::BTreeMap<usize, ByHash>,
}

/// Values of one length by rolling hash: their keyed digests and names.
type ByHash = std::collections::HashMap<u64, Vec<([u8; 32], String)>>;

impl std::fmt::Debug for WholeValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WholeValues")
            .field("lengths", &self.by_len.len())
            .finish_non_exhaustive()
    }
}

/// The Mersenne prime 2^61 − 1, the rolling hash's modulus.
const P61: u64 = (1 << 61) - 1;

fn mulmod(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    let lo = (r as u64) & P61;
    let hi = (r >> 61) as u64;
    let s = lo + hi;
    if s >= P61 { s - P61 } else { s }
}

fn addmod(a: u64, b: u64) -> u64 {
    let s = a + b;
    if s >= P61 { s - P61 } else { s }
}

impl WholeValues {
    /// A matcher of `values` (name, bytes); the bytes are only hashed.
    pub(crate) fn new(values: &[Secret]) -> WholeValues {
        let mut key = Zeroizing::new([0u8; 32]);
        let mut b = [0u8; 8];
        // The OS random source failing leaves zero keys: the matcher still works, its digests
        // are then unkeyed (no value is stored either way).
        let _ = getrandom::fill(key.as_mut());
        let _ = getrandom::fill(&mut b);
        let base = (u64::from_le_bytes(b) % (P61 - 256)) + 256;
        let mut m = WholeValues {
            key,
            base,
            by_len: Default::default(),
        };
        for (name, v) in values {
            if v.is_empty() {
                continue;
            }
            let h = m.hash(v);
            let d = m.digest(v);
            m.by_len
                .entry(v.len())
                .or_default()
                .entry(h)
                .or_default()
                .push((d, name.clone()));
        }
        m
    }

    fn hash(&self, w: &[u8]) -> u64 {
        w.iter()
            .fold(0, |h, &x| addmod(mulmod(h, self.base), u64::from(x) + 1))
    }

    fn digest(&self, w: &[u8]) -> [u8; 32] {
        let mut h = sha2::Sha256::new();
        h.update(self.key.as_slice());
        h.update(w);
        h.finalize().into()
    }

    /// Every match in `input`: (start, length, name).
    fn matches<'a>(&'a self, input: &[u8]) -> Vec<(usize, usize, &'a str)> {
        let mut found = Vec::new();
        for (&len, table) in &self.by_len {
            if len > input.len() {
                continue;
            }
            // base^(len-1): what the window's first byte weighs when it leaves.
            let top = (1..len).fold(1u64, |p, _| mulmod(p, self.base));
            let mut h = self.hash(input.get(..len).unwrap_or_default());
            let mut at = 0usize;
            loop {
                if let Some(cands) = table.get(&h) {
                    let w = input.get(at..at + len).unwrap_or_default();
                    let d = self.digest(w);
                    if let Some((_, name)) = cands.iter().find(|(x, _)| *x == d) {
                        found.push((at, len, name.as_str()));
                    }
                }
                let (Some(&out), Some(&inc)) = (input.get(at), input.get(at + len)) else {
                    break;
                };
                let without = addmod(h, P61 - mulmod(u64::from(out) + 1, top));
                h = addmod(mulmod(without, self.base), u64::from(inc) + 1);
                at += 1;
            }
        }
        // Leftmost first, the longest at one position.
        found.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        found
    }

    /// The names of the whole values found in `input` (each once, sorted).
    pub(crate) fn names_in(&self, input: &[u8]) -> Vec<String> {
        let mut names: Vec<String> = self
            .matches(input)
            .into_iter()
            .map(|(_, _, n)| n.to_owned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// `input` with every whole value masked, and how many were.
    pub(crate) fn redact(&self, input: &[u8]) -> (Vec<u8>, usize) {
        let found = self.matches(input);
        if found.is_empty() {
            return (input.to_vec(), 0);
        }
        let mut out = Vec::with_capacity(input.len());
        let (mut at, mut n) = (0usize, 0usize);
        for (p, len, name) in found {
            if p < at {
                continue;
            }
            out.extend_from_slice(input.get(at..p).unwrap_or_default());
            out.extend_from_slice(format!("[REDACTED:{name}]").as_bytes());
            at = p + len;
            n += 1;
        }
        out.extend_from_slice(input.get(at..).unwrap_or_default());
        (out, n)
    }
}

/// The cached matchers and the digest of the secret values they were built from.
pub(crate) struct CardRedactor {
    key: [u8; 32],
    matcher: Arc<WholeValues>,
    /// The values keyveil made at random ([`Secret`]'s flag), masked wherever they appear.
    made: Arc<WholeValues>,
}

impl std::fmt::Debug for CardRedactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardRedactor").finish_non_exhaustive()
    }
}

/// A secret value for the card matcher: what the marker names and the bytes.
pub(crate) type Secret = (String, Zeroizing<Vec<u8>>);

/// A secret value and whether keyveil made it at random ([`made_at_random`]).
pub(crate) type CardSecret = (Secret, bool);

impl CardRedactor {
    /// The matcher, if it was built for the secret values `key` stands for ([`secrets_key`]):
    /// every secret value when `all`, else only those keyveil made at random (the matcher of
    /// strings a requester that holds nothing supplied: see the module's documentation).
    pub(crate) fn matcher_for(&self, key: &[u8; 32], all: bool) -> Option<Arc<WholeValues>> {
        (self.key == *key).then(|| {
            if all {
                self.matcher.clone()
            } else {
                self.made.clone()
            }
        })
    }

    /// Matchers of `values`, kept under `key` ([`secrets_key`] of the values they were built
    /// from).
    pub(crate) fn build(key: [u8; 32], values: &[CardSecret]) -> CardRedactor {
        let all: Vec<Secret> = values.iter().map(|(s, _)| s.clone()).collect();
        let made: Vec<Secret> = values
            .iter()
            .filter(|(_, m)| *m)
            .map(|(s, _)| s.clone())
            .collect();
        CardRedactor {
            key,
            matcher: Arc::new(WholeValues::new(&all)),
            made: Arc::new(WholeValues::new(&made)),
        }
    }
}

/// A digest of which secret values exist: environment, name, creation, rotation and storing
/// times of every variable of `vault` with a value, and the held dynamic credentials by grant
/// (`minted`: grant id, variable). No value is opened; a value the agent stored changes nothing.
pub(crate) fn secrets_key<'a>(
    vault: &keyveil_vault::Vault,
    minted: impl Iterator<Item = (&'a str, &'a str)>,
) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    for (env, e) in &vault.data().environments {
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
    for (grant, var) in minted {
        h.update(format!("minted\0{grant}\0{var}\n").as_bytes());
    }
    h.finalize().into()
}

/// The secret values (see the module's documentation): those of `vault`, and the minted values
/// (environment of their grant, variable, value), named as clients see them (`shown`:
/// environment, real name → the name shown), each with whether keyveil made it at random
/// ([`made_at_random`]).
pub(crate) fn card_secrets<'a>(
    vault: &keyveil_vault::Vault,
    minted: impl Iterator<Item = (&'a str, &'a str, &'a keyveil_vault::SecretValue)>,
    shown: impl Fn(&str, &str) -> String,
) -> Vec<CardSecret> {
    let mut out: Vec<CardSecret> = Vec::new();
    let mut add = |env: &str, real: &str, bytes: &[u8], made: bool| {
        if bytes.is_empty() || guessable(bytes) {
            return;
        }
        out.push(((shown(env, real), Zeroizing::new(bytes.to_vec())), made));
    };
    let source_of = |env: &str, var: &str| {
        vault
            .data()
            .environments
            .get(env)
            .and_then(|e| e.variables.get(var))
            .map(|v| v.source)
    };
    for (env, e) in &vault.data().environments {
        for (name, var) in &e.variables {
            if !is_secret(var) {
                continue;
            }
            if let Some(sealed) = &var.value
                && let Ok(val) = sealed.open()
            {
                let made = made_at_random(var.source, false);
                add(env, name, val.expose().as_bytes(), made);
            }
            if let Some(d) = &var.dynamic {
                // The engine's admin credential was typed by a human.
                add(env, name, d.admin.expose().as_bytes(), false);
            }
        }
    }
    for (env, var, val) in minted {
        let made = source_of(env, var).is_some_and(|s| made_at_random(s, true));
        add(env, var, val.expose().as_bytes(), made);
    }
    out
}

/// Whether keyveil made a value at random, so that no agent can plant a right guess of it
/// whatever it knows of its shape: a value of `keyveil generate` (uniform over its charset,
/// [`guessable`] still applies: a short one is not matched) or a credential a dynamic engine
/// minted (its password is 40 random letters and digits; a provider's fetched value is not).
/// Values a human typed can have a shape the agent knows around a short secret (a URL whose only
/// unknown is a 4-digit password), which the length-and-classes estimate misjudges.
pub(crate) fn made_at_random(source: keyveil_vault::Source, minted: bool) -> bool {
    match source {
        keyveil_vault::Source::Generated => !minted,
        keyveil_vault::Source::Dynamic => minted,
        keyveil_vault::Source::Human | keyveil_vault::Source::Provider => false,
    }
}

/// Whether a value could be found by planting guesses: shorter than 16 bytes (trimmed), or
/// under 80 bits by a per-character estimate (digits 3.3, one letter case 4.7, letters and
/// digits 5.9, more 6.5 bits a character). `sweep --watch` never contains such a value by
/// itself: visible containment of it would answer an agent's planted guesses without limit
/// (`docs/sweep.md`).
/// Nor do cards or the write-side scan match one (a match would answer planted guesses).
pub(crate) fn guessable(value: &[u8]) -> bool {
    let v = value.trim_ascii();
    if v.len() < 16 {
        return true;
    }
    let digits = v.iter().all(u8::is_ascii_digit);
    let one_case = v
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        || v.iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    let alnum = v.iter().all(u8::is_ascii_alphanumeric);
    let per_char = if digits {
        3.3
    } else if one_case {
        4.7
    } else if alnum {
        5.9
    } else {
        6.5
    };
    (v.len() as f64) * per_char < 80.0
}

/// Whether `var` holds something secret from the agent: a value (or a dynamic source's admin
/// credential) that was not stored by a call without the factor.
fn is_secret(var: &keyveil_vault::Variable) -> bool {
    (var.value.is_some() || var.dynamic.is_some()) && agent_chosen(var).is_none()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str, v: &[u8]) -> Secret {
        (name.to_owned(), Zeroizing::new(v.to_vec()))
    }

    #[test]
    fn whole_values_only_leftmost_then_longest() {
        let m = WholeValues::new(&[
            secret("A", b"fixture-whole-value-1"),
            secret("B", b"fixture-whole-value-1-xyz"),
        ]);
        let (out, n) = m
            .redact(b"x fixture-whole-value-1-xyz y fixture-whole-value-1 z fixture-whole-value- fixture-whole-value-1");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "x [REDACTED:B] y [REDACTED:A] z fixture-whole-value- [REDACTED:A]"
        );
        assert_eq!(n, 3);
        // A part of a value, or nothing at all, is left as it is.
        assert_eq!(m.redact(b"ixture-whole-value-1-xy").1, 0);
        assert_eq!(m.redact(b"").1, 0);
    }

    #[test]
    fn strings_of_a_requester_holding_nothing_are_matched_only_for_values_made_at_random() {
        let key = [7u8; 32];
        let r = CardRedactor::build(
            key,
            &[
                (secret("TYPED", b"fixture-typed-value-12345"), false),
                (secret("MADE", b"fixture-made-value-678901"), true),
            ],
        );
        let both = b"fixture-typed-value-12345 fixture-made-value-678901";
        let all = r.matcher_for(&key, true).unwrap();
        assert_eq!(all.redact(both).1, 2);
        let made = r.matcher_for(&key, false).unwrap();
        let (out, n) = made.redact(both);
        assert_eq!(n, 1);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "fixture-typed-value-12345 [REDACTED:MADE]"
        );
        assert!(r.matcher_for(&[8u8; 32], false).is_none());
        use keyveil_vault::Source;
        assert!(made_at_random(Source::Generated, false));
        assert!(made_at_random(Source::Dynamic, true));
        assert!(!made_at_random(Source::Human, false));
        assert!(!made_at_random(Source::Provider, true));
    }

    #[test]
    fn the_matcher_holds_no_value() {
        let v = b"fixture-whole-value-1-xyz";
        let m = WholeValues::new(&[secret("A", v)]);
        let shown = format!("{m:?}");
        assert!(!shown.contains("fixture"));
        for table in m.by_len.values() {
            for cands in table.values() {
                for (d, _) in cands {
                    assert!(!d.windows(4).any(|w| v.windows(4).any(|x| x == w)));
                }
            }
        }
    }
}
