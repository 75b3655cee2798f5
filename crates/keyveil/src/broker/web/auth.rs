//! The server's own authority: the key that signs its one-time links, session cookies and CSRF
//! tokens ([`Signed`]), and what it remembers of them in memory (spent tokens, flashes, value-entry
//! sessions). Tokens and cookies are kept as SHA-256 digests.

use super::{
    MAX_FLASHES, MAX_REVEALED, MAX_SESSIONS, MAX_SPENT, MAX_TOKENS, SESSION_TTL, SET_SESSION_TTL,
    SET_TOKEN_TTL, TOKEN_TTL, view,
};
use crate::broker::state::{OpError, OpResult};
use axum::http::{HeaderMap, header};
use keyveil_proto::ErrorCode;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

pub(super) type Digest32 = [u8; 32];

/// A signed approval-page token or session cookie: 8 random bytes, a deadline (milliseconds
/// after the server started, big-endian) and the first 16 bytes of
/// `HMAC-SHA256(server key, purpose ‖ nonce ‖ deadline)`: 32 bytes, 64 hex digits. The broker
/// keeps no table of live tokens or sessions, so no number of links or logins the agent makes
/// can push the human's out; only spent tokens are remembered, to keep each single-use.
pub(super) struct Signed {
    pub(super) nonce: [u8; 8],
    pub(super) deadline_ms: u64,
}

/// What a [`Signed`] string is for (part of the MAC, so one can never stand for the other).
pub(super) const LOGIN: &[u8] = b"keyveil/v1/web-login";

pub(super) const SESSION: &[u8] = b"keyveil/v1/web-session";

pub(super) const CSRF: &[u8] = b"keyveil/v1/web-csrf";
/// Derives a new key from the old one when the OS random source fails at `lock`.
const ROTATE: &[u8] = b"keyveil/v1/web-rotate";

/// A value-entry link's or session's one variable, and its deadline.
#[derive(Clone)]
pub(super) struct SetTarget {
    pub(super) environment: String,
    pub(super) name: String,
    pub(super) deadline: Instant,
}

/// A value-entry session: one variable, its own CSRF token.
pub(super) struct SetSession {
    pub(super) target: SetTarget,
    pub(super) csrf: String,
}

#[derive(Default)]
pub(super) struct Auth {
    /// Nonce of a spent URL token → its deadline (milliseconds after the server started).
    pub(super) spent: HashMap<[u8; 8], u64>,
    /// Digest of a session cookie → the message to show on its next page.
    pub(super) flashes: HashMap<Digest32, view::Flash>,
    /// Digest of an unused value-entry token → its variable.
    pub(super) set_tokens: HashMap<Digest32, SetTarget>,
    /// Digest of a value-entry cookie → its session.
    pub(super) set_sessions: HashMap<Digest32, SetSession>,
    /// Digest of a session cookie opened by a factor (`POST /reveal`) → the factor
    /// (`passphrase` or `totp`) and the session's deadline: its pages show hidden names.
    pub(super) revealed: HashMap<Digest32, (&'static str, Instant)>,
}

/// The running server: its port, the key that signs its tokens and sessions, and what it
/// remembers of them (in memory only).
pub(crate) struct Server {
    pub(super) port: u16,
    /// Signs tokens, sessions and CSRF tokens; replaced by [`super::Web::end_sessions`] (on
    /// `lock`), which voids every link and session signed before.
    pub(super) key: Mutex<zeroize::Zeroizing<[u8; 32]>>,
    pub(super) started: Instant,
    pub(super) auth: Mutex<Auth>,
}

pub(super) fn digest(s: &str) -> Digest32 {
    Sha256::digest(s.as_bytes()).into()
}

pub(super) fn random_hex() -> OpResult<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| {
        OpError::new(
            ErrorCode::Failed,
            format!("the OS random source failed: {e}"),
        )
    })?;
    Ok(hex::encode(b))
}

/// Compares two strings in time independent of where they differ.
pub(super) fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    use hmac::Mac;
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for 32 bytes.
    let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(key) else {
        return [0u8; 32];
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// A fresh signing key from the OS random source.
fn new_key() -> OpResult<zeroize::Zeroizing<[u8; 32]>> {
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut key[..]).map_err(|e| {
        OpError::new(
            ErrorCode::Failed,
            format!("the OS random source failed: {e}"),
        )
    })?;
    Ok(key)
}

impl Server {
    pub(super) fn new(port: u16) -> OpResult<Server> {
        Ok(Server {
            port,
            key: Mutex::new(new_key()?),
            started: Instant::now(),
            auth: Mutex::new(Auth::default()),
        })
    }

    pub(super) fn millis(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn tag(&self, purpose: &[u8], nonce: &[u8; 8], deadline_ms: u64) -> [u8; 32] {
        hmac(&self.key(), &[purpose, nonce, &deadline_ms.to_be_bytes()])
    }

    /// A new signed string for `purpose`, valid until `deadline`.
    pub(super) fn sign(&self, purpose: &[u8], deadline: Instant) -> OpResult<String> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| {
            OpError::new(
                ErrorCode::Failed,
                format!("the OS random source failed: {e}"),
            )
        })?;
        let deadline_ms = self.millis(deadline);
        let tag = self.tag(purpose, &nonce, deadline_ms);
        let mut out = [0u8; 32];
        out[..8].copy_from_slice(&nonce);
        out[8..16].copy_from_slice(&deadline_ms.to_be_bytes());
        out[16..].copy_from_slice(&tag[..16]);
        Ok(hex::encode(out))
    }

    /// The signed string `text` for `purpose`, if its MAC is right and it is live at `now`.
    pub(super) fn verify(&self, purpose: &[u8], text: &str, now: Instant) -> Option<Signed> {
        let mut raw = [0u8; 32];
        hex::decode_to_slice(text, &mut raw).ok()?;
        let mut nonce = [0u8; 8];
        nonce.copy_from_slice(&raw[..8]);
        let mut d = [0u8; 8];
        d.copy_from_slice(&raw[8..16]);
        let deadline_ms = u64::from_be_bytes(d);
        let tag = self.tag(purpose, &nonce, deadline_ms);
        let ok: bool = subtle::ConstantTimeEq::ct_eq(&tag[..16], &raw[16..]).into();
        (ok && deadline_ms > self.millis(now)).then_some(Signed { nonce, deadline_ms })
    }

    /// A copy of the current signing key.
    fn key(&self) -> zeroize::Zeroizing<[u8; 32]> {
        self.key.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the signing key and forgets every value-entry link and session and every
    /// flash: no link, session cookie or CSRF token made before works after this.
    /// Without the OS random source, the new key is derived from the old one (an HMAC under
    /// it), which only the broker knows: old signatures fail either way.
    pub(super) fn rotate(&self) {
        {
            let mut key = self.key.lock().unwrap_or_else(|p| p.into_inner());
            *key = new_key().unwrap_or_else(|_| zeroize::Zeroizing::new(hmac(&key, &[ROTATE])));
        }
        let mut auth = self.auth();
        auth.flashes.clear();
        auth.set_tokens.clear();
        auth.set_sessions.clear();
        auth.revealed.clear();
        auth.spent.clear();
    }

    pub(super) fn auth(&self) -> MutexGuard<'_, Auth> {
        self.auth.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a new one-time URL token valid for [`TOKEN_TTL`] from `now`. Nothing is stored:
    /// the token is signed, so minting any number of them voids none.
    pub(super) fn mint(&self, now: Instant) -> OpResult<String> {
        self.sign(LOGIN, now + TOKEN_TTL)
    }

    /// Spends a URL token: `true` if it is genuine, live and not spent before (it is spent
    /// now). `false` too when [`MAX_SPENT`] tokens were spent within the last [`TOKEN_TTL`].
    pub(super) fn redeem(&self, token: &str, now: Instant) -> bool {
        let Some(t) = self.verify(LOGIN, token, now) else {
            return false;
        };
        let now_ms = self.millis(now);
        let mut auth = self.auth();
        if auth.spent.len() >= MAX_SPENT {
            auth.spent.retain(|_, deadline| *deadline > now_ms);
        }
        if auth.spent.contains_key(&t.nonce) || auth.spent.len() >= MAX_SPENT {
            return false;
        }
        auth.spent.insert(t.nonce, t.deadline_ms);
        true
    }

    /// Opens a session; returns the cookie value (signed: no session is stored, so no number of
    /// other logins ends it).
    pub(super) fn open_session(&self, now: Instant) -> OpResult<String> {
        self.sign(SESSION, now + SESSION_TTL)
    }

    /// Makes a value-entry token for one variable, valid for [`SET_TOKEN_TTL`].
    pub(super) fn mint_set(&self, environment: &str, name: &str, now: Instant) -> OpResult<String> {
        let token = random_hex()?;
        let mut auth = self.auth();
        auth.set_tokens.retain(|_, t| t.deadline > now);
        while auth.set_tokens.len() >= MAX_TOKENS {
            let Some(oldest) = auth
                .set_tokens
                .iter()
                .min_by_key(|(_, t)| t.deadline)
                .map(|(k, _)| *k)
            else {
                break;
            };
            auth.set_tokens.remove(&oldest);
        }
        auth.set_tokens.insert(
            digest(&token),
            SetTarget {
                environment: environment.to_owned(),
                name: name.to_owned(),
                deadline: now + SET_TOKEN_TTL,
            },
        );
        Ok(token)
    }

    /// Spends a value-entry token and opens its session: the cookie value and the variable.
    pub(super) fn redeem_set(
        &self,
        token: &str,
        now: Instant,
    ) -> OpResult<Option<(String, SetTarget)>> {
        let Some(target) = self
            .auth()
            .set_tokens
            .remove(&digest(token))
            .filter(|t| t.deadline > now)
        else {
            return Ok(None);
        };
        let cookie = random_hex()?;
        let csrf = random_hex()?;
        let mut auth = self.auth();
        auth.set_sessions.retain(|_, s| s.target.deadline > now);
        while auth.set_sessions.len() >= MAX_SESSIONS {
            let Some(oldest) = auth
                .set_sessions
                .iter()
                .min_by_key(|(_, s)| s.target.deadline)
                .map(|(k, _)| *k)
            else {
                break;
            };
            auth.set_sessions.remove(&oldest);
        }
        let target = SetTarget {
            deadline: now + SET_SESSION_TTL,
            ..target
        };
        auth.set_sessions.insert(
            digest(&cookie),
            SetSession {
                target: target.clone(),
                csrf,
            },
        );
        Ok(Some((cookie, target)))
    }

    pub(super) fn set_cookie_name(&self) -> String {
        format!("keyveil_set_{}", self.port)
    }

    /// The live value-entry session a request's cookie names: its key, variable and CSRF.
    pub(super) fn set_session_of(
        &self,
        headers: &HeaderMap,
        now: Instant,
    ) -> Option<(Digest32, SetTarget, String)> {
        let value = cookie_value(headers, &self.set_cookie_name())?;
        let key = digest(&value);
        let mut auth = self.auth();
        match auth.set_sessions.get(&key) {
            Some(s) if s.target.deadline > now => Some((key, s.target.clone(), s.csrf.clone())),
            Some(_) => {
                auth.set_sessions.remove(&key);
                None
            }
            None => None,
        }
    }

    pub(super) fn end_set_session(&self, key: &Digest32) {
        self.auth().set_sessions.remove(key);
    }

    pub(super) fn cookie_name(&self) -> String {
        format!("keyveil_session_{}", self.port)
    }

    /// The session a request's cookie names, if live.
    pub(super) fn session_of(&self, headers: &HeaderMap, now: Instant) -> Option<Digest32> {
        let name = self.cookie_name();
        let value = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.trim().to_owned())?;
        self.verify(SESSION, &value, now)?;
        Some(digest(&value))
    }

    /// Records that the session whose cookie digests to `key` was opened by the factor `used`
    /// (`POST /reveal`), until `deadline`. At most [`MAX_REVEALED`] are kept (only a factor
    /// adds one; dropping the oldest only hides its names again).
    pub(super) fn reveal(&self, key: Digest32, used: &'static str, deadline: Instant) {
        let mut auth = self.auth();
        let now = Instant::now();
        auth.revealed.retain(|_, (_, d)| *d > now);
        while auth.revealed.len() >= MAX_REVEALED {
            let Some(oldest) = auth
                .revealed
                .iter()
                .min_by_key(|(_, (_, d))| *d)
                .map(|(k, _)| *k)
            else {
                break;
            };
            auth.revealed.remove(&oldest);
        }
        auth.revealed.insert(key, (used, deadline));
    }

    /// The factor that opened session `key`, if it was opened by one and is live.
    pub(super) fn revealed_by(&self, key: &Digest32, now: Instant) -> Option<&'static str> {
        self.auth()
            .revealed
            .get(key)
            .filter(|(_, d)| *d > now)
            .map(|(used, _)| *used)
    }

    /// The CSRF token of the session whose cookie digests to `key`: derived, not stored.
    pub(super) fn csrf_of(&self, key: &Digest32) -> Option<String> {
        Some(hex::encode(hmac(&self.key(), &[CSRF, key])))
    }

    pub(super) fn set_flash(&self, key: &Digest32, flash: view::Flash) {
        let mut auth = self.auth();
        if auth.flashes.len() >= MAX_FLASHES {
            auth.flashes.clear();
        }
        auth.flashes.insert(*key, flash);
    }

    pub(super) fn take_flash(&self, key: &Digest32) -> Option<view::Flash> {
        self.auth().flashes.remove(key)
    }

    pub(super) fn origins(&self) -> [String; 2] {
        [
            format!("http://127.0.0.1:{}", self.port),
            format!("http://localhost:{}", self.port),
        ]
    }

    pub(super) fn host_ok(&self, host: &str) -> bool {
        host == format!("127.0.0.1:{}", self.port)
            || host.eq_ignore_ascii_case(&format!("localhost:{}", self.port))
    }
}

/// The value of cookie `name` in a request, if present.
pub(super) fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
}
