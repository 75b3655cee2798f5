//! The signed head of a CI broker's audit chain (`docs/ci.md`): an Ed25519 key pair made at
//! `keyveil ci start` and held in the broker's memory only, the message it signs at
//! `ci finish` (the chain's length and the SHA-256 of its last line, which through every
//! line's `prev` commits to the whole chain), the artifact's files, and their verification
//! by a reader who holds the public key from the job log and never the audit MAC key.

use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// The artifact's copy of the chain.
pub(crate) const CHAIN_FILE: &str = "audit.jsonl";
/// The artifact's signed head.
pub(crate) const HEAD_FILE: &str = "audit-head.json";
/// What `format` says in [`HEAD_FILE`].
const FORMAT: &str = "keyveil-ci-audit-head-v1";
/// How a public key is written: this prefix and 64 lowercase hex digits.
const KEY_PREFIX: &str = "ed25519:";

/// A signing key that lives in memory only: never written, never printed (its public half is).
pub(crate) struct Signer {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.public_key())
    }
}

impl Signer {
    /// A new random key pair.
    ///
    /// Errors: the system's random source failed.
    pub(crate) fn generate() -> Result<Signer, String> {
        let rng = SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| "cannot make an Ed25519 key pair".to_owned())?;
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref())
            .map_err(|_| "cannot read the Ed25519 key pair just made".to_owned())?;
        Ok(Signer { pair })
    }

    /// The public key, as `ed25519:` and 64 lowercase hex digits.
    pub(crate) fn public_key(&self) -> String {
        format!(
            "{KEY_PREFIX}{}",
            hex::encode(self.pair.public_key().as_ref())
        )
    }

    /// The signature (hex) of a scan's answer to `nonce` ([`scan_message`]).
    pub(crate) fn sign_scan(&self, nonce: &str, answer: &keyveil_proto::op::CiScanned) -> String {
        hex::encode(
            self.pair
                .sign(scan_message(nonce, answer).as_bytes())
                .as_ref(),
        )
    }

    /// The signed head of a chain of `entries` lines whose last line hashes to `sha256`.
    pub(crate) fn sign_head(&self, entries: u64, sha256: &str) -> Head {
        let sig = self.pair.sign(message(entries, sha256).as_bytes());
        Head {
            format: FORMAT.to_owned(),
            entries,
            head_sha256: sha256.to_owned(),
            public_key: self.public_key(),
            signature: hex::encode(sig.as_ref()),
        }
    }
}

/// The bytes signed: the format, the entry count and the last line's hash, one per line.
fn message(entries: u64, sha256: &str) -> String {
    format!("{FORMAT}\nentries {entries}\nhead {sha256}\n")
}

/// What a scan's answer signs: the client's nonce and the answer itself without its signature
/// (its JSON as `serde_json` writes the type: fields in declaration order).
fn scan_message(nonce: &str, answer: &keyveil_proto::op::CiScanned) -> String {
    let unsigned = keyveil_proto::op::CiScanned {
        signature: None,
        ..answer.clone()
    };
    format!(
        "keyveil-ci-scan-v1\nnonce {nonce}\nanswer {}\n",
        serde_json::to_string(&unsigned).unwrap_or_default()
    )
}

/// Whether `answer` carries a valid signature of the job's broker (`public_key`) for `nonce`.
pub(crate) fn scan_signed(
    public_key: &[u8; 32],
    nonce: &str,
    answer: &keyveil_proto::op::CiScanned,
) -> bool {
    let Some(sig) = answer
        .signature
        .as_deref()
        .and_then(|s| hex::decode(s).ok())
    else {
        return false;
    };
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(scan_message(nonce, answer).as_bytes(), &sig)
        .is_ok()
}

/// [`HEAD_FILE`]'s content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Head {
    /// Always [`FORMAT`].
    pub(crate) format: String,
    /// Lines in the chain.
    pub(crate) entries: u64,
    /// SHA-256 of the last line (without its newline), lowercase hex.
    pub(crate) head_sha256: String,
    /// The key that signed (informational: a verifier uses the key from the job log).
    pub(crate) public_key: String,
    /// Ed25519 signature of the message, lowercase hex.
    pub(crate) signature: String,
}

/// Parses a public key as printed at `ci start` (`ed25519:` + 64 hex digits; the prefix may be
/// left out).
///
/// Errors: a sentence saying what form is expected.
pub(crate) fn parse_public_key(s: &str) -> Result<[u8; 32], String> {
    let hexpart = s.trim().strip_prefix(KEY_PREFIX).unwrap_or(s.trim());
    let mut out = [0u8; 32];
    hex::decode_to_slice(hexpart, &mut out).map_err(|_| {
        "the public key is not `ed25519:` followed by 64 hex digits (as `keyveil ci start` printed it)".to_owned()
    })?;
    Ok(out)
}

/// What [`verify_dir`] found in an artifact that verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    /// Lines in the chain.
    pub(crate) entries: u64,
    /// SHA-256 of its last line.
    pub(crate) head_sha256: String,
}

/// Verifies an artifact folder written by `ci finish`: the chain in [`CHAIN_FILE`] is
/// well formed and linked line to line (MACs cannot be checked without the broker's key),
/// its length and last line are those [`HEAD_FILE`] names, and the head's signature verifies
/// under `public_key` (from the job log, never from the artifact).
///
/// Errors: a sentence naming what failed (a line, the head, the signature).
pub(crate) fn verify_dir(dir: &Path, public_key: &[u8; 32]) -> Result<Verified, String> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let chain = read(CHAIN_FILE)?;
    let head: Head = serde_json::from_slice(&read(HEAD_FILE)?)
        .map_err(|e| format!("{HEAD_FILE} is not a signed head: {e}"))?;
    if head.format != FORMAT {
        return Err(format!(
            "{HEAD_FILE} has format {:?}, not {FORMAT}",
            head.format
        ));
    }
    let sig = hex::decode(&head.signature)
        .map_err(|_| format!("{HEAD_FILE}: the signature is not hex"))?;
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(message(head.entries, &head.head_sha256).as_bytes(), &sig)
        .map_err(|_| {
            format!("{HEAD_FILE}: the signature does not verify under this public key (a forged or edited head, or the wrong key)")
        })?;
    let found =
        keyveil_vault::audit::chain_head(&chain, None).map_err(|e| format!("{CHAIN_FILE}: {e}"))?;
    if found.entries != head.entries || found.sha256 != head.head_sha256 {
        return Err(format!(
            "{CHAIN_FILE} is not the chain that was signed: it has {} entries ending in {}, the signed head says {} ending in {} (lines were cut, added or edited)",
            found.entries, found.sha256, head.entries, head.head_sha256
        ));
    }
    Ok(Verified {
        entries: found.entries,
        head_sha256: found.sha256,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_signed_head_verifies_only_under_its_key_and_message() {
        let s = Signer::generate().unwrap();
        let h = s.sign_head(3, &"ab".repeat(32));
        let pk = parse_public_key(&s.public_key()).unwrap();
        let sig = hex::decode(&h.signature).unwrap();
        let key = UnparsedPublicKey::new(&ED25519, pk);
        assert!(
            key.verify(message(3, &h.head_sha256).as_bytes(), &sig)
                .is_ok()
        );
        assert!(
            key.verify(message(2, &h.head_sha256).as_bytes(), &sig)
                .is_err()
        );
        let other = parse_public_key(&Signer::generate().unwrap().public_key()).unwrap();
        assert!(
            UnparsedPublicKey::new(&ED25519, other)
                .verify(message(3, &h.head_sha256).as_bytes(), &sig)
                .is_err()
        );
        assert!(parse_public_key("ed25519:zz").is_err());
    }
}
