//! `vnfctl up | status | apply | down` and `vnfctl probe` end to end, on loopback, no root.
//!
//! Each test writes a chain file modelled on `examples/chain-demo.yaml`: a client network
//! `outside` (VNI 300, 192.0.2.0/24) -> `edge` (router, floating 192.0.2.10 = VIP
//! 10.0.9.10) -> `fw` (firewall) -> `lb` (load balancer) -> a pool of web servers on `web`
//! (VNI 100, 10.0.1.0/24). It runs the chain with the real `vnfctl` and the real
//! `vnf-router`, `vnf-firewall` and `vnf-lb` (from `target/debug`, built on first use), each
//! instance on its own loopback underlay address with its admin endpoint on HOST:9100. The
//! web servers and the clients are synthetic hosts (`vnfctl probe ... serve|http|tcp|ping`
//! child processes, or `chains::probe::SyntheticHost`s in threads), each its own VXLAN VTEP
//! on a loopback address.
//!
//! Every test has loopback addresses of its own inside 127.0.0.120-127.0.0.159 (other test
//! files use other ranges), so the tests can run in parallel. A guard ([`Env`]) runs
//! `vnfctl down` and stops every synthetic host and child process however a test ends.
//!
//! Timing figures (outages after SIGKILL) are printed, not asserted tightly: run with
//! `--nocapture` to see them.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chains::admin_client;
use chains::probe::{HostSpec, ProbeError, SyntheticHost, derived_mac};
use chains::supervise::{InstanceStatus, State, read_status};
use ipnetwork::Ipv4Network;

const VNFCTL: &str = env!("CARGO_BIN_EXE_vnfctl");

/// The chain file every test writes first (in its temporary directory).
const CHAIN: &str = "chain.yaml";
/// The state directory, relative to the temporary directory (`--state state`).
const STATE: &str = "state";

/// The web service's public (floating) address and the load balancer's VIP behind it.
const FLOATING: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The router's own address on `outside`.
const EDGE_OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The load balancer's address on `web`: the web servers' gateway.
const LB_WEB: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
/// The web servers' address of the `big` pool's only backend.
const BIG: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 20);
/// The `big` backend's body: its first line, then padding.
const BIG_BODY_BYTES: usize = 4 << 20;
const VNI_OUTSIDE: u32 = 300;
const VNI_WEB: u32 = 100;
/// The overlay MTU (a 1500-byte underlay less 50 of VXLAN).
const MTU: usize = 1450;
/// Timeout of one request where nothing is expected to fail.
const GET_TIMEOUT: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------
// The binaries
// ---------------------------------------------------------------------------------------

/// The directory with the VNF binaries (`--bin-dir`).
fn bin_dir() -> &'static Path {
    common::vnf_bin_dir()
}

// ---------------------------------------------------------------------------------------
// The chain file
// ---------------------------------------------------------------------------------------

fn lo(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// One test's loopback addresses (last octets).
#[derive(Debug, Clone)]
struct Lab {
    edge: u8,
    fw: u8,
    lb: u8,
    /// Client VTEPs on `outside`: client `k` is 192.0.2.(50 + k).
    clients: Vec<u8>,
    /// Web server VTEPs on `web`: `web{k+1}` is 10.0.1.(11 + k).
    webs: Vec<u8>,
    /// The VTEP of the `big` pool's backend (10.0.1.20), if the test has one.
    big: Option<u8>,
    /// The underlay address of a second firewall, if the test has one.
    fw2: Option<u8>,
}

impl Lab {
    fn admin(&self, name: &str) -> SocketAddr {
        let host = match name {
            "edge" => self.edge,
            "fw" => self.fw,
            "lb" => self.lb,
            "fw2" => self.fw2.expect("a lab with fw2"),
            _ => panic!("no instance {name}"),
        };
        SocketAddr::from((lo(host), 9100))
    }

    fn client_address(k: usize) -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, 50 + k as u8)
    }

    fn web_address(k: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 1, 11 + k as u8)
    }

    /// What web server `k` answers (as `vnfctl probe serve --name web{k+1}` would).
    fn web_body(k: usize) -> String {
        format!("served by web{} {}\n", k + 1, Lab::web_address(k))
    }

    /// A synthetic host on `outside` as client `k`, flooding to the router and the other
    /// clients, its gateway the router.
    fn client(&self, k: usize) -> SyntheticHost {
        let address = Lab::client_address(k);
        let mut spec = HostSpec::new(
            lo(self.clients[k]),
            VNI_OUTSIDE,
            derived_mac(address),
            Ipv4Network::new(address, 24).expect("a /24"),
        );
        spec.peers = self.clients.iter().map(|c| lo(*c)).collect();
        spec.peers.push(lo(self.edge));
        spec.gateway = Some(EDGE_OUTSIDE);
        spec.mtu = MTU;
        SyntheticHost::new(spec).expect("the client's VTEP binds its loopback address")
    }

    /// A synthetic host on `web` at `address` behind VTEP `vtep`, flooding to the load
    /// balancer and the other web VTEPs, its gateway the load balancer.
    fn web_host(&self, vtep: u8, address: Ipv4Addr) -> SyntheticHost {
        let mut spec = HostSpec::new(
            lo(vtep),
            VNI_WEB,
            derived_mac(address),
            Ipv4Network::new(address, 24).expect("a /24"),
        );
        spec.peers = self.webs.iter().chain(&self.big).map(|w| lo(*w)).collect();
        spec.peers.push(lo(self.lb));
        spec.gateway = Some(LB_WEB);
        spec.mtu = MTU;
        SyntheticHost::new(spec).expect("the web server's VTEP binds its loopback address")
    }
}

/// The chain file of a test, with the knobs the tests turn.
#[derive(Debug, Clone)]
struct Chain {
    tenant: String,
    lab: Lab,
    /// How many of `lab.webs` are in the pool (and their VTEPs on the `web` network).
    pool: usize,
    /// The firewall's inbound rules before `ping` (after `http`, which accepts tcp/80).
    fw_rules: Vec<String>,
    /// Load balancer services after `www` (http on VIP port 80).
    services: Vec<String>,
    /// The load balancer's `tls` section (flow style), if any.
    tls: Option<String>,
    /// A second firewall hop `fw2` between `fw` and `lb` (accepting tcp/80 and ping only).
    fw2: bool,
    /// The VNI of `outside`.
    outside_vni: u32,
    /// The pool of service `www`.
    www_pool: String,
}

impl Chain {
    fn new(tenant: &str, lab: Lab) -> Chain {
        Chain {
            tenant: tenant.into(),
            pool: lab.webs.len(),
            lab,
            fw_rules: Vec::new(),
            services: Vec::new(),
            tls: None,
            fw2: false,
            outside_vni: VNI_OUTSIDE,
            www_pool: "web".into(),
        }
    }

    /// The `alt` firewall rule (tcp/8080) and load balancer service (VIP port 8080 to the
    /// `web` pool's port 80).
    const ALT_RULE: &str = "{name: alt, protocol: tcp, dst_ports: [8080], action: accept}";
    const ALT_SERVICE: &str = "{name: alt, vip: 10.0.9.10, port: 8080, protocol: http, pool: web}";
    /// A rule that lets SSH through the firewall.
    const SSH_RULE: &str = "{name: ssh, protocol: tcp, dst_ports: [22], action: accept}";

    fn yaml(&self) -> String {
        let l = &self.lab;
        let join = |v: &mut dyn Iterator<Item = u8>| {
            v.map(|o| lo(o).to_string()).collect::<Vec<_>>().join(", ")
        };
        let clients = join(&mut l.clients.iter().copied());
        let webs = join(&mut l.webs[..self.pool].iter().copied().chain(l.big));
        let mut y = format!(
            "\
# Written by chains/tests/up_loopback.rs.
tenant: {tenant}
transit:
  vnis: 16000000-16000099
networks:
  - name: outside
    vni: {vni}
    vteps: [{clients}]
    subnet: 192.0.2.0/24
    gateway: 192.0.2.1
  - name: web
    vni: {VNI_WEB}
    vteps: [{webs}]
    subnet: 10.0.1.0/24
functions:
  - name: edge
    kind: router
    host: {edge}
    addresses: {{outside: {EDGE_OUTSIDE}}}
    nat:
      masquerade:
        - {{from: [web], to: outside}}
      floating:
        - {{network: outside, external: {FLOATING}, internal: 10.0.9.10}}
  - name: fw
    kind: firewall
    host: {fw}
    inbound:
      default: drop
      rules:
        - {{name: http, protocol: tcp, dst_ports: [80], action: accept}}
",
            tenant = self.tenant,
            vni = self.outside_vni,
            edge = lo(l.edge),
            fw = lo(l.fw),
        );
        for rule in &self.fw_rules {
            y.push_str(&format!("        - {rule}\n"));
        }
        y.push_str(
            "        - {name: ping, protocol: icmp, icmp_type: 8, action: accept}\n    \
             outbound:\n      default: accept\n",
        );
        if self.fw2 {
            y.push_str(&format!(
                "  - name: fw2\n    kind: firewall\n    host: {}\n    inbound:\n      \
                 default: drop\n      rules:\n        \
                 - {{name: http, protocol: tcp, dst_ports: [80], action: accept}}\n        \
                 - {{name: ping, protocol: icmp, icmp_type: 8, action: accept}}\n",
                lo(l.fw2.expect("a lab with fw2"))
            ));
        }
        y.push_str(&format!(
            "  - name: lb\n    kind: lb\n    host: {}\n    addresses: {{web: {LB_WEB}}}\n    \
             pools:\n      - name: web\n        backends:\n",
            lo(l.lb)
        ));
        for k in 0..self.pool {
            y.push_str(&format!(
                "          - {{name: web{}, address: \"{}:80\"}}\n",
                k + 1,
                Lab::web_address(k)
            ));
        }
        let health = "health: {check: http, path: /, interval: 1s, timeout: 500ms, rise: 1, \
                      fall: 2}";
        y.push_str(&format!("        {health}\n"));
        let mut www = format!(
            "{{name: www, vip: 10.0.9.10, port: 80, protocol: http, pool: {}",
            self.www_pool
        );
        if l.big.is_some() {
            y.push_str(&format!(
                "      - name: big\n        backends:\n          \
                 - {{name: big, address: \"{BIG}:80\"}}\n        {health}\n"
            ));
            www.push_str(", routes: [{path: /big, pool: big}]");
        }
        www.push('}');
        y.push_str(&format!("    services:\n      - {www}\n"));
        for s in &self.services {
            y.push_str(&format!("      - {s}\n"));
        }
        if let Some(tls) = &self.tls {
            y.push_str(&format!("    tls: {tls}\n"));
        }
        let hops = if self.fw2 {
            "edge, fw, fw2, lb"
        } else {
            "edge, fw, lb"
        };
        y.push_str(&format!(
            "chains:\n  - name: web-in\n    from: outside\n    to: web\n    hops: [{hops}]\n"
        ));
        y
    }
}

// ---------------------------------------------------------------------------------------
// The environment of one test, and its cleanup
// ---------------------------------------------------------------------------------------

/// A web server (a synthetic host serving HTTP) in a thread.
fn serve(host: SyntheticHost, port: u16, body: String, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut host = host;
        host.serve_http(port, &body, &stop)
            .expect("the web server serves");
    })
}

/// One test's temporary directory, chain, state directory, synthetic hosts and child
/// processes. Dropping it runs `vnfctl down --state DIR`, kills the children and stops the
/// threads.
struct Env {
    dir: tempfile::TempDir,
    lab: Lab,
    children: Vec<Child>,
    stops: Vec<Arc<AtomicBool>>,
    threads: Vec<JoinHandle<()>>,
}

impl Env {
    fn new(chain: &Chain) -> Env {
        let env = Env {
            dir: tempfile::tempdir().expect("a temporary directory"),
            lab: chain.lab.clone(),
            children: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        env.write(CHAIN, chain);
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn state(&self) -> PathBuf {
        self.path(STATE)
    }

    /// Write `chain` as `name` in the temporary directory.
    fn write(&self, name: &str, chain: &Chain) {
        std::fs::write(self.path(name), chain.yaml()).expect("write the chain file");
    }

    /// A stop flag that the guard sets on drop.
    fn stop_flag(&mut self) -> Arc<AtomicBool> {
        let stop = Arc::new(AtomicBool::new(false));
        self.stops.push(stop.clone());
        stop
    }

    /// Run `vnfctl ARGS` in the temporary directory and wait for it; prints what it said.
    fn vnfctl(&self, args: &[&str]) -> Output {
        let out = Command::new(VNFCTL)
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run vnfctl");
        println!(
            "$ vnfctl {} -> {}\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Start `vnfctl ARGS` in the background (killed on drop); its output goes to `log`.
    fn spawn_vnfctl(&mut self, args: &[&str], log: &str) {
        let file = std::fs::File::create(self.path(log)).expect("create the log");
        let err = file.try_clone().expect("clone the log");
        let child = Command::new(VNFCTL)
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .expect("start vnfctl");
        self.children.push(child);
    }

    /// Web server `k` of the lab in a thread, serving port 80.
    fn serve_web(&mut self, k: usize) {
        let host = self.lab.web_host(self.lab.webs[k], Lab::web_address(k));
        let stop = self.stop_flag();
        self.threads.push(serve(host, 80, Lab::web_body(k), stop));
    }

    /// The `big` pool's backend in a thread: a body of [`BIG_BODY_BYTES`].
    fn serve_big(&mut self) {
        let host = self
            .lab
            .web_host(self.lab.big.expect("a lab with big"), BIG);
        let stop = self.stop_flag();
        self.threads.push(serve(host, 80, big_body(), stop));
    }

    /// `vnfctl up CHAIN --state state --bin-dir B`: must exit 0.
    fn up(&self) -> Output {
        let bins = bin_dir().to_str().expect("a UTF-8 path").to_string();
        let out = self.vnfctl(&["up", CHAIN, "--state", STATE, "--bin-dir", &bins]);
        assert!(out.status.success(), "vnfctl up failed");
        assert!(stdout(&out).contains("is up"), "{}", stdout(&out));
        out
    }

    fn instance(&self, name: &str) -> Option<InstanceStatus> {
        read_status(&self.state())
            .ok()?
            .instances
            .into_iter()
            .find(|i| i.name == name)
    }

    /// Every instance's pid from `status.json`.
    fn pids(&self) -> BTreeMap<String, u32> {
        read_status(&self.state())
            .expect("status.json")
            .instances
            .into_iter()
            .map(|i| {
                (
                    i.name.clone(),
                    i.pid.unwrap_or_else(|| panic!("{} has no pid", i.name)),
                )
            })
            .collect()
    }

    /// Wait until `name` is `running` with a pid other than `not` and answers `/readyz`.
    fn wait_running(&self, name: &str, not: Option<u32>, limit: Duration) -> InstanceStatus {
        wait_for(limit, &format!("{name} running and ready"), || {
            self.instance(name).filter(|i| {
                i.state == State::Running
                    && i.pid.is_some()
                    && i.pid != not
                    && admin_client::ready(i.admin, Duration::from_millis(500))
            })
        })
    }

    /// Wait until the load balancer counts `n` backends up.
    fn wait_backends_up(&self, n: usize) {
        let admin = self.lab.admin("lb");
        wait_for(Duration::from_secs(15), &format!("{n} backends up"), || {
            (metric(admin, "vnf_lb_backend_up") == n as f64).then_some(())
        });
    }

    /// Every file of `STATE/plan`, by name.
    fn plan_files(&self) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(self.state().join("plan"))
            .expect("the plan directory")
            .map(|e| {
                let e = e.expect("a directory entry");
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).expect("read a plan file"),
                )
            })
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.state().exists() {
            let _ = Command::new(VNFCTL)
                .args(["down", "--state", STATE])
                .current_dir(self.dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for s in &self.stops {
            s.store(true, Ordering::SeqCst);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn big_body() -> String {
    let mut body = format!("served by big {BIG}\n");
    body.extend(std::iter::repeat_n('x', BIG_BODY_BYTES - body.len() - 1));
    body.push('\n');
    body
}

/// Poll `f` every 20 ms until it returns `Some`, for at most `limit`.
fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The sum of metric `name` at `admin` (0 if it has none or does not answer).
fn metric(admin: SocketAddr, name: &str) -> f64 {
    match admin_client::get(admin, "/metrics", Duration::from_secs(2)) {
        Ok((200, text)) => admin_client::metric_sum(&text, name, &[]).unwrap_or(0.0),
        _ => 0.0,
    }
}

/// Whether process `pid` exists (kill(pid, 0) succeeds).
fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists; no memory is involved.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

fn sigkill(pid: u32) {
    assert!(pid > 1, "pid {pid}");
    // SAFETY: kill(2) on a positive pid: an instance the supervisor under test runs.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}");
}

/// One GET of `path` on the floating address, port `port`: the body if it answered 200.
fn get(
    client: &mut SyntheticHost,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<String, String> {
    match client.http_get(SocketAddrV4::new(FLOATING, port), "www", path, timeout) {
        Ok(r) if r.status == 200 => Ok(String::from_utf8_lossy(&r.body).into_owned()),
        Ok(r) => Err(format!("HTTP {}", r.status)),
        Err(e) => Err(e.to_string()),
    }
}

/// `n` GETs of `/` through the chain that must all answer 200; their bodies.
fn get_ok(client: &mut SyntheticHost, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            get(client, 80, "/", GET_TIMEOUT)
                .unwrap_or_else(|e| panic!("GET {i} of {n} through the chain: {e}"))
        })
        .collect()
}

/// Whether a TCP handshake to the floating address's `port` gets no answer in 1 s (the
/// firewall drops the SYN).
fn filtered(client: &mut SyntheticHost, port: u16) -> bool {
    match client.tcp_connect(SocketAddrV4::new(FLOATING, port), Duration::from_secs(1)) {
        Err(ProbeError::Timeout(_)) => true,
        Ok(_) => false,
        Err(e) => {
            println!("tcp {FLOATING}:{port}: {e}");
            false
        }
    }
}

/// One request of a client loop.
#[derive(Debug, Clone)]
struct Sample {
    start: Instant,
    end: Instant,
    outcome: Result<String, String>,
}

/// A client in a thread doing GETs of `path` one after another until stopped; its samples.
/// If `started` is given, the start of each request is sent there.
fn request_loop(
    env: &mut Env,
    k: usize,
    path: &'static str,
    timeout: Duration,
    started: Option<mpsc::Sender<Instant>>,
) -> (Arc<AtomicBool>, JoinHandle<Vec<Sample>>) {
    let mut client = env.lab.client(k);
    let stop = env.stop_flag();
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut samples = Vec::new();
        while !flag.load(Ordering::SeqCst) {
            let start = Instant::now();
            if let Some(tx) = &started {
                let _ = tx.send(start);
            }
            let outcome = get(&mut client, 80, path, timeout);
            samples.push(Sample {
                start,
                end: Instant::now(),
                outcome,
            });
        }
        samples
    });
    (stop, thread)
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

/// `up`, then the demo through the CLI only: `probe ... serve` web servers, `probe ...
/// ping|http|tcp` from the client network, `status`, and `down`.
#[test]
fn up_status_probe_down() {
    let lab = Lab {
        edge: 120,
        fw: 121,
        lb: 122,
        clients: vec![123],
        webs: vec![124, 125, 126],
        big: None,
        fw2: None,
    };
    let chain = Chain::new("updown", lab.clone());
    let mut env = Env::new(&chain);
    for k in 0..3 {
        let vtep = lo(lab.webs[k]).to_string();
        let address = Lab::web_address(k).to_string();
        let name = format!("web{}", k + 1);
        env.spawn_vnfctl(
            &[
                "probe",
                CHAIN,
                "--network",
                "web",
                "--vtep",
                &vtep,
                "--address",
                &address,
                "serve",
                "--port",
                "80",
                "--name",
                &name,
            ],
            &format!("{name}.log"),
        );
    }

    let started = Instant::now();
    env.up();
    println!("up: {:.2} s", started.elapsed().as_secs_f64());
    let status = read_status(&env.state()).expect("status.json");
    assert_eq!(
        status
            .instances
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>(),
        ["edge", "fw", "lb"]
    );
    for i in &status.instances {
        assert!(i.pid.is_some(), "{i:?}");
        assert!(
            admin_client::ready(i.admin, Duration::from_secs(1)),
            "{} not ready after up",
            i.name
        );
    }
    env.wait_backends_up(3);
    for c in &mut env.children {
        assert!(
            c.try_wait().expect("try_wait").is_none(),
            "a web server exited"
        );
    }

    let client_vtep = lo(lab.clients[0]).to_string();
    let client_address = Lab::client_address(0).to_string();
    let client = |env: &Env, args: &[&str]| {
        let mut all = vec![
            "probe",
            CHAIN,
            "--network",
            "outside",
            "--vtep",
            &client_vtep,
            "--address",
            &client_address,
        ];
        all.extend_from_slice(args);
        env.vnfctl(&all)
    };

    let out = client(&env, &["ping", &EDGE_OUTSIDE.to_string(), "--count", "3"]);
    assert!(out.status.success(), "ping of the router failed");
    assert!(stdout(&out).contains("3 sent"), "{}", stdout(&out));
    let out = client(&env, &["ping", &FLOATING.to_string(), "--count", "2"]);
    assert!(out.status.success(), "ping of the floating address failed");

    let url = format!("http://{FLOATING}/");
    let out = client(&env, &["http", &url, "--count", "30", "--quiet"]);
    assert!(out.status.success(), "HTTP through the chain failed");
    let text = stdout(&out);
    assert!(text.contains("30 answered, 0 failed"), "{text}");
    // The tally: `  N  200 served by webK 10.0.1.1K`, one line per body.
    let mut tally = BTreeMap::new();
    for line in text.lines().skip(1) {
        let mut words = line.split_whitespace();
        let n: u32 = words.next().expect("a count").parse().expect("a count");
        assert_eq!(words.next(), Some("200"), "{line}");
        let body = words.collect::<Vec<_>>().join(" ");
        tally.insert(body, n);
    }
    assert_eq!(tally.values().sum::<u32>(), 30, "{tally:?}");
    for k in 0..3 {
        let body = Lab::web_body(k).trim().to_string();
        assert!(tally.contains_key(&body), "{body} missing from {tally:?}");
    }

    let ssh = format!("{FLOATING}:22");
    let out = client(
        &env,
        &["tcp", &ssh, "--timeout", "1", "--expect", "filtered"],
    );
    assert!(out.status.success(), "tcp/22 is not filtered");
    assert!(stdout(&out).contains("filtered"));
    let http = format!("{FLOATING}:80");
    let out = client(&env, &["tcp", &http]);
    assert!(out.status.success(), "tcp/80 is not open");

    let out = env.vnfctl(&["status", "--state", STATE]);
    assert!(out.status.success(), "vnfctl status says unhealthy");
    let text = stdout(&out);
    let pids = env.pids();
    for (name, kind) in [("edge", "router"), ("fw", "firewall"), ("lb", "lb")] {
        let row: Vec<&str> = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{text}"))
            .split_whitespace()
            .collect();
        // INSTANCE KIND PROCESS PID RESTARTS HEALTH ADMIN counters...
        assert_eq!(row[1], kind, "{row:?}");
        assert_eq!(row[2], "running", "{row:?}");
        assert_eq!(row[3], pids[name].to_string(), "{row:?}");
        assert_eq!(row[4], "0", "{row:?}");
        assert_eq!(row[5], "ready", "{row:?}");
        assert_eq!(row[6], lab.admin(name).to_string(), "{row:?}");
    }
    assert!(text.contains("backends_up 3/3"), "{text}");

    let out = env.vnfctl(&["down", "--state", STATE]);
    assert!(out.status.success(), "vnfctl down failed");
    for (name, pid) in &pids {
        assert!(!alive(*pid), "{name} (pid {pid}) still alive after down");
    }
    let out = env.vnfctl(&["status", "--state", STATE]);
    assert!(!out.status.success(), "status of a stopped chain exits 0");
    assert!(stdout(&out).contains("not running"), "{}", stdout(&out));
}

/// SIGKILL each instance in turn under a client's request loop: the supervisor restarts
/// it and traffic comes back. Prints the outages.
#[test]
fn sigkill_restart_timing() {
    let lab = Lab {
        edge: 127,
        fw: 128,
        lb: 129,
        clients: vec![130],
        webs: vec![131, 132, 133],
        big: None,
        fw2: None,
    };
    let chain = Chain::new("sigkill", lab.clone());
    let mut env = Env::new(&chain);
    for k in 0..3 {
        env.serve_web(k);
    }
    env.up();
    env.wait_backends_up(3);
    let mut client = lab.client(0);
    get_ok(&mut client, 5);

    let limit = Duration::from_secs(15);
    // The GETs' timeout is the resolution of "traffic back": a GET sent while an instance
    // is down loses its SYN and fails only when it times out.
    let timeout = Duration::from_millis(100);
    let mut report = Vec::new();
    for name in ["lb", "edge", "fw"] {
        let before = env.wait_running(name, None, limit);
        let old = before.pid.expect("a pid");
        assert_eq!(before.restarts, 0, "{before:?}");
        // Watch status.json for the new process and its /readyz, while this thread
        // measures the traffic.
        let state = env.state();
        let admin = before.admin;
        let name_owned = name.to_string();
        let killed = Instant::now();
        let watcher = std::thread::spawn(move || {
            let mut new_pid = None;
            while killed.elapsed() < limit {
                let s = read_status(&state)
                    .ok()
                    .and_then(|s| s.instances.into_iter().find(|i| i.name == name_owned));
                if s.and_then(|i| i.pid).is_some_and(|p| p != old) {
                    new_pid = Some(killed.elapsed());
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let mut ready = None;
            while new_pid.is_some() && killed.elapsed() < limit {
                if admin_client::ready(admin, Duration::from_millis(200)) {
                    ready = Some(killed.elapsed());
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (new_pid, ready)
        });
        sigkill(old);
        let mut failed = 0;
        let back = loop {
            match get(&mut client, 80, "/", timeout) {
                Ok(_) => break killed.elapsed(),
                Err(_) => failed += 1,
            }
            assert!(
                killed.elapsed() < limit,
                "no traffic {limit:?} after SIGKILL of {name}"
            );
        };
        let (new_pid, ready) = watcher.join().expect("the watcher");
        let new_pid = new_pid.unwrap_or_else(|| panic!("{name} not restarted within {limit:?}"));
        let ready = ready.unwrap_or_else(|| panic!("{name} not ready within {limit:?}"));
        let after = env.wait_running(name, Some(old), limit);
        assert_eq!(after.restarts, 1, "{after:?}");
        assert_eq!(after.last_exit.as_deref(), Some("signal 9"), "{after:?}");
        let line = format!(
            "{name}: SIGKILL -> traffic back in {:.2} s (restart {:.2} s, /readyz {:.2} s; \
             {failed} GET(s) with a {} ms timeout failed)",
            back.as_secs_f64(),
            new_pid.as_secs_f64(),
            ready.as_secs_f64(),
            timeout.as_millis()
        );
        println!("{line}");
        report.push(line);
        // Steady again before the next one: every backend back in the pool.
        env.wait_backends_up(3);
        get_ok(&mut client, 3);
    }
    println!("SIGKILL outages:\n  {}", report.join("\n  "));
}

/// `apply` of an edit that adds a backend and opens a port: reloads in place, no request
/// lost, no restart; then `apply --dry-run` changes nothing.
///
/// A synthetic client closes its connection after each GET and has no API for an idle
/// long-lived connection, so the connections that must survive the reloads are long
/// transfers: a `big` backend serves a 4 MiB body (through the L7 proxy: client -> VIP
/// and the proxy's connection to the backend) and a second client fetches it over and
/// over while the apply runs. The `alt` service on VIP port 8080 is in the load balancer
/// from the start (to the pool's port 80: a synthetic server serves one port), so that
/// only the firewall's rule decides whether 8080 is open.
#[test]
fn apply_adds_backend_and_changes_rule_without_loss() {
    let lab = Lab {
        edge: 134,
        fw: 135,
        lb: 136,
        clients: vec![137, 138, 139],
        webs: vec![140, 141, 142],
        big: Some(143),
        fw2: None,
    };
    let mut chain = Chain::new("apply", lab.clone());
    chain.pool = 2;
    chain.services = vec![Chain::ALT_SERVICE.into()];
    let mut env = Env::new(&chain);
    for k in 0..3 {
        env.serve_web(k);
    }
    env.serve_big();
    env.up();
    env.wait_backends_up(3);
    let mut client = lab.client(2);
    let bodies = get_ok(&mut client, 10);
    assert!(bodies.iter().all(|b| !b.contains("web3")), "{bodies:?}");
    assert!(filtered(&mut client, 8080), "tcp/8080 open before the rule");
    let started = Instant::now();
    let big = get(&mut client, 80, "/big", Duration::from_secs(30)).expect("GET /big");
    assert_eq!(big.len(), BIG_BODY_BYTES);
    println!(
        "GET /big ({BIG_BODY_BYTES} bytes) took {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let pids = env.pids();
    let plan_before = env.plan_files();

    let (stop_small, small) = request_loop(&mut env, 0, "/", Duration::from_secs(3), None);
    let (tx, big_starts) = mpsc::channel();
    let (stop_big, bigs) = request_loop(&mut env, 1, "/big", Duration::from_secs(30), Some(tx));
    std::thread::sleep(Duration::from_millis(1000));

    let mut edited = chain.clone();
    edited.pool = 3;
    edited.fw_rules = vec![Chain::ALT_RULE.into()];
    env.write("chain-v2.yaml", &edited);
    // Apply just after a /big transfer started, so that it runs across the reloads.
    while big_starts.try_recv().is_ok() {}
    big_starts
        .recv_timeout(Duration::from_secs(30))
        .expect("a /big transfer starts");
    let apply_start = Instant::now();
    let out = env.vnfctl(&["apply", "chain-v2.yaml", "--state", STATE]);
    let apply_end = Instant::now();
    assert!(out.status.success(), "apply failed");
    let text = stdout(&out);
    let plus: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("+ "))
        .collect();
    assert!(
        plus.iter().any(|l| l.contains("web3")),
        "no + line with web3:\n{text}"
    );
    assert!(
        plus.iter().any(|l| l.contains("10.0.1.13:80")),
        "no + line with 10.0.1.13:80:\n{text}"
    );
    assert!(
        plus.iter().any(|l| l.contains("8080")),
        "no + line with 8080:\n{text}"
    );
    assert!(
        text.contains("~ fw (firewall): config changes, reloaded in place"),
        "{text}"
    );
    assert!(
        text.contains("~ lb (lb): config changes, reloaded in place"),
        "{text}"
    );
    assert!(
        !text.contains("~ edge"),
        "edge's config should not change:\n{text}"
    );
    assert!(text.contains("reloaded fw"), "{text}");
    assert!(text.contains("reloaded lb"), "{text}");
    assert!(text.contains("applied 2 changes"), "{text}");

    // Port 8080 is open now, and the third backend serves.
    let got = get(&mut client, 8080, "/", GET_TIMEOUT).expect("GET :8080 after the apply");
    assert!(got.starts_with("served by web"), "{got}");
    assert!(!filtered(&mut client, 8080), "tcp/8080 still filtered");
    let seen_web3 = wait_for(Duration::from_secs(10), "web3 in the responses", || {
        get(&mut client, 80, "/", GET_TIMEOUT)
            .ok()
            .filter(|b| b.contains("web3"))
    });
    println!(
        "web3 answered {:.2} s after the apply began",
        apply_start.elapsed().as_secs_f64()
    );
    assert_eq!(seen_web3, Lab::web_body(2));
    std::thread::sleep(Duration::from_millis(500));
    stop_small.store(true, Ordering::SeqCst);
    stop_big.store(true, Ordering::SeqCst);
    let small = small.join().expect("the request loop");
    let bigs = bigs.join().expect("the /big loop");

    let failures: Vec<&Sample> = small.iter().filter(|s| s.outcome.is_err()).collect();
    let during = small
        .iter()
        .filter(|s| s.end >= apply_start && s.start <= apply_end)
        .count();
    println!(
        "request loop: {} GETs, {} during the apply ({:.0} ms), {} failed",
        small.len(),
        during,
        (apply_end - apply_start).as_secs_f64() * 1e3,
        failures.len()
    );
    assert!(during > 0, "no request overlapped the apply");
    assert!(failures.is_empty(), "requests failed: {failures:?}");
    let big_failures: Vec<_> = bigs
        .iter()
        .filter(|s| match &s.outcome {
            Ok(b) => b.len() != BIG_BODY_BYTES || !b.starts_with("served by big"),
            Err(_) => true,
        })
        .map(|s| s.outcome.as_ref().map(String::len))
        .collect();
    let across = bigs
        .iter()
        .filter(|s| s.start <= apply_start && s.end >= apply_end)
        .count();
    let overlapping = bigs
        .iter()
        .filter(|s| s.end >= apply_start && s.start <= apply_end)
        .count();
    println!(
        "/big loop: {} transfers, {overlapping} overlapping the apply, {across} spanning all of it",
        bigs.len()
    );
    assert!(
        big_failures.is_empty(),
        "/big transfers failed: {big_failures:?}"
    );
    assert!(overlapping > 0, "no /big transfer overlapped the apply");
    assert!(across > 0, "no /big transfer spanned the apply");

    assert_eq!(env.pids(), pids, "an instance was restarted by the apply");
    let plan_after = env.plan_files();
    assert_ne!(plan_after, plan_before);

    // A dry run of another change shows it and changes nothing.
    let mut third = edited.clone();
    third.fw_rules.push(Chain::SSH_RULE.into());
    env.write("chain-v3.yaml", &third);
    let out = env.vnfctl(&["apply", "chain-v3.yaml", "--state", STATE, "--dry-run"]);
    assert!(out.status.success(), "apply --dry-run failed");
    let text = stdout(&out);
    assert!(text.contains("~ fw (firewall)"), "{text}");
    assert!(text.contains("+   - name: ssh"), "{text}");
    assert!(text.contains("dry run: nothing changed"), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("reloaded ")), "{text}");
    assert_eq!(env.plan_files(), plan_after, "a dry run changed the plan");
    assert_eq!(env.pids(), pids);
    // The firewall still drops SSH (with the rule the load balancer would reset it).
    assert!(
        filtered(&mut client, 22),
        "tcp/22 not filtered after a dry run"
    );
    get_ok(&mut client, 3);
}

/// `apply` of a file with validation errors, and of one an instance refuses at reload:
/// exit 1, nothing changes, traffic flows.
#[test]
fn apply_invalid_is_refused_and_nothing_changes() {
    let lab = Lab {
        edge: 144,
        fw: 145,
        lb: 146,
        clients: vec![147],
        webs: vec![148, 149, 150],
        big: None,
        fw2: None,
    };
    let chain = Chain::new("invalid", lab.clone());
    let mut env = Env::new(&chain);
    for k in 0..3 {
        env.serve_web(k);
    }
    env.up();
    env.wait_backends_up(3);
    let mut client = lab.client(0);
    get_ok(&mut client, 5);
    let pids = env.pids();
    let plan = env.plan_files();

    // Validation errors: VNI 0 (the chain file's own check), then a service of a pool that
    // does not exist (the load balancer's config compiler's check, reported at the chain
    // file's line): each at FILE:LINE:COLUMN of the value.
    let mut bad_vni = chain.clone();
    bad_vni.outside_vni = 0;
    let mut bad_pool = chain.clone();
    bad_pool.www_pool = "nope".into();
    for (file, bad, value) in [
        ("chain-vni0.yaml", &bad_vni, "0"),
        ("chain-pool.yaml", &bad_pool, "nope"),
    ] {
        env.write(file, bad);
        let needle = if value == "0" { "vni: 0" } else { "pool: nope" };
        let (line, col) = bad
            .yaml()
            .lines()
            .enumerate()
            .find_map(|(n, l)| {
                l.find(needle)
                    .map(|c| (n + 1, c + needle.len() - value.len() + 1))
            })
            .unwrap_or_else(|| panic!("{needle} not in the chain"));
        let out = env.vnfctl(&["apply", file, "--state", STATE]);
        assert_eq!(out.status.code(), Some(1), "apply of {file}");
        let at = format!("{file}:{line}:{col}: ");
        assert!(
            stderr(&out).contains(&at),
            "no `{at}` in:\n{}",
            stderr(&out)
        );
        assert!(stdout(&out).contains("nothing changed"), "{}", stdout(&out));
        assert_eq!(env.plan_files(), plan, "{file} changed the plan");
        get_ok(&mut client, 5);
    }

    // Valid, but the load balancer refuses it at reload (its certificate files do not
    // exist); the firewall, earlier in the chain, takes its change first and is rolled back.
    let mut refused = chain.clone();
    refused.fw_rules = vec![Chain::SSH_RULE.into()];
    refused.services =
        vec!["{name: secure, vip: 10.0.9.10, port: 443, protocol: https, pool: web}".into()];
    refused.tls =
        Some("{certificates: [{cert: /nonexistent/x.pem, key: /nonexistent/x.key}]}".into());
    env.write("chain-tls.yaml", &refused);
    let out = env.vnfctl(&["apply", "chain-tls.yaml", "--state", STATE]);
    assert_eq!(out.status.code(), Some(1), "apply refused by an instance");
    let text = stdout(&out);
    assert!(text.contains("reloaded fw"), "{text}");
    assert!(text.contains("lb refused its new config"), "{text}");
    assert!(text.contains("/nonexistent/x.pem"), "{text}");
    assert!(text.contains("rolled back fw"), "{text}");
    assert!(!text.contains("could not roll back"), "{text}");
    assert!(text.contains("apply refused"), "{text}");
    assert_eq!(env.plan_files(), plan, "a refused apply changed the plan");
    get_ok(&mut client, 5);
    // The firewall runs its old rules again: SSH is dropped (with the new rule the load
    // balancer, which has no service on 22, would reset it).
    assert!(
        filtered(&mut client, 22),
        "tcp/22 not filtered after the rollback"
    );
    assert_eq!(env.pids(), pids, "an instance was restarted");
    for name in ["edge", "fw", "lb"] {
        assert_eq!(env.instance(name).expect(name).restarts, 0);
    }
    let out = env.vnfctl(&["status", "--state", STATE]);
    assert!(
        out.status.success(),
        "the chain is unhealthy after refused applies"
    );
}

/// `apply` that inserts a second firewall hop starts it, and traffic takes the new path;
/// `apply` of the original file stops it again.
#[test]
fn apply_adds_and_removes_an_instance() {
    let lab = Lab {
        edge: 151,
        fw: 152,
        lb: 153,
        clients: vec![154],
        webs: vec![155, 156],
        big: None,
        fw2: Some(157),
    };
    let mut chain = Chain::new("addremove", lab.clone());
    // fw accepts 8080 too; fw2 will not: whether 8080 is open tells which path is taken.
    chain.fw_rules = vec![Chain::ALT_RULE.into()];
    chain.services = vec![Chain::ALT_SERVICE.into()];
    let mut env = Env::new(&chain);
    for k in 0..2 {
        env.serve_web(k);
    }
    env.up();
    env.wait_backends_up(2);
    let mut client = lab.client(0);
    get_ok(&mut client, 5);
    assert!(
        !filtered(&mut client, 8080),
        "tcp/8080 filtered without fw2"
    );
    let pids = env.pids();

    let mut with_fw2 = chain.clone();
    with_fw2.fw2 = true;
    env.write("chain-fw2.yaml", &with_fw2);
    let out = env.vnfctl(&["apply", "chain-fw2.yaml", "--state", STATE]);
    assert!(out.status.success(), "apply adding fw2 failed");
    let text = stdout(&out);
    assert!(
        text.contains(&format!("+ fw2 (firewall): new instance on {}", lo(157))),
        "{text}"
    );
    assert!(text.contains("started fw2"), "{text}");
    let fw2 = env.wait_running("fw2", None, Duration::from_secs(15));
    let fw2_pid = fw2.pid.expect("a pid");
    let names: Vec<String> = read_status(&env.state())
        .expect("status.json")
        .instances
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["edge", "fw", "fw2", "lb"]);
    for (name, pid) in &pids {
        assert_eq!(
            env.instance(name).and_then(|i| i.pid),
            Some(*pid),
            "{name} restarted"
        );
    }
    // Traffic flows, through fw2.
    wait_for(Duration::from_secs(10), "traffic through fw2", || {
        get(&mut client, 80, "/", GET_TIMEOUT).ok()
    });
    let fw2_admin = lab.admin("fw2");
    let rx_before = metric(fw2_admin, "vnf_port_rx_packets_total");
    get_ok(&mut client, 10);
    let rx_after = metric(fw2_admin, "vnf_port_rx_packets_total");
    println!("fw2 received {} packets for 10 GETs", rx_after - rx_before);
    assert!(rx_after - rx_before >= 10.0, "{rx_before} -> {rx_after}");
    assert!(
        filtered(&mut client, 8080),
        "tcp/8080 passes although fw2 drops it"
    );
    let out = env.vnfctl(&["status", "--state", STATE]);
    assert!(out.status.success(), "status with fw2");

    // And back.
    let out = env.vnfctl(&["apply", CHAIN, "--state", STATE]);
    assert!(out.status.success(), "apply removing fw2 failed");
    let text = stdout(&out);
    assert!(text.contains("- fw2 (firewall): removed"), "{text}");
    wait_for(Duration::from_secs(15), "fw2 gone", || {
        (env.instance("fw2").is_none() && !alive(fw2_pid)).then_some(())
    });
    assert_eq!(env.pids(), pids);
    wait_for(Duration::from_secs(10), "traffic without fw2", || {
        get(&mut client, 80, "/", GET_TIMEOUT).ok()
    });
    get_ok(&mut client, 5);
    assert!(
        !filtered(&mut client, 8080),
        "tcp/8080 filtered after fw2 left"
    );
    assert!(
        !env.path("state/plan/fw2.yaml").exists(),
        "fw2's config is left"
    );
}

/// Renaming an instance that keeps its host: the new one may only start once the old one
/// has freed the host's VXLAN port and admin address, and `apply` reports it started only
/// when the supervisor runs it (the old process answered the admin address until then).
#[test]
fn apply_renaming_an_instance_on_its_host_starts_it_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = |name: &str| {
        format!(
            "tenant: rename\n\
             networks:\n\
             \x20 - {{name: outside, vni: 300, vteps: [127.0.0.159], subnet: 192.0.2.0/24}}\n\
             \x20 - {{name: web, vni: 100, vteps: [], subnet: 10.0.1.0/24}}\n\
             functions:\n\
             \x20 - {{name: {name}, kind: firewall, host: 127.0.0.158, addresses: {{outside: 192.0.2.2, web: 10.0.1.1}}}}\n\
             chains:\n\
             \x20 - {{name: in, from: outside, to: web, hops: [{name}]}}\n"
        )
    };
    std::fs::write(dir.path().join("a.yaml"), chain("fw")).expect("write");
    std::fs::write(dir.path().join("b.yaml"), chain("fwb")).expect("write");
    let run = |args: &[&str]| {
        Command::new(VNFCTL)
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("run vnfctl")
    };
    let bins = bin_dir().to_str().expect("utf-8 path").to_string();
    struct Down<'a>(&'a Path);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = Command::new(VNFCTL)
                .args(["down", "--state", "st"])
                .current_dir(self.0)
                .output();
        }
    }
    let _down = Down(dir.path());
    let out = run(&["up", "a.yaml", "--state", "st", "--bin-dir", &bins]);
    assert!(out.status.success(), "up: {}", stderr(&out));
    let out = run(&["apply", "b.yaml", "--state", "st"]);
    let text = stdout(&out);
    assert!(out.status.success(), "apply: {text}{}", stderr(&out));
    assert!(
        text.contains("stopped fw\n") && text.contains("started fwb\n"),
        "{text}"
    );
    // Right after apply: fwb runs, ready, never restarted (its first start did not race
    // the old process for the port).
    let status = read_status(&dir.path().join("st")).expect("status.json");
    let names: Vec<&str> = status.instances.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["fwb"]);
    assert_eq!(status.instances[0].restarts, 0, "{status:?}");
    let out = run(&["status", "--state", "st"]);
    assert!(out.status.success(), "status: {}", stdout(&out));
}
