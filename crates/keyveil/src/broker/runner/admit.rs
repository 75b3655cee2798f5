//! Step 1 of the run path: what can never run is refused, and the ask is resolved.

use crate::broker::Broker;
use crate::broker::access::{self, check_pass_env};
use crate::broker::peer::Peer;
use crate::broker::state::{Ask, OpError};
use crate::pin;
use keyveil_proto::{ErrorCode, RunRequest};

/// Longest argv accepted (elements).
const MAX_ARGV: usize = 4096;

/// What step 1 ([`admit`]) established about a run request.
pub(crate) struct Admitted {
    /// The ask grants and requests are matched against.
    pub(crate) ask: Ask,
    /// Canonical working directory.
    pub(crate) cwd: String,
    /// Requester variables passed through (checked).
    pub(crate) pass_env: Vec<String>,
    /// The variables to inject (real names).
    pub(crate) vars: Vec<String>,
    /// The policy `PATH` of the environment.
    pub(crate) search_path: String,
    /// `HOME` of granted children.
    pub(crate) home: Option<String>,
    /// The requester may hold values ([`access::strings_masked`], read once here from its
    /// `/proc` parent chain): only grants of asks masked the same way serve it, and its argv
    /// is shown with whole values masked.
    pub(crate) masked: bool,
}

/// Step 1: refuses what can never run (an empty or oversized argv, a cwd that is not a
/// directory, code-injection pass-through names, a symlinked cwd escaping a grant, a requester
/// `PATH` shadowing the executable) and resolves the ask.
pub(super) fn admit(broker: &Broker, req: &RunRequest, peer: Peer) -> Result<Admitted, OpError> {
    check_shape(req)?;
    broker.lock().audit_log_mut().ready("run_start")?;
    let cwd = crate::broker::cwd::canonical_cwd(&req.cwd)?;
    let pass_env = check_pass_env(&req.pass_env)?;
    // An environment pinned to a project manifest that changed since approved: refused, and
    // its grants end (`docs/manifest.md`).
    crate::broker::manifest_pin::check_pin(broker, &req.environment)?;
    let (vars, search_path, home) = {
        let inner = broker.lock();
        match inner.resolve_variables(&req.environment, req.variables.as_deref()) {
            Ok(v) => (v, inner.policy_path(&req.environment), inner.child_home()),
            Err(e) => return Err(e),
        }
    };
    let program = reads_program(req, &cwd, &search_path, home.as_deref());
    check_shown_stdin(req, program)?;
    let ask = Ask {
        client: req.client.clone(),
        environment: req.environment.clone(),
        variables: vars.clone(),
        argv: Some(req.argv.clone()),
        cwd: cwd.clone(),
        pass_env: pass_env.clone(),
        pass_values: access::pass_values(&pass_env, &req.env),
        stdin: req
            .stdin
            .as_deref()
            .map(|t| crate::broker::state::stdin_info(t, program)),
        peer,
        mount: None,
        linked: Vec::new(),
    };
    access::check_symlink_escape(&broker.lock(), &ask, &req.cwd)?;
    check_path_shadow(req, &cwd, &search_path, home.as_deref())?;
    let masked = access::strings_masked(&mut broker.lock(), &ask.peer)?;
    Ok(Admitted {
        ask,
        cwd,
        pass_env,
        vars,
        search_path,
        home,
        masked,
    })
}

/// The request's shape: a command, a client kind it may claim, at most [`MAX_ARGV`]
/// arguments, at most `MAX_STDIN_BYTES` of standard input.
fn check_shape(req: &RunRequest) -> Result<(), OpError> {
    if req.argv.is_empty() || req.argv.first().is_some_and(String::is_empty) {
        return Err(OpError::new(
            ErrorCode::Usage,
            "the command is empty: give argv[0] and its arguments",
        ));
    }
    if req.client.kind == crate::broker::mounts::MOUNT_KIND {
        return Err(OpError::new(
            ErrorCode::Usage,
            "client kind `mount` is the broker's own (reads of a mount); no request may claim it",
        ));
    }
    if req.argv.len() > MAX_ARGV {
        return Err(OpError::new(
            ErrorCode::Usage,
            format!(
                "the command has {} arguments; keyveil runs at most {MAX_ARGV}; nothing was run",
                req.argv.len()
            ),
        )
        .hint("pass long lists of files through a file or stdin (for example `xargs` inside a script you run), not as arguments"));
    }
    if let Some(s) = &req.stdin
        && s.len() > crate::broker::state::MAX_STDIN_BYTES
    {
        return Err(OpError::new(
            ErrorCode::Usage,
            format!(
                "standard input of {} bytes; keyveil takes at most {} KiB (the card shows it and the grant binds it); nothing was run",
                s.len(),
                crate::broker::state::MAX_STDIN_BYTES / 1024
            ),
        )
        .hint("write large input to a file in the working directory and pass its path instead"));
    }
    Ok(())
}

/// Whether the command may read its stdin as program text: judged on the file `argv[0]` runs
/// (a script named `./cat`, a link `./wc` to `sh`), not on the name alone.
fn reads_program(req: &RunRequest, cwd: &str, search_path: &str, home: Option<&str>) -> bool {
    req.stdin.is_some() && {
        let exe = req
            .argv
            .first()
            .and_then(|a| crate::pin::resolve(a, search_path, std::path::Path::new(cwd)).ok());
        let (cwd_p, home_p) = (std::path::Path::new(cwd), home.map(std::path::Path::new));
        // Where the agent could have put it or can rewrite it: its usual places, a folder it
        // owns or can write, or a file of its own.
        let writable = exe.as_deref().is_some_and(|e| {
            crate::pin::requester_writable(e, cwd_p, home_p)
                || e.parent()
                    .is_some_and(|d| crate::pin::path_dirs::agent_writable(d, cwd_p, home_p))
                || std::fs::metadata(e).is_ok_and(|m| {
                    // (A broker run as root owns the system's programs too.)
                    let me = rustix::process::geteuid();
                    !me.is_root() && std::os::unix::fs::MetadataExt::uid(&m) == me.as_raw()
                })
        });
        crate::stdin_program::reads_program_at(&req.argv, exe.as_deref(), writable)
    }
}

/// Program text longer than the card shows would be approved unseen: refused.
fn check_shown_stdin(req: &RunRequest, program: bool) -> Result<(), OpError> {
    if let Some(s) = &req.stdin
        && program
        && s.chars().count() > crate::broker::state::SHOWN_STDIN_CHARS
    {
        return Err(OpError::new(
            ErrorCode::Usage,
            format!(
                "standard input of {} characters may be program text for this command, and the card shows at most {}: no one could read what they approve; nothing was run",
                s.chars().count(),
                crate::broker::state::SHOWN_STDIN_CHARS
            ),
        )
        .hint("put the program in a file in the working directory and run that file (the card pins it), or send a shorter input"));
    }
    Ok(())
}

/// Refuses a command whose name the requester's own `PATH` resolves to a different file, in a
/// place the requester can write (`./node_modules/.bin/npm` shadowing `/usr/bin/npm`): keyveil
/// runs the policy's file, but an ambiguity like this is an attack or a mistake worth stopping.
fn check_path_shadow(
    req: &RunRequest,
    cwd: &str,
    search_path: &str,
    home: Option<&str>,
) -> Result<(), OpError> {
    let Some(argv0) = req.argv.first() else {
        return Ok(());
    };
    let Some((_, rpath)) = req.env.iter().find(|(k, _)| k == "PATH") else {
        return Ok(());
    };
    let cwd_p = std::path::Path::new(cwd);
    let Some(theirs) = pin::resolve_as_requester(argv0, rpath, cwd_p) else {
        return Ok(());
    };
    let ours = pin::resolve(argv0, search_path, cwd_p).ok();
    if ours.as_ref() != Some(&theirs)
        && pin::requester_writable(&theirs, cwd_p, home.map(std::path::Path::new))
    {
        return Err(OpError::new(
            ErrorCode::Denied,
            format!(
                "refused: the requester's PATH resolves the executable \"{}\" to {}, a file it can write, but the policy PATH resolves it to {}",
                keyveil_proto::display::visible(argv0),
                keyveil_proto::display::visible(&theirs.to_string_lossy()),
                ours.map(|p| keyveil_proto::display::visible(&p.to_string_lossy())).unwrap_or_else(|| "nothing".to_owned())
            ),
        )
        .hint("run the intended program by its absolute path, or remove the shadowing directory from PATH"));
    }
    Ok(())
}
