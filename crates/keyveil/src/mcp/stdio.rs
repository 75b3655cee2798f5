//! The MCP server's stdio transport: newline-delimited JSON-RPC, where every request gets an
//! answer, even one the server cannot parse.
//!
//! rmcp's own line transport drops, without a word, a line that is not valid JSON (a syntax
//! error, a number out of range such as `1e400`, a lone surrogate, invalid UTF-8, nesting past
//! serde_json's 128 levels) and a line over its size limit, and answers well-formed JSON of the
//! wrong shape with an error whose `id` is `null`. A client waiting for its request's id would
//! wait forever. Here this module reads and parses every line itself: a line that fails gets a
//! JSON-RPC error (-32700 parse error, or -32600 invalid request for a valid JSON value of the
//! wrong shape or an oversized line) carrying the request's `id`, found by a tolerant scan of
//! the line's top level. A line without an `id` and `method` (a notification, a response, or
//! something unrecognisable) gets no reply, as JSON-RPC wants, and is logged to stderr (the error
//! only, never the line). Writing is rmcp's (`AsyncRwTransport`).

use std::future::Future;

use rmcp::RoleServer;
use rmcp::model::{ErrorData, RequestId};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::transport::async_rw::AsyncRwTransport;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};

/// Longest accepted line (one message), in bytes: rmcp's own limit.
pub(super) const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;
/// How much of an oversized line is kept to find its `id`.
const HEAD_BYTES: usize = 64 * 1024;
/// Longest parser message put into an error reply, in characters.
const MAX_REASON_CHARS: usize = 300;

/// How reading one line ended.
enum LineRead {
    /// A whole line (with its `\n`) is in `line`.
    Line,
    /// The line was longer than [`MAX_LINE_BYTES`]; its start is in `head`, the rest is gone.
    Oversized,
    /// The client closed stdin.
    Eof,
    /// Reading failed.
    Io(std::io::Error),
}

/// What to do after a `fill_buf` borrow ends.
enum Step {
    Line,
    More,
    StartDiscard,
    EndDiscard,
}

/// The server side of the stdio transport (see the module documentation).
pub(super) struct GuardedStdio<R, W: AsyncWrite> {
    read: BufReader<R>,
    /// The line being read (kept across cancelled `receive` calls).
    line: Vec<u8>,
    /// Dropping the rest of an oversized line.
    discarding: bool,
    /// The start of the oversized line being dropped.
    head: Vec<u8>,
    out: AsyncRwTransport<RoleServer, tokio::io::Empty, W>,
}

impl<R, W> GuardedStdio<R, W>
where
    R: AsyncRead + Send + Unpin,
    W: AsyncWrite + Send + Unpin + 'static,
{
    /// Reads requests from `read`, writes replies to `write`.
    pub(super) fn new(read: R, write: W) -> GuardedStdio<R, W> {
        GuardedStdio {
            read: BufReader::with_capacity(64 * 1024, read),
            line: Vec::new(),
            discarding: false,
            head: Vec::new(),
            out: AsyncRwTransport::new_server(tokio::io::empty(), write),
        }
    }

    /// Reads one `\n`-terminated line into `self.line`, never holding more than
    /// [`MAX_LINE_BYTES`] of it. Cancellation-safe: all state is in `self`, and each chunk is
    /// copied and consumed with no `await` in between.
    async fn read_line(&mut self) -> LineRead {
        loop {
            let (consumed, step) = {
                let available = match self.read.fill_buf().await {
                    Ok(a) => a,
                    Err(e) => return LineRead::Io(e),
                };
                if available.is_empty() {
                    return LineRead::Eof;
                }
                let newline = available.iter().position(|b| *b == b'\n');
                let take = newline.map_or(available.len(), |i| i + 1);
                let chunk = available.get(..take).unwrap_or_default();
                let ends = newline.is_some();
                if self.discarding {
                    (take, if ends { Step::EndDiscard } else { Step::More })
                } else if self.line.len().saturating_add(take) > MAX_LINE_BYTES {
                    let mut head = std::mem::take(&mut self.line);
                    head.truncate(HEAD_BYTES);
                    let room = HEAD_BYTES.saturating_sub(head.len());
                    head.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
                    self.head = head;
                    (
                        take,
                        if ends {
                            Step::EndDiscard
                        } else {
                            Step::StartDiscard
                        },
                    )
                } else {
                    self.line.extend_from_slice(chunk);
                    (take, if ends { Step::Line } else { Step::More })
                }
            };
            self.read.consume(consumed);
            match step {
                Step::Line => return LineRead::Line,
                Step::More => {}
                Step::StartDiscard => self.discarding = true,
                Step::EndDiscard => {
                    self.discarding = false;
                    return LineRead::Oversized;
                }
            }
        }
    }

    /// Answers a line that could not be taken as a message: an error reply to its request id
    /// when it has one, else only a log line.
    fn reject(&mut self, line: &[u8], error: ErrorData) {
        if b_starts_array(line) {
            self.reject_batch(line);
            return;
        }
        let scan = scan_top_level(line);
        match scan.id {
            Some(id) if scan.method || !scan.complete => {
                tracing::warn!(%id, error = %error.message, "answered an MCP request that could not be parsed with an error");
                self.answer(error, Some(id));
            }
            None if scan.id_unreadable && (scan.method || !scan.complete) => {
                // An id that is neither a string nor a 64-bit integer (`1e400`, 2^64, 1.5, an
                // object): the reply cannot carry it, so it carries none, as JSON-RPC and MCP
                // say for a request whose id cannot be read.
                tracing::warn!(error = %error.message, "answered an MCP request with an unreadable id with an error");
                self.answer(
                    ErrorData::invalid_request(
                        format!(
                            "the request id is not a string or an integer that fits in 64 bits; the request was not run ({})",
                            error.message
                        ),
                        None,
                    ),
                    None,
                );
            }
            _ => {
                tracing::warn!(error = %error.message, "ignored an MCP message without a request id that could not be parsed");
            }
        }
    }

    /// A JSON-RPC batch (an array): MCP has no batches, so each request in it gets its own
    /// error naming the rule, and a batch where no request id can be read (empty, garbage)
    /// gets one error without an id.
    fn reject_batch(&mut self, line: &[u8]) {
        let scans = scan_array(line);
        let error = || {
            ErrorData::invalid_request(
                "JSON-RPC batches (arrays) are not supported by MCP; send one request per line",
                None,
            )
        };
        let mut answered = 0usize;
        for s in scans {
            if let (Some(id), true) = (s.id, s.method) {
                self.answer(error(), Some(id));
                answered += 1;
            }
        }
        if answered == 0 {
            self.answer(error(), None);
        }
        tracing::warn!(answered, "answered a JSON-RPC batch with errors");
    }

    /// Sends an error reply. `send` returns a 'static future: spawned, so a cancelled `receive`
    /// cannot lose the reply once the line is consumed.
    fn answer(&mut self, error: ErrorData, id: Option<RequestId>) {
        let reply = TxJsonRpcMessage::<RoleServer>::error(error, id);
        let sending = self.out.send(reply);
        tokio::spawn(async move {
            if let Err(e) = sending.await {
                tracing::warn!(error = %e, "cannot write an error reply");
            }
        });
    }
}

impl<R, W> Transport<RoleServer> for GuardedStdio<R, W>
where
    R: AsyncRead + Send + Unpin,
    W: AsyncWrite + Send + Unpin + 'static,
{
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.out.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            match self.read_line().await {
                LineRead::Line => {}
                LineRead::Oversized => {
                    let head = std::mem::take(&mut self.head);
                    self.reject(
                        &head,
                        ErrorData::invalid_request(
                            format!(
                                "the message is longer than {} MiB and was dropped; send large input as a file path",
                                MAX_LINE_BYTES / (1024 * 1024)
                            ),
                            None,
                        ),
                    );
                    continue;
                }
                LineRead::Eof => return None,
                LineRead::Io(e) => {
                    tracing::error!(error = %e, "cannot read the MCP client's messages");
                    return None;
                }
            }
            let line = std::mem::take(&mut self.line);
            let body = trim(&line);
            if body.is_empty() {
                continue;
            }
            match serde_json::from_slice::<RxJsonRpcMessage<RoleServer>>(body) {
                Ok(message) => return Some(message),
                Err(e) => {
                    let reason = keyveil_proto::display::clip(&e.to_string(), MAX_REASON_CHARS);
                    let error = match e.classify() {
                        serde_json::error::Category::Data => ErrorData::invalid_request(
                            format!("not a valid MCP request: {reason}"),
                            None,
                        ),
                        _ => ErrorData::parse_error(
                            format!("the message is not valid JSON: {reason}"),
                            None,
                        ),
                    };
                    self.reject(body, error);
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.out.close().await
    }
}

/// The line without its `\n`, a `\r` before it, a UTF-8 byte-order mark, or surrounding
/// whitespace.
fn trim(line: &[u8]) -> &[u8] {
    let line = line.strip_prefix(b"\xef\xbb\xbf").unwrap_or(line);
    line.trim_ascii()
}

/// What a tolerant scan of a line's top-level object found.
#[derive(Debug, Default, PartialEq)]
struct Scan {
    /// The first `id` member, when it is a number or a string.
    id: Option<RequestId>,
    /// Whether a `method` member came before the scan stopped.
    method: bool,
    /// Whether the scan reached the object's closing brace.
    complete: bool,
    /// Whether an `id` member was there but is no string nor 64-bit integer.
    id_unreadable: bool,
}

/// Whether the line's first non-blank byte opens an array (a JSON-RPC batch).
fn b_starts_array(b: &[u8]) -> bool {
    b.get(skip_ws(b, 0)) == Some(&b'[')
}

/// Most elements of a batch looked at (each gets its own reply).
const MAX_BATCH: usize = 1000;

/// Scans each top-level element of the array `b` as [`scan_top_level`] does, up to
/// [`MAX_BATCH`] elements, stopping at the first thing it cannot follow.
fn scan_array(b: &[u8]) -> Vec<Scan> {
    let mut out = Vec::new();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'[') {
        return out;
    }
    i += 1;
    while out.len() < MAX_BATCH {
        i = skip_ws(b, i);
        if matches!(b.get(i), None | Some(b']')) {
            break;
        }
        let Some(end) = value_end(b, i) else {
            if let Some(rest) = b.get(i..) {
                out.push(scan_top_level(rest));
            }
            break;
        };
        if let Some(v) = b.get(i..end) {
            out.push(scan_top_level(v));
        }
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i += 1,
            _ => break,
        }
    }
    out
}

/// Scans the members of the top-level object of `b` without parsing their values (so nesting
/// depth, out-of-range numbers and broken escapes inside them do not matter), for the request's
/// `id` and whether it has a `method`. Stops at the first thing it cannot follow, keeping what it
/// found. Iterative: no recursion, whatever the nesting.
fn scan_top_level(b: &[u8]) -> Scan {
    let mut s = Scan::default();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return s;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b'}') => {
                s.complete = true;
                return s;
            }
            Some(b'"') => {}
            _ => return s,
        }
        let Some(key_end) = string_end(b, i) else {
            return s;
        };
        let key = b.get(i + 1..key_end - 1).unwrap_or_default();
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return s;
        }
        i = skip_ws(b, i + 1);
        let Some(value_end) = value_end(b, i) else {
            return s;
        };
        match key {
            b"id" if s.id.is_none() && !s.id_unreadable => {
                s.id = b
                    .get(i..value_end)
                    .and_then(|raw| serde_json::from_slice::<RequestId>(raw).ok());
                s.id_unreadable = s.id.is_none() && b.get(i..value_end) != Some(b"null");
            }
            b"method" => s.method = true,
            _ => {}
        }
        i = skip_ws(b, value_end);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => {
                s.complete = true;
                return s;
            }
            _ => return s,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// Index just past the string starting at `b[i]` (a `"`), or `None` if it does not end.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match b.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// Index just past the value starting at `b[i]`, or `None` if it does not end.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while b
                .get(j)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace())
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use rmcp::model::NumberOrString;

    fn id_of(line: &[u8]) -> Option<RequestId> {
        scan_top_level(line).id
    }

    #[test]
    fn the_scan_finds_the_id_past_what_serde_json_refuses() {
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let s = scan_top_level(deep.as_bytes());
        assert_eq!(s.id, Some(NumberOrString::Number(7)));
        assert!(s.method && s.complete);
        assert_eq!(
            id_of(br#"{"params":{"x":1e400,"y":"\ud800 \"}"},"id":"a-1","method":"m"}"#),
            Some(NumberOrString::String("a-1".into()))
        );
        // Cut short after the id: found, not complete.
        let s = scan_top_level(br#"{"jsonrpc":"2.0","id":9,"method":"x","params":{"a":"#);
        assert_eq!(s.id, Some(NumberOrString::Number(9)));
        assert!(!s.complete);
        // Invalid UTF-8 inside a value does not matter.
        assert_eq!(
            id_of(b"{\"method\":\"r\xffn\",\"id\":3}"),
            Some(NumberOrString::Number(3))
        );
    }

    #[test]
    fn a_batch_is_scanned_element_by_element() {
        let s = scan_array(
            br#" [{"jsonrpc":"2.0","id":1,"method":"ping"}, {"id":"b","method":"x"},{"method":"n"}, 7]"#,
        );
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].id, Some(NumberOrString::Number(1)));
        assert_eq!(s[1].id, Some(NumberOrString::String("b".into())));
        assert!(s[2].id.is_none() && s[2].method);
        assert!(s[3].id.is_none());
        assert!(scan_array(b"[]").is_empty());
        assert!(b_starts_array(b"  [1]") && !b_starts_array(b"{}"));
        // Cut short: what was read is kept.
        let s = scan_array(br#"[{"id":3,"method":"m"},{"id":4,"meth"#);
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].id, Some(NumberOrString::Number(4)));
    }

    #[test]
    fn the_scan_finds_nothing_where_there_is_no_request_id() {
        for line in [
            &b""[..],
            b"null",
            b"[{\"id\":1}]",
            b"{\"method\":\"notifications/x\"}",
            b"{\"id\":{\"a\":1},\"method\":\"m\"}",
            b"{\"id\":1.5,\"method\":\"m\"}",
            b"{\"nested\":{\"id\":4},\"method\":\"m\"}",
            b"{\"id\"",
            b"{id:1}",
        ] {
            assert_eq!(id_of(line), None, "{}", String::from_utf8_lossy(line));
        }
        for line in [
            &b"{\"id\":18446744073709551616,\"method\":\"m\"}"[..],
            b"{\"id\":1e400,\"method\":\"m\"}",
            b"{\"id\":1.5,\"method\":\"m\"}",
        ] {
            let s = scan_top_level(line);
            assert!(
                s.id.is_none() && s.id_unreadable,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        assert!(!scan_top_level(b"{\"id\":null,\"method\":\"m\"}").id_unreadable);
        // A response carries an id but no method: not a request.
        let s = scan_top_level(br#"{"jsonrpc":"2.0","id":5,"result":{}}"#);
        assert!(s.id.is_some() && !s.method && s.complete);
    }
}
