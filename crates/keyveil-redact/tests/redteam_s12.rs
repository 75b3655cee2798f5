//! Red team, session 12: the dump reader (`decode/dump.rs`) after the narrow-dump round: od
//! dumps of any width, `xxd -b -c 3`, decimal byte lists with any zero padding and separator,
//! the cheaper trigger and the linear look-back. Each attack prints a generated value (never
//! printed by the test) in a dump or list shape the code may not expect, pushes it to the
//! redactor one-shot, byte by byte, in uneven chunks, split at every offset, or with a pause,
//! and looks for what is left of the value decoded back from the output's digit runs. Failures
//! name the case, never the value. Broken and fixed: a split after a line ending in digits, a
//! list's head let out at a pause, a zero-padded token held back whole. Open: the `#[ignore]`d
//! tests (`docs/redaction.md` §5).
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
/// Upper-case letters and digits (an access key id): every byte has two decimal digits.
const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// A value of `len` bytes of `alphabet` from `seed` (xorshift).
fn value(seed: u64, len: usize, alphabet: &[u8]) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            alphabet[(x % alphabet.len() as u64) as usize]
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

/// Runs `sh -c program` with `V` set to the value.
fn run(program: &str, v: &[u8]) -> Vec<u8> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(program)
        .env("V", std::str::from_utf8(v).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{program} failed");
    out.stdout
}

/// The bytes the digit runs of `out` decode to: decimal (any zero padding up to 64 digits),
/// octal (3 digits), binary (8, 16, 24 … digits).
fn decoded(out: &[u8]) -> [Vec<u8>; 3] {
    let mut s: [Vec<u8>; 3] = Default::default();
    let text = String::from_utf8_lossy(out);
    for t in text.split(|c: char| !c.is_ascii_digit()) {
        if !t.is_empty()
            && t.len() <= 64
            && let Some(x) = t
                .trim_start_matches('0')
                .parse::<u64>()
                .ok()
                .or((t.bytes().all(|b| b == b'0')).then_some(0))
            && let Ok(x) = u8::try_from(x)
        {
            s[0].push(x);
        }
        if t.len() == 3
            && let Ok(x) = u8::from_str_radix(t, 8)
        {
            s[1].push(x);
        }
        if !t.is_empty() && t.len().is_multiple_of(8) && t.bytes().all(|b| b == b'0' || b == b'1') {
            for k in 0..t.len() / 8 {
                s[2].push(u8::from_str_radix(&t[8 * k..8 * k + 8], 2).unwrap());
            }
        }
    }
    s
}

/// Whether 4 bytes of `v` in a row decode from the digit runs of `out` in some radix.
fn shows(out: &[u8], v: &[u8]) -> bool {
    decoded(out)
        .iter()
        .any(|s| v.windows(4).any(|w| common::contains(s, w)))
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

/// `od -Ax -b` of `data` as if skipped to `start` (`od -j`): every offset from 0xa0 to 0xff
/// holds a hex letter.
fn od_hex_offsets(data: &[u8], start: usize, width: usize) -> Vec<u8> {
    let mut out = String::new();
    for (n, line) in data.chunks(width).enumerate() {
        out.push_str(&format!("{:06x}", start + n * width));
        for b in line {
            out.push_str(&format!(" {b:03o}"));
        }
        out.push('\n');
    }
    out.push_str(&format!("{:06x}\n", start + data.len()));
    out.into_bytes()
}

/// A dump whose first line's offset holds a hex letter, after a line that ends in digits:
/// a chunk that begins in those digits found an 8-digit word in the short run `12345678\n0000`
/// and went on after it, so its look-back never reached the dump line's start and the line was
/// skipped (one push, which tests other words, read it). Fixed: a short run that a hex letter
/// continues has its line decided. Every split into three pushes must equal one push.
#[test]
fn a_dump_after_a_line_ending_in_digits_is_read_at_every_split() {
    for (k, before) in [
        "size 12345678\n",
        "at 12:30:15 1234567\n",
        "x 1234567890123456\n",
        "\n12345678 87654321\n",
    ]
    .iter()
    .enumerate()
    {
        let v = value(k as u64 + 40, 20, ALNUM);
        let mut input = before.as_bytes().to_vec();
        input.extend(od_hex_offsets(&v, 0xa0, 16));
        let r = Redactor::new([("V", v.as_slice())]);
        let (one, _) = r.redact(&input);
        let what = format!("case {k}");
        assert!(common::contains(&one, b"[REDACTED:V]"), "{what}: no marker");
        assert!(!shows(&one, &v), "{what}: value decodes one-shot");
        for a in 0..input.len() {
            for b in [a + 1, a + 3, a + 7, a + 32] {
                let b = b.min(input.len());
                let mut s = r.stream();
                let mut out = Vec::new();
                for piece in [&input[..a], &input[a..b], &input[b..]] {
                    s.push(piece, &mut out);
                }
                s.finish(&mut out);
                assert!(
                    out == one,
                    "{what}: pushes split at {a} and {b} differ from one push"
                );
            }
        }
    }
}

/// The value as a decimal list at the start of a line: `sep`-joined, each byte `%0{pad}d`.
fn list(v: &[u8], pad: usize, sep: &str) -> String {
    v.iter()
        .map(|b| format!("{b:0pad$}"))
        .collect::<Vec<_>>()
        .join(sep)
}

/// A list the agent prints up to a pause, then on: the dump reader held the line's head
/// (undecided: fewer than 39 digits and separators in a row) and a pause let it out as it
/// was, 12 bytes of an upper-case value printed `65;75;…`, 9 of a `%03d` list; the reader,
/// woken by the rest, masked only what followed. Fixed: at a pause a held head is read as a
/// dump on a copy of the state, and shows at most 3 decoded bytes of a possible value, like
/// every other possible match. Paused at every offset of the line's first 48 bytes.
#[test]
fn a_list_held_at_a_pause_shows_at_most_three_bytes() {
    let mut cases: Vec<String> = Vec::new();
    for seed in 0..3u64 {
        let v = value(seed + 7, 24, UPPER);
        cases.push(format!("{}\n", list(&v, 0, ";")));
        cases.push(format!("{}\n", list(&v, 3, ";")));
        cases.push(format!("{}\n", list(&v, 3, ",")));
        cases.push(format!("{}\n", list(&v, 4, " ")));
    }
    for (i, line) in cases.iter().enumerate() {
        let v = value(i as u64 / 4 + 7, 24, UPPER);
        let r = Redactor::new([("V", v.as_slice())]);
        let mut input = b"listing\n".to_vec();
        input.extend_from_slice(line.as_bytes());
        input.extend_from_slice(b"done\n");
        for p in 9..(9 + 48).min(input.len()) {
            let mut s = r.stream();
            let mut out = Vec::new();
            s.push(&input[..p], &mut out);
            s.flush(&mut out);
            s.push(&input[p..], &mut out);
            s.finish(&mut out);
            assert!(
                !shows(&out, &v),
                "case {i}: paused after {p} bytes, 4 value bytes in a row decode"
            );
            assert!(
                common::contains(&out, b"done\n"),
                "case {i}: the line after the list was masked"
            );
        }
    }
}

/// What a pause shows of ordinary held heads (numbers, times, a table) is unchanged: the fix
/// above masks only a head whose decoded tail begins a value with 4 or more bytes.
#[test]
fn ordinary_heads_at_a_pause_are_shown_whole() {
    let v = value(3, 24, UPPER);
    let r = Redactor::new([("V", v.as_slice())]);
    for text in [
        "12:30:15 100 200 300 400",
        "2026 12 07 10 11 12 13 14",
        "065;075;073",
        "0000000 101 102 103 104",
        "1;2;3;4;5;6;7;8;9;10;11;12",
    ] {
        let mut s = r.stream();
        let mut out = Vec::new();
        s.push(b"step\n", &mut out);
        s.push(text.as_bytes(), &mut out);
        s.flush(&mut out);
        let mut want = b"step\n".to_vec();
        want.extend_from_slice(text.as_bytes());
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&want),
            "a pause changed ordinary output"
        );
    }
}

/// A zero-padded token of any length (`0000…065`) was read as a byte, and the reader held
/// back its stream's last units however far behind they lay: a program printing a list head
/// and then zeros (or separators, empty lines, a text column) without end had all of its
/// output held (memory as large as the output, nothing shown). Fixed: a token of more than 64
/// digits is read by no radix, and a stream whose last unit lies 1024 bytes back starts again
/// and holds nothing.
#[test]
fn a_long_zero_padded_token_is_not_held_back_whole() {
    let v = value(5, 20, ALNUM);
    let r = Redactor::new([("V", v.as_slice())]);
    let tails: [(&[u8], &[u8]); 5] = [
        (b"065 075 ", b"0"),
        (b"065 075", b","),
        (b"0000000 101 102\n", b"\n"),
        (b"0000000 101 102", b" "),
        (b"00000000: 01000001 01000010 01000011  ", b"x"),
    ];
    for (k, (head, fill)) in tails.iter().enumerate() {
        let mut input = head.to_vec();
        input.extend(fill.repeat(300_000));
        input.extend_from_slice(b" 085 095\n");
        for size in [4096, 1] {
            let mut s = r.stream();
            let mut out = Vec::new();
            for piece in input.chunks(size) {
                s.push(piece, &mut out);
            }
            let held = input.len() - out.len();
            assert!(
                held <= 8192,
                "case {k}, pushes of {size}: {held} bytes held back"
            );
            s.finish(&mut out);
            assert!(out == input, "case {k}: ordinary output changed");
        }
    }
    // A value matched in an `xxd -b` dump whose last line's text column runs on: its text column
    // is masked, and what follows is let out before the line ends.
    let mut input = Vec::new();
    for (n, c) in v.chunks(3).enumerate() {
        let bits: Vec<String> = c.iter().map(|b| format!("{b:08b}")).collect();
        let text: String = c.iter().map(|&b| b as char).collect();
        input.extend(format!("{:08x}: {:<26}  {text}", n * 3, bits.join(" ")).into_bytes());
        if (n + 1) * 3 < v.len() {
            input.push(b'\n');
        }
    }
    input.extend(b"x".repeat(300_000));
    input.push(b'\n');
    let mut s = r.stream();
    let mut out = Vec::new();
    for piece in input.chunks(4096) {
        s.push(piece, &mut out);
    }
    let held = input.len() - out.len().min(input.len());
    assert!(
        held <= 8192,
        "xxd with a long text column: {held} bytes held back"
    );
    s.finish(&mut out);
    let one = redacted(&r, &input, "xxd with a long text column");
    assert!(out == one, "xxd with a long text column: streamed differs");
    assert!(common::contains(&one, b"[REDACTED:V]"), "xxd: no marker");
    assert!(!shows(&one, &v), "xxd: value decodes");
    assert!(
        common::leaked_window(&one, &v).is_none(),
        "xxd: text column shown"
    );
    // Padded past an offset's 16 digits, up to 64: still a list (a first token of more than 16
    // digits once rejected the line: `%020d` lists were shown whole).
    for (pad, sep) in [(17, ";"), (20, " "), (32, ","), (64, " ")] {
        let line = format!("{}\n", list(&v, pad, sep));
        let what = format!("%0{pad}d list");
        let out = redacted(&r, line.as_bytes(), &what);
        assert!(common::contains(&out, b"[REDACTED:V]"), "{what}: no marker");
        assert!(!shows(&out, &v), "{what}: value decodes");
    }
}

/// Narrow dumps whose every line offset holds a hex letter: the letter breaks the run of 39
/// digits and separators that wakes the reader (the offset `0000000c:` leaves 37 in an
/// `xxd -b -c 3` line; `0000a0` leaves 18 in an `od -w4` line), so the reader never wakes, or
/// wakes lines after the value began (`xxd -s 12`: the first two lines), and the whole value
/// is shown in base 2 or octal. `xxd -s` and `od -Ax` are documented as read.
#[test]
fn narrow_dumps_with_hex_letters_in_their_offsets_are_redacted() {
    let cases = [
        ("xxd", "printf 'abcdefghijkl%s' \"$V\" | xxd -b -c 3 -s 12"),
        ("xxd", "printf %s \"$V\" | xxd -b -c 3 -o 0xa0000000"),
        ("xxd", "printf %s \"$V\" | xxd -b -c 4 -g 2 -o 0xaaaaaaa0"),
        ("od", "printf '%0160d%s' 0 \"$V\" | od -v -Ax -j 160 -b -w4"),
        (
            "od",
            "printf '%0160d%s' 0 \"$V\" | od -v -Ax -j 160 -to1 -w1",
        ),
    ];
    let mut failed = Vec::new();
    for (i, (needs, program)) in cases.iter().enumerate() {
        if !tool(needs) {
            continue;
        }
        let v = value(i as u64 + 11, 20, ALNUM);
        let raw = run(program, &v);
        assert!(shows(&raw, &v), "case {i}: the dump holds no value");
        let r = Redactor::new([("V", v.as_slice())]);
        if shows(&redacted(&r, &raw, program), &v) {
            failed.push(*program);
        }
    }
    assert!(failed.is_empty(), "value shown by: {failed:?}");
}

/// `xxd -b -c 3` with groups of 2 or 3 bytes (`-g 2`, `-g 3`): one space fewer per group, 38
/// and 37 digits and separators before the text column, under the 39 that wake the reader.
#[test]
fn grouped_narrow_xxd_dumps_are_redacted() {
    if !tool("xxd") {
        return;
    }
    let mut failed = Vec::new();
    for (i, program) in [
        "printf %s \"$V\" | xxd -b -c 3 -g 2",
        "printf %s \"$V\" | xxd -b -c 3 -g 3",
    ]
    .iter()
    .enumerate()
    {
        let v = value(i as u64 + 21, 20, ALNUM);
        let raw = run(program, &v);
        let r = Redactor::new([("V", v.as_slice())]);
        if shows(&redacted(&r, &raw, program), &v) {
            failed.push(*program);
        }
    }
    assert!(failed.is_empty(), "value shown by: {failed:?}");
}

/// Zero-padded lists the reader is not said to read (`docs/redaction.md` §5): joined by `|`
/// or `:`, inside brackets, and `hexdump` lines with a short decimal offset (`%_ad`: `0`, `8`,
/// `16`: read as list bytes that break the value).
#[test]
fn zero_padded_lists_in_other_shapes_are_redacted() {
    let v = value(31, 20, ALNUM);
    let r = Redactor::new([("V", v.as_slice())]);
    let mut failed = Vec::new();
    for (i, text) in [
        format!("{}\n", list(&v, 3, "|")),
        format!("{}\n", list(&v, 3, ":")),
        format!("[{}]\n", list(&v, 3, ", ")),
        v.chunks(8)
            .enumerate()
            .map(|(n, c)| format!("{} {}\n", n * 8, list(c, 3, " ")))
            .collect::<String>(),
    ]
    .iter()
    .enumerate()
    {
        if shows(&redacted(&r, text.as_bytes(), "list"), &v) {
            failed.push(i);
        }
    }
    assert!(failed.is_empty(), "value shown by cases {failed:?}");
}

/// Dump and list shapes the reader does read, split at every offset into two pushes, with CRLF
/// line ends, offsets of every radix, one number a line, and a dump pushed one byte at a time:
/// every split equals one push, and no 4 value bytes in a row decode. Held.
#[test]
fn read_shapes_split_at_every_offset_stay_masked() {
    let v = value(9, 16, ALNUM);
    let r = Redactor::new([("V", v.as_slice())]);
    let mut shapes: Vec<String> = Vec::new();
    // `xxd -b -c 3` with CRLF line ends.
    shapes.push(
        v.chunks(3)
            .enumerate()
            .map(|(n, c)| {
                let bits: Vec<String> = c.iter().map(|b| format!("{b:08b}")).collect();
                let text: String = c.iter().map(|&b| b as char).collect();
                format!("{:08x}: {:<26}  {text}\r\n", n * 3, bits.join(" "))
            })
            .collect(),
    );
    // `od -Ad -tu1 -w2`, `od -Ao -b -w1`.
    shapes.push(
        v.chunks(2)
            .enumerate()
            .map(|(n, c)| {
                let t: Vec<String> = c.iter().map(|b| format!("{b:3}")).collect();
                format!("{:07} {}\n", n * 2, t.join(" "))
            })
            .collect(),
    );
    shapes.push(
        v.iter()
            .enumerate()
            .map(|(n, b)| format!("{n:07o} {b:03o}\n"))
            .collect(),
    );
    // One number a line, `%05d`, CRLF.
    shapes.push(v.iter().map(|b| format!("{b:05}\r\n")).collect());
    // A list of `;`, `, ` and tabs.
    shapes.push(format!("{}\n", list(&v, 3, "; ")));
    shapes.push(format!("{}\n", list(&v, 2, "\t")));
    for (i, shape) in shapes.iter().enumerate() {
        let mut input = b"out:\n".to_vec();
        input.extend_from_slice(shape.as_bytes());
        input.extend_from_slice(b"end\n");
        let what = format!("shape {i}");
        let one = redacted(&r, &input, &what);
        assert!(common::contains(&one, b"[REDACTED:V]"), "{what}: no marker");
        assert!(!shows(&one, &v), "{what}: value decodes");
        for a in 1..input.len() {
            let mut s = r.stream();
            let mut out = Vec::new();
            s.push(&input[..a], &mut out);
            s.push(&input[a..], &mut out);
            s.finish(&mut out);
            assert!(out == one, "{what}: split at {a} differs from one push");
        }
    }
}

/// A dump and a list the reader reads, pushed a few bytes at a time with a pause after every
/// push (the relay's 200 ms quiet): at most 3 value bytes in a row decode from what the pauses
/// let out, for every piece size from 1 to 9 bytes. Held.
#[test]
fn dumps_paused_after_every_piece_show_at_most_three_bytes() {
    let v = value(17, 20, UPPER);
    let r = Redactor::new([("V", v.as_slice())]);
    let od: String = v
        .chunks(3)
        .enumerate()
        .map(|(n, c)| {
            let t: Vec<String> = c.iter().map(|b| format!("{b:03o}")).collect();
            format!("{:07o} {}\n", n * 3, t.join(" "))
        })
        .collect();
    let xxd: String = v
        .chunks(3)
        .enumerate()
        .map(|(n, c)| {
            let bits: Vec<String> = c.iter().map(|b| format!("{b:08b}")).collect();
            let text: String = c.iter().map(|&b| b as char).collect();
            format!("{:08x}: {:<26}  {text}\n", n * 3, bits.join(" "))
        })
        .collect();
    for (i, shape) in [
        od,
        xxd,
        format!("{}\n", list(&v, 0, ";")),
        format!("{}\n", list(&v, 5, ", ")),
    ]
    .iter()
    .enumerate()
    {
        let mut input = b"start\n".to_vec();
        input.extend_from_slice(shape.as_bytes());
        for size in 1..=9 {
            let mut s = r.stream();
            let mut out = Vec::new();
            for piece in input.chunks(size) {
                s.push(piece, &mut out);
                s.flush(&mut out);
            }
            s.finish(&mut out);
            assert!(
                !shows(&out, &v),
                "shape {i}, pieces of {size}: 4 value bytes in a row decode"
            );
            assert!(
                common::leaked_window(&out, &v).is_none(),
                "shape {i}, pieces of {size}: text column shown"
            );
        }
    }
}

/// A decimal list in other digits (fullwidth `０６５`, Arabic-Indic `٠٦٥`) or with its
/// separators escaped (`065&#59;075`, `065\x3b075`): each a double encoding (`docs/redaction.md`
/// §5: digits NFKC folds and escapes are read as characters of the value, not of a list).
#[test]
fn lists_in_other_digits_or_with_escaped_separators_are_redacted() {
    let v = value(41, 20, ALNUM);
    let r = Redactor::new([("V", v.as_slice())]);
    let digits = |zero: char| -> String {
        v.iter()
            .map(|b| {
                format!("{b:03}")
                    .chars()
                    .map(|c| char::from_u32(zero as u32 + c.to_digit(10).unwrap()).unwrap())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut failed = Vec::new();
    for (i, text) in [
        digits('\u{FF10}'),
        digits('\u{0660}'),
        list(&v, 3, "&#59;"),
        list(&v, 3, "\\x3b"),
    ]
    .iter()
    .enumerate()
    {
        let out = redacted(&r, format!("{text}\n").as_bytes(), "list");
        // Fold the digits back to ASCII and the escapes back to `;` before decoding.
        let folded: String = String::from_utf8_lossy(&out)
            .chars()
            .map(|c| match c {
                '\u{FF10}'..='\u{FF19}' => char::from_u32(c as u32 - 0xFF10 + 48).unwrap(),
                '\u{0660}'..='\u{0669}' => char::from_u32(c as u32 - 0x0660 + 48).unwrap(),
                _ => c,
            })
            .collect::<String>()
            .replace("&#59;", ";")
            .replace("\\x3b", ";");
        if shows(folded.as_bytes(), &v) {
            failed.push(i);
        }
    }
    assert!(failed.is_empty(), "value shown by cases {failed:?}");
}

/// Redacts each program's output (run with a fresh value) and names those whose output still
/// decodes 4 value bytes in a row (after `fold`); skips programs whose tool is missing, and
/// checks that the raw output did show the value.
fn leaks_of(cases: &[(&str, &str)], seed: u64, fold: &dyn Fn(&[u8]) -> Vec<u8>) -> Vec<String> {
    let mut failed = Vec::new();
    for (i, (needs, program)) in cases.iter().enumerate() {
        if !tool(needs) {
            continue;
        }
        let v = value(seed + i as u64, 20, ALNUM);
        let raw = run(program, &v);
        assert!(
            shows(&fold(&raw), &v),
            "{program}: the output holds no value"
        );
        let r = Redactor::new([("V", v.as_slice())]);
        let out = redacted(&r, &raw, program);
        if shows(&fold(&out), &v) {
            failed.push((*program).to_string());
        }
    }
    failed
}

/// More narrow dumps whose offsets hold hex letters, with other tools, widths and radices than
/// the case above: `od -tu1 -w5` past offset 0xfa, an `xxd -b` offset with letters inside
/// (`000beef0:`), `hexdump -e` with a six-digit hex offset and two octal bytes a line, and
/// `od -Ax -to1 -w2` at an offset whose every line holds a letter.
#[test]
fn more_narrow_dumps_with_hex_letters_in_their_offsets_are_redacted() {
    let cases = [
        (
            "od",
            "printf '%0250d%s' 0 \"$V\" | od -v -Ax -j 250 -tu1 -w5",
        ),
        ("xxd", "printf %s \"$V\" | xxd -b -c 3 -o 0xbeef0"),
        (
            "hexdump",
            "printf %s \"$V\" | hexdump -v -e '\"%06.6_ax  \" 2/1 \"%03o \" \"\\n\"'",
        ),
        (
            "od",
            "printf '%0170d%s' 0 \"$V\" | od -v -Ax -j 170 -to1 -w2",
        ),
    ];
    let failed = leaks_of(&cases, 61, &|b| b.to_vec());
    assert!(failed.is_empty(), "value shown by: {failed:?}");
}

/// More grouped narrow `xxd -b` dumps: `-g 3` after a skip (hex offsets too), `-g 2` at a
/// hex origin, `-g 4` (one group wider than the line).
#[test]
fn more_grouped_narrow_xxd_dumps_are_redacted() {
    let cases = [
        (
            "xxd",
            "printf 'abcdefghijkl%s' \"$V\" | xxd -b -c 3 -g 3 -s 12",
        ),
        ("xxd", "printf %s \"$V\" | xxd -b -c 3 -g 2 -o 0xa0"),
        ("xxd", "printf %s \"$V\" | xxd -b -c 3 -g 4"),
    ];
    let failed = leaks_of(&cases, 71, &|b| b.to_vec());
    assert!(failed.is_empty(), "value shown by: {failed:?}");
}

/// More zero-padded lists in other shapes: braces and `%04d`, parentheses and spaces,
/// `hexdump -e` with a short hex offset (`c`) and `|`-joined bytes, `%04d` joined by `:`
/// (the first token looks like an `xxd` offset), and a table row (`| 065 | 075 |`).
#[test]
fn more_zero_padded_lists_in_other_shapes_are_redacted() {
    let v = value(81, 20, ALNUM);
    let r = Redactor::new([("V", v.as_slice())]);
    let mut failed = Vec::new();
    for (i, text) in [
        format!("{{{}}}\n", list(&v, 4, ",")),
        format!("({})\n", list(&v, 3, " ")),
        format!("{}\n", list(&v, 4, ":")),
        format!("| {} |\n", list(&v, 3, " | ")),
    ]
    .iter()
    .enumerate()
    {
        if shows(&redacted(&r, text.as_bytes(), "list"), &v) {
            failed.push(i.to_string());
        }
    }
    failed.extend(leaks_of(
        &[(
            "hexdump",
            "printf %s \"$V\" | hexdump -v -e '\"%_ax \" 6/1 \"%03u|\" \"\\n\"'",
        )],
        91,
        &|b| b.to_vec(),
    ));
    assert!(failed.is_empty(), "value shown by cases {failed:?}");
}

/// `text` with the digits of the scripts used below folded to ASCII and the escapes below
/// written back as `;`.
fn fold_digits(out: &[u8]) -> Vec<u8> {
    const ZEROS: [u32; 6] = [0xFF10, 0x0660, 0x06F0, 0x0966, 0x1D7CE, 0x0E50];
    String::from_utf8_lossy(out)
        .chars()
        .map(|c| {
            ZEROS
                .iter()
                .find(|&&z| (c as u32).wrapping_sub(z) < 10)
                .map_or(c, |&z| char::from_u32(c as u32 - z + 48).unwrap())
        })
        .collect::<String>()
        .replace("%2C", ";")
        .replace("\\u002c", ";")
        .replace("&comma;", ";")
        .replace("\\073", ";")
        .replace("\\t", ";")
        .into_bytes()
}

/// More lists in other digits or with escaped separators: extended Arabic-Indic digits joined
/// by the Arabic comma, Devanagari and Thai digits with spaces, mathematical bold digits with
/// `,`, fullwidth digits joined by the fullwidth comma; separators percent-encoded (`%2C`),
/// JSON-escaped (`\u002c`), named (`&comma;`), in C octal (`\073`), and a tab printed `\t`
/// (`repr` of a tab-joined list).
#[test]
fn more_lists_in_other_digits_or_with_escaped_separators_are_redacted() {
    let v = value(101, 20, ALNUM);
    let r = Redactor::new([("V", v.as_slice())]);
    let digits = |zero: u32, sep: &str| -> String {
        v.iter()
            .map(|b| {
                format!("{b:03}")
                    .chars()
                    .map(|c| char::from_u32(zero + c.to_digit(10).unwrap()).unwrap())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join(sep)
    };
    let mut failed = Vec::new();
    for (i, text) in [
        digits(0x06F0, "\u{060C}"),
        digits(0x0966, " "),
        digits(0x0E50, " "),
        digits(0x1D7CE, ","),
        digits(0xFF10, "\u{FF0C}"),
        list(&v, 3, "%2C"),
        list(&v, 3, "\\u002c"),
        list(&v, 3, "&comma;"),
        list(&v, 3, "\\073"),
        format!("'{}'", list(&v, 3, "\\t")),
    ]
    .iter()
    .enumerate()
    {
        let out = redacted(&r, format!("{text}\n").as_bytes(), "list");
        assert!(
            shows(&fold_digits(text.as_bytes()), &v),
            "case {i}: the list holds no value"
        );
        if shows(&fold_digits(&out), &v) {
            failed.push(i);
        }
    }
    assert!(failed.is_empty(), "value shown by cases {failed:?}");
}

/// Ordinary output in the shapes the reader now reads (offsets with hex letters, brackets,
/// `|` and `:`, other scripts' digits and spaces, escapes) is left exactly as it was, one-shot,
/// byte by byte, in uneven chunks and with a pause after every line, and so is an `xxd -b`
/// dump of other bytes at a hex offset.
#[test]
fn ordinary_output_in_the_new_shapes_is_kept() {
    let v = value(111, 20, ALNUM);
    let r = Redactor::new([("V", v.as_slice())]);
    let mut text = String::new();
    for line in [
        "[2026, 12, 07, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]",
        "{001,002,003,004,005,006,007,008,009,010,011,012,013,014,015}",
        "| 001 | 002 | 003 | 004 | 005 | 006 | 007 | 008 | 009 | 010 |",
        "0001:0002:0003:0004:0005:0006:0007:0008:0009:0010:0011:0012",
        "cafe 0123 4567 8901 2345 6789 0123 4567 8901 2345 6789 0123",
        "deadbeef: 00110001 00110010 00110011 00110100 00110101  12345",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  -",
        "合計：１２３，４５６　円 ٠٦٥ ٠٧٥ ١٠٠ ۱۲۳ ०१२",
        "a=1&b=2&c=%20%2C%3B&d=\\x3b\\u002c&#59;&amp;&nbsp; 100% done",
        "065&#59;066&#59;067 \\x41\\x42 %41%42",
    ] {
        text.push_str(line);
        text.push('\n');
    }
    let raw = run(
        "printf 'ordinary bytes, not the value' | xxd -b -c 3 -o 0xa0",
        &v,
    );
    let mut input = text.into_bytes();
    input.extend_from_slice(&raw);
    let out = redacted(&r, &input, "ordinary");
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&input),
        "ordinary output changed"
    );
    let mut s = r.stream();
    let mut paused = Vec::new();
    for line in input.split_inclusive(|&b| b == b'\n') {
        s.push(line, &mut paused);
        s.flush(&mut paused);
    }
    s.finish(&mut paused);
    assert_eq!(
        String::from_utf8_lossy(&paused),
        String::from_utf8_lossy(&input),
        "a pause changed ordinary output"
    );
}
