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

pub(crate) mod doctor;

use std::path::PathBuf;

use anyhow::{Context, Result};

pub(crate) use doctor::doctor_main;

use crate::output::{Exit, say};

mod edit;
mod edit_json;
mod files;
mod hosts;
pub(crate) use edit::Mode;
use edit::{Edit, SetupError};
pub(crate) use files::{Found, find, parse_value, read_config};
use files::{backup_name, write_atomic};
pub(crate) use hosts::{Entry, Format, HOSTS, Host, HostEnv, Op, plan};

/// Edits `old` (the file's text, `None` when it does not exist) so that it holds `ops` (or no
/// longer holds them, in [`Mode::Remove`]). Pure: no I/O. `path` only names the file in errors.
///
/// Errors: [`SetupError`] when the text cannot be parsed or has the wrong shape.
pub(crate) fn edit(
    format: Format,
    old: Option<&str>,
    ops: &[Op],
    mode: Mode,
    path: &str,
) -> Result<Edit, SetupError> {
    match format {
        Format::Toml => edit::edit_toml(old.unwrap_or(""), ops, mode, path),
        Format::Json => edit_json::edit_json(old, ops, mode, path),
    }
}

/// The running binary, canonical.
pub(crate) fn this_binary() -> Result<PathBuf> {
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
pub(crate) fn entry_here() -> Result<Entry> {
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

/// What `keyveil setup` was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SetupArgs {
    /// The host.
    pub(crate) host: Host,
    /// Only print what would change.
    pub(crate) print: bool,
    /// The project's files in the current directory.
    pub(crate) project: bool,
    /// Keep the host's own prompts: write no permission.
    pub(crate) host_prompts: bool,
    /// Undo what setup writes.
    pub(crate) remove: bool,
}

/// `keyveil setup HOST [--print] [--project] [--host-prompts] [--remove]`.
pub(crate) fn setup_main(a: SetupArgs) -> Result<i32> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::edit::SetupError;
    use super::hosts::FileSpec;
    use super::*;
    use std::path::Path;

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
