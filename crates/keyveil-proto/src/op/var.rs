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
