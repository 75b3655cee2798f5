//! Dynamic variables: credentials minted per grant at their source, values fetched from OpenBao.

use serde::{Deserialize, Serialize};

use crate::request::DynamicAddRequest;

impl From<DynamicAddRequest> for crate::Request {
    fn from(o: DynamicAddRequest) -> crate::Request {
        crate::Request::DynamicAdd(o)
    }
}

impl super::Operation for DynamicAddRequest {
    type Reply = DynamicAdded;
}

/// The reply to [`DynamicAddRequest`] (also its audit entry): never the admin credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DynamicAdded {
    /// Environment name.
    pub environment: String,
    /// The variables declared (one, or every field of an OpenBao KV secret).
    pub variables: Vec<String>,
    /// `postgres`, `redis`, `openbao-database` or `openbao-kv`.
    pub engine: String,
    /// Where the engine connects, without credentials (`host:port`, address and mount).
    pub target: String,
    /// `password`, `url` or `pg-env`.
    pub output: String,
    /// Prefix of the user names minted (empty through OpenBao).
    pub prefix: String,
    /// SHA-256 (hex) of the role template.
    pub template_sha256: String,
    /// Variables that had a value or source before and were replaced.
    pub replaced: Vec<String>,
}
