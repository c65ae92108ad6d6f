//! Shared test fixtures: a source tree holding every kind of entry, and a deep comparison.
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Builds a tree under `root` with regular, empty, large and sparse files, nested and empty
/// directories, symlinks (one with a non-UTF-8 target), a hard-link pair, a FIFO, a socket,
/// non-UTF-8 names, odd modes and an xattr. Returns whether xattrs are supported here.
pub fn make_fixture_tree(root: &Path) -> bool {
    std::fs::create_dir_all(root.join("dir/sub/deeper")).unwrap();
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::fs::write(root.join("hello.txt"), b"hello world\n").unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(root.join("dir/sub/deeper/note.md"), b"# deep\n".repeat(100)).unwrap();
    // A few MiB of mixed content: compressible text and incompressible noise.
    let mut big = Vec::new();
    let mut x = 0x1234_5678_u64;
    for i in 0..(3 << 20) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        big.push(if i % 3 == 0 { b'a' + (i % 26) as u8 } else { x as u8 });
    }
    std::fs::write(root.join("dir/big.bin"), &big).unwrap();
    // Sparse: data at 0 and at 20 MiB, 40 MiB long.
    let f = std::fs::File::create(root.join("sparse.img")).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"start", 0).unwrap();
    f.write_all_at(b"middle", 20 << 20).unwrap();
    f.set_len(40 << 20).unwrap();
    drop(f);
    std::os::unix::fs::symlink("hello.txt", root.join("link-to-hello")).unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(b"/nowhere/\xff\xfe"), root.join("dangling")).unwrap();
    std::fs::hard_link(root.join("hello.txt"), root.join("dir/hardlink-to-hello")).unwrap();
    let weird = root.join(OsStr::from_bytes(b"caf\xe9 \xff name"));
    std::fs::write(&weird, b"latin-1 name").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    std::fs::set_permissions(root.join("dir/sub"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::set_permissions(root.join("hello.txt"), std::fs::Permissions::from_mode(0o604)).unwrap();
    std::fs::set_permissions(root.join("dir/big.bin"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    let xattrs = xattr::set(root.join("hello.txt"), "user.s3bk", b"value\x00\xff").is_ok();
    // Distinct, nanosecond-precise mtimes.
    for (i, p) in walk(root).into_iter().enumerate() {
        let ts = rustix::fs::Timespec { tv_sec: 1_600_000_000 + i as i64, tv_nsec: 123_456_789 + i as i64 };
        let times = rustix::fs::Timestamps { last_access: ts, last_modification: ts };
        rustix::fs::utimensat(rustix::fs::CWD, &p, &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
    }
    xattrs
}

/// Every path under `root` (root excluded), children before parents so times can be set last.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        if p.symlink_metadata().unwrap().is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// Asserts that `b` holds exactly what `a` holds: names, kinds, bytes, modes, mtimes (ns),
/// link targets, xattrs, hard-link groups and sparseness.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let mut pa: Vec<PathBuf> = walk(a).iter().map(|p| p.strip_prefix(a).unwrap().to_path_buf()).collect();
    let mut pb: Vec<PathBuf> = walk(b).iter().map(|p| p.strip_prefix(b).unwrap().to_path_buf()).collect();
    pa.sort();
    pb.sort();
    assert_eq!(pa, pb, "different entries");
    let mut groups_a: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    let mut groups_b: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    for rel in &pa {
        let (x, y) = (a.join(rel), b.join(rel));
        let (ma, mb) = (x.symlink_metadata().unwrap(), y.symlink_metadata().unwrap());
        assert_eq!(ma.file_type(), mb.file_type(), "{rel:?}: kind");
        assert_eq!((ma.mtime(), ma.mtime_nsec()), (mb.mtime(), mb.mtime_nsec()), "{rel:?}: mtime");
        assert_eq!(ma.uid(), mb.uid(), "{rel:?}: uid");
        assert_eq!(ma.gid(), mb.gid(), "{rel:?}: gid");
        if ma.file_type().is_symlink() {
            assert_eq!(std::fs::read_link(&x).unwrap(), std::fs::read_link(&y).unwrap(), "{rel:?}: target");
            continue;
        }
        assert_eq!(ma.mode(), mb.mode(), "{rel:?}: mode");
        if ma.is_file() {
            assert_eq!(ma.len(), mb.len(), "{rel:?}: size");
            assert!(std::fs::read(&x).unwrap() == std::fs::read(&y).unwrap(), "{rel:?}: content");
            if ma.blocks() * 512 < ma.len() / 2 {
                assert!(mb.blocks() * 512 < mb.len() / 2, "{rel:?}: restored without holes ({} blocks)", mb.blocks());
            }
            if ma.nlink() > 1 {
                groups_a.entry(ma.ino()).or_default().push(rel.clone());
                groups_b.entry(mb.ino()).or_default().push(rel.clone());
            }
        }
        let xa: Vec<_> = xattr::list(&x).map(|l| l.collect()).unwrap_or_default();
        let xb: Vec<_> = xattr::list(&y).map(|l| l.collect()).unwrap_or_default();
        assert_eq!(xa, xb, "{rel:?}: xattr names");
        for n in xa {
            assert_eq!(xattr::get(&x, &n).unwrap(), xattr::get(&y, &n).unwrap(), "{rel:?}: xattr {n:?}");
        }
    }
    let mut ga: Vec<Vec<PathBuf>> = groups_a
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    let mut gb: Vec<Vec<PathBuf>> = groups_b
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    ga.sort();
    gb.sort();
    assert_eq!(ga, gb, "hard-link groups");
}

/// The `s3bk` binary isolated in `root`: HOME and the XDG folders inside it, no inherited
/// `S3BK_*` or `AWS_*` variables, no `~/.aws` files and no instance-metadata lookups, `root` as
/// the working directory, and a timeout so nothing can hang.
pub fn isolated_s3bk(root: &Path) -> assert_cmd::Command {
    let mut c = assert_cmd::cargo::cargo_bin_cmd!("s3bk");
    isolate(&mut c, root);
    c
}

/// Applies [`isolated_s3bk`]'s isolation to any command (e.g. s3bk run through `setpriv`).
pub fn isolate(c: &mut assert_cmd::Command, root: &Path) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("S3BK_") || k.starts_with("AWS_") || k == "RUST_LOG" {
            c.env_remove(&*k);
        }
    }
    c.env("HOME", root.join("home"))
        .env("XDG_CONFIG_HOME", root.join("config"))
        .env("XDG_DATA_HOME", root.join("data"))
        .env("XDG_CACHE_HOME", root.join("cache"))
        .env("AWS_CONFIG_FILE", root.join("no-aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", root.join("no-aws-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_BACKTRACE", "0")
        .current_dir(root)
        .timeout(std::time::Duration::from_secs(120));
}

/// Repository settings for tests: a cheap KDF and small chunks, so tests stay fast.
pub fn cheap_init() -> s3bk::repo::InitOptions {
    s3bk::repo::InitOptions {
        kdf: s3bk::keyfile::KdfParams { m_cost: 64, t_cost: 1, p_cost: 1 },
        chunker: Some(s3bk::chunker::ChunkerParams { min: 16 << 10, avg: 64 << 10, max: 256 << 10, seed: 7 }),
        pack_size: 1 << 20,
        ..s3bk::repo::InitOptions::default()
    }
}
