//! Host configuration files: reading them (bounded, regular files only), parsing them to look
//! entries up ([`find`]), and replacing them with a backup and an atomic rename.

use super::edit_json::json_options;
use super::hosts::{Format, Op};
use anyhow::{Context, Result};
use jsonc_parser::cst::CstRootNode;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// A configuration text as JSON (TOML converted), for reading back.
///
/// Errors: the text does not parse (the parser's message).
pub(crate) fn parse_value(format: Format, text: &str) -> Result<Value, String> {
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

pub(super) fn toml_to_json(item: &toml_edit::Item) -> Value {
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

pub(super) fn toml_value_to_json(v: &toml_edit::Value) -> Value {
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

pub(super) fn value_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.get(k))
}

/// What an op asks for, as found in a file's parsed value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Found {
    /// A server entry: the entry object, `None` when absent.
    Entry(Option<Value>),
    /// A permission or membership: whether it holds.
    Holds(bool),
}

/// Reads what `op` asks for in `v` (a whole file, from [`parse_value`]).
pub(crate) fn find(op: &Op, v: &Value) -> Found {
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

pub(super) fn backup_name(path: &Path) -> PathBuf {
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
pub(super) fn write_atomic(path: &Path, text: &str) -> Result<()> {
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

/// Largest host configuration file setup reads (bytes): host configs are a few KiB.
pub(super) const MAX_CONFIG: u64 = 16 << 20;

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
