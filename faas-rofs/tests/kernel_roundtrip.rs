//! Images built from generated trees pass `fsck.erofs`, mount with the
//! kernel's erofs, match their source (`diff -r`, stat), and the loader
//! agrees with the kernel for every path. Needs root and erofs-utils.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::{Mount, cmp_streaming, compare_loader, compare_stat, diff_r, fsck};
use faas_core::ImageFs;
use faas_rofs::{Builder, MmapImage};

const GIB: u64 = 1 << 30;

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn set_mtime(p: &Path, secs: i64, nsec: i64) {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, utimensat};
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: nsec,
    };
    utimensat(
        CWD,
        p,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .expect("utimensat");
}

/// The tree of the issue: deep directories, 10,000 files in one directory,
/// 255-byte and non-ASCII names, empty files, 4096/4097-byte files,
/// symlinks, hardlinks, a sparse 5 GiB file, xattrs, odd modes and owners,
/// devices, a fifo, a socket, duplicate contents.
fn make_tree(root: &Path, many: usize, sparse: bool) {
    let mut deep = root.to_path_buf();
    for i in 0..40 {
        deep.push(format!("d{i}"));
    }
    fs::create_dir_all(&deep).expect("mkdir deep");
    fs::write(deep.join("bottom.txt"), b"deep").expect("write");
    let m = root.join("many");
    fs::create_dir(&m).expect("mkdir many");
    for i in 0..many {
        fs::write(m.join(format!("file-{i:05}.txt")), format!("{i}\n")).expect("write");
    }
    fs::write(root.join("n".repeat(255)), b"long name").expect("write");
    fs::write(root.join("é名前-ünïcødé-🚀.txt"), "non-ascii").expect("write");
    fs::write(root.join("empty"), b"").expect("write");
    fs::write(root.join("exact-4096"), pseudo_random(4096, 1)).expect("write");
    fs::write(root.join("exact-4097"), pseudo_random(4097, 2)).expect("write");
    fs::write(root.join("big-1m"), pseudo_random(1 << 20, 3)).expect("write");
    fs::create_dir(root.join("dups")).expect("mkdir");
    for i in 0..3 {
        fs::write(root.join(format!("dups/copy{i}")), pseudo_random(10_000, 4)).expect("write");
    }
    std::os::unix::fs::symlink("exact-4096", root.join("link-rel")).expect("symlink");
    std::os::unix::fs::symlink("/nonexistent/target", root.join("link-dangling")).expect("symlink");
    std::os::unix::fs::symlink("x/".repeat(600), root.join("link-long")).expect("symlink");
    fs::write(root.join("hard-a"), b"hardlinked").expect("write");
    fs::hard_link(root.join("hard-a"), root.join("dups/hard-b")).expect("link");
    fs::hard_link(root.join("hard-a"), root.join("many/hard-c")).expect("link");
    if sparse {
        let f = fs::File::create(root.join("sparse-5g")).expect("create");
        f.set_len(5 * GIB).expect("truncate");
        f.write_all_at(b"in the middle", 3 * GIB + 12345)
            .expect("write");
        f.write_all_at(b"at the end", 5 * GIB - 10).expect("write");
    }
    let x = root.join("xattrs");
    fs::write(&x, b"x").expect("write");
    xattr::set(&x, "user.short", b"v").expect("setxattr user");
    xattr::set(&x, "user.big", &pseudo_random(1000, 5)).expect("setxattr");
    xattr::set(&x, "trusted.t", b"trusted value").expect("setxattr trusted");
    xattr::set(root.join("many"), "user.dir", b"on a directory").expect("setxattr dir");
    for (name, mode) in [
        ("suid", 0o4751),
        ("sgid", 0o2700),
        ("none", 0o000),
        ("all", 0o7777),
    ] {
        let p = root.join(format!("mode-{name}"));
        fs::write(&p, name).expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
    }
    fs::create_dir(root.join("sticky")).expect("mkdir");
    fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).expect("chmod");
    std::os::unix::fs::chown(root.join("exact-4096"), Some(1234), Some(5678)).expect("chown");
    std::os::unix::fs::chown(root.join("exact-4097"), Some(70_000), Some(80_000)).expect("chown");
    use rustix::fs::{CWD, FileType, Mode, mknodat};
    mknodat(
        CWD,
        root.join("null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .expect("mknod c");
    mknodat(
        CWD,
        root.join("blk"),
        FileType::BlockDevice,
        Mode::from_raw_mode(0o600),
        rustix::fs::makedev(259, 70_000),
    )
    .expect("mknod b");
    mknodat(
        CWD,
        root.join("fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o640),
        0,
    )
    .expect("mkfifo");
    drop(std::os::unix::net::UnixListener::bind(root.join("socket")).expect("bind"));
    set_mtime(&root.join("exact-4096"), 1_000_000_000, 123_456_789);
    set_mtime(&root.join("link-rel"), 1_500_000_000, 5);
    set_mtime(&root.join("empty"), 0, 0);
}

#[test]
fn directory_image_passes_fsck_mounts_and_matches_its_source() {
    common::require_root();
    let work = tempfile::tempdir().expect("tempdir");
    let src = work.path().join("src");
    fs::create_dir(&src).expect("mkdir");
    make_tree(&src, 10_000, true);
    let img_path = work.path().join("a.img");
    let summary = Builder::new().dir(&src).build(&img_path).expect("build");
    assert!(
        summary.dedup_blocks >= 2 * 3,
        "identical files share blocks: {summary:?}"
    );

    // The 5 GiB sparse file stays sparse, in the source and in the image.
    let meta = fs::metadata(&img_path).expect("stat image");
    assert!(meta.len() < 256 << 20, "image is {} bytes", meta.len());
    assert!(meta.blocks() * 512 < 256 << 20);

    fsck(&img_path);
    let mnt = Mount::new(&img_path);
    // Every byte of every file is compared through the kernel mount: diff -r
    // for the tree, and the 5 GiB sparse file (all of it, holes included)
    // with a streaming cmp that also checks the loader's read_at, so its
    // 2 x 5 GiB do not pile up in the page cache (see cmp_streaming).
    let t = std::time::Instant::now();
    diff_r(&src, mnt.path(), &["sparse-5g"]);
    let img = MmapImage::open(&img_path).expect("open");
    let sparse_ino = img.lookup("/sparse-5g").expect("lookup");
    let mut loader = |off: u64, buf: &mut [u8]| img.read_at(sparse_ino, off, buf).expect("read_at");
    let compared = cmp_streaming(
        &src.join("sparse-5g"),
        &mnt.path().join("sparse-5g"),
        Some(&mut loader),
    );
    assert_eq!(compared, 5 * GIB);
    eprintln!(
        "diff -r + cmp of the 5 GiB sparse file (kernel and loader): {:?}",
        t.elapsed()
    );
    compare_stat(&src, mnt.path(), None);

    let sp = fs::File::open(mnt.path().join("sparse-5g")).expect("open sparse");
    assert_eq!(sp.metadata().expect("stat").len(), 5 * GIB);
    let mut buf = [0u8; 13];
    sp.read_exact_at(&mut buf, 3 * GIB + 12345).expect("read");
    assert_eq!(&buf, b"in the middle");
    let mut tail = [0u8; 10];
    sp.read_exact_at(&mut tail, 5 * GIB - 10).expect("read");
    assert_eq!(&tail, b"at the end");
    let mut hole = vec![1u8; 1 << 20];
    sp.read_exact_at(&mut hole, GIB).expect("read");
    assert!(hole.iter().all(|&b| b == 0));

    compare_loader(&img, mnt.path(), 64 << 20);
    let ino = img.lookup("/sparse-5g").expect("lookup");
    let mut b = [0u8; 13];
    assert_eq!(
        img.read_at(ino, 3 * GIB + 12345, &mut b).expect("read_at"),
        13
    );
    assert_eq!(&b, b"in the middle");

    // A page-aligned file maps straight from the image file.
    let ino = img.lookup("/big-1m").expect("lookup");
    let ext = img.file_extent(ino).expect("extent");
    assert_eq!(ext.offset % 4096, 0);
    let mut from_file = vec![0u8; ext.len as usize];
    fs::File::open(&img_path)
        .expect("open")
        .read_exact_at(&mut from_file, ext.offset)
        .expect("pread");
    assert_eq!(from_file, fs::read(src.join("big-1m")).expect("read"));
    // bytes() borrows the mapping: the same pointer each call, no copy.
    let b1 = img.bytes(ino).expect("bytes");
    let b2 = img.bytes(ino).expect("bytes");
    assert_eq!(b1.as_ptr(), b2.as_ptr());

    let rep = img.verify(|_, _| {}).expect("verify");
    assert_eq!(rep.digest, summary.digest);

    // Rebuilding gives the same bytes.
    let again = work.path().join("b.img");
    Builder::new().dir(&src).build(&again).expect("rebuild");
    assert!(
        files_equal(&img_path, &again),
        "rebuild is not byte-identical"
    );
}

fn files_equal(a: &Path, b: &Path) -> bool {
    let (fa, fb) = (
        fs::File::open(a).expect("open"),
        fs::File::open(b).expect("open"),
    );
    let len = fa.metadata().expect("stat").len();
    if len != fb.metadata().expect("stat").len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut off = 0;
    while off < len {
        let n = (len - off).min(1 << 20) as usize;
        fa.read_exact_at(&mut ba[..n], off).expect("read");
        fb.read_exact_at(&mut bb[..n], off).expect("read");
        if ba[..n] != bb[..n] {
            return false;
        }
        off += n as u64;
    }
    true
}

#[test]
fn inline_small_image_with_mtime_clamp_mounts_and_matches() {
    common::require_root();
    let work = tempfile::tempdir().expect("tempdir");
    let src = work.path().join("src");
    fs::create_dir(&src).expect("mkdir");
    make_tree(&src, 300, false);
    let clamp = 1_200_000_000;
    let img_path = work.path().join("a.img");
    Builder::new()
        .dir(&src)
        .inline_small(true)
        .mtime_clamp(clamp)
        .build(&img_path)
        .expect("build");
    fsck(&img_path);
    let mnt = Mount::new(&img_path);
    diff_r(&src, mnt.path(), &[]);
    compare_stat(&src, mnt.path(), Some(clamp));
    let img = MmapImage::open(&img_path).expect("open");
    compare_loader(&img, mnt.path(), u64::MAX);
    img.verify(|_, _| {}).expect("verify");
    // A small inlined file is not mappable, but still zero copy.
    let ino = img.lookup("/exact-4097").expect("lookup");
    assert!(img.file_extent(ino).is_err());
    let ino = img.lookup("/hard-a").expect("lookup");
    assert_eq!(img.bytes(ino).expect("bytes"), b"hardlinked");

    // With the clamp, moving any mtime that is past it changes nothing.
    for p in common::walk(&src) {
        let p = src.join(p);
        let m = fs::symlink_metadata(&p).expect("lstat");
        if !m.file_type().is_symlink() && m.mtime() > clamp {
            set_mtime(&p, clamp + 1000, 7);
        }
    }
    let again = work.path().join("b.img");
    Builder::new()
        .dir(&src)
        .inline_small(true)
        .mtime_clamp(clamp)
        .build(&again)
        .expect("rebuild");
    assert!(
        files_equal(&img_path, &again),
        "clamped rebuild is not byte-identical"
    );
}

#[test]
fn loader_agrees_with_the_kernel_on_a_mkfs_erofs_image() {
    common::require_root();
    common::require_tool("mkfs.erofs");
    let work = tempfile::tempdir().expect("tempdir");
    let src = work.path().join("src");
    fs::create_dir(&src).expect("mkdir");
    make_tree(&src, 2000, false);
    // erofs-utils 1.5 fails ("Could not format the device") on 255-byte names.
    fs::remove_file(src.join("n".repeat(255))).expect("rm");
    let img_path = work.path().join("peer.img");
    let out = std::process::Command::new("mkfs.erofs")
        .arg("-x-1")
        .arg(&img_path)
        .arg(&src)
        .output()
        .expect("run mkfs.erofs");
    assert!(
        out.status.success(),
        "mkfs.erofs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mnt = Mount::new(&img_path);
    let img = MmapImage::open(&img_path).expect("open peer image");
    compare_loader(&img, mnt.path(), u64::MAX);
    assert!(img.digest().is_none());
    assert!(matches!(
        img.verify(|_, _| {}),
        Err(faas_rofs::VerifyError::NoDigests { .. })
    ));
}

fn tar_layer(path: &Path, gz: bool, add: impl FnOnce(&mut tar::Builder<Vec<u8>>)) {
    let mut b = tar::Builder::new(Vec::new());
    add(&mut b);
    let data = b.into_inner().expect("tar");
    let mut f = fs::File::create(path).expect("create");
    if gz {
        let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        e.write_all(&data).expect("gz");
        e.finish().expect("gz");
    } else {
        f.write_all(&data).expect("write");
    }
}

fn entry(
    b: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    data: &[u8],
    link: Option<&str>,
) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
    h.set_mtime(1_600_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(data.len() as u64);
    if let Some(l) = link {
        h.set_link_name(l).expect("link name");
    }
    b.append_data(&mut h, path, data).expect("append");
}

#[test]
fn tar_layers_apply_whiteouts_and_mount() {
    common::require_root();
    let work = tempfile::tempdir().expect("tempdir");
    let l1 = work.path().join("l1.tar");
    let l2 = work.path().join("l2.tar.gz");
    use tar::EntryType::{Directory as D, Link as H, Regular as R, Symlink as S};
    tar_layer(&l1, false, |b| {
        entry(b, "etc/", D, b"", None);
        entry(b, "etc/keep", R, b"keep", None);
        entry(b, "etc/gone", R, b"gone", None);
        entry(b, "opaque/", D, b"", None);
        entry(b, "opaque/old", R, b"old", None);
        entry(b, "bin/", D, b"", None);
        entry(b, "bin/tool", R, b"v1", None);
        entry(b, "bin/alias", H, b"", Some("bin/tool"));
        entry(b, "lib", S, b"", Some("usr/lib"));
    });
    tar_layer(&l2, true, |b| {
        entry(b, "etc/.wh.gone", R, b"", None);
        entry(b, "opaque/.wh..wh..opq", R, b"", None);
        entry(b, "opaque/new", R, b"new", None);
        entry(b, "bin/tool", R, b"version 2", None);
        entry(b, "added/deep/file", R, b"implicit parents", None);
    });
    let img_path = work.path().join("layers.img");
    Builder::new()
        .tar(&l1)
        .tar(&l2)
        .build(&img_path)
        .expect("build");
    fsck(&img_path);
    let mnt = Mount::new(&img_path);
    let m = mnt.path();
    assert_eq!(fs::read(m.join("etc/keep")).expect("keep"), b"keep");
    assert!(!m.join("etc/gone").exists(), "whiteout removes etc/gone");
    assert!(!m.join("etc/.wh.gone").exists());
    assert!(
        !m.join("opaque/old").exists(),
        "opaque directory hides lower entries"
    );
    assert_eq!(fs::read(m.join("opaque/new")).expect("new"), b"new");
    assert_eq!(fs::read(m.join("bin/tool")).expect("tool"), b"version 2");
    assert_eq!(
        fs::read(m.join("bin/alias")).expect("alias"),
        b"v1",
        "a hardlink keeps its layer's inode"
    );
    assert_eq!(
        fs::read_link(m.join("lib")).expect("lib"),
        Path::new("usr/lib")
    );
    assert_eq!(
        fs::read(m.join("added/deep/file")).expect("file"),
        b"implicit parents"
    );
    assert_eq!(
        fs::metadata(m.join("etc/keep")).expect("stat").mtime(),
        1_600_000_000
    );
    let img = MmapImage::open(&img_path).expect("open");
    compare_loader(&img, m, u64::MAX);
    img.verify(|_, _| {}).expect("verify");
}

#[test]
#[should_panic(expected = "differ at byte 9000001")]
fn cmp_streaming_reports_the_first_difference() {
    let work = tempfile::tempdir().expect("tempdir");
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    let data = pseudo_random(10_000_000, 6);
    fs::write(&a, &data).expect("write");
    let mut other = data.clone();
    other[9_000_000] ^= 1;
    fs::write(&b, &other).expect("write");
    assert_eq!(cmp_streaming(&a, &a, None), 10_000_000);
    cmp_streaming(&a, &b, None);
}
