//! What a card shows of a value the requester supplied (a pass-through value, a value stored
//! without the factor, its standard input): the broker keeps the whole of it, masks it first
//! (`card_redact.rs`) and clips it after ([`clip_shown`]), so a value straddling the clip is
//! still whole when it is matched; and it names the whole of it by a digest keyed by a secret of
//! the broker ([`value_digest`]), so a shown digest cannot be searched offline.
//!
//! The key is made at random when the broker starts and never leaves it (no reply, no file,
//! no log carries it). Grants bind these digests and identical asks coalesce on them, both for
//! the broker's life, so they keep working; a restart makes a new key, and a grant bound to a
//! digest of the old one would no longer match: it ends, which fails closed (grants do not
//! outlive the broker anyway). `docs/threat-model.md` ("Cards") says why.

use std::sync::OnceLock;

use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The broker's digest key (made on first use, kept for the process's life).
static KEY: OnceLock<Zeroizing<[u8; 32]>> = OnceLock::new();

fn key() -> &'static [u8; 32] {
    KEY.get_or_init(|| {
        let mut k = Zeroizing::new([0u8; 32]);
        // The OS random source does not fail on the kernels keyveil runs on; were it to, the
        // key would fall back to the clock and the process id: shown digests could then be
        // searched only by someone who also knows both to the nanosecond.
        if getrandom::fill(k.as_mut()).is_err() {
            let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
            use sha2::Digest as _;
            k.copy_from_slice(&Sha256::digest(seed.as_bytes()));
        }
        k
    })
}

/// The digest (hex) a card shows and a grant binds of a value the requester supplied:
/// HMAC-SHA256 under the broker's key, so it names the value for the broker's life and cannot
/// be searched offline by whoever reads it.
pub(crate) fn value_digest(bytes: &[u8]) -> String {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for it.
    let Ok(mut mac) = <Hmac<Sha256>>::new_from_slice(key()) else {
        return String::new();
    };
    mac.update(bytes);
    hex::encode(mac.finalize().into_bytes())
}

/// The marker a masked value leaves (`card_redact.rs`): a clip never cuts inside one.
const MARKER: &str = "[REDACTED:";

/// `text` (already masked) clipped to its first `chars` characters, and whether anything was
/// left out. A clip that would cut inside a `[REDACTED:NAME]` marker ends before the marker:
/// what is shown is never part of a name standing where a value was.
pub(crate) fn clip_shown(text: &str, chars: usize) -> (String, bool) {
    let Some((mut end, _)) = text.char_indices().nth(chars) else {
        return (text.to_owned(), false);
    };
    // The last marker starting before the cut; when it closes at or after the cut, the cut
    // moves to its start (`[` is one byte: a character boundary).
    let b = text.as_bytes();
    let last = b
        .windows(MARKER.len())
        .take(end)
        .enumerate()
        .rev()
        .find(|(_, w)| *w == MARKER.as_bytes())
        .map(|(i, _)| i);
    if let Some(p) = last
        && !b.get(p..end).unwrap_or_default().contains(&b']')
    {
        end = p;
    }
    (text.get(..end).unwrap_or_default().to_owned(), true)
}

/// Standard input a requester supplies, as the broker keeps it: all of it (masked and clipped
/// only where it is shown), its size, digest ([`value_digest`]) and whether the command may
/// read program text from it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Stdin {
    /// All of it.
    pub text: Zeroizing<String>,
    /// Its length, bytes.
    pub bytes: usize,
    /// [`value_digest`] of all of it.
    pub digest: String,
    /// The command may read program text or commands from it.
    pub program: bool,
}

impl std::fmt::Debug for Stdin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stdin")
            .field("bytes", &self.bytes)
            .field("program", &self.program)
            .finish_non_exhaustive()
    }
}

impl Stdin {
    /// Describes `text` (`program`: [`crate::stdin_program::reads_program_at`]).
    pub(crate) fn of(text: &str, program: bool) -> Stdin {
        Stdin {
            text: Zeroizing::new(text.to_owned()),
            bytes: text.len(),
            digest: value_digest(text.as_bytes()),
            program,
        }
    }

    /// As a card carries it before masking: all of the text, not yet clipped.
    pub(crate) fn info(&self) -> keyveil_proto::op::StdinInfo {
        keyveil_proto::op::StdinInfo {
            text: self.text.to_string(),
            bytes: self.bytes,
            clipped: false,
            digest: self.digest.clone(),
            program: self.program,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clip_never_cuts_a_marker_and_says_when_it_left_something_out() {
        assert_eq!(clip_shown("abc", 3), ("abc".to_owned(), false));
        assert_eq!(clip_shown("abcd", 3), ("abc".to_owned(), true));
        let masked = format!("{}[REDACTED:API_TOKEN] tail", "x".repeat(5));
        for n in 5..=24 {
            assert_eq!(clip_shown(&masked, n), ("x".repeat(5), true), "{n}");
        }
        let (s, c) = clip_shown(&masked, 25);
        assert_eq!(s, "xxxxx[REDACTED:API_TOKEN]");
        assert!(c);
        // Characters, not bytes.
        assert_eq!(clip_shown("ééé", 2), ("éé".to_owned(), true));
    }

    #[test]
    fn the_digest_is_keyed_and_stable_for_the_broker_life() {
        use sha2::Digest as _;
        let d = value_digest(b"some value");
        assert_eq!(d, value_digest(b"some value"));
        assert_ne!(d, value_digest(b"some valuf"));
        assert_ne!(d, hex::encode(Sha256::digest(b"some value")));
        assert_eq!(d.len(), 64);
    }
}
