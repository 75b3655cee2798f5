//! `#!` chains (issue 15): an executable script's `#!` line names the program the kernel runs
//! (`binfmt_script`), and that program may be a script itself, whose own `#!` line the kernel
//! follows in turn (at most [`MAX_LEVELS`] deep, then `execve` fails with `ELOOP`). Each
//! interpreter of the chain is pinned as an input of role [`ROLE`] (its SHA-256; one over
//! 16 MiB by identity) and shown on the card; one that is a script is sealed for the run like
//! the script itself (`reap/seal.rs`). A script a shell runs also has its directory pinned
//! ([`super::sealdirs::script_dir`]: the files it may source).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use super::InputPin;
use super::files::{open_regular, pin_input, readable_for_requester, unpinnable};

/// Role of an interpreter a `#!` line names.
pub(crate) const ROLE: &str = "interpreter";

/// Most `#!` levels the kernel follows (`BINPRM_MAX_RECURSION`).
const MAX_LEVELS: usize = 4;

/// The interpreter a file's `#!` line names, as written (`/usr/bin/env`, `tools/runner`); `None`
/// for a file that does not start with `#!` or cannot be read. Reads the first 256 bytes, as
/// the kernel does (`BINPRM_BUF_SIZE`).
pub(crate) fn interpreter_of(path: &Path) -> Option<String> {
    let (f, _) = open_regular(path).ok()?;
    let mut b = Vec::with_capacity(256);
    f.take(256).read_to_end(&mut b).ok()?;
    let line = b.strip_prefix(b"#!")?;
    let line = line.split(|&c| c == b'\n').next().unwrap_or_default();
    let name = line
        .split(|&c| c == b' ' || c == b'\t')
        .find(|t| !t.is_empty())?;
    Some(String::from_utf8_lossy(name).into_owned())
}

/// The first word after the interpreter on a file's `#!` line, skipping `env`'s options
/// (`#!/usr/bin/env -S bash -e` gives `bash`).
fn shebang_arg(path: &Path) -> Option<String> {
    let (f, _) = open_regular(path).ok()?;
    let mut b = Vec::with_capacity(256);
    f.take(256).read_to_end(&mut b).ok()?;
    let line = b.strip_prefix(b"#!")?;
    let line = line.split(|&c| c == b'\n').next().unwrap_or_default();
    let text = String::from_utf8_lossy(line).into_owned();
    text.split([' ', '\t'])
        .filter(|t| !t.is_empty())
        .skip(1)
        .find(|t| !t.starts_with('-'))
        .map(str::to_owned)
}

/// Shells, by family name.
const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh", "ksh", "ash", "mksh", "yash"];

/// Python, by family name.
const PYTHON: &[&str] = &["python", "pypy"];

/// Whether one of `names` (a `#!` interpreter as written, or its canonical path) is of a
/// family in `family` (its base name without a version suffix: `python3.12` is `python`).
fn is_family(names: &[&Path], family: &[&str]) -> bool {
    names.iter().any(|p| {
        let base = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let fam = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        family.contains(&fam)
    })
}

/// Whether one of `names` is a shell.
fn is_shell(names: &[&Path]) -> bool {
    is_family(names, SHELLS)
}

/// The inputs of `exe`'s `#!` chain: each interpreter pinned, and the directory of each script
/// a shell runs. `cwd` resolves a relative `#!` path as the kernel does (against the working
/// directory of the `execve`).
pub(crate) fn chain(exe: &Path, cwd: &Path) -> Vec<InputPin> {
    let mut out = Vec::new();
    let mut script: PathBuf = exe.to_path_buf();
    for level in 0..=MAX_LEVELS {
        let Some(name) = interpreter_of(&script) else {
            break;
        };
        if level == MAX_LEVELS {
            // The kernel refuses to run it (ELOOP): nothing to pin, nothing runs.
            break;
        }
        let given = cwd.join(&name);
        let Ok(canon) = std::fs::canonicalize(&given) else {
            // Missing: nothing runs now; one created later is a new input at the run's check.
            break;
        };
        if !readable_for_requester(&canon) {
            out.push(unpinnable(
                &given,
                "a #! interpreter in /dev, /proc, /sys or keyveil's own home",
            ));
            break;
        }
        let nested = interpreter_of(&canon).is_some();
        let what = format!(
            "named by the #! line of {}{}",
            script.display(),
            if nested {
                "; itself a script, sealed for the run"
            } else {
                ""
            }
        );
        out.extend(pin_input(ROLE, &canon, Some(what)));
        // `#!/usr/bin/env bash`: env runs the program its argument names.
        let via_env = Path::new(&name).file_name().is_some_and(|n| n == "env");
        let env_arg = via_env.then(|| shebang_arg(&script)).flatten();
        let env_shell = env_arg
            .as_deref()
            .is_some_and(|a| is_shell(&[Path::new(a)]));
        if env_shell || is_shell(&[Path::new(&name), &canon]) {
            out.extend(super::sealdirs::script_dir(&script));
        }
        // `./check.py`: Python imports from the script's directory first (`sys.path[0]`).
        let env_py = env_arg
            .as_deref()
            .is_some_and(|a| is_family(&[Path::new(a)], PYTHON));
        if (env_py || is_family(&[Path::new(&name), &canon], PYTHON))
            && let Some(dir) = script.parent()
        {
            out.extend(super::sealdirs::pin(
                super::sealdirs::PYTHON_DIR,
                dir,
                "Python imports from here first (sys.path[0])",
            ));
        }
        if !nested {
            break;
        }
        script = canon;
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_chain_of_scripts_is_pinned_to_the_binary() {
        let d = tempfile::tempdir().unwrap();
        let tools = d.path().join("tools");
        std::fs::create_dir(&tools).unwrap();
        std::fs::write(tools.join("runner"), "#!/bin/sh\nexec /bin/sh \"$@\"\n").unwrap();
        std::fs::write(d.path().join("ci.sh"), "#!tools/runner -x\necho ok\n").unwrap();
        std::fs::write(d.path().join("lib.sh"), "true\n").unwrap();
        assert_eq!(
            interpreter_of(&d.path().join("ci.sh")).as_deref(),
            Some("tools/runner")
        );
        let pins = chain(&d.path().join("ci.sh"), d.path());
        let roles: Vec<&str> = pins.iter().map(|p| p.role.as_str()).collect();
        // runner (a script), the shell binary, and runner's own directory (a shell runs it).
        assert_eq!(roles, vec![ROLE, ROLE, "script-dir"], "{pins:?}");
        assert!(pins[0].path.ends_with("tools/runner"));
        assert!(
            pins[0]
                .detail
                .as_deref()
                .unwrap()
                .contains("itself a script")
        );
        // `#!/usr/bin/env bash`: a shell all the same, so the script's directory is pinned.
        std::fs::write(
            d.path().join("env.sh"),
            "#!/usr/bin/env -S bash -e\n. ./lib.sh\n",
        )
        .unwrap();
        let pins = chain(&d.path().join("env.sh"), d.path());
        assert!(pins.iter().any(|p| p.role == "script-dir"), "{pins:?}");
        // `./check.py` (`#!/usr/bin/env python3`): its directory is sys.path[0].
        std::fs::write(
            d.path().join("check.py"),
            "#!/usr/bin/env python3\nimport lib\n",
        )
        .unwrap();
        let pins = chain(&d.path().join("check.py"), d.path());
        assert!(
            pins.iter().any(|p| p.role == "python-import-dir"),
            "{pins:?}"
        );
        // A binary ends the chain; a file without `#!` has none.
        assert!(chain(Path::new("/bin/sh"), d.path()).is_empty());
        assert!(chain(&d.path().join("lib.sh"), d.path()).is_empty());
    }
}
