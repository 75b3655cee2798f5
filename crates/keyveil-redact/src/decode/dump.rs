//! Byte dumps with line offsets: `xxd -b` (`-c N`, `-g N`), `od -b`, `od -to1`, `hexdump -b`,
//! `od -tu1`, with any offset radix (`-Ax`, `-Ad`).
//!
//! A dump prints a value a few bytes a line, each line starting with an offset and, for `xxd`,
//! ending with a text column: no line holds a 12-byte fragment, and the offsets split every
//! registered form. This view reads the dump instead: every *dump line* (an offset of 4 to 16
//! hex digits, an optional `:`, whitespace, then byte tokens separated by whitespace) is cut into
//! tokens, and each token is read in three radices at once, each its own stream of decoded
//! bytes: base 2 (8 digits a byte, or 16, 24 ... for `xxd -b -g N`), octal (3 digits, `od -b`)
//! and decimal (1 to 3 digits, `od -tu1`). A radix stops reading a line at its first token it
//! cannot read (the text column); consecutive dump lines continue one stream; any other line
//! ends them. The streams are matched against the atoms like the escapes of the decoding pass.
//! A match also masks, on the line where it ends, the text column (everything from the first
//! unread token to the line end), which spells the same bytes.
//!
//! Cost: ordinary output is not read byte by byte. A dump line's head (its first
//! [`LINE_HEAD`] bytes, all offset digits, `:` and whitespace) holds [`D_RUN`] digits and
//! spaces in a row, so the pass looks for such runs 64 bytes at a time (a vectorised bitmask
//! and shifts) and, only at one, looks back for the start of the line. A line begun in an earlier chunk whose head is still
//! undecided is kept and held back until it is decided, so streaming equals one-shot.

use zeroize::Zeroize;

use super::DecodePass;
use crate::matcher::Hit;

/// A dump line's head: its first bytes are read up to this many to decide whether it begins a
/// dump ([`line_head`]).
const LINE_HEAD: usize = 64;

/// Digits, spaces and `:` in a row that a dump line's head must hold ([`is_d`]: the offset
/// `00000000: ` and four `xxd -b` tokens, or eight `od -b` ones).
const D_RUN: usize = WORD_STRIDE + 7;

/// Distance between the 8-byte words tested for a dump line's head.
const WORD_STRIDE: usize = 32;

/// Longest offset read (hex digits).
const MAX_OFFSET: u8 = 16;

/// Most binary digits of one token (`xxd -b -g 8`).
const MAX_BITS: usize = 64;

/// Bytes a dump line begins with: hex digits (offsets), `:`, space, tab, CR.
// Indexing in a constant initialiser is checked at compile time.
#[allow(clippy::indexing_slicing)]
static T: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_hexdigit() || matches!(b, b':' | b' ' | b'\t' | b'\r');
        i += 1;
    }
    t
};

fn is_t(b: u8) -> bool {
    T.get(usize::from(b)).copied().unwrap_or(false)
}

/// Digits, space and `:`: the bytes of an offset without hex letters and of the byte tokens.
fn is_d(b: u8) -> bool {
    b.is_ascii_digit() || b == b' ' || b == b':'
}

/// Whether a line whose first bytes are `head` begins a dump: its first [`LINE_HEAD`] bytes, up
/// to the first byte that is not [`T`], hold [`D_RUN`] digits and spaces in a row. `None`
/// while undecided (`head` is all [`T`], shorter than [`LINE_HEAD`], without such a run).
fn line_head(head: &[u8]) -> Option<bool> {
    let mut run = 0;
    for &b in head.iter().take(LINE_HEAD) {
        if !is_t(b) {
            return Some(false);
        }
        run = if is_d(b) { run + 1 } else { 0 };
        if run >= D_RUN {
            return Some(true);
        }
    }
    if head.len() >= LINE_HEAD {
        Some(false)
    } else {
        None
    }
}

/// The offset of the first 8-byte word of `bytes` at a multiple of [`WORD_STRIDE`] that is all
/// [`is_d`] bytes (every run of [`D_RUN`] of them holds one). A mask test first: a word holding
/// a byte of 0x40 or above (a letter), as most words of text do, fails it.
fn next_digit_word(bytes: &[u8]) -> Option<usize> {
    const HIGH: u64 = 0xC0C0_C0C0_C0C0_C0C0;
    let word = |w: &[u8]| u64::from_le_bytes(w.try_into().unwrap_or([0xff; 8]));
    let digits = |p: usize| {
        bytes
            .get(p..p + 8)
            .is_some_and(|w| word(w) & HIGH == 0 && w.iter().all(|&b| is_d(b)))
    };
    // Four tested words (128 bytes) a step, one branch.
    let (blocks, _) = bytes.as_chunks::<{ 4 * WORD_STRIDE }>();
    let mut at = 0;
    for block in blocks {
        let low = |k: usize| {
            block
                .get(k * WORD_STRIDE..k * WORD_STRIDE + 8)
                .is_some_and(|w| word(w) & HIGH == 0)
        };
        if (low(0) | low(1) | low(2) | low(3))
            && let Some(k) = (0..4).find(|&k| digits(at + k * WORD_STRIDE))
        {
            return Some(at + k * WORD_STRIDE);
        }
        at += 4 * WORD_STRIDE;
    }
    let mut p = at;
    while p + 8 <= bytes.len() {
        if digits(p) {
            return Some(p);
        }
        p += WORD_STRIDE;
    }
    None
}

fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | 0x0b | 0x0c)
}

/// Where the reader is in a dump line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Line {
    #[default]
    Start,
    Offset,
    Colon,
    Data,
}

/// One radix's stream of decoded bytes.
#[derive(Clone, Debug, Default)]
struct View {
    /// Decoded bytes with the span of the token (or 8 binary digits) each came from.
    window: Vec<(u8, u64, u64)>,
    /// This radix read no more of the current line; from where (the text column).
    rest: Option<u64>,
    /// An atom matched on this line: its pattern, and where its match ended.
    pending: Option<(u32, u64)>,
}

impl View {
    fn clear(&mut self) {
        for w in &mut self.window {
            w.0 = 0;
        }
        self.window.clear();
        self.rest = None;
        self.pending = None;
    }
}

/// One stream's dump-reading state.
#[derive(Clone, Default)]
pub(crate) struct DumpState {
    /// Reading dump lines byte by byte.
    on: bool,
    line: Line,
    off_len: u8,
    /// Skipping the rest of a line that is no dump line.
    skip: bool,
    /// The next byte begins a line (start of the stream, or after a line feed).
    at_line_start: bool,
    /// The token being read.
    tok_start: u64,
    tok_len: usize,
    all01: bool,
    all07: bool,
    alldig: bool,
    num8: u32,
    num10: u32,
    bits: u8,
    tok_bytes: [u8; MAX_BITS / 8],
    /// Base 2, octal, decimal.
    views: [View; 3],
    /// A line begun in earlier chunks, undecided ([`line_head`]).
    pre: Vec<u8>,
    pre_start: u64,
    started: bool,
}

impl Drop for DumpState {
    fn drop(&mut self) {
        self.tok_bytes.zeroize();
        self.pre.zeroize();
        for v in &mut self.views {
            v.clear();
        }
    }
}

impl DumpState {
    fn reset_token(&mut self) {
        self.tok_len = 0;
        self.all01 = true;
        self.all07 = true;
        self.alldig = true;
        self.num8 = 0;
        self.num10 = 0;
        self.bits = 0;
        self.tok_bytes.zeroize();
    }

    fn stop(&mut self) {
        self.on = false;
        self.line = Line::Start;
        self.reset_token();
        for v in &mut self.views {
            v.clear();
        }
    }
}

impl DecodePass {
    /// Feeds `chunk` (at absolute offset `base`) to the dump reader.
    pub(super) fn scan_dump(
        &self,
        st: &mut DumpState,
        chunk: &[u8],
        base: u64,
        hits: &mut Vec<Hit>,
    ) {
        if !st.started {
            st.started = true;
            st.at_line_start = true;
        }
        let began_at_line_start = st.at_line_start && st.pre.is_empty() && !st.on && !st.skip;
        let n = chunk.len();
        let mut i = 0;
        if !st.pre.is_empty() {
            // A line begun in earlier chunks, undecided: decide it with this chunk's bytes.
            let mut head = st.pre.clone();
            let room = LINE_HEAD.saturating_sub(head.len());
            head.extend_from_slice(chunk.get(..room.min(n)).unwrap_or_default());
            let verdict = line_head(&head);
            head.zeroize();
            match verdict {
                Some(true) => {
                    let mut pre = std::mem::take(&mut st.pre);
                    st.on = true;
                    st.line = Line::Start;
                    st.reset_token();
                    for (j, &b) in pre.iter().enumerate() {
                        self.dump_step(st, b, st.pre_start + j as u64, hits);
                    }
                    pre.zeroize();
                }
                None => {
                    st.pre.extend_from_slice(chunk);
                    return;
                }
                Some(false) => {
                    st.pre.zeroize();
                    st.pre.clear();
                    st.skip = true;
                }
            }
        }
        while i < n {
            if st.on {
                let Some(&b) = chunk.get(i) else { break };
                if st.line == Line::Data
                    && st.tok_len == 0
                    && st.views.iter().all(|v| v.rest.is_some())
                {
                    // Nothing more to read on this line: on to its end, whose line feed
                    // `dump_step` reads (at the line feed already: read it now, or this loop
                    // would never move on).
                    match memchr::memchr(b'\n', chunk.get(i..).unwrap_or_default()) {
                        Some(0) => {}
                        Some(k) => {
                            i += k;
                            continue;
                        }
                        None => break,
                    }
                }
                self.dump_step(st, b, base + i as u64, hits);
                i += 1;
                continue;
            }
            if st.skip {
                match memchr::memchr(b'\n', chunk.get(i..).unwrap_or_default()) {
                    Some(k) => {
                        i += k + 1;
                        st.skip = false;
                    }
                    None => break,
                }
                continue;
            }
            // The next run of digits and spaces long enough for a dump line's head.
            let Some(p) = next_digit_word(chunk.get(i..).unwrap_or_default()).map(|p| i + p) else {
                break;
            };
            // Back to the start of the run: a line start?
            let mut k = p;
            while k > i && chunk.get(k - 1).is_some_and(|&b| is_t(b)) {
                k -= 1;
            }
            let line_start = if k == 0 {
                (i == 0 && began_at_line_start).then_some(0)
            } else if chunk.get(k - 1) == Some(&b'\n') {
                Some(k)
            } else {
                None
            };
            let Some(ls) = line_start else {
                st.skip = true;
                i = p;
                continue;
            };
            match line_head(chunk.get(ls..).unwrap_or_default()) {
                Some(true) => {
                    st.on = true;
                    st.line = Line::Start;
                    st.reset_token();
                    i = ls;
                }
                Some(false) => {
                    st.skip = true;
                    i = p;
                }
                None => {
                    // The chunk ends inside the line's head: decided with the next chunk.
                    st.pre
                        .extend_from_slice(chunk.get(ls..).unwrap_or_default());
                    st.pre_start = base + ls as u64;
                    st.at_line_start = false;
                    return;
                }
            }
        }
        if let Some(&last) = chunk.last() {
            st.at_line_start = last == b'\n';
        }
        if !st.on && !st.skip && st.pre.is_empty() {
            // A line still open at the chunk end that could begin a dump: keep it.
            let from = n.saturating_sub(LINE_HEAD);
            let mut k = n;
            while k > from && chunk.get(k - 1).is_some_and(|&b| is_t(b)) {
                k -= 1;
            }
            let starts_line = if k == 0 {
                began_at_line_start
            } else {
                chunk.get(k - 1) == Some(&b'\n')
            };
            let tail = chunk.get(k..).unwrap_or_default();
            if starts_line && !tail.is_empty() {
                match line_head(tail) {
                    None => {
                        st.pre.extend_from_slice(tail);
                        st.pre_start = base + k as u64;
                        st.at_line_start = false;
                    }
                    Some(true) => {
                        // Found by the word test above unless split oddly: read it now.
                        st.on = true;
                        st.line = Line::Start;
                        st.reset_token();
                        for (j, &b) in tail.iter().enumerate() {
                            self.dump_step(st, b, base + (k + j) as u64, hits);
                        }
                    }
                    Some(false) => {}
                }
            }
        }
    }

    /// Ends the stream: a token or line still open is read to its end.
    pub(super) fn finish_dump(&self, st: &mut DumpState, end: u64, hits: &mut Vec<Hit>) {
        if st.on {
            self.end_token(st, hits);
            self.end_line(st, end, hits);
        }
        *st = DumpState::default();
    }

    /// The earliest offset a dump match not yet reported could start at.
    pub(super) fn dump_hold(&self, st: &DumpState) -> Option<u64> {
        let mut b: Option<u64> = None;
        let mut at = |x: u64| b = Some(b.map_or(x, |y| y.min(x)));
        if !st.pre.is_empty() {
            at(st.pre_start);
        }
        if st.on {
            if st.tok_len > 0 {
                at(st.tok_start);
            }
            for v in &st.views {
                let n = v.window.len();
                if let Some(&(_, s, _)) = v.window.get(n.saturating_sub(self.max_len)) {
                    at(s);
                }
                if let Some((_, e)) = v.pending {
                    at(e);
                }
            }
        }
        b
    }

    /// At a pause: the unit starts of the longest decoded tail of a radix that some atom
    /// begins with (a token still open counts as one unit).
    pub(super) fn dump_pause_tail(&self, st: &DumpState) -> Vec<u64> {
        let mut best: Vec<u64> = Vec::new();
        if !st.on {
            return best;
        }
        for v in &st.views {
            let mut starts = self.tail_units(&v.window);
            if st.tok_len > 0 && v.rest.is_none() {
                starts.push(st.tok_start);
            }
            if starts.len() > best.len() {
                best = starts;
            }
        }
        best
    }

    fn dump_step(&self, st: &mut DumpState, b: u8, pos: u64, hits: &mut Vec<Hit>) {
        if b == b'\n' {
            self.end_token(st, hits);
            self.end_line(st, pos, hits);
            st.line = Line::Start;
            return;
        }
        match st.line {
            Line::Start => {
                if b.is_ascii_hexdigit() {
                    st.line = Line::Offset;
                    st.off_len = 1;
                } else if !is_blank(b) {
                    self.reject(st);
                }
            }
            Line::Offset => {
                if b.is_ascii_hexdigit() && st.off_len < MAX_OFFSET {
                    st.off_len += 1;
                } else if b == b':' && st.off_len >= 4 {
                    st.line = Line::Colon;
                } else if is_blank(b) && st.off_len >= 4 {
                    st.line = Line::Data;
                } else {
                    self.reject(st);
                }
            }
            Line::Colon => {
                if is_blank(b) {
                    st.line = Line::Data;
                } else {
                    self.reject(st);
                }
            }
            Line::Data => {
                if is_blank(b) {
                    self.end_token(st, hits);
                } else {
                    if st.tok_len == 0 {
                        st.reset_token();
                        st.tok_start = pos;
                    }
                    st.tok_len += 1;
                    let d = b.wrapping_sub(b'0');
                    if d > 9 {
                        st.all01 = false;
                        st.all07 = false;
                        st.alldig = false;
                    } else {
                        if d > 1 {
                            st.all01 = false;
                        }
                        if d > 7 {
                            st.all07 = false;
                        }
                        if st.tok_len <= 3 {
                            st.num8 = st.num8 * 8 + u32::from(d);
                            st.num10 = st.num10 * 10 + u32::from(d);
                        }
                        if st.all01 && st.tok_len <= MAX_BITS {
                            st.bits = (st.bits << 1) | d;
                            if st.tok_len.is_multiple_of(8)
                                && let Some(x) = st.tok_bytes.get_mut(st.tok_len / 8 - 1)
                            {
                                *x = st.bits;
                                st.bits = 0;
                            }
                        }
                    }
                }
            }
        }
    }

    /// A line that is no dump line: every radix's stream ends, the rest of it is skipped.
    fn reject(&self, st: &mut DumpState) {
        st.stop();
        st.skip = true;
    }

    /// A token ended: each radix reads it, or stops reading the line at it.
    fn end_token(&self, st: &mut DumpState, hits: &mut Vec<Hit>) {
        let n = st.tok_len;
        if n == 0 || st.line != Line::Data {
            return;
        }
        let start = st.tok_start;
        let end = start + n as u64;
        let binary = st.all01 && n.is_multiple_of(8) && n <= MAX_BITS;
        let octal = st.all07 && n == 3 && st.num8 <= 255;
        let decimal = st.alldig && n <= 3 && st.num10 <= 255;
        let bytes = st.tok_bytes;
        let (num8, num10) = (st.num8, st.num10);
        for (r, v) in st.views.iter_mut().enumerate() {
            if v.rest.is_some() {
                continue;
            }
            match r {
                0 if binary => {
                    for (k, &x) in bytes.iter().take(n / 8).enumerate() {
                        let s = start + 8 * k as u64;
                        self.push_unit(v, x, s, s + 8, hits);
                    }
                }
                1 if octal => {
                    self.push_unit(v, u8::try_from(num8).unwrap_or(0), start, end, hits);
                }
                2 if decimal => {
                    self.push_unit(v, u8::try_from(num10).unwrap_or(0), start, end, hits);
                }
                _ => v.rest = Some(start),
            }
        }
        st.reset_token();
    }

    /// A dump line ended at `end`: a match on it masks its text column too.
    fn end_line(&self, st: &mut DumpState, end: u64, hits: &mut Vec<Hit>) {
        for v in &mut st.views {
            if let (Some((pattern, _)), Some(rest)) = (v.pending, v.rest)
                && rest < end
            {
                hits.push(Hit {
                    start: rest,
                    end,
                    pattern,
                    after_colour_code: false,
                });
            }
            v.pending = None;
            v.rest = None;
        }
    }

    fn push_unit(&self, v: &mut View, b: u8, start: u64, end: u64, hits: &mut Vec<Hit>) {
        if crate::normalize::is_space(b) {
            // The atoms have no whitespace.
            return;
        }
        v.window.push((b, start, end));
        if v.window.len() >= 2 * self.max_len.max(8) {
            let extra = v.window.len() - self.max_len;
            for w in v.window.iter_mut().take(extra) {
                w.0 = 0;
            }
            v.window.drain(..extra);
        }
        if let Some(p) = self.match_suffix(&v.window, hits) {
            v.pending = Some((p, end));
        }
    }
}
