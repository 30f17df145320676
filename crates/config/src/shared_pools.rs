//! The node's `[shared_pools]`: pools whose storage other hosts reach too,
//! named by the operator where the node cannot tell by itself (a bind mount,
//! a cluster file system on a shared LUN). Checked as the file is read, so a
//! bad entry stops the node at start-up naming the pool, rather than showing
//! up later as an odd storage id in the controller's listings.

use std::collections::BTreeMap;

use serde::{de::Error as _, Deserialize, Deserializer};
use volmig_types::validate;

/// Deserialises and checks the table (pool name → operator-chosen id).
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let table = BTreeMap::<String, String>::deserialize(d)?;
    check(&table).map_err(D::Error::custom)?;
    Ok(table)
}

/// The first entry that is not a pool name with a usable id, said with its key.
fn check(table: &BTreeMap<String, String>) -> Result<(), String> {
    for (pool, id) in table {
        validate::object_name("pool name", pool)
            .and_then(|()| validate::shared_storage_id("storage id", id))
            .map_err(|e| format!("shared_pools.{pool:?}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::commented_toml::Style;
    use crate::{load_layered, to_commented_toml, NodeConfig, Setting};

    fn node(text: &str) -> Result<NodeConfig, String> {
        toml::from_str::<NodeConfig>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_table_of_pool_names_and_ids_is_read() {
        let cfg = node("[shared_pools]\nnfs-vms = \"filer1:/export/vms\"\n\"a.b c\" = \"x\"\n")
            .expect("valid");
        assert_eq!(cfg.shared_pools["nfs-vms"], "filer1:/export/vms");
        assert_eq!(cfg.shared_pools["a.b c"], "x");
        // Printed and read back unchanged, names that are not bare keys too.
        let text = to_commented_toml(&cfg, Style::Active).expect("render");
        assert_eq!(node(&text).expect("parses back"), cfg, "{text}");
        assert!(NodeConfig::default().shared_pools.is_empty());
    }

    #[test]
    fn an_unusable_entry_is_refused_naming_its_key() {
        for (text, says) in [
            ("nfs-vms = \"\"", "must not be empty"),
            ("nfs-vms = \"a\\tb\"", "control character"),
            ("nfs-vms = \" x\"", "white space"),
            ("\"a/b\" = \"x\"", "must not contain '/'"),
        ] {
            let err = node(&format!("[shared_pools]\n{text}\n")).expect_err(text);
            assert!(err.contains("shared_pools.") && err.contains(says), "{err}");
        }
        let long = format!("[shared_pools]\nnfs-vms = \"{}\"\n", "x".repeat(256));
        let err = node(&long).expect_err("too long");
        assert!(
            err.contains("shared_pools.\"nfs-vms\"") && err.contains("255"),
            "{err}"
        );
        assert!(node("shared_pools = { p = 5 }").is_err());
    }

    #[test]
    fn a_flag_sets_the_table_and_is_checked_too() {
        let set = Setting::from_set_flag("shared_pools={ nfs-vms = \"filer1:/x\" }").expect("set");
        let cfg: NodeConfig = load_layered(None, &[set]).expect("load");
        assert_eq!(cfg.shared_pools["nfs-vms"], "filer1:/x");
        let set = Setting::from_set_flag("shared_pools={ nfs-vms = \"\" }").expect("set");
        let err = load_layered::<NodeConfig>(None, &[set])
            .expect_err("empty id")
            .to_string();
        assert!(
            err.contains("`shared_pools`") && err.contains("nfs-vms"),
            "{err}"
        );
    }
}
