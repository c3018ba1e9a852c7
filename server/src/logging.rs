//! Structured logs with `tracing`, written to stderr as text or JSON lines.

use std::io::IsTerminal;

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The filter is not valid `RUST_LOG` syntax.
    #[error("invalid log filter {filter:?}: {source}")]
    Filter {
        /// The filter as given.
        filter: String,
        /// What the parser said.
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber was installed already.
    #[error("logging was already initialised: {0}")]
    AlreadyInitialised(String),
}

/// Parses a `RUST_LOG`-style filter such as `info,server::tick=debug`.
///
/// # Errors
/// [`LoggingError::Filter`] on bad syntax.
pub fn parse_filter(filter: &str) -> Result<EnvFilter, LoggingError> {
    EnvFilter::try_new(filter).map_err(|source| LoggingError::Filter {
        filter: filter.to_owned(),
        source,
    })
}

/// Installs the global subscriber: `filter` in `RUST_LOG` syntax, lines in
/// `format`, to stderr (stdout belongs to the admin console).
///
/// # Errors
/// See [`LoggingError`].
pub fn init(format: LogFormat, filter: &str) -> Result<(), LoggingError> {
    let filter = parse_filter(filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_thread_names(true);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|error| LoggingError::AlreadyInitialised(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_use_rust_log_syntax() {
        assert!(parse_filter("info,server::tick=debug").is_ok());
        assert!(matches!(
            parse_filter("server=loud"),
            Err(LoggingError::Filter { .. })
        ));
    }
}
