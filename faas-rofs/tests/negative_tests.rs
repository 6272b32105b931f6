//! Corrupt and hostile images give clear errors, never panics: truncation,
//! flipped bytes in the superblock, inode and dirent areas, directory loops,
//! offsets past the end, absurd sizes, forged faas headers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use faas_core::{ImageError, ImageFs};
use faas_rofs::format::{self, ExtHeader, SUPER_OFFSET};
use faas_rofs::{Builder, MmapImage, VerifyError};
use zerocopy::{FromBytes, IntoBytes};

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    bytes: Vec<u8>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("b")).expect("mkdir");
    fs::write(src.join("file"), vec![7u8; 10_000]).expect("write");
    fs::write(src.join("b/c"), b"c").expect("write");
    std::os::unix::fs::symlink("file", src.join("link")).expect("symlink");
    let path = dir.path().join("good.img");
    Builder::new()
        .dir(&src)
        .mtime_clamp(0)
        .build(&path)
        .expect("build");
    let bytes = fs::read(&path).expect("read");
    Fixture {
        _dir: dir,
        path,
        bytes,
    }
}

impl Fixture {
    fn open_mutated(&self, bytes: &[u8]) -> Result<MmapImage, ImageError> {
        let p = self.path.with_extension("bad");
        fs::write(&p, bytes).expect("write");
        MmapImage::open(&p)
    }
}

fn what(e: &ImageError) -> String {
    e.to_string()
}

fn fix_sb_crc(b: &mut [u8]) {
    b[SUPER_OFFSET + 4..SUPER_OFFSET + 8].fill(0);
    let crc = format::sb_checksum(&b[SUPER_OFFSET..4096]);
    b[SUPER_OFFSET + 4..SUPER_OFFSET + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Re-signs a forged image: header crc and image digest made consistent.
fn reseal(b: &mut [u8]) {
    fix_sb_crc(b);
    let mut h = ExtHeader::read_from_prefix(b).expect("header").0;
    h.header_crc = format::header_crc(&h).into();
    let ds = h.data_start.get() as usize;
    let es = h.ext_start.get() as usize;
    h.image_digest = format::image_digest(&h, &b[SUPER_OFFSET..ds], &b[es..]);
    b[..size_of::<ExtHeader>()].copy_from_slice(h.as_bytes());
}

fn inode_off(img: &MmapImage, path: &str) -> (usize, usize) {
    let nid = img.lookup(path).expect("lookup") as usize;
    let off = nid * 32;
    (off, off)
}

fn isize_at(b: &[u8], off: usize) -> usize {
    if b[off] & 1 == 0 { 32 } else { 64 }
}

#[test]
fn truncated_images_are_rejected() {
    let f = fixture();
    for len in [
        0,
        100,
        SUPER_OFFSET + 10,
        4095,
        f.bytes.len() / 2,
        f.bytes.len() - 4096,
        f.bytes.len() - 1,
    ] {
        let e = f
            .open_mutated(&f.bytes[..len])
            .expect_err("truncated image must not open");
        assert!(matches!(e, ImageError::Corrupt { .. }), "len {len}: {e}");
    }
}

#[test]
fn superblock_damage_is_named() {
    let f = fixture();
    let mut b = f.bytes.clone();
    b[SUPER_OFFSET] ^= 0xff;
    assert!(what(&f.open_mutated(&b).expect_err("magic")).contains("bad EROFS magic"));
    let mut b = f.bytes.clone();
    b[SUPER_OFFSET + 16] ^= 1; // inos
    assert!(what(&f.open_mutated(&b).expect_err("crc")).contains("superblock checksum mismatch"));
    let mut b = f.bytes.clone();
    b[SUPER_OFFSET + 12] = 40; // blkszbits
    assert!(what(&f.open_mutated(&b).expect_err("blksz")).contains("block size out of range"));
    let mut b = f.bytes.clone();
    b[SUPER_OFFSET + 14..SUPER_OFFSET + 16].copy_from_slice(&0xfff0u16.to_le_bytes()); // root nid
    fix_sb_crc(&mut b);
    assert!(what(&f.open_mutated(&b).expect_err("root")).contains("past the end"));
    let mut b = f.bytes.clone();
    b[SUPER_OFFSET + 80] |= 0x02; // an incompatible feature (compression)
    fix_sb_crc(&mut b);
    assert!(matches!(
        f.open_mutated(&b),
        Err(ImageError::Unsupported { .. })
    ));
}

#[test]
fn inode_damage_is_named() {
    let f = fixture();
    let img = MmapImage::open(&f.path).expect("open");
    let (root, _) = inode_off(&img, "/");
    let (file, _) = inode_off(&img, "/file");
    let file_nid = img.lookup("/file").expect("lookup");

    // Invalid file type in the root's mode.
    let mut b = f.bytes.clone();
    b[root + 4..root + 6].copy_from_slice(&0u16.to_le_bytes());
    fix_sb_crc(&mut b);
    assert!(what(&f.open_mutated(&b).expect_err("mode")).contains("invalid file type"));

    // Data block past the end of the image.
    let mut b = f.bytes.clone();
    let iu = file + 16;
    b[iu..iu + 4].copy_from_slice(&0x00ff_ffffu32.to_le_bytes());
    fix_sb_crc(&mut b);
    let bad = f.open_mutated(&b).expect("metadata still valid");
    let e = bad.bytes(file_nid).expect_err("past end");
    assert!(what(&e).contains("past the end"), "{e}");
    let mut buf = [0u8; 16];
    assert!(bad.read_at(file_nid, 0, &mut buf).is_err());
    assert!(bad.file_extent(file_nid).is_err());

    // Absurd size.
    let mut b = f.bytes.clone();
    let sz = file + 8; // i_size in both inode forms
    b[sz..sz + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    fix_sb_crc(&mut b);
    let bad = f.open_mutated(&b).expect("root still valid");
    assert!(bad.stat(file_nid).is_err());

    // Compressed layout and reserved layouts.
    for (layout, unsupported) in [(1u16, true), (6, false)] {
        let mut b = f.bytes.clone();
        let fmt = u16::from_le_bytes([b[file], b[file + 1]]) & 1;
        b[file..file + 2].copy_from_slice(&(fmt | (layout << 1)).to_le_bytes());
        fix_sb_crc(&mut b);
        let bad = f.open_mutated(&b).expect("root still valid");
        let e = bad.stat(file_nid).expect_err("layout");
        assert_eq!(
            matches!(e, ImageError::Unsupported { .. }),
            unsupported,
            "{e}"
        );
    }

    // Xattr area claiming far more than the image holds.
    let mut b = f.bytes.clone();
    b[file + 2..file + 4].copy_from_slice(&u16::MAX.to_le_bytes());
    fix_sb_crc(&mut b);
    let bad = f.open_mutated(&b).expect("root still valid");
    assert!(bad.xattrs(file_nid).is_err());
    // Inode numbers past the end.
    assert!(img.stat(u64::MAX).is_err());
    assert!(img.stat(1 << 40).is_err());
    assert!(img.read_dir(file_nid).is_err(), "a file is not a directory");
}

#[test]
fn dirent_damage_is_named() {
    let f = fixture();
    let img = MmapImage::open(&f.path).expect("open");
    let (root, _) = inode_off(&img, "/");
    let tail = root + isize_at(&f.bytes, root);
    let root_nid = img.root();

    let mut b = f.bytes.clone();
    b[tail + 8..tail + 10].copy_from_slice(&5u16.to_le_bytes());
    fix_sb_crc(&mut b);
    let e = f
        .open_mutated(&b)
        .expect("open")
        .read_dir(root_nid)
        .expect_err("nameoff");
    assert!(what(&e).contains("dirent name offset"), "{e}");

    let mut b = f.bytes.clone();
    b[tail + 12 + 8..tail + 12 + 10].copy_from_slice(&4000u16.to_le_bytes());
    fix_sb_crc(&mut b);
    assert!(
        f.open_mutated(&b)
            .expect("open")
            .read_dir(root_nid)
            .is_err()
    );

    // A dirent naming an inode past the end.
    let mut b = f.bytes.clone();
    let third = tail + 24; // ".", "..", then "b"
    b[third..third + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    fix_sb_crc(&mut b);
    let bad = f.open_mutated(&b).expect("open");
    let ents = bad.read_dir(root_nid).expect("read_dir");
    let e = bad.stat(ents[0].ino).expect_err("nid past end");
    assert!(what(&e).contains("past the end"), "{e}");
}

#[test]
fn directory_loops_are_detected() {
    let f = fixture();
    let img = MmapImage::open(&f.path).expect("open");
    let (b_dir, _) = inode_off(&img, "/b");
    let tail = b_dir + isize_at(&f.bytes, b_dir);
    // b's entries: ".", "..", "c"; make "c" a directory entry naming the root.
    let mut b = f.bytes.clone();
    let c = tail + 24;
    b[c..c + 8].copy_from_slice(&img.root().to_le_bytes());
    b[c + 10] = format::ft::DIR;
    reseal(&mut b);
    let bad = f.open_mutated(&b).expect("open");
    match bad.verify(|_, _| {}) {
        Err(VerifyError::Image(e)) => assert!(what(&e).contains("directory loop"), "{e}"),
        other => panic!("expected a directory loop error, got {other:?}"),
    }
    // Lookups through the loop terminate (paths are resolved by the index).
    assert!(matches!(
        bad.lookup("/b/c/b/c/b/c/file"),
        Err(ImageError::NotFound { .. })
    ));
}

#[test]
fn forged_headers_and_tampered_data_fail_verification() {
    let f = fixture();
    let img = MmapImage::open(&f.path).expect("open");
    img.verify(|_, _| {}).expect("good image verifies");

    // Header crc.
    let mut b = f.bytes.clone();
    b[20] ^= 1;
    assert!(what(&f.open_mutated(&b).expect_err("crc")).contains("faas header checksum"));
    // Regions outside the image (crc fixed).
    let mut b = f.bytes.clone();
    let mut h = ExtHeader::read_from_prefix(&b).expect("hdr").0;
    h.index_off = (1u64 << 50).into();
    h.header_crc = format::header_crc(&h).into();
    b[..size_of::<ExtHeader>()].copy_from_slice(h.as_bytes());
    assert!(what(&f.open_mutated(&b).expect_err("index")).contains("outside the image"));

    // One flipped data byte: the file digest catches it.
    let nid = img.lookup("/file").expect("lookup");
    let off = img.file_extent(nid).expect("extent").offset as usize;
    let mut b = f.bytes.clone();
    b[off + 100] ^= 1;
    match f.open_mutated(&b).expect("open").verify(|_, _| {}) {
        Err(VerifyError::FileDigest { path, .. }) => assert_eq!(path, "/file"),
        other => panic!("expected a file digest mismatch, got {other:?}"),
    }
    // One flipped metadata byte (superblock crc fixed): the image digest.
    let mut b = f.bytes.clone();
    b[SUPER_OFFSET + 64] ^= 1; // volume name
    fix_sb_crc(&mut b);
    assert!(matches!(
        f.open_mutated(&b).expect("open").verify(|_, _| {}),
        Err(VerifyError::ImageDigest { .. })
    ));
}

#[test]
fn open_rejects_non_images() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        MmapImage::open(dir.path().join("missing")),
        Err(ImageError::Io { .. })
    ));
    assert!(MmapImage::open(dir.path()).is_err());
    let p: &Path = &dir.path().join("zeros");
    fs::write(p, vec![0u8; 1 << 16]).expect("write");
    assert!(what(&MmapImage::open(p).expect_err("zeros")).contains("magic"));
}
