//! What a command does: shells and interpreters given code, network tools, whole-environment
//! dumps and writes of the environment to a file.

/// Shells whose `-c` takes a script.
pub(super) const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "fish", "ash", "busybox", "tcsh", "csh",
];

/// Interpreters and the options that take code on argv.
pub(super) const INLINE: &[(&str, &[&str])] = &[
    ("python", &["-c"]),
    ("node", &["-e", "--eval", "-p", "--print"]),
    ("deno", &["eval"]),
    ("bun", &["-e", "--eval"]),
    ("perl", &["-e", "-E"]),
    ("ruby", &["-e"]),
    ("php", &["-r"]),
    ("lua", &["-e"]),
    ("osascript", &["-e"]),
    ("awk", &["BEGIN"]),
    ("pwsh", &["-c", "-command", "-Command"]),
];

/// Tools that move data over the network.
pub(super) const NETWORK: &[&str] = &[
    "curl", "wget", "nc", "ncat", "netcat", "socat", "ssh", "scp", "sftp", "rsync", "ftp",
    "telnet", "http", "https", "xh", "aria2c", "dig", "nslookup", "host", "openssl", "gh", "aws",
    "gsutil",
];

/// Code fragments that read or copy the whole environment.
pub(super) const ENV_DUMP_CODE: &[&str] = &[
    "os.environ",
    "process.env",
    "ENV.to_h",
    "ENV.each",
    "%ENV",
    "System.getenv()",
    "Deno.env.toObject",
    "/environ",
    "export -p",
    "declare -x",
    "declare -p",
    "getenv(",
];

pub(super) fn basename(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

pub(super) fn interpreter_family(prog: &str) -> &str {
    let b = basename(prog);
    // python3.12 -> python, node20 -> node
    let trimmed = b.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    if trimmed.is_empty() { b } else { trimmed }
}

/// Words of a shell script or inline code, split on anything that is not part of a command name.
pub(super) fn words(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')))
        .filter(|w| !w.is_empty())
}

/// Code fragments that write to a file (or copy one) in common interpreters.
const FILE_WRITE_CODE: &[&str] = &[
    "open(",
    "writeFile",
    "write_text",
    "File.write",
    "fs.write",
    "fopen(",
    "Out-File",
    "Set-Content",
    "shutil.copy",
    ".write(",
    "json.dump(",
];

/// Whether the command writes the whole environment to a file: a dump redirected (`env > f`,
/// `printenv >> f`, `env | tee f`), copied (`cp /proc/self/environ f`), or written by inline
/// code that reads the environment and opens a file.
pub(super) fn writes_env_to_file(argv: &[String], code: &[&str]) -> bool {
    let words: Vec<&str> = argv.iter().map(String::as_str).collect();
    // Direct: `cp /proc/self/environ f`, `tee f < /proc/self/environ`, `dd if=/proc/self/environ`.
    if let Some(first) = words.first()
        && matches!(
            basename(first),
            "cp" | "dd" | "install" | "tee" | "rsync" | "mv"
        )
        && words.iter().any(|w| w.contains("/environ"))
    {
        return true;
    }
    for c in code {
        // Shell: a dump segment followed by a redirection to a file or `tee`.
        let mut rest = *c;
        while !rest.is_empty() {
            let end = rest.find(['|', ';', '&', '\n']).unwrap_or(rest.len());
            let seg = rest.get(..end).unwrap_or("");
            let after = rest.get(end..).unwrap_or("");
            let (cmd, redirected) = match seg.find('>') {
                Some(i) => (seg.get(..i).unwrap_or(""), true),
                None => (seg, false),
            };
            let w: Vec<&str> = cmd
                .split_whitespace()
                .filter(|t| !t.chars().all(|c| c.is_ascii_digit()))
                .collect();
            if dumps_env(&w) || cmd.contains("/environ") {
                let piped_to_file = after.starts_with('|')
                    && after
                        .trim_start_matches('|')
                        .split_whitespace()
                        .next()
                        .is_some_and(|t| matches!(basename(t), "tee" | "dd" | "sponge" | "cp"));
                if redirected || piped_to_file {
                    return true;
                }
            }
            rest = after.get(1..).unwrap_or("");
        }
        // Interpreters: reads the environment and writes a file.
        let reads = ENV_DUMP_CODE
            .iter()
            .filter(|p| **p != "getenv(")
            .any(|p| c.contains(p));
        if reads && FILE_WRITE_CODE.iter().any(|p| c.contains(p)) {
            return true;
        }
    }
    false
}

/// Whether one simple command prints the whole environment (`env`, `printenv`, bare `set`,
/// `export -p`, `declare -x`, `compgen -e`).
pub(super) fn dumps_env(words: &[&str]) -> bool {
    let Some((first, rest)) = words.split_first() else {
        return false;
    };
    let opts_only = rest.iter().all(|w| w.starts_with('-'));
    match basename(first) {
        "env" => opts_only,
        "printenv" => true,
        "set" => rest.is_empty(),
        "export" | "declare" | "typeset" => opts_only,
        "compgen" => rest.iter().any(|w| *w == "-e" || *w == "-v"),
        _ => false,
    }
}
