//! Who a request comes from, for rules that depend on it (a cache's local priority): the peer address, or
//! the address a trusted reverse proxy put in `X-Forwarded-For`.

use ipnet::IpNet;
use std::net::IpAddr;

/// The client's address: the right-most `X-Forwarded-For` entry not itself a trusted proxy, when the
/// peer is a trusted proxy; the peer otherwise. Entries that do not parse end the walk (they were added by
/// an untrusted party).
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted_proxies: &[IpNet]) -> IpAddr {
    if !in_any(peer, trusted_proxies) {
        return peer;
    }
    let Some(header) = forwarded_for else { return peer };
    let mut client = peer;
    for entry in header.rsplit(',').map(str::trim) {
        match entry.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !in_any(ip, trusted_proxies) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

pub fn in_any(ip: IpAddr, nets: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap(), "::1/128".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let table = [
            ("127.0.0.1", Some("10.1.2.3"), "10.1.2.3"),
            ("127.0.0.1", Some("203.0.113.9, 10.1.2.3"), "10.1.2.3"),
            ("127.0.0.1", Some("10.1.2.3, 127.0.0.1"), "10.1.2.3"),
            ("127.0.0.1", None, "127.0.0.1"),
            ("127.0.0.1", Some("garbage"), "127.0.0.1"),
            ("192.0.2.7", Some("10.1.2.3"), "192.0.2.7"),
            ("::ffff:127.0.0.1", Some("10.9.9.9"), "10.9.9.9"),
        ];
        for (peer, xff, want) in table {
            assert_eq!(client_ip(ip(peer), xff, &trusted), ip(want), "{peer} {xff:?}");
        }
    }
}
