//! [`Builder`]: a directory or tar layers → an EROFS image with the faas
//! extension area.
//!
//! Layout of the image it writes (4 KiB blocks):
//!
//! ```text
//! 0      faas header (ExtHeader, 144 bytes; EROFS ignores bytes 0..1024)
//! 1024   EROFS superblock (128 bytes, crc32c)
//! 1152   inodes (nid = byte offset / 32; root = 36), each followed by its
//!        inline xattrs and then its inline tail or chunk map
//! ...    directory blocks, long symlinks            ┐ metadata: bytes 1024..data_start
//! data_start  regular-file data, block aligned      │ covered by the image digest
//! ext_start   path index, path pool, digest table   ┘ (with the extension area)
//! ```

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use zerocopy::IntoBytes;
use zerocopy::little_endian::{U16, U32, U64};

use crate::error::BuildError;
use crate::format::{self, BLKSZ, ExtHeader, InodeCompact, InodeExtended, mode};
use crate::tree::{Content, Kind, Tree};

/// What the builder is doing, for [`Progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the inputs (directory walk, tar layers).
    Scan,
    /// Hashing file contents (BLAKE3, for dedup and the digest table).
    Hash,
    /// Writing the image.
    Write,
}

/// A progress report: `done` of `total` bytes in `phase`.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The phase.
    pub phase: Phase,
    /// Bytes done in this phase.
    pub done: u64,
    /// Bytes in this phase (0 while unknown).
    pub total: u64,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildSummary {
    /// Unique regular files.
    pub files: u64,
    /// Their total size in bytes (apparent).
    pub file_bytes: u64,
    /// Inodes (unique, all types).
    pub inodes: u64,
    /// Size of the image file.
    pub image_len: u64,
    /// Data blocks saved by sharing identical files.
    pub dedup_blocks: u64,
    /// The image digest (BLAKE3).
    pub digest: [u8; 32],
}

/// A file's digest and (for sparse files) its data extents.
type Hashed = ([u8; 32], Vec<(u64, u64)>);

type ProgressFn = dyn Fn(Progress) + Send + Sync;

#[derive(Debug)]
enum Source {
    Dir(PathBuf),
    Tar(PathBuf),
}

/// Builds an EROFS image.
///
/// ```no_run
/// use faas_rofs::Builder;
/// let summary = Builder::new()
///     .dir("/srv/fn/hello")
///     .mtime_clamp(0)
///     .build("/tmp/hello.img".as_ref())?;
/// println!("{} files, digest {}", summary.files, faas_rofs::hex(&summary.digest));
/// # Ok::<(), faas_rofs::BuildError>(())
/// ```
#[derive(Default)]
pub struct Builder {
    sources: Vec<Source>,
    inline_small: bool,
    mtime_clamp: Option<i64>,
    progress: Option<Box<ProgressFn>>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("sources", &self.sources)
            .field("inline_small", &self.inline_small)
            .field("mtime_clamp", &self.mtime_clamp)
            .finish_non_exhaustive()
    }
}

/// One unique inode in layout order.
struct Plan {
    node: usize,
    nid: u64,
    extended: bool,
    layout: u16,
    size: u64,
    nlink: u32,
    xattrs: Vec<u8>,
    /// Bytes stored after the inode and xattrs (inline tail or chunk map).
    inline_len: u64,
    /// Start block of the (full-block) data.
    blkaddr: u32,
    /// For directories: dirents per block.
    dir_blocks: Vec<Vec<(Vec<u8>, usize, u8)>>,
    /// For chunk-based files: chunk size bits (over the block size) and
    /// the start block of each chunk (NULL_ADDR for holes).
    chunk_bits: u8,
    chunks: Vec<u32>,
    /// Data extents (offset, len) of a sparse file.
    extents: Vec<(u64, u64)>,
    digest: Option<[u8; 32]>,
}

impl Builder {
    /// A builder with no inputs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses a directory as the input (only one, and not with tars).
    pub fn dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.sources.push(Source::Dir(path.into()));
        self
    }

    /// Adds a tar or tar.gz file as the next OCI layer.
    pub fn tar(mut self, path: impl Into<PathBuf>) -> Self {
        self.sources.push(Source::Tar(path.into()));
        self
    }

    /// Packs the tail of small files (and of larger files' last block) after
    /// their inode. Such files are not page-aligned and cannot be mapped with
    /// [`faas_core::ImageFs::file_extent`]. Directory tails are always packed.
    pub fn inline_small(mut self, on: bool) -> Self {
        self.inline_small = on;
        self
    }

    /// Clamps every mtime to at most `secs` (sub-second part dropped), for
    /// reproducible images of freshly generated trees.
    pub fn mtime_clamp(mut self, secs: i64) -> Self {
        self.mtime_clamp = Some(secs);
        self
    }

    /// Calls `f` as work progresses (from several threads).
    pub fn progress(mut self, f: impl Fn(Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    fn report(&self, phase: Phase, done: u64, total: u64) {
        if let Some(p) = &self.progress {
            p(Progress { phase, done, total });
        }
    }

    /// Builds the image into `out` (created or truncated).
    ///
    /// # Errors
    ///
    /// An input cannot be read or represented, or the image cannot be written.
    pub fn build(&self, out: &Path) -> Result<BuildSummary, BuildError> {
        let _span = tracing::info_span!("rofs_build", image = %out.display()).entered();
        let tree = self.scan()?;
        let (order, paths, parent) = order_nodes(&tree);
        let mut plans = self.hash(&tree, &order)?;
        let layout = self.layout(&tree, &mut plans, &parent)?;
        self.write(out, &tree, &plans, &paths, layout)
    }

    fn scan(&self) -> Result<Tree, BuildError> {
        self.report(Phase::Scan, 0, 0);
        let mut tree = Tree::new();
        let mut layer = 0;
        for (i, s) in self.sources.iter().enumerate() {
            match s {
                Source::Dir(p) => {
                    if i != 0 || self.sources.len() != 1 {
                        return Err(BuildError::Input {
                            path: p.clone(),
                            what: "a directory must be the only input",
                        });
                    }
                    tree.add_dir(p)?;
                }
                Source::Tar(p) => {
                    layer += 1;
                    let mut f = File::open(p).map_err(|e| BuildError::io(p, e))?;
                    let mut magic = [0u8; 2];
                    let n = f.read(&mut magic).map_err(|e| BuildError::io(p, e))?;
                    let f = File::open(p).map_err(|e| BuildError::io(p, e))?;
                    let r = io::BufReader::with_capacity(1 << 20, f);
                    if n == 2 && magic == [0x1f, 0x8b] {
                        tree.add_tar(layer, p, flate2::read::GzDecoder::new(r))?;
                    } else {
                        tree.add_tar(layer, p, r)?;
                    }
                }
            }
        }
        if self.sources.is_empty() {
            return Err(BuildError::Input {
                path: PathBuf::new(),
                what: "no input given",
            });
        }
        Ok(tree)
    }

    /// Hashes every regular file on all CPUs; returns the plans in order.
    fn hash(&self, tree: &Tree, order: &[usize]) -> Result<Vec<Plan>, BuildError> {
        let mut plans: Vec<Plan> = order
            .iter()
            .map(|&node| Plan {
                node,
                nid: 0,
                extended: false,
                layout: format::LAYOUT_FLAT_PLAIN,
                size: 0,
                nlink: 1,
                xattrs: Vec::new(),
                inline_len: 0,
                blkaddr: 0,
                dir_blocks: Vec::new(),
                chunk_bits: 0,
                chunks: Vec::new(),
                extents: Vec::new(),
                digest: None,
            })
            .collect();
        let files: Vec<usize> = plans
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(tree.nodes[p.node].kind, Kind::File { .. }))
            .map(|(i, _)| i)
            .collect();
        let total: u64 = files
            .iter()
            .map(|&i| match tree.nodes[plans[i].node].kind {
                Kind::File { size, .. } => size,
                _ => 0,
            })
            .sum();
        let next = AtomicUsize::new(0);
        let done = AtomicU64::new(0);
        let results: Mutex<Vec<(usize, Hashed)>> = Mutex::new(Vec::new());
        let first_err: Mutex<Option<BuildError>> = Mutex::new(None);
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8);
        self.report(Phase::Hash, 0, total);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut mine = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&pi) = files.get(k) else { break };
                        if lock(&first_err).is_some() {
                            break;
                        }
                        let node = &tree.nodes[plans[pi].node];
                        match hash_file(tree, node, &mut buf) {
                            Ok(h) => {
                                mine.push((pi, h));
                                if let Kind::File { size, .. } = node.kind {
                                    let now = done.fetch_add(size, Ordering::Relaxed) + size;
                                    self.report(Phase::Hash, now, total);
                                }
                            }
                            Err(e) => {
                                lock(&first_err).get_or_insert(e);
                                break;
                            }
                        }
                    }
                    lock(&results).extend(mine);
                });
            }
        });
        if let Some(e) = first_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        for (pi, (d, ext)) in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
            plans[pi].digest = Some(d);
            plans[pi].extents = ext;
        }
        Ok(plans)
    }

    fn layout(
        &self,
        tree: &Tree,
        plans: &mut [Plan],
        parent: &HashMap<usize, usize>,
    ) -> Result<Layout, BuildError> {
        let bs = BLKSZ;
        let mtime_of = |n: usize| -> (i64, u32) {
            let node = &tree.nodes[n];
            match self.mtime_clamp {
                Some(c) if node.mtime > c || (node.mtime == c && node.mtime_nsec > 0) => (c, 0),
                _ => (node.mtime, node.mtime_nsec),
            }
        };
        // The most common mtime becomes the epoch of compact inodes.
        let mut freq: HashMap<(i64, u32), u64> = HashMap::new();
        for p in plans.iter() {
            *freq.entry(mtime_of(p.node)).or_default() += 1;
        }
        let epoch = freq
            .iter()
            .filter(|((s, _), _)| *s >= 0)
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(k, _)| *k)
            .unwrap_or((0, 0));

        let index_of: HashMap<usize, usize> =
            plans.iter().enumerate().map(|(i, p)| (p.node, i)).collect();
        // Link counts: directory entries naming each node.
        let mut refs: HashMap<usize, u32> = HashMap::new();
        for n in &tree.nodes {
            if let Kind::Dir(children) = &n.kind {
                for &c in children.values() {
                    *refs.entry(c).or_default() += 1;
                }
            }
        }

        // Sizes, layouts, xattrs.
        for p in plans.iter_mut() {
            let node = &tree.nodes[p.node];
            p.xattrs = encode_xattrs(node)?;
            let (size, nlink) = match &node.kind {
                Kind::Dir(children) => {
                    let subdirs = children
                        .values()
                        .filter(|&&c| matches!(tree.nodes[c].kind, Kind::Dir(_)))
                        .count() as u32;
                    let par = parent.get(&p.node).copied().unwrap_or(p.node);
                    let mut ents: Vec<(Vec<u8>, usize, u8)> = children
                        .iter()
                        .map(|(name, &c)| (name.clone(), c, file_type(&tree.nodes[c].kind)))
                        .collect();
                    ents.push((b".".to_vec(), p.node, format::ft::DIR));
                    ents.push((b"..".to_vec(), par, format::ft::DIR));
                    ents.sort_by(|a, b| a.0.cmp(&b.0));
                    p.dir_blocks = pack_dirents(ents, bs as usize);
                    let last = p.dir_blocks.last().map_or(0, dir_block_used);
                    let size = (p.dir_blocks.len() as u64 - 1) * bs + last as u64;
                    (size, 2 + subdirs)
                }
                Kind::File { size, .. } => (*size, refs.get(&p.node).copied().unwrap_or(1)),
                Kind::Symlink(t) => (t.len() as u64, refs.get(&p.node).copied().unwrap_or(1)),
                _ => (0, refs.get(&p.node).copied().unwrap_or(1)),
            };
            p.size = size;
            p.nlink = nlink;
            let (mt, mn) = mtime_of(p.node);
            p.extended = !((mt, mn) == epoch
                && node.uid <= 0xffff
                && node.gid <= 0xffff
                && nlink <= 0xffff
                && size <= u64::from(u32::MAX));
            let isize: u64 = if p.extended { 64 } else { 32 };
            let room = bs - isize - p.xattrs.len() as u64;
            if isize + p.xattrs.len() as u64 > bs {
                return Err(BuildError::Input {
                    path: node.origin.clone(),
                    what: "xattrs too large",
                });
            }
            let tail = size % bs;
            match &node.kind {
                Kind::Dir(_) | Kind::Symlink(_) if tail > 0 && tail <= room => {
                    p.layout = format::LAYOUT_FLAT_INLINE;
                    p.inline_len = tail;
                }
                Kind::File { sparse: true, .. } if size > 0 => {
                    p.layout = format::LAYOUT_CHUNK_BASED;
                    // At most 65536 chunks; at least one block each.
                    let mut bits = 0u8;
                    while (size.div_ceil(bs << bits)) > 65536 {
                        bits += 1;
                    }
                    p.chunk_bits = bits;
                    let n = size.div_ceil(bs << bits);
                    p.inline_len = 4 * n;
                }
                Kind::File { .. } if self.inline_small && tail > 0 && tail <= room => {
                    p.layout = format::LAYOUT_FLAT_INLINE;
                    p.inline_len = tail;
                }
                _ => {}
            }
        }

        // Inode placement.
        let mut pos: u64 = (format::SUPER_OFFSET + size_of::<format::SuperBlock>()) as u64;
        for p in plans.iter_mut() {
            let isize: u64 = if p.extended { 64 } else { 32 };
            let head = isize + p.xattrs.len() as u64;
            let keep_together = if p.layout == format::LAYOUT_FLAT_INLINE {
                head + p.inline_len
            } else {
                head
            };
            if pos % bs + keep_together > bs {
                pos = pos.next_multiple_of(bs);
            }
            p.nid = pos / 32;
            pos = (pos + head + p.inline_len).next_multiple_of(32);
        }
        if plans.first().is_some_and(|p| p.nid > u64::from(u16::MAX)) {
            return Err(BuildError::TooLarge {
                what: "root inode past the 16-bit nid range",
            });
        }
        let mut next_blk = pos.div_ceil(bs);
        let mut alloc = |n: u64| -> Result<u32, BuildError> {
            let b = next_blk;
            next_blk += n;
            if next_blk > u64::from(u32::MAX) {
                return Err(BuildError::TooLarge {
                    what: "more than 2^32 blocks",
                });
            }
            Ok(b as u32)
        };
        // Metadata blocks: directories and long symlinks.
        for p in plans.iter_mut() {
            match tree.nodes[p.node].kind {
                Kind::Dir(_) | Kind::Symlink(_) => {
                    let full = if p.layout == format::LAYOUT_FLAT_INLINE {
                        p.size / bs
                    } else {
                        p.size.div_ceil(bs)
                    };
                    p.blkaddr = if full > 0 { alloc(full)? } else { 0 };
                }
                _ => {}
            }
        }
        let data_start = u64::from(alloc(0)?) * bs;
        // Regular-file data, identical contents share blocks.
        let mut seen: HashMap<(u64, [u8; 32]), (u32, u64)> = HashMap::new();
        let mut dedup_blocks = 0u64;
        for p in plans.iter_mut() {
            if !matches!(tree.nodes[p.node].kind, Kind::File { .. }) || p.size == 0 {
                continue;
            }
            if p.layout == format::LAYOUT_CHUNK_BASED {
                let csize = bs << p.chunk_bits;
                let n = p.size.div_ceil(csize);
                let mut chunks = Vec::with_capacity(n as usize);
                let mut e = 0;
                for c in 0..n {
                    let (lo, hi) = (c * csize, ((c + 1) * csize).min(p.size));
                    while e < p.extents.len() && p.extents[e].0 + p.extents[e].1 <= lo {
                        e += 1;
                    }
                    let has_data = e < p.extents.len() && p.extents[e].0 < hi;
                    chunks.push(if has_data {
                        alloc((hi - lo).div_ceil(bs))?
                    } else {
                        format::NULL_ADDR
                    });
                }
                p.chunks = chunks;
                continue;
            }
            let full = if p.layout == format::LAYOUT_FLAT_INLINE {
                p.size / bs
            } else {
                p.size.div_ceil(bs)
            };
            if full == 0 {
                continue;
            }
            let key = (p.size, p.digest.unwrap_or_default());
            match seen.get(&key) {
                Some(&(b, n)) if n >= full => {
                    p.blkaddr = b;
                    dedup_blocks += full;
                }
                _ => {
                    p.blkaddr = alloc(full)?;
                    seen.insert(key, (p.blkaddr, full));
                }
            }
        }
        let ext_start = u64::from(alloc(0)?) * bs;
        let _ = index_of;
        Ok(Layout {
            epoch,
            data_start,
            ext_start,
            dedup_blocks,
            mtimes: plans.iter().map(|p| mtime_of(p.node)).collect(),
        })
    }

    fn write(
        &self,
        out: &Path,
        tree: &Tree,
        plans: &[Plan],
        paths: &[(Vec<u8>, usize)],
        layout: Layout,
    ) -> Result<BuildSummary, BuildError> {
        let bs = BLKSZ;
        let oerr = |e: io::Error| BuildError::Output {
            image: out.to_path_buf(),
            source: e,
        };
        let nid_of: HashMap<usize, u64> = plans.iter().map(|p| (p.node, p.nid)).collect();
        let mut meta = vec![0u8; layout.data_start as usize];

        for (i, p) in plans.iter().enumerate() {
            let node = &tree.nodes[p.node];
            let off = (p.nid * 32) as usize;
            let (ftype, i_u) = match &node.kind {
                Kind::Dir(_) => (mode::S_IFDIR, p.blkaddr),
                Kind::File { .. } if p.layout == format::LAYOUT_CHUNK_BASED => {
                    (mode::S_IFREG, u32::from(p.chunk_bits))
                }
                Kind::File { .. } => (mode::S_IFREG, p.blkaddr),
                Kind::Symlink(_) => (mode::S_IFLNK, p.blkaddr),
                Kind::CharDev(ma, mi) => (mode::S_IFCHR, format::encode_dev(*ma, *mi)),
                Kind::BlockDev(ma, mi) => (mode::S_IFBLK, format::encode_dev(*ma, *mi)),
                Kind::Fifo => (mode::S_IFIFO, 0),
                Kind::Socket => (mode::S_IFSOCK, 0),
            };
            let fmode = ftype | (node.perm & 0o7777);
            let icount = if p.xattrs.is_empty() {
                0
            } else {
                (p.xattrs.len() as u64 - 12) / 4 + 1
            };
            let icount = u16::try_from(icount).map_err(|_| BuildError::Input {
                path: node.origin.clone(),
                what: "xattrs too large",
            })?;
            let (mt, mn) = layout.mtimes[i];
            let ino32 = (i + 1) as u32;
            let isize = if p.extended {
                let ino = InodeExtended {
                    format: U16::new(1 | (p.layout << 1)),
                    xattr_icount: U16::new(icount),
                    mode: U16::new(fmode),
                    nb: U16::new(0),
                    size: U64::new(p.size),
                    i_u: U32::new(i_u),
                    ino: U32::new(ino32),
                    uid: U32::new(node.uid),
                    gid: U32::new(node.gid),
                    mtime: U64::new(mt as u64),
                    mtime_nsec: U32::new(mn),
                    nlink: U32::new(p.nlink),
                    reserved2: [0; 16],
                };
                meta[off..off + 64].copy_from_slice(ino.as_bytes());
                64
            } else {
                let ino = InodeCompact {
                    format: U16::new(p.layout << 1),
                    xattr_icount: U16::new(icount),
                    mode: U16::new(fmode),
                    nlink: U16::new(p.nlink as u16),
                    size: U32::new(p.size as u32),
                    mtime: U32::new(0),
                    i_u: U32::new(i_u),
                    ino: U32::new(ino32),
                    uid: U16::new(node.uid as u16),
                    gid: U16::new(node.gid as u16),
                    reserved: U32::new(0),
                };
                meta[off..off + 32].copy_from_slice(ino.as_bytes());
                32
            };
            let xoff = off + isize;
            meta[xoff..xoff + p.xattrs.len()].copy_from_slice(&p.xattrs);
            let tail_off = xoff + p.xattrs.len();
            match &node.kind {
                Kind::Dir(_) => {
                    let nb = p.dir_blocks.len();
                    for (bi, blk) in p.dir_blocks.iter().enumerate() {
                        let bytes = encode_dir_block(blk, &nid_of, bs as usize);
                        if bi + 1 == nb && p.layout == format::LAYOUT_FLAT_INLINE {
                            let used = p.inline_len as usize;
                            meta[tail_off..tail_off + used].copy_from_slice(&bytes[..used]);
                        } else {
                            let b = (u64::from(p.blkaddr) + bi as u64) * bs;
                            let b = b as usize;
                            let used = dir_block_used(blk);
                            meta[b..b + used].copy_from_slice(&bytes[..used]);
                        }
                    }
                }
                Kind::Symlink(t) => {
                    if p.layout == format::LAYOUT_FLAT_INLINE {
                        meta[tail_off..tail_off + t.len()].copy_from_slice(t);
                    } else {
                        let b = (u64::from(p.blkaddr) * bs) as usize;
                        meta[b..b + t.len()].copy_from_slice(t);
                    }
                }
                Kind::File { content, .. } if p.layout == format::LAYOUT_FLAT_INLINE => {
                    let tail = p.inline_len as usize;
                    let (f, base) = open_content(tree, content, &node.origin)?;
                    let at = base + p.size - tail as u64;
                    f.read_exact_at(&mut meta[tail_off..tail_off + tail], at)
                        .map_err(|e| BuildError::io(&node.origin, e))?;
                }
                Kind::File { .. } if p.layout == format::LAYOUT_CHUNK_BASED => {
                    for (ci, c) in p.chunks.iter().enumerate() {
                        let o = tail_off + 4 * ci;
                        meta[o..o + 4].copy_from_slice(&c.to_le_bytes());
                    }
                }
                _ => {}
            }
        }

        // The extension area: index, path pool, digests.
        let mut pool = Vec::new();
        let nslots = if paths.is_empty() {
            0
        } else {
            (paths.len() * 2).next_power_of_two()
        };
        let mut slots = vec![format::IndexSlot::default(); nslots];
        for (path, node) in paths {
            let h = format::path_hash(path);
            let mut i = (h as usize) & (nslots - 1);
            while slots[i].path_len.get() != 0 {
                i = (i + 1) & (nslots - 1);
            }
            let (Ok(po), Ok(pl)) = (u32::try_from(pool.len()), u32::try_from(path.len())) else {
                return Err(BuildError::TooLarge {
                    what: "path pool over 4 GiB",
                });
            };
            slots[i] = format::IndexSlot {
                hash: U64::new(h),
                nid: U64::new(nid_of.get(node).copied().unwrap_or(0)),
                path_off: U32::new(po),
                path_len: U32::new(pl),
            };
            pool.extend_from_slice(path);
        }
        let mut digests: Vec<format::DigestEntry> = plans
            .iter()
            .filter_map(|p| {
                p.digest.map(|d| format::DigestEntry {
                    nid: U64::new(p.nid),
                    digest: d,
                })
            })
            .collect();
        digests.sort_by_key(|d| d.nid.get());
        let file_bytes: u64 = plans
            .iter()
            .filter(|p| p.digest.is_some())
            .map(|p| p.size)
            .sum();
        let mut ext = Vec::new();
        let index_off = layout.ext_start;
        ext.extend_from_slice(slots.as_bytes());
        let paths_off = layout.ext_start + ext.len() as u64;
        ext.extend_from_slice(&pool);
        while ext.len() % 8 != 0 {
            ext.push(0);
        }
        let digests_off = layout.ext_start + ext.len() as u64;
        ext.extend_from_slice(digests.as_bytes());
        let ext_len = (ext.len() as u64).next_multiple_of(bs);
        ext.resize(ext_len as usize, 0);
        let image_len = layout.ext_start + ext_len;
        let blocks = u32::try_from(image_len / bs).map_err(|_| BuildError::TooLarge {
            what: "more than 2^32 blocks",
        })?;

        // Superblock.
        let uuid_src = blake3::hash(&ext);
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&uuid_src.as_bytes()[..16]);
        let mut incompat = 0;
        if plans.iter().any(|p| p.layout == format::LAYOUT_CHUNK_BASED) {
            incompat |= format::INCOMPAT_CHUNKED_FILE;
        }
        let root_nid = plans.first().map_or(0, |p| p.nid) as u16;
        let sb = format::SuperBlock {
            magic: U32::new(format::EROFS_MAGIC),
            checksum: U32::new(0),
            feature_compat: U32::new(format::COMPAT_SB_CHKSUM | format::COMPAT_MTIME),
            blkszbits: format::BLKSZ_BITS,
            root_nid: U16::new(root_nid),
            inos: U64::new(plans.len() as u64),
            epoch: U64::new(layout.epoch.0 as u64),
            fixed_nsec: U32::new(layout.epoch.1),
            blocks: U32::new(blocks),
            meta_blkaddr: U32::new(0),
            xattr_blkaddr: U32::new(0),
            uuid,
            feature_incompat: U32::new(incompat),
            ..Default::default()
        };
        let so = format::SUPER_OFFSET;
        meta[so..so + 128].copy_from_slice(sb.as_bytes());
        let crc = format::sb_checksum(&meta[so..bs as usize]);
        meta[so + 4..so + 8].copy_from_slice(&crc.to_le_bytes());

        // Header and image digest.
        let mut hdr = ExtHeader {
            magic: format::EXT_MAGIC,
            version: U32::new(format::EXT_VERSION),
            header_len: U32::new(size_of::<ExtHeader>() as u32),
            image_len: U64::new(image_len),
            data_start: U64::new(layout.data_start),
            ext_start: U64::new(layout.ext_start),
            index_off: U64::new(index_off),
            index_slots: U64::new(nslots as u64),
            paths_off: U64::new(paths_off),
            paths_len: U64::new(pool.len() as u64),
            digests_off: U64::new(digests_off),
            digests_count: U64::new(digests.len() as u64),
            files: U64::new(digests.len() as u64),
            file_bytes: U64::new(file_bytes),
            ..Default::default()
        };
        hdr.header_crc = U32::new(format::header_crc(&hdr));
        let digest = format::image_digest(&hdr, &meta[so..], &ext);
        hdr.image_digest = digest;
        meta[..size_of::<ExtHeader>()].copy_from_slice(hdr.as_bytes());

        // Write.
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(out)
            .map_err(oerr)?;
        f.set_len(image_len).map_err(oerr)?;
        f.write_all_at(&meta, 0).map_err(oerr)?;
        let total: u64 = plans
            .iter()
            .filter(|p| matches!(tree.nodes[p.node].kind, Kind::File { .. }))
            .map(|p| p.size)
            .sum();
        let mut done = 0u64;
        let mut written: HashMap<u32, ()> = HashMap::new();
        self.report(Phase::Write, 0, total);
        for p in plans {
            let node = &tree.nodes[p.node];
            let Kind::File { content, .. } = &node.kind else {
                continue;
            };
            if p.size == 0 {
                continue;
            }
            let (src, base) = open_content(tree, content, &node.origin)?;
            if p.layout == format::LAYOUT_CHUNK_BASED {
                let csize = bs << p.chunk_bits;
                for (ci, &blk) in p.chunks.iter().enumerate() {
                    if blk == format::NULL_ADDR {
                        continue;
                    }
                    let lo = ci as u64 * csize;
                    let hi = (lo + csize).min(p.size);
                    // Only the data extents inside the chunk: holes stay holes.
                    for &(eo, el) in &p.extents {
                        let (a, b) = (eo.max(lo), (eo + el).min(hi));
                        if a < b {
                            let dst = u64::from(blk) * bs + (a - lo);
                            copy_range(&src, base + a, &f, dst, b - a, &node.origin, out)?;
                        }
                    }
                }
            } else {
                let full = if p.layout == format::LAYOUT_FLAT_INLINE {
                    p.size / bs * bs
                } else {
                    p.size
                };
                if full > 0 && written.insert(p.blkaddr, ()).is_none() {
                    copy_range(
                        &src,
                        base,
                        &f,
                        u64::from(p.blkaddr) * bs,
                        full,
                        &node.origin,
                        out,
                    )?;
                }
            }
            done += p.size;
            self.report(Phase::Write, done, total);
        }
        f.write_all_at(&ext, layout.ext_start).map_err(oerr)?;
        Ok(BuildSummary {
            files: digests.len() as u64,
            file_bytes,
            inodes: plans.len() as u64,
            image_len,
            dedup_blocks: layout.dedup_blocks,
            digest,
        })
    }
}

struct Layout {
    epoch: (i64, u32),
    data_start: u64,
    ext_start: u64,
    dedup_blocks: u64,
    mtimes: Vec<(i64, u32)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Unique nodes in breadth-first order (root first, children by name); every
/// path (hardlinks included) with its node; each directory's parent.
#[allow(clippy::type_complexity)]
fn order_nodes(tree: &Tree) -> (Vec<usize>, Vec<(Vec<u8>, usize)>, HashMap<usize, usize>) {
    let mut order = vec![0usize];
    let mut seen = vec![false; tree.nodes.len()];
    seen[0] = true;
    let mut paths = Vec::new();
    let mut parent = HashMap::new();
    let mut queue = std::collections::VecDeque::from([(0usize, Vec::new())]);
    while let Some((dir, prefix)) = queue.pop_front() {
        let Kind::Dir(children) = &tree.nodes[dir].kind else {
            continue;
        };
        for (name, &c) in children {
            let mut path = prefix.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name);
            paths.push((path.clone(), c));
            if !seen[c] {
                seen[c] = true;
                order.push(c);
                if matches!(tree.nodes[c].kind, Kind::Dir(_)) {
                    parent.insert(c, dir);
                    queue.push_back((c, path));
                }
            }
        }
    }
    (order, paths, parent)
}

fn file_type(k: &Kind) -> u8 {
    match k {
        Kind::Dir(_) => format::ft::DIR,
        Kind::File { .. } => format::ft::REG,
        Kind::Symlink(_) => format::ft::LNK,
        Kind::CharDev(..) => format::ft::CHR,
        Kind::BlockDev(..) => format::ft::BLK,
        Kind::Fifo => format::ft::FIFO,
        Kind::Socket => format::ft::SOCK,
    }
}

type DirBlock = Vec<(Vec<u8>, usize, u8)>;

fn pack_dirents(ents: Vec<(Vec<u8>, usize, u8)>, bs: usize) -> Vec<DirBlock> {
    let mut blocks = vec![Vec::new()];
    let mut used = 0usize;
    for e in ents {
        let need = 12 + e.0.len();
        if used + need > bs {
            blocks.push(Vec::new());
            used = 0;
        }
        used += need;
        if let Some(b) = blocks.last_mut() {
            b.push(e);
        }
    }
    blocks
}

fn dir_block_used(b: &DirBlock) -> usize {
    b.iter().map(|e| 12 + e.0.len()).sum()
}

fn encode_dir_block(b: &DirBlock, nid_of: &HashMap<usize, u64>, bs: usize) -> Vec<u8> {
    let mut out = vec![0u8; bs];
    let mut nameoff = 12 * b.len();
    for (i, (name, node, ft)) in b.iter().enumerate() {
        let d = format::Dirent {
            nid: U64::new(nid_of.get(node).copied().unwrap_or(0)),
            nameoff: U16::new(nameoff as u16),
            file_type: *ft,
            reserved: 0,
        };
        out[12 * i..12 * i + 12].copy_from_slice(d.as_bytes());
        out[nameoff..nameoff + name.len()].copy_from_slice(name);
        nameoff += name.len();
    }
    out
}

fn encode_xattrs(node: &crate::tree::Node) -> Result<Vec<u8>, BuildError> {
    if node.xattrs.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = vec![0u8; 12];
    for (name, value) in &node.xattrs {
        let (idx, suffix) =
            format::xattr_split(name).ok_or_else(|| BuildError::UnsupportedXattr {
                path: node.origin.clone(),
                name: String::from_utf8_lossy(name).into_owned(),
            })?;
        let (Ok(nl), Ok(vl)) = (u8::try_from(suffix.len()), u16::try_from(value.len())) else {
            return Err(BuildError::Input {
                path: node.origin.clone(),
                what: "xattr too large",
            });
        };
        let e = format::XattrEntry {
            name_len: nl,
            name_index: idx,
            value_size: U16::new(vl),
        };
        out.extend_from_slice(e.as_bytes());
        out.extend_from_slice(suffix);
        out.extend_from_slice(value);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    Ok(out)
}

/// Opens a file's source: the file and the offset of its first byte.
fn open_content<'t>(
    tree: &'t Tree,
    content: &Content,
    origin: &Path,
) -> Result<(Src<'t>, u64), BuildError> {
    match content {
        Content::Path(p) => Ok((
            Src::Own(File::open(p).map_err(|e| BuildError::io(p, e))?),
            0,
        )),
        Content::Spool { offset } => match &tree.spool {
            Some(s) => Ok((Src::Spool(s), *offset)),
            None => Err(BuildError::Changed {
                path: origin.to_path_buf(),
            }),
        },
    }
}

enum Src<'t> {
    Own(File),
    Spool(&'t File),
}

impl std::ops::Deref for Src<'_> {
    type Target = File;
    fn deref(&self) -> &File {
        match self {
            Src::Own(f) => f,
            Src::Spool(f) => f,
        }
    }
}

/// BLAKE3 of a file and, for sparse files, its data extents.
fn hash_file(tree: &Tree, node: &crate::tree::Node, buf: &mut [u8]) -> Result<Hashed, BuildError> {
    let Kind::File {
        content,
        size,
        sparse,
    } = &node.kind
    else {
        return Err(BuildError::Changed {
            path: node.origin.clone(),
        });
    };
    let (f, base) = open_content(tree, content, &node.origin)?;
    let origin = &node.origin;
    let extents = if *sparse {
        data_extents(&f, *size).map_err(|e| BuildError::io(origin, e))?
    } else {
        vec![(0, *size)]
    };
    let mut h = blake3::Hasher::new();
    let zeros = [0u8; 64 * 1024];
    let mut pos = 0u64;
    for &(eo, el) in &extents {
        while pos < eo {
            let n = (eo - pos).min(zeros.len() as u64) as usize;
            h.update(&zeros[..n]);
            pos += n as u64;
        }
        let end = eo + el;
        while pos < end {
            let n = ((end - pos).min(buf.len() as u64)) as usize;
            let got = f
                .read_at(&mut buf[..n], base + pos)
                .map_err(|e| BuildError::io(origin, e))?;
            if got == 0 {
                return Err(BuildError::Changed {
                    path: origin.clone(),
                });
            }
            h.update(&buf[..got]);
            pos += got as u64;
        }
    }
    while pos < *size {
        let n = (*size - pos).min(zeros.len() as u64) as usize;
        h.update(&zeros[..n]);
        pos += n as u64;
    }
    // A file that grew since it was listed.
    if !*sparse
        && f.read_at(&mut buf[..1], base + size)
            .map_err(|e| BuildError::io(origin, e))?
            != 0
        && matches!(content, Content::Path(_))
    {
        return Err(BuildError::Changed {
            path: origin.clone(),
        });
    }
    Ok((*h.finalize().as_bytes(), extents))
}

/// The data extents of a sparse file (SEEK_DATA / SEEK_HOLE).
fn data_extents(f: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    use rustix::fs::{SeekFrom, seek};
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match seek(f, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = seek(f, SeekFrom::Hole(start))
            .map_err(io::Error::from)?
            .min(size);
        out.push((start, end - start));
        pos = end;
    }
    Ok(out)
}

/// Copies `len` bytes with copy_file_range (falling back to read/write).
fn copy_range(
    src: &File,
    mut src_off: u64,
    dst: &File,
    mut dst_off: u64,
    len: u64,
    origin: &Path,
    out: &Path,
) -> Result<(), BuildError> {
    let mut left = len;
    while left > 0 {
        let chunk = left.min(1 << 30) as usize;
        match rustix::fs::copy_file_range(src, Some(&mut src_off), dst, Some(&mut dst_off), chunk) {
            Ok(0) => {
                return Err(BuildError::Changed {
                    path: origin.to_path_buf(),
                });
            }
            Ok(n) => left -= n as u64,
            Err(_) => break,
        }
    }
    let mut buf = vec![0u8; if left > 0 { 1 << 20 } else { 0 }];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        let got = src
            .read_at(&mut buf[..n], src_off)
            .map_err(|e| BuildError::io(origin, e))?;
        if got == 0 {
            return Err(BuildError::Changed {
                path: origin.to_path_buf(),
            });
        }
        dst.write_all_at(&buf[..got], dst_off)
            .map_err(|e| BuildError::Output {
                image: out.to_path_buf(),
                source: e,
            })?;
        src_off += got as u64;
        dst_off += got as u64;
        left -= got as u64;
    }
    Ok(())
}
