//! What editing one file's text gives ([`Edit`], [`Mode`], [`SetupError`]), shared with
//! `edit_json`, and the edits of TOML files (with `toml_edit`, keeping every other key, comment
//! and the formatting). `setup::edit` picks the format.

use super::hosts::Op;
use anyhow::Result;
use serde_json::{Value, json};

/// What an edit does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
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
pub(crate) enum SetupError {
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
pub(crate) struct Edit {
    /// The new text (equal to the old one when nothing changed); `None` when the file is left
    /// holding nothing (`{}` after `--remove`) and is deleted.
    pub(crate) text: Option<String>,
    /// What changed, one line each; empty when the file already was as wanted.
    pub(crate) changes: Vec<String>,
}

pub(super) fn dotted(path: &[&str]) -> String {
    path.join(".")
}

// ---------------------------------------------------------------------------------------------
// TOML (Codex)

pub(super) fn toml_matches(existing: Option<&toml_edit::Item>, want: &Value) -> bool {
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

pub(super) fn toml_value(want: &Value) -> toml_edit::Value {
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

pub(super) fn edit_toml(old: &str, ops: &[Op], mode: Mode, path: &str) -> Result<Edit, SetupError> {
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
