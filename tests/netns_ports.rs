//! The router's non-VXLAN ports — an untagged `interface` (AF_PACKET) and a `tap` device —
//! bridged to a VNI, against a kernel `vxlan` hypervisor, in network namespaces.
//!
//! ```text
//!                 sw: Linux bridge br0 (the underlay switch), 198.18.0.0/24
//!        +--------------------------------------+
//!   ro: ul0 198.18.0.1                      hv: ul0 198.18.0.2
//!   vnf-router (VTEP, admin HTTP)           vx0 (kernel vxlan, VNI 100)
//!     lan0 (AF_PACKET)   or   vtap0 (TAP)       10.0.0.2/24, MTU 1450
//!      | veth                 10.0.0.1/24 in ro itself
//!   h1: eth0 10.0.0.1/24, MTU 1450
//! ```
//!
//! The hypervisor's `vx0` head-end replicates toward the router only, with learning off,
//! and its `ul0` has transmit checksum offload off (README, "Checksums left to hardware":
//! the router's UDP socket cannot learn that a checksum is partial). h1's veth keeps
//! transmit checksum offload on: the frames it sends carry partial TCP checksums, which the
//! router's AF_PACKET port must complete (`PACKET_VNET_HDR`, `VIRTIO_NET_HDR_F_NEEDS_CSUM`).
//! Its TSO and GSO are on too: the router cuts the multi-segment frames they make (see
//! `gso_frames_from_an_untagged_host_are_forwarded`). A TAP
//! device has no offloads unless asked (`TUNSETOFFLOAD`), so the kernel checksums in
//! software what it writes to the router.
//! IPv6 is off in every namespace, so only the traffic a test sends crosses the router.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vnf_tests::netns::{
    Capture, Family, Netns, Router, WorkDir, have_root, have_tool, hypervisor, iperf3_tcp, mac_of,
    ping, prom, quiet_ipv6, router_ns, serial, underlay_switch, veth, wait_for,
};

const TOOLS: &[&str] = &[
    "ip", "bridge", "ethtool", "ping", "tcpdump", "tshark", "curl", "iperf3", "ss",
];

/// Every tool is installed (`have_tool` prints which one is not).
fn tools(test: &str) -> bool {
    TOOLS.iter().all(|t| have_tool(test, t))
}

/// A host namespace behind the router's interface `lan0` (created in `ro`): its `eth0` has
/// 10.0.0.1/24, MTU 1450, untagged, with a veth's default offloads left on: transmit
/// checksum offload, TSO and GSO (the router's AF_PACKET port segments the super-frames,
/// see [`gso_frames_from_an_untagged_host_are_forwarded`]).
fn lan_host(ro: &Netns) -> Netns {
    let h1 = Netns::new("pt1");
    quiet_ipv6(&h1);
    veth(&h1, "eth0", ro, "lan0");
    h1.run("ip addr add 10.0.0.1/24 dev eth0");
    h1.run("ip link set eth0 mtu 1450");
    assert!(
        tx_csum_offload(&h1, "eth0"),
        "h1's veth should keep transmit checksum offload on:\n{}",
        h1.run("ethtool -k eth0")
    );
    h1
}

/// TCP data segments from 10.0.0.1 in a pcap (inside VXLAN on port 4789 too), by checksum
/// verdict (tshark validating them): (good, bad).
fn tcp_checksums(pcap: &Path) -> (usize, usize) {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args([
            "-n",
            "-d",
            "udp.port==4789,vxlan",
            "-o",
            "tcp.check_checksum:TRUE",
            "-Y",
            "ip.src==10.0.0.1 && tcp.len > 0",
            "-T",
            "fields",
            "-e",
            "tcp.checksum.status",
        ])
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "tshark -r {} failed: {}",
        pcap.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // tshark's checksum status: 0 bad, 1 good, 2 unverified.
    let good = text.lines().filter(|l| l.trim() == "1").count();
    let bad = text.lines().filter(|l| l.trim() == "0").count();
    (good, bad)
}

/// `tcpdump -vv` of a pcap's first packets, for failure messages.
fn show_vv(pcap: &Path) -> String {
    let out = vnf_tests::netns::sh(&format!("tcpdump -r {} -nn -vv -c 20 2>&1", pcap.display()));
    format!(
        "---- {} ----\n{}",
        pcap.display(),
        String::from_utf8_lossy(&out.stdout)
    )
}

/// One ping (which may need ARP) from `ns` to `dst`, then 10 that must all be answered.
fn ping_ok(ns: &Netns, dst: &str, what: &str) {
    let (got, out) = ping(ns, &format!("-c 1 -W 3 {dst}"));
    assert_eq!(got, 1, "first ping {what} failed:\n{out}");
    let (got, out) = ping(ns, &format!("-c 10 -i 0.1 -W 2 {dst}"));
    assert!(
        got == 10 && out.contains(" 0% packet loss"),
        "ping {what} lost packets:\n{out}"
    );
}

/// Whether transmit checksum offload is on for an interface (`ethtool -k`).
fn tx_csum_offload(ns: &Netns, iface: &str) -> bool {
    ns.run(&format!("ethtool -k {iface}"))
        .lines()
        .any(|l| l.trim() == "tx-checksumming: on")
}

/// An untagged host behind an AF_PACKET `interface` port, bridged to VNI 100: ping and
/// iperf3 TCP work both ways with h1's transmit checksum and segmentation offloads on.
/// Captures of h1 -> hv TCP
/// prove what the router did: the data segments leave h1 with partial checksums (tshark
/// calls them bad), and all arrive at hv's `vx0` with correct ones. Both ports count frames
/// in and out, and none is dropped for its size.
#[test]
fn untagged_interface_bridged_to_vni() {
    const T: &str = "untagged_interface_bridged_to_vni";
    let _g = serial();
    let started = Instant::now();
    if !have_root(T) || !tools(T) {
        return;
    }
    let dir = WorkDir::new("netns-ports-iface");
    let sw = underlay_switch(Family::V4);
    let hv = hypervisor(&sw, 2, 100, &[1]);
    let ro = router_ns(&sw);
    let h1 = lan_host(&ro);
    let r = Router::start(
        ro,
        &dir,
        "underlay: {address: 198.18.0.1}\n\
         ports:\n\
         \x20 - {name: lan, interface: lan0}\n\
         \x20 - {name: seg, vni: 100, flood: [198.18.0.2]}\n\
         bridges:\n\
         \x20 - {name: gw, ports: [lan, seg]}\n",
    );

    ping_ok(&h1, "10.0.0.2", "h1 (lan0) -> hv (VNI 100)");
    ping_ok(&hv, "10.0.0.1", "hv (VNI 100) -> h1 (lan0)");

    // h1 -> hv (the first 300 packets): captured as h1 sends them, and as the router sends
    // them on in VXLAN (not at hv's vx0: GRO there merges segments, whose checksum tshark
    // cannot check).
    let sent = Capture::start_limited(
        &h1,
        "eth0",
        "tcp and src host 10.0.0.1",
        &dir,
        "h1-eth0",
        300,
    );
    let recv = Capture::start_limited(
        &r.ns,
        "ul0",
        "udp dst port 4789 and src host 198.18.0.1",
        &dir,
        "router-ul0",
        300,
    );
    let up = iperf3_tcp(&h1, &hv, "10.0.0.2", "-t 2");
    let (sent, recv) = (sent.stop(), recv.stop());
    eprintln!("{T}: iperf3 TCP h1 -> hv: {:.1} Mbit/s", up / 1e6);
    let down = iperf3_tcp(&hv, &h1, "10.0.0.1", "-t 2");
    eprintln!("{T}: iperf3 TCP hv -> h1: {:.1} Mbit/s", down / 1e6);

    let (sent_good, sent_bad) = tcp_checksums(&sent);
    let (recv_good, recv_bad) = tcp_checksums(&recv);
    eprintln!(
        "{T}: h1's TCP data segments: {sent_good} good / {sent_bad} partial checksums as sent, \
         {recv_good} good / {recv_bad} bad as the router sent them to hv"
    );
    assert!(
        sent_bad > 0,
        "h1 sent no TCP segment with a partial checksum: offload was not in effect\n{}",
        show_vv(&sent)
    );
    assert!(
        recv_good > 0 && recv_bad == 0,
        "the router forwarded TCP segments with bad checksums: it did not complete them\n{}",
        show_vv(&recv)
    );

    let m = r.metrics();
    for port in ["lan", "seg"] {
        for dir in ["rx", "tx"] {
            let key = format!("vnf_port_{dir}_packets_total{{port=\"{port}\"}}");
            let v = prom(&m, &key);
            eprintln!("{T}: {key} {v:?}");
            assert!(v.is_some_and(|v| v > 0.0), "{key} should be > 0:\n{m}");
        }
    }
    assert_eq!(
        prom(&m, "vnf_drops_total{reason=\"mtu_exceeded\"}"),
        Some(0.0),
        "nothing should exceed the ports' MTU:\n{m}"
    );
    eprintln!("{T}: done in {:.1} s", started.elapsed().as_secs_f64());
}

/// A TAP port the router creates, bridged to VNI 100: the router namespace's own kernel,
/// configured on the TAP as 10.0.0.1, answers a kernel VXLAN host's ping and serves iperf3
/// TCP both ways; the TAP port counts frames in and out.
#[test]
fn tap_port_bridged_to_vni() {
    const T: &str = "tap_port_bridged_to_vni";
    let _g = serial();
    let started = Instant::now();
    if !have_root(T) || !tools(T) {
        return;
    }
    let dir = WorkDir::new("netns-ports-tap");
    let sw = underlay_switch(Family::V4);
    let hv = hypervisor(&sw, 2, 100, &[1]);
    let ro = router_ns(&sw);
    let r = Router::start(
        ro,
        &dir,
        "underlay: {address: 198.18.0.1}\n\
         ports:\n\
         \x20 - {name: host, tap: vtap0}\n\
         \x20 - {name: seg, vni: 100, flood: [198.18.0.2]}\n\
         bridges:\n\
         \x20 - {name: gw, ports: [host, seg]}\n",
    );
    assert!(
        wait_for(Duration::from_secs(10), || r
            .ns
            .sh("ip link show vtap0")
            .status
            .success()),
        "vnf-router did not create the TAP device vtap0"
    );
    r.ns.run("ip link set vtap0 up");
    r.ns.run("ip addr add 10.0.0.1/24 dev vtap0");
    r.ns.run("ip link set vtap0 mtu 1450");

    ping_ok(&hv, "10.0.0.1", "hv (VNI 100) -> ro (vtap0)");
    ping_ok(&r.ns, "10.0.0.2", "ro (vtap0) -> hv (VNI 100)");
    let up = iperf3_tcp(&hv, &r.ns, "10.0.0.1", "-t 2");
    eprintln!("{T}: iperf3 TCP hv -> ro (vtap0): {:.1} Mbit/s", up / 1e6);
    let down = iperf3_tcp(&hv, &r.ns, "10.0.0.1", "-t 2 -R");
    eprintln!("{T}: iperf3 TCP ro (vtap0) -> hv: {:.1} Mbit/s", down / 1e6);

    let m = r.metrics();
    for port in ["host", "seg"] {
        for dir in ["rx", "tx"] {
            let key = format!("vnf_port_{dir}_packets_total{{port=\"{port}\"}}");
            let v = prom(&m, &key);
            eprintln!("{T}: {key} {v:?}");
            assert!(v.is_some_and(|v| v > 0.0), "{key} should be > 0:\n{m}");
        }
    }
    eprintln!("{T}: done in {:.1} s", started.elapsed().as_secs_f64());
}

/// `vnf_bridge_mac_entries{bridge, worker}` for workers 0 and 1.
fn bridge_entries(text: &str, bridge: &str) -> [Option<f64>; 2] {
    ["0", "1"].map(|w| {
        prom(
            text,
            &format!("vnf_bridge_mac_entries{{bridge=\"{bridge}\",worker=\"{w}\"}}"),
        )
    })
}

/// The router with `workers: 2` on an untagged AF_PACKET port (a `PACKET_FANOUT` group
/// steered by the symmetric flow hash) bridged to VNI 100 (`SO_REUSEPORT` sockets steered
/// by the same hash). h1 and hv know each other's MAC (static neighbour entries), so only
/// the test's flows cross the router. One ping flow is handled, both ways, by one worker:
/// it alone has learned both MACs. iperf3 TCP with 8 streams completes, ping still loses
/// nothing, and the flows spread so that both workers have learned MACs.
#[test]
fn two_workers_on_a_trunk() {
    const T: &str = "two_workers_on_a_trunk";
    let _g = serial();
    let started = Instant::now();
    if !have_root(T) || !tools(T) {
        return;
    }
    let dir = WorkDir::new("netns-ports-workers");
    let sw = underlay_switch(Family::V4);
    let hv = hypervisor(&sw, 2, 100, &[1]);
    let ro = router_ns(&sw);
    let h1 = lan_host(&ro);
    // No ARP: a request and its reply hash by MAC addresses, to a worker of their own.
    h1.run(&format!(
        "ip neigh replace 10.0.0.2 lladdr {} dev eth0 nud permanent",
        mac_of(&hv, "vx0")
    ));
    hv.run(&format!(
        "ip neigh replace 10.0.0.1 lladdr {} dev vx0 nud permanent",
        mac_of(&h1, "eth0")
    ));
    let r = Router::start(
        ro,
        &dir,
        "workers: 2\n\
         underlay: {address: 198.18.0.1}\n\
         ports:\n\
         \x20 - {name: lan, interface: lan0}\n\
         \x20 - {name: seg, vni: 100, flood: [198.18.0.2]}\n\
         bridges:\n\
         \x20 - {name: gw, ports: [lan, seg]}\n",
    );
    // The per-worker gauges are refreshed once a second.
    let learned = || {
        std::thread::sleep(Duration::from_millis(1500));
        let m = r.metrics();
        (bridge_entries(&m, "gw"), m)
    };

    let (got, out) = ping(&h1, "-c 10 -i 0.1 -W 2 10.0.0.2");
    assert!(
        got == 10 && out.contains(" 0% packet loss"),
        "ping h1 (lan0) -> hv (VNI 100) lost packets:\n{out}"
    );
    let (entries, m) = learned();
    eprintln!("{T}: after ping: bridge MAC entries by worker {entries:?}");
    assert!(
        matches!(entries, [Some(2.0), Some(0.0)] | [Some(0.0), Some(2.0)]),
        "one ping flow should be handled, both ways (AF_PACKET fanout and UDP reuseport), by \
         one worker that learned both MACs; entries by worker {entries:?}:\n{m}"
    );

    let bps = iperf3_tcp(&h1, &hv, "10.0.0.2", "-P 8 -t 2");
    eprintln!(
        "{T}: iperf3 TCP -P 8 h1 (lan0) -> hv (VNI 100): {:.1} Mbit/s",
        bps / 1e6
    );
    let (got, out) = ping(&hv, "-c 10 -i 0.1 -W 2 10.0.0.1");
    assert!(
        got == 10 && out.contains(" 0% packet loss"),
        "ping hv (VNI 100) -> h1 (lan0) after iperf3 lost packets:\n{out}"
    );
    let spread = |e: &[Option<f64>; 2]| e.iter().all(|v| v.is_some_and(|v| v > 0.0));
    let (mut entries, mut m) = learned();
    // Nine TCP flows (control + 8 streams) and the ping all on one worker: 1 time in 512.
    for extra in 1..=2 {
        if spread(&entries) {
            break;
        }
        eprintln!(
            "{T}: the flows used one worker only ({entries:?}); iperf3 -P 8 again, try {extra}"
        );
        iperf3_tcp(&h1, &hv, "10.0.0.2", "-P 8 -t 1");
        (entries, m) = learned();
    }
    eprintln!("{T}: after iperf3: bridge MAC entries by worker {entries:?}");
    assert!(
        spread(&entries),
        "both workers should have learned MACs after 8 TCP streams; entries by worker \
         {entries:?}:\n{m}"
    );
    assert_eq!(
        prom(&m, "vnf_drops_total{reason=\"mtu_exceeded\"}"),
        Some(0.0),
        "nothing should exceed the ports' MTU:\n{m}"
    );
    eprintln!("{T}: done in {:.1} s", started.elapsed().as_secs_f64());
}

/// Regression test: a host behind an `interface` port with the default offloads of a veth
/// (TSO/GSO on) sends TCP as GSO super-frames of several MSS (2862, 7056 bytes... on a
/// 1450-byte MTU). The AF_PACKET socket receives them whole, behind a `virtio_net_hdr`
/// (`PACKET_VNET_HDR`), and the router must cut them into MSS-sized segments. Before it did,
/// it dropped them as `mtu_exceeded` and TCP from h1 crawled (0.2 Mbit/s here, against
/// 1 Gbit/s the other way).
#[test]
fn gso_frames_from_an_untagged_host_are_forwarded() {
    const T: &str = "gso_frames_from_an_untagged_host_are_forwarded";
    let _g = serial();
    if !have_root(T) || !tools(T) {
        return;
    }
    let dir = WorkDir::new("netns-ports-gso");
    let sw = underlay_switch(Family::V4);
    let hv = hypervisor(&sw, 2, 100, &[1]);
    let ro = router_ns(&sw);
    let h1 = lan_host(&ro);
    let r = Router::start(
        ro,
        &dir,
        "underlay: {address: 198.18.0.1}\n\
         ports:\n\
         \x20 - {name: lan, interface: lan0}\n\
         \x20 - {name: seg, vni: 100, flood: [198.18.0.2]}\n\
         bridges:\n\
         \x20 - {name: gw, ports: [lan, seg]}\n",
    );
    ping_ok(&h1, "10.0.0.2", "h1 (lan0) -> hv (VNI 100)");
    let bps = iperf3_tcp(&h1, &hv, "10.0.0.2", "-t 2");
    let m = r.metrics();
    let dropped = prom(&m, "vnf_drops_total{reason=\"mtu_exceeded\"}");
    eprintln!(
        "{T}: iperf3 TCP h1 -> hv: {:.1} Mbit/s; mtu_exceeded drops {dropped:?}",
        bps / 1e6
    );
    assert_eq!(
        dropped,
        Some(0.0),
        "the router dropped h1's GSO frames instead of segmenting them ({:.1} Mbit/s):\n{m}",
        bps / 1e6
    );
}
