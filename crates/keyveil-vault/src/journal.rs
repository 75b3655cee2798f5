//! The vault's journal: changes to single variables appended, sealed, to a sibling file
//! (`<vault>.journal`), so that storing one value costs one small append and one `fdatasync`
//! instead of re-encrypting and rewriting the whole vault. The format is in
//! `docs/vault-format.md` ("Journal").
//!
//! A journal belongs to exactly one vault file: its header holds the SHA-256 of that file, and
//! every record is authenticated with that header and its sequence number as associated data.
//! A journal whose header names another file is *stale* (left by a crash right after a full
//! save, which already holds its changes) and is ignored. A last record that is incomplete or
//! does not authenticate is a *torn tail* (a crash during an append that was never
//! acknowledged) and is ignored and cut off at the next append; any other record that does not
//! authenticate makes the vault [`VaultError::Corrupt`].

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::format::{self, KEY_LEN, NONCE_LEN, TAG_LEN};
use crate::fsutil;
use crate::{Variable, VaultData, VaultError};

/// First 8 bytes of a journal: ASCII `KVJOURN` and NUL.
pub const JOURNAL_MAGIC: [u8; 8] = *b"KVJOURN\0";

/// The journal format version (big-endian `u16` after the magic).
pub const JOURNAL_VERSION: u16 = 1;

/// Header length: magic (8), version (2), SHA-256 of the vault file it applies to (32).
pub const JOURNAL_HEADER_LEN: usize = 8 + 2 + 32;

/// HKDF info string of the journal's record key (derived from the data key like the audit key).
pub const JOURNAL_KEY_INFO: &[u8] = b"keyveil/v1/journal-key";

/// Largest sealed record (ciphertext and tag) a reader accepts, in bytes.
pub const MAX_RECORD_LEN: usize = 1 << 20;

/// A journal past this many bytes is folded into the vault file by the next change instead of
/// growing further (a full save), so reading it at unlock stays cheap.
pub const COMPACT_AT_BYTES: u64 = 4 << 20;

/// Bytes before a record's ciphertext: its length (`u32`, big-endian) and its nonce.
const RECORD_PREFIX: usize = 4 + NONCE_LEN;

/// One change as sealed in a record: a variable's whole new state (`null` when it was
/// removed). The audit checkpoint is never journaled (`Vault::save_audit_checkpoint`).
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum ChangeRef<'a> {
    /// Variable `name` of `environment` is now `variable` (`None`: removed).
    Variable {
        environment: &'a str,
        name: &'a str,
        variable: Option<&'a Variable>,
    },
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Change {
    Variable {
        environment: String,
        name: String,
        variable: Option<Box<Variable>>,
    },
}

/// What the owner of a vault knows about its journal file.
#[derive(Debug, Clone, Default)]
pub(crate) struct JournalState {
    /// Whether the file on disk has a header for the current vault file (else the next append
    /// starts it afresh).
    pub(crate) current: bool,
    /// Bytes of header and whole, authenticated records (where the next record goes).
    pub(crate) len: u64,
    /// Records in it (the next record's sequence number is `seq + 1`).
    pub(crate) seq: u64,
    /// Bytes of a torn last record found when it was read (cut off at the next append).
    pub(crate) torn_bytes: u64,
}

/// The journal's path for the vault at `path`: a sibling `<file name>.journal`.
pub(crate) fn journal_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".journal");
    path.with_file_name(name)
}

/// `HMAC-SHA256(data_key, "keyveil/v1/journal-key" || 0x01)` (HKDF-Expand, RFC 5869 §2.3).
pub(crate) fn journal_key(data_key: &[u8; KEY_LEN]) -> Zeroizing<[u8; 32]> {
    crate::vault::hmac_sha256(data_key, &[JOURNAL_KEY_INFO, &[1u8]])
}

fn header(base: &[u8; 32]) -> [u8; JOURNAL_HEADER_LEN] {
    let mut h = [0u8; JOURNAL_HEADER_LEN];
    h[..8].copy_from_slice(&JOURNAL_MAGIC);
    h[8..10].copy_from_slice(&JOURNAL_VERSION.to_be_bytes());
    h[10..].copy_from_slice(base);
    h
}

/// Associated data of record `seq`: the journal header, then `seq` as a big-endian `u64`.
fn aad(header: &[u8; JOURNAL_HEADER_LEN], seq: u64) -> [u8; JOURNAL_HEADER_LEN + 8] {
    let mut a = [0u8; JOURNAL_HEADER_LEN + 8];
    a[..JOURNAL_HEADER_LEN].copy_from_slice(header);
    a[JOURNAL_HEADER_LEN..].copy_from_slice(&seq.to_be_bytes());
    a
}

/// Reads the journal next to the vault at `path` (whose file has SHA-256 `base`) and applies
/// its records to `data`, in order. A missing, empty or stale journal applies nothing.
///
/// # Errors
/// [`VaultError::Corrupt`] for a journal whose header is not a journal header, a record other
/// than the last that does not authenticate, or a change that names an environment that does
/// not exist; [`VaultError::Io`].
pub(crate) fn replay(
    path: &Path,
    base: &[u8; 32],
    data_key: &[u8; KEY_LEN],
    data: &mut VaultData,
) -> Result<JournalState, VaultError> {
    let jpath = journal_path(path);
    if not_regular(&jpath) {
        return Err(corrupt_journal(
            "the vault's journal (`<vault>.journal`) is not a regular file (a link, FIFO or device was put in its place)",
        ));
    }
    let bytes = match File::open(&jpath) {
        Ok(f) => {
            let mut bytes = Vec::new();
            f.take(format::MAX_FILE_LEN as u64 + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| VaultError::io("read", &jpath, e))?;
            bytes
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(JournalState::default()),
        Err(e) => return Err(VaultError::io("open", &jpath, e)),
    };
    if bytes.len() > format::MAX_FILE_LEN {
        return Err(corrupt_journal(
            "the vault's journal is larger than the vault size limit",
        ));
    }
    // Shorter than a header: a crash while it was being started; nothing in it was acknowledged.
    let Some(found) = bytes.get(..JOURNAL_HEADER_LEN) else {
        return Ok(JournalState::default());
    };
    if found.get(..8) != Some(&JOURNAL_MAGIC[..])
        || found.get(8..10) != Some(&JOURNAL_VERSION.to_be_bytes()[..])
    {
        return Err(corrupt_journal(
            "the vault's journal (`<vault>.journal`) does not start with a journal header: it was damaged or edited",
        ));
    }
    let head = header(base);
    if found != head {
        // Written for another vault file: its changes are already in this one (a full save
        // ended right before the journal was reset), or the vault file was replaced.
        return Ok(JournalState::default());
    }
    let key = journal_key(data_key);
    let cipher = XChaCha20Poly1305::new(Key::from_slice(&*key));
    let mut state = JournalState {
        current: true,
        len: JOURNAL_HEADER_LEN as u64,
        seq: 0,
        torn_bytes: 0,
    };
    let mut at = JOURNAL_HEADER_LEN;
    while let Some(rest) = bytes.get(at..).filter(|r| !r.is_empty()) {
        let torn = |state: &mut JournalState| state.torn_bytes = rest.len() as u64;
        let Some(len_bytes) = rest.get(..4) else {
            torn(&mut state);
            break;
        };
        let mut len_arr = [0u8; 4];
        len_arr.copy_from_slice(len_bytes);
        let len = u32::from_be_bytes(len_arr) as usize;
        let end = RECORD_PREFIX.saturating_add(len);
        // A length keyveil never writes: zeros (a file extended but never written) are a torn
        // tail, anything else an edit.
        if !(TAG_LEN..=MAX_RECORD_LEN).contains(&len) {
            if rest.iter().all(|b| *b == 0) {
                torn(&mut state);
                break;
            }
            return Err(corrupt_journal(
                "a record of the vault's journal has an impossible length: the journal was damaged or edited",
            ));
        }
        // Running past the end: an append a crash cut short.
        let (Some(nonce), Some(sealed)) =
            (rest.get(4..RECORD_PREFIX), rest.get(RECORD_PREFIX..end))
        else {
            torn(&mut state);
            break;
        };
        let last = end == rest.len();
        let seq = state.seq + 1;
        let mut buf = Zeroizing::new(sealed.to_vec());
        let opened =
            cipher.decrypt_in_place(XNonce::from_slice(nonce), &aad(&head, seq), &mut *buf);
        if opened.is_err() {
            if last {
                torn(&mut state);
                break;
            }
            return Err(corrupt_journal(format!(
                "record {seq} of the vault's journal failed authentication: the journal was edited, reordered or damaged"
            )));
        }
        let change: Change = serde_json::from_slice(&buf).map_err(|e| {
            corrupt_journal(format!(
                "record {seq} of the vault's journal is not a valid change ({:?} error)",
                e.classify()
            ))
        })?;
        apply(data, change, seq)?;
        state.seq = seq;
        at += end;
        state.len = at as u64;
    }
    Ok(state)
}

/// Applies record `seq`'s change to `data`.
fn apply(data: &mut VaultData, change: Change, seq: u64) -> Result<(), VaultError> {
    match change {
        Change::Variable {
            environment,
            name,
            variable,
        } => {
            let env = data.environments.get_mut(&environment).ok_or_else(|| {
                corrupt_journal(format!(
                    "record {seq} of the vault's journal changes an environment the vault does not have"
                ))
            })?;
            match variable {
                Some(v) => {
                    env.variables.insert(name, *v);
                }
                None => {
                    env.variables.remove(&name);
                }
            }
        }
    }
    Ok(())
}

/// Writes one change (a variable's new state, or the audit checkpoint) as record
/// `state.seq + 1` (not yet synced: see [`PendingAppend`]); the caller holds the vault's lock file and has checked
/// that the vault file is still `base`. Starts the journal afresh (header for `base`) when it is
/// stale or missing, and cuts off a torn tail first. On error the file is cut back to
/// `state.len` (best effort) and `state` is unchanged; on success `state` already counts the
/// record.
///
/// # Errors
/// [`VaultError::ChangedOnDisk`] when the journal is shorter than this vault wrote it or its
/// header changed; [`VaultError::TooLarge`] for a record over [`MAX_RECORD_LEN`];
/// [`VaultError::Io`]; [`VaultError::NoRandomness`].
pub(crate) fn append(
    path: &Path,
    base: &[u8; 32],
    data_key: &[u8; KEY_LEN],
    state: &mut JournalState,
    change: &ChangeRef<'_>,
) -> Result<PendingAppend, VaultError> {
    let jpath = journal_path(path);
    let head = header(base);
    // Never follow a link or open a FIFO (which could block) in the journal's place.
    if not_regular(&jpath) {
        return Err(VaultError::ChangedOnDisk { path: jpath });
    }
    let existed = jpath.symlink_metadata().is_ok();
    let mut file = fsutil::private_options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&jpath)
        .map_err(|e| VaultError::io("open", &jpath, e))?;
    let io = |what: &'static str| {
        let jpath = jpath.clone();
        move |e: std::io::Error| VaultError::io(what, &jpath, e)
    };
    let on_disk = file.metadata().map_err(io("stat"))?.len();
    let mut start = state.clone();
    if state.current {
        let mut got = [0u8; JOURNAL_HEADER_LEN];
        let header_ok = on_disk >= start.len && file.read_exact(&mut got).is_ok() && got == head;
        if !header_ok {
            return Err(VaultError::ChangedOnDisk { path: jpath });
        }
    } else {
        start = JournalState {
            current: true,
            len: 0,
            seq: 0,
            torn_bytes: 0,
        };
    }

    let seq = start.seq + 1;
    let plaintext = format::padded_json(change)
        .map_err(|e| VaultError::io("serialise journal record", &jpath, e.into()))?;
    let record = seal_record(data_key, &head, seq, plaintext)?;
    let mut out = Vec::with_capacity(JOURNAL_HEADER_LEN + record.len());
    if start.len == 0 {
        out.extend_from_slice(&head);
    }
    out.extend_from_slice(&record);

    let result = (|| {
        if on_disk != start.len {
            // A torn tail, or a stale journal being started afresh.
            file.set_len(start.len).map_err(io("truncate"))?;
        }
        file.seek(SeekFrom::Start(start.len)).map_err(io("seek"))?;
        file.write_all(&out).map_err(io("append"))
    })();
    if let Err(e) = result {
        let _ = file.set_len(start.len);
        return Err(e);
    }
    let before = std::mem::replace(
        state,
        JournalState {
            current: true,
            len: start.len + out.len() as u64,
            seq,
            torn_bytes: 0,
        },
    );
    Ok(PendingAppend {
        file,
        path: jpath,
        created: !existed,
        cut_to: start.len,
        before,
    })
}

/// A record written to the journal but not yet durable: [`PendingAppend::sync`] makes it so
/// (`fdatasync`, and the directory's `fsync` when the journal was just created). Until then the
/// change must not be acknowledged. The sync needs no access to the vault, so it can run on
/// another thread while the caller writes its audit entry.
#[derive(Debug)]
pub struct PendingAppend {
    file: File,
    path: PathBuf,
    created: bool,
    /// Length to cut the file back to if the sync fails.
    cut_to: u64,
    /// The journal state before this append.
    before: JournalState,
}

impl PendingAppend {
    /// Makes the record durable.
    ///
    /// # Errors
    /// [`VaultError::Io`] when `fdatasync` (or the directory's `fsync`) fails: the record may or
    /// may not be on disk; the caller must undo the change with [`crate::Vault::undo_append`].
    pub fn sync(&self) -> Result<(), VaultError> {
        self.file
            .sync_data()
            .map_err(|e| VaultError::io("fdatasync", &self.path, e))?;
        if self.created {
            fsutil::sync_dir(fsutil::parent_dir(&self.path))?;
        }
        Ok(())
    }

    /// Cuts the record back off (best effort) and gives the journal state before it.
    pub(crate) fn undo(self) -> JournalState {
        let _ = self.file.set_len(self.cut_to);
        let _ = self.file.sync_data();
        self.before
    }
}

/// Seals one record: length, fresh random nonce, ciphertext and tag.
fn seal_record(
    data_key: &[u8; KEY_LEN],
    head: &[u8; JOURNAL_HEADER_LEN],
    seq: u64,
    mut plaintext: Zeroizing<Vec<u8>>,
) -> Result<Vec<u8>, VaultError> {
    let len = plaintext.len() + TAG_LEN;
    if len > MAX_RECORD_LEN {
        return Err(VaultError::TooLarge {
            max_bytes: MAX_RECORD_LEN,
        });
    }
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| VaultError::NoRandomness {
        reason: e.to_string(),
    })?;
    let key = journal_key(data_key);
    XChaCha20Poly1305::new(Key::from_slice(&*key))
        .encrypt_in_place(XNonce::from_slice(&nonce), &aad(head, seq), &mut *plaintext)
        .map_err(|_| VaultError::TooLarge {
            max_bytes: MAX_RECORD_LEN,
        })?;
    let mut out = Vec::with_capacity(RECORD_PREFIX + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&plaintext);
    Ok(out)
}

/// After a full save: empties the journal (its records are in the new vault file). Best
/// effort and not synced: a journal that survives a crash names the previous vault file and is
/// ignored.
pub(crate) fn reset(path: &Path, state: &mut JournalState) {
    let jpath = journal_path(path);
    if not_regular(&jpath) {
        // A link, FIFO or device in its place: removed, never followed or opened.
        let _ = std::fs::remove_file(&jpath);
    } else if (state.len > 0 || jpath.symlink_metadata().is_ok())
        && let Ok(f) = fsutil::private_options().write(true).open(&jpath)
    {
        let _ = f.set_len(0);
    }
    *state = JournalState::default();
}

/// Whether something other than a regular file (a symbolic link, FIFO, socket, device or
/// directory) is at `jpath`. Checked before each open so that a link put there by another
/// process of the user is not followed and a FIFO does not block the broker; the window
/// between the check and the open is not closed (the same user can write the vault's
/// directory anyway).
fn not_regular(jpath: &Path) -> bool {
    matches!(jpath.symlink_metadata(), Ok(m) if !m.file_type().is_file())
}

/// [`VaultError::Corrupt`] for the journal, saying how to open the vault without it.
fn corrupt_journal(what: impl Into<String>) -> VaultError {
    VaultError::corrupt(format!(
        "{} (moving the journal file aside opens the vault as it was before the changes it holds)",
        what.into()
    ))
}
