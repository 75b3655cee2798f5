//! Test fixtures: the fake values of the vendored redaction corpus
//! (`tests/cases/redaction-cases.jsonl`), so unit tests use those rather than writing
//! secret-shaped literals into the source.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

const CORPUS: &str = include_str!("../../../tests/cases/redaction-cases.jsonl");

/// The value of `name` in the corpus case `id`.
pub fn secret(id: &str, name: &str) -> String {
    for line in CORPUS.lines().filter(|l| !l.trim().is_empty()) {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        if case["id"] == id {
            return case["secrets"][name].as_str().unwrap().to_owned();
        }
    }
    panic!("no corpus case {id}");
}

/// A JSON leaf of the structured secret `name` of case `id`.
pub fn leaf(id: &str, name: &str, key: &str) -> String {
    let doc: serde_json::Value = serde_json::from_str(&secret(id, name)).unwrap();
    doc[key].as_str().unwrap().to_owned()
}
