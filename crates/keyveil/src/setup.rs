//! `keyveil setup HOST` makes keyveil usable in an agent host: the host's MCP entry that starts
//! `keyveil mcp`, and the host-side permission for keyveil's tools; `setup HOST --remove` undoes
//! it; `keyveil doctor` ([`doctor`]) finds what stops a host from using keyveil.
//!
//! Editing rules (see `docs/mcp.md`, "Wiring it into a host", and `docs/compatibility.md`):
//! - only what keyveil manages is touched: the `keyveil` server entry (and in it only the keys
//!   keyveil writes; its environment is keyveil's as a whole: `env.KEYVEIL_HOME` when a
//!   non-default home is in use and no other variable, since an agent can plant one that points
//!   the trusted entry at another broker), and one named
//!   permission value (`"mcp__keyveil"` in Claude Code's `permissions.allow`, `"keyveil_*"` in
//!   OpenCode's `permission`, ...); every other server, key, comment and the file's formatting
//!   stay as they were (`toml_edit` for TOML, a JSONC concrete syntax tree from `jsonc-parser`
//!   for JSON, so no crate-wide `serde_json` feature changes the audit log's canonical form);
//! - a file that does not parse, or where a key keyveil must edit has another type, is refused
//!   with a message and nothing is written (in any of the host's files);
//! - a changed file is first copied to `FILE.keyveil-backup-<UTC time>`, then replaced
//!   atomically (written beside it, renamed over it; a symlinked file is edited at its target)
//!   with its permissions kept;
//! - running it twice changes nothing the second time;
//! - `--remove` deletes the `keyveil` entry and keyveil's permission values, then the arrays
//!   and objects on their path that this left empty (and a file left as `{}`), nothing else.

pub mod doctor;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use jsonc_parser::ParseOptions;
use jsonc_parser::cst::{CstInputValue, CstObject, CstRootNode};
use serde_json::{Value, json};

pub use doctor::doctor_main;

use crate::output::{Exit, say};

/// Tool-call timeout written for hosts that have one, in seconds: a `run` may wait 50 s for an
/// approval and then run the command.
pub const TOOL_TIMEOUT_SECONDS: u64 = 180;

/// An agent host keyveil can set itself up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Host {
    /// Codex CLI: `~/.codex/config.toml` (`.codex/config.toml` with `--project`).
    Codex,
    /// Claude Code: `~/.claude.json` and `~/.claude/settings.json` (`.mcp.json` and
    /// `.claude/settings.local.json` with `--project`).
    Claude,
    /// Gemini CLI: `~/.gemini/settings.json` (`.gemini/settings.json` with `--project`).
    Gemini,
    /// Antigravity CLI (`agy`): `~/.gemini/config/mcp_config.json` (user scope only).
    Antigravity,
    /// GitHub Copilot CLI: `~/.copilot/mcp-config.json` (user scope only).
    Copilot,
    /// Cursor: `~/.cursor/mcp.json` (`.cursor/mcp.json` with `--project`).
    Cursor,
    /// VS Code: the user profile's `mcp.json` (`.vscode/mcp.json` with `--project`).
    Vscode,
    /// OpenCode: `~/.config/opencode/opencode.json` (`opencode.json` with `--project`).
    Opencode,
}

/// Every host, in the order `doctor` checks them.
pub const HOSTS: [Host; 8] = [
    Host::Codex,
    Host::Claude,
    Host::Gemini,
    Host::Antigravity,
    Host::Copilot,
    Host::Cursor,
    Host::Vscode,
    Host::Opencode,
];

impl Host {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Host::Codex => "codex",
            Host::Claude => "claude",
            Host::Gemini => "gemini",
            Host::Antigravity => "antigravity",
            Host::Copilot => "copilot",
            Host::Cursor => "cursor",
            Host::Vscode => "vscode",
            Host::Opencode => "opencode",
        }
    }

    /// The product's name, for messages.
    pub fn title(self) -> &'static str {
        match self {
            Host::Codex => "Codex CLI",
            Host::Claude => "Claude Code",
            Host::Gemini => "Gemini CLI",
            Host::Antigravity => "Antigravity CLI",
            Host::Copilot => "Copilot CLI",
            Host::Cursor => "Cursor",
            Host::Vscode => "VS Code",
            Host::Opencode => "OpenCode",
        }
    }

    /// Whether the host has a project-scope configuration keyveil can write.
    pub fn has_project_scope(self) -> bool {
        !matches!(self, Host::Antigravity | Host::Copilot)
    }
}

/// Environment a plan depends on (so that tests can give their own).
#[derive(Debug, Clone, Default)]
pub struct HostEnv {
    /// `HOME`.
    pub home: PathBuf,
    /// `CODEX_HOME`, when set and not empty.
    pub codex_home: Option<PathBuf>,
    /// `CLAUDE_CONFIG_DIR`, when set and not empty.
    pub claude_config_dir: Option<PathBuf>,
    /// `COPILOT_HOME`, when set and not empty.
    pub copilot_home: Option<PathBuf>,
    /// `XDG_CONFIG_HOME`, when set and not empty.
    pub xdg_config_home: Option<PathBuf>,
}

impl HostEnv {
    /// This process's environment. Errors: `HOME` is not set.
    pub fn current() -> Result<HostEnv> {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Ok(HostEnv {
            home: home_dir()?,
            codex_home: var("CODEX_HOME"),
            claude_config_dir: var("CLAUDE_CONFIG_DIR"),
            copilot_home: var("COPILOT_HOME"),
            xdg_config_home: var("XDG_CONFIG_HOME"),
        })
    }

    fn xdg_config(&self) -> PathBuf {
        self.xdg_config_home
            .clone()
            .unwrap_or_else(|| self.home.join(".config"))
    }
}

/// What the `keyveil` entry must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Absolute path of the keyveil binary.
    pub command: String,
    /// `KEYVEIL_HOME` to pass, when a non-default home is in use.
    pub keyveil_home: Option<String>,
}

/// A file's syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// TOML (Codex).
    Toml,
    /// JSON with comments and trailing commas.
    Json,
}

/// One thing keyveil keeps in a host's file.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// The object `keyveil` inside the object at `servers` (a key path from the top).
    Entry {
        /// Key path of the servers object (`["mcpServers"]`, `["mcp"]`, ...).
        servers: Vec<&'static str>,
        /// Keys always written, in order.
        fields: Vec<(&'static str, Value)>,
        /// Keys that grant the host's permission for keyveil's tools (not written with
        /// `--host-prompts`).
        grant: Vec<(&'static str, Value)>,
        /// The key of the server's environment (`env`, OpenCode's `environment`).
        env_key: &'static str,
        /// `KEYVEIL_HOME` to put in it.
        keyveil_home: Option<String>,
    },
    /// The string `value` is a member of the array at `path`.
    Member {
        /// Key path of the array.
        path: Vec<&'static str>,
        /// The member.
        value: &'static str,
        /// Whether this grants the host's permission (not written with `--host-prompts`).
        grant: bool,
    },
    /// The object at `path` maps `key` to `value`.
    Key {
        /// Key path of the object.
        path: Vec<&'static str>,
        /// The key inside it.
        key: &'static str,
        /// Its value.
        value: Value,
        /// Whether this grants the host's permission (not written with `--host-prompts`).
        grant: bool,
    },
}

impl Op {
    fn is_grant(&self) -> bool {
        match self {
            Op::Entry { grant, .. } => !grant.is_empty(),
            Op::Member { grant, .. } | Op::Key { grant, .. } => *grant,
        }
    }
}

/// One file of a host's set-up and what keyveil keeps in it.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSpec {
    /// The file.
    pub path: PathBuf,
    /// Its syntax.
    pub format: Format,
    /// What keyveil keeps in it.
    pub ops: Vec<Op>,
}

/// Everything `keyveil setup HOST` writes, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The host.
    pub host: Host,
    /// Whether this is the project scope.
    pub project: bool,
    /// The files, in the order they are written.
    pub files: Vec<FileSpec>,
    /// Why the permission is written (empty when the host has none keyveil can write).
    pub why_grant: &'static str,
    /// What setup cannot do for this host, said after writing.
    pub notes: Vec<String>,
}

fn path_of(base: &[&'static str]) -> Vec<&'static str> {
    base.to_vec()
}

/// The plan of `host` for `entry`: user scope under `env.home`, or project scope in `project`.
///
/// Errors: the host has no project scope keyveil can write (Antigravity, Copilot).
pub fn plan(
    host: Host,
    env: &HostEnv,
    project: Option<&Path>,
    entry: &Entry,
) -> Result<Plan, String> {
    if project.is_some() && !host.has_project_scope() {
        return Err(format!(
            "{} has no project-scope MCP file keyveil writes; run `keyveil setup {}` without --project (it is the user's file)",
            host.title(),
            host.name()
        ));
    }
    let cmd = json!(entry.command);
    let args = json!(["mcp"]);
    let home = entry.keyveil_home.clone();
    let entry_op = |servers: &[&'static str],
                    fields: Vec<(&'static str, Value)>,
                    grant: Vec<(&'static str, Value)>| Op::Entry {
        servers: path_of(servers),
        fields,
        grant,
        env_key: "env",
        keyveil_home: home.clone(),
    };
    let timeout_ms = json!(TOOL_TIMEOUT_SECONDS * 1000);
    let mut notes = Vec::new();
    let (files, why_grant) = match host {
        Host::Codex => {
            let path = match project {
                Some(p) => p.join(".codex/config.toml"),
                None => env
                    .codex_home
                    .as_ref()
                    .map(|h| h.join("config.toml"))
                    .unwrap_or_else(|| env.home.join(".codex/config.toml")),
            };
            if project.is_some() {
                notes.push("Codex reads .codex/config.toml only in a trusted project: trust it when Codex asks (or `[projects.\"<this dir>\"] trust_level = \"trusted\"` in ~/.codex/config.toml)".to_owned());
            }
            (
                vec![FileSpec {
                    path,
                    format: Format::Toml,
                    ops: vec![entry_op(
                        &["mcp_servers"],
                        vec![
                            ("command", cmd),
                            ("args", args),
                            ("tool_timeout_sec", json!(TOOL_TIMEOUT_SECONDS)),
                        ],
                        vec![("default_tools_approval_mode", json!("approve"))],
                    )],
                }],
                "default_tools_approval_mode = \"approve\": Codex calls keyveil's tools without its own approval prompt (with approval_policy = \"never\", as in `codex exec`, it would refuse `run` instead)",
            )
        }
        Host::Claude => {
            let entry_spec = FileSpec {
                path: match project {
                    Some(p) => p.join(".mcp.json"),
                    None => env
                        .claude_config_dir
                        .as_ref()
                        .unwrap_or(&env.home)
                        .join(".claude.json"),
                },
                format: Format::Json,
                ops: vec![entry_op(
                    &["mcpServers"],
                    vec![
                        ("type", json!("stdio")),
                        ("command", cmd),
                        ("args", args),
                        ("alwaysLoad", json!(true)),
                    ],
                    vec![],
                )],
            };
            let mut settings_ops = vec![Op::Member {
                path: vec!["permissions", "allow"],
                value: "mcp__keyveil",
                grant: true,
            }];
            let settings = match project {
                Some(p) => {
                    // A project's .mcp.json server starts only once approved for this user.
                    settings_ops.push(Op::Member {
                        path: vec!["enabledMcpjsonServers"],
                        value: "keyveil",
                        grant: false,
                    });
                    notes.push("Claude Code reads .claude/settings.local.json only in a folder you trusted (its first-run dialog; `claude -p` skips the dialog)".to_owned());
                    p.join(".claude/settings.local.json")
                }
                None => env
                    .claude_config_dir
                    .clone()
                    .unwrap_or_else(|| env.home.join(".claude"))
                    .join("settings.json"),
            };
            (
                vec![
                    entry_spec,
                    FileSpec {
                        path: settings,
                        format: Format::Json,
                        ops: settings_ops,
                    },
                ],
                "permissions.allow \"mcp__keyveil\": Claude Code runs keyveil's tools without its own prompt (`claude -p` refuses a tool it would have to ask about); alwaysLoad: the tools are in the model's list from the first turn, not behind tool search",
            )
        }
        Host::Gemini => {
            notes.push("Gemini CLI starts MCP servers only in a trusted folder: run `gemini` in the project once and trust it (it is saved in ~/.gemini/trustedFolders.json); `keyveil doctor` checks it".to_owned());
            (
                vec![FileSpec {
                    path: match project {
                        Some(p) => p.join(".gemini/settings.json"),
                        None => env.home.join(".gemini/settings.json"),
                    },
                    format: Format::Json,
                    ops: vec![entry_op(
                        &["mcpServers"],
                        vec![("command", cmd), ("args", args), ("timeout", timeout_ms)],
                        vec![("trust", json!(true))],
                    )],
                }],
                "trust: true: Gemini CLI calls keyveil's tools without its own confirmation (headless, it drops a tool that would need one from the model's list)",
            )
        }
        Host::Antigravity => {
            notes.push("Antigravity CLI asks before each tool call unless you allow keyveil's tools in its /permissions (keyveil writes no permission for it: no documented file holds one)".to_owned());
            (
                vec![FileSpec {
                    path: env.home.join(".gemini/config/mcp_config.json"),
                    format: Format::Json,
                    ops: vec![entry_op(
                        &["mcpServers"],
                        vec![("command", cmd), ("args", args)],
                        vec![],
                    )],
                }],
                "",
            )
        }
        Host::Copilot => {
            notes.push("Copilot CLI keeps tool approvals only in its own state: in `copilot -p` add `--allow-tool=keyveil` (its per-user permissions.allow is for organisations only); interactively choose \"always allow\" for keyveil once".to_owned());
            (
                vec![FileSpec {
                    path: env
                        .copilot_home
                        .clone()
                        .unwrap_or_else(|| env.home.join(".copilot"))
                        .join("mcp-config.json"),
                    format: Format::Json,
                    ops: vec![entry_op(
                        &["mcpServers"],
                        vec![
                            ("type", json!("local")),
                            ("command", cmd),
                            ("args", args),
                            ("tools", json!(["*"])),
                            ("timeout", timeout_ms),
                        ],
                        vec![],
                    )],
                }],
                "",
            )
        }
        Host::Cursor => {
            notes.push("Cursor asks before each MCP tool call unless keyveil's tools are on its auto-run allowlist (Settings; `--approve-mcps` for the headless agent); keyveil does not write ~/.cursor/permissions.json because it would replace that whole list".to_owned());
            (
                vec![FileSpec {
                    path: match project {
                        Some(p) => p.join(".cursor/mcp.json"),
                        None => env.home.join(".cursor/mcp.json"),
                    },
                    format: Format::Json,
                    ops: vec![entry_op(
                        &["mcpServers"],
                        vec![("command", cmd), ("args", args)],
                        vec![],
                    )],
                }],
                "",
            )
        }
        Host::Vscode => {
            notes.push("VS Code asks before each tool call; its \"Always allow\" for the keyveil server is kept in VS Code's own state".to_owned());
            let path = match project {
                Some(p) => p.join(".vscode/mcp.json"),
                None if cfg!(target_os = "macos") => env
                    .home
                    .join("Library/Application Support/Code/User/mcp.json"),
                None => env.xdg_config().join("Code/User/mcp.json"),
            };
            (
                vec![FileSpec {
                    path,
                    format: Format::Json,
                    ops: vec![entry_op(
                        &["servers"],
                        vec![("type", json!("stdio")), ("command", cmd), ("args", args)],
                        vec![],
                    )],
                }],
                "",
            )
        }
        Host::Opencode => {
            let dir = match project {
                Some(p) => p.to_path_buf(),
                None => env.xdg_config().join("opencode"),
            };
            // OpenCode reads opencode.jsonc as well; edit the one that exists.
            let path = ["opencode.jsonc", "opencode.json"]
                .iter()
                .map(|n| dir.join(n))
                .find(|p| p.exists())
                .unwrap_or_else(|| dir.join("opencode.json"));
            (
                vec![FileSpec {
                    path,
                    format: Format::Json,
                    ops: vec![
                        Op::Entry {
                            servers: vec!["mcp"],
                            fields: vec![
                                ("type", json!("local")),
                                ("command", json!([entry.command, "mcp"])),
                                ("enabled", json!(true)),
                                ("timeout", timeout_ms),
                            ],
                            grant: vec![],
                            env_key: "environment",
                            keyveil_home: home.clone(),
                        },
                        Op::Key {
                            path: vec!["permission"],
                            key: "keyveil_*",
                            value: json!("allow"),
                            grant: true,
                        },
                    ],
                }],
                "permission \"keyveil_*\": \"allow\": OpenCode runs keyveil's tools without asking, whatever your default permission is",
            )
        }
    };
    Ok(Plan {
        host,
        project: project.is_some(),
        files,
        why_grant,
        notes,
    })
}

/// What an edit does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Write the entry, and the permission unless `host_prompts`; with `host_prompts`, a
    /// permission keyveil wrote before is taken out again.
    Setup {
        /// Keep the host's own prompts.
        host_prompts: bool,
    },
    /// Take out everything keyveil writes.
    Remove,
}

/// Why a configuration file cannot be edited. Nothing is written in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The file is not valid TOML / JSON (with comments).
    #[error("cannot parse {path} as {format}: {detail}")]
    Parse {
        /// The file.
        path: String,
        /// `TOML` or `JSON`.
        format: &'static str,
        /// The parser's message.
        detail: String,
    },
    /// The file parses, but a key keyveil must edit has an unexpected type.
    #[error("{path}: {detail}")]
    Shape {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
}

/// The result of editing one file's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// The new text (equal to the old one when nothing changed); `None` when the file is left
    /// holding nothing (`{}` after `--remove`) and is deleted.
    pub text: Option<String>,
    /// What changed, one line each; empty when the file already was as wanted.
    pub changes: Vec<String>,
}

/// Edits `old` (the file's text, `None` when it does not exist) so that it holds `ops` (or no
/// longer holds them, in [`Mode::Remove`]). Pure: no I/O. `path` only names the file in errors.
///
/// Errors: [`SetupError`] when the text cannot be parsed or has the wrong shape.
pub fn edit(
    format: Format,
    old: Option<&str>,
    ops: &[Op],
    mode: Mode,
    path: &str,
) -> Result<Edit, SetupError> {
    match format {
        Format::Toml => edit_toml(old.unwrap_or(""), ops, mode, path),
        Format::Json => edit_json(old, ops, mode, path),
    }
}

fn dotted(path: &[&str]) -> String {
    path.join(".")
}

// ---------------------------------------------------------------------------------------------
// TOML (Codex)

fn toml_matches(existing: Option<&toml_edit::Item>, want: &Value) -> bool {
    let Some(v) = existing.and_then(toml_edit::Item::as_value) else {
        return false;
    };
    match want {
        Value::String(s) => v.as_str() == Some(s.as_str()),
        Value::Bool(b) => v.as_bool() == Some(*b),
        Value::Number(n) => match (v.as_integer(), v.as_float(), n.as_i64()) {
            (Some(i), _, Some(w)) => i == w,
            (_, Some(f), Some(w)) => (f - w as f64).abs() < f64::EPSILON,
            _ => false,
        },
        Value::Array(items) => v.as_array().is_some_and(|a| {
            a.len() == items.len()
                && a.iter()
                    .zip(items)
                    .all(|(x, y)| x.as_str().is_some() && x.as_str() == y.as_str())
        }),
        _ => false,
    }
}

fn toml_value(want: &Value) -> toml_edit::Value {
    match want {
        Value::String(s) => toml_edit::Value::from(s.as_str()),
        Value::Bool(b) => toml_edit::Value::from(*b),
        Value::Number(n) => toml_edit::Value::from(n.as_i64().unwrap_or_default()),
        Value::Array(items) => {
            let mut a = toml_edit::Array::new();
            for i in items {
                a.push(i.as_str().unwrap_or_default());
            }
            toml_edit::Value::Array(a)
        }
        other => toml_edit::Value::from(other.to_string()),
    }
}

fn edit_toml(old: &str, ops: &[Op], mode: Mode, path: &str) -> Result<Edit, SetupError> {
    let shape = |detail: String| SetupError::Shape {
        path: path.to_owned(),
        detail,
    };
    let mut doc: toml_edit::DocumentMut =
        old.parse()
            .map_err(|e: toml_edit::TomlError| SetupError::Parse {
                path: path.to_owned(),
                format: "TOML",
                detail: e.to_string().trim().replace('\n', " "),
            })?;
    let mut changes = Vec::new();
    for op in ops {
        let Op::Entry {
            servers,
            fields,
            grant,
            env_key,
            keyveil_home,
        } = op
        else {
            return Err(shape(
                "only server entries are kept in TOML files".to_owned(),
            ));
        };
        let [servers_key] = servers.as_slice() else {
            return Err(shape("nested server tables are not supported".to_owned()));
        };
        let root = doc.as_table_mut();
        if mode == Mode::Remove {
            let Some(servers_item) = root.get_mut(servers_key) else {
                continue;
            };
            let Some(servers) = servers_item.as_table_like_mut() else {
                continue;
            };
            if servers.remove("keyveil").is_some() {
                changes.push(format!("removed [{servers_key}.keyveil]"));
                if servers.is_empty() {
                    root.remove(servers_key);
                }
            }
            continue;
        }
        let Mode::Setup { host_prompts } = mode else {
            continue;
        };
        if !root.contains_key(servers_key) {
            let mut t = toml_edit::Table::new();
            t.set_implicit(true);
            root.insert(servers_key, toml_edit::Item::Table(t));
        }
        let servers_item = root
            .get_mut(servers_key)
            .ok_or_else(|| shape(format!("{servers_key} vanished")))?;
        let inline_servers = servers_item.is_inline_table();
        let servers = servers_item
            .as_table_like_mut()
            .ok_or_else(|| shape(format!("`{servers_key}` is not a table")))?;
        if servers.get("keyveil").is_none() {
            let item = if inline_servers {
                toml_edit::Item::Value(toml_edit::Value::InlineTable(toml_edit::InlineTable::new()))
            } else {
                toml_edit::Item::Table(toml_edit::Table::new())
            };
            servers.insert("keyveil", item);
            changes.push(format!("added [{servers_key}.keyveil]"));
        }
        let kv = servers
            .get_mut("keyveil")
            .and_then(toml_edit::Item::as_table_like_mut)
            .ok_or_else(|| shape(format!("`{servers_key}.keyveil` is not a table")))?;
        for (key, want) in fields {
            if !toml_matches(kv.get(key), want) {
                kv.insert(key, toml_edit::Item::Value(toml_value(want)));
                changes.push(format!("set {key} = {want}"));
            }
        }
        for (key, want) in grant {
            if host_prompts {
                if toml_matches(kv.get(key), want) {
                    kv.remove(key);
                    changes.push(format!("removed {key} = {want} (the host's prompts stay)"));
                }
            } else if !toml_matches(kv.get(key), want) {
                kv.insert(key, toml_edit::Item::Value(toml_value(want)));
                changes.push(format!("set {key} = {want}"));
            }
        }
        // The entry's environment is keyveil's as a whole (see `edit_json`): only what setup
        // writes stays.
        if keyveil_home.is_some() && kv.get(env_key).is_none() {
            kv.insert(
                env_key,
                toml_edit::Item::Value(
                    toml_edit::Value::InlineTable(toml_edit::InlineTable::new()),
                ),
            );
        }
        if let Some(item) = kv.get_mut(env_key) {
            let env = item.as_table_like_mut().ok_or_else(|| {
                shape(format!("`{servers_key}.keyveil.{env_key}` is not a table"))
            })?;
            let planted: Vec<String> = env
                .iter()
                .map(|(k, _)| k.to_owned())
                .filter(|k| keyveil_home.is_none() || k != "KEYVEIL_HOME")
                .collect();
            for k in planted {
                env.remove(&k);
                changes.push(format!(
                    "removed {env_key}.{k} (keyveil's entry passes only what setup writes)"
                ));
            }
            if let Some(h) = keyveil_home {
                let want = json!(h);
                if !toml_matches(env.get("KEYVEIL_HOME"), &want) {
                    env.insert("KEYVEIL_HOME", toml_edit::Item::Value(toml_value(&want)));
                    changes.push(format!("set {env_key}.KEYVEIL_HOME = {want}"));
                }
            } else {
                kv.remove(env_key);
            }
        }
    }
    let text = if changes.is_empty() {
        Some(old.to_owned())
    } else {
        let t = doc.to_string();
        // A file that held only keyveil's entry goes with it.
        (mode != Mode::Remove || !t.trim().is_empty()).then_some(t)
    };
    Ok(Edit { text, changes })
}

// ---------------------------------------------------------------------------------------------
// JSON with comments

/// What keyveil accepts in a JSON configuration file: comments and trailing commas (VS Code,
/// Gemini CLI and OpenCode allow them), nothing looser (that would be a file the host cannot
/// read).
fn json_options() -> ParseOptions {
    ParseOptions {
        allow_comments: true,
        allow_trailing_commas: true,
        allow_loose_object_property_names: false,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        allow_unary_plus_numbers: false,
        allow_bare_decimal_point_numbers: false,
        allow_non_finite_numbers: false,
        allow_extended_string_escapes: false,
    }
}

fn cst_input(v: &Value) -> CstInputValue {
    match v {
        Value::Null => CstInputValue::Null,
        Value::Bool(b) => CstInputValue::Bool(*b),
        Value::Number(n) => CstInputValue::Number(n.to_string()),
        Value::String(s) => CstInputValue::String(s.clone()),
        Value::Array(a) => CstInputValue::Array(a.iter().map(cst_input).collect()),
        Value::Object(o) => {
            CstInputValue::Object(o.iter().map(|(k, v)| (k.clone(), cst_input(v))).collect())
        }
    }
}

/// The object under `key` in `obj`: created when missing and `create`, `None` when missing and
/// not `create`.
fn child_object(
    obj: &CstObject,
    key: &str,
    create: bool,
    shape: &dyn Fn(String) -> SetupError,
    what: &str,
) -> Result<Option<CstObject>, SetupError> {
    match obj.get(key) {
        Some(p) => p
            .object_value()
            .map(Some)
            .ok_or_else(|| shape(format!("`{what}` is not an object"))),
        None if create => {
            let p = obj.append(key, CstInputValue::Object(Vec::new()));
            p.object_value()
                .map(Some)
                .ok_or_else(|| shape(format!("cannot create `{what}`")))
        }
        None => Ok(None),
    }
}

/// The object at `path` under `root` (each step created when `create`).
fn object_at(
    root: &CstObject,
    path: &[&str],
    create: bool,
    shape: &dyn Fn(String) -> SetupError,
) -> Result<Option<CstObject>, SetupError> {
    let mut cur = root.clone();
    for (i, k) in path.iter().enumerate() {
        let what = dotted(path.get(..=i).unwrap_or(path));
        match child_object(&cur, k, create, shape, &what)? {
            Some(o) => cur = o,
            None => return Ok(None),
        }
    }
    Ok(Some(cur))
}

/// Removes the objects on `path` (deepest first) that are empty.
fn prune(root: &CstObject, path: &[&str]) {
    for depth in (1..=path.len()).rev() {
        let Some((last, parent_path)) = path.get(..depth).and_then(<[&str]>::split_last) else {
            return;
        };
        let parent = match object_at(root, parent_path, false, &|d| SetupError::Shape {
            path: String::new(),
            detail: d,
        }) {
            Ok(Some(p)) => p,
            _ => return,
        };
        let Some(prop) = parent.get(last) else {
            continue;
        };
        let empty = match prop.value() {
            Some(v) => match (v.as_object(), v.as_array()) {
                (Some(o), _) => o.properties().is_empty(),
                (_, Some(a)) => a.elements().is_empty(),
                _ => false,
            },
            None => false,
        };
        if !empty {
            return;
        }
        prop.remove();
    }
}

fn json_value(prop: Option<jsonc_parser::cst::CstObjectProp>) -> Option<Value> {
    prop.and_then(|p| p.value())
        .and_then(|v| v.to_serde_value())
}

fn edit_json(old: Option<&str>, ops: &[Op], mode: Mode, path: &str) -> Result<Edit, SetupError> {
    let shape = |detail: String| SetupError::Shape {
        path: path.to_owned(),
        detail,
    };
    let source = match old {
        Some(t) if !t.trim().is_empty() => t,
        _ => "{}\n",
    };
    let root = CstRootNode::parse(source, &json_options()).map_err(|e| SetupError::Parse {
        path: path.to_owned(),
        format: "JSON",
        detail: e.to_string(),
    })?;
    let obj = match root.value() {
        None => root.object_value_or_set(),
        Some(v) => v
            .as_object()
            .ok_or_else(|| shape("the top level is not a JSON object".to_owned()))?,
    };
    let mut changes = Vec::new();
    for op in ops {
        let remove_grant = matches!(mode, Mode::Setup { host_prompts: true }) && op.is_grant();
        match op {
            Op::Entry {
                servers,
                fields,
                grant,
                env_key,
                keyveil_home,
            } => {
                let what = format!("{}.keyveil", dotted(servers));
                if mode == Mode::Remove {
                    let Some(s) = object_at(&obj, servers, false, &shape)? else {
                        continue;
                    };
                    if let Some(p) = s.get("keyveil") {
                        p.remove();
                        changes.push(format!("removed {what}"));
                        prune(&obj, servers);
                    }
                    continue;
                }
                let s = object_at(&obj, servers, true, &shape)?
                    .ok_or_else(|| shape(format!("cannot create `{}`", dotted(servers))))?;
                let created = s.get("keyveil").is_none();
                let kv = child_object(&s, "keyveil", true, &shape, &what)?
                    .ok_or_else(|| shape(format!("cannot create `{what}`")))?;
                if created {
                    changes.push(format!("added {what}"));
                }
                for (k, want) in fields.iter().chain(grant.iter()) {
                    let is_grant = grant.iter().any(|(g, _)| g == k);
                    let current = kv.get(k);
                    let have = json_value(current.clone());
                    if is_grant && remove_grant {
                        if have.as_ref() == Some(want) {
                            if let Some(p) = current {
                                p.remove();
                            }
                            changes.push(format!("removed {k} = {want} (the host's prompts stay)"));
                        }
                        continue;
                    }
                    if have.as_ref() != Some(want) {
                        match current {
                            Some(p) => p.set_value(cst_input(want)),
                            None => {
                                kv.append(k, cst_input(want));
                            }
                        }
                        changes.push(format!("set {k} = {want}"));
                    }
                }
                // The entry's environment is keyveil's as a whole: setup is about to give this
                // entry the host's permission, and a variable in it decides which broker the
                // server talks to (`KEYVEIL_HOME`, `XDG_DATA_HOME`, `HOME`) or what it loads
                // (`LD_PRELOAD`). An agent can plant any of them, so the entry keeps exactly
                // what setup writes: `KEYVEIL_HOME` when a non-default home is in use, nothing
                // otherwise.
                let env_what = format!("{what}.{env_key}");
                if let Some(env) =
                    child_object(&kv, env_key, keyveil_home.is_some(), &shape, &env_what)?
                {
                    for p in env.properties() {
                        let name = p.name().and_then(|n| n.decoded_value().ok());
                        if keyveil_home.is_some() && name.as_deref() == Some("KEYVEIL_HOME") {
                            continue;
                        }
                        let name = name.unwrap_or_else(|| "?".to_owned());
                        p.remove();
                        changes.push(format!(
                            "removed {env_key}.{name} (keyveil's entry passes only what setup writes)"
                        ));
                    }
                    if let Some(h) = keyveil_home {
                        let want = json!(h);
                        let current = env.get("KEYVEIL_HOME");
                        if json_value(current.clone()).as_ref() != Some(&want) {
                            match current {
                                Some(p) => p.set_value(cst_input(&want)),
                                None => {
                                    env.append("KEYVEIL_HOME", cst_input(&want));
                                }
                            }
                            changes.push(format!("set {env_key}.KEYVEIL_HOME = {want}"));
                        }
                    } else if let Some(p) = kv.get(env_key) {
                        p.remove();
                    }
                }
            }
            Op::Member {
                path: at, value, ..
            } => {
                let Some((last, parent_path)) = at.split_last() else {
                    continue;
                };
                let what = dotted(at);
                let want = json!(value);
                let absent = mode == Mode::Remove || remove_grant;
                let Some(parent) = object_at(&obj, parent_path, !absent, &shape)? else {
                    continue;
                };
                let arr = match parent.get(last) {
                    Some(p) => Some(
                        p.array_value()
                            .ok_or_else(|| shape(format!("`{what}` is not an array")))?,
                    ),
                    None if absent => None,
                    None => parent
                        .append(last, CstInputValue::Array(Vec::new()))
                        .array_value(),
                };
                let Some(arr) = arr else {
                    continue;
                };
                let found: Vec<_> = arr
                    .elements()
                    .into_iter()
                    .filter(|e| e.to_serde_value().as_ref() == Some(&want))
                    .collect();
                if absent {
                    if !found.is_empty() {
                        for e in found {
                            e.remove();
                        }
                        changes.push(format!(
                            "removed {want} from {what}{}",
                            if remove_grant {
                                " (the host's prompts stay)"
                            } else {
                                ""
                            }
                        ));
                        prune(&obj, at);
                    }
                } else if found.is_empty() {
                    arr.append(cst_input(&want));
                    changes.push(format!("added {want} to {what}"));
                }
            }
            Op::Key {
                path: at,
                key,
                value,
                ..
            } => {
                let what = format!("{}.{key:?}", dotted(at));
                let absent = mode == Mode::Remove || remove_grant;
                let o = match object_at(&obj, at, !absent, &shape) {
                    Ok(o) => o,
                    Err(_) if absent => None,
                    Err(_) => {
                        return Err(shape(format!(
                            "`{}` is not an object, so {what} cannot be added (use --host-prompts to leave it alone)",
                            dotted(at)
                        )));
                    }
                };
                let Some(o) = o else {
                    continue;
                };
                let current = o.get(key);
                let have = json_value(current.clone());
                if absent {
                    if have.as_ref() == Some(value) {
                        if let Some(p) = current {
                            p.remove();
                        }
                        changes.push(format!(
                            "removed {what} = {value}{}",
                            if remove_grant {
                                " (the host's prompts stay)"
                            } else {
                                ""
                            }
                        ));
                        prune(&obj, at);
                    }
                } else if have.as_ref() != Some(value) {
                    match current {
                        Some(p) => p.set_value(cst_input(value)),
                        None => {
                            o.append(key, cst_input(value));
                        }
                    }
                    changes.push(format!("set {what} = {value}"));
                }
            }
        }
    }
    let text = if changes.is_empty() {
        old.map(str::to_owned)
    } else {
        let mut t = root.to_string();
        if !t.ends_with('\n') {
            t.push('\n');
        }
        if mode == Mode::Remove && t.trim() == "{}" {
            None
        } else {
            Some(t)
        }
    };
    Ok(Edit { text, changes })
}

// ---------------------------------------------------------------------------------------------
// Reading a file back (doctor)

/// A configuration text as JSON (TOML converted), for reading back.
///
/// Errors: the text does not parse (the parser's message).
pub fn parse_value(format: Format, text: &str) -> Result<Value, String> {
    match format {
        Format::Toml => {
            let doc: toml_edit::DocumentMut = text
                .parse()
                .map_err(|e: toml_edit::TomlError| e.to_string().trim().replace('\n', " "))?;
            Ok(toml_to_json(doc.as_item()))
        }
        Format::Json => {
            if text.trim().is_empty() {
                return Ok(json!({}));
            }
            let root = CstRootNode::parse(text, &json_options()).map_err(|e| e.to_string())?;
            Ok(root
                .value()
                .and_then(|v| v.to_serde_value())
                .unwrap_or(Value::Null))
        }
    }
}

fn toml_to_json(item: &toml_edit::Item) -> Value {
    match item {
        toml_edit::Item::None => Value::Null,
        toml_edit::Item::Value(v) => toml_value_to_json(v),
        toml_edit::Item::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.to_owned(), toml_to_json(v)))
                .collect(),
        ),
        toml_edit::Item::ArrayOfTables(a) => Value::Array(
            a.iter()
                .map(|t| toml_to_json(&toml_edit::Item::Table(t.clone())))
                .collect(),
        ),
    }
}

fn toml_value_to_json(v: &toml_edit::Value) -> Value {
    match v {
        toml_edit::Value::String(s) => json!(s.value()),
        toml_edit::Value::Integer(i) => json!(i.value()),
        toml_edit::Value::Float(f) => json!(f.value()),
        toml_edit::Value::Boolean(b) => json!(b.value()),
        toml_edit::Value::Datetime(d) => json!(d.value().to_string()),
        toml_edit::Value::Array(a) => Value::Array(a.iter().map(toml_value_to_json).collect()),
        toml_edit::Value::InlineTable(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.to_owned(), toml_value_to_json(v)))
                .collect(),
        ),
    }
}

fn value_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.get(k))
}

/// What an op asks for, as found in a file's parsed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// A server entry: the entry object, `None` when absent.
    Entry(Option<Value>),
    /// A permission or membership: whether it holds.
    Holds(bool),
}

/// Reads what `op` asks for in `v` (a whole file, from [`parse_value`]).
pub fn find(op: &Op, v: &Value) -> Found {
    match op {
        Op::Entry { servers, .. } => {
            Found::Entry(value_at(v, servers).and_then(|s| s.get("keyveil")).cloned())
        }
        Op::Member { path, value, .. } => Found::Holds(
            value_at(v, path)
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(value))),
        ),
        Op::Key {
            path, key, value, ..
        } => Found::Holds(value_at(v, path).and_then(|o| o.get(key)) == Some(value)),
    }
}

// ---------------------------------------------------------------------------------------------
// `keyveil setup`

/// The running binary, canonical.
pub fn this_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find keyveil's own executable")?;
    Ok(std::fs::canonicalize(&exe).unwrap_or(exe))
}

fn home_dir() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| {
            Exit {
                code: 1,
                message: "HOME is not set, so the host's configuration file cannot be found".into(),
            }
            .into()
        })
}

/// The entry for this binary and this process's `KEYVEIL_HOME`.
pub fn entry_here() -> Result<Entry> {
    let command = this_binary()?.to_string_lossy().into_owned();
    let keyveil_home = std::env::var_os("KEYVEIL_HOME")
        .filter(|h| !h.is_empty())
        .map(|h| {
            let p = PathBuf::from(h);
            std::path::absolute(&p)
                .unwrap_or(p)
                .to_string_lossy()
                .into_owned()
        });
    Ok(Entry {
        command,
        keyveil_home,
    })
}

fn backup_name(path: &Path) -> PathBuf {
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let base = format!("{}.keyveil-backup-{stamp}", path.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 2;
    while candidate.exists() {
        candidate = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    candidate
}

/// Replaces `path` with `text` atomically, keeping its permissions.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.keyveil-tmp-{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if let Ok(meta) = std::fs::metadata(path) {
            std::fs::set_permissions(&tmp, meta.permissions())?;
        }
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// What `keyveil setup` was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupArgs {
    /// The host.
    pub host: Host,
    /// Only print what would change.
    pub print: bool,
    /// The project's files in the current directory.
    pub project: bool,
    /// Keep the host's own prompts: write no permission.
    pub host_prompts: bool,
    /// Undo what setup writes.
    pub remove: bool,
}

/// `keyveil setup HOST [--print] [--project] [--host-prompts] [--remove]`.
pub fn setup_main(a: SetupArgs) -> Result<i32> {
    let host = a.host;
    let entry = entry_here()?;
    let env = HostEnv::current()?;
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let plan = plan(host, &env, a.project.then_some(cwd.as_path()), &entry).map_err(|e| Exit {
        code: 2,
        message: format!("{e}\nhint: nothing was changed"),
    })?;
    let mode = if a.remove {
        Mode::Remove
    } else {
        Mode::Setup {
            host_prompts: a.host_prompts,
        }
    };
    let again = format!(
        "keyveil setup {}{}{}",
        host.name(),
        if a.project { " --project" } else { "" },
        if a.remove { " --remove" } else { "" }
    );
    // Every file is read and edited before any is written: one that cannot be edited leaves
    // all of them as they were.
    let mut edits = Vec::new();
    for f in &plan.files {
        // Edit a symlinked file (dotfile managers) at its target.
        let real = std::fs::canonicalize(&f.path).unwrap_or_else(|_| f.path.clone());
        let old = match read_config(&real) {
            Ok(t) => t,
            Err(e) => {
                return Err(Exit {
                    code: 1,
                    message: format!(
                        "cannot read {}: {e}; nothing was changed\nhint: a host's configuration must be a regular file of at most 16 MiB; move it aside and run `{again}` again",
                        real.display()
                    ),
                }
                .into());
            }
        };
        let shown = f.path.display().to_string();
        let edited = edit(f.format, old.as_deref(), &f.ops, mode, &shown).map_err(|e| Exit {
            code: 1,
            message: format!(
                "{e}; nothing was changed\nhint: fix the file (or move it aside) and run `{again}` again, or edit it by hand: `keyveil setup {} --print` shows what keyveil writes",
                host.name()
            ),
        })?;
        edits.push((f, real, shown, old, edited));
    }
    let name = host.name();
    if a.print {
        for (f, _, shown, _, edited) in &edits {
            if !a.remove {
                say(format!("# {name} ({shown}): what keyveil keeps there"));
                if let Ok(e) = edit(f.format, None, &f.ops, mode, "") {
                    say(e.text.unwrap_or_default().trim_end());
                }
            }
            if edited.changes.is_empty() {
                say(format!("# {shown}: nothing to change"));
            } else {
                say(format!(
                    "# {shown} would change: {}",
                    edited.changes.join("; ")
                ));
            }
        }
        return Ok(0);
    }
    if edits.iter().all(|(.., e)| e.changes.is_empty()) {
        say(if a.remove {
            format!("{name}: keyveil is not set up there; nothing changed")
        } else {
            format!("{name}: already set up; nothing changed")
        });
        if !a.remove {
            for n in &plan.notes {
                say(format!("note: {n}"));
            }
        }
        return Ok(0);
    }
    for (_, real, shown, old, edited) in &edits {
        if edited.changes.is_empty() {
            continue;
        }
        let backup = match old {
            Some(text) => {
                let b = backup_name(real);
                std::fs::write(&b, text)
                    .with_context(|| format!("cannot write {}", b.display()))?;
                if let Ok(meta) = std::fs::metadata(real) {
                    let _ = std::fs::set_permissions(&b, meta.permissions());
                }
                Some(b)
            }
            None => None,
        };
        let verb = match (&edited.text, old) {
            (Some(t), _) => {
                write_atomic(real, t)?;
                if old.is_some() { "updated" } else { "created" }
            }
            (None, Some(_)) => {
                std::fs::remove_file(real)
                    .with_context(|| format!("cannot remove {}", real.display()))?;
                "removed (it held nothing else)"
            }
            (None, None) => continue,
        };
        say(format!("{name}: {verb} {shown}"));
        for c in &edited.changes {
            say(format!("  {c}"));
        }
        if let Some(b) = backup {
            say(format!("  backup: {}", b.display()));
        }
    }
    if a.remove {
        say(format!(
            "next: restart {} (it no longer starts keyveil)",
            host.title()
        ));
        return Ok(0);
    }
    if !plan.why_grant.is_empty() {
        if a.host_prompts {
            say(format!(
                "why: --host-prompts: {} asks you before each keyveil tool call, besides keyveil's own approval of every run",
                host.title()
            ));
        } else {
            say(format!(
                "why: {}. keyveil's own approval (a factor the agent cannot produce) is the gate for every run; a second prompt in the host only trains clicking yes. `--host-prompts` keeps the host's prompts.",
                plan.why_grant
            ));
        }
    }
    for n in &plan.notes {
        say(format!("note: {n}"));
    }
    say(format!(
        "next: restart {} so that it starts `keyveil mcp`; `keyveil doctor` checks the set-up",
        host.title()
    ));
    Ok(0)
}

/// Largest host configuration file setup reads (bytes): host configs are a few KiB.
const MAX_CONFIG: u64 = 16 << 20;

/// Reads a host configuration file: `None` when there is none. Never blocks and never reads
/// without bound: a FIFO, socket or device planted in its place (another process of the user
/// can put one there) is refused, like a file over [`MAX_CONFIG`] bytes.
pub(crate) fn read_config(path: &Path) -> std::io::Result<Option<String>> {
    use std::io::Read;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let (f, m) = match crate::pin::open_regular(path) {
        Ok(x) => x,
        Err(crate::pin::Opened::Odd(kind)) => {
            return Err(std::io::Error::other(format!(
                "it is {kind}, not a regular file"
            )));
        }
        Err(crate::pin::Opened::Missing) => {
            return Err(std::io::Error::other(
                "it cannot be opened as a regular file",
            ));
        }
    };
    if m.len() > MAX_CONFIG {
        return Err(std::io::Error::other(format!(
            "it holds {} bytes, more than setup reads ({MAX_CONFIG})",
            m.len()
        )));
    }
    let mut text = String::new();
    f.take(MAX_CONFIG).read_to_string(&mut text)?;
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn entry() -> Entry {
        Entry {
            command: "/opt/kv/bin/keyveil".into(),
            keyveil_home: None,
        }
    }

    fn env() -> HostEnv {
        HostEnv {
            home: PathBuf::from("/home/u"),
            ..HostEnv::default()
        }
    }

    fn setup() -> Mode {
        Mode::Setup {
            host_prompts: false,
        }
    }

    fn spec(host: Host, i: usize) -> FileSpec {
        plan(host, &env(), None, &entry()).unwrap().files[i].clone()
    }

    #[test]
    fn toml_keeps_other_servers_and_comments_and_is_idempotent() {
        let f = spec(Host::Codex, 0);
        let old = "# my codex config\nmodel = \"o3\"   # pinned\n\n[mcp_servers.other]\ncommand = \"x\"  # keep me\nargs = [ \"a\",\"b\" ]\n";
        let e = edit(f.format, Some(old), &f.ops, setup(), "c.toml").unwrap();
        let text = e.text.unwrap();
        assert!(text.starts_with(old), "{text}");
        assert!(text.contains("[mcp_servers.keyveil]"), "{text}");
        assert!(text.contains("tool_timeout_sec = 180"), "{text}");
        assert!(
            text.contains("default_tools_approval_mode = \"approve\""),
            "{text}"
        );
        let again = edit(f.format, Some(&text), &f.ops, setup(), "c.toml").unwrap();
        assert!(again.changes.is_empty(), "{:?}", again.changes);
        assert_eq!(again.text.as_deref(), Some(text.as_str()));
        // Removing gives the original back, byte for byte.
        let gone = edit(f.format, Some(&text), &f.ops, Mode::Remove, "c.toml").unwrap();
        assert_eq!(gone.text.as_deref(), Some(old));
    }

    #[test]
    fn json_keeps_comments_and_order() {
        let f = spec(Host::Cursor, 0);
        let old = "{\n  // servers\n  \"zeta\": 1,\n  \"mcpServers\": {\n    \"other\": { \"command\": \"x\" }, // trailing\n  },\n  \"alpha\": true\n}\n";
        let e = edit(f.format, Some(old), &f.ops, setup(), "m.json").unwrap();
        let text = e.text.unwrap();
        assert!(text.contains("// servers"));
        assert!(text.contains("// trailing"));
        let z = text.find("zeta").unwrap();
        let a = text.find("alpha").unwrap();
        assert!(z < a);
        assert!(text.contains("\"keyveil\""), "{text}");
        let again = edit(f.format, Some(&text), &f.ops, setup(), "m.json").unwrap();
        assert!(again.changes.is_empty(), "{:?}", again.changes);
    }

    #[test]
    fn unparsable_and_wrong_shapes_are_refused() {
        let claude = spec(Host::Claude, 0);
        let settings = spec(Host::Claude, 1);
        let codex = spec(Host::Codex, 0);
        let opencode = spec(Host::Opencode, 0);
        let ed = |f: &FileSpec, t: &str| edit(f.format, Some(t), &f.ops, setup(), "x");
        assert!(matches!(
            ed(&claude, "{ \"a\": "),
            Err(SetupError::Parse { .. })
        ));
        assert!(matches!(
            ed(&claude, "{ \"mcpServers\": [] }"),
            Err(SetupError::Shape { .. })
        ));
        assert!(matches!(
            ed(&settings, "{ \"permissions\": { \"allow\": \"mcp__x\" } }"),
            Err(SetupError::Shape { .. })
        ));
        assert!(matches!(
            ed(&opencode, "{ \"permission\": \"ask\" }"),
            Err(SetupError::Shape { .. })
        ));
        assert!(matches!(
            ed(&codex, "mcp_servers = 3\n"),
            Err(SetupError::Shape { .. })
        ));
        assert!(matches!(
            ed(&codex, "[mcp_servers\n"),
            Err(SetupError::Parse { .. })
        ));
    }

    /// Every host: setup then remove on a file holding only other things gives the file back;
    /// setup then `--host-prompts` takes the permission out and leaves the entry.
    #[test]
    fn every_host_round_trips_and_host_prompts_drops_only_the_grant() {
        for host in HOSTS {
            let p = plan(host, &env(), None, &entry()).unwrap();
            for f in &p.files {
                let old = match f.format {
                    Format::Toml => "# mine\nmodel = \"o3\"\n".to_owned(),
                    Format::Json => "{\n  // mine\n  \"theme\": \"dark\"\n}\n".to_owned(),
                };
                let set = edit(f.format, Some(&old), &f.ops, setup(), "x").unwrap();
                let text = set.text.unwrap();
                assert!(!set.changes.is_empty(), "{host:?}");
                let v = parse_value(f.format, &text).unwrap();
                for op in &f.ops {
                    match find(op, &v) {
                        Found::Entry(e) => assert!(e.is_some(), "{host:?}: {text}"),
                        Found::Holds(h) => assert!(h, "{host:?} {op:?}: {text}"),
                    }
                }
                let gone = edit(f.format, Some(&text), &f.ops, Mode::Remove, "x").unwrap();
                assert_eq!(gone.text.as_deref(), Some(old.as_str()), "{host:?}");
                // From nothing and back to nothing: the file goes.
                if f.format == Format::Json {
                    let fresh = edit(f.format, None, &f.ops, setup(), "x").unwrap();
                    let gone =
                        edit(f.format, fresh.text.as_deref(), &f.ops, Mode::Remove, "x").unwrap();
                    assert_eq!(gone.text, None, "{host:?}");
                }
                let hp = edit(
                    f.format,
                    Some(&text),
                    &f.ops,
                    Mode::Setup { host_prompts: true },
                    "x",
                )
                .unwrap();
                let v = parse_value(f.format, hp.text.as_deref().unwrap()).unwrap();
                for op in &f.ops {
                    match (find(op, &v), op.is_grant()) {
                        (Found::Entry(Some(e)), true) => {
                            if let Op::Entry { grant, .. } = op {
                                for (k, _) in grant {
                                    assert!(e.get(k).is_none(), "{host:?}: {e}");
                                }
                            }
                        }
                        (Found::Entry(e), false) => assert!(e.is_some()),
                        (Found::Holds(h), g) => assert_eq!(h, !g, "{host:?} {op:?}"),
                        (Found::Entry(None), true) => panic!("{host:?}: entry gone"),
                    }
                }
            }
        }
    }

    #[test]
    fn project_scope_only_where_the_host_has_one() {
        let proj = Path::new("/w/p");
        for host in HOSTS {
            let r = plan(host, &env(), Some(proj), &entry());
            assert_eq!(r.is_ok(), host.has_project_scope(), "{host:?}");
            if let Ok(p) = r {
                assert!(p.files.iter().all(|f| f.path.starts_with(proj)), "{p:?}");
            }
        }
    }
}
