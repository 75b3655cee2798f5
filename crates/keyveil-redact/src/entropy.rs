//! Cheap "does this look like a secret?" heuristics.
//!
//! They decide which *derived* pieces of a value get their own patterns (lines of a multi-line
//! value, leaves of a structured value) and which pieces are random enough that any 12-byte
//! fragment of them is worth redacting. The value a user stored is always registered whole,
//! whatever these heuristics say.

/// Shannon entropy of the byte distribution of `s`, in bits per byte (0.0 for empty input).
pub fn shannon_bits_per_byte(s: &[u8]) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in s {
        if let Some(c) = counts.get_mut(usize::from(b)) {
            *c += 1;
        }
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Number of character classes among ASCII lower-case letters, upper-case letters and digits that
/// occur in `s` (0 to 3).
pub fn char_classes(s: &[u8]) -> u32 {
    let lower = s.iter().any(u8::is_ascii_lowercase);
    let upper = s.iter().any(u8::is_ascii_uppercase);
    let digit = s.iter().any(u8::is_ascii_digit);
    u32::from(lower) + u32::from(upper) + u32::from(digit)
}

/// A derived piece (a line, a JSON leaf) that looks like key material rather than structure or
/// prose: at least 8 bytes, at least two of lower/upper/digit, and at least 32 bits of total
/// (per-byte Shannon × length) entropy. `"eu-west-1"`, `"service_account"` and PEM armour lines
/// fail; tokens, keys and hashes pass.
pub fn looks_secret(s: &[u8]) -> bool {
    s.len() >= 8 && char_classes(s) >= 2 && shannon_bits_per_byte(s) * s.len() as f64 >= 32.0
}

/// A piece random enough that any run of [`crate::FRAGMENT_LEN`] of its bytes identifies it:
/// longer than one fragment, two or more character classes, at least 3 bits per byte, no
/// whitespace (so pass-phrases made of words do not turn into word fragments).
pub fn fragmentable(s: &[u8]) -> bool {
    s.len() > crate::FRAGMENT_LEN
        && char_classes(s) >= 2
        && !s.iter().any(u8::is_ascii_whitespace)
        && shannon_bits_per_byte(s) >= 3.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_bounds() {
        assert_eq!(shannon_bits_per_byte(b""), 0.0);
        assert_eq!(shannon_bits_per_byte(b"aaaa"), 0.0);
        assert!((shannon_bits_per_byte(b"abcd") - 2.0).abs() < 1e-9);
    }

    #[test]
    fn secret_like() {
        let key_id = crate::fixtures::leaf("json-secret-leaves", "GCP_SA_KEY", "private_key_id");
        let api_key = crate::fixtures::leaf("json-secret-brace-overmask", "APP_CONFIG", "api_key");
        let pem = crate::fixtures::secret("pem-partial-lines", "TLS_KEY");
        let armour = pem.lines().next().unwrap();
        assert!(looks_secret(key_id.as_bytes()));
        assert!(looks_secret(api_key.as_bytes()));
        assert!(!looks_secret(b"eu-west-1"));
        assert!(!looks_secret(b"service_account"));
        assert!(!looks_secret(armour.as_bytes()));
        assert!(!looks_secret(b"{"));
    }

    #[test]
    fn fragments_only_for_random_pieces() {
        assert!(fragmentable(
            b"mcpb_3zDJyycFRPX8ih5VBLJOMSX29wUJCZu9ygp6sXwW"
        ));
        assert!(!fragmentable(b"correct horse battery staple"));
        assert!(!fragmentable(b"aaaaaaaaaaaaaaaaaaaa1"));
        assert!(!fragmentable(b"short1A"));
    }
}
