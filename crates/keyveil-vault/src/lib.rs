//! keyveil's vault: the encrypted vault file format and the hash-chained audit log.
//!
//! Pure and synchronous (no async runtime), no `unsafe`.
//!
//! * [`Vault`]: envelope encryption. A random 32-byte data key encrypts the payload (the JSON of
//!   [`VaultData`]) with XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha); the data key is wrapped,
//!   also with XChaCha20-Poly1305, in a key slot under a key derived from the passphrase with
//!   Argon2id (RFC 9106). The whole header is bound to the payload as associated data. Saves are
//!   atomic and locked. Byte layout: `docs/vault-format.md`.
//! * [`audit`]: JSON Lines, each entry chained to the previous line by SHA-256 and authenticated
//!   with HMAC-SHA256 (RFC 2104) under [`Vault::audit_key`]. Layout: `docs/audit-format.md`.
//! * [`SealedValue`]: variables' values stay encrypted in memory under a per-process key and are
//!   opened into a zeroizing [`SecretValue`] only for the moment they are used.
//!
//! Nothing in this crate prints, logs or puts into an error message a secret value, a
//! passphrase or key material: [`SecretValue`], [`SealedValue`] and [`Vault`] have redacting `Debug`
//! implementations and every error describes *what* failed, never *with what*.
//!
//! ```no_run
//! use keyveil_vault::{Environment, KdfParams, SealedValue, SecretValue, Source, Variable, Vault};
//! # fn main() -> Result<(), keyveil_vault::VaultError> {
//! let path = std::path::Path::new("/tmp/keyveil-example/vault");
//! let mut vault = Vault::create(path, b"correct horse battery staple", KdfParams::DEFAULT)?;
//! let mut env = Environment::new("local development");
//! env.variables.insert(
//!     "API_TOKEN".into(),
//!     Variable::new(
//!         Some(SealedValue::seal(SecretValue::new("s3cr3t".into()))?),
//!         "demo token",
//!         Source::Human,
//!     ),
//! );
//! vault.data_mut().environments.insert("dev".into(), env);
//! vault.save()?;
//!
//! let reopened = Vault::open(path, b"correct horse battery staple")?;
//! assert!(reopened.check_passphrase(b"correct horse battery staple"));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod audit;
mod error;
pub mod format;
mod fsutil;
pub mod journal;
mod model;
mod sealed;
mod vault;

#[cfg(test)]
mod kat;

pub use audit::{AuditError, AuditWriter};
pub use error::VaultError;
pub use format::{FORMAT_VERSION, KdfParams};
pub use fsutil::remove_stale_temp_files;
pub use model::DynamicSource;
pub use model::{
    AuditCheckpoint, AutoApproveRule, BoundIn, Compromise, DEFAULT_MAX_TTL_SECONDS, DenyRule,
    Environment, FactorKind, Factors, MAX_ENVIRONMENT_NAME_LEN, MAX_NAME_LEN, ManifestPin, Policy,
    SecretValue, Settings, Source, StoreRecord, TotpFactor, Variable, VaultData, WriteLeakAction,
    is_valid_environment_name, is_valid_name, is_valid_new_environment_name,
};
pub use sealed::SealedValue;
pub use vault::{
    ALIAS_KEY_INFO, ALIAS_PREFIX, AUDIT_KEY_INFO, FACTOR_KEY_INFO, PassphraseChecker, Vault,
    factor_key_from_file,
};
