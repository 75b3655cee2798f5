//! The executable and inputs of a request pinned (bounded in time), and the working directory's
//! symlinks checked.

use super::*;

/// `cwd` with `.` and `..` removed lexically (no symlink resolution).
pub(super) fn lexical(cwd: &str) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for c in Path::new(cwd).components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The pinned executable and inputs of an argv, computed outside the broker lock.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pins {
    /// The executable.
    pub executable: Option<FilePin>,
    /// The inputs.
    pub inputs: Vec<InputPin>,
    /// In a requester-writable place.
    pub writable: bool,
}

/// Resolves and pins `argv[0]` and the command's inputs.
pub(crate) fn prepare(
    argv: &[String],
    cwd: &str,
    search_path: &str,
    home: Option<&str>,
) -> OpResult<Pins> {
    let Some(argv0) = argv.first() else {
        return Err(OpError::new(ErrorCode::Usage, "the command is empty"));
    };
    let exe = pin::resolve(argv0, search_path, Path::new(cwd)).map_err(|e| {
        OpError::new(ErrorCode::NotFound, e.to_string()).hint(
            "keyveil resolves commands with the PATH recorded in the vault at `keyveil init`, not the requester's; use an absolute path or ask the user to adjust the policy PATH",
        )
    })?;
    let executable =
        pin::pin_file(&exe).map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))?;
    let writable = pin::requester_writable(&exe, Path::new(cwd), home.map(Path::new));
    let inputs = pin::inputs(argv, Path::new(cwd), &exe, home.map(Path::new), search_path);
    // Fail closed: what cannot be pinned completely is never approved at all.
    if let Some(what) = pin::first_unpinnable(&inputs) {
        return Err(OpError::new(
            ErrorCode::Denied,
            format!("keyveil cannot pin what this command would run: {what}; nothing was asked"),
        )
        .hint("make it pinnable: a regular file keyveil can read (not a pipe, socket, device, or a file under /dev or /proc), fewer files, a readable directory, a literal name; or name the script directly, or run the command without keyveil's values"));
    }
    Ok(Pins {
        executable: Some(executable),
        inputs,
        writable,
    })
}

/// Longest the broker spends pinning one command; past it the request is refused.
pub(crate) const PIN_DEADLINE: Duration = Duration::from_secs(20);

/// [`prepare`] on the blocking pool with a deadline ([`PIN_DEADLINE`]): pinning reads files the
/// agent controls, and no read of theirs may park the broker's runtime threads (which answer
/// `revoke`).
pub(crate) async fn prepare_bounded(
    argv: Vec<String>,
    cwd: String,
    search_path: String,
    home: Option<String>,
) -> OpResult<Pins> {
    bounded(move || prepare(&argv, &cwd, &search_path, home.as_deref())).await?
}

/// Runs `f` (file work on a requester's behalf) on the blocking pool, at most
/// [`PIN_DEADLINE`].
pub(crate) async fn bounded<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> OpResult<T> {
    match tokio::time::timeout(PIN_DEADLINE, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(OpError::new(
            ErrorCode::Failed,
            format!("pinning the command failed: {e}"),
        )),
        Err(_) => Err(OpError::new(
            ErrorCode::Timeout,
            format!(
                "pinning the command's inputs took over {} s; nothing was asked",
                PIN_DEADLINE.as_secs()
            ),
        )
        .hint("a file the command reads may be on a slow or stalled file system; run it from a directory on a local disk")),
    }
}

/// Refuses a run whose working directory only looks like it is under a grant's directory: the
/// path the requester gave is lexically inside, but the canonical one (symlinks resolved) is not.
pub(crate) fn check_symlink_escape(inner: &Inner, ask: &Ask, given_cwd: &str) -> OpResult<()> {
    let lex = lexical(given_cwd);
    for g in inner.grants().iter() {
        if g.revoked() || g.client() != ask.client.scope_key() || g.environment() != ask.environment
        {
            continue;
        }
        let inside_lexically =
            lex == Path::new(&g.cwd()) || (g.subdirs() && lex.starts_with(g.cwd()));
        if inside_lexically && !g.cwd_covers(&ask.cwd) {
            return Err(OpError::new(
                ErrorCode::Denied,
                format!(
                    "the working directory \"{}\" resolves to \"{}\", outside the approved cwd \"{}\" (a symlink leads out of it)",
                    keyveil_proto::display::visible(given_cwd),
                    keyveil_proto::display::visible(&ask.cwd),
                    keyveil_proto::display::visible(g.cwd())
                ),
            )
            .hint("run from the approved directory itself; keyveil compares canonical paths"));
        }
    }
    Ok(())
}
