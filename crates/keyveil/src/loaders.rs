//! Code loaded from files the agent can write: for each known tool, the configuration files and
//! settings that decide what it executes, and what keyveil does about each (issue 15, item 2).
//!
//! A human who approves `git status` or `npm test` approves what those tools will execute, and
//! that is decided as much by configuration (`core.fsmonitor` in `.git/config`, `script-shell`
//! in `~/.npmrc`, a `.pth` file in site-packages) as by the argv. The agent runs as the same user
//! and can write every one of those files. For each tool, keyveil either
//!
//! - **pins** the file: it is fingerprinted at request time, shown on the card as an input (role
//!   `git-config`, `npmrc`, ...; its code-running settings quoted in the input's detail line),
//!   re-hashed at every run under the grant, and re-derived for the actual cwd and argv (a file
//!   created after approval counts as a change): a change ends the grant ("inputs changed since
//!   approval"); or
//! - **neutralises** it for every granted child, through the environment the broker builds from
//!   scratch ([`NEUTRALISE`]), where that is cheap and does not break normal use; and
//! - never passes the environment variables that would load more code ([`is_loader_var`], on top
//!   of `broker::access::is_injection_var`).
//!
//! The table is [`TABLE`] (also rendered in `docs/threat-model.md`). Pinning stays cheap: a few
//! `stat`s per candidate path, a directory listing for git hooks and Python site directories, and
//! hashes cached by (dev, inode, size, mtime, ctime) in `pin.rs`.

use std::path::{Path, PathBuf};

use crate::pin::{InputPin, pin_input, pin_input_text, read_for_requester};

mod git;
mod make;
mod makefile;

use git::*;
use make::*;

/// Most files a single tool pins (hooks, `.pth` files, includes): beyond this the rest are not
/// pinned, which the card shows as a `... more not pinned` detail.
const MAX_FILES: usize = 64;

/// Largest text file whose settings are read and shown (bytes); a bigger one is refused.
const MAX_TEXT: u64 = 1 << 20;

/// One row of the table: a tool, where it reads code from, and what keyveil does about it.
/// The prose fields are documentation: `docs/hardening.md` holds them, rendered by `markdown`
/// (a unit test keeps the two equal).
#[derive(Debug)]
#[cfg_attr(not(test), allow(dead_code))]
pub struct Loader {
    /// The tool.
    pub tool: &'static str,
    /// `argv[0]` names (after trailing version digits are trimmed: `python3.12` is `python`).
    pub names: &'static [&'static str],
    /// Where the tool reads configuration or code from, with the documentation that says so.
    pub reads: &'static str,
    /// What keyveil pins (shown on the card, re-checked at every run).
    pub pinned: &'static str,
    /// What keyveil neutralises for every granted child.
    pub neutralised: &'static str,
    /// Adds the tool's pins (`family` is the trimmed executable or `argv[0]` name).
    pins: fn(&Ctx<'_>, &str, &mut Pins),
}

/// The tools keyveil knows, and what it does about the code each loads from files.
pub const TABLE: &[Loader] = &[
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
                 imported from it, named on the card; for pip, every pip.conf",
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
                 interactive files when -l/--login/-i is on argv",
        neutralised: "BASH_ENV, ENV, ZDOTDIR, SHELLOPTS, BASHOPTS, BASH_FUNC_* never pass; HOME is \
                      the vault's",
        pins: shell,
    },
];

/// One entry of [`home_tool`]: a tool that reads configuration able to run code from HOME (or
/// /etc), the files, and the settings the card quotes.
struct HomeTool {
    role: &'static str,
    /// Files relative to the child's HOME (`~/`) or absolute.
    files: &'static [&'static str],
    /// Lower-case substrings of a line that make it shown (`*` for every non-comment line).
    shown: &'static [&'static str],
}

/// The rows of [`TABLE`] for tools configured from HOME, by tool.
fn home_tool(family: &str) -> Option<HomeTool> {
    let t = match family {
        "docker" => HomeTool {
            role: "docker-config",
            files: &["~/.docker/config.json"],
            shown: &[
                "credsstore",
                "credhelpers",
                "clipluginsextradirs",
                "proxies",
                "currentcontext",
            ],
        },
        "kubectl" | "helm" | "k9s" | "kubectx" | "kustomize" => HomeTool {
            role: "kubeconfig",
            files: &["~/.kube/config"],
            shown: &[
                "command:",
                "cmd-path",
                "auth-provider",
                "proxy-url",
                "args:",
            ],
        },
        "curl" => HomeTool {
            role: "curlrc",
            files: &["~/.curlrc", "~/.config/.curlrc", "~/_curlrc"],
            shown: &["*"],
        },
        "wget" => HomeTool {
            role: "wgetrc",
            files: &["~/.wgetrc", "/etc/wgetrc", "/usr/local/etc/wgetrc"],
            shown: &["*"],
        },
        "ssh" | "scp" | "sftp" | "rsync" | "git" | "ansible" | "mosh" => HomeTool {
            role: "ssh-config",
            files: &["~/.ssh/config", "/etc/ssh/ssh_config"],
            shown: &[
                "proxycommand",
                "localcommand",
                "permitlocalcommand",
                "match",
                "knownhostscommand",
                "proxyjump",
                "remotecommand",
                "include",
                "pkcs11provider",
                "securitykeyprovider",
                "sendenv",
                "setenv",
                "forwardagent",
                "controlpath",
            ],
        },
        "aws" | "terraform" | "sam" | "cdk" => HomeTool {
            role: "aws-config",
            files: &["~/.aws/config", "~/.aws/credentials"],
            shown: &[
                "credential_process",
                "credential_source",
                "endpoint_url",
                "ca_bundle",
                "[profile",
                "source_profile",
            ],
        },
        "mysql" | "mysqldump" | "mariadb" | "mysqladmin" => HomeTool {
            role: "mysql-config",
            files: &["~/.my.cnf", "/etc/my.cnf", "/etc/mysql/my.cnf"],
            shown: &[
                "pager",
                "!include",
                "plugin",
                "init-command",
                "init_command",
                "system",
                "tee",
            ],
        },
        "psql" | "pg_dump" | "pg_restore" => HomeTool {
            role: "psqlrc",
            files: &[
                "~/.psqlrc",
                "~/.pg_service.conf",
                "/etc/postgresql-common/psqlrc",
            ],
            shown: &["*"],
        },
        _ => return None,
    };
    Some(t)
}

/// Lines of a HOME configuration file the card quotes (`shown` substrings; `*` every line that
/// is not a comment), at most 12.
fn home_detail(text: &str, shown: &[&str]) -> Option<String> {
    let all = shown.contains(&"*");
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with('#') && !l.starts_with(';') && !l.starts_with("--")
        })
        .filter(|l| {
            let low = l.to_ascii_lowercase();
            all || shown.iter().any(|k| low.contains(k))
        })
        .map(|l| keyveil_proto::display::clip(l, 160))
        .collect();
    let n = lines.len();
    let mut v: Vec<String> = lines.into_iter().take(12).collect();
    if n > 12 {
        v.push(format!("... {} more lines", n - 12));
    }
    (!v.is_empty()).then(|| format!("runs or redirects: {}", v.join("; ")))
}

/// Pins the HOME and system configuration of a tool from [`home_tool`]; for docker, also every
/// CLI plugin in `~/.docker/cli-plugins` (each on the card, the directory fingerprinted), and
/// for ssh the files named by literal `Include` lines.
fn home_tools(cx: &Ctx<'_>, family: &str, out: &mut Pins) {
    let Some(t) = home_tool(family) else { return };
    let mut queue: Vec<PathBuf> = t
        .files
        .iter()
        .filter_map(|f| match f.strip_prefix("~/") {
            Some(rel) => home_file(cx, rel),
            None => Some(PathBuf::from(f)),
        })
        .collect();
    let mut n = 0;
    while let Some(f) = queue.pop() {
        n += 1;
        if n > MAX_FILES {
            out.unpinnable(&f, "more included configuration files than keyveil pins");
            break;
        }
        let Some(text) = out.add_text(t.role, &f, |x| home_detail(x, t.shown)) else {
            continue;
        };
        if t.role == "ssh-config" {
            for l in text.lines() {
                let l = l.trim();
                let Some(rest) = l
                    .get(..8)
                    .filter(|k| k.eq_ignore_ascii_case("include "))
                    .and_then(|_| l.get(8..))
                else {
                    continue;
                };
                for inc in rest.split_whitespace() {
                    let p = match inc.strip_prefix("~/") {
                        Some(r) => home_file(cx, r).unwrap_or_default(),
                        None if inc.starts_with('/') => PathBuf::from(inc),
                        // ssh_config(5): relative to ~/.ssh for the user's file, /etc/ssh else.
                        None => f.parent().unwrap_or(Path::new("/")).join(inc),
                    };
                    if inc.contains(['*', '?', '[']) {
                        if let Some(dir) = p.parent() {
                            out.add_dir("config-dir", dir, "ssh Include directory");
                            if let Ok(rd) = std::fs::read_dir(dir) {
                                queue.extend(rd.filter_map(Result::ok).map(|e| e.path()));
                            }
                        }
                    } else {
                        queue.push(p);
                    }
                }
            }
        }
    }
    if family == "docker" {
        // docker(1) CLI plugins: $DOCKER_CONFIG/cli-plugins (DOCKER_CONFIG never passes) first.
        if let Some(dir) = home_file(cx, ".docker/cli-plugins") {
            out.add_dir(
                crate::path_dirs::ROLE,
                &dir,
                "docker CLI plugins (run with the environment)",
            );
            pin_dir(out, "docker-cli-plugin", &dir, |_| true);
        }
    }
}

/// Set in every granted child's environment (after the policy PATH and HOME, before anything
/// the requester passes, which can therefore not override them).
pub const NEUTRALISE: &[(&str, &str)] = &[
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
/// child (in addition to `broker::access::is_injection_var`).
pub fn is_loader_var(name: &str) -> bool {
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

/// What a command runs in: the argv, the working directory, the executable, the child's HOME.
pub struct Ctx<'a> {
    /// The argv.
    pub argv: &'a [String],
    /// The canonical working directory.
    pub cwd: &'a Path,
    /// The resolved executable (canonical).
    pub exe: &'a Path,
    /// The child's HOME (the vault's), if any.
    pub home: Option<&'a Path>,
}

/// The pins for the tool `family` (or `arg0`), from [`TABLE`].
pub fn inputs(family: &str, arg0: &str, cx: &Ctx<'_>) -> Vec<InputPin> {
    let mut out = Pins::default();
    for l in TABLE {
        if l.names.contains(&family) || l.names.contains(&arg0) {
            let name = if l.names.contains(&family) {
                family
            } else {
                arg0
            };
            (l.pins)(cx, name, &mut out);
        }
    }
    out.0
}

fn none(_: &Ctx<'_>, _: &str, _: &mut Pins) {}

// ---------------------------------------------------------------------------------------------
// version managers

/// A version manager: how its root is recognised from a PATH directory, and what it reads.
struct Manager {
    name: &'static str,
    /// A file (relative to the root) whose presence says the root is this manager's.
    marker: &'static str,
    /// Selector files looked up in the working directory and every parent.
    selectors: &'static [&'static str],
    /// Selector or configuration files relative to HOME.
    home_files: &'static [&'static str],
    /// Files relative to the root (the global version).
    root_files: &'static [&'static str],
    /// Hook directories relative to the root (`*` is any plugin).
    hooks: &'static [&'static str],
    /// The manager's code and installed versions, relative to the root.
    code: &'static [&'static str],
}

/// Version managers whose shims or proxies run a program chosen from files the agent writes.
const MANAGERS: &[Manager] = &[
    Manager {
        name: "pyenv",
        marker: "libexec/pyenv",
        selectors: &[".python-version"],
        home_files: &[],
        root_files: &["version"],
        hooks: &["pyenv.d", "plugins/*/etc/pyenv.d"],
        code: &["libexec", "plugins/*/bin", "versions"],
    },
    Manager {
        name: "rbenv",
        marker: "libexec/rbenv",
        selectors: &[".ruby-version"],
        home_files: &[],
        root_files: &["version"],
        hooks: &["rbenv.d", "plugins/*/etc/rbenv.d"],
        code: &["libexec", "plugins/*/bin", "versions"],
    },
    Manager {
        name: "nodenv",
        marker: "libexec/nodenv",
        selectors: &[".node-version"],
        home_files: &[],
        root_files: &["version"],
        hooks: &["nodenv.d", "plugins/*/etc/nodenv.d"],
        code: &["libexec", "plugins/*/bin", "versions"],
    },
    Manager {
        name: "asdf",
        marker: "installs",
        selectors: &[".tool-versions"],
        home_files: &[".tool-versions", ".asdfrc"],
        root_files: &[],
        hooks: &["plugins"],
        code: &["installs", "bin", "lib"],
    },
    Manager {
        name: "mise",
        marker: "installs",
        selectors: &[
            "mise.toml",
            ".mise.toml",
            "mise.local.toml",
            ".mise.local.toml",
            ".mise/config.toml",
            "mise/config.toml",
            ".config/mise.toml",
            ".config/mise/config.toml",
            ".tool-versions",
        ],
        home_files: &[".config/mise/config.toml", ".tool-versions"],
        root_files: &[],
        hooks: &["plugins"],
        code: &["installs"],
    },
    Manager {
        name: "rustup",
        marker: "",
        selectors: &["rust-toolchain", "rust-toolchain.toml"],
        home_files: &[".rustup/settings.toml"],
        root_files: &[],
        hooks: &[],
        code: &["toolchains"],
    },
    Manager {
        name: "nvm",
        marker: "nvm.sh",
        selectors: &[".nvmrc"],
        home_files: &[],
        root_files: &["alias/default"],
        hooks: &[],
        code: &[],
    },
];

/// The manager and root a PATH directory belongs to: `ROOT/shims` (pyenv, rbenv, nodenv, asdf,
/// mise), `ROOT/plugins/P/shims` and `ROOT/bin` (pyenv-virtualenv, the manager itself), a
/// directory holding `rustup` (its proxies: the root is HOME's `.rustup`, as `RUSTUP_HOME`
/// never passes), `ROOT/versions/node/V/bin` (nvm).
fn manager_of(dir: &Path, home: Option<&Path>) -> Option<(&'static Manager, PathBuf)> {
    let by_name = |n: &str| MANAGERS.iter().find(|m| m.name == n);
    if dir.join("rustup").is_file() {
        return Some((by_name("rustup")?, home?.join(".rustup")));
    }
    for root in dir.ancestors().skip(1).take(4) {
        for m in MANAGERS.iter().filter(|m| !m.marker.is_empty()) {
            let mise = m.name == "mise";
            let asdf = m.name == "asdf";
            let named = root.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let hit = if mise {
                named == "mise" && root.join(m.marker).exists()
            } else if asdf {
                named != "mise" && root.join(m.marker).is_dir() && root.join("plugins").is_dir()
            } else {
                root.join(m.marker).exists()
            };
            if hit {
                return Some((m, root.to_path_buf()));
            }
        }
    }
    None
}

/// Pins what a version manager reads for `root` (see [`MANAGERS`]).
fn manager_pins(m: &Manager, root: &Path, cx: &Ctx<'_>, out: &mut Pins) {
    let globbed = |rel: &str| -> Vec<PathBuf> {
        match rel.split_once("/*/") {
            Some((a, b)) => {
                let mut v: Vec<PathBuf> = std::fs::read_dir(root.join(a))
                    .map(|rd| {
                        rd.filter_map(Result::ok)
                            .map(|e| e.path().join(b))
                            .collect()
                    })
                    .unwrap_or_default();
                v.sort();
                v.truncate(MAX_FILES);
                v
            }
            None => vec![root.join(rel)],
        }
    };
    for d in up(cx.cwd) {
        for f in m.selectors {
            out.add("version-selector", &d.join(f), None);
        }
    }
    for f in m.home_files {
        if let Some(p) = home_file(cx, f) {
            out.add("version-selector", &p, None);
        }
    }
    for f in m.root_files {
        out.add("version-selector", &root.join(f), None);
    }
    let what = format!("{} hooks, run before the program", m.name);
    for h in m.hooks.iter().flat_map(|h| globbed(h)) {
        out.add_dir("version-manager-hooks", &h, &what);
    }
    let what = format!("{} code and installed versions", m.name);
    for c in m.code.iter().flat_map(|c| globbed(c)) {
        if c.exists() {
            out.add_dir("toolchain-dir", &c, &what);
            installed_versions(&c, out, 0);
        }
    }
}

/// Each installed version under a manager's code directory (`versions/3.12`, `toolchains/
/// stable-x86_64...`, asdf and mise `installs/python/3.12`): its `bin` entries and its `lib`
/// two levels down (`lib/python3.12/os.py`, `lib/libpython3.12.so`), so an interpreter or a
/// standard module rewritten in place ends the grant (each entry's ctime changes on a write).
fn installed_versions(dir: &Path, out: &mut Pins, level: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        out.unpinnable(dir, "cannot list the installed versions");
        return;
    };
    let mut subs: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    subs.sort();
    for v in subs {
        if v.join("bin").is_dir() {
            out.add_dir(
                "toolchain-dir",
                &v.join("bin"),
                "installed version's programs",
            );
            if v.join("lib").is_dir() {
                out.add_dir(
                    "toolchain-lib",
                    &v.join("lib"),
                    "installed version's libraries",
                );
            }
        } else if level == 0 {
            installed_versions(&v, out, 1);
        }
    }
}

/// Version-manager pins for every directory of the child's `search_path` that holds a
/// manager's shims or proxies (see [`MANAGERS`]).
pub fn manager_inputs(search_path: &str, cx: &Ctx<'_>) -> Vec<InputPin> {
    let mut out = Pins::default();
    let mut roots: Vec<PathBuf> = Vec::new();
    for d in search_path.split(':').filter(|d| d.starts_with('/')) {
        if let Some((m, root)) = manager_of(Path::new(d), cx.home)
            && !roots.contains(&root)
        {
            manager_pins(m, &root, cx, &mut out);
            roots.push(root);
        }
    }
    out.0
}

/// The manager run by name (`pyenv exec ...`): its root from the executable's directory.
fn managers_by_name(cx: &Ctx<'_>, _: &str, out: &mut Pins) {
    if let Some(dir) = cx.exe.parent()
        && let Some((m, root)) = manager_of(dir, cx.home)
    {
        manager_pins(m, &root, cx, out);
    }
}

/// [`TABLE`] as a Markdown table (what `docs/hardening.md` shows).
#[cfg(test)]
pub fn markdown() -> String {
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

#[derive(Default)]
struct Pins(Vec<InputPin>);

impl Pins {
    /// Pins a text file and returns its text (the bytes hashed) when it was newly pinned.
    fn add_text(
        &mut self,
        role: &str,
        path: &Path,
        detail: impl FnOnce(&str) -> Option<String>,
    ) -> Option<String> {
        if self.full(path) {
            return None;
        }
        // A file whose settings the card quotes (or whose includes are followed) is read whole
        // or refused: over 1 MiB it is pinned by hash only in `pin.rs`, which would hide them.
        if std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() > MAX_TEXT) {
            self.unpinnable(
                path,
                &format!("{role} over 1 MiB: keyveil cannot read and show its settings"),
            );
            return None;
        }
        let (p, text) = pin_input_text(role, path, detail)?;
        if self.0.iter().any(|q| q.path == p.path) {
            return None;
        }
        self.0.push(p);
        Some(text)
    }

    /// Pins a directory by fingerprint (`crate::path_dirs`), at the depth its role says.
    fn add_dir(&mut self, role: &str, dir: &Path, what: &str) {
        if self.0.iter().any(|q| Path::new(&q.path) == dir) || self.full(dir) {
            return;
        }
        let depth = crate::path_dirs::depth_for(role);
        self.0
            .extend(crate::path_dirs::pin_dir(role, dir, depth, what));
    }

    /// Whether the pin list is full; then `path` is recorded as not pinned (fail closed).
    fn full(&mut self, path: &Path) -> bool {
        if self.0.len() < MAX_FILES * 4 {
            return false;
        }
        self.unpinnable(
            path,
            &format!(
                "more than {} inputs for one command; keyveil pins no more",
                MAX_FILES * 4
            ),
        );
        true
    }

    /// Records an input that could not be pinned completely: the request is refused.
    fn unpinnable(&mut self, path: &Path, why: &str) {
        let p = crate::path_dirs::unpinnable(path, why);
        if !self.0.contains(&p) {
            self.0.push(p);
        }
    }

    /// Whether `path` (canonicalised) is pinned already.
    fn has(&self, path: &Path) -> bool {
        std::fs::canonicalize(path).is_ok_and(|c| self.0.iter().any(|q| Path::new(&q.path) == c))
    }

    fn add(&mut self, role: &str, path: &Path, detail: Option<String>) -> bool {
        if self.full(path) {
            return false;
        }
        match pin_input(role, path, detail) {
            Some(p) if !self.0.iter().any(|q| q.path == p.path) => {
                self.0.push(p);
                true
            }
            _ => false,
        }
    }
}

fn argv_has_pair(argv: &[String], a: &str, b: &str) -> bool {
    argv.windows(2)
        .any(|w| w.first().is_some_and(|x| x == a) && w.get(1).is_some_and(|x| x == b))
}

/// `dir` and its ancestors, nearest first.
fn up(dir: &Path) -> impl Iterator<Item = &Path> {
    dir.ancestors()
}

fn home_file(cx: &Ctx<'_>, rel: &str) -> Option<PathBuf> {
    cx.home.map(|h| h.join(rel))
}

// ---------------------------------------------------------------------------------------------
// npm, pnpm, yarn

/// npmrc keys that run a program, load code, or send tokens elsewhere (npm-config(7)).
const NPMRC_CODE_KEYS: &[&str] = &[
    "script-shell",
    "shell",
    "node-options",
    "git",
    "editor",
    "browser",
    "viewer",
    "prefix",
    "globalconfig",
    "userconfig",
    "registry",
    "proxy",
    "https-proxy",
    "cafile",
    "ca",
    "init-module",
    "ignore-scripts",
    "yarn-path",
    "yarnpath",
    "plugins",
    "unsafeHttpWhitelist",
    "httpproxy",
    "httpsproxy",
    "npmregistryserver",
    "pnpmfile",
    "global-pnpmfile",
];

fn npmrc_detail(text: &str) -> Option<String> {
    let shown: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| {
            let (k, v) = l.split_once('=').or_else(|| l.split_once(':'))?;
            let k = k.trim().trim_matches('"');
            let last = k.rsplit(':').next().unwrap_or(k).to_ascii_lowercase();
            NPMRC_CODE_KEYS
                .iter()
                .any(|c| c.eq_ignore_ascii_case(&last))
                .then(|| format!("{k}={}", v.trim()))
        })
        .collect();
    (!shown.is_empty()).then(|| format!("runs or redirects: {}", shown.join("; ")))
}

fn npm(cx: &Ctx<'_>, _: &str, out: &mut Pins) {
    for d in up(cx.cwd) {
        for (role, name) in [
            ("npmrc", ".npmrc"),
            ("yarnrc", ".yarnrc"),
            ("yarnrc", ".yarnrc.yml"),
        ] {
            out.add_text(role, &d.join(name), npmrc_detail);
        }
    }
    for (role, name) in [
        ("npmrc", ".npmrc"),
        ("yarnrc", ".yarnrc"),
        ("yarnrc", ".yarnrc.yml"),
        ("npmrc", ".config/pnpm/rc"),
    ] {
        if let Some(p) = home_file(cx, name) {
            out.add_text(role, &p, npmrc_detail);
        }
    }
    // Global and builtin config near the executable ($PREFIX/etc/npmrc, npm's own `npmrc`).
    let mut globals = vec![PathBuf::from("/etc/npmrc")];
    for d in cx.exe.ancestors().skip(1).take(5) {
        globals.push(d.join("etc/npmrc"));
        globals.push(d.join("npmrc"));
    }
    for p in globals {
        out.add_text("npmrc", &p, npmrc_detail);
    }
    out.add("pnpmfile", &cx.cwd.join(".pnpmfile.cjs"), None);
    out.add("pnpm-workspace", &cx.cwd.join("pnpm-workspace.yaml"), None);
    // npm-run-script(1): a script runs with `node_modules/.bin` of the package and of every
    // parent first on PATH; a program planted there shadows `tr`, `sed`, `node`... Each is
    // pinned like an agent-writable PATH directory (absent ones as absent).
    for d in up(cx.cwd) {
        out.add_dir(
            crate::path_dirs::ROLE,
            &d.join("node_modules/.bin"),
            "npm puts it first on PATH",
        );
    }
    npm_defaults(cx, out);
}

/// npm's default scripts (npm-run-script(1), package.json(5)): with no `start` script, `npm
/// start` (and `restart`) runs `node server.js`; with no `install`/`preinstall` script and a
/// `binding.gyp`, `npm install` runs `node-gyp rebuild`. The file that then runs is pinned and
/// the card says so.
fn npm_defaults(cx: &Ctx<'_>, out: &mut Pins) {
    let cmd = cx
        .argv
        .iter()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(String::as_str);
    let pj = read_for_requester(&cx.cwd.join("package.json")).unwrap_or_default();
    let json = serde_json::from_str::<serde_json::Value>(pj.trim_start_matches('\u{feff}')).ok();
    let has = |name: &str| {
        json.as_ref()
            .and_then(|v| v.get("scripts"))
            .and_then(|x| x.get(name))
            .is_some()
    };
    match cmd {
        Some("start" | "restart") if !has("start") => {
            out.add(
                "npm-default-start",
                &cx.cwd.join("server.js"),
                Some("no start script: npm runs `node server.js`".to_owned()),
            );
        }
        Some("install" | "i" | "ci" | "add" | "rebuild")
            if !has("install") && !has("preinstall") =>
        {
            out.add(
                "npm-default-install",
                &cx.cwd.join("binding.gyp"),
                Some("no install script: npm runs `node-gyp rebuild` with this file".to_owned()),
            );
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// python, pip

/// Interpreter prefixes for an executable: `P` for `P/bin/pythonX.Y`; for a pyenv shim
/// (`~/.pyenv/shims/python3`), the version pyenv selects (pyenv(1) "Choosing the Python
/// version": the nearest `.python-version` up from `cwd`, else `$PYENV_ROOT/version`;
/// `PYENV_VERSION` never passes), or every installed version when that cannot be told.
fn python_prefixes(exe: &Path, cwd: &Path) -> Vec<PathBuf> {
    let Some(bin) = exe.parent() else {
        return Vec::new();
    };
    let Some(prefix) = bin.parent() else {
        return Vec::new();
    };
    if bin.file_name().is_some_and(|n| n == "shims") {
        let versions = prefix.join("versions");
        let chosen = up(cwd)
            .map(|d| d.join(".python-version"))
            .chain(std::iter::once(prefix.join("version")))
            .find_map(|f| read_for_requester(&f));
        if let Some(text) = chosen {
            let v: Vec<PathBuf> = text
                .split_whitespace()
                .filter(|n| !n.starts_with('#') && !n.contains('/') && *n != "system")
                .map(|n| versions.join(n))
                .filter(|p| p.is_dir())
                .take(8)
                .collect();
            if !v.is_empty() {
                return v;
            }
        }
        let mut v: Vec<PathBuf> = std::fs::read_dir(&versions)
            .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v.truncate(16);
        return v;
    }
    vec![prefix.to_path_buf()]
}

/// Site directories of an interpreter prefix (`lib/pythonX.Y/site-packages`, Debian's
/// `dist-packages`), and of its base interpreter for a venv (`home =` in `pyvenv.cfg`).
fn site_dirs(prefix: &Path, out: &mut Pins) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut prefixes = vec![prefix.to_path_buf()];
    let cfg = prefix.join("pyvenv.cfg");
    if let Some(t) = out.add_text("python-venv", &cfg, |_| None) {
        for l in t.lines() {
            if let Some((k, v)) = l.split_once('=')
                && k.trim() == "home"
                && let Some(base) = Path::new(v.trim()).parent()
            {
                prefixes.push(base.to_path_buf());
            }
        }
    }
    for p in prefixes {
        for lib in [p.join("lib"), p.join("lib64"), p.join("local/lib")] {
            let Ok(rd) = std::fs::read_dir(&lib) else {
                continue;
            };
            for e in rd.filter_map(Result::ok) {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("python") {
                    dirs.push(e.path().join("site-packages"));
                    dirs.push(e.path().join("dist-packages"));
                }
            }
        }
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

/// The directory Python puts first on `sys.path` (`sys.path[0]`, docs.python.org/3/library/
/// sys.html#sys.path): the script's directory (symlinks resolved), or the working directory for
/// `-m`, `-c` and stdin; none with `-I`/`-P` (safe path).
fn python_path0(cx: &Ctx<'_>) -> Option<PathBuf> {
    let mut it = cx.argv.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "-m" | "-c" | "-" => return Some(cx.cwd.to_path_buf()),
            "-W" | "-X" | "--check-hash-based-pycs" => {
                it.next();
            }
            s if s.starts_with("--") => {}
            s if s.starts_with('-') => {
                let flags = s.trim_start_matches('-');
                if flags.contains(['I', 'P']) {
                    return None;
                }
                if flags.contains(['m', 'c']) {
                    return Some(cx.cwd.to_path_buf());
                }
            }
            script => {
                let p = std::fs::canonicalize(cx.cwd.join(script)).ok()?;
                return p.parent().map(Path::to_path_buf);
            }
        }
    }
    Some(cx.cwd.to_path_buf())
}

fn python(cx: &Ctx<'_>, family: &str, out: &mut Pins) {
    let pip = family == "pip" || argv_has_pair(cx.argv, "-m", "pip");
    if family == "python"
        && let Some(dir) = python_path0(cx)
        && !out.0.iter().any(|q| Path::new(&q.path) == dir)
    {
        // A `json.py` or `json/` there shadows the standard library: its importable entries
        // are fingerprinted (modules, packages one level down, `__pycache__`).
        let role = "python-import-dir";
        if let Some(f) = crate::path_dirs::fingerprint_filtered(
            &dir,
            crate::path_dirs::depth_for(role),
            crate::path_dirs::python_importable,
        ) {
            // The card names what can be imported from there (a `json.py` is seen for what
            // it is).
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .map(|e| e.file_name())
                        .filter(|n| crate::path_dirs::python_importable(n))
                        .map(|n| n.to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            let more = names.len().saturating_sub(24);
            names.truncate(24);
            let mut what = format!(
                "Python imports from here first (sys.path[0]), before the standard library: {}",
                names.join(", ")
            );
            if more > 0 {
                what.push_str(&format!(" and {more} more"));
            }
            out.0
                .extend(crate::path_dirs::pin_fingerprint(role, &dir, f, &what));
        }
    }
    // A venv run by its own path (`.venv/bin/python3`): Python finds `pyvenv.cfg` next to the
    // executable as invoked, or one level up, not next to the symlink's target.
    let mut prefixes = python_prefixes(cx.exe, cx.cwd);
    if let Some(a0) = cx.argv.first().filter(|a| a.contains('/')) {
        let bin = cx.cwd.join(a0);
        for d in bin.ancestors().skip(1).take(2) {
            if d.join("pyvenv.cfg").is_file() && !prefixes.contains(&d.to_path_buf()) {
                prefixes.push(d.to_path_buf());
            }
        }
    }
    for prefix in prefixes {
        for dir in site_dirs(&prefix, out) {
            pin_dir(out, "python-site", &dir, |n| {
                n.ends_with(".pth") || n == "sitecustomize.py" || n == "usercustomize.py"
            });
        }
    }
    for d in up(cx.cwd) {
        out.add("python-version", &d.join(".python-version"), None);
    }
    if let Some(p) = home_file(cx, ".pyenv/version") {
        out.add("python-version", &p, None);
    }
    if pip {
        let mut confs: Vec<PathBuf> = [".config/pip/pip.conf", ".pip/pip.conf"]
            .iter()
            .filter_map(|r| home_file(cx, r))
            .collect();
        confs.push(PathBuf::from("/etc/pip.conf"));
        confs.push(PathBuf::from("/etc/xdg/pip/pip.conf"));
        for prefix in python_prefixes(cx.exe, cx.cwd) {
            confs.push(prefix.join("pip.conf"));
        }
        for c in confs {
            out.add("pip-config", &c, None);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// cargo, rustup

fn cargo(cx: &Ctx<'_>, _: &str, out: &mut Pins) {
    for d in up(cx.cwd) {
        for n in [".cargo/config.toml", ".cargo/config"] {
            out.add("cargo-config", &d.join(n), None);
        }
        for n in ["rust-toolchain.toml", "rust-toolchain"] {
            out.add("rust-toolchain", &d.join(n), None);
        }
    }
    for n in [".cargo/config.toml", ".cargo/config"] {
        if let Some(p) = home_file(cx, n) {
            out.add("cargo-config", &p, None);
        }
    }
    if let Some(p) = home_file(cx, ".rustup/settings.toml") {
        out.add("rustup-settings", &p, None);
    }
}

// ---------------------------------------------------------------------------------------------
// shells

fn shell(cx: &Ctx<'_>, family: &str, out: &mut Pins) {
    let mut login = false;
    let mut interactive = false;
    for a in cx.argv.iter().skip(1) {
        if a == "--login" {
            login = true;
        } else if a == "--" || !a.starts_with('-') {
            break;
        } else if !a.starts_with("--") {
            login |= a.contains('l');
            interactive |= a.contains('i');
        }
    }
    let mut files: Vec<&str> = Vec::new();
    let zsh = family == "zsh";
    if zsh {
        files.extend(["/etc/zsh/zshenv", "/etc/zshenv", "~/.zshenv"]);
        if login {
            files.extend(["/etc/zsh/zprofile", "~/.zprofile", "~/.zlogin"]);
        }
        if interactive {
            files.extend(["/etc/zsh/zshrc", "~/.zshrc"]);
        }
    } else {
        if login {
            files.push("/etc/profile");
            if family == "bash" {
                files.extend(["~/.bash_profile", "~/.bash_login"]);
            }
            files.push("~/.profile");
        }
        if interactive && family == "bash" {
            files.extend(["/etc/bash.bashrc", "~/.bashrc"]);
        }
    }
    for f in files {
        let p = match f.strip_prefix("~/") {
            Some(rel) => match home_file(cx, rel) {
                Some(p) => p,
                None => continue,
            },
            None => PathBuf::from(f),
        };
        out.add("shell-startup", &p, None);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ctx<'a>(argv: &'a [String], cwd: &'a Path, exe: &'a Path, home: &'a Path) -> Ctx<'a> {
        Ctx {
            argv,
            cwd,
            exe,
            home: Some(home),
        }
    }

    /// Makes `git` a repository by git's test (HEAD, objects/, refs/).
    fn mkrepo(git: &Path) {
        std::fs::create_dir_all(git.join("objects")).unwrap();
        std::fs::create_dir_all(git.join("refs")).unwrap();
        std::fs::write(git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
    }

    fn sv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn git_config_code_settings_are_found_and_shown() {
        let t = "[core]\n\tfsmonitor = ./x.sh\n\tbare = false\n[alias]\n\tst = status\n\tp = !sh evil\n[remote \"origin\"]\n\turl = x\n\tuploadpack = ./u\n[include]\n\tpath = ~/more.inc\n";
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config");
        std::fs::write(&p, t).unwrap();
        let c = parse_git_config(t);
        let detail = c.detail.unwrap();
        assert!(detail.contains("core.fsmonitor=./x.sh"), "{detail}");
        assert!(detail.contains("alias.p=!sh evil"), "{detail}");
        assert!(!detail.contains("alias.st"), "{detail}");
        assert!(detail.contains("remote.origin.uploadpack=./u"), "{detail}");
        let inc: Vec<String> = c
            .items
            .iter()
            .filter_map(|i| match i {
                GitItem::Include(p) => Some(p.clone()),
                GitItem::HooksPath(_) => None,
            })
            .collect();
        assert_eq!(inc, vec!["~/more.inc".to_owned()]);
        // A byte order mark (which git skips) does not hide the first section's keys.
        let bom = "\u{feff}[filter \"y\"]\n\tclean = sh -c 'env > /tmp/f; cat'\n[core]\n\thooksPath = /tmp/h\n";
        let c = parse_git_config(bom);
        let detail = c.detail.unwrap_or_default();
        assert!(detail.contains("filter.y.clean="), "{detail}");
        assert!(
            detail.contains("core.hookspath=/tmp/h") || detail.contains("core.hooksPath=/tmp/h"),
            "{detail}"
        );
    }

    #[test]
    fn git_config_values_are_shown_whole_as_git_reads_them() {
        // A continuation inside quotes: the card must not stop at the first line.
        let t = "[core]\n\tpager = \"less \\\n; curl -d @/proc/self/environ x\"\n\tsshCommand = ssh\\\n -oProxyCommand=evil # c\n";
        let d = parse_git_config(t).detail.unwrap();
        assert!(
            d.contains("core.pager=\"less ; curl -d @/proc/self/environ x\""),
            "{d}"
        );
        assert!(d.contains("core.sshcommand=ssh -oProxyCommand=evil"), "{d}");
        // The deprecated header form, a key on the header's line, and a subsection whose case
        // git keeps.
        let t = "[Filter.LFS]Clean = x\n[diff \"Pdf\"] textconv = \"y\\tz\"\n";
        let d = parse_git_config(t).detail.unwrap();
        assert!(d.contains("filter.lfs.clean=x"), "{d}");
        assert!(d.contains("diff.Pdf.textconv=\"y\\tz\""), "{d}");
        // git refuses a file with a bad line: said so.
        let d = parse_git_config("[core]\n\tpager = \\q\n").detail.unwrap();
        assert!(d.contains("bad config line 2"), "{d}");
    }

    #[test]
    fn git_includes_are_followed_in_order_and_the_last_hooks_path_wins() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("repo");
        std::fs::create_dir_all(repo.join(".git/hooks")).unwrap();
        std::fs::create_dir_all(repo.join("late")).unwrap();
        std::fs::create_dir_all(repo.join("early")).unwrap();
        std::fs::write(repo.join("late/h1"), "#!/bin/sh\n").unwrap();
        std::fs::write(repo.join("early/h0"), "#!/bin/sh\n").unwrap();
        // The include comes after hooksPath in the file, so the included value wins (git reads
        // includes where they stand); `includeIf` is followed whatever its condition.
        mkrepo(&repo.join(".git"));
        std::fs::write(
            repo.join(".git/config"),
            "[core]\n\thooksPath = early\n[include]\n\tpath = \"inc\\\n.cfg\"\n[includeIf \"onbranch:x\"]\n\tpath = cond.cfg\n",
        )
        .unwrap();
        std::fs::write(repo.join(".git/inc.cfg"), "[core]\n\thooksPath = late\n").unwrap();
        std::fs::write(repo.join(".git/cond.cfg"), "[alias]\n\tx = !evil\n").unwrap();
        let argv = sv(&["git", "status"]);
        let pins = inputs(
            "git",
            "git",
            &ctx(&argv, &repo, Path::new("/usr/bin/git"), d.path()),
        );
        let names: Vec<&str> = pins
            .iter()
            .map(|p| p.path.rsplit('/').next().unwrap())
            .collect();
        assert!(names.contains(&"inc.cfg"), "{names:?}");
        assert!(names.contains(&"cond.cfg"), "{names:?}");
        assert!(names.contains(&"h1"), "{names:?}");
        assert!(!names.contains(&"h0"), "{names:?}");
    }

    #[test]
    fn git_reads_what_git_reads_or_refuses() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().join("home");
        let repo = d.path().join("repo");
        std::fs::create_dir_all(&home).unwrap();
        mkrepo(&repo.join(".git"));
        // A `.git` that is no repository (a decoy) is skipped, as git skips it.
        std::fs::create_dir_all(repo.join("a/b/.git")).unwrap();
        std::fs::write(repo.join("a/b/.git/config"), "[core]\n\tbare = false\n").unwrap();
        std::fs::write(
            repo.join(".git/config"),
            "[alias]\n\tst = status\n\tf = fetch --upload-pack=./u\n\tg = -c core.pager=x log\n[include]\n\tpath = %(prefix)/share/kv-none.cfg\n",
        )
        .unwrap();
        let argv = sv(&["git", "status"]);
        let git = Path::new("/usr/bin/git");
        let pins = inputs("git", "git", &ctx(&argv, &repo.join("a/b"), git, &home));
        let cfg = std::fs::canonicalize(repo.join(".git/config")).unwrap();
        let c = pins.iter().find(|p| Path::new(&p.path) == cfg).unwrap();
        let det = c.detail.as_deref().unwrap();
        assert!(det.contains("alias.f=fetch --upload-pack=./u"), "{det}");
        assert!(det.contains("alias.g=-c core.pager=x log"), "{det}");
        assert!(!det.contains("alias.st"), "{det}");
        assert!(
            !pins.iter().any(|p| p.path.contains("/a/b/.git")),
            "{pins:?}"
        );
        // A bare repository: the directory itself.
        let bare = d.path().join("bare.git");
        mkrepo(&bare);
        std::fs::write(bare.join("config"), "[core]\n\tbare = true\n").unwrap();
        let pins = inputs("git", "git", &ctx(&argv, &bare, git, &home));
        assert!(
            pins.iter().any(|p| p.path.ends_with("/bare.git/config")),
            "{pins:?}"
        );
        // `~user/` and `%(prefix)/` are expanded as git does; an unknown user is refused.
        let cx = ctx(&argv, &repo, git, &home);
        assert_eq!(
            git_path("%(prefix)/etc/x", Path::new("/b"), &cx).unwrap(),
            PathBuf::from("/usr/etc/x")
        );
        assert_eq!(
            git_path("~root/x", Path::new("/b"), &cx).unwrap(),
            user_home("root").unwrap().join("x")
        );
        assert_eq!(
            git_path("~/x", Path::new("/b"), &cx).unwrap(),
            home.join("x")
        );
        std::fs::write(
            repo.join(".git/config"),
            "[include]\n\tpath = ~no-such-user-kv/x.cfg\n",
        )
        .unwrap();
        let pins = inputs("git", "git", &ctx(&argv, &repo, git, &home));
        assert!(
            pins.iter().any(|p| p.role == crate::pin::UNPINNABLE),
            "{pins:?}"
        );
        // A config over 1 MiB cannot be shown: refused, not pinned by hash alone.
        let big = format!("[core]\n{}", "# pad\n".repeat(200_000));
        std::fs::write(repo.join(".git/config"), big).unwrap();
        let pins = inputs("git", "git", &ctx(&argv, &repo, git, &home));
        assert!(
            pins.iter()
                .any(|p| p.role == crate::pin::UNPINNABLE && p.path.ends_with("config")),
            "{pins:?}"
        );
        // Hooks beyond the per-file cap: the directory is pinned whole.
        std::fs::write(repo.join(".git/config"), "").unwrap();
        std::fs::create_dir_all(repo.join(".git/hooks")).unwrap();
        for i in 0..70 {
            std::fs::write(repo.join(format!(".git/hooks/h{i:02}")), "x").unwrap();
        }
        let pins = inputs("git", "git", &ctx(&argv, &repo, git, &home));
        let dir = pins.iter().find(|p| p.role == "git-hooks-dir").unwrap();
        assert!(crate::path_dirs::still_holds(dir));
        std::fs::write(repo.join(".git/hooks/zz-late"), "x").unwrap();
        assert!(!crate::path_dirs::still_holds(dir));
    }

    #[test]
    fn git_pins_submodule_configs_and_hooks() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("repo");
        let m = repo.join(".git/modules/lib/sub");
        std::fs::create_dir_all(m.join("hooks")).unwrap();
        std::fs::create_dir_all(m.join("modules/inner/hooks")).unwrap();
        mkrepo(&repo.join(".git"));
        std::fs::write(repo.join(".git/config"), "[core]\n\tbare = false\n").unwrap();
        std::fs::write(m.join("config"), "[filter \"x\"]\n\tclean = sh evil\n").unwrap();
        std::fs::write(m.join("hooks/post-checkout"), "#!/bin/sh\n").unwrap();
        std::fs::write(m.join("modules/inner/config"), "[core]\n\tbare = false\n").unwrap();
        let home = d.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let argv = sv(&["git", "status"]);
        let pins = inputs(
            "git",
            "git",
            &ctx(&argv, &repo, Path::new("/usr/bin/git"), &home),
        );
        let paths: Vec<String> = pins.iter().map(|p| p.path.clone()).collect();
        let canon = |p: PathBuf| std::fs::canonicalize(p).unwrap().display().to_string();
        assert!(paths.contains(&canon(m.join("config"))), "{paths:?}");
        assert!(
            paths.contains(&canon(m.join("hooks/post-checkout"))),
            "{paths:?}"
        );
        assert!(
            paths.contains(&canon(m.join("modules/inner/config"))),
            "{paths:?}"
        );
        let sub = pins
            .iter()
            .find(|p| p.path == canon(m.join("config")))
            .unwrap();
        assert!(
            sub.detail
                .as_deref()
                .unwrap_or("")
                .contains("filter.x.clean"),
            "{sub:?}"
        );
    }

    #[test]
    fn git_pins_repo_and_global_config_and_hooks() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().join("home");
        let repo = d.path().join("repo");
        std::fs::create_dir_all(repo.join(".git/hooks")).unwrap();
        std::fs::create_dir_all(repo.join("sub")).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        mkrepo(&repo.join(".git"));
        std::fs::write(repo.join(".git/config"), "[core]\n\tbare = false\n").unwrap();
        std::fs::write(repo.join(".git/hooks/pre-commit"), "#!/bin/sh\n").unwrap();
        std::fs::write(repo.join(".git/hooks/pre-push.sample"), "#!/bin/sh\n").unwrap();
        std::fs::write(home.join(".gitconfig"), "[user]\n\tname = x\n").unwrap();
        let argv = sv(&["git", "status"]);
        let elsewhere = sv(&["git", "--git-dir=../repo/.git", "status"]);
        let other = d.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        let by_flag = inputs(
            "git",
            "git",
            &ctx(&elsewhere, &other, Path::new("/usr/bin/git"), &home),
        );
        assert!(
            by_flag
                .iter()
                .any(|p| p.path.ends_with("/repo/.git/config")),
            "{by_flag:?}"
        );
        let sub = repo.join("sub");
        let exe = Path::new("/usr/bin/git");
        let pins = inputs("git", "git", &ctx(&argv, &sub, exe, &home));
        let roles: Vec<(&str, &str)> = pins
            .iter()
            .map(|p| (p.role.as_str(), p.path.rsplit('/').next().unwrap()))
            .collect();
        assert!(roles.contains(&("git-config", "config")), "{roles:?}");
        assert!(roles.contains(&("git-config", ".gitconfig")), "{roles:?}");
        assert!(roles.contains(&("git-hook", "pre-commit")), "{roles:?}");
        assert!(!roles.iter().any(|r| r.1.ends_with(".sample")), "{roles:?}");
    }

    #[test]
    fn make_follows_literal_includes_and_flags() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("sub")).unwrap();
        std::fs::write(
            d.path().join("sub/Makefile"),
            "include rules.mk\n-include $(X).mk\nall:\n\ttrue\n",
        )
        .unwrap();
        std::fs::write(d.path().join("sub/rules.mk"), "sinclude deep.mk\n").unwrap();
        std::fs::write(d.path().join("sub/deep.mk"), "x:\n").unwrap();
        let argv = sv(&["make", "-C", "sub", "all"]);
        let pins = inputs(
            "make",
            "make",
            &ctx(&argv, d.path(), Path::new("/usr/bin/make"), d.path()),
        );
        let (refused, pins): (Vec<_>, Vec<_>) = pins
            .into_iter()
            .partition(|p| p.role == crate::pin::UNPINNABLE);
        let names: Vec<&str> = pins
            .iter()
            .map(|p| p.path.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(names, ["Makefile", "rules.mk", "deep.mk"]);
        assert_eq!(pins[0].role, "makefile");
        assert_eq!(pins[1].role, "makefile-include");
        // An include only make can expand is refused (fail closed), not skipped.
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(
            refused[0]
                .detail
                .as_deref()
                .unwrap_or("")
                .contains("$(X).mk"),
            "{refused:?}"
        );
    }

    #[test]
    fn make_pins_what_a_makefile_puts_on_path_and_refuses_what_it_cannot_tell() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let cases: &[(&str, Result<Vec<&str>, ()>)] = &[
            (
                "export PATH := $(CURDIR)/tools:$(PATH)\n",
                Ok(vec!["tools"]),
            ),
            ("override PATH = bin:${PATH}\n", Ok(vec!["bin"])),
            ("test: PATH := $(PWD)/x/y:$(PATH)\n", Ok(vec!["x/y"])),
            ("$(eval PATH := v:$(PATH))\n", Ok(vec!["v"])),
            (
                "t:\n\tPATH=node/bin:$$PATH npm test\n",
                Ok(vec!["node/bin"]),
            ),
            ("t:\n\texport PATH=\"$$PWD/b:$$PATH\"; x\n", Ok(vec!["b"])),
            (
                "MANPATH = m\nX_PATH = y\nt:\n\techo $$PATH $(PATH)\n",
                Ok(vec![]),
            ),
            ("export PATH := $(shell pwd)/sh:$(PATH)\n", Ok(vec!["sh"])),
            ("export PATH := $(shell cat f):$(PATH)\n", Err(())),
            ("PATH != echo x\n", Err(())),
            ("define PATH\nx\nendef\n", Err(())),
            ("PATH += $(TOOLS)\n", Err(())),
        ];
        for (text, want) in cases {
            let got = make_path_dirs(text, dir);
            match (want, got) {
                (Ok(w), Ok(g)) => {
                    let w: Vec<PathBuf> = w.iter().map(|x| dir.join(x)).collect();
                    assert_eq!(g, w, "{text:?}");
                }
                (Err(()), Err(_)) => {}
                (w, g) => panic!("{text:?}: want {w:?}, got {g:?}"),
            }
        }
        assert_eq!(
            make_expand_include("$(DEPS)", "DEPS = a.d b.d\n").unwrap(),
            ["a.d", "b.d"]
        );
        assert_eq!(
            make_expand_include("$(wildcard build/*.d)", "").unwrap(),
            ["build/*.d"]
        );
        assert!(make_expand_include("$(DEPS)", "DEPS = $(SRCS:.c=.d)\n").is_err());
        assert!(make_expand_include("$(DEPS)", "DEPS = a.d\nDEPS += b.d\n").is_err());
        assert!(make_expand_include("$(DEPS)", "").is_err());
    }

    #[test]
    fn npm_pins_what_npm_itself_adds_to_a_run() {
        let d = tempfile::tempdir().unwrap();
        let app = d.path().join("ws/app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("package.json"), "\u{feff}{\"scripts\":{}}").unwrap();
        std::fs::write(app.join("binding.gyp"), "{}").unwrap();
        let argv = sv(&["pnpm", "install"]);
        let npm = Path::new("/usr/bin/pnpm");
        let pins = inputs("pnpm", "pnpm", &ctx(&argv, &app, npm, d.path()));
        let gyp = pins
            .iter()
            .find(|p| p.role == "npm-default-install")
            .unwrap();
        assert!(
            gyp.detail.as_deref().unwrap().contains("node-gyp"),
            "{gyp:?}"
        );
        // The parent's node_modules/.bin, absent now, is pinned as absent.
        let parent_bin = d.path().join("ws/node_modules/.bin");
        let p = pins
            .iter()
            .find(|p| Path::new(&p.path) == parent_bin)
            .unwrap();
        assert!(crate::path_dirs::still_holds(p));
        std::fs::create_dir_all(&parent_bin).unwrap();
        assert!(!crate::path_dirs::still_holds(p));
    }

    #[test]
    fn home_configs_that_run_code_are_pinned_and_quoted() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path();
        std::fs::create_dir_all(home.join(".ssh/conf.d")).unwrap();
        std::fs::create_dir_all(home.join(".aws")).unwrap();
        std::fs::write(
            home.join(".ssh/config"),
            "Host *\n  User me\nInclude conf.d/*.conf\n",
        )
        .unwrap();
        std::fs::write(
            home.join(".ssh/conf.d/x.conf"),
            "  ProxyCommand sh -c evil\n",
        )
        .unwrap();
        std::fs::write(
            home.join(".aws/config"),
            "[profile p]\ncredential_process = /tmp/evil\nregion = x\n",
        )
        .unwrap();
        std::fs::write(home.join(".psqlrc"), "\\! sh evil\n").unwrap();
        let detail = |tool: &str| -> Vec<String> {
            let argv = sv(&[tool]);
            let exe = PathBuf::from(format!("/usr/bin/{tool}"));
            inputs(tool, tool, &ctx(&argv, home, &exe, home))
                .into_iter()
                .filter(|p| p.path.starts_with(&*home.display().to_string()))
                .filter_map(|p| p.detail)
                .collect()
        };
        let ssh = detail("ssh").join(" | ");
        assert!(ssh.contains("ProxyCommand sh -c evil"), "{ssh}");
        assert!(!ssh.contains("User me"), "{ssh}");
        assert!(
            detail("aws")
                .join(" ")
                .contains("credential_process = /tmp/evil")
        );
        assert!(detail("psql").join(" ").contains("sh evil"));
        for v in [
            "KUBECONFIG",
            "TAR_OPTIONS",
            "RM",
            "CARGO_REGISTRIES_X_CREDENTIAL_PROVIDER",
            "CURL_HOME",
        ] {
            assert!(is_loader_var(v), "{v}");
        }
    }

    #[test]
    fn make_includes_by_wildcard_and_include_dir_are_pinned() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("mk")).unwrap();
        std::fs::create_dir_all(d.path().join("inc")).unwrap();
        std::fs::write(
            d.path().join("Makefile"),
            "include mk/[ab]*.mk\nsinclude common.mk\nall:\n",
        )
        .unwrap();
        std::fs::write(d.path().join("mk/a1.mk"), "x:\n").unwrap();
        std::fs::write(d.path().join("mk/zz.mk"), "x:\n").unwrap();
        std::fs::write(d.path().join("inc/common.mk"), "x:\n").unwrap();
        let argv = sv(&["make", "--include-dir=inc", "all"]);
        let exe = Path::new("/usr/bin/make");
        let pins = inputs("make", "make", &ctx(&argv, d.path(), exe, d.path()));
        let names: Vec<&str> = pins
            .iter()
            .map(|p| p.path.rsplit('/').next().unwrap())
            .collect();
        assert!(
            names.contains(&"a1.mk") && names.contains(&"common.mk"),
            "{names:?}"
        );
        assert!(!names.contains(&"zz.mk"), "{names:?}");
        let dir = pins.iter().find(|p| p.role == "make-include-dir").unwrap();
        std::fs::write(d.path().join("mk/b2.mk"), "x:\n").unwrap();
        assert!(!crate::path_dirs::still_holds(dir));
    }

    #[test]
    fn python_pins_the_directory_it_imports_from_first() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("tools")).unwrap();
        std::fs::write(d.path().join("tools/run.py"), "import json\n").unwrap();
        std::fs::write(d.path().join("README.md"), "x").unwrap();
        let exe = Path::new("/usr/bin/python3");
        let argv = sv(&["python3", "-W", "error", "tools/run.py"]);
        let pins = inputs("python", "python3", &ctx(&argv, d.path(), exe, d.path()));
        let p = pins.iter().find(|p| p.role == "python-import-dir").unwrap();
        assert!(p.path.ends_with("/tools"), "{p:?}");
        assert!(p.detail.as_deref().unwrap().contains("run.py"), "{p:?}");
        assert!(crate::path_dirs::still_holds(p));
        // A compiled module planted in __pycache__ is a change; so is one in cwd for -m.
        std::fs::create_dir_all(d.path().join("tools/__pycache__")).unwrap();
        assert!(!crate::path_dirs::still_holds(p));
        let m = sv(&["python3", "-m", "json.tool"]);
        let pins = inputs("python", "python3", &ctx(&m, d.path(), exe, d.path()));
        let p = pins.iter().find(|p| p.role == "python-import-dir").unwrap();
        std::fs::write(d.path().join("NOTES.txt"), "x").unwrap();
        assert!(crate::path_dirs::still_holds(p), "a data file is no module");
        std::fs::write(d.path().join("json.py"), "x").unwrap();
        assert!(!crate::path_dirs::still_holds(p));
        // -I: no script directory on sys.path.
        let i = sv(&["python3", "-I", "tools/run.py"]);
        let pins = inputs("python", "python3", &ctx(&i, d.path(), exe, d.path()));
        assert!(!pins.iter().any(|p| p.role == "python-import-dir"));
    }

    #[test]
    fn npmrc_code_settings_are_shown() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(".npmrc");
        std::fs::write(
            &p,
            "script-shell=./evil\n//r.example/:_authToken=x\nfund=false\n",
        )
        .unwrap();
        let det = npmrc_detail(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert!(det.contains("script-shell=./evil"), "{det}");
        assert!(!det.contains("fund"), "{det}");
    }

    #[test]
    fn shells_pin_startup_files_only_when_they_are_read() {
        let d = tempfile::tempdir().unwrap();
        for f in [".profile", ".bashrc", ".zshenv", ".bash_profile"] {
            std::fs::write(d.path().join(f), "echo x\n").unwrap();
        }
        let exe = Path::new("/bin/bash");
        let plain = sv(&["bash", "ci.sh"]);
        assert!(inputs("bash", "bash", &ctx(&plain, d.path(), exe, d.path())).is_empty());
        let login = sv(&["bash", "-l", "ci.sh"]);
        let n: Vec<String> = inputs("bash", "bash", &ctx(&login, d.path(), exe, d.path()))
            .into_iter()
            .map(|p| p.path)
            .collect();
        assert!(n.iter().any(|p| p.ends_with("/.bash_profile")), "{n:?}");
        assert!(n.iter().any(|p| p.ends_with("/.profile")), "{n:?}");
        assert!(!n.iter().any(|p| p.ends_with("/.bashrc")), "{n:?}");
        let z = sv(&["zsh", "ci.zsh"]);
        let n = inputs(
            "zsh",
            "zsh",
            &ctx(&z, d.path(), Path::new("/bin/zsh"), d.path()),
        );
        assert!(n.iter().any(|p| p.path.ends_with("/.zshenv")));
    }

    #[test]
    fn the_documented_table_is_the_code_table() {
        let doc = include_str!("../../../docs/hardening.md");
        let table = markdown();
        assert!(
            doc.contains(&table),
            "docs/hardening.md must hold the loaders table as rendered:\n{table}"
        );
    }

    #[test]
    fn includes_into_proc_are_neither_read_nor_pinned() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("repo");
        std::fs::create_dir_all(repo.join(".git")).unwrap();
        mkrepo(&repo.join(".git"));
        std::fs::write(
            repo.join(".git/config"),
            "[include]\n\tpath = /proc/self/environ\n[core]\n\thooksPath = /proc/self\n",
        )
        .unwrap();
        let argv = sv(&["git", "status"]);
        let pins = inputs(
            "git",
            "git",
            &ctx(&argv, &repo, Path::new("/usr/bin/git"), d.path()),
        );
        let git: Vec<&InputPin> = pins.iter().filter(|p| p.role.starts_with("git")).collect();
        assert_eq!(git.len(), 1, "{pins:?}");
        assert!(pins.iter().all(|p| !p.path.starts_with("/proc")));
        assert!(read_for_requester(Path::new("/proc/self/environ")).is_none());
    }

    #[test]
    fn pyenv_shims_pin_the_selected_version_only() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join(".pyenv");
        for v in ["3.11.7", "3.12.1"] {
            let sp = root.join(format!("versions/{v}/lib/python3.x/site-packages"));
            std::fs::create_dir_all(&sp).unwrap();
            std::fs::write(sp.join(format!("v{v}.pth")), "import os\n").unwrap();
        }
        std::fs::create_dir_all(root.join("shims")).unwrap();
        std::fs::write(root.join("shims/python3"), "#!/bin/sh\n").unwrap();
        let app = d.path().join("app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join(".python-version"), "3.12.1\n").unwrap();
        let argv = sv(&["python3", "x.py"]);
        let exe = root.join("shims/python3");
        let pins = inputs("python", "python3", &ctx(&argv, &app, &exe, d.path()));
        let names: Vec<&str> = pins
            .iter()
            .map(|p| p.path.rsplit('/').next().unwrap())
            .collect();
        assert!(names.contains(&"v3.12.1.pth"), "{names:?}");
        assert!(!names.contains(&"v3.11.7.pth"), "{names:?}");
        assert!(names.contains(&".python-version"), "{names:?}");
    }

    #[test]
    fn version_managers_are_found_from_path_and_their_files_pinned() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().join("home");
        let app = home.join("proj/app");
        std::fs::create_dir_all(&app).unwrap();
        let mk = |rel: &str, body: &str| {
            let p = home.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, body).unwrap();
        };
        // One fake install per manager.
        for (root, marker) in [
            (".pyenv", "libexec/pyenv"),
            (".rbenv", "libexec/rbenv"),
            (".nodenv", "libexec/nodenv"),
            (".asdf", "installs/python/3.12/bin/python"),
            (".local/share/mise", "installs/node/22/bin/node"),
            (".nvm", "nvm.sh"),
        ] {
            mk(&format!("{root}/{marker}"), "#!/bin/sh\n");
            mk(&format!("{root}/shims/tool"), "#!/bin/sh\n");
        }
        std::fs::create_dir_all(home.join(".asdf/plugins/python/bin")).unwrap();
        mk(".asdf/plugins/python/bin/exec-env", "echo\n");
        mk(".pyenv/pyenv.d/exec/hook.bash", "echo\n");
        mk(
            ".pyenv/plugins/pyenv-virtualenv/etc/pyenv.d/which/v.bash",
            "echo\n",
        );
        mk(".pyenv/version", "3.12.1\n");
        mk(".nvm/versions/node/v22.0.0/bin/node", "x");
        mk(".cargo/bin/rustup", "x");
        mk(".rustup/settings.toml", "default_toolchain = \"stable\"\n");
        mk(".rustup/toolchains/stable/bin/cargo", "x");
        for f in [
            "proj/.python-version",
            "proj/app/.ruby-version",
            "proj/.node-version",
            "proj/.tool-versions",
            "proj/app/mise.toml",
            "proj/.mise/config.toml",
            "proj/app/.nvmrc",
            "proj/rust-toolchain.toml",
            ".config/mise/config.toml",
            ".asdfrc",
        ] {
            mk(f, "x\n");
        }
        let path: Vec<String> = [
            ".pyenv/shims",
            ".pyenv/plugins/pyenv-virtualenv/shims",
            ".rbenv/shims",
            ".nodenv/shims",
            ".asdf/shims",
            ".local/share/mise/shims",
            ".nvm/versions/node/v22.0.0/bin",
            ".cargo/bin",
        ]
        .iter()
        .map(|r| home.join(r).display().to_string())
        .chain(["/usr/bin".to_owned()])
        .collect();
        let argv = sv(&["make", "test"]);
        let cx = ctx(&argv, &app, Path::new("/usr/bin/make"), &home);
        let pins = manager_inputs(&path.join(":"), &cx);
        let has = |rel: &str, role: &str| {
            let want = std::fs::canonicalize(home.join(rel))
                .unwrap_or_else(|_| home.join(rel))
                .display()
                .to_string();
            pins.iter().any(|p| {
                (p.path == want || p.path == home.join(rel).display().to_string()) && p.role == role
            })
        };
        for (rel, role) in [
            ("proj/.python-version", "version-selector"),
            (".pyenv/version", "version-selector"),
            (".pyenv/pyenv.d", "version-manager-hooks"),
            (
                ".pyenv/plugins/pyenv-virtualenv/etc/pyenv.d",
                "version-manager-hooks",
            ),
            (".pyenv/libexec", "toolchain-dir"),
            ("proj/app/.ruby-version", "version-selector"),
            (".rbenv/rbenv.d", "version-manager-hooks"),
            ("proj/.node-version", "version-selector"),
            ("proj/.tool-versions", "version-selector"),
            (".asdfrc", "version-selector"),
            (".asdf/plugins", "version-manager-hooks"),
            (".asdf/installs", "toolchain-dir"),
            ("proj/app/mise.toml", "version-selector"),
            ("proj/.mise/config.toml", "version-selector"),
            (".config/mise/config.toml", "version-selector"),
            (".local/share/mise/installs", "toolchain-dir"),
            ("proj/app/.nvmrc", "version-selector"),
            ("proj/rust-toolchain.toml", "version-selector"),
            (".rustup/settings.toml", "version-selector"),
            (".rustup/toolchains", "toolchain-dir"),
        ] {
            assert!(has(rel, role), "{rel} ({role}) not pinned: {pins:#?}");
        }
        // A hook planted later changes the hooks' fingerprint; so does a selector.
        let hooks = pins
            .iter()
            .find(|p| p.role == "version-manager-hooks" && p.path.ends_with("/.pyenv/pyenv.d"))
            .unwrap();
        assert!(crate::path_dirs::still_holds(hooks));
        mk(".pyenv/pyenv.d/exec/evil.bash", "curl x\n");
        assert!(!crate::path_dirs::still_holds(hooks));
        // An asdf layout is not taken for mise's, nor the other way round.
        let m = manager_of(&home.join(".local/share/mise/shims"), Some(&home)).unwrap();
        assert_eq!(m.0.name, "mise");
        let a = manager_of(&home.join(".asdf/shims"), Some(&home)).unwrap();
        assert_eq!(a.0.name, "asdf");
        assert!(manager_of(Path::new("/usr/bin"), Some(&home)).is_none());
    }

    #[test]
    fn loader_vars_and_neutralisers() {
        for v in [
            "MAKEFILES",
            "YARN_YARN_PATH",
            "PIP_CONFIG_FILE",
            "RUSTUP_TOOLCHAIN",
            "PYENV_VERSION",
            "RBENV_VERSION",
            "NODENV_HOOK_PATH",
            "ASDF_PYTHON_VERSION",
            "MISE_NODE_VERSION",
            "MISE_CONFIG_FILE",
        ] {
            assert!(is_loader_var(v), "{v}");
        }
        assert!(!is_loader_var("MISE_GITHUB_TOKEN"));
        assert!(is_loader_var("PYTHONNOUSERSITE"));
        assert!(!is_loader_var("NODE_ENV"));
        assert!(NEUTRALISE.contains(&("PYTHONNOUSERSITE", "1")));
    }
}
