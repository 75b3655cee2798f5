//! The command line's clap definitions: every command, subcommand and flag, and nothing
//! else (what they do is in the sibling modules).
#![allow(clippy::indexing_slicing)]

use super::*;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    #[command(
        subcommand,
        after_help = "Examples:
  keyveil env create demo --description \"local dev\"
  keyveil env list
  keyveil env show demo                  # names and metadata, never values
  keyveil env rm demo                    # asks your passphrase when values are stored"
    )]
    Env(EnvCommand),
    /// Store a value (from a hidden /dev/tty prompt, or stdin). Never from argv.
    #[command(after_help = "Examples:
  keyveil set demo API_TOKEN                              # hidden prompt, then your passphrase
  pass show api/token | keyveil set demo API_TOKEN --from-stdin
  keyveil set demo API_TOKEN --web                        # type it on a local page
  keyveil import demo .env                                # many at once, from a .env file")]
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
    /// Bring existing secrets in: a `.env` file, `.env` text on stdin, or variables of the
    /// current environment; reports names only, and offers to remove or rewrite the file.
    Import(super::import::ImportArgs),
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
        #[arg(long, value_enum, default_value_t = CharsetArg::Alnum)]
        charset: CharsetArg,
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
        /// List every pinned input (a card with many folds toolchain inputs into one line per
        /// install: how many, and a digest of them).
        #[arg(long)]
        details: bool,
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
    /// Put a `.env` at PATH that exists only for an approved reader: a named pipe the broker
    /// serves; each read is a request with a card (docs/mounts.md).
    #[command(after_help = "Examples:
  keyveil mount demo .env                # then `docker compose up` reads it, once you approve
  keyveil mounts                         # list them, with what happened last
  keyveil unmount .env
  keyveil import demo .env --mount       # import a plaintext .env and put a mount in its place

A mount's reader is not started by keyveil: its output is not redacted and revoking cannot
stop it. Where you can change how a program starts, prefer `keyveil run --env ENV -- CMD`.")]
    Mount {
        /// Environment whose variables a read gets.
        env: String,
        /// Where the `.env` should appear (its directory must exist; nothing may be there).
        path: std::path::PathBuf,
    },
    /// Remove a mount and its named pipe.
    Unmount {
        /// The mount's path.
        path: std::path::PathBuf,
    },
    /// List mounts.
    Mounts {
        /// JSON output.
        #[arg(long)]
        json: bool,
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
    Dynamic(Box<dynamic::DynamicCommand>),
    /// The project manifest (keyveil.toml): apply it (create and link its environments, pin
    /// its digest with your factor) or show its pin.
    #[command(subcommand)]
    Project(super::project::ProjectCommand),
    /// CI mode: a broker with no human that runs only what a frozen allowlist covers, scans
    /// artifacts, and writes a signed audit chain (docs/ci.md).
    #[command(subcommand)]
    Ci(super::ci::CiCommand),
    /// The audit log.
    Audit(AuditArgs),
    /// Find every copy of a stored value outside keyveil (files, agent transcripts, shell
    /// histories, git history) and, with --contain, contain it. Needs your factor.
    Sweep(super::sweep::SweepArgs),
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
    /// Make keyveil usable in an agent host: its MCP entry and the host's permission for
    /// keyveil's tools (keeps everything else in the files; backs up; says what and why).
    #[command(after_help = "Examples:
  keyveil setup codex                    # ~/.codex/config.toml
  keyveil setup claude --project         # .mcp.json in this directory
  keyveil setup gemini --print           # show what would change; write nothing
  keyveil setup copilot --remove         # undo exactly what setup wrote
  keyveil doctor                         # then check the set-up end to end")]
    Setup {
        /// The host.
        #[arg(value_enum)]
        host: crate::setup::Host,
        /// Only print what keyveil writes and what would change; write nothing.
        #[arg(long)]
        print: bool,
        /// The project's files in the current directory instead of the user's.
        #[arg(long)]
        project: bool,
        /// Keep the host's own prompts before keyveil's tools: write no host permission (and
        /// take out one keyveil wrote before).
        #[arg(long, conflicts_with = "remove")]
        host_prompts: bool,
        /// Undo what setup writes: the keyveil entry and keyveil's permission, nothing else.
        #[arg(long)]
        remove: bool,
    },
    /// Find what stops a host from using keyveil and say how to fix it (exit 1 if anything
    /// does).
    Doctor {
        /// You keep the hosts' own prompts on purpose: a missing host permission is no failure.
        #[arg(long)]
        host_prompts: bool,
    },
    /// Start a long-running command (dev server, watcher) under a grant; prints its run id.
    Start(background::StartArgs),
    /// Redacted output of a background run.
    Logs(background::LogsArgs),
    /// Stop a background run (SIGTERM, SIGKILL after 2 s).
    Stop {
        /// Run id (`r-...`).
        run_id: String,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(super::manual::CompletionsArgs),
    /// Print the man page (`keyveil.1`), or write every page into a directory.
    Man(super::manual::ManArgs),
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
pub(crate) enum FactorCommand {
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
        /// The 6-digit code; asked for on the terminal when absent (it is a factor: better not
        /// on the command line, which every process of yours can read).
        code: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
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
pub(crate) enum PolicySetCommand {
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
    /// Add an auto-approve rule: this command, under this directory, gets grants of this TTL,
    /// while what it runs (executable and pinned inputs, bound now) is unchanged.
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
    /// Let OpenBao variables send their token (or AppRole secret id, JWT, password) over plain
    /// HTTP, and PostgreSQL and Redis variables their admin password, to a loopback port your own user
    /// (or one of your /etc/subuid uids) holds (a local `bao proxy`, a dev server). Off by
    /// default: any process of your uid (an agent too) can hold that port while the server is
    /// down; a listener of another user (a service user) needs no setting.
    InsecureLoopback {
        /// on | off.
        #[arg(value_parser = ["on", "off"])]
        setting: String,
    },
    /// Bind a variable to hosts: runs get a placeholder, and their egress proxy sends the value
    /// only in HTTPS requests to these hosts (docs/egress.md).
    Bind {
        /// The variable.
        variable: String,
        /// Hosts (`api.example.com`, or `host:port` for a port other than 443).
        #[arg(required = true)]
        hosts: Vec<String>,
        /// Also put the value into the request's path and query (`?key=…`), not only headers.
        #[arg(long)]
        url: bool,
        /// Also put the value into request bodies (form and JSON posts), not only headers. A
        /// host that stores what it is sent can then give the value back (docs/egress.md).
        #[arg(long)]
        body: bool,
    },
    /// Remove a variable's binding: runs get the value itself again.
    Unbind {
        /// The variable.
        variable: String,
    },
    /// Root certificates (a PEM file) the egress proxy trusts upstream besides the system's,
    /// or `default` for the system's only.
    EgressRoots {
        /// PEM file, or `default`.
        file: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DaemonAction {
    /// Stop the broker and its runs.
    Stop,
}

#[derive(Debug, Subcommand)]
pub(crate) enum EnvCommand {
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
    /// Back an environment by an OpenBao KV v2 secret: each field becomes a variable whose
    /// value is fetched from OpenBao when a granted run starts (a value changed there is what
    /// the next run gets). The same as `keyveil dynamic add ENV --engine openbao-kv`.
    ///
    /// Example:
    ///   keyveil env link dev --openbao https://bao.corp:8200 --ca-file ca.pem \
    ///       --namespace team --auth approle --role-id ROLE_ID --kv-path team/app
    // The example is clap help text, printed as written: its URLs are not links.
    #[allow(rustdoc::bare_urls)]
    #[command(verbatim_doc_comment)]
    Link {
        /// Environment.
        name: String,
        /// OpenBao address: https://HOST:PORT, or http:// on loopback only.
        #[arg(long)]
        openbao: String,
        /// KV v2 path under the mount.
        #[arg(long)]
        kv_path: String,
        /// KV v2 mount (default: secret).
        #[arg(long)]
        mount: Option<String>,
        /// Read the login secret (token, AppRole secret id, JWT) from the first line of stdin.
        #[arg(long)]
        admin_stdin: bool,
        #[command(flatten)]
        bao: Box<super::dynamic::BaoArgs>,
        /// Prove your factor with the link (the passphrase asked at the terminal): its values
        /// are then not quoted on approval cards. Without it they are (an agent could have
        /// linked the server, so they are not secret from it).
        #[arg(long)]
        with_factor: bool,
        /// Your factor, from stdin (first line; the login secret of --admin-stdin after it).
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
#[command(after_help = "Examples:
  keyveil run --env demo -- ./deploy.sh
  keyveil run --env demo --only DATABASE_URL --reason \"migrate\" -- cargo sqlx migrate run
  keyveil run --env demo -- sh -c 'curl -H \"Authorization: Bearer $API_TOKEN\" https://api.example.com'

The command goes after `--`. It waits for your approval (`keyveil approve` in another
terminal), then prints the command's output with the values redacted and exits with its code.
The command's standard input is /dev/null: `keyveil run` never forwards its own (a program
that reads code from stdin gets none); interactive programs are not supported.")]
pub(crate) struct RunArgs {
    /// Environment.
    #[arg(long = "env")]
    pub(crate) environment: String,
    /// Only these variables (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub(crate) only: Option<Vec<String>>,
    /// Why (shown to the approver).
    #[arg(long)]
    pub(crate) reason: Option<String>,
    /// Working directory (default: the current one).
    #[arg(long)]
    pub(crate) cwd: Option<PathBuf>,
    /// Kill the command after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub(crate) timeout: u64,
    /// Seconds to wait for approval before giving up (exit 5).
    #[arg(long, default_value_t = 600)]
    pub(crate) wait: u64,
    /// Pass these variables of your environment through to the command (comma-separated;
    /// shown at approval). The command's environment is otherwise built from scratch.
    #[arg(long, value_delimiter = ',')]
    pub(crate) pass_env: Vec<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub(crate) command: Vec<String>,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  keyveil approve                        # the one pending request (lists them when several)
  keyveil approve 7                      # shows the card, asks your passphrase: one use
  keyveil approve 7 --ttl 30m            # this exact command, for 30 minutes
  keyveil approve 7 --totp               # with a TOTP code, where the policy allows it
  keyveil approve --watch                # a live approver in this terminal
  keyveil approve --web                  # the local approval page")]
pub(crate) struct ApproveArgs {
    /// Request id (optional when exactly one request is pending).
    pub(crate) id: Option<u64>,
    /// Read the passphrase from the first line of stdin.
    #[arg(long)]
    pub(crate) passphrase_stdin: bool,
    /// Approve with a TOTP code (where the environment's policy allows it): asked for on the
    /// terminal, never taken from the command line.
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "CODE")]
    pub(crate) totp: Option<String>,
    /// Read the TOTP code from the first line of stdin.
    #[arg(long, conflicts_with = "passphrase_stdin")]
    pub(crate) totp_stdin: bool,
    /// Approve without a secret factor (only where the policy is `confirm`).
    #[arg(long, conflicts_with_all = ["totp", "passphrase_stdin", "totp_stdin"])]
    pub(crate) confirm: bool,
    /// Grant lifetime, e.g. `30m`, `8h` (default: one use within 15 minutes).
    #[arg(long)]
    pub(crate) ttl: Option<String>,
    /// Number of uses.
    #[arg(long)]
    pub(crate) uses: Option<u32>,
    /// Let the grant cover any command in the environment.
    #[arg(long)]
    pub(crate) any_command: bool,
    /// Also cover longer commands that start with the approved argv (token-wise; extra
    /// code-executing options such as `-c`, `--exec`, `--upload-pack` still ask again).
    #[arg(long)]
    pub(crate) prefix: bool,
    /// Also cover subdirectories of the approved working directory (canonical paths).
    #[arg(long)]
    pub(crate) subdirs: bool,
    /// Interactive approver on /dev/tty.
    #[arg(long)]
    pub(crate) watch: bool,
    /// The local web approval page: prints a one-time link (valid 5 minutes) and opens it in
    /// the browser when a desktop session is there.
    #[arg(long, conflicts_with_all = ["id", "watch"])]
    pub(crate) web: bool,
    /// With `--web`: only print the link, never open a browser.
    #[arg(long, requires = "web")]
    pub(crate) print: bool,
}

#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    #[command(subcommand)]
    pub(crate) action: Option<AuditAction>,
    /// JSON lines output.
    #[arg(long)]
    pub(crate) json: bool,
    /// Keep printing new entries.
    #[arg(long)]
    pub(crate) follow: bool,
    /// Last N entries.
    #[arg(long, default_value_t = 50)]
    pub(crate) limit: usize,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditAction {
    /// Check the MAC chain of the whole log.
    Verify,
}

/// `--charset` of `generate` (the protocol's [`Charset`] has no clap derive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum CharsetArg {
    /// `A-Za-z0-9`.
    Alnum,
    /// `0-9a-f`.
    Hex,
    /// `A-Za-z0-9-_` (RFC 4648 §5 alphabet).
    Base64url,
    /// Printable ASCII without space (`!`..`~`).
    Ascii,
}

impl From<CharsetArg> for Charset {
    fn from(c: CharsetArg) -> Charset {
        match c {
            CharsetArg::Alnum => Charset::Alnum,
            CharsetArg::Hex => Charset::Hex,
            CharsetArg::Base64url => Charset::Base64url,
            CharsetArg::Ascii => Charset::Ascii,
        }
    }
}
