//! What kind of place a file is: an agent host's transcript, a shell history, an editor's
//! swap file, a `.env` file, a credential store. Labels only; every file is searched alike.

use std::path::Path;

/// Folders of `$HOME` outside its dot-directories that hold agent host state (macOS).
pub(super) const HOME_EXTRA: &[&str] = &[
    "Library/Application Support/Code/User",
    "Library/Application Support/Cursor/User",
];

/// Host folders below `$HOME`, and their label.
const HOSTS: &[(&str, &str)] = &[
    (".codex", "codex"),
    (".claude", "claude-code"),
    (".claude.json", "claude-code"),
    (".gemini", "gemini"),
    (".copilot", "copilot"),
    (".cursor", "vscode-cursor"),
    (".config/Code", "vscode-cursor"),
    (".config/Cursor", "vscode-cursor"),
    ("Library/Application Support/Code", "vscode-cursor"),
    ("Library/Application Support/Cursor", "vscode-cursor"),
];

/// The agent hosts' text transcripts (session logs and prompt histories), below `$HOME`:
/// the only files `--scrub-transcripts` rewrites. `*` is one path component (or, inside a
/// name, any run of characters), `**` any number of components. A host's configuration and
/// credential files (`~/.claude.json`, `~/.claude/settings.json`, `~/.codex/auth.json`,
/// `~/.codex/config.toml`, `~/.gemini/settings.json`, ...) match none.
pub(crate) const TRANSCRIPTS: &[&str] = &[
    ".claude/projects/**/*.jsonl",
    ".codex/sessions/**/rollout-*.jsonl",
    ".codex/archived_sessions/**/rollout-*.jsonl",
    ".codex/history.jsonl",
    ".gemini/tmp/*/chats/*.json",
    ".gemini/tmp/*/logs.json",
    ".copilot/session-state/**/*.jsonl",
    ".copilot/history-session-state/*.json",
    ".config/Code/User/workspaceStorage/*/chatSessions/*.json",
    ".config/Code/User/workspaceStorage/*/chatSessions/*.jsonl",
    ".config/Code/User/globalStorage/emptyWindowChatSessions/*.json",
    ".config/Code/User/globalStorage/emptyWindowChatSessions/*.jsonl",
    "Library/Application Support/Code/User/workspaceStorage/*/chatSessions/*.json",
    "Library/Application Support/Code/User/workspaceStorage/*/chatSessions/*.jsonl",
    "Library/Application Support/Code/User/globalStorage/emptyWindowChatSessions/*.json",
    "Library/Application Support/Code/User/globalStorage/emptyWindowChatSessions/*.jsonl",
];

/// Whether `file` (absolute) is one of the host transcripts of [`TRANSCRIPTS`] below `home`
/// (canonical).
pub(crate) fn is_transcript(file: &Path, home: &Path) -> bool {
    let Ok(rel) = file.strip_prefix(home) else {
        return false;
    };
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    TRANSCRIPTS.iter().any(|t| {
        let pat: Vec<&str> = t.split('/').collect();
        glob(&pat, &parts)
    })
}

/// `pat` (components, `**` for any number) matches `path` (components) whole.
fn glob(pat: &[&str], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => {
            (0..=path.len()).any(|i| glob(rest, path.get(i..).unwrap_or_default()))
        }
        Some((p, rest)) => match path.split_first() {
            Some((c, tail)) => wild(p, c) && glob(rest, tail),
            None => false,
        },
    }
}

/// `p` (with at most one `*`, any run of characters) matches the name `s` whole.
fn wild(p: &str, s: &str) -> bool {
    match p.split_once('*') {
        None => p == s,
        Some((pre, post)) => {
            s.len() >= pre.len() + post.len() && s.starts_with(pre) && s.ends_with(post)
        }
    }
}

/// File names of credential stores.
const CREDENTIAL_FILES: &[&str] = &[
    ".netrc",
    ".npmrc",
    ".yarnrc",
    ".yarnrc.yml",
    ".pypirc",
    ".pgpass",
    ".git-credentials",
    ".vault-token",
    ".my.cnf",
    "credentials",
    "credentials.json",
    "hosts.yml",
    "config.json",
    "kubeconfig",
];

/// The label of `file` (see `Finding::kind`) (`home`: the canonical `$HOME`, if swept).
pub(crate) fn classify(file: &Path, home: Option<&Path>) -> &'static str {
    if let Some(rel) = home.and_then(|h| file.strip_prefix(h).ok()) {
        for (prefix, label) in HOSTS {
            if rel.starts_with(prefix) {
                return label;
            }
        }
    }
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.ends_with("history")
        || name.ends_with("_history")
        || name == ".zhistory"
        || name == ".histfile"
        || name.ends_with("hst")
    {
        return "shell-history";
    }
    if name.ends_with(".swp")
        || name.ends_with(".swo")
        || name.ends_with(".swx")
        || name.ends_with('~')
        || (name.starts_with('#') && name.ends_with('#'))
        || name.ends_with(".bak")
        || name.ends_with(".orig")
        || name.ends_with(".un~")
    {
        return "editor-backup";
    }
    if name.starts_with(".env") || name.ends_with(".env") {
        return "dotenv";
    }
    if CREDENTIAL_FILES.contains(&name.as_str()) {
        return "credential-file";
    }
    if file.components().any(|c| c.as_os_str() == ".git") {
        return "git-internal";
    }
    "file"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let h = Path::new("/h");
        let c = |p: &str| classify(Path::new(p), Some(h));
        assert_eq!(c("/h/.codex/sessions/2025/01/01/rollout-x.jsonl"), "codex");
        assert_eq!(c("/h/.claude/projects/-p/s.jsonl"), "claude-code");
        assert_eq!(c("/h/.claude.json"), "claude-code");
        assert_eq!(c("/h/.gemini/tmp/abc/chats/session.json"), "gemini");
        assert_eq!(c("/h/.copilot/session-state/x.jsonl"), "copilot");
        assert_eq!(
            c("/h/.config/Code/User/workspaceStorage/1/state.vscdb"),
            "vscode-cursor"
        );
        assert_eq!(c("/h/.bash_history"), "shell-history");
        assert_eq!(c("/h/.local/share/fish/fish_history"), "shell-history");
        assert_eq!(c("/p/.config.yml.swp"), "editor-backup");
        assert_eq!(c("/p/app.py~"), "editor-backup");
        assert_eq!(c("/p/.env.local"), "dotenv");
        assert_eq!(c("/h/.netrc"), "credential-file");
        assert_eq!(c("/p/.git/config"), "git-internal");
        assert_eq!(c("/p/src/main.rs"), "file");
    }

    #[test]
    fn transcripts_by_pattern_never_a_config_or_credential_file() {
        let h = Path::new("/h");
        let t = |p: &str| is_transcript(Path::new(p), h);
        assert!(t("/h/.claude/projects/-w-app/0d1c.jsonl"));
        assert!(t("/h/.claude/projects/-w-app/sub/agent-1.jsonl"));
        assert!(t("/h/.codex/sessions/2026/12/06/rollout-x.jsonl"));
        assert!(t("/h/.codex/history.jsonl"));
        assert!(t("/h/.gemini/tmp/abc/chats/session-1.json"));
        assert!(t("/h/.copilot/session-state/s.jsonl"));
        assert!(t(
            "/h/.config/Code/User/workspaceStorage/1/chatSessions/c.json"
        ));
        for not in [
            "/h/.claude.json",
            "/h/.claude/settings.json",
            "/h/.claude/.credentials.json",
            "/h/.claude/projects/-w-app/notes.json",
            "/h/.codex/auth.json",
            "/h/.codex/config.toml",
            "/h/.codex/sessions/2026/rollout-x.json",
            "/h/.codex/sessions/2026/other.jsonl",
            "/h/.gemini/settings.json",
            "/h/.gemini/oauth_creds.json",
            "/h/.config/Code/User/settings.json",
            "/h/.config/Code/User/workspaceStorage/1/state.vscdb",
            "/elsewhere/.claude/projects/-w-app/0d1c.jsonl",
        ] {
            assert!(!t(not), "{not}");
        }
    }
}
