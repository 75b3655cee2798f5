//! Placeholders leaving in clear text where no value may go: the bytes a child sends through
//! a `CONNECT` tunnel to a host no variable of the run is bound to (passed through untouched:
//! TLS there is end to end, so only a client that speaks clear text inside the tunnel can be
//! seen), the body of a plain `http://` request (its request line and headers are checked
//! before it is sent), and the body of a request to a bound host, for the placeholders of the
//! variables not bound there. A placeholder found there ends the tunnel or the request and is
//! reported as blocked, like one in a plain request's headers.
//!
//! A placeholder is worth nothing outside the run (the value never left the broker), so this
//! is detection of an attempt, not custody: bytes before the match may already be sent (at
//! most the placeholder's length minus one of it, split across two reads).

use memchr::memmem;

use super::Binding;

/// A stream's watch: the last bytes of what was already checked, so a placeholder split
/// across two reads is still found.
#[derive(Debug, Default)]
pub(super) struct Watch {
    /// The last `longest - 1` bytes seen (fewer at the start).
    tail: Vec<u8>,
}

impl Watch {
    /// Checks `chunk` (the next bytes of the stream) for the placeholder of any of
    /// `bindings`; returns the first binding found. Keeps the chunk's end for the next call.
    pub(super) fn find<'b, I>(&mut self, bindings: I, chunk: &[u8]) -> Option<&'b Binding>
    where
        I: IntoIterator<Item = &'b Binding> + Clone,
    {
        let longest = bindings
            .clone()
            .into_iter()
            .map(|b| b.placeholder.len())
            .max()
            .unwrap_or(0);
        if longest == 0 {
            return None;
        }
        let mut hay = std::mem::take(&mut self.tail);
        hay.extend_from_slice(chunk);
        let found = bindings
            .into_iter()
            .find(|b| memmem::find(&hay, b.placeholder.as_bytes()).is_some());
        let keep = hay.len().min(longest - 1);
        hay.drain(..hay.len() - keep);
        self.tail = hay;
        found
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn binding(placeholder: &str) -> Binding {
        Binding {
            shown: "API_TOKEN".to_owned(),
            placeholder: placeholder.to_owned(),
            value: zeroize::Zeroizing::new(b"unused".to_vec()),
            dests: Vec::new(),
            bound_in: Default::default(),
        }
    }

    #[test]
    fn a_placeholder_split_over_reads_of_any_size_is_found() {
        let bs = [binding("ph-aaaa-1111"), binding("ph-bbbb-2222")];
        let text = b"GET /steal?k=ph-bbbb-2222 HTTP/1.1\r\n\r\n";
        for step in 1..text.len() {
            let mut w = Watch::default();
            let hit = text.chunks(step).find_map(|c| w.find(&bs, c));
            assert_eq!(
                hit.map(|b| b.placeholder.as_str()),
                Some("ph-bbbb-2222"),
                "reads of {step} bytes"
            );
        }
    }

    #[test]
    fn text_without_a_placeholder_is_never_flagged() {
        let bs = [binding("ph-aaaa-1111")];
        let mut w = Watch::default();
        for c in [&b"ph-aaaa-111"[..], b"2", b"ph-aaaa", b"-1110"] {
            assert!(w.find(&bs, c).is_none());
        }
        assert!(
            Watch::default()
                .find(&[] as &[Binding], b"anything")
                .is_none()
        );
    }
}
