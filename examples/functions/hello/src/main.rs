//! `hello`: the smallest useful faas function.
//!
//! Answers every request with `200 OK`, `content-type: text/plain`, and a
//! body that says which process on which host served it, followed by the
//! request body:
//!
//! ```text
//! hello from pid 1234 on host node-1: <request body>
//! ```
//!
//! The pid shows whether requests share an instance (`keep_alive`) or each
//! get a fresh one (`per_request`); the host shows the instance's UTS
//! namespace. Built as a static binary, it is carried inside the `faas`
//! binary for `faas demo`.

use faas_guest::{Request, Response};

fn main() {
    faas_guest::serve(hello)
}

/// The handler: the greeting, then the request body as it came.
fn hello(req: Request) -> Response {
    let uname = rustix::system::uname();
    let host = uname.nodename().to_string_lossy();
    let mut body = format!("hello from pid {} on host {host}: ", std::process::id()).into_bytes();
    body.extend_from_slice(req.body());
    Response::ok(body).header("content-type", "text/plain; charset=utf-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greets_with_pid_host_and_the_request_body() {
        let resp = hello(Request::new("world"));
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers(),
            [(
                "content-type".to_owned(),
                "text/plain; charset=utf-8".to_owned()
            )]
        );
        let body = String::from_utf8(resp.body().to_vec()).unwrap();
        let prefix = format!("hello from pid {} on host ", std::process::id());
        assert!(body.starts_with(&prefix), "{body}");
        assert!(body.ends_with(": world"), "{body}");
        let host = &body[prefix.len()..body.len() - ": world".len()];
        assert!(!host.is_empty(), "{body}");
    }

    #[test]
    fn echoes_binary_bodies_unchanged() {
        let resp = hello(Request::new(vec![0u8, 255, 10]));
        assert!(resp.body().ends_with(&[b':', b' ', 0, 255, 10]));
    }
}
