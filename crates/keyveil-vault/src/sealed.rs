//! [`SealedValue`]: a secret value kept encrypted in memory while it is not in use.
//!
//! An unlocked vault holds every variable's value for as long as the broker stays unlocked. As a
//! [`SealedValue`] each one is XChaCha20-Poly1305 ciphertext under a random key made once per
//! process (never stored, never derived from anything on disk), with a unique nonce per seal (a
//! random 16-byte prefix made with the key, then a 64-bit counter). The plaintext exists only in
//! the [`SecretValue`] that [`SealedValue::open`] returns, a zeroizing buffer the caller drops as
//! soon as the child's environment or the redactor is built.
//!
//! **What this achieves and what it does not.** The key lives in the same process, so anyone who
//! can read the whole process memory (root, a debugger with `CAP_SYS_PTRACE`) can decrypt every
//! value. It shortens how long each value's plaintext sits in memory (from "while unlocked" to
//! "while a spawn is being prepared"), keeps values out of a scan of the heap for the value, and
//! keeps them from lingering in freed memory. It is defence in depth next to the broker's
//! non-dumpable, core-less process (`docs/hardening.md`), not a substitute.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::{Zeroize, Zeroizing};

use crate::{SecretValue, VaultError};

/// Length of the XChaCha20 nonce, in bytes.
const NONCE_LEN: usize = 24;
/// Length of the random per-process part of each nonce, in bytes.
const PREFIX_LEN: usize = 16;
/// Associated data: binds the ciphertext to its purpose.
const AAD: &[u8] = b"keyveil/v1/sealed-in-memory";

/// The per-process sealing key and nonce state.
struct Sealer {
    aead: XChaCha20Poly1305,
    prefix: [u8; PREFIX_LEN],
    counter: AtomicU64,
}

static SEALER: OnceLock<Sealer> = OnceLock::new();

/// The process's sealer, made on first use.
fn sealer() -> Result<&'static Sealer, VaultError> {
    if let Some(s) = SEALER.get() {
        return Ok(s);
    }
    let no_random = |e: getrandom::Error| VaultError::NoRandomness {
        reason: e.to_string(),
    };
    let mut key = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut key[..]).map_err(no_random)?;
    let mut prefix = [0u8; PREFIX_LEN];
    getrandom::fill(&mut prefix).map_err(no_random)?;
    let made = Sealer {
        aead: XChaCha20Poly1305::new(Key::from_slice(&key[..])),
        prefix,
        counter: AtomicU64::new(0),
    };
    // Two threads may race here; one sealer wins and is used by everyone.
    Ok(SEALER.get_or_init(|| made))
}

/// A secret value, encrypted in memory under a per-process key (see the module documentation).
///
/// Read it only through [`SealedValue::open`], which returns a zeroizing [`SecretValue`]: drop
/// that as soon as it has been used. `Debug` prints `[sealed]`; there is no `Display`.
/// Serialised as the plain JSON string of the value (opened for the moment of serialisation:
/// only ever inside the encrypted vault payload) and sealed again when deserialised. No
/// `PartialEq`: two seals of one value differ, so comparing sealed bytes says nothing about the
/// values (open both to compare).
#[derive(Clone)]
pub struct SealedValue {
    nonce: [u8; NONCE_LEN],
    /// Ciphertext followed by the 16-byte Poly1305 tag.
    ciphertext: Box<[u8]>,
}

impl SealedValue {
    /// Seals `value` (which is zeroized when it drops at the end of this call).
    ///
    /// # Errors
    /// [`VaultError::NoRandomness`] if the per-process key cannot be made (first use only).
    pub fn seal(value: SecretValue) -> Result<SealedValue, VaultError> {
        let s = sealer()?;
        let mut nonce = [0u8; NONCE_LEN];
        let (prefix, count) = nonce.split_at_mut(PREFIX_LEN);
        prefix.copy_from_slice(&s.prefix);
        count.copy_from_slice(&s.counter.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        let ciphertext = s
            .aead
            .encrypt(
                XNonce::from_slice(&nonce),
                chacha20poly1305::aead::Payload {
                    msg: value.expose().as_bytes(),
                    aad: AAD,
                },
            )
            .map_err(|_| VaultError::SealedValue {
                reason: "encryption failed",
            })?;
        Ok(SealedValue {
            nonce,
            ciphertext: ciphertext.into_boxed_slice(),
        })
    }

    /// Decrypts the value into a zeroizing buffer. Call it where the value is about to be used
    /// (a child's environment, a redactor) and drop the result right after.
    ///
    /// # Errors
    /// [`VaultError::SealedValue`] if the ciphertext fails authentication, which means the
    /// process's memory was changed: nothing a caller can fix but a restart.
    pub fn open(&self) -> Result<SecretValue, VaultError> {
        let s = sealer()?;
        let plain = s
            .aead
            .decrypt(
                XNonce::from_slice(&self.nonce),
                chacha20poly1305::aead::Payload {
                    msg: &self.ciphertext,
                    aad: AAD,
                },
            )
            .map_err(|_| VaultError::SealedValue {
                reason: "it failed authentication",
            })?;
        match String::from_utf8(plain) {
            Ok(s) => Ok(SecretValue::new(s)),
            Err(e) => {
                let mut bytes = e.into_bytes();
                bytes.zeroize();
                Err(VaultError::SealedValue {
                    reason: "it is not UTF-8",
                })
            }
        }
    }

    /// Length of the value in bytes (UTF-8), without opening it.
    pub fn len(&self) -> usize {
        self.ciphertext.len().saturating_sub(16)
    }

    /// Whether the value is the empty string, without opening it.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[sealed]")
    }
}

impl Serialize for SealedValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let open = self.open().map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(open.expose())
    }
}

impl<'de> Deserialize<'de> for SealedValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SealedValue, D::Error> {
        let value = SecretValue::new(String::deserialize(deserializer)?);
        SealedValue::seal(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// A value made at test time, never a literal.
    fn fresh() -> String {
        let mut b = [0u8; 24];
        getrandom::fill(&mut b).unwrap();
        format!("sv_{}", hex::encode(b))
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn round_trip_and_length() {
        let v = fresh();
        let s = SealedValue::seal(SecretValue::new(v.clone())).unwrap();
        assert_eq!(s.open().unwrap().expose(), v);
        assert_eq!(s.len(), v.len());
        assert!(!s.is_empty());
        let empty = SealedValue::seal(SecretValue::new(String::new())).unwrap();
        assert!(empty.is_empty() && empty.open().unwrap().expose().is_empty());
        // Non-ASCII survives.
        let u = format!("{}-é✓\u{0}", fresh());
        assert_eq!(
            SealedValue::seal(SecretValue::new(u.clone()))
                .unwrap()
                .open()
                .unwrap()
                .expose(),
            u
        );
    }

    #[test]
    fn the_sealed_bytes_do_not_hold_the_value_in_any_common_encoding() {
        let v = fresh();
        let s = SealedValue::seal(SecretValue::new(v.clone())).unwrap();
        let mut held = s.nonce.to_vec();
        held.extend_from_slice(&s.ciphertext);
        for form in [
            v.as_bytes().to_vec(),
            hex::encode(v.as_bytes()).into_bytes(),
            v.as_bytes().iter().rev().copied().collect(),
            // Any 8-byte window of the value.
            v.as_bytes()[4..12].to_vec(),
        ] {
            assert!(!contains(&held, &form));
        }
        // Sealing the same value twice gives different bytes (unique nonces).
        let t = SealedValue::seal(SecretValue::new(v)).unwrap();
        assert_ne!(s.nonce, t.nonce);
        assert_ne!(s.ciphertext, t.ciphertext);
    }

    #[test]
    fn debug_prints_no_value() {
        let v = fresh();
        let s = SealedValue::seal(SecretValue::new(v.clone())).unwrap();
        let shown = format!("{s:?} {s:#?} {:?}", Some(&s));
        assert!(!shown.contains(&v) && shown.contains("[sealed]"), "{shown}");
        assert!(!shown.contains(&hex::encode(&s.ciphertext[..8])));
    }

    #[test]
    fn a_changed_byte_is_refused_without_showing_anything() {
        let v = fresh();
        let s = SealedValue::seal(SecretValue::new(v.clone())).unwrap();
        for i in [0, s.ciphertext.len() / 2, s.ciphertext.len() - 1] {
            let mut bad = s.clone();
            let mut ct = bad.ciphertext.to_vec();
            ct[i] ^= 1;
            bad.ciphertext = ct.into_boxed_slice();
            let e = bad.open().unwrap_err().to_string();
            assert!(e.contains("sealed") && !e.contains(&v), "{e}");
        }
        let mut bad = s.clone();
        bad.nonce[3] ^= 1;
        assert!(bad.open().is_err());
    }

    #[test]
    fn serde_carries_the_plain_string_and_seals_again() {
        let v = fresh();
        let s = SealedValue::seal(SecretValue::new(v.clone())).unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, serde_json::to_string(&v).unwrap());
        let back: SealedValue = serde_json::from_str(&json).unwrap();
        assert_ne!(back.ciphertext, s.ciphertext);
        assert_eq!(back.open().unwrap().expose(), v);
    }
}
