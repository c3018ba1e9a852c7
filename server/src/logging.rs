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
    /// A bare word that is neither a level nor one of this server's
    /// targets: almost always a misspelt level (`warning`), which would
    /// turn off every line but that target's, startup errors included.
    #[error(
        "invalid log filter {filter:?}: {word:?} is neither a level (error, warn, info, \
         debug, trace, off) nor one of this server's targets (server, shared); a bare word \
         names a target and turns every other line off: for another crate write {word}=LEVEL"
    )]
    BareWord {
        /// The filter as given.
        filter: String,
        /// The word.
        word: String,
    },
    /// A global subscriber was installed already.
    #[error("logging was already initialised: {0}")]
    AlreadyInitialised(String),
}

/// Parses a `RUST_LOG`-style filter such as `info,server::tick=debug`.
///
/// # Errors
/// [`LoggingError::Filter`] on bad syntax, [`LoggingError::BareWord`] for
/// a bare word that is neither a level nor one of this server's targets.
pub fn parse_filter(filter: &str) -> Result<EnvFilter, LoggingError> {
    let parsed = EnvFilter::try_new(filter).map_err(|source| LoggingError::Filter {
        filter: filter.to_owned(),
        source,
    })?;
    if let Some(word) = filter.split(',').map(str::trim).find(|d| is_stray_word(d)) {
        return Err(LoggingError::BareWord {
            filter: filter.to_owned(),
            word: word.to_owned(),
        });
    }
    Ok(parsed)
}

/// A directive that is one word naming neither a level nor a target of
/// this server's crates.
fn is_stray_word(directive: &str) -> bool {
    const LEVELS: [&str; 12] = [
        "off", "error", "warn", "info", "debug", "trace", "0", "1", "2", "3", "4", "5",
    ];
    let ours = |crate_name: &str| {
        directive == crate_name
            || directive
                .strip_prefix(crate_name)
                .is_some_and(|rest| rest.starts_with("::"))
    };
    !directive.is_empty()
        && !directive.contains(['=', '['])
        && !LEVELS
            .iter()
            .any(|level| directive.eq_ignore_ascii_case(level))
        && !ours("server")
        && !ours("shared")
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

    /// A misspelt level reads as a target and would silence everything
    /// else, startup errors included: refused, naming the word.
    #[test]
    fn a_bare_word_that_is_no_level_is_refused() {
        for filter in ["warning", "info,verbose", "WARNING"] {
            match parse_filter(filter) {
                Err(LoggingError::BareWord { word, .. }) => {
                    assert!(filter.contains(&word), "{filter}: {word}");
                }
                other => panic!("{filter}: {other:?}"),
            }
        }
        for filter in [
            "WARN",
            "off",
            "2",
            "server",
            "server::tick",
            "shared::io=debug",
            "info,mio=warn",
            "[span]=debug",
            "servers=info",
            "",
        ] {
            assert!(parse_filter(filter).is_ok(), "{filter}");
        }
    }
}
