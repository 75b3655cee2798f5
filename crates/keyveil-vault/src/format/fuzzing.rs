//! Properties of the vault header parser, checked by the `vault_header` fuzz target (`fuzz/`) and
//! by this crate's unit tests. Not a stable API.
//!
//! The first input byte picks how the rest becomes a file (random bytes almost never pass the
//! checksum, so two modes make sure the fuzzer reaches the structure behind it):
//!
//! * `0`: the bytes as they are;
//! * `1`: magic and version, the bytes, then a valid checksum;
//! * `2`: a well-formed file assembled from the bytes (slot count, KDF parameters in or out of
//!   range, salts, nonces, wrapped keys, ciphertext), with a valid checksum.
//!
//! Properties: parsing never panics; a well-formed file is accepted exactly when its KDF
//! parameters are in range; an accepted file re-encodes to the same header and the same bytes
//! (parse → serialise is the identity); every accepted slot's parameters validate; a changed
//! byte or a missing (part of the) checksum is rejected; every error displays.

use super::{
    CHECKSUM_LEN, FORMAT_VERSION, KEY_LEN, KdfParams, MAGIC, MAX_SLOTS, NONCE_LEN, SALT_LEN, Slot,
    TAG_LEN, parse, sha256,
};

/// Checks the properties above on one input; `Err` names the first one violated.
pub fn header_properties(data: &[u8]) -> Result<(), String> {
    let Some((&mode, rest)) = data.split_first() else {
        return Ok(());
    };
    let (file, expect_ok) = match mode % 3 {
        0 => (rest.to_vec(), None),
        1 => {
            let mut f = MAGIC.to_vec();
            f.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
            f.extend_from_slice(rest);
            let digest = sha256(&f);
            f.extend_from_slice(&digest);
            (f, None)
        }
        _ => {
            let (f, ok) = well_formed(rest);
            (f, Some(ok))
        }
    };
    let parsed = parse(&file);
    match (&parsed, expect_ok) {
        (Err(e), Some(true)) => return Err(format!("a well-formed file was rejected: {e}")),
        (Ok(_), Some(false)) => {
            return Err("out-of-range KDF parameters were accepted".into());
        }
        (Err(e), _) => {
            let _ = e.to_string();
        }
        _ => {}
    }
    let Ok(p) = parsed else {
        return Ok(());
    };
    if p.slots.is_empty() || p.slots.len() > MAX_SLOTS {
        return Err(format!("accepted {} key slots", p.slots.len()));
    }
    for s in &p.slots {
        s.params
            .validate()
            .map_err(|e| format!("accepted a slot whose parameters fail validation: {e}"))?;
    }
    let mut again = MAGIC.to_vec();
    again.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    again.push(u8::try_from(p.slots.len()).unwrap_or(0));
    again.push(0);
    for s in &p.slots {
        s.write(&mut again);
    }
    again.extend_from_slice(&p.payload_nonce);
    if again != p.header {
        return Err("re-encoding the parsed header differs from the file's header".into());
    }
    again.extend_from_slice(p.ciphertext);
    let digest = sha256(&again);
    again.extend_from_slice(&digest);
    if again != file {
        return Err("parse then serialise does not give the file back".into());
    }
    if p.ciphertext.len() < TAG_LEN {
        return Err("accepted a payload shorter than its tag".into());
    }
    // Any one changed byte and any truncation are rejected.
    let pos = usize::from(mode) * 131 % file.len();
    let mut changed = file.clone();
    if let Some(b) = changed.get_mut(pos) {
        *b ^= 1 | (mode >> 3);
    }
    if parse(&changed).is_ok() {
        return Err(format!("a file with byte {pos} changed was accepted"));
    }
    // A torn write: the checksum (or part of it) is missing. (A cut anywhere else can leave a
    // valid file when the content embeds one with its own checksum, which the fuzzer finds; a
    // real vault's content is ciphertext, and decryption authenticates the header.)
    let cut = file.len() - 1 - pos % CHECKSUM_LEN;
    if parse(file.get(..cut).unwrap_or_default()).is_ok() {
        return Err(format!(
            "the file cut to {cut} of {} bytes was accepted",
            file.len()
        ));
    }
    Ok(())
}

/// Reads input bytes, then zeros once they run out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for b in &mut out {
            *b = self.byte();
        }
        out
    }
}

/// Assembles a structurally valid file from `bytes` (zero-padded when short); the flag says
/// whether every slot's KDF parameters are in range.
fn well_formed(bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut input = Input(bytes);
    let count = usize::from(input.byte() % 8) + 1;
    let mut file = MAGIC.to_vec();
    file.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    file.push(u8::try_from(count).unwrap_or(1));
    file.push(0);
    let mut all_valid = true;
    let (min, max) = (KdfParams::MINIMUM, KdfParams::MAXIMUM);
    for _ in 0..count {
        let knob = input.byte();
        let spread = u32::from(u16::from_be_bytes(input.array::<2>()));
        let mut params = KdfParams {
            m_cost_kib: min.m_cost_kib + spread,
            t_cost: min.t_cost + u32::from(input.byte() % 8),
            p_cost: min.p_cost + u32::from(input.byte() % 8),
        };
        match knob % 8 {
            0 => params.m_cost_kib = min.m_cost_kib - 1,
            1 => params.t_cost = max.t_cost + 1,
            2 => params.p_cost = 0,
            3 => params.m_cost_kib = max.m_cost_kib + 1 + u32::from(knob),
            _ => {}
        }
        all_valid &= params.validate().is_ok();
        let slot = Slot {
            params,
            salt: input.array::<SALT_LEN>(),
            nonce: input.array::<NONCE_LEN>(),
            wrapped: input.array::<{ KEY_LEN + TAG_LEN }>(),
        };
        slot.write(&mut file);
    }
    file.extend_from_slice(&input.array::<NONCE_LEN>());
    // The ciphertext: whatever input is left, at least a tag's worth.
    let rest = input.0;
    file.extend_from_slice(rest);
    file.resize(file.len() + TAG_LEN.saturating_sub(rest.len()), 0);
    let digest = sha256(&file);
    file.extend_from_slice(&digest);
    (file, all_valid)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn properties_hold_on_seed_inputs() {
        let mut seeds: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![1],
            vec![2],
            b"\x00KEYVEIL\x00\x00\x01".to_vec(),
        ];
        for mode in 0u8..=255 {
            let mut s = vec![mode];
            s.extend((0..300u16).map(|i| (i as u8).wrapping_mul(mode | 1)));
            seeds.push(s);
        }
        let mut accepted = 0;
        for s in &seeds {
            if let Err(e) = header_properties(s) {
                panic!("{e} (input {s:?})");
            }
            if s.first().is_some_and(|m| m % 3 == 2) && parse(&well_formed(&s[1..]).0).is_ok() {
                accepted += 1;
            }
        }
        assert!(
            accepted > 10,
            "the well-formed mode rarely builds a valid file"
        );
    }
}
