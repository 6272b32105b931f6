//! `/proc/PID/maps` and `smaps`, parsed.

use std::fmt;

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Vma {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) read: bool,
    pub(crate) write: bool,
    pub(crate) exec: bool,
    pub(crate) shared: bool,
    pub(crate) offset: u64,
    /// (major, minor) of the file's device.
    pub(crate) dev: (u32, u32),
    pub(crate) inode: u64,
    /// The path or pseudo-name (`[heap]`, `[stack]`, `[vdso]`, `[anon:x]`);
    /// empty for plain anonymous memory. Keeps a ` (deleted)` suffix.
    pub(crate) name: String,
    /// Two-letter VmFlags from smaps (`gd`, `dc`, ...), when read.
    pub(crate) flags: Vec<String>,
}

impl Vma {
    pub(crate) fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Backed by a file (not anonymous memory or a kernel pseudo-area).
    pub(crate) fn is_file(&self) -> bool {
        self.inode != 0 && self.name.starts_with('/')
    }

    pub(crate) fn has_flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }
}

impl fmt::Display for Vma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:x}-{:x} {}{}{}{}",
            self.start,
            self.end,
            if self.read { 'r' } else { '-' },
            if self.write { 'w' } else { '-' },
            if self.exec { 'x' } else { '-' },
            if self.shared { 's' } else { 'p' },
        )?;
        if !self.name.is_empty() {
            write!(f, " {}", self.name)?;
        }
        Ok(())
    }
}

/// Parses one maps line; `None` for a line that is not one.
pub(crate) fn parse_line(line: &str) -> Option<Vma> {
    let mut rest = line;
    let mut field = || {
        let t = rest.trim_start_matches(' ');
        let end = t.find(' ').unwrap_or(t.len());
        let (f, r) = t.split_at(end);
        rest = r;
        f
    };
    let range = field();
    let perms = field().as_bytes();
    let offset = field();
    let dev = field();
    let inode = field();
    let name = rest.trim_start_matches(' ').to_owned();
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    if perms.len() != 4 || end <= start {
        return None;
    }
    let (maj, min) = dev.split_once(':')?;
    Some(Vma {
        start,
        end,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: (
            u32::from_str_radix(maj, 16).ok()?,
            u32::from_str_radix(min, 16).ok()?,
        ),
        inode: inode.parse().ok()?,
        name,
        flags: Vec::new(),
    })
}

/// Parses `/proc/PID/smaps`: every area with its VmFlags.
pub(crate) fn parse_smaps(text: &str) -> Result<Vec<Vma>, String> {
    let mut out: Vec<Vma> = Vec::new();
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(last) = out.last_mut() {
                last.flags = flags.split_whitespace().map(str::to_owned).collect();
            }
            continue;
        }
        // Area headers start with a hex range; detail lines with a name and ':'.
        let first = line.split(' ').next().unwrap_or("");
        if first.ends_with(':') {
            continue;
        }
        match parse_line(line) {
            Some(v) => out.push(v),
            None => return Err(format!("unexpected smaps line {line:?}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 fe:00 325843                     /usr/bin/my prog
55d0c0a02000-55d0c0a05000 r-xp 00002000 fe:00 325843                     /usr/bin/my prog
55d0c1b3e000-55d0c1b5f000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000001000 rw-s 00000000 00:01 1034                       /memfd:buf (deleted)
7f0000001000-7f0000002000 rw-p 00000000 00:00 0                          [anon:glibc: malloc]
7f0000002000-7f0000003000 ---p 00000000 00:00 0 
7f86bb6de000-7f86bb6e2000 r--p 00000000 00:00 0                          [vvar]
7f86bb6e2000-7f86bb6e4000 r--p 00000000 00:00 0                          [vvar_vclock]
7f86bb6e4000-7f86bb6e6000 r-xp 00000000 00:00 0                          [vdso]
7ffc0b449000-7ffc0b46a000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn parses_every_kind_of_line() {
        let v: Vec<Vma> = MAPS.lines().map(|l| parse_line(l).expect(l)).collect();
        assert_eq!(v.len(), 11);
        assert_eq!(v[0].name, "/usr/bin/my prog");
        assert!(v[0].is_file() && v[0].read && !v[0].write);
        assert_eq!(v[1].offset, 0x2000);
        assert_eq!(v[1].dev, (0xfe, 0));
        assert_eq!(v[1].inode, 325843);
        assert_eq!(v[2].name, "[heap]");
        assert!(!v[2].is_file());
        assert!(v[3].shared && v[3].name.ends_with(" (deleted)"));
        assert_eq!(v[4].name, "[anon:glibc: malloc]");
        assert_eq!(v[5].name, "");
        assert!(!v[5].read && !v[5].write && !v[5].exec);
        assert_eq!(v[7].name, "[vvar_vclock]");
        assert_eq!(v[7].len(), 0x2000);
        assert_eq!(v[10].start, 0xffffffffff600000);
        assert_eq!(v[9].to_string(), "7ffc0b449000-7ffc0b46a000 rw-p [stack]");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "zz-1 r--p 0 0:0 0",
            "2000-1000 r--p 0 0:0 0",
            "1000-2000 r-p 0 0:0 0",
            "1000-2000 r--p 0 00 0",
        ] {
            assert!(parse_line(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn smaps_flags_attach_to_their_area() {
        let text = "\
7ffc0b449000-7ffc0b46a000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  16 kB
VmFlags: rd wr mr mw me gd ac
7f86bb6e4000-7f86bb6e6000 r-xp 00000000 00:00 0                          [vdso]
Size:                  8 kB
VmFlags: rd ex mr mw me de sd
";
        let v = parse_smaps(text).expect("parses");
        assert_eq!(v.len(), 2);
        assert!(v[0].has_flag("gd"));
        assert!(!v[1].has_flag("gd"));
        assert!(v[1].has_flag("ex"));
    }
}
