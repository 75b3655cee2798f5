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

/// Whether `name` (a `#!` interpreter as written, or its canonical path) is a shell.
fn is_shell(names: &[&Path]) -> bool {
    names.iter().any(|p| {
        let base = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let fam = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        ["sh", "bash", "dash", "zsh", "ksh", "ash", "mksh", "yash"].contains(&fam)
    })
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
        if is_shell(&[Path::new(&name), &canon]) {
            out.extend(super::sealdirs::script_dir(&script));
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
        // A binary ends the chain; a file without `#!` has none.
        assert!(chain(Path::new("/bin/sh"), d.path()).is_empty());
        assert!(chain(&d.path().join("lib.sh"), d.path()).is_empty());
    }
}
