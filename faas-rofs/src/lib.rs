//! # faas-rofs
//!
//! Read-only function images in the EROFS on-disk format: uncompressed,
//! 4 KiB blocks, regular-file data block-aligned so any file can be mapped
//! straight from the image. The same file serves three readers: the
//! in-process zero-copy loader [`MmapImage`], the Linux kernel
//! (`mount -t erofs IMAGE DIR`, file-backed) and `fsck.erofs`.
//!
//! ```text
//!  directory ─┐                         ┌──▶ MmapImage (mmap, zero copy) ──▶ ImageFs
//!  tar layers ┼─▶ Builder ──▶ image ────┼──▶ kernel erofs (mount -t erofs)
//!  (whiteouts)┘   scan → hash → layout  └──▶ fsck.erofs
//!                 → write
//! ```
//!
//! Layers:
//!
//! - [`Builder`]: walks a directory (sorted) or applies tar / tar.gz layers
//!   (OCI whiteouts `.wh.NAME` and `.wh..wh..opq`), hashes every file with
//!   BLAKE3 on all CPUs (identical files share data blocks), lays the inodes
//!   out in breadth-first name order (stable nids, so the same input gives a
//!   byte-identical image), and writes data with `copy_file_range`. Sparse
//!   files become chunk-based inodes whose holes take no space.
//! - [`MmapImage`]: maps the image read-only and implements
//!   [`faas_core::ImageFs`]. Every offset read from the image is
//!   bounds-checked; on-disk structures are read through zerocopy types.
//!
//! ## The faas extension area
//!
//! EROFS readers ignore the first 1024 bytes of an image (room for boot
//! sectors) and any block no inode points to. faas uses both:
//!
//! - bytes `0..144`: [`ExtHeader`](format::ExtHeader) — magic `FAASROFS`, the
//!   regions below, the image digest and a crc32c of the header;
//! - after the last data block, the **extension area**: a path index
//!   (open addressing, 24-byte slots, [`format::path_hash`], linear probing;
//!   a hit is confirmed by comparing the stored full path, so lookup of any
//!   path is O(1)), the path pool, and a table of per-file BLAKE3 digests
//!   sorted by nid.
//!
//! The **image digest** is BLAKE3 over a domain string, the header (digest
//! zeroed), the metadata (`1024..data_start`: superblock, inodes,
//! directories) and the extension area. File data is covered through the
//! per-file digests, so the digest identifies the whole image and
//! [`MmapImage::verify`] checks everything. The superblock's `blocks` counts
//! the whole file, extension area included.
//!
//! Example:
//!
//! ```no_run
//! use faas_core::ImageFs;
//! use faas_rofs::{Builder, MmapImage};
//!
//! Builder::new().dir("/srv/fn/hello").build("/tmp/hello.img".as_ref())?;
//! let img = MmapImage::open("/tmp/hello.img")?;
//! let ino = img.lookup("/bin/hello")?;
//! let bytes: &[u8] = img.bytes(ino)?; // borrowed from the mapping
//! # let _ = bytes;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod builder;
mod error;
pub mod format;
mod image;
mod mmap;
mod tree;

pub use builder::{BuildSummary, Builder, Phase, Progress};
pub use error::{BuildError, VerifyError};
pub use faas_core::ImageError;
pub use image::{MmapImage, VerifyReport};

/// The result of reading an image.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
