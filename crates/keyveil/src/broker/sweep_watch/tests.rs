//! Unit tests of `sweep --watch`: folders, links, frames.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]
use super::*;

/// Every folder gets its own watch, a symbolic link is never followed, and a folder whose
/// watch fails is named and counted, not dropped.
#[test]
fn every_folder_is_watched_alone_links_never_followed_failures_named() {
    let top = tempfile::tempdir().unwrap();
    let root = top.path().join("claude");
    let outside = top.path().join("outside");
    for d in [
        root.join("projects/a"),
        root.join("projects/b/deep"),
        outside.join("x"),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(root.join("projects/a/s.jsonl"), "{}\n").unwrap();
    std::fs::write(outside.join("x/o.jsonl"), "{}\n").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("projects/link")).unwrap();
    let failing = root.join("projects/b");
    let mut asked = Vec::new();
    let mut add = |d: &Path| {
        asked.push(d.to_path_buf());
        if d == failing {
            Err("No space left on device (os error 28)".to_owned())
        } else {
            Ok(())
        }
    };
    let mut w = Watches::default();
    let mut files = BTreeMap::new();
    watch_tree(&root, true, &mut w, &mut add, &mut files, None);
    assert!(asked.iter().all(|d| !d.starts_with(&outside)), "{asked:?}");
    assert!(
        !asked.contains(&root.join("projects/link")),
        "a link was watched: {asked:?}"
    );
    assert!(w.dirs.contains(&root.join("projects/a")));
    assert!(
        w.dirs.contains(&root.join("projects/b/deep")),
        "{:?}",
        w.dirs
    );
    assert_eq!(w.unwatched_count, 1);
    assert!(w.unwatched[0].contains("projects/b") && w.unwatched[0].contains("os error 28"));
    assert!(files.contains_key(&root.join("projects/a/s.jsonl")));
    assert!(files.keys().all(|f| !f.starts_with(&outside)));
    // A host folder that is itself a link is not watched.
    let home = top.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::symlink(&outside, home.join(".claude")).unwrap();
    assert!(matches!(host_dir(&home, ".claude"), Some(Err(_))));
    assert!(host_dir(&home, ".codex").is_none());
}

/// Every frame is the same size: findings that do not fit wait for the next one.
#[test]
fn frames_hold_what_fits_and_the_rest_waits() {
    let mut q = Queue::default();
    let f = |i: usize| Finding {
        environment: "demo".into(),
        variable: format!("V{i}"),
        credential: "value".into(),
        kind: "claude-code".into(),
        location: Location::File {
            path: format!("/h/.claude/projects/-p/{}.jsonl", "x".repeat(3000 + i)),
            lines: Vec::new(),
        },
        form: "raw".into(),
        recent: true,
    };
    for i in 0..40 {
        q.push(Item::Finding(f(i)));
    }
    let mut seen = 0;
    let mut frames = 0;
    loop {
        let o = q.frame();
        if o.report.findings.is_empty() {
            break;
        }
        let plain = serde_json::to_vec(&o).unwrap();
        assert!(plain.len() <= FRAME_PLAIN, "{}", plain.len());
        seen += o.report.findings.len();
        frames += 1;
    }
    assert_eq!(seen, 40);
    assert!(frames > 1);
    let empty = serde_json::to_vec(&q.frame()).unwrap();
    assert!(empty.len() < FRAME_PLAIN);
}
