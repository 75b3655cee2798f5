//! Inputs found by a red-team review: inputs that try to make a value (or a 12-byte run of a random-looking value)
//! survive redaction, or make streaming differ from one-shot. Test values are generated (seeded
//! xorshift), never written as literals.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::{contains, leaked_window, stream_bytewise};
use keyveil_redact::Redactor;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn pick(&mut self, alphabet: &[u8]) -> u8 {
        alphabet[(self.next() % alphabet.len() as u64) as usize]
    }
    fn token(&mut self, alphabet: &[u8], len: usize) -> Vec<u8> {
        (0..len).map(|_| self.pick(alphabet)).collect()
    }
}

const ALNUM: &[u8] = b"ABCDEFGHIJLMNOPQRSTUVWXYZabcdefghijklnopqrstuvwxyz0123456789";

/// A random token (no `K`, no `m`) with `insert` spliced in at offset 10.
fn token_with(seed: u64, insert: &[u8]) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut v = rng.token(ALNUM, 10);
    v.extend_from_slice(insert);
    v.extend(rng.token(ALNUM, 30));
    v
}

/// A 12-byte run of a random token that starts with `K` printed right after `ESC [`: the
/// output holds 12 consecutive value bytes (the agent reads raw bytes), but the normalised view
/// drops the `K` (colour-code final byte) and shows only 11, and the view of that fragment after
/// `ESC [` is no longer registered (`Patterns::add_fragment`).
#[test]
fn fragment_starting_with_k_after_csi_introducer() {
    let v = token_with(0x9e37_79b9_7f4a_7c15, b"K");
    let r = Redactor::new([("TOK", &v)]);
    let mut input = b"progress \x1b[".to_vec();
    input.extend_from_slice(&v[10..22]);
    input.extend_from_slice(b" done\n");
    let (out, _) = r.redact(&input);
    assert_eq!(
        leaked_window(&out, &v),
        None,
        "{:?}",
        String::from_utf8_lossy(&out)
    );
}

/// The same with `NNm` inside the token: `ESC [` + 14 value bytes (`42m` + 11 more) leaves 14
/// consecutive value bytes in the output.
#[test]
fn fragment_starting_with_sgr_params_after_csi_introducer() {
    let v = token_with(0x2545_f491_4f6c_dd1d, b"42m");
    let r = Redactor::new([("TOK", &v)]);
    let mut input = b"x \x1b[".to_vec();
    input.extend_from_slice(&v[10..24]);
    input.extend_from_slice(b" y\n");
    let (out, _) = r.redact(&input);
    assert_eq!(
        leaked_window(&out, &v),
        None,
        "{:?}",
        String::from_utf8_lossy(&out)
    );
}

/// After a lone `ESC`, a run that starts with `[K`.
#[test]
fn fragment_starting_with_bracket_k_after_esc() {
    let v = token_with(0x1234_5678_9abc_def1, b"[K");
    let r = Redactor::new([("TOK", &v)]);
    let mut input = b"x \x1b".to_vec();
    input.extend_from_slice(&v[10..22]);
    input.extend_from_slice(b" y\n");
    let (out, _) = r.redact(&input);
    assert_eq!(
        leaked_window(&out, &v),
        None,
        "{:?}",
        String::from_utf8_lossy(&out)
    );
}

/// A value made of digit groups separated by spaces (a card or account number), printed after
/// an unfinished control sequence that already holds a parameter byte or two: the normaliser
/// holds 16 parameter bytes, gives up, and releases them *with their spaces* into the view,
/// while the rest of the value loses its spaces. That mix matches neither the plain form nor the
/// form after exactly `ESC [`, so the whole value survives.
#[test]
fn spaced_digit_value_after_unfinished_csi_with_params() {
    let mut rng = Rng(0x5851_f42d_4c95_7f2d);
    let groups: Vec<Vec<u8>> = (0..4).map(|_| rng.token(b"0123456789", 4)).collect();
    let v = groups.join(&b' ');
    assert_eq!(v.len(), 19);
    let r = Redactor::new([("CARD", &v)]);
    for prefix in [&b"\x1b[1;"[..], b"\x1b[;", b"\x1b[0"] {
        let mut input = b"card: ".to_vec();
        input.extend_from_slice(prefix);
        input.extend_from_slice(&v);
        input.extend_from_slice(b"\n");
        let (out, _) = r.redact(&input);
        assert!(
            !contains(&out, &v),
            "prefix {:?}: {:?}",
            String::from_utf8_lossy(prefix),
            String::from_utf8_lossy(&out)
        );
        assert_eq!(out, stream_bytewise(&r, &input));
    }
}
