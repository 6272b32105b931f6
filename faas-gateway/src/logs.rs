//! Per-invocation log capture on the node: what an instance writes while it
//! serves a request, bounded, attributed to that request.
//!
//! ```text
//! instance stdout ─pipe─┐
//! instance stderr ─pipe─┼─▶ InstanceOutput ── LogBuf (≤ MAX_INVOCATION_LOGS) ─▶ InvocationResult::logs
//! Log frames (fd 3) ────┘        │
//!                                └─ stderr lines ─▶ node's stderr, "[invocation ID] line"
//! ```
//!
//! A pump task reads both pipes while the instance lives. When the answer of
//! a request arrives, [`InstanceOutput::finish`] reads what is left in the
//! pipes without waiting: whatever the instance wrote before it sent its
//! answer is in the pipe by then, so it is attributed to that request, and
//! nothing written after it is. Output written before the first request
//! (start-up) belongs to the first one.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use faas_core::{InvocationId, Stdio};
use parking_lot::Mutex;
use tokio::net::unix::pipe;

/// The most bytes of output kept per invocation; beyond it the log ends
/// with a `[truncated]` line.
pub const MAX_INVOCATION_LOGS: usize = 64 * 1024;

const TRUNCATED: &str = "[truncated]\n";

/// Read size of the pump.
const CHUNK: usize = 16 * 1024;

/// The bounded log of one invocation.
#[derive(Debug, Default)]
pub(crate) struct LogBuf {
    text: Vec<u8>,
    truncated: bool,
}

impl LogBuf {
    /// Appends `bytes`, up to the bound; returns how many were kept.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> usize {
        if self.truncated {
            return 0;
        }
        let room = MAX_INVOCATION_LOGS - self.text.len();
        let n = bytes.len().min(room);
        self.text.extend_from_slice(&bytes[..n]);
        if n < bytes.len() {
            self.truncated = true;
        }
        n
    }

    /// Appends `bytes` as one line (a newline is added when missing).
    pub(crate) fn push_line(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.push(bytes);
        if !bytes.ends_with(b"\n") {
            self.push(b"\n");
        }
    }

    /// The log as text (invalid UTF-8 replaced), with the `[truncated]`
    /// marker when bytes were dropped; empties the buffer.
    pub(crate) fn take(&mut self) -> String {
        let bytes = std::mem::take(&mut self.text);
        let mut s = match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        if std::mem::take(&mut self.truncated) {
            if !s.is_empty() && !s.ends_with('\n') {
                s.push('\n');
            }
            s.push_str(TRUNCATED);
        }
        s
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

struct State {
    buf: LogBuf,
    /// The request the instance is serving (for the forwarded lines' prefix).
    serving: Option<InvocationId>,
    /// A partial stderr line not forwarded yet.
    partial: Vec<u8>,
}

struct Shared {
    /// Read ends, non-blocking. Read with read(2) directly (not through
    /// tokio's readiness cache) so that `finish` sees everything in the
    /// pipe.
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    state: Mutex<State>,
    /// Forward stderr to the node's stderr.
    forward: bool,
    instance: String,
    /// The pipes' write ends until the instance is launched.
    writers: Mutex<Option<(OwnedFd, OwnedFd)>>,
}

/// The stdout and stderr pipes of one instance and the log of the request
/// it serves. Dropping it stops the pump.
pub(crate) struct InstanceOutput {
    shared: Arc<Shared>,
    pump: tokio::task::JoinHandle<()>,
}

impl Drop for InstanceOutput {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl InstanceOutput {
    /// Pipes for the instance `instance`; `forward`: copy its stderr to the
    /// node's stderr, each line prefixed with the invocation id. Must be
    /// called inside a tokio runtime.
    pub(crate) fn new(instance: &str, forward: bool) -> io::Result<Self> {
        let (out_r, out_w) = io::pipe()?;
        let (err_r, err_w) = io::pipe()?;
        let reader = |r: io::PipeReader| pipe::Receiver::from_owned_fd(OwnedFd::from(r));
        let shared = Arc::new(Shared {
            stdout: reader(out_r)?,
            stderr: reader(err_r)?,
            state: Mutex::new(State {
                buf: LogBuf::default(),
                serving: None,
                partial: Vec::new(),
            }),
            forward,
            instance: instance.to_owned(),
            writers: Mutex::new(Some((OwnedFd::from(out_w), OwnedFd::from(err_w)))),
        });
        let pump = tokio::spawn(pump(shared.clone()));
        Ok(InstanceOutput { shared, pump })
    }

    /// The instance's stdout and stderr (fresh duplicates of the write
    /// ends).
    pub(crate) fn stdio(&self) -> io::Result<(Stdio, Stdio)> {
        let w = self.shared.writers.lock();
        match &*w {
            Some((out, err)) => Ok((Stdio::Fd(out.try_clone()?), Stdio::Fd(err.try_clone()?))),
            None => Err(io::Error::other("the instance's log pipes are closed")),
        }
    }

    /// The instance is launched: close our write ends, so the pipes end
    /// when the instance does.
    pub(crate) fn launched(&self) {
        self.shared.writers.lock().take();
    }

    /// The instance starts serving `id`.
    pub(crate) fn begin(&self, id: InvocationId) {
        self.shared.state.lock().serving = Some(id);
    }

    /// A `Log` frame of the request being served.
    pub(crate) fn frame(&self, bytes: &[u8]) {
        self.shared.state.lock().buf.push_line(bytes);
    }

    /// The request's answer arrived (or it failed): reads what the
    /// instance wrote until now and returns the request's log.
    pub(crate) fn finish(&self) -> String {
        // Bounded: an instance that keeps writing cannot hold us here.
        for _ in 0..8 {
            let (out, err) = self.shared.waiting();
            let a = if out {
                self.shared.read(Stream::Stdout)
            } else {
                Read::Empty
            };
            let b = if err {
                self.shared.read(Stream::Stderr)
            } else {
                Read::Empty
            };
            if a != Read::More && b != Read::More {
                break;
            }
        }
        let mut st = self.shared.state.lock();
        if !st.partial.is_empty() {
            let line = std::mem::take(&mut st.partial);
            self.shared.forward_line(st.serving, &line);
        }
        st.serving = None;
        st.buf.take()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Read a full chunk: there may be more.
    More,
    /// Nothing more for now.
    Empty,
    /// End of the pipe, or it failed.
    Closed,
}

impl Shared {
    /// Which pipes have data (or their end) waiting now, asked of the
    /// kernel in one `poll` (most requests write nothing: no read then);
    /// both when it cannot tell.
    fn waiting(&self) -> (bool, bool) {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let mut fds = [
            PollFd::new(&self.stdout, PollFlags::IN),
            PollFd::new(&self.stderr, PollFlags::IN),
        ];
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match poll(&mut fds, Some(&now)) {
            Ok(_) => {
                let set = |f: &PollFd<'_>| !f.revents().is_empty();
                (set(&fds[0]), set(&fds[1]))
            }
            Err(_) => (true, true),
        }
    }

    /// Reads what is in one pipe now (without waiting), at most a few
    /// chunks, into the current log.
    fn read(&self, which: Stream) -> Read {
        let rx = match which {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        };
        let mut chunk = [0u8; CHUNK];
        let mut st = self.state.lock();
        for _ in 0..4 {
            match rustix::io::read(rx, &mut chunk) {
                Ok(0) => return Read::Closed,
                Ok(n) => {
                    let kept = st.buf.push(&chunk[..n]);
                    if which == Stream::Stderr && self.forward {
                        self.forward(&mut st, &chunk[..kept], kept < n);
                    }
                    if n < CHUNK {
                        return Read::Empty;
                    }
                }
                Err(rustix::io::Errno::AGAIN) => return Read::Empty,
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return Read::Closed,
            }
        }
        Read::More
    }

    /// Copies complete stderr lines to the node's stderr.
    fn forward(&self, st: &mut State, bytes: &[u8], truncated: bool) {
        st.partial.extend_from_slice(bytes);
        while let Some(i) = st.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = st.partial.drain(..=i).collect();
            self.forward_line(st.serving, &line[..i]);
        }
        if truncated {
            let line = std::mem::take(&mut st.partial);
            if !line.is_empty() {
                self.forward_line(st.serving, &line);
            }
            self.forward_line(st.serving, TRUNCATED.trim_end().as_bytes());
        }
    }

    fn forward_line(&self, serving: Option<InvocationId>, line: &[u8]) {
        let mut out = Vec::with_capacity(line.len() + 40);
        match serving {
            Some(id) => {
                let _ = write!(out, "[invocation {id}] ");
            }
            None => {
                let _ = write!(out, "[instance {}] ", self.instance);
            }
        }
        out.extend_from_slice(line);
        out.push(b'\n');
        let _ = io::stderr().lock().write_all(&out);
    }
}

/// Reads both pipes as data arrives, until both end.
async fn pump(shared: Arc<Shared>) {
    let (mut out_open, mut err_open) = (true, true);
    // Reads once the pipe is readable; an empty read clears tokio's
    // readiness (through `try_io`) so the next wait sleeps.
    let step = |ready: io::Result<()>, which: Stream| {
        let rx = match which {
            Stream::Stdout => &shared.stdout,
            Stream::Stderr => &shared.stderr,
        };
        ready.is_ok()
            && !matches!(
                rx.try_io(|| match shared.read(which) {
                    Read::Empty => Err(io::ErrorKind::WouldBlock.into()),
                    r => Ok(r),
                }),
                Ok(Read::Closed)
            )
    };
    while out_open || err_open {
        tokio::select! {
            r = shared.stdout.readable(), if out_open => out_open = step(r, Stream::Stdout),
            r = shared.stderr.readable(), if err_open => err_open = step(r, Stream::Stderr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_is_bounded_with_a_marker() {
        let mut b = LogBuf::default();
        b.push_line(b"first");
        assert_eq!(b.take(), "first\n");
        let big = vec![b'x'; MAX_INVOCATION_LOGS + 10];
        b.push_line(b"start");
        assert_eq!(b.push(&big), MAX_INVOCATION_LOGS - 6);
        b.push_line(b"after");
        let s = b.take();
        assert!(s.starts_with("start\nxxx"));
        assert!(s.ends_with("x\n[truncated]\n"), "{}", &s[s.len() - 20..]);
        assert_eq!(s.len(), MAX_INVOCATION_LOGS + 1 + TRUNCATED.len());
        // Taken: the next invocation starts empty and untruncated.
        b.push(b"\xffok");
        assert_eq!(b.take(), "\u{fffd}ok");
    }

    #[tokio::test]
    async fn output_written_before_finish_belongs_to_the_request() {
        let out = InstanceOutput::new("t", false).unwrap();
        let (Stdio::Fd(o), Stdio::Fd(e)) = out.stdio().unwrap() else {
            panic!("not fds");
        };
        out.launched();
        out.begin(InvocationId(1));
        let (mut o, mut e) = (std::fs::File::from(o), std::fs::File::from(e));
        o.write_all(b"to stdout\n").unwrap();
        out.frame(b"a log frame");
        e.write_all(&vec![b'z'; 3 * CHUNK]).unwrap();
        let log = out.finish();
        assert!(log.contains("to stdout\n"), "{log}");
        assert!(log.contains("a log frame\n"));
        assert_eq!(log.bytes().filter(|&b| b == b'z').count(), 3 * CHUNK);
        o.write_all(b"next\n").unwrap();
        assert_eq!(out.finish(), "next\n");
    }
}
