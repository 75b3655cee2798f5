//! Variables a child never gets from the requester (loader and injection variables), and the
//! pass-through variables a request names.

use super::*;

/// Environment variables that make a process run code they name, or change how it finds code:
/// never passed through from a requester.
pub(crate) fn is_injection_var(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "BASH_ENV",
        "ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PROMPT_COMMAND",
        "IFS",
        "CDPATH",
        "GLOBIGNORE",
        "PS4",
        "NODE_OPTIONS",
        "NODE_PATH",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PYTHONHOME",
        "PYTHONINSPECT",
        "PYTHONUSERBASE",
        "PERL5OPT",
        "PERL5LIB",
        "PERLLIB",
        "PERL5DB",
        "RUBYOPT",
        "RUBYLIB",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "CLASSPATH",
        "DOTNET_STARTUP_HOOKS",
        "GCONV_PATH",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "RES_OPTIONS",
        "TERMINFO",
        "TERMINFO_DIRS",
        "EDITOR",
        "VISUAL",
        "PAGER",
        "GIT_EXEC_PATH",
        "GIT_ASKPASS",
        "SSH_ASKPASS",
        "GIT_EDITOR",
        "GIT_PAGER",
        "GIT_TEMPLATE_DIR",
        "GIT_PROXY_COMMAND",
        "PATH",
        "HOME",
        "ZDOTDIR",
        "XDG_CONFIG_HOME",
        "NPM_CONFIG_USERCONFIG",
        "npm_config_userconfig",
        "CARGO_HOME",
        "RUSTC_WRAPPER",
        "RUSTC",
        "CC",
        "CXX",
        "LESSOPEN",
        "LESSCLOSE",
        // Found by a red-team pass: programs that run, load or fetch code these name.
        "BROWSER",
        "SHELL",
        "MANPAGER",
        "TMPDIR",
        "TMP",
        "TEMP",
        "TEMPDIR",
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "GOFLAGS",
        "GOROOT",
        "GOTOOLCHAIN",
        "GOPROXY",
        "MAKEFLAGS",
        "MFLAGS",
        "GNUMAKEFLAGS",
        "CFLAGS",
        "CXXFLAGS",
        "CPPFLAGS",
        "LDFLAGS",
        "LIBRARY_PATH",
        "CPATH",
        "C_INCLUDE_PATH",
        "CPLUS_INCLUDE_PATH",
        "PKG_CONFIG_PATH",
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "UV_INDEX_URL",
        "UV_EXTRA_INDEX_URL",
        "GEM_HOME",
        "GEM_PATH",
        "BUNDLE_GEMFILE",
        // Trust and traffic: an agent-chosen CA or proxy sees what a granted run sends.
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "NODE_EXTRA_CA_CERTS",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ];
    const PREFIX: &[&str] = &[
        "LD_",
        "DYLD_",
        "GIT_CONFIG",
        "GIT_SSH",
        "BASH_FUNC_",
        "npm_config_",
        "NPM_CONFIG_",
        "MALLOC_",
        "GLIBC_",
        // Every git setting (GIT_DIR, GIT_EXTERNAL_DIFF, ...); `GH_TOKEN`, `GITHUB_TOKEN` pass.
        "GIT_",
        // Every interpreter setting (PYTHONWARNINGS, PYTHONBREAKPOINT, ...).
        "PYTHON",
        "RUSTC_",
        // Cargo's build runners, wrappers and aliases (`CARGO_REGISTRY_TOKEN` passes).
        "CARGO_BUILD_",
        "CARGO_TARGET_",
        "CARGO_ALIAS_",
        "CARGO_UNSTABLE_",
    ];
    EXACT.contains(&name) || PREFIX.iter().any(|p| name.starts_with(p))
}

/// Checks the pass-through names of a request.
pub(crate) fn check_pass_env(names: &[String]) -> OpResult<Vec<String>> {
    let mut out = Vec::new();
    for n in names {
        if !keyveil_vault::is_valid_name(n) {
            return Err(OpError::new(
                ErrorCode::Usage,
                format!(
                    "invalid pass-through name \"{}\"",
                    keyveil_proto::display::clip(n, 80)
                ),
            ));
        }
        if is_injection_var(n) || crate::loaders::is_loader_var(n) {
            return Err(OpError::new(
                ErrorCode::Denied,
                format!("refused to pass {n} through: it can make the granted process run other code"),
            )
            .hint("the child's environment is built from policy (PATH, HOME) and the granted values; drop this name"));
        }
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    out.sort();
    Ok(out)
}

/// The requester's value of each pass-through name, as the child would get it (the first
/// occurrence in `env`, like `runner::child_env`); `None` when it is not set.
pub(crate) fn pass_values(
    pass_env: &[String],
    env: &[(String, String)],
) -> std::collections::BTreeMap<String, Option<String>> {
    pass_env
        .iter()
        .map(|n| {
            let v = env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            (n.clone(), v)
        })
        .collect()
}
