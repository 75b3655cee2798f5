//! The factor's guard against guessing ([`FactorGuard`]) and the challenges the broker holds.

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
