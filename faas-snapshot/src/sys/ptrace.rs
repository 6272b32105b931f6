//! ptrace and remote memory access for the checkpoint.

use std::io;

/// `struct user_regs_struct` (x86-64), as PTRACE_GETREGS returns it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Regs {
    pub(crate) r15: u64,
    pub(crate) r14: u64,
    pub(crate) r13: u64,
    pub(crate) r12: u64,
    pub(crate) rbp: u64,
    pub(crate) rbx: u64,
    pub(crate) r11: u64,
    pub(crate) r10: u64,
    pub(crate) r9: u64,
    pub(crate) r8: u64,
    pub(crate) rax: u64,
    pub(crate) rcx: u64,
    pub(crate) rdx: u64,
    pub(crate) rsi: u64,
    pub(crate) rdi: u64,
    pub(crate) orig_rax: u64,
    pub(crate) rip: u64,
    pub(crate) cs: u64,
    pub(crate) eflags: u64,
    pub(crate) rsp: u64,
    pub(crate) ss: u64,
    pub(crate) fs_base: u64,
    pub(crate) gs_base: u64,
    pub(crate) ds: u64,
    pub(crate) es: u64,
    pub(crate) fs: u64,
    pub(crate) gs: u64,
}

const PTRACE_SEIZE: libc::c_uint = 0x4206;
const PTRACE_INTERRUPT: libc::c_uint = 0x4207;
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
const NT_X86_XSTATE: usize = 0x202;

fn check(rc: libc::c_long, op: &'static str) -> io::Result<libc::c_long> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{op}: {e}")));
    }
    Ok(rc)
}

fn ptrace(req: libc::c_uint, pid: u32, addr: usize, data: usize) -> libc::c_long {
    // SAFETY: every caller passes either plain integers or pointers to locals
    // of the size the request writes (see each request's use below).
    unsafe { libc::ptrace(req, pid as libc::pid_t, addr, data) }
}

/// A process we are attached to with PTRACE_SEIZE; detaches on drop.
#[derive(Debug)]
pub(crate) struct Tracee {
    pid: u32,
    attached: bool,
}

impl Tracee {
    /// Seizes `pid` and stops it (PTRACE_INTERRUPT), waiting for the stop.
    pub(crate) fn seize(pid: u32) -> io::Result<Tracee> {
        check(ptrace(PTRACE_SEIZE, pid, 0, 0), "PTRACE_SEIZE")?;
        let t = Tracee {
            pid,
            attached: true,
        };
        check(ptrace(PTRACE_INTERRUPT, pid, 0, 0), "PTRACE_INTERRUPT")?;
        t.wait_stop()?;
        Ok(t)
    }

    fn wait_stop(&self) -> io::Result<i32> {
        let mut status = 0;
        loop {
            // SAFETY: waitpid writes the status to the local.
            let rc = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut status, libc::__WALL) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(io::Error::new(e.kind(), format!("waitpid: {e}")));
            }
            break;
        }
        if !libc::WIFSTOPPED(status) {
            return Err(io::Error::other(format!(
                "the process ended while being checkpointed (wait status {status:#x})"
            )));
        }
        Ok(status)
    }

    pub(crate) fn regs(&self) -> io::Result<Regs> {
        let mut r = Regs::default();
        check(
            ptrace(libc::PTRACE_GETREGS, self.pid, 0, &raw mut r as usize),
            "PTRACE_GETREGS",
        )?;
        Ok(r)
    }

    pub(crate) fn set_regs(&self, r: &Regs) -> io::Result<()> {
        check(
            ptrace(libc::PTRACE_SETREGS, self.pid, 0, r as *const Regs as usize),
            "PTRACE_SETREGS",
        )?;
        Ok(())
    }

    /// The full xsave area (NT_X86_XSTATE), in the standard format.
    pub(crate) fn xstate(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        check(
            ptrace(
                libc::PTRACE_GETREGSET,
                self.pid,
                NT_X86_XSTATE,
                &raw mut iov as usize,
            ),
            "PTRACE_GETREGSET(NT_X86_XSTATE)",
        )?;
        buf.truncate(iov.iov_len);
        Ok(buf)
    }

    pub(crate) fn sigmask(&self) -> io::Result<u64> {
        let mut mask: u64 = 0;
        check(
            ptrace(PTRACE_GETSIGMASK, self.pid, 8, &raw mut mask as usize),
            "PTRACE_GETSIGMASK",
        )?;
        Ok(mask)
    }

    /// The rseq registration: (address, length, signature), or None.
    pub(crate) fn rseq(&self) -> io::Result<Option<(u64, u32, u32)>> {
        #[repr(C)]
        #[derive(Default)]
        struct RseqConfig {
            ptr: u64,
            len: u32,
            sig: u32,
            flags: u32,
            pad: u32,
        }
        let mut c = RseqConfig::default();
        check(
            ptrace(
                PTRACE_GET_RSEQ_CONFIGURATION,
                self.pid,
                std::mem::size_of::<RseqConfig>(),
                &raw mut c as usize,
            ),
            "PTRACE_GET_RSEQ_CONFIGURATION",
        )?;
        Ok((c.ptr != 0).then_some((c.ptr, c.len, c.sig)))
    }

    /// Runs one system call in the tracee, executing the `syscall`
    /// instruction at `insn` with the given number and arguments, and
    /// returns its result. The caller restores the registers afterwards.
    pub(crate) fn inject(
        &self,
        base: &Regs,
        insn: u64,
        nr: u64,
        args: [u64; 6],
    ) -> io::Result<i64> {
        let mut r = *base;
        r.rip = insn;
        r.rax = nr;
        r.orig_rax = u64::MAX;
        r.rdi = args[0];
        r.rsi = args[1];
        r.rdx = args[2];
        r.r10 = args[3];
        r.r8 = args[4];
        r.r9 = args[5];
        self.set_regs(&r)?;
        // A stop that is not our single-step trap (a group stop still being
        // reported, an interrupt's event stop) leaves the instruction
        // unexecuted: step again.
        for _ in 0..8 {
            check(
                ptrace(libc::PTRACE_SINGLESTEP, self.pid, 0, 0),
                "PTRACE_SINGLESTEP",
            )?;
            let status = self.wait_stop()?;
            let event = (status >> 16) & 0xff;
            if libc::WSTOPSIG(status) == libc::SIGTRAP && event == 0 {
                break;
            }
            if event == 0 && libc::WSTOPSIG(status) != libc::SIGSTOP {
                return Err(io::Error::other(format!(
                    "an injected system call stopped with signal {}",
                    libc::WSTOPSIG(status)
                )));
            }
        }
        let after = self.regs()?;
        if after.rip != insn + 2 {
            return Err(io::Error::other(format!(
                "an injected system call did not complete (rip {:#x}, expected {:#x})",
                after.rip,
                insn + 2
            )));
        }
        Ok(after.rax as i64)
    }

    /// Kills the tracee and waits until it is dead. A child of ours is left
    /// for its owner to reap (its `Child::wait` must still work); any other
    /// process is waited for, which hands its exit on to its real parent.
    pub(crate) fn kill(mut self) -> io::Result<()> {
        // SAFETY: kill(2) takes plain integers.
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        check(rc.into(), "kill")?;
        // SAFETY: getpid takes nothing.
        let me = unsafe { libc::getpid() } as u32;
        let ours = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|s| {
                let rest = &s[s.rfind(')')? + 1..];
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            })
            == Some(me);
        let flags = libc::WEXITED | libc::__WALL | if ours { libc::WNOWAIT } else { 0 };
        loop {
            // SAFETY: siginfo_t is plain data that waitid fills.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid writes only `info`.
            let rc = unsafe { libc::waitid(libc::P_PID, self.pid as libc::id_t, &mut info, flags) };
            if rc == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break;
            }
        }
        self.attached = false;
        Ok(())
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if self.attached {
            // A seized process that was running resumes; one that had stopped
            // itself stays in its group stop.
            ptrace(libc::PTRACE_DETACH, self.pid, 0, 0);
        }
    }
}

/// Reads `dst.len()` bytes of process `pid` at `addr`.
pub(crate) fn read_memory(pid: u32, addr: u64, dst: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < dst.len() {
        let local = libc::iovec {
            iov_base: dst[done..].as_mut_ptr().cast(),
            iov_len: dst.len() - done,
        };
        let remote = libc::iovec {
            iov_base: (addr + done as u64) as *mut libc::c_void,
            iov_len: dst.len() - done,
        };
        // SAFETY: the local iovec covers the unfilled part of `dst`; the
        // remote one is only read by the kernel, in the other process.
        let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        if n <= 0 {
            let e = if n == 0 {
                io::Error::from(io::ErrorKind::UnexpectedEof)
            } else {
                io::Error::last_os_error()
            };
            return Err(io::Error::new(
                e.kind(),
                format!("process_vm_readv at {:#x}: {e}", addr + done as u64),
            ));
        }
        done += n as usize;
    }
    Ok(())
}

/// Writes `src` into process `pid` at `addr`.
pub(crate) fn write_memory(pid: u32, addr: u64, src: &[u8]) -> io::Result<()> {
    let local = libc::iovec {
        iov_base: src.as_ptr() as *mut libc::c_void,
        iov_len: src.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: src.len(),
    };
    // SAFETY: the kernel only reads the local buffer and writes the other
    // process's memory.
    let n = unsafe { libc::process_vm_writev(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n < 0 || n as usize != src.len() {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("process_vm_writev at {addr:#x}: {e}"),
        ));
    }
    Ok(())
}

/// A running process we are attached to (PTRACE_SEIZE, without stopping
/// it) so that it stops at its exit, with its memory still mapped
/// (`PTRACE_O_TRACEEXIT`). Must be waited for by the thread that attached.
/// Detaches on drop: a process stopped at its exit then finishes exiting,
/// and its real parent sees it.
#[derive(Debug)]
pub(crate) struct ExitWatch {
    pid: u32,
}

impl ExitWatch {
    /// Attaches to `pid` without stopping it.
    pub(crate) fn seize(pid: u32) -> io::Result<ExitWatch> {
        const PTRACE_O_TRACEEXIT: usize = 0x40;
        check(
            ptrace(PTRACE_SEIZE, pid, 0, PTRACE_O_TRACEEXIT),
            "PTRACE_SEIZE",
        )?;
        Ok(ExitWatch { pid })
    }

    /// Waits until the process stops at its exit, letting every other stop
    /// go on (with its signal). An error when it ended without that stop
    /// (killed): then it is left unreaped for its parent (which may be
    /// this process, whose own wait must still see it).
    pub(crate) fn wait_exit(&self) -> io::Result<()> {
        const PTRACE_EVENT_EXIT: i32 = 6;
        loop {
            // First look without consuming anything: an exit stays for the
            // parent to reap.
            // SAFETY: siginfo_t is plain data that waitid fills.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let flags = libc::WEXITED | libc::WSTOPPED | libc::WNOWAIT | libc::__WALL;
            // SAFETY: waitid writes only `info`.
            let rc = unsafe { libc::waitid(libc::P_PID, self.pid as libc::id_t, &mut info, flags) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(io::Error::new(e.kind(), format!("waitid: {e}")));
            }
            if matches!(
                info.si_code,
                libc::CLD_EXITED | libc::CLD_KILLED | libc::CLD_DUMPED
            ) {
                return Err(io::Error::other(
                    "the process ended without stopping at its exit",
                ));
            }
            // A stop: consume it.
            let mut status = 0;
            // SAFETY: waitpid writes the status to the local.
            let rc = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut status, libc::__WALL) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(io::Error::new(e.kind(), format!("waitpid: {e}")));
            }
            if !libc::WIFSTOPPED(status) {
                return Err(io::Error::other(format!(
                    "the process ended without stopping at its exit (wait status {status:#x})"
                )));
            }
            let event = status >> 16;
            if event == PTRACE_EVENT_EXIT {
                return Ok(());
            }
            // A signal-delivery stop passes its signal on; event and group
            // stops resume without one.
            let sig = if event == 0 {
                libc::WSTOPSIG(status)
            } else {
                0
            };
            ptrace(libc::PTRACE_CONT, self.pid, 0, sig as usize);
        }
    }
}

impl Drop for ExitWatch {
    fn drop(&mut self) {
        ptrace(libc::PTRACE_DETACH, self.pid, 0, 0);
    }
}
