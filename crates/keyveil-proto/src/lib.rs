//! The broker's IPC protocol: length-delimited frames over a Unix socket.
//!
//! Wire shape of one frame: a 4-byte big-endian length `N` (at most [`MAX_FRAME`] bytes),
//! then `N` bytes whose first byte is a tag:
//!
//! | tag | payload |
//! |---|---|
//! | `0` ([`TAG_JSON`]) | one UTF-8 JSON document: a [`Request`] (client → broker) or a [`Reply`] (broker → client) |
//! | `1` ([`TAG_STDOUT`]) | raw, already-redacted bytes of a run's stdout |
//! | `2` ([`TAG_STDERR`]) | raw, already-redacted bytes of a run's stderr |
//!
//! A connection carries one request and the replies to it; the last reply of a request is
//! always a JSON frame with [`Reply::is_final`] true.
//!
//! No factor (passphrase, TOTP code) ever travels over the socket: a change that needs one
//! carries a [`FactorProof`] bound to the request's digest (the `keyveil` crate's `factor_proof.rs`), after the CLI
//! has checked that the broker answering holds the vault's key. Passphrases reach a broker only
//! through the stdin pipe of a broker the CLI started itself (`init`, `unlock`). A secret
//! *value* appears in [`Request::VarSet`] (plain only for a first value, sealed under the factor
//! key when it replaces one) and in [`DynamicAddRequest::admin`]. No reply ever carries a value:
//! output frames are redacted before they are written.
//!
//! This crate holds the whole contract between the broker and its clients: [`request`],
//! [`op`] (one type per operation and its typed reply), [`reply`], [`frame`] (frames and the length-delimited codec) and [`display`] (the escaper of
//! requester-supplied text). It has no async runtime and no command-line parser: the codec is
//! sans-IO (the `tokio-util` feature adds the `Decoder`/`Encoder` impls the broker uses), so
//! the `frame_decoder` fuzz target builds it alone.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod display;
pub mod frame;
pub mod op;
pub mod reply;
pub mod request;

pub use frame::{
    CodecError, Frame, FrameCodec, FrameError, MAX_FRAME, TAG_JSON, TAG_STDERR, TAG_STDOUT,
};
pub use reply::{ErrorCode, Reply, RunResult, WriteLeak, WriteScanSummary};
pub use request::{
    AccessRequest, Bootstrap, Challenge, ChallengeKey, Charset, ClientInfo, DynamicAddRequest,
    FACTOR_NEEDED, FactorProof, MAX_ENV_STRING, MIN_PASSPHRASE_LEN, OutputMode, Passphrase,
    PolicyChange, Request, RunRequest, env_string_too_long,
};
