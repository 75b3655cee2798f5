//! Write-side scan: after a granted run, find the secret values it wrote into files.
//!
//! A granted process may write a value into a file (a bundle, `.git/config`, `~/.npmrc`, a test
//! report, a crash report, a git object) that the agent then reads with its own shell, past all
//! output redaction. [`scan`] walks what the run changed and asks the run's [`Redactor`]
//! whether any variant of any value occurs in it, after undoing the encodings and containers
//! the redactor does not see through itself.
//!
//! What is scanned (see `docs/write-side.md`):
//! - every file, directory and symlink under the run's working directory whose mtime or ctime
//!   is not older than the run's start (minus a slack for coarse clocks), recursively, with no
//!   directory skipped (`node_modules`, `.git` and `target` included);
//! - in `$HOME`: every file directly in it (shell and REPL histories, `.netrc`, `.npmrc`,
//!   `.git-credentials`, ...) and every dot-directory recursively (`.config/gh`, `.aws`,
//!   `.docker`, `.kube`, `.npm/_logs`, ...), except a short list of cache and toolchain
//!   subtrees (`home::HOME_SKIP`).
//!
//! Each changed regular file is read (never through a symlink, never a FIFO, socket or device)
//! and matched as stored, then decoded, by magic bytes and not by name: gzip (RFC 1952), zlib
//! (RFC 1950: git loose objects), git packfiles, tar (POSIX ustar, GNU and v7 headers), zip
//! (PKWARE APPNOTE: `.jar`, `.whl`, `.docx`, ...), UTF-16 text, and the text escapes that the
//! redactor may not know in every combination (percent-encoding in any letter case, YAML
//! single quotes, backslash escapes, HTML character references). Everything is bounded by
//! [`ScanLimits`]; whatever a limit cut short sets [`ScanReport::truncated`].
//!
//! Leaks are reported by variable name and path, never by value: a path that itself contains
//! a value (a file named after a token) is reported with that part replaced by the redactor's
//! marker.

// The broker calls `scan()` after each run; until it does, and in the benchmark that includes
// this module by path, parts of it are unused.
#![allow(dead_code)]

mod bounded;
mod decode;
mod home;
mod text;
mod walk;
pub mod watch;
mod xattr;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_decode;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use keyveil_redact::Redactor;

/// What to scan after a run.
#[derive(Clone, Debug)]
pub struct ScanScope {
    /// The run's working directory: files changed during the run under it, recursively.
    pub cwd: PathBuf,
    /// `$HOME` of the child: the files directly in it and its dot-directories (credential
    /// stores, histories, tool logs), when changed during the run. `None` skips them.
    pub home: Option<PathBuf>,
    /// When the run started. Entries whose mtime and ctime are both older than this minus
    /// [`ScanLimits::slack`] are not read.
    pub since: SystemTime,
    /// Bounds on the work done.
    pub limits: ScanLimits,
}

/// Bounds on a scan. Whatever a bound cuts short is counted in [`ScanReport::skipped`] and sets
/// [`ScanReport::truncated`]; nothing is skipped silently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanLimits {
    /// Most changed files read (archive members are not counted here).
    pub max_files: u64,
    /// Most directory entries examined (`lstat`ed), changed or not.
    pub max_entries: u64,
    /// Files up to this size are read whole and decoded; larger files are matched as stored
    /// only, in overlapping windows of this size.
    pub max_file_bytes: u64,
    /// Most bytes matched in all: file bytes read plus bytes produced by decompression.
    pub max_total_bytes: u64,
    /// Most decoded bytes taken from one archive member, compressed stream or git object (a
    /// zip bomb stops here).
    pub max_member_bytes: u64,
    /// Most members looked at in one archive or packfile.
    pub max_members: u64,
    /// Most decoding layers below a file: gzip, zlib, tar, zip, git pack and UTF-16 each count
    /// one (a `.tar.gz` member is at depth 2, a `.jar` inside a `.tar.gz` at depth 3).
    pub max_decode_depth: u32,
    /// Deepest directory level walked below a root.
    pub max_dir_depth: u32,
    /// Entries changed up to this long before [`ScanScope::since`] still count as changed
    /// (coarse file system clocks).
    pub slack: Duration,
    /// Wall-clock budget of the whole scan.
    pub max_duration: Duration,
    /// Threads that walk and `lstat` the tree (0: one per core, at most 4). Reading and
    /// matching the changed files is done by the calling thread.
    pub threads: usize,
}

impl Default for ScanLimits {
    fn default() -> ScanLimits {
        ScanLimits {
            max_files: 20_000,
            max_entries: 2_000_000,
            max_file_bytes: 16 << 20,
            max_total_bytes: 256 << 20,
            max_member_bytes: 16 << 20,
            max_members: 10_000,
            max_decode_depth: 3,
            max_dir_depth: 256,
            slack: Duration::from_secs(2),
            max_duration: Duration::from_secs(30),
            threads: 0,
        }
    }
}

/// One secret found in one place. Holds no value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Leak {
    /// Name of the secret variable.
    pub variable: String,
    /// Where: the file's path (absolute, as reached from the scope's roots); for an archive
    /// member `archive.tar.gz!inner/file`. Any part of it that is itself a value is replaced by
    /// `[REDACTED:NAME]`.
    pub path: PathBuf,
    /// How it was found, outermost layer first, joined by `+`: `raw` (the bytes as stored, in
    /// any variant the redactor knows: raw, base64, hex, JSON/shell/dotenv escapes, ...),
    /// `gzip`, `zlib`, `git-object`, `git-pack`, `tar`, `zip`, `utf-16le`, `utf-16be`,
    /// `percent`, `yaml-single-quoted`, `backslash-escape`, `html-entity`, `file-name`,
    /// `symlink-target`, `member-name`; for example `gzip+tar` or `zip+percent`.
    pub form: String,
    /// The file on disk that holds it: `path` without any `!member` part (the archive for a
    /// member; the entry itself for a file name or a symlink target). What a quarantine moves.
    /// Redacted like `path`: when the file's own name holds a value, this is not an existing
    /// path (the leak's form is then `file-name`).
    pub file: PathBuf,
}

/// Why something was left out ([`ScanReport::left_out`]): the time budget was spent.
pub(crate) const OUT_OF_TIME: &str = "over the time budget";
/// ... the byte budget (or a file's share of it) was spent.
pub(crate) const OVER_BYTES: &str = "over the byte budget";
/// ... a read failed.
pub(crate) const UNREADABLE: &str = "unreadable";

/// The result of a scan.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScanReport {
    /// Leaks found, sorted by path then variable; one per (path, variable).
    pub leaks: Vec<Leak>,
    /// Changed files read.
    pub files_scanned: u64,
    /// Bytes matched: file bytes read plus decompressed bytes.
    pub bytes_scanned: u64,
    /// Files, members or bytes left unscanned because of a limit, an encrypted archive member,
    /// a read error or a format this scanner cannot decode.
    pub skipped: u64,
    /// [`ScanReport::skipped`] by reason (a short phrase such as `over the time budget`).
    /// Counts only: never a path or anything read. Omitted while empty.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub left_out: BTreeMap<&'static str, u64>,
    /// True when some part of the scope was not fully scanned (see `skipped`).
    pub truncated: bool,
    /// Wall-clock time of the scan.
    pub elapsed_ms: u64,
}

/// Scans what a run changed under `scope.cwd` and in `scope.home` for the values `redactor`
/// knows. Never fails: unreadable parts are counted in [`ScanReport::skipped`].
pub fn scan(scope: &ScanScope, redactor: &Redactor) -> ScanReport {
    let start = Instant::now();
    let mut sc = Scanner::new(redactor, &scope.limits, scope.since, start);
    walk::run(&mut sc, scope);
    sc.finish(start)
}

/// How a run's scan found what changed ([`scan_watched`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// From the events of the working directory's watch (`watch.rs`), `$HOME` walked.
    Watched,
    /// By walking the whole scope (why: a short phrase, such as [`watch::NO_WATCH`]).
    Walked(&'static str),
}

impl Method {
    /// `watched`, or `walked: WHY`.
    pub fn describe(&self) -> String {
        match self {
            Method::Watched => "watched".to_owned(),
            Method::Walked(why) => format!("walked: {why}"),
        }
    }
}

/// [`scan`], using what `ticket` (taken from a watch of `scope.cwd` before the run started;
/// `Err`: why there is none) says the run touched instead of walking the working directory,
/// when it can be trusted:
/// the same findings as the walk for every change made through the tree (see
/// `docs/write-side.md`, "Watched working directories"). Falls back to the walk, and says
/// why in the [`Method`], without a ticket, when the watch gave up (queue overflow, a folder
/// moved, the watch limit) or when a changed file has more than one name. Call it once every
/// process of the run has ended.
pub fn scan_watched(
    scope: &ScanScope,
    redactor: &Redactor,
    ticket: Result<&watch::Ticket, &'static str>,
) -> (ScanReport, Method) {
    let start = Instant::now();
    let touched = match ticket {
        Err(why) => Err(why),
        Ok(t) => {
            let cwd = std::fs::canonicalize(&scope.cwd).ok();
            if cwd.as_deref() == Some(t.root().as_path()) {
                t.take()
            } else {
                Err("the watch is of another folder")
            }
        }
    };
    let why = match touched {
        Ok(t) => {
            let mut sc = Scanner::new(redactor, &scope.limits, scope.since, start);
            match walk::run_touched(&mut sc, scope, &t) {
                Ok(()) => return (sc.finish(start), Method::Watched),
                Err(why) => why,
            }
        }
        Err(why) => why,
    };
    (scan(scope, redactor), Method::Walked(why))
}

/// Work done so far, for a progress display (counts of work only, never of findings).
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Files read.
    pub files: std::sync::atomic::AtomicU64,
    /// Bytes read from files and git objects.
    pub bytes: std::sync::atomic::AtomicU64,
    /// Git objects matched.
    pub objects: std::sync::atomic::AtomicU64,
}

impl Progress {
    /// Adds `files` files and `bytes` bytes.
    pub(crate) fn add(&self, files: u64, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.files.fetch_add(files, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
    }
}

/// Most line numbers kept per (file, variable) by [`scan_with_lines`].
pub(crate) const MAX_LINES: usize = 20;

/// Line numbers of leaks: (path, variable) → 1-based lines (at most [`MAX_LINES`]).
pub(crate) type Lines = BTreeMap<(PathBuf, String), Vec<u64>>;

/// [`scan`], plus the 1-based lines on which each variable found as stored (`raw`) in a whole
/// file (up to [`ScanLimits::max_file_bytes`]) occurs, computed from the bytes already read:
/// a file is never opened a second time because it held a value (an agent watching its own
/// files with inotify would see which of them did).
///
/// `progress`, when given, counts files read and bytes matched as the scan goes.
pub(crate) fn scan_with_lines(
    scope: &ScanScope,
    redactor: &Redactor,
    progress: Option<&Progress>,
) -> (ScanReport, Lines) {
    let start = Instant::now();
    let mut sc = Scanner::new(redactor, &scope.limits, scope.since, start);
    sc.lines = Some(BTreeMap::new());
    sc.progress = progress;
    walk::run(&mut sc, scope);
    let lines = sc.lines.take().unwrap_or_default();
    (sc.finish(start), lines)
}

/// Where each variable occurs in some bytes (`Redactor::find_leak_spans`).
pub(crate) type Spans = Vec<(String, Vec<(u64, u64)>)>;

/// The 1-based lines of `data` on which each variable of `spans` (where the one matching pass
/// over `data` found it) occurs whole, at most [`MAX_LINES`] each.
///
/// The same work whatever was found: one walk over every newline of `data`, no match per line
/// (which made a long file that held a value take measurably longer than one that did not,
/// and an agent timing its planted candidates could tell which one matched).
pub(crate) fn lines_of(data: &[u8], spans: &Spans) -> BTreeMap<String, Vec<u64>> {
    // (start, end, variable index), by start.
    let mut at: Vec<(u64, u64, usize)> = spans
        .iter()
        .enumerate()
        .flat_map(|(i, (_, list))| list.iter().map(move |&(a, b)| (a, b, i)))
        .collect();
    at.sort_unstable();
    let mut lines: Vec<Vec<u64>> = vec![Vec::new(); spans.len()];
    let mut next = at.iter().peekable();
    let mut line = 1u64;
    // An occurrence that ends by the end of its line is on that line.
    let mut place = |end: u64, i: usize, line: u64, eol: u64| {
        if let Some(l) = lines.get_mut(i)
            && end <= eol
            && l.len() < MAX_LINES
            && l.last() != Some(&line)
        {
            l.push(line);
        }
    };
    for nl in memchr::memchr_iter(b'\n', data) {
        let nl = nl as u64;
        while let Some(&&(a, b, i)) = next.peek() {
            if a >= nl {
                break;
            }
            place(b, i, line, nl);
            next.next();
        }
        line += 1;
    }
    for &(_, b, i) in next {
        place(b, i, line, u64::MAX);
    }
    spans
        .iter()
        .zip(lines)
        .map(|((v, _), l)| (v.clone(), l))
        .collect()
}

/// The state of one scan: budgets spent and leaks found.
pub(crate) struct Scanner<'a> {
    pub(crate) redactor: &'a Redactor,
    pub(crate) limits: &'a ScanLimits,
    /// Entries with an mtime or ctime at or after this are changed.
    pub(crate) threshold: SystemTime,
    deadline: Instant,
    pub(crate) files_scanned: u64,
    pub(crate) entries_seen: u64,
    pub(crate) bytes_scanned: u64,
    pub(crate) skipped: u64,
    pub(crate) left_out: BTreeMap<&'static str, u64>,
    pub(crate) truncated: bool,
    /// (path, variable) → (form, file); the first form found wins.
    found: BTreeMap<(PathBuf, String), (String, PathBuf)>,
    /// The entry being scanned (whose leaks are pending).
    pub(crate) current: PathBuf,
    /// Leaks of the file being scanned, before the most specific location is kept.
    pending: Vec<(PathBuf, String, String)>,
    /// With [`scan_with_lines`]: the lines of raw leaks in whole files.
    pub(crate) lines: Option<Lines>,
    /// With [`scan_with_lines`]: work done, for a progress display.
    pub(crate) progress: Option<&'a Progress>,
    /// With [`scan_with_lines`]: where the match of the file's own bytes found each variable.
    spans: Spans,
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(
        redactor: &'a Redactor,
        limits: &'a ScanLimits,
        since: SystemTime,
        start: Instant,
    ) -> Scanner<'a> {
        let threshold = since.checked_sub(limits.slack).unwrap_or(since);
        let deadline = start
            .checked_add(limits.max_duration)
            .unwrap_or_else(|| start + Duration::from_secs(3600));
        Scanner {
            redactor,
            limits,
            threshold,
            deadline,
            files_scanned: 0,
            entries_seen: 0,
            bytes_scanned: 0,
            skipped: 0,
            left_out: BTreeMap::new(),
            truncated: false,
            found: BTreeMap::new(),
            current: PathBuf::new(),
            pending: Vec::new(),
            lines: None,
            progress: None,
            spans: Vec::new(),
        }
    }

    fn finish(self, start: Instant) -> ScanReport {
        let leaks = self
            .found
            .into_iter()
            .map(|((path, variable), (form, file))| Leak {
                variable,
                path,
                form,
                file,
            })
            .collect();
        ScanReport {
            leaks,
            files_scanned: self.files_scanned,
            bytes_scanned: self.bytes_scanned,
            skipped: self.skipped,
            left_out: self.left_out,
            truncated: self.truncated,
            elapsed_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Something was left out because of a limit or an error: `why`, a short phrase counted in
    /// [`ScanReport::left_out`].
    pub(crate) fn skip(&mut self, why: &'static str) {
        self.skipped += 1;
        *self.left_out.entry(why).or_default() += 1;
        self.truncated = true;
    }

    /// When the time budget ends.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// True (and marks the report truncated) once the time budget is spent.
    pub(crate) fn out_of_time(&mut self) -> bool {
        if Instant::now() >= self.deadline {
            self.truncated = true;
            return true;
        }
        false
    }

    /// Bytes that may still be matched.
    pub(crate) fn bytes_left(&self) -> u64 {
        self.limits
            .max_total_bytes
            .saturating_sub(self.bytes_scanned)
    }

    /// How many decoded bytes the next decoder may produce: the member limit within the total
    /// budget.
    pub(crate) fn decode_budget(&self) -> u64 {
        self.limits.max_member_bytes.min(self.bytes_left())
    }

    /// Matches `data` and records each secret found at `location` under `form`.
    pub(crate) fn match_bytes(&mut self, data: &[u8], location: &OsStr, form: &Forms) {
        if self.lines.is_some() && form.depth() == 0 && location == self.current.as_os_str() {
            // The file's own bytes: where each value is, for its line numbers, from this same
            // pass (never a second one because something was found).
            let spans = self.redactor.find_leak_spans(data);
            for (name, _) in &spans {
                self.record(location, name.clone(), form.render());
            }
            self.spans = spans;
            return;
        }
        if data.is_empty() {
            return;
        }
        for name in self.redactor.find_leaks(data) {
            self.record(location, name, form.render());
        }
    }

    /// With [`scan_with_lines`]: the lines of `data` (the whole of the file being scanned) on
    /// which each variable found in it as stored occurs.
    pub(crate) fn note_lines(&mut self, data: &[u8]) {
        if self.lines.is_none() {
            return;
        }
        let here = self.redacted_path(self.current.as_os_str());
        let spans = std::mem::take(&mut self.spans);
        // Every file's newlines are walked, found or not.
        let mut lines = lines_of(data, &spans);
        let vars: Vec<String> = self
            .pending
            .iter()
            .filter(|(p, _, form)| *p == here && form == "raw")
            .map(|(_, v, _)| v.clone())
            .collect();
        for v in vars {
            let l = lines.remove(&v).unwrap_or_default();
            if let Some(map) = &mut self.lines {
                map.entry((here.clone(), v)).or_insert(l);
            }
        }
    }

    /// Records one leak of the file being scanned (kept in `pending` until [`Self::flush`]).
    fn record(&mut self, location: &OsStr, variable: String, form: String) {
        // A location may itself contain a value (a file or member named after a token): never
        // report it as is.
        let shown = self.redacted_path(location);
        self.pending.push((shown, variable, form));
    }

    /// Moves the pending leaks of one file into the result. When a variable was found both in
    /// an archive's own bytes and inside one of its members (`a.tar` and `a.tar!x/y`), only
    /// the member, the more specific location, is kept.
    pub(crate) fn flush(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let mut containers: std::collections::HashSet<(Vec<u8>, &str)> =
            std::collections::HashSet::new();
        for (path, variable, _) in &pending {
            let bytes = os_bytes(path.as_os_str());
            for (i, _) in bytes.iter().enumerate().filter(|(_, b)| **b == b'!') {
                if let Some(outer) = bytes.get(..i) {
                    containers.insert((outer.to_vec(), variable.as_str()));
                }
            }
        }
        let keep: Vec<bool> = pending
            .iter()
            .map(|(path, variable, _)| {
                !containers.contains(&(os_bytes(path.as_os_str()), variable.as_str()))
            })
            .collect();
        let file = self.redacted_path(self.current.as_os_str());
        for ((path, variable, form), keep) in pending.into_iter().zip(keep) {
            if keep {
                self.found
                    .entry((path, variable))
                    .or_insert_with(|| (form, file.clone()));
            }
        }
    }

    fn redacted_path(&self, location: &OsStr) -> PathBuf {
        let bytes = os_bytes(location);
        if self.redactor.find_leaks(&bytes).is_empty() {
            return PathBuf::from(location);
        }
        let (redacted, _) = self.redactor.redact(&bytes);
        PathBuf::from(os_from_bytes(redacted))
    }
}

/// The decoding layers between a file and the bytes being matched, outermost first.
#[derive(Clone, Debug, Default)]
pub(crate) struct Forms(Vec<&'static str>);

impl Forms {
    /// One more layer.
    pub(crate) fn with(&self, layer: &'static str) -> Forms {
        let mut v = self.0.clone();
        v.push(layer);
        Forms(v)
    }

    /// Number of decoding layers.
    pub(crate) fn depth(&self) -> u32 {
        u32::try_from(self.0.len()).unwrap_or(u32::MAX)
    }

    /// `raw` for none, else the layers joined by `+`.
    pub(crate) fn render(&self) -> String {
        if self.0.is_empty() {
            "raw".to_owned()
        } else {
            self.0.join("+")
        }
    }
}

/// `outer!inner`: the location of an archive member.
pub(crate) fn member_location(outer: &OsStr, inner: &[u8]) -> OsString {
    let mut s = OsString::from(outer);
    s.push("!");
    s.push(os_from_bytes(inner.to_vec()));
    s
}

#[cfg(unix)]
pub(crate) fn os_bytes(s: &OsStr) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt as _;
    s.as_bytes().to_vec()
}

#[cfg(not(unix))]
pub(crate) fn os_bytes(s: &OsStr) -> Vec<u8> {
    s.to_string_lossy().into_owned().into_bytes()
}

#[cfg(unix)]
pub(crate) fn os_from_bytes(b: Vec<u8>) -> OsString {
    use std::os::unix::ffi::OsStringExt as _;
    OsString::from_vec(b)
}

#[cfg(not(unix))]
pub(crate) fn os_from_bytes(b: Vec<u8>) -> OsString {
    OsString::from(String::from_utf8_lossy(&b).into_owned())
}

/// The path as bytes (for matching file names and symlink targets).
pub(crate) fn path_bytes(p: &Path) -> Vec<u8> {
    os_bytes(p.as_os_str())
}
