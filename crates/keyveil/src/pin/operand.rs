//! Which argument of an interpreter's command line is its script, read as each interpreter reads
//! its options.

use std::ops::ControlFlow;

/// The interpreters whose script operand is pinned, by family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Interp {
    Shell,
    Python,
    Node,
    Deno,
    Bun,
    Perl,
    Ruby,
    Php,
    Lua,
    R,
}

/// What an interpreter's argv runs: its script operand (index into argv), whether code is given
/// inline (then shown on the card as the argv), files named by options that load code
/// (`node -r ./x.js`, `php -c php.ini`), a directory change (`ruby -C DIR`, `bun --cwd DIR`), or
/// why it cannot be told.
#[derive(Debug, Default)]
pub(super) struct Operand {
    pub(super) script: Option<usize>,
    pub(super) files: Vec<String>,
    pub(super) chdir: Option<String>,
    pub(super) unpinnable: Option<String>,
    /// The interpreter reads program text from standard input (`python3 -`, a bare `sh`,
    /// `bash -s`, `python3 -i x.py`, `deno repl`): the requester writes it, nobody pins it.
    pub(super) from_stdin: bool,
}

/// `php -d KEY=VALUE` keys that load or run code.
const PHP_CODE_KEYS: &[&str] = &[
    "auto_prepend_file",
    "auto_append_file",
    "extension",
    "zend_extension",
    "extension_dir",
    "include_path",
    "user_ini.filename",
];

/// Finds the script operand of an interpreter's argv: options are skipped with their
/// arguments (per interpreter: `bash -o pipefail`, `python3 -W error`, `perl -I lib`,
/// `ruby -r x`, `node --require x`), so the option's argument is never taken for the script.
pub(super) fn operand(kind: Interp, argv: &[String]) -> Operand {
    let mut o = Operand::default();
    let mut i = 1;
    if matches!(kind, Interp::Deno | Interp::Bun) && argv.get(1).is_some_and(|a| a == "run") {
        i = 2;
    }
    if kind == Interp::Deno && argv.get(1).is_some_and(|a| a == "eval") {
        return o;
    }
    if kind == Interp::Deno && argv.get(1).is_some_and(|a| a == "repl") {
        o.from_stdin = true;
        return o;
    }
    let info_only = info_only(kind, argv);
    if interactive(kind, argv) {
        o.from_stdin = true;
    }
    let syntax = Syntax::of(kind);
    let shell = kind == Interp::Shell;
    while let Some(a) = argv.get(i) {
        if a == "--" {
            i += 1;
            break;
        }
        if a == "-" {
            // The program comes from standard input (shells: end of options).
            if shell {
                i += 1;
                break;
            }
            o.from_stdin = true;
            return o;
        }
        let step = if let Some(long) = a.strip_prefix("--") {
            long_option(long, argv, i, &syntax, &mut o)
        } else {
            let cluster = if shell {
                a.strip_prefix('-').or_else(|| a.strip_prefix('+'))
            } else {
                a.strip_prefix('-')
            };
            let Some(cluster) = cluster else {
                break;
            };
            short_options(kind, cluster, argv, i, &syntax, &mut o)
        };
        match step {
            ControlFlow::Continue(next) => i = next,
            ControlFlow::Break(()) => return o,
        }
        if o.script.is_some() {
            return o;
        }
    }
    if argv.get(i).is_some() {
        o.script = Some(i);
    } else if !info_only && !matches!(kind, Interp::Bun | Interp::R) {
        // No operand: shells, python, node, deno, perl, ruby, php and lua read the program
        // from standard input (bun and Rscript print their usage).
        o.from_stdin = true;
    }
    o
}

/// Whether argv holds an option that prints and exits, or names what runs otherwise
/// (`node --test` discovers test files): then no program is read from standard input.
fn info_only(kind: Interp, argv: &[String]) -> bool {
    argv.iter().skip(1).any(|a| {
        matches!(a.as_str(), "--version" | "--help")
            || (kind == Interp::Python && matches!(a.as_str(), "-V" | "-VV" | "-h"))
            || (kind == Interp::Node
                && (matches!(a.as_str(), "-v" | "-h" | "--test" | "--v8-options")
                    || a.starts_with("--run")))
            || (kind == Interp::Perl && matches!(a.as_str(), "-v" | "-V"))
            || (kind == Interp::Ruby && a == "-v")
            || (kind == Interp::Php && matches!(a.as_str(), "-v" | "-i" | "-m"))
            || (kind == Interp::Lua && a == "-v")
    })
}

/// Whether an option before `--` reads program text from standard input after (or instead
/// of) the script (`python3 -i`, `node --interactive`, `perl -d`).
fn interactive(kind: Interp, argv: &[String]) -> bool {
    argv.iter().skip(1).take_while(|a| *a != "--").any(|a| {
        let cluster = a.strip_prefix('-').filter(|c| !c.starts_with('-'));
        // Short flags up to the first one that takes an argument (`-Wignore` is no `-i`).
        let short_i = |stop: &str| {
            cluster.is_some_and(|c| {
                c.chars()
                    .take_while(|x| !stop.contains(*x))
                    .any(|x| x == 'i')
            })
        };
        (kind == Interp::Python && short_i("WXcm"))
            || (kind == Interp::Node && (short_i("rCep") || a == "--interactive"))
            || (kind == Interp::Perl && a.starts_with("-d"))
    })
}

/// Option names (with their leading dashes).
type Names = &'static [&'static str];

/// How one interpreter reads its options: which take an argument, which of those name a file
/// of code, and which give the program inline.
struct Syntax {
    /// Long options whose argument is the next token unless attached (`--opt=v`).
    long_arg: Names,
    /// Those of `long_arg` whose argument is a file of code.
    long_file: Names,
    /// Short options whose argument is the next token unless attached (`-Wv`).
    short_arg: &'static str,
    /// Those of `short_arg` whose argument is a file of code.
    short_file: &'static str,
    /// Short options whose argument is the rest of their token only (`perl -Mstrict`).
    attached_only: &'static str,
    /// Short options that give the program inline (`-c`, `-e`).
    inline_short: &'static str,
    /// Long options that give the program inline (`--eval`).
    inline_long: Names,
}

impl Syntax {
    /// The option syntax of `kind`.
    fn of(kind: Interp) -> Syntax {
        let (long_arg, long_file, short_arg, short_file) = options_with_argument(kind);
        Syntax {
            long_arg,
            long_file,
            short_arg,
            short_file,
            attached_only: match kind {
                Interp::Perl => "MmxilF0dDC",
                Interp::Ruby => "xFi0KTW",
                _ => "",
            },
            inline_short: match kind {
                Interp::Shell => "c",
                Interp::Python => "c",
                Interp::Node | Interp::Bun => "ep",
                Interp::Perl => "eE",
                Interp::Ruby | Interp::Lua | Interp::R => "e",
                Interp::Php => "rBRE",
                Interp::Deno => "",
            },
            inline_long: match kind {
                Interp::Node | Interp::Bun => &["--eval", "--print"],
                _ => &[],
            },
        }
    }
}

/// The options of `kind` whose argument is the next token unless attached: long ones, the long
/// ones naming a file of code, short ones, the short ones naming a file of code.
fn options_with_argument(kind: Interp) -> (Names, Names, &'static str, &'static str) {
    match kind {
        Interp::Shell => (
            &["--rcfile", "--init-file"],
            &["--rcfile", "--init-file"],
            "oO",
            "",
        ),
        Interp::Python => (&["--check-hash-based-pycs"], &[], "WX", ""),
        Interp::Node => (
            &[
                "--require",
                "--import",
                "--loader",
                "--experimental-loader",
                "--input-type",
                "--conditions",
                "--title",
                "--env-file",
                "--env-file-if-exists",
                "--redirect-warnings",
                "--icu-data-dir",
                "--openssl-config",
                "--watch-path",
                "--test-reporter",
                "--test-reporter-destination",
                "--test-name-pattern",
            ],
            &[
                "--require",
                "--import",
                "--loader",
                "--experimental-loader",
                "--env-file",
                "--env-file-if-exists",
                "--openssl-config",
            ],
            "rC",
            "r",
        ),
        Interp::Deno => (
            &[
                "--config",
                "--import-map",
                "--lock",
                "--cert",
                "--location",
                "--seed",
                "--env-file",
            ],
            &["--config", "--import-map", "--env-file"],
            "c",
            "c",
        ),
        Interp::Bun => (
            &[
                "--preload",
                "--cwd",
                "--env-file",
                "--tsconfig-override",
                "--config",
            ],
            &["--preload", "--env-file", "--tsconfig-override", "--config"],
            "rc",
            "rc",
        ),
        Interp::Perl => (&[], &[], "I", ""),
        Interp::Ruby => (
            &[
                "--encoding",
                "--external-encoding",
                "--internal-encoding",
                "--enable",
                "--disable",
                "--dump",
            ],
            &[],
            "IrCE",
            "",
        ),
        Interp::Php => (&[], &[], "cdftzSBRFEr", "cz"),
        Interp::Lua => (&[], &[], "l", ""),
        Interp::R => (&[], &[], "", ""),
    }
}

/// Reads one long option (`long` is the token after `--`) at `argv[i]`, noting a file of code
/// or a directory change it names; the index of the next token, or `Break` when the program
/// is given inline (then `o` is final).
fn long_option(
    long: &str,
    argv: &[String],
    mut i: usize,
    syntax: &Syntax,
    o: &mut Operand,
) -> ControlFlow<(), usize> {
    let name = format!("--{}", long.split('=').next().unwrap_or(long));
    if syntax.inline_long.contains(&name.as_str()) {
        *o = Operand {
            from_stdin: o.from_stdin,
            ..Operand::default()
        };
        return ControlFlow::Break(());
    }
    if syntax.long_arg.contains(&name.as_str()) {
        let value = match long.split_once('=') {
            Some((_, v)) => Some(v.to_owned()),
            None => {
                i += 1;
                argv.get(i).cloned()
            }
        };
        if let Some(v) = value {
            if name == "--cwd" {
                o.chdir = Some(v);
            } else if syntax.long_file.contains(&name.as_str()) {
                o.files.push(v);
            }
        }
    }
    ControlFlow::Continue(i + 1)
}

/// Reads one cluster of short options (`cluster` is the token at `argv[i]` after its `-`),
/// with the arguments they take; the index of the next token, or `Break` when what runs is
/// told already (then `o` is final).
fn short_options(
    kind: Interp,
    cluster: &str,
    argv: &[String],
    i: usize,
    syntax: &Syntax,
    o: &mut Operand,
) -> ControlFlow<(), usize> {
    let shell = kind == Interp::Shell;
    let mut consumed_next = 0;
    for (j, c) in cluster.char_indices() {
        let rest = cluster.get(j + c.len_utf8()..).unwrap_or("");
        if syntax.inline_short.contains(c) {
            *o = Operand {
                from_stdin: o.from_stdin,
                ..Operand::default()
            };
            return ControlFlow::Break(());
        }
        if shell && c == 's' {
            // Commands from standard input; the rest are positional parameters.
            o.from_stdin = true;
            return ControlFlow::Break(());
        }
        if kind == Interp::Python && c == 'm' {
            // A module run: no script operand (the module is found on `sys.path`).
            return ControlFlow::Break(());
        }
        if matches!(kind, Interp::Perl | Interp::Ruby) && c == 'S' {
            o.unpinnable = Some(
                "`-S` looks the script up on PATH: keyveil cannot tell which file runs".into(),
            );
            return ControlFlow::Break(());
        }
        if syntax.attached_only.contains(c) {
            break;
        }
        if syntax.short_arg.contains(c) {
            // Shells take each `-o` argument from the next token, even in a cluster.
            let value = if shell || rest.is_empty() {
                consumed_next += 1;
                argv.get(i + consumed_next).cloned()
            } else {
                Some(rest.to_owned())
            };
            if let Some(v) = value {
                short_argument(kind, c, v, i + consumed_next, syntax, o)?;
            }
            if !shell {
                break;
            }
        }
    }
    ControlFlow::Continue(i + 1 + consumed_next)
}

/// Notes what the argument `v` (at `argv[at]`, or attached there) of the short option `c`
/// names: a file of code, a directory change, php's script (`-f`); `Break` when it makes
/// the run unpinnable (a php `-d` key that loads code; then `o` is final).
fn short_argument(
    kind: Interp,
    c: char,
    v: String,
    at: usize,
    syntax: &Syntax,
    o: &mut Operand,
) -> ControlFlow<()> {
    if syntax.short_file.contains(c) {
        o.files.push(v.clone());
    }
    if kind == Interp::Ruby && c == 'C' {
        o.chdir = Some(v.clone());
    }
    if kind == Interp::Php && c == 'f' {
        o.script = Some(at);
    }
    if kind == Interp::Php && c == 'd' {
        let key = v.split('=').next().unwrap_or(&v).trim();
        if PHP_CODE_KEYS.contains(&key) {
            o.unpinnable = Some(format!(
                "`-d {key}=...` makes php load code keyveil does not pin"
            ));
            return ControlFlow::Break(());
        }
    }
    if kind == Interp::Lua && c == 'l' {
        // `require`'s default path includes `./?.lua`.
        o.files.push(format!("{v}.lua"));
    }
    ControlFlow::Continue(())
}

/// Which interpreter `is` names, if any.
pub(super) fn interp(is: &dyn Fn(&[&str]) -> bool) -> Option<Interp> {
    Some(
        if is(&["sh", "bash", "dash", "zsh", "ksh", "ash", "mksh", "yash"]) {
            Interp::Shell
        } else if is(&["python", "pypy"]) {
            Interp::Python
        } else if is(&["node", "nodejs"]) {
            Interp::Node
        } else if is(&["deno"]) {
            Interp::Deno
        } else if is(&["bun"]) {
            Interp::Bun
        } else if is(&["perl"]) {
            Interp::Perl
        } else if is(&["ruby"]) {
            Interp::Ruby
        } else if is(&["php"]) {
            Interp::Php
        } else if is(&["lua", "luajit"]) {
            Interp::Lua
        } else if is(&["Rscript"]) {
            Interp::R
        } else {
            return None;
        },
    )
}
