//! Connection protections configured in [`Config`](crate::Config): IP
//! allow/deny lists and per-connection message rate limits.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use tokio::time::Instant;

/// An IP network in CIDR notation (`10.0.0.0/8`, `::1/128`), or a single
/// address (`192.0.2.7`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// The network of `addr` with `prefix` leading bits; `None` if the
    /// prefix is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    /// Whether `ip` is inside this network. IPv4-mapped IPv6 addresses
    /// (`::ffff:10.0.0.1`) match IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(u32::from(net)) << 96,
                u128::from(u32::from(ip)) << 96,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, prefix: u8) -> bool {
    prefix == 0 || (a ^ b) >> (128 - u32::from(prefix)) == 0
}

/// Why a string is not an [`IpNet`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid IP network {0:?}: expected an address or ADDRESS/PREFIX")]
pub struct IpNetParseError(String);

impl FromStr for IpNet {
    type Err = IpNetParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || IpNetParseError(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| err())?;
        let prefix = match prefix {
            Some(p) => p.trim().parse().map_err(|_| err())?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        IpNet::new(addr, prefix).ok_or_else(err)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Which peers may connect, checked right after `accept`, before any
/// handshake. Refused peers are disconnected at once and counted in
/// [`Counters::connections_denied`](crate::Counters::connections_denied).
///
/// A peer is refused when it matches `deny`, or when `allow` is not empty
/// and it matches no entry of `allow`.
///
/// ```
/// use switchboard::IpFilter;
///
/// let filter = IpFilter::default().deny(["192.0.2.0/24"]).unwrap().allow(["192.0.0.0/8", "::1"]).unwrap();
/// assert!(filter.permits("192.1.2.3".parse().unwrap()));
/// assert!(!filter.permits("192.0.2.9".parse().unwrap()));
/// assert!(!filter.permits("10.0.0.1".parse().unwrap()));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpFilter {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl IpFilter {
    /// Adds networks to the allow list (when it is not empty, only these may
    /// connect).
    pub fn allow<I, S>(mut self, nets: I) -> Result<Self, IpNetParseError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for net in nets {
            self.allow.push(net.as_ref().parse()?);
        }
        Ok(self)
    }

    /// Adds networks to the deny list (Ratchet's IpBlackList).
    pub fn deny<I, S>(mut self, nets: I) -> Result<Self, IpNetParseError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for net in nets {
            self.deny.push(net.as_ref().parse()?);
        }
        Ok(self)
    }

    /// Whether `ip` may connect.
    pub fn permits(&self, ip: IpAddr) -> bool {
        !self.deny.iter().any(|n| n.contains(ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(ip)))
    }

    /// Whether the filter lets everyone in.
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// What happens to a message over the rate limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateLimitAction {
    /// Close the connection with 1008 ("rate limit exceeded"); `on_error`
    /// sees a protocol error. The default.
    #[default]
    Close,
    /// Drop the message before `on_message` and count it in
    /// [`Counters::rate_limited`](crate::Counters::rate_limited).
    Drop,
}

/// A per-connection token bucket for inbound messages: `burst` messages at
/// once, refilled at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Sustained messages per second.
    pub per_second: f64,
    /// Messages allowed in a burst (the bucket size).
    pub burst: u32,
    /// What to do with a message over the limit.
    pub action: RateLimitAction,
}

impl RateLimit {
    /// `per_second` messages per second with bursts of `burst`; over the
    /// limit the connection is closed.
    pub fn new(per_second: f64, burst: u32) -> Self {
        RateLimit {
            per_second,
            burst,
            action: RateLimitAction::Close,
        }
    }

    setters! {
        action: RateLimitAction,
    }
}

/// The state of one connection's bucket.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(limit: &RateLimit) -> Self {
        TokenBucket {
            tokens: f64::from(limit.burst),
            last: Instant::now(),
        }
    }

    /// Takes one token; false when the bucket is empty.
    pub(crate) fn take(&mut self, limit: &RateLimit) -> bool {
        let now = Instant::now();
        let elapsed: Duration = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens =
            (self.tokens + elapsed.as_secs_f64() * limit.per_second).min(f64::from(limit.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_their_addresses() {
        for (net, ip, inside) in [
            ("10.1.0.0/16", "10.1.200.3", true),
            ("10.1.0.0/16", "10.2.0.1", false),
            // An IPv4-mapped IPv6 address matches IPv4 networks.
            ("10.1.0.0/16", "::ffff:10.1.0.9", true),
            ("0.0.0.0/0", "203.0.113.5", true),
            ("::1", "::1", true),
            ("::1", "::2", false),
        ] {
            let net: IpNet = net.parse().expect("net");
            assert_eq!(net.contains(ip.parse().expect("ip")), inside, "{net} {ip}");
        }
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nonsense".parse::<IpNet>().is_err());
    }

    #[test]
    fn a_bare_address_is_a_network_of_one_and_prints_with_its_prefix() {
        let v4: IpNet = "192.0.2.7".parse().expect("v4");
        assert_eq!(v4.to_string(), "192.0.2.7/32");
        assert!(!v4.contains("192.0.2.8".parse().expect("ip")));
        let v6: IpNet = "2001:db8::1".parse().expect("v6");
        assert_eq!(v6.to_string(), "2001:db8::1/128");
        assert_eq!(
            " 10.0.0.0 / 8 "
                .parse::<IpNet>()
                .expect("spaces")
                .to_string(),
            "10.0.0.0/8"
        );
    }

    #[test]
    fn filters_deny_first_then_allow_only_their_list() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let open = IpFilter::default();
        assert!(open.is_open() && open.permits(ip("198.51.100.1")));

        let deny = IpFilter::default().deny(["198.51.100.0/24"]).expect("deny");
        assert!(!deny.is_open());
        assert!(!deny.permits(ip("198.51.100.1")));
        assert!(deny.permits(ip("203.0.113.1")));

        let allow = IpFilter::default()
            .allow(["203.0.113.0/24"])
            .expect("allow");
        assert!(!allow.is_open());
        assert!(allow.permits(ip("203.0.113.9")));
        assert!(!allow.permits(ip("198.51.100.1")));

        // Denied wins over allowed.
        let both = allow.deny(["203.0.113.9"]).expect("deny");
        assert!(!both.permits(ip("203.0.113.9")));
        assert!(both.permits(ip("203.0.113.10")));

        assert!(IpFilter::default().allow(["not a network"]).is_err());
        assert!(IpFilter::default().deny(["10.0.0.0/40"]).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_bursts_then_the_rate() {
        let limit = RateLimit::new(10.0, 5);
        let mut bucket = TokenBucket::new(&limit);
        assert_eq!((0..10).filter(|_| bucket.take(&limit)).count(), 5);
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!((0..10).filter(|_| bucket.take(&limit)).count(), 3);
    }
}
