//! Options of known tools that make them run a command or load code (the `code-option` flag).

use super::commands::interpreter_family;

/// Options of known tools that make the tool run a command or load code: `(tool, option)`.
/// An option matches as a whole token, as `OPT=VALUE`, or glued to its value (`-oProxyCommand`).
pub(super) const CODE_OPTIONS: &[(&str, &str)] = &[
    ("git", "--upload-pack"),
    ("git", "--receive-pack"),
    ("git", "--exec"),
    ("git", "--template"),
    ("git", "--ext-diff"),
    ("git", "--config-env"),
    ("ssh", "ProxyCommand"),
    ("ssh", "LocalCommand"),
    ("ssh", "KnownHostsCommand"),
    ("ssh", "-F"),
    ("scp", "ProxyCommand"),
    ("scp", "-S"),
    ("scp", "-F"),
    ("sftp", "ProxyCommand"),
    ("sftp", "-S"),
    ("rsync", "-e"),
    ("rsync", "--rsh"),
    ("rsync", "--rsync-path"),
    ("tar", "--to-command"),
    ("tar", "--checkpoint-action"),
    ("tar", "--use-compress-program"),
    ("tar", "-I"),
    ("tar", "--info-script"),
    ("tar", "--new-volume-script"),
    ("find", "-exec"),
    ("find", "-execdir"),
    ("find", "-ok"),
    ("find", "-okdir"),
    ("make", "SHELL"),
    ("make", ".SHELLFLAGS"),
    ("make", "MAKEFLAGS"),
    ("make", "--eval"),
    ("make", "-E"),
    ("make", "-f"),
    ("make", "--file"),
    ("make", "--makefile"),
    ("npm", "--script-shell"),
    ("npm", "--node-options"),
    ("npm", "--userconfig"),
    ("npm", "--globalconfig"),
    ("pnpm", "--script-shell"),
    ("yarn", "--script-shell"),
    ("cargo", "--config"),
    ("cargo", "-Z"),
    ("zip", "-TT"),
    ("zip", "--unzip-command"),
    ("curl", "-K"),
    ("curl", "--config"),
    ("pip", "--index-url"),
    ("pip", "-i"),
    ("pip", "--extra-index-url"),
    ("less", "+!"),
    ("vim", "-c"),
    ("vi", "-c"),
    ("xargs", ""),
];

/// `git -c KEY=VALUE` keys (lowercased prefixes) that name a command or load code.
const GIT_CODE_KEYS: &[&str] = &[
    "core.sshcommand",
    "core.fsmonitor",
    "core.pager",
    "core.editor",
    "core.hookspath",
    "core.gitproxy",
    "core.askpass",
    "alias.",
    "credential.",
    "diff.external",
    "diff.",
    "filter.",
    "merge.",
    "sequence.editor",
    "gpg.",
    "uploadpack.",
    "protocol.",
    "pager.",
    "include.",
    "includeif.",
    "url.",
    "http.proxy",
    "remote.",
];

fn tool_family(prog: &str) -> &str {
    match interpreter_family(prog) {
        "pip" | "pip3" => "pip",
        "vim" | "nvim" => "vim",
        f => f,
    }
}

/// Whether one argv uses a code-executing option of a known tool ([`CODE_OPTIONS`], and
/// `git -c`/`--config` with a key of [`GIT_CODE_KEYS`]).
pub(super) fn code_option(argv: &[String]) -> bool {
    let Some(prog) = argv.first() else {
        return false;
    };
    let tool = tool_family(prog);
    let rest = argv.get(1..).unwrap_or(&[]);
    for (i, a) in rest.iter().enumerate() {
        let next = rest.get(i + 1).map(String::as_str).unwrap_or("");
        if tool == "git" && (a == "-c" || a == "--config") && git_code_key(next) {
            return true;
        }
        if tool == "git" && (a.starts_with("--config=") || a.starts_with("-c")) {
            let kv = a
                .strip_prefix("--config=")
                .or_else(|| a.strip_prefix("-c"))
                .unwrap_or("");
            if !kv.is_empty() && git_code_key(kv) {
                return true;
            }
        }
        if tool == "git" && a.contains("ext::") {
            return true;
        }
        if (tool == "ssh" || tool == "scp" || tool == "sftp") && (a == "-o" || a.starts_with("-o"))
        {
            let opt = if a == "-o" {
                next
            } else {
                a.get(2..).unwrap_or("")
            };
            let key = opt
                .split(['=', ' '])
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            if [
                "proxycommand",
                "localcommand",
                "knownhostscommand",
                "permitlocalcommand",
                "proxyjump",
            ]
            .contains(&key.as_str())
            {
                return true;
            }
        }
        for (t, opt) in CODE_OPTIONS {
            if *t != tool {
                continue;
            }
            if opt.is_empty() {
                // The tool runs whatever command follows.
                return true;
            }
            let o = *opt;
            let glued = o.starts_with('-') && o.len() == 2 && a.starts_with(o) && a.len() > 2;
            if a == o || a.starts_with(&format!("{o}=")) || glued {
                return true;
            }
        }
    }
    false
}

fn git_code_key(kv: &str) -> bool {
    let key = kv.split('=').next().unwrap_or("").to_ascii_lowercase();
    GIT_CODE_KEYS.iter().any(|k| key.starts_with(k))
}

/// [`code_option`] applied to every simple command of a shell script.
pub(super) fn code_option_in_script(code: &str) -> bool {
    code.split(['|', ';', '&', '\n', '(', ')', '`'])
        .map(|seg| {
            seg.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .any(|w| code_option(&w))
}
