//! Pattern tables and the two automata that find them.
//!
//! All patterns of all secrets go into at most two Aho-Corasick automata (standard match
//! semantics, so *every* occurrence of every pattern is reported, overlapping ones included):
//!
//! - the **normalised pass** runs over the normalised view of the output
//!   ([`crate::normalize`]: whitespace and ANSI escape sequences removed) and holds every pattern
//!   whose normalised form is at least [`MIN_LEN`] bytes. Matches are mapped back to original
//!   byte offsets through a ring buffer, so a match covers the noise inside it (line wrapping,
//!   hexdump spacing, colour codes, values interleaved with spaces, lines joined by any
//!   whitespace run).
//! - the **raw pass** runs over the original bytes and holds the patterns of short values
//!   (matched only as whole tokens) and the rare patterns that normalisation would shrink below
//!   [`MIN_LEN`].
//!
//! Each pass is driven one byte at a time through [`Automaton::next_state`], with its state kept
//! between chunks, so the matches found do not depend on how the output is split.

use crate::normalize::{MAX_CSI_PARAMS, Normalizer, normalize, swallowable};
use crate::{MAX_NOISE_RUN, MIN_LEN};
use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::nfa::{contiguous, noncontiguous};
use aho_corasick::{Anchored, MatchKind, dfa};
use std::collections::HashMap;

/// The DFA is used while its transition table stays under this many bytes; beyond it the
/// contiguous NFA is used (slower per byte, far smaller).
const DFA_MAX_BYTES: usize = 24 << 20;

/// What a pattern stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PatternInfo {
    /// Index of the (first) secret that produced the pattern.
    pub secret: u32,
    /// Pattern length in bytes (in the pass's own view).
    pub len: u32,
    /// Only matches bounded by non-alphanumeric bytes (or start/end of stream) count.
    pub token: bool,
}

/// Which pass a pattern belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PassKind {
    Raw,
    Normalized,
}

/// Deduplicated patterns of one pass, before the automaton is built.
#[derive(Debug, Default)]
pub(crate) struct PatternSet {
    pub bytes: Vec<Vec<u8>>,
    pub info: Vec<PatternInfo>,
    index: HashMap<Vec<u8>, u32>,
    /// Further secrets sharing a pattern with an earlier one: `(pattern, secret)`, sorted.
    pub extra_owners: Vec<(u32, u32)>,
}

impl PatternSet {
    fn add(&mut self, bytes: Vec<u8>, secret: u32, token: bool) {
        if bytes.is_empty() {
            return;
        }
        if let Some(&id) = self.index.get(&bytes) {
            if let Some(info) = self.info.get_mut(id as usize) {
                if info.secret != secret {
                    self.extra_owners.push((id, secret));
                }
                // A pattern wanted both anywhere and as a token is matched anywhere.
                info.token &= token;
            }
            return;
        }
        let Ok(len) = u32::try_from(bytes.len()) else {
            return;
        };
        let Ok(id) = u32::try_from(self.bytes.len()) else {
            return;
        };
        self.index.insert(bytes.clone(), id);
        self.bytes.push(bytes);
        self.info.push(PatternInfo { secret, len, token });
    }

    pub fn total_bytes(&self) -> usize {
        self.bytes.iter().map(Vec::len).sum()
    }
}

/// Collects the patterns of all secrets into the two passes.
#[derive(Debug, Default)]
pub(crate) struct Patterns {
    pub raw: PatternSet,
    pub normalized: PatternSet,
    /// The markers, joined by NUL: patterns must not match inside any of them.
    markers: Vec<u8>,
    /// Bytes occurring in any marker (quick rejection).
    marker_bytes: Vec<bool>,
    max_marker_len: usize,
}

impl Patterns {
    pub fn new(markers: &[Vec<u8>]) -> Patterns {
        let mut p = Patterns {
            marker_bytes: vec![false; 256],
            ..Patterns::default()
        };
        for m in markers {
            p.markers.extend_from_slice(m);
            p.markers.push(0);
            p.max_marker_len = p.max_marker_len.max(m.len());
            for &b in m {
                if let Some(slot) = p.marker_bytes.get_mut(usize::from(b)) {
                    *slot = true;
                }
            }
        }
        p
    }

    /// Does `p` occur inside one of the markers?
    fn forbidden(&self, p: &[u8]) -> bool {
        if p.len() > self.max_marker_len
            || !p
                .iter()
                .all(|&b| self.marker_bytes.get(usize::from(b)).copied().unwrap_or(false))
        {
            return false;
        }
        // A hit spanning the NUL separator is not inside a single marker.
        memchr::memmem::find_iter(&self.markers, p).any(|i| {
            self.markers
                .get(i..i + p.len())
                .is_some_and(|w| !w.contains(&0))
        })
    }

    /// Adds a pattern that may match anywhere.
    pub fn add_anywhere(&mut self, bytes: &[u8], secret: u32) {
        if swallowable(bytes) && bytes.len() >= MIN_LEN && !self.forbidden(bytes) {
            // A preceding `ESC [` could hide its start from the normalised view.
            self.raw.add(bytes.to_vec(), secret, false);
        }
        let n = normalize(bytes);
        if n.len() >= MIN_LEN {
            if !self.forbidden(&n) {
                self.normalized.add(n, secret, false);
            }
        } else if bytes.len() >= MIN_LEN && !self.forbidden(bytes) {
            self.raw.add(bytes.to_vec(), secret, false);
        }
    }

    /// Adds a pattern that only matches as a whole token.
    pub fn add_token(&mut self, bytes: &[u8], secret: u32) {
        if !bytes.is_empty() && !self.forbidden(bytes) {
            self.raw.add(bytes.to_vec(), secret, true);
        }
    }
}

/// A built automaton.
#[derive(Clone, Debug)]
pub(crate) enum Engine {
    Dfa(dfa::DFA),
    Contiguous(contiguous::NFA),
    Noncontiguous(noncontiguous::NFA),
}

/// One built pass: automaton plus pattern table.
#[derive(Clone, Debug)]
pub(crate) struct Pass {
    engine: Engine,
    pub kind: PassKind,
    pub info: Vec<PatternInfo>,
    pub extra_owners: Vec<(u32, u32)>,
    pub max_len: usize,
    ring_len: usize,
    start: StateID,
}

/// Error building an automaton (only for absurd pattern sets: billions of states).
#[derive(Debug)]
pub(crate) struct BuildFailed;

impl Pass {
    /// Builds the automaton for a pattern set; `None` for an empty set.
    pub fn build(set: PatternSet, kind: PassKind) -> Result<Option<Pass>, BuildFailed> {
        if set.bytes.is_empty() {
            return Ok(None);
        }
        let max_len = set.bytes.iter().map(Vec::len).max().unwrap_or(1);
        let nnfa = noncontiguous::Builder::new()
            .match_kind(MatchKind::Standard)
            .prefilter(false)
            .build(&set.bytes)
            .map_err(|_| BuildFailed)?;
        let mut alphabet = [false; 256];
        for p in &set.bytes {
            for &b in p {
                if let Some(slot) = alphabet.get_mut(usize::from(b)) {
                    *slot = true;
                }
            }
        }
        let classes = alphabet.iter().filter(|&&x| x).count() + 1;
        let dfa_bytes = set
            .total_bytes()
            .saturating_add(2)
            .saturating_mul(classes.next_power_of_two())
            .saturating_mul(4);
        let engine = if dfa_bytes <= DFA_MAX_BYTES {
            match dfa::Builder::new().build_from_noncontiguous(&nnfa) {
                Ok(d) => Engine::Dfa(d),
                Err(_) => contiguous_or(nnfa),
            }
        } else {
            contiguous_or(nnfa)
        };
        let start = match &engine {
            Engine::Dfa(a) => a.start_state(Anchored::No),
            Engine::Contiguous(a) => a.start_state(Anchored::No),
            Engine::Noncontiguous(a) => a.start_state(Anchored::No),
        }
        .map_err(|_| BuildFailed)?;
        let mut extra_owners = set.extra_owners;
        extra_owners.sort_unstable();
        extra_owners.dedup();
        Ok(Some(Pass {
            engine,
            kind,
            info: set.info,
            extra_owners,
            max_len,
            ring_len: max_len.next_power_of_two(),
            start,
        }))
    }

    /// A fresh per-stream state for this pass.
    pub fn state(&self) -> PassState {
        PassState {
            cursor: Cursor {
                sid: self.start,
                fed: 0,
                last_start: 0,
                noise_run: 0,
            },
            ring: if self.kind == PassKind::Normalized {
                vec![0; self.ring_len]
            } else {
                Vec::new()
            },
            norm: Normalizer::new(),
        }
    }

    /// Feeds `chunk` (whose first byte is at absolute offset `base`) and appends every match
    /// that ends inside it to `hits`, in order of end offset.
    pub fn scan(&self, st: &mut PassState, chunk: &[u8], base: u64, hits: &mut Vec<Hit>) {
        match (&self.engine, self.kind) {
            (Engine::Dfa(a), PassKind::Raw) => self.scan_impl::<_, false>(a, st, chunk, base, hits),
            (Engine::Dfa(a), PassKind::Normalized) => {
                self.scan_impl::<_, true>(a, st, chunk, base, hits)
            }
            (Engine::Contiguous(a), PassKind::Raw) => {
                self.scan_impl::<_, false>(a, st, chunk, base, hits)
            }
            (Engine::Contiguous(a), PassKind::Normalized) => {
                self.scan_impl::<_, true>(a, st, chunk, base, hits)
            }
            (Engine::Noncontiguous(a), PassKind::Raw) => {
                self.scan_impl::<_, false>(a, st, chunk, base, hits)
            }
            (Engine::Noncontiguous(a), PassKind::Normalized) => {
                self.scan_impl::<_, true>(a, st, chunk, base, hits)
            }
        }
    }

    #[inline(always)]
    fn scan_impl<A: Automaton, const NORM: bool>(
        &self,
        aut: &A,
        st: &mut PassState,
        chunk: &[u8],
        base: u64,
        hits: &mut Vec<Hit>,
    ) {
        let mut c = st.cursor;
        let mut norm = st.norm;
        let ring = st.ring.as_mut_slice();
        for (p, &b) in (base..).zip(chunk) {
            if !NORM {
                self.feed::<A, false>(aut, &mut c, ring, hits, b, p);
                continue;
            }
            if norm.is_fast(b) {
                self.feed::<A, true>(aut, &mut c, ring, hits, b, p);
                continue;
            }
            let mut released = [(0u8, 0u64); MAX_CSI_PARAMS + 1];
            let mut n = 0usize;
            let dropped = norm.step(b, p, &mut |rb, rp| {
                if let Some(slot) = released.get_mut(n) {
                    *slot = (rb, rp);
                    n += 1;
                }
            });
            for &(rb, rp) in released.iter().take(n) {
                self.feed::<A, true>(aut, &mut c, ring, hits, rb, rp);
            }
            self.noise(&mut c, dropped);
        }
        st.cursor = c;
        st.norm = norm;
    }

    /// Accounts for `dropped` noise bytes: a long enough run ends any partial match.
    #[inline]
    fn noise(&self, c: &mut Cursor, dropped: usize) {
        if dropped == 0 {
            return;
        }
        c.noise_run = c.noise_run.saturating_add(dropped as u32);
        if c.noise_run >= MAX_NOISE_RUN && c.sid != self.start {
            c.sid = self.start;
            c.last_start = c.fed;
        }
    }

    /// Feeds one byte of the pass's view (at original offset `p`) to the automaton.
    #[inline(always)]
    fn feed<A: Automaton, const NORM: bool>(
        &self,
        aut: &A,
        c: &mut Cursor,
        ring: &mut [u64],
        hits: &mut Vec<Hit>,
        b: u8,
        p: u64,
    ) {
        let mask = (self.ring_len - 1) as u64;
        if NORM {
            c.noise_run = 0;
            if let Some(slot) = ring.get_mut((c.fed & mask) as usize) {
                *slot = p;
            }
        }
        c.sid = aut.next_state(Anchored::No, c.sid, b);
        c.fed += 1;
        if aut.is_special(c.sid) && aut.is_match(c.sid) {
            for k in 0..aut.match_len(c.sid) {
                let pattern = aut.match_pattern(c.sid, k).as_u32();
                let len = self
                    .info
                    .get(pattern as usize)
                    .map_or(1, |i| u64::from(i.len));
                let start = if NORM {
                    let idx = (c.fed.saturating_sub(len) & mask) as usize;
                    ring.get(idx).copied().unwrap_or(p)
                } else {
                    (p + 1).saturating_sub(len)
                };
                hits.push(Hit {
                    start,
                    end: p + 1,
                    pattern,
                });
            }
        }
        if c.sid == self.start {
            c.last_start = c.fed;
        }
    }

    /// End of stream: releases bytes the normaliser still holds and reports their matches.
    pub fn finish(&self, st: &mut PassState, hits: &mut Vec<Hit>) {
        if self.kind != PassKind::Normalized {
            return;
        }
        let mut released = Vec::new();
        st.norm.finish(&mut |b, p| released.push((b, p)));
        let mut c = st.cursor;
        let ring = st.ring.as_mut_slice();
        for (b, p) in released {
            match &self.engine {
                Engine::Dfa(a) => self.feed::<_, true>(a, &mut c, ring, hits, b, p),
                Engine::Contiguous(a) => self.feed::<_, true>(a, &mut c, ring, hits, b, p),
                Engine::Noncontiguous(a) => self.feed::<_, true>(a, &mut c, ring, hits, b, p),
            }
        }
        st.cursor = c;
    }

    /// The earliest absolute offset at which a match not yet reported could still start, or
    /// `total` (the end of the input so far) if none can.
    pub fn hold_bound(&self, st: &PassState, total: u64) -> u64 {
        let held = st.norm.held_from().unwrap_or(total).min(total);
        let c = &st.cursor;
        if c.sid == self.start {
            return held;
        }
        let k = c
            .last_start
            .max(c.fed.saturating_sub(self.max_len as u64 - 1));
        if k >= c.fed {
            return held;
        }
        match self.kind {
            PassKind::Raw => k,
            PassKind::Normalized => {
                let mask = (self.ring_len - 1) as u64;
                st.ring
                    .get((k & mask) as usize)
                    .copied()
                    .unwrap_or(total)
                    .min(held)
            }
        }
    }

    /// Every secret owning `pattern` (the first one, then those sharing it).
    pub fn owners(&self, pattern: u32) -> impl Iterator<Item = u32> + '_ {
        let first = self.info.get(pattern as usize).map(|p| p.secret);
        let lo = self.extra_owners.partition_point(|&(p, _)| p < pattern);
        let rest = self
            .extra_owners
            .get(lo..)
            .unwrap_or_default()
            .iter()
            .take_while(move |&&(p, _)| p == pattern)
            .map(|&(_, s)| s);
        first.into_iter().chain(rest)
    }

    /// Heap memory used by the automaton, in bytes.
    pub fn memory_usage(&self) -> usize {
        let aut = match &self.engine {
            Engine::Dfa(a) => a.memory_usage(),
            Engine::Contiguous(a) => a.memory_usage(),
            Engine::Noncontiguous(a) => a.memory_usage(),
        };
        aut + self.info.len() * std::mem::size_of::<PatternInfo>()
    }

    /// Name of the automaton kind in use (for benchmarks and diagnostics).
    pub fn engine_name(&self) -> &'static str {
        match self.engine {
            Engine::Dfa(_) => "dfa",
            Engine::Contiguous(_) => "contiguous-nfa",
            Engine::Noncontiguous(_) => "noncontiguous-nfa",
        }
    }
}

fn contiguous_or(nnfa: noncontiguous::NFA) -> Engine {
    match contiguous::Builder::new().build_from_noncontiguous(&nnfa) {
        Ok(c) => Engine::Contiguous(c),
        Err(_) => Engine::Noncontiguous(nnfa),
    }
}

/// Per-stream state of one pass.
#[derive(Clone, Debug)]
pub(crate) struct PassState {
    cursor: Cursor,
    /// Original offset of each of the last `ring_len` normalised bytes.
    ring: Vec<u64>,
    norm: Normalizer,
}

/// The automaton's position in a stream.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    sid: StateID,
    /// Bytes fed to the automaton so far (for the normalised pass: normalised bytes).
    fed: u64,
    /// Value of `fed` the last time the automaton was in its start state.
    last_start: u64,
    /// Consecutive noise bytes just dropped.
    noise_run: u32,
}

/// A pattern occurrence in absolute original-byte offsets (`start..end`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hit {
    pub start: u64,
    pub end: u64,
    pub pattern: u32,
}
