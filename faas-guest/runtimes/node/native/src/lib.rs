//! faas Node.js runtime addon: what `faas_runtime.js` cannot do from
//! JavaScript — pass file descriptors on the guest channel (fd 3, a
//! `SOCK_SEQPACKET` socket) and make / check sealed memfd bodies, as
//! `faas-core/src/protocol` (channel.rs, `SealedMemfd`) does.
//!
//! ```js
//! const m = { exports: {} };
//! process.dlopen(m, '/path/faas_native.node');
//! const { data, fd } = m.exports.recv(3, 196633); // fd: -1 when none came
//! const body = m.exports.readMemfd(fd, bodyLen);   // checks seals + size, closes fd
//! const memfd = m.exports.memfdFrom(bigBuffer);   // sealed
//! m.exports.send(3, headerAndMeta, memfd);          // -1: no fd
//! m.exports.close(memfd);
//! ```
//!
//! Every function is synchronous. Failures throw an `Error` whose `code` is
//! the errno name (`EAGAIN`, `EPIPE`, …) for a failed system call, or
//! `ERR_FAAS_*` for a protocol check; bad arguments throw a `TypeError` /
//! `RangeError`. All unsafe code (the N-API ABI, the system calls) lives in
//! [`sys`].

use std::ffi::{CStr, c_int};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;

mod sys;

use sys::{Cx, Method, Value};

/// The functions on the addon's `exports`.
static METHODS: [(&CStr, Method); 5] = [
    (c"recv", recv),
    (c"send", send),
    (c"memfdFrom", memfd_from),
    (c"readMemfd", read_memfd),
    (c"close", close),
];

/// Seals a receiver requires on a memfd body (`REQUIRED_SEALS` in
/// faas-core/src/protocol/mod.rs).
const REQUIRED_SEALS: c_int = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK;

/// Largest buffer `recv` allocates (far above the protocol's 196,632-byte
/// datagrams; a guard against a wild argument).
const MAX_RECV: usize = 16 * 1024 * 1024;

/// Why a call failed; thrown to JavaScript.
#[derive(Debug)]
pub(crate) enum Error {
    /// A wrong argument type (`TypeError`).
    Type(String),
    /// An argument out of range (`RangeError`).
    Range(String),
    /// A system call failed.
    Os {
        /// The call.
        op: &'static str,
        /// Its error.
        err: io::Error,
    },
    /// A protocol check failed.
    Protocol {
        /// `ERR_FAAS_…`.
        code: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// Anything else (an N-API call failed).
    Other(String),
}

impl Error {
    fn os(op: &'static str, err: io::Error) -> Self {
        Error::Os { op, err }
    }

    /// The `code` property and message of the JavaScript error.
    pub(crate) fn code_and_message(&self) -> (&'static str, String) {
        match self {
            Error::Type(m) => ("ERR_INVALID_ARG_TYPE", m.clone()),
            Error::Range(m) => ("ERR_OUT_OF_RANGE", m.clone()),
            Error::Os { op, err } => (errno_name(err.raw_os_error()), format!("{op}: {err}")),
            Error::Protocol { code, msg } => (code, msg.clone()),
            Error::Other(m) => ("ERR_FAAS_NATIVE", m.clone()),
        }
    }
}

/// The symbolic name of an errno, as Node's `err.code` has it.
fn errno_name(errno: Option<i32>) -> &'static str {
    let Some(e) = errno else { return "EIO" };
    match e {
        libc::EINTR => "EINTR",
        libc::EAGAIN => "EAGAIN",
        libc::EPIPE => "EPIPE",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOTCONN => "ENOTCONN",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOMEM => "ENOMEM",
        libc::EBADF => "EBADF",
        libc::EINVAL => "EINVAL",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::ENOSPC => "ENOSPC",
        libc::EFBIG => "EFBIG",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::ENOSYS => "ENOSYS",
        libc::EIO => "EIO",
        libc::EDQUOT => "EDQUOT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => "UNKNOWN",
    }
}

/// Argument `i` as an fd number: an integer in 0..=i32::MAX, or -1 when
/// `none_ok` ("no fd").
fn fd_arg(cx: &Cx, i: usize, what: &str, none_ok: bool) -> Result<Option<RawFd>, Error> {
    let n = cx.number(i, what)?;
    if none_ok && n == -1.0 {
        return Ok(None);
    }
    if n.fract() != 0.0 || !(0.0..=f64::from(i32::MAX)).contains(&n) {
        return Err(Error::Range(format!(
            "{what}: {n} is not a file descriptor"
        )));
    }
    Ok(Some(n as RawFd))
}

/// A length argument: an integer in 0..=max.
fn len_arg(cx: &Cx, i: usize, what: &str, max: usize) -> Result<usize, Error> {
    let n = cx.number(i, what)?;
    if n.fract() != 0.0 || !(0.0..=max as f64).contains(&n) {
        return Err(Error::Range(format!(
            "{what}: {n} is not a length in 0..={max}"
        )));
    }
    Ok(n as usize)
}

/// `recv(fd, maxBytes) -> { data: Buffer, fd: number }`: one `recvmsg` of at
/// most `maxBytes` bytes with room for one SCM_RIGHTS fd (received
/// close-on-exec). `fd` is -1 when none came. A datagram or control data cut
/// by the kernel (`MSG_TRUNC`/`MSG_CTRUNC`) throws `ERR_FAAS_TRUNCATED`, more
/// than one fd `ERR_FAAS_UNEXPECTED_FD`; either way every received fd is
/// closed. End of stream is an empty `data`. EINTR is retried.
fn recv(cx: &Cx) -> Result<Value, Error> {
    let sock = fd_arg(cx, 0, "recv: fd", false)?.unwrap_or(-1);
    let max = len_arg(cx, 1, "recv: maxBytes", MAX_RECV)?;
    let mut buf = vec![0u8; max];
    let got = loop {
        match sys::recvmsg(sock, &mut buf) {
            Ok(r) => break r,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::os("recvmsg", e)),
        }
    };
    if got.truncated {
        // The fds in `got` are closed when it drops.
        return Err(Error::Protocol {
            code: "ERR_FAAS_TRUNCATED",
            msg: "frame truncated in transit".into(),
        });
    }
    let mut fds = got.fds;
    if fds.len() > 1 {
        return Err(Error::Protocol {
            code: "ERR_FAAS_UNEXPECTED_FD",
            msg: format!("frame carries {} fds (at most one is allowed)", fds.len()),
        });
    }
    let data = cx.buffer_copy(&buf[..got.len])?;
    // Handed to JavaScript from here on: it must close it.
    let fd = fds.pop().map_or(-1, IntoRawFd::into_raw_fd);
    let fd_value = cx.new_number(f64::from(fd))?;
    cx.object(&[(c"data", data), (c"fd", fd_value)])
}

/// `send(fd, data, bodyFd) -> number`: one `sendmsg` (`MSG_NOSIGNAL`) of
/// `data`, with `bodyFd` as SCM_RIGHTS when it is ≥ 0 (-1: none). Returns the
/// bytes sent. `bodyFd` stays open (the caller closes it). EINTR is retried.
fn send(cx: &Cx) -> Result<Value, Error> {
    let sock = fd_arg(cx, 0, "send: fd", false)?.unwrap_or(-1);
    let data = cx.bytes(1, "send: data")?;
    let body_fd = if cx.number(2, "send: bodyFd")? < 0.0 {
        None
    } else {
        fd_arg(cx, 2, "send: bodyFd", false)?
    };
    let n = loop {
        match sys::sendmsg(sock, data, body_fd) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::os("sendmsg", e)),
        }
    };
    cx.new_number(n as f64)
}

/// `memfdFrom(data) -> number`: a memfd (`MFD_CLOEXEC | MFD_ALLOW_SEALING`)
/// holding `data`, sealed `F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK |
/// F_SEAL_SEAL` as `SealedMemfd::from_bytes` does. The caller closes it.
fn memfd_from(cx: &Cx) -> Result<Value, Error> {
    let data = cx.bytes(0, "memfdFrom: data")?;
    let fd = sys::memfd_create(c"faas-body", libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        .map_err(|e| Error::os("memfd_create", e))?;
    let mut file = File::from(fd);
    // write_all retries EINTR and short writes; an error drops (closes) the memfd.
    file.write_all(data)
        .map_err(|e| Error::os("write memfd", e))?;
    let fd: OwnedFd = file.into();
    sys::add_seals(&fd, REQUIRED_SEALS | libc::F_SEAL_SEAL)
        .map_err(|e| Error::os("seal memfd", e))?;
    cx.new_number(f64::from(fd.into_raw_fd()))
}

/// `readMemfd(fd, len) -> Buffer`: takes `fd` (always closed, also on
/// error), checks it as `SealedMemfd::from_received` does — a memfd sealed
/// against write, grow and shrink (`ERR_FAAS_NOT_SEALED`, also for an fd that
/// is no memfd), exactly `len` bytes (`ERR_FAAS_MEMFD_SIZE`) — and reads it
/// into a new Buffer.
fn read_memfd(cx: &Cx) -> Result<Value, Error> {
    let raw = fd_arg(cx, 0, "readMemfd: fd", false)?.unwrap_or(-1);
    // Owned from here: closed on every path.
    let fd = sys::own_fd(raw)?;
    let len = len_arg(cx, 1, "readMemfd: len", u32::MAX as usize)?;
    let seals = sys::get_seals(&fd).unwrap_or(0);
    if seals & REQUIRED_SEALS != REQUIRED_SEALS {
        return Err(Error::Protocol {
            code: "ERR_FAAS_NOT_SEALED",
            msg: format!(
                "memfd body is not sealed (seals {seals:#x}); need write, grow and shrink seals"
            ),
        });
    }
    let file = File::from(fd);
    let actual = file
        .metadata()
        .map_err(|e| Error::os("fstat memfd", e))?
        .len();
    if actual != len as u64 {
        return Err(Error::Protocol {
            code: "ERR_FAAS_MEMFD_SIZE",
            msg: format!("memfd body has {actual} bytes, header says {len}"),
        });
    }
    // read_exact_at is pread in a loop (EINTR retried); a file that shrank
    // anyway would give UnexpectedEof.
    cx.buffer_filled(len, |buf| {
        file.read_exact_at(buf, 0)
            .map_err(|e| Error::os("read memfd", e))
    })
}

/// `close(fd)`: close(2); throws on failure (e.g. `EBADF`).
fn close(cx: &Cx) -> Result<Value, Error> {
    let fd = fd_arg(cx, 0, "close: fd", false)?.unwrap_or(-1);
    sys::close(fd).map_err(|e| Error::os("close", e))?;
    cx.undefined()
}
