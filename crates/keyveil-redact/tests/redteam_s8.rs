//! Red team (session 8b): printed forms of a value that passed the redactor (now caught).
//! Values are generated, never literals.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use keyveil_redact::Redactor;

/// A random-looking alphanumeric value of `len` bytes from `seed` (xorshift).
fn value(seed: u64, len: usize) -> Vec<u8> {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALNUM[(x % ALNUM.len() as u64) as usize]
        })
        .collect()
}

/// `b` as eight binary digits.
fn bits(b: u8) -> String {
    format!("{b:08b}")
}

/// Every byte of a value as 8 binary digits, no separator: Perl `unpack("B*", $v)`, Python
/// `''.join(f'{b:08b}' for b in v)`, `bin(int.from_bytes(v))`.
/// Caught by the registered base-2 forms (`variants::binary_forms`).
#[test]
fn a_value_in_binary_digits_is_redacted() {
    for seed in 1..20u64 {
        let v = value(seed, 32);
        let r = Redactor::new([("TOKEN", v.as_slice())]);
        let printed: String = v.iter().map(|b| bits(*b)).collect();
        let (_, n) = r.redact(format!("{printed}\n").as_bytes());
        assert!(
            n > 0,
            "seed {seed}: the binary form of a 32-byte value passed"
        );
        let spaced: Vec<String> = v.iter().map(|b| bits(*b)).collect();
        let (_, n) = r.redact(format!("{}\n", spaced.join(" ")).as_bytes());
        assert!(n > 0, "seed {seed}: the spaced binary form passed");
    }
}

/// `xxd -b`: six bytes a line, each as 8 binary digits, then the six characters. Neither
/// column holds 12 value bytes on one line, so no fragment covers a line; joined, the text
/// columns are the value. Caught by the decoding pass's dump reader, which also masks the
/// text column of the line where the value ends.
#[test]
fn an_xxd_bits_dump_of_a_value_is_redacted() {
    for seed in 1..20u64 {
        let v = value(seed, 32);
        let r = Redactor::new([("TOKEN", v.as_slice())]);
        let mut dump = String::new();
        for (i, line) in v.chunks(6).enumerate() {
            let col: Vec<String> = line.iter().map(|b| bits(*b)).collect();
            dump.push_str(&format!(
                "{:08x}: {:<53}  {}\n",
                i * 6,
                col.join(" "),
                String::from_utf8_lossy(line)
            ));
        }
        let (out, _) = r.redact(dump.as_bytes());
        // What the agent reads back: the text column of every line, joined.
        let text: String = String::from_utf8_lossy(&out)
            .lines()
            .filter_map(|l| l.rsplit("  ").next().map(str::to_owned))
            .collect();
        assert!(
            !text.contains(std::str::from_utf8(&v).unwrap()),
            "seed {seed}: the text column of `xxd -b` spells the value"
        );
    }
}
