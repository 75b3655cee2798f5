//! Byte lists read by the decoding pass's list view (`src/decode/list.rs`): shapes of the
//! classes `tests/redteam_s14.rs` found, printed by other tools, with other separators, cases
//! and lengths, and split across pushes; and ordinary list output (other bytes, MAC addresses,
//! UUIDs, IPv6 addresses) left as it is. Values are made at run time.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use keyveil_redact::Redactor;

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A value of `len` letters and digits from `seed`.
fn value(seed: u64, len: usize) -> Vec<u8> {
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

/// `v`'s bytes, each through `f`, joined by `sep`.
fn list(v: &[u8], sep: &str, f: impl Fn(u8) -> String) -> String {
    v.iter().map(|&b| f(b)).collect::<Vec<_>>().join(sep)
}

/// Redacted one-shot, byte by byte and in uneven pushes; all three must agree and none may
/// hold the printed list's bytes.
fn assert_redacted(r: &Redactor, printed: &str, what: &str) {
    let input = format!("output: {printed}\n");
    let (one, _) = r.redact(input.as_bytes());
    let bytewise = common::stream_bytewise(r, input.as_bytes());
    let (chunked, _) = common::stream_in(r, input.as_bytes(), &[5, 1, 17, 3, 64]);
    assert!(one == bytewise, "{what}: one-shot and bytewise differ");
    assert!(one == chunked, "{what}: one-shot and chunked differ");
    assert!(
        !common::contains(&one, printed.as_bytes()),
        "{what}: the list is still there"
    );
    assert!(
        common::contains(&one, b"[REDACTED:V]"),
        "{what}: no marker in {}",
        String::from_utf8_lossy(&one)
    );
}

/// Hex-pair lists: C# `BitConverter.ToString` (`58-6B-…`), Go `%#v` of a `[]byte`
/// (`[]byte{0x58, 0x6b, …}`), Rust `{:02x?}` (`[58, 6b, …]`), `0x` without spaces, `;` and
/// `|` joins, a 16-byte and a 48-byte value, Python `bytes.hex(":", 3)` groups of three.
#[test]
fn hex_pair_lists_of_other_tools_are_redacted() {
    for (seed, len) in [(1u64, 16usize), (2, 48)] {
        let v = value(seed, len);
        let r = Redactor::new([("V", v.as_slice())]);
        let shapes = [
            ("C# BitConverter", list(&v, "-", |b| format!("{b:02X}"))),
            (
                "Go %#v",
                format!("[]byte{{{}}}", list(&v, ", ", |b| format!("{b:#02x}"))),
            ),
            (
                "Rust {:02x?}",
                format!("[{}]", list(&v, ", ", |b| format!("{b:02x}"))),
            ),
            ("0x, no space", list(&v, ",", |b| format!("0x{b:02x}"))),
            ("semicolons", list(&v, ";", |b| format!("{b:02X}"))),
            ("pipes", list(&v, "|", |b| format!("{b:02x}"))),
            (
                "groups of three",
                v.chunks(3)
                    .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<String>())
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
        ];
        for (what, printed) in &shapes {
            assert_redacted(&r, printed, what);
        }
    }
}

/// Unpadded hex bytes: a value holding bytes below 0x10 (a tab, a control byte) printed by
/// `[hex(b) for b in v]` and Node `toString(16)` lists.
#[test]
fn unpadded_hex_bytes_are_redacted() {
    let mut v = value(3, 24);
    v[4] = 0x05;
    v[11] = 0x0e;
    let r = Redactor::new([("V", v.as_slice())]);
    assert_redacted(&r, &list(&v, ", ", |b| format!("'{b:#x}'")), "hex()");
    assert_redacted(&r, &list(&v, ",", |b| format!("\"{b:x}\"")), "toString(16)");
}

/// Low nibble first (Perl `unpack("h*")`), a 20-byte value.
#[test]
fn low_nibble_first_hex_of_another_length_is_redacted() {
    let v = value(4, 20);
    let r = Redactor::new([("V", v.as_slice())]);
    let printed: String = v
        .iter()
        .map(|&b| format!("{:x}{:x}", b & 0xf, b >> 4))
        .collect();
    assert_redacted(&r, &printed, "unpack h*");
}

/// Decimal bytes as quoted strings (Python `[str(b) for b in v]`, single quotes) and octal
/// bytes without padding joined by `:` and by `.` (Perl `%vo` of a 40-byte value).
#[test]
fn quoted_decimal_and_unpadded_octal_lists_are_redacted() {
    let mut v = value(5, 40);
    v[3] = b'1';
    let r = Redactor::new([("V", v.as_slice())]);
    assert_redacted(&r, &list(&v, ", ", |b| format!("'{b}'")), "str() list");
    assert_redacted(&r, &list(&v, ":", |b| format!("{b:o}")), "octal :");
    assert_redacted(&r, &list(&v, ".", |b| format!("{b:o}")), "octal .");
}

/// The value as one decimal big integer (Java `new BigInteger(1, v)`), 16 and 64 bytes.
#[test]
fn big_integers_of_other_lengths_are_redacted() {
    for (seed, len) in [(6u64, 16usize), (7, 64)] {
        let v = value(seed, len);
        let r = Redactor::new([("V", v.as_slice())]);
        // Decimal digits of the big-endian integer, by repeated division.
        let mut n = v.clone();
        let mut digits = Vec::new();
        while n.iter().any(|&b| b != 0) {
            let mut rem = 0u32;
            for b in n.iter_mut() {
                let x = (rem << 8) | u32::from(*b);
                *b = (x / 10) as u8;
                rem = x % 10;
            }
            digits.push(b'0' + rem as u8);
        }
        digits.reverse();
        assert_redacted(&r, std::str::from_utf8(&digits).unwrap(), "BigInteger");
    }
}

/// Ordinary list output is left as it is: hex lists of other bytes, MAC addresses, UUIDs,
/// IPv6 addresses, dotted versions, octal and decimal tables.
#[test]
fn ordinary_lists_are_left_alone() {
    let v = value(8, 32);
    let other = value(9, 32);
    let r = Redactor::new([("V", v.as_slice())]);
    let text = [
        list(&other, ":", |b| format!("{b:02x}")),
        list(&other, ", ", |b| format!("0x{b:02X}")),
        list(&other, "-", |b| format!("{b:02X}")),
        "link/ether 52:54:00:12:34:56 brd ff:ff:ff:ff:ff:ff".to_owned(),
        "aa:bb:cc:dd:ee:ff 00-1B-63-84-45-E6 01:23:45:67:89:ab 02:42:ac:11:00:02".to_owned(),
        "id 123e4567-e89b-12d3-a456-426614174000, 550e8400-e29b-41d4-a716-446655440000".to_owned(),
        "inet6 fe80::1ff:fe23:4567:890a/64 2001:0db8:85a3:0000:0000:8a2e:0370:7334".to_owned(),
        "versions 1.2.3 10.0.19045.3803 2026.12.07 0.0.0.0 255.255.255.0 127.0.0.1".to_owned(),
        "perms 755 644 600 700 0755 0644 1777 2775 and sizes 4096 8192 16384 65536".to_owned(),
        "2026-12-07T22:30:52.123Z 2026-12-07 22:30:52 12:34:56.789 -0500 +01:00".to_owned(),
    ]
    .join("\n");
    let (out, n) = r.redact(text.as_bytes());
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&out));
    assert_eq!(out, text.as_bytes());
    let (chunked, _) = common::stream_in(&r, text.as_bytes(), &[3, 41, 1, 7]);
    assert_eq!(chunked, text.as_bytes());
}

/// A list split across pushes at every byte is redacted like one push (the run kept at a
/// push's end is decided with the next), and a prompt's trailing punctuation is not held.
#[test]
fn lists_split_across_pushes_and_prompts() {
    let v = value(10, 24);
    let r = Redactor::new([("V", v.as_slice())]);
    let printed = list(&v, ":", |b| format!("{b:02x}"));
    for cut in [1, 2, 3, 10, 36, 37, 38, printed.len() - 1] {
        let mut s = r.stream();
        let mut out = Vec::new();
        s.push(b"fp ", &mut out);
        s.push(&printed.as_bytes()[..cut], &mut out);
        s.push(&printed.as_bytes()[cut..], &mut out);
        s.push(b"\n", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b"fp [REDACTED:V]\n", "cut at {cut}");
    }
    let mut s = r.stream();
    let mut out = Vec::new();
    s.push(b"continue? [y/n]: ", &mut out);
    assert_eq!(out, b"continue? [y/n]: ");
}

/// Narrow hex dumps with offsets (`od -Ax -tx1 -w8`): every line shows 8 bytes of the value
/// after an offset, which the list view reads as bytes of its hex stream.
#[test]
#[ignore = "LIMIT: narrow hex dumps with offsets are not joined (docs/redaction.md §5, narrow \
            hex dumps with offsets)"]
fn narrow_hex_dumps_with_offsets_are_redacted() {
    let v = value(11, 32);
    let r = Redactor::new([("V", v.as_slice())]);
    let mut dump = String::new();
    for (k, line) in v.chunks(8).enumerate() {
        dump.push_str(&format!(
            "{:06x} {}\n",
            8 * k,
            list(line, " ", |b| format!("{b:02x}"))
        ));
    }
    dump.push_str(&format!("{:06x}\n", v.len()));
    let (out, _) = r.redact(dump.as_bytes());
    assert!(
        common::leaked_window(&out, &v).is_none() && common::contains(&out, b"[REDACTED:V]"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}
