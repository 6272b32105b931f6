//! The errors of building and verifying images. Reading uses
//! [`faas_core::ImageError`], the error of the [`faas_core::ImageFs`] trait.

use std::io;
use std::path::{Path, PathBuf};

/// Why building an image failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Reading an input file or directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The input.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing the image failed.
    #[error("writing image {image}: {source}")]
    Output {
        /// The image being written.
        image: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An input cannot be represented.
    #[error("{path}: {what}")]
    Input {
        /// The input.
        path: PathBuf,
        /// What is wrong.
        what: &'static str,
    },
    /// An xattr name has no EROFS prefix (`user.`, `trusted.`, `security.`,
    /// `system.posix_acl_*`, `lustre.`).
    #[error("{path}: xattr {name:?} has a prefix EROFS cannot store")]
    UnsupportedXattr {
        /// The file.
        path: PathBuf,
        /// The xattr name.
        name: String,
    },
    /// Reading a tar layer failed.
    #[error("tar {tar}: entry {entry}: {source}")]
    Tar {
        /// The tar file.
        tar: PathBuf,
        /// The entry (empty if before any entry).
        entry: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A tar entry cannot be applied.
    #[error("tar {tar}: entry {entry}: {what}")]
    BadTarEntry {
        /// The tar file.
        tar: PathBuf,
        /// The entry.
        entry: PathBuf,
        /// What is wrong.
        what: &'static str,
    },
    /// An input file changed while the image was being built.
    #[error("{path}: changed while the image was being built")]
    Changed {
        /// The input.
        path: PathBuf,
    },
    /// The image would exceed a format limit.
    #[error("image too large: {what}")]
    TooLarge {
        /// Which limit.
        what: &'static str,
    },
}

impl BuildError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        BuildError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Why [`crate::MmapImage::verify`] failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The image has no faas extension area, so there is nothing to verify
    /// against (a plain EROFS image).
    #[error("{image}: no faas digests in this image")]
    NoDigests {
        /// The image.
        image: PathBuf,
    },
    /// The image digest does not match the image.
    #[error("{image}: image digest mismatch (recorded {recorded}, computed {computed})")]
    ImageDigest {
        /// The image.
        image: PathBuf,
        /// Recorded digest (hex).
        recorded: String,
        /// Computed digest (hex).
        computed: String,
    },
    /// A file's contents do not match its digest.
    #[error("{image}: {path}: contents do not match their digest (inode {ino})")]
    FileDigest {
        /// The image.
        image: PathBuf,
        /// The file's path.
        path: String,
        /// Its inode.
        ino: u64,
    },
    /// A regular file has no digest entry, or an entry names no regular file.
    #[error("{image}: digest table does not match the files (inode {ino})")]
    DigestTable {
        /// The image.
        image: PathBuf,
        /// The inode concerned.
        ino: u64,
    },
    /// The image is structurally corrupt.
    #[error(transparent)]
    Image(#[from] faas_core::ImageError),
}
