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
}
