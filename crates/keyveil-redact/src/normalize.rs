//! The normalised view used by the noise-tolerant matching pass.
//!
//! Programs often print a secret with *noise* inside it: line wrapping (base64 wrapped at 64 or
//! 76 columns by `base64`/PEM/MIME, hexdumps such as `od -tx1` that put a space between every
//! byte and a newline every 16), values interleaved with spaces, lines joined by whatever
//! whitespace, or colour codes spliced into a value by a terminal-aware program (`grep
//! --color`, word diffs).
//!
//! The [`Normalizer`] is a byte-at-a-time state machine that removes that noise. Its decisions do
//! not depend on how the input is split into chunks. Patterns are normalised by the same
//! machine, and the matcher maps normalised offsets back to original offsets, so a match also
//! covers the noise inside it.
//!
//! Noise is:
//! - ASCII whitespace: space, `\t`, `\n`, `\r`, vertical tab, form feed; and NUL (so UTF-16
//!   and UTF-32 text of ASCII characters, and NUL-separated lists, show the plain bytes);
//! - the `ESC` byte (0x1B);
//! - complete ECMA-48 *SGR* and *erase-in-line* control sequences: `ESC [`, up to
//!   [`MAX_CSI_PARAMS`] parameter/intermediate bytes (0x20–0x3F), final byte `m` or `K`
//!   (colours, bold, `\e[K` from progress bars).
//!
//! The view also folds the case of percent-escapes: a hex letter `A`–`F` right after `%`, or
//! right after `%` and a hex digit, becomes lower case ([`fold_percent_hex`]), so `%2F`, `%2f`
//! and mixed forms such as `%2f%3A` match the same patterns (RFC 3986 §2.1: the hex digits of a
//! percent-encoding are case-insensitive). The fold looks only at the two view bytes before,
//! so it needs nothing held back.
//!
//! A control sequence in progress is *held* rather than dropped: if it turns out not to be an SGR
//! or erase-in-line sequence (another final byte, a byte outside the allowed ranges, too many
//! parameters, or the end of the stream), its bytes after `ESC [` are released into the view as
//! ordinary bytes. So a value printed right after an unfinished `ESC [` is not swallowed. A value
//! that itself starts with what completes a colour code (`12m…`, `K…`) is registered in every
//! form it can take in the view ([`normalized_forms`]).

use zeroize::Zeroize;

/// Most parameter and intermediate bytes in a control sequence treated as noise.
pub const MAX_CSI_PARAMS: usize = 16;

/// The escape byte that starts a control sequence.
pub const ESC: u8 = 0x1b;

/// Is `b` ASCII whitespace or NUL (removed from the normalised view)? NUL is noise so that
/// wide-character text (UTF-16 and UTF-32 of ASCII characters: `iconv -t UTF-16LE`, `wchar_t`
/// output, files Windows tools wrote) and NUL-separated output (`/proc/PID/environ`,
/// `env -0`, `find -print0`) show the value's own bytes in the view.
#[inline]
pub const fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0)
}

/// Bytes that leave the ground state's fast path (whitespace and `ESC`).
// Indexing in a constant initialiser is checked at compile time.
#[allow(clippy::indexing_slicing)]
static SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b' ' as usize] = true;
    t[b'\t' as usize] = true;
    t[b'\n' as usize] = true;
    t[b'\r' as usize] = true;
    t[0x0b] = true;
    t[0x0c] = true;
    t[0] = true;
    t[ESC as usize] = true;
    t
};

/// [`byte_class`] of ordinary bytes.
pub const CLASS_PLAIN: u8 = 0;
/// [`byte_class`] of whitespace.
pub const CLASS_SPACE: u8 = 1;
/// [`byte_class`] of `ESC`.
pub const CLASS_ESC: u8 = 2;

/// Classes of all bytes: [`CLASS_PLAIN`], [`CLASS_SPACE`] or [`CLASS_ESC`].
// Indexing in a constant initialiser is checked at compile time.
#[allow(clippy::indexing_slicing)]
static CLASSES: [u8; 256] = {
    let mut t = [CLASS_PLAIN; 256];
    t[b' ' as usize] = CLASS_SPACE;
    t[b'\t' as usize] = CLASS_SPACE;
    t[b'\n' as usize] = CLASS_SPACE;
    t[b'\r' as usize] = CLASS_SPACE;
    t[0x0b] = CLASS_SPACE;
    t[0x0c] = CLASS_SPACE;
    t[0] = CLASS_SPACE;
    t[ESC as usize] = CLASS_ESC;
    t
};

/// The class of `b` for the ground state: plain, whitespace (noise) or `ESC`.
#[inline(always)]
pub fn byte_class(b: u8) -> u8 {
    CLASSES.get(usize::from(b)).copied().unwrap_or(CLASS_PLAIN)
}

/// Is `b` whitespace or `ESC` (a byte the normaliser must look at)?
#[inline(always)]
pub fn is_special(b: u8) -> bool {
    SPECIAL.get(usize::from(b)).copied().unwrap_or(true)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum State {
    #[default]
    Ground,
    /// After `ESC`.
    Esc,
    /// Inside `ESC [`, holding the parameter bytes seen so far.
    Csi,
}

/// Streaming whitespace and colour-code stripper. See the module documentation.
///
/// Its `Debug` shows the state and how many bytes it holds, never the bytes (they are output,
/// possibly a value printed as a colour code's parameters).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Normalizer {
    state: State,
    /// Parameter bytes of the control sequence in progress.
    held: [u8; MAX_CSI_PARAMS],
    held_len: u8,
    /// Original offset of the first held byte.
    held_pos: u64,
}

impl std::fmt::Debug for Normalizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Normalizer")
            .field("state", &self.state)
            .field("held", &self.held_len)
            .finish_non_exhaustive()
    }
}

impl Normalizer {
    /// A normaliser in its ground state.
    pub fn new() -> Normalizer {
        Normalizer::default()
    }

    /// True in the ground state (no escape sequence in progress).
    #[inline(always)]
    pub fn is_ground(&self) -> bool {
        self.state == State::Ground
    }

    /// True if `b` takes the fast path: ground state, not whitespace, not `ESC` (it is simply
    /// part of the view).
    #[inline(always)]
    pub fn is_fast(&self, b: u8) -> bool {
        self.state == State::Ground && !SPECIAL.get(usize::from(b)).copied().unwrap_or(true)
    }

    /// Original offset of the earliest byte the normaliser holds undecided, if any: a match
    /// could still start there.
    #[inline]
    pub fn held_from(&self) -> Option<u64> {
        (self.state == State::Csi && self.held_len > 0).then_some(self.held_pos)
    }

    /// The parameter bytes held of the control sequence in progress, and the original offset of
    /// the first; `None` outside one. When the sequence completes as a colour code the view
    /// drops them, so the matcher looks for values among them first.
    pub fn held_params(&self) -> Option<(&[u8], u64)> {
        (self.state == State::Csi).then(|| {
            (
                self.held
                    .get(..usize::from(self.held_len))
                    .unwrap_or_default(),
                self.held_pos,
            )
        })
    }

    /// Classifies the byte `b` at original offset `pos`, calling `feed(byte, offset)` for each
    /// byte that enters the normalised view (none, `b` itself, or held bytes released followed
    /// by `b`). Returns the number of bytes definitely dropped as noise by this step.
    #[inline(always)]
    pub fn step(&mut self, b: u8, pos: u64, feed: &mut impl FnMut(u8, u64)) -> usize {
        if self.state == State::Ground && !SPECIAL.get(usize::from(b)).copied().unwrap_or(false) {
            feed(b, pos);
            return 0;
        }
        self.step_slow(b, pos, feed)
    }

    #[inline(never)]
    fn step_slow(&mut self, b: u8, pos: u64, feed: &mut impl FnMut(u8, u64)) -> usize {
        match self.state {
            State::Ground => self.ground(b, pos, feed),
            State::Esc => {
                if b == b'[' {
                    self.state = State::Csi;
                    self.held_len = 0;
                    self.held_pos = pos + 1;
                    1
                } else {
                    self.state = State::Ground;
                    self.ground(b, pos, feed)
                }
            }
            State::Csi => {
                let n = usize::from(self.held_len);
                match b {
                    0x20..=0x3f if n < MAX_CSI_PARAMS => {
                        if let Some(slot) = self.held.get_mut(n) {
                            *slot = b;
                        }
                        self.held_len += 1;
                        0
                    }
                    b'm' | b'K' => {
                        self.state = State::Ground;
                        self.held_len = 0;
                        n + 1
                    }
                    _ => {
                        let spaces = self.release(feed);
                        spaces + self.ground(b, pos, feed)
                    }
                }
            }
        }
    }

    #[inline]
    fn ground(&mut self, b: u8, pos: u64, feed: &mut impl FnMut(u8, u64)) -> usize {
        if b == ESC {
            self.state = State::Esc;
            1
        } else if is_space(b) {
            1
        } else {
            feed(b, pos);
            0
        }
    }

    /// Releases held bytes of an abandoned control sequence into the view; spaces among them
    /// are noise like any other whitespace (so the view is the same as without the `ESC [`).
    /// Returns how many were dropped.
    fn release(&mut self, feed: &mut impl FnMut(u8, u64)) -> usize {
        let n = usize::from(self.held_len);
        let mut spaces = 0;
        for (i, &h) in self.held.iter().take(n).enumerate() {
            if is_space(h) {
                spaces += 1;
            } else {
                feed(h, self.held_pos + i as u64);
            }
        }
        self.held_len = 0;
        self.state = State::Ground;
        spaces
    }

    /// Overwrites the held bytes with zeros (they are output bytes, possibly secret).
    pub fn wipe(&mut self) {
        self.held.zeroize();
        self.held_len = 0;
    }

    /// End of input: releases any held bytes and returns to the ground state.
    pub fn finish(&mut self, feed: &mut impl FnMut(u8, u64)) {
        if self.state == State::Csi {
            self.release(feed);
        }
        self.state = State::Ground;
    }
}

/// The view byte for `b`, given the two view bytes before it (`p1` just before, then `p2`; 0 at
/// the start): a hex letter `A`–`F` that follows `%`, or `%` and a hex digit, is lower-cased.
#[inline(always)]
pub fn fold_percent_hex(b: u8, p1: u8, p2: u8) -> u8 {
    if matches!(b, b'A'..=b'F') && (p1 == b'%' || (p2 == b'%' && p1.is_ascii_hexdigit())) {
        b | 0x20
    } else {
        b
    }
}

/// Applies [`fold_percent_hex`] to consecutive view bytes, the two before `view[0]` being `p1`
/// (just before) and `p2`.
pub fn fold_view(view: &mut [u8], mut p1: u8, mut p2: u8) {
    for b in view {
        *b = fold_percent_hex(*b, p1, p2);
        p2 = p1;
        p1 = *b;
    }
}

/// Normalises a whole byte string (used for patterns): noise removed, percent-escapes folded.
pub fn normalize(bytes: &[u8]) -> Vec<u8> {
    let mut out = strip(bytes);
    fold_view(&mut out, 0, 0);
    out
}

/// `bytes` with noise removed (no folding).
fn strip(bytes: &[u8]) -> Vec<u8> {
    let mut n = Normalizer::new();
    let mut out = Vec::with_capacity(bytes.len());
    let mut feed = |b: u8, _pos: u64| out.push(b);
    for (i, &b) in bytes.iter().enumerate() {
        n.step(b, i as u64, &mut feed);
    }
    n.finish(&mut feed);
    out
}

/// View bytes before a pattern that change how its first bytes fold: none, `%`, `%` and a hex
/// digit (`(p1, p2)` as in [`fold_percent_hex`]).
const FOLD_CONTEXTS: [(u8, u8); 3] = [(0, 0), (b'%', 0), (b'0', b'%')];

/// Could a view that starts with `v` fold differently after `%` or `%h`?
fn context_sensitive(v: &[u8]) -> bool {
    match v {
        [b'A'..=b'F', ..] => true,
        [a, b'A'..=b'F', ..] => a.is_ascii_hexdigit(),
        _ => false,
    }
}

/// The normalised views `value` can have when printed next to escape bytes: after nothing,
/// right after `ESC`, right after `ESC [` (a leading `12m`/`K`/`[1m` would then be taken as a
/// colour code), and right before an `m` (a trailing unfinished `ESC [12` would then be one).
/// Each of them is also folded as if it followed `%` or `%` and a hex digit
/// ([`fold_percent_hex`]). Deduplicated, the plain [`normalize`] form first. Registering all of
/// them keeps a program from hiding a value by printing escape bytes or a `%` next to it.
pub fn normalized_forms(value: &[u8]) -> Vec<Vec<u8>> {
    // Fast path (almost every pattern): nothing to remove or fold, and no first byte that could
    // complete or continue an escape sequence or a percent-escape.
    let escapes = value.iter().any(|&b| is_special(b))
        || value.first() == Some(&b'[')
        || completes_csi(value);
    if !escapes && !value.contains(&b'%') && !context_sensitive(value) {
        return vec![value.to_vec()];
    }
    let bases = if escapes {
        escape_forms(value)
    } else {
        vec![value.to_vec()]
    };
    let mut forms: Vec<Vec<u8>> = Vec::new();
    for f in bases {
        let contexts = if context_sensitive(&f) {
            &FOLD_CONTEXTS[..]
        } else {
            &FOLD_CONTEXTS[..1]
        };
        for &(p1, p2) in contexts {
            let mut folded = f.clone();
            fold_view(&mut folded, p1, p2);
            if !forms.contains(&folded) {
                forms.push(folded);
            }
        }
    }
    forms
}

/// Does `value` begin with what completes a colour code after `ESC [` (up to
/// [`MAX_CSI_PARAMS`] parameter bytes, then `m` or `K`)? Only then (or with noise or `[` in it)
/// can its views next to escape bytes differ from the plain one.
fn completes_csi(value: &[u8]) -> bool {
    let params = value
        .iter()
        .take(MAX_CSI_PARAMS + 1)
        .take_while(|b| (0x20..=0x3f).contains(*b))
        .count();
    params <= MAX_CSI_PARAMS && matches!(value.get(params), Some(b'm' | b'K'))
}

/// The views of `value` (unfolded) after nothing, `ESC`, `ESC [`, and before an `m`.
fn escape_forms(value: &[u8]) -> Vec<Vec<u8>> {
    let plain = strip(value);
    let from = |state: State| {
        let mut n = Normalizer {
            state,
            ..Normalizer::default()
        };
        let mut out = Vec::with_capacity(value.len());
        let mut feed = |b: u8, _pos: u64| out.push(b);
        for (i, &b) in value.iter().enumerate() {
            n.step(b, i as u64 + 1, &mut feed);
        }
        n.finish(&mut feed);
        out
    };
    let mut with_m = value.to_vec();
    with_m.push(b'm');
    let mut before_m = strip(&with_m);
    if before_m.last() == Some(&b'm') {
        before_m.pop();
    }
    vec![plain, from(State::Esc), from(State::Csi), before_m]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm_positions(input: &[u8]) -> Vec<(u8, u64)> {
        let mut n = Normalizer::new();
        let mut out = Vec::new();
        let mut feed = |b: u8, p: u64| out.push((b, p));
        for (i, &b) in input.iter().enumerate() {
            n.step(b, i as u64, &mut feed);
        }
        n.finish(&mut feed);
        out
    }

    #[test]
    fn debug_never_shows_held_bytes() {
        let mut n = Normalizer::new();
        let mut feed = |_: u8, _: u64| {};
        for (i, &b) in b"\x1b[40718295".iter().enumerate() {
            n.step(b, i as u64, &mut feed);
        }
        assert_eq!(n.held_params().map(|(h, _)| h.len()), Some(8));
        let shown = format!("{n:?} {n:#?}");
        assert!(
            !shown.contains("40718295") && !shown.contains("52, 48"),
            "{shown}"
        );
        assert!(shown.contains("held: 8"), "{shown}");
    }

    #[test]
    fn strips_whitespace() {
        assert_eq!(normalize(b"67 68 73\n5f 6f\r\n"), b"6768735f6f");
    }

    #[test]
    fn strips_sgr_and_erase_line() {
        assert_eq!(normalize(b"ab\x1b[31;1mcd\x1b[0mef\x1b[K"), b"abcdef");
        assert_eq!(normalize(b"ab\x1b[mcd"), b"abcd");
    }

    #[test]
    fn other_sequences_are_released() {
        // Cursor movement is not noise: its parameters come back, ESC and '[' do not.
        assert_eq!(normalize(b"ab\x1b[12Hcd"), b"ab12Hcd");
        // A value printed after an unfinished sequence is not swallowed.
        assert_eq!(normalize(b"\x1b[1234abcd"), b"1234abcd");
        assert_eq!(normalize(b"\x1b[12"), b"12");
        // ESC followed by anything but '[' only loses the ESC.
        assert_eq!(normalize(b"\x1b(Bxy"), b"(Bxy");
    }

    #[test]
    fn runaway_sequences_are_released() {
        let mut long = b"\x1b[".to_vec();
        long.extend(std::iter::repeat_n(b'1', 40));
        long.push(b'm');
        assert_eq!(normalize(&long).len(), 41);
    }

    #[test]
    fn released_bytes_keep_their_offsets() {
        assert_eq!(
            norm_positions(b"a\x1b[12Xb"),
            vec![(b'a', 0), (b'1', 3), (b'2', 4), (b'X', 5), (b'b', 6)]
        );
    }

    #[test]
    fn forms_next_to_escapes() {
        assert_eq!(
            normalized_forms(b"12mGHIJKLMN"),
            vec![b"12mGHIJKLMN".to_vec(), b"GHIJKLMN".to_vec()]
        );
        assert_eq!(
            normalized_forms(b"[1mGHIJKLMN"),
            vec![b"[1mGHIJKLMN".to_vec(), b"GHIJKLMN".to_vec()]
        );
        assert_eq!(
            normalized_forms(b"GHIJKLMN\x1b[12"),
            vec![b"GHIJKLMN12".to_vec(), b"GHIJKLMN".to_vec()]
        );
        assert_eq!(
            normalized_forms(b"ghp_GHIJKLMN"),
            vec![b"ghp_GHIJKLMN".to_vec()]
        );
        assert_eq!(normalized_forms(b"1234wxyz"), vec![b"1234wxyz".to_vec()]);
    }

    #[test]
    fn percent_escapes_fold_to_lower_case() {
        assert_eq!(normalize(b"a%2Fb%3a%C3%A9c"), b"a%2fb%3a%c3%a9c");
        // Only the two digits after `%` fold.
        assert_eq!(normalize(b"%ABCD ABCD"), b"%abCDABCD");
        // Across noise, as in the view.
        assert_eq!(normalize(b"%\x1b[1m2\nF"), b"%2f");
    }

    #[test]
    fn escape_forms_only_when_they_can_differ() {
        // Digits that never reach an `m`/`K`: released as they are after `ESC [`.
        assert_eq!(
            normalized_forms(b"12345678xy"),
            vec![b"12345678xy".to_vec()]
        );
        assert!(normalized_forms(b"12;4mxyzuvw").len() > 1);
        assert!(normalized_forms(b"Kxyzuvwst").len() > 1);
        assert!(normalized_forms(b"[1mxyzuvw").len() > 1);
        // The shortcut agrees with computing every view.
        for v in [
            &b"0123456789abcdef"[..],
            b"9;9;9;Kabcdefgh",
            b"  12mabcdefgh",
            b"1234567890123456m1",
        ] {
            let mut all: Vec<Vec<u8>> = Vec::new();
            for f in escape_forms(v) {
                let contexts = if context_sensitive(&f) {
                    &FOLD_CONTEXTS[..]
                } else {
                    &FOLD_CONTEXTS[..1]
                };
                for &(p1, p2) in contexts {
                    let mut g = f.clone();
                    fold_view(&mut g, p1, p2);
                    if !all.contains(&g) {
                        all.push(g);
                    }
                }
            }
            assert_eq!(normalized_forms(v), all, "{}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn forms_after_a_percent() {
        assert_eq!(
            normalized_forms(b"ABCDEFGH"),
            vec![
                b"ABCDEFGH".to_vec(),
                b"abCDEFGH".to_vec(),
                b"aBCDEFGH".to_vec()
            ]
        );
        assert_eq!(
            normalized_forms(b"1Fxyzxyz"),
            vec![b"1Fxyzxyz".to_vec(), b"1fxyzxyz".to_vec()]
        );
        assert_eq!(normalized_forms(b"GHxyzxyz"), vec![b"GHxyzxyz".to_vec()]);
    }
}
