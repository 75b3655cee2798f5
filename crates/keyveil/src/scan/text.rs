//! Text escapes undone before matching again.
//!
//! The redactor registers a fixed set of encodings of each value (for example percent-encoding
//! with the RFC 3986 unreserved set in upper and lower case). Files written by other encoders
//! can hold forms outside that set: git's credential store keeps `/` or encodes it, with
//! lower-case hex; YAML single-quoted scalars double the apostrophe (YAML 1.2 §7.3.2); Python's
//! `repr` writes `\'`; JSON may escape every character as `\u00XX`; HTML may use numeric
//! character references (`&#38;`, `&#x26;`). Decoding the whole text once and matching the
//! result catches every such variant, whichever characters the encoder chose to escape.
//!
//! Each transform runs only when its trigger occurs in the text, at most twice in a row (double
//! escaping); transforms are not combined with each other (the redactor's own variants cover
//! one encoding inside another, such as JSON inside base64).

use std::ffi::OsStr;

use super::{Forms, Scanner};

/// A transform: its form name, and the decoder (`None` when the text holds nothing to decode).
type Transform = (&'static str, fn(&[u8]) -> Option<Vec<u8>>);

/// The transforms, in the order they run.
const TRANSFORMS: &[Transform] = &[
    ("percent", percent_decode),
    ("yaml-single-quoted", yaml_single_quoted),
    ("backslash-escape", backslash_unescape),
    ("html-entity", html_unescape),
];

/// How many times one transform is applied in a row: twice catches double escaping (JSON in a
/// JSON string, a Python `repr` saved in JSON, a URL encoded twice, `&amp;lt;`).
const LEVELS: usize = 2;

/// Matches every decoded form of `data` (text) at `location`.
pub(super) fn scan_transforms(sc: &mut Scanner<'_>, data: &[u8], location: &OsStr, forms: &Forms) {
    for (name, decode) in TRANSFORMS {
        let mut current = decode(data);
        for level in 0..LEVELS {
            let Some(out) = current else { break };
            if sc.out_of_time() {
                return;
            }
            sc.match_bytes(&out, location, &forms.with(name));
            current = if level + 1 < LEVELS {
                decode(&out)
            } else {
                None
            };
        }
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.1 percent-decoding, either hex case; `%` not followed by two hex digits is kept.
pub(super) fn percent_decode(data: &[u8]) -> Option<Vec<u8>> {
    memchr::memchr(b'%', data)?;
    let mut out = Vec::with_capacity(data.len());
    let mut changed = false;
    let mut i = 0usize;
    while let Some(&b) = data.get(i) {
        if b == b'%'
            && let (Some(h), Some(l)) = (
                data.get(i + 1).copied().and_then(hex_val),
                data.get(i + 2).copied().and_then(hex_val),
            )
        {
            out.push(h << 4 | l);
            i += 3;
            changed = true;
            continue;
        }
        out.push(b);
        i += 1;
    }
    changed.then_some(out)
}

/// YAML single-quoted scalars write `'` as `''`.
pub(super) fn yaml_single_quoted(data: &[u8]) -> Option<Vec<u8>> {
    memchr::memmem::find(data, b"''")?;
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0usize;
    while let Some(&b) = data.get(i) {
        out.push(b);
        i += if b == b'\'' && data.get(i + 1) == Some(&b'\'') {
            2
        } else {
            1
        };
    }
    Some(out)
}

/// Backslash escapes of C, JSON (RFC 8259 §7, `\uXXXX` with surrogate pairs), YAML
/// double-quoted scalars, Python and shell: `\\ \" \' \/ \n \r \t \0 \a \b \f \v \e \xHH
/// \uXXXX \UXXXXXXXX \NNN` (octal), and a backslash before a newline (line continuation).
/// Unknown escapes are kept as written.
pub(super) fn backslash_unescape(data: &[u8]) -> Option<Vec<u8>> {
    memchr::memchr(b'\\', data)?;
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0usize;
    while let Some(&b) = data.get(i) {
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let Some(&e) = data.get(i + 1) else {
            out.push(b);
            break;
        };
        // Three octal digits: C, Python and libedit's vis(3) (`\040` for a space in psql and
        // sqlite3 histories).
        if let Some(v) = octal3(data, i + 1) {
            out.push(v);
            i += 4;
            continue;
        }
        let simple = match e {
            b'\\' | b'"' | b'\'' | b'/' | b' ' | b'$' | b'`' => Some(e),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'0' => Some(0),
            b'a' => Some(7),
            b'b' => Some(8),
            b'f' => Some(0x0c),
            b'v' => Some(0x0b),
            b'e' => Some(0x1b),
            _ => None,
        };
        if let Some(c) = simple {
            out.push(c);
            i += 2;
            continue;
        }
        match e {
            b'\n' => i += 2,
            b'x' => match hex_digits(data, i + 2, 2) {
                Some(v) => {
                    out.push(u8::try_from(v).unwrap_or(b'?'));
                    i += 4;
                }
                None => {
                    out.push(b);
                    i += 1;
                }
            },
            b'u' => match hex_digits(data, i + 2, 4) {
                Some(hi) => {
                    // A surrogate pair is two escapes.
                    let pair = (0xd800..0xdc00).contains(&hi)
                        && data.get(i + 6) == Some(&b'\\')
                        && data.get(i + 7) == Some(&b'u');
                    let lo = if pair {
                        hex_digits(data, i + 8, 4).filter(|lo| (0xdc00..0xe000).contains(lo))
                    } else {
                        None
                    };
                    match lo {
                        Some(lo) => {
                            let c = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
                            push_char(&mut out, c);
                            i += 12;
                        }
                        None => {
                            push_char(&mut out, hi);
                            i += 6;
                        }
                    }
                }
                None => {
                    out.push(b);
                    i += 1;
                }
            },
            b'U' => match hex_digits(data, i + 2, 8) {
                Some(v) => {
                    push_char(&mut out, v);
                    i += 10;
                }
                None => {
                    out.push(b);
                    i += 1;
                }
            },
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    (out != data).then_some(out)
}

/// Three octal digits at `at` (a byte value, so the first is 0 to 3).
fn octal3(data: &[u8], at: usize) -> Option<u8> {
    match data.get(at..at + 3)? {
        [a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7'] => {
            Some((a - b'0') << 6 | (b - b'0') << 3 | (c - b'0'))
        }
        _ => None,
    }
}

/// `n` hex digits at `at`, as a number.
fn hex_digits(data: &[u8], at: usize, n: usize) -> Option<u32> {
    let digits = data.get(at..at + n)?;
    digits
        .iter()
        .try_fold(0u32, |a, &d| Some(a << 4 | u32::from(hex_val(d)?)))
}

/// Appends the UTF-8 encoding of code point `c` (U+FFFD if it is not a scalar value).
fn push_char(out: &mut Vec<u8>, c: u32) {
    let ch = char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER);
    let mut buf = [0u8; 4];
    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
}

/// HTML/XML character references: the five XML entities, `&nbsp;`, and numeric references in
/// decimal and hex (HTML Living Standard §13.2.5.72, XML 1.0 §4.1). Unknown ones are kept.
pub(super) fn html_unescape(data: &[u8]) -> Option<Vec<u8>> {
    memchr::memchr(b'&', data)?;
    let mut out = Vec::with_capacity(data.len());
    let mut changed = false;
    let mut i = 0usize;
    while let Some(&b) = data.get(i) {
        if b == b'&'
            && let Some((decoded, len)) = html_reference(data.get(i + 1..).unwrap_or_default())
        {
            push_char(&mut out, decoded);
            i += 1 + len;
            changed = true;
            continue;
        }
        out.push(b);
        i += 1;
    }
    changed.then_some(out)
}

/// The reference after an `&`: its code point and its length up to and including `;`.
fn html_reference(rest: &[u8]) -> Option<(u32, usize)> {
    let end = rest.iter().take(12).position(|&b| b == b';')?;
    let body = rest.get(..end)?;
    let code = match body {
        b"amp" => u32::from(b'&'),
        b"lt" => u32::from(b'<'),
        b"gt" => u32::from(b'>'),
        b"quot" => u32::from(b'"'),
        b"apos" => u32::from(b'\''),
        b"nbsp" => 0xa0,
        [b'#', b'x' | b'X', hex @ ..] if !hex.is_empty() => {
            hex.iter().try_fold(0u32, |a, &d| {
                Some(a.checked_mul(16)? + u32::from(hex_val(d)?))
            })?
        }
        [b'#', dec @ ..] if !dec.is_empty() => dec.iter().try_fold(0u32, |a, &d| {
            d.is_ascii_digit()
                .then(|| a.checked_mul(10))
                .flatten()
                .map(|a| a + u32::from(d - b'0'))
        })?,
        _ => return None,
    };
    Some((code, end + 1))
}
