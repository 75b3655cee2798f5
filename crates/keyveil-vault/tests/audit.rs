//! Audit log: chain, MACs, tamper detection, torn-tail recovery.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::{Path, PathBuf};

use keyveil_vault::audit::{self, AuditError, AuditWriter, GENESIS_PREV, LineFault};
use serde_json::{Map, Value, json};

const KEY: [u8; 32] = [7u8; 32];

fn fields(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

/// A log with `n` entries in a fresh directory.
fn log_with(n: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut w = AuditWriter::open(&path, &KEY).unwrap();
    for i in 1..=n {
        let e = w
            .append(
                "test.event",
                fields(json!({"i": i, "env": "dev", "vars": ["A", "B"], "nested": {"z": 1, "a": [true, null]}})),
            )
            .unwrap();
        assert_eq!(e["seq"], json!(i));
    }
    assert_eq!(w.last_seq(), n);
    (dir, path)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

fn bad_line(r: Result<u64, AuditError>) -> (u64, LineFault) {
    match r {
        Err(AuditError::BadLine { line, reason }) => (line, reason),
        other => panic!("expected BadLine, got {other:?}"),
    }
}

#[test]
fn append_and_verify() {
    let (_dir, path) = log_with(5);
    assert_eq!(audit::verify(&path, &KEY).unwrap(), 5);
    let ls = lines(&path);
    assert!(ls[0].starts_with(r#"{"seq":1,"ts":""#), "{}", ls[0]);
    assert!(ls[0].contains(&format!(r#""prev":"{GENESIS_PREV}""#)));
    // Extra fields sorted, nested keys sorted.
    assert!(ls[0].contains(r#""event":"test.event","env":"dev","i":1,"nested":{"a":[true,null],"z":1},"vars":["A","B"],"prev":"#), "{}", ls[0]);
    // Reopen continues the chain.
    let mut w = AuditWriter::open(&path, &KEY).unwrap();
    assert_eq!(w.last_seq(), 5);
    w.append("again", Map::new()).unwrap();
    drop(w);
    assert_eq!(audit::verify(&path, &KEY).unwrap(), 6);
    let entries = audit::read_entries(&path, Some(2)).unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1]["event"], "again");
}

#[test]
fn edit_is_detected() {
    let (_dir, path) = log_with(5);
    let mut ls = lines(&path);
    ls[2] = ls[2].replace(r#""env":"dev""#, r#""env":"prod""#);
    write_lines(&path, &ls);
    assert_eq!(
        bad_line(audit::verify(&path, &KEY)),
        (3, LineFault::MacMismatch)
    );
}
