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

use std::collections::VecDeque;
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
}

/// Parses one line (without newline) and checks form, canonical bytes and MAC. Does not check
/// position (`seq`, `prev`); the caller does.
fn check_line(line_no: u64, bytes: &[u8], key: &[u8; 32]) -> Result<Checked, AuditError> {
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
    let expected = hmac_sha256(key, &[input.as_bytes()]);
    if !bool::from(expected.as_ref().ct_eq(&mac_bytes)) {
        return Err(bad(line_no, LineFault::MacMismatch));
    }
    if ts.parse::<jiff::Timestamp>().is_err() {
        return Err(bad(line_no, LineFault::BadField("ts")));
    }
    Ok(Checked {
        seq,
        prev: prev.to_owned(),
        mac: mac.to_owned(),
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
        };
        if let Some((line_no, bytes)) = last {
            let checked = check_line(line_no, &bytes, key)?;
            writer.seq = checked.seq;
            writer.prev = sha256_hex(&bytes);
            writer.last_mac = Some(checked.mac);
        }
        if let Some(tail) = tail {
            writer.recover_tail(&tail)?;
        }
        Ok(writer)
    }

    /// Handles a partial last line: keep it (adding the newline) if it is a valid next entry,
    /// otherwise cut it off and log that.
    fn recover_tail(&mut self, tail: &[u8]) -> Result<(), AuditError> {
        let next = self.seq + 1;
        if let Ok(checked) = check_line(next, tail, &self.key)
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
        self.append(TAIL_TRUNCATED_EVENT, fields).map(|_| ())
    }

    /// Appends one entry with the next `seq`, the current time (UTC, microseconds), `event`,
    /// the extra `fields`, `prev` and `mac`; writes the line and its newline from one buffer
    /// (`write_all`, one `write` in practice) and fsyncs
    /// (`fdatasync`). Returns the entry as written.
    ///
    /// `event`: 1 to [`MAX_EVENT_LEN`] bytes, no control characters (convention: dotted
    /// lowercase, `grant.approved`). `fields`: any JSON except member names in
    /// [`RESERVED_FIELDS`] at the top level and floating-point numbers anywhere (integers only,
    /// so the canonical form is the same in every language). **Never pass a secret value.**
    ///
    /// # Errors
    /// [`AuditError::InvalidEntry`] (nothing written); [`AuditError::Io`] (the file is cut back
    /// to its last good line when possible).
    ///
    /// Before writing, checks that the log's path still names the open file
    /// ([`AuditWriter::check_path`]); if not, returns [`AuditError::PathChanged`] and writes
    /// nothing (see [`AuditWriter::record_path_change`]).
    pub fn append(&mut self, event: &str, fields: Map<String, Value>) -> Result<Value, AuditError> {
        self.check_path()?;
        self.append_at(event, fields, jiff::Timestamp::now())
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

    /// [`AuditWriter::append`] with a given time (the known-answer tests use fixed times).
    pub(crate) fn append_at(
        &mut self,
        event: &str,
        fields: Map<String, Value>,
        at: jiff::Timestamp,
    ) -> Result<Value, AuditError> {
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
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Cut a partial write back off so the chain stays intact; if that fails too, the next
            // open() recovers the torn line.
            let _ = self.file.set_len(self.len);
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
    verify_inner(path, key, None)
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
    verify_inner(path, key, Some(checkpoint))
}

fn verify_inner(
    path: &Path,
    key: &[u8; 32],
    checkpoint: Option<&AuditCheckpoint>,
) -> Result<u64, AuditError> {
    let file = open_existing(path)?;
    let mut reader = LineReader::new(file);
    let mut prev = GENESIS_PREV.to_owned();
    let mut checkpoint_found = checkpoint.is_none_or(|c| c.seq == 0);
    while let Some(line) = reader.next_line(path)? {
        let line_no = reader.line_no;
        if !line.complete {
            return Err(bad(line_no, LineFault::Incomplete));
        }
        let checked = check_line(line_no, &line.bytes, key)?;
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
    }
    let entries = reader.line_no;
    if !checkpoint_found {
        return Err(AuditError::CheckpointMismatch {
            checkpoint_seq: checkpoint.map_or(0, |c| c.seq),
            entries,
        });
    }
    Ok(entries)
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
