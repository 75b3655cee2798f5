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
//! - ASCII whitespace: space, `\t`, `\n`, `\r`, vertical tab, form feed;
//! - the `ESC` byte (0x1B);
//! - complete ECMA-48 *SGR* and *erase-in-line* control sequences: `ESC [`, up to
//!   [`MAX_CSI_PARAMS`] parameter/intermediate bytes (0x20–0x3F), final byte `m` or `K`
//!   (colours, bold, `\e[K` from progress bars).
//!
//! A control sequence in progress is *held* rather than dropped: if it turns out not to be an SGR
//! or erase-in-line sequence (another final byte, a byte outside the allowed ranges, too many
//! parameters, or the end of the stream), its bytes after `ESC [` are released into the view as
//! ordinary bytes. So a value printed right after an unfinished `ESC [` is not swallowed. The
//! one value shape that can still be hidden by a preceding `ESC [` is one that itself starts
//! with a complete SGR tail (parameter bytes then `m` or `K`); the redactor also matches such
//! values on the raw bytes.

/// Most parameter and intermediate bytes in a control sequence treated as noise.
pub const MAX_CSI_PARAMS: usize = 16;

const ESC: u8 = 0x1b;

/// Is `b` ASCII whitespace (removed from the normalised view)?
#[inline]
pub fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
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
    t[ESC as usize] = true;
    t
};

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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Normalizer {
    state: State,
    /// Parameter bytes of the control sequence in progress.
    held: [u8; MAX_CSI_PARAMS],
    held_len: u8,
    /// Original offset of the first held byte.
    held_pos: u64,
}

impl Normalizer {
    /// A normaliser in its ground state.
    pub fn new() -> Normalizer {
        Normalizer::default()
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
                        self.release(feed);
                        self.ground(b, pos, feed)
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

    /// Releases held bytes of an abandoned control sequence into the view.
    fn release(&mut self, feed: &mut impl FnMut(u8, u64)) {
        let n = usize::from(self.held_len);
        for (i, &h) in self.held.iter().take(n).enumerate() {
            feed(h, self.held_pos + i as u64);
        }
        self.held_len = 0;
        self.state = State::Ground;
    }

    /// End of input: releases any held bytes and returns to the ground state.
    pub fn finish(&mut self, feed: &mut impl FnMut(u8, u64)) {
        if self.state == State::Csi {
            self.release(feed);
        }
        self.state = State::Ground;
    }
}

/// Normalises a whole byte string (used for patterns).
pub fn normalize(bytes: &[u8]) -> Vec<u8> {
    let mut n = Normalizer::new();
    let mut out = Vec::with_capacity(bytes.len());
    let mut feed = |b: u8, _pos: u64| out.push(b);
    for (i, &b) in bytes.iter().enumerate() {
        n.step(b, i as u64, &mut feed);
    }
    n.finish(&mut feed);
    out
}

/// Could the normalised view of `value` differ from `normalize(value)` when it is printed next
/// to escape bytes (right after `ESC` or `ESC [`, or right before `m`)? Such values, for example
/// `12mABC…` or `[1mXYZ…`, are also matched on the raw bytes.
pub fn swallowable(value: &[u8]) -> bool {
    let plain = normalize(value);
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
    let mut plain_m = plain.clone();
    plain_m.push(b'm');
    from(State::Esc) != plain || from(State::Csi) != plain || normalize(&with_m) != plain_m
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
    fn swallowable_values() {
        assert!(swallowable(b"12mABCDEFGH"));
        assert!(swallowable(b"KABCDEFGH"));
        assert!(swallowable(b"[1mABCDEFGH"));
        assert!(swallowable(b"ABCDEFGH\x1b[12"));
        assert!(!swallowable(b"ghp_ABCDEFGH"));
        assert!(!swallowable(b"1234abcd"));
    }
}
