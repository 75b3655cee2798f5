//! The audit log: JSON Lines, append-only, hash-chained and MAC'd.
//!
//! `docs/audit-format.md` is the normative description. In short, each line is one entry:
//!
//! ```text
//! {"seq":1,"ts":"2026-11-05T09:12:33.123456Z","event":"vault.unlocked",<extra fields, keys sorted>,"prev":"000…0","mac":"<hex>"}
//! ```
//!
//! * `seq` counts from 1 and goes up by exactly 1 per line;
//! * `prev` is the lowercase hex SHA-256 of the previous line's exact bytes (without its newline),
//!   64 zeros on the first line;
//! * `mac` is the lowercase hex HMAC-SHA256 (RFC 2104) of the line *as it would be without* the
//!   `,"mac":"…"` member, keyed by [`Vault::audit_key`](crate::Vault::audit_key).
//!
//! Lines are written in a canonical form (fixed member order, no whitespace, minimal escapes),
//! so a verifier can recompute the MAC input from the parsed entry and insist that the line's
//! bytes are exactly that form. The log never holds a secret value: it is the caller's job never
//! to pass one in the extra fields.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::fs::{File, TryLockError};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::AuditCheckpoint;
use crate::fsutil::private_options;
use crate::vault::hmac_sha256;

#[doc(hidden)]
pub mod fuzzing;

/// `prev` of the first entry: 64 zeros.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Longest accepted line, in bytes (without the newline). Longer lines are refused on append and
/// reported as bad on read.
pub const MAX_LINE_LEN: usize = 1024 * 1024;

/// Longest accepted event name, in bytes.
pub const MAX_EVENT_LEN: usize = 128;

/// Member names every entry has; extra fields may not use them.
pub const RESERVED_FIELDS: [&str; 5] = ["seq", "ts", "event", "prev", "mac"];

/// The event [`AuditWriter::open`] appends after cutting off a torn last line. Extra fields:
/// `bytes` (how many bytes were cut) and `sha256` (hex SHA-256 of those bytes).
pub const TAIL_TRUNCATED_EVENT: &str = "audit.tail_truncated";

/// The event [`AuditWriter::record_path_change`] appends, as the last entry of a log whose path
/// no longer names it. Extra fields: `path` (the log's path) and `change` (`"missing"`: nothing is
/// at the path any more; `"replaced"`: another file is).
pub const PATH_CHANGED_EVENT: &str = "audit.path_changed";

/// The event an [`AuditWriter`] appends, before any other entry, as soon as it can write again
/// after one or more entries could not be written (a full disk, a quota, an I/O error, a short
/// write, a failed `fdatasync`, a moved log). Extra fields: `lost` (entries of things that
/// happened but are not in the log), `refused` (entries whose action was refused because they
/// could not be written), `events` (object: event name → how many), `first` and `last` (when the
/// first and last of them failed, same format as `ts`) and `error` (the first failure). See
/// [`AuditGap`].
pub const GAP_EVENT: &str = "audit.gap";

/// Bytes an [`AuditWriter`] keeps allocated past the end of the log (Linux `fallocate` with
/// `FALLOC_FL_KEEP_SIZE`: the file's size does not change). [`AuditWriter::append`] refuses an
/// entry when it cannot keep this much free after it, so the entries that must be written
/// whatever happens ([`AuditWriter::append_record`]: the gap entry, revocations, locks, the end
/// of a run) find room on a full disk. 64 KiB hold a few hundred entries.
pub const RESERVE_BYTES: u64 = 64 * 1024;

/// Most distinct event names an [`AuditGap`] lists; further names are counted under `"other"`.
const MAX_GAP_EVENT_NAMES: usize = 64;

/// Whether an entry that could not be written recorded something that happened anyway, or an
/// action that was refused because of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unwritten {
    /// The event happened (a revocation, the end of a run, a lock) but its entry is missing.
    Lost,
    /// The action the entry would have recorded was refused; nothing happened.
    Refused,
}

/// Entries that could not be written since the last successful append, kept in memory by the
/// writer (and by the broker across a lock) and appended as one [`GAP_EVENT`] entry before
/// anything else as soon as appends work again. Never holds entry contents, only event names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditGap {
    /// Entries whose event happened but is not in the log.
    pub lost: u64,
    /// Entries whose action was refused.
    pub refused: u64,
    /// How many of each event name (at most 64 names; the rest under `"other"`).
    pub events: BTreeMap<String, u64>,
    /// When the first of them failed.
    pub first: jiff::Timestamp,
    /// When the last of them failed.
    pub last: jiff::Timestamp,
    /// The first failure, as text (an OS error such as "No space left on device (os error
    /// 28)"; never entry contents).
    pub error: String,
}

impl AuditGap {
    /// Counts one more unwritten entry of `event`, failed at `at` with `error`.
    fn note(&mut self, event: &str, kind: Unwritten, at: jiff::Timestamp) {
        match kind {
            Unwritten::Lost => self.lost += 1,
            Unwritten::Refused => self.refused += 1,
        }
        let name = if self.events.contains_key(event) || self.events.len() < MAX_GAP_EVENT_NAMES {
            event
        } else {
            "other"
        };
        *self.events.entry(name.to_owned()).or_default() += 1;
        self.first = self.first.min(at);
        self.last = self.last.max(at);
    }

    /// Adds `other` (an older or newer gap) into this one.
    pub fn merge(&mut self, other: AuditGap) {
        self.lost += other.lost;
        self.refused += other.refused;
        for (name, n) in other.events {
            *self.events.entry(name).or_default() += n;
        }
        if other.first < self.first {
            self.error = other.error;
        }
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
    }

    /// Total entries missing (lost and refused).
    pub fn entries(&self) -> u64 {
        self.lost + self.refused
    }

    /// The extra fields of the [`GAP_EVENT`] entry.
    fn fields(&self) -> Map<String, Value> {
        let mut fields = Map::new();
        fields.insert("lost".into(), Value::from(self.lost));
        fields.insert("refused".into(), Value::from(self.refused));
        fields.insert(
            "events".into(),
            Value::Object(
                self.events
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(*v)))
                    .collect(),
            ),
        );
        fields.insert("first".into(), Value::from(format_ts(self.first)));
        fields.insert("last".into(), Value::from(format_ts(self.last)));
        fields.insert("error".into(), Value::from(self.error.clone()));
        fields
    }
}

/// How the audit log's path stopped naming the file a writer appends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathChange {
    /// Nothing is at the path any more (the log was moved away or deleted).
    Missing,
    /// Another file is at the path (the log was moved away and something put in its place, or
    /// a copy was renamed over it).
    Replaced,
}

impl PathChange {
    /// `"missing"` or `"replaced"`, as logged.
    pub fn as_str(self) -> &'static str {
        match self {
            PathChange::Missing => "missing",
            PathChange::Replaced => "replaced",
        }
    }
}

impl std::fmt::Display for PathChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathChange::Missing => "it was moved away or deleted",
            PathChange::Replaced => "another file was put in its place",
        })
    }
}

/// Why one line of the audit log is bad. Its `Display` says what probably happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LineFault {
    /// The last line has no newline: a write was torn by a crash, or the file was truncated.
    #[error("incomplete line without a trailing newline (a torn write or a truncation)")]
    Incomplete,
    /// The line exceeds [`MAX_LINE_LEN`].
    #[error("line longer than {max} bytes")]
    TooLong {
        /// The limit, in bytes.
        max: usize,
    },
    /// The line is not JSON at all.
    #[error("not valid JSON ({category} error at column {column})")]
    NotJson {
        /// `syntax`, `data`, `eof` or `io`.
        category: &'static str,
        /// 1-based column of the error.
        column: usize,
    },
    /// The line is JSON but not an object.
    #[error("not a JSON object")]
    NotObject,
    /// A required member is missing or has the wrong type or shape.
    #[error("member `{0}` is missing or malformed")]
    BadField(&'static str),
    /// The line parses, but its bytes are not the canonical form of what it contains.
    #[error("not in canonical form (the line was reformatted or edited)")]
    NotCanonical,
    /// The MAC does not match the content.
    #[error("MAC mismatch (the line was edited or forged)")]
    MacMismatch,
    /// A genuine line, but not the one expected at this position.
    #[error("seq is {found}, expected {expected} (a line was deleted, inserted or reordered)")]
    SeqMismatch {
        /// `seq` on the line.
        found: u64,
        /// The line number, which `seq` must equal.
        expected: u64,
    },
    /// A genuine line with the right `seq`, but it does not chain onto the previous line.
    #[error(
        "prev does not match the hash of the previous line (a line was replaced, or logs were spliced)"
    )]
    PrevMismatch,
}

/// An error from writing, verifying or reading the audit log. Never contains a secret (the log
/// holds none) nor line contents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// A line failed a check. `line` is 1-based. The file was not modified. Whoever wrote that
    /// line is at fault (an edit, a deletion, a forgery, or a crash for [`LineFault::Incomplete`]).
    #[error("audit log line {line}: {reason}")]
    BadLine {
        /// 1-based line number.
        line: u64,
        /// What is wrong with it.
        reason: LineFault,
    },
    /// The audit log file does not exist (from [`verify`]).
    #[error("audit log {path} does not exist")]
    NotFound {
        /// The path looked up.
        path: PathBuf,
    },
    /// Another process holds the audit log's lock (another broker on the same data directory).
    #[error("audit log {path} is in use by another keyveil process")]
    Locked {
        /// The audit log file.
        path: PathBuf,
    },
    /// The caller passed an entry that cannot be logged (reserved member name, floating-point
    /// number, bad event name, too long). Caller's fault; nothing was written.
    #[error("refusing to log this audit entry: {reason}")]
    InvalidEntry {
        /// What is wrong. Names the field, never its value.
        reason: String,
    },
    /// The log verifies on its own but does not reach the checkpoint recorded in the vault:
    /// entries were cut off its end (or the file was replaced by an older or another log).
    #[error(
        "audit log does not contain the vault's checkpoint (seq {checkpoint_seq}; the log has {entries} entries): entries were removed from its end or it was replaced"
    )]
    CheckpointMismatch {
        /// `seq` of the checkpoint.
        checkpoint_seq: u64,
        /// Number of entries in the log.
        entries: u64,
    },
    /// The log's path no longer names the file the writer appends to (checked before every
    /// append: device and inode of the path against those of the open file). Nothing was
    /// written; entries appended to the open file would land wherever it now is, out of sight.
    #[error(
        "the audit log {path} is no longer the file keyveil writes to: {change}; nothing was appended"
    )]
    PathChanged {
        /// The log's path.
        path: PathBuf,
        /// What happened to it.
        change: PathChange,
    },
    /// An operating-system error.
    #[error("audit log I/O error: {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AuditError + 'a {
    move |source| AuditError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn bad(line: u64, reason: LineFault) -> AuditError {
    AuditError::BadLine { line, reason }
}

// ---------------------------------------------------------------------------------------------
// Canonical form

/// Appends `s` as a canonical JSON string: `"` and `\` escaped with a backslash, U+0008, U+0009,
/// U+000A, U+000C, U+000D as `\b \t \n \f \r`, other code points below U+0020 as `\u00xx`
/// (lowercase hex), everything else (including `/`, DEL and non-ASCII) as raw UTF-8.
fn push_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `v` in canonical form: no whitespace, object members sorted by the UTF-8 bytes of
/// their names, arrays in order, integers in decimal.
fn push_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => push_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            push_members(out, map.iter(), true);
            out.push('}');
        }
    }
}

/// Appends `"name":value` members sorted by name, comma-separated (leading comma unless `first`).
fn push_members<'a>(
    out: &mut String,
    members: impl Iterator<Item = (&'a String, &'a Value)>,
    first: bool,
) {
    let mut sorted: Vec<_> = members.collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    for (i, (name, value)) in sorted.into_iter().enumerate() {
        if i > 0 || !first {
            out.push(',');
        }
        push_string(out, name);
        out.push(':');
        push_value(out, value);
    }
}

/// The MAC input: the canonical entry without `mac`:
/// `{"seq":N,"ts":"…","event":"…",<extras sorted>,"prev":"…"}`.
fn mac_input(seq: u64, ts: &str, event: &str, extras: &Map<String, Value>, prev: &str) -> String {
    let mut out = String::with_capacity(256);
    let _ = write!(out, "{{\"seq\":{seq},\"ts\":");
    push_string(&mut out, ts);
    out.push_str(",\"event\":");
    push_string(&mut out, event);
    push_members(
        &mut out,
        extras
            .iter()
            .filter(|(k, _)| !RESERVED_FIELDS.contains(&k.as_str())),
        false,
    );
    out.push_str(",\"prev\":");
    push_string(&mut out, prev);
    out.push('}');
    out
}

/// The full line: the MAC input with `,"mac":"<hex>"` inserted before its closing brace.
fn with_mac(mut input: String, mac_hex: &str) -> String {
    input.pop();
    input.push_str(",\"mac\":\"");
    input.push_str(mac_hex);
    input.push_str("\"}");
    input
}

fn is_lower_hex_32(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(crate::format::sha256(bytes))
}

/// What a line says, once parsed and checked against its MAC.
struct Checked {
    seq: u64,
    prev: String,
    mac: String,
    /// For a [`GAP_EVENT`] entry: what it says.
    gap: Option<GapSeen>,
}

/// An [`GAP_EVENT`] entry as [`verify_report`] found it in a verified log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapSeen {
    /// Its `seq` (= line number).
    pub seq: u64,
    /// Its `ts`: when the gap was written, i.e. when appends worked again.
    pub ts: String,
    /// Entries of things that happened but are missing from the log.
    pub lost: u64,
    /// Entries of actions that were refused.
    pub refused: u64,
    /// Event name → how many.
    pub events: BTreeMap<String, u64>,
    /// When the first missing entry failed (RFC 3339), empty if absent.
    pub first: String,
    /// When the last one failed, empty if absent.
    pub last: String,
}

fn gap_seen(seq: u64, ts: &str, map: &Map<String, Value>) -> GapSeen {
    let num = |k: &str| map.get(k).and_then(Value::as_u64).unwrap_or(0);
    let text = |k: &str| {
        map.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    GapSeen {
        seq,
        ts: ts.to_owned(),
        lost: num("lost"),
        refused: num("refused"),
        events: map
            .get("events")
            .and_then(Value::as_object)
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default(),
        first: text("first"),
        last: text("last"),
    }
}

/// Parses one line (without newline) and checks form, canonical bytes and MAC (no MAC without
/// `key`: [`chain_head`] for a reader who must not hold it). Does not check position (`seq`,
/// `prev`); the caller does.
fn check_line(line_no: u64, bytes: &[u8], key: Option<&[u8; 32]>) -> Result<Checked, AuditError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        let category = match e.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "eof",
        };
        bad(
            line_no,
            LineFault::NotJson {
                category,
                column: e.column(),
            },
        )
    })?;
    let Value::Object(map) = value else {
        return Err(bad(line_no, LineFault::NotObject));
    };
    let field = |name: &'static str| map.get(name).ok_or(bad(line_no, LineFault::BadField(name)));
    let seq = field("seq")?
        .as_u64()
        .ok_or(bad(line_no, LineFault::BadField("seq")))?;
    let str_field = |name: &'static str| {
        field(name)?
            .as_str()
            .ok_or(bad(line_no, LineFault::BadField(name)))
    };
    let ts = str_field("ts")?;
    let event = str_field("event")?;
    let prev = str_field("prev")?;
    let mac = str_field("mac")?;
    if !is_lower_hex_32(prev) {
        return Err(bad(line_no, LineFault::BadField("prev")));
    }
    let mut mac_bytes = [0u8; 32];
    if !is_lower_hex_32(mac) || hex::decode_to_slice(mac, &mut mac_bytes).is_err() {
        return Err(bad(line_no, LineFault::BadField("mac")));
    }
    let input = mac_input(seq, ts, event, &map, prev);
    if with_mac(input.clone(), mac).as_bytes() != bytes {
        return Err(bad(line_no, LineFault::NotCanonical));
    }
    if let Some(key) = key {
        let expected = hmac_sha256(key, &[input.as_bytes()]);
        if !bool::from(expected.as_ref().ct_eq(&mac_bytes)) {
            return Err(bad(line_no, LineFault::MacMismatch));
        }
    }
    if ts.parse::<jiff::Timestamp>().is_err() {
        return Err(bad(line_no, LineFault::BadField("ts")));
    }
    let gap = (event == GAP_EVENT).then(|| gap_seen(seq, ts, &map));
    Ok(Checked {
        seq,
        prev: prev.to_owned(),
        mac: mac.to_owned(),
        gap,
    })
}

/// Checks that an entry is at the right place: `seq` equals the line number, `prev` the hash of
/// the previous line.
fn check_position(line_no: u64, checked: &Checked, expected_prev: &str) -> Result<(), AuditError> {
    if checked.seq != line_no {
        return Err(bad(
            line_no,
            LineFault::SeqMismatch {
                found: checked.seq,
                expected: line_no,
            },
        ));
    }
    if checked.prev != expected_prev {
        return Err(bad(line_no, LineFault::PrevMismatch));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Line reading

/// One raw line.
struct RawLine {
    /// Bytes without the newline.
    bytes: Vec<u8>,
    /// Whether it ended with a newline.
    complete: bool,
}

/// Reads newline-terminated lines of at most [`MAX_LINE_LEN`] bytes.
struct LineReader<R> {
    reader: BufReader<R>,
    line_no: u64,
}

impl<R: Read> LineReader<R> {
    fn new(inner: R) -> LineReader<R> {
        LineReader {
            reader: BufReader::new(inner),
            line_no: 0,
        }
    }

    /// The next line, numbered `self.line_no` after the call; `None` at the end.
    fn next_line(&mut self, path: &Path) -> Result<Option<RawLine>, AuditError> {
        let mut bytes = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE_LEN as u64 + 1)
            .read_until(b'\n', &mut bytes)
            .map_err(io_err("read", path))?;
        if n == 0 {
            return Ok(None);
        }
        self.line_no += 1;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            return Ok(Some(RawLine {
                bytes,
                complete: true,
            }));
        }
        if bytes.len() > MAX_LINE_LEN {
            return Err(bad(self.line_no, LineFault::TooLong { max: MAX_LINE_LEN }));
        }
        Ok(Some(RawLine {
            bytes,
            complete: false,
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Writer

/// What [`AuditWriter::open`] cut off the end of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Number of bytes removed.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the removed bytes.
    pub sha256: String,
}

/// Appends entries to an audit log. Holds an exclusive lock on the file while it exists, so two
/// brokers cannot interleave their chains.
pub struct AuditWriter {
    path: PathBuf,
    file: File,
    key: Zeroizing<[u8; 32]>,
    /// `seq` of the last entry (0 if none).
    seq: u64,
    /// Hex SHA-256 of the last line.
    prev: String,
    /// `mac` of the last entry.
    last_mac: Option<String>,
    /// Length of the file up to the end of the last good line.
    len: u64,
    torn_tail: Option<TornTail>,
    /// Device and inode of the open file, taken at open.
    identity: (u64, u64),
    /// Entries that could not be written since the last successful append.
    gap: Option<AuditGap>,
    /// The file system refused `fallocate` (not Linux, or not supported): no reserve is kept.
    reserve_unsupported: bool,
}

/// A line ready to be written.
struct Built {
    seq: u64,
    ts: String,
    event: String,
    fields: Map<String, Value>,
    line: String,
    mac: String,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter")
            .field("path", &self.path)
            .field("last_seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl AuditWriter {
    /// Opens the log at `path` (creating it with mode 0600 if missing), takes its lock, and
    /// recovers `seq` and `prev` from the last line after checking that line's MAC under `key`.
    ///
    /// Only the last line is checked (use [`verify`] for the whole chain). If the file ends with
    /// a partial line (a write torn by a crash): when that line is a complete, valid next entry
    /// that only lacks its newline, the newline is added; otherwise the partial line is cut off
    /// and an entry [`TAIL_TRUNCATED_EVENT`] recording its length and SHA-256 is appended (see
    /// [`AuditWriter::torn_tail`]).
    ///
    /// # Errors
    /// [`AuditError::Locked`] if another process has the log open for writing;
    /// [`AuditError::BadLine`] if the last complete line fails its checks (an edited or forged
    /// tail, or a different key; the file is not modified: move it aside to start a new log);
    /// [`AuditError::Io`].
    pub fn open(path: &Path, key: &[u8; 32]) -> Result<AuditWriter, AuditError> {
        let file = private_options()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io_err("open", path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(AuditError::Locked {
                    path: path.to_path_buf(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_err("lock", path)(e)),
        }
        let mut reader = LineReader::new(&file);
        let mut last: Option<(u64, Vec<u8>)> = None;
        let mut good_len: u64 = 0;
        let mut tail: Option<Vec<u8>> = None;
        while let Some(line) = reader.next_line(path)? {
            if line.complete {
                good_len += line.bytes.len() as u64 + 1;
                last = Some((reader.line_no, line.bytes));
            } else {
                tail = Some(line.bytes);
            }
        }
        drop(reader);
        let identity = {
            use std::os::unix::fs::MetadataExt as _;
            let m = file.metadata().map_err(io_err("stat", path))?;
            (m.dev(), m.ino())
        };
        let mut writer = AuditWriter {
            path: path.to_path_buf(),
            file,
            key: Zeroizing::new(*key),
            seq: 0,
            prev: GENESIS_PREV.to_owned(),
            last_mac: None,
            len: good_len,
            torn_tail: None,
            identity,
            gap: None,
            reserve_unsupported: false,
        };
        if let Some((line_no, bytes)) = last {
            let checked = check_line(line_no, &bytes, Some(key))?;
            writer.seq = checked.seq;
            writer.prev = sha256_hex(&bytes);
            writer.last_mac = Some(checked.mac);
        }
        if let Some(tail) = tail {
            writer.recover_tail(&tail)?;
        }
        // Take the reserve now if there is room (a full disk is the caller's next error).
        let _ = writer.reserve(0);
        Ok(writer)
    }

    /// Handles a partial last line: keep it (adding the newline) if it is a valid next entry,
    /// otherwise cut it off and log that.
    fn recover_tail(&mut self, tail: &[u8]) -> Result<(), AuditError> {
        let next = self.seq + 1;
        if let Ok(checked) = check_line(next, tail, Some(&self.key))
            && check_position(next, &checked, &self.prev).is_ok()
        {
            self.file
                .write_all(b"\n")
                .and_then(|()| self.file.sync_data())
                .map_err(io_err("append newline", &self.path))?;
            self.seq = checked.seq;
            self.prev = sha256_hex(tail);
            self.last_mac = Some(checked.mac);
            self.len += tail.len() as u64 + 1;
            return Ok(());
        }
        self.file
            .set_len(self.len)
            .and_then(|()| self.file.sync_data())
            .map_err(io_err("truncate torn line", &self.path))?;
        let torn = TornTail {
            bytes: tail.len() as u64,
            sha256: sha256_hex(tail),
        };
        let mut fields = Map::new();
        fields.insert("bytes".into(), Value::from(torn.bytes));
        fields.insert("sha256".into(), Value::from(torn.sha256.clone()));
        self.torn_tail = Some(torn);
        self.append_at(TAIL_TRUNCATED_EVENT, fields, jiff::Timestamp::now())
            .map(|_| ())
    }

    /// Appends one entry **that gates an action**: the caller acts only if this returns `Ok`.
    /// The entry gets the next `seq`, the current time (UTC, microseconds), `event`, the extra
    /// `fields`, `prev` and `mac`. Before it, a pending [`GAP_EVENT`] entry is written (see
    /// [`AuditWriter::gap`]). The line and its newline are written with one `write` (a short
    /// write is an error and is cut back off), then `fdatasync`ed. On Linux the writer first
    /// makes sure [`RESERVE_BYTES`] stay allocated past the new entry, and refuses the entry when
    /// they cannot (the disk is full or nearly), so that [`AuditWriter::append_record`] always
    /// finds room. Returns the entry as written.
    ///
    /// `event`: 1 to [`MAX_EVENT_LEN`] bytes, no control characters (convention: dotted
    /// lowercase, `grant.approved`). `fields`: any JSON except member names in
    /// [`RESERVED_FIELDS`] at the top level and floating-point numbers anywhere (integers only,
    /// so the canonical form is the same in every language). **Never pass a secret value.**
    ///
    /// # Errors
    /// [`AuditError::InvalidEntry`] (nothing written); [`AuditError::PathChanged`] (nothing
    /// written, see [`AuditWriter::record_path_change`]); [`AuditError::Io`] for a full disk,
    /// a quota, an I/O error, a short write or a failed sync (the file is cut back to its last
    /// good line when possible). Every failure but `InvalidEntry` is counted in the pending
    /// gap as [`Unwritten::Refused`].
    pub fn append(&mut self, event: &str, fields: Map<String, Value>) -> Result<Value, AuditError> {
        let result = self.append_gated(event, fields);
        if let Err(e) = &result {
            self.note_unwritten(event, Unwritten::Refused, e);
        }
        result
    }

    /// Appends one entry that records a refusal or a failure the requester can repeat at will
    /// (a wrong factor, a locked-out attempt, a deny rule, a denial): written like
    /// [`AuditWriter::append`], only while the reserve can be kept after it, so that repeating
    /// it never drains the space kept for revocations and the ends of runs. Nothing is refused
    /// because of it; when it cannot be written it is counted in the pending gap as
    /// [`Unwritten::Lost`].
    ///
    /// # Errors
    /// As [`AuditWriter::append`].
    pub fn append_if_room(
        &mut self,
        event: &str,
        fields: Map<String, Value>,
    ) -> Result<Value, AuditError> {
        let result = self.append_gated(event, fields);
        if let Err(e) = &result {
            self.note_unwritten(event, Unwritten::Lost, e);
        }
        result
    }

    fn append_gated(
        &mut self,
        event: &str,
        fields: Map<String, Value>,
    ) -> Result<Value, AuditError> {
        validate_entry(event, &fields)?;
        self.check_path()?;
        // The gap entry and this one must both fit with the reserve kept after them: a refused
        // entry never eats into the reserve, however often it is tried.
        let len = self
            .build(event, fields.clone(), jiff::Timestamp::now())?
            .line
            .len() as u64
            + 1;
        self.reserve(self.gap_len()? + len)?;
        self.write_gap()?;
        let built = self.build(event, fields, jiff::Timestamp::now())?;
        self.commit(built)
    }

    /// Length of the pending gap entry's line with its newline (0 without a gap).
    fn gap_len(&self) -> Result<u64, AuditError> {
        match &self.gap {
            None => Ok(0),
            Some(gap) => Ok(self
                .build(GAP_EVENT, gap.fields(), jiff::Timestamp::now())?
                .line
                .len() as u64
                + 1),
        }
    }

    /// Appends one entry **that records something that happens anyway** (a revocation, a lock,
    /// the end of a run, a refusal): like [`AuditWriter::append`] but it may use the reserved
    /// space, so it succeeds on a full disk as long as the reserve lasts.
    ///
    /// # Errors
    /// As [`AuditWriter::append`]; every failure but `InvalidEntry` is counted in the pending
    /// gap as [`Unwritten::Lost`], to be written at the next possible append.
    pub fn append_record(
        &mut self,
        event: &str,
        fields: Map<String, Value>,
    ) -> Result<Value, AuditError> {
        let result = validate_entry(event, &fields)
            .and_then(|()| self.check_path())
            .and_then(|()| self.write_gap())
            .and_then(|()| self.append_at(event, fields, jiff::Timestamp::now()));
        if let Err(e) = &result {
            self.note_unwritten(event, Unwritten::Lost, e);
        }
        result
    }

    /// Appends several entries **that record things that happened anyway**, in order, each as
    /// [`AuditWriter::append_record`] would, but with one `write` and one `fdatasync` for all
    /// of them: a busy source (a run's egress proxy, one entry per HTTP request) pays one sync
    /// per batch instead of one per entry. The chain is the same as entry-by-entry appends
    /// (consecutive `seq`, each `prev` the hash of the line before). All or nothing: on a short
    /// write or a failed sync the file is cut back to its last good line and every entry of
    /// the batch is counted in the pending gap as [`Unwritten::Lost`]. Returns how many entries
    /// were written.
    ///
    /// # Errors
    /// [`AuditError::InvalidEntry`] when any entry is invalid (nothing written, nothing
    /// counted: the caller's bug); otherwise as [`AuditWriter::append_record`].
    pub fn append_records(
        &mut self,
        entries: Vec<(String, Map<String, Value>)>,
    ) -> Result<usize, AuditError> {
        for (event, fields) in &entries {
            validate_entry(event, fields)?;
        }
        if entries.is_empty() {
            return Ok(0);
        }
        let events: Vec<String> = entries.iter().map(|(e, _)| e.clone()).collect();
        let result = self
            .check_path()
            .and_then(|()| self.write_gap())
            .and_then(|()| self.commit_batch(entries));
        if let Err(e) = &result {
            for event in &events {
                self.note_unwritten(event, Unwritten::Lost, e);
            }
        }
        result
    }

    /// Builds and writes a batch with one `write` and one `fdatasync`; on failure restores the
    /// chain's state and cuts the file back.
    fn commit_batch(
        &mut self,
        entries: Vec<(String, Map<String, Value>)>,
    ) -> Result<usize, AuditError> {
        let saved = (self.seq, self.prev.clone(), self.last_mac.clone());
        let n = entries.len();
        let mut buf = Vec::new();
        let now = jiff::Timestamp::now();
        for (event, fields) in entries {
            let built = match self.build(&event, fields, now) {
                Ok(b) => b,
                Err(e) => {
                    (self.seq, self.prev, self.last_mac) = saved;
                    return Err(e);
                }
            };
            buf.extend_from_slice(built.line.as_bytes());
            buf.push(b'\n');
            self.seq = built.seq;
            self.prev = sha256_hex(built.line.as_bytes());
            self.last_mac = Some(built.mac);
        }
        let written = loop {
            match self.file.write(&buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        let synced = match written {
            Ok(w) if w == buf.len() => self.file.sync_data(),
            Ok(w) => Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!(
                    "short write: {w} of {} bytes written (the file system is probably full)",
                    buf.len()
                ),
            )),
            Err(e) => Err(e),
        };
        if let Err(e) = synced {
            (self.seq, self.prev, self.last_mac) = saved;
            self.cut_back();
            return Err(io_err("append", &self.path)(e));
        }
        self.len += buf.len() as u64;
        Ok(n)
    }

    /// Makes the log ready for an action whose entry (of about `entry_len` bytes; at least
    /// 4 KiB are allowed for) will be written after it with [`AuditWriter::append_record`]: the
    /// path still names the file, room for the pending gap entry, the entry and
    /// [`RESERVE_BYTES`] is allocated, and the pending gap entry is written. Writes nothing else.
    ///
    /// # Errors
    /// As [`AuditWriter::append`]; a failure is counted in the pending gap as `event`
    /// [`Unwritten::Refused`].
    pub fn ready(&mut self, event: &str, entry_len: u64) -> Result<(), AuditError> {
        let result = self
            .check_path()
            .and_then(|()| self.gap_len())
            .and_then(|gap| self.reserve(gap + entry_len.max(4096)))
            .and_then(|()| self.write_gap());
        if let Err(e) = &result {
            self.note_unwritten(event, Unwritten::Refused, e);
        }
        result
    }

    /// Entries that could not be written since the last successful append, if any. The next
    /// append of any kind writes them first as one [`GAP_EVENT`] entry.
    pub fn gap(&self) -> Option<&AuditGap> {
        self.gap.as_ref()
    }

    /// Takes the pending gap out of the writer (before it is dropped: the broker keeps it across
    /// a lock and hands it to the next writer with [`AuditWriter::carry_gap`]).
    pub fn take_gap(&mut self) -> Option<AuditGap> {
        self.gap.take()
    }

    /// Adds a gap left by an earlier writer; it is written before this writer's next entry.
    pub fn carry_gap(&mut self, gap: AuditGap) {
        match &mut self.gap {
            Some(g) => g.merge(gap),
            None => self.gap = Some(gap),
        }
    }

    /// Writes the pending gap entry now, if there is one and the reserve can be kept after it
    /// (checking the path first). Returns whether one was written. For a periodic retry: the
    /// reserve is only for entries that record what happened, never for a gap made of refusals
    /// an agent can repeat at will.
    ///
    /// # Errors
    /// As [`AuditWriter::append`]; the gap stays pending (and is not counted again).
    pub fn flush_gap(&mut self) -> Result<bool, AuditError> {
        if self.gap.is_none() {
            return Ok(false);
        }
        self.check_path()?;
        self.reserve(self.gap_len()?)?;
        self.write_gap()?;
        Ok(true)
    }

    /// Writes the pending gap entry now, if there is one, **using the reserve** (checking the
    /// path first): for the last moment a writer has, before it is closed (a broker stopping),
    /// when nothing else will need the reserve. Returns whether one was written.
    ///
    /// # Errors
    /// As [`AuditWriter::append_record`]; the gap stays pending.
    pub fn flush_gap_closing(&mut self) -> Result<bool, AuditError> {
        if self.gap.is_none() {
            return Ok(false);
        }
        self.check_path()?;
        self.write_gap()?;
        Ok(true)
    }

    /// Counts an entry that could not be written in the pending gap (the writer does this itself
    /// for its own failures; `InvalidEntry` is never counted: it is the caller's bug, not a gap).
    pub fn note_unwritten(&mut self, event: &str, kind: Unwritten, error: &AuditError) {
        if matches!(error, AuditError::InvalidEntry { .. }) {
            return;
        }
        let now = jiff::Timestamp::now();
        let gap = self.gap.get_or_insert_with(|| AuditGap {
            lost: 0,
            refused: 0,
            events: BTreeMap::new(),
            first: now,
            last: now,
            error: match error {
                AuditError::Io { op, source, .. } => format!("{op}: {source}"),
                other => other.to_string(),
            },
        });
        gap.note(event, kind, now);
    }

    /// Writes the pending gap entry without a path check; it stays pending on failure.
    fn write_gap(&mut self) -> Result<(), AuditError> {
        let Some(gap) = &self.gap else {
            return Ok(());
        };
        let fields = gap.fields();
        self.append_at(GAP_EVENT, fields, jiff::Timestamp::now())?;
        self.gap = None;
        Ok(())
    }

    /// Keeps `extra` + [`RESERVE_BYTES`] bytes allocated past the last good line (Linux
    /// `fallocate(FALLOC_FL_KEEP_SIZE)`; the size does not change), and fails with ENOSPC when
    /// the file system has no free block left after that (`fstatvfs`). A file system without
    /// `fallocate` gets no reserve (see [`AuditWriter::reserve_supported`]).
    fn reserve(&mut self, extra: u64) -> Result<(), AuditError> {
        #[cfg(target_os = "linux")]
        {
            use rustix::fs::{FallocateFlags, fallocate};
            use rustix::io::Errno;
            if !self.reserve_unsupported {
                match fallocate(
                    &self.file,
                    FallocateFlags::KEEP_SIZE,
                    self.len,
                    extra.saturating_add(RESERVE_BYTES),
                ) {
                    Ok(()) => {}
                    Err(e)
                        if [Errno::OPNOTSUPP, Errno::NOSYS, Errno::NODEV, Errno::INVAL]
                            .contains(&e) =>
                    {
                        self.reserve_unsupported = true;
                    }
                    Err(e) => return Err(io_err("reserve space in", &self.path)(e.into())),
                }
            }
            // Room for this entry and the reserve, but none left on the file system (or no
            // reserve at all): it is full, only blocks allocated earlier remain. Refused too, so
            // that what happens on a full disk does not depend on how much of the last allocated
            // block is left.
            match rustix::fs::fstatvfs(&self.file) {
                Ok(st) if st.f_bavail == 0 => Err(io_err("reserve space in", &self.path)(
                    std::io::Error::from_raw_os_error(Errno::NOSPC.raw_os_error()),
                )),
                _ => Ok(()),
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = extra;
            self.reserve_unsupported = true;
            Ok(())
        }
    }

    /// Whether the writer keeps [`RESERVE_BYTES`] allocated past the log's end (false when the
    /// file system refused `fallocate`, or not on Linux).
    pub fn reserve_supported(&self) -> bool {
        !self.reserve_unsupported
    }

    /// Checks that the log's path still names the file this writer holds open: `stat` of the
    /// path against the device and inode the file had at open. A log moved aside, deleted, or
    /// replaced by another file (even an identical copy) fails.
    ///
    /// # Errors
    /// [`AuditError::PathChanged`] with [`PathChange::Missing`] when nothing is at the path,
    /// [`PathChange::Replaced`] when another file is; [`AuditError::Io`] when the path cannot be
    /// examined for another reason (permissions).
    pub fn check_path(&self) -> Result<(), AuditError> {
        use std::os::unix::fs::MetadataExt as _;
        let change = match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.identity => return Ok(()),
            Ok(_) => PathChange::Replaced,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PathChange::Missing,
            Err(e) => return Err(io_err("stat", &self.path)(e)),
        };
        Err(AuditError::PathChanged {
            path: self.path.clone(),
            change,
        })
    }

    /// Appends [`PATH_CHANGED_EVENT`] to the open file **without** the path check: the last
    /// entry of this chain, written to the file wherever it now is, so the moved log itself
    /// records when its writer noticed. Fields: `path` and `change` (`"missing"`/`"replaced"`).
    ///
    /// # Errors
    /// As [`AuditWriter::append`], except [`AuditError::PathChanged`].
    pub fn record_path_change(&mut self, change: PathChange) -> Result<Value, AuditError> {
        let mut fields = Map::new();
        fields.insert(
            "path".into(),
            Value::from(self.path.to_string_lossy().into_owned()),
        );
        fields.insert("change".into(), Value::from(change.as_str()));
        self.append_at(PATH_CHANGED_EVENT, fields, jiff::Timestamp::now())
    }

    /// Writes one entry at a given time (the known-answer tests use fixed times): no path check,
    /// no gap, no reserve.
    pub(crate) fn append_at(
        &mut self,
        event: &str,
        fields: Map<String, Value>,
        at: jiff::Timestamp,
    ) -> Result<Value, AuditError> {
        let built = self.build(event, fields, at)?;
        self.commit(built)
    }

    /// Forms the next line.
    fn build(
        &self,
        event: &str,
        fields: Map<String, Value>,
        at: jiff::Timestamp,
    ) -> Result<Built, AuditError> {
        validate_entry(event, &fields)?;
        let seq = self.seq + 1;
        let ts = format_ts(at);
        let input = mac_input(seq, &ts, event, &fields, &self.prev);
        let mac = hex::encode(hmac_sha256(&self.key, &[input.as_bytes()]).as_ref());
        let line = with_mac(input, &mac);
        if line.len() > MAX_LINE_LEN {
            return Err(AuditError::InvalidEntry {
                reason: format!("the entry is longer than {MAX_LINE_LEN} bytes"),
            });
        }
        Ok(Built {
            seq,
            ts,
            event: event.to_owned(),
            fields,
            line,
            mac,
        })
    }

    /// Writes a built line and its newline with one `write`, then `fdatasync`s; a short write or
    /// a failed sync cuts the file back to its last good line.
    fn commit(&mut self, built: Built) -> Result<Value, AuditError> {
        let Built {
            seq,
            ts,
            event,
            fields,
            line,
            mac,
        } = built;
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        let written = loop {
            match self.file.write(&buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        let synced = match written {
            Ok(n) if n == buf.len() => self.file.sync_data(),
            Ok(n) => Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!(
                    "short write: {n} of {} bytes written (the file system is probably full)",
                    buf.len()
                ),
            )),
            Err(e) => Err(e),
        };
        if let Err(e) = synced {
            self.cut_back();
            return Err(io_err("append", &self.path)(e));
        }
        self.len += buf.len() as u64;
        self.seq = seq;
        let prev = std::mem::replace(&mut self.prev, sha256_hex(line.as_bytes()));
        self.last_mac = Some(mac.clone());

        let mut entry = Map::new();
        entry.insert("seq".into(), Value::from(seq));
        entry.insert("ts".into(), Value::from(ts));
        entry.insert("event".into(), Value::from(event));
        entry.extend(fields);
        entry.insert("prev".into(), Value::from(prev));
        entry.insert("mac".into(), Value::from(mac));
        Ok(Value::Object(entry))
    }

    /// After a failed append: cuts a partial line back off so the chain stays intact (if that
    /// fails too, the next [`AuditWriter::open`] recovers the torn line). Only when the file
    /// grew: truncating to its own size releases the reserve on some file systems.
    fn cut_back(&mut self) {
        let grew = self.file.metadata().map_or(true, |m| m.len() != self.len);
        if grew {
            let _ = self.file.set_len(self.len);
            let _ = self.file.sync_data();
            // The truncation may have released the reserve: take it back if there is room.
            let _ = self.reserve(0);
        }
    }

    /// `seq` of the last entry (0 for an empty log).
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// `mac` of the last entry (lowercase hex), `None` for an empty log. With
    /// [`AuditWriter::last_seq`], what to store as the vault's
    /// [`AuditCheckpoint`].
    pub fn last_mac(&self) -> Option<&str> {
        self.last_mac.as_deref()
    }

    /// The current position as a checkpoint, `None` for an empty log.
    pub fn checkpoint(&self) -> Option<AuditCheckpoint> {
        self.last_mac.as_ref().map(|mac| AuditCheckpoint {
            seq: self.seq,
            mac: mac.clone(),
        })
    }

    /// What [`AuditWriter::open`] cut off the end of the file, if anything.
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.torn_tail.as_ref()
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `ts` as written: RFC 3339 in UTC with exactly six fractional digits (microseconds) and `Z`.
fn format_ts(at: jiff::Timestamp) -> String {
    format!("{at:.6}")
}

fn validate_entry(event: &str, fields: &Map<String, Value>) -> Result<(), AuditError> {
    if event.is_empty() || event.len() > MAX_EVENT_LEN || event.chars().any(char::is_control) {
        return Err(AuditError::InvalidEntry {
            reason: format!(
                "the event name must be 1 to {MAX_EVENT_LEN} bytes without control characters"
            ),
        });
    }
    for (name, value) in fields {
        if RESERVED_FIELDS.contains(&name.as_str()) {
            return Err(AuditError::InvalidEntry {
                reason: format!("the field name `{name}` is reserved"),
            });
        }
        if has_float(value) {
            return Err(AuditError::InvalidEntry {
                reason: format!(
                    "field `{name}` holds a floating-point number; log integers (e.g. milliseconds) instead"
                ),
            });
        }
    }
    Ok(())
}

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => !(n.is_i64() || n.is_u64()),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(map) => map.values().any(has_float),
        Value::Null | Value::Bool(_) | Value::String(_) => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Verification and reading

fn open_existing(path: &Path) -> Result<File, AuditError> {
    File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            AuditError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            io_err("open", path)(e)
        }
    })
}

/// Verifies the whole log at `path` under `key`: every line complete, JSON, canonical, with a
/// valid MAC, `seq` equal to its line number and `prev` equal to the SHA-256 of the line before.
/// Returns the number of entries (0 for an empty file).
///
/// Detects edited, forged, deleted, inserted and reordered lines, except the deletion of lines at
/// the very end; compare with the vault's checkpoint for that ([`verify_checkpoint`]).
///
/// # Errors
/// [`AuditError::BadLine`] naming the first bad line (1-based) and why;
/// [`AuditError::NotFound`]; [`AuditError::Io`].
pub fn verify(path: &Path, key: &[u8; 32]) -> Result<u64, AuditError> {
    verify_report(path, key, None).map(|r| r.entries)
}

/// What [`verify_report`] found in a log that verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of entries.
    pub entries: u64,
    /// The [`GAP_EVENT`] entries, in order: each says how many entries could not be written
    /// before it (the chain is intact, but the log is not complete).
    pub gaps: Vec<GapSeen>,
}

/// [`verify`] (or, with `checkpoint`, [`verify_checkpoint`]) that also reports the log's gaps.
///
/// # Errors
/// As [`verify_checkpoint`].
pub fn verify_report(
    path: &Path,
    key: &[u8; 32],
    checkpoint: Option<&AuditCheckpoint>,
) -> Result<VerifyReport, AuditError> {
    verify_inner(path, key, checkpoint, None).map(|(r, _)| r)
}

/// [`verify_report`] that also returns the last `limit` entries (parsed JSON objects, oldest
/// first) of the very bytes it verified, in one read of the file. A caller that acts on the
/// entries (the OpenBao lease reaper) must use this rather than [`verify_report`] followed by
/// [`read_entries`]: between two opens of the path, a process that can write the directory
/// can swap in a file whose entries were never verified.
///
/// # Errors
/// As [`verify_report`].
pub fn verify_and_read(
    path: &Path,
    key: &[u8; 32],
    checkpoint: Option<&AuditCheckpoint>,
    limit: usize,
) -> Result<(VerifyReport, Vec<Value>), AuditError> {
    verify_inner(path, key, checkpoint, Some(limit))
}

/// Like [`verify`], and also checks that the log contains the entry `checkpoint` names (same
/// `seq`, same `mac`), so cutting entries off the end, or swapping in an older log, is detected.
///
/// # Errors
/// As [`verify`], plus [`AuditError::CheckpointMismatch`].
pub fn verify_checkpoint(
    path: &Path,
    key: &[u8; 32],
    checkpoint: &AuditCheckpoint,
) -> Result<u64, AuditError> {
    verify_report(path, key, Some(checkpoint)).map(|r| r.entries)
}

fn verify_inner(
    path: &Path,
    key: &[u8; 32],
    checkpoint: Option<&AuditCheckpoint>,
    keep: Option<usize>,
) -> Result<(VerifyReport, Vec<Value>), AuditError> {
    let mut kept: VecDeque<Vec<u8>> = VecDeque::new();
    let file = open_existing(path)?;
    let mut gaps = Vec::new();
    let mut reader = LineReader::new(file);
    let mut prev = GENESIS_PREV.to_owned();
    let mut checkpoint_found = checkpoint.is_none_or(|c| c.seq == 0);
    while let Some(line) = reader.next_line(path)? {
        let line_no = reader.line_no;
        if !line.complete {
            return Err(bad(line_no, LineFault::Incomplete));
        }
        let checked = check_line(line_no, &line.bytes, Some(key))?;
        check_position(line_no, &checked, &prev)?;
        if let Some(c) = checkpoint
            && c.seq == checked.seq
        {
            if c.mac != checked.mac {
                return Err(AuditError::CheckpointMismatch {
                    checkpoint_seq: c.seq,
                    entries: line_no,
                });
            }
            checkpoint_found = true;
        }
        prev = sha256_hex(&line.bytes);
        gaps.extend(checked.gap);
        if let Some(limit) = keep {
            if kept.len() == limit {
                kept.pop_front();
            }
            if limit > 0 {
                kept.push_back(line.bytes);
            }
        }
    }
    let entries = reader.line_no;
    if !checkpoint_found {
        return Err(AuditError::CheckpointMismatch {
            checkpoint_seq: checkpoint.map_or(0, |c| c.seq),
            entries,
        });
    }
    // Each kept line passed `check_line`, which parsed it as a JSON object.
    let values = kept
        .into_iter()
        .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
        .collect();
    Ok((VerifyReport { entries, gaps }, values))
}

/// What a log that cannot be continued (its last line fails its checks) still proves, against
/// the vault's sealed checkpoint: how far it verifies from its start, and whether the entry the
/// checkpoint names is in that verified part. See [`salvage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salvage {
    /// Entries from the first line on whose chain and MACs verify (the log is sound through
    /// line `verified`).
    pub verified: u64,
    /// The first line that fails (1-based) and why; `None` when every complete line verifies.
    pub first_bad: Option<(u64, String)>,
    /// The `seq` of the checkpoint it was compared with, if any.
    pub sealed_seq: Option<u64>,
    /// Whether the checkpoint's entry (same `seq`, same `mac`) is among the verified lines.
    pub sealed_found: bool,
}

impl Salvage {
    /// Entries the checkpoint vouched for that the log no longer proves: lines
    /// `verified + 1 ..= sealed_seq` when the checkpoint's entry was not found (cut off, or
    /// replaced by what follows them), else 0.
    pub fn missing(&self) -> u64 {
        match self.sealed_seq {
            Some(s) if !self.sealed_found => s.saturating_sub(self.verified),
            _ => 0,
        }
    }
}

/// Verifies the log at `path` from its first line for as long as it verifies, and compares
/// what verified with `checkpoint`: the evidence kept about a log that is moved aside
/// ([`quarantine`]) because it cannot be continued. Never fails on a bad line (that is what it
/// measures); a partial last line counts as bad.
///
/// # Errors
/// [`AuditError::NotFound`]; [`AuditError::Io`].
pub fn salvage(
    path: &Path,
    key: &[u8; 32],
    checkpoint: Option<&AuditCheckpoint>,
) -> Result<Salvage, AuditError> {
    let file = open_existing(path)?;
    let mut reader = LineReader::new(file);
    let mut prev = GENESIS_PREV.to_owned();
    let mut out = Salvage {
        verified: 0,
        first_bad: None,
        sealed_seq: checkpoint.map(|c| c.seq),
        sealed_found: checkpoint.is_none_or(|c| c.seq == 0),
    };
    loop {
        let line = match reader.next_line(path) {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e @ AuditError::Io { .. }) => return Err(e),
            Err(e) => {
                out.first_bad = Some((out.verified + 1, e.to_string()));
                break;
            }
        };
        let line_no = reader.line_no;
        let checked = if line.complete {
            check_line(line_no, &line.bytes, Some(key))
                .and_then(|c| check_position(line_no, &c, &prev).map(|()| c))
        } else {
            Err(bad(line_no, LineFault::Incomplete))
        };
        let checked = match checked {
            Ok(c) => c,
            Err(e) => {
                out.first_bad = Some((line_no, e.to_string()));
                break;
            }
        };
        if let Some(c) = checkpoint
            && c.seq == checked.seq
            && c.mac == checked.mac
        {
            out.sealed_found = true;
        }
        prev = sha256_hex(&line.bytes);
        out.verified = line_no;
    }
    Ok(out)
}

/// The head of a chain that verifies: how many entries, and the SHA-256 of the last line (which,
/// through each line's `prev`, commits to every line before it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// Number of entries.
    pub entries: u64,
    /// Lowercase hex SHA-256 of the last line without its newline ([`GENESIS_PREV`] when empty).
    pub sha256: String,
    /// The last entry's `mac`, if any.
    pub last_mac: Option<String>,
}

/// Verifies a whole log held in memory (`bytes`, every line ending in `\n`) and returns its head:
/// with `key`, as [`verify`] does; without it, everything but the MACs (form, canonical bytes,
/// `seq`, the `prev` chain), for a reader who must not hold the key and trusts the head by other
/// means (the Ed25519 signature of a CI broker: `docs/ci.md`).
///
/// # Errors
/// [`AuditError::BadLine`] naming the first bad line (1-based) and why.
pub fn chain_head(bytes: &[u8], key: Option<&[u8; 32]>) -> Result<ChainHead, AuditError> {
    let path = Path::new("(in memory)");
    let mut reader = LineReader::new(bytes);
    let mut prev = GENESIS_PREV.to_owned();
    let mut last_mac = None;
    while let Some(line) = reader.next_line(path)? {
        let line_no = reader.line_no;
        if !line.complete {
            return Err(bad(line_no, LineFault::Incomplete));
        }
        let checked = check_line(line_no, &line.bytes, key)?;
        check_position(line_no, &checked, &prev)?;
        prev = sha256_hex(&line.bytes);
        last_mac = Some(checked.mac);
    }
    Ok(ChainHead {
        entries: reader.line_no,
        sha256: prev,
        last_mac,
    })
}

/// Reads the entries of the log at `path` for display, without verifying MACs or the chain: all
/// of them, or the last `limit`. A missing file gives an empty list; an incomplete last line (a
/// torn write) is skipped.
///
/// # Errors
/// [`AuditError::BadLine`] for a line that is not a JSON object or is too long;
/// [`AuditError::Io`].
pub fn read_entries(path: &Path, limit: Option<usize>) -> Result<Vec<Value>, AuditError> {
    let file = match open_existing(path) {
        Ok(file) => file,
        Err(AuditError::NotFound { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut reader = LineReader::new(file);
    let mut kept: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
    while let Some(line) = reader.next_line(path)? {
        if !line.complete {
            break;
        }
        if limit == Some(kept.len()) {
            kept.pop_front();
        }
        if limit != Some(0) {
            kept.push_back((reader.line_no, line.bytes));
        }
    }
    kept.into_iter()
        .map(
            |(line_no, bytes)| match serde_json::from_slice::<Value>(&bytes) {
                Ok(v @ Value::Object(_)) => Ok(v),
                Ok(_) => Err(bad(line_no, LineFault::NotObject)),
                Err(e) => Err(bad(
                    line_no,
                    LineFault::NotJson {
                        category: "syntax",
                        column: e.column(),
                    },
                )),
            },
        )
        .collect()
}

/// Moves a log that cannot be continued (for example after [`AuditWriter::open`] reported a bad
/// last line) out of the way: renames it to `<name>.bad-<UTC timestamp>` in the same directory
/// and returns the new path. A new log can then be started at `path`; the old one stays as
/// evidence.
///
/// # Errors
/// [`AuditError::Io`].
pub fn quarantine(path: &Path) -> Result<PathBuf, AuditError> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".bad-{}",
        jiff::Timestamp::now().strftime("%Y%m%dT%H%M%S%.fZ")
    ));
    let target = path.with_file_name(name);
    std::fs::rename(path, &target).map_err(io_err("rename", path))?;
    Ok(target)
}

#[cfg(test)]
mod failure_tests {
    //! Appends that fail the way a full disk, a quota or a torn write makes them fail: the
    //! writer's file is swapped for `/dev/full` (every write: ENOSPC) or a one-page
    //! non-blocking pipe (a short write), then swapped back.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
    use super::*;
    use serde_json::json;

    const KEY: [u8; 32] = [9u8; 32];

    fn fields(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn entries(path: &Path) -> Vec<Value> {
        read_entries(path, None).unwrap()
    }

    #[test]
    fn enospc_refuses_and_loses_nothing_silently_and_the_gap_comes_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut w = AuditWriter::open(&path, &KEY).unwrap();
        w.append("unlock", Map::new()).unwrap();
        let before = std::fs::read(&path).unwrap();

        let full = File::options().write(true).open("/dev/full").unwrap();
        let real = std::mem::replace(&mut w.file, full);
        let e = w
            .append("approve", fields(json!({"grant_id": "g-1"})))
            .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("No space left on device"), "{text}");
        assert!(w.ready("run_start", 0).is_err());
        assert!(w.append_record("revoke", Map::new()).is_err());
        assert!(w.append_record("revoke", Map::new()).is_err());
        // InvalidEntry is the caller's bug, not a gap.
        assert!(w.append("", Map::new()).is_err());
        assert!(w.flush_gap().is_err(), "the gap cannot be written either");
        let gap = w.gap().cloned().expect("a gap is pending");
        assert_eq!((gap.lost, gap.refused, gap.entries()), (2, 2, 4));
        assert_eq!(gap.events.get("approve"), Some(&1));
        assert_eq!(gap.events.get("run_start"), Some(&1));
        assert_eq!(gap.events.get("revoke"), Some(&2));
        assert!(
            gap.error.contains("No space left on device"),
            "{}",
            gap.error
        );
        assert!(gap.first <= gap.last);
        assert_eq!(w.last_seq(), 1, "nothing was counted as written");

        w.file = real;
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "the file is unchanged"
        );
        let e = w.append("request", Map::new()).unwrap();
        assert_eq!(e["seq"], json!(3), "the gap entry went first");
        assert!(w.gap().is_none());
        let all = entries(&path);
        assert_eq!(all.len(), 3);
        assert_eq!(all[1]["event"], json!(GAP_EVENT));
        assert_eq!(all[1]["lost"], json!(2));
        assert_eq!(all[1]["refused"], json!(2));
        assert_eq!(
            all[1]["events"],
            json!({"approve": 1, "revoke": 2, "run_start": 1})
        );
        assert!(
            all[1]["error"]
                .as_str()
                .unwrap()
                .contains("No space left on device")
        );
        assert_eq!(all[2]["event"], json!("request"));
        let report = verify_report(&path, &KEY, None).unwrap();
        assert_eq!(report.entries, 3);
        assert_eq!(report.gaps.len(), 1);
        assert_eq!(report.gaps[0].seq, 2);
        assert_eq!((report.gaps[0].lost, report.gaps[0].refused), (2, 2));
        assert_eq!(report.gaps[0].events.get("revoke"), Some(&2));
    }

    #[test]
    fn a_batch_chains_like_single_appends_and_fails_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut w = AuditWriter::open(&path, &KEY).unwrap();
        w.append_record("run_start", Map::new()).unwrap();
        let batch = |n: u64| {
            (0..n)
                .map(|i| ("egress_request".to_owned(), fields(json!({"i": i}))))
                .collect::<Vec<_>>()
        };
        assert_eq!(w.append_records(batch(3)).unwrap(), 3);
        assert_eq!(w.append_records(Vec::new()).unwrap(), 0);
        // An invalid entry refuses the whole batch before anything is written.
        let mut bad = batch(2);
        bad.push((String::new(), Map::new()));
        assert!(matches!(
            w.append_records(bad),
            Err(AuditError::InvalidEntry { .. })
        ));
        let before = std::fs::read(&path).unwrap();
        let full = File::options().write(true).open("/dev/full").unwrap();
        let real = std::mem::replace(&mut w.file, full);
        assert!(w.append_records(batch(2)).is_err());
        assert_eq!(
            w.last_seq(),
            4,
            "nothing of the failed batch counts as written"
        );
        w.file = real;
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(w.gap().unwrap().events.get("egress_request"), Some(&2));
        w.append_record("run_end", Map::new()).unwrap();
        let all = entries(&path);
        let events: Vec<_> = all.iter().map(|e| e["event"].as_str().unwrap()).collect();
        assert_eq!(
            events,
            [
                "run_start",
                "egress_request",
                "egress_request",
                "egress_request",
                GAP_EVENT,
                "run_end"
            ]
        );
        assert_eq!(all[3]["i"], json!(2));
        assert_eq!(verify(&path, &KEY).unwrap(), 6);
    }

    #[test]
    fn a_gap_carried_to_a_new_writer_is_written_before_its_first_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut w = AuditWriter::open(&path, &KEY).unwrap();
        let full = File::options().write(true).open("/dev/full").unwrap();
        let real = std::mem::replace(&mut w.file, full);
        assert!(w.append_record("lock", Map::new()).is_err());
        w.file = real;
        let gap = w.take_gap().unwrap();
        drop(w);
        let mut w = AuditWriter::open(&path, &KEY).unwrap();
        w.carry_gap(gap);
        w.append_record("unlock", Map::new()).unwrap();
        let all = entries(&path);
        assert_eq!(all[0]["event"], json!(GAP_EVENT));
        assert_eq!(all[0]["events"], json!({"lock": 1}));
        assert_eq!(all[1]["event"], json!("unlock"));
        verify(&path, &KEY).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_short_write_is_an_error_and_is_not_counted_as_written() {
        use std::os::fd::AsFd as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut w = AuditWriter::open(&path, &KEY).unwrap();
        w.append("unlock", Map::new()).unwrap();
        // A one-page non-blocking pipe takes the first 4096 bytes of a longer line and no more.
        let (reader, writer) = rustix::pipe::pipe().unwrap();
        rustix::pipe::fcntl_setpipe_size(writer.as_fd(), 4096).unwrap();
        rustix::fs::fcntl_setfl(writer.as_fd(), rustix::fs::OFlags::NONBLOCK).unwrap();
        let real = std::mem::replace(&mut w.file, File::from(writer));
        let long = "x".repeat(10_000);
        let e = w
            .append_record("run_end", fields(json!({ "note": long })))
            .unwrap_err();
        assert!(e.to_string().contains("short write"), "{e}");
        assert_eq!(w.last_seq(), 1);
        assert_eq!(w.gap().unwrap().lost, 1);
        drop(reader);
        w.file = real;
        w.append("request", Map::new()).unwrap();
        let report = verify_report(&path, &KEY, None).unwrap();
        assert_eq!(report.entries, 3);
        assert_eq!(report.gaps[0].events.get("run_end"), Some(&1));
    }
}
