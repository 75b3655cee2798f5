//! A file's SHA-256, cached by file identity (device, inode, size, mtime, ctime): shared by the
//! executable's pin and the input files' pins.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// A file's identity: device, inode, size, mtime and ctime (nanoseconds).
pub(super) type Key = (u64, u64, u64, i64, i64);

static HASH_CACHE: Mutex<Option<HashMap<Key, String>>> = Mutex::new(None);

/// The identity of the file `m` describes.
pub(super) fn key(m: &std::fs::Metadata) -> Key {
    (
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(m.mtime_nsec()),
        m.ctime()
            .saturating_mul(1_000_000_000)
            .saturating_add(m.ctime_nsec()),
    )
}

fn hash_reader(mut r: impl Read) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hex::encode(h.finalize()))
}

/// Hashes an open file, using a cache keyed by (dev, ino, size, mtime, ctime): the kernel bumps
/// ctime on every write, so an unchanged key means unchanged content.
pub(super) fn hash_file(f: &File) -> std::io::Result<(Key, String)> {
    let m = f.metadata()?;
    let k = key(&m);
    if let Some(h) = HASH_CACHE
        .lock()
        .ok()
        .and_then(|c| c.as_ref().and_then(|c| c.get(&k).cloned()))
    {
        return Ok((k, h));
    }
    let h = hash_reader(f)?;
    if let Ok(mut c) = HASH_CACHE.lock() {
        let map = c.get_or_insert_with(HashMap::new);
        if map.len() > 4096 {
            map.clear();
        }
        map.insert(k, h.clone());
    }
    Ok((k, h))
}
