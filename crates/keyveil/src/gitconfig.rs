//! git's configuration syntax, byte for byte as git's own parser reads it (`config.c`:
//! `git_parse_source`, `get_base_var`, `get_extended_base_var`, `get_value`, `parse_value`), so
//! that what the card quotes from a `.git/config` is the value git will use.
//!
//! Covered: a UTF-8 byte order mark; `\r\n` line ends; `#` and `;` comments outside quotes (also
//! after a value); `[section]`, `[section "subsection"]` (subsection case kept, `\x` is `x`),
//! the deprecated `[section.subsection]` (all lower-cased); a header followed by a key on the same
//! line; keys of letters, digits and `-`, starting with a letter, lower-cased; a key with no `=`
//! (boolean true, no value); values with `"` quoting (toggled anywhere in the value), the escapes
//! `\n \t \b \" \\`, a backslash-newline continuation (inside quotes or not), trailing whitespace
//! outside quotes trimmed and inner runs kept. An unknown escape, a newline inside quotes, an
//! unterminated header or a line that is none of these is an error: git refuses the whole file
//! ("bad config line N") and so runs nothing from it; the parse stops there.
//!
//! A property test in this module checks the parser against `git config --file F --list -z` on
//! generated tricky configurations.

/// One `name = value` assignment, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Section, lower-case (`core`, `includeif`; `a.b` for `[a.b "c"]`).
    pub section: String,
    /// Subsection: as written for `[s "Sub"]`, lower-cased for `[s.sub]`; `None` without one.
    pub sub: Option<String>,
    /// Key, lower-case.
    pub key: String,
    /// The value after unquoting and escapes; `None` for a key without `=` (boolean true).
    pub value: Option<String>,
}

impl Entry {
    /// `section[.sub].key` as `git config --list` prints it.
    pub(crate) fn name(&self) -> String {
        match &self.sub {
            Some(s) => format!("{}.{s}.{}", self.section, self.key),
            None if self.section.is_empty() => self.key.clone(),
            None => format!("{}.{}", self.section, self.key),
        }
    }
}

/// What [`parse`] found: the entries before any error, and the 1-based line git would name as
/// "bad config line", if any.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    /// Entries in file order.
    pub entries: Vec<Entry>,
    /// The line of the first syntax error (git refuses the whole file).
    pub bad_line: Option<usize>,
}

struct Src<'a> {
    b: &'a [u8],
    i: usize,
    eof: bool,
    line: usize,
}

impl Src<'_> {
    /// `get_next_char`: `\r\n` reads as `\n`; end of input reads as `\n` with `eof` set.
    fn next(&mut self) -> u8 {
        let Some(&c) = self.b.get(self.i) else {
            if !self.eof {
                self.line += 1;
            }
            self.eof = true;
            return b'\n';
        };
        self.i += 1;
        let c = if c == b'\r' && self.b.get(self.i) == Some(&b'\n') {
            self.i += 1;
            b'\n'
        } else {
            c
        };
        if c == b'\n' {
            self.line += 1;
        }
        c
    }
}

/// git's `isspace` (sane-ctype: space, `\t`, `\n`, `\r`).
fn space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

fn keychar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-'
}

/// `parse_value`: `None` on an error.
fn value(s: &mut Src<'_>) -> Option<Vec<u8>> {
    let mut v = Vec::new();
    let (mut quote, mut comment) = (false, false);
    let mut trim_len = 0usize;
    loop {
        let c = s.next();
        if c == b'\n' {
            if quote {
                return None;
            }
            if trim_len > 0 {
                v.truncate(trim_len);
            }
            return Some(v);
        }
        if comment {
            continue;
        }
        if space(c) && !quote {
            if trim_len == 0 {
                trim_len = v.len();
            }
            if !v.is_empty() {
                v.push(c);
            }
            continue;
        }
        if !quote && (c == b';' || c == b'#') {
            comment = true;
            continue;
        }
        trim_len = 0;
        if c == b'\\' {
            let e = s.next();
            let out = match e {
                b'\n' => continue,
                b't' => b'\t',
                b'b' => 0x08,
                b'n' => b'\n',
                b'\\' | b'"' => e,
                _ => return None,
            };
            v.push(out);
            continue;
        }
        if c == b'"' {
            quote = !quote;
            continue;
        }
        v.push(c);
    }
}

/// `get_base_var` and `get_extended_base_var`: the header after `[`, as `(section, sub)`.
fn header(s: &mut Src<'_>) -> Option<(String, Option<String>)> {
    let mut name = Vec::new();
    loop {
        let c = s.next();
        if s.eof {
            return None;
        }
        if c == b']' {
            break;
        }
        if space(c) {
            // `[section "sub"]`.
            let mut c = c;
            loop {
                if c == b'\n' {
                    return None;
                }
                c = s.next();
                if !space(c) {
                    break;
                }
            }
            if c != b'"' {
                return None;
            }
            let mut sub = Vec::new();
            loop {
                let mut c = s.next();
                if c == b'\n' {
                    return None;
                }
                if c == b'"' {
                    break;
                }
                if c == b'\\' {
                    c = s.next();
                    if c == b'\n' {
                        return None;
                    }
                }
                sub.push(c);
            }
            if s.next() != b']' {
                return None;
            }
            // `[ "sub"]` is accepted by git: an empty section.
            return Some((
                String::from_utf8_lossy(&name).into_owned(),
                Some(String::from_utf8_lossy(&sub).into_owned()),
            ));
        }
        if !keychar(c) && c != b'.' {
            return None;
        }
        name.push(c.to_ascii_lowercase());
    }
    if name.is_empty() {
        return None;
    }
    // `[section.sub]` (deprecated): everything lower-cased, the first dot splits.
    let name = String::from_utf8_lossy(&name).into_owned();
    Some(match name.split_once('.') {
        Some((sec, sub)) => (sec.to_owned(), Some(sub.to_owned())),
        None => (name, None),
    })
}

/// Parses git configuration text (bytes as in the file).
pub(crate) fn parse(text: &[u8]) -> Parsed {
    let text = text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(text);
    let mut s = Src {
        b: text,
        i: 0,
        eof: false,
        line: 1,
    };
    let mut out = Parsed::default();
    let mut section = String::new();
    let mut sub: Option<String> = None;
    let mut comment = false;
    let bad = |s: &Src<'_>, mut out: Parsed| {
        // git names the line it was on when it gave up (a newline read as part of the error
        // does not count).
        out.bad_line = Some(s.line);
        out
    };
    loop {
        let c = s.next();
        if c == b'\n' {
            if s.eof {
                return out;
            }
            comment = false;
            continue;
        }
        if comment || space(c) {
            continue;
        }
        if c == b'#' || c == b';' {
            comment = true;
            continue;
        }
        if c == b'[' {
            let before = s.line;
            match header(&mut s) {
                Some((sec, su)) => {
                    section = sec;
                    sub = su;
                }
                None => {
                    s.line = before;
                    return bad(&s, out);
                }
            }
            continue;
        }
        if !c.is_ascii_alphabetic() {
            return bad(&s, out);
        }
        // `get_value`.
        let line = s.line;
        let mut key = vec![c.to_ascii_lowercase()];
        let mut c = loop {
            let c = s.next();
            if s.eof || !keychar(c) {
                break c;
            }
            key.push(c.to_ascii_lowercase());
        };
        while c == b' ' || c == b'\t' {
            c = s.next();
        }
        let v = if c != b'\n' {
            if c != b'=' {
                s.line = line;
                return bad(&s, out);
            }
            match value(&mut s) {
                Some(v) => Some(String::from_utf8_lossy(&v).into_owned()),
                None => {
                    s.line = line.max(s.line.saturating_sub(1));
                    return bad(&s, out);
                }
            }
        } else {
            None
        };
        out.entries.push(Entry {
            section: section.clone(),
            sub: sub.clone(),
            key: String::from_utf8_lossy(&key).into_owned(),
            value: v,
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    fn pairs(t: &str) -> Vec<(String, Option<String>)> {
        let p = parse(t.as_bytes());
        assert_eq!(p.bad_line, None, "{t:?}");
        p.entries
            .iter()
            .map(|e| (e.name(), e.value.clone()))
            .collect()
    }

    #[test]
    fn continuations_quotes_escapes_and_comments() {
        let t = "[core]\n\tfsmonitor = \"sh -c 'env > /tmp/x'\\\n; echo cut here\"\n";
        assert_eq!(
            pairs(t),
            [(
                "core.fsmonitor".into(),
                Some("sh -c 'env > /tmp/x'; echo cut here".into())
            )]
        );
        let t = "[alias]\n  x = !a\\\n  b # c\n  y = \"q;#\" r ; z\n  t = a\\tb\\n\\\\\\\"\n";
        assert_eq!(
            pairs(t),
            [
                ("alias.x".into(), Some("!a  b".into())),
                ("alias.y".into(), Some("q;# r".into())),
                ("alias.t".into(), Some("a\tb\n\\\"".into())),
            ]
        );
        let t = "\u{feff}[Remote \"Or\\ig\"]UploadPack=x\r\n[a.B]k\n[ x \"y\"]";
        let p = parse(t.as_bytes());
        assert_eq!(p.entries[0].name(), "remote.Orig.uploadpack");
        assert_eq!(p.entries[1].name(), "a.b.k");
        assert_eq!(p.entries[1].value, None);
        assert_eq!(p.bad_line, Some(3));
        assert_eq!(parse(b"[a]\nk = \\q\n").bad_line, Some(2));
        assert_eq!(parse(b"[a]\nk = \"open\n").bad_line, Some(2));
    }

    fn git() -> Option<std::path::PathBuf> {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join("git"))
            .find(|p| p.is_file())
    }

    /// `git config --file F --list -z`: `Some(entries)` or `None` when git refuses the file.
    fn git_list(git: &std::path::Path, text: &[u8]) -> Option<Vec<(String, Option<String>)>> {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("config");
        std::fs::write(&f, text).unwrap();
        let o = std::process::Command::new(git)
            .args(["config", "--file"])
            .arg(&f)
            .args(["--list", "-z"])
            .env_clear()
            .env("HOME", d.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .unwrap();
        if !o.status.success() {
            return None;
        }
        Some(
            o.stdout
                .split(|b| *b == 0)
                .filter(|r| !r.is_empty())
                .map(|r| {
                    let r = String::from_utf8_lossy(r).into_owned();
                    match r.split_once('\n') {
                        Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                        None => (r, None),
                    }
                })
                .collect(),
        )
    }

    fn piece() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "[core]",
            "[Core]",
            "[remote \"Or\\\"ig\"]",
            "[a.B]",
            "[x  \"s p\"]",
            "[b\"c\"]",
            "[ d]",
            "[e",
            "\n",
            "\r\n",
            "\n",
            "\n",
            " ",
            "\t",
            "key",
            "Fs-Mon2",
            "=",
            " = ",
            "\"",
            "\\\n",
            "\\t",
            "\\n",
            "\\b",
            "\\\\",
            "\\\"",
            "\\x",
            ";c",
            "#c",
            "v",
            "!sh -c 'x'",
            "a b",
            "  ",
            "é",
            "9k",
            "-k",
        ])
        .prop_map(str::to_owned)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]
        #[test]
        fn the_parser_agrees_with_git(parts in prop::collection::vec(piece(), 0..24)) {
            let Some(git) = git() else { return Ok(()); };
            let text = format!("[s]\n{}", parts.concat());
            let ours = parse(text.as_bytes());
            let theirs = git_list(&git, text.as_bytes());
            match theirs {
                Some(list) => {
                    prop_assert_eq!(ours.bad_line, None, "{:?}", text);
                    let mine: Vec<(String, Option<String>)> =
                        ours.entries.iter().map(|e| (e.name(), e.value.clone())).collect();
                    prop_assert_eq!(mine, list, "{:?}", text);
                }
                None => prop_assert!(ours.bad_line.is_some(), "git refused {:?}", text),
            }
        }
    }
}
