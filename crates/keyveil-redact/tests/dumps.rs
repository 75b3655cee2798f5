//! Base-2 forms and byte dumps of a value printed by the real tools (issue 15 §7): `xxd -b`
//! (`-c N`, `-g N`), `od -b`, `od -to1`, `hexdump -b`, `od -tu1` with and without offsets,
//! `basenc --base2msbf/--base2lsbf`, Perl `unpack`, Python `format`/`bin`/`list`, Node
//! `toString(2)`, `Uint8Array` and `Buffer`. Values are generated at test time; each program
//! gets its value in the environment (`V`) and prints some other bytes before and after it, so
//! the value starts at every offset within a dump line. Each output is redacted one-shot, one
//! byte per push and in uneven chunks (all three must agree), then searched for what is left of
//! the value: by the tool's own encoding, decoded back token by token, and in text columns.
//! Failures name the case and seed, never the value.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use keyveil_redact::Redactor;
use std::process::Command;

/// A random-looking alphanumeric value of `len` bytes from `seed` (xorshift).
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

/// Runs `sh -c program` with `V` (and `PRE`, bytes printed before the value) set.
fn run(program: &str, v: &[u8], pre: &str) -> Option<Vec<u8>> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(program)
        .env("V", std::str::from_utf8(v).unwrap())
        .env("PRE", pre)
        .output()
        .ok()?;
    out.status.success().then_some(out.stdout)
}

fn tool(name: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name} >/dev/null"))
        .status()
        .is_ok_and(|s| s.success())
}

/// Redacted one-shot, bytewise and in chunks of 1 to 13 bytes; all must agree.
fn redacted(r: &Redactor, input: &[u8], what: &str) -> Vec<u8> {
    let (one, _) = r.redact(input);
    let bytewise = common::stream_bytewise(r, input);
    let (chunked, _) = common::stream_in(r, input, &[7, 1, 13, 2, 64, 5]);
    assert!(one == bytewise, "{what}: one-shot and bytewise differ");
    assert!(one == chunked, "{what}: one-shot and chunked differ");
    one
}

/// The bytes that the whitespace-separated tokens of `out` decode to, per radix: 8 binary
/// digits a byte (also 16, 24 ... digits), 3 octal digits, 1 to 3 decimal digits, 2 hex
/// digits. Other tokens are skipped.
fn decoded_streams(out: &[u8]) -> [Vec<u8>; 4] {
    let mut s: [Vec<u8>; 4] = Default::default();
    let text = String::from_utf8_lossy(out);
    for tok in text.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']') {
        let t = tok.trim_end_matches(':');
        if !t.is_empty() && t.len() % 8 == 0 && t.bytes().all(|b| b == b'0' || b == b'1') {
            for k in 0..t.len() / 8 {
                s[0].push(u8::from_str_radix(&t[8 * k..8 * k + 8], 2).unwrap());
            }
        }
        if t.len() == 3
            && let Ok(x) = u8::from_str_radix(t, 8)
        {
            s[1].push(x);
        }
        if (1..=3).contains(&t.len())
            && t.bytes().all(|b| b.is_ascii_digit())
            && let Ok(x) = t.parse::<u8>()
        {
            s[2].push(x);
        }
        if t.len() == 2
            && let Ok(x) = u8::from_str_radix(t, 16)
        {
            s[3].push(x);
        }
    }
    s
}

/// The text columns of a dump (what follows the last two spaces of each line), joined.
fn text_columns(out: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| l.rsplit_once("  ").map(|(_, t)| t.to_owned()))
        .collect::<String>()
        .into_bytes()
}

/// Whether any `n`-byte window of `v` occurs in `hay`.
fn has_window(hay: &[u8], v: &[u8], n: usize) -> bool {
    v.windows(n).any(|w| common::contains(hay, w))
}

/// Dumps with line offsets (and without): after redaction no 4 bytes of the value in a row
/// decode from any radix, no 4 in a row are left in the text columns, no 12 raw.
#[test]
fn dumps_of_a_value_are_redacted() {
    let cases: &[(&str, &str)] = &[
        ("xxd", "printf '%s%s' \"$PRE\" \"$V\" | xxd -b"),
        ("xxd", "printf '%s%s--' \"$PRE\" \"$V\" | xxd -b -c 4"),
        ("xxd", "printf '%s%s' \"$PRE\" \"$V\" | xxd -b -c 8"),
        ("xxd", "printf '%s%s' \"$PRE\" \"$V\" | xxd -b -c 5"),
        ("xxd", "printf '%s%s' \"$PRE\" \"$V\" | xxd -b -c 12 -g 2"),
        (
            "xxd",
            "printf 'x\\n%s%s\\ny\\n' \"$PRE\" \"$V\" | xxd -b -s 1",
        ),
        ("od", "printf '%s%s' \"$PRE\" \"$V\" | od -b"),
        ("od", "printf '%s%s..' \"$PRE\" \"$V\" | od -to1 -Ax"),
        ("od", "printf '%s%s' \"$PRE\" \"$V\" | od -An -b"),
        ("od", "printf '%s%s' \"$PRE\" \"$V\" | od -An -to1 -w8"),
        ("od", "printf '%s%s' \"$PRE\" \"$V\" | od -tu1"),
        ("od", "printf '%s%s' \"$PRE\" \"$V\" | od -tu1 -Ad -w10"),
        ("od", "printf '%s%s' \"$PRE\" \"$V\" | od -An -tu1"),
        ("hexdump", "printf '%s%s' \"$PRE\" \"$V\" | hexdump -b"),
        (
            "python3",
            "python3 -c 'import os; print(list(os.environ[\"V\"].encode()))'",
        ),
        (
            "python3",
            "python3 -c 'import os; print(*os.environ[\"V\"].encode())'",
        ),
        (
            "node",
            "node -e 'console.log(new Uint8Array(Buffer.from(process.env.V)))'",
        ),
        ("node", "node -e 'console.log(Buffer.from(process.env.V))'"),
        (
            "node",
            "node -e 'console.log(JSON.stringify([...Buffer.from(process.env.V)]))'",
        ),
    ];
    let mut ran = 0;
    for (i, (needs, program)) in cases.iter().enumerate() {
        if !tool(needs) {
            continue;
        }
        for seed in 0..6u64 {
            let len = [9, 16, 23, 32, 40, 47][seed as usize];
            let v = value(seed * 31 + i as u64, len);
            let pre = &"0123456789abcdef"[..(seed as usize * 3 + i) % 13];
            let Some(raw) = run(program, &v, pre) else {
                panic!("case {i} ({program}) did not run");
            };
            ran += 1;
            let r = Redactor::new([("V", v.as_slice())]);
            let what = format!("case {i} ({program}), seed {seed}");
            let out = redacted(&r, &raw, &what);
            assert!(common::contains(&out, b"[REDACTED:V]"), "{what}: no marker");
            assert!(
                common::leaked_window(&out, &v).is_none(),
                "{what}: 12 raw bytes left"
            );
            for (radix, s) in decoded_streams(&out).iter().enumerate() {
                assert!(
                    !has_window(s, &v, 4),
                    "{what}: 4 value bytes in a row decode in radix #{radix}"
                );
            }
            assert!(
                !has_window(&text_columns(&out), &v, 4),
                "{what}: 4 value bytes in a row left in the text columns"
            );
        }
    }
    assert!(ran > 0, "no dump tool here");
}

/// The base-2 cases: (tool, program, registered). Unregistered ones are the ignored `LEAK` test
/// below (`docs/redaction.md` §5).
fn base2_cases() -> Vec<(&'static str, String, bool)> {
    let py = |expr: &str| {
        format!(
            "python3 -c 'import os,json; v=os.environ[\"V\"].encode(); print(\"bits:\", {expr}, \"end\")'"
        )
    };
    vec![
        ("python3", py("\"\".join(f\"{b:08b}\" for b in v)"), true),
        ("python3", py("\" \".join(f\"{b:08b}\" for b in v)"), true),
        ("python3", py("\",\".join(format(b, \"08b\") for b in v)"), true),
        ("python3", py("\", \".join(format(b, \"08b\") for b in v)"), true),
        ("python3", py("\"\\n\".join(format(b, \"08b\") for b in v)"), true),
        ("python3", py("[format(b, \"08b\") for b in v]"), true),
        ("python3", py("[bin(b) for b in v]"), true),
        ("python3", py("\" \".join(bin(b) for b in v)"), true),
        ("python3", py("bin(int.from_bytes(v, \"big\"))"), true),
        (
            "perl",
            "perl -e 'print \"bits: \", unpack(\"B*\", $ENV{V}), \" end\\n\"'".into(),
            true,
        ),
        ("basenc", "printf %s \"$V\" | basenc --base2msbf".into(), true),
        (
            "node",
            "node -e 'console.log(\"bits:\", [...Buffer.from(process.env.V)].map(b => b.toString(2).padStart(8, \"0\")).join(\" \"), \"end\")'".into(),
            true,
        ),
        ("python3", py("\"_\".join(format(b, \"08b\") for b in v)"), false),
        ("python3", py("json.dumps([format(b, \"08b\") for b in v])"), false),
        ("python3", py("\",\".join(bin(b) for b in v)"), false),
        ("python3", py("\" \".join(f\"{b:#010b}\" for b in v)"), false),
        (
            "perl",
            "perl -e 'print \"bits: \", unpack(\"b*\", $ENV{V}), \" end\\n\"'".into(),
            false,
        ),
        ("basenc", "printf %s \"$V\" | basenc --base2lsbf".into(), false),
    ]
}

/// Checks the base-2 cases that are `registered` (or not): after redaction no 16 binary
/// digits in a row (separators between them allowed) are left.
fn check_base2(registered: bool) {
    let mut ran = 0;
    for (i, (needs, program, reg)) in base2_cases().into_iter().enumerate() {
        if reg != registered || !tool(needs) {
            continue;
        }
        for seed in 0..4u64 {
            let len = [8, 13, 32, 61][seed as usize];
            let v = value(seed * 17 + i as u64 + 1000, len);
            let Some(raw) = run(&program, &v, "") else {
                panic!("case {i} ({program}) did not run");
            };
            ran += 1;
            let r = Redactor::new([("V", v.as_slice())]);
            let what = format!("case {i} ({program}), seed {seed}");
            let out = redacted(&r, &raw, &what);
            assert!(common::contains(&out, b"[REDACTED:V]"), "{what}: no marker");
            let longest = out
                .split(|b| !b"01_,'\"b \n".contains(b))
                .map(|run| run.iter().filter(|&&b| b == b'0' || b == b'1').count())
                .max()
                .unwrap_or(0);
            assert!(
                longest < 16,
                "{what}: {longest} binary digits in a row left"
            );
        }
    }
    assert!(ran > 0, "no tool here");
}

/// Base-2 forms without offsets (whitespace, `,`, Python lists, `0b` prefixes, `int.from_bytes`)
/// are caught.
#[test]
fn base2_forms_of_a_value_are_redacted() {
    check_base2(true);
}

/// Separators and spellings of base 2 that are not registered (`_`, JSON lists, `bin()` joined
/// by `,`, `0b` with 8 digits, least significant bit first).
#[test]
#[ignore = "LIMIT (docs/redaction.md §5, base-2 spellings not registered: each costs a pattern 8 to 10 times the value's length, up to 13 % of throughput): base 2 joined by `_`, JSON lists, `0b` + 8 digits and LSB-first are not registered"]
fn unregistered_base2_forms_of_a_value_are_redacted() {
    check_base2(false);
}

/// A dump is held back only while it could still be a value: a pause (`flush`) shows at most
/// 3 decoded bytes of a value in a row, and the value's dump is masked when it completes.
#[test]
fn a_dump_printed_a_line_at_a_time_with_pauses_shows_no_value() {
    if !tool("xxd") {
        return;
    }
    for seed in 0..4u64 {
        let v = value(seed + 500, 24 + seed as usize * 5);
        let raw = run("printf 'ab%s' \"$V\" | xxd -b -c 4", &v, "").unwrap();
        let r = Redactor::new([("V", v.as_slice())]);
        let mut s = r.stream();
        let mut out = Vec::new();
        for line in raw.split_inclusive(|&b| b == b'\n') {
            s.push(line, &mut out);
            s.flush(&mut out);
        }
        s.finish(&mut out);
        for (radix, d) in decoded_streams(&out).iter().enumerate() {
            assert!(
                !has_window(d, &v, 4),
                "seed {seed}: 4 value bytes in a row decode in radix #{radix} after pauses"
            );
        }
        assert!(
            !has_window(&text_columns(&out), &v, 4),
            "seed {seed}: 4 value bytes in a row in the text columns after pauses"
        );
    }
}

/// Ordinary dumps and number-heavy output are left exactly as they are.
#[test]
fn ordinary_dumps_are_kept() {
    let v = value(9, 32);
    let r = Redactor::new([("V", v.as_slice())]);
    let mut text = String::new();
    for line in 0..40u32 {
        text.push_str(&format!(
            "{:08x}: 01100001 01100010 01100011 00110001 00110010 00110011  abc123\n",
            line * 6
        ));
        text.push_str(&format!("{:07o} 141 142 143 061 062 063\n", line * 16));
        text.push_str("2026-12-07 10:00:00 1000 0100 0010 0001 100 200 255 7 8 9\n");
    }
    let out = redacted(&r, text.as_bytes(), "ordinary dump");
    assert!(out == text.as_bytes(), "an ordinary dump changed");
}

/// Every maximal run of ASCII digits in `out` (any length: zero padding) that is a byte.
fn padded_decimal(out: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(out)
        .split(|c: char| !c.is_ascii_digit())
        .filter(|t| !t.is_empty() && t.len() <= 12)
        .filter_map(|t| t.parse::<u64>().ok())
        .filter_map(|x| u8::try_from(x).ok())
        .collect()
}

/// Narrow dumps with line offsets, down to one byte a line: the lines of a dump without a
/// text column (`od`) form one run of digits, spaces and line feeds, which wakes the dump
/// reader at the dump's first line; `xxd -b -c 3` has 38 such bytes before its text column.
#[test]
fn a_narrow_dump_of_a_value_is_redacted() {
    let mut cases: Vec<(&str, String)> = vec![
        ("xxd", "printf '%s%s' \"$PRE\" \"$V\" | xxd -b -c 3".into()),
        (
            "od",
            "printf '%s%s' \"$PRE\" \"$V\" | od -v -to1 -Ax -w3".into(),
        ),
        (
            "od",
            "printf '%s%s' \"$PRE\" \"$V\" | od -v -tu1 -Ad -w2".into(),
        ),
        (
            "od",
            "printf 'ab\\n%s%s' \"$PRE\" \"$V\" | od -v -b -w5".into(),
        ),
    ];
    for w in 1..=7 {
        // `-v`: without it `od` prints a line equal to the one before as `*` (a limit,
        // `docs/redaction.md` §5).
        cases.push((
            "od",
            format!("printf '%s%s' \"$PRE\" \"$V\" | od -v -b -w{w}"),
        ));
        cases.push((
            "od",
            format!("printf '%s%s' \"$PRE\" \"$V\" | od -v -tu1 -w{w}"),
        ));
    }
    let mut ran = 0;
    for (i, (needs, program)) in cases.iter().enumerate() {
        if !tool(needs) {
            continue;
        }
        for seed in 0..3u64 {
            let v = value(seed * 131 + i as u64 + 7, [10, 19, 32][seed as usize]);
            let pre = &"0123456789"[..(seed as usize + i) % 7];
            let raw = run(program, &v, pre).unwrap();
            ran += 1;
            let r = Redactor::new([("V", v.as_slice())]);
            let what = format!("case {i} ({program}), seed {seed}");
            let out = redacted(&r, &raw, &what);
            assert!(common::contains(&out, b"[REDACTED:V]"), "{what}: no marker");
            for (radix, s) in decoded_streams(&out).iter().enumerate() {
                assert!(
                    !has_window(s, &v, 4),
                    "{what}: 4 value bytes in a row decode in radix #{radix}"
                );
            }
            assert!(
                !has_window(&text_columns(&out), &v, 4),
                "{what}: 4 value bytes in a row left in the text columns"
            );
        }
    }
    assert!(ran > 0, "no dump tool here");
}

/// `xxd -b -c 1` and `-c 2`: 20 and 29 bytes of offset and digits before each line's text
/// column, too few for the trigger (`docs/redaction.md` §5).
#[test]
#[ignore = "LIMIT (docs/redaction.md §5, byte dumps the dump reader does not read: waking at narrower runs costs 10 to 20 % of throughput): `xxd -b -c 1` and `-c 2` lines are too narrow to wake the dump reader"]
fn the_narrowest_xxd_dumps_of_a_value_are_redacted() {
    for program in [
        "printf %s \"$V\" | xxd -b -c 1",
        "printf %s \"$V\" | xxd -b -c 2",
    ] {
        if !tool("xxd") {
            return;
        }
        let v = value(77, 32);
        let raw = run(program, &v, "").unwrap();
        let r = Redactor::new([("V", v.as_slice())]);
        let out = redacted(&r, &raw, program);
        assert!(
            !has_window(&decoded_streams(&out)[0], &v, 4),
            "{program}: 4 value bytes in a row decode"
        );
    }
}

/// Decimal byte lists with any zero padding (`%03d`, `%04d`, `%05d`) and separator (space,
/// `,`, `, `, `;`, tab, line feed, two spaces), printed at the start of a line by Perl, Python
/// and `hexdump` (with offsets too): after redaction no 4 value bytes in a row decode from the
/// digit runs of the output.
#[test]
fn zero_padded_decimal_byte_lists_are_redacted() {
    let mut cases: Vec<(&str, String)> = Vec::new();
    for (w, sep) in [
        (3, " "),
        (3, ","),
        (3, ", "),
        (3, ";"),
        (3, "\\t"),
        (3, "\\n"),
        (4, " "),
        (5, "  "),
        (4, ","),
        (6, "\\n"),
    ] {
        cases.push((
            "perl",
            format!(
                "printf 'first line\\n'; perl -e 'print join(\"{sep}\", map {{ sprintf \"%0{w}d\", $_ }} unpack(\"C*\", $ENV{{V}})), \"\\n\"'; echo last"
            ),
        ));
    }
    cases.push((
        "python3",
        "python3 -c 'import os; print(\" \".join(f\"{b:03}\" for b in os.environ[\"V\"].encode()))'".into(),
    ));
    cases.push((
        "python3",
        "python3 -c 'import os; print(\",\".join(f\"{b:04d}\" for b in os.environ[\"V\"].encode()))'".into(),
    ));
    cases.push((
        "hexdump",
        "printf '%s%s' \"$PRE\" \"$V\" | hexdump -v -e '\"%08_ax \" 8/1 \"%03u \" \"\\n\"'".into(),
    ));
    cases.push((
        "hexdump",
        "printf '%s%s' \"$PRE\" \"$V\" | hexdump -v -e '3/1 \"%03u,\" \"\\n\"'".into(),
    ));
    let mut ran = 0;
    for (i, (needs, program)) in cases.iter().enumerate() {
        if !tool(needs) {
            continue;
        }
        for seed in 0..3u64 {
            let v = value(seed * 977 + i as u64 + 3, [10, 21, 40][seed as usize]);
            let pre = &"abcdefgh"[..(seed as usize + i) % 5];
            let raw = run(program, &v, pre).unwrap();
            ran += 1;
            let r = Redactor::new([("V", v.as_slice())]);
            let what = format!("case {i} ({program}), seed {seed}");
            let out = redacted(&r, &raw, &what);
            assert!(common::contains(&out, b"[REDACTED:V]"), "{what}: no marker");
            assert!(
                !has_window(&padded_decimal(&out), &v, 4),
                "{what}: 4 value bytes in a row decode from the digit runs"
            );
        }
    }
    assert!(ran > 0, "no printing tool here");
}

/// `xxd`'s layout (16 bytes a line in groups of two, a text column), built here so the test
/// needs no tool.
fn xxd_like(data: &[u8]) -> Vec<u8> {
    let mut out = String::new();
    for (n, line) in data.chunks(16).enumerate() {
        let mut hex = String::new();
        for (i, b) in line.iter().enumerate() {
            hex.push_str(&format!("{b:02x}"));
            if i % 2 == 1 {
                hex.push(' ');
            }
        }
        let text: String = line
            .iter()
            .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
            .collect();
        out.push_str(&format!("{:08x}: {hex:<40} {text}\n", n * 16));
    }
    out.into_bytes()
}

/// A dump whose lines the reader has finished (every view at the text column) and whose next
/// line feed lies in the same chunk once hung the redactor for ever (the skip to the line's
/// end stopped at the line feed without reading it). Each input must be redacted in bounded
/// time, whole in one push and in chunks; a hang fails here instead of stalling the suite.
#[test]
fn a_whole_dump_in_one_push_is_redacted_and_does_not_hang() {
    for seed in 1..=12u64 {
        let v = value(seed, 12 + seed as usize);
        let r = std::sync::Arc::new(Redactor::new([("TOK", v.clone())]));
        let mut data = b"x".repeat(seed as usize % 5);
        data.extend_from_slice(&v);
        data.extend_from_slice(&b"\n".repeat(seed as usize % 3));
        let dump = xxd_like(&data);
        let (tx, rx) = std::sync::mpsc::channel();
        let (r2, d2) = (r.clone(), dump.clone());
        std::thread::spawn(move || {
            let (one, _) = r2.redact(&d2);
            let (chunked, _) = common::stream_in(&r2, &d2, &[d2.len(), 16, 5]);
            let _ = tx.send((one, chunked));
        });
        let (one, chunked) = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("seed {seed}: the redactor did not return (a hang)"));
        assert_eq!(one, chunked, "seed {seed}");
        assert!(
            !has_window(&text_columns(&one), &v, 12),
            "seed {seed}: value shown"
        );
    }
}
