//! Compression and decompression of cache files as push-style codecs: bytes go in, the other form comes out
//! through a callback, in bounded pieces, so a NAR of any size is handled in constant memory.

use crate::model::Compression;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("the file is not valid {0} data")]
    Corrupt(&'static str),
    #[error("the {0} data ends too early")]
    Truncated(&'static str),
    #[error("there are bytes after the end of the {0} data")]
    TrailingData(&'static str),
}

const OUT: usize = 64 * 1024;

enum Inner {
    None,
    Zstd(Box<zstd::stream::raw::Decoder<'static>>, bool),
    Xz(Box<xz2::stream::Stream>, bool),
}

/// Streaming decompressor for the compressions Nix uses in binary caches.
pub struct Decompressor {
    inner: Inner,
    out: Vec<u8>,
}

impl Decompressor {
    pub fn new(compression: Compression) -> Self {
        let inner = match compression {
            Compression::None => Inner::None,
            Compression::Zstd => match zstd::stream::raw::Decoder::new() {
                Ok(d) => Inner::Zstd(Box::new(d), false),
                Err(_) => Inner::None,
            },
            Compression::Xz => match xz2::stream::Stream::new_stream_decoder(u64::MAX, 0) {
                Ok(s) => Inner::Xz(Box::new(s), false),
                Err(_) => Inner::None,
            },
        };
        Self {
            inner,
            out: vec![0; OUT],
        }
    }

    /// Decompresses `input`, handing every produced piece to `sink`; a sink error stops and is returned.
    pub fn feed<E: From<CodecError>>(
        &mut self,
        mut input: &[u8],
        sink: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        match &mut self.inner {
            Inner::None => sink(input),
            Inner::Zstd(d, ended) => {
                use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                while !input.is_empty() {
                    if *ended {
                        // Nix writes one frame; more frames would be concatenated data, also valid zstd.
                        d.reinit().map_err(|_| CodecError::Corrupt("zstd"))?;
                        *ended = false;
                    }
                    let mut inb = InBuffer::around(input);
                    let mut outb = OutBuffer::around(&mut self.out[..]);
                    let hint = d.run(&mut inb, &mut outb).map_err(|_| CodecError::Corrupt("zstd"))?;
                    let produced = outb.pos();
                    let consumed = inb.pos();
                    if hint == 0 {
                        *ended = true;
                    }
                    sink(&self.out[..produced])?;
                    input = &input[consumed..];
                    if consumed == 0 && produced == 0 {
                        return Err(CodecError::Corrupt("zstd").into());
                    }
                }
                Ok(())
            }
            Inner::Xz(s, ended) => {
                while !input.is_empty() {
                    if *ended {
                        return Err(CodecError::TrailingData("xz").into());
                    }
                    let (before_in, before_out) = (s.total_in(), s.total_out());
                    let status = s
                        .process(input, &mut self.out, xz2::stream::Action::Run)
                        .map_err(|_| CodecError::Corrupt("xz"))?;
                    let consumed = (s.total_in() - before_in) as usize;
                    let produced = (s.total_out() - before_out) as usize;
                    if status == xz2::stream::Status::StreamEnd {
                        *ended = true;
                    }
                    sink(&self.out[..produced])?;
                    input = &input[consumed..];
                    if consumed == 0 && produced == 0 && !*ended {
                        return Err(CodecError::Corrupt("xz").into());
                    }
                }
                Ok(())
            }
        }
    }

    /// Flushes what is left and checks that the compressed data ended properly.
    pub fn finish<E: From<CodecError>>(&mut self, sink: &mut impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        match &mut self.inner {
            Inner::None => Ok(()),
            Inner::Zstd(d, ended) => {
                use zstd::stream::raw::{Operation, OutBuffer};
                loop {
                    let mut outb = OutBuffer::around(&mut self.out[..]);
                    let remaining = d.flush(&mut outb).map_err(|_| CodecError::Corrupt("zstd"))?;
                    let produced = outb.pos();
                    sink(&self.out[..produced])?;
                    if remaining == 0 || produced == 0 {
                        break;
                    }
                }
                if *ended {
                    Ok(())
                } else {
                    Err(CodecError::Truncated("zstd").into())
                }
            }
            Inner::Xz(s, ended) => {
                while !*ended {
                    let before_out = s.total_out();
                    let status = s
                        .process(&[], &mut self.out, xz2::stream::Action::Finish)
                        .map_err(|_| CodecError::Truncated("xz"))?;
                    let produced = (s.total_out() - before_out) as usize;
                    sink(&self.out[..produced])?;
                    if status == xz2::stream::Status::StreamEnd {
                        *ended = true;
                    } else if produced == 0 {
                        return Err(CodecError::Truncated("xz").into());
                    }
                }
                Ok(())
            }
        }
    }
}

enum Encoder {
    None,
    Zstd(Box<zstd::stream::raw::Encoder<'static>>),
    Xz(Box<xz2::stream::Stream>),
}

/// Streaming compressor for the compressions Nix uses in binary caches, at Nix's default levels.
pub struct Compressor {
    inner: Encoder,
    out: Vec<u8>,
}

/// zstd encoders (level 3) and output buffers of ended compressors, kept for the next ones: a new encoder
/// allocates and clears its window and tables (megabytes) on its first use, which cost more than compressing a
/// small NAR; a reused one starts its next frame without that. At most this many are kept.
const KEPT_ENCODERS: usize = 8;

type KeptEncoder = (Box<zstd::stream::raw::Encoder<'static>>, Vec<u8>);

static ENCODERS: std::sync::Mutex<Vec<KeptEncoder>> = std::sync::Mutex::new(Vec::new());

fn kept_encoders() -> std::sync::MutexGuard<'static, Vec<KeptEncoder>> {
    ENCODERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Compressors (zstd or xz) alive now, and the most alive at once since the process started: each holds
/// megabytes (a zstd encoder at level 3 about 4 MB, an xz one at level 6 far more), so what holds them must
/// hold few at a time (an import holds one while a NAR is read, none while its batch waits, see
/// `service::binary_cache`).
static COMPRESSORS_ALIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static COMPRESSORS_PEAK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The most compressors (zstd or xz; not the kept idle ones) that were alive at once in this process.
pub fn compressors_peak() -> usize {
    COMPRESSORS_PEAK.load(std::sync::atomic::Ordering::Relaxed)
}

fn compressor_born() {
    use std::sync::atomic::Ordering::Relaxed;
    let alive = COMPRESSORS_ALIVE.fetch_add(1, Relaxed) + 1;
    COMPRESSORS_PEAK.fetch_max(alive, Relaxed);
}

impl Drop for Compressor {
    fn drop(&mut self) {
        if !matches!(self.inner, Encoder::None) {
            COMPRESSORS_ALIVE.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Encoder::Zstd(e) = std::mem::replace(&mut self.inner, Encoder::None) {
            use zstd::stream::raw::Operation;
            let mut e = e;
            // Whatever it was doing (ended or dropped midway), it starts a new frame with the same level.
            if e.reinit().is_ok() {
                let mut kept = kept_encoders();
                if kept.len() < KEPT_ENCODERS {
                    kept.push((e, std::mem::take(&mut self.out)));
                }
            }
        }
    }
}

impl Compressor {
    pub fn new(compression: Compression) -> Result<Self, CodecError> {
        if compression == Compression::Zstd
            && let Some((e, out)) = kept_encoders().pop()
        {
            compressor_born();
            return Ok(Self {
                inner: Encoder::Zstd(e),
                out,
            });
        }
        let inner = match compression {
            Compression::None => Encoder::None,
            Compression::Zstd => Encoder::Zstd(Box::new(
                zstd::stream::raw::Encoder::new(3).map_err(|_| CodecError::Corrupt("zstd"))?,
            )),
            Compression::Xz => Encoder::Xz(Box::new(
                xz2::stream::Stream::new_easy_encoder(6, xz2::stream::Check::Crc64)
                    .map_err(|_| CodecError::Corrupt("xz"))?,
            )),
        };
        if !matches!(inner, Encoder::None) {
            compressor_born();
        }
        Ok(Self {
            inner,
            out: vec![0; OUT],
        })
    }

    /// Compresses `input`, handing every produced piece to `sink`; a sink error stops and is returned.
    pub fn feed<E: From<CodecError>>(
        &mut self,
        mut input: &[u8],
        sink: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        match &mut self.inner {
            Encoder::None => sink(input),
            Encoder::Zstd(e) => {
                use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                while !input.is_empty() {
                    let mut inb = InBuffer::around(input);
                    let mut outb = OutBuffer::around(&mut self.out[..]);
                    e.run(&mut inb, &mut outb).map_err(|_| CodecError::Corrupt("zstd"))?;
                    let (consumed, produced) = (inb.pos(), outb.pos());
                    sink(&self.out[..produced])?;
                    input = &input[consumed..];
                }
                Ok(())
            }
            Encoder::Xz(s) => {
                while !input.is_empty() {
                    let (before_in, before_out) = (s.total_in(), s.total_out());
                    s.process(input, &mut self.out, xz2::stream::Action::Run)
                        .map_err(|_| CodecError::Corrupt("xz"))?;
                    let consumed = (s.total_in() - before_in) as usize;
                    let produced = (s.total_out() - before_out) as usize;
                    sink(&self.out[..produced])?;
                    input = &input[consumed..];
                }
                Ok(())
            }
        }
    }

    /// Ends the compressed data, handing what is left to `sink`.
    pub fn finish<E: From<CodecError>>(&mut self, sink: &mut impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        match &mut self.inner {
            Encoder::None => Ok(()),
            Encoder::Zstd(e) => {
                use zstd::stream::raw::{Operation, OutBuffer};
                loop {
                    let mut outb = OutBuffer::around(&mut self.out[..]);
                    let remaining = e.finish(&mut outb, true).map_err(|_| CodecError::Corrupt("zstd"))?;
                    let produced = outb.pos();
                    sink(&self.out[..produced])?;
                    if remaining == 0 {
                        return Ok(());
                    }
                }
            }
            Encoder::Xz(s) => loop {
                let before_out = s.total_out();
                let status = s
                    .process(&[], &mut self.out, xz2::stream::Action::Finish)
                    .map_err(|_| CodecError::Corrupt("xz"))?;
                let produced = (s.total_out() - before_out) as usize;
                sink(&self.out[..produced])?;
                if status == xz2::stream::Status::StreamEnd {
                    return Ok(());
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(c: Compression, data: &[u8], chunk: usize) -> Result<Vec<u8>, CodecError> {
        let mut d = Decompressor::new(c);
        let mut out = Vec::new();
        let mut sink = |b: &[u8]| -> Result<(), CodecError> {
            out.extend_from_slice(b);
            Ok(())
        };
        for piece in data.chunks(chunk.max(1)) {
            d.feed(piece, &mut sink)?;
        }
        d.finish(&mut sink)?;
        Ok(out)
    }

    fn sample() -> Vec<u8> {
        (0..300_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect()
    }

    #[test]
    fn zstd_and_xz_round_trip_in_any_chunking() {
        let plain = sample();
        let z = zstd::bulk::compress(&plain, 3).unwrap();
        let mut x = Vec::new();
        {
            use std::io::Write;
            let mut w = xz2::write::XzEncoder::new(&mut x, 6);
            w.write_all(&plain).unwrap();
            w.finish().unwrap();
        }
        for chunk in [1, 7, 4096, 1 << 20] {
            if chunk == 1 {
                // One byte at a time is slow for 1 MiB of output; a prefix is enough.
                continue;
            }
            assert_eq!(run(Compression::Zstd, &z, chunk).unwrap(), plain, "zstd, chunk {chunk}");
            assert_eq!(run(Compression::Xz, &x, chunk).unwrap(), plain, "xz, chunk {chunk}");
        }
        assert_eq!(run(Compression::None, &plain, 1000).unwrap(), plain);
        let small_z = zstd::bulk::compress(b"hello", 3).unwrap();
        assert_eq!(run(Compression::Zstd, &small_z, 1).unwrap(), b"hello");
    }

    #[test]
    fn what_the_compressor_writes_decompresses_to_the_input() {
        let plain = sample();
        for c in [Compression::Zstd, Compression::Xz, Compression::None] {
            for chunk in [7, 4096, 1 << 20] {
                let mut compressor = Compressor::new(c).unwrap();
                let mut packed = Vec::new();
                let mut sink = |b: &[u8]| -> Result<(), CodecError> {
                    packed.extend_from_slice(b);
                    Ok(())
                };
                for piece in plain[..if chunk == 7 { 10_000 } else { plain.len() }].chunks(chunk) {
                    compressor.feed(piece, &mut sink).unwrap();
                }
                compressor.finish(&mut sink).unwrap();
                let expected = &plain[..if chunk == 7 { 10_000 } else { plain.len() }];
                if c != Compression::None {
                    assert!(packed.len() < expected.len() / 2, "{c:?} compresses");
                }
                assert_eq!(run(c, &packed, 4096).unwrap(), expected, "{c:?} in chunks of {chunk}");
            }
        }
        // Nothing in, a valid empty file out.
        let mut compressor = Compressor::new(Compression::Zstd).unwrap();
        let mut packed = Vec::new();
        compressor
            .finish(&mut |b: &[u8]| -> Result<(), CodecError> {
                packed.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
        assert_eq!(run(Compression::Zstd, &packed, 1).unwrap(), b"");
    }

    #[test]
    fn truncated_or_corrupt_data_is_refused() {
        let plain = sample();
        let z = zstd::bulk::compress(&plain, 3).unwrap();
        assert!(
            run(Compression::Zstd, &z[..z.len() / 2], 4096).is_err(),
            "truncated zstd"
        );
        assert!(
            run(Compression::Zstd, b"definitely not zstd", 4096).is_err(),
            "not zstd"
        );
        assert!(run(Compression::Xz, b"definitely not xz", 4096).is_err(), "not xz");
        let mut x = Vec::new();
        {
            use std::io::Write;
            let mut w = xz2::write::XzEncoder::new(&mut x, 1);
            w.write_all(&plain).unwrap();
            w.finish().unwrap();
        }
        assert!(run(Compression::Xz, &x[..x.len() - 10], 4096).is_err(), "truncated xz");
        let mut trailing = x.clone();
        trailing.extend_from_slice(b"junk");
        assert!(run(Compression::Xz, &trailing, 4096).is_err(), "xz with trailing bytes");
    }

    #[test]
    fn a_compressor_after_others_ended_or_were_dropped_midway_compresses_only_its_own_input() {
        let compress = |data: &[u8], end: bool| -> Vec<u8> {
            let mut c = Compressor::new(Compression::Zstd).unwrap();
            let mut out = Vec::new();
            let mut sink = |b: &[u8]| -> Result<(), CodecError> {
                out.extend_from_slice(b);
                Ok(())
            };
            c.feed(data, &mut sink).unwrap();
            if end {
                c.finish(&mut sink).unwrap();
            }
            out
        };
        let first: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        compress(&first, false);
        compress(b"ended", true);
        for data in [&b"small"[..], &first[..1000], &first] {
            let z = compress(data, true);
            assert_eq!(run(Compression::Zstd, &z, 4096).unwrap(), data);
        }
    }
}
