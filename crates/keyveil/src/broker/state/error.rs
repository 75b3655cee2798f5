//! The error of a broker operation ([`OpError`]) and the errors many operations share.

use keyveil_vault::Vault;

use keyveil_proto::{ErrorCode, Reply};

/// Error of a broker operation: becomes a [`Reply::Error`].
#[derive(Debug)]
pub(crate) struct OpError {
    /// Class.
    pub code: ErrorCode,
    /// What happened.
    pub message: String,
    /// What to do.
    pub hint: Option<String>,
}

impl OpError {
    /// New error.
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> OpError {
        OpError {
            code,
            message: message.into(),
            hint: None,
        }
    }
    /// With a hint.
    pub(crate) fn hint(mut self, hint: impl Into<String>) -> OpError {
        self.hint = Some(hint.into());
        self
    }
    /// As a reply.
    pub(crate) fn reply(self) -> Reply {
        Reply::error(self.code, self.message, self.hint)
    }
}

/// Shorthand result.
pub(crate) type OpResult<T> = Result<T, OpError>;

/// A value sealed in memory could not be opened (the broker's memory was changed).
pub(crate) fn sealed_value_error(e: keyveil_vault::VaultError) -> OpError {
    OpError::new(ErrorCode::Failed, e.to_string())
        .hint("ask the user to restart the broker: `keyveil daemon stop`, then `keyveil unlock`")
}

/// The message of the locked error (the CLI recognises it to word the hint for a human).
pub(crate) const LOCKED_MESSAGE: &str = "the keyveil vault is locked";

/// The locked error, with its hint.
pub(crate) fn locked() -> OpError {
    OpError::new(ErrorCode::Locked, LOCKED_MESSAGE)
        .hint("ask the user to run `keyveil unlock` in a terminal")
}

/// The "unknown environment" error, listing the ones that exist.
pub(crate) fn unknown_env(env: &str, vault: &Vault) -> OpError {
    let names: Vec<&str> = vault
        .data()
        .environments
        .keys()
        .map(String::as_str)
        .collect();
    OpError::new(ErrorCode::NotFound, format!("no environment named '{env}'")).hint(
        if names.is_empty() {
            "no environment exists yet; the user can create one with `keyveil env create NAME`"
                .to_owned()
        } else {
            format!("environments: {}", names.join(", "))
        },
    )
}
