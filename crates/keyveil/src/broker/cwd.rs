//! A requester's working directory made canonical: what every ask (run, start, access
//! request, auto-approve rule) is matched by.

use std::path::Path;

use keyveil_proto::ErrorCode;

use super::state::{OpError, OpResult};

/// Canonical absolute working directory (symlinks resolved), or a usable error.
pub(crate) fn canonical_cwd(cwd: &str) -> OpResult<String> {
    let p = Path::new(cwd);
    if !p.is_absolute() {
        return Err(OpError::new(
            ErrorCode::Usage,
            format!(
                "the working directory must be absolute, got \"{}\"",
                keyveil_proto::display::clip(cwd, 200)
            ),
        ));
    }
    let c = std::fs::canonicalize(p).map_err(|e| {
        OpError::new(
            ErrorCode::NotFound,
            format!(
                "working directory \"{}\" is not usable: {e}",
                keyveil_proto::display::clip(cwd, 200)
            ),
        )
    })?;
    if !c.is_dir() {
        return Err(OpError::new(
            ErrorCode::Usage,
            format!(
                "\"{}\" is not a directory",
                keyveil_proto::display::clip(cwd, 200)
            ),
        ));
    }
    c.into_os_string()
        .into_string()
        .map_err(|_| OpError::new(ErrorCode::Usage, "the working directory is not valid UTF-8"))
}
