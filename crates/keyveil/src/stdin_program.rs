//! Whether a command reads program text or commands from its standard input.
//!
//! This decides only what the card says about the standard input a requester supplies: every
//! supplied byte is shown (up to a size), its digest is bound into the grant, and a run with
//! other bytes is another request, whatever this says. The list names programs that read code
//! or commands from standard input in their usual forms (interpreters and REPLs given no
//! script, debuggers, `-`/`/dev/stdin` operands), so the card can say "program text" instead
//! of "data".

/// Programs that, given standard input, commonly read it as code or commands: interpreters
/// (with no script operand), REPLs, debuggers, shells, editors and calculators with a shell
/// escape, database shells.
const READERS: &[&str] = &[
    "awk",
    "gawk",
    "mawk",
    "nawk",
    "busybox",
    "toybox",
    "tclsh",
    "wish",
    "expect",
    "irb",
    "jshell",
    "ghci",
    "julia",
    "R",
    "Rscript",
    "sqlite3",
    "duckdb",
    "bc",
    "dc",
    "ed",
    "ex",
    "vi",
    "vim",
    "nvim",
    "gdb",
    "lldb",
    "pdb",
    "psql",
    "mysql",
    "mariadb",
    "mongosh",
    "redis-cli",
    "node",
    "nodejs",
    "deno",
    "bun",
    "python",
    "pypy",
    "lua",
    "luajit",
    "ruby",
    "perl",
    "php",
    "sh",
    "bash",
    "dash",
    "zsh",
    "ksh",
    "ash",
    "mksh",
    "yash",
    "fish",
    "csh",
    "tcsh",
    "pwsh",
    "powershell",
    "make",
    "gmake",
    "sed",
    "jq",
    "osascript",
    "scala",
    "groovysh",
    "clojure",
    "erl",
    "iex",
    "elixir",
    "swift",
    "guile",
    "racket",
    "sbcl",
    "ocaml",
    "octave",
    "matlab",
    "m4",
    "xargs",
    "env",
    "nix",
    "nix-shell",
    "tclsh8",
    "lua5",
];

/// Operands that name standard input.
const STDIN_NAMES: &[&str] = &["-", "/dev/stdin", "/dev/fd/0", "/proc/self/fd/0"];

/// Whether `argv` reads program text or commands from standard input (see the module
/// documentation): its program is one of [`READERS`] (by base name, version digits and dots
/// trimmed: `python3.12`, `tclsh8.6`), or an argument names standard input (`-f -`,
/// `--file=/dev/stdin`), or asks for an interactive mode (`-i`, `--interactive`).
pub(crate) fn reads_program(argv: &[String]) -> bool {
    let Some(arg0) = argv.first() else {
        return false;
    };
    let base = arg0.rsplit('/').next().unwrap_or(arg0);
    let family = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.' || c == '-');
    if READERS.contains(&base) || READERS.contains(&family) {
        return true;
    }
    argv.iter().skip(1).any(|a| {
        let value = a.split_once('=').map_or(a.as_str(), |(_, v)| v);
        STDIN_NAMES.contains(&a.as_str())
            || STDIN_NAMES.contains(&value)
            || a.strip_prefix("-f")
                .is_some_and(|v| STDIN_NAMES.contains(&v))
            || matches!(a.as_str(), "-i" | "--interactive" | "--repl")
    })
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
        ] {
            assert!(reads_program(&v(a)), "{a:?}");
        }
    }

    #[test]
    fn other_programs_read_data() {
        for a in [&["cat"][..], &["grep", "x"], &["wc", "-l"], &["sort", "-u"]] {
            assert!(!reads_program(&v(a)), "{a:?}");
        }
    }
}
