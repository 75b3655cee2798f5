//! Property tests: streaming equals one-shot for every split, and planted values never survive.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::{contains, redactor, stream_in};
use keyveil_redact::{MIN_LEN, Redactor, variants};
use proptest::prelude::*;

/// Bytes that exercise the interesting paths: tokens, whitespace, escape sequences, quotes.
const NOISY: &[u8] = b"abcXYZ0129_-+/=%\"'\\ \t\n\r\x1b[;mK:@{}\xc3\xa9\xff\x00";

fn noisy_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(proptest::sample::select(NOISY), 0..max),
        proptest::collection::vec(any::<u8>(), 0..max),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => proptest::collection::vec(
            proptest::sample::select(
                &b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"[..]
            ),
            1..48
        ),
        1 => proptest::collection::vec(0x20u8..0x7f, 1..40),
        1 => proptest::collection::vec(proptest::sample::select(NOISY), 1..24),
        1 => proptest::collection::vec(any::<u8>(), 1..24),
    ]
}

#[derive(Clone, Debug)]
enum Seg {
    Noise(Vec<u8>),
    Value(usize),
    Part(usize, usize, usize),
    Encoded(usize, usize),
    Wrapped(usize, usize, usize),
}

fn seg() -> impl Strategy<Value = Seg> {
    prop_oneof![
        3 => noisy_bytes(24).prop_map(Seg::Noise),
        2 => any::<usize>().prop_map(Seg::Value),
        1 => (any::<usize>(), any::<usize>(), any::<usize>()).prop_map(|(a, b, c)| Seg::Part(a, b, c)),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Seg::Encoded(a, b)),
        1 => (any::<usize>(), any::<usize>(), 1usize..20).prop_map(|(a, b, c)| Seg::Wrapped(a, b, c)),
    ]
}

fn wrap(s: &[u8], every: usize, sep: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, c) in s.chunks(every.max(1)).enumerate() {
        if i > 0 {
            out.extend_from_slice(sep);
        }
        out.extend_from_slice(c);
    }
    out
}

fn build_input(values: &[Vec<u8>], segs: &[Seg]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in segs {
        match s {
            Seg::Noise(b) => out.extend_from_slice(b),
            Seg::Value(i) => out.extend_from_slice(&values[i % values.len()]),
            Seg::Part(i, a, b) => {
                let v = &values[i % values.len()];
                let a = a % (v.len() + 1);
                let b = a + b % (v.len() - a + 1);
                out.extend_from_slice(&v[a..b]);
            }
            Seg::Encoded(i, k) => {
                let v = &values[i % values.len()];
                let e = variants::encodings(v);
                out.extend_from_slice(&e[k % e.len()]);
            }
            Seg::Wrapped(i, k, every) => {
                let v = &values[i % values.len()];
                let e = variants::encodings(v);
                let sep: &[u8] = if k % 2 == 0 { b"\n" } else { b" " };
                out.extend_from_slice(&wrap(&e[k % e.len()], *every, sep));
            }
        }
    }
    out
}

/// 160 cases by default (the whole crate's tests stay well under 30 s in debug); set
/// `PROPTEST_CASES` for a longer search.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(160)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_global_rejects: 1 << 20, ..ProptestConfig::default() })]

    /// For every input and every split into chunks (down to 1 byte), the concatenated streaming
    /// output and the redaction count equal the one-shot result.
    #[test]
    fn streaming_equals_one_shot(
        values in proptest::collection::vec(value(), 1..4),
        segs in proptest::collection::vec(seg(), 0..10),
        sizes in proptest::collection::vec(prop_oneof![3 => Just(1usize), 2 => 1usize..8, 1 => 1usize..200], 1..16),
    ) {
        let r = redactor(&values);
        let input = build_input(&values, &segs);
        let (one, n_one) = r.redact(&input);
        let (streamed, n_streamed) = stream_in(&r, &input, &sizes);
        prop_assert_eq!(&one, &streamed);
        prop_assert_eq!(n_one, n_streamed);
        // Byte-at-a-time too.
        let (bytewise, _) = stream_in(&r, &input, &[1]);
        prop_assert_eq!(&one, &bytewise);
    }

    /// A value (of at least MIN_LEN bytes after trimming) planted anywhere in arbitrary bytes,
    /// raw or as base64/hex (optionally wrapped), never survives, however the output is split.
    #[test]
    fn no_planted_value_survives(
        values in proptest::collection::vec(value(), 1..4),
        around in proptest::collection::vec(noisy_bytes(32), 2..5),
        which in any::<usize>(),
        form in 0usize..4,
        every in 4usize..80,
        sizes in proptest::collection::vec(1usize..64, 1..8),
    ) {
        let planted = values[which % values.len()].clone();
        prop_assume!(planted.trim_ascii().len() >= MIN_LEN);
        // A value whose normalised form lies inside a marker text is not registered.
        prop_assume!(!contains(
            b"[REDACTED:S0][REDACTED:S1][REDACTED:S2]",
            &keyveil_redact::normalize::normalize(&planted)
        ));
        // With a bracket, a marker and the bytes next to it can re-form the value.
        prop_assume!(!planted.contains(&b'[') && !planted.contains(&b']'));
        let r = redactor(&values);
        let shown = match form {
            0 => planted.clone(),
            1 => variants::base64_full(&planted)[0].clone(),
            2 => variants::hex(&planted)[0].clone(),
            _ => wrap(&variants::base64_full(&planted)[0], every, b"\n"),
        };
        let needle = match form {
            3 => variants::base64_full(&planted)[0].clone(),
            _ => shown.clone(),
        };
        let mut input = Vec::new();
        for (i, a) in around.iter().enumerate() {
            if i > 0 {
                input.extend_from_slice(&shown);
            }
            input.extend_from_slice(a);
        }
        let (out, n) = r.redact(&input);
        prop_assert!(n >= 1);
        prop_assert!(!contains(&out, &needle), "survived: {:?} in {:?}", String::from_utf8_lossy(&needle), String::from_utf8_lossy(&out));
        let (streamed, _) = stream_in(&r, &input, &sizes);
        prop_assert_eq!(out, streamed);
    }
}

#[test]
fn short_values_only_as_tokens() {
    let r = Redactor::new([("PIN", "4821")]);
    let (out, n) = r.redact(b"build 14821 48213ms pin=4821 (4821) 4821x");
    assert_eq!(
        out,
        b"build 14821 48213ms pin=[REDACTED:PIN] ([REDACTED:PIN]) 4821x"
    );
    assert_eq!(n, 2);
    assert_eq!(r.short_value_names(), vec!["PIN".to_string()]);
}

#[test]
fn overlapping_values_leave_no_tail() {
    // B extends A; C overlaps the end of B.
    let a = "tok_Q9vX2mLr8TzK";
    let b = "tok_Q9vX2mLr8TzK_extra7Yw3";
    let c = "extra7Yw3_and_more_9Pq";
    let r = Redactor::new([("A", a), ("B", b), ("C", c)]);
    let input = format!("x {b}_and_more_9Pq y");
    let (out, n) = r.redact(input.as_bytes());
    assert_eq!(out, b"x [REDACTED:B] y");
    assert_eq!(n, 1);
}

#[test]
fn marker_is_not_matchable() {
    let r = Redactor::new([("TOKEN", "TOKEN"), ("R", "REDACTED:R")]);
    let (once, _) = r.redact(b"a TOKEN b");
    let (twice, n) = r.redact(&once);
    assert_eq!(once, twice);
    assert_eq!(n, 0);
}

#[test]
fn find_leaks_reports_every_variant_owner() {
    let r = Redactor::new([
        ("B", "Zk2pQ8vL1xW7mN4r"),
        ("A", "s3cr3t-V4lue-xyz-0192"),
        ("UNUSED", "nope-nope-nope-123"),
    ]);
    let hay = format!(
        "raw Zk2pQ8vL1xW7mN4r and hex {}",
        String::from_utf8(variants::hex(b"s3cr3t-V4lue-xyz-0192")[0].clone()).unwrap()
    );
    assert_eq!(
        r.find_leaks(hay.as_bytes()),
        vec!["A".to_string(), "B".to_string()]
    );
}

#[test]
fn hold_back_is_bounded() {
    let r = Redactor::new([("A", "s3cr3t-V4lue-xyz-0192")]);
    let mut s = r.stream();
    let mut out = Vec::new();
    s.push(b"prompt> ", &mut out);
    assert_eq!(out, b"prompt> ");
    s.push(b"s3cr3t-V4l", &mut out);
    assert_eq!(out, b"prompt> ");
    s.push(b"ue-xyz-0192 done", &mut out);
    s.finish(&mut out);
    assert_eq!(out, b"prompt> [REDACTED:A] done");
    // Long ordinary output is released with at most max_pattern_len - 1 bytes held.
    let mut s = r.stream();
    let mut out = Vec::new();
    let text = b"lorem ipsum dolor sit amet ".repeat(40);
    s.push(&text, &mut out);
    assert!(text.len() - out.len() < r.max_pattern_len());
}

/// A piece of a long output: text, a whitespace run (long ones end partial matches), an escape
/// sequence, a value printed with `gap` spaces between its bytes, or a truncated print of a
/// value (`len` bytes from `from`; only its 12-byte fragments can match it).
#[derive(Clone, Debug)]
enum Piece {
    Text(Vec<u8>),
    Space(usize, u8),
    Escape(Vec<u8>),
    Spaced(usize, usize),
    Part {
        value: usize,
        from: usize,
        len: usize,
    },
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        4 => proptest::collection::vec(proptest::sample::select(&b"abcdefXYZ0129_-/:"[..]), 1..300).prop_map(Piece::Text),
        3 => (0usize..130, proptest::sample::select(&b" \n\t\r"[..])).prop_map(|(n, b)| Piece::Space(n, b)),
        1 => proptest::sample::select(vec![&b"\x1b[31m"[..], b"\x1b[0m", b"\x1b[K", b"\x1b[12H", b"\x1b[", b"\x1b"]).prop_map(|e| Piece::Escape(e.to_vec())),
        2 => (any::<usize>(), prop_oneof![3 => Just(0usize), 1 => 1usize..70]).prop_map(|(v, g)| Piece::Spaced(v, g)),
        2 => (any::<usize>(), any::<usize>(), 12usize..20).prop_map(|(value, from, len)| Piece::Part { value, from, len }),
    ]
}

fn long_input(values: &[Vec<u8>], pieces: &[Piece], repeat: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..repeat {
        for p in pieces {
            match p {
                Piece::Text(t) => out.extend_from_slice(t),
                Piece::Space(n, b) => out.extend(std::iter::repeat_n(*b, *n)),
                Piece::Escape(e) => out.extend_from_slice(e),
                Piece::Part { value, from, len } => {
                    let v = &values[value % values.len()];
                    let from = from % v.len();
                    out.extend_from_slice(&v[from..(from + len).min(v.len())]);
                }
                Piece::Spaced(v, gap) => {
                    for (i, &b) in values[v % values.len()].iter().enumerate() {
                        if i > 0 {
                            out.extend(std::iter::repeat_n(b' ', *gap));
                        }
                        out.push(b);
                    }
                }
            }
        }
    }
    out
}

/// Streaming `input` in chunks of `sizes`, and byte by byte, gives the one-shot output, and
/// no value printed whole survives.
fn check_long_output(
    r: &Redactor,
    values: &[Vec<u8>],
    input: &[u8],
    sizes: &[usize],
) -> Result<(), TestCaseError> {
    let (one, n_one) = r.redact(input);
    let (streamed, n_streamed) = stream_in(r, input, sizes);
    prop_assert_eq!(&one, &streamed);
    prop_assert_eq!(n_one, n_streamed);
    let (bytewise, _) = stream_in(r, input, &[1]);
    prop_assert_eq!(&one, &bytewise);
    for v in values {
        prop_assert!(!contains(&one, v));
    }
    Ok(())
}

fn token_alphabet() -> proptest::sample::Select<u8> {
    proptest::sample::select(&b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef0123456789_-"[..])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases() / 4, ..ProptestConfig::default() })]

    /// Outputs of several KiB (the normalised pass works on blocks of up to 8 KiB of ground-state
    /// bytes, and falls back to byte-at-a-time near partial matches and escape bytes): streaming
    /// in any chunks equals one-shot, and a value printed whole is gone.
    #[test]
    fn long_outputs_stream_like_one_shot(
        values in proptest::collection::vec(
            proptest::collection::vec(token_alphabet(), MIN_LEN..40),
            1..4,
        ),
        pieces in proptest::collection::vec(piece(), 1..40),
        repeat in 1usize..6,
        sizes in proptest::collection::vec(prop_oneof![1usize..8, 1usize..100, 1000usize..20000], 1..8),
    ) {
        let r = redactor(&values);
        check_long_output(&r, &values, &long_input(&values, &pieces, repeat), &sizes)?;
    }

    /// The same with values of 16 bytes or more only: the shortest pattern is then a 12-byte
    /// fragment or longer, and the block path probes only every 9th to 13th normalised byte
    /// (`Stats::probe_stride`), which this covers.
    #[test]
    fn long_outputs_with_long_values_stream_like_one_shot(
        values in proptest::collection::vec(
            proptest::collection::vec(token_alphabet(), 16..64),
            1..4,
        ),
        pieces in proptest::collection::vec(piece(), 1..40),
        repeat in 1usize..6,
        sizes in proptest::collection::vec(prop_oneof![1usize..8, 1usize..100, 1000usize..20000], 1..8),
    ) {
        let r = redactor(&values);
        prop_assert!(r.stats().probe_stride >= 9, "stride {}", r.stats().probe_stride);
        check_long_output(&r, &values, &long_input(&values, &pieces, repeat), &sizes)?;
    }
}

/// Values with tabs, line breaks, quotes, backslashes, other control characters, DEL and
/// non-ASCII text: the values that string-literal styles escape.
fn literal_value() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => proptest::collection::vec(token_alphabet(), 1..12),
        2 => proptest::sample::select(vec![
            &b"\t"[..], b"\n", b"\r\n", b"'", b"\"", b"\\", b" ", b"\x1b", b"\x01", b"\x00",
            b"\x7f", b"#{", b"${", b"$", b"`", b"=", b"%", b"&", b"<", b"^",
            "\u{e9}".as_bytes(), "\u{20ac}".as_bytes(), "\u{1F600}".as_bytes(), "\u{85}".as_bytes(),
        ]).prop_map(<[u8]>::to_vec),
    ];
    proptest::collection::vec(piece, 2..10).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_global_rejects: 1 << 20, ..ProptestConfig::default() })]

    /// A value with characters that literals escape, printed through any of the
    /// string-literal, quoting and dump forms (`literals::literal_forms`,
    /// `variants::byte_dumps`, `variants::wide_forms`) inside quotes or a container, is
    /// redacted; and streaming in any chunks equals one-shot.
    #[test]
    fn values_printed_as_literals_are_redacted(
        values in proptest::collection::vec(literal_value(), 1..3),
        which in any::<usize>(),
        form in any::<usize>(),
        around in proptest::collection::vec(noisy_bytes(16), 2..4),
        quote in proptest::sample::select(vec![&b"'"[..], b"\"", b"`", b"$'", b"{'k': '", b"[\""]),
        sizes in proptest::collection::vec(prop_oneof![3 => Just(1usize), 2 => 1usize..8, 1 => 1usize..200], 1..8),
    ) {
        let planted = values[which % values.len()].clone();
        prop_assume!(planted.trim_ascii().len() >= MIN_LEN);
        prop_assume!(!planted.contains(&b'[') && !planted.contains(&b']'));
        let mut forms = keyveil_redact::literals::literal_forms(&planted);
        forms.extend(variants::byte_dumps(&planted));
        forms.extend(variants::wide_forms(&planted));
        let shown = forms[form % forms.len()].clone();
        let r = redactor(&values);
        let mut input = Vec::new();
        for (i, a) in around.iter().enumerate() {
            if i > 0 {
                input.extend_from_slice(quote);
                input.extend_from_slice(&shown);
                input.extend_from_slice(quote);
            }
            input.extend_from_slice(a);
        }
        let (out, n) = r.redact(&input);
        prop_assert!(n >= 1);
        prop_assert!(
            !contains(&out, &shown),
            "survived: {:?} in {:?}",
            String::from_utf8_lossy(&shown),
            String::from_utf8_lossy(&out)
        );
        let (streamed, n_streamed) = stream_in(&r, &input, &sizes);
        prop_assert_eq!(&out, &streamed);
        prop_assert_eq!(n, n_streamed);
    }
}
