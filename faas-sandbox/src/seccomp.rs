//! Seccomp profiles: default-deny syscall allowlists compiled to BPF by
//! `seccompiler`.
//!
//! A profile is versioned JSON data (`profiles/*.json` in this crate, or a
//! user's file of the same format):
//!
//! ```json
//! {
//!   "version": 1,
//!   "name": "native",
//!   "comment": "where the list comes from",
//!   "allow": ["read", "write", "clone", "..."],
//!   "allow_with_args": [
//!     { "syscall": "ioctl", "args": [{ "index": 1, "type": "dword", "op": "eq", "val": 21505 }] }
//!   ]
//! }
//! ```
//!
//! `allow` lists syscalls allowed whatever their arguments; `allow_with_args`
//! holds seccompiler rules (see seccompiler's `docs/json_format.md`): the
//! syscall is allowed when all conditions of one of its rules hold.
//!
//! [`SeccompFilters::compile`] turns a profile into two programs, installed
//! in this order:
//!
//! ```text
//! programs()[0]  guard      arch != x86_64 → kill process
//!                           nr has the x32 bit (0x40000000) → kill process
//!                           clone3 → errno ENOSYS        (libcs fall back to clone)
//!                           anything else → allow        (the allowlist decides)
//! programs()[1]  allowlist  arch != x86_64 → kill process
//!                           the profile's syscalls, execve, execveat, clone3 → allow
//!                           clone → allow only without any CLONE_NEW* flag
//!                           anything else → errno EPERM
//! ```
//!
//! The kernel runs every installed filter and takes the most severe result
//! (kill > trap > errno > ... > allow); between two results of the same
//! action, the most recently installed filter's data wins. So:
//!
//! - clone3: the allowlist allows it, the guard says ENOSYS → ENOSYS.
//! - a syscall outside the profile: the allowlist says EPERM, the guard
//!   allows → EPERM.
//! - an x32 number: the guard kills (the allowlist, which compares exact
//!   x86_64 numbers, would have said EPERM).
//!
//! The allowlist is seccompiler's program for the profile, laid out again
//! behind a binary search on the syscall number (`binary_search_layout`:
//! the same chains, the same decisions — a test runs both programs on
//! every syscall number and a spread of arguments). seccompiler's linear
//! chain made the kernel's install work (JIT, and the action cache's
//! emulation of the program for every syscall number) 210–340 µs per
//! sandbox; the tree installs in ~60 µs.
//!
//! The guard goes first because installing a filter is itself a syscall
//! (`seccomp`): with the allowlist in place first, installing the guard
//! would need `seccomp` in every profile.
//!
//! [`DENIED_SYSCALLS`] are denied by every profile: [`SeccompFilters::compile`]
//! rejects a profile that allows one of them.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use seccompiler::{BpfProgram, TargetArch, sock_filter};
use serde::Deserialize;

/// The profile format version this crate reads.
pub const PROFILE_VERSION: u32 = 1;

/// Syscalls that no profile may allow; they return EPERM in every sandbox.
pub const DENIED_SYSCALLS: &[&str] = &[
    "ptrace",
    "mount",
    "umount2",
    "unshare",
    "setns",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "userfaultfd",
    "process_vm_readv",
    "process_vm_writev",
    "open_by_handle_at",
    "name_to_handle_at",
    "pivot_root",
    "chroot",
    "swapon",
    "reboot",
];

/// Syscalls every compiled allowlist allows, whatever the profile says: the
/// sandbox calls `execve`/`execveat` right after installing the filters, and
/// `clone3` is answered with ENOSYS by the guard filter.
pub const ALWAYS_ALLOWED: &[&str] = &["execve", "execveat", "clone3"];

/// The `CLONE_NEW*` flags: `clone` is allowed only when its flags (argument
/// 0, low 32 bits, which is all the kernel reads) have none of these bits.
///
/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC |
/// CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWTIME`.
/// `CLONE_NEWTIME` (0x80) overlaps the exit-signal byte of `clone`; exit
/// signals are below 65, so no valid call has that bit.
pub const CLONE_NEW_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | 0x80) as u64;

/// Bit set in the syscall numbers of the x32 ABI (`__X32_SYSCALL_BIT`).
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const NATIVE_JSON: &str = include_str!("../profiles/native.json");
const PYTHON_JSON: &str = include_str!("../profiles/python.json");
const NODE_JSON: &str = include_str!("../profiles/node.json");

/// Which syscall allowlist a sandbox gets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SeccompProfile {
    /// A static binary linked against faas-guest (`profiles/native.json`).
    Native,
    /// CPython 3 (`profiles/python.json`).
    Python,
    /// Node.js (`profiles/node.json`).
    Node,
    /// A user's profile file in the same JSON format.
    File(PathBuf),
}

impl SeccompProfile {
    /// The JSON text of a built-in profile; `None` for [`SeccompProfile::File`].
    pub fn builtin_json(&self) -> Option<&'static str> {
        match self {
            SeccompProfile::Native => Some(NATIVE_JSON),
            SeccompProfile::Python => Some(PYTHON_JSON),
            SeccompProfile::Node => Some(NODE_JSON),
            SeccompProfile::File(_) => None,
        }
    }
}

impl FromStr for SeccompProfile {
    type Err = std::convert::Infallible;

    /// `native`, `python`, `node`, or else a path to a profile file.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "native" => SeccompProfile::Native,
            "python" => SeccompProfile::Python,
            "node" => SeccompProfile::Node,
            path => SeccompProfile::File(PathBuf::from(path)),
        })
    }
}

impl fmt::Display for SeccompProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SeccompProfile::Native => f.write_str("native"),
            SeccompProfile::Python => f.write_str("python"),
            SeccompProfile::Node => f.write_str("node"),
            SeccompProfile::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Why a profile could not be compiled. Every variant names the profile
/// (`native`, `python`, `node` or the file's path).
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The profile file could not be read.
    #[error("seccomp profile {profile}: cannot read it")]
    Read {
        /// The profile.
        profile: SeccompProfile,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a profile document (bad JSON, a missing or unknown
    /// field).
    #[error("seccomp profile {profile}: malformed: {cause}")]
    Malformed {
        /// The profile.
        profile: SeccompProfile,
        /// What the JSON parser said (line and column included).
        cause: serde_json::Error,
    },
    /// The profile's `version` is not [`PROFILE_VERSION`].
    #[error(
        "seccomp profile {profile}: version {found} is not supported (this build reads version {supported})"
    )]
    Version {
        /// The profile.
        profile: SeccompProfile,
        /// The version it declares.
        found: u32,
        /// The version this crate reads.
        supported: u32,
    },
    /// The profile allows a syscall of [`DENIED_SYSCALLS`].
    #[error("seccomp profile {profile}: allows {syscall}, which every sandbox denies")]
    Denied {
        /// The profile.
        profile: SeccompProfile,
        /// The syscall.
        syscall: String,
    },
    /// The profile gives `clone` argument rules; its rule is fixed (no
    /// `CLONE_NEW*` flag), so `clone` may only be listed in `allow`.
    #[error(
        "seccomp profile {profile}: clone may only be listed in \"allow\"; its argument rule (no CLONE_NEW* flag) is fixed"
    )]
    CloneRule {
        /// The profile.
        profile: SeccompProfile,
    },
    /// A syscall is listed both in `allow` and in `allow_with_args`.
    #[error(
        "seccomp profile {profile}: {syscall} is listed both in \"allow\" and in \"allow_with_args\""
    )]
    Conflict {
        /// The profile.
        profile: SeccompProfile,
        /// The syscall.
        syscall: String,
    },
    /// seccompiler rejected the rules (an unknown syscall name, a bad
    /// argument condition, a program over the BPF size limit).
    #[error("seccomp profile {profile}: {cause}")]
    Compile {
        /// The profile.
        profile: SeccompProfile,
        /// What seccompiler said.
        cause: seccompiler::Error,
    },
    /// Profiles use x86_64 syscall numbers; this is another architecture.
    #[error("seccomp profile {profile}: profiles are for x86_64, this build is for {arch}")]
    UnsupportedArch {
        /// The profile.
        profile: SeccompProfile,
        /// The architecture of this build.
        arch: &'static str,
    },
}

/// Installing [`SeccompFilters`] in the calling thread failed.
#[derive(Debug, thiserror::Error)]
#[error("installing seccomp program {index} of {count}")]
pub struct SeccompInstallError {
    /// Index of the program that failed in [`SeccompFilters::programs`].
    pub index: usize,
    /// How many programs there are.
    pub count: usize,
    /// The cause (`prctl(PR_SET_NO_NEW_PRIVS)` or `seccomp(2)` failed).
    #[source]
    pub source: seccompiler::Error,
}

impl SeccompInstallError {
    /// The OS error behind the failure, for a `pre_exec` hook that must
    /// return an `io::Error`.
    pub fn into_io(self) -> std::io::Error {
        match self.source {
            seccompiler::Error::Prctl(e) | seccompiler::Error::Seccomp(e) => e,
            _ => std::io::Error::from_raw_os_error(libc::EINVAL),
        }
    }
}

/// The compiled BPF programs of one profile, in install order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompFilters {
    programs: Vec<BpfProgram>,
    /// The syscalls allowed whatever their arguments.
    allowed: BTreeSet<String>,
}

/// The profile document (version 1).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileDoc {
    version: u32,
    #[serde(default)]
    #[allow(dead_code)] // Informational; part of the format.
    name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)] // Informational; part of the format.
    comment: Option<String>,
    allow: Vec<String>,
    #[serde(default)]
    allow_with_args: Vec<ArgRule>,
}

/// One seccompiler rule: `syscall` allowed when every condition holds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArgRule {
    syscall: String,
    #[serde(default)]
    comment: Option<String>,
    args: Vec<serde_json::Value>,
}

impl SeccompFilters {
    /// Compiles `profile` (reading its file for [`SeccompProfile::File`]).
    ///
    /// # Errors
    ///
    /// A [`SeccompError`] naming the profile: the file cannot be read or is
    /// malformed, its version is unknown, it allows a syscall of
    /// [`DENIED_SYSCALLS`], it names an unknown syscall, it gives `clone`
    /// argument rules, or this is not an x86_64 build.
    pub fn compile(profile: &SeccompProfile) -> Result<SeccompFilters, SeccompError> {
        if !cfg!(target_arch = "x86_64") {
            return Err(SeccompError::UnsupportedArch {
                profile: profile.clone(),
                arch: std::env::consts::ARCH,
            });
        }
        let text = match (profile.builtin_json(), profile) {
            (Some(json), _) => json.to_owned(),
            (None, SeccompProfile::File(path)) => {
                std::fs::read_to_string(path).map_err(|source| SeccompError::Read {
                    profile: profile.clone(),
                    source,
                })?
            }
            (None, _) => String::new(),
        };
        let doc: ProfileDoc =
            serde_json::from_str(&text).map_err(|cause| SeccompError::Malformed {
                profile: profile.clone(),
                cause,
            })?;
        let mut allowed: BTreeSet<String> = doc.allow.iter().cloned().collect();
        allowed.extend(ALWAYS_ALLOWED.iter().map(|s| (*s).to_owned()));
        let linear = allowlist_program(profile, doc)?;
        let allowlist = binary_search_layout(&linear).unwrap_or(linear);
        Ok(SeccompFilters {
            programs: vec![guard_program(), allowlist],
            allowed,
        })
    }

    /// Whether every one of `syscalls` is allowed whatever its arguments
    /// (`clone` only without `CLONE_NEW*` flags: never "whatever").
    pub fn allows_all(&self, syscalls: &[&str]) -> bool {
        syscalls
            .iter()
            .all(|s| *s != "clone" && self.allowed.contains(*s))
    }

    /// The BPF programs, in the order they must be installed, each with
    /// `seccomp(SECCOMP_SET_MODE_FILTER)` (after `PR_SET_NO_NEW_PRIVS`).
    pub fn programs(&self) -> &[Vec<sock_filter>] {
        &self.programs
    }

    /// Installs the programs in the calling thread, in order, setting
    /// `PR_SET_NO_NEW_PRIVS` first. Allocates nothing on success, so it may
    /// be called between `fork` and `exec`.
    ///
    /// # Errors
    ///
    /// `prctl` or `seccomp` failed; programs before the failing one stay
    /// installed.
    pub fn install(&self) -> Result<(), SeccompInstallError> {
        for (index, program) in self.programs.iter().enumerate() {
            seccompiler::apply_filter(program).map_err(|source| SeccompInstallError {
                index,
                count: self.programs.len(),
                source,
            })?;
        }
        Ok(())
    }
}

/// Checks the profile and compiles its allowlist with seccompiler.
fn allowlist_program(
    profile: &SeccompProfile,
    doc: ProfileDoc,
) -> Result<BpfProgram, SeccompError> {
    if doc.version != PROFILE_VERSION {
        return Err(SeccompError::Version {
            profile: profile.clone(),
            found: doc.version,
            supported: PROFILE_VERSION,
        });
    }
    let denied = |name: &str| DENIED_SYSCALLS.contains(&name);
    let mut allow: BTreeSet<&str> = BTreeSet::new();
    for name in &doc.allow {
        if denied(name) {
            return Err(SeccompError::Denied {
                profile: profile.clone(),
                syscall: name.clone(),
            });
        }
        allow.insert(name);
    }
    for rule in &doc.allow_with_args {
        if denied(&rule.syscall) {
            return Err(SeccompError::Denied {
                profile: profile.clone(),
                syscall: rule.syscall.clone(),
            });
        }
        if rule.syscall == "clone" {
            return Err(SeccompError::CloneRule {
                profile: profile.clone(),
            });
        }
        // seccompiler would let the conditional rule silently replace the
        // unconditional one.
        if allow.contains(rule.syscall.as_str()) {
            return Err(SeccompError::Conflict {
                profile: profile.clone(),
                syscall: rule.syscall.clone(),
            });
        }
    }
    allow.extend(ALWAYS_ALLOWED);

    let mut rules = Vec::with_capacity(allow.len() + doc.allow_with_args.len());
    for name in allow {
        if name == "clone" {
            rules.push(serde_json::json!({
                "syscall": "clone",
                "args": [{
                    "index": 0,
                    "type": "dword",
                    "op": { "masked_eq": CLONE_NEW_FLAGS },
                    "val": 0,
                }],
            }));
        } else {
            rules.push(serde_json::json!({ "syscall": name }));
        }
    }
    for rule in doc.allow_with_args {
        let mut r = serde_json::json!({ "syscall": rule.syscall, "args": rule.args });
        if let (Some(c), Some(obj)) = (rule.comment, r.as_object_mut()) {
            obj.insert("comment".into(), c.into());
        }
        rules.push(r);
    }
    let json = serde_json::json!({
        "allowlist": {
            "mismatch_action": { "errno": libc::EPERM },
            "match_action": "allow",
            "filter": rules,
        }
    });
    let text = json.to_string();
    let compile_err = |cause| SeccompError::Compile {
        profile: profile.clone(),
        cause,
    };
    let mut map =
        seccompiler::compile_from_json(text.as_bytes(), TargetArch::x86_64).map_err(compile_err)?;
    // compile_from_json returns one program per key of the document, and the
    // document above has exactly the key "allowlist".
    Ok(map.remove("allowlist").unwrap_or_default())
}

/// Syscalls per leaf of [`binary_search_layout`]'s tree.
const LEAF: usize = 8;

/// seccompiler's program, laid out again behind a binary search on the
/// syscall number. Same decisions, far cheaper to install.
///
/// seccompiler emits one chain per syscall, in ascending order, and a
/// syscall number walks every chain before its own: two instructions per
/// allowed syscall that does not match. Installing a filter costs the
/// kernel, besides the JIT, an emulation of the program for every syscall
/// number (the seccomp action cache, built with interrupts off), so a
/// linear allowlist of 100–130 syscalls took 210–340 µs to install — on
/// the request path of every instance restored ahead of its request.
///
/// The chains themselves are kept as seccompiler made them: each is cut out
/// (it starts with `jeq NR`, and a number that is not NR leaves it through
/// its `ja`s to the next chain) and entered only with that NR loaded, where
/// it ends in a `ret` on every path. A chain that allows NR whatever the
/// arguments (`jeq NR; ja 1; ja 2; ret MATCH; ret MISMATCH`) becomes a jump
/// to one shared `ret MATCH`. Between them sits a balanced tree of `jge`
/// (each with a `ja` to its right half) down to leaves of [`LEAF`]
/// `jeq`s. `None` when the program does not have the shape described
/// (then the linear program is used as it is).
fn binary_search_layout(p: &[sock_filter]) -> Option<Vec<sock_filter>> {
    // The prologue: the arch check, up to and including `ld nr`.
    let ld_nr = p
        .iter()
        .position(|i| i.code == BPF_LD_W_ABS && i.k == SECCOMP_DATA_NR)?;
    let last = p.last()?;
    if last.code != BPF_RET_K {
        return None;
    }
    let mismatch = last.k;
    // (nr, Some(chain) or None for "allowed whatever the arguments").
    let mut chains: Vec<(u32, Option<&[sock_filter]>)> = Vec::new();
    let mut matched = None;
    let mut at = ld_nr + 1;
    while at < p.len() - 1 {
        let head = &p[at];
        if head.code != BPF_JMP_JEQ_K || head.jt != 0 {
            return None;
        }
        // Where a number other than this chain's goes: the next chain.
        let mut next = at + 1 + usize::from(head.jf);
        while let Some(i) = p.get(next).filter(|i| i.code == BPF_JMP_JA) {
            next = next.checked_add(1 + usize::try_from(i.k).ok()?)?;
        }
        let chain = p.get(at..next)?;
        if chains.last().is_some_and(|(nr, _)| *nr >= head.k) || chain.len() < 3 {
            return None;
        }
        let plain = [
            jump(BPF_JMP_JEQ_K, head.k, 0, 1),
            stmt(BPF_JMP_JA, 1),
            stmt(BPF_JMP_JA, 2),
        ];
        if chain.len() == 5
            && chain[..3] == plain
            && chain[3].code == BPF_RET_K
            && chain[4] == stmt(BPF_RET_K, mismatch)
            && matched.is_none_or(|m| m == chain[3].k)
        {
            matched = Some(chain[3].k);
            chains.push((head.k, None));
        } else {
            chains.push((head.k, Some(chain)));
        }
        at = next;
    }
    if at != p.len() - 1 || chains.is_empty() {
        return None;
    }
    let mut out = p[..=ld_nr].to_vec();
    tree(&chains, mismatch, matched, &mut out)?;
    Some(out)
}

/// Appends the search over `chains` (see [`binary_search_layout`]).
fn tree(
    chains: &[(u32, Option<&[sock_filter]>)],
    mismatch: u32,
    matched: Option<u32>,
    out: &mut Vec<sock_filter>,
) -> Option<()> {
    if chains.len() > LEAF {
        let (left, right) = chains.split_at(chains.len() / 2);
        // Numbers from the right half's first on go right.
        out.push(jump(BPF_JMP_JGE_K, right[0].0, 0, 1));
        let ja = out.len();
        out.push(stmt(BPF_JMP_JA, 0));
        tree(left, mismatch, matched, out)?;
        out[ja].k = u32::try_from(out.len() - ja - 1).ok()?;
        return tree(right, mismatch, matched, out);
    }
    // A leaf: one `jeq` per syscall, the mismatch, the shared match, the
    // chains with arguments.
    let start = out.len();
    let shared = start + chains.len() + 1;
    let mut next_chain = shared + usize::from(matched.is_some());
    let mut targets = Vec::with_capacity(chains.len());
    for (_, chain) in chains {
        match chain {
            None => targets.push(shared),
            Some(c) => {
                targets.push(next_chain);
                next_chain += c.len();
            }
        }
    }
    for (i, ((nr, _), target)) in chains.iter().zip(&targets).enumerate() {
        let jt = u8::try_from(target - (start + i + 1)).ok()?;
        out.push(jump(BPF_JMP_JEQ_K, *nr, jt, 0));
    }
    out.push(stmt(BPF_RET_K, mismatch));
    if let Some(m) = matched {
        out.push(stmt(BPF_RET_K, m));
    }
    for (_, chain) in chains {
        if let Some(c) = chain {
            out.extend_from_slice(c);
        }
    }
    Some(())
}

// Classic BPF opcodes (linux/bpf_common.h).
// BPF_LD | BPF_W | BPF_ABS = 0x00 | 0x00 | 0x20.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JMP_JSET_K: u16 = 0x05 | 0x40;
const BPF_RET_K: u16 = 0x06;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JMP_JGE_K: u16 = 0x05 | 0x30;
// Offsets in struct seccomp_data.
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
/// `AUDIT_ARCH_X86_64` (EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE).
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The guard program (see the module docs): kills on a foreign arch or an
/// x32 number, answers clone3 with ENOSYS, allows the rest.
fn guard_program() -> BpfProgram {
    let clone3 = libc::SYS_clone3 as u32;
    vec![
        stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARCH),
        jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR),
        jump(BPF_JMP_JSET_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        jump(BPF_JMP_JEQ_K, clone3, 0, 1),
        stmt(BPF_RET_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn user_profile(json: &str) -> (tempfile::NamedTempFile, SeccompProfile) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(json.as_bytes()).unwrap();
        let p = SeccompProfile::File(f.path().to_owned());
        (f, p)
    }

    #[test]
    fn every_builtin_profile_compiles_to_guard_then_allowlist() {
        for p in [
            SeccompProfile::Native,
            SeccompProfile::Python,
            SeccompProfile::Node,
        ] {
            let f = SeccompFilters::compile(&p).unwrap();
            assert_eq!(f.programs().len(), 2, "{p}");
            assert_eq!(f.programs()[0], guard_program(), "{p}");
            // arch check + per allowed syscall a few instructions.
            assert!(f.programs()[1].len() > 50, "{p}");
        }
    }

    /// Runs a seccomp cBPF program (the instructions seccompiler and
    /// [`binary_search_layout`] emit) on one `struct seccomp_data`; returns
    /// the action and how many instructions ran.
    fn run_bpf(prog: &[sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> (u32, usize) {
        let word = |k: u32| -> u32 {
            match k {
                0 => nr,
                4 => arch,
                16..=63 => {
                    let a = args[((k - 16) / 8) as usize];
                    if (k - 16).is_multiple_of(8) {
                        a as u32
                    } else {
                        (a >> 32) as u32
                    }
                }
                _ => panic!("load of offset {k}"),
            }
        };
        let (mut a, mut pc, mut steps) = (0u32, 0usize, 0usize);
        loop {
            let i = &prog[pc];
            steps += 1;
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => a = word(i.k),
                BPF_RET_K => return (i.k, steps),
                BPF_JMP_JA => pc += i.k as usize,
                0x54 => a &= i.k, // BPF_ALU | BPF_AND | BPF_K
                code => {
                    let taken = match code {
                        BPF_JMP_JEQ_K => a == i.k,
                        BPF_JMP_JGE_K => a >= i.k,
                        0x25 => a > i.k, // BPF_JMP | BPF_JGT | BPF_K
                        BPF_JMP_JSET_K => a & i.k != 0,
                        c => panic!("opcode {c:#x}"),
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
            }
        }
    }

    #[test]
    fn the_binary_search_layout_decides_exactly_like_seccompilers_program() {
        let (_f, user) = user_profile(
            r#"{"version": 1, "allow": ["read", "write", "openat", "close", "futex"],
                "allow_with_args": [
                  {"syscall": "prctl", "args": [{"index": 0, "type": "dword", "op": "eq", "val": 15}]},
                  {"syscall": "prctl", "args": [{"index": 0, "type": "dword", "op": "eq", "val": 16}]},
                  {"syscall": "ioctl", "args": [{"index": 1, "type": "qword", "op": "le", "val": 21505},
                                                {"index": 2, "type": "qword", "op": {"masked_eq": 4096}, "val": 0}]},
                  {"syscall": "mmap", "args": [{"index": 3, "type": "qword", "op": "gt", "val": 4294967296}]},
                  {"syscall": "fcntl", "args": [{"index": 1, "type": "dword", "op": "ne", "val": 4}]},
                  {"syscall": "lseek", "args": [{"index": 2, "type": "dword", "op": "lt", "val": 3}]},
                  {"syscall": "getrandom", "args": [{"index": 2, "type": "dword", "op": "ge", "val": 1}]}
                ]}"#,
        );
        let values = [
            0u64,
            1,
            2,
            3,
            4,
            15,
            16,
            40,
            0x80,
            4096,
            21504,
            21505,
            21506,
            CLONE_NEW_FLAGS,
            libc::CLONE_VM as u64,
            1 << 32,
            (1 << 32) + 1,
            u64::MAX,
        ];
        for p in [
            SeccompProfile::Native,
            SeccompProfile::Python,
            SeccompProfile::Node,
            user.clone(),
        ] {
            let text = match (&p, p.builtin_json()) {
                (_, Some(json)) => json.to_owned(),
                (SeccompProfile::File(f), None) => std::fs::read_to_string(f).unwrap(),
                _ => unreachable!(),
            };
            let linear = allowlist_program(&p, serde_json::from_str(&text).unwrap()).unwrap();
            let tree = binary_search_layout(&linear).expect("seccompiler's shape");
            assert_eq!(SeccompFilters::compile(&p).unwrap().programs()[1], tree);
            let (mut linear_steps, mut tree_steps) = (0, 0);
            for nr in (0..600).chain([X32_SYSCALL_BIT, X32_SYSCALL_BIT + 1, u32::MAX]) {
                for arch in [AUDIT_ARCH_X86_64, 0x4000_0003] {
                    for (i, v) in values.iter().enumerate() {
                        let w = values[(i + 5) % values.len()];
                        let args = [*v, *v, *v, w, *v, w];
                        let (want, ls) = run_bpf(&linear, nr, arch, args);
                        let (got, ts) = run_bpf(&tree, nr, arch, args);
                        assert_eq!(got, want, "{p}: nr {nr} arch {arch:#x} args {args:?}");
                        linear_steps += ls;
                        tree_steps += ts;
                    }
                }
            }
            // Fewer steps for every profile; several times fewer for the
            // built-in profiles' 100+ syscalls.
            let factor = if p.builtin_json().is_some() { 3 } else { 2 };
            eprintln!("{p}: {linear_steps} steps linear, {tree_steps} as a tree");
            assert!(
                tree_steps * factor < linear_steps,
                "{p}: {tree_steps} vs {linear_steps} steps"
            );
        }
    }

    #[test]
    fn the_builtin_profiles_let_instances_restored_ahead_filter_before_they_wait() {
        for p in [
            SeccompProfile::Native,
            SeccompProfile::Python,
            SeccompProfile::Node,
        ] {
            let f = SeccompFilters::compile(&p).unwrap();
            assert!(f.allows_all(faas_snapshot::PARKED_SYSCALLS), "{p}");
            assert!(!f.allows_all(&["clone"]), "{p}: clone has a rule");
        }
        let (_f, user) = user_profile(r#"{"version": 1, "allow": ["read", "write"]}"#);
        let f = SeccompFilters::compile(&user).unwrap();
        assert!(!f.allows_all(faas_snapshot::PARKED_SYSCALLS));
        assert!(f.allows_all(&["read", "execve"]));
    }

    #[test]
    fn builtin_profiles_declare_the_current_version_and_their_name() {
        for p in [
            SeccompProfile::Native,
            SeccompProfile::Python,
            SeccompProfile::Node,
        ] {
            let doc: ProfileDoc = serde_json::from_str(p.builtin_json().unwrap()).unwrap();
            assert_eq!(doc.version, PROFILE_VERSION);
            assert_eq!(doc.name.as_deref(), Some(p.to_string().as_str()));
            for d in DENIED_SYSCALLS {
                assert!(!doc.allow.iter().any(|a| a == d), "{p} allows {d}");
            }
        }
    }

    #[test]
    fn a_user_profile_allowing_ptrace_is_rejected_naming_it() {
        let (_f, p) = user_profile(r#"{"version": 1, "allow": ["read", "ptrace", "write"]}"#);
        let err = SeccompFilters::compile(&p).unwrap_err();
        assert!(
            matches!(&err, SeccompError::Denied { syscall, .. } if syscall == "ptrace"),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("ptrace"), "{msg}");
        assert!(msg.contains(&p.to_string()), "{msg}");
    }

    #[test]
    fn every_denied_syscall_is_rejected_in_allow_and_in_allow_with_args() {
        for d in DENIED_SYSCALLS {
            let (_f, p) = user_profile(&format!(r#"{{"version": 1, "allow": ["{d}"]}}"#));
            let err = SeccompFilters::compile(&p).unwrap_err();
            assert!(err.to_string().contains(d), "{err}");
            let (_f, p) = user_profile(&format!(
                r#"{{"version": 1, "allow": [], "allow_with_args": [{{"syscall": "{d}", "args": []}}]}}"#
            ));
            let err = SeccompFilters::compile(&p).unwrap_err();
            assert!(
                matches!(&err, SeccompError::Denied { syscall, .. } if syscall == d),
                "{err:?}"
            );
        }
    }

    #[test]
    fn a_malformed_file_is_an_error_naming_the_file() {
        let (_f, p) = user_profile(r#"{"version": 1, "allow": ["read",]}"#);
        let err = SeccompFilters::compile(&p).unwrap_err();
        assert!(matches!(err, SeccompError::Malformed { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&p.to_string()), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");

        let (_f, p) = user_profile(r#"{"version": 1, "allow": [], "deny": ["read"]}"#);
        let err = SeccompFilters::compile(&p).unwrap_err();
        assert!(err.to_string().contains("deny"), "{err}");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let p: SeccompProfile = "/nonexistent/seccomp.json".parse().unwrap();
        let err = SeccompFilters::compile(&p).unwrap_err();
        assert!(matches!(err, SeccompError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/seccomp.json"));
    }

    #[test]
    fn unknown_syscalls_versions_and_clone_rules_are_rejected() {
        let (_f, p) = user_profile(r#"{"version": 1, "allow": ["no_such_call"]}"#);
        let err = SeccompFilters::compile(&p).unwrap_err();
        assert!(err.to_string().contains("no_such_call"), "{err}");

        let (_f, p) = user_profile(r#"{"version": 2, "allow": []}"#);
        let err = SeccompFilters::compile(&p).unwrap_err();
        assert!(
            matches!(err, SeccompError::Version { found: 2, .. }),
            "{err:?}"
        );

        let (_f, p) = user_profile(
            r#"{"version": 1, "allow": [], "allow_with_args": [{"syscall": "clone", "args": []}]}"#,
        );
        let err = SeccompFilters::compile(&p).unwrap_err();
        assert!(matches!(err, SeccompError::CloneRule { .. }), "{err:?}");

        let (_f, p) = user_profile(
            r#"{"version": 1, "allow": ["ioctl"], "allow_with_args": [{"syscall": "ioctl", "args": []}]}"#,
        );
        let err = SeccompFilters::compile(&p).unwrap_err();
        assert!(matches!(err, SeccompError::Conflict { .. }), "{err:?}");
    }

    #[test]
    fn a_user_profile_with_argument_rules_compiles() {
        let (_f, p) = user_profile(
            r#"{"version": 1, "allow": ["read", "write", "exit_group"],
                "allow_with_args": [{"syscall": "ioctl", "comment": "TCGETS only",
                  "args": [{"index": 1, "type": "dword", "op": "eq", "val": 21505}]}]}"#,
        );
        let f = SeccompFilters::compile(&p).unwrap();
        assert_eq!(f.programs().len(), 2);
    }

    #[test]
    fn profile_names_parse_and_display() {
        for s in ["native", "python", "node", "/etc/faas/my.json"] {
            let p: SeccompProfile = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
        assert_eq!(
            "./x.json".parse::<SeccompProfile>().unwrap(),
            SeccompProfile::File("./x.json".into())
        );
    }

    #[test]
    fn clone_new_flags_cover_every_namespace_flag() {
        for f in [
            libc::CLONE_NEWNS,
            libc::CLONE_NEWCGROUP,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
        ] {
            assert_ne!(CLONE_NEW_FLAGS & f as u64, 0);
        }
        // What glibc passes for pthread_create and fork.
        let thread = libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID;
        let fork = libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD;
        assert_eq!(CLONE_NEW_FLAGS & thread as u64, 0);
        assert_eq!(CLONE_NEW_FLAGS & fork as u64, 0);
    }
}
