//! The daemon shell every VNF binary shares.
//!
//! A VNF implements [`VnfApp`] and its `main.rs` is
//!
//! ```ignore
//! fn main() -> std::process::ExitCode {
//!     overlay_io::daemon::run::<MyVnf>()
//! }
//! ```
//!
//! and [`run`] does the rest:
//!
//! - [`cli`]: the command line (`--config`, `--check`, `--set`, `--admin`, `--log-*`).
//! - [`config`]: the layers (defaults < YAML file < `VNF_*` environment < `--set`), merged
//!   with figment, and errors that say where they are: `FILE:LINE:COLUMN: message`.
//! - [`locate`]: the positions of a YAML file's keys, to put a line on a semantic error.
//! - [`admin`]: the admin HTTP server (`/metrics`, `/healthz`, `/readyz`, `/config`,
//!   `/reload`), reload, the shell's own metrics and signal handling.
//! - [`logging`]: `tracing` to stderr, human or JSON.
//!
//! Lifecycle: parse the command line; load and compile the configuration (on error print
//! every problem and exit 1; with `--check` stop here); install signal handlers; start the
//! datapath on the main thread; serve admin HTTP on a two-thread tokio runtime until SIGTERM
//! or SIGINT (SIGHUP reloads); stop serving; shut the datapath down; exit 0.

pub mod admin;
pub mod cli;
pub mod config;
pub mod locate;
pub mod logging;
#[cfg(test)]
pub(crate) mod testing;

use std::fmt;
use std::process::ExitCode;
use std::sync::Arc;

use prometheus::Registry;
use tracing::{error, info};

pub use self::admin::{AdminError, Shell, ShellMetrics, VERSION};
pub use self::cli::{Cli, LogFormat};
pub use self::config::{Diagnostic, LoadError, Loaded, Origin, Sources, load, yaml_diagnostic};

/// Worker threads of the admin runtime; the datapath owns the other cores.
const ADMIN_THREADS: usize = 2;

/// A configuration problem found by [`VnfApp::compile`], and where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// The key path of the offending value as written in the YAML: map keys joined by `.`,
    /// list indices in brackets, e.g. `vnis[1].flood[0]` or `ports.trunk0.vid`; empty for
    /// the configuration as a whole. The shell turns it into a line and column.
    pub path: String,
    /// What is wrong, e.g. "VNI 0 is outside 1..=16777215".
    pub message: String,
}

impl ConfigError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl fmt::Display) -> Self {
        ConfigError {
            path: path.into(),
            message: message.to_string(),
        }
    }
}

/// What a VNF gives the shell.
pub trait VnfApp: Sized + Send + Sync + 'static {
    /// Name of the binary, e.g. "vnf-router" (used in logs, `vnf_build_info` and `--help`).
    const NAME: &'static str;
    /// One line for `--help`.
    const ABOUT: &'static str = "";
    /// The configuration as written in YAML: serde structs with
    /// `#[serde(default, deny_unknown_fields)]`. `Default` is the lowest layer; every struct
    /// should default its missing fields, since a key may come from another layer.
    type Raw: serde::de::DeserializeOwned + serde::Serialize + Default + Send + Sync + 'static;
    /// The typed, checked configuration.
    type Config: Send + Sync + 'static;

    /// Raw -> typed; every semantic problem at once, each with its path.
    fn compile(raw: &Self::Raw) -> Result<Self::Config, Vec<ConfigError>>;
    /// Start the datapath; called once on the main thread before the admin server starts.
    /// The shell's own metrics are already on `registry`; add the VNF's.
    fn start(config: Arc<Self::Config>, registry: &Registry) -> Result<Self, String>;
    /// Apply a new, already compiled configuration; `Err` refuses it and the old one keeps
    /// running. Never called twice at once.
    fn reload(&self, config: Arc<Self::Config>) -> Result<(), String>;
    /// Whether the datapath is up (workers running, sockets bound): `GET /readyz`.
    fn is_ready(&self) -> bool;
    /// Stop the datapath and join its threads (SIGTERM, SIGINT, or a failed start of the
    /// admin server).
    fn shutdown(&self);

    /// A state report served at `GET /state/NAME` as text (the firewall's `connections`);
    /// `None` (404) for names the VNF does not report.
    fn report(&self, _name: &str) -> Option<String> {
        None
    }

    /// An operation at `POST /action/NAME?ARGS` (the load balancer's `drain`), with the
    /// raw query string; `None` (404) for names the VNF does not have, `Err` (400) for bad
    /// arguments. Run-time state only: the config file stays as it is.
    fn action(&self, _name: &str, _args: &str) -> Option<Result<String, String>> {
        None
    }
}

/// Run VNF `A` as a daemon: the whole of a VNF's `main`.
pub fn run<A: VnfApp>() -> ExitCode {
    let cli = match Cli::parse_for(A::NAME, A::ABOUT, std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version come this way too, with exit code 0.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let sources = Sources::from_process(&cli.config, cli.overrides.clone());

    if cli.check {
        return check::<A>(&sources);
    }

    if let Err(e) = logging::init(cli.log_format, cli.log_level.as_deref()) {
        eprintln!("{}: {e}", A::NAME);
        return ExitCode::from(2);
    }
    info!(
        vnf = A::NAME,
        version = VERSION,
        config = %cli.config.display(),
        admin = %cli.admin,
        "starting"
    );

    let loaded = match load::<A>(&sources) {
        Ok(loaded) => loaded,
        Err(e) => {
            let lines = e.lines();
            for line in &lines {
                eprintln!("{line}");
            }
            error!(errors = lines.len(), "invalid configuration; not starting");
            return ExitCode::FAILURE;
        }
    };

    serve::<A>(&cli, sources, loaded)
}

/// `--check`: print `FILE: ok`, or every error; no logging, nothing started.
fn check<A: VnfApp>(sources: &Sources) -> ExitCode {
    match load::<A>(sources) {
        Ok(_) => {
            println!("{}: ok", sources.file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            for line in e.lines() {
                eprintln!("{line}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Log `message` as the reason the process fails.
fn fail(message: impl fmt::Display) -> ExitCode {
    error!("{message}");
    ExitCode::FAILURE
}

/// Start the datapath, serve admin HTTP until SIGTERM or SIGINT, and shut down.
fn serve<A: VnfApp>(cli: &Cli, sources: Sources, loaded: Loaded<A::Raw, A::Config>) -> ExitCode {
    let registry = Registry::new();
    let metrics = match ShellMetrics::register(&registry, A::NAME) {
        Ok(metrics) => metrics,
        Err(e) => return fail(format_args!("cannot register the shell's metrics: {e}")),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(ADMIN_THREADS)
        .thread_name(format!("{}-admin", A::NAME))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(format_args!("cannot start the admin runtime: {e}")),
    };
    let signals = match runtime.block_on(async { admin::Signals::install() }) {
        Ok(signals) => signals,
        Err(e) => return fail(e),
    };

    let app = match A::start(Arc::new(loaded.config), &registry) {
        Ok(app) => app,
        Err(e) => return fail(format_args!("cannot start the datapath: {e}")),
    };
    let shell = Arc::new(Shell::new(app, sources, loaded.raw, registry, metrics));

    let served = runtime.block_on(async {
        let listener = admin::bind(cli.admin).await?;
        info!(admin = %cli.admin, "admin HTTP listening");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut server = tokio::spawn(admin::serve(shell.clone(), listener, stopped));
        let joined = tokio::select! {
            signal = signals.run(shell.clone()) => {
                info!(signal, "shutting down");
                stop.send_replace(true);
                server.await
            }
            // The server only ends by itself on an error.
            joined = &mut server => joined,
        };
        joined.map_err(AdminError::Task)?
    });
    // Say why before the datapath's own shutdown logs.
    if let Err(e) = &served {
        error!("{e}");
    }

    // Whatever happened to the admin server, the datapath stops with the process.
    shell.shutdown();
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match served {
        Ok(()) => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        Err(_) => ExitCode::FAILURE,
    }
}
