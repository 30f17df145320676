//! The host names a registering node's client certificate vouches for: its
//! SAN DNS names and IP addresses (never its subject CN, which names a
//! holder, not a host). Read here rather than by the authorization layer,
//! which matches identities, not hosts.

use tonic::Request;
use x509_parser::extensions::GeneralName;

use crate::controller::advertise::CertificateHosts;

/// The SAN host names of the client certificate `req` came with; `None`
/// when it came without one (a unix socket or plaintext TCP).
pub fn certificate_hosts<T>(req: &Request<T>) -> Option<CertificateHosts> {
    let certs = req.peer_certs()?;
    let leaf = certs.first()?;
    Some(hosts_of(leaf.as_ref()))
}

/// The SAN DNS names and IP addresses of a DER certificate; none when it
/// does not parse (the TLS layer verified it, so that does not happen).
fn hosts_of(der: &[u8]) -> CertificateHosts {
    let mut hosts = CertificateHosts::default();
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return hosts;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return hosts;
    };
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(d) => hosts.dns.push(d.to_string()),
            GeneralName::IPAddress(bytes) => {
                let ip = match bytes.len() {
                    4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                    16 => <[u8; 16]>::try_from(*bytes)
                        .ok()
                        .map(std::net::IpAddr::from),
                    _ => None,
                };
                hosts.ips.extend(ip);
            }
            _ => {}
        }
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn san_dns_names_and_addresses_are_read_and_the_cn_is_not() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["kvm1.example".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("10.0.0.2".parse().expect("ip")));
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("fd00::2".parse().expect("ip")));
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://x/node/1".try_into().expect("uri"),
        ));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cn.example");
        let cert = params.self_signed(&key).expect("cert");
        let hosts = hosts_of(cert.der());
        assert_eq!(hosts.dns, ["kvm1.example"]);
        assert_eq!(
            hosts.ips,
            [
                "10.0.0.2".parse::<std::net::IpAddr>().expect("ip"),
                "fd00::2".parse().expect("ip")
            ]
        );
        assert_eq!(hosts_of(b"not a certificate"), CertificateHosts::default());
    }
}
