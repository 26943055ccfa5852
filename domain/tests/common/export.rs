//! `nix-store --export` streams and NARs written by hand, for the import tests.

use bytes::Bytes;

pub fn token(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
    out.resize(out.len().div_ceil(8) * 8, 0);
}

/// The NAR of a single regular file.
pub fn nar_of(contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in [
        &b"nix-archive-1"[..],
        b"(",
        b"type",
        b"regular",
        b"contents",
        contents,
        b")",
    ] {
        token(&mut out, t);
    }
    out
}

pub fn body(bytes: Vec<u8>) -> impl futures_core::Stream<Item = Result<Bytes, std::io::Error>> + Unpin + Send {
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        bytes.chunks(1000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    Stream(chunks.into_iter())
}

struct Stream<I>(I);
impl<I: Iterator<Item = Result<Bytes, std::io::Error>> + Unpin> futures_core::Stream for Stream<I> {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

pub fn int(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

/// One path of a `nix-store --export` stream.
pub fn exported(out: &mut Vec<u8>, path: &str, nar: &[u8], references: &[&str], deriver: &str) {
    int(out, 1);
    out.extend_from_slice(nar);
    int(out, 0x4558_494e);
    token(out, path.as_bytes());
    int(out, references.len() as u64);
    for r in references {
        token(out, r.as_bytes());
    }
    token(out, deriver.as_bytes());
    int(out, 0);
}
