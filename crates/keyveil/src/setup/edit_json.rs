//! Applying a plan's edits to a JSON or JSONC file through its concrete syntax tree
//! (`jsonc-parser`), keeping every other key, comment and the formatting.

use super::edit::{Edit, Mode, SetupError, dotted};
use super::hosts::Op;
use anyhow::Result;
use jsonc_parser::ParseOptions;
use jsonc_parser::cst::{CstInputValue, CstObject, CstRootNode};
use serde_json::{Value, json};

/// What keyveil accepts in a JSON configuration file: comments and trailing commas (VS Code,
/// Gemini CLI and OpenCode allow them), nothing looser (that would be a file the host cannot
/// read).
pub(super) fn json_options() -> ParseOptions {
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

pub(super) fn cst_input(v: &Value) -> CstInputValue {
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
pub(super) fn child_object(
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
pub(super) fn object_at(
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
pub(super) fn prune(root: &CstObject, path: &[&str]) {
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

pub(super) fn json_value(prop: Option<jsonc_parser::cst::CstObjectProp>) -> Option<Value> {
    prop.and_then(|p| p.value())
        .and_then(|v| v.to_serde_value())
}

pub(super) fn edit_json(
    old: Option<&str>,
    ops: &[Op],
    mode: Mode,
    path: &str,
) -> Result<Edit, SetupError> {
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
