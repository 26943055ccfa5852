//! One HTTP byte range (`Range: bytes=…`), the only form Nix and download tools send.

/// Parses `bytes=a-b`, `bytes=a-` or `bytes=-n` against a size into an inclusive (start, end);
/// `Err` when unsatisfiable or malformed (answered with 416).
pub fn parse(header: &str, size: u64) -> Result<(u64, u64), ()> {
    let spec = header.trim().strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') || size == 0 {
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size - 1)
        }
        (s, "") => (s.parse().map_err(|_| ())?, size - 1),
        (s, e) => (
            s.parse().map_err(|_| ())?,
            e.parse::<u64>().map_err(|_| ())?.min(size - 1),
        ),
    };
    if start > end || start >= size {
        Err(())
    } else {
        Ok((start, end))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ranges() {
        type Case<'a> = (&'a str, Result<(u64, u64), ()>);
        let table: &[Case] = &[
            ("bytes=0-9", Ok((0, 9))),
            ("bytes=10-", Ok((10, 99))),
            ("bytes=-10", Ok((90, 99))),
            ("bytes=-1000", Ok((0, 99))),
            ("bytes=90-1000", Ok((90, 99))),
            ("bytes=99-99", Ok((99, 99))),
            ("bytes=100-", Err(())),
            ("bytes=5-4", Err(())),
            ("bytes=0-1,5-6", Err(())),
            ("items=0-1", Err(())),
            ("bytes=-0", Err(())),
            ("bytes=x-", Err(())),
        ];
        for (h, want) in table {
            assert_eq!(super::parse(h, 100), *want, "{h}");
        }
    }
}
