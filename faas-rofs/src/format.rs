//! The on-disk format: EROFS structures (as described by the kernel's
//! `fs/erofs/erofs_fs.h` and `Documentation/filesystems/erofs.rst`) and the
//! faas extension area. Every structure is read and written through
//! zerocopy little-endian types, never by casting pointers.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Byte offset of the EROFS superblock.
pub const SUPER_OFFSET: usize = 1024;
/// EROFS superblock magic.
pub const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
/// The block size this crate writes (log2).
pub const BLKSZ_BITS: u8 = 12;
/// The block size this crate writes.
pub const BLKSZ: u64 = 1 << BLKSZ_BITS;

/// Superblock checksum present.
pub const COMPAT_SB_CHKSUM: u32 = 0x1;
/// Extended inodes carry their own mtime.
pub const COMPAT_MTIME: u32 = 0x2;
/// `ZERO_PADDING` (only meaningful for compressed data; harmless otherwise).
pub const INCOMPAT_ZERO_PADDING: u32 = 0x1;
/// Chunk-based files.
pub const INCOMPAT_CHUNKED_FILE: u32 = 0x4;
/// Device table (accepted only with zero extra devices).
pub const INCOMPAT_DEVICE_TABLE: u32 = 0x8;
/// The incompatible features this crate can read.
pub const INCOMPAT_SUPPORTED: u32 =
    INCOMPAT_ZERO_PADDING | INCOMPAT_CHUNKED_FILE | INCOMPAT_DEVICE_TABLE;

/// Inode data layout: contiguous blocks.
pub const LAYOUT_FLAT_PLAIN: u16 = 0;
/// Inode data layout: contiguous blocks plus a tail packed after the inode.
pub const LAYOUT_FLAT_INLINE: u16 = 2;
/// Inode data layout: chunk index or block map.
pub const LAYOUT_CHUNK_BASED: u16 = 4;

/// Chunk format: mask of the chunk size (log2 of blocks per chunk).
pub const CHUNK_BLKBITS_MASK: u16 = 0x1f;
/// Chunk format: 8-byte chunk indexes instead of a 4-byte block map.
pub const CHUNK_INDEXES: u16 = 0x20;
/// A hole in a chunk map.
pub const NULL_ADDR: u32 = u32::MAX;

/// Dirent file types (the generic `FT_*` values).
pub mod ft {
    /// Unknown.
    pub const UNKNOWN: u8 = 0;
    /// Regular file.
    pub const REG: u8 = 1;
    /// Directory.
    pub const DIR: u8 = 2;
    /// Character device.
    pub const CHR: u8 = 3;
    /// Block device.
    pub const BLK: u8 = 4;
    /// Fifo.
    pub const FIFO: u8 = 5;
    /// Socket.
    pub const SOCK: u8 = 6;
    /// Symlink.
    pub const LNK: u8 = 7;
}

/// `S_IFMT` and friends.
pub mod mode {
    /// File type mask.
    pub const S_IFMT: u16 = 0o170000;
    /// Socket.
    pub const S_IFSOCK: u16 = 0o140000;
    /// Symlink.
    pub const S_IFLNK: u16 = 0o120000;
    /// Regular file.
    pub const S_IFREG: u16 = 0o100000;
    /// Block device.
    pub const S_IFBLK: u16 = 0o060000;
    /// Directory.
    pub const S_IFDIR: u16 = 0o040000;
    /// Character device.
    pub const S_IFCHR: u16 = 0o020000;
    /// Fifo.
    pub const S_IFIFO: u16 = 0o010000;
}

/// The EROFS superblock (the first 128 bytes; `sb_extslots` is 0).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct SuperBlock {
    /// [`EROFS_MAGIC`].
    pub magic: U32,
    /// crc32c of the superblock block from byte 1024 (this field zeroed).
    pub checksum: U32,
    /// Compatible features.
    pub feature_compat: U32,
    /// log2 of the block size.
    pub blkszbits: u8,
    /// Superblock extension slots.
    pub sb_extslots: u8,
    /// nid of the root directory.
    pub root_nid: U16,
    /// Number of inodes.
    pub inos: U64,
    /// Base time of compact inodes.
    pub epoch: U64,
    /// Nanoseconds of compact inodes.
    pub fixed_nsec: U32,
    /// Number of blocks.
    pub blocks: U32,
    /// First block of the inode area.
    pub meta_blkaddr: U32,
    /// First block of the shared xattr area.
    pub xattr_blkaddr: U32,
    /// Volume uuid.
    pub uuid: [u8; 16],
    /// Volume name.
    pub volume_name: [u8; 16],
    /// Incompatible features.
    pub feature_incompat: U32,
    /// Compression algorithms (unused here).
    pub u1: U16,
    /// Extra devices.
    pub extra_devices: U16,
    /// Device table slot offset.
    pub devt_slotoff: U16,
    /// Directory block size bits (0: the block size).
    pub dirblkbits: u8,
    /// Long xattr prefixes.
    pub xattr_prefix_count: u8,
    /// Start of the long xattr prefixes.
    pub xattr_prefix_start: U32,
    /// The packed inode.
    pub packed_nid: U64,
    /// Reserved for the xattr filter.
    pub xattr_filter_reserved: u8,
    /// Reserved.
    pub reserved: [u8; 3],
    /// Seconds added to `epoch` for the build time.
    pub build_time: U32,
    /// (48-bit images) root nid.
    pub rootnid_8b: U64,
    /// Reserved.
    pub reserved2: U64,
}

/// 32-byte compact inode.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct InodeCompact {
    /// Version bit and data layout.
    pub format: U16,
    /// Inline xattr size code.
    pub xattr_icount: U16,
    /// Mode.
    pub mode: U16,
    /// Link count.
    pub nlink: U16,
    /// Size.
    pub size: U32,
    /// Seconds after the superblock's epoch (kept 0 by this builder).
    pub mtime: U32,
    /// Start block, rdev or chunk format.
    pub i_u: U32,
    /// 32-bit inode number.
    pub ino: U32,
    /// Owner.
    pub uid: U16,
    /// Group.
    pub gid: U16,
    /// Reserved.
    pub reserved: U32,
}

/// 64-byte extended inode.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct InodeExtended {
    /// Version bit and data layout.
    pub format: U16,
    /// Inline xattr size code.
    pub xattr_icount: U16,
    /// Mode.
    pub mode: U16,
    /// Reserved (48-bit start block high bits).
    pub nb: U16,
    /// Size.
    pub size: U64,
    /// Start block, rdev or chunk format.
    pub i_u: U32,
    /// 32-bit inode number.
    pub ino: U32,
    /// Owner.
    pub uid: U32,
    /// Group.
    pub gid: U32,
    /// Modification time, seconds.
    pub mtime: U64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: U32,
    /// Link count.
    pub nlink: U32,
    /// Reserved.
    pub reserved2: [u8; 16],
}

/// A 12-byte directory entry.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Dirent {
    /// Target nid.
    pub nid: U64,
    /// Offset of the name in the block.
    pub nameoff: U16,
    /// [`ft`] value.
    pub file_type: u8,
    /// Reserved.
    pub reserved: u8,
}

/// The header of an inode's inline xattrs.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct XattrIbodyHeader {
    /// Bloom filter (unused without the XATTR_FILTER feature).
    pub name_filter: U32,
    /// Number of shared xattr ids that follow.
    pub shared_count: u8,
    /// Reserved.
    pub reserved: [u8; 7],
}

/// One xattr entry header; the name and value follow.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct XattrEntry {
    /// Name length (without the prefix).
    pub name_len: u8,
    /// Prefix index.
    pub name_index: u8,
    /// Value size.
    pub value_size: U16,
}

/// An 8-byte chunk index.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct ChunkIndex {
    /// High bits of the start block (48-bit images only; must be 0 here).
    pub startblk_hi: U16,
    /// Device id (must be 0 here).
    pub device_id: U16,
    /// Start block.
    pub startblk_lo: U32,
}

/// The xattr name prefixes by index.
pub const XATTR_PREFIXES: [(u8, &[u8]); 6] = [
    (1, b"user."),
    (2, b"system.posix_acl_access"),
    (3, b"system.posix_acl_default"),
    (4, b"trusted."),
    (5, b"lustre."),
    (6, b"security."),
];

/// Splits a full xattr name into (index, suffix).
pub fn xattr_split(name: &[u8]) -> Option<(u8, &[u8])> {
    // The ACL names are exact; the others are prefixes.
    for &(idx, pfx) in &XATTR_PREFIXES {
        if idx == 2 || idx == 3 {
            if name == pfx {
                return Some((idx, &[]));
            }
        } else if let Some(rest) = name.strip_prefix(pfx)
            && !rest.is_empty()
        {
            return Some((idx, rest));
        }
    }
    None
}

/// The prefix of a name index.
pub fn xattr_prefix(idx: u8) -> Option<&'static [u8]> {
    XATTR_PREFIXES
        .iter()
        .find(|(i, _)| *i == idx)
        .map(|(_, p)| *p)
}

/// Size in bytes of inline xattrs given `i_xattr_icount`.
pub fn xattr_ibody_size(icount: u16) -> u64 {
    if icount == 0 {
        0
    } else {
        12 + 4 * (u64::from(icount) - 1)
    }
}

/// Encodes a device number the way the kernel's `new_encode_dev` does.
pub fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// Decodes a device number (`new_decode_dev`) into (major, minor).
pub fn decode_dev(dev: u32) -> (u32, u32) {
    ((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00))
}

static CRC32C_TABLE: [u32; 256] = crc32c_table();

const fn crc32c_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

/// The kernel's `crc32c(seed, data)`: reflected Castagnoli CRC without the
/// final inversion. The superblock checksum is `crc32c(!0, block[1024..])`.
pub fn crc32c_raw(seed: u32, data: &[u8]) -> u32 {
    let mut c = seed;
    for &b in data {
        c = CRC32C_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    c
}

/// The superblock checksum over `block0[1024..blksz]` with the checksum
/// field already zeroed.
pub fn sb_checksum(sb_region: &[u8]) -> u32 {
    crc32c_raw(!0, sb_region)
}

// ---------------------------------------------------------------------------
// The faas extension area.
// ---------------------------------------------------------------------------

/// Magic of the faas header at byte 0 of the image.
pub const EXT_MAGIC: [u8; 8] = *b"FAASROFS";
/// Version of the extension format.
pub const EXT_VERSION: u32 = 1;
/// Domain separation for the image digest.
pub const IMAGE_DIGEST_DOMAIN: &[u8] = b"faas-rofs image digest v1\0";

/// The faas header: 144 bytes at byte 0 of the image, inside the 1024 bytes
/// EROFS leaves to boot sectors, so EROFS readers never look at it.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct ExtHeader {
    /// [`EXT_MAGIC`].
    pub magic: [u8; 8],
    /// [`EXT_VERSION`].
    pub version: U32,
    /// `size_of::<ExtHeader>()`.
    pub header_len: U32,
    /// Length of the image file.
    pub image_len: U64,
    /// First byte of the regular-file data region (block aligned).
    pub data_start: U64,
    /// First byte of the extension area (end of the data region).
    pub ext_start: U64,
    /// Absolute offset of the path index (24-byte [`IndexSlot`]s).
    pub index_off: U64,
    /// Number of index slots (a power of two, or 0).
    pub index_slots: U64,
    /// Absolute offset of the path pool.
    pub paths_off: U64,
    /// Length of the path pool.
    pub paths_len: U64,
    /// Absolute offset of the digest table (40-byte [`DigestEntry`]s, sorted by nid).
    pub digests_off: U64,
    /// Number of digest entries.
    pub digests_count: U64,
    /// Regular files (unique inodes).
    pub files: U64,
    /// Sum of their sizes.
    pub file_bytes: U64,
    /// The image digest: see [`crate`] docs.
    pub image_digest: [u8; 32],
    /// crc32c of this header with this field and `image_digest` zeroed.
    pub header_crc: U32,
    /// Reserved, zero.
    pub reserved: U32,
}

/// One slot of the path index.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct IndexSlot {
    /// [`path_hash`] of the path.
    pub hash: U64,
    /// Its nid.
    pub nid: U64,
    /// Offset of the path in the pool.
    pub path_off: U32,
    /// Length of the path (0: empty slot).
    pub path_len: U32,
}

/// One per-file digest.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct DigestEntry {
    /// The file's nid.
    pub nid: U64,
    /// BLAKE3 of its contents.
    pub digest: [u8; 32],
}

/// The path hash of the index, specified here so it never changes with a
/// dependency: the path (no leading `/`, components joined by `/`) is read as
/// little-endian 8-byte words (the last zero-padded); `h = K0 ^ len`; for each
/// word `h = (h ^ w) * K1; h ^= h >> 29`; finally `h ^= h >> 32; h *= K2;
/// h ^= h >> 29`.
pub fn path_hash(path: &[u8]) -> u64 {
    const K0: u64 = 0xcbf2_9ce4_8422_2325;
    const K1: u64 = 0x9e37_79b9_7f4a_7c15;
    const K2: u64 = 0xd6e8_feb8_6659_fd93;
    let mut h = K0 ^ path.len() as u64;
    let mut chunks = path.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K1);
        h ^= h >> 29;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K1);
        h ^= h >> 29;
    }
    h ^= h >> 32;
    h = h.wrapping_mul(K2);
    h ^ (h >> 29)
}

/// crc32c of a header with `image_digest` and `header_crc` zeroed.
pub fn header_crc(h: &ExtHeader) -> u32 {
    let mut c = *h;
    c.image_digest = [0; 32];
    c.header_crc = U32::new(0);
    crc32c_raw(!0, c.as_bytes())
}

/// The image digest: BLAKE3 over the domain string, the faas header (with
/// `image_digest` zeroed), the metadata bytes `1024..data_start` and the
/// extension area. File data is covered through the per-file digests in the
/// extension area.
pub fn image_digest(hdr: &ExtHeader, meta: &[u8], ext: &[u8]) -> [u8; 32] {
    let mut h = *hdr;
    h.image_digest = [0; 32];
    let mut hasher = blake3::Hasher::new();
    hasher.update(IMAGE_DIGEST_DOMAIN);
    hasher.update(h.as_bytes());
    hasher.update(meta);
    hasher.update(ext);
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_kernel() {
        assert_eq!(size_of::<SuperBlock>(), 128);
        assert_eq!(size_of::<InodeCompact>(), 32);
        assert_eq!(size_of::<InodeExtended>(), 64);
        assert_eq!(size_of::<Dirent>(), 12);
        assert_eq!(size_of::<XattrIbodyHeader>(), 12);
        assert_eq!(size_of::<XattrEntry>(), 4);
        assert_eq!(size_of::<ChunkIndex>(), 8);
        assert_eq!(size_of::<ExtHeader>(), 144);
        assert_eq!(size_of::<IndexSlot>(), 24);
        assert_eq!(size_of::<DigestEntry>(), 40);
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // CRC-32C("123456789") = 0xE3069283 with init and final inversion.
        assert_eq!(!crc32c_raw(!0, b"123456789"), 0xE306_9283);
    }

    #[test]
    fn dev_encoding_round_trips() {
        for (ma, mi) in [(0, 0), (1, 3), (8, 1), (259, 70000), (4095, 0xfffff)] {
            assert_eq!(decode_dev(encode_dev(ma, mi)), (ma, mi));
        }
    }

    #[test]
    fn xattr_names_split() {
        assert_eq!(xattr_split(b"user.a"), Some((1, &b"a"[..])));
        assert_eq!(xattr_split(b"system.posix_acl_access"), Some((2, &b""[..])));
        assert_eq!(xattr_split(b"security.selinux"), Some((6, &b"selinux"[..])));
        assert_eq!(xattr_split(b"user."), None);
        assert_eq!(xattr_split(b"os2.x"), None);
    }

    #[test]
    fn path_hash_is_stable() {
        // Pinned: the hash is part of the on-disk format (values from an
        // independent implementation of the documented algorithm).
        assert_eq!(path_hash(b""), 0xfdbd_f6ab_5f97_6db6);
        assert_eq!(path_hash(b"a"), 0x72e2_4fa3_cc7f_1703);
        assert_eq!(
            path_hash(b"usr/lib/python3.11/os.py"),
            0x3efa_00b5_4758_9cfa
        );
        assert_ne!(path_hash(b"a/b"), path_hash(b"a/c"));
        assert_ne!(path_hash(b"abcdefgh"), path_hash(b"abcdefgh\0"));
    }
}
