//! From one secret value to the *atoms* that get encoded into patterns.
//!
//! An atom is a byte string the program may print in any of the encodings of
//! [`crate::variants`]: the value itself, its trimmed form, its Unicode NFC/NFD forms, its
//! percent-decoded form, the lines of a multi-line value, its CRLF form, and the leaves of a
//! structured value (JSON leaves, the password of a URL with credentials, the values of a
//! `KEY=VALUE` list). Pieces that do not look like key material (`{`, `"region": "eu-west-1"`,
//! PEM armour lines) are not atoms, so they are not masked wherever they appear.

use crate::entropy::{fragmentable, looks_secret};
use crate::variants::{dedup, newline_escaped, percent_decoded};
use crate::{FRAGMENT_LEN, MIN_LEN};
use unicode_normalization::UnicodeNormalization as _;
use zeroize::Zeroize;

/// How deep structured values are unpacked (a JSON leaf that is itself a URL with credentials
/// is unpacked once more).
const MAX_DEPTH: u32 = 3;

/// The atoms of one secret value. Wiped on drop; its `Debug` prints counts only.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct Expansion {
    /// Atoms of at least [`MIN_LEN`] bytes, matched anywhere in all their encodings.
    pub atoms: Vec<Vec<u8>>,
    /// Atoms shorter than [`MIN_LEN`] bytes, matched only as whole tokens.
    pub token_atoms: Vec<Vec<u8>>,
    /// Random-looking atoms of which every run of [`FRAGMENT_LEN`] bytes is also a pattern
    /// (and every second window of their hex): whole atoms, or the printable runs of atoms
    /// that hold whitespace or control characters.
    pub fragment_sources: Vec<Vec<u8>>,
    /// Runs of the escaped form of atoms that hold whitespace or control characters (tab,
    /// line feed and carriage return written as `\t`, `\n`, `\r`, as every string-literal
    /// style writes them), split at spaces and other controls: their [`FRAGMENT_LEN`]-byte
    /// windows are patterns too, so a truncated literal (`%.20r`, `reprlib`) is caught
    /// across the escapes.
    pub literal_fragment_sources: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Expansion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expansion")
            .field("atoms", &self.atoms.len())
            .field("token_atoms", &self.token_atoms.len())
            .field("fragment_sources", &self.fragment_sources.len())
            .field(
                "literal_fragment_sources",
                &self.literal_fragment_sources.len(),
            )
            .finish()
    }
}

impl Drop for Expansion {
    fn drop(&mut self) {
        for v in [
            &mut self.atoms,
            &mut self.token_atoms,
            &mut self.fragment_sources,
            &mut self.literal_fragment_sources,
        ] {
            for a in v.iter_mut() {
                a.zeroize();
            }
        }
    }
}

/// Expands a secret value into its atoms.
pub fn expand(value: &[u8]) -> Expansion {
    let mut e = Expansion::default();
    expand_into(value, 0, &mut e);
    e.atoms = dedup(std::mem::take(&mut e.atoms));
    e.token_atoms = dedup(std::mem::take(&mut e.token_atoms));
    e.fragment_sources = dedup(std::mem::take(&mut e.fragment_sources));
    e.literal_fragment_sources = dedup(std::mem::take(&mut e.literal_fragment_sources));
    e
}

/// `s` without leading and trailing ASCII whitespace.
pub fn trim(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

fn unicode_forms(s: &[u8]) -> Vec<Vec<u8>> {
    match std::str::from_utf8(s) {
        Ok(text) if !text.is_ascii() => vec![
            text.nfc().collect::<String>().into_bytes(),
            text.nfd().collect::<String>().into_bytes(),
        ],
        _ => Vec::new(),
    }
}

fn expand_into(value: &[u8], depth: u32, e: &mut Expansion) {
    let trimmed = trim(value);
    if trimmed.is_empty() {
        return;
    }
    if trimmed.len() < MIN_LEN {
        e.token_atoms.push(trimmed.to_vec());
        e.token_atoms.extend(unicode_forms(trimmed));
        return;
    }
    e.atoms.push(value.to_vec());
    e.atoms.push(trimmed.to_vec());
    e.atoms.extend(unicode_forms(value));
    e.atoms.extend(unicode_forms(trimmed));
    for decoded in percent_decoded(trimmed) {
        if decoded.as_slice() != trimmed && depth < MAX_DEPTH {
            expand_into(&decoded, depth + 1, e);
        }
    }

    let multi_line = trimmed.contains(&b'\n');
    if multi_line {
        e.atoms.push(crlf(trimmed));
    }

    let mut structured = false;
    if depth < MAX_DEPTH {
        structured |= json_leaves(trimmed, depth, e);
        structured |= url_passwords(trimmed, depth, e);
        structured |= key_values(trimmed, depth, e);
    }

    if multi_line && !structured {
        for line in trimmed.split(|&b| b == b'\n') {
            let line = trim(line);
            if looks_secret(line) {
                e.atoms.push(line.to_vec());
                add_fragment_sources(line, e);
            }
        }
    }
    if !multi_line && !structured {
        add_fragment_sources(trimmed, e);
    }
}

/// Whether `b` ends a printable run: ASCII whitespace or a control character.
fn breaks_run(b: u8) -> bool {
    b.is_ascii_whitespace() || b.is_ascii_control()
}

/// The fragment rule for one piece (a value, a line): the whole piece when it is random
/// enough ([`fragmentable`]); otherwise, if it holds whitespace or control characters, each
/// of its printable runs that is random enough, and the runs of its `\t`/`\n`/`\r`-escaped
/// form (split at spaces and other controls) that are.
fn add_fragment_sources(piece: &[u8], e: &mut Expansion) {
    if fragmentable(piece) {
        e.fragment_sources.push(piece.to_vec());
        return;
    }
    if !piece.iter().any(|&b| breaks_run(b)) {
        return;
    }
    for run in piece.split(|&b| breaks_run(b)) {
        if fragmentable(run) {
            e.fragment_sources.push(run.to_vec());
        }
    }
    let mut escaped = newline_escaped(piece);
    for run in escaped.split(|&b| b == b' ' || b.is_ascii_control()) {
        if fragmentable(run) && !piece.split(|&b| breaks_run(b)).any(|r| r == run) {
            e.literal_fragment_sources.push(run.to_vec());
        }
    }
    escaped.zeroize();
}

/// `s` with every bare `\n` written as `\r\n`.
fn crlf(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 16);
    let mut prev = 0u8;
    for &b in s {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// Key names whose values are secrets whatever they look like.
fn sensitive_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "pass",
        "pwd",
        "secret",
        "token",
        "key",
        "auth",
        "cred",
        "private",
        "cookie",
        "session",
        "signature",
        "salt",
    ]
    .iter()
    .any(|w| k.contains(w))
}

/// Registers a leaf found under `key` if the key is sensitive or the leaf looks like a secret.
/// Returns whether it was registered.
fn leaf(key: Option<&str>, value: &[u8], depth: u32, e: &mut Expansion) -> bool {
    let v = trim(value);
    let sensitive = key.is_some_and(sensitive_key);
    let multi_line_blob = v.contains(&b'\n') && v.len() >= 32;
    let register = (sensitive && v.len() >= 4) || looks_secret(v) || multi_line_blob;
    if register {
        expand_into(v, depth + 1, e);
    }
    register
}

/// JSON objects and arrays (RFC 8259): each leaf, and the compact re-serialisation.
fn json_leaves(s: &[u8], depth: u32, e: &mut Expansion) -> bool {
    let Some(first) = s.first() else { return false };
    if !matches!(first, b'{' | b'[') {
        return false;
    }
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(s) else {
        return false;
    };
    e.atoms.push(json_compact(s));
    walk_json(None, &doc, depth, e);
    true
}

fn walk_json(key: Option<&str>, v: &serde_json::Value, depth: u32, e: &mut Expansion) {
    match v {
        serde_json::Value::String(s) => {
            leaf(key, s.as_bytes(), depth, e);
        }
        serde_json::Value::Number(n) => {
            if key.is_some_and(sensitive_key) {
                leaf(key, n.to_string().as_bytes(), depth, e);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                walk_json(key, item, depth, e);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, item) in map {
                walk_json(Some(k), item, depth, e);
            }
        }
        serde_json::Value::Bool(_) | serde_json::Value::Null => {}
    }
}

/// A JSON text with all whitespace outside strings removed (keeps key order, unlike a
/// parse-and-print round trip).
pub fn json_compact(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut in_string = false;
    let mut escaped = false;
    for &b in s {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
            out.push(b);
        } else if !b.is_ascii_whitespace() {
            out.push(b);
        }
    }
    out
}

/// Passwords of URLs with credentials (`scheme://user:password@host`, RFC 3986 §3.2.1), raw and
/// percent-decoded.
fn url_passwords(s: &[u8], depth: u32, e: &mut Expansion) -> bool {
    let mut found = false;
    let mut rest = s;
    while let Some(i) = find(rest, b"://") {
        let after = rest.get(i + 3..).unwrap_or_default();
        let authority_end = after
            .iter()
            .position(|&b| matches!(b, b'/' | b'?' | b'#') || b.is_ascii_whitespace())
            .unwrap_or(after.len());
        let authority = after.get(..authority_end).unwrap_or_default();
        if let Some(at) = authority.iter().rposition(|&b| b == b'@') {
            let userinfo = authority.get(..at).unwrap_or_default();
            if let Some(colon) = userinfo.iter().position(|&b| b == b':') {
                let password = userinfo.get(colon + 1..).unwrap_or_default();
                if !password.is_empty() {
                    found = true;
                    expand_into(password, depth + 1, e);
                }
            }
        }
        rest = after;
    }
    found
}

/// Values of `KEY=VALUE` lists (dotenv files, `;`-separated connection strings, `&`-separated
/// query strings) and `key: value` lines (YAML-ish).
fn key_values(s: &[u8], depth: u32, e: &mut Expansion) -> bool {
    let mut pairs: Vec<(String, Vec<u8>)> = Vec::new();
    for line in s.split(|&b| b == b'\n') {
        let line = trim(line);
        let line = line.strip_prefix(b"export ").unwrap_or(line);
        if line.starts_with(b"#") {
            continue;
        }
        let mut line_pairs = Vec::new();
        match split_pair(line, b'=') {
            // `KEY="quoted value"`: the quotes protect any `;` or `&` inside.
            Some(pair) if matches!(trim(&pair.1).first(), Some(b'"' | b'\'')) => {
                line_pairs.push(pair);
            }
            _ => {
                for segment in line.split(|&b| b == b';' || b == b'&') {
                    if let Some(pair) = split_pair(trim(segment), b'=') {
                        line_pairs.push(pair);
                    }
                }
            }
        }
        if line_pairs.is_empty()
            && let Some(i) = find(line, b": ")
            && let Some(pair) = split_at_pair(line, i, 2)
        {
            line_pairs.push(pair);
        }
        pairs.extend(line_pairs);
    }
    let mut any = false;
    for (key, value) in pairs {
        let value = unquote(trim(&value));
        if !value.is_empty() {
            any |= leaf(Some(&key), value, depth, e);
        }
    }
    any
}

fn split_pair(segment: &[u8], sep: u8) -> Option<(String, Vec<u8>)> {
    let i = segment.iter().position(|&b| b == sep)?;
    split_at_pair(segment, i, 1)
}

fn split_at_pair(segment: &[u8], i: usize, sep_len: usize) -> Option<(String, Vec<u8>)> {
    let key = trim(segment.get(..i)?);
    let value = segment.get(i + sep_len..)?;
    let mut chars = key.iter();
    let first = chars.next()?;
    if !(first.is_ascii_alphabetic() || *first == b'_') {
        return None;
    }
    if !chars.all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return None;
    }
    let key = std::str::from_utf8(key).ok()?.to_string();
    Some((key, value.to_vec()))
}

fn unquote(v: &[u8]) -> &[u8] {
    for q in [b'"', b'\''] {
        if v.len() >= 2
            && v.first() == Some(&q)
            && v.last() == Some(&q)
            && let Some(inner) = v.get(1..v.len() - 1)
        {
            return inner;
        }
    }
    v
}

/// Position of the first occurrence of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// All windows of [`FRAGMENT_LEN`] bytes of `source`.
pub fn fragments(source: &[u8]) -> impl Iterator<Item = &[u8]> {
    source.windows(FRAGMENT_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(v: &[Vec<u8>], s: &str) -> bool {
        v.iter().any(|x| x == s.as_bytes())
    }

    #[test]
    fn plain_token() {
        let value = crate::fixtures::secret("trailing-newline-value", "SLACK_BOT_TOKEN");
        let trimmed = value.trim_end();
        assert_ne!(value, trimmed, "the fixture ends with a newline");
        let e = expand(value.as_bytes());
        assert!(has(&e.atoms, trimmed));
        assert!(has(&e.fragment_sources, trimmed));
        assert!(e.token_atoms.is_empty());
    }

    #[test]
    fn short_value_is_token_only() {
        let e = expand(b" 4821\n");
        assert_eq!(e.token_atoms, vec![b"4821".to_vec()]);
        assert!(e.atoms.is_empty());
    }

    #[test]
    fn pem_lines() {
        let pem = crate::fixtures::secret("pem-partial-lines", "TLS_KEY");
        let lines: Vec<&str> = pem.lines().collect();
        let (armour, body) = (lines[0], &lines[1..lines.len() - 1]);
        assert!(armour.starts_with("-----BEGIN") && body.len() >= 2);
        let e = expand(pem.as_bytes());
        for line in body {
            assert!(
                has(&e.atoms, line),
                "a body line of the PEM value is not an atom"
            );
        }
        assert!(!has(&e.atoms, armour));
        assert!(e.atoms.iter().any(|a| a.windows(2).any(|w| w == b"\r\n")));
    }

    #[test]
    fn json_leaves_and_compact() {
        let key = crate::fixtures::leaf("json-secret-brace-overmask", "APP_CONFIG", "api_key");
        let doc = format!(
            "{{\n  \"api_key\": \"{key}\",\n  \"region\": \"eu-west-1\",\n  \"password\": \"hunter2\"\n}}"
        );
        let e = expand(doc.as_bytes());
        assert!(has(&e.atoms, &key));
        assert!(has(
            &e.atoms,
            &format!("{{\"api_key\":\"{key}\",\"region\":\"eu-west-1\",\"password\":\"hunter2\"}}")
        ));
        assert!(!has(&e.atoms, "eu-west-1"));
        assert!(!has(&e.atoms, "{"));
        assert!(has(&e.token_atoms, "hunter2"));
    }

    #[test]
    fn url_and_key_values() {
        let e = expand(b"postgresql://app:Zq8%23pW2vLx9@db.internal:5432/prod");
        assert!(has(&e.atoms, "Zq8%23pW2vLx9"));
        assert!(has(&e.atoms, "Zq8#pW2vLx9"));
        let e = expand(b"DB_USER=app\nDB_PASSWORD=\"Tr0ub4dor&3x\"\nREGION=eu-west-1\n");
        assert!(has(&e.atoms, "Tr0ub4dor&3x"));
        assert!(!has(&e.atoms, "eu-west-1"));
        let e = expand(b"Server=db;User Id=app;Password=Pa55w0rdX;");
        assert!(has(&e.atoms, "Pa55w0rdX"));
    }

    #[test]
    fn unicode_forms_added() {
        let e = expand("caf\u{e9}-s3cr3t-V4lue".as_bytes());
        assert!(has(&e.atoms, "cafe\u{301}-s3cr3t-V4lue"));
    }

    #[test]
    fn compact_keeps_string_spaces() {
        assert_eq!(
            json_compact(b"{ \"a b\" : [1, \"c\\\" d\"] }"),
            b"{\"a b\":[1,\"c\\\" d\"]}"
        );
    }
}
