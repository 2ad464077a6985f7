//! The VXLAN gateway between a VLAN behind Open vSwitch and a kernel VXLAN hypervisor.
//!
//! ```text
//!  h1 (10.0.0.1, untagged)
//!   | veth
//!  sw: OVS bridge br0, userspace datapath (netdev)
//!   |  p1: access port, tag=100        p2: trunk port, trunks=100
//!   | veth (802.1Q VID 100)
//!  ro: vnf-router  office = trunk0 + vlan 100  <-bridge->  web = VNI 100, VTEP 198.18.0.1
//!   | veth (underlay 198.18.0.0/24)
//!  hv2: kernel vxlan vx0, VNI 100, VTEP 198.18.0.2, host 10.0.0.2
//! ```
//!
//! This machine has no OVS kernel module and no 802.1Q kernel devices, so the VLAN switch
//! is OVS's userspace datapath (`datapath_type=netdev`): `ovs-vswitchd` opens each system
//! port with an `AF_PACKET` socket in the namespace it runs in, so it runs inside `sw`,
//! next to the bridge's veth ends. A private `ovsdb-server` and `ovs-vswitchd` live in a
//! temporary directory (`OVS_RUNDIR` etc.) and are killed by pidfile when the test ends.
//!
//! Checksums: both `ovs-vswitchd` (through `AF_PACKET`, without the virtio-net header)
//! and `vnf-router` (through its UDP socket) relay frames in userspace, so a frame a veth
//! peer sent with `CHECKSUM_PARTIAL` would leave them with its TCP checksum never filled
//! in. A real NIC fills it; here the senders compute checksums in software
//! (`ethtool -K ... tx off` on h1's veth and on hv2's `vx0`). ICMP is always summed in
//! software, so ping does not depend on it; iperf3's TCP does.

use std::time::{Duration, Instant};

use vnf_tests::netns::{
    Netns, Ovs, Proc, bin, have_root, have_tool, ping_summary, serial, sh, veth, wait_for, workdir,
};

const TEST: &str = "vlan_host_behind_ovs_reaches_kernel_vxlan_host";

/// `(interface, drops)` of every packet socket in `ns`, from `ss -0 -m` (`skmem:(... dN)`).
fn packet_socket_drops(ns: &Netns) -> Vec<(String, u64)> {
    let out = ns.sh("ss -a -0 -m -n");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let iface = l.split_whitespace().nth(4)?.strip_prefix("*:")?.to_string();
            let skmem = &l[l.find("skmem:(")? + 7..];
            let d = skmem
                .split(',')
                .find_map(|f| f.trim_end_matches(')').strip_prefix('d'))?;
            Some((iface, d.parse().ok()?))
        })
        .collect()
}

/// A number after `"key":` somewhere after `section` in iperf3's JSON.
fn json_number(json: &str, section: &str, key: &str) -> Option<f64> {
    let at = json.find(&format!("\"{section}\""))?;
    let rest = &json[at..];
    let k = rest.find(&format!("\"{key}\""))?;
    let rest = rest[k + key.len() + 2..].trim_start().strip_prefix(':')?;
    let end = rest.find([',', '}', '\n']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// Run iperf3 from h1 to hv2's server (`reverse`: hv2 sends); bits per second received.
fn iperf(h1: &Netns, reverse: bool) -> f64 {
    let dir = if reverse { "hv2 -> h1" } else { "h1 -> hv2" };
    let out = h1.sh(&format!(
        "timeout 20 iperf3 -c 10.0.0.2 -t 3 --json --connect-timeout 3000 {}",
        if reverse { "-R" } else { "" }
    ));
    let json = String::from_utf8_lossy(&out.stdout);
    let bps = json_number(&json, "sum_received", "bits_per_second");
    let retr = json_number(&json, "sum_sent", "retransmits");
    assert!(
        out.status.success() && bps.is_some_and(|b| b > 0.0),
        "iperf3 {dir} failed ({}):\n{json}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let bps = bps.unwrap_or_default();
    eprintln!(
        "iperf3 TCP {dir}: {:.0} Mbit/s received, {} retransmits",
        bps / 1e6,
        retr.map_or("?".into(), |r| format!("{r:.0}"))
    );
    bps
}

#[test]
fn vlan_host_behind_ovs_reaches_kernel_vxlan_host() {
    let _g = serial();
    if !have_root(TEST) {
        return;
    }
    for tool in [
        "ovsdb-tool",
        "ovsdb-server",
        "ovs-vswitchd",
        "ovs-vsctl",
        "iperf3",
        "tcpdump",
        "ping",
        "ethtool",
        "curl",
    ] {
        if !have_tool(TEST, tool) {
            return;
        }
    }
    let t0 = Instant::now();
    let dir = workdir("ovs");

    // Namespaces and links.
    let sw = Netns::new("sw");
    let h1 = Netns::new("h1");
    let ro = Netns::new("ro");
    let hv2 = Netns::new("hv");
    // No IPv6: the kernels of sw and ro would send their own ND and MLD frames untagged
    // straight out of p2 and trunk0 (bypassing OVS), blurring "everything on the trunk is
    // tagged".
    for ns in [&sw, &h1, &ro, &hv2] {
        ns.run("sysctl -qw net.ipv6.conf.all.disable_ipv6=1");
        ns.run("sysctl -qw net.ipv6.conf.default.disable_ipv6=1");
    }
    veth(&sw, "p1", &h1, "eth0");
    veth(&sw, "p2", &ro, "trunk0");
    veth(&ro, "ul0", &hv2, "ul0");

    // h1: a plain untagged host; MTU of the VXLAN segment it ends up on.
    h1.run("ip link set eth0 mtu 1450");
    h1.run("ip addr add 10.0.0.1/24 dev eth0");
    h1.run("ethtool -K eth0 tx off");

    // The underlay and hv2's kernel VTEP on VNI 100.
    ro.run("ip addr add 198.18.0.1/24 dev ul0");
    hv2.run("ip addr add 198.18.0.2/24 dev ul0");
    hv2.run("ip link add vx0 type vxlan id 100 local 198.18.0.2 remote 198.18.0.1 dstport 4789");
    hv2.run("ip link set vx0 mtu 1450");
    hv2.run("ip addr add 10.0.0.2/24 dev vx0");
    hv2.run("ethtool -K vx0 tx off");
    hv2.run("ip link set vx0 up");

    // Open vSwitch in sw: br0 with p1 an access port of VLAN 100 and p2 a trunk of VLAN 100.
    let ovs = Ovs::start(&dir.join("ovs"), &sw);
    ovs.vsctl("add-br br0 -- set bridge br0 datapath_type=netdev");
    ovs.vsctl("add-port br0 p1 tag=100");
    ovs.vsctl("add-port br0 p2 trunks=100");
    eprintln!("{}", ovs.vsctl("show").trim_end());

    // The router: VLAN 100 on trunk0 bridged to VNI 100.
    let config = dir.join("router.yaml");
    std::fs::write(
        &config,
        "underlay:\n  address: 198.18.0.1\n\
         ports:\n\
         \x20 - {name: web, vni: 100, flood: [198.18.0.2]}\n\
         \x20 - {name: office, trunk: trunk0, vlan: 100}\n\
         bridges:\n  - {name: gw100, ports: [web, office]}\n",
    )
    .expect("write config");
    let log = dir.join("router.log");
    let mut router = ro.spawn_logged(
        &format!(
            "{} --config {} --admin 127.0.0.1:19181",
            bin("vnf-router").display(),
            config.display()
        ),
        Some(&log),
    );
    let logs = |ovs: &Ovs| {
        format!(
            "--- vnf-router ---\n{}\n--- ovs-vswitchd ---\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            ovs.log()
        )
    };
    let ready = wait_for(Duration::from_secs(15), || {
        assert!(router.running(), "vnf-router exited:\n{}", logs(&ovs));
        ro.sh("curl -sf -o /dev/null http://127.0.0.1:19181/readyz")
            .status
            .success()
    });
    assert!(ready, "vnf-router not ready:\n{}", logs(&ovs));

    // Capture the trunk while pinging: every frame there must carry VID 100.
    let cap_log = dir.join("trunk.txt");
    let mut tcpdump: Proc = ro.spawn_logged("tcpdump -nn -e -l -i trunk0", Some(&cap_log));
    let listening = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&cap_log).is_ok_and(|s| s.contains("listening on"))
    });
    assert!(listening, "tcpdump did not start");

    // Warm-up (OVS and the router learn, ARP resolves), then a clean run.
    let warm = wait_for(Duration::from_secs(10), || {
        h1.sh("ping -c 1 -W 1 10.0.0.2").status.success()
    });
    assert!(warm, "h1 cannot reach 10.0.0.2:\n{}", logs(&ovs));
    let out = h1.sh("ping -c 20 -i 0.05 -W 1 10.0.0.2");
    let pinged = String::from_utf8_lossy(&out.stdout).into_owned();
    let (lost, sent) = ping_summary(&pinged).unwrap_or_else(|| panic!("no summary:\n{pinged}"));
    assert_eq!(lost, 0, "h1 -> 10.0.0.2 lost {lost}/{sent}:\n{pinged}");
    eprintln!("ping h1 -> 10.0.0.2: {sent} sent, 0 lost");

    std::thread::sleep(Duration::from_millis(200));
    tcpdump.signal(libc::SIGINT);
    let _ = tcpdump.wait_timeout(Duration::from_secs(5));
    drop(tcpdump);
    let cap = std::fs::read_to_string(&cap_log).unwrap_or_default();
    let echo: Vec<&str> = cap.lines().filter(|l| l.contains("ICMP echo")).collect();
    let tagged = |l: &&str| l.contains("ethertype 802.1Q") && l.contains("vlan 100,");
    let requests = echo
        .iter()
        .filter(|l| tagged(l) && l.contains("10.0.0.1 > 10.0.0.2: ICMP echo request"))
        .count();
    let replies = echo
        .iter()
        .filter(|l| tagged(l) && l.contains("10.0.0.2 > 10.0.0.1: ICMP echo reply"))
        .count();
    let untagged: Vec<&&str> = echo.iter().filter(|l| !tagged(l)).collect();
    assert!(
        requests >= 20 && replies >= 20 && untagged.is_empty(),
        "trunk0 must carry the echoes tagged with VID 100 both ways: {requests} requests, \
         {replies} replies tagged, untagged: {untagged:#?}\n{cap}"
    );
    let frames: Vec<&str> = cap.lines().filter(|l| l.contains(" > ")).collect();
    let untagged_any: Vec<&&str> = frames.iter().filter(|l| !tagged(l)).collect();
    assert!(
        untagged_any.is_empty(),
        "untagged frames on the trunk: {untagged_any:#?}"
    );
    eprintln!(
        "trunk0: {} frames, all tagged VID 100: {requests} echo requests (OVS -> router), \
         {replies} replies (router -> OVS); e.g.\n  {}",
        frames.len(),
        echo.first().copied().unwrap_or_default()
    );

    // TCP both ways.
    let _server = hv2.spawn("iperf3 -s -B 10.0.0.2");
    let up = wait_for(Duration::from_secs(5), || {
        sh(&format!("{}ss -ltn | grep -q ':5201'", hv2.exec()))
            .status
            .success()
    });
    assert!(up, "iperf3 server did not start");
    let fwd = iperf(&h1, false);
    let rev = iperf(&h1, true);
    assert!(fwd > 0.0 && rev > 0.0);

    assert!(router.running(), "vnf-router stopped:\n{}", logs(&ovs));
    let metrics = String::from_utf8_lossy(&ro.sh("curl -s http://127.0.0.1:19181/metrics").stdout)
        .into_owned();
    let rx_office = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vnf_port_rx_packets_total{port=\"office\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_default();
    assert!(
        rx_office > 1000.0,
        "the trunk port saw no traffic:\n{metrics}"
    );
    let drops: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("vnf_drops_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(
        drops.iter().all(|l| !l.contains("vlan_unknown")),
        "frames of another VLAN reached the router:\n{metrics}"
    );
    // Where TCP's retransmissions come from, for whoever reads the output: frames the
    // kernel dropped because an AF_PACKET socket's receive buffer was full (OVS's on p1
    // and p2, the router's on trunk0). No metric of the router counts these.
    eprintln!(
        "router drops: {drops:?}; AF_PACKET receive-buffer drops: sw {:?}, ro {:?}",
        packet_socket_drops(&sw),
        packet_socket_drops(&ro)
    );

    drop(router);
    drop(ovs);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{TEST}: {:.1?}", t0.elapsed());
}
