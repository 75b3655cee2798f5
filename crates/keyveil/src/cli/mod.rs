//! The `keyveil` command line: dispatch of each command to its module, and the few helpers
//! every command uses (printing, exit codes, one broker call). The clap definitions live in
//! `args`, the factor prompts and signed calls in `factor`, and each group of commands in a
//! module of its own (`approve`, `run`, `env`, `audit`, `policy`, `background`, `dynamic`).
// Indexing here is on `serde_json::Value` (a missing key or index yields `Null`, never a
// panic), which clippy cannot tell from slice indexing.
#![allow(clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::authorize::{self, Authorized, FactorInput};
use crate::client::{self, Connection, Event};
use crate::paths::Paths;
use keyveil_proto::op::{self, Operation};
use keyveil_proto::{
    Charset, ClientInfo, ErrorCode, FACTOR_NEEDED, OutputMode, Passphrase, Reply, Request,
    RunRequest,
};

mod approve;
mod args;
mod audit;
mod background;
mod ci;
mod dynamic;
mod env;
mod factor;
mod factor_args;
mod import;
mod manual;
mod mounts;
mod parse;
mod policy;
mod project;
mod run;
mod sweep;
mod vars;
mod words;

pub use parse::parse;

use approve::*;
use args::*;
use audit::*;
use env::*;
use factor::*;
use factor_args::FactorArgs;
use policy::*;
use run::*;

/// keyveil: let AI coding agents use secrets without ever holding them.
#[derive(Debug, Parser)]
#[command(name = "keyveil", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

pub(crate) use crate::output::{Exit, expect_ok, note, say};

/// Whether a command may read a factor or a value: it makes itself non-dumpable first thing.
/// (Others stay dumpable so the broker can read their executable for the card.)
fn handles_factors(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Init { .. }
            | Command::Unlock { .. }
            | Command::Approve(_)
            | Command::Set { .. }
            | Command::Import(_)
            | Command::Generate { .. }
            | Command::Unset { .. }
            | Command::Env(_)
            | Command::Factor(_)
            | Command::Policy(_)
            | Command::Dynamic(_)
            | Command::Project(_)
            | Command::Ci(_)
            | Command::Sweep(_)
    )
}

/// The typed data of the broker's reply to operation `O`, or an [`Exit`] error.
pub(crate) fn expect<O: Operation>(reply: Reply) -> Result<O::Reply> {
    client::typed_data::<O>(expect_ok(reply)?)
}

/// A reply as the JSON text `--json` prints (keys sorted, as the broker's own JSON).
pub(crate) fn json_text<T: serde::Serialize>(reply: &T) -> Result<String> {
    Ok(serde_json::to_value(reply)
        .context("cannot encode the reply")?
        .to_string())
}

/// What a `revoke` or `lock` reply says about the runs it stopped, as a clause ("" if none):
/// only what the broker confirmed.
fn runs_stopped(d: &op::RunsStopped) -> String {
    let runs = d.runs_stopped;
    if runs == 0 {
        return String::new();
    }
    let killed = d.processes_killed;
    format!(
        "; stopped {runs} {} ({killed} {} killed)",
        if runs == 1 { "run" } else { "runs" },
        if killed == 1 { "process" } else { "processes" }
    )
}

/// Warns when the broker could not confirm that every process of a stopped run is gone.
fn warn_unconfirmed(d: &op::RunsStopped) {
    let n = d.runs_unconfirmed;
    if n > 0 {
        note(format!(
            "warning: for {n} stopped {} the broker could not confirm that every process is gone (a process could not be killed, or the run's reaper was killed first; the supervisor was asked to kill what is left)\nhint: see broker.log; `keyveil daemon stop` kills everything started under a grant",
            if n == 1 { "run" } else { "runs" }
        ));
    }
}

/// Runs the CLI; returns the process exit code.
pub(crate) fn main(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Daemon {
            foreground,
            action,
            supervised,
            bootstrap_stdin,
        } => {
            let paths = Paths::resolve()?;
            match (action, foreground) {
                (Some(DaemonAction::Stop), _) => block_on(daemon_stop(&paths)),
                (None, true) if !supervised => {
                    crate::logging::init_broker();
                    crate::supervise::main(bootstrap_stdin)
                }
                (None, true) => {
                    crate::logging::init_broker();
                    crate::supervise::mark_supervised();
                    // Before the runtime's threads exist (see `harden.rs`).
                    crate::harden::limit_allocator_arenas();
                    block_on(async {
                        crate::broker::serve(paths, bootstrap_stdin).await?;
                        Ok(0)
                    })
                }
                (None, false) => block_on(async {
                    let d = call(&paths, op::Status).await?;
                    say(format!("broker running (pid {})", d.pid));
                    Ok(0)
                }),
            }
        }
        Command::Mcp => crate::mcp::main(),
        Command::Demo => crate::demo::main(),
        Command::Setup {
            host,
            print,
            project,
            host_prompts,
            remove,
        } => crate::setup::setup_main(crate::setup::SetupArgs {
            host,
            print,
            project,
            host_prompts,
            remove,
        }),
        Command::Doctor { host_prompts } => {
            crate::logging::init_cli();
            crate::setup::doctor_main(host_prompts)
        }
        Command::Agent { stage, command } => crate::sandbox::main(stage, command),
        Command::Completions(a) => manual::completions(&a),
        Command::Man(a) => manual::man(&a),
        other => {
            if handles_factors(&other) {
                // Before anything else: this process will hold a factor (and maybe a value).
                crate::harden::harden_cli();
            }
            crate::logging::init_cli();
            let paths = Paths::resolve()?;
            // `keyveil run` is how an agent asks: its errors keep the broker's words for agents.
            let agent = matches!(other, Command::Run(_));
            block_on(dispatch(&paths, other)).map_err(|e| if agent { e } else { for_the_human(e) })
        }
    }
}

/// The broker's hints speak to an agent ("ask the user to ..."); at the command line a human
/// reads them: the locked error and the unknown environment say what to type instead.
fn for_the_human(e: anyhow::Error) -> anyhow::Error {
    let Some(x) = e.downcast_ref::<Exit>() else {
        return e;
    };
    let (first, hint) = x.message.split_once("\nhint: ").unwrap_or((&x.message, ""));
    let hint = if x.code == ErrorCode::Locked.exit_code()
        && first == crate::broker::state::LOCKED_MESSAGE
    {
        "unlock it with `keyveil unlock` (it asks for your passphrase), then run this command again"
            .to_owned()
    } else if let Some(env) = first
        .strip_prefix("no environment named '")
        .and_then(|r| r.strip_suffix('\''))
        && hint.contains("the user can create one")
    {
        format!(
            "no environment exists yet; create it with `keyveil env create {}`",
            crate::card::esc(env)
        )
    } else {
        return e;
    };
    Exit {
        code: x.code,
        message: format!("{first}\nhint: {hint}"),
    }
    .into()
}

fn block_on<F: std::future::Future<Output = Result<i32>>>(f: F) -> Result<i32> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(f)
}

async fn daemon_stop(paths: &Paths) -> Result<i32> {
    match Connection::open_existing(paths).await {
        None => {
            // Nothing answers at the socket; a process may still hold the broker's lock (its
            // socket was moved or deleted): say so rather than that none runs.
            let held = std::fs::File::open(paths.lock())
                .ok()
                .is_some_and(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)));
            if held {
                note(format!(
                    "a keyveil broker holds {} but does not answer at {}; it was not stopped\nhint: it stops by itself when its home is deleted; otherwise find it with `fuser {}` and stop it with `kill PID`",
                    paths.lock().display(),
                    paths.socket().display(),
                    paths.lock().display()
                ));
                return Ok(1);
            }
            say("no broker is running");
            Ok(0)
        }
        Some(mut c) => {
            c.send(&op::Shutdown.into()).await?;
            expect::<op::Shutdown>(c.final_reply().await?)?;
            // Wait until the socket is gone.
            for _ in 0..100 {
                if !paths.socket().exists() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            say("broker stopped");
            Ok(0)
        }
    }
}

/// The new vault's passphrase, checked against the length rule right after it is entered:
/// at the terminal a short one is refused and asked for again (at most three entries); from
/// stdin it fails with the rule and a hint.
///
/// # Errors
/// No terminal, stdin unreadable, or too short (from stdin, or three times at the terminal).
fn new_passphrase(from_stdin: bool) -> Result<Passphrase> {
    let min = keyveil_proto::MIN_PASSPHRASE_LEN;
    let rule = format!("a vault passphrase has at least {min} characters");
    for _ in 0..3 {
        let p = read_secret_line(from_stdin, "New vault passphrase: ")?;
        if p.expose().len() >= min {
            return Ok(p);
        }
        if from_stdin {
            break;
        }
        note(format!("too short: {rule}; try again"));
    }
    Err(Exit {
        code: 2,
        message: format!(
            "the passphrase is too short: {rule}; nothing was created\nhint: {}",
            if from_stdin {
                "pipe a longer passphrase into `keyveil init --passphrase-stdin` (a password manager can generate one)"
            } else {
                "run `keyveil init` again with a longer passphrase (a few unrelated words are easy to type and to remember)"
            }
        ),
    }
    .into())
}

/// Checks that environment `env` exists (names are listed without the factor), so that a
/// command can refuse before it prompts for anything.
///
/// # Errors
/// The vault is locked, the broker cannot be reached, or no environment has that name.
async fn ensure_env(paths: &Paths, env: &str) -> Result<()> {
    let d = call(paths, op::EnvList).await?;
    if d.environments.iter().any(|e| e.name == env) {
        return Ok(());
    }
    let names: Vec<String> = d
        .environments
        .iter()
        .map(|e| crate::card::esc(&e.name))
        .collect();
    let env = crate::card::esc(env);
    Err(Exit {
        code: ErrorCode::NotFound.exit_code(),
        message: format!(
            "no environment named '{env}'; nothing was stored\nhint: create it with `keyveil env create {env}`{}",
            if names.is_empty() {
                String::new()
            } else {
                format!(" (environments: {})", names.join(", "))
            }
        ),
    }
    .into())
}

/// Sends operation `o` on a fresh connection; its typed reply, or an [`Exit`] error.
/// `path` made absolute against the current directory (not resolved: the broker does that).
pub(crate) fn absolute(path: &std::path::Path) -> Result<String> {
    let p = std::path::absolute(path).map_err(|e| Exit {
        code: 2,
        message: format!("cannot make {} absolute: {e}", path.display()),
    })?;
    Ok(p.display().to_string())
}

async fn call<O: Operation>(paths: &Paths, o: O) -> Result<O::Reply> {
    expect::<O>(client::call(paths, &o.into()).await?)
}

async fn dispatch(paths: &Paths, cmd: Command) -> Result<i32> {
    match cmd {
        Command::Init {
            passphrase_stdin,
            kdf_memory_kib,
        } => {
            if paths.vault().exists() {
                return Err(Exit {
                    code: 1,
                    message: format!(
                        "a vault already exists at {}\nhint: unlock it with `keyveil unlock`",
                        paths.vault().display()
                    ),
                }
                .into());
            }
            let p = new_passphrase(passphrase_stdin)?;
            if !passphrase_stdin {
                let again = read_secret_line(false, "Repeat passphrase: ")?;
                if again.expose() != p.expose() {
                    return Err(Exit {
                        code: 2,
                        message: "the passphrases differ; nothing was created\nhint: run `keyveil init` again and type the same passphrase at both prompts".into(),
                    }
                    .into());
                }
            }
            authorize::init(
                paths,
                p,
                kdf_memory_kib,
                std::env::var("PATH").ok(),
                std::env::var("HOME").ok(),
            )
            .await
            .map_err(auth_exit)?;
            say(format!(
                "created vault {} (unlocked)",
                paths.vault().display()
            ));
            say("next: keyveil env create NAME, then keyveil set NAME VAR");
            Ok(0)
        }
        Command::Unlock { passphrase_stdin } => {
            let p = read_secret_line(passphrase_stdin, "Vault passphrase: ")?;
            let (already, warnings) = authorize::unlock(paths, p).await.map_err(auth_exit)?;
            say(if already {
                "the broker is already unlocked"
            } else {
                "unlocked"
            });
            for w in &warnings {
                note(format!("WARNING: {w}"));
            }
            if !warnings.is_empty() {
                note(
                    "hint: `keyveil audit verify` shows which entries still verify (docs/audit-format.md); keep any log moved aside as evidence; this is reported until the log is rotated",
                );
            }
            Ok(0)
        }
        Command::Lock => {
            match Connection::open_existing(paths).await {
                None => say("no broker is running (nothing is unlocked)"),
                Some(mut c) => {
                    c.send(&op::Lock.into()).await?;
                    let d = expect::<op::Lock>(c.final_reply().await?)?;
                    if d.already {
                        say("the vault was already locked (no value is in the broker's memory)");
                        return Ok(0);
                    }
                    say(format!(
                        "locked{} (no value is left in the broker's memory)",
                        runs_stopped(&d.stopped)
                    ));
                    warn_unconfirmed(&d.stopped);
                    match &d.audit_problem {
                        // A known cause: say it, and how to see what still verifies.
                        Some(problem) => note(format!(
                            "warning: {problem}\nhint: after `keyveil unlock`, `keyveil audit verify` shows which entries still verify (docs/audit-format.md explains each case); keep the changed log as evidence"
                        )),
                        None if !d.recorded => note(
                            "warning: the lock could not be recorded in the audit log (is the disk full?); it is counted in the gap the next unlock records\nhint: free space where KEYVEIL_HOME is, then `keyveil audit verify`",
                        ),
                        None => {}
                    }
                }
            }
            Ok(0)
        }
        Command::Status { json } => {
            let d = match Connection::open_existing(paths).await {
                None => None,
                Some(mut c) => {
                    c.send(&op::Status.into()).await?;
                    Some(expect::<op::Status>(c.final_reply().await?)?)
                }
            };
            match d {
                Some(d) if json => say(json_text(&d)?),
                // Not running: what this client knows itself.
                None if json => say(serde_json::json!({
                    "running": false,
                    "home": paths.home,
                    "socket": paths.socket(),
                    "vault_exists": paths.vault().exists(),
                })
                .to_string()),
                Some(d) => say(format!(
                    "broker: running (pid {})\nvault: {}\nsocket: {}\npending requests: {}\nlive grants: {}",
                    d.pid,
                    if d.locked { "locked" } else { "unlocked" },
                    d.socket.display(),
                    d.pending_requests + d.locked_asks.len(),
                    d.live_grants
                ) + &if d.locked_asks.is_empty() {
                    String::new()
                } else {
                    format!(
                        "\nhint: {} asked while the vault is locked: `keyveil approve` unlocks and approves with one passphrase entry",
                        words::count(d.locked_asks.len() as u64, "request", "requests")
                    )
                } + &outside_custody(&d.values_outside_custody)
                    + &if d.log_lines_lost > 0 {
                        format!(
                            "\nwarning: {} lines of broker.log could not be written (is the disk full?)",
                            d.log_lines_lost
                        )
                    } else {
                        String::new()
                    }),
                None => say(format!(
                    "broker: not running\nvault: {}\nhint: any keyveil command starts it; `keyveil unlock` to unlock",
                    if paths.vault().exists() {
                        "exists"
                    } else {
                        "none (run `keyveil init`)"
                    }
                )),
            }
            Ok(0)
        }
        Command::Env(e) => env(paths, e).await,
        Command::Set { env, var, web, .. } if web => {
            // As below: a missing environment or a locked vault is said before a page opens.
            ensure_env(paths, &env).await?;
            background::set_web(paths, &env, &var).await
        }
        Command::Set {
            env,
            var,
            from_stdin,
            factor,
            ..
        } => vars::set(paths, env, var, from_stdin, factor).await,
        Command::Generate {
            env,
            var,
            length,
            charset,
            factor,
        } => vars::generate(paths, env, var, length, charset, factor).await,
        Command::Unset { env, var, factor } => vars::unset(paths, env, var, factor).await,
        Command::Run(a) => run(paths, a).await,
        Command::Import(a) => import::import(paths, a).await,
        Command::Requests { json, details } => {
            let list = call(paths, op::Requests).await?.requests;
            if json {
                say(json_text(&list)?);
            } else if list.is_empty() {
                say("no pending requests");
            } else {
                let st = crate::card::Style::for_terminal(std::io::IsTerminal::is_terminal(
                    &std::io::stdout(),
                ));
                for r in &list {
                    say(if details {
                        crate::card::render_details(r, st)
                    } else {
                        crate::card::render_styled(r, st)
                    });
                }
            }
            Ok(0)
        }
        Command::Approve(a) => approve(paths, a).await,
        Command::Mount { env, path } => mounts::mount(paths, env, path).await,
        Command::Unmount { path } => mounts::unmount(paths, path).await,
        Command::Mounts { json } => mounts::list(paths, json).await,
        Command::Deny { id, reason } => {
            call(
                paths,
                op::Deny {
                    request_id: id,
                    reason,
                },
            )
            .await?;
            say(format!("denied request #{id}"));
            Ok(0)
        }
        Command::Grants { json } => {
            let d = call(paths, op::Grants { client: None }).await?;
            let list = d.grants;
            if json {
                say(json_text(&list)?);
            } else if list.is_empty() {
                say("no live grants");
            } else {
                for g in &list {
                    say(words::grant_line(
                        g,
                        &g.variables.join(","),
                        &match &g.argv {
                            None => "ANY".to_owned(),
                            Some(argv) => crate::card::argv_words(argv.iter().map(String::as_str)),
                        },
                    ));
                    dynamic::print_grant_credentials(g);
                }
            }
            Ok(0)
        }
        Command::Revoke { grant_id, all } => {
            if grant_id.is_none() && !all {
                return Err(Exit {
                    code: 2,
                    message: "name a grant to revoke, or use --all\nhint: list grants with `keyveil grants`".into(),
                }
                .into());
            }
            let named = grant_id.clone();
            let d = call(
                paths,
                op::Revoke {
                    grant_id,
                    all,
                    client: None,
                },
            )
            .await?;
            let mut msg = words::revoke_message(&d, named.as_deref());
            msg.push_str(&runs_stopped(&d.stopped));
            say(msg);
            warn_unconfirmed(&d.stopped);
            Ok(0)
        }
        Command::Audit(a) => audit(paths, a).await,
        Command::Dynamic(d) => dynamic::run(paths, *d).await,
        Command::Project(p) => project::run(paths, p).await,
        Command::Ci(c) => ci::run(paths, c).await,
        Command::Sweep(a) => sweep::run(paths, a).await,
        Command::Start(a) => background::start(paths, a).await,
        Command::Logs(a) => background::logs(paths, a).await,
        Command::Stop { run_id } => background::stop(paths, &run_id).await,
        Command::Factor(f) => factor_cmd(paths, f).await,
        Command::Policy(p) => policy_cmd(paths, p).await,
        Command::Daemon { .. } | Command::Mcp | Command::Demo | Command::Agent { .. } => Ok(0),
        Command::Setup { .. } | Command::Doctor { .. } => Ok(0),
        Command::Completions(_) | Command::Man(_) => Ok(0),
    }
}

/// The CLI's identity as a requester.
pub(crate) fn cli_client() -> ClientInfo {
    ClientInfo {
        kind: "cli".into(),
        name: "keyveil".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
    }
}

/// The requester's side of a run: its absolute working directory (`--cwd` or the current one)
/// and its own environment without keyveil's variables (the broker picks from it).
pub(crate) fn requester_context(cwd: Option<PathBuf>) -> Result<(String, Vec<(String, String)>)> {
    let cwd = match cwd {
        Some(c) => std::path::absolute(c).context("bad --cwd")?,
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let env = std::env::vars()
        .filter(|(k, _)| !k.starts_with("KEYVEIL_"))
        .collect();
    Ok((cwd.to_string_lossy().into_owned(), env))
}

/// Parses `90s`, `30m`, `8h`, `1d`, `1h30m` (jiff's friendly format) into seconds.
pub(crate) fn parse_duration(s: &str) -> Result<u64> {
    // Whole days (`7d`) are not a fixed-length unit for jiff; take them as 24 h.
    if let Some(days) = s.strip_suffix('d').and_then(|d| d.parse::<u64>().ok()) {
        if days == 0 {
            return Err(Exit {
                code: 2,
                message: format!("the duration {s:?} must be positive"),
            }
            .into());
        }
        return Ok(days.saturating_mul(86_400));
    }
    let d: jiff::SignedDuration = s.parse().map_err(|e| Exit {
        code: 2,
        message: format!(
            "cannot read the duration {s:?}: {e}\nhint: use forms like 90s, 30m, 8h, 1h30m"
        ),
    })?;
    let secs = d.as_secs();
    if secs <= 0 {
        return Err(Exit {
            code: 2,
            message: format!("the duration {s:?} must be positive"),
        }
        .into());
    }
    Ok(secs.unsigned_abs())
}

/// `keyveil status`'s lines for the variables whose value was found outside keyveil's custody
/// (none: nothing).
fn outside_custody(list: &[op::OutsideCustody]) -> String {
    use keyveil_proto::display::visible;
    list.iter()
        .map(|o| {
            format!(
                "\nwarning: the value of {} ({}) was in the strings of a request that held no values ({}): whoever wrote them holds it\nhint: rotate it: keyveil generate {} {}",
                visible(&o.variable),
                visible(&o.environment),
                crate::when::human_time(&o.found_at.to_string()),
                visible(&o.environment),
                visible(&o.variable)
            )
        })
        .collect()
}
