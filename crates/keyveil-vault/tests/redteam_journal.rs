//! Red team against the vault's journal, as a same-uid agent without the passphrase: it can
//! read, cut, replace and re-time every file next to the vault. Attacks that hold are plain
//! tests; one that works is kept `#[ignore = "LEAK: ..."]` until it is fixed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use keyveil_vault::journal::JOURNAL_HEADER_LEN;
use keyveil_vault::{
    AuditCheckpoint, Environment, KdfParams, SealedValue, SecretValue, Source, Variable, Vault,
    VaultError,
};

const PASS: &[u8] = b"passphrase-FOR-tests-7c1d";
const PARAMS: KdfParams = KdfParams::MINIMUM;

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

fn put(vault: &mut Vault, name: &str, i: usize) {
    let sealed = SealedValue::seal(SecretValue::new(value(i))).unwrap();
    vault
        .data_mut()
        .environments
        .get_mut("dev")
        .unwrap()
        .variables
        .insert(name.into(), Variable::new(Some(sealed), "", Source::Human));
}

fn get(vault: &Vault, name: &str) -> Option<String> {
    let var = vault.data().environments["dev"].variables.get(name)?;
    Some(var.value.as_ref()?.open().unwrap().expose().to_owned())
}

fn checkpoint(vault: &mut Vault, seq: u64) {
    vault.data_mut().audit_checkpoint = Some(AuditCheckpoint {
        seq,
        mac: format!("{seq:064x}"),
    });
}

/// The journal keeps every state since the last compaction (unlock), so an agent injected
/// *now*, holding no earlier copy of any file, can cut it at a record boundary and bring back
/// the audit checkpoint of hours ago (then truncate the audit log to it unnoticed) and a value
/// the human rotated before the agent was compromised. Restoring an old vault file needs a copy
/// taken back then; before the journal, the checkpoint was in the vault file within 10 s.
#[test]
fn a_journal_cut_cannot_roll_back_past_what_the_agent_could_have_copied() {
    let (_dir, path, mut vault) = new_vault();
    // Unlock: the compacted vault file holds checkpoint 5 and the compromised value.
    put(&mut vault, "API", 1);
    checkpoint(&mut vault, 5);
    vault.save().unwrap();
    // The human's session: the value is rotated after a sweep, the audit log grows.
    put(&mut vault, "API", 2);
    vault.save_variable("dev", "API").unwrap();
    for seq in 6..=40 {
        checkpoint(&mut vault, seq);
        vault.save_audit_checkpoint().unwrap();
    }
    drop(vault);
    // The agent, injected only now, cuts the journal to its header (or any record boundary).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(journal(&path))
        .unwrap();
    f.set_len(JOURNAL_HEADER_LEN as u64).unwrap();
    drop(f);
    match Vault::open(&path, PASS) {
        Err(_) => {}
        Ok(v) => {
            assert_eq!(
                v.data().audit_checkpoint.as_ref().map(|c| c.seq),
                Some(40),
                "the audit checkpoint was rolled back by a journal cut"
            );
            assert_eq!(get(&v, "API"), Some(value(2)), "the rotation was undone");
        }
    }
}

/// Overwriting the vault file in place (same inode, same size: the payload is padded) with an
/// older copy and restoring its modification time must not slip past the append's check: the
/// broker would acknowledge changes whose journal names a file no longer on disk, lost at the
/// next unlock.
#[test]
fn an_in_place_same_size_overwrite_with_its_mtime_restored_stops_the_append() {
    let (_dir, path, mut vault) = new_vault();
    put(&mut vault, "API", 0);
    vault.save().unwrap();
    let old = std::fs::read(&path).unwrap();
    put(&mut vault, "API", 1);
    vault.save().unwrap();
    let now = std::fs::read(&path).unwrap();
    assert_eq!(old.len(), now.len(), "padding keeps the size");
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(&old).unwrap();
        f.set_modified(mtime).unwrap();
    }
    put(&mut vault, "API", 2);
    assert!(
        matches!(
            vault.save_variable("dev", "API"),
            Err(VaultError::ChangedOnDisk { .. })
        ),
        "an append was acknowledged against a vault file that was replaced"
    );
}

/// Runs `f` on a thread and says whether it returned within `secs`.
fn finishes_within(secs: u64, f: impl FnOnce() + Send + 'static) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(secs)).is_ok()
}

fn mkfifo(p: &Path) {
    let _ = std::fs::remove_file(p);
    let ok = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// A FIFO at the journal's path must not hang an unlock (reading it) or a save (emptying it).
#[test]
fn a_fifo_journal_hangs_neither_unlock_nor_save() {
    let (dir, path, mut vault) = new_vault();
    put(&mut vault, "API", 1);
    vault.save_variable("dev", "API").unwrap();
    mkfifo(&journal(&path));
    let p = path.clone();
    assert!(
        finishes_within(5, move || {
            let _ = Vault::open(&p, PASS);
        }),
        "unlock hung on a FIFO journal"
    );
    assert!(
        finishes_within(5, move || {
            let _ = vault.save();
        }),
        "a save hung emptying a FIFO journal"
    );
    drop(dir);
}

/// A symlink at the journal's path is not followed out of the vault's directory when the
/// broker appends or empties it.
#[test]
fn a_symlinked_journal_is_not_written_through() {
    let (dir, path, mut vault) = new_vault();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, journal(&path)).unwrap();
    put(&mut vault, "API", 1);
    let _ = vault.save_variable("dev", "API");
    let _ = vault.save();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

/// Records from another vault of the same user (same passphrase, its own data key), put under
/// this vault's journal header, never apply: the record key comes from the data key.
#[test]
fn records_spliced_from_another_vault_with_the_same_passphrase_never_apply() {
    let (_dir, path, mut vault) = new_vault();
    put(&mut vault, "API", 1);
    vault.save_variable("dev", "API").unwrap();
    let ours = std::fs::read(journal(&path)).unwrap();
    let (_dir2, path2, mut other) = new_vault();
    put(&mut other, "API", 9);
    other.save_variable("dev", "API").unwrap();
    put(&mut other, "API", 8);
    other.save_variable("dev", "API").unwrap();
    let theirs = std::fs::read(journal(&path2)).unwrap();
    // Our header, then their two records.
    let mut spliced = ours[..JOURNAL_HEADER_LEN].to_vec();
    spliced.extend_from_slice(&theirs[JOURNAL_HEADER_LEN..]);
    std::fs::write(journal(&path), &spliced).unwrap();
    match Vault::open(&path, PASS) {
        Err(VaultError::Corrupt { .. }) => {}
        other => panic!("spliced records: {other:?}"),
    }
}

/// Bytes appended past the end the broker wrote (to smuggle records in, or to push the journal
/// over the compaction threshold) are cut off by its next append and never counted.
#[test]
fn junk_appended_behind_the_brokers_back_is_cut_off() {
    let (_dir, path, mut vault) = new_vault();
    put(&mut vault, "API", 1);
    vault.save_variable("dev", "API").unwrap();
    let before = std::fs::metadata(journal(&path)).unwrap().len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(journal(&path))
            .unwrap();
        f.write_all(&vec![0x41; 5 << 20]).unwrap();
    }
    put(&mut vault, "API", 2);
    vault.save_variable("dev", "API").unwrap();
    assert_eq!(
        vault.journal_records(),
        2,
        "still journaled, no forced full save"
    );
    let after = std::fs::metadata(journal(&path)).unwrap().len();
    assert!(after < before * 2 + 64, "junk kept: {after} bytes");
    let v = Vault::open(&path, PASS).unwrap();
    assert_eq!(get(&v, "API"), Some(value(2)));
}
