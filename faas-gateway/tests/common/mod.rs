//! The cluster protocol written by hand, for tests that play a raw node or
//! a raw gateway: frames, and both sides of the authentication (the MAC
//! computed here from its description, so the wire format is checked too).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The protocol version of these tests.
pub(crate) const PROTOCOL: u32 = 2;

/// One frame: header (magic, kind, flags 0, length, id) and payload.
pub(crate) fn frame(kind: u8, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0xFA5Cu16.to_le_bytes());
    v.push(kind);
    v.push(0);
    v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// Reads one frame: (kind, id, payload); `None` when the connection ends.
pub(crate) async fn read(s: &mut TcpStream) -> Option<(u8, u64, Vec<u8>)> {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).await.ok()?;
    let len = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
    let id = u64::from_le_bytes(h[8..16].try_into().unwrap());
    let mut p = vec![0; len];
    s.read_exact(&mut p).await.ok()?;
    Some((h[2], id, p))
}

/// The proof of `role` ("node" or "gateway") for the nonces.
pub(crate) fn proof(token: &[u8; 32], role: &str, nn: &[u8], ng: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(token);
    h.update(format!("faas-cluster/2 {role}\0").as_bytes());
    h.update(nn);
    h.update(ng);
    *h.finalize().as_bytes()
}

/// A random 32 bytes.
pub(crate) fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    getrandom(&mut b);
    b
}

fn getrandom(b: &mut [u8]) {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    // Tests need distinct nonces, not secret ones.
    let h = blake3::hash(&[&t.to_le_bytes()[..], &n.to_le_bytes()].concat());
    b.copy_from_slice(&h.as_bytes()[..b.len()]);
}

/// `Auth` with the node's nonce `nn`.
pub(crate) fn auth(nn: &[u8; 32]) -> Vec<u8> {
    let mut p = PROTOCOL.to_le_bytes().to_vec();
    p.extend_from_slice(nn);
    frame(0x07, 0, &p)
}

/// The node's side, by hand: sends `Auth`, checks the gateway's proof,
/// answers with `proof_for(nn, ng)` as `AuthProof`; returns (nn, ng).
pub(crate) async fn node_auth(
    s: &mut TcpStream,
    token: &[u8; 32],
    proof_for: impl FnOnce(&[u8; 32], &[u8; 32]) -> Vec<u8>,
) -> ([u8; 32], [u8; 32]) {
    let nn = random32();
    s.write_all(&auth(&nn)).await.unwrap();
    let (kind, id, p) = read(s).await.expect("AuthReply");
    assert_eq!((kind, id, p.len()), (0x89, 0, 64), "AuthReply");
    let ng: [u8; 32] = p[..32].try_into().unwrap();
    assert_eq!(
        p[32..],
        proof(token, "gateway", &nn, &ng),
        "the gateway's proof"
    );
    s.write_all(&frame(0x08, 0, &proof_for(&nn, &ng)))
        .await
        .unwrap();
    (nn, ng)
}

/// The gateway's side, by hand, for a node that connected to `s`: reads
/// `Auth`, answers with `AuthReply` carrying `gateway_proof(nn, ng)`, and
/// returns what the node sends next (its `AuthProof`, or nothing) and the
/// nonces.
pub(crate) async fn gateway_auth(
    s: &mut TcpStream,
    gateway_proof: impl FnOnce(&[u8; 32], &[u8; 32]) -> [u8; 32],
) -> (Option<(u8, u64, Vec<u8>)>, [u8; 32], [u8; 32]) {
    let (kind, _, p) = read(s).await.expect("Auth");
    assert_eq!(kind, 0x07, "Auth first");
    assert_eq!(p.len(), 36);
    assert_eq!(u32::from_le_bytes(p[..4].try_into().unwrap()), PROTOCOL);
    let nn: [u8; 32] = p[4..].try_into().unwrap();
    let ng = random32();
    let mut reply = ng.to_vec();
    reply.extend_from_slice(&gateway_proof(&nn, &ng));
    s.write_all(&frame(0x89, 0, &reply)).await.unwrap();
    (read(s).await, nn, ng)
}

/// One direction of an authenticated session: the MAC after each frame.
pub(crate) struct Seal {
    key: [u8; 32],
    seq: u64,
}

impl Seal {
    /// The frames `from` ("node" or "gateway") sends.
    pub(crate) fn new(token: &[u8; 32], from: &str, nn: &[u8], ng: &[u8]) -> Seal {
        let mut h = blake3::Hasher::new_keyed(token);
        h.update(format!("faas-cluster/2 frames from the {from}\0").as_bytes());
        h.update(nn);
        h.update(ng);
        Seal {
            key: *h.finalize().as_bytes(),
            seq: 0,
        }
    }

    /// The tag of the next frame.
    pub(crate) fn tag(&mut self, frame: &[u8]) -> [u8; 16] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&self.seq.to_le_bytes());
        h.update(frame);
        self.seq += 1;
        h.finalize().as_bytes()[..16].try_into().unwrap()
    }
}

/// A raw peer past the handshake: frames go out with their MAC, frames in
/// are checked against theirs.
pub(crate) struct Raw {
    pub(crate) s: TcpStream,
    out: Seal,
    inn: Seal,
}

impl Raw {
    /// A raw node (`me` = "node") or gateway (`me` = "gateway").
    pub(crate) fn new(s: TcpStream, token: &[u8; 32], me: &str, nn: &[u8], ng: &[u8]) -> Raw {
        let other = if me == "node" { "gateway" } else { "node" };
        Raw {
            s,
            out: Seal::new(token, me, nn, ng),
            inn: Seal::new(token, other, nn, ng),
        }
    }

    /// An encoded frame and its MAC, as the next frame sent.
    pub(crate) fn seal(&mut self, f: &[u8]) -> Vec<u8> {
        let t = self.out.tag(f);
        [f, &t[..]].concat()
    }

    /// Sends an encoded frame and its MAC.
    pub(crate) async fn send(&mut self, f: &[u8]) {
        let sealed = self.seal(f);
        self.s.write_all(&sealed).await.unwrap();
    }

    /// Reads one frame and checks its MAC; `None` when the connection ends.
    pub(crate) async fn recv(&mut self) -> Option<(u8, u64, Vec<u8>)> {
        let (kind, id, p) = read(&mut self.s).await?;
        let mut t = [0u8; 16];
        self.s.read_exact(&mut t).await.ok()?;
        assert_eq!(
            t,
            self.inn.tag(&frame(kind, id, &p)),
            "MAC of a {kind:#04x} frame"
        );
        Some((kind, id, p))
    }
}
