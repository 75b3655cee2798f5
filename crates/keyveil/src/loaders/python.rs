//! Python: the prefixes of the interpreter, site directories and their `.pth` files, the
//! directory put first on `sys.path`.

use super::*;

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

pub(super) fn python(cx: &Ctx<'_>, family: &str, out: &mut Pins) {
    let pip = family == "pip" || argv_has_pair(cx.argv, "-m", "pip");
    if family == "python"
        && let Some(dir) = python_path0(cx)
        && !out.0.iter().any(|q| Path::new(&q.path) == dir)
    {
        // A `json.py` or `json/` there shadows the standard library: its importable entries
        // are fingerprinted (modules, packages one level down, `__pycache__`).
        let role = "python-import-dir";
        if let Some(f) = crate::pin::path_dirs::fingerprint_filtered(
            &dir,
            crate::pin::path_dirs::depth_for(role),
            crate::pin::path_dirs::python_importable,
        ) {
            // The card names what can be imported from there (a `json.py` is seen for what
            // it is).
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .map(|e| e.file_name())
                        .filter(|n| crate::pin::path_dirs::python_importable(n))
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
            // Its files are sealed for the run (`pin/sealdirs.rs`): a bounded number.
            match crate::pin::sealdirs::files(role, &dir) {
                Ok(files) => {
                    what.push_str(&format!(
                        "; {} file{} sealed read-only for the run",
                        files.len(),
                        if files.len() == 1 { "" } else { "s" }
                    ));
                    out.0
                        .extend(crate::pin::path_dirs::pin_fingerprint(role, &dir, f, &what));
                }
                Err(why) => out.0.push(crate::pin::unpinnable(
                    &dir,
                    format!("{why}; run the script from a directory of its own"),
                )),
            }
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
