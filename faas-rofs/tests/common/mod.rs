//! Shared helpers of the integration tests: required tools, kernel mounts,
//! comparisons between a source tree, a kernel mount and the loader.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::expect_used,
    clippy::unwrap_used
)]

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use faas_core::{FileType, ImageFs};
use faas_rofs::MmapImage;

/// Fails the test with a clear message when a tool is missing.
pub fn require_tool(tool: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "this test needs `{tool}` (apt-get install erofs-utils; scripts/test installs it)"
    );
}

/// Fails the test with a clear message unless running as root.
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test mounts images with the kernel's erofs and must run as root (CI does)"
    );
}

pub fn fsck(image: &Path) {
    require_tool("fsck.erofs");
    let out = Command::new("fsck.erofs")
        .arg(image)
        .output()
        .expect("run fsck.erofs");
    assert!(
        out.status.success(),
        "fsck.erofs rejected {}: {}{}",
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A kernel erofs mount, unmounted on drop.
pub struct Mount {
    pub dir: tempfile::TempDir,
}

impl Mount {
    pub fn new(image: &Path) -> Mount {
        require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let src = fs::canonicalize(image).expect("image path");
        use rustix::mount::{MountFlags, mount};
        if let Err(e) = mount(
            &src,
            dir.path(),
            "erofs",
            MountFlags::RDONLY | MountFlags::NODEV,
            None,
        ) {
            panic!(
                "mount -t erofs {} failed: {e} (needs a kernel with file-backed erofs, 6.12+)",
                image.display()
            );
        }
        Mount { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(self.dir.path(), rustix::mount::UnmountFlags::DETACH);
    }
}

/// `diff -r --no-dereference A B`, excluding the given names.
pub fn diff_r(a: &Path, b: &Path, exclude: &[&str]) {
    let mut cmd = Command::new("diff");
    cmd.arg("-r").arg("--no-dereference");
    for x in exclude {
        cmd.arg("-x").arg(x);
    }
    let out = cmd.arg(a).arg(b).output().expect("run diff");
    // diff reports fifos and devices as "is a fifo while ..." lines with
    // status 1 only when types differ; identical special files print a
    // notice we accept.
    let text = String::from_utf8_lossy(&out.stdout);
    let real: Vec<&str> = text
        .lines()
        .filter(|l| {
            !(l.starts_with("File ")
                && (l.contains(" is a fifo while file ") && l.ends_with(" is a fifo")
                    || l.contains(" is a character special file while file ")
                        && l.ends_with(" is a character special file")
                    || l.contains(" is a block special file while file ")
                        && l.ends_with(" is a block special file")
                    || l.contains(" is a socket while file ") && l.ends_with(" is a socket")))
        })
        .collect();
    assert!(
        real.is_empty(),
        "diff -r {} {}:\n{}",
        a.display(),
        b.display(),
        real.join("\n")
    );
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "diff failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads `buf.len()` bytes at an offset, returns how many it read.
pub type ThirdReader<'a> = dyn FnMut(u64, &mut [u8]) -> usize + 'a;

/// Compares two files byte for byte, like `cmp`, and with them a third
/// reader when given (the loader's `read_at`), in 8 MiB windows. After each
/// window the page cache of both files up to its end is dropped
/// (`posix_fadvise(DONTNEED)`), so even a 5 GiB sparse file streams through
/// a few MiB of recycled pages. `diff -r` on the same file fills 2 x 5 GiB of
/// page cache instead; on the CI VM that took 2-22 s depending on how much
/// guest memory had been touched before (first touch of a guest page is the
/// cost; the erofs hole lookups are not, see BENCHMARKS.md). Returns the
/// number of bytes compared.
pub fn cmp_streaming(a: &Path, b: &Path, mut third: Option<&mut ThirdReader<'_>>) -> u64 {
    use rustix::fs::{Advice, fadvise};
    use std::os::unix::fs::FileExt;
    const WINDOW: usize = 8 << 20;
    let fa = fs::File::open(a).expect("open a");
    let fb = fs::File::open(b).expect("open b");
    let len = fa.metadata().expect("stat a").len();
    assert_eq!(
        len,
        fb.metadata().expect("stat b").len(),
        "cmp {} {}: sizes differ",
        a.display(),
        b.display()
    );
    let (mut ba, mut bb, mut bc) = (vec![0u8; WINDOW], vec![0u8; WINDOW], vec![0u8; WINDOW]);
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(WINDOW as u64) as usize;
        fa.read_exact_at(&mut ba[..n], off).expect("read a");
        fb.read_exact_at(&mut bb[..n], off).expect("read b");
        // Slice equality is a memcmp, fast in debug builds too.
        if ba[..n] != bb[..n] {
            let i = (0..n).find(|&i| ba[i] != bb[i]).unwrap_or(0);
            panic!(
                "cmp {} {}: differ at byte {}",
                a.display(),
                b.display(),
                off + i as u64 + 1
            );
        }
        if let Some(read) = third.as_mut() {
            assert_eq!(
                read(off, &mut bc[..n]),
                n,
                "third reader: short read at {off}"
            );
            if ba[..n] != bc[..n] {
                let i = (0..n).find(|&i| ba[i] != bc[i]).unwrap_or(0);
                panic!(
                    "cmp {} and the third reader: differ at byte {}",
                    a.display(),
                    off + i as u64 + 1
                );
            }
        }
        off += n as u64;
        // From 0, so pages a readahead left behind an earlier window go too.
        let upto = std::num::NonZeroU64::new(off);
        fadvise(&fa, 0, upto, Advice::DontNeed).expect("fadvise a");
        fadvise(&fb, 0, upto, Advice::DontNeed).expect("fadvise b");
    }
    let mut one = [0u8; 1];
    assert_eq!(fa.read_at(&mut one, len).expect("read a"), 0, "a grew");
    assert_eq!(
        fb.read_at(&mut one, len).expect("read b"),
        0,
        "b is longer than its size"
    );
    len
}

/// Every path under `root` (relative, sorted), root excluded.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(root.join(&rel))
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        for n in names {
            let p = rel.join(&n);
            if fs::symlink_metadata(root.join(&p)).expect("lstat").is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Mode, uid, gid, size, mtime, link targets and hardlink identity of every
/// path of `src` match `mnt`.
pub fn compare_stat(src: &Path, mnt: &Path, mtime_clamp: Option<i64>) {
    let mut groups_src: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    let paths = walk(src);
    assert_eq!(paths, walk(mnt), "the mount lists different paths");
    for p in &paths {
        let a = fs::symlink_metadata(src.join(p)).expect("lstat src");
        let b = fs::symlink_metadata(mnt.join(p)).expect("lstat mnt");
        let ctx = p.display();
        assert_eq!(a.mode(), b.mode(), "{ctx}: mode");
        assert_eq!(a.uid(), b.uid(), "{ctx}: uid");
        assert_eq!(a.gid(), b.gid(), "{ctx}: gid");
        if !a.is_dir() {
            assert_eq!(a.len(), b.len(), "{ctx}: size");
            assert_eq!(a.nlink(), b.nlink(), "{ctx}: nlink");
        }
        assert_eq!(a.rdev(), b.rdev(), "{ctx}: rdev");
        let (mt, mn) = match mtime_clamp {
            Some(c) if a.mtime() > c || (a.mtime() == c && a.mtime_nsec() > 0) => (c, 0),
            _ => (a.mtime(), a.mtime_nsec()),
        };
        assert_eq!((mt, mn), (b.mtime(), b.mtime_nsec()), "{ctx}: mtime");
        if a.file_type().is_symlink() {
            assert_eq!(
                fs::read_link(src.join(p)).ok(),
                fs::read_link(mnt.join(p)).ok(),
                "{ctx}: target"
            );
        }
        if !a.is_dir() && a.nlink() > 1 {
            groups_src
                .entry((a.dev(), a.ino()))
                .or_default()
                .push(p.clone());
        }
    }
    for group in groups_src.values() {
        let inos: Vec<u64> = group
            .iter()
            .map(|p| fs::symlink_metadata(mnt.join(p)).expect("lstat").ino())
            .collect();
        assert!(
            inos.windows(2).all(|w| w[0] == w[1]),
            "hardlinks {group:?} are not one inode in the mount"
        );
    }
}

/// The loader agrees with the kernel mount for every path: inode number,
/// type, mode, owner, size, links, mtime, device, link target, directory
/// listing, xattrs and contents (files larger than `max_read` only by size).
pub fn compare_loader(img: &MmapImage, mnt: &Path, max_read: u64) {
    for p in walk(mnt) {
        let m = fs::symlink_metadata(mnt.join(&p)).expect("lstat");
        let ipath = format!("/{}", p.display());
        let ino = img
            .lookup(&ipath)
            .unwrap_or_else(|e| panic!("lookup {ipath}: {e}"));
        let s = img.stat(ino).expect("stat");
        assert_eq!(s.ino, m.ino(), "{ipath}: ino (nid)");
        assert_eq!(u32::from(s.perm), m.mode() & 0o7777, "{ipath}: perm");
        assert_eq!((s.uid, s.gid), (m.uid(), m.gid()), "{ipath}: owner");
        assert_eq!(s.size, m.len(), "{ipath}: size");
        assert_eq!(u64::from(s.nlink), m.nlink(), "{ipath}: nlink");
        assert_eq!(s.mtime, m.mtime(), "{ipath}: mtime");
        let ft = m.file_type();
        use std::os::unix::fs::FileTypeExt;
        let want = if ft.is_dir() {
            FileType::Directory
        } else if ft.is_file() {
            FileType::Regular
        } else if ft.is_symlink() {
            FileType::Symlink
        } else if ft.is_char_device() {
            FileType::CharDevice
        } else if ft.is_block_device() {
            FileType::BlockDevice
        } else if ft.is_fifo() {
            FileType::Fifo
        } else {
            FileType::Socket
        };
        assert_eq!(s.file_type, want, "{ipath}: type");
        match want {
            FileType::Directory => {
                let mut names: Vec<_> = fs::read_dir(mnt.join(&p))
                    .expect("read_dir")
                    .map(|e| e.expect("entry").file_name())
                    .collect();
                names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
                let ours: Vec<_> = img
                    .read_dir(ino)
                    .expect("read_dir")
                    .into_iter()
                    .map(|e| e.name)
                    .collect();
                assert_eq!(ours, names, "{ipath}: listing");
            }
            FileType::Symlink => {
                let t = fs::read_link(mnt.join(&p)).expect("readlink");
                assert_eq!(
                    img.read_link(ino).expect("read_link"),
                    t.as_os_str().as_encoded_bytes(),
                    "{ipath}"
                );
            }
            FileType::Regular if m.len() <= max_read => {
                let want = fs::read(mnt.join(&p)).expect("read");
                let mut buf = vec![0u8; want.len()];
                assert_eq!(img.read_at(ino, 0, &mut buf).expect("read_at"), want.len());
                assert!(buf == want, "{ipath}: read_at contents differ");
                if let Ok(b) = img.bytes(ino) {
                    assert!(b == want.as_slice(), "{ipath}: bytes() contents differ");
                }
            }
            FileType::CharDevice | FileType::BlockDevice => {
                assert_eq!(u64::from(s.rdev), m.rdev(), "{ipath}: rdev");
            }
            _ => {}
        }
        let mut kx: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if !ft.is_symlink() {
            for name in xattr::list(mnt.join(&p)).expect("listxattr") {
                let v = xattr::get(mnt.join(&p), &name)
                    .expect("getxattr")
                    .unwrap_or_default();
                kx.push((name.as_encoded_bytes().to_vec(), v));
            }
        }
        kx.sort();
        let mut ox = img.xattrs(ino).expect("xattrs");
        ox.sort();
        if !ft.is_symlink() {
            assert_eq!(ox, kx, "{ipath}: xattrs");
        }
    }
}
