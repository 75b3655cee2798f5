//! The redactor used for every run: the `keyveil-redact` crate.
pub use keyveil_redact::Redactor;
