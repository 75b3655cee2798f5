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
    // A directory the user cannot enter (no search permission) would make the child's `chdir`
    // fail and the run look like a broken command: say what is wrong with the directory.
    if rustix::fs::access(&c, rustix::fs::Access::EXEC_OK).is_err() {
        return Err(OpError::new(
            ErrorCode::Usage,
            format!(
                "the working directory \"{}\" cannot be entered: no search (x) permission for this user; nothing was run",
                keyveil_proto::display::clip(cwd, 200)
            ),
        )
        .hint("run from a directory you can enter, or give yourself access (`chmod u+x DIR`)"));
    }
    c.into_os_string()
        .into_string()
        .map_err(|_| OpError::new(ErrorCode::Usage, "the working directory is not valid UTF-8"))
}
