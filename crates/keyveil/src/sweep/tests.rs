//! Values planted in every kind of place a sweep covers, found with the right variable and
//! location; unrelated data gives nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use keyveil_redact::Redactor;

use super::*;

/// A random-looking value of 32 characters, different in each test run.
pub(super) fn value(tag: &str) -> String {
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).unwrap();
    format!("{tag}{}", hex::encode(b))
}

pub(super) fn redactor(vals: &[(&str, &str)]) -> Redactor {
    Redactor::new(
        vals.iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())),
    )
}

pub(super) fn plan(root: &Path, home: Option<&Path>) -> SweepPlan {
    SweepPlan {
        roots: vec![root.to_path_buf()],
        home: home.map(Path::to_path_buf),
        recent: Duration::from_secs(3600),
        max_duration: Duration::from_secs(120),
    }
}

pub(super) fn write(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

pub(super) fn git(repo: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

pub(super) fn file_paths<'a>(r: &'a SweepReport, var: &str) -> Vec<(&'a str, &'a [u64], &'a str)> {
    r.findings
        .iter()
        .filter(|f| f.variable == var)
        .filter_map(|f| match &f.location {
            Location::File { path, lines } => {
                Some((path.as_str(), lines.as_slice(), f.kind.as_str()))
            }
            Location::Git { .. } => None,
        })
        .collect()
}

pub(super) fn git_hits<'a>(r: &'a SweepReport, var: &str) -> Vec<&'a Location> {
    r.findings
        .iter()
        .filter(|f| f.variable == var && matches!(f.location, Location::Git { .. }))
        .map(|f| &f.location)
        .collect()
}

/// The report, serialised, holds no value and no variant of one.
pub(super) fn assert_clean(r: &SweepReport, vals: &[&str]) {
    let json = serde_json::to_string(r).unwrap();
    for v in vals {
        assert!(!json.contains(v), "the report holds a value");
        let b64 = base64_std(v.as_bytes());
        assert!(!json.contains(&b64[..16]), "the report holds a base64 form");
    }
}

fn base64_std(b: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[test]
fn host_transcripts_histories_and_dotenv_are_found_with_their_place() {
    let home = tempfile::tempdir().unwrap();
    let proj = tempfile::tempdir().unwrap();
    let h = home.path();
    let (a, b, c, d, e, f, g) = (
        value("a"),
        value("b"),
        value("c"),
        value("d"),
        value("e"),
        value("f"),
        value("g"),
    );
    // Codex rollout (JSON lines), Claude Code project transcript and state, Gemini chat,
    // Copilot session state, VS Code workspace storage, shell histories.
    write(
        &h.join(".codex/sessions/2026/01/02/rollout-2026-01-02T10-00-00-x.jsonl"),
        format!("{{\"type\":\"session_meta\"}}\n{{\"type\":\"response_item\",\"payload\":{{\"type\":\"message\",\"role\":\"user\",\"content\":[{{\"type\":\"input_text\",\"text\":\"use {a} please\"}}]}}}}\n").as_bytes(),
    );
    write(
        &h.join(".claude/projects/-work-app/5f0c.jsonl"),
        format!(
            "{{\"type\":\"user\",\"message\":{{\"role\":\"user\",\"content\":\"key={b}\"}}}}\n"
        )
        .as_bytes(),
    );
    write(
        &h.join(".claude.json"),
        format!("{{\"projects\":{{\"/w\":{{\"history\":[{{\"display\":\"export T={c}\"}}]}}}}}}")
            .as_bytes(),
    );
    write(
        &h.join(".gemini/tmp/3a1b/chats/session-2026-01-02.json"),
        format!("{{\"messages\":[{{\"type\":\"user\",\"content\":\"{d}\"}}]}}").as_bytes(),
    );
    write(
        &h.join(".copilot/session-state/9e.jsonl"),
        format!("{{\"type\":\"user.message\",\"data\":{{\"content\":\"{e}\"}}}}\n").as_bytes(),
    );
    write(
        &h.join(".bash_history"),
        format!("ls\ncurl -H 'Authorization: Bearer {f}' x\n").as_bytes(),
    );
    write(
        &h.join(".local/share/fish/fish_history"),
        format!("- cmd: echo {g}\n  when: 1700000000\n").as_bytes(),
    );
    // VS Code state as UTF-16 (a value typed in a webview lands in `state.vscdb` so).
    let utf16: Vec<u8> = format!("k={a}")
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    write(
        &h.join(".config/Code/User/workspaceStorage/77/state.vscdb"),
        &utf16,
    );
    // A .env with a value base64'd, an editor swap file.
    write(
        &proj.path().join(".env.production"),
        format!("A=1\nSECRET_B64={}\n", base64_std(b.as_bytes())).as_bytes(),
    );
    write(
        &proj.path().join(".settings.py.swp"),
        format!("b0VIM\0\0{c}\0").as_bytes(),
    );
    // Unrelated data: no finding.
    write(
        &proj.path().join("README.md"),
        b"nothing to see here, just text\n",
    );

    let vals = [
        ("a", &a),
        ("b", &b),
        ("c", &c),
        ("d", &d),
        ("e", &e),
        ("f", &f),
        ("g", &g),
    ];
    let r = sweep(
        &plan(proj.path(), Some(h)),
        &redactor(
            &vals
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        ),
    );
    let has = |var: &str, suffix: &str, kind: &str| {
        let hits = file_paths(&r, var);
        assert!(
            hits.iter()
                .any(|(p, _, k)| p.ends_with(suffix) && *k == kind),
            "{var} not found in {suffix} as {kind}: {hits:?}"
        );
    };
    has("a", "rollout-2026-01-02T10-00-00-x.jsonl", "codex");
    has("a", "state.vscdb", "vscode-cursor");
    has("b", "5f0c.jsonl", "claude-code");
    has("b", ".env.production", "dotenv");
    has("c", ".claude.json", "claude-code");
    has("c", ".settings.py.swp", "editor-backup");
    has("d", "session-2026-01-02.json", "gemini");
    has("e", "9e.jsonl", "copilot");
    has("f", ".bash_history", "shell-history");
    has("g", "fish_history", "shell-history");
    // Line numbers where the value is on one line.
    let bash = file_paths(&r, "f");
    assert_eq!(
        bash.iter()
            .find(|(p, ..)| p.ends_with(".bash_history"))
            .unwrap()
            .1,
        &[2]
    );
    assert!(
        r.findings.iter().all(
            |f| !matches!(&f.location, Location::File{path, ..} if path.ends_with("README.md"))
        )
    );
    // Everything just written is recent.
    assert!(r.findings.iter().all(|f| f.recent));
    assert_clean(&r, &[&a, &b, &c, &d, &e, &f, &g]);
}

#[test]
fn git_history_packed_objects_stash_and_unreachable_objects_are_found() {
    let repo = tempfile::tempdir().unwrap();
    let p = repo.path();
    let (old, packed, stashed, dropped, message) =
        (value("o"), value("p"), value("s"), value("x"), value("m"));
    git(p, &["init", "-q", "-b", "main"]);
    // Only in an old commit, deleted from the tree since.
    write(
        &p.join("config/db.yml"),
        format!("password: {old}\n").as_bytes(),
    );
    git(p, &["add", "."]);
    git(p, &["commit", "-q", "-m", "add db config"]);
    let first = git(p, &["rev-parse", "HEAD"]);
    std::fs::remove_file(p.join("config/db.yml")).unwrap();
    write(&p.join("README"), b"hello\n");
    git(p, &["add", "-A"]);
    git(p, &["commit", "-q", "-m", "remove config"]);
    // Only in a packed object: committed on a branch, packed, loose copies pruned, branch
    // content then removed.
    write(&p.join("token.txt"), format!("{packed}\n").as_bytes());
    git(p, &["add", "."]);
    git(p, &["commit", "-q", "-m", "token"]);
    std::fs::remove_file(p.join("token.txt")).unwrap();
    git(p, &["add", "-A"]);
    git(p, &["commit", "-q", "-m", "no token"]);
    // In a commit message.
    git(
        p,
        &[
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            &format!("rotate {message}"),
        ],
    );
    git(p, &["gc", "-q", "--prune=now"]);
    assert!(
        std::fs::read_dir(p.join(".git/objects/pack"))
            .unwrap()
            .count()
            > 0,
        "gc made a pack"
    );
    // Only in the stash (an uncommitted change of a tracked file).
    write(&p.join("README"), format!("hello {stashed}\n").as_bytes());
    git(p, &["stash", "-q"]);
    // Only in an unreachable object (written, never committed).
    write(&p.join("scratch"), format!("{dropped}\n").as_bytes());
    let dangling = git(p, &["hash-object", "-w", "scratch"]);
    std::fs::remove_file(p.join("scratch")).unwrap();
    // Unrelated history: no finding.
    let r = sweep(
        &plan(p, None),
        &redactor(&[
            ("OLD", &old),
            ("PACKED", &packed),
            ("STASHED", &stashed),
            ("DROPPED", &dropped),
            ("MSG", &message),
            ("ABSENT", &value("z")),
        ]),
    );
    assert_eq!(r.repositories, 1);
    let place = |var: &str| -> (Vec<String>, Option<String>, String) {
        let hits = git_hits(&r, var);
        let Some(Location::Git {
            commits,
            path,
            object_type,
            ..
        }) = hits.first()
        else {
            panic!("{var} not found in git: {:?}", r.findings);
        };
        (commits.clone(), path.clone(), object_type.clone())
    };
    let (commits, path, _) = place("OLD");
    assert_eq!(path.as_deref(), Some("config/db.yml"));
    assert!(
        commits.contains(&first),
        "the commit that added it: {commits:?}"
    );
    let (commits, path, _) = place("PACKED");
    assert_eq!(path.as_deref(), Some("token.txt"));
    assert!(!commits.is_empty());
    let (commits, path, _) = place("STASHED");
    assert_eq!(path.as_deref(), Some("README"));
    let stash = git(p, &["rev-parse", "refs/stash"]);
    assert!(commits.contains(&stash), "the stash commit: {commits:?}");
    let (commits, path, _) = place("DROPPED");
    assert!(commits.is_empty() && path.is_none());
    assert!(
        git_hits(&r, "DROPPED")
            .iter()
            .any(|l| matches!(l, Location::Git{object, ..} if *object == dangling))
    );
    let (commits, _, kind) = place("MSG");
    assert_eq!(kind, "commit");
    assert_eq!(commits.len(), 1);
    assert!(r.findings.iter().all(|f| f.variable != "ABSENT"));
    // Raw copies under .git/objects are not reported twice for a placed variable.
    assert!(r.findings.iter().all(
        |f| !matches!(&f.location, Location::File{path, ..} if path.contains("/.git/objects/"))
    ));
    assert_clean(&r, &[&old, &packed, &stashed, &dropped, &message]);
}

#[test]
fn a_huge_git_object_is_matched_across_windows_with_bounded_memory() {
    let repo = tempfile::tempdir().unwrap();
    let p = repo.path();
    let v = value("w");
    git(p, &["init", "-q", "-b", "main"]);
    // The value straddles the first window's end.
    let mut data = vec![b'.'; git::WINDOW - 10];
    data.extend_from_slice(v.as_bytes());
    data.extend(std::iter::repeat_n(b'.', 1000));
    write(&p.join("big.bin"), &data);
    git(p, &["add", "."]);
    git(p, &["commit", "-q", "-m", "big"]);
    std::fs::remove_file(p.join("big.bin")).unwrap();
    let r = sweep(&plan(p, None), &redactor(&[("W", &v)]));
    assert!(!git_hits(&r, "W").is_empty(), "{:?}", r.findings);
}

#[test]
fn a_file_given_as_a_root_is_matched_alone_and_home_is_walked_once() {
    let home = tempfile::tempdir().unwrap();
    let v = value("r");
    let w = value("s");
    write(
        &home.path().join("notes/a.txt"),
        format!("x\n{v}\n").as_bytes(),
    );
    write(
        &home.path().join("notes/b.txt"),
        format!("{w}\n").as_bytes(),
    );
    let r = sweep(
        &SweepPlan {
            roots: vec![home.path().join("notes/a.txt")],
            home: None,
            recent: Duration::from_secs(60),
            max_duration: Duration::from_secs(60),
        },
        &redactor(&[("V", &v), ("W", &w)]),
    );
    assert_eq!(file_paths(&r, "V").len(), 1);
    assert_eq!(file_paths(&r, "V")[0].1, &[2]);
    assert!(file_paths(&r, "W").is_empty(), "a sibling was read");
    // $HOME as a root: one walk, one finding per place.
    write(
        &home.path().join(".zsh_history"),
        format!(": 1:0;echo {w}\n").as_bytes(),
    );
    let r = sweep(
        &plan(home.path(), Some(home.path())),
        &redactor(&[("W", &w)]),
    );
    let hits = file_paths(&r, "W");
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert!(
        hits.iter()
            .any(|(p, _, k)| p.ends_with(".zsh_history") && *k == "shell-history")
    );
}
