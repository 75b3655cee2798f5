//! Requests and approvals: turning an ask into a request the human can judge (pinned
//! executable, fingerprinted inputs, risk flags), and an approval into a scoped grant.

mod approve;
mod cards;
mod chosen;
mod custody;
mod env_vars;
mod pins;
mod request;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::Broker;
use super::factor_ops::{Proof, verify_factor};
use super::peer::Peer;
use super::policy_ops::{rule_binds, rule_matches};
use super::prefix::deny_covers;
pub(crate) use super::state::ApproveOptions;
use super::state::{
    AccessReq, Ask, ChosenValue, DENIAL_MEMORY, Grant, Holds, Inner, NewVariable,
    ONCE_GRANT_TTL_SECONDS, OpError, OpResult, RequestFacts, RequestState, agent_chosen, new_id,
};
use crate::pin::{self, FilePin, InputPin};
use crate::risk;
use keyveil_proto::AccessRequest;
use keyveil_proto::ErrorCode;
use keyveil_proto::op;
use keyveil_vault::FactorKind;

pub(crate) use approve::{approve, check_card, deny, grant_pending, pending_factor};
pub(crate) use cards::{card_digest_of, file_pin_info, input_pin_info, requests};
pub(crate) use chosen::{agent_linked, check_chosen, check_chosen_values, chosen_expected};
pub(crate) use custody::outside_custody;
pub(crate) use env_vars::{check_pass_env, pass_values};
pub(crate) use pins::{Pins, bounded, check_symlink_escape, prepare_bounded};
pub(crate) use request::{access_status, find_or_create_request, request_access, strings_masked};

use approve::grant_request;
use chosen::chosen_values;

/// Most requests one client may have waiting at once; more are refused until the human answers
/// (an approval flood must not bury one bad request among many good ones). A client is the
/// real origin of the connection (`peer.rs`), never the claimed name.
pub(crate) const MAX_OPEN_REQUESTS_PER_CLIENT: usize = 3;

/// Most requests waiting at once from all clients together: the bound that holds even for a
/// same-user process that starts each request from a new executable (a copy) to look like
/// a new origin.
pub(crate) const MAX_OPEN_REQUESTS: usize = 12;

/// Key of [`Inner::request_times_mut`] that counts every request (origins are paths, `unreadable` or
/// `unknown`, never empty).
const ALL: &str = "";

/// How long a denial feeds the `denied-before` flag.
const DENIED_FLAG_MEMORY: Duration = Duration::from_secs(3600);

/// What to tell the requester to do.
pub(crate) fn approve_hint(id: u64) -> String {
    format!(
        "ask the user to approve it in a terminal: `keyveil approve {id}` (or deny: `keyveil deny {id}`); then call again with the same arguments"
    )
}

#[cfg(test)]
mod tests;
