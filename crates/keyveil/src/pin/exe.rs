//! The executable: its SHA-256 (cached by file identity), its pin, and opening it again checked
//! against the pin for execution by descriptor.

use std::fs::File;
use std::path::Path;

use super::digest::hash_file;
use super::files::{Opened, open_regular};
use super::{FilePin, PinError, io};

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
