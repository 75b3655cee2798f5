//! `keyveil run`: wait for a grant, relay the run's redacted output, exit with its code.
#![allow(clippy::indexing_slicing)]

use super::*;

pub(crate) async fn run(paths: &Paths, a: RunArgs) -> Result<i32> {
    let (cwd, env) = requester_context(a.cwd)?;
    let req = RunRequest {
        client: cli_client(),
        environment: a.environment,
        variables: a.only,
        argv: a.command,
        cwd,
        env,
        pass_env: a.pass_env,
        stdin: None,
        timeout_seconds: Some(a.timeout),
        reason: a.reason,
        ttl_seconds: None,
        wait_seconds: a.wait,
        output: OutputMode::Stream,
    };
    let mut c = Connection::open(paths).await?;
    // An unlock restarts the broker: a run that waited for the locked vault is asked again, as
    // the human's `keyveil approve` expects (it unlocks, then approves the same call).
    for _ in 0..REASKS {
        c.send(&Request::Run(req.clone())).await?;
        match relay(&mut c).await? {
            Relayed::Exit(code) => return Ok(code),
            Relayed::BrokerRestarted => {
                note("keyveil: the vault is being unlocked; asking again");
                c = reconnect(paths).await?;
            }
        }
    }
    c.send(&Request::Run(req)).await?;
    match relay(&mut c).await? {
        Relayed::Exit(code) => Ok(code),
        Relayed::BrokerRestarted => bail!(
            "the broker stopped {} times while this run waited for the locked vault\nhint: run the command again once `keyveil status` says the vault is unlocked",
            REASKS + 1
        ),
    }
}

/// How many times a run that waited for the locked vault is asked again after the broker
/// restarted (an unlock restarts it).
const REASKS: usize = 2;

/// How a relay ended: the command's exit code, or the broker stopped while the run waited for
/// the locked vault (the human's unlock restarts it).
enum Relayed {
    Exit(i32),
    BrokerRestarted,
}

/// A connection to the broker that the unlock started, waiting up to 30 s for its socket (then
/// starting one as any command does).
async fn reconnect(paths: &Paths) -> Result<Connection> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        if let Some(c) = Connection::open_existing(paths).await {
            return Ok(c);
        }
    }
    Connection::open(paths).await
}

/// Relays one run's frames to our stdout and stderr until it ends.
async fn relay(c: &mut Connection) -> Result<Relayed> {
    let mut waited_locked = false;
    // Output frames go straight to our stdout/stderr with plain blocking writes: no buffer in
    // between (std's stdout is line-buffered; tokio's copies every chunk to a blocking thread).
    // This future runs on the thread that called `block_on`, so a slow reader of our stdout
    // stalls only this loop (and, through the socket, the broker's relay of this run).
    let mut out = RawOutput::stdout();
    let mut err = RawOutput::stderr();
    while let Some(ev) = c.next().await? {
        match ev {
            Event::Stdout(b) => {
                if out.write_all(&b)? == Written::ReaderGone {
                    return Ok(Relayed::Exit(EXIT_BROKEN_PIPE));
                }
            }
            Event::Stderr(b) => {
                if err.write_all(&b)? == Written::ReaderGone {
                    return Ok(Relayed::Exit(EXIT_BROKEN_PIPE));
                }
            }
            Event::Reply(Reply::Pending {
                request_id,
                is_final,
                vault_locked,
                ..
            }) => {
                waited_locked |= vault_locked;
                if is_final {
                    return Err(Exit {
                        code: 5,
                        message: format!(
                            "timed out waiting for approval of request #{request_id}\nhint: approve it with `keyveil approve {request_id}`, then run again"
                        ),
                    }
                    .into());
                }
                note(format!(
                    "keyveil: request #{request_id} waits for approval\nhint: in another terminal run `keyveil approve {request_id}` (or `keyveil deny {request_id}`)"
                ));
            }
            Event::Reply(Reply::Started { .. }) => {}
            Event::Reply(Reply::Exit(r)) => {
                if r.timed_out {
                    note(format!(
                        "keyveil: the command timed out and was killed (run {})",
                        r.run_id
                    ));
                }
                for l in r.write_leaks.iter().filter(|l| l.form == "egress") {
                    note(format!(
                        "keyveil: warning: the command sent the placeholder of {} to {}, where it is not bound: {}",
                        keyveil_proto::display::visible(&l.variable),
                        keyveil_proto::display::visible(&l.path),
                        l.action
                    ));
                }
                for l in r.write_leaks.iter().filter(|l| l.form != "egress") {
                    note(format!(
                        "keyveil: warning: the command wrote the value of {} into {} ({}; {})",
                        keyveil_proto::display::visible(&l.variable),
                        keyveil_proto::display::visible(&l.path),
                        l.form,
                        l.action
                    ));
                }
                if r.revoked {
                    note(format!(
                        "keyveil: grant {} was revoked; the command was killed",
                        r.grant_id
                    ));
                }
                return Ok(Relayed::Exit(r.exit_code));
            }
            Event::Reply(Reply::Error { code, .. })
                if waited_locked && code == keyveil_proto::ErrorCode::Failed =>
            {
                // "the broker stopped while request #N waited for the locked vault".
                return Ok(Relayed::BrokerRestarted);
            }
            Event::Reply(other) => {
                expect_ok(other)?;
            }
        }
    }
    if waited_locked {
        return Ok(Relayed::BrokerRestarted);
    }
    bail!("the broker closed the connection before the command finished")
}

/// The CLI's own stdout or stderr, written without buffering through a duplicate of the
/// descriptor (opened on the first write, so a run that prints nothing never touches it).
pub(crate) struct RawOutput {
    which: fn() -> std::io::Result<std::os::fd::OwnedFd>,
    file: Option<std::fs::File>,
}

impl RawOutput {
    fn stdout() -> RawOutput {
        RawOutput {
            which: || {
                use std::io::Write;
                // Anything `say` left in std's buffer goes first.
                let mut o = std::io::stdout().lock();
                o.flush()?;
                std::os::fd::AsFd::as_fd(&o).try_clone_to_owned()
            },
            file: None,
        }
    }

    fn stderr() -> RawOutput {
        RawOutput {
            which: || std::os::fd::AsFd::as_fd(&std::io::stderr()).try_clone_to_owned(),
            file: None,
        }
    }

    /// Writes all of `bytes` (blocking). A closed descriptor (`EBADF`) swallows the output, as
    /// std's own stdout does; a reader that went away (`EPIPE`) is reported, not an error.
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<Written> {
        use std::io::Write;
        let f = match &mut self.file {
            Some(f) => f,
            None => match (self.which)() {
                Ok(fd) => self.file.insert(std::fs::File::from(fd)),
                Err(e) if is_ebadf(&e) => return Ok(Written::Discarded),
                Err(e) => return Err(e),
            },
        };
        match f.write_all(bytes) {
            Ok(()) => Ok(Written::Done),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Written::ReaderGone),
            Err(e) if is_ebadf(&e) => Ok(Written::Discarded),
            Err(e) => Err(e),
        }
    }
}

/// What became of output written by [`RawOutput::write_all`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// Written.
    Done,
    /// Dropped: the descriptor is closed.
    Discarded,
    /// The reader closed its end of the pipe (`EPIPE`).
    ReaderGone,
}

/// Exit status of a run whose output reader went away (`keyveil run ... | head -1`): the
/// conventional 128 + SIGPIPE of a process killed by the broken pipe, with no message.
pub(crate) const EXIT_BROKEN_PIPE: i32 = 141;

pub(crate) fn is_ebadf(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::BADF.raw_os_error())
}
