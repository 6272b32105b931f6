//! Mutual authentication of a gateway and a node with the shared cluster
//! token (see the module docs of [`crate::cluster`]).
//!
//! ```text
//! node                                              gateway
//!  ── Auth { protocol, Nn (32 random bytes) } ──────▶
//!  ◀── AuthReply { Ng (32 random bytes), proof(gateway, Nn, Ng) }
//!  ── AuthProof { proof(node, Nn, Ng) }, Hello ─────▶
//!
//! proof(role, Nn, Ng) = blake3::keyed_hash(token, "faas-cluster/2 " role "\0" Nn Ng)
//! ```
//!
//! Each side checks the other's proof in constant time before it reads
//! anything else; from then on every frame carries a MAC ([`Seal`]) keyed
//! for the session and its direction. Fresh nonces from both sides make a recorded proof
//! useless later (no replay); the role in the MAC makes a peer's proof
//! useless as one's own (no reflection); the token itself never crosses
//! the wire.

use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Length of the cluster token and of each nonce, in bytes.
pub const TOKEN_LEN: usize = 32;

/// The secret shared by a gateway and its nodes: 32 random bytes, kept in
/// a file as 64 hex digits (mode 0600). Its `Debug` form does not show it.
#[derive(Clone)]
pub struct ClusterToken([u8; TOKEN_LEN]);

impl std::fmt::Debug for ClusterToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterToken(<secret>)")
    }
}

/// Why a cluster token cannot be read, created or made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file cannot be read, written or created.
    #[error("cluster token file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file does not hold 64 hex digits.
    #[error(
        "cluster token file {path}: not a cluster token (expected 64 hex digits, as written by `faas serve --role gateway`)"
    )]
    Malformed {
        /// The file.
        path: PathBuf,
    },
    /// Other users may read or write the file.
    #[error(
        "cluster token file {path}: group or others may access it (mode {mode:04o}); run `chmod 600 {path}`"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The kernel's random source failed.
    #[error("cannot draw random bytes for the cluster token: {0}")]
    Random(#[source] io::Error),
}

impl ClusterToken {
    /// A token of the given bytes.
    pub fn from_bytes(bytes: [u8; TOKEN_LEN]) -> Self {
        ClusterToken(bytes)
    }

    /// A new random token.
    ///
    /// # Errors
    ///
    /// [`TokenError::Random`]: the kernel's random source failed.
    pub fn generate() -> Result<Self, TokenError> {
        let mut b = [0u8; TOKEN_LEN];
        random(&mut b).map_err(TokenError::Random)?;
        Ok(ClusterToken(b))
    }

    /// Reads the token in `path` (64 hex digits, surrounding white space
    /// ignored); the file must not be accessible to group or others.
    ///
    /// # Errors
    ///
    /// The file cannot be read, is not a token, or is too open.
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let io = |source| TokenError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TokenError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        // A token file is 64 digits and a newline: refuse to read a large
        // file the path may point at by mistake.
        if meta.len() > 1024 {
            return Err(TokenError::Malformed {
                path: path.to_owned(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse(text.trim()).ok_or_else(|| TokenError::Malformed {
            path: path.to_owned(),
        })
    }

    /// Reads the token in `path`, or creates the file (mode 0600, its
    /// directory if needed) with a new random token when there is none.
    /// Returns the token and whether it was created.
    ///
    /// # Errors
    ///
    /// As [`ClusterToken::load`], or the file cannot be created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), TokenError> {
        let io = |source| TokenError::Io {
            path: path.to_owned(),
            source,
        };
        if path.exists() {
            return Ok((Self::load(path)?, false));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let token = Self::generate()?;
        let mut f = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(f) => f,
            // Created by another process meanwhile: use that one.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Ok((Self::load(path)?, false));
            }
            Err(e) => return Err(io(e)),
        };
        let written = writeln!(f, "{}", token.hex()).and_then(|()| f.sync_all());
        if let Err(e) = written {
            let _ = std::fs::remove_file(path);
            return Err(io(e));
        }
        Ok((token, true))
    }

    fn parse(hex: &str) -> Option<Self> {
        if hex.len() != 2 * TOKEN_LEN {
            return None;
        }
        let mut b = [0u8; TOKEN_LEN];
        for (i, out) in b.iter_mut().enumerate() {
            *out = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(ClusterToken(b))
    }

    fn hex(&self) -> String {
        self.0.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The proof that the side `role` knows the token, for the session of
    /// the node's nonce `node` and the gateway's nonce `gateway`.
    pub(crate) fn proof(
        &self,
        role: Role,
        node: &[u8; TOKEN_LEN],
        gateway: &[u8; TOKEN_LEN],
    ) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(match role {
            Role::Node => b"faas-cluster/2 node\0",
            Role::Gateway => b"faas-cluster/2 gateway\0",
        });
        h.update(node);
        h.update(gateway);
        *h.finalize().as_bytes()
    }

    /// Whether `proof` is what `role` must send for this session (compared
    /// in constant time).
    pub(crate) fn verify(
        &self,
        role: Role,
        node: &[u8; TOKEN_LEN],
        gateway: &[u8; TOKEN_LEN],
        proof: &[u8],
    ) -> bool {
        let Ok(got) = <[u8; 32]>::try_from(proof) else {
            return false;
        };
        // `blake3::Hash`'s equality is constant-time.
        blake3::Hash::from_bytes(got) == blake3::Hash::from_bytes(self.proof(role, node, gateway))
    }
}

/// Length of the MAC that follows every frame after the handshake.
pub(crate) const TAG_LEN: usize = 16;

/// One direction of an authenticated session: every frame after the
/// handshake is followed by `blake3::keyed_hash(key, seq ‖ frame)[..16]`,
/// `key` derived from the token and both nonces for this direction and
/// `seq` counting that direction's frames from 0. A frame altered,
/// injected, dropped, replayed or reordered on the path (or sent on
/// another connection) does not match.
pub(crate) struct Seal {
    key: [u8; 32],
    seq: u64,
}

impl Seal {
    /// The seal of the frames that `from` sends in the session of the
    /// nonces `node` and `gateway`.
    pub(crate) fn new(
        token: &ClusterToken,
        from: Role,
        node: &[u8; TOKEN_LEN],
        gateway: &[u8; TOKEN_LEN],
    ) -> Self {
        let mut h = blake3::Hasher::new_keyed(&token.0);
        h.update(match from {
            Role::Node => b"faas-cluster/2 frames from the node\0",
            Role::Gateway => b"faas-cluster/2 frames from the gateway\0",
        });
        h.update(node);
        h.update(gateway);
        Seal {
            key: *h.finalize().as_bytes(),
            seq: 0,
        }
    }

    fn mac(&self, frame: &[&[u8]]) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&self.seq.to_le_bytes());
        for part in frame {
            h.update(part);
        }
        h.finalize()
    }

    /// The tag of the next frame sent (`frame`: its header and payload).
    pub(crate) fn tag(&mut self, frame: &[&[u8]]) -> [u8; TAG_LEN] {
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(&self.mac(frame).as_bytes()[..TAG_LEN]);
        self.seq += 1;
        t
    }

    /// Whether `tag` is that of the next frame received (constant time).
    pub(crate) fn check(&mut self, frame: &[&[u8]], tag: &[u8; TAG_LEN]) -> bool {
        let want = self.mac(frame);
        self.seq += 1;
        // Constant-time: compare whole hashes, the unsent half copied over.
        let mut got = *want.as_bytes();
        got[..TAG_LEN].copy_from_slice(tag);
        blake3::Hash::from_bytes(got) == want
    }
}

/// Which side proves it knows the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Node,
    Gateway,
}

/// A fresh nonce from the kernel's random source.
pub(crate) fn nonce() -> io::Result<[u8; TOKEN_LEN]> {
    let mut b = [0u8; TOKEN_LEN];
    random(&mut b)?;
    Ok(b)
}

/// Fills `buf` from getrandom(2); unlike the registry's ids, secrets never
/// fall back to anything weaker.
fn random(buf: &mut [u8]) -> io::Result<()> {
    let mut off = 0;
    while off < buf.len() {
        match rustix::rand::getrandom(&mut buf[off..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => off += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_the_token_both_nonces_and_the_role() {
        let t = ClusterToken::generate().unwrap();
        let (nn, ng) = (nonce().unwrap(), nonce().unwrap());
        assert_ne!(nn, ng);
        let p = t.proof(Role::Node, &nn, &ng);
        assert!(t.verify(Role::Node, &nn, &ng, &p));
        // Reflection: the gateway's own proof sent back as the node's (or
        // the node's as the gateway's) is refused.
        let g = t.proof(Role::Gateway, &nn, &ng);
        assert_ne!(p, g);
        assert!(!t.verify(Role::Node, &nn, &ng, &g));
        assert!(!t.verify(Role::Gateway, &nn, &ng, &p));
        // Replay into another session (another nonce on either side).
        let other = nonce().unwrap();
        assert!(!t.verify(Role::Node, &other, &ng, &p));
        assert!(!t.verify(Role::Node, &nn, &other, &p));
        // Swapped nonces.
        assert!(!t.verify(Role::Node, &ng, &nn, &p));
        // Another token.
        let u = ClusterToken::generate().unwrap();
        assert!(!u.verify(Role::Node, &nn, &ng, &p));
        // Wrong lengths.
        assert!(!t.verify(Role::Node, &nn, &ng, &p[..31]));
        assert!(!t.verify(Role::Node, &nn, &ng, &[]));
        // The proof is not the token, nor contains it.
        assert!(!p.windows(8).any(|w| t.0.windows(8).any(|k| k == w)));
    }

    #[test]
    fn sealed_frames_detect_changes_replays_and_the_other_direction() {
        let t = ClusterToken::generate().unwrap();
        let (nn, ng) = (nonce().unwrap(), nonce().unwrap());
        let mut send = Seal::new(&t, Role::Node, &nn, &ng);
        let mut recv = Seal::new(&t, Role::Node, &nn, &ng);
        let a = send.tag(&[b"header", b"payload"]);
        assert!(recv.check(&[b"header", b"payload"], &a));
        // The same frame again (a replay) has another sequence number.
        assert!(!recv.check(&[b"header", b"payload"], &a));
        let mut recv = Seal::new(&t, Role::Node, &nn, &ng);
        let mut bad = a;
        bad[0] ^= 1;
        assert!(!recv.check(&[b"header", b"payload"], &bad));
        let mut recv = Seal::new(&t, Role::Node, &nn, &ng);
        assert!(!recv.check(&[b"header", b"payloaD"], &a));
        // The other direction, or another session, has another key.
        let mut back = Seal::new(&t, Role::Gateway, &nn, &ng);
        assert!(!back.check(&[b"header", b"payload"], &a));
        let mut other = Seal::new(&t, Role::Node, &ng, &nn);
        assert!(!other.check(&[b"header", b"payload"], &a));
    }

    #[test]
    fn token_files_are_created_private_read_back_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cluster.token");
        let (t, created) = ClusterToken::load_or_create(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (again, created) = ClusterToken::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(again.0, t.0);
        assert_eq!(ClusterToken::load(&path).unwrap().0, t.0);
        assert_eq!(format!("{t:?}"), "ClusterToken(<secret>)");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ClusterToken::load(&path).unwrap_err().to_string();
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");

        let bad = dir.path().join("bad");
        for text in ["", "xyz", &"g".repeat(64), &"a".repeat(63), &"a".repeat(66)] {
            std::fs::write(&bad, text).unwrap();
            std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
            let e = ClusterToken::load(&bad).unwrap_err().to_string();
            assert!(
                e.contains("not a cluster token") && e.contains("bad"),
                "{e}"
            );
        }
        let e = ClusterToken::load(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing") && e.contains("No such file"), "{e}");
    }
}
