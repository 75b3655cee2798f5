//! Commands that run another command (`env`, `nice`, `timeout`, `npx`, ...): the table of their
//! options, and the wrapped command found or refused.

/// A command run by a wrapper (`timeout 60 sh ci.sh`): the wrapped argv, and the directory it
/// runs in when the wrapper changes it (`env -C DIR`).
pub(super) struct Wrapped {
    pub(super) argv: Vec<String>,
    pub(super) chdir: Option<String>,
}

/// Options of a wrapper: those taking an argument (next token unless attached), those taking
/// none, how many positionals precede the command (`timeout DURATION`), options after which no
/// command runs (`-p PID` modes) or the command is inline shell code (`flock -c`).
struct WrapSpec {
    names: &'static [&'static str],
    with_arg: &'static [&'static str],
    no_arg: &'static [&'static str],
    leading: usize,
    no_command: &'static [&'static str],
}

/// Wrappers keyveil sees through: the command they run is pinned as if it were run itself.
const WRAPPERS: &[WrapSpec] = &[
    WrapSpec {
        names: &["timeout"],
        with_arg: &["-s", "--signal", "-k", "--kill-after"],
        no_arg: &["--preserve-status", "--foreground", "-v", "--verbose"],
        leading: 1,
        no_command: &[],
    },
    WrapSpec {
        names: &["nice"],
        with_arg: &["-n", "--adjustment"],
        no_arg: &[],
        leading: 0,
        no_command: &[],
    },
    WrapSpec {
        names: &["nohup", "chronic", "catchsegv"],
        with_arg: &[],
        no_arg: &[],
        leading: 0,
        no_command: &[],
    },
    WrapSpec {
        names: &["env"],
        with_arg: &["-u", "--unset", "-C", "--chdir"],
        no_arg: &[
            "-i",
            "--ignore-environment",
            "-0",
            "--null",
            "-v",
            "--debug",
        ],
        leading: 0,
        no_command: &[],
    },
    WrapSpec {
        names: &["stdbuf"],
        with_arg: &["-i", "-o", "-e", "--input", "--output", "--error"],
        no_arg: &[],
        leading: 0,
        no_command: &[],
    },
    WrapSpec {
        names: &["ionice"],
        with_arg: &[
            "-c",
            "--class",
            "-n",
            "--classdata",
            "-p",
            "--pid",
            "-P",
            "--pgid",
            "-u",
            "--uid",
        ],
        no_arg: &["-t", "--ignore"],
        leading: 0,
        no_command: &["-p", "--pid", "-P", "--pgid", "-u", "--uid"],
    },
    WrapSpec {
        names: &["chrt"],
        with_arg: &[
            "-T",
            "--sched-runtime",
            "-P",
            "--sched-period",
            "-D",
            "--sched-deadline",
        ],
        no_arg: &[
            "-a",
            "--all-tasks",
            "-b",
            "--batch",
            "-d",
            "--deadline",
            "-f",
            "--fifo",
            "-i",
            "--idle",
            "-o",
            "--other",
            "-r",
            "--rr",
            "-R",
            "--reset-on-fork",
            "-v",
            "--verbose",
            "-e",
            "--ext",
        ],
        leading: 1,
        no_command: &["-m", "--max", "-p", "--pid"],
    },
    WrapSpec {
        names: &["taskset"],
        with_arg: &[],
        no_arg: &["-a", "--all-tasks", "-c", "--cpu-list"],
        leading: 1,
        no_command: &["-p", "--pid"],
    },
    WrapSpec {
        names: &["setsid"],
        with_arg: &[],
        no_arg: &["-c", "--ctty", "-f", "--fork", "-w", "--wait"],
        leading: 0,
        no_command: &[],
    },
    WrapSpec {
        names: &["time"],
        with_arg: &["-f", "--format", "-o", "--output"],
        no_arg: &[
            "-a",
            "--append",
            "-p",
            "--portability",
            "-v",
            "--verbose",
            "-q",
            "--quiet",
        ],
        leading: 0,
        no_command: &[],
    },
    WrapSpec {
        names: &["flock"],
        with_arg: &["-w", "--timeout", "--wait", "-E", "--conflict-exit-code"],
        no_arg: &[
            "-s",
            "--shared",
            "-x",
            "-e",
            "--exclusive",
            "-u",
            "--unlock",
            "-n",
            "--nb",
            "--nonblock",
            "-o",
            "--close",
            "-F",
            "--no-fork",
            "--verbose",
        ],
        leading: 1,
        no_command: &["-c", "--command"],
    },
    WrapSpec {
        names: &["unbuffer"],
        with_arg: &[],
        no_arg: &["-p"],
        leading: 0,
        no_command: &[],
    },
    WrapSpec {
        names: &["xargs"],
        with_arg: &[
            "-a",
            "--arg-file",
            "-d",
            "--delimiter",
            "-E",
            "-I",
            "-L",
            "--max-lines",
            "-n",
            "--max-args",
            "-P",
            "--max-procs",
            "-s",
            "--max-chars",
            "--process-slot-var",
        ],
        no_arg: &[
            "-0",
            "--null",
            "-p",
            "--interactive",
            "-r",
            "--no-run-if-empty",
            "-t",
            "--verbose",
            "-x",
            "--exit",
            "-o",
            "--open-tty",
        ],
        leading: 0,
        no_command: &[],
    },
];

/// The command a wrapper runs: `Ok(None)` when it is no wrapper or runs no command here (a
/// `-p PID` mode, `flock -c` inline code), `Err` (why) when keyveil cannot tell which command it
/// runs or the wrapper itself changes what runs (`env LD_PRELOAD=...`, `env -S`, an unknown
/// option).
pub(super) fn wrapped(
    is: &dyn Fn(&[&str]) -> bool,
    argv: &[String],
) -> Result<Option<Wrapped>, String> {
    let Some(spec) = WRAPPERS.iter().find(|w| is(w.names)) else {
        return Ok(None);
    };
    let name = spec.names.first().copied().unwrap_or("");
    let unknown = |t: &str| {
        format!(
            "keyveil cannot tell which command `{name}` runs (option {})",
            keyveil_proto::display::visible(t)
        )
    };
    let mut chdir = None;
    let mut i = 1;
    while let Some(a) = argv.get(i) {
        if a == "--" {
            i += 1;
            break;
        }
        if !a.starts_with('-') || a == "-" {
            break;
        }
        // `nice -5`, the historical form of `-n 5`.
        if name == "nice"
            && a.get(1..)
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            i += 1;
            continue;
        }
        if name == "env" && (a.starts_with("-S") || a.starts_with("--split-string") || a == "-P") {
            return Err("`env -S` splits a string into the command: keyveil cannot pin it".into());
        }
        let (opt, attached) = if a.starts_with("--") {
            match a.split_once('=') {
                Some((o, _)) => (o.to_owned(), true),
                None => (a.clone(), false),
            }
        } else {
            // Short: `-n5` or `-n 5`; clusters of flags (`-ax`) one by one.
            let mut flags = a.chars().skip(1).peekable();
            let mut out = None;
            while let Some(c) = flags.next() {
                let o = format!("-{c}");
                if spec.with_arg.contains(&o.as_str()) || spec.no_command.contains(&o.as_str()) {
                    out = Some((o, flags.peek().is_some()));
                    break;
                }
                if !spec.no_arg.contains(&o.as_str()) {
                    return Err(unknown(a));
                }
            }
            match out {
                Some(x) => x,
                None => {
                    i += 1;
                    continue;
                }
            }
        };
        if spec.no_command.contains(&opt.as_str()) {
            return Ok(None);
        }
        if spec.with_arg.contains(&opt.as_str()) {
            let value = if attached {
                a.split_once('=')
                    .map(|(_, v)| v.to_owned())
                    .or_else(|| a.get(opt.len()..).map(str::to_owned))
            } else {
                i += 1;
                argv.get(i).cloned()
            };
            if name == "env" && (opt == "-C" || opt == "--chdir") {
                chdir = value;
            }
        } else if !spec.no_arg.contains(&opt.as_str()) {
            return Err(unknown(a));
        }
        i += 1;
    }
    if name == "env" {
        // `NAME=VALUE` assignments: one that makes a process run other code is refused.
        while let Some((n, _)) = argv.get(i).and_then(|a| a.split_once('=')) {
            if crate::loaders::is_injection_var(n) {
                return Err(format!(
                    "`env` sets {}, which can make the command run code keyveil does not pin",
                    keyveil_proto::display::visible(n)
                ));
            }
            i += 1;
        }
    }
    i += spec.leading;
    if name == "flock" && argv.get(i).is_some_and(|a| a == "-c" || a == "--command") {
        return Ok(None);
    }
    match argv.get(i..) {
        Some(rest) if !rest.is_empty() => Ok(Some(Wrapped {
            argv: rest.to_vec(),
            chdir,
        })),
        _ => Ok(None),
    }
}
