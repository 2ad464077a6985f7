//! The supervisor behind `vnfctl up | down`, with real `vnf-router` instances on loopback.
//!
//! No root needed: each router gets a loopback underlay address (127.0.0.211-.219) and an
//! admin port (9911-9919) of its own, VNI ports only. The binary is built on first use
//! (`cargo build -p vnf-router --bin vnf-router`).
//!
//! Most tests run the supervisor loop in a thread ([`run_foreground_until`]) and drive it
//! with a [`Control`]. The detached tests need a supervisor *process* that handles signals:
//! they start this test binary itself as `--exact supervisor_entry -- supervise --state ..`,
//! which runs [`supervisor_entry`] and in it [`run_foreground`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod common;

use chains::admin_client;
use chains::manifest::{Instance, Kind, MANIFEST, Manifest};
use chains::supervise::{
    Control, InstanceStatus, Options, State, Status, find_binary, instance_log, is_running,
    pid_file, read_status, reconcile, run_foreground, run_foreground_until, start_detached, stop,
    supervisor_log,
};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The real `vnf-router`.
fn router_bin() -> PathBuf {
    common::vnf_bin_dir().join("vnf-router")
}

/// A directory with `vnf-router` (a link to the real one) and nothing else.
fn bin_dir(tmp: &Path) -> PathBuf {
    let dir = tmp.join("bin");
    std::fs::create_dir_all(&dir).expect("bin dir");
    std::os::unix::fs::symlink(router_bin(), dir.join("vnf-router")).expect("link vnf-router");
    dir
}

/// A router instance `name` with underlay 127.0.0.`octet` and admin port `port`.
fn router(name: &str, octet: u8, port: u16) -> Instance {
    Instance {
        name: name.into(),
        kind: Kind::Router,
        host: [127, 0, 0, octet].into(),
        admin: SocketAddr::from(([127, 0, 0, octet], port)),
        config: format!("{name}.yaml"),
    }
}

/// Write `STATE/plan`: the manifest and a minimal router config for each instance.
fn write_plan(state: &Path, instances: &[Instance]) {
    let plan = state.join("plan");
    std::fs::create_dir_all(&plan).expect("plan dir");
    for i in instances {
        let config = format!(
            "underlay: {{address: {}}}\nports: [{{name: a, vni: 100, flood: [127.0.0.210]}}]\n",
            i.host
        );
        std::fs::write(plan.join(&i.config), config).expect("config");
    }
    let manifest = Manifest {
        tenant: "acme".into(),
        instances: instances.to_vec(),
    };
    std::fs::write(plan.join(MANIFEST), manifest.to_yaml()).expect("manifest");
}

/// A supervisor loop in a thread; stopped (and joined) on drop.
struct Supervisor {
    control: Arc<Control>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Supervisor {
    fn start(opts: Options) -> Self {
        let control = Arc::new(Control::new());
        let c = control.clone();
        let thread = std::thread::spawn(move || run_foreground_until(&opts, &c));
        Supervisor {
            control,
            thread: Some(thread),
        }
    }

    fn reconcile(&self) {
        self.control.reconcile.store(true, Ordering::SeqCst);
    }

    fn stop(mut self) -> anyhow::Result<()> {
        self.control.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("supervisor thread panicked")
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.control.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Poll `f` every 2 ms until it returns `Some`, for at most `limit`.
fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The status of instance `name`, if the status file has it.
fn instance(state: &Path, name: &str) -> Option<InstanceStatus> {
    read_status(state)
        .ok()?
        .instances
        .into_iter()
        .find(|i| i.name == name)
}

/// Wait until `name` is `running` with a pid (other than `not`) and ready; its status.
fn wait_running(state: &Path, name: &str, not: Option<u32>) -> InstanceStatus {
    wait_for(Duration::from_secs(20), &format!("{name} running"), || {
        instance(state, name).filter(|i| {
            i.state == State::Running
                && i.pid.is_some()
                && i.pid != not
                && admin_client::ready(i.admin, Duration::from_millis(500))
        })
    })
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

fn sigkill(pid: u32) {
    assert!(pid > 0);
    // SAFETY: kill(2) on a positive pid (of a child of the supervisor under test).
    let rc = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill {pid}");
}

fn log_of(state: &Path) -> String {
    std::fs::read_to_string(supervisor_log(state)).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// In-process supervisor loop
// ---------------------------------------------------------------------------------------

/// SIGKILL an instance: it is restarted with a new pid after the backoff (100 ms, then
/// 200 ms), counted, and ready again. Prints the time from kill to ready.
#[test]
fn killed_instance_is_restarted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    write_plan(&state, &[router("r1", 211, 9911)]);
    let sup = Supervisor::start(Options {
        state: state.clone(),
        bin_dir: Some(bin_dir(tmp.path())),
        log_level: None,
    });
    let first = wait_running(&state, "r1", None);
    assert_eq!(first.restarts, 0);
    assert!(first.since.is_some());
    let admin = first.admin;

    let mut pid = first.pid.expect("pid");
    for (n, backoff) in [(1, 100), (2, 200)] {
        let t0 = Instant::now();
        sigkill(pid);
        let new_pid = wait_for(Duration::from_secs(10), "a new pid", || {
            instance(&state, "r1")?.pid.filter(|&p| p != pid)
        });
        let spawned = t0.elapsed();
        wait_for(Duration::from_secs(10), "ready again", || {
            admin_client::ready(admin, Duration::from_millis(200)).then_some(())
        });
        let ready = t0.elapsed();
        println!(
            "restart {n} (backoff {backoff} ms): new pid after {:.1} ms, ready after {:.1} ms",
            spawned.as_secs_f64() * 1e3,
            ready.as_secs_f64() * 1e3
        );
        assert!(
            spawned >= Duration::from_millis(backoff),
            "restarted before its backoff: {spawned:?}"
        );
        assert!(
            ready < Duration::from_millis(backoff + 1000),
            "restart too slow: {ready:?}"
        );
        let st = wait_running(&state, "r1", Some(pid));
        assert_eq!(st.pid, Some(new_pid));
        assert_eq!(st.restarts, n);
        assert_eq!(st.last_exit.as_deref(), Some("signal 9"));
        pid = new_pid;
    }

    sup.stop().expect("supervisor");
    assert!(!alive(pid), "r1 (pid {pid}) still running after stop");
    let log = log_of(&state);
    assert!(
        log.contains("r1: pid") && log.contains("exited (signal 9)"),
        "{log}"
    );
    assert!(log.contains("restarting in 100ms"), "{log}");
    assert!(log.contains("restarting in 200ms"), "{log}");
    let r1_log = std::fs::read_to_string(instance_log(&state, "r1")).expect("r1 log");
    assert_eq!(r1_log.matches("vnfctl: starting").count(), 3, "{r1_log}");
    assert!(r1_log.contains("admin HTTP listening"), "{r1_log}");
}

/// Reconcile: a new instance starts; a config file whose content changed restarts
/// nothing; a changed admin address restarts; a removed instance stops.
#[test]
fn reconcile_starts_restarts_and_stops() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    let r1 = router("r1", 212, 9912);
    let r2 = router("r2", 213, 9913);
    write_plan(&state, std::slice::from_ref(&r1));
    let sup = Supervisor::start(Options {
        state: state.clone(),
        bin_dir: Some(bin_dir(tmp.path())),
        log_level: Some("debug".into()),
    });
    let r1_pid = wait_running(&state, "r1", None).pid;

    // Add r2 and change r1's config content (a second port): r2 starts, r1 stays.
    write_plan(&state, &[r1.clone(), r2.clone()]);
    std::fs::write(
        state.join("plan/r1.yaml"),
        "underlay: {address: 127.0.0.212}\nports: [{name: a, vni: 100, flood: [127.0.0.210]}, \
         {name: b, vni: 200, flood: [127.0.0.210]}]\n",
    )
    .expect("config");
    sup.reconcile();
    let r2_status = wait_running(&state, "r2", None);
    assert_eq!(
        instance(&state, "r1").expect("r1").pid,
        r1_pid,
        "r1 restarted"
    );
    let names: Vec<String> = read_status(&state)
        .expect("status")
        .instances
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["r1", "r2"]);

    // Move r1's admin endpoint: it is restarted there, as a new instance (restarts 0).
    let mut r1_moved = r1.clone();
    r1_moved.admin = SocketAddr::from(([127, 0, 0, 212], 9914));
    write_plan(&state, &[r1_moved.clone(), r2.clone()]);
    sup.reconcile();
    let moved = wait_running(&state, "r1", r1_pid);
    assert_eq!(moved.admin, r1_moved.admin);
    assert_eq!(moved.restarts, 0);
    assert!(!admin_client::ready(r1.admin, Duration::from_millis(200)));
    assert!(!alive(r1_pid.expect("pid")), "old r1 still running");

    // Remove r2: it stops and leaves the status.
    write_plan(&state, std::slice::from_ref(&r1_moved));
    sup.reconcile();
    let r2_pid = r2_status.pid.expect("pid");
    wait_for(Duration::from_secs(10), "r2 stopped", || {
        (!alive(r2_pid) && instance(&state, "r2").is_none()).then_some(())
    });
    assert!(!admin_client::ready(r2.admin, Duration::from_millis(200)));
    assert_eq!(instance(&state, "r1").expect("r1").pid, moved.pid);

    // A broken manifest changes nothing.
    std::fs::write(state.join("plan").join(MANIFEST), "tenant: [").expect("manifest");
    sup.reconcile();
    wait_for(Duration::from_secs(5), "reconcile refused", || {
        log_of(&state)
            .contains("keeping everything as it runs")
            .then_some(())
    });
    assert_eq!(instance(&state, "r1").expect("r1").pid, moved.pid);

    sup.stop().expect("supervisor");
    let log = log_of(&state);
    assert!(log.contains("r2: new"), "{log}");
    assert!(
        log.contains("r1: changed (admin 127.0.0.212:9912 -> 127.0.0.212:9914)"),
        "{log}"
    );
    assert!(log.contains("r2: removed"), "{log}");
}

/// Stop: every child gets SIGTERM and is gone, the final status says stopped, the pid
/// file is removed.
#[test]
fn stop_stops_every_instance() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    write_plan(&state, &[router("a", 215, 9915), router("b", 216, 9916)]);
    let sup = Supervisor::start(Options {
        state: state.clone(),
        bin_dir: Some(bin_dir(tmp.path())),
        log_level: None,
    });
    let pids: Vec<u32> = ["a", "b"]
        .iter()
        .map(|n| wait_running(&state, n, None).pid.expect("pid"))
        .collect();
    assert_eq!(
        std::fs::read_to_string(pid_file(&state))
            .expect("pid file")
            .trim(),
        std::process::id().to_string()
    );
    let status: Status = read_status(&state).expect("status");
    assert_eq!(status.supervisor_pid, std::process::id());
    assert_eq!(status.tenant, "acme");

    let t0 = Instant::now();
    sup.stop().expect("supervisor");
    println!("stopped 2 instances in {:?}", t0.elapsed());
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "stop took {:?}",
        t0.elapsed()
    );
    for pid in pids {
        assert!(!alive(pid), "pid {pid} still running after stop");
    }
    let status = read_status(&state).expect("status");
    for i in &status.instances {
        assert_eq!((i.state, i.pid), (State::Stopped, None), "{i:?}");
        // The routers stop cleanly on SIGTERM.
        assert_eq!(i.last_exit.as_deref(), Some("exit 0"), "{i:?}");
    }
    assert!(!pid_file(&state).exists(), "pid file left behind");
    assert!(log_of(&state).contains("supervisor stopped"));
}

/// A missing binary is an error naming it and where it was looked for, before anything
/// starts.
#[test]
fn missing_binary_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    let empty = tmp.path().join("empty-bin");
    std::fs::create_dir_all(&empty).expect("dir");
    write_plan(&state, &[router("r", 219, 9919)]);
    let opts = Options {
        state: state.clone(),
        bin_dir: Some(empty.clone()),
        log_level: None,
    };

    let err = format!(
        "{:#}",
        run_foreground_until(&opts, &Control::new()).expect_err("no binary")
    );
    println!("{err}");
    assert!(err.contains("`vnf-router` not found"), "{err}");
    assert!(err.contains(&empty.display().to_string()), "{err}");
    assert!(!pid_file(&state).exists());
    assert!(log_of(&state).contains("supervisor failed"));

    let err = format!(
        "{:#}",
        start_detached(&opts, &["supervise".into()], Duration::from_secs(1))
            .expect_err("no binary")
    );
    assert!(err.contains("`vnf-router` not found"), "{err}");
    assert!(is_running(&state).is_none());

    let err = format!(
        "{:#}",
        find_binary("vnf-no-such-thing", None).expect_err("missing")
    );
    println!("{err}");
    assert!(
        err.contains("next to this program") && err.contains("$PATH"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Detached supervisor process
// ---------------------------------------------------------------------------------------

/// How [`start_detached`] calls this test binary to run [`supervisor_entry`].
fn entry_prefix() -> Vec<String> {
    [
        "--exact",
        "supervisor_entry",
        "--nocapture",
        "--test-threads=1",
        "--",
        "supervise",
    ]
    .map(String::from)
    .to_vec()
}

/// Not a test: the supervisor process of the detached tests, started as
/// `THIS_BINARY --exact supervisor_entry ... -- supervise --state S [--bin-dir D]`.
/// In a normal test run it finds no `supervise` argument and does nothing.
#[test]
fn supervisor_entry() {
    let args: Vec<String> = std::env::args().collect();
    let Some(at) = args.iter().position(|a| a == "supervise") else {
        return;
    };
    let mut opts = Options::default();
    let mut rest = args[at + 1..].iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().expect("flag value");
        match flag.as_str() {
            "--state" => opts.state = value.into(),
            "--bin-dir" => opts.bin_dir = Some(value.into()),
            "--log-level" => opts.log_level = Some(value.clone()),
            other => panic!("unknown argument {other}"),
        }
    }
    run_foreground(&opts).expect("supervisor");
}

/// `up` (with a stale pid file), a refused second `up`, reconcile by SIGHUP, `down`.
#[test]
fn detached_up_reconcile_down() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    write_plan(&state, &[router("u1", 217, 9917)]);
    let opts = Options {
        state: state.clone(),
        bin_dir: Some(bin_dir(tmp.path())),
        log_level: None,
    };

    // A stale pid file: a process that has exited.
    let mut dead = Command::new("true").spawn().expect("true");
    let dead_pid = dead.id();
    dead.wait().expect("wait");
    std::fs::write(pid_file(&state), format!("{dead_pid}\n")).expect("pid file");
    assert_eq!(is_running(&state), None);

    let t0 = Instant::now();
    start_detached(&opts, &entry_prefix(), Duration::from_secs(20)).expect("up");
    println!("up: ready after {:?}", t0.elapsed());
    let sup = is_running(&state).expect("supervisor running");
    assert_ne!(sup as u32, std::process::id());
    assert!(admin_client::ready(
        SocketAddr::from(([127, 0, 0, 217], 9917)),
        Duration::from_secs(1)
    ));
    let err = format!(
        "{:#}",
        start_detached(&opts, &entry_prefix(), Duration::from_secs(5)).expect_err("second up")
    );
    assert!(err.contains("already running"), "{err}");

    write_plan(&state, &[router("u1", 217, 9917), router("u2", 218, 9918)]);
    reconcile(&state).expect("reconcile");
    let u1 = wait_running(&state, "u1", None).pid.expect("pid");
    let u2 = wait_running(&state, "u2", None).pid.expect("pid");

    let t0 = Instant::now();
    assert!(stop(&state, Duration::from_secs(10)).expect("down"));
    println!("down: gone after {:?}", t0.elapsed());
    assert!(!alive(u1) && !alive(u2), "instances left running");
    assert_eq!(is_running(&state), None);
    assert!(!pid_file(&state).exists());
    let status = read_status(&state).expect("status");
    assert!(status.instances.iter().all(|i| i.state == State::Stopped));
    assert!(!stop(&state, Duration::from_secs(1)).expect("second down"));
    assert!(reconcile(&state).is_err());
}

/// `up` with a config the router refuses: the error names the instance, its state and
/// the tail of its log; `down` then stops the supervisor that keeps retrying.
#[test]
fn detached_up_reports_instances_not_ready() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    write_plan(&state, &[router("bad", 219, 9919)]);
    std::fs::write(
        state.join("plan/bad.yaml"),
        "underlay: {address: 127.0.0.219}\nportz: []\n",
    )
    .expect("config");
    let opts = Options {
        state: state.clone(),
        bin_dir: Some(bin_dir(tmp.path())),
        log_level: None,
    };
    let err = format!(
        "{:#}",
        start_detached(&opts, &entry_prefix(), Duration::from_secs(2)).expect_err("not ready")
    );
    println!("{err}");
    assert!(err.contains("not ready after 2s: bad"), "{err}");
    assert!(err.contains("exit 1"), "{err}");
    assert!(err.contains("last ") && err.contains("bad.log"), "{err}");
    assert!(err.contains("portz"), "{err}");
    assert!(
        is_running(&state).is_some(),
        "the supervisor keeps retrying"
    );
    assert!(stop(&state, Duration::from_secs(10)).expect("down"));
}
