//! Which endpoints a node may advertise in its registration.
//!
//! The controller dials what a node advertises, presenting its own
//! certificate, so an endpoint is a place the node chose for the controller
//! to go. Three rules keep a node from pointing it somewhere else:
//! - once the controller serves TLS, a network registration must advertise
//!   `https://` (the controller then verifies the node's server certificate
//!   for that host when it connects, and nothing travels in plaintext);
//! - the registering client certificate, when there is one, must name the
//!   advertised host (a SAN DNS name for a name, a SAN IP address for an
//!   address, as TLS server verification matches them), so a node can only
//!   send the controller to a host its certificate vouches for;
//! - the operator may restrict advertised hosts (`advertise_allow`: CIDRs,
//!   DNS names, `*.suffix`).
//!
//! A caller on the controller's unix socket is trusted as the operator is,
//! and none of these apply to it.

use std::net::IpAddr;

use super::error::RegistryError;

/// The SAN names of a registering client certificate that can name a host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateHosts {
    /// SAN DNS names, as written (`*.example` wildcards included).
    pub dns: Vec<String>,
    /// SAN IP addresses.
    pub ips: Vec<IpAddr>,
}

impl CertificateHosts {
    /// Whether these names cover `host` as TLS server verification would:
    /// an address by an IP SAN, a name by a DNS SAN (a wildcard covering
    /// exactly one leftmost label).
    fn name(&self, host: &Host) -> bool {
        match host {
            Host::Ip(ip) => self.ips.contains(ip),
            Host::Dns(name) => self.dns.iter().any(|san| {
                let san = normalize_dns(san);
                match san.strip_prefix("*.") {
                    Some(suffix) => name
                        .split_once('.')
                        .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
                    None => san == *name,
                }
            }),
        }
    }

    fn listed(&self) -> String {
        let names: Vec<String> = self
            .dns
            .iter()
            .map(|d| d.escape_debug().to_string())
            .chain(self.ips.iter().map(IpAddr::to_string))
            .collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    }
}

/// Who stands behind a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registrant {
    /// A caller on the controller's unix socket.
    Local,
    /// A caller from the network, with the host names of its client
    /// certificate (`None`: it presented none, e.g. a token on plaintext).
    Remote(Option<CertificateHosts>),
}

/// One `advertise_allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    /// An address block.
    Cidr { net: IpAddr, bits: u8 },
    /// One DNS name.
    Name(String),
    /// Every name under a suffix (`*.nodes.example` → `.nodes.example`).
    Suffix(String),
}

impl Allowed {
    fn parse(entry: &str) -> Result<Allowed, RegistryError> {
        let bad = |reason: &str| RegistryError::BadAllow {
            entry: entry.escape_debug().to_string(),
            reason: reason.to_string(),
        };
        if let Some((addr, bits)) = entry.split_once('/') {
            let net: IpAddr = addr
                .parse()
                .map_err(|_| bad("not an address block such as 10.0.0.0/8 or fd00::/8"))?;
            let max = if net.is_ipv4() { 32 } else { 128 };
            let bits: u8 = bits
                .parse()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| bad(&format!("the prefix length must be 0 to {max}")))?;
            return Ok(Allowed::Cidr { net, bits });
        }
        if let Ok(ip) = entry.parse::<IpAddr>() {
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            return Ok(Allowed::Cidr { net: ip, bits });
        }
        let (suffix, name) = match entry.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, entry),
        };
        let name = normalize_dns(name);
        if !valid_dns(&name) {
            return Err(bad(
                "expected an address block (10.0.0.0/8), an address, a DNS name or *.suffix",
            ));
        }
        Ok(if suffix {
            Allowed::Suffix(format!(".{name}"))
        } else {
            Allowed::Name(name)
        })
    }

    fn covers(&self, host: &Host) -> bool {
        match (self, host) {
            (Allowed::Cidr { net, bits }, Host::Ip(ip)) => in_block(*ip, *net, *bits),
            (Allowed::Name(n), Host::Dns(name)) => n == name,
            (Allowed::Suffix(s), Host::Dns(name)) => name.len() > s.len() && name.ends_with(s),
            _ => false,
        }
    }
}

fn in_block(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (ip, net, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (u128::from(u32::from(a)), u128::from(u32::from(n)), 32),
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n), 128),
        _ => return false,
    };
    let shift = width - u32::from(bits);
    shift >= width || (ip >> shift) == (net >> shift)
}

fn normalize_dns(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn valid_dns(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A host as an endpoint names it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Dns(String),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Dns(name) => f.write_str(&name.escape_debug().to_string()),
        }
    }
}

/// The scheme and host of an endpoint [`check_endpoint`] accepted.
fn scheme_and_host(endpoint: &str) -> Option<(String, Host)> {
    let uri: http::Uri = endpoint.parse().ok()?;
    let host = uri.host()?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let host = match bare.parse::<IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) => Host::Dns(normalize_dns(bare)),
    };
    Some((uri.scheme_str()?.to_string(), host))
}

/// What a controller accepts as an advertised endpoint.
#[derive(Debug, Clone, Default)]
pub struct AdvertisePolicy {
    require_https: bool,
    allow: Vec<Allowed>,
}

impl AdvertisePolicy {
    /// The policy of a controller that serves TLS (`require_https`) and
    /// allows the hosts of `allow` (empty: any host). A malformed entry is
    /// refused, so a typo does not silently allow more or less than meant.
    pub fn new(require_https: bool, allow: &[String]) -> Result<AdvertisePolicy, RegistryError> {
        Ok(AdvertisePolicy {
            require_https,
            allow: allow
                .iter()
                .map(|e| Allowed::parse(e.trim()))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Checks `endpoint` as advertised by `registrant`.
    pub fn check(&self, endpoint: &str, registrant: &Registrant) -> Result<(), RegistryError> {
        let certificate = match registrant {
            Registrant::Local => return check_endpoint(endpoint, true),
            Registrant::Remote(certificate) => certificate,
        };
        check_endpoint(endpoint, false)?;
        let (scheme, host) = scheme_and_host(endpoint)
            .ok_or_else(|| RegistryError::Endpoint("expected http(s)://host:port".into()))?;
        if self.require_https && scheme != "https" {
            return Err(RegistryError::Endpoint(
                "this controller serves TLS, so nodes must advertise https://host:port \
                 (set `advertise = \"https://HOST:PORT\"` in the node's configuration, \
                 or --advertise / VOLMIG_NODE_ADVERTISE)"
                    .into(),
            ));
        }
        if let Some(names) = certificate {
            if !names.name(&host) {
                return Err(RegistryError::HostNotNamed {
                    host: host.to_string(),
                    names: names.listed(),
                });
            }
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|a| a.covers(&host)) {
            return Err(RegistryError::HostNotAllowed {
                host: host.to_string(),
            });
        }
        Ok(())
    }
}

/// Longest endpoint a node may register: a DNS name (253) plus scheme and port.
pub const MAX_ENDPOINT: usize = 300;

/// Checks an endpoint a node registers with: `http(s)://host:port` and
/// nothing else (no path, user info or query), at most [`MAX_ENDPOINT`]
/// bytes. `unix:///path` is accepted only from a caller on the controller's
/// own unix socket, who can reach that socket anyway; from the network it
/// would let a node identity point the controller at local sockets.
pub fn check_endpoint(endpoint: &str, local_caller: bool) -> Result<(), RegistryError> {
    let bad = |why: &str| Err(RegistryError::Endpoint(why.to_string()));
    if endpoint.is_empty() {
        return bad("required: how the controller reaches the node");
    }
    if endpoint.len() > MAX_ENDPOINT {
        return bad(&format!(
            "{} bytes long; the limit is {MAX_ENDPOINT}",
            endpoint.len()
        ));
    }
    if endpoint
        .chars()
        .any(|c| volmig_types::validate::is_unsafe_char(c) || c.is_whitespace())
    {
        return bad("contains control or space characters");
    }
    if let Some(path) = endpoint.strip_prefix("unix://") {
        if !local_caller {
            return bad("unix:// endpoints are accepted only from the controller's unix socket; register an http(s)://host:port endpoint");
        }
        if !path.starts_with('/') || path.split('/').any(|p| p == "..") {
            return bad("a unix endpoint needs an absolute path without '..'");
        }
        return Ok(());
    }
    let Ok(uri) = endpoint.parse::<http::Uri>() else {
        return bad("not a URI; expected http(s)://host:port");
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return bad("expected http(s)://host:port");
    }
    let Some(authority) = uri.authority() else {
        return bad("expected http(s)://host:port");
    };
    if authority.as_str().contains('@') {
        return bad("user information is not allowed");
    }
    if authority.port_u16().is_none() || authority.host().is_empty() {
        return bad("a host and a port are required: http(s)://host:port");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return bad("no path or query: http(s)://host:port");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(dns: &[&str], ips: &[&str]) -> Registrant {
        Registrant::Remote(Some(CertificateHosts {
            dns: dns.iter().map(|s| s.to_string()).collect(),
            ips: ips.iter().map(|s| s.parse().expect("ip")).collect(),
        }))
    }

    fn policy(tls: bool, allow: &[&str]) -> AdvertisePolicy {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        AdvertisePolicy::new(tls, &allow).expect("policy")
    }

    #[test]
    fn with_tls_a_network_registration_must_advertise_https() {
        let p = policy(true, &[]);
        let err = p
            .check("http://10.0.0.2:7451", &cert(&[], &["10.0.0.2"]))
            .expect_err("plaintext");
        assert!(
            matches!(err, RegistryError::Endpoint(_)) && err.to_string().contains("advertise = "),
            "{err}"
        );
        // Even without a certificate (a token caller): the controller's TLS
        // verification of the node's server certificate then binds the host.
        assert!(p
            .check("http://10.0.0.2:7451", &Registrant::Remote(None))
            .is_err());
        assert_eq!(
            p.check("https://10.0.0.2:7451", &Registrant::Remote(None)),
            Ok(())
        );
        // Without TLS there is nothing to require.
        assert_eq!(
            policy(false, &[]).check("http://10.0.0.2:7451", &Registrant::Remote(None)),
            Ok(())
        );
        // The unix socket's callers are trusted, unix:// endpoints included.
        assert_eq!(p.check("unix:///run/n.sock", &Registrant::Local), Ok(()));
        assert_eq!(p.check("http://10.0.0.2:7451", &Registrant::Local), Ok(()));
    }

    #[test]
    fn the_certificate_must_name_the_advertised_host_by_the_same_kind_of_name() {
        let p = policy(true, &[]);
        let node = cert(
            &["kvm1.example", "*.pods.example"],
            &["10.0.0.2", "fd00::2"],
        );
        for good in [
            "https://10.0.0.2:7451",
            "https://[fd00::2]:7451",
            "https://KVM1.example.:7451",
            "https://a.pods.example:7451",
        ] {
            assert_eq!(p.check(good, &node), Ok(()), "{good}");
        }
        for bad in [
            "https://127.0.0.1:7451",
            "https://kvm2.example:7451",
            "https://pods.example:7451",
            "https://a.b.pods.example:7451",
        ] {
            let err = p.check(bad, &node).expect_err(bad);
            assert!(matches!(err, RegistryError::HostNotNamed { .. }), "{err}");
        }
        // An address written as a DNS SAN does not name the address.
        let err = p
            .check(
                "https://127.0.0.1:7451",
                &cert(&["127.0.0.1", "n.example"], &[]),
            )
            .expect_err("DNS SAN for an IP");
        assert_eq!(
            err.to_string(),
            "the advertised host 127.0.0.1 is not named by the registering certificate \
             (its SAN DNS names and IP addresses: 127.0.0.1, n.example): advertise a host \
             it names, or give the node a certificate naming this one"
        );
    }

    #[test]
    fn advertise_allow_restricts_hosts_by_block_name_and_suffix() {
        let p = policy(
            false,
            &["10.0.0.0/8", "fd00::/8", "kvm9.example", "*.pods.example"],
        );
        let anyone = Registrant::Remote(None);
        for good in [
            "http://10.1.2.3:1",
            "http://[fd12::1]:1",
            "http://kvm9.example:1",
            "http://x.y.pods.example:1",
        ] {
            assert_eq!(p.check(good, &anyone), Ok(()), "{good}");
        }
        for bad in [
            "http://11.0.0.1:1",
            "http://127.0.0.1:1",
            "http://[fe80::1]:1",
            "http://kvm10.example:1",
            "http://pods.example:1",
            "http://evilpods.example:1",
        ] {
            let err = p.check(bad, &anyone).expect_err(bad);
            assert!(
                matches!(err, RegistryError::HostNotAllowed { .. })
                    && err.to_string().contains("advertise_allow"),
                "{err}"
            );
        }
        // A single address is a block of one; /0 is everything of its family.
        let p = policy(false, &["192.0.2.7", "0.0.0.0/0"]);
        assert_eq!(p.check("http://203.0.113.1:1", &anyone), Ok(()));
        assert!(p.check("http://[::1]:1", &anyone).is_err());
        // Both the certificate and the list must agree.
        let p = policy(true, &["10.0.0.0/8"]);
        assert!(matches!(
            p.check("https://127.0.0.1:1", &cert(&[], &["127.0.0.1"])),
            Err(RegistryError::HostNotAllowed { .. })
        ));
    }

    #[test]
    fn malformed_advertise_allow_entries_are_refused() {
        for bad in [
            "10.0.0.0/33",
            "10.0.0.300/8",
            "fd00::/129",
            "10.0.0.0/x",
            "",
            "*.",
            "bad_name.example",
            "a..b",
            "http://10.0.0.1",
        ] {
            let err = AdvertisePolicy::new(false, &[bad.to_string()]).expect_err(bad);
            assert!(
                err.to_string().starts_with("advertise_allow entry"),
                "{bad}: {err}"
            );
        }
        let err = AdvertisePolicy::new(false, &["10.0.0.0/33".to_string()]).expect_err("/33");
        assert_eq!(
            err.to_string(),
            "advertise_allow entry \"10.0.0.0/33\": the prefix length must be 0 to 32"
        );
    }
}
