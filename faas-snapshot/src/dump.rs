//! The checkpoint: a stopped, single-threaded process → `snapshot.meta` +
//! `pages.img`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use faas_core::{SnapshotError, SnapshotInfo};

use crate::maps::{self, Vma};
use crate::meta::{
    AltStack, Area, FileId, META_FILE, Meta, MmMeta, PAGE, PAGES_FILE, SigActionMeta, Source,
    VdsoArea, hex_encode,
};
use crate::sys::{self, ptrace::Regs, ptrace::Tracee};

/// How to checkpoint.
#[derive(Debug, Clone, Copy, Default)]
pub struct DumpOptions {
    /// Kill the process after the checkpoint (otherwise it is left as it
    /// was: stopped if it had stopped itself, running otherwise).
    pub kill: bool,
}

/// The names of the kernel-provided areas that move with the vDSO.
pub(crate) const VDSO_NAMES: [&str; 3] = ["[vvar]", "[vvar_vclock]", "[vdso]"];

fn not_ready(pid: u32, why: impl Into<String>) -> SnapshotError {
    SnapshotError::NotSnapshotReady {
        pid,
        why: why.into(),
    }
}

/// An error writing the snapshot directory, naming it.
fn dir_err<'a>(dir: &'a Path, op: &'static str) -> impl Fn(io::Error) -> SnapshotError + 'a {
    move |e| SnapshotError::Invalid {
        dir: dir.to_path_buf(),
        what: format!("cannot {op}: {e}"),
    }
}

fn sys_err(op: &'static str) -> impl Fn(io::Error) -> SnapshotError {
    move |source| SnapshotError::Sys { op, source }
}

/// Checkpoints process `pid` into `dir` (created if missing; an existing
/// snapshot there is replaced only when the new one is complete).
pub fn dump(pid: u32, dir: &Path, opts: &DumpOptions) -> Result<SnapshotInfo, SnapshotError> {
    let proc = format!("/proc/{pid}");
    if !Path::new(&proc).exists() {
        return Err(not_ready(pid, "no such process"));
    }
    check_threads(pid)?;
    check_fds(pid)?;
    let tracee = Tracee::seize(pid).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) => not_ready(pid, format!("cannot trace it: {e} (are you root?)")),
        Some(libc::ESRCH) => not_ready(pid, "no such process"),
        _ => SnapshotError::Sys {
            op: "ptrace",
            source: e,
        },
    })?;
    // Threads or fds could have appeared before the stop.
    check_threads(pid)?;
    check_fds(pid)?;

    let regs = tracee.regs().map_err(sys_err("read registers"))?;
    let xstate = tracee.xstate().map_err(sys_err("read the xsave state"))?;
    check_xstate(pid, &xstate)?;
    let sigmask = tracee.sigmask().map_err(sys_err("read the signal mask"))?;
    let rseq = tracee
        .rseq()
        .map_err(sys_err("read the rseq registration"))?;
    let robust_list = sys::robust_list(pid).map_err(sys_err("get_robust_list"))?;

    let smaps = fs::read_to_string(format!("{proc}/smaps")).map_err(sys_err("read smaps"))?;
    let vmas = maps::parse_smaps(&smaps).map_err(|e| not_ready(pid, e))?;

    let vdso_vma = vmas.iter().find(|v| v.name == "[vdso]");
    let vdso_bytes = match vdso_vma {
        Some(v) => {
            let mut b = vec![0; v.len() as usize];
            sys::ptrace::read_memory(pid, v.start, &mut b).map_err(sys_err("read the vDSO"))?;
            b
        }
        None => return Err(not_ready(pid, "it has no vDSO")),
    };
    let syscall_insn = vdso_bytes
        .windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|i| vdso_vma.map_or(0, |v| v.start) + i as u64)
        .ok_or_else(|| not_ready(pid, "its vDSO has no syscall instruction to borrow"))?;

    let status = fs::read_to_string(format!("{proc}/status")).map_err(sys_err("read status"))?;
    let handled = status_mask(&status, "SigCgt:") | status_mask(&status, "SigIgn:");
    let remote = remote_state(&tracee, pid, &regs, syscall_insn, handled)?;
    // Every injected call ran with modified registers: put the originals back.
    tracee
        .set_regs(&regs)
        .map_err(sys_err("restore registers"))?;

    let stat = fs::read_to_string(format!("{proc}/stat")).map_err(sys_err("read stat"))?;
    let mut mm = parse_stat_mm(&stat).ok_or_else(|| not_ready(pid, "unreadable /proc/PID/stat"))?;
    mm.brk = remote.brk;
    let auxv = parse_auxv(&fs::read(format!("{proc}/auxv")).map_err(sys_err("read auxv"))?);
    let limits = fs::read_to_string(format!("{proc}/limits")).map_err(sys_err("read limits"))?;
    let exe = fs::read_link(format!("{proc}/exe")).map_err(sys_err("read the exe link"))?;
    let cwd = fs::read_link(format!("{proc}/cwd")).map_err(sys_err("read the cwd link"))?;

    fs::create_dir_all(dir).map_err(dir_err(dir, "create the snapshot directory"))?;
    let pages_tmp = dir.join(format!(".{PAGES_FILE}.tmp"));
    let pages = File::create(&pages_tmp).map_err(dir_err(dir, "create the page file"))?;
    let mut writer = PageWriter::new(pid, pages)?;
    let mut areas = Vec::new();
    let mut files: Vec<FileId> = Vec::new();
    let mut file_index: HashMap<(u64, u64), usize> = HashMap::new();
    let mut vdso = Vec::new();
    for v in &vmas {
        if VDSO_NAMES.contains(&v.name.as_str()) {
            vdso.push(VdsoArea {
                name: v.name.clone(),
                start: v.start,
                end: v.end,
            });
            continue;
        }
        if v.name == "[vsyscall]" {
            continue;
        }
        let source = area_source(pid, v, &mut writer, &mut files, &mut file_index)?;
        areas.push(Area {
            start: v.start,
            end: v.end,
            perms: perms(v),
            name: v.name.clone(),
            source,
            advice: advice(v),
        });
    }
    let (pages_saved, pages_len) = writer.finish()?;

    let meta = Meta {
        pid,
        exe: exe.to_string_lossy().into_owned(),
        cwd: cwd.to_string_lossy().into_owned(),
        kernel: sys::kernel(),
        xcr0: sys::xcr0(),
        vdso_hash: blake3::hash(&vdso_bytes).to_hex().to_string(),
        vdso,
        areas,
        files,
        regs: rewind_syscall(regs),
        xstate: hex_encode(&xstate),
        sigmask,
        sigactions: remote.sigactions,
        altstack: remote.altstack,
        rseq,
        robust_list,
        clear_tid: remote.clear_tid,
        mm,
        auxv,
        stack_limit: stack_limit(&limits),
        pages_len,
    };
    meta.validate()
        .map_err(|e| not_ready(pid, format!("inconsistent state: {e}")))?;
    let encoded = meta.encode();
    let meta_tmp = dir.join(format!(".{META_FILE}.tmp"));
    fs::write(&meta_tmp, &encoded).map_err(dir_err(dir, "write the metadata"))?;
    fs::rename(&pages_tmp, dir.join(PAGES_FILE)).map_err(dir_err(dir, "rename the page file"))?;
    fs::rename(&meta_tmp, dir.join(META_FILE)).map_err(dir_err(dir, "rename the metadata"))?;

    if opts.kill {
        tracee
            .kill()
            .map_err(sys_err("kill the checkpointed process"))?;
    } else {
        drop(tracee);
    }
    Ok(SnapshotInfo {
        dir: dir.to_path_buf(),
        pages: pages_saved,
        bytes: pages_len + encoded.len() as u64,
    })
}

fn check_threads(pid: u32) -> Result<(), SnapshotError> {
    let n = fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(sys_err("list threads"))?
        .count();
    if n != 1 {
        return Err(not_ready(
            pid,
            format!("it has {n} threads; only a single-threaded process can be checkpointed"),
        ));
    }
    Ok(())
}

fn check_fds(pid: u32) -> Result<(), SnapshotError> {
    let mut extra: Vec<(u32, String)> = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).map_err(sys_err("list fds"))? {
        let entry = entry.map_err(sys_err("list fds"))?;
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if fd > 3 {
            let target = fs::read_link(entry.path())
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "?".into());
            extra.push((fd, target));
        }
    }
    if extra.is_empty() {
        return Ok(());
    }
    extra.sort();
    let list: Vec<String> = extra.iter().map(|(fd, t)| format!("{fd} ({t})")).collect();
    Err(not_ready(
        pid,
        format!(
            "it holds fds {} besides 0-3; close them before the snapshot point",
            list.join(", ")
        ),
    ))
}

/// The xsave area must be in the standard format, with the features it
/// holds (ptrace puts the user xfeatures mask at offset 464, where the
/// signal frame's software bytes go) a subset of this CPU's XCR0.
fn check_xstate(pid: u32, x: &[u8]) -> Result<(), SnapshotError> {
    let features = x.get(464..472).map(|b| {
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        u64::from_le_bytes(w)
    });
    match features {
        Some(f) if x.len() >= 576 && f & 3 == 3 && f & !sys::xcr0() == 0 => Ok(()),
        _ => Err(not_ready(
            pid,
            format!(
                "its xsave area ({} bytes) is not in the expected format",
                x.len()
            ),
        )),
    }
}

/// A syscall interrupted by the stop is rewound, as the kernel would when the
/// process continued: -ERESTARTSYS, -ERESTARTNOINTR and -ERESTARTNOHAND
/// re-execute the `syscall` instruction; -ERESTART_RESTARTBLOCK becomes
/// -EINTR (the restart block is kernel state that does not survive).
pub(crate) fn rewind_syscall(mut r: Regs) -> Regs {
    const ERESTARTSYS: i64 = -512;
    const ERESTARTNOINTR: i64 = -513;
    const ERESTARTNOHAND: i64 = -514;
    const ERESTART_RESTARTBLOCK: i64 = -516;
    if (r.orig_rax as i64) < 0 {
        return r;
    }
    match r.rax as i64 {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
            r.rip -= 2;
            r.rax = r.orig_rax;
        }
        ERESTART_RESTARTBLOCK => r.rax = (-libc::EINTR) as i64 as u64,
        _ => {}
    }
    r
}

/// State only the process itself can tell (read with injected syscalls).
struct RemoteState {
    brk: u64,
    clear_tid: u64,
    altstack: AltStack,
    sigactions: Vec<SigActionMeta>,
}

fn remote_state(
    t: &Tracee,
    pid: u32,
    regs: &Regs,
    insn: u64,
    handled: u64,
) -> Result<RemoteState, SnapshotError> {
    const PR_GET_TID_ADDRESS: u64 = 40;
    // Scratch memory: the start of the page the stack pointer is in (mapped
    // and present), saved and put back afterwards.
    let scratch = regs.rsp & !(PAGE - 1);
    let mut saved = [0u8; 64];
    sys::ptrace::read_memory(pid, scratch, &mut saved).map_err(sys_err("read scratch memory"))?;
    let call = |nr: i64, args: [u64; 6]| -> Result<i64, SnapshotError> {
        t.inject(regs, insn, nr as u64, args)
            .map_err(sys_err("inject a system call"))
    };
    let read = |len: usize| -> Result<Vec<u8>, SnapshotError> {
        let mut b = vec![0; len];
        sys::ptrace::read_memory(pid, scratch, &mut b).map_err(sys_err("read scratch memory"))?;
        Ok(b)
    };
    let u64_at = |b: &[u8], o: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(w)
    };
    let failed = |what: &str, rc: i64| {
        not_ready(
            pid,
            format!(
                "{what} in the process failed: {}",
                io::Error::from_raw_os_error((-rc) as i32)
            ),
        )
    };

    let brk = call(libc::SYS_brk, [0; 6])?;
    if brk < 0 {
        return Err(failed("brk(0)", brk));
    }
    let rc = call(libc::SYS_prctl, [PR_GET_TID_ADDRESS, scratch, 0, 0, 0, 0])?;
    if rc < 0 {
        return Err(failed("prctl(PR_GET_TID_ADDRESS)", rc));
    }
    let clear_tid = u64_at(&read(8)?, 0);
    let rc = call(libc::SYS_sigaltstack, [0, scratch, 0, 0, 0, 0])?;
    if rc < 0 {
        return Err(failed("sigaltstack", rc));
    }
    let b = read(24)?;
    let altstack = AltStack {
        sp: u64_at(&b, 0),
        flags: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        size: u64_at(&b, 16),
    };
    let mut sigactions = Vec::new();
    for signo in 1..=64u64 {
        if handled & (1 << (signo - 1)) == 0 || signo == 9 || signo == 19 {
            continue;
        }
        let rc = call(libc::SYS_rt_sigaction, [signo, 0, scratch, 8, 0, 0])?;
        if rc < 0 {
            return Err(failed("rt_sigaction", rc));
        }
        let b = read(32)?;
        sigactions.push(SigActionMeta {
            signo,
            handler: u64_at(&b, 0),
            flags: u64_at(&b, 8),
            restorer: u64_at(&b, 16),
            mask: u64_at(&b, 24),
        });
    }
    sys::ptrace::write_memory(pid, scratch, &saved).map_err(sys_err("restore scratch memory"))?;
    Ok(RemoteState {
        brk: brk as u64,
        clear_tid,
        altstack,
        sigactions,
    })
}

/// A hex mask line of /proc/PID/status (`SigCgt:`, `SigIgn:`).
fn status_mask(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// The mm fields of /proc/PID/stat (fields 26-28 and 45-51).
pub(crate) fn parse_stat_mm(stat: &str) -> Option<MmMeta> {
    // The command name (field 2) may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3.
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(MmMeta {
        start_code: field(26)?,
        end_code: field(27)?,
        start_stack: field(28)?,
        start_data: field(45)?,
        end_data: field(46)?,
        start_brk: field(47)?,
        brk: 0,
        arg_start: field(48)?,
        arg_end: field(49)?,
        env_start: field(50)?,
        env_end: field(51)?,
    })
}

/// auxv words up to and including AT_NULL.
fn parse_auxv(bytes: &[u8]) -> Vec<u64> {
    let mut words = Vec::new();
    for pair in bytes.chunks_exact(16) {
        let mut k = [0u8; 8];
        let mut v = [0u8; 8];
        k.copy_from_slice(&pair[..8]);
        v.copy_from_slice(&pair[8..]);
        let (k, v) = (u64::from_le_bytes(k), u64::from_le_bytes(v));
        words.push(k);
        words.push(v);
        if k == 0 || words.len() >= crate::plan::AUXV_WORDS {
            break;
        }
    }
    words
}

/// The soft RLIMIT_STACK from /proc/PID/limits (8 MiB when unlimited or
/// unreadable).
fn stack_limit(limits: &str) -> u64 {
    const DEFAULT: u64 = 8 << 20;
    limits
        .lines()
        .find(|l| l.starts_with("Max stack size"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT)
        .min(256 << 20)
}

fn perms(v: &Vma) -> String {
    format!(
        "{}{}{}{}",
        if v.read { 'r' } else { '-' },
        if v.write { 'w' } else { '-' },
        if v.exec { 'x' } else { '-' },
        if v.shared { 's' } else { 'p' }
    )
}

fn advice(v: &Vma) -> u32 {
    if v.has_flag("wf") {
        libc::MADV_WIPEONFORK as u32
    } else if v.has_flag("dc") {
        libc::MADV_DONTFORK as u32
    } else {
        0
    }
}

/// Decides where an area's content comes from and saves what must be saved.
fn area_source(
    pid: u32,
    v: &Vma,
    writer: &mut PageWriter,
    files: &mut Vec<FileId>,
    file_index: &mut HashMap<(u64, u64), usize>,
) -> Result<Source, SnapshotError> {
    if v.name.ends_with(" (deleted)") {
        return Err(not_ready(pid, format!("it maps a deleted file: {v}")));
    }
    if v.has_flag("lo") {
        return Err(not_ready(pid, format!("it has locked memory (mlock): {v}")));
    }
    let flags = writer.pagemap(v)?;
    if !v.is_file() {
        if v.inode != 0 || v.shared {
            return Err(not_ready(pid, format!("it has shared memory: {v}")));
        }
        let wanted: Vec<bool> = flags
            .iter()
            .map(|f| f & (PM_PRESENT | PM_SWAP) != 0)
            .collect();
        return writer.save(v, &wanted);
    }
    let file = file_id(pid, v)?;
    let key = (file.dev, file.ino);
    let index = match file_index.get(&key) {
        Some(&i) => i,
        None => {
            files.push(file);
            file_index.insert(key, files.len() - 1);
            files.len() - 1
        }
    };
    // Private pages that no longer match the file (copy-on-write copies)
    // force the whole area into the page file.
    let private = !v.shared
        && flags
            .iter()
            .any(|f| (f & PM_PRESENT != 0 && f & PM_FILE == 0) || f & PM_SWAP != 0);
    if private {
        return writer.save(v, &vec![true; flags.len()]);
    }
    Ok(Source::File {
        file: index,
        offset: v.offset,
    })
}

fn file_id(pid: u32, v: &Vma) -> Result<FileId, SnapshotError> {
    let link = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
    let m = fs::metadata(&link).map_err(sys_err("stat a mapped file"))?;
    if m.ino() != v.inode {
        return Err(not_ready(
            pid,
            format!("the file behind {v} was replaced while checkpointing"),
        ));
    }
    Ok(FileId {
        path: v.name.clone(),
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

/// Writes saved pages into the page file: each saved area gets a range as
/// long as the area itself, so it maps with one mmap; pages not saved (never
/// touched, or all zeros at the ends of a run of touched ones) stay holes in
/// a sparse file.
struct PageWriter {
    pid: u32,
    file: File,
    pagemap: File,
    mem: File,
    cursor: u64,
    pages: u64,
    buf: Vec<u8>,
}

impl PageWriter {
    fn new(pid: u32, file: File) -> Result<PageWriter, SnapshotError> {
        Ok(PageWriter {
            pid,
            file,
            pagemap: File::open(format!("/proc/{pid}/pagemap")).map_err(sys_err("open pagemap"))?,
            mem: File::open(format!("/proc/{pid}/mem")).map_err(sys_err("open /proc/PID/mem"))?,
            cursor: 0,
            pages: 0,
            buf: Vec::new(),
        })
    }

    fn pagemap(&self, v: &Vma) -> Result<Vec<u64>, SnapshotError> {
        let n = (v.len() / PAGE) as usize;
        let mut raw = vec![0u8; n * 8];
        self.pagemap
            .read_exact_at(&mut raw, v.start / PAGE * 8)
            .map_err(sys_err("read pagemap"))?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .collect())
    }

    /// Saves the wanted pages of `v`; untouched areas need no page-file range.
    fn save(&mut self, v: &Vma, wanted: &[bool]) -> Result<Source, SnapshotError> {
        if !wanted.iter().any(|&w| w) {
            return Ok(Source::Zero);
        }
        let offset = self.cursor;
        self.cursor += v.len();
        let mut saved = 0;
        let mut i = 0;
        while i < wanted.len() {
            if !wanted[i] {
                i += 1;
                continue;
            }
            // A run of wanted pages, at most 1 MiB at a time.
            let mut j = i;
            while j < wanted.len() && wanted[j] && j - i < 256 {
                j += 1;
            }
            let addr = v.start + i as u64 * PAGE;
            let len = (j - i) * PAGE as usize;
            self.buf.resize(len, 0);
            if v.read {
                sys::ptrace::read_memory(self.pid, addr, &mut self.buf)
                    .map_err(sys_err("read process memory"))?;
            } else {
                // Unreadable to the process itself (PROT_NONE): /proc/PID/mem
                // reads it anyway.
                self.mem
                    .read_exact_at(&mut self.buf, addr)
                    .map_err(sys_err("read process memory"))?;
            }
            // The run in one write, its zero pages too: the page cache then
            // holds the file in large folios, which restored instances map
            // and unmap in batches (~45 % less kernel time per page than
            // 4 KiB folios; BENCHMARKS.md). Only runs of zero pages at its
            // ends stay holes.
            let data: Vec<bool> = self
                .buf
                .chunks_exact(PAGE as usize)
                .map(|page| page.iter().any(|&b| b != 0))
                .collect();
            if let (Some(first), Some(last)) =
                (data.iter().position(|&d| d), data.iter().rposition(|&d| d))
            {
                saved += data.iter().filter(|&&d| d).count() as u64;
                self.file
                    .write_all_at(
                        &self.buf[first * PAGE as usize..(last + 1) * PAGE as usize],
                        offset + (i + first) as u64 * PAGE,
                    )
                    .map_err(sys_err("write the page file"))?;
            }
            i = j;
        }
        self.pages += saved;
        Ok(Source::Pages {
            offset,
            pages: saved,
        })
    }

    /// Sets the page file's length (holes at the end included); returns
    /// (pages saved, file length).
    fn finish(self) -> Result<(u64, u64), SnapshotError> {
        self.file
            .set_len(self.cursor)
            .map_err(sys_err("size the page file"))?;
        Ok((self.pages, self.cursor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewinds_interrupted_syscalls_like_the_kernel() {
        let base = Regs {
            rip: 0x1002,
            orig_rax: 0,
            ..Regs::default()
        };
        for code in [-512i64, -513, -514] {
            let r = rewind_syscall(Regs {
                rax: code as u64,
                ..base
            });
            assert_eq!((r.rip, r.rax), (0x1000, 0), "{code}");
        }
        let r = rewind_syscall(Regs {
            rax: (-516i64) as u64,
            ..base
        });
        assert_eq!((r.rip, r.rax as i64), (0x1002, -4));
        // Not in a syscall, or a finished one: untouched.
        let r = rewind_syscall(Regs {
            rax: (-512i64) as u64,
            orig_rax: u64::MAX,
            ..base
        });
        assert_eq!(r.rip, 0x1002);
        let r = rewind_syscall(Regs { rax: 0, ..base });
        assert_eq!(r.rip, 0x1002);
    }

    #[test]
    fn stat_fields_survive_a_command_with_parentheses() {
        let mut stat = String::from("42 (a) b) S");
        for n in 4..=52 {
            stat.push_str(&format!(" {n}"));
        }
        let mm = parse_stat_mm(&stat).expect("parses");
        assert_eq!(mm.start_code, 26);
        assert_eq!(mm.start_stack, 28);
        assert_eq!(mm.env_end, 51);
        assert!(parse_stat_mm("42 (x) S 1 2").is_none());
    }

    #[test]
    fn limits_give_the_soft_stack_limit() {
        let l = "Limit                     Soft Limit           Hard Limit           Units\n\
                 Max stack size            8388608              unlimited            bytes\n";
        assert_eq!(stack_limit(l), 8388608);
        assert_eq!(
            stack_limit("Max stack size unlimited unlimited bytes"),
            8 << 20
        );
    }
}
