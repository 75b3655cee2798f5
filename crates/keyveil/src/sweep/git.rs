//! Git repositories: every object, placed at a commit and path.
//!
//! Objects are read by git itself (`git cat-file --batch-all-objects --batch`): loose and
//! packed, deltas resolved, reachable from a branch, a tag, the reflog or the stash, or from
//! nothing (a dropped stash, an amended commit not yet collected). Each object is matched in
//! windows of [`WINDOW`] bytes that overlap by the redactor's longest pattern, so memory stays
//! bounded whatever the object's size. Found objects are then placed: `git rev-list --objects
//! --all --reflog` gives a path, one walk of `git log --all --reflog -m --raw -t` the commits
//! that add or remove them. Both run for every repository, found or not, and no command line
//! names an object: the agent reads every process's arguments in `/proc`.
//!
//! git runs with no system or global configuration, no replace objects, no terminal prompt,
//! no optional locks, no lazy fetch or other transport, no signature checker and no hooks or
//! file-system monitor (a repository's own config is the agent's to write); the commands used run no diff driver,
//! pager or hook.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use keyveil_redact::Redactor;

use super::{Finding, Location, SweepReport};

/// Bytes matched at once from one git object.
pub(crate) const WINDOW: usize = 8 << 20;
/// Deepest directory level searched for repositories below a root.
const MAX_DEPTH: usize = 24;
/// Most directory entries examined while looking for repositories.
const MAX_ENTRIES: u64 = 5_000_000;
/// Commits listed per found object.
const MAX_COMMITS: usize = 5;

/// `git` with the environment and configuration described in the module docs.
fn git(repo: &Path) -> Command {
    let mut c = Command::new("git");
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_NO_REPLACE_OBJECTS", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_OPTIONAL_LOCKS", "0")
        // A partial clone would fetch a missing object from its promisor remote, running the
        // transport the repository's own config names (`core.sshCommand`): never.
        .env("GIT_NO_LAZY_FETCH", "1")
        .env("LC_ALL", "C");
    // The repository's config is the agent's to write: nothing it names is ever run (hooks,
    // file-system monitor, a signature checker for `log.showSignature`, a transport).
    for setting in [
        "core.fsmonitor=false",
        "core.hooksPath=/dev/null",
        "log.showSignature=false",
        "gpg.program=false",
        "gpg.ssh.program=false",
        "gpg.x509.program=false",
        "protocol.allow=never",
        "core.sshCommand=false",
        "core.pager=cat",
    ] {
        c.arg("-c").arg(setting);
    }
    c.arg("-C")
        .arg(repo)
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// The git directory of a working tree (`.git`, or what a `.git` file points to), or the
/// repository itself when bare.
pub(crate) fn git_dir(repo: &Path) -> PathBuf {
    let dot = repo.join(".git");
    if dot.is_dir() {
        return dot;
    }
    // Only a regular `.git` file is read (a planted named pipe would block the sweep).
    if std::fs::symlink_metadata(&dot).is_ok_and(|m| m.is_file())
        && let Ok(text) = std::fs::read_to_string(&dot)
        && let Some(p) = text.strip_prefix("gitdir:")
    {
        let p = Path::new(p.trim());
        return if p.is_absolute() {
            p.to_path_buf()
        } else {
            repo.join(p)
        };
    }
    repo.to_path_buf()
}

/// Whether `dir` is a bare repository (`HEAD`, `objects/`, `refs/`).
fn is_bare(dir: &Path) -> bool {
    dir.join("HEAD").is_file() && dir.join("objects").is_dir() && dir.join("refs").is_dir()
}

/// Repositories at or below `roots` (and the one a root is inside of), each once. Symlinks are
/// not followed.
pub(super) fn discover(
    roots: &[PathBuf],
    deadline: Instant,
    report: &mut SweepReport,
) -> Vec<PathBuf> {
    let mut found = BTreeSet::new();
    let mut entries = 0u64;
    for root in roots {
        // The repository a root is inside of.
        if let Ok(o) = git(root).args(["rev-parse", "--show-toplevel"]).output()
            && o.status.success()
        {
            let top = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            if !top.is_empty() {
                found.insert(PathBuf::from(top));
            }
        }
        let mut stack = vec![(root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            if Instant::now() >= deadline || entries > MAX_ENTRIES {
                report.truncated = true;
                report
                    .notes
                    .push("the search for git repositories was cut short".into());
                return found.into_iter().collect();
            }
            if dir.join(".git").exists() {
                found.insert(dir.clone());
            } else if is_bare(&dir) {
                found.insert(dir.clone());
                continue;
            }
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                entries += 1;
                let Ok(t) = e.file_type() else { continue };
                if t.is_dir() && e.file_name() != ".git" && depth < MAX_DEPTH {
                    stack.push((e.path(), depth + 1));
                }
            }
        }
    }
    found.into_iter().collect()
}

/// One object whose bytes hold a value.
struct Hit {
    oid: String,
    kind: String,
    variables: BTreeSet<String>,
}

/// Sweeps every object of `repo`. Findings name the repository, object, commits and path.
pub(super) fn sweep_repo(
    repo: &Path,
    redactor: &Redactor,
    deadline: Instant,
    report: &mut SweepReport,
    progress: Option<&crate::scan::Progress>,
) -> Vec<Finding> {
    let hits = match match_objects(repo, redactor, deadline, report, progress) {
        Ok(h) => h,
        Err(e) => {
            report.skipped += 1;
            report.truncated = true;
            report.notes.push(format!(
                "repository {}: cannot read its objects ({e})",
                repo.display()
            ));
            return Vec::new();
        }
    };
    // Both history walks run whether or not anything was found, and name no object on their
    // command line: an agent watching `/proc` for the broker's git processes (their arguments,
    // how many, how long) must not learn which of its planted objects holds a value.
    let paths = paths_of(repo, &hits, deadline);
    let commits = commits_of(repo, &hits, deadline, report);
    let mut out = Vec::new();
    for h in &hits {
        let commits = match h.kind.as_str() {
            "commit" => vec![h.oid.clone()],
            _ => commits.get(&h.oid).cloned().unwrap_or_default(),
        };
        for v in &h.variables {
            out.push(Finding {
                environment: String::new(),
                credential: String::new(),
                variable: v.clone(),
                kind: "git-history".into(),
                location: Location::Git {
                    repo: repo.to_string_lossy().into_owned(),
                    object: h.oid.clone(),
                    object_type: h.kind.clone(),
                    commits: commits.clone(),
                    path: paths.get(&h.oid).cloned(),
                },
                form: "git-object".into(),
                recent: false,
            });
        }
    }
    out
}

/// Streams every object of `repo` through the redactor.
fn match_objects(
    repo: &Path,
    redactor: &Redactor,
    deadline: Instant,
    report: &mut SweepReport,
    progress: Option<&crate::scan::Progress>,
) -> std::io::Result<Vec<Hit>> {
    let mut child = git(repo)
        .args(["cat-file", "--batch-all-objects", "--batch", "--unordered"])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout"))?;
    let mut r = BufReader::with_capacity(1 << 16, stdout);
    let overlap = redactor.max_pattern_len().max(1);
    let mut hits = Vec::new();
    let mut header = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(WINDOW + overlap);
    let mut result = Ok(());
    let mut timed_out = false;
    loop {
        if Instant::now() >= deadline {
            report.truncated = true;
            report.notes.push(format!(
                "repository {}: out of time while reading objects",
                repo.display()
            ));
            break;
        }
        header.clear();
        match r.read_until(b'\n', &mut header) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        let line = String::from_utf8_lossy(&header).trim_end().to_owned();
        let mut parts = line.split(' ');
        let (Some(oid), Some(kind), Some(size)) = (parts.next(), parts.next(), parts.next()) else {
            // `<oid> missing` and the like: nothing follows.
            continue;
        };
        let Ok(size) = size.parse::<u64>() else {
            result = Err(std::io::Error::other("unexpected output from git cat-file"));
            break;
        };
        report.git_objects += 1;
        if let Some(p) = progress {
            p.objects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            p.add(0, size);
        }
        let mut vars = BTreeSet::new();
        let mut left = size;
        buf.clear();
        while left > 0 {
            if Instant::now() >= deadline {
                // One object may be gigabytes (a crafted pack inflates cheaply): stop mid-object.
                timed_out = true;
                break;
            }
            let want = usize::try_from(left).unwrap_or(WINDOW).min(WINDOW);
            let start = buf.len();
            buf.resize(start + want, 0);
            if let Err(e) = r.read_exact(buf.get_mut(start..).unwrap_or_default()) {
                result = Err(e);
                break;
            }
            left -= want as u64;
            report.bytes_scanned += want as u64;
            vars.extend(redactor.find_leaks(&buf));
            // Keep the tail: a value may straddle two windows.
            let keep = buf.len().min(overlap);
            let cut = buf.len() - keep;
            buf.drain(..cut);
        }
        if result.is_err() {
            break;
        }
        if timed_out {
            if !vars.is_empty() {
                hits.push(Hit {
                    oid: oid.to_owned(),
                    kind: kind.to_owned(),
                    variables: vars,
                });
            }
            report.truncated = true;
            report.notes.push(format!(
                "repository {}: out of time while reading objects",
                repo.display()
            ));
            break;
        }
        let mut nl = [0u8; 1];
        if let Err(e) = r.read_exact(&mut nl) {
            result = Err(e);
            break;
        }
        if !vars.is_empty() {
            hits.push(Hit {
                oid: oid.to_owned(),
                kind: kind.to_owned(),
                variables: vars,
            });
        }
    }
    zeroize::Zeroize::zeroize(&mut buf);
    let _ = child.kill();
    let status = child.wait()?;
    if let Err(e) = result {
        // A corrupt object (planted, to hide the rest) stops git: what was found before it is
        // kept, and the report says the repository was not read to its end.
        if hits.is_empty() && report.git_objects == 0 {
            return Err(e);
        }
        report.skipped += 1;
        report.truncated = true;
        report.notes.push(format!(
            "repository {}: git stopped reading its objects ({e}); the objects after that point were not matched",
            repo.display()
        ));
    } else if !status.success() && hits.is_empty() && report.git_objects == 0 {
        return Err(std::io::Error::other("git cat-file failed"));
    }
    Ok(hits)
}

/// A path for each found blob or tree, from the trees reachable from any ref or reflog entry.
fn paths_of(repo: &Path, hits: &[Hit], deadline: Instant) -> HashMap<String, String> {
    let wanted: BTreeSet<&str> = hits.iter().map(|h| h.oid.as_str()).collect();
    let mut out = HashMap::new();
    let Ok(mut child) = git(repo)
        .args(["rev-list", "--objects", "--all", "--reflog"])
        .stdout(Stdio::piped())
        .spawn()
    else {
        return out;
    };
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if Instant::now() >= deadline {
                break;
            }
            if let Some((oid, path)) = line.split_once(' ')
                && wanted.contains(oid)
                && !path.is_empty()
            {
                out.entry(oid.to_owned()).or_insert_with(|| path.to_owned());
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    out
}

/// For each found blob or tree, the commits (newest first, at most [`MAX_COMMITS`]) whose change
/// adds or removes it, merges and stashes included: one walk of the whole history (`git log
/// --raw`), whatever was found.
fn commits_of(
    repo: &Path,
    hits: &[Hit],
    deadline: Instant,
    report: &mut SweepReport,
) -> HashMap<String, Vec<String>> {
    let wanted: BTreeSet<&str> = hits
        .iter()
        .filter(|h| h.kind != "commit")
        .map(|h| h.oid.as_str())
        .collect();
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let Ok(mut child) = git(repo)
        .args([
            "log",
            "--all",
            "--reflog",
            "-m",
            "--raw",
            "-t",
            "--no-abbrev",
            "--no-renames",
            "--no-ext-diff",
            "--no-textconv",
            "--no-show-signature",
            "--format=%x00%H",
        ])
        .stdout(Stdio::piped())
        .spawn()
    else {
        return out;
    };
    let mut cut = false;
    if let Some(stdout) = child.stdout.take() {
        let mut commit = String::new();
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            if Instant::now() >= deadline {
                cut = true;
                break;
            }
            if let Some(c) = line.strip_prefix(b"\0") {
                commit = String::from_utf8_lossy(c).into_owned();
                continue;
            }
            // `:100644 100644 <old> <new> M\tpath`
            if line.first() != Some(&b':') || wanted.is_empty() {
                continue;
            }
            let head = line.split(|&b| b == b'\t').next().unwrap_or_default();
            for oid in String::from_utf8_lossy(head).split(' ').skip(2).take(2) {
                if wanted.contains(oid) {
                    let list = out.entry(oid.to_owned()).or_default();
                    if list.len() < MAX_COMMITS && !list.contains(&commit) {
                        list.push(commit.clone());
                    }
                }
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    if cut {
        report.truncated = true;
        report.notes.push(format!(
            "repository {}: out of time while placing objects at commits",
            repo.display()
        ));
    }
    out
}
