//! The in-memory tree the builder lays out: filled from a directory walk or
//! from tar layers (OCI whiteouts applied).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::BuildError;

/// Where a regular file's bytes come from.
#[derive(Debug, Clone)]
pub(crate) enum Content {
    /// A file on disk.
    Path(PathBuf),
    /// A range of the spool file (tar input).
    Spool { offset: u64 },
}

/// What a node is.
#[derive(Debug)]
pub(crate) enum Kind {
    Dir(BTreeMap<Vec<u8>, usize>),
    File {
        content: Content,
        size: u64,
        sparse: bool,
    },
    Symlink(Vec<u8>),
    CharDev(u32, u32),
    BlockDev(u32, u32),
    Fifo,
    Socket,
}

/// One inode of the tree.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    /// Permission bits (`0o7777`).
    pub(crate) perm: u16,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime: i64,
    pub(crate) mtime_nsec: u32,
    /// Full xattr names → values, sorted.
    pub(crate) xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The layer that created it (for opaque directories).
    pub(crate) layer: usize,
    /// A path to it, for error messages.
    pub(crate) origin: PathBuf,
}

/// The tree: an arena; node 0 is the root; hardlinks are several directory
/// entries naming the same node.
#[derive(Debug)]
pub(crate) struct Tree {
    pub(crate) nodes: Vec<Node>,
    /// Spool of tar file contents.
    pub(crate) spool: Option<File>,
}

impl Tree {
    pub(crate) fn new() -> Self {
        Tree {
            nodes: vec![Node {
                kind: Kind::Dir(BTreeMap::new()),
                perm: 0o755,
                uid: 0,
                gid: 0,
                mtime: 0,
                mtime_nsec: 0,
                xattrs: BTreeMap::new(),
                layer: 0,
                origin: PathBuf::from("/"),
            }],
            spool: None,
        }
    }

    fn children(&mut self, dir: usize) -> Option<&mut BTreeMap<Vec<u8>, usize>> {
        match &mut self.nodes[dir].kind {
            Kind::Dir(c) => Some(c),
            _ => None,
        }
    }

    /// Adds a directory tree from disk as the root.
    pub(crate) fn add_dir(&mut self, root: &Path) -> Result<(), BuildError> {
        let meta = fs::symlink_metadata(root).map_err(|e| BuildError::io(root, e))?;
        if !meta.is_dir() {
            return Err(BuildError::Input {
                path: root.to_path_buf(),
                what: "not a directory",
            });
        }
        fill_meta(&mut self.nodes[0], &meta, root)?;
        let mut links: HashMap<(u64, u64), usize> = HashMap::new();
        let mut stack = vec![(0usize, root.to_path_buf())];
        while let Some((dir, path)) = stack.pop() {
            let rd = fs::read_dir(&path).map_err(|e| BuildError::io(&path, e))?;
            let mut names = Vec::new();
            for e in rd {
                let e = e.map_err(|e| BuildError::io(&path, e))?;
                names.push(e.file_name());
            }
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for name in names {
                let p = path.join(&name);
                if name.len() > 255 {
                    return Err(BuildError::Input {
                        path: p,
                        what: "name longer than 255 bytes",
                    });
                }
                let meta = fs::symlink_metadata(&p).map_err(|e| BuildError::io(&p, e))?;
                let ft = meta.file_type();
                if !ft.is_dir()
                    && meta.nlink() > 1
                    && let Some(&n) = links.get(&(meta.dev(), meta.ino()))
                {
                    if let Some(c) = self.children(dir) {
                        c.insert(name.as_bytes().to_vec(), n);
                    }
                    continue;
                }
                let kind = if ft.is_dir() {
                    Kind::Dir(BTreeMap::new())
                } else if ft.is_file() {
                    let sparse = meta.blocks().saturating_mul(512) < meta.len();
                    Kind::File {
                        content: Content::Path(p.clone()),
                        size: meta.len(),
                        sparse,
                    }
                } else if ft.is_symlink() {
                    let t = fs::read_link(&p).map_err(|e| BuildError::io(&p, e))?;
                    Kind::Symlink(t.as_os_str().as_bytes().to_vec())
                } else if ft.is_char_device() {
                    let (ma, mi) = split_dev(meta.rdev());
                    Kind::CharDev(ma, mi)
                } else if ft.is_block_device() {
                    let (ma, mi) = split_dev(meta.rdev());
                    Kind::BlockDev(ma, mi)
                } else if ft.is_fifo() {
                    Kind::Fifo
                } else {
                    Kind::Socket
                };
                let is_dir = matches!(kind, Kind::Dir(_));
                let mut node = Node {
                    kind,
                    perm: 0,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                    mtime_nsec: 0,
                    xattrs: BTreeMap::new(),
                    layer: 0,
                    origin: p.clone(),
                };
                fill_meta(&mut node, &meta, &p)?;
                let idx = self.nodes.len();
                self.nodes.push(node);
                if let Some(c) = self.children(dir) {
                    c.insert(name.as_bytes().to_vec(), idx);
                }
                if !is_dir && meta.nlink() > 1 {
                    links.insert((meta.dev(), meta.ino()), idx);
                }
                if is_dir {
                    stack.push((idx, p));
                }
            }
        }
        Ok(())
    }

    /// Applies one tar stream as an OCI layer.
    pub(crate) fn add_tar(
        &mut self,
        layer: usize,
        tar_path: &Path,
        reader: impl Read,
    ) -> Result<(), BuildError> {
        let terr = |entry: &Path, source: io::Error| BuildError::Tar {
            tar: tar_path.to_path_buf(),
            entry: entry.to_path_buf(),
            source,
        };
        let mut ar = tar::Archive::new(reader);
        let entries = ar.entries().map_err(|e| terr(Path::new(""), e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| terr(Path::new(""), e))?;
            let raw_path = entry
                .path()
                .map_err(|e| terr(Path::new(""), e))?
                .into_owned();
            let comps = normalize(&raw_path).ok_or_else(|| BuildError::BadTarEntry {
                tar: tar_path.to_path_buf(),
                entry: raw_path.clone(),
                what: "path escapes the root",
            })?;
            let bad = |what: &'static str| BuildError::BadTarEntry {
                tar: tar_path.to_path_buf(),
                entry: raw_path.clone(),
                what,
            };
            let hdr = entry.header().clone();
            let et = hdr.entry_type();
            let Some((name, parents)) = comps.split_last() else {
                // The root itself: take its metadata.
                if et.is_dir() {
                    set_tar_meta(&mut self.nodes[0], &hdr, layer)
                        .map_err(|e| terr(&raw_path, e))?;
                    read_pax_xattrs(&mut entry, &mut self.nodes[0])
                        .map_err(|e| terr(&raw_path, e))?;
                }
                continue;
            };
            if name.len() > 255 {
                return Err(bad("name longer than 255 bytes"));
            }
            let parent = self.ensure_dirs(parents, layer, &raw_path);
            // Whiteouts.
            if name.as_slice() == b".wh..wh..opq" {
                let old = self
                    .children(parent)
                    .map(std::mem::take)
                    .unwrap_or_default();
                let kept: BTreeMap<_, _> = old
                    .into_iter()
                    .filter(|&(_, v)| self.nodes[v].layer == layer)
                    .collect();
                if let Some(c) = self.children(parent) {
                    *c = kept;
                }
                continue;
            }
            if let Some(target) = name.strip_prefix(b".wh.") {
                if let Some(c) = self.children(parent) {
                    c.remove(target);
                }
                continue;
            }
            let kind = match et {
                tar::EntryType::Directory => {
                    // An existing directory keeps its children.
                    let existing = self.children(parent).and_then(|c| c.get(name).copied());
                    if let Some(ex) = existing
                        && matches!(self.nodes[ex].kind, Kind::Dir(_))
                    {
                        let n = &mut self.nodes[ex];
                        set_tar_meta(n, &hdr, layer).map_err(|e| terr(&raw_path, e))?;
                        n.xattrs.clear();
                        read_pax_xattrs(&mut entry, n).map_err(|e| terr(&raw_path, e))?;
                        continue;
                    }
                    Kind::Dir(BTreeMap::new())
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let size = entry.size();
                    let spool = match &mut self.spool {
                        Some(s) => s,
                        None => {
                            let f = tempfile::tempfile().map_err(|e| terr(&raw_path, e))?;
                            self.spool.insert(f)
                        }
                    };
                    let offset = spool.stream_position().map_err(|e| terr(&raw_path, e))?;
                    let copied = io::copy(&mut entry, spool).map_err(|e| terr(&raw_path, e))?;
                    if copied != size {
                        return Err(bad("truncated file data"));
                    }
                    Kind::File {
                        content: Content::Spool { offset },
                        size,
                        sparse: false,
                    }
                }
                tar::EntryType::Symlink => {
                    let t = entry
                        .link_name_bytes()
                        .ok_or_else(|| bad("symlink without a target"))?;
                    Kind::Symlink(t.into_owned())
                }
                tar::EntryType::Link => {
                    let t = entry
                        .link_name_bytes()
                        .ok_or_else(|| bad("hardlink without a target"))?;
                    let tcomps = normalize(Path::new(std::ffi::OsStr::from_bytes(&t)))
                        .ok_or_else(|| bad("hardlink target escapes the root"))?;
                    let target = self
                        .resolve(&tcomps)
                        .ok_or_else(|| bad("hardlink target does not exist"))?;
                    if matches!(self.nodes[target].kind, Kind::Dir(_)) {
                        return Err(bad("hardlink to a directory"));
                    }
                    if let Some(c) = self.children(parent) {
                        c.insert(name.clone(), target);
                    }
                    continue;
                }
                tar::EntryType::Char | tar::EntryType::Block => {
                    let ma = hdr
                        .device_major()
                        .map_err(|e| terr(&raw_path, e))?
                        .unwrap_or(0);
                    let mi = hdr
                        .device_minor()
                        .map_err(|e| terr(&raw_path, e))?
                        .unwrap_or(0);
                    if et == tar::EntryType::Char {
                        Kind::CharDev(ma, mi)
                    } else {
                        Kind::BlockDev(ma, mi)
                    }
                }
                tar::EntryType::Fifo => Kind::Fifo,
                // Metadata-only entries the tar crate hands through.
                tar::EntryType::XGlobalHeader => continue,
                _ => return Err(bad("unsupported tar entry type")),
            };
            let mut node = Node {
                kind,
                perm: 0,
                uid: 0,
                gid: 0,
                mtime: 0,
                mtime_nsec: 0,
                xattrs: BTreeMap::new(),
                layer,
                origin: raw_path.clone(),
            };
            set_tar_meta(&mut node, &hdr, layer).map_err(|e| terr(&raw_path, e))?;
            read_pax_xattrs(&mut entry, &mut node).map_err(|e| terr(&raw_path, e))?;
            let idx = self.nodes.len();
            self.nodes.push(node);
            if let Some(c) = self.children(parent) {
                c.insert(name.clone(), idx);
            }
        }
        if let Some(s) = &mut self.spool {
            s.flush().map_err(|e| terr(Path::new(""), e))?;
        }
        Ok(())
    }

    /// Walks (creating as needed) the directories `comps`; a non-directory in
    /// the way is replaced by a directory.
    fn ensure_dirs(&mut self, comps: &[Vec<u8>], layer: usize, origin: &Path) -> usize {
        let mut cur = 0;
        for c in comps {
            let existing = self.children(cur).and_then(|m| m.get(c).copied());
            cur = match existing {
                Some(n) if matches!(self.nodes[n].kind, Kind::Dir(_)) => n,
                _ => {
                    let idx = self.nodes.len();
                    self.nodes.push(Node {
                        kind: Kind::Dir(BTreeMap::new()),
                        perm: 0o755,
                        uid: 0,
                        gid: 0,
                        mtime: 0,
                        mtime_nsec: 0,
                        xattrs: BTreeMap::new(),
                        layer,
                        origin: origin.to_path_buf(),
                    });
                    if let Some(m) = self.children(cur) {
                        m.insert(c.clone(), idx);
                    }
                    idx
                }
            };
        }
        cur
    }

    fn resolve(&self, comps: &[Vec<u8>]) -> Option<usize> {
        let mut cur = 0;
        for c in comps {
            match &self.nodes[cur].kind {
                Kind::Dir(m) => cur = *m.get(c)?,
                _ => return None,
            }
        }
        Some(cur)
    }
}

fn split_dev(rdev: u64) -> (u32, u32) {
    // glibc's gnu_dev_major / gnu_dev_minor.
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}

fn fill_meta(node: &mut Node, meta: &fs::Metadata, path: &Path) -> Result<(), BuildError> {
    node.perm = (meta.mode() & 0o7777) as u16;
    node.uid = meta.uid();
    node.gid = meta.gid();
    node.mtime = meta.mtime();
    node.mtime_nsec = u32::try_from(meta.mtime_nsec()).unwrap_or(0);
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) => {
            return Ok(());
        }
        Err(e) => return Err(BuildError::io(path, e)),
    };
    for name in names {
        // A name that vanished between list and get is skipped.
        if let Some(v) = xattr::get(path, &name).map_err(|e| BuildError::io(path, e))? {
            node.xattrs.insert(name.as_bytes().to_vec(), v);
        }
    }
    Ok(())
}

fn set_tar_meta(node: &mut Node, hdr: &tar::Header, layer: usize) -> io::Result<()> {
    node.perm = (hdr.mode()? & 0o7777) as u16;
    node.uid = u32::try_from(hdr.uid()?).map_err(|_| io::Error::other("uid over 32 bits"))?;
    node.gid = u32::try_from(hdr.gid()?).map_err(|_| io::Error::other("gid over 32 bits"))?;
    node.mtime = i64::try_from(hdr.mtime()?).unwrap_or(i64::MAX);
    node.mtime_nsec = 0;
    node.layer = layer;
    Ok(())
}

fn read_pax_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>, node: &mut Node) -> io::Result<()> {
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                node.xattrs
                    .insert(name.to_vec(), ext.value_bytes().to_vec());
            } else if ext.key_bytes() == b"mtime" {
                // Sub-second mtime, "SECS.FRAC".
                if let Ok(s) = std::str::from_utf8(ext.value_bytes())
                    && let Some((secs, frac)) = s.split_once('.')
                    && let Ok(secs) = secs.parse::<i64>()
                {
                    node.mtime = secs;
                    let mut f = frac.chars().take(9).collect::<String>();
                    while f.len() < 9 {
                        f.push('0');
                    }
                    node.mtime_nsec = f.parse().unwrap_or(0);
                }
            }
        }
    }
    Ok(())
}

/// Splits a tar path into components, dropping `.` and empty ones; `None`
/// if `..` would leave the root.
fn normalize(p: &Path) -> Option<Vec<Vec<u8>>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for c in p.as_os_str().as_bytes().split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            c => out.push(c.to_vec()),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_paths_normalize() {
        assert_eq!(
            normalize(Path::new("./a//b/")),
            Some(vec![b"a".to_vec(), b"b".to_vec()])
        );
        assert_eq!(normalize(Path::new("/")), Some(vec![]));
        assert_eq!(normalize(Path::new("a/../../x")), None);
    }

    #[test]
    fn dev_split_matches_glibc() {
        assert_eq!(split_dev((8 << 8) | 1), (8, 1));
        assert_eq!(split_dev(0x1111_0370), (259, 70000));
    }
}
