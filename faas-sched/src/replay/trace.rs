//! Loading Azure Functions traces: the 2019 per-minute trio and the 2021
//! per-invocation CSV.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Why a trace could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadTraceError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A required column is missing from the header.
    #[error("{}: no column {column:?} in the header", path.display())]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
    },
    /// The path names no trace.
    #[error(
        "{}: no trace here: give a 2021 CSV file, a directory with one 2019 trio, or a prefix such as DIR/100 (DIR/100_inv.csv, _run, _mem) or DIR/example (example_invocations.csv, ...)",
        path.display()
    )]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// A directory holds several traces.
    #[error("{}: holds several traces ({}): give one as a prefix, e.g. {}", path.display(), candidates.join(", "), path.join(&candidates[0]).display())]
    Ambiguous {
        /// The directory.
        path: PathBuf,
        /// The prefixes found.
        candidates: Vec<String>,
    },
    /// The trace holds no invocation.
    #[error("{}: the trace holds no invocation", path.display())]
    Empty {
        /// The path given.
        path: PathBuf,
    },
}

/// A distribution given by percentiles: `(p in [0, 1], value)`, sampled by
/// linear interpolation of the inverse CDF.
#[derive(Debug, Clone, PartialEq)]
pub struct Percentiles {
    points: Vec<(f64, f64)>,
}

impl Percentiles {
    /// From `(percentile in 0..=100, value)` pairs. Below the first
    /// percentile the first value holds, above the last the last.
    pub fn new(mut points: Vec<(f64, f64)>) -> Self {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut pts: Vec<(f64, f64)> = points.into_iter().map(|(p, v)| (p / 100.0, v)).collect();
        // Values must not decrease with the percentile.
        for i in 1..pts.len() {
            if pts[i].1 < pts[i - 1].1 {
                pts[i].1 = pts[i - 1].1;
            }
        }
        Percentiles { points: pts }
    }

    /// One value for `u` uniform in `[0, 1)`.
    pub fn sample(&self, u: f64) -> f64 {
        let Some(&(p0, v0)) = self.points.first() else {
            return 0.0;
        };
        if u <= p0 {
            return v0;
        }
        for w in self.points.windows(2) {
            let ((pa, va), (pb, vb)) = (w[0], w[1]);
            if u <= pb {
                if pb <= pa {
                    return vb;
                }
                return va + (vb - va) * (u - pa) / (pb - pa);
            }
        }
        self.points.last().map_or(0.0, |p| p.1)
    }
}

/// When a function is invoked.
#[derive(Debug, Clone, PartialEq)]
pub enum Arrivals {
    /// Invocations per minute (2019 trace).
    PerMinute(Vec<u32>),
    /// `(start, duration)` of each invocation, in nanoseconds (2021 trace).
    Explicit(Vec<(u64, u64)>),
}

/// One function of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceFunction {
    /// The trace's hash of the function (owner/app/function).
    pub key: String,
    /// The trace's hash of its application.
    pub app: String,
    /// Its invocations.
    pub arrivals: Arrivals,
    /// Execution time in milliseconds (2019 trace), if known.
    pub duration_ms: Option<Percentiles>,
    /// Allocated memory in MiB (2019 trace, per application), if known.
    pub memory_mb: Option<Percentiles>,
}

/// Which format a trace came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceFormat {
    /// Azure Functions 2019: per-minute counts, duration and memory percentiles.
    Azure2019,
    /// Azure Functions 2021: one row per invocation.
    Azure2021,
}

/// A loaded trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Its format.
    pub format: TraceFormat,
    /// The files it came from.
    pub files: Vec<PathBuf>,
    /// Its functions, in file order.
    pub functions: Vec<TraceFunction>,
}

impl Trace {
    /// Invocations in the trace.
    pub fn invocations(&self) -> u64 {
        self.functions
            .iter()
            .map(|f| match &f.arrivals {
                Arrivals::PerMinute(m) => m.iter().map(|&c| u64::from(c)).sum(),
                Arrivals::Explicit(v) => v.len() as u64,
            })
            .sum()
    }

    /// Loads a trace from `path`: a 2021 CSV file, a 2019 trio given by a
    /// directory holding one trio or by a prefix (`DIR/100` for
    /// `DIR/100_inv.csv`, `_run.csv`, `_mem.csv`; `DIR/example` for
    /// `DIR/example_invocations.csv`, `_durations.csv`, `_memory.csv`), or
    /// one of the trio's files.
    ///
    /// # Errors
    ///
    /// A [`LoadTraceError`] naming the file and line.
    pub fn load(path: &Path) -> Result<Trace, LoadTraceError> {
        let trace = if path.is_file() {
            let first = first_line(path)?;
            if first
                .trim_start_matches('\u{feff}')
                .starts_with("app,func,end_timestamp,duration")
            {
                load_2021(path)?
            } else {
                let trio = trio_of_file(path).ok_or_else(|| LoadTraceError::NotFound {
                    path: path.to_owned(),
                })?;
                load_2019(&trio)?
            }
        } else if path.is_dir() {
            let found = trios_in_dir(path)?;
            match found.len() {
                0 => {
                    return Err(LoadTraceError::NotFound {
                        path: path.to_owned(),
                    });
                }
                1 => load_2019(&found[0].1)?,
                _ => {
                    return Err(LoadTraceError::Ambiguous {
                        path: path.to_owned(),
                        candidates: found.into_iter().map(|(n, _)| n).collect(),
                    });
                }
            }
        } else {
            let trio = trio_of_prefix(path).ok_or_else(|| LoadTraceError::NotFound {
                path: path.to_owned(),
            })?;
            load_2019(&trio)?
        };
        if trace.invocations() == 0 {
            return Err(LoadTraceError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(trace)
    }
}

/// The three files of a 2019 trace.
#[derive(Debug, Clone)]
struct Trio {
    inv: PathBuf,
    run: PathBuf,
    mem: PathBuf,
}

const SUFFIXES: [[&str; 3]; 2] = [
    ["_inv.csv", "_run.csv", "_mem.csv"],
    ["_invocations.csv", "_durations.csv", "_memory.csv"],
];

fn trio_of_prefix(prefix: &Path) -> Option<Trio> {
    let s = prefix.to_str()?.trim_end_matches('_');
    SUFFIXES.iter().find_map(|[i, r, m]| {
        let t = Trio {
            inv: PathBuf::from(format!("{s}{i}")),
            run: PathBuf::from(format!("{s}{r}")),
            mem: PathBuf::from(format!("{s}{m}")),
        };
        (t.inv.is_file() && t.run.is_file() && t.mem.is_file()).then_some(t)
    })
}

fn trio_of_file(file: &Path) -> Option<Trio> {
    let s = file.to_str()?;
    SUFFIXES
        .iter()
        .flatten()
        .find_map(|suf| s.strip_suffix(suf))
        .and_then(|prefix| trio_of_prefix(Path::new(prefix)))
}

fn trios_in_dir(dir: &Path) -> Result<Vec<(String, Trio)>, LoadTraceError> {
    let io = |source| LoadTraceError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        let Some(name) = name.to_str() else { continue };
        for [inv, ..] in SUFFIXES {
            if let Some(prefix) = name.strip_suffix(inv)
                && let Some(t) = trio_of_prefix(&dir.join(prefix))
            {
                found.push((prefix.to_owned(), t));
            }
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

fn read(path: &Path) -> Result<String, LoadTraceError> {
    std::fs::read_to_string(path).map_err(|source| LoadTraceError::Io {
        path: path.to_owned(),
        source,
    })
}

fn first_line(path: &Path) -> Result<String, LoadTraceError> {
    use std::io::BufRead;
    let f = std::fs::File::open(path).map_err(|source| LoadTraceError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut line = String::new();
    std::io::BufReader::new(f)
        .read_line(&mut line)
        .map_err(|source| LoadTraceError::Io {
            path: path.to_owned(),
            source,
        })?;
    Ok(line)
}

/// A CSV file of plain fields (the traces quote nothing).
struct Csv<'a> {
    path: &'a Path,
    header: Vec<&'a str>,
    rows: Vec<(usize, Vec<&'a str>)>,
}

impl<'a> Csv<'a> {
    fn parse(path: &'a Path, text: &'a str) -> Result<Self, LoadTraceError> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
            .filter(|(_, l)| !l.trim().is_empty());
        let Some((_, head)) = lines.next() else {
            return Err(LoadTraceError::Parse {
                path: path.to_owned(),
                line: 1,
                message: "empty file: expected a CSV header".into(),
            });
        };
        let header: Vec<&str> = head
            .trim_start_matches('\u{feff}')
            .split(',')
            .map(str::trim)
            .collect();
        let mut rows = Vec::new();
        for (n, l) in lines {
            let fields: Vec<&str> = l.split(',').map(str::trim).collect();
            if fields.len() != header.len() {
                return Err(LoadTraceError::Parse {
                    path: path.to_owned(),
                    line: n,
                    message: format!("{} fields, the header has {}", fields.len(), header.len()),
                });
            }
            rows.push((n, fields));
        }
        Ok(Csv { path, header, rows })
    }

    fn col(&self, name: &str) -> Result<usize, LoadTraceError> {
        self.header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| LoadTraceError::MissingColumn {
                path: self.path.to_owned(),
                column: name.to_owned(),
            })
    }

    fn num(&self, line: usize, field: &str, column: &str) -> Result<f64, LoadTraceError> {
        match field.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
            _ => Err(LoadTraceError::Parse {
                path: self.path.to_owned(),
                line,
                message: format!("column {column}: {field:?} is not a non-negative number"),
            }),
        }
    }

    /// `(percentile, column index)` of the columns named `prefix<N>`.
    fn percentile_cols(&self, prefix: &str) -> Vec<(f64, usize)> {
        self.header
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                let p: f64 = h.strip_prefix(prefix)?.parse().ok()?;
                (0.0..=100.0).contains(&p).then_some((p, i))
            })
            .collect()
    }
}

fn load_2019(trio: &Trio) -> Result<Trace, LoadTraceError> {
    // Durations, by function.
    let run_text = read(&trio.run)?;
    let run = Csv::parse(&trio.run, &run_text)?;
    let (rf, ra, ro) = (
        run.col("HashFunction")?,
        run.col("HashApp")?,
        run.col("HashOwner")?,
    );
    let dcols = run.percentile_cols("percentile_Average_");
    if dcols.is_empty() {
        return Err(LoadTraceError::MissingColumn {
            path: trio.run.clone(),
            column: "percentile_Average_50".into(),
        });
    }
    let mut durations = HashMap::new();
    for (n, row) in &run.rows {
        let mut pts = Vec::with_capacity(dcols.len());
        for &(p, i) in &dcols {
            pts.push((p, run.num(*n, row[i], run.header[i])?));
        }
        durations.insert((row[ro], row[ra], row[rf]), Percentiles::new(pts));
    }
    // Memory, by application.
    let mem_text = read(&trio.mem)?;
    let mem = Csv::parse(&trio.mem, &mem_text)?;
    let (ma, mo) = (mem.col("HashApp")?, mem.col("HashOwner")?);
    let mcols = mem.percentile_cols("AverageAllocatedMb_pct");
    if mcols.is_empty() {
        return Err(LoadTraceError::MissingColumn {
            path: trio.mem.clone(),
            column: "AverageAllocatedMb_pct50".into(),
        });
    }
    let mut memory = HashMap::new();
    for (n, row) in &mem.rows {
        let mut pts = Vec::with_capacity(mcols.len());
        for &(p, i) in &mcols {
            pts.push((p, mem.num(*n, row[i], mem.header[i])?));
        }
        memory.insert((row[mo], row[ma]), Percentiles::new(pts));
    }
    // Invocations per minute.
    let inv_text = read(&trio.inv)?;
    let inv = Csv::parse(&trio.inv, &inv_text)?;
    let (f, a, o) = (
        inv.col("HashFunction")?,
        inv.col("HashApp")?,
        inv.col("HashOwner")?,
    );
    let mut minutes: Vec<(usize, usize)> = inv
        .header
        .iter()
        .enumerate()
        .filter_map(|(i, h)| {
            let m: usize = h.strip_prefix("minute_").unwrap_or(h).parse().ok()?;
            (m >= 1).then_some((m, i))
        })
        .collect();
    minutes.sort_unstable();
    if minutes.is_empty() {
        return Err(LoadTraceError::MissingColumn {
            path: trio.inv.clone(),
            column: "1 (or minute_1)".into(),
        });
    }
    let len = minutes.last().map_or(0, |m| m.0);
    let mut functions = Vec::with_capacity(inv.rows.len());
    for (n, row) in &inv.rows {
        let mut counts = vec![0u32; len];
        for &(m, i) in &minutes {
            let v = inv.num(*n, row[i], inv.header[i])?;
            if v.fract() != 0.0 || v > f64::from(u32::MAX) {
                return Err(LoadTraceError::Parse {
                    path: trio.inv.clone(),
                    line: *n,
                    message: format!("minute {m}: {:?} is not a whole count", row[i]),
                });
            }
            counts[m - 1] = v as u32;
        }
        functions.push(TraceFunction {
            key: format!("{}/{}/{}", row[o], row[a], row[f]),
            app: row[a].to_owned(),
            arrivals: Arrivals::PerMinute(counts),
            duration_ms: durations.get(&(row[o], row[a], row[f])).cloned(),
            memory_mb: memory.get(&(row[o], row[a])).cloned(),
        });
    }
    Ok(Trace {
        format: TraceFormat::Azure2019,
        files: vec![trio.inv.clone(), trio.run.clone(), trio.mem.clone()],
        functions,
    })
}

fn load_2021(path: &Path) -> Result<Trace, LoadTraceError> {
    let text = read(path)?;
    let csv = Csv::parse(path, &text)?;
    let (a, f, e, d) = (
        csv.col("app")?,
        csv.col("func")?,
        csv.col("end_timestamp")?,
        csv.col("duration")?,
    );
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    let mut functions: Vec<TraceFunction> = Vec::new();
    for (n, row) in &csv.rows {
        let end = csv.num(*n, row[e], "end_timestamp")?;
        let dur = csv.num(*n, row[d], "duration")?;
        let start_ns = ((end - dur).max(0.0) * 1e9).round() as u64;
        let dur_ns = (dur * 1e9).round() as u64;
        let i = *index.entry((row[a], row[f])).or_insert_with(|| {
            functions.push(TraceFunction {
                key: format!("{}/{}", row[a], row[f]),
                app: row[a].to_owned(),
                arrivals: Arrivals::Explicit(Vec::new()),
                duration_ms: None,
                memory_mb: None,
            });
            functions.len() - 1
        });
        if let Arrivals::Explicit(v) = &mut functions[i].arrivals {
            v.push((start_ns, dur_ns));
        }
    }
    Ok(Trace {
        format: TraceFormat::Azure2021,
        files: vec![path.to_owned()],
        functions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_and_clamp() {
        let p = Percentiles::new(vec![(0.0, 10.0), (50.0, 20.0), (100.0, 40.0)]);
        assert_eq!(p.sample(0.0), 10.0);
        assert_eq!(p.sample(0.25), 15.0);
        assert_eq!(p.sample(0.75), 30.0);
        assert_eq!(p.sample(1.0), 40.0);
        // Non-monotone input is made monotone.
        let q = Percentiles::new(vec![(1.0, 5.0), (50.0, 3.0)]);
        assert_eq!(q.sample(0.5), 5.0);
    }
}
