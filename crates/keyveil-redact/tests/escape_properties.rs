//! Property tests from a red-team review: planted values and 12-byte runs of random tokens next to escape
//! bytes, `%`, colour codes and whitespace inside, across 8 KiB blocks and chunk boundaries;
//! streaming (1 byte to 20 KiB chunks) equals one-shot. `PROPTEST_CASES` sets the number of
//! cases (default 64).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::{contains, redactor, stream_in};
use keyveil_redact::{Redactor, entropy, normalize::normalize, variants};
use proptest::prelude::*;

const TOKEN: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
const FILLER: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789 .,:_-\n";

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Random tokens: stride 9.
        4 => proptest::collection::vec(proptest::sample::select(TOKEN), 16..48),
        // Low-entropy long value: stride 13.
        1 => (proptest::sample::select(&b"abcxyz"[..]), 20usize..40).prop_map(|(b, n)| vec![b; n]),
        // 8 to 11 bytes: stride 5.
        1 => proptest::collection::vec(proptest::sample::select(TOKEN), 8..12),
        // Colour-code parameter bytes.
        1 => proptest::collection::vec(proptest::sample::select(&b"0123456789;"[..]), 8..17),
        // Hex-letter heavy (percent folding).
        1 => proptest::collection::vec(proptest::sample::select(&b"ABCDEF0123456789%"[..]), 12..32),
    ]
}

#[derive(Clone, Debug)]
enum Piece {
    Filler(usize, u64),
    Run {
        value: usize,
        from: usize,
        len: usize,
        prefix: usize,
        suffix: usize,
        noise: Vec<(usize, usize)>,
    },
    Encoded(usize, usize),
}

const PREFIXES: &[&[u8]] = &[
    b"",
    b" ",
    b"\x1b[31m",
    b"%",
    b"%4",
    b"=",
    b"\n",
    b"\x1b[0;1m",
];
/// Prefixes that leave the normaliser inside an escape sequence (only the normalised view is
/// checked after them: the raw bytes are known to leak, see `tests/redteam.rs`).
const ESC_PREFIXES: &[&[u8]] = &[b"\x1b", b"\x1b[", b"\x1b[1;", b"%\x1b[", b"\x1b[%"];
const SUFFIXES: &[&[u8]] = &[b"", b"m", b"\x1b[0m", b" ", b"%", b"K"];
const NOISE: &[&[u8]] = &[
    b" ",
    b"\n",
    b"\x1b[1m",
    b"\x1b[K",
    b"\r\n",
    b"\x1b[38;5;196m",
    b"\t\t",
];

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        3 => (prop_oneof![3 => 0usize..200, 1 => 7900usize..8300, 1 => 1usize..3000], any::<u64>())
            .prop_map(|(n, s)| Piece::Filler(n, s)),
        4 => (
            any::<usize>(),
            any::<usize>(),
            prop_oneof![2 => 12usize..20, 1 => 12usize..64],
            0..PREFIXES.len() + ESC_PREFIXES.len(),
            0..SUFFIXES.len(),
            proptest::collection::vec((any::<usize>(), 0..NOISE.len()), 0..3),
        )
            .prop_map(|(value, from, len, prefix, suffix, noise)| Piece::Run {
                value,
                from,
                len,
                prefix,
                suffix,
                noise,
            }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(v, k)| Piece::Encoded(v, k)),
    ]
}

fn filler(n: usize, mut seed: u64) -> Vec<u8> {
    seed |= 1;
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            FILLER[(seed % FILLER.len() as u64) as usize]
        })
        .collect()
}

fn build(values: &[Vec<u8>], pieces: &[Piece]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pieces {
        match p {
            Piece::Filler(n, s) => out.extend(filler(*n, *s)),
            Piece::Run {
                value,
                from,
                len,
                prefix,
                suffix,
                noise,
            } => {
                let v = &values[value % values.len()];
                let from = from % v.len();
                let mut run = v[from..(from + len).min(v.len())].to_vec();
                let mut ns = noise.clone();
                ns.sort_by_key(|&(at, _)| std::cmp::Reverse(at % run.len().max(1)));
                for (at, k) in ns {
                    let at = 1 + at % run.len().max(1);
                    let at = at.min(run.len());
                    run.splice(at..at, NOISE[k].iter().copied());
                }
                if *prefix < PREFIXES.len() {
                    out.extend_from_slice(PREFIXES[*prefix]);
                } else {
                    out.extend_from_slice(ESC_PREFIXES[*prefix - PREFIXES.len()]);
                }
                out.extend_from_slice(&run);
                out.extend_from_slice(SUFFIXES[*suffix]);
            }
            Piece::Encoded(v, k) => {
                let v = &values[v % values.len()];
                let e = variants::encodings(v);
                out.extend_from_slice(&e[k % e.len()]);
            }
        }
    }
    out
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Streaming equals one-shot, no whole value survives, and no 12-byte run of a
    /// random-looking value survives, in the raw output or in its normalised view.
    #[test]
    fn runs_next_to_noise_and_blocks(
        values in proptest::collection::vec(value(), 1..4),
        pieces in proptest::collection::vec(piece(), 1..24),
        sizes in proptest::collection::vec(prop_oneof![2 => Just(1usize), 2 => 1usize..64, 1 => 8000usize..20000], 1..8),
    ) {
        let r = redactor(&values);
        let input = build(&values, &pieces);
        let (one, n_one) = r.redact(&input);
        let (streamed, n_streamed) = stream_in(&r, &input, &sizes);
        prop_assert_eq!(&one, &streamed);
        prop_assert_eq!(n_one, n_streamed);
        if input.len() < 40_000 {
            let (bytewise, _) = stream_in(&r, &input, &[1]);
            prop_assert_eq!(&one, &bytewise);
        }
        let view = normalize(&one);
        let raw_checks = !pieces.iter().any(|p| matches!(p, Piece::Run { prefix, .. } if *prefix >= PREFIXES.len()));
        for v in &values {
            if v.len() >= 8 {
                prop_assert!(!raw_checks || !contains(&one, v), "value survived");
                prop_assert!(!contains(&view, &normalize(v)), "value survived in view");
            }
            if entropy::fragmentable(v) {
                for w in v.windows(12) {
                    prop_assert!(!raw_checks || !contains(&one, w), "run {:?} survived", String::from_utf8_lossy(w));
                    prop_assert!(!contains(&view, &normalize(w)), "run {:?} survived in view", String::from_utf8_lossy(w));
                }
            }
        }
    }

    /// A value of colour-code parameter bytes printed as (part of) the parameters of a colour
    /// code, with other parameters before and after, split anywhere.
    #[test]
    fn param_values_inside_colour_codes(
        value in proptest::collection::vec(proptest::sample::select(&b"0123456789;:"[..]), 8..17),
        before in proptest::collection::vec(proptest::sample::select(&b"0123456789;"[..]), 0..8),
        after in proptest::collection::vec(proptest::sample::select(&b"0123456789;"[..]), 0..8),
        fin in proptest::sample::select(&b"mK"[..]),
        lead in proptest::collection::vec(proptest::sample::select(FILLER), 0..64),
        sizes in proptest::collection::vec(1usize..20, 1..8),
    ) {
        let r = Redactor::new([("P", &value)]);
        let mut input = lead.clone();
        input.extend_from_slice(b"\x1b[");
        input.extend_from_slice(&before);
        input.extend_from_slice(&value);
        input.extend_from_slice(&after);
        input.push(fin);
        input.extend_from_slice(b"tail\n");
        let (one, _) = r.redact(&input);
        let (streamed, _) = stream_in(&r, &input, &sizes);
        prop_assert_eq!(&one, &streamed);
        prop_assert!(!contains(&one, &value), "{:?}", String::from_utf8_lossy(&one));
    }
}
