//! Reading make's argv as GNU make does (its `getopt_long`): which makefiles, directories and
//! include directories a `make` command reads, and the options and variable assignments keyveil
//! refuses there (`--eval`, control variables set to anything but a system shell).

use super::makefile::{CONTROL_VARS, control_value_ok};

/// What make's argv says about the makefiles it reads (GNU make's options, parsed as its
/// `getopt_long` does: short clusters, attached or separate arguments, unambiguous prefixes of
/// long options).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct MakeArgv {
    /// `-C`/`--directory` applied in order (relative to the working directory).
    pub(super) dir: Vec<String>,
    /// `-f`/`--file`/`--makefile` names.
    pub(super) files: Vec<String>,
    /// `-I`/`--include-dir` directories.
    pub(super) incdirs: Vec<String>,
    /// Why keyveil refuses this argv (`--eval`, a control variable set to an unaccepted
    /// value), if it does.
    pub(super) refused: Option<String>,
}

/// GNU make 4.4's long options: `(name, takes an argument: 0 no, 1 required, 2 optional)`.
const LONG_OPTIONS: &[(&str, u8)] = &[
    ("always-make", 0),
    ("assume-new", 1),
    ("assume-old", 1),
    ("check-symlink-times", 0),
    ("debug", 2),
    ("directory", 1),
    ("dry-run", 0),
    ("environment-overrides", 0),
    ("eval", 1),
    ("file", 1),
    ("help", 0),
    ("ignore-errors", 0),
    ("include-dir", 1),
    ("jobs", 2),
    ("jobserver-auth", 1),
    ("jobserver-fds", 1),
    ("jobserver-style", 1),
    ("just-print", 0),
    ("keep-going", 0),
    ("load-average", 2),
    ("makefile", 1),
    ("max-load", 2),
    ("new-file", 1),
    ("no-builtin-rules", 0),
    ("no-builtin-variables", 0),
    ("no-keep-going", 0),
    ("no-print-directory", 0),
    ("no-silent", 0),
    ("old-file", 1),
    ("output-sync", 2),
    ("print-data-base", 0),
    ("print-directory", 0),
    ("question", 0),
    ("quiet", 0),
    ("recon", 0),
    ("shuffle", 2),
    ("silent", 0),
    ("stop", 0),
    ("touch", 0),
    ("trace", 0),
    ("version", 0),
    ("warn-undefined-variables", 0),
    ("what-if", 1),
];

/// Reads make's `argv` (see [`MakeArgv`]).
pub(super) fn argv(argv: &[String]) -> MakeArgv {
    let mut m = MakeArgv::default();
    let mut i = 1;
    let mut options = true;
    let take = |m: &mut MakeArgv, opt: &str, v: Option<&String>| {
        let Some(v) = v else { return };
        match opt {
            "C" | "directory" => m.dir.push(v.clone()),
            "f" | "file" | "makefile" => m.files.push(v.clone()),
            "I" | "include-dir" => m.incdirs.push(v.clone()),
            "E" | "eval" => {
                m.refused.get_or_insert_with(|| {
                    "make's --eval/-E evaluates makefile text keyveil does not parse; put it in \
                     the makefile"
                        .to_owned()
                });
            }
            _ => {}
        }
    };
    while let Some(a) = argv.get(i) {
        i += 1;
        if options && a == "--" {
            options = false;
            continue;
        }
        if options && let Some(long) = a.strip_prefix("--") {
            let (name, value) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (long, None),
            };
            let hits: Vec<&(&str, u8)> = LONG_OPTIONS
                .iter()
                .filter(|(n, _)| n.starts_with(name))
                .collect();
            let opt = LONG_OPTIONS
                .iter()
                .find(|(n, _)| *n == name)
                .or(match hits.as_slice() {
                    [one] => Some(*one),
                    _ => None,
                });
            let Some((full, arg)) = opt else {
                // Unknown or ambiguous: make stops with a usage error.
                continue;
            };
            let v = match (value, arg) {
                (Some(v), _) => Some(v),
                (None, 1) => {
                    i += 1;
                    argv.get(i - 1).cloned()
                }
                _ => None,
            };
            take(&mut m, full, v.as_ref());
            continue;
        }
        if options && a.len() > 1 && a.starts_with('-') {
            let c = a.get(1..).unwrap_or("");
            for (j, ch) in c.char_indices() {
                let rest = c.get(j + ch.len_utf8()..).unwrap_or("");
                if "CEfIoW".contains(ch) {
                    let v = if rest.is_empty() {
                        i += 1;
                        argv.get(i - 1).cloned()
                    } else {
                        Some(rest.to_owned())
                    };
                    take(&mut m, &ch.to_string(), v.as_ref());
                    break;
                }
                if "jlO".contains(ch) {
                    // Optional argument: only the rest of this token.
                    break;
                }
            }
            continue;
        }
        // `NAME=value` (any assignment operator) sets a variable for every makefile.
        if let Some(eq) = a.find('=') {
            let name = a
                .get(..eq)
                .unwrap_or("")
                .trim_end_matches([':', '?', '+', '!'])
                .trim();
            if CONTROL_VARS.contains(&name)
                && let Err(why) = control_value_ok(name, a.get(eq + 1..).unwrap_or(""))
            {
                m.refused.get_or_insert(why);
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_argv_is_read_as_getopt_does() {
        let v = |a: &[&str]| argv(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(v(&["make", "-sf", "x.mk"]).files, ["x.mk"]);
        assert_eq!(v(&["make", "-f-"]).files, ["-"]);
        assert_eq!(
            v(&["make", "--fil=a.mk", "--makef", "b.mk"]).files,
            ["a.mk", "b.mk"]
        );
        assert_eq!(v(&["make", "-kC", "sub", "--dir=x"]).dir, ["sub", "x"]);
        assert_eq!(v(&["make", "-Iinc", "--include=i2"]).incdirs, ["inc", "i2"]);
        assert_eq!(
            v(&["make", "-j4", "test", "--", "-f"]).files,
            Vec::<String>::new()
        );
        for bad in [
            &["make", "--eval=include x"][..],
            &["make", "-E", "include x"],
            &["make", "--ev", "include x"],
            &["make", "-sE", "include x"],
            &["make", "SHELL=./kvsh"],
            &["make", "test", "SHELL:=/tmp/sh"],
            &["make", ".SHELLFLAGS=-c . ./x;"],
            &["make", "MAKEFLAGS=-f x.mk"],
            &["make", "MAKEFILES=x.mk"],
        ] {
            assert!(v(bad).refused.is_some(), "{bad:?}");
        }
        assert_eq!(v(&["make", "SHELL=/bin/bash", "test", "V=1"]).refused, None);
    }
}
