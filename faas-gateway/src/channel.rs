//! The node gateway's end of a guest channel, driven by tokio.

use std::os::fd::{AsFd, OwnedFd};

use faas_core::protocol::{
    DecodeLimits, Frame, ProtocolError, RecvOutcome, grow_when_long_lived, send_frame,
    try_recv_frame,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A non-blocking guest channel registered with the tokio reactor.
pub(crate) struct AsyncChannel {
    fd: AsyncFd<OwnedFd>,
    send_buf: Vec<u8>,
    recv_buf: Vec<u8>,
    /// Frames received (see [`grow_when_long_lived`]).
    received: u32,
    limits: DecodeLimits,
}

impl AsyncChannel {
    pub(crate) fn new(fd: OwnedFd, limits: DecodeLimits) -> Result<Self, ProtocolError> {
        rustix::io::ioctl_fionbio(&fd, true).map_err(|e| ProtocolError::Io {
            op: "set non-blocking",
            source: e.into(),
        })?;
        let fd = crate::sys::register(fd, Interest::READABLE | Interest::WRITABLE).map_err(
            |source| ProtocolError::Io {
                op: "register channel",
                source,
            },
        )?;
        Ok(AsyncChannel {
            fd,
            send_buf: Vec::with_capacity(4096),
            recv_buf: Vec::new(),
            received: 0,
            limits,
        })
    }

    /// Receives one frame; `None` when the instance closed its end.
    pub(crate) async fn recv(&mut self) -> Result<Option<Frame>, ProtocolError> {
        grow_when_long_lived(&mut self.recv_buf, &mut self.received);
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|source| ProtocolError::Io {
                    op: "poll channel",
                    source,
                })?;
            match try_recv_frame(guard.get_inner().as_fd(), &mut self.recv_buf, &self.limits)? {
                RecvOutcome::Frame(f) => return Ok(Some(f)),
                RecvOutcome::Closed => return Ok(None),
                RecvOutcome::WouldBlock => guard.clear_ready(),
            }
        }
    }

    /// Sends one frame, waiting while the socket buffer is full.
    pub(crate) async fn send(&mut self, frame: &Frame) -> Result<(), ProtocolError> {
        loop {
            let mut guard = self
                .fd
                .writable()
                .await
                .map_err(|source| ProtocolError::Io {
                    op: "poll channel",
                    source,
                })?;
            match send_frame(guard.get_inner().as_fd(), frame, &mut self.send_buf) {
                Err(ProtocolError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::WouldBlock =>
                {
                    guard.clear_ready();
                }
                other => return other,
            }
        }
    }
}
