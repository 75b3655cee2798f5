//! The environment of a granted child, built from scratch, and the names it never gets.

use crate::broker::state::Inner;

/// Requester variables a child always gets (locale and terminal only).
const PASSED_ALWAYS: &[&str] = &[
    "LANG",
    "LANGUAGE",
    "TERM",
    "TZ",
    "COLORTERM",
    "NO_COLOR",
    "FORCE_COLOR",
    "CLICOLOR",
    "CLICOLOR_FORCE",
    "COLUMNS",
    "LINES",
];

/// Builds the child's environment from scratch: policy `PATH`, `HOME`, `USER`/`LOGNAME`, the
/// settings that neutralise code loaded from files the agent can write
/// ([`crate::loaders::NEUTRALISE`]: `PYTHONNOUSERSITE`, `GIT_CONFIG_NOSYSTEM`, ...), locale and
/// terminal variables of the requester, the pass-through names the grant allows. The granted
/// values are added by the spawn. Code-injection and code-loading variables never pass.
pub(crate) fn child_env(
    inner: &Inner,
    env_name: &str,
    requester: &[(String, String)],
    pass_env: &[String],
) -> Vec<(String, String)> {
    let mut out = vec![("PATH".to_owned(), inner.policy_path(env_name))];
    if let Some(h) = inner.child_home() {
        out.push(("HOME".to_owned(), h));
    }
    for k in ["USER", "LOGNAME"] {
        if let Ok(v) = std::env::var(k) {
            out.push((k.to_owned(), v));
        }
    }
    for (k, v) in crate::loaders::NEUTRALISE {
        out.push(((*k).to_owned(), (*v).to_owned()));
    }
    for (k, v) in requester {
        let wanted =
            PASSED_ALWAYS.contains(&k.as_str()) || k.starts_with("LC_") || pass_env.contains(k);
        if wanted && !never_passed(k) && !out.iter().any(|(o, _)| o == k) {
            out.push((k.clone(), v.clone()));
        }
    }
    out
}

/// Names a granted child never gets from the requester or the vault: code injection
/// (`crate::loaders::is_injection_var`) and code loading (`loaders::is_loader_var`: `MAKEFILES`, ...).
pub(crate) fn never_passed(name: &str) -> bool {
    crate::loaders::is_injection_var(name) || crate::loaders::is_loader_var(name)
}
