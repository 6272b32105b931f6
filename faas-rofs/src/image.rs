//! [`MmapImage`]: the zero-copy loader. Every offset and length read from
//! the image is checked against the mapping before use; a corrupt image
//! yields [`ImageError`], never a panic or an out-of-bounds read.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use faas_core::{DirEntry, FileExtent, FileType, ImageError, ImageFs, Ino, Stat};
use zerocopy::FromBytes;

use crate::error::VerifyError;
use crate::format::{
    self, ChunkIndex, DigestEntry, Dirent, ExtHeader, IndexSlot, InodeCompact, InodeExtended,
    SuperBlock, XattrEntry, XattrIbodyHeader, mode,
};
use crate::mmap::Mapping;

type Result<T, E = ImageError> = std::result::Result<T, E>;

/// A read-only EROFS image mapped into memory.
///
/// Reads need no locks: the type is `Send + Sync` and every method takes
/// `&self`. The image file must not change while it is open (truncating a
/// mapped file makes later reads fault with `SIGBUS`); images are immutable
/// by contract — build a new file instead of rewriting one.
pub struct MmapImage {
    path: PathBuf,
    file: File,
    map: Mapping,
    blkbits: u8,
    meta_base: u64,
    xattr_base: u64,
    root: u64,
    epoch: u64,
    fixed_nsec: u32,
    ext: Option<Ext>,
}

impl std::fmt::Debug for MmapImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmapImage")
            .field("path", &self.path)
            .field("len", &self.map.bytes().len())
            .field("root", &self.root)
            .field("faas_extension", &self.ext.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
struct Ext {
    hdr: ExtHeader,
}

/// A parsed, validated inode.
#[derive(Debug, Clone, Copy)]
struct Inode {
    nid: u64,
    /// Byte offset of the inode.
    off: u64,
    /// End of inode + xattrs (start of inline data).
    body_end: u64,
    xattr_isize: u64,
    mode: u16,
    layout: u16,
    size: u64,
    nlink: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    i_u: u32,
    chunk: Option<ChunkInfo>,
}

#[derive(Debug, Clone, Copy)]
struct ChunkInfo {
    bits: u8,
    unit: u64,
    map_off: u64,
    count: u64,
}

/// What [`MmapImage::verify`] checked.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// Regular files whose digest matched.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Directories walked.
    pub dirs: u64,
    /// The image digest.
    pub digest: [u8; 32],
}

fn file_type_of(m: u16) -> Option<FileType> {
    Some(match m & mode::S_IFMT {
        mode::S_IFREG => FileType::Regular,
        mode::S_IFDIR => FileType::Directory,
        mode::S_IFLNK => FileType::Symlink,
        mode::S_IFCHR => FileType::CharDevice,
        mode::S_IFBLK => FileType::BlockDevice,
        mode::S_IFIFO => FileType::Fifo,
        mode::S_IFSOCK => FileType::Socket,
        _ => return None,
    })
}

fn ft_of_dirent(t: u8) -> Option<FileType> {
    Some(match t {
        format::ft::REG => FileType::Regular,
        format::ft::DIR => FileType::Directory,
        format::ft::LNK => FileType::Symlink,
        format::ft::CHR => FileType::CharDevice,
        format::ft::BLK => FileType::BlockDevice,
        format::ft::FIFO => FileType::Fifo,
        format::ft::SOCK => FileType::Socket,
        _ => return None,
    })
}

impl MmapImage {
    /// Opens and validates an image file.
    ///
    /// # Errors
    ///
    /// The file cannot be opened or mapped, or its superblock, root inode or
    /// faas header is invalid.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| ImageError::Io {
            image: path.to_path_buf(),
            source,
        })?;
        Self::from_file(file, path)
    }

    /// Opens an image from an already open file descriptor; `name` is used
    /// in error messages.
    ///
    /// # Errors
    ///
    /// As [`MmapImage::open`].
    pub fn from_fd(fd: OwnedFd, name: impl Into<PathBuf>) -> Result<Self> {
        Self::from_file(File::from(fd), name)
    }

    /// Opens an image from an open [`File`].
    ///
    /// # Errors
    ///
    /// As [`MmapImage::open`].
    pub fn from_file(file: File, name: impl Into<PathBuf>) -> Result<Self> {
        let path = name.into();
        let meta = file.metadata().map_err(|source| ImageError::Io {
            image: path.clone(),
            source,
        })?;
        let min = (format::SUPER_OFFSET + size_of::<SuperBlock>()) as u64;
        if meta.len() < min {
            return Err(ImageError::Corrupt {
                image: path,
                offset: meta.len(),
                what: "image shorter than its superblock",
            });
        }
        if !meta.is_file() {
            return Err(ImageError::Corrupt {
                image: path,
                offset: 0,
                what: "not a regular file",
            });
        }
        let map = Mapping::new(&file).map_err(|source| ImageError::Io {
            image: path.clone(),
            source,
        })?;
        let mut img = MmapImage {
            path,
            file,
            map,
            blkbits: format::BLKSZ_BITS,
            meta_base: 0,
            xattr_base: 0,
            root: 0,
            epoch: 0,
            fixed_nsec: 0,
            ext: None,
        };
        img.validate()?;
        Ok(img)
    }

    fn corrupt(&self, offset: u64, what: &'static str) -> ImageError {
        ImageError::Corrupt {
            image: self.path.clone(),
            offset,
            what,
        }
    }

    fn unsupported(&self, what: &'static str) -> ImageError {
        ImageError::Unsupported {
            image: self.path.clone(),
            what,
        }
    }

    fn len(&self) -> u64 {
        self.map.bytes().len() as u64
    }

    fn bs(&self) -> u64 {
        1 << self.blkbits
    }

    /// `len` bytes at `off`, or a corruption error naming `what`.
    fn slice(&self, off: u64, len: u64, what: &'static str) -> Result<&[u8]> {
        let end = off
            .checked_add(len)
            .ok_or_else(|| self.corrupt(off, what))?;
        let (Ok(s), Ok(e)) = (usize::try_from(off), usize::try_from(end)) else {
            return Err(self.corrupt(off, what));
        };
        self.map
            .bytes()
            .get(s..e)
            .ok_or_else(|| self.corrupt(off, what))
    }

    fn read<T: FromBytes + zerocopy::KnownLayout + zerocopy::Immutable + zerocopy::Unaligned>(
        &self,
        off: u64,
        what: &'static str,
    ) -> Result<&T> {
        let b = self.slice(off, size_of::<T>() as u64, what)?;
        T::ref_from_bytes(b).map_err(|_| self.corrupt(off, what))
    }

    fn validate(&mut self) -> Result<()> {
        let so = format::SUPER_OFFSET as u64;
        let sb = *self.read::<SuperBlock>(so, "superblock out of range")?;
        if sb.magic.get() != format::EROFS_MAGIC {
            return Err(self.corrupt(so, "bad EROFS magic"));
        }
        if !(9..=16).contains(&sb.blkszbits) {
            return Err(self.corrupt(so + 12, "block size out of range"));
        }
        self.blkbits = sb.blkszbits;
        let bs = self.bs();
        if sb.feature_compat.get() & format::COMPAT_SB_CHKSUM != 0 {
            let len = if bs > so { bs - so } else { bs };
            let region = self.slice(so, len, "superblock block truncated")?;
            let mut copy = region.to_vec();
            copy[4..8].fill(0);
            if format::sb_checksum(&copy) != sb.checksum.get() {
                return Err(self.corrupt(so + 4, "superblock checksum mismatch"));
            }
        }
        let incompat = sb.feature_incompat.get();
        if incompat & !format::INCOMPAT_SUPPORTED != 0 {
            return Err(self.unsupported("incompatible EROFS features (compression, 48-bit, ...)"));
        }
        if sb.extra_devices.get() != 0 {
            return Err(self.unsupported("multiple devices"));
        }
        if sb.dirblkbits != 0 {
            return Err(self.unsupported("directory block size other than the block size"));
        }
        self.meta_base = u64::from(sb.meta_blkaddr.get()) << self.blkbits;
        self.xattr_base = u64::from(sb.xattr_blkaddr.get()) << self.blkbits;
        if self.meta_base >= self.len() {
            return Err(self.corrupt(so + 40, "metadata area starts past the end of the image"));
        }
        self.epoch = sb.epoch.get();
        self.fixed_nsec = sb.fixed_nsec.get();
        self.root = u64::from(sb.root_nid.get());
        let root = self.inode(self.root)?;
        if root.mode & mode::S_IFMT != mode::S_IFDIR {
            return Err(self.corrupt(root.off, "root inode is not a directory"));
        }
        self.ext = self.parse_ext()?;
        Ok(())
    }

    fn parse_ext(&self) -> Result<Option<Ext>> {
        let b = self.map.bytes();
        if b.get(..8) != Some(&format::EXT_MAGIC[..]) {
            return Ok(None);
        }
        let hdr = *self.read::<ExtHeader>(0, "faas header truncated")?;
        if hdr.version.get() != format::EXT_VERSION {
            return Err(self.unsupported("faas extension version"));
        }
        if hdr.header_len.get() as usize != size_of::<ExtHeader>() || hdr.reserved.get() != 0 {
            return Err(self.corrupt(8, "faas header length"));
        }
        if format::header_crc(&hdr) != hdr.header_crc.get() {
            return Err(self.corrupt(0, "faas header checksum mismatch"));
        }
        let len = self.len();
        let (ds, es) = (hdr.data_start.get(), hdr.ext_start.get());
        if hdr.image_len.get() != len || ds < format::SUPER_OFFSET as u64 || ds > es || es > len {
            return Err(self.corrupt(16, "faas header regions outside the image"));
        }
        let within = |off: u64, n: u64, unit: u64| -> bool {
            n.checked_mul(unit)
                .and_then(|sz| off.checked_add(sz))
                .is_some_and(|end| off >= es && end <= len)
        };
        let slots = hdr.index_slots.get();
        if (slots != 0 && !slots.is_power_of_two())
            || !within(hdr.index_off.get(), slots, size_of::<IndexSlot>() as u64)
        {
            return Err(self.corrupt(40, "faas path index outside the image"));
        }
        if !within(hdr.paths_off.get(), hdr.paths_len.get(), 1) {
            return Err(self.corrupt(56, "faas path pool outside the image"));
        }
        if !within(
            hdr.digests_off.get(),
            hdr.digests_count.get(),
            size_of::<DigestEntry>() as u64,
        ) {
            return Err(self.corrupt(72, "faas digest table outside the image"));
        }
        Ok(Some(Ext { hdr }))
    }

    fn inode(&self, nid: Ino) -> Result<Inode> {
        let off = nid
            .checked_mul(32)
            .and_then(|o| o.checked_add(self.meta_base))
            .ok_or_else(|| self.corrupt(self.meta_base, "inode number out of range"))?;
        let fmt_b = self.slice(off, 2, "inode past the end of the image")?;
        let fmt = u16::from_le_bytes([fmt_b[0], fmt_b[1]]);
        if fmt & !0x0f != 0 {
            return Err(self.unsupported("inode format bits (48-bit layouts)"));
        }
        let layout = (fmt >> 1) & 7;
        let (isize, icount, m, size, nlink, uid, gid, mtime, i_u) = if fmt & 1 == 0 {
            let c = self.read::<InodeCompact>(off, "inode past the end of the image")?;
            let mtime = i64::try_from(self.epoch.saturating_add(u64::from(c.mtime.get())))
                .unwrap_or(i64::MAX);
            (
                32u64,
                c.xattr_icount.get(),
                c.mode.get(),
                u64::from(c.size.get()),
                u32::from(c.nlink.get()),
                u32::from(c.uid.get()),
                u32::from(c.gid.get()),
                mtime,
                c.i_u.get(),
            )
        } else {
            let e = self.read::<InodeExtended>(off, "inode past the end of the image")?;
            (
                64u64,
                e.xattr_icount.get(),
                e.mode.get(),
                e.size.get(),
                e.nlink.get(),
                e.uid.get(),
                e.gid.get(),
                e.mtime.get() as i64,
                e.i_u.get(),
            )
        };
        if file_type_of(m).is_none() {
            return Err(self.corrupt(off + 4, "invalid file type in inode mode"));
        }
        let xattr_isize = format::xattr_ibody_size(icount);
        let body_end = off + isize + xattr_isize;
        if body_end > self.len() {
            return Err(self.corrupt(off, "inode xattrs past the end of the image"));
        }
        let mut ino = Inode {
            nid,
            off,
            body_end,
            xattr_isize,
            mode: m,
            layout,
            size,
            nlink,
            uid,
            gid,
            mtime,
            i_u,
            chunk: None,
        };
        let ftype = m & mode::S_IFMT;
        if ftype == mode::S_IFLNK && size >= 4096 {
            return Err(self.corrupt(off + 8, "symlink target longer than 4095 bytes"));
        }
        let has_data = matches!(ftype, mode::S_IFREG | mode::S_IFDIR | mode::S_IFLNK);
        if !has_data || size == 0 {
            return Ok(ino);
        }
        if ftype != mode::S_IFREG && layout == format::LAYOUT_CHUNK_BASED {
            // Keeps directory and symlink sizes bounded by the image size.
            return Err(self.unsupported("chunk-based directories or symlinks"));
        }
        let bs = self.bs();
        match layout {
            format::LAYOUT_FLAT_PLAIN => {
                let start = u64::from(i_u) << self.blkbits;
                self.slice(start, size, "inode data past the end of the image")?;
            }
            format::LAYOUT_FLAT_INLINE => {
                let nblocks = size.div_ceil(bs);
                let tail = size - (nblocks - 1) * bs;
                if body_end % bs + tail > bs {
                    return Err(self.corrupt(body_end, "inline data crosses a block boundary"));
                }
                self.slice(body_end, tail, "inline data past the end of the image")?;
                let start = u64::from(i_u) << self.blkbits;
                // With no full blocks, mkfs.erofs leaves the start block unset (-1).
                if nblocks > 1 {
                    self.slice(
                        start,
                        (nblocks - 1) * bs,
                        "inode data past the end of the image",
                    )?;
                }
            }
            format::LAYOUT_CHUNK_BASED => {
                let cfmt = (i_u & 0xffff) as u16;
                if cfmt & !(format::CHUNK_BLKBITS_MASK | format::CHUNK_INDEXES) != 0 {
                    return Err(self.unsupported("chunk format bits (48-bit chunks)"));
                }
                let bits = (cfmt & format::CHUNK_BLKBITS_MASK) as u8;
                if u32::from(bits) + u32::from(self.blkbits) > 40 {
                    return Err(self.corrupt(off + 16, "chunk size out of range"));
                }
                let unit = if cfmt & format::CHUNK_INDEXES != 0 {
                    8
                } else {
                    4
                };
                let count = size.div_ceil(bs << bits);
                let map_off = body_end.next_multiple_of(unit);
                let map_len = count
                    .checked_mul(unit)
                    .ok_or_else(|| self.corrupt(off + 8, "absurd file size"))?;
                self.slice(map_off, map_len, "chunk map past the end of the image")?;
                ino.chunk = Some(ChunkInfo {
                    bits,
                    unit,
                    map_off,
                    count,
                });
            }
            1 | 3 => return Err(self.unsupported("compressed inodes")),
            _ => return Err(self.corrupt(off, "invalid inode data layout")),
        }
        Ok(ino)
    }

    /// Byte offset of a chunk's data, or `None` for a hole.
    fn chunk_addr(&self, ino: &Inode, ci: &ChunkInfo, chunk: u64) -> Result<Option<u64>> {
        if chunk >= ci.count {
            return Err(self.corrupt(ino.off, "chunk index out of range"));
        }
        let at = ci.map_off + chunk * ci.unit;
        let blk = if ci.unit == 8 {
            let e = self.read::<ChunkIndex>(at, "chunk index past the end of the image")?;
            if e.startblk_hi.get() != 0 || e.device_id.get() != 0 {
                return Err(self.unsupported("chunks on other devices or past 2^32 blocks"));
            }
            e.startblk_lo.get()
        } else {
            let b = self.slice(at, 4, "block map past the end of the image")?;
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        };
        if blk == format::NULL_ADDR {
            return Ok(None);
        }
        Ok(Some(u64::from(blk) << self.blkbits))
    }

    /// The bytes of logical block `lblk` (shorter for the last block), or
    /// `None` for a hole.
    fn block(&self, ino: &Inode, lblk: u64) -> Result<Option<&[u8]>> {
        let bs = self.bs();
        let nblocks = ino.size.div_ceil(bs);
        if lblk >= nblocks {
            return Err(self.corrupt(ino.off, "block index past the end of the file"));
        }
        let len = (ino.size - lblk * bs).min(bs);
        match (ino.layout, &ino.chunk) {
            (format::LAYOUT_CHUNK_BASED, Some(ci)) => {
                let chunk = lblk >> ci.bits;
                match self.chunk_addr(ino, ci, chunk)? {
                    None => Ok(None),
                    Some(base) => {
                        let within = (lblk - (chunk << ci.bits)) * bs;
                        Ok(Some(self.slice(
                            base + within,
                            len,
                            "chunk data past the end of the image",
                        )?))
                    }
                }
            }
            (format::LAYOUT_FLAT_INLINE, _) if lblk + 1 == nblocks => Ok(Some(self.slice(
                ino.body_end,
                len,
                "inline data past the end of the image",
            )?)),
            _ => {
                let start = (u64::from(ino.i_u) << self.blkbits) + lblk * bs;
                Ok(Some(self.slice(
                    start,
                    len,
                    "inode data past the end of the image",
                )?))
            }
        }
    }

    /// The whole contents if stored contiguously.
    fn contiguous(&self, ino: &Inode) -> Result<Option<&[u8]>> {
        let bs = self.bs();
        if ino.size == 0 {
            return Ok(Some(&[]));
        }
        match (ino.layout, &ino.chunk) {
            (format::LAYOUT_FLAT_PLAIN, _) => Ok(Some(self.slice(
                u64::from(ino.i_u) << self.blkbits,
                ino.size,
                "inode data past the end of the image",
            )?)),
            (format::LAYOUT_FLAT_INLINE, _) if ino.size <= bs => Ok(Some(self.slice(
                ino.body_end,
                ino.size,
                "inline data past the end of the image",
            )?)),
            (format::LAYOUT_CHUNK_BASED, Some(ci)) => {
                let Some(first) = self.chunk_addr(ino, ci, 0)? else {
                    return Ok(None);
                };
                let csize = bs << ci.bits;
                for c in 1..ci.count {
                    if self.chunk_addr(ino, ci, c)? != Some(first + c * csize) {
                        return Ok(None);
                    }
                }
                Ok(Some(self.slice(
                    first,
                    ino.size,
                    "chunk data past the end of the image",
                )?))
            }
            _ => Ok(None),
        }
    }

    fn regular(&self, ino: Ino) -> Result<Inode> {
        let i = self.inode(ino)?;
        if i.mode & mode::S_IFMT != mode::S_IFREG {
            return Err(ImageError::WrongType {
                image: self.path.clone(),
                ino,
                expected: "regular file",
            });
        }
        Ok(i)
    }

    fn directory(&self, ino: Ino) -> Result<Inode> {
        let i = self.inode(ino)?;
        if i.mode & mode::S_IFMT != mode::S_IFDIR {
            return Err(ImageError::WrongType {
                image: self.path.clone(),
                ino,
                expected: "directory",
            });
        }
        Ok(i)
    }

    /// Parses one directory block into (name, dirent) pairs.
    fn dir_block<'a>(&'a self, dir: &Inode, lblk: u64) -> Result<Vec<(&'a [u8], Dirent)>> {
        let b = self
            .block(dir, lblk)?
            .ok_or_else(|| self.corrupt(dir.off, "hole in a directory"))?;
        let base = dir.off;
        let (d0, _) = Dirent::ref_from_prefix(b)
            .map_err(|_| self.corrupt(base, "directory block shorter than a dirent"))?;
        let n0 = usize::from(d0.nameoff.get());
        if n0 < 12 || n0 % 12 != 0 || n0 >= b.len() {
            return Err(self.corrupt(base, "invalid first dirent name offset"));
        }
        let count = n0 / 12;
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let d = Dirent::read_from_bytes(&b[12 * i..12 * i + 12])
                .map_err(|_| self.corrupt(base, "dirent"))?;
            let start = usize::from(d.nameoff.get());
            let end = if i + 1 < count {
                usize::from(u16::from_le_bytes([b[12 * i + 20], b[12 * i + 21]]))
            } else {
                let rest = b.get(start..).unwrap_or(&[]);
                start + rest.iter().position(|&c| c == 0).unwrap_or(rest.len())
            };
            if start < n0 || end <= start || end > b.len() || end - start > 255 {
                return Err(self.corrupt(base, "invalid dirent name offset"));
            }
            out.push((&b[start..end], d));
        }
        Ok(out)
    }

    /// Finds `name` in a directory by binary search over blocks, then
    /// inside the block.
    fn dir_find(&self, dir: &Inode, name: &[u8]) -> Result<Option<u64>> {
        let nblocks = dir.size.div_ceil(self.bs());
        let (mut lo, mut hi) = (0u64, nblocks);
        let mut cand = None;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let ents = self.dir_block(dir, mid)?;
            let first = ents.first().map(|e| e.0).unwrap_or(&[]);
            if first <= name {
                cand = Some(ents);
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let Some(ents) = cand else { return Ok(None) };
        Ok(ents
            .binary_search_by(|(n, _)| (*n).cmp(name))
            .ok()
            .map(|i| ents[i].1.nid.get()))
    }

    fn index_lookup(&self, ext: &Ext, path: &[u8]) -> Result<Option<u64>> {
        let h = &ext.hdr;
        let nslots = h.index_slots.get();
        if nslots == 0 {
            return Ok(None);
        }
        let bytes = self.slice(h.index_off.get(), nslots * 24, "faas path index")?;
        let slots = <[IndexSlot]>::ref_from_bytes(bytes)
            .map_err(|_| self.corrupt(h.index_off.get(), "faas path index"))?;
        let pool = self.slice(h.paths_off.get(), h.paths_len.get(), "faas path pool")?;
        let hash = format::path_hash(path);
        let mask = (nslots - 1) as usize;
        let mut i = hash as usize & mask;
        for _ in 0..slots.len() {
            let s = &slots[i];
            let plen = s.path_len.get() as usize;
            if plen == 0 {
                return Ok(None);
            }
            if s.hash.get() == hash && plen == path.len() {
                let po = s.path_off.get() as usize;
                let stored = pool.get(po..po.saturating_add(plen)).ok_or_else(|| {
                    self.corrupt(
                        h.paths_off.get(),
                        "faas index names a path outside the pool",
                    )
                })?;
                if stored == path {
                    return Ok(Some(s.nid.get()));
                }
            }
            i = (i + 1) & mask;
        }
        Ok(None)
    }

    fn not_found(&self, path: &str) -> ImageError {
        ImageError::NotFound {
            image: self.path.clone(),
            path: path.to_owned(),
        }
    }

    /// The inline and shared xattrs of an inode, as full names and values.
    ///
    /// # Errors
    ///
    /// The inode or its xattrs are corrupt, or use long name prefixes.
    pub fn xattrs(&self, ino: Ino) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let i = self.inode(ino)?;
        let mut out = Vec::new();
        if i.xattr_isize == 0 {
            return Ok(out);
        }
        let isize = i.body_end - i.off - i.xattr_isize;
        let start = i.off + isize;
        let end = i.body_end;
        let h = self.read::<XattrIbodyHeader>(start, "xattr header past the end of the image")?;
        let mut pos = start + 12;
        for _ in 0..h.shared_count {
            if pos + 4 > end {
                return Err(self.corrupt(pos, "shared xattr ids past the xattr area"));
            }
            let b = self.slice(pos, 4, "shared xattr id")?;
            let id = u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            let at = self.xattr_base + id * 4;
            out.push(self.xattr_entry(at, u64::MAX)?.0);
            pos += 4;
        }
        while pos < end {
            let (kv, next) = self.xattr_entry(pos, end)?;
            out.push(kv);
            pos = next;
        }
        Ok(out)
    }

    #[allow(clippy::type_complexity)]
    fn xattr_entry(&self, at: u64, limit: u64) -> Result<((Vec<u8>, Vec<u8>), u64)> {
        let e = self.read::<XattrEntry>(at, "xattr entry past the end of the image")?;
        let nl = u64::from(e.name_len);
        let vl = u64::from(e.value_size.get());
        let total = (4 + nl + vl).next_multiple_of(4);
        if at + total > limit {
            return Err(self.corrupt(at, "xattr entry past the xattr area"));
        }
        if e.name_index & 0x80 != 0 {
            return Err(self.unsupported("long xattr name prefixes"));
        }
        let prefix = format::xattr_prefix(e.name_index)
            .ok_or_else(|| self.corrupt(at, "unknown xattr name index"))?;
        let name = self.slice(at + 4, nl, "xattr name past the end of the image")?;
        let value = self.slice(at + 4 + nl, vl, "xattr value past the end of the image")?;
        let mut full = prefix.to_vec();
        full.extend_from_slice(name);
        Ok(((full, value.to_vec()), at + total))
    }

    /// The image digest recorded in the faas header, if any.
    pub fn digest(&self) -> Option<[u8; 32]> {
        self.ext.map(|e| e.hdr.image_digest)
    }

    /// The recorded BLAKE3 digest of a regular file, if the image has them.
    pub fn file_digest(&self, ino: Ino) -> Option<[u8; 32]> {
        let ext = self.ext?;
        let h = ext.hdr;
        let b = self
            .slice(
                h.digests_off.get(),
                h.digests_count.get() * 40,
                "faas digests",
            )
            .ok()?;
        let table = <[DigestEntry]>::ref_from_bytes(b).ok()?;
        table
            .binary_search_by_key(&ino, |d| d.nid.get())
            .ok()
            .map(|i| table[i].digest)
    }

    /// Size of the image file.
    pub fn image_len(&self) -> u64 {
        self.len()
    }

    /// The file this image was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the image: walks every directory (rejecting loops), checks
    /// every inode, and compares every regular file's BLAKE3 digest and the
    /// image digest with the recorded ones. `progress(done, total)` is called
    /// with file bytes hashed so far.
    ///
    /// # Errors
    ///
    /// [`VerifyError`]: the first mismatch or corruption found.
    pub fn verify(&self, mut progress: impl FnMut(u64, u64)) -> Result<VerifyReport, VerifyError> {
        let ext = self.ext.ok_or_else(|| VerifyError::NoDigests {
            image: self.path.clone(),
        })?;
        let h = ext.hdr;
        let meta = self.slice(
            format::SUPER_OFFSET as u64,
            h.data_start.get() - format::SUPER_OFFSET as u64,
            "metadata",
        )?;
        let ext_bytes = self.slice(
            h.ext_start.get(),
            h.image_len.get() - h.ext_start.get(),
            "extension area",
        )?;
        let computed = format::image_digest(&h, meta, ext_bytes);
        if computed != h.image_digest {
            return Err(VerifyError::ImageDigest {
                image: self.path.clone(),
                recorded: crate::hex(&h.image_digest),
                computed: crate::hex(&computed),
            });
        }
        let total = h.file_bytes.get();
        let mut done = 0u64;
        let mut dirs_seen = HashSet::new();
        let mut files_seen = HashSet::new();
        let mut report = VerifyReport {
            files: 0,
            bytes: 0,
            dirs: 0,
            digest: computed,
        };
        let mut stack = vec![(self.root, String::new())];
        dirs_seen.insert(self.root);
        let mut buf = vec![0u8; 1 << 16];
        while let Some((dnid, dpath)) = stack.pop() {
            report.dirs += 1;
            for e in self.read_dir(dnid)? {
                let path = format!("{dpath}/{}", e.name.to_string_lossy());
                let i = self.inode(e.ino)?;
                let ft = file_type_of(i.mode);
                if ft != Some(e.file_type) {
                    return Err(self
                        .corrupt(i.off, "dirent file type differs from the inode")
                        .into());
                }
                match e.file_type {
                    FileType::Directory => {
                        if !dirs_seen.insert(e.ino) {
                            return Err(self
                                .corrupt(i.off, "directory loop (a directory is reachable twice)")
                                .into());
                        }
                        stack.push((e.ino, path));
                    }
                    FileType::Regular if files_seen.insert(e.ino) => {
                        if report.bytes.saturating_add(i.size) > total {
                            // Bounds the work: never hash more than the
                            // (digest-covered) header promises.
                            return Err(VerifyError::DigestTable {
                                image: self.path.clone(),
                                ino: e.ino,
                            });
                        }
                        let recorded = self.file_digest(e.ino).ok_or(VerifyError::DigestTable {
                            image: self.path.clone(),
                            ino: e.ino,
                        })?;
                        let mut hasher = blake3::Hasher::new();
                        if let Some(all) = self.contiguous(&i)? {
                            hasher.update(all);
                        } else {
                            let mut off = 0u64;
                            loop {
                                let n = self.read_at(e.ino, off, &mut buf)?;
                                if n == 0 {
                                    break;
                                }
                                hasher.update(&buf[..n]);
                                off += n as u64;
                            }
                        }
                        if *hasher.finalize().as_bytes() != recorded {
                            return Err(VerifyError::FileDigest {
                                image: self.path.clone(),
                                path,
                                ino: e.ino,
                            });
                        }
                        report.files += 1;
                        report.bytes += i.size;
                        done += i.size;
                        progress(done, total);
                    }
                    _ => {}
                }
            }
        }
        if report.files != h.digests_count.get() {
            return Err(VerifyError::DigestTable {
                image: self.path.clone(),
                ino: 0,
            });
        }
        Ok(report)
    }
}

/// Normalises a path for lookup: no leading/trailing `/`, no empty or `.`
/// components, `..` resolved lexically. Borrows when already normal.
fn normalize(path: &str) -> std::borrow::Cow<'_, str> {
    let t = path.trim_start_matches('/');
    let simple =
        !t.ends_with('/') && !t.contains("//") && !t.split('/').any(|c| c == "." || c == "..");
    if simple {
        return std::borrow::Cow::Borrowed(t);
    }
    let mut out: Vec<&str> = Vec::new();
    for c in t.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out.join("/"))
}

impl ImageFs for MmapImage {
    fn root(&self) -> Ino {
        self.root
    }

    fn lookup(&self, path: &str) -> Result<Ino> {
        let p = normalize(path);
        if p.is_empty() {
            return Ok(self.root);
        }
        if let Some(ext) = &self.ext {
            return self
                .index_lookup(ext, p.as_bytes())?
                .ok_or_else(|| self.not_found(path));
        }
        let mut cur = self.root;
        for comp in p.split('/') {
            let d = self.inode(cur)?;
            if d.mode & mode::S_IFMT != mode::S_IFDIR {
                return Err(self.not_found(path));
            }
            cur = self
                .dir_find(&d, comp.as_bytes())?
                .ok_or_else(|| self.not_found(path))?;
        }
        Ok(cur)
    }

    fn stat(&self, ino: Ino) -> Result<Stat> {
        let i = self.inode(ino)?;
        let file_type =
            file_type_of(i.mode).ok_or_else(|| self.corrupt(i.off, "invalid file type"))?;
        let rdev = match file_type {
            FileType::CharDevice | FileType::BlockDevice => i.i_u,
            _ => 0,
        };
        Ok(Stat {
            ino: i.nid,
            file_type,
            perm: i.mode & 0o7777,
            uid: i.uid,
            gid: i.gid,
            size: i.size,
            nlink: i.nlink,
            mtime: i.mtime,
            rdev,
        })
    }

    fn read_dir(&self, ino: Ino) -> Result<Vec<DirEntry>> {
        let d = self.directory(ino)?;
        let nblocks = d.size.div_ceil(self.bs());
        let mut out = Vec::new();
        for b in 0..nblocks {
            for (name, de) in self.dir_block(&d, b)? {
                if name == b"." || name == b".." {
                    continue;
                }
                let file_type = ft_of_dirent(de.file_type)
                    .ok_or_else(|| self.corrupt(d.off, "invalid dirent file type"))?;
                out.push(DirEntry {
                    name: std::ffi::OsStr::from_bytes(name).to_owned(),
                    ino: de.nid.get(),
                    file_type,
                });
            }
        }
        Ok(out)
    }

    fn read_at(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let i = self.regular(ino)?;
        if offset >= i.size || buf.is_empty() {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(i.size - offset) as usize;
        if let Some(all) = self.contiguous(&i)? {
            let s = offset as usize;
            buf[..want].copy_from_slice(&all[s..s + want]);
            return Ok(want);
        }
        let bs = self.bs();
        let mut done = 0usize;
        while done < want {
            let pos = offset + done as u64;
            let lblk = pos / bs;
            let within = (pos % bs) as usize;
            let n = (want - done).min(bs as usize - within);
            match self.block(&i, lblk)? {
                Some(b) => {
                    let src = b
                        .get(within..within + n)
                        .ok_or_else(|| self.corrupt(i.off, "block shorter than the file"))?;
                    buf[done..done + n].copy_from_slice(src);
                }
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(want)
    }

    fn bytes(&self, ino: Ino) -> Result<&[u8]> {
        let i = self.regular(ino)?;
        self.contiguous(&i)?.ok_or_else(|| ImageError::NotMappable {
            image: self.path.clone(),
            ino,
        })
    }

    fn file_extent(&self, ino: Ino) -> Result<FileExtent<'_>> {
        let i = self.regular(ino)?;
        let not = || ImageError::NotMappable {
            image: self.path.clone(),
            ino,
        };
        if i.size == 0 {
            return Ok(FileExtent {
                fd: self.file.as_fd(),
                offset: 0,
                len: 0,
            });
        }
        let data = match i.layout {
            format::LAYOUT_FLAT_PLAIN | format::LAYOUT_CHUNK_BASED => {
                self.contiguous(&i)?.ok_or_else(not)?
            }
            _ => return Err(not()),
        };
        let offset = data.as_ptr() as u64 - self.map.bytes().as_ptr() as u64;
        if !offset.is_multiple_of(4096) {
            return Err(not());
        }
        Ok(FileExtent {
            fd: self.file.as_fd(),
            offset,
            len: i.size,
        })
    }

    fn read_link(&self, ino: Ino) -> Result<Vec<u8>> {
        let i = self.inode(ino)?;
        if i.mode & mode::S_IFMT != mode::S_IFLNK {
            return Err(ImageError::WrongType {
                image: self.path.clone(),
                ino,
                expected: "symlink",
            });
        }
        let bs = self.bs();
        let mut out = Vec::with_capacity(i.size as usize);
        for b in 0..i.size.div_ceil(bs) {
            let blk = self
                .block(&i, b)?
                .ok_or_else(|| self.corrupt(i.off, "hole in a symlink"))?;
            out.extend_from_slice(blk);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalize() {
        assert_eq!(normalize("/a/b"), "a/b");
        assert_eq!(normalize("a//b/./c/"), "a/b/c");
        assert_eq!(normalize("/a/../b"), "b");
        assert_eq!(normalize("/"), "");
        assert_eq!(normalize("/../.."), "");
    }

    #[test]
    fn mmap_image_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<MmapImage>();
    }
}
