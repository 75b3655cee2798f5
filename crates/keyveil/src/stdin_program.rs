//! Whether a command may read program text or commands from its standard input.
//!
//! This decides only what the card says about the standard input a requester supplies: every
//! supplied byte is shown (up to a size), its digest is bound into the grant, and a run with
//! other bytes is another request, whatever this says. It fails closed: the card says "data"
//! only for a program known to read standard input as data ([`DATA_READERS`]: `cat`, `wc`,
//! `sort`, ...) run by its own name, with no operand naming standard input as a file of code
//! (`-f -`, `--file=/dev/stdin`) and no interactive flag; everything else may read code from
//! it. A list of programs that do read code could never be complete: an interpreter under a
//! wrapper (`timeout 9 tclsh`), under another name (`vim.basic -es`, a link `./t` to
//! `tclsh`), a shell a tool starts (`git -c alias.x=!sh x`, `find -exec sh`, `fakeroot`,
//! `script`), or a pinned script that runs `eval "$(cat)"`.

/// Programs that read standard input as data only (filters, counters, digests, compressors),
/// by base name.
const DATA_READERS: &[&str] = &[
    "cat",
    "tac",
    "wc",
    "sort",
    "uniq",
    "head",
    "tail",
    "grep",
    "egrep",
    "fgrep",
    "rg",
    "cut",
    "tr",
    "nl",
    "fold",
    "fmt",
    "rev",
    "paste",
    "expand",
    "unexpand",
    "column",
    "od",
    "xxd",
    "hexdump",
    "base64",
    "base32",
    "basenc",
    "md5sum",
    "sha1sum",
    "sha224sum",
    "sha256sum",
    "sha384sum",
    "sha512sum",
    "b2sum",
    "cksum",
    "sum",
    "gzip",
    "gunzip",
    "zcat",
    "bzip2",
    "bunzip2",
    "xz",
    "unxz",
    "zstd",
    "iconv",
    "true",
    "false",
];

/// Operands that name standard input.
const STDIN_NAMES: &[&str] = &["-", "/dev/stdin", "/dev/fd/0", "/proc/self/fd/0"];

/// Whether `argv` may read program text or commands from standard input (see the module
/// documentation): `false` only for one of [`DATA_READERS`] named by its base name, with no
/// argument naming standard input as a file of code (`-f -`, `-f/dev/stdin`,
/// `--file=/dev/stdin`) and none asking for an interactive mode (`-i`, `--interactive`).
pub(crate) fn reads_program(argv: &[String]) -> bool {
    let Some(arg0) = argv.first() else {
        return false;
    };
    let base = arg0.rsplit('/').next().unwrap_or(arg0);
    if !DATA_READERS.contains(&base) {
        return true;
    }
    let file_of_code = argv.windows(2).skip(1).any(|w| {
        matches!(w, [f, n] if matches!(f.as_str(), "-f" | "--file")
            && STDIN_NAMES.contains(&n.as_str()))
    });
    file_of_code
        || argv.iter().skip(1).any(|a| {
            let value = a.split_once('=').map_or(a.as_str(), |(_, v)| v);
            (a.starts_with("--") && STDIN_NAMES.contains(&value))
                || a.strip_prefix("-f")
                    .is_some_and(|v| STDIN_NAMES.contains(&v))
                || matches!(a.as_str(), "-i" | "--interactive" | "--repl")
        })
}

/// [`reads_program`] for the executable `argv[0]` resolves to (`exe`, canonical, as
/// [`crate::pin::resolve`] gives it): a program is also assumed to read program text when it
/// could not be resolved, when the file it runs is not itself one of [`DATA_READERS`] by its
/// own name (a link `./wc` to `sh`), or when it lies where the requester can write
/// (`writable`: a script the agent wrote and named `./cat`). The base name of `argv[0]` alone
/// is the requester's choice.
pub(crate) fn reads_program_at(
    argv: &[String],
    exe: Option<&std::path::Path>,
    writable: bool,
) -> bool {
    let is_data_reader = |p: &std::path::Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| DATA_READERS.contains(&n))
    };
    reads_program(argv) || writable || !exe.is_some_and(is_data_reader)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn interpreters_repls_and_stdin_operands_read_program_text() {
        for a in [
            &["awk", "-f", "-"][..],
            &["/usr/bin/gawk", "-f", "/dev/stdin"],
            &["tclsh8.6"],
            &["busybox", "sh"],
            &["irb"],
            &["jshell"],
            &["python3", "-m", "code"],
            &["python3.12", "-m", "pdb", "check.py"],
            &["lua5.4", "-i"],
            &["node", "inspect", "x.js"],
            &["make", "-f", "-"],
            &["sqlite3", "db"],
            &["mytool", "--script=/dev/stdin"],
            &["mytool", "-f-"],
            &["mytool", "-i"],
            &["mytool"],
            &["timeout", "9", "tclsh"],
            &["vim.basic", "-es"],
            &["./t"],
            &["git", "-c", "alias.x=!sh", "x"],
            &["find", ".", "-exec", "sh", ";"],
            &["bash", "ci.sh"],
            &["grep", "-f", "-", "x"],
        ] {
            assert!(reads_program(&v(a)), "{a:?}");
        }
    }

    #[test]
    fn other_programs_read_data() {
        for a in [
            &["cat"][..],
            &["/usr/bin/cat", "-"],
            &["grep", "x"],
            &["wc", "-l"],
            &["sort", "-u"],
            &["sha256sum", "-"],
        ] {
            assert!(!reads_program(&v(a)), "{a:?}");
        }
    }

    #[test]
    fn a_data_readers_name_is_not_enough() {
        use std::path::Path;
        let cat = v(&["./cat"]);
        assert!(!reads_program_at(
            &cat,
            Some(Path::new("/usr/bin/cat")),
            false
        ));
        assert!(reads_program_at(
            &cat,
            Some(Path::new("/work/app/cat")),
            true
        ));
        assert!(reads_program_at(
            &cat,
            Some(Path::new("/usr/bin/dash")),
            false
        ));
        assert!(reads_program_at(&cat, None, false));
        assert!(reads_program_at(
            &v(&["sh"]),
            Some(Path::new("/usr/bin/cat")),
            false
        ));
    }
}
