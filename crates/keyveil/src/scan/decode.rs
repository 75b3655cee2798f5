//! Decoding what a file holds, by magic bytes (never by file name), each decoder bounded.
//!
//! - gzip, RFC 1952 (`1f 8b 08`), multi-member;
//! - zlib, RFC 1950 (deflate method, header check `(CMF*256 + FLG) % 31 == 0`, no preset
//!   dictionary): git loose objects (`.git/objects/xx/...`), and any other zlib stream;
//! - git packfiles (`PACK`, version 2 or 3): each object inflated; for deltified objects the
//!   literal bytes of the delta's insert instructions (copies from a base object are not
//!   resolved);
//! - tar, POSIX ustar (`ustar` at offset 257) and older GNU and v7 headers (valid header
//!   checksum);
//! - zip, PKWARE APPNOTE (local header `PK\x03\x04`, or an end-of-central-directory record near
//!   the end: self-extracting archives), so `.jar`, `.whl`, `.docx`, `.xlsx`, `.apk`, `.nupkg`
//!   are read whatever their name; encrypted members are counted as skipped;
//! - UTF-16 text, little- and big-endian (byte-order mark, or the pattern of zero bytes of
//!   mostly-ASCII text), turned into UTF-8.
//!
//! Each decoded member or stream is scanned again (nested archives) while the decoding depth
//! stays within [`ScanLimits::max_decode_depth`](super::ScanLimits::max_decode_depth); decoded
//! sizes are capped by [`ScanLimits::max_member_bytes`](super::ScanLimits::max_member_bytes)
//! and the total byte budget, so a zip bomb costs at most the cap. Text that is not a container
//! goes through [`super::text`].

use std::ffi::OsStr;
use std::io::{Cursor, Read};

use flate2::read::{MultiGzDecoder, ZlibDecoder};

use super::bounded::{len_u64, read_bounded};
use super::{Forms, OUT_OF_TIME, OVER_BYTES, Scanner, member_location, text};

/// What a byte string is, by its first (and for zip, last) bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Gzip,
    Zlib,
    Zip,
    Tar,
    Pack,
    Utf16Le {
        skip: usize,
    },
    Utf16Be {
        skip: usize,
    },
    /// No NUL byte in the first 8 KiB.
    Text,
    Binary,
}

/// How many leading bytes decide between text and binary.
const SNIFF: usize = 8192;

/// Classifies `data` by magic bytes.
pub(super) fn detect(data: &[u8]) -> Kind {
    if data.starts_with(&[0x1f, 0x8b, 0x08]) {
        return Kind::Gzip;
    }
    if data.starts_with(b"PK\x03\x04") || data.starts_with(b"PK\x05\x06") {
        return Kind::Zip;
    }
    if is_pack(data) {
        return Kind::Pack;
    }
    if is_tar(data) {
        return Kind::Tar;
    }
    if is_zlib(data) {
        return Kind::Zlib;
    }
    if has_zip_end(data) {
        return Kind::Zip;
    }
    if let Some(k) = utf16_kind(data) {
        return k;
    }
    let head = data.get(..SNIFF).unwrap_or(data);
    if memchr::memchr(0, head).is_some() {
        Kind::Binary
    } else {
        Kind::Text
    }
}

/// Does `data` start like something this module would decode (for files too large to decode)?
pub(super) fn is_container(data: &[u8]) -> bool {
    matches!(
        detect(data),
        Kind::Gzip | Kind::Zlib | Kind::Zip | Kind::Tar | Kind::Pack
    )
}

/// Matches `data` as it is, then decodes it if it is a container or encoded text, and scans
/// what that yields. `location` is the file (or `file!member`) the bytes came from.
pub(super) fn scan_blob(sc: &mut Scanner<'_>, data: &[u8], location: &OsStr, forms: &Forms) {
    sc.match_bytes(data, location, forms);
    if data.is_empty() || sc.out_of_time() {
        return;
    }
    let kind = detect(data);
    let can_nest = forms.depth() < sc.limits.max_decode_depth;
    match kind {
        Kind::Text => text::scan_transforms(sc, data, location, forms),
        Kind::Binary => {}
        _ if !can_nest => sc.skip("nested in archives too deep"),
        Kind::Gzip => {
            let (out, hit) = inflate(sc, MultiGzDecoder::new(data));
            if hit {
                sc.skip(OVER_BYTES);
            }
            scan_blob(sc, &out, location, &forms.with("gzip"));
        }
        Kind::Zlib => {
            let (out, hit) = inflate(sc, ZlibDecoder::new(data));
            if out.is_empty() {
                // Not zlib after all (a text file that happens to start like a zlib header).
                if memchr::memchr(0, data.get(..SNIFF).unwrap_or(data)).is_none() {
                    text::scan_transforms(sc, data, location, forms);
                }
                return;
            }
            if hit {
                sc.skip(OVER_BYTES);
            }
            let layer = if is_git_object(&out) {
                "git-object"
            } else {
                "zlib"
            };
            scan_blob(sc, &out, location, &forms.with(layer));
        }
        Kind::Zip => zip_members(sc, data, location, forms),
        Kind::Tar => tar_members(sc, data, location, forms),
        Kind::Pack => pack_objects(sc, data, location, forms),
        Kind::Utf16Le { skip } => {
            let out = utf16_to_utf8(data.get(skip..).unwrap_or_default(), false);
            scan_blob(sc, &out, location, &forms.with("utf-16le"));
        }
        Kind::Utf16Be { skip } => {
            let out = utf16_to_utf8(data.get(skip..).unwrap_or_default(), true);
            scan_blob(sc, &out, location, &forms.with("utf-16be"));
        }
    }
}

/// Reads a decoder to its end within the decode budget, and charges what it produced.
/// Returns the bytes and whether the budget cut them short. A corrupt stream yields what was
/// decoded before the corruption.
fn inflate<R: Read>(sc: &mut Scanner<'_>, reader: R) -> (Vec<u8>, bool) {
    let (out, hit, _corrupt) = read_bounded(reader, sc.decode_budget());
    sc.bytes_scanned += len_u64(&out);
    (out, hit)
}

// ---------------------------------------------------------------------------------------------
// zlib and git

/// RFC 1950 §2.2: CM = 8 (deflate), CINFO ≤ 7, FCHECK makes the first two bytes a multiple of
/// 31, and no preset dictionary (git never uses one).
fn is_zlib(data: &[u8]) -> bool {
    let (Some(&cmf), Some(&flg)) = (data.first(), data.get(1)) else {
        return false;
    };
    cmf & 0x0f == 8
        && cmf >> 4 <= 7
        && (u16::from(cmf) * 256 + u16::from(flg)) % 31 == 0
        && flg & 0x20 == 0
}

/// A git object's header: `blob|tree|commit|tag <decimal size>\0`.
fn is_git_object(data: &[u8]) -> bool {
    let rest = [&b"blob "[..], b"tree ", b"commit ", b"tag "]
        .iter()
        .find_map(|p| data.strip_prefix(*p));
    let Some(rest) = rest else { return false };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    digits > 0 && rest.get(digits) == Some(&0)
}

/// `PACK`, then version 2 or 3 (big-endian).
fn is_pack(data: &[u8]) -> bool {
    data.starts_with(b"PACK") && matches!(data.get(4..8), Some([0, 0, 0, 2]) | Some([0, 0, 0, 3]))
}

/// Whether an archive's member `i` (from 0) is past the member limit or the scan's deadline;
/// if so, the reason the rest is skipped is noted (the deadline asked once, first).
fn past_member_limit(sc: &mut Scanner<'_>, i: u64) -> bool {
    let late = sc.out_of_time();
    if !late && i < sc.limits.max_members {
        return false;
    }
    sc.skip(if late {
        OUT_OF_TIME
    } else {
        "over the archive member limit"
    });
    true
}

/// Walks the objects of a git packfile and matches their inflated content, batched.
fn pack_objects(sc: &mut Scanner<'_>, data: &[u8], location: &OsStr, forms: &Forms) {
    let forms = forms.with("git-pack");
    let count = data
        .get(8..12)
        .map_or(0, |b| b.iter().fold(0u64, |a, &x| (a << 8) | u64::from(x)));
    let mut pos = 12usize;
    let mut batch: Vec<u8> = Vec::new();
    const BATCH: usize = 4 << 20;
    for i in 0..count {
        if past_member_limit(sc, i) {
            break;
        }
        let Some((kind, size, body)) = pack_entry_header(data, pos) else {
            break;
        };
        if size > sc.decode_budget() {
            sc.skip("a git pack object over the decode budget"); // an object too large for the budget: the rest is not parsed
            break;
        }
        let Some(input) = data.get(body..) else { break };
        let Some((out, used)) = inflate_exact(input, size) else {
            break;
        };
        sc.bytes_scanned += len_u64(&out);
        pos = body + used;
        if kind == 6 || kind == 7 {
            delta_inserts(&out, &mut batch);
        } else {
            batch.extend_from_slice(&out);
        }
        // NUL separates objects: never part of a value, not whitespace to the matcher.
        batch.push(0);
        if batch.len() >= BATCH {
            sc.match_bytes(&batch, location, &forms);
            batch.clear();
        }
    }
    sc.match_bytes(&batch, location, &forms);
}

/// Parses the header of the pack entry at `pos`: (type, inflated size, offset of the zlib
/// stream). OFS_DELTA (6) skips its base offset, REF_DELTA (7) its base object id (SHA-1, or
/// SHA-256 when the SHA-1 guess does not land on a zlib header).
fn pack_entry_header(data: &[u8], pos: usize) -> Option<(u8, u64, usize)> {
    let mut p = pos;
    let mut c = *data.get(p)?;
    p += 1;
    let kind = (c >> 4) & 7;
    let mut size = u64::from(c & 0x0f);
    let mut shift = 4u32;
    while c & 0x80 != 0 {
        c = *data.get(p)?;
        p += 1;
        if shift > 57 {
            return None;
        }
        size |= u64::from(c & 0x7f) << shift;
        shift += 7;
    }
    match kind {
        1..=4 => Some((kind, size, p)),
        6 => {
            for _ in 0..10 {
                let b = *data.get(p)?;
                p += 1;
                if b & 0x80 == 0 {
                    return Some((kind, size, p));
                }
            }
            None
        }
        7 => {
            if is_zlib(data.get(p + 20..)?) {
                Some((kind, size, p + 20))
            } else if is_zlib(data.get(p + 32..)?) {
                Some((kind, size, p + 32))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Inflates one zlib stream that should produce `size` bytes; returns the output and how many
/// input bytes the stream used. `None` if it is corrupt or longer than announced.
fn inflate_exact(input: &[u8], size: u64) -> Option<(Vec<u8>, usize)> {
    let cap = usize::try_from(size).ok()?;
    let mut d = flate2::Decompress::new(true);
    let mut out: Vec<u8> = Vec::with_capacity(cap.min(1 << 20) + 1);
    loop {
        if out.len() == out.capacity() {
            if out.len() > cap {
                return None;
            }
            out.reserve((cap + 1 - out.len()).clamp(64, 1 << 20));
        }
        let consumed = usize::try_from(d.total_in()).ok()?;
        let rest = input.get(consumed..)?;
        let status = d
            .decompress_vec(rest, &mut out, flate2::FlushDecompress::None)
            .ok()?;
        match status {
            flate2::Status::StreamEnd => break,
            flate2::Status::Ok => {}
            flate2::Status::BufError => {
                if out.len() < out.capacity() {
                    return None; // needs input we do not have
                }
            }
        }
        if out.len() > cap {
            return None;
        }
    }
    if out.len() != cap {
        return None;
    }
    Some((out, usize::try_from(d.total_in()).ok()?))
}

/// The literal bytes of a git delta's insert instructions, NUL between runs that a copy
/// instruction separates.
fn delta_inserts(delta: &[u8], out: &mut Vec<u8>) {
    let mut p = 0usize;
    // Source and target sizes (little-endian base-128).
    for _ in 0..2 {
        while let Some(&b) = delta.get(p) {
            p += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    while let Some(&op) = delta.get(p) {
        p += 1;
        if op & 0x80 != 0 {
            // Copy: one byte per set bit among the 4 offset and 3 size bits.
            p += (op & 0x7f).count_ones() as usize;
            out.push(0);
        } else if op == 0 {
            return;
        } else {
            let n = usize::from(op);
            let Some(lit) = delta.get(p..p + n) else {
                out.extend_from_slice(delta.get(p..).unwrap_or_default());
                return;
            };
            out.extend_from_slice(lit);
            p += n;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// tar

/// A tar header block: `ustar` magic at 257 (POSIX and GNU), or a valid v7 header checksum.
fn is_tar(data: &[u8]) -> bool {
    let Some(h) = data.get(..512) else {
        return false;
    };
    if h.first().is_none_or(|&b| b == 0) {
        return false;
    }
    let Some(sum_field) = h.get(148..156) else {
        return false;
    };
    let digits: Vec<u8> = sum_field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ' || b == 0)
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    if digits.is_empty() {
        return false;
    }
    let stored = digits.iter().fold(0u32, |a, &d| {
        a.saturating_mul(8).saturating_add(u32::from(d - b'0'))
    });
    let computed: u32 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(b)
            }
        })
        .sum();
    stored == computed
}

/// Scans the regular-file members of a tar archive.
fn tar_members(sc: &mut Scanner<'_>, data: &[u8], location: &OsStr, forms: &Forms) {
    let forms = forms.with("tar");
    let mut archive = tar::Archive::new(Cursor::new(data));
    let Ok(entries) = archive.entries() else {
        return;
    };
    for (i, entry) in entries.enumerate() {
        if past_member_limit(sc, u64::try_from(i).unwrap_or(u64::MAX)) {
            break;
        }
        let Ok(mut entry) = entry else {
            break; // corrupt from here on
        };
        let name = entry.path_bytes().into_owned();
        let loc = member_location(location, &name);
        sc.match_bytes(&name, &loc, &forms.with("member-name"));
        if let Some(target) = entry.link_name_bytes().map(|t| t.into_owned()) {
            sc.match_bytes(&target, &loc, &forms.with("symlink-target"));
        }
        let t = entry.header().entry_type();
        if !(t.is_file() || t.is_contiguous() || t.is_gnu_sparse()) {
            continue;
        }
        let budget = sc.decode_budget();
        if budget == 0 {
            sc.skip(OVER_BYTES);
            break;
        }
        let (out, hit, _) = read_bounded(&mut entry, budget);
        sc.bytes_scanned += len_u64(&out);
        if hit {
            sc.skip(OVER_BYTES);
        }
        scan_blob(sc, &out, &loc, &forms);
    }
}

// ---------------------------------------------------------------------------------------------
// zip

/// An end-of-central-directory record (`PK\x05\x06`) in the last 64 KiB + 22 bytes.
fn has_zip_end(data: &[u8]) -> bool {
    let from = data.len().saturating_sub(65_557);
    data.get(from..)
        .is_some_and(|tail| memchr::memmem::rfind(tail, b"PK\x05\x06").is_some())
}

/// Scans the members of a zip archive.
fn zip_members(sc: &mut Scanner<'_>, data: &[u8], location: &OsStr, forms: &Forms) {
    let Ok(mut archive) = zip::ZipArchive::new(Cursor::new(data)) else {
        // Not a readable zip: maybe text that happens to hold the magic.
        if memchr::memchr(0, data.get(..SNIFF).unwrap_or(data)).is_none() {
            text::scan_transforms(sc, data, location, forms);
        }
        return;
    };
    let forms = forms.with("zip");
    for i in 0..archive.len() {
        if past_member_limit(sc, u64::try_from(i).unwrap_or(u64::MAX)) {
            break;
        }
        let budget = sc.decode_budget();
        if budget == 0 {
            sc.skip(OVER_BYTES);
            break;
        }
        let (name, out, hit) = match archive.by_index(i) {
            Ok(mut member) => {
                let name = member.name_raw().to_vec();
                if member.is_dir() {
                    (name, Vec::new(), false)
                } else {
                    let (out, hit, _) = read_bounded(&mut member, budget);
                    (name, out, hit)
                }
            }
            Err(_) => {
                // Encrypted, or a compression method not built in (only stored and deflate).
                sc.skip("an encrypted or unsupported zip member");
                continue;
            }
        };
        let loc = member_location(location, &name);
        sc.match_bytes(&name, &loc, &forms.with("member-name"));
        sc.bytes_scanned += len_u64(&out);
        if hit {
            sc.skip(OVER_BYTES);
        }
        scan_blob(sc, &out, &loc, &forms);
    }
}

// ---------------------------------------------------------------------------------------------
// UTF-16

/// UTF-16 by byte-order mark, or mostly-ASCII UTF-16 by its zero bytes: in the first 4 KiB,
/// at least 40% of the bytes at odd (LE) or even (BE) positions are zero and at most 5% of the
/// others.
fn utf16_kind(data: &[u8]) -> Option<Kind> {
    if data.starts_with(&[0xff, 0xfe]) && !data.starts_with(&[0xff, 0xfe, 0, 0]) {
        return Some(Kind::Utf16Le { skip: 2 });
    }
    if data.starts_with(&[0xfe, 0xff]) {
        return Some(Kind::Utf16Be { skip: 2 });
    }
    let head = data.get(..4096).unwrap_or(data);
    let pairs = head.len() / 2;
    if pairs < 4 {
        return None;
    }
    let (mut even_zero, mut odd_zero) = (0usize, 0usize);
    for pair in head.chunks_exact(2) {
        if let [a, b] = pair {
            even_zero += usize::from(*a == 0);
            odd_zero += usize::from(*b == 0);
        }
    }
    if odd_zero * 10 >= pairs * 4 && even_zero * 20 <= pairs {
        return Some(Kind::Utf16Le { skip: 0 });
    }
    if even_zero * 10 >= pairs * 4 && odd_zero * 20 <= pairs {
        return Some(Kind::Utf16Be { skip: 0 });
    }
    None
}

/// UTF-16 code units to UTF-8; unpaired surrogates become U+FFFD.
fn utf16_to_utf8(data: &[u8], big_endian: bool) -> Vec<u8> {
    let units = data.chunks_exact(2).map(|c| match c {
        [a, b] if big_endian => u16::from_be_bytes([*a, *b]),
        [a, b] => u16::from_le_bytes([*a, *b]),
        _ => 0xfffd,
    });
    char::decode_utf16(units)
        .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect::<String>()
        .into_bytes()
}
