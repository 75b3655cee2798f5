//! What doctor reads in a host's configuration: keyveil's entry (its command, timeouts), the
//! host's permission for keyveil's tools, and the conditions setup cannot write (folder and
//! project trust, a project server's approval).

use super::Check;
use crate::setup::{Format, Host, HostEnv, parse_value};
use anyhow::Result;
use serde_json::Value;
use std::path::{Path, PathBuf};

pub(super) fn read_value(path: &Path, format: Format) -> Option<Result<Value, String>> {
    let text = crate::setup::read_config(path).ok()??;
    Some(parse_value(format, &text))
}

pub(super) fn json_file(path: &Path) -> Value {
    match read_value(path, Format::Json) {
        Some(Ok(v)) => v,
        _ => Value::Null,
    }
}

/// `(command, args)` of a host entry: `command` + `args`, or OpenCode's command array.
pub(super) fn command_of(entry: &Value) -> (String, Vec<String>) {
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
pub(super) fn timeout_of(host: Host, entry: &Value) -> Option<(f64, &'static str)> {
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
pub(super) fn gemini_trusts(rules: &Value, dir: &Path) -> Option<bool> {
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

pub(super) fn array_has(v: &Value, path: &[&str], want: &[&str]) -> bool {
    path.iter()
        .try_fold(v, |cur, k| cur.get(k))
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .any(|x| x.as_str().is_some_and(|s| want.contains(&s)))
        })
}

/// Host-specific conditions setup cannot write, for a host whose entry was found.
pub(super) fn host_conditions(
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
