//! Pattern tables and the two automata that find them.
//!
//! All patterns of all secrets go into at most two Aho-Corasick automata (standard match
//! semantics, so *every* occurrence of every pattern is reported, overlapping ones included):
//!
//! - the **normalised pass** runs over the normalised view of the output
//!   ([`crate::normalize`]: whitespace and colour codes removed) and holds every pattern whose
//!   normalised form is at least [`MIN_LEN`] bytes. Matches are mapped back to original byte
//!   offsets through a ring buffer, so a match covers the noise inside it (line wrapping,
//!   hexdump spacing, colour codes, values interleaved with spaces, lines joined by any
//!   whitespace run).
//! - the **raw pass** runs over the original bytes and holds the patterns of short values
//!   (matched only as whole tokens) and the rare patterns that normalisation would shrink below
//!   [`MIN_LEN`] or that escape bytes could hide from the normalised view.
//!
//! The raw pass (usually empty or tiny) is a classic unanchored Aho-Corasick scan. The
//! normalised pass is *filtered*: every normalised offset whose next [`Q`] bytes are the first
//! [`Q`] bytes of some pattern (a hashed bitmap, [`PrefixFilter`]) starts a *walk* of the sorted
//! pattern table ([`SortedPatterns`]), narrowing with each following byte the range of patterns
//! that still agree with the output and reporting each one completed. Since all its patterns
//! are at least [`MIN_LEN`] ≥ [`Q`] bytes long, no occurrence is missed; ordinary text costs one
//! bitmap probe per byte, and building needs no automaton (a sort).
//!
//! Both passes consume one byte at a time with their state kept between chunks, so the matches
//! found do not depend on how the output is split.

use crate::normalize::{
    CLASS_ESC, CLASS_PLAIN, MAX_CSI_PARAMS, Normalizer, byte_class, normalized_forms,
};
use crate::{MAX_NOISE_RUN, MIN_LEN};
use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::nfa::{contiguous, noncontiguous};
use aho_corasick::{Anchored, MatchKind, dfa};

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

/// The patterns of one pass, before deduplication and building.
#[derive(Debug, Default)]
pub(crate) struct PatternSet {
    /// `(bytes, secret, token)`; duplicates allowed.
    entries: Vec<(Vec<u8>, u32, bool)>,
}

/// Deduplicated patterns in byte-lexicographic order, with their owners.
struct Deduped {
    bytes: Vec<Vec<u8>>,
    info: Vec<PatternInfo>,
    /// Further secrets sharing a pattern with a lower-numbered one: `(pattern, secret)`, sorted.
    extra_owners: Vec<(u32, u32)>,
}

impl PatternSet {
    fn add(&mut self, bytes: Vec<u8>, secret: u32, token: bool) {
        if !bytes.is_empty() && u32::try_from(bytes.len()).is_ok() {
            self.entries.push((bytes, secret, token));
        }
    }

    /// Sorts and deduplicates: a pattern belongs to the lowest-numbered secret that produced it
    /// (the others are kept as extra owners), and is token-only if every producer wanted that.
    fn dedup(mut self) -> Deduped {
        self.entries.sort_unstable();
        let mut out = Deduped {
            bytes: Vec::new(),
            info: Vec::new(),
            extra_owners: Vec::new(),
        };
        for (bytes, secret, token) in self.entries {
            if out.bytes.last() == Some(&bytes) {
                let id = (out.bytes.len() - 1) as u32;
                if let Some(info) = out.info.last_mut() {
                    if info.secret != secret {
                        out.extra_owners.push((id, secret));
                    }
                    info.token &= token;
                }
                continue;
            }
            out.info.push(PatternInfo {
                secret,
                len: bytes.len() as u32,
                token,
            });
            out.bytes.push(bytes);
        }
        out.extra_owners.dedup();
        out
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
            || !p.iter().all(|&b| {
                self.marker_bytes
                    .get(usize::from(b))
                    .copied()
                    .unwrap_or(false)
            })
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
        let forms = normalized_forms(bytes);
        if forms.first().is_some_and(|plain| plain.len() >= MIN_LEN) {
            for n in forms {
                if n.len() >= MIN_LEN && !self.forbidden(&n) {
                    self.normalized.add(n, secret, false);
                }
            }
        } else if bytes.len() >= MIN_LEN && !self.forbidden(bytes) {
            // Mostly whitespace: too short once normalised, so matched on the raw bytes.
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

/// Length of the prefix the normalised pass filters on.
pub(crate) const Q: usize = 4;

/// The raw pass's automaton.
#[derive(Clone, Debug)]
pub(crate) enum Engine {
    Dfa(dfa::DFA),
    Contiguous(contiguous::NFA),
    Noncontiguous(noncontiguous::NFA),
}

const HASH_MUL: u32 = 0x9e37_79b1;
const THREE_BITS: u32 = 16;

fn set_bit(bits: &mut [u64], i: usize) {
    if let Some(w) = bits.get_mut(i / 64) {
        *w |= 1 << (i % 64);
    }
}

#[inline(always)]
fn get_bit(bits: &[u64], i: usize) -> bool {
    bits.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

/// Which pattern prefixes exist, for the normalised pass.
///
/// `four` is a bitmap over a multiplicative hash of the first [`Q`] bytes of every pattern
/// (about 1 bit in 32 set: false positives only cost a table lookup). `one`, `two` and `three`
/// answer "could the last 1–3 bytes start a pattern?" so that a stream holds back nothing at the
/// end of ordinary output (`one` and `two` exact, `three` hashed).
#[derive(Clone, Debug)]
pub(crate) struct PrefixFilter {
    four: Vec<u64>,
    shift: u32,
    one: [bool; 256],
    two: Vec<u64>,
    three: Vec<u64>,
}

impl PrefixFilter {
    fn build(prefixes: &[u32]) -> PrefixFilter {
        let bits = (prefixes.len() * 32)
            .next_power_of_two()
            .clamp(1 << 12, 1 << 24);
        let mut f = PrefixFilter {
            four: vec![0; bits / 64],
            shift: 32 - bits.trailing_zeros(),
            one: [false; 256],
            two: vec![0; 65536 / 64],
            three: vec![0; (1 << THREE_BITS) / 64],
        };
        for &w in prefixes {
            let h = f.hash4(w);
            set_bit(&mut f.four, h);
            let [a, b, c, _] = w.to_be_bytes();
            if let Some(slot) = f.one.get_mut(usize::from(a)) {
                *slot = true;
            }
            set_bit(&mut f.two, usize::from(u16::from_be_bytes([a, b])));
            set_bit(&mut f.three, Self::hash3(u32::from_be_bytes([0, a, b, c])));
        }
        f
    }

    #[inline(always)]
    fn hash4(&self, w: u32) -> usize {
        (w.wrapping_mul(HASH_MUL) >> self.shift) as usize
    }

    fn hash3(w: u32) -> usize {
        (w.wrapping_mul(HASH_MUL) >> (32 - THREE_BITS)) as usize
    }

    /// Could a pattern start with the last `n` (1 to 3) bytes of `w`?
    fn maybe_short(&self, w: u32, n: usize) -> bool {
        let [_, a, b, c] = w.to_be_bytes();
        match n {
            1 => self.one.get(usize::from(c)).copied().unwrap_or(true),
            2 => get_bit(&self.two, usize::from(u16::from_be_bytes([b, c]))),
            _ => get_bit(&self.three, Self::hash3(u32::from_be_bytes([0, a, b, c]))),
        }
    }

    fn memory_usage(&self) -> usize {
        (self.four.len() + self.two.len() + self.three.len()) * 8 + 256
    }
}

/// The normalised pass's patterns, sorted, in one arena, with an index from each [`Q`]-byte
/// prefix to the range of patterns that start with it.
#[derive(Clone, Debug)]
pub(crate) struct SortedPatterns {
    arena: Vec<u8>,
    /// `offsets[i]..offsets[i + 1]` is pattern `i` in `arena`.
    offsets: Vec<u32>,
    /// Open-addressing table: `(prefix, lo, hi)`, empty slots have `lo == hi`.
    slots: Vec<(u32, u32, u32)>,
    slot_shift: u32,
}

impl SortedPatterns {
    /// `bytes` must be sorted, deduplicated and at least [`Q`] bytes each.
    fn build(bytes: &[Vec<u8>]) -> (SortedPatterns, Vec<u32>) {
        let mut arena = Vec::with_capacity(bytes.iter().map(Vec::len).sum());
        let mut offsets = Vec::with_capacity(bytes.len() + 1);
        offsets.push(0);
        let mut ranges: Vec<(u32, u32, u32)> = Vec::new();
        for (i, p) in bytes.iter().enumerate() {
            arena.extend_from_slice(p);
            offsets.push(arena.len() as u32);
            let prefix = prefix_of(p);
            match ranges.last_mut() {
                Some(r) if r.0 == prefix => r.2 = i as u32 + 1,
                _ => ranges.push((prefix, i as u32, i as u32 + 1)),
            }
        }
        let size = (ranges.len() * 2).next_power_of_two().max(16);
        let mut t = SortedPatterns {
            arena,
            offsets,
            slots: vec![(0, 0, 0); size],
            slot_shift: 32 - size.trailing_zeros(),
        };
        let mask = size - 1;
        for &(prefix, lo, hi) in &ranges {
            let mut h = (prefix.wrapping_mul(HASH_MUL) >> t.slot_shift) as usize;
            while t.slots.get(h).is_some_and(|s| s.1 != s.2) {
                h = (h + 1) & mask;
            }
            if let Some(slot) = t.slots.get_mut(h) {
                *slot = (prefix, lo, hi);
            }
        }
        let prefixes = ranges.iter().map(|r| r.0).collect();
        (t, prefixes)
    }

    /// The range of patterns starting with `prefix`, if any.
    #[inline]
    fn range(&self, prefix: u32) -> Option<(u32, u32)> {
        let mask = self.slots.len() - 1;
        let mut h = (prefix.wrapping_mul(HASH_MUL) >> self.slot_shift) as usize;
        loop {
            let &(p, lo, hi) = self.slots.get(h)?;
            if lo == hi {
                return None;
            }
            if p == prefix {
                return Some((lo, hi));
            }
            h = (h + 1) & mask;
        }
    }

    #[inline]
    fn get(&self, i: u32) -> &[u8] {
        let a = self.offsets.get(i as usize).copied().unwrap_or(0) as usize;
        let b = self.offsets.get(i as usize + 1).copied().unwrap_or(0) as usize;
        self.arena.get(a..b).unwrap_or_default()
    }

    fn memory_usage(&self) -> usize {
        self.arena.len() + self.offsets.len() * 4 + self.slots.len() * 12
    }
}

fn prefix_of(p: &[u8]) -> u32 {
    p.get(..Q)
        .and_then(|x| <[u8; Q]>::try_from(x).ok())
        .map_or(0, u32::from_be_bytes)
}

/// How a pass finds its patterns.
#[derive(Clone, Debug)]
enum Finder {
    /// Unanchored Aho-Corasick over every byte; `start` is its start state.
    Automaton { engine: Engine, start: StateID },
    /// Prefix filter and walks of the sorted table, over the normalised view.
    Filtered {
        filter: PrefixFilter,
        table: SortedPatterns,
    },
}

/// One built pass: finder plus pattern table.
#[derive(Clone, Debug)]
pub(crate) struct Pass {
    finder: Finder,
    pub kind: PassKind,
    pub info: Vec<PatternInfo>,
    pub extra_owners: Vec<(u32, u32)>,
    pub max_len: usize,
    ring_len: usize,
}

/// Error building an automaton (only for absurd pattern sets: billions of states).
#[derive(Debug)]
pub(crate) struct BuildFailed;

impl Pass {
    /// Builds a pass for a pattern set; `None` for an empty set.
    pub fn build(set: PatternSet, kind: PassKind) -> Result<Option<Pass>, BuildFailed> {
        let d = set.dedup();
        if d.bytes.is_empty() {
            return Ok(None);
        }
        let max_len = d.bytes.iter().map(Vec::len).max().unwrap_or(1);
        let finder = match kind {
            PassKind::Normalized => {
                let (table, prefixes) = SortedPatterns::build(&d.bytes);
                Finder::Filtered {
                    filter: PrefixFilter::build(&prefixes),
                    table,
                }
            }
            PassKind::Raw => build_automaton(&d.bytes)?,
        };
        Ok(Some(Pass {
            finder,
            kind,
            info: d.info,
            extra_owners: d.extra_owners,
            max_len,
            ring_len: (max_len + Q).next_power_of_two(),
        }))
    }

    /// A fresh per-stream state for this pass.
    pub fn state(&self) -> PassState {
        let sid = match &self.finder {
            Finder::Automaton { start, .. } => Some(*start),
            Finder::Filtered { .. } => None,
        };
        PassState {
            cursor: Cursor {
                sid,
                fed: 0,
                last_start: 0,
                noise_run: 0,
                window: 0,
                window_len: 0,
            },
            ring: if self.kind == PassKind::Normalized {
                vec![0; self.ring_len]
            } else {
                Vec::new()
            },
            norm: Normalizer::new(),
            walks: Vec::new(),
        }
    }

    /// Feeds `chunk` (whose first byte is at absolute offset `base`) and appends every match
    /// that ends inside it to `hits`, in order of end offset.
    pub fn scan(&self, st: &mut PassState, chunk: &[u8], base: u64, hits: &mut Vec<Hit>) {
        match &self.finder {
            Finder::Automaton { engine, start } => match engine {
                Engine::Dfa(a) => self.scan_raw(a, *start, st, chunk, base, hits),
                Engine::Contiguous(a) => self.scan_raw(a, *start, st, chunk, base, hits),
                Engine::Noncontiguous(a) => self.scan_raw(a, *start, st, chunk, base, hits),
            },
            Finder::Filtered { filter, table } => {
                self.scan_filtered(filter, table, st, chunk, base, hits);
            }
        }
    }

    /// The raw pass: unanchored Aho-Corasick over every byte.
    fn scan_raw<A: Automaton>(
        &self,
        aut: &A,
        start: StateID,
        st: &mut PassState,
        chunk: &[u8],
        base: u64,
        hits: &mut Vec<Hit>,
    ) {
        let mut c = st.cursor;
        let mut sid = c.sid.unwrap_or(start);
        for (p, &b) in (base..).zip(chunk) {
            sid = aut.next_state(Anchored::No, sid, b);
            c.fed += 1;
            if aut.is_special(sid) && aut.is_match(sid) {
                for k in 0..aut.match_len(sid) {
                    let pattern = aut.match_pattern(sid, k).as_u32();
                    let len = self
                        .info
                        .get(pattern as usize)
                        .map_or(1, |i| u64::from(i.len));
                    hits.push(Hit {
                        start: (p + 1).saturating_sub(len),
                        end: p + 1,
                        pattern,
                    });
                }
            }
            if sid == start {
                c.last_start = c.fed;
            }
        }
        c.sid = Some(sid);
        st.cursor = c;
    }

    /// The normalised pass: normalise, filter on prefixes, walk the sorted table.
    fn scan_filtered(
        &self,
        filter: &PrefixFilter,
        table: &SortedPatterns,
        st: &mut PassState,
        chunk: &[u8],
        base: u64,
        hits: &mut Vec<Hit>,
    ) {
        let mut c = st.cursor;
        let mut norm = st.norm;
        let ring = st.ring.as_mut_slice();
        let walks = &mut st.walks;
        let mut i = 0usize;
        while i < chunk.len() {
            if walks.is_empty() && norm.is_ground() {
                // Hot loop: ordinary bytes and whitespace, no walk in progress. Everything it
                // touches is hoisted into locals so that it stays in registers.
                let mut fed = c.fed;
                let mut window = c.window;
                let mut window_len = u32::from(c.window_len);
                let mut noise_run = c.noise_run;
                let four = filter.four.as_slice();
                let shift = filter.shift;
                let rest = chunk.get(i..).unwrap_or_default();
                let mut taken = 0usize;
                // Both lengths are powers of two: masking lets the compiler drop bounds checks.
                let ring_mask = ring.len().wrapping_sub(1);
                let four_mask = four.len().wrapping_sub(1);
                for (pos, &b) in (base + i as u64..).zip(rest) {
                    // Branch-free on whitespace (word boundaries are unpredictable): a space
                    // leaves `fed` and `window` unchanged, and its ring slot is overwritten by
                    // the next kept byte.
                    let class = byte_class(b);
                    if class == CLASS_ESC {
                        break;
                    }
                    let keep = u32::from(class == CLASS_PLAIN);
                    let keep_mask = keep.wrapping_neg();
                    if let Some(slot) = ring.get_mut(fed as usize & ring_mask) {
                        *slot = pos;
                    }
                    taken += 1;
                    fed += u64::from(keep);
                    window = (window & !keep_mask) | (((window << 8) | u32::from(b)) & keep_mask);
                    noise_run = (noise_run + 1).min(MAX_NOISE_RUN) & !keep_mask;
                    let ready = keep & u32::from(window_len >= Q as u32 - 1);
                    window_len = (window_len + keep).min(Q as u32);
                    if noise_run >= MAX_NOISE_RUN {
                        window_len = 0;
                    }
                    // Probe unconditionally; the only branch left is on the (rare) hit.
                    let h = (window.wrapping_mul(HASH_MUL) >> shift) as usize;
                    let word = four.get((h / 64) & four_mask).copied().unwrap_or(0);
                    let bit = ((word >> (h % 64)) & 1) as u32;
                    if bit & ready != 0 && start_walk(table, window, fed, walks) {
                        break;
                    }
                }
                i += taken;
                let window_len = window_len as u8;
                c.fed = fed;
                c.window = window;
                c.window_len = window_len;
                c.noise_run = noise_run;
                if taken > 0 {
                    continue;
                }
            }
            let Some(&b) = chunk.get(i) else { break };
            let p = base + i as u64;
            i += 1;
            if norm.is_fast(b) {
                self.feed(filter, table, &mut c, ring, walks, hits, b, p);
            } else {
                self.slow_byte(filter, table, &mut c, &mut norm, ring, walks, hits, b, p);
            }
        }
        st.cursor = c;
        st.norm = norm;
    }

    /// A byte that is noise, or that the normaliser holds or releases.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn slow_byte(
        &self,
        filter: &PrefixFilter,
        table: &SortedPatterns,
        c: &mut Cursor,
        norm: &mut Normalizer,
        ring: &mut [u64],
        walks: &mut Vec<Walk>,
        hits: &mut Vec<Hit>,
        b: u8,
        p: u64,
    ) {
        let mut released = [(0u8, 0u64); MAX_CSI_PARAMS + 1];
        let mut n = 0usize;
        let dropped = norm.step(b, p, &mut |rb, rp| {
            if let Some(slot) = released.get_mut(n) {
                *slot = (rb, rp);
                n += 1;
            }
        });
        for &(rb, rp) in released.iter().take(n) {
            self.feed(filter, table, c, ring, walks, hits, rb, rp);
        }
        if dropped > 0 {
            c.noise_run = c.noise_run.saturating_add(dropped as u32);
            if c.noise_run >= MAX_NOISE_RUN {
                // A long run of noise ends every partial match.
                walks.clear();
                c.window_len = 0;
            }
        }
    }

    /// Feeds one byte of the normalised view (at original offset `p`): advances the walks in
    /// progress, then checks whether a new walk starts [`Q`] bytes back.
    #[allow(clippy::too_many_arguments)]
    fn feed(
        &self,
        filter: &PrefixFilter,
        table: &SortedPatterns,
        c: &mut Cursor,
        ring: &mut [u64],
        walks: &mut Vec<Walk>,
        hits: &mut Vec<Hit>,
        b: u8,
        p: u64,
    ) {
        let mask = (self.ring_len - 1) as u64;
        if let Some(slot) = ring.get_mut((c.fed & mask) as usize) {
            *slot = p;
        }
        c.fed += 1;
        c.window = (c.window << 8) | u32::from(b);
        c.noise_run = 0;
        let mut i = 0;
        while let Some(w) = walks.get_mut(i) {
            if !advance(table, w, b) {
                walks.swap_remove(i);
                continue;
            }
            // Patterns completed by this byte come first in the narrowed range.
            let mut k = w.lo;
            while k < w.hi && table.get(k).len() == w.depth as usize {
                hits.push(Hit {
                    start: ring.get((w.start & mask) as usize).copied().unwrap_or(p),
                    end: p + 1,
                    pattern: k,
                });
                k += 1;
            }
            i += 1;
        }
        if c.window_len >= Q as u8 - 1 {
            c.window_len = Q as u8;
            if get_bit(&filter.four, filter.hash4(c.window)) {
                start_walk(table, c.window, c.fed, walks);
            }
        } else {
            c.window_len += 1;
        }
    }

    /// End of stream: releases bytes the normaliser still holds and reports their matches.
    pub fn finish(&self, st: &mut PassState, hits: &mut Vec<Hit>) {
        let Finder::Filtered { filter, table } = &self.finder else {
            return;
        };
        let mut released = Vec::new();
        st.norm.finish(&mut |b, p| released.push((b, p)));
        let mut c = st.cursor;
        let ring = st.ring.as_mut_slice();
        let walks = &mut st.walks;
        for (b, p) in released {
            self.feed(filter, table, &mut c, ring, walks, hits, b, p);
        }
        st.cursor = c;
    }

    /// The earliest absolute offset at which a match not yet reported could still start, or
    /// `total` (the end of the input so far) if none can.
    pub fn hold_bound(&self, st: &PassState, total: u64) -> u64 {
        let c = &st.cursor;
        match &self.finder {
            Finder::Automaton { start, .. } => {
                if c.sid.is_none_or(|s| s == *start) {
                    return total;
                }
                let k = c
                    .last_start
                    .max(c.fed.saturating_sub(self.max_len as u64 - 1));
                if k >= c.fed { total } else { k.min(total) }
            }
            Finder::Filtered { filter, .. } => {
                let mask = (self.ring_len - 1) as u64;
                let at = |idx: u64| st.ring.get((idx & mask) as usize).copied().unwrap_or(0);
                let mut bound = st.norm.held_from().unwrap_or(total).min(total);
                if let Some(w) = st.walks.iter().map(|w| w.start).min() {
                    bound = bound.min(at(w));
                }
                // Offsets among the last Q-1 normalised bytes not yet checked as candidates.
                let pending = usize::from(c.window_len).min(Q - 1);
                for n in (1..=pending).rev() {
                    if filter.maybe_short(c.window, n) {
                        bound = bound.min(at(c.fed - n as u64));
                        break;
                    }
                }
                bound
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

    /// Heap memory used by the finder and pattern table, in bytes.
    pub fn memory_usage(&self) -> usize {
        let finder = match &self.finder {
            Finder::Automaton { engine, .. } => match engine {
                Engine::Dfa(a) => a.memory_usage(),
                Engine::Contiguous(a) => a.memory_usage(),
                Engine::Noncontiguous(a) => a.memory_usage(),
            },
            Finder::Filtered { filter, table } => filter.memory_usage() + table.memory_usage(),
        };
        finder + self.info.len() * std::mem::size_of::<PatternInfo>()
    }

    /// Name of the finder in use (for benchmarks and diagnostics).
    pub fn engine_name(&self) -> &'static str {
        match &self.finder {
            Finder::Automaton { engine, .. } => match engine {
                Engine::Dfa(_) => "dfa",
                Engine::Contiguous(_) => "contiguous-nfa",
                Engine::Noncontiguous(_) => "noncontiguous-nfa",
            },
            Finder::Filtered { .. } => "prefix-filter+sorted-table",
        }
    }
}

/// Starts a walk for the [`Q`] bytes of `window` ending at normalised index `fed`; returns
/// whether one was started (some pattern begins with them).
#[inline(never)]
fn start_walk(table: &SortedPatterns, window: u32, fed: u64, walks: &mut Vec<Walk>) -> bool {
    match table.range(window) {
        Some((lo, hi)) => {
            walks.push(Walk {
                start: fed - Q as u64,
                lo,
                hi,
                depth: Q as u32,
            });
            true
        }
        None => false,
    }
}

/// Narrows a walk by its next byte; false if no pattern agrees any more.
#[inline]
fn advance(table: &SortedPatterns, w: &mut Walk, b: u8) -> bool {
    let d = w.depth as usize;
    // Patterns exactly `d` long were completed (and reported) by the previous byte.
    let mut lo = w.lo;
    while lo < w.hi && table.get(lo).len() == d {
        lo += 1;
    }
    // Among the rest, byte `d` is sorted.
    let span = w.hi - lo;
    let first = lo + partition(span, |k| table.get(lo + k).get(d).is_some_and(|&x| x < b));
    let end = lo + partition(span, |k| table.get(lo + k).get(d).is_some_and(|&x| x <= b));
    if first == end {
        return false;
    }
    w.lo = first;
    w.hi = end;
    w.depth += 1;
    true
}

/// The first `k` in `0..n` for which `pred(k)` is false (`pred` must be true then false).
#[inline]
fn partition(n: u32, pred: impl Fn(u32) -> bool) -> u32 {
    let (mut lo, mut hi) = (0u32, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The raw pass's automaton: a DFA while small, else a contiguous NFA.
fn build_automaton(bytes: &[Vec<u8>]) -> Result<Finder, BuildFailed> {
    let nnfa = noncontiguous::Builder::new()
        .match_kind(MatchKind::Standard)
        .prefilter(false)
        .build(bytes)
        .map_err(|_| BuildFailed)?;
    let mut alphabet = [false; 256];
    for p in bytes {
        for &b in p {
            if let Some(slot) = alphabet.get_mut(usize::from(b)) {
                *slot = true;
            }
        }
    }
    let classes = alphabet.iter().filter(|&&x| x).count() + 1;
    let total: usize = bytes.iter().map(Vec::len).sum();
    let dfa_bytes = total
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
    Ok(Finder::Automaton { engine, start })
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
    /// Walks in progress (normalised pass).
    walks: Vec<Walk>,
}

/// The pass's position in a stream.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    /// Automaton state (raw pass).
    sid: Option<StateID>,
    /// Bytes fed so far (for the normalised pass: normalised bytes).
    fed: u64,
    /// Value of `fed` the last time the automaton was in its start state (raw pass).
    last_start: u64,
    /// Consecutive noise bytes just dropped (normalised pass).
    noise_run: u32,
    /// The last four normalised bytes, most recent in the low byte.
    window: u32,
    /// How many of them are valid (0 to [`Q`]).
    window_len: u8,
}

/// A walk of the sorted pattern table from a candidate offset: the patterns in `lo..hi` all
/// agree with the `depth` normalised bytes from `start` on.
#[derive(Clone, Copy, Debug)]
struct Walk {
    /// Normalised index of the walk's first byte.
    start: u64,
    lo: u32,
    hi: u32,
    depth: u32,
}

/// A pattern occurrence in absolute original-byte offsets (`start..end`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hit {
    pub start: u64,
    pub end: u64,
    pub pattern: u32,
}
