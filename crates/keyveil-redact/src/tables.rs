//! Tables of the decoding pass (`decode.rs`): HTML named character references, Unicode
//! character names and the characters that stand for, or hide between, ASCII characters.

/// HTML named character references (WHATWG HTML, "Named character references") whose
/// replacement is ASCII text: every one of them, by its name without `&` and `;`. Sorted by
/// name (byte order) for a binary search.
const NAMED_REFERENCES: [(&[u8], &[u8]); 46] = [
    (b"AMP", b"&"),
    (b"DiacriticalGrave", b"`"),
    (b"GT", b">"),
    (b"Hat", b"^"),
    (b"LT", b"<"),
    (b"NewLine", b"\x0a"),
    (b"QUOT", b"\""),
    (b"Tab", b"\x09"),
    (b"UnderBar", b"_"),
    (b"VerticalLine", b"|"),
    (b"amp", b"&"),
    (b"apos", b"'"),
    (b"ast", b"*"),
    (b"bsol", b"\\"),
    (b"colon", b":"),
    (b"comma", b","),
    (b"commat", b"@"),
    (b"dollar", b"$"),
    (b"equals", b"="),
    (b"excl", b"!"),
    (b"fjlig", b"fj"),
    (b"grave", b"`"),
    (b"gt", b">"),
    (b"lbrace", b"{"),
    (b"lbrack", b"["),
    (b"lcub", b"{"),
    (b"lowbar", b"_"),
    (b"lpar", b"("),
    (b"lsqb", b"["),
    (b"lt", b"<"),
    (b"midast", b"*"),
    (b"num", b"#"),
    (b"percnt", b"%"),
    (b"period", b"."),
    (b"plus", b"+"),
    (b"quest", b"?"),
    (b"quot", b"\""),
    (b"rbrace", b"}"),
    (b"rbrack", b"]"),
    (b"rcub", b"}"),
    (b"rpar", b")"),
    (b"rsqb", b"]"),
    (b"semi", b";"),
    (b"sol", b"/"),
    (b"verbar", b"|"),
    (b"vert", b"|"),
];

/// Named references a browser also reads without the `;` (the legacy ones with ASCII
/// replacements).
const LEGACY_NO_SEMICOLON: [&[u8]; 8] =
    [b"AMP", b"GT", b"LT", b"QUOT", b"amp", b"gt", b"lt", b"quot"];

/// The ASCII text a named reference `&name;` stands for.
pub(crate) fn named_reference(name: &[u8]) -> Option<&'static [u8]> {
    NAMED_REFERENCES
        .binary_search_by(|(n, _)| n.cmp(&name))
        .ok()
        .and_then(|i| NAMED_REFERENCES.get(i))
        .map(|(_, v)| *v)
}

/// Whether `&name` (no `;`) is read as a reference.
pub(crate) fn legacy_reference(name: &[u8]) -> bool {
    LEGACY_NO_SEMICOLON.contains(&name)
}

/// Unicode names of the printable ASCII characters (`\N{...}` in Python, Perl, Raku),
/// sorted by name.
const ASCII_NAMES: [(&[u8], u8); 95] = [
    (b"AMPERSAND", 0x26),
    (b"APOSTROPHE", 0x27),
    (b"ASTERISK", 0x2a),
    (b"CIRCUMFLEX ACCENT", 0x5e),
    (b"COLON", 0x3a),
    (b"COMMA", 0x2c),
    (b"COMMERCIAL AT", 0x40),
    (b"DIGIT EIGHT", 0x38),
    (b"DIGIT FIVE", 0x35),
    (b"DIGIT FOUR", 0x34),
    (b"DIGIT NINE", 0x39),
    (b"DIGIT ONE", 0x31),
    (b"DIGIT SEVEN", 0x37),
    (b"DIGIT SIX", 0x36),
    (b"DIGIT THREE", 0x33),
    (b"DIGIT TWO", 0x32),
    (b"DIGIT ZERO", 0x30),
    (b"DOLLAR SIGN", 0x24),
    (b"EQUALS SIGN", 0x3d),
    (b"EXCLAMATION MARK", 0x21),
    (b"FULL STOP", 0x2e),
    (b"GRAVE ACCENT", 0x60),
    (b"GREATER-THAN SIGN", 0x3e),
    (b"HYPHEN-MINUS", 0x2d),
    (b"LATIN CAPITAL LETTER A", 0x41),
    (b"LATIN CAPITAL LETTER B", 0x42),
    (b"LATIN CAPITAL LETTER C", 0x43),
    (b"LATIN CAPITAL LETTER D", 0x44),
    (b"LATIN CAPITAL LETTER E", 0x45),
    (b"LATIN CAPITAL LETTER F", 0x46),
    (b"LATIN CAPITAL LETTER G", 0x47),
    (b"LATIN CAPITAL LETTER H", 0x48),
    (b"LATIN CAPITAL LETTER I", 0x49),
    (b"LATIN CAPITAL LETTER J", 0x4a),
    (b"LATIN CAPITAL LETTER K", 0x4b),
    (b"LATIN CAPITAL LETTER L", 0x4c),
    (b"LATIN CAPITAL LETTER M", 0x4d),
    (b"LATIN CAPITAL LETTER N", 0x4e),
    (b"LATIN CAPITAL LETTER O", 0x4f),
    (b"LATIN CAPITAL LETTER P", 0x50),
    (b"LATIN CAPITAL LETTER Q", 0x51),
    (b"LATIN CAPITAL LETTER R", 0x52),
    (b"LATIN CAPITAL LETTER S", 0x53),
    (b"LATIN CAPITAL LETTER T", 0x54),
    (b"LATIN CAPITAL LETTER U", 0x55),
    (b"LATIN CAPITAL LETTER V", 0x56),
    (b"LATIN CAPITAL LETTER W", 0x57),
    (b"LATIN CAPITAL LETTER X", 0x58),
    (b"LATIN CAPITAL LETTER Y", 0x59),
    (b"LATIN CAPITAL LETTER Z", 0x5a),
    (b"LATIN SMALL LETTER A", 0x61),
    (b"LATIN SMALL LETTER B", 0x62),
    (b"LATIN SMALL LETTER C", 0x63),
    (b"LATIN SMALL LETTER D", 0x64),
    (b"LATIN SMALL LETTER E", 0x65),
    (b"LATIN SMALL LETTER F", 0x66),
    (b"LATIN SMALL LETTER G", 0x67),
    (b"LATIN SMALL LETTER H", 0x68),
    (b"LATIN SMALL LETTER I", 0x69),
    (b"LATIN SMALL LETTER J", 0x6a),
    (b"LATIN SMALL LETTER K", 0x6b),
    (b"LATIN SMALL LETTER L", 0x6c),
    (b"LATIN SMALL LETTER M", 0x6d),
    (b"LATIN SMALL LETTER N", 0x6e),
    (b"LATIN SMALL LETTER O", 0x6f),
    (b"LATIN SMALL LETTER P", 0x70),
    (b"LATIN SMALL LETTER Q", 0x71),
    (b"LATIN SMALL LETTER R", 0x72),
    (b"LATIN SMALL LETTER S", 0x73),
    (b"LATIN SMALL LETTER T", 0x74),
    (b"LATIN SMALL LETTER U", 0x75),
    (b"LATIN SMALL LETTER V", 0x76),
    (b"LATIN SMALL LETTER W", 0x77),
    (b"LATIN SMALL LETTER X", 0x78),
    (b"LATIN SMALL LETTER Y", 0x79),
    (b"LATIN SMALL LETTER Z", 0x7a),
    (b"LEFT CURLY BRACKET", 0x7b),
    (b"LEFT PARENTHESIS", 0x28),
    (b"LEFT SQUARE BRACKET", 0x5b),
    (b"LESS-THAN SIGN", 0x3c),
    (b"LOW LINE", 0x5f),
    (b"NUMBER SIGN", 0x23),
    (b"PERCENT SIGN", 0x25),
    (b"PLUS SIGN", 0x2b),
    (b"QUESTION MARK", 0x3f),
    (b"QUOTATION MARK", 0x22),
    (b"REVERSE SOLIDUS", 0x5c),
    (b"RIGHT CURLY BRACKET", 0x7d),
    (b"RIGHT PARENTHESIS", 0x29),
    (b"RIGHT SQUARE BRACKET", 0x5d),
    (b"SEMICOLON", 0x3b),
    (b"SOLIDUS", 0x2f),
    (b"SPACE", 0x20),
    (b"TILDE", 0x7e),
    (b"VERTICAL LINE", 0x7c),
];

/// The ASCII character whose Unicode name is `name` (any case, as Python reads `\N{...}`).
pub(crate) fn ascii_by_name(name: &[u8]) -> Option<u8> {
    let mut up = [0u8; 32];
    let n = name.len().min(up.len());
    for (u, &b) in up.iter_mut().zip(name) {
        *u = b.to_ascii_uppercase();
    }
    let up = up.get(..n).unwrap_or_default();
    ASCII_NAMES
        .binary_search_by(|(k, _)| k.cmp(&up))
        .ok()
        .and_then(|i| ASCII_NAMES.get(i))
        .map(|(_, c)| *c)
}

/// The ASCII character a look-alike stands for (NFKC folds each of these to it): fullwidth
/// forms, the ideographic space, the mathematical alphanumeric letters (13 styles) and digits
/// (5 styles), the Letterlike Symbols that fill the math block's holes or fold to one letter,
/// and the Roman numerals of one letter.
pub(crate) fn lookalike(cp: u32) -> Option<u8> {
    let ascii = |x: u32| u8::try_from(x).ok();
    match cp {
        0xFF01..=0xFF5E => ascii(cp - 0xFEE0),
        0x3000 => Some(b' '),
        0x1D400..=0x1D6A3 => {
            let i = (cp - 0x1D400) % 52;
            if i < 26 {
                ascii(u32::from(b'A') + i)
            } else {
                ascii(u32::from(b'a') + i - 26)
            }
        }
        0x1D7CE..=0x1D7FF => ascii(u32::from(b'0') + (cp - 0x1D7CE) % 10),
        // Segmented digits (Symbols for Legacy Computing), the ordinal indicators `ª º` and
        // the long s `ſ`: NFKC folds them to `0`–`9`, `a`, `o`, `s`.
        0x1FBF0..=0x1FBF9 => ascii(u32::from(b'0') + cp - 0x1FBF0),
        0xAA => Some(b'a'),
        0xBA => Some(b'o'),
        0x17F => Some(b's'),
        // Roman numerals of one letter (U+2160–U+217F): NFKC folds them to `I V X L C D M`
        // and `i v x l c d m`.
        0x2160 => Some(b'I'),
        0x2164 => Some(b'V'),
        0x2169 => Some(b'X'),
        0x216C => Some(b'L'),
        0x216D => Some(b'C'),
        0x216E => Some(b'D'),
        0x216F => Some(b'M'),
        0x2170 => Some(b'i'),
        0x2174 => Some(b'v'),
        0x2179 => Some(b'x'),
        0x217C => Some(b'l'),
        0x217D => Some(b'c'),
        0x217E => Some(b'd'),
        0x217F => Some(b'm'),
        _ => LETTERLIKE.iter().find(|(c, _)| *c == cp).map(|(_, a)| *a),
    }
}

/// Letterlike Symbols used in place of the mathematical block's reserved code points, and
/// the others that NFKC folds to one ASCII letter (Kelvin sign, script small l, information
/// source, double-struck italic `D d e i j`).
const LETTERLIKE: [(u32, u8); 32] = [
    (0x212A, b'K'),
    (0x2113, b'l'),
    (0x2139, b'i'),
    (0x2145, b'D'),
    (0x2146, b'd'),
    (0x2147, b'e'),
    (0x2148, b'i'),
    (0x2149, b'j'),
    (0x210E, b'h'),
    (0x212C, b'B'),
    (0x2130, b'E'),
    (0x2131, b'F'),
    (0x210B, b'H'),
    (0x2110, b'I'),
    (0x2112, b'L'),
    (0x2133, b'M'),
    (0x211B, b'R'),
    (0x212F, b'e'),
    (0x210A, b'g'),
    (0x2134, b'o'),
    (0x212D, b'C'),
    (0x210C, b'H'),
    (0x2111, b'I'),
    (0x211C, b'R'),
    (0x2128, b'Z'),
    (0x2102, b'C'),
    (0x210D, b'H'),
    (0x2115, b'N'),
    (0x2119, b'P'),
    (0x211A, b'Q'),
    (0x211D, b'R'),
    (0x2124, b'Z'),
];

/// Characters that show nothing (or only a mark on the character before) and that a printed
/// value may carry between its characters, read past by the decoding pass: every
/// `Default_Ignorable_Code_Point` of the Unicode Character Database (the soft hyphen U+00AD,
/// U+034F, U+061C, the Hangul fillers U+115F, U+1160, U+3164, U+FFA0, U+17B4–U+17B5, the
/// Mongolian free variation selectors and vowel separator U+180B–U+180F, U+200B–U+200F,
/// the bidirectional embeddings U+202A–U+202E, U+2060–U+206F, the variation selectors
/// U+FE00–U+FE0F and U+E0100–U+E01EF, U+FEFF, U+FFF0–U+FFF8, U+1BCA0–U+1BCA3,
/// U+1D173–U+1D17A, the tags U+E0000–U+E0FFF) and the blocks of combining marks (U+0300–U+036F,
/// U+1AB0–U+1AFF, U+1DC0–U+1DFF, U+20D0–U+20FF, U+FE20–U+FE2F), so `a\u{335}` reads as `a`.
pub(crate) fn ignorable(cp: u32) -> bool {
    matches!(
        cp,
        0xAD | 0x300..=0x36F
            | 0x61C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x1AB0..=0x1AFF
            | 0x1DC0..=0x1DFF
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x20D0..=0x20FF
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFE20..=0xFE2F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFF8
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}
