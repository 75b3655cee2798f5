//! The CI allowlist file (`keyveil ci start --policy FILE`): `[[allow]]` tables with the same
//! shape as `keyveil policy ENV auto-approve` rules (`docs/ci.md`).
//!
//! ```toml
//! [[allow]]
//! environment = "ci"
//! argv = ["make", "test"]
//! prefix = false        # optional: argv is a prefix (as `--prefix`)
//! cwd = "."             # optional: relative to where `ci start` ran (its default)
//! ttl_seconds = 21600   # optional: the grants' lifetime
//! ```

use std::path::Path;

use keyveil_proto::ErrorCode;
use toml_edit::{DocumentMut, Item, TableLike, Value};

use crate::broker::state::OpError;

/// The default lifetime of a grant a rule makes: six hours, GitHub's longest job.
const DEFAULT_TTL_SECONDS: u64 = 6 * 3600;
/// The most rules a file may hold.
const MAX_RULES: usize = 256;

/// One rule as written, its `cwd` resolved and canonical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rule {
    pub(super) environment: String,
    pub(super) argv: Vec<String>,
    pub(super) prefix: bool,
    pub(super) cwd: String,
    pub(super) ttl_seconds: u64,
}

/// A refusal of the file: what is wrong with rule `n` (1-based) and what to do.
fn bad(n: usize, what: impl std::fmt::Display) -> OpError {
    OpError::new(
        ErrorCode::Usage,
        format!("the CI allowlist: rule {n}: {what}; nothing was started"),
    )
    .hint("each [[allow]] holds environment (string), argv (array of strings) and optionally prefix (bool), cwd (string), ttl_seconds (integer); see docs/ci.md")
}

/// Parses the allowlist; relative `cwd` are resolved in `base`.
///
/// Errors: not TOML, an unknown key, a wrong type, no rule, a `cwd` that does not exist.
pub(super) fn parse(text: &str, base: &Path) -> Result<Vec<Rule>, OpError> {
    let doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        OpError::new(
            ErrorCode::Usage,
            format!("the CI allowlist is not valid TOML: {}", e.message()),
        )
        .hint("fix the file (docs/ci.md shows its form); nothing was started")
    })?;
    for (k, _) in doc.iter() {
        if k != "allow" {
            return Err(OpError::new(
                ErrorCode::Usage,
                format!("the CI allowlist has an unknown key {k:?}; nothing was started"),
            )
            .hint("the file holds [[allow]] tables only"));
        }
    }
    let Some(tables) = doc.get("allow").and_then(Item::as_array_of_tables) else {
        return Err(OpError::new(
            ErrorCode::Usage,
            "the CI allowlist has no [[allow]] rule; nothing was started",
        )
        .hint("add at least one [[allow]] table (docs/ci.md)"));
    };
    if tables.len() > MAX_RULES {
        return Err(bad(MAX_RULES + 1, format!("at most {MAX_RULES} rules")));
    }
    tables
        .iter()
        .enumerate()
        .map(|(i, t)| rule(i + 1, t, base))
        .collect()
}

/// One `[[allow]]` table.
fn rule(n: usize, t: &dyn TableLike, base: &Path) -> Result<Rule, OpError> {
    for (k, _) in t.iter() {
        if !matches!(k, "environment" | "argv" | "prefix" | "cwd" | "ttl_seconds") {
            return Err(bad(n, format!("unknown key {k:?}")));
        }
    }
    let value = |k: &str| t.get(k).and_then(Item::as_value);
    let environment = value("environment")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(n, "environment must be a string"))?
        .to_owned();
    let argv: Vec<String> = value("argv")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(n, "argv must be an array of strings"))?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect::<Option<_>>()
        .ok_or_else(|| bad(n, "argv must be an array of strings"))?;
    if argv.is_empty() || argv.iter().any(String::is_empty) {
        return Err(bad(n, "argv must name a command (no empty token)"));
    }
    let prefix = match value("prefix") {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| bad(n, "prefix must be true or false"))?,
    };
    let ttl_seconds = match value("ttl_seconds") {
        None => DEFAULT_TTL_SECONDS,
        Some(v) => v
            .as_integer()
            .and_then(|i| u64::try_from(i).ok())
            .filter(|&i| i > 0)
            .ok_or_else(|| bad(n, "ttl_seconds must be a positive integer"))?,
    };
    let cwd = match value("cwd") {
        None => base.to_path_buf(),
        Some(v) => base.join(v.as_str().ok_or_else(|| bad(n, "cwd must be a string"))?),
    };
    let cwd = std::fs::canonicalize(&cwd)
        .map_err(|e| bad(n, format!("cwd {} cannot be resolved: {e}", cwd.display())))?
        .to_string_lossy()
        .into_owned();
    Ok(Rule {
        environment,
        argv,
        prefix,
        cwd,
        ttl_seconds,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rules_parse_with_defaults_and_refuse_unknown_keys() {
        let base = std::env::temp_dir();
        let r = parse(
            "[[allow]]\nenvironment = \"ci\"\nargv = [\"make\", \"test\"]\n",
            &base,
        )
        .unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].ttl_seconds, DEFAULT_TTL_SECONDS);
        assert!(!r[0].prefix);
        let e = parse(
            "[[allow]]\nenvironment = \"ci\"\nargv = [\"x\"]\nfactor = \"confirm\"\n",
            &base,
        )
        .unwrap_err();
        assert!(e.message.contains("unknown key"), "{}", e.message);
        assert!(parse("", &base).is_err());
        assert!(parse("[[allow]]\nenvironment = \"ci\"\nargv = []\n", &base).is_err());
    }
}
