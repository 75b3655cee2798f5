//! Values with noise inside: dumps, wrapping, colour codes, CRLF.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::{contains, leaked_window, stream_bytewise};
use keyveil_redact::{Redactor, variants};

const TOKEN: &str = "ghs_om5lSe1ZklIsPymzeLltcppaWvV82bhzo0VK";

fn redact(input: &[u8]) -> Vec<u8> {
    let r = Redactor::new([("T", TOKEN)]);
    let (one, _) = r.redact(input);
    let mut s = r.stream();
    let mut out = Vec::new();
    for b in input {
        s.push(std::slice::from_ref(b), &mut out);
    }
    s.finish(&mut out);
    assert_eq!(one, out, "streaming differs");
    one
}

/// `xxd` layout: offset, 8 groups of 2 bytes, ASCII column.
fn xxd(data: &[u8]) -> String {
    let mut out = String::new();
    for (i, line) in data.chunks(16).enumerate() {
        out.push_str(&format!("{:08x}: ", i * 16));
        for pair in line.chunks(2) {
            for b in pair {
                out.push_str(&format!("{b:02x}"));
            }
            out.push(' ');
        }
        out.push(' ');
        out.extend(
            line.iter()
                .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' }),
        );
        out.push('\n');
    }
    out
}

/// `hexdump -C` layout.
fn hexdump_c(data: &[u8]) -> String {
    let mut out = String::new();
    for (i, line) in data.chunks(16).enumerate() {
        out.push_str(&format!("{:08x}  ", i * 16));
        for (j, b) in line.iter().enumerate() {
            out.push_str(&format!("{b:02x} "));
            if j == 7 {
                out.push(' ');
            }
        }
        out.push_str(" |");
        out.extend(
            line.iter()
                .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' }),
        );
        out.push_str("|\n");
    }
    out
}

#[test]
fn xxd_dump() {
    let dump = xxd(format!("Authorization: Bearer {TOKEN}\n").as_bytes());
    let out = redact(dump.as_bytes());
    let out_s = String::from_utf8_lossy(&out);
    assert!(out_s.contains("[REDACTED:T]"), "{out_s}");
    // No 12 consecutive bytes of the token survive, in hex (spacing removed) or as text. (The
    // second line holds only 10 token bytes, fewer than a fragment: it stays, see the limits
    // in docs/redaction.md.)
    let flat: String = out_s.chars().filter(|c| !c.is_whitespace()).collect();
    let hex = String::from_utf8(variants::hex(TOKEN.as_bytes())[0].clone()).unwrap();
    for w in 0..=TOKEN.len() - 12 {
        assert!(!flat.contains(&hex[2 * w..2 * w + 24]), "{out_s}");
        assert!(!out_s.contains(&TOKEN[w..w + 12]), "{out_s}");
    }
}

#[test]
fn hexdump_canonical() {
    let dump = hexdump_c(TOKEN.as_bytes());
    let out = redact(dump.as_bytes());
    let out_s = String::from_utf8_lossy(&out);
    assert!(!out_s.contains("67 68 73 5f 6f 6d 35 6c"), "{out_s}");
    assert!(!out_s.contains("ghs_om5lSe1Z"), "{out_s}");
}

#[test]
fn wrapped_base64() {
    let doc = format!(
        "{{\"token\":\"{TOKEN}\",\"padding\":\"{}\"}}",
        "x".repeat(90)
    );
    let b64 = variants::base64_full(doc.as_bytes())[0].clone();
    let wrapped: Vec<u8> = b64
        .chunks(76)
        .flat_map(|c| c.iter().copied().chain(*b"\r\n"))
        .collect();
    let out = redact(&wrapped);
    assert!(contains(&out, b"[REDACTED:T]"));
    let cores = variants::base64_cores(TOKEN.as_bytes());
    let flat: Vec<u8> = out
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    assert!(!cores.iter().any(|c| contains(&flat, c)));
}

#[test]
fn colour_codes_inside_value() {
    let coloured = format!(
        "match: {}\x1b[01;31m\x1b[K{}\x1b[m\x1b[K{}\n",
        &TOKEN[..10],
        &TOKEN[10..20],
        &TOKEN[20..]
    );
    let out = redact(coloured.as_bytes());
    assert_eq!(String::from_utf8_lossy(&out), "match: [REDACTED:T]\n");
}

#[test]
fn escape_prefix_does_not_hide_value() {
    for prefix in ["\x1b[", "\x1b[12", "\x1b", "\x1b[1;"] {
        let input = format!("x {prefix}{TOKEN} y");
        let out = redact(input.as_bytes());
        assert!(!contains(&out, TOKEN.as_bytes()), "{prefix:?}");
        assert!(contains(&out, b"[REDACTED:T]"));
    }
}

/// A value that begins like the parameters of a colour code: printed after `ESC [`, all but its
/// last bytes become an SGR sequence in the normalised view (found by the fuzz target).
#[test]
fn value_that_completes_a_colour_code() {
    let value: &[u8] = b"%30<((((m\xff$";
    let r = Redactor::new([("V", value)]);
    for prefix in [&b"\x1b["[..], b"\x1b", b"", b"\x1b[1"] {
        let mut input = b"x ".to_vec();
        input.extend_from_slice(prefix);
        input.extend_from_slice(value);
        input.extend_from_slice(b"\x1bR y");
        let (out, _) = r.redact(&input);
        assert!(!contains(&out, value), "{prefix:?}: {out:?}");
        assert!(contains(&out, b"[REDACTED:V]"));
    }
}

/// A random alphanumeric token of `len` bytes (xorshift64*, fixed seed): a fake value.
fn random_token(len: usize, mut seed: u64) -> Vec<u8> {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            ALNUM[(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 58) as usize % ALNUM.len()]
        })
        .collect()
}

/// A truncated print of a random token that starts right after `ESC [` (or `ESC`) with bytes
/// that complete the colour code (`7m`, `K`, `[K`): the view shows fewer than 12 value bytes,
/// the raw output (what the agent reads) 12 or more. Such views of fragments count only right
/// after a colour code (they stay out of the block path's probes, which keeps the probe
/// distance at 9), so this checks both paths: a short output (byte by byte) and one followed by
/// enough text for the block path to start right after the colour code.
#[test]
fn truncated_print_after_a_colour_code_start() {
    let text = b" and then some ordinary log text that is long enough for a block".repeat(2);
    for (introducer, completes) in [
        (&b"\x1b["[..], &b"7m"[..]),
        (b"\x1b[", b"K"),
        (b"\x1b[", b"1;42m"),
        (b"\x1b", b"[K"),
    ] {
        let mut v = random_token(32, 0x5eed);
        v[10..10 + completes.len()].copy_from_slice(completes);
        let r = Redactor::new([("T", v.as_slice())]);
        assert_eq!(r.stats().probe_stride, 9);
        for shown in 12..=20 {
            for tail in [&b" y"[..], &text] {
                let input = [&b"x "[..], introducer, &v[10..10 + shown], tail].concat();
                let (out, n) = r.redact(&input);
                assert_eq!(leaked_window(&out, &v), None, "{shown} bytes: {out:?}");
                assert_eq!(n, 1, "{shown} bytes: {out:?}");
                assert_eq!(stream_bytewise(&r, &input), out);
            }
        }
        // The same view elsewhere is a run of fewer than 12 value bytes: left alone.
        let view = &v[10 + completes.len()..22];
        let input = [&b"x "[..], view, &text].concat();
        assert_eq!(r.redact(&input).1, 0);
        for prefix in [&b"\x1b["[..], b"\x1b", b""] {
            let input = [&b"x "[..], prefix, &v, b" y"].concat();
            let (out, _) = r.redact(&input);
            assert_eq!(leaked_window(&out, &v), None, "{prefix:?}: {out:?}");
        }
    }
}

/// A value made only of bytes that may be a colour code's parameters (digits, `;`, ...),
/// printed as those parameters: the view drops the whole sequence, and the agent still reads
/// the bytes. It is redacted inside the sequence, streamed in any split.
#[test]
fn value_printed_as_colour_code_parameters() {
    let digits: Vec<u8> = random_token(64, 0xd161)
        .iter()
        .map(|b| b'0' + b % 10)
        .collect();
    for len in [8usize, 11, 12, 16] {
        let v = &digits[..len];
        let r = Redactor::new([("PIN", v)]);
        let mut cases = vec![
            [&b"a \x1b["[..], v, b"m b"].concat(),
            [&b"a \x1b["[..], v, b"K b"].concat(),
        ];
        if len <= 13 {
            cases.push([&b"a \x1b[1;"[..], v, b";4m b"].concat());
        }
        for input in cases {
            let (out, n) = r.redact(&input);
            assert!(!contains(&out, v), "{len}: {out:?}");
            assert_eq!(n, 1, "{len}: {out:?}");
            assert!(out.starts_with(b"a ") && out.ends_with(b" b"));
            assert_eq!(stream_bytewise(&r, &input), out);
        }
    }
    // Ordinary colour codes around other values are left alone.
    let r = Redactor::new([("PIN", &digits[..12])]);
    let plain = b"\x1b[38;2;255;128;0mok\x1b[0m \x1b[1;31;40mfine\x1b[K";
    assert_eq!(r.redact(plain).0, plain.to_vec());
}

#[test]
fn crlf_and_tab_joined_lines() {
    let key = "-----BEGIN KEY-----\nAsZ7nrsoTV75Y4sxVe9RWlBaTF6E9CPcgYBy\nG5c6qSYhzYTFQy6k1qJAH4DxD3EoA1zC\n-----END KEY-----";
    let r = Redactor::new([("K", key)]);
    for sep in ["\r\n", "\t", "   ", " \n "] {
        let shown = key.replace('\n', sep);
        let (out, n) = r.redact(format!("<{shown}>").as_bytes());
        assert_eq!(out, b"<[REDACTED:K]>", "{sep:?}");
        assert_eq!(n, 1);
    }
}

#[test]
fn long_noise_run_ends_a_match_and_bounds_hold_back() {
    let r = Redactor::new([("T", TOKEN)]);
    let mut s = r.stream();
    let mut out = Vec::new();
    s.push(&TOKEN.as_bytes()[..20], &mut out);
    s.push(&[b' '; 200], &mut out);
    // The 20 bytes are a fragment (redacted); after the run nothing is held back.
    let mut expected = b"[REDACTED:T]".to_vec();
    expected.extend_from_slice(&[b' '; 200]);
    assert_eq!(out, expected);
}
