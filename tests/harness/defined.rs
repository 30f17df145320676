//! A domain that is only defined, never started: another user of a volume, as an
//! operator's stopped VM would be, for tests of what volmig must not delete.

use super::xml::escape;
use super::{prepare, unique_name, virsh};

/// A persistent domain that is only defined, never started, whose `vda` is an existing
/// file: another user of a volume, as an operator's stopped VM would be. Undefined on drop.
pub struct DefinedDomain {
    name: String,
}

impl DefinedDomain {
    /// Defines a domain whose vda is the file `path` in format `format`.
    pub fn using_file(purpose: &str, path: &str, format: &str) -> DefinedDomain {
        prepare();
        let domain = DefinedDomain {
            name: unique_name(purpose),
        };
        let xml = format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64'>hvm</type></os>\
             <devices><disk type='file' device='disk'><driver name='qemu' type='{format}'/>\
             <source file='{path}'/><target dev='vda' bus='virtio'/></disk>\
             <memballoon model='none'/></devices></domain>",
            name = escape(&domain.name),
            format = escape(format),
            path = escape(path),
        );
        super::pools::virsh_with_xml_file("define", &xml).unwrap_or_else(|e| panic!("{e}"));
        domain
    }

    /// The domain name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for DefinedDomain {
    fn drop(&mut self) {
        if let Err(e) = virsh(&["undefine", &self.name]) {
            if !e.contains("not found") {
                eprintln!("harness: clean-up: {e}");
            }
        }
    }
}
