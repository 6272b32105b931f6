//! `faas image ...`: build, inspect, verify and mount faas-rofs images.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use faas_core::{FileType, ImageError, ImageFs, Stat};
use faas_rofs::{Builder, MmapImage, Phase, hex};
use indicatif::{ProgressBar, ProgressStyle};

/// `faas image` arguments.
#[derive(Args)]
pub(crate) struct ImageArgs {
    #[command(subcommand)]
    cmd: ImageCmd,
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Build an image from a directory, or from tar / tar.gz layers applied in order.
    Build {
        /// A directory, or one or more .tar / .tar.gz files (OCI layers, in order).
        #[arg(required = true)]
        src: Vec<PathBuf>,
        /// The image to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Pack small files' tails after their inodes (such files cannot be mapped directly).
        #[arg(long)]
        inline_small: bool,
        /// Clamp every mtime to at most SECS (reproducible builds).
        #[arg(long, value_name = "SECS")]
        mtime: Option<i64>,
    },
    /// List a directory of an image (default: the root).
    Ls {
        /// The image.
        image: PathBuf,
        /// Directory or file in the image.
        path: Option<String>,
    },
    /// Write a file of an image to stdout.
    Cat {
        /// The image.
        image: PathBuf,
        /// File in the image.
        path: String,
    },
    /// Show the metadata of a path in an image.
    Stat {
        /// The image.
        image: PathBuf,
        /// Path in the image.
        path: String,
    },
    /// Check every file digest and the image digest; exit 0 only if all match.
    Verify {
        /// The image.
        image: PathBuf,
    },
    /// Mount an image with the kernel's erofs (read-only, nodev, nosuid; needs root).
    Mount {
        /// The image.
        image: PathBuf,
        /// Mount point (an existing directory).
        dir: PathBuf,
    },
    /// Unmount an image mounted with `faas image mount`.
    Umount {
        /// Mount point.
        dir: PathBuf,
    },
}

/// Runs `faas image ...`. The error chain becomes one line; a cause whose
/// text its parent already shows (the library errors name their cause) is
/// not repeated.
pub(crate) fn run(args: ImageArgs) -> anyhow::Result<()> {
    run_inner(args).map_err(|e| {
        let mut line = String::new();
        for cause in e.chain() {
            let text = cause.to_string();
            if !line.contains(&text) {
                if !line.is_empty() {
                    line.push_str(": ");
                }
                line.push_str(&text);
            }
        }
        anyhow::anyhow!(line)
    })
}

fn run_inner(args: ImageArgs) -> anyhow::Result<()> {
    match args.cmd {
        ImageCmd::Build {
            src,
            output,
            inline_small,
            mtime,
        } => build(&src, &output, inline_small, mtime),
        ImageCmd::Ls { image, path } => ls(&image, path.as_deref().unwrap_or("/")),
        ImageCmd::Cat { image, path } => cat(&image, &path),
        ImageCmd::Stat { image, path } => stat(&image, &path),
        ImageCmd::Verify { image } => verify(&image),
        ImageCmd::Mount { image, dir } => mount(&image, &dir),
        ImageCmd::Umount { dir } => {
            rustix::mount::unmount(&dir, rustix::mount::UnmountFlags::empty())
                .with_context(|| format!("unmounting {}", dir.display()))?;
            outln!("unmounted {}", dir.display());
            Ok(())
        }
    }
}

fn bar(len: u64) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>8} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

fn build(
    src: &[PathBuf],
    output: &Path,
    inline_small: bool,
    mtime: Option<i64>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut b = Builder::new().inline_small(inline_small);
    for s in src {
        let meta = std::fs::metadata(s).with_context(|| format!("input {}", s.display()))?;
        b = if meta.is_dir() {
            if src.len() != 1 {
                bail!("{}: a directory must be the only input", s.display());
            }
            b.dir(s)
        } else {
            b.tar(s)
        };
    }
    if let Some(m) = mtime {
        b = b.mtime_clamp(m);
    }
    let pb = bar(0);
    let pb2 = pb.clone();
    b = b.progress(move |p| {
        let msg = match p.phase {
            Phase::Scan => "scan",
            Phase::Hash => "hash",
            Phase::Write => "write",
        };
        if pb2.message() != msg {
            pb2.set_message(msg);
            pb2.set_position(0);
        }
        pb2.set_length(p.total);
        pb2.set_position(p.done);
    });
    let r = b.build(output);
    pb.finish_and_clear();
    let s = r?;
    outln!(
        "{}: {} files, {} bytes, image {} bytes, digest {}, {:.2} s",
        output.display(),
        s.files,
        s.file_bytes,
        s.image_len,
        hex(&s.digest),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn type_char(t: FileType) -> char {
    match t {
        FileType::Regular => '-',
        FileType::Directory => 'd',
        FileType::Symlink => 'l',
        FileType::CharDevice => 'c',
        FileType::BlockDevice => 'b',
        FileType::Fifo => 'p',
        FileType::Socket => 's',
    }
}

fn perm_string(s: &Stat) -> String {
    let mut out = String::new();
    out.push(type_char(s.file_type));
    let p = s.perm;
    for (shift, special, sch) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (p >> shift) & 7;
        out.push(if bits & 4 != 0 { 'r' } else { '-' });
        out.push(if bits & 2 != 0 { 'w' } else { '-' });
        out.push(match (bits & 1 != 0, p & special != 0) {
            (true, true) => sch,
            (false, true) => sch.to_ascii_uppercase(),
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    out
}

fn line(img: &MmapImage, name: &str, s: &Stat) -> String {
    let mut l = format!(
        "{} {:>3} {:>5} {:>5} {:>12} {}",
        perm_string(s),
        s.nlink,
        s.uid,
        s.gid,
        s.size,
        name
    );
    if s.file_type == FileType::Symlink
        && let Ok(t) = img.read_link(s.ino)
    {
        l.push_str(" -> ");
        l.push_str(&String::from_utf8_lossy(&t));
    }
    l
}

fn ls(image: &Path, path: &str) -> anyhow::Result<()> {
    let img = MmapImage::open(image)?;
    let ino = img.lookup(path)?;
    let st = img.stat(ino)?;
    let mut out = std::io::stdout().lock();
    if st.file_type != FileType::Directory {
        writeln!(out, "{}", line(&img, path, &st))?;
        return Ok(());
    }
    for e in img.read_dir(ino)? {
        let s = img.stat(e.ino)?;
        writeln!(out, "{}", line(&img, &e.name.to_string_lossy(), &s))?;
    }
    Ok(())
}

fn cat(image: &Path, path: &str) -> anyhow::Result<()> {
    let img = MmapImage::open(image)?;
    let ino = img.lookup(path)?;
    let mut out = std::io::stdout().lock();
    match img.bytes(ino) {
        Ok(b) => out.write_all(b)?,
        Err(ImageError::NotMappable { .. }) => {
            let mut buf = vec![0u8; 1 << 20];
            let mut off = 0u64;
            loop {
                let n = img.read_at(ino, off, &mut buf)?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])?;
                off += n as u64;
            }
        }
        Err(e) => return Err(e.into()),
    }
    out.flush()?;
    Ok(())
}

fn stat(image: &Path, path: &str) -> anyhow::Result<()> {
    let img = MmapImage::open(image)?;
    let ino = img.lookup(path)?;
    let s = img.stat(ino)?;
    outln!("  path: {path}");
    outln!(" inode: {}", s.ino);
    outln!("  type: {:?}", s.file_type);
    outln!("  mode: {:04o} ({})", s.perm, perm_string(&s));
    outln!("   uid: {}  gid: {}  links: {}", s.uid, s.gid, s.nlink);
    outln!("  size: {}", s.size);
    outln!(" mtime: {}", s.mtime);
    if matches!(s.file_type, FileType::CharDevice | FileType::BlockDevice) {
        let (ma, mi) = faas_rofs::format::decode_dev(s.rdev);
        outln!("device: {ma},{mi}");
    }
    if s.file_type == FileType::Symlink {
        outln!("target: {}", String::from_utf8_lossy(&img.read_link(ino)?));
    }
    if s.file_type == FileType::Regular {
        match img.file_extent(ino) {
            Ok(x) => outln!("extent: offset {} length {} (mappable)", x.offset, x.len),
            Err(_) => outln!("extent: not stored as one mappable extent"),
        }
        if let Some(d) = img.file_digest(ino) {
            outln!("blake3: {}", hex(&d));
        }
    }
    for (k, v) in img.xattrs(ino)? {
        outln!(
            " xattr: {}={}",
            String::from_utf8_lossy(&k),
            String::from_utf8_lossy(&v)
        );
    }
    Ok(())
}

fn verify(image: &Path) -> anyhow::Result<()> {
    let start = Instant::now();
    let img = MmapImage::open(image)?;
    let pb = bar(0);
    pb.set_message("verify");
    let r = img.verify(|done, total| {
        pb.set_length(total);
        pb.set_position(done);
    });
    pb.finish_and_clear();
    let rep = r?;
    outln!(
        "{}: ok: {} files, {} bytes, {} directories, digest {}, {:.2} s",
        image.display(),
        rep.files,
        rep.bytes,
        rep.dirs,
        hex(&rep.digest),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn mount(image: &Path, dir: &Path) -> anyhow::Result<()> {
    use rustix::mount::{MountFlags, mount};
    // Validate first, so a bad image gives our error, not the kernel's EINVAL.
    MmapImage::open(image)?;
    let src = std::fs::canonicalize(image).with_context(|| format!("image {}", image.display()))?;
    mount(
        &src,
        dir,
        "erofs",
        MountFlags::RDONLY | MountFlags::NODEV | MountFlags::NOSUID,
        None,
    )
    .with_context(|| {
        format!(
            "mount -t erofs {} {} (needs root and a kernel with file-backed erofs, 6.12+)",
            image.display(),
            dir.display()
        )
    })?;
    outln!("mounted {} on {}", image.display(), dir.display());
    Ok(())
}
