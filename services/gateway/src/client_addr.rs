//! Who the client is, by address: the TCP peer, unless the peer is a trusted proxy
//! (`GATEWAY_TRUSTED_PROXIES`), in which case the address that proxy reports in
//! `X-Forwarded-For`.
//!
//! `X-Forwarded-For` is written by whoever sends the request, so it is believed only as
//! far as a chain of trusted proxies vouches for it: the list is read from the right (the
//! hop nearest to the gateway), trusted proxies are skipped, and the first address that
//! is not one is the client. Anything left of it could be made up by the client itself.
//! With no trusted proxies (the default) the header is ignored entirely, so a client
//! cannot pick the address its rate limits and login throttling count against.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;

/// The header a proxy appends the address of its own peer to.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// One network: an address and a prefix length (`10.0.0.0/8`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    fn parse(text: &str) -> Result<Net, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr = IpAddr::from_str(addr.trim())
            .map_err(|_| format!("{text:?} is not an IP address or CIDR network"))?
            .to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?} has an invalid prefix length"))?,
        };
        Ok(Net { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

/// True when the first `bits` bits of `a` and `b` agree.
fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits);
    let (whole, rest) = (bits / 8, bits % 8);
    if a.get(..whole) != b.get(..whole) {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    match (a.get(whole), b.get(whole)) {
        (Some(x), Some(y)) => x & mask == y & mask,
        _ => false,
    }
}

/// The proxies whose `X-Forwarded-For` is believed (`GATEWAY_TRUSTED_PROXIES`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Net>);

impl TrustedProxies {
    /// Parses a comma list of addresses and CIDR networks (`10.0.0.0/8, ::1`); blanks
    /// are skipped, anything else unparsable is an error.
    pub fn parse(list: &str) -> Result<TrustedProxies, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Net::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when `ip` is (in) one of the trusted proxies.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(ip))
    }

    /// The client's address for a request from `peer` with `headers` (see the module
    /// docs for which `X-Forwarded-For` entries are believed).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        // Several headers count as one list, in order.
        let hops: Vec<&str> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or_default().split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            // A hop we cannot read ends the chain: the last trusted proxy is the best
            // address we know.
            let Some(ip) = parse_hop(hop) else {
                return client;
            };
            client = ip;
            if !self.contains(ip) {
                return ip;
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:80`,
/// `[2001:db8::1]:80`) or in brackets.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    IpAddr::from_str(hop)
        .ok()
        .or_else(|| SocketAddr::from_str(hop).ok().map(|s| s.ip()))
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .and_then(|h| IpAddr::from_str(h).ok())
        })
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn lists_parse_addresses_and_networks() {
        let t = TrustedProxies::parse(" 10.0.0.0/8, ,192.168.1.7,2001:db8::/32, ::1").expect("ok");
        assert!(t.contains(ip("10.200.3.4")));
        assert!(!t.contains(ip("11.0.0.1")));
        assert!(t.contains(ip("192.168.1.7")));
        assert!(!t.contains(ip("192.168.1.8")));
        assert!(t.contains(ip("2001:db8:ffff::1")));
        assert!(!t.contains(ip("2001:db9::1")));
        assert!(t.contains(ip("::1")));
        // An IPv4 peer seen through an IPv6 socket is the same peer.
        assert!(t.contains(ip("::ffff:10.1.2.3")));
        assert!(TrustedProxies::parse("").expect("ok").is_empty());
        for bad in ["10.0.0.0/33", "nope", "10.0.0.1/x", "::1/129"] {
            assert!(TrustedProxies::parse(bad).is_err(), "{bad}");
        }
        let odd = TrustedProxies::parse("172.16.0.0/12").expect("ok");
        assert!(odd.contains(ip("172.31.255.255")));
        assert!(!odd.contains(ip("172.32.0.0")));
        assert!(
            TrustedProxies::parse("0.0.0.0/0")
                .expect("ok")
                .contains(ip("8.8.8.8"))
        );
    }

    #[test]
    fn forwarded_for_is_ignored_without_trusted_proxies() {
        let none = TrustedProxies::default();
        let peer = ip("198.51.100.1");
        assert_eq!(none.client_ip(peer, &xff(&["203.0.113.9"])), peer);
    }

    #[test]
    fn forwarded_for_is_ignored_from_an_untrusted_peer() {
        let t = TrustedProxies::parse("10.0.0.0/8").expect("ok");
        let peer = ip("198.51.100.1");
        assert_eq!(t.client_ip(peer, &xff(&["203.0.113.9"])), peer);
    }

    #[test]
    fn the_first_untrusted_hop_from_the_right_is_the_client() {
        let t = TrustedProxies::parse("10.0.0.0/8").expect("ok");
        let peer = ip("10.0.0.2");
        // The client claims to be 1.1.1.1; the first proxy saw 203.0.113.9.
        let h = xff(&["1.1.1.1, 203.0.113.9, 10.0.0.5"]);
        assert_eq!(t.client_ip(peer, &h), ip("203.0.113.9"));
        // The same across several headers.
        let h = xff(&["1.1.1.1", "203.0.113.9:4711", "10.0.0.5"]);
        assert_eq!(t.client_ip(peer, &h), ip("203.0.113.9"));
        let h = xff(&["[2001:db8::7]:443"]);
        assert_eq!(t.client_ip(peer, &h), ip("2001:db8::7"));
        // No header: the proxy itself is all we know.
        assert_eq!(t.client_ip(peer, &HeaderMap::new()), peer);
        // Every hop trusted: the leftmost one.
        assert_eq!(t.client_ip(peer, &xff(&["10.9.9.9"])), ip("10.9.9.9"));
        // Garbage stops the walk at the last trusted hop.
        let h = xff(&["203.0.113.9, unknown, 10.0.0.5"]);
        assert_eq!(t.client_ip(peer, &h), ip("10.0.0.5"));
    }
}
