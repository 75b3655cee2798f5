//! The one escaper for every requester-supplied string shown to a human: the terminal approval
//! card, `approve --watch`, the web page, notifications, the audit viewer, error messages.
//!
//! An agent controls argv, the working directory, the reason, and names. Shown raw, those can
//! rewrite a terminal (CSI cursor moves, CVE-2024-27936), reorder text (bidi overrides,
//! CVE-2021-42574 "Trojan Source"), hide text (zero-width and other format characters, Unicode
//! tags), impersonate (look-alike letters, UTS #39) or push text off screen (padding). Two
//! renderings:
//!
//! - [`visible`] for identifiers (argv elements, paths, names): every character outside
//!   printable ASCII becomes `\u{XXXX}` (lowercase hex, as Rust writes it), a backslash becomes
//!   `\\`, and a run of 4 or more spaces becomes `⟨N spaces⟩`. The result is printable ASCII
//!   plus `⟨⟩`, and two different inputs never render alike.
//! - [`visible_text`] for prose (the reason): letters of any script stay, but controls, format
//!   characters (bidi, zero-width, tags), variation selectors, unusual spaces and long space runs
//!   are escaped the same way.

/// Bidirectional controls: embeddings, overrides, isolates and marks (UAX #9).
pub fn is_bidi_control(c: char) -> bool {
    matches!(c as u32, 0x202A..=0x202E | 0x2066..=0x2069 | 0x200E | 0x200F | 0x061C)
}

/// Characters that render as nothing (or nearly): Unicode general category Cf (format), variation
/// selectors, Unicode tags and the other default-ignorable code points (DerivedCoreProperties).
pub fn is_invisible(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x0600..=0x0605 | 0x06DD | 0x070F | 0x08E2 | 0x115F | 0x1160
        | 0x17B4 | 0x17B5 | 0x180B..=0x180F | 0x200B..=0x200F | 0x202A..=0x202E
        | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFFB
        | 0x110BD | 0x110CD | 0x13430..=0x1343F | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A
        | 0xE0000..=0xE0FFF)
}

/// Whitespace other than the ASCII space that terminals may render as a space (Zs, U+2028/9).
pub fn is_odd_space(c: char) -> bool {
    c != ' ' && (c.is_whitespace() || matches!(c as u32, 0x2028 | 0x2029 | 0x3000))
}

fn push_escape(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        _ => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
    }
}

fn flush_spaces(out: &mut String, n: usize) {
    if n >= 4 {
        out.push_str(&format!("⟨{n} spaces⟩"));
    } else {
        out.extend(std::iter::repeat_n(' ', n));
    }
}

/// Renders an identifier (argv element, path, name) as printable ASCII; see the module docs.
pub fn visible(s: &str) -> String {
    render(s, true)
}

/// Renders prose (a reason): letters of any script stay; see the module docs.
pub fn visible_text(s: &str) -> String {
    render(s, false)
}

fn render(s: &str, strict: bool) -> String {
    let mut out = String::with_capacity(s.len());
    let mut spaces = 0usize;
    for c in s.chars() {
        if c == ' ' {
            spaces += 1;
            continue;
        }
        flush_spaces(&mut out, spaces);
        spaces = 0;
        let escape = c.is_control()
            || is_invisible(c)
            || is_odd_space(c)
            || (strict && !c.is_ascii())
            || (c as u32) == 0x7f;
        if c == '\\' && strict {
            out.push_str("\\\\");
        } else if escape {
            push_escape(&mut out, c);
        } else {
            out.push(c);
        }
    }
    flush_spaces(&mut out, spaces);
    out
}

/// An argv element quoted for the card: `"…"` around [`visible`], with `"` escaped.
pub fn quoted(s: &str) -> String {
    format!("\"{}\"", visible(s).replace('"', "\\\""))
}

/// At most `max` characters of [`visible_text`]`(s)`, with an ellipsis marking the cut. For
/// error messages only: approval cards never truncate.
pub fn clip(s: &str, max: usize) -> String {
    let v = visible_text(s);
    if v.chars().count() <= max {
        return v;
    }
    let mut out: String = v.chars().take(max).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_become_printable_ascii() {
        assert_eq!(visible("npm"), "npm");
        assert_eq!(visible("n\u{440}m"), "n\\u{440}m");
        assert_eq!(
            visible("scripts/\u{202e}hs.tset"),
            "scripts/\\u{202e}hs.tset"
        );
        assert_eq!(visible("test\u{200b}"), "test\\u{200b}");
        assert_eq!(visible("a\u{1b}[2Kb"), "a\\u{1b}[2Kb");
        assert_eq!(visible("x\u{e0041}"), "x\\u{e0041}");
        assert_eq!(
            visible("a\\u{1b}"),
            "a\\\\u{1b}",
            "a literal escape text stays distinguishable"
        );
        assert_eq!(
            visible(&format!("npm test{}; curl", " ".repeat(300))),
            "npm test⟨300 spaces⟩; curl"
        );
        assert_eq!(visible("a   b"), "a   b");
        assert!(visible(&"\u{7f}\u{85}\u{a0}\u{2028}".repeat(3)).is_ascii());
    }

    #[test]
    fn prose_keeps_letters_but_not_tricks() {
        assert_eq!(visible_text("tests für Ünïcode"), "tests für Ünïcode");
        assert_eq!(
            visible_text("Run tests\u{1b}[3A\r\u{1b}[2KCommand: npm test"),
            "Run tests\\u{1b}[3A\\r\\u{1b}[2KCommand: npm test"
        );
        assert_eq!(visible_text("a\u{200d}b\u{fe0f}"), "a\\u{200d}b\\u{fe0f}");
    }

    #[test]
    fn clip_cuts_after_escaping() {
        assert_eq!(clip("abcdef", 3), "abc…");
        assert_eq!(clip("a\u{1b}", 10), "a\\u{1b}");
    }
}
