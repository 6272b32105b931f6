//! The only unsafe code of the crate: registering a socket with tokio.

use std::os::fd::OwnedFd;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Registers an owned socket (or any fd `epoll` accepts) with the current
/// tokio reactor.
///
/// # Panics
///
/// Outside a tokio runtime with I/O enabled.
pub fn register(fd: OwnedFd, interest: Interest) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is a valid open descriptor that nothing else
    // closes; `AsyncFd` owns it from here on, and `OwnedFd::as_raw_fd`
    // always returns the same number, so the descriptor stays open and names
    // the same open file description for the whole registration.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}
