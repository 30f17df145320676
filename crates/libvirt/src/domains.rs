//! Domains: lookup by name or UUID, and the disks of every domain that use
//! an image.

use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;
use volmig_engine::hypervisor::{DomainDisksSpec, VolumeUser};

use crate::connection::{bad_xml, unless_vanished, CallError};
use crate::domain_xml;
use crate::volumes::same_image;

pub(crate) fn lookup_domain(conn: &Connect, name_or_uuid: &str) -> Result<Domain, CallError> {
    if looks_like_uuid(name_or_uuid) {
        if let Ok(dom) = conn.lookup_domain_by_uuid_string(name_or_uuid) {
            return Ok(dom);
        }
    }
    Ok(conn.lookup_domain_by_name(name_or_uuid)?)
}

fn looks_like_uuid(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            matches!(i, 8 | 13 | 18 | 23) == (c == '-') && (c == '-' || c.is_ascii_hexdigit())
        })
}

/// Domain disks that refer to `path`, in the live and persistent definitions.
pub(crate) fn domain_users(conn: &Connect, path: &str) -> Result<Vec<VolumeUser>, CallError> {
    let mut users = Vec::new();
    for dom in conn.list_all_domains(0)? {
        let Some((name, uuid, definitions)) = unless_vanished((|| {
            let mut definitions = Vec::new();
            if dom.is_active()? {
                definitions.push((true, dom.xml_desc(0)?));
            }
            if dom.is_persistent()? {
                definitions.push((false, dom.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)?));
            }
            Ok((dom.name()?, dom.uuid_string()?, definitions))
        })())?
        else {
            continue;
        };
        for (live, xml) in definitions {
            for r in domain_xml::image_refs(&xml).map_err(bad_xml)? {
                if !same_image(&r.name, path) {
                    continue;
                }
                let mut how = if r.backing { "backing file" } else { "source" }.to_string();
                if r.read_only {
                    how.push_str(" (read-only)");
                }
                if r.shareable {
                    how.push_str(" (shareable)");
                }
                users.push(VolumeUser::Domain {
                    domain: name.clone(),
                    uuid: uuid.clone(),
                    target: r.target,
                    live,
                    how,
                });
            }
        }
    }
    Ok(users)
}

/// Every domain, listed once, with the disks of the definition that says what
/// it uses now: live when it runs, persistent otherwise (a transient domain
/// that stopped no longer exists). One XML read per domain.
pub(crate) fn all_domain_disks(conn: &Connect) -> Result<Vec<DomainDisksSpec>, CallError> {
    let mut domains = Vec::new();
    for dom in conn.list_all_domains(0)? {
        let Some((name, uuid, running, xml)) = unless_vanished((|| {
            let running = dom.is_active()?;
            let flags = if running {
                0
            } else {
                sys::VIR_DOMAIN_XML_INACTIVE
            };
            Ok((
                dom.name()?,
                dom.uuid_string()?,
                running,
                dom.xml_desc(flags)?,
            ))
        })())?
        else {
            continue;
        };
        domains.push(DomainDisksSpec {
            name,
            uuid,
            running,
            disks: domain_xml::parse_disks(&xml).map_err(bad_xml)?,
        });
    }
    Ok(domains)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_uuids() {
        assert!(looks_like_uuid("6f1c0e9a-1b2c-4d3e-8f90-0123456789ab"));
        assert!(!looks_like_uuid("vm-6f1c0e9a-1b2c-4d3e-8f90-01234567"));
        assert!(!looks_like_uuid("guest"));
    }
}
