//! Encodings of one *atom* (a value, or a piece of a value such as a line or a JSON leaf).
//!
//! Each function returns the byte strings under which the atom may appear in a program's output.
//! [`encodings`] collects all of them (deduplicated); [`token_encodings`] is the smaller set used
//! for short values, which are only ever matched as whole tokens.
//!
//! Sources of the formats:
//! - base64: RFC 4648 §4 (standard alphabet) and §5 (URL- and filename-safe alphabet);
//! - hex: RFC 4648 §8 (base16), both letter cases;
//! - percent-encoding: RFC 3986 §2.1 (`%XX`, both hex cases) with the unreserved set of §2.3,
//!   plus the variants real encoders produce: `encodeURIComponent` and `encodeURI` (ECMA-262),
//!   Python's `urllib.parse.quote` (keeps `/`), `application/x-www-form-urlencoded` (WHATWG URL
//!   §5, space as `+`) and the path characters of RFC 3986 §3.3 (`pchar` and `/`); hex digits in
//!   mixed case are handled by the normalised view ([`crate::normalize::fold_percent_hex`]);
//! - JSON string escapes: RFC 8259 §7, with the optional `\/` solidus escape, Go's HTML-safe
//!   `\u003c \u003e \u0026` (plus `\u0027`), and `ensure_ascii`-style `\uXXXX` for non-ASCII;
//! - JSON `\u00XX` escapes of ASCII characters (every non-alphanumeric one, or all of them);
//! - XML/HTML character references: XML 1.0 §4.6 predefined entities and the numeric forms used by
//!   Python's `html.escape` (`&#x27;`), Go's `html.EscapeString` (`&#39;`, `&#34;`), Ruby
//!   (`&#39;`) and PHP (`&#039;`); numeric references (XML 1.0 §4.1) in decimal and hex;
//! - YAML 1.2 §7.3.2 single-quoted scalars (`''`);
//! - POSIX shell quoting (XCU §2.2): `'\''` (bash `set -x`) and `'"'"'` (Python `shlex.quote`)
//!   inside single quotes, backslash escapes inside double quotes, and bash `printf %q` style;
//! - dotenv double-quoted values (`\n`, `\"`, `\\`, optionally `\$`).
//! - byte dumps ([`byte_dumps`]): `\xNN` per byte (strace `-xx`), `xxd -i` (`0xNN,`), decimal
//!   byte lists (Rust `{:?}` of `&[u8]`, serde `Vec<u8>`, Python `list(b)`, Java
//!   `Arrays.toString`, Go `fmt.Println([]byte)`), octal bytes (`od -An -b`) and base 2
//!   ([`binary_forms`]: whitespace, `,` and Python-list separators, `bin()` of each byte);
//! - UTF-16 and UTF-32 of non-ASCII atoms (of ASCII ones they equal the atom in the normalised
//!   view, where NUL is noise);
//! - the string-literal forms of [`crate::literals`] (Python, Go, Rust, Ruby, Node, Java,
//!   C/GNU, bash, Perl, YAML, TOML, SQL, CSV, .NET, HCL, PowerShell, cmd, quoted-printable).

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use zeroize::Zeroize;

/// The characters of base64 that are fully determined by `atom` when it is encoded at each of the
/// three byte offsets (0, 1, 2 mod 3) inside a longer input, for both RFC 4648 alphabets.
///
/// A prefix (such as `user:` in an HTTP basic-auth header) shifts the atom to another offset and
/// changes the characters that straddle its first byte; a suffix (a trailing newline) changes the
/// last character and the padding. Only the characters whose 6 bits all come from `atom` are
/// kept, so every occurrence of `atom` inside any base64 text contains one of these cores.
pub fn base64_cores(atom: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for offset in 0..3usize {
            let mut shifted = vec![0u8; offset];
            shifted.extend_from_slice(atom);
            let encoded = engine.encode(&shifted);
            let first = (8 * offset).div_ceil(6);
            let end = (8 * (offset + atom.len())) / 6;
            if let Some(core) = encoded.as_bytes().get(first..end)
                && !core.is_empty()
            {
                out.push(core.to_vec());
            }
        }
    }
    out
}

/// Complete base64 encodings of `atom` at offset 0 (padded and unpadded, both alphabets).
pub fn base64_full(atom: &[u8]) -> Vec<Vec<u8>> {
    [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
        .iter()
        .map(|e| e.encode(atom).into_bytes())
        .collect()
}

/// Base16 (hex) in lower and upper case.
pub fn hex(atom: &[u8]) -> [Vec<u8>; 2] {
    [
        hex_with(atom, b"0123456789abcdef"),
        hex_with(atom, b"0123456789ABCDEF"),
    ]
}

/// Lower-case hex of `atom`.
pub fn hex_lower(atom: &[u8]) -> Vec<u8> {
    hex_with(atom, b"0123456789abcdef")
}

fn hex_with(atom: &[u8], digits: &[u8; 16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(atom.len() * 2);
    for &b in atom {
        push_hex_byte(&mut out, b, digits);
    }
    out
}

fn push_hex_byte(out: &mut Vec<u8>, b: u8, digits: &[u8; 16]) {
    let hi = digits.get(usize::from(b >> 4)).copied().unwrap_or(b'0');
    let lo = digits.get(usize::from(b & 0xf)).copied().unwrap_or(b'0');
    out.push(hi);
    out.push(lo);
}

/// How a percent-encoder writes a space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Space {
    Percent,
    Plus,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn percent_with(atom: &[u8], keep: impl Fn(u8) -> bool, space: Space, upper: bool) -> Vec<u8> {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut out = Vec::with_capacity(atom.len() * 3);
    for &b in atom {
        if b == b' ' && space == Space::Plus {
            out.push(b'+');
        } else if keep(b) {
            out.push(b);
        } else {
            out.push(b'%');
            push_hex_byte(&mut out, b, digits);
        }
    }
    out
}

/// Percent-encodings (RFC 3986) as produced by common encoders: strict (unreserved kept), upper
/// and lower hex, space as `%20` or `+`; `encodeURIComponent`; Python `quote` (keeps `/`); and
/// `application/x-www-form-urlencoded`.
pub fn percent_encodings(atom: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for upper in [true, false] {
        for space in [Space::Percent, Space::Plus] {
            out.push(percent_with(atom, is_unreserved, space, upper));
        }
    }
    let uri_component = |b: u8| is_unreserved(b) || matches!(b, b'!' | b'\'' | b'(' | b')' | b'*');
    out.push(percent_with(atom, uri_component, Space::Percent, true));
    out.push(percent_with(
        atom,
        |b| is_unreserved(b) || b == b'/',
        Space::Percent,
        true,
    ));
    let form = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_');
    out.push(percent_with(atom, form, Space::Plus, true));
    // `encodeURI` (ECMA-262 §19.2.6.5): reserved characters and `#` stay as they are.
    let uri = |b: u8| {
        uri_component(b)
            || matches!(
                b,
                b';' | b',' | b'/' | b'?' | b':' | b'@' | b'&' | b'=' | b'+' | b'$' | b'#'
            )
    };
    out.push(percent_with(atom, uri, Space::Percent, true));
    // RFC 3986 §3.3 path characters (`pchar`: unreserved, sub-delims, `:` and `@`) and `/`,
    // as URL libraries leave them in paths and userinfo.
    let pchar = |b: u8| {
        is_unreserved(b)
            || matches!(
                b,
                b'!' | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
            )
    };
    out.push(percent_with(atom, pchar, Space::Percent, true));
    out
}

/// The percent-*decoded* forms of `atom` if it contains at least one valid `%XX` escape: plain
/// decoding (`+` kept) and form decoding (`+` as space). Empty if nothing decodes.
pub fn percent_decoded(atom: &[u8]) -> Vec<Vec<u8>> {
    let mut plain = Vec::with_capacity(atom.len());
    let mut decoded_any = false;
    let mut i = 0;
    while let Some(&b) = atom.get(i) {
        if b == b'%'
            && let (Some(h), Some(l)) = (
                atom.get(i + 1).and_then(|&c| hex_val(c)),
                atom.get(i + 2).and_then(|&c| hex_val(c)),
            )
        {
            plain.push((h << 4) | l);
            decoded_any = true;
            i += 3;
            continue;
        }
        plain.push(b);
        i += 1;
    }
    if !decoded_any {
        return Vec::new();
    }
    let form: Vec<u8> = {
        let spaced: Vec<u8> = atom
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        // Decode again with '+' already turned into spaces.
        percent_decoded_plain(&spaced)
    };
    vec![plain, form]
}

fn percent_decoded_plain(atom: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(atom.len());
    let mut i = 0;
    while let Some(&b) = atom.get(i) {
        if b == b'%'
            && let (Some(h), Some(l)) = (
                atom.get(i + 1).and_then(|&c| hex_val(c)),
                atom.get(i + 2).and_then(|&c| hex_val(c)),
            )
        {
            out.push((h << 4) | l);
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    out
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Options of a JSON string escaper.
#[derive(Clone, Copy, Debug, Default)]
struct JsonStyle {
    /// `/` written as `\/` (PHP `json_encode`, some Java encoders).
    solidus: bool,
    /// `<`, `>`, `&` written as `\u003c`, `\u003e`, `\u0026` (Go `encoding/json`).
    html: bool,
    /// Also `'` as `\u0027` (PHP `JSON_HEX_APOS`, Jackson with HTML escaping).
    apos: bool,
    /// Non-ASCII written as `\uXXXX` (Python `json.dumps` default `ensure_ascii=True`).
    ascii: bool,
    /// Upper-case hex digits in `\uXXXX`.
    upper: bool,
}

fn json_escape_with(atom: &[u8], style: JsonStyle) -> Option<Vec<u8>> {
    let digits: &[u8; 16] = if style.upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let push_u = |out: &mut Vec<u8>, cp: u32| {
        out.extend_from_slice(b"\\u");
        for shift in [12u32, 8, 4, 0] {
            let d = ((cp >> shift) & 0xf) as usize;
            out.push(digits.get(d).copied().unwrap_or(b'0'));
        }
    };
    let mut out = Vec::with_capacity(atom.len() + 8);
    let text: Option<&str> = if style.ascii {
        Some(std::str::from_utf8(atom).ok()?)
    } else {
        None
    };
    let escape_ascii = |out: &mut Vec<u8>, b: u8| match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        b'/' if style.solidus => out.extend_from_slice(b"\\/"),
        b'<' | b'>' | b'&' if style.html => push_u(out, u32::from(b)),
        b'\'' if style.apos => push_u(out, u32::from(b)),
        0x00..=0x1f => push_u(out, u32::from(b)),
        _ => out.push(b),
    };
    match text {
        Some(text) => {
            for ch in text.chars() {
                let cp = u32::from(ch);
                if cp < 0x80 {
                    escape_ascii(&mut out, cp as u8);
                } else {
                    let mut units = [0u16; 2];
                    for unit in ch.encode_utf16(&mut units) {
                        push_u(&mut out, u32::from(*unit));
                    }
                }
            }
        }
        None => {
            for &b in atom {
                escape_ascii(&mut out, b);
            }
        }
    }
    Some(out)
}

/// JSON string-literal bodies (RFC 8259 §7) of `atom` in the styles real encoders use.
pub fn json_escapes(atom: &[u8]) -> Vec<Vec<u8>> {
    let styles = [
        JsonStyle::default(),
        JsonStyle {
            solidus: true,
            ..JsonStyle::default()
        },
        JsonStyle {
            html: true,
            ..JsonStyle::default()
        },
        JsonStyle {
            html: true,
            apos: true,
            ..JsonStyle::default()
        },
        JsonStyle {
            ascii: true,
            ..JsonStyle::default()
        },
        JsonStyle {
            ascii: true,
            upper: true,
            ..JsonStyle::default()
        },
        JsonStyle {
            ascii: true,
            html: true,
            solidus: true,
            ..JsonStyle::default()
        },
    ];
    styles
        .iter()
        .filter_map(|&s| json_escape_with(atom, s))
        .collect()
}

/// `atom` with line breaks (and tabs) written as the two-character escapes `\n`, `\r`, `\t`
/// and nothing else escaped (how many loggers and `repr`s print multi-line values).
pub fn newline_escaped(atom: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(atom.len() + 8);
    for &b in atom {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.push(b),
        }
    }
    out
}

fn replace_bytes(atom: &[u8], f: impl Fn(u8) -> Option<&'static [u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(atom.len() + 8);
    for &b in atom {
        match f(b) {
            Some(rep) => out.extend_from_slice(rep),
            None => out.push(b),
        }
    }
    out
}

/// XML 1.0 / HTML character-reference escapes of `atom` (text-content and attribute styles).
pub fn xml_escapes(atom: &[u8]) -> Vec<Vec<u8>> {
    vec![
        replace_bytes(atom, |b| match b {
            b'&' => Some(b"&amp;"),
            b'<' => Some(b"&lt;"),
            b'>' => Some(b"&gt;"),
            _ => None,
        }),
        replace_bytes(atom, |b| match b {
            b'&' => Some(b"&amp;"),
            b'<' => Some(b"&lt;"),
            b'>' => Some(b"&gt;"),
            b'"' => Some(b"&quot;"),
            b'\'' => Some(b"&apos;"),
            _ => None,
        }),
        replace_bytes(atom, |b| match b {
            b'&' => Some(b"&amp;"),
            b'<' => Some(b"&lt;"),
            b'>' => Some(b"&gt;"),
            b'"' => Some(b"&quot;"),
            b'\'' => Some(b"&#x27;"),
            _ => None,
        }),
        replace_bytes(atom, |b| match b {
            b'&' => Some(b"&amp;"),
            b'<' => Some(b"&lt;"),
            b'>' => Some(b"&gt;"),
            b'"' => Some(b"&#34;"),
            b'\'' => Some(b"&#39;"),
            _ => None,
        }),
        // Ruby `CGI.escapeHTML`, Rails `ERB::Util.html_escape`.
        replace_bytes(atom, |b| match b {
            b'&' => Some(b"&amp;"),
            b'<' => Some(b"&lt;"),
            b'>' => Some(b"&gt;"),
            b'"' => Some(b"&quot;"),
            b'\'' => Some(b"&#39;"),
            _ => None,
        }),
        // PHP `htmlspecialchars(..., ENT_QUOTES)`.
        replace_bytes(atom, |b| match b {
            b'&' => Some(b"&amp;"),
            b'<' => Some(b"&lt;"),
            b'>' => Some(b"&gt;"),
            b'"' => Some(b"&quot;"),
            b'\'' => Some(b"&#039;"),
            _ => None,
        }),
    ]
}

/// POSIX shell quotings of `atom` (the part between the outer quotes).
pub fn shell_escapes(atom: &[u8]) -> Vec<Vec<u8>> {
    vec![
        // bash `set -x`, `printf '%s'` quoting: 'foo'\''bar'
        replace_bytes(atom, |b| (b == b'\'').then_some(&b"'\\''"[..])),
        // Python shlex.quote, ash/dash `set -x`: 'foo'"'"'bar'
        replace_bytes(atom, |b| (b == b'\'').then_some(&b"'\"'\"'"[..])),
        // inside double quotes
        replace_bytes(atom, |b| match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'$' => Some(b"\\$"),
            b'`' => Some(b"\\`"),
            _ => None,
        }),
        // bash `printf %q`: backslash before every shell-special byte
        {
            let mut out = Vec::with_capacity(atom.len() * 2);
            for &b in atom {
                if !(b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'_' | b'-' | b'.' | b',' | b':' | b'/' | b'@' | b'%' | b'+' | b'='
                    )
                    || b >= 0x80)
                {
                    out.push(b'\\');
                }
                out.push(b);
            }
            out
        },
    ]
}

/// dotenv double-quoted value bodies: `\\`, `\"`, `\n` (and a variant that also writes `\$`).
pub fn dotenv_escapes(atom: &[u8]) -> Vec<Vec<u8>> {
    vec![
        replace_bytes(atom, |b| match b {
            b'\\' => Some(b"\\\\"),
            b'"' => Some(b"\\\""),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            _ => None,
        }),
        replace_bytes(atom, |b| match b {
            b'\\' => Some(b"\\\\"),
            b'"' => Some(b"\\\""),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'$' => Some(b"\\$"),
            _ => None,
        }),
    ]
}

/// `atom` reversed (by characters when it is UTF-8, by bytes otherwise).
pub fn reversed(atom: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(atom) {
        Ok(s) => s.chars().rev().collect::<String>().into_bytes(),
        Err(_) => atom.iter().rev().copied().collect(),
    }
}

/// UTF-16 little- and big-endian encodings (Windows tools, PowerShell, Java serialisation).
pub fn utf16(atom: &[u8]) -> Vec<Vec<u8>> {
    let Ok(s) = std::str::from_utf8(atom) else {
        return Vec::new();
    };
    let units: Vec<u16> = s.encode_utf16().collect();
    vec![
        units.iter().flat_map(|u| u.to_le_bytes()).collect(),
        units.iter().flat_map(|u| u.to_be_bytes()).collect(),
    ]
}

/// JSON string bodies in which ASCII characters are written as `\u00XX` too: every character
/// that is not a letter or digit (Jackson's `ESCAPE_NON_ASCII` with a custom character-escape
/// table, OWASP's JSON sanitizer, hand-written `\uXXXX` escapers), or every character; lower
/// and upper hex digits (RFC 8259 §7 allows either). Non-ASCII bytes are left as they are (their
/// `\uXXXX` forms are in [`json_escapes`]).
pub fn json_unicode_escapes(atom: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for all in [false, true] {
        for digits in [b"0123456789abcdef", b"0123456789ABCDEF"] {
            let mut v = Vec::with_capacity(atom.len() * 6);
            for &b in atom {
                if b.is_ascii() && (all || !b.is_ascii_alphanumeric()) {
                    v.extend_from_slice(b"\\u00");
                    push_hex_byte(&mut v, b, digits);
                } else {
                    v.push(b);
                }
            }
            out.push(v);
        }
    }
    out
}

/// HTML / XML numeric character references (XML 1.0 §4.1, HTML §13.2.5.72): the five special
/// characters `& < > " '`, or every ASCII character that is not a letter or digit (OWASP Java
/// Encoder, `htmlspecialchars`-style encoders that escape everything), written as `&#NN;`,
/// `&#xhh;`, `&#xHH;` or `&#XHH;`.
pub fn html_numeric_escapes(atom: &[u8]) -> Vec<Vec<u8>> {
    let special = |b: u8| matches!(b, b'&' | b'<' | b'>' | b'"' | b'\'');
    let other = |b: u8| b.is_ascii() && !b.is_ascii_alphanumeric() && !b.is_ascii_control();
    let styles: [(&[u8], Option<&[u8; 16]>); 4] = [
        (b"&#", None),
        (b"&#x", Some(b"0123456789abcdef")),
        (b"&#x", Some(b"0123456789ABCDEF")),
        (b"&#X", Some(b"0123456789ABCDEF")),
    ];
    let mut out = Vec::new();
    for which in [&special as &dyn Fn(u8) -> bool, &other] {
        for (prefix, digits) in styles {
            let mut v = Vec::with_capacity(atom.len() + 16);
            for &b in atom {
                if which(b) {
                    v.extend_from_slice(prefix);
                    match digits {
                        None => v.extend_from_slice(b.to_string().as_bytes()),
                        Some(d) => push_hex_byte(&mut v, b, d),
                    }
                    v.push(b';');
                } else {
                    v.push(b);
                }
            }
            out.push(v);
        }
    }
    out
}

/// Byte-level dumps of `atom` as tools print byte arrays and memory, after whitespace is
/// removed by the normalised view:
///
/// - every byte as `\xNN` (strace `-xx`, C and shell byte strings, Python `bytes` of binary
///   data);
/// - `0xNN` joined by `,` (`xxd -i`, C and Rust array initialisers);
/// - decimal bytes joined by `,` (Rust `{:?}` of `&[u8]`, serde/JSON `Vec<u8>`, Python
///   `list(b)`, Node `Uint8Array`, Java `Arrays.toString` of bytes below 0x80) and, for atoms
///   with bytes of 0x80 and above, Java's signed bytes;
/// - decimal bytes joined by spaces, seen as concatenated digits (Go `fmt.Println([]byte)`,
///   `od -An -tu1`);
/// - every byte as a C octal escape `\NNN` (three digits, as `printf '\\%03o'` and GNU
///   `sed -n l` print them; ISO C §6.4.4.4), and three-digit octal bytes joined by spaces, seen
///   as concatenated digits (`od -An -b`).
pub fn byte_dumps(atom: &[u8]) -> Vec<Vec<u8>> {
    let lower = b"0123456789abcdef";
    let mut x = Vec::with_capacity(atom.len() * 4);
    let mut zero_x = Vec::with_capacity(atom.len() * 5);
    let mut dec = Vec::with_capacity(atom.len() * 4);
    let mut digits = Vec::with_capacity(atom.len() * 3);
    let mut octal = Vec::with_capacity(atom.len() * 4);
    let mut octal_digits = Vec::with_capacity(atom.len() * 3);
    for (i, &b) in atom.iter().enumerate() {
        octal.push(b'\\');
        for d in [b >> 6, (b >> 3) & 7, b & 7] {
            octal.push(b'0' + d);
            octal_digits.push(b'0' + d);
        }
        x.extend_from_slice(b"\\x");
        push_hex_byte(&mut x, b, lower);
        if i > 0 {
            zero_x.push(b',');
            dec.push(b',');
        }
        zero_x.extend_from_slice(b"0x");
        push_hex_byte(&mut zero_x, b, lower);
        push_decimal(&mut dec, b);
        push_decimal(&mut digits, b);
    }
    let mut out = vec![x, zero_x, dec, digits, octal, octal_digits];
    out.extend(binary_forms(atom));
    if atom.iter().any(|&b| b >= 0x80) {
        // Java's signed bytes.
        let mut signed = Vec::with_capacity(atom.len() * 5);
        for (i, &b) in atom.iter().enumerate() {
            if i > 0 {
                signed.push(b',');
            }
            if b >= 0x80 {
                signed.push(b'-');
                push_decimal(&mut signed, b.wrapping_neg());
            } else {
                push_decimal(&mut signed, b);
            }
        }
        out.push(signed);
    }
    out
}

/// Longest atom whose binary forms are registered (each is 8 to 10 times as long as the atom).
const BINARY_MAX: usize = 512;

/// Base-2 forms of `atom` (atoms of at most `BINARY_MAX` (512) bytes), as seen in the normalised
/// view (whitespace between the bytes dropped):
///
/// - every byte as 8 digits, most significant bit first, concatenated, with the leading zeros
///   of the whole string left out (`''.join(f'{b:08b}' ...)`, Perl `unpack("B*")`, `basenc
///   --base2msbf`, the same joined by spaces or line breaks, and `bin(int.from_bytes(v))`,
///   which drops the first byte's leading zeros);
/// - 8 digits joined by `,` (also `, `) and by `','` (a Python list of strings);
/// - `bin()` of each byte (`0b` and no leading zeros) concatenated (joined by whitespace) and
///   joined by `','` (a Python list of them).
///
/// Five long patterns per atom: more (other separators, least significant bit first, `0b` and
/// 8 digits) cost 5 to 15 % of the throughput at 100 values (the matcher outgrows the cache;
/// `docs/benchmarks.md`). Dumps with line offsets (`xxd -b`) are read by the decoding pass
/// (`decode/dump.rs`).
pub fn binary_forms(atom: &[u8]) -> Vec<Vec<u8>> {
    if atom.len() > BINARY_MAX {
        return Vec::new();
    }
    let eight = |b: u8, out: &mut Vec<u8>| {
        for k in (0..8).rev() {
            out.push(b'0' + ((b >> k) & 1));
        }
    };
    let minimal = |b: u8, out: &mut Vec<u8>| {
        out.extend_from_slice(b"0b");
        let top = 7u32.saturating_sub(b.leading_zeros().min(7));
        for k in (0..=top).rev() {
            out.push(b'0' + ((b >> k) & 1));
        }
    };
    let joined = |sep: &[u8], prefix: &[u8], digits: &dyn Fn(u8, &mut Vec<u8>)| {
        let mut out = Vec::with_capacity(atom.len() * (10 + sep.len()));
        for (i, &b) in atom.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(sep);
            }
            out.extend_from_slice(prefix);
            digits(b, &mut out);
        }
        out
    };
    let mut msb = joined(b"", b"", &eight);
    let zeros = msb.iter().take_while(|&&d| d == b'0').count();
    msb.drain(..zeros);
    vec![
        msb,
        joined(b",", b"", &eight),
        joined(b"','", b"", &eight),
        joined(b"", b"", &minimal),
        joined(b"','", b"", &minimal),
    ]
}

/// Appends `b` in decimal (no allocation).
fn push_decimal(out: &mut Vec<u8>, b: u8) {
    if b >= 100 {
        out.push(b'0' + b / 100);
    }
    if b >= 10 {
        out.push(b'0' + (b / 10) % 10);
    }
    out.push(b'0' + b % 10);
}

/// Wide-character forms beyond UTF-16: UTF-32 little- and big-endian of non-ASCII text
/// (`wchar_t` text on Linux and macOS, `iconv -t UTF-32`). Of ASCII text they equal the atom
/// in the normalised view, where NUL is noise, and add no pattern.
pub fn wide_forms(atom: &[u8]) -> Vec<Vec<u8>> {
    let Ok(s) = std::str::from_utf8(atom) else {
        return Vec::new();
    };
    if s.is_ascii() {
        return Vec::new();
    }
    let mut le32 = Vec::with_capacity(atom.len() * 4);
    let mut be32 = Vec::with_capacity(atom.len() * 4);
    for c in s.chars() {
        le32.extend_from_slice(&u32::from(c).to_le_bytes());
        be32.extend_from_slice(&u32::from(c).to_be_bytes());
    }
    vec![le32, be32]
}

/// The body of a YAML single-quoted scalar (YAML 1.2 §7.3.2): `'` written as `''`.
pub fn yaml_single_quoted(atom: &[u8]) -> Vec<u8> {
    replace_bytes(atom, |b| (b == b'\'').then_some(&b"''"[..]))
}

/// The characters of `atom`: Unicode scalars when it is UTF-8, else its bytes as Latin-1.
fn chars_of(atom: &[u8]) -> Vec<u32> {
    match std::str::from_utf8(atom) {
        Ok(s) => s.chars().map(u32::from).collect(),
        Err(_) => atom.iter().map(|&b| u32::from(b)).collect(),
    }
}

/// Per-character escapes: *every* character of `atom` written as an escape, as HTML/XML
/// "encode everything" filters, CSS serialisers, obfuscating JavaScript and some URL encoders
/// print them (forms that escape only special characters are in [`html_numeric_escapes`],
/// [`json_unicode_escapes`], [`percent_encodings`], [`byte_dumps`]):
///
/// - HTML/XML numeric references (XML 1.0 §4.1; HTML §13.2.5.72 accepts a missing `;`):
///   `&#116;`, `&#116` (no `;`), `&#x74;`, `&#x4A;` (upper hex), `&#x74` (no `;`), `&#x0074;`
///   (zero-padded to 4);
/// - CSS escapes (CSS Syntax §4.3.7, CSSOM "serialize an identifier"): `\74 ` (a space ends
///   each);
/// - JavaScript: `\u{74}` (ES2015 code point escape, also Rust and Swift);
/// - URL: every byte as `%74` (either case of hex digits: the normalised view folds them).
///
/// Normalised-pass patterns: their q-grams seldom occur in ordinary output, and the view drops
/// the spaces of the CSS form. Each form costs every value a pattern, and patterns cost
/// throughput (the prefix filter grows): rarer spellings (`&#0116;`, `&#X4A;`, `\000074`,
/// `\x4A`) are not registered.
pub fn per_char_escapes(atom: &[u8]) -> Vec<Vec<u8>> {
    let chars = chars_of(atom);
    let mut out: Vec<Vec<u8>> = Vec::new();
    let each = |f: &dyn Fn(u32) -> String| -> Vec<u8> {
        chars.iter().map(|&c| f(c)).collect::<String>().into_bytes()
    };
    out.push(each(&|c| format!("&#{c};")));
    out.push(each(&|c| format!("&#{c}")));
    out.push(each(&|c| format!("&#x{c:x};")));
    out.push(each(&|c| format!("&#x{c:X};")));
    out.push(each(&|c| format!("&#x{c:x}")));
    out.push(each(&|c| format!("&#x{c:04x};")));
    out.push(each(&|c| format!("\\{c:x} ")));
    out.push(each(&|c| format!("\\u{{{c:x}}}")));
    // `%XX` of every byte: one pattern, the normalised view folds the hex digits' case.
    let mut pct = Vec::with_capacity(atom.len() * 3);
    for &b in atom {
        pct.push(b'%');
        push_hex_byte(&mut pct, b, b"0123456789abcdef");
    }
    out.push(pct);
    dedup(out)
}

/// The decoded views of `atom` written with identity escapes (every character that is not a
/// hex digit after a backslash, as `sed 's/[^0-9a-fA-F]/\\&/g'` does, and as CSS,
/// JavaScript, Perl, Ruby and shells read `\\k` as `k`) where the decoding pass reads an escape
/// of another language instead: `\\x` before one or two hex digits is C's `\\xHH` (one byte),
/// `\\u` before four is `\\uXXXX`, `\\U` before eight is `\\UXXXXXXXX` (one character, as
/// UTF-8). The writer chooses, at each such place, whether to escape the letter, so every
/// combination of the first [`MAX_COLLAPSE_SITES`] places is returned (at most 2^4 - 1 forms,
/// the atom itself not included); none when the atom has no such place. Atoms for the decoding
/// pass, which matches whole atoms.
pub fn identity_escape_collapses(atom: &[u8]) -> Vec<Vec<u8>> {
    // (start, consumed bytes, decoded bytes) of each place.
    let mut sites: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    let mut i = 0;
    while i < atom.len() && sites.len() < MAX_COLLAPSE_SITES {
        let hex_run = |from: usize, max: usize| {
            atom.get(from..)
                .unwrap_or_default()
                .iter()
                .take(max)
                .take_while(|b| b.is_ascii_hexdigit())
                .count()
        };
        let digits_value = |from: usize, n: usize| {
            atom.get(from..from + n)
                .unwrap_or_default()
                .iter()
                .fold(0u32, |acc, &b| {
                    (acc << 4) | u32::from(hex_val(b).unwrap_or(0))
                })
        };
        let site = match atom.get(i) {
            Some(b'x') => {
                let n = hex_run(i + 1, 2);
                (n > 0).then(|| {
                    (
                        1 + n,
                        vec![u8::try_from(digits_value(i + 1, n)).unwrap_or(0)],
                    )
                })
            }
            Some(&l @ (b'u' | b'U')) => {
                let want = if l == b'u' { 4 } else { 8 };
                (hex_run(i + 1, want) == want)
                    .then(|| char::from_u32(digits_value(i + 1, want)))
                    .flatten()
                    .map(|c| {
                        let mut buf = [0u8; 4];
                        (1 + want, c.encode_utf8(&mut buf).as_bytes().to_vec())
                    })
            }
            _ => None,
        };
        match site {
            Some((len, bytes)) => {
                sites.push((i, len, bytes));
                i += len;
            }
            None => i += 1,
        }
    }
    let mut out = Vec::new();
    for mask in 1u32..(1 << sites.len()) {
        let mut v = Vec::with_capacity(atom.len());
        let mut at = 0;
        for (k, (start, len, bytes)) in sites.iter().enumerate() {
            if mask & (1 << k) == 0 {
                continue;
            }
            v.extend_from_slice(atom.get(at..*start).unwrap_or_default());
            v.extend_from_slice(bytes);
            at = start + len;
        }
        v.extend_from_slice(atom.get(at..).unwrap_or_default());
        out.push(v);
    }
    out
}

/// How many places of one atom [`identity_escape_collapses`] combines (a random 40-byte value
/// holds about 0.2 of them; past this many the later places are not combined).
pub const MAX_COLLAPSE_SITES: usize = 4;

/// Base64 of part of a value (`printf %s "${TOK:5}" | base64`): the encodings, in both RFC 4648
/// alphabets (§4, §5), of `window` starting a 3-byte group. Every base64 text of
/// `FRAGMENT_LEN + 2` or more consecutive bytes of a value holds one window of
/// `FRAGMENT_LEN` bytes that starts a group, whose characters it then fully determines.
pub fn base64_aligned(window: &[u8]) -> Vec<Vec<u8>> {
    dedup(
        [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD]
            .iter()
            .map(|e| e.encode(window).into_bytes())
            .collect(),
    )
}

/// Mathematical alphanumeric styles (Unicode block U+1D400, "Mathematical Alphanumeric
/// Symbols"): the code point of `A` in each style, the style's digit zero (if it has digits),
/// in the order of the block. "Fancy text" generators and some chat clients print text this way.
/// Eight of the thirteen styles, those such generators offer first: bold script, bold fraktur,
/// sans-serif, and sans-serif italic and bold italic are not registered (each would cost every
/// value a pattern).
const MATH_STYLES: [(u32, Option<u32>); 8] = [
    (0x1D400, Some(0x1D7CE)), // bold
    (0x1D434, None),          // italic
    (0x1D468, Some(0x1D7CE)), // bold italic (bold digits)
    (0x1D49C, None),          // script
    (0x1D504, None),          // fraktur
    (0x1D538, Some(0x1D7D8)), // double-struck
    (0x1D5D4, Some(0x1D7EC)), // sans-serif bold
    (0x1D670, Some(0x1D7F6)), // monospace
];

/// Letters the block leaves out because an older character stands for them (Letterlike
/// Symbols): `(code point in the block, the character used)`.
const MATH_HOLES: [(u32, u32); 24] = [
    (0x1D455, 0x210E),
    (0x1D49D, 0x212C),
    (0x1D4A0, 0x2130),
    (0x1D4A1, 0x2131),
    (0x1D4A3, 0x210B),
    (0x1D4A4, 0x2110),
    (0x1D4A7, 0x2112),
    (0x1D4A8, 0x2133),
    (0x1D4AD, 0x211B),
    (0x1D4BA, 0x212F),
    (0x1D4BC, 0x210A),
    (0x1D4C4, 0x2134),
    (0x1D506, 0x212D),
    (0x1D50B, 0x210C),
    (0x1D50C, 0x2111),
    (0x1D515, 0x211C),
    (0x1D51D, 0x2128),
    (0x1D53A, 0x2102),
    (0x1D53F, 0x210D),
    (0x1D545, 0x2115),
    (0x1D547, 0x2119),
    (0x1D548, 0x211A),
    (0x1D549, 0x211D),
    (0x1D551, 0x2124),
];

/// Unicode compatibility look-alikes of an ASCII `atom`, which NFKC folds back to it:
/// fullwidth forms (U+FF01–U+FF5E for `!`–`~`, U+3000 for space: CJK input methods, Japanese
/// and Chinese logs, `unicodedata`-based "wide" filters), and eight mathematical
/// alphanumeric styles of letters and digits (other characters kept). Non-ASCII atoms have
/// none.
pub fn compat_lookalikes(atom: &[u8]) -> Vec<Vec<u8>> {
    if !atom.is_ascii() || atom.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let wide: String = atom
        .iter()
        .map(|&b| match b {
            b' ' => '\u{3000}',
            0x21..=0x7e => char::from_u32(u32::from(b) - 0x21 + 0xFF01).unwrap_or(char::from(b)),
            _ => char::from(b),
        })
        .collect();
    out.push(wide.into_bytes());
    if atom.iter().any(u8::is_ascii_alphabetic) {
        for (a, zero) in MATH_STYLES {
            let styled: String = atom
                .iter()
                .map(|&b| {
                    let cp = match b {
                        b'A'..=b'Z' => Some(a + u32::from(b - b'A')),
                        b'a'..=b'z' => Some(a + 26 + u32::from(b - b'a')),
                        b'0'..=b'9' => zero.map(|z| z + u32::from(b - b'0')),
                        _ => None,
                    };
                    let cp = cp.map(|c| {
                        MATH_HOLES
                            .iter()
                            .find(|(h, _)| *h == c)
                            .map_or(c, |(_, r)| *r)
                    });
                    cp.and_then(char::from_u32).unwrap_or(char::from(b))
                })
                .collect();
            out.push(styled.into_bytes());
        }
    }
    // Each pattern starts at its first character from the fullwidth, mathematical or
    // letterlike blocks: a leading digit of a style without digits, `_` or `-` stay ASCII and
    // would otherwise give each style an ASCII q-gram that ordinary output holds.
    for p in &mut out {
        let k = p
            .iter()
            .position(|&b| matches!(b, 0xE2 | 0xEF | 0xF0))
            .unwrap_or(p.len());
        p.drain(..k);
    }
    out.retain(|p| !p.is_empty());
    dedup(out)
}

/// Every encoding of `atom` (deduplicated, `atom` itself first). Encodings that equal the raw
/// form are dropped by deduplication.
pub fn encodings(atom: &[u8]) -> Vec<Vec<u8>> {
    if atom.iter().all(|&b| plain_token_byte(b)) {
        // Every quoting, escaping and percent-encoding of such an atom is the atom itself
        // (checked against `all_encodings` by a unit test): skip computing them.
        let mut out: Vec<Vec<u8>> = vec![atom.to_vec()];
        out.extend(base64_full(atom));
        out.extend(base64_cores(atom));
        out.extend(hex(atom));
        out.extend(json_unicode_escapes(atom));
        out.extend(html_numeric_escapes(atom));
        out.push(reversed(atom));
        // UTF-16 and UTF-32 of ASCII text are the atom itself in the normalised view (NUL is
        // noise there): no pattern of their own.
        out.extend(byte_dumps(atom));
        // The RFC 2047 `Q` encoding rewrites `_` and `.`; no other literal form changes
        // such an atom.
        out.extend(crate::literals::quoted_printable(atom));
        return dedup(out);
    }
    all_encodings(atom)
}

/// Bytes that no escaper or percent-encoder here rewrites: ASCII letters, digits, `-`, `_`, `.`
/// (`~` is percent-encoded by form encoding and backslashed by `printf %q`).
fn plain_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

/// [`encodings`] without the shortcut for plain tokens.
fn all_encodings(atom: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = vec![atom.to_vec()];
    out.extend(base64_full(atom));
    out.extend(base64_cores(atom));
    out.extend(hex(atom));
    out.extend(percent_encodings(atom));
    out.extend(json_escapes(atom));
    out.extend(json_unicode_escapes(atom));
    out.push(newline_escaped(atom));
    out.extend(xml_escapes(atom));
    out.extend(html_numeric_escapes(atom));
    out.push(yaml_single_quoted(atom));
    out.extend(shell_escapes(atom));
    out.extend(dotenv_escapes(atom));
    out.push(reversed(atom));
    if !atom.is_ascii() {
        out.extend(utf16(atom));
    }
    out.extend(byte_dumps(atom));
    out.extend(wide_forms(atom));
    out.extend(crate::literals::literal_forms(atom));
    dedup(out)
}

/// Encodings used for short values matched only as whole tokens: the raw form and the escapes
/// that keep it a single token (no base64 offset cores, no reversal).
pub fn token_encodings(atom: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = vec![atom.to_vec()];
    out.extend(base64_full(atom));
    out.extend(hex(atom));
    out.extend(percent_encodings(atom));
    out.extend(json_escapes(atom));
    out.extend(json_unicode_escapes(atom));
    out.extend(xml_escapes(atom));
    out.extend(html_numeric_escapes(atom));
    out.push(yaml_single_quoted(atom));
    out.extend(shell_escapes(atom));
    out.extend(crate::literals::literal_forms(atom));
    dedup(out)
}

/// Removes duplicates, keeping the first occurrence of each byte string (the others are wiped:
/// they are encodings of secret values).
pub fn dedup(v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    // FNV-1a of each kept string; a hash seen before is confirmed by comparing the strings.
    let fnv = |x: &[u8]| {
        x.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    };
    let mut hashes: Vec<u64> = Vec::with_capacity(v.len());
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(v.len());
    for mut x in v {
        let h = fnv(&x);
        if hashes.contains(&h) && out.contains(&x) {
            x.zeroize();
        } else {
            hashes.push(h);
            out.push(x);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn base64_cores_found_at_every_offset() {
        let v = b"dpl_SrGzZcythy2iVgyf0Eyf2eXfjGkldl";
        let cores = base64_cores(v);
        for prefix in [&b""[..], b"u", b"us", b"user:", b"octo-ci:"] {
            for suffix in [&b""[..], b"\n", b"xy", b":tail"] {
                let mut plain = prefix.to_vec();
                plain.extend_from_slice(v);
                plain.extend_from_slice(suffix);
                for enc in [STANDARD.encode(&plain), URL_SAFE_NO_PAD.encode(&plain)] {
                    assert!(
                        cores.iter().any(|c| contains(enc.as_bytes(), c)),
                        "no core in {enc}"
                    );
                }
            }
        }
    }

    #[test]
    fn base64_case_from_corpus() {
        let cores = base64_cores(b"ghp_PTT0aZN0dnruqXa71P2tD8vkQXRYO1NiJ7br");
        let out = b"b2N0by1jaTpnaHBfUFRUMGFaTjBkbnJ1cVhhNzFQMnREOHZrUVhSWU8xTmlKN2Jy";
        assert!(cores.iter().any(|c| contains(out, c)));
    }

    #[test]
    fn plain_token_shortcut_loses_nothing() {
        let mut atoms: Vec<Vec<u8>> = vec![
            b"abc-DEF_123.xyz".to_vec(),
            b"........".to_vec(),
            b"a".to_vec(),
        ];
        for (id, name) in [
            ("chunk-split-delay", "GH_TOKEN"),
            ("xtrace-stderr", "GITLAB_TOKEN"),
            ("reversed-and-spaced", "OPENAI_API_KEY"),
            ("printenv-aws", "AWS_SECRET_ACCESS_KEY"),
        ] {
            atoms.push(crate::fixtures::secret(id, name).into_bytes());
        }
        for atom in &atoms {
            assert!(atom.iter().all(|&b| plain_token_byte(b)));
            let mut fast = encodings(atom);
            let mut slow = all_encodings(atom);
            fast.sort();
            slow.sort();
            assert_eq!(fast, slow, "{}", String::from_utf8_lossy(atom));
        }
        // Every other printable ASCII byte is rewritten by some escaper.
        for b in 0x20u8..0x7f {
            if !plain_token_byte(b) {
                let atom = [b'a', b, b'b'];
                assert!(
                    all_encodings(&atom)
                        .iter()
                        .skip(1)
                        .any(|e| e.len() > 3 && e.starts_with(b"a") && e.ends_with(b"b")),
                    "{}",
                    b as char
                );
            }
        }
    }

    #[test]
    fn byte_dump_forms() {
        let d = byte_dumps(b"\x00a\x7f\x80\xff");
        for want in [
            &b"\\x00\\x61\\x7f\\x80\\xff"[..],
            b"0x00,0x61,0x7f,0x80,0xff",
            b"0,97,127,128,255",
            b"097127128255",
            b"0,97,127,-128,-1",
        ] {
            assert!(
                d.contains(&want.to_vec()),
                "{}",
                String::from_utf8_lossy(want)
            );
        }
    }

    #[test]
    fn hex_both_cases() {
        assert_eq!(hex(b"g\xff"), [b"67ff".to_vec(), b"67FF".to_vec()]);
    }

    #[test]
    fn percent_variants() {
        let v = percent_encodings(b"K9#mQ@2x:L/p%7 z!");
        assert!(v.contains(&b"K9%23mQ%402x%3AL%2Fp%257%20z%21".to_vec()));
        assert!(v.contains(&b"K9%23mQ%402x%3AL%2Fp%257+z%21".to_vec()));
        assert!(v.contains(&b"K9%23mQ%402x%3aL%2fp%257%20z%21".to_vec()));
        assert!(v.contains(&b"K9%23mQ%402x%3AL/p%257%20z%21".to_vec()));
        assert!(v.contains(&b"K9%23mQ%402x%3AL%2Fp%257%20z!".to_vec()));
    }

    #[test]
    fn percent_decoding() {
        let d = percent_decoded(b"Xk9%25vQ%21m2Lp8+w");
        assert_eq!(
            d,
            vec![b"Xk9%vQ!m2Lp8+w".to_vec(), b"Xk9%vQ!m2Lp8 w".to_vec()]
        );
        assert!(percent_decoded(b"no escapes %zz").is_empty());
    }

    #[test]
    fn json_variants() {
        let v = json_escapes(b"a\"b\\c/d<&>\n\xc3\xa9'");
        assert!(v.contains(&b"a\\\"b\\\\c/d<&>\\n\xc3\xa9'".to_vec()));
        assert!(v.contains(&b"a\\\"b\\\\c\\/d<&>\\n\xc3\xa9'".to_vec()));
        assert!(v.contains(&b"a\\\"b\\\\c/d\\u003c\\u0026\\u003e\\n\xc3\xa9'".to_vec()));
        assert!(v.contains(&b"a\\\"b\\\\c/d\\u003c\\u0026\\u003e\\n\xc3\xa9\\u0027".to_vec()));
        assert!(v.contains(&b"a\\\"b\\\\c/d<&>\\n\\u00e9'".to_vec()));
        assert!(v.contains(&b"a\\\"b\\\\c/d<&>\\n\\u00E9'".to_vec()));
        // Astral characters become surrogate pairs.
        let astral = json_escapes("x\u{1F600}".as_bytes());
        assert!(astral.contains(&b"x\\ud83d\\ude00".to_vec()));
    }

    #[test]
    fn shell_variants() {
        let v = shell_escapes(b"s3cr'3t\"p@ss w0rd");
        assert!(v.contains(&b"s3cr'\\''3t\"p@ss w0rd".to_vec()));
        assert!(v.contains(&b"s3cr'\"'\"'3t\"p@ss w0rd".to_vec()));
        assert!(v.contains(&b"s3cr'3t\\\"p@ss w0rd".to_vec()));
        assert!(v.contains(&b"s3cr\\'3t\\\"p@ss\\ w0rd".to_vec()));
    }

    #[test]
    fn xml_and_dotenv() {
        let x = xml_escapes(b"a<b>&\"'");
        assert!(x.contains(&b"a&lt;b&gt;&amp;\"'".to_vec()));
        assert!(x.contains(&b"a&lt;b&gt;&amp;&quot;&apos;".to_vec()));
        assert!(x.contains(&b"a&lt;b&gt;&amp;&quot;&#x27;".to_vec()));
        assert!(x.contains(&b"a&lt;b&gt;&amp;&#34;&#39;".to_vec()));
        let d = dotenv_escapes(b"a\"b\nc$");
        assert!(d.contains(&b"a\\\"b\\nc$".to_vec()));
        assert!(d.contains(&b"a\\\"b\\nc\\$".to_vec()));
    }

    #[test]
    fn reversal_and_utf16() {
        assert_eq!(reversed("ab\u{e9}".as_bytes()), "\u{e9}ba".as_bytes());
        assert_eq!(utf16(b"ab")[0], b"a\0b\0".to_vec());
        assert_eq!(utf16(b"ab")[1], b"\0a\0b".to_vec());
    }

    #[test]
    fn encodings_are_deduplicated() {
        let e = encodings(b"plainvalue123");
        let set: std::collections::HashSet<_> = e.iter().collect();
        assert_eq!(set.len(), e.len());
        assert_eq!(e.first().map(Vec::as_slice), Some(&b"plainvalue123"[..]));
    }
}
