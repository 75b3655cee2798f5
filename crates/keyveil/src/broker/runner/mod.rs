//! The `run` path: match a grant (or ask for one and wait), verify the pins, build the child's
//! environment from scratch, spawn, relay redacted output, audit.

mod admit;
mod child_env;
mod launch;
mod relay;
mod wait;

pub(crate) use child_env::never_passed;
pub(crate) use launch::scan_redactor;
pub(super) use relay::close_egress;

use admit::{Admitted, admit};
use launch::{Launched, launch};
use relay::relay;
use wait::wait_for_grant;

use std::sync::Arc;

use futures::StreamExt;
use keyveil_proto::FrameCodec;
use tokio::net::UnixStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::Broker;
use super::peer::Peer;
use super::spawn::{self};
use keyveil_proto::{Frame, Reply, RunRequest};

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

/// The run path for `run`: [`admit()`] → [`wait_for_grant`] → [`launch()`] → [`relay()`]. `None`:
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
    if !broker.lock().is_unlocked() {
        return Err(super::locked_asks::wait(broker, &req, sink, gone).await);
    }
    let a = admit(broker, &req, peer).map_err(|e| Some(e.reply()))?;
    let (grant_id, exe, stamps) = wait_for_grant(broker, &req, &a, sink, gone).await?;
    let l = launch(broker, &mut req, &a, grant_id, exe, stamps)
        .await
        .map_err(Some)?;
    Ok((req, a, l))
}
