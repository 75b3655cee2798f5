//! The `keyveil` command line (DESIGN.md §4).
// Indexing here is on `serde_json::Value` (a missing key or index yields `Null`, never a
// panic), which clippy cannot tell from slice indexing.
#![allow(clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::authorize::{self, Authorized, FactorInput};
use crate::client::{self, Connection, Event};
use crate::paths::Paths;
use crate::protocol::{
    Charset, ClientInfo, ErrorCode, FACTOR_NEEDED, OutputMode, Passphrase, Reply, Request,
    RunRequest,
};

mod background;
mod dynamic;

/// keyveil: let AI coding agents use secrets without ever holding them.
#[derive(Debug, Parser)]
#[command(name = "keyveil", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the vault (passphrase from /dev/tty, or the first line of stdin).
    Init {
        /// Read the passphrase from the first line of stdin.
        #[arg(long)]
        passphrase_stdin: bool,
        /// Argon2id memory in KiB (at least 19456; default 65536).
        #[arg(long, hide = true)]
        kdf_memory_kib: Option<u32>,
    },
    /// Unlock the broker's vault (starts the broker if needed).
    Unlock {
        /// Read the passphrase from the first line of stdin.
        #[arg(long)]
        passphrase_stdin: bool,
    },
    /// Lock the vault: values leave memory, grants are revoked, runs are killed.
    Lock,
    /// Is the broker running? Locked? Pending requests?
    Status {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// The broker itself.
    Daemon {
        /// Run in the foreground (logs to stderr).
        #[arg(long)]
        foreground: bool,
        /// Internal: the broker proper, under its supervisor (see `supervise.rs`).
        #[arg(long, hide = true)]
        supervised: bool,
        /// Internal: read a bootstrap (init or unlock with the passphrase) as one JSON line on
        /// stdin and answer it on stdout; only the CLI that started this broker holds the pipe.
        #[arg(long, hide = true)]
        bootstrap_stdin: bool,
        #[command(subcommand)]
        action: Option<DaemonAction>,
    },
    /// Environments: named sets of variables.
    #[command(subcommand)]
    Env(EnvCommand),
    /// Store a value (from a hidden /dev/tty prompt, or stdin). Never from argv.
    Set {
        /// Environment.
        env: String,
        /// Variable name.
        var: String,
        /// Read the value from stdin (one trailing newline is removed).
        #[arg(long)]
        from_stdin: bool,
        /// Print a one-time link to a local page where you type the value in a browser.
        #[arg(long, conflicts_with = "from_stdin")]
        web: bool,
        /// Replacing a stored value needs your factor: asked at the terminal unless given here
        /// (with --from-stdin, --passphrase-stdin reads the passphrase from the first line and
        /// the value from the rest).
        #[command(flatten)]
        factor: FactorArgs,
    },
    /// Generate a random value inside the broker; it is never shown.
    Generate {
        /// Environment.
        env: String,
        /// Variable name.
        var: String,
        /// Length in characters.
        #[arg(long, default_value_t = 32)]
        length: usize,
        /// Alphabet.
        #[arg(long, value_enum, default_value_t = Charset::Alnum)]
        charset: Charset,
        /// Replacing a stored value needs your factor (asked at the terminal unless given).
        #[command(flatten)]
        factor: FactorArgs,
    },
    /// Delete a variable (one with a value needs your factor).
    Unset {
        /// Environment.
        env: String,
        /// Variable name.
        var: String,
        /// Your factor (asked at the terminal unless given).
        #[command(flatten)]
        factor: FactorArgs,
    },
    /// Run a command with an environment's values injected (waits for approval).
    Run(RunArgs),
    /// Pending requests.
    Requests {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Approve a request with your factor (the vault passphrase).
    Approve(ApproveArgs),
    /// Deny a request.
    Deny {
        /// Request id.
        id: u64,
        /// Reason given to the requester.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Live grants.
    Grants {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a grant (its runs are killed), or all grants.
    Revoke {
        /// Grant id.
        grant_id: Option<String>,
        /// Revoke every live grant.
        #[arg(long, conflicts_with = "grant_id")]
        all: bool,
    },
    /// Dynamic variables: a credential minted per grant at its source (PostgreSQL role, Redis
    /// ACL user, OpenBao lease) and destroyed when the grant ends, or OpenBao KV values.
    #[command(subcommand)]
    Dynamic(dynamic::DynamicCommand),
    /// The audit log.
    Audit(AuditArgs),
    /// Stdio MCP server for agent hosts.
    Mcp,
    /// Approval factors beyond the passphrase.
    #[command(subcommand)]
    Factor(FactorCommand),
    /// An environment's policy: factor, maximum TTL, PATH, auto-approve and deny rules.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The main job on a throwaway home, with its transcript.
    Demo,
    /// Write an agent host's MCP configuration for keyveil (keeps everything else; backs up).
    Setup {
        /// The host.
        #[arg(value_enum)]
        host: crate::setup::Host,
        /// Only print the entry and what would change; write nothing.
        #[arg(long)]
        print: bool,
        /// The project's file in the current directory instead of the user's.
        #[arg(long)]
        project: bool,
    },
    /// Check the set-up end to end and say how to fix each failure (exit 1 if any fails).
    Doctor,
    /// Start a long-running command (dev server, watcher) under a grant; prints its run id.
    Start(background::StartArgs),
    /// Redacted output of a background run.
    Logs(background::LogsArgs),
    /// Stop a background run (SIGTERM, SIGKILL after 2 s).
    Stop {
        /// Run id (`r-...`).
        run_id: String,
    },
    /// Run an agent host (e.g. `codex`) in a sandbox that cannot see the processes keyveil
    /// starts nor the vault file (Linux: user, PID and mount namespaces).
    Agent {
        /// Internal: a step inside the sandbox.
        #[arg(long, hide = true, value_enum)]
        stage: Option<crate::sandbox::Stage>,
        /// The agent host and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum FactorCommand {
    /// Enrol an authenticator app (RFC 6238 TOTP): shows an otpauth:// URI and a QR code, then
    /// asks for a first code.
    Enroll {
        /// Only `totp` exists.
        #[arg(value_parser = ["totp"])]
        kind: String,
        /// Read the passphrase from the first line of stdin.
        #[arg(long)]
        passphrase_stdin: bool,
        /// Do not ask for the first code now; finish later with `keyveil factor confirm CODE`.
        #[arg(long)]
        no_confirm: bool,
    },
    /// Finish an enrolment with the code the authenticator shows.
    Confirm {
        /// The 6-digit code.
        code: String,
    },
}

/// The factor given for a change that needs it. Never a factor on argv: every process of yours
/// can read `/proc/PID/cmdline`.
#[derive(Debug, Args)]
struct FactorArgs {
    /// Read the passphrase from the first line of stdin.
    #[arg(long, global = true)]
    passphrase_stdin: bool,
    /// Use a TOTP code instead of the passphrase: asked for on the terminal.
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "", value_name = "")]
    totp: Option<String>,
    /// Read a TOTP code from the first line of stdin.
    #[arg(long, global = true, conflicts_with = "passphrase_stdin")]
    totp_stdin: bool,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Show an environment's policy.
    Show {
        /// Environment.
        env: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Change an environment's policy (needs your factor).
    Set {
        /// Environment.
        env: String,
        #[command(subcommand)]
        change: PolicySetCommand,
        #[command(flatten)]
        factor: FactorArgs,
    },
}

#[derive(Debug, Subcommand)]
enum PolicySetCommand {
    /// Factor approvals need: passphrase, totp (TOTP or passphrase) or confirm (none: warned).
    Factor {
        /// passphrase | totp | confirm.
        #[arg(value_parser = ["passphrase", "totp", "confirm"])]
        factor: String,
    },
    /// Longest grant lifetime, e.g. 8h.
    MaxTtl {
        /// Duration.
        duration: String,
    },
    /// PATH of this environment's commands (`default` for the vault-wide one).
    Path {
        /// `:`-separated absolute directories, or `default`.
        path: String,
    },
    /// Add an auto-approve rule: this command, under this directory, gets grants of this TTL.
    AutoApprove {
        /// Directory (the command must run in it or below it).
        #[arg(long)]
        cwd: PathBuf,
        /// Lifetime of the grants, e.g. 8h.
        #[arg(long)]
        ttl: String,
        /// Longer commands starting with these arguments match too.
        #[arg(long)]
        prefix: bool,
        /// The command.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Remove auto-approve rule N (as `policy show` numbers them).
    AutoApproveRm {
        /// Index.
        index: usize,
    },
    /// Add a deny rule: this command is refused without asking.
    Deny {
        /// Longer commands starting with these arguments match too.
        #[arg(long)]
        prefix: bool,
        /// The command.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Remove deny rule N.
    DenyRm {
        /// Index.
        index: usize,
    },
    /// What to do when a run writes a value into a file: report, quarantine (move the file
    /// aside) or fail (the run exits 1).
    WriteLeaks {
        /// report | quarantine | fail.
        #[arg(value_parser = ["report", "quarantine", "fail"])]
        action: String,
    },
    /// Hide variable names from agents: every client sees aliases (`HIDDEN_...`); the real
    /// names reach only granted processes and `env show --reveal-names` (with your factor).
    HideNames {
        /// on | off.
        #[arg(value_parser = ["on", "off"])]
        setting: String,
    },
}

#[derive(Debug, Subcommand)]
enum DaemonAction {
    /// Stop the broker and its runs.
    Stop,
}

#[derive(Debug, Subcommand)]
enum EnvCommand {
    /// Create an environment.
    Create {
        /// Name.
        name: String,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List environments and their variable names.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show an environment's variables (names and metadata, never values).
    Show {
        /// Name.
        name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Where the policy hides names: show the real name behind each alias (needs your
        /// factor).
        #[arg(long)]
        reveal_names: bool,
        #[command(flatten)]
        factor: FactorArgs,
    },
    /// Remove an environment and its variables (with stored values: needs your factor).
    Rm {
        /// Name.
        name: String,
        /// Your factor (asked at the terminal unless given).
        #[command(flatten)]
        factor: FactorArgs,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
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
    /// Kill the command after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Seconds to wait for approval before giving up (exit 5).
    #[arg(long, default_value_t = 600)]
    wait: u64,
    /// Pass these variables of your environment through to the command (comma-separated;
    /// shown at approval). The command's environment is otherwise built from scratch.
    #[arg(long, value_delimiter = ',')]
    pass_env: Vec<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct ApproveArgs {
    /// Request id.
    id: Option<u64>,
    /// Read the passphrase from the first line of stdin.
    #[arg(long)]
    passphrase_stdin: bool,
    /// Approve with a TOTP code (where the environment's policy allows it): asked for on the
    /// terminal, never taken from the command line.
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "")]
    totp: Option<String>,
    /// Read the TOTP code from the first line of stdin.
    #[arg(long, conflicts_with = "passphrase_stdin")]
    totp_stdin: bool,
    /// Approve without a secret factor (only where the policy is `confirm`).
    #[arg(long, conflicts_with_all = ["totp", "passphrase_stdin", "totp_stdin"])]
    confirm: bool,
    /// Grant lifetime, e.g. `30m`, `8h` (default: one use within 15 minutes).
    #[arg(long)]
    ttl: Option<String>,
    /// Number of uses.
    #[arg(long)]
    uses: Option<u32>,
    /// Let the grant cover any command in the environment.
    #[arg(long)]
    any_command: bool,
    /// Also cover longer commands that start with the approved argv (token-wise; extra
    /// code-executing options such as `-c`, `--exec`, `--upload-pack` still ask again).
    #[arg(long)]
    prefix: bool,
    /// Also cover subdirectories of the approved working directory (canonical paths).
    #[arg(long)]
    subdirs: bool,
    /// Interactive approver on /dev/tty.
    #[arg(long)]
    watch: bool,
    /// The local web approval page: prints a one-time link (valid 5 minutes) and opens it in
    /// the browser when a desktop session is there.
    #[arg(long, conflicts_with_all = ["id", "watch"])]
    web: bool,
    /// With `--web`: only print the link, never open a browser.
    #[arg(long, requires = "web")]
    print: bool,
}

#[derive(Debug, Args)]
struct AuditArgs {
    #[command(subcommand)]
    action: Option<AuditAction>,
    /// JSON lines output.
    #[arg(long)]
    json: bool,
    /// Keep printing new entries.
    #[arg(long)]
    follow: bool,
    /// Last N entries.
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

#[derive(Debug, Subcommand)]
enum AuditAction {
    /// Check the MAC chain of the whole log.
    Verify,
}

/// An error that carries its exit code.
#[derive(Debug)]
pub struct Exit {
    /// Exit code.
    pub code: i32,
    /// Message (may end with `hint:` lines).
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Writes a line to stdout (the one place the CLI prints results).
pub fn say(s: impl AsRef<str>) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{}", s.as_ref());
}

/// Writes a line to stderr.
pub fn note(s: impl AsRef<str>) {
    let mut o = std::io::stderr().lock();
    let _ = writeln!(o, "{}", s.as_ref());
}

/// Turns a broker reply into data or an [`Exit`] error.
pub fn expect_ok(reply: Reply) -> Result<Value> {
    match reply {
        Reply::Ok { data } => Ok(data),
        Reply::Error {
            code,
            message,
            hint,
        } => Err(Exit {
            code: code.exit_code(),
            message: match hint {
                Some(h) => format!("{message}\nhint: {h}"),
                None => message,
            },
        }
        .into()),
        other => bail!("unexpected reply from the broker: {}", kind_of(&other)),
    }
}

fn kind_of(r: &Reply) -> &'static str {
    match r {
        Reply::Ok { .. } => "ok",
        Reply::Error { .. } => "error",
        Reply::Pending { .. } => "pending",
        Reply::Started { .. } => "started",
        Reply::Exit(_) => "exit",
    }
}

/// What a `revoke` or `lock` reply says about the runs it stopped, as a clause ("" if none):
/// only what the broker confirmed.
fn runs_stopped(d: &serde_json::Value) -> String {
    let runs = d["runs_stopped"].as_u64().unwrap_or(0);
    if runs == 0 {
        return String::new();
    }
    let killed = d["processes_killed"].as_u64().unwrap_or(0);
    format!(
        "; stopped {runs} {} ({killed} {} killed)",
        if runs == 1 { "run" } else { "runs" },
        if killed == 1 { "process" } else { "processes" }
    )
}

/// Warns when the broker could not confirm that every process of a stopped run is gone.
fn warn_unconfirmed(d: &serde_json::Value) {
    let n = d["runs_unconfirmed"].as_u64().unwrap_or(0);
    if n > 0 {
        note(format!(
            "warning: for {n} stopped {} the broker could not confirm that every process is gone (a process could not be killed, or the run's reaper was killed first; the supervisor was asked to kill what is left)\nhint: see broker.log; `keyveil daemon stop` kills everything started under a grant",
            if n == 1 { "run" } else { "runs" }
        ));
    }
}

/// Runs the CLI; returns the process exit code.
pub fn main(cli: Cli) -> Result<i32> {
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
                    block_on(async {
                        crate::broker::serve(paths, bootstrap_stdin).await?;
                        Ok(0)
                    })
                }
                (None, false) => block_on(async {
                    let r = client::call(&paths, &Request::Status).await?;
                    let d = expect_ok(r)?;
                    say(format!("broker running (pid {})", d["pid"]));
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
        } => crate::setup::setup_main(host, print, project),
        Command::Doctor => {
            crate::logging::init_cli();
            crate::setup::doctor_main()
        }
        Command::Agent { stage, command } => crate::sandbox::main(stage, command),
        other => {
            crate::logging::init_cli();
            let paths = Paths::resolve()?;
            block_on(dispatch(&paths, other))
        }
    }
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
            say("no broker is running");
            Ok(0)
        }
        Some(mut c) => {
            c.send(&Request::Shutdown).await?;
            expect_ok(c.final_reply().await?)?;
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

async fn call(paths: &Paths, req: Request) -> Result<Value> {
    expect_ok(client::call(paths, &req).await?)
}

/// Refuses a factor on the command line: `/proc/PID/cmdline` is readable by every process of
/// the user, and an agent polling it spends the code first.
fn refuse_argv_factor(totp: Option<&String>) -> Result<()> {
    if totp.is_some_and(|c| !c.is_empty()) {
        return Err(Exit {
            code: 2,
            message: "a TOTP code on the command line is readable by every process of yours (/proc/PID/cmdline), and an agent can spend it before keyveil does; it was not used\nhint: `--totp` alone asks for the code on the terminal; `--totp-stdin` reads it from standard input".into(),
        }
        .into());
    }
    Ok(())
}

/// The factor the human chose: a TOTP code (`--totp`: asked on the terminal; `--totp-stdin`),
/// or the passphrase (`--passphrase-stdin`, or asked on the terminal with `prompt`).
fn factor_input(
    passphrase_stdin: bool,
    totp: Option<&String>,
    totp_stdin: bool,
    prompt: &str,
) -> Result<FactorInput> {
    refuse_argv_factor(totp)?;
    if totp_stdin {
        return Ok(FactorInput::Totp(read_secret_line(true, "")?));
    }
    if totp.is_some() {
        return Ok(FactorInput::Totp(read_secret_line(false, "TOTP code: ")?));
    }
    Ok(FactorInput::Passphrase(read_secret_line(
        passphrase_stdin,
        prompt,
    )?))
}

/// The factor given up front for a change that may need it (`--totp`, `--totp-stdin`, or
/// `--passphrase-stdin` when stdin is free); `None` when none was given.
fn factor_from_args(f: &FactorArgs, stdin_is_free: bool) -> Result<Option<FactorInput>> {
    refuse_argv_factor(f.totp.as_ref())?;
    if f.totp.is_some() || (f.totp_stdin && stdin_is_free) {
        return factor_input(false, f.totp.as_ref(), f.totp_stdin, "").map(Some);
    }
    if f.passphrase_stdin && stdin_is_free {
        return Ok(Some(FactorInput::Passphrase(read_secret_line(true, "")?)));
    }
    Ok(None)
}

/// Sends a change that may replace or remove stored values. With a factor, the broker is
/// authenticated first and the request is signed (`authorize.rs`); `make` gets the
/// authorisation so it can seal what travels with it. When the broker answers that the change
/// needs the factor ([`FACTOR_NEEDED`]) and none was given, asks for the passphrase at the
/// terminal (`/dev/tty`, never stdin) and sends the change once more, signed.
pub(crate) async fn call_guarded(
    paths: &Paths,
    given: Option<FactorInput>,
    make: impl Fn(Option<&Authorized>) -> Result<Request>,
) -> Result<Value> {
    if let Some(input) = given {
        return signed(paths, &input, &make).await;
    }
    let reply = client::call(paths, &make(None)?).await?;
    if let Reply::Error {
        code: ErrorCode::Denied,
        message,
        ..
    } = &reply
        && message.starts_with(FACTOR_NEEDED)
    {
        note(message);
        let passphrase = rpassword::prompt_password("Vault passphrase to confirm: ")
            .map(Passphrase::new)
            .map_err(|e| Exit {
                code: 2,
                message: format!(
                    "cannot ask for your passphrase: no terminal ({e})\nhint: add `--passphrase-stdin` or `--totp-stdin` (with `set --from-stdin`: the passphrase or code on the first line, the value after it)"
                ),
            })?;
        return signed(paths, &FactorInput::Passphrase(passphrase), &make).await;
    }
    expect_ok(reply)
}

/// Authenticates the broker with `input`, builds the request, signs it and sends it.
async fn signed(
    paths: &Paths,
    input: &FactorInput,
    make: &impl Fn(Option<&Authorized>) -> Result<Request>,
) -> Result<Value> {
    let a = authorize::authorize(paths, input)
        .await
        .map_err(auth_exit)?;
    let mut req = make(Some(&a))?;
    a.sign(&mut req);
    expect_ok(client::call(paths, &req).await?)
}

/// A refused factor exits 3 (denied) with its message; anything else stays an error.
fn auth_exit(e: anyhow::Error) -> anyhow::Error {
    match e.downcast_ref::<authorize::AuthError>() {
        Some(a) => Exit {
            code: 3,
            message: a.to_string(),
        }
        .into(),
        None => e,
    }
}

/// Signs `req` with the factor and sends it.
async fn call_signed(paths: &Paths, input: &FactorInput, req: Request) -> Result<Value> {
    signed(paths, input, &|_| {
        Ok(match &req {
            Request::EnvReveal { name, .. } => Request::EnvReveal {
                name: name.clone(),
                factor: None,
            },
            Request::PolicySet {
                environment,
                change,
                ..
            } => Request::PolicySet {
                environment: environment.clone(),
                factor: None,
                change: change.clone(),
            },
            Request::Approve {
                request_id,
                card,
                confirm,
                ttl_seconds,
                uses,
                any_command,
                prefix,
                subdirs,
                ..
            } => Request::Approve {
                request_id: *request_id,
                card: card.clone(),
                factor: None,
                confirm: *confirm,
                ttl_seconds: *ttl_seconds,
                uses: *uses,
                any_command: *any_command,
                prefix: *prefix,
                subdirs: *subdirs,
            },
            Request::FactorEnroll { .. } => Request::FactorEnroll { factor: None },
            _ => bail!("this request takes no factor"),
        })
    })
    .await
}

fn read_secret_line(from_stdin: bool, prompt: &str) -> Result<Passphrase> {
    // From here on this process holds a factor: no ptrace, no /proc/PID/mem, no core file.
    crate::harden::harden_cli();
    if from_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_line(&mut s)
            .context("cannot read stdin")?;
        let trimmed = s.trim_end_matches(['\n', '\r']).to_owned();
        zeroize::Zeroize::zeroize(&mut s);
        if trimmed.is_empty() {
            return Err(Exit {
                code: 2,
                message: "nothing was read from stdin (empty first line)\nhint: pipe the passphrase in, e.g. from your password manager, or drop --passphrase-stdin to be prompted".into(),
            }
            .into());
        }
        return Ok(Passphrase::new(trimmed));
    }
    rpassword::prompt_password(prompt).map(Passphrase::new).map_err(|e| {
        Exit {
            code: 2,
            message: format!("cannot read from the terminal: {e}\nhint: use --passphrase-stdin (`keyveil set` takes --from-stdin) to read it from standard input"),
        }
        .into()
    })
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
            let p = read_secret_line(passphrase_stdin, "New vault passphrase: ")?;
            if !passphrase_stdin {
                let again = read_secret_line(false, "Repeat passphrase: ")?;
                if again.expose() != p.expose() {
                    return Err(Exit {
                        code: 2,
                        message: "the passphrases differ; nothing was created".into(),
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
            let already = authorize::unlock(paths, p).await.map_err(auth_exit)?;
            say(if already {
                "the broker is already unlocked"
            } else {
                "unlocked"
            });
            Ok(0)
        }
        Command::Lock => {
            match Connection::open_existing(paths).await {
                None => say("no broker is running (nothing is unlocked)"),
                Some(mut c) => {
                    c.send(&Request::Lock).await?;
                    let d = expect_ok(c.final_reply().await?)?;
                    say(format!("locked{}", runs_stopped(&d)));
                    warn_unconfirmed(&d);
                }
            }
            Ok(0)
        }
        Command::Status { json } => {
            let d = match Connection::open_existing(paths).await {
                None => serde_json::json!({
                    "running": false,
                    "home": paths.home,
                    "socket": paths.socket(),
                    "vault_exists": paths.vault().exists(),
                }),
                Some(mut c) => {
                    c.send(&Request::Status).await?;
                    expect_ok(c.final_reply().await?)?
                }
            };
            if json {
                say(d.to_string());
            } else if d["running"] == true {
                say(format!(
                    "broker: running (pid {})\nvault: {}\nsocket: {}\npending requests: {}\nlive grants: {}",
                    d["pid"],
                    if d["locked"] == true {
                        "locked"
                    } else {
                        "unlocked"
                    },
                    d["socket"].as_str().unwrap_or(""),
                    d["pending_requests"],
                    d["live_grants"]
                ));
            } else {
                say(format!(
                    "broker: not running\nvault: {}\nhint: any keyveil command starts it; `keyveil unlock` to unlock",
                    if d["vault_exists"] == true {
                        "exists"
                    } else {
                        "none (run `keyveil init`)"
                    }
                ));
            }
            Ok(0)
        }
        Command::Env(e) => env(paths, e).await,
        Command::Set { env, var, web, .. } if web => background::set_web(paths, &env, &var).await,
        Command::Set {
            env,
            var,
            from_stdin,
            factor,
            ..
        } => {
            let mut given = factor_from_args(&factor, !from_stdin)?;
            let value = if from_stdin {
                let mut buf = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .context("cannot read stdin")?;
                if factor.passphrase_stdin || factor.totp_stdin {
                    // First line: the passphrase (or TOTP code); the rest: the value.
                    let cut = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
                    let line: Vec<u8> = buf.drain(..cut.saturating_add(1).min(buf.len())).collect();
                    let first = Passphrase::new(
                        String::from_utf8_lossy(&line)
                            .trim_end_matches(['\n', '\r'])
                            .to_owned(),
                    );
                    given = Some(if factor.totp_stdin {
                        FactorInput::Totp(first)
                    } else {
                        FactorInput::Passphrase(first)
                    });
                }
                if buf.ends_with(b"\n") {
                    buf.pop();
                    if buf.ends_with(b"\r") {
                        buf.pop();
                    }
                }
                let s = String::from_utf8(buf).map_err(|_| Exit {
                    code: 2,
                    message: "the value is not valid UTF-8; nothing was stored".into(),
                })?;
                Passphrase::new(s)
            } else {
                read_secret_line(false, &format!("Value for {env}/{var} (hidden): "))?
            };
            let aad = format!("{env}/{var}");
            let d = call_guarded(paths, given, |auth| {
                Ok(match auth {
                    None => Request::VarSet {
                        environment: env.clone(),
                        name: var.clone(),
                        value: Some(value.clone()),
                        sealed_value: None,
                        factor: None,
                    },
                    // With a factor the value travels sealed for the broker that proved itself.
                    Some(a) => Request::VarSet {
                        environment: env.clone(),
                        name: var.clone(),
                        value: None,
                        sealed_value: Some(a.seal(aad.as_bytes(), value.expose().as_bytes())?),
                        factor: None,
                    },
                })
            })
            .await?;
            if d["short_value"] == true {
                note(format!(
                    "warning: the value of {var} is shorter than 8 bytes: it is redacted only where it stands as a whole token\nhint: prefer long random values (`keyveil generate {env} {var}`)"
                ));
            }
            say(format!(
                "{} {env}/{var}",
                if d["replaced"] == true {
                    "updated"
                } else {
                    "stored"
                }
            ));
            Ok(0)
        }
        Command::Generate {
            env,
            var,
            length,
            charset,
            factor,
        } => {
            let given = factor_from_args(&factor, true)?;
            call_guarded(paths, given, |_| {
                Ok(Request::VarGenerate {
                    environment: env.clone(),
                    name: var.clone(),
                    length,
                    charset,
                    factor: None,
                })
            })
            .await?;
            say(format!(
                "generated {env}/{var} ({length} characters, never shown)"
            ));
            Ok(0)
        }
        Command::Unset { env, var, factor } => {
            let given = factor_from_args(&factor, true)?;
            call_guarded(paths, given, |_| {
                Ok(Request::VarUnset {
                    environment: env.clone(),
                    name: var.clone(),
                    factor: None,
                })
            })
            .await?;
            say(format!("removed {env}/{var}"));
            Ok(0)
        }
        Command::Run(a) => run(paths, a).await,
        Command::Requests { json } => {
            let d = call(paths, Request::Requests).await?;
            let list = d["requests"].as_array().cloned().unwrap_or_default();
            if json {
                say(Value::Array(list).to_string());
            } else if list.is_empty() {
                say("no pending requests");
            } else {
                for r in &list {
                    say(crate::card::render(r));
                }
            }
            Ok(0)
        }
        Command::Approve(a) => approve(paths, a).await,
        Command::Deny { id, reason } => {
            call(
                paths,
                Request::Deny {
                    request_id: id,
                    reason,
                },
            )
            .await?;
            say(format!("denied request #{id}"));
            Ok(0)
        }
        Command::Grants { json } => {
            let d = call(paths, Request::Grants { client: None }).await?;
            let list = d["grants"].as_array().cloned().unwrap_or_default();
            if json {
                say(Value::Array(list).to_string());
            } else if list.is_empty() {
                say("no live grants");
            } else {
                for g in &list {
                    say(format!(
                        "{}  env={}  vars={}  command={}  client={}  expires={}  uses_left={}",
                        g["id"].as_str().unwrap_or(""),
                        g["environment"].as_str().unwrap_or(""),
                        join(&g["variables"]),
                        if g["argv"].is_null() {
                            "ANY".to_owned()
                        } else {
                            crate::card::argv_inline(&g["argv"])
                        },
                        g["client"].as_str().unwrap_or(""),
                        g["expires_at"].as_str().unwrap_or(""),
                        if g["uses_left"].is_null() {
                            "unlimited".to_owned()
                        } else {
                            g["uses_left"].to_string()
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
            let d = call(
                paths,
                Request::Revoke {
                    grant_id,
                    all,
                    client: None,
                },
            )
            .await?;
            let (n, ended) = (
                d["count"].as_u64().unwrap_or(0),
                d["already_ended"].as_u64().unwrap_or(0),
            );
            let noun = if n == 1 { "grant" } else { "grants" };
            let mut msg = format!("revoked {n} {noun}");
            if ended > 0 {
                msg.push_str(&format!(" ({ended} had already ended: used up or expired)"));
            }
            msg.push_str(&runs_stopped(&d));
            say(msg);
            warn_unconfirmed(&d);
            Ok(0)
        }
        Command::Audit(a) => audit(paths, a).await,
        Command::Dynamic(d) => dynamic::run(paths, d).await,
        Command::Start(a) => background::start(paths, a).await,
        Command::Logs(a) => background::logs(paths, a).await,
        Command::Stop { run_id } => background::stop(paths, &run_id).await,
        Command::Factor(f) => factor_cmd(paths, f).await,
        Command::Policy(p) => policy_cmd(paths, p).await,
        Command::Daemon { .. } | Command::Mcp | Command::Demo | Command::Agent { .. } => Ok(0),
        Command::Setup { .. } | Command::Doctor => Ok(0),
    }
}

fn join(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

async fn env(paths: &Paths, e: EnvCommand) -> Result<i32> {
    match e {
        EnvCommand::Create { name, description } => {
            call(
                paths,
                Request::EnvCreate {
                    name: name.clone(),
                    description,
                },
            )
            .await?;
            say(format!("created environment {name}"));
        }
        EnvCommand::List { json } => {
            let d = call(paths, Request::EnvList).await?;
            if json {
                say(d["environments"].to_string());
            } else {
                let list = d["environments"].as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    say("no environments (create one with `keyveil env create NAME`)");
                }
                for e in list {
                    say(format!(
                        "{}  [{}]  {}",
                        e["name"].as_str().unwrap_or(""),
                        join(&e["variables"]),
                        e["description"].as_str().unwrap_or("")
                    ));
                }
            }
        }
        EnvCommand::Show {
            name,
            json,
            reveal_names: true,
            factor,
        } => {
            let input = factor_input(
                factor.passphrase_stdin,
                factor.totp.as_ref(),
                factor.totp_stdin,
                "Vault passphrase to reveal hidden names: ",
            )?;
            let d = call_signed(paths, &input, Request::EnvReveal { name, factor: None }).await?;
            if json {
                say(d.to_string());
            } else {
                if d["hide_names"] != true {
                    note(
                        "note: this environment does not hide its names; agents see them as they are",
                    );
                }
                for v in d["names"].as_array().cloned().unwrap_or_default() {
                    say(format!(
                        "  {:<20} {:<24} {}",
                        v["alias"].as_str().unwrap_or(""),
                        crate::display::visible(v["real_name"].as_str().unwrap_or("")),
                        crate::display::visible(v["description"].as_str().unwrap_or(""))
                    ));
                }
            }
        }
        EnvCommand::Show { name, json, .. } => {
            let d = call(paths, Request::EnvShow { name }).await?;
            if json {
                say(d.to_string());
            } else {
                say(format!(
                    "{}: {}",
                    d["name"].as_str().unwrap_or(""),
                    d["description"].as_str().unwrap_or("")
                ));
                for v in d["variables"].as_array().cloned().unwrap_or_default() {
                    say(format!(
                        "  {:<24} {:<9} {:<10} {}",
                        v["name"].as_str().unwrap_or(""),
                        v["source"].as_str().unwrap_or(""),
                        if v["set"] == true { "set" } else { "awaiting" },
                        v["description"].as_str().unwrap_or("")
                    ));
                }
            }
        }
        EnvCommand::Rm { name, factor } => {
            let given = factor_from_args(&factor, true)?;
            call_guarded(paths, given, |_| {
                Ok(Request::EnvRemove {
                    name: name.clone(),
                    factor: None,
                })
            })
            .await?;
            say(format!("removed environment {name}"));
        }
    }
    Ok(0)
}

/// The CLI's identity as a requester.
pub fn cli_client() -> ClientInfo {
    ClientInfo {
        kind: "cli".into(),
        name: "keyveil".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
    }
}

/// The requester's side of a run: its absolute working directory (`--cwd` or the current one)
/// and its own environment without keyveil's variables (the broker picks from it).
pub fn requester_context(cwd: Option<PathBuf>) -> Result<(String, Vec<(String, String)>)> {
    let cwd = match cwd {
        Some(c) => std::path::absolute(c).context("bad --cwd")?,
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let env = std::env::vars()
        .filter(|(k, _)| !k.starts_with("KEYVEIL_"))
        .collect();
    Ok((cwd.to_string_lossy().into_owned(), env))
}

async fn run(paths: &Paths, a: RunArgs) -> Result<i32> {
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
    c.send(&Request::Run(req)).await?;
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
                    return Ok(EXIT_BROKEN_PIPE);
                }
            }
            Event::Stderr(b) => {
                if err.write_all(&b)? == Written::ReaderGone {
                    return Ok(EXIT_BROKEN_PIPE);
                }
            }
            Event::Reply(Reply::Pending {
                request_id,
                is_final,
                ..
            }) => {
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
                for l in &r.write_leaks {
                    note(format!(
                        "keyveil: warning: the command wrote the value of {} into {} ({}; {})",
                        crate::display::visible(&l.variable),
                        crate::display::visible(&l.path),
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
                return Ok(r.exit_code);
            }
            Event::Reply(other) => {
                expect_ok(other)?;
            }
        }
    }
    bail!("the broker closed the connection before the command finished")
}

/// The CLI's own stdout or stderr, written without buffering through a duplicate of the
/// descriptor (opened on the first write, so a run that prints nothing never touches it).
struct RawOutput {
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
enum Written {
    /// Written.
    Done,
    /// Dropped: the descriptor is closed.
    Discarded,
    /// The reader closed its end of the pipe (`EPIPE`).
    ReaderGone,
}

/// Exit status of a run whose output reader went away (`keyveil run ... | head -1`): the
/// conventional 128 + SIGPIPE of a process killed by the broken pipe, with no message.
const EXIT_BROKEN_PIPE: i32 = 141;

fn is_ebadf(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::BADF.raw_os_error())
}

async fn approve(paths: &Paths, a: ApproveArgs) -> Result<i32> {
    if a.watch {
        return watch(paths).await;
    }
    if a.web {
        return approve_web(paths, a.print).await;
    }
    let Some(id) = a.id else {
        return Err(Exit {
            code: 2,
            message:
                "name the request to approve\nhint: list pending requests with `keyveil requests`"
                    .into(),
        }
        .into());
    };
    let ttl_seconds = match &a.ttl {
        None => None,
        Some(t) => Some(parse_duration(t)?),
    };
    refuse_argv_factor(a.totp.as_ref())?;
    // A factor piped in is read first (a script); one typed at the terminal only after the card.
    let ask = |a: &ApproveArgs| {
        factor_input(
            a.passphrase_stdin,
            a.totp.as_ref(),
            a.totp_stdin,
            "Vault passphrase to approve: ",
        )
    };
    let mut input = if !a.confirm && (a.passphrase_stdin || a.totp_stdin) {
        Some(ask(&a)?)
    } else {
        None
    };
    // Show the human what they approve before asking for the factor; the approval is bound to
    // this card's digest, so what the broker grants is what was shown here.
    let d = call(paths, Request::Requests).await?;
    let Some(card) = d["requests"]
        .as_array()
        .and_then(|l| l.iter().find(|r| r["id"] == id))
        .cloned()
    else {
        return Err(Exit {
            code: 1,
            message: format!(
                "no pending request #{id}\nhint: list pending requests with `keyveil requests`"
            ),
        }
        .into());
    };
    note(crate::card::render(&card));
    let req = Request::Approve {
        request_id: id,
        card: crate::factor_proof::card_digest(&card),
        factor: None,
        confirm: a.confirm,
        ttl_seconds,
        uses: a.uses,
        any_command: a.any_command,
        prefix: a.prefix,
        subdirs: a.subdirs,
    };
    let d = if a.confirm {
        call(paths, req).await?
    } else {
        let input = match input.take() {
            Some(i) => i,
            None => ask(&a)?,
        };
        call_signed(paths, &input, req).await?
    };
    say(format!(
        "approved request #{id}: grant {} until {} ({})",
        d["grant_id"].as_str().unwrap_or(""),
        d["expires_at"].as_str().unwrap_or(""),
        if d["uses_left"].is_null() {
            "unlimited uses".to_owned()
        } else {
            format!("{} use(s)", d["uses_left"])
        }
    ));
    Ok(0)
}

/// `approve --web`: asks the broker for a one-time link to its approval page; prints it, or
/// opens it with `xdg-open` when there is a desktop session (and `--print` is not given).
async fn approve_web(paths: &Paths, print_only: bool) -> Result<i32> {
    let d = call(paths, Request::WebUrl).await?;
    let Some(url) = d.get("url").and_then(serde_json::Value::as_str) else {
        bail!("the broker sent no approval-page link");
    };
    let desktop = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
    if !print_only && desktop {
        let opened = std::process::Command::new("xdg-open")
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if opened.is_ok() {
            note("opened the approval page in your browser (the link works once, for 5 minutes)");
            note(
                "hint: if no browser appeared, run `keyveil approve --web --print` and open that link",
            );
            return Ok(0);
        }
    }
    say(url);
    note(
        "open this link in your browser: it works once, for 5 minutes; approving still needs your passphrase",
    );
    Ok(0)
}

/// Parses `90s`, `30m`, `8h`, `1d`, `1h30m` (jiff's friendly format) into seconds.
pub fn parse_duration(s: &str) -> Result<u64> {
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

async fn audit(paths: &Paths, a: AuditArgs) -> Result<i32> {
    if let Some(AuditAction::Verify) = a.action {
        let d = call(paths, Request::AuditVerify).await?;
        say(format!(
            "audit log OK: {} entries, chain and MACs verified",
            d["entries"]
        ));
        return Ok(0);
    }
    let mut last_seq = 0u64;
    loop {
        let d = call(
            paths,
            Request::Audit {
                limit: Some(a.limit),
            },
        )
        .await?;
        for e in d["entries"].as_array().cloned().unwrap_or_default() {
            let seq = e["seq"].as_u64().unwrap_or(0);
            if seq <= last_seq {
                continue;
            }
            last_seq = seq;
            if a.json {
                say(e.to_string());
            } else {
                say(crate::card::audit_line(&e));
            }
        }
        if !a.follow {
            return Ok(0);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// `keyveil approve --watch`: a live approver that reads answers and the factor from
/// `/dev/tty` only, never from stdin (an agent that controls our stdin cannot answer).
async fn watch(paths: &Paths) -> Result<i32> {
    use std::io::BufRead;
    let tty_in = std::fs::File::open("/dev/tty").map_err(|e| Exit {
        code: 2,
        message: format!("`keyveil approve --watch` needs a terminal: cannot open /dev/tty: {e}\nhint: approve from a terminal with `keyveil approve ID`"),
    })?;
    let mut tty_out = std::fs::OpenOptions::new().write(true).open("/dev/tty")?;
    let mut lines = std::io::BufReader::new(tty_in).lines();
    let mut seen = std::collections::BTreeSet::new();
    let _ = writeln!(tty_out, "keyveil: watching for requests (Ctrl-C to stop)");
    loop {
        let d = call(paths, Request::Requests).await?;
        for r in d["requests"].as_array().cloned().unwrap_or_default() {
            let Some(id) = r["id"].as_u64() else { continue };
            if !seen.insert(id) {
                continue;
            }
            let _ = writeln!(tty_out, "\n{}", crate::card::render(&r));
            let _ = write!(
                tty_out,
                "[a]pprove once, approve for [t]30 minutes, [d]eny, [s]kip? "
            );
            let _ = tty_out.flush();
            let answer = tokio::task::block_in_place(|| lines.next())
                .transpose()?
                .unwrap_or_default();
            let (ttl, deny) = match answer.trim() {
                "a" | "A" => (None, false),
                "t" | "T" => (Some(1800), false),
                "d" | "D" => (None, true),
                _ => {
                    let _ = writeln!(tty_out, "skipped #{id}");
                    continue;
                }
            };
            let outcome = if deny {
                call(
                    paths,
                    Request::Deny {
                        request_id: id,
                        reason: Some("denied at the terminal".into()),
                    },
                )
                .await
                .map(|_| format!("denied #{id}"))
            } else {
                let p =
                    tokio::task::block_in_place(|| read_secret_line(false, "Vault passphrase: "))?;
                call_signed(
                    paths,
                    &FactorInput::Passphrase(p),
                    Request::Approve {
                        request_id: id,
                        card: crate::factor_proof::card_digest(&r),
                        factor: None,
                        confirm: false,
                        ttl_seconds: ttl,
                        uses: None,
                        any_command: false,
                        prefix: false,
                        subdirs: false,
                    },
                )
                .await
                .map(|d| {
                    format!(
                        "approved #{id}: grant {}",
                        d["grant_id"].as_str().unwrap_or("")
                    )
                })
            };
            match outcome {
                Ok(m) => {
                    let _ = writeln!(tty_out, "{m}");
                }
                Err(e) => {
                    let _ = writeln!(tty_out, "error: {e}");
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

async fn factor_cmd(paths: &Paths, f: FactorCommand) -> Result<i32> {
    match f {
        FactorCommand::Enroll {
            passphrase_stdin,
            no_confirm,
            ..
        } => {
            let p = read_secret_line(passphrase_stdin, "Vault passphrase: ")?;
            // The seed comes back sealed under the factor key: only this process can read it.
            let a = authorize::authorize(paths, &FactorInput::Passphrase(p))
                .await
                .map_err(auth_exit)?;
            let mut req = Request::FactorEnroll { factor: None };
            a.sign(&mut req);
            let d = expect_ok(client::call(paths, &req).await?)?;
            let open = |k: &str| -> Result<String> {
                let sealed = d[k].as_str().unwrap_or_default();
                let bytes = a.open(b"factor_enroll", sealed).context(
                    "the enrolment reply did not come sealed from the broker that proved itself; nothing was enrolled",
                )?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            };
            say(open("sealed_qr")?);
            say(format!(
                "Scan the QR code, or add this URI to your authenticator app:\n{}",
                open("sealed_uri")?
            ));
            if no_confirm {
                say("then finish with: keyveil factor confirm CODE");
                return Ok(0);
            }
            let code = read_secret_line(false, "Code shown by the app: ")?;
            call(
                paths,
                Request::FactorConfirm {
                    code: code.expose().to_owned(),
                },
            )
            .await?;
            say(
                "TOTP enrolled: approve with `keyveil approve ID --totp` (the code is asked for) where the policy allows it",
            );
            Ok(0)
        }
        FactorCommand::Confirm { code } => {
            call(paths, Request::FactorConfirm { code }).await?;
            say("TOTP enrolled");
            Ok(0)
        }
    }
}

async fn policy_cmd(paths: &Paths, p: PolicyCommand) -> Result<i32> {
    use crate::protocol::PolicyChange;
    match p {
        PolicyCommand::Show { env, json } => {
            let d = call(paths, Request::PolicyShow { environment: env }).await?;
            if json {
                say(d.to_string());
            } else {
                let pol = &d["policy"];
                say(format!(
                    "environment: {}\nfactor: {}\nmax TTL: {} s\nPATH: {}\nTOTP enrolled: {}\nhide names: {}",
                    crate::display::visible(d["environment"].as_str().unwrap_or("")),
                    pol["factor"].as_str().unwrap_or(""),
                    pol["max_ttl_seconds"],
                    crate::display::visible(d["effective_path"].as_str().unwrap_or("")),
                    d["totp_enrolled"],
                    if pol["hide_names"] == true {
                        "on"
                    } else {
                        "off"
                    }
                ));
                for (i, r) in pol["auto_approve"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                {
                    say(format!(
                        "auto-approve #{i}: {}{} under {} for {} s",
                        crate::card::argv_inline(&r["argv"]),
                        if r["prefix"] == true { " …" } else { "" },
                        crate::display::visible(r["cwd"].as_str().unwrap_or("")),
                        r["ttl_seconds"]
                    ));
                }
                for (i, r) in pol["deny"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                {
                    say(format!(
                        "deny #{i}: {}{}",
                        crate::card::argv_inline(&r["argv"]),
                        if r["prefix"] == true { " …" } else { "" }
                    ));
                }
            }
            Ok(0)
        }
        PolicyCommand::Set {
            env,
            change,
            factor,
        } => {
            let change = match change {
                PolicySetCommand::Factor { factor } => PolicyChange::Factor { factor },
                PolicySetCommand::MaxTtl { duration } => PolicyChange::MaxTtl {
                    seconds: parse_duration(&duration)?,
                },
                PolicySetCommand::Path { path } => PolicyChange::Path {
                    path: (path != "default").then_some(path),
                },
                PolicySetCommand::AutoApprove {
                    cwd,
                    ttl,
                    prefix,
                    command,
                } => PolicyChange::AutoApproveAdd {
                    argv: command,
                    prefix,
                    cwd: std::path::absolute(cwd)
                        .context("bad --cwd")?
                        .to_string_lossy()
                        .into_owned(),
                    ttl_seconds: parse_duration(&ttl)?,
                },
                PolicySetCommand::AutoApproveRm { index } => {
                    PolicyChange::AutoApproveRemove { index }
                }
                PolicySetCommand::Deny { prefix, command } => PolicyChange::DenyAdd {
                    argv: command,
                    prefix,
                },
                PolicySetCommand::DenyRm { index } => PolicyChange::DenyRemove { index },
                PolicySetCommand::WriteLeaks { action } => PolicyChange::WriteLeaks { action },
                PolicySetCommand::HideNames { setting } => PolicyChange::HideNames {
                    hide: setting == "on",
                },
            };
            let input = factor_input(
                factor.passphrase_stdin,
                factor.totp.as_ref(),
                factor.totp_stdin,
                "Vault passphrase to change policy: ",
            )?;
            let d = call_signed(
                paths,
                &input,
                Request::PolicySet {
                    environment: env.clone(),
                    factor: None,
                    change,
                },
            )
            .await?;
            if let Some(w) = d["warning"].as_str() {
                note(format!("warning: {w}"));
            }
            say(format!("policy of {env} updated"));
            Ok(0)
        }
    }
}
