//! Property test (fuzz target) of the loader: any mutation of a valid image
//! — flipped bytes, truncation, with or without a repaired superblock
//! checksum — opens with an error or loads, and then every operation
//! returns a value or an error; nothing panics or reads out of bounds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::fs;

use faas_core::{FileType, ImageFs};
use faas_rofs::format::{self, SUPER_OFFSET};
use faas_rofs::{Builder, MmapImage};
use proptest::prelude::*;

fn good_image() -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("d/e")).expect("mkdir");
    for i in 0..40 {
        fs::write(src.join(format!("d/f{i}")), vec![i as u8; i * 300]).expect("write");
    }
    fs::write(src.join("d/e/g"), b"g").expect("write");
    std::os::unix::fs::symlink("d/f1", src.join("l")).expect("symlink");
    xattr::set(src.join("d/f3"), "user.k", b"v").expect("xattr");
    let f = fs::File::create(src.join("sparse")).expect("create");
    f.set_len(1 << 24).expect("truncate");
    drop(f);
    let p = dir.path().join("img");
    Builder::new()
        .dir(&src)
        .inline_small(true)
        .mtime_clamp(0)
        .build(&p)
        .expect("build");
    let bytes = fs::read(&p).expect("read");
    (dir, bytes)
}

fn exercise(img: &MmapImage) {
    for p in [
        "/",
        "/d",
        "/d/f3",
        "/d/e/g",
        "/l",
        "/nope",
        "/d/../d/./f1",
        "/sparse",
    ] {
        let _ = img.lookup(p);
    }
    let mut seen = HashSet::new();
    let mut stack = vec![img.root()];
    let mut budget = 2000;
    let mut buf = vec![0u8; 8192];
    while let Some(ino) = stack.pop() {
        if !seen.insert(ino) || budget == 0 {
            continue;
        }
        budget -= 1;
        let Ok(st) = img.stat(ino) else { continue };
        let _ = img.xattrs(ino);
        let _ = img.file_digest(ino);
        match st.file_type {
            FileType::Directory => {
                if let Ok(ents) = img.read_dir(ino) {
                    stack.extend(ents.iter().map(|e| e.ino));
                }
            }
            FileType::Regular => {
                let _ = img.bytes(ino);
                let _ = img.file_extent(ino);
                let _ = img.read_at(ino, 0, &mut buf);
                let _ = img.read_at(ino, st.size.saturating_sub(1), &mut buf);
                let _ = img.read_at(ino, u64::MAX, &mut buf);
            }
            FileType::Symlink => {
                let _ = img.read_link(ino);
            }
            _ => {}
        }
    }
    // The image digest is checked before any file is hashed, so a mutated
    // image fails fast here.
    let _ = img.verify(|_, _| {});
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mutated_images_never_panic(
        flips in prop::collection::vec((0usize..1 << 16, any::<u8>()), 1..24),
        truncate in prop::option::of(0usize..1 << 16),
        fix_crc in any::<bool>(),
    ) {
        let (dir, good) = good_image_cached();
        let mut b = good.clone();
        // Most of the interesting bytes are in the first blocks.
        for (off, x) in flips {
            let i = off % b.len();
            b[i] ^= x | 1;
        }
        if let Some(t) = truncate {
            b.truncate(t.min(b.len()));
        }
        if fix_crc && b.len() >= 4096 {
            b[SUPER_OFFSET + 4..SUPER_OFFSET + 8].fill(0);
            let crc = format::sb_checksum(&b[SUPER_OFFSET..4096]);
            b[SUPER_OFFSET + 4..SUPER_OFFSET + 8].copy_from_slice(&crc.to_le_bytes());
        }
        let p = dir.join(format!("m{}", std::process::id()));
        fs::write(&p, &b).expect("write");
        if let Ok(img) = MmapImage::open(&p) {
            exercise(&img);
        }
    }
}

fn good_image_cached() -> (std::path::PathBuf, &'static Vec<u8>) {
    use std::sync::OnceLock;
    static IMG: OnceLock<(tempfile::TempDir, Vec<u8>)> = OnceLock::new();
    let (d, b) = IMG.get_or_init(good_image);
    (d.path().to_path_buf(), b)
}

#[test]
fn unmutated_image_exercises_cleanly() {
    let (dir, good) = good_image_cached();
    let p = dir.join("clean");
    fs::write(&p, good).expect("write");
    let img = MmapImage::open(&p).expect("open");
    exercise(&img);
    img.verify(|_, _| {}).expect("verify");
}
