//! Hidden variable names (`policy.hide_names`): what clients see and what they may say.
//!
//! When an environment's policy hides names, every name the broker gives a client (MCP or CLI:
//! the broker cannot tell an agent from a human without the factor) is the variable's alias,
//! [`keyveil_vault::Vault::name_alias`] (`HIDDEN_` + 12 hex digits, keyed by the vault, stable),
//! and clients must name variables by alias. The real names stay inside the broker and reach:
//! - the granted child's environment (the program needs `STRIPE_KEY`, not an alias);
//! - a caller presenting the factor (`keyveil env show ENV --reveal-names`).
//!
//! - the human's approval page, in a browser session opened by the factor (`POST /reveal`,
//!   [`Names::page_names`]);
//! - the human's `keyveil approve`, after the factor and before the yes (`held_approvals.rs`).
//!
//! Nothing else: listings, descriptions of variables, request cards (terminal, web page,
//! desktop notification), grants, run results (redaction markers, write-side leaks), error
//! messages and the audit log all carry aliases. Entries audited before the policy changed keep
//! the names they were written with.

use serde_json::Value;

use super::OpError;

/// The naming rules of one open vault (or of none: the vault is locked, and nothing is hidden
/// because nothing is listed). Borrowed from [`Inner::names`](super::Inner::names).
#[derive(Clone, Copy)]
pub(crate) struct Names<'a> {
    vault: Option<&'a keyveil_vault::Vault>,
}

impl<'a> Names<'a> {
    /// The rules of `vault` (`None`: locked).
    pub(crate) fn of(vault: Option<&'a keyveil_vault::Vault>) -> Self {
        Names { vault }
    }

    /// Whether `env`'s policy hides variable names (`false` when locked or unknown).
    pub(crate) fn hides_names(&self, env: &str) -> bool {
        self.vault
            .and_then(|v| v.data().environments.get(env))
            .is_some_and(|e| e.policy.hide_names)
    }

    /// Whether any environment hides its names (the approval page then offers `POST /reveal`).
    pub(crate) fn any_hides_names(&self) -> bool {
        self.vault
            .is_some_and(|v| v.data().environments.values().any(|e| e.policy.hide_names))
    }

    /// For an approval-page session opened by the factor `used` (`passphrase` or `totp`): per
    /// environment that hides names and whose names that factor may reveal (at least what
    /// `env show --reveal-names` needs there: a TOTP code does not reveal a passphrase
    /// environment's), alias → real name.
    pub(crate) fn page_names(
        &self,
        used: &str,
    ) -> std::collections::HashMap<String, std::collections::HashMap<String, String>> {
        use keyveil_vault::FactorKind;
        let Some(v) = self.vault else {
            return Default::default();
        };
        v.data()
            .environments
            .iter()
            .filter(|(_, e)| e.policy.hide_names)
            .filter(|(_, e)| used == "passphrase" || e.policy.factor != FactorKind::Passphrase)
            .map(|(env, e)| {
                let map = e
                    .variables
                    .keys()
                    .map(|n| (v.name_alias(env, n), n.clone()))
                    .collect();
                (env.clone(), map)
            })
            .collect()
    }

    /// The name clients see for variable `name` of `env`: its alias when the environment hides
    /// names, else the name itself.
    pub(crate) fn shown_name(&self, env: &str, name: &str) -> String {
        match self.vault {
            Some(v) if self.hides_names(env) => v.name_alias(env, name),
            _ => name.to_owned(),
        }
    }

    /// The real name behind a name a client gave for a variable of `env`. Where names are
    /// hidden only aliases are understood, so that a guessed real name cannot confirm that a
    /// variable exists; `None` when nothing matches.
    pub(crate) fn real_name(&self, env: &str, given: &str) -> Option<String> {
        let v = self.vault?;
        let e = v.data().environments.get(env)?;
        if !e.policy.hide_names {
            return e.variables.contains_key(given).then(|| given.to_owned());
        }
        // Every alias is computed, not only those up to the match: a search that stopped at
        // the match would take longer the later the real name sorts (a timing oracle on the
        // order of the hidden names).
        let mut found = None;
        for n in e.variables.keys() {
            if v.name_alias(env, n) == given && found.is_none() {
                found = Some(n.clone());
            }
        }
        found
    }

    /// Like [`Names::real_name`], for the human's own commands (`set`, `unset`, `generate`):
    /// an alias is understood, and so is a real name (a new variable has no alias yet).
    pub(crate) fn human_name(&self, env: &str, given: &str) -> String {
        self.real_name(env, given)
            .unwrap_or_else(|| given.to_owned())
    }

    /// Replaces real variable names by aliases in a payload about to leave the broker (a
    /// reply or an audit entry). Inside any JSON object with a string `environment` whose
    /// policy hides names (and everything nested in it), it rewrites `variable` (a string),
    /// `variables` and `replaced` (strings, or objects with a `name`; sorted by alias), and so
    /// `write_leaks[].variable`, and sorts `bindings`, `bound` and `new_variables` (objects with
    /// a `variable`) by alias; in the
    /// object that names the environment itself, `name` too (`{environment, name}` replies about
    /// one variable). Names that are not variables of that environment are left alone, so it is
    /// idempotent.
    pub(crate) fn hide_names_in(&self, payload: &mut Value) {
        if self.vault.is_none() {
            return;
        }
        self.hide_walk(payload, None, 0);
    }

    fn hide_walk(&self, v: &mut Value, env: Option<&str>, depth: usize) {
        // Payloads are the broker's own; the bound only keeps a pathological one from
        // exhausting the stack.
        if depth > 64 {
            return;
        }
        match v {
            Value::Array(items) => {
                for item in items {
                    self.hide_walk(item, env, depth + 1);
                }
            }
            Value::Object(map) => {
                let own = map
                    .get("environment")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                if let Some(env) = own.as_deref().filter(|e| self.hides_names(e))
                    && let Some(Value::String(n)) = map.get_mut("name")
                {
                    // `{environment, name}`: a reply about one variable (`set`, `unset`).
                    *n = self.alias_if_real(env, n);
                }
                let env = own.as_deref().or(env);
                if let Some(env) = env.filter(|e| self.hides_names(e)) {
                    if let Some(Value::String(n)) = map.get_mut("variable") {
                        *n = self.alias_if_real(env, n);
                    }
                    for key in ["variables", "replaced"] {
                        if let Some(Value::Array(list)) = map.get_mut(key) {
                            self.alias_list(env, list);
                        }
                    }
                }
                for (key, child) in map.iter_mut() {
                    if key != "variable" {
                        self.hide_walk(child, env, depth + 1);
                    }
                }
                // Lists of `{variable, ...}` kept in real-name order (egress `bindings` sorted
                // in the vault; a card's `bound` and `new_variables`, taken from the request's
                // real names): once aliased, sorted by alias, or their order would betray the
                // real names.
                if env.is_some_and(|e| self.hides_names(e)) {
                    for key in ["bindings", "bound", "new_variables"] {
                        if let Some(Value::Array(list)) = map.get_mut(key) {
                            list.sort_by(|a, b| {
                                let key = |v: &Value| {
                                    v.get("variable").and_then(Value::as_str).map(str::to_owned)
                                };
                                key(a).cmp(&key(b))
                            });
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Aliases a list of names (strings, or objects with a `name`) and sorts it by alias: the
    /// order of real names would otherwise betray them (an agent adding a probe variable sees
    /// where its alias lands).
    fn alias_list(&self, env: &str, list: &mut [Value]) {
        for item in list.iter_mut() {
            match item {
                Value::String(n) => *n = self.alias_if_real(env, n),
                Value::Object(o) => {
                    if let Some(Value::String(n)) = o.get_mut("name") {
                        *n = self.alias_if_real(env, n);
                    }
                }
                _ => {}
            }
        }
        list.sort_by(|a, b| sort_key(a).cmp(sort_key(b)));
    }

    fn alias_if_real(&self, env: &str, name: &str) -> String {
        let known = self
            .vault
            .and_then(|v| v.data().environments.get(env))
            .is_some_and(|e| e.variables.contains_key(name));
        if known {
            self.shown_name(env, name)
        } else {
            name.to_owned()
        }
    }

    /// An error about the granted variables `names` of `env` (an engine's failure, a value gone
    /// missing), with each of those real names replaced by its alias where the environment
    /// hides names. Only whole identifiers are replaced, and only these names, which the
    /// client already knows by alias, so nothing is confirmed by the rewrite.
    pub(crate) fn hide_names_in_error(
        &self,
        env: &str,
        names: &[String],
        mut e: OpError,
    ) -> OpError {
        if !self.hides_names(env) {
            return e;
        }
        for n in names {
            let alias = self.shown_name(env, n);
            e.message = replace_identifier(&e.message, n, &alias);
            e.hint = e.hint.map(|h| replace_identifier(&h, n, &alias));
        }
        e
    }

    /// How many variables of `env` hold a value (or a dynamic source): all of them, or only
    /// `name`. 0 when the environment or variable does not exist or the vault is locked.
    pub(crate) fn stored_names(&self, env: &str, name: Option<&str>) -> usize {
        let Some(e) = self.vault.and_then(|v| v.data().environments.get(env)) else {
            return 0;
        };
        let stored = |v: &keyveil_vault::Variable| v.value.is_some() || v.dynamic.is_some();
        match name {
            // One lookup, not a walk of every variable (a `set` asks this under the lock).
            Some(want) => e.variables.get(want).is_some_and(stored).into(),
            None => e.variables.values().filter(|v| stored(v)).count(),
        }
    }
}

/// The name a listed item sorts by: the string itself, or an object's `name`.
fn sort_key(v: &Value) -> &str {
    match v {
        Value::String(s) => s,
        Value::Object(o) => o.get("name").and_then(Value::as_str).unwrap_or(""),
        _ => "",
    }
}

/// `text` with every occurrence of `name` that stands as a whole identifier (not inside a
/// longer run of `[A-Za-z0-9_]`) replaced by `with`.
fn replace_identifier(text: &str, name: &str, with: &str) -> String {
    if name.is_empty() {
        return text.to_owned();
    }
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(name) {
        let (before, found) = rest.split_at(i);
        out.push_str(before);
        let after = found.strip_prefix(name).unwrap_or(found);
        let left_ok = !out.chars().next_back().is_some_and(is_ident);
        let right_ok = !after.chars().next().is_some_and(is_ident);
        out.push_str(if left_ok && right_ok { with } else { name });
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::replace_identifier;

    #[test]
    fn only_whole_identifiers_are_replaced() {
        assert_eq!(
            replace_identifier(
                "cannot get a credential for DB_URL: no field \"DB_URL\"",
                "DB_URL",
                "HIDDEN_X"
            ),
            "cannot get a credential for HIDDEN_X: no field \"HIDDEN_X\""
        );
        assert_eq!(
            replace_identifier("MY_DB_URL DB_URLS DB_URL", "DB_URL", "A"),
            "MY_DB_URL DB_URLS A"
        );
        assert_eq!(
            replace_identifier("DB_URLDB_URL", "DB_URL", "A"),
            "DB_URLDB_URL"
        );
    }
}
