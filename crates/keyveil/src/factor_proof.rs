//! Proving the human's factor to the broker without ever sending it (sans-IO: no sockets, no
//! tokio; the CLI and the broker both call these functions).
//!
//! A same-uid agent can rename the broker's socket and listen at its path, relaying to the real
//! broker. So nothing the human types may travel over the socket, and every factor-guarded
//! change is bound to the exact bytes the CLI showed and sent:
//!
//! 1. The CLI turns the factor into a 32-byte **factor key** locally:
//!    - passphrase: [`keyveil_vault::factor_key_from_file`] (Argon2id over the vault file's key
//!      slot, then HKDF-Expand of the data key). The broker derives the same key from the data
//!      key it holds while unlocked.
//!    - TOTP code: SPAKE2 (a password-authenticated key exchange over Ed25519) with the code as
//!      the password, one exchange per candidate time step. A relay that plays the broker gets
//!      one online guess of the code per exchange, never the code itself nor an offline test.
//! 2. The CLI asks for a **challenge** ([`keyveil_proto::Request::FactorChallenge`]) with a
//!    random client nonce; the broker answers with its own nonce and, per key it holds, a
//!    [`hello_mac`] over both nonces. The CLI checks it: a process that does not hold the
//!    vault's key (or the TOTP seed) cannot produce it, so the CLI knows it talks to the real,
//!    unlocked broker *before* it sends anything that depends on the factor.
//! 3. The CLI sends the change with a [`keyveil_proto::FactorProof`]: the challenge id and
//!    [`client_proof`] = HMAC(factor key, broker nonce ‖ [`request_digest`] of the request). The
//!    broker recomputes the digest from the request it received: a relay that changes one byte
//!    (another request id, `--any-command`, a longer TTL, another policy) breaks the proof, and a
//!    challenge is used once. A value that travels with a factor (`set` over a stored value) is
//!    sealed with [`seal_in_transit`] under a key derived from the factor key.
//!
//! Everything a relay sees (nonces, MACs, proofs, ciphertext) lets it test passphrase guesses
//! only at the price of one Argon2id derivation each, exactly as the vault file already does.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use spake2::{Ed25519Group, Identity, Password, Spake2};
use zeroize::Zeroizing;

/// Length of every nonce, key, MAC and digest here, in bytes.
pub(crate) const LEN: usize = 32;

/// How many TOTP time steps a challenge offers: the previous, current and next 30-second step
/// (RFC 6238 §5.2 allows this skew).
pub(crate) const TOTP_STEPS: usize = 3;

const HELLO: &[u8] = b"keyveil/v1/factor-hello";
const PROOF: &[u8] = b"keyveil/v1/factor-proof";
const TRANSIT: &[u8] = b"keyveil/v1/factor-transit";
const TOTP_KEY: &[u8] = b"keyveil/v1/totp-factor-key";
const DIGEST: &[u8] = b"keyveil/v1/request-digest\0";
const CARD: &[u8] = b"keyveil/v1/card-digest\0";
const ID_CLI: &[u8] = b"keyveil-cli";
const ID_BROKER: &[u8] = b"keyveil-broker";

/// A 32-byte key that proves a factor: the passphrase's (derived from the vault's data key) or
/// the one a TOTP SPAKE2 exchange agreed. Wiped on drop; `Debug` shows nothing.
#[derive(Clone)]
pub(crate) struct FactorKey(Zeroizing<[u8; LEN]>);

impl FactorKey {
    /// Wraps 32 key bytes.
    pub(crate) fn new(bytes: Zeroizing<[u8; LEN]>) -> FactorKey {
        FactorKey(bytes)
    }
}

impl std::fmt::Debug for FactorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FactorKey([sensitive])")
    }
}

/// Why a proof step failed. No variant carries key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProofError {
    /// A hex field did not decode to the expected length (the peer sent garbage).
    #[error("a factor field is not {LEN} bytes of hex")]
    Malformed,
    /// The SPAKE2 message was refused by the key exchange (wrong length or side).
    #[error("the TOTP key exchange failed")]
    Exchange,
    /// A sealed value did not authenticate under the key (tampered, or another key).
    #[error("the sealed value does not authenticate")]
    Unseal,
    /// The OS random source failed.
    #[error("the OS random source failed")]
    Random,
}

/// 32 random bytes from the OS.
///
/// # Errors
/// [`ProofError::Random`] when the OS refuses.
pub(crate) fn random_nonce() -> Result<[u8; LEN], ProofError> {
    let mut n = [0u8; LEN];
    getrandom::fill(&mut n).map_err(|_| ProofError::Random)?;
    Ok(n)
}

/// Parses 64 hex digits into 32 bytes.
///
/// # Errors
/// [`ProofError::Malformed`] for anything else.
pub(crate) fn parse32(hex_text: &str) -> Result<[u8; LEN], ProofError> {
    let mut out = [0u8; LEN];
    hex::decode_to_slice(hex_text, &mut out).map_err(|_| ProofError::Malformed)?;
    Ok(out)
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; LEN] {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0u8; LEN],
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Constant-time equality of two 32-byte strings.
pub(crate) fn same(a: &[u8; LEN], b: &[u8; LEN]) -> bool {
    subtle::ConstantTimeEq::ct_eq(&a[..], &b[..]).into()
}

/// The broker's answer to a challenge: `HMAC(key, "keyveil/v1/factor-hello" ‖ client_nonce ‖
/// broker_nonce)`. Only a holder of the factor key can make it.
pub(crate) fn hello_mac(
    key: &FactorKey,
    client_nonce: &[u8; LEN],
    broker_nonce: &[u8; LEN],
) -> [u8; LEN] {
    hmac(&key.0[..], &[HELLO, client_nonce, broker_nonce])
}

/// The CLI's proof for one request: `HMAC(key, "keyveil/v1/factor-proof" ‖ broker_nonce ‖
/// digest)`.
pub(crate) fn client_proof(
    key: &FactorKey,
    broker_nonce: &[u8; LEN],
    digest: &[u8; LEN],
) -> [u8; LEN] {
    hmac(&key.0[..], &[PROOF, broker_nonce, digest])
}

/// Canonical bytes of a JSON value: object keys sorted (serde_json's map is ordered by key in
/// this build), no whitespace.
fn canonical(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// SHA-256 over `"keyveil/v1/request-digest\0"` and the canonical JSON of a request with its
/// top-level `factor` field removed: what a [`client_proof`] binds. Both ends compute it from
/// the request itself, so a changed byte anywhere breaks the proof.
pub(crate) fn request_digest(request: &serde_json::Value) -> [u8; LEN] {
    let mut v = request.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("factor");
    }
    let mut h = Sha256::new();
    h.update(DIGEST);
    h.update(canonical(&v));
    h.finalize().into()
}

/// Fields of a pending request's listing that change while it waits (how often the agent asked,
/// its state and deadline): left out of [`card_digest`], so an agent re-asking cannot make the
/// human's approval fail.
const VOLATILE: &[&str] = &[
    "asks",
    "state",
    "status",
    "expires_at",
    "decided_at",
    "reason_denied",
];

/// SHA-256 (hex) of a pending request as the human was shown it (the JSON of one entry of the
/// `requests` reply, volatile fields removed). The CLI puts it in `approve`, the broker
/// recomputes it from the request it holds: an approval applies only to what was on the card.
pub(crate) fn card_digest(card: &serde_json::Value) -> String {
    let mut v = card.clone();
    if let Some(o) = v.as_object_mut() {
        for k in VOLATILE {
            o.remove(*k);
        }
    }
    let mut h = Sha256::new();
    h.update(CARD);
    h.update(canonical(&v));
    hex::encode(h.finalize())
}

/// [`card_digest`] of an approval card as the `requests` reply carries it.
pub(crate) fn request_card_digest(card: &keyveil_proto::op::RequestCard) -> String {
    card_digest(&serde_json::to_value(card).unwrap_or_default())
}

fn transit_cipher(key: &FactorKey, broker_nonce: &[u8; LEN]) -> XChaCha20Poly1305 {
    let k = Zeroizing::new(hmac(&key.0[..], &[TRANSIT, broker_nonce]));
    XChaCha20Poly1305::new((&*k).into())
}

/// Seals `plain` for the broker under a key derived from the factor key and the challenge
/// (XChaCha20-Poly1305, random 24-byte nonce, `aad` bound). Returns hex of nonce ‖ ciphertext.
///
/// # Errors
/// [`ProofError::Random`].
pub(crate) fn seal_in_transit(
    key: &FactorKey,
    broker_nonce: &[u8; LEN],
    aad: &[u8],
    plain: &[u8],
) -> Result<String, ProofError> {
    let mut n = [0u8; 24];
    getrandom::fill(&mut n).map_err(|_| ProofError::Random)?;
    let ct = transit_cipher(key, broker_nonce)
        .encrypt(XNonce::from_slice(&n), Payload { msg: plain, aad })
        .map_err(|_| ProofError::Unseal)?;
    let mut out = n.to_vec();
    out.extend_from_slice(&ct);
    Ok(hex::encode(out))
}

/// Opens what [`seal_in_transit`] made.
///
/// # Errors
/// [`ProofError::Malformed`] for bad hex or a short input; [`ProofError::Unseal`] when it does
/// not authenticate.
pub(crate) fn open_in_transit(
    key: &FactorKey,
    broker_nonce: &[u8; LEN],
    aad: &[u8],
    sealed_hex: &str,
) -> Result<Zeroizing<Vec<u8>>, ProofError> {
    let bytes = hex::decode(sealed_hex).map_err(|_| ProofError::Malformed)?;
    if bytes.len() < 24 + 16 {
        return Err(ProofError::Malformed);
    }
    let (n, ct) = bytes.split_at(24);
    transit_cipher(key, broker_nonce)
        .decrypt(XNonce::from_slice(n), Payload { msg: ct, aad })
        .map(Zeroizing::new)
        .map_err(|_| ProofError::Unseal)
}

fn totp_key(shared: &[u8]) -> FactorKey {
    FactorKey(Zeroizing::new(hmac(shared, &[TOTP_KEY])))
}

/// The CLI's side of a TOTP exchange: [`TOTP_STEPS`] SPAKE2 (side A) states, all with the code
/// the human typed, one per candidate step.
pub(crate) struct TotpClient {
    states: Vec<Spake2<Ed25519Group>>,
}

impl std::fmt::Debug for TotpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpClient([sensitive])")
    }
}

impl TotpClient {
    /// Starts [`TOTP_STEPS`] exchanges with `code`; returns the state and the messages (hex) to
    /// send in the challenge.
    pub(crate) fn start(code: &str) -> (TotpClient, Vec<String>) {
        let pw = Password::new(code.trim().as_bytes());
        let mut states = Vec::with_capacity(TOTP_STEPS);
        let mut msgs = Vec::with_capacity(TOTP_STEPS);
        for _ in 0..TOTP_STEPS {
            let (s, m) = Spake2::<Ed25519Group>::start_a(
                &pw,
                &Identity::new(ID_CLI),
                &Identity::new(ID_BROKER),
            );
            states.push(s);
            msgs.push(hex::encode(m));
        }
        (TotpClient { states }, msgs)
    }

    /// Finishes each exchange with the broker's message for it (`None` where the broker offered
    /// none: a step already used) and returns the keys, in order.
    pub(crate) fn finish(self, broker_msgs: &[Option<String>]) -> Vec<Option<FactorKey>> {
        self.states
            .into_iter()
            .zip(broker_msgs.iter().chain(std::iter::repeat(&None)))
            .map(|(s, m)| {
                let m = hex::decode(m.as_deref()?).ok()?;
                s.finish(&m).ok().map(|k| totp_key(&k))
            })
            .collect()
    }
}

/// The broker's side of one TOTP exchange: given the code for one step and the CLI's message,
/// returns the broker's message (hex) and the agreed key.
///
/// # Errors
/// [`ProofError::Malformed`] for bad hex; [`ProofError::Exchange`] when SPAKE2 refuses the
/// message.
pub(crate) fn totp_broker(
    code_for_step: &str,
    client_msg_hex: &str,
) -> Result<(String, FactorKey), ProofError> {
    let m = hex::decode(client_msg_hex).map_err(|_| ProofError::Malformed)?;
    let (s, out) = Spake2::<Ed25519Group>::start_b(
        &Password::new(code_for_step.as_bytes()),
        &Identity::new(ID_CLI),
        &Identity::new(ID_BROKER),
    );
    let k = s.finish(&m).map_err(|_| ProofError::Exchange)?;
    Ok((hex::encode(out), totp_key(&k)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use serde_json::json;

    fn key(b: u8) -> FactorKey {
        FactorKey::new(Zeroizing::new([b; LEN]))
    }

    #[test]
    fn a_proof_binds_key_nonce_and_every_byte_of_the_request() {
        let n = random_nonce().unwrap();
        let req =
            json!({"op": "approve", "request_id": 7, "any_command": false, "factor": {"x": 1}});
        let d = request_digest(&req);
        // The factor field itself is not part of what is signed.
        let mut without = req.clone();
        without.as_object_mut().unwrap().remove("factor");
        assert_eq!(d, request_digest(&without));
        let p = client_proof(&key(1), &n, &d);
        assert!(same(&p, &client_proof(&key(1), &n, &d)));
        assert!(!same(&p, &client_proof(&key(2), &n, &d)));
        assert!(!same(
            &p,
            &client_proof(&key(1), &random_nonce().unwrap(), &d)
        ));
        for widened in [
            json!({"op": "approve", "request_id": 8, "any_command": false}),
            json!({"op": "approve", "request_id": 7, "any_command": true}),
            json!({"op": "policy_set", "request_id": 7, "any_command": false}),
        ] {
            assert!(!same(
                &p,
                &client_proof(&key(1), &n, &request_digest(&widened))
            ));
        }
    }

    #[test]
    fn the_card_digest_ignores_only_what_changes_while_a_request_waits() {
        let card = json!({"id": 3, "argv": ["make", "test"], "asks": 1, "expires_at": "x"});
        let again = json!({"id": 3, "argv": ["make", "test"], "asks": 9, "expires_at": "y"});
        assert_eq!(card_digest(&card), card_digest(&again));
        let other = json!({"id": 3, "argv": ["make", "deploy"], "asks": 1});
        assert_ne!(card_digest(&card), card_digest(&other));
    }

    #[test]
    fn the_hello_mac_needs_the_key() {
        let (c, b) = (random_nonce().unwrap(), random_nonce().unwrap());
        assert!(same(
            &hello_mac(&key(5), &c, &b),
            &hello_mac(&key(5), &c, &b)
        ));
        assert!(!same(
            &hello_mac(&key(5), &c, &b),
            &hello_mac(&key(6), &c, &b)
        ));
        assert!(!same(
            &hello_mac(&key(5), &c, &b),
            &hello_mac(&key(5), &b, &c)
        ));
    }

    #[test]
    fn a_sealed_value_opens_only_with_its_key_nonce_and_aad() {
        let n = random_nonce().unwrap();
        let s = seal_in_transit(&key(3), &n, b"dev/API", b"plain text").unwrap();
        assert!(!s.contains(&hex::encode(b"plain text")));
        assert_eq!(
            &open_in_transit(&key(3), &n, b"dev/API", &s).unwrap()[..],
            b"plain text"
        );
        assert_eq!(
            open_in_transit(&key(4), &n, b"dev/API", &s),
            Err(ProofError::Unseal)
        );
        assert_eq!(
            open_in_transit(&key(3), &n, b"dev/OTHER", &s),
            Err(ProofError::Unseal)
        );
        assert_eq!(
            open_in_transit(&key(3), &random_nonce().unwrap(), b"dev/API", &s),
            Err(ProofError::Unseal)
        );
        assert_eq!(
            open_in_transit(&key(3), &n, b"dev/API", "00"),
            Err(ProofError::Malformed)
        );
    }

    #[test]
    fn totp_exchange_agrees_only_on_the_same_code() {
        let (client, msgs) = TotpClient::start("123456");
        let mut replies = Vec::new();
        let mut broker_keys = Vec::new();
        for (m, code) in msgs.iter().zip(["111111", "123456", "999999"]) {
            let (reply, k) = totp_broker(code, m).unwrap();
            replies.push(Some(reply));
            broker_keys.push(k);
        }
        let keys = client.finish(&replies);
        let (c, b) = (random_nonce().unwrap(), random_nonce().unwrap());
        let matches: Vec<bool> = keys
            .iter()
            .zip(&broker_keys)
            .map(|(ck, bk)| {
                ck.as_ref()
                    .is_some_and(|ck| same(&hello_mac(ck, &c, &b), &hello_mac(bk, &c, &b)))
            })
            .collect();
        assert_eq!(matches, vec![false, true, false]);
        // A step the broker did not offer yields no key; garbage is refused.
        let (client, _) = TotpClient::start("123456");
        assert!(
            client
                .finish(&[None, None, None])
                .iter()
                .all(Option::is_none)
        );
        assert_eq!(
            totp_broker("123456", "zz").err(),
            Some(ProofError::Malformed)
        );
        assert_eq!(
            totp_broker("123456", "00").err(),
            Some(ProofError::Exchange)
        );
    }
}
