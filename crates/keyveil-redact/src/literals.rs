//! String-literal and quoting forms of an atom: how languages, shells, serialisers and tracers
//! print a string *as a literal* (`repr`, `%q`, `{:?}`, `inspect`, YAML double quotes, strace,
//! `ls`, ...), and how mail and Windows tools quote it.
//!
//! Each form is the body between the quotes. Most forms of most values equal the value itself
//! (a token has nothing to escape); [`crate::variants::encodings`] deduplicates them, so they
//! only add patterns for values holding quotes, backslashes, control characters or non-ASCII
//! text. Every style below is checked against the language's documented behaviour, and where an
//! interpreter exists, against its output (`tests/literal-vectors.jsonl`,
//! `tests/literal_vectors.rs`).
//!
//! | style | source |
//! |---|---|
//! | Python `repr(str)` (both quote choices), `ascii()`, `repr(bytes)` | Python reference, "String and Bytes literals"; `Objects/unicodeobject.c` `unicode_repr` |
//! | Go `%q` / `strconv.Quote`, `%+q` / `QuoteToASCII` | Go `strconv` package documentation (`appendEscapedRune`) |
//! | Rust `{:?}` (`char::escape_debug`), `str::escape_default`, `<[u8]>::escape_ascii` | Rust `core` documentation |
//! | Ruby `String#inspect` (UTF-8 and binary strings) | Ruby `string.c` `rb_str_inspect`, `rb_str_buf_cat_escaped_char` |
//! | Node.js `util.inspect` (`'`, `"` or `` ` `` quotes) | Node.js `lib/internal/util/inspect.js` `strEscape` |
//! | Java / Kotlin literal (IntelliJ, JShell), Swift `debugDescription` | JLS §3.10.7; Swift `Unicode.Scalar.escaped(asASCII:)` |
//! | C: GNU `quotearg` `c` and `escape` styles (`ls -b`, `ls --quoting-style=c`, gdb), protobuf `CEscape`, strace | gnulib `quotearg.c`; protobuf `strutil.cc`; strace `util.c` `string_quote` |
//! | GNU `shell-escape` quoting (`ls`, coreutils error messages): `'a'$'\t''b'` | gnulib `quotearg.c` |
//! | bash `$'...'` (`printf %q`, `set -x`, `declare -p` of values with control characters) | bash `lib/sh/strtrans.c` `ansic_quote` |
//! | Perl `Data::Dumper` (`Useqq` and default), PHP `var_export`, fish single quotes | `Data::Dumper` `qquote`; PHP manual |
//! | YAML double-quoted scalars (PyYAML, go-yaml, ruamel) | YAML 1.2 §5.7, §7.3.1; PyYAML `emitter.py` |
//! | TOML basic strings | TOML 1.0 "String" |
//! | Redis `MONITOR` / `redis-cli` (`sdscatrepr`) | Redis `sds.c` |
//! | MySQL (`mysqldump`, `mysql_real_escape_string`), PHP `addslashes`, PostgreSQL `COPY` text, SQLite `.dump`, CSV | MySQL C API; PHP manual; PostgreSQL `COPY` "Text Format"; SQLite shell; RFC 4180 §2 |
//! | .NET `System.Text.Json` (default encoder) | .NET `JavaScriptEncoder.Default` documentation |
//! | HCL / Terraform strings (`$${`, `%%{`) | HCL native syntax specification, "Template Expressions" |
//! | Java `Properties.store` | `java.util.Properties#store` documentation |
//! | PowerShell double-quoted strings (backtick escapes), `Export-Clixml` (`_xHHHH_`) | PowerShell `about_Special_Characters`; `XmlConvert.EncodeName` |
//! | cmd.exe carets, Windows command lines (`CommandLineToArgvW`, `subprocess.list2cmdline`) | Microsoft "Parsing C++ command-line arguments" |
//! | quoted-printable, RFC 2047 `Q` encoded words | RFC 2045 §6.7, RFC 2047 §4.2 |
//! | non-printable bytes as `.` (`hexdump -C`/`xxd` text column, `tcpdump -A`, `curl --trace`) | |

use crate::variants::dedup;

/// How an escaper writes an ASCII control character (or DEL) it has no named escape for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    /// Left as it is.
    Raw,
    /// `\xNN`, lower-case hex digits.
    HexLower,
    /// `\xNN`, upper-case hex digits.
    HexUpper,
    /// `\NNN`, three octal digits.
    Octal3,
    /// `\N` to `\NNN`: as few octal digits as needed, three when a digit follows (Perl
    /// `qquote`, strace).
    OctalMin,
    /// `\u00NN`, upper-case hex digits.
    UUpper,
    /// `\u{N}`, lower-case hex digits (Rust).
    BraceLower,
    /// `\u{N}`, upper-case hex digits (Swift).
    BraceUpper,
}

/// How an escaper writes one non-ASCII code point it escapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cp {
    /// Python: `\xNN` up to U+00FF, `\uNNNN`, `\UNNNNNNNN`, lower-case hex.
    Python,
    /// Go: `\uNNNN`, `\UNNNNNNNN`, lower-case hex.
    Go,
    /// Rust: `\u{N}` lower-case; Swift: upper-case.
    Brace { upper: bool },
    /// Ruby: `\uNNNN`, `\u{N}`, upper-case hex.
    Ruby,
    /// Node.js: `\xNN` upper-case (it escapes C1 controls only).
    Node,
    /// YAML: `\N`, `\_`, `\L`, `\P`, else `\xNN`, `\uNNNN`, `\UNNNNNNNN`, upper-case hex.
    Yaml,
    /// `\uNNNN` upper-case (surrogate pairs above U+FFFF): Java, .NET, TOML.
    U16Upper,
    /// Each UTF-8 byte as `\NNN` (bash `$'...'`, GNU `quotearg` in a UTF-8 locale).
    OctalBytes,
}

/// What an escaper does with non-ASCII text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wide {
    /// Left as it is.
    Raw,
    /// C1 controls (U+0080 to U+009F) escaped, other characters left as they are.
    C1(Cp),
    /// Every non-ASCII character escaped.
    All(Cp),
    /// Every byte of 0x80 and above escaped like an ASCII control ([`Num`]).
    Bytes,
}

/// One escaper: which bytes are replaced by what.
#[derive(Clone, Copy, Debug)]
struct Style {
    /// The escape character (`\`, or `` ` `` in PowerShell).
    esc: u8,
    /// Printable ASCII bytes written as the escape character and themselves (quotes, the
    /// escape character itself, `$`, ...).
    escaped: &'static [u8],
    /// Named escapes: a byte and the letter written after the escape character.
    named: &'static [(u8, u8)],
    /// Other ASCII controls.
    num: Num,
    /// Whether DEL (0x7F) is escaped like a control.
    del: bool,
    /// Non-ASCII text.
    wide: Wide,
}

const PY_NAMED: &[(u8, u8)] = &[(b'\t', b't'), (b'\n', b'n'), (b'\r', b'r')];
const C_NAMED: &[(u8, u8)] = &[
    (0x07, b'a'),
    (0x08, b'b'),
    (0x0c, b'f'),
    (b'\n', b'n'),
    (b'\r', b'r'),
    (b'\t', b't'),
    (0x0b, b'v'),
];
const RUST_NAMED: &[(u8, u8)] = &[(b'\t', b't'), (b'\r', b'r'), (b'\n', b'n'), (0, b'0')];
const RUBY_NAMED: &[(u8, u8)] = &[
    (b'\n', b'n'),
    (b'\r', b'r'),
    (b'\t', b't'),
    (0x0c, b'f'),
    (0x0b, b'v'),
    (0x08, b'b'),
    (0x07, b'a'),
    (0x1b, b'e'),
];
const NODE_NAMED: &[(u8, u8)] = &[
    (0x08, b'b'),
    (b'\t', b't'),
    (b'\n', b'n'),
    (0x0c, b'f'),
    (b'\r', b'r'),
];
const BASH_NAMED: &[(u8, u8)] = &[
    (0x07, b'a'),
    (0x08, b'b'),
    (0x1b, b'E'),
    (0x0c, b'f'),
    (b'\n', b'n'),
    (b'\r', b'r'),
    (b'\t', b't'),
    (0x0b, b'v'),
];
const PERL_NAMED: &[(u8, u8)] = &[
    (0x07, b'a'),
    (0x08, b'b'),
    (b'\t', b't'),
    (b'\n', b'n'),
    (0x0c, b'f'),
    (b'\r', b'r'),
    (0x1b, b'e'),
];
const YAML_NAMED: &[(u8, u8)] = &[
    (0, b'0'),
    (0x07, b'a'),
    (0x08, b'b'),
    (b'\t', b't'),
    (b'\n', b'n'),
    (0x0b, b'v'),
    (0x0c, b'f'),
    (b'\r', b'r'),
    (0x1b, b'e'),
];
const JSONISH_NAMED: &[(u8, u8)] = &[
    (0x08, b'b'),
    (b'\t', b't'),
    (b'\n', b'n'),
    (0x0c, b'f'),
    (b'\r', b'r'),
];
const STRACE_NAMED: &[(u8, u8)] = &[
    (b'\t', b't'),
    (b'\n', b'n'),
    (0x0b, b'v'),
    (0x0c, b'f'),
    (b'\r', b'r'),
];
const REDIS_NAMED: &[(u8, u8)] = &[
    (b'\n', b'n'),
    (b'\r', b'r'),
    (b'\t', b't'),
    (0x07, b'a'),
    (0x08, b'b'),
];
const MYSQL_NAMED: &[(u8, u8)] = &[(0, b'0'), (b'\n', b'n'), (b'\r', b'r'), (0x1a, b'Z')];
const PG_COPY_NAMED: &[(u8, u8)] = &[
    (0x08, b'b'),
    (0x0c, b'f'),
    (b'\n', b'n'),
    (b'\r', b'r'),
    (b'\t', b't'),
    (0x0b, b'v'),
];
const PS_NAMED: &[(u8, u8)] = &[
    (0, b'0'),
    (0x07, b'a'),
    (0x08, b'b'),
    (0x1b, b'e'),
    (0x0c, b'f'),
    (b'\n', b'n'),
    (b'\r', b'r'),
    (b'\t', b't'),
    (0x0b, b'v'),
];

const fn style(
    escaped: &'static [u8],
    named: &'static [(u8, u8)],
    num: Num,
    del: bool,
    wide: Wide,
) -> Style {
    Style {
        esc: b'\\',
        escaped,
        named,
        num,
        del,
        wide,
    }
}

/// The escapers, each with the language or tool it stands for. Several collapse to the same
/// form for most values; [`literal_forms`] deduplicates.
const STYLES: &[Style] = &[
    // Python `repr(str)`: `'` quotes unless the string holds `'` and no `"`.
    style(b"\\'", PY_NAMED, Num::HexLower, true, Wide::C1(Cp::Python)),
    style(b"\\", PY_NAMED, Num::HexLower, true, Wide::C1(Cp::Python)),
    // Python `ascii()`, `%a`.
    style(b"\\'", PY_NAMED, Num::HexLower, true, Wide::All(Cp::Python)),
    style(b"\\", PY_NAMED, Num::HexLower, true, Wide::All(Cp::Python)),
    // Python `repr(bytes)`; also Rust `escape_ascii` and `bstr` without `"`.
    style(b"\\'", PY_NAMED, Num::HexLower, true, Wide::Bytes),
    style(b"\\", PY_NAMED, Num::HexLower, true, Wide::Bytes),
    // Go `%q`, `strconv.Quote`, `%#v` of a string.
    style(b"\\\"", C_NAMED, Num::HexLower, true, Wide::C1(Cp::Go)),
    // Go `%+q`, `strconv.QuoteToASCII`.
    style(b"\\\"", C_NAMED, Num::HexLower, true, Wide::All(Cp::Go)),
    // Rust `{:?}` of `str` / `String`.
    style(
        b"\\\"",
        RUST_NAMED,
        Num::BraceLower,
        true,
        Wide::C1(Cp::Brace { upper: false }),
    ),
    // Rust `str::escape_default`, `char::escape_default` (NUL as `\u{0}`).
    style(
        b"\\\"'",
        PY_NAMED,
        Num::BraceLower,
        true,
        Wide::All(Cp::Brace { upper: false }),
    ),
    // Rust `<[u8]>::escape_ascii`, `ascii::escape_default`.
    style(b"\\\"'", PY_NAMED, Num::HexLower, true, Wide::Bytes),
    // Swift `debugDescription`.
    style(
        b"\\\"'",
        RUST_NAMED,
        Num::BraceUpper,
        true,
        Wide::C1(Cp::Brace { upper: true }),
    ),
    // Ruby `inspect` / `p` of a UTF-8 string, and of a binary (ASCII-8BIT) string.
    style(b"\\\"", RUBY_NAMED, Num::UUpper, true, Wide::C1(Cp::Ruby)),
    style(b"\\\"", RUBY_NAMED, Num::HexUpper, true, Wide::Bytes),
    // Node.js `util.inspect` / `console.log` of a string inside an object: `'`, `"` or
    // backtick quotes.
    style(b"\\'", NODE_NAMED, Num::HexUpper, true, Wide::C1(Cp::Node)),
    style(b"\\", NODE_NAMED, Num::HexUpper, true, Wide::C1(Cp::Node)),
    // Java / Kotlin literals (IntelliJ, JShell; Apache `escapeJava` is the JSON `\u` style).
    style(b"\\\"", JSONISH_NAMED, Num::UUpper, false, Wide::Raw),
    // GNU `quotearg` `c` style (`ls --quoting-style=c`, gdb) in UTF-8 and C locales.
    style(
        b"\\\"",
        C_NAMED,
        Num::Octal3,
        true,
        Wide::C1(Cp::OctalBytes),
    ),
    style(b"\\\"", C_NAMED, Num::Octal3, true, Wide::Bytes),
    // GNU `escape` style (`ls -b`): also a space as `\ `.
    style(b"\\ ", C_NAMED, Num::Octal3, true, Wide::C1(Cp::OctalBytes)),
    // protobuf `CEscape` (text format, gRPC debug strings).
    style(b"\\\"'", PY_NAMED, Num::Octal3, true, Wide::Bytes),
    // strace (`-s` strings), with and without `-x`.
    style(b"\\\"", STRACE_NAMED, Num::OctalMin, true, Wide::Bytes),
    style(b"\\\"", STRACE_NAMED, Num::HexLower, true, Wide::Bytes),
    // bash `$'...'`: `printf %q`, `set -x`, `declare -p` of values with control characters.
    style(
        b"\\'",
        BASH_NAMED,
        Num::Octal3,
        true,
        Wide::C1(Cp::OctalBytes),
    ),
    // Perl `Data::Dumper` with `Useqq`.
    style(b"\\\"$@", PERL_NAMED, Num::OctalMin, true, Wide::Bytes),
    // Perl `Data::Dumper` default, PHP `var_export`, fish and JSON5 single quotes.
    style(b"\\'", &[], Num::Raw, false, Wide::Raw),
    // C++ `std::quoted`, minimal double-quoted escapers.
    style(b"\\\"", &[], Num::Raw, false, Wide::Raw),
    // YAML double-quoted scalars: PyYAML default (`allow_unicode=False`), and go-yaml /
    // `allow_unicode=True`.
    style(
        b"\\\"",
        YAML_NAMED,
        Num::HexUpper,
        true,
        Wide::All(Cp::Yaml),
    ),
    style(b"\\\"", YAML_NAMED, Num::HexUpper, true, Wide::C1(Cp::Yaml)),
    // TOML basic strings (toml-rs; lower-case writers are the JSON style).
    style(b"\\\"", JSONISH_NAMED, Num::UUpper, true, Wide::Raw),
    // Redis `sdscatrepr` (`MONITOR`, `redis-cli`).
    style(b"\\\"", REDIS_NAMED, Num::HexLower, true, Wide::Bytes),
    // MySQL `mysql_real_escape_string`, `mysqldump`.
    style(b"\\'\"", MYSQL_NAMED, Num::Raw, false, Wide::Raw),
    // PHP `addslashes`.
    style(b"\\'\"", &[(0, b'0')], Num::Raw, false, Wide::Raw),
    // PostgreSQL `COPY ... TO` text format (`pg_dump` data).
    style(b"\\", PG_COPY_NAMED, Num::Raw, false, Wide::Raw),
    // PowerShell double-quoted strings.
    Style {
        esc: b'`',
        escaped: b"`\"$",
        named: PS_NAMED,
        num: Num::Raw,
        del: false,
        wide: Wide::Raw,
    },
];

fn push_hex(out: &mut Vec<u8>, v: u32, width: usize, upper: bool) {
    let s = if upper {
        format!("{v:0width$X}")
    } else {
        format!("{v:0width$x}")
    };
    out.extend_from_slice(s.as_bytes());
}

fn push_num(out: &mut Vec<u8>, esc: u8, num: Num, b: u8, next: Option<u8>) {
    match num {
        Num::Raw => out.push(b),
        Num::HexLower | Num::HexUpper => {
            out.extend_from_slice(&[esc, b'x']);
            push_hex(out, u32::from(b), 2, num == Num::HexUpper);
        }
        Num::Octal3 => out.extend_from_slice(format!("{}{b:03o}", esc as char).as_bytes()),
        Num::OctalMin => {
            if next.is_some_and(|n| n.is_ascii_digit()) {
                out.extend_from_slice(format!("{}{b:03o}", esc as char).as_bytes());
            } else {
                out.extend_from_slice(format!("{}{b:o}", esc as char).as_bytes());
            }
        }
        Num::UUpper => {
            out.extend_from_slice(&[esc, b'u']);
            push_hex(out, u32::from(b), 4, true);
        }
        Num::BraceLower | Num::BraceUpper => {
            out.extend_from_slice(&[esc, b'u', b'{']);
            push_hex(out, u32::from(b), 1, num == Num::BraceUpper);
            out.push(b'}');
        }
    }
}

fn push_cp(out: &mut Vec<u8>, cp: Cp, ch: char) {
    let c = u32::from(ch);
    match cp {
        Cp::Python if c <= 0xff => {
            out.extend_from_slice(b"\\x");
            push_hex(out, c, 2, false);
        }
        Cp::Python | Cp::Go if c <= 0xffff => {
            out.extend_from_slice(b"\\u");
            push_hex(out, c, 4, false);
        }
        Cp::Python | Cp::Go => {
            out.extend_from_slice(b"\\U");
            push_hex(out, c, 8, false);
        }
        Cp::Brace { upper } => {
            out.extend_from_slice(b"\\u{");
            push_hex(out, c, 1, upper);
            out.push(b'}');
        }
        Cp::Ruby if c <= 0xffff => {
            out.extend_from_slice(b"\\u");
            push_hex(out, c, 4, true);
        }
        Cp::Ruby => {
            out.extend_from_slice(b"\\u{");
            push_hex(out, c, 1, true);
            out.push(b'}');
        }
        Cp::Node => {
            let mut units = [0u16; 2];
            for u in ch.encode_utf16(&mut units) {
                if *u <= 0xff {
                    out.extend_from_slice(b"\\x");
                    push_hex(out, u32::from(*u), 2, true);
                } else {
                    out.extend_from_slice(b"\\u");
                    push_hex(out, u32::from(*u), 4, true);
                }
            }
        }
        Cp::Yaml => match c {
            0x85 => out.extend_from_slice(b"\\N"),
            0xa0 => out.extend_from_slice(b"\\_"),
            0x2028 => out.extend_from_slice(b"\\L"),
            0x2029 => out.extend_from_slice(b"\\P"),
            0..=0xff => {
                out.extend_from_slice(b"\\x");
                push_hex(out, c, 2, true);
            }
            0x100..=0xffff => {
                out.extend_from_slice(b"\\u");
                push_hex(out, c, 4, true);
            }
            _ => {
                out.extend_from_slice(b"\\U");
                push_hex(out, c, 8, true);
            }
        },
        Cp::OctalBytes => {
            let mut buf = [0u8; 4];
            for b in ch.encode_utf8(&mut buf).bytes() {
                out.extend_from_slice(format!("\\{b:03o}").as_bytes());
            }
        }
        Cp::U16Upper => {
            let mut units = [0u16; 2];
            for u in ch.encode_utf16(&mut units) {
                out.extend_from_slice(b"\\u");
                push_hex(out, u32::from(*u), 4, true);
            }
        }
    }
}

/// Escapes one ASCII byte (or, with [`Wide::Bytes`] or invalid UTF-8, any byte) in `style`.
fn escape_byte(out: &mut Vec<u8>, s: &Style, b: u8, next: Option<u8>) {
    if s.escaped.contains(&b) {
        out.extend_from_slice(&[s.esc, b]);
    } else if let Some(&(_, letter)) = s.named.iter().find(|(c, _)| *c == b) {
        out.extend_from_slice(&[s.esc, letter]);
    } else if b < 0x20 || (b == 0x7f && s.del) {
        push_num(out, s.esc, s.num, b, next);
    } else if b >= 0x80 && s.wide != Wide::Raw {
        let num = if s.num == Num::Raw {
            Num::HexLower
        } else {
            s.num
        };
        push_num(out, s.esc, num, b, next);
    } else {
        out.push(b);
    }
}

fn escape_with(atom: &[u8], s: &Style) -> Vec<u8> {
    let mut out = Vec::with_capacity(atom.len() + 16);
    let text = match s.wide {
        Wide::C1(_) | Wide::All(_) => std::str::from_utf8(atom).ok(),
        Wide::Raw | Wide::Bytes => None,
    };
    match (text, s.wide) {
        (Some(text), Wide::C1(cp) | Wide::All(cp)) => {
            let mut chars = text.chars().peekable();
            while let Some(ch) = chars.next() {
                let next = chars.peek().and_then(|c| u8::try_from(u32::from(*c)).ok());
                if ch.is_ascii() {
                    escape_byte(&mut out, s, ch as u8, next);
                } else if matches!(s.wide, Wide::All(_)) || ('\u{80}'..='\u{9f}').contains(&ch) {
                    push_cp(&mut out, cp, ch);
                } else {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        _ => {
            for (i, &b) in atom.iter().enumerate() {
                escape_byte(&mut out, s, b, atom.get(i + 1).copied());
            }
        }
    }
    out
}

/// GNU `quotearg` `shell-escape` quoting of `atom` inside its outer single quotes (`ls`,
/// coreutils error messages): printable runs stay in the quotes, `'` becomes `'\''`, and each
/// run of control characters (C1 controls included, as their UTF-8 bytes) is written as
/// `'$'...''` with C escapes (octal for the rest).
pub fn gnu_shell_escape(atom: &[u8]) -> Vec<u8> {
    let c_style = style(b"", C_NAMED, Num::Octal3, true, Wide::Raw);
    let mut out = Vec::with_capacity(atom.len() + 16);
    let mut in_ctl = false;
    let mut i = 0;
    while let Some(&b) = atom.get(i) {
        // A C1 control is the two bytes 0xC2 0x80..=0x9F in UTF-8.
        let c1 = b == 0xc2 && atom.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n));
        let ctl = b < 0x20 || b == 0x7f || c1;
        if ctl && !in_ctl {
            out.extend_from_slice(b"'$'");
        } else if !ctl && in_ctl {
            out.extend_from_slice(b"''");
        }
        in_ctl = ctl;
        let width = if c1 { 2 } else { 1 };
        for k in i..i + width {
            match atom.get(k).copied() {
                Some(c) if ctl && c >= 0x80 => {
                    out.extend_from_slice(format!("\\{c:03o}").as_bytes());
                }
                Some(c) if ctl => escape_byte(&mut out, &c_style, c, atom.get(k + 1).copied()),
                Some(b'\'') => out.extend_from_slice(b"'\\''"),
                Some(c) => out.push(c),
                None => {}
            }
        }
        i += width;
    }
    out
}

/// Replaces every occurrence of `from` in `s` by `to`.
fn replace_seq(s: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 8);
    let mut i = 0;
    while i < s.len() {
        if s.get(i..).is_some_and(|rest| rest.starts_with(from)) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.extend(s.get(i).copied());
            i += 1;
        }
    }
    out
}

fn map_bytes(atom: &[u8], f: impl Fn(u8, &mut Vec<u8>) -> bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(atom.len() + 16);
    for &b in atom {
        if !f(b, &mut out) {
            out.push(b);
        }
    }
    out
}

/// Ruby `inspect` also writes `#{`, `#$` and `#@` as `\#{`, `\#$`, `\#@`.
fn ruby_hash(form: &[u8]) -> Vec<u8> {
    let mut out = form.to_vec();
    for seq in [&b"#{"[..], b"#$", b"#@"] {
        let mut to = b"\\".to_vec();
        to.extend_from_slice(seq);
        out = replace_seq(&out, seq, &to);
    }
    out
}

/// .NET `System.Text.Json` with the default encoder: `"` `'` `&` `+` `<` `>` `` ` `` and
/// controls as `\u00XX` (upper-case), `\\`, `\b \t \n \f \r`, non-ASCII as `\uXXXX`.
fn dotnet_json(atom: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(atom).ok()?;
    let mut out = Vec::with_capacity(atom.len() + 16);
    for ch in text.chars() {
        let c = u32::from(ch);
        match ch {
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\r' => out.extend_from_slice(b"\\r"),
            '"' | '\'' | '&' | '+' | '<' | '>' | '`' | '\u{0}'..='\u{1f}' | '\u{7f}'.. => {
                push_cp(&mut out, Cp::U16Upper, ch)
            }
            _ => out.push(c as u8),
        }
    }
    Some(out)
}

/// Java `Properties.store`: `\\`, `\t \n \r \f`, `= : # !` and a leading space backslashed;
/// with `OutputStream` (Latin-1) also controls and non-ASCII as `\uXXXX`.
fn java_properties(atom: &[u8], unicode: bool) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(atom).ok()?;
    let mut out = Vec::with_capacity(atom.len() + 16);
    for (i, ch) in text.chars().enumerate() {
        match ch {
            ' ' if i == 0 => out.extend_from_slice(b"\\ "),
            '\\' | '=' | ':' | '#' | '!' => {
                out.push(b'\\');
                out.push(ch as u8);
            }
            '\t' => out.extend_from_slice(b"\\t"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            c if unicode && (u32::from(c) < 0x20 || u32::from(c) > 0x7e) => {
                push_cp(&mut out, Cp::U16Upper, c)
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    Some(out)
}

/// HCL / Terraform quoted strings: `\" \\ \n \r \t`, `${` as `$${`, `%{` as `%%{`.
fn hcl(atom: &[u8]) -> Vec<u8> {
    let body = escape_with(
        atom,
        &style(
            b"\\\"",
            &[(b'\n', b'n'), (b'\r', b'r'), (b'\t', b't')],
            Num::UUpper,
            false,
            Wide::Raw,
        ),
    );
    replace_seq(&replace_seq(&body, b"${", b"$${"), b"%{", b"%%{")
}

/// PowerShell `Export-Clixml` / `XmlConvert`: XML text escapes, controls as `_xHHHH_`.
fn clixml(atom: &[u8]) -> Vec<u8> {
    map_bytes(atom, |b, out| {
        match b {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("_x{b:04X}_").as_bytes()),
            _ => return false,
        }
        true
    })
}

/// A Windows command-line argument (`CommandLineToArgvW` rules, Python
/// `subprocess.list2cmdline`): `"` as `\"`, backslashes doubled only before a `"`.
pub fn windows_argv(atom: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(atom.len() + 8);
    let mut backslashes = 0usize;
    for &b in atom {
        match b {
            b'\\' => {
                backslashes += 1;
                out.push(b);
            }
            b'"' => {
                out.extend(std::iter::repeat_n(b'\\', backslashes + 1));
                out.push(b);
                backslashes = 0;
            }
            _ => {
                backslashes = 0;
                out.push(b);
            }
        }
    }
    out
}

/// Quoted-printable (RFC 2045 §6.7) without soft line breaks: `=` and bytes outside `!`..`~`
/// as `=XX` (upper-case); tab and space kept (`quopri`, MIME bodies) or encoded (`quotetabs`).
/// Then the RFC 2047 `Q` encoding of header words as Python's `email` writes it: letters,
/// digits and `-!*+/` kept, space as `_`, everything else `=XX`.
pub fn quoted_printable(atom: &[u8]) -> Vec<Vec<u8>> {
    let upper = b"0123456789ABCDEF";
    let push_eq = |out: &mut Vec<u8>, b: u8| {
        out.push(b'=');
        out.extend(upper.get(usize::from(b >> 4)).copied());
        out.extend(upper.get(usize::from(b & 15)).copied());
    };
    let qp = |keep_blank: bool| {
        map_bytes(atom, |b, out| {
            let keep =
                (b'!'..=b'~').contains(&b) && b != b'=' || keep_blank && matches!(b, b' ' | b'\t');
            if !keep {
                push_eq(out, b);
            }
            !keep
        })
    };
    let q = map_bytes(atom, |b, out| {
        if b == b' ' {
            out.push(b'_');
        } else if b.is_ascii_alphanumeric() || b"-!*+/".contains(&b) {
            return false;
        } else {
            push_eq(out, b);
        }
        true
    });
    vec![qp(true), qp(false), q]
}

/// Bytes outside printable ASCII (and space) written as `.`: the text column of `hexdump -C`,
/// `xxd` and `curl --trace`, `tcpdump -A`, Wireshark. Only for atoms that hold such bytes.
pub fn dotted(atom: &[u8]) -> Option<Vec<u8>> {
    atom.iter().any(|&b| !(0x20..0x7f).contains(&b)).then(|| {
        atom.iter()
            .map(|&b| if (0x20..0x7f).contains(&b) { b } else { b'.' })
            .collect()
    })
}

/// Every string-literal and quoting form of `atom` listed in the module documentation
/// (deduplicated; forms equal to `atom` are kept here and dropped by the caller's
/// deduplication).
pub fn literal_forms(atom: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = STYLES.iter().map(|s| escape_with(atom, s)).collect();
    // Ruby's `#{` escapes on top of its two styles.
    for s in STYLES.iter().filter(|s| s.named == RUBY_NAMED) {
        out.push(ruby_hash(&escape_with(atom, s)));
    }
    out.push(gnu_shell_escape(atom));
    out.extend(dotnet_json(atom));
    out.extend(java_properties(atom, true));
    out.extend(java_properties(atom, false));
    out.push(hcl(atom));
    out.push(clixml(atom));
    out.push(windows_argv(atom));
    // CSV (RFC 4180) and SQL-style doubled quotes; SQLite `.dump` (`''`, and `\n` `\r`
    // written out for its `replace(..., char(10))`).
    out.push(map_bytes(atom, |b, out| {
        (b == b'"')
            .then(|| out.extend_from_slice(b"\"\""))
            .is_some()
    }));
    out.push(map_bytes(atom, |b, out| {
        match b {
            b'\'' => out.extend_from_slice(b"''"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => return false,
        }
        true
    }));
    // cmd.exe: `^` before its operators, `%` doubled in batch files.
    out.push(map_bytes(atom, |b, out| {
        match b {
            b'^' | b'&' | b'|' | b'<' | b'>' | b'(' | b')' => out.extend_from_slice(&[b'^', b]),
            b'%' => out.extend_from_slice(b"%%"),
            _ => return false,
        }
        true
    }));
    out.extend(quoted_printable(atom));
    out.extend(dotted(atom));
    dedup(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(forms: &[Vec<u8>], s: &str) -> bool {
        forms.iter().any(|f| f == s.as_bytes())
    }

    /// The issue's example and the outputs of the real interpreters (Python 3.11, Node 20,
    /// Perl 5.36, bash 5.2, GNU ls 9.1), as recorded in `tests/literal-vectors.jsonl`.
    #[test]
    fn interpreter_outputs() {
        let v = "t0k\ten'Q\"x\\y\u{1b}\u{7f}\u{1}";
        let f = literal_forms(v.as_bytes());
        for want in [
            r#"t0k\ten\'Q"x\\y\x1b\x7f\x01"#,          // Python repr
            r#"t0k\ten'Q\"x\\y\x1b\x7f\x01"#,          // Go %q
            r#"t0k\ten'Q\"x\\y\u{1b}\u{7f}\u{1}"#,     // Rust {:?}
            r#"t0k\ten'Q\"x\\y\e\u007F\u0001"#,        // Ruby inspect
            r#"t0k\ten'Q"x\\y\x1B\x7F\x01"#,           // Node util.inspect (backticks)
            r#"t0k\ten'Q\"x\\y\e\177\1"#,              // Perl Useqq
            r#"t0k\ten\'Q"x\\y\E\177\001"#,            // bash printf %q
            r#"t0k\ten'Q\"x\\y\033\177\001"#,          // ls --quoting-style=c
            r#"t0k\ten'Q"x\\y\033\177\001"#,           // ls --quoting-style=escape
            r#"t0k'$'\t''en'\''Q"x\y'$'\033\177\001"#, // ls shell-escape
            r#"t0k\ten'Q\"x\\y\e\x7F\x01"#,            // PyYAML
        ] {
            assert!(has(&f, want), "{want}");
        }
    }

    #[test]
    fn non_ascii_styles() {
        let f = literal_forms("a\u{e9}\u{85}\u{1F600}".as_bytes());
        for want in [
            "a\u{e9}\\x85\u{1F600}",              // Python repr
            r"a\xe9\x85\U0001f600",               // Python ascii()
            r"a\xc3\xa9\xc2\x85\xf0\x9f\x98\x80", // Python bytes repr
            "a\u{e9}\\u0085\u{1F600}",            // Go %q
            r"a\u00e9\u0085\U0001f600",           // Go %+q
            "a\u{e9}\\u{85}\u{1F600}",            // Rust {:?}
            r"a\xE9\N\U0001F600",                 // PyYAML default
            r"a\u00E9\u0085\uD83D\uDE00",         // .NET System.Text.Json
        ] {
            assert!(has(&f, want), "{want}");
        }
    }

    #[test]
    fn windows_and_mail() {
        let f = literal_forms(b"p\"a\\\"s$s\tw=0rd%&");
        for want in [
            "p`\"a\\`\"s`$s`tw=0rd%&",          // PowerShell
            "p\\\"a\\\\\\\"s$s\tw=0rd%&",       // CommandLineToArgvW
            "p\"a\\\"s$s_x0009_w=0rd%&amp;",    // Export-Clixml
            "p\"a\\\"s$s\tw=0rd%%^&",           // cmd
            "p\"a\\\"s$s\tw=3D0rd%&",           // quoted-printable
            "p=22a=5C=22s=24s=09w=3D0rd=25=26", // Q encoding
            "p\"a\\\"s$s.w=0rd%&",              // dotted text column
        ] {
            assert!(has(&f, want), "{want}");
        }
    }

    /// The Rust styles against the standard library itself.
    #[test]
    fn rust_styles_match_std() {
        for v in [
            "t0k\ten'Q\"x\\y\u{1b}\u{7f}\u{1}\0",
            "a\u{e9}\u{85}\u{1F600}\r\n",
            "plain-token_1.x",
        ] {
            let f = literal_forms(v.as_bytes());
            let debug = format!("{v:?}");
            let body = &debug[1..debug.len() - 1];
            assert!(has(&f, body), "{{:?}}: {body}");
            let default = v.escape_default().to_string();
            assert!(has(&f, &default), "escape_default: {default}");
            let ascii = v.as_bytes().escape_ascii().to_string();
            assert!(has(&f, &ascii), "escape_ascii: {ascii}");
        }
    }

    #[test]
    fn plain_tokens_have_no_other_literal_form() {
        let f = literal_forms(b"ghp-Ab3_x.Yz9");
        assert!(
            f.iter()
                .all(|x| x == b"ghp-Ab3_x.Yz9" || x.starts_with(b"ghp-Ab3=5Fx=2EYz9"))
        );
    }
}
