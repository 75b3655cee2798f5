//! Red team 15 (decoding pass, pause rule): a value printed one character at a time in
//! spellings the claimed syntaxes accept, with separators the pass should read past, and with
//! writes and pauses arranged to reset the pause rule's count. A form "leaks" when the output
//! still holds 4 consecutive encoded characters of the value (more than a pause may show).
//! Values are generated, never literals.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::{contains, stream_bytewise};
use keyveil_redact::Redactor;

/// Letters and digits that are not hex digits' look-alikes of anything special.
const ALNUM: &[u8] = b"ABCDEFGHIJLMNOPQRSTUVWXYZabcdefghijklnopqrstuvwxyz0123456789";

fn value(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALNUM[(x % ALNUM.len() as u64) as usize]
        })
        .collect()
}

/// The first run of 4 consecutive encoded characters still in `out`.
fn leaked(out: &[u8], parts: &[String]) -> Option<String> {
    parts
        .windows(4)
        .map(|w| w.concat())
        .find(|w| contains(out, w.as_bytes()))
}

/// Leaks of `parts` (printed after `prefix`) one-shot, byte by byte, and one part per write
/// with a pause after each.
fn leaks_of(r: &Redactor, prefix: &str, parts: &[String]) -> Vec<String> {
    let mut input = prefix.as_bytes().to_vec();
    input.extend(parts.concat().into_bytes());
    input.extend_from_slice(b"\n");
    let one = r.redact(&input).0;
    let bytewise = stream_bytewise(r, &input);
    let mut s = r.stream();
    let mut paused = Vec::new();
    s.push(prefix.as_bytes(), &mut paused);
    for p in parts {
        s.push(p.as_bytes(), &mut paused);
        s.flush(&mut paused);
    }
    s.push(b"\n", &mut paused);
    s.finish(&mut paused);
    [
        ("one-shot", one),
        ("bytewise", bytewise),
        ("paused", paused),
    ]
    .into_iter()
    .filter_map(|(mode, out)| {
        leaked(&out, parts).map(|w| format!("{mode}: {w} in {}", String::from_utf8_lossy(&out)))
    })
    .collect()
}

fn leaks(f: &dyn Fn(usize, u8) -> String) -> Vec<String> {
    let v = value(0x5eed_1515_abcd_0001, 32);
    let r = Redactor::new([("TOK", &v)]);
    let parts: Vec<String> = v.iter().enumerate().map(|(i, &c)| f(i, c)).collect();
    leaks_of(&r, "value: ", &parts)
}

macro_rules! held {
    ($name:ident, $f:expr) => {
        #[test]
        fn $name() {
            let l = leaks(&$f);
            assert!(l.is_empty(), "{}", l.join("\n"));
        }
    };
    ($name:ident, $f:expr, $why:literal) => {
        #[test]
        #[ignore = $why]
        fn $name() {
            let l = leaks(&$f);
            assert!(l.is_empty(), "{}", l.join("\n"));
        }
    };
}

fn hexdig(c: u8) -> bool {
    c.is_ascii_hexdigit()
}

// Spellings.
held!(hex_reference_upper_x_mixed_case, |i, c| if i % 2 == 0 {
    format!("&#X{c:X};")
} else {
    format!("&#x{c:x}")
});
held!(python_big_u_mixed_case, |i, c| if i % 2 == 0 {
    format!("\\U{c:08X}")
} else {
    format!("\\U{c:08x}")
});
held!(percent_mixed_case_and_u, |i, c| match i % 3 {
    0 => format!("%{c:02x}"),
    1 => format!("%{c:02X}"),
    _ => format!("%U{c:04x}"),
});
held!(percent_encoded_three_times, |_, c| format!("%2525{c:02x}"));
held!(html_json_url_alternating, |i, c| match i % 3 {
    0 => format!("&#{c}"),
    1 => format!("%{c:02X}"),
    _ => format!("\\u{c:04X}"),
});
/// `sed 's/[^0-9a-fA-F]/\\&/g'`: every character that is not a hex digit after a backslash
/// (CSS, JavaScript, Perl, Ruby and shells read `\k` as `k`), of a value without `x` (below).
#[test]
fn identity_escapes() {
    let v: Vec<u8> = value(0x5eed_1515_abcd_0002, 32)
        .into_iter()
        .map(|c| if c == b'x' { b'y' } else { c })
        .collect();
    let r = Redactor::new([("TOK", &v)]);
    let parts: Vec<String> = v
        .iter()
        .map(|&c| {
            if hexdig(c) {
                (c as char).to_string()
            } else {
                format!("\\{}", c as char)
            }
        })
        .collect();
    let l = leaks_of(&r, "value: ", &parts);
    assert!(l.is_empty(), "{}", l.join("\n"));
}

/// `\x` before a hex digit is C's `\xHH` for the pass; CSS reads `\x1` as `x1`. The pass
/// keeps one decoded view; the value's collapsed forms are atoms of their own
/// (`variants::identity_escape_collapses`).
#[test]
fn identity_escape_x_before_hex_digit() {
    let mut v = value(0x5eed_1515_abcd_0003, 32);
    v[10] = b'x';
    v[11] = b'1';
    let r = Redactor::new([("TOK", &v)]);
    let parts: Vec<String> = v
        .iter()
        .map(|&c| {
            if hexdig(c) {
                (c as char).to_string()
            } else {
                format!("\\{}", c as char)
            }
        })
        .collect();
    let l = leaks_of(&r, "value: ", &parts);
    assert!(l.is_empty(), "{}", l.join("\n"));
}
held!(perl_octal_braced, |_, c| format!("\\o{{{c:o}}}"));
held!(line_continuations, |_, c| format!("{}\\\n", c as char));
held!(rust_braced_underscore, |_, c| format!(
    "\\u{{{:x}_{:x}}}",
    c >> 4,
    c & 15
));
// Invisible characters.
fn between(cp: char) -> impl Fn(usize, u8) -> String {
    move |_, c| format!("{}{cp}", c as char)
}
held!(lri_isolate, between('\u{2066}'));
held!(bidi_embedding, between('\u{202A}'));
held!(tag_space, between('\u{E0020}'));
held!(hangul_filler, between('\u{3164}'));
held!(hangul_choseong_filler, between('\u{115F}'));
held!(mongolian_fvs, between('\u{180B}'));
held!(arabic_letter_mark, between('\u{061C}'));
held!(halfwidth_hangul_filler, between('\u{FFA0}'));
held!(variation_selector_supplement, between('\u{E0100}'));
held!(combining_half_marks, between('\u{FE20}'));
held!(combining_marks_supplement, between('\u{1AB0}'));
held!(combining_marks_for_symbols, between('\u{20D0}'));
held!(khmer_inherent, between('\u{17B4}'));
held!(musical_invisible, between('\u{1D173}'));

/// A pass-phrase (words and spaces) with its letters escaped and its spaces printed as they
/// are: plain characters among the escapes.
#[test]
fn pass_phrase_letters_escaped_spaces_plain() {
    let words: Vec<Vec<u8>> = (0..4)
        .map(|k| value(0x5eed_1515_abcd_0010 + k, 6).to_ascii_lowercase())
        .collect();
    let v = words.join(&b' ');
    let r = Redactor::new([("PHRASE", &v)]);
    for esc in [
        &(|c: u8| format!("&#{c};")) as &dyn Fn(u8) -> String,
        &|c: u8| char::from_u32(u32::from(c) + 0xFEE0).unwrap().to_string(),
    ] {
        let parts: Vec<String> = v
            .iter()
            .map(|&c| if c == b' ' { " ".to_string() } else { esc(c) })
            .collect();
        let l = leaks_of(&r, "phrase: ", &parts);
        assert!(l.is_empty(), "{}", l.join("\n"));
    }
}

/// The plain start of a value (fewer than 12 bytes: no fragment) spread over more than the
/// look-back's 32 raw bytes by whitespace, then the rest escaped: whitespace is noise
/// everywhere else (the pass drops it between escapes).
#[test]
fn plain_start_spread_by_whitespace() {
    let v = value(0x5eed_1515_abcd_0004, 32);
    let r = Redactor::new([("TOK", &v)]);
    for gap in [
        " ",
        "  ",
        "   ",
        "\n",
        "\t\t\t",
        "\r\n\r\n",
        &" ".repeat(20),
        &" ".repeat(40),
        &" ".repeat(62),
    ] {
        let parts: Vec<String> = v
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                if i < 11 {
                    format!("{}{gap}", c as char)
                } else {
                    format!("&#{c};")
                }
            })
            .collect();
        let mut input = b"value: ".to_vec();
        input.extend(parts.concat().into_bytes());
        input.push(b'\n');
        let out = r.redact(&input).0;
        for size in [1, 2, 3, 5, 7, 13, 31, 32, 33, 64, 100] {
            let (streamed, _) = common::stream_in(&r, &input, &[size]);
            assert_eq!(streamed, out, "gap {gap:?}, chunks of {size}");
        }
        let shown: Vec<u8> = out
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let first: Vec<u8> = v[..11].to_vec();
        assert!(
            !contains(&shown, &first) || !contains(&out, parts[11..15].concat().as_bytes()),
            "gap {gap:?}: {}",
            String::from_utf8_lossy(&out)
        );
    }
}

/// `pieces` written one per push with a pause after each.
fn paused(r: &Redactor, pieces: &[String]) -> Vec<u8> {
    let mut s = r.stream();
    let mut out = Vec::new();
    for p in pieces {
        s.push(p.as_bytes(), &mut out);
        s.flush(&mut out);
    }
    s.finish(&mut out);
    out
}

/// Every escape cut at every byte, a pause after each byte (so the count is kept across
/// open escapes), with newlines, tabs and carriage returns (whitespace, the view drops it)
/// between the characters.
#[test]
fn pause_after_every_byte_of_every_escape() {
    let v = value(0x5eed_1515_abcd_0005, 32);
    let r = Redactor::new([("TOK", &v)]);
    let forms: [&dyn Fn(u8) -> String; 6] = [
        &|c| format!("&#000{c};"),
        &|c| format!("&#X{c:X};"),
        &|c| format!("%25{c:02x}"),
        &|c| format!("\\U{c:08x}"),
        &|c| format!("\\N{{U+{c:X}}}"),
        &|c| format!("\\u{{{:x}_{:x}}}", c >> 4, c & 15),
    ];
    for (k, f) in forms.iter().enumerate() {
        let parts: Vec<String> = v.iter().map(|&c| f(c)).collect();
        for sep in ["", "\r", "\n", "\t"] {
            let mut pieces = vec!["v: ".to_string()];
            for p in &parts {
                pieces.extend(p.chars().map(String::from));
                if !sep.is_empty() {
                    pieces.push(sep.to_string());
                }
            }
            let out = paused(&r, &pieces);
            let joined: Vec<u8> = out
                .iter()
                .copied()
                .filter(|b| !b"\r\n\t".contains(b))
                .collect();
            assert!(
                leaked(&joined, &parts).is_none(),
                "form {k} sep {sep:?}: {}",
                String::from_utf8_lossy(&out)
            );
        }
    }
}

/// Two values of the grant that share their first 10 characters: the count follows the
/// longest run that begins either, whichever continues.
#[test]
fn pause_two_values_sharing_a_prefix() {
    let a = value(0x5eed_1515_abcd_0006, 32);
    let mut b = a[..10].to_vec();
    b.extend(value(0x5eed_1515_abcd_0007, 22));
    let r = Redactor::new([("A", &a), ("B", &b)]);
    for v in [&a, &b] {
        let parts: Vec<String> = v.iter().map(|&c| format!("&#{c};")).collect();
        let mut pieces = vec!["v: ".to_string()];
        pieces.extend(parts.iter().cloned());
        let out = paused(&r, &pieces);
        assert!(
            leaked(&out, &parts).is_none(),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
}

/// Letterlike symbols and number forms that NFKC folds to ASCII letters, outside the
/// mathematical block's holes: Kelvin sign (canonically `K`), script small l, double-struck
/// italic d e i j, Roman numerals.
#[test]
fn letterlike_and_roman_numeral_look_alikes() {
    let table: &[(u8, char)] = &[
        (b'K', '\u{212A}'),
        (b'l', '\u{2113}'),
        (b'i', '\u{2139}'),
        (b'D', '\u{2145}'),
        (b'd', '\u{2146}'),
        (b'e', '\u{2147}'),
        (b'j', '\u{2149}'),
        (b'I', '\u{2160}'),
        (b'V', '\u{2164}'),
        (b'X', '\u{2169}'),
        (b'L', '\u{216C}'),
        (b'C', '\u{216D}'),
        (b'M', '\u{216F}'),
        (b'v', '\u{2174}'),
        (b'x', '\u{2179}'),
        (b'c', '\u{217D}'),
        (b'm', '\u{217F}'),
        (b'a', '\u{AA}'),
        (b'o', '\u{BA}'),
        (b's', '\u{17F}'),
        (b'7', '\u{1FBF7}'),
    ];
    let mut v = value(0x5eed_1515_abcd_0008, 32);
    for (k, &(c, _)) in table.iter().enumerate() {
        v[k + 4] = c;
    }
    let r = Redactor::new([("TOK", &v)]);
    let parts: Vec<String> = v
        .iter()
        .map(|&c| match table.iter().find(|t| t.0 == c) {
            Some(&(_, l)) => l.to_string(),
            None => char::from_u32(u32::from(c) + 0xFEE0).unwrap().to_string(),
        })
        .collect();
    let l = leaks_of(&r, "value: ", &parts);
    assert!(l.is_empty(), "{}", l.join("\n"));
}

fn b64(data: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::new();
    for g in data.chunks(3) {
        let n = g.iter().fold(0u32, |a, &b| (a << 8) | u32::from(b)) << (8 * (3 - g.len()));
        for k in 0..=g.len() {
            out.push(alphabet[((n >> (18 - 6 * k)) & 63) as usize] as char);
        }
    }
    out
}

/// 16 encoded characters of `f` left in the redacted `x f` (12 value bytes of hex are 24
/// characters, of base64 16).
fn shifted_leak(r: &Redactor, f: &str) -> Option<String> {
    let out = r.redact(format!("x {f}\n").as_bytes()).0;
    f.as_bytes()
        .windows(16)
        .find(|w| contains(&out, w))
        .map(|w| {
            format!(
                "{} in {}",
                String::from_utf8_lossy(w),
                String::from_utf8_lossy(&out)
            )
        })
}

/// Lower-case hex of a value without its first bytes (`tail -c +2 | xxd -p`): the hex
/// fragments catch it.
#[test]
fn lower_hex_of_a_value_without_its_first_bytes() {
    let v = value(0x5eed_1515_abcd_0009, 32);
    let r = Redactor::new([("TOK", &v)]);
    for skip in 1..=4 {
        let f: String = v[skip..].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(shifted_leak(&r, &f), None, "skip {skip}");
    }
}

/// Base64 and upper-case hex of a value without its first bytes (`printf %s "${TOK:1}" |
/// base64`): the base64 cores need the atom's first byte; base64 fragments (a window starting
/// a group) and upper-case hex fragments catch a part.
#[test]
fn base64_and_upper_hex_of_a_value_without_its_first_bytes() {
    const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let v = value(0x5eed_1515_abcd_0009, 32);
    let r = Redactor::new([("TOK", &v)]);
    let mut failures = Vec::new();
    for skip in 1..=4 {
        let part = &v[skip..];
        let upper: String = part.iter().map(|b| format!("{b:02X}")).collect();
        for f in [b64(part, STD), upper] {
            if let Some(w) = shifted_leak(&r, &f) {
                failures.push(format!("skip {skip}: {w}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every identity-escape collapse the pass could read, each place chosen independently: `x`
/// before one or two hex digits, `u` before four, `U` before eight (a valid code point), up to
/// four places in one value, escaped or not at each.
#[test]
fn identity_escape_collapses_in_every_combination() {
    // No other place than the four planted (past four, places are not combined).
    let mut v: Vec<u8> = value(0x5eed_1515_abcd_0010, 40)
        .into_iter()
        .map(|c| {
            if matches!(c, b'x' | b'u' | b'U') {
                b'y'
            } else {
                c
            }
        })
        .collect();
    v[3] = b'x';
    v[4] = b'a';
    v[5] = b'7';
    v[12] = b'u';
    v[13..17].copy_from_slice(b"00e9");
    v[22] = b'U';
    v[23..31].copy_from_slice(b"0001F600");
    v[34] = b'x';
    v[35] = b'5';
    v[36] = b'Q';
    let sites = [3usize, 12, 22, 34];
    let r = Redactor::new([("TOK", &v)]);
    let mut failures = Vec::new();
    for mask in 0u32..16 {
        let parts: Vec<String> = v
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let site = sites.iter().position(|&s| s == i);
                let escape = match site {
                    Some(k) => mask & (1 << k) != 0,
                    None => !hexdig(c),
                };
                if escape {
                    format!("\\{}", c as char)
                } else {
                    (c as char).to_string()
                }
            })
            .collect();
        for l in leaks_of(&r, "value: ", &parts) {
            failures.push(format!("mask {mask:04b}: {l}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Base64 of a part of a value behind any prefix (`Basic` of `user:` and the value without its
/// first or last bytes), in both alphabets: one window of the part starts a group.
#[test]
fn base64_of_a_part_behind_a_prefix() {
    const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let v = value(0x5eed_1515_abcd_0011, 36);
    let r = Redactor::new([("TOK", &v)]);
    let mut failures = Vec::new();
    for prefix in [&b""[..], b"u:", b"user:", b"x"] {
        for (from, to) in [(1, 36), (2, 36), (5, 36), (0, 30), (3, 20), (7, 22)] {
            let mut data = prefix.to_vec();
            data.extend_from_slice(&v[from..to]);
            for alphabet in [STD, URL] {
                let f = b64(&data, alphabet);
                if let Some(w) = shifted_leak(&r, &f) {
                    failures.push(format!("{from}..{to}: {w}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// C octal escapes of every byte (`printf '\\%03o'`, `sed -n l`) and `od -An -b`'s octal bytes
/// joined by spaces.
#[test]
fn c_octal_and_od_octal_bytes() {
    let v = value(0x5eed_1515_abcd_0012, 32);
    let r = Redactor::new([("TOK", &v)]);
    let escaped: Vec<String> = v.iter().map(|c| format!("\\{c:03o}")).collect();
    let l = leaks_of(&r, "value: ", &escaped);
    assert!(l.is_empty(), "{}", l.join("\n"));
    let od: Vec<String> = v.iter().map(|c| format!(" {c:03o}")).collect();
    let l = leaks_of(&r, "0000000", &od);
    assert!(l.is_empty(), "{}", l.join("\n"));
}
