//! # faas-guest
//!
//! The library a native function links. A function is a client, never a
//! server: it finds its channel to the node gateway on fd 3, says it is
//! ready, pulls a request, runs the handler and sends the answer back.
//!
//! ```no_run
//! fn main() {
//!     faas_guest::serve(|req: faas_guest::Request| {
//!         faas_guest::Response::ok(req.body().to_vec())
//!     })
//! }
//! ```
//!
//! ```text
//!  node gateway                          instance (this library, fd 3)
//!       | <-------------- Ready --------------- |  serve(): once per request
//!       | --------------- Invoke -------------> |  -> Request -> handler(req)
//!       | <--------------- Log ---------------- |  log("...") while it runs
//!       | <-------------- Result -------------- |  <- Response (> 64 KiB: memfd)
//!       |                 or Error              |  <- the handler panicked
//! ```
//!
//! The layers, bottom up:
//!
//! - `sys` (private): takes fd 3 exactly once, after checking that it is a
//!   connected, inherited `AF_UNIX`/`SOCK_SEQPACKET` socket. The only
//!   `unsafe` code of the crate.
//! - [`faas_core::protocol::Channel`]: frames on that socket (encoding,
//!   defensive decoding, memfd bodies).
//! - [`serve_on`]: the request loop over any [`Channel`]; returns when it is
//!   done, so it can be driven in-process (tests, embedders).
//! - [`serve`]: [`serve_on`] over fd 3 in the mode named by `FAAS_REUSE`,
//!   exiting the process when it is done.
//!
//! # Reuse
//!
//! The gateway tells the instance how it is reused through the environment
//! variable `FAAS_REUSE` (see [`ReuseMode`]): `per_request` (the default)
//! serves one request and exits; `keep_alive` serves requests until the
//! gateway closes the channel.
//!
//! # Failures
//!
//! | what | what happens |
//! |---|---|
//! | the handler panics | an `Error` frame (status 500, the panic message); the instance goes on |
//! | the response cannot be sent as given (status outside 100..=999, too many headers) | an `Error` frame (status 500) naming the problem |
//! | fd 3 is missing or is not the guest channel | one line on stderr, exit code [`EXIT_NO_CHANNEL`] (70) |
//! | the gateway breaks the protocol, or the channel fails | one line on stderr, exit code [`EXIT_PROTOCOL`] (71) |
//! | the gateway closes the channel | exit code 0 |
//!
//! Panics are caught with `catch_unwind`, so a function built with
//! `panic = "abort"` dies on a panic instead (the gateway then answers the
//! request with an error).
#![deny(unsafe_code)]
// The examples show a function's whole `main`, as its author writes it.
#![allow(clippy::needless_doctest_main)]

mod logging;
mod request;
mod response;
mod serve;
#[allow(unsafe_code)]
mod sys;

pub use faas_core::protocol::Channel;
pub use logging::log;
pub use request::Request;
pub use response::Response;
pub use serve::{
    EXIT_NO_CHANNEL, EXIT_PROTOCOL, REUSE_ENV, ReuseMode, ReuseModeError, ServeError, serve,
    serve_on, snapshot_point,
};

/// The result type of this crate's fallible operations.
pub type Result<T, E = ServeError> = std::result::Result<T, E>;
