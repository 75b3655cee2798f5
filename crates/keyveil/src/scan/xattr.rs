//! The `user.*` extended attributes of a changed entry (red team s14b, w7): a value stored in
//! an attribute (`setfattr`, `os.setxattr`) is read back by anyone who can read the file, so
//! the write-side scan matches each attribute's value, as a location `PATH#xattr:NAME` (not `!`, an archive member's mark: a value in both
//! the file's bytes and an attribute is reported at both).
//!
//! Bounded: at most [`MAX_ATTRS`] attributes per entry and [`MAX_VALUE`] bytes each (the
//! kernel's own limit for one value); only the `user.` namespace (the others are the
//! system's: ACLs, SELinux labels, capabilities, which a run cannot fill with a value
//! without privilege). Never through a symlink (`llistxattr`, `lgetxattr`).

use std::path::Path;

use std::ffi::OsString;

use super::{Forms, Scanner, decode, os_from_bytes};

/// Most attributes read per entry; past it the report is truncated.
pub(super) const MAX_ATTRS: usize = 64;
/// Most bytes read of one attribute's value (the kernel's limit, `XATTR_SIZE_MAX`).
pub(super) const MAX_VALUE: usize = 64 * 1024;
/// Most bytes of the list of names (the kernel's limit, `XATTR_LIST_MAX`).
const MAX_LIST: usize = 64 * 1024;

/// Why an entry's attributes were not all read (a phrase for the report).
const TOO_MANY: &str = "too many extended attributes on one entry";

/// Matches the value of each `user.*` attribute of `path` (and the attribute's name: a value
/// may be the name itself).
#[cfg(target_os = "linux")]
pub(super) fn scan(sc: &mut Scanner<'_>, path: &Path) {
    // Most entries have no attribute: a small buffer first, the kernel's limit only if needed.
    let mut list = vec![0u8; 256];
    let n = match rustix::fs::llistxattr(path, &mut list[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::RANGE) => {
            list = vec![0u8; MAX_LIST];
            match rustix::fs::llistxattr(path, &mut list[..]) {
                Ok(n) => n,
                Err(_) => return,
            }
        }
        // Not supported here, or gone.
        Err(_) => return,
    };
    list.truncate(n);
    if !list.split(|&b| b == 0).any(|s| s.starts_with(b"user.")) {
        return;
    }
    let mut value = vec![0u8; MAX_VALUE];
    let names = list.split(|&b| b == 0).filter(|s| s.starts_with(b"user."));
    for (read, name) in names.enumerate() {
        if read == MAX_ATTRS {
            sc.skip(TOO_MANY);
            break;
        }
        let mut location = OsString::from(path.as_os_str());
        let mut label = b"#xattr:".to_vec();
        label.extend_from_slice(name);
        location.push(os_from_bytes(label));
        sc.match_bytes(name, &location, &Forms::default().with("xattr-name"));
        let Ok(cname) = std::ffi::CString::new(name) else {
            continue;
        };
        if let Ok(k) = rustix::fs::lgetxattr(path, cname.as_c_str(), &mut value[..])
            && let Some(v) = value.get(..k)
        {
            decode::scan_blob(sc, v, &location, &Forms::default().with("xattr"));
        }
    }
}

/// No extended attributes where there is no Linux.
#[cfg(not(target_os = "linux"))]
pub(super) fn scan(_sc: &mut Scanner<'_>, _path: &Path) {}
