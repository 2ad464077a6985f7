//! The running shell: the VNF, its reload, the shell's own metrics, and the admin HTTP server.
//!
//! Endpoints: `GET /metrics` (Prometheus text format), `GET /healthz` (the process runs),
//! `GET /readyz` (the datapath is up), `GET /config` (the effective configuration, YAML),
//! `POST /reload` (same as SIGHUP). axum answers 404 for other paths and 405 for other
//! methods.
//!
//! Design: the server runs on a small tokio runtime next to the datapath's own threads.
//! Reloads read a file and may take a while in `compile` or `VnfApp::reload`, so they run
//! on tokio's blocking pool, one at a time (a mutex), whichever of SIGHUP and HTTP asked.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus::{Gauge, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::VnfApp;
use super::config::{LoadError, Sources, load};

/// How long open admin connections may hold up a shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The version every VNF reports (the workspace shares one version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The metrics the shell owns.
#[derive(Debug, Clone)]
pub struct ShellMetrics {
    reloads_ok: IntCounter,
    reloads_error: IntCounter,
    last_success: Gauge,
}

impl ShellMetrics {
    /// Register `vnf_build_info`, `vnf_config_reloads_total` and
    /// `vnf_config_last_reload_success_timestamp_seconds` on `registry`.
    pub fn register(registry: &Registry, vnf: &str) -> prometheus::Result<Self> {
        let build_info = IntGaugeVec::new(
            Opts::new("vnf_build_info", "Which VNF and version this is; always 1."),
            &["vnf", "version"],
        )?;
        build_info.with_label_values(&[vnf, VERSION]).set(1);
        let reloads = IntCounterVec::new(
            Opts::new(
                "vnf_config_reloads_total",
                "Configuration reloads (SIGHUP or POST /reload) by result.",
            ),
            &["result"],
        )?;
        let last_success = Gauge::new(
            "vnf_config_last_reload_success_timestamp_seconds",
            "When the running configuration was loaded (start or last successful reload), \
             in seconds since the Unix epoch.",
        )?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        let metrics = ShellMetrics {
            // Both series exist from the start, so `rate()` and alerts see a zero.
            reloads_ok: reloads.with_label_values(&["ok"]),
            reloads_error: reloads.with_label_values(&["error"]),
            last_success,
        };
        metrics.loaded_now();
        Ok(metrics)
    }

    fn loaded_now(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_success.set(now);
    }
}

/// Why a reload was refused; the running configuration stays either way.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration could not be read or is invalid.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The VNF refused to apply it.
    #[error("the datapath refused the new configuration: {0}")]
    Refused(String),
}

impl ReloadError {
    /// One line per problem.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ReloadError::Load(e) => e.lines(),
            other => vec![other.to_string()],
        }
    }
}

/// A running VNF and what the shell keeps beside it.
#[derive(Debug)]
pub struct Shell<A: VnfApp> {
    app: A,
    sources: Sources,
    /// The effective raw configuration, for `GET /config`.
    raw: Mutex<Arc<A::Raw>>,
    /// Held for the whole of a reload (and of shutdown), so there is one at a time.
    reload_lock: Mutex<()>,
    registry: Registry,
    metrics: ShellMetrics,
}

impl<A: VnfApp> Shell<A> {
    /// Wrap a started VNF.
    pub fn new(
        app: A,
        sources: Sources,
        raw: A::Raw,
        registry: Registry,
        metrics: ShellMetrics,
    ) -> Self {
        Shell {
            app,
            sources,
            raw: Mutex::new(Arc::new(raw)),
            reload_lock: Mutex::new(()),
            registry,
            metrics,
        }
    }

    /// The VNF.
    pub fn app(&self) -> &A {
        &self.app
    }

    /// The effective raw configuration.
    pub fn raw(&self) -> Arc<A::Raw> {
        self.raw
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-read the file, the variables and the flags, compile, and hand the result to the
    /// VNF; on any error keep the running configuration. Logs and counts the outcome.
    /// Blocks: call it from a blocking thread.
    pub fn reload(&self, trigger: &str) -> Result<(), ReloadError> {
        let _one_at_a_time = self
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let result = load::<A>(&self.sources)
            .map_err(ReloadError::from)
            .and_then(|loaded| {
                self.app
                    .reload(Arc::new(loaded.config))
                    .map_err(ReloadError::Refused)?;
                *self.raw.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(loaded.raw);
                Ok(())
            });
        match &result {
            Ok(()) => {
                self.metrics.reloads_ok.inc();
                self.metrics.loaded_now();
                info!(trigger, config = %self.sources.file.display(), "configuration reloaded");
            }
            Err(e) => {
                self.metrics.reloads_error.inc();
                let lines = e.lines();
                error!(
                    trigger,
                    config = %self.sources.file.display(),
                    errors = lines.len(),
                    "configuration reload refused; the running configuration stays"
                );
                for line in &lines {
                    error!("{line}");
                }
            }
        }
        result
    }

    /// Stop the VNF, after any reload in progress.
    pub fn shutdown(&self) {
        let _no_reload = self
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.app.shutdown();
    }
}

/// Reload on a blocking thread.
async fn reload_blocking<A: VnfApp>(
    shell: Arc<Shell<A>>,
    trigger: &'static str,
) -> Result<(), Response> {
    match tokio::task::spawn_blocking(move || shell.reload(trigger)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            let status = match &e {
                ReloadError::Load(LoadError::Read { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            let mut body = e.lines().join("\n");
            body.push('\n');
            Err((status, body).into_response())
        }
        Err(join) => Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reload failed: {join}\n"),
        )
            .into_response()),
    }
}

/// The admin HTTP routes.
pub fn router<A: VnfApp>(shell: Arc<Shell<A>>) -> Router {
    Router::new()
        .route("/metrics", get(metrics::<A>))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<A>))
        .route("/config", get(config::<A>))
        .route("/reload", post(reload::<A>))
        .route("/state/{name}", get(state::<A>))
        .route("/action/{name}", post(action::<A>))
        .with_state(shell)
}

async fn metrics<A: VnfApp>(State(shell): State<Arc<Shell<A>>>) -> Response {
    let encoder = TextEncoder::new();
    match encoder.encode_to_string(&shell.registry.gather()) {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}\n"),
        )
            .into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz<A: VnfApp>(State(shell): State<Arc<Shell<A>>>) -> Response {
    if shell.app.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn config<A: VnfApp>(State(shell): State<Arc<Shell<A>>>) -> Response {
    match serde_saphyr::to_string(&*shell.raw()) {
        Ok(yaml) => ([(header::CONTENT_TYPE, "application/yaml")], yaml).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render the configuration: {e}\n"),
        )
            .into_response(),
    }
}

async fn state<A: VnfApp>(
    State(shell): State<Arc<Shell<A>>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    match shell.app.report(&name) {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain")], text).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            format!("no state report named `{name}`\n"),
        )
            .into_response(),
    }
}

async fn action<A: VnfApp>(
    State(shell): State<Arc<Shell<A>>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let args = query.unwrap_or_default();
    match shell.app.action(&name, &args) {
        Some(Ok(text)) => {
            info!(action = %name, args = %args, "admin action");
            (StatusCode::OK, text).into_response()
        }
        Some(Err(text)) => (StatusCode::BAD_REQUEST, format!("{text}\n")).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no action named `{name}`\n")).into_response(),
    }
}

async fn reload<A: VnfApp>(State(shell): State<Arc<Shell<A>>>) -> Response {
    match reload_blocking(shell, "POST /reload").await {
        Ok(()) => (StatusCode::OK, "reloaded\n").into_response(),
        Err(response) => response,
    }
}

/// Why the admin server failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The listen address could not be bound.
    #[error("cannot listen for admin HTTP on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving stopped on an I/O error.
    #[error("admin HTTP server failed: {0}")]
    Serve(std::io::Error),
    /// The server's task panicked or was cancelled.
    #[error("admin HTTP server task failed: {0}")]
    Task(tokio::task::JoinError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Bind the admin address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, AdminError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })
}

/// Serve the admin routes on `listener` until `stop` turns true, then stop accepting and let
/// open requests finish for up to five seconds.
pub async fn serve<A: VnfApp>(
    shell: Arc<Shell<A>>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) -> Result<(), AdminError> {
    let mut graceful = stop.clone();
    let server = axum::serve(listener, router(shell)).with_graceful_shutdown(async move {
        // An error means the sender is gone, which is a stop too.
        let _ = graceful.wait_for(|stop| *stop).await;
    });
    let drain_deadline = async move {
        let _ = stop.wait_for(|stop| *stop).await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        served = server => served.map_err(AdminError::Serve),
        () = drain_deadline => {
            warn!(timeout = ?DRAIN_TIMEOUT, "admin connections still open at shutdown; closing them");
            Ok(())
        }
    }
}

/// The signals the shell handles. Installed before the VNF starts, so a signal that
/// arrives while it starts is not lost (nor kills the process half-started).
#[derive(Debug)]
pub struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    /// Install the handlers; must run inside the tokio runtime.
    pub fn install() -> Result<Self, AdminError> {
        let install = |kind| signal(kind).map_err(AdminError::Signals);
        Ok(Signals {
            hangup: install(SignalKind::hangup())?,
            terminate: install(SignalKind::terminate())?,
            interrupt: install(SignalKind::interrupt())?,
        })
    }

    /// Reload on SIGHUP until SIGTERM or SIGINT arrives; returns the signal's name.
    pub async fn run<A: VnfApp>(mut self, shell: Arc<Shell<A>>) -> &'static str {
        loop {
            tokio::select! {
                Some(()) = self.hangup.recv() => {
                    // The outcome is logged and counted by the reload itself.
                    let _ = reload_blocking(shell.clone(), "SIGHUP").await;
                }
                Some(()) = self.terminate.recv() => return "SIGTERM",
                Some(()) = self.interrupt.recv() => return "SIGINT",
                else => return "signal stream closed",
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::daemon::testing::{Fake, write_config};

    struct Reply {
        status: u16,
        content_type: String,
        body: String,
    }

    /// One HTTP/1.1 request over a plain socket.
    fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("read");
        let (head, body) = text.split_once("\r\n\r\n").expect("a full response");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let content_type = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-type")
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_default();
        Reply {
            status,
            content_type,
            body: body.to_string(),
        }
    }

    const GOOD: &str = "name: edge\nunderlay:\n  port: 5000\nvnis:\n  - id: 5001\n";

    #[test]
    fn admin_endpoints_and_reload() {
        let (_dir, file) = write_config(GOOD);
        let sources = Sources::new(&file, Vec::new(), Vec::new());
        let loaded = load::<Fake>(&sources).expect("good config");
        let registry = Registry::new();
        let metrics = ShellMetrics::register(&registry, Fake::NAME).expect("metrics");
        let app = Fake::start(Arc::new(loaded.config), &registry).expect("start");
        let shell = Arc::new(Shell::new(app, sources, loaded.raw, registry, metrics));

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(bind("127.0.0.1:0".parse().expect("addr")))
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = watch::channel(false);
        let server = runtime.spawn(serve(shell.clone(), listener, stopped));

        let r = request(addr, "GET", "/healthz");
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));

        assert_eq!(request(addr, "GET", "/readyz").status, 503);
        shell.app().ready.store(true, Ordering::Relaxed);
        let r = request(addr, "GET", "/readyz");
        assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));

        let r = request(addr, "GET", "/metrics");
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type, "text/plain; version=0.0.4");
        let build_info = format!("vnf_build_info{{version=\"{VERSION}\",vnf=\"vnf-fake\"}} 1");
        assert!(r.body.contains(&build_info), "{}", r.body);
        assert!(
            r.body
                .contains("vnf_config_reloads_total{result=\"error\"} 0")
        );

        let r = request(addr, "GET", "/config");
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type, "application/yaml");
        assert!(r.body.contains("port: 5000"), "{}", r.body);

        // A broken file is refused, with its errors, and the old config keeps running.
        std::fs::write(&file, "underlay:\n  port: 0\nvnis:\n  - id: 0\n").expect("write");
        let r = request(addr, "POST", "/reload");
        assert_eq!(r.status, 422);
        let shown = r.body.replace(&file.display().to_string(), "FILE");
        assert_eq!(
            shown,
            "FILE:2:9: underlay.port: port 0 is reserved\n\
             FILE:4:9: vnis[0].id: VNI 0 is outside 1..=16777215\n"
        );
        assert_eq!(shell.app().port(), 5000);
        assert!(request(addr, "GET", "/config").body.contains("port: 5000"));
        std::fs::write(&file, "name: edge\n  bad: 1\n").expect("write");
        let r = request(addr, "POST", "/reload");
        assert_eq!(r.status, 422);
        assert!(
            r.body.starts_with(&format!("{}:2:6: ", file.display())),
            "{}",
            r.body
        );

        // A config the datapath refuses is refused too.
        std::fs::write(&file, "name: refuse\n").expect("write");
        let r = request(addr, "POST", "/reload");
        assert_eq!(r.status, 422);
        assert!(r.body.contains("refuses this one"), "{}", r.body);
        assert_eq!(shell.app().port(), 5000);

        // A good one is applied.
        std::fs::write(&file, "underlay:\n  port: 4790\n").expect("write");
        let r = request(addr, "POST", "/reload");
        assert_eq!((r.status, r.body.as_str()), (200, "reloaded\n"));
        assert_eq!(shell.app().port(), 4790);
        assert!(request(addr, "GET", "/config").body.contains("port: 4790"));
        let r = request(addr, "GET", "/metrics");
        assert!(
            r.body.contains("vnf_config_reloads_total{result=\"ok\"} 1"),
            "{}",
            r.body
        );
        assert!(
            r.body
                .contains("vnf_config_reloads_total{result=\"error\"} 3"),
            "{}",
            r.body
        );

        assert_eq!(request(addr, "GET", "/reload").status, 405);
        assert_eq!(request(addr, "POST", "/healthz").status, 405);
        assert_eq!(request(addr, "GET", "/nope").status, 404);

        stop.send_replace(true);
        let served = runtime.block_on(server).expect("server task");
        assert!(served.is_ok());
        assert!(
            TcpStream::connect(addr).is_err(),
            "still listening after stop"
        );
        shell.shutdown();
        assert!(shell.app().stopped.load(Ordering::Relaxed));
    }

    #[test]
    fn bind_failure_names_the_address() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let taken = bind("127.0.0.1:0".parse().expect("addr"))
                .await
                .expect("bind");
            let addr = taken.local_addr().expect("addr");
            let err = bind(addr).await.expect_err("address in use");
            assert!(
                err.to_string()
                    .starts_with(&format!("cannot listen for admin HTTP on {addr}: ")),
                "{err}"
            );
        });
    }
}
