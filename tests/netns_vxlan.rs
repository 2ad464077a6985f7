//! Interop with the Linux kernel's own `vxlan` device as the hypervisor VTEP.
//!
//! Every test builds the same kind of underlay in network namespaces of its own:
//!
//! ```text
//!                 sw: Linux bridge br0 (the underlay switch), 198.18.0.0/24
//!        +-----------------+-----------------+-----------------+
//!   ro: ul0 198.18.0.1   hv2: ul0 .2        hv3: ul0 .3       ...
//!   vnf-router           vx0 (kernel vxlan)  vx0 (kernel vxlan)
//!   (VTEP, admin HTTP)   10.0.0.2/24         10.0.0.3/24
//! ```
//!
//! Each hypervisor's `vx0` head-end replicates toward the router only (an all-zero FDB
//! entry), with learning off; the router bridges VNIs into L2 domains and floods to the
//! VTEPs its config lists. IPv6 is off in every namespace so that no router solicitation or
//! MLD report adds frames the captures would have to tell apart.
//!
//! Two settings of the veths stand in for what a physical underlay NIC would do:
//!
//! - hypervisors' `ul0`: transmit checksum offload off. Over a veth, the kernel `vxlan`
//!   device hands on a TCP segment whose inner checksum is still CHECKSUM_PARTIAL (only the
//!   pseudo-header sum in the field): a physical NIC completes it on transmit, a veth does
//!   not, and a userspace VTEP reading a UDP socket gets the unfinished checksum, forwards it
//!   as bytes, and the receiving kernel drops every TCP segment. ICMP is checksummed in
//!   software, so ping works either way.
//! - router's `ul0`: UDP segmentation offload off. The router sends runs of datagrams as one
//!   UDP GSO super-packet; a veth passes that on whole, so a capture on the far side would
//!   count one packet for several datagrams. With the offload off the kernel segments in
//!   software before the wire, as a NIC does: the router still sends with GSO, and the
//!   captures count datagrams.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vnf_tests::netns::{Netns, Proc, bin, have_root, have_tool, serial, veth, wait_for, workdir};
use vnf_tests::{arp_request, mac, vxlan};

/// The router's admin HTTP listener, inside its own namespace.
const ADMIN: &str = "127.0.0.1:9180";

/// Every tool is installed (`have_tool` prints which one is not).
fn tools(test: &str, list: &[&str]) -> bool {
    list.iter().all(|t| have_tool(test, t))
}

/// Write a sysctl inside a namespace (through /proc, which shows the namespace's values).
fn sysctl(ns: &Netns, key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    ns.run(&format!("sh -c 'echo {value} > {path}'"));
}

/// Turn IPv6 off in a namespace, if the kernel has it at all.
fn quiet_ipv6(ns: &Netns) {
    for k in ["all", "default"] {
        let _ = ns.sh(&format!(
            "echo 1 > /proc/sys/net/ipv6/conf/{k}/disable_ipv6"
        ));
    }
}

/// The underlay switch: a namespace with a Linux bridge `br0`.
fn underlay_switch() -> Netns {
    let sw = Netns::new("vxs");
    quiet_ipv6(&sw);
    sw.run("ip link add br0 type bridge");
    sw.run("ip link set br0 up");
    sw
}

/// A namespace on the underlay as 198.18.0.`n`, on its interface `ul0`.
fn underlay_node(sw: &Netns, prefix: &str, n: u8) -> Netns {
    let ns = Netns::new(prefix);
    quiet_ipv6(&ns);
    let port = format!("p{n}");
    veth(&ns, "ul0", sw, &port);
    sw.run(&format!("ip link set {port} master br0"));
    ns.run(&format!("ip addr add 198.18.0.{n}/24 dev ul0"));
    ns
}

/// A hypervisor at 198.18.0.`n`: a kernel `vxlan` device `vx0` on `vni` with overlay
/// address 10.0.0.`n`/24, flooding (head-end replication) to 198.18.0.`f` for each `f`.
fn hypervisor(sw: &Netns, n: u8, vni: u32, flood: &[u8]) -> Netns {
    let hv = underlay_node(sw, "vxh", n);
    hv.run("ethtool -K ul0 tx off");
    hv.run(&format!(
        "ip link add vx0 type vxlan id {vni} local 198.18.0.{n} dstport 4789 nolearning"
    ));
    for f in flood {
        hv.run(&format!(
            "bridge fdb append 00:00:00:00:00:00 dev vx0 dst 198.18.0.{f}"
        ));
    }
    hv.run(&format!("ip addr add 10.0.0.{n}/24 dev vx0"));
    hv.run("ip link set vx0 mtu 1450 up");
    hv
}

/// The MAC address of an interface inside a namespace, lowercase `aa:bb:..`.
fn mac_of(ns: &Netns, iface: &str) -> String {
    let out = ns.run(&format!("ip -o link show {iface}"));
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in `{out}`"))
        .to_ascii_lowercase()
}

fn mac_bytes(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, p) in s.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(p, 16).unwrap_or_else(|_| panic!("bad MAC `{s}`"));
    }
    m
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The value of the sample `key` (`name{labels}`) in Prometheus text, if present.
fn prom(text: &str, key: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// The sum of every sample of a metric family (all label values).
fn prom_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A test's work directory (configs, logs, pcaps): removed when the test passes, kept and
/// named when it fails.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new(name: &str) -> WorkDir {
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

/// The router in its own namespace on the underlay at 198.18.0.1; prints its log if the
/// test fails.
struct Router {
    proc: Proc,
    ns: Netns,
    log: PathBuf,
    dir: PathBuf,
}

impl Router {
    fn start(sw: &Netns, dir: &Path, yaml: &str) -> Router {
        let ns = underlay_node(sw, "vxr", 1);
        ns.run("ethtool -K ul0 tx off tx-udp-segmentation off");
        let cfg = dir.join("router.yaml");
        std::fs::write(&cfg, yaml).expect("write router config");
        let log = dir.join("router.log");
        let proc = ns.spawn_logged(
            &format!(
                "{} --config {} --admin {ADMIN}",
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
            r.ns.sh(&format!("curl -sf http://{ADMIN}/readyz"))
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

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        self.ns.run(&format!("curl -sf http://{ADMIN}/metrics"))
    }

    /// One sample; panics (with the whole text) if the router does not export it.
    fn metric(&self, key: &str) -> f64 {
        let text = self.metrics();
        prom(&text, key).unwrap_or_else(|| panic!("no sample `{key}` in /metrics:\n{text}"))
    }

    fn drops(&self, reason: &str) -> f64 {
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
struct Capture {
    proc: Proc,
    pcap: PathBuf,
    log: PathBuf,
}

impl Capture {
    /// Capture on `iface` in `ns` into `dir/name.pcap`; returns once tcpdump listens.
    fn start(ns: &Netns, iface: &str, filter: &str, dir: &Path, name: &str) -> Capture {
        let pcap = dir.join(format!("{name}.pcap"));
        let log = dir.join(format!("{name}.tcpdump.log"));
        let proc = ns.spawn_logged(
            &format!(
                "tcpdump -i {iface} -Z root --immediate-mode -U -nn -s 256 -w {} '{filter}'",
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

    /// Stop (SIGINT, so that tcpdump flushes) and return the pcap.
    fn stop(mut self) -> PathBuf {
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

/// One packet decoded by tshark: per requested field, its values, outermost first.
type Row = Vec<Vec<String>>;

/// Decode a pcap with tshark (VXLAN on 4789), keeping packets that match `filter`.
fn decode(pcap: &Path, filter: &str, fields: &[&str]) -> Vec<Row> {
    let mut c = Command::new("tshark");
    c.arg("-r")
        .arg(pcap)
        .args(["-n", "-d", "udp.port==4789,vxlan", "-T", "fields"])
        .args([
            "-E",
            "separator=|",
            "-E",
            "occurrence=a",
            "-E",
            "aggregator=,",
        ]);
    if !filter.is_empty() {
        c.args(["-Y", filter]);
    }
    for f in fields {
        c.args(["-e", f]);
    }
    let out = c.output().expect("run tshark");
    assert!(
        out.status.success(),
        "tshark -r {} failed: {}",
        pcap.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split('|')
                .map(|f| {
                    f.split(',')
                        .filter(|v| !v.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// How many packets of a pcap match a display filter.
fn count(pcap: &Path, filter: &str) -> usize {
    decode(pcap, filter, &["frame.number"]).len()
}

/// A readable dump of a pcap for failure messages (first 60 packets).
fn show(pcap: &Path) -> String {
    let out = vnf_tests::netns::sh(&format!("tcpdump -r {} -nn -e -c 60 2>&1", pcap.display()));
    format!(
        "---- {} ----\n{}",
        pcap.display(),
        String::from_utf8_lossy(&out.stdout)
    )
}

/// Ping inside a namespace; the number of replies.
fn ping(ns: &Netns, args: &str) -> (usize, String) {
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

/// Write the python helpers the tests use into `dir`.
fn python_helpers(dir: &Path) -> (PathBuf, PathBuf) {
    // Raw Ethernet frames out of an interface: IFACE HEXFRAME COUNT GAP_S.
    let raw = dir.join("send_raw.py");
    std::fs::write(
        &raw,
        "import socket, sys, time\n\
         s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
         s.bind((sys.argv[1], 0))\n\
         f = bytes.fromhex(sys.argv[2])\n\
         for _ in range(int(sys.argv[3])):\n\
         \x20   s.send(f)\n\
         \x20   time.sleep(float(sys.argv[4]))\n",
    )
    .expect("write send_raw.py");
    // UDP datagrams: HOST PORT COUNT HEX, or HOST PORT COUNT garbage:SEED (random bytes
    // of random length 0..=200), or flows: HOST PORT FIRST_SPORT FLOWS PER_FLOW (from
    // FLOWS source ports, PER_FLOW datagrams each).
    let udp = dir.join("send_udp.py");
    std::fs::write(
        &udp,
        "import random, socket, sys, time\n\
         host, port = sys.argv[1], int(sys.argv[2])\n\
         if sys.argv[3] == 'flows':\n\
         \x20   first, flows, per = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])\n\
         \x20   socks = []\n\
         \x20   for i in range(flows):\n\
         \x20       s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         \x20       s.bind(('0.0.0.0', first + i))\n\
         \x20       socks.append(s)\n\
         \x20   for _ in range(per):\n\
         \x20       for s in socks:\n\
         \x20           s.sendto(b'flow' * 25, (host, port))\n\
         \x20       time.sleep(0.01)\n\
         \x20   sys.exit(0)\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         n, what = int(sys.argv[3]), sys.argv[4]\n\
         if what.startswith('garbage:'):\n\
         \x20   r = random.Random(int(what[8:]))\n\
         \x20   data = [bytes(r.randrange(256) for _ in range(r.randrange(201))) for _ in range(n)]\n\
         else:\n\
         \x20   data = [bytes.fromhex(what)] * n\n\
         for d in data:\n\
         \x20   s.sendto(d, (host, port))\n\
         \x20   time.sleep(0.002)\n",
    )
    .expect("write send_udp.py");
    (raw, udp)
}

/// The bits per second a `iperf3 --json` client reports as received, or its error.
fn iperf3_bps(json: &str) -> Result<f64, String> {
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

const TOOLS: &[&str] = &[
    "ip", "bridge", "ethtool", "ping", "tcpdump", "tshark", "python3", "curl",
];

/// Two kernel VTEPs on different VNIs, bridged by the router into one L2 domain: ping and
/// iperf3 TCP work end to end; the router's VXLAN carries the right VNI and the I flag
/// toward each hypervisor; each inner flow keeps one outer UDP source port and different
/// flows spread over several.
#[test]
fn kernel_vteps_ping_and_iperf3_through_vni_bridge() {
    const T: &str = "kernel_vteps_ping_and_iperf3_through_vni_bridge";
    let _g = serial();
    let started = Instant::now();
    if !have_root(T) || !tools(T, TOOLS) || !have_tool(T, "iperf3") || !have_tool(T, "ss") {
        return;
    }
    let dir = WorkDir::new("netns-vxlan-bridge");
    let (_, send_udp) = python_helpers(&dir);
    let sw = underlay_switch();
    let hv2 = hypervisor(&sw, 2, 100, &[1]);
    let hv3 = hypervisor(&sw, 3, 200, &[1]);
    let r = Router::start(
        &sw,
        &dir,
        "underlay: {address: 198.18.0.1}\n\
         ports:\n\
         \x20 - {name: blue, vni: 100, flood: [198.18.0.2]}\n\
         \x20 - {name: green, vni: 200, flood: [198.18.0.3]}\n\
         bridges:\n\
         \x20 - {name: blue-green, ports: [blue, green]}\n",
    );

    // Phase 1, captured on the router's underlay interface: ping, then 8 UDP flows.
    let cap = Capture::start(&r.ns, "ul0", "udp port 4789", &dir, "router-ul0");
    let (got, out) = ping(&hv2, "-c 1 -W 3 10.0.0.3");
    assert_eq!(got, 1, "first ping (with ARP) hv2 -> hv3 failed:\n{out}");
    let (got, out) = ping(&hv2, "-c 10 -i 0.2 -W 2 10.0.0.3");
    assert!(
        got == 10 && out.contains(" 0% packet loss"),
        "ping hv2 (VNI 100) -> hv3 (VNI 200) lost packets:\n{out}"
    );
    const FLOWS: usize = 8;
    const PER_FLOW: usize = 5;
    hv2.run(&format!(
        "python3 {} 10.0.0.3 9999 flows 40000 {FLOWS} {PER_FLOW}",
        send_udp.display()
    ));
    std::thread::sleep(Duration::from_millis(500));
    let pcap = cap.stop();

    let rows = decode(
        &pcap,
        "ip.src==198.18.0.1",
        &[
            "ip.src",
            "ip.dst",
            "udp.srcport",
            "udp.dstport",
            "vxlan.vni",
            "vxlan.flags",
            "ip.proto",
            "vxlan.gbp",
            "vxlan.reserved8",
        ],
    );
    let first = |r: &Row, f: usize| r[f].first().cloned().unwrap_or_default();
    let (mut to_hv2, mut to_hv3) = (0, 0);
    // Inner flow (proto, src, dst, sport, dport) -> outer UDP source ports seen.
    let mut flows: BTreeMap<(String, String, String, String, String), BTreeSet<String>> =
        BTreeMap::new();
    for row in &rows {
        let dst = first(row, 1);
        let vni = first(row, 4);
        let flags = first(row, 5);
        assert_eq!(
            first(row, 3),
            "4789",
            "outer UDP port: {row:?}\n{}",
            show(&pcap)
        );
        assert_eq!(
            flags,
            "0x0800",
            "VXLAN flags must be exactly the I flag: {row:?}\n{}",
            show(&pcap)
        );
        assert!(
            first(row, 7) == "0" && first(row, 8) == "0",
            "VXLAN reserved fields must be zero on transmission: {row:?}\n{}",
            show(&pcap)
        );
        match dst.as_str() {
            "198.18.0.2" => {
                assert_eq!(vni, "100", "toward hv2: {row:?}\n{}", show(&pcap));
                to_hv2 += 1;
            }
            "198.18.0.3" => {
                assert_eq!(vni, "200", "toward hv3: {row:?}\n{}", show(&pcap));
                to_hv3 += 1;
                // Inner IPv4 packets only (ARP has no ip.* fields).
                if row[0].len() == 2 {
                    let proto = row[6].get(1).cloned().unwrap_or_default();
                    let (sport, dport) = match (row[2].get(1), row[3].get(1)) {
                        (Some(s), Some(d)) => (s.clone(), d.clone()),
                        _ => (String::new(), String::new()),
                    };
                    flows
                        .entry((proto, row[0][1].clone(), row[1][1].clone(), sport, dport))
                        .or_default()
                        .insert(first(row, 2));
                }
            }
            other => panic!("router sent VXLAN to {other}: {row:?}\n{}", show(&pcap)),
        }
    }
    eprintln!(
        "{T}: router sent {to_hv2} VXLAN packets to hv2 (VNI 100), {to_hv3} to hv3 (VNI 200)"
    );
    assert!(
        to_hv2 >= 10 && to_hv3 >= 10 + FLOWS * PER_FLOW,
        "too few VXLAN packets from the router (to hv2 {to_hv2}, to hv3 {to_hv3})\n{}",
        show(&pcap)
    );
    let mut outer_ports = BTreeSet::new();
    let mut udp_flows = 0;
    for (flow, ports) in &flows {
        eprintln!("{T}: inner flow {flow:?} -> outer source ports {ports:?}");
        assert_eq!(
            ports.len(),
            1,
            "one inner flow {flow:?} left on several outer source ports {ports:?}"
        );
        if flow.0 == "17" {
            udp_flows += 1;
        }
        outer_ports.extend(ports.iter().cloned());
    }
    assert_eq!(
        udp_flows, FLOWS,
        "expected {FLOWS} inner UDP flows toward hv3, saw {flows:?}"
    );
    assert!(
        outer_ports.len() >= 2,
        "{FLOWS} inner flows all left on one outer source port {outer_ports:?}: no flow entropy"
    );
    let per_flow = count(
        &pcap,
        "ip.src==198.18.0.1 && ip.dst==198.18.0.3 && udp.dstport==9999",
    );
    assert_eq!(
        per_flow,
        FLOWS * PER_FLOW,
        "every datagram of the {FLOWS} flows should reach hv3's VTEP once"
    );

    // Phase 2: iperf3 TCP through the bridge (not captured: too many packets to decode).
    let _server = hv3.spawn("iperf3 -s -1 -B 10.0.0.3");
    assert!(
        wait_for(Duration::from_secs(10), || hv3
            .sh("ss -ltn | grep -q 10.0.0.3:5201")
            .status
            .success()),
        "iperf3 server did not start"
    );
    let out = hv2.sh("iperf3 -c 10.0.0.3 -t 3 --json");
    let json = String::from_utf8_lossy(&out.stdout).into_owned();
    let bps = iperf3_bps(&json).unwrap_or_else(|e| panic!("iperf3 hv2 -> hv3 failed: {e}"));
    eprintln!(
        "{T}: iperf3 TCP hv2 (VNI 100) -> hv3 (VNI 200): {:.1} Mbit/s",
        bps / 1e6
    );
    assert!(bps > 0.0, "iperf3 moved no data:\n{json}");

    let m = r.metrics();
    for vni in ["100", "200"] {
        let learned = prom(&m, &format!("vnf_fdb_learned_total{{vni=\"{vni}\"}}"));
        let rx = prom(&m, &format!("vnf_vxlan_rx_packets_total{{vni=\"{vni}\"}}"));
        let tx = prom(&m, &format!("vnf_vxlan_tx_packets_total{{vni=\"{vni}\"}}"));
        eprintln!("{T}: VNI {vni}: learned {learned:?}, rx {rx:?}, tx {tx:?}");
        assert!(
            learned.is_some_and(|v| v >= 1.0),
            "no MAC learned on VNI {vni}:\n{m}"
        );
        assert!(
            rx.is_some_and(|v| v > 0.0) && tx.is_some_and(|v| v > 0.0),
            "{m}"
        );
    }
    eprintln!("{T}: done in {:.1} s", started.elapsed().as_secs_f64());
}

/// One host on VNI 100 behind the bridge, three kernel VTEPs on VNI 200: a broadcast
/// reaches each VNI-200 VTEP exactly once; once the destination is learned, unicast goes
/// to its VTEP alone.
#[test]
fn flood_list_replicates_once_per_vtep_then_unicast_follows_learning() {
    const T: &str = "flood_list_replicates_once_per_vtep_then_unicast_follows_learning";
    let _g = serial();
    let started = Instant::now();
    if !have_root(T) || !tools(T, TOOLS) {
        return;
    }
    let dir = WorkDir::new("netns-vxlan-flood");
    let (send_raw, _) = python_helpers(&dir);
    let sw = underlay_switch();
    let hv2 = hypervisor(&sw, 2, 100, &[1]);
    let vteps: Vec<(u8, Netns)> = [3u8, 4, 5]
        .into_iter()
        .map(|n| (n, hypervisor(&sw, n, 200, &[1])))
        .collect();
    let r = Router::start(
        &sw,
        &dir,
        "underlay: {address: 198.18.0.1}\n\
         ports:\n\
         \x20 - {name: blue, vni: 100, flood: [198.18.0.2]}\n\
         \x20 - {name: green, vni: 200, flood: [198.18.0.3, 198.18.0.4, 198.18.0.5]}\n\
         bridges:\n\
         \x20 - {name: blue-green, ports: [blue, green]}\n",
    );
    let from_router = "udp dst port 4789 and src host 198.18.0.1";

    // Phase 1: broadcast ARP requests (for an address nobody has) out of hv2's vx0: a few
    // spaced out, then a burst that the router receives and floods in batches.
    const SPACED: usize = 5;
    const BURST: usize = 40;
    const K: usize = SPACED + BURST;
    let sent_cap = Capture::start(
        &hv2,
        "ul0",
        "udp dst port 4789 and src host 198.18.0.2",
        &dir,
        "flood-hv2",
    );
    let caps: Vec<(u8, Capture)> = vteps
        .iter()
        .map(|(n, hv)| {
            (
                *n,
                Capture::start(hv, "ul0", from_router, &dir, &format!("flood-hv{n}")),
            )
        })
        .collect();
    let copies_before = r.metric("vnf_flood_copies_total{vni=\"200\"}");
    let hv2_mac = mac_bytes(&mac_of(&hv2, "vx0"));
    let frame = arp_request(
        hv2_mac,
        "10.0.0.2".parse().expect("ip"),
        "10.0.0.99".parse().expect("ip"),
    );
    hv2.run(&format!(
        "python3 {} vx0 {} {SPACED} 0.05",
        send_raw.display(),
        hex(&frame)
    ));
    hv2.run(&format!(
        "python3 {} vx0 {} {BURST} 0",
        send_raw.display(),
        hex(&frame)
    ));
    std::thread::sleep(Duration::from_millis(500));
    let sent_pcap = sent_cap.stop();
    let pcaps: Vec<(u8, PathBuf)> = caps.into_iter().map(|(n, c)| (n, c.stop())).collect();
    let copies = r.metric("vnf_flood_copies_total{vni=\"200\"}") - copies_before;

    let bcast = "eth.dst==ff:ff:ff:ff:ff:ff && arp.dst.proto_ipv4==10.0.0.99";
    let sent = count(&sent_pcap, &format!("vxlan.vni==100 && {bcast}"));
    eprintln!("{T}: hv2 sent {sent} broadcast ARP requests on VNI 100");
    assert_eq!(
        sent,
        K,
        "hv2's kernel VTEP should send each broadcast once to the router\n{}",
        show(&sent_pcap)
    );
    for (n, pcap) in &pcaps {
        let got = count(pcap, &format!("vxlan.vni==200 && {bcast}"));
        let all = count(pcap, "vxlan");
        eprintln!("{T}: hv{n} received {got} flooded copies ({all} VXLAN packets in all)");
        assert_eq!(
            got,
            sent,
            "hv{n} must receive each of the {sent} broadcasts exactly once (on VNI 200)\n{}",
            show(pcap)
        );
        assert_eq!(all, got, "hv{n} received unexpected VXLAN\n{}", show(pcap));
    }
    assert_eq!(
        copies,
        (3 * sent) as f64,
        "vnf_flood_copies_total{{vni=\"200\"}} should count one copy per VTEP per broadcast"
    );

    // Phase 2: learn hv4 (its ARP reply), then unicast ICMP goes to hv4's VTEP only.
    let (got, out) = ping(&hv2, "-c 1 -W 3 10.0.0.4");
    assert_eq!(got, 1, "ping hv2 -> hv4 failed:\n{out}");
    let caps: Vec<(u8, Capture)> = vteps
        .iter()
        .map(|(n, hv)| {
            (
                *n,
                Capture::start(hv, "ul0", from_router, &dir, &format!("unicast-hv{n}")),
            )
        })
        .collect();
    let copies_before = r.metric("vnf_flood_copies_total{vni=\"200\"}");
    const PINGS: usize = 10;
    let (got, out) = ping(&hv2, &format!("-c {PINGS} -i 0.1 -W 2 10.0.0.4"));
    assert_eq!(got, PINGS, "ping hv2 -> hv4 lost packets:\n{out}");
    std::thread::sleep(Duration::from_millis(300));
    let pcaps: Vec<(u8, PathBuf)> = caps.into_iter().map(|(n, c)| (n, c.stop())).collect();
    let copies = r.metric("vnf_flood_copies_total{vni=\"200\"}") - copies_before;
    for (n, pcap) in &pcaps {
        let icmp = count(pcap, "vxlan && icmp");
        let requests = count(
            pcap,
            "vxlan.vni==200 && icmp.type==8 && ip.src==10.0.0.2 && ip.dst==10.0.0.4",
        );
        eprintln!("{T}: unicast phase: hv{n} received {icmp} ICMP-carrying VXLAN packets");
        if *n == 4 {
            assert_eq!(
                requests,
                PINGS,
                "hv4 must receive every echo request once\n{}",
                show(pcap)
            );
            assert_eq!(icmp, requests, "{}", show(pcap));
        } else {
            assert_eq!(
                icmp,
                0,
                "hv{n} received ICMP meant for hv4: unicast was flooded\n{}",
                show(pcap)
            );
        }
    }
    assert_eq!(
        copies, 0.0,
        "no flooding on VNI 200 once hv4's MAC is learned"
    );
    eprintln!("{T}: done in {:.1} s", started.elapsed().as_secs_f64());
}

/// Two bridge domains (VNI 100 <-> 200, VNI 300 <-> 400) stay apart; bad VXLAN from the
/// underlay is dropped and counted by reason, and the router keeps forwarding.
#[test]
fn isolation_and_bad_input_are_dropped_and_counted() {
    const T: &str = "isolation_and_bad_input_are_dropped_and_counted";
    let _g = serial();
    let started = Instant::now();
    if !have_root(T) || !tools(T, TOOLS) {
        return;
    }
    let dir = WorkDir::new("netns-vxlan-isolation");
    let (_, send_udp) = python_helpers(&dir);
    let sw = underlay_switch();
    // One overlay subnet for all four hosts: only the router's domains keep them apart.
    let hv2 = hypervisor(&sw, 2, 100, &[1]);
    let hv3 = hypervisor(&sw, 3, 200, &[1]);
    let hv4 = hypervisor(&sw, 4, 300, &[1]);
    let hv5 = hypervisor(&sw, 5, 400, &[1]);
    let hvs = [(2u8, &hv2), (3, &hv3), (4, &hv4), (5, &hv5)];
    for (_, hv) in hvs {
        sysctl(hv, "net.ipv4.icmp_echo_ignore_broadcasts", "0");
    }
    let r = Router::start(
        &sw,
        &dir,
        "underlay: {address: 198.18.0.1}\n\
         ports:\n\
         \x20 - {name: blue, vni: 100, flood: [198.18.0.2]}\n\
         \x20 - {name: green, vni: 200, flood: [198.18.0.3]}\n\
         \x20 - {name: red, vni: 300, flood: [198.18.0.4]}\n\
         \x20 - {name: amber, vni: 400, flood: [198.18.0.5], allowed_vteps: [198.18.0.5]}\n\
         bridges:\n\
         \x20 - {name: blue-green, ports: [blue, green]}\n\
         \x20 - {name: red-amber, ports: [red, amber]}\n",
    );
    let macs: BTreeMap<u8, String> = hvs.iter().map(|(n, hv)| (*n, mac_of(hv, "vx0"))).collect();

    // Phase 1: traffic inside each domain, and attempts across, captured on every vx0.
    let caps: Vec<(u8, Capture)> = hvs
        .iter()
        .map(|(n, hv)| {
            (
                *n,
                Capture::start(hv, "vx0", "", &dir, &format!("iso-hv{n}")),
            )
        })
        .collect();
    let (got, out) = ping(&hv2, "-c 3 -i 0.2 -W 3 10.0.0.3");
    assert_eq!(got, 3, "ping hv2 -> hv3 (domain blue-green) failed:\n{out}");
    let (got, out) = ping(&hv4, "-c 3 -i 0.2 -W 3 10.0.0.5");
    assert_eq!(got, 3, "ping hv4 -> hv5 (domain red-amber) failed:\n{out}");
    for (hv, other) in [(&hv2, "10.0.0.4"), (&hv4, "10.0.0.2"), (&hv3, "10.0.0.5")] {
        let (got, out) = ping(hv, &format!("-c 2 -i 0.2 -w 2 {other}"));
        assert_eq!(got, 0, "ping to {other} crossed bridge domains:\n{out}");
    }
    for hv in [&hv2, &hv4] {
        let _ = ping(hv, "-b -c 2 -i 0.2 -w 1 10.0.0.255");
    }
    std::thread::sleep(Duration::from_millis(500));
    let pcaps: BTreeMap<u8, PathBuf> = caps.into_iter().map(|(n, c)| (n, c.stop())).collect();
    let foreign = |a: u8, b: u8| {
        format!(
            "eth.src=={} || eth.src=={} || ip.src==10.0.0.{a} || ip.src==10.0.0.{b} \
             || arp.src.proto_ipv4==10.0.0.{a} || arp.src.proto_ipv4==10.0.0.{b}",
            macs[&a], macs[&b]
        )
    };
    for (n, pcap) in &pcaps {
        let (filter, peer) = if *n <= 3 {
            (foreign(4, 5), if *n == 2 { 3 } else { 2 })
        } else {
            (foreign(2, 3), if *n == 4 { 5 } else { 4 })
        };
        let leaked = count(pcap, &filter);
        let from_peer = count(pcap, &format!("eth.src=={}", macs[&peer]));
        eprintln!(
            "{T}: hv{n}'s vx0: {from_peer} frames from its domain peer hv{peer}, \
             {leaked} from the other domain"
        );
        assert_eq!(
            leaked,
            0,
            "hv{n} received frames from the other bridge domain\n{}",
            show(pcap)
        );
        assert!(
            from_peer > 0,
            "hv{n} saw nothing from hv{peer} in its own domain: the capture proves nothing\n{}",
            show(pcap)
        );
        // The broadcast pings of hv2 and hv4 reached their domain peers.
        if *n == 3 || *n == 5 {
            let bcast = count(
                pcap,
                &format!(
                    "eth.dst==ff:ff:ff:ff:ff:ff && ip.src==10.0.0.{peer} && ip.dst==10.0.0.255"
                ),
            );
            assert!(
                bcast > 0,
                "hv{n} did not receive hv{peer}'s broadcast ping\n{}",
                show(pcap)
            );
        }
    }

    // Phase 2: bad VXLAN from the underlay.
    let frame = arp_request(
        mac(9),
        "10.0.0.9".parse().expect("ip"),
        "10.0.0.99".parse().expect("ip"),
    );
    let send = |from: &Netns, n: usize, what: &str| {
        from.run(&format!(
            "python3 {} 198.18.0.1 4789 {n} {what}",
            send_udp.display()
        ));
    };
    let expect_drops = |reason: &str, before: f64, n: usize| {
        let want = before + n as f64;
        wait_for(Duration::from_secs(5), || r.drops(reason) >= want);
        std::thread::sleep(Duration::from_millis(200));
        let now = r.drops(reason);
        eprintln!("{T}: vnf_drops_total{{reason=\"{reason}\"}}: {before} -> {now} ({n} sent)");
        assert_eq!(
            now,
            want,
            "vnf_drops_total{{reason=\"{reason}\"}} should rise by exactly {n}:\n{}",
            r.metrics()
        );
    };

    let before = r.drops("vni_not_joined");
    send(&hv2, 7, &hex(&vxlan(0x08, 999, &frame)));
    expect_drops("vni_not_joined", before, 7);

    let before = r.drops("vxlan_bad_flags");
    send(&hv2, 3, &hex(&vxlan(0x00, 100, &frame)));
    send(&hv2, 2, &hex(&vxlan(0xf7, 100, &frame)));
    expect_drops("vxlan_bad_flags", before, 5);

    // VNI 400 allows only 198.18.0.5; send from hv2 (.2) and hv3 (.3).
    let before = r.drops("vtep_not_allowed");
    send(&hv2, 4, &hex(&vxlan(0x08, 400, &frame)));
    send(&hv3, 4, &hex(&vxlan(0x08, 400, &frame)));
    expect_drops("vtep_not_allowed", before, 8);

    let before = r.drops("vxlan_malformed");
    send(&hv2, 4, "080000");
    let mut short = vxlan(0x08, 100, &frame);
    short.truncate(8 + 5);
    send(&hv2, 4, &hex(&short));
    expect_drops("vxlan_malformed", before, 8);

    const GARBAGE: usize = 200;
    let before = prom_sum(&r.metrics(), "vnf_drops_total");
    send(&hv3, GARBAGE, "garbage:7");
    let want = before + GARBAGE as f64;
    wait_for(Duration::from_secs(5), || {
        prom_sum(&r.metrics(), "vnf_drops_total") >= want
    });
    let m = r.metrics();
    let after = prom_sum(&m, "vnf_drops_total");
    eprintln!("{T}: all drops: {before} -> {after} after {GARBAGE} garbage datagrams");
    assert!(
        after >= want,
        "{GARBAGE} garbage datagrams should all be dropped and counted:\n{m}"
    );

    // The router survived and still forwards.
    let mut r = r;
    assert!(r.proc.running(), "vnf-router exited after bad input");
    assert!(
        r.ns.sh(&format!("curl -sf http://{ADMIN}/readyz"))
            .status
            .success(),
        "vnf-router not ready after bad input"
    );
    let (got, out) = ping(&hv2, "-c 3 -i 0.2 -W 3 10.0.0.3");
    assert_eq!(got, 3, "ping hv2 -> hv3 after bad input failed:\n{out}");
    eprintln!("{T}: done in {:.1} s", started.elapsed().as_secs_f64());
}
