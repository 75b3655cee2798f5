//! The audit log on a full disk (a small tmpfs, filled): gated entries are refused, records
//! use the reserve, the gap is written first. A test binary of its own: it starts `mount` and
//! `umount`, and a process forked while another test reopens a log would hold that log's lock
//! for a moment (flock locks are shared across fork until exec).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::{Path, PathBuf};

use keyveil_vault::audit::{self, AuditWriter};
use serde_json::{Map, Value, json};

const KEY: [u8; 32] = [7u8; 32];

fn fields(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

/// A small tmpfs mounted for a test, unmounted when dropped; `None` (the test then says why it
/// skips) where mounting is not permitted.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    #[allow(clippy::print_stderr)] // says why the test skips
    fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here ({}); run as root to test a full disk",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(SmallFs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with `filler` until a write fails.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let mut byte = [0u8; 1];
        while f.write_all(&byte[..]).is_ok() {
            byte[0] = 1;
        }
        filler
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn on_a_full_disk_gated_entries_are_refused_records_use_the_reserve_and_the_gap_is_written_first() {
    let Some(fs) = SmallFs::mount("1m") else {
        return;
    };
    let path = fs.path().join("audit.jsonl");
    let mut w = AuditWriter::open(&path, &KEY).unwrap();
    w.append("unlock", Map::new()).unwrap();
    assert!(w.reserve_supported(), "tmpfs supports fallocate");
    let filler = fs.fill();
    // A gated entry may still fit in the page the reserve ends in; within a few it is refused.
    let mut refused = None;
    for i in 0..64 {
        match w.append("approve", fields(json!({"grant_id": format!("g-{i}")}))) {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("a gated append is refused on a full disk");
    assert!(
        refused.to_string().contains("No space left on device"),
        "{refused}"
    );
    // Refusals repeated at will never eat into the reserve: nothing is written for them.
    let seq_at_full = w.last_seq();
    assert!(w.ready("run_start", 0).is_err());
    for _ in 0..1000 {
        assert!(w.append("approve", Map::new()).is_err());
    }
    assert!(w.flush_gap().is_err());
    assert_eq!(w.last_seq(), seq_at_full);
    // A writer about to close may spend the reserve on the gap.
    assert!(w.flush_gap_closing().unwrap());
    assert_eq!(w.last_seq(), seq_at_full + 1);
    // What must be written still is: the reserve holds it.
    let mut recorded = 0u64;
    for i in 0..100 {
        w.append_record(
            "revoke",
            fields(json!({"grant_id": format!("g-{i:012x}"), "environment": "prod", "why": "revoked by the user"})),
        )
        .unwrap();
        recorded += 1;
    }
    // The refusals were written first, as one gap entry.
    assert_eq!(w.last_seq(), seq_at_full + 1 + recorded);
    assert!(w.gap().is_none());
    let all = audit::read_entries(&path, None).unwrap();
    let gap = &all[usize::try_from(seq_at_full).unwrap()];
    assert_eq!(gap["event"], json!(audit::GAP_EVENT));
    assert_eq!(
        all.len(),
        usize::try_from(seq_at_full + 1 + recorded).unwrap()
    );
    assert_eq!(
        (gap["lost"].clone(), gap["refused"].clone()),
        (json!(0), json!(1002))
    );
    assert_eq!(gap["events"], json!({"approve": 1001, "run_start": 1}));
    // Space is back: gated entries work again.
    std::fs::remove_file(&filler).unwrap();
    w.append("request", Map::new()).unwrap();
    let report = audit::verify_report(&path, &KEY, None).unwrap();
    assert_eq!(report.gaps.len(), 1);
}
