//! Fuzz target for the audit log's line parser (`keyveil_vault::audit`).
//!
//! The properties (no input panics the parser; a raw line is accepted only in canonical form
//! under the right key; every entry `append` would write is accepted, reads back to the same
//! fields, and is rejected under another key, with one byte changed, or cut short) live in
//! `keyveil_vault::audit::fuzzing`, where unit tests run them too.
//!
//! Run: `cargo +nightly fuzz run audit_line -- -max_total_time=30`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = keyveil_vault::audit::fuzzing::line_properties(data) {
        panic!("audit line property violated: {e}");
    }
});
