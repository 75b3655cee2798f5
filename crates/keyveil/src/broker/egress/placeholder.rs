//! Placeholders of bound variables and the streaming swap between a placeholder and its value.
//!
//! A bound variable's child gets a placeholder: random per run, of the value's length in bytes
//! (so a swap never changes a `Content-Length`), keeping the value's public prefix
//! ([`public_prefix`]) and the class of each character (digit, lower, upper), so the format
//! checks SDKs make on keys (`sk-proj-…`, `ghp_…`) still pass.
// Every index below is checked against the length first (the scans) or found by `memmem` in the
// same buffer (the swap).
#![allow(clippy::indexing_slicing)]

use memchr::memmem;
use zeroize::Zeroizing;

/// Longest public prefix kept, in bytes.
const MAX_PREFIX: usize = 14;
/// Longest segment of a public prefix (`github` in `github_pat_`).
const MAX_SEGMENT: usize = 6;
/// A prefix is kept only when at least this many bytes follow it.
const MIN_REST: usize = 16;

/// The non-secret leading part of a token-like value: one to three segments of lowercase
/// letters and digits (each 1 to 6 long), each followed by `-` or `_`, at most 14 bytes in all,
/// and only if at least 16 bytes follow (`sk-proj-`, `sk-ant-api03-`, `ghp_`, `xoxb-`,
/// `github_pat_`, `glpat-`). A value without one (a password, a hex key) keeps nothing.
pub(crate) fn public_prefix(value: &str) -> &str {
    let b = value.as_bytes();
    let mut end = 0;
    let mut segments = 0;
    let mut i = 0;
    while segments < 3 {
        let start = i;
        while i < b.len() && (b[i].is_ascii_lowercase() || b[i].is_ascii_digit()) {
            i += 1;
        }
        let seg = i - start;
        if seg == 0 || seg > MAX_SEGMENT || i >= b.len() || !matches!(b[i], b'-' | b'_') {
            break;
        }
        i += 1;
        if i > MAX_PREFIX {
            break;
        }
        end = i;
        segments += 1;
    }
    if b.len() - end < MIN_REST {
        return "";
    }
    &value[..end]
}

/// A fresh placeholder for `value`: its public prefix, then random characters of the same
/// class as the value's (digit for digit, lower for lower, upper for upper, a letter or digit
/// for anything else, one per byte). Never equal to the value. Errors: the system's random
/// source failed.
pub(crate) fn placeholder(value: &str) -> Result<String, getrandom::Error> {
    const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    const DIGIT: &[u8] = b"0123456789";
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let prefix = public_prefix(value);
    loop {
        let rest = &value.as_bytes()[prefix.len()..];
        let mut random = Zeroizing::new(vec![0u8; rest.len()]);
        getrandom::fill(&mut random)?;
        let mut out = String::with_capacity(value.len());
        out.push_str(prefix);
        for (c, r) in rest.iter().zip(random.iter()) {
            let set = if c.is_ascii_digit() {
                DIGIT
            } else if c.is_ascii_lowercase() {
                LOWER
            } else if c.is_ascii_uppercase() {
                UPPER
            } else {
                ALNUM
            };
            out.push(char::from(set[usize::from(*r) % set.len()]));
        }
        if out != value {
            return Ok(out);
        }
    }
}

/// Replaces every occurrence of each `from` by its `to` (same length) in a stream of chunks,
/// holding back between chunks only a chunk's tail that starts some pattern (at most the
/// longest pattern's length less one byte; usually nothing).
pub(crate) struct Swap {
    /// Each pattern with its index in the pairs given to [`Swap::new`] and its replacement.
    pairs: Vec<(usize, memmem::Finder<'static>, Zeroizing<Vec<u8>>)>,
    keep: usize,
    carry: Zeroizing<Vec<u8>>,
    /// How many replacements were made.
    pub(crate) swapped: u64,
    /// By index of the pairs given to [`Swap::new`]: whether that pattern was replaced at least
    /// once.
    hits: Vec<bool>,
}

impl Swap {
    /// A swap of each `(from, to)`; empty patterns are ignored.
    pub(crate) fn new(pairs: Vec<(Vec<u8>, Zeroizing<Vec<u8>>)>) -> Swap {
        let hits = vec![false; pairs.len()];
        let pairs: Vec<_> = pairs
            .into_iter()
            .enumerate()
            .filter(|(_, (f, _))| !f.is_empty())
            .map(|(i, (f, t))| (i, memmem::Finder::new(&f).into_owned(), t))
            .collect();
        let keep = pairs
            .iter()
            .map(|(_, f, _)| f.needle().len())
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        Swap {
            pairs,
            keep,
            carry: Zeroizing::new(Vec::new()),
            swapped: 0,
            hits,
        }
    }

    /// By index of the pairs given to [`Swap::new`]: whether that pattern was replaced at least
    /// once so far (a pattern held back between chunks counts once it is replaced).
    pub(crate) fn hits(&self) -> &[bool] {
        &self.hits
    }

    /// Whether there is nothing to swap.
    pub(crate) fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Every pattern replaced in one whole buffer (a header or trailer field's value), each
    /// pair in turn; `None` when none is in it.
    pub(crate) fn replace_in(&self, hay: &[u8]) -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        for (_, f, t) in &self.pairs {
            if let Some(x) = swap_all(out.as_deref().unwrap_or(hay), f.needle(), t) {
                out = Some(x);
            }
        }
        out
    }

    /// Feeds a chunk; returns what can be emitted now. A chunk without any pattern, and with
    /// nothing held back before it, is passed on without a copy (only a tail that could start
    /// a pattern is held back): a large body that carries no value is not copied at all.
    pub(crate) fn push_bytes(&mut self, chunk: bytes::Bytes) -> bytes::Bytes {
        if self.carry.is_empty() && self.pairs.iter().all(|(_, f, _)| f.find(&chunk).is_none()) {
            let hold = self.tail_to_hold(&chunk, 0);
            if hold == 0 {
                return chunk;
            }
            let cut = chunk.len() - hold;
            self.carry.extend_from_slice(&chunk[cut..]);
            return chunk.slice(..cut);
        }
        bytes::Bytes::from(self.push(&chunk))
    }

    /// How many bytes at the end of `buf` (none before `from`) could be the start of a pattern
    /// that the next chunk completes: the longest such tail. A pattern starting earlier would
    /// fit in `buf` whole and would have been found.
    fn tail_to_hold(&self, buf: &[u8], from: usize) -> usize {
        let start = buf.len().saturating_sub(self.keep).max(from);
        (start..buf.len())
            .find(|&i| {
                let tail = &buf[i..];
                self.pairs
                    .iter()
                    .any(|(_, f, _)| f.needle().starts_with(tail))
            })
            .map_or(0, |i| buf.len() - i)
    }

    /// Feeds a chunk; returns what can be emitted now.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.carry.extend_from_slice(chunk);
        let (out, rest) = self.replace(false);
        *self.carry = rest;
        out
    }

    /// Ends the stream: everything held back.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let (out, _) = self.replace(true);
        self.carry.clear();
        out
    }

    fn replace(&mut self, last: bool) -> (Vec<u8>, Vec<u8>) {
        let buf = std::mem::take(&mut *self.carry);
        let mut out = Vec::with_capacity(buf.len());
        let mut at = 0;
        loop {
            let next = self
                .pairs
                .iter()
                .filter_map(|(k, f, t)| {
                    f.find(&buf[at..])
                        .map(|i| (at + i, f.needle().len(), t, *k))
                })
                .min_by_key(|(i, _, _, _)| *i);
            match next {
                Some((i, len, to, k)) => {
                    out.extend_from_slice(&buf[at..i]);
                    out.extend_from_slice(to);
                    at = i + len;
                    self.swapped += 1;
                    self.hits[k] = true;
                }
                None => break,
            }
        }
        let hold = if last {
            buf.len()
        } else {
            buf.len() - self.tail_to_hold(&buf, at)
        };
        out.extend_from_slice(&buf[at..hold]);
        let rest = buf[hold..].to_vec();
        let mut buf = buf;
        zeroize::Zeroize::zeroize(&mut buf);
        (out, rest)
    }
}

/// Replaces every `from` by `to` in `hay` (one buffer).
pub(crate) fn swap_all(hay: &[u8], from: &[u8], to: &[u8]) -> Option<Vec<u8>> {
    if from.is_empty() || memmem::find(hay, from).is_none() {
        return None;
    }
    let mut s = Swap::new(vec![(from.to_vec(), Zeroizing::new(to.to_vec()))]);
    let mut out = s.push(hay);
    out.extend(s.finish());
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn public_prefixes_are_kept_only_for_token_shapes() {
        let long = "A1b2C3d4E5f6G7h8I9j0";
        for (prefix, v) in [
            ("sk-proj-", format!("sk-proj-{long}")),
            ("sk-ant-api03-", format!("sk-ant-api03-{long}")),
            ("ghp_", format!("ghp_{long}")),
            ("xoxb-", format!("xoxb-1234567-{long}")),
            ("github_pat_", format!("github_pat_{long}")),
            ("", long.to_owned()),
            ("", "correct-horse-battery-staple-xxxxxx".to_owned()),
            ("", "sk-short".to_owned()),
            ("", format!("Upper-{long}")),
        ] {
            assert_eq!(public_prefix(&v), prefix, "{v}");
        }
    }

    #[test]
    fn placeholders_keep_length_prefix_and_classes_but_not_the_value() {
        // A made-up value of that shape (digits, upper and lower case after the prefix).
        let owned = format!("sk-proj-{}", "Ab3".repeat(8));
        let v = owned.as_str();
        let p = placeholder(v).unwrap();
        let q = placeholder(v).unwrap();
        assert_eq!(p.len(), v.len());
        assert!(p.starts_with("sk-proj-"));
        assert_ne!(p, v);
        assert_ne!(p, q, "random per call");
        for (a, b) in v.bytes().zip(p.bytes()).skip(8) {
            assert_eq!(a.is_ascii_digit(), b.is_ascii_digit());
            assert_eq!(a.is_ascii_uppercase(), b.is_ascii_uppercase());
        }
        // Non-ASCII values keep their length in bytes.
        let p = placeholder("pässwörd-ünïcode").unwrap();
        assert_eq!(p.len(), "pässwörd-ünïcode".len());
    }

    #[test]
    fn the_swap_finds_patterns_split_across_chunks() {
        let from = b"PLACEHOLDER1".to_vec();
        let to = Zeroizing::new(b"realvalue123".to_vec());
        let text = b"a PLACEHOLDER1 b PLACEHOLDER1PLACEHOLDER1 c PLACEHOLDER".to_vec();
        let want = b"a realvalue123 b realvalue123realvalue123 c PLACEHOLDER".to_vec();
        for size in 1..text.len() {
            let mut s = Swap::new(vec![(from.clone(), to.clone())]);
            let mut out = Vec::new();
            for c in text.chunks(size) {
                out.extend(s.push(c));
            }
            out.extend(s.finish());
            assert_eq!(out, want, "chunk size {size}");
            assert_eq!(s.swapped, 3);
        }
        assert_eq!(
            swap_all(b"xPLACEHOLDER1", &from, &to).unwrap(),
            b"xrealvalue123"
        );
        assert!(swap_all(b"nothing", &from, &to).is_none());
    }

    #[test]
    fn a_whole_field_is_swapped_for_every_pair() {
        let s = Swap::new(vec![
            (b"ph-one-1".to_vec(), Zeroizing::new(b"value-01".to_vec())),
            (b"ph-two-2".to_vec(), Zeroizing::new(b"value-02".to_vec())),
        ]);
        assert_eq!(
            s.replace_in(b"a ph-one-1 b ph-two-2 c ph-one-1").unwrap(),
            b"a value-01 b value-02 c value-01"
        );
        assert!(s.replace_in(b"nothing here").is_none());
    }

    #[test]
    fn the_swap_tells_which_patterns_it_replaced_even_split_across_chunks() {
        let a = (
            b"PLACEHOLDER1".to_vec(),
            Zeroizing::new(b"realvalue123".to_vec()),
        );
        let b = (
            b"OTHERHOLDER2".to_vec(),
            Zeroizing::new(b"othervalue22".to_vec()),
        );
        let empty = (Vec::new(), Zeroizing::new(Vec::new()));
        let c = (
            b"THIRDHOLDER3".to_vec(),
            Zeroizing::new(b"thirdvalue33".to_vec()),
        );
        let text = b"x OTHERHOLDER2 y PLACEHOLDER z THIRDHOLDER".to_vec();
        for size in 1..=text.len() {
            // An empty pattern is ignored but keeps its index.
            let mut s = Swap::new(vec![a.clone(), empty.clone(), b.clone(), c.clone()]);
            for chunk in text.chunks(size) {
                let _ = s.push_bytes(bytes::Bytes::copy_from_slice(chunk));
            }
            let _ = s.finish();
            assert_eq!(s.hits(), &[false, false, true, false], "chunk size {size}");
        }
    }

    #[test]
    fn the_zero_copy_swap_agrees_with_the_copying_one_and_copies_no_clean_chunk() {
        let from = b"PLACEHOLDER1".to_vec();
        let to = Zeroizing::new(b"realvalue123".to_vec());
        let text = b"PLAC PLACEHOLDER1 PPLACEHOLDER1PLACEHOLDER1 xPLACEHOLDER".to_vec();
        let want = b"PLAC realvalue123 Prealvalue123realvalue123 xPLACEHOLDER".to_vec();
        for size in 1..=text.len() {
            let mut s = Swap::new(vec![(from.clone(), to.clone())]);
            let mut out = Vec::new();
            for c in text.chunks(size) {
                out.extend_from_slice(&s.push_bytes(bytes::Bytes::copy_from_slice(c)));
            }
            out.extend(s.finish());
            assert_eq!(out, want, "chunk size {size}");
        }
        // A chunk that holds no pattern and does not end with the start of one goes through
        // as the same buffer; one that ends with a start has that tail held back only.
        let mut s = Swap::new(vec![(from.clone(), to.clone())]);
        let clean = bytes::Bytes::from(vec![b'x'; 1 << 16]);
        let out = s.push_bytes(clean.clone());
        assert_eq!(out.as_ptr(), clean.as_ptr());
        assert_eq!(out.len(), clean.len());
        let out = s.push_bytes(bytes::Bytes::from_static(b"xxxxPLACE"));
        assert_eq!(&out[..], b"xxxx");
        let out = s.push_bytes(bytes::Bytes::from_static(b"HOLDER1 done"));
        assert_eq!(&out[..], b"realvalue123 done");
    }
}
