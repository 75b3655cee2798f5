//! The factor's guard against guessing ([`FactorGuard`]) and the challenges the broker holds:
//! [`FactorState`].

use std::time::{Duration, Instant};

/// Failed factor attempts allowed before approvals lock.
pub(crate) const MAX_FACTOR_FAILURES: u32 = 5;
/// First lockout after [`MAX_FACTOR_FAILURES`]; doubles with each further lockout.
pub(crate) const FACTOR_LOCKOUT: Duration = Duration::from_secs(60);
/// The longest lockout of TOTP codes (the doubling stops there): an agent's guesses may make
/// TOTP unusable for a while, never for hours; the passphrase is never locked out.
pub(crate) const MAX_FACTOR_LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// The longest wait before the answer to a wrong passphrase typed into the approval page.
pub(crate) const MAX_TYPED_DELAY: Duration = Duration::from_secs(10);

/// Rate limiting of failed factors.
#[derive(Debug, Default)]
pub(crate) struct FactorGuard {
    /// Consecutive failures since the last success or lockout.
    pub failures: u32,
    /// Number of lockouts so far (the lockout doubles each time).
    pub lockouts: u32,
    /// Approvals refused until then.
    pub locked_until: Option<Instant>,
}

impl FactorGuard {
    /// `Err(seconds left)` while locked out.
    pub(crate) fn check(&mut self, now: Instant) -> Result<(), u64> {
        match self.locked_until {
            Some(t) if t > now => Err(t.saturating_duration_since(now).as_secs().max(1)),
            Some(_) => {
                self.locked_until = None;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Records a failure; returns the lockout length if this failure triggered one.
    pub(crate) fn fail(&mut self, now: Instant) -> Option<Duration> {
        self.failures += 1;
        if self.failures >= MAX_FACTOR_FAILURES {
            let d = FACTOR_LOCKOUT
                .saturating_mul(1u32 << self.lockouts.min(10))
                .min(MAX_FACTOR_LOCKOUT);
            self.lockouts += 1;
            self.failures = 0;
            self.locked_until = Some(now + d);
            return Some(d);
        }
        None
    }

    /// How long the answer to a wrong passphrase typed into the approval page waits: while
    /// TOTP is locked out, what is left of the lockout (at most [`MAX_TYPED_DELAY`]); after 3
    /// failures in a row, 1 s; else nothing. A speed bump for a guesser, never a refusal.
    pub(crate) fn typed_delay(&self, now: Instant) -> Duration {
        match self.locked_until {
            Some(t) if t > now => t.saturating_duration_since(now).min(MAX_TYPED_DELAY),
            _ if self.failures >= 3 => Duration::from_secs(1),
            _ => Duration::ZERO,
        }
    }

    /// Records a success, which also lifts a lockout: only the human's passphrase can succeed
    /// while one is on (TOTP codes are refused then).
    pub(crate) fn succeed(&mut self) {
        self.failures = 0;
        self.lockouts = 0;
        self.locked_until = None;
    }
}

/// Which factor a key a challenge holds stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeldKind {
    /// The passphrase's factor key (from the data key).
    Passphrase,
    /// A TOTP exchange for this 30-second step.
    Totp(u64),
}

/// A challenge the broker handed out: its nonce and the keys a proof may use.
#[derive(Debug)]
pub(crate) struct HeldChallenge {
    /// The broker's nonce.
    pub(crate) nonce: [u8; crate::factor_proof::LEN],
    /// The keys a proof may use, by index (taken when used).
    pub(crate) keys: Vec<Option<(HeldKind, crate::factor_proof::FactorKey)>>,
    /// When it was handed out.
    pub(crate) created: std::time::Instant,
}

/// The factor's state behind the broker's mutex: the guard against guessing, a TOTP enrolment
/// waiting for its confirming code, and the challenges handed out.
#[derive(Debug, Default)]
pub(crate) struct FactorState {
    /// Failed-factor rate limiting.
    guard: FactorGuard,
    /// A TOTP enrolment waiting for its confirming code: the base32 seed and when it started.
    pending_totp: Option<(keyveil_vault::SecretValue, Instant)>,
    /// Factor challenges handed out and not yet used (`factor_ops::challenge`), by id.
    challenges: std::collections::HashMap<String, HeldChallenge>,
}

impl FactorState {
    /// `Err(seconds left)` while failed factors lock approvals out ([`FactorGuard::check`]).
    pub(crate) fn check(&mut self, now: Instant) -> Result<(), u64> {
        self.guard.check(now)
    }

    /// Records a failed factor; the lockout length if it started one ([`FactorGuard::fail`]).
    pub(crate) fn failed(&mut self, now: Instant) -> Option<Duration> {
        self.guard.fail(now)
    }

    /// Records a proven factor, which lifts a lockout ([`FactorGuard::succeed`]).
    pub(crate) fn succeeded(&mut self) {
        self.guard.succeed();
    }

    /// How long the answer to a wrong typed passphrase waits ([`FactorGuard::typed_delay`]).
    pub(crate) fn typed_delay(&self, now: Instant) -> Duration {
        self.guard.typed_delay(now)
    }

    /// Holds a challenge under `id`: challenges older than `ttl` are dropped first, then the
    /// oldest until fewer than `max` are held.
    pub(crate) fn hold_challenge(
        &mut self,
        id: String,
        challenge: HeldChallenge,
        ttl: Duration,
        max: usize,
    ) {
        let held = &mut self.challenges;
        held.retain(|_, c| c.created.elapsed() <= ttl);
        while held.len() >= max {
            let Some(oldest) = held
                .iter()
                .min_by_key(|(_, c)| c.created)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            held.remove(&oldest);
        }
        held.insert(id, challenge);
    }

    /// Takes the challenge held under `id` (a challenge is used once).
    pub(crate) fn take_challenge(&mut self, id: &str) -> Option<HeldChallenge> {
        self.challenges.remove(id)
    }

    /// Keeps a TOTP enrolment waiting for its confirming code: the base32 seed and its start.
    pub(crate) fn set_pending_totp(&mut self, seed_b32: keyveil_vault::SecretValue, at: Instant) {
        self.pending_totp = Some((seed_b32, at));
    }

    /// Takes the TOTP enrolment waiting for its confirming code.
    pub(crate) fn take_pending_totp(&mut self) -> Option<(keyveil_vault::SecretValue, Instant)> {
        self.pending_totp.take()
    }

    /// At lock: the challenges held and a TOTP enrolment in progress leave memory (the guard
    /// stays).
    pub(super) fn forget_unlocked(&mut self) {
        self.challenges.clear();
        self.pending_totp = None;
    }
}
