//! The one place with `unsafe`: mapping the image file read-only.

use std::fs::File;
use std::io;

/// A read-only shared mapping of a whole file.
#[derive(Debug)]
pub(crate) struct Mapping {
    map: memmap2::Mmap,
}

impl Mapping {
    /// Maps `file` (which must be non-empty) read-only and shared.
    pub(crate) fn new(file: &File) -> io::Result<Self> {
        // SAFETY: the mapping is read-only (PROT_READ, MAP_SHARED), so no
        // Rust reference to it is ever written through. Memory safety of the
        // returned `&[u8]` additionally needs the file not to be truncated or
        // modified while mapped; images are immutable by contract (the
        // builder writes a new file; `MmapImage` documents that a changing
        // image is unsupported and may fault with SIGBUS on truncation).
        let map = unsafe { memmap2::MmapOptions::new().map(file)? };
        Ok(Mapping { map })
    }

    /// The mapped bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }
}
