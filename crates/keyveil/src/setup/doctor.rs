//! `keyveil doctor`: what stops a host from using keyveil. Checks, in order: keyveil on `PATH`
//! is this binary; the broker answers from a host-like environment; the vault exists and is
//! unlocked; each host configuration that names keyveil starts this binary (which still
//! exists) with `["mcp"]`, long enough tool timeouts, and the host's permission for keyveil's
//! tools; the host-side conditions setup cannot write (Gemini CLI's folder trust, Claude Code's
//! approval of a project's `.mcp.json` server, Codex's project trust); then, for each host set
//! up whose CLI is on `PATH`, the host's own MCP listing, run with a short timeout and killed
//! after it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;

use super::{Format, Found, Host, HostEnv, Op, find, parse_value, plan, this_binary};
use crate::output::say;

/// How long a host's own MCP listing may take before it is killed.
pub const HOST_LISTING_TIMEOUT: Duration = Duration::from_secs(5);

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    /// Said, but not a failure (e.g. a host listing that did not answer in time).
    Warn,
    Fail,
}

/// One check's outcome.
struct Check {
    level: Level,
    what: String,
    hint: Option<String>,
}

impl Check {
    fn ok(what: impl Into<String>) -> Check {
        Check {
            level: Level::Ok,
            what: what.into(),
            hint: None,
        }
    }
    fn fail(what: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            level: Level::Fail,
            what: what.into(),
            hint: Some(hint.into()),
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// The first executable `name` on `path`.
fn which(name: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn read_value(path: &Path, format: Format) -> Option<Result<Value, String>> {
    let text = super::read_config(path).ok()??;
    Some(parse_value(format, &text))
}

fn json_file(path: &Path) -> Value {
    match read_value(path, Format::Json) {
        Some(Ok(v)) => v,
        _ => Value::Null,
    }
}

/// `(command, args)` of a host entry: `command` + `args`, or OpenCode's command array.
fn command_of(entry: &Value) -> (String, Vec<String>) {
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    match entry.get("command") {
        Some(Value::Array(_)) => {
            let mut all = strings(entry.get("command"));
            let cmd = if all.is_empty() {
                String::new()
            } else {
                all.remove(0)
            };
            (cmd, all)
        }
        other => (
            other.and_then(Value::as_str).unwrap_or("").to_owned(),
            strings(entry.get("args")),
        ),
    }
}

/// The timeout of a host entry in seconds, and the host's default, when the host has one that
/// matters (a `run` may wait 50 s for approval, then run).
fn timeout_of(host: Host, entry: &Value) -> Option<(f64, &'static str)> {
    let ms = |k: &str| entry.get(k).and_then(Value::as_f64).map(|m| m / 1000.0);
    match host {
        Host::Codex => Some((
            entry
                .get("tool_timeout_sec")
                .and_then(Value::as_f64)
                .unwrap_or(60.0),
            "tool_timeout_sec",
        )),
        Host::Opencode => Some((ms("timeout").unwrap_or(5.0), "timeout")),
        Host::Gemini | Host::Copilot => ms("timeout").map(|s| (s, "timeout")),
        _ => None,
    }
}

/// Whether Gemini CLI trusts `dir` (its `isPathTrusted`: the longest matching rule of
/// `trustedFolders.json` wins; `TRUST_PARENT` trusts the rule's parent). `None`: no rule.
fn gemini_trusts(rules: &Value, dir: &Path) -> Option<bool> {
    let mut best: Option<(usize, &str)> = None;
    for (rule, level) in rules.as_object()?.iter() {
        let Some(level) = level.as_str() else {
            continue;
        };
        let base = if level == "TRUST_PARENT" {
            Path::new(rule).parent().unwrap_or(Path::new(rule))
        } else {
            Path::new(rule)
        };
        let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
        if dir.starts_with(&base) && best.is_none_or(|(n, _)| rule.len() > n) {
            best = Some((rule.len(), level));
        }
    }
    match best?.1 {
        "DO_NOT_TRUST" => Some(false),
        "TRUST_FOLDER" | "TRUST_PARENT" => Some(true),
        _ => None,
    }
}

fn array_has(v: &Value, path: &[&str], want: &[&str]) -> bool {
    path.iter()
        .try_fold(v, |cur, k| cur.get(k))
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .any(|x| x.as_str().is_some_and(|s| want.contains(&s)))
        })
}

/// Runs `argv` (a host CLI's MCP listing) with `timeout`; kills its process group after.
/// Returns `(exit success, stdout + stderr)`, or `None` when it did not finish in time.
fn run_listing(
    program: &str,
    args: &[&str],
    cwd: &Path,
    timeout: Duration,
) -> Result<Option<(bool, String)>> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::CommandExt;
    // The output goes to an unlinked file, not a pipe: a server the listing started may keep
    // a pipe open after the listing is gone.
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?;
    let out_path = std::env::temp_dir().join(format!(".keyveil-doctor-{}", hex::encode(nonce)));
    let out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&out_path)
        .with_context(|| format!("cannot create {}", out_path.display()))?;
    let _ = std::fs::remove_file(&out_path);
    let err = out.try_clone()?;
    let mut reader = out.try_clone()?;
    let mut child = std::process::Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .env("NO_COLOR", "1")
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    let pgid = rustix::process::Pid::from_child(&child);
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if t0.elapsed() >= timeout {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The listing may have started servers of its own: the whole group goes.
    let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    let _ = child.wait();
    let Some(status) = status else {
        return Ok(None);
    };
    let mut text = String::new();
    use std::io::Seek;
    reader.seek(std::io::SeekFrom::Start(0))?;
    let mut bytes = Vec::new();
    reader.take(256 * 1024).read_to_end(&mut bytes)?;
    text.push_str(&String::from_utf8_lossy(&bytes));
    Ok(Some((status.success(), text)))
}

/// Drops ANSI escape sequences.
fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// What a host's MCP listing says about keyveil.
fn judge_listing(host: Host, cli: &str, result: Option<(bool, String)>) -> Check {
    let shown = format!("`{cli} mcp list`");
    let Some((success, text)) = result else {
        return Check {
            level: Level::Warn,
            what: format!(
                "{}: {shown} did not answer within {} s (killed)",
                host.name(),
                HOST_LISTING_TIMEOUT.as_secs()
            ),
            hint: None,
        };
    };
    let text = plain(&text);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("keyveil"))
        .collect();
    if lines.is_empty() {
        let last = text
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("no output");
        return Check::fail(
            format!(
                "{}: {shown} does not list keyveil ({}: {last})",
                host.name(),
                if success { "it says" } else { "it failed" }
            ),
            format!(
                "run `keyveil setup {}` (or `--project` in this project); the host reads the file named above",
                host.name()
            ),
        );
    }
    // The line that says the most: prefer one with a status word.
    let line = lines
        .iter()
        .copied()
        .find(|l| {
            let l = l.to_lowercase();
            [
                "connect", "pending", "fail", "error", "disabled", "enabled", "trust",
            ]
            .iter()
            .any(|w| l.contains(w))
        })
        .or_else(|| lines.first().copied())
        .unwrap_or_default();
    let low = line.to_lowercase();
    let bad = [
        "pending",
        "fail",
        "error",
        "disconnected",
        "disabled",
        "not trusted",
        "✗",
        "✘",
        "needs",
    ]
    .iter()
    .any(|w| low.contains(w));
    if bad {
        Check::fail(
            format!("{}: {shown} says: {line}", host.name()),
            match host {
                Host::Claude if low.contains("pending") => "approve the project's keyveil server: `keyveil setup claude --project` writes enabledMcpjsonServers, or run `claude` here and accept it".to_owned(),
                Host::Gemini => "trust this folder in Gemini CLI (run `gemini` here once and choose to trust it); `keyveil doctor` lists the other checks above".to_owned(),
                _ => format!("see the checks above; `{cli} mcp list` shows the host's own view"),
            },
        )
    } else {
        Check::ok(format!("{}: {shown} says: {line}", host.name()))
    }
}

/// Host-specific conditions setup cannot write, for a host whose entry was found.
fn host_conditions(
    host: Host,
    project: bool,
    env: &HostEnv,
    cwd: &Path,
    host_prompts: bool,
    out: &mut Vec<Check>,
) {
    match host {
        Host::Gemini => {
            let trust_env = std::env::var("GEMINI_CLI_TRUST_WORKSPACE").ok();
            let settings = json_file(&env.home.join(".gemini/settings.json"));
            let enabled = settings
                .pointer("/security/folderTrust/enabled")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            if trust_env.as_deref() == Some("true") || !enabled {
                out.push(Check::ok(
                    "gemini: folder trust is off (GEMINI_CLI_TRUST_WORKSPACE or security.folderTrust.enabled)",
                ));
                return;
            }
            let file = std::env::var_os("GEMINI_CLI_TRUSTED_FOLDERS_PATH")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| env.home.join(".gemini/trustedFolders.json"));
            let dir = std::fs::canonicalize(cwd).unwrap_or_else(|_| cwd.to_path_buf());
            match gemini_trusts(&json_file(&file), &dir) {
                Some(true) => out.push(Check::ok(format!(
                    "gemini: {} trusts {}",
                    file.display(),
                    dir.display()
                ))),
                found => out.push(Check::fail(
                    format!(
                        "gemini: Gemini CLI {} {}, so it starts no MCP server here{}",
                        if found == Some(false) { "distrusts" } else { "does not trust" },
                        dir.display(),
                        if project { " (and ignores .gemini/settings.json)" } else { "" }
                    ),
                    format!(
                        "run `gemini` in {} once and choose to trust the folder (saved in {}), or run it with GEMINI_CLI_TRUST_WORKSPACE=true",
                        dir.display(),
                        file.display()
                    ),
                )),
            }
        }
        Host::Claude => {
            let user_dir = env
                .claude_config_dir
                .clone()
                .unwrap_or_else(|| env.home.join(".claude"));
            let state_file = env
                .claude_config_dir
                .as_ref()
                .unwrap_or(&env.home)
                .join(".claude.json");
            let state = json_file(&state_file);
            let proj_state = state
                .get("projects")
                .and_then(|p| p.get(cwd.to_string_lossy().as_ref()))
                .cloned()
                .unwrap_or(Value::Null);
            let settings: Vec<Value> = [
                user_dir.join("settings.json"),
                cwd.join(".claude/settings.json"),
                cwd.join(".claude/settings.local.json"),
            ]
            .iter()
            .map(|p| json_file(p))
            .collect();
            if settings.iter().any(|s| {
                array_has(
                    s,
                    &["permissions", "deny"],
                    &["mcp__keyveil", "mcp__keyveil__*"],
                )
            }) {
                out.push(Check::fail(
                    "claude: a permissions.deny rule denies keyveil's tools",
                    "take \"mcp__keyveil\" out of permissions.deny in your Claude Code settings",
                ));
            }
            if project {
                let enabled = settings.iter().chain([&proj_state]).any(|s| {
                    array_has(s, &["enabledMcpjsonServers"], &["keyveil"])
                        || s.get("enableAllProjectMcpServers") == Some(&Value::Bool(true))
                });
                if !enabled {
                    out.push(Check::fail(
                        "claude: the project's .mcp.json server keyveil is not approved, so Claude Code does not start it",
                        "run `keyveil setup claude --project` (it writes enabledMcpjsonServers in .claude/settings.local.json)",
                    ));
                }
            }
            if !host_prompts {
                let allowed = settings.iter().any(|s| {
                    array_has(
                        s,
                        &["permissions", "allow"],
                        &["mcp__keyveil", "mcp__keyveil__*"],
                    )
                }) || array_has(&proj_state, &["allowedTools"], &["mcp__keyveil"]);
                out.push(if allowed {
                    Check::ok("claude: permissions.allow holds mcp__keyveil")
                } else {
                    Check::fail(
                        "claude: no permissions.allow entry for mcp__keyveil: Claude Code asks before each keyveil tool, and `claude -p` refuses them",
                        format!(
                            "run `keyveil setup claude{}`; if you keep Claude Code's prompts on purpose, `keyveil doctor --host-prompts` skips this check",
                            if project { " --project" } else { "" }
                        ),
                    )
                });
            }
        }
        Host::Codex if project => {
            let user = env
                .codex_home
                .as_ref()
                .map(|h| h.join("config.toml"))
                .unwrap_or_else(|| env.home.join(".codex/config.toml"));
            let v = read_value(&user, Format::Toml)
                .and_then(Result::ok)
                .unwrap_or(Value::Null);
            let trusted = v
                .get("projects")
                .and_then(|p| p.get(cwd.to_string_lossy().as_ref()))
                .and_then(|p| p.get("trust_level"))
                .and_then(Value::as_str)
                == Some("trusted");
            if !trusted {
                out.push(Check::fail(
                    format!(
                        "codex: {} is not a trusted project, so Codex ignores .codex/config.toml",
                        cwd.display()
                    ),
                    "trust the project when Codex asks, or use the user's file: `keyveil setup codex`",
                ));
            }
        }
        _ => {}
    }
}

/// The checks of `keyveil doctor`, in order.
fn checks(host_prompts: bool) -> Result<Vec<Check>> {
    let me = this_binary()?;
    let env = HostEnv::current()?;
    let home = env.home.clone();
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let path_var = std::env::var("PATH").unwrap_or_default();
    let mut out = Vec::new();

    // 1. The binary on PATH is this one.
    match which("keyveil", &path_var) {
        Some(p) if same_file(&p, &me) => out.push(Check::ok(format!(
            "keyveil on PATH is this binary ({})",
            p.display()
        ))),
        Some(p) => out.push(Check::fail(
            format!(
                "keyveil on PATH is {}, not this binary ({})",
                p.display(),
                me.display()
            ),
            "install one keyveil (`cargo install --locked --path crates/keyveil`) or run `keyveil setup HOST` with the binary the hosts should start (the config names it by absolute path)",
        )),
        None => out.push(Check::fail(
            "keyveil is not on PATH",
            format!(
                "add {} to PATH (hosts configured by `keyveil setup` use the absolute path, but you will want `keyveil approve` in your terminal)",
                me.parent().map(|d| d.display().to_string()).unwrap_or_default()
            ),
        )),
    }

    // 2. The broker is reachable from a host-like environment (only HOME and PATH, plus
    //    KEYVEIL_HOME when the host config passes it), and it is the same broker.
    let paths = crate::paths::Paths::resolve()?;
    let mut cmd = std::process::Command::new(&me);
    cmd.args(["status", "--json"])
        .env_clear()
        .env("HOME", &home)
        .env("PATH", &path_var)
        .stdin(std::process::Stdio::null());
    if let Some(h) = std::env::var_os("KEYVEIL_HOME").filter(|h| !h.is_empty()) {
        cmd.env("KEYVEIL_HOME", h);
    }
    let status: Option<StatusJson> = cmd
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice(&o.stdout).ok());
    let sock = paths.socket();
    match &status {
        Some(s) if s.running && s.socket == sock => {
            out.push(Check::ok(format!(
                "broker reachable with only HOME and PATH set (socket {})",
                sock.display()
            )))
        }
        Some(s) if s.running => out.push(Check::fail(
            format!(
                "with only HOME and PATH set, keyveil finds another broker ({}) than this shell ({})",
                s.socket.display(),
                sock.display()
            ),
            "hosts pass a short environment: set KEYVEIL_HOME in the host's config (`keyveil setup HOST` does it when KEYVEIL_HOME is set), or unset XDG_DATA_HOME/KEYVEIL_HOME here",
        )),
        _ => out.push(Check::fail(
            "no broker answers from a host-like environment",
            "run `keyveil unlock` (it starts the broker); if it does not start, `keyveil daemon --foreground` shows why",
        )),
    }

    // 3. Vault exists and is unlocked.
    match &status {
        Some(s) if !s.vault_exists => out.push(Check::fail(
            format!("no vault at {}", paths.vault().display()),
            "create one with `keyveil init`",
        )),
        Some(s) if s.locked || !s.running => {
            out.push(Check::fail("the vault is locked", "run `keyveil unlock`"))
        }
        Some(_) => out.push(Check::ok("vault exists and is unlocked")),
        None => {}
    }

    // 4. Host configurations: present, pointing at this binary, with the host's permission.
    let entry = super::entry_here()?;
    let mut configured: Vec<Host> = Vec::new();
    // Hosts whose project file in the current directory names keyveil (set up here on purpose).
    let mut here: Vec<Host> = Vec::new();
    for host in super::HOSTS {
        for project in [None, Some(cwd.as_path())] {
            let Ok(p) = plan(host, &env, project, &entry) else {
                continue;
            };
            let fix = format!(
                "run `keyveil setup {}{}`",
                host.name(),
                if project.is_some() { " --project" } else { "" }
            );
            // The file with the entry comes first in every plan.
            let Some(entry_file) = p.files.first() else {
                continue;
            };
            let Some(parsed) = read_value(&entry_file.path, entry_file.format) else {
                continue;
            };
            let v = match parsed {
                Ok(v) => v,
                Err(e) => {
                    out.push(Check::fail(
                        format!(
                            "{}: {} does not parse: {e}",
                            host.name(),
                            entry_file.path.display()
                        ),
                        "fix the file; the host cannot read it either",
                    ));
                    continue;
                }
            };
            let Some(entry_op) = entry_file.ops.first() else {
                continue;
            };
            let Found::Entry(Some(kv)) = find(entry_op, &v) else {
                continue;
            };
            configured.push(host);
            if project.is_some() {
                here.push(host);
            }
            let file = entry_file.path.display().to_string();
            let (command, args) = command_of(&kv);
            let resolved = if command.contains('/') {
                Some(PathBuf::from(&command))
            } else {
                which(&command, &path_var)
            };
            let mut problems = Vec::new();
            match &resolved {
                Some(r) if !r.exists() => problems.push(format!(
                    "its command {command:?} does not exist (keyveil moved or was uninstalled)"
                )),
                None => problems.push(format!("its command {command:?} is not on PATH")),
                Some(r) if !same_file(r, &me) => {
                    problems.push(format!("its command {command:?} is not this binary"));
                }
                Some(_) => {}
            }
            if args != ["mcp"] {
                problems.push(format!("its args are {args:?}, not [\"mcp\"]"));
            }
            if let Some((secs, key)) = timeout_of(host, &kv)
                && secs < 120.0
            {
                problems.push(format!(
                    "its {key} is {secs} s; a run may wait 50 s for approval and then run"
                ));
            }
            // The host's permission (grants), in this plan's files.
            if !host_prompts && host != Host::Claude {
                for f in &p.files {
                    for op in f.ops.iter().filter(|o| o.is_grant()) {
                        let fv = read_value(&f.path, f.format)
                            .and_then(Result::ok)
                            .unwrap_or(Value::Null);
                        let holds = match (find(op, &fv), op) {
                            (Found::Holds(h), _) => h,
                            (Found::Entry(Some(e)), Op::Entry { grant, .. }) => {
                                grant.iter().all(|(k, want)| e.get(k) == Some(want))
                            }
                            _ => false,
                        };
                        if !holds {
                            problems.push(match op {
                                Op::Entry { grant, .. } => format!(
                                    "it lacks {}, so {} asks before each keyveil tool (and refuses them headless)",
                                    grant
                                        .iter()
                                        .map(|(k, v)| format!("{k} = {v}"))
                                        .collect::<Vec<_>>()
                                        .join(", "),
                                    host.title()
                                ),
                                Op::Key { path, key, value, .. } => format!(
                                    "{} lacks {}.{key:?} = {value}, so {} asks before each keyveil tool",
                                    f.path.display(),
                                    path.join("."),
                                    host.title()
                                ),
                                Op::Member { path, value, .. } => format!(
                                    "{} lacks {value:?} in {}",
                                    f.path.display(),
                                    path.join(".")
                                ),
                            });
                        }
                    }
                }
            }
            out.push(if problems.is_empty() {
                Check::ok(format!("{}: {file} starts this keyveil", host.name()))
            } else {
                let grant_only = problems.iter().all(|p| p.contains("asks before"));
                Check::fail(
                    format!("{}: {file}: {}", host.name(), problems.join("; ")),
                    if grant_only {
                        format!(
                            "{fix}; if you keep {}'s prompts on purpose, `keyveil doctor --host-prompts` skips this check",
                            host.title()
                        )
                    } else {
                        fix
                    },
                )
            });
            host_conditions(host, project.is_some(), &env, &cwd, host_prompts, &mut out);
        }
    }
    configured.dedup();
    if configured.is_empty() {
        out.push(Check::fail(
            "no agent host is set up to start keyveil",
            "run `keyveil setup codex` (or claude, gemini, antigravity, copilot, cursor, vscode, opencode; `--project` for this project only)",
        ));
    }

    // 5. The hosts' own view, where their CLI is on PATH.
    for host in configured {
        let cli = match host {
            Host::Codex => "codex",
            Host::Claude => "claude",
            Host::Gemini => "gemini",
            Host::Copilot => "copilot",
            Host::Opencode => "opencode",
            _ => continue,
        };
        let Some(bin) = which(cli, &path_var) else {
            continue;
        };
        let bin = bin.to_string_lossy().into_owned();
        // A listing connects to the servers it lists, and the project files that name servers
        // (and the files that say a folder is trusted) are files the agent can write: run in the
        // project, a listing would start the agent's own server from the human's terminal, with
        // the human's environment. So every listing runs in HOME; the project's files are read,
        // never run, by the checks above.
        let dir = home.as_path();
        match run_listing(&bin, &["mcp", "list"], dir, HOST_LISTING_TIMEOUT) {
            Ok(r) => out.push(judge_listing(host, cli, r)),
            Err(e) => out.push(Check {
                level: Level::Warn,
                what: format!("{}: cannot run `{cli} mcp list`: {e:#}", host.name()),
                hint: None,
            }),
        }
    }
    Ok(out)
}

/// `keyveil doctor [--host-prompts]`: prints each check; exit 1 if any fails. With
/// `host_prompts`, a host without keyveil's permission is not a failure.
pub fn doctor_main(host_prompts: bool) -> Result<i32> {
    // Start the broker if none runs (as a host's first call would).
    let paths = crate::paths::Paths::resolve()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let was_running = rt.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            crate::client::call_existing(&paths, &keyveil_proto::Request::Status),
        )
        .await
        .ok()
        .flatten()
        .is_some_and(|r| r.is_ok())
    });
    if !was_running {
        let _ = rt.block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(15),
                crate::client::call(&paths, &keyveil_proto::Request::Status),
            )
            .await
        });
    }
    let mut list = checks(host_prompts)?;
    if !was_running {
        // Not a failure: `keyveil mcp` starts it the same way on a host's first call.
        list.insert(
            0,
            Check {
                level: Level::Warn,
                what: "no broker was running; doctor started one (a host's first keyveil call does the same)".to_owned(),
                hint: None,
            },
        );
    }
    let mut failed = 0;
    for c in &list {
        let tag = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        say(format!("{tag} {}", c.what));
        if c.level == Level::Fail {
            failed += 1;
            if let Some(h) = &c.hint {
                say(format!("     hint: {h}"));
            }
        }
    }
    if failed == 0 {
        say("all checks passed");
        Ok(0)
    } else {
        say(format!("{failed} check(s) failed"));
        Ok(1)
    }
}

/// What `keyveil status --json` prints, as the doctor reads it: the broker's
/// `keyveil_proto::op::BrokerStatus` when one runs, or the CLI's own `running: false` form.
#[derive(Debug, serde::Deserialize)]
struct StatusJson {
    running: bool,
    socket: PathBuf,
    #[serde(default)]
    vault_exists: bool,
    #[serde(default)]
    locked: bool,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn gemini_trust_rules_longest_match_wins() {
        let rules = json!({
            "/w": "TRUST_FOLDER",
            "/w/secret": "DO_NOT_TRUST",
            "/x/proj": "TRUST_PARENT"
        });
        assert_eq!(gemini_trusts(&rules, Path::new("/w/a")), Some(true));
        assert_eq!(gemini_trusts(&rules, Path::new("/w/secret/b")), Some(false));
        assert_eq!(gemini_trusts(&rules, Path::new("/x/other")), Some(true));
        assert_eq!(gemini_trusts(&rules, Path::new("/y")), None);
        assert_eq!(gemini_trusts(&Value::Null, Path::new("/w")), None);
    }

    #[test]
    fn listings_are_judged_by_their_keyveil_line() {
        let j = |out: &str| judge_listing(Host::Claude, "claude", Some((true, out.to_owned())));
        assert_eq!(
            j("Checking MCP server health…\n\nkeyveil: /k mcp - \u{1b}[32m✔ Connected\u{1b}[0m\n")
                .level,
            Level::Ok
        );
        let c = j("keyveil: /k mcp - ⏸ Pending approval (run `claude` to approve)\n");
        assert_eq!(c.level, Level::Fail);
        assert!(c.hint.unwrap().contains("enabledMcpjsonServers"));
        assert_eq!(
            j("keyveil: /k mcp - ✗ Failed to connect\n").level,
            Level::Fail
        );
        assert_eq!(j("No MCP servers configured.\n").level, Level::Fail);
        assert_eq!(judge_listing(Host::Codex, "codex", None).level, Level::Warn);
        assert_eq!(
            judge_listing(
                Host::Codex,
                "codex",
                Some((
                    true,
                    "Name  Command  Status\nkeyveil  /k  mcp  -  -  enabled  Unsupported\n".into()
                ))
            )
            .level,
            Level::Ok
        );
    }

    #[test]
    fn command_of_reads_both_shapes() {
        assert_eq!(
            command_of(&json!({"command": "/k", "args": ["mcp"]})),
            ("/k".to_owned(), vec!["mcp".to_owned()])
        );
        assert_eq!(
            command_of(&json!({"command": ["/k", "mcp"]})),
            ("/k".to_owned(), vec!["mcp".to_owned()])
        );
    }
}
