//! [`Vault`]: an open, decrypted vault bound to its file.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::format::{self, KEY_LEN, KdfParams, NONCE_LEN, SALT_LEN, Slot};
use crate::fsutil;
use crate::journal::{self, JournalState, PendingAppend};
use crate::{VaultData, VaultError};

/// Info string for deriving the audit-log HMAC key from the data key (see [`Vault::audit_key`]).
pub const AUDIT_KEY_INFO: &[u8] = b"keyveil/v1/audit-hmac-key";

/// HKDF info string of the key behind variable-name aliases (see [`Vault::name_alias`]).
pub const ALIAS_KEY_INFO: &[u8] = b"keyveil/v1/name-alias-key";

/// HKDF info string of the factor key (see [`Vault::factor_key`]).
pub const FACTOR_KEY_INFO: &[u8] = b"keyveil/v1/factor-proof-key";

/// Prefix of every variable-name alias.
pub const ALIAS_PREFIX: &str = "HIDDEN_";

/// An open vault: its path, header (key slots), data key and decrypted data.
///
/// The data key is held in a [`Zeroizing`] buffer and wiped on drop; secret values are wiped by
/// [`SecretValue`](crate::SecretValue). `Debug` prints the path, the format version, the KDF
/// parameters and how many environments there are, nothing else.
///
/// A `Vault` does not hold the lock file while open: it takes the lock only inside
/// [`Vault::create`] and [`Vault::save`]. Instead, `save` refuses (with
/// [`VaultError::ChangedOnDisk`]) to overwrite a file that changed since this `Vault` read or
/// wrote it, so two writers can never silently lose each other's updates.
pub struct Vault {
    path: PathBuf,
    slots: Vec<Slot>,
    data_key: Zeroizing<[u8; KEY_LEN]>,
    data: VaultData,
    /// SHA-256 of the file as last read or written by us.
    disk_digest: [u8; 32],
    /// Identity of that file (size, modification time, inode, status-change time), compared before a journal
    /// append instead of re-reading and hashing the whole file.
    disk_meta: Option<FileMeta>,
    /// What we know of the journal next to the file.
    journal: JournalState,
}

/// Size, modification time and (on Unix) device, inode and status-change time of a file. The
/// status-change time (`ctime`) cannot be set back by the file's owner, unlike the
/// modification time: an older file of the same size written over this one in place, with its
/// modification time restored, still changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileMeta {
    len: u64,
    modified: Option<std::time::SystemTime>,
    node: (u64, u64),
    changed: (i64, i64),
}

impl FileMeta {
    fn of(meta: &std::fs::Metadata) -> FileMeta {
        #[cfg(unix)]
        let node = {
            use std::os::unix::fs::MetadataExt;
            ((meta.dev(), meta.ino()), (meta.ctime(), meta.ctime_nsec()))
        };
        #[cfg(not(unix))]
        let node = ((0, 0), (0, 0));
        FileMeta {
            len: meta.len(),
            modified: meta.modified().ok(),
            node: node.0,
            changed: node.1,
        }
    }
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("path", &self.path)
            .field("format_version", &format::FORMAT_VERSION)
            .field("kdf_params", &self.kdf_params())
            .field("key_slots", &self.slots.len())
            .field("environments", &self.data.environments.len())
            .finish_non_exhaustive()
    }
}

/// Fills `buf` from the operating system's CSPRNG.
fn os_random(buf: &mut [u8]) -> Result<(), VaultError> {
    getrandom::fill(buf).map_err(|e| VaultError::NoRandomness {
        reason: e.to_string(),
    })
}

fn random_array<const N: usize>() -> Result<[u8; N], VaultError> {
    let mut out = [0u8; N];
    os_random(&mut out)?;
    Ok(out)
}

fn check_new_passphrase(passphrase: &[u8]) -> Result<(), VaultError> {
    if passphrase.is_empty() {
        return Err(VaultError::BadPassphrase {
            reason: "it is empty",
        });
    }
    Ok(())
}

impl Vault {
    /// Creates a new vault file at `path` holding empty [`VaultData`], protected by `passphrase`
    /// with Argon2id `params`, and returns it open.
    ///
    /// Generates a random 32-byte data key, a 16-byte salt and 24-byte nonces (getrandom). The
    /// parent directory must exist; the file is created with mode 0600, atomically, under the
    /// lock file. Takes one Argon2id derivation (≈ 0.1–1 s with sane parameters).
    ///
    /// # Errors
    /// [`VaultError::AlreadyExists`] if anything exists at `path` (it is left untouched);
    /// [`VaultError::WeakKdfParams`] if `params` is outside [`KdfParams::MINIMUM`]..=
    /// [`KdfParams::MAXIMUM`]; [`VaultError::BadPassphrase`] for an empty passphrase;
    /// [`VaultError::Locked`], [`VaultError::Io`], [`VaultError::NoRandomness`].
    pub fn create(path: &Path, passphrase: &[u8], params: KdfParams) -> Result<Vault, VaultError> {
        Vault::create_with(path, passphrase, params, VaultData::default())
    }

    /// [`Vault::create`] with initial contents: the file's first and only write already holds
    /// `data` (settings recorded at `keyveil init`, for one), so no half-made vault is ever on
    /// disk.
    ///
    /// # Errors
    /// As [`Vault::create`].
    pub fn create_with(
        path: &Path,
        passphrase: &[u8],
        params: KdfParams,
        data: VaultData,
    ) -> Result<Vault, VaultError> {
        check_new_passphrase(passphrase)?;
        params.validate()?;
        if path.symlink_metadata().is_ok() {
            return Err(VaultError::AlreadyExists {
                path: path.to_path_buf(),
            });
        }
        let data_key = Zeroizing::new(random_array::<KEY_LEN>()?);
        let mut vault = Vault::build(
            path,
            passphrase,
            params,
            data_key,
            random_array::<SALT_LEN>()?,
            random_array::<NONCE_LEN>()?,
            data,
        )?;
        let bytes = vault.encode(&random_array::<NONCE_LEN>()?)?;
        let _lock = fsutil::lock_exclusive(&fsutil::lock_path(path))?;
        if path.symlink_metadata().is_ok() {
            return Err(VaultError::AlreadyExists {
                path: path.to_path_buf(),
            });
        }
        fsutil::write_atomic(path, &bytes)?;
        vault.disk_digest = format::sha256(&bytes);
        vault.disk_meta = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| FileMeta::of(&m));
        // A journal left by an earlier vault of the same name names another file: reset it.
        journal::reset(path, &mut vault.journal);
        Ok(vault)
    }

    /// Opens and decrypts the vault at `path` with `passphrase`.
    ///
    /// Checks, in order: size limit, magic, version, checksum, layout, KDF parameter bounds (all
    /// before any key derivation), then tries each key slot (one Argon2id derivation per slot),
    /// then authenticates and decrypts the payload with the header as associated data, then
    /// parses the JSON, then applies the changes recorded in the vault's journal
    /// (`<file name>.journal`, see [`Vault::save_variable`]). No file is modified: call
    /// [`Vault::compact`] to fold the journal into the vault file.
    ///
    /// # Errors
    /// [`VaultError::NotFound`]; [`VaultError::WrongPassphrase`];
    /// [`VaultError::Corrupt`] for any damaged or edited byte (magic, checksum, layout, header
    /// bound by the AEAD, payload); [`VaultError::UnsupportedVersion`];
    /// [`VaultError::WeakKdfParams`] for parameters outside the accepted range;
    /// [`VaultError::Io`].
    pub fn open(path: &Path, passphrase: &[u8]) -> Result<Vault, VaultError> {
        let (bytes, meta) = read_limited_meta(path)?;
        let mut vault = Vault::decode(path, &bytes, passphrase)?;
        vault.disk_meta = meta;
        vault.journal =
            journal::replay(path, &vault.disk_digest, &vault.data_key, &mut vault.data)?;
        Ok(vault)
    }

    /// Parses and decrypts `bytes` as the contents of the vault file at `path`.
    fn decode(path: &Path, bytes: &[u8], passphrase: &[u8]) -> Result<Vault, VaultError> {
        let parsed = format::parse(bytes)?;
        let data_key = parsed
            .slots
            .iter()
            .find_map(|slot| slot.unseal(passphrase))
            .ok_or(VaultError::WrongPassphrase)?;
        let plaintext = parsed.decrypt(&data_key)?;
        let data: VaultData = serde_json::from_slice(&plaintext).map_err(|e| {
            // Only the category and position: serde_json's message may quote payload text.
            VaultError::corrupt(format!(
                "the decrypted payload is not valid vault data ({:?} error at line {}, column {}); \
                 was it written by a newer keyveil?",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        Ok(Vault {
            path: path.to_path_buf(),
            slots: parsed.slots,
            data_key,
            data,
            disk_digest: format::sha256(bytes),
            disk_meta: None,
            journal: JournalState::default(),
        })
    }

    /// Builds an in-memory vault from explicit key material (used by `create`, and by the
    /// known-answer tests with fixed inputs).
    fn build(
        path: &Path,
        passphrase: &[u8],
        params: KdfParams,
        data_key: Zeroizing<[u8; KEY_LEN]>,
        salt: [u8; SALT_LEN],
        slot_nonce: [u8; NONCE_LEN],
        data: VaultData,
    ) -> Result<Vault, VaultError> {
        let slot = Slot::seal(passphrase, params, salt, slot_nonce, &data_key)?;
        Ok(Vault {
            path: path.to_path_buf(),
            slots: vec![slot],
            data_key,
            data,
            disk_digest: [0u8; 32],
            disk_meta: None,
            journal: JournalState::default(),
        })
    }

    /// Serialises and encrypts the current data with `payload_nonce`: the complete file bytes.
    fn encode(&self, payload_nonce: &[u8; NONCE_LEN]) -> Result<Vec<u8>, VaultError> {
        let plaintext = format::padded_json(&self.data)
            .map_err(|e| VaultError::io("serialise payload", &self.path, e.into()))?;
        format::seal(&self.slots, &self.data_key, payload_nonce, plaintext)
    }

    /// Whether `passphrase` opens one of this vault's key slots (and yields this vault's data
    /// key). Re-derives Argon2id, so it costs as much as [`Vault::open`]'s key derivation; the
    /// comparison of the unwrapped key is constant-time. Meant as the approval factor: the caller
    /// must rate-limit and audit failures.
    pub fn check_passphrase(&self, passphrase: &[u8]) -> bool {
        check_slots(
            &self.slots,
            &format::sha256(self.data_key.as_ref()),
            passphrase,
        )
    }

    /// An owned handle that does what [`Vault::check_passphrase`] does without borrowing the
    /// vault, so a caller can run the (slow, ≈ 0.1–1 s) Argon2id check on another thread without
    /// holding whatever lock guards the `Vault`. Holds the key slots and the SHA-256 of the data
    /// key, not the data key itself. Reflects the slots at the time it was made (a later
    /// [`Vault::change_passphrase`] is not seen).
    pub fn passphrase_checker(&self) -> PassphraseChecker {
        PassphraseChecker {
            slots: self.slots.clone(),
            key_digest: format::sha256(self.data_key.as_ref()),
        }
    }

    /// The decrypted data.
    pub fn data(&self) -> &VaultData {
        &self.data
    }

    /// The decrypted data, for changing; call [`Vault::save`] to persist.
    pub fn data_mut(&mut self) -> &mut VaultData {
        &mut self.data
    }

    /// Re-encrypts the data with a fresh random payload nonce and replaces the file atomically
    /// (temporary file 0600, fsync, rename, fsync directory) under the exclusive lock file. No
    /// key derivation: the key slots are kept as they are.
    ///
    /// # Errors
    /// [`VaultError::ChangedOnDisk`] if the file is no longer the one this `Vault` last read or
    /// wrote (another process saved it, or it was replaced or deleted): nothing is written.
    /// [`VaultError::Locked`] if another process holds the lock for more than 2 s;
    /// [`VaultError::TooLarge`]; [`VaultError::Io`]; [`VaultError::NoRandomness`].
    pub fn save(&mut self) -> Result<(), VaultError> {
        let bytes = self.encode(&random_array::<NONCE_LEN>()?)?;
        self.replace_file(&bytes)
    }

    /// Writes `bytes` over the file under the lock, if the file is still the one we know.
    fn replace_file(&mut self, bytes: &[u8]) -> Result<(), VaultError> {
        let _lock = fsutil::lock_exclusive(&fsutil::lock_path(&self.path))?;
        match read_limited(&self.path) {
            Ok(current) if format::sha256(&current) == self.disk_digest => {}
            Ok(_) | Err(VaultError::NotFound { .. } | VaultError::Corrupt { .. }) => {
                return Err(VaultError::ChangedOnDisk {
                    path: self.path.clone(),
                });
            }
            Err(e) => return Err(e),
        }
        fsutil::write_atomic(&self.path, bytes)?;
        self.disk_digest = format::sha256(bytes);
        self.disk_meta = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| FileMeta::of(&m));
        // The new file holds every journaled change: the journal starts afresh.
        journal::reset(&self.path, &mut self.journal);
        Ok(())
    }

    /// Persists the current state of one variable (`name` of `environment`, or its removal)
    /// by appending a sealed record to the vault's journal and `fdatasync`ing it, without
    /// rewriting the vault file: the cost is that of the variable, not of the vault. Call it
    /// after changing only that variable through [`Vault::data_mut`]; any other change needs
    /// [`Vault::save`]. Falls back to a full [`Vault::save`] (which empties the journal) when
    /// the environment is not in the data or the journal has grown past
    /// [`journal::COMPACT_AT_BYTES`](crate::journal::COMPACT_AT_BYTES).
    ///
    /// # Errors
    /// [`VaultError::ChangedOnDisk`] if the vault file's size, modification time or inode, or
    /// the journal, is not what this `Vault` last read or wrote: nothing is written.
    /// [`VaultError::Locked`]; [`VaultError::TooLarge`] for a record over
    /// [`journal::MAX_RECORD_LEN`](crate::journal::MAX_RECORD_LEN); [`VaultError::Io`];
    /// [`VaultError::NoRandomness`].
    pub fn save_variable(&mut self, environment: &str, name: &str) -> Result<(), VaultError> {
        match self.save_variable_unsynced(environment, name)? {
            None => Ok(()),
            Some(pending) => self.finish(pending),
        }
    }

    /// [`Vault::save_variable`] in two steps, so that the journal's `fdatasync` can overlap other
    /// work (the audit entry's own sync): writes the record and returns it pending, or `None`
    /// when it did a full save instead (already durable). The caller acknowledges the change
    /// only after [`PendingAppend::sync`] succeeded, and calls [`Vault::undo_append`] if it
    /// failed. No other change may be saved in between.
    ///
    /// # Errors
    /// As [`Vault::save_variable`].
    pub fn save_variable_unsynced(
        &mut self,
        environment: &str,
        name: &str,
    ) -> Result<Option<PendingAppend>, VaultError> {
        let Some(env) = self.data.environments.get(environment) else {
            return self.save().map(|()| None);
        };
        if self.journal.len >= journal::COMPACT_AT_BYTES {
            return self.save().map(|()| None);
        }
        let change = journal::ChangeRef::Variable {
            environment,
            name,
            variable: env.variables.get(name),
        };
        Vault::append_change(
            &self.path,
            &self.disk_digest,
            self.disk_meta.as_ref(),
            &self.data_key,
            &mut self.journal,
            &change,
        )
        .map(Some)
    }

    /// After a failed [`PendingAppend::sync`]: cuts the record back off the journal (best
    /// effort) and forgets it. The caller restores the data it changed in memory.
    pub fn undo_append(&mut self, pending: PendingAppend) {
        self.journal = pending.undo();
    }

    /// Syncs `pending`, undoing it on failure.
    fn finish(&mut self, pending: PendingAppend) -> Result<(), VaultError> {
        match pending.sync() {
            Ok(()) => Ok(()),
            Err(e) => {
                self.undo_append(pending);
                Err(e)
            }
        }
    }

    /// Persists [`VaultData::audit_checkpoint`] with a full save ([`Vault::save`]), never as a
    /// journal record.
    ///
    /// The checkpoint is what lets `audit verify` notice a truncated audit log, and a journal
    /// can be cut at a record boundary by anyone who can write its directory: journaled, a cut
    /// would bring back the checkpoint of the last compaction (hours old), and with it every
    /// variable change since. The full save also folds the journal into the vault file, so a cut
    /// can only undo changes made after the last checkpoint (the broker seals one within 10 s of
    /// the audit log moving, which every change does). Journals written before this rule may
    /// still hold checkpoint records; they are read as before.
    ///
    /// # Errors
    /// As [`Vault::save`].
    pub fn save_audit_checkpoint(&mut self) -> Result<(), VaultError> {
        self.save()
    }

    /// Under the lock file: checks that the vault file is still the one we know (size,
    /// modification time, inode, status-change time), then appends `change` to the journal.
    fn append_change(
        path: &Path,
        digest: &[u8; 32],
        known: Option<&FileMeta>,
        data_key: &[u8; KEY_LEN],
        state: &mut JournalState,
        change: &journal::ChangeRef<'_>,
    ) -> Result<PendingAppend, VaultError> {
        let _lock = fsutil::lock_exclusive(&fsutil::lock_path(path))?;
        let now = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| FileMeta::of(&m));
        if now.is_none() || now.as_ref() != known {
            return Err(VaultError::ChangedOnDisk {
                path: path.to_path_buf(),
            });
        }
        journal::append(path, digest, data_key, state, change)
    }

    /// Folds the journal into the vault file (a full [`Vault::save`]) if it holds any record
    /// or a torn tail; otherwise does nothing. Meant right after [`Vault::open`] (unlock).
    ///
    /// # Errors
    /// As [`Vault::save`].
    pub fn compact(&mut self) -> Result<(), VaultError> {
        if self.journal.seq > 0 || self.journal.torn_bytes > 0 {
            self.save()
        } else {
            Ok(())
        }
    }

    /// How many changes the journal holds that are not yet in the vault file.
    pub fn journal_records(&self) -> u64 {
        self.journal.seq
    }

    /// Replaces all key slots with one slot for `new_passphrase` (fresh salt, `params`) and
    /// saves. The data key, and therefore [`Vault::audit_key`], stays the same.
    ///
    /// # Errors
    /// As [`Vault::save`], plus [`VaultError::BadPassphrase`] and [`VaultError::WeakKdfParams`].
    pub fn change_passphrase(
        &mut self,
        new_passphrase: &[u8],
        params: KdfParams,
    ) -> Result<(), VaultError> {
        check_new_passphrase(new_passphrase)?;
        let slot = Slot::seal(
            new_passphrase,
            params,
            random_array::<SALT_LEN>()?,
            random_array::<NONCE_LEN>()?,
            &self.data_key,
        )?;
        let old = std::mem::replace(&mut self.slots, vec![slot]);
        let result = self.save();
        if result.is_err() {
            self.slots = old;
        }
        result
    }

    /// The 32-byte key for the audit-log HMAC, derived from the data key:
    /// `HMAC-SHA256(key = data_key, message = "keyveil/v1/audit-hmac-key" || 0x01)`, i.e.
    /// HKDF-Expand (RFC 5869 §2.3) with the data key as the pseudorandom key, info
    /// [`AUDIT_KEY_INFO`] and length 32. (HKDF-Extract is skipped: the data key is already 32
    /// uniformly random bytes, RFC 5869 §3.3.) Stable for the life of the vault, across saves and
    /// passphrase changes.
    pub fn audit_key(&self) -> Zeroizing<[u8; 32]> {
        hmac_sha256(&self.data_key, &[AUDIT_KEY_INFO, &[1u8]])
    }

    /// The 32-byte key with which the human's CLI proves it knows the passphrase without sending
    /// it: `HMAC-SHA256(key = data_key, message = "keyveil/v1/factor-proof-key" || 0x01)`
    /// (HKDF-Expand, RFC 5869 §2.3, info [`FACTOR_KEY_INFO`], length 32).
    ///
    /// The broker holds it while unlocked (it holds the data key anyway); the CLI derives the same
    /// key from the passphrase and the vault file with [`factor_key_from_file`]. A process that
    /// sees proofs made with it learns nothing it could not attack offline from the vault file
    /// itself (each guess costs one Argon2id derivation). Stable across saves and passphrase
    /// changes.
    pub fn factor_key(&self) -> Zeroizing<[u8; 32]> {
        hmac_sha256(&self.data_key, &[FACTOR_KEY_INFO, &[1u8]])
    }

    /// The alias agents see for variable `name` of environment `env` when the environment's
    /// policy hides names (`hide_names`): [`ALIAS_PREFIX`] followed by 12 uppercase hex digits
    /// (48 bits) of `HMAC-SHA256(alias_key, env || 0x00 || name)`, where `alias_key` is derived
    /// from the data key like [`Vault::audit_key`] with info [`ALIAS_KEY_INFO`] (HKDF-Expand,
    /// RFC 5869 §2.3).
    ///
    /// Stable for the life of the vault (an agent can keep using an alias across sessions),
    /// different in every vault and environment, and it reveals nothing about the name without
    /// the data key. The result is a valid environment-variable name.
    pub fn name_alias(&self, env: &str, name: &str) -> String {
        let key = hmac_sha256(&self.data_key, &[ALIAS_KEY_INFO, &[1u8]]);
        let mac = hmac_sha256(&key, &[env.as_bytes(), &[0u8], name.as_bytes()]);
        let mut out = String::with_capacity(ALIAS_PREFIX.len() + 12);
        out.push_str(ALIAS_PREFIX);
        for b in mac.iter().take(6) {
            out.push_str(&format!("{b:02X}"));
        }
        out
    }

    /// The vault file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The Argon2id parameters of the first key slot.
    pub fn kdf_params(&self) -> KdfParams {
        self.slots
            .first()
            .map_or(KdfParams::DEFAULT, |slot| slot.params)
    }

    /// The lock file used for `path`: a sibling named `<file name>.lock`, e.g. `vault` →
    /// `vault.lock`. Created (0600) on first use and never deleted.
    pub fn lock_path(path: &Path) -> PathBuf {
        fsutil::lock_path(path)
    }
}

/// The factor key ([`Vault::factor_key`]) of the vault file at `path`, derived from `passphrase`
/// without decrypting the payload: parse the header, unwrap the data key from a key slot (one
/// Argon2id derivation per slot, ≈ 0.1–1 s), derive. The human's CLI calls this so that the
/// passphrase never leaves its process.
///
/// # Errors
/// [`VaultError::NotFound`], [`VaultError::WrongPassphrase`], [`VaultError::Corrupt`],
/// [`VaultError::UnsupportedVersion`], [`VaultError::WeakKdfParams`], [`VaultError::Io`].
pub fn factor_key_from_file(
    path: &Path,
    passphrase: &[u8],
) -> Result<Zeroizing<[u8; 32]>, VaultError> {
    let bytes = read_limited(path)?;
    let parsed = format::parse(&bytes)?;
    let data_key = parsed
        .slots
        .iter()
        .find_map(|slot| slot.unseal(passphrase))
        .ok_or(VaultError::WrongPassphrase)?;
    Ok(hmac_sha256(&data_key, &[FACTOR_KEY_INFO, &[1u8]]))
}

/// Checks a passphrase against a vault's key slots; see [`Vault::passphrase_checker`].
/// `Send + Sync + Clone`; `Debug` shows only the number of slots.
#[derive(Clone)]
pub struct PassphraseChecker {
    slots: Vec<Slot>,
    key_digest: [u8; 32],
}

impl PassphraseChecker {
    /// Whether `passphrase` opens one of the slots and yields the vault's data key (compared by
    /// SHA-256 digest, in constant time). One Argon2id derivation per slot.
    pub fn check(&self, passphrase: &[u8]) -> bool {
        check_slots(&self.slots, &self.key_digest, passphrase)
    }
}

impl fmt::Debug for PassphraseChecker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PassphraseChecker")
            .field("key_slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// Tries every slot (no early exit) and compares what unwraps with the expected key digest.
fn check_slots(slots: &[Slot], key_digest: &[u8; 32], passphrase: &[u8]) -> bool {
    let mut ok = subtle::Choice::from(0u8);
    for slot in slots {
        if let Some(key) = slot.unseal(passphrase) {
            ok |= format::sha256(key.as_ref()).ct_eq(key_digest);
        }
    }
    ok.into()
}

/// HMAC-SHA256 (RFC 2104) of the concatenation of `parts` under a 32-byte key.
pub(crate) fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    // A key shorter than the 64-byte block is zero-padded by HMAC itself; padding it here lets us
    // use the infallible constructor.
    let mut block = Zeroizing::new([0u8; 64]);
    for (dst, src) in block.iter_mut().zip(key.iter()) {
        *dst = *src;
    }
    let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new(&(*block).into());
    for part in parts {
        mac.update(part);
    }
    Zeroizing::new(mac.finalize().into_bytes().into())
}

/// [`read_limited`], with the identity of the file read (from the same handle).
fn read_limited_meta(path: &Path) -> Result<(Vec<u8>, Option<FileMeta>), VaultError> {
    let file = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            VaultError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            VaultError::io("open", path, e)
        }
    })?;
    let meta = file.metadata().ok().map(|m| FileMeta::of(&m));
    let bytes = read_all_limited(file, path)?;
    Ok((bytes, meta))
}

/// Reads the whole file, refusing more than [`format::MAX_FILE_LEN`] bytes.
fn read_limited(path: &Path) -> Result<Vec<u8>, VaultError> {
    let file = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            VaultError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            VaultError::io("open", path, e)
        }
    })?;
    read_all_limited(file, path)
}

fn read_all_limited(file: std::fs::File, path: &Path) -> Result<Vec<u8>, VaultError> {
    let mut bytes = Vec::new();
    file.take(format::MAX_FILE_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| VaultError::io("read", path, e))?;
    if bytes.len() > format::MAX_FILE_LEN {
        return Err(VaultError::corrupt(format!(
            "file is larger than the {}-byte limit",
            format::MAX_FILE_LEN
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Deterministic construction for the known-answer tests.
    use super::*;

    /// Builds a vault from fixed inputs and encodes it with a fixed payload nonce.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn encode_fixed(
        path: &Path,
        passphrase: &[u8],
        params: KdfParams,
        data_key: [u8; KEY_LEN],
        salt: [u8; SALT_LEN],
        slot_nonce: [u8; NONCE_LEN],
        payload_nonce: [u8; NONCE_LEN],
        data: VaultData,
    ) -> Result<Vec<u8>, VaultError> {
        let vault = Vault::build(
            path,
            passphrase,
            params,
            Zeroizing::new(data_key),
            salt,
            slot_nonce,
            data,
        )?;
        vault.encode(&payload_nonce)
    }

    /// Opens `bytes` as if read from `path`.
    pub(crate) fn decode(
        path: &Path,
        bytes: &[u8],
        passphrase: &[u8],
    ) -> Result<Vault, VaultError> {
        Vault::decode(path, bytes, passphrase)
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;

    /// A payload that authenticates but does not parse as `VaultData` must not have its text
    /// (which may hold values) quoted in the error, as serde_json's own messages would.
    #[test]
    fn invalid_payload_error_quotes_no_content() {
        let secret = "SECRET-IN-A-BAD-PAYLOAD-31337";
        let key = [9u8; KEY_LEN];
        let slot = Slot::seal(
            b"pw",
            KdfParams::MINIMUM,
            [1; SALT_LEN],
            [2; NONCE_LEN],
            &key,
        )
        .unwrap();
        for payload in [
            format!(r#"{{"environments":{{"dev":"{secret}"}}}}"#),
            format!(r#"{{"environments":{{}},"audit_checkpoint":{{"seq":"{secret}"}}}}"#),
            format!(r#"{{"environments":{{}}, {secret}"#),
            secret.to_owned(),
        ] {
            let bytes = format::seal(
                std::slice::from_ref(&slot),
                &key,
                &[3; NONCE_LEN],
                Zeroizing::new(payload.into_bytes()),
            )
            .unwrap();
            let err = Vault::decode(Path::new("v"), &bytes, b"pw").unwrap_err();
            assert!(matches!(err, VaultError::Corrupt { .. }), "{err:?}");
            assert!(!err.to_string().contains("SECRET"), "{err}");
            assert!(!format!("{err:?}").contains("SECRET"), "{err:?}");
        }
    }

    #[test]
    fn audit_key_is_hkdf_expand_of_the_data_key() {
        // HKDF-Expand(PRK, info, 32) = HMAC(PRK, info || 0x01) for a single block (RFC 5869).
        let key = [0x0bu8; 32];
        let direct = hmac_sha256(&key, &[b"keyveil/v1/audit-hmac-key\x01"]);
        let parts = hmac_sha256(&key, &[AUDIT_KEY_INFO, &[1]]);
        assert_eq!(*direct, *parts);
        // RFC 4231 test case 2 (key "Jefe"), to pin the HMAC construction itself.
        let mut jefe = [0u8; 32];
        jefe[..4].copy_from_slice(b"Jefe");
        // HMAC zero-pads short keys, so "Jefe" and "Jefe" + 28 zero bytes are the same key.
        let mac = hmac_sha256(&jefe, &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(mac.as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn test_slot() -> &'static (Slot, [u8; KEY_LEN]) {
        static SLOT: std::sync::OnceLock<(Slot, [u8; KEY_LEN])> = std::sync::OnceLock::new();
        SLOT.get_or_init(|| {
            let key = [5u8; KEY_LEN];
            let slot = Slot::seal(
                b"pw",
                KdfParams::MINIMUM,
                [6; SALT_LEN],
                [7; NONCE_LEN],
                &key,
            )
            .unwrap();
            (slot, key)
        })
    }

    mod props {
        use super::*;
        use crate::{Environment, SealedValue, SecretValue, Source, Variable};
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Any values (any Unicode, quotes, control characters) survive padding, sealing,
            /// parsing and decryption unchanged.
            #[test]
            fn payload_round_trips(
                values in proptest::collection::btree_map("[A-Z_][A-Z0-9_]{0,10}", any::<Option<String>>(), 0..6),
                nonce in any::<[u8; NONCE_LEN]>(),
            ) {
                let (slot, key) = test_slot();
                let mut env = Environment::new("prop");
                for (name, value) in &values {
                    env.variables.insert(
                        name.clone(),
                        Variable::new(
                            value.clone().map(|v| SealedValue::seal(SecretValue::new(v)).unwrap()),
                            "",
                            Source::Generated,
                        ),
                    );
                }
                let mut data = VaultData::default();
                data.environments.insert("prop".into(), env);
                let plaintext = format::padded_json(&data).unwrap();
                prop_assert_eq!(plaintext.len() % format::PAD_BLOCK, 0);
                let bytes = format::seal(std::slice::from_ref(slot), key, &nonce, plaintext).unwrap();
                let parsed = format::parse(&bytes).unwrap();
                let back: VaultData = serde_json::from_slice(&parsed.decrypt(key).unwrap()).unwrap();
                let vars = &back.environments["prop"].variables;
                prop_assert_eq!(vars.len(), values.len());
                for (name, value) in &values {
                    prop_assert_eq!(
                        vars[name].value.as_ref().map(|v| v.open().unwrap().expose().to_owned()),
                        value.clone()
                    );
                }
            }

            /// Arbitrary bytes, and every truncation of a valid file, are rejected without panic.
            #[test]
            fn garbage_is_rejected(mut junk in proptest::collection::vec(any::<u8>(), 0..600), cut in any::<prop::sample::Index>()) {
                prop_assert!(format::parse(&junk).is_err());
                junk.splice(0..0, format::MAGIC.iter().copied().chain([0, 1]));
                prop_assert!(format::parse(&junk).is_err());
                let (slot, key) = test_slot();
                let plaintext = format::padded_json(&VaultData::default()).unwrap();
                let bytes = format::seal(std::slice::from_ref(slot), key, &[0; NONCE_LEN], plaintext).unwrap();
                let len = cut.index(bytes.len());
                prop_assert!(format::parse(&bytes[..len]).is_err());
            }
        }
    }
}
