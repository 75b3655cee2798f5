//! The factor a change of stored values needs: replacing or removing a value (or a dynamic
//! source), or naming a variable by anything but its alias where names are hidden. Used by the
//! variable and environment operations (`ops.rs`) and `dynamic add` (`dynamic_ops.rs`).

use std::sync::Arc;

use keyveil_proto::{ErrorCode, FACTOR_NEEDED, FactorProof};
use keyveil_vault::FactorKind;
use serde_json::json;

use super::Broker;
use super::factor_ops::{self, Proof};
use super::state::{Inner, OpError, OpResult};
use crate::factor_proof;

/// Replacing or removing a stored value needs the human's factor (passphrase or TOTP;
/// `confirm` is not enough). Without it an agent could swap `API_URL` for a host of its own and
/// have the next approved run send `API_KEY` there, or delete values. `stored` is how many
/// variables with a value (or a dynamic source) the change would replace or remove; storing a
/// first value needs nothing (it discloses nothing).
///
/// Errors: [`ErrorCode::Denied`] starting with [`FACTOR_NEEDED`] when no factor was given, and
/// the factor's own errors (wrong, replayed, locked out) when it was.
pub(crate) async fn guard_stored(
    broker: &Arc<Broker>,
    env: &str,
    need: Need,
    factor: Option<FactorProof>,
    digest: Option<[u8; factor_proof::LEN]>,
) -> OpResult<Option<factor_ops::Verified>> {
    if need == Need::Nothing && factor.is_none() {
        return Ok(None);
    }
    if factor.is_none() {
        return Err(factor_needed(env, need));
    }
    // A factor given for a change that needs none is still checked (it authenticates the broker
    // and seals the value): any real factor does. Replacing or removing needs the policy's own.
    let required = if need == Need::Nothing {
        FactorKind::Totp
    } else {
        factor_ops::rule_change_factor(broker, env)
    };
    factor_ops::verify_factor(
        broker,
        Proof::from_request(factor, digest, false),
        required,
        json!({"stored_change": env}),
    )
    .await
    .map(Some)
}

/// Why a change needs the factor (see [`guard_stored`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Nothing stored would be replaced or removed.
    Nothing,
    /// This many stored values would be replaced or removed.
    Stored(usize),
    /// The environment hides names and the change names a variable by something other than
    /// its alias: answered the same whether or not such a variable exists (no oracle).
    HiddenName,
    /// The variable's value would be whatever its source's server answers at each grant (an
    /// OpenBao database role's `password`, output `password`): it cannot be quoted on a card
    /// before it is minted, so the human must choose the source.
    ServerChosen,
}

impl Need {
    /// From a count of stored values.
    pub(crate) fn stored(n: usize) -> Need {
        if n == 0 {
            Need::Nothing
        } else {
            Need::Stored(n)
        }
    }
}

/// The error for a change that needs the factor and came without one.
fn factor_needed(env: &str, need: Need) -> OpError {
    let what = match need {
        Need::HiddenName => format!(
            "names in '{env}' are hidden, and this change does not name a variable by its alias"
        ),
        Need::Stored(1) => format!("this would replace or remove a stored value in '{env}'"),
        Need::Stored(n) => format!("this would replace or remove {n} stored values in '{env}'"),
        Need::ServerChosen => format!(
            "an OpenBao database variable with output `password` is whatever its server answers (any string, minted per grant, so no card can quote it), so adding one to '{env}' needs your factor (output `url` with `--connect-url` does not)"
        ),
        Need::Nothing => String::new(),
    };
    OpError::new(
        ErrorCode::Denied,
        format!("{FACTOR_NEEDED}: {what}; nothing was changed"),
    )
    .hint("run the command in your own terminal: keyveil asks for your passphrase (or add `--totp CODE`)")
}

/// Under the lock that writes: refuses a change that would replace or remove a stored value
/// when no factor was verified for it. `guard_stored` checked before the factor's `await`; this
/// closes the window in which another request could store a value meanwhile.
pub(crate) fn recheck(
    inner: &Inner,
    env: &str,
    name: Option<&str>,
    verified: bool,
) -> OpResult<()> {
    if verified {
        return Ok(());
    }
    match inner.names().stored_names(env, name) {
        0 => Ok(()),
        n => Err(factor_needed(env, Need::Stored(n))),
    }
}
