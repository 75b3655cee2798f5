//! Tests of the write-side scan's decoders: text forms, UTF-16, compressed streams, archives
//! (tar, zip, nested), bombs kept bounded, git objects and packfiles.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use keyveil_redact::Redactor;

use super::tests::{Dirs, V, redactor};
use super::*;

/// Scans one blob as a file's content; returns (forms found, report fields).
fn scan_bytes(data: &[u8], limits: ScanLimits) -> (Vec<(String, String)>, bool, u64) {
    let r = redactor();
    let mut sc = Scanner::new(&r, &limits, SystemTime::now(), std::time::Instant::now());
    sc.current = PathBuf::from("/f");
    decode::scan_blob(&mut sc, data, OsStr::new("/f"), &Forms::default());
    sc.flush();
    let truncated = sc.truncated;
    let bytes = sc.bytes_scanned;
    let rep = sc.finish(std::time::Instant::now());
    (
        rep.leaks
            .into_iter()
            .map(|l| (l.path.to_string_lossy().into_owned(), l.form))
            .collect(),
        truncated,
        bytes,
    )
}

/// Scans one blob as a file's content with redactor `r`.
fn scan_blob_with(r: &Redactor, data: &[u8]) -> ScanReport {
    let limits = ScanLimits::default();
    let mut sc = Scanner::new(r, &limits, SystemTime::now(), std::time::Instant::now());
    sc.current = PathBuf::from("/f");
    decode::scan_blob(&mut sc, data, OsStr::new("/f"), &Forms::default());
    sc.flush();
    sc.finish(std::time::Instant::now())
}

fn forms(data: &[u8]) -> Vec<String> {
    scan_bytes(data, ScanLimits::default())
        .0
        .into_iter()
        .map(|(_, f)| f)
        .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn tar(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn zip(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in members {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        z.start_file(*name, opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap().into_inner()
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

#[test]
fn raw_and_text_forms() {
    assert_eq!(forms(format!("x={V}\n").as_bytes()), ["raw"]);
    assert!(forms(b"nothing here\n").is_empty());
    // A value percent-encoded in lower case with '/' kept: the redactor knows that form, so it
    // is found as stored.
    let r = Redactor::new([("P", "p@ss:w0rd/x#y!Z9q")]);
    let rep = scan_blob_with(&r, b"http://u:p%40ss%3aw0rd/x%23y%21Z9q@h/");
    assert_eq!(rep.leaks.len(), 1);
    assert_eq!(rep.leaks[0].form, "raw");
}

#[test]
fn text_transforms() {
    assert_eq!(
        text::percent_decode(b"a%2fb%2F%zz%4").unwrap(),
        b"a/b/%zz%4".to_vec()
    );
    assert!(text::percent_decode(b"100% sure").is_none());
    assert_eq!(
        text::yaml_single_quoted(b"k: 'it''s'").unwrap(),
        b"k: 'it's'".to_vec()
    );
    assert_eq!(
        text::backslash_unescape(br#"a\"b\\c\'d\/e\nf\x41\u0042\ud83d\ude00\U0001F600\040\q"#)
            .unwrap(),
        "a\"b\\c'd/e\nfAB\u{1F600}\u{1F600} \\q".as_bytes().to_vec()
    );
    assert_eq!(
        text::html_unescape(b"&lt;&#38;&#x26;&#X3e;&quot;&apos;&bogus;&#;&").unwrap(),
        b"<&&>\"'&bogus;&#;&".to_vec()
    );
}

#[test]
fn utf16_both_byte_orders() {
    let text = format!("token: \"{V}\"\r\n");
    assert_eq!(forms(&utf16le(&text)), ["raw"]); // the redactor knows raw UTF-16
    let be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    assert_eq!(forms(&be), ["raw"]);
    // A JSON-escaped value in UTF-16 needs decoding first.
    let r = Redactor::new([("Q", "ya29.a0\"AfH6\\SMBx7Lq2Zr9Vn4Kw")]);
    let json = "{\"t\": \"ya29.a0\\\"AfH6\\\\SMBx7Lq2Zr9Vn4Kw\"}";
    let mut bom = vec![0xff, 0xfe];
    bom.extend(utf16le(json));
    let rep = scan_blob_with(&r, &bom);
    assert_eq!(rep.leaks.len(), 1, "{rep:?}");
    // Found either by the redactor directly (NUL is noise to it) or after decoding.
    assert!(
        rep.leaks[0].form.starts_with("utf-16le") || rep.leaks[0].form == "raw",
        "{rep:?}"
    );
    assert!(matches!(
        decode::detect(&utf16le("plain ascii text")),
        decode::Kind::Utf16Le { skip: 0 }
    ));
    assert_eq!(decode::detect(b"plain ascii text"), decode::Kind::Text);
}

#[test]
fn gzip_zlib_and_git_object() {
    assert_eq!(forms(&gzip(format!("x={V}").as_bytes())), ["gzip"]);
    assert_eq!(forms(&zlib(format!("x={V}").as_bytes())), ["zlib"]);
    // (Compressible content: a stored deflate block would show the value raw.)
    let body = format!("{{\"key\": \"{V}\", \"pad\": \"{}\"}}", "ab".repeat(100));
    let blob = format!("blob {}\0{body}", body.len());
    assert_eq!(forms(&zlib(blob.as_bytes())), ["git-object"]);
    // Not zlib after all: a text file starting with "x^" is still scanned as text.
    assert_eq!(forms(format!("x^ {V}").as_bytes()), ["raw"]);
}

#[test]
fn tar_and_tar_gz_members_by_magic() {
    let t = tar(&[
        ("a.txt", b"nothing"),
        ("dir/b.env", format!("T={V}").as_bytes()),
    ]);
    let (found, truncated, _) = scan_bytes(&t, ScanLimits::default());
    assert_eq!(found, [("/f!dir/b.env".to_owned(), "tar".to_owned())]);
    assert!(!truncated);
    let (found, _, _) = scan_bytes(&gzip(&t), ScanLimits::default());
    assert_eq!(found, [("/f!dir/b.env".to_owned(), "gzip+tar".to_owned())]);
}

#[test]
fn zip_members_and_nested_archives() {
    // (Compressible content, so that the value is not visible in the deflated bytes.)
    let cfg = format!("{{\"k\":\"{V}\",\"pad\":\"{}\"}}", "ab".repeat(100));
    let z = zip(&[("META-INF/MANIFEST.MF", b"x"), ("cfg.json", cfg.as_bytes())]);
    let (found, _, _) = scan_bytes(&z, ScanLimits::default());
    assert_eq!(found, [("/f!cfg.json".to_owned(), "zip".to_owned())]);
    // A jar in a tar.gz: depth 3.
    let t = gzip(&tar(&[("lib/app.jar", &z)]));
    let (found, truncated, _) = scan_bytes(&t, ScanLimits::default());
    assert_eq!(
        found,
        [(
            "/f!lib/app.jar!cfg.json".to_owned(),
            "gzip+tar+zip".to_owned()
        )]
    );
    assert!(!truncated);
    // One level deeper than allowed: not decoded, and the report says so.
    let deeper = zip(&[("x.tgz", &t)]);
    let (found, truncated, _) = scan_bytes(&deeper, ScanLimits::default());
    assert!(found.is_empty(), "{found:?}");
    assert!(truncated);
}

/// Runs a Python snippet in `dir` (python3 makes large compressed test inputs quickly).
fn python(dir: &Path, code: &str) {
    let o = Command::new("python3")
        .arg("-c")
        .arg(code)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn zip_bomb_and_gzip_bomb_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    python(
        dir.path(),
        &format!(
            r#"
import gzip, zipfile
big = b'\0' * (64 << 20) + b'{V}'
with zipfile.ZipFile('bomb.zip', 'w', zipfile.ZIP_DEFLATED) as z:
    for i in range(8):
        z.writestr('m%d' % i, big)
open('bomb.gz', 'wb').write(gzip.compress(big, 1))
# 42.zip-style: zips of zips, 10 copies per level, 5 levels.
inner = zipfile.ZipFile('l0.zip', 'w', zipfile.ZIP_DEFLATED); inner.writestr('z', b'\0' * (16 << 20)); inner.close()
for lvl in range(1, 5):
    with zipfile.ZipFile('l%d.zip' % lvl, 'w', zipfile.ZIP_DEFLATED) as z:
        for i in range(10):
            z.write('l%d.zip' % (lvl - 1), 'c%d.zip' % i)
"#
        ),
    );
    let limits = ScanLimits {
        max_member_bytes: 4 << 20,
        max_total_bytes: 24 << 20,
        ..ScanLimits::default()
    };
    for name in ["bomb.zip", "bomb.gz", "l4.zip"] {
        let data = std::fs::read(dir.path().join(name)).unwrap();
        assert!(data.len() < 2 << 20, "{name} is {} bytes", data.len());
        let start = std::time::Instant::now();
        let (found, truncated, bytes) = scan_bytes(&data, limits.clone());
        assert!(found.is_empty(), "{name}: {found:?}"); // the value sits past the cap
        assert!(truncated, "{name}");
        assert!(bytes <= limits.max_total_bytes, "{name}: {bytes}");
        assert!(start.elapsed() < Duration::from_secs(60), "{name}");
    }
}

#[test]
fn git_packfile_objects_and_deltas() {
    let d = Dirs::new();
    let secrets = vec![(
        "K".to_owned(),
        "sk-proj-Tz8Qw3Lm5Nx7Vb2Kc9Rd4Fg6Hj1".to_owned(),
    )];
    let since = SystemTime::now();
    // A big file changed slightly: git gc stores the second version as a delta whose insert
    // holds the value.
    d.sh(
        r#"git init -q . && python3 -c "print('\n'.join('line %d of a long config file' % i for i in range(3000)))" > big.txt && git add big.txt && git -c user.name=b -c user.email=b@e.invalid commit -qm one && python3 -c "
import os
lines = open('big.txt').read().split('\n'); lines.insert(1500, 'key=' + os.environ['K']); open('big.txt', 'w').write('\n'.join(lines))" && git -c user.name=b -c user.email=b@e.invalid commit -qam two && git checkout -q HEAD~1 -- big.txt && git -c user.name=b -c user.email=b@e.invalid commit -qam three && git gc -q --aggressive --prune=now"#,
        &secrets,
    );
    let r = scan(
        &d.scope(since, ScanLimits::default()),
        &Redactor::new(secrets),
    );
    let packs: Vec<&Leak> = r.leaks.iter().filter(|l| l.form == "git-pack").collect();
    assert_eq!(packs.len(), 1, "{r:?}");
    assert!(r.leaks.iter().all(|l| l.form == "git-pack"), "{r:?}");
    assert!(!r.truncated, "{r:?}");
}
