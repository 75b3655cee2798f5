//! Rendering requests and audit entries for a human.
//!
//! Everything an agent supplied (argv, reason, client name, cwd) is escaped with
//! [`keyveil_proto::display::clip`]-style control escaping; argv is shown one element per line, quoted
//! and never truncated, so what the human reads is what will run.
use keyveil_proto::op;
use serde_json::Value;

/// Escapes one requester-supplied identifier for a terminal (see [`keyveil_proto::display::visible`]).
pub(crate) fn esc(s: &str) -> String {
    keyveil_proto::display::visible(s)
}

/// An argv on one line, each word quoted where needed (`display::quoted`).
pub(crate) fn argv_words<'a>(argv: impl IntoIterator<Item = &'a str>) -> String {
    argv.into_iter()
        .map(keyveil_proto::display::quoted)
        .collect::<Vec<_>>()
        .join(" ")
}

fn names(v: &[String]) -> String {
    v.iter().map(|x| esc(x)).collect::<Vec<_>>().join(", ")
}

/// The first 16 hex digits of a digest.
fn short(sha256: &str) -> &str {
    sha256.get(..16).unwrap_or("")
}

/// The process that really connected, as the broker read it from the socket and `/proc`
/// (`broker/peer.rs`): `pid N (exe PATH); parents: M COMM (PATH) <- ...`, escaped.
pub(crate) fn connection(peer: &op::PeerInfo) -> String {
    let exe = |p: &op::ProcInfo| {
        p.exe
            .as_deref()
            .map(esc)
            .unwrap_or_else(|| "unreadable".to_owned())
    };
    let proc_text = |p: &op::ProcInfo| {
        let keyveil = if p.keyveil { ", keyveil" } else { "" };
        format!("{} {} ({}{keyveil})", p.pid, esc(&p.comm), exe(p))
    };
    let Some(p) = &peer.process else {
        return "unknown (the kernel gave no pid)".to_owned();
    };
    let mut out = format!("pid {} (exe {})", p.pid, exe(p));
    if let Some(m) = &peer.keyveil_mode {
        out.push_str(&format!(", keyveil {}", esc(m)));
    }
    let parents: Vec<String> = peer.parents.iter().map(proc_text).collect();
    if !parents.is_empty() {
        out.push_str(&format!("; parents: {}", parents.join(" <- ")));
    }
    out
}

/// How a card is drawn: plain, or with colour (ANSI SGR) on a terminal that wants it. Colour
/// is only ever our own sequences around text that is already escaped: a requester's string
/// can never bring one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Style {
    colour: bool,
}

impl Style {
    /// No colour (pipes, files, tests).
    // Callers on a terminal use `for_terminal`; the plain style is what tests read.
    #[allow(dead_code)]
    pub(crate) const PLAIN: Style = Style { colour: false };

    /// Colour when the stream is a terminal, `NO_COLOR` is unset or empty (no-color.org) and
    /// `TERM` is not `dumb`.
    pub(crate) fn for_terminal(is_terminal: bool) -> Style {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        Style {
            colour: is_terminal && !no_color && !dumb,
        }
    }

    fn paint(self, code: &str, s: &str) -> String {
        if self.colour {
            format!("\u{1b}[{code}m{s}\u{1b}[0m")
        } else {
            s.to_owned()
        }
    }

    /// Bold red: what should stop the human.
    fn alarm(self, s: &str) -> String {
        self.paint("1;31", s)
    }

    /// Yellow: what deserves a second look.
    fn caution(self, s: &str) -> String {
        self.paint("33", s)
    }

    /// Bold.
    fn strong(self, s: &str) -> String {
        self.paint("1", s)
    }
}

/// The approval card of one request, without colour.
///
/// Facts the broker established come first; the requester's reason comes last, labelled as an
/// unverified claim. argv is one element per line, quoted, never truncated, with its element
/// count and total length so padding cannot hide a tail. Each risk flag is followed by its
/// one-line meaning.
// Callers on a terminal use `render_styled`; this plain form is what tests and pipes read.
#[allow(dead_code)]
pub(crate) fn render(r: &op::RequestCard) -> String {
    render_styled(r, Style::PLAIN)
}

/// [`render`], drawn with `st`: the card a human reads before typing the factor, kept short
/// enough to read (toolchain inputs beyond [`INPUTS_BEFORE_FOLDING`] are counted, not listed).
pub(crate) fn render_styled(r: &op::RequestCard, st: Style) -> String {
    render_card(r, st, false)
}

/// [`render_styled`] with every pinned input listed (`keyveil requests --details`).
pub(crate) fn render_details(r: &op::RequestCard, st: Style) -> String {
    render_card(r, st, true)
}

/// How many pinned inputs a card lists one per line before it folds the toolchain ones into a
/// count.
pub(crate) const INPUTS_BEFORE_FOLDING: usize = 8;

/// Roles of inputs that come with the machine's toolchains rather than with the project:
/// `PATH` directories, interpreter and version-manager directories. On a card with more than
/// [`INPUTS_BEFORE_FOLDING`] inputs, those outside the request's directory and without a detail
/// line are counted by role instead of listed (they are pinned all the same).
const TOOLCHAIN_ROLES: &[&str] = &[
    "path-dir",
    "toolchain-dir",
    "toolchain-lib",
    "version-manager-hooks",
    "version-selector",
    "python-import-dir",
    "python-site",
    "site-packages",
    "dist-packages",
    "rust-toolchain",
    "rustup-settings",
];

/// The inputs a card lists, and those it folds into a count (see [`TOOLCHAIN_ROLES`]).
fn split_inputs(
    r: &op::RequestCard,
    details: bool,
) -> (Vec<&op::InputPinInfo>, Vec<&op::InputPinInfo>) {
    if details || r.inputs.len() <= INPUTS_BEFORE_FOLDING {
        return (r.inputs.iter().collect(), Vec::new());
    }
    let in_project =
        |p: &str| std::path::Path::new(p).starts_with(&r.cwd) && !r.cwd.is_empty() && r.cwd != "/";
    r.inputs.iter().partition(|i| {
        !TOOLCHAIN_ROLES.contains(&i.role.as_str()) || i.detail.is_some() || in_project(&i.path)
    })
}

/// Folded toolchain inputs lines listed by root before the rest are counted in one line.
const ROOTS_LISTED: usize = 4;

/// Directories under which each entry names one toolchain install (`.pyenv/versions/3.11.7`),
/// with how many path components past the marker make the install's root, and whether the
/// marker must start the path (`/opt/`) rather than appear in it (`/.pyenv/versions/`).
const INSTALL_MARKERS: &[(&str, usize, bool)] = &[
    ("/.pyenv/versions/", 1, false),
    ("/.rustup/toolchains/", 1, false),
    ("/.nvm/versions/node/", 1, false),
    ("/.asdf/installs/", 2, false),
    ("/mise/installs/", 2, false),
    ("/.rbenv/versions/", 1, false),
    ("/.sdkman/candidates/", 2, false),
    ("/nix/store/", 1, true),
    ("/opt/", 1, true),
];

/// The toolchain install an input lives in: `…/.pyenv/versions/3.11.7` for any file below it,
/// `/usr` for the system's, otherwise the input's own directory.
fn install_root(path: &str) -> String {
    for (marker, depth, anchored) in INSTALL_MARKERS {
        let found = if *anchored {
            path.starts_with(marker).then_some(0)
        } else {
            path.find(marker)
        };
        if let Some(at) = found {
            let rest_at = at + marker.len();
            let rest = path.get(rest_at..).unwrap_or("");
            let mut end = rest_at;
            let mut parts = rest.split('/');
            for _ in 0..*depth {
                match parts.next() {
                    Some(p) if !p.is_empty() => end += p.len() + 1,
                    _ => return path.to_owned(),
                }
            }
            return path.get(..end.saturating_sub(1)).unwrap_or(path).to_owned();
        }
    }
    if path.starts_with("/usr/") || path == "/usr" {
        return "/usr".to_owned();
    }
    std::path::Path::new(path)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_owned())
}

/// The folded inputs grouped by the install they live in, most first: one line each for the
/// first [`ROOTS_LISTED`] (`20 under /home/u/.pyenv/versions/3.11.7 (toolchain-dir 14,
/// path-dir 6), digest 1a2b…`), the rest counted. The digest covers each input's role, path and
/// SHA-256 in order, so two cards with the same digest pinned the same files with the same
/// content; each input is still checked on its own at every use.
fn folded_lines(folded: &[&op::InputPinInfo]) -> Vec<String> {
    use sha2::{Digest, Sha256};
    let mut groups: Vec<(String, Vec<&op::InputPinInfo>)> = Vec::new();
    for i in folded {
        let root = install_root(&i.path);
        match groups.iter_mut().find(|(r, _)| *r == root) {
            Some((_, v)) => v.push(i),
            None => groups.push((root, vec![i])),
        }
    }
    groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
    let mut lines: Vec<String> = groups
        .iter()
        .take(ROOTS_LISTED)
        .map(|(root, inputs)| {
            let mut h = Sha256::new();
            for i in inputs {
                for part in [&i.role, &i.path, &i.sha256] {
                    h.update(part.as_bytes());
                    h.update([0]);
                }
            }
            let digest = hex::encode(h.finalize());
            format!(
                "{} under {} ({}), digest {}",
                inputs.len(),
                esc(root),
                folded_roles(inputs),
                short(&digest)
            )
        })
        .collect();
    let rest: usize = groups.iter().skip(ROOTS_LISTED).map(|(_, v)| v.len()).sum();
    if rest > 0 {
        lines.push(format!(
            "{rest} more in {} other directories",
            groups.len().saturating_sub(ROOTS_LISTED)
        ));
    }
    lines
}

/// `path-dir 12, toolchain-dir 3`: folded inputs counted by role, most first.
fn folded_roles(folded: &[&op::InputPinInfo]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for i in folded {
        match counts.iter_mut().find(|(role, _)| *role == i.role) {
            Some((_, n)) => *n += 1,
            None => counts.push((i.role.clone(), 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts
        .iter()
        .map(|(role, n)| format!("{} {n}", esc(role)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line recalling what is about to be approved, printed right above the factor prompt (a
/// long card may have scrolled away): the request, the command, where, which variables, and the
/// risk flags.
pub(crate) fn recap(r: &op::RequestCard, st: Style) -> String {
    let command = match &r.argv {
        None => "ANY COMMAND".to_owned(),
        Some(a) => argv_words(a.iter().map(String::as_str)),
    };
    let mut line = format!(
        "approving request #{}: {command}  in {}  with {} of {}",
        r.id,
        esc(&r.cwd),
        names(&r.variables),
        esc(&r.environment)
    );
    let flags = risk_flags(r);
    if !flags.is_empty() {
        line.push_str(&format!("  {} {flags}", st.alarm("RISK:")));
    }
    line
}

fn render_card(r: &op::RequestCard, st: Style, details: bool) -> String {
    let mut out = String::new();
    let client = &r.client;
    out.push_str(&st.strong(&format!("request #{}", r.id)));
    out.push_str(&format!(
        "  claimed {}:{} {} (pid {})\n",
        esc(&client.kind),
        esc(&client.name),
        esc(&client.version),
        client.pid
    ));
    if let Some(m) = &r.mount {
        out.push_str(&format!("  {}\n", st.strong(&mount_headline(r, m))));
        out.push_str(&format!("  {}\n", mount_scope(m)));
        for line in MOUNT_WARNING {
            out.push_str(&format!("  {}\n", st.caution(line)));
        }
    }
    // What the broker knows, not what the requester says.
    out.push_str(&format!("  connection:  {}\n", connection(&r.peer)));
    if r.asks > 1 {
        out.push_str(&format!(
            "  asked {} times (identical asks are merged into this one request)\n",
            r.asks
        ));
    }
    let flags = risk_flags(r);
    if !flags.is_empty() {
        out.push_str(&format!("  {}        {flags}\n", st.alarm("RISK:")));
        for f in &r.risk {
            if let Some(m) = flag_meaning(f) {
                out.push_str(&format!("    {}: {m}\n", st.caution(&esc(f))));
            }
        }
    }
    for b in &r.bound {
        // Where the value goes besides headers: a host that stores a body or a URL can give
        // the value back, so the card says when the binding allows it.
        let also = match (b.url, b.body) {
            (false, false) => "",
            (true, false) => " (also in the URL)",
            (false, true) => " (also in bodies)",
            (true, true) => " (also in the URL and bodies)",
        };
        out.push_str(&format!(
            "  bound:       {} → placeholder; real value only to {}{also}\n",
            esc(&b.variable),
            b.hosts
                .iter()
                .map(|h| esc(h))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for c in &r.contradictions {
        out.push_str(&format!(
            "  {} {}\n",
            st.alarm("THE REASON IS CONTRADICTED:"),
            keyveil_proto::display::visible_text(c)
        ));
    }
    for n in &r.new_variables {
        out.push_str(&format!(
            "  {} {}\n",
            st.caution("NEW VARIABLE:"),
            new_variable(n)
        ));
    }
    out.push_str(&format!("  environment: {}\n", esc(&r.environment)));
    out.push_str(&format!("  variables:   {}\n", names(&r.variables)));
    let pass = names(&r.pass_env);
    if !pass.is_empty() && r.mount.is_none() {
        out.push_str(&format!("  passes through from the requester: {pass}\n"));
    }
    if !r.chosen_values.is_empty() {
        out.push_str(&format!(
            "  {}\n",
            st.caution(
                "values the requester could have chosen (bound: another value ends the grant):"
            )
        ));
        for c in &r.chosen_values {
            out.push_str(&format!("    {}\n", chosen_value(c)));
        }
    }
    if let Some(s) = &r.stdin {
        out.push_str(&format!("  {}\n", st.caution(&stdin_heading(s))));
        for line in stdin_text(s).lines() {
            out.push_str(&format!("    | {line}\n"));
        }
    }
    out.push_str(&format!("  directory:   {}\n", esc(&r.cwd)));
    match &r.argv {
        None => out.push_str("  command:     ANY COMMAND (no command given)\n"),
        Some(a) => {
            let total: usize = a.iter().map(String::len).sum();
            out.push_str(&format!(
                "  command ({} arguments, {total} bytes), one per line:\n",
                a.len()
            ));
            for (i, x) in a.iter().enumerate() {
                out.push_str(&format!(
                    "    [{i}] {}\n",
                    keyveil_proto::display::quoted(x)
                ));
            }
        }
    }
    if let Some(e) = &r.executable {
        out.push_str(&format!(
            "  executable:  {}  sha256 {}\n",
            esc(&e.path),
            short(&e.sha256)
        ));
    }
    let (shown, folded) = split_inputs(r, details);
    for i in shown {
        out.push_str(&format!(
            "  input:       {} ({}) sha256 {}\n",
            esc(&i.path),
            esc(&i.role),
            short(&i.sha256)
        ));
        if let Some(d) = &i.detail {
            out.push_str(&format!("               {}\n", esc(d)));
        }
    }
    if !folded.is_empty() {
        out.push_str(&format!(
            "  and {} toolchain input{} pinned too (a change to any ends the grant; `keyveil requests --details` lists them):\n",
            folded.len(),
            if folded.len() == 1 { "" } else { "s" },
        ));
        for line in folded_lines(&folded) {
            out.push_str(&format!("    {line}\n"));
        }
    }
    if let Some(reason) = &r.reason {
        out.push_str(&format!(
            "  requester says (unverified): {}\n",
            keyveil_proto::display::visible_text(reason)
        ));
        for c in &r.contradictions {
            out.push_str(&format!(
                "    but the broker's facts: {}\n",
                keyveil_proto::display::visible_text(c)
            ));
        }
    }
    out.push_str(&format!(
        "  expires:     {}",
        crate::when::human_time(&r.expires_at.to_string())
    ));
    out
}

/// What a mount read cannot give, as every card of one says it.
pub(crate) const MOUNT_WARNING: &[&str] = &[
    "this program was not started by keyveil: its output is NOT redacted, and revoking",
    "cannot stop it or take the values back once read. If you can change how it starts,",
    "use `keyveil run --env ENV -- COMMAND` instead. Once read, the values are in its memory,",
    "open to other programs of your user that may debug it (the agent too, if it started it).",
    "Where the kernel does not let keyveil see which file a reader waits on (Yama's ptrace_scope",
    "1 or more, for a broker not run as root) or count the file's openings (no fanotify), the",
    "program shown may be a stand-in while another program of your user reads the text.",
    "A program that gave this reader `.env` already open (a shell's `< .env`, a parent that",
    "opened it) may have kept a copy of that opening where keyveil cannot see it, and copy",
    "what the reader reads: approve readers you started yourself, not ones the agent started.",
];

/// "`ARGV` (pid N) wants to read `PATH` of environment ENV", escaped.
pub(crate) fn mount_headline(r: &op::RequestCard, m: &op::MountRead) -> String {
    let argv = r
        .argv
        .as_deref()
        .map(|a| argv_words(a.iter().map(String::as_str)))
        .unwrap_or_default();
    // The executable is what runs; the argv is what the process says of itself.
    let exe = r
        .executable
        .as_ref()
        .map(|e| esc(&e.path))
        .unwrap_or_else(|| "an executable that could not be pinned".to_owned());
    format!(
        "`{argv}` (pid {}, running {exe}) wants to read `{}` of environment {}",
        m.pid,
        esc(&m.path),
        esc(&r.environment)
    )
}

/// What a `--ttl` grant of a mount read would serve later without a card.
fn mount_scope(m: &op::MountRead) -> String {
    match &m.anchor {
        Some(a) => format!(
            "with --ttl: serves later the same reader started under {} only (not one reparented away from it)",
            esc(a)
        ),
        None => "with --ttl: serves no later reader without a card (this reader's parent is init or a subreaper: nothing to bind the grant to)".to_owned(),
    }
}

/// What each risk flag of `risk/` means, in one line: the terminal card and the approval page
/// show it next to the flag; an unknown flag shows as named.
pub(crate) const FLAG_WORDS: &[(&str, &str)] = &[
    (
        "dumps-file",
        "the reader is a command that shows or copies files (cat, less, cp, ...): it would print or copy every value",
    ),
    (
        "agent-reader",
        "an agent host is among the reader's parents (its whole chain, or the chain could not be read to its end): the agent itself would read the values",
    ),
    (
        "detached-reader",
        "the reader's parent is init or a subreaper: what started it has exited (a launcher, `setsid -f`, `nohup ... &`), so who started it cannot be told; a --ttl grant never serves such a reader without a card",
    ),
    (
        "argv-not-the-executable",
        "the reader rewrote its command line, or its first word is not the program that runs: trust the executable line, not the command",
    ),
    (
        "code-loading-environment",
        "the reader's environment sets variables that make programs run other code (BASH_ENV, LD_PRELOAD, NODE_OPTIONS, ...): see their values below",
    ),
    (
        "unpinned-executable",
        "the reader's executable could not be pinned (deleted or replaced since it started)",
    ),
    (
        "control-characters",
        "control characters in what the requester sent",
    ),
    (
        "bidi-control",
        "bidirectional controls that can reorder text on screen",
    ),
    (
        "invisible-characters",
        "zero-width or other invisible characters",
    ),
    (
        "confusable",
        "letters of another script that look like ASCII",
    ),
    (
        "non-ascii",
        "non-ASCII characters in the command or directory",
    ),
    ("padding", "long runs of spaces, or a very long command"),
    (
        "shell-c",
        "a shell script given with -c: approving approves the whole script",
    ),
    (
        "inline-code",
        "an interpreter given code on the command line",
    ),
    ("network", "a network tool or URL"),
    ("variable-reference", "the command names a granted variable"),
    (
        "env-dump",
        "the command prints or copies the whole environment",
    ),
    (
        "workspace-executable",
        "the program lives where the requester can write",
    ),
    ("first-time", "this command was never approved before"),
    ("denied-before", "the same command was denied recently"),
    (
        "burst",
        "many requests from this client (the process that connected) or from all clients in the last minute",
    ),
    (
        "claimed-identity",
        "the requester claims to be another client or process than the one that connected",
    ),
    (
        "new-variable",
        "a variable stored in the last day without the factor (adding one needs none: check it is yours)",
    ),
    (
        "env-to-file",
        "the command writes the whole environment to a file",
    ),
    (
        "code-option",
        "an option that makes a known tool run a command or load code",
    ),
    (
        "all-variables",
        "the request asks for every variable of the environment",
    ),
    (
        "rephrased-denied",
        "the command does what a request denied in the last hour did, phrased another way",
    ),
    (
        "changed-since-rule",
        "an auto-approve rule names this command, but what it runs changed since the rule was made (so it was not approved automatically)",
    ),
    (
        "reason-contradicts-facts",
        "the requester's reason claims what the broker's facts contradict (see below)",
    ),
    (
        "agent-chosen-value",
        "a value the requester could have chosen is injected: it is shown below and bound",
    ),
    (
        "stdin-program",
        "the requester writes the command's standard input, which the command reads as program text: read it below",
    ),
    (
        "value-outside-custody",
        "a value keyveil made at random is in this request's own strings (shown as [REDACTED:NAME]): whoever wrote them holds it; rotate it (`keyveil status` lists it)",
    ),
    (
        "compromised-value",
        "a value `keyveil sweep` found outside keyveil and not rotated since: rotate it (`keyveil env show` says when and where)",
    ),
];

/// The one-line meaning of a risk flag (`net:HOST` included), if known.
pub(crate) fn flag_meaning(flag: &str) -> Option<String> {
    if let Some(host) = flag.strip_prefix("net:") {
        return Some(format!(
            "the command reaches the network host {}",
            esc(host)
        ));
    }
    FLAG_WORDS
        .iter()
        .find(|(f, _)| *f == flag)
        .map(|(_, w)| (*w).to_owned())
}

/// The risk flags of a request, `new-variable` followed by the variables it names.
pub(crate) fn risk_flags(r: &op::RequestCard) -> String {
    let new: Vec<String> = r.new_variables.iter().map(|n| esc(&n.variable)).collect();
    r.risk
        .iter()
        .map(|f| {
            if f == "new-variable" && !new.is_empty() {
                format!("new-variable ({})", new.join(", "))
            } else {
                esc(f)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One entry of a request's `new_variables`: its name, and who stored it when.
pub(crate) fn new_variable(n: &op::NewVariableInfo) -> String {
    let when = crate::when::human_time(&n.stored_at.unwrap_or(n.created_at).to_string());
    match n.stored.as_str() {
        "without the factor" => format!(
            "{} stored {when} without the factor (anyone with your uid, the agent too, could have stored it)",
            esc(&n.variable)
        ),
        _ => format!(
            "{} created {when}, by whom is not recorded (stored before keyveil kept that)",
            esc(&n.variable)
        ),
    }
}

/// The card's words on the requester's standard input: size, keyed digest, program or not.
pub(crate) fn stdin_heading(s: &op::StdinInfo) -> String {
    format!(
        "standard input, supplied by the requester ({} bytes, digest {}){}; bound: other bytes are another request:",
        s.bytes,
        short(&s.digest),
        if s.program {
            ", which this command may read as PROGRAM TEXT (code that runs with the values)"
        } else {
            ", which the command reads"
        }
    )
}

/// The requester's standard input as shown: escaped line by line (controls, bidi and
/// invisible characters made visible), with a marker when only its start is shown.
pub(crate) fn stdin_text(s: &op::StdinInfo) -> String {
    let mut out: String = s
        .text
        .split('\n')
        .map(keyveil_proto::display::visible_text)
        .collect::<Vec<_>>()
        .join("\n");
    if s.clipped {
        out.push_str(&format!("\n… (clipped: {} bytes in all)", s.bytes));
    }
    out
}

/// One entry of a request's `chosen_values`: `NAME = "value"` (escaped, with a marker when only
/// part of it is shown) and where it comes from.
pub(crate) fn chosen_value(c: &op::ChosenValueInfo) -> String {
    let name = c.name.as_deref().or(c.variable.as_deref()).unwrap_or("");
    let value = match &c.value {
        None => "not set".to_owned(),
        Some(v) => {
            let mut shown = keyveil_proto::display::quoted(v);
            if c.clipped {
                shown.push_str(&format!(
                    " … (clipped: {} bytes in all, digest {})",
                    c.bytes,
                    short(c.digest.as_deref().unwrap_or(""))
                ));
            }
            shown
        }
    };
    let origin = match c.origin.as_str() {
        "pass-env" => "passed through from the requester's environment".to_owned(),
        "reader-env" => {
            "in the reader's own environment: it can make the reader run other code".to_owned()
        }
        "kv-without-factor" => format!(
            "read from an OpenBao KV secret linked {} without the factor: its server may be the requester's",
            crate::when::human_time(&c.stored_at.map(|t| t.to_string()).unwrap_or_default())
        ),
        _ => format!(
            "stored {} without the factor",
            crate::when::human_time(&c.stored_at.map(|t| t.to_string()).unwrap_or_default())
        ),
    };
    format!("{} = {value}  ({origin})", esc(name))
}

/// One audit entry as a line.
pub(crate) fn audit_line(e: &keyveil_proto::op::AuditEntry) -> String {
    let mut rest = Vec::new();
    for (k, v) in &e.fields {
        if matches!(k.as_str(), "prev" | "mac") || v.is_null() {
            continue;
        }
        let shown = match v {
            Value::String(x) => keyveil_proto::display::visible_text(x),
            other => keyveil_proto::display::visible_text(&other.to_string()),
        };
        rest.push(format!(
            "{}={shown}",
            keyveil_proto::display::visible_text(k)
        ));
    }
    // Every part is escaped: the audit file is one the agent can edit (an edit fails `audit
    // verify`, but `audit` still shows the line), so a key, an event name or a time must not
    // reach the terminal as control sequences either.
    format!(
        "{:>5} {} {:<16} {}",
        e.seq.map_or_else(|| "null".to_owned(), |n| n.to_string()),
        keyveil_proto::display::visible_text(&crate::when::local_stamp(
            e.ts.as_deref().unwrap_or("")
        )),
        keyveil_proto::display::visible_text(e.event.as_deref().unwrap_or("")),
        rest.join(" ")
    )
}

/// The human's warning about a log moved aside at unlock (also printed by `audit verify`).
pub(crate) fn quarantine_warning(
    moved: &std::path::Path,
    verified: Option<u64>,
    first_bad: Option<u64>,
    sealed_seq: Option<u64>,
    missing: u64,
) -> String {
    let shown = keyveil_proto::display::visible(&moved.display().to_string());
    let mut w = format!(
        "the audit log failed verification and was moved aside to {shown}; a new log was started"
    );
    if let Some(v) = verified {
        w.push_str(&format!("; the moved log verifies through line {v}"));
    }
    if let Some(b) = first_bad {
        w.push_str(&format!(
            " and line {b} fails its MAC or chain (edited or forged)"
        ));
    }
    match sealed_seq {
        Some(s) if missing > 0 => w.push_str(&format!(
            "; the vault's sealed checkpoint vouched for {s} entries, so {missing} entries (lines {}-{s}) are MISSING: they were cut off or overwritten",
            s - missing + 1
        )),
        Some(s) => w.push_str(&format!(
            "; the sealed checkpoint (line {s}) is among the lines that verify"
        )),
        None => w.push_str("; no sealed checkpoint existed to compare with"),
    }
    w
}

#[cfg(test)]
mod tests;
