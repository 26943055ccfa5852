//! Nix's base32 ("nix32"): the alphabet omits `e`, `o`, `t` and `u`, and the digits are taken from the end
//! of the byte string, five bits at a time, least significant bits first. Store path hashes and the hashes
//! in narinfo files are written this way.

/// The 32 digits, in value order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Nix32Error {
    #[error("'{0}' is not a nix32 character")]
    InvalidChar(char),
    #[error("{0} characters is not the nix32 length of any byte string")]
    InvalidLength(usize),
    #[error("the first nix32 character sets bits beyond the end of the bytes (non-canonical encoding)")]
    NonCanonical,
}

/// How many nix32 characters encode `n` bytes: `ceil(8n / 5)`.
pub const fn encoded_len(n: usize) -> usize {
    (n * 8).div_ceil(5)
}

/// The value of one nix32 character, if it is one.
pub fn digit(c: u8) -> Option<u8> {
    // ALPHABET is 32 long, so the position always fits in a u8.
    ALPHABET.iter().position(|&a| a == c).map(|i| i as u8)
}

pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    // Character k (from the left) holds bits [5(len-1-k), 5(len-k)) of the little-endian bit string.
    for n in (0..len).rev() {
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        let low = bytes[i] >> j;
        let high = match bytes.get(i + 1) {
            Some(&b) if j > 3 => b << (8 - j),
            _ => 0,
        };
        out.push(ALPHABET[usize::from((low | high) & 0x1f)] as char);
    }
    out
}

pub fn decode(s: &str) -> Result<Vec<u8>, Nix32Error> {
    let chars = s.as_bytes();
    let size = chars.len() * 5 / 8;
    if encoded_len(size) != chars.len() {
        return Err(Nix32Error::InvalidLength(chars.len()));
    }
    let mut out = vec![0u8; size];
    for (n, &c) in chars.iter().rev().enumerate() {
        let d = digit(c).ok_or_else(|| Nix32Error::InvalidChar(char_at(s, chars.len() - 1 - n)))?;
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        out[i] |= d << j;
        let carry = if j > 3 { d >> (8 - j) } else { 0 };
        match out.get_mut(i + 1) {
            Some(b) => *b |= carry,
            None if carry != 0 => return Err(Nix32Error::NonCanonical),
            None => {}
        }
    }
    Ok(out)
}

/// The character that contains byte `index` of `s`.
fn char_at(s: &str, index: usize) -> char {
    s.char_indices()
        .take_while(|&(i, _)| i <= index)
        .last()
        .map_or('?', |(_, c)| c)
}

/// Decodes into a fixed-size array, refusing any other length.
pub fn decode_array<const N: usize>(s: &str) -> Result<[u8; N], Nix32Error> {
    if s.len() != encoded_len(N) {
        return Err(Nix32Error::InvalidLength(s.len()));
    }
    decode(s)?.try_into().map_err(|_| Nix32Error::InvalidLength(s.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_nix() {
        // (bytes as hex, nix32) — the last rows are `nix hash to-base32` outputs for well-known digests.
        let cases: &[(&str, &str)] = &[
            ("", ""),
            ("00", "00"),
            ("01", "01"),
            ("1f", "0z"),
            ("20", "10"),
            ("ff", "7z"),
            ("0000", "0000"),
            ("ffff", "1zzz"),
            ("d41d8cd98f00b204e9800998ecf8427e", "3y8bwfr609h3lh9ch0izcqq7fl"),
            (
                "da39a3ee5e6b4b0d3255bfef95601890afd80709",
                "143xibwh31h9bvxzalr0sjvbbvpa6ffs",
            ),
            (
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
            ),
        ];
        for (hex, nix32) in cases {
            let bytes = hex::decode(hex).unwrap();
            assert_eq!(encode(&bytes), *nix32, "encode {hex}");
            assert_eq!(decode(nix32).unwrap(), bytes, "decode {nix32}");
            assert_eq!(encoded_len(bytes.len()), nix32.len());
        }
    }

    #[test]
    fn encoded_lengths() {
        for (n, len) in [(0, 0), (1, 2), (2, 4), (5, 8), (16, 26), (20, 32), (32, 52), (64, 103)] {
            assert_eq!(encoded_len(n), len, "{n} bytes");
        }
    }

    #[test]
    fn round_trips_every_length() {
        for n in 0..70 {
            let bytes: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(151).wrapping_add(7)).collect();
            assert_eq!(decode(&encode(&bytes)).unwrap(), bytes, "{n} bytes");
            let ones = vec![0xff; n];
            assert_eq!(decode(&encode(&ones)).unwrap(), ones, "{n} bytes of 0xff");
        }
    }

    #[test]
    fn refuses_bad_input() {
        let cases: &[(&str, Nix32Error)] = &[
            ("0e", Nix32Error::InvalidChar('e')),
            ("o0", Nix32Error::InvalidChar('o')),
            ("0t", Nix32Error::InvalidChar('t')),
            ("u0", Nix32Error::InvalidChar('u')),
            ("0A", Nix32Error::InvalidChar('A')),
            ("0-", Nix32Error::InvalidChar('-')),
            ("0é", Nix32Error::InvalidLength(3)),
            ("é00", Nix32Error::InvalidChar('é')),
            ("0", Nix32Error::InvalidLength(1)),
            ("000", Nix32Error::InvalidLength(3)),
            // 2 characters carry 10 bits for 1 byte: the top two bits must be zero.
            ("80", Nix32Error::NonCanonical),
            ("z0", Nix32Error::NonCanonical),
            // 52 characters carry 260 bits for 32 bytes: the first character must be 0 or 1.
            (
                "2mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
                Nix32Error::NonCanonical,
            ),
        ];
        for (input, err) in cases {
            assert_eq!(decode(input).unwrap_err(), *err, "{input}");
        }
    }

    #[test]
    fn fixed_size_decoding() {
        let a: [u8; 20] = decode_array("143xibwh31h9bvxzalr0sjvbbvpa6ffs").unwrap();
        assert_eq!(hex::encode(a), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            decode_array::<32>("143xibwh31h9bvxzalr0sjvbbvpa6ffs").unwrap_err(),
            Nix32Error::InvalidLength(32)
        );
    }
}
