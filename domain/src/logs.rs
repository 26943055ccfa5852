//! Build logs: what is kept of a log while it streams in and once it is stored.
//!
//! A log is capped: its first [`LOG_HEAD_BYTES`] (how the build started) and its last [`LOG_TAIL_BYTES`] (how
//! it ended, where the error is) are kept, and a visible marker line says how much was left out between them.
//! Offsets are those of the whole log as the builder printed it, so a live reader resumes where it stopped even
//! after the middle was dropped. Stored logs are zstd-compressed.

use std::io::Read;

/// The beginning of a log kept whatever its length.
pub const LOG_HEAD_BYTES: usize = 64 * 1024;
/// The end of a log kept whatever its length.
pub const LOG_TAIL_BYTES: usize = 512 * 1024;

/// The line standing for the part of a log that was left out.
pub fn omission_marker(omitted: u64) -> String {
    format!("\n[gradient: {omitted} bytes of this log were left out here]\n")
}

/// A log being received: bounded by about `LOG_HEAD_BYTES + 2 × LOG_TAIL_BYTES` however long it gets.
#[derive(Debug, Default, Clone)]
pub struct LogBuffer {
    head: String,
    tail: String,
    /// Bytes left out between `head` and `tail`.
    omitted: u64,
}

impl LogBuffer {
    /// The length of everything appended so far.
    pub fn len(&self) -> u64 {
        (self.head.len() + self.tail.len()) as u64 + self.omitted
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes left out so far.
    pub fn omitted(&self) -> u64 {
        self.omitted
    }

    pub fn append(&mut self, mut text: &str) {
        if self.omitted == 0 && self.tail.is_empty() && self.head.len() < LOG_HEAD_BYTES {
            let room = text.floor_char_boundary(LOG_HEAD_BYTES - self.head.len());
            self.head.push_str(&text[..room]);
            text = &text[room..];
        }
        self.tail.push_str(text);
        if self.tail.len() > 2 * LOG_TAIL_BYTES {
            let cut = self.tail.ceil_char_boundary(self.tail.len() - LOG_TAIL_BYTES);
            self.tail.drain(..cut);
            self.omitted += cut as u64;
        }
    }

    /// What was appended from byte `offset` of the whole log on, and the offset after it. Left-out bytes are
    /// skipped (with the marker when the reader was before them); an offset inside a character starts at the
    /// next one.
    pub fn read_from(&self, offset: u64) -> (String, u64) {
        let end = self.len();
        let head_len = self.head.len() as u64;
        let mut out = String::new();
        if offset < head_len {
            out.push_str(&self.head[self.head.ceil_char_boundary(offset as usize)..]);
            if self.omitted > 0 {
                out.push_str(&omission_marker(self.omitted));
            }
            out.push_str(&self.tail);
        } else {
            let tail_start = head_len + self.omitted;
            if offset < tail_start {
                // The reader stopped in what was left out since.
                out.push_str(&omission_marker(tail_start - offset));
            }
            let from = offset.saturating_sub(tail_start).min(self.tail.len() as u64) as usize;
            out.push_str(&self.tail[self.tail.ceil_char_boundary(from)..]);
        }
        (out, end)
    }

    /// The text to store: the head, the marker if anything was left out, and the tail (at most
    /// [`LOG_TAIL_BYTES`] of it).
    pub fn finish(self) -> (String, u64) {
        let mut tail = self.tail;
        let mut omitted = self.omitted;
        if tail.len() > LOG_TAIL_BYTES {
            let cut = tail.ceil_char_boundary(tail.len() - LOG_TAIL_BYTES);
            tail.drain(..cut);
            omitted += cut as u64;
        }
        let mut text = self.head;
        if omitted > 0 {
            text.push_str(&omission_marker(omitted));
        }
        text.push_str(&tail);
        (text, omitted)
    }
}

/// Compresses a log for storage.
pub fn compress(text: &str) -> Result<Vec<u8>, std::io::Error> {
    // Level 3 is zstd's default: fast, and logs shrink several times over.
    zstd::bulk::compress(text.as_bytes(), 3)
}

/// A stored log's text. Reads at most `limit` bytes, so a corrupt or hostile blob cannot blow up memory.
pub fn decompress(compressed: &[u8], limit: u64) -> Result<String, std::io::Error> {
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(compressed)?
        .take(limit)
        .read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The most a stored log's text can be (head, marker and tail).
pub const MAX_STORED_LOG: u64 = (LOG_HEAD_BYTES + LOG_TAIL_BYTES + 128) as u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_log_is_kept_whole() {
        let mut log = LogBuffer::default();
        log.append("building\n");
        log.append("done\n");
        assert_eq!(log.read_from(0), ("building\ndone\n".into(), 14));
        assert_eq!(log.read_from(9), ("done\n".into(), 14));
        assert_eq!(log.read_from(14), (String::new(), 14));
        assert_eq!(log.finish(), ("building\ndone\n".into(), 0));
    }

    #[test]
    fn a_long_log_keeps_its_start_and_end_with_a_marker_between() {
        let mut log = LogBuffer::default();
        let mut printed = 0u64;
        for i in 0..200_000 {
            let line = format!("line {i:06} ééé\n");
            printed += line.len() as u64;
            log.append(&line);
        }
        assert_eq!(log.len(), printed, "offsets count everything printed");
        assert!(log.omitted() > 0);
        // A reader at the end gets nothing; one inside the dropped middle resumes at the kept tail.
        assert_eq!(log.read_from(printed).0, "");
        let (rest, end) = log.read_from(LOG_HEAD_BYTES as u64 + 10);
        assert_eq!(end, printed);
        assert!(rest.ends_with("line 199999 ééé\n"));
        assert!(
            rest.starts_with("\n[gradient: "),
            "the reader is told what it missed: {}",
            &rest[..60]
        );
        let (text, omitted) = log.finish();
        assert!(text.starts_with("line 000000 ééé\n"));
        assert!(text.ends_with("line 199999 ééé\n"));
        assert!(text.contains(&omission_marker(omitted)), "the cut is visible");
        assert!(text.len() as u64 <= MAX_STORED_LOG);
        assert_eq!(
            text.len() as u64 + omitted,
            printed + omission_marker(omitted).len() as u64
        );
    }

    #[test]
    fn a_reader_from_the_start_sees_the_marker_where_the_middle_went() {
        let mut log = LogBuffer::default();
        log.append(&"a".repeat(LOG_HEAD_BYTES));
        log.append(&"b".repeat(3 * LOG_TAIL_BYTES));
        let (text, _) = log.read_from(0);
        assert!(text.starts_with('a'));
        assert!(text.contains("bytes of this log were left out here"));
        assert!(text.ends_with('b'));
    }

    #[test]
    fn compression_round_trips_and_bounds_what_it_reads() {
        let text = "warning: something\n".repeat(10_000);
        let packed = compress(&text).unwrap();
        assert!(packed.len() < text.len() / 10, "logs compress well");
        assert_eq!(decompress(&packed, u64::MAX).unwrap(), text);
        assert_eq!(decompress(&packed, 7).unwrap(), "warning");
        assert!(decompress(b"not zstd", 100).is_err());
    }
}
