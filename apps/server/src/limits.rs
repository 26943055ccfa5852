//! Rate limits at the HTTP edge: how many logins and registrations one account and one client address may
//! attempt. Every quota is here, and `docs/security.md` lists them for operators. The limiters are
//! `governor`'s keyed GCRA limiters: a key has a burst of attempts, and gets one more back every period; an
//! attempt refused does not use anything up, so a client that waits as told gets in.
//!
//! The client address is `gradient_domain::net::client_ip`: the peer, or what a trusted proxy
//! (`GRADIENT_TRUSTED_PROXIES`) put in `X-Forwarded-For`.

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::time::Duration;

/// A burst of attempts and how often one more comes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub burst: u32,
    pub every: Duration,
}

/// Login attempts for one account (the login name as typed, lowercased) from one client network (an IPv4
/// address, an IPv6 /64): 10 at once, then one every 6 seconds (10 a minute). Guessing a password is slow, and
/// someone guessing from elsewhere cannot lock the account's owner out.
pub const LOGIN_PER_ACCOUNT: Limit = Limit {
    burst: 10,
    every: Duration::from_secs(6),
};

/// Login attempts for one account from everywhere together: 100 at once, then one every 36 seconds (100 an
/// hour). Far above what its owner needs, so guessing from elsewhere does not lock them out quickly, but it caps
/// guessing however many networks a guesser has.
pub const LOGIN_PER_ACCOUNT_EVERYWHERE: Limit = Limit {
    burst: 100,
    every: Duration::from_secs(36),
};

/// Login attempts from one client network (an IPv4 address, an IPv6 /64), whatever the accounts: 30 at once, then one every 2 seconds
/// (30 a minute). Trying one password on many accounts is slow too; an office behind one NAT address still
/// logs in.
pub const LOGIN_PER_ADDRESS: Limit = Limit {
    burst: 30,
    every: Duration::from_secs(2),
};

/// Registrations from one client network (an IPv4 address, an IPv6 /64): 20 at once, then one every 30 seconds (2 a minute).
pub const REGISTER_PER_ADDRESS: Limit = Limit {
    burst: 20,
    every: Duration::from_secs(30),
};

/// Requests that send mail to an account (a new verification mail, a password reset) from one client network:
/// 5 at once, then one a minute. Each account also gets at most one mail of each kind a minute (the domain's
/// rule, `gradient_domain::mail::RESEND_INTERVAL`); this keeps one client from mailing many accounts.
pub const MAIL_PER_ADDRESS: Limit = Limit {
    burst: 5,
    every: Duration::from_secs(60),
};

/// The longest login name kept as a key; longer ones (which match no account) share one key.
const MAX_ACCOUNT_KEY: usize = 256;

/// The server's limiters.
pub struct Limits {
    login_account: DefaultKeyedRateLimiter<(String, IpAddr)>,
    login_account_everywhere: DefaultKeyedRateLimiter<String>,
    login_address: DefaultKeyedRateLimiter<IpAddr>,
    register_address: DefaultKeyedRateLimiter<IpAddr>,
    mail_address: DefaultKeyedRateLimiter<IpAddr>,
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(LOGIN_PER_ACCOUNT, LOGIN_PER_ADDRESS, REGISTER_PER_ADDRESS)
    }
}

fn quota(limit: Limit) -> Quota {
    let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(limit.every)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// How long to wait before trying again.
fn check<K: Hash + Eq + Clone>(limiter: &DefaultKeyedRateLimiter<K>, key: &K) -> Result<(), Duration> {
    limiter
        .check_key(key)
        .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
}

impl Limits {
    pub fn new(login_account: Limit, login_address: Limit, register_address: Limit) -> Self {
        Self {
            login_account: RateLimiter::keyed(quota(login_account)),
            login_account_everywhere: RateLimiter::keyed(quota(LOGIN_PER_ACCOUNT_EVERYWHERE)),
            login_address: RateLimiter::keyed(quota(login_address)),
            register_address: RateLimiter::keyed(quota(register_address)),
            mail_address: RateLimiter::keyed(quota(MAIL_PER_ADDRESS)),
        }
    }

    /// Counts a login attempt for `login` (a username or an email) from `client`; `Err` says how long to
    /// wait. The address is checked first, so a refused address does not use up the account's attempts.
    pub fn login(&self, login: &str, client: IpAddr) -> Result<(), Duration> {
        let network = network_of(client);
        check(&self.login_address, &network)?;
        let mut account = login.trim().to_lowercase();
        if account.len() > MAX_ACCOUNT_KEY {
            account = String::from("\u{0}too-long");
        }
        check(&self.login_account, &(account.clone(), network))?;
        check(&self.login_account_everywhere, &account)
    }

    /// Counts a registration from `client`; `Err` says how long to wait.
    pub fn register(&self, client: IpAddr) -> Result<(), Duration> {
        check(&self.register_address, &network_of(client))
    }

    /// Counts a request that mails an account (verification, password reset) from `client`; `Err` says how long
    /// to wait.
    pub fn mail(&self, client: IpAddr) -> Result<(), Duration> {
        check(&self.mail_address, &network_of(client))
    }

    /// Forgets keys whose attempts are all back (run now and then, so memory follows recent traffic).
    pub fn forget_idle(&self) {
        for limiter in [&self.login_address, &self.register_address, &self.mail_address] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        self.login_account.retain_recent();
        self.login_account.shrink_to_fit();
        self.login_account_everywhere.retain_recent();
        self.login_account_everywhere.shrink_to_fit();
    }
}

/// What one client is counted as: its IPv4 address, or the /64 of its IPv6 address (one host usually holds a
/// whole /64, so counting single IPv6 addresses would let it through as many times as it likes).
fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
        v4 => v4,
    }
}

/// The client address of a request: see the module documentation. A peer without an IP address (a request
/// made in-process) counts as 127.0.0.1.
pub fn client_ip(req: &poem::Request, trusted_proxies: &[ipnet::IpNet]) -> IpAddr {
    let peer = req
        .remote_addr()
        .as_socket_addr()
        .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |a| a.ip());
    gradient_domain::net::client_ip(peer, req.header("x-forwarded-for"), trusted_proxies)
}

/// `Retry-After` in whole seconds, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn an_account_gets_its_burst_per_network_and_others_still_log_in() {
        let limits = Limits::default();
        for i in 0..LOGIN_PER_ACCOUNT.burst {
            assert_eq!(limits.login("Alice", ip("10.0.0.1")), Ok(()), "attempt {i}");
        }
        let wait = limits
            .login(" alice ", ip("10.0.0.1"))
            .expect_err("the account is limited from there");
        assert!(wait > Duration::ZERO && wait <= LOGIN_PER_ACCOUNT.every, "{wait:?}");
        // The account's owner, elsewhere, is not locked out; another account is not affected.
        assert_eq!(limits.login("alice", ip("10.0.1.1")), Ok(()));
        assert_eq!(limits.login("bob", ip("10.0.0.1")), Ok(()));
        // One IPv6 host is one client, whichever address of its /64 it uses.
        for i in 0..LOGIN_PER_ACCOUNT.burst {
            let from = format!("2001:db8:1:2::{:x}", i + 1);
            assert_eq!(limits.login("carol", ip(&from)), Ok(()), "attempt {i}");
        }
        assert!(limits.login("carol", ip("2001:db8:1:2:ffff::1")).is_err());
        assert_eq!(limits.login("carol", ip("2001:db8:1:3::1")), Ok(()));
    }

    #[test]
    fn guessing_from_many_networks_is_capped_per_account() {
        let limits = Limits::default();
        let mut allowed = 0;
        for i in 0..=255u8 {
            for j in 0..2u8 {
                if limits.login("dave", IpAddr::from([10, 1, i, j])).is_ok() {
                    allowed += 1;
                }
            }
        }
        assert_eq!(allowed, LOGIN_PER_ACCOUNT_EVERYWHERE.burst, "512 networks, one account");
        assert_eq!(limits.login("erin", ip("10.1.0.0")), Ok(()), "another account");
    }

    #[test]
    fn an_address_gets_its_burst_across_accounts() {
        let limits = Limits::default();
        for i in 0..LOGIN_PER_ADDRESS.burst {
            assert_eq!(
                limits.login(&format!("user{i}"), ip("192.0.2.7")),
                Ok(()),
                "attempt {i}"
            );
        }
        assert!(limits.login("someone-else", ip("192.0.2.7")).is_err());
        assert_eq!(limits.login("someone-else", ip("192.0.2.8")), Ok(()));
        // The refused attempt did not use up the other account's budget.
        for _ in 1..LOGIN_PER_ACCOUNT.burst {
            assert_eq!(limits.login("someone-else", ip("192.0.2.9")), Ok(()));
        }
    }

    #[test]
    fn registrations_are_limited_per_address() {
        let limits = Limits::default();
        for _ in 0..REGISTER_PER_ADDRESS.burst {
            assert_eq!(limits.register(ip("::1")), Ok(()));
        }
        assert!(limits.register(ip("::1")).is_err());
        assert!(limits.register(ip("::2")).is_err(), "the same /64");
        assert_eq!(limits.register(ip("2001:db8::1")), Ok(()));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(6)), 6);
        assert_eq!(retry_after_secs(Duration::from_millis(5_001)), 6);
    }
}
