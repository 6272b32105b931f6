//! The [`ImageFs`] trait: read-only, zero-copy access to a function image.

use std::ffi::OsString;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;

/// An inode number within one image.
pub type Ino = u64;

/// The type of a file in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// Regular file.
    Regular,
    /// Directory.
    Directory,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

/// Metadata of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Inode number.
    pub ino: Ino,
    /// File type.
    pub file_type: FileType,
    /// Permission bits (`0o7777`).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (target length for symlinks).
    pub size: u64,
    /// Hard links.
    pub nlink: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Device number for device nodes.
    pub rdev: u32,
}

/// One entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name (not a path).
    pub name: OsString,
    /// Its inode.
    pub ino: Ino,
    /// Its type.
    pub file_type: FileType,
}

/// Where a regular file's bytes lie in the image file, so that a sandbox can
/// map it directly.
#[derive(Debug, Clone, Copy)]
pub struct FileExtent<'a> {
    /// The image file.
    pub fd: BorrowedFd<'a>,
    /// Page-aligned offset of the first byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No file at this path.
    #[error("{image}: {path}: no such file or directory")]
    NotFound {
        /// The image.
        image: PathBuf,
        /// The path looked up.
        path: String,
    },
    /// The inode is not of the type the operation needs.
    #[error("{image}: inode {ino} is not a {expected}")]
    WrongType {
        /// The image.
        image: PathBuf,
        /// The inode.
        ino: Ino,
        /// What it should have been.
        expected: &'static str,
    },
    /// The file's data is not stored as one contiguous, mappable extent.
    #[error("{image}: inode {ino} is not stored contiguously and cannot be mapped")]
    NotMappable {
        /// The image.
        image: PathBuf,
        /// The inode.
        ino: Ino,
    },
    /// The image is damaged or hostile.
    #[error("{image}: corrupt at byte {offset}: {what}")]
    Corrupt {
        /// The image.
        image: PathBuf,
        /// Where.
        offset: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// The image uses a feature this reader does not implement (for
    /// example compressed data).
    #[error("{image}: unsupported: {what}")]
    Unsupported {
        /// The image.
        image: PathBuf,
        /// The feature.
        what: &'static str,
    },
    /// Reading the image failed.
    #[error("{image}: {source}")]
    Io {
        /// The image.
        image: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Read-only access to a function image. The operations only touch memory,
/// so they are synchronous; implementations are shared by every instance of
/// a function and must not lock on the read path.
///
/// # Example
///
/// An image holding one file, `/hello`, in memory:
///
/// ```
/// use std::path::PathBuf;
/// use faas_core::{DirEntry, FileExtent, FileType, ImageError, ImageFs, Ino, Stat};
///
/// struct OneFile(&'static [u8]);
///
/// impl OneFile {
///     fn err(&self, ino: Ino, expected: &'static str) -> ImageError {
///         ImageError::WrongType { image: PathBuf::from("mem"), ino, expected }
///     }
/// }
///
/// impl ImageFs for OneFile {
///     fn root(&self) -> Ino { 1 }
///     fn lookup(&self, path: &str) -> Result<Ino, ImageError> {
///         match path.trim_start_matches('/') {
///             "" => Ok(1),
///             "hello" => Ok(2),
///             _ => Err(ImageError::NotFound { image: "mem".into(), path: path.into() }),
///         }
///     }
///     fn stat(&self, ino: Ino) -> Result<Stat, ImageError> {
///         let (file_type, size) = match ino {
///             1 => (FileType::Directory, 0),
///             2 => (FileType::Regular, self.0.len() as u64),
///             _ => return Err(self.err(ino, "file")),
///         };
///         Ok(Stat { ino, file_type, perm: 0o755, uid: 0, gid: 0, size, nlink: 1, mtime: 0, rdev: 0 })
///     }
///     fn read_dir(&self, ino: Ino) -> Result<Vec<DirEntry>, ImageError> {
///         if ino != 1 { return Err(self.err(ino, "directory")); }
///         Ok(vec![DirEntry { name: "hello".into(), ino: 2, file_type: FileType::Regular }])
///     }
///     fn bytes(&self, ino: Ino) -> Result<&[u8], ImageError> {
///         if ino == 2 { Ok(self.0) } else { Err(self.err(ino, "regular file")) }
///     }
///     fn read_at(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize, ImageError> {
///         let data = self.bytes(ino)?;
///         let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
///         let n = buf.len().min(data.len() - start);
///         buf[..n].copy_from_slice(&data[start..start + n]);
///         Ok(n)
///     }
///     fn file_extent(&self, ino: Ino) -> Result<FileExtent<'_>, ImageError> {
///         Err(ImageError::NotMappable { image: "mem".into(), ino })
///     }
/// }
///
/// let img: &dyn ImageFs = &OneFile(b"hi");
/// let ino = img.lookup("/hello").unwrap();
/// assert_eq!(img.bytes(ino).unwrap(), b"hi");
/// ```
pub trait ImageFs: Send + Sync {
    /// The root directory's inode.
    fn root(&self) -> Ino;

    /// Resolves an absolute or root-relative path (no symlinks followed).
    ///
    /// # Errors
    ///
    /// [`ImageError::NotFound`], or [`ImageError::Corrupt`].
    fn lookup(&self, path: &str) -> Result<Ino, ImageError>;

    /// Metadata of an inode.
    ///
    /// # Errors
    ///
    /// The inode does not exist or is corrupt.
    fn stat(&self, ino: Ino) -> Result<Stat, ImageError>;

    /// The entries of a directory, sorted by name, without `.` and `..`.
    ///
    /// # Errors
    ///
    /// Not a directory, or corrupt.
    fn read_dir(&self, ino: Ino) -> Result<Vec<DirEntry>, ImageError>;

    /// Copies up to `buf.len()` bytes from `offset`; returns how many.
    ///
    /// # Errors
    ///
    /// Not a regular file, or corrupt.
    fn read_at(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize, ImageError>;

    /// The whole contents of a regular file, borrowed from the image.
    ///
    /// # Errors
    ///
    /// Not a regular file, not contiguous, or corrupt.
    fn bytes(&self, ino: Ino) -> Result<&[u8], ImageError>;

    /// Where the file lies in the image file, for mapping it directly.
    ///
    /// # Errors
    ///
    /// Not a regular file, or not stored as one page-aligned extent.
    fn file_extent(&self, ino: Ino) -> Result<FileExtent<'_>, ImageError>;

    /// The target of a symbolic link, as stored (not resolved).
    ///
    /// The default implementation has no symlinks and always fails.
    ///
    /// # Errors
    ///
    /// Not a symlink, or corrupt.
    fn read_link(&self, ino: Ino) -> Result<Vec<u8>, ImageError> {
        Err(ImageError::WrongType {
            image: PathBuf::new(),
            ino,
            expected: "symlink",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn _object_safe(_: &dyn ImageFs) {}
}
