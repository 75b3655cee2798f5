//! Variables: store, generate, remove, declare.

use crate::request::{Charset, FactorProof, Passphrase};
use serde::{Deserialize, Serialize};

/// Store a value (from the human's CLI only).
#[derive(Debug, Serialize, Deserialize)]
pub struct VarSet {
    /// Environment name.
    pub environment: String,
    /// Variable name.
    pub name: String,
    /// The value in plain text: only without a factor (a first value).
    #[serde(default)]
    pub value: Option<Passphrase>,
    /// The value sealed for the broker under the factor key (`factor_proof::seal_in_transit`,
    /// associated data `ENV/NAME`): required with a factor, so a relay never sees it.
    #[serde(default)]
    pub sealed_value: Option<String>,
    /// The human's factor, needed when it replaces a stored value.
    #[serde(default)]
    pub factor: Option<FactorProof>,
}

/// Generate a random value inside the broker.
#[derive(Debug, Serialize, Deserialize)]
pub struct VarGenerate {
    /// Environment name.
    pub environment: String,
    /// Variable name.
    pub name: String,
    /// Length in characters.
    pub length: usize,
    /// Alphabet.
    pub charset: Charset,
    /// The human's factor, needed when it replaces a stored value.
    #[serde(default)]
    pub factor: Option<FactorProof>,
}

/// Delete a variable (with a stored value: needs the factor).
#[derive(Debug, Serialize, Deserialize)]
pub struct VarUnset {
    /// Environment name.
    pub environment: String,
    /// Variable name.
    pub name: String,
    /// The human's factor, needed when a stored value would be removed.
    #[serde(default)]
    pub factor: Option<FactorProof>,
}

/// Declare a variable (agent side): generated now, or awaiting a human's value.
#[derive(Debug, Serialize, Deserialize)]
pub struct VarDeclare {
    /// Environment name.
    pub environment: String,
    /// Variable name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// `true`: generate a value now; `false`: wait for a human to `keyveil set` it.
    pub generate: bool,
    /// Length of a generated value in characters.
    pub length: Option<usize>,
}

operation!(VarSet => VarSetReply);
operation!(VarGenerate => VarChanged);
operation!(VarUnset => VarChanged);
operation!(VarDeclare => Declared);

/// What a variable holds after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarStatus {
    /// It holds a value.
    Set,
    /// It was removed.
    Unset,
    /// It was declared and waits for the human's value.
    AwaitingValue,
}

/// The reply to [`VarSet`]: a value stored, or the answer to a value-free probe (does this
/// change need the factor?).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum VarSetReply {
    /// A probe (no value, no factor): nothing was stored.
    Probe {
        /// Always `true`.
        probe: bool,
        /// Whether storing would need the factor (`false`: the broker answers a probe only
        /// when it does not).
        needs_factor: bool,
    },
    /// The value was stored.
    Stored(VarStored),
}

/// A value stored by [`VarSet`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VarStored {
    /// Environment name.
    pub environment: String,
    /// The variable (its alias where names are hidden).
    pub name: String,
    /// [`VarStatus::Set`].
    pub status: VarStatus,
    /// Whether it replaced a value.
    pub replaced: bool,
    /// Whether the value is shorter than 8 characters (the CLI warns).
    pub short_value: bool,
}

/// The reply to [`VarGenerate`] and [`VarUnset`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VarChanged {
    /// Environment name.
    pub environment: String,
    /// The variable (its alias where names are hidden).
    pub name: String,
    /// [`VarStatus::Set`] or [`VarStatus::Unset`].
    pub status: VarStatus,
}

/// The reply to [`VarDeclare`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Declared {
    /// [`VarStatus::Set`] (it has a value) or [`VarStatus::AwaitingValue`].
    pub status: VarStatus,
    /// What to tell the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}
