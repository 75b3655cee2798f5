//! The executable: its SHA-256 (cached by file identity), its pin, and opening it again checked
//! against the pin for execution by descriptor.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::files::{Opened, open_regular};
use super::{FilePin, PinError, io};

type Key = (u64, u64, u64, i64, i64);

static HASH_CACHE: Mutex<Option<HashMap<Key, String>>> = Mutex::new(None);

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

/// Opens an executable for pinning without blocking (a FIFO named as `argv[0]` never parks the
/// broker): a regular file only.
fn open_exe(path: &Path) -> Result<File, PinError> {
    match open_regular(path) {
        Ok((f, _)) => Ok(f),
        Err(Opened::Odd(k)) => Err(io(
            path,
            std::io::Error::other(format!("it is {k}, not a regular file")),
        )),
        Err(Opened::Missing) => Err(io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "not a readable regular file"),
        )),
    }
}

/// Pins a file by path.
pub(crate) fn pin_file(path: &Path) -> Result<FilePin, PinError> {
    let f = open_exe(path)?;
    let (k, sha256) = hash_file(&f).map_err(|e| io(path, e))?;
    Ok(FilePin {
        path: path.display().to_string(),
        dev: k.0,
        ino: k.1,
        size: k.2,
        mtime_ns: k.3,
        ctime_ns: k.4,
        sha256,
    })
}

/// Opens the pinned file and checks that the open file is the pinned one. Returns the open file,
/// which the spawn executes by descriptor.
pub(crate) fn open_verified(pin: &FilePin) -> Result<File, PinError> {
    let p = Path::new(&pin.path);
    let f = open_exe(p)?;
    let (k, now) = hash_file(&f).map_err(|e| io(p, e))?;
    if now != pin.sha256 || k.0 != pin.dev || k.1 != pin.ino {
        return Err(PinError::Changed {
            path: pin.path.clone(),
            was: pin.sha256.clone(),
            now,
        });
    }
    Ok(f)
}
