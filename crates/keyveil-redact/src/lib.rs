//! Streaming, sans-IO redaction of secret values and their encodings.
//!
//! keyveil gives granted child processes secret values in their environment and passes
//! everything they print through a [`Redactor`] before an AI agent sees it. The redactor is
//! built once per grant from `(name, value)` pairs; each value is expanded into its *variants*
//! (raw, trimmed, base64 at three byte offsets, hex, percent-encoded, JSON/XML/shell/dotenv
//! escapes, the string-literal forms of common languages, shells and serialisers
//! ([`literals`]), byte dumps, Unicode forms, lines and leaves of multi-line and structured
//! values, 12-byte fragments of random-looking values and of the printable runs of values with
//! whitespace, ...). Every occurrence of a variant is replaced by `[REDACTED:NAME]`. A
//! decoding pass also finds values written one character at a time as escapes or Unicode
//! look-alikes, in any spelling and mix (`&#0116;`, `%74`, `\x74`, `ｔ`, `𝐭`, ...).
//!
//! ```
//! use keyveil_redact::Redactor;
//!
//! let r = Redactor::new([("GH_TOKEN", "example-fake-token-0123456789abcdef")]);
//! let (out, n) = r.redact(b"token=example-fake-token-0123456789abcdef\n");
//! assert_eq!(out, b"token=[REDACTED:GH_TOKEN]\n");
//! assert_eq!(n, 1);
//!
//! // Streaming: split anywhere, same result.
//! let mut s = r.stream();
//! let mut out = Vec::new();
//! s.push(b"token=example-fake-tok", &mut out);
//! s.push(b"en-0123456789abcdef\n", &mut out);
//! s.finish(&mut out);
//! assert_eq!(out, b"token=[REDACTED:GH_TOKEN]\n");
//! ```
//!
//! See `docs/redaction.md` for the full list of variants, the matching semantics and the known
//! limits.

#![forbid(unsafe_code)]
// Unit tests may index and unwrap; the non-test build is linted without this.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod decode;
pub mod entropy;
pub mod expand;
#[cfg(test)]
mod fixtures;
pub mod literals;
mod matcher;
pub mod normalize;
mod stream;
mod tables;
pub mod variants;

pub use stream::{FLUSH_SHOWN_MAX, MAX_SPANS, PARTIAL_MARKER, RedactStream};

use matcher::{Pass, PassKind, Patterns};
use std::sync::Arc;
use zeroize::Zeroize;

/// Values (after trimming whitespace) shorter than this many bytes are *short*: they are
/// redacted only where they stand as a whole token. Derived patterns shorter than this are not
/// registered at all.
pub const MIN_LEN: usize = 8;

/// Length in bytes of the fragments registered for random-looking values: any run of at least
/// this many bytes of such a value is redacted (truncated prints, `cut -c1-20`).
pub const FRAGMENT_LEN: usize = 12;

/// A run of this many consecutive noise bytes (whitespace, escape sequences) ends any partial
/// match in the normalised pass, which bounds how much a stream may hold back.
pub const MAX_NOISE_RUN: u32 = 64;

/// Everything shared by the streams of one redactor.
pub(crate) struct Inner {
    names: Vec<String>,
    markers: Vec<Vec<u8>>,
    short_names: Vec<String>,
    raw: Option<Pass>,
    normalized: Option<Pass>,
    /// Values written one character at a time as escapes or look-alikes (`decode.rs`).
    decode: Option<decode::DecodePass>,
    has_shared_patterns: bool,
    failed: bool,
}

/// The redactor of one grant: all variants of all its secret values, compiled into matchers.
///
/// Cheap to clone (an [`Arc`] inside), `Send` and `Sync`. Its [`Debug`](std::fmt::Debug) output
/// shows counts only, never values. The values and every pattern derived from them are
/// overwritten with zeros (`zeroize`) when the last clone is dropped; so are the bytes a stream
/// holds back when it is dropped.
#[derive(Clone)]
pub struct Redactor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.inner;
        f.debug_struct("Redactor")
            .field("secrets", &i.names.len())
            .field("raw_patterns", &i.raw.as_ref().map_or(0, |p| p.info.len()))
            .field(
                "normalized_patterns",
                &i.normalized.as_ref().map_or(0, |p| p.info.len()),
            )
            .field("failed", &i.failed)
            .finish()
    }
}

/// Statistics about a built redactor (for benchmarks and diagnostics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Number of secrets.
    pub secrets: usize,
    /// Patterns matched over the raw bytes (short values as whole tokens, and a few others).
    pub raw_patterns: usize,
    /// Patterns matched over the normalised view (whitespace and escapes removed).
    pub normalized_patterns: usize,
    /// Heap bytes used by the matchers and pattern tables.
    pub memory_bytes: usize,
    /// Matcher kinds in use (`first-byte+sorted-table` for the raw pass,
    /// `prefix-filter+sorted-table` for the normalised pass), raw pass first.
    pub engines: Vec<&'static str>,
    /// How many normalised bytes apart the normalised pass probes its q-gram bitmap on
    /// ordinary output: the shortest normalised pattern's length − 3, from 5 to 13 (0 without
    /// a normalised pass). Larger is faster; one value of 8 to 11 bytes brings it down to 5.
    pub probe_stride: usize,
}

impl Redactor {
    /// Builds a redactor from `(name, value)` pairs. `name` appears in the marker
    /// `[REDACTED:NAME]`; `value` is any byte string (empty values are ignored).
    ///
    /// Never fails: if the matchers cannot be built (only for absurd inputs), every stream of
    /// this redactor withholds all output and emits a single
    /// `[REDACTED:KEYVEIL_REDACTOR_UNAVAILABLE]` (fail closed).
    pub fn new<I, N, V>(secrets: I) -> Redactor
    where
        I: IntoIterator<Item = (N, V)>,
        N: Into<String>,
        V: AsRef<[u8]>,
    {
        Redactor::build(secrets, None)
    }

    /// A matcher of whole values only, for scans of places an agent can write (see
    /// `docs/write-side.md`): every known form of each *atom* of a value (the value, its lines
    /// and structured leaves) for which `keep` says yes, and nothing else: no
    /// [`FRAGMENT_LEN`]-byte fragments, no short values as tokens. A scan that names which of an
    /// agent's planted files holds a fragment or a guessable value answers its guesses; `keep`
    /// is the caller's judgement of which atoms no agent can guess.
    ///
    /// Never fails, like [`Redactor::new`].
    pub fn whole_values<I, N, V>(secrets: I, keep: &dyn Fn(&[u8]) -> bool) -> Redactor
    where
        I: IntoIterator<Item = (N, V)>,
        N: Into<String>,
        V: AsRef<[u8]>,
    {
        Redactor::build(secrets, Some(keep))
    }

    /// [`Redactor::new`] (`keep` `None`) or [`Redactor::whole_values`].
    fn build<I, N, V>(secrets: I, keep: Option<Keep<'_>>) -> Redactor
    where
        I: IntoIterator<Item = (N, V)>,
        N: Into<String>,
        V: AsRef<[u8]>,
    {
        let mut names = Vec::new();
        let mut values: Vec<Vec<u8>> = Vec::new();
        for (n, v) in secrets {
            names.push(n.into());
            values.push(v.as_ref().to_vec());
        }
        let markers: Vec<Vec<u8>> = names.iter().map(|n| marker(n)).collect();
        let mut short_names: Vec<String> = names
            .iter()
            .zip(&values)
            .filter(|(_, v)| expand::trim(v).len() < MIN_LEN)
            .map(|(n, _)| n.clone())
            .collect();
        short_names.sort();
        short_names.dedup();

        let mut patterns = Patterns::new(&markers);
        let mut decoded_atoms = Vec::new();
        for (i, value) in values.iter().enumerate() {
            let Ok(secret) = u32::try_from(i) else { break };
            add_secret(&mut patterns, &mut decoded_atoms, value, secret, keep);
        }
        let decode = decode::DecodePass::build(decoded_atoms);
        for v in &mut values {
            v.zeroize();
        }
        let raw = Pass::build(std::mem::take(&mut patterns.raw), PassKind::Raw);
        let normalized = Pass::build(
            std::mem::take(&mut patterns.normalized),
            PassKind::Normalized,
        );
        let has_shared_patterns = [&raw, &normalized]
            .iter()
            .any(|p| matches!(p, Ok(Some(p)) if !p.extra_owners.is_empty()))
            || decode
                .as_ref()
                .is_some_and(decode::DecodePass::shares_atoms);
        let inner = match (raw, normalized) {
            (Ok(raw), Ok(normalized)) => Inner {
                names,
                markers,
                short_names,
                raw,
                normalized,
                decode,
                has_shared_patterns,
                failed: false,
            },
            _ => Inner {
                names,
                markers,
                short_names,
                raw: None,
                normalized: None,
                decode: None,
                has_shared_patterns,
                failed: true,
            },
        };
        Redactor {
            inner: Arc::new(inner),
        }
    }

    /// One-shot redaction of a complete output. Returns the redacted bytes and the number of
    /// markers inserted. Identical to streaming the same bytes in any chunks.
    pub fn redact(&self, input: &[u8]) -> (Vec<u8>, usize) {
        let mut s = self.stream();
        let mut out = Vec::with_capacity(input.len());
        s.push(input, &mut out);
        s.finish(&mut out);
        (out, s.redactions())
    }

    /// A new streaming redactor (one per output stream: stdout and stderr each get their own).
    pub fn stream(&self) -> RedactStream {
        RedactStream::new(Arc::clone(&self.inner))
    }

    /// Names of the secrets any of whose variants occur in `input` (for scans of files a granted
    /// process wrote), deduplicated and sorted.
    pub fn find_leaks(&self, input: &[u8]) -> Vec<String> {
        let mut s = self.stream();
        let mut sink = Vec::new();
        s.push(input, &mut sink);
        s.finish(&mut sink);
        let mut names: Vec<String> = s
            .seen_secrets()
            .filter_map(|i| self.inner.names.get(i).cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// [`Redactor::find_leaks`], with where: for each name found, the byte ranges of `input`
    /// (start, end exclusive) where one of its variants occurs, in the order found, at most
    /// [`MAX_SPANS`] per secret. The same single pass as `find_leaks` (callers that
    /// need line numbers get them without matching again, whatever was found).
    pub fn find_leak_spans(&self, input: &[u8]) -> Vec<(String, Vec<(u64, u64)>)> {
        let mut s = self.stream();
        s.record_spans();
        let mut sink = Vec::new();
        s.push(input, &mut sink);
        s.finish(&mut sink);
        sink.zeroize();
        let mut out: Vec<(String, Vec<(u64, u64)>)> = Vec::new();
        for i in s.seen_secrets() {
            let Some(name) = self.inner.names.get(i) else {
                continue;
            };
            let spans = s
                .spans()
                .and_then(|sp| sp.get(i))
                .cloned()
                .unwrap_or_default();
            match out.iter_mut().find(|(n, _)| n == name) {
                Some((_, list)) => list.extend(spans),
                None => out.push((name.clone(), spans)),
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Names whose value (after trimming whitespace) is shorter than [`MIN_LEN`] bytes: they
    /// are redacted only as whole tokens, and the CLI warns about them. Sorted, deduplicated.
    pub fn short_value_names(&self) -> Vec<String> {
        self.inner.short_names.clone()
    }

    /// The longest pattern in bytes: a stream holds back at most this many bytes minus one of
    /// significant output (plus any whitespace and escape sequences inside them).
    pub fn max_pattern_len(&self) -> usize {
        let i = &self.inner;
        i.raw
            .as_ref()
            .map_or(0, |p| p.max_len)
            .max(i.normalized.as_ref().map_or(0, |p| p.max_len))
            .max(i.decode.as_ref().map_or(0, decode::DecodePass::max_len))
    }

    /// Pattern counts, memory use and matcher kinds.
    pub fn stats(&self) -> Stats {
        let i = &self.inner;
        let passes = [i.raw.as_ref(), i.normalized.as_ref()];
        Stats {
            secrets: i.names.len(),
            raw_patterns: i.raw.as_ref().map_or(0, |p| p.info.len()),
            normalized_patterns: i.normalized.as_ref().map_or(0, |p| p.info.len()),
            memory_bytes: passes
                .iter()
                .flatten()
                .map(|p| p.memory_usage())
                .sum::<usize>()
                + i.decode
                    .as_ref()
                    .map_or(0, decode::DecodePass::memory_usage),
            engines: passes.iter().flatten().map(|p| p.engine_name()).collect(),
            probe_stride: i.normalized.as_ref().map_or(0, Pass::probe_stride),
        }
    }
}

/// The marker that replaces a value: `[REDACTED:NAME]`.
pub fn marker(name: &str) -> Vec<u8> {
    format!("[REDACTED:{name}]").into_bytes()
}

/// Which atoms of a value [`Redactor::whole_values`] matches.
type Keep<'a> = &'a dyn Fn(&[u8]) -> bool;

/// Registers every pattern of one secret value, and its atoms for the decoding pass.
fn add_secret(
    patterns: &mut Patterns,
    decoded_atoms: &mut Vec<(Vec<u8>, u32)>,
    value: &[u8],
    secret: u32,
    keep: Option<Keep<'_>>,
) {
    let mut e = expand::expand(value);
    if let Some(keep) = keep {
        // Whole values only: the atoms `keep` accepts, in every known form; no tokens, no
        // fragments (`Redactor::whole_values`).
        e.atoms.retain_mut(|a| {
            let k = keep(a);
            if !k {
                a.zeroize();
            }
            k
        });
        for v in [
            &mut e.token_atoms,
            &mut e.fragment_sources,
            &mut e.literal_fragment_sources,
        ] {
            for a in v.iter_mut() {
                a.zeroize();
            }
            v.clear();
        }
    }
    decoded_atoms.extend(e.atoms.iter().map(|a| (a.clone(), secret)));
    for atom in &e.atoms {
        decoded_atoms.extend(
            variants::identity_escape_collapses(atom)
                .into_iter()
                .map(|a| (a, secret)),
        );
    }
    for atom in &e.atoms {
        for mut enc in variants::encodings(atom) {
            patterns.add_anywhere(&enc, secret);
            enc.zeroize();
        }
    }
    // Every character escaped, and Unicode look-alikes: normalised-pass patterns whose
    // q-grams (`&#11`, `\\u{7`, non-ASCII bytes) seldom occur in ordinary output, so the
    // prefix filter's false-positive rate, and throughput, stay as they were.
    for atom in &e.atoms {
        let forms = variants::per_char_escapes(atom)
            .into_iter()
            .chain(variants::compat_lookalikes(atom));
        for mut f in forms {
            patterns.add_anywhere(&f, secret);
            f.zeroize();
        }
    }
    for atom in &e.token_atoms {
        let forms = variants::token_encodings(atom)
            .into_iter()
            .chain(variants::per_char_escapes(atom))
            .chain(variants::compat_lookalikes(atom));
        for mut enc in forms {
            patterns.add_token(&enc, secret);
            enc.zeroize();
        }
    }
    for source in &e.fragment_sources {
        for window in expand::fragments(source) {
            patterns.add_fragment(window, secret);
            // Base64 of part of the value: every window, each starting a group.
            for mut b in variants::base64_aligned(window) {
                patterns.add_fragment(&b, secret);
                b.zeroize();
            }
        }
        // Hex fragments (hexdumps of part of the value), in lower case as dump tools print and
        // in upper case (`xxd -p -u`, `%02X`). Every second byte offset suffices: a hex run of
        // FRAGMENT_LEN + 1 value bytes contains one, and halving the windows halves their
        // share of the pattern table.
        let mut hex = variants::hex_lower(source);
        for window in hex.windows(2 * FRAGMENT_LEN).step_by(4) {
            patterns.add_fragment(window, secret);
        }
        hex.make_ascii_uppercase();
        for window in hex.windows(2 * FRAGMENT_LEN).step_by(4) {
            patterns.add_fragment(window, secret);
        }
        hex.zeroize();
    }
    for source in &e.literal_fragment_sources {
        for window in expand::fragments(source) {
            patterns.add_fragment(window, secret);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redactor_is_send_sync_clone() {
        fn assert_traits<T: Send + Sync + Clone>() {}
        assert_traits::<Redactor>();
        fn assert_send<T: Send>() {}
        assert_send::<RedactStream>();
    }

    #[test]
    fn whole_values_match_whole_atoms_in_known_forms_and_no_fragment() {
        let token = fixtures::secret("chunk-split-delay", "GH_TOKEN");
        let t = token.as_bytes();
        let all = |_: &[u8]| true;
        let r = Redactor::whole_values([("A", t)], &all);
        assert_eq!(r.find_leaks(format!("x {token} y").as_bytes()), ["A"]);
        let hex = variants::hex_lower(t);
        assert_eq!(r.find_leaks(&hex), ["A"], "a known form of the whole value");
        // A 12-byte fragment is a pattern of the full redactor only.
        let frag = &t[3..3 + FRAGMENT_LEN + 2];
        assert!(r.find_leaks(frag).is_empty());
        assert_eq!(Redactor::new([("A", t)]).find_leaks(frag), ["A"]);
        // An atom `keep` refuses is not matched at all; nor is a short value.
        let none = Redactor::whole_values([("A", t)], &|_: &[u8]| false);
        assert!(none.find_leaks(t).is_empty());
        let short = Redactor::whole_values([("P", b"4921".as_slice())], &all);
        assert!(short.find_leaks(b"pin 4921 ok").is_empty());
    }

    #[test]
    fn probe_stride_follows_the_shortest_pattern() {
        let token = fixtures::secret("chunk-split-delay", "GH_TOKEN");
        let stride =
            |secrets: &[(&str, &str)]| Redactor::new(secrets.to_vec()).stats().probe_stride;
        // A random token: its shortest patterns are its 12-byte fragments.
        assert_eq!(stride(&[("A", token.as_str())]), 9);
        // An 8-byte value is a pattern of its own.
        assert_eq!(stride(&[("A", token.as_str()), ("B", "abcdefgh")]), 5);
        // No fragments for a low-entropy value: capped.
        assert_eq!(stride(&[("C", "a".repeat(30).as_str())]), 13);
        // Short values (under MIN_LEN) go to the raw pass and do not lower it.
        assert_eq!(stride(&[("A", token.as_str()), ("P", "4921")]), 9);
    }

    #[test]
    fn raw_value() {
        let r = Redactor::new([("A", "s3cr3t-V4lue-xyz")]);
        assert_eq!(r.redact(b"x s3cr3t-V4lue-xyz y").0, b"x [REDACTED:A] y");
    }

    #[test]
    fn debug_hides_values() {
        let token = fixtures::secret("chunk-split-delay", "GH_TOKEN");
        let pin = fixtures::secret("short-secret-boundary", "DEPLOY_PIN");
        let r = Redactor::new([("A", token.as_str()), ("B", pin.as_str())]);
        // A stream holding back the first part of the token.
        let mut s = r.stream();
        let mut out = Vec::new();
        s.push(format!("x {}", &token[..30]).as_bytes(), &mut out);
        let shown = [
            format!("{r:?}"),
            format!("{r:#?}"),
            format!("{s:?}"),
            format!("{:?}", r.inner.raw),
            format!("{:?}", r.inner.normalized),
            format!("{:?}", r.inner.normalized.as_ref().map(|p| p.state())),
            format!("{:?}", expand::expand(token.as_bytes())),
        ];
        for text in &shown {
            assert!(!text.contains(&pin), "{text}");
            // No run of 6 bytes of the token, nor of its hex.
            let hex = String::from_utf8(variants::hex_lower(token.as_bytes())).unwrap();
            for v in [&token, &hex] {
                for w in v.as_bytes().windows(6) {
                    assert!(!text.contains(std::str::from_utf8(w).unwrap()), "{text}");
                }
            }
            // Nor byte lists (derived `Debug` of `Vec<u8>`).
            let b = token.as_bytes();
            let list = format!("{}, {}, {}", b[4], b[5], b[6]);
            assert!(!text.contains(&list), "{text}");
        }
        assert!(shown[0].contains("secrets: 2"), "{}", shown[0]);
    }

    /// Redacts `pre <form> post` and checks that exactly the form became one marker.
    fn assert_form_redacted(r: &Redactor, form: &str) {
        let input = format!("pre {form} post\n");
        let (out, n) = r.redact(input.as_bytes());
        assert_eq!(
            String::from_utf8_lossy(&out),
            "pre [REDACTED:S] post\n",
            "form {form:?}"
        );
        assert_eq!(n, 1);
    }

    /// Text in the same encoding that is not the value stays as it is.
    fn assert_untouched(r: &Redactor, text: &str) {
        assert_eq!(r.redact(text.as_bytes()).0, text.as_bytes(), "{text:?}");
    }

    #[test]
    fn every_character_escaped_in_each_style_is_one_marker() {
        let v = fixtures::secret("html-decimal-reference-every-char", "SITE_TOKEN");
        let r = Redactor::new([("S", &v)]);
        let each =
            |f: &dyn Fn(u32) -> String| -> String { v.chars().map(|c| f(c as u32)).collect() };
        for form in [
            each(&|c| format!("&#{c};")),
            each(&|c| format!("&#{c}")),
            each(&|c| format!("&#x{c:x};")),
            each(&|c| format!("&#x{c:X};")),
            each(&|c| format!("&#x{c:x}")),
            each(&|c| format!("&#x{c:04x};")),
            each(&|c| format!("\\{c:x} ")).trim_end().to_owned() + " ",
            each(&|c| format!("\\u{{{c:x}}}")),
            each(&|c| format!("\\u{c:04x}")),
            each(&|c| format!("\\x{c:02x}")),
            each(&|c| format!("%{c:02x}")),
            each(&|c| format!("%{c:02X}")),
        ] {
            let form = form.trim_end();
            let input = format!("pre {form} post\n");
            let (out, n) = r.redact(input.as_bytes());
            assert_eq!(
                String::from_utf8_lossy(&out),
                "pre [REDACTED:S] post\n",
                "{form:?}"
            );
            assert_eq!(n, 1);
            // Streamed one byte at a time: the same.
            let mut s = r.stream();
            let mut o = Vec::new();
            for b in input.as_bytes() {
                s.push(std::slice::from_ref(b), &mut o);
            }
            s.finish(&mut o);
            assert_eq!(o, out, "{form:?}");
        }
        // Other text escaped the same way is left alone.
        let other: String = "tok_8fQ2vLx9Rk3mZq"
            .chars()
            .map(|c| format!("&#{};", c as u32))
            .collect();
        assert_untouched(&r, &format!("{other}\n"));
        assert_untouched(&r, "&#60;b&#62; \\u{1F600} %20%2F \\41 \n");
    }

    #[test]
    fn per_character_forms_stay_out_of_the_raw_pass() {
        // They are normalised-pass patterns (their q-grams seldom occur in ordinary output):
        // tokens still need no raw pass, which would look at every byte of output.
        let gh = fixtures::secret("chunk-split-delay", "GH_TOKEN");
        let short = fixtures::secret("utf16le-wide-text", "GH_TOKEN");
        let r = Redactor::new([("A", gh.as_str()), ("B", short.as_str())]);
        assert_eq!(r.stats().raw_patterns, 0);
    }

    #[test]
    fn unicode_look_alikes_are_one_marker() {
        let v = fixtures::secret("fullwidth-forms", "DB_PASSWORD");
        let r = Redactor::new([("S", &v)]);
        let wide: String = v
            .chars()
            .map(|c| char::from_u32(c as u32 + 0xFEE0).unwrap())
            .collect();
        assert_form_redacted(&r, &wide);
        for (a, z) in [(0x1D400, 0x1D7CE), (0x1D670, 0x1D7F6), (0x1D5D4, 0x1D7EC)] {
            let styled: String = v
                .chars()
                .map(|c| match c {
                    'A'..='Z' => char::from_u32(a + c as u32 - 65).unwrap(),
                    'a'..='z' => char::from_u32(a + 26 + c as u32 - 97).unwrap(),
                    '0'..='9' => char::from_u32(z + c as u32 - 48).unwrap(),
                    _ => c,
                })
                .collect();
            assert_form_redacted(&r, &styled);
        }
        // Script letters that live in Letterlike Symbols (`B` is U+212C, `e` U+212F).
        let r = Redactor::new([("S", "Be7_Rqm2Lx9z")]);
        let script: String = "Be7_Rqm2Lx9z"
            .chars()
            .map(|c| match c {
                'B' => '\u{212C}',
                'e' => '\u{212F}',
                'R' => '\u{211B}',
                'L' => '\u{2112}',
                'A'..='Z' => char::from_u32(0x1D49C + c as u32 - 65).unwrap(),
                'a'..='z' => char::from_u32(0x1D49C + 26 + c as u32 - 97).unwrap(),
                _ => c,
            })
            .collect();
        assert_form_redacted(&r, &script);
        // Fullwidth text that is not the value stays.
        assert_untouched(&r, "\u{FF34}\u{FF4F}\u{FF4B}\u{FF45}\u{FF4E} \u{3000}\n");
        // A short value in fullwidth, as a whole token.
        let r = Redactor::new([("S", "4821")]);
        let (out, _) = r.redact("pin=\u{FF14}\u{FF18}\u{FF12}\u{FF11}\n".as_bytes());
        assert_eq!(String::from_utf8_lossy(&out), "pin=[REDACTED:S]\n");
    }

    #[test]
    fn yaml_single_quoted() {
        let v = fixtures::secret("shell-quoted-xtrace", "DB_PASS");
        assert!(v.contains('\''));
        let r = Redactor::new([("S", &v)]);
        let input = format!("key: '{}'\n", v.replace('\'', "''"));
        assert_eq!(r.redact(input.as_bytes()).0, b"key: '[REDACTED:S]'\n");
        assert_untouched(&r, "password: 'it''s a plain sentence, not the value'\n");
    }

    #[test]
    fn percent_encoding_with_reserved_characters_and_mixed_case() {
        let v = fixtures::secret("url-encoded-conn-string", "DB_PASSWORD");
        let r = Redactor::new([("S", &v)]);
        // encodeURI keeps `# @ : / !`; only `%` and space are escaped.
        assert_form_redacted(&r, &v.replace('%', "%25").replace(' ', "%20"));
        // Strict encoding with the hex digits in mixed case.
        let mut escaped = 0;
        let mixed: String = v
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    return (b as char).to_string();
                }
                escaped += 1;
                if escaped % 2 == 1 {
                    format!("%{b:02x}")
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        assert!(mixed.contains("%3a") && mixed.contains("%2F"), "{mixed}");
        assert_form_redacted(&r, &mixed);
        assert_untouched(&r, "GET /a%2Fb%3a/c?q=K9%23mQ%40x HTTP/1.1\n");
    }

    #[test]
    fn html_numeric_and_named_references() {
        let v = fixtures::secret("b64-of-json-config", "REGISTRY_PASSWORD");
        let r = Redactor::new([("S", &v)]);
        let numeric = |f: &dyn Fn(u8) -> String| -> String {
            v.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() {
                        (b as char).to_string()
                    } else {
                        f(b)
                    }
                })
                .collect()
        };
        assert_form_redacted(&r, &numeric(&|b| format!("&#{b};")));
        assert_form_redacted(&r, &numeric(&|b| format!("&#x{b:x};")));
        assert_form_redacted(&r, &numeric(&|b| format!("&#X{b:X};")));
        // The five special characters only, named or numeric.
        let q = fixtures::secret("json-escaped-password", "API_SECRET");
        let r = Redactor::new([("S", &q)]);
        assert_form_redacted(&r, &q.replace('"', "&#x22;"));
        assert_form_redacted(&r, &q.replace('"', "&#X22;"));
        assert_form_redacted(&r, &q.replace('"', "&#34;"));
        let s = fixtures::secret("shell-quoted-xtrace", "DB_PASS");
        let r = Redactor::new([("S", &s)]);
        for (quot, apos) in [
            ("&quot;", "&#39;"),
            ("&quot;", "&#039;"),
            ("&#x22;", "&#x27;"),
        ] {
            assert_form_redacted(&r, &s.replace('"', quot).replace('\'', apos));
        }
        assert_untouched(&r, "<p>Tom &amp; Jerry&#39;s &#x22;show&#x22; &#33;</p>\n");
    }

    #[test]
    fn json_unicode_escapes_of_ascii() {
        let v = fixtures::secret("json-escaped-slash-stderr", "SF_ACCESS_TOKEN");
        let r = Redactor::new([("S", &v)]);
        let esc = |all: bool, upper: bool| -> String {
            v.bytes()
                .map(|b| match (all || !b.is_ascii_alphanumeric(), upper) {
                    (false, _) => (b as char).to_string(),
                    (true, false) => format!("\\u{:04x}", b),
                    (true, true) => format!("\\u{:04X}", b),
                })
                .collect()
        };
        for all in [false, true] {
            for upper in [false, true] {
                assert_form_redacted(&r, &esc(all, upper));
            }
        }
        assert_untouched(
            &r,
            "{\"path\":\"\\u002fapi\\u002Fv1\",\"ok\":\"\\u0021\"}\n",
        );
    }

    /// Issue 15 item 7: a value with a tab and both quotes printed inside a Python dict.
    #[test]
    fn python_dict_repr_of_a_value_with_tab_and_quotes() {
        let v = "t0k\ten'Q\"Vb7mK2pLx9";
        let r = Redactor::new([("S", v)]);
        let printed = "{'k': 't0k\\ten\\'Q\"Vb7mK2pLx9'}\n";
        assert_eq!(r.redact(printed.as_bytes()).0, b"{'k': '[REDACTED:S]'}\n");
        // Truncated: a 12-byte run of the escaped form, across the `\t`.
        assert_form_redacted(&r, "0k\\ten'Q\"Vb7");
        // 12 bytes of the printable run `en'Q"Vb7mK2pLx9`, as a repr prints them.
        assert_form_redacted(&r, "Q\"Vb7mK2pLx9");
    }

    #[test]
    fn printable_runs_of_pass_phrases_are_not_fragments() {
        let r = Redactor::new([("S", "correct horse\tbattery staple Zq8vLp2mXr7Kw4")]);
        // Words are not random enough; the random run is.
        assert_untouched(&r, "a correct horse, a battery staple\n");
        assert_form_redacted(&r, "q8vLp2mXr7Kw");
    }

    #[test]
    fn wide_text_and_nul_separated_lists() {
        let token = fixtures::secret("chunk-split-delay", "GH_TOKEN");
        let r = Redactor::new([("S", &token)]);
        let utf16: Vec<u8> = token.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let mut input = b"pre ".to_vec();
        input.extend_from_slice(&utf16);
        input.extend_from_slice(b" post");
        // The marker ends at the last value byte: the NUL of the last unit stays.
        assert_eq!(r.redact(&input).0, b"pre [REDACTED:S]\0 post");
        let environ = format!("HOME=/root\0GH_TOKEN={token}\0PATH=/bin\0");
        assert_eq!(
            r.redact(environ.as_bytes()).0,
            b"HOME=/root\0GH_TOKEN=[REDACTED:S]\0PATH=/bin\0"
        );
    }

    #[test]
    fn byte_lists() {
        let token = fixtures::secret("chunk-split-delay", "GH_TOKEN");
        let r = Redactor::new([("S", &token)]);
        let list = |sep: &str| -> String {
            token
                .bytes()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(sep)
        };
        assert_form_redacted(&r, &format!("[{}]", list(", ")).replace(['[', ']'], ""));
        assert_form_redacted(&r, &list(" "));
        let xxd: Vec<String> = token.bytes().map(|b| format!("0x{b:02x}")).collect();
        assert_form_redacted(&r, &xxd.join(",\n  "));
    }
}
