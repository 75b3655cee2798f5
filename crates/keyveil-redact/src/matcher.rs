//! Pattern tables and the two finders that search them.
//!
//! All patterns of all secrets go into at most two passes, each of which reports *every*
//! occurrence of every pattern, overlapping ones included:
//!
//! - the **normalised pass** runs over the normalised view of the output
//!   ([`crate::normalize`]: whitespace and colour codes removed) and holds every pattern whose
//!   normalised form is at least [`MIN_LEN`] bytes. Matches are reported in original byte
//!   offsets, so a match covers the noise inside it (line wrapping, hexdump spacing, colour
//!   codes, values interleaved with spaces, lines joined by any whitespace run).
//! - the **raw pass** runs over the original bytes and holds the patterns of short values
//!   (matched only as whole tokens) and the rare patterns that normalisation would shrink below
//!   [`MIN_LEN`] or that escape bytes could hide from the normalised view.
//!
//! The raw pass (usually empty or tiny) starts a walk of its sorted table at every byte that
//! begins some pattern ([`RawTable`]). The
//! normalised pass is *filtered*: every normalised offset whose next [`Q`] bytes are the first
//! [`Q`] bytes of some pattern (a hashed bitmap, [`PrefixFilter`]) starts a *walk* of the sorted
//! pattern table ([`SortedPatterns`]), narrowing with each following byte the range of patterns
//! that still agree with the output and reporting each one completed. Building needs no
//! automaton (a sort).
//!
//! Ordinary output (no walk in progress, no escape sequence) is processed in blocks
//! ([`Pass::scan_block`]): the block is compacted into its normalised bytes, and the
//! [`Q`]-grams at every *stride*-th compact position are probed against a second bitmap that
//! holds the [`Q`]-grams at offsets `0..stride` of every pattern. The stride is the shortest
//! pattern's length − [`Q`] + 1 (5 to 13; 9 when the shortest patterns are the 12-byte
//! fragments of random tokens), so every occurrence contains a probed position; the offsets a
//! hit may have started at are then checked exactly. So ordinary text costs one store per byte
//! and one probe per stride of normalised bytes. Near partial
//! matches and escape bytes the pass goes byte by byte ([`feed`]), probing every offset.
//!
//! Both passes keep their state between chunks and find every occurrence whichever path they
//! take, so the matches found do not depend on how the output is split.

use crate::normalize::{
    ESC, MAX_CSI_PARAMS, Normalizer, fold_percent_hex, fold_view, is_space, is_special,
    normalized_forms,
};
use crate::{MAX_NOISE_RUN, MIN_LEN};
use zeroize::Zeroize;

/// Where an occurrence of a pattern counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Scope {
    /// Anywhere.
    Anywhere,
    /// Only bounded by non-alphanumeric bytes (or the start/end of the stream): short values.
    Token,
    /// Only starting right after a colour code (the byte after its final `m`/`K`): the view of
    /// a fragment whose first bytes a colour code before it would take as its own.
    AfterColourCode,
}

impl Scope {
    /// The scope of a pattern produced with both scopes: the wider one.
    fn widest(self, other: Scope) -> Scope {
        if self == other { self } else { Scope::Anywhere }
    }
}

/// What a pattern stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PatternInfo {
    /// Index of the (first) secret that produced the pattern.
    pub secret: u32,
    /// Pattern length in bytes (in the pass's own view).
    pub len: u32,
    /// Where its occurrences count.
    pub scope: Scope,
}

/// Which pass a pattern belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PassKind {
    Raw,
    Normalized,
}

/// The patterns of one pass, before deduplication and building.
#[derive(Default)]
pub(crate) struct PatternSet {
    /// `(bytes, secret, scope)`; duplicates allowed.
    entries: Vec<(Vec<u8>, u32, Scope)>,
}

impl std::fmt::Debug for PatternSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatternSet")
            .field("patterns", &self.entries.len())
            .finish()
    }
}

impl Drop for PatternSet {
    fn drop(&mut self) {
        for (bytes, _, _) in &mut self.entries {
            bytes.zeroize();
        }
    }
}

/// Deduplicated patterns in byte-lexicographic order, with their owners.
struct Deduped {
    bytes: Vec<Vec<u8>>,
    info: Vec<PatternInfo>,
    /// Further secrets sharing a pattern with a lower-numbered one: `(pattern, secret)`, sorted.
    extra_owners: Vec<(u32, u32)>,
}

impl PatternSet {
    fn add(&mut self, bytes: Vec<u8>, secret: u32, scope: Scope) {
        if !bytes.is_empty() && u32::try_from(bytes.len()).is_ok() {
            self.entries.push((bytes, secret, scope));
        }
    }

    /// Sorts and deduplicates: a pattern belongs to the lowest-numbered secret that produced it
    /// (the others are kept as extra owners), and is token-only if every producer wanted that.
    fn dedup(mut self) -> Deduped {
        // Sort by (first 8 bytes, then the rest): comparing a u64 key in a compact array is far
        // cheaper than chasing every pattern's allocation for a `memcmp`.
        let prefix8 = |b: &[u8]| {
            let mut k = [0u8; 8];
            for (d, s) in k.iter_mut().zip(b) {
                *d = *s;
            }
            u64::from_be_bytes(k)
        };
        let mut order: Vec<(u64, u32)> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (prefix8(&e.0), i as u32))
            .collect();
        let entries = &self.entries;
        let full = |i: u32| entries.get(i as usize).map(|e| (&e.0[..], e.1, e.2));
        order.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| full(a.1).cmp(&full(b.1))));
        let mut slots: Vec<Option<(Vec<u8>, u32, Scope)>> = std::mem::take(&mut self.entries)
            .into_iter()
            .map(Some)
            .collect();
        self.entries = order
            .iter()
            .filter_map(|&(_, i)| slots.get_mut(i as usize).and_then(Option::take))
            .collect();
        let mut out = Deduped {
            bytes: Vec::new(),
            info: Vec::new(),
            extra_owners: Vec::new(),
        };
        for (mut bytes, secret, scope) in std::mem::take(&mut self.entries) {
            if out.bytes.last() == Some(&bytes) {
                bytes.zeroize();
                let id = (out.bytes.len() - 1) as u32;
                if let Some(info) = out.info.last_mut() {
                    if info.secret != secret {
                        out.extra_owners.push((id, secret));
                    }
                    info.scope = info.scope.widest(scope);
                }
                continue;
            }
            out.info.push(PatternInfo {
                secret,
                len: bytes.len() as u32,
                scope,
            });
            out.bytes.push(bytes);
        }
        out.extra_owners.dedup();
        out
    }
}

impl Drop for Deduped {
    fn drop(&mut self) {
        for b in &mut self.bytes {
            b.zeroize();
        }
    }
}

/// Collects the patterns of all secrets into the two passes.
#[derive(Default)]
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
        self.add_views(bytes, secret, Scope::Anywhere);
    }

    /// Adds a fragment of a value ([`crate::FRAGMENT_LEN`] bytes, or its hex): like
    /// [`Patterns::add_anywhere`], except that the views a colour code before the fragment
    /// would shorten (its first bytes, `K` or `12m`, complete an `ESC [` printed before it)
    /// count only where they start right after a colour code ([`Scope::AfterColourCode`]).
    /// Anywhere else such a view is a run of fewer than 12 value bytes, which the fragment rule
    /// does not cover; keeping it out of the block path's probes keeps the shortest pattern,
    /// and so the probe distance, at 12 bytes for random tokens. A fragment with whitespace or
    /// `ESC` inside has views shortened in other ways: they all count anywhere.
    pub fn add_fragment(&mut self, bytes: &[u8], secret: u32) {
        let shortened = if bytes.iter().any(|&b| is_special(b)) {
            Scope::Anywhere
        } else {
            Scope::AfterColourCode
        };
        self.add_views(bytes, secret, shortened);
    }

    /// Registers every view of `bytes` ([`normalized_forms`]): in the normalised pass, the
    /// views shorter than the plain one with scope `shortened`; views too short for it (or a
    /// value that is mostly whitespace) as the raw bytes in the raw pass.
    fn add_views(&mut self, bytes: &[u8], secret: u32, shortened: Scope) {
        let forms = normalized_forms(bytes);
        let plain = forms.first().map_or(0, Vec::len);
        if plain >= MIN_LEN {
            let mut shrunk = false;
            for mut n in forms {
                if n.len() >= MIN_LEN && !self.forbidden(&n) {
                    let scope = if n.len() < plain {
                        shortened
                    } else {
                        Scope::Anywhere
                    };
                    self.normalized.add(n, secret, scope);
                } else {
                    shrunk |= n.len() < MIN_LEN;
                    n.zeroize();
                }
            }
            if shrunk && !self.forbidden(bytes) {
                // Printed after `ESC [`, the value would mostly turn into a colour code
                // (`ESC [` + `%30<((((m` + 2 bytes): its raw bytes are matched as well.
                self.raw.add(bytes.to_vec(), secret, Scope::Anywhere);
            }
        } else if bytes.len() >= MIN_LEN && !self.forbidden(bytes) {
            // Mostly whitespace: too short once normalised, so matched on the raw bytes.
            self.raw.add(bytes.to_vec(), secret, Scope::Anywhere);
        }
    }

    /// Adds a pattern that only matches as a whole token.
    pub fn add_token(&mut self, bytes: &[u8], secret: u32) {
        if !bytes.is_empty() && !self.forbidden(bytes) {
            self.raw.add(bytes.to_vec(), secret, Scope::Token);
        }
    }
}

/// Length of the prefix the normalised pass filters on.
pub(crate) const Q: usize = 4;

/// The raw pass's table: its patterns sorted, and for every byte the range of patterns that
/// begin with it. A walk starts at every byte that begins some pattern and is narrowed by each
/// following byte as in the normalised pass, so every occurrence is reported, overlapping ones
/// included. Raw patterns are few and short (short values and their escapes), so few walks are
/// ever in progress.
#[derive(Clone)]
pub(crate) struct RawTable {
    table: SortedPatterns,
    /// `first[b]` = `[lo, hi]`: the patterns starting with byte `b`.
    first: Vec<[u32; 2]>,
    /// The bytes that begin some pattern, when there are at most six (two `memchr3` groups):
    /// with no walk in progress the scan jumps to the next of them. `None`: every byte is
    /// looked at.
    starts: Option<Vec<u8>>,
}

impl RawTable {
    /// The offset at or after `at` in `chunk` of the next byte that begins some pattern
    /// (`chunk.len()` if none). `cache` holds each `memchr3` group's last answer, so that a
    /// frequent byte of one group does not make the other group's scan run again to the end of
    /// the chunk at each of its occurrences (the scan stays linear).
    fn next_start(&self, chunk: &[u8], at: usize, cache: &mut [usize; 2]) -> usize {
        let Some(s) = &self.starts else {
            return chunk
                .get(at..)
                .unwrap_or_default()
                .iter()
                .position(|&b| self.first.get(usize::from(b)).is_some_and(|r| r[0] < r[1]))
                .map_or(chunk.len(), |k| at + k);
        };
        let (a, b) = s.split_at(s.len().min(3));
        let mut best = chunk.len();
        for (g, slot) in [a, b].into_iter().zip(cache.iter_mut()) {
            if *slot == usize::MAX || *slot < at {
                let hay = chunk.get(at..).unwrap_or_default();
                let found = match *g {
                    [] => None,
                    [x] => memchr::memchr(x, hay),
                    [x, y] => memchr::memchr2(x, y, hay),
                    [x, y, z, ..] => memchr::memchr3(x, y, z, hay),
                };
                *slot = found.map_or(chunk.len(), |k| at + k);
            }
            best = best.min(*slot);
        }
        best
    }
}

impl RawTable {
    fn build(bytes: &[Vec<u8>]) -> RawTable {
        let (table, _) = SortedPatterns::build(bytes);
        let mut first = vec![[0u32; 2]; 256];
        for (i, p) in bytes.iter().enumerate() {
            let Some(&b) = p.first() else { continue };
            if let Some(r) = first.get_mut(usize::from(b)) {
                if r[0] == r[1] {
                    *r = [i as u32, i as u32 + 1];
                } else {
                    r[1] = i as u32 + 1;
                }
            }
        }
        let distinct: Vec<u8> = (0..=255u8)
            .filter(|&b| first.get(usize::from(b)).is_some_and(|r| r[0] < r[1]))
            .collect();
        let starts = (distinct.len() <= 6).then_some(distinct);
        RawTable {
            table,
            first,
            starts,
        }
    }

    fn memory_usage(&self) -> usize {
        self.table.memory_usage() + self.first.len() * 8
    }
}

impl Drop for RawTable {
    fn drop(&mut self) {
        self.first.zeroize();
    }
}

impl std::fmt::Debug for RawTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawTable")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
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
/// (about 1 bit in 32 set: false positives only cost a table lookup). `strided` is a blocked
/// Bloom filter ([`strided_slot`]: two bits in one word, 16 to 32 bits per q-gram) of the
/// [`Q`]-grams at every offset `0..stride` of every pattern: since
/// every pattern is at least `stride` + [`Q`] − 1 bytes long, probing it at
/// every `stride`-th position of the normalised view hits inside every occurrence (q-gram
/// sampling; Navarro and Raffinot, *Flexible Pattern Matching in Strings*, 2002, §6.5). `one`,
/// `two` and `three` answer "could the last 1–3 bytes start a pattern?" so that a stream holds
/// back nothing at the end of ordinary output (`one` and `two` exact, `three` hashed).
#[derive(Clone)]
pub(crate) struct PrefixFilter {
    four: Vec<u64>,
    shift: u32,
    strided: Vec<u64>,
    strided_shift: u32,
    /// Probe distance of the block path: the shortest pattern's length − [`Q`] + 1, at least
    /// [`MIN_STRIDE`] and at most [`MAX_STRIDE`].
    stride: usize,
    /// Some pattern could be the parameter bytes of a colour code (at most
    /// [`MAX_CSI_PARAMS`] bytes, all in 0x20–0x3F: digits, `;`, ...).
    param_patterns: bool,
    one: [bool; 256],
    two: Vec<u64>,
    three: Vec<u64>,
    /// Every pattern's first three bytes, sorted and distinct: `three` is a hashed bitmap whose
    /// false positives would make a pause hold back (and mask) ordinary text, so a set bit is
    /// confirmed here (a pause and the hold bound are rare next to the block path).
    three_exact: Vec<u32>,
}

/// The word of the strided bitmap (`64 - shift` bits of index) and the two bits in it that
/// q-gram `w` sets (a blocked Bloom filter with k = 2: one memory access per probe, and about a
/// quarter of the false positives of one bit per q-gram at the same size; Putze, Sanders and
/// Singler, *Cache-, Hash- and Space-Efficient Bloom Filters*, 2007).
#[inline(always)]
fn strided_slot(w: u32, shift: u32) -> (usize, u64) {
    let h = u64::from(w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let word = h.checked_shr(shift).unwrap_or(0) as usize;
    let bits = (1u64 << ((h >> 34) & 63)) | (1u64 << ((h >> 40) & 63));
    (word, bits)
}

/// Bits of the strided bitmap per distinct q-gram (before rounding up to a power of two):
/// fewer keep it in cache, more cut false candidates.
const STRIDED_BITS_PER_GRAM: usize = 16;

/// Shortest probe distance of the block path: `MIN_LEN - Q + 1` (every normalised pattern is
/// at least [`MIN_LEN`] bytes long).
const MIN_STRIDE: usize = MIN_LEN - Q + 1;

/// Longest probe distance: a longer one would check more start offsets per bitmap hit and put
/// more q-grams of each pattern into the bitmap than it saves in probes.
const MAX_STRIDE: usize = 13;

impl PrefixFilter {
    /// `prefixes`: the distinct [`Q`]-byte prefixes; `patterns`: all patterns (each at least
    /// [`MIN_LEN`] bytes).
    ///
    /// The probe distance adapts to the shortest pattern: with only 12-byte fragments and
    /// longer patterns (random tokens of 12 bytes or more), the block path probes every 9th
    /// normalised byte instead of every 5th.
    ///
    /// Patterns of [`Scope::AfterColourCode`] are left out of the strided bitmap and of the
    /// shortest length: they can only start right after a colour code, which the block path
    /// checks on its own ([`Compact::after_colour_code`]).
    fn build(prefixes: &[u32], patterns: &[Vec<u8>], info: &[PatternInfo]) -> PrefixFilter {
        let probed = || {
            patterns
                .iter()
                .zip(info)
                .filter(|(_, i)| i.scope != Scope::AfterColourCode)
                .map(|(p, _)| p)
        };
        let shortest = probed().map(Vec::len).min().unwrap_or(MIN_LEN);
        let stride = (shortest + 1)
            .saturating_sub(Q)
            .clamp(MIN_STRIDE, MAX_STRIDE);
        let bits = (prefixes.len() * 32)
            .next_power_of_two()
            .clamp(1 << 12, 1 << 24);
        // Fragments of one value share most of their q-grams: size by the distinct ones.
        let mut grams: Vec<u32> = probed()
            .flat_map(|p| p.windows(Q).take(stride))
            .map(|g| <[u8; Q]>::try_from(g).map_or(0, u32::from_be_bytes))
            .collect();
        grams.sort_unstable();
        grams.dedup();
        let strided_bits = (grams.len() * STRIDED_BITS_PER_GRAM)
            .next_power_of_two()
            .clamp(1 << 12, 1 << 24);
        let mut f = PrefixFilter {
            four: vec![0; bits / 64],
            shift: 32 - bits.trailing_zeros(),
            strided: vec![0; strided_bits / 64],
            strided_shift: 64 - (strided_bits / 64).trailing_zeros(),
            stride,
            param_patterns: patterns
                .iter()
                .any(|p| p.len() <= MAX_CSI_PARAMS && p.iter().all(|b| (0x20..=0x3f).contains(b))),
            one: [false; 256],
            two: vec![0; 65536 / 64],
            three: vec![0; (1 << THREE_BITS) / 64],
            three_exact: Vec::with_capacity(prefixes.len()),
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
            f.three_exact.push(u32::from_be_bytes([0, a, b, c]));
        }
        f.three_exact.sort_unstable();
        f.three_exact.dedup();
        for w in grams {
            let (word, bits) = strided_slot(w, f.strided_shift);
            if let Some(slot) = f.strided.get_mut(word) {
                *slot |= bits;
            }
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

    /// Could a pattern start with the last `n` (1 to 3) bytes of `w`? With `exact` false, a
    /// 3-byte start is answered by the hashed bitmap alone (false hits possible: they only
    /// hold bytes back until the next push); with `exact` true a set bit is confirmed in the
    /// sorted set of 3-byte starts (a pause, where a false hit would mask ordinary text).
    #[inline(always)]
    fn maybe_short(&self, w: u32, n: usize, exact: bool) -> bool {
        let [_, a, b, c] = w.to_be_bytes();
        match n {
            1 => self.one.get(usize::from(c)).copied().unwrap_or(true),
            2 => get_bit(&self.two, usize::from(u16::from_be_bytes([b, c]))),
            _ => {
                let w = u32::from_be_bytes([0, a, b, c]);
                get_bit(&self.three, Self::hash3(w))
                    && (!exact || self.three_exact.binary_search(&w).is_ok())
            }
        }
    }

    fn memory_usage(&self) -> usize {
        (self.four.len() + self.strided.len() + self.two.len() + self.three.len()) * 8
            + self.three_exact.capacity() * 4
            + 256
    }
}

impl Drop for PrefixFilter {
    fn drop(&mut self) {
        self.four.zeroize();
        self.strided.zeroize();
        self.one.zeroize();
        self.two.zeroize();
        self.three.zeroize();
        self.three_exact.zeroize();
    }
}

impl std::fmt::Debug for PrefixFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The tables are derived from the patterns (`one` and `two` exactly): never printed.
        f.debug_struct("PrefixFilter")
            .field("bytes", &self.memory_usage())
            .finish_non_exhaustive()
    }
}

/// The normalised pass's patterns, sorted, in one arena, with an index from each [`Q`]-byte
/// prefix to the range of patterns that start with it.
#[derive(Clone)]
pub(crate) struct SortedPatterns {
    arena: Vec<u8>,
    /// `offsets[i]..offsets[i + 1]` is pattern `i` in `arena`.
    offsets: Vec<u32>,
    /// Open-addressing table: `[prefix, lo, hi]`, empty slots have `lo == hi`.
    slots: Vec<[u32; 3]>,
    slot_shift: u32,
}

impl SortedPatterns {
    /// Overwrites every pattern byte and prefix with zeros (volatile writes, so that they are
    /// not optimised away), keeping the lengths. Runs on drop.
    fn wipe(&mut self) {
        self.arena.as_mut_slice().zeroize();
        for slot in &mut self.slots {
            slot.zeroize();
        }
    }
}

impl Drop for SortedPatterns {
    fn drop(&mut self) {
        self.wipe();
        // Also the spare capacity.
        self.arena.zeroize();
        self.slots.zeroize();
    }
}

impl std::fmt::Debug for SortedPatterns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SortedPatterns")
            .field("patterns", &self.offsets.len().saturating_sub(1))
            .field("bytes", &self.arena.len())
            .finish_non_exhaustive()
    }
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
            slots: vec![[0; 3]; size],
            slot_shift: 32 - size.trailing_zeros(),
        };
        let mask = size - 1;
        for &(prefix, lo, hi) in &ranges {
            let mut h = (prefix.wrapping_mul(HASH_MUL) >> t.slot_shift) as usize;
            while t.slots.get(h).is_some_and(|s| s[1] != s[2]) {
                h = (h + 1) & mask;
            }
            if let Some(slot) = t.slots.get_mut(h) {
                *slot = [prefix, lo, hi];
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
            let &[p, lo, hi] = self.slots.get(h)?;
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
    /// A walk from every byte that begins a pattern, over the raw bytes.
    Raw(RawTable),
    /// Prefix filter and walks of the sorted table, over the normalised view.
    Filtered {
        filter: Box<PrefixFilter>,
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
}

/// Error building a pass: the patterns do not fit the tables' 32-bit offsets (over 4 GiB of
/// patterns, or over 4 billion of them).
#[derive(Debug)]
pub(crate) struct BuildFailed;

impl Pass {
    /// Builds a pass for a pattern set; `None` for an empty set.
    pub fn build(set: PatternSet, kind: PassKind) -> Result<Option<Pass>, BuildFailed> {
        let mut d = set.dedup();
        if d.bytes.is_empty() {
            return Ok(None);
        }
        let total: usize = d.bytes.iter().map(Vec::len).sum();
        if u32::try_from(total).is_err() || u32::try_from(d.bytes.len() + 1).is_err() {
            return Err(BuildFailed);
        }
        let max_len = d.bytes.iter().map(Vec::len).max().unwrap_or(1);
        let finder = match kind {
            PassKind::Normalized => {
                let (table, prefixes) = SortedPatterns::build(&d.bytes);
                Finder::Filtered {
                    filter: Box::new(PrefixFilter::build(&prefixes, &d.bytes, &d.info)),
                    table,
                }
            }
            PassKind::Raw => Finder::Raw(RawTable::build(&d.bytes)),
        };
        Ok(Some(Pass {
            finder,
            kind,
            info: std::mem::take(&mut d.info),
            extra_owners: std::mem::take(&mut d.extra_owners),
            max_len,
        }))
    }

    /// A fresh per-stream state for this pass.
    pub fn state(&self) -> PassState {
        PassState {
            cursor: Cursor {
                fed: 0,
                noise_run: 0,
                window: 0,
                window_len: 0,
                recent: [0; Q],
                colour_code_end: u64::MAX,
            },
            norm: Normalizer::new(),
            walks: Vec::new(),
            scratch: (self.kind == PassKind::Normalized).then(|| {
                Box::new(Scratch {
                    bytes: [0; NBUF],
                    marks: [0; BLOCK / MARK_EVERY],
                })
            }),
        }
    }

    /// Feeds `chunk` (whose first byte is at absolute offset `base`) and appends every match
    /// that ends inside it to `hits`, in order of end offset.
    pub fn scan(&self, st: &mut PassState, chunk: &[u8], base: u64, hits: &mut Vec<Hit>) {
        match &self.finder {
            Finder::Raw(raw) => scan_raw(raw, st, chunk, base, hits),
            Finder::Filtered { filter, table } => {
                self.scan_filtered(filter, table, st, chunk, base, hits);
            }
        }
    }

    /// The normalised pass: normalise, filter on prefixes, walk the sorted table.
    ///
    /// While no walk is in progress and the normaliser is in its ground state, the chunk is
    /// processed in blocks of up to [`BLOCK`] bytes without `ESC` ([`Pass::scan_block`]); every
    /// other byte goes through the byte-at-a-time path ([`feed`], [`slow_byte`]).
    /// Both paths leave the same state behind, so the split between them (which depends on the
    /// chunking) does not change what is found.
    fn scan_filtered(
        &self,
        filter: &PrefixFilter,
        table: &SortedPatterns,
        st: &mut PassState,
        chunk: &[u8],
        base: u64,
        hits: &mut Vec<Hit>,
    ) {
        let mut i = 0usize;
        while i < chunk.len() {
            if st.walks.is_empty() && st.norm.is_ground() && st.scratch.is_some() {
                let rest = chunk.get(i..).unwrap_or_default();
                let rest = rest.get(..BLOCK).unwrap_or(rest);
                // One pass finds the first `ESC` or `%`; a second only if `%` came first.
                let (len, percent) = match memchr::memchr2(ESC, b'%', rest) {
                    None => (rest.len(), false),
                    Some(k) if rest.get(k) == Some(&ESC) => (k, false),
                    Some(k) => (
                        memchr::memchr(ESC, rest.get(k..).unwrap_or_default())
                            .map_or(rest.len(), |e| k + e),
                        true,
                    ),
                };
                if len >= MIN_BLOCK {
                    let block = rest.get(..len).unwrap_or_default();
                    self.scan_block(filter, table, st, block, percent, base + i as u64, hits);
                    i += len;
                    continue;
                }
            }
            let Some(&b) = chunk.get(i) else { break };
            let p = base + i as u64;
            i += 1;
            let PassState {
                cursor,
                norm,
                walks,
                ..
            } = st;
            if norm.is_fast(b) {
                feed(filter, table, cursor, walks, hits, b, p);
            } else {
                slow_byte(filter, table, cursor, norm, walks, hits, b, p);
            }
        }
    }

    /// The block path of the normalised pass, for a block without `ESC` that starts in the
    /// normaliser's ground state with no walk in progress (`block[0]` is at offset `base`).
    ///
    /// Two loops without a loop-carried dependency other than a counter: (1) compact the block
    /// into its normalised bytes (whitespace removed; the last up to 3 normalised bytes before
    /// the block first) and their offsets; (2) probe the [`Q`]-gram ending at every compact
    /// position against the prefix bitmap. A rare candidate is checked against the exact prefix
    /// index and walked to its end inside the compact buffer at once; a walk still alive at the
    /// end of the block is handed to the byte-at-a-time path. The cursor is then brought to
    /// the state the byte-at-a-time path would have reached.
    #[allow(clippy::too_many_arguments)]
    fn scan_block(
        &self,
        filter: &PrefixFilter,
        table: &SortedPatterns,
        st: &mut PassState,
        block: &[u8],
        percent: bool,
        base: u64,
        hits: &mut Vec<Hit>,
    ) {
        let c = &mut st.cursor;
        let Some(sc) = st.scratch.as_deref_mut() else {
            // Unreachable: the caller checks that the buffers exist.
            return;
        };
        // Normalised bytes before the block that a window ending inside it may use.
        let old_len = usize::from(c.window_len);
        let carry = old_len.min(Q - 1);
        let mut carried = [0u64; Q - 1];
        for (k, slot) in carried.iter_mut().enumerate().take(carry) {
            let back = (carry - k) as u64;
            *slot = c.recent_pos(c.fed.wrapping_sub(back));
            if let Some(b) = sc.bytes.get_mut(k) {
                *b = (c.window >> (8 * (carry - 1 - k))) as u8;
            }
        }
        // (1) Compaction: every byte is stored, only kept bytes advance the cursor.
        let mut n = carry;
        let mut subs = block.chunks_exact(MARK_EVERY);
        let mut marks = sc.marks.iter_mut();
        // `subs` first: once it runs out, `zip` takes no further mark.
        for (sub, mark) in subs.by_ref().zip(marks.by_ref()) {
            *mark = n as u32;
            if let Ok(sub) = <&[u8; MARK_EVERY]>::try_from(sub) {
                n = compact_into(&mut sc.bytes, n, sub);
            }
        }
        let rest = subs.remainder();
        if let Some(mark) = marks.next().filter(|_| !rest.is_empty()) {
            *mark = n as u32;
            n = compact_into(&mut sc.bytes, n, rest);
        }
        let n = n.min(NBUF);
        // Percent-escapes fold to lower case (see `normalize`), in view order.
        let (p1, p2) = (c.window as u8, (c.window >> 8) as u8);
        if (percent || p1 == b'%' || p2 == b'%')
            && let Some(new) = sc.bytes.get_mut(carry..n)
        {
            fold_view(new, p1, p2);
        }
        let view = Compact {
            bytes: sc.bytes.get(..n).unwrap_or_default(),
            block,
            marks: sc
                .marks
                .get(..block.len().div_ceil(MARK_EVERY))
                .unwrap_or_default(),
            carry,
            carried,
            base,
            colour_code_end: c.colour_code_end,
        };
        view.after_colour_code(filter, table, &mut st.walks, hits);
        // (2) Probes: the strided filter at every `stride`-th position finds every occurrence
        // starting at or before `n - span` (every pattern is at least `span` long, so such an
        // occurrence holds a probed position among its first `stride` offsets); later starts
        // whose window is complete are checked one by one (the rest are checked once the
        // window completes).
        let stride = filter.stride;
        let span = stride + Q - 1;
        let strided = filter.strided.as_slice();
        let shift = filter.strided_shift;
        let bytes = view.bytes;
        if n >= span {
            let last_start = n - span;
            let mut j = 0;
            while let Some(w) = bytes.get(j..j + Q) {
                let window = <[u8; Q]>::try_from(w).map_or(0, u32::from_be_bytes);
                let (at, bits) = strided_slot(window, shift);
                let word = strided.get(at).copied().unwrap_or(u64::MAX);
                if word & bits == bits {
                    for s in j.saturating_sub(stride - 1)..=j.min(last_start) {
                        view.start(filter, table, s, &mut st.walks, hits);
                    }
                }
                j += stride;
            }
        }
        if n >= Q {
            for s in n.saturating_sub(span - 1)..=n - Q {
                view.start(filter, table, s, &mut st.walks, hits);
            }
        }
        // The cursor after the block.
        let new = n - carry;
        let old_fed = c.fed;
        c.fed += new as u64;
        // The last (up to Q) compact bytes and their offsets.
        let from = n.saturating_sub(Q);
        let mut tail = [0u64; Q];
        for (slot, p) in tail.iter_mut().zip(view.offsets_from(from)) {
            *slot = p;
        }
        let tail = tail.get(..n - from).unwrap_or_default();
        for (k, &p) in tail.iter().enumerate() {
            let j = from + k;
            if j >= carry {
                let b = view.bytes.get(j).copied().unwrap_or(0);
                c.window = (c.window << 8) | u32::from(b);
                c.set_recent(old_fed + (j - carry) as u64, p);
            }
        }
        let trailing = match tail.last() {
            Some(&last) if new > 0 => (base + block.len() as u64).saturating_sub(last + 1),
            _ => u64::from(c.noise_run) + block.len() as u64,
        };
        c.noise_run = trailing.min(u64::from(MAX_NOISE_RUN)) as u32;
        if new > 0 {
            // Trailing normalised bytes not separated by a long noise run.
            let mut valid = 1usize;
            let mut k = tail.len() - 1;
            while valid < Q && k > 0 {
                let (Some(&a), Some(&b)) = (tail.get(k - 1), tail.get(k)) else {
                    break;
                };
                if b - a > u64::from(MAX_NOISE_RUN) {
                    break;
                }
                valid += 1;
                k -= 1;
            }
            if k == 0 && from == 0 && carry > 0 {
                valid += old_len - carry;
            }
            c.window_len = valid.min(Q) as u8;
        }
        if c.noise_run >= MAX_NOISE_RUN {
            // A long run of noise ends every partial match.
            st.walks.clear();
            c.window_len = 0;
        }
    }

    /// End of stream: releases bytes the normaliser still holds and reports their matches.
    pub fn finish(&self, st: &mut PassState, hits: &mut Vec<Hit>) {
        let Finder::Filtered { filter, table } = &self.finder else {
            return;
        };
        let mut released = Vec::new();
        st.norm.finish(&mut |b, p| released.push((b, p)));
        for (b, p) in released {
            feed(filter, table, &mut st.cursor, &mut st.walks, hits, b, p);
        }
    }

    /// The earliest absolute offset at which a match not yet reported could still start, or
    /// `total` (the end of the input so far) if none can. May be earlier than needed by up to
    /// 3 bytes (a hashed 3-byte start): what a push holds back, never what a pause shows.
    #[inline]
    pub fn hold_bound(&self, st: &PassState, total: u64) -> u64 {
        self.bound(st, total, false)
    }

    /// [`Pass::hold_bound`] with every possible start confirmed exactly: what a pause
    /// ([`crate::RedactStream::flush`]) treats as a possible match.
    pub fn pause_bound(&self, st: &PassState, total: u64) -> u64 {
        self.bound(st, total, true)
    }

    #[inline(always)]
    fn bound(&self, st: &PassState, total: u64, exact: bool) -> u64 {
        let c = &st.cursor;
        match &self.finder {
            Finder::Raw(_) => st.walks.iter().map(|w| w.start).min().unwrap_or(total),
            Finder::Filtered { filter, .. } => {
                let mut bound = st.norm.held_from().unwrap_or(total).min(total);
                if let Some(w) = st.walks.iter().map(|w| w.start).min() {
                    bound = bound.min(w);
                }
                // Offsets among the last Q-1 normalised bytes not yet checked as candidates.
                let pending = usize::from(c.window_len).min(Q - 1);
                for n in (1..=pending).rev() {
                    if filter.maybe_short(c.window, n, exact) {
                        bound = bound.min(c.recent_pos(c.fed - n as u64));
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
            Finder::Raw(raw) => raw.memory_usage(),
            Finder::Filtered { filter, table } => filter.memory_usage() + table.memory_usage(),
        };
        finder + self.info.len() * std::mem::size_of::<PatternInfo>()
    }

    /// The block path's probe distance in normalised bytes (0 for the raw pass).
    pub fn probe_stride(&self) -> usize {
        match &self.finder {
            Finder::Raw(_) => 0,
            Finder::Filtered { filter, .. } => filter.stride,
        }
    }

    /// Name of the finder in use (for benchmarks and diagnostics).
    pub fn engine_name(&self) -> &'static str {
        match &self.finder {
            Finder::Raw(_) => "first-byte+sorted-table",
            Finder::Filtered { .. } => "prefix-filter+sorted-table",
        }
    }
}

/// Starts a walk for the [`Q`] bytes of `window`, the first of which is at original offset
/// `start`; returns whether one was started (some pattern begins with them).
#[inline(never)]
fn start_walk(
    table: &SortedPatterns,
    window: u32,
    start: u64,
    after_colour_code: bool,
    walks: &mut Vec<Walk>,
) -> bool {
    match table.range(window) {
        Some((lo, hi)) => {
            walks.push(Walk {
                start,
                lo,
                hi,
                depth: Q as u32,
                after_colour_code,
            });
            true
        }
        None => false,
    }
}

/// A byte that is noise, or that the normaliser holds or releases (byte-at-a-time path).
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn slow_byte(
    filter: &PrefixFilter,
    table: &SortedPatterns,
    c: &mut Cursor,
    norm: &mut Normalizer,
    walks: &mut Vec<Walk>,
    hits: &mut Vec<Hit>,
    b: u8,
    p: u64,
) {
    // A colour code completed by `b` is dropped from the view with its parameter bytes: a
    // value printed as those bytes (`ESC [` 12345678 `m`) is looked for among them first.
    let mut params = [0u8; MAX_CSI_PARAMS];
    let mut params_at = None;
    let completes = matches!(b, b'm' | b'K') && norm.held_params().is_some();
    if completes {
        c.colour_code_end = p + 1;
    }
    if filter.param_patterns
        && completes
        && let Some((held, at)) = norm.held_params()
        && held.len() >= MIN_LEN
        && let Some(copy) = params.get_mut(..held.len())
    {
        copy.copy_from_slice(held);
        params_at = Some((held.len(), at));
    }
    let mut released = [(0u8, 0u64); MAX_CSI_PARAMS + 1];
    let mut n = 0usize;
    let dropped = norm.step(b, p, &mut |rb, rp| {
        if let Some(slot) = released.get_mut(n) {
            *slot = (rb, rp);
            n += 1;
        }
    });
    if let Some((len, at)) = params_at {
        find_in_params(table, params.get(..len).unwrap_or_default(), at, hits);
        params.zeroize();
    }
    for &(rb, rp) in released.iter().take(n) {
        feed(filter, table, c, walks, hits, rb, rp);
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

/// Reports every pattern occurring among the parameter bytes `params` of a completed colour
/// code (the first at original offset `at`; they are contiguous in the output).
#[inline(never)]
fn find_in_params(table: &SortedPatterns, params: &[u8], at: u64, hits: &mut Vec<Hit>) {
    for (i, w) in params.windows(Q).enumerate() {
        let window = <[u8; Q]>::try_from(w).map_or(0, u32::from_be_bytes);
        let Some((lo, hi)) = table.range(window) else {
            continue;
        };
        let start = at + i as u64;
        let mut walk = Walk {
            start,
            lo,
            hi,
            depth: Q as u32,
            after_colour_code: false,
        };
        for (k, &b) in params.iter().enumerate().skip(i + Q) {
            if !advance(table, &mut walk, b) {
                break;
            }
            report(table, &walk, at + k as u64 + 1, hits);
        }
    }
}

/// Feeds one byte of the normalised view (at original offset `p`): advances the walks in
/// progress, then checks whether a new walk starts [`Q`] bytes back.
fn feed(
    filter: &PrefixFilter,
    table: &SortedPatterns,
    c: &mut Cursor,
    walks: &mut Vec<Walk>,
    hits: &mut Vec<Hit>,
    b: u8,
    p: u64,
) {
    let b = fold_percent_hex(b, c.window as u8, (c.window >> 8) as u8);
    c.set_recent(c.fed, p);
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
        report(table, w, p + 1, hits);
        i += 1;
    }
    if c.window_len >= Q as u8 - 1 {
        c.window_len = Q as u8;
        if get_bit(&filter.four, filter.hash4(c.window)) {
            let start = c.recent_pos(c.fed - Q as u64);
            start_walk(table, c.window, start, start == c.colour_code_end, walks);
        }
    } else {
        c.window_len += 1;
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

/// The raw pass over `chunk` (whose first byte is at offset `base`): advances the walks in
/// progress with each byte, reporting the patterns completed, then starts a walk if the byte
/// begins some pattern.
fn scan_raw(raw: &RawTable, st: &mut PassState, chunk: &[u8], base: u64, hits: &mut Vec<Hit>) {
    let table = &raw.table;
    let walks = &mut st.walks;
    let mut at = 0usize;
    let mut cache = [usize::MAX; 2];
    while at < chunk.len() {
        if walks.is_empty() {
            // Nothing in progress: bytes that begin no pattern change nothing.
            at = raw.next_start(chunk, at, &mut cache);
            if at >= chunk.len() {
                break;
            }
        }
        let Some(&b) = chunk.get(at) else { break };
        let p = base + at as u64;
        at += 1;
        let mut i = 0;
        while let Some(w) = walks.get_mut(i) {
            if !advance(table, w, b) {
                walks.swap_remove(i);
                continue;
            }
            report(table, w, p + 1, hits);
            i += 1;
        }
        let [lo, hi] = raw.first.get(usize::from(b)).copied().unwrap_or([0, 0]);
        if lo < hi {
            let w = Walk {
                start: p,
                lo,
                hi,
                depth: 1,
                after_colour_code: false,
            };
            report(table, &w, p + 1, hits);
            walks.push(w);
        }
    }
    st.cursor.fed += chunk.len() as u64;
}

/// Reports the patterns of walk `w` that end at its current depth (they come first in its
/// range), as occurrences ending at offset `end`.
fn report(table: &SortedPatterns, w: &Walk, end: u64, hits: &mut Vec<Hit>) {
    let mut k = w.lo;
    while k < w.hi && table.get(k).len() == w.depth as usize {
        hits.push(Hit {
            start: w.start,
            end,
            pattern: k,
            after_colour_code: w.after_colour_code,
        });
        k += 1;
    }
}

/// Per-stream state of one pass. Holds output bytes (the last view bytes, bytes held by the
/// normaliser, the compact block): its `Debug` prints none of them, and they are wiped on drop.
#[derive(Clone)]
pub(crate) struct PassState {
    cursor: Cursor,
    norm: Normalizer,
    /// Walks in progress (normalised pass).
    walks: Vec<Walk>,
    /// Compact buffers of the block path (normalised pass only).
    scratch: Option<Box<Scratch>>,
}

impl std::fmt::Debug for PassState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassState")
            .field("fed", &self.cursor.fed)
            .field("walks", &self.walks.len())
            .finish_non_exhaustive()
    }
}

impl Drop for PassState {
    fn drop(&mut self) {
        self.cursor.window.zeroize();
        self.norm.wipe();
    }
}

/// Input bytes the block path of the normalised pass compacts and probes at a time.
const BLOCK: usize = 8192;

/// Shorter runs of ground-state bytes go through the byte-at-a-time path (its per-call cost
/// is lower).
const MIN_BLOCK: usize = 32;

/// Capacity of the compact buffers: [`BLOCK`] plus the carried bytes, rounded up to a power of
/// two so that masked indices need no bounds checks.
const NBUF: usize = 2 * BLOCK;
const NMASK: usize = NBUF - 1;

/// The compact buffers of one block: normalised bytes and where each came from.
#[derive(Clone)]
struct Scratch {
    bytes: [u8; NBUF],
    /// `marks[k]`: compact index of the first normalised byte at or after block offset
    /// `k * MARK_EVERY`.
    marks: [u32; BLOCK / MARK_EVERY],
}

/// 1 for a byte kept in the normalised view, 0 for whitespace (a table load is cheaper than
/// the comparisons in the compaction loop).
// Indexing in a constant initialiser is checked at compile time.
#[allow(clippy::indexing_slicing)]
static KEEP: [u8; 256] = {
    let mut t = [1u8; 256];
    let mut b = 0;
    while b < 256 {
        if is_space(b as u8) {
            t[b] = 0;
        }
        b += 1;
    }
    t
};

/// Stores every byte of `sub` at compact index `n` onwards, advancing only past kept bytes
/// (so whitespace is overwritten by the next byte); returns the new compact length.
/// Branch-free: one store, one table load and one add per byte.
#[inline(always)]
fn compact_into(bytes: &mut [u8; NBUF], mut n: usize, sub: &[u8]) -> usize {
    for &b in sub {
        if let Some(slot) = bytes.get_mut(n & NMASK) {
            *slot = b;
        }
        n += usize::from(KEEP.get(usize::from(b)).copied().unwrap_or(1));
    }
    n
}

/// Block bytes per entry of [`Scratch::marks`].
const MARK_EVERY: usize = 16;

impl Drop for Scratch {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Holds output bytes (possibly secret): never printed.
        f.debug_struct("Scratch").finish_non_exhaustive()
    }
}

/// A compacted block: the normalised bytes, and how to map them back to offsets.
struct Compact<'a> {
    /// The carried bytes, then the block's normalised bytes.
    bytes: &'a [u8],
    block: &'a [u8],
    marks: &'a [u32],
    carry: usize,
    carried: [u64; Q - 1],
    /// Offset of `block[0]`.
    base: u64,
    /// Offset just after the last colour code ([`Cursor::colour_code_end`]).
    colour_code_end: u64,
}

impl Compact<'_> {
    /// Original offsets of compact bytes `j`, `j + 1`, ... (found by rescanning the block
    /// from the nearest mark: only candidates need them).
    fn offsets_from(&self, j: usize) -> impl Iterator<Item = u64> + '_ {
        let carried = self.carried.get(j.min(self.carry)..self.carry);
        let (from, skip) = if j < self.carry {
            (0, 0)
        } else {
            let k = self
                .marks
                .partition_point(|&m| m as usize <= j)
                .saturating_sub(1);
            let mark = self.marks.get(k).map_or(self.carry, |&m| m as usize);
            (k * MARK_EVERY, j - mark.min(j))
        };
        let base = self.base;
        carried.unwrap_or_default().iter().copied().chain(
            self.block
                .get(from..)
                .unwrap_or_default()
                .iter()
                .zip(from as u64..)
                .filter(|(b, _)| !is_space(**b))
                .skip(skip)
                .map(move |(_, o)| base + o),
        )
    }

    /// Checks whether an occurrence may start at compact index `s` (prefix bitmap, then
    /// [`Compact::candidate`]).
    #[inline]
    fn start(
        &self,
        filter: &PrefixFilter,
        table: &SortedPatterns,
        s: usize,
        walks: &mut Vec<Walk>,
        hits: &mut Vec<Hit>,
    ) {
        let Some(w) = self.bytes.get(s..s + Q) else {
            return;
        };
        let window = <[u8; Q]>::try_from(w).map_or(0, u32::from_be_bytes);
        if get_bit(&filter.four, filter.hash4(window)) {
            self.candidate(table, s, window, walks, hits);
        }
    }

    /// A bitmap hit for the [`Q`] bytes starting at compact index `j`: if some pattern starts
    /// with them (and no long noise run splits them), walks the sorted table over the rest of
    /// the block, reporting every pattern completed, and keeps the walk if it is still alive
    /// at the end of the block.
    #[inline(never)]
    fn candidate(
        &self,
        table: &SortedPatterns,
        j: usize,
        window: u32,
        walks: &mut Vec<Walk>,
        hits: &mut Vec<Hit>,
    ) {
        let Some((lo, hi)) = table.range(window) else {
            return;
        };
        let far = |from: u64, to: u64| to - from > u64::from(MAX_NOISE_RUN);
        let mut offsets = self.offsets_from(j);
        let Some(start) = offsets.next() else {
            return;
        };
        let mut prev = start;
        for _ in 1..Q {
            let Some(p) = offsets.next() else { return };
            if far(prev, p) {
                return;
            }
            prev = p;
        }
        let mut w = Walk {
            start,
            lo,
            hi,
            depth: Q as u32,
            after_colour_code: start == self.colour_code_end,
        };
        for &b in self.bytes.get(j + Q..).unwrap_or_default() {
            let Some(p) = offsets.next() else { return };
            if far(prev, p) {
                return;
            }
            prev = p;
            if !advance(table, &mut w, b) {
                return;
            }
            report(table, &w, p + 1, hits);
        }
        walks.push(w);
    }

    /// Checks the start right after the last colour code, if it is one of the compact bytes
    /// whose start no probe of this block covers for [`Scope::AfterColourCode`] patterns (a
    /// carried byte, or the block's first byte): a block holds no `ESC`, so a colour code can
    /// only have ended just before it.
    fn after_colour_code(
        &self,
        filter: &PrefixFilter,
        table: &SortedPatterns,
        walks: &mut Vec<Walk>,
        hits: &mut Vec<Hit>,
    ) {
        let end = self.colour_code_end;
        let at = if let Some(k) = self.carried.iter().take(self.carry).position(|&p| p == end) {
            k
        } else if end == self.base && self.block.first().is_some_and(|&b| !is_space(b)) {
            self.carry
        } else {
            return;
        };
        self.start(filter, table, at, walks, hits);
    }
}

/// The pass's position in a stream.
#[derive(Clone, Copy)]
struct Cursor {
    /// Bytes fed so far (for the normalised pass: normalised bytes).
    fed: u64,
    /// Consecutive noise bytes just dropped (normalised pass), saturating at
    /// [`MAX_NOISE_RUN`] or above.
    noise_run: u32,
    /// The last four normalised bytes, most recent in the low byte.
    window: u32,
    /// How many of them are valid (0 to [`Q`]).
    window_len: u8,
    /// Original offsets of the last [`Q`] normalised bytes: normalised index `i` at `i % Q`.
    recent: [u64; Q],
    /// Original offset just after the final byte (`m`/`K`) of the last colour code
    /// (`u64::MAX` before the first): where [`Scope::AfterColourCode`] occurrences start.
    colour_code_end: u64,
}

impl Cursor {
    /// Original offset of normalised byte `i` (one of the last [`Q`]).
    #[inline]
    fn recent_pos(&self, i: u64) -> u64 {
        self.recent
            .get((i % Q as u64) as usize)
            .copied()
            .unwrap_or(0)
    }

    #[inline]
    fn set_recent(&mut self, i: u64, p: u64) {
        if let Some(slot) = self.recent.get_mut((i % Q as u64) as usize) {
            *slot = p;
        }
    }
}

/// A walk of the sorted pattern table from a candidate offset: the patterns in `lo..hi` all
/// agree with the `depth` normalised bytes from `start` on.
#[derive(Clone, Copy, Debug)]
struct Walk {
    /// Original offset of the walk's first byte.
    start: u64,
    lo: u32,
    hi: u32,
    depth: u32,
    /// The walk starts right after a colour code (the byte after its final `m`/`K`).
    after_colour_code: bool,
}

/// A pattern occurrence in absolute original-byte offsets (`start..end`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hit {
    pub start: u64,
    pub end: u64,
    pub pattern: u32,
    /// The occurrence starts right after a colour code (for [`Scope::AfterColourCode`]).
    pub after_colour_code: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_patterns_wipe_every_byte() {
        let token = crate::fixtures::secret("hex-dump", "JOB_TOKEN");
        let mut patterns: Vec<Vec<u8>> = token
            .as_bytes()
            .windows(crate::FRAGMENT_LEN)
            .map(<[u8]>::to_vec)
            .collect();
        patterns.sort();
        patterns.dedup();
        let (mut t, prefixes) = SortedPatterns::build(&patterns);
        assert!(
            t.arena
                .windows(token.len().min(12))
                .any(|w| token.as_bytes().starts_with(w))
        );
        assert!(
            t.slots
                .iter()
                .any(|s| prefixes.contains(&s[0]) && s[1] != s[2])
        );
        t.wipe();
        assert!(!t.arena.is_empty());
        assert!(t.arena.iter().all(|&b| b == 0));
        assert!(t.slots.iter().all(|s| *s == [0, 0, 0]));
    }

    #[test]
    fn three_byte_starts_are_exact_so_a_pause_holds_back_only_real_prefixes() {
        // Enough patterns to fill the hashed bitmap well past its false-positive floor.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let patterns: Vec<Vec<u8>> = (0..6000)
            .map(|_| (0..8).map(|_| b'a' + (next() % 26) as u8).collect())
            .collect();
        let info: Vec<PatternInfo> = patterns
            .iter()
            .map(|p| PatternInfo {
                secret: 0,
                len: p.len() as u32,
                scope: Scope::Anywhere,
            })
            .collect();
        let (_, prefixes) = SortedPatterns::build(&patterns);
        let f = PrefixFilter::build(&prefixes, &patterns, &info);
        let starts: std::collections::HashSet<[u8; 3]> =
            patterns.iter().map(|p| [p[0], p[1], p[2]]).collect();
        let mut hashed_only = 0;
        for a in b'a'..=b'z' {
            for b in b'a'..=b'z' {
                for c in b'a'..=b'z' {
                    let w = u32::from_be_bytes([b'x', a, b, c]);
                    let real = starts.contains(&[a, b, c]);
                    assert_eq!(f.maybe_short(w, 3, true), real, "{:?}", [a, b, c]);
                    if !real && get_bit(&f.three, PrefixFilter::hash3(w & 0x00ff_ffff)) {
                        hashed_only += 1;
                    }
                }
            }
        }
        // The bitmap alone would have answered yes for some of them (what made pauses mask
        // ordinary text); the exact set answers no.
        assert!(
            hashed_only > 0,
            "the test no longer exercises the bitmap's false positives"
        );
    }

    #[test]
    fn the_raw_scan_skips_only_bytes_that_begin_no_pattern() {
        // Up to six start bytes: memchr groups; more: a byte loop. Both find every occurrence.
        for starts in [&b"&%"[..], b"&%\\\xef\xf0#", b"&%\\\xef\xf0#ab"] {
            let mut set = PatternSet::default();
            for (i, &s) in starts.iter().enumerate() {
                set.add(
                    vec![s, b'x', b'y', b'z', b'0' + i as u8],
                    0,
                    Scope::Anywhere,
                );
            }
            let pass = Pass::build(set, PassKind::Raw).unwrap().unwrap();
            let Finder::Raw(t) = &pass.finder else {
                unreachable!()
            };
            assert_eq!(t.starts.is_some(), starts.len() <= 6);
            let mut hay = b"..........".to_vec();
            for (i, &s) in starts.iter().enumerate() {
                hay.extend_from_slice(&[s, b'x', b'y', b'z', b'0' + i as u8, b'.']);
            }
            let mut st = pass.state();
            let mut hits = Vec::new();
            // Split anywhere: the same hits.
            let (a, b) = hay.split_at(13);
            pass.scan(&mut st, a, 0, &mut hits);
            pass.scan(&mut st, b, a.len() as u64, &mut hits);
            pass.finish(&mut st, &mut hits);
            assert_eq!(hits.len(), starts.len(), "{starts:?}");
        }
    }

    #[test]
    fn raw_table_reports_overlapping_occurrences() {
        let mut set = PatternSet::default();
        for p in [&b"ab"[..], b"abc", b"bc", b"c"] {
            set.add(p.to_vec(), 0, Scope::Anywhere);
        }
        let pass = Pass::build(set, PassKind::Raw).unwrap().unwrap();
        let mut st = pass.state();
        let mut hits = Vec::new();
        pass.scan(&mut st, b"xab", 0, &mut hits);
        // "abc" may still complete: held from its start.
        assert_eq!(pass.hold_bound(&st, 3), 1);
        pass.scan(&mut st, b"cab", 3, &mut hits);
        let found: Vec<(u64, u64, &[u8])> = hits
            .iter()
            .map(|h| {
                let Finder::Raw(raw) = &pass.finder else {
                    unreachable!()
                };
                (h.start, h.end, raw.table.get(h.pattern))
            })
            .collect();
        assert_eq!(
            found,
            vec![
                (1, 3, &b"ab"[..]),
                (1, 4, &b"abc"[..]),
                (2, 4, &b"bc"[..]),
                (3, 4, &b"c"[..]),
                (4, 6, &b"ab"[..]),
            ]
        );
        assert_eq!(pass.hold_bound(&st, 6), 4);
    }
}
