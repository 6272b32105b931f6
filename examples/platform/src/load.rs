//! Sending many invocations and summarising their latencies.

use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use http::Method;

use crate::client::Client;

/// Latency summary of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Requests sent.
    pub requests: usize,
    /// Requests that did not return 2xx.
    pub errors: usize,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Mean latency.
    pub mean: Duration,
    /// Slowest request.
    pub max: Duration,
    /// Wall time of the whole run.
    pub wall: Duration,
}

impl Summary {
    /// Summarises `lat` (sorted in place).
    pub fn from_latencies(lat: &mut [Duration], errors: usize, wall: Duration) -> Self {
        lat.sort_unstable();
        let pick = |q: f64| {
            if lat.is_empty() {
                Duration::ZERO
            } else {
                let i = ((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1;
                lat[i]
            }
        };
        let sum: Duration = lat.iter().sum();
        Summary {
            requests: lat.len(),
            errors,
            p50: pick(0.50),
            p99: pick(0.99),
            mean: sum.checked_div(lat.len().max(1) as u32).unwrap_or_default(),
            max: lat.last().copied().unwrap_or_default(),
            wall,
        }
    }

    /// Requests per second over the run's wall time.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Invokes `function` `requests` times with `concurrency` requests in flight,
/// over real HTTP, and summarises the latencies seen by the client.
///
/// # Errors
///
/// The server cannot be reached, or the first request fails (so a broken
/// setup is reported instead of measured).
pub async fn run(
    client: &Client,
    function: &str,
    body: Bytes,
    requests: usize,
    concurrency: usize,
    mut progress: impl FnMut(usize),
) -> anyhow::Result<Summary> {
    let path = format!("/invoke/{function}");
    let first = client.request(Method::POST, &path, body.clone()).await?;
    if !first.status.is_success() {
        bail!(
            "{function}: first invocation failed: {} — {}",
            first.status,
            first.error_message()
        );
    }
    let concurrency = concurrency.max(1);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Duration, bool)>(1024);
    let per = requests / concurrency;
    let extra = requests % concurrency;
    let start = Instant::now();
    for w in 0..concurrency {
        let n = per + usize::from(w < extra);
        let (client, path, body, tx) = (client.clone(), path.clone(), body.clone(), tx.clone());
        tokio::spawn(async move {
            for _ in 0..n {
                let t = Instant::now();
                let ok = matches!(client.request(Method::POST, &path, body.clone()).await, Ok(r) if r.status.is_success());
                if tx.send((t.elapsed(), ok)).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut lat = Vec::with_capacity(requests);
    let mut errors = 0;
    while let Some((d, ok)) = rx.recv().await {
        lat.push(d);
        errors += usize::from(!ok);
        progress(lat.len());
    }
    let wall = start.elapsed();
    Ok(Summary::from_latencies(&mut lat, errors, wall))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_rank() {
        let mut v: Vec<_> = (1..=100).rev().map(Duration::from_millis).collect();
        let s = Summary::from_latencies(&mut v, 0, Duration::from_secs(1));
        assert_eq!(s.p50, Duration::from_millis(50));
        assert_eq!(s.p99, Duration::from_millis(99));
        assert_eq!(s.max, Duration::from_millis(100));
        assert_eq!(s.rps(), 100.0);
    }
}
