//! Sending and receiving frames on a `SOCK_SEQPACKET` socket, with the memfd
//! of a large body passed as `SCM_RIGHTS`.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use super::{DecodeLimits, Frame, MAX_DATAGRAM, ProtocolError, decode};

/// Creates a connected `SOCK_SEQPACKET` pair with close-on-exec set on both
/// ends: one for the node gateway, one to become the instance's fd 3.
///
/// # Errors
///
/// `socketpair` failed.
pub fn channel_pair() -> Result<(OwnedFd, OwnedFd), ProtocolError> {
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| ProtocolError::io("socketpair", e))
}

/// Encodes `frame` into `scratch` and sends it as one datagram.
///
/// # Errors
///
/// Encoding failed, or `sendmsg` did (a closed peer gives `EPIPE`; no
/// `SIGPIPE` is raised).
pub fn send_frame(
    fd: BorrowedFd<'_>,
    frame: &Frame,
    scratch: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    let memfd = frame.encode(scratch)?;
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(m) = memfd {
        fds = [m];
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(ProtocolError::io(
                "sendmsg",
                std::io::ErrorKind::OutOfMemory,
            ));
        }
    }
    loop {
        match rustix::net::sendmsg(
            fd,
            &[IoSlice::new(scratch)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) if n == scratch.len() => return Ok(()),
            Ok(_) => return Err(ProtocolError::Truncated),
            Err(Errno::INTR) => {}
            Err(e) => return Err(ProtocolError::io("sendmsg", e)),
        }
    }
}

/// What one receive attempt produced.
#[derive(Debug)]
pub enum RecvOutcome {
    /// A well-formed frame.
    Frame(Frame),
    /// The peer closed its end (or sent an empty datagram, which no valid
    /// sender does).
    Closed,
    /// Nothing to read yet (non-blocking receive only).
    WouldBlock,
}

/// Receives and decodes one frame, blocking until one arrives.
///
/// # Errors
///
/// `recvmsg` failed, or the frame is malformed (see [`decode`]).
pub fn recv_frame(
    fd: BorrowedFd<'_>,
    scratch: &mut Vec<u8>,
    limits: &DecodeLimits,
) -> Result<Option<Frame>, ProtocolError> {
    match recv_inner(fd, scratch, limits, RecvFlags::empty())? {
        RecvOutcome::Frame(f) => Ok(Some(f)),
        RecvOutcome::Closed => Ok(None),
        RecvOutcome::WouldBlock => {
            Err(ProtocolError::io("recvmsg", std::io::ErrorKind::WouldBlock))
        }
    }
}

/// Receives and decodes one frame if one is waiting (`MSG_DONTWAIT`).
///
/// # Errors
///
/// `recvmsg` failed, or the frame is malformed (see [`decode`]).
pub fn try_recv_frame(
    fd: BorrowedFd<'_>,
    scratch: &mut Vec<u8>,
    limits: &DecodeLimits,
) -> Result<RecvOutcome, ProtocolError> {
    recv_inner(fd, scratch, limits, RecvFlags::DONTWAIT)
}

fn recv_inner(
    fd: BorrowedFd<'_>,
    scratch: &mut Vec<u8>,
    limits: &DecodeLimits,
    flags: RecvFlags,
) -> Result<RecvOutcome, ProtocolError> {
    // Room for more fds than a valid frame carries (rustix pads the space),
    // so a peer passing several fds gets `UnexpectedFd`, or `Truncated` when
    // even this overflows; either way every received fd is closed.
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    // Unless the buffer already holds a maximal datagram (see
    // `LONG_LIVED`), the datagram's length first (MSG_PEEK | MSG_TRUNC
    // with no buffer and no control space: nothing is consumed, no fd
    // installed), so the buffer grows only as far as the frames need: a
    // fresh channel (one per instance) does not zero and fault in the
    // 192 KiB of a maximal frame to read a small request.
    if scratch.len() <= MAX_DATAGRAM {
        let len = loop {
            let none: &mut [u8] = &mut [];
            match rustix::net::recv(fd, none, flags | RecvFlags::PEEK | RecvFlags::TRUNC) {
                Ok((_, len)) => break len,
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => return Ok(RecvOutcome::WouldBlock),
                Err(e) => return Err(ProtocolError::io("recv", e)),
            }
        };
        let need = len.min(MAX_DATAGRAM) + 1;
        if scratch.len() < need {
            scratch.resize(need, 0);
        }
    }
    let msg = loop {
        match rustix::net::recvmsg(
            fd,
            &mut [IoSliceMut::new(scratch)],
            &mut control,
            flags | RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => break m,
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Ok(RecvOutcome::WouldBlock),
            Err(e) => return Err(ProtocolError::io("recvmsg", e)),
        }
    };
    let mut fds: Vec<OwnedFd> = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if msg
        .flags
        .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
        || msg.bytes > MAX_DATAGRAM
    {
        return Err(ProtocolError::Truncated);
    }
    if msg.bytes == 0 {
        return Ok(RecvOutcome::Closed);
    }
    if fds.len() > 1 {
        return Err(ProtocolError::UnexpectedFd);
    }
    decode(&scratch[..msg.bytes], fds.pop(), limits).map(RecvOutcome::Frame)
}

/// The frames a channel receives before its receive buffer grows to a
/// maximal datagram: from then on each receive is one `recvmsg`, without
/// the peek at the length (a kept-alive instance and its end in the node
/// gateway pay for the 192 KiB once; a per-request instance never does).
pub const LONG_LIVED: u32 = 2;

/// Grows `scratch` to hold any datagram once `received` (the frames
/// received with it so far, counted here) reaches [`LONG_LIVED`], so that
/// [`recv_frame`] and [`try_recv_frame`] skip their peek at the length.
pub fn grow_when_long_lived(scratch: &mut Vec<u8>, received: &mut u32) {
    if *received == LONG_LIVED {
        scratch.resize(MAX_DATAGRAM + 1, 0);
    }
    *received = received.saturating_add(1);
}

/// A blocking frame channel over one socket end, with its scratch buffers;
/// what a guest uses on its fd 3.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
    send_buf: Vec<u8>,
    recv_buf: Vec<u8>,
    received: u32,
    limits: DecodeLimits,
}

impl Channel {
    /// Wraps a connected `SOCK_SEQPACKET` socket.
    pub fn new(fd: OwnedFd, limits: DecodeLimits) -> Self {
        Channel {
            fd,
            send_buf: Vec::with_capacity(4096),
            recv_buf: Vec::new(),
            received: 0,
            limits,
        }
    }

    /// Sends one frame.
    ///
    /// # Errors
    ///
    /// See [`send_frame`].
    pub fn send(&mut self, frame: &Frame) -> Result<(), ProtocolError> {
        send_frame(self.fd.as_fd(), frame, &mut self.send_buf)
    }

    /// Receives one frame; `None` when the peer closed the channel.
    ///
    /// # Errors
    ///
    /// See [`recv_frame`].
    pub fn recv(&mut self) -> Result<Option<Frame>, ProtocolError> {
        grow_when_long_lived(&mut self.recv_buf, &mut self.received);
        recv_frame(self.fd.as_fd(), &mut self.recv_buf, &self.limits)
    }

    /// The socket.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
