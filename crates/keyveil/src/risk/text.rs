//! Hidden and look-alike characters, and padding, in requester-supplied strings.

use keyveil_proto::display::is_odd_space;

/// Look-alike letters (a subset of the UTS #39 confusables table: Cyrillic and Greek letters
/// that render like Latin ones).
pub(super) fn latin_lookalike(c: char) -> bool {
    matches!(
        c,
        'а' | 'е'
            | 'о'
            | 'р'
            | 'с'
            | 'у'
            | 'х'
            | 'і'
            | 'ј'
            | 'ѕ'
            | 'һ'
            | 'ԁ'
            | 'ԛ'
            | 'ԝ'
            | 'ӏ'
            | 'А'
            | 'В'
            | 'Е'
            | 'К'
            | 'М'
            | 'Н'
            | 'О'
            | 'Р'
            | 'С'
            | 'Т'
            | 'Х'
            | 'І'
            | 'Ј'
            | 'Ѕ'
            | 'ο'
            | 'α'
            | 'ν'
            | 'ρ'
            | 'τ'
            | 'υ'
            | 'ι'
            | 'κ'
            | 'Α'
            | 'Β'
            | 'Ε'
            | 'Ζ'
            | 'Η'
            | 'Ι'
            | 'Κ'
            | 'Μ'
            | 'Ν'
            | 'Ο'
            | 'Ρ'
            | 'Τ'
            | 'Υ'
            | 'Χ'
    )
}

pub(super) fn has_padding(s: &str) -> bool {
    let mut run = 0;
    for c in s.chars() {
        if c.is_whitespace() || is_odd_space(c) {
            run += 1;
            if run >= 8 {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}
