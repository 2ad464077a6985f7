//! The daemon shell of `vnf-router` as an operator meets it: `--check` errors that say where
//! they are, live metrics that `promtool` accepts, reloads (SIGHUP and `POST /reload`) that
//! refuse a broken file without disturbing traffic and apply a good one without losing
//! learned state, and a clean stop on SIGTERM.
//!
//! Most of these run the router on loopback (underlay `127.0.0.1` on a random UDP port, VNI
//! ports only) and need no root; the reload test runs real traffic between two kernel
//! `vxlan` devices in network namespaces and needs root.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use vnf_tests::netns::{
    Netns, Proc, bin, have_root, have_tool, ping_summary, serial, veth, wait_for, workdir,
};
use vnf_tests::{mac, udp_frame, vxlan};

// ---------------------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------------------

/// A free loopback UDP port (bound and released; the kernel hands out a new one next time).
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free UDP port")
        .port()
}

/// A free loopback TCP port.
fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free TCP port")
        .port()
}

/// `vnf-router` with the given arguments, without any `VNF_*` variable of ours leaking in.
fn router_cmd() -> Command {
    let mut c = Command::new(bin("vnf-router"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().to_ascii_uppercase().starts_with("VNF_") {
            c.env_remove(k);
        }
    }
    c
}

/// Start the router on the root namespace's loopback, logging to `log`.
fn spawn_router(config: &Path, admin: SocketAddr, log: &Path) -> Proc {
    let f = std::fs::File::create(log).expect("log file");
    let g = f.try_clone().expect("log file");
    let child = router_cmd()
        .arg("--config")
        .arg(config)
        .arg("--admin")
        .arg(admin.to_string())
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(g)
        .spawn()
        .expect("start vnf-router");
    Proc(Some(child))
}

/// A reply to [`http`].
#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
}

/// One HTTP/1.1 request over a plain socket (`Connection: close`).
fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no full response: {text:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status: {head:?}")))?;
    // Admin replies are small and never chunked by axum for these handlers; be safe anyway.
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(Reply { status, body })
}

/// Undo `Transfer-Encoding: chunked`.
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The value of one sample (`name{labels}` exactly as the text format writes it).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// Wait until `GET /readyz` answers 200.
fn wait_ready(admin: SocketAddr, proc: &mut Proc, log: &Path) {
    let ok = wait_for(Duration::from_secs(15), || {
        assert!(
            proc.running(),
            "vnf-router exited early:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        http(admin, "GET", "/readyz").is_ok_and(|r| r.status == 200)
    });
    assert!(
        ok,
        "vnf-router not ready on {admin}:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// A loopback config: VNIs 100 and 200 bridged together, no flooding (nothing to flood to).
fn loopback_config(udp_port: u16) -> String {
    format!(
        "underlay:\n  address: 127.0.0.1\n  port: {udp_port}\n  source_ports: 2\n\
         ports:\n  - name: blue\n    vni: 100\n  - name: green\n    vni: 200\n\
         bridges:\n  - name: lo-gw\n    ports: [blue, green]\n"
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------------------
// --check
// ---------------------------------------------------------------------------------------

/// One broken config and what `--check` must say about it.
struct Broken {
    name: &'static str,
    yaml: &'static str,
    /// `(line, substring of the message)` for each error expected.
    want: &'static [(usize, &'static str)],
}

const BROKEN: &[Broken] = &[
    Broken {
        name: "syntax",
        // The flow mapping opened on line 5 is never closed.
        yaml: "underlay:\n  address: 127.0.0.1\n  port: 14789\nports:\n  - {name: a, vni: 100\n  - {name: b, vni: 200}\n",
        want: &[(5, "unclosed")],
    },
    Broken {
        name: "unknown-field",
        yaml: "underlay:\n  address: 127.0.0.1\nports:\n  - name: a\n    vni: 100\n    colour: blue\n",
        want: &[(6, "unknown field `colour`")],
    },
    Broken {
        name: "vni-range",
        yaml: "underlay:\n  address: 127.0.0.1\nports:\n  - name: a\n    vni: 100\n  - name: b\n    vni: 16777216\nbridges:\n  - {name: g, ports: [a, b]}\n",
        want: &[(7, "16777216")],
    },
    Broken {
        name: "bridge-port",
        yaml: "underlay:\n  address: 127.0.0.1\nports:\n  - name: a\n    vni: 100\n  - name: b\n    vni: 200\nbridges:\n  - name: g\n    ports: [a, nope]\n",
        want: &[(10, "no port is named `nope`")],
    },
    Broken {
        name: "mtu",
        yaml: "underlay:\n  address: 127.0.0.1\n  mtu: 1500\nports:\n  - name: a\n    vni: 100\n    mtu: 1500\n",
        want: &[(7, "MTU 1500 does not fit")],
    },
    Broken {
        name: "port-type",
        yaml: "underlay:\n  address: 127.0.0.1\n  port: notaport\nports:\n  - {name: a, vni: 100}\n",
        want: &[(3, "notaport")],
    },
    Broken {
        // Every problem at once, each on its own line.
        name: "several",
        yaml: "underlay:\n  address: 127.0.0.1\nports:\n  - name: a\n    vni: 0\n  - name: b\n    trunk: eth1\n    vlan: 4095\nbridges:\n  - name: g\n    ports: [a, b, c]\n",
        want: &[(5, "VNI 0"), (8, "4095"), (11, "no port is named `c`")],
    },
];

/// Whether `out` has a line `FILE:LINE:COL: ...` with `needle` in it.
fn has_located(out: &str, file: &Path, line: usize, needle: &str) -> bool {
    let prefix = format!("{}:{line}:", file.display());
    out.lines().any(|l| {
        l.strip_prefix(&prefix).is_some_and(|rest| {
            let (col, msg) = rest.split_once(": ").unwrap_or(("", ""));
            !col.is_empty() && col.bytes().all(|b| b.is_ascii_digit()) && msg.contains(needle)
        })
    })
}

#[test]
fn check_reports_file_line_and_problem() {
    let _g = serial();
    let t0 = Instant::now();
    let dir = workdir("check");

    for b in BROKEN {
        let file = dir.join(format!("{}.yaml", b.name));
        std::fs::write(&file, b.yaml).expect("write config");
        let out = router_cmd()
            .arg("--check")
            .arg("--config")
            .arg(&file)
            .output()
            .expect("run vnf-router --check");
        let all = text(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: --check must exit 1 on a broken config; said:\n{all}",
            b.name
        );
        for (line, needle) in b.want {
            assert!(
                has_located(&all, &file, *line, needle),
                "{}: expected `{}:{line}:COL: ...{needle}...`, got:\n{all}",
                b.name,
                file.display()
            );
        }
        assert_eq!(
            all.lines().filter(|l| !l.trim().is_empty()).count(),
            b.want.len(),
            "{}: one line per problem expected:\n{all}",
            b.name
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(": ok"),
            "{}: a broken config reported ok:\n{all}",
            b.name
        );
        eprintln!("{}: {}", b.name, all.trim_end());
    }

    // A good config: `FILE: ok` on stdout, exit 0.
    let good = dir.join("good.yaml");
    std::fs::write(&good, loopback_config(14789)).expect("write config");
    let out = router_cmd()
        .arg("--check")
        .arg("--config")
        .arg(&good)
        .output()
        .expect("run vnf-router --check");
    assert_eq!(out.status.code(), Some(0), "good config: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}: ok\n", good.display())
    );

    // A bad value from the environment names the variable, not the file.
    let out = router_cmd()
        .env("VNF_UNDERLAY__PORT", "notaport")
        .arg("--check")
        .arg("--config")
        .arg(&good)
        .output()
        .expect("run vnf-router --check");
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "bad env value: {all}");
    assert!(
        all.lines()
            .any(|l| l.starts_with("VNF_UNDERLAY__PORT: ") && l.contains("notaport")),
        "the error must name VNF_UNDERLAY__PORT and its value:\n{all}"
    );
    assert!(
        !all.contains(&good.display().to_string()),
        "the file is not at fault:\n{all}"
    );
    eprintln!("env: {}", all.trim_end());

    // A semantically bad value from the environment is blamed on the variable too.
    let out = router_cmd()
        .env("VNF_UNDERLAY__PORT", "0")
        .arg("--check")
        .arg("--config")
        .arg(&good)
        .output()
        .expect("run vnf-router --check");
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "port 0 from env: {all}");
    assert!(
        all.lines().any(|l| l.starts_with("VNF_UNDERLAY__PORT: ")),
        "{all}"
    );

    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("check_reports_file_line_and_problem: {:.1?}", t0.elapsed());
}

// ---------------------------------------------------------------------------------------
// /metrics through promtool
// ---------------------------------------------------------------------------------------

#[test]
fn promtool_accepts_live_metrics() {
    let _g = serial();
    if !have_tool("promtool_accepts_live_metrics", "promtool") {
        return;
    }
    let t0 = Instant::now();
    let dir = workdir("promtool");
    let udp_port = free_udp_port();
    let admin: SocketAddr = (Ipv4Addr::LOCALHOST, free_tcp_port()).into();
    let config = dir.join("router.yaml");
    std::fs::write(&config, loopback_config(udp_port)).expect("write config");
    let log = dir.join("router.log");
    let mut router = spawn_router(&config, admin, &log);
    wait_ready(admin, &mut router, &log);

    // Some traffic, so that counters move: one good VXLAN packet on VNI 100 (learned,
    // bridged to VNI 200, which has nowhere to flood) and one with bad flags (dropped).
    // From another loopback address: VXLAN claiming the router's own VTEP address as its
    // source is dropped as spoofed (`vtep_not_allowed`).
    let tx = UdpSocket::bind("127.0.0.2:0").expect("udp socket");
    let frame = udp_frame(
        mac(1),
        mac(2),
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 0, 0, 2),
        1000,
        2000,
        b"hello",
    );
    let to: SocketAddr = (Ipv4Addr::LOCALHOST, udp_port).into();
    tx.send_to(&vxlan(0x08, 100, &frame), to).expect("send");
    tx.send_to(&vxlan(0x00, 100, &frame), to).expect("send");
    let spoof = UdpSocket::bind("127.0.0.1:0").expect("udp socket");
    spoof.send_to(&vxlan(0x08, 100, &frame), to).expect("send");

    let mut body = String::new();
    let moved = wait_for(Duration::from_secs(5), || {
        body = http(admin, "GET", "/metrics").expect("GET /metrics").body;
        metric(&body, "vnf_port_rx_packets_total{port=\"blue\"}") == Some(1.0)
            && metric(&body, "vnf_drops_total{reason=\"vxlan_bad_flags\"}") == Some(1.0)
            && metric(&body, "vnf_drops_total{reason=\"vtep_not_allowed\"}") == Some(1.0)
    });
    assert!(moved, "counters did not move:\n{body}");

    for want in [
        "vnf_build_info{",
        "vnf_drops_total{reason=",
        "vnf_port_rx_packets_total",
        "vnf_config_reloads_total{result=\"ok\"} 0",
        "vnf_fdb_learned_total{vni=\"100\"} 1",
    ] {
        assert!(
            body.contains(want),
            "`{want}` missing from /metrics:\n{body}"
        );
    }
    assert!(
        body.lines()
            .any(|l| l.starts_with("vnf_build_info{") && l.contains("vnf=\"vnf-router\"")),
        "{body}"
    );

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("feed promtool");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}\n--- metrics ---\n{body}",
        out.status,
        text(&out)
    );
    assert!(router.running(), "the router stopped");

    drop(router);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "promtool_accepts_live_metrics: {} lines accepted, {:.1?}",
        body.lines().count(),
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// SIGTERM
// ---------------------------------------------------------------------------------------

#[test]
fn sigterm_stops_cleanly() {
    let _g = serial();
    let t0 = Instant::now();
    let dir = workdir("sigterm");
    let udp_port = free_udp_port();
    let admin: SocketAddr = (Ipv4Addr::LOCALHOST, free_tcp_port()).into();
    let config = dir.join("router.yaml");
    std::fs::write(&config, loopback_config(udp_port)).expect("write config");
    let log = dir.join("router.log");
    let mut router = spawn_router(&config, admin, &log);
    wait_ready(admin, &mut router, &log);
    assert_eq!(http(admin, "GET", "/healthz").expect("healthz").status, 200);

    let sent = Instant::now();
    router.signal(libc::SIGTERM);
    let code = router.wait_timeout(Duration::from_secs(2));
    let took = sent.elapsed();
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        code,
        Some(0),
        "SIGTERM: expected exit 0 within 2 s, got {code:?} after {took:?}:\n{logged}"
    );
    assert!(logged.contains("SIGTERM"), "no shutdown log:\n{logged}");
    // Everything it held is released.
    assert!(
        TcpStream::connect_timeout(&admin, Duration::from_millis(500)).is_err(),
        "admin port still open after exit"
    );
    UdpSocket::bind((Ipv4Addr::LOCALHOST, udp_port)).expect("VXLAN port released");

    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "sigterm_stops_cleanly: exited 0 in {took:.2?} ({:.1?} in all)",
        t0.elapsed()
    );
}

/// The running router's own timer: with routed interfaces and no bridge domain (nothing
/// else wakes the worker), ARP is retried once a second and gives up after three requests,
/// dropping what waited as `arp_timeout`. No root: VXLAN on loopback.
#[test]
fn routed_timers_run_without_a_bridge() {
    let _g = serial();
    let dir = workdir("routed-timers");
    let udp_port = free_udp_port();
    let admin: SocketAddr = (Ipv4Addr::LOCALHOST, free_tcp_port()).into();
    // Not 127.0.0.1: VXLAN claiming the router's own address is refused.
    let peer = UdpSocket::bind("127.0.0.2:0").expect("peer socket");
    let config = dir.join("router.yaml");
    std::fs::write(
        &config,
        [
            format!("underlay: {{address: 127.0.0.1, port: {udp_port}, source_ports: 1}}"),
            "ports: [{name: a, vni: 100}, {name: b, vni: 200, flood: [127.0.0.3]}]".into(),
            "interfaces:".into(),
            "  - {name: a, port: a, mac: \"02:00:00:00:01:01\", addresses: [10.0.1.1/24]}".into(),
            "  - {name: b, port: b, addresses: [10.0.2.1/24]}".into(),
        ]
        .join("\n"),
    )
    .expect("write config");
    let log = dir.join("router.log");
    let mut router = spawn_router(&config, admin, &log);
    wait_ready(admin, &mut router, &log);
    // Three packets for 10.0.2.77, which never answers ARP.
    let frame = vnf_tests::udp_frame(
        vnf_tests::mac(5),
        [2, 0, 0, 0, 1, 1],
        Ipv4Addr::new(10, 0, 1, 5),
        Ipv4Addr::new(10, 0, 2, 77),
        1000,
        9,
        b"anyone?",
    );
    for _ in 0..3 {
        peer.send_to(
            &vnf_tests::vxlan(0x08, 100, &frame),
            (Ipv4Addr::LOCALHOST, udp_port),
        )
        .expect("send");
    }
    let mut last = String::new();
    let gave_up = wait_for(Duration::from_secs(10), || {
        last = http(admin, "GET", "/metrics")
            .map(|r| r.body)
            .unwrap_or_default();
        metric(&last, "vnf_drops_total{reason=\"arp_timeout\"}") == Some(3.0)
    });
    router.signal(libc::SIGTERM);
    router.wait_timeout(Duration::from_secs(2));
    assert!(gave_up, "held packets never timed out:\n{last}");
    assert_eq!(
        metric(&last, "vnf_arp_requests_sent_total"),
        Some(3.0),
        "{last}"
    );
    assert_eq!(metric(&last, "vnf_arp_held_packets"), Some(0.0), "{last}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// Reload under traffic
// ---------------------------------------------------------------------------------------

/// `curl` inside a namespace: `(status, body)`.
fn curl(ns: &Netns, method: &str, url: &str) -> (u16, String) {
    let out = ns.sh(&format!(
        "curl -s -m 10 -X {method} -w '\\n%{{http_code}}' {url}"
    ));
    let all = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = all.rsplit_once('\n').unwrap_or(("", all.as_str()));
    let code = code.trim().parse().unwrap_or_else(|_| {
        panic!(
            "curl {method} {url}: no status ({}):\n{all}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, body.to_string())
}

/// Kernel VXLAN hypervisor `hv` at `vtep` on VNI `vni`, host address `host`.
fn kernel_vtep(hv: &Netns, vtep: &str, vni: u32, host: &str) {
    // No IPv6 on the overlay: its multicast (MLD, router solicitations) would flood and
    // blur the "no new flooding" check.
    hv.run("sysctl -qw net.ipv6.conf.all.disable_ipv6=1");
    hv.run("sysctl -qw net.ipv6.conf.default.disable_ipv6=1");
    hv.run(&format!("ip addr add {vtep}/24 dev ul0"));
    hv.run(&format!(
        "ip link add vx0 type vxlan id {vni} local {vtep} remote 198.18.0.1 dstport 4789"
    ));
    hv.run("ip link set vx0 mtu 1450");
    hv.run(&format!("ip addr add {host}/24 dev vx0"));
    hv.run("ip link set vx0 up");
}

fn reload_config(extra_db: &str) -> String {
    format!(
        "underlay:\n  address: 198.18.0.1\n\
         ports:\n\
         \x20 - name: web\n    vni: 100\n    flood: [198.18.0.2]\n\
         \x20 - name: db\n    vni: 200\n    flood: [198.18.0.3]\n{extra_db}\
         bridges:\n  - name: gw\n    ports: [web, db]\n"
    )
}

#[test]
fn reload_with_broken_config_keeps_traffic_flowing() {
    let _g = serial();
    const T: &str = "reload_with_broken_config_keeps_traffic_flowing";
    if !have_root(T) || !have_tool(T, "ping") || !have_tool(T, "curl") {
        return;
    }
    let t0 = Instant::now();
    let dir = workdir("reload");
    let ro = Netns::new("ro");
    let hv2 = Netns::new("hv");
    let hv3 = Netns::new("hv");
    veth(&ro, "ul2", &hv2, "ul0");
    veth(&ro, "ul3", &hv3, "ul0");
    // The router's one VTEP address, reached through either link.
    ro.run("ip addr add 198.18.0.1/32 dev ul2");
    ro.run("ip route add 198.18.0.2/32 dev ul2");
    ro.run("ip route add 198.18.0.3/32 dev ul3");
    kernel_vtep(&hv2, "198.18.0.2", 100, "10.0.0.2");
    kernel_vtep(&hv3, "198.18.0.3", 200, "10.0.0.3");

    let config = dir.join("router.yaml");
    std::fs::write(&config, reload_config("")).expect("write config");
    let log = dir.join("router.log");
    let admin_port = free_tcp_port();
    let base = format!("http://127.0.0.1:{admin_port}");
    let mut router = ro.spawn_logged(
        &format!(
            "{} --config {} --admin 127.0.0.1:{admin_port}",
            bin("vnf-router").display(),
            config.display()
        ),
        Some(&log),
    );
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let ready = wait_for(Duration::from_secs(15), || {
        assert!(router.running(), "vnf-router exited:\n{}", logs());
        curl(&ro, "GET", &format!("{base}/readyz")).0 == 200
    });
    assert!(ready, "not ready:\n{}", logs());
    assert_eq!(curl(&ro, "GET", &format!("{base}/healthz")).0, 200);
    assert_eq!(
        curl(&ro, "GET", &format!("{base}/reload")).0,
        405,
        "GET /reload must be 405"
    );

    // Warm up: ARP resolved, both MACs learned everywhere.
    let warm = wait_for(Duration::from_secs(10), || {
        hv2.sh("ping -c 1 -W 1 10.0.0.3").status.success()
    });
    assert!(warm, "hv2 cannot reach hv3 through the router:\n{}", logs());
    hv2.run("ping -c 3 -i 0.2 -W 1 10.0.0.3");

    let metrics = || curl(&ro, "GET", &format!("{base}/metrics")).1;
    // The table gauges are refreshed by the workers' once-a-second ageing pass.
    let mut m0 = String::new();
    let gauged = wait_for(Duration::from_secs(5), || {
        m0 = metrics();
        metric(&m0, "vnf_fdb_entries{vni=\"100\",worker=\"0\"}").is_some_and(|v| v >= 1.0)
            && metric(&m0, "vnf_fdb_entries{vni=\"200\",worker=\"0\"}").is_some_and(|v| v >= 1.0)
            && metric(&m0, "vnf_bridge_mac_entries{bridge=\"gw\",worker=\"0\"}") == Some(2.0)
    });
    assert!(gauged, "FDB gauges never showed the learned MACs:\n{m0}");
    let value = |text: &str, series: &str| {
        metric(text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"))
    };
    let learned = |t: &str| {
        value(t, "vnf_fdb_learned_total{vni=\"100\"}")
            + value(t, "vnf_fdb_learned_total{vni=\"200\"}")
            + value(t, "vnf_bridge_learned_total{bridge=\"gw\"}")
    };
    let floods = |t: &str| {
        value(t, "vnf_flood_copies_total{vni=\"100\"}")
            + value(t, "vnf_flood_copies_total{vni=\"200\"}")
            + value(t, "vnf_bridge_floods_total{bridge=\"gw\"}")
    };
    let (learned0, floods0) = (learned(&m0), floods(&m0));
    assert!(learned0 >= 4.0, "nothing learned:\n{m0}");
    assert_eq!(
        value(&m0, "vnf_config_reloads_total{result=\"error\"}"),
        0.0
    );
    assert_eq!(value(&m0, "vnf_config_reloads_total{result=\"ok\"}"), 0.0);

    // Continuous traffic over the whole reload sequence: 140 pings, 50 ms apart (7 s).
    let ping_log = dir.join("ping.log");
    let mut ping = hv2.spawn_logged("ping -i 0.05 -c 140 -W 1 10.0.0.3", Some(&ping_log));
    std::thread::sleep(Duration::from_millis(700));

    // 1. A broken file via SIGHUP: refused, counted, the router keeps running.
    std::fs::write(
        &config,
        "underlay:\n  address: 198.18.0.1\nports:\n  - name: web\n    vni: 100\n    flood: [198.18.0.2\n",
    )
    .expect("write config");
    router.signal(libc::SIGHUP);
    let mut m = String::new();
    let counted = wait_for(Duration::from_secs(5), || {
        m = metrics();
        metric(&m, "vnf_config_reloads_total{result=\"error\"}") == Some(1.0)
    });
    assert!(
        counted,
        "SIGHUP with a broken file not counted:\n{m}\n{}",
        logs()
    );
    assert!(router.running(), "router died on SIGHUP:\n{}", logs());

    // 2. Semantically broken, via POST /reload: 4xx with the error, located.
    std::fs::write(
        &config,
        reload_config("    static_macs:\n      - {mac: \"ff:ff:ff:ff:ff:ff\", vtep: 198.18.0.3}\n"),
    )
    .expect("write config");
    let (code, body) = curl(&ro, "POST", &format!("{base}/reload"));
    assert!(
        (400..500).contains(&code),
        "POST /reload of a broken file: {code}\n{body}"
    );
    assert!(
        body.contains(&format!("{}:", config.display())) && body.contains("not a unicast MAC"),
        "the reply must carry the located error:\n{body}"
    );
    eprintln!("POST /reload (broken) -> {code}: {}", body.trim_end());
    let m1 = metrics();
    assert_eq!(
        value(&m1, "vnf_config_reloads_total{result=\"error\"}"),
        2.0
    );
    assert_eq!(value(&m1, "vnf_config_reloads_total{result=\"ok\"}"), 0.0);
    assert!(router.running(), "router died on a refused reload");
    std::thread::sleep(Duration::from_millis(500));

    // 3. A good, changed config: a static MAC on VNI 200 and a second flood VTEP on VNI 100.
    let changed =
        reload_config("    static_macs:\n      - {mac: \"02:00:00:00:02:99\", vtep: 198.18.0.3}\n")
            .replace("flood: [198.18.0.2]", "flood: [198.18.0.2, 198.18.0.9]");
    std::fs::write(&config, &changed).expect("write config");
    let (code, body) = curl(&ro, "POST", &format!("{base}/reload"));
    assert_eq!(code, 200, "POST /reload of a good file: {body}");
    let (_, shown) = curl(&ro, "GET", &format!("{base}/config"));
    assert!(
        shown.contains("02:00:00:00:02:99") && shown.contains("198.18.0.9"),
        "GET /config does not show the reloaded config:\n{shown}"
    );
    let m2 = metrics();
    assert_eq!(value(&m2, "vnf_config_reloads_total{result=\"ok\"}"), 1.0);
    assert_eq!(
        value(&m2, "vnf_config_reloads_total{result=\"error\"}"),
        2.0
    );

    let code = ping.wait_timeout(Duration::from_secs(20));
    let pinged = std::fs::read_to_string(&ping_log).unwrap_or_default();
    let (lost, sent) =
        ping_summary(&pinged).unwrap_or_else(|| panic!("no ping summary ({code:?}):\n{pinged}"));
    assert_eq!(
        (lost, code),
        (0, Some(0)),
        "ping lost {lost}/{sent} across the reloads:\n{pinged}\n{}",
        logs()
    );

    // Learned state survived both refused and applied reloads: nothing relearned, nothing
    // flooded again (the hosts' ARP caches are warm, so all traffic is known unicast).
    let m3 = metrics();
    assert_eq!(
        learned(&m3),
        learned0,
        "MACs were learned again after the reload (tables lost?):\nbefore:\n{m0}\nafter:\n{m3}"
    );
    assert_eq!(
        floods(&m3),
        floods0,
        "frames were flooded again after the reload (tables lost?):\nbefore:\n{m0}\nafter:\n{m3}"
    );
    // The tables hold what they held, plus the new static entry on VNI 200.
    for (series, added) in [
        ("vnf_fdb_entries{vni=\"100\",worker=\"0\"}", 0.0),
        ("vnf_fdb_entries{vni=\"200\",worker=\"0\"}", 1.0),
        ("vnf_bridge_mac_entries{bridge=\"gw\",worker=\"0\"}", 0.0),
    ] {
        assert_eq!(
            value(&m3, series),
            value(&m0, series) + added,
            "{series}:\nbefore:\n{m0}\nafter:\n{m3}"
        );
    }

    // Still forwarding, still healthy.
    hv2.run("ping -c 3 -i 0.1 -W 1 10.0.0.3");
    hv3.run("ping -c 3 -i 0.1 -W 1 10.0.0.2");
    assert_eq!(curl(&ro, "GET", &format!("{base}/healthz")).0, 200);
    assert_eq!(curl(&ro, "GET", &format!("{base}/readyz")).0, 200);
    assert!(router.running(), "router stopped:\n{}", logs());
    assert!(
        !logs().contains("panicked"),
        "the router panicked:\n{}",
        logs()
    );

    drop(ping);
    drop(router);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "{T}: {sent} pings, 0 lost across SIGHUP + 2 POST /reload; {:.1?}",
        t0.elapsed()
    );
}
