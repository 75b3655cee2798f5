//! Byte lists anywhere in a line: hex pairs, decimal and octal numbers joined by punctuation.
//!
//! Tools print a value's bytes as a list in many shapes: `58:6b:7a` (`bytes.hex(":")`, Perl
//! `%*vX`, fingerprints), `586b-7a41` (`bytes.hex("-", 2)`), `0X58, 0X6B` (`xxd -i -u`),
//! `0x58 0x6b`, `['0x58', '0x5']` (Python `[hex(b) for b in v]`, unpadded), `["58","6b"]`
//! (Node `toString(16)`), `58,6b` (`od | tr`), `["88","107"]` (jq `explode|map(tostring)`),
//! `130 153 67` and `130.153.67` (unpadded octal: `hexdump -e '/1 "%o "'`, Perl `%vo`).
//! Registering each shape per value would multiply the patterns by the separators, cases and
//! quotings; this view decodes them instead.
//!
//! A *list run* is a run of at least [`L_RUN`] bytes that are hex digits, `x`, `X` or list
//! punctuation ([`is_h`]: whitespace, `:` `,` `-` `.` `;` `|`, quotes, brackets). In it, a
//! *token* is an optional `0x`/`0X` and hex digits; runs of up to [`SEP_MAX`] punctuation bytes
//! join tokens. Each token is read in three radices at once, each its own stream of decoded
//! bytes matched against the atoms like the escapes of the decoding pass: hex (a 1-digit
//! token is one byte, as `hex(5)` prints it; an even number of digits is that many pairs),
//! decimal (a number up to 255, any zero padding) and octal (the same in base 8); `0x`
//! tokens are hex only. A token a radix cannot read ends that radix's stream; a longer
//! punctuation run or the run's end ends all three. A match masks the tokens from its first
//! unit to its last.
//!
//! Cost: ordinary output is not read byte by byte. A run of [`L_RUN`] such bytes holds an
//! 8-byte word of them at a multiple of [`WORD_STRIDE`] from the chunk start, so one search
//! ([`stride_words`], shared with the dump reader, whose heads need the same stride) tests one
//! word in [`WORD_STRIDE`] (a word holding a letter `g`–`w`, `y` or `z`, as most words of text
//! do, fails a branch-free test first); at a word of list bytes, word tests of the bytes
//! around it decide most dates and times, and only then is the run measured. A run shorter
//! than [`L_RUN`] is never read, whichever chunks it spans: the run at a chunk's end is kept
//! (at most [`L_RUN`] − 1 bytes, held back from its first digit) and decided with the next
//! chunk, so streaming equals one-shot. Lists of fewer than [`L_RUN`] bytes (a value of 8 to
//! 12 bytes as `58:6b:…`) are not read: `docs/redaction.md` §5.

use zeroize::Zeroize;

use super::DecodePass;
use crate::matcher::Hit;

/// Shortest run read (bytes).
pub(super) const L_RUN: usize = WORD_STRIDE + 7;

/// Distance between the tested 8-byte words.
const WORD_STRIDE: usize = 30;

/// Most punctuation bytes between two tokens of one list (`', '`, `",\n  "`).
const SEP_MAX: u8 = 8;

/// List bytes: hex digits, `x`, `X`, whitespace and list punctuation.
// Indexing in a constant initialiser is checked at compile time.
#[allow(clippy::indexing_slicing)]
static H: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_hexdigit() || b == b'x' || b == b'X' || is_sep_const(b);
        i += 1;
    }
    t
};

const fn is_sep_const(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t'
            | b'\r'
            | b'\n'
            | b':'
            | b','
            | b'-'
            | b'.'
            | b';'
            | b'|'
            | b'\''
            | b'"'
            | b'['
            | b']'
            | b'('
            | b')'
            | b'{'
            | b'}'
    )
}

/// Head bytes (`dump::is_t`: digits, whitespace, `:` `,` `;` `|`, the fold's glue byte 0x1f,
/// hex letters, brackets, quotes; bit 0) and list bytes ([`H`], bit 1), in one look-up. A unit
/// test checks bit 0 against `dump::is_t`.
// Indexing in a constant initialiser is checked at compile time.
#[allow(clippy::indexing_slicing)]
static LCLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let head = b.is_ascii_hexdigit()
            || matches!(
                b,
                b' ' | b'\t'
                    | b'\r'
                    | b'\n'
                    | b':'
                    | b','
                    | b';'
                    | b'|'
                    | 0x1f
                    | b'['
                    | b']'
                    | b'('
                    | b')'
                    | b'{'
                    | b'}'
                    | b'"'
                    | b'\''
            );
        t[i] = (head as u8) | ((H[i] as u8) << 1);
        i += 1;
    }
    t
};

/// A list byte ([`H`]).
#[inline(always)]
fn is_h(b: u8) -> bool {
    H.get(usize::from(b)).copied().unwrap_or(false)
}

/// Whether the 8 bytes of `w` may all be list bytes: ASCII with no letter `g`–`w`, `y`, `z`
/// in either case (branch-free, as `dump::may_be_head`).
#[inline(always)]
fn may_be_list(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let x = w | (0x20 * ONES);
    // Top bit of each byte in 0x67..=0x77 (`g`–`w`) and in 0x79..=0x7a (`y`, `z`); ASCII
    // bytes neither carry nor borrow, and `w`'s own top bit rejects the others.
    let gw = (0xf7 * ONES).wrapping_sub(x) & x.wrapping_add(0x19 * ONES);
    let yz = (0xfa * ONES).wrapping_sub(x) & x.wrapping_add(0x07 * ONES);
    (gw | yz | w) & (0x80 * ONES) == 0
}

/// The 8-byte words of `chunk` at multiples of [`WORD_STRIDE`] that are all list bytes or all
/// dump-head bytes (`dump::is_t`), in order, each with whether it is the latter: one search
/// for both readers (the dump reader's heads need the same stride). A word holding a letter
/// `g`–`w`, `y` or `z` fails a branch-free test first.
pub(super) fn stride_words(chunk: &[u8], out: &mut Vec<(usize, bool)>) {
    out.clear();
    let word = |w: &[u8]| u64::from_le_bytes(w.try_into().unwrap_or([0xff; 8]));
    let mut classify = |p: usize| {
        if let Some(w) = chunk.get(p..p + 8) {
            let c = w.iter().fold(3u8, |c, &b| {
                c & LCLASS.get(usize::from(b)).copied().unwrap_or(0)
            });
            // Head bytes are list bytes but for the fold's glue byte.
            if c != 0 {
                out.push((if c & 2 == 0 { p | GLUED } else { p }, c & 1 != 0));
            }
        }
    };
    // Four tested words (120 bytes) a step, one branch.
    let (blocks, _) = chunk.as_chunks::<{ 4 * WORD_STRIDE }>();
    let mut at = 0;
    for block in blocks {
        let low = |k: usize| {
            block
                .get(k * WORD_STRIDE..k * WORD_STRIDE + 8)
                .is_some_and(|w| may_be_list(word(w)))
        };
        let l = [low(0), low(1), low(2), low(3)];
        if l[0] | l[1] | l[2] | l[3] {
            for (k, &pass) in l.iter().enumerate() {
                if pass {
                    classify(at + k * WORD_STRIDE);
                }
            }
        }
        at += 4 * WORD_STRIDE;
    }
    let mut p = at;
    while p + 8 <= chunk.len() {
        if chunk.get(p..p + 8).is_some_and(|w| may_be_list(word(w))) {
            classify(p);
        }
        p += WORD_STRIDE;
    }
}

/// Longest chunk with at most two tested words (64-byte pushes).
pub(super) const SHORT_CHUNK: usize = 2 * WORD_STRIDE + 7;

/// For a chunk of at most two tested words: whether either may be all list or head bytes
/// (else [`stride_words`] finds none, without the call).
#[inline(always)]
pub(super) fn may_open(chunk: &[u8]) -> bool {
    let test = |p: usize| {
        chunk
            .get(p..p + 8)
            .is_some_and(|w| may_be_list(u64::from_le_bytes(w.try_into().unwrap_or([0xff; 8]))))
    };
    test(0) || test(WORD_STRIDE)
}

/// Marks a word of [`stride_words`] that is all head bytes but not all list bytes (it holds
/// the fold's glue byte): the high bit of its offset.
pub(super) const GLUED: usize = 1 << (usize::BITS - 1);

/// One stream's list-reading state.
#[derive(Clone, Default)]
pub(crate) struct ListState {
    /// Reading a list run byte by byte.
    open: bool,
    /// The list bytes at the end of the input so far, fewer than [`L_RUN`], not yet read
    /// (a run is read once it reaches [`L_RUN`] bytes), and where they start.
    tail: Vec<u8>,
    tail_start: u64,
    /// Where the first token byte of `tail` is (what a match could start at), if any.
    tail_tok: Option<u64>,
    /// The token being read: its digits while all are decimal (up to [`BIG_MAX`]), how many
    /// digits it has, where it starts and ends.
    tok: Vec<u8>,
    tok_len: usize,
    tok_start: u64,
    tok_end: u64,
    /// All its digits are decimal so far.
    decimal: bool,
    /// The first digit of the hex pair being read.
    half: u8,
    /// After `0x`/`0X`.
    prefixed: bool,
    /// The token is none (`x` elsewhere).
    bad: bool,
    /// Punctuation bytes since the last token.
    sep_len: u8,
    /// Hex, hex with each pair's digits swapped (Perl `unpack("h*")`), decimal and octal
    /// streams: decoded bytes with their spans.
    views: [Vec<(u8, u64, u64)>; 4],
}

/// Most digits of a decimal token read (as a byte, or as one big integer: a 512-byte value
/// has 1,234).
const BIG_MAX: usize = 1240;

/// Fewest digits of a decimal token read as one big integer (2^56 has 17: an 8-byte atom).
const BIG_MIN: usize = 17;

impl Drop for ListState {
    fn drop(&mut self) {
        self.tail.zeroize();
        self.tok.zeroize();
        self.half = 0;
        for v in &mut self.views {
            clear_view(v);
        }
    }
}

/// Zeroes and empties `v` (its length only: a full `zeroize` writes its whole capacity, which
/// a long token once grew, at every token).
fn wipe(v: &mut Vec<u8>) {
    for b in v.iter_mut() {
        *b = 0;
    }
    v.clear();
}

fn clear_view(v: &mut Vec<(u8, u64, u64)>) {
    for w in v.iter_mut() {
        w.0 = 0;
    }
    v.clear();
}

impl ListState {
    fn reset_token(&mut self) {
        wipe(&mut self.tok);
        self.tok.clear();
        self.tok_len = 0;
        self.decimal = true;
        self.half = 0;
        self.prefixed = false;
        self.bad = false;
    }

    /// After `0x`: the digits start.
    fn reset_digits(&mut self) {
        wipe(&mut self.tok);
        self.tok.clear();
        self.tok_len = 0;
        self.decimal = true;
        self.half = 0;
    }

    /// A token is being read (digits, a `0x` or a broken one).
    fn in_token(&self) -> bool {
        self.tok_len > 0 || self.prefixed || self.bad
    }

    /// Ends the run: no stream goes on past it.
    fn close(&mut self) {
        self.open = false;
        self.reset_token();
        self.sep_len = 0;
        for v in &mut self.views {
            clear_view(v);
        }
    }
}

/// The first byte of `bytes` that can be part of a token (a hex digit, `x`, `X`).
fn first_token_byte(bytes: &[u8]) -> Option<usize> {
    bytes
        .iter()
        .position(|&b| b.is_ascii_hexdigit() || b == b'x' || b == b'X')
}

/// Reads `digits` (ASCII digits) as a byte in `radix` (any zero padding).
fn number(digits: &[u8], radix: u32) -> Option<u8> {
    let mut n: u32 = 0;
    for &d in digits {
        let x = char::from(d).to_digit(radix)?;
        n = n * radix + x;
        if n > 255 {
            return None;
        }
    }
    u8::try_from(n).ok()
}

/// Whether `b` written in `radix` (no padding) begins with `digits` once their leading zeros
/// are dropped (a zero-padded token may still become `b`).
fn spelled_from(b: u8, radix: u32, digits: &[u8]) -> bool {
    let lead = digits.iter().take_while(|&&d| d == b'0').count();
    let digits = digits.get(lead..).unwrap_or_default();
    let mut s = [0u8; 8];
    let mut n = 0;
    let mut x = u32::from(b);
    loop {
        if let Some(slot) = s.get_mut(n) {
            *slot = b'0' + (x % radix) as u8;
        }
        n += 1;
        x /= radix;
        if x == 0 {
            break;
        }
    }
    let written = s.get(..n).unwrap_or_default();
    digits.len() <= n && digits.iter().zip(written.iter().rev()).all(|(a, b)| a == b)
}

/// `digits` (ASCII decimal) as a big-endian unsigned integer, without leading zero bytes.
fn big_endian(digits: &[u8]) -> Vec<u8> {
    // Little-endian base-256 digits.
    let mut le: Vec<u8> = Vec::with_capacity(digits.len() / 2 + 1);
    for &d in digits {
        let mut carry = u32::from(d.wrapping_sub(b'0'));
        for x in &mut le {
            let y = u32::from(*x) * 10 + carry;
            *x = (y & 0xff) as u8;
            carry = y >> 8;
        }
        while carry > 0 {
            le.push((carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    le.reverse();
    le
}

impl DecodePass {
    /// Feeds `chunk` (at absolute offset `base`) to the list reader.
    pub(super) fn scan_list(
        &self,
        st: &mut ListState,
        chunk: &[u8],
        base: u64,
        words: &[(usize, bool)],
        hits: &mut Vec<Hit>,
    ) {
        let n = chunk.len();
        if !st.open
            && st.tail.is_empty()
            && words.is_empty()
            && chunk.last().is_none_or(|&b| !is_h(b))
        {
            // Most pushes of text: no word of list bytes, none open or kept, none at the end.
            return;
        }
        let mut i = 0;
        if st.open {
            i = self.list_run(st, chunk, base, 0, hits);
            if i == n {
                return;
            }
        } else if !st.tail.is_empty() {
            let need = L_RUN - st.tail.len();
            let lead = chunk.iter().take(need).take_while(|&&b| is_h(b)).count();
            if lead >= need {
                // The kept run reaches [`L_RUN`]: read it from its start.
                let mut tail = std::mem::take(&mut st.tail);
                st.tail_tok = None;
                st.open = true;
                st.reset_token();
                let start = st.tail_start;
                let _ = self.list_run(st, &tail, start, 0, hits);
                wipe(&mut tail);
                tail.clear();
                st.tail = tail;
                i = self.list_run(st, chunk, base, 0, hits);
                if i == n {
                    return;
                }
            } else if lead == n {
                if st.tail_tok.is_none() {
                    st.tail_tok = first_token_byte(chunk).map(|j| base + j as u64);
                }
                st.tail.extend_from_slice(chunk);
                return;
            } else {
                wipe(&mut st.tail);
                st.tail_tok = None;
                i = lead;
            }
        }
        let mut next = 0;
        while i < n {
            // The next shared word of list bytes at `i` or after.
            while words.get(next).is_some_and(|w| w.0 & GLUED != 0 || w.0 < i) {
                next += 1;
            }
            let Some(&(p, _)) = words.get(next) else {
                break;
            };
            next += 1;
            // A run of [`L_RUN`] through this word holds the 15 bytes before it or the 15
            // after it (its 29 other bytes): word tests on them (a letter `g`-`z` is no list
            // byte) decide most words of dates and times, where the run cannot reach the
            // chunk's end.
            let no_run = |k: usize| {
                chunk.get(k..k + 8).is_some_and(|w| {
                    !may_be_list(u64::from_le_bytes(w.try_into().unwrap_or([0xff; 8])))
                })
            };
            if p + 23 <= n
                && (p < i + 15 || no_run(p - 8) || no_run(p - 15))
                && (no_run(p + 8) || no_run(p + 15))
            {
                i = p + 8;
                continue;
            }
            let is = |k: usize| chunk.get(k).is_some_and(|&b| is_h(b));
            let mut lo = p;
            while lo > i && is(lo - 1) {
                lo -= 1;
            }
            let mut hi = p + 8;
            while hi < n && hi - lo < L_RUN && is(hi) {
                hi += 1;
            }
            if hi - lo >= L_RUN {
                st.open = true;
                st.reset_token();
                i = self.list_run(st, chunk, base, lo, hits);
            } else if hi >= n {
                break;
            } else {
                i = hi;
            }
        }
        // The list bytes at the end (fewer than [`L_RUN`]: a longer run was found above).
        let mut k = n;
        while k > i && chunk.get(k - 1).is_some_and(|&b| is_h(b)) {
            k -= 1;
        }
        if k < n {
            st.tail
                .extend_from_slice(chunk.get(k..).unwrap_or_default());
            st.tail_start = base + k as u64;
            st.tail_tok = first_token_byte(chunk.get(k..).unwrap_or_default())
                .map(|j| st.tail_start + j as u64);
        }
    }

    /// Reads `bytes[from..]` (at `base`) as an open list run up to its end: the index of the
    /// first byte that is not a list byte (the run is closed there), or `bytes.len()`.
    fn list_run(
        &self,
        st: &mut ListState,
        bytes: &[u8],
        base: u64,
        from: usize,
        hits: &mut Vec<Hit>,
    ) -> usize {
        for (j, &b) in bytes.iter().enumerate().skip(from) {
            let pos = base + j as u64;
            if !is_h(b) {
                if st.in_token() {
                    self.end_list_token(st, hits);
                }
                st.close();
                return j;
            }
            self.list_byte(st, b, pos, hits);
        }
        bytes.len()
    }

    fn list_byte(&self, st: &mut ListState, b: u8, pos: u64, hits: &mut Vec<Hit>) {
        let Some(nib) = char::from(b).to_digit(16) else {
            if b == b'x' || b == b'X' {
                if !st.in_token() {
                    st.tok_start = pos;
                }
                st.sep_len = 0;
                st.tok_end = pos + 1;
                if st.tok_len == 1 && st.tok.first() == Some(&b'0') && !st.prefixed && !st.bad {
                    st.prefixed = true;
                    st.reset_digits();
                } else {
                    st.bad = true;
                }
                return;
            }
            // Punctuation.
            if st.in_token() {
                self.end_list_token(st, hits);
            }
            st.sep_len = st.sep_len.saturating_add(1);
            if st.sep_len > SEP_MAX {
                for v in &mut st.views {
                    clear_view(v);
                }
            }
            return;
        };
        if !st.in_token() {
            st.tok_start = pos;
        }
        st.sep_len = 0;
        st.tok_end = pos + 1;
        if st.bad {
            return;
        }
        st.tok_len += 1;
        if st.decimal && !b.is_ascii_digit() {
            st.decimal = false;
            wipe(&mut st.tok);
            st.tok.clear();
        }
        if st.decimal && st.tok.len() < BIG_MAX {
            st.tok.push(b);
        }
        let nib = nib as u8;
        if st.tok_len % 2 == 1 {
            st.half = nib;
            return;
        }
        // A whole pair: a unit of the hex streams now.
        let s = if st.tok_len == 2 {
            st.tok_start
        } else {
            pos - 1
        };
        let [hex, swapped, _, _] = &mut st.views;
        self.push_list_unit(hex, (st.half << 4) | nib, s, pos + 1, hits);
        self.push_list_unit(swapped, (nib << 4) | st.half, s, pos + 1, hits);
        st.half = 0;
    }

    /// A token ended: its byte joins each radix that reads it; the others end. A long decimal
    /// token is also read as one big-endian integer.
    fn end_list_token(&self, st: &mut ListState, hits: &mut Vec<Hit>) {
        let len = st.tok_len;
        let (start, end) = (st.tok_start, st.tok_end);
        if st.bad || len == 0 {
            for v in &mut st.views {
                clear_view(v);
            }
            st.reset_token();
            return;
        }
        let decimal = st.decimal && !st.prefixed && len <= BIG_MAX;
        let [hex, swapped, dec, oct] = &mut st.views;
        if len == 1 {
            // `hex(5)`, `(5).toString(16)`: one byte.
            self.push_list_unit(hex, st.half, start, end, hits);
            clear_view(swapped);
        } else if len % 2 == 1 {
            clear_view(hex);
            clear_view(swapped);
        }
        let digits = st.tok.get(..).unwrap_or_default();
        for (v, radix) in [(dec, 10), (oct, 8)] {
            match number(digits, radix).filter(|_| decimal) {
                Some(b) => self.push_list_unit(v, b, start, end, hits),
                None => clear_view(v),
            }
        }
        // No longer than the longest atom's decimal (2.41 digits a byte): a text of long digit
        // runs costs the square of this bound per token, not of [`BIG_MAX`].
        if decimal && len >= BIG_MIN && len <= self.max_len * 241 / 100 + 2 {
            let mut big = big_endian(digits);
            let mut w: Vec<(u8, u64, u64)> = big.iter().map(|&b| (b, start, end)).collect();
            let _ = self.match_suffix(&w, hits);
            clear_view(&mut w);
            big.zeroize();
        }
        st.reset_token();
    }

    fn push_list_unit(
        &self,
        v: &mut Vec<(u8, u64, u64)>,
        b: u8,
        start: u64,
        end: u64,
        hits: &mut Vec<Hit>,
    ) {
        if crate::normalize::is_space(b) {
            // The atoms have no whitespace.
            return;
        }
        v.push((b, start, end));
        if v.len() >= 2 * self.max_len.max(8) {
            let extra = v.len() - self.max_len;
            for w in v.iter_mut().take(extra) {
                w.0 = 0;
            }
            v.drain(..extra);
        }
        let _ = self.match_suffix(v, hits);
    }

    /// Ends the stream: nothing more joins a run (a kept run shorter than [`L_RUN`] is never
    /// read).
    pub(super) fn finish_list(&self, st: &mut ListState, hits: &mut Vec<Hit>) {
        if st.open && st.in_token() {
            self.end_list_token(st, hits);
        }
        st.close();
        wipe(&mut st.tail);
        st.tail_tok = None;
    }

    /// Where the open token's units not yet pushed start: the whole token while it may be a
    /// decimal or octal byte or a big integer, else its unpaired last digit.
    fn open_token_unit(st: &ListState) -> Option<u64> {
        if !st.in_token() || st.bad {
            return None;
        }
        if (st.decimal && !st.prefixed && st.tok_len <= BIG_MAX) || st.tok_len <= 1 {
            Some(st.tok_start)
        } else {
            (st.tok_len % 2 == 1).then(|| st.tok_end - 1)
        }
    }

    /// The earliest offset a list match not yet reported could start at.
    pub(super) fn list_hold(&self, st: &ListState) -> Option<u64> {
        if !st.open {
            // A match starts at a token: the kept punctuation before the first one (a prompt's
            // `> `, a line feed) is not held.
            return st.tail_tok;
        }
        let mut b = Self::open_token_unit(st);
        for v in &st.views {
            if let Some(&(_, s, _)) = v.get(v.len().saturating_sub(self.max_len)) {
                b = Some(b.map_or(s, |y| y.min(s)));
            }
        }
        b
    }

    /// At a pause: the unit starts of the longest decoded tail of a stream that some atom
    /// begins with (the open token's unpaired digit, or the token itself while it may be a
    /// number, counts as one unit). A kept run is read on a copy as if it were long enough.
    pub(super) fn list_pause_tail(&self, st: &ListState) -> Vec<u64> {
        if !st.open && !st.tail.is_empty() {
            let mut c = st.clone();
            let mut tail = std::mem::take(&mut c.tail);
            c.open = true;
            c.reset_token();
            let mut scratch = Vec::new();
            let _ = self.list_run(&mut c, &tail, st.tail_start, 0, &mut scratch);
            wipe(&mut tail);
            return self.list_pause_tail(&c);
        }
        let mut best: Vec<u64> = Vec::new();
        if !st.open {
            return best;
        }
        let open = Self::open_token_unit(st);
        for (k, v) in st.views.iter().enumerate() {
            let mut starts = self.tail_units(v);
            // The open token's unit counts when it extends a tail that begins an atom, or
            // could begin one itself (a byte some atom begins with spells so).
            let spells = |b: u8| match k {
                0 => st.tok_len % 2 == 1 && b >> 4 == st.half,
                1 => st.tok_len % 2 == 1 && st.tok_len > 1 && b & 0xf == st.half,
                _ => {
                    let radix = if k == 2 { 10 } else { 8 };
                    st.decimal && !st.prefixed && spelled_from(b, radix, &st.tok)
                }
            };
            let counts = if starts.is_empty() {
                (0..=255u8).any(|b| self.first.get(usize::from(b)) == Some(&true) && spells(b))
            } else {
                (0..=255u8).any(spells)
            };
            if counts && let Some(u) = open {
                starts.push(u);
            }
            if starts.len() > best.len() {
                best = starts;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_class_table_agrees_with_both_readers() {
        for b in 0u8..=255 {
            let c = LCLASS[usize::from(b)];
            assert_eq!(c & 1 != 0, super::super::dump::is_t(b), "{b:#x}");
            assert_eq!(c & 2 != 0, is_h(b), "{b:#x}");
        }
    }

    #[test]
    fn the_word_test_is_exact_for_list_bytes() {
        for b in 0u8..=255 {
            let w = u64::from_le_bytes([b, b'0', b'0', b'0', b'0', b'0', b'0', b'0']);
            if is_h(b) {
                assert!(may_be_list(w), "{b:#x}");
            }
            if b.is_ascii_alphabetic() && !is_h(b) {
                assert!(!may_be_list(w), "{b:#x}");
            }
        }
    }
}
