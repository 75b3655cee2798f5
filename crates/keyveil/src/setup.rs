//! `keyveil setup HOST` writes an agent host's MCP configuration; `keyveil doctor` checks the
//! whole set-up end to end.
//!
//! Editing rules (see `docs/mcp.md`, "Wiring it into a host"):
//! - only the `keyveil` entry is touched, and in it only the keys keyveil manages (`command`,
//!   `args`, the host's timeout and `type`, `env.KEYVEIL_HOME` when a non-default home is in
//!   use); every other server, key, comment and the file's formatting stay as they were
//!   (`toml_edit` for TOML, a JSONC concrete syntax tree from `jsonc-parser` for JSON, so no
//!   crate-wide `serde_json` feature changes the audit log's canonical form);
//! - a file that does not parse, or whose `mcpServers` is not an object, is refused with a
//!   message and nothing is written;
//! - a changed file is first copied to `FILE.keyveil-backup-<UTC time>`, then replaced
//!   atomically (written beside it, renamed over it; a symlinked file is edited at its target)
//!   with its permissions kept;
//! - running it twice changes nothing the second time.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use jsonc_parser::ParseOptions;
use jsonc_parser::cst::{CstInputValue, CstObject, CstRootNode};
use serde_json::{Value, json};

use crate::output::{Exit, say};

/// Tool-call timeout written for hosts that have one, in seconds: a `run` may wait 50 s for an
/// approval and then run the command.
pub const TOOL_TIMEOUT_SECONDS: u64 = 180;

/// An agent host keyveil can set itself up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Host {
    /// Codex CLI: `~/.codex/config.toml` (`.codex/config.toml` with `--project`).
    Codex,
    /// Claude Code: `~/.claude.json` user scope (`.mcp.json` with `--project`).
    Claude,
    /// Gemini CLI: `~/.gemini/settings.json` (`.gemini/settings.json` with `--project`).
    Gemini,
    /// Cursor: `~/.cursor/mcp.json` (`.cursor/mcp.json` with `--project`).
    Cursor,
    /// VS Code: the user profile's `mcp.json` (`.vscode/mcp.json` with `--project`).
    Vscode,
}

/// Every host, in the order `doctor` checks them.
pub const HOSTS: [Host; 5] = [
    Host::Codex,
    Host::Claude,
    Host::Gemini,
    Host::Cursor,
    Host::Vscode,
];

impl Host {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Host::Codex => "codex",
            Host::Claude => "claude",
            Host::Gemini => "gemini",
            Host::Cursor => "cursor",
            Host::Vscode => "vscode",
        }
    }

    fn is_toml(self) -> bool {
        self == Host::Codex
    }

    /// The key holding the servers: `mcp_servers` (Codex), `servers` (VS Code), `mcpServers`.
    fn servers_key(self) -> &'static str {
        match self {
            Host::Codex => "mcp_servers",
            Host::Vscode => "servers",
            _ => "mcpServers",
        }
    }

    /// The configuration file of this host: user scope under `home`, or project scope under
    /// `project`.
    pub fn config_path(self, home: &Path, project: Option<&Path>) -> PathBuf {
        if let Some(p) = project {
            return match self {
                Host::Codex => p.join(".codex/config.toml"),
                Host::Claude => p.join(".mcp.json"),
                Host::Gemini => p.join(".gemini/settings.json"),
                Host::Cursor => p.join(".cursor/mcp.json"),
                Host::Vscode => p.join(".vscode/mcp.json"),
            };
        }
        match self {
            Host::Codex => match std::env::var_os("CODEX_HOME").filter(|h| !h.is_empty()) {
                Some(h) => PathBuf::from(h).join("config.toml"),
                None => home.join(".codex/config.toml"),
            },
            Host::Claude => home.join(".claude.json"),
            Host::Gemini => home.join(".gemini/settings.json"),
            Host::Cursor => home.join(".cursor/mcp.json"),
            Host::Vscode => {
                if cfg!(target_os = "macos") {
                    home.join("Library/Application Support/Code/User/mcp.json")
                } else {
                    match std::env::var_os("XDG_CONFIG_HOME").filter(|h| !h.is_empty()) {
                        Some(x) => PathBuf::from(x).join("Code/User/mcp.json"),
                        None => home.join(".config/Code/User/mcp.json"),
                    }
                }
            }
        }
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

impl Entry {
    /// The managed keys of the entry for `host`, in the order they are written.
    fn fields(&self, host: Host) -> Vec<(&'static str, Value)> {
        let mut f = Vec::new();
        if matches!(host, Host::Claude | Host::Vscode) {
            f.push(("type", json!("stdio")));
        }
        f.push(("command", json!(self.command)));
        f.push(("args", json!(["mcp"])));
        match host {
            Host::Codex => f.push(("tool_timeout_sec", json!(TOOL_TIMEOUT_SECONDS))),
            Host::Gemini => f.push(("timeout", json!(TOOL_TIMEOUT_SECONDS * 1000))),
            _ => {}
        }
        f
    }
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
    /// The new text (equal to the old one when nothing changed).
    pub text: String,
    /// What changed, one line each; empty when the file was already set up.
    pub changes: Vec<String>,
}

/// Edits `old` (the file's text, `None` when it does not exist) so that it holds `entry` for
/// `host`. Pure: no I/O. `path` only names the file in errors.
///
/// Errors: [`SetupError`] when the text cannot be parsed or has the wrong shape.
pub fn edit(host: Host, old: Option<&str>, entry: &Entry, path: &str) -> Result<Edit, SetupError> {
    if host.is_toml() {
        edit_toml(old.unwrap_or(""), entry, path)
    } else {
        edit_json(host, old, entry, path)
    }
}

// ---------------------------------------------------------------------------------------------
// TOML (Codex)

fn toml_matches(existing: Option<&toml_edit::Item>, want: &Value) -> bool {
    let Some(v) = existing.and_then(toml_edit::Item::as_value) else {
        return false;
    };
    match want {
        Value::String(s) => v.as_str() == Some(s.as_str()),
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

fn edit_toml(old: &str, entry: &Entry, path: &str) -> Result<Edit, SetupError> {
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
    let root = doc.as_table_mut();
    if !root.contains_key("mcp_servers") {
        let mut t = toml_edit::Table::new();
        t.set_implicit(true);
        root.insert("mcp_servers", toml_edit::Item::Table(t));
    }
    let servers_item = root
        .get_mut("mcp_servers")
        .ok_or_else(|| shape("mcp_servers vanished".to_owned()))?;
    let inline_servers = servers_item.is_inline_table();
    let servers = servers_item
        .as_table_like_mut()
        .ok_or_else(|| shape("`mcp_servers` is not a table".to_owned()))?;
    if servers.get("keyveil").is_none() {
        let item = if inline_servers {
            toml_edit::Item::Value(toml_edit::Value::InlineTable(toml_edit::InlineTable::new()))
        } else {
            toml_edit::Item::Table(toml_edit::Table::new())
        };
        servers.insert("keyveil", item);
        changes.push("added [mcp_servers.keyveil]".to_owned());
    }
    let kv = servers
        .get_mut("keyveil")
        .and_then(toml_edit::Item::as_table_like_mut)
        .ok_or_else(|| shape("`mcp_servers.keyveil` is not a table".to_owned()))?;
    for (key, want) in entry.fields(Host::Codex) {
        if !toml_matches(kv.get(key), &want) {
            kv.insert(key, toml_edit::Item::Value(toml_value(&want)));
            changes.push(format!("set {key} = {want}"));
        }
    }
    if let Some(h) = &entry.keyveil_home {
        if kv.get("env").is_none() {
            kv.insert(
                "env",
                toml_edit::Item::Value(
                    toml_edit::Value::InlineTable(toml_edit::InlineTable::new()),
                ),
            );
        }
        let env = kv
            .get_mut("env")
            .and_then(toml_edit::Item::as_table_like_mut)
            .ok_or_else(|| shape("`mcp_servers.keyveil.env` is not a table".to_owned()))?;
        let want = json!(h);
        if !toml_matches(env.get("KEYVEIL_HOME"), &want) {
            env.insert("KEYVEIL_HOME", toml_edit::Item::Value(toml_value(&want)));
            changes.push(format!("set env.KEYVEIL_HOME = {want}"));
        }
    }
    Ok(Edit {
        text: if changes.is_empty() {
            old.to_owned()
        } else {
            doc.to_string()
        },
        changes,
    })
}

// ---------------------------------------------------------------------------------------------
// JSON with comments (Claude Code, Gemini CLI, Cursor, VS Code)

/// What keyveil accepts in a JSON configuration file: comments and trailing commas (VS Code
/// and Gemini CLI allow them), nothing looser (that would be a file the host cannot read).
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

/// The object under `key` in `obj`, created when missing.
fn child_object(
    obj: &CstObject,
    key: &str,
    shape: &dyn Fn(String) -> SetupError,
    what: &str,
) -> Result<(CstObject, bool), SetupError> {
    match obj.get(key) {
        Some(p) => p
            .object_value()
            .map(|o| (o, false))
            .ok_or_else(|| shape(format!("`{what}` is not an object"))),
        None => {
            let p = obj.append(key, CstInputValue::Object(Vec::new()));
            p.object_value()
                .map(|o| (o, true))
                .ok_or_else(|| shape(format!("cannot create `{what}`")))
        }
    }
}

fn edit_json(host: Host, old: Option<&str>, entry: &Entry, path: &str) -> Result<Edit, SetupError> {
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
    let key = host.servers_key();
    let mut changes = Vec::new();
    let (servers, _) = child_object(&obj, key, &shape, key)?;
    let what = format!("{key}.keyveil");
    let (kv, created) = child_object(&servers, "keyveil", &shape, &what)?;
    if created {
        changes.push(format!("added {what}"));
    }
    let mut fields = entry.fields(host);
    if let Some(h) = &entry.keyveil_home {
        fields.push(("env", json!({ "KEYVEIL_HOME": h })));
    }
    for (k, want) in fields {
        let current = kv.get(k);
        if k == "env" {
            // Only KEYVEIL_HOME inside env is ours; other variables stay.
            let (env, _) = child_object(&kv, "env", &shape, &format!("{what}.env"))?;
            let want_home = want.get("KEYVEIL_HOME").cloned().unwrap_or(Value::Null);
            let have = env
                .get("KEYVEIL_HOME")
                .and_then(|p| p.value())
                .and_then(|v| v.to_serde_value());
            if have.as_ref() != Some(&want_home) {
                match env.get("KEYVEIL_HOME") {
                    Some(p) => p.set_value(cst_input(&want_home)),
                    None => {
                        env.append("KEYVEIL_HOME", cst_input(&want_home));
                    }
                }
                changes.push(format!("set env.KEYVEIL_HOME = {want_home}"));
            }
            continue;
        }
        let have = current
            .as_ref()
            .and_then(|p| p.value())
            .and_then(|v| v.to_serde_value());
        if have.as_ref() != Some(&want) {
            match current {
                Some(p) => p.set_value(cst_input(&want)),
                None => {
                    kv.append(k, cst_input(&want));
                }
            }
            changes.push(format!("set {k} = {want}"));
        }
    }
    Ok(Edit {
        text: if changes.is_empty() {
            old.unwrap_or("").to_owned()
        } else {
            let mut t = root.to_string();
            if !t.ends_with('\n') {
                t.push('\n');
            }
            t
        },
        changes,
    })
}

// ---------------------------------------------------------------------------------------------
// Reading an existing entry (doctor)

/// What [`read_entry`] finds: `(command, args, timeout in seconds)`.
pub type EntryInfo = (String, Vec<String>, Option<f64>);

/// The `keyveil` entry of a configuration text: `(command, args, timeout)`; `None` when the
/// text has no such entry. The timeout is Codex's `tool_timeout_sec` or Gemini's `timeout`
/// (milliseconds), when present.
///
/// Errors: the text does not parse.
pub fn read_entry(host: Host, text: &str) -> Result<Option<EntryInfo>, String> {
    let v: Value = if host.is_toml() {
        let doc: toml_edit::DocumentMut = text
            .parse()
            .map_err(|e: toml_edit::TomlError| e.to_string().trim().replace('\n', " "))?;
        let Some(kv) = doc
            .get("mcp_servers")
            .and_then(|s| s.get("keyveil"))
            .and_then(toml_edit::Item::as_table_like)
        else {
            return Ok(None);
        };
        let mut m = serde_json::Map::new();
        for (k, item) in kv.iter() {
            if let Some(val) = item.as_value() {
                let j = match val {
                    toml_edit::Value::String(s) => json!(s.value()),
                    toml_edit::Value::Integer(i) => json!(i.value()),
                    toml_edit::Value::Float(f) => json!(f.value()),
                    toml_edit::Value::Array(a) => {
                        Value::Array(a.iter().map(|x| json!(x.as_str().unwrap_or(""))).collect())
                    }
                    _ => Value::Null,
                };
                m.insert(k.to_owned(), j);
            }
        }
        json!({ "mcp_servers": { "keyveil": m } })
    } else {
        let root = CstRootNode::parse(text, &json_options()).map_err(|e| e.to_string())?;
        root.value()
            .and_then(|v| v.to_serde_value())
            .unwrap_or(Value::Null)
    };
    let Some(kv) = v.get(host.servers_key()).and_then(|s| s.get("keyveil")) else {
        return Ok(None);
    };
    let command = kv
        .get("command")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let args = kv
        .get("args")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let timeout = match host {
        Host::Codex => kv.get("tool_timeout_sec").and_then(Value::as_f64),
        Host::Gemini => kv
            .get("timeout")
            .and_then(Value::as_f64)
            .map(|ms| ms / 1000.0),
        _ => None,
    };
    Ok(Some((command, args, timeout)))
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

/// A short rendering of the entry, as it appears in the host's file.
fn snippet(host: Host, entry: &Entry) -> String {
    match edit(host, None, entry, "") {
        Ok(e) => e.text,
        Err(_) => String::new(),
    }
}

/// `keyveil setup HOST [--print] [--project]`.
pub fn setup_main(host: Host, print: bool, project: bool) -> Result<i32> {
    let entry = entry_here()?;
    let home = home_dir()?;
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let path = host.config_path(&home, project.then_some(cwd.as_path()));
    // Edit a symlinked file (dotfile managers) at its target.
    let real = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
    let old = match std::fs::read_to_string(&real) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(Exit {
                code: 1,
                message: format!("cannot read {}: {e}; nothing was changed", real.display()),
            }
            .into());
        }
    };
    let shown = path.display().to_string();
    let edited = edit(host, old.as_deref(), &entry, &shown).map_err(|e| Exit {
        code: 1,
        message: format!(
            "{e}; nothing was changed\nhint: fix the file (or move it aside) and run `keyveil setup {}{}` again, or add the entry by hand: `keyveil setup {} --print` shows it",
            host.name(),
            if project { " --project" } else { "" },
            host.name()
        ),
    })?;
    if print {
        say(format!("# {} ({shown}): the keyveil entry", host.name()));
        say(snippet(host, &entry).trim_end());
        if edited.changes.is_empty() {
            say(format!("# {shown} already holds it; nothing to do"));
        } else {
            say(format!(
                "# {} would change: {}",
                shown,
                edited.changes.join("; ")
            ));
        }
        return Ok(0);
    }
    if edited.changes.is_empty() {
        say(format!(
            "{}: {shown} is already set up; nothing changed",
            host.name()
        ));
        return Ok(0);
    }
    let backup = match &old {
        Some(text) => {
            let b = backup_name(&real);
            std::fs::write(&b, text).with_context(|| format!("cannot write {}", b.display()))?;
            if let Ok(meta) = std::fs::metadata(&real) {
                let _ = std::fs::set_permissions(&b, meta.permissions());
            }
            Some(b)
        }
        None => None,
    };
    write_atomic(&real, &edited.text)?;
    say(format!(
        "{}: {} {shown}",
        host.name(),
        if old.is_some() { "updated" } else { "created" }
    ));
    for c in &edited.changes {
        say(format!("  {c}"));
    }
    if let Some(b) = backup {
        say(format!("  backup: {}", b.display()));
    }
    say(format!(
        "next: restart {} so that it starts `keyveil mcp`; `keyveil doctor` checks the set-up",
        match host {
            Host::Codex => "Codex",
            Host::Claude => "Claude Code",
            Host::Gemini => "Gemini CLI",
            Host::Cursor => "Cursor",
            Host::Vscode => "VS Code",
        }
    ));
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// `keyveil doctor`

/// One check's outcome.
struct Check {
    ok: bool,
    what: String,
    hint: Option<String>,
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

/// The checks of `keyveil doctor`, in order.
fn checks() -> Result<Vec<Check>> {
    let me = this_binary()?;
    let home = home_dir()?;
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let path_var = std::env::var("PATH").unwrap_or_default();
    let mut out = Vec::new();

    // 1. The binary on PATH is this one.
    match which("keyveil", &path_var) {
        Some(p) if same_file(&p, &me) => out.push(Check {
            ok: true,
            what: format!("keyveil on PATH is this binary ({})", p.display()),
            hint: None,
        }),
        Some(p) => out.push(Check {
            ok: false,
            what: format!(
                "keyveil on PATH is {}, not this binary ({})",
                p.display(),
                me.display()
            ),
            hint: Some(
                "install one keyveil (`cargo install --locked --path crates/keyveil`) or run `keyveil setup HOST` with the binary the hosts should start (the config names it by absolute path)"
                    .to_owned(),
            ),
        }),
        None => out.push(Check {
            ok: false,
            what: "keyveil is not on PATH".to_owned(),
            hint: Some(format!(
                "add {} to PATH (hosts configured by `keyveil setup` use the absolute path, but you will want `keyveil approve` in your terminal)",
                me.parent().map(|d| d.display().to_string()).unwrap_or_default()
            )),
        }),
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
            out.push(Check {
                ok: true,
                what: format!(
                    "broker reachable with only HOME and PATH set (socket {})",
                    sock.display()
                ),
                hint: None,
            })
        }
        Some(s) if s.running => out.push(Check {
            ok: false,
            what: format!(
                "with only HOME and PATH set, keyveil finds another broker ({}) than this shell ({})",
                s.socket.display(),
                sock.display()
            ),
            hint: Some(
                "hosts pass a short environment: set KEYVEIL_HOME in the host's config (`keyveil setup HOST` does it when KEYVEIL_HOME is set), or unset XDG_DATA_HOME/KEYVEIL_HOME here"
                    .to_owned(),
            ),
        }),
        _ => out.push(Check {
            ok: false,
            what: "no broker answers from a host-like environment".to_owned(),
            hint: Some(
                "run `keyveil unlock` (it starts the broker); if it does not start, `keyveil daemon --foreground` shows why"
                    .to_owned(),
            ),
        }),
    }

    // 3. Vault exists and is unlocked.
    match &status {
        Some(s) if !s.vault_exists => out.push(Check {
            ok: false,
            what: format!("no vault at {}", paths.vault().display()),
            hint: Some("create one with `keyveil init`".to_owned()),
        }),
        Some(s) if s.locked || !s.running => out.push(Check {
            ok: false,
            what: "the vault is locked".to_owned(),
            hint: Some("run `keyveil unlock`".to_owned()),
        }),
        Some(_) => out.push(Check {
            ok: true,
            what: "vault exists and is unlocked".to_owned(),
            hint: None,
        }),
        None => {}
    }

    // 4. Host configurations: present and pointing at this binary.
    let mut configured = 0;
    for host in HOSTS {
        for project in [None, Some(cwd.as_path())] {
            let file = host.config_path(&home, project);
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            let fix = format!(
                "run `keyveil setup {}{}`",
                host.name(),
                if project.is_some() { " --project" } else { "" }
            );
            match read_entry(host, &text) {
                Err(e) => out.push(Check {
                    ok: false,
                    what: format!("{}: {} does not parse: {e}", host.name(), file.display()),
                    hint: Some("fix the file; the host cannot read it either".to_owned()),
                }),
                Ok(None) => {}
                Ok(Some((command, args, timeout))) => {
                    configured += 1;
                    let resolved = if command.contains('/') {
                        Some(PathBuf::from(&command))
                    } else {
                        which(&command, &path_var)
                    };
                    let points_here = resolved.as_deref().is_some_and(|p| same_file(p, &me));
                    let mut problems = Vec::new();
                    if !points_here {
                        problems.push(format!("its command {command:?} is not this binary"));
                    }
                    if args != ["mcp"] {
                        problems.push(format!("its args are {args:?}, not [\"mcp\"]"));
                    }
                    if host == Host::Codex && timeout.unwrap_or(60.0) < 120.0 {
                        problems.push(format!(
                            "its tool_timeout_sec is {} s; a run may wait 50 s for approval and then run",
                            timeout.unwrap_or(60.0)
                        ));
                    }
                    out.push(if problems.is_empty() {
                        Check {
                            ok: true,
                            what: format!(
                                "{}: {} starts this keyveil",
                                host.name(),
                                file.display()
                            ),
                            hint: None,
                        }
                    } else {
                        Check {
                            ok: false,
                            what: format!(
                                "{}: {}: {}",
                                host.name(),
                                file.display(),
                                problems.join("; ")
                            ),
                            hint: Some(fix),
                        }
                    });
                }
            }
        }
    }
    if configured == 0 {
        out.push(Check {
            ok: false,
            what: "no agent host is set up to start keyveil".to_owned(),
            hint: Some(
                "run `keyveil setup codex` (or claude, gemini, cursor, vscode; `--project` for this project only)"
                    .to_owned(),
            ),
        });
    }
    Ok(out)
}

/// `keyveil doctor`: prints each check; exit 1 if any fails.
pub fn doctor_main() -> Result<i32> {
    // Start the broker if none runs (as a host's first call would).
    let paths = crate::paths::Paths::resolve()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let _ = rt.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(15),
            crate::client::call(&paths, &keyveil_proto::Request::Status),
        )
        .await
    });
    let list = checks()?;
    let mut failed = 0;
    for c in &list {
        say(format!("{} {}", if c.ok { "ok  " } else { "FAIL" }, c.what));
        if !c.ok {
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

    fn entry() -> Entry {
        Entry {
            command: "/opt/kv/bin/keyveil".into(),
            keyveil_home: None,
        }
    }

    #[test]
    fn toml_keeps_other_servers_and_comments_and_is_idempotent() {
        let old = "# my codex config\nmodel = \"o3\"   # pinned\n\n[mcp_servers.other]\ncommand = \"x\"  # keep me\nargs = [ \"a\",\"b\" ]\n";
        let e = edit(Host::Codex, Some(old), &entry(), "c.toml").unwrap();
        assert!(e.text.starts_with(old), "{}", e.text);
        assert!(e.text.contains("[mcp_servers.keyveil]"), "{}", e.text);
        assert!(e.text.contains("tool_timeout_sec = 180"), "{}", e.text);
        let again = edit(Host::Codex, Some(&e.text), &entry(), "c.toml").unwrap();
        assert!(again.changes.is_empty(), "{:?}", again.changes);
        assert_eq!(again.text, e.text);
    }

    #[test]
    fn json_keeps_comments_and_order() {
        let old = "{\n  // servers\n  \"zeta\": 1,\n  \"mcpServers\": {\n    \"other\": { \"command\": \"x\" }, // trailing\n  },\n  \"alpha\": true\n}\n";
        let e = edit(Host::Cursor, Some(old), &entry(), "m.json").unwrap();
        assert!(e.text.contains("// servers"));
        assert!(e.text.contains("// trailing"));
        let z = e.text.find("zeta").unwrap();
        let a = e.text.find("alpha").unwrap();
        assert!(z < a);
        assert!(e.text.contains("\"keyveil\""), "{}", e.text);
        let again = edit(Host::Cursor, Some(&e.text), &entry(), "m.json").unwrap();
        assert!(again.changes.is_empty(), "{:?}", again.changes);
    }

    #[test]
    fn unparsable_and_wrong_shapes_are_refused() {
        assert!(matches!(
            edit(Host::Claude, Some("{ \"a\": "), &entry(), "x"),
            Err(SetupError::Parse { .. })
        ));
        assert!(matches!(
            edit(Host::Claude, Some("{ \"mcpServers\": [] }"), &entry(), "x"),
            Err(SetupError::Shape { .. })
        ));
        assert!(matches!(
            edit(Host::Codex, Some("mcp_servers = 3\n"), &entry(), "x"),
            Err(SetupError::Shape { .. })
        ));
        assert!(matches!(
            edit(Host::Codex, Some("[mcp_servers\n"), &entry(), "x"),
            Err(SetupError::Parse { .. })
        ));
    }

    #[test]
    fn entries_read_back() {
        for host in HOSTS {
            let e = edit(host, None, &entry(), "x").unwrap();
            let (cmd, args, timeout) = read_entry(host, &e.text).unwrap().unwrap();
            assert_eq!(cmd, "/opt/kv/bin/keyveil");
            assert_eq!(args, ["mcp"]);
            match host {
                Host::Codex | Host::Gemini => assert_eq!(timeout, Some(180.0)),
                _ => assert_eq!(timeout, None),
            }
        }
    }
}
