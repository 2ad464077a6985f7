//! vnf-router as an L3 router and NAT between kernel `vxlan` hosts and an external network.
//!
//! Every test builds its own underlay in network namespaces:
//!
//! ```text
//!               sw: Linux bridge br0 (the underlay switch), 198.18.0.0/24
//!        +----------------------+------------------------+
//!   ro: ul0 198.18.0.1     hv2: ul0 198.18.0.2      hv3: ul0 198.18.0.3
//!   vnf-router             vx0: kernel vxlan VNI 100 vx0: kernel vxlan VNI 200
//!   web 10.0.1.1/24        host A 10.0.1.5/24        host B 10.0.2.5/24
//!   db  10.0.2.1/24        gw 10.0.1.1               gw 10.0.2.1
//!   ext 192.0.2.2/24 ---- "internet" host 192.0.2.1/24: a veth (`interface:` port) or,
//!                          in the OVS test, VLAN 100 of an Open vSwitch trunk
//! ```
//!
//! The hosts are the hypervisors' own `vx0` devices (learning off, head-end replication to
//! the router only); the router answers ARP for its interface addresses, routes between
//! the two VNIs and, where the test configures it, translates tenant addresses to the
//! external network 192.0.2.0/24 (which exists inside these namespaces only). The
//! external host has no route to 10.0.0.0/8: only NAT gets tenant traffic answered.
//!
//! As in `netns_vxlan.rs`, transmit checksum offload is off on the hypervisors' `ul0`
//! (a userspace VTEP on a veth would otherwise get unfinished inner TCP checksums), and on
//! the external host's veth where Open vSwitch's userspace datapath relays its frames.
//!
//! Gauges (`vnf_nat_sessions`, `vnf_nat_ports_in_use`, `vnf_arp_entries`) are refreshed by
//! the router's one-second timer, so the tests poll them for a few seconds.
//!
//! Besides the tools of the other interop tests these need `traceroute` (or iputils'
//! `tracepath`) and `nginx`: Debian packages `traceroute` and `nginx-light`, which
//! `.ci/run` must install.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vnf_tests::netns::{
    Capture, Family, Netns, Ovs, Proc, ROUTER_ADMIN as ADMIN, Router, Switch, WorkDir, have_root,
    have_tool, hypervisor, iperf3_tcp, mac_of, ping, ping_summary, prom, router_ns, serial, sh,
    underlay_switch, veth, wait_for,
};
use vnf_tests::{arp_request, checksum, udp_frame};

/// Every tool is installed (`have_tool` prints which one is not; under CI it fails).
fn tools(test: &str, list: &[&str]) -> bool {
    list.iter().all(|t| have_tool(test, t))
}

const BASE_TOOLS: &[&str] = &["ip", "bridge", "ethtool", "ping", "curl", "ss"];

/// A tenant host on hypervisor `n` (underlay 198.18.0.`n`): the kernel `vxlan` device
/// `vx0` on `vni`, flooding to the router, with the host's address `addr`/24, MTU `mtu`
/// and a default route via the router's interface address `gw`.
fn tenant_host(sw: &Switch, n: u8, vni: u32, addr: &str, gw: &str, mtu: u32) -> Netns {
    let hv = hypervisor(sw, n, vni, &[1]);
    hv.run("ip addr flush dev vx0");
    hv.run(&format!("ip addr add {addr}/24 dev vx0"));
    hv.run(&format!("ip link set vx0 mtu {mtu}"));
    hv.run(&format!("ip route add default via {gw} dev vx0"));
    hv
}

/// Jumbo frames on node `n`'s underlay link: its `ul0` and its switch port.
fn jumbo(sw: &Switch, node: &Netns, n: u8, mtu: u32) {
    sw.run(&format!("ip link set p{n} mtu {mtu}"));
    node.run(&format!("ip link set ul0 mtu {mtu}"));
}

/// The "internet" host 192.0.2.1/24 on a veth `eth0` whose other end is `ext0` in the
/// router's namespace (an untagged `interface:` port). No route to the tenants.
fn internet_on_veth(rns: &Netns) -> Netns {
    let inet = Netns::new("ine");
    vnf_tests::netns::quiet_ipv6(&inet);
    veth(rns, "ext0", &inet, "eth0");
    inet.run("ip addr add 192.0.2.1/24 dev eth0");
    inet
}

/// The router's configuration: ports `web` (VNI 100) and `db` (VNI 200) with interfaces
/// 10.0.1.1/24 and 10.0.2.1/24; with `uplink` (the port's keys, e.g. `interface: ext0`),
/// a port `uplink` and interface `ext` 192.0.2.2/24 on it; then `tail` (routes, nat, ...).
fn l3_config(uplink: Option<&str>, tail: &str) -> String {
    let (port, iface) = match uplink {
        Some(keys) => (
            format!("  - {{name: uplink, {keys}}}\n"),
            "  - {name: ext, port: uplink, addresses: [192.0.2.2/24]}\n".to_string(),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        "underlay:\n  address: 198.18.0.1\n\
         ports:\n\
         \x20 - {{name: web, vni: 100, flood: [198.18.0.2]}}\n\
         \x20 - {{name: db, vni: 200, flood: [198.18.0.3]}}\n\
         {port}\
         interfaces:\n\
         \x20 - {{name: web, port: web, addresses: [10.0.1.1/24]}}\n\
         \x20 - {{name: db, port: db, addresses: [10.0.2.1/24]}}\n\
         {iface}\
         {tail}"
    )
}

/// Routes and NAT to the external network: default route via 192.0.2.1, masquerade of
/// 10.0.0.0/16 out of `ext` through pool `internet` (192.0.2.10, `ports`), then `extra`
/// lines inside `nat:` (floating addresses, ...).
fn nat_tail(ports: &str, extra: &str) -> String {
    format!(
        "routes:\n\
         \x20 - {{prefix: 0.0.0.0/0, via: [192.0.2.1]}}\n\
         nat:\n\
         \x20 pools:\n\
         \x20   - {{name: internet, addresses: [192.0.2.10], ports: {ports}}}\n\
         \x20 masquerade:\n\
         \x20   - {{sources: [10.0.0.0/16], interface: ext, pool: internet, tenant: blue}}\n\
         {extra}"
    )
}

/// Ping until one answer comes (ARP on both sides resolved), up to 10 s.
fn warm_up(ns: &Netns, dst: &str) {
    let ok = wait_for(Duration::from_secs(10), || {
        ns.sh(&format!("ping -n -c 1 -W 1 {dst}")).status.success()
    });
    let (_, out) = ping(ns, &format!("-c 1 -W 1 {dst}"));
    assert!(ok, "{} cannot reach {dst} (ARP warm-up):\n{out}", ns.name);
}

/// `count` pings 0.1 s apart that must all be answered.
fn ping_clean(ns: &Netns, dst: &str, count: u32) {
    let (_, out) = ping(ns, &format!("-c {count} -i 0.1 -W 2 {dst}"));
    let (lost, sent) =
        ping_summary(&out).unwrap_or_else(|| panic!("no ping summary from {}:\n{out}", ns.name));
    assert!(
        lost == 0 && sent == count,
        "ping {} -> {dst} lost {lost}/{sent}:\n{out}",
        ns.name
    );
}

/// A sample, 0 if the router does not export it (yet).
fn sample(text: &str, key: &str) -> f64 {
    prom(text, key).unwrap_or(0.0)
}

/// A gauge once `ok` holds for it, polled for up to 3 s: gauges (`vnf_nat_sessions`,
/// `vnf_arp_entries`, ...) are refreshed by the router's timer tick, not per packet.
/// Returns the last value read (0 if absent).
fn gauge(r: &Router, key: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let mut v = 0.0;
    wait_for(Duration::from_secs(3), || {
        v = sample(&r.metrics(), key);
        ok(v)
    });
    v
}

/// `curl` inside `ns`: (exit status, `%{http_code} %{size_download}` or curl's error).
fn fetch(ns: &Netns, url: &str, max_time: u32) -> (bool, String) {
    let out = ns.sh(&format!(
        "curl -sS -o /dev/null --max-time {max_time} -w '%{{http_code}} %{{size_download}}' {url}"
    ));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Fetch `url` from `ns` and require HTTP 200 with `size` bytes.
fn fetch_ok(ns: &Netns, url: &str, size: usize, r: &Router) {
    let (ok, what) = fetch(ns, url, 10);
    assert!(
        ok && what == format!("200 {size}"),
        "{}: curl {url} failed: {what}\nrouter metrics:\n{}",
        ns.name,
        r.metrics()
    );
}

/// `POST /reload` to the router; (HTTP status, body).
fn reload(r: &Router) -> (u16, String) {
    let out = r.ns.sh(&format!(
        "curl -s -m 10 -X POST -w '\\n%{{http_code}}' http://{ADMIN}/reload"
    ));
    let all = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = all.rsplit_once('\n').unwrap_or(("", all.as_str()));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The router process runs and `/healthz` answers 200.
fn assert_alive(r: &mut Router) {
    assert!(r.proc.running(), "vnf-router exited:\n{}", r.log_text());
    let health =
        r.ns.sh(&format!("curl -sf -m 5 http://{ADMIN}/healthz"))
            .status
            .success();
    assert!(health, "/healthz does not answer 200:\n{}", r.log_text());
}

/// The lines of a file (a log), empty if it does not exist yet.
fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `tcpdump -r` of a pcap, one line per packet.
fn pcap_lines(pcap: &Path) -> Vec<String> {
    let out = sh(&format!("tcpdump -r {} -nn 2>/dev/null", pcap.display()));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The python helpers: a TCP echo server, a client holding connections open, and a raw
/// frame sender. Written into `dir`; returns their paths in that order.
fn python_helpers(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    // ADDR PORT: echo every connection's bytes back; log "from IP PORT" per connection.
    let echo = dir.join("echo_server.py");
    std::fs::write(
        &echo,
        "import socket, sys, threading\n\
         srv = socket.socket()\n\
         srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         srv.bind((sys.argv[1], int(sys.argv[2])))\n\
         srv.listen(64)\n\
         print('listening', flush=True)\n\
         def serve(c, a):\n\
         \x20   print('from', a[0], a[1], flush=True)\n\
         \x20   with c:\n\
         \x20       while True:\n\
         \x20           d = c.recv(4096)\n\
         \x20           if not d:\n\
         \x20               break\n\
         \x20           c.sendall(d)\n\
         while True:\n\
         \x20   c, a = srv.accept()\n\
         \x20   threading.Thread(target=serve, args=(c, a), daemon=True).start()\n",
    )
    .expect("write echo_server.py");
    // HOST PORT N GOFILE: open N connections, each checked with one echoed line ("connected
    // I"); when GOFILE exists, send another line on each and check its echo ("ok I" or
    // "fail I ..."); exit 0 if all came back.
    let hold = dir.join("hold.py");
    std::fs::write(
        &hold,
        "import os, socket, sys, time\n\
         host, port, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]\n\
         def echo(s, msg):\n\
         \x20   s.sendall(msg)\n\
         \x20   got = b''\n\
         \x20   while len(got) < len(msg):\n\
         \x20       d = s.recv(4096)\n\
         \x20       if not d:\n\
         \x20           break\n\
         \x20       got += d\n\
         \x20   return got == msg\n\
         socks = []\n\
         for i in range(n):\n\
         \x20   s = socket.create_connection((host, port), timeout=10)\n\
         \x20   s.settimeout(5)\n\
         \x20   if not echo(s, b'before %d\\n' % i):\n\
         \x20       print('no echo before', i, flush=True)\n\
         \x20       sys.exit(2)\n\
         \x20   socks.append(s)\n\
         \x20   print('connected', i + 1, flush=True)\n\
         while not os.path.exists(go):\n\
         \x20   time.sleep(0.05)\n\
         ok = 0\n\
         for i, s in enumerate(socks):\n\
         \x20   try:\n\
         \x20       good = echo(s, b'after %d ' % i + b'x' * 2000 + b'\\n')\n\
         \x20       print('ok' if good else 'fail', i, flush=True)\n\
         \x20       ok += good\n\
         \x20   except Exception as e:\n\
         \x20       print('fail', i, e, flush=True)\n\
         sys.exit(0 if ok == n else 1)\n",
    )
    .expect("write hold.py");
    // IFACE FILE GAP_S: send each line of FILE (a frame in hex) out of IFACE.
    let raw = dir.join("send_frames.py");
    std::fs::write(
        &raw,
        "import socket, sys, time\n\
         s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
         s.bind((sys.argv[1], 0))\n\
         gap = float(sys.argv[3])\n\
         for line in open(sys.argv[2]):\n\
         \x20   line = line.strip()\n\
         \x20   if line:\n\
         \x20       s.send(bytes.fromhex(line))\n\
         \x20       if gap:\n\
         \x20           time.sleep(gap)\n",
    )
    .expect("write send_frames.py");
    (echo, hold, raw)
}

/// Start the echo server on `addr:port` in `ns`, logging to `log`; returns once it listens.
fn echo_server(ns: &Netns, script: &Path, addr: &str, port: u16, log: &Path) -> Proc {
    let p = ns.spawn_logged(
        &format!("python3 -u {} {addr} {port}", script.display()),
        Some(log),
    );
    let up = wait_for(Duration::from_secs(10), || {
        lines_of(log).iter().any(|l| l == "listening")
    });
    assert!(up, "echo server did not start:\n{:?}", lines_of(log));
    p
}

/// Start a `python3 -m http.server` on `addr:port` in `ns` serving `root`, logging to
/// `log`; returns once it listens.
fn http_server(ns: &Netns, root: &Path, addr: &str, port: u16, log: &Path) -> Proc {
    let p = ns.spawn_logged(
        &format!(
            "python3 -u -m http.server {port} --bind {addr} --directory {}",
            root.display()
        ),
        Some(log),
    );
    let up = wait_for(Duration::from_secs(10), || {
        ns.sh(&format!("ss -ltn | grep -q '{addr}:{port} '"))
            .status
            .success()
    });
    assert!(up, "http.server did not start:\n{:?}", lines_of(log));
    p
}

/// The client address of the request for `path` in an `http.server` log
/// (`ADDR - - [date] "GET PATH HTTP/1.1" 200 -`).
fn http_server_client(log: &Path, path: &str) -> Option<String> {
    lines_of(log)
        .iter()
        .find(|l| l.contains(&format!("\"GET {path} ")))
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
}

/// Hop number -> addresses that answered, from `traceroute -n` or `tracepath -n` output.
fn hops(out: &str) -> Vec<(u32, BTreeSet<Ipv4Addr>)> {
    out.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let first = words.next()?;
            let n: u32 = first.trim_end_matches(':').parse().ok()?;
            let addrs: BTreeSet<Ipv4Addr> = words.filter_map(|w| w.parse().ok()).collect();
            Some((n, addrs))
        })
        .collect()
}

/// Hosts in VNI 100 and VNI 200, on different hypervisors, reach each other through the
/// router: ping without loss, iperf3 TCP both ways; traceroute shows the router's address
/// as hop 1 and the destination as hop 2; the router counts what it forwards out of `db`
/// and the ICMP time-exceeded it sent.
#[test]
fn routes_between_vnis() {
    const T: &str = "routes_between_vnis";
    let _g = serial();
    if !have_root(T) || !tools(T, BASE_TOOLS) || !have_tool(T, "iperf3") {
        return;
    }
    // traceroute (package `traceroute`) or, failing that, iputils' tracepath.
    let found = |tool: &str| sh(&format!("command -v {tool}")).status.success();
    let tracer = if found("traceroute") {
        "traceroute -n -I -m 6 -w 2 -q 3"
    } else if found("tracepath") {
        "tracepath -n -m 6"
    } else {
        // Neither: skipped, or (under CI) a failure naming the package to install.
        let _ = have_tool(T, "traceroute");
        return;
    };
    let t0 = Instant::now();
    let dir = WorkDir::new("router-vnis");
    let sw = underlay_switch(Family::V4);
    let a = tenant_host(&sw, 2, 100, "10.0.1.5", "10.0.1.1", 1450);
    let b = tenant_host(&sw, 3, 200, "10.0.2.5", "10.0.2.1", 1450);
    let mut r = Router::start(router_ns(&sw), &dir, &l3_config(None, ""));

    warm_up(&a, "10.0.1.1");
    warm_up(&a, "10.0.2.5");
    warm_up(&b, "10.0.1.5");
    let m0 = r.metrics();
    let db0 = r.metric("vnf_router_forwarded_packets_total{interface=\"db\"}");
    ping_clean(&a, "10.0.2.5", 20);
    ping_clean(&b, "10.0.1.5", 20);
    eprintln!("{T}: ping A (VNI 100) <-> B (VNI 200): 20 + 20 answered");

    let up = iperf3_tcp(&a, &b, "10.0.2.5", "-t 2");
    let down = iperf3_tcp(&a, &b, "10.0.2.5", "-t 2 -R");
    eprintln!(
        "{T}: iperf3 TCP A -> B {:.0} Mbit/s, B -> A {:.0} Mbit/s",
        up / 1e6,
        down / 1e6
    );

    let te0 = sample(&m0, "vnf_icmp_sent_total{type=\"time_exceeded\"}");
    let out = a.sh(&format!("{tracer} 10.0.2.5"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{T}: {tracer} 10.0.2.5:\n{}", text.trim_end());
    let h = hops(&text);
    let at = |n: u32| -> BTreeSet<Ipv4Addr> {
        h.iter()
            .filter(|(k, _)| *k == n)
            .flat_map(|(_, s)| s.iter().copied())
            .collect()
    };
    let router: Ipv4Addr = "10.0.1.1".parse().expect("address");
    let dest: Ipv4Addr = "10.0.2.5".parse().expect("address");
    assert_eq!(
        at(1),
        BTreeSet::from([router]),
        "hop 1 must be the router's web address:\n{text}"
    );
    assert_eq!(
        at(2),
        BTreeSet::from([dest]),
        "hop 2 must be the destination:\n{text}"
    );
    assert!(
        h.iter().all(|(n, _)| *n <= 2),
        "the trace went past the destination:\n{text}"
    );

    let m = r.metrics();
    let db = r.metric("vnf_router_forwarded_packets_total{interface=\"db\"}");
    let te = r.metric("vnf_icmp_sent_total{type=\"time_exceeded\"}");
    eprintln!(
        "{T}: forwarded out of db {db0} -> {db}; time_exceeded sent {te0} -> {te}; \
         forwarded bytes db {:?}",
        prom(&m, "vnf_router_forwarded_bytes_total{interface=\"db\"}")
    );
    assert!(
        db >= db0 + 40.0,
        "forwarded packets on db did not grow with the traffic ({db0} -> {db}):\n{m}"
    );
    assert!(
        te > te0,
        "no ICMP time exceeded counted for the trace:\n{m}"
    );
    assert_alive(&mut r);
    eprintln!("{T}: done in {:.1?}", t0.elapsed());
}

/// A 1500-byte packet with DF from the 1500-MTU VNI toward the 1450-MTU VNI is dropped
/// and answered with ICMP "fragmentation needed" carrying MTU 1450; the host caches the
/// path MTU, and a TCP transfer whose peer advertises a 1460-byte MSS completes because
/// the sender learns the path MTU from the router.
#[test]
fn path_mtu_discovery() {
    const T: &str = "path_mtu_discovery";
    let _g = serial();
    if !have_root(T) || !tools(T, BASE_TOOLS) || !have_tool(T, "iperf3") {
        return;
    }
    let t0 = Instant::now();
    let dir = WorkDir::new("router-pmtu");
    let sw = underlay_switch(Family::V4);
    let a = tenant_host(&sw, 2, 100, "10.0.1.5", "10.0.1.1", 1500);
    let b = tenant_host(&sw, 3, 200, "10.0.2.5", "10.0.2.1", 1450);
    let rns = router_ns(&sw);
    jumbo(&sw, &a, 2, 9000);
    jumbo(&sw, &b, 3, 9000);
    jumbo(&sw, &rns, 1, 9000);
    let mut r = Router::start(
        rns,
        &dir,
        "underlay:\n  address: 198.18.0.1\n  mtu: 9000\n\
         ports:\n\
         \x20 - {name: web, vni: 100, flood: [198.18.0.2], mtu: 1500}\n\
         \x20 - {name: db, vni: 200, flood: [198.18.0.3], mtu: 1450}\n\
         interfaces:\n\
         \x20 - {name: web, port: web, addresses: [10.0.1.1/24]}\n\
         \x20 - {name: db, port: db, addresses: [10.0.2.1/24]}\n",
    );
    warm_up(&a, "10.0.2.5");
    // A full 1500-byte packet crosses web (MTU 1500) both ways: the jumbo underlay carries it.
    ping_clean(&a, "10.0.1.1", 3);
    let (got, out) = ping(&a, "-M do -s 1472 -c 2 -W 2 10.0.1.1");
    assert_eq!(
        got, 2,
        "a 1500-byte ping to the router's web address failed:\n{out}"
    );

    let m0 = r.metrics();
    let (got, out) = ping(&a, "-M do -s 1472 -c 3 -W 2 10.0.2.5");
    eprintln!(
        "{T}: ping -M do -s 1472 10.0.2.5 from A:\n{}",
        out.trim_end()
    );
    assert_eq!(
        got, 0,
        "a 1500-byte packet got through a 1450-byte port:\n{out}"
    );
    assert!(
        out.contains("From 10.0.1.1")
            && out.contains("Frag needed")
            && (out.contains("mtu = 1450") || out.contains("mtu=1450")),
        "expected ICMP fragmentation needed (mtu = 1450) from 10.0.1.1:\n{out}"
    );
    let m1 = r.metrics();
    let fnd = |m: &str| sample(m, "vnf_icmp_sent_total{type=\"frag_needed\"}");
    let mtu = |m: &str| sample(m, "vnf_drops_total{reason=\"mtu_exceeded\"}");
    assert!(
        fnd(&m1) > fnd(&m0) && r.metric("vnf_icmp_sent_total{type=\"frag_needed\"}") > 0.0,
        "vnf_icmp_sent_total{{type=\"frag_needed\"}} did not grow:\n{m1}"
    );
    assert!(
        mtu(&m1) > mtu(&m0) && r.drops("mtu_exceeded") > 0.0,
        "vnf_drops_total{{reason=\"mtu_exceeded\"}} did not grow:\n{m1}"
    );
    let route = a.run("ip route get 10.0.2.5");
    eprintln!("{T}: A: ip route get 10.0.2.5: {}", route.trim_end());
    assert!(
        route.contains("mtu 1450"),
        "A did not cache the path MTU 1450:\n{route}"
    );

    // TCP: forget the cached MTU, and let B advertise a 1460-byte MSS (as a host on a
    // 1500-byte link would), so that A starts with 1500-byte segments and must discover
    // the 1450-byte path from the router's ICMP.
    a.run("ip route flush cache");
    let route = a.run("ip route get 10.0.2.5");
    assert!(
        !route.contains("mtu"),
        "`ip route flush cache` left the path MTU:\n{route}"
    );
    b.run("ip route replace default via 10.0.2.1 dev vx0 advmss 1460");
    let bps = iperf3_tcp(&a, &b, "10.0.2.5", "-n 5M");
    let m2 = r.metrics();
    let route = a.run("ip route get 10.0.2.5");
    eprintln!(
        "{T}: iperf3 -n 5M A -> B done ({:.0} Mbit/s); frag_needed {} -> {}, mtu_exceeded \
         {} -> {}; A: {}",
        bps / 1e6,
        fnd(&m1),
        fnd(&m2),
        mtu(&m1),
        mtu(&m2),
        route.trim_end()
    );
    assert!(
        fnd(&m2) > fnd(&m1),
        "the TCP transfer's full-size segments got no ICMP fragmentation needed:\n{m2}"
    );
    assert!(
        route.contains("mtu 1450"),
        "A did not learn the path MTU from the TCP transfer:\n{route}"
    );
    assert_alive(&mut r);
    eprintln!("{T}: done in {:.1?}", t0.elapsed());
}

/// nginx's configuration for the external host: `listen`, files from `root`, access log
/// lines `$remote_addr $request_uri $status` in `log`.
fn nginx_conf(dir: &Path, listen: &str, root: &Path, log: &Path) -> PathBuf {
    let d = dir.display();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "user root;\n\
             worker_processes 1;\n\
             daemon off;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/nginx-error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
             \x20 log_format peer '$remote_addr $request_uri $status';\n\
             \x20 access_log {} peer;\n\
             \x20 client_body_temp_path {d}/nginx-body;\n\
             \x20 proxy_temp_path {d}/nginx-proxy;\n\
             \x20 fastcgi_temp_path {d}/nginx-fastcgi;\n\
             \x20 uwsgi_temp_path {d}/nginx-uwsgi;\n\
             \x20 scgi_temp_path {d}/nginx-scgi;\n\
             \x20 server {{\n\
             \x20   listen {listen};\n\
             \x20   root {};\n\
             \x20 }}\n\
             }}\n",
            log.display(),
            root.display()
        ),
    )
    .expect("write nginx.conf");
    conf
}

/// The client address nginx logged for `uri`.
fn nginx_client(log: &Path, uri: &str) -> Option<String> {
    lines_of(log).iter().find_map(|l| {
        let mut w = l.split_whitespace();
        let addr = w.next()?;
        (w.next()? == uri).then(|| addr.to_owned())
    })
}

/// Source NAT, a floating address and hairpin, with the external network on VLAN 100 of an
/// Open vSwitch trunk: a tenant host reaches the external nginx as the pool address; the
/// external host reaches a tenant server through the floating address and is seen with its
/// own address; a tenant host reaches the same server through the floating address
/// (hairpin) and the server sees the pool address; the floating host itself leaves as the
/// floating address.
#[test]
fn snat_floating_hairpin_over_ovs_vlan() {
    const T: &str = "snat_floating_hairpin_over_ovs_vlan";
    let _g = serial();
    if !have_root(T)
        || !tools(T, BASE_TOOLS)
        || !tools(
            T,
            &[
                "python3",
                "nginx",
                "ovsdb-tool",
                "ovsdb-server",
                "ovs-vswitchd",
                "ovs-vsctl",
            ],
        )
    {
        return;
    }
    let t0 = Instant::now();
    let dir = WorkDir::new("router-nat-ovs");
    let sw = underlay_switch(Family::V4);
    let a = tenant_host(&sw, 2, 100, "10.0.1.5", "10.0.1.1", 1450);
    let b = tenant_host(&sw, 3, 200, "10.0.2.5", "10.0.2.1", 1450);
    let rns = router_ns(&sw);

    // The VLAN switch: OVS br0 (userspace datapath) in its own namespace; p1 an access
    // port of VLAN 100 to the external host, p2 a trunk of VLAN 100 to the router.
    let osw = Netns::new("osw");
    let inet = Netns::new("ine");
    for ns in [&osw, &inet] {
        vnf_tests::netns::quiet_ipv6(ns);
    }
    veth(&osw, "p1", &inet, "eth0");
    veth(&osw, "p2", &rns, "trunk0");
    inet.run("ip addr add 192.0.2.1/24 dev eth0");
    // OVS relays frames through AF_PACKET without the virtio-net header: checksums in
    // software.
    inet.run("ethtool -K eth0 tx off");
    let ovs = Ovs::start(&dir.join("ovs"), &osw);
    ovs.vsctl("add-br br0 -- set bridge br0 datapath_type=netdev");
    ovs.vsctl("add-port br0 p1 tag=100");
    ovs.vsctl("add-port br0 p2 trunks=100");

    // nginx on the external host, and a web server on tenant host B.
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("www");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(www.join("tenant.bin"), &big).expect("write tenant.bin");
    std::fs::write(www.join("floating.txt"), "floating\n").expect("write floating.txt");
    let access = dir.join("nginx-access.log");
    let conf = nginx_conf(&dir, "192.0.2.1:80", &www, &access);
    let _nginx = inet.spawn_logged(
        &format!("nginx -c {} -p {}", conf.display(), dir.display()),
        Some(&dir.join("nginx.out")),
    );
    let tenant_www = dir.join("tenant-www");
    std::fs::create_dir_all(&tenant_www).expect("tenant www");
    for f in ["from-inet.txt", "hairpin.txt"] {
        std::fs::write(tenant_www.join(f), format!("{f}\n")).expect("write tenant file");
    }
    let server_log = dir.join("tenant-http.log");
    let _server = http_server(&b, &tenant_www, "10.0.2.5", 8080, &server_log);
    let up = wait_for(Duration::from_secs(10), || {
        inet.sh("ss -ltn | grep -q '192.0.2.1:80 '")
            .status
            .success()
    });
    assert!(
        up,
        "nginx did not start:\n{}",
        std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default()
    );

    let mut r = Router::start(
        rns,
        &dir,
        &l3_config(
            Some("trunk: trunk0, vlan: 100"),
            &nat_tail(
                "1024-65535",
                "\x20 floating:\n\
                 \x20   - {external: 192.0.2.20, internal: 10.0.2.5, interface: ext}\n",
            ),
        ),
    );
    warm_up(&a, "10.0.1.1");
    warm_up(&b, "10.0.2.1");

    // 1. Source NAT: A -> nginx, seen as the pool address.
    fetch_ok(&a, "http://192.0.2.1/tenant.bin", big.len(), &r);
    // Sessions while A's connection lingers (closed TCP sessions live 10 s); asserted at
    // the end, after the behaviour.
    let sessions_first = gauge(&r, "vnf_nat_sessions", |v| v > 0.0);
    let seen = nginx_client(&access, "/tenant.bin");
    eprintln!(
        "{T}: A -> http://192.0.2.1/tenant.bin: nginx saw {seen:?}; {sessions_first} NAT sessions"
    );
    assert_eq!(
        seen.as_deref(),
        Some("192.0.2.10"),
        "nginx must see the pool address:\n{:?}",
        lines_of(&access)
    );

    // 2. Floating, inbound: the external host reaches B's server at 192.0.2.20.
    fetch_ok(&inet, "http://192.0.2.20:8080/from-inet.txt", 14, &r);
    let seen = http_server_client(&server_log, "/from-inet.txt");
    eprintln!("{T}: internet -> http://192.0.2.20:8080/: B's server saw {seen:?}");
    assert_eq!(
        seen.as_deref(),
        Some("192.0.2.1"),
        "the tenant server must see the external host's real address:\n{:?}",
        lines_of(&server_log)
    );

    // 3. Hairpin: A reaches B through the floating address; B sees the pool address.
    fetch_ok(&a, "http://192.0.2.20:8080/hairpin.txt", 12, &r);
    let seen = http_server_client(&server_log, "/hairpin.txt");
    eprintln!("{T}: A -> http://192.0.2.20:8080/ (hairpin): B's server saw {seen:?}");
    assert_eq!(
        seen.as_deref(),
        Some("192.0.2.10"),
        "hairpin: the tenant server must see the router's external address:\n{:?}",
        lines_of(&server_log)
    );

    // 4. Floating, outbound: B itself leaves as 192.0.2.20 (1:1), not through the pool.
    fetch_ok(&b, "http://192.0.2.1/floating.txt", 9, &r);
    let seen = nginx_client(&access, "/floating.txt");
    eprintln!("{T}: B -> http://192.0.2.1/floating.txt: nginx saw {seen:?}");
    assert_eq!(
        seen.as_deref(),
        Some("192.0.2.20"),
        "the floating host must leave as its floating address:\n{:?}",
        lines_of(&access)
    );

    let sessions = gauge(&r, "vnf_nat_sessions", |v| v > 0.0);
    let m = r.metrics();
    eprintln!(
        "{T}: vnf_nat_sessions {sessions}, ports in use {:?}",
        prom(&m, "vnf_nat_ports_in_use{pool=\"internet\"}")
    );
    assert!(
        sessions_first > 0.0 && sessions > 0.0,
        "vnf_nat_sessions must count the sessions while connections linger (after the \
         first fetch: {sessions_first}, after all: {sessions}):\n{m}"
    );
    assert_alive(&mut r);
    drop(r);
    drop(ovs);
    eprintln!("{T}: done in {:.1?}", t0.elapsed());
}

/// A pool of three ports: three long-lived TCP connections take them all; a fourth flow
/// is refused (nothing of it reaches the external network) and counted as
/// `nat_pool_exhausted`; the three connections still carry data and the router stays up.
#[test]
fn nat_pool_exhaustion() {
    const T: &str = "nat_pool_exhaustion";
    let _g = serial();
    if !have_root(T) || !tools(T, BASE_TOOLS) || !tools(T, &["python3", "tcpdump"]) {
        return;
    }
    let t0 = Instant::now();
    let dir = WorkDir::new("router-nat-pool");
    let (echo, hold, _) = python_helpers(&dir);
    let sw = underlay_switch(Family::V4);
    let a = tenant_host(&sw, 2, 100, "10.0.1.5", "10.0.1.1", 1450);
    let _b = tenant_host(&sw, 3, 200, "10.0.2.5", "10.0.2.1", 1450);
    let rns = router_ns(&sw);
    let inet = internet_on_veth(&rns);
    let echo_log = dir.join("echo.log");
    let _echo = echo_server(&inet, &echo, "192.0.2.1", 7000, &echo_log);
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("index.html"), "hello\n").expect("write index.html");
    let _web = http_server(&inet, &www, "192.0.2.1", 8080, &dir.join("http.log"));
    let mut r = Router::start(
        rns,
        &dir,
        &l3_config(Some("interface: ext0"), &nat_tail("20000-20002", "")),
    );
    // ARP between A and the router, without using a NAT port.
    warm_up(&a, "10.0.1.1");

    let go = dir.join("go");
    let hold_log = dir.join("hold.log");
    let mut holder = a.spawn_logged(
        &format!(
            "python3 -u {} 192.0.2.1 7000 3 {}",
            hold.display(),
            go.display()
        ),
        Some(&hold_log),
    );
    let connected = wait_for(Duration::from_secs(20), || {
        lines_of(&hold_log).iter().any(|l| l == "connected 3") || !holder.running()
    });
    assert!(
        connected && holder.running(),
        "three connections through NAT did not open: {:?}\nmetrics:\n{}",
        lines_of(&hold_log),
        r.metrics()
    );
    let peers: Vec<String> = lines_of(&echo_log)
        .into_iter()
        .filter(|l| l.starts_with("from "))
        .collect();
    eprintln!("{T}: echo server saw {peers:?}");
    let ports: BTreeSet<u16> = peers
        .iter()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.get(1) == Some(&"192.0.2.10"))
                .then(|| w.get(2)?.parse().ok())
                .flatten()
        })
        .collect();
    assert_eq!(
        ports,
        BTreeSet::from([20000, 20001, 20002]),
        "the three connections must come from 192.0.2.10 ports 20000-20002: {peers:?}"
    );
    // Asserted at the end, after the behaviour.
    let in_use = gauge(&r, "vnf_nat_ports_in_use{pool=\"internet\"}", |v| v == 3.0);

    // A fourth flow: refused, and nothing of it leaves on the external network.
    let exhausted0 = r.drops("nat_pool_exhausted");
    let cap = Capture::start(&inet, "eth0", "tcp port 8080", &dir, "ext-8080");
    let started = Instant::now();
    let (ok, what) = fetch(&a, "http://192.0.2.1:8080/", 3);
    let took = started.elapsed();
    let pcap = cap.stop();
    let leaked = pcap_lines(&pcap);
    let exhausted = r.drops("nat_pool_exhausted");
    eprintln!(
        "{T}: 4th flow: curl ok={ok} after {took:.1?}: {what}; nat_pool_exhausted \
         {exhausted0} -> {exhausted}; packets on the external network: {}",
        leaked.len()
    );
    assert!(
        !ok,
        "a fourth flow got through a pool of three ports: {what}"
    );
    assert!(
        took < Duration::from_secs(6),
        "curl --max-time 3 took {took:?}"
    );
    assert!(
        leaked.is_empty(),
        "the refused flow reached the external network:\n{}",
        leaked.join("\n")
    );
    assert!(
        exhausted > exhausted0,
        "nat_pool_exhausted did not count the refused flow:\n{}",
        r.metrics()
    );

    // The three connections still carry data.
    std::fs::write(&go, "").expect("write go file");
    let code = holder.wait_timeout(Duration::from_secs(20));
    let log = lines_of(&hold_log);
    eprintln!("{T}: held connections after the refusal: {log:?}");
    assert_eq!(
        code,
        Some(0),
        "the three established connections must still carry data: {log:?}"
    );
    assert_alive(&mut r);
    assert_eq!(
        in_use,
        3.0,
        "vnf_nat_ports_in_use{{pool=\"internet\"}} must show the three ports in use:\n{}",
        r.metrics()
    );
    eprintln!("{T}: done in {:.1?}", t0.elapsed());
}

/// A UDP stream through source NAT while the configuration is reloaded twice: not one
/// datagram is lost, the stream keeps its one external port, and a TCP connection opened
/// before the reloads still carries data after them.
#[test]
fn reload_under_udp_stream_keeps_nat_sessions() {
    const T: &str = "reload_under_udp_stream_keeps_nat_sessions";
    let _g = serial();
    if !have_root(T) || !tools(T, BASE_TOOLS) || !tools(T, &["python3", "tcpdump", "iperf3"]) {
        return;
    }
    let t0 = Instant::now();
    let dir = WorkDir::new("router-nat-reload");
    let (echo, hold, _) = python_helpers(&dir);
    let sw = underlay_switch(Family::V4);
    let a = tenant_host(&sw, 2, 100, "10.0.1.5", "10.0.1.1", 1450);
    let _b = tenant_host(&sw, 3, 200, "10.0.2.5", "10.0.2.1", 1450);
    let rns = router_ns(&sw);
    let inet = internet_on_veth(&rns);
    let echo_log = dir.join("echo.log");
    let _echo = echo_server(&inet, &echo, "192.0.2.1", 7000, &echo_log);
    let config = |extra: &str| {
        l3_config(
            Some("interface: ext0"),
            &format!("{}{extra}", nat_tail("1024-65535", "")),
        )
    };
    let mut r = Router::start(rns, &dir, &config(""));
    let cfg = dir.join("router.yaml");
    warm_up(&a, "10.0.1.1");

    // A TCP connection through NAT, opened before the reloads.
    let go = dir.join("go");
    let hold_log = dir.join("hold.log");
    let mut holder = a.spawn_logged(
        &format!(
            "python3 -u {} 192.0.2.1 7000 1 {}",
            hold.display(),
            go.display()
        ),
        Some(&hold_log),
    );
    let connected = wait_for(Duration::from_secs(20), || {
        lines_of(&hold_log).iter().any(|l| l == "connected 1") || !holder.running()
    });
    assert!(
        connected && holder.running(),
        "the TCP connection through NAT did not open: {:?}",
        lines_of(&hold_log)
    );

    // The UDP stream: 20 Mbit/s of 1000-byte datagrams for 8 s.
    let _server = inet.spawn("iperf3 -s -1 --json -B 192.0.2.1");
    let up = wait_for(Duration::from_secs(10), || {
        inet.sh("ss -ltn | grep -q '192.0.2.1:5201 '")
            .status
            .success()
    });
    assert!(up, "iperf3 server did not start");
    let cap = Capture::start_snaplen(&inet, "eth0", "udp dst port 5201", &dir, "ext-udp", 64);
    let json = dir.join("iperf3-udp.json");
    let mut client = a.spawn(&format!(
        "timeout 30 iperf3 -c 192.0.2.1 -u -b 20M -t 8 -l 1000 --json --get-server-output \
         --connect-timeout 5000 > {} 2>&1",
        json.display()
    ));
    let stream_start = Instant::now();
    std::thread::sleep(Duration::from_secs(2));

    // Two reloads during the stream: a new route, then a new ICMP rate.
    let extra1 = "\x20 - {prefix: 10.66.0.0/16, action: blackhole}\n";
    let with_route = config("").replace("routes:\n", &format!("routes:\n{extra1}"));
    std::fs::write(&cfg, &with_route).expect("write config");
    let (code, body) = reload(&r);
    let reload1 = stream_start.elapsed().as_secs_f64();
    assert_eq!(
        code,
        200,
        "POST /reload (route added): {body}\n{}",
        r.log_text()
    );
    let shown = r.ns.run(&format!("curl -sf http://{ADMIN}/config"));
    assert!(
        shown.contains("10.66.0.0/16"),
        "GET /config does not show the reloaded route:\n{shown}"
    );
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(
        &cfg,
        format!("{with_route}icmp:\n  rate: 200\n  burst: 20\n"),
    )
    .expect("write config");
    let (code, body) = reload(&r);
    let reload2 = stream_start.elapsed().as_secs_f64();
    assert_eq!(
        code,
        200,
        "POST /reload (icmp rate): {body}\n{}",
        r.log_text()
    );

    let done = client.wait_timeout(Duration::from_secs(30));
    let pcap = cap.stop();
    let text = std::fs::read_to_string(&json).unwrap_or_default();
    assert_eq!(done, Some(0), "iperf3 UDP client failed:\n{text}");
    let parsed = sh(&format!(
        "python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); \
         o=d[\"server_output_json\"]; s=o[\"end\"][\"sum\"]; c=d[\"end\"][\"sum\"]; \
         print(s[\"packets\"], s[\"lost_packets\"], c[\"packets\"]); \
         print(\" \".join(\"%.0fs:%d\" % (i[\"sum\"][\"start\"], i[\"sum\"][\"lost_packets\"]) \
         for i in o[\"intervals\"]))' {}",
        json.display()
    ));
    let parsed = String::from_utf8_lossy(&parsed.stdout).into_owned();
    let (totals, per_second) = parsed.split_once('\n').unwrap_or((&parsed, ""));
    let nums: Vec<u64> = totals
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums.len(), 3, "cannot read iperf3's JSON:\n{text}");
    // `packets` on the server: the datagrams it expected (highest sequence number seen).
    let (counted, lost, sent) = (nums[0], nums[1], nums[2]);
    let per_second = per_second.trim();
    // The external source ports the stream arrived from.
    let sources: BTreeSet<String> = pcap_lines(&pcap)
        .iter()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w.iter().position(|x| *x == "IP")?;
            w.get(i + 1).map(|s| (*s).to_owned())
        })
        .collect();
    let m = r.metrics();
    eprintln!(
        "{T}: iperf3 UDP: {sent} sent, {counted} counted by the server, {lost} lost \
         (lost per second: {per_second}; reloads at {reload1:.1} s and {reload2:.1} s); \
         external sources {sources:?}; reloads ok {:?}; NAT sessions {:?}",
        prom(&m, "vnf_config_reloads_total{result=\"ok\"}"),
        prom(&m, "vnf_nat_sessions")
    );
    assert_eq!(
        prom(&m, "vnf_config_reloads_total{result=\"ok\"}"),
        Some(2.0),
        "both reloads must have been applied:\n{m}"
    );
    assert!(counted > 10_000, "the UDP stream barely ran:\n{text}");
    assert_eq!(
        lost,
        0,
        "the server lost {lost} of {sent} datagrams (lost per second of the stream: \
         {per_second}; reloads at {reload1:.1} s and {reload2:.1} s; router drops \
         rx_overrun {:?}, tx_error {:?})",
        prom(&m, "vnf_drops_total{reason=\"rx_overrun\"}"),
        prom(&m, "vnf_drops_total{reason=\"tx_error\"}")
    );
    assert_eq!(
        sources.len(),
        1,
        "the UDP stream must keep one external address and port across the reloads: \
         {sources:?}"
    );
    assert!(
        sources.iter().all(|s| s.starts_with("192.0.2.10.")),
        "the UDP stream must leave as the pool address: {sources:?}"
    );

    // The TCP connection from before the reloads still works.
    std::fs::write(&go, "").expect("write go file");
    let code = holder.wait_timeout(Duration::from_secs(20));
    assert_eq!(
        code,
        Some(0),
        "the TCP connection opened before the reloads no longer works: {:?}",
        lines_of(&hold_log)
    );
    assert!(
        gauge(&r, "vnf_nat_sessions", |v| v > 0.0) > 0.0,
        "no NAT sessions left after the reloads"
    );
    assert_alive(&mut r);
    eprintln!("{T}: done in {:.1?}", t0.elapsed());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn mac_bytes(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, p) in s.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(p, 16).unwrap_or_else(|_| panic!("bad MAC `{s}`"));
    }
    m
}

/// Recompute the IPv4 header checksum of an Ethernet frame (header length from IHL).
fn fix_ip_checksum(f: &mut [u8]) {
    let ihl = usize::from(f[14] & 0x0f) * 4;
    f[24] = 0;
    f[25] = 0;
    let sum = checksum(&f[14..14 + ihl.max(20)]);
    f[24..26].copy_from_slice(&sum.to_be_bytes());
}

/// Send `frames` out of `iface` in `ns` (through a file of hex lines).
fn send_frames(ns: &Netns, script: &Path, dir: &Path, iface: &str, frames: &[Vec<u8>]) {
    let file = dir.join("frames.hex");
    let text: String = frames.iter().map(|f| hex(f) + "\n").collect();
    std::fs::write(&file, text).expect("write frames");
    ns.run(&format!(
        "python3 {} {iface} {} 0.001",
        script.display(),
        file.display()
    ));
}

/// Malformed and unusual IPv4 from a tenant host, written as raw frames to the router's
/// MAC: each malformed kind is dropped as `ip_malformed` and not forwarded; TTL 1 is
/// answered with time exceeded (`ttl_exceeded`); IP options and fragments do no harm; an
/// ARP flood for other addresses does not fill the neighbour table; a destination without
/// a route is dropped as `no_route`. Afterwards ping still works and the process is up.
#[test]
fn bad_input_is_counted() {
    const T: &str = "bad_input_is_counted";
    let _g = serial();
    if !have_root(T) || !tools(T, BASE_TOOLS) || !tools(T, &["python3", "tcpdump"]) {
        return;
    }
    let t0 = Instant::now();
    let dir = WorkDir::new("router-bad-input");
    let (_, _, send) = python_helpers(&dir);
    let sw = underlay_switch(Family::V4);
    let a = tenant_host(&sw, 2, 100, "10.0.1.5", "10.0.1.1", 1450);
    let b = tenant_host(&sw, 3, 200, "10.0.2.5", "10.0.2.1", 1450);
    // No default route: 192.0.2.99 is unrouted.
    let mut r = Router::start(router_ns(&sw), &dir, &l3_config(None, ""));
    warm_up(&a, "10.0.2.5");
    warm_up(&b, "10.0.1.5");
    let neigh = a.run("ip neigh show 10.0.1.1 dev vx0");
    let router_mac = neigh
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC for 10.0.1.1 in A's neighbour table: {neigh}"))
        .to_string();
    let host_mac = mac_of(&a, "vx0");
    eprintln!("{T}: router web MAC {router_mac}, host A MAC {host_mac}");
    let (src_mac, dst_mac) = (mac_bytes(&host_mac), mac_bytes(&router_mac));
    let a_ip: Ipv4Addr = "10.0.1.5".parse().expect("address");
    let b_ip: Ipv4Addr = "10.0.2.5".parse().expect("address");
    let udp = |dst: Ipv4Addr, dport: u16| {
        udp_frame(src_mac, dst_mac, a_ip, dst, 40000, dport, &[0x5a; 32])
    };

    // 1. Malformed headers, one kind at a time, each must be counted as ip_malformed.
    let mut kinds: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut f = udp(b_ip, 7777);
    f[16..18].copy_from_slice(&1000u16.to_be_bytes());
    fix_ip_checksum(&mut f);
    kinds.push(("total length > frame", f));
    let mut f = udp(b_ip, 7777);
    f[14] = 0x44;
    fix_ip_checksum(&mut f);
    kinds.push(("header length 4 (< 5)", f));
    let mut f = udp(b_ip, 7777);
    f[24] ^= 0x5a;
    kinds.push(("bad header checksum", f));
    let mut f = udp(b_ip, 7777);
    f[14] = 0x65;
    fix_ip_checksum(&mut f);
    kinds.push(("version 6 in an IPv4 ethertype", f));
    let mut f = udp(b_ip, 7777);
    f[16..18].copy_from_slice(&12u16.to_be_bytes());
    fix_ip_checksum(&mut f);
    kinds.push(("total length < header", f));
    // Everything that reaches B while only malformed packets are sent: nothing may.
    let cap = Capture::start(&b, "vx0", "not arp", &dir, "host-b");
    for (what, frame) in &kinds {
        let before = r.drops("ip_malformed");
        send_frames(&a, &send, &dir, "vx0", &vec![frame.clone(); 3]);
        let counted = wait_for(Duration::from_secs(3), || {
            r.drops("ip_malformed") >= before + 3.0
        });
        let after = r.drops("ip_malformed");
        eprintln!("{T}: 3 x {what}: ip_malformed {before} -> {after}");
        assert!(
            counted,
            "{what}: 3 frames, ip_malformed {before} -> {after}:\n{}",
            r.metrics()
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let leaked = pcap_lines(&cap.stop());
    assert!(
        leaked.is_empty(),
        "malformed packets were forwarded to B:\n{}",
        leaked.join("\n")
    );

    // 2. TTL 1 through the router: time exceeded, counted as ttl_exceeded.
    let (te0, ttl0) = (
        r.metric("vnf_icmp_sent_total{type=\"time_exceeded\"}"),
        r.drops("ttl_exceeded"),
    );
    let mut f = udp(b_ip, 7778);
    f[22] = 1;
    fix_ip_checksum(&mut f);
    send_frames(&a, &send, &dir, "vx0", &vec![f; 5]);
    let counted = wait_for(Duration::from_secs(3), || {
        r.drops("ttl_exceeded") >= ttl0 + 5.0
    });
    let (te, ttl) = (
        r.metric("vnf_icmp_sent_total{type=\"time_exceeded\"}"),
        r.drops("ttl_exceeded"),
    );
    eprintln!("{T}: 5 x TTL 1: ttl_exceeded {ttl0} -> {ttl}, time_exceeded sent {te0} -> {te}");
    assert!(
        counted,
        "TTL 1 not counted as ttl_exceeded ({ttl0} -> {ttl})"
    );
    assert!(
        te > te0,
        "no ICMP time exceeded sent for TTL 1 ({te0} -> {te})"
    );

    // 3. IP options (4 NOPs... EOL) and fragments: forwarded or dropped, no crash.
    let base = udp(b_ip, 7779);
    let mut f = base[..34].to_vec();
    f.extend_from_slice(&[1, 1, 1, 0]);
    f.extend_from_slice(&base[34..]);
    f[14] = 0x46;
    let len = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&len.to_be_bytes());
    fix_ip_checksum(&mut f);
    let mut frags = vec![f];
    let whole = udp_frame(src_mac, dst_mac, a_ip, b_ip, 40000, 7780, &[0x33; 40]);
    // First fragment: the UDP header and 16 bytes (MF); second: the other 24 at offset 3.
    let mut first = whole[..14 + 20 + 24].to_vec();
    first[16..18].copy_from_slice(&44u16.to_be_bytes());
    first[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
    fix_ip_checksum(&mut first);
    let mut second = whole[..14 + 20].to_vec();
    second.extend_from_slice(&whole[14 + 20 + 24..]);
    second[16..18].copy_from_slice(&(20u16 + 24).to_be_bytes());
    second[20..22].copy_from_slice(&3u16.to_be_bytes());
    fix_ip_checksum(&mut second);
    frags.push(first);
    frags.push(second);
    send_frames(&a, &send, &dir, "vx0", &frags);
    std::thread::sleep(Duration::from_millis(300));
    assert_alive(&mut r);

    // 4. 1000 ARP requests from made-up neighbours for other addresses of the subnet.
    // A and B are resolved: the gauge shows them, which also shows that it is live (checked
    // at the end, after the other kinds of input).
    let arp0 = gauge(&r, "vnf_arp_entries", |v| v >= 2.0);
    let mut x: u32 = 0x1234_5678;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let arps: Vec<Vec<u8>> = (0..1000)
        .map(|_| {
            let v = next();
            let mac = [
                0x02,
                0xaa,
                (v >> 24) as u8,
                (v >> 16) as u8,
                (v >> 8) as u8,
                v as u8,
            ];
            let sender = Ipv4Addr::new(10, 0, 1, 100 + (v % 150) as u8);
            let target = Ipv4Addr::new(10, 0, 1, 2 + ((v >> 8) % 250) as u8);
            let target = if target == a_ip {
                Ipv4Addr::new(10, 0, 1, 6)
            } else {
                target
            };
            arp_request(mac, sender, target)
        })
        .collect();
    let started = Instant::now();
    send_frames(&a, &send, &dir, "vx0", &arps);
    // The gauge is refreshed once a second: read it after two refreshes.
    std::thread::sleep(Duration::from_millis(2500));
    let arp = r.metric("vnf_arp_entries");
    eprintln!(
        "{T}: 1000 ARP requests for other addresses in {:.1?}: vnf_arp_entries {arp0} -> {arp}",
        started.elapsed()
    );

    // 5. A destination without a route.
    let nr0 = r.drops("no_route");
    send_frames(
        &a,
        &send,
        &dir,
        "vx0",
        &vec![udp("192.0.2.99".parse().expect("address"), 7781); 3],
    );
    let counted = wait_for(Duration::from_secs(3), || r.drops("no_route") >= nr0 + 3.0);
    let nr = r.drops("no_route");
    eprintln!("{T}: 3 x to unrouted 192.0.2.99: no_route {nr0} -> {nr}");
    assert!(
        counted,
        "no_route did not count 3 unrouted packets ({nr0} -> {nr})"
    );

    // The router still routes.
    ping_clean(&a, "10.0.2.5", 5);
    let m = r.metrics();
    assert!(r.drops("ip_malformed") > 0.0 && r.drops("ttl_exceeded") > 0.0);
    assert!(r.drops("no_route") > 0.0, "{m}");
    assert_alive(&mut r);
    assert!(
        arp0 >= 2.0,
        "vnf_arp_entries must count the two resolved hosts (A and B), it shows {arp0}:\n{m}"
    );
    assert!(
        arp <= 4.0,
        "ARP requests for other hosts filled the neighbour table: {arp0} -> {arp} entries"
    );
    eprintln!("{T}: done in {:.1?}", t0.elapsed());
}
