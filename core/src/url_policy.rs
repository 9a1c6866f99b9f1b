//! Which URLs a webhook endpoint may have. The URL is parsed as browsers
//! and HTTP clients parse it (WHATWG URL parsing with IDNA/UTS-46 host
//! mapping, from the `url` crate), so full-width digits, ideographic full
//! stops, percent-encoded dots, numeric IPv4 forms and trailing dots are all
//! judged in the canonical form a client would connect to; that canonical
//! form is what is stored and handed to the delivery worker.
//!
//! Refused: anything but `https`, credentials in the URL, more than
//! [`MAX_URL_LEN`] bytes, names that are local by definition (a single
//! label, or under a special-use or private-use suffix), and literal
//! addresses outside the public unicast space (every IANA special-purpose
//! IPv4 range; for IPv6, anything outside 2000::/3 and the special ranges
//! within it, which also covers IPv4-mapped, -compatible, NAT64, 6to4 and
//! Teredo forms). A public *name* can still resolve to an internal address:
//! the delivery worker must check the address it connects to.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use url::{Host, Url};

/// Longest URL accepted, before and after canonicalization, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// Name suffixes that never reach the public internet (RFC 6761, 6762,
/// 8375, 9476, 7686, and the common private-use ones).
const LOCAL_SUFFIXES: &[&str] = &[
    "localhost",
    "local",
    "internal",
    "test",
    "invalid",
    "example",
    "onion",
    "arpa",
    "alt",
    "lan",
    "home",
    "corp",
    "intranet",
    "localdomain",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooLong,
    NotAUrl,
    NotHttps,
    Credentials,
    LocalName,
    SpecialAddress,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::TooLong => "url is longer than 2048 bytes",
            Refusal::NotAUrl => "url is not a valid URL",
            Refusal::NotHttps => "url must be an https:// URL",
            Refusal::Credentials => "url must not contain a user name or password",
            Refusal::LocalName => {
                "url must name a public host (not localhost, a single label, or a local or reserved domain)"
            }
            Refusal::SpecialAddress => {
                "url must not point at a loopback, private, link-local, documentation or other special-purpose address"
            }
        })
    }
}

/// The canonical form of `input` when it is an acceptable webhook URL.
pub fn check(input: &str) -> Result<String, Refusal> {
    if input.len() > MAX_URL_LEN {
        return Err(Refusal::TooLong);
    }
    let url = Url::parse(input).map_err(|_| Refusal::NotAUrl)?;
    if url.scheme() != "https" {
        return Err(Refusal::NotHttps);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refusal::Credentials);
    }
    match url.host() {
        None => return Err(Refusal::NotAUrl),
        Some(Host::Domain(d)) => check_name(d)?,
        Some(Host::Ipv4(a)) => {
            if !public_v4(a) {
                return Err(Refusal::SpecialAddress);
            }
        }
        Some(Host::Ipv6(a)) => {
            if !public_v6(a) {
                return Err(Refusal::SpecialAddress);
            }
        }
    }
    if url.port() == Some(0) {
        return Err(Refusal::NotAUrl);
    }
    let out = String::from(url);
    if out.len() > MAX_URL_LEN {
        return Err(Refusal::TooLong);
    }
    Ok(out)
}

fn check_name(d: &str) -> Result<(), Refusal> {
    // The parser has mapped the name (lower case, IDNA); a trailing dot is
    // the same name as far as DNS goes.
    let name = d.strip_suffix('.').unwrap_or(d);
    let last = name.rsplit('.').next().unwrap_or("");
    if name.is_empty() || !name.contains('.') || LOCAL_SUFFIXES.contains(&last) {
        return Err(Refusal::LocalName);
    }
    // An all-numeric last label would have been parsed as an IPv4 address;
    // refuse anything else that still looks numeric, to be safe.
    if last.bytes().all(|b| b.is_ascii_digit()) || name.contains("..") {
        return Err(Refusal::LocalName);
    }
    Ok(())
}

fn in_v4(a: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    (u32::from(a) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

/// Outside every range of the IANA IPv4 special-purpose registry, multicast
/// and the reserved space.
pub fn public_v4(a: Ipv4Addr) -> bool {
    const SPECIAL: &[([u8; 4], u32)] = &[
        ([0, 0, 0, 0], 8),       // "this network"
        ([10, 0, 0, 0], 8),      // private
        ([100, 64, 0, 0], 10),   // CGNAT
        ([127, 0, 0, 0], 8),     // loopback
        ([169, 254, 0, 0], 16),  // link-local (cloud metadata)
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // TEST-NET-1
        ([192, 31, 196, 0], 24), // AS112
        ([192, 52, 193, 0], 24), // AMT
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast
        ([192, 168, 0, 0], 16),  // private
        ([192, 175, 48, 0], 24), // AS112 direct delegation
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // TEST-NET-2
        ([203, 0, 113, 0], 24),  // TEST-NET-3
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved, and broadcast
    ];
    !SPECIAL.iter().any(|&(net, len)| in_v4(a, net, len))
}

fn in_v6(a: Ipv6Addr, net: [u16; 8], len: u32) -> bool {
    let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
    (u128::from(a) & mask) == (u128::from(Ipv6Addr::from(net)) & mask)
}

/// Global unicast (2000::/3) and outside the special ranges in it.
pub fn public_v6(a: Ipv6Addr) -> bool {
    const SPECIAL: &[([u16; 8], u32)] = &[
        ([0x2001, 0, 0, 0, 0, 0, 0, 0], 23), // IETF protocol assignments (Teredo, benchmarking, ORCHID)
        ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
        ([0x2002, 0, 0, 0, 0, 0, 0, 0], 16), // 6to4 (embeds IPv4)
        ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), // documentation (RFC 9637)
    ];
    in_v6(a, [0x2000, 0, 0, 0, 0, 0, 0, 0], 3) && !SPECIAL.iter().any(|&(net, len)| in_v6(a, net, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_urls_come_back_canonical() {
        assert_eq!(check("https://Hooks.Example.COM/x?a=1").unwrap(), "https://hooks.example.com/x?a=1");
        assert_eq!(check("https://hooks.example.com").unwrap(), "https://hooks.example.com/");
        assert_eq!(check("https://hooks.example.com:443/x").unwrap(), "https://hooks.example.com/x");
        assert_eq!(check("https://hooks.example.com:8443/x").unwrap(), "https://hooks.example.com:8443/x");
        assert_eq!(check("https://93.184.216.34/hook").unwrap(), "https://93.184.216.34/hook");
        assert_eq!(check("https://[2606:4700:0::1111]/").unwrap(), "https://[2606:4700::1111]/");
        assert_eq!(check("https://b\u{fc}cher.de/").unwrap(), "https://xn--bcher-kva.de/");
        assert_eq!(check("https://hooks.example.com./x").unwrap(), "https://hooks.example.com./x");
    }

    #[test]
    fn spellings_of_internal_hosts_are_refused() {
        for u in [
            "https://localhost/x",
            "https://localhost./x",
            "https://LOCALHOST/x",
            "https://127.0.0.1./x",
            "https://\u{ff11}\u{ff12}\u{ff17}.0.0.1/x",
            "https://\u{ff4c}\u{ff4f}\u{ff43}\u{ff41}\u{ff4c}\u{ff48}\u{ff4f}\u{ff53}\u{ff54}/x",
            "https://127\u{3002}0\u{3002}0\u{3002}1/x",
            "https://127%2e0%2e0%2e1/x",
            "https://2130706433/x",
            "https://0x7f.1/x",
            "https://0177.0.0.1/x",
            "https://[::127.0.0.1]/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://[::ffff:7f00:1]/x",
            "https://[64:ff9b::a00:1]/x",
            "https://[2002:7f00:1::]/x",
            "https://[2001::1]/x",
            "https://[fec0::1]/x",
            "https://[fc00::1]/x",
            "https://[fe80::1]/x",
            "https://[ff02::1]/x",
            "https://[2001:db8::1]/x",
            "https://[3fff::1]/x",
            "https://[::]/x",
            "https://[::1]/x",
            "https://192.0.2.1/x",
            "https://198.51.100.7/x",
            "https://203.0.113.9/x",
            "https://198.18.0.1/x",
            "https://100.64.0.1/x",
            "https://169.254.169.254/latest",
            "https://0.0.0.0/x",
            "https://0/x",
            "https://255.255.255.255/x",
            "https://224.0.0.1/x",
            "https://intranet/x",
            "https://metadata.google.internal./x",
            "https://router.home.arpa/x",
            "https://printer.local/x",
            "https://x.test/x",
        ] {
            assert!(
                matches!(check(u), Err(Refusal::LocalName | Refusal::SpecialAddress | Refusal::NotAUrl)),
                "{u}: {:?}",
                check(u)
            );
        }
    }

    #[test]
    fn other_refusals() {
        assert_eq!(check("http://hooks.example.com/"), Err(Refusal::NotHttps));
        assert_eq!(check("ftp://hooks.example.com/"), Err(Refusal::NotHttps));
        assert_eq!(check("https://u:p@hooks.example.com/"), Err(Refusal::Credentials));
        assert_eq!(check("https://u@hooks.example.com/"), Err(Refusal::Credentials));
        assert_eq!(check(&format!("https://hooks.example.com/{}", "a".repeat(3000))), Err(Refusal::TooLong));
        assert_eq!(check("not a url"), Err(Refusal::NotAUrl));
        assert_eq!(check(""), Err(Refusal::NotAUrl));
        assert!(check("https://[::1%25eth0]/").is_err());
        assert!(check("https://hooks.example.com:0/").is_err());
    }

    #[test]
    fn ranges() {
        assert!(public_v4(Ipv4Addr::new(8, 8, 8, 8)));
        assert!(public_v4(Ipv4Addr::new(172, 32, 0, 1)));
        assert!(!public_v4(Ipv4Addr::new(172, 31, 255, 255)));
        assert!(public_v4(Ipv4Addr::new(198, 20, 0, 1)));
        assert!(!public_v4(Ipv4Addr::new(198, 19, 0, 1)));
        assert!(public_v6("2606:4700::1111".parse().unwrap()));
        assert!(public_v6("2001:4860:4860::8888".parse().unwrap()));
        assert!(!public_v6("2001:1ff::1".parse().unwrap()));
    }
}
