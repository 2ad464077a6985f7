//! Logs: `tracing` events to stderr, human-readable or JSON, one per line.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use super::cli::LogFormat;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The level or filter does not parse.
    #[error("invalid log level `{filter}` (from {from}): {source}")]
    Filter {
        /// The filter as given.
        filter: String,
        /// `--log-level` or `RUST_LOG`.
        from: &'static str,
        /// Why.
        source: tracing_subscriber::filter::ParseError,
    },
}

/// The filter: `--log-level` (or `VNF_LOG_LEVEL`) if given, else `RUST_LOG` if set, else
/// `info`.
pub fn filter(level: Option<&str>) -> Result<EnvFilter, LogError> {
    let (filter, from) = match (level, std::env::var("RUST_LOG")) {
        (Some(level), _) => (level.to_string(), "--log-level"),
        (None, Ok(rust_log)) if !rust_log.trim().is_empty() => (rust_log, "RUST_LOG"),
        _ => ("info".to_string(), "the default"),
    };
    EnvFilter::try_new(&filter).map_err(|source| LogError::Filter {
        filter,
        from,
        source,
    })
}

/// Install the global subscriber. If one is already installed (a test harness, or an
/// embedding program), that one is kept.
pub fn init(format: LogFormat, level: Option<&str>) -> Result<(), LogError> {
    let filter = filter(level)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Either way, an error here only means a subscriber is already installed.
    let _ = match format {
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_levels_and_filters_parse() {
        assert!(filter(Some("debug")).is_ok());
        assert!(filter(Some("info,overlay_io=trace")).is_ok());
        let err = filter(Some("info,=[")).expect_err("bad filter");
        assert!(err.to_string().contains("--log-level"), "{err}");
    }
}
