//! Replays the fuzz corpora (`fuzz/corpus/<target>/`, kept small and minimised by
//! `scripts/fuzz`) through the same target bodies the fuzzer runs, so that every input that
//! once found new coverage, and every crash ever found (`crash-*`), stays a regression test.
//! The `router_path` crashes (`crash-*`: router replies over the interface MTU, a fragment
//! offset that wrapped) are fixed and replay with the rest. The load balancer's targets
//! (`http_parser`, `http_proxy`, `lb_path`) have their bodies and seeds in `fuzz_lb.rs`.
//!
//! The hand-written seeds (`seed-*`) are built by [`seeds`]; after changing them, rewrite
//! the files with `cargo test -p vnf-tests --test fuzz_corpus -- --ignored write_seeds`.

use std::fs;
use std::net::Ipv4Addr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use vnf_tests::fuzz_lb::{self, lp};
use vnf_tests::fuzz_targets::rp::{self, ingress, port};
use vnf_tests::fuzz_targets::{
    self, MODE_ACCESS, MODE_TRUNK, MODE_VXLAN, MODE_VXLAN_BATCH, control,
};
use vnf_tests::*;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Every input of a target's corpus, sorted by file name (hidden files skipped).
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let entries = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e} (run scripts/fuzz)", dir.display()));
    let mut out: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            (!name.starts_with('.')).then(|| {
                let data = fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                (name, data)
            })
        })
        .collect();
    out.sort();
    assert!(
        !out.is_empty(),
        "corpus {} is empty: nothing would be replayed",
        dir.display()
    );
    out
}

/// Run `f`; if it panics, name the input (and its bytes) and return its file name.
fn run_named(target: &str, name: &str, data: &[u8], f: impl FnOnce()) -> Option<String> {
    catch_unwind(AssertUnwindSafe(f)).err().map(|_| {
        eprintln!("{target}: input {name} failed; hex: {}", hex(data));
        name.to_string()
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Fail naming every input that failed, after all were replayed.
fn report(target: &str, replayed: usize, failed: &[String]) {
    println!(
        "{target}: replayed {replayed} inputs, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{target}: {} of {replayed} inputs failed: {failed:?}",
        failed.len()
    );
}

#[test]
fn vxlan_decap_corpus_replays() {
    let inputs = corpus("vxlan_decap");
    // Each input on a fresh router: the result depends on that input alone.
    let mut failed: Vec<String> = inputs
        .iter()
        .filter_map(|(name, data)| {
            run_named("vxlan_decap", name, data, || {
                let mut net = fuzz_targets::new_router_net();
                fuzz_targets::vxlan_decap_on(&mut net, data);
            })
        })
        .collect();
    // Then all of them in order on one router, as a fuzzing run builds up state (learned
    // MACs, caps, ageing): still deterministic, the order being the file names'. Inputs
    // that fail on their own are left out; after a failure the router starts afresh.
    let alone = failed.clone();
    let mut net = fuzz_targets::new_router_net();
    for (name, data) in inputs.iter().filter(|(n, _)| !alone.contains(n)) {
        let f = run_named("vxlan_decap (in sequence)", name, data, || {
            fuzz_targets::vxlan_decap_on(&mut net, data);
        });
        if let Some(f) = f {
            failed.push(format!("{f} (in sequence)"));
            net = fuzz_targets::new_router_net();
        }
    }
    report("vxlan_decap", inputs.len(), &failed);
}

#[test]
fn wire_parsers_corpus_replays() {
    let inputs = corpus("wire_parsers");
    let failed: Vec<String> = inputs
        .iter()
        .filter_map(|(name, data)| {
            run_named("wire_parsers", name, data, || {
                fuzz_targets::wire_parsers(data)
            })
        })
        .collect();
    report("wire_parsers", inputs.len(), &failed);
}

#[test]
fn router_path_corpus_replays() {
    let inputs = corpus("router_path");
    let failed: Vec<String> = inputs
        .iter()
        .filter_map(|(name, data)| {
            run_named("router_path", name, data, || {
                fuzz_targets::router_path(data)
            })
        })
        .collect();
    report("router_path", inputs.len(), &failed);
}

#[test]
fn firewall_path_corpus_replays() {
    let inputs = corpus("firewall_path");
    let failed: Vec<String> = inputs
        .iter()
        .filter_map(|(name, data)| {
            run_named("firewall_path", name, data, || {
                vnf_tests::fuzz_firewall::firewall_path(data)
            })
        })
        .collect();
    report("firewall_path", inputs.len(), &failed);
}

#[test]
fn http_parser_corpus_replays() {
    let inputs = corpus("http_parser");
    let failed: Vec<String> = inputs
        .iter()
        .filter_map(|(name, data)| {
            run_named("http_parser", name, data, || fuzz_lb::http_parser(data))
        })
        .collect();
    report("http_parser", inputs.len(), &failed);
}

#[test]
fn http_proxy_corpus_replays() {
    let inputs = corpus("http_proxy");
    let failed: Vec<String> = inputs
        .iter()
        .filter_map(|(name, data)| {
            run_named("http_proxy", name, data, || fuzz_lb::http_proxy(data))
        })
        .collect();
    report("http_proxy", inputs.len(), &failed);
}

#[test]
fn lb_path_corpus_replays() {
    let inputs = corpus("lb_path");
    let failed: Vec<String> = inputs
        .iter()
        .filter_map(|(name, data)| run_named("lb_path", name, data, || fuzz_lb::lb_path(data)))
        .collect();
    report("lb_path", inputs.len(), &failed);
}

#[test]
fn seeds_pass() {
    let failed: Vec<String> = seeds()
        .into_iter()
        .filter_map(|(target, name, data)| {
            run_named(target, &name, &data, || match target {
                "vxlan_decap" => {
                    fuzz_targets::vxlan_decap_on(&mut fuzz_targets::new_router_net(), &data)
                }
                "router_path" => fuzz_targets::router_path(&data),
                "http_parser" => fuzz_lb::http_parser(&data),
                "http_proxy" => fuzz_lb::http_proxy(&data),
                "lb_path" => fuzz_lb::lb_path(&data),
                _ => fuzz_targets::wire_parsers(&data),
            })
        })
        .collect();
    assert!(failed.is_empty(), "seeds failed: {failed:?}");
}

/// The `router_path` checks are not vacuous: the seeds between them get every kind of
/// output checked (bridged, ARP, forwarded, translated, reassembled fragments, ICMP).
#[test]
fn router_path_seeds_reach_every_check() {
    let mut total = rp::Stats::default();
    for (name, data) in router_path_seeds() {
        let s = rp::run_stats(&data);
        println!("{name}: {s:?}");
        total.bridged += s.bridged;
        total.arp += s.arp;
        total.forwarded += s.forwarded;
        total.translated += s.translated;
        total.reassembled += s.reassembled;
        total.lone_fragments += s.lone_fragments;
        total.icmp += s.icmp;
    }
    println!("total: {total:?}");
    assert!(
        total.bridged > 0
            && total.arp > 0
            && total.forwarded > 0
            && total.translated > 0
            && total.reassembled > 0
            && total.icmp > 0,
        "{total:?}"
    );
}

/// The `lb_path` checks are not vacuous: the seeds between them open connections (checked
/// against Maglev), send packets of them checked exactly, keep them across reloads, and get
/// every kind of output checked (full NAT, DNAT, replies from a VIP, RSTs, ICMP made and
/// translated, `no_backend` refusals).
#[test]
fn lb_path_seeds_reach_every_check() {
    let mut total = lp::Stats::default();
    for (name, data) in fuzz_lb::lb_path_seeds() {
        let s = lp::run_stats(&data);
        println!("{name}: {s:?}");
        total.full_nat += s.full_nat;
        total.to_backend += s.to_backend;
        total.from_vip += s.from_vip;
        total.resets += s.resets;
        total.port_unreachable += s.port_unreachable;
        total.echo_replies += s.echo_replies;
        total.icmp_errors += s.icmp_errors;
        total.icmp_translated += s.icmp_translated;
        total.arp += s.arp;
        total.exact += s.exact;
        total.opened += s.opened;
        total.kept_across_changes += s.kept_across_changes;
        total.no_backend += s.no_backend;
    }
    println!("total: {total:?}");
    let counts = [
        total.full_nat,
        total.to_backend,
        total.from_vip,
        total.resets,
        total.port_unreachable,
        total.echo_replies,
        total.icmp_errors,
        total.icmp_translated,
        total.arp,
        total.exact,
        total.opened,
        total.kept_across_changes,
        total.no_backend,
    ];
    assert!(counts.iter().all(|&c| c > 0), "{total:?}");
}

/// Rewrite the `seed-*` files from [`seeds`].
#[test]
#[ignore = "writes fuzz/corpus/*/seed-*; run by hand after changing the seeds"]
fn write_seeds() {
    for (target, name, data) in seeds() {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).expect("create corpus directory");
        fs::write(dir.join(name), data).expect("write seed");
    }
}

fn h(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, n)
}

/// Hand-written starting points: (target, file name, bytes).
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let arp = arp_request(mac(1), h(1), h(2));
    let udp = udp_frame(mac(2), mac(1), h(2), h(1), 1000, 80, b"pong");
    let bcast = udp_frame(mac(9), BROADCAST, h(9), h(1), 1, 2, b"hello");
    let big = udp_frame(mac(9), BROADCAST, h(9), h(1), 1, 2, &[0u8; 1460]);
    let mut qinq = tagged(&tagged(&bcast, 100), 100);
    qinq[12..14].copy_from_slice(&[0x88, 0xa8]);
    let mut group_src = arp.clone();
    group_src[6] = 0x01;

    let with = |ctl: u8, body: &[u8]| {
        let mut v = vec![ctl];
        v.extend_from_slice(body);
        v
    };
    // Source VTEP indexes into SOURCE_VTEPS: 0 = .2, 2 = .4, 3 = .6 (allowed on VNI 300),
    // 6 = a stranger, 7 = IPv6.
    let vx = |vtep: u8, body: Vec<u8>| with(control(MODE_VXLAN, vtep, 0), &body);
    let mut batch = vec![control(MODE_VXLAN_BATCH, 0, 0)];
    for (vtep, d) in [
        (0u8, vxlan(0x08, 100, &arp)),
        (2, vxlan(0x08, 200, &udp)),
        (0, vxlan(0x00, 100, &arp)),
        (3, vxlan(0x08, 300, &arp)),
        (
            0,
            vxlan(0x08, 100, &udp_frame(mac(1), mac(2), h(1), h(2), 5, 6, b"")),
        ),
    ] {
        batch.push(vtep);
        batch.extend_from_slice(&(d.len() as u16).to_be_bytes());
        batch.extend_from_slice(&d);
    }

    let mut d = vec![
        ("vxlan-arp-vni100", vx(0, vxlan(0x08, 100, &arp))),
        ("vxlan-udp-vni200", vx(2, vxlan(0x08, 200, &udp))),
        ("vxlan-reserved-bits-set", vx(0, vxlan(0xff, 100, &arp))),
        ("vxlan-allowed-vtep-vni300", vx(3, vxlan(0x08, 300, &arp))),
        ("vxlan-denied-vtep-vni300", vx(0, vxlan(0x08, 300, &arp))),
        ("vxlan-vni400-no-flood", vx(0, vxlan(0x08, 400, &udp))),
        ("vxlan-vni500-no-bridge", vx(0, vxlan(0x08, 500, &arp))),
        ("vxlan-ipv6-vtep", vx(7, vxlan(0x08, 100, &arp))),
        ("vxlan-stranger-vtep", vx(6, vxlan(0x08, 200, &arp))),
        ("vxlan-no-i-flag", vx(0, vxlan(0x00, 100, &arp))),
        ("vxlan-vni0", vx(0, vxlan(0x08, 0, &arp))),
        ("vxlan-unjoined-vni", vx(0, vxlan(0x08, 999, &arp))),
        ("vxlan-group-src-mac", vx(0, vxlan(0x08, 100, &group_src))),
        ("vxlan-static-mac-dst", {
            let f = udp_frame(mac(1), [2, 0, 0, 0, 0, 0xfe], h(1), h(2), 1, 1, b"");
            vx(0, vxlan(0x08, 100, &f))
        }),
        ("vxlan-too-big", vx(0, vxlan(0x08, 100, &big))),
        ("vxlan-truncated-header", vx(0, vec![0x08, 0, 0])),
        ("vxlan-header-only", vx(0, vxlan(0x08, 100, &[]))),
        ("vxlan-truncated-inner", vx(0, vxlan(0x08, 100, &arp[..10]))),
        ("vxlan-empty", vec![control(MODE_VXLAN, 0, 0)]),
        ("vxlan-after-ageing", {
            with(control(MODE_VXLAN, 0, 7), &vxlan(0x08, 100, &arp))
        }),
        ("vxlan-batch", batch),
        ("trunk-tagged-vlan100", {
            with(control(MODE_TRUNK, 0, 0), &tagged(&bcast, 100))
        }),
        ("trunk-tagged-vlan300", {
            with(control(MODE_TRUNK, 0, 0), &tagged(&bcast, 300))
        }),
        ("trunk-tagged-vlan300-too-big", {
            with(control(MODE_TRUNK, 0, 0), &tagged(&big, 300))
        }),
        ("trunk-unknown-vlan", {
            with(control(MODE_TRUNK, 0, 0), &tagged(&bcast, 200))
        }),
        ("trunk-untagged", with(control(MODE_TRUNK, 0, 0), &bcast)),
        ("trunk-priority-tagged", {
            with(control(MODE_TRUNK, 0, 0), &tagged(&bcast, 0))
        }),
        ("trunk-qinq", with(control(MODE_TRUNK, 0, 0), &qinq)),
        ("trunk-truncated-tag", {
            with(control(MODE_TRUNK, 0, 0), &tagged(&bcast, 100)[..16])
        }),
        ("access-untagged", with(control(MODE_ACCESS, 0, 0), &bcast)),
        ("access-priority-tagged", {
            with(control(MODE_ACCESS, 0, 0), &tagged(&bcast, 0))
        }),
        ("access-tagged", {
            with(control(MODE_ACCESS, 0, 0), &tagged(&bcast, 300))
        }),
    ]
    .into_iter()
    .map(|(n, b)| ("vxlan_decap", format!("seed-{n}"), b))
    .collect::<Vec<_>>();

    let mut v6 = Vec::new();
    v6.extend_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    v6.extend_from_slice(&mac(3));
    v6.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 8, 17, 64]);
    v6.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
    v6.extend_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    v6.extend_from_slice(&[0x02, 0x22, 0x02, 0x23, 0, 8, 0, 0]);
    let mut tcp = udp_frame(mac(1), mac(2), h(1), h(2), 1000, 80, &[0u8; 20]);
    tcp[23] = 6;
    d.extend(
        [
            ("vxlan-header", vxlan(0x08, 100, &[0xaa, 0xbb])),
            ("vxlan-arp", vxlan(0x08, 0x12_3456, &arp)),
            ("tagged-udp", tagged(&udp, 100)),
            ("tagged-priority", tagged(&udp, 0x_e000 | 42)),
            ("udp-ipv4", udp),
            ("ipv6-udp", v6),
            ("tcp-ipv4", tcp),
            ("arp", arp.clone()),
            ("truncated-ethernet", arp[..13].to_vec()),
            ("truncated-tag", tagged(&arp, 7)[..16].to_vec()),
            ("truncated-vxlan", vec![0x08, 0, 0, 0, 0, 0, 1]),
        ]
        .into_iter()
        .map(|(n, b)| ("wire_parsers", format!("seed-{n}"), b)),
    );
    d.extend(
        router_path_seeds()
            .into_iter()
            .map(|(n, b)| ("router_path", format!("seed-{n}"), b)),
    );
    d.extend(fuzz_lb::seeds());
    d.extend(
        vnf_tests::fuzz_config::vnf_config_seeds()
            .into_iter()
            .map(|(n, b)| ("vnf_config", n, b)),
    );
    d
}

/// `router_path` input builder (the encoding is documented in `fuzz_targets::rp`).
struct Rp(Vec<u8>);

/// An IPv4 event's fields: source and destination ([`rp::ADDRS`] indexes), protocol
/// (0 UDP, 1 TCP, 2 ICMP), ports ([`rp::PORTS`] indexes), payload length index, and the
/// selectors of TTL (0: 64, 2: 1), flags (0: none, 2: DF, 4: MF) and `m` (0: all valid).
#[derive(Clone, Copy)]
struct V4 {
    src: u8,
    dst: u8,
    proto: u8,
    sport: u8,
    dport: u8,
    len: u8,
    ttl: u8,
    frag: u8,
    m: u8,
}

fn v4(src: u8, dst: u8, proto: u8, sport: u8, dport: u8) -> V4 {
    V4 {
        src,
        dst,
        proto,
        sport,
        dport,
        len: 2,
        ttl: 0,
        frag: 0,
        m: 0,
    }
}

impl Rp {
    /// A new input; `warm`: neighbours known first; `b`: start on config B.
    fn new(warm: bool, b: bool) -> Rp {
        Rp(vec![u8::from(warm) | u8::from(b) << 1])
    }

    fn ev(mut self, bytes: &[u8]) -> Rp {
        self.0.extend_from_slice(bytes);
        self
    }

    /// An IPv4 packet on ingress `ing`; `tail`: TCP flags, or the ICMP type byte and for
    /// an error the quoted packet's two selector bytes.
    fn ip(self, ing: u8, v: V4, tail: &[u8]) -> Rp {
        self.ip_op(rp::op(rp::kind::IPV4, ing), v, tail)
    }

    fn ip_op(self, op: u8, v: V4, tail: &[u8]) -> Rp {
        let s = v.src | v.ttl << 5;
        let d = v.dst | v.frag << 5;
        let p = v.proto | v.len << 4;
        let q = v.sport | v.dport << 4;
        self.ev(&[op, v.m, s, d, p, q]).ev(tail)
    }

    fn udp(self, ing: u8, src: u8, dst: u8, sport: u8, dport: u8) -> Rp {
        self.ip(ing, v4(src, dst, 0, sport, dport), &[])
    }

    fn tcp(self, ing: u8, src: u8, dst: u8, sport: u8, dport: u8, flags: u8) -> Rp {
        self.ip(ing, v4(src, dst, 1, sport, dport), &[flags])
    }

    fn echo(self, ing: u8, src: u8, dst: u8) -> Rp {
        self.ip(ing, v4(src, dst, 2, port::EPHEMERAL, 0), &[0])
    }

    /// An ARP request (broadcast) from `spa` for `tpa`.
    fn arp_request(self, ing: u8, spa: u8, tpa: u8) -> Rp {
        self.ev(&[rp::op(rp::kind::ARP, ing), 0, spa, tpa])
    }

    /// An ARP reply from `spa` to the router's address `tpa`.
    fn arp_reply(self, ing: u8, spa: u8, tpa: u8) -> Rp {
        self.ev(&[rp::op(rp::kind::ARP, ing), 1 | 1 << 2, spa, tpa])
    }

    fn clock(self, step: u8) -> Rp {
        self.ev(&[rp::op(rp::kind::CLOCK, step)])
    }

    /// Reload: 0 the other config, 1 A, 2 B, 3 the same.
    fn reload(self, to: u8) -> Rp {
        self.ev(&[rp::op(rp::kind::RELOAD, to)])
    }
}

/// Hand-written `router_path` inputs: each path of the router once.
fn router_path_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use ingress::*;
    use rp::addr::*;
    let web_to_db = || v4(WEB_HOST, DB_HOST, 0, port::EPHEMERAL, port::DNS);
    vec![
        ("empty-warm", Rp::new(true, false)),
        ("empty-config-b", Rp::new(true, true)),
        (
            "udp-web-to-db",
            Rp::new(true, false).udp(WEB, WEB_HOST, DB_HOST, port::EPHEMERAL, port::DNS),
        ),
        (
            "held-until-arp-reply",
            Rp::new(false, false)
                .udp(WEB, WEB_HOST, DB_HOST, port::EPHEMERAL, port::DNS)
                .arp_reply(DB, DB_HOST, R_DB)
                .udp(WEB, WEB_HOST, DB_HOST, port::EPHEMERAL, port::DNS),
        ),
        (
            "arp-never-answered",
            Rp::new(false, false)
                .udp(WEB, WEB_HOST, DB_HOST, port::EPHEMERAL, port::DNS)
                .clock(0)
                .clock(0)
                .clock(1)
                .clock(3),
        ),
        (
            "masquerade-and-reply",
            Rp::new(true, false)
                .udp(WEB, WEB_HOST, INTERNET, port::EPHEMERAL, port::HTTP)
                .udp(EXT, INTERNET, POOL, port::HTTP, port::POOL0)
                .udp(EXT, INTERNET, POOL2, port::HTTP, port::POOL0),
        ),
        (
            "masquerade-tcp-lifecycle",
            Rp::new(true, false)
                .tcp(WEB, WEB_HOST, INTERNET, port::EPHEMERAL, port::HTTP, 0x02)
                .tcp(EXT, INTERNET, POOL, port::HTTP, port::POOL0, 0x12)
                .tcp(EXT, INTERNET, POOL2, port::HTTP, port::POOL0, 0x12)
                .tcp(WEB, WEB_HOST, INTERNET, port::EPHEMERAL, port::HTTP, 0x10)
                .tcp(WEB, WEB_HOST, INTERNET, port::EPHEMERAL, port::HTTP, 0x11)
                .tcp(EXT, INTERNET, POOL, port::HTTP, port::POOL0, 0x11)
                .clock(4),
        ),
        ("pool-exhausted", {
            let mut r = Rp::new(true, false);
            for sp in 0..12 {
                r = r.udp(WEB, WEB_HOST, INTERNET, sp, port::HTTP);
            }
            r.clock(5)
                .udp(WEB, WEB_HOST, INTERNET, port::SSH, port::HTTP)
        }),
        (
            "port-forward-tcp",
            Rp::new(true, false)
                .tcp(EXT, INTERNET, POOL, port::HTTP, port::FWD_TCP, 0x02)
                .arp_reply(WEB, WEB_FWD, R_WEB)
                .tcp(WEB, WEB_FWD, INTERNET, port::SSH, port::HTTP, 0x12),
        ),
        (
            "port-forward-udp-irb",
            Rp::new(true, false)
                .udp(EXT, INTERNET, POOL2, port::DNS, port::FWD_UDP)
                .udp(LAN_A, LAN_HOST, INTERNET, port::DNS, port::DNS),
        ),
        (
            "floating-in-and-out",
            Rp::new(true, false)
                .udp(EXT, INTERNET, FLOATING, port::HTTP, port::EPHEMERAL)
                .udp(DB, DB_HOST, INTERNET, port::EPHEMERAL, port::HTTP)
                .echo(DB, DB_HOST, INTERNET)
                .echo(EXT, INTERNET, FLOATING),
        ),
        (
            "hairpin",
            Rp::new(true, false)
                .udp(WEB, WEB_HOST, FLOATING, port::EPHEMERAL, port::HTTP)
                .udp(DB, DB_HOST, POOL, port::HTTP, port::POOL0)
                .udp(DB, DB_HOST, POOL2, port::HTTP, port::POOL0)
                .tcp(WEB, WEB_HOST, POOL, port::EPHEMERAL, port::FWD_TCP, 0x02),
        ),
        (
            "echo-to-router",
            Rp::new(true, false)
                .echo(WEB, WEB_HOST, R_WEB)
                .echo(DB, DB_HOST, R_DB)
                .echo(EXT, EXT_GW, POOL)
                .echo(LAN_A, LAN_HOST, R_LAN),
        ),
        ("echo-big", {
            let mut v = v4(DB_HOST, R_DB, 2, port::EPHEMERAL, 0);
            v.len = 9;
            Rp::new(true, false).ip(DB, v, &[0])
        }),
        ("ttl-1-and-0", {
            let mut v = web_to_db();
            v.ttl = 2;
            let mut w = web_to_db();
            w.ttl = 4;
            Rp::new(true, false).ip(WEB, v, &[]).ip(WEB, w, &[])
        }),
        ("too-big-df", {
            let mut v = web_to_db();
            v.len = 12;
            v.frag = 2;
            Rp::new(true, false).ip(WEB, v, &[])
        }),
        ("too-big-no-df", {
            let mut v = web_to_db();
            v.len = 12;
            Rp::new(true, false).ip(WEB, v, &[])
        }),
        ("fragments", {
            let mut v = v4(WEB_HOST, INTERNET, 0, port::EPHEMERAL, port::HTTP);
            v.frag = 4;
            let mut w = v;
            w.frag = 5;
            Rp::new(true, false).ip(WEB, v, &[]).ip(WEB, w, &[])
        }),
        (
            "refusing-routes",
            Rp::new(true, false)
                .udp(WEB, WEB_HOST, PROHIBIT, port::EPHEMERAL, port::DNS)
                .udp(WEB, WEB_HOST, BLACKHOLE, port::EPHEMERAL, port::DNS)
                .udp(WEB, WEB_HOST, UNREACHABLE, port::EPHEMERAL, port::DNS),
        ),
        (
            "ecmp",
            Rp::new(true, false)
                .udp(EXT, INTERNET, ECMP, port::HTTP, port::EPHEMERAL)
                .udp(EXT, INTERNET, ECMP, port::HTTP, port::EPHEMERAL2)
                .udp(WEB, WEB_HOST, ECMP_LAN, port::EPHEMERAL, port::DNS),
        ),
        (
            "irb-routed-and-bridged",
            Rp::new(true, false)
                .udp(LAN_A, LAN_HOST, DB_HOST, port::DNS, port::DNS)
                .udp(DB, DB_HOST, LAN_HOST, port::DNS, port::DNS)
                .udp(LAN_B, LAN_GW, LAN_HOST, port::DNS, port::DNS)
                .ip(
                    LAN_A,
                    V4 {
                        m: 2,
                        ..v4(LAN_HOST, LAN_GW, 0, 0, 0)
                    },
                    &[],
                )
                .arp_request(LAN_A, LAN_HOST, LAN_GW)
                .arp_request(LAN_B, LAN_GW, R_LAN),
        ),
        (
            "icmp-error-about-nat-flow",
            Rp::new(true, false)
                .udp(WEB, WEB_HOST, INTERNET, port::EPHEMERAL, port::HTTP)
                // Type 3 from the gateway to the pool address, quoting pool:20000 -> internet:80.
                .ip(
                    EXT,
                    v4(EXT_GW, POOL, 2, port::POOL0, port::HTTP),
                    &[3, POOL, INTERNET],
                )
                .ip(
                    EXT,
                    v4(EXT_GW, POOL2, 2, port::POOL0, port::HTTP),
                    &[3, POOL2, INTERNET],
                ),
        ),
        (
            "reload-both-ways",
            Rp::new(true, false)
                .udp(WEB, WEB_HOST, INTERNET, port::EPHEMERAL, port::HTTP)
                .udp(EXT, INTERNET, FLOATING, port::HTTP, port::EPHEMERAL)
                .reload(0)
                .udp(WEB, WEB_HOST, INTERNET, port::EPHEMERAL, port::HTTP)
                .udp(EXT, INTERNET, POOL, port::HTTP, port::POOL0)
                .udp(LAN_A, LAN_HOST, DB_HOST, port::DNS, port::DNS)
                .clock(4)
                .reload(0)
                .reload(3)
                .udp(WEB, WEB_HOST, DB_HOST, port::EPHEMERAL, port::DNS),
        ),
        (
            "batch",
            Rp::new(false, false)
                .ip_op(rp::op(0, WEB) | rp::BATCHED, web_to_db(), &[])
                .ev(&[
                    rp::op(rp::kind::ARP, DB) | rp::BATCHED,
                    1 | 1 << 2,
                    DB_HOST,
                    R_DB,
                ])
                .ip_op(
                    rp::op(0, LAN_A) | rp::BATCHED,
                    v4(LAN_HOST, LAN_GW, 0, 0, 0),
                    &[],
                )
                .udp(WEB, WEB_HOST, DB_HOST, port::EPHEMERAL, port::DNS),
        ),
        ("arp-table-fill", {
            let mut r = Rp::new(false, false);
            for a in 0..16 {
                r = r.arp_request(WEB, a, R_WEB);
            }
            r.arp_request(EXT, EXT_GW, POOL).clock(5)
        }),
        (
            "raw",
            Rp::new(true, false)
                .ev(&[rp::op(rp::kind::RAW_FRAME, WEB), 3, 28])
                .ev(&[
                    0x45, 0, 0, 28, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 1, 5, 10, 0, 2, 5,
                ])
                .ev(&[0x0f, 0xa0, 0, 53, 0, 8, 0, 0])
                .ev(&[
                    rp::op(rp::kind::RAW_VXLAN, WEB),
                    10,
                    0x08,
                    0,
                    0,
                    0,
                    0,
                    0,
                    100,
                    0,
                    1,
                    2,
                ])
                .ev(&[rp::op(rp::kind::RAW_FRAME, SPARE), 0, 4, 1, 2, 3, 4])
                .udp(UNJOINED, WEB_HOST, DB_HOST, 0, 0),
        ),
    ]
    .into_iter()
    .map(|(n, r)| (n, r.0))
    .collect()
}

#[test]
fn vnf_config_corpus_replays() {
    let inputs = corpus("vnf_config");
    let failed: Vec<String> = inputs
        .iter()
        .filter_map(|(name, data)| {
            run_named("vnf_config", name, data, || {
                vnf_tests::fuzz_config::vnf_config(data)
            })
        })
        .collect();
    report("vnf_config", inputs.len(), &failed);
}

/// Every example config is a seed that compiles (so the seeds exercise the compilers, not
/// only the parsers).
#[test]
fn vnf_config_seeds_compile() {
    let seeds = vnf_tests::fuzz_config::vnf_config_seeds();
    assert!(seeds.len() >= 10, "{} seeds", seeds.len());
    for (name, data) in &seeds {
        vnf_tests::fuzz_config::vnf_config(data);
        let text = std::str::from_utf8(&data[1..]).expect("utf-8");
        let ok = match data[0] {
            0 => serde_saphyr::from_str(text).ok().is_some_and(|r| {
                <vnf_router::RouterApp as overlay_io::daemon::VnfApp>::compile(&r).is_ok()
            }),
            1 => serde_saphyr::from_str(text).ok().is_some_and(|r| {
                <vnf_firewall::FirewallApp as overlay_io::daemon::VnfApp>::compile(&r).is_ok()
            }),
            _ => serde_saphyr::from_str(text).ok().is_some_and(|r| {
                <vnf_lb::LbApp as overlay_io::daemon::VnfApp>::compile(&r).is_ok()
            }),
        };
        assert!(ok, "seed {name} does not compile");
    }
}
