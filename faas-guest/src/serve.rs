//! The request loop: `Ready` → `Invoke` → handler → `Result`/`Error`.

use std::cell::Cell;
use std::fmt;
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::str::FromStr;
use std::sync::{Arc, Mutex, Once};

use faas_core::protocol::{Body, Channel, DecodeLimits, Frame, FrameKind, ProtocolError};
use faas_core::{InvocationId, UnixMillis};

use crate::logging::{Registration, lock};
use crate::{Request, Response, sys};

/// The environment variable that names the [`ReuseMode`].
pub const REUSE_ENV: &str = "FAAS_REUSE";

/// Exit code of [`serve`] and [`snapshot_point`] when fd 3 is missing or is
/// not the guest channel (`EX_SOFTWARE`).
pub const EXIT_NO_CHANNEL: i32 = 70;

/// Exit code of [`serve`] and [`snapshot_point`] when the gateway breaks the
/// protocol, the channel fails, or `FAAS_REUSE` names no mode (`EX_OSERR`).
pub const EXIT_PROTOCOL: i32 = 71;

/// What the instance does after it answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ReuseMode {
    /// Serve one request, then stop (`FAAS_REUSE=per_request`, or unset).
    #[default]
    PerRequest,
    /// Serve requests until the gateway closes the channel
    /// (`FAAS_REUSE=keep_alive`).
    KeepAlive,
}

impl ReuseMode {
    /// The mode named by [`REUSE_ENV`]; [`ReuseMode::PerRequest`] when it is
    /// unset or empty.
    ///
    /// # Errors
    ///
    /// The variable names no mode.
    pub fn from_env() -> Result<Self, ReuseModeError> {
        match std::env::var_os(REUSE_ENV) {
            None => Ok(ReuseMode::PerRequest),
            Some(v) => match v.to_str() {
                Some(s) => s.parse(),
                None => Err(ReuseModeError {
                    value: v.to_string_lossy().into_owned(),
                }),
            },
        }
    }

    /// The name used in [`REUSE_ENV`].
    pub fn as_str(self) -> &'static str {
        match self {
            ReuseMode::PerRequest => "per_request",
            ReuseMode::KeepAlive => "keep_alive",
        }
    }
}

impl FromStr for ReuseMode {
    type Err = ReuseModeError;

    /// `per_request`, `keep_alive`, or the empty string (per request).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "per_request" => Ok(ReuseMode::PerRequest),
            "keep_alive" => Ok(ReuseMode::KeepAlive),
            _ => Err(ReuseModeError { value: s.into() }),
        }
    }
}

impl fmt::Display for ReuseMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// [`REUSE_ENV`] names no [`ReuseMode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReuseModeError {
    /// The value found.
    pub value: String,
}

impl fmt::Display for ReuseModeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{REUSE_ENV}={:?}: expected per_request or keep_alive",
            self.value
        )
    }
}

impl std::error::Error for ReuseModeError {}

/// Why the request loop stopped before the gateway closed the channel.
#[derive(Debug)]
pub enum ServeError {
    /// A frame could not be sent.
    Send {
        /// Its kind.
        kind: FrameKind,
        /// Its invocation (0 for `Ready`).
        id: InvocationId,
        /// The cause.
        source: ProtocolError,
    },
    /// Receiving from the gateway failed, or it sent a malformed frame.
    Recv {
        /// The cause.
        source: ProtocolError,
    },
    /// The gateway sent a well-formed frame a guest never receives.
    UnexpectedFrame {
        /// Its kind.
        kind: FrameKind,
        /// Its invocation id.
        id: InvocationId,
    },
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Send {
                kind: FrameKind::Ready,
                source,
                ..
            } => write!(f, "sending Ready to the gateway: {source}"),
            ServeError::Send { kind, id, source } => {
                write!(
                    f,
                    "sending {kind:?} of invocation {id} to the gateway: {source}"
                )
            }
            ServeError::Recv { source } => write!(f, "receiving from the gateway: {source}"),
            ServeError::UnexpectedFrame { kind, id } => write!(
                f,
                "the gateway sent a {kind:?} frame (invocation {id}) where a guest expects Invoke"
            ),
        }
    }
}

impl std::error::Error for ServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServeError::Send { source, .. } | ServeError::Recv { source } => Some(source),
            ServeError::UnexpectedFrame { .. } => None,
        }
    }
}

/// The fd-3 channel once taken, with the frame [`snapshot_point`] pulled
/// (`Some(None)`: the gateway closed the channel instead).
struct Session {
    chan: Channel,
    pending: Option<Option<Frame>>,
}

static SESSION: Mutex<Option<Session>> = Mutex::new(None);

/// Serves requests from the node gateway with `handler`, then exits the
/// process.
///
/// Takes the guest channel on fd 3, then, in the [`ReuseMode`] named by
/// `FAAS_REUSE`: sends `Ready`, pulls one `Invoke`, runs `handler` on it and
/// sends its [`Response`] as a `Result` frame (bodies over 64 KiB as a
/// sealed memfd); in `keep_alive` mode it repeats until the gateway closes
/// the channel. A panic in `handler` is answered with an `Error` frame
/// (status 500, the panic message) and one line on stderr; the loop goes on.
///
/// Call it from `main` before starting threads that open or close files
/// (fd 3 must not change while it is checked and taken).
///
/// ```no_run
/// fn main() {
///     faas_guest::serve(|req: faas_guest::Request| {
///         faas_guest::Response::ok(req.body().to_vec())
///     })
/// }
/// ```
///
/// # Exit codes
///
/// - 0: the request (`per_request`) or all requests until the gateway closed
///   the channel (`keep_alive`) were answered.
/// - [`EXIT_NO_CHANNEL`] (70): fd 3 is missing or not the guest channel
///   (e.g. the function was started by hand); one line on stderr.
/// - [`EXIT_PROTOCOL`] (71): the gateway broke the protocol, the channel
///   failed, or `FAAS_REUSE` names no mode; one line on stderr.
pub fn serve<F>(handler: F) -> !
where
    F: FnMut(Request) -> Response,
{
    let session = take_session();
    let mode = match ReuseMode::from_env() {
        Ok(mode) => mode,
        Err(e) => exit_with(EXIT_PROTOCOL, &e),
    };
    match run(session.chan, session.pending, mode, handler) {
        Ok(()) => exit_with(0, &""),
        Err(e) => exit_with(EXIT_PROTOCOL, &e),
    }
}

/// Tells the gateway that the runtime is initialised and may be
/// checkpointed here, then waits for the first request.
///
/// Sends `Ready` with the snapshot flag and blocks until the next frame
/// arrives, exactly like the `Ready` of [`serve`]; that frame (normally the
/// first `Invoke`) is kept, and the following [`serve`] answers it without
/// sending another `Ready`. Call it once, from `main`, after the expensive
/// initialisation and before [`serve`], with no other thread running:
///
/// ```no_run
/// fn main() {
///     let table: Vec<u64> = (0..1_000_000).map(|i| i * i).collect(); // costly init
///     faas_guest::snapshot_point();
///     faas_guest::serve(move |req: faas_guest::Request| {
///         let i = req.body().len() % table.len();
///         faas_guest::Response::ok(table[i].to_string())
///     })
/// }
/// ```
///
/// What it does today: under a gateway that does not snapshot, it behaves
/// like a normal `Ready`. A gateway that snapshots checkpoints the process
/// while it blocks here and restores copies of it, each with a fresh channel
/// on fd 3; the blocked receive then returns that copy's first request. It
/// does not re-seed random number generators or otherwise refresh process
/// state after a restore. Calling it again before [`serve`] does nothing.
///
/// Exits the process like [`serve`] when fd 3 is not the guest channel
/// ([`EXIT_NO_CHANNEL`]) or the channel fails ([`EXIT_PROTOCOL`]).
pub fn snapshot_point() {
    let mut session = take_session();
    if session.pending.is_none() {
        match ready_then_recv(&mut session.chan, true) {
            Ok(next) => session.pending = Some(next),
            Err(e) => exit_with(EXIT_PROTOCOL, &e),
        }
    }
    *lock(&SESSION) = Some(session);
}

/// Serves requests from `channel` with `handler`, like [`serve`], but
/// returns instead of exiting: the loop an embedder or a test drives
/// in-process, e.g. over one end of
/// [`channel_pair`](faas_core::protocol::channel_pair).
///
/// Returns `Ok` after one answered request in [`ReuseMode::PerRequest`],
/// and when the gateway closes the channel (before sending a request, or in
/// [`ReuseMode::KeepAlive`] between requests).
///
/// Only one `serve_on` should run per process at a time: the panic hook and
/// [`log`](crate::log) from threads the handler starts are process-wide.
///
/// # Errors
///
/// The gateway sent something other than `Invoke` or a malformed frame, or
/// the channel failed.
pub fn serve_on<F>(channel: Channel, mode: ReuseMode, handler: F) -> Result<(), ServeError>
where
    F: FnMut(Request) -> Response,
{
    run(channel, None, mode, handler)
}

fn run<F>(
    channel: Channel,
    mut pending: Option<Option<Frame>>,
    mode: ReuseMode,
    mut handler: F,
) -> Result<(), ServeError>
where
    F: FnMut(Request) -> Response,
{
    install_panic_hook();
    let chan = Arc::new(Mutex::new(channel));
    // Kept alive, each answer says the next request may come at once (its
    // `ready` flag): no `Ready` between requests.
    let keep_alive = mode == ReuseMode::KeepAlive;
    let mut announced = false;
    loop {
        let next = match pending.take() {
            Some(next) => next,
            None if announced => recv(&mut lock(&chan))?,
            None => ready_then_recv(&mut lock(&chan), false)?,
        };
        let Some(frame) = next else {
            return Ok(());
        };
        let reply = match frame {
            Frame::Invoke {
                id,
                deadline,
                trace_id,
                headers,
                body,
            } => invoke(&chan, id, deadline, trace_id, headers, body, &mut handler),
            other => {
                return Err(ServeError::UnexpectedFrame {
                    kind: other.kind(),
                    id: other.id(),
                });
            }
        };
        send_reply(&mut lock(&chan), reply, keep_alive)?;
        if !keep_alive {
            return Ok(());
        }
        announced = true;
    }
}

/// Sends `Ready` and waits for the next frame; `None` when the gateway
/// closed the channel (before or after the `Ready`).
fn ready_then_recv(chan: &mut Channel, snapshot: bool) -> Result<Option<Frame>, ServeError> {
    match chan.send(&Frame::Ready { snapshot }) {
        Ok(()) => {}
        Err(e) if peer_closed(&e) => return Ok(None),
        Err(source) => {
            return Err(ServeError::Send {
                kind: FrameKind::Ready,
                id: InvocationId(0),
                source,
            });
        }
    }
    recv(chan)
}

/// Waits for the next frame; `None` when the gateway closed the channel.
fn recv(chan: &mut Channel) -> Result<Option<Frame>, ServeError> {
    match chan.recv() {
        Ok(next) => Ok(next),
        Err(e) if peer_closed(&e) => Ok(None),
        Err(source) => Err(ServeError::Recv { source }),
    }
}

fn peer_closed(e: &ProtocolError) -> bool {
    matches!(e, ProtocolError::Io { source, .. }
        if matches!(source.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset))
}

/// Sends the answer to one invocation, with the `ready` flag set when
/// `ready` (the next request may come at once). A `Result` the wire format
/// cannot carry (too many or too long headers) is replaced by an `Error`
/// saying so.
fn send_reply(chan: &mut Channel, reply: Frame, ready: bool) -> Result<(), ServeError> {
    let reply = &with_ready(reply, ready);
    let id = reply.id();
    match chan.send(reply) {
        Ok(()) => Ok(()),
        Err(
            e @ (ProtocolError::FieldTooLong { .. }
            | ProtocolError::MetaTooLong { .. }
            | ProtocolError::BodyTooLong { .. }),
        ) => {
            let error = with_ready(
                error_frame(
                    id,
                    format!("faas-guest: the handler's response cannot be sent: {e}"),
                ),
                ready,
            );
            chan.send(&error).map_err(|source| ServeError::Send {
                kind: FrameKind::Error,
                id,
                source,
            })
        }
        Err(source) => Err(ServeError::Send {
            kind: reply.kind(),
            id,
            source,
        }),
    }
}

/// `answer` (a `Result` or `Error`) with its `ready` flag set to `ready`.
fn with_ready(mut answer: Frame, ready: bool) -> Frame {
    if let Frame::Result { ready: r, .. } | Frame::Error { ready: r, .. } = &mut answer {
        *r = ready;
    }
    answer
}

/// Runs the handler on one `Invoke` and turns its outcome into the frame to
/// answer with.
fn invoke<F>(
    chan: &Arc<Mutex<Channel>>,
    id: InvocationId,
    deadline: UnixMillis,
    trace_id: String,
    headers: Vec<(String, String)>,
    body: Body,
    handler: &mut F,
) -> Frame
where
    F: FnMut(Request) -> Response,
{
    let body = match body.into_vec() {
        Ok(body) => body,
        Err(e) => {
            return error_frame(id, format!("faas-guest: cannot read the request body: {e}"));
        }
    };
    let request = Request::from_invoke(id, deadline, trace_id, headers, body);
    let outcome = {
        let _registered = Registration::new(chan, id);
        call_handler(handler, request, id)
    };
    match outcome {
        Ok(response) => response_frame(id, response),
        Err(message) => error_frame(id, message),
    }
}

fn response_frame(id: InvocationId, response: Response) -> Frame {
    let (status, headers, body) = response.into_parts();
    if !(100..=999).contains(&status) {
        return error_frame(
            id,
            format!("faas-guest: the handler answered with status {status}, outside 100..=999"),
        );
    }
    match Body::new(body) {
        Ok(body) => Frame::Result {
            id,
            status,
            headers,
            body,
            ready: false,
        },
        Err(e) => error_frame(
            id,
            format!("faas-guest: cannot pass the response body to the gateway: {e}"),
        ),
    }
}

fn error_frame(id: InvocationId, message: String) -> Frame {
    Frame::Error {
        id,
        status: 500,
        message,
        ready: false,
    }
}

thread_local! {
    /// The invocation whose handler runs on this thread, if any.
    static IN_HANDLER: Cell<Option<InvocationId>> = const { Cell::new(None) };
}

static PANIC_HOOK: Once = Once::new();

/// Installs (once per process) a panic hook that reports a panic in a
/// handler as one line on stderr, and leaves every other panic to the hook
/// that was there before.
fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| match IN_HANDLER.with(Cell::get) {
            Some(id) => {
                let message = info.payload_as_str().unwrap_or("(a non-string payload)");
                let at = info
                    .location()
                    .map_or_else(|| "an unknown location".to_owned(), ToString::to_string);
                eprintln!("faas-guest: invocation {id}: handler panicked at {at}: {message}");
            }
            None => previous(info),
        }));
    });
}

/// Runs the handler, turning a panic into its message.
fn call_handler<F>(handler: &mut F, request: Request, id: InvocationId) -> Result<Response, String>
where
    F: FnMut(Request) -> Response,
{
    let outer = IN_HANDLER.with(|c| c.replace(Some(id)));
    // AssertUnwindSafe: after a panic the handler's captured state may be
    // half-updated; the instance goes on serving with it, as a server
    // thread would after a caught panic. Nothing of this crate is shared
    // with the handler except the channel, whose mutex tolerates poisoning.
    let result = panic::catch_unwind(AssertUnwindSafe(|| handler(request)));
    IN_HANDLER.with(|c| c.set(outer));
    result.map_err(|payload| {
        if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "the handler panicked (with a non-string payload)".to_owned()
        }
    })
}

/// Takes the fd-3 session, from [`snapshot_point`] or fresh; exits with
/// [`EXIT_NO_CHANNEL`] when fd 3 is not the guest channel.
fn take_session() -> Session {
    if let Some(session) = lock(&SESSION).take() {
        return session;
    }
    match sys::take_guest_fd() {
        Ok(fd) => Session {
            chan: Channel::new(fd, DecodeLimits::default()),
            pending: None,
        },
        Err(e) => exit_with(
            EXIT_NO_CHANNEL,
            &format_args!(
                "fd {} is not the guest channel: {e} (run this under a faas node gateway)",
                sys::GUEST_FD
            ),
        ),
    }
}

/// Flushes stdout, prints `faas-guest: {why}` on stderr unless `code` is 0,
/// and exits.
fn exit_with(code: i32, why: &dyn fmt::Display) -> ! {
    // Exiting skips destructors: flush what the handler printed. Nothing
    // to do if that fails.
    let _ = std::io::stdout().flush();
    if code != 0 {
        eprintln!("faas-guest: {why}");
    }
    std::process::exit(code)
}

#[cfg(test)]
mod tests;
