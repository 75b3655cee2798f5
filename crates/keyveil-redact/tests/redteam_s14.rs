//! Red team, session 14: shapes of dumps and byte lists that common tools print, through the
//! redactor's public API (one-shot, byte by byte and in uneven chunks). Each attack prints a
//! value made at run time (never printed by the test) with a real tool and looks for what is
//! left of it decoded back from the output's tokens. Every attack here is held now: the ten
//! once-`LEAK` shapes are read by the decoding pass's list view (`src/decode/list.rs`,
//! `docs/redaction.md` §4, *Byte lists*); `tests/byte_lists.rs` adds other shapes of each class.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use keyveil_redact::Redactor;
use std::process::Command;

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A value of `len` letters and digits, different at every run (xorshift from the clock).
fn value(len: usize) -> Vec<u8> {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut x = (t ^ u64::from(std::process::id())).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALNUM[(x % ALNUM.len() as u64) as usize]
        })
        .collect()
}

fn tool(name: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name} >/dev/null"))
        .status()
        .is_ok_and(|s| s.success())
}

/// `bash -c program` with `V` set to the value: its standard output.
fn run(program: &str, v: &[u8]) -> Vec<u8> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(program)
        .env("V", std::str::from_utf8(v).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{program} failed");
    out.stdout
}

/// Redacted one-shot, byte by byte and in uneven chunks; all three must agree.
fn redacted(r: &Redactor, input: &[u8], what: &str) -> Vec<u8> {
    let (one, _) = r.redact(input);
    let bytewise = common::stream_bytewise(r, input);
    let (chunked, _) = common::stream_in(r, input, &[7, 1, 13, 2, 64, 5]);
    assert!(one == bytewise, "{what}: one-shot and bytewise differ");
    assert!(one == chunked, "{what}: one-shot and chunked differ");
    one
}

/// The output's tokens (runs of letters and digits), each without a `0x`/`0X` prefix.
fn tokens(out: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(out)
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.strip_prefix("0x")
                .or_else(|| t.strip_prefix("0X"))
                .unwrap_or(t)
                .to_owned()
        })
        .collect()
}

/// The bytes the output decodes to, read as: every token hex pairs; every token one octal
/// number; every token one decimal number; every token hex pairs with their nibbles swapped.
fn decoded(out: &[u8]) -> [Vec<u8>; 4] {
    let mut s: [Vec<u8>; 4] = Default::default();
    for t in tokens(out) {
        if t.len().is_multiple_of(2) && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            for k in 0..t.len() / 2 {
                let pair = &t[2 * k..2 * k + 2];
                s[0].push(u8::from_str_radix(pair, 16).unwrap());
                let swapped: String = pair.chars().rev().collect();
                s[3].push(u8::from_str_radix(&swapped, 16).unwrap());
            }
        }
        if let Ok(x) = u8::from_str_radix(&t, 8) {
            s[1].push(x);
        }
        if let Ok(x) = t.parse::<u8>() {
            s[2].push(x);
        }
    }
    s
}

/// How many bytes of `v` in a row the output decodes to, at most (in any reading).
fn shown(out: &[u8], v: &[u8]) -> usize {
    let d = decoded(out);
    (1..=v.len())
        .rev()
        .find(|&n| {
            v.windows(n)
                .any(|w| d.iter().any(|s| common::contains(s, w)))
        })
        .unwrap_or(0)
}

/// Runs each program on a fresh 32-byte value and names those whose redacted output still
/// decodes to 12 bytes of the value or more (the fragment rule's length).
fn leaks(programs: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    for p in programs {
        let first = p
            .split_whitespace()
            .find(|w| !w.contains('%') && !w.contains('"'));
        if first.is_some_and(|t| !t.starts_with('p') && !tool(t)) {
            continue;
        }
        let v = value(32);
        let r = Redactor::new([("V", v.as_slice())]);
        let raw = run(p, &v);
        assert!(
            shown(&raw, &v) >= 12,
            "{p}: the tool did not print the value"
        );
        let out = redacted(&r, &raw, p);
        let n = shown(&out, &v);
        if n >= 12 {
            bad.push(format!(
                "{p}: {n} of 32 bytes decode from the redacted output"
            ));
        }
    }
    bad
}

fn assert_held(programs: &[&str]) {
    let bad = leaks(programs);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Hex bytes joined by `:` (Python `bytes.hex(":")`, Perl `%*vX`, `hexdump -e '/1 "%02x:"'`,
/// the form of fingerprints and MAC addresses): the whole value, both cases.
#[test]
fn s14_colon_joined_hex_bytes_are_redacted() {
    assert_held(&[
        "python3 -c 'import os;print(os.environ[\"V\"].encode().hex(\":\"))'",
        "perl -e 'printf \"%*vX\\n\", \":\", $ENV{V}'",
        "printf %s \"$V\" | hexdump -v -e '/1 \"%02x:\"'",
    ]);
}

/// `0X`-prefixed or upper-case `0x` byte lists: `xxd -i -u` (a C array in upper case) and
/// Python's `f"0x{b:02X}"`. The registered `0xNN, ` form is lower case only.
#[test]
fn s14_upper_case_c_byte_arrays_are_redacted() {
    assert_held(&[
        "printf %s \"$V\" | xxd -i -u",
        "python3 -c 'import os;print(\", \".join(f\"0x{b:02X}\" for b in os.environ[\"V\"].encode()))'",
    ]);
}

/// A Python list of `hex()` strings (`[hex(b) for b in v]`: `['0x58', '0x6b', …]`): quoted,
/// unpadded, comma-joined.
#[test]
fn s14_a_python_list_of_hex_strings_is_redacted() {
    assert_held(&[
        "python3 -c 'import os;print([hex(b) for b in os.environ[\"V\"].encode()])'",
        "node -e 'console.log(JSON.stringify([...process.env.V].map(c=>c.charCodeAt(0).toString(16))))'",
    ]);
}

/// Octal bytes without zero padding (`hexdump -e '/1 "%o "'`, Perl `%vo`): a digit's byte
/// (`0`–`9`, 060–071) is two digits, so the 3-digit octal form never matches a value holding
/// one, and the dot-joined Perl form is no list the reader reads.
#[test]
fn s14_unpadded_octal_bytes_are_redacted() {
    let mut v = value(32);
    v[5] = b'7';
    let r = Redactor::new([("V", v.as_slice())]);
    let mut bad = Vec::new();
    for p in [
        "printf %s \"$V\" | hexdump -v -e '/1 \"%o \"'",
        "perl -e 'printf \"%vo\\n\", $ENV{V}'",
    ] {
        let raw = run(p, &v);
        let out = redacted(&r, &raw, p);
        let n = shown(&out, &v);
        if n >= 12 {
            bad.push(format!("{p}: {n} of 32 bytes decode"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// A JSON list of decimal strings (`jq 'explode|map(tostring)'`, `["88","107",…]`): the
/// registered decimal lists are unquoted.
#[test]
fn s14_a_json_list_of_decimal_strings_is_redacted() {
    if !tool("jq") {
        return;
    }
    assert_held(&["printf %s \"$V\" | jq -Rc 'explode|map(tostring)'"]);
}

/// Perl `unpack("h*")`: hex with the low nibble first (a value's hex with each pair's digits
/// swapped).
#[test]
fn s14_low_nibble_first_hex_is_redacted() {
    assert_held(&["perl -e 'print unpack(\"h*\", $ENV{V}), \"\\n\"'"]);
}

/// Hex in groups joined by `-` (Python `bytes.hex("-", 2)`, a UUID-like grouping): the view
/// drops whitespace between hex groups, not punctuation.
#[test]
fn s14_dash_grouped_hex_is_redacted() {
    assert_held(&["python3 -c 'import os;print(os.environ[\"V\"].encode().hex(\"-\", 2))'"]);
}

/// `0x` bytes joined by spaces (Python `" ".join(f"{b:#04x}" …)`, `hexdump -e '/1 "0x%02x "'`):
/// the registered `0x` form is joined by `,` only, and the view drops whitespace between hex
/// digits, not between `0x` tokens.
#[test]
fn s14_space_joined_0x_bytes_are_redacted() {
    assert_held(&[
        "python3 -c 'import os;print(\" \".join(f\"{b:#04x}\" for b in os.environ[\"V\"].encode()))'",
        "printf %s \"$V\" | hexdump -v -e '/1 \"0x%02x \"'",
    ]);
}

/// Bare hex bytes joined by `,` (a CSV of bytes: `od -An -tx1 | tr -s ' \n' ,`, Python
/// `bytes.hex(",")`).
#[test]
fn s14_comma_joined_bare_hex_bytes_are_redacted() {
    assert_held(&[
        "printf %s \"$V\" | od -An -tx1 -v | tr -s ' \\n' ','",
        "python3 -c 'import os;print(os.environ[\"V\"].encode().hex(\",\"))'",
    ]);
}

/// The value as one big-endian integer in decimal (Python `int.from_bytes(v, "big")`, the usual
/// step before RSA-style or bignum arithmetic): its base-2 spelling (`bin(int.from_bytes(v))`)
/// is registered, the decimal one is not.
#[test]
fn s14_a_value_as_a_decimal_big_integer_is_redacted() {
    let v = value(32);
    let r = Redactor::new([("V", v.as_slice())]);
    let p = "python3 -c 'import os;print(int.from_bytes(os.environ[\"V\"].encode(),\"big\"))'";
    let raw = run(p, &v);
    let out = redacted(&r, &raw, p);
    // Decoded back as the agent would: the digits, as a big-endian integer of 32 bytes.
    let digits: String = String::from_utf8_lossy(&out)
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let back = run(
        &format!("python3 -c 'print(int(\"0{digits}\").to_bytes(32,\"big\").decode(\"latin-1\"))'"),
        &v,
    );
    assert!(
        !common::contains(&back, &v),
        "the redacted output's digits are the value as an integer"
    );
}

/// Shapes that are caught (controls for the above, and forms tried that held): grouped and
/// narrow hex without offsets, decimal and octal lists, Node's buffers, jq's escapes, Python's
/// containers of bytes.
#[test]
fn s14_held_dump_and_list_shapes_stay_redacted() {
    assert_held(&[
        "printf %s \"$V\" | xxd -i -c 4",
        "printf %s \"$V\" | xxd -p -c 5",
        "printf %s \"$V\" | hexdump -v -e '/1 \"%03o \"'",
        "printf %s \"$V\" | hexdump -v -e '2/1 \"%02x\" \" \"'",
        "printf %s \"$V\" | hexdump -v -e '/1 \"0x%02x, \"'",
        "printf %s \"$V\" | hexdump -v -e '/1 \"%u\\n\"'",
        "printf %s \"$V\" | od -An -tx1 -w3",
        "printf %s \"$V\" | od -An -tu1 -w6",
        "printf %s \"$V\" | od -An -to1 -w5",
        "printf %s \"$V\" | basenc --base16",
        "python3 -c 'import os;print(os.environ[\"V\"].encode().hex(\" \", 4))'",
        "python3 -c 'import os,array;print(array.array(\"B\", os.environ[\"V\"].encode()))'",
        "perl -e 'print join(\",\", unpack(\"C*\", $ENV{V})), \"\\n\"'",
        "node -e 'console.log(Buffer.from(process.env.V))'",
        "node -e 'console.log(new Uint8Array(Buffer.from(process.env.V)))'",
        "printf %s \"$V\" | jq -Rc 'explode'",
    ]);
}
