//! The vault's journal: single-variable saves as sealed appends, crash recovery (torn tails,
//! stale journals) and tampering (edited, reordered, transplanted records).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::{Path, PathBuf};

use keyveil_vault::journal::JOURNAL_HEADER_LEN;
use keyveil_vault::{
    Environment, KdfParams, SealedValue, SecretValue, Source, Variable, Vault, VaultError,
};

const PASS: &[u8] = b"passphrase-FOR-tests-7c1d";
const PARAMS: KdfParams = KdfParams::MINIMUM;

/// Obviously fake values, distinct per index.
fn value(i: usize) -> String {
    format!("FAKE-VALUE-NOT-A-SECRET-{i:04}")
}

fn new_vault() -> (tempfile::TempDir, PathBuf, Vault) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault");
    let mut vault = Vault::create(&path, PASS, PARAMS).unwrap();
    vault
        .data_mut()
        .environments
        .insert("dev".into(), Environment::new("development"));
    vault.save().unwrap();
    (dir, path, vault)
}

fn journal(path: &Path) -> PathBuf {
    path.with_file_name("vault.journal")
}

/// Sets `dev/name` to `value(i)` in memory and journals it.
fn set(vault: &mut Vault, name: &str, i: usize) {
    let sealed = SealedValue::seal(SecretValue::new(value(i))).unwrap();
    vault
        .data_mut()
        .environments
        .get_mut("dev")
        .unwrap()
        .variables
        .insert(name.into(), Variable::new(Some(sealed), "", Source::Human));
    vault.save_variable("dev", name).unwrap();
}

fn get(vault: &Vault, name: &str) -> Option<String> {
    let var = vault.data().environments["dev"].variables.get(name)?;
    Some(
        var.value
            .as_ref()
            .unwrap()
            .open()
            .unwrap()
            .expose()
            .to_owned(),
    )
}

/// Offsets where each record starts (after the header).
fn record_starts(bytes: &[u8]) -> Vec<usize> {
    let mut at = JOURNAL_HEADER_LEN;
    let mut out = Vec::new();
    while at + 4 <= bytes.len() {
        out.push(at);
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 4 + 24 + len;
    }
    out
}

#[test]
fn a_journaled_change_leaves_the_vault_file_alone_and_survives_reopening() {
    let (_dir, path, mut vault) = new_vault();
    let before = std::fs::read(&path).unwrap();
    set(&mut vault, "A", 1);
    set(&mut vault, "B", 2);
    set(&mut vault, "A", 3);
    vault
        .data_mut()
        .environments
        .get_mut("dev")
        .unwrap()
        .variables
        .remove("B");
    vault.save_variable("dev", "B").unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the vault file is not rewritten"
    );
    assert_eq!(vault.journal_records(), 4);
    let jbytes = std::fs::read(journal(&path)).unwrap();
    for i in 1..=3 {
        let v = value(i);
        assert!(
            !jbytes.windows(v.len()).any(|w| w == v.as_bytes()),
            "a value appears in clear in the journal"
        );
    }
    assert_eq!(
        std::fs::metadata(journal(&path))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    let mut reopened = Vault::open(&path, PASS).unwrap();
    assert_eq!(reopened.journal_records(), 4);
    assert_eq!(get(&reopened, "A").as_deref(), Some(value(3).as_str()));
    assert_eq!(get(&reopened, "B"), None);
    // Compaction folds it into the vault file and empties the journal.
    reopened.compact().unwrap();
    assert_ne!(std::fs::read(&path).unwrap(), before);
    assert_eq!(std::fs::metadata(journal(&path)).unwrap().len(), 0);
    let again = Vault::open(&path, PASS).unwrap();
    assert_eq!(again.journal_records(), 0);
    assert_eq!(get(&again, "A").as_deref(), Some(value(3).as_str()));
    assert_eq!(get(&again, "B"), None);
}

use std::os::unix::fs::PermissionsExt;

#[test]
fn a_torn_last_record_is_dropped_and_cut_off_by_the_next_append() {
    let (_dir, path, mut vault) = new_vault();
    set(&mut vault, "A", 1);
    set(&mut vault, "B", 2);
    let jpath = journal(&path);
    let full = std::fs::read(&jpath).unwrap();
    let starts = record_starts(&full);
    assert_eq!(starts.len(), 2);
    // A crash in the middle of the second append, at every possible cut.
    for cut in (starts[1] + 1..full.len()).step_by(37) {
        std::fs::write(&jpath, &full[..cut]).unwrap();
        let v = Vault::open(&path, PASS).unwrap();
        assert_eq!(v.journal_records(), 1, "cut at {cut}");
        assert_eq!(get(&v, "A").as_deref(), Some(value(1).as_str()));
        assert_eq!(get(&v, "B"), None);
    }
    // Zeros after the last record (a file extended but never written) are a torn tail too.
    let mut zeros = full.clone();
    zeros.extend_from_slice(&[0u8; 300]);
    std::fs::write(&jpath, &zeros).unwrap();
    assert_eq!(Vault::open(&path, PASS).unwrap().journal_records(), 2);

    // The next append after a torn tail cuts it off, and the journal reads whole again.
    std::fs::write(&jpath, &full[..full.len() - 5]).unwrap();
    let mut v = Vault::open(&path, PASS).unwrap();
    set(&mut v, "C", 3);
    let v = Vault::open(&path, PASS).unwrap();
    assert_eq!(v.journal_records(), 2);
    assert_eq!(get(&v, "B"), None);
    assert_eq!(get(&v, "C").as_deref(), Some(value(3).as_str()));
}

#[test]
fn an_edited_or_reordered_record_is_refused() {
    let (_dir, path, mut vault) = new_vault();
    set(&mut vault, "A", 1);
    set(&mut vault, "B", 2);
    set(&mut vault, "C", 3);
    let jpath = journal(&path);
    let full = std::fs::read(&jpath).unwrap();
    let starts = record_starts(&full);
    // Every byte of the first two records (the last one, edited, reads as a torn tail).
    for at in (starts[0]..starts[2]).step_by(7) {
        let mut bad = full.clone();
        bad[at] ^= 0x01;
        std::fs::write(&jpath, &bad).unwrap();
        let r = Vault::open(&path, PASS);
        // A length edited to run past the end reads as a cut there (what a crash leaves, and
        // what truncating the file does anyway); every other edit is refused.
        let k = starts.iter().position(|s| (s + 1..s + 3).contains(&at));
        match (k, r) {
            (_, Err(VaultError::Corrupt { .. })) => {}
            (Some(k), Ok(v)) if v.journal_records() == k as u64 => {}
            (_, other) => panic!("byte {at} edited: {other:?}"),
        }
    }
    // Records 1 and 2 swapped (both the same length): sequence numbers are authenticated.
    let (r1, r2) = (&full[starts[0]..starts[1]], &full[starts[1]..starts[2]]);
    assert_eq!(r1.len(), r2.len());
    let mut swapped = full[..starts[0]].to_vec();
    swapped.extend_from_slice(r2);
    swapped.extend_from_slice(r1);
    swapped.extend_from_slice(&full[starts[2]..]);
    std::fs::write(&jpath, &swapped).unwrap();
    assert!(matches!(
        Vault::open(&path, PASS),
        Err(VaultError::Corrupt { .. })
    ));
    // A record repeated (replayed) in place of the next one.
    let mut replayed = full[..starts[1]].to_vec();
    replayed.extend_from_slice(r1);
    replayed.extend_from_slice(&full[starts[2]..]);
    std::fs::write(&jpath, &replayed).unwrap();
    assert!(matches!(
        Vault::open(&path, PASS),
        Err(VaultError::Corrupt { .. })
    ));
    // A header that is not a journal header.
    let mut header = full.clone();
    header[0] ^= 0xff;
    std::fs::write(&jpath, &header).unwrap();
    assert!(matches!(
        Vault::open(&path, PASS),
        Err(VaultError::Corrupt { .. })
    ));
}

#[test]
fn a_journal_never_applies_to_another_vault_file() {
    let (_dir, path, mut vault) = new_vault();
    set(&mut vault, "A", 1);
    let jpath = journal(&path);
    let old_journal = std::fs::read(&jpath).unwrap();
    // A full save (compaction) writes a new vault file; a crash before the journal is reset
    // leaves the old journal: it names the previous file and is ignored.
    set(&mut vault, "B", 2);
    vault.save().unwrap();
    set(&mut vault, "A", 4);
    vault.save().unwrap();
    std::fs::write(&jpath, &old_journal).unwrap();
    let v = Vault::open(&path, PASS).unwrap();
    assert_eq!(v.journal_records(), 0);
    assert_eq!(get(&v, "A").as_deref(), Some(value(4).as_str()));
    assert_eq!(get(&v, "B").as_deref(), Some(value(2).as_str()));

    // A journal moved next to another vault (another data key, another file) is ignored too.
    let (_dir2, path2, _other) = new_vault();
    std::fs::write(journal(&path2), &old_journal).unwrap();
    let v2 = Vault::open(&path2, PASS).unwrap();
    assert_eq!(v2.journal_records(), 0);
    assert_eq!(get(&v2, "A"), None);
}

#[test]
fn a_changed_vault_file_or_journal_stops_the_append() {
    let (_dir, path, mut vault) = new_vault();
    set(&mut vault, "A", 1);
    let jpath = journal(&path);
    // The journal truncated behind the vault's back (a rollback of the last change).
    let full = std::fs::read(&jpath).unwrap();
    std::fs::write(&jpath, &full[..JOURNAL_HEADER_LEN]).unwrap();
    vault
        .data_mut()
        .environments
        .get_mut("dev")
        .unwrap()
        .variables
        .remove("A");
    assert!(matches!(
        vault.save_variable("dev", "A"),
        Err(VaultError::ChangedOnDisk { .. })
    ));
    // The journal deleted.
    std::fs::remove_file(&jpath).unwrap();
    assert!(matches!(
        vault.save_variable("dev", "A"),
        Err(VaultError::ChangedOnDisk { .. })
    ));

    // The vault file replaced by another process's save.
    let (_dir, path, mut vault) = new_vault();
    let mut other = Vault::open(&path, PASS).unwrap();
    other.save().unwrap();
    let sealed = SealedValue::seal(SecretValue::new(value(9))).unwrap();
    vault
        .data_mut()
        .environments
        .get_mut("dev")
        .unwrap()
        .variables
        .insert("Z".into(), Variable::new(Some(sealed), "", Source::Human));
    assert!(matches!(
        vault.save_variable("dev", "Z"),
        Err(VaultError::ChangedOnDisk { .. })
    ));
    assert!(!journal(&path).exists() || std::fs::metadata(journal(&path)).unwrap().len() == 0);
}

#[test]
fn a_change_in_a_new_environment_falls_back_to_a_full_save() {
    let (_dir, path, mut vault) = new_vault();
    set(&mut vault, "A", 1);
    // An environment that is not in the data: nothing to journal against; a full save.
    vault.save_variable("nowhere", "X").unwrap();
    assert_eq!(vault.journal_records(), 0);
    let v = Vault::open(&path, PASS).unwrap();
    assert_eq!(v.journal_records(), 0);
    assert_eq!(get(&v, "A").as_deref(), Some(value(1).as_str()));
}

#[test]
fn the_audit_checkpoint_is_a_full_save_that_folds_the_journal() {
    let (_dir, path, mut vault) = new_vault();
    set(&mut vault, "A", 1);
    let before = std::fs::read(&path).unwrap();
    vault.data_mut().audit_checkpoint = Some(keyveil_vault::AuditCheckpoint {
        seq: 7,
        mac: format!("{:064x}", 7),
    });
    vault.save_audit_checkpoint().unwrap();
    // Never a journal record: the vault file holds the checkpoint and the journaled change.
    assert_ne!(std::fs::read(&path).unwrap(), before);
    let v = Vault::open(&path, PASS).unwrap();
    assert_eq!(v.journal_records(), 0);
    assert_eq!(v.data().audit_checkpoint.as_ref().unwrap().seq, 7);
    assert_eq!(get(&v, "A").as_deref(), Some(value(1).as_str()));
}
