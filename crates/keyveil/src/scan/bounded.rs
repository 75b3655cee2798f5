//! Bounded reads, shared by the walk and the decoders.

use std::io::Read;

/// Reads at most `limit` bytes. Returns the bytes, whether there was more than `limit`, and
/// whether a read error stopped it (the bytes read before the error are kept).
pub(super) fn read_bounded<R: Read>(reader: R, limit: u64) -> (Vec<u8>, bool, bool) {
    let mut out = Vec::new();
    let mut take = reader.take(limit.saturating_add(1));
    let err = take.read_to_end(&mut out).is_err();
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    let hit = out.len() > cap;
    out.truncate(cap);
    (out, hit, err)
}

/// `data.len()` as `u64`.
pub(super) fn len_u64(data: &[u8]) -> u64 {
    u64::try_from(data.len()).unwrap_or(u64::MAX)
}
