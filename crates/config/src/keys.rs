//! The keys of a component's file, dotted (`listen`,
//! `telemetry.otlp_endpoint`), found from the settings structs' own
//! documented fields and defaults, so that a key added to a struct can be set
//! from every source without a list to keep in step.

use toml::{Table, Value};

use crate::commented_toml::TableDocs;
use crate::ConfigFile;

/// Every key of `T`'s file: a `[table]`'s keys one by one, anything else
/// (values, arrays, `[[arrays of tables]]`) as one key.
pub fn keys<T: ConfigFile>() -> Vec<String> {
    // A default that does not serialise to a table has no nested tables to
    // walk; its top-level keys are still the documented fields.
    let defaults = match Value::try_from(T::default()) {
        Ok(Value::Table(table)) => table,
        _ => Table::new(),
    };
    let mut out = Vec::new();
    collect(&T::docs(), &defaults, "", &mut out);
    out
}

fn collect(docs: &TableDocs, defaults: &Table, prefix: &str, out: &mut Vec<String>) {
    for name in docs.names() {
        let path = if prefix.is_empty() {
            (*name).to_string()
        } else {
            format!("{prefix}.{name}")
        };
        match (defaults.get(*name), docs.table(name)) {
            (Some(Value::Table(inner)), Some(inner_docs)) => collect(inner_docs, inner, &path, out),
            _ => out.push(path),
        }
    }
}

/// The key of `keys` closest to `wanted`: the shortest that begins with it
/// (a key without its unit, `libvirt_grace`), else the one within a few
/// edits of it (a typo).
pub(crate) fn nearest<'a>(wanted: &str, keys: &'a [String]) -> Option<&'a str> {
    let longer = keys
        .iter()
        .filter(|k| k.starts_with(wanted))
        .min_by_key(|k| k.len());
    if let Some(key) = longer {
        return Some(key);
    }
    let limit = (wanted.len() / 3).max(2);
    keys.iter()
        .map(|k| (edit_distance(wanted, k), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ControllerConfig, NodeConfig};

    #[test]
    fn tables_are_walked_and_other_values_are_one_key() {
        let node = keys::<NodeConfig>();
        for key in ["listen", "tls_ca", "identities", "telemetry.otlp_endpoint"] {
            assert!(node.iter().any(|k| k == key), "{key} missing: {node:?}");
        }
        assert!(!node.iter().any(|k| k == "telemetry"), "{node:?}");
        let controller = keys::<ControllerConfig>();
        for key in ["pools", "nodes", "pool_defaults.max_in_flight", "etcd.user"] {
            assert!(controller.iter().any(|k| k == key), "{key} missing");
        }
    }

    #[test]
    fn a_typo_finds_its_key_and_nonsense_finds_none() {
        let keys = keys::<NodeConfig>();
        assert_eq!(nearest("lisen", &keys), Some("listen"));
        assert_eq!(
            nearest("telemetry.otlp_endpiont", &keys),
            Some("telemetry.otlp_endpoint")
        );
        assert_eq!(
            nearest("libvirt_grace", &keys),
            Some("libvirt_grace_seconds")
        );
        assert_eq!(nearest("zzzzzzzzzzzz", &keys), None);
    }
}
