//! The decoding pass against the agent's own encodings (issue 15): a value written one
//! character at a time, each character in a randomly chosen per-character form (numeric
//! references with any zero padding, `%XX`, `%uXXXX`, `%25XX`, `\xHH`, `\x{..}`, `\u`, `\U`,
//! `\u{..}`, `\N{..}`, CSS, HTML named references, fullwidth and mathematical look-alikes,
//! plain characters followed by zero-width or combining characters, plain characters), cut
//! into random writes with random pauses (`RedactStream::flush`) between them.
//!
//! Asserted: without pauses, streaming equals one-shot and no run of
//! [`FLUSH_SHOWN_MAX`] + 1 encoded characters survives; with pauses, no such run survives
//! either (a pause shows at most [`FLUSH_SHOWN_MAX`] characters of a possible value). Values
//! are generated, never literals.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::{contains, stream_in};
use keyveil_redact::{FLUSH_SHOWN_MAX, Redactor};
use proptest::prelude::*;

/// Lower-case letters, digits and punctuation that has an HTML name; no `&`, `%`, `\`
/// (escape starts), and nothing that occurs in a marker (`[REDACTED:?]`).
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789()._,!@*+=/";

/// Number of per-character forms [`encode`] knows.
const FORMS: usize = 24;

/// The HTML name of an ASCII punctuation character, if it has one.
fn html_name(c: u8) -> Option<&'static str> {
    Some(match c {
        b'(' => "lpar",
        b')' => "rpar",
        b'.' => "period",
        b'_' => "lowbar",
        b',' => "comma",
        b'!' => "excl",
        b'@' => "commat",
        b'*' => "ast",
        b'+' => "plus",
        b'=' => "equals",
        b'/' => "sol",
        _ => return None,
    })
}

/// The Unicode name of a letter or digit (`\N{...}`).
fn unicode_name(c: u8) -> Option<String> {
    const DIGITS: [&str; 10] = [
        "ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE",
    ];
    if c.is_ascii_digit() {
        Some(format!("DIGIT {}", DIGITS[usize::from(c - b'0')]))
    } else if c.is_ascii_lowercase() {
        Some(format!(
            "LATIN SMALL LETTER {}",
            c.to_ascii_uppercase() as char
        ))
    } else {
        None
    }
}

/// Character `c` in form `k` (any `k`: forms that do not apply to `c` fall back to a decimal
/// reference).
fn encode(c: u8, k: usize, pad: usize) -> String {
    let ch = c as char;
    let u = u32::from(c);
    let zeros = "0".repeat(pad);
    match k % FORMS {
        0 => ch.to_string(),
        1 => format!("&#{zeros}{u};"),
        2 => format!("&#x{zeros}{u:x};"),
        3 => format!("&#X{zeros}{u:X};"),
        4 => format!("%{u:02X}"),
        5 => format!("%{u:02x}"),
        6 => format!("%u{u:04X}"),
        7 => format!("%25{u:02X}"),
        8 => format!("\\x{u:02x}"),
        9 => format!("\\x{{{zeros}{u:x}}}"),
        10 => format!("\\u{u:04x}"),
        11 => format!("\\U{u:08X}"),
        12 => format!("\\u{{{zeros}{u:x}}}"),
        13 => format!("\\{u:x} "),
        14 => format!("\\{u:06x}"),
        15 => format!("{ch}\u{200b}"),
        16 => format!("{ch}\u{200d}"),
        17 => format!("{ch}\u{00ad}"),
        18 => format!("{ch}\u{0335}"),
        19 => format!("\u{feff}{ch}"),
        20 => char::from_u32(u + 0xFEE0).unwrap().to_string(),
        21 if c.is_ascii_lowercase() => char::from_u32(0x1D41A + u - 97).unwrap().to_string(),
        21 if c.is_ascii_digit() => char::from_u32(0x1D7CE + u - 48).unwrap().to_string(),
        22 if html_name(c).is_some() => format!("&{};", html_name(c).unwrap()),
        23 if unicode_name(c).is_some() => format!("\\N{{{}}}", unicode_name(c).unwrap()),
        _ => format!("&#{u};"),
    }
}

/// The value's characters encoded: the first one never plain (a plain start longer than the
/// decoding pass's look-back is a limit of its own, `docs/redaction.md` §5).
fn parts(v: &[u8], forms: &[usize], pads: &[usize]) -> Vec<String> {
    v.iter()
        .enumerate()
        .map(|(i, &c)| {
            let k = forms[i % forms.len()];
            let k = if i == 0 && k.is_multiple_of(FORMS) {
                1
            } else {
                k
            };
            encode(c, k, pads[i % pads.len()])
        })
        .collect()
}

/// The first run of `n` consecutive encoded characters that `out` still shows.
fn shown_run(out: &[u8], parts: &[String], n: usize) -> Option<String> {
    parts
        .windows(n)
        .map(|w| w.concat())
        .find(|w| contains(out, w.as_bytes()))
}

/// `input` in writes of the sizes in `sizes` (cycled) with a pause after the writes `pauses`
/// marks (cycled).
fn paused(r: &Redactor, input: &[u8], sizes: &[usize], pauses: &[bool]) -> Vec<u8> {
    let mut s = r.stream();
    let mut out = Vec::new();
    let mut rest = input;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        s.push(&rest[..n], &mut out);
        if pauses[i % pauses.len()] {
            s.flush(&mut out);
        }
        rest = &rest[n..];
        i += 1;
    }
    s.finish(&mut out);
    out
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(proptest::sample::select(ALPHABET), 12..40)
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(128)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn per_character_forms_with_pauses_never_show_a_run(
        v in value(),
        other in value(),
        forms in proptest::collection::vec(0usize..FORMS, 1..40),
        pads in proptest::collection::vec(prop_oneof![4 => Just(0usize), 1 => 0usize..40], 1..8),
        sizes in proptest::collection::vec(prop_oneof![1 => Just(1usize), 2 => 1usize..24, 1 => 24usize..200], 1..12),
        pauses in proptest::collection::vec(any::<bool>(), 1..12),
    ) {
        let r = Redactor::new([("TOK", v.clone()), ("OTHER", other)]);
        let parts = parts(&v, &forms, &pads);
        let mut input = b"<< ".to_vec();
        input.extend(parts.concat().into_bytes());
        input.extend_from_slice(b" >>\n");
        let n = usize::try_from(FLUSH_SHOWN_MAX).unwrap() + 1;

        let (one, markers) = r.redact(&input);
        prop_assert!(markers >= 1, "{}", String::from_utf8_lossy(&one));
        let run = shown_run(&one, &parts, n);
        prop_assert!(run.is_none(), "one-shot shows {:?}: {}", run, String::from_utf8_lossy(&one));
        let (streamed, _) = stream_in(&r, &input, &sizes);
        prop_assert_eq!(&streamed, &one);

        let out = paused(&r, &input, &sizes, &pauses);
        let run = shown_run(&out, &parts, n);
        prop_assert!(run.is_none(), "paused shows {:?}: {}", run, String::from_utf8_lossy(&out));
        prop_assert!(out.starts_with(b"<< ") && out.ends_with(b">>\n"), "{}", String::from_utf8_lossy(&out));
    }

    /// Ordinary text with escapes in it (no value) is let out unchanged at pauses. (Its
    /// letters are upper case, which the values never hold: text that decodes to the first
    /// characters of a value is masked at a pause by design.)
    #[test]
    fn ordinary_escapes_at_pauses_are_kept(
        v in value(),
        words in proptest::collection::vec(proptest::sample::select(vec![
            "ABC%", "DONE", "A &amp; B", "&lt;P&gt;", "\\n", "C:\\TMP", "%20", "&#39;", "ＯＫ",
            "\u{200b}", "CAF\u{c9}", "NA\u{0308}IVE", "\\x41", "\\u{1F600}", "&COPY;", "?A=1&B=2",
        ]), 1..30),
        pauses in proptest::collection::vec(any::<bool>(), 1..12),
    ) {
        let r = Redactor::new([("TOK", v)]);
        let input = words.join(" ");
        let out = paused(&r, input.as_bytes(), &[7, 3, 11, 1, 40], &pauses);
        prop_assert_eq!(String::from_utf8_lossy(&out), input);
    }
}
