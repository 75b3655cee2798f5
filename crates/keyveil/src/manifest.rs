//! The project manifest, `keyveil.toml` (`docs/manifest.md`): a file committed to a repository
//! that declares environments, their variable names and where each value comes from (typed by
//! the teammate, an OpenBao KV v2 path, a dynamic engine). Parsed with `toml_edit` (its spans
//! give line numbers); every key is checked, and one this module does not know is refused, so a
//! typo never silently declares less than the file says.
//!
//! The manifest never holds a value or a credential: the admin secrets of the OpenBao and
//! dynamic sources, and the teammate's own values, are typed at `keyveil project apply`.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use sha2::Digest;

/// The default file name, looked up in the current directory.
pub(crate) const FILE_NAME: &str = "keyveil.toml";

/// Largest manifest read, bytes (the CLI's and the broker's reads both stop there).
pub(crate) const MAX_BYTES: u64 = 1 << 20;

/// Source kinds a variable may declare.
const SOURCES: &[&str] = &[
    "local",
    "openbao-kv",
    "openbao-database",
    "postgres",
    "redis",
];

/// Login and connection keys every OpenBao-backed source may set (`env link --openbao` flags).
const OPENBAO_KEYS: &[&str] = &[
    "address",
    "mount",
    "namespace",
    "ca_file",
    "auth",
    "auth_mount",
    "role_id",
    "auth_role",
    "username",
];

/// Keys a variable of each source may set besides `source` and `description`: for OpenBao
/// sources, [`OPENBAO_KEYS`] followed by the engine's own.
fn keys_of(source: &str) -> Vec<&'static str> {
    let own: &[&str] = match source {
        "openbao-kv" => &["path", "key"],
        "openbao-database" => &["role", "connect_url", "output"],
        "postgres" | "redis" => return vec!["template", "output", "connect_url", "prefix"],
        _ => return Vec::new(),
    };
    OPENBAO_KEYS.iter().chain(own).copied().collect()
}

/// Keys each source must set.
fn required_of(source: &str) -> &'static [&'static str] {
    match source {
        "openbao-kv" => &["address", "path"],
        "openbao-database" => &["address", "role"],
        "postgres" | "redis" => &["template"],
        _ => &[],
    }
}

/// A parsed, checked manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Manifest {
    /// Environments in file order.
    pub(crate) environments: Vec<EnvDecl>,
}

/// One `[environments.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnvDecl {
    /// Environment name.
    pub(crate) name: String,
    /// Its description (empty if none).
    pub(crate) description: String,
    /// Its variables in file order.
    pub(crate) variables: Vec<VarDecl>,
}

/// One `[environments.ENV.variables.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VarDecl {
    /// Variable name.
    pub(crate) name: String,
    /// Description shown to agents (empty if none).
    pub(crate) description: String,
    /// `local` (typed by the teammate), `openbao-kv`, `openbao-database`, `postgres`, `redis`.
    pub(crate) source: String,
    /// Every other key, as written (`address`, `path`, `template`, ...); strings only.
    pub(crate) options: BTreeMap<String, String>,
}

impl VarDecl {
    /// Whether the teammate types this variable's value.
    pub(crate) fn is_local(&self) -> bool {
        self.source == "local"
    }

    /// One line for the plan and the status: the source and where it points. Never a value:
    /// the manifest holds none, and the template is summarised by its length.
    pub(crate) fn shown_source(&self) -> String {
        let mut out = self.source.clone();
        for (k, v) in &self.options {
            if k == "template" {
                out.push_str(&format!(" template=({} bytes)", v.len()));
            } else {
                out.push_str(&format!(
                    " {k}={}",
                    keyveil_proto::display::visible(&keyveil_proto::display::clip(v, 120))
                ));
            }
        }
        out
    }
}

/// Why a manifest was refused: where, what, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ManifestError {
    /// 1-based line of the offending key or value.
    pub(crate) line: usize,
    /// What is wrong.
    pub(crate) message: String,
    /// What to do about it.
    pub(crate) hint: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}: {}\nhint: {}",
            self.line, self.message, self.hint
        )
    }
}

impl std::error::Error for ManifestError {}

/// The path a manifest is pinned at: its folder canonical (symlinks in the folders above it
/// resolved), joined with its own name, which must not be a symlink. A `keyveil.toml` that is
/// a link would pin where it points (a copy in a folder of an agent's, say) while the
/// repository's own file, replaced later, went unchecked (red team s14b, m3).
///
/// # Errors
/// A sentence: missing, or a symlink (saying where it points).
pub(crate) fn canonical_path(path: &std::path::Path) -> Result<std::path::PathBuf, String> {
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} does not name a file", path.display()))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let dir = std::fs::canonicalize(parent)
        .map_err(|e| format!("cannot find {}: {e}", path.display()))?;
    let canon = dir.join(name);
    match std::fs::symlink_metadata(&canon) {
        Ok(m) if m.file_type().is_symlink() => {
            let to = std::fs::read_link(&canon)
                .map_or_else(|_| "?".to_owned(), |t| t.display().to_string());
            Err(format!(
                "{} is a symlink (to {to}); keyveil pins the repository's own file, never where a link points",
                canon.display()
            ))
        }
        Ok(_) => Ok(canon),
        Err(e) => Err(format!("cannot find {}: {e}", canon.display())),
    }
}

/// Reads a manifest's bytes without ever blocking or following a symlink (the path's last
/// component: [`canonical_path`]; `pin::files::open_regular` opens with `O_NOFOLLOW`, so a
/// link swapped in meanwhile fails too, and a FIFO an agent puts in its place does not hang
/// the broker), at most [`MAX_BYTES`].
///
/// # Errors
/// A sentence: missing, a symlink, not a regular file, too large, unreadable.
pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let canon = canonical_path(path)?;
    let (f, m) = crate::pin::open_regular(&canon).map_err(|o| match o {
        crate::pin::Opened::Missing => {
            format!("{} is missing or not a regular file", canon.display())
        }
        crate::pin::Opened::Odd(kind) => {
            format!("{} is a {kind}, not a regular file", canon.display())
        }
    })?;
    if m.len() > MAX_BYTES {
        return Err(format!(
            "{} is larger than {MAX_BYTES} bytes",
            canon.display()
        ));
    }
    let mut bytes = Vec::new();
    f.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", canon.display()))?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(format!(
            "{} is larger than {MAX_BYTES} bytes",
            canon.display()
        ));
    }
    Ok(bytes)
}

/// SHA-256 of `bytes` as 64 lowercase hex digits.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()
        .get(..end)
        .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
        + 1
}

/// Walks the document, keeping the text for line numbers.
struct Walker<'t> {
    text: &'t str,
}

impl Walker<'_> {
    fn err(&self, span: Option<Range<usize>>, message: String, hint: &str) -> ManifestError {
        ManifestError {
            line: span.map_or(1, |s| line_of(self.text, s.start)),
            message,
            hint: hint.to_owned(),
        }
    }

    /// The span of `key` in `table` (the key's own, else its item's).
    fn span_of(table: &dyn toml_edit::TableLike, key: &str) -> Option<Range<usize>> {
        table
            .key(key)
            .and_then(toml_edit::Key::span)
            .or_else(|| table.get(key).and_then(toml_edit::Item::span))
    }

    /// `item` as a table, or an error naming `what`.
    fn table<'a>(
        &self,
        item: &'a toml_edit::Item,
        span: Option<Range<usize>>,
        what: &str,
    ) -> Result<&'a dyn toml_edit::TableLike, ManifestError> {
        item.as_table_like().ok_or_else(|| {
            self.err(
                span,
                format!("{what} must be a table, not a {}", item.type_name()),
                &format!("write it as a [{what}] table header with its keys under it"),
            )
        })
    }

    /// The string at `key` of `table`.
    fn string(
        &self,
        table: &dyn toml_edit::TableLike,
        key: &str,
        where_: &str,
    ) -> Result<String, ManifestError> {
        let item = table.get(key);
        match item.and_then(toml_edit::Item::as_str) {
            Some(s) => Ok(s.to_owned()),
            None => Err(self.err(
                Self::span_of(table, key),
                format!(
                    "{where_}.{key} must be a string, not a {}",
                    item.map_or("nothing", toml_edit::Item::type_name)
                ),
                &format!("quote it: {key} = \"...\""),
            )),
        }
    }

    fn top(&self, doc: &toml_edit::Table) -> Result<Manifest, ManifestError> {
        for (k, item) in doc.iter() {
            match k {
                "version" => {
                    if item.as_integer() != Some(1) {
                        return Err(self.err(
                            Self::span_of(doc, k),
                            "unsupported manifest version (this keyveil reads version = 1)"
                                .to_owned(),
                            "write version = 1, or upgrade keyveil",
                        ));
                    }
                }
                "environments" => {}
                other => {
                    return Err(self.err(
                        Self::span_of(doc, k),
                        format!("unknown key {:?} at the top level", clip(other)),
                        "the top level holds `version` and `[environments.NAME]` tables only",
                    ));
                }
            }
        }
        let Some(envs) = doc.get("environments") else {
            return Err(self.err(
                None,
                "the manifest declares no environment".to_owned(),
                "add one: [environments.dev] then [environments.dev.variables.NAME] source = \"local\"",
            ));
        };
        let envs = self.table(envs, Self::span_of(doc, "environments"), "environments")?;
        let mut environments = Vec::new();
        for (name, item) in envs.iter() {
            let span = Self::span_of(envs, name);
            if !keyveil_vault::is_valid_new_environment_name(name) {
                return Err(self.err(
                    span,
                    format!("invalid environment name {:?}", clip(name)),
                    "use letters, digits, '_' and '-', starting with a letter (at most 64)",
                ));
            }
            let t = self.table(item, span, &format!("environments.{name}"))?;
            environments.push(self.env(name, t)?);
        }
        if environments.is_empty() {
            return Err(self.err(
                Self::span_of(doc, "environments"),
                "the manifest declares no environment".to_owned(),
                "add one: [environments.dev]",
            ));
        }
        Ok(Manifest { environments })
    }

    fn env(&self, name: &str, t: &dyn toml_edit::TableLike) -> Result<EnvDecl, ManifestError> {
        let where_ = format!("environments.{name}");
        let mut description = String::new();
        let mut variables = Vec::new();
        for (k, item) in t.iter() {
            match k {
                "description" => description = self.string(t, k, &where_)?,
                "variables" => {
                    let vars =
                        self.table(item, Self::span_of(t, k), &format!("{where_}.variables"))?;
                    for (var, vitem) in vars.iter() {
                        let span = Self::span_of(vars, var);
                        if !keyveil_vault::is_valid_name(var) {
                            return Err(self.err(
                                span,
                                format!("invalid variable name {:?}", clip(var)),
                                "names follow environment-variable rules [A-Za-z_][A-Za-z0-9_]* (at most 128 characters)",
                            ));
                        }
                        if crate::loaders::is_injection_var(var)
                            || crate::loaders::is_loader_var(var)
                        {
                            return Err(self.err(
                                span,
                                format!("{var} names a variable that makes programs load code"),
                                "keyveil never injects such a variable; remove it from the manifest",
                            ));
                        }
                        let vt = self.table(vitem, span, &format!("{where_}.variables.{var}"))?;
                        variables.push(self.var(&format!("{where_}.variables.{var}"), var, vt)?);
                    }
                }
                other => {
                    return Err(self.err(
                        Self::span_of(t, k),
                        format!("unknown key {:?} in [{where_}]", clip(other)),
                        "an environment holds `description` and `[...variables.NAME]` tables only",
                    ));
                }
            }
        }
        Ok(EnvDecl {
            name: name.to_owned(),
            description,
            variables,
        })
    }

    fn var(
        &self,
        where_: &str,
        name: &str,
        t: &dyn toml_edit::TableLike,
    ) -> Result<VarDecl, ManifestError> {
        let source = if t.contains_key("source") {
            self.string(t, "source", where_)?
        } else {
            "local".to_owned()
        };
        if !SOURCES.contains(&source.as_str()) {
            return Err(self.err(
                Self::span_of(t, "source"),
                format!("unknown source {:?} in [{where_}]", clip(&source)),
                &format!("use one of: {}", SOURCES.join(", ")),
            ));
        }
        let allowed = keys_of(&source);
        let mut description = String::new();
        let mut options = BTreeMap::new();
        for (k, _) in t.iter() {
            match k {
                "source" => {}
                "description" => description = self.string(t, k, where_)?,
                k if allowed.contains(&k) => {
                    options.insert(k.to_owned(), self.string(t, k, where_)?);
                }
                other => {
                    let hint = if allowed.is_empty() {
                        format!("a {source} variable holds `source` and `description` only")
                    } else {
                        format!(
                            "a {source} variable holds source, description, {}",
                            allowed.join(", ")
                        )
                    };
                    return Err(self.err(
                        Self::span_of(t, k),
                        format!("unknown key {:?} in [{where_}]", clip(other)),
                        &hint,
                    ));
                }
            }
        }
        for req in required_of(&source) {
            if !options.contains_key(*req) {
                return Err(self.err(
                    t.key("source").and_then(toml_edit::Key::span),
                    format!("[{where_}] has source = \"{source}\" but no {req}"),
                    &format!("add {req} = \"...\" to it"),
                ));
            }
        }
        Ok(VarDecl {
            name: name.to_owned(),
            description,
            source,
            options,
        })
    }
}

/// A name shown in an error, clipped and with control characters made visible.
fn clip(s: &str) -> String {
    keyveil_proto::display::visible(&keyveil_proto::display::clip(s, 60))
}

/// Parses and checks a manifest.
///
/// # Errors
/// [`ManifestError`] with the line: TOML syntax, an unknown key, a wrong type, an invalid or
/// code-loading name, a source missing a required key, no environment.
pub(crate) fn parse(text: &str) -> Result<Manifest, ManifestError> {
    let doc = toml_edit::Document::parse(text.to_owned()).map_err(|e| ManifestError {
        line: e.span().map_or(1, |s| line_of(text, s.start)),
        message: format!(
            "not valid TOML: {}",
            e.message().lines().next().unwrap_or("syntax error")
        ),
        hint: "fix the syntax at that line (https://toml.io); nothing was changed".to_owned(),
    })?;
    Walker { text }.top(doc.as_table())
}

#[cfg(test)]
mod tests;
