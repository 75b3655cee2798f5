//! The table of the tools keyveil knows: where each reads code from, what keyveil pins and
//! neutralises (rendered in `docs/hardening.md`).

use super::home::home_tools;
use super::managers::managers_by_name;
use super::npm::npm;
use super::python::python;
use super::shell::{cargo, shell};
use super::*;

/// One row of the table: a tool, where it reads code from, and what keyveil does about it.
/// The prose fields are documentation: `docs/hardening.md` holds them, rendered by `markdown`
/// (a unit test keeps the two equal).
#[derive(Debug)]
#[cfg_attr(not(test), allow(dead_code))]
pub(super) struct Loader {
    /// The tool.
    pub(super) tool: &'static str,
    /// `argv[0]` names (after trailing version digits are trimmed: `python3.12` is `python`).
    pub(super) names: &'static [&'static str],
    /// Where the tool reads configuration or code from, with the documentation that says so.
    pub(super) reads: &'static str,
    /// What keyveil pins (shown on the card, re-checked at every run).
    pub(super) pinned: &'static str,
    /// What keyveil neutralises for every granted child.
    pub(super) neutralised: &'static str,
    /// Adds the tool's pins (`family` is the trimmed executable or `argv[0]` name).
    pub(super) pins: fn(&Ctx<'_>, &str, &mut Pins),
}

/// The tools keyveil knows, and what it does about the code each loads from files.
pub(super) const TABLE: &[Loader] = &[
    Loader {
        tool: "git",
        names: &["git"],
        reads: "git-config(1) FILES: $(prefix)/etc/gitconfig, ~/.gitconfig, $XDG_CONFIG_HOME/git/config, \
                $GIT_DIR/config, $GIT_DIR/config.worktree, include.path/includeIf; settings that run \
                programs: core.fsmonitor, core.hooksPath, core.sshCommand, core.pager, core.editor, \
                alias.* (`!cmd`), credential.helper, diff/filter/merge drivers, gpg.program, \
                remote.*.uploadpack, url.*.insteadOf; githooks(5): $GIT_DIR/hooks/* or core.hooksPath",
        pinned: "the repository's config (and config.worktree), ~/.gitconfig, ~/.config/git/config, \
                 every file they include, every hook in the hooks directory (or core.hooksPath)",
        neutralised: "GIT_CONFIG_NOSYSTEM=1 (no system config); core.fsmonitor=false through \
                      GIT_CONFIG_COUNT (a planted fsmonitor command never runs); GIT_* from the \
                      requester never passes",
        pins: git,
    },
    Loader {
        tool: "npm / npx / pnpm / yarn / bun",
        names: &[
            "npm", "npx", "pnpm", "pnpx", "yarn", "bun", "bunx", "corepack",
        ],
        reads: "npmrc(5): per-project .npmrc, per-user ~/.npmrc, global $PREFIX/etc/npmrc, builtin \
                npm/npmrc; npm-run-script(1): script-shell, pre/post lifecycle scripts in package.json; \
                pnpm: .pnpmfile.cjs, pnpm-workspace.yaml; yarn: .yarnrc, .yarnrc.yml (yarnPath, plugins)",
        pinned: "package.json (the script and its pre/post scripts shown), .npmrc in the directory \
                 and every parent, ~/.npmrc, $PREFIX/etc/npmrc and npm's builtin npmrc near the \
                 executable, /etc/npmrc, .yarnrc/.yarnrc.yml (directory, parents, home), \
                 .pnpmfile.cjs and pnpm-workspace.yaml",
        neutralised: "npm_config_script_shell=/bin/sh (a planted script-shell never runs); \
                      npm_config_*, YARN_YARN_PATH, YARN_RC_FILENAME, YARN_PLUGINS, registry \
                      overrides, COREPACK_HOME, PNPM_HOME never pass (auth tokens such as \
                      YARN_NPM_AUTH_TOKEN do)",
        pins: npm,
    },
    Loader {
        tool: "python / pip",
        names: &["python", "pip", "pytest", "tox", "nox", "uv", "pipx"],
        reads: "site(7) docs.python.org/3/library/site.html: *.pth files and sitecustomize/\
                usercustomize in site-packages (user site ~/.local/lib/pythonX.Y/site-packages); \
                pyvenv.cfg; pip config pip.pypa.io/en/stable/topics/configuration: \
                ~/.config/pip/pip.conf, ~/.pip/pip.conf, /etc/pip.conf, $VIRTUAL_ENV/pip.conf",
        pinned: "*.pth, sitecustomize.py and usercustomize.py in the interpreter's own site \
                 directories (found from the executable, pyenv shims included, and from a venv's \
                 executable as invoked), pyvenv.cfg, .python-version up the tree; sys.path[0] \
                 (the script's directory, or the cwd for -m/-c) by fingerprint of what can be \
                 imported from it, named on the card, its modules sealed for the run; for pip, \
                 every pip.conf",
        neutralised: "PYTHONNOUSERSITE=1 (the user site directory, its .pth files and \
                      usercustomize are not loaded; venvs still work, unlike -I); PYTHON*, PYENV_*, \
                      PIP_CONFIG_FILE and package-source overrides never pass",
        pins: python,
    },
    Loader {
        tool: "make",
        names: &["make", "gmake"],
        reads: "GNU make manual §3.2-3.4, §3.5 (remaking makefiles), §6.3.2 (computed names), \
                §3.8 (secondary expansion): GNUmakefile/makefile/Makefile (the first that exists, \
                whatever it is) or -f, `include`/`-include`/`sinclude` directives (any blank make \
                reads as one: space, tab, vertical tab, form feed, CR; continued lines), `load`, \
                `$(eval)`, SHELL/.SHELLFLAGS, the MAKEFILES and MAKEFLAGS variables",
        pinned: "the makefile (with -f/--file and -C honoured, options read as getopt does) and \
                 the files it includes by a literal name (searched in -I/--include-dir directories \
                 too, relative to the directory -C chose), a wildcard (its directory \
                 fingerprinted) or a variable set to literal names, recursively; every directory \
                 a makefile or recipe puts on PATH, fingerprinted like a PATH directory. Refused: \
                 an include or PATH entry only make can expand, an include name starting with \
                 `~` or holding `\\` (make expands the home directory and joins `a\\ b`), \
                 `$(eval ...)`, `$(guile ...)` (also through `$(call eval,...)`, `$(call $(V),...)` \
                 and after any blank), `$$(eval ...)` outside a recipe (`.SECONDEXPANSION`, which a computed target can \
                 name, evaluates it) and in a recipe when a makefile names `.SECONDEXPANSION`, \
                 an assignment or \
                 `define` whose variable name make computes (`SHE$()LL := ...`), `load`, \
                 `--eval`, a makefile on standard input, a device or a FIFO (a `GNUmakefile` FIFO \
                 before a pinned `Makefile` too), a makefile or include NAME beside a `NAME.sh` \
                 (make's built-in rule `%: %.sh` would rewrite NAME from it and read it again, \
                 and `%.out: %` NAME.out from NAME; \
                 re-derived at every run, so one planted after approval ends the grant), and \
                 SHELL, .SHELLFLAGS, MAKEFILES or MAKEFLAGS set (in a makefile or on argv) to \
                 anything but a system shell and flags that read no file",
        neutralised: "MAKEFILES, MAKEFLAGS, MFLAGS, GNUMAKEFLAGS never pass",
        pins: make,
    },
    Loader {
        tool: "cargo / rustup",
        names: &["cargo", "rustup", "rustc"],
        reads: "doc.rust-lang.org/cargo/reference/config.html: .cargo/config.toml in the directory \
                and every parent, $CARGO_HOME/config.toml (aliases, runners, rustc wrappers, \
                linkers, [env]); build.rs; rust-lang.github.io/rustup/overrides.html: \
                rust-toolchain(.toml) (a `path` toolchain), ~/.rustup/settings.toml overrides",
        pinned: "Cargo.toml, build.rs, .cargo/config(.toml) in the directory and every parent, \
                 ~/.cargo/config(.toml), rust-toolchain(.toml) up the tree, ~/.rustup/settings.toml",
        neutralised: "CARGO_HOME, CARGO_BUILD_*, CARGO_TARGET_*, RUSTC*, RUSTFLAGS, RUSTUP_HOME, \
                      RUSTUP_TOOLCHAIN never pass",
        pins: cargo,
    },
    Loader {
        tool: "version managers: pyenv, rbenv, nodenv, asdf, mise, rustup, nvm",
        names: &["pyenv", "rbenv", "nodenv", "asdf", "mise", "nvm"],
        reads: "pyenv(1) / rbenv / nodenv README \"Choosing the version\": $X_VERSION, .python-version \
                (.ruby-version, .node-version) in the directory and every parent, $ROOT/version; \
                hooks sourced from $ROOT/X.d and $ROOT/plugins/*/etc/X.d (exec, which, \
                version-name) before the program runs; asdf: .tool-versions up the tree and in \
                HOME, ~/.asdfrc, plugins' bin/exec-env; mise: mise.toml, .mise.toml, \
                mise.local.toml, .mise/config.toml, .config/mise.toml, .tool-versions up the tree, \
                ~/.config/mise/config.toml ([env], [hooks], tasks); rustup overrides: \
                rust-toolchain(.toml) up the tree, ~/.rustup/settings.toml, $RUSTUP_TOOLCHAIN; \
                nvm: .nvmrc (nvm use)",
        pinned: "for every command whose policy PATH holds a manager's shims or proxies (and for \
                 the manager run by name): its selector files in the directory and every parent \
                 and in HOME, the root's version file, its hook directories (each hook, three \
                 levels down), its own code (libexec) and the installed versions or toolchains \
                 (each one's bin and lib entries), by directory fingerprint",
        neutralised: "PYENV_*, RBENV_VERSION/ROOT/DIR/HOOK_PATH, NODENV_VERSION/ROOT/DIR/HOOK_PATH, \
                      ASDF_*_VERSION, ASDF_DATA_DIR/DIR/CONFIG_FILE, MISE_*_VERSION, \
                      MISE_DATA_DIR/CONFIG_DIR/CONFIG_FILE/ENV, RUSTUP_HOME, RUSTUP_TOOLCHAIN, \
                      NVM_DIR never pass",
        pins: managers_by_name,
    },
    Loader {
        tool: "node / deno",
        names: &["node", "nodejs", "deno"],
        reads: "nodejs.org/api/cli.html: NODE_OPTIONS, NODE_PATH (no rc file is read by default; \
                node.config.json only with --experimental-config-file, which is on argv)",
        pinned: "the script operand",
        neutralised: "NODE_OPTIONS, NODE_PATH, NODE_EXTRA_CA_CERTS never pass",
        pins: none,
    },
    Loader {
        tool: "docker, kubectl, curl, wget, ssh, aws, mysql, psql",
        names: &[
            "docker",
            "kubectl",
            "helm",
            "k9s",
            "kubectx",
            "kustomize",
            "curl",
            "wget",
            "ssh",
            "scp",
            "sftp",
            "rsync",
            "git",
            "ansible",
            "mosh",
            "aws",
            "terraform",
            "sam",
            "cdk",
            "mysql",
            "mysqldump",
            "mariadb",
            "mysqladmin",
            "psql",
            "pg_dump",
            "pg_restore",
        ],
        reads: "docker(1): ~/.docker/config.json (credsStore, credHelpers: programs run), CLI \
                plugins in ~/.docker/cli-plugins (run with the environment); kubectl: \
                ~/.kube/config users[].user.exec.command (a credential plugin run with the \
                environment); curl(1): ~/.curlrc, $XDG_CONFIG_HOME/.curlrc (any option: proxy, \
                data-binary @file, output); wget(1): ~/.wgetrc, /etc/wgetrc; ssh_config(5): \
                ~/.ssh/config, /etc/ssh/ssh_config and their Includes (ProxyCommand, \
                LocalCommand, Match exec, KnownHostsCommand; git runs ssh); aws: ~/.aws/config \
                credential_process; mysql: ~/.my.cnf (pager, !include); psql: ~/.psqlrc (\\! runs \
                a shell)",
        pinned: "those files (their code-running lines quoted on the card), every file a literal \
                 ssh Include names and the directory of a globbed one, each docker CLI plugin \
                 in HOME and that directory",
        neutralised: "KUBECONFIG, DOCKER_CONFIG, DOCKER_HOST, DOCKER_CONTEXT, CURL_HOME, WGETRC, \
                      AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE, MYSQL_HOME, PSQLRC, \
                      PGSERVICEFILE never pass",
        pins: home_tools,
    },
    Loader {
        tool: "shells",
        names: &["sh", "bash", "dash", "zsh", "ksh", "ash"],
        reads: "bash(1) INVOCATION: a non-interactive, non-login bash reads only $BASH_ENV; a login \
                shell reads /etc/profile, ~/.bash_profile, ~/.bash_login, ~/.profile; an \
                interactive one ~/.bashrc; zsh(1) STARTUP/SHUTDOWN FILES: ~/.zshenv always, \
                .zprofile/.zlogin for login, .zshrc interactive; dash(1): ~/.profile for login, \
                $ENV interactive",
        pinned: "the startup files the invocation reads: ~/.zshenv for every zsh; the login and \
                 interactive files when -l/--login/-i is on argv; the script's directory (files \
                 it may source: a shell-like extension or none) by content, sealed for the run",
        neutralised: "BASH_ENV, ENV, ZDOTDIR, SHELLOPTS, BASHOPTS, BASH_FUNC_* never pass; HOME is \
                      the vault's",
        pins: shell,
    },
];

/// [`TABLE`] as a Markdown table (what `docs/hardening.md` shows).
#[cfg(test)]
pub(super) fn markdown() -> String {
    let mut s = String::from(
        "| tool | reads code or configuration from | pinned (on the card, re-checked every run) | neutralised for granted children |\n|---|---|---|---|\n",
    );
    for l in TABLE {
        let cell = |t: &str| {
            t.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .replace('|', "\\|")
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            cell(l.tool),
            cell(l.reads),
            cell(l.pinned),
            cell(l.neutralised)
        ));
    }
    s
}
