//! Redactors kept between the runs of a live grant (issue 21, performance item 2).
//!
//! Building a run's redactor (every variant of every injected value, `keyveil-redact`) is the
//! slow part of a run that injects many values: about 38 µs per value in a release build, so
//! close to half a second at 10,000 values. A standing grant runs the same values again and
//! again, so the built redactor is kept with the grant and reused while nothing it was built
//! from changed; so is the write-side scan's matcher of the same values ([`Kept::scan`]),
//! which would otherwise be built again for every run.
//!
//! What a run reuses is decided by content, not by bookkeeping: the key is a SHA-256 over the
//! exact `(shown name, value)` pairs the run injects, in order, each length-prefixed (values
//! opened from their sealed copies for this run, minted credentials included). A `set` that
//! changes a value, an alias change, another `--only` selection or a new minted credential gives
//! another key, and the redactor is built again from what the run really receives. The key
//! binds every byte the redactor was built from, so a reused redactor covers exactly what a new
//! one would.
//!
//! Custody: a cached redactor holds patterns derived from the values in plain form (that is
//! what matching needs), as every run's redactor does while the run lives. It is kept only
//! while its grant is live and was used in the last [`IDLE`]: dropped when the grant is revoked
//! or expires, when the vault locks (with the values), after [`IDLE`] without a run, and when
//! more than [`MAX_ENTRIES`] grants hold one (least recently used first). Dropping the last
//! clone zeroes its patterns (`keyveil_redact::Redactor`). Lookups and inserts are O(1) under
//! the broker's lock; the key is computed and the redactor built outside it.

use std::time::{Duration, Instant};

use crate::redact::Redactor;

/// A cached redactor unused for this long is dropped (by the broker's tick).
pub(crate) const IDLE: Duration = Duration::from_secs(300);

/// At most this many grants keep a redactor at once.
pub(crate) const MAX_ENTRIES: usize = 8;

/// The content key of a run's redactor: SHA-256 over its `(shown name, value)` pairs.
pub(crate) type Key = [u8; 32];

/// Computes the [`Key`] of the pairs a redactor is built from, in order: for each pair the
/// name's and the value's lengths (8 bytes each, big-endian) and bytes, under a domain prefix.
pub(crate) fn key<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Key {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"keyveil run redactor v1\0");
    for (name, value) in pairs {
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update((value.len() as u64).to_be_bytes());
        h.update(value);
    }
    h.finalize().into()
}

/// What a run's values are matched with, built from the same `(shown name, value)` pairs:
/// kept together, under one [`Key`].
#[derive(Clone)]
pub(crate) struct Kept {
    /// Redacts the run's output (every form and fragment).
    pub(crate) run: Redactor,
    /// Matches whole, unguessable values in the write-side scan
    /// (`runner::launch::scan_redactor`).
    pub(crate) scan: Redactor,
}

/// One grant's redactors.
struct Entry {
    grant_id: String,
    key: Key,
    kept: Kept,
    used: Instant,
}

/// Redactors of live grants (held in the broker's state, so behind its lock).
#[derive(Default)]
pub(crate) struct RedactorCache {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for RedactorCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedactorCache")
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl RedactorCache {
    /// The redactors `grant_id` built for exactly these contents, if they are still kept (marks
    /// them used).
    pub(crate) fn get(&mut self, grant_id: &str, key: &Key, now: Instant) -> Option<Kept> {
        let e = self
            .entries
            .iter_mut()
            .find(|e| e.grant_id == grant_id && e.key == *key)?;
        e.used = now;
        Some(e.kept.clone())
    }

    /// Keeps `kept` for `grant_id` (replacing what it had), dropping the least recently used
    /// entry beyond [`MAX_ENTRIES`].
    pub(crate) fn put(&mut self, grant_id: &str, key: Key, kept: Kept, now: Instant) {
        self.forget_grant(grant_id);
        if self.entries.len() >= MAX_ENTRIES
            && let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.used)
                .map(|(i, _)| i)
        {
            self.entries.swap_remove(oldest);
        }
        self.entries.push(Entry {
            grant_id: grant_id.to_owned(),
            key,
            kept,
            used: now,
        });
    }

    /// Drops `grant_id`'s redactor (the grant ended).
    pub(crate) fn forget_grant(&mut self, grant_id: &str) {
        self.entries.retain(|e| e.grant_id != grant_id);
    }

    /// Drops every redactor (the vault locks).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    /// Drops redactors unused for [`IDLE`] and those of grants `live` no longer accepts.
    pub(crate) fn prune(&mut self, now: Instant, live: impl Fn(&str) -> bool) {
        self.entries
            .retain(|e| now.saturating_duration_since(e.used) < IDLE && live(&e.grant_id));
    }

    /// How many redactors are kept.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> Kept {
        let run = Redactor::new([("N", b"fixture-value-for-cache".to_vec())]);
        Kept {
            scan: run.clone(),
            run,
        }
    }

    #[test]
    fn key_binds_names_values_order_and_boundaries() {
        let k = |p: &[(&str, &[u8])]| key(p.iter().copied());
        let base = k(&[("A", b"xy"), ("B", b"z")]);
        assert_eq!(base, k(&[("A", b"xy"), ("B", b"z")]));
        assert_ne!(base, k(&[("A", b"xy"), ("B", b"q")]), "a value changed");
        assert_ne!(base, k(&[("A", b"xy"), ("C", b"z")]), "a name changed");
        assert_ne!(base, k(&[("B", b"z"), ("A", b"xy")]), "order changed");
        assert_ne!(
            base,
            k(&[("A", b"x"), ("B", b"yz")]),
            "bytes moved across a boundary"
        );
        assert_ne!(base, k(&[("A", b"xy")]), "a pair fewer");
    }

    #[test]
    fn get_needs_the_same_grant_and_key() {
        let mut c = RedactorCache::default();
        let now = Instant::now();
        c.put("g-1", [1; 32], r(), now);
        assert!(c.get("g-1", &[1; 32], now).is_some());
        assert!(c.get("g-1", &[2; 32], now).is_none(), "other contents");
        assert!(c.get("g-2", &[1; 32], now).is_none(), "other grant");
        // A new build for the grant replaces its old one.
        c.put("g-1", [2; 32], r(), now);
        assert_eq!(c.len(), 1);
        assert!(c.get("g-1", &[1; 32], now).is_none());
        c.forget_grant("g-1");
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn bounded_idle_and_dead_grants_pruned() {
        let mut c = RedactorCache::default();
        let t0 = Instant::now();
        for i in 0..MAX_ENTRIES + 3 {
            c.put(
                &format!("g-{i}"),
                [0; 32],
                r(),
                t0 + Duration::from_secs(i as u64),
            );
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        assert!(
            c.get("g-0", &[0; 32], t0).is_none(),
            "least recently used dropped"
        );
        let last = format!("g-{}", MAX_ENTRIES + 2);
        c.prune(t0 + Duration::from_secs(20), |g| g != last);
        assert_eq!(c.len(), MAX_ENTRIES - 1, "a dead grant's entry dropped");
        c.prune(t0 + IDLE + Duration::from_secs(100), |_| true);
        assert_eq!(c.len(), 0, "idle entries dropped");
        c.put("g-x", [0; 32], r(), t0);
        c.clear();
        assert_eq!(c.len(), 0);
    }
}
