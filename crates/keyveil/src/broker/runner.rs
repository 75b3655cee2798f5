//! The `run` path: match a grant (or ask for one and wait), verify the pins, build the child's
//! environment from scratch, spawn, relay redacted output, audit.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use keyveil_proto::FrameCodec;
use serde_json::json;
use tokio::net::UnixStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::Broker;
use super::access::{self, Pins, approve_hint, check_pass_env};
use super::peer::Peer;
use super::spawn::{self, SpawnSpec};
use super::state::{Ask, Inner, LiveRun, OpError, RequestState, new_id};
use crate::pin;
use keyveil_proto::{ErrorCode, Frame, Reply, RunRequest};

/// Longest argv accepted (elements).
const MAX_ARGV: usize = 4096;

/// Requester variables a child always gets (locale and terminal only).
const PASSED_ALWAYS: &[&str] = &[
    "LANG",
    "LANGUAGE",
    "TERM",
    "TZ",
    "COLORTERM",
    "NO_COLOR",
    "FORCE_COLOR",
    "CLICOLOR",
    "CLICOLOR_FORCE",
    "COLUMNS",
    "LINES",
];

/// Builds the child's environment from scratch: policy `PATH`, `HOME`, `USER`/`LOGNAME`, the
/// settings that neutralise code loaded from files the agent can write
/// ([`crate::loaders::NEUTRALISE`]: `PYTHONNOUSERSITE`, `GIT_CONFIG_NOSYSTEM`, ...), locale and
/// terminal variables of the requester, the pass-through names the grant allows. The granted
/// values are added by the spawn. Code-injection and code-loading variables never pass.
pub(crate) fn child_env(
    inner: &Inner,
    env_name: &str,
    requester: &[(String, String)],
    pass_env: &[String],
) -> Vec<(String, String)> {
    let mut out = vec![("PATH".to_owned(), inner.policy_path(env_name))];
    if let Some(h) = inner.child_home() {
        out.push(("HOME".to_owned(), h));
    }
    for k in ["USER", "LOGNAME"] {
        if let Ok(v) = std::env::var(k) {
            out.push((k.to_owned(), v));
        }
    }
    for (k, v) in crate::loaders::NEUTRALISE {
        out.push(((*k).to_owned(), (*v).to_owned()));
    }
    for (k, v) in requester {
        let wanted =
            PASSED_ALWAYS.contains(&k.as_str()) || k.starts_with("LC_") || pass_env.contains(k);
        if wanted && !never_passed(k) && !out.iter().any(|(o, _)| o == k) {
            out.push((k.clone(), v.clone()));
        }
    }
    out
}

/// Names a granted child never gets from the requester or the vault: code injection
/// (`access::is_injection_var`) and code loading (`loaders::is_loader_var`: `MAKEFILES`, ...).
pub(crate) fn never_passed(name: &str) -> bool {
    access::is_injection_var(name) || crate::loaders::is_loader_var(name)
}

type Conn = Framed<UnixStream, FrameCodec>;

/// Serves one `run` request on its connection.
/// `peer` is the process at the other end of the socket (`peer.rs`).
pub(crate) async fn run(broker: &Arc<Broker>, req: RunRequest, framed: Conn, peer: Peer) {
    let (mut stream, mut sink) = spawn::split_connection(framed);
    // Notice a client that hangs up (Ctrl-C of the CLI, a cancelled MCP call).
    let gone = CancellationToken::new();
    let gone2 = gone.clone();
    let watcher = tokio::spawn(async move {
        while let Some(Ok(_)) = stream.next().await {}
        gone2.cancel();
    });
    let reply = run_inner(broker, req, &mut sink, &gone, peer).await;
    if let Some(r) = reply
        && let Ok(body) = Frame::json(&r)
    {
        // A stopped run does not wait for a client that does not read (see `relay`).
        let stopped =
            gone.is_cancelled() || matches!(&r, Reply::Exit(x) if x.revoked || x.timed_out);
        spawn::send_final(&mut sink, body, stopped.then_some(spawn::ABANDON_AFTER)).await;
    }
    watcher.abort();
}

enum Step {
    Grant(String, Option<pin::FilePin>, Vec<pin::InputPin>),
    Request(u64, bool, Option<RequestState>),
}

/// What step 1 ([`admit`]) established about a run request.
pub(super) struct Admitted {
    /// The ask grants and requests are matched against.
    pub(super) ask: Ask,
    /// Canonical working directory.
    pub(super) cwd: String,
    /// Requester variables passed through (checked).
    pub(super) pass_env: Vec<String>,
    /// The variables to inject (real names).
    pub(super) vars: Vec<String>,
    /// The policy `PATH` of the environment.
    pub(super) search_path: String,
    /// `HOME` of granted children.
    pub(super) home: Option<String>,
}

/// A run spawned by step 3 ([`launch`]): what relaying or adopting it needs.
pub(super) struct Launched {
    /// Run id.
    pub(super) run_id: String,
    /// The grant it runs under.
    pub(super) grant_id: String,
    /// The spawned tree.
    pub(super) started: spawn::Started,
    /// Kill it after this long.
    pub(super) timeout: Duration,
    /// Redacts its output.
    pub(super) redactor: crate::redact::Redactor,
    /// Matches its values in the write-side scan: whole values only ([`scan_redactor`]).
    pub(super) scan_redactor: crate::redact::Redactor,
    /// Cancelled when its grant ends.
    pub(super) cancel: CancellationToken,
    /// When it was spawned (the write-side scan looks at what changed since).
    pub(super) started_at: std::time::SystemTime,
    /// Its private TMPDIR.
    pub(super) tmp_dir: Option<super::private_tmp::RunTmp>,
    /// argv as the requester gave it, whole values masked (`card_redact.rs`).
    pub(super) shown_argv: Vec<String>,
    /// What the grant's inputs were when the run was checked: checked once more when it ends
    /// ([`end_if_inputs_changed`]).
    pub(super) stamps: InputStamps,
}

/// The identities of a run's file inputs and its pinned directories, taken when the grant was
/// verified for it (see [`end_if_inputs_changed`]).
type InputStamps = (Vec<pin::Stamp>, Vec<pin::InputPin>);

/// The run path for `run`: [`admit`] → [`wait_for_grant`] → [`launch`] → [`relay`]. `None`:
/// no reply is owed (the client went away).
pub(super) async fn run_inner(
    broker: &Arc<Broker>,
    req: RunRequest,
    sink: &mut spawn::OutputSink,
    gone: &CancellationToken,
    peer: Peer,
) -> Option<Reply> {
    let (req, a, l) = match start_run(broker, req, sink, gone, peer).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    Some(relay(broker, &req, &a, l, sink, gone).await)
}

/// Steps 1 to 3, shared by `run` and a background `start` (which adopts the run instead of
/// relaying it): the request (its argv, stdin and environment taken), what admission found,
/// and the spawned run. `Err`: the reply to send instead (`None`: the client went away).
pub(super) async fn start_run(
    broker: &Arc<Broker>,
    mut req: RunRequest,
    sink: &mut spawn::OutputSink,
    gone: &CancellationToken,
    peer: Peer,
) -> Result<(RunRequest, Admitted, Launched), Option<Reply>> {
    // A locked vault: the ask waits as a number the human's `keyveil approve` unlocks with.
    if broker.lock().vault.is_none() {
        return Err(super::locked_asks::wait(broker, &req, sink, gone).await);
    }
    let a = admit(broker, &req, peer).map_err(|e| Some(e.reply()))?;
    let (grant_id, exe, stamps) = wait_for_grant(broker, &req, &a, sink, gone).await?;
    let l = launch(broker, &mut req, &a, grant_id, exe, stamps)
        .await
        .map_err(Some)?;
    Ok((req, a, l))
}

/// Step 1: refuses what can never run (an empty or oversized argv, a cwd that is not a
/// directory, code-injection pass-through names, a symlinked cwd escaping a grant, a requester
/// `PATH` shadowing the executable) and resolves the ask.
fn admit(broker: &Broker, req: &RunRequest, peer: Peer) -> Result<Admitted, OpError> {
    if req.argv.is_empty() || req.argv.first().is_some_and(String::is_empty) {
        return Err(OpError::new(
            ErrorCode::Usage,
            "the command is empty: give argv[0] and its arguments",
        ));
    }
    if req.client.kind == super::mounts::MOUNT_KIND {
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
        && s.len() > super::state::MAX_STDIN_BYTES
    {
        return Err(OpError::new(
            ErrorCode::Usage,
            format!(
                "standard input of {} bytes; keyveil takes at most {} KiB (the card shows it and the grant binds it); nothing was run",
                s.len(),
                super::state::MAX_STDIN_BYTES / 1024
            ),
        )
        .hint("write large input to a file in the working directory and pass its path instead"));
    }
    broker.lock().audit_ready("run_start")?;
    let cwd = super::cwd::canonical_cwd(&req.cwd)?;
    let pass_env = check_pass_env(&req.pass_env)?;
    let (vars, search_path, home) = {
        let inner = broker.lock();
        match inner.resolve_variables(&req.environment, req.variables.as_deref()) {
            Ok(v) => (v, inner.policy_path(&req.environment), inner.child_home()),
            Err(e) => return Err(e),
        }
    };
    // Whether the command may read its stdin as program text: judged on the file argv[0]
    // runs (a script named `./cat`, a link `./wc` to `sh`), not on the name alone.
    let program = req.stdin.is_some() && {
        let exe = req
            .argv
            .first()
            .and_then(|a| crate::pin::resolve(a, &search_path, std::path::Path::new(&cwd)).ok());
        let (cwd_p, home_p) = (
            std::path::Path::new(&cwd),
            home.as_deref().map(std::path::Path::new),
        );
        // Where the agent could have put it or can rewrite it: its usual places, a folder it
        // owns or can write, or a file of its own.
        let writable = exe.as_deref().is_some_and(|e| {
            crate::pin::requester_writable(e, cwd_p, home_p)
                || e.parent()
                    .is_some_and(|d| crate::path_dirs::agent_writable(d, cwd_p, home_p))
                || std::fs::metadata(e).is_ok_and(|m| {
                    // (A broker run as root owns the system's programs too.)
                    let me = rustix::process::geteuid();
                    !me.is_root() && std::os::unix::fs::MetadataExt::uid(&m) == me.as_raw()
                })
        });
        crate::stdin_program::reads_program_at(&req.argv, exe.as_deref(), writable)
    };
    // Program text longer than the card shows would be approved unseen.
    if let Some(s) = &req.stdin
        && program
        && s.chars().count() > super::state::SHOWN_STDIN_CHARS
    {
        return Err(OpError::new(
            ErrorCode::Usage,
            format!(
                "standard input of {} characters may be program text for this command, and the card shows at most {}: no one could read what they approve; nothing was run",
                s.chars().count(),
                super::state::SHOWN_STDIN_CHARS
            ),
        )
        .hint("put the program in a file in the working directory and run that file (the card pins it), or send a shorter input"));
    }
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
            .map(|t| super::state::stdin_info(t, program)),
        peer,
        mount: None,
    };
    access::check_symlink_escape(&broker.lock(), &ask, &req.cwd)?;
    check_path_shadow(req, &cwd, &search_path, home.as_deref())?;
    Ok(Admitted {
        ask,
        cwd,
        pass_env,
        vars,
        search_path,
        home,
    })
}

/// Step 2: a grant that covers the ask, its executable verified against the pins (a use is
/// consumed); or a request for the human, announced with `Pending`, waited on until a
/// decision, the deadline, the client going away or the broker stopping.
async fn wait_for_grant(
    broker: &Arc<Broker>,
    req: &RunRequest,
    a: &Admitted,
    sink: &mut spawn::OutputSink,
    gone: &CancellationToken,
) -> Result<(String, std::fs::File, InputStamps), Option<Reply>> {
    let Admitted {
        ask,
        cwd,
        search_path,
        home,
        ..
    } = a;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(req.wait_seconds);
    // Only grants of requests masked as this ask would be serve it (`Inner::find_grant`).
    let masked = {
        let mut inner = broker.lock();
        access::strings_masked(&mut inner, &ask.peer).map_err(|e| Some(e.reply()))?
    };
    let mut changed = broker.changed.subscribe();
    let mut announced: Option<u64> = None;
    let mut pins: Option<Pins> = None;
    let granted = loop {
        let step = {
            let inner = broker.lock();
            inner.find_grant(ask, masked).map(|gid| {
                let g = inner.grants.get(&gid);
                Step::Grant(
                    gid.clone(),
                    g.and_then(|g| g.executable.clone()),
                    g.map(|g| g.inputs.clone()).unwrap_or_default(),
                )
            })
        };
        let step = match step {
            Some(s) => s,
            None => {
                // The pins a new request shows the human (computed outside the lock).
                let p = match &pins {
                    Some(p) => p.clone(),
                    None => match access::prepare_bounded(
                        req.argv.clone(),
                        cwd.clone(),
                        search_path.clone(),
                        home.clone(),
                    )
                    .await
                    {
                        Ok(p) => {
                            pins = Some(p.clone());
                            p
                        }
                        Err(e) => return Err(Some(e.reply())),
                    },
                };
                let mut inner = broker.lock();
                // Already waiting on our request? Look at it, do not ask again (a wake-up is
                // not a new ask). A decided one falls through: denied/expired end the call, an
                // approved one whose grant no longer covers us needs a new request.
                let known =
                    announced.and_then(|id| inner.requests.get(&id).map(|r| (id, r.state.clone())));
                let waiting = match &known {
                    Some((
                        id,
                        state @ (RequestState::Pending
                        | RequestState::Denied { .. }
                        | RequestState::Expired),
                    )) => Some(Step::Request(*id, false, Some(state.clone()))),
                    _ => None,
                };
                if let Some(w) = waiting {
                    w
                } else {
                    match access::find_or_create_request(
                        &mut inner,
                        ask,
                        p,
                        req.reason.clone(),
                        req.ttl_seconds,
                    ) {
                        Ok((id, created)) => Step::Request(
                            id,
                            created,
                            inner.requests.get(&id).map(|r| r.state.clone()),
                        ),
                        Err(e) => return Err(Some(e.reply())),
                    }
                }
            }
        };
        match step {
            Step::Grant(gid, exe_pin, inputs) => {
                // Verify outside the lock: resolve again, open and check the file, re-hash inputs.
                // The files' identities are taken first: a write after this shows at the run's
                // end even if the content is put back (`end_if_inputs_changed`).
                let verified = {
                    let (argv, cwd, sp, home, inputs) = (
                        req.argv.clone(),
                        cwd.clone(),
                        search_path.clone(),
                        home.clone(),
                        inputs.clone(),
                    );
                    access::bounded(move || {
                        let files = pin::stamps(&inputs);
                        let dirs: Vec<pin::InputPin> = inputs
                            .iter()
                            .filter(|p| crate::path_dirs::DIR_ROLES.contains(&p.role.as_str()))
                            .cloned()
                            .collect();
                        verify(&argv, &cwd, &sp, home.as_deref(), exe_pin.as_ref(), &inputs)
                            .map(|f| (f, (files, dirs)))
                    })
                    .await
                };
                let verified = match verified {
                    Ok(v) => v,
                    Err(e) => return Err(Some(e.reply())),
                };
                let mut inner = broker.lock();
                // Pass-through values are bound by digest: another one ends the grant. (Stored
                // values the agent could have chosen are checked at launch, on the copies
                // injected.)
                if let Err(why) = access::check_chosen(&inner, &gid, ask) {
                    inner.revoke(&gid, "value changed since approval");
                    inner.audit("value_changed", json!({"grant_id": gid, "why": why}));
                    drop(inner);
                    broker.notify();
                    return Err(Some(
                        OpError::new(ErrorCode::Denied, format!("{why}; grant {gid} was ended"))
                            .hint("a new approval is needed: call run again to ask the user")
                            .reply(),
                    ));
                }
                match verified {
                    // Nothing by that name exists (`pythn3`): nothing can run, nothing was
                    // changed, so the grant stays; the next run is verified again anyway.
                    Err(e @ pin::PinError::NotFound { .. }) => {
                        drop(inner);
                        return Err(Some(
                            OpError::new(ErrorCode::NotFound, format!("{e}; nothing was run"))
                                .hint("check the command's spelling; the grant is unchanged")
                                .reply(),
                        ));
                    }
                    Err(e) => {
                        inner.revoke(&gid, "pin mismatch");
                        inner.audit(
                            "pin_mismatch",
                            json!({"grant_id": gid, "why": e.to_string()}),
                        );
                        drop(inner);
                        broker.notify();
                        return Err(Some(
                            OpError::new(ErrorCode::Denied, format!("{e}; grant {gid} was ended"))
                                .hint(mismatch_hint(&e, &inputs))
                                .reply(),
                        ));
                    }
                    Ok((file, stamps)) => {
                        // Consume a use only if the grant still covers the run (it may have been
                        // revoked or used up meanwhile).
                        let now = Timestamp::now();
                        if let Some(g) = inner.grants.get_mut(&gid)
                            && g.covers(ask, now)
                        {
                            if let Some(u) = g.uses_left.as_mut() {
                                *u = u.saturating_sub(1);
                            }
                            g.runs += 1;
                            break (gid, file, stamps);
                        }
                        continue;
                    }
                }
            }
            Step::Request(id, created, state) => {
                if created {
                    broker.notify();
                }
                match state {
                    Some(RequestState::Denied { reason }) => {
                        return Err(Some(
                            OpError::new(
                                ErrorCode::Denied,
                                format!(
                                    "the user denied request #{id}{}",
                                    reason
                                        .map(|r| format!(
                                            ": {}",
                                            keyveil_proto::display::visible_text(&r)
                                        ))
                                        .unwrap_or_default()
                                ),
                            )
                            .reply(),
                        ));
                    }
                    Some(RequestState::Expired) => {
                        return Err(Some(
                            OpError::new(
                                ErrorCode::Timeout,
                                format!("request #{id} expired unanswered"),
                            )
                            .reply(),
                        ));
                    }
                    // Approved at once (an auto-approve rule): match its grant now.
                    Some(RequestState::Approved { .. }) if created => continue,
                    _ => {}
                }
                if announced != Some(id) {
                    announced = Some(id);
                    if let Ok(body) = Frame::json(&Reply::Pending {
                        request_id: id,
                        hint: approve_hint(id),
                        is_final: false,
                        vault_locked: false,
                    }) {
                        let _ = sink.send(body).await;
                    }
                }
            }
        }
        // Wait for a change, the deadline, or the client going away.
        tokio::select! {
            r = changed.changed() => { if r.is_err() { return Err(None); } }
            _ = tokio::time::sleep_until(deadline) => {
                let id = announced.unwrap_or(0);
                return Err(Some(Reply::Pending { request_id: id, hint: approve_hint(id), is_final: true, vault_locked: false }));
            }
            _ = gone.cancelled() => return Err(None),
            _ = broker.shutdown.cancelled() => return Err(Some(OpError::new(ErrorCode::Failed, "the broker is stopping").reply())),
        }
    };
    Ok(granted)
}

/// Step 3: the values (stored and minted), the environment built from scratch, a private
/// TMPDIR, the spawn of the verified executable under the run's reaper, and the run recorded
/// (live runs, audit).
async fn launch(
    broker: &Arc<Broker>,
    req: &mut RunRequest,
    a: &Admitted,
    grant_id: String,
    exe: std::fs::File,
    stamps: InputStamps,
) -> Result<Launched, Reply> {
    let Admitted {
        ask,
        cwd,
        pass_env,
        vars,
        ..
    } = a;
    // Just-in-time credentials: minted at the grant's first spawn (reused after), provider
    // values fetched now.
    let mut dynamic_values =
        match crate::dynamic::values_for_grant(broker, &grant_id, &req.environment, vars).await {
            Ok(v) => v,
            Err(e) => {
                let e = broker.lock().hide_names_in_error(&req.environment, vars, e);
                return Err(e.reply());
            }
        };
    // Defence in depth, as for stored values: no code-loading name from a source (a KV field,
    // a minted credential's companion variables).
    dynamic_values.values.retain(|(k, _)| !never_passed(k));
    dynamic_values.env.retain(|(k, _)| !never_passed(k));
    // Spawn under the grant, with an environment built from scratch.
    let (
        mut values,
        cancel,
        redactor,
        scan_redactor,
        (shown_argv, masked),
        env,
        bound,
        extra_roots,
    ) = {
        let mut inner = broker.lock();
        // The run's start and end entries must fit: refused before anything is spawned. (The
        // start entry holds the argv, shown with markers: allow twice its JSON length.)
        let entry_len =
            serde_json::to_string(&req.argv).map_or(0, |j| j.len()) * 2 + cwd.len() + 2048;
        if let Err(e) = inner.audit_ready_for("run_start", entry_len) {
            return Err(e.reply());
        }
        // Only the variables this run injects, still sealed: they are opened, and the
        // redactor built, after the lock is released (with thousands of values, or a large
        // one, that is the slow part of a run, and nothing else may wait for it).
        let sealed = match inner.sealed_values(&req.environment, vars) {
            // Defence in depth for vaults written before such names were refused.
            Ok(v) => v
                .into_iter()
                .filter(|(k, _)| !never_passed(k))
                .collect::<Vec<_>>(),
            Err(e) => {
                return Err(inner.hide_names_in_error(&req.environment, vars, e).reply());
            }
        };
        // Markers and write-side leaks name variables as clients see them (aliases where
        // the policy hides names).
        let mut shown: Vec<String> = sealed
            .iter()
            .map(|(k, _)| inner.shown_name(&req.environment, k))
            .collect();
        shown.extend(
            dynamic_values
                .values
                .iter()
                .map(|(k, _)| inner.shown_name(&req.environment, k)),
        );
        let cancel = inner
            .grants
            .get(&grant_id)
            .map(|g| g.cancel.clone())
            .unwrap_or_default();
        // argv is the requester's, never matched against values for the grant (see
        // `access::find_or_create_request`); shown (`status`, `logs`, audit) with every whole
        // value masked as its card showed it: a granted child may have put one there, and the
        // agent reads those listings without a factor (`card_redact.rs`, `redteam_s9.rs`).
        // Only when the requester may hold values (`AccessReq::masked`): an agent's own argv
        // is shown as given, since masking a planted guess would confirm it; a requester
        // the broker cannot place is refused.
        let masked = match access::strings_masked(&mut inner, &ask.peer) {
            Ok(m) => m,
            Err(e) => return Err(e.reply()),
        };
        let redactor = if masked { inner.card_redactor() } else { None };
        let shown_argv = match redactor {
            Some(r) => req
                .argv
                .iter()
                .map(|w| super::card_redact::redact_str(&r, w))
                .collect(),
            None => req.argv.clone(),
        };
        let mut env = child_env(&inner, &req.environment, &req.env, pass_env);
        env.extend(dynamic_values.env);
        // Values the agent could have chosen are bound by digest: checked below on these very
        // copies, so a `set` racing the run cannot slip an unapproved value in.
        let names: Vec<String> = sealed.iter().map(|(k, _)| k.clone()).collect();
        let expected = access::chosen_expected(&inner, &grant_id, &names);
        drop(inner);
        let mut values = Vec::with_capacity(sealed.len() + dynamic_values.values.len());
        for (k, v) in sealed {
            match v.open() {
                Ok(v) => values.push((k, v)),
                Err(e) => return Err(super::state::sealed_value_error(e).reply()),
            }
        }
        if let Err(why) = access::check_chosen_values(&expected, &values) {
            let mut inner = broker.lock();
            inner.revoke(&grant_id, "value changed since approval");
            inner.audit("value_changed", json!({"grant_id": grant_id, "why": why}));
            drop(inner);
            broker.notify();
            return Err(OpError::new(
                ErrorCode::Denied,
                format!("{why}; grant {grant_id} was ended"),
            )
            .hint("a new approval is needed: call run again to ask the user")
            .reply());
        }
        values.extend(dynamic_values.values);
        let scan_redactor = scan_redactor(&shown, &values);
        let redactor = run_redactor(broker, &grant_id, shown, &values);
        // Host-bound variables (`docs/egress.md`): the child gets a placeholder, the run's
        // egress proxy the value.
        let (bound, extra_roots) = bound_values(&broker.lock(), &req.environment, &values);
        (
            values,
            cancel,
            redactor,
            scan_redactor,
            (shown_argv, masked),
            env,
            bound,
            extra_roots,
        )
    };
    req.env.clear();
    let run_id = new_id("r-");
    let timeout = Duration::from_secs(
        req.timeout_seconds
            .unwrap_or(spawn::DEFAULT_TIMEOUT_SECONDS)
            .clamp(1, 86_400),
    );
    // A private TMPDIR, scanned and deleted when the run ends (see `private_tmp.rs`).
    let mut env = env;
    let tmp_dir = match super::private_tmp::create(&broker.paths, &run_id) {
        Ok(d) => {
            super::private_tmp::point_env_at(&mut env, &d.dir);
            Some(d)
        }
        Err(e) => {
            // Fail closed: without it, temporary files would land where nothing scans them.
            return Err(
                OpError::new(
                    ErrorCode::Failed,
                    format!("cannot create the run's private TMPDIR: {e}; nothing was started"),
                )
                .hint(format!(
                    "check that {} is a directory you own (mode 0700); remove whatever is there otherwise",
                    broker.paths.home.join("tmp").display()
                ))
                .reply(),
            );
        }
    };
    // The egress proxy of a run with bound variables: started before the child (its address
    // and CA bundle are in the child's environment), closed at the run's end or its grant's.
    let egress = match (&tmp_dir, bound.is_empty()) {
        (_, true) => None,
        (Some(d), false) => {
            match super::egress::start(
                broker,
                &run_id,
                bound,
                extra_roots.as_deref(),
                &cancel,
                &d.dir,
            )
            .await
            {
                Ok((proxy, placeholders, proxy_env)) => {
                    for (name, p) in placeholders {
                        if let Some(slot) = values.iter_mut().find(|(k, _)| *k == name) {
                            slot.1 = keyveil_vault::SecretValue::new(p);
                        }
                    }
                    super::egress::set_env(&mut env, proxy_env);
                    Some(std::sync::Arc::new(proxy))
                }
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&d.dir);
                    return Err(OpError::new(
                        ErrorCode::Failed,
                        format!("cannot start the run's egress proxy: {e}; nothing was started"),
                    )
                    .hint("a variable of this run is bound to hosts (`keyveil policy show ENV`); check the egress-roots policy, or unbind it")
                    .reply());
                }
            }
        }
        (None, false) => None,
    };
    let mut spec = SpawnSpec {
        argv: std::mem::take(&mut req.argv),
        cwd: cwd.clone(),
        env,
        values,
        stdin: req.stdin.take(),
        exe,
    };
    let started_at = std::time::SystemTime::now();
    let started = match spawn::start(&mut spec) {
        Ok(s) => s,
        Err(e) => {
            if let Some(d) = &tmp_dir {
                let _ = std::fs::remove_dir_all(&d.dir);
            }
            let msg = format!(
                "cannot start \"{}\": {e}",
                shown_argv
                    .first()
                    .map(|a| keyveil_proto::display::visible(a))
                    .unwrap_or_default()
            );
            broker.lock().audit_as(
                "run_failed",
                json!({"run_id": run_id, "grant_id": grant_id, "argv": shown_argv, "error": e.to_string()}),
                masked,
            );
            return Err(OpError::new(ErrorCode::Failed, msg)
                .hint("check that the command exists and is executable")
                .reply());
        }
    };
    if let Some(e) = &egress {
        e.set_root(started.pid);
    }
    {
        let mut inner = broker.lock();
        inner.runs.insert(
            run_id.clone(),
            LiveRun {
                id: run_id.clone(),
                grant_id: grant_id.clone(),
                pgid: started.pid,
                argv: shown_argv.clone(),
                started_at: Timestamp::now(),
                ended: started.watch_end(),
                egress,
            },
        );
        inner.audit_as(
            "run_start",
            json!({
                "run_id": run_id,
                "grant_id": grant_id,
                "client": req.client.scope_key(),
                "peer_pid": ask.peer.pid(),
                "environment": req.environment,
                "variables": vars,
                "argv": shown_argv,
                "cwd": cwd,
                "pid": started.pid,
            }),
            masked,
        );
    }
    Ok(Launched {
        run_id,
        grant_id,
        started,
        timeout,
        redactor,
        scan_redactor,
        cancel,
        started_at,
        tmp_dir,
        shown_argv,
        stamps,
    })
}

/// Step 4: relays the redacted output to the client until the run ends, scans what it wrote,
/// records its end; the final reply.
async fn relay(
    broker: &Arc<Broker>,
    req: &RunRequest,
    a: &Admitted,
    l: Launched,
    sink: &mut spawn::OutputSink,
    gone: &CancellationToken,
) -> Reply {
    let Launched {
        run_id,
        grant_id,
        started,
        timeout,
        redactor,
        scan_redactor,
        cancel,
        started_at,
        tmp_dir,
        stamps,
        ..
    } = l;
    let cwd = &a.cwd;
    if let Ok(body) = Frame::json(&Reply::Started {
        run_id: run_id.clone(),
        grant_id: grant_id.clone(),
    }) {
        let _ = sink.send(body).await;
    }
    let mut result = spawn::relay(
        started,
        timeout,
        req.output,
        &redactor,
        cancel,
        gone.clone(),
        sink,
    )
    .await;
    result.run_id = run_id.clone();
    result.grant_id = grant_id.clone();
    result
        .write_leaks
        .extend(close_egress(broker, &run_id).await);
    end_if_inputs_changed(broker, &grant_id, &run_id, &stamps);
    // Write-side scan: files the run changed under its cwd and the usual credential stores in
    // HOME, for every granted value in every form the redactor knows (reported by name).
    let (home_dir, action) = {
        let inner = broker.lock();
        let action = inner
            .vault
            .as_ref()
            .and_then(|v| {
                v.data()
                    .environments
                    .get(&req.environment)
                    .map(|e| e.policy.write_leaks)
            })
            .unwrap_or_default();
        (inner.child_home(), action)
    };
    let scope = crate::scan::ScanScope {
        cwd: std::path::PathBuf::from(&cwd),
        home: home_dir.map(std::path::PathBuf::from),
        since: started_at,
        limits: crate::scan::ScanLimits::default(),
    };
    let scanner = scan_redactor.clone();
    if let Ok(report) =
        tokio::task::spawn_blocking(move || crate::scan::scan(&scope, &scanner)).await
    {
        result.write_scan = Some(keyveil_proto::WriteScanSummary {
            files_scanned: report.files_scanned,
            bytes_scanned: report.bytes_scanned,
            truncated: report.truncated,
            elapsed_ms: report.elapsed_ms,
        });
        for leak in report.leaks {
            let path = leak.path.to_string_lossy().into_owned();
            let act = match action {
                keyveil_vault::WriteLeakAction::Report => "reported",
                keyveil_vault::WriteLeakAction::Quarantine => quarantine(&leak.file),
                keyveil_vault::WriteLeakAction::Fail => "failed",
            };
            result.write_leaks.push(keyveil_proto::WriteLeak {
                variable: leak.variable,
                path,
                form: leak.form,
                action: act.to_owned(),
            });
        }
    }
    if let Some(dir) = tmp_dir {
        let leaks = super::private_tmp::finish(dir, &scan_redactor, started_at).await;
        result.write_leaks.extend(leaks);
    }
    if action == keyveil_vault::WriteLeakAction::Fail
        && !result.write_leaks.is_empty()
        && result.exit_code == 0
    {
        result.exit_code = 1;
    }
    {
        let mut inner = broker.lock();
        inner.runs.remove(&run_id);
        inner.audit(
            "run_end",
            json!({
                "run_id": run_id,
                "grant_id": grant_id,
                "exit_code": result.exit_code,
                "signal": result.signal,
                "redactions": result.redactions,
                "timed_out": result.timed_out,
                "revoked": result.revoked,
                "truncated": result.truncated,
                "duration_ms": result.duration_ms,
                // By variable and form, never the path: the audit is readable by the agent, and a path
                // would tell which of the files it planted holds a value (the requester sees paths).
                "write_leaks": result.write_leaks.iter().map(|l| json!({"variable": l.variable, "form": l.form, "action": l.action})).collect::<Vec<_>>(),
            }),
        );
    }
    Reply::Exit(result)
}

/// The write-side scan's matcher of a run's `values` (named `shown`): every known form of each
/// whole value, line or structured leaf that no agent can guess ([`super::sweep_ops::guessable`]),
/// and no fragment. The scan reads places the agent writes too (the cwd, `$HOME`, the run's
/// TMPDIR) and names the files it finds: naming which planted file holds a 12-byte fragment
/// after a known part, or a guessable value among planted candidates, would answer the agent's
/// guesses one run at a time (`tests/it/redteam_s9.rs`). Fragments and guessable values a run
/// writes are left to `keyveil sweep`, whose findings reach only the human
/// (`docs/write-side.md`).
pub(super) fn scan_redactor(
    shown: &[String],
    values: &[(String, keyveil_vault::SecretValue)],
) -> crate::redact::Redactor {
    let keep = |atom: &[u8]| !super::sweep_ops::guessable(atom);
    crate::redact::Redactor::whole_values(
        shown
            .iter()
            .zip(values.iter().map(|(_, v)| v.expose().as_bytes())),
        &keep,
    )
}

/// The redactor of a run under `grant_id` that injects `values`, named `shown`: the grant's
/// kept redactor when it was built from exactly these names and values, else a new one, built
/// outside the broker's lock and kept for the grant's next runs (`redactor_cache.rs`). Not kept
/// when the grant ended or the vault locked while it was built.
fn run_redactor(
    broker: &Broker,
    grant_id: &str,
    shown: Vec<String>,
    values: &[(String, keyveil_vault::SecretValue)],
) -> crate::redact::Redactor {
    let key = super::redactor_cache::key(
        shown
            .iter()
            .zip(values)
            .map(|(n, (_, v))| (n.as_str(), v.expose().as_bytes())),
    );
    let now = std::time::Instant::now();
    if let Some(r) = broker.lock().run_redactors.get(grant_id, &key, now) {
        return r;
    }
    let redactor = crate::redact::Redactor::new(
        shown
            .into_iter()
            .zip(values.iter().map(|(_, v)| v.expose().as_bytes())),
    );
    let mut inner = broker.lock();
    let live = inner.vault.is_some() && inner.grants.get(grant_id).is_some_and(|g| !g.revoked);
    if live {
        inner
            .run_redactors
            .put(grant_id, key, redactor.clone(), std::time::Instant::now());
    }
    redactor
}

/// The run's bound variables among `values` (real name, shown name, value, destinations), and
/// the environment's extra upstream roots.
fn bound_values(
    inner: &Inner,
    env: &str,
    values: &[(String, keyveil_vault::SecretValue)],
) -> (super::egress::Bound, Option<String>) {
    let Some(policy) = inner
        .vault
        .as_ref()
        .and_then(|v| v.data().environments.get(env).map(|e| e.policy.clone()))
    else {
        return (Vec::new(), None);
    };
    let bound = values
        .iter()
        .filter_map(|(k, v)| {
            let hosts = policy.bindings.get(k)?;
            let dests = hosts
                .iter()
                .filter_map(|h| super::egress::Dest::parse(h).ok())
                .collect();
            Some((k.clone(), inner.shown_name(env, k), v.clone(), dests))
        })
        .collect();
    (bound, policy.egress_roots)
}

/// Closes a run's egress proxy (every session at once) and returns what it blocked, reported
/// like write-side leaks (variable, destination, form `egress`, action `blocked`).
/// Waits until the proxy's audit entries are written (see `RunEgress::close`): call it before
/// the run's end entry.
pub(super) async fn close_egress(broker: &Broker, run_id: &str) -> Vec<keyveil_proto::WriteLeak> {
    let e = broker
        .lock()
        .runs
        .get_mut(run_id)
        .and_then(|r| r.egress.take());
    match e {
        Some(e) => {
            e.close().await;
            e.take_leaks()
        }
        None => Vec::new(),
    }
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

/// The hint for a grant ended by a pin that no longer holds: for a directory a command finds
/// programs in (a writable `PATH` directory, a version manager's hooks or versions), what
/// changed and what to do about it.
fn mismatch_hint(e: &pin::PinError, inputs: &[pin::InputPin]) -> String {
    let dir = match e {
        pin::PinError::InputsChanged(path) => inputs
            .iter()
            .find(|p| &p.path == path && crate::path_dirs::DIR_ROLES.contains(&p.role.as_str())),
        _ => None,
    };
    match dir {
        Some(p) => format!(
            "a program was added, removed, replaced or written in {} (role {}), which the granted command can run by name; check what changed there (a program the agent planted runs with the granted values), then call run again to ask the user; to stop pinning it, leave it out of the policy PATH (`keyveil policy set ENV path ...`)",
            keyveil_proto::display::visible(&p.path),
            p.role
        ),
        None => "a new approval is needed: call run again to ask the user".to_owned(),
    }
}

/// "To the end": what a run executed is checked once more when it ends. The directories it
/// finds programs in by name (agent-writable `PATH` entries, version-manager hooks, toolchains;
/// `path_dirs.rs`) are re-fingerprinted, and every file input (the script, the task runner's
/// file, the tool's config) is compared by identity (device, inode, ctime: one `stat` each) with
/// what it was when the run was checked. A file written during the run, even if put back as it
/// was, or a program planted in a directory, ends the grant: the human is asked again.
fn end_if_inputs_changed(broker: &Arc<Broker>, grant_id: &str, run_id: &str, stamps: &InputStamps) {
    let (files, dirs) = stamps;
    let why = match pin::changed_since(files) {
        Some(path) => Some(format!(
            "inputs changed during the run: {path} was written while it ran"
        )),
        None => pin::check_inputs(dirs)
            .err()
            .map(|e| format!("{e} (during the run)")),
    };
    if let Some(why) = why {
        let mut inner = broker.lock();
        inner.revoke(grant_id, "pin mismatch");
        inner.audit(
            "pin_mismatch",
            json!({"grant_id": grant_id, "run_id": run_id, "why": why}),
        );
        drop(inner);
        broker.notify();
    }
}

/// Moves a leaking file aside (`NAME.keyveil-quarantine`, mode 0600); archive members quarantine
/// their archive. Returns the action word.
fn quarantine(path: &std::path::Path) -> &'static str {
    let s = path.to_string_lossy();
    let file = std::path::PathBuf::from(s.split('!').next().unwrap_or(&s));
    let mut target = file.clone().into_os_string();
    target.push(".keyveil-quarantine");
    match std::fs::rename(&file, &target) {
        Ok(()) => {
            let _ = crate::paths::set_mode(std::path::Path::new(&target), 0o600);
            "quarantined"
        }
        Err(_) => "reported",
    }
}

/// Checks that what would run now is what was approved; returns the open executable. Inputs
/// (task-runner files, scripts, and the configuration files `loaders/` names for the tool) are
/// re-hashed, and re-derived for this argv and cwd with the child's `home`: one that changed,
/// vanished or appeared since approval ends the grant.
fn verify(
    argv: &[String],
    cwd: &str,
    search_path: &str,
    home: Option<&str>,
    pinned: Option<&pin::FilePin>,
    inputs: &[pin::InputPin],
) -> Result<std::fs::File, pin::PinError> {
    let argv0 = argv.first().map(String::as_str).unwrap_or("");
    let now = pin::resolve(argv0, search_path, std::path::Path::new(cwd))?;
    let file = match pinned {
        Some(p) => {
            if now.to_string_lossy() != p.path {
                return Err(pin::PinError::Moved {
                    was: p.path.clone(),
                    now: now.display().to_string(),
                });
            }
            pin::open_verified(p)?
        }
        // Any-command grants pin at run time: check and exec the same open file.
        None => pin::open_verified(&pin::pin_file(&now)?)?,
    };
    pin::check_inputs(inputs)?;
    if pinned.is_some() {
        // What this argv executes from this directory (a `--subdirs` grant used in a
        // subdirectory, extra arguments under a prefix grant): every input it would load must be
        // one that was pinned and shown, with the same content.
        let home = home.map(std::path::Path::new);
        for d in pin::inputs(argv, std::path::Path::new(cwd), &now, home, search_path) {
            if d.role == pin::UNPINNABLE {
                return Err(pin::PinError::InputsChanged(format!(
                    "{} ({})",
                    d.path,
                    d.detail.as_deref().unwrap_or("cannot be pinned")
                )));
            }
            if !inputs
                .iter()
                .any(|p| p.path == d.path && p.sha256 == d.sha256)
            {
                return Err(pin::PinError::InputsChanged(d.path));
            }
        }
    }
    Ok(file)
}
