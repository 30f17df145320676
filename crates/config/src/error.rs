//! What can be wrong with a configuration, said so that the operator can find
//! the source (file, variable or flag) and the key to fix.

use crate::layers::Source;

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid for this component.
    #[error("config file {path}: {message}")]
    Parse {
        /// File.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// An environment variable or flag names a key the component does not have.
    #[error("{origin}: unknown key `{key}`{}", nearest_hint(nearest.as_deref()))]
    UnknownKey {
        /// The key as given, dotted.
        key: String,
        /// Where it was given.
        origin: Source,
        /// The valid key closest to it, if one is close.
        nearest: Option<String>,
    },
    /// A value from an environment variable or flag does not fit its key.
    #[error("{origin}: invalid value {value:?} for `{key}`: {message}")]
    Invalid {
        /// The key, dotted.
        key: String,
        /// Where it was given.
        origin: Source,
        /// The value as given.
        value: String,
        /// What is wrong.
        message: String,
    },
    /// A setting could not be read at all (no `=`, not UTF-8).
    #[error("{origin}: {message}")]
    Malformed {
        /// Where it was given.
        origin: Source,
        /// What is wrong.
        message: String,
    },
}

fn nearest_hint(nearest: Option<&str>) -> String {
    match nearest {
        Some(key) => format!(" (did you mean `{key}`?)"),
        None => " (--example-config lists every key)".to_string(),
    }
}
