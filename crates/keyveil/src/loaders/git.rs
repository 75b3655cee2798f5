//! git: the repository and global configuration, its includes, hooks and the settings that
//! run code (the `git` row of [`super::TABLE`]).

use super::*;

/// Settings that make git run a program (or send credentials elsewhere): `section.key`, with `*`
/// for any subsection. git-config(1).
pub(super) const GIT_CODE_KEYS: &[&str] = &[
    "core.fsmonitor",
    "core.hookspath",
    "core.sshcommand",
    "core.pager",
    "core.editor",
    "core.askpass",
    "core.gitproxy",
    "core.alternaterefscommand",
    "diff.external",
    "sequence.editor",
    "gpg.program",
    "gpg.*.program",
    "credential.helper",
    "credential.*.helper",
    "diff.*.textconv",
    "diff.*.command",
    "difftool.*.cmd",
    "mergetool.*.cmd",
    "filter.*.clean",
    "filter.*.smudge",
    "filter.*.process",
    "merge.*.driver",
    "remote.*.uploadpack",
    "remote.*.receivepack",
    "remote.*.proxy",
    "http.proxy",
    "url.*.insteadof",
    "url.*.pushinsteadof",
    "protocol.allow",
    "protocol.*.allow",
    "uploadpack.packobjectshook",
    "include.path",
    "includeif.*.path",
    "pager.*",
    "web.browser",
    "browser.*.cmd",
    "browser.*.path",
    "man.*.cmd",
    "man.*.path",
    "submodule.*.update",
    "ssh.variant",
];

pub(super) fn git_key_runs_code(section: &str, sub: &str, key: &str, value: &str) -> bool {
    if section == "alias" {
        // `!cmd` runs a shell command; any option (`-c filter.x.clean=...`, `--exec-path`,
        // `--upload-pack=...`, `-C dir`) can make the aliased git command run one.
        return value.starts_with('!') || value.split_whitespace().any(|w| w.starts_with('-'));
    }
    GIT_CODE_KEYS.iter().any(|pat| {
        let parts: Vec<&str> = pat.split('.').collect();
        match parts.as_slice() {
            [s, k] if *k == "*" => *s == section && !key.is_empty(),
            [s, k] => *s == section && sub.is_empty() && *k == key,
            [s, "*", k] => *s == section && !sub.is_empty() && *k == key,
            _ => false,
        }
    })
}

/// What one git config file says that matters here: the code-running settings (for the card),
/// and, in file order, the files it includes and the hooks paths it sets.
pub(super) struct GitConfig {
    pub(super) detail: Option<String>,
    /// `(include path, None)` or `(None, hooks path)` items, in file order.
    pub(super) items: Vec<GitItem>,
}

pub(super) enum GitItem {
    /// An include path as written (expanded by [`git_path`]).
    Include(String),
    HooksPath(String),
}

/// Parses a config file with git's own syntax ([`crate::gitconfig`]: continuations, quotes,
/// escapes, comments, both header forms) and keeps what the card shows and what is followed.
pub(super) fn parse_git_config(text: &str) -> GitConfig {
    let mut shown = Vec::new();
    let mut items = Vec::new();
    let parsed = crate::gitconfig::parse(text.as_bytes());
    for e in &parsed.entries {
        let sub = e.sub.as_deref().unwrap_or("");
        let value = e.value.as_deref().unwrap_or("");
        if !git_key_runs_code(&e.section, sub, &e.key, value) {
            continue;
        }
        // Quoted when it holds what would blur the list (`;`, a newline, spaces at an end).
        let v = if value.contains([';', '\n', '\r', '\t']) || value.trim() != value {
            format!("{value:?}")
        } else {
            value.to_owned()
        };
        shown.push(format!("{}={v}", e.name()));
        if let Some(v) = &e.value {
            if e.key == "path" && (e.section == "include" || e.section == "includeif") {
                items.push(GitItem::Include(v.clone()));
            }
            if e.section == "core" && e.sub.is_none() && e.key == "hookspath" {
                items.push(GitItem::HooksPath(v.clone()));
            }
        }
    }
    if let Some(n) = parsed.bad_line {
        shown.push(format!("bad config line {n} (git refuses this file)"));
    }
    GitConfig {
        detail: (!shown.is_empty()).then(|| format!("runs or redirects: {}", shown.join("; "))),
        items,
    }
}

/// git's include depth limit (`MAX_INCLUDE_DEPTH` in config.c).
pub(super) const GIT_MAX_INCLUDE_DEPTH: usize = 10;

/// Pins a git config file and, depth first in git's order, every file it includes (`include.path`
/// and `includeIf.*.path`, whatever the condition); returns the last `core.hooksPath` set, as git
/// would see it after this file (`hooks` is the value before it).
pub(super) fn git_config_file(
    cx: &Ctx<'_>,
    out: &mut Pins,
    path: &Path,
    depth: usize,
    budget: &mut usize,
    hooks: Option<String>,
) -> Option<String> {
    if depth > GIT_MAX_INCLUDE_DEPTH || *budget == 0 {
        return hooks;
    }
    *budget -= 1;
    let text = match out.add_text("git-config", path, |t| parse_git_config(t).detail) {
        Some(t) => t,
        // Already pinned (included twice): read again for its order-dependent settings.
        None if out.has(path) => match read_for_requester(path) {
            Some(t) => t,
            None => return hooks,
        },
        None => return hooks,
    };
    let mut hooks = hooks;
    let base = path.parent().unwrap_or(Path::new("/"));
    for item in parse_git_config(&text).items {
        match item {
            GitItem::Include(raw) => match git_path(&raw, base, cx) {
                Ok(p) => hooks = git_config_file(cx, out, &p, depth + 1, budget, hooks),
                Err(why) => out.unpinnable(path, &why),
            },
            GitItem::HooksPath(h) => hooks = Some(h),
        }
    }
    hooks
}

/// A path from a git config file as git expands it (`interpolate_path` in path.c): `~` and
/// `~/` are the child's HOME, `~user/` that user's home directory (from `/etc/passwd`),
/// `%(prefix)/` git's installation prefix (the directory above the executable's `bin`);
/// relative paths are relative to `base`. `Err` when git would expand it to something keyveil
/// cannot tell (an unknown user, no HOME): the input is then not pinnable.
pub(super) fn git_path(value: &str, base: &Path, cx: &Ctx<'_>) -> Result<PathBuf, String> {
    if let Some(rest) = value.strip_prefix("%(prefix)/") {
        let prefix = cx
            .exe
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("/"));
        return Ok(prefix.join(rest));
    }
    let Some(tail) = value.strip_prefix('~') else {
        return Ok(base.join(value));
    };
    let (user, rest) = tail.split_once('/').unwrap_or((tail, ""));
    let home = if user.is_empty() {
        cx.home.map(Path::to_path_buf)
    } else {
        user_home(user)
    };
    home.map(|h| h.join(rest))
        .ok_or_else(|| format!("git expands {value:?} to a home keyveil cannot find"))
}

/// The home directory of `user` from `/etc/passwd`.
pub(super) fn user_home(user: &str) -> Option<PathBuf> {
    let pw = std::fs::read_to_string("/etc/passwd").ok()?;
    pw.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&user))
            .then(|| f.get(5).map(PathBuf::from))
            .flatten()
    })
}

/// The directory git would treat as the start (`-C DIR` options applied in order) and the git
/// directory named by `--git-dir`, if any.
pub(super) fn git_start(cx: &Ctx<'_>) -> (PathBuf, Option<PathBuf>) {
    let mut d = cx.cwd.to_path_buf();
    let mut git_dir = None;
    let mut it = cx.argv.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "-C" {
            if let Some(x) = it.next() {
                d = d.join(x);
            }
        } else if a == "--git-dir" {
            git_dir = it.next().map(|x| d.join(x));
        } else if let Some(x) = a.strip_prefix("--git-dir=") {
            git_dir = Some(d.join(x));
        } else if !a.starts_with('-') {
            break; // the subcommand
        } else if a == "-c" {
            it.next();
        }
    }
    (d, git_dir)
}

/// Whether `d` is a git directory by git's own test (`is_git_directory` in setup.c): a `HEAD`,
/// and `objects/` and `refs/` directories (in the common directory named by `commondir`, for a
/// worktree's). An empty `.git` directory is not one: git walks on past it.
pub(super) fn is_git_dir(d: &Path) -> bool {
    if std::fs::symlink_metadata(d.join("HEAD")).is_err() {
        return false;
    }
    let common = read_for_requester(&d.join("commondir"))
        .map(|c| d.join(c.trim()))
        .unwrap_or_else(|| d.to_path_buf());
    common.join("objects").is_dir() && common.join("refs").is_dir()
}

/// `(git dir, common dir, work tree)` as git discovers them from `start` (setup.c
/// `setup_git_directory_gently_1`): in each directory up the tree, a `.git` file
/// (`gitdir: ...`, worktrees and submodules) or a `.git` directory that is a repository, else
/// the directory itself when it is a (bare) repository. A `.git` that is neither is skipped.
pub(super) fn existing_git_dirs(start: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let canon = std::fs::canonicalize(start).ok()?;
    for d in up(&canon) {
        let dotgit = d.join(".git");
        let gitdir = match std::fs::metadata(&dotgit) {
            Ok(m) if m.is_file() => read_for_requester(&dotgit)
                .and_then(|t| t.trim().strip_prefix("gitdir:").map(|p| d.join(p.trim()))),
            Ok(m) if m.is_dir() && is_git_dir(&dotgit) => Some(dotgit),
            _ => None,
        };
        let (gitdir, work) = match gitdir {
            Some(g) => (g, d.to_path_buf()),
            None if is_git_dir(d) => (d.to_path_buf(), d.to_path_buf()),
            None => continue,
        };
        let common = read_for_requester(&gitdir.join("commondir"))
            .map(|c| gitdir.join(c.trim()))
            .unwrap_or_else(|| gitdir.clone());
        return Some((gitdir, common, work));
    }
    None
}

pub(super) fn git(cx: &Ctx<'_>, _: &str, out: &mut Pins) {
    let (start, git_dir) = git_start(cx);
    // Global config: ~/.gitconfig and ~/.config/git/config (XDG_CONFIG_HOME never passes).
    // Global config in git's order: $XDG_CONFIG_HOME/git/config (XDG_CONFIG_HOME never passes),
    // then ~/.gitconfig; then the repository's config and config.worktree.
    let mut configs: Vec<PathBuf> = [".config/git/config", ".gitconfig"]
        .iter()
        .filter_map(|r| home_file(cx, r))
        .collect();
    let dirs = match git_dir {
        Some(g) => {
            let common = read_for_requester(&g.join("commondir"))
                .map(|c| g.join(c.trim()))
                .unwrap_or_else(|| g.clone());
            Some((g, common, start.clone()))
        }
        None => existing_git_dirs(&start),
    };
    if let Some((gitdir, common, _)) = &dirs {
        configs.push(common.join("config"));
        configs.push(gitdir.join("config.worktree"));
    }
    let mut budget = MAX_FILES;
    let mut hooks_path = None;
    for c in configs {
        hooks_path = git_config_file(cx, out, &c, 0, &mut budget, hooks_path);
    }
    let hooks_dir = match (&hooks_path, &dirs) {
        (Some(h), Some((_, _, work))) => Some(git_path(h, work, cx)),
        (Some(h), None) => Some(git_path(h, &start, cx)),
        (None, Some((_, common, _))) => Some(Ok(common.join("hooks"))),
        (None, None) => None,
    };
    match hooks_dir {
        Some(Ok(dir)) => git_hooks(out, &dir),
        Some(Err(why)) => out.unpinnable(&start, &why),
        None => {}
    }
    if let Some((_, common, work)) = &dirs {
        git_submodules(cx, &common.join("modules"), out);
        git_worktree_submodules(cx, work, out, 0);
    }
}

/// Pins each hook in a hooks directory (the card lists them; one added later is a new input
/// when the run re-derives its inputs), and beyond [`MAX_FILES`] hooks the directory whole (a
/// fingerprint: a hook added, replaced or rewritten changes it, however many files it holds).
pub(super) fn git_hooks(out: &mut Pins, dir: &Path) {
    pin_dir(out, "git-hook", dir, |n| !n.ends_with(".sample"));
    let many = std::fs::read_dir(dir).is_ok_and(|rd| rd.count() > MAX_FILES);
    if many {
        out.add_dir("git-hooks-dir", dir, "git hooks directory");
    }
}

/// Submodules that keep their own `.git` directory in the work tree (cloned before `git
/// submodule absorbgitdirs`, or added by hand): `.gitmodules` names their paths; each one's
/// config and hooks are pinned like the superproject's, nested ones too, and `.gitmodules`
/// itself (a path added later is a change).
pub(super) fn git_worktree_submodules(cx: &Ctx<'_>, work: &Path, out: &mut Pins, depth: usize) {
    let gm = work.join(".gitmodules");
    let Some(text) = out
        .add_text("gitmodules", &gm, |_| None)
        .or_else(|| out.has(&gm).then(|| read_for_requester(&gm)).flatten())
    else {
        return;
    };
    if depth > GIT_MAX_INCLUDE_DEPTH {
        out.unpinnable(&gm, "submodules nested deeper than keyveil follows");
        return;
    }
    let parsed = crate::gitconfig::parse(text.as_bytes());
    for e in &parsed.entries {
        if e.section != "submodule" || e.key != "path" {
            continue;
        }
        let Some(rel) = &e.value else { continue };
        let sub = work.join(rel);
        let Some((gitdir, common, subwork)) = existing_git_dirs(&sub) else {
            continue;
        };
        if subwork != std::fs::canonicalize(&sub).unwrap_or(sub.clone()) {
            continue; // not checked out: git finds the superproject
        }
        let mut budget = MAX_FILES;
        let mut hooks = None;
        for c in [common.join("config"), gitdir.join("config.worktree")] {
            hooks = git_config_file(cx, out, &c, 0, &mut budget, hooks);
        }
        match hooks.map(|h| git_path(&h, &subwork, cx)) {
            Some(Ok(d)) => git_hooks(out, &d),
            Some(Err(why)) => out.unpinnable(&sub, &why),
            None => git_hooks(out, &common.join("hooks")),
        }
        git_submodules(cx, &common.join("modules"), out);
        git_worktree_submodules(cx, &subwork, out, depth + 1);
    }
}

/// Submodules' gitdirs under `$GIT_COMMON_DIR/modules` (nested ones too): `git status` and
/// other commands recurse into them, reading each one's `config` (filters, fsmonitor, hooks
/// path) and running its hooks. Each config and hooks directory is pinned like the
/// superproject's.
pub(super) fn git_submodules(cx: &Ctx<'_>, modules: &Path, out: &mut Pins) {
    let mut stack = vec![modules.to_path_buf()];
    let mut visited = 0;
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            visited += 1;
            if visited > MAX_FILES {
                out.unpinnable(modules, "more submodules than keyveil pins");
                return;
            }
            let d = e.path();
            let config = d.join("config");
            if config.is_file() {
                let mut budget = MAX_FILES;
                match git_config_file(cx, out, &config, 0, &mut budget, None)
                    .map(|h| git_path(&h, &d, cx))
                {
                    Some(Ok(h)) => git_hooks(out, &h),
                    Some(Err(why)) => out.unpinnable(&config, &why),
                    None => git_hooks(out, &d.join("hooks")),
                }
                stack.push(d.join("modules"));
            } else if d.is_dir() {
                // A submodule named `a/b` lives in `modules/a/b`.
                stack.push(d);
            }
        }
    }
}

/// Pins the regular files of `dir` whose names pass `keep` (sorted, at most [`MAX_FILES`]).
pub(super) fn pin_dir(out: &mut Pins, role: &str, dir: &Path, keep: impl Fn(&str) -> bool) {
    // Never list a directory the broker does not read for requesters (`/proc/PID`, ...).
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return;
    };
    if !crate::pin::readable_for_requester(&dir) {
        return;
    }
    let Ok(rd) = std::fs::read_dir(&dir) else {
        out.unpinnable(&dir, &format!("cannot list this {role} directory"));
        return;
    };
    let mut names: Vec<String> = rd
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| keep(n))
        .collect();
    names.sort();
    if names.len() > MAX_FILES && role != "git-hook" {
        // Hooks are covered whole by the directory's fingerprint; other files are not.
        out.unpinnable(&dir, &format!("more than {MAX_FILES} {role} files"));
        return;
    }
    for n in names.iter().take(MAX_FILES) {
        out.add(role, &dir.join(n), None);
    }
}
