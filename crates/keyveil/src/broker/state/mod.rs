//! The broker's state: the unlocked vault, requests, grants, live runs, the factor guard and
//! the audit writer, behind one mutex that is never held across an `await`.
//!
//! One file per kind of thing: `inner` ([`Inner`], the data behind the mutex), `audit` (its
//! audit methods), `requests` ([`Ask`], [`AccessReq`]), `grants` ([`Grant`]), `runs`
//! ([`LiveRun`], [`RunsStopped`]), `factor` ([`FactorGuard`](factor::FactorGuard), the factor's state and challenges held), `memory` (the approval memory behind the risk flags), `error`
//! ([`OpError`]). This file only re-exports them.

mod audit;
mod error;
mod factor;
mod grants;
mod inner;
mod memory;
mod requests;
mod runs;
#[cfg(test)]
mod tests;

pub(crate) use error::{LOCKED_MESSAGE, OpError, OpResult, sealed_value_error, unknown_env};
pub(crate) use factor::{HeldChallenge, HeldKind};
pub(crate) use grants::{Grant, ONCE_GRANT_TTL_SECONDS, includes_all};
pub(crate) use inner::{Holds, Inner, new_id};
pub(crate) use requests::{
    AccessReq, Ask, ChosenValue, DENIAL_MEMORY, MAX_STDIN_BYTES, MountAsk, NewVariable,
    REQUEST_TTL_SECONDS, RequestState, SHOWN_STDIN_CHARS, stdin_info,
};
pub(crate) use runs::{LiveRun, RunsStopped};
