//! The broker client used by the CLI and the MCP server: connects to the socket, starting the
//! broker when none answers (like `gpg-agent`), sends one [`Request`] and reads its replies.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

use crate::paths::Paths;
use keyveil_proto::op::Operation;
use keyveil_proto::{Bootstrap, Frame, FrameCodec, Reply, Request};

/// One event read from the broker.
#[derive(Debug)]
pub(crate) enum Event {
    /// A JSON reply.
    Reply(Reply),
    /// Redacted stdout bytes of a run.
    Stdout(bytes::Bytes),
    /// Redacted stderr bytes of a run.
    Stderr(bytes::Bytes),
}

/// A connection carrying one request.
pub(crate) struct Connection {
    framed: Framed<UnixStream, FrameCodec>,
}

impl Connection {
    /// Connects to the broker of `paths`, starting one if none answers (waits up to 10 s).
    pub(crate) async fn open(paths: &Paths) -> Result<Connection> {
        paths.check_socket_len()?;
        if let Ok(s) = UnixStream::connect(paths.socket()).await {
            return Ok(Connection::wrap(s));
        }
        start_broker(paths)?;
        let mut delay = Duration::from_millis(5);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match UnixStream::connect(paths.socket()).await {
                Ok(s) => return Ok(Connection::wrap(s)),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(anyhow!(e)).context(format!(
                        "the keyveil broker did not start (socket {}){}\nhint: see {} or run `keyveil daemon --foreground`",
                        paths.socket().display(),
                        paths.full_disk_hint(),
                        paths.log().display()
                    ));
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(100));
                }
            }
        }
    }

    /// Connects only if a broker is running; `None` otherwise.
    pub(crate) async fn open_existing(paths: &Paths) -> Option<Connection> {
        UnixStream::connect(paths.socket())
            .await
            .ok()
            .map(Connection::wrap)
    }

    fn wrap(s: UnixStream) -> Connection {
        Connection {
            framed: Framed::new(s, FrameCodec),
        }
    }

    /// Sends the request.
    pub(crate) async fn send(&mut self, req: &Request) -> Result<()> {
        let body = Frame::json(req).context("cannot encode the request")?;
        if body.len() > keyveil_proto::MAX_FRAME {
            bail!(
                "the {} request is {} bytes, over the {} MiB limit of one message to the broker; nothing was sent\nhint: send large input as a file (a path) instead",
                req.op(),
                body.len(),
                keyveil_proto::MAX_FRAME / (1024 * 1024)
            );
        }
        self.framed
            .send(body)
            .await
            .context("lost the connection to the broker while sending")
    }

    /// Reads the next event; `None` when the broker closed the connection.
    pub(crate) async fn next(&mut self) -> Result<Option<Event>> {
        let Some(frame) = self.framed.next().await else {
            return Ok(None);
        };
        let frame = frame.context("lost the connection to the broker")?;
        Ok(Some(match Frame::decode(frame)? {
            Frame::Json(b) => Event::Reply(
                serde_json::from_slice(&b).context("the broker sent a reply this client cannot read (version mismatch? run `keyveil daemon stop`)")?,
            ),
            Frame::Stdout(b) => Event::Stdout(b),
            Frame::Stderr(b) => Event::Stderr(b),
        }))
    }

    /// Reads events until the final reply and returns it (output frames are dropped).
    pub(crate) async fn final_reply(&mut self) -> Result<Reply> {
        while let Some(ev) = self.next().await? {
            if let Event::Reply(r) = ev
                && r.is_final()
            {
                return Ok(r);
            }
        }
        bail!("the broker closed the connection before replying")
    }
}

/// The data of the broker's `Ok` reply to operation `O`, as its type.
///
/// Errors: the data does not have the reply's shape (a broker of another version).
pub(crate) fn typed_data<O: Operation>(data: serde_json::Value) -> Result<O::Reply> {
    serde_json::from_value(data).context(
        "the broker's reply does not have the shape this client knows (version mismatch? run `keyveil daemon stop`)",
    )
}

/// Sends one request on a fresh connection and returns the final reply.
pub(crate) async fn call(paths: &Paths, req: &Request) -> Result<Reply> {
    let mut c = Connection::open(paths).await?;
    c.send(req).await?;
    c.final_reply().await
}

/// Sends one request only if a broker answers at the socket (never starts one); `None` when
/// nothing answers.
pub(crate) async fn call_existing(paths: &Paths, req: &Request) -> Option<Result<Reply>> {
    let mut c = Connection::open_existing(paths).await?;
    Some(
        async move {
            c.send(req).await?;
            c.final_reply().await
        }
        .await,
    )
}

/// Starts a broker of our own with a [`Bootstrap`] (init or unlock): this very executable
/// (`/proc/self/exe`), without the dynamic loader's variables (`LD_*`), detached like
/// [`Connection::open`]'s broker. The bootstrap travels over a Unix socket pair that is the
/// child's stdin and stdout, never a pipe: a pipe can be reopened through `/proc/PID/fd/0` by any
/// process of the user while the new broker is still dumpable (between `exec` and its
/// hardening), a socket cannot (`ENXIO`). Waits up to `timeout` for its one-line answer and
/// returns it.
///
/// Errors: the broker cannot be started, or gives no answer in time (see its log).
pub(crate) fn start_broker_with(
    paths: &Paths,
    bootstrap: &Bootstrap,
    timeout: Duration,
) -> Result<Reply> {
    use std::io::{BufRead, Write};
    use std::os::fd::OwnedFd;
    paths.ensure_dirs()?;
    let (mut ours, theirs) =
        std::os::unix::net::UnixStream::pair().context("cannot make a socket pair")?;
    let theirs_out = theirs.try_clone().context("cannot make a socket pair")?;
    let mut cmd = broker_command(paths)?;
    cmd.arg("--bootstrap-stdin")
        .stdin(std::process::Stdio::from(OwnedFd::from(theirs)))
        .stdout(std::process::Stdio::from(OwnedFd::from(theirs_out)));
    let mut child = cmd.spawn().context("cannot start the keyveil broker")?;
    // Our copies of the child's end are gone with `cmd`'s stdio: only the child holds it.
    drop(cmd);
    let line = zeroize::Zeroizing::new(
        serde_json::to_string(bootstrap).context("cannot encode the bootstrap")?,
    );
    ours.write_all(line.as_bytes())
        .and_then(|()| ours.write_all(b"\n"))
        .context("cannot hand the broker its bootstrap")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut answer = String::new();
        let _ = std::io::BufReader::new(ours).read_line(&mut answer);
        let _ = tx.send(answer);
    });
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    let answer = rx.recv_timeout(timeout).map_err(|_| {
        anyhow!(
            "the broker that was started did not answer within {} s\nhint: see {}",
            timeout.as_secs(),
            paths.log().display()
        )
    })?;
    serde_json::from_str(answer.trim()).with_context(|| {
        format!(
            "the broker that was started stopped without answering\nhint: see {}",
            paths.log().display()
        )
    })
}

/// Environment variables of this process that a broker it starts must not inherit: a login
/// secret named by `--admin-env` is read by the CLI and sent sealed; left in the broker's
/// environment it would outlive the call there and reach the broker's children (the notifier).
static WITHHELD: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Keeps environment variable `name` out of any broker this process starts (see [`WITHHELD`]).
pub(crate) fn withhold_from_broker(name: &str) {
    let mut w = WITHHELD.lock().unwrap_or_else(|p| p.into_inner());
    if !w.iter().any(|n| n == name) {
        w.push(name.to_owned());
    }
}

/// `keyveil daemon --foreground` from this executable, logging to the log file, detached.
fn broker_command(paths: &Paths) -> Result<std::process::Command> {
    let exe = std::env::current_exe().context("cannot find keyveil's own executable")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.log())
        .with_context(|| format!("cannot open {}", paths.log().display()))?;
    crate::paths::set_mode(&paths.log(), 0o600)?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("daemon")
        .arg("--foreground")
        .env("KEYVEIL_HOME", &paths.home)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    // Code the loader would run before ours has no business in the broker.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LD_") {
            cmd.env_remove(k);
        }
    }
    for k in WITHHELD.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        cmd.env_remove(k);
    }
    crate::harden::detach(&mut cmd);
    Ok(cmd)
}

/// Starts `keyveil daemon --foreground` detached: its own session, stdio on /dev/null and the
/// log file.
fn start_broker(paths: &Paths) -> Result<()> {
    paths.ensure_dirs()?;
    let mut cmd = broker_command(paths)?;
    let child = cmd.spawn().context("cannot start the keyveil broker")?;
    // Reap it in the background so it never lingers as a zombie of a long-lived client (the
    // MCP server); the broker itself keeps running.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use keyveil_proto::{Passphrase, op};

    /// A request over the broker's 16 MiB frame limit is refused here, with the limit stated
    /// and nothing sent, instead of the connection being lost half-way.
    #[tokio::test]
    async fn a_request_over_the_frame_limit_is_refused_before_anything_is_sent() {
        use tokio::io::AsyncReadExt;
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut c = Connection::wrap(ours);
        let req: Request = op::VarSet {
            environment: "demo".into(),
            name: "HUGE".into(),
            value: Some(Passphrase::new("x".repeat(keyveil_proto::MAX_FRAME + 1))),
            sealed_value: None,
            factor: None,
        }
        .into();
        let err = c.send(&req).await.unwrap_err().to_string();
        assert!(
            err.contains("16 MiB") && err.contains("nothing was sent") && err.contains("hint:"),
            "{err}"
        );
        assert!(!err.contains("xxxxxxxx"));
        drop(c);
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty(), "{} bytes were sent", got.len());
    }
}
