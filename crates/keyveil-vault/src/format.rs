//! The vault file's byte layout and its cryptography (format version 1).
//!
//! `docs/vault-format.md` is the normative description; this module is its implementation and
//! must stay in step with it. All integers are big-endian.
//!
//! ```text
//! file    = header ciphertext checksum
//! header  = magic(8) version(2) slot_count(1) flags(1) slot*slot_count payload_nonce(24)
//! slot    = kind(1) reserved(3) m_cost_kib(4) t_cost(4) p_cost(4) salt(16) nonce(24) wrapped_key(32) tag(16)
//! ciphertext = XChaCha20-Poly1305(data_key, payload_nonce, aad = header, padded JSON)  (tag appended)
//! checksum = SHA-256(header ciphertext)
//! ```

use argon2::{Algorithm, Argon2, Version};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::VaultError;

#[doc(hidden)]
pub mod fuzzing;

/// The 8 magic bytes every vault file starts with: ASCII `KEYVEIL` and a NUL byte.
pub const MAGIC: [u8; 8] = *b"KEYVEIL\0";

/// The vault format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// Length of an Argon2id salt in a key slot, in bytes (RFC 9106 §3.1 recommends 128 bits).
pub const SALT_LEN: usize = 16;
/// Length of an XChaCha20-Poly1305 nonce, in bytes.
pub const NONCE_LEN: usize = 24;
/// Length of the data key and of a key-encryption key, in bytes.
pub const KEY_LEN: usize = 32;
/// Length of a Poly1305 authentication tag, in bytes.
pub const TAG_LEN: usize = 16;
/// Length of the trailing SHA-256 checksum, in bytes.
pub const CHECKSUM_LEN: usize = 32;
/// Length of one key slot, in bytes.
pub const SLOT_LEN: usize = 1 + 3 + 4 + 4 + 4 + SALT_LEN + NONCE_LEN + KEY_LEN + TAG_LEN;
/// Length of the fixed part of the header (magic, version, slot count, flags), in bytes.
pub const FIXED_LEN: usize = 8 + 2 + 1 + 1;
/// Most key slots a version-1 file may have.
pub const MAX_SLOTS: usize = 8;
/// The padded plaintext is a multiple of this many bytes (hides the exact payload size).
pub const PAD_BLOCK: usize = 256;
/// Largest vault file accepted on read or produced on save: 64 MiB, in bytes.
pub const MAX_FILE_LEN: usize = 64 * 1024 * 1024;

/// Key slot kind 1: the data key wrapped under Argon2id (version 0x13) of a passphrase.
const SLOT_KIND_PASSPHRASE: u8 = 1;

/// Argon2id cost parameters (RFC 9106 §3.1): memory in KiB, passes, lanes.
///
/// Stored in every key slot; checked against [`KdfParams::MINIMUM`] and [`KdfParams::MAXIMUM`]
/// before any key derivation, both on create and on open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KdfParams {
    /// Memory size `m`, in KiB (1 KiB = 1024 bytes).
    pub m_cost_kib: u32,
    /// Number of passes `t` over the memory.
    pub t_cost: u32,
    /// Degree of parallelism `p` (lanes). This implementation computes lanes sequentially.
    pub p_cost: u32,
}

impl KdfParams {
    /// The default for new vaults: 64 MiB (65 536 KiB), 3 passes, 1 lane. This is RFC 9106 §4's
    /// second recommended option (64 MiB, t = 3, p = 4) with one lane, as we compute lanes
    /// sequentially anyway. Takes a few hundred milliseconds on a laptop.
    pub const DEFAULT: KdfParams = KdfParams {
        m_cost_kib: 65_536,
        t_cost: 3,
        p_cost: 1,
    };

    /// The weakest parameters accepted: 19 MiB (19 456 KiB), 2 passes, 1 lane (the OWASP
    /// password-storage floor for Argon2id). Files below it are rejected as downgraded.
    pub const MINIMUM: KdfParams = KdfParams {
        m_cost_kib: 19_456,
        t_cost: 2,
        p_cost: 1,
    };

    /// The most expensive parameters accepted: 4 GiB (4 194 304 KiB), 32 passes, 64 lanes. A
    /// header edited beyond this is rejected before any memory is allocated, so a tampered file
    /// cannot make `open` exhaust memory or run for hours.
    pub const MAXIMUM: KdfParams = KdfParams {
        m_cost_kib: 4 * 1024 * 1024,
        t_cost: 32,
        p_cost: 64,
    };

    /// Checks the parameters against [`KdfParams::MINIMUM`] and [`KdfParams::MAXIMUM`].
    ///
    /// # Errors
    /// [`VaultError::WeakKdfParams`] if any parameter is out of range.
    pub fn validate(&self) -> Result<(), VaultError> {
        let (min, max) = (KdfParams::MINIMUM, KdfParams::MAXIMUM);
        let reason = if self.m_cost_kib < min.m_cost_kib
            || self.t_cost < min.t_cost
            || self.p_cost < min.p_cost
        {
            Some("below the minimum")
        } else if self.m_cost_kib > max.m_cost_kib
            || self.t_cost > max.t_cost
            || self.p_cost > max.p_cost
        {
            Some("above the maximum")
        } else {
            None
        };
        match reason {
            None => Ok(()),
            Some(reason) => Err(VaultError::WeakKdfParams {
                m_cost_kib: self.m_cost_kib,
                t_cost: self.t_cost,
                p_cost: self.p_cost,
                reason,
            }),
        }
    }
}

impl Default for KdfParams {
    fn default() -> KdfParams {
        KdfParams::DEFAULT
    }
}

/// One key slot: the data key wrapped under a key derived from a passphrase.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) params: KdfParams,
    pub(crate) salt: [u8; SALT_LEN],
    pub(crate) nonce: [u8; NONCE_LEN],
    /// Wrapped data key followed by its tag.
    pub(crate) wrapped: [u8; KEY_LEN + TAG_LEN],
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("kind", &"passphrase/argon2id")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl Slot {
    /// The first 32 bytes of the slot: kind, reserved, params, salt.
    fn descriptor(&self) -> [u8; 32] {
        let bytes = [SLOT_KIND_PASSPHRASE, 0, 0, 0]
            .into_iter()
            .chain(self.params.m_cost_kib.to_be_bytes())
            .chain(self.params.t_cost.to_be_bytes())
            .chain(self.params.p_cost.to_be_bytes())
            .chain(self.salt);
        let mut out = [0u8; 32];
        for (dst, src) in out.iter_mut().zip(bytes) {
            *dst = src;
        }
        out
    }

    /// Associated data of the slot AEAD: magic, version, slot descriptor (42 bytes).
    fn aad(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(8 + 2 + 32);
        aad.extend_from_slice(&MAGIC);
        aad.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        aad.extend_from_slice(&self.descriptor());
        aad
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.descriptor());
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.wrapped);
    }

    /// Wraps `data_key` under Argon2id(`passphrase`, `salt`, `params`).
    pub(crate) fn seal(
        passphrase: &[u8],
        params: KdfParams,
        salt: [u8; SALT_LEN],
        nonce: [u8; NONCE_LEN],
        data_key: &[u8; KEY_LEN],
    ) -> Result<Slot, VaultError> {
        params.validate()?;
        let kek = derive_kek(passphrase, &salt, params).ok_or(VaultError::BadPassphrase {
            reason: "it is longer than Argon2id accepts",
        })?;
        let mut slot = Slot {
            params,
            salt,
            nonce,
            wrapped: [0u8; KEY_LEN + TAG_LEN],
        };
        let mut buf = Zeroizing::new(*data_key);
        let tag = XChaCha20Poly1305::new(Key::from_slice(kek.as_ref()))
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &slot.aad(), buf.as_mut())
            .map_err(|_| VaultError::corrupt("key slot encryption failed"))?;
        for (dst, src) in slot.wrapped.iter_mut().zip(buf.iter().chain(tag.iter())) {
            *dst = *src;
        }
        Ok(slot)
    }

    /// Derives the KEK from `passphrase` and unwraps the data key; `None` if the passphrase is
    /// wrong (or the slot was altered: the AEAD cannot tell which).
    pub(crate) fn unseal(&self, passphrase: &[u8]) -> Option<Zeroizing<[u8; KEY_LEN]>> {
        let kek = derive_kek(passphrase, &self.salt, self.params)?;
        let (key_part, tag_part) = self.wrapped.split_first_chunk::<KEY_LEN>()?;
        let mut buf = Zeroizing::new(*key_part);
        XChaCha20Poly1305::new(Key::from_slice(kek.as_ref()))
            .decrypt_in_place_detached(
                XNonce::from_slice(&self.nonce),
                &self.aad(),
                buf.as_mut(),
                Tag::from_slice(tag_part),
            )
            .ok()?;
        Some(buf)
    }
}

/// Argon2id (RFC 9106, version 0x13) of `passphrase` with `salt`: a 32-byte key-encryption key.
/// No secret value `K` and no associated data `X`. `None` only if the passphrase is longer than
/// 2^32 - 1 bytes (parameters are validated before).
fn derive_kek(
    passphrase: &[u8],
    salt: &[u8; SALT_LEN],
    params: KdfParams,
) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    params.validate().ok()?;
    let argon_params = argon2::Params::new(
        params.m_cost_kib,
        params.t_cost,
        params.p_cost,
        Some(KEY_LEN),
    )
    .ok()?;
    let blocks = argon_params.block_count();
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params);
    let mut kek = Zeroizing::new([0u8; KEY_LEN]);
    ARGON_MEMORY.with(|memory| {
        let mut memory = memory.borrow_mut();
        if memory.len() < blocks {
            memory.resize(blocks, argon2::Block::default());
        }
        let filled = memory.get_mut(..blocks)?;
        let hashed =
            argon.hash_password_into_with_memory(passphrase, salt, kek.as_mut(), &mut *filled);
        filled.iter_mut().for_each(Zeroize::zeroize);
        hashed.ok()
    })?;
    Some(kek)
}

thread_local! {
    /// Argon2id's working memory (`m_cost` KiB), kept by each thread that derives and wiped
    /// after every derivation. Allocating it afresh each time (as `hash_password_into` does)
    /// left it unwiped in freed memory, and in a process whose memory is locked (the broker:
    /// `mlockall`) freed blocks were not given back: a burst of wrong guesses grew the broker by
    /// the memory cost of each. One buffer per deriving thread bounds that to
    /// `threads × m_cost` (the broker derives on a few dedicated threads).
    static ARGON_MEMORY: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A parsed (not yet decrypted) vault file, borrowing from its bytes.
pub(crate) struct Parsed<'a> {
    pub(crate) slots: Vec<Slot>,
    header: &'a [u8],
    payload_nonce: [u8; NONCE_LEN],
    ciphertext: &'a [u8],
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self, what: &str) -> Result<[u8; N], VaultError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or_else(|| VaultError::corrupt(format!("file is truncated inside the {what}")))?;
        self.rest = rest;
        Ok(*head)
    }
}

/// Parses the layout and checks magic, version, checksum, slot kinds and KDF parameters. Does no
/// key derivation and no decryption.
pub(crate) fn parse(bytes: &[u8]) -> Result<Parsed<'_>, VaultError> {
    if bytes.len() > MAX_FILE_LEN {
        return Err(VaultError::corrupt(format!(
            "file is larger than the {MAX_FILE_LEN}-byte limit"
        )));
    }
    let Some(rest) = bytes.strip_prefix(&MAGIC) else {
        return Err(VaultError::corrupt(
            "not a keyveil vault (the magic bytes are wrong)",
        ));
    };
    let version = rest
        .first_chunk::<2>()
        .map(|v| u16::from_be_bytes(*v))
        .ok_or_else(|| VaultError::corrupt("file is truncated inside the header"))?;
    if version != FORMAT_VERSION {
        return Err(VaultError::UnsupportedVersion { found: version });
    }
    let (body, checksum) = bytes
        .split_last_chunk::<CHECKSUM_LEN>()
        .ok_or_else(|| VaultError::corrupt("file is truncated (no checksum)"))?;
    let digest: [u8; 32] = Sha256::digest(body).into();
    if &digest != checksum {
        return Err(VaultError::corrupt(
            "checksum mismatch: the file was damaged or edited",
        ));
    }

    let mut r = Reader { rest: body };
    let _magic_and_version = r.take::<10>("header")?;
    let [slot_count, flags] = r.take::<2>("header")?;
    if slot_count == 0 || usize::from(slot_count) > MAX_SLOTS {
        return Err(VaultError::corrupt(format!(
            "invalid key slot count {slot_count} (must be 1 to {MAX_SLOTS})"
        )));
    }
    if flags != 0 {
        return Err(VaultError::corrupt(format!(
            "unknown header flags {flags:#04x}"
        )));
    }
    let mut slots = Vec::with_capacity(usize::from(slot_count));
    for index in 0..slot_count {
        let [kind, r1, r2, r3] = r.take::<4>("key slot")?;
        if kind != SLOT_KIND_PASSPHRASE {
            return Err(VaultError::corrupt(format!(
                "key slot {index} has unknown kind {kind}"
            )));
        }
        if [r1, r2, r3] != [0, 0, 0] {
            return Err(VaultError::corrupt(format!(
                "key slot {index} has non-zero reserved bytes"
            )));
        }
        let params = KdfParams {
            m_cost_kib: u32::from_be_bytes(r.take::<4>("key slot")?),
            t_cost: u32::from_be_bytes(r.take::<4>("key slot")?),
            p_cost: u32::from_be_bytes(r.take::<4>("key slot")?),
        };
        params.validate()?;
        slots.push(Slot {
            params,
            salt: r.take::<SALT_LEN>("key slot")?,
            nonce: r.take::<NONCE_LEN>("key slot")?,
            wrapped: r.take::<{ KEY_LEN + TAG_LEN }>("key slot")?,
        });
    }
    let payload_nonce = r.take::<NONCE_LEN>("header")?;
    let ciphertext = r.rest;
    if ciphertext.len() < TAG_LEN {
        return Err(VaultError::corrupt("file is truncated inside the payload"));
    }
    let header_len = body.len() - ciphertext.len();
    let header = body
        .get(..header_len)
        .ok_or_else(|| VaultError::corrupt("file is truncated inside the header"))?;
    Ok(Parsed {
        slots,
        header,
        payload_nonce,
        ciphertext,
    })
}

impl Parsed<'_> {
    /// Decrypts and authenticates the payload (header bound as associated data). Returns the
    /// padded plaintext.
    pub(crate) fn decrypt(
        &self,
        data_key: &[u8; KEY_LEN],
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let mut buf = Zeroizing::new(self.ciphertext.to_vec());
        XChaCha20Poly1305::new(Key::from_slice(data_key))
            .decrypt_in_place(
                XNonce::from_slice(&self.payload_nonce),
                self.header,
                &mut *buf,
            )
            .map_err(|_| {
                VaultError::corrupt(
                    "payload authentication failed: the header or the payload was edited",
                )
            })?;
        Ok(buf)
    }
}

/// Produces a whole vault file: header, encrypted `plaintext`, checksum.
pub(crate) fn seal(
    slots: &[Slot],
    data_key: &[u8; KEY_LEN],
    payload_nonce: &[u8; NONCE_LEN],
    mut plaintext: Zeroizing<Vec<u8>>,
) -> Result<Vec<u8>, VaultError> {
    let slot_count = u8::try_from(slots.len())
        .ok()
        .filter(|n| (1..=MAX_SLOTS).contains(&usize::from(*n)))
        .ok_or_else(|| VaultError::corrupt("invalid number of key slots"))?;
    let header_len = FIXED_LEN + SLOT_LEN * slots.len() + NONCE_LEN;
    if header_len + plaintext.len() + TAG_LEN + CHECKSUM_LEN > MAX_FILE_LEN {
        return Err(VaultError::TooLarge {
            max_bytes: MAX_FILE_LEN,
        });
    }
    let mut out = Vec::with_capacity(header_len + plaintext.len() + TAG_LEN + CHECKSUM_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.push(slot_count);
    out.push(0); // flags
    for slot in slots {
        slot.write(&mut out);
    }
    out.extend_from_slice(payload_nonce);
    XChaCha20Poly1305::new(Key::from_slice(data_key))
        .encrypt_in_place(XNonce::from_slice(payload_nonce), &out, &mut *plaintext)
        .map_err(|_| VaultError::TooLarge {
            max_bytes: MAX_FILE_LEN,
        })?;
    out.extend_from_slice(&plaintext);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    Ok(out)
}

/// A `Write` that only counts bytes (to size the plaintext buffer before serialising into it, so
/// the secret-bearing buffer never reallocates and leaves stale copies behind).
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Serialises `value` as compact JSON and pads it with spaces (0x20) to a multiple of
/// [`PAD_BLOCK`] bytes, in a buffer with room for the tag.
pub(crate) fn padded_json<T: serde::Serialize>(
    value: &T,
) -> Result<Zeroizing<Vec<u8>>, serde_json::Error> {
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, value)?;
    let padded_len = counter.0.div_ceil(PAD_BLOCK).max(1) * PAD_BLOCK;
    let mut buf = Zeroizing::new(Vec::with_capacity(padded_len + TAG_LEN));
    serde_json::to_writer(&mut *buf, value)?;
    buf.resize(padded_len, b' ');
    Ok(buf)
}

/// SHA-256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}
