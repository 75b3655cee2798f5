//! `RedactStream::flush` (a program gone quiet): its tail is let out, and pausing never shows
//! more of a value than [`FLUSH_SHOWN_MAX`] bytes of a run one piece would have masked
//! (`docs/redaction.md`, "Pauses").
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use keyveil_redact::{FLUSH_SHOWN_MAX, PARTIAL_MARKER, Redactor};
use proptest::prelude::*;

/// An obvious fake, random-looking (so its 12-byte fragments are patterns too).
const FAKE: &str = "kv9qz7lm2xp4rt8wj3nd6c";

/// The most of a value a pause may show in a row (written out, not read from the crate, so
/// that a change of [`FLUSH_SHOWN_MAX`] fails here first).
const SHOWN: usize = 3;

#[test]
fn the_bound_is_the_documented_one() {
    assert_eq!(FLUSH_SHOWN_MAX as usize, SHOWN);
}

/// `pieces` pushed one by one with a flush after each (a pause), then `finish`.
fn paused(r: &Redactor, pieces: &[Vec<u8>]) -> Vec<u8> {
    let mut s = r.stream();
    let mut out = Vec::new();
    for p in pieces {
        s.push(p, &mut out);
        s.flush(&mut out);
    }
    s.finish(&mut out);
    out
}

/// The longest run of `value`'s bytes (contiguous, in order) that `out` shows.
fn longest_shown(value: &[u8], out: &[u8]) -> usize {
    let mut best = 0;
    for a in 0..value.len() {
        for b in (a + best + 1)..=value.len() {
            if out.windows(b - a).any(|w| w == &value[a..b]) {
                best = b - a;
            } else {
                break;
            }
        }
    }
    best
}

#[test]
fn a_quiet_last_line_is_let_out_at_once() {
    let r = Redactor::new([("TOKEN", FAKE)]);
    for line in [
        &b"next lin"[..],
        b"started with",
        b"Password: ",
        b"progress 41%",
        b"\x1b[32mok\x1b[0m waiting",
    ] {
        let mut s = r.stream();
        let mut out = Vec::new();
        s.push(line, &mut out);
        s.flush(&mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(line),
            "a pause must show the whole line"
        );
        assert!(!s.is_holding());
        // The stream goes on as before.
        s.push(b" done\n", &mut out);
        s.finish(&mut out);
        assert!(out.ends_with(b" done\n"));
    }
}

#[test]
fn a_whole_value_at_a_pause_is_masked_and_stays_masked() {
    let r = Redactor::new([("TOKEN", FAKE)]);
    let mut s = r.stream();
    let mut out = Vec::new();
    s.push(format!("token={FAKE}").as_bytes(), &mut out);
    s.flush(&mut out);
    assert_eq!(out, b"token=[REDACTED:TOKEN]");
    s.push(b"\n", &mut out);
    s.finish(&mut out);
    assert_eq!(out, b"token=[REDACTED:TOKEN]\n");
}

#[test]
fn a_value_printed_in_pieces_with_pauses_is_not_readable() {
    let r = Redactor::new([("TOKEN", FAKE)]);
    let v = FAKE.as_bytes();
    for size in 1..=v.len() {
        for sep in [&b""[..], b" ", b"\n"] {
            let mut pieces: Vec<Vec<u8>> = vec![b"value: ".to_vec()];
            for c in v.chunks(size) {
                let mut p = c.to_vec();
                p.extend_from_slice(sep);
                pieces.push(p);
            }
            let out = paused(&r, &pieces);
            let shown = longest_shown(v, &out);
            assert!(
                shown <= SHOWN,
                "pieces of {size} separated by {sep:?}: {shown} bytes in a row shown: {}",
                String::from_utf8_lossy(&out)
            );
            // One piece shows none of it.
            let (one, _) = r.redact(&pieces.concat());
            assert!(
                longest_shown(v, &one) < 4,
                "{}",
                String::from_utf8_lossy(&one)
            );
        }
    }
}

#[test]
fn a_long_possible_match_at_a_pause_is_masked_not_shown() {
    let r = Redactor::new([("TOKEN", FAKE)]);
    let mut s = r.stream();
    let mut out = Vec::new();
    s.push(b"id: kv9qz7l", &mut out);
    s.flush(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(!text.contains("kv9q"), "{text}");
    assert!(out.ends_with(PARTIAL_MARKER), "{text}");
    // Not a value after all: what follows is shown, what was masked stays masked.
    s.push(b"-x\n", &mut out);
    s.finish(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.starts_with("id: ") && text.ends_with("-x\n"), "{text}");
    assert!(!text.contains("kv9q"), "{text}");
}

fn token() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        proptest::sample::select(&b"abcdefghijklmnopqrstuvwxyz0123456789"[..]),
        16..40,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The attack: a value (and other values) printed in pieces of any sizes, with whitespace
    /// or nothing between them and a pause after any piece. Nowhere does the output show more
    /// than `FLUSH_SHOWN_MAX` bytes of a value in a row (one piece shows fewer than 4: the
    /// separators are whitespace, which the normalised view drops).
    #[test]
    fn pauses_never_show_a_readable_run_of_a_value(
        v in token(),
        other in token(),
        cuts in proptest::collection::vec(1usize..14, 1..40),
        seps in proptest::collection::vec(
            proptest::sample::select(vec![&b""[..], b" ", b"\n", b"\t", b"\r\n"]), 1..40),
        pauses in proptest::collection::vec(any::<bool>(), 1..40),
        lead in proptest::collection::vec(
            proptest::sample::select(&b"log: -=[]()#!"[..]), 0..6),
    ) {
        let r = Redactor::new([("TOKEN", v.clone()), ("OTHER", other.clone())]);
        let mut s = r.stream();
        let mut out = Vec::new();
        s.push(&lead, &mut out);
        s.flush(&mut out);
        let mut at = 0;
        let mut i = 0;
        while at < v.len() {
            let n = cuts[i % cuts.len()].min(v.len() - at);
            s.push(&v[at..at + n], &mut out);
            s.push(seps[i % seps.len()], &mut out);
            if pauses[i % pauses.len()] {
                s.flush(&mut out);
            }
            at += n;
            i += 1;
        }
        s.push(b"\n", &mut out);
        s.finish(&mut out);
        let shown = longest_shown(&v, &out);
        prop_assert!(
            shown <= SHOWN,
            "{} bytes in a row shown: {}",
            shown,
            String::from_utf8_lossy(&out)
        );
    }

    /// Text that holds no value loses nothing at a pause but what a marker masks, and is
    /// otherwise let out unchanged and in order.
    #[test]
    fn pauses_keep_ordinary_text(
        v in token(),
        words in proptest::collection::vec("[A-Z .,:!?\n]{1,12}", 1..20),
        pauses in proptest::collection::vec(any::<bool>(), 1..20),
    ) {
        let r = Redactor::new([("TOKEN", v)]);
        let mut s = r.stream();
        let mut out = Vec::new();
        let mut input = Vec::new();
        for (i, w) in words.iter().enumerate() {
            s.push(w.as_bytes(), &mut out);
            input.extend_from_slice(w.as_bytes());
            if pauses[i % pauses.len()] {
                s.flush(&mut out);
            }
        }
        s.finish(&mut out);
        // The value is lower-case and digits; upper-case text never starts a possible match.
        prop_assert_eq!(out, input);
    }
}
