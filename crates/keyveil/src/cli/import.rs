//! `keyveil import ENV [FILE]`: bring existing secrets in from a `.env` file, from stdin
//! (`--stdin`, same syntax) or from variables of the current environment (`--from-env`).
//!
//! Every value goes to the broker on the path of `keyveil set`: one `VarSet` per variable,
//! sealed under the factor when the human gives it (the passphrase key is derived once, one
//! challenge per variable), plain only for a first value stored without the factor (as an
//! agent's `set --from-stdin` can). A variable that already has a value is replaced only with
//! `--replace` (or a "yes" typed on `/dev/tty`) *and* the factor, which the broker checks.
//! Reports, notes and errors name variables, never values. The plaintext file is removed or
//! rewritten only when asked (`--remove-file`, `--rewrite-file`, or an answer on `/dev/tty`);
//! nothing is ever read from stdin as an answer.
use std::collections::BTreeMap;
use std::io::BufRead;

use super::*;
use keyveil_dotenv as dotenv;

/// `keyveil import`'s arguments.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  keyveil import demo .env                  # asks for your passphrase, then what to do with .env
  keyveil import demo .env --remove-file    # delete .env once every value is stored
  keyveil import demo .env --rewrite-file   # keep .env, each imported line becomes a comment
  pass show app/env | keyveil import demo --stdin
  keyveil import demo --from-env DATABASE_URL,STRIPE_KEY")]
pub(crate) struct ImportArgs {
    /// Environment to import into (it must exist: `keyveil env create NAME`).
    pub(crate) env: String,
    /// A `.env` file: `NAME=VALUE` lines, `export`, quotes, escapes, multi-line quoted values,
    /// comments (`${OTHER}` is kept as written, never expanded).
    #[arg(required_unless_present_any = ["stdin", "from_env"], conflicts_with_all = ["stdin", "from_env"])]
    pub(crate) file: Option<PathBuf>,
    /// Read `.env` text from stdin (with `--passphrase-stdin` or `--totp-stdin`: the factor on
    /// the first line, the text after it).
    #[arg(long, conflicts_with = "from_env")]
    pub(crate) stdin: bool,
    /// Import these variables of the current environment (comma-separated or repeated).
    #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "NAME")]
    pub(crate) from_env: Vec<String>,
    /// Replace variables that already have a value (needs your factor).
    #[arg(long, conflicts_with = "skip_existing")]
    pub(crate) replace: bool,
    /// Leave variables that already have a value as they are; import the others.
    #[arg(long)]
    pub(crate) skip_existing: bool,
    /// Delete FILE once every value in it is stored.
    #[arg(long, requires = "file", conflicts_with = "rewrite_file")]
    pub(crate) remove_file: bool,
    /// Rewrite FILE once every value is stored: each imported entry becomes a comment naming
    /// the environment; everything else stays.
    #[arg(long, requires = "file", conflicts_with = "keep_file")]
    pub(crate) rewrite_file: bool,
    /// Leave FILE as it is, without asking.
    #[arg(long, requires = "file", conflicts_with = "remove_file")]
    pub(crate) keep_file: bool,
    /// Once every value is stored, put a mount in FILE's place (one atomic rename): the `.env`
    /// then exists only for a reader you approve (docs/mounts.md).
    #[arg(long, requires = "file", conflicts_with_all = ["remove_file", "rewrite_file", "keep_file"])]
    pub(crate) mount: bool,
    #[command(flatten)]
    pub(crate) factor: FactorArgs,
}

/// One variable to import.
struct Item {
    name: String,
    value: Passphrase,
    /// Where it came from, for messages ("line 4", "the environment").
    origin: String,
}

/// What the file should become after the import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileAction {
    Keep,
    Remove,
    Rewrite,
    Mount,
}

pub(crate) async fn import(paths: &Paths, a: ImportArgs) -> Result<i32> {
    let env = a.env.clone();
    // 1. Read what to import, and the factor if it comes first on stdin.
    let mut given;
    let mut file_text: Option<zeroize::Zeroizing<String>> = None;
    let mut notes: Vec<String> = Vec::new();
    let items: Vec<Item> = if !a.from_env.is_empty() {
        given = factor_from_args(&a.factor, true)?;
        from_environment(&a.from_env)?
    } else {
        let text = if a.stdin {
            let mut buf = zeroize::Zeroizing::new(Vec::new());
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read stdin")?;
            if a.factor.passphrase_stdin || a.factor.totp_stdin {
                refuse_argv_factor(a.factor.totp.as_ref())?;
                let cut = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
                let upto = cut.saturating_add(1).min(buf.len());
                let first: zeroize::Zeroizing<Vec<u8>> =
                    zeroize::Zeroizing::new(buf.drain(..upto).collect());
                let line = Passphrase::new(
                    String::from_utf8_lossy(&first)
                        .trim_end_matches(['\n', '\r'])
                        .to_owned(),
                );
                given = Some(if a.factor.totp_stdin {
                    FactorInput::Totp(line)
                } else {
                    FactorInput::Passphrase(line)
                });
            } else {
                given = factor_from_args(&a.factor, false)?;
            }
            zeroize::Zeroizing::new(String::from_utf8(buf.to_vec()).map_err(|_| Exit {
                code: 2,
                message: "the text on stdin is not valid UTF-8; nothing was imported".into(),
            })?)
        } else {
            given = factor_from_args(&a.factor, true)?;
            let path = a.file.as_deref().unwrap_or(std::path::Path::new(""));
            let bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| Exit {
                code: 1,
                message: format!("cannot read {}: {e}; nothing was imported", path.display()),
            })?);
            zeroize::Zeroizing::new(String::from_utf8(bytes.to_vec()).map_err(|_| Exit {
                code: 2,
                message: format!(
                    "{} is not valid UTF-8 text; nothing was imported",
                    path.display()
                ),
            })?)
        };
        let source = a
            .file
            .as_ref()
            .map_or_else(|| "stdin".to_owned(), |p| p.display().to_string());
        let entries = dotenv::parse(&text).map_err(|e| Exit {
            code: 2,
            message: format!(
                "cannot read {source} as a .env file: {e}; nothing was imported\nhint: each entry is NAME=VALUE (optionally after `export`); quote values with spaces, `#` or several lines"
            ),
        })?;
        let items = from_entries(entries, &mut notes);
        if a.file.is_some() {
            file_text = Some(text);
        }
        items
    };
    for n in &notes {
        note(n);
    }
    // 2. The environment must exist; then which names would replace a stored value (a probe
    //    without the value, as `keyveil set --from-stdin` makes).
    call(
        paths,
        op::EnvShow {
            name: env.clone(),
            versions: false,
        },
    )
    .await?;
    let mut stored = Vec::new();
    for it in &items {
        if needs_factor(paths, &env, &it.name).await? {
            stored.push(it.name.clone());
        }
    }
    let mut items = items;
    let mut kept = Vec::new();
    if !stored.is_empty() && !a.replace {
        let replace = !a.skip_existing
            && ask_tty(&format!(
                "{} already {} a value in '{env}' (or the policy hides {}): replace {} (needs your factor)? [y/N] ",
                stored.join(", "),
                if stored.len() == 1 { "has" } else { "have" },
                if stored.len() == 1 { "its name" } else { "their names" },
                if stored.len() == 1 { "it" } else { "them" },
            ))
            .is_some_and(|ans| matches!(ans.trim(), "y" | "Y" | "yes"));
        if !replace {
            if !a.skip_existing && !tty_available() {
                return Err(Exit {
                    code: 1,
                    message: format!(
                        "{} already {} a value in '{env}' (or the environment hides names, and every change there needs your factor); nothing was imported\nhint: `--replace` replaces {} (with your factor); `--skip-existing` imports only the others",
                        stored.join(", "),
                        if stored.len() == 1 { "has" } else { "have" },
                        if stored.len() == 1 { "it" } else { "them" },
                    ),
                }
                .into());
            }
            items.retain(|it| !stored.contains(&it.name));
            kept = std::mem::take(&mut stored);
        }
    }
    if items.is_empty() {
        say(match kept.len() {
            0 => "nothing to import".to_owned(),
            _ => format!(
                "nothing imported; kept the stored {} of {}",
                plural(kept.len(), "value", "values"),
                kept.join(", ")
            ),
        });
        return Ok(0);
    }
    // 3. The factor: given up front, or asked at the terminal (the human is there); without a
    //    terminal, only first values can be stored, and they count as ones an agent could have
    //    chosen.
    if given.is_none() && tty_available() {
        given = Some(factor_input(
            false,
            None,
            false,
            &format!(
                "Vault passphrase (or TOTP code) to hand {} to your broker sealed: ",
                plural(items.len(), "value", "values")
            ),
        )?);
    }
    if given.is_none() && !stored.is_empty() {
        return Err(Exit {
            code: 3,
            message: format!(
                "{FACTOR_NEEDED}: {} already {} a value in '{env}'; nothing was imported\nhint: run it in your own terminal (keyveil asks for your passphrase), or add `--passphrase-stdin`",
                stored.join(", "),
                if stored.len() == 1 { "has" } else { "have" },
            ),
        }
        .into());
    }
    if matches!(given, Some(FactorInput::Totp(_))) && items.len() > 1 {
        return Err(Exit {
            code: 2,
            message: format!(
                "a TOTP code proves one change, and this import stores {}; nothing was imported\nhint: give the vault passphrase instead (asked at the terminal, or `--passphrase-stdin`)",
                plural(items.len(), "value", "values")
            ),
        }
        .into());
    }
    // 4. Store, one variable at a time.
    let mut done: Vec<String> = Vec::new();
    let mut replaced: Vec<String> = Vec::new();
    let key = match &given {
        Some(FactorInput::Passphrase(p)) => Some(
            authorize::passphrase_key(paths, p)
                .await
                .map_err(auth_exit)?,
        ),
        _ => None,
    };
    for it in &items {
        let r = store_one(paths, &env, it, given.as_ref(), key.as_ref()).await;
        match r {
            Ok(d) => {
                if d.replaced {
                    replaced.push(it.name.clone());
                }
                if d.short_value {
                    note(format!(
                        "warning: the value of {} is shorter than 8 bytes: it is redacted only where it stands as a whole token",
                        it.name
                    ));
                }
                done.push(it.name.clone());
            }
            Err(e) => {
                let left: Vec<&str> = items
                    .iter()
                    .skip(done.len())
                    .map(|i| i.name.as_str())
                    .collect();
                let mut msg = format!("storing {} ({}) failed: {e}", it.name, it.origin);
                if done.is_empty() {
                    msg.push_str("\nnothing was imported");
                } else {
                    msg.push_str(&format!(
                        "\nimported before the failure: {}\nnot imported: {}",
                        done.join(", "),
                        left.join(", ")
                    ));
                }
                let code = e.downcast_ref::<Exit>().map_or(1, |x| x.code);
                return Err(Exit { code, message: msg }.into());
            }
        }
    }
    let mut report = format!(
        "imported {} into {env}: {}",
        plural(done.len(), "variable", "variables"),
        done.join(", ")
    );
    if !replaced.is_empty() {
        report.push_str(&format!("\nreplaced: {}", replaced.join(", ")));
    }
    if !kept.is_empty() {
        report.push_str(&format!("\nkept as stored: {}", kept.join(", ")));
    }
    say(report);
    if given.is_none() {
        note(
            "note: stored without your factor (no terminal): approval cards mark these values as ones an agent could have chosen\nhint: import from your own terminal, or add `--passphrase-stdin`, so they count as yours",
        );
    }
    // 5. The plaintext file: removed or rewritten only when asked.
    if let (Some(path), Some(text)) = (a.file.as_deref(), file_text) {
        let action = if a.mount {
            FileAction::Mount
        } else if a.remove_file {
            FileAction::Remove
        } else if a.rewrite_file {
            FileAction::Rewrite
        } else if a.keep_file {
            FileAction::Keep
        } else {
            ask_file_action(path)
        };
        let all_in = kept.is_empty();
        match action {
            FileAction::Remove if !all_in => {
                note(format!(
                    "kept {}: it holds values that were not imported ({})\nhint: `--rewrite-file` turns the imported entries into comments",
                    path.display(),
                    kept.join(", ")
                ));
            }
            FileAction::Mount if !all_in => {
                note(format!(
                    "kept {} and mounted nothing: it holds values that were not imported ({})\nhint: import them (`--replace`), then run the import again with `--mount`",
                    path.display(),
                    kept.join(", ")
                ));
            }
            FileAction::Mount => {
                let d = super::call(
                    paths,
                    op::Mount {
                        environment: env.clone(),
                        path: super::absolute(path)?,
                        replace: true,
                    },
                )
                .await?;
                say(format!(
                    "{} is now a mount of environment {env}: each read waits for your approval\nnote: the plaintext file's old blocks may remain on disk, in backups or in git history; `keyveil sweep` finds copies",
                    crate::card::esc(&d.mount.path)
                ));
            }
            FileAction::Remove => {
                std::fs::remove_file(path).map_err(|e| Exit {
                    code: 1,
                    message: format!(
                        "the values are stored, but {} could not be removed: {e}\nhint: remove it yourself",
                        path.display()
                    ),
                })?;
                say(format!("removed {}", path.display()));
            }
            FileAction::Rewrite => {
                rewrite_file(path, &text, &done, &env)?;
                say(format!(
                    "rewrote {}: {} now {} to keyveil",
                    path.display(),
                    plural(done.len(), "entry", "entries"),
                    if done.len() == 1 { "points" } else { "point" }
                ));
            }
            FileAction::Keep => {
                note(format!(
                    "{} still holds the values in plain text\nhint: once `keyveil run --env {env} -- YOUR_COMMAND` works, delete it or run the import again with `--rewrite-file`",
                    path.display()
                ));
            }
        }
    }
    Ok(0)
}

/// `n noun` with the right number.
pub(crate) fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The named variables of this process's environment.
fn from_environment(names: &[String]) -> Result<Vec<Item>> {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for name in names {
        match std::env::var_os(name) {
            None => missing.push(name.clone()),
            Some(v) => {
                let Ok(v) = v.into_string() else {
                    return Err(Exit {
                        code: 2,
                        message: format!(
                            "{name} in the current environment is not valid UTF-8; nothing was imported"
                        ),
                    }
                    .into());
                };
                if v.is_empty() {
                    missing.push(format!("{name} (empty)"));
                    continue;
                }
                out.push(Item {
                    name: name.clone(),
                    value: Passphrase::new(v),
                    origin: "the environment".into(),
                });
            }
        }
    }
    if !missing.is_empty() {
        return Err(Exit {
            code: 2,
            message: format!(
                "not set in the current environment: {}; nothing was imported\nhint: `export NAME=...` in this shell first, or import from a file",
                missing.join(", ")
            ),
        }
        .into());
    }
    Ok(out)
}

/// The entries of a `.env` text to store: the last of a name given twice (as loaders do), none
/// with an empty value (keyveil stores no empty values); what was left out goes to `notes`.
fn from_entries(entries: Vec<dotenv::Entry>, notes: &mut Vec<String>) -> Vec<Item> {
    let mut last: BTreeMap<String, usize> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some(prev) = last.insert(e.name.clone(), i)
            && let Some(p) = entries.get(prev)
        {
            notes.push(format!(
                "note: {} is given on line {} and again on line {}: the later one is imported",
                e.name, p.line, e.line
            ));
        }
    }
    let mut out = Vec::new();
    for (i, e) in entries.into_iter().enumerate() {
        if last.get(&e.name) != Some(&i) {
            continue;
        }
        if e.value.is_empty() {
            notes.push(format!(
                "note: skipped {} (line {}): its value is empty, and keyveil stores no empty values",
                e.name, e.line
            ));
            continue;
        }
        if e.has_reference() {
            notes.push(format!(
                "note: {} (line {}) contains `$`: imported as written, never expanded",
                e.name, e.line
            ));
        }
        out.push(Item {
            name: e.name,
            value: Passphrase::new(e.value.to_string()),
            origin: format!("line {}", e.line),
        });
    }
    out
}

/// Whether storing `env/name` needs the factor (it would replace a stored value, or the
/// environment hides names), asked without the value.
async fn needs_factor(paths: &Paths, env: &str, name: &str) -> Result<bool> {
    let probe = Request::VarSet(op::VarSet {
        environment: env.to_owned(),
        name: name.to_owned(),
        value: None,
        sealed_value: None,
        factor: None,
    });
    match client::call(paths, &probe).await? {
        Reply::Error {
            code: ErrorCode::Denied,
            message,
            ..
        } if message.starts_with(FACTOR_NEEDED) => Ok(true),
        other => expect::<op::VarSet>(other).map(|_| false),
    }
}

/// One `VarSet`: sealed under a fresh challenge of the factor when there is one, plain
/// otherwise (a first value).
async fn store_one(
    paths: &Paths,
    env: &str,
    it: &Item,
    given: Option<&FactorInput>,
    key: Option<&crate::factor_proof::FactorKey>,
) -> Result<op::VarStored> {
    let auth = match (key, given) {
        (Some(k), _) => Some(
            authorize::authorize_with_key(paths, k)
                .await
                .map_err(auth_exit)?,
        ),
        (None, Some(input)) => Some(
            authorize::authorize(paths, input)
                .await
                .map_err(auth_exit)?,
        ),
        (None, None) => None,
    };
    let mut set = op::VarSet {
        environment: env.to_owned(),
        name: it.name.clone(),
        value: None,
        sealed_value: None,
        factor: None,
    };
    let req = match &auth {
        None => {
            set.value = Some(it.value.clone());
            Request::from(set)
        }
        Some(a) => {
            let aad = format!("{env}/{}", it.name);
            set.sealed_value = Some(a.seal(aad.as_bytes(), it.value.expose().as_bytes())?);
            let mut req = Request::from(set);
            a.sign(&mut req);
            req
        }
    };
    match expect::<op::VarSet>(client::call(paths, &req).await?)? {
        op::VarSetReply::Stored(d) => Ok(d),
        op::VarSetReply::Probe { .. } => {
            bail!("the broker answered a value as if it were a probe")
        }
    }
}

/// Whether this process has a terminal to ask on (`/dev/tty` opens).
fn tty_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .is_ok()
}

/// Asks `prompt` on `/dev/tty` and returns the answer line; `None` without a terminal. Never
/// reads stdin (whoever controls our stdin is not necessarily the human).
fn ask_tty(prompt: &str) -> Option<String> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .ok()?;
    let mut out = tty.try_clone().ok()?;
    let _ = write!(out, "{prompt}");
    let _ = out.flush();
    let mut line = String::new();
    std::io::BufReader::new(tty).read_line(&mut line).ok()?;
    Some(line)
}

/// What to do with the plaintext file, asked on the terminal; without one, keep it.
fn ask_file_action(path: &std::path::Path) -> FileAction {
    match ask_tty(&format!(
        "{} still holds these values in plain text: [r]emove it, re[w]rite it with the imported entries as comments, or [k]eep it? [k] ",
        path.display()
    ))
    .as_deref()
    .map(str::trim)
    {
        Some("r" | "R" | "remove") => FileAction::Remove,
        Some("w" | "W" | "rewrite") => FileAction::Rewrite,
        _ => FileAction::Keep,
    }
}

/// Rewrites `path` (whose text was `text`): each entry named in `done` becomes
/// `# NAME: imported into keyveil (keyveil run --env ENV -- ...)`; every other byte stays. The
/// new file replaces the old one atomically, with the old one's permissions.
fn rewrite_file(path: &std::path::Path, text: &str, done: &[String], env: &str) -> Result<()> {
    let entries = dotenv::parse(text).map_err(|e| Exit {
        code: 1,
        message: format!("{} changed meanwhile: {e}", path.display()),
    })?;
    let mut out = zeroize::Zeroizing::new(String::with_capacity(text.len()));
    let mut at = 0;
    for e in &entries {
        if !done.contains(&e.name) {
            continue;
        }
        out.push_str(text.get(at..e.span.start).unwrap_or_default());
        out.push_str(&format!(
            "# {}: imported into keyveil (keyveil run --env {env} -- ...)",
            e.name
        ));
        at = e.span.end;
    }
    out.push_str(text.get(at..).unwrap_or_default());
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile_in(dir)?;
    tmp.1.write_all(out.as_bytes())?;
    tmp.1.sync_all()?;
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&tmp.0, meta.permissions());
    }
    std::fs::rename(&tmp.0, path).map_err(|e| Exit {
        code: 1,
        message: format!(
            "the values are stored, but {} could not be rewritten: {e}\nhint: edit it yourself; {} is the rewritten copy",
            path.display(),
            tmp.0.display()
        ),
    })?;
    Ok(())
}

/// A new file next to the one being rewritten (same file system, so `rename` is atomic),
/// created with mode 0600.
fn tempfile_in(dir: &std::path::Path) -> Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    for _ in 0..16 {
        let mut r = [0u8; 6];
        getrandom::fill(&mut r).map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?;
        let p = dir.join(format!(".keyveil-import-{}", hex::encode(r)));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
        {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).context(format!("cannot write in {}", dir.display())),
        }
    }
    bail!("cannot create a temporary file in {}", dir.display())
}
