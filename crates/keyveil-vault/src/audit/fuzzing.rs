//! Properties of the audit line parser, checked by the `audit_line` fuzz target (`fuzz/`) and by
//! this crate's unit tests. Not a stable API.
//!
//! An odd first input byte selects the *structured* mode: the rest becomes an entry (sequence
//! number, time, event name, extra fields as JSON) written exactly as
//! [`AuditWriter::append`](super::AuditWriter::append) writes it. An even one feeds the rest to
//! the parser as a raw line.
//!
//! Properties: no input panics the parser; a raw line is accepted only if it is the canonical
//! form of what it parses to, under the right key; every entry that `append` would write is
//! accepted with its `seq`, `prev` and `mac`, parses back (as `read_entries` reads it) to the
//! same fields, and is rejected under another key, with any one byte changed, or cut short (a
//! torn write); every error displays.

use serde_json::{Map, Value};

use super::{
    MAX_LINE_LEN, check_line, check_position, format_ts, hmac_sha256, mac_input, sha256_hex,
    validate_entry, with_mac,
};

const KEY: [u8; 32] = [0x4b; 32];
const OTHER_KEY: [u8; 32] = [0x4c; 32];

/// Checks the properties above on one input; `Err` names the first one violated.
pub fn line_properties(data: &[u8]) -> Result<(), String> {
    let Some((&mode, rest)) = data.split_first() else {
        return Ok(());
    };
    if mode & 1 == 0 {
        return raw(rest);
    }
    structured(mode, rest)
}

fn raw(line: &[u8]) -> Result<(), String> {
    match check_line(1, line, Some(&KEY)) {
        Err(e) => {
            let _ = e.to_string();
            Ok(())
        }
        Ok(c) => {
            // Only possible for a line carrying a valid MAC: then it must be canonical.
            let v: Value = serde_json::from_slice(line).map_err(|e| e.to_string())?;
            let map = v.as_object().ok_or("accepted a non-object")?;
            let s = |k: &str| map.get(k).and_then(Value::as_str).unwrap_or_default();
            let rebuilt = with_mac(mac_input(c.seq, s("ts"), s("event"), map, &c.prev), &c.mac);
            if rebuilt.as_bytes() != line {
                return Err("accepted a line that is not in canonical form".into());
            }
            Ok(())
        }
    }
}

fn structured(mode: u8, rest: &[u8]) -> Result<(), String> {
    let take8 = |r: &[u8]| -> [u8; 8] {
        let mut out = [0u8; 8];
        for (d, s) in out.iter_mut().zip(r.iter()) {
            *d = *s;
        }
        out
    };
    let seq = u64::from_be_bytes(take8(rest)).max(1);
    let rest = rest.get(8..).unwrap_or_default();
    let micros = i64::from_be_bytes(take8(rest));
    let rest = rest.get(8..).unwrap_or_default();
    let (event_len, rest) = rest.split_first().map_or((0, &[][..]), |(n, r)| (*n, r));
    let (event, extras_json) = rest.split_at(usize::from(event_len % 64).min(rest.len()));
    let event = String::from_utf8_lossy(event).into_owned();
    let extras: Map<String, Value> = match serde_json::from_slice(extras_json) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    if validate_entry(&event, &extras).is_err() {
        return Ok(()); // append refuses it; nothing is written
    }
    // Any instant jiff can represent (about years -9999 to 9999).
    let span = 253_402_207_200_000_000i64;
    let at = jiff::Timestamp::from_microsecond(micros.rem_euclid(2 * span) - span)
        .map_err(|e| format!("timestamp: {e}"))?;
    let ts = format_ts(at);
    let prev = sha256_hex(&mode.to_be_bytes());
    let input = mac_input(seq, &ts, &event, &extras, &prev);
    let mac = hex::encode(hmac_sha256(&KEY, &[input.as_bytes()]).as_ref());
    let line = with_mac(input, &mac);
    if line.len() > MAX_LINE_LEN {
        return Ok(());
    }
    let bytes = line.as_bytes();

    let c = check_line(seq, bytes, Some(&KEY))
        .map_err(|e| format!("a line written like append() was rejected: {e}: {line}"))?;
    if c.seq != seq || c.prev != prev || c.mac != mac {
        return Err("the parsed seq, prev or mac differs from what was written".into());
    }
    check_position(seq, &c, &prev).map_err(|e| e.to_string())?;

    // Read back as `read_entries` does: the same fields.
    let v: Value = serde_json::from_str(&line).map_err(|e| format!("unreadable line: {e}"))?;
    let map = v.as_object().ok_or("line is not an object")?;
    if map.get("seq") != Some(&Value::from(seq))
        || map.get("event") != Some(&Value::from(event.as_str()))
        || map.get("ts") != Some(&Value::from(ts.as_str()))
    {
        return Err("seq, event or ts did not survive the round trip".into());
    }
    for (k, val) in &extras {
        if map.get(k) != Some(val) {
            return Err(format!("extra field {k:?} did not survive the round trip"));
        }
    }

    if check_line(seq, bytes, Some(&OTHER_KEY)).is_ok() {
        return Err("accepted under another key".into());
    }
    let pos = usize::from(mode) * 97 % bytes.len();
    let mut changed = bytes.to_vec();
    if let Some(b) = changed.get_mut(pos) {
        *b ^= 1 | (mode & 0x7e);
    }
    if check_line(seq, &changed, Some(&KEY)).is_ok() {
        return Err(format!("accepted with byte {pos} changed"));
    }
    if check_line(seq, bytes.get(..pos).unwrap_or_default(), Some(&KEY)).is_ok() {
        return Err(format!("accepted cut to {pos} bytes (a torn write)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]
    use super::*;

    #[test]
    fn properties_hold_on_seed_inputs() {
        let extras = [
            &b""[..],
            br#"{"environment":"dev","variables":["A","B"],"n":-3}"#,
            br#"{"z":{"b":1,"a":[true,null]},"a":"\u0001\u2028\ud83d\ude00 \"q\""}"#,
            br#"{"k":1.5}"#,
            br#"{"seq":1}"#,
            br#"{"x":18446744073709551615,"y":-9223372036854775808}"#,
        ];
        let mut n = 0;
        for mode in [1u8, 3, 77, 255, 0, 2] {
            for (i, ex) in extras.iter().enumerate() {
                let mut input = vec![mode];
                input.extend_from_slice(&(i as u64 * 1_000_003).to_be_bytes());
                input.extend_from_slice(&(i as i64 * -7_777_777_777).to_be_bytes());
                input.push(9);
                input.extend_from_slice(b"var.set.x");
                input.extend_from_slice(ex);
                if let Err(e) = line_properties(&input) {
                    panic!("{e} (input {input:?})");
                }
                n += 1;
            }
        }
        assert_eq!(n, 36);
    }
}
