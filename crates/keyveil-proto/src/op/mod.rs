//! One type per operation: what a client asks (the payload of a [`Request`] variant) and,
//! through [`Operation`], the one type of the broker's `Ok` reply to it.
//!
//! Like mini-redis's `cmd/` directory, each file holds a group of operations; each operation
//! is a type, and so is its reply. The broker's dispatcher (`broker/ops.rs` in the `keyveil`
//! crate) answers an operation only with its [`Operation::Reply`], and clients read that type:
//! renaming a field breaks the build, not a client at run time. The JSON on the wire is the
//! serde form of these types (field names are stable; see `docs/architecture.md`).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Request;

/// Pairs an operation type with its reply type and its [`Request`] variant.
macro_rules! operation {
    ($name:ident => $reply:ty) => {
        impl From<$name> for $crate::Request {
            fn from(o: $name) -> $crate::Request {
                $crate::Request::$name(o)
            }
        }
        impl $crate::op::Operation for $name {
            type Reply = $reply;
        }
    };
}

/// An operation without fields: a marker type for its unit [`Request`] variant.
macro_rules! unit_operation {
    ($(#[$doc:meta])* $name:ident => $reply:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $name;
        impl From<$name> for $crate::Request {
            fn from(_: $name) -> $crate::Request {
                $crate::Request::$name
            }
        }
        impl $crate::op::Operation for $name {
            type Reply = $reply;
        }
    };
}

mod access;
mod audit;
mod broker;
mod ci;
mod dynamic;
mod env;
mod mount;
mod policy;
mod project;
mod run;
mod sweep;
mod var;

pub use access::*;
pub use audit::*;
pub use broker::*;
pub use ci::*;
pub use dynamic::*;
pub use env::*;
pub use mount::*;
pub use policy::*;
pub use project::*;
pub use run::*;
pub use sweep::*;
pub use var::*;

/// A request with one typed reply: the `data` of the broker's [`crate::Reply::Ok`].
pub trait Operation: Into<Request> {
    /// What the broker answers on success.
    type Reply: Serialize + DeserializeOwned;
}
