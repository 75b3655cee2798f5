//! Approvals held between the factor and the human's yes where names are hidden
//! ([`HeldApproval`], `held_approvals.rs` makes and spends them), by the digest of their ticket
//! ([`HeldApprovals`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::grants::ApproveOptions;

/// An approval waiting for the human's yes.
#[derive(Debug, Clone)]
pub(crate) struct HeldApproval {
    /// The request.
    request_id: u64,
    /// The card digest the factor was given for.
    card: String,
    /// The options the human chose.
    options: ApproveOptions,
    /// The factor that was checked (`passphrase` or `totp`).
    used: &'static str,
    /// When it was held.
    at: Instant,
}

impl HeldApproval {
    /// An approval of request `request_id` as its card `card` showed it, with `options`, for
    /// the factor `used`, held from now.
    pub(crate) fn new(
        request_id: u64,
        card: String,
        options: ApproveOptions,
        used: &'static str,
    ) -> HeldApproval {
        HeldApproval {
            request_id,
            card,
            options,
            used,
            at: Instant::now(),
        }
    }

    /// The request it approves.
    pub(crate) fn request_id(&self) -> u64 {
        self.request_id
    }

    /// The card digest the factor was given for.
    pub(crate) fn card(&self) -> &str {
        &self.card
    }

    /// The options the human chose.
    pub(crate) fn options(&self) -> ApproveOptions {
        self.options
    }

    /// The factor that was checked.
    pub(crate) fn used(&self) -> &'static str {
        self.used
    }

    /// When it was held.
    pub(crate) fn at(&self) -> Instant {
        self.at
    }
}

/// The approvals held, by SHA-256 of their ticket.
#[derive(Debug, Default)]
pub(crate) struct HeldApprovals {
    by_ticket: HashMap<[u8; 32], HeldApproval>,
}

impl HeldApprovals {
    /// Holds an approval waiting for the human's yes under the digest of its ticket: approvals
    /// older than `ttl` are dropped first, then the oldest until fewer than `max` are held.
    pub(crate) fn hold(
        &mut self,
        ticket_digest: [u8; 32],
        held: HeldApproval,
        ttl: Duration,
        max: usize,
    ) {
        let now = Instant::now();
        let all = &mut self.by_ticket;
        all.retain(|_, h| now.duration_since(h.at) < ttl);
        while all.len() >= max {
            let Some(oldest) = all.iter().min_by_key(|(_, h)| h.at).map(|(k, _)| *k) else {
                break;
            };
            all.remove(&oldest);
        }
        all.insert(ticket_digest, held);
    }

    /// Takes the approval held under this ticket digest (a ticket is used once).
    pub(crate) fn take(&mut self, ticket_digest: &[u8; 32]) -> Option<HeldApproval> {
        self.by_ticket.remove(ticket_digest)
    }

    /// At lock: every held approval is dropped.
    pub(super) fn clear(&mut self) {
        self.by_ticket.clear();
    }
}
