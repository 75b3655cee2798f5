//! The sans-IO streaming redactor.
//!
//! [`RedactStream`] receives the output of a program in arbitrary chunks and returns redacted
//! bytes as soon as they can no longer be part of a match. It never looks at a clock: a partial
//! value stays held back however long the program pauses, and is released (redacted or not)
//! only when later bytes or [`RedactStream::finish`] decide it, or when the caller, having seen
//! the program go quiet, calls [`RedactStream::flush`] (which shows at most
//! [`FLUSH_SHOWN_MAX`] bytes of a possible match).
//!
//! # How output is decided
//!
//! Every pass ([`crate::matcher`]) reports every pattern occurrence as an interval of absolute
//! byte offsets. Occurrences of short values are kept only when bounded by non-alphanumeric
//! bytes (or the start/end of the stream). Overlapping intervals are merged into *regions*; each
//! region becomes one marker, named after its longest occurrence (then the earliest, then the
//! secret given first to [`crate::Redactor::new`]).
//!
//! The stream emits bytes up to the *safe offset*: the earliest offset at which an occurrence
//! not yet reported could still start (from each pass's state), or the start of a short-value
//! occurrence still waiting for the byte after it. A region is emitted only once it ends at or
//! before the safe offset, since only then can no later occurrence overlap and extend it.
//!
//! Because the passes consume one byte at a time with their state carried across chunks, and
//! output is a function of the final set of regions alone, the concatenated output is the same
//! for every split of the input into chunks (this is checked by property tests and the fuzz
//! target).

use crate::Inner;
use crate::decode::{DecodePass, DecodeState};
use crate::matcher::{Hit, Pass, PassState, Scope};
use std::collections::VecDeque;
use std::sync::Arc;
use zeroize::Zeroize;

/// A merged run of overlapping occurrences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    start: u64,
    end: u64,
    /// The occurrence that names the region: longest, then earliest, then lowest secret index.
    best_len: u64,
    best_start: u64,
    best_secret: u32,
}

impl Region {
    fn better_than(&self, other: &Region) -> bool {
        (
            self.best_len,
            std::cmp::Reverse(self.best_start),
            std::cmp::Reverse(self.best_secret),
        ) > (
            other.best_len,
            std::cmp::Reverse(other.best_start),
            std::cmp::Reverse(other.best_secret),
        )
    }
}

/// A streaming redactor for one output stream (stdout and stderr each get their own).
///
/// Created by [`crate::Redactor::stream`]. Feed chunks with [`RedactStream::push`] and end with
/// [`RedactStream::finish`]. After `finish` the stream is reset and may be reused for a new
/// stream (the redaction count keeps accumulating).
#[derive(Clone)]
pub struct RedactStream {
    inner: Arc<Inner>,
    raw: Option<PassState>,
    normalized: Option<PassState>,
    decode: Option<DecodeState>,
    /// Bytes not yet emitted; `buf[0]` is at absolute offset `buf_start`.
    buf: Vec<u8>,
    buf_start: u64,
    /// Absolute offset one past the last byte received.
    total: u64,
    /// The byte just before `buf_start`, if any (for token boundaries).
    prev_byte: Option<u8>,
    hits: Vec<Hit>,
    /// Short-value occurrences waiting for the byte after them.
    pending_tokens: VecDeque<(Hit, u32)>,
    regions: VecDeque<Region>,
    redactions: usize,
    seen: Vec<bool>,
    /// With [`RedactStream::record_spans`]: per secret, the byte ranges of its occurrences
    /// (at most [`MAX_SPANS`] each).
    spans: Option<Vec<Vec<(u64, u64)>>>,
    fail_marker_sent: bool,
    /// The possible match a [`RedactStream::flush`] last let out: where it starts, and how many
    /// significant bytes of it were shown ([`MASKED`]: it was masked).
    flushed_walk: Option<(u64, u64)>,
    /// The same for the decoding pass's possible match, counted in decoded units.
    flushed_dwalk: Option<(u64, u64)>,
}

/// Most occurrences [`crate::Redactor::find_leak_spans`] keeps per secret.
pub const MAX_SPANS: usize = 1024;

/// At a pause, a possible match of at most this many significant bytes (flushed ones included)
/// is shown as it is; a longer one is masked with [`PARTIAL_MARKER`].
pub const FLUSH_SHOWN_MAX: u64 = 3;

/// What a pause shows instead of a held-back tail that could be the start of a value (more than
/// [`FLUSH_SHOWN_MAX`] significant bytes of a possible match). Not a variable name (`?`), so it
/// is never mistaken for, or registered as, a value's marker.
pub const PARTIAL_MARKER: &[u8] = b"[REDACTED:?]";

/// [`RedactStream::flushed_walk`]'s count for a possible match that was masked.
const MASKED: u64 = u64::MAX;

impl Drop for RedactStream {
    fn drop(&mut self) {
        // Held-back output may be (part of) a secret.
        self.buf.zeroize();
        self.prev_byte.zeroize();
    }
}

impl std::fmt::Debug for RedactStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedactStream")
            .field("received", &self.total)
            .field("held_back", &self.buf.len())
            .field("redactions", &self.redactions)
            .finish_non_exhaustive()
    }
}

/// Marker emitted (once) by a stream whose redactor could not be built: all output is withheld.
pub(crate) const FAIL_MARKER: &[u8] = b"[REDACTED:KEYVEIL_REDACTOR_UNAVAILABLE]";

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// A byte the normalised view keeps (whitespace, NUL and `ESC` are noise there).
fn is_significant(b: u8) -> bool {
    !(b.is_ascii_whitespace() || b == 0 || b == 0x0b || b == 0x1b)
}

impl RedactStream {
    pub(crate) fn new(inner: Arc<Inner>) -> RedactStream {
        let raw = inner.raw.as_ref().map(|p| p.state());
        let normalized = inner.normalized.as_ref().map(|p| p.state());
        let decode = inner.decode.as_ref().map(DecodePass::state);
        let seen = vec![false; inner.names.len()];
        RedactStream {
            inner,
            raw,
            normalized,
            decode,
            buf: Vec::new(),
            buf_start: 0,
            total: 0,
            prev_byte: None,
            hits: Vec::new(),
            pending_tokens: VecDeque::new(),
            regions: VecDeque::new(),
            redactions: 0,
            seen,
            spans: None,
            fail_marker_sent: false,
            flushed_walk: None,
            flushed_dwalk: None,
        }
    }

    /// From now on, also keeps where each secret occurs (see [`RedactStream::spans`]).
    pub(crate) fn record_spans(&mut self) {
        self.spans = Some(vec![Vec::new(); self.seen.len()]);
    }

    /// With [`RedactStream::record_spans`]: per secret index, the byte ranges (absolute
    /// offsets, end exclusive) of its occurrences, in the order found (at most [`MAX_SPANS`]).
    pub(crate) fn spans(&self) -> Option<&[Vec<(u64, u64)>]> {
        self.spans.as_deref()
    }

    /// Feeds a chunk of output; appends to `out` every byte that can no longer be part of a
    /// match (values are replaced by `[REDACTED:NAME]`). At most
    /// [`crate::Redactor::max_pattern_len`] − 1 *significant* bytes are held back (whitespace
    /// and escape sequences inside a possible match are held back with it, and so are the
    /// character escapes the decoding pass reads: up to about 10 bytes each).
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.inner.failed {
            self.fail_closed(out);
            return;
        }
        if chunk.is_empty() {
            return;
        }
        let base = self.total;
        self.total += chunk.len() as u64;

        let inner = Arc::clone(&self.inner);
        let mut hits = std::mem::take(&mut self.hits);
        if let (Some(pass), Some(st)) = (inner.raw.as_ref(), self.raw.as_mut()) {
            hits.clear();
            pass.scan(st, chunk, base, &mut hits);
            self.absorb(pass, &mut hits);
        }
        if let (Some(pass), Some(st)) = (inner.normalized.as_ref(), self.normalized.as_mut()) {
            hits.clear();
            pass.scan(st, chunk, base, &mut hits);
            self.absorb(pass, &mut hits);
        }
        if let (Some(pass), Some(st)) = (inner.decode.as_ref(), self.decode.as_mut()) {
            hits.clear();
            pass.scan(st, chunk, base, &mut hits);
            self.absorb_decoded(pass, &mut hits);
        }
        self.hits = hits;
        if self.buf.is_empty() && self.regions.is_empty() && self.pending_tokens.is_empty() {
            // Nothing held and nothing found (the usual case): emit straight from the chunk and
            // keep only the undecided tail.
            let safe = self.safe_offset();
            let cut = usize::try_from(safe - base).unwrap_or(0).min(chunk.len());
            let (done, held) = chunk.split_at(cut);
            out.extend_from_slice(done);
            if let Some(&last) = done.last() {
                self.prev_byte = Some(last);
            }
            self.buf.extend_from_slice(held);
            self.buf_start = base + cut as u64;
            return;
        }
        self.buf.extend_from_slice(chunk);
        self.resolve_tokens(false);
        let safe = self.safe_offset();
        self.emit(safe, out);
    }

    /// Ends the stream: decides the held-back tail and appends it (redacted) to `out`, then
    /// resets the stream for reuse.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.inner.failed {
            self.fail_closed(out);
            self.fail_marker_sent = false;
            return;
        }
        let inner = Arc::clone(&self.inner);
        let mut hits = std::mem::take(&mut self.hits);
        if let (Some(pass), Some(st)) = (inner.normalized.as_ref(), self.normalized.as_mut()) {
            hits.clear();
            pass.finish(st, &mut hits);
            self.absorb(pass, &mut hits);
        }
        if let (Some(pass), Some(st)) = (inner.decode.as_ref(), self.decode.as_mut()) {
            hits.clear();
            pass.finish(st, &mut hits);
            self.absorb_decoded(pass, &mut hits);
        }
        self.resolve_tokens(true);
        self.emit(self.total, out);
        let redactions = self.redactions;
        let seen = std::mem::take(&mut self.seen);
        let spans = self.spans.take();
        *self = RedactStream::new(Arc::clone(&self.inner));
        self.redactions = redactions;
        self.seen = seen;
        self.spans = spans;
    }

    /// Whether output is held back (a possible match, or a match that could still grow).
    pub fn is_holding(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Lets out what is held back when the program has gone quiet (the caller decides when:
    /// keyveil's relay after 200 ms without output), without ending the stream and without
    /// showing more of a value than a pause can:
    ///
    /// * complete occurrences are masked, and a short value's occurrence at the end counts as
    ///   ended, as [`RedactStream::finish`] would decide them for the bytes so far;
    /// * a tail that could still be the start of a value (a possible match) is shown as it is
    ///   only while the possible match has at most [`FLUSH_SHOWN_MAX`] significant (not
    ///   whitespace, NUL or `ESC`) bytes, counting those shown at earlier pauses; a longer one
    ///   is replaced by [`PARTIAL_MARKER`];
    /// * the same bound holds for the decoding pass in decoded characters: a tail that could
    ///   still decode into the start of a value (`&#0000000116;&#111;…`, `t` + U+200B + `o`…)
    ///   is shown only while it has at most [`FLUSH_SHOWN_MAX`] decoded characters, counting
    ///   those shown at earlier pauses (an escape still open counts as one); a longer one is
    ///   replaced by [`PARTIAL_MARKER`];
    /// * the matching state is kept: later bytes continue every possible match, so an occurrence
    ///   that began before the pause is found when it completes and what follows the pause is
    ///   masked (the marker then covers only the bytes not yet let out).
    ///
    /// So pausing anywhere shows at most [`FLUSH_SHOWN_MAX`] bytes of any run of a value that
    /// one piece would have masked; no pattern is shorter than 8 bytes, so a program could print
    /// those bytes alone, unmasked, anyway. See `docs/redaction.md` ("Pauses").
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        if self.inner.failed {
            self.fail_closed(out);
            return;
        }
        if self.buf.is_empty() {
            return;
        }
        // Occurrences the normalised and decoding passes would report only at the end (an
        // escape sequence they hold): found on copies of their states; the real states carry on.
        let inner = Arc::clone(&self.inner);
        let mut hits = std::mem::take(&mut self.hits);
        if let (Some(pass), Some(st)) = (inner.normalized.as_ref(), self.normalized.as_ref()) {
            let mut st = st.clone();
            hits.clear();
            pass.finish(&mut st, &mut hits);
            self.absorb(pass, &mut hits);
        }
        if let (Some(pass), Some(st)) = (inner.decode.as_ref(), self.decode.as_ref()) {
            let mut st = st.clone();
            hits.clear();
            pass.finish(&mut st, &mut hits);
            self.absorb_decoded(pass, &mut hits);
        }
        self.hits = hits;
        self.resolve_tokens(true);

        // The plain passes' possible match: its significant bytes.
        let walk = self.walk_start();
        let plain = (walk < self.total).then(|| {
            let from = walk.max(self.buf_start);
            let here = (from..self.total)
                .filter(|&o| !self.in_region(o))
                .filter(|&o| self.byte_at(o).is_some_and(is_significant))
                .count() as u64;
            let before = match self.flushed_walk {
                Some((w, n)) if w == walk => n,
                // A possible match that began in bytes already let out: count them all.
                _ => self.buf_start.saturating_sub(walk),
            };
            (walk, before.saturating_add(here))
        });
        // The decoding pass's possible match: its decoded units (characters), the same bound.
        let units = match (inner.decode.as_ref(), self.decode.as_ref()) {
            (Some(pass), Some(st)) => pass.pause_tail(st),
            _ => Vec::new(),
        };
        let decoded = units.first().map(|&dwalk| {
            let here = units
                .iter()
                .filter(|&&s| s >= self.buf_start && !self.in_region(s))
                .count() as u64;
            let before = match self.flushed_dwalk {
                Some((w, n)) if w == dwalk => n,
                _ => units.iter().filter(|&&s| s < self.buf_start).count() as u64,
            };
            (dwalk, before.saturating_add(here))
        });
        let over = |p: Option<(u64, u64)>| p.filter(|&(_, n)| n > FLUSH_SHOWN_MAX).map(|p| p.0);
        let mask_from = match (over(plain), over(decoded)) {
            (None, None) => {
                self.emit(self.total, out);
                self.flushed_walk = plain.or(self.flushed_walk);
                self.flushed_dwalk = decoded.or(self.flushed_dwalk);
                return;
            }
            (a, b) => a.into_iter().chain(b).min().unwrap_or(self.total),
        };
        // Too much of a possible match: complete occurrences get their markers, every other
        // run of it from `mask_from` on one partial marker.
        let from = mask_from.max(self.buf_start);
        self.emit(from, out);
        let mut at = self.buf_start;
        while let Some(r) = self.regions.pop_front() {
            if r.start > at {
                out.extend_from_slice(PARTIAL_MARKER);
            }
            let marker = self
                .inner
                .markers
                .get(r.best_secret as usize)
                .map(Vec::as_slice)
                .unwrap_or(FAIL_MARKER);
            out.extend_from_slice(marker);
            self.redactions += 1;
            at = r.end;
        }
        if at < self.total {
            out.extend_from_slice(PARTIAL_MARKER);
        }
        self.prev_byte = self.buf.last().copied();
        self.buf.zeroize();
        self.buf.clear();
        self.buf_start = self.total;
        // A possible match wholly behind the marker stays masked; one that began before it
        // keeps its (over-)count.
        let mark = |p: (u64, u64)| if p.0 >= from { (p.0, MASKED) } else { p };
        self.flushed_walk = plain.map(mark).or(self.flushed_walk);
        self.flushed_dwalk = decoded.map(mark).or(self.flushed_dwalk);
    }

    /// Whether offset `o` lies in a region (a complete occurrence).
    fn in_region(&self, o: u64) -> bool {
        self.regions.iter().any(|r| r.start <= o && o < r.end)
    }

    /// The earliest offset at which an occurrence not yet reported could start, not bounded
    /// below by what was already let out ([`RedactStream::total`] when none).
    fn walk_start(&self) -> u64 {
        let mut start = self.total;
        if let (Some(pass), Some(st)) = (self.inner.raw.as_ref(), self.raw.as_ref()) {
            start = start.min(pass.pause_bound(st, self.total));
        }
        if let (Some(pass), Some(st)) = (self.inner.normalized.as_ref(), self.normalized.as_ref()) {
            start = start.min(pass.pause_bound(st, self.total));
        }
        start
    }

    /// Number of markers emitted so far.
    pub fn redactions(&self) -> usize {
        self.redactions
    }

    /// Indices of the secrets that had at least one occurrence so far.
    pub(crate) fn seen_secrets(&self) -> impl Iterator<Item = usize> + '_ {
        self.seen
            .iter()
            .enumerate()
            .filter(|(_, s)| **s)
            .map(|(i, _)| i)
    }

    fn fail_closed(&mut self, out: &mut Vec<u8>) {
        if !self.fail_marker_sent {
            out.extend_from_slice(FAIL_MARKER);
            self.fail_marker_sent = true;
        }
    }

    /// Takes the hits of one pass: short-value occurrences wait for their following byte,
    /// everything else becomes (part of) a region.
    fn absorb(&mut self, pass: &Pass, hits: &mut Vec<Hit>) {
        for h in hits.drain(..) {
            let Some(info) = pass.info.get(h.pattern as usize).copied() else {
                continue;
            };
            match info.scope {
                Scope::Token => self.pending_tokens.push_back((h, info.secret)),
                Scope::AfterColourCode if !h.after_colour_code => {}
                Scope::Anywhere | Scope::AfterColourCode => {
                    self.accept(h, info.secret, |_| pass.owners(h.pattern).collect());
                }
            }
        }
    }

    /// Takes the hits of the decoding pass (atoms, never short values).
    fn absorb_decoded(&mut self, pass: &DecodePass, hits: &mut Vec<Hit>) {
        for h in hits.drain(..) {
            let owners = pass.owners(h.pattern).to_vec();
            let Some(&secret) = owners.first() else {
                continue;
            };
            self.accept(h, secret, |_| owners.clone());
        }
    }

    fn raw_owners(&self, pattern: u32) -> Vec<u32> {
        self.inner
            .raw
            .as_ref()
            .map(|p| p.owners(pattern).collect())
            .unwrap_or_default()
    }

    fn byte_at(&self, offset: u64) -> Option<u8> {
        if offset + 1 == self.buf_start {
            return self.prev_byte;
        }
        let i = usize::try_from(offset.checked_sub(self.buf_start)?).ok()?;
        self.buf.get(i).copied()
    }

    /// Accepts or rejects short-value occurrences whose following byte is now known.
    fn resolve_tokens(&mut self, at_eof: bool) {
        while let Some(&(h, secret)) = self.pending_tokens.front() {
            if h.end >= self.total && !at_eof {
                break;
            }
            self.pending_tokens.pop_front();
            let before_ok =
                h.start == 0 || self.byte_at(h.start - 1).is_none_or(|b| !is_word_byte(b));
            let after_ok =
                h.end >= self.total || self.byte_at(h.end).is_none_or(|b| !is_word_byte(b));
            if before_ok && after_ok {
                self.accept(h, secret, |s| s.raw_owners(h.pattern));
            }
        }
    }

    /// Secret `s` occurs at `h`.
    fn mark_seen(&mut self, s: u32, h: &Hit) {
        if let Some(slot) = self.seen.get_mut(s as usize) {
            *slot = true;
        }
        if let Some(list) = self
            .spans
            .as_mut()
            .and_then(|sp| sp.get_mut(s as usize))
            .filter(|l| l.len() < MAX_SPANS && l.last() != Some(&(h.start, h.end)))
        {
            list.push((h.start, h.end));
        }
    }

    fn accept(&mut self, h: Hit, secret: u32, owners: impl Fn(&Self) -> Vec<u32>) {
        if self.inner.has_shared_patterns {
            for s in owners(self) {
                self.mark_seen(s, &h);
            }
        } else {
            self.mark_seen(secret, &h);
        }
        // Already let out (an occurrence a flush decided at a pause, reported again): nothing
        // is left to mask.
        if h.end <= self.buf_start {
            return;
        }
        let start = h.start.max(self.buf_start);
        let mut region = Region {
            start,
            end: h.end,
            best_len: h.end - h.start,
            best_start: h.start,
            best_secret: secret,
        };
        let i = self.regions.partition_point(|r| r.end <= region.start);
        while let Some(r) = self.regions.get(i) {
            if r.start >= region.end {
                break;
            }
            let r = *r;
            let keep_best = region.better_than(&r);
            region.start = region.start.min(r.start);
            region.end = region.end.max(r.end);
            if !keep_best {
                region.best_len = r.best_len;
                region.best_start = r.best_start;
                region.best_secret = r.best_secret;
            }
            self.regions.remove(i);
        }
        self.regions.insert(i, region);
    }

    fn safe_offset(&self) -> u64 {
        let mut safe = self.total;
        if let (Some(pass), Some(st)) = (self.inner.raw.as_ref(), self.raw.as_ref()) {
            safe = safe.min(pass.hold_bound(st, self.total));
        }
        if let (Some(pass), Some(st)) = (self.inner.normalized.as_ref(), self.normalized.as_ref()) {
            safe = safe.min(pass.hold_bound(st, self.total));
        }
        if let (Some(pass), Some(st)) = (self.inner.decode.as_ref(), self.decode.as_ref()) {
            safe = safe.min(pass.hold_bound(st, self.total));
        }
        if let Some((h, _)) = self.pending_tokens.iter().min_by_key(|(h, _)| h.start) {
            safe = safe.min(h.start);
        }
        safe.max(self.buf_start)
    }

    /// Emits everything before `safe` that is decided.
    fn emit(&mut self, safe: u64, out: &mut Vec<u8>) {
        let mut emitted = self.buf_start;
        while let Some(r) = self.regions.front().copied() {
            if r.start >= safe {
                break;
            }
            self.copy_out(emitted, r.start, out);
            emitted = r.start;
            if r.end > safe {
                break;
            }
            let marker = self
                .inner
                .markers
                .get(r.best_secret as usize)
                .map(Vec::as_slice)
                .unwrap_or(FAIL_MARKER);
            out.extend_from_slice(marker);
            self.redactions += 1;
            emitted = r.end;
            self.regions.pop_front();
        }
        let undecided = self.regions.front().map_or(safe, |r| r.start.min(safe));
        if undecided > emitted {
            self.copy_out(emitted, undecided, out);
            emitted = undecided;
        }
        let consumed = usize::try_from(emitted - self.buf_start).unwrap_or(0);
        if consumed > 0 {
            self.prev_byte = self.buf.get(consumed - 1).copied();
            self.buf.drain(..consumed.min(self.buf.len()));
            self.buf_start = emitted;
        }
    }

    fn copy_out(&self, from: u64, to: u64, out: &mut Vec<u8>) {
        if to <= from {
            return;
        }
        let a = usize::try_from(from - self.buf_start).unwrap_or(0);
        let b = usize::try_from(to - self.buf_start).unwrap_or(0);
        if let Some(s) = self.buf.get(a..b) {
            out.extend_from_slice(s);
        }
    }
}
