//! `keyveil project`: apply a project manifest (`keyveil.toml`, `docs/manifest.md`) and show
//! its pin. `apply` shows the plan (environments, names, sources; never a value), asks the
//! factor, creates and links what the vault lacks through the ordinary operations, and has the
//! broker pin the file's digest; `status` compares the pins with the files now.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;

use super::{
    Exit, FactorArgs, auth_exit, call, expect, factor_from_args, factor_input, json_text, say,
};
use crate::authorize::{self, FactorInput};
use crate::client;
use crate::manifest::{self, Manifest, VarDecl};
use crate::paths::Paths;
use keyveil_proto::{DynamicAddRequest, Passphrase, Request, op};

/// `keyveil project` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ProjectCommand {
    /// Apply a keyveil.toml: show the plan (environments, variable names, sources; never a
    /// value), ask your factor, create and link what the vault lacks, and pin the file's
    /// SHA-256. A later change to the file refuses runs of its environments until you apply it
    /// again. Values you type are asked for at the terminal (hidden), never on argv.
    ///
    /// Examples:
    ///   keyveil project apply                       # ./keyveil.toml
    ///   keyveil project apply ../app/keyveil.toml --totp
    #[command(verbatim_doc_comment)]
    Apply {
        /// The manifest (default: ./keyveil.toml).
        path: Option<PathBuf>,
        /// Read what the plan asks for from stdin, one line each in plan order, after the
        /// factor line of --passphrase-stdin / --totp-stdin: the value of each local variable
        /// (an empty line leaves it awaiting `keyveil set`), the admin secret (OpenBao token,
        /// admin URL) of each other source.
        #[arg(long)]
        values_stdin: bool,
        /// Show the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Your factor (asked at the terminal unless given).
        #[command(flatten)]
        factor: FactorArgs,
    },
    /// The approved digest of each pinned environment against its file now, and what the
    /// manifest declares that the vault lacks.
    Status {
        /// The manifest (default: ./keyveil.toml).
        path: Option<PathBuf>,
        /// Print the pins as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `project` subcommand.
pub(crate) async fn run(paths: &Paths, cmd: ProjectCommand) -> Result<i32> {
    match cmd {
        ProjectCommand::Apply {
            path,
            values_stdin,
            dry_run,
            factor,
        } => apply(paths, path, values_stdin, dry_run, &factor).await,
        ProjectCommand::Status { path, json } => status(paths, path, json).await,
    }
}

/// A manifest read and checked: its canonical path, digest and declarations.
struct Loaded {
    path: PathBuf,
    sha256: String,
    manifest: Manifest,
}

/// Reads and parses the manifest at `path` (default `./keyveil.toml`).
fn load(path: Option<PathBuf>) -> Result<Loaded> {
    let given = path.unwrap_or_else(|| PathBuf::from(manifest::FILE_NAME));
    let canon = manifest::canonical_path(&given).map_err(|e| Exit {
        code: 2,
        message: if e.contains("symlink") {
            format!(
                "{e}; nothing was changed\nhint: put the file itself in the repository (check what the link points to first), or give the path of the real file"
            )
        } else {
            format!(
                "{e}\nhint: run this in the repository that holds keyveil.toml, or give its path"
            )
        },
    })?;
    let bytes = manifest::read_file(&canon).map_err(|e| Exit {
        code: 2,
        message: format!("{e}\nhint: keyveil.toml must be a regular file of at most 1 MiB"),
    })?;
    let sha256 = manifest::sha256_hex(&bytes);
    let text = String::from_utf8(bytes).map_err(|_| Exit {
        code: 2,
        message: format!(
            "{} is not UTF-8 text\nhint: save it as UTF-8",
            canon.display()
        ),
    })?;
    let manifest = manifest::parse(&text).map_err(|e| Exit {
        code: 2,
        message: format!("{}: {e}\nnothing was changed", canon.display()),
    })?;
    Ok(Loaded {
        path: canon,
        sha256,
        manifest,
    })
}

/// What the vault holds of one variable the manifest declares.
struct HaveVar {
    /// `human`, `generated`, `dynamic` or `provider`.
    source: String,
    /// A dynamic or provider variable's engine.
    engine: Option<String>,
    /// It holds a value (or a dynamic source).
    set: bool,
    /// Stored with the human's factor (`None`: not recorded).
    by_factor: Option<bool>,
    /// When it was stored, where recorded.
    at: Option<jiff::Timestamp>,
}

/// What the vault holds of an environment the manifest declares.
struct Have {
    /// Its variables (names as shown).
    vars: BTreeMap<String, HaveVar>,
    /// Its names are hidden (`hide_names`): the shown names are aliases, so the manifest's
    /// names cannot be compared without the factor, and `apply` adds none to it.
    hidden: bool,
}

/// The vault's environments the manifest `m` declares.
async fn existing(paths: &Paths, m: &Manifest) -> Result<BTreeMap<String, Have>> {
    let list = call(paths, op::EnvList).await?;
    let names: BTreeSet<String> = list.environments.into_iter().map(|e| e.name).collect();
    let mut out = BTreeMap::new();
    for e in &m.environments {
        if !names.contains(&e.name) {
            continue;
        }
        let d = call(
            paths,
            op::EnvShow {
                name: e.name.clone(),
                versions: false,
            },
        )
        .await?;
        let hidden = d.policy.get("hide_names") == Some(&serde_json::Value::Bool(true));
        out.insert(
            e.name.clone(),
            Have {
                vars: d
                    .variables
                    .into_iter()
                    .map(|v| {
                        let have = HaveVar {
                            source: v.source,
                            engine: v.engine,
                            set: v.set,
                            by_factor: v.stored_by_factor,
                            at: v.stored_at,
                        };
                        (v.name, have)
                    })
                    .collect(),
                hidden,
            },
        );
    }
    Ok(out)
}

/// What `apply` does with variable `v` of an environment the vault holds as `have`.
fn var_todo(have: Option<&Have>, v: &VarDecl) -> Todo {
    match have {
        Some(h) if h.hidden => Todo::Hidden,
        Some(h) => match h.vars.get(&v.name) {
            None => Todo::Add,
            Some(x) if x.set && x.by_factor == Some(false) => Todo::Replace,
            Some(x) if !same_source(x, v) => Todo::Differs,
            Some(_) => Todo::Keep,
        },
        None => Todo::Add,
    }
}

/// Whether the vault's variable `x` comes from where the manifest's `v` says (a local value,
/// or the same engine).
fn same_source(x: &HaveVar, v: &VarDecl) -> bool {
    if v.is_local() {
        x.engine.is_none()
    } else {
        x.engine.as_deref() == Some(v.source.as_str())
    }
}

/// The vault's side of a variable, for the plan: its source, and who stored it when.
fn vault_side(x: &HaveVar) -> String {
    let src = match &x.engine {
        Some(e) => format!("{} ({e})", x.source),
        None => x.source.clone(),
    };
    let who = match x.by_factor {
        Some(true) => "with your factor",
        Some(false) => {
            "WITHOUT your factor (anyone with your user id, an agent included, could have chosen it)"
        }
        None => "by someone not recorded",
    };
    match x.at {
        Some(at) => format!(
            "the vault has it as {src}, stored {who} {}",
            crate::when::human_time(&at.to_string())
        ),
        None => format!("the vault has it as {src}, stored {who}"),
    }
}

/// See [`var_todo`].
#[derive(PartialEq, Eq)]
enum Todo {
    /// It exists, as the manifest says, stored with the factor: kept as it is.
    Keep,
    /// It holds a value stored without the factor: replaced (you type it) before the pin.
    Replace,
    /// It comes from another source than the manifest says: shown, kept (the human decides).
    Differs,
    /// Its environment hides its names: left to the human (`keyveil set`, `dynamic add`).
    Hidden,
    /// It is added.
    Add,
}

/// The plan: one line per environment and variable, what `apply` does with it. Never a value.
fn print_plan(l: &Loaded, have: &BTreeMap<String, Have>) -> usize {
    say(format!(
        "{} (sha256 {}):",
        l.path.display(),
        l.sha256.get(..12).unwrap_or(&l.sha256)
    ));
    let mut todo = 0;
    for e in &l.manifest.environments {
        let vars = have.get(&e.name);
        if vars.is_none() {
            todo += 1;
        }
        say(format!(
            "  environment {}: {}",
            e.name,
            if vars.is_some() { "exists" } else { "create" }
        ));
        for v in &e.variables {
            let side = vars.and_then(|h| h.vars.get(&v.name)).map(vault_side);
            let action = match var_todo(vars, v) {
                Todo::Keep => "exists, kept as it is",
                Todo::Replace if v.is_local() => {
                    todo += 1;
                    "REPLACE: its value was stored without your factor; you type it again"
                }
                Todo::Replace => {
                    todo += 1;
                    "REPLACE: it was linked without your factor; remove it (`keyveil unset`) and apply again"
                }
                Todo::Differs => {
                    "DIFFERS from the manifest's source: kept as it is (remove it with `keyveil unset` and apply again to take the manifest's)"
                }
                Todo::Hidden => {
                    "not compared: the environment hides its names (add it with `keyveil set` or `keyveil dynamic add`)"
                }
                Todo::Add if v.is_local() => {
                    todo += 1;
                    "add: you type its value (or leave it awaiting)"
                }
                Todo::Add => {
                    todo += 1;
                    "add: link it (you type the source's admin secret)"
                }
            };
            say(format!(
                "    {:<24} {}  -> {action}",
                v.name,
                v.shown_source()
            ));
            if let Some(side) = side.filter(|_| var_todo(vars, v) != Todo::Keep) {
                say(format!("    {:<24} ({side})", ""));
            }
        }
    }
    todo
}

/// Reads one secret line: from stdin with `from_stdin`, else a hidden prompt. Empty is allowed
/// (the caller decides what it means).
fn read_line(from_stdin: bool, prompt: &str) -> Result<Passphrase> {
    crate::harden::harden_cli();
    if from_stdin {
        let mut s = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut s)
            .context("cannot read stdin")?;
        let line = s.trim_end_matches(['\n', '\r']).to_owned();
        zeroize::Zeroize::zeroize(&mut s);
        return Ok(Passphrase::new(line));
    }
    rpassword::prompt_password(prompt)
        .map(Passphrase::new)
        .map_err(|e| {
            Exit {
                code: 2,
                message: format!(
                    "cannot read from the terminal: {e}\nhint: use --values-stdin (with --passphrase-stdin: the passphrase on the first line, then one line per value the plan asks for)"
                ),
            }
            .into()
        })
}

/// `keyveil project apply`.
async fn apply(
    paths: &Paths,
    path: Option<PathBuf>,
    values_stdin: bool,
    dry_run: bool,
    factor: &FactorArgs,
) -> Result<i32> {
    let l = load(path)?;
    let have = existing(paths, &l.manifest).await?;
    let todo = print_plan(&l, &have);
    if dry_run {
        say(format!(
            "dry run: {todo} change(s) planned; nothing was changed"
        ));
        return Ok(0);
    }
    let input = match factor_from_args(factor, true)? {
        Some(f) => f,
        None => factor_input(
            false,
            None,
            false,
            "Vault passphrase to apply this manifest: ",
        )?,
    };
    // A passphrase is derived once (and checked against the vault file before anything
    // changes); each change is then signed with it. A TOTP code proves one request: the pin.
    let key = match &input {
        FactorInput::Passphrase(p) => Some(
            authorize::passphrase_key(paths, p)
                .await
                .map_err(auth_exit)?,
        ),
        FactorInput::Totp(_) => None,
    };
    let dir = l.path.parent().unwrap_or(Path::new("/")).to_path_buf();
    for e in &l.manifest.environments {
        let vars = have.get(&e.name);
        if vars.is_none() {
            call(
                paths,
                op::EnvCreate {
                    name: e.name.clone(),
                    description: e.description.clone(),
                },
            )
            .await?;
            say(format!("created environment {}", e.name));
        }
        for v in &e.variables {
            let todo = var_todo(vars, v);
            if todo == Todo::Replace {
                replace(paths, &e.name, v, values_stdin, key.as_ref()).await?;
                continue;
            }
            if todo != Todo::Add {
                continue;
            }
            let signer = match &key {
                Some(k) => Some(
                    authorize::authorize_with_key(paths, k)
                        .await
                        .map_err(auth_exit)?,
                ),
                None => None,
            };
            if v.is_local() {
                add_local(paths, &e.name, v, values_stdin, signer.as_ref()).await?;
            } else {
                add_linked(paths, &e.name, v, &dir, values_stdin, signer.as_ref()).await?;
            }
        }
    }
    let a = match &key {
        Some(k) => authorize::authorize_with_key(paths, k).await,
        None => authorize::authorize(paths, &input).await,
    }
    .map_err(auth_exit)?;
    let mut req = Request::ProjectApprove(op::ProjectApprove {
        path: l.path.display().to_string(),
        sha256: l.sha256.clone(),
        factor: None,
    });
    a.sign(&mut req);
    let d = expect::<op::ProjectApprove>(client::call(paths, &req).await?)?;
    say(format!(
        "approved {} (sha256 {}): {} pinned; a change to the file refuses their runs until you apply it again",
        d.path,
        d.sha256.get(..12).unwrap_or(&d.sha256),
        d.environments.join(", ")
    ));
    Ok(0)
}

/// Replaces the value of local variable `v` of `env`, stored without the factor, with one
/// the human types, sealed and signed with the passphrase (red team s14b, m9): the pin must
/// not vouch for a value an agent chose. Linked variables, and a TOTP code (which proves one
/// request: the pin), cannot do it here: the error says what to do.
async fn replace(
    paths: &Paths,
    env: &str,
    v: &VarDecl,
    values_stdin: bool,
    key: Option<&crate::factor_proof::FactorKey>,
) -> Result<()> {
    let refuse = |why: &str, hint: &str| -> anyhow::Error {
        Exit {
            code: 2,
            message: format!(
                "{env}/{} {why}; the manifest was not approved\nhint: {hint}",
                v.name
            ),
        }
        .into()
    };
    if !v.is_local() {
        return Err(refuse(
            "was linked without your factor",
            &format!(
                "check it, remove it (`keyveil unset {env} {}`), then run `keyveil project apply` again",
                v.name
            ),
        ));
    }
    let Some(k) = key else {
        return Err(refuse(
            "holds a value stored without your factor",
            "run `keyveil project apply` with your passphrase (it asks for that value again)",
        ));
    };
    let a = authorize::authorize_with_key(paths, k)
        .await
        .map_err(auth_exit)?;
    let value = read_line(
        values_stdin,
        &format!(
            "New value of {env}/{} (hidden; it was stored without your factor): ",
            v.name
        ),
    )?;
    if value.expose().is_empty() {
        return Err(refuse(
            "holds a value stored without your factor and no new value was typed",
            "run `keyveil project apply` again and type its value",
        ));
    }
    let aad = format!("{env}/{}", v.name);
    let mut req = Request::from(op::VarSet {
        environment: env.to_owned(),
        name: v.name.clone(),
        value: None,
        sealed_value: Some(a.seal(aad.as_bytes(), value.expose().as_bytes())?),
        factor: None,
    });
    a.sign(&mut req);
    expect::<op::VarSet>(client::call(paths, &req).await?)?;
    say(format!(
        "replaced {env}/{} (stored with your factor)",
        v.name
    ));
    Ok(())
}

/// Adds local variable `v` of `env`: the value typed (sealed and signed with the factor where
/// the passphrase was given), or declared awaiting one when the line is empty.
async fn add_local(
    paths: &Paths,
    env: &str,
    v: &VarDecl,
    values_stdin: bool,
    signer: Option<&authorize::Authorized>,
) -> Result<()> {
    let value = read_line(
        values_stdin,
        &format!(
            "Value of {env}/{} (hidden; empty leaves it awaiting `keyveil set`): ",
            v.name
        ),
    )?;
    if value.expose().is_empty() {
        call(
            paths,
            op::VarDeclare {
                environment: env.to_owned(),
                name: v.name.clone(),
                description: Some(v.description.clone()).filter(|d| !d.is_empty()),
                generate: false,
                length: None,
            },
        )
        .await?;
        say(format!("declared {env}/{} (awaiting its value)", v.name));
        return Ok(());
    }
    let mut set = op::VarSet {
        environment: env.to_owned(),
        name: v.name.clone(),
        value: None,
        sealed_value: None,
        factor: None,
    };
    let req = match signer {
        Some(a) => {
            let aad = format!("{env}/{}", v.name);
            set.sealed_value = Some(a.seal(aad.as_bytes(), value.expose().as_bytes())?);
            let mut req = Request::from(set);
            a.sign(&mut req);
            req
        }
        None => {
            set.value = Some(value);
            Request::from(set)
        }
    };
    expect::<op::VarSet>(client::call(paths, &req).await?)?;
    say(format!("stored {env}/{}", v.name));
    Ok(())
}

/// Adds OpenBao or dynamic variable `v` of `env` as `keyveil dynamic add` does (the admin
/// secret typed; a `ca_file` read relative to the manifest's directory), signed with the
/// factor where the passphrase was given.
async fn add_linked(
    paths: &Paths,
    env: &str,
    v: &VarDecl,
    dir: &Path,
    values_stdin: bool,
    signer: Option<&authorize::Authorized>,
) -> Result<()> {
    let what = if v.source.starts_with("openbao") {
        "OpenBao token or login secret"
    } else {
        "admin URL"
    };
    let admin = read_line(
        values_stdin,
        &format!("{what} for {env}/{} (hidden): ", v.name),
    )?;
    if admin.expose().is_empty() {
        return Err(Exit {
            code: 2,
            message: format!(
                "the {what} for {env}/{} is empty; the manifest was not approved\nhint: run `keyveil project apply` again and type it",
                v.name
            ),
        }
        .into());
    }
    let mut options = v.options.clone();
    let template = options.remove("template").unwrap_or_default();
    let output = options.remove("output").unwrap_or_default();
    if let Some(ca) = options.remove("ca_file") {
        let p = dir.join(&ca);
        let pem = std::fs::read_to_string(&p)
            .with_context(|| format!("cannot read the CA file {}", p.display()))?;
        options.insert("ca_pem".to_owned(), pem);
    }
    let mut req = Request::DynamicAdd(DynamicAddRequest {
        environment: env.to_owned(),
        name: Some(v.name.clone()),
        engine: v.source.clone(),
        admin,
        template,
        output,
        options,
        description: Some(v.description.clone()).filter(|d| !d.is_empty()),
        check: true,
        factor: None,
    });
    if let Some(a) = signer {
        a.sign(&mut req);
    }
    expect::<DynamicAddRequest>(client::call(paths, &req).await?)?;
    say(format!("linked {env}/{} ({})", v.name, v.source));
    Ok(())
}

/// `keyveil project status`.
async fn status(paths: &Paths, path: Option<PathBuf>, json: bool) -> Result<i32> {
    let pins = call(paths, op::ProjectStatus).await?;
    if json {
        say(json_text(&pins)?);
        return Ok(0);
    }
    let mut changed = false;
    if pins.pins.is_empty() {
        say("no environment is pinned to a manifest (apply one with `keyveil project apply`)");
    }
    for p in &pins.pins {
        let state = match &p.current {
            Some(c) if *c == p.sha256 => "unchanged".to_owned(),
            Some(c) => {
                changed = true;
                format!(
                    "CHANGED (now {}): runs refused until `keyveil project apply`",
                    c.get(..12).unwrap_or(c)
                )
            }
            None => {
                changed = true;
                "MISSING or unreadable: runs refused until `keyveil project apply`".to_owned()
            }
        };
        say(format!(
            "{}: {} approved {} (sha256 {}): {state}",
            p.environment,
            p.path,
            crate::when::human_time(&p.approved_at.to_string()),
            p.sha256.get(..12).unwrap_or(&p.sha256)
        ));
    }
    // What the manifest here declares that the vault lacks.
    let wanted = path.is_some() || Path::new(manifest::FILE_NAME).exists();
    if wanted {
        let l = load(path)?;
        let have = existing(paths, &l.manifest).await?;
        let mut missing = Vec::new();
        for e in &l.manifest.environments {
            match have.get(&e.name) {
                None => missing.push(format!("environment {}", e.name)),
                Some(have) => missing.extend(
                    e.variables
                        .iter()
                        .filter(|v| var_todo(Some(have), v) == Todo::Add)
                        .map(|v| format!("{}/{}", e.name, v.name)),
                ),
            }
            if let Some(have) = have.get(&e.name) {
                for v in &e.variables {
                    let t = var_todo(Some(have), v);
                    if t == Todo::Replace || t == Todo::Differs {
                        changed = true;
                        let side = have.vars.get(&v.name).map(vault_side).unwrap_or_default();
                        let what = if t == Todo::Replace {
                            "stored without your factor: run `keyveil project apply` to replace it"
                        } else {
                            "its source differs from the manifest's"
                        };
                        say(format!("{}/{}: {what} ({side})", e.name, v.name));
                    }
                }
            }
        }
        if missing.is_empty() {
            say(format!("{}: nothing missing", l.path.display()));
        } else {
            changed = true;
            say(format!(
                "{}: missing {} (run `keyveil project apply`)",
                l.path.display(),
                missing.join(", ")
            ));
        }
    }
    Ok(if changed { 1 } else { 0 })
}
