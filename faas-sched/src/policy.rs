//! Keep-alive policies: how long an idle instance stays loaded, and whether
//! it is unloaded and pre-warmed later.
//!
//! ```text
//!  request ends ──▶ policy.windows() ──▶ prewarm = 0: stay loaded for keep_alive
//!                                    └─▶ prewarm > 0: unload now, load again at
//!                                        end + prewarm, keep loaded for keep_alive
//! ```
//!
//! [`KeepAlivePolicy::Fixed`] is what AWS (10 min) and Azure (20 min) do.
//! [`KeepAlivePolicy::Hybrid`] is the hybrid histogram policy of Shahrad et
//! al., "Serverless in the Wild" (USENIX ATC 2020), implemented from the
//! paper's description by [`HybridPolicy`].

use std::time::Duration;

use crate::clock::Nanos;

/// Which keep-alive policy a [`crate::PoolScheduler`] applies to functions
/// whose spec asks for reuse (`Reuse::KeepAlive`). Functions with
/// `Reuse::PerRequest` never keep an instance.
#[derive(Debug, Clone, PartialEq)]
pub enum KeepAlivePolicy {
    /// The function's own `Reuse::KeepAlive { idle_ms }`.
    FromSpec,
    /// The same window for every function (AWS-like 10 min, Azure-like 20 min).
    Fixed(Duration),
    /// The hybrid histogram policy.
    Hybrid(HybridConfig),
}

impl KeepAlivePolicy {
    /// The AWS-like fixed window of 10 minutes.
    pub fn fixed_10_min() -> Self {
        KeepAlivePolicy::Fixed(Duration::from_secs(600))
    }

    /// The Azure-like fixed window of 20 minutes.
    pub fn fixed_20_min() -> Self {
        KeepAlivePolicy::Fixed(Duration::from_secs(1200))
    }

    /// The hybrid policy with the paper's parameters.
    pub fn hybrid() -> Self {
        KeepAlivePolicy::Hybrid(HybridConfig::default())
    }

    /// Parses `fixed:10m`, `fixed:20m`, `fixed:<N>s|m|h`, `hybrid` or `spec`.
    ///
    /// # Errors
    ///
    /// A [`ParsePolicyError`] naming the text.
    pub fn parse(s: &str) -> Result<Self, ParsePolicyError> {
        let bad = || ParsePolicyError { text: s.to_owned() };
        match s {
            "hybrid" => return Ok(Self::hybrid()),
            "spec" => return Ok(KeepAlivePolicy::FromSpec),
            _ => {}
        }
        let d = s.strip_prefix("fixed:").ok_or_else(bad)?;
        let (num, unit) = d.split_at(d.len().saturating_sub(1));
        let n: u64 = num.parse().map_err(|_| bad())?;
        let secs = match unit {
            "s" => n,
            "m" => n.checked_mul(60).ok_or_else(bad)?,
            "h" => n.checked_mul(3600).ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        Ok(KeepAlivePolicy::Fixed(Duration::from_secs(secs)))
    }
}

/// A keep-alive policy string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "keep-alive policy {text:?} is not one of fixed:10m, fixed:20m, fixed:<N>s|m|h, hybrid, spec"
)]
pub struct ParsePolicyError {
    /// The text given.
    pub text: String,
}

/// Parameters of the hybrid histogram policy. The defaults are the paper's:
/// 1-minute bins over 4 hours, head at the 5th and tail at the 99th
/// percentile, a 10 % margin, a coefficient-of-variation threshold of 2.
#[derive(Debug, Clone, PartialEq)]
pub struct HybridConfig {
    /// Width of one histogram bin.
    pub bin: Duration,
    /// Number of bins; `bin * bins` is the histogram's range.
    pub bins: u32,
    /// Percentile of idle times that sets the pre-warm window.
    pub head_percentile: f64,
    /// Percentile of idle times that sets the end of the keep-alive window.
    pub tail_percentile: f64,
    /// Safety margin: the pre-warm window shrinks and the keep-alive end
    /// grows by this fraction.
    pub margin: f64,
    /// Fewer idle times than this: fall back to standard keep-alive.
    pub min_samples: u32,
    /// A histogram whose bin counts have a coefficient of variation below
    /// this is not representative: fall back to standard keep-alive.
    pub cv_threshold: f64,
    /// When more than this fraction of idle times fall beyond the range,
    /// the next idle time is forecast from the recent ones instead.
    pub oob_threshold: f64,
    /// Margin of the forecast: pre-warm at `(1 - m) * forecast`, stay
    /// loaded for `2 * m * forecast`.
    pub forecast_margin: f64,
    /// Keep-alive window of the standard (fallback) policy; the paper uses
    /// the histogram's range.
    pub fallback_keep_alive: Option<Duration>,
}

impl Default for HybridConfig {
    fn default() -> Self {
        HybridConfig {
            bin: Duration::from_secs(60),
            bins: 240,
            head_percentile: 5.0,
            tail_percentile: 99.0,
            margin: 0.10,
            min_samples: 5,
            cv_threshold: 2.0,
            oob_threshold: 0.5,
            forecast_margin: 0.15,
            fallback_keep_alive: None,
        }
    }
}

/// What a policy decided for an instance that just went idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Unload now and load again after this long (zero: stay loaded).
    pub prewarm: Duration,
    /// Then stay loaded (idle) this long; zero: unload.
    pub keep_alive: Duration,
}

impl Windows {
    /// Stay loaded for `d`.
    pub fn keep(d: Duration) -> Self {
        Windows {
            prewarm: Duration::ZERO,
            keep_alive: d,
        }
    }
}

/// Where a [`HybridPolicy`] decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSource {
    /// From the idle-time histogram's head and tail.
    Histogram,
    /// Too few idle times yet: standard keep-alive.
    FewSamples,
    /// The histogram is too flat to predict (low coefficient of variation):
    /// standard keep-alive.
    NotRepresentative,
    /// Most idle times fall beyond the histogram: forecast from the recent
    /// ones.
    Forecast,
}

/// The hybrid histogram policy of one function: observes the function's idle
/// times (end of its last request to the next arrival) and sets windows.
///
/// ```
/// use std::time::Duration;
/// use faas_sched::{HybridConfig, HybridPolicy, WindowSource};
///
/// let mut p = HybridPolicy::new(HybridConfig::default());
/// for _ in 0..10 {
///     p.observe(Duration::from_secs(30 * 60 + 20)); // every ~30 minutes
/// }
/// let (w, src) = p.windows();
/// assert_eq!(src, WindowSource::Histogram);
/// assert_eq!(w.prewarm, Duration::from_secs(27 * 60)); // 30 min - 10 %
/// assert_eq!(w.keep_alive, Duration::from_secs(31 * 66 - 27 * 60)); // to 31 min + 10 %
/// ```
#[derive(Debug, Clone)]
pub struct HybridPolicy {
    cfg: HybridConfig,
    counts: Vec<u32>,
    in_range: u64,
    out_of_range: u64,
    /// Exponentially weighted mean of all idle times, in nanoseconds.
    forecast: Option<f64>,
    cached: Option<(Windows, WindowSource)>,
}

const FORECAST_WEIGHT: f64 = 0.5;

impl HybridPolicy {
    /// An empty policy.
    pub fn new(cfg: HybridConfig) -> Self {
        let bins = cfg.bins.max(1) as usize;
        HybridPolicy {
            cfg,
            counts: vec![0; bins],
            in_range: 0,
            out_of_range: 0,
            forecast: None,
            cached: None,
        }
    }

    /// Records one idle time.
    pub fn observe(&mut self, idle: Duration) {
        self.observe_ns(u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX));
    }

    pub(crate) fn observe_ns(&mut self, idle: Nanos) {
        let bin = bin_ns(&self.cfg);
        let idx = idle / bin;
        if let Some(c) = usize::try_from(idx)
            .ok()
            .and_then(|i| self.counts.get_mut(i))
        {
            *c = c.saturating_add(1);
            self.in_range += 1;
        } else {
            self.out_of_range += 1;
        }
        let x = idle as f64;
        self.forecast = Some(match self.forecast {
            None => x,
            Some(f) => FORECAST_WEIGHT * x + (1.0 - FORECAST_WEIGHT) * f,
        });
        self.cached = None;
    }

    /// Idle times observed so far.
    pub fn samples(&self) -> u64 {
        self.in_range + self.out_of_range
    }

    /// The current decision and where it came from.
    pub fn windows(&mut self) -> (Windows, WindowSource) {
        if let Some(c) = self.cached {
            return c;
        }
        let c = self.compute();
        self.cached = Some(c);
        c
    }

    fn fallback(&self) -> Windows {
        let range =
            Duration::from_nanos(bin_ns(&self.cfg).saturating_mul(self.counts.len() as u64));
        Windows::keep(self.cfg.fallback_keep_alive.unwrap_or(range))
    }

    fn compute(&self) -> (Windows, WindowSource) {
        let total = self.samples();
        if total < u64::from(self.cfg.min_samples) || total == 0 {
            return (self.fallback(), WindowSource::FewSamples);
        }
        if self.out_of_range as f64 > self.cfg.oob_threshold * total as f64 {
            let f = self.forecast.unwrap_or(0.0).max(0.0);
            let m = self.cfg.forecast_margin.clamp(0.0, 1.0);
            return (
                Windows {
                    prewarm: Duration::from_nanos((f * (1.0 - m)).round() as u64),
                    keep_alive: Duration::from_nanos((f * 2.0 * m).round() as u64),
                },
                WindowSource::Forecast,
            );
        }
        if self.in_range == 0 || coefficient_of_variation(&self.counts) < self.cfg.cv_threshold {
            return (self.fallback(), WindowSource::NotRepresentative);
        }
        let head = percentile_bin(&self.counts, self.in_range, self.cfg.head_percentile);
        let tail = percentile_bin(&self.counts, self.in_range, self.cfg.tail_percentile);
        let bin = bin_ns(&self.cfg) as f64;
        let m = self.cfg.margin.clamp(0.0, 1.0);
        let prewarm = (head as f64 * bin * (1.0 - m)).round() as u64;
        let end = ((tail + 1) as f64 * bin * (1.0 + m)).round() as u64;
        (
            Windows {
                prewarm: Duration::from_nanos(prewarm),
                keep_alive: Duration::from_nanos(end.saturating_sub(prewarm)),
            },
            WindowSource::Histogram,
        )
    }
}

fn bin_ns(cfg: &HybridConfig) -> u64 {
    u64::try_from(cfg.bin.as_nanos()).unwrap_or(u64::MAX).max(1)
}

/// The index of the bin holding the `pct`-th percentile of `total` samples.
fn percentile_bin(counts: &[u32], total: u64, pct: f64) -> usize {
    let want = ((pct / 100.0) * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0u64;
    for (i, c) in counts.iter().enumerate() {
        seen += u64::from(*c);
        if seen >= want {
            return i;
        }
    }
    counts.len().saturating_sub(1)
}

fn coefficient_of_variation(counts: &[u32]) -> f64 {
    let n = counts.len() as f64;
    let mean = counts.iter().map(|&c| f64::from(c)).sum::<f64>() / n;
    if mean == 0.0 {
        return 0.0;
    }
    let var = counts
        .iter()
        .map(|&c| (f64::from(c) - mean).powi(2))
        .sum::<f64>()
        / n;
    var.sqrt() / mean
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn parse_accepts_the_cli_forms() {
        assert_eq!(
            KeepAlivePolicy::parse("fixed:10m"),
            Ok(KeepAlivePolicy::fixed_10_min())
        );
        assert_eq!(
            KeepAlivePolicy::parse("fixed:20m"),
            Ok(KeepAlivePolicy::fixed_20_min())
        );
        assert_eq!(
            KeepAlivePolicy::parse("fixed:90s"),
            Ok(KeepAlivePolicy::Fixed(Duration::from_secs(90)))
        );
        assert_eq!(
            KeepAlivePolicy::parse("hybrid"),
            Ok(KeepAlivePolicy::hybrid())
        );
        for bad in ["", "fixed", "fixed:", "fixed:10", "fixed:xm", "lru"] {
            assert!(KeepAlivePolicy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn too_few_samples_fall_back_to_the_range() {
        let mut p = HybridPolicy::new(HybridConfig::default());
        assert_eq!(
            p.windows(),
            (Windows::keep(240 * MIN), WindowSource::FewSamples)
        );
        for _ in 0..4 {
            p.observe(MIN);
        }
        assert_eq!(p.windows().1, WindowSource::FewSamples);
        p.observe(MIN);
        assert_eq!(p.windows().1, WindowSource::Histogram);
    }

    #[test]
    fn every_minute_keeps_warm_without_prewarm() {
        // Idle times of 10..50 s all fall in bin 0: head = tail = bin 0.
        let mut p = HybridPolicy::new(HybridConfig::default());
        for s in [10, 20, 30, 40, 50, 15, 25] {
            p.observe(Duration::from_secs(s));
        }
        let (w, src) = p.windows();
        assert_eq!(src, WindowSource::Histogram);
        assert_eq!(w.prewarm, Duration::ZERO);
        // End of bin 0 (1 min) plus 10 %.
        assert_eq!(w.keep_alive, Duration::from_secs(66));
    }

    #[test]
    fn head_and_tail_percentiles_are_hand_computed() {
        // 100 idle times: 5 in bin 2, 90 in bin 10, 5 in bin 20.
        // 5th percentile = 5th sample = bin 2; 99th = 99th sample = bin 20.
        let mut p = HybridPolicy::new(HybridConfig::default());
        for _ in 0..5 {
            p.observe(2 * MIN + Duration::from_secs(5));
        }
        for _ in 0..90 {
            p.observe(10 * MIN + Duration::from_secs(30));
        }
        for _ in 0..5 {
            p.observe(20 * MIN);
        }
        let (w, src) = p.windows();
        assert_eq!(src, WindowSource::Histogram);
        assert_eq!(w.prewarm, Duration::from_secs(108)); // 2 min * 0.9
        assert_eq!(w.keep_alive, Duration::from_secs(21 * 66 - 108)); // 21 min * 1.1 - prewarm
    }

    #[test]
    fn a_flat_histogram_is_not_representative() {
        // One idle time in each of the 240 bins: every count is 1, CV = 0.
        let mut p = HybridPolicy::new(HybridConfig::default());
        for i in 0..240u32 {
            p.observe(i * MIN + Duration::from_secs(1));
        }
        assert_eq!(
            p.windows(),
            (Windows::keep(240 * MIN), WindowSource::NotRepresentative)
        );
    }

    #[test]
    fn idle_times_beyond_the_range_use_the_forecast() {
        // Every idle time is 5 h (beyond 4 h): forecast 5 h,
        // pre-warm at 0.85 * 5 h, stay 0.3 * 5 h.
        let mut p = HybridPolicy::new(HybridConfig::default());
        for _ in 0..6 {
            p.observe(Duration::from_secs(5 * 3600));
        }
        let (w, src) = p.windows();
        assert_eq!(src, WindowSource::Forecast);
        assert_eq!(w.prewarm, Duration::from_secs(15_300));
        assert_eq!(w.keep_alive, Duration::from_secs(5_400));
    }
}
