//! [`Ticket`]: a request waiting in a scheduler's queue for a placement.
//!
//! ```text
//! Scheduler::schedule_queued ──▶ Admission::Queued(Ticket) ── caller waits (.await / wait_timeout)
//!        │ keeps the TicketSender                                  ▲
//!        └── a slot frees up ── TicketSender::send(Ok(placement)) ─┘
//! ```
//!
//! A ticket is resolved exactly once. If the caller gives up (drops the
//! ticket, times out) the sender learns it and keeps its slot; if the caller
//! drops a ticket that already holds a placement, the placement is handed to
//! the `on_abandon` hook given at creation, so a slot can never leak.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::scheduler::ScheduleError;
use crate::types::Placement;

/// What the scheduler calls when a fulfilled ticket is dropped unread: it
/// must release the placement (as `Outcome::Cancelled`).
pub type AbandonHook = Box<dyn FnOnce(Placement) + Send>;

enum State {
    Waiting(Option<Waker>),
    Done(Result<Placement, ScheduleError>),
    Taken,
    Abandoned,
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
    on_abandon: Mutex<Option<AbandonHook>>,
    /// The error a waiter gets when it stops waiting on its own.
    timeout_error: ScheduleError,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a plain enum; a panic elsewhere cannot leave it torn.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The waiting side of a queued request. Await it, or call
/// [`Ticket::wait_timeout`] / [`Ticket::try_take`].
#[must_use = "a queued request holds a place in the queue until its ticket is dropped"]
pub struct Ticket {
    shared: Arc<Shared>,
}

/// The scheduler's side of a [`Ticket`].
pub struct TicketSender {
    shared: Arc<Shared>,
}

/// A connected [`Ticket`] and [`TicketSender`].
///
/// `timeout_error` is what [`Ticket::wait_timeout`] returns when the wait
/// ends without an answer; `on_abandon` receives a placement that was sent
/// to a ticket dropped before reading it.
pub fn ticket(timeout_error: ScheduleError, on_abandon: AbandonHook) -> (Ticket, TicketSender) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::Waiting(None)),
        ready: Condvar::new(),
        on_abandon: Mutex::new(Some(on_abandon)),
        timeout_error,
    });
    (
        Ticket {
            shared: shared.clone(),
        },
        TicketSender { shared },
    )
}

impl TicketSender {
    /// Resolves the ticket.
    ///
    /// # Errors
    ///
    /// The answer comes back when the waiter has already given up: a
    /// placement in it is still the caller's to use or release.
    pub fn send(
        self,
        answer: Result<Placement, ScheduleError>,
    ) -> Result<(), Result<Placement, ScheduleError>> {
        let mut st = self.shared.lock();
        match std::mem::replace(&mut *st, State::Taken) {
            State::Waiting(waker) => {
                *st = State::Done(answer);
                drop(st);
                self.shared.ready.notify_all();
                if let Some(w) = waker {
                    w.wake();
                }
                Ok(())
            }
            other => {
                *st = other;
                Err(answer)
            }
        }
    }

    /// Whether the waiter has given up (the sender can drop this ticket).
    pub fn is_abandoned(&self) -> bool {
        matches!(*self.shared.lock(), State::Abandoned)
    }
}

impl Ticket {
    /// The answer if it has arrived; `None` while still waiting (or after
    /// the answer was taken).
    pub fn try_take(&mut self) -> Option<Result<Placement, ScheduleError>> {
        let mut st = self.shared.lock();
        match std::mem::replace(&mut *st, State::Taken) {
            State::Done(r) => Some(r),
            other => {
                *st = other;
                None
            }
        }
    }

    /// Blocks until the answer arrives or `timeout` passes.
    ///
    /// # Errors
    ///
    /// The scheduler's refusal, or on timeout the error given at creation
    /// (the request leaves the queue).
    pub fn wait_timeout(self, timeout: Duration) -> Result<Placement, ScheduleError> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let State::Done(_) = &*st
                && let State::Done(r) = std::mem::replace(&mut *st, State::Taken)
            {
                return r;
            }
            let now = Instant::now();
            if now >= deadline {
                *st = State::Abandoned;
                return Err(self.shared.timeout_error.clone());
            }
            st = self
                .shared
                .ready
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Leaves the queue. A placement that arrived in the meantime is
    /// returned: the caller owns it (use it or release it).
    pub fn cancel(self) -> Option<Placement> {
        let mut st = self.shared.lock();
        match std::mem::replace(&mut *st, State::Abandoned) {
            State::Done(Ok(p)) => Some(p),
            _ => None,
        }
    }
}

impl Future for Ticket {
    type Output = Result<Placement, ScheduleError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.shared.lock();
        match std::mem::replace(&mut *st, State::Taken) {
            State::Done(r) => Poll::Ready(r),
            State::Waiting(_) => {
                *st = State::Waiting(Some(cx.waker().clone()));
                Poll::Pending
            }
            // Polled after completion (or cancelled): never resolves again.
            other => {
                *st = other;
                Poll::Pending
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        let unread = match std::mem::replace(&mut *st, State::Abandoned) {
            State::Done(Ok(p)) => Some(p),
            State::Taken => {
                *st = State::Taken;
                None
            }
            _ => None,
        };
        drop(st);
        if let Some(p) = unread {
            let hook = self
                .shared
                .on_abandon
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(hook) = hook {
                hook(p);
            }
        }
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = match &*self.shared.lock() {
            State::Waiting(_) => "waiting",
            State::Done(_) => "done",
            State::Taken => "taken",
            State::Abandoned => "abandoned",
        };
        f.debug_struct("Ticket").field("state", &st).finish()
    }
}

impl std::fmt::Debug for TicketSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketSender")
            .field("abandoned", &self.is_abandoned())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::types::NodeId;

    fn p() -> Placement {
        Placement {
            node: NodeId("n".into()),
            slot: 7,
            function: "f".into(),
        }
    }

    fn err() -> ScheduleError {
        ScheduleError::OverLimit {
            function: "f".into(),
            limit: 1,
            retry_after: Duration::from_millis(5),
        }
    }

    fn counting() -> (Arc<AtomicU32>, AbandonHook) {
        let n = Arc::new(AtomicU32::new(0));
        let m = n.clone();
        (
            n,
            Box::new(move |_| {
                m.fetch_add(1, Ordering::SeqCst);
            }),
        )
    }

    #[test]
    fn sent_placement_is_received_once() {
        let (abandoned, hook) = counting();
        let (t, s) = ticket(err(), hook);
        s.send(Ok(p())).unwrap();
        assert_eq!(t.wait_timeout(Duration::from_secs(1)), Ok(p()));
        assert_eq!(abandoned.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn timeout_returns_the_placement_to_the_sender() {
        let (abandoned, hook) = counting();
        let (t, s) = ticket(err(), hook);
        assert_eq!(t.wait_timeout(Duration::from_millis(1)), Err(err()));
        assert_eq!(s.send(Ok(p())), Err(Ok(p())));
        assert_eq!(abandoned.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn dropping_an_unread_placement_calls_the_hook() {
        let (abandoned, hook) = counting();
        let (t, s) = ticket(err(), hook);
        s.send(Ok(p())).unwrap();
        drop(t);
        assert_eq!(abandoned.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn cancel_hands_over_an_arrived_placement() {
        let (abandoned, hook) = counting();
        let (t, s) = ticket(err(), hook);
        s.send(Ok(p())).unwrap();
        assert_eq!(t.cancel(), Some(p()));
        assert_eq!(abandoned.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn waiter_wakes_from_another_thread() {
        let (_, hook) = counting();
        let (t, s) = ticket(err(), hook);
        let h = std::thread::spawn(move || t.wait_timeout(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(5));
        s.send(Ok(p())).unwrap();
        assert_eq!(h.join().unwrap(), Ok(p()));
    }
}
