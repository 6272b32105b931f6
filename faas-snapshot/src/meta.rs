//! The snapshot's metadata file (`snapshot.meta`): what was checkpointed.
//!
//! Layout: a 56-byte header — the magic `FAASSNAP`, the format version
//! (u32 LE), 4 reserved bytes, the body length (u64 LE) and the BLAKE3 hash
//! of the body — then the body, JSON. A file whose magic, version, length or
//! hash does not match is refused before the body is parsed; a body that
//! parses is then checked for consistency ([`Meta::validate`]), so a damaged
//! or hostile file is an error, never a panic or a wrong restore.

use serde::{Deserialize, Serialize};

use crate::plan::{MmFields, SigAction};
use crate::sys::ptrace::Regs;

pub(crate) const META_FILE: &str = "snapshot.meta";
pub(crate) const PAGES_FILE: &str = "pages.img";
const MAGIC: &[u8; 8] = b"FAASSNAP";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const HEADER: usize = 56;
/// The largest metadata body accepted.
const MAX_BODY: u64 = 64 << 20;
pub(crate) const PAGE: u64 = 4096;
/// The top of the 47-bit user address space.
pub(crate) const TASK_SIZE: u64 = 0x7fff_ffff_f000;

/// Identity of a file behind a mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileId {
    pub(crate) path: String,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: u64,
    pub(crate) mtime_ns: i128,
}

/// Where an area's content comes from at restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub(crate) enum Source {
    /// Anonymous memory never touched (or PROT_NONE): zero pages.
    Zero,
    /// The page file, from `offset`, copy-on-write.
    Pages { offset: u64, pages: u64 },
    /// The original file (`files[file]`), from `offset`.
    File { file: usize, offset: u64 },
}

/// One memory area.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Area {
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// `rwxp` / `rw-s` as in maps.
    pub(crate) perms: String,
    /// The maps name (`[heap]`, `[stack]`, a path, or empty).
    pub(crate) name: String,
    pub(crate) source: Source,
    /// madvise advice to re-apply (MADV_DONTFORK, MADV_WIPEONFORK, ...), 0 for none.
    #[serde(default)]
    pub(crate) advice: u32,
}

impl Area {
    pub(crate) fn len(&self) -> u64 {
        self.end - self.start
    }
    pub(crate) fn prot(&self) -> u32 {
        let p = self.perms.as_bytes();
        let mut prot = 0;
        if p.first() == Some(&b'r') {
            prot |= libc::PROT_READ as u32;
        }
        if p.get(1) == Some(&b'w') {
            prot |= libc::PROT_WRITE as u32;
        }
        if p.get(2) == Some(&b'x') {
            prot |= libc::PROT_EXEC as u32;
        }
        prot
    }
    pub(crate) fn shared(&self) -> bool {
        self.perms.as_bytes().get(3) == Some(&b's')
    }
}

/// One of vvar / vvar_vclock / vdso, where the snapshot had it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VdsoArea {
    pub(crate) name: String,
    pub(crate) start: u64,
    pub(crate) end: u64,
}

/// sigaltstack as saved (`stack_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) struct AltStack {
    pub(crate) sp: u64,
    pub(crate) flags: u32,
    pub(crate) size: u64,
}

/// Everything the checkpoint recorded besides memory contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// The checkpointed pid (for messages).
    pub(crate) pid: u32,
    pub(crate) exe: String,
    pub(crate) cwd: String,
    /// `uname -r` and `-v` of the host.
    pub(crate) kernel: String,
    /// XCR0 of the host.
    pub(crate) xcr0: u64,
    /// BLAKE3 of the vDSO's bytes, hex.
    pub(crate) vdso_hash: String,
    pub(crate) vdso: Vec<VdsoArea>,
    pub(crate) areas: Vec<Area>,
    pub(crate) files: Vec<FileId>,
    pub(crate) regs: Regs,
    /// The NT_X86_XSTATE area, hex.
    pub(crate) xstate: String,
    pub(crate) sigmask: u64,
    pub(crate) sigactions: Vec<SigActionMeta>,
    pub(crate) altstack: AltStack,
    /// (address, length, signature) of the rseq area.
    pub(crate) rseq: Option<(u64, u32, u32)>,
    pub(crate) robust_list: (u64, u64),
    pub(crate) clear_tid: u64,
    pub(crate) mm: MmMeta,
    pub(crate) auxv: Vec<u64>,
    /// The soft RLIMIT_STACK, for the room below the stack.
    pub(crate) stack_limit: u64,
    /// Bytes of the page file.
    pub(crate) pages_len: u64,
}

/// `plan::SigAction`, serialisable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SigActionMeta {
    pub(crate) signo: u64,
    pub(crate) handler: u64,
    pub(crate) flags: u64,
    pub(crate) restorer: u64,
    pub(crate) mask: u64,
}

impl From<SigActionMeta> for SigAction {
    fn from(s: SigActionMeta) -> SigAction {
        SigAction {
            signo: s.signo,
            handler: s.handler,
            flags: s.flags,
            restorer: s.restorer,
            mask: s.mask,
        }
    }
}

/// `plan::MmFields`, serialisable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) struct MmMeta {
    pub(crate) start_code: u64,
    pub(crate) end_code: u64,
    pub(crate) start_data: u64,
    pub(crate) end_data: u64,
    pub(crate) start_brk: u64,
    pub(crate) brk: u64,
    pub(crate) start_stack: u64,
    pub(crate) arg_start: u64,
    pub(crate) arg_end: u64,
    pub(crate) env_start: u64,
    pub(crate) env_end: u64,
}

impl From<MmMeta> for MmFields {
    fn from(m: MmMeta) -> MmFields {
        MmFields {
            start_code: m.start_code,
            end_code: m.end_code,
            start_data: m.start_data,
            end_data: m.end_data,
            start_brk: m.start_brk,
            brk: m.brk,
            start_stack: m.start_stack,
            arg_start: m.arg_start,
            arg_end: m.arg_end,
            env_start: m.env_start,
            env_end: m.env_end,
        }
    }
}

impl Meta {
    /// Serialises with header and checksum.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let body = match serde_json::to_vec(self) {
            Ok(b) => b,
            // Plain data with string keys: serialisation cannot fail.
            Err(e) => unreachable!("snapshot metadata does not serialise: {e}"),
        };
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(blake3::hash(&body).as_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Parses and validates; the error says what is wrong.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Meta, String> {
        if bytes.len() < HEADER {
            return Err(format!(
                "metadata is {} bytes, shorter than its {HEADER}-byte header",
                bytes.len()
            ));
        }
        if &bytes[..8] != MAGIC {
            return Err("metadata does not start with FAASSNAP (not a faas snapshot)".into());
        }
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if version != FORMAT_VERSION {
            return Err(format!(
                "metadata format version {version}; this build reads version {FORMAT_VERSION}"
            ));
        }
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&bytes[16..24]);
        let len = u64::from_le_bytes(len8);
        let body = &bytes[HEADER..];
        if len > MAX_BODY || len != body.len() as u64 {
            return Err(format!(
                "metadata body is {} bytes but its header says {len}",
                body.len()
            ));
        }
        if blake3::hash(body).as_bytes() != &bytes[24..56] {
            return Err("metadata checksum mismatch (the file is damaged)".into());
        }
        let meta: Meta =
            serde_json::from_slice(body).map_err(|e| format!("metadata does not parse: {e}"))?;
        meta.validate()?;
        Ok(meta)
    }

    /// Consistency checks every restore relies on.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let aligned = |v: u64| v.is_multiple_of(PAGE);
        let mut prev_end = 0u64;
        let mut page_ranges: Vec<(u64, u64)> = Vec::new();
        for a in &self.areas {
            if !aligned(a.start) || !aligned(a.end) || a.end <= a.start || a.end > TASK_SIZE {
                return Err(format!(
                    "area {:#x}-{:#x} is not a page-aligned user range",
                    a.start, a.end
                ));
            }
            if a.start < prev_end {
                return Err(format!(
                    "area {:#x}-{:#x} overlaps or is out of order",
                    a.start, a.end
                ));
            }
            prev_end = a.end;
            if a.perms.len() != 4 || !a.perms.is_ascii() {
                return Err(format!(
                    "area {:#x}: bad permissions {:?}",
                    a.start, a.perms
                ));
            }
            match &a.source {
                Source::Zero => {}
                Source::Pages { offset, pages } => {
                    let end = offset.checked_add(a.len());
                    if !aligned(*offset)
                        || end.is_none_or(|e| e > self.pages_len)
                        || *pages > a.len() / PAGE
                    {
                        return Err(format!(
                            "area {:#x}: page-file range outside the page file",
                            a.start
                        ));
                    }
                    page_ranges.push((*offset, offset + a.len()));
                }
                Source::File { file, offset } => {
                    if *file >= self.files.len() || !aligned(*offset) {
                        return Err(format!("area {:#x}: bad file reference", a.start));
                    }
                }
            }
        }
        page_ranges.sort_unstable();
        if page_ranges.windows(2).any(|w| w[1].0 < w[0].1) {
            return Err("two areas share page-file ranges".into());
        }
        for v in &self.vdso {
            if !aligned(v.start) || !aligned(v.end) || v.end <= v.start || v.end > TASK_SIZE {
                return Err(format!(
                    "{} at {:#x}-{:#x} is not a page-aligned user range",
                    v.name, v.start, v.end
                ));
            }
        }
        let xstate_len = self.xstate.len() / 2;
        if !self.xstate.len().is_multiple_of(2) || !(576..=64 * 1024).contains(&xstate_len) {
            return Err(format!("xsave area of {xstate_len} bytes"));
        }
        if self.auxv.len() > crate::plan::AUXV_WORDS || !self.auxv.len().is_multiple_of(2) {
            return Err(format!("auxv of {} words", self.auxv.len()));
        }
        if self
            .sigactions
            .iter()
            .any(|s| !(1..=64).contains(&s.signo) || s.signo == 9 || s.signo == 19)
        {
            return Err("a signal action for an invalid signal".into());
        }
        if self
            .files
            .iter()
            .any(|f| !f.path.starts_with('/') || f.path.contains('\0'))
        {
            return Err("a mapped file path that is not absolute".into());
        }
        Ok(())
    }

    pub(crate) fn xstate_bytes(&self) -> Result<Vec<u8>, String> {
        hex_decode(&self.xstate).ok_or_else(|| "xsave area is not hex".to_string())
    }
}

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

pub(crate) fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(*p.first()?)? << 4 | digit(*p.get(1)?)?))
        .collect()
}
