//! Fuzz target for `keyveil import`'s `.env` parser (the `keyveil-dotenv` crate, which depends
//! only on zeroize). Properties:
//! 1. any input parses or fails with a line number within the input, never a panic;
//! 2. every entry's span lies inside the input, on character boundaries, starts at a line
//!    start, and entries come in file order without overlapping;
//! 3. an error message never contains a run of 12 or more bytes of the input that is not a
//!    fixed part of the messages (errors name lines, never values).
//!
//! Run: `cargo +nightly fuzz run dotenv_parse -- -max_total_time=30`.
#![no_main]

use libfuzzer_sys::fuzz_target;

use keyveil_dotenv as dotenv;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match dotenv::parse(text) {
        Ok(entries) => {
            let mut prev_end = 0;
            for e in &entries {
                assert!(text.get(e.span.clone()).is_some());
                assert!(e.span.start >= prev_end);
                assert!(e.span.start == 0 || text.as_bytes()[e.span.start - 1] == b'\n' || e.span.start == 3);
                prev_end = e.span.end;
            }
        }
        Err(e) => {
            let lines = text.split('\n').count();
            assert!(e.line >= 1 && e.line <= lines.max(1));
            // A value-looking run of the input (12+ bytes without a blank, `=` or quote) never
            // appears in the message unless it is a valid name (names are allowed).
            for word in text.split(|c: char| c.is_whitespace() || "=\"'#".contains(c)) {
                if word.len() >= 12 && !word.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    assert!(!e.what.contains(word));
                }
            }
        }
    }
});
