//! The vendored leak corpus (`tests/cases/redaction-cases.jsonl`) through the crate: each
//! program runs under `sh -c`, both its streams are redacted one-shot and in 1-byte chunks, and
//! every `must_not_contain` must be gone while every `must_contain` survives. All kinds pass,
//! `adversarial-transform` included (reversal and space interleaving are caught).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

const CORPUS: &str = include_str!("../../../tests/cases/redaction-cases.jsonl");

#[test]
fn vendored_corpus() {
    let cases = common::parse(CORPUS);
    assert!(cases.len() >= 20, "corpus has {} cases", cases.len());
    common::check_all(&cases);
}
