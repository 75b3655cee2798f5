//! The broker's state: the unlocked vault, requests, grants, live runs, the factor guard and
//! the audit writer, behind one mutex that is never held across an `await`.
//!
//! One file per kind of thing, each owning its store and its methods, none of them knowing
//! [`Inner`]: `requests` ([`Ask`], [`AccessReq`], [`Requests`](requests::Requests)), `grants`
//! ([`Grant`], [`Grants`](grants::Grants)), `runs` ([`LiveRun`], [`Runs`](runs::Runs),
//! [`RunsStopped`]), `factor` ([`FactorState`](factor::FactorState): the guard, the challenges
//! held), `audit` ([`AuditLog`](audit::AuditLog)), `names` ([`Names`]: hidden variable names),
//! `held`
//! ([`HeldApprovals`](held::HeldApprovals)), `memory` (the approval memory behind the risk
//! flags), `error` ([`OpError`]); `inner` ([`Inner`]) holds them all, with the operations that
//! span several. This file only re-exports them.

mod audit;
mod error;
mod factor;
mod grants;
mod held;
mod inner;
mod memory;
mod names;
mod requests;
mod runs;
mod shown;
#[cfg(test)]
mod tests;

pub(crate) use error::{LOCKED_MESSAGE, OpError, OpResult, sealed_value_error, unknown_env};
pub(crate) use factor::{HeldChallenge, HeldKind};
pub(crate) use grants::{ApproveOptions, Grant, ONCE_GRANT_TTL_SECONDS, includes_all};
pub(crate) use held::HeldApproval;
pub(crate) use inner::{Holds, Inner, new_id};
pub(crate) use names::Names;
pub(crate) use requests::{
    AccessReq, Ask, ChosenValue, DENIAL_MEMORY, MAX_STDIN_BYTES, MountAnchor, MountAsk,
    NewVariable, REQUEST_TTL_SECONDS, RequestFacts, RequestState, SHOWN_STDIN_CHARS,
    SHOWN_VALUE_CHARS, agent_chosen, stdin_info,
};
pub(crate) use runs::{LiveRun, RunsStopped};
pub(crate) use shown::{Stdin, clip_shown, value_digest};
