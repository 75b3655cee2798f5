//! Byte dumps with line offsets: `xxd -b` (`-c N`, `-g N`), `od -b`, `od -to1`, `hexdump -b`,
//! `od -tu1`, with any offset radix (`-Ax`, `-Ad`) and any width down to one byte a line; and
//! decimal byte lists without offsets, any zero padding up to 64 digits (`%03d`, `%05d`) and
//! separator (whitespace, `,`, `;`, `:`, `|`, one number a line), in brackets or quotes, in
//! other scripts' digits or with escaped separators (read through [`fold`]'s translation).
//!
//! A dump prints a value a few bytes a line, each line starting with an offset and, for `xxd`,
//! ending with a text column: no line holds a 12-byte fragment, and the offsets split every
//! registered form. This view reads the dump instead: every *dump line* (an offset of 1 to 16
//! hex digits, an optional `:`, whitespace, then byte tokens separated by whitespace, `,`, `;`,
//! `:`, `|`, closing brackets or quotes) is cut into tokens, and each token is read in three
//! radices at once, each its own stream of decoded bytes: base 2 (8 digits a byte, or 16, 24
//! ... for `xxd -b -g N`), octal (3 digits, `od -b`) and decimal (any number of digits,
//! `od -tu1`). A fourth stream, the *list view*, reads decimal tokens from each line's first
//! token on (a list has no offset; a line whose first token is an offset reads it as a byte
//! that breaks the value, while the decimal radix reads the list after it). A radix stops
//! reading a line at its first token it cannot read (the text column); consecutive dump lines
//! continue one stream; any other line ends them. The streams are matched against the atoms
//! like the escapes of the decoding pass. A match also masks, on the line where it ends, the
//! text column (everything from the first unread token to the line end), which spells the
//! same bytes.
//!
//! Cost: ordinary output is not read byte by byte. A dump's head (its first [`LINE_HEAD`]
//! bytes from a line start, across line feeds, all offset digits, separators and line feeds)
//! holds [`D_RUN`] digits, separators and offset hex letters in a row, so the pass tests one
//! 8-byte word in [`WORD_STRIDE`] bytes for such bytes and, only at one, looks back for the
//! start of the line. The words of a chunk that is read as it is (no translation) come from
//! one search shared with the list reader (`list::stride_words`), at multiples of
//! [`WORD_STRIDE`] from the chunk start: a run of [`D_RUN`] after any point holds one. A line begun in an earlier chunk whose head is still undecided is kept
//! and held back until it is decided, so streaming equals one-shot. A chunk with no such word
//! whose last byte cannot be part of a head (most chunks of text) costs two word tests and one
//! table look-up.

use zeroize::Zeroize;

use super::DecodePass;
use crate::matcher::Hit;

mod fold;

use fold::{Fold, GLUE};

/// The dump reader's work, counted in this crate's unit tests (zero cost elsewhere): the bytes
/// its loops look at, so that a test can bound it by the input's size.
pub(crate) mod work {
    #[cfg(test)]
    thread_local! {
        static COUNT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
        static LIMIT: std::cell::Cell<u64> = const { std::cell::Cell::new(u64::MAX) };
    }

    /// Counts `n` bytes looked at; in tests, fails once the count passes the limit set by
    /// `reset` (a loop that never ends fails there instead of hanging).
    #[inline(always)]
    pub(crate) fn tick(n: usize) {
        #[cfg(test)]
        COUNT.with(|c| {
            let now = c.get().saturating_add(n as u64);
            c.set(now);
            let limit = LIMIT.with(std::cell::Cell::get);
            assert!(
                now <= limit,
                "dump reader: {now} bytes looked at, over {limit}"
            );
        });
        #[cfg(not(test))]
        let _ = n;
    }

    /// Starts a count on this thread that may reach `limit`.
    #[cfg(test)]
    pub(crate) fn reset(limit: u64) {
        COUNT.with(|c| c.set(0));
        LIMIT.with(|l| l.set(limit));
    }

    /// The count since [`reset`] on this thread.
    #[cfg(test)]
    pub(crate) fn count() -> u64 {
        COUNT.with(std::cell::Cell::get)
    }
}

/// A dump line's head: its first bytes are read up to this many to decide whether it begins a
/// dump ([`line_head`]).
const LINE_HEAD: usize = 64;

/// Digits and separators in a row that a dump's head must hold ([`is_d`], and the hex letters
/// of a line's offset: the line start, the offset `0000000c: ` and three `xxd -b` tokens, or
/// one `xxd -b -c 3 -g 3` group of 24 digits and the two spaces after it; eight `od -b`
/// tokens, or narrower `od` lines and their line feeds). Every such run is a run of as many
/// [`is_t`] bytes, so it holds an 8-byte word at a multiple of [`WORD_STRIDE`].
const D_RUN: usize = WORD_STRIDE + 7;

/// Distance between the 8-byte words tested for a dump line's head.
const WORD_STRIDE: usize = 30;

/// Longest offset read (hex digits).
const MAX_OFFSET: u8 = 16;

/// Most binary digits of one token (`xxd -b -g 8`); also the most digits of a zero-padded
/// decimal token: a longer token is read by no radix.
const MAX_BITS: usize = 64;

/// Most bytes between two units of one radix's stream (the rest of a line, its text column,
/// the next line's offset: 269 for `xxd -b -c 256`), and most bytes of a line after where a
/// match's radix stopped reading it (its text column). Past them the stream starts again and
/// the match's text column is masked up to here, so what the reader holds back is bounded
/// (separators, empty lines, a text column or a token without end once held everything).
const GAP_MAX: u64 = 1024;

/// Bytes of a dump's head ([`is_d`]), hex letters (offsets), brackets and quotes (lists): bit 0
/// `T`, bit 1 `D`.
// Indexing in a constant initialiser is checked at compile time.
#[allow(clippy::indexing_slicing)]
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let d = b.is_ascii_digit()
            || matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b':' | b',' | b';' | b'|')
            || b == GLUE;
        t[i] = if d {
            3
        } else if b.is_ascii_hexdigit()
            || matches!(b, b'[' | b']' | b'(' | b')' | b'{' | b'}' | b'"' | b'\'')
        {
            1
        } else {
            0
        };
        i += 1;
    }
    t
};

/// Bytes a dump's head is made of: [`is_d`] bytes, hex letters (offsets), brackets and quotes
/// (lists).
#[inline(always)]
pub(super) fn is_t(b: u8) -> bool {
    CLASS.get(usize::from(b)).is_some_and(|&c| c & 1 != 0)
}

/// Digits and separators: the bytes of an offset without hex letters, of the byte tokens and
/// of what joins them (space, tab, CR, line feed, `:`, `,`, `;`, `|`). A line feed belongs: the
/// lines of a narrow dump (`od -b -w1`) or a list printed one number a line form one run.
#[inline(always)]
fn is_d(b: u8) -> bool {
    CLASS.get(usize::from(b)).is_some_and(|&c| c & 2 != 0)
}

/// Whether a line whose first bytes are `head` begins a dump: its first [`LINE_HEAD`] bytes
/// (across line feeds), up to the first byte that is not [`is_t`], hold [`D_RUN`] [`is_d`]
/// bytes in a row, the line start counting as one (the line feed before it, which the
/// trigger's run holds: `xxd -b -c 3 -g 3` lines have 37 before their text column), and the
/// hex letters of each line's first token counting too when that token, an offset, has at
/// most [`MAX_OFFSET`] digits and ends with `:` or a blank (`0000000c:`, `a0000000:`,
/// `0000a0 `: a longer hex word, a hash, or a line of one hex word breaks the run at its
/// letters). `None` while undecided (`head` is all [`is_t`], shorter
/// than [`LINE_HEAD`], without such a run).
fn line_head(head: &[u8]) -> Option<bool> {
    line_head_split(head, &[])
}

/// [`line_head`] of `a` followed by `b`.
fn line_head_split(a: &[u8], b: &[u8]) -> Option<bool> {
    let mut run = 1;
    let mut seen = 0;
    // The line's first token so far (hex digits after the line start and any blanks), while
    // in it: its length, and the digits since its last hex letter (if it holds one). Its
    // letters count once it ends with `:` or a blank, as an offset does (a line of one hex
    // word, `git log --format=%h`, is no dump).
    let mut first: Option<(usize, Option<usize>)> = Some((0, None));
    for part in [a, b] {
        for &x in part {
            if seen == LINE_HEAD {
                return Some(false);
            }
            seen += 1;
            work::tick(1);
            if !is_t(x) {
                return Some(false);
            }
            first = match first {
                Some((len, since)) if x.is_ascii_hexdigit() => {
                    let since = if x.is_ascii_digit() {
                        since.map(|k| k + 1)
                    } else {
                        Some(0)
                    };
                    run += 1;
                    if len + 1 > usize::from(MAX_OFFSET)
                        && let Some(k) = since
                    {
                        // No offset: its letters break the run after all.
                        run = k;
                        None
                    } else {
                        Some((len + 1, since))
                    }
                }
                Some((0, None)) if is_blank(x) => {
                    run += 1;
                    Some((0, None))
                }
                Some((_, since)) => {
                    if let Some(k) = since.filter(|_| x != b':' && !is_blank(x)) {
                        // Not an offset's end: the letters break the run.
                        run = k;
                    }
                    run = if is_d(x) { run + 1 } else { 0 };
                    (x == b'\n').then_some((0, None))
                }
                None => {
                    run = if is_d(x) { run + 1 } else { 0 };
                    (x == b'\n').then_some((0, None))
                }
            };
            if run >= D_RUN && !first.is_some_and(|(len, since)| len > 0 && since.is_some()) {
                return Some(true);
            }
        }
    }
    (seen >= LINE_HEAD).then_some(false)
}

/// Whether the 8 bytes of `w` (little-endian) may all be [`is_t`] bytes: all ASCII and no letter
/// `g`–`z` or `G`–`Z` (most words of text hold one). Exact for that set, in a few word
/// operations without a branch (the "has a byte between" test of Sean Anderson's *Bit
/// Twiddling Hacks*, on the bytes with their case bit set).
#[inline(always)]
fn may_be_head(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let x = w | (0x20 * ONES);
    // The top bit of each byte above `f` (0x66) and below `{` (0x7b), after the case fold. A
    // byte of 0x80 or above may carry or borrow into the next byte's bit, but `w`'s own top
    // bit rejects the word anyway; ASCII words neither carry nor borrow.
    let letter = (0xfa * ONES).wrapping_sub(x) & x.wrapping_add(0x19 * ONES);
    (letter | w) & (0x80 * ONES) == 0
}

/// Whether the bytes at `p` in `bytes` are an 8-byte word of [`is_t`] bytes.
#[inline(always)]
fn head_word(bytes: &[u8], p: usize) -> bool {
    bytes.get(p..p + 8).is_some_and(|w| {
        may_be_head(u64::from_le_bytes(w.try_into().unwrap_or([0xff; 8])))
            && w.iter().all(|&b| is_t(b))
    })
}

/// The offset of the first 8-byte word of `bytes` at a multiple of [`WORD_STRIDE`] that is all
/// [`is_t`] bytes (every run of [`D_RUN`] of them holds one). A word test first
/// ([`may_be_head`]): a word holding a letter from `g` on, as most words of text do, fails it.
fn next_digit_word(bytes: &[u8]) -> Option<usize> {
    let word = |w: &[u8]| u64::from_le_bytes(w.try_into().unwrap_or([0xff; 8]));
    let digits = |p: usize| head_word(bytes, p);
    // Four tested words (120 bytes) a step, one branch.
    let (blocks, _) = bytes.as_chunks::<{ 4 * WORD_STRIDE }>();
    let mut at = 0;
    for block in blocks {
        let low = |k: usize| {
            block
                .get(k * WORD_STRIDE..k * WORD_STRIDE + 8)
                .is_some_and(|w| may_be_head(word(w)))
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

/// What the dump reader, asleep with nothing held, must do with a chunk.
enum Quick {
    /// Nothing: no 8-byte word at a multiple of [`WORD_STRIDE`] is all [`is_t`] (what
    /// [`next_digit_word`] looks for), and the last byte is no [`is_t`] byte (no dump's head
    /// can be open at the end: a letter, `-`, `.`, `=` ...).
    Quiet,
    /// No such word, but a dump's head could be open at the end.
    Tail,
    /// Such a word, at this offset: the whole search.
    Words(usize),
}

#[inline(always)]
fn quick(chunk: &[u8], found: Option<&[(usize, bool)]>) -> Quick {
    let words = if let Some(found) = found {
        // The shared search's words ([`super::list::stride_words`]): the first of head bytes.
        found
            .iter()
            .find(|w| w.1)
            .map(|w| w.0 & !super::list::GLUED)
    } else if chunk.len() <= 2 * WORD_STRIDE + 7 {
        // Up to two words (64-byte pushes), without the search's loop.
        let digits = |p: usize| head_word(chunk, p);
        if digits(0) {
            Some(0)
        } else if digits(WORD_STRIDE) {
            Some(WORD_STRIDE)
        } else {
            None
        }
    } else {
        next_digit_word(chunk)
    };
    if let Some(p) = words {
        Quick::Words(p)
    } else if chunk.last().is_none_or(|&b| is_t(b)) {
        Quick::Tail
    } else {
        Quick::Quiet
    }
}

/// Whether a line start lies in the run of [`is_t`] bytes at the end of `chunk` (its last
/// [`LINE_HEAD`] bytes at most): what [`DecodePass::chunk_end`] looks for, found without the
/// call for the few bytes of a word that end most chunks.
#[inline(always)]
fn tail_may_open(chunk: &[u8], began: bool) -> bool {
    let n = chunk.len();
    let from = n.saturating_sub(LINE_HEAD);
    let mut k = n;
    while k > from {
        match chunk.get(k - 1) {
            Some(&b'\n') => return true,
            Some(&b) if is_t(b) => k -= 1,
            _ => return false,
        }
    }
    if k == 0 {
        began
    } else {
        chunk.get(k - 1) == Some(&b'\n')
    }
}

/// The first line start in `chunk[k..end]`: `k` itself if `k_starts_line` or the byte before
/// it is a line feed, else the byte after the first line feed.
fn first_line_start(chunk: &[u8], k: usize, end: usize, k_starts_line: bool) -> Option<usize> {
    if k_starts_line || (k > 0 && chunk.get(k - 1) == Some(&b'\n')) {
        return Some(k);
    }
    memchr::memchr(b'\n', chunk.get(k..end).unwrap_or_default()).map(|j| k + j + 1)
}

fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | 0x0b | 0x0c)
}

/// What ends a byte token: whitespace, `,`, `;`, `:`, `|` (lists joined by `,`, `, `, `;`,
/// `:` or `|`), a closing bracket (`[065, 075]`) or a quote (`'065\t075'`, its tabs written
/// `\t`, [`fold`]).
fn is_sep(b: u8) -> bool {
    is_blank(b)
        || matches!(
            b,
            b',' | b';' | b':' | b'|' | b']' | b')' | b'}' | b'"' | b'\''
        )
}

/// What may come before a line's first token besides blanks: opening brackets (`[065, …`,
/// `{065, …`, `(065 …`), `|` (a table's first column) and quotes.
fn is_open(b: u8) -> bool {
    matches!(b, b'[' | b'(' | b'{' | b'|' | b'"' | b'\'')
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
    /// The next byte does not begin a line (false at the start of the stream and after a line
    /// feed).
    mid_line: bool,
    /// The token being read: its first byte, and the byte after its last digit.
    tok_start: u64,
    tok_end: u64,
    /// Where the [`GLUE`] bytes before the next byte began (a digit of another script).
    glue_from: Option<u64>,
    /// The translation of other digits and escaped separators ([`fold`]), and its buffer.
    fold: Fold,
    folded: Vec<u8>,
    tok_len: usize,
    all01: bool,
    all07: bool,
    alldig: bool,
    num8: u32,
    num10: u32,
    bits: u8,
    tok_bytes: [u8; MAX_BITS / 8],
    /// Base 2, octal and decimal after an offset; decimal from the line's first token (lists
    /// without offsets, any zero padding and separator).
    views: [View; 4],
    /// A line begun in earlier chunks, undecided ([`line_head`]).
    pre: Vec<u8>,
    pre_start: u64,
}

impl Drop for DumpState {
    fn drop(&mut self) {
        self.tok_bytes.zeroize();
        self.pre.zeroize();
        self.folded.zeroize();
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

    /// Adds the byte `b` (at `pos`) to the token being read.
    fn push_digit(&mut self, b: u8, pos: u64) {
        if self.tok_len == 0 {
            self.reset_token();
            self.tok_start = self.glue_from.unwrap_or(pos);
        }
        self.tok_end = pos + 1;
        self.tok_len += 1;
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            self.all01 = false;
            self.all07 = false;
            self.alldig = false;
            return;
        }
        if d > 1 {
            self.all01 = false;
        }
        if d > 7 {
            self.all07 = false;
        }
        if self.tok_len <= 3 {
            self.num8 = self.num8 * 8 + u32::from(d);
        }
        // Any zero padding: the value saturates above a byte's range.
        self.num10 = (self.num10 * 10 + u32::from(d)).min(256);
        if self.all01 && self.tok_len <= MAX_BITS {
            self.bits = (self.bits << 1) | d;
            if self.tok_len.is_multiple_of(8)
                && let Some(x) = self.tok_bytes.get_mut(self.tok_len / 8 - 1)
            {
                *x = self.bits;
                self.bits = 0;
            }
        }
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
    /// Feeds `chunk` (at absolute offset `base`) to the dump reader; `ascii`: it is all ASCII;
    /// `plain`: and holds no `&`, `%` or `\\` (else it is read through [`fold`]'s translation).
    /// `words`: the chunk's words at multiples of [`WORD_STRIDE`] that are all list bytes or all
    /// [`is_t`] bytes (flagged), found once for this reader and the list reader.
    pub(super) fn scan_dump(
        &self,
        st: &mut DumpState,
        chunk: &[u8],
        base: u64,
        (ascii, plain): (bool, bool),
        words: &[(usize, bool)],
        hits: &mut Vec<Hit>,
    ) {
        if plain && st.fold.idle() {
            return self.scan_dump_bytes(st, chunk, base, Some(words), hits);
        }
        let mut folded = std::mem::take(&mut st.folded);
        folded.clear();
        st.fold.fold_into(chunk, ascii, &mut folded);
        self.scan_dump_bytes(st, &folded, base, None, hits);
        folded.zeroize();
        st.folded = folded;
    }

    /// [`DecodePass::scan_dump`] of the bytes the reader reads.
    fn scan_dump_bytes(
        &self,
        st: &mut DumpState,
        chunk: &[u8],
        base: u64,
        words: Option<&[(usize, bool)]>,
        hits: &mut Vec<Hit>,
    ) {
        let n = chunk.len();
        if n == 0 {
            return;
        }
        if !st.on && !st.skip && st.pre.is_empty() {
            // Asleep with nothing held, as for most chunks of ordinary output.
            match quick(chunk, words) {
                Quick::Quiet => {
                    st.mid_line = true;
                    return;
                }
                Quick::Tail => {
                    let began = !st.mid_line;
                    st.mid_line = chunk.last() != Some(&b'\n');
                    if tail_may_open(chunk, began) {
                        self.chunk_end(st, chunk, base, 0, began, hits);
                    }
                    return;
                }
                Quick::Words(p) => {
                    self.scan_dump_slow(st, chunk, base, Some(p), words, hits);
                    return;
                }
            }
        }
        self.scan_dump_slow(st, chunk, base, None, words, hits);
    }

    /// [`DecodePass::scan_dump`] for a chunk that may wake the reader, or while it reads;
    /// `first` is the first word [`next_digit_word`] finds in `chunk`, when known.
    #[inline(never)]
    fn scan_dump_slow(
        &self,
        st: &mut DumpState,
        chunk: &[u8],
        base: u64,
        mut first: Option<usize>,
        words: Option<&[(usize, bool)]>,
        hits: &mut Vec<Hit>,
    ) {
        let n = chunk.len();
        if !st.pre.is_empty() && !self.decide_pre(st, chunk, hits) {
            return;
        }
        // Whether `i` is a line start.
        let mut i_line = !st.mid_line && !st.on && !st.skip;
        let mut i = 0;
        // The next of `words` to look at.
        let mut cursor = 0;
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
                    let ahead = memchr::memchr(b'\n', chunk.get(i..).unwrap_or_default());
                    let upto = ahead.map_or(n, |k| i + k);
                    self.expire_pending(st, base + upto as u64, hits);
                    match ahead {
                        Some(0) => {}
                        Some(k) => {
                            work::tick(k);
                            i += k;
                            continue;
                        }
                        None => break,
                    }
                }
                self.dump_step(st, b, base + i as u64, hits);
                i += 1;
                i_line = b == b'\n';
                continue;
            }
            if st.skip {
                match memchr::memchr(b'\n', chunk.get(i..).unwrap_or_default()) {
                    Some(k) => {
                        work::tick(k + 1);
                        i += k + 1;
                        i_line = true;
                        st.skip = false;
                    }
                    None => break,
                }
                continue;
            }
            // The next run of digits and separators long enough for a dump's head.
            let found = match first.take() {
                Some(p) if i == 0 => Some(p),
                _ => match words {
                    // A run of [`D_RUN`] head bytes after `i` holds one of the shared words.
                    Some(w) => {
                        // On from the last word found (`i` seldom goes back: then from the
                        // first).
                        let glued = super::list::GLUED;
                        if cursor > 0 && w.get(cursor - 1).is_some_and(|x| x.0 & !glued > i) {
                            cursor = 0;
                        }
                        while w.get(cursor).is_some_and(|x| !x.1 || x.0 & !glued < i) {
                            cursor += 1;
                        }
                        w.get(cursor).map(|x| x.0 & !glued)
                    }
                    None => next_digit_word(chunk.get(i..).unwrap_or_default()).map(|p| i + p),
                },
            };
            let Some(p) = found else {
                break;
            };
            work::tick((p - i) / WORD_STRIDE + 1);
            // Most words are shorter runs (a time of day, a number before a line feed, a hex
            // id): a head's run has at least `D_RUN - 1` [`is_t`] bytes after its line start.
            // (A short run ended by a hex letter may be part of a head that begins in it, a
            // line feed, then an offset `0000a0`: measuring digits only and going on from the
            // letter once kept the look-back from reaching that line start, so a split that
            // found this word missed a dump line that one push, which did not find it, read.)
            let mut lo = p;
            while lo > i && chunk.get(lo - 1).is_some_and(|&b| is_t(b)) {
                work::tick(1);
                lo -= 1;
            }
            let mut hi = p + 8;
            while hi < n && hi - lo < D_RUN && chunk.get(hi).is_some_and(|&b| is_t(b)) {
                work::tick(1);
                hi += 1;
            }
            if hi - lo < D_RUN - 1 {
                if hi >= n {
                    break;
                }
                i = hi;
                i_line = false;
                continue;
            }
            // Back to the start of the run, then to the first line start in it.
            let mut k = p;
            while k > i && chunk.get(k - 1).is_some_and(|&b| is_t(b)) {
                work::tick(1);
                k -= 1;
            }
            let Some(ls) = first_line_start(chunk, k, p, k == i && i_line) else {
                // The run begins inside a line that began before it: no dump line.
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
                    // Not from this line: the next line starts up to the word, each decided
                    // once here (going back to the top would look back from the word again for
                    // every line: lines of hex letters before a run of digits cost the square of
                    // their length).
                    match self.later_line_starts(st, chunk, base, ls, p) {
                        Some(at) => i = at,
                        None => return,
                    }
                }
                None => {
                    // The chunk ends inside the line's head: decided with the next chunk.
                    self.keep_pre(st, chunk.get(ls..).unwrap_or_default(), base + ls as u64);
                    return;
                }
            }
        }
        if let Some(&last) = chunk.last() {
            st.mid_line = last != b'\n';
        }
        if !st.on && !st.skip && st.pre.is_empty() {
            self.chunk_end(st, chunk, base, i, i_line, hits);
        }
    }

    /// After the line starting at `ls` (at most `p`, in one run of [`is_t`] bytes up to the
    /// word at `p`) was found to begin no dump: the line starts after it up to `p`, in order,
    /// until one begins a dump (the reader wakes there) or is undecided at the chunk end (kept:
    /// `None`, the chunk is done). Where the caller's loop goes on: the dump line's start, or
    /// the last line start that began none, with the rest of its line skipped.
    fn later_line_starts(
        &self,
        st: &mut DumpState,
        chunk: &[u8],
        base: u64,
        ls: usize,
        p: usize,
    ) -> Option<usize> {
        let mut l = ls;
        loop {
            let Some(j) = memchr::memchr(b'\n', chunk.get(l..p).unwrap_or_default()) else {
                work::tick(p - l);
                st.skip = true;
                return Some(l);
            };
            let next = l + j + 1;
            work::tick(next - l);
            match line_head(chunk.get(next..).unwrap_or_default()) {
                Some(true) => {
                    st.on = true;
                    st.line = Line::Start;
                    st.reset_token();
                    return Some(next);
                }
                Some(false) => l = next,
                None => {
                    self.keep_pre(
                        st,
                        chunk.get(next..).unwrap_or_default(),
                        base + next as u64,
                    );
                    return None;
                }
            }
        }
    }

    /// Lines still open at the end of `chunk` (from `i`, a line start if `i_line`, on) that could begin a dump: kept (or, decided, read). The reader is asleep with
    /// nothing held.
    fn chunk_end(
        &self,
        st: &mut DumpState,
        chunk: &[u8],
        base: u64,
        i: usize,
        i_line: bool,
        hits: &mut Vec<Hit>,
    ) {
        let n = chunk.len();
        {
            let from = i.max(n.saturating_sub(LINE_HEAD));
            let mut k = n;
            // The first line feed of the run, found on the way back (most runs are a few
            // bytes of a word and hold none).
            let mut feed = None;
            while k > from {
                work::tick(1);
                match chunk.get(k - 1) {
                    Some(&b'\n') => feed = Some(k),
                    Some(&b) if is_t(b) => {}
                    _ => break,
                }
                k -= 1;
            }
            let at_start = k == i && i_line || (k > 0 && chunk.get(k - 1) == Some(&b'\n'));
            let mut ls = if at_start { Some(k) } else { feed };
            while let Some(l) = ls.filter(|&l| l < n) {
                let tail = chunk.get(l..).unwrap_or_default();
                match line_head(tail) {
                    None => {
                        self.keep_pre(st, tail, base + l as u64);
                        return;
                    }
                    Some(true) => {
                        // Found by the word test above unless split oddly: read it now.
                        let Some(j) = self.wake(st, tail, base + l as u64, hits) else {
                            return;
                        };
                        match self.after_stop(st, tail, j) {
                            Some(r) => ls = Some(l + r),
                            None => return,
                        }
                    }
                    Some(false) => {
                        ls = memchr::memchr(b'\n', tail).map(|j| l + j + 1);
                    }
                }
            }
        }
    }

    /// Keeps `line` (from `start`), a dump head still undecided at the chunk end.
    fn keep_pre(&self, st: &mut DumpState, line: &[u8], start: u64) {
        st.pre.extend_from_slice(line);
        st.pre_start = start;
        st.mid_line = true;
    }

    /// Decides the held head `st.pre` with the first bytes of `chunk`; false while it stays
    /// undecided (the whole chunk joined it). A head that is no dump's gives way to the next
    /// line start in it.
    fn decide_pre(&self, st: &mut DumpState, chunk: &[u8], hits: &mut Vec<Hit>) -> bool {
        while !st.pre.is_empty() {
            let verdict = line_head_split(&st.pre, chunk);
            match verdict {
                Some(true) => {
                    let mut pre = std::mem::take(&mut st.pre);
                    let stopped = self.wake(st, &pre, st.pre_start, hits);
                    // What follows a line the reader stopped at is a line start again, as in
                    // one push (its rest skipped first, unless it stopped at the line feed).
                    let rest = stopped.and_then(|j| self.after_stop(st, &pre, j));
                    match rest {
                        Some(r) => {
                            for x in pre.iter_mut().take(r) {
                                *x = 0;
                            }
                            pre.drain(..r);
                            st.pre_start += r as u64;
                            if pre.is_empty() {
                                st.mid_line = false;
                            }
                            st.pre = pre;
                        }
                        None => {
                            pre.zeroize();
                            // Keep the buffer's capacity for the next head.
                            st.pre = pre;
                            st.pre.clear();
                            return true;
                        }
                    }
                }
                None => {
                    st.pre.extend_from_slice(chunk);
                    return false;
                }
                Some(false) => match memchr::memchr(b'\n', &st.pre) {
                    Some(j) => {
                        for x in st.pre.iter_mut().take(j + 1) {
                            *x = 0;
                        }
                        st.pre.drain(..=j);
                        st.pre_start += j as u64 + 1;
                        if st.pre.is_empty() {
                            // The held bytes ended with a line feed: the chunk starts a line.
                            st.mid_line = false;
                        }
                    }
                    None => {
                        st.pre.zeroize();
                        st.pre.clear();
                        st.skip = true;
                    }
                },
            }
        }
        true
    }

    /// Wakes the reader at a dump line's start and reads `bytes` (from `start`) until it stops
    /// (a line that is no dump line): `None` if it read them all, else the index of the first
    /// byte it did not read.
    fn wake(
        &self,
        st: &mut DumpState,
        bytes: &[u8],
        start: u64,
        hits: &mut Vec<Hit>,
    ) -> Option<usize> {
        st.on = true;
        st.line = Line::Start;
        st.reset_token();
        for (j, &b) in bytes.iter().enumerate() {
            self.dump_step(st, b, start + j as u64, hits);
            if !st.on {
                return Some(j + 1);
            }
        }
        None
    }

    /// After the reader stopped before `bytes[j]`: where the next line starts in `bytes` (the
    /// rest of a rejected line skipped: `st.skip` is cleared), or `None` when the skip goes on
    /// past `bytes`.
    fn after_stop(&self, st: &mut DumpState, bytes: &[u8], j: usize) -> Option<usize> {
        if !st.skip {
            // Stopped at a line feed.
            return Some(j);
        }
        let k = memchr::memchr(b'\n', bytes.get(j..).unwrap_or_default())?;
        work::tick(k + 1);
        st.skip = false;
        Some(j + k + 1)
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
    #[inline]
    pub(super) fn dump_hold(&self, st: &DumpState, total: u64) -> Option<u64> {
        if !st.on {
            return (!st.pre.is_empty()).then_some(st.pre_start);
        }
        self.dump_hold_on(st, total)
    }

    /// [`DecodePass::dump_hold`] while a dump is being read.
    fn dump_hold_on(&self, st: &DumpState, total: u64) -> Option<u64> {
        let mut b: Option<u64> = None;
        let mut at = |x: u64| b = Some(b.map_or(x, |y| y.min(x)));
        if !st.pre.is_empty() {
            at(st.pre_start);
        }
        if st.on {
            // A token of more than [`MAX_BITS`] digits is read by no radix: without this bound
            // a zero-padded token (`0000…065`) of any length held everything from its start.
            if st.tok_len > 0 && st.tok_len <= MAX_BITS {
                at(st.tok_start);
            }
            for v in &st.views {
                let n = v.window.len();
                // A stream whose last unit ended [`GAP_MAX`] bytes ago or more starts again
                // at its next unit ([`DecodePass::push_unit`]): nothing in it is held.
                let live = v.window.last().is_some_and(|w| total < w.2 + GAP_MAX);
                if live && let Some(&(_, s, _)) = v.window.get(n.saturating_sub(self.max_len)) {
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
        if !st.on && !st.pre.is_empty() {
            // A held head, still undecided (up to 38 bytes of a list: 12 bytes of a value
            // printed `65;75;…`), is read as if it began a dump, on a copy: a pause lets
            // it out, and the reader, woken later, could no longer mask what it decoded.
            let mut c = st.clone();
            let mut pre = std::mem::take(&mut c.pre);
            let mut scratch = Vec::new();
            let mut at = 0;
            while at < pre.len() {
                let Some(j) = self.wake(
                    &mut c,
                    pre.get(at..).unwrap_or_default(),
                    st.pre_start + at as u64,
                    &mut scratch,
                ) else {
                    break;
                };
                let Some(r) = self.after_stop(&mut c, pre.get(at..).unwrap_or_default(), j) else {
                    break;
                };
                at += r;
            }
            pre.zeroize();
            return self.dump_pause_tail(&c);
        }
        let mut best: Vec<u64> = Vec::new();
        if !st.on {
            return best;
        }
        for v in &st.views {
            let mut starts = self.tail_units(&v.window);
            if st.tok_len > 0 && st.tok_len <= MAX_BITS && v.rest.is_none() {
                starts.push(st.tok_start);
            }
            if starts.len() > best.len() {
                best = starts;
            }
        }
        best
    }

    fn dump_step(&self, st: &mut DumpState, b: u8, pos: u64, hits: &mut Vec<Hit>) {
        work::tick(1);
        if b == GLUE {
            // Part of a digit or space of another script, read at its last byte.
            st.glue_from.get_or_insert(pos);
            return;
        }
        self.dump_byte(st, b, pos, hits);
        st.glue_from = None;
    }

    fn dump_byte(&self, st: &mut DumpState, b: u8, pos: u64, hits: &mut Vec<Hit>) {
        if b == b'\n' {
            if st.line == Line::Offset {
                // A line of one token (`0000007`, a list printed one number a line).
                self.first_token(st, true, hits);
            } else {
                self.end_token(st, hits);
            }
            self.end_line(st, pos, hits);
            st.line = Line::Start;
            return;
        }
        match st.line {
            Line::Start => {
                if b.is_ascii_hexdigit() {
                    st.line = Line::Offset;
                    st.off_len = 1;
                    st.push_digit(b, pos);
                } else if !is_blank(b) && !is_open(b) {
                    self.reject(st);
                }
            }
            Line::Offset => {
                // A list's first byte may be zero-padded past an offset's 16 digits (to
                // [`MAX_BITS`], as every token; `%020d` lines were skipped whole).
                let padded = b.is_ascii_digit() && st.alldig && st.tok_len < MAX_BITS;
                if b.is_ascii_hexdigit() && (st.off_len < MAX_OFFSET || padded) {
                    st.off_len = st.off_len.saturating_add(1);
                    st.push_digit(b, pos);
                } else if b == b':' && (4..=MAX_OFFSET).contains(&st.off_len) {
                    // `xxd`: an offset (or the first byte of a list joined by `:`, `%04d:`).
                    self.first_token(st, false, hits);
                    if st.on {
                        st.line = Line::Colon;
                    }
                } else if is_sep(b) {
                    self.first_token(st, false, hits);
                    if st.on {
                        st.line = Line::Data;
                    }
                } else {
                    self.reject(st);
                }
            }
            Line::Colon => {
                if is_blank(b) {
                    st.line = Line::Data;
                } else if b.is_ascii_digit() {
                    // A list joined by `:` (`0065:0075`).
                    st.line = Line::Data;
                    st.push_digit(b, pos);
                } else {
                    self.reject(st);
                }
            }
            Line::Data => {
                if is_sep(b) {
                    self.end_token(st, hits);
                    self.expire_pending(st, pos, hits);
                } else {
                    st.push_digit(b, pos);
                    if st.tok_len > MAX_BITS {
                        // No radix reads it: every view stops at it now, not at its end.
                        self.end_token(st, hits);
                    }
                }
            }
        }
    }

    /// A line's first token ended: an offset (1 to 16 hex digits: `hexdump -e '"%_ad "'`
    /// prints `0`, `8`, `16`) for the dump views, a byte for the list view when it is a decimal
    /// byte (any zero padding). A token that is neither ends every stream; it also skips the
    /// rest of the line unless `eol`.
    fn first_token(&self, st: &mut DumpState, eol: bool, hits: &mut Vec<Hit>) {
        let (start, end) = (st.tok_start, st.tok_end);
        let offset = (1..=MAX_OFFSET).contains(&st.off_len);
        let decimal = st.alldig && st.num10 <= 255;
        let byte = u8::try_from(st.num10).unwrap_or(0);
        st.reset_token();
        if !offset && !decimal {
            if eol {
                st.stop();
            } else {
                self.reject(st);
            }
            return;
        }
        let [bin, oct, dec, list] = &mut st.views;
        if !offset {
            // The dump views read lines with an offset only: their streams end here.
            for v in [bin, oct, dec] {
                v.clear();
                v.rest = Some(start);
            }
        }
        if list.rest.is_none() {
            if decimal {
                self.push_unit(list, byte, start, end, hits);
            } else {
                list.rest = Some(start);
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
        let end = st.tok_end;
        let binary = st.all01 && n.is_multiple_of(8) && n <= MAX_BITS;
        let octal = st.all07 && n == 3 && st.num8 <= 255;
        // Zero padding up to [`MAX_BITS`] digits: a longer token is no byte, and is not held
        // back while it is read ([`DecodePass::dump_hold`]).
        let decimal = st.alldig && st.num10 <= 255 && n <= MAX_BITS;
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
                2 | 3 if decimal => {
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

    /// A match's text column masked up to [`GAP_MAX`] bytes after where its radix stopped, once
    /// the line runs on past that (at `pos`), instead of at the line's end.
    fn expire_pending(&self, st: &mut DumpState, pos: u64, hits: &mut Vec<Hit>) {
        for v in &mut st.views {
            if let (Some((pattern, _)), Some(rest)) = (v.pending, v.rest)
                && pos >= rest + GAP_MAX
            {
                hits.push(Hit {
                    start: rest,
                    end: rest + GAP_MAX,
                    pattern,
                    after_colour_code: false,
                });
                v.pending = None;
            }
        }
    }

    fn push_unit(&self, v: &mut View, b: u8, start: u64, end: u64, hits: &mut Vec<Hit>) {
        if crate::normalize::is_space(b) {
            // The atoms have no whitespace.
            return;
        }
        if v.window.last().is_some_and(|w| start >= w.2 + GAP_MAX) {
            // Too far from the unit before: a new stream (nothing of the old one is held).
            for w in &mut v.window {
                w.0 = 0;
            }
            v.window.clear();
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::work;
    use crate::Redactor;
    use proptest::prelude::*;

    /// Bytes the dump reader may look at per input byte, plus a constant per push: a line's head
    /// is read up to [`super::LINE_HEAD`] bytes again at each push while it is undecided, and
    /// each chunk end looks back as far (pushes of one byte meet both).
    const PER_BYTE: u64 = 4 * super::LINE_HEAD as u64;

    /// What a digit/separator text of `n` bytes in `pushes` pushes may cost.
    fn budget(n: usize, pushes: usize) -> u64 {
        PER_BYTE * (n as u64 + pushes as u64 + 1)
    }

    /// Redacts `input` one-shot, then pushed in `sizes` (cycled; empty: byte-wise), each with a
    /// work budget bounded by the input's size (over it, the count fails at once: a loop that
    /// never ends fails too); returns both outputs and the work of each.
    fn redact_counted(r: &Redactor, input: &[u8], sizes: &[usize]) -> (Vec<u8>, Vec<u8>, u64, u64) {
        work::reset(budget(input.len(), 1));
        let (one, _) = r.redact(input);
        let one_work = work::count();
        let sizes = if sizes.is_empty() { &[1][..] } else { sizes };
        let mut pieces = Vec::new();
        let mut at = 0;
        for &k in sizes.iter().cycle() {
            if at >= input.len() {
                break;
            }
            let end = (at + k.max(1)).min(input.len());
            pieces.push(&input[at..end]);
            at = end;
        }
        work::reset(budget(input.len(), pieces.len()));
        let mut s = r.stream();
        let mut streamed = Vec::new();
        for piece in &pieces {
            s.push(piece, &mut streamed);
        }
        s.finish(&mut streamed);
        (one, streamed, one_work, work::count())
    }

    /// A value of `len` letters and digits from `seed`.
    fn value(mut seed: u64, len: usize) -> Vec<u8> {
        const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        seed |= 1;
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                ALNUM[(seed % ALNUM.len() as u64) as usize]
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64)
        ))]

        /// Text made only of digits, spaces, `,` and line feeds (every byte of it a dump head's
        /// byte: the reader wakes on every line), 100 to 2,000 bytes, sometimes with a value
        /// printed as a zero-padded decimal list on a line of its own: pushed one byte at a time
        /// and in random chunk sizes, the dump reader's work stays within a constant per byte
        /// (a push of one byte once looped for ever at a finished line's line feed), streaming
        /// equals one-shot, and a planted list is masked.
        #[test]
        fn digit_and_separator_text_costs_work_linear_in_its_size(
            text in proptest::collection::vec(proptest::sample::select(&b"0123456789 ,\n"[..]), 100..2000),
            sizes in proptest::collection::vec(1usize..80, 0..6),
            plant in proptest::option::of((any::<u64>(), any::<proptest::sample::Index>(), 0usize..3)),
        ) {
            let mut input = text;
            let v = value(plant.map_or(7, |p| p.0), 16);
            if let Some((_, at, style)) = plant {
                let list: Vec<String> = v
                    .iter()
                    .map(|b| match style {
                        0 => format!("{b:03}"),
                        1 => format!("{b:05}"),
                        _ => format!("{b}"),
                    })
                    .collect();
                let sep = [",", " ", ";"][style];
                let line = format!("\n{}\n", list.join(sep));
                let at = at.index(input.len());
                input.splice(at..at, line.into_bytes());
            }
            let r = Redactor::new([("V", v.as_slice())]);
            for chunked in [&[][..], &sizes[..]] {
                let (one, streamed, one_work, _) = redact_counted(&r, &input, chunked);
                prop_assert_eq!(
                    String::from_utf8_lossy(&one),
                    String::from_utf8_lossy(&streamed),
                    "one-shot and streamed (sizes {:?}) differ",
                    chunked
                );
                prop_assert!(one_work <= 8 * input.len() as u64, "{} bytes looked at for {}", one_work, input.len());
                if plant.is_some() {
                    prop_assert!(memchr::memmem::find(&one, b"[REDACTED:V]").is_some(), "planted list not masked");
                } else {
                    prop_assert_eq!(&one, &input, "text without a value changed");
                }
            }
        }
    }

    /// Short runs of digits ended by a hex letter (`12345678cafe`, a time before `a`), which now
    /// have their line decided instead of being stepped over: each line is decided once, in
    /// one push and in pieces, however many such runs it holds (red team, session 12).
    #[test]
    fn short_runs_before_hex_letters_cost_work_linear_in_their_size() {
        let r = Redactor::new([("V", value(13, 20).as_slice())]);
        for (line, lines) in [
            (&b"x 12345678cafe 1234567\n"[..], 3000),
            (
                &b"at 12:30:15 a 12:30:16 b 12345678abcdef 87654321 dead\n"[..],
                1000,
            ),
        ] {
            let mut input = line.repeat(lines);
            // And one line without end.
            input.extend(b"12345678a".repeat(2000));
            for sizes in [&[usize::MAX][..], &[4096], &[1], &[7, 64, 3]] {
                let (one, streamed, one_work, _) = redact_counted(&r, &input, sizes);
                assert_eq!(one, input, "ordinary text changed");
                assert_eq!(streamed, input, "{sizes:?}: streamed differs");
                assert!(
                    one_work <= 8 * input.len() as u64,
                    "{one_work} bytes looked at in one push for {}",
                    input.len()
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64)
        ))]

        /// Every byte a dump's head may hold (digits, hex letters of both cases, `:`, `;`, `,`,
        /// `|`, brackets, quotes, tab, CR, space, line feed), the bytes the translation reads as
        /// separators or digits (`&`, `#`, `%`, `\\`, `x`, the bytes of `０` and `،`) and one that
        /// ends a head (`x`), 100 to 3,000 bytes, pushed one byte at a time and in random
        /// chunks: the reader's work stays within a constant per byte and streaming equals
        /// one-shot (red team, session 12 and its follow-up).
        #[test]
        fn head_byte_text_costs_work_linear_in_its_size(
            text in proptest::collection::vec(
                proptest::sample::select(
                    &b"0123456789abcdefABCDEF:;,|[](){}\"'\t\r \n\nx&#%\\\xef\xbc\x90\xd8\x8c"[..],
                ),
                100..3000,
            ),
            sizes in proptest::collection::vec(1usize..80, 0..6),
        ) {
            let r = Redactor::new([("V", value(29, 16).as_slice())]);
            for chunked in [&[][..], &sizes[..]] {
                let (one, streamed, one_work, _) = redact_counted(&r, &text, chunked);
                prop_assert_eq!(&one, &text, "text without a value changed");
                prop_assert_eq!(&streamed, &text, "streamed (sizes {:?}) differs", chunked);
                prop_assert!(one_work <= 8 * text.len() as u64, "{} bytes looked at for {}", one_work, text.len());
            }
        }
    }

    /// A head counts the hex letters of an offset (a line's first token of at most 16 digits
    /// ending with `:` or a blank), and only those: lines of one hex word (`git log
    /// --format=%h`), a hash, or letters after the first token do not wake the reader.
    #[test]
    fn a_head_counts_an_offsets_hex_letters_only() {
        use super::line_head;
        for head in [
            &b"0000000c: 01000001 01100010 00110011  Ab3\n"[..],
            b"a0000000: 010000010110001000110011  Ab3\n",
            b"0000a0 101\n0000a1 102\n0000a2 103\n0000a3 104\n",
            b"  c 065|098|051|100|069|102|071|104|049|\n",
        ] {
            assert_eq!(
                line_head(head),
                Some(true),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        for head in [
            &b"a91dcd4\nc1eaf99\nbfdd364\nfbb794f\n2cd8d4a\n3f2a9c1\nd56e674\n456ce1f\n"[..],
            b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  -\n",
            b"1 2 3 4 5 6 7 8 9 10 11 12 13 a 14 15 16 17 18 19 20 21 22 23 24\n",
        ] {
            assert_eq!(
                line_head(head),
                Some(false),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    /// Lines of hex letters (bytes a dump's head may hold, but no run of digits) before a run of
    /// digits, in one push: each line start is decided once. Looking back from the digits again
    /// for every line cost the square of the text's length (10 s for 1 MiB in a release build).
    #[test]
    fn hex_letter_lines_before_digits_cost_work_linear_in_their_size() {
        let r = Redactor::new([("V", value(11, 20).as_slice())]);
        for (lines, width) in [(200, 70), (2000, 70), (2000, 30), (500, 200)] {
            let mut input = Vec::new();
            for k in 0..lines {
                input.extend(std::iter::repeat_n(b"abcdef"[k % 6], width));
                input.push(b'\n');
            }
            input.extend_from_slice(&[b'1'; 60]);
            input.push(b'\n');
            for sizes in [&[usize::MAX][..], &[4096], &[1], &[7, 64, 3]] {
                let (one, streamed, one_work, _) = redact_counted(&r, &input, sizes);
                assert_eq!(one, input, "{lines}x{width}: ordinary text changed");
                assert_eq!(
                    streamed, input,
                    "{lines}x{width}, {sizes:?}: streamed differs"
                );
                assert!(
                    one_work <= 8 * input.len() as u64,
                    "{lines}x{width}: {one_work} bytes looked at in one push for {}",
                    input.len()
                );
            }
        }
    }
}
