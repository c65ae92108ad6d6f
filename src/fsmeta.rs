//! Filesystem metadata: reading it into [`Node`]s at backup and writing it back at restore.
//!
//! This is the only module that stats, lists extended attributes, probes sparse regions, creates
//! special files or changes ownership, modes and times. Keeping that in one place keeps the
//! platform-specific rules (never follow symlinks, chown before chmod, times last) together and
//! lets the rest of the crate work with plain [`Node`] values. Nothing here reads or writes file
//! content, and nothing here fails because of metadata that is merely unreadable: such problems
//! come back as warning strings for the caller to report.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::{LazyLock, Mutex};

use rustix::fs::{AtFlags, CWD, FileType, Gid, Mode, OFlags, SeekFrom, Timespec, Timestamps, Uid};
use rustix::io::Errno;

use crate::tree::{Node, NodeKind, Xattr};

const NS_PER_SEC: i64 = 1_000_000_000;

/// Reads everything [`Node`] records about one entry, except its content, subtree and
/// `changed_while_read`, which belong to the caller.
///
/// `meta` must come from [`std::fs::symlink_metadata`] (or an equivalent `lstat`) of `path`, so
/// a symlink is recorded as a symlink. Special files are never opened (opening a FIFO would
/// block, opening a device can have side effects). Extended attributes are read with the
/// `l*xattr` calls, so a symlink's own attributes are recorded, never its target's.
///
/// `previous` is the same entry's node in an earlier snapshot, if any. When its kind, inode and
/// ctime (ns) are unchanged, its extended attributes and symlink target are taken from it
/// instead of asking the kernel: setting an xattr updates the ctime, and a symlink's target
/// cannot change without a new inode, so those values cannot differ. This spares an unchanged
/// re-backup one or two path lookups per entry.
///
/// Returns the node and warnings about metadata that could not be read (an unreadable xattr, a
/// symlink that vanished between `lstat` and `readlink`); those never make the call fail.
pub fn node_from_metadata(name: Vec<u8>, path: &Path, meta: &Metadata, previous: Option<&Node>) -> (Node, Vec<String>) {
    let mut warnings = Vec::new();
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_symlink() {
        NodeKind::Symlink
    } else if ft.is_file() {
        NodeKind::File
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else if ft.is_socket() {
        NodeKind::Socket
    } else if ft.is_char_device() {
        NodeKind::CharDevice
    } else if ft.is_block_device() {
        NodeKind::BlockDevice
    } else {
        // Linux has no other file types; recording it as an empty file is the least harmful.
        warnings.push(format!("{}: unknown file type, recorded as a file", path.display()));
        NodeKind::File
    };

    let mut node = Node::new(name, kind);
    node.mode = meta.mode() & 0o7777;
    node.uid = meta.uid();
    node.gid = meta.gid();
    node.user = user_name(node.uid);
    node.group = group_name(node.gid);
    node.mtime_ns = to_ns(meta.mtime(), meta.mtime_nsec());
    node.ctime_ns = to_ns(meta.ctime(), meta.ctime_nsec());
    // Only a regular file's size means content; a symlink's is its target length, a
    // directory's is filesystem-specific.
    node.size = if kind == NodeKind::File { meta.size() } else { 0 };
    node.inode = meta.ino();
    node.device = meta.dev();
    node.links = meta.nlink();
    if matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice) {
        node.rdev = meta.rdev();
    }
    // An empty target marks one that could not be read last time: read it again.
    let reusable = |o: &&Node| {
        o.kind == kind
            && o.inode == node.inode
            && o.ctime_ns == node.ctime_ns
            && o.link_target.as_ref().is_none_or(|t| !t.is_empty())
    };
    if let Some(old) = previous.filter(reusable) {
        node.link_target = old.link_target.clone();
        node.xattrs = old.xattrs.clone();
        return (node, warnings);
    }
    if kind == NodeKind::Symlink {
        match std::fs::read_link(path) {
            Ok(target) => node.link_target = Some(target.into_os_string().into_vec()),
            Err(e) => {
                // The tree schema requires a target on every symlink; an empty one marks it
                // unreadable (Linux cannot create an empty-target symlink, so restore reports it).
                warnings.push(format!("cannot read symlink {}: {e}", path.display()));
                node.link_target = Some(Vec::new());
            }
        }
    }
    node.xattrs = read_xattrs(path, &mut warnings);
    (node, warnings)
}

/// Seconds plus nanoseconds as i64 nanoseconds, saturating outside roughly 1677..2262.
fn to_ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(NS_PER_SEC).saturating_add(nsec)
}

/// The `l*xattr` attributes of `path`, sorted by name; problems become warnings.
fn read_xattrs(path: &Path, warnings: &mut Vec<String>) -> Vec<Xattr> {
    // xattr::list/get use llistxattr/lgetxattr on Linux (the `_deref` variants follow links).
    let names = match xattr::list(path) {
        Ok(names) => names,
        // A filesystem without xattrs simply has none to record.
        Err(e) if e.raw_os_error() == Some(Errno::OPNOTSUPP.raw_os_error()) => return Vec::new(),
        Err(e) => {
            warnings.push(format!("cannot read xattrs of {}: {e}", path.display()));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for name in names {
        match xattr::get(path, &name) {
            Ok(Some(value)) => out.push(Xattr { name: name.into_vec(), value }),
            // Removed between list and get: nothing to record.
            Ok(None) => {}
            Err(e) => warnings.push(format!("cannot read xattr {} of {}: {e}", name.to_string_lossy(), path.display())),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

// Name lookups go through NSS (files, LDAP, ...) and a backup sees the same few ids over and
// over, so each id is resolved once per process. A miss (`None`) is cached too.
static USERS: LazyLock<Mutex<HashMap<u32, Option<String>>>> = LazyLock::new(Default::default);
static GROUPS: LazyLock<Mutex<HashMap<u32, Option<String>>>> = LazyLock::new(Default::default);

fn user_name(uid: u32) -> Option<String> {
    let mut cache = USERS.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .entry(uid)
        .or_insert_with(|| uzers::get_user_by_uid(uid).and_then(|u| u.name().to_str().map(String::from)))
        .clone()
}

fn group_name(gid: u32) -> Option<String> {
    let mut cache = GROUPS.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .entry(gid)
        .or_insert_with(|| uzers::get_group_by_gid(gid).and_then(|g| g.name().to_str().map(String::from)))
        .clone()
}

/// The data regions of `file` as `(offset, len)` pairs in file order, found with
/// `SEEK_DATA`/`SEEK_HOLE`; everything between them is a hole.
///
/// `size` is the length recorded at `lstat` time; regions are clipped to it. Adjacent regions
/// are merged. A file that is all hole gives an empty list. When the filesystem cannot answer
/// (`EINVAL`/`EOPNOTSUPP`), a non-empty file is reported as one region `(0, size)`. The file
/// offset is left at 0, ready for reading.
pub fn data_extents(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let result = probe_extents(file, size);
    // Rewind even after an error so the caller can still read the file sequentially.
    rustix::fs::seek(file, SeekFrom::Start(0))?;
    result
}

fn probe_extents(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let unsupported = |e: Errno| e == Errno::INVAL || e == Errno::OPNOTSUPP;
    let whole = || {
        if size == 0 { Vec::new() } else { vec![(0, size)] }
    };
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0;
    while pos < size {
        let start = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(start) => start,
            // ENXIO: no data at or after `pos` (the rest is a hole, or the file shrank).
            Err(Errno::NXIO) => break,
            Err(e) if unsupported(e) => return Ok(whole()),
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = match rustix::fs::seek(file, SeekFrom::Hole(start)) {
            Ok(end) => end.min(size),
            // The file shrank under us; what is left of the range ends at the recorded size.
            Err(Errno::NXIO) => size,
            Err(e) if unsupported(e) => return Ok(whole()),
            Err(e) => return Err(e.into()),
        };
        if end <= start {
            break;
        }
        match out.last_mut() {
            Some((off, len)) if *off + *len == start => *len += end - start,
            _ => out.push((start, end - start)),
        }
        pos = end;
    }
    Ok(out)
}

/// Creates the special file `node` describes at `path`: a FIFO, a socket node, or a character
/// or block device with `node.rdev`.
///
/// Never follows or replaces anything: `mknod` fails with `AlreadyExists` when `path` exists,
/// even as a dangling symlink. Devices need `CAP_MKNOD` (root); without it the `EPERM` comes
/// back as is. The node is created with mode 0600 so nobody else can use it before
/// [`apply_metadata`] sets its owner and real mode. Other kinds give `InvalidInput`.
pub fn create_special(path: &Path, node: &Node) -> io::Result<()> {
    let (file_type, dev) = match node.kind {
        NodeKind::Fifo => (FileType::Fifo, 0),
        NodeKind::Socket => (FileType::Socket, 0),
        NodeKind::CharDevice => (FileType::CharacterDevice, node.rdev),
        NodeKind::BlockDevice => (FileType::BlockDevice, node.rdev),
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("create_special: {other:?} is not a special file"),
            ));
        }
    };
    rustix::fs::mknodat(CWD, path, file_type, Mode::RUSR | Mode::WUSR, dev)?;
    Ok(())
}

/// Which parts of the metadata [`apply_metadata`] restores besides mode and times.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Restore owner and group ids (only root can; callers set this when running as root).
    pub owner: bool,
    /// Restore extended attributes.
    pub xattrs: bool,
}

/// Sets the metadata `node` records on the already-created entry at `path`, never following a
/// symlink at `path`.
///
/// Order matters: owner first (`chown` clears set-id bits), then mode (skipped for symlinks,
/// whose mode Linux cannot change), then xattrs, then times last, because each of the others
/// may bump them. Both atime and mtime are set to `node.mtime_ns` (atime is not recorded).
/// Directories should get this after their entries are restored, or creating the entries
/// would change their mtime again. Every failure becomes a warning; none stops the others.
pub fn apply_metadata(path: &Path, node: &Node, opts: &ApplyOptions) -> Vec<String> {
    let mut warnings = Vec::new();
    let shown = path.display();

    if opts.owner {
        // -1 means "leave unchanged" to chown, so it cannot be restored as an id.
        let uid = (node.uid != u32::MAX).then(|| Uid::from_raw(node.uid));
        let gid = (node.gid != u32::MAX).then(|| Gid::from_raw(node.gid));
        if let Err(e) = rustix::fs::chownat(CWD, path, uid, gid, AtFlags::SYMLINK_NOFOLLOW) {
            warnings.push(format!("cannot set owner {}:{} on {shown}: {}", node.uid, node.gid, io::Error::from(e)));
        }
    }

    if node.kind != NodeKind::Symlink
        && let Err(e) = chmod_nofollow(path, node.mode & 0o7777)
    {
        warnings.push(format!("cannot set mode {:o} on {shown}: {e}", node.mode & 0o7777));
    }

    if opts.xattrs {
        for x in &node.xattrs {
            // xattr::set is lsetxattr on Linux: a symlink's own attributes, never its target's.
            if let Err(e) = xattr::set(path, OsStr::from_bytes(&x.name), &x.value) {
                warnings.push(format!("cannot set xattr {} on {shown}: {e}", String::from_utf8_lossy(&x.name)));
            }
        }
    }

    let ts = Timespec { tv_sec: node.mtime_ns.div_euclid(NS_PER_SEC), tv_nsec: node.mtime_ns.rem_euclid(NS_PER_SEC) };
    let times = Timestamps { last_access: ts, last_modification: ts };
    if let Err(e) = rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW) {
        warnings.push(format!("cannot set times on {shown}: {}", io::Error::from(e)));
    }
    warnings
}

/// `chmod` that refuses to act through a symlink.
///
/// Linux's `fchmodat` has no working `AT_SYMLINK_NOFOLLOW`, and opening the entry for `fchmod`
/// could block (FIFO) or have side effects (devices). So the entry is pinned with an `O_PATH`
/// descriptor opened `O_NOFOLLOW`, checked not to be a symlink, and changed through its
/// `/proc/self/fd` link, as glibc does; that cannot be redirected by swapping the path.
fn chmod_nofollow(path: &Path, mode: u32) -> io::Result<()> {
    let fd = rustix::fs::open(path, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
    let stat = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink {
        return Err(io::Error::other("is a symlink, its mode cannot be changed"));
    }
    let mode = Mode::from_raw_mode(mode);
    let via_proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
    match rustix::fs::chmodat(CWD, via_proc.as_str(), mode, AtFlags::empty()) {
        // No /proc mounted: fall back to the path, just checked not to be a symlink.
        Err(Errno::NOENT) => Ok(rustix::fs::chmodat(CWD, path, mode, AtFlags::empty())?),
        other => Ok(other?),
    }
}

/// Whether a regular file may have holes: it occupies fewer bytes (`st_blocks * 512`) than its
/// length.
///
/// A cheap hint so [`data_extents`] is only called where it can find something. It can be true
/// for files without holes (compressed or inline-data filesystems) and is false for anything
/// that is not a regular file.
pub fn is_sparse_candidate(meta: &Metadata) -> bool {
    meta.is_file() && meta.blocks().saturating_mul(512) < meta.size()
}

/// Sets the length of a file being restored to `len` (`ftruncate`), leaving any unwritten tail
/// as a hole.
///
/// Restore makes a sparse file by never writing its holes: it seeks past a hole in the middle
/// and writes the next data region, which leaves the skipped range unallocated. A trailing hole
/// has no data after it to write, so the length is set with this call instead; growing a file
/// with `ftruncate` allocates nothing. A file longer than `len` is cut down to it.
pub fn punch_hole_or_extend(file: &File, len: u64) -> io::Result<()> {
    file.set_len(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};
    use std::os::unix::fs::symlink;

    const MIB: u64 = 1024 * 1024;

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    fn lnode(path: &Path) -> (Node, Vec<String>) {
        let meta = std::fs::symlink_metadata(path).unwrap();
        node_from_metadata(path.file_name().unwrap().as_bytes().to_vec(), path, &meta, None)
    }

    fn no_owner() -> ApplyOptions {
        ApplyOptions { owner: false, xattrs: false }
    }

    #[test]
    fn regular_file_size_mode_and_exact_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();

        for mtime_ns in [1_234_567_890_123_456_789i64, -1_500_000_001] {
            let mut want = Node::new(b"f".to_vec(), NodeKind::File);
            want.mode = 0o640;
            want.mtime_ns = mtime_ns;
            let w = apply_metadata(&path, &want, &no_owner());
            assert!(w.is_empty(), "{w:?}");

            let (node, w) = lnode(&path);
            assert!(w.is_empty(), "{w:?}");
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert_eq!(node.name, b"f");
            assert_eq!(node.kind, NodeKind::File);
            assert_eq!(node.size, 10);
            assert_eq!(node.mode, 0o640);
            assert_eq!(node.mtime_ns, mtime_ns);
            assert_eq!(node.inode, meta.ino());
            assert_eq!(node.device, meta.dev());
            assert_eq!(node.links, 1);
            assert_eq!(node.rdev, 0);
            assert_eq!((node.uid, node.gid), (meta.uid(), meta.gid()));
            if node.uid == 0 {
                assert_eq!(node.user.as_deref(), Some("root"));
            }
            assert!(node.link_target.is_none());
        }
    }

    #[test]
    fn non_utf8_symlink_target_is_byte_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        symlink(OsStr::from_bytes(b"tar\xffget"), &path).unwrap();
        let (node, w) = lnode(&path);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(node.kind, NodeKind::Symlink);
        assert_eq!(node.link_target.as_deref(), Some(&b"tar\xffget"[..]));
        assert_eq!(node.size, 0);
    }

    #[test]
    fn fifo_is_created_and_recorded_without_opening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let mut want = Node::new(b"p".to_vec(), NodeKind::Fifo);
        want.mode = 0o620;
        want.mtime_ns = 1_000_000_007;
        create_special(&path, &want).unwrap();
        assert!(apply_metadata(&path, &want, &no_owner()).is_empty());

        let (node, w) = lnode(&path);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(node.kind, NodeKind::Fifo);
        assert_eq!(node.mode, 0o620);
        assert_eq!(node.mtime_ns, 1_000_000_007);
        assert_eq!(node.size, 0);

        // Never replaces what is there.
        let e = create_special(&path, &want).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        let e = create_special(&dir.path().join("x"), &Node::new(b"x".to_vec(), NodeKind::File)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn sockets_are_recorded_and_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(lnode(&path).0.kind, NodeKind::Socket);

        let made = dir.path().join("s2");
        create_special(&made, &Node::new(b"s2".to_vec(), NodeKind::Socket)).unwrap();
        assert_eq!(lnode(&made).0.kind, NodeKind::Socket);
    }

    #[test]
    fn char_device_needs_privilege() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("null");
        let mut want = Node::new(b"null".to_vec(), NodeKind::CharDevice);
        want.rdev = rustix::fs::makedev(1, 3);
        match create_special(&path, &want) {
            Ok(()) => {
                let (node, _) = lnode(&path);
                assert_eq!(node.kind, NodeKind::CharDevice);
                assert_eq!(node.rdev, want.rdev);
            }
            // Without CAP_MKNOD (non-root, or a restricted container) the error comes back.
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}"),
        }
    }

    #[test]
    fn sparse_file_extents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let mut f = File::options().read(true).write(true).create_new(true).open(&path).unwrap();
        f.write_all(b"a").unwrap();
        f.seek(io::SeekFrom::Start(64 * MIB)).unwrap();
        f.write_all(b"b").unwrap();
        punch_hole_or_extend(&f, 128 * MIB).unwrap();
        f.sync_all().unwrap();
        let meta = f.metadata().unwrap();
        assert_eq!(meta.len(), 128 * MIB);

        let ext = data_extents(&f, meta.len()).unwrap();
        assert_eq!(f.stream_position().unwrap(), 0, "offset must be rewound");
        if is_sparse_candidate(&meta) {
            let total: u64 = ext.iter().map(|e| e.1).sum();
            assert!(total < 8 * MIB, "{ext:?}");
            let covers = |off: u64| ext.iter().any(|&(o, l)| o <= off && off < o + l);
            assert!(covers(0) && covers(64 * MIB), "{ext:?}");
            assert!(ext.windows(2).all(|w| w[0].0 + w[0].1 < w[1].0), "sorted, merged: {ext:?}");
            assert!(ext.iter().all(|&(o, l)| l > 0 && o + l <= 128 * MIB), "{ext:?}");
        } else {
            // The filesystem allocated the holes: the fallback is one region.
            assert_eq!(ext, vec![(0, 128 * MIB)]);
        }
    }

    #[test]
    fn all_hole_and_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("holes");
        let f = File::create(&path).unwrap();
        assert_eq!(data_extents(&f, 0).unwrap(), vec![]);
        punch_hole_or_extend(&f, 4 * MIB).unwrap();
        let meta = f.metadata().unwrap();
        let ext = data_extents(&f, 4 * MIB).unwrap();
        if is_sparse_candidate(&meta) {
            assert_eq!(ext, vec![]);
        } else {
            assert_eq!(ext, vec![(0, 4 * MIB)]);
        }
        // A symlink occupies no blocks yet has a length; it is never a candidate.
        let link = dir.path().join("link");
        symlink("holes", &link).unwrap();
        assert!(!is_sparse_candidate(&std::fs::symlink_metadata(&link).unwrap()));
    }

    #[test]
    fn user_xattr_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::write(&src, b"x").unwrap();
        if let Err(e) = xattr::set(&src, "user.test", b"hello") {
            // Only a filesystem without user xattrs may skip this test, and then reading must
            // quietly find none.
            assert_eq!(e.raw_os_error(), Some(Errno::OPNOTSUPP.raw_os_error()), "{e}");
            let (node, w) = lnode(&src);
            assert!(node.xattrs.is_empty() && w.is_empty());
            return;
        }
        xattr::set(&src, "user.a", b"\x00\xff").unwrap();
        let (node, w) = lnode(&src);
        assert!(w.is_empty(), "{w:?}");
        assert!(node.xattrs.windows(2).all(|w| w[0].name < w[1].name), "sorted");
        let user: Vec<_> = node.xattrs.iter().filter(|x| x.name.starts_with(b"user.")).cloned().collect();
        assert_eq!(
            user,
            vec![
                Xattr { name: b"user.a".to_vec(), value: b"\x00\xff".to_vec() },
                Xattr { name: b"user.test".to_vec(), value: b"hello".to_vec() },
            ]
        );

        let dst = dir.path().join("dst");
        std::fs::write(&dst, b"x").unwrap();
        let w = apply_metadata(&dst, &node, &ApplyOptions { owner: false, xattrs: true });
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(xattr::get(&dst, "user.test").unwrap().as_deref(), Some(&b"hello"[..]));
        assert_eq!(xattr::get(&dst, "user.a").unwrap().as_deref(), Some(&b"\x00\xff"[..]));
    }

    #[test]
    fn unchanged_ctime_reuses_xattrs_and_target_and_a_change_rereads_them() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let link = dir.path().join("l");
        symlink("target-a", &link).unwrap();
        let node = |p: &Path, prev: Option<&Node>| {
            let meta = std::fs::symlink_metadata(p).unwrap();
            node_from_metadata(b"n".to_vec(), p, &meta, prev).0
        };
        // A previous node that differs only in what the kernel would be asked for: taken as is
        // while the inode and ctime match, since those values cannot have changed.
        let mut prev_file = node(&file, None);
        prev_file.xattrs = vec![Xattr { name: b"user.old".to_vec(), value: b"1".to_vec() }];
        assert_eq!(node(&file, Some(&prev_file)).xattrs, prev_file.xattrs);
        let mut prev_link = node(&link, None);
        assert_eq!(prev_link.link_target.as_deref(), Some(&b"target-a"[..]));
        prev_link.link_target = Some(b"remembered".to_vec());
        assert_eq!(node(&link, Some(&prev_link)).link_target.as_deref(), Some(&b"remembered"[..]));
        // An unreadable target last time (empty) is read again.
        prev_link.link_target = Some(Vec::new());
        assert_eq!(node(&link, Some(&prev_link)).link_target.as_deref(), Some(&b"target-a"[..]));

        // A changed ctime (chmod here; setting an xattr does the same) means reading again.
        let mut perms = std::fs::metadata(&file).unwrap().permissions();
        std::thread::sleep(std::time::Duration::from_millis(20));
        perms.set_mode(0o600);
        std::fs::set_permissions(&file, perms).unwrap();
        let again = node(&file, Some(&prev_file));
        assert_ne!(again.ctime_ns, prev_file.ctime_ns);
        assert!(again.xattrs.iter().all(|x| x.name != b"user.old"), "{:?}", again.xattrs);
        // Another inode under the same name (the link replaced) is read again too.
        std::fs::remove_file(&link).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        symlink("target-b", &link).unwrap();
        prev_link.link_target = Some(b"remembered".to_vec());
        assert_eq!(node(&link, Some(&prev_link)).link_target.as_deref(), Some(&b"target-b"[..]));
    }

    #[test]
    fn apply_on_symlink_leaves_target_alone() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"t").unwrap();
        let mut t = Node::new(b"target".to_vec(), NodeKind::File);
        t.mode = 0o600;
        t.mtime_ns = 111_000_000_111;
        assert!(apply_metadata(&target, &t, &no_owner()).is_empty());
        let before = std::fs::metadata(&target).unwrap();

        let link = dir.path().join("link");
        symlink(&target, &link).unwrap();
        let mut l = Node::new(b"link".to_vec(), NodeKind::Symlink);
        l.link_target = Some(target.as_os_str().as_bytes().to_vec());
        l.mode = 0o777;
        l.mtime_ns = 222_000_000_222;
        l.uid = 4321;
        l.gid = 4322;
        let w = apply_metadata(&link, &l, &ApplyOptions { owner: is_root(), xattrs: false });
        assert!(w.is_empty(), "{w:?}");

        let after = std::fs::metadata(&target).unwrap();
        assert_eq!(to_ns(after.mtime(), after.mtime_nsec()), 111_000_000_111);
        assert_eq!(after.mode() & 0o7777, 0o600);
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        let (link_node, _) = lnode(&link);
        assert_eq!(link_node.mtime_ns, 222_000_000_222);
        if is_root() {
            assert_eq!((link_node.uid, link_node.gid), (4321, 4322));
        }
    }

    #[test]
    fn setuid_mode_survives_chown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("suid");
        std::fs::write(&path, b"#!/bin/sh\n").unwrap();
        let mut want = Node::new(b"suid".to_vec(), NodeKind::File);
        want.mode = 0o4755;
        want.uid = 1000;
        want.gid = 1000;
        want.mtime_ns = 5;
        let w = apply_metadata(&path, &want, &ApplyOptions { owner: is_root(), xattrs: false });
        assert!(w.is_empty(), "{w:?}");
        let (node, _) = lnode(&path);
        assert_eq!(node.mode, 0o4755);
        if is_root() {
            assert_eq!((node.uid, node.gid), (1000, 1000));
        }
    }
}
