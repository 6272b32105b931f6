//! `log()`: `Log` frames for the invocation that is running.
//!
//! While a handler runs, [`serve_on`](crate::serve_on) registers its channel
//! and the invocation id here; [`log`] sends to the registration of the
//! calling thread, or (from a thread the handler started) to the most recent
//! one. Registrations are removed before the loop touches the channel again,
//! and `log` holds the registry lock while it sends, so a log record never
//! interleaves with the loop's own frames or outlives its invocation.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;

use faas_core::InvocationId;
use faas_core::protocol::{Body, Channel, Frame, LogStream};

/// A running invocation a log record can go to.
struct Active {
    /// The thread running the handler.
    thread: ThreadId,
    chan: Arc<Mutex<Channel>>,
    id: InvocationId,
}

static ACTIVE: Mutex<Vec<Active>> = Mutex::new(Vec::new());

/// Locks `m`, ignoring poisoning: every value guarded in this crate stays
/// consistent across a panic (a panic happens only in user code, outside
/// the locks).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sends `msg` to the gateway as a `Log` record (stream `Log`) of the
/// invocation that is running.
///
/// Call it from the handler, or from a thread the handler started while the
/// handler is still running. Outside an invocation, or if the record cannot
/// be sent, the message goes to stderr instead (one line). Large messages
/// travel as a memfd like large bodies do.
///
/// ```no_run
/// faas_guest::serve(|req: faas_guest::Request| {
///     faas_guest::log(format!("got {} bytes", req.body().len()));
///     faas_guest::Response::ok("done")
/// })
/// ```
pub fn log(msg: impl AsRef<[u8]>) {
    let msg = msg.as_ref();
    {
        let active = lock(&ACTIVE);
        let me = std::thread::current().id();
        let target = active
            .iter()
            .rev()
            .find(|a| a.thread == me)
            .or_else(|| active.last());
        if let Some(a) = target {
            let sent = Body::new(msg.to_vec()).and_then(|body| {
                lock(&a.chan).send(&Frame::Log {
                    id: a.id,
                    stream: LogStream::Log,
                    body,
                })
            });
            if sent.is_ok() {
                return;
            }
        }
    }
    let mut err = std::io::stderr().lock();
    // Nowhere left to report a failing stderr to.
    let _ = err.write_all(msg);
    if !msg.ends_with(b"\n") {
        let _ = err.write_all(b"\n");
    }
}

/// Keeps an invocation registered for [`log`] while it lives.
pub(crate) struct Registration {
    chan: Arc<Mutex<Channel>>,
    id: InvocationId,
    thread: ThreadId,
}

impl Registration {
    /// Registers invocation `id` on `chan` for the calling thread.
    pub(crate) fn new(chan: &Arc<Mutex<Channel>>, id: InvocationId) -> Self {
        let thread = std::thread::current().id();
        lock(&ACTIVE).push(Active {
            thread,
            chan: Arc::clone(chan),
            id,
        });
        Registration {
            chan: Arc::clone(chan),
            id,
            thread,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut active = lock(&ACTIVE);
        if let Some(i) = active.iter().rposition(|a| {
            a.thread == self.thread && a.id == self.id && Arc::ptr_eq(&a.chan, &self.chan)
        }) {
            active.remove(i);
        }
    }
}
