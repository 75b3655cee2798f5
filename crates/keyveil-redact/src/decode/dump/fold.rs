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

/// The ASCII digit or space `cp` (not ASCII) reads as in a list, if any.
fn fold_char(cp: u32) -> Option<u8> {
    if (0x3400..0xA000).contains(&cp) || (0xAC00..0xD7B0).contains(&cp) {
        // CJK ideographs and Hangul syllables, most non-ASCII text: neither.
        return None;
    }
    // The last zero at or below `cp` (the table is sorted).
    let k = ZEROS.partition_point(|&z| z <= cp);
    if let Some(z) = k.checked_sub(1).and_then(|k| ZEROS.get(k))
        && cp - z < 10
    {
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

/// Bytes that translate to themselves in [`Fold::Ground`]: ASCII but `&`, `%` and `\`.
#[allow(clippy::indexing_slicing)]
static SAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 128 {
        t[i] = !matches!(i as u8, b'&' | b'%' | b'\\');
        i += 1;
    }
    t
};

/// How many bytes at the start of `rest` translate to themselves in [`Fold::Ground`]: eight
/// at a time while a word holds no byte above 0x7F and no `&`, `%` or `\\`.
fn same_run(rest: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x80 * ONES;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let mut k = 0;
    while let Some(w) = rest.get(k..k + 8) {
        let w = u64::from_le_bytes(w.try_into().unwrap_or([0xff; 8]));
        if (w & HIGH) | zero(w ^ (0x26 * ONES)) | zero(w ^ (0x25 * ONES)) | zero(w ^ (0x5c * ONES))
            != 0
        {
            break;
        }
        k += 8;
    }
    while rest
        .get(k)
        .is_some_and(|&b| SAME.get(usize::from(b)).copied().unwrap_or(false))
    {
        k += 1;
    }
    k
}

impl Fold {
    /// Whether the chunk after this state needs no translation if it holds no trigger.
    pub(super) fn idle(self) -> bool {
        self == Fold::Ground
    }

    /// Appends the translation of `chunk` (`ascii`: all ASCII) to `out`, as [`Fold::step`] of
    /// each byte would: the chunk is copied, then only the bytes that change are rewritten,
    /// found with `memchr3` in an ASCII chunk and eight bytes at a time in another, where a
    /// whole character is translated at once.
    pub(super) fn fold_into(&mut self, chunk: &[u8], ascii: bool, out: &mut Vec<u8>) {
        let from = out.len();
        out.extend_from_slice(chunk);
        let o = out.get_mut(from..).unwrap_or_default();
        let n = o.len();
        let mut i = 0;
        while i < n {
            if *self == Fold::Ground {
                i += if ascii {
                    memchr::memchr3(b'&', b'%', b'\\', o.get(i..).unwrap_or_default())
                        .unwrap_or(n - i)
                } else {
                    same_run(o.get(i..).unwrap_or_default())
                };
                if i >= n {
                    break;
                }
                if !ascii && let Some(k) = self.whole_char(o.get_mut(i..).unwrap_or_default()) {
                    i += k;
                    continue;
                }
            }
            if let Some(b) = o.get_mut(i) {
                *b = self.step(*b);
            }
            i += 1;
        }
    }

    /// Translates the whole UTF-8 character at the start of `rest` in place, as byte by byte;
    /// its length, if `rest` holds all of it.
    fn whole_char(&mut self, rest: &mut [u8]) -> Option<usize> {
        let (&b, tail) = rest.split_first()?;
        let (n, bits) = match b {
            0xC2..=0xDF => (2, b & 0x1F),
            0xE0..=0xEF => (3, b & 0x0F),
            0xF0..=0xF4 => (4, b & 0x07),
            _ => return None,
        };
        let more = tail.get(..n - 1)?;
        if more.iter().any(|&c| c & 0xC0 != 0x80) {
            return None;
        }
        let cp = more
            .iter()
            .fold(u32::from(bits), |cp, &c| (cp << 6) | u32::from(c & 0x3F));
        let last = fold_char(cp).unwrap_or(*more.last()?);
        let seq = rest.get_mut(..n)?;
        seq.fill(GLUE);
        *seq.last_mut()? = last;
        Some(n)
    }

    /// Translates `b`, the next byte.
    #[inline]
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
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

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

    /// [`Fold::fold_into`] (whole runs and characters) equals [`Fold::step`] of each byte, for
    /// every split of a text of escapes, other digits, broken characters and plain bytes.
    #[test]
    fn folding_a_chunk_equals_folding_each_byte() {
        let text = "a ０６５,٠٦٥&#59;\\x3b%2C\\u{3b}é合\u{1D7CE}x"
            .as_bytes()
            .to_vec();
        let mut broken = text.clone();
        broken.extend_from_slice(b"\xef\xbc 1 \xe0\xa5 \xf0\x9d\x9f 2 \xc3");
        for input in [text, broken] {
            let mut f = Fold::default();
            let want: Vec<u8> = input.iter().map(|&b| f.step(b)).collect();
            for split in 0..=input.len() {
                let mut f = Fold::default();
                let mut got = Vec::new();
                for part in [&input[..split], &input[split..]] {
                    f.fold_into(part, part.is_ascii(), &mut got);
                }
                assert_eq!(got, want, "split at {split}");
            }
        }
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
