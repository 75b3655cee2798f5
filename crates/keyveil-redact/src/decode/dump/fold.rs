//! The dump reader's view of other digits and of escaped separators: a byte-for-byte
//! translation of a chunk (same length, so offsets are unchanged) in which
//!
//! * a decimal digit of another script (Unicode `Nd`: fullwidth `０`–`９`, Arabic-Indic
//!   `٠`–`٩`, extended Arabic-Indic, Devanagari and the other Indic scripts, Thai, Lao,
//!   Tibetan, Myanmar, Khmer, Mongolian, the mathematical digits U+1D7CE–U+1D7FF, segmented
//!   U+1FBF0–U+1FBF9) becomes its ASCII digit on its last byte, [`GLUE`] on the others;
//! * a space or list punctuation of another script (ideographic space, fullwidth `，` `；` `：`
//!   `｜`, Arabic `،` `؛`, the ideographic comma `、`, every Unicode space) becomes a space on its
//!   last byte, [`GLUE`] on the others; any other non-ASCII character keeps its bytes (none of
//!   which is a byte of a dump's head);
//! * an escape (`&…;` of up to 12 letters, digits and `#`; `%XX`, `%uXXXX`; `\xXX`, `\uXXXX`,
//!   `\UXXXXXXXX`, `\x{…}`, `\u{…}`, `\NNN` octal, `\` and one other byte) becomes spaces,
//!   whatever it stands for: in a list it can only be a separator (`065&#59;075`,
//!   `065\x3b075`); an escaped digit would be a triple encoding.
//!
//! Each byte's translation depends on the bytes before it only (the state below carries over
//! chunks), so streaming equals one-shot. It runs only on chunks that are not all ASCII or hold
//! `&`, `%` or `\` (the decoding pass's triggers), or while an escape or character is open.

/// What the bytes of a multi-byte digit or space before its last become: a byte no tool
/// prints (the ASCII unit separator), which the dump reader counts as a digit in a head's run
/// and otherwise skips (a token goes on through it).
pub(super) const GLUE: u8 = 0x1f;

/// Code points of the zeros of the decimal digit sets read (each zero and the nine after it).
const ZEROS: &[u32] = &[
    0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66, 0x0CE6, 0x0D66,
    0x0DE6, 0x0E50, 0x0ED0, 0x0F20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90,
    0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10,
    0x104A0, 0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1FBF0,
];

/// The ASCII digit or space `cp` reads as in a list, if any.
fn fold_char(cp: u32) -> Option<u8> {
    if let Some(z) = ZEROS.iter().find(|&&z| cp >= z && cp - z < 10) {
        return u8::try_from(cp - z).ok().map(|d| b'0' + d);
    }
    let sep = matches!(
        cp,
        0xFF0C | 0xFF1B | 0xFF1A | 0xFF5C | 0x3001 | 0x060C | 0x061B | 0xFE50 | 0xFE54
    ) || char::from_u32(cp).is_some_and(char::is_whitespace);
    sep.then_some(b' ')
}

/// Where the translation is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Fold {
    #[default]
    Ground,
    /// `&` and up to `left` more letters, digits or `#` before `;`.
    Amp { left: u8 },
    /// `%`: `u` or the first of two hex digits next.
    Pct,
    /// `\`: `x`, `u`, `U`, an octal digit or any other byte next.
    Bs,
    /// Up to `left` more hex digits (`brace`: inside `{…}`, up to `}`).
    Hex { left: u8, brace: bool },
    /// Up to `left` more octal digits.
    Oct { left: u8 },
    /// Inside a multi-byte character: continuation bytes still `need`ed, its bits so far.
    Utf8 { need: u8, cp: u32 },
}

impl Fold {
    /// Whether the chunk after this state needs no translation if it holds no trigger.
    pub(super) fn idle(self) -> bool {
        self == Fold::Ground
    }

    /// Translates `b`, the next byte.
    pub(super) fn step(&mut self, b: u8) -> u8 {
        match *self {
            Fold::Ground => {}
            Fold::Amp { left } => {
                if b == b';' {
                    *self = Fold::Ground;
                    return b' ';
                }
                if left > 0 && (b.is_ascii_alphanumeric() || b == b'#') {
                    *self = Fold::Amp { left: left - 1 };
                    return b' ';
                }
                *self = Fold::Ground;
            }
            Fold::Pct => {
                if b == b'u' || b == b'U' {
                    *self = Fold::Hex {
                        left: 4,
                        brace: false,
                    };
                    return b' ';
                }
                if b.is_ascii_hexdigit() {
                    *self = Fold::Hex {
                        left: 1,
                        brace: false,
                    };
                    return b' ';
                }
                *self = Fold::Ground;
            }
            Fold::Bs => {
                let hex = |left| Fold::Hex { left, brace: false };
                let next = match b {
                    b'x' => Some(hex(2)),
                    b'u' => Some(hex(4)),
                    b'U' => Some(hex(8)),
                    b'0'..=b'7' => Some(Fold::Oct { left: 2 }),
                    _ if b < 0x80 => Some(Fold::Ground),
                    // A non-ASCII character after `\`: read as itself, below.
                    _ => None,
                };
                *self = next.unwrap_or(Fold::Ground);
                if next.is_some() {
                    return b' ';
                }
            }
            Fold::Hex { left, brace } => {
                if brace {
                    if b == b'}' {
                        *self = Fold::Ground;
                        return b' ';
                    }
                    if left > 0 && (b.is_ascii_hexdigit() || b == b'_') {
                        *self = Fold::Hex {
                            left: left - 1,
                            brace,
                        };
                        return b' ';
                    }
                } else if b == b'{' && matches!(left, 2 | 4) {
                    *self = Fold::Hex {
                        left: 8,
                        brace: true,
                    };
                    return b' ';
                } else if left > 0 && b.is_ascii_hexdigit() {
                    *self = if left == 1 {
                        Fold::Ground
                    } else {
                        Fold::Hex {
                            left: left - 1,
                            brace,
                        }
                    };
                    return b' ';
                }
                *self = Fold::Ground;
            }
            Fold::Oct { left } => {
                if left > 0 && (b'0'..=b'7').contains(&b) {
                    *self = if left == 1 {
                        Fold::Ground
                    } else {
                        Fold::Oct { left: left - 1 }
                    };
                    return b' ';
                }
                *self = Fold::Ground;
            }
            Fold::Utf8 { need, cp } => {
                if b & 0xC0 == 0x80 {
                    let cp = (cp << 6) | u32::from(b & 0x3F);
                    if need > 1 {
                        *self = Fold::Utf8 { need: need - 1, cp };
                        return GLUE;
                    }
                    *self = Fold::Ground;
                    return fold_char(cp).unwrap_or(b);
                }
                // Not a character: the byte starts again.
                *self = Fold::Ground;
            }
        }
        match b {
            b'&' => {
                *self = Fold::Amp { left: 12 };
                b' '
            }
            b'%' => {
                *self = Fold::Pct;
                b' '
            }
            b'\\' => {
                *self = Fold::Bs;
                b' '
            }
            0xC2..=0xDF => {
                *self = Fold::Utf8 {
                    need: 1,
                    cp: u32::from(b & 0x1F),
                };
                GLUE
            }
            0xE0..=0xEF => {
                *self = Fold::Utf8 {
                    need: 2,
                    cp: u32::from(b & 0x0F),
                };
                GLUE
            }
            0xF0..=0xF4 => {
                *self = Fold::Utf8 {
                    need: 3,
                    cp: u32::from(b & 0x07),
                };
                GLUE
            }
            // ASCII, a stray continuation byte, or a byte no UTF-8 holds.
            _ => b,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{Fold, GLUE};

    fn fold(text: &str) -> String {
        let mut f = Fold::default();
        let out: Vec<u8> = text
            .bytes()
            .map(|b| f.step(b))
            .filter(|&b| b != GLUE)
            .collect();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn digits_spaces_and_escapes_fold_to_a_list() {
        assert_eq!(fold("０６５　０７５"), "065 075");
        assert_eq!(fold("٠٦٥،٠٧٥"), "065 075");
        assert_eq!(fold("०६५ ०७५"), "065 075");
        assert_eq!(fold("𝟎𝟔𝟓,𝟘𝟟𝟝"), "065,075");
        assert_eq!(fold("065&#59;075&semi;084"), "065     075      084");
        assert_eq!(fold("065\\x3b075\\u002c084%2C101\\073102\\ 103"), {
            "065    075      084   101    102  103"
        });
        assert_eq!(fold("065\\x{3b}075"), "065      075");
        // Other characters keep their last byte (no digit, no separator, no byte of a head).
        assert_eq!(fold("aé1"), "a\u{FFFD}1");
    }
}
