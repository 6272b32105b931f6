//! `cpu`: a function that does a measurable amount of computation.
//!
//! The request body is a decimal number `N` (surrounding whitespace is
//! ignored; an empty body means [`DEFAULT_N`]). The function counts the
//! primes below `N` with a segmented sieve of Eratosthenes (time grows
//! about linearly with `N`, memory stays at one 64 KiB segment plus the
//! primes below √N) and answers `200 OK` with JSON:
//!
//! ```text
//! {"n":100000,"result":9592,"elapsed_us":412}
//! ```
//!
//! `result` is the number of primes below `N` (so it can be checked), and
//! `elapsed_us` the time the count took inside the function. A body that is
//! not a number, or a number above [`MAX_N`], is answered with `400` and a
//! one-line message. If the request's deadline passes while counting, the
//! function stops and answers `504` with JSON naming how far it got.

use std::time::Instant;

use faas_guest::{Request, Response};

/// `N` when the request body is empty.
const DEFAULT_N: u64 = 100_000;
/// The largest `N` accepted (about 10–20 s of work on one core).
const MAX_N: u64 = 10_000_000_000;
/// Numbers sieved per segment: small enough to stay in the L2 cache.
const SEGMENT: u64 = 64 * 1024;

fn main() {
    faas_guest::serve(cpu)
}

/// The handler.
fn cpu(req: Request) -> Response {
    let n = match parse_n(req.body()) {
        Ok(n) => n,
        Err(message) => {
            return Response::with_status(400, message + "\n")
                .header("content-type", "text/plain; charset=utf-8");
        }
    };
    let started = Instant::now();
    let outcome = count_primes_below(n, || !req.remaining().is_zero());
    let elapsed_us = started.elapsed().as_micros();
    let (status, body) = match outcome {
        Ok(count) => (
            200,
            format!(r#"{{"n":{n},"result":{count},"elapsed_us":{elapsed_us}}}"#),
        ),
        Err(reached) => (
            504,
            format!(
                r#"{{"n":{n},"error":"deadline reached","counted_below":{reached},"elapsed_us":{elapsed_us}}}"#
            ),
        ),
    };
    Response::with_status(status, body).header("content-type", "application/json")
}

/// `N` from the request body.
fn parse_n(body: &[u8]) -> Result<u64, String> {
    let text = std::str::from_utf8(body)
        .map_err(|_| "cpu: the request body must be a decimal number, got non-UTF-8 bytes")?
        .trim();
    if text.is_empty() {
        return Ok(DEFAULT_N);
    }
    match text.parse::<u64>() {
        Ok(n) if n <= MAX_N => Ok(n),
        Ok(n) => Err(format!("cpu: N = {n} is above the limit of {MAX_N}")),
        Err(_) => Err(format!(
            "cpu: the request body must be a decimal number (N, at most {MAX_N}), got {:?}",
            text.chars().take(64).collect::<String>()
        )),
    }
}

/// Counts the primes below `n` with a segmented sieve. Before each segment
/// it asks `keep_going`; when that says no, returns `Err` with the bound
/// counted so far.
fn count_primes_below(n: u64, mut keep_going: impl FnMut() -> bool) -> Result<u64, u64> {
    if n <= 2 {
        return Ok(0);
    }
    let base = primes_up_to((n - 1).isqrt());
    let mut segment = vec![true; SEGMENT as usize];
    let mut count = 0u64;
    let mut low = 0u64;
    while low < n {
        if !keep_going() {
            return Err(low);
        }
        let high = (low + SEGMENT).min(n);
        let seg = &mut segment[..(high - low) as usize];
        seg.fill(true);
        for &p in &base {
            if p * p >= high {
                break;
            }
            let mut multiple = (p * p).max(low.div_ceil(p) * p);
            while multiple < high {
                seg[(multiple - low) as usize] = false;
                multiple += p;
            }
        }
        if low == 0 {
            // 0 and 1 are not primes (n > 2 here, so both are in range).
            seg[0] = false;
            seg[1] = false;
        }
        count += seg.iter().filter(|&&is_prime| is_prime).count() as u64;
        low = high;
    }
    Ok(count)
}

/// The primes `<= limit`, by a plain sieve (`limit` is at most √[`MAX_N`]).
fn primes_up_to(limit: u64) -> Vec<u64> {
    let limit = limit as usize;
    let mut is_prime = vec![true; limit + 1];
    let mut primes = Vec::new();
    for i in 2..=limit {
        if is_prime[i] {
            primes.push(i as u64);
            let mut j = i * i;
            while j <= limit {
                is_prime[j] = false;
                j += i;
            }
        }
    }
    primes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(n: u64) -> u64 {
        (2..n)
            .filter(|&k| (2..k).take_while(|d| d * d <= k).all(|d| k % d != 0))
            .count() as u64
    }

    #[test]
    fn counts_known_prime_numbers() {
        for (n, pi) in [
            (0, 0),
            (2, 0),
            (3, 1),
            (10, 4),
            (100, 25),
            (100_000, 9592),
            (1_000_000, 78_498),
        ] {
            assert_eq!(count_primes_below(n, || true), Ok(pi), "n = {n}");
        }
    }

    #[test]
    fn agrees_with_trial_division_across_segment_edges() {
        for n in [
            SEGMENT - 1,
            SEGMENT,
            SEGMENT + 1,
            2 * SEGMENT + 3,
            3 * SEGMENT - 7,
        ] {
            assert_eq!(count_primes_below(n, || true), Ok(naive(n)), "n = {n}");
        }
    }

    #[test]
    fn answers_json_with_n_result_and_elapsed() {
        let resp = cpu(Request::new(" 100000\n"));
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers(),
            [("content-type".to_owned(), "application/json".to_owned())]
        );
        let body = String::from_utf8(resp.body().to_vec()).unwrap();
        assert!(
            body.starts_with(r#"{"n":100000,"result":9592,"elapsed_us":"#),
            "{body}"
        );
        assert!(body.ends_with('}'), "{body}");
    }

    #[test]
    fn empty_body_means_the_default() {
        let body = String::from_utf8(cpu(Request::new("")).body().to_vec()).unwrap();
        assert!(body.starts_with(r#"{"n":100000,"result":9592,"#), "{body}");
    }

    #[test]
    fn invalid_bodies_are_400_with_a_message() {
        for (body, want) in [
            (&b"lots"[..], "must be a decimal number"),
            (b"-5", "must be a decimal number"),
            (b"\xff\xfe", "non-UTF-8"),
            (b"10000000001", "above the limit"),
        ] {
            let resp = cpu(Request::new(body));
            assert_eq!(resp.status(), 400);
            let text = String::from_utf8(resp.body().to_vec()).unwrap();
            assert!(text.contains(want), "{text}");
        }
    }

    #[test]
    fn stops_when_told_and_reports_how_far_it_got() {
        let mut segments = 0;
        let outcome = count_primes_below(10 * SEGMENT, || {
            segments += 1;
            segments <= 2
        });
        assert_eq!(outcome, Err(2 * SEGMENT));
    }
}
