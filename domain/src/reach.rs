//! What the server itself may connect to: the repositories it polls and the forge APIs it posts commit
//! statuses to are named by users, so a URL could point the server at itself, at a cloud metadata endpoint or
//! at a file on its disk. These rules decide, as pure functions:
//!
//! - which repository URLs are accepted at all ([`parse_remote`]: `https://`, `http://`, `ssh://`, `git://`,
//!   scp-like `user@host:path`, the same with Nix's `git+` prefix, and `file://`);
//! - which addresses are local ([`classify`]: loopback, link-local including 169.254.169.254, unspecified,
//!   multicast and reserved, and IPv6 forms that embed such an IPv4 address) or private (10/8, 172.16/12,
//!   192.168/16, 100.64/10, fc00::/7);
//! - what a [`NetworkPolicy`] permits: local addresses, `localhost` names and `file://` only with
//!   `allow_local` (`GRADIENT_ALLOW_LOCAL_REPOSITORIES`), private addresses unless `deny_private`
//!   (`GRADIENT_DENY_PRIVATE_NETWORKS`).
//!
//! A URL is checked by name when it is saved ([`check_remote`]); adapters check again the addresses a name
//! resolves to when they connect ([`NetworkPolicy::check`]), so a name that later resolves to a forbidden
//! address is refused too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Which addresses the server may connect to on behalf of users. The default refuses local addresses and
/// allows private ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// Loopback, link-local, unspecified addresses, `localhost` and `file://` are allowed.
    pub allow_local: bool,
    /// Private ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) are refused.
    pub deny_private: bool,
}

/// What kind of address an IP address is, for the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressKind {
    Public,
    Private,
    Loopback,
    LinkLocal,
    /// `0.0.0.0/8`, `::`: "this host" to most systems, so the server itself.
    Unspecified,
    /// Multicast, broadcast and reserved ranges: never where a repository or an API lives.
    Reserved,
}

impl AddressKind {
    /// Loopback, link-local, unspecified or reserved: refused unless local addresses are allowed.
    pub fn is_local(self) -> bool {
        !matches!(self, Self::Public | Self::Private)
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Public => "a public address",
            Self::Private => "a private network address",
            Self::Loopback => "a loopback address",
            Self::LinkLocal => "a link-local address",
            Self::Unspecified => "an unspecified address",
            Self::Reserved => "a multicast or reserved address",
        }
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressKind {
    let [a, b, ..] = ip.octets();
    match (a, b) {
        (0, _) => AddressKind::Unspecified,
        (127, _) => AddressKind::Loopback,
        (169, 254) => AddressKind::LinkLocal,
        (10, _) => AddressKind::Private,
        (172, 16..=31) => AddressKind::Private,
        (192, 168) => AddressKind::Private,
        (100, 64..=127) => AddressKind::Private,
        (224.., _) => AddressKind::Reserved,
        _ => AddressKind::Public,
    }
}

/// The kind of `ip`. IPv6 addresses that carry an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
/// `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are the kind of that IPv4 address.
pub fn classify(ip: IpAddr) -> AddressKind {
    let v6 = match ip {
        IpAddr::V4(v4) => return classify_v4(v4),
        IpAddr::V6(v6) => v6,
    };
    let s = v6.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if v6.is_unspecified() {
        return AddressKind::Unspecified;
    }
    if v6.is_loopback() {
        return AddressKind::Loopback;
    }
    if let Some(v4) = v6.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    match s {
        [0, 0, 0, 0, 0, 0, hi, lo] => return classify_v4(embedded(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => return classify_v4(embedded(hi, lo)),
        [0x2002, hi, lo, ..] => return classify_v4(embedded(hi, lo)),
        _ => {}
    }
    match s[0] {
        x if x & 0xffc0 == 0xfe80 => AddressKind::LinkLocal,
        x if x & 0xffc0 == 0xfec0 => AddressKind::Private,
        x if x & 0xfe00 == 0xfc00 => AddressKind::Private,
        x if x & 0xff00 == 0xff00 => AddressKind::Reserved,
        _ => AddressKind::Public,
    }
}

impl NetworkPolicy {
    /// Everything allowed (tests against local servers).
    pub const ALLOW_ALL: Self = Self {
        allow_local: true,
        deny_private: false,
    };

    /// Whether the server may connect to `ip`; the error says why not.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        let kind = classify(ip);
        let refused = (kind.is_local() && !self.allow_local) || (kind == AddressKind::Private && self.deny_private);
        if refused {
            let how = if kind.is_local() {
                "GRADIENT_ALLOW_LOCAL_REPOSITORIES"
            } else {
                "GRADIENT_DENY_PRIVATE_NETWORKS"
            };
            Err(format!(
                "{ip} is {} and not allowed on this server ({how})",
                kind.describe()
            ))
        } else {
            Ok(())
        }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        self.check(ip).is_ok()
    }
}

/// How a repository is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Https,
    Http,
    Ssh,
    Git,
    File,
}

impl Transport {
    pub fn default_port(self) -> u16 {
        match self {
            Self::Https => 443,
            Self::Http => 80,
            Self::Ssh => 22,
            Self::Git => 9418,
            Self::File => 0,
        }
    }

    /// Git's name of the transport (`protocol.<name>.allow`, `GIT_ALLOW_PROTOCOL`).
    pub fn git_name(self) -> &'static str {
        match self {
            Self::Https => "https",
            Self::Http => "http",
            Self::Ssh => "ssh",
            Self::Git => "git",
            Self::File => "file",
        }
    }
}

/// The host part of a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A literal address, including the numeric IPv4 forms that resolvers accept (`2130706433`, `0x7f.1`).
    Ip(IpAddr),
    /// A name, lower-cased, without a trailing dot.
    Name(String),
    /// A `file://` URL: no host.
    None,
}

/// Where a URL leads: its transport, host and port (the transport's default when not given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    pub transport: Transport,
    pub host: Host,
    pub port: u16,
    /// The URL as git takes it (Nix's `git+` prefix removed).
    pub git_url: String,
}

/// The URL forms accepted for a project's repository, as users see them in errors.
pub const REPOSITORY_FORMS: &str = "https://, http://, ssh://, git:// or user@host:path";

/// A number in the forms resolvers accept in IPv4 addresses: decimal, octal (`0` prefix), hex (`0x`).
fn ipv4_part(s: &str) -> Option<u64> {
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() {
        return (radix == 16).then_some(0);
    }
    if digits.len() > 12 {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// `a.b.c.d`, `a.b.c`, `a.b` and `a` with decimal, octal or hex parts, as `inet_aton` (and so git, curl and
/// every URL parser) reads them.
fn parse_ipv4_loose(host: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let nums: Vec<u64> = parts.iter().map(|p| ipv4_part(p)).collect::<Option<_>>()?;
    let (last, init) = nums.split_last()?;
    if init.iter().any(|&n| n > 255) || *last >= 1u64 << (8 * (5 - nums.len())) {
        return None;
    }
    let mut value = *last;
    for (i, n) in init.iter().enumerate() {
        value |= n << (8 * (3 - i));
    }
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

/// Names that always mean this machine.
pub fn is_local_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// Reads a host: a bracketed IPv6 address, an IPv4 address in any numeric form, or a name of letters,
/// digits, `-`, `_` and `.`. A host whose last label is a number must be an IPv4 address.
fn parse_host(host: &str) -> Option<Host> {
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']')?;
        // A zone (`fe80::1%25eth0`) is only meaningful on link-local addresses, which are local anyway.
        let addr = inner.split('%').next()?;
        return addr.parse::<Ipv6Addr>().ok().map(|a| Host::Ip(IpAddr::V6(a)));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty()
        || name.starts_with(['-', '.'])
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
    {
        return None;
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    let numeric = last.chars().all(|c| c.is_ascii_digit())
        || last
            .strip_prefix("0x")
            .or_else(|| last.strip_prefix("0X"))
            .is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit()));
    if numeric {
        return parse_ipv4_loose(name).map(|a| Host::Ip(IpAddr::V4(a)));
    }
    Some(Host::Name(name.to_ascii_lowercase()))
}

/// Splits `host[:port]` / `[v6][:port]`.
fn split_host_port(hp: &str, transport: Transport) -> Option<(Host, u16)> {
    let (host, port) = if hp.starts_with('[') {
        let end = hp.find(']')?;
        let rest = &hp[end + 1..];
        let port = match rest.strip_prefix(':') {
            Some(p) => Some(p),
            None if rest.is_empty() => None,
            None => return None,
        };
        (&hp[..=end], port)
    } else {
        match hp.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hp, None),
        }
    };
    let port = match port {
        None | Some("") => transport.default_port(),
        Some(p) if p.chars().all(|c| c.is_ascii_digit()) => p.parse::<u16>().ok().filter(|&p| p != 0)?,
        Some(_) => return None,
    };
    Some((parse_host(host)?, port))
}

/// Reads a repository URL (see the module's documentation); `None` when it is not one of the accepted
/// forms. `git+file://` and `file://` are read (as [`Transport::File`]) so the policy can refuse them
/// with its own reason.
pub fn parse_remote(url: &str) -> Option<Remote> {
    let url = url.trim();
    if url.is_empty() || url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let bare = url.strip_prefix("git+").unwrap_or(url);
    if let Some((scheme, rest)) = bare.split_once("://") {
        let transport = match scheme.to_ascii_lowercase().as_str() {
            "https" => Transport::Https,
            "http" => Transport::Http,
            "ssh" => Transport::Ssh,
            "git" if bare.len() == url.len() => Transport::Git,
            "file" => Transport::File,
            _ => return None,
        };
        if transport == Transport::File {
            return (!rest.is_empty()).then(|| Remote {
                transport,
                host: Host::None,
                port: 0,
                git_url: bare.to_owned(),
            });
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = split_host_port(host_port, transport)?;
        return Some(Remote {
            transport,
            host,
            port,
            git_url: bare.to_owned(),
        });
    }
    if bare.len() != url.len() {
        return None;
    }
    // scp-like `user@host:path` (and `user@[v6]:path`): no slash before the colon, a path after it.
    let (user, rest) = url.split_once('@')?;
    if user.is_empty() || user.contains(['/', ':']) {
        return None;
    }
    let (host, path) = if rest.starts_with('[') {
        let end = rest.find(']')?;
        (&rest[..=end], rest[end + 1..].strip_prefix(':')?)
    } else {
        rest.split_once(':')?
    };
    if host.contains('/') || path.is_empty() || path.starts_with("//") || path.starts_with(':') {
        return None;
    }
    Some(Remote {
        transport: Transport::Ssh,
        host: parse_host(host)?,
        port: Transport::Ssh.default_port(),
        git_url: url.to_owned(),
    })
}

/// Reads an API base URL: `http://` or `https://` with a host.
pub fn parse_http_url(url: &str) -> Option<Remote> {
    let url = url.trim();
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) {
        return None;
    }
    parse_remote(url).filter(|r| matches!(r.transport, Transport::Https | Transport::Http))
}

/// Reads a listening worker's `/proto` URL: `ws://` or `wss://` with a host (the server dials it). The answer's
/// transport is `Http` or `Https` (the same connection before the upgrade).
pub fn parse_ws_url(url: &str) -> Option<Remote> {
    let url = url.trim();
    let lower = url.get(..6).unwrap_or(url).to_ascii_lowercase();
    let http = if lower.starts_with("wss://") {
        format!("https://{}", &url[6..])
    } else if lower.starts_with("ws://") {
        format!("http://{}", &url[5..])
    } else {
        return None;
    };
    parse_http_url(&http)
}

/// Whether the policy lets the server reach `remote`, judged by what the URL says (a literal address,
/// `localhost`, `file://`); a name is judged again by what it resolves to when the server connects.
pub fn check_remote(remote: &Remote, policy: &NetworkPolicy) -> Result<(), String> {
    match &remote.host {
        Host::None if policy.allow_local => Ok(()),
        Host::None => {
            Err("file:// repositories are not allowed on this server (GRADIENT_ALLOW_LOCAL_REPOSITORIES)".into())
        }
        Host::Ip(ip) => policy.check(*ip),
        Host::Name(name) if is_local_name(name) && !policy.allow_local => Err(format!(
            "'{name}' is this machine and not allowed on this server (GRADIENT_ALLOW_LOCAL_REPOSITORIES)"
        )),
        Host::Name(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn worker_urls_are_websocket_urls_judged_as_any_other() {
        let r = parse_ws_url("wss://builder.example.com/proto").unwrap();
        assert_eq!((r.transport, r.port), (Transport::Https, 443));
        let r = parse_ws_url("ws://10.0.0.7:3100/proto").unwrap();
        assert_eq!((r.transport, r.port), (Transport::Http, 3100));
        for bad in [
            "http://x/proto",
            "ws://",
            "file:///proto",
            "ws://-x/proto",
            "builder:3100",
        ] {
            assert_eq!(parse_ws_url(bad), None, "{bad}");
        }
        let local = parse_ws_url("ws://127.0.0.1:3100/proto").unwrap();
        assert!(check_remote(&local, &NetworkPolicy::default()).is_err());
        assert!(check_remote(&local, &NetworkPolicy::ALLOW_ALL).is_ok());
        let named = parse_ws_url("ws://localhost:3100/proto").unwrap();
        assert!(check_remote(&named, &NetworkPolicy::default()).is_err());
    }

    #[test]
    fn addresses_are_classified() {
        use AddressKind::*;
        let table = [
            ("127.0.0.1", Loopback),
            ("127.255.1.2", Loopback),
            ("::1", Loopback),
            ("169.254.169.254", LinkLocal),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("::", Unspecified),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::ffff:0.0.0.0", Unspecified),
            ("::127.0.0.1", Loopback),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("2002:7f00:1::", Loopback),
            ("10.1.2.3", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("100.64.0.1", Private),
            ("100.127.255.255", Private),
            ("fc00::1", Private),
            ("fd12:3456::1", Private),
            ("::ffff:10.0.0.1", Private),
            ("224.0.0.1", Reserved),
            ("255.255.255.255", Reserved),
            ("ff02::1", Reserved),
            ("172.32.0.1", Public),
            ("172.15.0.1", Public),
            ("100.128.0.1", Public),
            ("192.169.0.1", Public),
            ("8.8.8.8", Public),
            ("140.82.112.3", Public),
            ("2606:4700::1111", Public),
            ("::ffff:8.8.8.8", Public),
        ];
        for (addr, kind) in table {
            assert_eq!(classify(ip(addr)), kind, "{addr}");
        }
    }

    #[test]
    fn the_policy_refuses_local_always_and_private_on_request() {
        let default = NetworkPolicy::default();
        let deny_private = NetworkPolicy {
            deny_private: true,
            ..default
        };
        let allow_local = NetworkPolicy {
            allow_local: true,
            ..default
        };
        // (address, default, deny_private, allow_local)
        let table = [
            ("127.0.0.1", false, false, true),
            ("::1", false, false, true),
            ("169.254.169.254", false, false, true),
            ("0.0.0.0", false, false, true),
            ("::ffff:127.0.0.1", false, false, true),
            ("10.0.0.5", true, false, true),
            ("192.168.0.5", true, false, true),
            ("fd00::5", true, false, true),
            ("8.8.8.8", true, true, true),
        ];
        for (addr, d, dp, al) in table {
            assert_eq!(default.permits(ip(addr)), d, "default {addr}");
            assert_eq!(deny_private.permits(ip(addr)), dp, "deny_private {addr}");
            assert_eq!(allow_local.permits(ip(addr)), al, "allow_local {addr}");
        }
        let why = default.check(ip("169.254.169.254")).unwrap_err();
        assert!(
            why.contains("link-local") && why.contains("GRADIENT_ALLOW_LOCAL_REPOSITORIES"),
            "{why}"
        );
    }

    #[test]
    fn repository_urls_are_read() {
        let name = |n: &str| Host::Name(n.to_owned());
        let table: &[(&str, Transport, Host, u16)] = &[
            ("https://github.com/a/b", Transport::Https, name("github.com"), 443),
            ("https://GitHub.com./a/b", Transport::Https, name("github.com"), 443),
            ("http://git.lan:8080/a.git", Transport::Http, name("git.lan"), 8080),
            ("https://user:tok@host/a", Transport::Https, name("host"), 443),
            ("ssh://git@host:2222/a.git", Transport::Ssh, name("host"), 2222),
            ("git@github.com:a/b.git", Transport::Ssh, name("github.com"), 22),
            ("git@[::1]:a/b.git", Transport::Ssh, Host::Ip(ip("::1")), 22),
            ("git://host/a", Transport::Git, name("host"), 9418),
            ("git+https://host/a", Transport::Https, name("host"), 443),
            ("git+ssh://git@host/a", Transport::Ssh, name("host"), 22),
            (
                "http://127.0.0.1:8000/a",
                Transport::Http,
                Host::Ip(ip("127.0.0.1")),
                8000,
            ),
            ("http://[::1]/a", Transport::Http, Host::Ip(ip("::1")), 80),
            (
                "http://[::ffff:7f00:1]/a",
                Transport::Http,
                Host::Ip(ip("::ffff:127.0.0.1")),
                80,
            ),
            ("http://2130706433/a", Transport::Http, Host::Ip(ip("127.0.0.1")), 80),
            ("http://0x7f.1/a", Transport::Http, Host::Ip(ip("127.0.0.1")), 80),
            ("http://0177.0.0.1/a", Transport::Http, Host::Ip(ip("127.0.0.1")), 80),
            (
                "http://169.254.43518/a",
                Transport::Http,
                Host::Ip(ip("169.254.169.254")),
                80,
            ),
            (
                "http://evil@127.0.0.1/a",
                Transport::Http,
                Host::Ip(ip("127.0.0.1")),
                80,
            ),
            ("file:///srv/repo", Transport::File, Host::None, 0),
            ("git+file:///srv/repo", Transport::File, Host::None, 0),
        ];
        for (url, transport, host, port) in table {
            let r = parse_remote(url).unwrap_or_else(|| panic!("{url} was not read"));
            assert_eq!((r.transport, &r.host, r.port), (*transport, host, *port), "{url}");
        }
        assert_eq!(parse_remote("git+https://host/a").unwrap().git_url, "https://host/a");
        for bad in [
            "",
            "github.com/a/b",
            "https://",
            "https://a b",
            "/srv/repo",
            "ftp://x/y",
            "ext::sh -c touch% /tmp/x",
            "ext::sh",
            "git+git://host/a",
            "https://-oProxyCommand=x/a",
            "https://256.0.0.1/a",
            "https://1.2.3.4.5/a",
            "https://host:99999/a",
            "https://host:x/a",
            "https://ho%73t/a",
            "user@host:",
            "user@host://x",
            "host:path",
        ] {
            assert_eq!(parse_remote(bad), None, "{bad}");
        }
    }

    #[test]
    fn repositories_are_checked_by_name_and_address() {
        let default = NetworkPolicy::default();
        let deny_private = NetworkPolicy {
            deny_private: true,
            ..default
        };
        // (url, allowed by default, allowed with deny_private, allowed with allow_local)
        let table = [
            ("https://github.com/a/b", true, true, true),
            ("git@github.com:a/b.git", true, true, true),
            ("file:///srv/repo", false, false, true),
            ("git+file:///srv/repo", false, false, true),
            ("http://127.0.0.1:8000/a.git", false, false, true),
            ("http://localhost:8000/a.git", false, false, true),
            ("http://LOCALHOST./a.git", false, false, true),
            ("https://app.localhost/a.git", false, false, true),
            ("http://169.254.169.254/latest/meta-data", false, false, true),
            ("http://[::1]/a.git", false, false, true),
            ("http://[::ffff:127.0.0.1]/a.git", false, false, true),
            ("http://[fe80::1%25eth0]/a.git", false, false, true),
            ("http://0.0.0.0/a.git", false, false, true),
            ("http://2130706433/a.git", false, false, true),
            ("git@127.0.0.1:a/b.git", false, false, true),
            ("ssh://git@[::1]/a.git", false, false, true),
            ("https://10.0.0.7/a.git", true, false, true),
            ("git@192.168.1.10:a/b.git", true, false, true),
            ("http://[fd00::7]/a.git", true, false, true),
        ];
        let allow_local = NetworkPolicy {
            allow_local: true,
            ..default
        };
        for (url, d, dp, al) in table {
            let r = parse_remote(url).unwrap_or_else(|| panic!("{url} was not read"));
            assert_eq!(check_remote(&r, &default).is_ok(), d, "default {url}");
            assert_eq!(check_remote(&r, &deny_private).is_ok(), dp, "deny_private {url}");
            assert_eq!(check_remote(&r, &allow_local).is_ok(), al, "allow_local {url}");
        }
    }

    #[test]
    fn api_urls_are_http() {
        assert!(parse_http_url("https://ghe.example.com/api/v3").is_some());
        assert!(parse_http_url("HTTP://git.lan").is_some());
        for bad in [
            "ssh://git@host/a",
            "git@host:a",
            "file:///x",
            "git+https://host",
            "https://",
        ] {
            assert_eq!(parse_http_url(bad), None, "{bad}");
        }
    }
}
