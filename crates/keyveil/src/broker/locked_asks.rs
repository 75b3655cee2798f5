//! Runs an agent asks for while the vault is locked (issue 17, item 5).
//!
//! A locked broker holds no names, policy, pins or audit key, so it cannot make a request the
//! human could approve. It keeps what the agent sent instead (a [`op::LockedAsk`]: argv, cwd,
//! environment and names as given, the client's self-declared name) under a request id, answers
//! `Pending`, and shows it in `status`. The human's `keyveil approve` then reads the passphrase
//! once, unlocks (a broker the CLI starts itself: `authorize::unlock`; this process stops), waits
//! for the agent's same call to reach the unlocked broker, shows that request's full card, and
//! approves it signed with the same passphrase. Nothing is granted here: an ask is only a
//! number and some text for the human's terminal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use keyveil_proto::{ErrorCode, Frame, Reply, RunRequest, op};
use tokio_util::sync::CancellationToken;

use super::Broker;
use super::spawn;
use super::state::{Inner, OpError};

/// At most this many asks wait at once (an agent flooding asks gets an error, the human's
/// terminal a bounded list).
pub(crate) const MAX_ASKS: usize = 32;

/// An ask not repeated for this long is dropped.
pub(crate) const ASK_LIFE: Duration = Duration::from_secs(600);

/// Longest argv (all arguments, in bytes) an ask keeps.
const MAX_ARGV_BYTES: usize = 64 * 1024;

/// What the agent is told to do while the vault is locked.
pub(crate) fn locked_hint(id: u64) -> String {
    format!(
        "the vault is locked: ask the user to run `keyveil approve {id}` in their terminal (one passphrase entry unlocks the vault and approves); then call again with the same arguments"
    )
}

/// Records `ask` (or refreshes the same one) and returns its id.
///
/// # Errors
/// [`MAX_ASKS`] different asks already wait.
pub(crate) fn record(inner: &mut Inner, mut ask: op::LockedAsk) -> Result<u64, OpError> {
    let now = Instant::now();
    inner
        .locked_asks_mut()
        .retain(|_, (_, at)| now.duration_since(*at) < ASK_LIFE);
    let same = inner.locked_asks_mut().iter_mut().find(|(_, (a, _))| {
        a.client == ask.client
            && a.environment == ask.environment
            && a.variables == ask.variables
            && a.argv == ask.argv
            && a.cwd == ask.cwd
            && a.pass_env == ask.pass_env
            && a.stdin_digest == ask.stdin_digest
    });
    if let Some((id, (a, at))) = same {
        a.reason = ask.reason;
        a.asked_at = ask.asked_at;
        *at = now;
        return Ok(*id);
    }
    if inner.locked_asks().len() >= MAX_ASKS {
        return Err(OpError::new(
            ErrorCode::Locked,
            format!("the keyveil vault is locked and {MAX_ASKS} requests already wait for it"),
        )
        .hint("ask the user to run `keyveil unlock` in their terminal, then call again"));
    }
    let id = inner.requests_mut().take_id();
    ask.id = id;
    inner.locked_asks_mut().insert(id, (ask, now));
    Ok(id)
}

/// The run path while the vault is locked: records the ask, announces `Pending`, and waits
/// until `wait_seconds` pass (a final `Pending`), the client goes away (`None`) or the broker
/// stops (as it does when the human unlocks: an error that tells the agent to call again).
pub(super) async fn wait(
    broker: &Arc<Broker>,
    req: &RunRequest,
    sink: &mut spawn::OutputSink,
    gone: &CancellationToken,
) -> Option<Reply> {
    if req.argv.first().is_none_or(String::is_empty) {
        return Some(
            OpError::new(
                ErrorCode::Usage,
                "the command is empty: give argv[0] and its arguments",
            )
            .reply(),
        );
    }
    if req.argv.iter().map(String::len).sum::<usize>() > MAX_ARGV_BYTES {
        return Some(
            OpError::new(ErrorCode::Usage, "the command is too long")
                .hint("the vault is locked; ask the user to run `keyveil unlock`")
                .reply(),
        );
    }
    let cwd = match super::cwd::canonical_cwd(&req.cwd) {
        Ok(c) => c,
        Err(e) => return Some(e.reply()),
    };
    let ask = op::LockedAsk {
        id: 0,
        client: req.client.name.clone(),
        environment: req.environment.clone(),
        variables: req.variables.clone(),
        argv: req.argv.clone(),
        cwd,
        pass_env: {
            let mut p = req.pass_env.clone();
            p.sort();
            p.dedup();
            p
        },
        // Keyed by this broker's own key: no offline search from `status`.
        stdin_bytes: req.stdin.as_ref().map(String::len),
        stdin_digest: req
            .stdin
            .as_ref()
            .map(|t| crate::broker::state::value_digest(t.as_bytes())),
        reason: req.reason.clone(),
        asked_at: Timestamp::now(),
    };
    let id = {
        let mut inner = broker.lock();
        match record(&mut inner, ask) {
            Ok(id) => id,
            Err(e) => return Some(e.reply()),
        }
    };
    broker.notify();
    if let Ok(body) = Frame::json(&Reply::Pending {
        request_id: id,
        hint: locked_hint(id),
        is_final: false,
        vault_locked: true,
    }) {
        let _ = sink.send(body).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(req.wait_seconds);
    tokio::select! {
        _ = tokio::time::sleep_until(deadline) => Some(Reply::Pending {
            request_id: id,
            hint: locked_hint(id),
            is_final: true,
            vault_locked: true,
        }),
        _ = gone.cancelled() => None,
        _ = broker.shutdown.cancelled() => Some(
            OpError::new(
                ErrorCode::Failed,
                format!("the broker stopped while request #{id} waited for the locked vault (the user may be unlocking it to approve)"),
            )
            .hint("wait a few seconds, then call again with the same arguments: the user approves that call")
            .reply(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(argv: &[&str]) -> op::LockedAsk {
        op::LockedAsk {
            id: 0,
            client: "agent".into(),
            environment: "demo".into(),
            variables: None,
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            cwd: "/tmp".into(),
            pass_env: Vec::new(),
            stdin_digest: None,
            stdin_bytes: None,
            reason: None,
            asked_at: Timestamp::now(),
        }
    }

    #[test]
    fn the_same_ask_keeps_its_id_and_asks_are_bounded() {
        let mut inner = Inner::with_request_ids(7, None);
        let a = record(&mut inner, ask(&["make"])).unwrap();
        assert_eq!(a, 7);
        assert_eq!(record(&mut inner, ask(&["make"])).unwrap(), 7);
        assert_eq!(record(&mut inner, ask(&["make", "test"])).unwrap(), 8);
        for i in 0..MAX_ASKS - 2 {
            record(&mut inner, ask(&["echo", &i.to_string()])).unwrap();
        }
        let e = record(&mut inner, ask(&["one", "more"])).unwrap_err();
        assert_eq!(e.code, ErrorCode::Locked);
        assert_eq!(inner.locked_asks().len(), MAX_ASKS);
        // A repeated ask is still answered with its id when the list is full.
        assert_eq!(record(&mut inner, ask(&["make"])).unwrap(), 7);
    }
}
