//! Which parts of `$HOME` a scan looks at.
//!
//! Tools keep credentials and typed lines in `$HOME`: shell and REPL histories
//! (`.bash_history`, `.zsh_history`, `.python_history`, `.node_repl_history`, `.psql_history`,
//! `.mysql_history`, `.sqlite_history`, `.rediscli_history`, `.lesshst`, ...), credential files
//! (`.netrc`, `.git-credentials`, `.pgpass`, `.vault-token`), rc files (`.npmrc`, `.yarnrc`,
//! `.pypirc`, `.gitconfig`), and directories of tool state (`.config/gh/hosts.yml`,
//! `.docker/config.json`, `.aws/credentials`, `.kube/config`, `.npm/_logs/*.log`,
//! `.terraform.d/credentials.tfrc.json`, `.local/share/fish/fish_history`, ...). Rather than
//! naming each one (the list is open-ended), a scan takes the whole class: every file directly
//! in `$HOME`, and every dot-directory recursively, except the subtrees below, which hold
//! downloaded packages, toolchains and browser profiles (large, rewritten constantly, and not
//! where a run's values land). Directories of `$HOME` that do not start with a dot (`Documents`,
//! project folders) are outside the scope unless they are under the run's working directory.

/// Subtrees of `$HOME` (relative paths) not walked: package caches, installed toolchains,
/// editor extensions and browser profiles.
pub(crate) const HOME_SKIP: &[&str] = &[
    ".cache",
    ".rustup",
    ".cargo/registry",
    ".cargo/git",
    ".npm/_cacache",
    ".npm/_npx",
    ".m2/repository",
    ".gradle/caches",
    ".gradle/wrapper",
    ".ivy2/cache",
    ".nvm/versions",
    ".pyenv/versions",
    ".rbenv/versions",
    ".sdkman/candidates",
    ".local/share/Trash",
    ".local/share/containers",
    ".local/share/flatpak",
    ".local/share/pnpm",
    ".local/lib",
    ".pnpm-store",
    ".yarn/berry/cache",
    ".yarn/cache",
    ".bun/install/cache",
    ".conda/pkgs",
    ".nuget/packages",
    ".vscode/extensions",
    ".vscode-server",
    ".cursor/extensions",
    ".cursor-server",
    ".terraform.d/plugins",
    ".mozilla",
    ".config/google-chrome",
    ".config/chromium",
    ".config/BraveSoftware",
    ".config/Code/Cache",
    ".config/Code/CachedData",
    ".var",
];

/// Is `name` (a directory directly in `$HOME`) walked?
pub(crate) fn walks_top_dir(name: &[u8]) -> bool {
    name.first() == Some(&b'.') && name != b"." && name != b".."
}
