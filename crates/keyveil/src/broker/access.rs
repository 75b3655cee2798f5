//! Requests and approvals: turning an ask into a request the human can judge (pinned
//! executable, fingerprinted inputs, risk flags), and an approval into a scoped grant.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Broker;
use super::factor_ops::{Proof, rule_binds, rule_matches, verify_factor};
use super::peer::Peer;
use super::prefix::deny_covers;
use super::state::{
    AccessReq, Ask, ChosenValue, DENIAL_MEMORY, Grant, Inner, NewVariable, ONCE_GRANT_TTL_SECONDS,
    OpError, OpResult, RequestState, new_id,
};
use crate::pin::{self, FilePin, InputPin};
use crate::risk;
use keyveil_proto::AccessRequest;
use keyveil_proto::ErrorCode;
use keyveil_proto::op;
use keyveil_vault::FactorKind;

/// Most requests one client may have waiting at once; more are refused until the human answers
/// (an approval flood must not bury one bad request among many good ones). A client is the
/// real origin of the connection (`peer.rs`), never the claimed name.
pub(crate) const MAX_OPEN_REQUESTS_PER_CLIENT: usize = 3;
/// Most requests waiting at once from all clients together: the bound that holds even for a
/// same-user process that starts each request from a new executable (a copy) to look like
/// a new origin.
pub(crate) const MAX_OPEN_REQUESTS: usize = 12;
/// Key of [`Inner::recent`] that counts every request (origins are paths, `unreadable` or
/// `unknown`, never empty).
const ALL: &str = "";
/// How long a denial feeds the `denied-before` flag.
const DENIED_FLAG_MEMORY: Duration = Duration::from_secs(3600);

/// Environment variables that make a process run code they name, or change how it finds code:
/// never passed through from a requester.
pub(crate) fn is_injection_var(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "BASH_ENV",
        "ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PROMPT_COMMAND",
        "IFS",
        "CDPATH",
        "GLOBIGNORE",
        "PS4",
        "NODE_OPTIONS",
        "NODE_PATH",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PYTHONHOME",
        "PYTHONINSPECT",
        "PYTHONUSERBASE",
        "PERL5OPT",
        "PERL5LIB",
        "PERLLIB",
        "PERL5DB",
        "RUBYOPT",
        "RUBYLIB",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "CLASSPATH",
        "DOTNET_STARTUP_HOOKS",
        "GCONV_PATH",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "RES_OPTIONS",
        "TERMINFO",
        "TERMINFO_DIRS",
        "EDITOR",
        "VISUAL",
        "PAGER",
        "GIT_EXEC_PATH",
        "GIT_ASKPASS",
        "SSH_ASKPASS",
        "GIT_EDITOR",
        "GIT_PAGER",
        "GIT_TEMPLATE_DIR",
        "GIT_PROXY_COMMAND",
        "PATH",
        "HOME",
        "ZDOTDIR",
        "XDG_CONFIG_HOME",
        "NPM_CONFIG_USERCONFIG",
        "npm_config_userconfig",
        "CARGO_HOME",
        "RUSTC_WRAPPER",
        "RUSTC",
        "CC",
        "CXX",
        "LESSOPEN",
        "LESSCLOSE",
        // Found by a red-team pass: programs that run, load or fetch code these name.
        "BROWSER",
        "SHELL",
        "MANPAGER",
        "TMPDIR",
        "TMP",
        "TEMP",
        "TEMPDIR",
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "GOFLAGS",
        "GOROOT",
        "GOTOOLCHAIN",
        "GOPROXY",
        "MAKEFLAGS",
        "MFLAGS",
        "GNUMAKEFLAGS",
        "CFLAGS",
        "CXXFLAGS",
        "CPPFLAGS",
        "LDFLAGS",
        "LIBRARY_PATH",
        "CPATH",
        "C_INCLUDE_PATH",
        "CPLUS_INCLUDE_PATH",
        "PKG_CONFIG_PATH",
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "UV_INDEX_URL",
        "UV_EXTRA_INDEX_URL",
        "GEM_HOME",
        "GEM_PATH",
        "BUNDLE_GEMFILE",
        // Trust and traffic: an agent-chosen CA or proxy sees what a granted run sends.
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "NODE_EXTRA_CA_CERTS",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ];
    const PREFIX: &[&str] = &[
        "LD_",
        "DYLD_",
        "GIT_CONFIG",
        "GIT_SSH",
        "BASH_FUNC_",
        "npm_config_",
        "NPM_CONFIG_",
        "MALLOC_",
        "GLIBC_",
        // Every git setting (GIT_DIR, GIT_EXTERNAL_DIFF, ...); `GH_TOKEN`, `GITHUB_TOKEN` pass.
        "GIT_",
        // Every interpreter setting (PYTHONWARNINGS, PYTHONBREAKPOINT, ...).
        "PYTHON",
        "RUSTC_",
        // Cargo's build runners, wrappers and aliases (`CARGO_REGISTRY_TOKEN` passes).
        "CARGO_BUILD_",
        "CARGO_TARGET_",
        "CARGO_ALIAS_",
        "CARGO_UNSTABLE_",
    ];
    EXACT.contains(&name) || PREFIX.iter().any(|p| name.starts_with(p))
}

/// `cwd` with `.` and `..` removed lexically (no symlink resolution).
fn lexical(cwd: &str) -> std::path::PathBuf {
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

/// What to tell the requester to do.
pub(crate) fn approve_hint(id: u64) -> String {
    format!(
        "ask the user to approve it in a terminal: `keyveil approve {id}` (or deny: `keyveil deny {id}`); then call again with the same arguments"
    )
}

/// Checks the pass-through names of a request.
pub(crate) fn check_pass_env(names: &[String]) -> OpResult<Vec<String>> {
    let mut out = Vec::new();
    for n in names {
        if !keyveil_vault::is_valid_name(n) {
            return Err(OpError::new(
                ErrorCode::Usage,
                format!(
                    "invalid pass-through name \"{}\"",
                    keyveil_proto::display::clip(n, 80)
                ),
            ));
        }
        if is_injection_var(n) || crate::loaders::is_loader_var(n) {
            return Err(OpError::new(
                ErrorCode::Denied,
                format!("refused to pass {n} through: it can make the granted process run other code"),
            )
            .hint("the child's environment is built from policy (PATH, HOME) and the granted values; drop this name"));
        }
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    out.sort();
    Ok(out)
}

/// The requester's value of each pass-through name, as the child would get it (the first
/// occurrence in `env`, like `runner::child_env`); `None` when it is not set.
pub(crate) fn pass_values(
    pass_env: &[String],
    env: &[(String, String)],
) -> std::collections::BTreeMap<String, Option<String>> {
    pass_env
        .iter()
        .map(|n| {
            let v = env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            (n.clone(), v)
        })
        .collect()
}

/// The values of a request the requester could have chosen: its pass-through values, and the
/// requested variables whose value was stored (as typed, not generated) by a call that proved no
/// factor. Values stored with the factor are never read here.
fn chosen_values(inner: &Inner, ask: &Ask) -> OpResult<Vec<ChosenValue>> {
    let mut out: Vec<ChosenValue> = ask
        .pass_values
        .iter()
        .map(|(n, v)| ChosenValue {
            name: Some(n.clone()),
            // A mount's reader passes nothing: these are its own environment (`broker/mounts/`).
            origin: if ask.mount.is_some() {
                "reader-env"
            } else {
                "pass-env"
            },
            ..ChosenValue::of(v.as_deref())
        })
        .collect();
    // A locked broker refuses the request a little later; nothing to show then.
    let Ok(vault) = inner.vault() else {
        return Ok(out);
    };
    let Some(e) = vault.data().environments.get(&ask.environment) else {
        return Ok(out);
    };
    for n in &ask.variables {
        let Some(var) = e.variables.get(n) else {
            continue;
        };
        if let Some(at) = agent_chosen(var) {
            let Some(sealed) = var.value.as_ref() else {
                continue;
            };
            let open = sealed.open().map_err(|e| {
                OpError::new(
                    ErrorCode::Failed,
                    format!("cannot read a stored value: {e}"),
                )
            })?;
            out.push(ChosenValue {
                origin: "stored-without-factor",
                variable: Some(n.clone()),
                stored_at: Some(at),
                ..ChosenValue::of(Some(open.expose()))
            });
        }
    }
    Ok(out)
}

/// When `var`'s current value was stored without the factor, as given by the caller (so an
/// agent may have chosen it): `None` for values stored with the factor, generated, dynamic, or
/// stored before keyveil recorded how.
pub(crate) fn agent_chosen(var: &keyveil_vault::Variable) -> Option<Timestamp> {
    match var.stored {
        Some(r)
            if !r.factor
                && var.source == keyveil_vault::Source::Human
                && var.dynamic.is_none()
                && var.value.is_some() =>
        {
            Some(r.at)
        }
        _ => None,
    }
}

/// Checks the pass-through values a grant bound by digest against a run. `Err` says, in
/// words, which value changed since the approval. Cheap (the run's own values, already in the
/// request): the stored values the agent could have chosen are checked by [`chosen_expected`]
/// and [`check_chosen_values`] on the very copies the run injects, outside the broker's lock.
pub(crate) fn check_chosen(inner: &Inner, gid: &str, ask: &Ask) -> Result<(), String> {
    use sha2::Digest as _;
    let Some(g) = inner.grants.get(gid) else {
        return Ok(());
    };
    for (n, v) in &ask.pass_values {
        let now = v
            .as_deref()
            .map(|v| hex::encode(sha2::Sha256::digest(v.as_bytes())));
        if g.pass_values.get(n).cloned().unwrap_or(None) != now {
            return Err(format!(
                "the pass-through value of {} is not the one approved (changed since approval)",
                keyveil_proto::display::visible(n)
            ));
        }
    }
    Ok(())
}

/// For the variables among `names` (of grant `gid`'s environment) whose value was stored
/// without the factor, the SHA-256 (hex) the grant bound at approval (`None`: none bound, so
/// no value may be injected), with the name as clients see it. Taken under the lock with the
/// sealed copies the run will inject; nothing is opened here.
pub(crate) fn chosen_expected(
    inner: &Inner,
    gid: &str,
    names: &[String],
) -> Vec<(String, Option<String>, String)> {
    let Some(g) = inner.grants.get(gid) else {
        return Vec::new();
    };
    let Ok(vault) = inner.vault() else {
        return Vec::new();
    };
    let Some(e) = vault.data().environments.get(&g.environment) else {
        return Vec::new();
    };
    names
        .iter()
        .filter(|n| e.variables.get(*n).and_then(agent_chosen).is_some())
        .map(|n| {
            (
                n.clone(),
                g.chosen_vars.get(n).cloned(),
                inner.shown_name(&g.environment, n),
            )
        })
        .collect()
}

/// Compares the opened values a run is about to inject with the digests [`chosen_expected`]
/// gave. Outside the lock: opening and hashing thousands of values must not stall the broker.
/// `Err` says which variable holds a value that is not the one approved.
pub(crate) fn check_chosen_values(
    expected: &[(String, Option<String>, String)],
    values: &[(String, keyveil_vault::SecretValue)],
) -> Result<(), String> {
    use sha2::Digest as _;
    for (name, want, shown) in expected {
        let now = values
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| hex::encode(sha2::Sha256::digest(v.expose().as_bytes())));
        if now.is_none() || want.as_ref() != now.as_ref() {
            return Err(format!(
                "{shown} holds a value stored without the factor that is not the one approved (changed since approval)"
            ));
        }
    }
    Ok(())
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
    for g in inner.grants.values() {
        if g.revoked || g.client != ask.client.scope_key() || g.environment != ask.environment {
            continue;
        }
        let inside_lexically = lex == Path::new(&g.cwd) || (g.subdirs && lex.starts_with(&g.cwd));
        if inside_lexically && !g.cwd_covers(&ask.cwd) {
            return Err(OpError::new(
                ErrorCode::Denied,
                format!(
                    "the working directory \"{}\" resolves to \"{}\", outside the approved cwd \"{}\" (a symlink leads out of it)",
                    keyveil_proto::display::visible(given_cwd),
                    keyveil_proto::display::visible(&ask.cwd),
                    keyveil_proto::display::visible(&g.cwd)
                ),
            )
            .hint("run from the approved directory itself; keyveil compares canonical paths"));
        }
    }
    Ok(())
}

/// Finds the pending request for an ask, or creates one. Returns `(request id, created)`.
pub(crate) fn find_or_create_request(
    inner: &mut Inner,
    ask: &Ask,
    pins: Pins,
    reason: Option<String>,
    ttl_seconds: Option<u64>,
) -> OpResult<(u64, bool)> {
    inner.expire_requests();
    // Every ask counts towards the burst rate, coalesced or not: per real origin (never the
    // claimed client name, which any raw frame can vary) and across all origins.
    let key = ask.client.scope_key();
    let now_i = Instant::now();
    let mut count = |k: &str| {
        let recent = inner.recent.entry(k.to_owned()).or_default();
        while recent
            .front()
            .is_some_and(|t| now_i.duration_since(*t) > Duration::from_secs(60))
        {
            recent.pop_front();
        }
        recent.push_back(now_i);
        recent.len()
    };
    let recent_requests = count(&ask.peer.origin);
    let recent_all = count(ALL);
    // Origins quiet for a minute are forgotten (a copy of an executable per request would
    // otherwise grow the map for the broker's life).
    inner.recent.retain(|_, d| {
        d.back()
            .is_some_and(|t| now_i.duration_since(*t) <= Duration::from_secs(60))
    });
    let bursting = risk::bursting(recent_requests, recent_all);
    let chosen = chosen_values(inner, ask)?;
    let mut open = 0;
    let mut open_all = 0;
    for r in inner.requests.values_mut() {
        if r.state == RequestState::Pending {
            open_all += 1;
            if r.peer.origin == ask.peer.origin {
                open += 1;
            }
        }
        if !r.same_ask(ask) {
            continue;
        }
        match &r.state {
            RequestState::Pending
                if r.executable == pins.executable
                    && r.inputs == pins.inputs
                    && r.chosen_values == chosen =>
            {
                // Coalesce: the same ask again only counts, and a burst is flagged.
                r.asks += 1;
                if bursting && !r.risk.iter().any(|f| f == "burst") {
                    r.risk.push("burst".to_owned());
                }
                return Ok((r.id, false));
            }
            RequestState::Denied { reason }
                if r.decided.is_some_and(|d| d.elapsed() < DENIAL_MEMORY) =>
            {
                return Err(OpError::new(
                    ErrorCode::Denied,
                    format!(
                        "the user denied this request (#{}){}",
                        r.id,
                        reason
                            .as_ref()
                            .map(|x| format!(": {}", keyveil_proto::display::visible_text(x)))
                            .unwrap_or_default()
                    ),
                )
                .hint("do not ask again in a loop; ask the user what they want instead"));
            }
            _ => {}
        }
    }
    if open >= MAX_OPEN_REQUESTS_PER_CLIENT {
        return Err(OpError::new(
            ErrorCode::Denied,
            format!(
                "{open} requests of this client already wait for the user; no more are queued (clients are counted by the process that connects, not by the name they give)"
            ),
        )
        .hint("wait until the user has answered them (`keyveil requests` lists them)"));
    }
    if open_all >= MAX_OPEN_REQUESTS {
        return Err(OpError::new(
            ErrorCode::Denied,
            format!("{open_all} requests already wait for the user; no more are queued"),
        )
        .hint("wait until the user has answered them (`keyveil requests` lists them)"));
    }
    let argv_key = ask.argv.clone().unwrap_or_default();
    let cutoff = Timestamp::now() - jiff::SignedDuration::from_secs(risk::NEW_VARIABLE_SECONDS);
    let (new_variables, all_variables) = {
        let vault = inner.vault()?;
        match vault.data().environments.get(&ask.environment) {
            None => (Vec::new(), false),
            Some(e) => {
                let new: Vec<NewVariable> = ask
                    .variables
                    .iter()
                    .filter_map(|n| e.variables.get(n).map(|v| (n, v)))
                    .filter_map(|(n, v)| {
                        // Stored without the factor recently, or before keyveil recorded how
                        // (then by creation time); never a value stored with the factor.
                        let (recent, how) = match v.stored {
                            Some(r) if r.factor => (false, ""),
                            Some(r) => (r.at > cutoff, "without the factor"),
                            None => (v.created_at > cutoff, "unknown"),
                        };
                        recent.then(|| NewVariable {
                            variable: n.clone(),
                            created_at: v.created_at,
                            stored_at: v.stored.map(|r| r.at),
                            stored: how,
                        })
                    })
                    .collect();
                let all =
                    e.variables.len() > 1 && e.variables.keys().all(|k| ask.variables.contains(k));
                (new, all)
            }
        }
    };
    let behaviour = risk::behaviour(&argv_key);
    let denied_behaviour: Vec<String> = inner
        .denied_behaviour
        .iter()
        .filter(|(t, _)| t.elapsed() < DENIED_FLAG_MEMORY)
        .flat_map(|(_, b)| risk::shared_behaviour(b, &behaviour))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let facts = risk::Facts {
        writable_executable: pins.writable,
        approved_before: inner
            .approved_argv
            .contains(&(ask.environment.clone(), argv_key.clone())),
        denied_before: inner
            .denied_argv
            .get(&argv_key)
            .is_some_and(|t| t.elapsed() < DENIED_FLAG_MEMORY),
        recent_requests,
        recent_all,
        new_variable: !new_variables.is_empty(),
        all_variables,
        denied_behaviour,
    };
    let contradictions = risk::contradictions(reason.as_deref(), &facts);
    let mut strings: Vec<&str> = vec![ask.cwd.as_str(), ask.environment.as_str()];
    if let Some(r) = reason.as_deref() {
        strings.push(r);
    }
    strings.extend(ask.variables.iter().map(String::as_str));
    strings.extend(ask.pass_env.iter().map(String::as_str));
    let mut flags = risk::assess(&argv_key, &strings, &ask.variables, &facts);
    if ask.argv.is_none() {
        flags.push("any-command".to_owned());
    }
    // A mount reader's environment has its own flag (`code-loading-environment`).
    if chosen.iter().any(|c| c.origin != "reader-env") {
        flags.push("agent-chosen-value".to_owned());
    }
    if ask.stdin.as_ref().is_some_and(|s| s.program) {
        flags.push("stdin-program".to_owned());
    }
    if super::sweep_ops::any_compromised(inner, &ask.environment, &ask.variables) {
        flags.push("compromised-value".to_owned());
    }
    if !contradictions.is_empty() {
        flags.push("reason-contradicts-facts".to_owned());
    }
    if let Some(m) = &ask.mount {
        flags.extend(m.flags.iter().cloned());
    }
    flags.sort();
    flags.dedup();
    // The claim (kind, pid) disagrees with the process that connected. A mount read has no
    // claim: the broker itself made the ask from the reader it found.
    let claim_mismatch = if ask.mount.is_some() {
        None
    } else {
        ask.peer.mismatch(&ask.client)
    };
    if claim_mismatch.is_some() {
        flags.push("claimed-identity".to_owned());
    }
    // Policy rules, made by the human with their factor.
    let (deny_hit, auto_hit) = {
        let policy = inner
            .vault()?
            .data()
            .environments
            .get(&ask.environment)
            .map(|e| e.policy.clone())
            .unwrap_or_default();
        let deny_hit = policy
            .deny
            .iter()
            .position(|r| deny_covers(&r.argv, r.prefix, &argv_key));
        // Auto-approval never covers a request carrying hidden-text or injection signs.
        let suspicious = flags.iter().any(|f| {
            matches!(
                f.as_str(),
                "control-characters"
                    | "bidi-control"
                    | "invisible-characters"
                    | "confusable"
                    | "padding"
                    | "workspace-executable"
                    | "claimed-identity"
                    | "agent-chosen-value"
                    | "compromised-value"
                    | "new-variable"
                    | "rephrased-denied"
            )
        });
        // A rule covers a request only while what it runs is what the rule bound when the
        // human made it: a config, script or program changed or added since goes to the human.
        let mut unbound = None;
        // A mount read is never auto-approved: a rule was made for runs, whose output keyveil
        // redacts; a mount's reader it does not. Nor is a run carrying standard input: a rule
        // binds a command and its files, never bytes the requester writes.
        let auto_hit =
            if suspicious || ask.argv.is_none() || ask.mount.is_some() || ask.stdin.is_some() {
                None
            } else {
                policy.auto_approve.iter().enumerate().find_map(|(i, r)| {
                    let matches = rule_matches(&r.argv, r.prefix, &argv_key)
                        && Path::new(&ask.cwd).starts_with(&r.cwd);
                    if matches && !rule_binds(r, &pins) {
                        unbound.get_or_insert(i);
                        return None;
                    }
                    matches.then_some((i, r.ttl_seconds))
                })
            };
        if auto_hit.is_none()
            && let Some(i) = unbound
        {
            flags.push("changed-since-rule".to_owned());
            inner.audit_note(
                "auto_approve_skipped",
                json!({"rule": i, "why": "what the command runs is not what the rule bound when it was made"}),
            );
        }
        (deny_hit, auto_hit)
    };
    if let Some(i) = deny_hit {
        inner.audit_note(
            "deny_rule",
            json!({"rule": i, "client": key, "environment": ask.environment, "argv": ask.argv}),
        );
        return Err(OpError::new(
            ErrorCode::Denied,
            format!(
                "refused by deny rule #{i} of environment '{}'",
                ask.environment
            ),
        )
        .hint("the user's policy forbids this command; ask the user instead of retrying"));
    }
    let id = inner.next_request;
    // Requester-supplied strings (argv, reason, cwd, names, client info) are stored as given
    // and matched only against values no agent can guess (`card_redact.rs`): which of them a
    // matcher marks is otherwise an oracle an agent reads back from the audit without any grant
    // (issue 13, item 1). Humans see them through `display`'s escaper.
    // Recorded before the request exists: refused when the log cannot be written. Its strings
    // go through the card redactor, as the card's do (`card_redact.rs`).
    let mut entry = json!({
            "request_id": id,
            "client": key,
            "client_version": ask.client.version,
            "client_pid": ask.client.pid,
            "peer": ask.peer,
            "claimed_identity": claim_mismatch,
            "environment": ask.environment,
            "variables": ask.variables,
            "argv": ask.argv,
            "cwd": ask.cwd,
            "pass_env": ask.pass_env,
            "executable": pins.executable.as_ref().map(|p| json!({"path": p.path, "sha256": p.sha256})),
            "inputs": pins.inputs.iter().map(|i| json!({"path": i.path, "sha256": i.sha256})).collect::<Vec<_>>(),
            "risk": &flags,
            "reason": reason,
            // Which values were shown and bound, by digest: the values stay out of the log.
            "chosen_values": chosen.iter().map(|c| json!({
                "origin": c.origin, "name": c.name, "variable": c.variable,
                "stored_at": c.stored_at, "bytes": c.bytes, "sha256": c.sha256,
            })).collect::<Vec<_>>(),
            "new_variables": &new_variables,
            // The requester's standard input by size and digest (its text is on the card).
            "stdin": ask.stdin.as_ref().map(|s| json!({"bytes": s.bytes, "sha256": s.sha256, "program": s.program})),
            "contradictions": &contradictions,
            "mount": ask.mount.as_ref().map(|m| &m.path),
    });
    if let Some(r) = inner.card_redactor() {
        super::card_redact::redact_json(&r, &mut entry);
    }
    inner.must_audit("request", entry)?;
    inner.next_request += 1;
    if let Some(f) = &inner.request_ids {
        super::request_ids::store(f, inner.next_request);
    }
    inner.requests.insert(
        id,
        AccessReq {
            id,
            client: ask.client.clone(),
            peer: ask.peer.clone(),
            environment: ask.environment.clone(),
            variables: ask.variables.clone(),
            argv: ask.argv.clone(),
            cwd: ask.cwd.clone(),
            reason: reason.clone(),
            ttl_seconds,
            pass_env: ask.pass_env.clone(),
            executable: pins.executable.clone(),
            inputs: pins.inputs.clone(),
            risk: flags,
            chosen_values: chosen,
            stdin: ask.stdin.clone(),
            new_variables,
            contradictions,
            mount: ask.mount.as_ref().map(|m| m.path.clone()),
            asks: 1,
            created_at: Timestamp::now(),
            state: RequestState::Pending,
            decided: None,
        },
    );
    if let Some((rule, ttl)) = auto_hit {
        let req = inner.requests.get(&id).cloned();
        if let Some(req) = req {
            grant_request(
                inner,
                &req,
                ApproveOptions {
                    ttl_seconds: Some(ttl),
                    uses: None,
                    any_command: false,
                    prefix: false,
                    subdirs: false,
                },
                "auto-approve rule",
                Some(rule),
            )?;
        }
        return Ok((id, true));
    }
    // The notifier's command line (readable in `/proc` by the agent) carries the argv and
    // reason: redacted as the card is.
    let (argv, reason) = match inner.card_redactor() {
        Some(r) => (
            ask.argv.as_ref().map(|a| {
                a.iter()
                    .map(|w| super::card_redact::redact_str(&r, w))
                    .collect::<Vec<_>>()
            }),
            reason
                .as_deref()
                .map(|s| super::card_redact::redact_str(&r, s)),
        ),
        None => (ask.argv.clone(), reason.clone()),
    };
    crate::notify::request_created(id, &ask.environment, argv.as_deref(), reason.as_deref());
    Ok((id, true))
}

/// `request_access`: a request for access, optionally bound to a command.
/// `peer` is the process at the other end of the socket (`peer.rs`).
pub(crate) async fn request_access(
    broker: &Broker,
    a: AccessRequest,
    peer: Peer,
) -> OpResult<op::AccessRequested> {
    if a.client.kind == super::mounts::MOUNT_KIND {
        return Err(OpError::new(
            ErrorCode::Usage,
            "client kind `mount` is the broker's own (reads of a mount); no request may claim it",
        ));
    }
    let cwd = super::cwd::canonical_cwd(&a.cwd)?;
    if let Some(argv) = &a.argv
        && (argv.is_empty() || argv.first().is_some_and(String::is_empty))
    {
        return Err(OpError::new(ErrorCode::Usage, "the command is empty"));
    }
    let pass_env = check_pass_env(&a.pass_env)?;
    let (vars, search_path, home) = {
        let inner = broker.lock();
        (
            inner.resolve_variables(&a.environment, a.variables.as_deref())?,
            inner.policy_path(&a.environment),
            inner.child_home(),
        )
    };
    let pins = match &a.argv {
        Some(argv) => prepare_bounded(argv.clone(), cwd.clone(), search_path, home).await?,
        None => Pins::default(),
    };
    let ask = Ask {
        client: a.client,
        environment: a.environment,
        variables: vars,
        argv: a.argv,
        cwd,
        pass_values: pass_values(&pass_env, &a.pass_values),
        pass_env,
        // Runs under this grant get /dev/null (a run carrying stdin is another request).
        stdin: None,
        peer,
        mount: None,
    };
    let mut inner = broker.lock();
    let (id, created) = find_or_create_request(&mut inner, &ask, pins, a.reason, a.ttl_seconds)?;
    drop(inner);
    if created {
        broker.notify();
    }
    Ok(op::AccessRequested {
        request_id: id,
        status: "pending".to_owned(),
        hint: approve_hint(id),
    })
}

/// `access_status`.
pub(crate) fn access_status(broker: &Broker, id: u64) -> OpResult<op::AccessState> {
    let mut inner = broker.lock();
    inner.expire_requests();
    let r = inner
        .requests
        .get(&id)
        .ok_or_else(|| OpError::new(ErrorCode::NotFound, format!("no request #{id}")))?;
    Ok(match &r.state {
        RequestState::Pending => op::AccessState::Pending {
            hint: approve_hint(id),
        },
        RequestState::Approved { grant_id } => {
            let g = inner.grants.get(grant_id);
            let (grant_id, expires_at) = (grant_id.clone(), g.map(|g| g.expires_at));
            if g.is_some_and(|g| g.live(Timestamp::now())) {
                op::AccessState::Approved {
                    grant_id,
                    expires_at,
                }
            } else {
                op::AccessState::Ended {
                    grant_id,
                    expires_at,
                }
            }
        }
        RequestState::Denied { reason } => op::AccessState::Denied {
            reason: reason.clone(),
        },
        RequestState::Expired => op::AccessState::Expired,
    })
}

/// Pending requests as approval cards (what the CLI card and the web page render).
///
/// Every card's strings go through the card redactor (`card_redact.rs`): what a card shows of a
/// process may hold a value a granted child has.
pub(crate) fn requests(broker: &Broker) -> op::PendingRequests {
    let mut inner = broker.lock();
    inner.expire_requests();
    let redactor = inner.card_redactor();
    let requests = inner
        .requests
        .values()
        .filter(|r| r.state == RequestState::Pending)
        .map(|r| card_of(r, bound_on_card(&inner, r)))
        .map(|c| match &redactor {
            Some(red) => super::card_redact::redact_card(red, c),
            None => c,
        })
        .collect();
    op::PendingRequests { requests }
}

/// The requested variables the environment's policy binds to hosts.
fn bound_on_card(inner: &Inner, r: &AccessReq) -> Vec<op::BoundVariable> {
    let Some(p) = inner
        .vault
        .as_ref()
        .and_then(|v| v.data().environments.get(&r.environment))
        .map(|e| &e.policy)
    else {
        return Vec::new();
    };
    r.variables
        .iter()
        .filter_map(|v| {
            p.bindings.get(v).map(|hosts| op::BoundVariable {
                variable: v.clone(),
                hosts: hosts.clone(),
            })
        })
        .collect()
}

/// A request as its card shows it.
fn card_of(r: &AccessReq, bound: Vec<op::BoundVariable>) -> op::RequestCard {
    let proc_info = |p: &super::peer::Proc| op::ProcInfo {
        pid: p.pid,
        comm: p.comm.clone(),
        exe: p.exe.clone(),
        keyveil: p.keyveil,
    };
    op::RequestCard {
        id: r.id,
        client: r.client.clone(),
        peer: op::PeerInfo {
            process: r.peer.process.as_ref().map(proc_info),
            keyveil_mode: r.peer.keyveil_mode.clone(),
            parents: r.peer.parents.iter().map(proc_info).collect(),
            origin: r.peer.origin.clone(),
        },
        environment: r.environment.clone(),
        variables: r.variables.clone(),
        argv: r.argv.clone(),
        cwd: r.cwd.clone(),
        reason: r.reason.clone(),
        ttl_seconds: r.ttl_seconds,
        pass_env: r.pass_env.clone(),
        executable: r.executable.as_ref().map(file_pin_info),
        inputs: r.inputs.iter().map(input_pin_info).collect(),
        risk: r.risk.clone(),
        chosen_values: r
            .chosen_values
            .iter()
            .map(|c| op::ChosenValueInfo {
                origin: c.origin.to_owned(),
                name: c.name.clone(),
                variable: c.variable.clone(),
                stored_at: c.stored_at,
                value: c.value.clone(),
                bytes: c.bytes,
                clipped: c.clipped,
                sha256: c.sha256.clone(),
            })
            .collect(),
        stdin: r.stdin.clone(),
        new_variables: r
            .new_variables
            .iter()
            .map(|n| op::NewVariableInfo {
                variable: n.variable.clone(),
                created_at: n.created_at,
                stored_at: n.stored_at,
                stored: n.stored.to_owned(),
            })
            .collect(),
        contradictions: r.contradictions.clone(),
        bound,
        asks: r.asks,
        created_at: r.created_at,
        state: state_word(&r.state).to_owned(),
        expires_at: r.expires_at(),
        mount: r.mount.as_ref().map(|p| op::MountRead {
            path: p.clone(),
            pid: r.client.pid,
        }),
    }
}

/// A pinned file as replies show it.
pub(crate) fn file_pin_info(p: &crate::pin::FilePin) -> op::FilePinInfo {
    op::FilePinInfo {
        path: p.path.clone(),
        dev: p.dev,
        ino: p.ino,
        size: p.size,
        mtime_ns: p.mtime_ns,
        ctime_ns: p.ctime_ns,
        sha256: p.sha256.clone(),
    }
}

/// A pinned input as replies show it.
pub(crate) fn input_pin_info(p: &crate::pin::InputPin) -> op::InputPinInfo {
    op::InputPinInfo {
        role: p.role.clone(),
        path: p.path.clone(),
        sha256: p.sha256.clone(),
        detail: p.detail.clone(),
    }
}

/// The `factor_proof::card_digest` of pending request `id` as a `requests` listing shows it
/// (names hidden where the policy hides them); `None` when it is not pending.
pub(crate) fn card_digest_of(broker: &Broker, id: u64) -> Option<String> {
    let card = requests(broker).requests.into_iter().find(|r| r.id == id)?;
    let mut entry = serde_json::to_value(card).ok()?;
    broker.lock().hide_names_in(&mut entry);
    Some(crate::factor_proof::card_digest(&entry))
}

/// Options of an approval.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ApproveOptions {
    /// Lifetime (seconds); `None` = one use within 15 minutes.
    pub ttl_seconds: Option<u64>,
    /// Uses.
    pub uses: Option<u32>,
    /// Any command.
    pub any_command: bool,
    /// argv prefix.
    pub prefix: bool,
    /// Canonical subdirectories.
    pub subdirs: bool,
}

/// Approves a request with the human's factor, creating a grant.
///
/// `card` is the `factor_proof::card_digest` of the request as the human was shown it (the CLI
/// and the approval page send it); the approval is refused when the request no longer has it.
pub(crate) async fn approve(
    broker: &Arc<Broker>,
    id: u64,
    card: Option<&str>,
    proof: Proof,
    o: ApproveOptions,
) -> OpResult<op::Approved> {
    let required = pending_factor(broker, id)?;
    // The factor first (so a forged proof is counted and audited whatever else it carries),
    // then the card: an approval applies only to the request as the human was shown it.
    let used = verify_factor(broker, proof, required, json!({"request_id": id}))
        .await?
        .used;
    if let Some(card) = card {
        check_card(broker, id, card)?;
    }
    grant_pending(broker, id, o, used)
}

/// The factor approving pending request `id` needs (its environment's policy).
///
/// # Errors
/// The vault is locked; no such request; it is no longer pending.
pub(crate) fn pending_factor(broker: &Broker, id: u64) -> OpResult<FactorKind> {
    let mut inner = broker.lock();
    inner.vault()?;
    inner.expire_requests();
    let env = match inner.requests.get(&id) {
        None => {
            return Err(
                OpError::new(ErrorCode::NotFound, format!("no request #{id}"))
                    .hint("list pending requests with `keyveil requests`"),
            );
        }
        Some(r) if r.state != RequestState::Pending => {
            return Err(OpError::new(
                ErrorCode::Failed,
                format!(
                    "request #{id} is no longer pending ({})",
                    state_word(&r.state)
                ),
            ));
        }
        Some(r) => r.environment.clone(),
    };
    Ok(inner
        .vault()?
        .data()
        .environments
        .get(&env)
        .map(|e| e.policy.factor)
        .unwrap_or(FactorKind::Passphrase))
}

/// Refuses (and audits) an approval of request `id` whose card is not `card`, the digest of
/// the request as the human was shown it.
pub(crate) fn check_card(broker: &Broker, id: u64, card: &str) -> OpResult<()> {
    if card_digest_of(broker, id).as_deref() == Some(card) {
        return Ok(());
    }
    broker.lock().audit_note(
        "approve_refused",
        json!({"request_id": id, "why": "the card the human was shown is not this request"}),
    );
    Err(OpError::new(
        ErrorCode::Denied,
        format!("request #{id} is not the one you were shown; nothing was approved"),
    )
    .hint("the request changed, or something between your terminal and the broker showed you another card: list requests again with `keyveil requests`"))
}

/// Grants pending request `id` (its factor, `used`, already checked) with options `o`.
pub(crate) fn grant_pending(
    broker: &Broker,
    id: u64,
    o: ApproveOptions,
    used: &str,
) -> OpResult<op::Approved> {
    let mut inner = broker.lock();
    // Re-check under the lock: a concurrent approval may have won the race.
    let Some(req) = inner.requests.get(&id).cloned() else {
        return Err(OpError::new(
            ErrorCode::NotFound,
            format!("no request #{id}"),
        ));
    };
    if req.state != RequestState::Pending {
        return Err(OpError::new(
            ErrorCode::Failed,
            format!(
                "request #{id} is no longer pending ({})",
                state_word(&req.state)
            ),
        ));
    }
    let out = grant_request(&mut inner, &req, o, used, None)?;
    drop(inner);
    broker.notify();
    Ok(out)
}

/// Creates the grant for a request (approved by `factor`, or by auto-approve rule `rule`).
fn grant_request(
    inner: &mut Inner,
    req: &AccessReq,
    o: ApproveOptions,
    factor: &str,
    rule: Option<usize>,
) -> OpResult<op::Approved> {
    inner.audit_ready("approve")?;
    let id = req.id;
    let max_ttl = inner
        .vault()?
        .data()
        .environments
        .get(&req.environment)
        .map(|e| e.policy.max_ttl_seconds)
        .unwrap_or(ONCE_GRANT_TTL_SECONDS);
    let (ttl, uses_left) = match o.ttl_seconds {
        Some(t) => (t.min(max_ttl).max(1), o.uses),
        None => (
            ONCE_GRANT_TTL_SECONDS.min(max_ttl.max(60)),
            Some(o.uses.unwrap_or(1)),
        ),
    };
    let any = o.any_command || req.argv.is_none();
    let now = Timestamp::now();
    let grant = Grant {
        id: new_id("g-"),
        request_id: id,
        client: req.client.scope_key(),
        environment: req.environment.clone(),
        variables: req.variables.clone(),
        argv: if any { None } else { req.argv.clone() },
        prefix: o.prefix && !any,
        cwd: req.cwd.clone(),
        subdirs: o.subdirs,
        pass_env: req.pass_env.clone(),
        executable: if any { None } else { req.executable.clone() },
        inputs: if any { Vec::new() } else { req.inputs.clone() },
        pass_values: req
            .chosen_values
            .iter()
            .filter_map(|c| c.name.clone().map(|n| (n, c.sha256.clone())))
            .collect(),
        chosen_vars: req
            .chosen_values
            .iter()
            .filter_map(|c| Some((c.variable.clone()?, c.sha256.clone()?)))
            .collect(),
        stdin_sha256: req.stdin.as_ref().map(|s| s.sha256.clone()),
        created_at: now,
        expires_at: now
            .saturating_add(SignedDuration::from_secs(
                i64::try_from(ttl).unwrap_or(i64::MAX),
            ))
            .unwrap_or(now),
        uses_left,
        runs: 0,
        revoked: false,
        cancel: CancellationToken::new(),
    };
    let gid = grant.id.clone();
    let out = op::Approved {
        request_id: id,
        grant_id: gid.clone(),
        expires_at: grant.expires_at,
        uses_left: grant.uses_left,
        any_command: grant.argv.is_none(),
        prefix: grant.prefix,
        subdirs: grant.subdirs,
    };
    // Recorded before the grant exists: no grant the log does not show.
    inner.must_audit(
        if rule.is_some() {
            "auto_approve"
        } else {
            "approve"
        },
        json!({
            "request_id": id,
            "grant_id": gid,
            "factor": factor,
            "rule": rule,
            "environment": grant.environment,
            "variables": grant.variables,
            "any_command": grant.argv.is_none(),
            "prefix": grant.prefix,
            "subdirs": grant.subdirs,
            "ttl_seconds": ttl,
            "uses": grant.uses_left,
        }),
    )?;
    if let Some(a) = &req.argv {
        inner
            .approved_argv
            .insert((req.environment.clone(), a.clone()));
    }
    inner.grants.insert(gid.clone(), grant);
    if let Some(r) = inner.requests.get_mut(&id) {
        r.state = RequestState::Approved { grant_id: gid };
        r.decided = Some(Instant::now());
    }
    Ok(out)
}

/// A request state as one word.
pub(crate) fn state_word(s: &RequestState) -> &'static str {
    match s {
        RequestState::Pending => "pending",
        RequestState::Approved { .. } => "approved",
        RequestState::Denied { .. } => "denied",
        RequestState::Expired => "expired",
    }
}

/// Denies a request.
pub(crate) fn deny(broker: &Broker, id: u64, reason: Option<String>) -> OpResult<op::Denied> {
    let mut inner = broker.lock();
    let r = inner
        .requests
        .get_mut(&id)
        .ok_or_else(|| OpError::new(ErrorCode::NotFound, format!("no request #{id}")))?;
    if r.state != RequestState::Pending {
        return Err(OpError::new(
            ErrorCode::Failed,
            format!(
                "request #{id} is no longer pending ({})",
                state_word(&r.state)
            ),
        ));
    }
    r.state = RequestState::Denied {
        reason: reason.clone(),
    };
    r.decided = Some(Instant::now());
    let argv = r.argv.clone().unwrap_or_default();
    let now = Instant::now();
    inner
        .denied_behaviour
        .retain(|(t, _)| t.elapsed() < DENIED_FLAG_MEMORY);
    inner.denied_behaviour.push((now, risk::behaviour(&argv)));
    inner.denied_argv.insert(argv, now);
    inner.audit_note("deny", json!({"request_id": id, "reason": reason}));
    drop(inner);
    broker.notify();
    Ok(op::Denied {
        request_id: id,
        status: "denied".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injection_variables_are_recognised() {
        for n in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "DYLD_INSERT_LIBRARIES",
            "BASH_ENV",
            "ENV",
            "NODE_OPTIONS",
            "PYTHONPATH",
            "GIT_CONFIG_COUNT",
            "GIT_SSH_COMMAND",
            "PERL5OPT",
            "JAVA_TOOL_OPTIONS",
            "BASH_FUNC_x%%",
            // The red-team list: each made an approved `python3 app.py` leak a value.
            "PYTHONWARNINGS",
            "PYTHONBREAKPOINT",
            "BROWSER",
            "GIT_EXTERNAL_DIFF",
            "GIT_DIR",
            "RUSTC_WORKSPACE_WRAPPER",
            "CARGO_BUILD_RUSTC_WRAPPER",
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER",
            "RUSTFLAGS",
            "GOFLAGS",
            "MAKEFLAGS",
            "HTTPS_PROXY",
            "https_proxy",
            "NODE_EXTRA_CA_CERTS",
            "SSL_CERT_FILE",
            "SHELL",
            "TMPDIR",
        ] {
            assert!(is_injection_var(n), "{n}");
        }
        for n in [
            "API_TOKEN",
            "CI",
            "NO_COLOR",
            "RUST_LOG",
            "GH_TOKEN",
            "GITHUB_TOKEN",
            "CARGO_REGISTRY_TOKEN",
            "PYPI_TOKEN",
        ] {
            assert!(!is_injection_var(n), "{n}");
        }
        assert!(check_pass_env(&["LD_PRELOAD".into()]).is_err());
        assert_eq!(
            check_pass_env(&["B".into(), "A".into(), "B".into()])
                .map_err(|e| e.message)
                .ok(),
            Some(vec!["A".to_string(), "B".to_string()])
        );
    }

    fn peer(origin: &str) -> Peer {
        Peer {
            origin: origin.to_owned(),
            ..Peer::of_pid(None)
        }
    }

    fn claimed(name: &str) -> keyveil_proto::ClientInfo {
        keyveil_proto::ClientInfo {
            kind: "mcp".into(),
            name: name.into(),
            version: "1".into(),
            pid: 1,
        }
    }

    fn pending(id: u64, name: &str, origin: &str) -> AccessReq {
        AccessReq {
            id,
            client: claimed(name),
            peer: peer(origin),
            environment: "e".into(),
            variables: vec!["V".into()],
            argv: Some(vec!["echo".into(), id.to_string()]),
            cwd: "/".into(),
            reason: None,
            ttl_seconds: None,
            pass_env: vec![],
            executable: None,
            inputs: vec![],
            risk: vec![],
            chosen_values: vec![],
            stdin: None,
            new_variables: vec![],
            contradictions: vec![],
            mount: None,
            asks: 1,
            created_at: Timestamp::now(),
            state: RequestState::Pending,
            decided: None,
        }
    }

    fn ask(name: &str, origin: &str) -> Ask {
        Ask {
            client: claimed(name),
            environment: "e".into(),
            variables: vec!["V".into()],
            argv: Some(vec!["echo".into(), "new".into()]),
            cwd: "/".into(),
            pass_env: vec![],
            pass_values: Default::default(),
            stdin: None,
            peer: peer(origin),
            mount: None,
        }
    }

    fn refusal(inner: &mut Inner, a: &Ask) -> String {
        match find_or_create_request(inner, a, Pins::default(), None, None) {
            Err(e) => e.message,
            Ok(_) => String::new(),
        }
    }

    #[test]
    fn open_requests_are_capped_per_real_origin_and_in_all() {
        // Three open from one origin under three claimed names: a fourth name is refused.
        let mut inner = Inner::default();
        for i in 0..3 {
            inner
                .requests
                .insert(i, pending(i, &format!("n{i}"), "/usr/bin/python3"));
        }
        let m = refusal(&mut inner, &ask("another-name", "/usr/bin/python3"));
        assert!(m.contains("3 requests of this client"), "{m}");
        // Another origin is not refused by that count (it gets as far as the locked vault).
        let m = refusal(&mut inner, &ask("n0", "/usr/bin/node"));
        assert!(!m.contains("no more are queued"), "{m}");
        // Across origins (copies of an executable look like new ones): the global cap.
        let mut inner = Inner::default();
        for i in 0..MAX_OPEN_REQUESTS as u64 {
            inner
                .requests
                .insert(i, pending(i, "same", &format!("/tmp/copy{i}")));
        }
        let m = refusal(&mut inner, &ask("same", "/tmp/copy-new"));
        assert!(
            m.contains(&format!("{MAX_OPEN_REQUESTS} requests already wait")),
            "{m}"
        );
    }

    #[test]
    fn lexical_cwd_normalises_without_resolving() {
        assert_eq!(lexical("/a/b/../c/./d"), Path::new("/a/c/d"));
    }
}
