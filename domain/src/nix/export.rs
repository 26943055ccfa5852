//! A streaming reader of what `nix-store --export` writes: store paths with their NARs, references and
//! deriver, references first. Feed it the bytes in chunks of any size; NAR bytes are handed back as they go
//! by (never held), checked by a [`NarReader`], so memory stays bounded whatever the paths' sizes.
//!
//! The format (integers are 64-bit little-endian; a string is its length as an integer, its bytes, zeros up
//! to a multiple of 8):
//!
//! ```text
//! export = { 1 nar 0x4558494e <path> <count> <reference>{count} <deriver or ""> signature } 0
//! signature = 0 | 1 <legacy signature>
//! ```

use super::hash::Hash;
use super::nar::{NarError, NarReader, padding};
use super::store_path::StorePath;

/// What follows each NAR in the stream.
pub const EXPORT_MAGIC: u64 = 0x4558_494e;
/// References per path, at most (each is held until the path is complete).
pub const MAX_REFERENCES: u64 = 100_000;
/// Longest string other than NAR contents: store paths, a legacy signature.
const MAX_STRING: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid export stream at byte {offset} (path {entry}): {kind}")]
pub struct ExportError {
    /// Bytes of the stream before the part that is wrong.
    pub offset: u64,
    /// Which path of the stream (from 1) was being read.
    pub entry: u64,
    pub kind: ExportErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportErrorKind {
    #[error("expected 1 (a path follows) or 0 (the end), found {0}")]
    BadMarker(u64),
    #[error("{0}")]
    Nar(NarError),
    #[error("expected the export magic after the NAR, found {0:#x}")]
    BadMagic(u64),
    #[error("a {0}-byte string where at most {MAX_STRING} bytes are allowed")]
    StringTooLong(u64),
    #[error("padding bytes are not zero")]
    BadPadding,
    #[error("'{0}' is not a store path")]
    BadStorePath(String),
    #[error("{0} references where at most {MAX_REFERENCES} are allowed")]
    TooManyReferences(u64),
    #[error("expected 0 or 1 before the end of the path, found {0}")]
    BadSignatureFlag(u64),
    #[error("bytes after the end of the stream")]
    TrailingData,
    #[error("the stream ends early")]
    Truncated,
}

/// A store path the stream carried, complete: what the NAR measured and what the stream says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedPath {
    pub path: StorePath,
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    pub nar_hash: Hash,
    pub nar_size: u64,
    /// The NAR's `.ls` listing (see [`super::nar`]), unless the NAR was too large to list.
    pub listing: Option<String>,
}

/// What the bytes just consumed were.
#[derive(Debug, PartialEq, Eq)]
pub enum ExportEvent<'a> {
    /// A path's NAR begins.
    NarStart,
    /// The next bytes of the current NAR, checked.
    Nar(&'a [u8]),
    /// The current path is complete.
    Path(ExportedPath),
    /// The stream has ended properly.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Marker,
    Nar,
    Magic,
    Path,
    RefCount,
    Ref,
    Deriver,
    SignatureFlag,
    Signature,
    Ended,
}

/// Sans-I/O reader of an export stream; see the module documentation.
#[derive(Debug)]
pub struct ExportReader {
    offset: u64,
    entry: u64,
    state: State,
    int: [u8; 8],
    have: usize,
    /// The string being read: its length, once read.
    str_len: Option<usize>,
    string: Vec<u8>,
    pad_left: usize,
    nar: NarReader,
    path: Option<StorePath>,
    refs_left: u64,
    references: Vec<StorePath>,
    deriver: Option<StorePath>,
    failed: Option<ExportError>,
}

impl Default for ExportReader {
    fn default() -> Self {
        Self::new()
    }
}

fn store_path(bytes: &[u8]) -> Result<StorePath, ExportErrorKind> {
    let text = String::from_utf8_lossy(bytes);
    StorePath::parse(&text).map_err(|_| ExportErrorKind::BadStorePath(text.chars().take(300).collect()))
}

impl ExportReader {
    pub fn new() -> Self {
        Self {
            offset: 0,
            entry: 0,
            state: State::Marker,
            int: [0; 8],
            have: 0,
            str_len: None,
            string: Vec::new(),
            pad_left: 0,
            nar: NarReader::new(),
            path: None,
            refs_left: 0,
            references: Vec::new(),
            deriver: None,
            failed: None,
        }
    }

    /// Consumes a prefix of `input` (at least one byte unless it is empty) and answers its length and, when
    /// it completed something, what. After an error, every later call returns the same error.
    pub fn advance<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Option<ExportEvent<'a>>), ExportError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if input.is_empty() {
            return Ok((0, None));
        }
        match self.step(input) {
            Ok((used, event)) => {
                self.offset += used as u64;
                Ok((used, event))
            }
            Err(kind) => {
                let err = ExportError {
                    offset: self.offset,
                    entry: self.entry,
                    kind,
                };
                self.failed = Some(err.clone());
                Err(err)
            }
        }
    }

    /// Checks the stream ended properly.
    pub fn finish(&self) -> Result<(), ExportError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if self.state != State::Ended {
            return Err(ExportError {
                offset: self.offset,
                entry: self.entry,
                kind: ExportErrorKind::Truncated,
            });
        }
        Ok(())
    }

    fn step<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Option<ExportEvent<'a>>), ExportErrorKind> {
        match self.state {
            State::Marker => {
                let (used, value) = self.int(input);
                let event = match value {
                    None => None,
                    Some(1) => {
                        self.entry += 1;
                        self.nar = NarReader::with_listing();
                        self.state = State::Nar;
                        Some(ExportEvent::NarStart)
                    }
                    Some(0) => {
                        self.state = State::Ended;
                        Some(ExportEvent::End)
                    }
                    Some(other) => return Err(ExportErrorKind::BadMarker(other)),
                };
                Ok((used, event))
            }
            State::Nar => {
                let used = self.nar.update_until_end(input).map_err(ExportErrorKind::Nar)?;
                if self.nar.is_complete() {
                    self.state = State::Magic;
                }
                Ok((used, Some(ExportEvent::Nar(&input[..used]))))
            }
            State::Magic => {
                let (used, value) = self.int(input);
                match value {
                    Some(EXPORT_MAGIC) => self.state = State::Path,
                    Some(other) => return Err(ExportErrorKind::BadMagic(other)),
                    None => {}
                }
                Ok((used, None))
            }
            State::Path | State::Ref | State::Deriver | State::Signature => {
                let (used, value) = self.string(input)?;
                let Some(bytes) = value else {
                    return Ok((used, None));
                };
                match self.state {
                    State::Path => {
                        self.path = Some(store_path(&bytes)?);
                        self.state = State::RefCount;
                    }
                    State::Ref => {
                        self.references.push(store_path(&bytes)?);
                        self.refs_left -= 1;
                        if self.refs_left == 0 {
                            self.state = State::Deriver;
                        }
                    }
                    State::Deriver => {
                        self.deriver = if bytes.is_empty() {
                            None
                        } else {
                            Some(store_path(&bytes)?)
                        };
                        self.state = State::SignatureFlag;
                    }
                    _ => return Ok((used, Some(self.path_done()?))),
                }
                Ok((used, None))
            }
            State::RefCount => {
                let (used, value) = self.int(input);
                match value {
                    Some(n) if n > MAX_REFERENCES => return Err(ExportErrorKind::TooManyReferences(n)),
                    Some(0) => self.state = State::Deriver,
                    Some(n) => {
                        self.refs_left = n;
                        self.state = State::Ref;
                    }
                    None => {}
                }
                Ok((used, None))
            }
            State::SignatureFlag => {
                let (used, value) = self.int(input);
                match value {
                    None => Ok((used, None)),
                    Some(0) => Ok((used, Some(self.path_done()?))),
                    Some(1) => {
                        self.state = State::Signature;
                        Ok((used, None))
                    }
                    Some(other) => Err(ExportErrorKind::BadSignatureFlag(other)),
                }
            }
            State::Ended => Err(ExportErrorKind::TrailingData),
        }
    }

    fn path_done(&mut self) -> Result<ExportEvent<'static>, ExportErrorKind> {
        self.state = State::Marker;
        let (summary, listing) = std::mem::take(&mut self.nar)
            .finish_with_listing()
            .map_err(ExportErrorKind::Nar)?;
        let path = self.path.take().ok_or(ExportErrorKind::Truncated)?;
        Ok(ExportEvent::Path(ExportedPath {
            path,
            references: std::mem::take(&mut self.references),
            deriver: self.deriver.take(),
            nar_hash: summary.nar_hash,
            nar_size: summary.nar_size,
            listing,
        }))
    }

    /// Reads an integer: the bytes used, and the value once all 8 bytes are in.
    fn int(&mut self, input: &[u8]) -> (usize, Option<u64>) {
        let n = (8 - self.have).min(input.len());
        self.int[self.have..self.have + n].copy_from_slice(&input[..n]);
        self.have += n;
        if self.have < 8 {
            return (n, None);
        }
        self.have = 0;
        (n, Some(u64::from_le_bytes(self.int)))
    }

    /// Reads a string: the bytes used, and the string once it and its padding are in.
    fn string(&mut self, input: &[u8]) -> Result<(usize, Option<Vec<u8>>), ExportErrorKind> {
        let Some(len) = self.str_len else {
            let (used, value) = self.int(input);
            if let Some(len) = value {
                if len > MAX_STRING {
                    return Err(ExportErrorKind::StringTooLong(len));
                }
                self.string.clear();
                self.pad_left = padding(len);
                if len == 0 {
                    return Ok((used, Some(Vec::new())));
                }
                // At most MAX_STRING.
                self.str_len = Some(len as usize);
            }
            return Ok((used, None));
        };
        let used = if self.string.len() < len {
            let n = (len - self.string.len()).min(input.len());
            self.string.extend_from_slice(&input[..n]);
            n
        } else {
            let n = self.pad_left.min(input.len());
            if input[..n].iter().any(|&b| b != 0) {
                return Err(ExportErrorKind::BadPadding);
            }
            self.pad_left -= n;
            n
        };
        if self.string.len() == len && self.pad_left == 0 {
            self.str_len = None;
            return Ok((used, Some(std::mem::take(&mut self.string))));
        }
        Ok((used, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::NarReader;

    const A: &str = "/nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-a";
    const B: &str = "/nix/store/ab3srl0v4g9bbrwhf1dkl2rx2z1sa6d6-b";
    const DRV: &str = "/nix/store/ffffffffffffffffffffffffffffffff-b.drv";

    fn int(out: &mut Vec<u8>, n: u64) {
        out.extend_from_slice(&n.to_le_bytes());
    }

    fn string(out: &mut Vec<u8>, s: &[u8]) {
        int(out, s.len() as u64);
        out.extend_from_slice(s);
        out.resize(out.len() + padding(s.len() as u64), 0);
    }

    fn nar_of(contents: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for t in ["nix-archive-1", "(", "type", "regular", "contents"] {
            string(&mut out, t.as_bytes());
        }
        string(&mut out, contents);
        string(&mut out, b")");
        out
    }

    fn entry(out: &mut Vec<u8>, path: &str, nar: &[u8], refs: &[&str], deriver: &str) {
        int(out, 1);
        out.extend_from_slice(nar);
        int(out, EXPORT_MAGIC);
        string(out, path.as_bytes());
        int(out, refs.len() as u64);
        for r in refs {
            string(out, r.as_bytes());
        }
        string(out, deriver.as_bytes());
        int(out, 0);
    }

    fn two_paths() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let (nar_a, nar_b) = (nar_of(b"a\n"), nar_of(&[7; 1000]));
        let mut out = Vec::new();
        entry(&mut out, A, &nar_a, &[], "");
        entry(&mut out, B, &nar_b, &[A, B], DRV);
        int(&mut out, 0);
        (out, nar_a, nar_b)
    }

    /// Reads `bytes` in chunks of `chunk`: the NARs as handed back, and the paths.
    fn read(bytes: &[u8], chunk: usize) -> Result<(Vec<Vec<u8>>, Vec<ExportedPath>), ExportError> {
        let mut reader = ExportReader::new();
        let (mut nars, mut paths) = (Vec::new(), Vec::new());
        let mut ended = false;
        for mut c in bytes.chunks(chunk) {
            while !c.is_empty() {
                let (used, event) = reader.advance(c)?;
                assert!(used > 0);
                match event {
                    Some(ExportEvent::NarStart) => nars.push(Vec::new()),
                    Some(ExportEvent::Nar(b)) => nars.last_mut().expect("a NAR started").extend_from_slice(b),
                    Some(ExportEvent::Path(p)) => paths.push(p),
                    Some(ExportEvent::End) => ended = true,
                    None => {}
                }
                c = &c[used..];
            }
        }
        reader.finish()?;
        assert!(ended);
        Ok((nars, paths))
    }

    fn summary(nar: &[u8]) -> (Hash, u64) {
        let mut r = NarReader::new();
        r.update(nar).unwrap();
        let s = r.finish().unwrap();
        (s.nar_hash, s.nar_size)
    }

    #[test]
    fn reads_paths_in_any_chunking() {
        let (stream, nar_a, nar_b) = two_paths();
        for chunk in [1, 3, 8, 13, 1 << 20] {
            let (nars, paths) = read(&stream, chunk).unwrap();
            assert_eq!(nars, vec![nar_a.clone(), nar_b.clone()], "in chunks of {chunk}");
            assert_eq!(paths.len(), 2);
            assert_eq!(paths[0].path.to_string(), A);
            assert!(paths[0].references.is_empty());
            assert_eq!(paths[0].deriver, None);
            assert_eq!((paths[0].nar_hash, paths[0].nar_size), summary(&nar_a));
            assert_eq!(paths[1].path.to_string(), B);
            let refs: Vec<String> = paths[1].references.iter().map(ToString::to_string).collect();
            assert_eq!(refs, [A, B]);
            assert_eq!(paths[1].deriver.as_ref().map(ToString::to_string).as_deref(), Some(DRV));
            assert_eq!((paths[1].nar_hash, paths[1].nar_size), summary(&nar_b));
        }
        // An empty export is just the end.
        assert_eq!(read(&0u64.to_le_bytes(), 8).unwrap().1, vec![]);
    }

    #[test]
    fn skips_a_legacy_signature() {
        let mut out = Vec::new();
        entry(&mut out, A, &nar_of(b"x"), &[], "");
        out.truncate(out.len() - 8);
        int(&mut out, 1);
        string(&mut out, b"legacy signature");
        int(&mut out, 0);
        assert_eq!(read(&out, 5).unwrap().1.len(), 1);
    }

    #[test]
    fn refuses_malformed_streams() {
        let (good, nar_a, _) = two_paths();
        let with = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut s = good.clone();
            edit(&mut s);
            s
        };
        let magic_at = 8 + nar_a.len();
        let path_at = magic_at + 8;
        let cases: Vec<(&str, Vec<u8>, ExportErrorKind)> = vec![
            ("a bad marker", with(&|s| s[0] = 2), ExportErrorKind::BadMarker(2)),
            ("truncated", good[..good.len() - 8].to_vec(), ExportErrorKind::Truncated),
            ("truncated in a NAR", good[..20].to_vec(), ExportErrorKind::Truncated),
            ("trailing data", with(&|s| s.push(0)), ExportErrorKind::TrailingData),
            (
                "a bad magic",
                with(&|s| s[magic_at] = 0),
                ExportErrorKind::BadMagic(EXPORT_MAGIC & !0xff),
            ),
            (
                "not a store path",
                with(&|s| s[path_at + 8] = b'/' + 1),
                ExportErrorKind::BadStorePath(format!("0{}", &A[1..])),
            ),
            (
                "a long string",
                with(&|s| s[path_at..path_at + 8].copy_from_slice(&5000u64.to_le_bytes())),
                ExportErrorKind::StringTooLong(5000),
            ),
            (
                "too many references",
                with(&|s| {
                    let at = path_at + 8 + A.len() + padding(A.len() as u64);
                    s[at..at + 8].copy_from_slice(&(MAX_REFERENCES + 1).to_le_bytes());
                }),
                ExportErrorKind::TooManyReferences(MAX_REFERENCES + 1),
            ),
            (
                "a bad signature flag",
                with(&|s| {
                    let at = path_at + 8 + A.len() + padding(A.len() as u64) + 8 + 8;
                    s[at] = 3;
                }),
                ExportErrorKind::BadSignatureFlag(3),
            ),
        ];
        for (name, bytes, kind) in cases {
            for chunk in [1, 7, 1 << 20] {
                let err = read(&bytes, chunk).expect_err(name);
                assert_eq!(err.kind, kind, "{name} in chunks of {chunk}");
            }
        }
        // A broken NAR is reported as such, with the path it belongs to.
        let broken = with(&|s| s[8 + 8] = b'X');
        let err = read(&broken, 1 << 20).unwrap_err();
        assert!(matches!(err.kind, ExportErrorKind::Nar(_)), "{err}");
        assert_eq!(err.entry, 1);
        // Errors stick.
        let mut reader = ExportReader::new();
        let first = reader.advance(&[9; 8]).unwrap_err();
        assert_eq!(reader.advance(&good), Err(first.clone()));
        assert_eq!(reader.finish(), Err(first));
    }
}
