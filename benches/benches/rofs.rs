//! faas-rofs benches, on an image of the Python stdlib (`/usr/lib/python3.*`,
//! copied to `usr/lib/` of an image root):
//!
//! - `rofs/build/python-stdlib`: `Builder` on the whole tree (page-aligned data);
//! - `rofs/open`: `MmapImage::open` (map + validate superblock, root, header);
//! - `rofs/lookup5/loader`: warm `lookup` of a 5-component path (path index);
//! - `rofs/lookup5/kernel-stat`: `stat()` of the same path on a kernel erofs
//!   mount of the same image (root only; reported as skipped otherwise);
//! - `rofs/read/bytes-1MiB` and `rofs/read/read_at-1MiB`: reading a 1 MiB
//!   file through `bytes()` (zero copy, every page touched) and `read_at`
//!   (copy into a buffer).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use faas_core::ImageFs;
use faas_rofs::{Builder, MmapImage};

fn python_tree() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib")
        .expect("/usr/lib")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("python3."))
        })
        .collect();
    dirs.sort();
    dirs.pop().expect("a /usr/lib/python3.* tree")
}

/// A regular file exactly 5 components below `root`.
fn five_deep(root: &Path, rel: &Path, depth: usize) -> Option<PathBuf> {
    let mut ents: Vec<_> = std::fs::read_dir(root.join(rel))
        .ok()?
        .filter_map(|e| e.ok())
        .collect();
    ents.sort_by_key(|e| e.file_name());
    for e in ents {
        let t = e.file_type().ok()?;
        let p = rel.join(e.file_name());
        if depth == 5 && t.is_file() {
            return Some(p);
        }
        if depth < 5
            && t.is_dir()
            && let Some(f) = five_deep(root, &p, depth + 1)
        {
            return Some(f);
        }
    }
    None
}

fn bench(c: &mut Criterion) {
    // The stdlib copied to usr/lib/python3.X of a root, as in a function
    // image, so that paths have 5 components.
    let py = python_tree();
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("root");
    std::fs::create_dir_all(tree.join("usr/lib")).expect("mkdir");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(&py)
        .arg(tree.join("usr/lib"))
        .status()
        .expect("cp");
    assert!(st.success(), "cp -a {}", py.display());
    let img_path = dir.path().join("py.img");
    Builder::new().dir(&tree).build(&img_path).expect("build");
    let mut g = c.benchmark_group("rofs/build");
    g.sample_size(10);
    g.bench_function("python-stdlib", |b| {
        b.iter(|| Builder::new().dir(&tree).build(&img_path).expect("build"))
    });
    g.finish();

    c.bench_function("rofs/open", |b| {
        b.iter(|| MmapImage::open(black_box(&img_path)).expect("open"))
    });

    let img = MmapImage::open(&img_path).expect("open");
    let rel = five_deep(&tree, Path::new(""), 1).expect("a 5-component path");
    let ipath = format!("/{}", rel.display());
    // Tails: criterion reports medians only. Skipped when `cargo test` runs
    // the bench once (no `--bench` argument).
    if std::env::args().any(|a| a == "--bench") {
        print_tails(&img_path, &img, &ipath);
    }
    let mut g = c.benchmark_group("rofs/lookup5");
    g.bench_function("loader", |b| {
        b.iter(|| img.lookup(black_box(&ipath)).expect("lookup"))
    });
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    use rustix::mount::{MountFlags, UnmountFlags, mount, unmount};
    match mount(&img_path, &mnt, "erofs", MountFlags::RDONLY, None) {
        Ok(()) => {
            let p = mnt.join(&rel);
            g.bench_function("kernel-stat", |b| {
                b.iter(|| rustix::fs::stat(black_box(&p)).expect("stat"))
            });
            unmount(&mnt, UnmountFlags::DETACH).expect("umount");
        }
        Err(e) => {
            eprintln!("rofs/lookup5/kernel-stat skipped: mount -t erofs failed ({e}); run as root")
        }
    }
    g.finish();

    // A 1 MiB file of its own image.
    let src = dir.path().join("one");
    std::fs::create_dir(&src).expect("mkdir");
    std::fs::write(src.join("f"), vec![0x5a; 1 << 20]).expect("write");
    let one = dir.path().join("one.img");
    Builder::new().dir(&src).build(&one).expect("build");
    let img = MmapImage::open(&one).expect("open");
    let ino = img.lookup("/f").expect("lookup");
    let mut g = c.benchmark_group("rofs/read");
    g.throughput(Throughput::Bytes(1 << 20));
    g.bench_function("bytes-1MiB", |b| {
        b.iter(|| {
            let s = img.bytes(ino).expect("bytes");
            // Touch every page so the cost of reaching the data is counted.
            s.iter().step_by(4096).fold(0u8, |a, &x| a ^ x)
        })
    });
    let mut buf = vec![0u8; 1 << 20];
    g.bench_function("read_at-1MiB", |b| {
        b.iter(|| img.read_at(ino, 0, &mut buf).expect("read_at"))
    });
    g.finish();
}

/// p50/p99/p999 of `MmapImage::open` (10,000 opens, each timed) and of a
/// warm 5-component `lookup` (100,000 batches of 100 lookups, each batch
/// timed and divided by 100: one lookup is shorter than the clock's own
/// cost).
fn print_tails(img_path: &Path, img: &MmapImage, ipath: &str) {
    fn pct(sorted: &[f64], q: f64) -> f64 {
        sorted[((sorted.len() - 1) as f64 * q).round() as usize]
    }
    let mut open_ns: Vec<f64> = (0..10_000)
        .map(|_| {
            let t = std::time::Instant::now();
            let i = MmapImage::open(black_box(img_path)).expect("open");
            let d = t.elapsed().as_nanos() as f64;
            drop(i);
            d
        })
        .collect();
    let mut lookup_ns: Vec<f64> = (0..100_000)
        .map(|_| {
            let t = std::time::Instant::now();
            for _ in 0..100 {
                black_box(img.lookup(black_box(ipath)).expect("lookup"));
            }
            t.elapsed().as_nanos() as f64 / 100.0
        })
        .collect();
    open_ns.sort_by(f64::total_cmp);
    lookup_ns.sort_by(f64::total_cmp);
    println!(
        "rofs tails: open p50 {:.1} µs p99 {:.1} µs p999 {:.1} µs; lookup5 p50 {:.1} ns p99 {:.1} ns p999 {:.1} ns (batches of 100)",
        pct(&open_ns, 0.5) / 1e3,
        pct(&open_ns, 0.99) / 1e3,
        pct(&open_ns, 0.999) / 1e3,
        pct(&lookup_ns, 0.5),
        pct(&lookup_ns, 0.99),
        pct(&lookup_ns, 0.999),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
