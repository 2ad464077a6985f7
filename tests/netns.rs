//! Network namespaces for interop tests, torn down even when a test fails.
//!
//! Safety rules (see README): traffic only inside namespaces a test created; names unique
//! per process; no address or route is ever added in the root namespace; underlay
//! addresses from 198.18.0.0/15.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Whether the test can run: root is needed for namespaces. Prints why it is skipped.
pub fn have_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!(
            "skipped: {test}: needs root (CAP_NET_ADMIN) for network namespaces; CI runs it as root"
        );
    }
    root
}

/// Whether a program is installed; prints why the test cannot run if not. Under CI
/// (`CI` set) a missing tool is a failure, not a skip: `.ci/run` installs them all.
pub fn have_tool(test: &str, tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: `{tool}` is missing; .ci/run must install it"
        );
        eprintln!("skipped: {test}: `{tool}` is not installed");
    }
    found
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, at most 15 bytes with a 3-byte prefix.
pub fn unique(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let s = format!("{prefix}{}{n:x}", std::process::id() % 100_000);
    s.chars().take(15).collect()
}

/// Run a command; panic with its output if it fails.
pub fn run(cmd: &str) -> String {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a command through `sh -c`, whatever its outcome.
pub fn sh(cmd: &str) -> Output {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{cmd}`: {e}"))
}

/// A network namespace, deleted (with its interfaces) on drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name.
    pub name: String,
}

impl Netns {
    /// Create a namespace with loopback up.
    pub fn new(prefix: &str) -> Netns {
        let name = unique(prefix);
        run(&format!("ip netns add {name}"));
        let ns = Netns { name };
        ns.run("ip link set lo up");
        ns
    }

    /// The prefix to run a command inside.
    pub fn exec(&self) -> String {
        format!("ip netns exec {} ", self.name)
    }

    /// Run a command inside; panic if it fails.
    pub fn run(&self, cmd: &str) -> String {
        run(&format!("ip netns exec {} {cmd}", self.name))
    }

    /// Run a command inside, whatever its outcome.
    pub fn sh(&self, cmd: &str) -> Output {
        sh(&format!(
            "ip netns exec {} sh -c '{}'",
            self.name,
            cmd.replace('\'', r"'\''")
        ))
    }

    /// Start a long-running command inside; it is killed when the guard drops.
    pub fn spawn(&self, cmd: &str) -> Proc {
        self.spawn_logged(cmd, None)
    }

    /// Like [`spawn`](Self::spawn), with stdout and stderr appended to `log`.
    pub fn spawn_logged(&self, cmd: &str, log: Option<&std::path::Path>) -> Proc {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.name,
            "sh",
            "-c",
            &format!("exec {cmd}"),
        ]);
        match log {
            Some(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("log file");
                let g = f.try_clone().expect("log file");
                c.stdout(f).stderr(g);
            }
            None => {
                c.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        Proc(Some(
            c.spawn()
                .unwrap_or_else(|e| panic!("cannot start `{cmd}`: {e}")),
        ))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes left inside keep a namespace alive but unnamed; kill them first.
        let _ = sh(&format!("ip netns pids {} | xargs -r kill -9", self.name));
        let _ = sh(&format!("ip netns del {}", self.name));
    }
}

/// A child process, killed and reaped on drop.
#[derive(Debug)]
pub struct Proc(pub Option<Child>);

impl Proc {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Send a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Wait for it to exit, up to `timeout`; its exit code if it did.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(c) = self.0.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Connect two namespaces with a veth pair and bring both ends up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    let tmp = unique("vt");
    run(&format!("ip link add {tmp} type veth peer name {tmp}p"));
    run(&format!("ip link set {tmp} netns {} name {a_if}", a.name));
    run(&format!("ip link set {tmp}p netns {} name {b_if}", b.name));
    a.run(&format!("ip link set {a_if} up"));
    b.run(&format!("ip link set {b_if} up"));
}

/// A workspace binary (`target/<profile>/<name>`), built by `cargo build` before the tests.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, as scripts/test does)",
        p.display()
    );
    p
}

/// Poll `f` until it returns true or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A temporary directory for logs and configs, kept (and its path printed) on failure.
pub fn workdir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vnf-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("work dir");
    d
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Hold while a test runs traffic: interop tests in one binary run one at a time, so
/// iperf3 and friends do not compete for this machine's two cores.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
