//! The decoding pass: values printed one character (or byte) at a time as escapes or
//! look-alikes, in any spelling and any mix.
//!
//! Registering each spelling as a pattern cannot keep up with the class: `&#116;`,
//! `&#0000000116;`, `&#x74;`, `&#X74;`, `&#x0074`, `&lpar;`, `%74`, `%u0074`, `%2574`, `\x74`,
//! `\x{74}`, `\u0074`, `\u{74}`, `\U00000074`, `\N{LATIN SMALL LETTER T}`, CSS `\74 ` and
//! `\000074`, fullwidth `ｔ`, thirteen mathematical alphanumeric styles, zero-width characters
//! between plain ones, and any mix of them within one value are thousands of spellings. This
//! pass decodes them instead: a streaming decoder turns every such escape into the character
//! (or, for `%XX` and `\xHH`, the byte) it stands for, keeps plain bytes as they are, drops
//! ASCII whitespace (noise, as in the normalised view) and invisible characters
//! ([`tables::ignorable`]), and looks for the value's atoms (raw bytes) in what it decoded. A
//! match maps back to the original bytes of its first and last unit, so the marker covers the
//! escapes.
//!
//! Cost: ordinary output has no escapes, so the pass sleeps until a *trigger* (`&`, `%`, `\`,
//! or, in a chunk that is not all ASCII, a lead byte of a look-alike or an invisible character:
//! `C2`, `CC`, `CD`, `E1`, `E2`, `E3`, `EF`, `F0`), found with `memchr3` and one vectorised
//! `is_ascii` per chunk. From a trigger it decodes until [`DecodePass::max_len`] decoded bytes
//! have passed without another escape, seeded with the plain bytes just before the trigger (so
//! `abc&#100;ef` is caught too: within the chunk always; across a chunk boundary because the
//! plain bytes at the end of every chunk that could begin an atom are held back).
//!
//! At a pause ([`crate::RedactStream::flush`]) the stream asks [`DecodePass::pause_tail`] for
//! the decoded units that could still become an atom and shows at most
//! [`crate::FLUSH_SHOWN_MAX`] of them, as it does with the plain passes' bytes.
//!
//! The same pass reads byte dumps with line offsets (`xxd -b`, `od -b`, `hexdump -b`,
//! `od -tu1`) as three more decoded streams, base 2, octal and decimal ([`dump`]).
//!
//! Not decoded here (other passes or known limits, `docs/redaction.md` §5): C octal escapes
//! (`\164` is CSS hex here; the literal styles register octal forms), escapes of several
//! characters at once, base-N alphabets, homoglyphs that NFKC does not fold.

mod dump;
mod list;

use std::collections::HashMap;
use zeroize::Zeroize;

use crate::matcher::Hit;
use crate::tables;

/// Bytes that can start an escape.
const TRIGGERS: [u8; 3] = [b'&', b'%', b'\\'];

/// Most digits of one variable-width numeric escape, leading zeros included (browsers accept
/// any number of leading zeros; this bounds what an open escape holds back).
const MAX_ESCAPE_DIGITS: u8 = 48;

/// Longest HTML reference name read (the longest with an ASCII replacement has 16 bytes).
const MAX_NAME: usize = 16;

/// Longest character name read inside `\N{...}` (`LATIN CAPITAL LETTER A` has 22 bytes).
const MAX_CHAR_NAME: usize = 24;

/// Most plain (non-whitespace) bytes before the first escape that a match may start with: a
/// longer plain run of a random value is a fragment the normalised pass redacts anyway.
const LOOKBACK: usize = 16;
/// A run of this many whitespace bytes between plain bytes ends the look-back for them (the
/// noise bound of the other passes: whitespace is noise, but not without end). The same rule
/// for every split of the input keeps streaming equal to one-shot.
const GAP_MAX: u64 = 64;
/// Raw bytes at the end of the previous chunks kept for the look-back (a copy per chunk); the
/// plain bytes before them are kept too, only when these hold fewer than [`LOOKBACK`].
const LOOKBACK_RAW: usize = 32;

/// Bits in the filter of atom prefixes (a false positive only holds back or seeds a few bytes
/// more, the same for every split of the input).
const PREFIX_BITS: usize = 1 << 17;

/// Bits (log 2) in the filter of 3-byte windows of atom starts.
const TRI_LOG: u32 = 17;
const TRI_BITS: usize = 1 << TRI_LOG;

/// Base of the polynomial hash of atom prefixes.
const HASH_BASE: u64 = 0x0100_0000_01b3;

/// The atoms of all values, matched over the decoded view.
pub(crate) struct DecodePass {
    atoms: Vec<Vec<u8>>,
    /// Secrets owning each atom (the first is the one named).
    owners: Vec<Vec<u32>>,
    /// Last 8 bytes of an atom (big-endian word) → atoms ending so.
    by_suffix: HashMap<u64, Vec<u32>>,
    /// A 2^16-bit filter of the same words, checked before the map.
    filter: Vec<u64>,
    /// Filter of the hashes (with lengths) of every atom prefix of up to [`LOOKBACK`] bytes.
    prefixes: Vec<u64>,
    /// Bytes that begin some atom.
    first: [bool; 256],
    /// The first two bytes of every atom, as a 2^16-bit table.
    pairs: Vec<u64>,
    /// Hashed filter ([`TRI_BITS`]) of every 3-byte window of the first [`LOOKBACK`] bytes of
    /// every atom.
    tris: Vec<u64>,
    max_len: usize,
}

impl Drop for DecodePass {
    fn drop(&mut self) {
        for a in &mut self.atoms {
            a.zeroize();
        }
        self.by_suffix.clear();
        self.filter.zeroize();
        self.prefixes.zeroize();
        self.first.zeroize();
        self.pairs.zeroize();
        self.tris.zeroize();
    }
}

impl std::fmt::Debug for DecodePass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodePass")
            .field("atoms", &self.atoms.len())
            .finish_non_exhaustive()
    }
}

fn filter_slot(w: u64) -> (usize, u64) {
    let h = w.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48;
    ((h >> 6) as usize, 1u64 << (h & 63))
}

impl DecodePass {
    /// Builds the pass from `(atom, secret)` pairs; atoms shorter than 8 bytes are skipped
    /// (short values are matched as whole tokens by the other passes). `None` without atoms.
    pub(crate) fn build(pairs: Vec<(Vec<u8>, u32)>) -> Option<DecodePass> {
        let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut atoms: Vec<Vec<u8>> = Vec::new();
        let mut owners: Vec<Vec<u32>> = Vec::new();
        for (mut given, s) in pairs {
            // Whitespace is noise to the pass (dropped, escaped or not), so atoms are kept
            // without it: a pass-phrase may be printed with escaped letters and plain spaces.
            let mut a: Vec<u8> = given
                .iter()
                .copied()
                .filter(|&b| !crate::normalize::is_space(b))
                .collect();
            given.zeroize();
            if a.len() < crate::MIN_LEN {
                a.zeroize();
                continue;
            }
            match index.get(&a) {
                Some(&i) => {
                    if let Some(o) = owners.get_mut(i).filter(|o| !o.contains(&s)) {
                        o.push(s);
                    }
                    a.zeroize();
                }
                None => {
                    index.insert(a.clone(), atoms.len());
                    atoms.push(a);
                    owners.push(vec![s]);
                }
            }
        }
        for (mut k, _) in index.drain() {
            k.zeroize();
        }
        if atoms.is_empty() {
            return None;
        }
        let mut by_suffix: HashMap<u64, Vec<u32>> = HashMap::new();
        let mut filter = vec![0u64; 1 << 10];
        for (i, a) in atoms.iter().enumerate() {
            let w = word(a.get(a.len().saturating_sub(8)..).unwrap_or_default());
            let (slot, bit) = filter_slot(w);
            if let Some(x) = filter.get_mut(slot) {
                *x |= bit;
            }
            by_suffix
                .entry(w)
                .or_default()
                .push(u32::try_from(i).unwrap_or(u32::MAX));
        }
        let mut prefixes = vec![0u64; PREFIX_BITS / 64];
        let mut first = [false; 256];
        let mut pairs = vec![0u64; 1 << 10];
        let mut tris = vec![0u64; TRI_BITS / 64];
        for a in &atoms {
            for w in a
                .get(..a.len().min(LOOKBACK))
                .unwrap_or_default()
                .windows(3)
            {
                if let [x, y, z] = *w {
                    let (slot, bit) = tri_slot(x, y, z);
                    if let Some(t) = tris.get_mut(slot) {
                        *t |= bit;
                    }
                }
            }
            if let [x, y, ..] = a.as_slice() {
                let p = (usize::from(*x) << 8) | usize::from(*y);
                if let Some(w) = pairs.get_mut(p >> 6) {
                    *w |= 1 << (p & 63);
                }
            }
            if let Some(slot) = a.first().and_then(|&f| first.get_mut(usize::from(f))) {
                *slot = true;
            }
            let mut h = 0u64;
            for (k, &x) in a.iter().take(LOOKBACK).enumerate() {
                h = h.wrapping_mul(HASH_BASE).wrapping_add(u64::from(x));
                let (slot, bit) = prefix_slot(h, k + 1);
                if let Some(w) = prefixes.get_mut(slot) {
                    *w |= bit;
                }
            }
        }
        let max_len = atoms.iter().map(Vec::len).max().unwrap_or(0);
        Some(DecodePass {
            atoms,
            owners,
            by_suffix,
            filter,
            prefixes,
            first,
            pairs,
            tris,
            max_len,
        })
    }

    /// Whether some atom belongs to more than one secret.
    pub(crate) fn shares_atoms(&self) -> bool {
        self.owners.iter().any(|o| o.len() > 1)
    }

    /// Longest atom in bytes.
    pub(crate) fn max_len(&self) -> usize {
        self.max_len
    }

    /// The secrets owning atom `pattern`.
    pub(crate) fn owners(&self, pattern: u32) -> &[u32] {
        self.owners
            .get(pattern as usize)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Heap bytes used.
    pub(crate) fn memory_usage(&self) -> usize {
        self.atoms.iter().map(Vec::capacity).sum::<usize>()
            + self.by_suffix.len() * 48
            + self.filter.len() * 8
            + self.prefixes.len() * 8
            + self.pairs.len() * 8
            + self.tris.len() * 8
    }

    /// A fresh state for one stream.
    pub(crate) fn state(&self) -> DecodeState {
        DecodeState::default()
    }

    /// Feeds `chunk` (at absolute offset `base`); reports matches into `hits`.
    pub(crate) fn scan(&self, st: &mut DecodeState, chunk: &[u8], base: u64, hits: &mut Vec<Hit>) {
        let ascii = chunk.is_ascii();
        // The first trigger of an ASCII chunk, found once for both readers.
        let [a, b, c] = TRIGGERS;
        let first = ascii.then(|| memchr::memchr3(a, b, c, chunk));
        // The words both byte readers look for, found once.
        let mut words = std::mem::take(&mut st.words);
        if chunk.len() > list::SHORT_CHUNK || list::may_open(chunk) {
            list::stride_words(chunk, &mut words);
        } else {
            words.clear();
        }
        self.scan_dump(
            &mut st.dump,
            chunk,
            base,
            (ascii, first == Some(None)),
            &words,
            hits,
        );
        self.scan_list(&mut st.list, chunk, base, &words, hits);
        st.words = words;
        let mut i = 0;
        while i < chunk.len() {
            if !st.active && st.esc == Esc::Ground {
                let rest = chunk.get(i..).unwrap_or_default();
                let found = match first {
                    Some(f) if i == 0 => f,
                    _ => next_trigger(rest, ascii),
                };
                let Some(k) = found else {
                    break;
                };
                let at = i + k;
                self.seed(st, chunk, base, at);
                st.active = true;
                i = at;
            }
            if let Some(&b) = chunk.get(i) {
                self.step(st, b, base + i as u64, hits);
            }
            i += 1;
        }
        // Hold back the plain bytes at the end that a run starting in the next chunk could
        // begin with (the same bytes a one-shot pass would seed it with).
        let end = base + chunk.len() as u64;
        st.hold_from = match self.quick_hold_raw(chunk, base) {
            Some(hold) => hold,
            None => {
                let (pre, n) = self.lookback(st, chunk, base, chunk.len());
                let pre = pre.get(..n).unwrap_or_default();
                self.plain_start(pre).and_then(|i| pre.get(i)).map(|b| b.1)
            }
        };
        // Keep the last raw bytes for the look-back of a run starting early in the next chunk,
        // and the plain bytes before them if those raw bytes hold fewer than LOOKBACK.
        // Bytes above space are plain; counting only those (a vectorised count) may count
        // too few, which only keeps plain bytes that are not needed.
        let plain = |b: &[u8]| b.iter().filter(|&&x| x > b' ').count();
        let keep = LOOKBACK_RAW.min(chunk.len());
        let plain_kept = plain(chunk.get(chunk.len() - keep..).unwrap_or_default());
        let from = (st.tail.len() + keep).saturating_sub(LOOKBACK_RAW);
        if chunk.len() >= LOOKBACK_RAW {
            if plain_kept >= LOOKBACK {
                if !st.older.is_empty() {
                    clear_older(&mut st.older);
                }
            } else {
                let (pre, n) = self.lookback(st, chunk, base, chunk.len() - keep);
                clear_older(&mut st.older);
                st.older.extend_from_slice(pre.get(..n).unwrap_or_default());
            }
            st.tail.zeroize();
            st.tail.clear();
            st.tail
                .extend_from_slice(chunk.get(chunk.len() - keep..).unwrap_or_default());
        } else {
            if plain_kept + plain(st.tail.get(from.min(st.tail.len())..).unwrap_or_default())
                >= LOOKBACK
            {
                clear_older(&mut st.older);
            } else if from > 0 {
                // Raw bytes leaving the tail: their plain bytes join the older ones.
                let tail_start = st.tail_end - st.tail.len() as u64;
                for (j, &b) in st.tail.iter().enumerate().take(from) {
                    if !crate::normalize::is_space(b) {
                        st.older.push((b, tail_start + j as u64));
                    }
                }
                let extra = st.older.len().saturating_sub(LOOKBACK);
                for w in st.older.iter_mut().take(extra) {
                    *w = (0, 0);
                }
                st.older.drain(..extra);
            }
            st.tail.extend_from_slice(chunk);
            let drop = st.tail.len().saturating_sub(LOOKBACK_RAW);
            for b in st.tail.iter_mut().take(drop) {
                *b = 0;
            }
            st.tail.drain(..drop);
        }
        st.tail_end = end;
    }

    /// Ends the stream: an escape still open at the end (`&#116` with no `;`) is decoded.
    pub(crate) fn finish(&self, st: &mut DecodeState, hits: &mut Vec<Hit>) {
        self.flush(st, st.total_end(), hits);
        let end = st.total_end();
        self.finish_dump(&mut st.dump, end, hits);
        self.finish_list(&mut st.list, hits);
        *st = DecodeState::default();
    }

    /// The earliest offset a match not yet reported could start at, or `total`.
    pub(crate) fn hold_bound(&self, st: &DecodeState, total: u64) -> u64 {
        let mut b = total;
        if st.esc != Esc::Ground {
            b = b.min(st.esc_start);
        }
        // The window can begin a match once it holds an escape, or while one is being read.
        let n = st.window.len();
        if st.active
            && (st.has_escape || st.esc != Esc::Ground)
            && let Some(&(_, s, _)) = st.window.get(n.saturating_sub(self.max_len))
        {
            b = b.min(s);
        }
        if let Some(h) = st.hold_from {
            b = b.min(h);
        }
        if let Some(h) = self.dump_hold(&st.dump, total) {
            b = b.min(h);
        }
        if let Some(h) = self.list_hold(&st.list) {
            b = b.min(h);
        }
        b
    }

    /// At a pause ([`crate::RedactStream::flush`]): the decoded tail that could still grow
    /// into an atom, as the start offsets of its units in order (an escape still open counts
    /// as one unit, at its start). Empty when none could.
    ///
    /// The tail is the longest run of decoded units at the end of the current run that some
    /// atom begins with (compared exactly, byte by byte: a pause is rare and may take a few
    /// microseconds), followed by the open escape if any.
    pub(crate) fn pause_tail(&self, st: &DecodeState) -> Vec<u64> {
        let mut starts = self.tail_units(&st.window);
        if st.esc != Esc::Ground {
            starts.push(st.esc_start);
        }
        let dump = self.dump_pause_tail(&st.dump);
        if dump.len() > starts.len() {
            starts = dump;
        }
        let list = self.list_pause_tail(&st.list);
        if list.len() > starts.len() {
            starts = list;
        }
        starts
    }

    /// The start offsets, in order, of the units of the longest run at the end of `window`
    /// (its last [`DecodePass::max_len`] units) that some atom begins with.
    fn tail_units(&self, window: &[(u8, u64, u64)]) -> Vec<u64> {
        let n = window.len();
        let win = window
            .get(n.saturating_sub(self.max_len)..)
            .unwrap_or_default();
        let mut best = win.len();
        for atom in &self.atoms {
            let Some(&a0) = atom.first() else { continue };
            for j in 0..best {
                let Some(seg) = win.get(j..) else { break };
                if seg.len() >= atom.len() || seg.first().is_none_or(|w| w.0 != a0) {
                    continue;
                }
                if seg.iter().zip(atom).all(|(w, &y)| w.0 == y) {
                    best = j;
                    break;
                }
            }
        }
        let mut starts: Vec<u64> = Vec::new();
        for &(_, s, _) in win.get(best..).unwrap_or_default() {
            if starts.last() != Some(&s) {
                starts.push(s);
            }
        }
        starts
    }

    /// The last [`LOOKBACK`] non-whitespace bytes before `at` in `chunk` (continuing into the
    /// previous chunks' ones), in order, stopping at a whitespace run of [`GAP_MAX`] bytes.
    fn lookback(
        &self,
        st: &DecodeState,
        chunk: &[u8],
        base: u64,
        at: usize,
    ) -> ([(u8, u64); LOOKBACK], usize) {
        // Collected nearest first, then reversed into order.
        let mut pre = [(0u8, 0u64); LOOKBACK];
        let mut n = 0;
        let mut next = base + at as u64;
        let mut stopped = false;
        for (j, &b) in chunk.get(..at).unwrap_or_default().iter().enumerate().rev() {
            let p = base + j as u64;
            if n == LOOKBACK || next - p > GAP_MAX {
                stopped = true;
                break;
            }
            if crate::normalize::is_space(b) {
                continue;
            }
            if let Some(slot) = pre.get_mut(n) {
                *slot = (b, p);
                n += 1;
                next = p;
            }
        }
        if !stopped && st.tail_end == base {
            let tail_start = st.tail_end - st.tail.len() as u64;
            for (j, &b) in st.tail.iter().enumerate().rev() {
                let p = tail_start + j as u64;
                if n == LOOKBACK || next - p > GAP_MAX {
                    stopped = true;
                    break;
                }
                if crate::normalize::is_space(b) {
                    continue;
                }
                if let Some(slot) = pre.get_mut(n) {
                    *slot = (b, p);
                    n += 1;
                    next = p;
                }
            }
        }
        if !stopped && st.tail_end == base {
            for &(b, p) in st.older.iter().rev() {
                if n == LOOKBACK || next.saturating_sub(p) > GAP_MAX {
                    break;
                }
                if let Some(slot) = pre.get_mut(n) {
                    *slot = (b, p);
                    n += 1;
                    next = p;
                }
            }
        }
        if let Some(p) = pre.get_mut(..n) {
            p.reverse();
        }
        (pre, n)
    }

    /// [`DecodePass::quick_hold`] on the last three non-whitespace bytes among the last
    /// [`LOOKBACK_RAW`] raw bytes of `chunk` (the last three of the look-back, when there are
    /// three: no whitespace run between them reaches [`GAP_MAX`]); `None` when there are fewer.
    fn quick_hold_raw(&self, chunk: &[u8], base: u64) -> Option<Option<u64>> {
        let from = chunk.len().saturating_sub(LOOKBACK_RAW);
        let mut last = [(0u8, 0u64); 3];
        let mut k = 0;
        for (j, &b) in chunk
            .get(from..)
            .unwrap_or_default()
            .iter()
            .enumerate()
            .rev()
        {
            if crate::normalize::is_space(b) {
                continue;
            }
            if let Some(slot) = last.get_mut(2 - k) {
                *slot = (b, base + (from + j) as u64);
            }
            k += 1;
            if k == 3 {
                break;
            }
        }
        if k < 3 {
            return None;
        }
        self.quick_hold(&last)
    }

    /// The chunk-end hold without the prefix filter, when the last three look-back bytes
    /// `pre` are no 3-byte window of any atom's first [`LOOKBACK`] bytes (a hashed filter: most
    /// chunk ends of ordinary output): then no suffix of three bytes or more begins an atom,
    /// and the last two bytes are checked exactly. `None` when the prefix filter is needed.
    /// Never holds less than it would for a suffix that really begins an atom.
    fn quick_hold(&self, pre: &[(u8, u64)]) -> Option<Option<u64>> {
        let [.., (x, _), (y, py), (z, pz)] = *pre else {
            return None;
        };
        if self.tri_has(x, y, z) {
            return None;
        }
        let hold = if self.pair_has(y, z) {
            Some(py)
        } else if self.first.get(usize::from(z)).copied().unwrap_or(false) {
            Some(pz)
        } else {
            None
        };
        Some(hold)
    }

    fn pair_has(&self, x: u8, y: u8) -> bool {
        let p = (usize::from(x) << 8) | usize::from(y);
        self.pairs
            .get(p >> 6)
            .is_some_and(|w| w & (1 << (p & 63)) != 0)
    }

    fn tri_has(&self, x: u8, y: u8, z: u8) -> bool {
        let (slot, bit) = tri_slot(x, y, z);
        self.tris.get(slot).is_some_and(|w| w & bit != 0)
    }

    /// The index in `bytes` of the earliest start of a suffix that is a prefix of some atom.
    ///
    /// Run at every chunk end, so cheap first: a start must be a byte that begins some atom
    /// and, unless it is the last byte, the pair of bytes there must begin some atom (an exact
    /// 2^16-bit table); only such starts are hashed and probed in the prefix filter.
    fn plain_start(&self, bytes: &[(u8, u64)]) -> Option<usize> {
        let n = bytes.len();
        for (i, &(x, _)) in bytes.iter().enumerate() {
            let possible = match bytes.get(i + 1) {
                Some(&(y, _)) => self.pair_has(x, y),
                None => self.first.get(usize::from(x)).copied().unwrap_or(false),
            };
            if !possible {
                continue;
            }
            let h = bytes
                .get(i..)
                .unwrap_or_default()
                .iter()
                .fold(0u64, |h, &(b, _)| {
                    h.wrapping_mul(HASH_BASE).wrapping_add(u64::from(b))
                });
            let (slot, bit) = prefix_slot(h, n - i);
            if self.prefixes.get(slot).is_some_and(|w| w & bit != 0) {
                return Some(i);
            }
        }
        None
    }

    /// Puts the plain bytes just before a trigger at `at` that could begin an atom into the
    /// window.
    fn seed(&self, st: &mut DecodeState, chunk: &[u8], base: u64, at: usize) {
        st.window.clear();
        st.since_escape = 0;
        st.has_escape = false;
        let (pre, n) = self.lookback(st, chunk, base, at);
        let pre = pre.get(..n).unwrap_or_default();
        if let Some(i) = self.plain_start(pre) {
            for &(b, p) in pre.get(i..).unwrap_or_default() {
                st.window.push((b, p, p + 1));
            }
        }
    }

    fn step(&self, st: &mut DecodeState, b: u8, pos: u64, hits: &mut Vec<Hit>) {
        match st.esc {
            Esc::Ground => self.ground(st, b, pos, hits),
            Esc::Amp => {
                if b == b'#' {
                    st.pend_push(b);
                    st.esc = Esc::AmpHash;
                } else if b.is_ascii_alphabetic() {
                    st.pend_push(b);
                    st.esc = Esc::Named;
                } else {
                    self.fail(st, b, pos, hits);
                }
            }
            Esc::AmpHash => {
                if b == b'x' || b == b'X' {
                    st.pend_push(b);
                    st.esc = Esc::num(16, b';', 8, 1, true);
                } else if b.is_ascii_digit() {
                    st.esc = Esc::num(10, b';', 8, 1, true);
                    self.step(st, b, pos, hits);
                } else {
                    self.fail(st, b, pos, hits);
                }
            }
            Esc::Named => self.named(st, b, pos, hits),
            Esc::Pct => {
                if let Some(d) = hex(b) {
                    st.pend_push(b);
                    st.acc = d;
                    st.esc = Esc::Pct1;
                } else if (b == b'u' || b == b'U') && st.nest_end == 0 {
                    // `%uXXXX` (JavaScript `escape`, IIS).
                    st.pend_push(b);
                    st.esc = Esc::num(16, 0, 4, 4, false);
                } else {
                    self.fail(st, b, pos, hits);
                }
            }
            Esc::Pct1 | Esc::Bx1 => {
                if let Some(d) = hex(b) {
                    let v = (st.acc << 4) | d;
                    if v == u32::from(b'%') && st.esc == Esc::Pct1 {
                        // `%25`: a percent sign that may begin an escape of its own
                        // (double percent-encoding, `%2574` for `t`).
                        st.nest_end = pos + 1;
                        st.pend_len = 0;
                        st.acc = 0;
                        st.esc = Esc::Pct;
                        return;
                    }
                    let start = st.esc_start;
                    st.clear_esc();
                    self.unit_byte(st, u8::try_from(v).unwrap_or(0), start, pos + 1, hits);
                } else if st.esc == Esc::Bx1 {
                    // `\x4` followed by a non-hex byte: one digit.
                    let v = st.acc;
                    let start = st.esc_start;
                    st.clear_esc();
                    self.unit_byte(st, u8::try_from(v).unwrap_or(0), start, pos, hits);
                    self.step(st, b, pos, hits);
                } else {
                    self.fail(st, b, pos, hits);
                }
            }
            Esc::Bs => match b {
                b'x' => {
                    st.pend_push(b);
                    st.esc = Esc::Bx;
                }
                b'u' => {
                    st.pend_push(b);
                    st.esc = Esc::Bu;
                }
                b'U' => {
                    st.pend_push(b);
                    st.esc = Esc::num(16, 0, 8, 8, false);
                }
                b'N' => {
                    st.pend_push(b);
                    st.esc = Esc::BigN;
                }
                b'o' => {
                    // Perl, C++23 `\o{164}`; a bare `\o` is an identity escape.
                    st.pend_push(b);
                    st.esc = Esc::Bo;
                }
                b'\n' | b'\r' => {
                    // A line continuation (C, Python, shells): the backslash and line break
                    // stand for nothing; like an invisible character, they count as an escape.
                    st.clear_esc();
                    st.mark_escape();
                }
                _ if b.is_ascii_graphic() && hex(b).is_none() => {
                    // An identity escape: `\k` is `k` in CSS, JavaScript, Perl, Ruby and
                    // shells (C-family `\n` `\t` `\r` are read as the letters too).
                    let start = st.esc_start;
                    st.clear_esc();
                    self.unit_byte(st, b, start, pos + 1, hits);
                }
                _ => {
                    if hex(b).is_some() {
                        // CSS: 1 to 6 hex digits, then one optional whitespace.
                        st.esc = Esc::num(16, 0, 6, 1, false);
                        if let Esc::Num { ws, .. } = &mut st.esc {
                            *ws = true;
                        }
                        self.step(st, b, pos, hits);
                    } else {
                        self.fail(st, b, pos, hits);
                    }
                }
            },
            Esc::Bx => {
                if let Some(d) = hex(b) {
                    st.pend_push(b);
                    st.acc = d;
                    st.esc = Esc::Bx1;
                } else if b == b'{' {
                    // Perl, PHP `\x{74}`.
                    st.pend_push(b);
                    st.esc = Esc::num(16, b'}', 8, 1, true);
                } else {
                    self.fail(st, b, pos, hits);
                }
            }
            Esc::Bu => {
                if b == b'{' {
                    st.pend_push(b);
                    st.esc = Esc::num(16, b'}', 8, 1, true);
                } else if hex(b).is_some() {
                    st.esc = Esc::num(16, 0, 4, 4, false);
                    self.step(st, b, pos, hits);
                } else {
                    self.fail(st, b, pos, hits);
                }
            }
            Esc::Bo => {
                if b == b'{' {
                    st.pend_push(b);
                    st.esc = Esc::num(8, b'}', 8, 1, true);
                } else {
                    // `\o` then anything else: the letter `o`, then `b` looked at anew.
                    let start = st.esc_start;
                    st.clear_esc();
                    self.unit_byte(st, b'o', start, pos, hits);
                    self.step(st, b, pos, hits);
                }
            }
            Esc::BigN => {
                if b == b'{' {
                    st.pend_push(b);
                    st.esc = Esc::NameBrace;
                } else {
                    self.fail(st, b, pos, hits);
                }
            }
            Esc::NameBrace => self.name_brace(st, b, pos, hits),
            Esc::Num {
                radix,
                end,
                max,
                min,
                ws,
                lead0,
            } => {
                let d = match radix {
                    8 => (b'0'..=b'7').contains(&b).then(|| u32::from(b - b'0')),
                    10 => b.is_ascii_digit().then(|| u32::from(b - b'0')),
                    _ => hex(b),
                };
                if d.is_none()
                    && b == b'_'
                    && end == b'}'
                    && st.ndig > 0
                    && st.ndig < MAX_ESCAPE_DIGITS
                {
                    // Rust allows underscores between the digits of `\u{…}` (bounded with
                    // the digits).
                    st.pend_push(b);
                    st.ndig += 1;
                    return;
                }
                if let Some(d) = d {
                    // A leading zero of a variable-width escape does not count towards its
                    // digits (`&#0000000116;`); the escape is bounded by MAX_ESCAPE_DIGITS.
                    let zero = lead0 && d == 0 && st.acc == 0;
                    let room = if !lead0 {
                        st.ndig < max
                    } else if zero {
                        st.ndig < MAX_ESCAPE_DIGITS
                    } else {
                        st.sig < max
                    };
                    if room {
                        st.pend_push(b);
                        st.acc = st.acc.saturating_mul(radix).saturating_add(d);
                        st.ndig += 1;
                        if !zero {
                            st.sig += 1;
                        }
                        if end == 0 && !ws && st.ndig == max {
                            // Fixed width (`\u0074`, `\U00000074`, `%u0074`): complete now.
                            self.close_num(st, pos + 1, None, hits);
                        }
                        return;
                    }
                }
                if st.ndig < min || (end == b'}' && b != b'}') {
                    self.fail(st, b, pos, hits);
                    return;
                }
                if end != 0 && b == end {
                    self.close_num(st, pos + 1, None, hits);
                } else if ws && crate::normalize::is_space(b) {
                    // CSS: the whitespace belongs to the escape, but the marker leaves it.
                    self.close_num(st, pos, None, hits);
                } else if end == 0 && !ws {
                    self.fail(st, b, pos, hits);
                } else {
                    // `&#116` with no `;`, CSS `\74x`: the reference ends before this byte.
                    self.close_num(st, pos, Some(b), hits);
                }
            }
            Esc::Utf8 { need } => {
                if b & 0xC0 == 0x80 {
                    st.pend_push(b);
                    if st.pend_len == need {
                        let cp = std::str::from_utf8(st.pend())
                            .ok()
                            .and_then(|s| s.chars().next())
                            .map(u32::from);
                        let start = st.esc_start;
                        if let Some(a) = cp.and_then(tables::lookalike) {
                            st.clear_esc();
                            self.unit_byte(st, a, start, pos + 1, hits);
                        } else if cp.is_some_and(tables::ignorable) {
                            // Nothing to decode, but it counts as an escape: a value with a
                            // zero-width character between its letters is a run.
                            st.clear_esc();
                            st.mark_escape();
                        } else {
                            // Any other character: plain bytes.
                            let bytes: Vec<u8> = st.pend().to_vec();
                            st.clear_esc();
                            for (j, x) in bytes.iter().enumerate() {
                                self.plain(st, *x, start + j as u64, hits);
                            }
                        }
                    }
                } else {
                    self.fail(st, b, pos, hits);
                }
            }
        }
    }

    /// `&name`: a named character reference is read up to its `;` (or, for the legacy names,
    /// up to the first byte that cannot continue a name).
    fn named(&self, st: &mut DecodeState, b: u8, pos: u64, hits: &mut Vec<Hit>) {
        if b.is_ascii_alphanumeric() && usize::from(st.pend_len) <= MAX_NAME {
            st.pend_push(b);
            return;
        }
        let name = st.pend().get(1..).unwrap_or_default();
        let text = tables::named_reference(name);
        match text {
            Some(t) if b == b';' => self.close_text(st, t, pos + 1, None, hits),
            Some(t) if tables::legacy_reference(name) && !b.is_ascii_alphanumeric() => {
                self.close_text(st, t, pos, Some(b), hits);
            }
            _ => self.fail(st, b, pos, hits),
        }
    }

    /// `\N{...}`: a Unicode character name of an ASCII character (Python) or `U+hex` (Perl).
    fn name_brace(&self, st: &mut DecodeState, b: u8, pos: u64, hits: &mut Vec<Hit>) {
        if b != b'}' {
            if (b.is_ascii_alphanumeric() || matches!(b, b' ' | b'-' | b'+'))
                && usize::from(st.pend_len) < 3 + MAX_CHAR_NAME
            {
                st.pend_push(b);
            } else {
                self.fail(st, b, pos, hits);
            }
            return;
        }
        let name = st.pend().get(3..).unwrap_or_default();
        let cp = match name {
            [b'U' | b'u', b'+', digits @ ..] if !digits.is_empty() && digits.len() <= 8 => digits
                .iter()
                .try_fold(0u32, |acc, &x| hex(x).map(|d| (acc << 4) | d)),
            _ => tables::ascii_by_name(name).map(u32::from),
        };
        match cp {
            Some(cp) => {
                st.acc = cp;
                self.close_num(st, pos + 1, None, hits);
            }
            None => self.fail(st, b, pos, hits),
        }
    }

    /// An escape that stands for `text` (one or more ASCII bytes) is complete; then `next` is
    /// processed if the escape did not consume it.
    fn close_text(
        &self,
        st: &mut DecodeState,
        text: &[u8],
        end: u64,
        next: Option<u8>,
        hits: &mut Vec<Hit>,
    ) {
        let start = st.esc_start;
        st.clear_esc();
        for &x in text {
            self.push(st, x, start, end, true, hits);
        }
        if let Some(b) = next {
            self.step(st, b, end, hits);
        }
    }

    fn ground(&self, st: &mut DecodeState, b: u8, pos: u64, hits: &mut Vec<Hit>) {
        match b {
            b'&' => st.open(Esc::Amp, b, pos),
            b'%' => st.open(Esc::Pct, b, pos),
            b'\\' => st.open(Esc::Bs, b, pos),
            0xC2..=0xDF => st.open(Esc::Utf8 { need: 2 }, b, pos),
            0xE0..=0xEF => st.open(Esc::Utf8 { need: 3 }, b, pos),
            0xF0..=0xF4 => st.open(Esc::Utf8 { need: 4 }, b, pos),
            _ if crate::normalize::is_space(b) => {}
            _ => self.plain(st, b, pos, hits),
        }
    }

    /// A numeric escape is complete: its code point (`acc`) as one unit ending at `end`; then
    /// `next` is processed if the escape did not consume it.
    fn close_num(&self, st: &mut DecodeState, end: u64, next: Option<u8>, hits: &mut Vec<Hit>) {
        let start = st.esc_start;
        let cp = st.acc;
        st.clear_esc();
        match char::from_u32(cp) {
            Some(c) => {
                let mut buf = [0u8; 4];
                let s = c.encode_utf8(&mut buf);
                let n = s.len();
                for x in buf.iter().take(n) {
                    self.push(st, *x, start, end, true, hits);
                }
                buf.zeroize();
            }
            None => st.end_run(),
        }
        if let Some(b) = next {
            self.step(st, b, end, hits);
        }
    }

    /// What looked like an escape is not one: its bytes are plain, and `b` is looked at anew.
    fn fail(&self, st: &mut DecodeState, b: u8, pos: u64, hits: &mut Vec<Hit>) {
        if st.nest_end != 0 {
            // `%25` then no escape: a percent sign, then the bytes after it.
            let (start, mid) = (st.esc_start, st.nest_end);
            let bytes: Vec<u8> = st.pend().to_vec();
            st.clear_esc();
            self.unit_byte(st, b'%', start, mid, hits);
            for (j, x) in bytes.iter().enumerate() {
                self.plain(st, *x, mid + j as u64, hits);
            }
            self.step(st, b, pos, hits);
            return;
        }
        if let [b'\\', l @ (b'x' | b'u' | b'U' | b'N'), digits @ ..] = st.pend()
            && digits.iter().all(u8::is_ascii_hexdigit)
        {
            // `\u12` then no more digits, `\N` without `{`: not the numeric escape, so an
            // identity escape of the letter (CSS, JavaScript, Perl), then the digits.
            let (l, start) = (*l, st.esc_start);
            let digits: Vec<u8> = digits.to_vec();
            st.clear_esc();
            self.unit_byte(st, l, start, start + 2, hits);
            for (j, x) in digits.iter().enumerate() {
                self.plain(st, *x, start + 2 + j as u64, hits);
            }
            self.step(st, b, pos, hits);
            return;
        }
        if !st.has_escape {
            // A trigger that began no escape (`50% done`, `a & b`): nothing to decode here,
            // the other passes see plain text.
            st.clear_esc();
            st.end_run();
            self.step(st, b, pos, hits);
            return;
        }
        let start = st.esc_start;
        let bytes: Vec<u8> = st.pend().to_vec();
        st.clear_esc();
        for (j, x) in bytes.iter().enumerate() {
            self.plain(st, *x, start + j as u64, hits);
        }
        self.step(st, b, pos, hits);
    }

    /// At the end of the stream: an open escape is completed if it can be, else made plain.
    fn flush(&self, st: &mut DecodeState, end: u64, hits: &mut Vec<Hit>) {
        match st.esc {
            Esc::Ground => {}
            Esc::Num { min, end: term, .. } if st.ndig >= min && term != b'}' => {
                self.close_num(st, end, None, hits);
            }
            Esc::Bx1 => {
                let v = st.acc;
                let start = st.esc_start;
                st.clear_esc();
                self.unit_byte(st, u8::try_from(v).unwrap_or(0), start, end, hits);
            }
            Esc::Named => {
                let name = st.pend().get(1..).unwrap_or_default();
                match tables::named_reference(name).filter(|_| tables::legacy_reference(name)) {
                    Some(t) => self.close_text(st, t, end, None, hits),
                    None => st.clear_esc(),
                }
            }
            _ if st.nest_end != 0 => {
                let (start, mid) = (st.esc_start, st.nest_end);
                st.clear_esc();
                self.unit_byte(st, b'%', start, mid, hits);
            }
            _ => st.clear_esc(),
        }
    }

    fn unit_byte(&self, st: &mut DecodeState, b: u8, start: u64, end: u64, hits: &mut Vec<Hit>) {
        self.push(st, b, start, end, true, hits);
    }

    fn plain(&self, st: &mut DecodeState, b: u8, pos: u64, hits: &mut Vec<Hit>) {
        if !st.active {
            return;
        }
        self.push(st, b, pos, pos + 1, false, hits);
    }

    /// Appends one decoded byte (from the unit `start..end`) and reports the atoms ending here.
    fn push(
        &self,
        st: &mut DecodeState,
        b: u8,
        start: u64,
        end: u64,
        escaped: bool,
        hits: &mut Vec<Hit>,
    ) {
        st.active = true;
        if crate::normalize::is_space(b) {
            // Dropped like plain whitespace (`&#32;`, `\t`): the atoms have none.
            if escaped {
                st.mark_escape();
            }
            return;
        }
        if escaped {
            st.since_escape = 0;
            st.has_escape = true;
        } else {
            st.since_escape += 1;
            if st.since_escape >= self.max_len {
                st.end_run();
                return;
            }
        }
        st.window.push((b, start, end));
        // Trimmed in batches (amortised O(1) a byte); only the last `max_len` bytes matter.
        if st.window.len() >= 2 * self.max_len.max(8) {
            let extra = st.window.len() - self.max_len;
            for w in st.window.iter_mut().take(extra) {
                w.0 = 0;
            }
            st.window.drain(..extra);
        }
        self.match_suffix(&st.window, hits);
    }

    /// Reports the atoms that `window` ends with; returns the last one found.
    fn match_suffix(&self, window: &[(u8, u64, u64)], hits: &mut Vec<Hit>) -> Option<u32> {
        let n = window.len();
        if n < crate::MIN_LEN.min(8) {
            return None;
        }
        let tail = window.get(n.saturating_sub(8)..).unwrap_or_default();
        let w = tail
            .iter()
            .fold(0u64, |acc, &(x, _, _)| (acc << 8) | u64::from(x));
        let (slot, bit) = filter_slot(w);
        if self.filter.get(slot).is_none_or(|x| x & bit == 0) {
            return None;
        }
        let cands = self.by_suffix.get(&w)?;
        let mut found = None;
        for &c in cands {
            let Some(atom) = self.atoms.get(c as usize) else {
                continue;
            };
            if atom.len() > n {
                continue;
            }
            let from = n - atom.len();
            let Some(seg) = window.get(from..) else {
                continue;
            };
            if seg.iter().zip(atom).all(|(&(x, _, _), &y)| x == y)
                && let (Some(first), Some(last)) = (seg.first(), seg.last())
            {
                hits.push(Hit {
                    start: first.1,
                    end: last.2,
                    pattern: c,
                    after_colour_code: false,
                });
                found = Some(c);
            }
        }
        found
    }
}

/// Wipes and empties the kept plain bytes.
fn clear_older(older: &mut Vec<(u8, u64)>) {
    for w in older.iter_mut() {
        *w = (0, 0);
    }
    older.clear();
}

fn tri_slot(x: u8, y: u8, z: u8) -> (usize, u64) {
    let w = (u32::from(x) << 16) | (u32::from(y) << 8) | u32::from(z);
    let i = (w.wrapping_mul(0x9E37_79B1) >> (32 - TRI_LOG)) as usize;
    (i / 64, 1u64 << (i % 64))
}

fn prefix_slot(h: u64, len: usize) -> (usize, u64) {
    let m =
        (h ^ (len as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    let i = (m >> 44) as usize % PREFIX_BITS;
    (i / 64, 1u64 << (i % 64))
}

fn word(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
}

fn hex(b: u8) -> Option<u32> {
    char::from(b).to_digit(16)
}

/// The next trigger in `rest`: an ASCII escape start, or in a non-ASCII chunk a lead byte of a
/// look-alike (U+2100 block `E2`, U+3000 `E3`, fullwidth `EF`, mathematical `F0`) or of an
/// invisible character (`C2`, `CC`, `CD`, `E1`, `E2`, `E3`, `EF`, `F0`, tags and variation
/// selectors `F3`, the Arabic letter mark `D8`: Arabic text then goes byte by byte, as CJK
/// text after `E3` does).
fn next_trigger(rest: &[u8], ascii: bool) -> Option<usize> {
    let [a, b, c] = TRIGGERS;
    let t = memchr::memchr3(a, b, c, rest);
    if ascii {
        return t;
    }
    let limit = t.unwrap_or(rest.len());
    let u = rest.get(..limit).unwrap_or_default().iter().position(|&x| {
        matches!(
            x,
            0xC2 | 0xCC | 0xCD | 0xD8 | 0xE1 | 0xE2 | 0xE3 | 0xEF | 0xF0 | 0xF3
        )
    });
    u.or(t)
}

/// The escape being read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Esc {
    #[default]
    Ground,
    /// `&`.
    Amp,
    /// `&#`.
    AmpHash,
    /// `&` and letters: a named reference.
    Named,
    /// Digits of a numeric escape: radix, terminator (0: none), most and fewest digits,
    /// whether one whitespace byte may end it (CSS), and whether leading zeros are free (do
    /// not count towards `max`).
    Num {
        radix: u32,
        end: u8,
        max: u8,
        min: u8,
        ws: bool,
        lead0: bool,
    },
    /// `%`, `%h`.
    Pct,
    Pct1,
    /// `\`, `\x`, `\xh`, `\u`, `\o`.
    Bs,
    Bx,
    Bx1,
    Bu,
    Bo,
    /// `\N`, `\N{` and a character name.
    BigN,
    NameBrace,
    /// Inside a multi-byte UTF-8 character of `need` bytes.
    Utf8 {
        need: u8,
    },
}

impl Esc {
    fn num(radix: u32, end: u8, max: u8, min: u8, lead0: bool) -> Esc {
        Esc::Num {
            radix,
            end,
            max,
            min,
            ws: false,
            lead0,
        }
    }
}

/// Bytes of an open escape kept for its replay as plain bytes.
const PEND: usize = 32;

/// One stream's decoding state.
#[derive(Clone, Default)]
pub(crate) struct DecodeState {
    esc: Esc,
    esc_start: u64,
    acc: u32,
    ndig: u8,
    /// Digits after the leading zeros.
    sig: u8,
    /// After `%25`: where it ends (0: not inside a double percent-escape).
    nest_end: u64,
    /// The escape's bytes (the first [`PEND`], for a replay as plain bytes).
    pend: [u8; PEND],
    pend_len: u8,
    /// A run is active: decoded bytes are collected and matched.
    active: bool,
    since_escape: usize,
    /// Decoded bytes with the original span of the unit each came from.
    window: Vec<(u8, u64, u64)>,
    /// The window holds an escaped unit (only then is output held back for this pass).
    has_escape: bool,
    /// The last raw bytes of the previous chunks (which ended at `tail_end`).
    tail: Vec<u8>,
    /// Plain bytes (with their offsets) before `tail`, kept only while `tail` holds fewer
    /// than [`LOOKBACK`] plain bytes.
    older: Vec<(u8, u64)>,
    tail_end: u64,
    /// Where the plain bytes at the end of the input so far that could begin a match start.
    hold_from: Option<u64>,
    /// Byte dumps with line offsets (`dump.rs`).
    dump: dump::DumpState,
    /// Byte lists anywhere in a line (`list.rs`).
    list: list::ListState,
    /// The words of the current chunk both readers look for (`list::stride_words`).
    words: Vec<(usize, bool)>,
}

impl Drop for DecodeState {
    fn drop(&mut self) {
        self.pend.zeroize();
        self.tail.zeroize();
        clear_older(&mut self.older);
        for w in &mut self.window {
            w.0 = 0;
        }
    }
}

impl std::fmt::Debug for DecodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeState")
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl DecodeState {
    fn open(&mut self, e: Esc, b: u8, pos: u64) {
        self.esc = e;
        self.esc_start = pos;
        self.acc = 0;
        self.ndig = 0;
        self.sig = 0;
        self.nest_end = 0;
        self.pend_len = 0;
        self.pend_push(b);
    }

    fn pend_push(&mut self, b: u8) {
        if let Some(x) = self.pend.get_mut(usize::from(self.pend_len)) {
            *x = b;
            self.pend_len += 1;
        }
    }

    fn pend(&self) -> &[u8] {
        self.pend
            .get(..usize::from(self.pend_len))
            .unwrap_or_default()
    }

    fn clear_esc(&mut self) {
        self.esc = Esc::Ground;
        self.pend.zeroize();
        self.pend_len = 0;
        self.acc = 0;
        self.ndig = 0;
        self.sig = 0;
        self.nest_end = 0;
    }

    /// A character that decodes to nothing was read (a zero-width character).
    fn mark_escape(&mut self) {
        if self.active {
            self.since_escape = 0;
            self.has_escape = true;
        }
    }

    fn end_run(&mut self) {
        self.active = false;
        self.has_escape = false;
        self.since_escape = 0;
        for w in &mut self.window {
            w.0 = 0;
        }
        self.window.clear();
    }

    fn total_end(&self) -> u64 {
        self.tail_end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(value: &str, text: &str) -> Vec<(u64, u64)> {
        let p = DecodePass::build(vec![(value.as_bytes().to_vec(), 0)]).unwrap();
        let mut st = p.state();
        let mut hits = Vec::new();
        p.scan(&mut st, text.as_bytes(), 0, &mut hits);
        p.finish(&mut st, &mut hits);
        hits.iter().map(|h| (h.start, h.end)).collect()
    }

    #[test]
    fn every_spelling_and_mix_is_decoded() {
        let v = "tok_J4x9q";
        let forms = [
            "&#116;&#111;&#107;&#95;&#74;&#52;&#120;&#57;&#113;",
            "&#0116;&#00111;&#107&#95;&#74;&#52;&#120;&#57;&#113;",
            "&#X74;&#x6F;&#x006b;&#x5f&#x4A;&#x34;&#x78;&#x39;&#x71;",
            "%74%6F%6b%5F%4a%34%78%39%71",
            "\\x74\\x6f\\x6B\\x5f\\x4A\\x34\\x78\\x39\\x71",
            "\\u0074\\u006f\\u{6b}\\U0000005f\\u004A\\u0034\\u0078\\u0039\\u0071",
            "\\000074\\6f \\6B\\5f \\4a \\34 \\78 \\39 \\71",
            "ｔｏｋ＿Ｊ４ｘ９ｑ",
            "𝐭𝐨𝐤_𝐉𝟒𝐱𝟗𝐪",
            "𝓉ℴ𝓀_𝒥4𝓍9𝓆",
            "tok_&#74;4x9q",
            "tok_J4x%39q",
        ];
        for f in forms {
            let text = format!("a {f} b");
            let hits = find(v, &text);
            assert!(
                hits.iter().any(|&(s, e)| s == 2 && e == 2 + f.len() as u64),
                "{f}: {hits:?}"
            );
        }
    }

    #[test]
    fn chunk_splits_change_nothing() {
        let v = "tok_J4x9q";
        let text = "x &#0116;&#x6F;%6b\\x5f\\4a ｘ".replace('ｘ', "&#52;&#120;&#57;&#113; y");
        let whole = find(v, &text);
        assert_eq!(whole.len(), 1, "{whole:?}");
        let p = DecodePass::build(vec![(v.as_bytes().to_vec(), 0)]).unwrap();
        for n in 1..8 {
            let mut st = p.state();
            let mut hits = Vec::new();
            let mut base = 0;
            for c in text.as_bytes().chunks(n) {
                p.scan(&mut st, c, base, &mut hits);
                base += c.len() as u64;
            }
            p.finish(&mut st, &mut hits);
            let got: Vec<(u64, u64)> = hits.iter().map(|h| (h.start, h.end)).collect();
            assert_eq!(got, whole, "chunks of {n}");
        }
    }

    #[test]
    fn ordinary_escapes_are_left_alone() {
        let v = "tok_J4x9q";
        for t in [
            "100% done &amp; more \\n\\t C:\\x\\y &#; &#x; %zz",
            "tok_J4x9Q &#116;ok_J4x9",
            "ｔｏｋ＿Ｊ４ｘ９",
        ] {
            assert!(find(v, t).is_empty(), "{t}");
        }
    }
}

#[cfg(test)]
mod stream_tests {
    /// A value whose first characters are printed plain and the rest escaped is one marker,
    /// whatever the chunk size (the plain bytes that could begin a match are held back).
    #[test]
    fn plain_prefix_then_escapes_streams_like_one_shot() {
        let v = "ps_Lq8Zm3Xv7Rk2Tn";
        let r = crate::Redactor::new([("S", v)]);
        let text = "v=p&#115;%5f\\u004Cq&#56;%5a\\u006D3&#88;%76\\u0037R&#107;%32\\u0054n\nps_L then text\n";
        let (one, n) = r.redact(text.as_bytes());
        assert_eq!(n, 1);
        assert_eq!(
            String::from_utf8_lossy(&one),
            "v=[REDACTED:S]\nps_L then text\n"
        );
        for size in 1..9 {
            let mut s = r.stream();
            let mut out = Vec::new();
            for c in text.as_bytes().chunks(size) {
                s.push(c, &mut out);
            }
            s.finish(&mut out);
            assert_eq!(out, one, "chunks of {size}");
        }
    }
}
