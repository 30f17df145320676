//! Renders a configuration as TOML in which every key is preceded by its doc
//! comment: what `--print-config` prints and what the package installs as
//! `/etc/volmig/*.toml`.
//!
//! The comments come from the config structs' own doc comments (collected by
//! `documented` at compile time), so a key added to a struct is documented in
//! the output without a second list to keep in step. Keys are written in the
//! order the struct declares them; TOML needs plain keys before tables, so
//! tables and arrays of tables follow them.

use documented::DocumentedFields;
use serde::Serialize;
use toml::{Table, Value};

/// The keys of one TOML table: their names in declaration order, their doc
/// comments, and the same for the tables nested under some of them.
#[derive(Debug, Clone)]
pub struct TableDocs {
    names: &'static [&'static str],
    docs: &'static [&'static str],
    tables: Vec<(&'static str, TableDocs)>,
}

impl TableDocs {
    /// The keys of the struct `T`.
    pub fn of<T: DocumentedFields>() -> TableDocs {
        TableDocs {
            names: T::FIELD_NAMES,
            docs: T::FIELD_DOCS,
            tables: Vec::new(),
        }
    }

    /// Adds the docs of the table (or array of tables) under `key`.
    pub fn with(mut self, key: &'static str, table: TableDocs) -> TableDocs {
        self.tables.push((key, table));
        self
    }

    /// The doc comment of `key`.
    pub fn doc(&self, key: &str) -> Option<&'static str> {
        let i = self.names.iter().position(|n| *n == key)?;
        self.docs.get(i).copied()
    }

    /// The keys, in declaration order.
    pub(crate) fn names(&self) -> &'static [&'static str] {
        self.names
    }

    /// The docs of the table (or array of tables) under `key`.
    pub(crate) fn table(&self, key: &str) -> Option<&TableDocs> {
        self.tables.iter().find(|(k, _)| *k == key).map(|(_, t)| t)
    }
}

/// Whether the keys are live settings or an example with every line commented out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `key = value`: the file means exactly this configuration.
    Active,
    /// `# key = value`: the file sets nothing; it shows every key at this value.
    CommentedOut,
}

/// Why a configuration could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The value is not representable as TOML.
    #[error("cannot express the configuration as TOML: {0}")]
    Toml(#[from] toml::ser::Error),
    /// The value is not a table at the top.
    #[error("the configuration is not a TOML table")]
    NotATable,
}

/// Renders `value` as TOML, each key preceded by its doc comment from `docs`.
/// A key whose value is unset (an empty `Option`) is listed as a comment, so
/// every key appears.
pub fn render<T: Serialize>(
    value: &T,
    docs: &TableDocs,
    style: Style,
) -> Result<String, RenderError> {
    let Value::Table(table) = Value::try_from(value)? else {
        return Err(RenderError::NotATable);
    };
    let mut out = String::new();
    write_table(&mut out, &table, docs, "", style);
    Ok(out)
}

/// Whether TOML writes this value as its own `[table]` or `[[array]]` section.
fn is_section(value: &Value) -> bool {
    match value {
        Value::Table(_) => true,
        Value::Array(items) => !items.is_empty() && items.iter().all(Value::is_table),
        _ => false,
    }
}

fn write_doc(out: &mut String, doc: Option<&str>) {
    for line in doc.unwrap_or_default().lines() {
        let line = line.trim_end();
        if line.is_empty() {
            out.push_str("#\n");
        } else {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
    }
}

fn prefix(style: Style) -> &'static str {
    match style {
        Style::Active => "",
        Style::CommentedOut => "# ",
    }
}

/// Keys in declaration order, then any the docs do not name (in the table's order).
fn ordered_keys<'a>(table: &'a Table, docs: &'a TableDocs) -> Vec<&'a str> {
    let mut keys: Vec<&str> = docs.names.to_vec();
    keys.extend(
        table
            .keys()
            .map(String::as_str)
            .filter(|k| !docs.names.contains(k)),
    );
    keys
}

/// A key as TOML must spell it: bare when it can be, else quoted (a key
/// that is data, such as a pool name with a dot, would otherwise be read as
/// a dotted key).
fn bare_or_quoted(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_string()
    } else {
        Value::String(key.to_string()).to_string()
    }
}

fn write_table(out: &mut String, table: &Table, docs: &TableDocs, path: &str, style: Style) {
    let keys = ordered_keys(table, docs);
    for key in &keys {
        match table.get(*key) {
            Some(value) if is_section(value) => {}
            Some(value) => {
                write_doc(out, docs.doc(key));
                out.push_str(&format!(
                    "{}{} = {value}\n\n",
                    prefix(style),
                    bare_or_quoted(key)
                ));
            }
            None => {
                write_doc(out, docs.doc(key));
                out.push_str(&format!("# {key} = (unset)\n\n"));
            }
        }
    }
    let empty = TableDocs {
        names: &[],
        docs: &[],
        tables: Vec::new(),
    };
    for key in &keys {
        let Some(value) = table.get(*key).filter(|v| is_section(v)) else {
            continue;
        };
        let name = if path.is_empty() {
            (*key).to_string()
        } else {
            format!("{path}.{key}")
        };
        let inner = docs.table(key).unwrap_or(&empty);
        match value {
            Value::Table(t) => {
                write_doc(out, docs.doc(key));
                out.push_str(&format!("{}[{name}]\n", prefix(style)));
                if t.is_empty() {
                    // An empty table (a map with no entries yet) is still set
                    // apart from the section after it.
                    out.push('\n');
                }
                write_table(out, t, inner, &name, style);
            }
            Value::Array(items) => {
                for item in items.iter().filter_map(Value::as_table) {
                    write_doc(out, docs.doc(key));
                    out.push_str(&format!("{}[[{name}]]\n", prefix(style)));
                    write_table(out, item, inner, &name, style);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// An inner table.
    #[derive(Debug, Default, PartialEq, Serialize, Deserialize, DocumentedFields)]
    struct Inner {
        /// Inner number.
        n: u32,
    }

    /// A config with every kind of key.
    #[derive(Debug, Default, PartialEq, Serialize, Deserialize, DocumentedFields)]
    #[serde(default)]
    struct Sample {
        /// A name.
        ///
        /// Second paragraph.
        name: String,
        /// A table.
        inner: Inner,
        /// Maybe a path.
        path: Option<String>,
        /// Many tables.
        items: Vec<Inner>,
        /// A number after the tables.
        last: u64,
    }

    fn docs() -> TableDocs {
        TableDocs::of::<Sample>()
            .with("inner", TableDocs::of::<Inner>())
            .with("items", TableDocs::of::<Inner>())
    }

    #[test]
    fn every_key_is_documented_and_the_text_parses_back() {
        let value = Sample {
            name: "a \"quoted\" name".into(),
            inner: Inner { n: 3 },
            path: None,
            items: vec![Inner { n: 1 }, Inner { n: 2 }],
            last: 9,
        };
        let text = render(&value, &docs(), Style::Active).expect("render");
        assert!(
            text.contains("# A name.\n#\n# Second paragraph.\nname = "),
            "{text}"
        );
        assert!(
            text.contains("# Maybe a path.\n# path = (unset)\n"),
            "{text}"
        );
        assert!(
            text.contains("# A number after the tables.\nlast = 9\n"),
            "{text}"
        );
        assert!(
            text.contains("# A table.\n[inner]\n# Inner number.\nn = 3\n"),
            "{text}"
        );
        assert_eq!(
            text.matches("[[items]]\n# Inner number.").count(),
            2,
            "{text}"
        );
        let back: Sample = toml::from_str(&text).expect("parses back");
        assert_eq!(back, value);
    }

    #[test]
    fn commented_out_sets_nothing() {
        let value = Sample {
            name: "x".into(),
            last: 4,
            ..Sample::default()
        };
        let text = render(&value, &docs(), Style::CommentedOut).expect("render");
        assert!(text.contains("# name = \"x\"\n"), "{text}");
        assert!(text.contains("# [inner]\n"), "{text}");
        let back: Sample = toml::from_str(&text).expect("parses");
        assert_eq!(back, Sample::default());
    }
}
