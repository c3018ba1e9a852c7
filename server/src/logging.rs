//! Structured logs with `tracing`, written to stderr as text or JSON lines.
//!
//! Lines are written by a thread of their own (`log-writer`): a stderr
//! nobody reads (a terminal paused with Ctrl-S, a log collector that
//! stalled) holds them, up to [`MAX_QUEUED_LOG_BYTES`], then drops them,
//! but never stops the tick or the I/O thread. Dropped lines are counted
//! in `log_lines_dropped_total`, and a warning written before the next
//! line that gets through says how many there were. The guard [`init`]
//! returns gives the last lines up to [`EXIT_FLUSH_LIMIT`] when dropped.
//! A panic's message takes the same way (see [`init`]): written by the
//! thread that panics, it would hold that thread on such a stderr for
//! ever, and the server's watchers of its threads, which stop it when one
//! has ended, would never see it end.

use std::cell::Cell;
use std::io::{IsTerminal, Write};
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::metrics::Counter;
use crate::outlet::Outlet;

/// Most bytes of log lines waiting for stderr; a line beyond is dropped.
pub const MAX_QUEUED_LOG_BYTES: usize = 8 << 20;

/// How long the last lines may take to reach stderr when the process
/// exits (a stderr nobody reads would hold them for ever).
pub const EXIT_FLUSH_LIMIT: Duration = Duration::from_secs(1);

/// Log lines dropped because stderr was not being read, for `/metrics`.
pub(crate) static LINES_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// The `log-writer` outlet once started (`None` inside: it could not be,
/// and lines are written by the thread that logs).
static OUT: OnceLock<Option<Outlet>> = OnceLock::new();

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
/// `format`, to stderr (stdout belongs to the admin console) through the
/// `log-writer` thread, and a panic hook (in place of any installed before)
/// that sends a panic's message the same way (see the module docs). Keep
/// the guard until the process exits.
///
/// # Errors
/// See [`LoggingError`].
pub fn init(format: LogFormat, filter: &str) -> Result<FlushOnDrop, LoggingError> {
    let filter = parse_filter(filter)?;
    OUT.get_or_init(|| {
        Outlet::start(
            "log-writer",
            MAX_QUEUED_LOG_BYTES,
            LINES_DROPPED.clone(),
            write_line,
        )
        .ok()
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_thread_names(true);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|error| LoggingError::AlreadyInitialised(error.to_string()))?;
    std::panic::set_hook(Box::new(report_panic));
    Ok(FlushOnDrop(()))
}

/// How long a panicking thread waits for its message to reach stderr: the
/// process may end right after the hook (a panic while unwinding aborts),
/// and a stderr nobody reads must not hold the thread for longer.
const PANIC_FLUSH_LIMIT: Duration = Duration::from_millis(200);

/// The panic hook: the message the default hook writes (thread, place,
/// payload, and a backtrace when `RUST_BACKTRACE` asks for one), queued for
/// the `log-writer` whatever the log filter and past the queue's limit,
/// then given [`PANIC_FLUSH_LIMIT`] to be written: the thread never waits
/// on stderr for longer.
fn report_panic(info: &std::panic::PanicHookInfo<'_>) {
    let thread = std::thread::current();
    let payload = info
        .payload()
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
        .unwrap_or("Box<dyn Any>");
    let place = info.location().map(ToString::to_string).unwrap_or_default();
    let backtrace = match std::backtrace::Backtrace::capture() {
        trace if trace.status() == std::backtrace::BacktraceStatus::Captured => {
            format!("stack backtrace:\n{trace}\n")
        }
        _ => String::new(),
    };
    let message = format!(
        "thread '{}' panicked at {place}:\n{payload}\n{backtrace}",
        thread.name().unwrap_or("<unnamed>")
    );
    match OUT.get().and_then(Option::as_ref) {
        Some(out) if !WRITER.get() && out.send_past_limit(message.clone().into_bytes()) => {
            out.flush(PANIC_FLUSH_LIMIT);
        }
        _ => {
            let _ = std::io::stderr().write_all(message.as_bytes());
        }
    }
}

/// Waits, up to `limit`, for the log lines queued so far to reach stderr;
/// whether they did. Call before `std::process::exit`, which drops no
/// guard.
pub fn flush(limit: Duration) -> bool {
    OUT.get()
        .and_then(Option::as_ref)
        .is_none_or(|out| out.flush(limit))
}

/// Returned by [`init`]: dropping it gives the log lines queued so far up
/// to [`EXIT_FLUSH_LIMIT`] to reach stderr.
#[derive(Debug)]
#[must_use = "dropping the guard flushes the logs; keep it until the process exits"]
pub struct FlushOnDrop(());

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        flush(EXIT_FLUSH_LIMIT);
    }
}

thread_local! {
    /// Whether this thread is the `log-writer`, whose own lines go
    /// straight to stderr: it is the thread that may wait for it.
    static WRITER: Cell<bool> = const { Cell::new(false) };
}

/// Writes one queued line on stderr (on the `log-writer` thread), first
/// saying how many were dropped since the line written before it (written
/// at once: queued, the warning would wait behind the lines held, or be
/// dropped while they keep the queue full). The lines held were mostly
/// queued before the drops, so the warning says the gap falls among or
/// after them: an operator reading the log must not take the lines after
/// it as whole.
/// A closed stderr loses the line.
fn write_line(line: &[u8], dropped: u64) {
    WRITER.set(true);
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "log lines dropped: stderr was not being read (the gap falls among \
             or after the lines held, written next)"
        );
    }
    let _ = std::io::stderr().write_all(line);
}

/// The subscriber's writer: each event's formatted line goes to the
/// `log-writer` queue whole.
struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Self::Writer {
        Stderr
    }
}

impl Write for Stderr {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        match OUT.get().and_then(Option::as_ref) {
            Some(out) if !WRITER.get() => {
                out.send(line.to_vec());
            }
            _ => std::io::stderr().write_all(line)?,
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
