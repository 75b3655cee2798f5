//! Red team, session 10: byte dumps and base-2 spellings of a value that are not listed as
//! known limits (`docs/redaction.md` §5). Each case prints a generated value (never printed
//! by the test) with the real tool; after redaction no 4 bytes of the value in a row may
//! decode from the dump's tokens. Failures name the case, never the value.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use keyveil_redact::Redactor;
use std::process::Command;

fn value(seed: u64, len: usize) -> Vec<u8> {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALNUM[(x % ALNUM.len() as u64) as usize]
        })
        .collect()
}

fn run(program: &str, v: &[u8]) -> Option<Vec<u8>> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(program)
        .env("V", std::str::from_utf8(v).unwrap())
        .output()
        .ok()?;
    out.status.success().then_some(out.stdout)
}

/// Bytes decoded from tokens split on anything that is not a digit: decimal (1-3 digits),
/// octal (3 digits), binary (8 digits).
fn decoded(out: &[u8]) -> [Vec<u8>; 3] {
    let mut s: [Vec<u8>; 3] = Default::default();
    let text = String::from_utf8_lossy(out);
    for t in text.split(|c: char| !c.is_ascii_digit()) {
        if (1..=3).contains(&t.len())
            && let Ok(x) = t.parse::<u8>()
        {
            s[0].push(x);
        }
        if t.len() == 3
            && let Ok(x) = u8::from_str_radix(t, 8)
        {
            s[1].push(x);
        }
        if t.len() == 8
            && let Ok(x) = u8::from_str_radix(t, 2)
        {
            s[2].push(x);
        }
    }
    s
}

fn leaks(program: &str) -> usize {
    let mut leaked = 0;
    for seed in 0..4u64 {
        let v = value(seed * 7 + 3, [24, 32, 40, 20][seed as usize]);
        let raw = run(program, &v).unwrap_or_else(|| panic!("{program} did not run"));
        let (out, _) = Redactor::new([("V", v.as_slice())]).redact(&raw);
        let (chunked, _) = common::stream_in(
            &Redactor::new([("V", v.as_slice())]),
            &raw,
            &[7, 1, 13, 2, 64, 5],
        );
        for o in [&out, &chunked] {
            if decoded(o)
                .iter()
                .any(|s| v.windows(4).any(|w| common::contains(s, w)))
            {
                leaked += 1;
            }
        }
    }
    leaked
}

/// Signed-decimal and address-radix variants of `od` the dump reader was not tested with.
#[test]
fn s10_od_signed_decimal_and_decimal_addresses_are_redacted() {
    for p in [
        "printf %s \"$V\" | od -td1",
        "printf %s \"$V\" | od -An -td1",
        "printf %s \"$V\" | od -tu1 -Ax",
        "printf %s \"$V\" | od -b -Ad",
        "printf %s \"$V\" | od -b -Ax",
        "printf %s \"$V\" | od -tu1 -v -w16",
    ] {
        assert_eq!(
            leaks(p),
            0,
            "{p}: 4 value bytes in a row decode after redaction"
        );
    }
}

/// Decimal and octal byte lists in other printers' spellings.
#[test]
fn s10_byte_lists_in_other_spellings_are_redacted() {
    for p in [
        "perl -e 'print join(\",\", unpack(\"C*\", $ENV{V})), \"\\n\"'",
        "perl -e 'print join(\"\\t\", unpack(\"C*\", $ENV{V})), \"\\n\"'",
        "perl -e 'print join(\" \", map { sprintf \"%03o\", $_ } unpack(\"C*\", $ENV{V})), \"\\n\"'",
        "perl -e 'print join(\"\\n\", unpack(\"C*\", $ENV{V})), \"\\n\"'",
        "python3 -c 'import os; print(tuple(os.environ[\"V\"].encode()))'",
        "python3 -c 'import os; print(\" \".join(format(b, \"08b\") for b in os.environ[\"V\"].encode()))'",
        "python3 -c 'import os; print(\"\\n\".join(format(b, \"08b\") for b in os.environ[\"V\"].encode()))'",
        "hexdump -v -e '16/1 \"%3u \" \"\\n\"' <<EOF_\n$V\nEOF_",
        "printf %s \"$V\" | hexdump -v -e '16/1 \"%03o \" \"\\n\"'",
    ] {
        assert_eq!(
            leaks(p),
            0,
            "{p}: 4 value bytes in a row decode after redaction"
        );
    }
}

/// Decimal bytes zero-padded to 3 digits (`printf '%03d '`, Perl `sprintf "%03d"`,
/// Python `f'{b:03}'`) without line offsets: not a registered form (the plain decimal list is
/// `104 101`, not `104 065`); the dump reader's list view reads them (a line's first token is
/// a byte when it is a decimal byte, any zero padding).
#[test]
fn s10_zero_padded_decimal_bytes_are_redacted() {
    for p in [
        "perl -e 'print join(\" \", map { sprintf \"%03d\", $_ } unpack(\"C*\", $ENV{V})), \"\\n\"'",
        "python3 -c 'import os; print(\" \".join(f\"{b:03}\" for b in os.environ[\"V\"].encode()))'",
    ] {
        assert_eq!(
            leaks(p),
            0,
            "{p}: 4 value bytes in a row decode after redaction"
        );
    }
}
