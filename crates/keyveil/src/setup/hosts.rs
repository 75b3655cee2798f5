//! The agent hosts keyveil knows and, for each, setup's plan: which files hold its MCP entry and
//! its permission for keyveil's tools, and the edits ([`Op`]) that register keyveil there.

use super::home_dir;
use anyhow::Result;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Tool-call timeout written for hosts that have one, in seconds: a `run` may wait 50 s for an
/// approval and then run the command.
pub(crate) const TOOL_TIMEOUT_SECONDS: u64 = 180;

/// An agent host keyveil can set itself up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Host {
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
pub(crate) const HOSTS: [Host; 8] = [
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
    pub(crate) fn name(self) -> &'static str {
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
    pub(crate) fn title(self) -> &'static str {
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
    pub(crate) fn has_project_scope(self) -> bool {
        !matches!(self, Host::Antigravity | Host::Copilot)
    }
}

/// Environment a plan depends on (so that tests can give their own).
#[derive(Debug, Clone, Default)]
pub(crate) struct HostEnv {
    /// `HOME`.
    pub(crate) home: PathBuf,
    /// `CODEX_HOME`, when set and not empty.
    pub(crate) codex_home: Option<PathBuf>,
    /// `CLAUDE_CONFIG_DIR`, when set and not empty.
    pub(crate) claude_config_dir: Option<PathBuf>,
    /// `COPILOT_HOME`, when set and not empty.
    pub(crate) copilot_home: Option<PathBuf>,
    /// `XDG_CONFIG_HOME`, when set and not empty.
    pub(crate) xdg_config_home: Option<PathBuf>,
}

impl HostEnv {
    /// This process's environment. Errors: `HOME` is not set.
    pub(crate) fn current() -> Result<HostEnv> {
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

    pub(super) fn xdg_config(&self) -> PathBuf {
        self.xdg_config_home
            .clone()
            .unwrap_or_else(|| self.home.join(".config"))
    }
}

/// What the `keyveil` entry must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Absolute path of the keyveil binary.
    pub(crate) command: String,
    /// `KEYVEIL_HOME` to pass, when a non-default home is in use.
    pub(crate) keyveil_home: Option<String>,
}

/// A file's syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// TOML (Codex).
    Toml,
    /// JSON with comments and trailing commas.
    Json,
}

/// One thing keyveil keeps in a host's file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
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
    pub(super) fn is_grant(&self) -> bool {
        match self {
            Op::Entry { grant, .. } => !grant.is_empty(),
            Op::Member { grant, .. } | Op::Key { grant, .. } => *grant,
        }
    }
}

/// One file of a host's set-up and what keyveil keeps in it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FileSpec {
    /// The file.
    pub(crate) path: PathBuf,
    /// Its syntax.
    pub(crate) format: Format,
    /// What keyveil keeps in it.
    pub(crate) ops: Vec<Op>,
}

/// Everything `keyveil setup HOST` writes, and why.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    /// The host.
    pub(crate) host: Host,
    /// Whether this is the project scope.
    pub(crate) project: bool,
    /// The files, in the order they are written.
    pub(crate) files: Vec<FileSpec>,
    /// Why the permission is written (empty when the host has none keyveil can write).
    pub(crate) why_grant: &'static str,
    /// What setup cannot do for this host, said after writing.
    pub(crate) notes: Vec<String>,
}

pub(super) fn path_of(base: &[&'static str]) -> Vec<&'static str> {
    base.to_vec()
}

/// The plan of `host` for `entry`: user scope under `env.home`, or project scope in `project`.
///
/// Errors: the host has no project scope keyveil can write (Antigravity, Copilot).
pub(crate) fn plan(
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
