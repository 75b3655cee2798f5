//! Fuzz target for the streaming redactor.
//!
//! Input layout: `[n][len_1][value_1]..[len_n][value_n][seed][output..]` (1 ≤ n ≤ 4). Asserts:
//! 1. streaming the output in pseudo-random chunks (1 to 17 bytes) equals one-shot redaction,
//!    markers counted the same;
//! 2. every value of at least 8 bytes (after trimming, without `[` or `]`) planted in the middle
//!    of the output does not survive redaction, streamed in pseudo-random chunks, nor with a
//!    pause (`RedactStream::flush`, as the broker's relay calls after 200 ms of silence) after
//!    pseudo-randomly chosen chunks;
//! 3. where neither one-shot nor the paused stream masks anything, a pause changes nothing (it
//!    only lets bytes out earlier).
//!
//! Run: `cargo +nightly fuzz run redact_stream -- -max_total_time=30`.
#![no_main]

use keyveil_redact::{MIN_LEN, PARTIAL_MARKER, Redactor};
use libfuzzer_sys::fuzz_target;

fn split(data: &[u8]) -> Option<(Vec<Vec<u8>>, u8, &[u8])> {
    let (&n, mut rest) = data.split_first()?;
    let n = usize::from(n % 4) + 1;
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        let (&len, r) = rest.split_first()?;
        let len = usize::from(len % 64);
        if r.len() < len {
            return None;
        }
        let (v, r) = r.split_at(len);
        values.push(v.to_vec());
        rest = r;
    }
    let (&seed, output) = rest.split_first()?;
    Some((values, seed, output))
}

fn streamed(r: &Redactor, input: &[u8], seed: u32) -> (Vec<u8>, usize) {
    stream_with(r, input, seed, false)
}

/// Streams `input` in pseudo-random chunks of 1 to 17 bytes; with `pauses`, a flush follows
/// about one chunk in three.
fn stream_with(r: &Redactor, input: &[u8], mut seed: u32, pauses: bool) -> (Vec<u8>, usize) {
    let mut s = r.stream();
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = ((seed >> 16) % 17 + 1) as usize;
        let (chunk, r2) = rest.split_at(n.min(rest.len()));
        s.push(chunk, &mut out);
        if pauses && (seed >> 8) % 3 == 0 {
            s.flush(&mut out);
        }
        rest = r2;
    }
    s.finish(&mut out);
    (out, s.redactions())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let Some((values, seed, output)) = split(data) else {
        return;
    };
    let names: Vec<String> = (0..values.len()).map(|i| format!("V{i}")).collect();
    let r = Redactor::new(names.iter().cloned().zip(values.iter().cloned()));

    let (one, n_one) = r.redact(output);
    let (chunked, n_chunked) = streamed(&r, output, u32::from(seed));
    assert_eq!(one, chunked, "streaming differs from one-shot");
    assert_eq!(n_one, n_chunked);
    let (paused, n_paused) = stream_with(&r, output, u32::from(seed), true);
    let partial = |b: &[u8]| {
        b.windows(PARTIAL_MARKER.len())
            .filter(|w| *w == PARTIAL_MARKER)
            .count()
    };
    if n_one == 0 && n_paused == 0 && partial(&paused) == partial(&one) {
        assert_eq!(one, paused, "a pause changed output that holds no value");
    }

    let markers: Vec<u8> = names
        .iter()
        .flat_map(|n| keyveil_redact::marker(n))
        .collect();
    let half = output.len() / 2;
    for v in &values {
        // A value with `[` or `]` can be re-formed by a marker and the bytes next to it
        // (`CTED:V0]` + `\0`); one inside a marker text is not registered at all.
        if v.trim_ascii().len() < MIN_LEN
            || contains(&markers, &keyveil_redact::normalize::normalize(v))
            || v.contains(&b'[')
            || v.contains(&b']')
        {
            continue;
        }
        let mut planted = output[..half].to_vec();
        planted.extend_from_slice(v);
        planted.extend_from_slice(&output[half..]);
        let (out, _) = streamed(&r, &planted, u32::from(seed) ^ 0x5555);
        assert!(!contains(&out, v), "planted value survived");
        let (out, _) = stream_with(&r, &planted, u32::from(seed) ^ 0xaaaa, true);
        assert!(!contains(&out, v), "planted value survived a pause");
    }
});
