//! The request loop driven in-process over a socket pair: the test plays the
//! node gateway on one end, `serve_on` runs on the other in a thread.

use std::thread::{self, JoinHandle};
use std::time::Duration;

use faas_core::protocol::{Body, Channel, DecodeLimits, Frame, FrameKind, LogStream, channel_pair};
use faas_core::{InvocationId, UnixMillis};

use super::*;

/// The gateway's end of the channel, and the loop running on the other.
fn start<F>(mode: ReuseMode, handler: F) -> (Channel, JoinHandle<Result<(), ServeError>>)
where
    F: FnMut(Request) -> Response + Send + 'static,
{
    let (gw, guest) = channel_pair().unwrap();
    let guest = Channel::new(guest, DecodeLimits::default());
    let loop_ = thread::spawn(move || serve_on(guest, mode, handler));
    (Channel::new(gw, DecodeLimits::default()), loop_)
}

fn expect_ready(gw: &mut Channel) {
    match gw.recv().unwrap() {
        Some(Frame::Ready { snapshot: false }) => {}
        other => panic!("expected Ready, got {other:?}"),
    }
}

fn send_invoke(gw: &mut Channel, id: u64, headers: &[(&str, &str)], body: Vec<u8>) {
    gw.send(&Frame::Invoke {
        id: InvocationId(id),
        deadline: UnixMillis::now().after(Duration::from_secs(30)),
        trace_id: format!("trace-{id}"),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        body: Body::new(body).unwrap(),
    })
    .unwrap();
}

fn echo(req: Request) -> Response {
    Response::ok(req.into_body())
}

#[test]
fn request_round_trips_with_headers_status_and_log() {
    let (mut gw, loop_) = start(ReuseMode::PerRequest, |req: Request| {
        crate::log(format!("handling {}", req.id()));
        let who = req.header("x-name").unwrap_or("nobody").to_owned();
        let body = format!(
            "{who} sent {:?} in {} with {}s left",
            String::from_utf8_lossy(req.body()),
            req.trace_id(),
            req.remaining().as_secs().min(99)
        );
        Response::with_status(201, body)
            .header("content-type", "text/plain")
            .header("x-echo", who)
    });
    expect_ready(&mut gw);
    send_invoke(&mut gw, 7, &[("X-Name", "alice")], b"ping".to_vec());

    match gw.recv().unwrap() {
        Some(Frame::Log { id, stream, body }) => {
            assert_eq!(id, InvocationId(7));
            assert_eq!(stream, LogStream::Log);
            assert_eq!(body.into_vec().unwrap(), b"handling 0000000000000007");
        }
        other => panic!("expected Log, got {other:?}"),
    }
    match gw.recv().unwrap() {
        Some(Frame::Result {
            id,
            status,
            headers,
            body,
            // per_request: no next request.
            ready: false,
        }) => {
            assert_eq!(id, InvocationId(7));
            assert_eq!(status, 201);
            assert_eq!(
                headers,
                vec![
                    ("content-type".to_owned(), "text/plain".to_owned()),
                    ("x-echo".to_owned(), "alice".to_owned()),
                ]
            );
            let body = String::from_utf8(body.into_vec().unwrap()).unwrap();
            let left: u64 = body
                .strip_prefix("alice sent \"ping\" in trace-7 with ")
                .and_then(|rest| rest.strip_suffix("s left"))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected body {body:?}"));
            assert!((25..=30).contains(&left), "{body}");
        }
        other => panic!("expected Result, got {other:?}"),
    }
    loop_.join().unwrap().unwrap();
    // per_request: the loop is done and its end of the channel is closed.
    assert!(gw.recv().unwrap().is_none());
}

#[test]
fn large_response_arrives_as_memfd_and_small_one_inline() {
    let (mut gw, loop_) = start(ReuseMode::KeepAlive, echo);
    let big: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i * 7 % 251) as u8).collect();
    expect_ready(&mut gw);
    send_invoke(&mut gw, 1, &[], big.clone());
    match gw.recv().unwrap() {
        Some(Frame::Result {
            body: Body::Memfd(m),
            status: 200,
            ready: true,
            ..
        }) => {
            assert_eq!(m.len(), big.len() as u64);
            assert!(m.read_all().unwrap() == big, "memfd body differs");
        }
        other => panic!("expected a memfd Result, got {other:?}"),
    }

    // Kept alive: the answer said the next request may come, no `Ready`.
    let edge = vec![b'x'; 64 * 1024];
    send_invoke(&mut gw, 2, &[], edge.clone());
    match gw.recv().unwrap() {
        Some(Frame::Result {
            body: Body::Inline(b),
            ..
        }) => assert_eq!(b, edge),
        other => panic!("expected an inline Result, got {other:?}"),
    }
    drop(gw);
    loop_.join().unwrap().unwrap();
}

#[test]
fn panicking_handler_produces_error_frame_and_the_instance_goes_on() {
    let (mut gw, loop_) = start(ReuseMode::KeepAlive, |req: Request| {
        if req.body() == b"boom" {
            panic!("boom number {}", 42);
        }
        if req.body() == b"static" {
            panic!("a static message");
        }
        Response::ok("fine")
    });
    expect_ready(&mut gw);
    for (id, body, want) in [
        (1, "boom", "boom number 42"),
        (2, "static", "a static message"),
    ] {
        send_invoke(&mut gw, id, &[], body.into());
        match gw.recv().unwrap() {
            Some(Frame::Error {
                id: got,
                status,
                message,
                ready: true,
            }) => {
                assert_eq!(got, InvocationId(id));
                assert_eq!(status, 500);
                assert_eq!(message, want);
            }
            other => panic!("expected Error, got {other:?}"),
        }
    }
    send_invoke(&mut gw, 3, &[], b"ok".to_vec());
    match gw.recv().unwrap() {
        Some(Frame::Result { status: 200, .. }) => {}
        other => panic!("expected Result after the panics, got {other:?}"),
    }
    drop(gw);
    loop_.join().unwrap().unwrap();
}

#[test]
fn keep_alive_serves_three_requests_then_returns_when_peer_closes() {
    let mut seen = 0u32;
    let (mut gw, loop_) = start(ReuseMode::KeepAlive, move |req: Request| {
        seen += 1;
        Response::ok(format!("{seen}:{}", String::from_utf8_lossy(req.body())))
    });
    // One `Ready`; then each answer says the next request may come.
    expect_ready(&mut gw);
    for id in 1..=3u64 {
        send_invoke(&mut gw, id, &[], format!("r{id}").into_bytes());
        match gw.recv().unwrap() {
            Some(Frame::Result {
                id: got,
                body,
                ready: true,
                ..
            }) => {
                assert_eq!(got, InvocationId(id));
                assert_eq!(body.into_vec().unwrap(), format!("{id}:r{id}").as_bytes());
            }
            other => panic!("expected Result, got {other:?}"),
        }
    }
    // The loop waits for a fourth request; the gateway closes instead.
    drop(gw);
    loop_.join().unwrap().unwrap();
}

#[test]
fn keep_alive_returns_when_peer_closes_between_requests() {
    let (mut gw, loop_) = start(ReuseMode::KeepAlive, echo);
    expect_ready(&mut gw);
    send_invoke(&mut gw, 1, &[], b"x".to_vec());
    assert_eq!(gw.recv().unwrap().unwrap().kind(), FrameKind::Result);
    drop(gw); // the wait for the next request meets a closed socket: a clean end
    loop_.join().unwrap().unwrap();
}

#[test]
fn peer_closing_before_a_request_is_a_clean_end() {
    let (mut gw, loop_) = start(ReuseMode::PerRequest, echo);
    expect_ready(&mut gw);
    drop(gw);
    loop_.join().unwrap().unwrap();
}

#[test]
fn unexpected_frame_from_gateway_is_a_protocol_error() {
    let (mut gw, loop_) = start(ReuseMode::PerRequest, echo);
    expect_ready(&mut gw);
    gw.send(&Frame::Result {
        id: InvocationId(9),
        status: 200,
        headers: Vec::new(),
        body: Body::Inline(Vec::new()),
        ready: false,
    })
    .unwrap();
    match loop_.join().unwrap() {
        Err(ServeError::UnexpectedFrame { kind, id }) => {
            assert_eq!(kind, FrameKind::Result);
            assert_eq!(id, InvocationId(9));
        }
        other => panic!("expected UnexpectedFrame, got {other:?}"),
    }
}

#[test]
fn malformed_frame_from_gateway_is_a_protocol_error() {
    let (mut gw, loop_) = start(ReuseMode::PerRequest, echo);
    expect_ready(&mut gw);
    rustix::net::send(
        gw.as_fd(),
        b"not a frame at all, no",
        rustix::net::SendFlags::empty(),
    )
    .unwrap();
    let err = loop_.join().unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            ServeError::Recv {
                source: ProtocolError::Short { len: 22 }
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("receiving from the gateway: "),
        "{err}"
    );
}

#[test]
fn unsendable_responses_become_error_frames() {
    let (mut gw, loop_) = start(ReuseMode::KeepAlive, |req: Request| match req.body() {
        b"status" => Response::with_status(42, "bad status"),
        _ => (0..300).fold(Response::ok("many headers"), |r, i| {
            r.header(format!("x-{i}"), "v")
        }),
    });
    expect_ready(&mut gw);
    for (body, want) in [
        ("status", "status 42, outside 100..=999"),
        ("headers", "cannot be sent: headers is too long"),
    ] {
        send_invoke(&mut gw, 5, &[], body.into());
        match gw.recv().unwrap() {
            Some(Frame::Error {
                status: 500,
                message,
                ready: true,
                ..
            }) => assert!(message.contains(want), "{message}"),
            other => panic!("expected Error, got {other:?}"),
        }
    }
    drop(gw);
    loop_.join().unwrap().unwrap();
}

#[test]
fn large_request_body_reaches_the_handler() {
    let (mut gw, loop_) = start(ReuseMode::PerRequest, |req: Request| {
        Response::ok(req.body().len().to_string())
    });
    expect_ready(&mut gw);
    send_invoke(&mut gw, 1, &[], vec![3u8; 300 * 1024]);
    match gw.recv().unwrap() {
        Some(Frame::Result { body, .. }) => {
            assert_eq!(body.into_vec().unwrap(), b"307200");
        }
        other => panic!("expected Result, got {other:?}"),
    }
    loop_.join().unwrap().unwrap();
}

#[test]
fn snapshot_ready_then_the_pulled_request_is_served_without_another_ready() {
    let (gw, guest) = channel_pair().unwrap();
    let mut gw = Channel::new(gw, DecodeLimits::default());
    let mut guest = Channel::new(guest, DecodeLimits::default());
    let loop_ = thread::spawn(move || {
        let pending = ready_then_recv(&mut guest, true)?;
        run(guest, Some(pending), ReuseMode::PerRequest, echo)
    });
    match gw.recv().unwrap() {
        Some(Frame::Ready { snapshot: true }) => {}
        other => panic!("expected Ready at the snapshot point, got {other:?}"),
    }
    send_invoke(&mut gw, 4, &[], b"after restore".to_vec());
    match gw.recv().unwrap() {
        Some(Frame::Result { id, body, .. }) => {
            assert_eq!(id, InvocationId(4));
            assert_eq!(body.into_vec().unwrap(), b"after restore");
        }
        other => panic!("expected Result (no second Ready), got {other:?}"),
    }
    loop_.join().unwrap().unwrap();
}

#[test]
fn log_outside_an_invocation_does_not_block_or_panic() {
    crate::log("nobody is listening");
}

#[test]
fn reuse_mode_parses_the_gateway_values() {
    assert_eq!("per_request".parse(), Ok(ReuseMode::PerRequest));
    assert_eq!("".parse(), Ok(ReuseMode::PerRequest));
    assert_eq!("keep_alive".parse(), Ok(ReuseMode::KeepAlive));
    let err = "forever".parse::<ReuseMode>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "FAAS_REUSE=\"forever\": expected per_request or keep_alive"
    );
    for mode in [ReuseMode::PerRequest, ReuseMode::KeepAlive] {
        assert_eq!(mode.as_str().parse(), Ok(mode));
    }
}
