//! Step 2 of the run path: a grant that covers the ask, verified against its pins; or a
//! request for the human, waited on.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::broker::access::{self, Pins, approve_hint};
use crate::broker::spawn;
use crate::broker::state::{Ask, Inner, OpError, RequestState};
use crate::pin;
use keyveil_proto::{ErrorCode, Frame, Reply, RunRequest};

use super::admit::Admitted;

/// The identities of a run's file inputs and its pinned directories, taken when the grant was
/// verified for it (see `relay::end_if_inputs_changed`), and the files it reads sealed (canonical
/// path, SHA-256: `pin::sealed_files`, `reap/seal.rs`).
pub(crate) type InputStamps = (Vec<pin::Stamp>, Vec<pin::InputPin>, Vec<(String, String)>);

/// What step 2 hands to the launch: the grant's id, the verified executable opened (the file
/// that will be executed), the stamps of its inputs.
pub(crate) type Granted = (String, std::fs::File, InputStamps);

/// A grant that covers the ask, as found under the lock: what verifying it needs.
struct Matched {
    /// The grant's id.
    grant_id: String,
    /// The executable it pinned (`None`: an any-command grant, pinned at run time).
    exe: Option<pin::FilePin>,
    /// The inputs it pinned.
    inputs: Vec<pin::InputPin>,
}

/// What one look at the broker's state found for the ask.
enum Step {
    /// A grant covers it.
    Grant(Matched),
    /// A request for the human: its id, whether this look created it, its state.
    Request(u64, bool, Option<RequestState>),
}

/// What to do after looking at the state of our request.
enum Next {
    /// Look for a grant again at once (an auto-approve rule approved it as it was made).
    LookAgain,
    /// Announce the request (once) and wait for a change.
    Wait,
}

/// Step 2: a grant that covers the ask, its executable verified against the pins (a use is
/// consumed); or a request for the human, announced with `Pending`, waited on until a
/// decision, the deadline, the client going away or the broker stopping.
pub(super) async fn wait_for_grant(
    broker: &Arc<Broker>,
    req: &RunRequest,
    a: &Admitted,
    sink: &mut spawn::OutputSink,
    gone: &CancellationToken,
) -> Result<Granted, Option<Reply>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(req.wait_seconds);
    // Only grants of requests masked as this ask would be serve it (`Grants::find`).
    let masked = a.masked;
    let mut changed = broker.changed.subscribe();
    let mut announced: Option<u64> = None;
    let mut pins: Option<(Pins, Ask)> = None;
    loop {
        match next_step(broker, req, (a, masked), announced, &mut pins)
            .await
            .map_err(Some)?
        {
            Step::Grant(m) => {
                if let Some(granted) = use_grant(broker, req, a, m).await.map_err(Some)? {
                    return Ok(granted);
                }
                // Revoked or used up meanwhile: look again.
                continue;
            }
            Step::Request(id, created, state) => {
                if created {
                    broker.notify();
                }
                if let Next::LookAgain =
                    request_next(id, created, state).map_err(|e| Some(e.reply()))?
                {
                    continue;
                }
                if announced != Some(id) {
                    announced = Some(id);
                    announce(sink, id).await;
                }
            }
        }
        wait_for_change(broker, &mut changed, deadline, gone, announced).await?;
    }
}

/// One look at the state: a grant that covers the ask, else the request we already announced
/// (a wake-up is not a new ask) or one found or created for the ask. The pins a new request
/// shows the human, and the values it quotes whose source the agent could have chosen
/// (`leases::linked_chosen`), are computed once, outside the lock, and kept in `pins`.
async fn next_step(
    broker: &Broker,
    req: &RunRequest,
    (a, masked): (&Admitted, bool),
    announced: Option<u64>,
    pins: &mut Option<(Pins, Ask)>,
) -> Result<Step, Reply> {
    let matched = matched_grant(&broker.lock(), &a.ask, masked);
    if let Some(m) = matched {
        return Ok(Step::Grant(m));
    }
    let (p, ask) = match pins {
        Some(p) => p.clone(),
        None => {
            let p = access::prepare_bounded(
                req.argv.clone(),
                a.cwd.clone(),
                a.search_path.clone(),
                a.home.clone(),
            )
            .await
            .map_err(|e| e.reply())?;
            let mut ask = a.ask.clone();
            ask.linked =
                crate::broker::leases::linked_chosen(broker, &ask.environment, &ask.variables)
                    .await
                    .map_err(|e| e.reply())?;
            *pins = Some((p.clone(), ask.clone()));
            (p, ask)
        }
    };
    let mut inner = broker.lock();
    if let Some(w) = announced_request(&inner, announced) {
        return Ok(w);
    }
    let (id, created) =
        access::find_or_create_request(&mut inner, &ask, p, req.reason.clone(), req.ttl_seconds)
            .map_err(|e| e.reply())?;
    Ok(Step::Request(
        id,
        created,
        inner.requests().get(id).map(|r| r.state().to_owned()),
    ))
}

/// The grant that covers `ask` (among grants of requests `masked` as it is), with its pins.
fn matched_grant(inner: &Inner, ask: &Ask, masked: bool) -> Option<Matched> {
    inner.grants().find(ask, masked).map(|gid| {
        let g = inner.grants().get(&gid);
        Matched {
            exe: g.and_then(|g| g.executable().to_owned()),
            inputs: g.map(|g| g.inputs().to_owned()).unwrap_or_default(),
            grant_id: gid,
        }
    })
}

/// The request we already announced, while it is pending, denied or expired. A decided one
/// falls through: an approved one whose grant no longer covers us needs a new request.
fn announced_request(inner: &Inner, announced: Option<u64>) -> Option<Step> {
    let id = announced?;
    match inner.requests().get(id)?.state() {
        state @ (RequestState::Pending | RequestState::Denied { .. } | RequestState::Expired) => {
            Some(Step::Request(id, false, Some(state.clone())))
        }
        _ => None,
    }
}

/// Verifies a matched grant for this run and consumes a use: the executable resolved again,
/// opened and checked, the inputs re-hashed (outside the lock), the values the requester
/// could have chosen compared. `Ok(None)`: the grant no longer covers the run (revoked or used
/// up meanwhile); `Err`: the reply (a pin or a value that changed ends the grant).
async fn use_grant(
    broker: &Arc<Broker>,
    req: &RunRequest,
    a: &Admitted,
    m: Matched,
) -> Result<Option<Granted>, Reply> {
    let Matched {
        grant_id: gid,
        exe,
        inputs,
    } = m;
    let verified = verify_bounded(req, a, exe, &inputs)
        .await
        .map_err(|e| e.reply())?;
    let mut inner = broker.lock();
    // Pass-through values are bound by digest: another one ends the grant. (Stored
    // values the agent could have chosen are checked at launch, on the copies
    // injected.)
    if let Err(why) = access::check_chosen(&inner, &gid, &a.ask) {
        inner.revoke(&gid, "value changed since approval");
        inner.audit("value_changed", json!({"grant_id": gid, "why": why}));
        drop(inner);
        broker.notify();
        return Err(
            OpError::new(ErrorCode::Denied, format!("{why}; grant {gid} was ended"))
                .hint("a new approval is needed: call run again to ask the user")
                .reply(),
        );
    }
    match verified {
        // Nothing by that name exists (`pythn3`): nothing can run, nothing was
        // changed, so the grant stays; the next run is verified again anyway.
        Err(e @ pin::PinError::NotFound { .. }) => {
            drop(inner);
            Err(
                OpError::new(ErrorCode::NotFound, format!("{e}; nothing was run"))
                    .hint("check the command's spelling; the grant is unchanged")
                    .reply(),
            )
        }
        Err(e) => {
            inner.revoke(&gid, "pin mismatch");
            inner.audit(
                "pin_mismatch",
                json!({"grant_id": gid, "why": e.to_string()}),
            );
            drop(inner);
            broker.notify();
            Err(
                OpError::new(ErrorCode::Denied, format!("{e}; grant {gid} was ended"))
                    .hint(mismatch_hint(&e, &inputs))
                    .reply(),
            )
        }
        Ok((file, stamps)) => {
            Ok(consume_use(&mut inner, &gid, &a.ask).then_some((gid, file, stamps)))
        }
    }
}

/// [`verify`] on a blocking thread with a deadline. The files' identities are taken first: a
/// write after this shows at the run's end even if the content is put back
/// (`relay::end_if_inputs_changed`). The outer `Err`: the check could not finish.
async fn verify_bounded(
    req: &RunRequest,
    a: &Admitted,
    exe: Option<pin::FilePin>,
    inputs: &[pin::InputPin],
) -> Result<Result<(std::fs::File, InputStamps), pin::PinError>, OpError> {
    let (argv, cwd, sp, home, inputs) = (
        req.argv.clone(),
        a.cwd.clone(),
        a.search_path.clone(),
        a.home.clone(),
        inputs.to_vec(),
    );
    access::bounded(move || {
        let files = pin::stamps(&inputs);
        let dirs: Vec<pin::InputPin> = inputs
            .iter()
            .filter(|p| crate::pin::path_dirs::DIR_ROLES.contains(&p.role.as_str()))
            .cloned()
            .collect();
        // A script run by its `#!` line is an input too: a write during the run ends the grant.
        let mut files = files;
        if let Some(e) = exe.as_ref().filter(|e| {
            e.sha256.len() == 64 && pin::interpreter_of(std::path::Path::new(&e.path)).is_some()
        }) {
            files.extend(pin::stamps(&[pin::InputPin {
                role: "executable".to_owned(),
                path: e.path.clone(),
                sha256: e.sha256.clone(),
                detail: None,
            }]));
        }
        let f = verify(&argv, &cwd, &sp, home.as_deref(), exe.as_ref(), &inputs)?;
        // The files the run reads sealed, as approved (a sealed directory's files hashed now
        // and checked against its pin).
        let sealed = pin::sealed_files(exe.as_ref(), &inputs)?;
        Ok((f, (files, dirs, sealed)))
    })
    .await
}

/// Consumes a use of grant `gid` if it still covers the run (it may have been revoked or used
/// up meanwhile); whether it did.
fn consume_use(inner: &mut Inner, gid: &str, ask: &Ask) -> bool {
    let now = Timestamp::now();
    inner.grants_mut().use_if(gid, |g| g.covers(ask, now))
}

/// What the state of our request `id` means: a denial or an expiry is the reply; an
/// approval as it was made (an auto-approve rule) means look for its grant again; anything
/// else means wait.
fn request_next(id: u64, created: bool, state: Option<RequestState>) -> Result<Next, OpError> {
    match state {
        Some(RequestState::Denied { reason }) => Err(OpError::new(
            ErrorCode::Denied,
            format!(
                "the user denied request #{id}{}",
                reason
                    .map(|r| format!(": {}", keyveil_proto::display::visible_text(&r)))
                    .unwrap_or_default()
            ),
        )),
        Some(RequestState::Expired) => Err(OpError::new(
            ErrorCode::Timeout,
            format!("request #{id} expired unanswered"),
        )),
        Some(RequestState::Approved { .. }) if created => Ok(Next::LookAgain),
        _ => Ok(Next::Wait),
    }
}

/// Tells the client its run waits on request `id` (a `Pending` frame, not final).
async fn announce(sink: &mut spawn::OutputSink, id: u64) {
    if let Ok(body) = Frame::json(&Reply::Pending {
        request_id: id,
        hint: approve_hint(id),
        is_final: false,
        vault_locked: false,
    }) {
        let _ = sink.send(body).await;
    }
}

/// Waits for a change of the broker's state. `Err`: the wait ends the call: the deadline (the
/// final `Pending` reply), the client gone or the broker's state closed (no reply), the
/// broker stopping.
async fn wait_for_change(
    broker: &Broker,
    changed: &mut tokio::sync::watch::Receiver<u64>,
    deadline: tokio::time::Instant,
    gone: &CancellationToken,
    announced: Option<u64>,
) -> Result<(), Option<Reply>> {
    tokio::select! {
        r = changed.changed() => { if r.is_err() { return Err(None); } }
        _ = tokio::time::sleep_until(deadline) => {
            let id = announced.unwrap_or(0);
            return Err(Some(Reply::Pending { request_id: id, hint: approve_hint(id), is_final: true, vault_locked: false }));
        }
        _ = gone.cancelled() => return Err(None),
        _ = broker.shutdown.cancelled() => return Err(Some(OpError::new(ErrorCode::Failed, "the broker is stopping").reply())),
    }
    Ok(())
}

/// The hint for a grant ended by a pin that no longer holds: for a directory a command finds
/// programs in (a writable `PATH` directory, a version manager's hooks or versions), what
/// changed and what to do about it.
fn mismatch_hint(e: &pin::PinError, inputs: &[pin::InputPin]) -> String {
    let dir = match e {
        pin::PinError::InputsChanged(path) => inputs.iter().find(|p| {
            &p.path == path && crate::pin::path_dirs::DIR_ROLES.contains(&p.role.as_str())
        }),
        _ => None,
    };
    match dir {
        Some(p) if crate::pin::sealdirs::SEALED_DIR_ROLES.contains(&p.role.as_str()) => format!(
            "a file the granted script may source or import was added, removed or written in {} (role {}); check what changed there (code the agent planted runs with the granted values), then call run again to ask the user",
            keyveil_proto::display::visible(&p.path),
            p.role
        ),
        Some(p) => format!(
            "a program was added, removed, replaced or written in {} (role {}), which the granted command can run by name; check what changed there (a program the agent planted runs with the granted values), then call run again to ask the user; to stop pinning it, leave it out of the policy PATH (`keyveil policy set ENV path ...`)",
            keyveil_proto::display::visible(&p.path),
            p.role
        ),
        None => "a new approval is needed: call run again to ask the user".to_owned(),
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
