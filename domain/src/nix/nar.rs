//! A streaming NAR validator. Feed it the bytes in chunks of any size; it checks the archive grammar as the
//! bytes go by and computes the SHA-256 and size Nix records as NarHash and NarSize. File contents are never
//! held: memory stays constant whatever the file sizes, apart from one small name per directory level.
//!
//! The grammar (each token is a string: a 64-bit little-endian length, the bytes, zeros up to a multiple of 8):
//!
//! ```text
//! nar       = "nix-archive-1" node
//! node      = "(" "type" ( "regular" ["executable" ""] "contents" <bytes>
//!                        | "symlink" "target" <target>
//!                        | "directory" { "entry" "(" "name" <name> "node" node ")" } ) ")"
//! ```
//!
//! Directory entries must be strictly increasing by bytes, and names must not be empty, `.`, `..`, or
//! contain `/` or NUL.
//!
//! A reader made with [`NarReader::with_listing`] also writes the archive's listing as the entries pass: the
//! JSON Nix writes next to a NAR as `<hash>.ls` in a binary cache (`write-nar-listing`), read by `nix store
//! ls`-style browsers (Hydra) to show a path's files without the NAR:
//!
//! ```text
//! {"version":1,"root":NODE}
//! NODE = {"type":"regular","size":N[,"executable":true],"narOffset":N}   narOffset: where the contents begin
//!      | {"type":"symlink","target":"…"}
//!      | {"type":"directory","entries":{"name":NODE,…}}                  in the archive's (byte) order
//! ```
//!
//! The listing is text written in archive order, never a tree, and it is given up (the archive is still
//! checked) past [`MAX_LISTING_LEN`] bytes, so memory stays bounded.

use super::hash::{Hash, Sha256Hasher};

pub const MAGIC: &[u8] = b"nix-archive-1";
/// Longest token other than file contents: names, symlink targets, keywords.
pub const MAX_TOKEN_LEN: u64 = 4096;
/// Deepest directory nesting accepted (each level keeps the previous entry name to check the order).
pub const MAX_DEPTH: usize = 1024;
/// Longest listing kept (about 80,000 files): what a push may hold in memory for it. A larger archive has
/// no listing.
pub const MAX_LISTING_LEN: usize = 8 << 20;

/// Where a NAR went wrong: the byte offset in the archive and what was wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid NAR at byte {offset}: {kind}")]
pub struct NarError {
    pub offset: u64,
    pub kind: NarErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NarErrorKind {
    #[error("it does not start with the magic 'nix-archive-1'")]
    BadMagic,
    #[error("expected {expected}, found '{found}'")]
    Unexpected { expected: &'static str, found: String },
    #[error("a {len}-byte token where at most {MAX_TOKEN_LEN} bytes are allowed")]
    TokenTooLong { len: u64 },
    #[error("padding bytes are not zero")]
    BadPadding,
    #[error("directory entry '{name}' does not come strictly after '{previous}'")]
    Unsorted { previous: String, name: String },
    #[error("invalid directory entry name '{0}'")]
    BadName(String),
    #[error("invalid symlink target '{0}'")]
    BadTarget(String),
    #[error("directories nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("bytes after the end of the archive")]
    TrailingData,
    #[error("the archive ends early, while expecting {expected}")]
    Truncated { expected: &'static str },
}

/// The facts a narinfo records about a NAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarSummary {
    pub nar_hash: Hash,
    pub nar_size: u64,
}

/// What the next string token must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Magic,
    Open,
    Type,
    TypeValue,
    /// `executable` or `contents`.
    RegularAttr,
    ExecutableValue,
    Contents,
    /// The file's bytes: streamed, not buffered.
    ContentsData,
    Target,
    TargetValue,
    /// `entry`, or `)` closing the directory.
    DirNext,
    EntryOpen,
    Name,
    NameValue,
    Node,
    /// `)` closing a regular file or symlink node.
    CloseNode,
    /// `)` closing a directory entry.
    CloseEntry,
    Done,
}

impl Expect {
    fn describe(self) -> &'static str {
        match self {
            Self::Magic => "the magic 'nix-archive-1'",
            Self::Open => "'('",
            Self::Type => "'type'",
            Self::TypeValue => "'regular', 'symlink' or 'directory'",
            Self::RegularAttr => "'executable' or 'contents'",
            Self::ExecutableValue => "'' after 'executable'",
            Self::Contents => "'contents'",
            Self::ContentsData => "the file contents",
            Self::Target => "'target'",
            Self::TargetValue => "a symlink target",
            Self::DirNext => "'entry' or ')'",
            Self::EntryOpen => "'(' opening an entry",
            Self::Name => "'name'",
            Self::NameValue => "an entry name",
            Self::Node => "'node'",
            Self::CloseNode | Self::CloseEntry => "')'",
            Self::Done => "the end of the archive",
        }
    }
}

/// Where the reader is within the current token.
#[derive(Debug, Clone, Copy)]
enum Lex {
    /// Reading the 8-byte length.
    Len { buf: [u8; 8], have: usize },
    /// Reading a small token's `len` bytes into `NarReader::token`.
    Token { len: usize },
    /// Streaming a file's bytes (`remaining` > 0), then `pad` zeros.
    Data { remaining: u64, pad: usize },
    /// Reading the zeros that pad a token to a multiple of 8 bytes.
    Pad { remaining: usize },
}

const START: Lex = Lex::Len { buf: [0; 8], have: 0 };

/// Sans-I/O NAR validator; see the module documentation.
#[derive(Debug)]
pub struct NarReader {
    hasher: Sha256Hasher,
    /// Bytes consumed so far.
    offset: u64,
    /// Where the current token's length starts, for error offsets that do not depend on the chunking.
    token_start: u64,
    expect: Expect,
    lex: Lex,
    /// The current small token (at most `MAX_TOKEN_LEN` bytes).
    token: Vec<u8>,
    /// One element per open directory: the name of its last entry so far.
    dirs: Vec<Option<Vec<u8>>>,
    failed: Option<NarError>,
    /// The listing so far, when one is wanted and it has not grown past [`MAX_LISTING_LEN`].
    listing: Option<String>,
    wants_listing: bool,
    /// The regular file being read is executable (the listing says so after its size, as Nix does).
    executable: bool,
}

impl Default for NarReader {
    fn default() -> Self {
        Self::new()
    }
}

/// Zeros after a string of `len` bytes; always below 8.
pub(crate) fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

fn lossy(bytes: &[u8]) -> String {
    const SHOWN: usize = 64;
    let mut s = String::from_utf8_lossy(&bytes[..bytes.len().min(SHOWN)]).into_owned();
    if bytes.len() > SHOWN {
        s.push('…');
    }
    s
}

impl NarReader {
    pub fn new() -> Self {
        Self {
            hasher: Sha256Hasher::new(),
            offset: 0,
            token_start: 0,
            expect: Expect::Magic,
            lex: START,
            token: Vec::new(),
            dirs: Vec::new(),
            failed: None,
            listing: None,
            wants_listing: false,
            executable: false,
        }
    }

    /// A reader that also writes the archive's listing; see the module documentation.
    pub fn with_listing() -> Self {
        Self {
            listing: Some(String::from(r#"{"version":1,"root":"#)),
            wants_listing: true,
            ..Self::new()
        }
    }

    /// Like [`Self::finish`], with the listing when one was asked for and the archive was small enough.
    pub fn finish_with_listing(mut self) -> Result<(NarSummary, Option<String>), NarError> {
        let listing = self.listing.take();
        let summary = self.finish()?;
        Ok((
            summary,
            listing.map(|mut l| {
                l.push('}');
                l
            }),
        ))
    }

    /// Appends to the listing, giving it up once it is too long.
    fn list(&mut self, parts: &[&str]) {
        if let Some(listing) = &mut self.listing {
            for part in parts {
                listing.push_str(part);
            }
            if listing.len() > MAX_LISTING_LEN {
                self.listing = None;
            }
        }
    }

    /// Appends a JSON string.
    fn list_string(&mut self, bytes: &[u8]) {
        if self.listing.is_some() {
            let text = serde_json::to_string(&String::from_utf8_lossy(bytes)).unwrap_or_default();
            self.list(&[&text]);
        }
    }

    /// Bytes consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.offset
    }

    /// Consumes the next bytes of the archive. After an error, every later call returns the same error.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), NarError> {
        let used = self.update_until_end(chunk)?;
        if used < chunk.len() {
            let err = NarError {
                offset: self.offset,
                kind: NarErrorKind::TrailingData,
            };
            self.failed = Some(err.clone());
            return Err(err);
        }
        Ok(())
    }

    /// Consumes the next bytes of the archive, stopping where it ends, and answers how many bytes of `chunk`
    /// were the archive's: for a NAR embedded in a longer stream (`nix-store --export`). After an error, every
    /// later call returns the same error.
    pub fn update_until_end(&mut self, chunk: &[u8]) -> Result<usize, NarError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let mut rest = chunk;
        while !rest.is_empty() && !self.at_end() {
            match self.step(rest) {
                Ok(used) => {
                    rest = &rest[used..];
                    self.offset += used as u64;
                }
                Err(err) => {
                    self.failed = Some(err.clone());
                    return Err(err);
                }
            }
        }
        let used = chunk.len() - rest.len();
        self.hasher.update(&chunk[..used]);
        Ok(used)
    }

    /// Whether the whole archive has been read.
    pub fn is_complete(&self) -> bool {
        self.failed.is_none() && self.at_end()
    }

    /// Checks the archive is complete and returns its hash and size.
    pub fn finish(self) -> Result<NarSummary, NarError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        if !self.at_end() {
            let expected = match self.lex {
                Lex::Pad { .. } => "padding",
                Lex::Data { .. } => "the rest of the file contents",
                Lex::Len { .. } | Lex::Token { .. } => self.expect.describe(),
            };
            return Err(NarError {
                offset: self.offset,
                kind: NarErrorKind::Truncated { expected },
            });
        }
        Ok(NarSummary {
            nar_size: self.hasher.len(),
            nar_hash: self.hasher.finish(),
        })
    }

    /// The top-level node has closed, padding included.
    fn at_end(&self) -> bool {
        self.expect == Expect::Done && matches!(self.lex, Lex::Len { have: 0, .. })
    }

    fn at_token(&self, kind: NarErrorKind) -> NarError {
        NarError {
            offset: self.token_start,
            kind,
        }
    }

    /// Consumes a non-empty prefix of `input` and returns its length.
    fn step(&mut self, input: &[u8]) -> Result<usize, NarError> {
        if self.at_end() {
            return Err(NarError {
                offset: self.offset,
                kind: NarErrorKind::TrailingData,
            });
        }
        match self.lex {
            Lex::Len { mut buf, have } => {
                if have == 0 {
                    self.token_start = self.offset;
                }
                let n = (8 - have).min(input.len());
                buf[have..have + n].copy_from_slice(&input[..n]);
                if have + n == 8 {
                    self.start_token(u64::from_le_bytes(buf))
                        .map_err(|k| self.at_token(k))?;
                } else {
                    self.lex = Lex::Len { buf, have: have + n };
                }
                Ok(n)
            }
            Lex::Token { len } => {
                let n = (len - self.token.len()).min(input.len());
                self.token.extend_from_slice(&input[..n]);
                if self.token.len() == len {
                    self.token_done().map_err(|k| self.at_token(k))?;
                    self.lex = match padding(len as u64) {
                        0 => START,
                        pad => Lex::Pad { remaining: pad },
                    };
                }
                Ok(n)
            }
            Lex::Data { remaining, pad } => {
                // Bounded by input.len(), so it fits a usize.
                let n = remaining.min(input.len() as u64) as usize;
                self.lex = match remaining - n as u64 {
                    0 if pad == 0 => START,
                    0 => Lex::Pad { remaining: pad },
                    left => Lex::Data { remaining: left, pad },
                };
                Ok(n)
            }
            Lex::Pad { remaining } => {
                let n = remaining.min(input.len());
                if let Some(i) = input[..n].iter().position(|&b| b != 0) {
                    return Err(NarError {
                        offset: self.offset + i as u64,
                        kind: NarErrorKind::BadPadding,
                    });
                }
                self.lex = match remaining - n {
                    0 => START,
                    left => Lex::Pad { remaining: left },
                };
                Ok(n)
            }
        }
    }

    /// A token's length has been read.
    fn start_token(&mut self, len: u64) -> Result<(), NarErrorKind> {
        if self.expect == Expect::Magic && len != MAGIC.len() as u64 {
            return Err(NarErrorKind::BadMagic);
        }
        if self.expect == Expect::ContentsData {
            let executable = std::mem::take(&mut self.executable);
            if self.wants_listing {
                let size = len.to_string();
                // The contents start right after their 8-byte length.
                let offset = (self.token_start + 8).to_string();
                let executable = if executable { r#","executable":true"# } else { "" };
                self.list(&[r#","size":"#, &size, executable, r#","narOffset":"#, &offset, "}"]);
            }
            // File contents are streamed whatever their size.
            self.expect = Expect::CloseNode;
            self.lex = match (len, padding(len)) {
                (0, _) => START,
                (remaining, pad) => Lex::Data { remaining, pad },
            };
            return Ok(());
        }
        if len > MAX_TOKEN_LEN {
            return Err(NarErrorKind::TokenTooLong { len });
        }
        self.token.clear();
        if len == 0 {
            self.token_done()?;
            self.lex = START;
        } else {
            // At most MAX_TOKEN_LEN.
            self.lex = Lex::Token { len: len as usize };
        }
        Ok(())
    }

    /// A whole small token has been read into `self.token`: check it and move on.
    fn token_done(&mut self) -> Result<(), NarErrorKind> {
        use Expect::*;
        let token = std::mem::take(&mut self.token);
        let next = match (self.expect, token.as_slice()) {
            (Magic, MAGIC) => Open,
            (Magic, _) => return Err(NarErrorKind::BadMagic),
            (Open, b"(") => Type,
            (Type, b"type") => TypeValue,
            (TypeValue, b"regular") => {
                self.list(&[r#"{"type":"regular""#]);
                RegularAttr
            }
            (TypeValue, b"symlink") => {
                self.list(&[r#"{"type":"symlink","target":"#]);
                Target
            }
            (TypeValue, b"directory") => {
                if self.dirs.len() >= MAX_DEPTH {
                    return Err(NarErrorKind::TooDeep);
                }
                self.dirs.push(None);
                self.list(&[r#"{"type":"directory","entries":{"#]);
                DirNext
            }
            (RegularAttr, b"executable") => {
                self.executable = true;
                ExecutableValue
            }
            (ExecutableValue, b"") => Contents,
            (RegularAttr | Contents, b"contents") => ContentsData,
            (Target, b"target") => TargetValue,
            (TargetValue, target) => {
                if target.is_empty() || target.contains(&0) {
                    return Err(NarErrorKind::BadTarget(lossy(target)));
                }
                self.list_string(target);
                self.list(&["}"]);
                CloseNode
            }
            (DirNext, b"entry") => EntryOpen,
            (DirNext, b")") => {
                self.dirs.pop();
                self.list(&["}}"]);
                self.node_done()
            }
            (EntryOpen, b"(") => Name,
            (Name, b"name") => NameValue,
            (NameValue, name) => {
                if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
                    return Err(NarErrorKind::BadName(lossy(name)));
                }
                if let Some(Some(previous)) = self.dirs.last()
                    && name <= previous.as_slice()
                {
                    return Err(NarErrorKind::Unsorted {
                        previous: lossy(previous),
                        name: lossy(name),
                    });
                }
                let first = matches!(self.dirs.last(), Some(None));
                if let Some(last) = self.dirs.last_mut() {
                    *last = Some(name.to_vec());
                }
                if !first {
                    self.list(&[","]);
                }
                self.list_string(name);
                self.list(&[":"]);
                Node
            }
            (Node, b"node") => Open,
            (CloseNode, b")") => self.node_done(),
            (CloseEntry, b")") => DirNext,
            (expect, found) => {
                return Err(NarErrorKind::Unexpected {
                    expected: expect.describe(),
                    found: lossy(found),
                });
            }
        };
        self.expect = next;
        // Keep the allocation for the next token.
        self.token = token;
        self.token.clear();
        Ok(())
    }

    /// A node has closed: the archive is done, or the enclosing entry must close next.
    fn node_done(&self) -> Expect {
        if self.dirs.is_empty() {
            Expect::Done
        } else {
            Expect::CloseEntry
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::hash::sha256_of;

    fn push(out: &mut Vec<u8>, token: &[u8]) {
        out.extend_from_slice(&(token.len() as u64).to_le_bytes());
        out.extend_from_slice(token);
        out.resize(out.len() + padding(token.len() as u64), 0);
    }

    /// A NAR from whitespace-separated tokens, `''` standing for the empty string.
    fn nar(tokens: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for t in tokens.split_whitespace() {
            push(&mut out, if t == "''" { b"" } else { t.as_bytes() });
        }
        out
    }

    fn file(contents: &[u8]) -> Vec<u8> {
        let mut out = nar("nix-archive-1 ( type regular contents");
        push(&mut out, contents);
        push(&mut out, b")");
        out
    }

    /// A NAR of a directory with these (empty directory) entries, in this order.
    fn dir(names: &[&[u8]]) -> Vec<u8> {
        let mut out = nar("nix-archive-1 ( type directory");
        for name in names {
            out.extend(nar("entry ( name"));
            push(&mut out, name);
            out.extend(nar("node ( type directory ) )"));
        }
        out.extend(nar(")"));
        out
    }

    /// Reads `bytes` in chunks of `chunk` bytes.
    fn read(bytes: &[u8], chunk: usize) -> Result<NarSummary, NarError> {
        let mut reader = NarReader::new();
        for c in bytes.chunks(chunk) {
            reader.update(c)?;
        }
        reader.finish()
    }

    const CHUNKS: [usize; 6] = [1, 2, 3, 7, 8, 1 << 20];

    const TREE: &str = "nix-archive-1 ( type directory
        entry ( name B node ( type regular executable '' contents #!/bin/sh ) )
        entry ( name a node ( type directory
            entry ( name empty node ( type directory ) )
            entry ( name file node ( type regular contents '' ) )
        ) )
        entry ( name a-b node ( type symlink target a/file ) )
        entry ( name a.b node ( type regular contents 12345678 ) )
    )";

    #[test]
    fn accepts_valid_archives_in_any_chunking() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("regular file", file(b"hello\n")),
            ("empty file", file(b"")),
            ("file of exactly 8 bytes", file(b"12345678")),
            ("file of zero bytes", file(&[0; 17])),
            (
                "executable",
                nar("nix-archive-1 ( type regular executable '' contents x )"),
            ),
            ("symlink", nar("nix-archive-1 ( type symlink target /nix/store/x )")),
            ("empty directory", dir(&[])),
            ("directory tree", nar(TREE)),
            ("names sorted by bytes", dir(&[b"B", b"a", b"a-b", b"a.b", b"\xc3\xa9"])),
        ];
        for (name, bytes) in cases {
            let expected = NarSummary {
                nar_hash: sha256_of(&bytes),
                nar_size: bytes.len() as u64,
            };
            for chunk in CHUNKS {
                assert_eq!(read(&bytes, chunk), Ok(expected), "{name} in chunks of {chunk}");
            }
        }
    }

    #[test]
    fn refuses_malformed_archives() {
        use NarErrorKind::*;
        // Token sizes: the magic 24 bytes, "(" 16, "type" 16, "regular" 16, "directory" 24, "contents" 16,
        // so a regular file's length starts at 88 and its contents at 96, and a directory's first entry
        // name at 128 and the second's at 296.
        let mut bad_padding = file(b"abc");
        bad_padding[96 + 3 + 2] = 1;
        let mut bad_token_padding = file(b"");
        bad_token_padding[8 + 13 + 1] = b'!';
        let mut absurd = nar("nix-archive-1 ( type directory entry ( name");
        absurd.extend_from_slice(&u64::MAX.to_le_bytes());
        let deep = format!(
            "nix-archive-1 {}",
            "( type directory entry ( name d node ".repeat(MAX_DEPTH + 1)
        );
        let long_name = vec![b'x'; MAX_TOKEN_LEN as usize + 1];
        let unexpected = |expected: &'static str, found: &str| Unexpected {
            expected,
            found: found.to_owned(),
        };
        let unsorted = |previous: &str, name: &str| Unsorted {
            previous: previous.into(),
            name: name.into(),
        };

        let cases: Vec<(&str, Vec<u8>, u64, NarErrorKind)> = vec![
            (
                "empty input",
                vec![],
                0,
                Truncated {
                    expected: "the magic 'nix-archive-1'",
                },
            ),
            ("bad magic", nar("nix-archive-2 ("), 0, BadMagic),
            ("magic of another length", nar("nix-archive-10 ("), 0, BadMagic),
            ("not a NAR at all", b"StorePath: /nix/store/x\n".to_vec(), 0, BadMagic),
            ("magic only", nar("nix-archive-1"), 24, Truncated { expected: "'('" }),
            (
                "truncated length",
                file(b"abc")[..30].to_vec(),
                30,
                Truncated { expected: "'('" },
            ),
            (
                "truncated token",
                file(b"abc")[..50].to_vec(),
                50,
                Truncated { expected: "'type'" },
            ),
            (
                "truncated contents",
                file(b"abcdef")[..100].to_vec(),
                100,
                Truncated {
                    expected: "the rest of the file contents",
                },
            ),
            (
                "truncated padding",
                file(b"abc")[..99].to_vec(),
                99,
                Truncated { expected: "padding" },
            ),
            (
                "missing close",
                file(b"abc")[..104].to_vec(),
                104,
                Truncated { expected: "')'" },
            ),
            (
                "unclosed directory",
                dir(&[b"a"])[..248].to_vec(),
                248,
                Truncated {
                    expected: "'entry' or ')'",
                },
            ),
            ("bad contents padding", bad_padding, 101, BadPadding),
            ("bad token padding", bad_token_padding, 22, BadPadding),
            (
                "no open paren",
                nar("nix-archive-1 type"),
                24,
                unexpected("'('", "type"),
            ),
            (
                "no type",
                nar("nix-archive-1 ( kind regular"),
                40,
                unexpected("'type'", "kind"),
            ),
            (
                "unknown type",
                nar("nix-archive-1 ( type fifo )"),
                56,
                unexpected("'regular', 'symlink' or 'directory'", "fifo"),
            ),
            (
                "executable not empty",
                nar("nix-archive-1 ( type regular executable 1 contents '' )"),
                96,
                unexpected("'' after 'executable'", "1"),
            ),
            (
                "executable twice",
                nar("nix-archive-1 ( type regular executable '' executable '' contents '' )"),
                104,
                unexpected("'contents'", "executable"),
            ),
            (
                "no contents",
                nar("nix-archive-1 ( type regular )"),
                72,
                unexpected("'executable' or 'contents'", ")"),
            ),
            (
                "unknown attribute",
                nar("nix-archive-1 ( type regular size 0 )"),
                72,
                unexpected("'executable' or 'contents'", "size"),
            ),
            (
                "two contents",
                nar("nix-archive-1 ( type regular contents '' contents '' )"),
                96,
                unexpected("')'", "contents"),
            ),
            (
                "empty symlink",
                nar("nix-archive-1 ( type symlink target '' )"),
                88,
                BadTarget(String::new()),
            ),
            (
                "NUL in symlink",
                nar("nix-archive-1 ( type symlink target a\0b )"),
                88,
                BadTarget("a\0b".into()),
            ),
            ("unsorted entries", dir(&[b"b", b"a"]), 296, unsorted("b", "a")),
            ("duplicate entries", dir(&[b"a", b"a"]), 296, unsorted("a", "a")),
            (
                "sorted by locale, not bytes",
                dir(&[b"a", b"B"]),
                296,
                unsorted("a", "B"),
            ),
            ("empty name", dir(&[b""]), 128, BadName(String::new())),
            ("dot", dir(&[b"."]), 128, BadName(".".into())),
            ("dot dot", dir(&[b".."]), 128, BadName("..".into())),
            ("slash in name", dir(&[b"a/b"]), 128, BadName("a/b".into())),
            ("NUL in name", dir(&[b"a\0"]), 128, BadName("a\0".into())),
            (
                "entry without name",
                nar("nix-archive-1 ( type directory entry ( node"),
                112,
                unexpected("'name'", "node"),
            ),
            (
                "oversized name",
                dir(&[&long_name]),
                128,
                TokenTooLong { len: MAX_TOKEN_LEN + 1 },
            ),
            ("absurd length", absurd, 128, TokenTooLong { len: u64::MAX }),
            ("too deep", nar(&deep), 24 + 136 * MAX_DEPTH as u64 + 32, TooDeep),
            ("trailing garbage", [file(b"x"), vec![0]].concat(), 120, TrailingData),
            ("two archives", [file(b"x"), file(b"x")].concat(), 120, TrailingData),
            (
                "entry after the end",
                [dir(&[]), nar("entry")].concat(),
                96,
                TrailingData,
            ),
        ];
        for (name, bytes, offset, kind) in cases {
            for chunk in CHUNKS {
                let expected = NarError {
                    offset,
                    kind: kind.clone(),
                };
                assert_eq!(read(&bytes, chunk), Err(expected), "{name} in chunks of {chunk}");
            }
        }
    }

    #[test]
    fn errors_stick() {
        let mut reader = NarReader::new();
        let err = reader.update(b"garbage!").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid NAR at byte 0: it does not start with the magic 'nix-archive-1'"
        );
        assert_eq!(reader.update(&file(b"x")), Err(err.clone()));
        assert_eq!(reader.finish(), Err(err));
    }

    #[test]
    fn stops_at_the_end_of_an_embedded_archive() {
        let archive = nar(TREE);
        let expected = read(&archive, 1 << 20).unwrap();
        let mut stream = archive.clone();
        stream.extend_from_slice(b"\x01after the archive");
        for chunk in CHUNKS {
            let mut reader = NarReader::new();
            let mut used = 0;
            for c in stream.chunks(chunk) {
                if reader.is_complete() {
                    break;
                }
                used += reader.update_until_end(c).unwrap();
            }
            assert_eq!(used, archive.len(), "in chunks of {chunk}");
            assert!(reader.is_complete());
            assert_eq!(reader.finish(), Ok(expected), "in chunks of {chunk}");
        }
        // Not complete while the archive is unfinished.
        let mut reader = NarReader::new();
        assert_eq!(
            reader.update_until_end(&archive[..archive.len() - 8]),
            Ok(archive.len() - 8)
        );
        assert!(!reader.is_complete());
    }

    fn listing(bytes: &[u8], chunk: usize) -> Option<String> {
        let mut reader = NarReader::with_listing();
        for c in bytes.chunks(chunk) {
            reader.update(c).unwrap();
        }
        reader.finish_with_listing().unwrap().1
    }

    #[test]
    fn lists_every_entry_as_nix_does_in_any_chunking() {
        // `narOffset` is where a file's bytes begin (checked below): `B`'s after the magic (24 bytes), "(" "type"
        // "directory" (56), its entry's tokens up to "contents" (176) and the 8-byte length.
        let expected = concat!(
            r#"{"version":1,"root":{"type":"directory","entries":{"#,
            r#""B":{"type":"regular","size":9,"executable":true,"narOffset":264},"#,
            r#""a":{"type":"directory","entries":{"empty":{"type":"directory","entries":{}},"#,
            r#""file":{"type":"regular","size":0,"narOffset":768}}},"#,
            r#""a-b":{"type":"symlink","target":"a/file"},"#,
            r#""a.b":{"type":"regular","size":8,"narOffset":1176}}}}"#
        );
        let tree = nar(TREE);
        for chunk in CHUNKS {
            assert_eq!(listing(&tree, chunk).as_deref(), Some(expected), "in chunks of {chunk}");
        }
        // The offsets are where the contents are.
        assert_eq!(&tree[264..273], b"#!/bin/sh");
        assert_eq!(&tree[1176..1184], b"12345678");
        // Names and targets are JSON strings.
        let quoted = nar(r#"nix-archive-1 ( type directory entry ( name "\ node ( type symlink target é"\ ) ) )"#);
        assert_eq!(
            listing(&quoted, 3).as_deref(),
            Some(r#"{"version":1,"root":{"type":"directory","entries":{"\"\\":{"type":"symlink","target":"é\"\\"}}}}"#)
        );
        assert_eq!(
            listing(&nar("nix-archive-1 ( type symlink target /nix/store/x )"), 1).as_deref(),
            Some(r#"{"version":1,"root":{"type":"symlink","target":"/nix/store/x"}}"#)
        );
    }

    #[test]
    fn gives_the_listing_up_past_its_limit_but_still_checks_the_archive() {
        let names: Vec<Vec<u8>> = (0..MAX_LISTING_LEN / 200)
            .map(|i| format!("{i:0>250}").into_bytes())
            .collect();
        let refs: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
        let big = dir(&refs);
        let mut reader = NarReader::with_listing();
        reader.update(&big).unwrap();
        let (summary, listing) = reader.finish_with_listing().unwrap();
        assert_eq!(summary.nar_size, big.len() as u64);
        assert_eq!(listing, None);
        // A bad archive is refused whether it is listed or not.
        let mut reader = NarReader::with_listing();
        assert!(reader.update(&dir(&[b"b", b"a"])).is_err());
    }

    #[test]
    fn streams_contents_without_buffering() {
        // A 1 TiB file is announced; only its start is fed. Nothing is allocated for it.
        let mut header = nar("nix-archive-1 ( type regular contents");
        header.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let mut reader = NarReader::new();
        reader.update(&header).unwrap();
        reader.update(&[7; 1 << 16]).unwrap();
        assert!(reader.token.capacity() <= MAX_TOKEN_LEN as usize);
        assert_eq!(reader.bytes_read(), header.len() as u64 + (1 << 16));
        assert_eq!(
            reader.finish().unwrap_err().kind,
            NarErrorKind::Truncated {
                expected: "the rest of the file contents"
            }
        );

        // 32 MiB, fed in 64 KiB chunks: the reader's buffers never grow past a token.
        let size = 32 << 20;
        let mut head = nar("nix-archive-1 ( type regular contents");
        head.extend_from_slice(&(size as u64).to_le_bytes());
        let mut reader = NarReader::new();
        reader.update(&head).unwrap();
        let chunk = vec![0xa5; 1 << 16];
        for _ in 0..size / chunk.len() {
            reader.update(&chunk).unwrap();
            assert!(reader.token.capacity() <= MAX_TOKEN_LEN as usize);
        }
        reader.update(&nar(")")).unwrap();
        let summary = reader.finish().unwrap();
        assert_eq!(summary.nar_size, head.len() as u64 + size as u64 + 16);
    }
}
