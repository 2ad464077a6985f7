//! The process supervisor behind `vnfctl up | down | status`.
//!
//! # State directory
//!
//! Everything lives under one directory `STATE` chosen by the caller (e.g. `./.vnfctl/acme`):
//!
//! - `STATE/plan/`: the plan, `plan.yaml` ([`Manifest`]) and the instances' config files.
//! - `STATE/supervisor.pid`: the pid of the running supervisor, one decimal line.
//! - `STATE/status.json`: a [`Status`], replaced atomically (temp file + rename) whenever
//!   something changes and at least every second while the supervisor runs; the last one
//!   it writes on the way out shows every instance `stopped`.
//! - `STATE/logs/NAME.log`: stdout and stderr of instance `NAME`, appended to; each start
//!   is preceded by a `vnfctl:` line saying what was started.
//! - `STATE/logs/supervisor.log`: one timestamped line per start, exit, restart, stop and
//!   reconcile, and the detached supervisor's own stdout and stderr.
//!
//! # Design
//!
//! One thread runs a loop with a [`TICK`] of 20 ms: reap exited children with
//! [`Child::try_wait`], restart the ones whose backoff has elapsed, SIGKILL the ones that
//! outstayed their [`STOP_GRACE`], probe `GET /readyz` of the ones still `starting`, and
//! write the status. Signals only set flags in a [`Control`]; the loop acts on them, so
//! nothing complicated runs in a signal handler.
//!
//! An instance that exits for any reason it was not asked to, exit status 0 included, is
//! restarted after a backoff of 100 ms, doubled on each further exit up to 5 s, and back to
//! 100 ms once an instance has run for 10 s. A restart therefore follows a crash within one
//! tick plus 100 ms plus the time the binary takes to start.
//!
//! # Children and the supervisor's death
//!
//! Children stay in the supervisor's session and process group (a Ctrl-C on a foreground
//! `vnfctl supervise` reaches them too, and they stop cleanly). On Linux each child asks
//! for `PR_SET_PDEATHSIG(SIGTERM)`, so if the supervisor is SIGKILLed its children are
//! sent SIGTERM and stop; the supervisor's pid file and `status.json` are then stale, which
//! [`is_running`] detects (the pid is gone) and [`start_detached`] cleans up. The parent
//! death signal fires when the *thread* that spawned the child exits; the supervisor loop
//! spawns from the thread that runs it, which lives until every child is gone. A child
//! that ignores SIGTERM, or one on a system without `PR_SET_PDEATHSIG`, outlives a killed
//! supervisor as an orphan; the next `up` does not hunt for it, and the new instance then
//! fails to bind its addresses and is shown in backoff with its log saying so.
//!
//! Children get no `VNF_*` variable of the supervisor's environment: the plan's config
//! files are the whole configuration.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::admin_client;
use crate::manifest::{Instance, Kind, Manifest};

/// The plan directory's name inside the state directory.
pub const PLAN_DIR: &str = "plan";
/// The supervisor's pid file's name inside the state directory.
pub const PID_FILE: &str = "supervisor.pid";
/// The status file's name inside the state directory.
pub const STATUS_FILE: &str = "status.json";
/// The log directory's name inside the state directory.
pub const LOG_DIR: &str = "logs";
/// The supervisor's own log's name inside the log directory.
pub const SUPERVISOR_LOG: &str = "supervisor.log";

/// How often the supervisor looks at its children.
pub const TICK: Duration = Duration::from_millis(20);
/// The first restart delay after an exit.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// An instance that ran this long before exiting is restarted after [`BACKOFF_MIN`] again.
pub const BACKOFF_RESET: Duration = Duration::from_secs(10);
/// How long a child has between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The status file is rewritten at least this often.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// How often a `starting` instance's `/readyz` is probed.
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// The timeout of one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// How many lines of a log an error message quotes.
const LOG_TAIL: usize = 20;

/// How to run the supervisor.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The state directory (see the module documentation).
    pub state: PathBuf,
    /// Where the VNF binaries are; if `None`, next to the running executable, then `$PATH`.
    pub bin_dir: Option<PathBuf>,
    /// Passed to every instance as `--log-level`.
    pub log_level: Option<String>,
}

/// Requests to a running supervisor loop. [`run_foreground`]'s signal handlers set them;
/// tests and embedders that call [`run_foreground_until`] set them directly.
#[derive(Debug, Default)]
pub struct Control {
    /// Stop every instance and return (SIGTERM, SIGINT).
    pub stop: AtomicBool,
    /// Re-read the manifest and reconcile (SIGHUP). Cleared when acted on.
    pub reconcile: AtomicBool,
}

impl Control {
    /// No request pending.
    pub const fn new() -> Self {
        Control {
            stop: AtomicBool::new(false),
            reconcile: AtomicBool::new(false),
        }
    }
}

/// What the supervisor writes to `STATE/status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The manifest's tenant.
    pub tenant: String,
    /// The supervisor's pid.
    pub supervisor_pid: u32,
    /// When the supervisor started, in seconds since the Unix epoch.
    pub started: u64,
    /// When this status was written, in seconds since the Unix epoch.
    pub updated: u64,
    /// Every instance of the manifest in its order, then any removed one still stopping.
    pub instances: Vec<InstanceStatus>,
}

/// One instance in [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// The instance's name.
    pub name: String,
    /// What it runs.
    pub kind: Kind,
    /// Its admin endpoint.
    pub admin: SocketAddr,
    /// Its process, if one is running.
    pub pid: Option<u32>,
    /// Where it is in its life.
    pub state: State,
    /// How many times it was restarted after an exit (a restart for a changed manifest
    /// starts again from 0).
    pub restarts: u32,
    /// How its last process ended: `exit 1`, `signal 9`, or `cannot start: ...`.
    pub last_exit: Option<String>,
    /// When its current (or last) process started, in seconds since the Unix epoch.
    pub since: Option<u64>,
}

/// The life of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Its process runs; `/readyz` has not answered 200 yet.
    Starting,
    /// Its process runs and `/readyz` answered 200.
    Running,
    /// Its process exited; it is restarted when the backoff delay has passed.
    Backoff,
    /// It was sent SIGTERM (removed, changed, or the supervisor stops) and has not exited.
    Stopping,
    /// It is not running and will not be restarted.
    Stopped,
    /// Its process could not be started (binary missing, exec failed); retried like
    /// [`State::Backoff`].
    Failed,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Backoff => "backoff",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Failed => "failed",
        })
    }
}

/// `STATE/plan`.
pub fn plan_dir(state: &Path) -> PathBuf {
    state.join(PLAN_DIR)
}

/// `STATE/supervisor.pid`.
pub fn pid_file(state: &Path) -> PathBuf {
    state.join(PID_FILE)
}

/// `STATE/status.json`.
pub fn status_file(state: &Path) -> PathBuf {
    state.join(STATUS_FILE)
}

/// `STATE/logs/NAME.log`; characters of `name` other than `[A-Za-z0-9._-]` become `_`,
/// and a leading `.` too, so a name can never leave the log directory.
pub fn instance_log(state: &Path, name: &str) -> PathBuf {
    let mut file: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if file.is_empty() || file.starts_with('.') {
        file.insert(0, '_');
    }
    state.join(LOG_DIR).join(format!("{file}.log"))
}

/// `STATE/logs/supervisor.log`.
pub fn supervisor_log(state: &Path) -> PathBuf {
    state.join(LOG_DIR).join(SUPERVISOR_LOG)
}

/// Read `STATE/status.json`.
pub fn read_status(state: &Path) -> anyhow::Result<Status> {
    let file = status_file(state);
    let text =
        fs::read_to_string(&file).with_context(|| format!("{}: cannot read", file.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not a supervisor status", file.display()))
}

/// The pid of the supervisor running for `state`, if one is (pid file present and that
/// process alive, not a zombie).
pub fn is_running(state: &Path) -> Option<i32> {
    read_pid(state).filter(|&pid| alive(pid))
}

/// Find program `name`: only in `bin_dir` if given, else next to the running executable,
/// else in `$PATH`. The error names the program and every place it looked.
pub fn find_binary(name: &str, bin_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let mut places = Vec::new();
    if let Some(dir) = bin_dir {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        bail!(
            "`{name}` not found: no executable {} (--bin-dir)",
            candidate.display()
        );
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        places.push(format!("{} (next to this program)", dir.display()));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    places.push(format!("$PATH ({})", path.to_string_lossy()));
    bail!(
        "`{name}` not found: looked in {}; pass --bin-dir DIR",
        places.join(" and ")
    )
}

/// Run the supervisor in the foreground until SIGTERM or SIGINT: start every instance of
/// `STATE/plan/plan.yaml` as `BIN --config <absolute config path> --admin <admin>`
/// (`BIN` from [`find_binary`]), restart any that exits with backoff, reconcile on SIGHUP
/// (see [`run_foreground_until`]), and on SIGTERM or SIGINT stop every instance (SIGTERM,
/// SIGKILL after [`STOP_GRACE`]), write the final status, remove the pid file and return.
///
/// This is the whole body of `vnfctl supervise`. It installs process-wide handlers for
/// SIGTERM, SIGINT and SIGHUP, and restores the previous ones before returning.
pub fn run_foreground(opts: &Options) -> anyhow::Result<()> {
    SIGNALS.stop.store(false, Ordering::SeqCst);
    SIGNALS.reconcile.store(false, Ordering::SeqCst);
    let _handlers = SignalHandlers::install()?;
    run_foreground_until(opts, &SIGNALS)
}

/// The supervisor loop of [`run_foreground`], driven by `control` instead of signals.
///
/// Refuses to start if another live supervisor owns `STATE/supervisor.pid`, if the
/// manifest does not read or names an instance twice, or if a binary it needs is missing.
/// On `control.reconcile` it re-reads the manifest: new instances start, removed ones are
/// stopped, and ones whose kind, admin address, config path or host changed are stopped
/// and started again once the old process is gone. A change of a config file's *content*
/// restarts nothing: that goes to the instance's `POST /reload`. A manifest that does not
/// read leaves everything running as it is. On `control.stop` it stops every instance and
/// returns `Ok`.
pub fn run_foreground_until(opts: &Options, control: &Control) -> anyhow::Result<()> {
    let state = std::path::absolute(&opts.state)
        .with_context(|| format!("{}: bad state directory", opts.state.display()))?;
    fs::create_dir_all(state.join(LOG_DIR))
        .with_context(|| format!("{}: cannot create", state.join(LOG_DIR).display()))?;
    let mut log = Log::open(&state);
    let result = prepare(opts, &state).and_then(|(manifest, plan)| {
        claim_pid_file(&state)?;
        let mut supervisor = Supervisor::new(opts, state.clone(), plan, manifest, log.clone());
        supervisor.run(control);
        Ok(())
    });
    release_pid_file(&state);
    if let Err(e) = &result {
        log.say(format_args!("supervisor failed: {e:#}"));
    }
    result
}

/// `vnfctl up`: start a detached supervisor for `opts.state` and wait up to `wait` for
/// every instance to answer `GET /readyz` with 200.
///
/// Refuses if a supervisor for the state directory is already running; a stale pid file
/// is removed. Checks the manifest and that every binary exists before starting anything.
/// The supervisor is `std::env::current_exe()` run with `supervise_args_prefix` followed
/// by `--state STATE [--bin-dir DIR] [--log-level LEVEL]` (absolute paths), in a session
/// of its own, stdin from `/dev/null` and stdout and stderr appended to
/// `logs/supervisor.log`. If the time runs out or the supervisor exits first, the error
/// lists the instances that are not ready with their status and the last lines of their
/// logs; on a timeout the supervisor keeps running (and retrying).
pub fn start_detached(
    opts: &Options,
    supervise_args_prefix: &[String],
    wait: Duration,
) -> anyhow::Result<()> {
    let state = std::path::absolute(&opts.state)
        .with_context(|| format!("{}: bad state directory", opts.state.display()))?;
    if let Some(pid) = is_running(&state) {
        bail!(
            "a supervisor for {} is already running (pid {pid})",
            state.display()
        );
    }
    remove_stale_pid_file(&state);
    let (manifest, _) = prepare(opts, &state)?;

    let log_dir = state.join(LOG_DIR);
    fs::create_dir_all(&log_dir)
        .with_context(|| format!("{}: cannot create", log_dir.display()))?;
    let log_path = supervisor_log(&state);
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("{}: cannot open", log_path.display()))?;
    let err = out
        .try_clone()
        .with_context(|| format!("{}: cannot open", log_path.display()))?;

    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let mut cmd = Command::new(&exe);
    cmd.args(supervise_args_prefix).arg("--state").arg(&state);
    if let Some(dir) = &opts.bin_dir {
        let dir = std::path::absolute(dir)
            .with_context(|| format!("{}: bad --bin-dir", dir.display()))?;
        cmd.arg("--bin-dir").arg(dir);
    }
    if let Some(level) = &opts.log_level {
        cmd.arg("--log-level").arg(level);
    }
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    new_session(&mut cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start the supervisor {}", exe.display()))?;
    let pid = child.id() as i32;
    // Claim the state directory now, so that a second `up` racing this one is refused
    // before the supervisor gets to write the file itself.
    write_atomic(&pid_file(&state), format!("{pid}\n").as_bytes())?;

    let deadline = Instant::now() + wait;
    let mut pending: Vec<&Instance> = manifest.instances.iter().collect();
    loop {
        if let Ok(Some(exit)) = child.try_wait() {
            if read_pid(&state) == Some(pid) {
                let _ = fs::remove_file(pid_file(&state));
            }
            let mut msg = format!(
                "the supervisor (pid {pid}) exited ({}) before every instance was ready",
                describe_exit(exit)
            );
            msg.push_str(&not_ready_report(&state, &pending));
            msg.push_str(&tail_section(&log_path));
            bail!(msg);
        }
        pending.retain(|i| !admin_client::ready(i.admin, Duration::from_millis(500)));
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let mut msg = format!(
                "not ready after {wait:?}: {}; the supervisor (pid {pid}) keeps running and \
                 retrying (`down` stops it)",
                pending
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            msg.push_str(&not_ready_report(&state, &pending));
            bail!(msg);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `vnfctl down`: SIGTERM the supervisor of `state` and wait up to `wait` until it is gone
/// (it stops its instances first). `Ok(false)` if none was running (a stale pid file is
/// removed), `Ok(true)` once it is gone.
pub fn stop(state: &Path, wait: Duration) -> anyhow::Result<bool> {
    let Some(pid) = is_running(state) else {
        remove_stale_pid_file(state);
        return Ok(false);
    };
    send_signal(pid, libc::SIGTERM)
        .with_context(|| format!("cannot signal the supervisor (pid {pid})"))?;
    let deadline = Instant::now() + wait;
    while alive(pid) {
        if Instant::now() >= deadline {
            bail!(
                "the supervisor (pid {pid}) is still running {wait:?} after SIGTERM; see {}",
                supervisor_log(state).display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if read_pid(state) == Some(pid) {
        let _ = fs::remove_file(pid_file(state));
    }
    Ok(true)
}

/// Ask the running supervisor of `state` to re-read the manifest and reconcile (SIGHUP).
pub fn reconcile(state: &Path) -> anyhow::Result<()> {
    let Some(pid) = is_running(state) else {
        bail!("no supervisor is running for {}", state.display());
    };
    send_signal(pid, libc::SIGHUP)
        .with_context(|| format!("cannot signal the supervisor (pid {pid})"))
}

// ---------------------------------------------------------------------------------------
// The supervisor loop
// ---------------------------------------------------------------------------------------

/// What to do once a stopping instance's process is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterStop {
    /// It left the manifest: forget it.
    Remove,
    /// Its spec changed: start it with the new one.
    Start,
    /// The supervisor stops: mark it stopped.
    Stay,
}

/// One instance and its process.
#[derive(Debug)]
struct Slot {
    /// What should run.
    spec: Instance,
    /// Its process, until reaped.
    child: Option<Child>,
    state: State,
    restarts: u32,
    last_exit: Option<String>,
    since: Option<u64>,
    /// When the current process started.
    started_at: Option<Instant>,
    /// The next restart delay.
    backoff: Duration,
    /// When to start again (in `Backoff` or `Failed`).
    restart_at: Option<Instant>,
    /// When to SIGKILL (in `Stopping`, until sent).
    kill_at: Option<Instant>,
    /// What to do when the process is gone (in `Stopping`).
    then: AfterStop,
    /// When to probe `/readyz` next (in `Starting`).
    next_probe: Instant,
    /// Removed from the manifest and stopped: dropped at the end of the tick.
    gone: bool,
    /// Its first start waits for another instance to free its addresses: not a restart.
    deferred: bool,
}

impl Slot {
    fn new(spec: Instance, now: Instant) -> Self {
        Slot {
            spec,
            child: None,
            state: State::Stopped,
            restarts: 0,
            last_exit: None,
            since: None,
            started_at: None,
            backoff: BACKOFF_MIN,
            restart_at: None,
            kill_at: None,
            then: AfterStop::Stay,
            next_probe: now,
            gone: false,
            deferred: false,
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Take the next backoff delay and double the one after.
    fn next_delay(&mut self) -> Duration {
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        delay
    }
}

/// The supervisor's state.
struct Supervisor<'a> {
    opts: &'a Options,
    /// Absolute state directory.
    state: PathBuf,
    /// Absolute plan directory.
    plan: PathBuf,
    tenant: String,
    slots: Vec<Slot>,
    log: Log,
    started: u64,
    /// Something changed since the status was last written.
    dirty: bool,
    last_write: Instant,
    /// A failed status write was logged (to log it once, not every second).
    status_error_logged: bool,
}

impl<'a> Supervisor<'a> {
    fn new(opts: &'a Options, state: PathBuf, plan: PathBuf, manifest: Manifest, log: Log) -> Self {
        let now = Instant::now();
        Supervisor {
            opts,
            state,
            plan,
            tenant: manifest.tenant,
            slots: manifest
                .instances
                .into_iter()
                .map(|i| Slot::new(i, now))
                .collect(),
            log,
            started: unix_now(),
            dirty: true,
            last_write: now,
            status_error_logged: false,
        }
    }

    fn run(&mut self, control: &Control) {
        self.log.say(format_args!(
            "supervisor pid {} started: tenant {}, {} instance(s), plan {}",
            std::process::id(),
            self.tenant,
            self.slots.len(),
            self.plan.display()
        ));
        let now = Instant::now();
        for i in 0..self.slots.len() {
            self.start(i, now);
        }
        self.write_status();
        loop {
            if control.stop.load(Ordering::SeqCst) {
                break;
            }
            if control.reconcile.swap(false, Ordering::SeqCst) {
                self.reconcile(Instant::now());
            }
            let now = Instant::now();
            self.reap(now);
            self.kill_overdue(now);
            self.restart_due(now);
            self.probe(Instant::now());
            if self.dirty || self.last_write.elapsed() >= STATUS_EVERY {
                self.write_status();
            }
            let now = Instant::now();
            std::thread::sleep(self.next_wake(now).saturating_duration_since(now));
        }
        self.shutdown();
    }

    /// Start slot `i`'s process now.
    fn start(&mut self, i: usize, now: Instant) {
        let spawned = spawn_instance(self.opts, &self.state, &self.plan, &self.slots[i].spec);
        let slot = &mut self.slots[i];
        slot.restart_at = None;
        slot.kill_at = None;
        self.dirty = true;
        match spawned {
            Ok((child, bin)) => {
                let pid = child.id();
                slot.child = Some(child);
                slot.state = State::Starting;
                slot.since = Some(unix_now());
                slot.started_at = Some(now);
                slot.next_probe = now;
                let restart = if slot.restarts > 0 {
                    format!(" (restart {})", slot.restarts)
                } else {
                    String::new()
                };
                let line = format!(
                    "{}: started pid {pid}{restart}: {} --config {} --admin {}",
                    slot.spec.name,
                    bin.display(),
                    Manifest::config_path(&self.plan, &slot.spec).display(),
                    slot.spec.admin
                );
                self.log.say(format_args!("{line}"));
            }
            Err(e) => {
                let delay = slot.next_delay();
                slot.state = State::Failed;
                slot.last_exit = Some(format!("cannot start: {e:#}"));
                slot.restart_at = Some(now + delay);
                let line = format!(
                    "{}: cannot start: {e:#}; retrying in {delay:?}",
                    slot.spec.name
                );
                self.log.say(format_args!("{line}"));
            }
        }
    }

    /// SIGTERM slot `i`'s process and decide what happens once it is gone; without a
    /// process, do that now.
    fn begin_stop(&mut self, i: usize, then: AfterStop, now: Instant) {
        let slot = &mut self.slots[i];
        slot.then = then;
        slot.restart_at = None;
        self.dirty = true;
        if slot.state == State::Stopping {
            return;
        }
        match slot.pid() {
            Some(pid) => {
                // The child is not reaped yet, so its pid cannot have been reused.
                let sent = send_signal(pid as i32, libc::SIGTERM);
                slot.state = State::Stopping;
                slot.kill_at = Some(now + STOP_GRACE);
                let line = match sent {
                    Ok(()) => format!("{}: stopping pid {pid} (SIGTERM)", slot.spec.name),
                    Err(e) => format!("{}: cannot SIGTERM pid {pid}: {e}", slot.spec.name),
                };
                self.log.say(format_args!("{line}"));
            }
            None => self.after_stop(i, now),
        }
    }

    /// Slot `i` has no process any more and was stopping: do what was decided.
    fn after_stop(&mut self, i: usize, now: Instant) {
        let slot = &mut self.slots[i];
        slot.kill_at = None;
        slot.restart_at = None;
        self.dirty = true;
        match slot.then {
            AfterStop::Remove => {
                slot.state = State::Stopped;
                slot.gone = true;
                let line = format!("{}: removed", slot.spec.name);
                self.log.say(format_args!("{line}"));
            }
            AfterStop::Start => {
                slot.then = AfterStop::Stay;
                self.start(i, now);
            }
            AfterStop::Stay => slot.state = State::Stopped,
        }
    }

    /// Collect exited children; schedule restarts or finish stops.
    fn reap(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            let Some(child) = slot.child.as_mut() else {
                continue;
            };
            let pid = child.id();
            let exit = match child.try_wait() {
                Ok(Some(exit)) => exit,
                Ok(None) => continue,
                Err(e) => {
                    let line = format!("{}: cannot wait for pid {pid}: {e}", slot.spec.name);
                    self.log.say(format_args!("{line}"));
                    continue;
                }
            };
            slot.child = None;
            let how = describe_exit(exit);
            slot.last_exit = Some(how.clone());
            let ran = slot
                .started_at
                .map(|t| now.saturating_duration_since(t))
                .unwrap_or_default();
            self.dirty = true;
            if slot.state == State::Stopping {
                let line = format!("{}: pid {pid} stopped ({how})", slot.spec.name);
                self.log.say(format_args!("{line}"));
                self.after_stop(i, now);
                continue;
            }
            if ran >= BACKOFF_RESET {
                slot.backoff = BACKOFF_MIN;
            }
            let delay = slot.next_delay();
            slot.state = State::Backoff;
            slot.restart_at = Some(now + delay);
            let line = format!(
                "{}: pid {pid} exited ({how}) after {:.3} s; restarting in {delay:?}",
                slot.spec.name,
                ran.as_secs_f64()
            );
            self.log.say(format_args!("{line}"));
        }
        self.slots.retain(|s| !s.gone);
    }

    /// SIGKILL stopping children whose grace period is over.
    fn kill_overdue(&mut self, now: Instant) {
        for slot in &mut self.slots {
            if slot.state != State::Stopping || slot.kill_at.is_none_or(|t| t > now) {
                continue;
            }
            slot.kill_at = None;
            if let Some(child) = slot.child.as_mut() {
                let pid = child.id();
                let line = match child.kill() {
                    Ok(()) => format!(
                        "{}: pid {pid} still running {STOP_GRACE:?} after SIGTERM: SIGKILL",
                        slot.spec.name
                    ),
                    Err(e) => format!("{}: cannot SIGKILL pid {pid}: {e}", slot.spec.name),
                };
                self.log.say(format_args!("{line}"));
            }
        }
    }

    /// Start instances whose backoff is over.
    fn restart_due(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            if matches!(slot.state, State::Backoff | State::Failed)
                && slot.restart_at.is_some_and(|t| t <= now)
            {
                // A process still holding this instance's underlay or admin address (a
                // removed instance of another name, stopping) must go first.
                if self.holder(i).is_some() {
                    self.slots[i].restart_at = Some(now + TICK);
                    continue;
                }
                let slot = &mut self.slots[i];
                if slot.deferred {
                    slot.deferred = false;
                } else {
                    slot.restarts += 1;
                }
                self.start(i, now);
            }
        }
    }

    /// Another slot whose process still runs on slot `i`'s underlay or admin address.
    fn holder(&self, i: usize) -> Option<usize> {
        let me = &self.slots[i].spec;
        (0..self.slots.len()).find(|&j| {
            let other = &self.slots[j];
            j != i
                && other.child.is_some()
                && (other.spec.host == me.host || other.spec.admin == me.admin)
        })
    }

    /// Probe `/readyz` of starting instances.
    fn probe(&mut self, now: Instant) {
        for slot in &mut self.slots {
            if slot.state != State::Starting || slot.next_probe > now {
                continue;
            }
            if admin_client::ready(slot.spec.admin, PROBE_TIMEOUT) {
                slot.state = State::Running;
                self.dirty = true;
                let after = slot
                    .started_at
                    .map(|t| t.elapsed().as_secs_f64() * 1000.0)
                    .unwrap_or_default();
                let line = format!(
                    "{}: pid {} ready after {after:.0} ms",
                    slot.spec.name,
                    slot.pid().unwrap_or_default()
                );
                self.log.say(format_args!("{line}"));
            } else {
                slot.next_probe = Instant::now() + PROBE_EVERY;
            }
        }
    }

    /// When the loop should look again: the next tick, or earlier if a restart or a
    /// SIGKILL is due.
    fn next_wake(&self, now: Instant) -> Instant {
        self.slots
            .iter()
            .filter_map(|s| s.restart_at.or(s.kill_at))
            .fold(now + TICK, Instant::min)
    }

    /// Re-read the manifest and make the running set match it.
    fn reconcile(&mut self, now: Instant) {
        let manifest = match Manifest::read(&self.plan).and_then(|m| check_manifest(&m).map(|()| m))
        {
            Ok(m) => m,
            Err(e) => {
                self.log.say(format_args!(
                    "reconcile: keeping everything as it runs: {e:#}"
                ));
                return;
            }
        };
        self.log.say(format_args!(
            "reconcile: {} instance(s) in the manifest",
            manifest.instances.len()
        ));
        self.tenant = manifest.tenant.clone();
        self.dirty = true;

        for i in 0..self.slots.len() {
            let name = &self.slots[i].spec.name;
            if !manifest.instances.iter().any(|m| &m.name == name) {
                self.begin_stop(i, AfterStop::Remove, now);
            }
        }
        for wanted in &manifest.instances {
            let Some(i) = self
                .slots
                .iter()
                .position(|s| !s.gone && s.spec.name == wanted.name)
            else {
                self.log.say(format_args!("{}: new", wanted.name));
                self.slots.push(Slot::new(wanted.clone(), now));
                let i = self.slots.len() - 1;
                match self.holder(i) {
                    Some(j) => {
                        let line = format!(
                            "{}: waits for {} (stopping) to free {} / {}",
                            wanted.name, self.slots[j].spec.name, wanted.host, wanted.admin
                        );
                        self.log.say(format_args!("{line}"));
                        let slot = &mut self.slots[i];
                        slot.state = State::Backoff;
                        slot.deferred = true;
                        slot.restart_at = Some(now + TICK);
                    }
                    None => self.start(i, now),
                }
                continue;
            };
            let slot = &mut self.slots[i];
            if slot.spec == *wanted {
                if slot.state == State::Stopping && slot.then == AfterStop::Remove {
                    // Removed and added back before its process was gone.
                    slot.then = AfterStop::Start;
                }
                continue;
            }
            let changes = describe_changes(&slot.spec, wanted);
            slot.spec = wanted.clone();
            slot.restarts = 0;
            slot.backoff = BACKOFF_MIN;
            self.log.say(format_args!(
                "{}: changed ({changes}): restarting",
                wanted.name
            ));
            self.begin_stop(i, AfterStop::Start, now);
        }
        self.slots.retain(|s| !s.gone);
        // Manifest order first, then removed instances still stopping.
        let order = |s: &Slot| {
            manifest
                .instances
                .iter()
                .position(|m| m.name == s.spec.name)
                .unwrap_or(usize::MAX)
        };
        self.slots.sort_by_key(order);
    }

    /// Stop everything: SIGTERM, wait up to [`STOP_GRACE`], SIGKILL, reap.
    fn shutdown(&mut self) {
        let running = self.slots.iter().filter(|s| s.child.is_some()).count();
        self.log.say(format_args!(
            "supervisor stopping: {running} instance(s) running"
        ));
        let now = Instant::now();
        for i in 0..self.slots.len() {
            self.begin_stop(i, AfterStop::Stay, now);
        }
        self.write_status();
        let deadline = now + STOP_GRACE;
        while self.slots.iter().any(|s| s.child.is_some()) && Instant::now() < deadline {
            std::thread::sleep(TICK);
            self.reap(Instant::now());
            if self.dirty {
                self.write_status();
            }
        }
        for slot in &mut self.slots {
            let Some(mut child) = slot.child.take() else {
                continue;
            };
            let pid = child.id();
            let _ = child.kill();
            let how = child
                .wait()
                .map(describe_exit)
                .unwrap_or_else(|e| format!("cannot wait: {e}"));
            slot.last_exit = Some(how.clone());
            let line = format!(
                "{}: pid {pid} still running {STOP_GRACE:?} after SIGTERM: SIGKILL ({how})",
                slot.spec.name
            );
            self.log.say(format_args!("{line}"));
        }
        for slot in &mut self.slots {
            slot.state = State::Stopped;
            slot.restart_at = None;
            slot.kill_at = None;
        }
        self.slots.retain(|s| !s.gone);
        self.write_status();
        self.log.say(format_args!("supervisor stopped"));
    }

    fn status(&self) -> Status {
        Status {
            tenant: self.tenant.clone(),
            supervisor_pid: std::process::id(),
            started: self.started,
            updated: unix_now(),
            instances: self
                .slots
                .iter()
                .map(|s| InstanceStatus {
                    name: s.spec.name.clone(),
                    kind: s.spec.kind,
                    admin: s.spec.admin,
                    pid: s.pid(),
                    state: s.state,
                    restarts: s.restarts,
                    last_exit: s.last_exit.clone(),
                    since: s.since,
                })
                .collect(),
        }
    }

    fn write_status(&mut self) {
        let status = self.status();
        let written = serde_json::to_vec_pretty(&status)
            .map_err(anyhow::Error::from)
            .and_then(|mut json| {
                json.push(b'\n');
                write_atomic(&status_file(&self.state), &json)
            });
        match written {
            Ok(()) => self.status_error_logged = false,
            Err(e) if !self.status_error_logged => {
                self.status_error_logged = true;
                self.log.say(format_args!("cannot write the status: {e:#}"));
            }
            Err(_) => {}
        }
        self.dirty = false;
        self.last_write = Instant::now();
    }
}

/// Start one instance: its binary with its config and admin address, output appended to
/// its log. Returns the child and the binary's path.
fn spawn_instance(
    opts: &Options,
    state: &Path,
    plan: &Path,
    spec: &Instance,
) -> anyhow::Result<(Child, PathBuf)> {
    let bin = find_binary(spec.kind.binary(), opts.bin_dir.as_deref())?;
    let config = Manifest::config_path(plan, spec);
    let log_path = instance_log(state, &spec.name);
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("{}: cannot open", log_path.display()))?;
    let _ = writeln!(
        out,
        "{} vnfctl: starting {} --config {} --admin {}",
        timestamp(),
        bin.display(),
        config.display(),
        spec.admin
    );
    let err = out
        .try_clone()
        .with_context(|| format!("{}: cannot open", log_path.display()))?;
    let mut cmd = Command::new(&bin);
    cmd.arg("--config")
        .arg(&config)
        .arg("--admin")
        .arg(spec.admin.to_string());
    if let Some(level) = &opts.log_level {
        cmd.arg("--log-level").arg(level);
    }
    for (key, _) in std::env::vars_os() {
        if key
            .to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("VNF_")
        {
            cmd.env_remove(key);
        }
    }
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    prepare_child(&mut cmd);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    Ok((child, bin))
}

/// Read and check the manifest and find every binary it needs: what both the supervisor
/// and `up` refuse to start without. Returns the manifest and the absolute plan directory.
fn prepare(opts: &Options, state: &Path) -> anyhow::Result<(Manifest, PathBuf)> {
    let plan = plan_dir(state);
    let manifest = Manifest::read(&plan)?;
    check_manifest(&manifest)?;
    let mut kinds: Vec<Kind> = manifest.instances.iter().map(|i| i.kind).collect();
    kinds.sort();
    kinds.dedup();
    for kind in kinds {
        find_binary(kind.binary(), opts.bin_dir.as_deref())?;
    }
    Ok((manifest, plan))
}

/// Names and admin addresses are unique.
fn check_manifest(manifest: &Manifest) -> anyhow::Result<()> {
    for (i, a) in manifest.instances.iter().enumerate() {
        if a.name.is_empty() {
            bail!("an instance has an empty name");
        }
        for b in &manifest.instances[i + 1..] {
            if a.name == b.name {
                bail!("instance `{}` is in the manifest twice", a.name);
            }
            if a.admin == b.admin {
                bail!(
                    "instances `{}` and `{}` share admin address {}",
                    a.name,
                    b.name,
                    a.admin
                );
            }
        }
    }
    Ok(())
}

/// What differs between two specs of one instance, for the log.
fn describe_changes(old: &Instance, new: &Instance) -> String {
    let mut changes = Vec::new();
    if old.kind != new.kind {
        changes.push(format!("kind {} -> {}", old.kind.name(), new.kind.name()));
    }
    if old.admin != new.admin {
        changes.push(format!("admin {} -> {}", old.admin, new.admin));
    }
    if old.config != new.config {
        changes.push(format!("config {} -> {}", old.config, new.config));
    }
    if old.host != new.host {
        changes.push(format!("host {} -> {}", old.host, new.host));
    }
    changes.join(", ")
}

/// `exit 1`, `signal 9`, `signal 6 (core dumped)`.
fn describe_exit(exit: ExitStatus) -> String {
    if let Some(sig) = exit.signal() {
        if exit.core_dumped() {
            format!("signal {sig} (core dumped)")
        } else {
            format!("signal {sig}")
        }
    } else if let Some(code) = exit.code() {
        format!("exit {code}")
    } else {
        exit.to_string()
    }
}

/// For an error message: each instance not ready with its status and its log's tail.
fn not_ready_report(state: &Path, pending: &[&Instance]) -> String {
    let status = read_status(state).ok();
    let mut out = String::new();
    for inst in pending {
        out.push_str(&format!(
            "\n\n{} ({}, admin {})",
            inst.name,
            inst.kind.binary(),
            inst.admin
        ));
        if let Some(s) = status
            .as_ref()
            .and_then(|s| s.instances.iter().find(|s| s.name == inst.name))
        {
            out.push_str(&format!(": {}, {} restart(s)", s.state, s.restarts));
            if let Some(last) = &s.last_exit {
                out.push_str(&format!(", last exit: {last}"));
            }
        }
        out.push_str(&tail_section(&instance_log(state, &inst.name)));
    }
    out
}

/// `\n  last lines of FILE:\n    ...`, or a note that there is no such log.
fn tail_section(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
            let mut out = format!("\n  last {} line(s) of {}:", tail.len(), path.display());
            for line in tail {
                out.push_str("\n    ");
                out.push_str(line);
            }
            out
        }
        Err(e) => format!("\n  {}: {e}", path.display()),
    }
}

// ---------------------------------------------------------------------------------------
// Processes, signals and files
// ---------------------------------------------------------------------------------------

/// The process-wide requests [`run_foreground`]'s signal handlers set.
static SIGNALS: Control = Control::new();

/// SIGTERM and SIGINT ask to stop, SIGHUP to reconcile. Only stores to atomics, which
/// is async-signal-safe.
extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGHUP {
        SIGNALS.reconcile.store(true, Ordering::SeqCst);
    } else {
        SIGNALS.stop.store(true, Ordering::SeqCst);
    }
}

/// Our handlers, installed; the previous ones come back on drop.
struct SignalHandlers {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl SignalHandlers {
    const SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

    fn install() -> anyhow::Result<Self> {
        let mut handlers = SignalHandlers {
            previous: Vec::new(),
        };
        for sig in Self::SIGNALS {
            // SAFETY: `sigaction` is plain old data for which all zeroes is valid (no
            // handler, empty flags); the fields we need are set below.
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            // SAFETY: `sa_mask` is a valid, writable sigset_t owned by `action`.
            unsafe { libc::sigemptyset(&mut action.sa_mask) };
            // SAFETY: as above, all zeroes is a valid `sigaction` to receive the old one.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: both pointers are to valid `sigaction`s that live across the call;
            // the handler only stores to atomics, which is async-signal-safe.
            if unsafe { libc::sigaction(sig, &action, &mut old) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("cannot install a handler for signal {sig}"));
            }
            handlers.previous.push((sig, old));
        }
        Ok(handlers)
    }
}

impl Drop for SignalHandlers {
    fn drop(&mut self) {
        for (sig, old) in &self.previous {
            // SAFETY: `old` is the action `sigaction` gave us for this signal.
            unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
        }
    }
}

/// Set up an instance's process between fork and exec: the signals the supervisor uses
/// get their default action (an *ignored* SIGTERM or SIGINT, say from a launch with `&`
/// by a non-interactive shell, would survive exec), and on Linux the child gets SIGTERM
/// when the supervisor (the spawning thread) dies.
fn prepare_child(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only calls signal(2),
    // prctl(2) and getppid(2), which are async-signal-safe, and builds an io::Error from
    // an errno (no allocation). If the supervisor died between fork and prctl, the death
    // signal would never come: then the parent pid differs, and we refuse to exec.
    unsafe {
        cmd.pre_exec(move || {
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::signal(sig, libc::SIG_DFL);
            }
            #[cfg(target_os = "linux")]
            {
                let death_signal = libc::SIGTERM as libc::c_ulong;
                if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal, 0, 0, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
            }
            Ok(())
        });
    }
}

/// Run the child in a new session: no controlling terminal, its own process group.
fn new_session(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls setsid(2),
    // which is async-signal-safe, and builds an io::Error from an errno (no allocation).
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Send `sig` to process `pid` (never to a group: `pid` must be positive).
fn send_signal(pid: i32, sig: libc::c_int) -> std::io::Result<()> {
    if pid <= 0 {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: kill(2) with a positive pid signals exactly that process; no memory is
    // involved.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !is_zombie(pid)
}

/// Whether `/proc/PID/stat` says the process has exited and waits to be reaped (a
/// supervisor that is our own child, as in tests, stays a zombie until we exit).
fn is_zombie(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `PID (COMM) STATE ...`; COMM may contain spaces and parentheses.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_ascii_whitespace().next())
        .is_some_and(|state| state == "Z" || state == "X")
}

/// The pid in `STATE/supervisor.pid`, if it holds one.
fn read_pid(state: &Path) -> Option<i32> {
    fs::read_to_string(pid_file(state))
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&pid: &i32| pid > 0)
}

/// Remove the pid file if the process it names is gone.
fn remove_stale_pid_file(state: &Path) {
    let file = pid_file(state);
    if file.exists() && is_running(state).is_none() {
        let _ = fs::remove_file(file);
    }
}

/// Write our pid to the pid file, unless another live supervisor holds it.
fn claim_pid_file(state: &Path) -> anyhow::Result<()> {
    let me = std::process::id() as i32;
    if let Some(pid) = read_pid(state)
        && pid != me
        && alive(pid)
    {
        bail!(
            "a supervisor for {} is already running (pid {pid})",
            state.display()
        );
    }
    write_atomic(&pid_file(state), format!("{me}\n").as_bytes())
}

/// Remove the pid file if it names us.
fn release_pid_file(state: &Path) {
    if read_pid(state) == Some(std::process::id() as i32) {
        let _ = fs::remove_file(pid_file(state));
    }
}

/// Replace `path` with `bytes`: write `.NAME.tmp` beside it, then rename over it, so a
/// reader sees the old file or the new one and never half of one.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&tmp, bytes).with_context(|| format!("{}: cannot write", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("{}: cannot replace", path.display()))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The supervisor's log: `logs/supervisor.log`, and stderr too when that is a terminal
/// (when detached, stderr already is the log).
#[derive(Debug)]
struct Log {
    file: Option<File>,
    echo: bool,
}

impl Clone for Log {
    fn clone(&self) -> Self {
        Log {
            file: self.file.as_ref().and_then(|f| f.try_clone().ok()),
            echo: self.echo,
        }
    }
}

impl Log {
    fn open(state: &Path) -> Self {
        Log {
            file: OpenOptions::new()
                .create(true)
                .append(true)
                .open(supervisor_log(state))
                .ok(),
            echo: std::io::stderr().is_terminal(),
        }
    }

    /// One timestamped line. A log that cannot be written must not stop the supervisor.
    fn say(&mut self, msg: fmt::Arguments<'_>) {
        let line = format!("{} {msg}\n", timestamp());
        if let Some(file) = &mut self.file {
            let _ = file.write_all(line.as_bytes());
        }
        if self.echo {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Now as RFC 3339 UTC with milliseconds: `2026-01-02T03:04:05.678Z`.
fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn log_names_stay_in_the_log_directory() {
        let state = Path::new("/s");
        assert_eq!(instance_log(state, "r1"), Path::new("/s/logs/r1.log"));
        assert_eq!(
            instance_log(state, "../x/y"),
            Path::new("/s/logs/_.._x_y.log")
        );
        assert_eq!(instance_log(state, ""), Path::new("/s/logs/_.log"));
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let spec = Instance {
            name: "a".into(),
            kind: Kind::Router,
            host: std::net::Ipv4Addr::LOCALHOST,
            admin: SocketAddr::from(([127, 0, 0, 1], 1)),
            config: "a.yaml".into(),
        };
        let mut slot = Slot::new(spec, Instant::now());
        let delays: Vec<u128> = (0..8).map(|_| slot.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    #[test]
    fn no_signal_to_groups() {
        assert!(send_signal(0, 0).is_err());
        assert!(send_signal(-1, 0).is_err());
        assert!(!alive(0));
        assert!(alive(std::process::id() as i32));
    }
}
