//! `keyveil start`, `keyveil logs`, `keyveil stop` (background runs) and `keyveil set --web`.
// Indexing here is on `serde_json::Value` (a missing key or index yields `Null`, never a
// panic), which clippy cannot tell from slice indexing.
#![allow(clippy::indexing_slicing)]

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::Value;

use super::{Exit, call_untyped, cli_client, note, say};
use crate::client::{Connection, Event};
use crate::paths::Paths;
use keyveil_proto::op;
use keyveil_proto::{OutputMode, Reply, Request, RunRequest};

/// A field of a reply (`null` when absent).
fn f<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&Value::Null)
}

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
                let id = f(&data, "run_id").as_str().unwrap_or("");
                say(id);
                note(format!(
                    "keyveil: started {id} (pid {}) under grant {}\nhint: `keyveil logs {id} --follow` shows its output; `keyveil stop {id}` ends it",
                    f(&data, "pid"),
                    f(&data, "grant_id").as_str().unwrap_or("")
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
        let d = call_untyped(
            paths,
            Request::Logs(op::Logs {
                run_id: a.run_id.clone(),
                from,
                max_bytes: None,
                client: None,
            }),
        )
        .await?;
        let dropped = f(&d, "dropped").as_u64().unwrap_or(0);
        if dropped > 0 {
            note(format!(
                "keyveil: {dropped} bytes of output were dropped before they were read (the buffer keeps the last 1 MiB)"
            ));
        }
        let output = f(&d, "output").as_str().unwrap_or("");
        {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(output.as_bytes());
            let _ = out.flush();
        }
        let next = f(&d, "next").as_u64().unwrap_or(from);
        let end = f(&d, "end").as_u64().unwrap_or(next);
        let running = f(&d, "running").as_bool() == Some(true);
        if next < end {
            from = next;
            continue;
        }
        from = next;
        if !running {
            note(format!(
                "keyveil: run {} ended: exit code {}{}{}{}",
                a.run_id,
                f(&d, "exit_code"),
                if f(&d, "stopped") == true {
                    ", stopped"
                } else {
                    ""
                },
                if f(&d, "revoked") == true {
                    ", its grant ended"
                } else {
                    ""
                },
                if f(&d, "timed_out") == true {
                    ", timed out"
                } else {
                    ""
                },
            ));
            for l in f(&d, "write_leaks").as_array().into_iter().flatten() {
                note(format!(
                    "keyveil: warning: the command wrote the value of {} into {} ({})",
                    keyveil_proto::display::visible(f(l, "variable").as_str().unwrap_or("")),
                    keyveil_proto::display::visible(f(l, "path").as_str().unwrap_or("")),
                    f(l, "form").as_str().unwrap_or("")
                ));
            }
            let code = f(&d, "exit_code").as_i64().unwrap_or(1);
            return Ok(if a.follow {
                i32::try_from(code).unwrap_or(1)
            } else {
                0
            });
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
    let d = call_untyped(
        paths,
        Request::Stop(op::Stop {
            run_id: run_id.to_owned(),
            client: None,
        }),
    )
    .await?;
    if f(&d, "stopped") == true {
        say(format!(
            "stopped {run_id}{}",
            match f(&d, "exit_code").as_i64() {
                Some(c) => format!(" (exit code {c})"),
                None => " (still ending)".to_owned(),
            }
        ));
    } else {
        say(format!(
            "{run_id} had already ended (exit code {})",
            f(&d, "exit_code")
        ));
    }
    Ok(0)
}

/// `keyveil set ENV VAR --web`: prints a one-time link to the value-entry page.
pub(super) async fn set_web(paths: &Paths, env: &str, var: &str) -> Result<i32> {
    let d = call_untyped(
        paths,
        Request::SetUrl(op::SetUrl {
            environment: env.to_owned(),
            name: var.to_owned(),
        }),
    )
    .await?;
    let url = f(&d, "url").as_str().unwrap_or("");
    say(url);
    note(format!(
        "keyveil: open this link in your browser and type the value of {env}/{var} there; it works once, for {} minutes",
        f(&d, "expires_in_seconds").as_u64().unwrap_or(900) / 60
    ));
    Ok(0)
}
