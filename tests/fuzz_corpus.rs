//! Replays the fuzz corpora (`fuzz/corpus/<target>/`, kept small and minimised by
//! `scripts/fuzz`) through the same target bodies the fuzzer runs, so that every input that
//! once found new coverage, and every crash ever found (`crash-*`), stays a regression test.
//!
//! The hand-written seeds (`seed-*`) are built by [`seeds`]; after changing them, rewrite
//! the files with `cargo test -p vnf-tests --test fuzz_corpus -- --ignored write_seeds`.

use std::fs;
use std::net::Ipv4Addr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

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
fn seeds_pass() {
    let failed: Vec<String> = seeds()
        .into_iter()
        .filter_map(|(target, name, data)| {
            run_named(target, &name, &data, || match target {
                "vxlan_decap" => {
                    fuzz_targets::vxlan_decap_on(&mut fuzz_targets::new_router_net(), &data)
                }
                _ => fuzz_targets::wire_parsers(&data),
            })
        })
        .collect();
    assert!(failed.is_empty(), "seeds failed: {failed:?}");
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
    d
}
