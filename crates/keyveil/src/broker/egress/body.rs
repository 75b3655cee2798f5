//! The bodies of requests to bound hosts and of their responses, passed through chunk by chunk
//! ([`swapped`]): placeholders swapped for values on the way out and values for placeholders on
//! the way back, the placeholders of variables that may not travel in a body watched for (one
//! cuts the request off and is reported), and the request's audit entry ([`AuditOnEnd`]) written
//! once both bodies have ended.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Body as _, Frame, Incoming};
use hyper::header::HeaderValue;
use serde_json::json;

use super::http::{Body, BoxError, fields_carry};
use super::placeholder::Swap;
use super::watch::Watch;
use super::{Binding, Shared};

/// Each pattern of `swap` replaced in every field of `fields` (a request's or a response's
/// trailers).
pub(super) fn swap_fields(swap: &Swap, fields: &mut hyper::HeaderMap) {
    for v in fields.values_mut() {
        if let Some(x) = swap.replace_in(v.as_bytes())
            && let Ok(mut n) = HeaderValue::from_bytes(&x)
        {
            n.set_sensitive(true);
            *v = n;
        }
    }
}

/// The audit entry of one request to a bound host, shared by its request body and its response
/// body and written when both have ended (or been abandoned): method, host, path, status,
/// response bytes, and the variables whose placeholder was swapped for the value in this
/// request (request line, headers, body), not every variable bound to the host. No entry when
/// no response came (the child got the proxy's own `502`).
pub(super) struct AuditOnEnd {
    pub(super) s: Arc<Shared>,
    pub(super) method: String,
    pub(super) host: String,
    pub(super) path: String,
    /// The response's status; 0 until its head is in.
    pub(super) status: AtomicU16,
    /// The shown names of the variables bound to the host, in the order of `used`.
    pub(super) variables: Vec<String>,
    /// For each of `variables`: whether its placeholder was swapped in.
    pub(super) used: Mutex<Vec<bool>>,
    /// Response body bytes passed to the child.
    pub(super) bytes: AtomicU64,
}

impl AuditOnEnd {
    /// Marks the variables whose pattern (by index of `variables`) a body swap replaced.
    fn mark(&self, hits: &[bool]) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        for (u, h) in used.iter_mut().zip(hits) {
            *u |= *h;
        }
    }
}

impl Drop for AuditOnEnd {
    fn drop(&mut self) {
        let status = *self.status.get_mut();
        if status == 0 {
            return;
        }
        let used = self.used.get_mut().unwrap_or_else(|e| e.into_inner());
        let variables: Vec<&String> = self
            .variables
            .iter()
            .zip(used.iter())
            .filter_map(|(v, u)| u.then_some(v))
            .collect();
        self.s.audit(
            "egress_request",
            json!({
                "run_id": self.s.run_id,
                "method": self.method,
                "host": self.host,
                "path": self.path,
                "status": status,
                "bytes": *self.bytes.get_mut(),
                "variables": variables,
            }),
        );
    }
}

/// What a body passed through [`swapped`] adds to its request's audit entry.
pub(super) enum Tally {
    /// The request's body: the variables it swapped in.
    Request(Arc<AuditOnEnd>),
    /// The response's body: its bytes.
    Response(Arc<AuditOnEnd>),
}

/// The placeholders of the variables not bound to a request's destination, watched for in its
/// body ([`swapped`]): one ends the body (the upstream request is cut off) and is reported.
pub(super) struct Others {
    /// The run's proxy state (bindings, reports).
    pub(super) s: Arc<Shared>,
    /// The request's destination.
    pub(super) dest: super::Dest,
    /// The destination as reports show it.
    pub(super) shown: String,
    /// The body's watch.
    pub(super) watch: Watch,
}

/// Whether `b`'s placeholder may not travel in a body to `dest`: it is not bound there, or
/// its binding there covers headers (and the URL) only.
pub(super) fn not_in_body(b: &Binding, dest: &super::Dest) -> bool {
    !b.dests.contains(dest) || !b.bound_in.body
}

/// Why [`not_in_body`] holds, for reports.
fn not_in_body_why(b: &Binding, dest: &super::Dest, part: &str) -> String {
    if b.dests.contains(dest) {
        format!("sent in a {part}; its binding covers headers only (bind with --body)")
    } else {
        format!("sent in a {part}, not bound to this host")
    }
}

/// A body passed through `swap` chunk by chunk (same-length swaps: `Content-Length` holds),
/// watched for `others` first when given.
pub(super) fn swapped(
    body: Incoming,
    swap: Swap,
    audit: Option<Tally>,
    others: Option<Others>,
) -> Body {
    if swap.is_empty() && audit.is_none() && body.is_end_stream() {
        return body.map_err(BoxError::from).boxed_unsync();
    }
    let st = Relay {
        body,
        swap,
        done: false,
        audit,
        marked: 0,
        trailers: None,
        others,
    };
    let stream = futures::stream::unfold(st, |mut st| async move {
        if let Some(t) = st.trailers.take() {
            return Some((Ok(t), st));
        }
        if st.done {
            return None;
        }
        let step = st.next_frame().await;
        step.map(|frame| (frame, st))
    });
    StreamBody::new(stream).boxed_unsync()
}

/// One frame handed on to the reader of a [`swapped`] body.
type Step = Result<Frame<Bytes>, BoxError>;

/// The state of a [`swapped`] body between two frames.
struct Relay {
    body: Incoming,
    swap: Swap,
    done: bool,
    audit: Option<Tally>,
    /// `swap.swapped` when the request's tally was last marked.
    marked: u64,
    /// Trailers held back while the swap's last bytes go out.
    trailers: Option<Frame<Bytes>>,
    others: Option<Others>,
}

impl Relay {
    /// Reads frames until one is due to the reader; `None` at the body's end with nothing left.
    async fn next_frame(&mut self) -> Option<Step> {
        loop {
            match self.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => match self.on_data(data) {
                        Some(step) => return Some(step),
                        None => continue,
                    },
                    Err(frame) => {
                        self.done = true;
                        return Some(self.on_trailers(frame));
                    }
                },
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(BoxError::from(e)));
                }
                None => {
                    self.done = true;
                    let rest = self.swap.finish();
                    self.mark();
                    return (!rest.is_empty()).then(|| Ok(Frame::data(Bytes::from(rest))));
                }
            }
        }
    }

    /// A data chunk: watched for placeholders that may not travel here (one ends the body),
    /// counted, swapped. `None`: nothing to hand on yet (the swap holds the bytes back).
    fn on_data(&mut self, data: Bytes) -> Option<Step> {
        if let Some(Others {
            s,
            dest,
            shown,
            watch,
        }) = &mut self.others
            && let Some(b) = watch.find(s.bindings.iter().filter(|b| not_in_body(b, dest)), &data)
        {
            s.report_blocked(&b.shown, shown, &not_in_body_why(b, dest, "body"));
            self.done = true;
            return Some(Err(blocked("body")));
        }
        if let Some(Tally::Response(a)) = &self.audit {
            a.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        let out = if self.swap.is_empty() {
            data
        } else {
            self.swap.push_bytes(data)
        };
        self.mark();
        (!out.is_empty()).then(|| Ok(Frame::data(out)))
    }

    /// The frame after the last data: trailers swapped like headers (an echo in
    /// `grpc-message`) and watched for the placeholders of variables not bound here; the swap's
    /// last bytes go first, the trailers after them.
    fn on_trailers(&mut self, frame: Frame<Bytes>) -> Step {
        let frame = match frame.into_trailers() {
            Ok(mut t) => {
                if let Some(Others { s, dest, shown, .. }) = &self.others
                    && let Some(b) = s
                        .bindings
                        .iter()
                        .filter(|b| not_in_body(b, dest))
                        .find(|b| fields_carry(&t, &b.placeholder))
                {
                    s.report_blocked(&b.shown, shown, &not_in_body_why(b, dest, "trailer"));
                    return Err(blocked("trailer"));
                }
                swap_fields(&self.swap, &mut t);
                Frame::trailers(t)
            }
            Err(f) => f,
        };
        let rest = self.swap.finish();
        self.mark();
        if rest.is_empty() {
            return Ok(frame);
        }
        self.trailers = Some(frame);
        Ok(Frame::data(Bytes::from(rest)))
    }

    /// Marks in the request's tally the variables swapped in since the last mark.
    fn mark(&mut self) {
        if let Some(Tally::Request(a)) = &self.audit
            && self.swap.swapped != self.marked
        {
            self.marked = self.swap.swapped;
            a.mark(self.swap.hits());
        }
    }
}

/// What the child is told when a placeholder in a request's `part` (body or trailer) ends it:
/// hyper hands it on as the source of its own error, which the proxy's `502` quotes.
fn blocked(part: &str) -> BoxError {
    BoxError::from(format!(
        "keyveil: blocked: a placeholder in a {part} it may not travel in (not bound to this \
         host, or bound for headers only)\nhint: send each placeholder only to the host its \
         variable is bound to; if this API takes it in the body, the human can allow that with \
         `keyveil policy set ENV bind VAR HOST --body` (their factor)"
    ))
}
