//! Risk flags: what the broker knows about a request, shown to the human before they approve.
//!
//! Flags are facts computed by the broker from the request itself (argv, working directory,
//! variables, pinned executable) and from its own memory (first time, denied before, burst);
//! the requester's `reason` is never trusted, only escaped and labelled. Flag names:
//!
//! | flag | when |
//! |---|---|
//! | `control-characters` | a C0/C1 control or DEL in any requester-supplied string |
//! | `bidi-control` | a bidirectional override/embedding/isolate/mark (Trojan Source) |
//! | `invisible-characters` | a zero-width, format, tag or variation-selector character |
//! | `confusable` | a token mixing ASCII letters with look-alike letters of another script |
//! | `non-ascii` | any other non-ASCII character in argv or the working directory |
//! | `padding` | a run of 8+ whitespace characters, or a command over 500 characters |
//! | `shell-c` | a shell given a script with `-c` (opaque: the grant covers the whole script) |
//! | `inline-code` | an interpreter given code on argv (`python -c`, `node -e`, `perl -e`, ...) |
//! | `network` | a network tool or URL in argv (or in an inline script) |
//! | `variable-reference` | `$NAME` / `${NAME}` of a granted variable in argv |
//! | `env-dump` | a command that prints or copies the whole environment, also through a redirection (`env > f`) |
//! | `env-to-file` | a command that writes the whole environment to a file (`env > f`, `printenv \| tee f`, `json.dump(dict(os.environ), open(...))`, `cp /proc/self/environ f`) |
//! | `code-option` | an option of a known tool that makes it run a command or load code (`git --upload-pack=`, `git -c core.sshCommand=`, `ssh -o ProxyCommand=`, `rsync -e`, `tar --to-command`, `find -exec`, `make SHELL=`, `npm --script-shell`, ...; [`code_option::CODE_OPTIONS`]) |
//! | `all-variables` | the request asks for every variable of an environment that has more than one |
//! | `rephrased-denied` | the command does what a request denied in the last hour did (interpreter with inline code, a network destination, an environment dump or write; [`behaviour()`]), however it is phrased |
//! | `reason-contradicts-facts` | the requester's reason claims a prior approval, the user's consent or urgency, and the broker's facts say otherwise (the card says what, in plain words: [`contradictions()`]) |
//! | `agent-chosen-value` | a value the requester could have chosen (a pass-through value, a variable stored without the factor, or one read from an OpenBao KV secret linked without it) is injected: the card shows it (set in `broker/access/`) |
//! | `stdin-program` | the requester supplies the command's standard input and the command may read program text from it (anything but a known data filter such as `cat`, `wc`, `sort` named by its own name and resolved to that very filter outside what the requester can write, or a filter given `-f -`/`--file=/dev/stdin`: `stdin_program.rs`); the card shows the text, the grant binds its digest, no auto-approve rule covers it (set in `broker/access/`) |
//! | `compromised-value` | a variable `keyveil sweep --contain` found outside keyveil, or found in a request's own strings (`value-outside-custody`), and not rotated since (set in `broker/access/`; never auto-approved) |
//! | `value-outside-custody` | a value keyveil made at random is in the strings of a request whose requester holds no values: whoever wrote them holds it; audited, marked compromised, listed by `keyveil status` until rotated (set in `broker/access/custody.rs`; never auto-approved) |
//! | `workspace-executable` | the executable lives in a directory the requester can write |
//! | `first-time` | this exact command was never approved before in this broker's life |
//! | `denied-before` | the same command was denied recently |
//! | `new-variable` | a requested variable was stored in the last day without the factor (or before keyveil recorded how); the card names it and when it was stored. Never for values stored with the factor |
//! | `burst` | the client made 5 or more requests in the last minute, or all clients together 10 or more; a client is the process that connected (its origin, `broker/peer.rs`), not the name it claims |
//! | `claimed-identity` | the claimed client (kind, pid) disagrees with the process that connected: not keyveil's own executable, another pid, or keyveil running the other mode (set in `broker/access/`) |

mod behaviour;
mod claims;
mod code_option;
mod commands;
mod text;

use std::collections::BTreeSet;

use keyveil_proto::display::{is_bidi_control, is_invisible, is_odd_space};

pub(crate) use behaviour::{behaviour, shared_behaviour};
pub(crate) use claims::contradictions;
use code_option::{code_option, code_option_in_script};
use commands::{
    ENV_DUMP_CODE, INLINE, NETWORK, SHELLS, basename, dumps_env, interpreter_family, words,
    writes_env_to_file,
};
use text::{has_padding, latin_lookalike};

/// What the broker knows beyond the request text.
#[derive(Debug, Default, Clone)]
pub(crate) struct Facts {
    /// The resolved executable is in a directory the requester can write.
    pub(crate) writable_executable: bool,
    /// This exact argv was approved before.
    pub(crate) approved_before: bool,
    /// This exact argv was denied recently.
    pub(crate) denied_before: bool,
    /// Requests by this client (its real origin) in the last minute (this one included).
    pub(crate) recent_requests: usize,
    /// Requests by all clients together in the last minute (this one included).
    pub(crate) recent_all: usize,
    /// A requested variable was added less than [`NEW_VARIABLE_SECONDS`] ago: storing a first
    /// value needs no factor, so it may be the agent's own (a name that changes what the
    /// program does).
    pub(crate) new_variable: bool,
    /// The request asks for every variable of an environment holding more than one.
    pub(crate) all_variables: bool,
    /// Behaviour classes ([`behaviour()`]) this command shares with a request denied recently.
    pub(crate) denied_behaviour: Vec<String>,
}

/// Requests of one client in a minute that flag `burst`.
pub(crate) const BURST_PER_CLIENT: usize = 5;

/// Requests of all clients together in a minute that flag `burst`: a same-user process can
/// look like many clients (a copy of an executable is a new origin), never like fewer requests.
pub(crate) const BURST_ALL: usize = 10;

/// Whether request counts of the last minute (one client's, everyone's) make a burst.
pub(crate) fn bursting(client: usize, all: usize) -> bool {
    client >= BURST_PER_CLIENT || all >= BURST_ALL
}

/// How long a variable counts as new for the `new-variable` flag (seconds): one day.
pub(crate) const NEW_VARIABLE_SECONDS: i64 = 86_400;

/// Computes the flags of a request. `strings` are the other requester-supplied strings (cwd,
/// reason, environment and variable names) checked for hidden characters.
pub(crate) fn assess(
    argv: &[String],
    strings: &[&str],
    variables: &[String],
    facts: &Facts,
) -> Vec<String> {
    let mut f = hidden_characters(argv, strings);
    let (inline, code) = inline_code(argv);
    f.extend(inline);
    f.extend(network(argv, &code));
    f.extend(env_dump(argv, &code));
    if references(argv, variables) {
        f.insert("variable-reference");
    }
    f.extend(from_facts(facts));
    if writes_env_to_file(argv, &code) {
        f.insert("env-to-file");
        f.insert("env-dump");
    }
    if code_option(argv) || code.iter().any(|c| code_option_in_script(c)) {
        f.insert("code-option");
    }
    f.into_iter().map(str::to_owned).collect()
}

/// Flags of the characters in argv and the other requester-supplied strings: controls, bidi,
/// invisible, confusable, non-ASCII, padding.
fn hidden_characters(argv: &[String], strings: &[&str]) -> BTreeSet<&'static str> {
    let mut f = BTreeSet::new();
    let all = argv
        .iter()
        .map(String::as_str)
        .chain(strings.iter().copied());
    for s in all {
        for c in s.chars() {
            if c.is_control() || c as u32 == 0x7f {
                f.insert("control-characters");
            }
            if is_bidi_control(c) {
                f.insert("bidi-control");
            } else if is_invisible(c) {
                f.insert("invisible-characters");
            }
        }
        if has_padding(s) {
            f.insert("padding");
        }
    }
    for a in argv
        .iter()
        .map(String::as_str)
        .chain(strings.first().copied())
    {
        for tok in a.split(|c: char| !c.is_alphanumeric()) {
            let ascii = tok.chars().any(|c| c.is_ascii_alphabetic());
            let look = tok.chars().any(latin_lookalike);
            if look && (ascii || tok.chars().count() <= 12) {
                f.insert("confusable");
            }
        }
        if a.chars()
            .any(|c| !c.is_ascii() && !is_invisible(c) && !is_odd_space(c))
        {
            f.insert("non-ascii");
        }
    }
    if argv.iter().map(String::len).sum::<usize>() > 500 {
        f.insert("padding");
    }
    f
}

/// The flags of code given on argv (`shell-c`, `inline-code`) and that code: a shell's `-c`
/// script (also in combined flags like `-ec`, `-lc`), an interpreter's `-c`/`-e`/... operand.
fn inline_code(argv: &[String]) -> (BTreeSet<&'static str>, Vec<&str>) {
    let mut f = BTreeSet::new();
    let prog = argv.first().map(String::as_str).unwrap_or("");
    let fam = interpreter_family(prog);
    let mut code: Vec<&str> = Vec::new();
    if SHELLS.contains(&basename(prog))
        && let Some(i) = argv
            .iter()
            .position(|a| a.starts_with('-') && !a.starts_with("--") && a.contains('c'))
    {
        f.insert("shell-c");
        f.insert("inline-code");
        if let Some(script) = argv.get(i + 1) {
            code.push(script);
        }
    }
    for (name, opts) in INLINE {
        if fam == *name
            && let Some(i) = argv.iter().position(|a| opts.contains(&a.as_str()))
        {
            f.insert("inline-code");
            if let Some(c) = argv.get(i + 1) {
                code.push(c);
            }
        }
    }
    (f, code)
}

/// `network`: a network tool as `argv[0]` or as any command word inside inline code; a URL or
/// `/dev/tcp`, `/dev/udp` path anywhere.
fn network(argv: &[String], code: &[&str]) -> Option<&'static str> {
    let prog = argv.first().map(String::as_str).unwrap_or("");
    let net_word = |w: &str| NETWORK.contains(&basename(w));
    let url = argv.iter().any(|a| {
        a.contains("http://")
            || a.contains("https://")
            || a.contains("/dev/tcp/")
            || a.contains("/dev/udp/")
    });
    (net_word(prog) || code.iter().any(|c| words(c).any(net_word)) || url).then_some("network")
}

/// `env-dump`: the command itself dumps the environment, or any segment of an inline script
/// does, or argv holds code that reads the whole environment.
fn env_dump(argv: &[String], code: &[&str]) -> Option<&'static str> {
    let argv_words: Vec<&str> = argv.iter().map(String::as_str).collect();
    let segment_dumps = code.iter().any(|c| {
        c.split(['|', ';', '&', '\n', '(', ')', '`', '{', '}'])
            .any(|seg| {
                // `env > f`, `env 2>/dev/null >f`: the redirection is not an argument of the dump.
                let cmd = seg.split(['>', '<']).next().unwrap_or("");
                let w: Vec<&str> = cmd
                    .split_whitespace()
                    .filter(|t| !t.chars().all(|c| c.is_ascii_digit()))
                    .collect();
                dumps_env(&w)
            })
    });
    let reads_all = argv
        .iter()
        .any(|a| ENV_DUMP_CODE.iter().any(|p| a.contains(p)));
    (dumps_env(&argv_words) || segment_dumps || reads_all).then_some("env-dump")
}

/// Whether argv refers to a granted variable (`$NAME`, `${NAME}`, `%NAME%`).
fn references(argv: &[String], variables: &[String]) -> bool {
    argv.iter().any(|a| {
        variables.iter().any(|v| {
            a.contains(&format!("${v}"))
                || a.contains(&format!("${{{v}}}"))
                || a.contains(&format!("%{v}%"))
        })
    })
}

/// The flags that come from the broker's memory rather than the request text.
fn from_facts(facts: &Facts) -> impl Iterator<Item = &'static str> {
    [
        (facts.writable_executable, "workspace-executable"),
        (!facts.approved_before, "first-time"),
        (facts.denied_before, "denied-before"),
        (bursting(facts.recent_requests, facts.recent_all), "burst"),
        (facts.new_variable, "new-variable"),
        (facts.all_variables, "all-variables"),
        (!facts.denied_behaviour.is_empty(), "rephrased-denied"),
    ]
    .into_iter()
    .filter_map(|(on, flag)| on.then_some(flag))
}

#[cfg(test)]
mod tests;
