//! The normalised view used by the second ("noise-tolerant") matching pass.
//!
//! Programs often print a secret with *noise* inside it: line wrapping (base64 wrapped at 64 or
//! 76 columns by `base64`/PEM/MIME, hexdumps such as `od -tx1` that put a space between every
//! byte and a newline every 16), values interleaved with spaces, or ANSI escape sequences
//! (colours, cursor movement) spliced into a value by a terminal-aware program.
//!
//! The [`Normalizer`] is a byte-at-a-time state machine that decides for every input byte whether
//! it belongs to the normalised view ([`Step::Keep`]) or is noise ([`Step::Drop`]). It keeps no
//! look-ahead, so its decisions do not depend on how the input is split into chunks. Patterns are
//! normalised with the same machine, so a value that appears contiguously in the output also
//! appears contiguously in the normalised view (the matcher maps normalised offsets back to the
//! original bytes, so a match also covers the noise inside it).
//!
//! Noise is:
//! - ASCII whitespace: space, `\t`, `\n`, `\r`, vertical tab, form feed;
//! - ANSI / ECMA-48 escape sequences: CSI (`ESC [` parameters, intermediates, final byte),
//!   OSC and other string sequences (`ESC ]`, `ESC P`, `ESC X`, `ESC ^`, `ESC _`, ended by BEL or
//!   `ESC \`), and two-byte `ESC x` sequences. Runaway sequences are cut off after
//!   [`MAX_CSI_LEN`] / [`MAX_STRING_LEN`] bytes.

/// Longest CSI sequence (in bytes after `ESC [`) that is treated as noise.
pub const MAX_CSI_LEN: u16 = 64;
/// Longest OSC/DCS/APC/PM/SOS string (in bytes) that is treated as noise.
pub const MAX_STRING_LEN: u16 = 512;

const ESC: u8 = 0x1b;
const BEL: u8 = 0x07;

/// What to do with one input byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The byte is part of the normalised view.
    Keep,
    /// The byte is noise (whitespace or part of an escape sequence).
    Drop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum State {
    #[default]
    Ground,
    /// After `ESC`.
    Esc,
    /// After `ESC` followed by intermediate bytes (0x20..=0x2F).
    EscIntermediate,
    /// Inside `ESC [ ...`, with the number of bytes seen.
    Csi(u16),
    /// Inside a string sequence (`ESC ]`, `ESC P`, ...), with the number of bytes seen.
    Str(u16),
    /// Saw `ESC` inside a string sequence (possible `ESC \` terminator).
    StrEsc(u16),
}

/// Streaming ANSI-escape and whitespace stripper. See the module documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Normalizer {
    state: State,
}

/// Is `b` ASCII whitespace (the bytes removed from the normalised view)?
#[inline]
pub fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

impl Normalizer {
    /// A normaliser in its ground state.
    pub fn new() -> Normalizer {
        Normalizer::default()
    }

    /// True when the machine is in its ground state (no escape sequence open).
    #[inline]
    pub fn is_ground(&self) -> bool {
        self.state == State::Ground
    }

    /// Classifies the next byte.
    #[inline]
    pub fn step(&mut self, b: u8) -> Step {
        match self.state {
            State::Ground => self.ground(b),
            State::Esc => match b {
                b'[' => {
                    self.state = State::Csi(0);
                    Step::Drop
                }
                b']' | b'P' | b'X' | b'^' | b'_' => {
                    self.state = State::Str(0);
                    Step::Drop
                }
                0x20..=0x2f => {
                    self.state = State::EscIntermediate;
                    Step::Drop
                }
                0x30..=0x7e => {
                    self.state = State::Ground;
                    Step::Drop
                }
                _ => {
                    self.state = State::Ground;
                    self.ground(b)
                }
            },
            State::EscIntermediate => match b {
                0x20..=0x2f => Step::Drop,
                0x30..=0x7e => {
                    self.state = State::Ground;
                    Step::Drop
                }
                _ => {
                    self.state = State::Ground;
                    self.ground(b)
                }
            },
            State::Csi(n) => match b {
                0x20..=0x3f if n < MAX_CSI_LEN => {
                    self.state = State::Csi(n + 1);
                    Step::Drop
                }
                0x40..=0x7e => {
                    self.state = State::Ground;
                    Step::Drop
                }
                _ => {
                    self.state = State::Ground;
                    self.ground(b)
                }
            },
            State::Str(n) => match b {
                BEL => {
                    self.state = State::Ground;
                    Step::Drop
                }
                ESC => {
                    self.state = State::StrEsc(n);
                    Step::Drop
                }
                _ if n < MAX_STRING_LEN => {
                    self.state = State::Str(n + 1);
                    Step::Drop
                }
                _ => {
                    self.state = State::Ground;
                    self.ground(b)
                }
            },
            State::StrEsc(n) => {
                if b == b'\\' {
                    self.state = State::Ground;
                    Step::Drop
                } else {
                    // Not a string terminator: the ESC started a new sequence.
                    let _ = n;
                    self.state = State::Esc;
                    self.step(b)
                }
            }
        }
    }

    #[inline]
    fn ground(&mut self, b: u8) -> Step {
        if b == ESC {
            self.state = State::Esc;
            Step::Drop
        } else if is_space(b) {
            Step::Drop
        } else {
            Step::Keep
        }
    }
}

/// Normalises a whole byte string (used for patterns).
pub fn normalize(bytes: &[u8]) -> Vec<u8> {
    let mut n = Normalizer::new();
    bytes
        .iter()
        .copied()
        .filter(|&b| n.step(b) == Step::Keep)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_whitespace() {
        assert_eq!(normalize(b"67 68 73\n5f 6f\r\n"), b"6768735f6f");
    }

    #[test]
    fn strips_csi_and_osc() {
        assert_eq!(normalize(b"ab\x1b[31;1mcd\x1b[0mef"), b"abcdef");
        assert_eq!(normalize(b"ab\x1b]0;title\x07cd"), b"abcd");
        assert_eq!(normalize(b"ab\x1b]8;;http://x\x1b\\cd"), b"abcd");
        assert_eq!(normalize(b"ab\x1b(Bcd"), b"abcd");
        assert_eq!(normalize(b"ab\x1b7cd"), b"abcd");
    }

    #[test]
    fn broken_sequences_keep_following_bytes() {
        // CSI interrupted by a control byte: the byte after is treated normally.
        assert_eq!(normalize(b"\x1b[12\x01xy"), b"\x01xy");
        // Runaway CSI is cut off.
        let mut long = b"\x1b[".to_vec();
        long.extend(std::iter::repeat_n(b'1', 100));
        let n = normalize(&long);
        assert!(n.len() < 100 && !n.is_empty());
    }

    #[test]
    fn chunking_is_irrelevant() {
        let input = b"a\x1b[3";
        let mut n = Normalizer::new();
        let kept: Vec<u8> = input
            .iter()
            .copied()
            .filter(|&b| n.step(b) == Step::Keep)
            .collect();
        assert_eq!(kept, b"a");
        assert!(!n.is_ground());
        assert_eq!(n.step(b'1'), Step::Drop);
        assert_eq!(n.step(b'm'), Step::Drop);
        assert!(n.is_ground());
    }
}
