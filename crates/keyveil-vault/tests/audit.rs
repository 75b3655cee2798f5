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

#[test]
fn deleted_line_is_detected() {
    for victim in [0usize, 2] {
        let (_dir, path) = log_with(5);
        let mut ls = lines(&path);
        ls.remove(victim);
        write_lines(&path, &ls);
        let line = victim as u64 + 1;
        assert_eq!(
            bad_line(audit::verify(&path, &KEY)),
            (
                line,
                LineFault::SeqMismatch {
                    found: line + 1,
                    expected: line
                }
            )
        );
    }
}

#[test]
fn swapped_lines_are_detected() {
    let (_dir, path) = log_with(5);
    let mut ls = lines(&path);
    ls.swap(1, 2);
    write_lines(&path, &ls);
    assert_eq!(
        bad_line(audit::verify(&path, &KEY)),
        (
            2,
            LineFault::SeqMismatch {
                found: 3,
                expected: 2
            }
        )
    );
}

/// A forger who knows the format (right seq, right prev, canonical form) but not the key.
#[test]
fn forged_appended_line_is_detected() {
    let (_dir, path) = log_with(3);
    let mut ls = lines(&path);
    let prev = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(ls[2].as_bytes()));
    ls.push(format!(
        r#"{{"seq":4,"ts":"2026-01-01T00:00:00.000000Z","event":"grant.approved","prev":"{prev}","mac":"{}"}}"#,
        "0".repeat(64)
    ));
    write_lines(&path, &ls);
    assert_eq!(
        bad_line(audit::verify(&path, &KEY)),
        (4, LineFault::MacMismatch)
    );
    // The same file under another key fails on line 1.
    assert_eq!(
        bad_line(audit::verify(&path, &[8u8; 32])),
        (1, LineFault::MacMismatch)
    );
}

#[test]
fn reformatted_line_is_detected() {
    let (_dir, path) = log_with(3);
    let mut ls = lines(&path);
    ls[1] = ls[1].replacen(r#""seq":2,"#, r#""seq": 2,"#, 1);
    write_lines(&path, &ls);
    assert_eq!(
        bad_line(audit::verify(&path, &KEY)),
        (2, LineFault::NotCanonical)
    );
    let mut ls = lines(&path);
    ls[1] = "not json".into();
    write_lines(&path, &ls);
    let (line, fault) = bad_line(audit::verify(&path, &KEY));
    assert_eq!(line, 2);
    assert!(matches!(fault, LineFault::NotJson { .. }), "{fault:?}");
}

/// A genuine line from another log under the same key, at the same position.
#[test]
fn spliced_line_is_detected() {
    let (_d1, a) = log_with(3);
    let (_d2, b) = log_with(3);
    let mut la = lines(&a);
    la[2] = lines(&b)[2].clone();
    write_lines(&a, &la);
    assert_eq!(
        bad_line(audit::verify(&a, &KEY)),
        (3, LineFault::PrevMismatch)
    );
}

#[test]
fn error_messages_name_the_line() {
    let (_dir, path) = log_with(8);
    let mut ls = lines(&path);
    ls[6] = ls[6].replace("test.event", "test.evenT");
    write_lines(&path, &ls);
    let err = audit::verify(&path, &KEY).unwrap_err();
    assert_eq!(
        err.to_string(),
        "audit log line 7: MAC mismatch (the line was edited or forged)"
    );
}

#[test]
fn torn_tail_is_truncated_and_noted() {
    let (_dir, path) = log_with(3);
    let good = std::fs::read(&path).unwrap();
    let mut torn = good.clone();
    torn.extend_from_slice(br#"{"seq":4,"ts":"2026-01-0"#);
    std::fs::write(&path, &torn).unwrap();
    assert_eq!(
        bad_line(audit::verify(&path, &KEY)),
        (4, LineFault::Incomplete)
    );
    // read_entries skips the torn line.
    assert_eq!(audit::read_entries(&path, None).unwrap().len(), 3);

    let mut w = AuditWriter::open(&path, &KEY).unwrap();
    let tail = w.torn_tail().cloned().unwrap();
    assert_eq!(tail.bytes, 24);
    assert_eq!(w.last_seq(), 4);
    w.append("after", Map::new()).unwrap();
    drop(w);
    assert_eq!(audit::verify(&path, &KEY).unwrap(), 5);
    let entries = audit::read_entries(&path, None).unwrap();
    assert_eq!(entries[3]["event"], audit::TAIL_TRUNCATED_EVENT);
    assert_eq!(entries[3]["bytes"], 24);
    assert_eq!(entries[3]["sha256"], tail.sha256);
    assert!(std::fs::read(&path).unwrap().starts_with(&good));
}

#[test]
fn complete_last_line_missing_only_its_newline_is_kept() {
    let (_dir, path) = log_with(3);
    let mut bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.pop(), Some(b'\n'));
    std::fs::write(&path, &bytes).unwrap();
    let w = AuditWriter::open(&path, &KEY).unwrap();
    assert!(w.torn_tail().is_none());
    assert_eq!(w.last_seq(), 3);
    drop(w);
    assert_eq!(audit::verify(&path, &KEY).unwrap(), 3);
}

#[test]
fn open_refuses_to_chain_onto_a_bad_last_line() {
    let (dir, path) = log_with(3);
    let mut ls = lines(&path);
    ls[2] = ls[2].replace(r#""i":3"#, r#""i":4"#);
    write_lines(&path, &ls);
    let err = AuditWriter::open(&path, &KEY).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::BadLine {
                line: 3,
                reason: LineFault::MacMismatch
            }
        ),
        "{err:?}"
    );
    let err = AuditWriter::open(&path, &[1u8; 32]).unwrap_err();
    assert!(
        matches!(err, AuditError::BadLine { line: 3, .. }),
        "{err:?}"
    );
    // The way out: move the bad log aside and start a new one.
    let moved = audit::quarantine(&path).unwrap();
    assert!(moved.starts_with(dir.path()));
    assert!(
        moved
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("audit.jsonl.bad-")
    );
    let mut w = AuditWriter::open(&path, &KEY).unwrap();
    assert_eq!(w.last_seq(), 0);
    w.append("audit.restarted", Map::new()).unwrap();
}

#[test]
fn second_writer_is_locked_out() {
    let (_dir, path) = log_with(1);
    let _first = AuditWriter::open(&path, &KEY).unwrap();
    let err = AuditWriter::open(&path, &KEY).unwrap_err();
    assert!(matches!(err, AuditError::Locked { .. }), "{err:?}");
    // Readers and verifiers are not blocked.
    assert_eq!(audit::verify(&path, &KEY).unwrap(), 1);
}

#[test]
fn invalid_entries_are_refused_and_nothing_is_written() {
    let (_dir, path) = log_with(1);
    let before = std::fs::read(&path).unwrap();
    let mut w = AuditWriter::open(&path, &KEY).unwrap();
    for name in ["seq", "ts", "event", "prev", "mac"] {
        let err = w.append("x", fields(json!({ name: 1 }))).unwrap_err();
        assert!(matches!(err, AuditError::InvalidEntry { .. }), "{err:?}");
    }
    for f in [json!({"d": 1.5}), json!({"d": [1, {"e": 0.1}]})] {
        let err = w.append("x", fields(f)).unwrap_err();
        assert!(matches!(err, AuditError::InvalidEntry { .. }), "{err:?}");
    }
    for event in ["", "a\nb", &"e".repeat(129)] {
        let err = w.append(event, Map::new()).unwrap_err();
        assert!(matches!(err, AuditError::InvalidEntry { .. }), "{err:?}");
    }
    let err = w
        .append("x", fields(json!({"big": "x".repeat(audit::MAX_LINE_LEN)})))
        .unwrap_err();
    assert!(matches!(err, AuditError::InvalidEntry { .. }), "{err:?}");
    assert_eq!(w.last_seq(), 1);
    drop(w);
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn checkpoint_detects_truncation_at_the_end() {
    let (_dir, path) = log_with(5);
    let w = AuditWriter::open(&path, &KEY).unwrap();
    let checkpoint = w.checkpoint().unwrap();
    assert_eq!(checkpoint.seq, 5);
    assert_eq!(Some(checkpoint.mac.as_str()), w.last_mac());
    drop(w);
    assert_eq!(
        audit::verify_checkpoint(&path, &KEY, &checkpoint).unwrap(),
        5
    );
    // Cutting the last two lines keeps the chain valid, but not the checkpoint.
    let mut ls = lines(&path);
    ls.truncate(3);
    write_lines(&path, &ls);
    assert_eq!(audit::verify(&path, &KEY).unwrap(), 3);
    let err = audit::verify_checkpoint(&path, &KEY, &checkpoint).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::CheckpointMismatch {
                checkpoint_seq: 5,
                entries: 3
            }
        ),
        "{err:?}"
    );
    // A checkpoint whose MAC does not match the entry at its seq.
    let mut wrong = checkpoint.clone();
    wrong.seq = 2;
    let err = audit::verify_checkpoint(&path, &KEY, &wrong).unwrap_err();
    assert!(
        matches!(err, AuditError::CheckpointMismatch { .. }),
        "{err:?}"
    );
}

#[test]
fn empty_missing_and_read_limits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    assert!(matches!(
        audit::verify(&path, &KEY),
        Err(AuditError::NotFound { .. })
    ));
    assert!(audit::read_entries(&path, None).unwrap().is_empty());
    let w = AuditWriter::open(&path, &KEY).unwrap();
    assert_eq!(w.last_seq(), 0);
    assert!(w.checkpoint().is_none());
    drop(w);
    assert_eq!(audit::verify(&path, &KEY).unwrap(), 0);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let (_d, path) = log_with(4);
    assert_eq!(audit::read_entries(&path, None).unwrap().len(), 4);
    assert!(audit::read_entries(&path, Some(0)).unwrap().is_empty());
    assert_eq!(audit::read_entries(&path, Some(10)).unwrap().len(), 4);
    let last_two = audit::read_entries(&path, Some(2)).unwrap();
    assert_eq!(last_two[0]["seq"], 3);
    assert_eq!(last_two[1]["seq"], 4);
}

#[test]
fn append_returns_the_entry_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut w = AuditWriter::open(&path, &KEY).unwrap();
    let e1 = w.append("one", fields(json!({"k": "v"}))).unwrap();
    let e2 = w.append("two", Map::new()).unwrap();
    assert_eq!(e1["prev"], GENESIS_PREV);
    let ls = lines(&path);
    assert_eq!(serde_json::from_str::<Value>(&ls[0]).unwrap(), e1);
    assert_eq!(serde_json::from_str::<Value>(&ls[1]).unwrap(), e2);
    assert_eq!(
        e2["prev"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(ls[0].as_bytes()))
    );
    let ts = e1["ts"].as_str().unwrap();
    assert!(
        ts.ends_with('Z') && ts.len() == "2026-01-01T00:00:00.000000Z".len(),
        "{ts}"
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Any strings (control characters, quotes, non-ASCII) and integers round-trip through
        /// the canonical form and verify; flipping any byte of the file is detected.
        #[test]
        fn arbitrary_fields_verify(
            event in "[a-z.]{1,12}",
            entries in proptest::collection::btree_map("\\PC{0,8}|[\\x00-\\x1f\"\\\\]{1,4}", prop_oneof![
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<String>().prop_map(Value::from),
                any::<bool>().prop_map(Value::from),
            ], 0..5),
            flip in any::<prop::sample::Index>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.jsonl");
            let mut w = AuditWriter::open(&path, &KEY).unwrap();
            let mut map: Map<String, Value> = entries.into_iter().collect();
            for reserved in audit::RESERVED_FIELDS {
                map.remove(reserved);
            }
            let written = w.append(&event, map.clone()).unwrap();
            w.append("second", map).unwrap();
            drop(w);
            prop_assert_eq!(audit::verify(&path, &KEY).unwrap(), 2);
            prop_assert_eq!(&audit::read_entries(&path, Some(2)).unwrap()[0], &written);

            let mut bytes = std::fs::read(&path).unwrap();
            let i = flip.index(bytes.len());
            bytes[i] ^= 0x01;
            std::fs::write(&path, &bytes).unwrap();
            prop_assert!(audit::verify(&path, &KEY).is_err());
        }
    }
}

#[test]
fn a_moved_or_replaced_log_refuses_appends_and_the_moved_file_records_why() {
    use keyveil_vault::audit::{PATH_CHANGED_EVENT, PathChange};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut w = AuditWriter::open(&path, &KEY).unwrap();
    w.append("test.event", Map::new()).unwrap();
    w.check_path().unwrap();

    // Moved aside: nothing at the path. The append is refused and writes nowhere.
    let aside = dir.path().join("aside.jsonl");
    std::fs::rename(&path, &aside).unwrap();
    let before = std::fs::read(&aside).unwrap();
    match w.append("test.event", Map::new()) {
        Err(AuditError::PathChanged { path: p, change }) => {
            assert_eq!(p, path);
            assert_eq!(change, PathChange::Missing);
        }
        other => panic!("expected PathChanged, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        before,
        "a refused append wrote"
    );
    assert!(!path.exists());
    let msg = w.check_path().unwrap_err().to_string();
    assert!(
        msg.contains("moved away or deleted") && msg.contains("audit.jsonl"),
        "{msg}"
    );

    // An identical copy renamed over the path is still another file.
    std::fs::copy(&aside, dir.path().join("copy")).unwrap();
    std::fs::rename(dir.path().join("copy"), &path).unwrap();
    assert!(matches!(
        w.check_path(),
        Err(AuditError::PathChanged {
            change: PathChange::Replaced,
            ..
        })
    ));

    // The writer can still close its chain in the moved file, which then verifies.
    w.record_path_change(PathChange::Replaced).unwrap();
    let moved = lines(&aside);
    assert_eq!(moved.len(), 2);
    assert!(moved[1].contains(PATH_CHANGED_EVENT) && moved[1].contains("\"replaced\""));
    assert_eq!(audit::verify(&aside, &KEY).unwrap(), 2);
    assert_eq!(lines(&path).len(), 1, "the copy at the path was written to");

    // Moved back: appends work again and chain on, after a gap entry for the refused one.
    std::fs::rename(&aside, &path).unwrap();
    w.check_path().unwrap();
    w.append("test.event", Map::new()).unwrap();
    let report = audit::verify_report(&path, &KEY, None).unwrap();
    assert_eq!(report.entries, 4);
    assert_eq!(report.gaps.len(), 1);
    assert_eq!(report.gaps[0].refused, 1);
    assert_eq!(report.gaps[0].events.get("test.event"), Some(&1));
}

/// Issue 21, item 7: a log cut short and ended with a garbage line cannot be continued; what
/// it still proves is measured against the sealed checkpoint, so moving it aside cannot hide
/// the cut.
#[test]
fn salvage_measures_a_cut_log_against_the_sealed_checkpoint() {
    let (_d, path) = log_with(6);
    let cp = AuditWriter::open(&path, &KEY)
        .unwrap()
        .checkpoint()
        .unwrap();
    assert_eq!(cp.seq, 6);
    // Intact: everything verifies and the checkpoint is found.
    let s = audit::salvage(&path, &KEY, Some(&cp)).unwrap();
    assert_eq!(
        (s.verified, s.first_bad.is_none(), s.sealed_found),
        (6, true, true)
    );
    assert_eq!(s.missing(), 0);
    // Cut the last two lines, append garbage.
    let mut l = lines(&path);
    l.truncate(4);
    l.push("{\"seq\":5,\"garbage\":true}".to_owned());
    write_lines(&path, &l);
    assert!(matches!(
        AuditWriter::open(&path, &KEY),
        Err(AuditError::BadLine { .. })
    ));
    let s = audit::salvage(&path, &KEY, Some(&cp)).unwrap();
    assert_eq!(s.verified, 4);
    assert_eq!(s.first_bad.as_ref().map(|b| b.0), Some(5));
    assert_eq!(s.sealed_seq, Some(6));
    assert!(!s.sealed_found);
    assert_eq!(s.missing(), 2);
    // No checkpoint: nothing can be said to be missing.
    assert_eq!(audit::salvage(&path, &KEY, None).unwrap().missing(), 0);
    // A forged line in the middle: verified stops before it.
    let (_d2, path2) = log_with(5);
    let mut l = lines(&path2);
    l[2] = l[2].replace("\"dev\"", "\"prod\"");
    write_lines(&path2, &l);
    let s = audit::salvage(&path2, &KEY, None).unwrap();
    assert_eq!((s.verified, s.first_bad.map(|b| b.0)), (2, Some(3)));
}

/// `verify_and_read` gives the last `limit` entries of the very bytes it verified (the lease
/// reaper acts on them), and nothing when any line fails: a forged line anywhere is an error,
/// never an entry.
#[test]
fn verify_and_read_returns_only_what_it_verified() {
    let (_d, path) = log_with(5);
    let (report, entries) = audit::verify_and_read(&path, &KEY, None, 3).unwrap();
    assert_eq!(report.entries, 5);
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![3, 4, 5]);
    assert!(
        audit::verify_and_read(&path, &KEY, None, 0)
            .unwrap()
            .1
            .is_empty()
    );

    // A forged first line (the agent's): the whole read fails.
    let mut text = std::fs::read_to_string(&path).unwrap();
    let forged = json!({"seq": 1, "ts": "2026-01-01T00:00:00Z", "event": "dynamic_mint",
        "prev": GENESIS_PREV, "mac": "00".repeat(32)});
    text.insert_str(0, &format!("{forged}\n"));
    std::fs::write(&path, text).unwrap();
    assert!(audit::verify_and_read(&path, &KEY, None, 100).is_err());
}
