//! A `.env` file parser for `keyveil import`: exact, small, and with a pure API (`&str` in,
//! entries or one error out), a crate of its own so that the fuzz target
//! `fuzz/fuzz_targets/dotenv_parse.rs` builds it alone. It depends on nothing but `zeroize`.
//!
//! The syntax is the common one of docker compose, python-dotenv and the `dotenv` libraries:
//!
//! - blank lines and lines whose first non-blank character is `#` are ignored;
//! - an entry is `NAME=VALUE`, optionally after `export `, with blanks allowed around `=`;
//!   `NAME` is `[A-Za-z_][A-Za-z0-9_]*`;
//! - an unquoted value runs to the end of the line, trailing blanks removed; a `#` preceded by
//!   a blank starts a comment (`a#b` keeps its `#`);
//! - a single-quoted value is literal (no escapes) and may span lines;
//! - a double-quoted value may span lines and understands `\n` `\r` `\t` `\\` `\"` `\'` `\$`;
//!   any other backslash is kept as written;
//! - after a closing quote only blanks and a `# comment` may follow;
//! - an empty value (`NAME=`, `NAME=""`) is the empty string.
//!
//! Unlike some loaders, `${OTHER}` is **not** expanded: a secret containing `$` (passwords
//! often do) is imported exactly as written, and nothing is read from the importing process's
//! environment. [`Entry::has_reference`] tells the caller to mention it.
//!
//! Errors name the line and what is wrong, never a value (a value may be a secret): see
//! [`ParseError`].
//!
//! The writer ([`write()`], [`format_value`]) is the other direction, for `keyveil mount`: each value
//! in the one form that this parser, python-dotenv, Node's `dotenv` and `sh` (`. ./.env`) all read
//! back exactly, or a refusal ([`Unportable`]) naming the variable, never the value.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

use zeroize::Zeroizing;

/// One `NAME=VALUE` of a `.env` file.
pub struct Entry {
    /// The variable's name.
    pub name: String,
    /// The value, unquoted and unescaped (zeroed on drop).
    pub value: Zeroizing<String>,
    /// 1-based line where the entry starts.
    pub line: usize,
    /// Byte range of the whole entry in the input, from the start of its line to the end of
    /// its last line (newline excluded): what `keyveil import --rewrite-file` replaces.
    pub span: std::ops::Range<usize>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("name", &self.name)
            .field("value", &"<hidden>")
            .field("line", &self.line)
            .field("span", &self.span)
            .finish()
    }
}

impl Entry {
    /// Whether the value holds something a shell or another loader would have expanded
    /// (`$NAME` or `${...}`): it is imported as written.
    pub fn has_reference(&self) -> bool {
        let b = self.value.as_bytes();
        b.windows(2)
            .any(|w| matches!(w, [b'$', c] if *c == b'{' || *c == b'_' || c.is_ascii_alphabetic()))
    }
}

/// Why a `.env` text cannot be read: where, and what was expected. Never contains any part of
/// a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong, in words (no input text except a variable name).
    pub what: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.what)
    }
}

impl std::error::Error for ParseError {}

/// Why a value cannot be written so that every common reader reads it back exactly (see
/// [`format_value`]). Never carries any part of the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unportable {
    /// A NUL byte: no environment variable can hold it.
    Nul,
    /// A carriage return: python-dotenv reads `.env` files with universal newlines, and `sh`
    /// has no escape for it inside quotes.
    CarriageReturn,
    /// `${`: python-dotenv expands it in every quoting form.
    Reference,
    /// A single quote together with a double quote, a backslash, `$` or a backtick: no quoting
    /// is read the same by python-dotenv, Node's `dotenv` and `sh`.
    MixedQuotes,
    /// Two backslashes in a row, or one at the end: python-dotenv unescapes them in quotes,
    /// Node's `dotenv` does not, and `sh` does outside quotes.
    Backslashes,
}

impl std::fmt::Display for Unportable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unportable::Nul => "the value holds a NUL byte, which no environment variable can hold",
            Unportable::CarriageReturn => {
                "the value holds a carriage return, which python-dotenv and sh cannot read back"
            }
            Unportable::Reference => "the value holds `${`, which python-dotenv would expand",
            Unportable::Backslashes => {
                "the value holds two backslashes in a row or ends with one, which python-dotenv, Node's dotenv and sh read differently"
            }
            Unportable::MixedQuotes => {
                "the value holds a single quote and one of `\"`, `\\`, `$` or a backtick: no quoting reads the same in python-dotenv, Node's dotenv and sh"
            }
        })
    }
}

impl std::error::Error for Unportable {}

/// Characters an unquoted value may hold: read the same by this parser, python-dotenv, Node's
/// `dotenv` and `sh` (no blank, quote, `#`, `$`, backtick, backslash, `~`, glob or shell
/// operator).
fn bare_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '_' | '-' | '.' | '/' | ':' | '@' | '%' | '+' | ',' | '=' | '^'
        )
}

/// Writes `value` as the right-hand side of `NAME=` so that [`parse`], python-dotenv (with its
/// default interpolation), Node's `dotenv` and POSIX `sh` (`. ./.env`) all read back exactly
/// `value`:
///
/// - empty, or only ASCII letters, digits and `_-./:@%+,=^`: as it is (`abc-1.2`);
/// - no `'` or `${`, and no backslash doubled or last: in single quotes (literal everywhere;
///   newlines kept);
/// - otherwise, with `'` but no `"`, `\`, `$` or backtick: in double quotes, written literally
///   (no reader then has anything to unescape or expand).
///
/// # Errors
/// [`Unportable`] when no form exists (a NUL, a carriage return, `${`, two backslashes in a
/// row or one at the end, or a single quote mixed with `"`, `\`, `$` or a backtick).
pub fn format_value(value: &str) -> Result<String, Unportable> {
    if value.contains('\0') {
        return Err(Unportable::Nul);
    }
    if value.contains('\r') {
        return Err(Unportable::CarriageReturn);
    }
    if value.contains("${") {
        return Err(Unportable::Reference);
    }
    if value.chars().all(bare_char) {
        return Ok(value.to_owned());
    }
    if value.contains("\\\\") || value.ends_with('\\') {
        return Err(Unportable::Backslashes);
    }
    if !value.contains('\'') {
        return Ok(format!("'{value}'"));
    }
    if !value.contains(['"', '\\', '$', '`']) {
        return Ok(format!("\"{value}\""));
    }
    Err(Unportable::MixedQuotes)
}

/// Why [`write()`] refused: which entry, and why (never a value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteError {
    /// The variable's name (or the name as given, when the name itself is refused).
    pub name: String,
    /// What is wrong.
    pub what: String,
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.what)
    }
}

impl std::error::Error for WriteError {}

/// Whether `name` is a `.env` name this parser and the common loaders accept
/// (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn valid_name(name: &str) -> bool {
    let mut c = name.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// Writes `NAME=VALUE` lines (one per entry, in the order given, each ending in `\n`) that
/// [`parse`], python-dotenv, Node's `dotenv` and `sh` read back exactly (see
/// [`format_value`]). The text is zeroed on drop.
///
/// # Errors
/// The first entry whose name is not [`valid_name`] or whose value is [`Unportable`]; nothing
/// is returned then (never a partial text).
pub fn write<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Zeroizing<String>, WriteError> {
    let mut out = Zeroizing::new(String::new());
    for (name, value) in entries {
        if !valid_name(name) {
            return Err(WriteError {
                name: name.to_owned(),
                what: "not a .env name (letters, digits and _, not starting with a digit)"
                    .to_owned(),
            });
        }
        let v = Zeroizing::new(format_value(value).map_err(|e| WriteError {
            name: name.to_owned(),
            what: e.to_string(),
        })?);
        out.push_str(name);
        out.push('=');
        out.push_str(&v);
        out.push('\n');
    }
    Ok(out)
}

fn is_blank(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// Parses a `.env` text into its entries, in file order (a name given twice appears twice; the
/// caller decides). A byte order mark at the start and `\r\n` line ends are accepted.
///
/// # Errors
/// The first line that is not blank, a comment or an entry; a quote that is never closed; text
/// after a closing quote.
pub fn parse(input: &str) -> Result<Vec<Entry>, ParseError> {
    let start = if input.starts_with('\u{feff}') { 3 } else { 0 };
    let b = input.as_bytes();
    let mut p = Parser {
        b,
        i: start,
        line: 1,
    };
    let mut out = Vec::new();
    while p.i < b.len() {
        let line_start = p.i;
        let line_no = p.line;
        p.skip_blanks();
        match p.peek() {
            None => break,
            Some(b'\n') => {
                p.newline();
                continue;
            }
            Some(b'\r') if p.peek_at(1) == Some(b'\n') => {
                p.i += 1;
                p.newline();
                continue;
            }
            Some(b'#') => {
                p.skip_to_eol();
                p.eat_eol();
                continue;
            }
            _ => {}
        }
        if p.rest().starts_with(b"export") && p.peek_at(6).is_some_and(is_blank) {
            p.i += 6;
            p.skip_blanks();
        }
        let name = p.name().ok_or_else(|| {
            p.err("expected NAME=VALUE (NAME: letters, digits and _, not starting with a digit)")
        })?;
        p.skip_blanks();
        if p.peek() != Some(b'=') {
            // Not named: a line without `=` may be a pasted secret, not a name.
            return Err(p.err("expected `=` after the name (NAME=VALUE)"));
        }
        p.i += 1;
        let before = p.i;
        p.skip_blanks();
        let value = match p.peek() {
            Some(b'\'') => p.single_quoted(&name, line_no)?,
            Some(b'"') => p.double_quoted(&name, line_no)?,
            _ => p.unquoted(p.i > before),
        };
        let end = p.i;
        // The span ends before the line end (kept by a rewrite).
        let span_end = if end > line_start && b.get(end.wrapping_sub(1)) == Some(&b'\r') {
            end - 1
        } else {
            end
        };
        p.eat_eol();
        out.push(Entry {
            name,
            value,
            line: line_no,
            span: line_start..span_end,
        });
    }
    Ok(out)
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
    line: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn peek_at(&self, k: usize) -> Option<u8> {
        self.b.get(self.i.saturating_add(k)).copied()
    }

    fn rest(&self) -> &[u8] {
        self.b.get(self.i..).unwrap_or_default()
    }

    fn err(&self, what: &str) -> ParseError {
        ParseError {
            line: self.line,
            what: what.to_owned(),
        }
    }

    fn newline(&mut self) {
        self.i += 1;
        self.line += 1;
    }

    fn skip_blanks(&mut self) {
        while self.peek().is_some_and(is_blank) {
            self.i += 1;
        }
    }

    fn skip_to_eol(&mut self) {
        while self.peek().is_some_and(|c| c != b'\n') {
            self.i += 1;
        }
    }

    /// Consumes the line end at the cursor, if any (`\n`; a `\r` before it was consumed by
    /// whoever read the line).
    fn eat_eol(&mut self) {
        if self.peek() == Some(b'\n') {
            self.newline();
        }
    }

    fn name(&mut self) -> Option<String> {
        let s = self.i;
        match self.peek() {
            Some(c) if c.is_ascii_alphabetic() || c == b'_' => self.i += 1,
            _ => return None,
        }
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            self.i += 1;
        }
        // ASCII only: the slice is on character boundaries.
        std::str::from_utf8(self.b.get(s..self.i)?)
            .ok()
            .map(str::to_owned)
    }

    /// After a closing quote: blanks, an optional `# comment`, then the line end.
    fn after_quote(&mut self, name: &str) -> Result<(), ParseError> {
        self.skip_blanks();
        match self.peek() {
            None | Some(b'\n') => Ok(()),
            Some(b'\r') if matches!(self.peek_at(1), None | Some(b'\n')) => {
                self.i += 1;
                Ok(())
            }
            Some(b'#') => {
                self.skip_to_eol();
                Ok(())
            }
            Some(_) => Err(self.err(&format!(
                "unexpected text after the closing quote of {name} (only a `# comment` may follow)"
            ))),
        }
    }

    /// An unquoted value; `after_blank`: blanks separated it from `=` (so a `#` right at its
    /// start begins a comment).
    fn unquoted(&mut self, after_blank: bool) -> Zeroizing<String> {
        let s = self.i;
        let mut end = self.i;
        while let Some(c) = self.peek() {
            if c == b'\n' {
                break;
            }
            let blank_before = if self.i == s {
                after_blank
            } else {
                self.b.get(self.i - 1).copied().is_some_and(is_blank)
            };
            if c == b'#' && blank_before {
                break;
            }
            self.i += 1;
            if !is_blank(c) && c != b'\r' {
                end = self.i;
            }
        }
        if self.peek() == Some(b'#') {
            self.skip_to_eol();
        }
        Zeroizing::new(String::from_utf8_lossy(self.b.get(s..end).unwrap_or_default()).into_owned())
    }

    fn single_quoted(
        &mut self,
        name: &str,
        start_line: usize,
    ) -> Result<Zeroizing<String>, ParseError> {
        self.i += 1;
        let s = self.i;
        loop {
            match self.peek() {
                None => {
                    return Err(ParseError {
                        line: start_line,
                        what: format!(
                            "the single quote opening the value of {name} is never closed"
                        ),
                    });
                }
                Some(b'\'') => break,
                Some(b'\n') => self.newline(),
                Some(_) => self.i += 1,
            }
        }
        let v = Zeroizing::new(
            String::from_utf8_lossy(self.b.get(s..self.i).unwrap_or_default())
                .replace("\r\n", "\n"),
        );
        self.i += 1;
        self.after_quote(name)?;
        Ok(v)
    }

    fn double_quoted(
        &mut self,
        name: &str,
        start_line: usize,
    ) -> Result<Zeroizing<String>, ParseError> {
        self.i += 1;
        let mut v: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::new());
        loop {
            match self.peek() {
                None => {
                    return Err(ParseError {
                        line: start_line,
                        what: format!(
                            "the double quote opening the value of {name} is never closed"
                        ),
                    });
                }
                Some(b'"') => break,
                Some(b'\\') => {
                    let decoded = match self.peek_at(1) {
                        Some(b'n') => Some(b'\n'),
                        Some(b'r') => Some(b'\r'),
                        Some(b't') => Some(b'\t'),
                        Some(c @ (b'\\' | b'"' | b'\'' | b'$')) => Some(c),
                        _ => None,
                    };
                    match decoded {
                        Some(c) => {
                            v.push(c);
                            self.i += 2;
                        }
                        None => {
                            v.push(b'\\');
                            self.i += 1;
                        }
                    }
                }
                Some(b'\r') if self.peek_at(1) == Some(b'\n') => self.i += 1,
                Some(b'\n') => {
                    v.push(b'\n');
                    self.newline();
                }
                Some(c) => {
                    v.push(c);
                    self.i += 1;
                }
            }
        }
        self.i += 1;
        self.after_quote(name)?;
        Ok(Zeroizing::new(String::from_utf8_lossy(&v).into_owned()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    /// Writes `value` as a double-quoted `.env` value that [`parse`] reads back exactly.
    fn quote(value: &str) -> String {
        let mut s = String::with_capacity(value.len() + 2);
        s.push('"');
        for c in value.chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\r' => s.push_str("\\r"),
                '$' => s.push_str("\\$"),
                c => s.push(c),
            }
        }
        s.push('"');
        s
    }

    fn pairs(s: &str) -> Vec<(String, String)> {
        parse(s)
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.value.to_string()))
            .collect()
    }

    fn one(s: &str) -> String {
        let p = pairs(s);
        assert_eq!(p.len(), 1, "{s:?}");
        p[0].1.clone()
    }

    #[test]
    fn the_usual_forms() {
        assert_eq!(one("A=b"), "b");
        assert_eq!(one("export A=b\n"), "b");
        assert_eq!(one("  export   A = b  \n"), "b");
        assert_eq!(one("A=b c  d  "), "b c  d");
        assert_eq!(one("A="), "");
        assert_eq!(one("A=\n"), "");
        assert_eq!(one("A=\"\""), "");
        assert_eq!(one("A=''"), "");
        assert_eq!(one("A=b # comment"), "b");
        assert_eq!(one("A=b#not-a-comment"), "b#not-a-comment");
        assert_eq!(one("A= # only a comment"), "");
        assert_eq!(one("A=#starts-with-hash"), "#starts-with-hash");
        assert_eq!(one("A='x' # c"), "x");
        assert_eq!(one("A=\"x\"   # c"), "x");
        assert_eq!(one("A=a=b=c"), "a=b=c");
        assert_eq!(one("exporter=1"), "1");
        assert_eq!(pairs("export=1"), vec![("export".into(), "1".into())]);
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(one(r#"A='a\nb $X "q"'"#), r#"a\nb $X "q""#);
        assert_eq!(one(r#"A="a\nb\tc\\d\"e\$f\'g""#), "a\nb\tc\\d\"e$f'g");
        assert_eq!(one(r#"A="keep \x and \ alone""#), r"keep \x and \ alone");
        assert_eq!(one("A=\"line1\nline2\n\""), "line1\nline2\n");
        assert_eq!(one("A='line1\r\nline2'"), "line1\nline2");
        assert_eq!(one("A=\"p\u{e4}ss w\u{f6}rd\""), "p\u{e4}ss w\u{f6}rd");
        assert_eq!(one("A=\"has # hash\""), "has # hash");
    }

    #[test]
    fn multi_line_values_keep_the_line_count() {
        let text = "# head\nA=\"x\ny\"\nexport B='1\n2\n3'\n\nC=3\r\nD=\"d\"\r\n";
        let e = parse(text).unwrap();
        let got: Vec<(&str, &str, usize)> = e
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_str(), e.line))
            .collect();
        assert_eq!(
            got,
            vec![
                ("A", "x\ny", 2),
                ("B", "1\n2\n3", 4),
                ("C", "3", 8),
                ("D", "d", 9)
            ]
        );
        assert_eq!(&text[e[0].span.clone()], "A=\"x\ny\"");
        assert_eq!(&text[e[1].span.clone()], "export B='1\n2\n3'");
        assert_eq!(&text[e[2].span.clone()], "C=3");
        assert_eq!(&text[e[3].span.clone()], "D=\"d\"");
    }

    #[test]
    fn errors_name_the_line_never_the_value() {
        let secret = "s3cr3t-Value-42";
        for (text, line) in [
            (format!("A=1\nB=\"{secret}\n"), 2),
            (format!("A=1\n\nB='{secret}"), 3),
            (format!("B=\"{secret}\" trailing-{secret}"), 1),
            (secret.to_string(), 1),
            (format!("A=1\n1B={secret}"), 2),
            (format!("NAME {secret}"), 1),
        ] {
            let e = parse(&text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(!e.to_string().contains("s3cr3t"), "{e}");
        }
    }

    #[test]
    fn debug_never_shows_a_value() {
        let e = parse("A=s3cr3t-Value-42").unwrap();
        assert!(!format!("{e:?}").contains("s3cr3t"));
    }

    #[test]
    fn references_are_kept_and_noticed() {
        let e = parse("A=${HOME}/x\nB='$USER'\nC=costs $5 or 5$\nD=\"\\$HOME\"").unwrap();
        assert_eq!(e[0].value.as_str(), "${HOME}/x");
        assert!(e[0].has_reference());
        assert!(e[1].has_reference());
        assert!(!e[2].has_reference());
        assert_eq!(e[3].value.as_str(), "$HOME");
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        assert_eq!(pairs("\u{feff}A=1"), vec![("A".into(), "1".into())]);
    }

    /// Values every reader must get back exactly, with the form they are written in (the
    /// integration tests feed the same set to python-dotenv, Node's dotenv and sh).
    const VECTORS: &[(&str, &str)] = &[
        ("", ""),
        ("plain", "plain"),
        ("a-b.c/d:e@f%g+h,i=j^k", "a-b.c/d:e@f%g+h,i=j^k"),
        ("with space", "'with space'"),
        (" lead and trail ", "' lead and trail '"),
        ("hash # in", "'hash # in'"),
        ("#start", "'#start'"),
        ("dollar $HOME and $1", "'dollar $HOME and $1'"),
        ("double \"quoted\"", "'double \"quoted\"'"),
        ("back`tick`", "'back`tick`'"),
        ("line1\nline2\n", "'line1\nline2\n'"),
        ("tab\there", "'tab\there'"),
        ("~/home", "'~/home'"),
        ("glob*?[x]", "'glob*?[x]'"),
        ("semi;amp&pipe|lt<gt>", "'semi;amp&pipe|lt<gt>'"),
        (
            "p\u{e4}ss w\u{f6}rd \u{1f511}",
            "'p\u{e4}ss w\u{f6}rd \u{1f511}'",
        ),
        ("it's", "\"it's\""),
        ("it's a\nmulti line", "\"it's a\nmulti line\""),
        ("{json: 'x'}", "\"{json: 'x'}\""),
        ("C:\\path\\n", "'C:\\path\\n'"),
    ];

    #[test]
    fn the_vectors_are_written_as_expected_and_read_back() {
        for (v, form) in VECTORS {
            assert_eq!(format_value(v).unwrap(), *form, "{v:?}");
            let text = write([("K", *v)]).unwrap();
            assert_eq!(one(&text), *v, "{text:?}");
        }
    }

    #[test]
    fn unportable_values_are_refused_without_showing_them() {
        for (v, why) in [
            ("a\0b", Unportable::Nul),
            ("a\r\nb", Unportable::CarriageReturn),
            ("x${HOME}", Unportable::Reference),
            ("it's \"both\"", Unportable::MixedQuotes),
            ("it's \\ back", Unportable::MixedQuotes),
            ("it's $5", Unportable::MixedQuotes),
            ("it's `x`", Unportable::MixedQuotes),
            ("two \\\\ in a row", Unportable::Backslashes),
            ("ends with \\", Unportable::Backslashes),
        ] {
            assert_eq!(format_value(v), Err(why), "{v:?}");
        }
        let e = write([("OK", "1"), ("BAD", "s3cr3t's \"v\"")]).unwrap_err();
        assert_eq!(e.name, "BAD");
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        assert!(write([("1BAD", "x")]).is_err());
        assert!(write([("A B", "x")]).is_err());
    }

    #[test]
    fn a_whole_text_reads_back_in_order() {
        let v = [("A", "1"), ("B", "two words"), ("_C", "it's"), ("D", "")];
        let text = write(v).unwrap();
        let got = pairs(&text);
        let want: Vec<(String, String)> = v
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    proptest::proptest! {
        #[test]
        fn quote_round_trips(v in "\\PC*|[\\\\\"'$\\n\\r\\t #=]{0,20}") {
            let text = format!("export K={}\n", quote(&v));
            let e = parse(&text).unwrap();
            proptest::prop_assert_eq!(e.len(), 1);
            proptest::prop_assert_eq!(e[0].value.as_str(), v.as_str());
        }


        #[test]
        fn written_values_read_back_and_only_unportable_ones_are_refused(
            v in "\\PC*|[\\\\\"'$`{}\\n\\r\\t #=a~]{0,24}"
        ) {
            match format_value(&v) {
                Ok(form) => {
                    let e = parse(&format!("K={form}\n")).unwrap();
                    proptest::prop_assert_eq!(e.len(), 1);
                    proptest::prop_assert_eq!(e[0].value.as_str(), v.as_str());
                }
                Err(_) => {
                    let explained = v.contains(['\0', '\r'])
                        || v.contains("${")
                        || v.contains("\\\\")
                        || v.ends_with('\\')
                        || (v.contains('\'') && v.contains(['"', '\\', '$', '`']));
                    proptest::prop_assert!(explained, "refused without a reason");
                }
            }
        }

        #[test]
        fn never_panics_and_spans_are_in_bounds(s in "[A-Za-z_=#'\"\\\\ \\n\\r\\t$x0-9]{0,64}") {
            if let Ok(entries) = parse(&s) {
                for e in entries {
                    proptest::prop_assert!(e.span.end <= s.len());
                    proptest::prop_assert!(s.get(e.span.clone()).is_some());
                }
            }
        }
    }
}
