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
//! The same underlay exists over IPv6 ([`Family::V6`]): nodes are 2001:db8::N/64 (the
//! documentation prefix, inside the namespaces only) and IPv6 is turned back on for `ul0`
//! alone, with addresses that skip duplicate address detection; the overlay stays IPv4
//! with 70 bytes of VXLAN overhead instead of 50.
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

use vnf_tests::netns::{
    Capture, Family, Netns, ROUTER_ADMIN as ADMIN, Router, WorkDir, have_root, have_tool,
    hypervisor, iperf3_tcp, mac_of, ping, prom, router_ns, serial, sysctl, underlay_switch,
    wait_for,
};
use vnf_tests::{arp_request, mac, vxlan};

/// Every tool is installed (`have_tool` prints which one is not).
fn tools(test: &str, list: &[&str]) -> bool {
    list.iter().all(|t| have_tool(test, t))
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

/// The sum of every sample of a metric family (all label values).
fn prom_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One packet decoded by tshark: per requested field, its values, outermost first.
type Row = Vec<Vec<String>>;

/// Decode a pcap with tshark (VXLAN on 4789), keeping packets that match `filter`.
fn decode(pcap: &Path, filter: &str, fields: &[&str]) -> Vec<Row> {
    decode_with(pcap, &[], filter, fields)
}

/// [`decode`] with tshark preferences (`-o NAME:VALUE`), e.g. `udp.check_checksum:TRUE`.
fn decode_with(pcap: &Path, prefs: &[&str], filter: &str, fields: &[&str]) -> Vec<Row> {
    let mut c = Command::new("tshark");
    c.arg("-r")
        .arg(pcap)
        .args(["-n", "-d", "udp.port==4789,vxlan", "-T", "fields"]);
    for p in prefs {
        c.args(["-o", p]);
    }
    c.args([
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
    let sw = underlay_switch(Family::V4);
    let hv2 = hypervisor(&sw, 2, 100, &[1]);
    let hv3 = hypervisor(&sw, 3, 200, &[1]);
    let r = Router::start(
        router_ns(&sw),
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
    let bps = iperf3_tcp(&hv2, &hv3, "10.0.0.3", "-t 3");
    eprintln!(
        "{T}: iperf3 TCP hv2 (VNI 100) -> hv3 (VNI 200): {:.1} Mbit/s",
        bps / 1e6
    );

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
    let sw = underlay_switch(Family::V4);
    let hv2 = hypervisor(&sw, 2, 100, &[1]);
    let vteps: Vec<(u8, Netns)> = [3u8, 4, 5]
        .into_iter()
        .map(|n| (n, hypervisor(&sw, n, 200, &[1])))
        .collect();
    let r = Router::start(
        router_ns(&sw),
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
    let sw = underlay_switch(Family::V4);
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
        router_ns(&sw),
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

/// The topology of `kernel_vteps_ping_and_iperf3_through_vni_bridge` over an IPv6 underlay
/// (2001:db8::/64): kernel VTEPs with `local 2001:db8::N` and the router at 2001:db8::1.
/// The overlay stays IPv4 with 70 bytes of VXLAN overhead (MTU 1430): ping, a full-size
/// don't-fragment ping and iperf3 TCP work; tshark decodes the router's packets as VXLAN
/// over IPv6 from 2001:db8::1 with the VNI of each hypervisor, the I flag and a valid
/// (non-zero) outer UDP checksum, which the kernel VTEPs (udp6zerocsumrx off by default)
/// require; and they send checksummed VXLAN to the router too.
#[test]
fn ipv6_underlay_ping_and_iperf3() {
    const T: &str = "ipv6_underlay_ping_and_iperf3";
    let _g = serial();
    let started = Instant::now();
    if !have_root(T) || !tools(T, TOOLS) || !have_tool(T, "iperf3") || !have_tool(T, "ss") {
        return;
    }
    let dir = WorkDir::new("netns-vxlan-ipv6");
    let sw = underlay_switch(Family::V6);
    let hv2 = hypervisor(&sw, 2, 100, &[1]);
    let hv3 = hypervisor(&sw, 3, 200, &[1]);
    let r = Router::start(
        router_ns(&sw),
        &dir,
        "underlay: {address: \"2001:db8::1\"}\n\
         ports:\n\
         \x20 - {name: blue, vni: 100, flood: [\"2001:db8::2\"]}\n\
         \x20 - {name: green, vni: 200, flood: [\"2001:db8::3\"]}\n\
         bridges:\n\
         \x20 - {name: blue-green, ports: [blue, green]}\n",
    );
    for hv in [&hv2, &hv3] {
        let mtu = hv.run("cat /sys/class/net/vx0/mtu");
        assert_eq!(mtu.trim(), "1430", "vx0 over IPv6 should have MTU 1430");
    }

    // Phase 1, captured on the router's underlay interface: ping, then full-size pings.
    // Whole packets: tshark validates the outer UDP checksums.
    let cap = Capture::start_snaplen(&r.ns, "ul0", "udp port 4789", &dir, "router-ul0-v6", 0);
    let (got, out) = ping(&hv2, "-c 1 -W 3 10.0.0.3");
    assert_eq!(got, 1, "first ping (with ARP) hv2 -> hv3 failed:\n{out}");
    const PINGS: usize = 10;
    let (got, out) = ping(&hv2, &format!("-c {PINGS} -i 0.2 -W 2 10.0.0.3"));
    assert!(
        got == PINGS && out.contains(" 0% packet loss"),
        "ping hv2 (VNI 100) -> hv3 (VNI 200) lost packets:\n{out}"
    );
    // 1402 bytes of ICMP data + 8 + 20 = a 1430-byte inner packet, 1500 bytes outside.
    const BIG: usize = 3;
    let (got, out) = ping(
        &hv2,
        &format!("-M do -s 1402 -c {BIG} -i 0.2 -W 2 10.0.0.3"),
    );
    assert_eq!(
        got, BIG,
        "full-size (1430-byte) pings over the IPv6 underlay failed:\n{out}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let pcap = cap.stop();

    let csum = ["udp.check_checksum:TRUE"];
    let fields = [
        "ipv6.dst",
        "udp.srcport",
        "udp.dstport",
        "vxlan.vni",
        "vxlan.flags",
        "udp.checksum",
        "udp.checksum.status",
    ];
    let first = |r: &Row, f: usize| r[f].first().cloned().unwrap_or_default();
    let rows = decode_with(&pcap, &csum, "ipv6.src==2001:db8::1", &fields);
    let (mut to_hv2, mut to_hv3) = (0, 0);
    for row in &rows {
        let (dst, vni) = (first(row, 0), first(row, 3));
        assert_eq!(
            first(row, 2),
            "4789",
            "outer UDP port: {row:?}\n{}",
            show(&pcap)
        );
        assert_eq!(
            first(row, 4),
            "0x0800",
            "VXLAN flags must be exactly the I flag: {row:?}\n{}",
            show(&pcap)
        );
        assert!(
            first(row, 5) != "0x0000" && first(row, 6) == "1",
            "the outer UDP checksum over IPv6 must be present and right: {row:?}\n{}",
            show(&pcap)
        );
        match dst.as_str() {
            "2001:db8::2" => {
                assert_eq!(vni, "100", "toward hv2: {row:?}\n{}", show(&pcap));
                to_hv2 += 1;
            }
            "2001:db8::3" => {
                assert_eq!(vni, "200", "toward hv3: {row:?}\n{}", show(&pcap));
                to_hv3 += 1;
            }
            other => panic!("router sent VXLAN to {other}: {row:?}\n{}", show(&pcap)),
        }
    }
    eprintln!(
        "{T}: router sent {to_hv2} VXLAN/IPv6 packets to hv2 (VNI 100), {to_hv3} to hv3 (VNI 200)"
    );
    let requests = count(
        &pcap,
        "ipv6.src==2001:db8::1 && ipv6.dst==2001:db8::3 && vxlan.vni==200 \
         && icmp.type==8 && ip.src==10.0.0.2 && ip.dst==10.0.0.3",
    );
    let replies = count(
        &pcap,
        "ipv6.src==2001:db8::1 && ipv6.dst==2001:db8::2 && vxlan.vni==100 \
         && icmp.type==0 && ip.src==10.0.0.3 && ip.dst==10.0.0.2",
    );
    let full = count(
        &pcap,
        "ipv6.src==2001:db8::1 && vxlan && icmp && ip.len==1430 && frame.len==1514",
    );
    eprintln!("{T}: echo requests to hv3 {requests}, replies to hv2 {replies}, full-size {full}");
    assert_eq!(
        (requests, replies),
        (1 + PINGS + BIG, 1 + PINGS + BIG),
        "every echo request and reply should cross the router once, over IPv6\n{}",
        show(&pcap)
    );
    assert_eq!(
        full,
        2 * BIG,
        "full-size pings should leave the router as 1500-byte IPv6 packets\n{}",
        show(&pcap)
    );
    // What the kernel VTEPs send: VXLAN over IPv6 with their default (computed) checksum.
    let from_hvs = decode_with(
        &pcap,
        &csum,
        "ipv6.dst==2001:db8::1 && vxlan",
        &[
            "ipv6.src",
            "vxlan.vni",
            "udp.checksum",
            "udp.checksum.status",
        ],
    );
    assert!(
        from_hvs.len() >= 2 * (1 + PINGS + BIG),
        "too few VXLAN packets from the kernel VTEPs\n{}",
        show(&pcap)
    );
    for row in &from_hvs {
        assert!(
            matches!(
                (first(row, 0).as_str(), first(row, 1).as_str()),
                ("2001:db8::2", "100") | ("2001:db8::3", "200")
            ) && first(row, 2) != "0x0000"
                && first(row, 3) == "1",
            "unexpected VXLAN from a kernel VTEP: {row:?}\n{}",
            show(&pcap)
        );
    }
    assert_eq!(
        count(&pcap, "vxlan && !ipv6"),
        0,
        "VXLAN over IPv4 on an IPv6 underlay\n{}",
        show(&pcap)
    );

    // Phase 2: iperf3 TCP at the full 1430-byte MTU.
    let bps = iperf3_tcp(&hv2, &hv3, "10.0.0.3", "-t 3");
    eprintln!(
        "{T}: iperf3 TCP hv2 (VNI 100) -> hv3 (VNI 200) over IPv6: {:.1} Mbit/s",
        bps / 1e6
    );

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
    assert_eq!(
        prom(&m, "vnf_drops_total{reason=\"mtu_exceeded\"}"),
        Some(0.0),
        "nothing should exceed the 1430-byte VNI MTU:\n{m}"
    );
    eprintln!("{T}: done in {:.1} s", started.elapsed().as_secs_f64());
}

/// `vnf_fdb_entries{vni, worker}` of every worker for a VNI, by worker label.
fn fdb_entries_by_worker(text: &str, vni: &str) -> BTreeMap<String, f64> {
    let prefix = format!("vnf_fdb_entries{{vni=\"{vni}\",worker=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (worker, value) = rest.split_once("\"} ")?;
            Some((worker.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The router with `workers: 2` (SO_REUSEPORT sockets steered by a symmetric hash of the
/// inner flow). The hosts know each other's MAC (static neighbour entries), so the only
/// traffic is what the test sends. Ping loses nothing, and its one flow (ICMP hashes
/// addresses only) is steered both ways to one worker: that worker alone has learned both
/// hypervisors' MACs. iperf3 TCP with 4 streams moves data, ping still loses nothing, and
/// the TCP flows spread, so that each worker has learned both MACs (its own
/// `vnf_fdb_entries` on VNI 100 and 200); `vnf_vxlan_rx_packets_total` is summed over
/// workers and cannot tell them apart.
#[test]
fn two_workers_keep_flows_working() {
    const T: &str = "two_workers_keep_flows_working";
    let _g = serial();
    let started = Instant::now();
    if !have_root(T) || !tools(T, TOOLS) || !have_tool(T, "iperf3") || !have_tool(T, "ss") {
        return;
    }
    let dir = WorkDir::new("netns-vxlan-workers");
    let sw = underlay_switch(Family::V4);
    let hv2 = hypervisor(&sw, 2, 100, &[1]);
    let hv3 = hypervisor(&sw, 3, 200, &[1]);
    // No ARP: its request and reply hash by MAC addresses, to workers of their own.
    for (hv, peer, n) in [(&hv2, &hv3, 3), (&hv3, &hv2, 2)] {
        hv.run(&format!(
            "ip neigh replace 10.0.0.{n} lladdr {} dev vx0 nud permanent",
            mac_of(peer, "vx0")
        ));
    }
    let r = Router::start(
        router_ns(&sw),
        &dir,
        "workers: 2\n\
         underlay: {address: 198.18.0.1}\n\
         ports:\n\
         \x20 - {name: blue, vni: 100, flood: [198.18.0.2]}\n\
         \x20 - {name: green, vni: 200, flood: [198.18.0.3]}\n\
         bridges:\n\
         \x20 - {name: blue-green, ports: [blue, green]}\n",
    );
    let ping_ok = |when: &str| {
        let (got, out) = ping(&hv2, "-c 10 -i 0.2 -W 2 10.0.0.3");
        assert!(
            got == 10 && out.contains(" 0% packet loss"),
            "ping hv2 (VNI 100) -> hv3 (VNI 200) {when} lost packets:\n{out}"
        );
    };
    // Per VNI, per worker: the learned entries. The gauges are refreshed once a second.
    let learned = || {
        std::thread::sleep(Duration::from_millis(1500));
        let m = r.metrics();
        let by_vni: BTreeMap<&str, BTreeMap<String, f64>> = ["100", "200"]
            .into_iter()
            .map(|vni| (vni, fdb_entries_by_worker(&m, vni)))
            .collect();
        (by_vni, m)
    };
    let workers_with = |by_vni: &BTreeMap<&str, BTreeMap<String, f64>>, vni: &str| {
        by_vni[vni]
            .iter()
            .filter(|(_, v)| **v > 0.0)
            .map(|(k, _)| k.clone())
            .collect::<BTreeSet<String>>()
    };

    ping_ok("before iperf3");
    let (by_vni, m) = learned();
    eprintln!("{T}: after ping: fdb entries by VNI and worker {by_vni:?}");
    for vni in ["100", "200"] {
        assert_eq!(
            by_vni[vni].len(),
            2,
            "vnf_fdb_entries should have a sample per worker on VNI {vni}:\n{m}"
        );
    }
    let (w100, w200) = (workers_with(&by_vni, "100"), workers_with(&by_vni, "200"));
    assert!(
        w100.len() == 1 && w100 == w200,
        "one ping flow should be handled, both ways, by one worker; workers that learned \
         VNI 100 {w100:?}, VNI 200 {w200:?}:\n{m}"
    );

    let bps = iperf3_tcp(&hv2, &hv3, "10.0.0.3", "-P 4 -t 3");
    eprintln!(
        "{T}: iperf3 TCP -P 4 hv2 (VNI 100) -> hv3 (VNI 200): {:.1} Mbit/s",
        bps / 1e6
    );
    ping_ok("after iperf3");
    let spread = |by_vni: &BTreeMap<&str, BTreeMap<String, f64>>| {
        ["100", "200"]
            .iter()
            .all(|vni| workers_with(by_vni, vni).len() == 2)
    };
    let (mut by_vni, mut m) = learned();
    // The five TCP flows (control + 4 streams) all hash onto ping's worker 1 time in 32:
    // then more streams, which leave the other worker out 1 time in 512 a run.
    for extra in 1..=3 {
        if spread(&by_vni) {
            break;
        }
        eprintln!("{T}: the TCP flows used one worker only ({by_vni:?}); iperf3 -P 8, try {extra}");
        iperf3_tcp(&hv2, &hv3, "10.0.0.3", "-P 8 -t 1");
        (by_vni, m) = learned();
    }
    eprintln!("{T}: after iperf3: fdb entries by VNI and worker {by_vni:?}");
    for vni in ["100", "200"] {
        let rx = prom(&m, &format!("vnf_vxlan_rx_packets_total{{vni=\"{vni}\"}}"));
        eprintln!("{T}: VNI {vni}: rx (all workers) {rx:?}");
        assert!(
            rx.is_some_and(|v| v > 0.0),
            "nothing received on VNI {vni}:\n{m}"
        );
        for k in ["0", "1"] {
            assert!(
                by_vni[vni].get(k).is_some_and(|v| *v > 0.0),
                "worker {k} learned nothing on VNI {vni}: the flows did not spread over both \
                 workers\n{m}"
            );
        }
    }
    eprintln!("{T}: done in {:.1} s", started.elapsed().as_secs_f64());
}
