//! Network namespaces for interop tests, torn down even when a test fails.
//!
//! Safety rules (see README): traffic only inside namespaces a test created; names unique
//! per process; no address or route is ever added in the root namespace; underlay
//! addresses from 198.18.0.0/15.

use std::path::{Path, PathBuf};
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

/// Write a sysctl inside a namespace (through /proc, which shows the namespace's values).
pub fn sysctl(ns: &Netns, key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    ns.run(&format!("sh -c 'echo {value} > {path}'"));
}

/// Turn IPv6 off in a namespace (for interfaces created later too), if the kernel has it.
pub fn quiet_ipv6(ns: &Netns) {
    for k in ["all", "default"] {
        let _ = ns.sh(&format!(
            "echo 1 > /proc/sys/net/ipv6/conf/{k}/disable_ipv6"
        ));
    }
}

/// The MAC address of an interface inside a namespace, lowercase `aa:bb:..`.
pub fn mac_of(ns: &Netns, iface: &str) -> String {
    let out = ns.run(&format!("ip -o link show {iface}"));
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in `{out}`"))
        .to_ascii_lowercase()
}

/// The value of the sample `key` (`name{labels}`) in Prometheus text, if present.
pub fn prom(text: &str, key: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// A test's work directory (configs, logs, pcaps): removed when the test passes, kept and
/// named when it fails.
#[derive(Debug)]
pub struct WorkDir(PathBuf);

impl WorkDir {
    /// Create (afresh) the work directory for `name`, see [`workdir`].
    pub fn new(name: &str) -> WorkDir {
        WorkDir(workdir(name))
    }
}

impl std::ops::Deref for WorkDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("work dir kept: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The underlay's address family: nodes are 198.18.0.`n`/24 or 2001:db8::`n`/64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4, 198.18.0.0/24.
    V4,
    /// IPv6, 2001:db8::/64 (the documentation prefix, inside the namespaces only).
    V6,
}

impl Family {
    /// Underlay node `n`'s address.
    pub fn addr(self, n: u8) -> String {
        match self {
            Family::V4 => format!("198.18.0.{n}"),
            Family::V6 => format!("2001:db8::{n}"),
        }
    }

    /// Bytes of VXLAN encapsulation around an inner IP packet: outer IP header, UDP,
    /// VXLAN and the inner Ethernet header.
    pub fn overhead(self) -> u32 {
        match self {
            Family::V4 => 20 + 8 + 8 + 14,
            Family::V6 => 40 + 8 + 8 + 14,
        }
    }
}

/// The underlay switch: a namespace with a Linux bridge `br0`, and the address family of
/// the nodes attached to it.
#[derive(Debug)]
pub struct Switch {
    /// The switch's namespace.
    pub ns: Netns,
    /// The address family of the underlay.
    pub family: Family,
}

impl std::ops::Deref for Switch {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.ns
    }
}

/// A new underlay switch for nodes of `family`, IPv6-free itself.
pub fn underlay_switch(family: Family) -> Switch {
    let sw = Netns::new("uls");
    quiet_ipv6(&sw);
    sw.run("ip link add br0 type bridge");
    if family == Family::V6 {
        // No MLD querier on this switch: neighbour discovery's multicast must simply flood.
        sw.run("ip link set br0 type bridge mcast_snooping 0");
    }
    sw.run("ip link set br0 up");
    Switch { ns: sw, family }
}

/// A namespace on the underlay as node `n` (198.18.0.`n` or 2001:db8::`n`), on its interface
/// `ul0`. Over IPv6 only `ul0` gets IPv6 back, and its address skips duplicate address
/// detection (`nodad`) so that it is usable at once; `vx0` and the rest stay IPv6-free.
pub fn underlay_node(sw: &Switch, prefix: &str, n: u8) -> Netns {
    let ns = Netns::new(prefix);
    quiet_ipv6(&ns);
    let port = format!("p{n}");
    veth(&ns, "ul0", sw, &port);
    sw.run(&format!("ip link set {port} master br0"));
    match sw.family {
        Family::V4 => {
            ns.run(&format!("ip addr add 198.18.0.{n}/24 dev ul0"));
        }
        Family::V6 => {
            for iface in ["lo", "ul0"] {
                sysctl(&ns, &format!("net.ipv6.conf.{iface}.disable_ipv6"), "0");
            }
            ns.run(&format!("ip -6 addr add 2001:db8::{n}/64 dev ul0 nodad"));
        }
    }
    ns
}

/// A hypervisor as underlay node `n`: a kernel `vxlan` device `vx0` on `vni` with overlay
/// address 10.0.0.`n`/24 and MTU 1500 less the VXLAN overhead of the underlay's family,
/// flooding (head-end replication) to underlay node `f` for each `f`, with learning off and
/// transmit checksum offload off on `ul0`. The outer UDP checksum settings stay the
/// kernel's defaults: over IPv6 it sends and requires checksums.
pub fn hypervisor(sw: &Switch, n: u8, vni: u32, flood: &[u8]) -> Netns {
    let hv = underlay_node(sw, "ulh", n);
    hv.run("ethtool -K ul0 tx off");
    hv.run(&format!(
        "ip link add vx0 type vxlan id {vni} local {} dstport 4789 nolearning",
        sw.family.addr(n)
    ));
    for f in flood {
        hv.run(&format!(
            "bridge fdb append 00:00:00:00:00:00 dev vx0 dst {}",
            sw.family.addr(*f)
        ));
    }
    hv.run(&format!("ip addr add 10.0.0.{n}/24 dev vx0"));
    hv.run(&format!(
        "ip link set vx0 mtu {} up",
        1500 - sw.family.overhead()
    ));
    hv
}

/// The router's namespace on the underlay as node 1 (198.18.0.1 or 2001:db8::1), ready for
/// the test to add the interfaces its config names before [`Router::start`].
pub fn router_ns(sw: &Switch) -> Netns {
    let ns = underlay_node(sw, "ulr", 1);
    // UDP GSO super-packets leave the veth segmented, as a NIC would send them.
    ns.run("ethtool -K ul0 tx off tx-udp-segmentation off");
    ns
}

/// The router's admin HTTP listener, inside its own namespace.
pub const ROUTER_ADMIN: &str = "127.0.0.1:9180";

/// `vnf-router` running in its namespace; prints its log if the test fails.
#[derive(Debug)]
pub struct Router {
    /// The `vnf-router` process.
    pub proc: Proc,
    /// The router's namespace.
    pub ns: Netns,
    log: PathBuf,
    dir: PathBuf,
}

impl Router {
    /// Start the router in `ns` (see [`router_ns`]) with config `yaml`, written into `dir`
    /// with its log; returns once it is ready.
    pub fn start(ns: Netns, dir: &Path, yaml: &str) -> Router {
        let cfg = dir.join("router.yaml");
        std::fs::write(&cfg, yaml).expect("write router config");
        let log = dir.join("router.log");
        let proc = ns.spawn_logged(
            &format!(
                "{} --config {} --admin {ROUTER_ADMIN}",
                bin("vnf-router").display(),
                cfg.display()
            ),
            Some(&log),
        );
        let mut r = Router {
            proc,
            ns,
            log,
            dir: dir.to_path_buf(),
        };
        let ready = wait_for(Duration::from_secs(15), || {
            r.ns.sh(&format!("curl -sf http://{ROUTER_ADMIN}/readyz"))
                .status
                .success()
        });
        assert!(
            ready && r.proc.running(),
            "vnf-router did not become ready:\n{}",
            r.log_text()
        );
        r
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its `/metrics` text.
    pub fn metrics(&self) -> String {
        self.ns
            .run(&format!("curl -sf http://{ROUTER_ADMIN}/metrics"))
    }

    /// One sample; panics (with the whole text) if the router does not export it.
    pub fn metric(&self, key: &str) -> f64 {
        let text = self.metrics();
        prom(&text, key).unwrap_or_else(|| panic!("no sample `{key}` in /metrics:\n{text}"))
    }

    /// `vnf_drops_total` for one reason.
    pub fn drops(&self, reason: &str) -> f64 {
        self.metric(&format!("vnf_drops_total{{reason=\"{reason}\"}}"))
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- vnf-router log ({}) ----\n{}---- end of log; work dir {} ----",
                self.log.display(),
                self.log_text(),
                self.dir.display()
            );
        }
    }
}

/// A running `tcpdump -w`.
#[derive(Debug)]
pub struct Capture {
    proc: Proc,
    pcap: PathBuf,
    log: PathBuf,
}

impl Capture {
    /// Capture the first 256 bytes of each packet on `iface` in `ns` into `dir/name.pcap`;
    /// returns once tcpdump listens.
    pub fn start(ns: &Netns, iface: &str, filter: &str, dir: &Path, name: &str) -> Capture {
        Capture::start_with(ns, iface, filter, dir, name, 256, None)
    }

    /// [`start`](Self::start), keeping `snaplen` bytes of each packet (0: all of it, which
    /// checksum validation needs).
    pub fn start_snaplen(
        ns: &Netns,
        iface: &str,
        filter: &str,
        dir: &Path,
        name: &str,
        snaplen: u32,
    ) -> Capture {
        Capture::start_with(ns, iface, filter, dir, name, snaplen, None)
    }

    /// [`start`](Self::start) of whole packets, stopping by itself after `max` packets.
    pub fn start_limited(
        ns: &Netns,
        iface: &str,
        filter: &str,
        dir: &Path,
        name: &str,
        max: u32,
    ) -> Capture {
        Capture::start_with(ns, iface, filter, dir, name, 0, Some(max))
    }

    /// Capture `snaplen` bytes (0: all) of each packet, and at most `max` packets if given.
    pub fn start_with(
        ns: &Netns,
        iface: &str,
        filter: &str,
        dir: &Path,
        name: &str,
        snaplen: u32,
        max: Option<u32>,
    ) -> Capture {
        let pcap = dir.join(format!("{name}.pcap"));
        let log = dir.join(format!("{name}.tcpdump.log"));
        let count = max.map(|m| format!("-c {m} ")).unwrap_or_default();
        let proc = ns.spawn_logged(
            &format!(
                "tcpdump -i {iface} -Z root --immediate-mode -U -nn -s {snaplen} {count}-w {} '{filter}'",
                pcap.display()
            ),
            Some(&log),
        );
        let mut c = Capture { proc, pcap, log };
        let up = wait_for(Duration::from_secs(10), || {
            c.pcap.exists()
                && std::fs::read_to_string(&c.log).is_ok_and(|s| s.contains("listening on"))
        });
        assert!(
            up && c.proc.running(),
            "tcpdump on {iface} did not start:\n{}",
            std::fs::read_to_string(&c.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
        c
    }

    /// Stop (SIGINT, so that tcpdump flushes; with a packet limit it may have stopped by
    /// itself already) and return the pcap.
    pub fn stop(mut self) -> PathBuf {
        self.proc.signal(libc::SIGINT);
        let code = self.proc.wait_timeout(Duration::from_secs(10));
        assert_eq!(
            code,
            Some(0),
            "tcpdump did not stop cleanly:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        self.pcap.clone()
    }
}

/// Ping inside a namespace: the number of replies, and ping's output.
pub fn ping(ns: &Netns, args: &str) -> (usize, String) {
    let out = ns.sh(&format!("ping -n {args}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let received = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| {
            l.split(", ")
                .find(|p| p.ends_with("received"))
                .and_then(|p| p.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    (received, text)
}

/// The bits per second a `iperf3 --json` client reports as received, or its error.
pub fn iperf3_bps(json: &str) -> Result<f64, String> {
    let at = json
        .find("\"sum_received\"")
        .ok_or_else(|| format!("no sum_received in iperf3 output:\n{json}"))?;
    let rest = &json[at..];
    let k = rest
        .find("\"bits_per_second\"")
        .ok_or_else(|| format!("no bits_per_second in iperf3 output:\n{json}"))?;
    let v = rest[k + "\"bits_per_second\"".len()..]
        .trim_start_matches(|c: char| c == ':' || c.is_whitespace());
    let end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '+' || c == '-'))
        .unwrap_or(v.len());
    v[..end]
        .parse()
        .map_err(|e| format!("bad bits_per_second `{}`: {e}", &v[..end]))
}

/// An iperf3 TCP test from `client` to a one-off server bound to `addr` in `server`, with
/// extra client arguments: the bits per second received, never zero (it panics with
/// iperf3's output if the test fails or moves nothing).
pub fn iperf3_tcp(client: &Netns, server: &Netns, addr: &str, args: &str) -> f64 {
    let _server = server.spawn(&format!("iperf3 -s -1 -B {addr}"));
    assert!(
        wait_for(Duration::from_secs(10), || server
            .sh(&format!("ss -ltn | grep -q {addr}:5201"))
            .status
            .success()),
        "iperf3 server did not start"
    );
    let out = client.sh(&format!(
        "timeout 25 iperf3 -c {addr} --connect-timeout 5000 {args} --json"
    ));
    let json = String::from_utf8_lossy(&out.stdout).into_owned();
    let bps = iperf3_bps(&json).unwrap_or_else(|e| panic!("iperf3 {args} to {addr} failed: {e}"));
    assert!(bps > 0.0, "iperf3 moved no data:\n{json}");
    bps
}

/// Lost and sent packets of a finished `ping`, from its summary line.
pub fn ping_summary(out: &str) -> Option<(u32, u32)> {
    let line = out.lines().find(|l| l.contains("packets transmitted"))?;
    let mut nums = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let sent: u32 = nums.next()?.parse().ok()?;
    let received: u32 = nums.next()?.parse().ok()?;
    Some((sent - received.min(sent), sent))
}

/// A private Open vSwitch with the userspace datapath: `ovsdb-server` in the root namespace
/// (a unix socket in `dir`, no network), `ovs-vswitchd` inside the switch namespace, which
/// opens its system ports with `AF_PACKET` there (`datapath_type=netdev`: no kernel module
/// needed). Every `OVS_*` path points into `dir`; both daemons are stopped by pidfile on
/// drop, whatever happened. Used by `tests/ovs_vlan.rs` and `tests/netns_router.rs`.
#[derive(Debug)]
pub struct Ovs {
    dir: PathBuf,
}

impl Ovs {
    /// `OVS_*` variables pointing every OVS path at the instance's directory.
    pub fn env(&self) -> String {
        let d = self.dir.display();
        format!("OVS_RUNDIR={d} OVS_LOGDIR={d} OVS_DBDIR={d} OVS_SYSCONFDIR={d}")
    }

    fn db(&self) -> String {
        format!("unix:{}/db.sock", self.dir.display())
    }

    /// Start both daemons, with their files in `dir`; `ovs-vswitchd` inside `ns`.
    pub fn start(dir: &Path, ns: &Netns) -> Ovs {
        std::fs::create_dir_all(dir).expect("OVS dir");
        // The guard exists before any daemon does, so a failure below still stops them.
        let ovs = Ovs {
            dir: dir.to_path_buf(),
        };
        let d = dir.display();
        let env = ovs.env();
        run(&format!(
            "{env} ovsdb-tool create {d}/conf.db /usr/share/openvswitch/vswitch.ovsschema"
        ));
        run(&format!(
            "{env} ovsdb-server --detach --no-chdir --pidfile={d}/ovsdb-server.pid \
             --remote=punix:{d}/db.sock --log-file={d}/ovsdb-server.log {d}/conf.db"
        ));
        ovs.vsctl("--no-wait init");
        run(&format!(
            "{}env {env} ovs-vswitchd --detach --no-chdir --pidfile={d}/ovs-vswitchd.pid \
             --log-file={d}/ovs-vswitchd.log {}",
            ns.exec(),
            ovs.db()
        ));
        ovs
    }

    /// Run `ovs-vsctl` against this instance (waiting for `ovs-vswitchd` to apply changes,
    /// unless `--no-wait` is given).
    pub fn vsctl(&self, args: &str) -> String {
        run(&format!(
            "{} ovs-vsctl --db={} --timeout=15 {args}",
            self.env(),
            self.db()
        ))
    }

    /// `ovs-vswitchd`'s log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("ovs-vswitchd.log")).unwrap_or_default()
    }

    /// Stop the daemon whose pidfile is `name`: SIGTERM, then SIGKILL after 3 s.
    fn stop(&self, name: &str) {
        let Ok(text) = std::fs::read_to_string(self.dir.join(name)) else {
            return;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            return;
        };
        if pid <= 1 {
            return;
        }
        let alive = || {
            // A zombie (already exited, not yet reaped by init) counts as gone.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
            })
        };
        // SAFETY: kill has no memory preconditions; the pid is the daemon's own, from the
        // pidfile it wrote in our private directory.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        if !wait_for(Duration::from_secs(3), || !alive()) {
            // SAFETY: as above.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        self.stop("ovs-vswitchd.pid");
        self.stop("ovsdb-server.pid");
    }
}

/// The admin HTTP listener of a VNF started with [`Vnf::start`], inside its own namespace.
pub const VNF_ADMIN: &str = "127.0.0.1:9180";

/// Any VNF binary (`vnf-router`, `vnf-firewall`, ...) running in its namespace with a YAML
/// config in the test's work directory; prints its log if the test fails.
#[derive(Debug)]
pub struct Vnf {
    /// The process.
    pub proc: Proc,
    /// Its namespace.
    pub ns: Netns,
    /// The binary's name.
    pub name: String,
    cfg: PathBuf,
    log: PathBuf,
    dir: PathBuf,
}

impl Vnf {
    /// Start the workspace binary `name` in `ns` with config `yaml` (written to
    /// `dir/NAME.yaml`, its log to `dir/NAME.log`) and admin on [`VNF_ADMIN`]; returns once
    /// `/readyz` answers 200.
    pub fn start(name: &str, ns: Netns, dir: &Path, yaml: &str) -> Vnf {
        let cfg = dir.join(format!("{name}.yaml"));
        std::fs::write(&cfg, yaml).expect("write VNF config");
        let log = dir.join(format!("{name}.log"));
        let proc = ns.spawn_logged(
            &format!(
                "{} --config {} --admin {VNF_ADMIN}",
                bin(name).display(),
                cfg.display()
            ),
            Some(&log),
        );
        let mut v = Vnf {
            proc,
            ns,
            name: name.to_string(),
            cfg,
            log,
            dir: dir.to_path_buf(),
        };
        let ready = wait_for(Duration::from_secs(15), || {
            v.ns.sh(&format!("curl -sf http://{VNF_ADMIN}/readyz"))
                .status
                .success()
        });
        assert!(
            ready && v.proc.running(),
            "{name} did not become ready:\n{}",
            v.log_text()
        );
        v
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` on the admin endpoint; panics unless it answers 2xx.
    pub fn get(&self, path: &str) -> String {
        self.ns
            .run(&format!("curl -sf -m 10 http://{VNF_ADMIN}{path}"))
    }

    /// Its `/metrics` text.
    pub fn metrics(&self) -> String {
        self.get("/metrics")
    }

    /// One sample; panics (with the whole text) if the VNF does not export it.
    pub fn metric(&self, key: &str) -> f64 {
        let text = self.metrics();
        prom(&text, key).unwrap_or_else(|| panic!("no sample `{key}` in /metrics:\n{text}"))
    }

    /// `vnf_drops_total` for one reason, 0 if not exported (yet).
    pub fn drops(&self, reason: &str) -> f64 {
        prom(
            &self.metrics(),
            &format!("vnf_drops_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0)
    }

    /// A state report, `GET /state/NAME` (the firewall's `connections`).
    pub fn state(&self, name: &str) -> String {
        self.get(&format!("/state/{name}"))
    }

    /// Write `yaml` over its config file and `POST /reload`: (HTTP status, body).
    pub fn reload(&self, yaml: &str) -> (u16, String) {
        std::fs::write(&self.cfg, yaml).expect("write VNF config");
        let out = self.ns.sh(&format!(
            "curl -s -m 10 -X POST -w '\\n%{{http_code}}' http://{VNF_ADMIN}/reload"
        ));
        let all = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = all.rsplit_once('\n').unwrap_or(("", all.as_str()));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// The process runs and `/healthz` answers 200.
    pub fn healthy(&mut self) -> bool {
        self.proc.running()
            && self
                .ns
                .sh(&format!("curl -sf -m 5 http://{VNF_ADMIN}/healthz"))
                .status
                .success()
    }
}

impl Drop for Vnf {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- {} log ({}) ----\n{}---- end of log; work dir {} ----",
                self.name,
                self.log.display(),
                self.log_text(),
                self.dir.display()
            );
        }
    }
}
