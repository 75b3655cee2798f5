//! `keyveil doctor`: what stops a host from using keyveil. Checks, in order: keyveil on `PATH`
//! is this binary; user namespaces for sealing scripts (a warning when refused); the broker answers from a host-like environment; the vault exists and is
//! unlocked; each host configuration that names keyveil starts this binary (which still
//! exists) with `["mcp"]`, long enough tool timeouts, and the host's permission for keyveil's
//! tools; the host-side conditions setup cannot write (Gemini CLI's folder trust, Claude Code's
//! approval of a project's `.mcp.json` server, Codex's project trust); then, for each host set
//! up whose CLI is on `PATH`, the host's own MCP listing, run with a short timeout and killed
//! after it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use super::{Found, Host, HostEnv, Op, find, plan, this_binary};
use crate::output::say;

mod entries;
mod listing;
use entries::{command_of, host_conditions, read_value, timeout_of};
pub(crate) use listing::HOST_LISTING_TIMEOUT;
use listing::{judge_listing, run_listing};

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
    fn warn(what: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            level: Level::Warn,
            what: what.into(),
            hint: Some(hint.into()),
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

/// Whether the kernel lets a run's reaper enter a user and mount namespace, which sealing a
/// pinned script needs: asked of this binary's probe mode (a fresh, single-threaded process).
/// A refusal is a warning, not a failure: runs still work, but a script rewritten during a run
/// is seen only when the run ends.
fn user_namespaces(me: &Path) -> Check {
    let entered = std::process::Command::new(me)
        .arg(crate::reap::USERNS_PROBE_FLAG)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if entered {
        Check::ok("user namespaces allowed: a pinned script is sealed for its run")
    } else {
        Check::warn(
            "the kernel refuses an unprivileged user namespace: a pinned script is read by path during its run, so a rewrite while it runs is seen only when it ends",
            "allow them (`sysctl kernel.unprivileged_userns_clone=1`, `user.max_user_namespaces` above 0, or on Ubuntu `kernel.apparmor_restrict_unprivileged_userns=0`), or approve scripts for single runs (docs/threat-model.md)",
        )
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

    // 1b. Script sealing (`reap/seal.rs`) needs an unprivileged user namespace.
    out.push(user_namespaces(&me));

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
pub(crate) fn doctor_main(host_prompts: bool) -> Result<i32> {
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
        }
        if c.level != Level::Ok
            && let Some(h) = &c.hint
        {
            say(format!("     hint: {h}"));
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
    use super::entries::command_of;
    use super::entries::gemini_trusts;
    use super::listing::judge_listing;
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
