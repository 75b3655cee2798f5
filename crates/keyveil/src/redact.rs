//! The redactor used for every run: the `keyveil-redact` crate.
pub(crate) use keyveil_redact::Redactor;
