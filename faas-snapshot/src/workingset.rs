//! A snapshot's recorded working set (`workingset` in the snapshot
//! directory): the pages of its private memory that a restored instance
//! wrote while it served one request, as page ranges.
//!
//! [`record_working_set`] reads them from `/proc/PID/pagemap` of a live
//! restored instance (a page the instance wrote is present and no longer
//! the page file's: it is anonymous); an instance restored ahead of its
//! request pre-faults them for writing before it waits for the request
//! (see the restorer's `MODE_PARKED`), so the request does not take those
//! copy-on-write faults.
//!
//! Layout: the magic `FAASWSET`, the format version (u32 LE), the number of
//! ranges (u32 LE), the BLAKE3 hash of the body (32 bytes), then the body:
//! per range its start address and its number of pages (u64 LE each),
//! sorted, page aligned, neither empty nor overlapping. The file is written
//! atomically (a temporary file renamed over it). Its absence means no
//! working set; a damaged file is refused as a whole, and a range outside
//! the snapshot's private writable memory is dropped, each with a warning:
//! the snapshot restores either way.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use faas_core::SnapshotError;

use crate::meta::{Meta, PAGE, TASK_SIZE};

/// The working set's file name in a snapshot directory.
pub const WORKING_SET_FILE: &str = "workingset";
/// The file of the pages a request only read (same format): present in
/// the instance and still the files' or the page file's. Written before
/// [`WORKING_SET_FILE`], read with it.
pub const READ_SET_FILE: &str = "readset";
const MAGIC: &[u8; 8] = b"FAASWSET";
/// The format version this build writes and reads.
const VERSION: u32 = 1;
const HEADER: usize = 48;
const RANGE: usize = 16;
/// The most ranges a working set holds (so that a restore plan carrying
/// them stays small).
pub(crate) const MAX_RANGES: usize = 4096;

/// Why a working-set file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("working set {}: {what}", path.display())]
pub struct WorkingSetError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub what: String,
}

/// A working set: sorted, disjoint `(start, length)` byte ranges, page
/// aligned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkingSet {
    ranges: Vec<(u64, u64)>,
}

impl WorkingSet {
    /// The ranges, `(start, length in bytes)`, sorted.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Pages in all ranges.
    pub fn pages(&self) -> u64 {
        self.ranges.iter().map(|r| r.1 / PAGE).sum()
    }

    /// A working set of these page-aligned ranges (sorted and merged
    /// here); `None` when one is misaligned, empty or past the address
    /// space, or there are more than [`MAX_RANGES`] after merging.
    pub fn from_ranges(mut ranges: Vec<(u64, u64)>) -> Option<WorkingSet> {
        ranges.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (start, len) in ranges {
            let end = start.checked_add(len)?;
            if start % PAGE != 0 || len % PAGE != 0 || len == 0 || end > TASK_SIZE {
                return None;
            }
            match out.last_mut() {
                Some(last) if last.0 + last.1 >= start => {
                    last.1 = last.1.max(end - last.0);
                }
                _ => out.push((start, len)),
            }
        }
        (out.len() <= MAX_RANGES).then_some(WorkingSet { ranges: out })
    }

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.ranges.len() * RANGE);
        for &(start, len) in &self.ranges {
            body.extend_from_slice(&start.to_le_bytes());
            body.extend_from_slice(&(len / PAGE).to_le_bytes());
        }
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.ranges.len() as u32).to_le_bytes());
        out.extend_from_slice(blake3::hash(&body).as_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Parses a file's bytes; what is wrong otherwise. Every field is
    /// checked: magic, version, length, hash, and each range (aligned,
    /// non-empty, inside the address space, sorted, disjoint).
    pub fn decode(bytes: &[u8]) -> Result<WorkingSet, String> {
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err("not a working-set file (bad magic or shorter than its header)".into());
        }
        let u32_at = |o: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&bytes[o..o + 4]);
            u32::from_le_bytes(w)
        };
        let version = u32_at(8);
        if version != VERSION {
            return Err(format!(
                "format version {version}; this build reads version {VERSION}"
            ));
        }
        let n = u32_at(12) as usize;
        if n > MAX_RANGES {
            return Err(format!("{n} ranges; at most {MAX_RANGES} are accepted"));
        }
        let body = &bytes[HEADER..];
        if body.len() != n * RANGE {
            return Err(format!(
                "{} bytes of ranges; the header says {n} ranges ({} bytes)",
                body.len(),
                n * RANGE
            ));
        }
        if blake3::hash(body).as_bytes() != &bytes[16..48] {
            return Err("its checksum does not match its content".into());
        }
        let mut ranges = Vec::with_capacity(n);
        let mut prev_end = 0u64;
        for (i, r) in body.chunks_exact(RANGE).enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&r[..8]);
            let start = u64::from_le_bytes(w);
            w.copy_from_slice(&r[8..]);
            let pages = u64::from_le_bytes(w);
            let end = pages
                .checked_mul(PAGE)
                .and_then(|len| start.checked_add(len));
            let ok = start % PAGE == 0
                && pages > 0
                && start >= prev_end
                && end.is_some_and(|e| e <= TASK_SIZE);
            if !ok {
                return Err(format!(
                    "range {i} ({start:#x}, {pages} pages) is misaligned, empty, out of order or past the address space"
                ));
            }
            prev_end = end.unwrap_or(TASK_SIZE);
            ranges.push((start, pages * PAGE));
        }
        Ok(WorkingSet { ranges })
    }

    /// Reads the working set of the snapshot in `dir`: `Ok(None)` when it
    /// has none.
    ///
    /// # Errors
    ///
    /// The file cannot be read or is damaged; the error names the file.
    pub fn read(dir: &Path) -> Result<Option<WorkingSet>, WorkingSetError> {
        Self::read_file(dir, WORKING_SET_FILE)
    }

    /// Reads the pages one request only read ([`READ_SET_FILE`]) of the
    /// snapshot in `dir`: `Ok(None)` when it has none.
    ///
    /// # Errors
    ///
    /// As [`WorkingSet::read`].
    pub fn read_set(dir: &Path) -> Result<Option<WorkingSet>, WorkingSetError> {
        Self::read_file(dir, READ_SET_FILE)
    }

    fn read_file(dir: &Path, name: &str) -> Result<Option<WorkingSet>, WorkingSetError> {
        let path = dir.join(name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(WorkingSetError {
                    path,
                    what: e.to_string(),
                });
            }
        };
        WorkingSet::decode(&bytes)
            .map(Some)
            .map_err(|what| WorkingSetError { path, what })
    }

    /// Writes it as the working set of the snapshot in `dir`, atomically.
    ///
    /// # Errors
    ///
    /// The file cannot be written.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        self.write_file(dir, WORKING_SET_FILE)
    }

    /// Writes it as the read set of the snapshot in `dir` (see
    /// [`READ_SET_FILE`]), atomically.
    ///
    /// # Errors
    ///
    /// The file cannot be written.
    pub fn write_read_set(&self, dir: &Path) -> io::Result<()> {
        self.write_file(dir, READ_SET_FILE)
    }

    fn write_file(&self, dir: &Path, name: &str) -> io::Result<()> {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(&self.encode())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &path)
    }

    /// Keeps the ranges that lie inside the private writable areas of
    /// `meta` (one, or neighbours without a gap); the others are returned,
    /// described, for a warning.
    pub(crate) fn keep_inside(&mut self, meta: &Meta) -> Vec<String> {
        self.keep_inside_of(meta, libc::PROT_WRITE as u32, "private writable")
    }

    /// Keeps the ranges inside the private readable areas of `meta` (see
    /// [`WorkingSet::keep_inside`]): where a read set may lie.
    pub(crate) fn keep_inside_readable(&mut self, meta: &Meta) -> Vec<String> {
        self.keep_inside_of(meta, libc::PROT_READ as u32, "private readable")
    }

    fn keep_inside_of(&mut self, meta: &Meta, prot: u32, what: &str) -> Vec<String> {
        let writable = |at: u64| {
            meta.areas
                .iter()
                .find(|a| !a.shared() && a.prot() & prot != 0 && a.start <= at && at < a.end)
        };
        let mut dropped = Vec::new();
        self.ranges.retain(|&(start, len)| {
            let end = start + len;
            let mut at = start;
            while at < end {
                match writable(at) {
                    Some(a) => at = a.end,
                    None => break,
                }
            }
            let inside = at >= end;
            if !inside {
                dropped.push(format!(
                    "{start:#x}-{end:#x} is not inside the {what} areas of the snapshot",
                ));
            }
            inside
        });
        dropped
    }
}

/// pagemap: the page is present.
const PM_PRESENT: u64 = 1 << 63;
/// pagemap: the page is file-backed or shared anonymous.
const PM_FILE: u64 = 1 << 61;

/// Records the working set of the snapshot in `dir` from process `pid`, an
/// instance restored from it that has just served a request: the pages of
/// the snapshot's private writable areas that are present and anonymous in
/// it (written since the restore: copy-on-write copies and first-touched
/// zero pages). Writes them to the snapshot's [`WORKING_SET_FILE`]
/// atomically and returns them.
///
/// # Errors
///
/// The snapshot's metadata or the process's pagemap cannot be read, or the
/// file cannot be written.
pub fn record_working_set(pid: u32, dir: &Path) -> Result<WorkingSet, SnapshotError> {
    let meta = crate::restore::read_meta(dir)?;
    let (ws, read) = private_pages(pid, dir, &meta)?;
    write_both(&ws, &read, dir)?;
    Ok(ws)
}

/// Writes `read` ([`READ_SET_FILE`]), then `ws` ([`WORKING_SET_FILE`],
/// whose change a snapshot notices), atomically each.
///
/// # Errors
///
/// A file cannot be written.
pub fn write_both(ws: &WorkingSet, read: &WorkingSet, dir: &Path) -> Result<(), SnapshotError> {
    read.write_read_set(dir)
        .map_err(|source| SnapshotError::Sys {
            op: "write the read set",
            source,
        })?;
    write(ws, dir)
}

/// The working set of process `pid` at its end, not yet written: `pid` is
/// a running instance restored from the snapshot in `dir` that is about to
/// serve a request and exit (an instance serves one request; any instance
/// exits when its channel closes). Attaches to it with ptrace (it keeps
/// running), calls `attached`, then blocks until the process stops at its
/// exit, with its memory still mapped, and reads the pages of the snapshot
/// it wrote from its restore to its end (see [`record_working_set`]). The
/// process then finishes exiting. Must run on a thread of its own, which
/// is the process's tracer until then. [`WorkingSet::write`] stores it.
///
/// # Errors
///
/// The process cannot be traced (then `attached` is not called), it ended
/// without stopping at its exit (killed), or its pagemap cannot be read.
pub fn working_set_at_exit(
    pid: u32,
    dir: &Path,
    attached: impl FnOnce(),
) -> Result<WorkingSet, SnapshotError> {
    pages_at_exit(pid, dir, attached).map(|(written, _)| written)
}

/// [`working_set_at_exit`], with the pages the process only read as well
/// (see [`READ_SET_FILE`]): `(written, read)`. [`write_both`] stores them.
///
/// # Errors
///
/// As [`working_set_at_exit`].
pub fn pages_at_exit(
    pid: u32,
    dir: &Path,
    attached: impl FnOnce(),
) -> Result<(WorkingSet, WorkingSet), SnapshotError> {
    let meta = crate::restore::read_meta(dir)?;
    let watch = crate::sys::ptrace::ExitWatch::seize(pid).map_err(|source| SnapshotError::Sys {
        op: "attach to a restored instance",
        source,
    })?;
    attached();
    watch.wait_exit().map_err(|source| SnapshotError::Sys {
        op: "wait for a restored instance to exit",
        source,
    })?;
    private_pages(pid, dir, &meta)
}

fn write(ws: &WorkingSet, dir: &Path) -> Result<(), SnapshotError> {
    ws.write(dir).map_err(|source| SnapshotError::Sys {
        op: "write the working set",
        source,
    })
}

/// The pages of `meta`'s private areas present in process `pid`: those of
/// its writable areas that are anonymous there (written), and those still
/// the files' or the page file's (read, or mapped around a read).
fn private_pages(
    pid: u32,
    dir: &Path,
    meta: &Meta,
) -> Result<(WorkingSet, WorkingSet), SnapshotError> {
    let path = format!("/proc/{pid}/pagemap");
    let pagemap = File::open(&path).map_err(|source| SnapshotError::Sys {
        op: "open the pagemap of a restored instance",
        source,
    })?;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut read: Vec<(u64, u64)> = Vec::new();
    const CHUNK: u64 = 8192;
    let mut buf = vec![0u8; (CHUNK * 8) as usize];
    for a in meta
        .areas
        .iter()
        .filter(|a| !a.shared() && a.prot() & libc::PROT_READ as u32 != 0)
    {
        let writable = a.prot() & libc::PROT_WRITE as u32 != 0;
        let mut page = a.start / PAGE;
        let last = a.end / PAGE;
        while page < last {
            let n = (last - page).min(CHUNK);
            let bytes = &mut buf[..(n * 8) as usize];
            pagemap
                .read_exact_at(bytes, page * 8)
                .map_err(|source| SnapshotError::Sys {
                    op: "read the pagemap of a restored instance",
                    source,
                })?;
            for (i, e) in bytes.chunks_exact(8).enumerate() {
                let mut w = [0u8; 8];
                w.copy_from_slice(e);
                let entry = u64::from_le_bytes(w);
                if entry & PM_PRESENT == 0 {
                    continue;
                }
                let list = match (entry & PM_FILE == 0, writable) {
                    (true, true) => &mut ranges,
                    (false, _) => &mut read,
                    // Anonymous in a read-only area: nothing to fault in.
                    (true, false) => continue,
                };
                let at = (page + i as u64) * PAGE;
                match list.last_mut() {
                    Some(r) if r.0 + r.1 == at => r.1 += PAGE,
                    _ => list.push((at, PAGE)),
                }
            }
            page += n;
        }
    }
    let set = |mut ranges: Vec<(u64, u64)>| {
        if ranges.len() > MAX_RANGES {
            // Keep the largest: most pages for the ranges allowed.
            ranges.sort_unstable_by_key(|r| std::cmp::Reverse(r.1));
            ranges.truncate(MAX_RANGES);
        }
        WorkingSet::from_ranges(ranges).ok_or_else(|| SnapshotError::Invalid {
            dir: dir.to_path_buf(),
            what: "the recorded working set is not page aligned".into(),
        })
    };
    Ok((set(ranges)?, set(read)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WorkingSet {
        WorkingSet::from_ranges(vec![
            (0x7000_0000, 3 * PAGE),
            (0x1000, PAGE),
            // Adjacent: merged with the first.
            (0x7000_3000, PAGE),
        ])
        .unwrap()
    }

    #[test]
    fn round_trips_and_merges() {
        let ws = sample();
        assert_eq!(ws.ranges(), [(0x1000, PAGE), (0x7000_0000, 4 * PAGE)]);
        assert_eq!(ws.pages(), 5);
        assert_eq!(WorkingSet::decode(&ws.encode()).unwrap(), ws);
    }

    #[test]
    fn refuses_misaligned_or_empty_ranges() {
        assert!(WorkingSet::from_ranges(vec![(0x1001, PAGE)]).is_none());
        assert!(WorkingSet::from_ranges(vec![(0x1000, 0)]).is_none());
        assert!(WorkingSet::from_ranges(vec![(TASK_SIZE, PAGE)]).is_none());
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(
                WorkingSet::decode(&bytes[..len]).is_err(),
                "truncated to {len}"
            );
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x55;
            assert!(WorkingSet::decode(&b).is_err(), "byte {i} flipped");
        }
    }

    #[test]
    fn refuses_overlapping_ranges_even_with_a_valid_checksum() {
        let mut body = Vec::new();
        for (start, pages) in [(0x2000u64, 2u64), (0x3000, 1)] {
            body.extend_from_slice(&start.to_le_bytes());
            body.extend_from_slice(&pages.to_le_bytes());
        }
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(blake3::hash(&body).as_bytes());
        bytes.extend_from_slice(&body);
        let err = WorkingSet::decode(&bytes).unwrap_err();
        assert!(err.contains("range 1"), "{err}");
    }
}
