//! [`VaultError`]: everything that can go wrong with a vault file, and whose fault it is.

use std::io;
use std::path::PathBuf;

/// An error from creating, opening or saving a vault.
///
/// Each variant says who is at fault and what to do. No variant ever holds a secret value, a
/// passphrase, key material or decrypted payload bytes, so `Display` and `Debug` are safe to log
/// and to show to an agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The vault file does not exist. User: create one (`keyveil init`) or point `KEYVEIL_HOME`
    /// at the right directory.
    #[error("no vault at {path}: create one with `keyveil init` (or check KEYVEIL_HOME)")]
    NotFound {
        /// The path that was looked up.
        path: PathBuf,
    },

    /// [`Vault::create`](crate::Vault::create) found a file already at the path; it was left
    /// untouched. User: open it instead, or move it away first.
    #[error("a vault already exists at {path}; refusing to overwrite it")]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },

    /// No key slot could be opened with this passphrase. User: retry with the right passphrase.
    /// (A deliberately damaged key slot looks the same as a wrong passphrase: the AEAD cannot tell
    /// them apart. Accidental damage is caught earlier by the checksum, as
    /// [`VaultError::Corrupt`].)
    #[error("wrong passphrase for this vault")]
    WrongPassphrase,

    /// The file is damaged or was edited by someone without the key: bad magic, bad checksum,
    /// failed payload authentication, malformed layout, invalid payload JSON. Nothing was
    /// decrypted into use and nothing was overwritten. User: restore the vault from a backup;
    /// investigate who wrote the file.
    #[error(
        "vault file is corrupt or was tampered with: {reason}; the file was left as it is: restore it from a backup"
    )]
    Corrupt {
        /// What check failed. Never contains file contents.
        reason: String,
    },

    /// The file's format version is not one this build reads. User: upgrade keyveil (if the
    /// version is newer) or restore the file (if the version number itself was damaged).
    #[error("unsupported vault format version {found} (this build reads version {supported}); upgrade keyveil", supported = crate::format::FORMAT_VERSION)]
    UnsupportedVersion {
        /// The version number found in the header.
        found: u16,
    },

    /// The Argon2id parameters are outside the accepted range: below
    /// [`KdfParams::MINIMUM`](crate::KdfParams::MINIMUM) (too weak; a downgraded header) or above
    /// [`KdfParams::MAXIMUM`](crate::KdfParams::MAXIMUM) (a header edited to exhaust memory or
    /// time). Caller (on create) or file (on open) is at fault; on open, treat the file as
    /// tampered with.
    #[error("vault KDF parameters rejected ({reason}): m_cost={m_cost_kib} KiB, t_cost={t_cost}, p_cost={p_cost}; accepted: m_cost {min_m}..={max_m} KiB, t_cost {min_t}..={max_t}, p_cost {min_p}..={max_p}",
        min_m = crate::KdfParams::MINIMUM.m_cost_kib, max_m = crate::KdfParams::MAXIMUM.m_cost_kib,
        min_t = crate::KdfParams::MINIMUM.t_cost, max_t = crate::KdfParams::MAXIMUM.t_cost,
        min_p = crate::KdfParams::MINIMUM.p_cost, max_p = crate::KdfParams::MAXIMUM.p_cost)]
    WeakKdfParams {
        /// Memory cost found, in KiB.
        m_cost_kib: u32,
        /// Time cost (passes) found.
        t_cost: u32,
        /// Parallelism (lanes) found.
        p_cost: u32,
        /// `"below the minimum"` or `"above the maximum"`.
        reason: &'static str,
    },

    /// [`Vault::create`](crate::Vault::create) (or a passphrase change) was given an unusable
    /// passphrase: empty, or longer than Argon2id accepts (2^32 - 1 bytes). Caller: ask the user
    /// for a real passphrase.
    #[error("refusing to use this passphrase: {reason}")]
    BadPassphrase {
        /// Why, e.g. `"it is empty"`. Never contains the passphrase.
        reason: &'static str,
    },

    /// The serialised vault would exceed the size limit (64 MiB). Caller: store less.
    #[error("the vault would be larger than {max_bytes} bytes; refusing to save it")]
    TooLarge {
        /// The limit, in bytes.
        max_bytes: usize,
    },

    /// The operating system's random number generator failed (getrandom). Environment is at
    /// fault; nothing was written.
    #[error("could not get random bytes from the operating system: {reason}")]
    NoRandomness {
        /// The OS error, as text.
        reason: String,
    },

    /// A value sealed in memory ([`SealedValue`](crate::SealedValue)) could not be sealed or
    /// opened: its ciphertext failed authentication, so the process's memory was changed. Nothing
    /// to fix but a restart of the process (`keyveil daemon stop`, then unlock).
    #[error(
        "a value kept sealed in memory could not be used ({reason}): the broker's memory was changed; restart it with `keyveil daemon stop` and unlock again"
    )]
    SealedValue {
        /// What failed. Never contains the value.
        reason: &'static str,
    },

    /// Another process holds the vault's lock file (another keyveil process is saving, or
    /// creating, this vault). Caller: retry later; if it persists, find the other process.
    #[error("the vault is locked by another keyveil process (lock file {path}); retry in a moment")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },

    /// The vault file on disk changed (or vanished) since this process opened or last saved it,
    /// so saving would silently discard someone else's changes. Nothing was written. Caller:
    /// reopen the vault, reapply the change, save again.
    #[error(
        "the vault file {path} was changed by another process since it was opened; nothing was saved: reopen it and retry"
    )]
    ChangedOnDisk {
        /// The vault file.
        path: PathBuf,
    },

    /// An operating-system error while reading or writing a file (permissions, disk full, ...).
    /// User/environment is at fault; the message says which file and what operation.
    #[error("vault I/O error: {op} {path}: {source}")]
    Io {
        /// What was being done (`"read"`, `"write temporary file"`, `"rename"`, ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl VaultError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> VaultError {
        VaultError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(reason: impl Into<String>) -> VaultError {
        VaultError::Corrupt {
            reason: reason.into(),
        }
    }
}
