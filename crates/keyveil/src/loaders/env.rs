//! The environment: variables neutralised for every granted child, and variables that would load
//! more code, never passed.

/// Set in every granted child's environment (after the policy PATH and HOME, before anything
/// the requester passes, which can therefore not override them).
pub(crate) const NEUTRALISE: &[(&str, &str)] = &[
    // site(7): "If PYTHONNOUSERSITE is set, the user site-packages directory is not added".
    ("PYTHONNOUSERSITE", "1"),
    // git-config(1) ENVIRONMENT: skip $(prefix)/etc/gitconfig.
    ("GIT_CONFIG_NOSYSTEM", "1"),
    // git-config(1) GIT_CONFIG_COUNT: environment config wins over system, global and repo
    // config (only `-c` on the shown argv wins over it).
    ("GIT_CONFIG_COUNT", "1"),
    ("GIT_CONFIG_KEY_0", "core.fsmonitor"),
    ("GIT_CONFIG_VALUE_0", "false"),
    // npm config: environment `npm_config_*` wins over every npmrc (npm, pnpm and yarn 1 read it).
    ("npm_config_script_shell", "/bin/sh"),
];

/// Environment names that make a tool load more code or configuration, never passed to a granted
/// child (in addition to [`is_injection_var`]).
pub(crate) fn is_loader_var(name: &str) -> bool {
    // Precise names, not prefixes: `YARN_NPM_AUTH_TOKEN`, `COREPACK_NPM_TOKEN` and friends are
    // the secrets people keep in keyveil and must still reach the child.
    const EXACT: &[&str] = &[
        // GNU make §9.7 / §5.7.3: more makefiles, options.
        "MAKEFILES",
        "MAKEFLAGS",
        "MFLAGS",
        "GNUMAKEFLAGS",
        // Shells and readline.
        "INPUTRC",
        "ZDOTDIR",
        "BASH_ENV",
        "ENV",
        // pip: another config file, other package sources.
        "PIP_CONFIG_FILE",
        "PIP_FIND_LINKS",
        "PIP_TRUSTED_HOST",
        // yarn (berry maps YARN_<KEY> to .yarnrc.yml keys): the yarn release run, rc file,
        // plugins, registry.
        "YARN_YARN_PATH",
        "YARN_RC_FILENAME",
        "YARN_PLUGINS",
        "YARN_IGNORE_PATH",
        "YARN_NPM_REGISTRY_SERVER",
        "YARN_REGISTRY",
        "YARN_GLOBAL_FOLDER",
        // corepack and pnpm: where package managers are fetched from or installed.
        "COREPACK_HOME",
        "COREPACK_NPM_REGISTRY",
        "PNPM_HOME",
        // rustup: which toolchain runs, from where.
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "RUSTUP_DIST_SERVER",
        "RUSTUP_UPDATE_ROOT",
        "BUN_INSTALL",
        // Tools configured from HOME: another config file, context or plugin directory.
        "KUBECONFIG",
        "DOCKER_CONFIG",
        "DOCKER_HOST",
        "DOCKER_CONTEXT",
        "CURL_HOME",
        "WGETRC",
        "SYSTEM_WGETRC",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "MYSQL_HOME",
        "MYSQL_TEST_LOGIN_FILE",
        "PSQLRC",
        "PGSERVICEFILE",
        "PGSYSCONFDIR",
        "SSH_ASKPASS_REQUIRE",
        "TAR_OPTIONS",
        "RUSTDOC",
        "CARGO_REGISTRY_CREDENTIAL_PROVIDER",
        "CARGO_CREDENTIAL_PROVIDER",
        // make's implicit variables that name programs (GNU make §10.3): an environment
        // variable becomes a make variable, so `RM=./evil make clean` runs it.
        "AR",
        "AS",
        "LD",
        "RM",
        "CPP",
        "FC",
        "PC",
        "LEX",
        "YACC",
        "M4",
        "MAKE",
        "MAKEINFO",
        "TEX",
        "TEXI2DVI",
        "WEAVE",
        "CWEAVE",
        "TANGLE",
        "CTANGLE",
        "LINT",
        "CO",
        "GET",
    ];
    // Version managers: which interpreter or toolchain a shim runs, and where hooks come from.
    const MANAGERS: &[&str] = &[
        "RBENV_VERSION",
        "RBENV_ROOT",
        "RBENV_DIR",
        "RBENV_HOOK_PATH",
        "NODENV_VERSION",
        "NODENV_ROOT",
        "NODENV_DIR",
        "NODENV_HOOK_PATH",
        "ASDF_DATA_DIR",
        "ASDF_DIR",
        "ASDF_CONFIG_FILE",
        "ASDF_DEFAULT_TOOL_VERSIONS_FILENAME",
        "MISE_DATA_DIR",
        "MISE_CONFIG_DIR",
        "MISE_CONFIG_FILE",
        "MISE_ENV",
        "MISE_DEFAULT_CONFIG_FILENAME",
        "MISE_DEFAULT_TOOL_VERSIONS_FILENAME",
        "MISE_OVERRIDE_CONFIG_FILENAMES",
        "MISE_SHIMS_DIR",
        "NVM_DIR",
    ];
    // pyenv: which interpreter a shim runs.
    const PREFIX: &[&str] = &["PYENV_"];
    // `ASDF_PYTHON_VERSION`, `MISE_NODE_VERSION`: the version of one tool.
    let tool_version =
        (name.starts_with("ASDF_") || name.starts_with("MISE_")) && name.ends_with("_VERSION");
    // cargo's per-registry credential providers run a program.
    let cargo_provider =
        name.starts_with("CARGO_REGISTRIES_") && name.ends_with("_CREDENTIAL_PROVIDER");
    EXACT.contains(&name)
        || MANAGERS.contains(&name)
        || tool_version
        || cargo_provider
        || PREFIX.iter().any(|p| name.starts_with(p))
        || NEUTRALISE.iter().any(|(k, _)| *k == name)
}

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
