//! The audit log.

use serde::{Deserialize, Serialize};

/// Recent audit entries.
#[derive(Debug, Serialize, Deserialize)]
pub struct Audit {
    /// Last N entries.
    pub limit: Option<usize>,
}
