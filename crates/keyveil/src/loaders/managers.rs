//! Version managers (asdf, mise, nvm, pyenv, ...): their selector files, hooks and installed
//! versions, found from the working directory up.

use super::*;

// ---------------------------------------------------------------------------------------------
// version managers

/// A version manager: how its root is recognised from a PATH directory, and what it reads.
pub(super) struct Manager {
    /// Its name (`asdf`, `mise`, ...).
    pub(super) name: &'static str,
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
pub(super) fn manager_of(dir: &Path, home: Option<&Path>) -> Option<(&'static Manager, PathBuf)> {
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
pub(crate) fn manager_inputs(search_path: &str, cx: &Ctx<'_>) -> Vec<InputPin> {
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
pub(super) fn managers_by_name(cx: &Ctx<'_>, _: &str, out: &mut Pins) {
    if let Some(dir) = cx.exe.parent()
        && let Some((m, root)) = manager_of(dir, cx.home)
    {
        manager_pins(m, &root, cx, out);
    }
}
