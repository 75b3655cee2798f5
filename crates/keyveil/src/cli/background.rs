//! `keyveil start`, `keyveil logs`, `keyveil stop` (background runs) and `keyveil set --web`.
// Indexing here is on `serde_json::Value` (a missing key or index yields `Null`, never a
// panic), which clippy cannot tell from slice indexing.
#![allow(clippy::indexing_slicing)]

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{Exit, call, cli_client, note, say};
use crate::client::{Connection, Event};
use crate::paths::Paths;
use keyveil_proto::op;
use keyveil_proto::{OutputMode, Reply, Request, RunRequest};

/// `keyveil start`.
#[derive(Debug, Args)]
pub(super) struct StartArgs {
    /// Environment.
    #[arg(long = "env")]
    environment: String,
    /// Only these variables (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Why (shown to the approver).
    #[arg(long)]
    reason: Option<String>,
    /// Working directory (default: the current one).
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// Kill the command after this many seconds (default: a day; its grant usually ends it
    /// sooner).
    #[arg(long)]
    timeout: Option<u64>,
    /// Seconds to wait for approval before giving up (exit 5).
    #[arg(long, default_value_t = 600)]
    wait: u64,
    /// Pass these variables of your environment through to the command (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pass_env: Vec<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// `keyveil logs`.
#[derive(Debug, Args)]
pub(super) struct LogsArgs {
    /// Run id (`r-...`).
    run_id: String,
    /// Byte offset to start from (the `next` of an earlier call).
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Keep printing new output until the run ends; exit with its exit code.
    #[arg(long)]
    follow: bool,
}

/// Starts a background run; prints its run id on stdout.
pub(super) async fn start(paths: &Paths, a: StartArgs) -> Result<i32> {
    let (cwd, env) = super::requester_context(a.cwd)?;
    let req = RunRequest {
        client: cli_client(),
        environment: a.environment,
        variables: a.only,
        argv: a.command,
        cwd,
        env,
        pass_env: a.pass_env,
        stdin: None,
        timeout_seconds: a.timeout,
        reason: a.reason,
        ttl_seconds: None,
        wait_seconds: a.wait,
        output: OutputMode::Collect { cap_bytes: 0 },
    };
    let mut c = Connection::open(paths).await?;
    c.send(&Request::Start(req)).await?;
    while let Some(ev) = c.next().await? {
        let Event::Reply(r) = ev else { continue };
        match r {
            Reply::Pending {
                request_id,
                is_final: true,
                ..
            } => {
                return Err(Exit {
                    code: 5,
                    message: format!(
                        "timed out waiting for approval of request #{request_id}\nhint: approve it with `keyveil approve {request_id}`, then start again"
                    ),
                }
                .into());
            }
            Reply::Pending { request_id, .. } => note(format!(
                "keyveil: request #{request_id} waits for approval\nhint: in another terminal run `keyveil approve {request_id} --ttl 8h` (a background run lives as long as its grant)"
            )),
            Reply::Ok { data } => {
                let started: op::Started = anyhow::Context::context(
                    serde_json::from_value(data),
                    "the broker's reply does not have the shape this client knows (version mismatch? run `keyveil daemon stop`)",
                )?;
                let id = &started.run_id;
                say(id);
                note(format!(
                    "keyveil: started {id} (pid {}) under grant {}\nhint: `keyveil logs {id} --follow` shows its output; `keyveil stop {id}` ends it",
                    started.pid, started.grant_id
                ));
                return Ok(0);
            }
            other => {
                super::expect_ok(other)?;
            }
        }
    }
    anyhow::bail!("the broker closed the connection before the run started")
}

/// Prints a background run's output from an offset; with `--follow`, until it ends.
pub(super) async fn logs(paths: &Paths, a: LogsArgs) -> Result<i32> {
    let mut from = a.from;
    loop {
        let d = call(
            paths,
            op::Logs {
                run_id: a.run_id.clone(),
                from,
                max_bytes: None,
                client: None,
            },
        )
        .await?;
        let dropped = d.dropped;
        if dropped > 0 {
            note(format!(
                "keyveil: {dropped} bytes of output were dropped before they were read (the buffer keeps the last 1 MiB)"
            ));
        }
        {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(d.output.as_bytes());
            let _ = out.flush();
        }
        let (next, end, running) = (d.next, d.end, d.running);
        if next < end {
            from = next;
            continue;
        }
        from = next;
        if !running {
            let end = d.ended.as_ref();
            note(format!(
                "keyveil: run {} ended: exit code {}{}{}{}",
                a.run_id,
                end.map_or_else(|| "null".to_owned(), |e| e.exit_code.to_string()),
                if d.stopped { ", stopped" } else { "" },
                if end.is_some_and(|e| e.revoked) {
                    ", its grant ended"
                } else {
                    ""
                },
                if end.is_some_and(|e| e.timed_out) {
                    ", timed out"
                } else {
                    ""
                },
            ));
            for l in end.map(|e| e.write_leaks.as_slice()).unwrap_or_default() {
                if l.form == "egress" {
                    note(format!(
                        "keyveil: warning: the command sent the placeholder of {} to {}, where it is not bound: blocked",
                        keyveil_proto::display::visible(&l.variable),
                        keyveil_proto::display::visible(&l.path),
                    ));
                } else {
                    note(format!(
                        "keyveil: warning: the command wrote the value of {} into {} ({})",
                        keyveil_proto::display::visible(&l.variable),
                        keyveil_proto::display::visible(&l.path),
                        l.form
                    ));
                }
            }
            let code = end.map_or(1, |e| e.exit_code);
            return Ok(if a.follow { code } else { 0 });
        }
        if !a.follow {
            note(format!(
                "keyveil: run {} is still running; next offset {next} (`keyveil logs {} --from {next}`)",
                a.run_id, a.run_id
            ));
            return Ok(0);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Stops a background run.
pub(super) async fn stop(paths: &Paths, run_id: &str) -> Result<i32> {
    let d = call(
        paths,
        op::Stop {
            run_id: run_id.to_owned(),
            client: None,
        },
    )
    .await?;
    if d.stopped {
        say(format!(
            "stopped {run_id}{}",
            match d.ended {
                Some(e) => format!(" (exit code {})", e.exit_code),
                None => " (still ending)".to_owned(),
            }
        ));
    } else {
        say(format!(
            "{run_id} had already ended (exit code {})",
            d.ended
                .map_or_else(|| "null".to_owned(), |e| e.exit_code.to_string())
        ));
    }
    Ok(0)
}

/// `keyveil set ENV VAR --web`: prints a one-time link to the value-entry page.
pub(super) async fn set_web(paths: &Paths, env: &str, var: &str) -> Result<i32> {
    let d = call(
        paths,
        op::SetUrl {
            environment: env.to_owned(),
            name: var.to_owned(),
        },
    )
    .await?;
    say(&d.url);
    note(format!(
        "keyveil: open this link in your browser and type the value of {env}/{var} there; it works once, for {} minutes",
        d.expires_in_seconds / 60
    ));
    // At a terminal, say when the value is stored (a script reading the link is not kept).
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return Ok(0);
    }
    note("waiting for the value to be stored (Ctrl-C stops waiting; the link stays valid)");
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_secs(d.expires_in_seconds.saturating_add(60));
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if let Ok(shown) = call(
            paths,
            op::EnvShow {
                name: env.to_owned(),
                versions: false,
            },
        )
        .await
            && shown.variables.iter().any(|v| v.name == var && v.set)
        {
            say(format!(
                "stored: {env}/{var} has its value (typed on the page, never shown here)"
            ));
            return Ok(0);
        }
        if tokio::time::Instant::now() >= deadline {
            note(format!(
                "no value was stored for {env}/{var} before the link expired\nhint: run `keyveil set {env} {var} --web` again for a new link"
            ));
            return Ok(1);
        }
    }
}
