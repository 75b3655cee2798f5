//! Fuzz target for the vault file's header parser (`keyveil_vault::format`).
//!
//! The properties (parse never panics; a well-formed file is accepted exactly when its KDF
//! parameters are in range; parse → serialise is the identity; a changed byte or a cut checksum is
//! rejected) live in `keyveil_vault::format::fuzzing`, where unit tests run them too.
//!
//! Run: `cargo +nightly fuzz run vault_header -- -max_total_time=30`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = keyveil_vault::format::fuzzing::header_properties(data) {
        panic!("vault header property violated: {e}");
    }
});
