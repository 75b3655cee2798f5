//! Showing strings that came from a requester (an agent) to a human or in an error message.
//!
//! The full escaper for approval cards (bidi, zero-width, look-alikes) is its own piece of work;
//! this module keeps error messages bounded and free of terminal control sequences.

/// At most `max` characters of `s`, with control characters escaped (`\u{1b}`) and an
/// ellipsis marking the cut. For error messages only: approval cards never truncate.
pub fn clip(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_escapes_controls_and_cuts() {
        assert_eq!(clip("a\u{1b}[2Jb", 10), "a\\u{1b}[2Jb");
        assert_eq!(clip("abcdef", 3), "abc…");
    }
}
