//! The guest protocol between a node gateway and an instance (DESIGN.md §5).
//!
//! The transport is a `SOCK_SEQPACKET` Unix socket: one datagram per frame,
//! boundaries kept, fds passed with `SCM_RIGHTS`. The instance gets its end as
//! fd 3, sends [`Frame::Ready`], pulls a [`Frame::Invoke`] and answers with a
//! [`Frame::Result`] or [`Frame::Error`], interleaving [`Frame::Log`] records.
//!
//! ```text
//!  node gateway                         instance (fd 3)
//!       | <------------- Ready ------------ |
//!       | ------------- Invoke -----------> |
//!       | <-------------- Log ------------- |   (0..n)
//!       | <------------ Result ------------ |   (or Error)
//!       | <------------- Ready ------------ |   kept alive: the next one
//! ```
//!
//! A kept-alive instance may instead set the `ready` flag of its `Result`
//! or `Error` (it takes its next `Invoke` at once) and send no `Ready`
//! before the next request: a send and a receive less per request. A
//! gateway accepts both.
//!
//! Bodies larger than a threshold (default [`DEFAULT_MEMFD_THRESHOLD`]) travel
//! as a sealed memfd passed with the frame, so the receiver can map them
//! instead of copying them through the socket. The decoder treats its peer as
//! hostile: see [`decode`].

mod channel;
mod frame;

pub use channel::{
    Channel, LONG_LIVED, RecvOutcome, channel_pair, grow_when_long_lived, recv_frame, send_frame,
    try_recv_frame,
};
pub use frame::{
    DEFAULT_MEMFD_THRESHOLD, DecodeLimits, Frame, FrameKind, HEADER_LEN, LogStream, MAGIC,
    MAX_DATAGRAM, MAX_INLINE_BODY, MAX_META, VERSION, decode,
};

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{MemfdFlags, SealFlags};

/// Why a frame could not be encoded, sent, received or decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Fewer bytes than a header.
    #[error("frame of {len} bytes is shorter than the 24-byte header")]
    Short {
        /// Datagram length.
        len: usize,
    },
    /// The magic is not `FAAS`.
    #[error("bad magic {found:02x?}")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// Another protocol version.
    #[error("unsupported protocol version {found} (this side speaks {VERSION})")]
    BadVersion {
        /// The version byte.
        found: u8,
    },
    /// The kind byte names no frame kind.
    #[error("unknown frame kind {kind}")]
    UnknownKind {
        /// The kind byte.
        kind: u8,
    },
    /// Flag bits this version does not define.
    #[error("unknown flags {flags:#06x}")]
    UnknownFlags {
        /// The flags.
        flags: u16,
    },
    /// Metadata longer than allowed.
    #[error("metadata of {len} bytes exceeds the limit of {max}")]
    MetaTooLong {
        /// Declared length.
        len: u64,
        /// The limit.
        max: u32,
    },
    /// Body longer than allowed.
    #[error("body of {len} bytes exceeds the limit of {max}")]
    BodyTooLong {
        /// Declared length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A field too long for its length prefix.
    #[error("{what} is too long for the wire format")]
    FieldTooLong {
        /// Which field.
        what: &'static str,
    },
    /// The lengths in the header do not add up to the datagram's length.
    #[error("header declares {declared} bytes but the frame has {actual}")]
    LengthMismatch {
        /// Header + metadata + inline body.
        declared: usize,
        /// What arrived.
        actual: usize,
    },
    /// The datagram or its control data was cut by the kernel.
    #[error("frame truncated in transit")]
    Truncated,
    /// The memfd flag is set but no fd came with the frame.
    #[error("frame announces a memfd body but carries no fd")]
    MissingFd,
    /// An fd came with a frame that does not announce one, or several came.
    #[error("frame carries an fd it does not announce")]
    UnexpectedFd,
    /// A memfd body is not sealed against modification.
    #[error("memfd body is not sealed (seals {seals:#x}); need write, grow and shrink seals")]
    NotSealed {
        /// The seals found.
        seals: u32,
    },
    /// A memfd body's size differs from the header's body length.
    #[error("memfd body has {actual} bytes, header says {expected}")]
    MemfdSize {
        /// From the header.
        expected: u64,
        /// From `fstat`.
        actual: u64,
    },
    /// A field of a known kind is malformed.
    #[error("malformed {kind:?} frame: {what}")]
    Malformed {
        /// Frame kind.
        kind: FrameKind,
        /// What is wrong.
        what: &'static str,
    },
    /// A string field is not UTF-8.
    #[error("malformed {kind:?} frame: {what} is not UTF-8")]
    Utf8 {
        /// Frame kind.
        kind: FrameKind,
        /// Which field.
        what: &'static str,
    },
    /// A system call on the socket or memfd failed.
    #[error("{op}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl ProtocolError {
    fn io(op: &'static str, e: impl Into<io::Error>) -> Self {
        ProtocolError::Io {
            op,
            source: e.into(),
        }
    }
}

/// A request or response body: inline bytes, or a sealed memfd.
#[derive(Debug)]
pub enum Body {
    /// Bytes carried in the datagram.
    Inline(Vec<u8>),
    /// A sealed memfd carried with the datagram.
    Memfd(SealedMemfd),
}

impl Body {
    /// Wraps `bytes`, moving them into a sealed memfd when they are longer
    /// than `threshold` (capped at [`MAX_INLINE_BODY`]).
    ///
    /// # Errors
    ///
    /// Creating, writing or sealing the memfd failed.
    pub fn with_threshold(bytes: Vec<u8>, threshold: usize) -> Result<Body, ProtocolError> {
        if bytes.len() <= threshold.min(MAX_INLINE_BODY as usize) {
            Ok(Body::Inline(bytes))
        } else {
            SealedMemfd::from_bytes(&bytes).map(Body::Memfd)
        }
    }

    /// [`Body::with_threshold`] with [`DEFAULT_MEMFD_THRESHOLD`].
    ///
    /// # Errors
    ///
    /// Creating, writing or sealing the memfd failed.
    pub fn new(bytes: Vec<u8>) -> Result<Body, ProtocolError> {
        Self::with_threshold(bytes, DEFAULT_MEMFD_THRESHOLD)
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Body::Inline(b) => b.len() as u64,
            Body::Memfd(m) => m.len(),
        }
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The body's bytes (a copy out of the memfd for memfd bodies).
    ///
    /// # Errors
    ///
    /// Reading the memfd failed.
    pub fn into_vec(self) -> Result<Vec<u8>, ProtocolError> {
        match self {
            Body::Inline(b) => Ok(b),
            Body::Memfd(m) => m.read_all(),
        }
    }
}

impl PartialEq for Body {
    /// Bodies are equal when their bytes are (memfds are read to compare).
    fn eq(&self, other: &Self) -> bool {
        let read = |b: &Body| match b {
            Body::Inline(v) => Some(v.clone()),
            Body::Memfd(m) => m.read_all().ok(),
        };
        match (read(self), read(other)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }
}

/// A memfd whose contents can no longer change: sealed against writes,
/// growth and shrinking, so a mapping of it stays valid whatever its creator
/// does afterwards.
#[derive(Debug)]
pub struct SealedMemfd {
    fd: OwnedFd,
    len: u64,
}

const REQUIRED_SEALS: SealFlags = SealFlags::WRITE
    .union(SealFlags::GROW)
    .union(SealFlags::SHRINK);

impl SealedMemfd {
    /// Creates a memfd holding `bytes` and seals it.
    ///
    /// # Errors
    ///
    /// A system call failed (memfd_create, write, fcntl).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let fd =
            rustix::fs::memfd_create("faas-body", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
                .map_err(|e| ProtocolError::io("memfd_create", e))?;
        let mut rest = bytes;
        while !rest.is_empty() {
            match rustix::io::write(&fd, rest) {
                Ok(0) => return Err(ProtocolError::io("write memfd", io::ErrorKind::WriteZero)),
                Ok(n) => rest = &rest[n..],
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(ProtocolError::io("write memfd", e)),
            }
        }
        rustix::fs::fcntl_add_seals(&fd, REQUIRED_SEALS | SealFlags::SEAL)
            .map_err(|e| ProtocolError::io("seal memfd", e))?;
        Ok(SealedMemfd {
            fd,
            len: bytes.len() as u64,
        })
    }

    /// Checks that a received fd is a memfd sealed against modification and
    /// exactly `expected` bytes long.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::NotSealed`] (also for fds that are not memfds) or
    /// [`ProtocolError::MemfdSize`].
    pub fn from_received(fd: OwnedFd, expected: u64) -> Result<Self, ProtocolError> {
        let seals =
            rustix::fs::fcntl_get_seals(&fd).map_err(|_| ProtocolError::NotSealed { seals: 0 })?;
        if !seals.contains(REQUIRED_SEALS) {
            return Err(ProtocolError::NotSealed {
                seals: seals.bits(),
            });
        }
        let st = rustix::fs::fstat(&fd).map_err(|e| ProtocolError::io("fstat memfd", e))?;
        let actual = u64::try_from(st.st_size).unwrap_or(0);
        if actual != expected {
            return Err(ProtocolError::MemfdSize { expected, actual });
        }
        Ok(SealedMemfd { fd, len: expected })
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the memfd is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies the contents out.
    ///
    /// # Errors
    ///
    /// `pread` failed.
    pub fn read_all(&self) -> Result<Vec<u8>, ProtocolError> {
        let len = usize::try_from(self.len).map_err(|_| ProtocolError::BodyTooLong {
            len: self.len,
            max: usize::MAX as u64,
        })?;
        let mut out = vec![0u8; len];
        let mut off = 0usize;
        while off < len {
            match rustix::io::pread(&self.fd, &mut out[off..], off as u64) {
                Ok(0) => {
                    return Err(ProtocolError::io(
                        "read memfd",
                        io::ErrorKind::UnexpectedEof,
                    ));
                }
                Ok(n) => off += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(ProtocolError::io("read memfd", e)),
            }
        }
        Ok(out)
    }

    /// The memfd, e.g. to map it read-only.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The memfd, giving up the wrapper.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}
