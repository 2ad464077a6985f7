//! The command line every VNF binary shares.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

use super::config::parse_override;

/// Default admin HTTP address: loopback, so metrics and reload are not exposed by accident.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9180";

const AFTER_HELP: &str = "\
Configuration layers, lowest precedence first: built-in defaults < --config FILE < VNF_* \
environment variables < --set flags. See --help for details.";

const AFTER_LONG_HELP: &str = "\
CONFIGURATION LAYERS (lowest precedence first):
  1. the built-in defaults of this VNF
  2. the YAML file given with --config
  3. environment variables VNF_<KEY>, with `__` between nested keys:
       VNF_UNDERLAY__PORT=4790     sets   underlay: { port: 4790 }
     Names are matched case-insensitively and keys lowercased. VNF_CONFIG, VNF_ADMIN,
     VNF_LOG_FORMAT and VNF_LOG_LEVEL stand for the flags of the same name, and are
     not configuration keys.
  4. --set KEY=VALUE flags:
       --set underlay.port=4790
Values from the environment and from --set are read as a number, a boolean, a list
`[a, b]` or a map `{key=value}` when they look like one, and as a string otherwise.
Run with --check to see the result; GET /config on the admin address shows the
effective configuration of a running instance.

ERRORS are printed all at once, one per line, saying where each one is:
  FILE:LINE:COLUMN: message          in the YAML file
  FILE:LINE:COLUMN: key.path: message
  VNF_UNDERLAY__PORT: message        set by an environment variable
  --set underlay.port: message       set by a flag

ADMIN HTTP (--admin): GET /metrics (Prometheus), GET /healthz, GET /readyz,
GET /config, POST /reload.

SIGNALS: SIGHUP reloads the configuration (same file, variables and flags), like
POST /reload: it is validated first, and a bad one is refused with every error logged
while the running configuration stays. SIGTERM and SIGINT stop gracefully.

EXIT STATUS: 0 on success or a clean stop, 1 on an invalid configuration or a failure
to start, 2 on a usage error.";

/// The admin and log settings are the shell's, shared by every VNF, and not part of the
/// VNF's configuration file.
#[derive(Debug, Clone, Parser)]
#[command(version, after_help = AFTER_HELP, after_long_help = AFTER_LONG_HELP)]
pub struct Cli {
    /// The YAML configuration file.
    ///
    /// Keys it leaves out keep their defaults; VNF_* environment variables and --set
    /// override it. SIGHUP and POST /reload read it again.
    #[arg(
        short,
        long,
        value_name = "FILE",
        env = "VNF_CONFIG",
        verbatim_doc_comment
    )]
    pub config: PathBuf,

    /// Validate the configuration and exit, like `nginx -t`.
    ///
    /// Reads the file, the VNF_* environment and the --set flags, and checks everything
    /// the VNF checks at start. Prints `FILE: ok` and exits 0, or prints every error,
    /// one per line, and exits 1. Starts nothing.
    #[arg(long, verbatim_doc_comment)]
    pub check: bool,

    /// Set one configuration key, over the file and the environment (repeatable).
    ///
    /// KEY is a dotted path into the configuration, e.g. `--set underlay.port=4790`.
    #[arg(
        verbatim_doc_comment,
        long = "set",
        value_name = "KEY=VALUE",
        value_parser = parse_override,
        action = clap::ArgAction::Append,
    )]
    pub overrides: Vec<(String, String)>,

    /// Listen address of the admin HTTP server (metrics, health, config, reload).
    ///
    /// Keep it on loopback or a management network: POST /reload needs no
    /// credentials.
    #[arg(
        long,
        value_name = "ADDR",
        env = "VNF_ADMIN",
        default_value = DEFAULT_ADMIN,
        verbatim_doc_comment
    )]
    pub admin: SocketAddr,

    /// Log format on stderr.
    #[arg(
        long,
        value_name = "FORMAT",
        env = "VNF_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Human
    )]
    pub log_format: LogFormat,

    /// Log level or tracing filter, e.g. `debug` or `info,overlay_io=debug` [default: info].
    ///
    /// Without this flag (or VNF_LOG_LEVEL), RUST_LOG is honoured if set.
    #[arg(
        long,
        value_name = "LEVEL",
        env = "VNF_LOG_LEVEL",
        verbatim_doc_comment
    )]
    pub log_level: Option<String>,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

impl Cli {
    /// The clap command, named and described for VNF `name`.
    pub fn command_for(name: &'static str, about: &'static str) -> clap::Command {
        let command = Cli::command().name(name).bin_name(name);
        if about.is_empty() {
            command
        } else {
            command.about(about)
        }
    }

    /// Parse `args` (the first being the program) for VNF `name`.
    pub fn parse_for<I, T>(
        name: &'static str,
        about: &'static str,
        args: I,
    ) -> clap::error::Result<Self>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Cli::command_for(name, about).try_get_matches_from(args)?;
        Cli::from_arg_matches(&matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_flags_and_defaults() {
        let cli = Cli::parse_for(
            "vnf-test",
            "",
            [
                "vnf-test", "-c", "x.yaml", "--check", "--set", "a.b=1", "--set", "c=[1, 2]",
            ],
        )
        .expect("parses");
        assert_eq!(cli.config, PathBuf::from("x.yaml"));
        assert!(cli.check);
        assert_eq!(
            cli.overrides,
            [("a.b".into(), "1".into()), ("c".into(), "[1, 2]".into())]
        );
        assert_eq!(cli.log_format, LogFormat::Human);
    }

    #[test]
    fn rejects_a_bad_override_and_a_bad_address() {
        let bad_set = Cli::parse_for("vnf-test", "", ["vnf-test", "-c", "x", "--set", "nokey"]);
        assert!(bad_set.is_err());
        let bad_admin = Cli::parse_for("vnf-test", "", ["vnf-test", "-c", "x", "--admin", "nope"]);
        assert!(bad_admin.is_err());
    }
}
