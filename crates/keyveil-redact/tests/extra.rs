//! Cases of our own, at least one per kind of the vendored corpus, with other values, offsets
//! and printing programs: the whole class of each case must be caught, not the literal string.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

const EXTRA: &str = include_str!("extra-cases.jsonl");
const CORPUS: &str = include_str!("../../../tests/cases/redaction-cases.jsonl");

#[test]
fn extra_cases() {
    let cases = common::parse(EXTRA);
    common::check_all(&cases);
}

#[test]
fn every_corpus_kind_has_an_extra_case() {
    let extra: std::collections::BTreeSet<String> =
        common::parse(EXTRA).into_iter().map(|c| c.kind).collect();
    let missing: Vec<String> = common::parse(CORPUS)
        .into_iter()
        .map(|c| c.kind)
        .filter(|k| !extra.contains(k))
        .collect();
    assert!(
        missing.is_empty(),
        "kinds without an extra case: {missing:?}"
    );
}
