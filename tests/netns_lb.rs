//! vnf-lb between kernel `vxlan` hosts, with real peers: nginx backends, curl and wrk
//! clients, openssl, python3 socket clients and servers, hping3.
//!
//! Every test builds its own underlay in network namespaces:
//!
//! ```text
//!                sw: Linux bridge br0 (the underlay switch), 198.18.0.0/24
//!      +--------------------+---------------------+------------------------------+
//!  lb: ul0 198.18.0.1    hv2: ul0 198.18.0.2     hv3, hv4, hv5: ul0 198.18.0.3, .4, .5
//!  vnf-lb                vx0: kernel vxlan       vx0: kernel vxlan VNI 200
//!  port front VNI 100         VNI 100            backends b1, b2, b3:
//!  port back  VNI 200    client 10.0.1.5/24      10.0.2.10, .11, .12 /24
//!  front 10.0.1.1/24     gw 10.0.1.1             gw 10.0.2.1
//!  back  10.0.2.1/24                             nginx on :80 (and python on :7000)
//!
//!  VIP 10.0.1.100:  80 L4 tcp (full NAT or DNAT)   8080 L7 http
//!                  443 L7 https                    7000 L4 tcp (line echo)
//! ```
//!
//! The hosts are the hypervisors' own `vx0` devices (learning off, head-end replication to
//! the load balancer only), with transmit checksum offload off on their `ul0` (see
//! README). Each backend runs its own nginx (config, pid and logs in the test's work
//! directory, one process: `master_process off`) answering `/` with its name, `/healthz`
//! for the health checks, and `/whoami`, `/api` and `/api/...` with the addresses it saw
//! (`$remote_addr`, `X-Forwarded-For`, `X-Forwarded-Proto`). Health checks run every
//! 500 ms with a 300 ms timeout, rise 2 and fall 2.
//!
//! The sections: 1. serving (full NAT, DNAT, L7, under wrk); 2. weights (shares of new
//! connections, L4 and L7); 3. health (a stopped backend leaves and comes back, none
//! left: RST and 503); 4. a long-lived connection across reloads and a drain; 5. TLS
//! (certificates by SNI, versions, reload, HTTPS routing); 6. bad input (malformed
//! requests, garbage, SYN floods).
//!
//! Besides the tools of the other interop tests these need `nginx`, `wrk`, `openssl`,
//! `hping3` and `python3` (Debian packages `nginx-light`, `wrk`, `openssl`, `hping3`),
//! which `.ci/run` must install.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vnf_tests::netns::{
    Family, Netns, Proc, Switch, VNF_ADMIN, Vnf, WorkDir, have_root, have_tool, hypervisor, ping,
    prom, router_ns, run, serial, underlay_switch, wait_for,
};

/// The virtual address of every service.
const VIP: &str = "10.0.1.100";
/// The client's address.
const CLIENT: &str = "10.0.1.5";
/// The load balancer's address toward the backends: full NAT's source.
const LB_BACK: &str = "10.0.2.1";

/// Health checks of the nginx pools: 500 ms apart, 300 ms each, fall and rise 2.
const HEALTH: &str =
    "{check: http, path: /healthz, interval: 500ms, timeout: 300ms, rise: 2, fall: 2}";
/// How long a dead backend may stay in the pool: interval × fall + timeout.
const CHECK_TIME: Duration = Duration::from_millis(500 * 2 + 300);

/// Every tool is installed (`have_tool` prints which one is not; under CI it fails).
fn tools(test: &str, extra: &[&str]) -> bool {
    [
        "ip", "bridge", "ethtool", "ping", "curl", "ss", "python3", "nginx",
    ]
    .iter()
    .chain(extra)
    .all(|t| have_tool(test, t))
}

/// The backends' names, addresses and underlay nodes.
const BACKENDS: [(&str, &str, u8); 3] = [
    ("b1", "10.0.2.10", 3),
    ("b2", "10.0.2.11", 4),
    ("b3", "10.0.2.12", 5),
];

/// The load balancer's config: the fixed topology, then `pools`, `services` and `tail`
/// (YAML list items and sections as written).
fn config(pools: &str, services: &str, tail: &str) -> String {
    format!(
        "underlay:\n  address: 198.18.0.1\n\
         ports:\n\
         \x20 - {{name: front, vni: 100, flood: [198.18.0.2]}}\n\
         \x20 - {{name: back, vni: 200, flood: [198.18.0.3, 198.18.0.4, 198.18.0.5]}}\n\
         interfaces:\n\
         \x20 - {{name: front, port: front, addresses: [10.0.1.1/24]}}\n\
         \x20 - {{name: back, port: back, addresses: [10.0.2.1/24]}}\n\
         pools:\n{pools}\
         services:\n{services}\
         {tail}"
    )
}

/// One pool: `(backend, address:port, weight)` with `health` (a YAML flow mapping).
fn pool(name: &str, backends: &[(&str, &str, u32)], health: &str) -> String {
    let mut s = format!("  - name: {name}\n    health: {health}\n    backends:\n");
    for (b, addr, w) in backends {
        s.push_str(&format!(
            "      - {{name: {b}, address: \"{addr}\", weight: {w}}}\n"
        ));
    }
    s
}

/// A service on the VIP.
fn service(name: &str, port: u16, protocol: &str, pool: &str, extra: &str) -> String {
    format!(
        "  - {{name: {name}, vip: {VIP}, port: {port}, protocol: {protocol}, pool: {pool}{extra}}}\n"
    )
}

/// The usual services: `l4` on port 80 (`mode`) and `l7` (HTTP) on port 8080, both to
/// pool `web`.
fn web_services(mode: &str) -> String {
    service("l4", 80, "tcp", "web", &format!(", mode: {mode}"))
        + &service("l7", 8080, "http", "web", "")
}

/// A tenant host on hypervisor `n`: `vx0` on `vni` flooding to the load balancer, with
/// `addr`/24 and a default route via `gw`.
fn host(sw: &Switch, n: u8, vni: u32, addr: &str, gw: &str) -> Netns {
    let hv = hypervisor(sw, n, vni, &[1]);
    hv.run("ip addr flush dev vx0");
    hv.run(&format!("ip addr add {addr}/24 dev vx0"));
    hv.run(&format!("ip route add default via {gw} dev vx0"));
    hv
}

/// A backend host and its nginx.
struct Backend {
    name: &'static str,
    addr: &'static str,
    nginx: Option<Proc>,
    conf: PathBuf,
    access: PathBuf,
    error: PathBuf,
    ns: Netns,
}

impl Backend {
    fn new(sw: &Switch, dir: &Path, (name, addr, node): (&'static str, &'static str, u8)) -> Self {
        let ns = host(sw, node, 200, addr, LB_BACK);
        let d = dir.display();
        let access = dir.join(format!("nginx-{name}-access.log"));
        let error = dir.join(format!("nginx-{name}-error.log"));
        let conf = dir.join(format!("nginx-{name}.conf"));
        // Bodies name the backend and what it saw; `\n` is nginx's escape, not Rust's.
        let seen = "remote=$remote_addr xff=$http_x_forwarded_for proto=$http_x_forwarded_proto";
        std::fs::write(
            &conf,
            format!(
                "user root;\n\
                 worker_processes 1;\n\
                 master_process off;\n\
                 daemon off;\n\
                 pid {d}/nginx-{name}.pid;\n\
                 error_log {};\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n\
                 \x20 default_type text/plain;\n\
                 \x20 log_format peer '$remote_addr $request_method $request_uri $status';\n\
                 \x20 access_log {} peer;\n\
                 \x20 keepalive_requests 100000;\n\
                 \x20 client_body_temp_path {d}/nginx-{name}-body;\n\
                 \x20 proxy_temp_path {d}/nginx-{name}-proxy;\n\
                 \x20 fastcgi_temp_path {d}/nginx-{name}-fastcgi;\n\
                 \x20 uwsgi_temp_path {d}/nginx-{name}-uwsgi;\n\
                 \x20 scgi_temp_path {d}/nginx-{name}-scgi;\n\
                 \x20 server {{\n\
                 \x20   listen {addr}:80 backlog=1024;\n\
                 \x20   location / {{ return 200 \"{name}\\n\"; }}\n\
                 \x20   location = /healthz {{ access_log off; return 200 \"ok\\n\"; }}\n\
                 \x20   location /whoami {{ return 200 \"{name} {seen}\\n\"; }}\n\
                 \x20   location = /api {{ return 200 \"{name} api {seen}\\n\"; }}\n\
                 \x20   location /api/ {{ return 200 \"{name} api {seen}\\n\"; }}\n\
                 \x20 }}\n\
                 }}\n",
                error.display(),
                access.display()
            ),
        )
        .expect("write nginx config");
        let mut b = Backend {
            name,
            addr,
            nginx: None,
            conf,
            access,
            error,
            ns,
        };
        b.start();
        b
    }

    fn listening(&self) -> bool {
        self.ns
            .sh(&format!(
                "ss -Hltn 'sport = :80' | grep -q '{}:80'",
                self.addr
            ))
            .status
            .success()
    }

    /// Start nginx; returns once it listens.
    fn start(&mut self) {
        let conf = self.conf.display();
        let err = self.error.display();
        let p = self.ns.spawn_logged(
            &format!("nginx -c {conf} -e {err}"),
            Some(&self.error.with_extension("out")),
        );
        self.nginx = Some(p);
        assert!(
            wait_for(Duration::from_secs(10), || self.listening()),
            "nginx {} did not start:\n{}",
            self.name,
            std::fs::read_to_string(&self.error).unwrap_or_default()
        );
    }

    /// Stop nginx (SIGKILL: one process, `master_process off`); returns once it is gone.
    fn stop(&mut self) {
        if let Some(mut p) = self.nginx.take() {
            p.signal(libc::SIGKILL);
            p.wait_timeout(Duration::from_secs(5));
        }
        assert!(
            wait_for(Duration::from_secs(5), || !self.listening()),
            "nginx {} still listens",
            self.name
        );
    }

    /// The access log: `remote method uri status` per request.
    fn access_log(&self) -> String {
        std::fs::read_to_string(&self.access).unwrap_or_default()
    }
}

/// One test's world. Fields drop in order: the load balancer (printing its log on
/// failure), the client, the backends (their nginx first), the switch, the work dir.
struct Net {
    lb: Vnf,
    client: Netns,
    backends: Vec<Backend>,
    py: Scripts,
    _sw: Switch,
    dir: WorkDir,
}

/// A row of `GET /state/backends`.
#[derive(Debug, Clone)]
struct Row {
    up: bool,
    accepting: bool,
    l4_active: u64,
}

impl Net {
    /// Build the topology with the first `n` backends (nginx running), start vnf-lb with
    /// `yaml`, and return once every host reaches it and every backend of its config is up.
    fn new(dir: WorkDir, n: usize, yaml: &str) -> Net {
        let net = Net::build(dir, n, yaml);
        net.wait_all_up();
        net
    }

    /// [`Net::new`] without waiting for the backends to be up.
    fn build(dir: WorkDir, n: usize, yaml: &str) -> Net {
        let sw = underlay_switch(Family::V4);
        let client = host(&sw, 2, 100, CLIENT, "10.0.1.1");
        let backends: Vec<Backend> = BACKENDS[..n]
            .iter()
            .map(|b| Backend::new(&sw, &dir, *b))
            .collect();
        let lb = Vnf::start("vnf-lb", router_ns(&sw), &dir, yaml);
        let py = Scripts::write(&dir);
        let net = Net {
            lb,
            client,
            backends,
            py,
            _sw: sw,
            dir,
        };
        net.warm_up(&net.client, "10.0.1.1");
        for b in &net.backends {
            net.warm_up(&b.ns, LB_BACK);
        }
        net
    }

    /// Ping until one answer comes (ARP resolved on the way), up to 10 s.
    fn warm_up(&self, ns: &Netns, dst: &str) {
        let ok = wait_for(Duration::from_secs(10), || {
            ns.sh(&format!("ping -n -c 1 -W 1 {dst}")).status.success()
        });
        let (_, out) = ping(ns, &format!("-c 1 -W 1 {dst}"));
        assert!(ok, "{} cannot reach {dst} (warm-up):\n{out}", ns.name);
    }

    /// `GET /state/backends` by (pool, backend).
    fn rows(&self) -> BTreeMap<(String, String), Row> {
        self.lb
            .state("backends")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w.len() >= 8).then(|| {
                    (
                        (w[0].to_owned(), w[1].to_owned()),
                        Row {
                            up: w[4] == "up",
                            accepting: w[5] == "yes",
                            l4_active: w[6].parse().unwrap_or(0),
                        },
                    )
                })
            })
            .collect()
    }

    fn row(&self, pool: &str, backend: &str) -> Option<Row> {
        self.rows().remove(&(pool.to_owned(), backend.to_owned()))
    }

    /// Wait until every backend of the config is up (checks start at once), up to 10 s.
    fn wait_all_up(&self) {
        let ok = wait_for(Duration::from_secs(10), || {
            self.rows().values().all(|r| r.up)
        });
        assert!(
            ok,
            "backends did not come up:\n{}",
            self.lb.state("backends")
        );
    }

    /// Poll (every 20 ms, up to `timeout`) until `pool/backend` is `up` (or down): how long
    /// it took, `None` if it did not happen.
    fn time_until(
        &self,
        pool: &str,
        backend: &str,
        up: bool,
        timeout: Duration,
    ) -> Option<Duration> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.row(pool, backend).is_some_and(|r| r.up == up) {
                return Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn backend(&mut self, name: &str) -> &mut Backend {
        self.backends
            .iter_mut()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name}"))
    }

    /// `n` new connections from the client to `VIP:port`, one `GET path` each: the
    /// answers (the first word of 200 bodies, by count) and the failures (by kind).
    fn conns(&self, port: u16, n: u32, path: &str) -> (Counts, Counts) {
        self.conns_timeout(port, n, path, 5.0)
    }

    /// [`Net::conns`] with a timeout of `secs` for each connection's every step.
    fn conns_timeout(&self, port: u16, n: u32, path: &str, secs: f64) -> (Counts, Counts) {
        let out = self.client.sh(&format!(
            "python3 {} {VIP} {port} {n} {path} {secs}",
            self.py.conns.display()
        ));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "conns.py failed:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (mut ok, mut err) = (Counts::new(), Counts::new());
        for l in text.lines() {
            let w: Vec<&str> = l.split_whitespace().collect();
            if let [kind, what, n] = w[..] {
                let n = n.parse().unwrap_or(0);
                match kind {
                    "ok" => ok.insert(what.to_owned(), n),
                    _ => err.insert(what.to_owned(), n),
                };
            }
        }
        (ok, err)
    }

    /// `curl` from the client with `args`: (exit code, HTTP status, body, seconds).
    fn curl(&self, args: &str) -> (i32, u16, String, f64) {
        let t0 = Instant::now();
        let out = self
            .client
            .sh(&format!("curl -s -m 5 -w '\\n%{{http_code}}' {args}"));
        let secs = t0.elapsed().as_secs_f64();
        let all = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = all.rsplit_once('\n').unwrap_or(("", all.as_str()));
        (
            out.status.code().unwrap_or(-1),
            code.trim().parse().unwrap_or(0),
            body.to_owned(),
            secs,
        )
    }

    /// `wrk` from the client against `url` for `secs` seconds over `conns` connections.
    fn wrk(&self, url: &str, secs: u32, conns: u32) -> Wrk {
        let out = self
            .client
            .sh(&format!("wrk -t1 -c{conns} -d{secs}s --timeout 2s {url}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "wrk {url} failed:\n{text}");
        Wrk::parse(&text)
    }

    /// `POST /action/NAME?pool=POOL&backend=BACKEND`: (HTTP status, body).
    fn action(&self, name: &str, pool: &str, backend: &str) -> (u16, String) {
        let out = self.lb.ns.sh(&format!(
            "curl -s -m 10 -X POST -w '\\n%{{http_code}}' 'http://{VNF_ADMIN}/action/{name}?pool={pool}&backend={backend}'"
        ));
        let all = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = all.rsplit_once('\n').unwrap_or(("", all.as_str()));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// `echo.py` on port 7000 of every backend, answering lines with the backend's name.
    fn echo_servers(&self) -> Vec<Proc> {
        self.backends
            .iter()
            .map(|b| {
                let log = self.dir.join(format!("echo-{}.log", b.name));
                let p = b.ns.spawn_logged(
                    &format!("python3 -u {} {} 7000", self.py.echo.display(), b.name),
                    Some(&log),
                );
                assert!(
                    wait_for(Duration::from_secs(10), || std::fs::read_to_string(&log)
                        .is_ok_and(|s| s.contains("listening"))),
                    "echo.py on {} did not start",
                    b.name
                );
                p
            })
            .collect()
    }

    /// A sample of the load balancer's metrics, 0 if absent.
    fn sample(&self, key: &str) -> f64 {
        prom(&self.lb.metrics(), key).unwrap_or(0.0)
    }

    /// The load balancer still runs and answers `/healthz` and `/readyz`.
    fn assert_healthy(&mut self) {
        let ok = self.lb.healthy()
            && self
                .lb
                .ns
                .sh(&format!("curl -sf -m 5 http://{VNF_ADMIN}/readyz"))
                .status
                .success();
        assert!(ok, "vnf-lb is not healthy:\n{}", self.lb.log_text());
    }
}

type Counts = BTreeMap<String, u64>;

/// What `wrk` reported.
#[derive(Debug)]
struct Wrk {
    requests: u64,
    rps: f64,
    non_2xx: u64,
    socket_errors: u64,
    text: String,
}

impl Wrk {
    fn parse(text: &str) -> Wrk {
        let num = |prefix: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(prefix))
                .map(str::trim)
        };
        let requests = text
            .lines()
            .find(|l| l.contains(" requests in "))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        // `Socket errors: connect 0, read 0, write 0, timeout 0` (only when not all 0).
        let socket_errors = num("Socket errors:").map_or(0, |s| {
            s.split(',')
                .filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum()
        });
        Wrk {
            requests,
            rps: num("Requests/sec:")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0),
            non_2xx: num("Non-2xx or 3xx responses:")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            socket_errors,
            text: text.to_owned(),
        }
    }

    /// Panics unless every request got a 2xx and no socket failed.
    fn assert_clean(&self, what: &str) {
        assert!(
            self.requests > 0 && self.non_2xx == 0 && self.socket_errors == 0,
            "{what}: wrk saw failures:\n{}",
            self.text
        );
    }
}

/// The python helpers, written into the work dir.
struct Scripts {
    conns: PathBuf,
    sink: PathBuf,
    echo: PathBuf,
    hold: PathBuf,
    raw: PathBuf,
    tls: PathBuf,
}

impl Scripts {
    fn write(dir: &Path) -> Scripts {
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write python helper");
            p
        };
        // HOST PORT N PATH: N new connections, one GET each; counts of the first word of
        // 200 bodies, and of failures.
        let conns = write(
            "conns.py",
            r#"import collections, socket, sys
host, port, n, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 5
req = ('GET %s HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n' % path).encode()
ok, err = collections.Counter(), collections.Counter()
for i in range(n):
    try:
        s = socket.create_connection((host, port), timeout=timeout)
        if path == 'line':
            s.sendall(b'hello\n')
            reply = s.makefile('rb').readline()
            s.close()
            if reply.endswith(b' hello\n'):
                ok[reply.split()[0].decode()] += 1
            else:
                err['no-echo'] += 1
            continue
        s.sendall(req)
        data = b''
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
        s.close()
        head, _, body = data.partition(b'\r\n\r\n')
        status = head.split(b' ')[1].decode() if b' ' in head else 'none'
        if status == '200' and body.split():
            ok[body.split()[0].decode()] += 1
        else:
            err['status-' + status] += 1
    except OSError as e:
        err[type(e).__name__] += 1
for k, v in sorted(ok.items()):
    print('ok', k, v)
for k, v in sorted(err.items()):
    print('err', k, v)
"#,
        );
        // NAME PORT: a TCP server answering each line with `NAME line`.
        let echo = write(
            "echo.py",
            r#"import socket, sys, threading
name, port = sys.argv[1].encode(), int(sys.argv[2])
def serve(c):
    with c:
        f = c.makefile('rb')
        try:
            for line in f:
                c.sendall(name + b' ' + line)
        except OSError:
            pass
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('', port))
s.listen(64)
print('listening', flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#,
        );
        // HOST PORT STOPFILE: one connection, a numbered line every 100 ms until STOPFILE
        // exists, each answer checked (same backend, same line).
        let hold = write(
            "hold.py",
            r#"import os, socket, sys, time
host, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port), timeout=5)
f = s.makefile('rb')
sent = echoed = 0
backend = None
fail = None
while not os.path.exists(stop):
    sent += 1
    msg = b'line %d\n' % sent
    try:
        s.sendall(msg)
        reply = f.readline()
    except OSError as e:
        fail = 'line %d: %r' % (sent, e)
        break
    name, _, rest = reply.partition(b' ')
    if rest != msg or (backend is not None and name.decode() != backend):
        fail = 'line %d: got %r' % (sent, reply)
        break
    if backend is None:
        backend = name.decode()
        print('on', backend, flush=True)
    echoed += 1
    if echoed % 10 == 0:
        print('echoed', echoed, flush=True)
    time.sleep(0.1)
print('sent', sent, 'echoed', echoed, flush=True)
if fail:
    print('fail', fail, flush=True)
    sys.exit(1)
"#,
        );
        // HOST PORT CASE: one connection sending a crafted request; prints how it ended
        // (closed, reset, timeout), the seconds, the first bytes of the answer.
        let raw = write(
            "raw.py",
            r#"import socket, sys, time
host, port, case = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cases = {
    'big_header': b'GET /big HTTP/1.1\r\nHost: lb\r\nX-Big: ' + b'a' * 20000 + b'\r\n\r\n',
    'cl_te': b'POST /smuggle HTTP/1.1\r\nHost: lb\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: lb\r\n\r\n',
    'bad_chunk': b'POST /badchunk HTTP/1.1\r\nHost: lb\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n',
    'garbage': b'\x00\xff\x13\x37 garbage, not a TLS record \xde\xad\xbe\xef\r\n' * 64,
    # The head first; the bad chunk 0.3 s later, once the head may have been forwarded.
    'bad_chunk_late': (b'POST /badchunklate HTTP/1.1\r\nHost: lb\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n', b'-1\r\nhello\r\n0\r\n\r\n'),
    'good': b'GET / HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n',
}
parts = cases[case] if isinstance(cases[case], tuple) else (cases[case],)
s = socket.create_connection((host, port), timeout=5)
t0 = time.monotonic()
data, end = b'', None
try:
    for i, p in enumerate(parts):
        if i:
            time.sleep(0.3)
        s.sendall(p)
except OSError as e:
    end = 'send-' + type(e).__name__
try:
    while True:
        d = s.recv(65536)
        if not d:
            end = end or 'closed'
            break
        data += d
except socket.timeout:
    end = end or 'timeout'
except ConnectionResetError:
    end = end or 'reset'
first = data.split(b'\r\n', 1)[0]
print(end, '%.3f' % (time.monotonic() - t0), len(data), first.decode('latin-1') if first.startswith(b'HTTP/') else data[:8].hex())
"#,
        );
        // HOST PORT SNI GOFILE: a TLS connection: prints the server certificate's SHA-256,
        // answers a GET, waits for GOFILE, answers another GET on the same connection.
        let tls = write(
            "tls.py",
            r#"import hashlib, os, socket, ssl, sys, time
host, port, sni, go = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname=sni)
print('cert', hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest(), flush=True)
f = s.makefile('rb')
def get(path):
    s.sendall(b'GET %s HTTP/1.1\r\nHost: %s\r\n\r\n' % (path.encode(), sni.encode()))
    status = f.readline().split()[1].decode()
    length = 0
    while True:
        l = f.readline()
        if l in (b'\r\n', b''):
            break
        k, _, v = l.partition(b':')
        if k.strip().lower() == b'content-length':
            length = int(v)
    return status, f.read(length).decode().split()[0]
print('before', *get('/'), flush=True)
end = time.monotonic() + 20
while not os.path.exists(go) and time.monotonic() < end:
    time.sleep(0.05)
print('after', *get('/'), flush=True)
"#,
        );
        // PORT LOG: a TCP server that never answers, appending what it receives to LOG.
        let sink = write(
            "sink.py",
            r#"import socket, sys, threading
port, log = int(sys.argv[1]), sys.argv[2]
lock = threading.Lock()
def serve(c):
    with c:
        while True:
            d = c.recv(65536)
            if not d:
                return
            with lock, open(log, 'ab') as f:
                f.write(d)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('', port))
s.listen(64)
print('listening', flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#,
        );
        Scripts {
            conns,
            sink,
            echo,
            hold,
            raw,
            tls,
        }
    }
}

/// Assert each backend's share of `ok` is within ±5 percentage points of `want` (percent).
fn assert_shares(what: &str, ok: &Counts, want: &[(&str, f64)]) {
    let total: u64 = ok.values().sum();
    let mut line = String::new();
    for (b, w) in want {
        let got = 100.0 * *ok.get(*b).unwrap_or(&0) as f64 / total.max(1) as f64;
        line.push_str(&format!(" {b} {got:.1}% (want {w}%)"));
    }
    eprintln!("{what}: {total} connections:{line}");
    for (b, w) in want {
        let got = 100.0 * *ok.get(*b).unwrap_or(&0) as f64 / total.max(1) as f64;
        assert!(
            (got - w).abs() <= 5.0,
            "{what}: {b} got {got:.1}% of {total}, want {w}% ± 5:{line}"
        );
    }
    assert!(
        ok.keys().all(|k| want.iter().any(|(b, _)| b == k)),
        "{what}: answers from unknown backends: {ok:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 1. Serving: full NAT, DNAT, L7; load with wrk.
// ---------------------------------------------------------------------------------------

/// Full NAT on the L4 VIP and the L7 VIP in front of two nginx: curl reaches both
/// backends through each; nginx sees the load balancer's back address 10.0.2.1 (L4 full
/// NAT and L7), with `X-Forwarded-For: 10.0.1.5` and `X-Forwarded-Proto: http` on L7 only;
/// wrk through each VIP for 3 s gets only 2xx and no socket error, and the per-backend
/// connection counters count both backends.
#[test]
fn full_nat_and_l7_serve_from_nginx_under_wrk() {
    const T: &str = "full_nat_and_l7_serve_from_nginx_under_wrk";
    let _g = serial();
    if !have_root(T) || !tools(T, &["wrk"]) {
        return;
    }
    let yaml = config(
        &pool(
            "web",
            &[("b1", "10.0.2.10:80", 1), ("b2", "10.0.2.11:80", 1)],
            HEALTH,
        ),
        &web_services("full_nat"),
        "",
    );
    let mut n = Net::new(WorkDir::new(T), 2, &yaml);

    for (port, what) in [(80, "L4"), (8080, "L7")] {
        let mut seen = BTreeMap::new();
        for _ in 0..20 {
            let (rc, code, body, _) = n.curl(&format!("http://{VIP}:{port}/whoami"));
            assert_eq!((rc, code), (0, 200), "{what} curl failed: {body}");
            *seen.entry(body.trim().to_owned()).or_insert(0) += 1;
        }
        eprintln!("{T}: {what} /whoami answers: {seen:?}");
        let want_l4 = |b: &str| format!("{b} remote={LB_BACK} xff= proto=");
        let want_l7 = |b: &str| format!("{b} remote={LB_BACK} xff={CLIENT} proto=http");
        for b in ["b1", "b2"] {
            let want = if port == 80 { want_l4(b) } else { want_l7(b) };
            assert!(
                seen.contains_key(&want),
                "{what}: no answer `{want}` from {b}: {seen:?}"
            );
        }
        assert_eq!(seen.len(), 2, "{what}: unexpected answers {seen:?}");
    }
    for b in &n.backends {
        let log = b.access_log();
        assert!(
            log.lines()
                .filter(|l| l.contains("/whoami"))
                .all(|l| l.starts_with(&format!("{LB_BACK} "))),
            "{}: nginx saw another client than {LB_BACK}:\n{log}",
            b.name
        );
    }

    let before: Vec<f64> = ["b1", "b2"]
        .iter()
        .map(|b| {
            n.sample(&format!(
                "vnf_lb_backend_connections_total{{backend=\"{b}\",pool=\"web\"}}"
            ))
        })
        .collect();
    for (port, what) in [(80, "L4"), (8080, "L7")] {
        let w = n.wrk(&format!("http://{VIP}:{port}/"), 3, 8);
        eprintln!(
            "{T}: wrk {what} 3 s, 8 connections: {} requests, {:.0} req/s, non-2xx {}, socket errors {}",
            w.requests, w.rps, w.non_2xx, w.socket_errors
        );
        w.assert_clean(what);
    }
    for (i, b) in ["b1", "b2"].iter().enumerate() {
        let after = n.sample(&format!(
            "vnf_lb_backend_connections_total{{backend=\"{b}\",pool=\"web\"}}"
        ));
        eprintln!(
            "{T}: vnf_lb_backend_connections_total {b}: +{}",
            after - before[i]
        );
        assert!(after > before[i], "{b} got no wrk connection");
    }
    let l7_2xx: f64 = ["b1", "b2"]
        .iter()
        .map(|b| {
            n.sample(&format!(
                "vnf_lb_http_responses_total{{backend=\"{b}\",class=\"2xx\",pool=\"web\",service=\"l7\"}}"
            ))
        })
        .sum();
    assert!(l7_2xx >= 20.0, "L7 2xx responses not counted: {l7_2xx}");
    n.assert_healthy();
}

/// DNAT on the L4 VIP: the backends route their answers through the load balancer (their
/// default gateway) and see the client's own address 10.0.1.5, in the body they answer and
/// in their access log; both get connections.
#[test]
fn dnat_backends_see_client_address() {
    const T: &str = "dnat_backends_see_client_address";
    let _g = serial();
    if !have_root(T) || !tools(T, &[]) {
        return;
    }
    let yaml = config(
        &pool(
            "web",
            &[("b1", "10.0.2.10:80", 1), ("b2", "10.0.2.11:80", 1)],
            HEALTH,
        ),
        &web_services("dnat"),
        "",
    );
    let mut n = Net::new(WorkDir::new(T), 2, &yaml);
    let mut seen = BTreeMap::new();
    for _ in 0..20 {
        let (rc, code, body, _) = n.curl(&format!("http://{VIP}/whoami"));
        assert_eq!((rc, code), (0, 200), "DNAT curl failed: {body}");
        *seen.entry(body.trim().to_owned()).or_insert(0) += 1;
    }
    eprintln!("{T}: /whoami answers: {seen:?}");
    for b in ["b1", "b2"] {
        let want = format!("{b} remote={CLIENT} xff= proto=");
        assert!(seen.contains_key(&want), "no answer `{want}`: {seen:?}");
    }
    assert_eq!(seen.len(), 2, "unexpected answers {seen:?}");
    for b in &n.backends {
        let log = b.access_log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("/whoami")).collect();
        assert!(
            !lines.is_empty() && lines.iter().all(|l| l.starts_with(&format!("{CLIENT} "))),
            "{}: nginx must log the client {CLIENT}:\n{log}",
            b.name
        );
    }
    n.assert_healthy();
}

// ---------------------------------------------------------------------------------------
// 2. Weights.
// ---------------------------------------------------------------------------------------

/// New connections through `port` spread 25/50/25 (±5 points) over weights 1, 2, 1.
fn weights_1_2_1(test: &str, port: u16) {
    let _g = serial();
    if !have_root(test) || !tools(test, &[]) {
        return;
    }
    let yaml = config(
        &pool(
            "web",
            &[
                ("b1", "10.0.2.10:80", 1),
                ("b2", "10.0.2.11:80", 2),
                ("b3", "10.0.2.12:80", 1),
            ],
            HEALTH,
        ),
        &web_services("full_nat"),
        "",
    );
    let mut n = Net::new(WorkDir::new(test), 3, &yaml);
    let t0 = Instant::now();
    let (ok, err) = n.conns(port, 2000, "/");
    eprintln!(
        "{test}: 2000 connections in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(err.is_empty(), "{test}: failed connections: {err:?}");
    assert_shares(test, &ok, &[("b1", 25.0), ("b2", 50.0), ("b3", 25.0)]);
    n.assert_healthy();
}

#[test]
fn l4_weights_1_2_1_share_new_connections() {
    weights_1_2_1("l4_weights_1_2_1_share_new_connections", 80);
}

#[test]
fn l7_weights_1_2_1_share_new_connections() {
    weights_1_2_1("l7_weights_1_2_1_share_new_connections", 8080);
}

// ---------------------------------------------------------------------------------------
// 3. Health.
// ---------------------------------------------------------------------------------------

/// Stopping b2's nginx takes it out of the pool within interval × fall + timeout (plus
/// 0.5 s slack); then 300 new connections through each VIP all reach b1, and wrk through
/// each VIP for 3 s sees no failure; restarting nginx brings b2 back (up within the same
/// time plus a rise) and it gets new connections again through both VIPs.
#[test]
fn stopped_backend_leaves_pool_then_returns() {
    const T: &str = "stopped_backend_leaves_pool_then_returns";
    let _g = serial();
    if !have_root(T) || !tools(T, &["wrk"]) {
        return;
    }
    let yaml = config(
        &pool(
            "web",
            &[("b1", "10.0.2.10:80", 1), ("b2", "10.0.2.11:80", 1)],
            HEALTH,
        ),
        &web_services("full_nat"),
        "",
    );
    let mut n = Net::new(WorkDir::new(T), 2, &yaml);
    let failed0 =
        n.sample("vnf_lb_health_checks_total{backend=\"b2\",pool=\"web\",result=\"failed\"}");

    n.backend("b2").stop();
    let left = n.time_until("web", "b2", false, Duration::from_secs(5));
    let bound = CHECK_TIME + Duration::from_millis(500);
    eprintln!(
        "{T}: b2 left the pool {left:?} after nginx stopped (bound {bound:?}: 500ms × 2 + 300ms + 0.5 s slack)"
    );
    let left = left.unwrap_or_else(|| panic!("b2 still up 5 s after its nginx stopped"));
    assert!(
        left <= bound,
        "b2 took {left:?} to leave the pool, more than {bound:?}"
    );
    let failed = n
        .sample("vnf_lb_health_checks_total{backend=\"b2\",pool=\"web\",result=\"failed\"}")
        - failed0;
    assert!(
        failed >= 2.0,
        "fall 2 needs 2 failed checks, counted {failed}"
    );
    assert_eq!(
        n.sample("vnf_lb_backend_up{backend=\"b2\",pool=\"web\"}"),
        0.0,
        "vnf_lb_backend_up of b2"
    );

    for (port, what) in [(80, "L4"), (8080, "L7")] {
        let (ok, err) = n.conns(port, 300, "/");
        eprintln!("{T}: {what} with b2 down: {ok:?} failures {err:?}");
        assert!(
            err.is_empty(),
            "{what}: failures with b2 out of the pool: {err:?}"
        );
        assert_eq!(ok.get("b1"), Some(&300), "{what}: all to b1: {ok:?}");
        let w = n.wrk(&format!("http://{VIP}:{port}/"), 3, 8);
        eprintln!(
            "{T}: wrk {what} with b2 down, 3 s: {} requests, {:.0} req/s, non-2xx {}, socket errors {}",
            w.requests, w.rps, w.non_2xx, w.socket_errors
        );
        w.assert_clean(what);
    }

    n.backend("b2").start();
    let back = n.time_until("web", "b2", true, Duration::from_secs(5));
    eprintln!("{T}: b2 back in the pool {back:?} after nginx restarted (rise 2)");
    let back = back.unwrap_or_else(|| panic!("b2 not up 5 s after its nginx restarted"));
    assert!(
        back <= CHECK_TIME + Duration::from_millis(500),
        "b2 took {back:?} to come back"
    );
    for (port, what) in [(80, "L4"), (8080, "L7")] {
        let (ok, err) = n.conns(port, 200, "/");
        eprintln!("{T}: {what} with b2 back: {ok:?} failures {err:?}");
        assert!(err.is_empty(), "{what}: failures: {err:?}");
        let b2 = *ok.get("b2").unwrap_or(&0);
        assert!(
            b2 >= 50,
            "{what}: b2 got {b2} of 200 new connections after coming back"
        );
    }
    n.assert_healthy();
}

/// With every backend down, the L4 VIP answers a new connection with a TCP RST (curl
/// exit 7, "connection refused", well under a second) and the L7 VIP answers 503; the
/// refusals are counted (`vnf_lb_no_backend_total`, `vnf_drops_total{reason="no_backend"}`,
/// and 5xx responses of the proxy's own).
#[test]
fn all_backends_down_l4_resets_l7_answers_503() {
    const T: &str = "all_backends_down_l4_resets_l7_answers_503";
    let _g = serial();
    if !have_root(T) || !tools(T, &[]) {
        return;
    }
    let yaml = config(
        &pool(
            "web",
            &[("b1", "10.0.2.10:80", 1), ("b2", "10.0.2.11:80", 1)],
            HEALTH,
        ),
        &web_services("full_nat"),
        "",
    );
    let mut n = Net::new(WorkDir::new(T), 2, &yaml);
    let (rc, code, _, _) = n.curl(&format!("http://{VIP}/"));
    assert_eq!((rc, code), (0, 200), "L4 works before");
    let no_backend0 = n.sample("vnf_lb_no_backend_total{service=\"l4\"}");
    let drops0 = n.lb.drops("no_backend");
    let own_5xx0 = n.sample(
        "vnf_lb_http_responses_total{backend=\"\",class=\"5xx\",pool=\"web\",service=\"l7\"}",
    );

    n.backend("b1").stop();
    n.backend("b2").stop();
    for b in ["b1", "b2"] {
        assert!(
            n.time_until("web", b, false, Duration::from_secs(5))
                .is_some(),
            "{b} still up:\n{}",
            n.lb.state("backends")
        );
    }
    for _ in 0..3 {
        let (rc, code, body, secs) = n.curl(&format!("http://{VIP}/"));
        eprintln!("{T}: L4 with no backend: curl exit {rc} in {secs:.3} s");
        assert_eq!(
            (rc, code),
            (7, 0),
            "L4 with no backend must be refused (curl exit 7), got {body}"
        );
        assert!(
            secs < 1.0,
            "the refusal took {secs:.3} s: a timeout, not a RST"
        );
        let (rc, code, body, secs) = n.curl(&format!("http://{VIP}:8080/"));
        eprintln!(
            "{T}: L7 with no backend: HTTP {code} in {secs:.3} s: {}",
            body.trim()
        );
        assert_eq!((rc, code), (0, 503), "L7 with no backend: {body}");
    }
    let no_backend = n.sample("vnf_lb_no_backend_total{service=\"l4\"}") - no_backend0;
    let drops = n.lb.drops("no_backend") - drops0;
    let own_5xx = n.sample(
        "vnf_lb_http_responses_total{backend=\"\",class=\"5xx\",pool=\"web\",service=\"l7\"}",
    ) - own_5xx0;
    eprintln!(
        "{T}: vnf_lb_no_backend_total +{no_backend}, vnf_drops_total{{no_backend}} +{drops}, own 5xx +{own_5xx}"
    );
    assert!(no_backend >= 3.0, "vnf_lb_no_backend_total +{no_backend}");
    assert!(
        drops >= 3.0,
        "vnf_drops_total{{reason=\"no_backend\"}} +{drops}"
    );
    assert!(own_5xx >= 3.0, "503s of the proxy's own +{own_5xx}");
    n.assert_healthy();
}

// ---------------------------------------------------------------------------------------
// 4. A long-lived connection across pool changes.
// ---------------------------------------------------------------------------------------

/// The `echo` pool (line-echo servers on port 7000, TCP checks) behind the L4 VIP's port
/// 7000, over `backends`.
fn echo_config(backends: &[&str]) -> String {
    let list: Vec<(&str, String, u32)> = backends
        .iter()
        .map(|b| {
            let addr = BACKENDS.iter().find(|x| x.0 == *b).map_or("", |x| x.1);
            (*b, format!("{addr}:7000"), 1)
        })
        .collect();
    let list: Vec<(&str, &str, u32)> = list.iter().map(|(b, a, w)| (*b, a.as_str(), *w)).collect();
    config(
        &pool(
            "echo",
            &list,
            "{check: tcp, interval: 500ms, timeout: 300ms, rise: 2, fall: 2}",
        ),
        &service("echo", 7000, "tcp", "echo", ""),
        "",
    )
}

/// One TCP connection through the L4 VIP to a line-echo server, a line every 100 ms, lives
/// through a reload adding b3, a reload removing the other original backend, and the drain
/// of its own backend (`POST /action/drain`): every line comes back, from the same backend,
/// with no reset. While drained its backend takes no new connection (all go to b3), and
/// after `undrain` it takes some again.
#[test]
fn long_lived_connection_survives_reloads_and_drain() {
    const T: &str = "long_lived_connection_survives_reloads_and_drain";
    let _g = serial();
    if !have_root(T) || !tools(T, &[]) {
        return;
    }
    let mut n = Net::build(WorkDir::new(T), 3, &echo_config(&["b1", "b2"]));
    let _echo = n.echo_servers();
    n.wait_all_up();

    let stop = n.dir.join("hold.stop");
    let log = n.dir.join("hold.log");
    let mut hold = n.client.spawn_logged(
        &format!(
            "python3 -u {} {VIP} 7000 {}",
            n.py.hold.display(),
            stop.display()
        ),
        Some(&log),
    );
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let echoed = |t: &str| {
        t.lines()
            .filter_map(|l| l.strip_prefix("echoed "))
            .filter_map(|v| v.trim().parse::<u32>().ok())
            .max()
            .unwrap_or(0)
    };
    assert!(
        wait_for(Duration::from_secs(10), || text().contains("echoed 10")),
        "the held connection does not echo:\n{}",
        text()
    );
    let on = text()
        .lines()
        .find_map(|l| l.strip_prefix("on "))
        .map(str::to_owned)
        .expect("the backend of the held connection");
    let other = if on == "b1" { "b2" } else { "b1" };
    eprintln!("{T}: the held connection is on {on}");
    // Progress: at least 5 more echoes (0.5 s) since `from`, and the client still runs.
    let mut progress = |what: &str, from: u32| {
        let ok = wait_for(Duration::from_secs(5), || echoed(&text()) >= from + 5);
        assert!(
            ok && hold.running(),
            "the held connection stopped echoing after {what}:\n{}",
            text()
        );
        echoed(&text())
    };

    // Reload 1: add b3.
    let (code, body) = n.lb.reload(&echo_config(&["b1", "b2", "b3"]));
    assert_eq!(code, 200, "reload adding b3: {body}");
    assert!(
        n.time_until("echo", "b3", true, Duration::from_secs(5))
            .is_some(),
        "b3 did not come up:\n{}",
        n.lb.state("backends")
    );
    let e = progress("adding b3", echoed(&text()));
    // Reload 2: remove the other original backend.
    let (code, body) = n.lb.reload(&echo_config(&[&on, "b3"]));
    assert_eq!(code, 200, "reload removing {other}: {body}");
    let e = progress(&format!("removing {other}"), e);
    // Drain its own backend.
    let (code, body) = n.action("drain", "echo", &on);
    assert_eq!(code, 200, "drain {on}: {body}");
    let row = n.row("echo", &on).expect("row of the drained backend");
    eprintln!("{T}: {on} drained: {row:?}");
    assert!(
        row.up && !row.accepting && row.l4_active >= 1,
        "{on} drained: up, not accepting, with the held connection: {row:?}"
    );
    let e = progress(&format!("draining {on}"), e);
    let (ok, err) = n.conns(7000, 30, "line");
    eprintln!("{T}: 30 new connections while {on} drains: {ok:?} failures {err:?}");
    assert!(err.is_empty(), "new connections failed: {err:?}");
    assert_eq!(
        ok.get("b3"),
        Some(&30),
        "new connections must avoid {on}: {ok:?}"
    );
    let e = progress("new connections", e);

    let (code, body) = n.action("undrain", "echo", &on);
    assert_eq!(code, 200, "undrain {on}: {body}");
    let (ok, err) = n.conns(7000, 30, "line");
    eprintln!("{T}: 30 new connections after undrain: {ok:?} failures {err:?}");
    assert!(
        err.is_empty() && ok.get(on.as_str()).is_some_and(|&c| c > 0),
        "{on} takes new connections again: {ok:?} {err:?}"
    );
    progress("undrain", e);

    std::fs::write(&stop, "").expect("stop file");
    let code = hold.wait_timeout(Duration::from_secs(10));
    let t = text();
    let last = t.lines().last().unwrap_or("");
    eprintln!("{T}: held connection: {last}");
    assert_eq!(code, Some(0), "the held connection failed:\n{t}");
    let sent_echoed: Vec<u32> = last
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        sent_echoed.len() == 2 && sent_echoed[0] == sent_echoed[1] && sent_echoed[0] >= 30,
        "every line must come back: {last}"
    );
    n.assert_healthy();
}

// ---------------------------------------------------------------------------------------
// 5. TLS: certificates by SNI, versions, reload; HTTPS routing.
// ---------------------------------------------------------------------------------------

/// A self-signed P-256 certificate for DNS name `name` with `serial` and `subject`, written
/// to `dir/NAME.pem` and `dir/NAME.key` (over any earlier one).
fn make_cert(dir: &Path, name: &str, serial: u32, subject: &str) -> (PathBuf, PathBuf) {
    let pem = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    run(&format!(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
         -keyout {} -out {} -days 2 -subj '{subject}' -addext subjectAltName=DNS:{name} \
         -set_serial {serial} 2>/dev/null",
        key.display(),
        pem.display()
    ));
    (pem, key)
}

/// The SHA-256 fingerprint of a PEM certificate, lowercase hex without colons.
fn fingerprint(pem_text: &str) -> Option<String> {
    let out = run(&format!(
        "printf '%s' '{pem_text}' | openssl x509 -noout -fingerprint -sha256"
    ));
    out.trim()
        .split_once('=')
        .map(|(_, f)| f.replace(':', "").to_ascii_lowercase())
}

/// The certificate in a file: (subject without spaces, fingerprint).
fn cert_of(pem: &Path) -> (String, String) {
    let text = std::fs::read_to_string(pem).expect("read certificate");
    let subject = run(&format!(
        "openssl x509 -in {} -noout -subject",
        pem.display()
    ));
    (
        subject.trim().replace(' ', ""),
        fingerprint(&text).expect("fingerprint"),
    )
}

/// The TLS services: `www` (HTTPS on 443: `/api` to pool `api`, the rest to `web`) with
/// certificates a.example (the first, the default) and b.example; `l7` (HTTP on 8080) with
/// a head limit of 4096 bytes, to `web`; with `sink`, also `sink` (HTTP on 8081) to pool
/// `sink`: `sink.py` on b1's port 7001, unchecked.
fn tls_config(dir: &Path, sink: bool) -> String {
    let d = dir.display();
    let mut pools = pool("web", &[("b1", "10.0.2.10:80", 1)], HEALTH)
        + &pool("api", &[("b2", "10.0.2.11:80", 1)], HEALTH);
    let mut services = format!(
        "  - name: www\n    vip: {VIP}\n    port: 443\n    protocol: https\n    pool: web\n\
         \x20   routes: [{{path: /api, pool: api}}]\n\
         {}",
        service(
            "l7",
            8080,
            "http",
            "web",
            ", limits: {max_header_bytes: 4096}"
        )
    );
    if sink {
        pools += &pool("sink", &[("b1", "10.0.2.10:7001", 1)], "{check: none}");
        services += &service(
            "sink",
            8081,
            "http",
            "sink",
            ", limits: {max_header_bytes: 4096}",
        );
    }
    config(
        &pools,
        &services,
        &format!(
            "tls:\n  certificates:\n\
             \x20   - {{cert: {d}/a.example.pem, key: {d}/a.example.key}}\n\
             \x20   - {{cert: {d}/b.example.pem, key: {d}/b.example.key}}\n"
        ),
    )
}

/// A work dir with certificates for a.example (serial 1) and b.example (serial 2), and the
/// world of [`tls_config`].
fn tls_net(test: &str, sink: bool) -> Net {
    let dir = WorkDir::new(test);
    make_cert(&dir, "a.example", 1, "/CN=a.example");
    make_cert(&dir, "b.example", 2, "/CN=b.example");
    let yaml = tls_config(&dir, sink);
    Net::new(dir, 2, &yaml)
}

impl Net {
    /// `openssl s_client` from the client to the HTTPS VIP with `args`, stdin closed: its
    /// whole output.
    fn s_client(&self, args: &str) -> String {
        let out = self.client.sh(&format!(
            "timeout 10 openssl s_client -connect {VIP}:443 {args} </dev/null 2>&1"
        ));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The certificate the HTTPS VIP serves to `s_client args`: (subject without spaces,
    /// fingerprint), `None` if the handshake failed.
    fn served(&self, args: &str) -> Option<(String, String)> {
        let out = self.s_client(args);
        let begin = out.find("-----BEGIN CERTIFICATE-----")?;
        let end = out.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
        let pem = &out[begin..end];
        let subject = out
            .lines()
            .find_map(|l| l.strip_prefix("subject="))
            .map(|s| format!("subject={}", s.replace(' ', "")))?;
        Some((subject, fingerprint(pem)?))
    }

    fn tls_handshakes(&self, result: &str) -> f64 {
        self.sample(&format!(
            "vnf_lb_tls_handshakes_total{{result=\"{result}\",service=\"www\"}}"
        ))
    }
}

/// SNI chooses the certificate: b.example gets b.example's, a.example a.example's, no SNI
/// the first (a.example). TLS 1.0 and 1.1 ClientHellos are refused (no certificate, no
/// handshake; the client's own minimum lowered with `@SECLEVEL=0`, so that the refusal is
/// the load balancer's), TLS 1.2 and 1.3 complete; `vnf_lb_tls_handshakes_total` counts
/// both results.
#[test]
fn tls_sni_chooses_certificate_and_old_versions_refused() {
    const T: &str = "tls_sni_chooses_certificate_and_old_versions_refused";
    let _g = serial();
    if !have_root(T) || !tools(T, &["openssl"]) {
        return;
    }
    let mut n = tls_net(T, false);
    let a = cert_of(&n.dir.join("a.example.pem"));
    let b = cert_of(&n.dir.join("b.example.pem"));
    let ok0 = n.tls_handshakes("ok");
    let failed0 = n.tls_handshakes("failed");

    for (args, want, what) in [
        ("-servername b.example", &b, "SNI b.example"),
        ("-servername a.example", &a, "SNI a.example"),
        ("-noservername", &a, "no SNI"),
    ] {
        let got = n.served(args);
        eprintln!("{T}: {what}: {got:?}");
        assert_eq!(got.as_ref(), Some(want), "{what}: wrong certificate");
    }
    for v in ["tls1", "tls1_1"] {
        let out = n.s_client(&format!(
            "-servername a.example -{v} -cipher DEFAULT:@SECLEVEL=0"
        ));
        let line = out
            .lines()
            .find(|l| l.contains("alert") || l.contains("Cipher is"))
            .unwrap_or("");
        eprintln!("{T}: -{v}: {line}");
        assert!(
            !out.contains("BEGIN CERTIFICATE") && out.contains("Cipher is (NONE)"),
            "-{v} must be refused:\n{out}"
        );
    }
    for (v, proto) in [("tls1_2", "TLSv1.2"), ("tls1_3", "TLSv1.3")] {
        let out = n.s_client(&format!("-servername b.example -{v}"));
        let line = out.lines().find(|l| l.contains("Cipher is")).unwrap_or("");
        eprintln!("{T}: -{v}: {line}");
        assert!(
            out.contains("BEGIN CERTIFICATE") && line.contains(proto),
            "-{v} must complete with {proto}:\n{out}"
        );
    }
    let ok = n.tls_handshakes("ok") - ok0;
    let failed = n.tls_handshakes("failed") - failed0;
    eprintln!("{T}: vnf_lb_tls_handshakes_total ok +{ok} failed +{failed}");
    assert!(ok >= 5.0, "5 handshakes completed, counted {ok}");
    assert!(failed >= 2.0, "2 handshakes refused, counted {failed}");
    n.assert_healthy();
}

/// Replacing a.example's certificate file (new serial and subject) and `POST /reload`:
/// new handshakes get the new certificate (b.example keeps its own), while a TLS
/// connection opened before (python `ssl`, keep-alive) still gets answers after the reload.
#[test]
fn tls_certificate_reload_new_handshakes_open_connection_lives() {
    const T: &str = "tls_certificate_reload_new_handshakes_open_connection_lives";
    let _g = serial();
    if !have_root(T) || !tools(T, &["openssl"]) {
        return;
    }
    let mut n = tls_net(T, false);
    let old = cert_of(&n.dir.join("a.example.pem"));
    let b = cert_of(&n.dir.join("b.example.pem"));
    let go = n.dir.join("tls.go");
    let log = n.dir.join("tls.log");
    let mut client = n.client.spawn_logged(
        &format!(
            "python3 -u {} {VIP} 443 a.example {}",
            n.py.tls.display(),
            go.display()
        ),
        Some(&log),
    );
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_for(Duration::from_secs(10), || text().contains("before ")),
        "the TLS client got no first answer:\n{}",
        text()
    );
    assert!(
        text().contains(&format!("cert {}\n", old.1)) && text().contains("before 200 b1"),
        "the open connection has the old certificate and an answer:\n{}",
        text()
    );

    let (new_pem, _) = make_cert(&n.dir, "a.example", 3, "/CN=a.example/O=renewed");
    let new = cert_of(&new_pem);
    assert_ne!(new.1, old.1);
    let yaml = tls_config(&n.dir, false);
    let (code, body) = n.lb.reload(&yaml);
    assert_eq!(code, 200, "reload with a new certificate: {body}");
    let got = n.served("-servername a.example");
    eprintln!("{T}: after reload, SNI a.example: {got:?} (was {old:?})");
    assert_eq!(
        got.as_ref(),
        Some(&new),
        "new handshakes get the new certificate"
    );
    assert_eq!(
        n.served("-servername b.example").as_ref(),
        Some(&b),
        "b.example unchanged"
    );

    std::fs::write(&go, "").expect("go file");
    let code = client.wait_timeout(Duration::from_secs(10));
    let t = text();
    eprintln!(
        "{T}: connection opened before the reload: {}",
        t.replace('\n', "; ")
    );
    assert_eq!(code, Some(0), "the TLS client failed:\n{t}");
    assert!(
        t.contains("after 200 b1"),
        "the connection opened before the reload must still be answered:\n{t}"
    );
    n.assert_healthy();
}

/// A reload with a garbage certificate file, then with a certificate whose key does not
/// match, is refused (HTTP 422) and the old certificate keeps being served, over working
/// HTTPS.
#[test]
fn tls_bad_certificate_reload_refused_old_one_served() {
    const T: &str = "tls_bad_certificate_reload_refused_old_one_served";
    let _g = serial();
    if !have_root(T) || !tools(T, &["openssl"]) {
        return;
    }
    let mut n = tls_net(T, false);
    let a_pem = n.dir.join("a.example.pem");
    let a_key = n.dir.join("a.example.key");
    let old = cert_of(&a_pem);
    let yaml = tls_config(&n.dir, false);

    // A valid certificate for a.example with a key of its own, and the old key kept.
    let other = n.dir.join("other");
    std::fs::create_dir_all(&other).expect("dir");
    let (other_pem, _) = make_cert(&other, "a.example", 9, "/CN=a.example/O=other");
    let old_key = std::fs::read(&a_key).expect("key");
    let cases: [(&str, Vec<u8>, Vec<u8>); 2] = [
        (
            "garbage certificate",
            b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n"
                .to_vec(),
            old_key.clone(),
        ),
        (
            "key that does not match",
            std::fs::read(&other_pem).expect("cert"),
            old_key,
        ),
    ];
    for (what, pem, key) in cases {
        std::fs::write(&a_pem, pem).expect("write cert");
        std::fs::write(&a_key, key).expect("write key");
        let (code, body) = n.lb.reload(&yaml);
        eprintln!("{T}: reload with a {what}: HTTP {code}: {}", body.trim());
        assert_eq!(code, 422, "a reload with a {what} must be refused: {body}");
        let got = n.served("-servername a.example");
        assert_eq!(
            got.as_ref(),
            Some(&old),
            "{what}: the old certificate must stay"
        );
        let (rc, code, body, _) = n.curl(&format!(
            "-k --resolve a.example:443:{VIP} https://a.example/"
        ));
        assert_eq!(
            (rc, code, body.trim()),
            (0, 200, "b1"),
            "{what}: HTTPS must work"
        );
    }
    n.assert_healthy();
}

/// HTTPS routing: `/api` and `/api/...` go to pool `api` (b2), `/` and `/apix` to `web`
/// (b1); nginx sees `X-Forwarded-For: 10.0.1.5` (appended to one the client sent) and
/// `X-Forwarded-Proto: https` (a client's own is replaced), from the load balancer's back
/// address.
#[test]
fn https_routes_by_path_with_forwarded_headers() {
    const T: &str = "https_routes_by_path_with_forwarded_headers";
    let _g = serial();
    if !have_root(T) || !tools(T, &["openssl"]) {
        return;
    }
    let mut n = tls_net(T, false);
    let url = |path: &str| format!("-k --resolve a.example:443:{VIP} https://a.example{path}");
    let fwd = format!("remote={LB_BACK} xff={CLIENT} proto=https");
    for (path, want) in [
        ("/api", format!("b2 api {fwd}")),
        ("/api/v1/items?x=1", format!("b2 api {fwd}")),
        ("/", "b1".to_owned()),
        ("/apix", "b1".to_owned()),
        ("/whoami", format!("b1 {fwd}")),
    ] {
        let (rc, code, body, _) = n.curl(&url(path));
        eprintln!("{T}: https://a.example{path} -> {}", body.trim());
        assert_eq!((rc, code, body.trim()), (0, 200, want.as_str()), "{path}");
    }
    let (rc, code, body, _) = n.curl(&format!(
        "-H 'X-Forwarded-For: 192.0.2.7' -H 'X-Forwarded-Proto: http' {}",
        url("/api/spoof")
    ));
    eprintln!("{T}: with client X-Forwarded-*: {}", body.trim());
    assert_eq!(
        (rc, code, body.trim()),
        (
            0,
            200,
            format!("b2 api remote={LB_BACK} xff=192.0.2.7, {CLIENT} proto=https").as_str()
        )
    );
    let api = n.backends[1].access_log();
    let web = n.backends[0].access_log();
    assert!(
        api.contains("GET /api/v1/items?x=1 200") && !api.contains("/apix"),
        "b2's log:\n{api}"
    );
    assert!(
        web.contains("GET /apix 200") && !web.contains("/api/"),
        "b1's log:\n{web}"
    );
    n.assert_healthy();
}

// ---------------------------------------------------------------------------------------
// 6. Bad input.
// ---------------------------------------------------------------------------------------

impl Net {
    /// `raw.py` from the client: how the connection ended (`closed`, `reset`, `timeout`),
    /// the seconds, the bytes received and the status line (or the first bytes in hex).
    fn raw(&self, port: u16, case: &str) -> (String, f64, usize, String) {
        let out = self.client.sh(&format!(
            "python3 {} {VIP} {port} {case}",
            self.py.raw.display()
        ));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "raw.py {case} failed:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut w = text.trim().splitn(4, ' ');
        let end = w.next().unwrap_or("").to_owned();
        let secs = w.next().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
        let len = w.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        (end, secs, len, w.next().unwrap_or("").to_owned())
    }
}

/// Through the L7 VIPs over raw sockets, to nginx (port 8080) and to a backend that
/// records every byte it receives and never answers (`sink.py`, port 8081): a 20 kB header
/// (limit 4096) is answered 431, a request with both Content-Length and Transfer-Encoding
/// 400, a bad chunk size 400, each connection closed, and none of them reaches a backend
/// (nginx's access log, the sink's bytes). A bad chunk size arriving after the head and a
/// good chunk were relayed to the sink is answered 400 too and not relayed. Garbage to the
/// HTTPS port is closed at once and counted as a failed handshake. The load balancer stays
/// healthy and a good request still works (and shows in nginx's log).
#[test]
fn l7_bad_requests_refused_not_forwarded() {
    const T: &str = "l7_bad_requests_refused_not_forwarded";
    let _g = serial();
    if !have_root(T) || !tools(T, &["openssl"]) {
        return;
    }
    let mut n = tls_net(T, true);
    let sink_log = n.dir.join("sink.bytes");
    let sink_out = n.dir.join("sink.log");
    let _sink = n.backends[0].ns.spawn_logged(
        &format!(
            "python3 -u {} 7001 {}",
            n.py.sink.display(),
            sink_log.display()
        ),
        Some(&sink_out),
    );
    assert!(
        wait_for(Duration::from_secs(10), || std::fs::read_to_string(
            &sink_out
        )
        .is_ok_and(|s| s.contains("listening"))),
        "sink.py did not start"
    );
    let sunk =
        || String::from_utf8_lossy(&std::fs::read(&sink_log).unwrap_or_default()).into_owned();
    let own_4xx = |svc: &str| {
        n.sample(&format!(
            "vnf_lb_http_responses_total{{backend=\"\",class=\"4xx\",pool=\"\",service=\"{svc}\"}}"
        ))
    };
    let own_4xx0 = own_4xx("l7") + own_4xx("sink");
    for (case, want, ports) in [
        ("big_header", "HTTP/1.1 431", &[8080, 8081][..]),
        ("cl_te", "HTTP/1.1 400", &[8080, 8081][..]),
        ("bad_chunk", "HTTP/1.1 400", &[8080, 8081][..]),
        // nginx answers `return 200` before reading a body: only the sink waits for it.
        ("bad_chunk_late", "HTTP/1.1 400", &[8081][..]),
    ] {
        for &port in ports {
            let (end, secs, len, status) = n.raw(port, case);
            eprintln!(
                "{T}: {case} to {port}: {status} ({len} bytes), then {end} after {secs:.3} s"
            );
            assert!(
                status.starts_with(want),
                "{case} to {port}: want `{want}`, got `{status}` ({end})"
            );
            assert!(
                end == "closed" || end == "reset",
                "{case} to {port}: the connection must be closed, got {end}"
            );
        }
    }
    let own_4xx = own_4xx("l7") + own_4xx("sink") - own_4xx0;
    eprintln!("{T}: 4xx of the proxy's own: +{own_4xx}");
    assert!(
        own_4xx >= 7.0,
        "7 bad requests answered by the proxy, counted {own_4xx}"
    );
    let got = sunk();
    eprintln!("{T}: the sink received {:?}", got);
    assert!(
        got.starts_with("POST /badchunklate HTTP/1.1\r\n")
            && got.ends_with("\r\n\r\n5\r\nhello\r\n"),
        "the sink must have the late request's head and good chunk, nothing else:\n{got:?}"
    );

    let failed0 = n.tls_handshakes("failed");
    let (end, secs, len, first) = n.raw(443, "garbage");
    let failed = n.tls_handshakes("failed") - failed0;
    eprintln!(
        "{T}: garbage to 443: {end} after {secs:.3} s, {len} bytes back ({first}); failed handshakes +{failed}"
    );
    assert!(
        (end == "closed" || end == "reset") && secs < 2.0,
        "garbage to the HTTPS port must be closed at once: {end} after {secs} s"
    );
    assert_eq!(failed, 1.0, "garbage must count as one failed handshake");

    let (end, _, _, status) = n.raw(8080, "good");
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "a good request after: {status} {end}"
    );
    let log = n.backends[0].access_log();
    assert!(
        log.lines().count() == 1 && log.contains(" GET / 200"),
        "nginx must have logged the good request, and only it:\n{log}"
    );
    n.assert_healthy();
}

/// Metrics samples as a map, for differences.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// A SYN flood from random sources (`hping3 -S --rand-source -i u100`, up to 10 000 a
/// second) for 3 s against the L7 VIP port, then against the L4 VIP port (stopped at
/// 10 000 tracked connections): the answers to
/// the random sources have no route back and every handshake stays half-open. The load
/// balancer stays up (`/healthz` and `/readyz` answer throughout), new legitimate
/// connections work after each flood (through both VIPs), and the flood shows in the
/// counters: L7, half-open handshakes dropped (`vnf_lb_proxy_half_open_dropped_total`) and
/// SYN-ACKs without a route (`vnf_drops_total{reason="no_route"}`), with no proxied
/// connection accepted (`vnf_lb_proxy_connections_total`); L4, a tracked connection per
/// SYN (`vnf_lb_connections_total`, the `vnf_lb_connections` gauge) and the backends'
/// SYN-ACKs without a route.
#[test]
fn syn_flood_lb_stays_up_and_counts_it() {
    const T: &str = "syn_flood_lb_stays_up_and_counts_it";
    let _g = serial();
    if !have_root(T) || !tools(T, &["hping3"]) {
        return;
    }
    let yaml = config(
        &pool(
            "web",
            &[("b1", "10.0.2.10:80", 1), ("b2", "10.0.2.11:80", 1)],
            HEALTH,
        ),
        &web_services("full_nat"),
        "",
    );
    let mut n = Net::new(WorkDir::new(T), 2, &yaml);
    for (port, what) in [(8080u16, "L7"), (80, "L4")] {
        let m0 = samples(&n.lb.metrics());
        let log = n.dir.join(format!("hping3-{port}.log"));
        let mut flood = n.client.spawn_logged(
            &format!("hping3 -q -S -p {port} --rand-source -i u100 {VIP}"),
            Some(&log),
        );
        let t0 = Instant::now();
        let (mut scrapes, mut healthy, mut max_l4) = (0, 0, 0.0f64);
        let mut during = None;
        // At most 3 s, and for L4 at most 10 000 connections (a longer flood exhausts full
        // NAT's ports: `l4_syn_flood_does_not_lock_out_new_clients` shows that case).
        while t0.elapsed() < Duration::from_secs(3) && max_l4 < 10_000.0 {
            if n.lb.healthy() {
                healthy += 1;
            }
            max_l4 = max_l4.max(n.sample("vnf_lb_connections"));
            scrapes += 1;
            if during.is_none() && t0.elapsed() > Duration::from_secs(1) {
                during = Some(n.conns(port, 20, "/"));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let took = t0.elapsed();
        flood.signal(libc::SIGINT);
        flood.wait_timeout(Duration::from_secs(5));
        drop(flood);
        let sent = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        let m1 = samples(&n.lb.metrics());
        let d = |k: &str| m1.get(k).copied().unwrap_or(0.0) - m0.get(k).copied().unwrap_or(0.0);
        let no_route = d("vnf_drops_total{reason=\"no_route\"}");
        let host_full = d("vnf_drops_total{reason=\"host_queue_full\"}");
        let half_open = d("vnf_lb_proxy_half_open_dropped_total{service=\"l7\"}");
        let accepted = d("vnf_lb_proxy_connections_total{service=\"l7\"}");
        let l4_total = d("vnf_lb_connections_total{service=\"l4\"}");
        eprintln!(
            "{T}: {what} flood on {port}: {sent} SYNs in {:.1} s; healthz {healthy}/{scrapes}; \
             no_route +{no_route}, host_queue_full +{host_full}, half-open dropped +{half_open}, \
             L7 accepted +{accepted}, L4 connections +{l4_total} (gauge max {max_l4})",
            took.as_secs_f64()
        );
        let (ok, err) = during.unwrap_or_default();
        eprintln!(
            "{T}: during the {what} flood, 20 connections to {port}: {ok:?} failures {err:?}"
        );
        // Listeners are replaced packet by packet and old handshakes dropped first, so a
        // client's handshake (one round trip) is not lost to the flood; 2 of 20 may be, to
        // a machine that is busy with something else.
        let served: u64 = ok.values().sum();
        assert!(
            served >= 18,
            "{what}: the flood must not lock clients out: {served} of 20 connections served during it ({err:?})"
        );
        assert!(
            sent >= 5000.0 || max_l4 >= 10_000.0,
            "hping3 sent only {sent} SYNs:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert_eq!(healthy, scrapes, "/healthz failed during the {what} flood");
        assert!(
            no_route >= sent * 0.5,
            "{what}: the SYN-ACKs to random sources must be dropped as no_route: +{no_route} of {sent}"
        );
        if port == 8080 {
            assert!(half_open >= 1.0, "L7: no half-open handshake dropped");
            assert!(
                accepted <= 20.0,
                "L7: {accepted} connections accepted, more than the 20 legitimate ones"
            );
        } else {
            // Random sources include impossible ones (0/8, 127/8, multicast, 240/4: about
            // 13%), which are dropped as martians (RFC 1812 §5.3.7) before balancing.
            let martian = d("vnf_drops_total{reason=\"martian\"}");
            assert!(
                l4_total + martian >= sent * 0.9 && martian > 0.0 && max_l4 >= 1000.0,
                "L4: each SYN opens a tracked connection or is a martian: +{l4_total} \
                 and +{martian} martians of {sent}, gauge max {max_l4}"
            );
        }
        n.assert_healthy();
        // Legitimate connections afterwards, through both VIPs.
        n.wait_all_up();
        for p in [80, 8080] {
            let (ok, err) = n.conns(p, 50, "/");
            eprintln!(
                "{T}: after the {what} flood, 50 connections to {p}: {ok:?} failures {err:?}"
            );
            assert!(
                err.is_empty() && ok.values().sum::<u64>() == 50,
                "after the {what} flood, connections to {p} failed: {err:?}"
            );
        }
    }
}

/// A SYN flood from random sources against the L4 VIP (full NAT) until full NAT's source
/// ports run out (`hping3 -S --rand-source -i u100`, at most 15 s): every forged SYN holds
/// one of the 31 744 ports of 10.0.2.1 while its handshake never completes. New clients
/// must still get connections, during the flood and after it: a new flow drops the oldest
/// unfinished handshake to take its port (`vnf_lb_early_drops_total`), and none is refused.
#[test]
fn l4_syn_flood_does_not_lock_out_new_clients() {
    const T: &str = "l4_syn_flood_does_not_lock_out_new_clients";
    let _g = serial();
    if !have_root(T) || !tools(T, &["hping3"]) {
        return;
    }
    let yaml = config(
        &pool(
            "web",
            &[("b1", "10.0.2.10:80", 1), ("b2", "10.0.2.11:80", 1)],
            HEALTH,
        ),
        &web_services("full_nat"),
        "",
    );
    let mut n = Net::new(WorkDir::new(T), 2, &yaml);
    let m0 = samples(&n.lb.metrics());
    let log = n.dir.join("hping3.log");
    let mut flood = n.client.spawn_logged(
        &format!("hping3 -q -S -p 80 --rand-source -i u100 {VIP}"),
        Some(&log),
    );
    let t0 = Instant::now();
    let exhausted = wait_for(Duration::from_secs(15), || {
        n.sample("vnf_lb_early_drops_total") > 0.0
    });
    let took = t0.elapsed();
    assert!(
        exhausted,
        "the flood never filled the full NAT ports in 15 s: no early drop"
    );
    let (ok, err) = n.conns_timeout(80, 10, "/", 2.0);
    eprintln!("{T}: 10 new connections during the flood: {ok:?} failures {err:?}");
    assert!(
        err.is_empty(),
        "new clients failed during the flood: {err:?}"
    );
    flood.signal(libc::SIGINT);
    flood.wait_timeout(Duration::from_secs(5));
    drop(flood);
    let m1 = samples(&n.lb.metrics());
    let d = |k: &str| m1.get(k).copied().unwrap_or(0.0) - m0.get(k).copied().unwrap_or(0.0);
    eprintln!(
        "{T}: flood {:.1} s (ports exhausted: {exhausted}): L4 connections +{}, gauge {}, \
         refused +{}, nat_pool_exhausted +{}, nat_table_full +{}, early drops +{}",
        took.as_secs_f64(),
        d("vnf_lb_connections_total{service=\"l4\"}"),
        m1.get("vnf_lb_connections").copied().unwrap_or(0.0),
        d("vnf_lb_refused_total{service=\"l4\"}"),
        d("vnf_drops_total{reason=\"nat_pool_exhausted\"}"),
        d("vnf_drops_total{reason=\"nat_table_full\"}"),
        d("vnf_lb_early_drops_total"),
    );
    assert_eq!(
        d("vnf_lb_refused_total{service=\"l4\"}"),
        0.0,
        "no flow refused"
    );
    n.assert_healthy();
    std::thread::sleep(Duration::from_secs(1));
    let (ok, err) = n.conns_timeout(80, 10, "/", 2.0);
    eprintln!("{T}: 10 new connections 1 s after the flood: {ok:?} failures {err:?}");
    assert!(
        err.is_empty(),
        "new clients are locked out after the flood: {err:?} (served {ok:?}); \
         vnf_drops_total{{reason=\"nat_pool_exhausted\"}} +{}",
        n.sample("vnf_drops_total{reason=\"nat_pool_exhausted\"}")
            - m1.get("vnf_drops_total{reason=\"nat_pool_exhausted\"}")
                .copied()
                .unwrap_or(0.0)
    );
}
