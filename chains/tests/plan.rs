//! `vnfctl plan`: golden plans of the examples (deterministic), and `validate`'s messages
//! for each class of error, at their line and column.
//!
//! Refresh the golden files after an intended change with
//! `UPDATE_GOLDEN=1 cargo test -p chains --test plan` and review the diff.

use std::path::{Path, PathBuf};

use chains::plan::{self, Options};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .expect("examples/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("chain-") && n.ends_with(".yaml"))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn examples_plan_as_the_golden_files_say() {
    let examples = examples();
    assert!(examples.len() >= 3, "chain examples: {examples:?}");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut mismatches = Vec::new();
    for file in examples {
        let text = std::fs::read_to_string(&file).expect("read");
        // The plan must not depend on where the file is.
        let name = Path::new("examples").join(file.file_name().expect("name"));
        let plan = plan::plan(&name, &text, &Options::default())
            .unwrap_or_else(|d| panic!("{}: {d:#?}", file.display()));
        let stem = file
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        let dir = root().join("chains/tests/golden").join(&stem);
        if update {
            std::fs::create_dir_all(&dir).expect("mkdir");
        }
        for (fname, body) in plan.files() {
            let golden = dir.join(&fname);
            if update {
                std::fs::write(&golden, &body).expect("write golden");
                continue;
            }
            match std::fs::read_to_string(&golden) {
                Ok(expected) if expected == body => {}
                Ok(_) => mismatches.push(format!("{}: differs", golden.display())),
                Err(_) => mismatches.push(format!("{}: missing", golden.display())),
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "plans differ from the golden files (UPDATE_GOLDEN=1 to refresh, then review):\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn planning_twice_gives_the_same_plan() {
    for file in examples() {
        let text = std::fs::read_to_string(&file).expect("read");
        let a = plan::plan(&file, &text, &Options::default())
            .expect("plan")
            .files();
        let b = plan::plan(&file, &text, &Options::default())
            .expect("plan")
            .files();
        assert_eq!(a, b, "{}", file.display());
    }
}

#[test]
fn demo_plan_steers_traffic_through_every_hop() {
    let file = root().join("examples/chain-demo.yaml");
    let text = std::fs::read_to_string(&file).expect("read");
    let plan = plan::plan(&file, &text, &Options::default()).expect("plan");
    let names: Vec<&str> = plan
        .manifest
        .instances
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    assert_eq!(names, ["edge", "fw", "lb"]);
    let config = |name: &str| {
        plan.files()
            .into_iter()
            .find(|(f, _)| f == &format!("{name}.yaml"))
            .map(|(_, t)| t)
            .expect("config")
    };
    // The router sends the web subnet and the VIP to the firewall's transit address, the
    // firewall to the LB's, and the LB sends everything back to the firewall.
    let edge = config("edge");
    assert!(
        edge.contains("prefix: 10.0.9.10/32\n  via:\n  - \"100.64.0.2\""),
        "{edge}"
    );
    assert!(
        edge.contains("prefix: 10.0.1.0/24\n  via:\n  - \"100.64.0.2\""),
        "{edge}"
    );
    let fw = config("fw");
    assert!(
        fw.contains("prefix: 10.0.9.10/32\n  via:\n  - \"100.64.0.6\""),
        "{fw}"
    );
    assert!(
        fw.contains("prefix: 0.0.0.0/0\n  via:\n  - \"100.64.0.1\""),
        "{fw}"
    );
    let lb = config("lb");
    assert!(
        lb.contains("prefix: 0.0.0.0/0\n  via:\n  - \"100.64.0.5\""),
        "{lb}"
    );
    // Transit links: one VNI each, only the peer's VTEP floods and may send.
    assert_eq!(plan.transit_links.len(), 2);
    assert_eq!(plan.transit_links[0].vni, 16_000_000);
    assert!(fw.contains("allowed_vteps:\n  - \"127.0.0.21\""), "{fw}");
    // Every instance is scraped.
    for i in &plan.manifest.instances {
        assert!(plan.prometheus.contains(&format!("\"{}\"", i.admin)));
        assert!(plan.prometheus.contains(&format!("function: {}", i.name)));
    }
}

/// Validate `yaml` and return its diagnostics as printed, `FILE:LINE:COLUMN: ...`.
fn problems(yaml: &str) -> Vec<String> {
    match plan::plan(Path::new("t.yaml"), yaml, &Options::default()) {
        Ok(_) => Vec::new(),
        Err(d) => d.iter().map(ToString::to_string).collect(),
    }
}

/// `LINE:COLUMN` of the `nth` occurrence of `text` in `yaml` (the value a message must
/// point at).
fn at(yaml: &str, text: &str, nth: usize) -> String {
    let offset = yaml
        .match_indices(text)
        .nth(nth)
        .unwrap_or_else(|| panic!("`{text}` not in:\n{yaml}"))
        .0;
    let before = &yaml[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("{line}:{column}")
}

/// A problem `needle` reported at the first occurrence of `value` in `yaml`.
fn assert_at(yaml: &str, value: &str, needle: &str) {
    assert_problem(yaml, &at(yaml, value, 0), needle);
}

fn assert_problem(yaml: &str, at: &str, needle: &str) {
    let found = problems(yaml);
    assert!(
        found
            .iter()
            .any(|p| p.starts_with(&format!("t.yaml:{at}: ")) && p.contains(needle)),
        "expected `t.yaml:{at}: ...{needle}...` in:\n{}",
        found.join("\n")
    );
}

const GOOD: &str = "\
tenant: t
transit: {vnis: 9000-9009}
networks:
  - {name: out, vni: 300, vteps: [127.0.0.50], subnet: 192.0.2.0/24, gateway: 192.0.2.1}
  - {name: web, vni: 100, vteps: [127.0.0.31], subnet: 10.0.1.0/24}
functions:
  - {name: r, kind: router, host: 127.0.0.21, addresses: {out: 192.0.2.2}}
  - name: lb
    kind: lb
    host: 127.0.0.23
    addresses: {web: 10.0.1.1}
    pools: [{name: p, backends: [{name: a, address: \"10.0.1.11:80\"}]}]
    services: [{name: s, vip: 10.0.9.10, port: 80, protocol: tcp, pool: p}]
chains:
  - {name: c, from: out, to: web, hops: [r, lb]}
";

#[test]
fn the_base_case_is_valid() {
    assert_eq!(problems(GOOD), Vec::<String>::new());
}

#[test]
fn syntax_errors_are_located() {
    assert_problem("tenant: t\nnetworks: [a, b\n", "2:11", "unclosed bracket");
    let found = problems("tenant: t\n  bad: indentation\n");
    assert!(found[0].starts_with("t.yaml:2:"), "{found:?}");
}

#[test]
fn unknown_fields_and_wrong_types_are_located_all_at_once() {
    let yaml = GOOD
        .replace("subnet: 10.0.1.0/24}", "subnet: 10.0.1.0/24, colour: blue}")
        .replace("host: 127.0.0.21,", "host: not-an-address,")
        .replace("port: 80, protocol: tcp", "port: 99999, protocol: tcp");
    let found = problems(&yaml);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert_at(&yaml, "blue", "unknown field `colour`");
    assert_at(&yaml, "not-an-address", "invalid IPv4 address syntax");
    assert_at(&yaml, "99999", "invalid value: integer `99999`");
    // Several in one item: each is reported.
    let y = GOOD.replace(
        "{name: web, vni: 100, vteps: [127.0.0.31], subnet: 10.0.1.0/24}",
        "{name: web, vni: x, vteps: [127.0.0.31], subnet: 10.0.1.0/24, colour: blue, mtu: big}",
    );
    assert_eq!(problems(&y).len(), 3, "{:#?}", problems(&y));
    assert_at(&y, "x,", "invalid type: string \"x\", expected u64");
    assert_at(&y, "blue", "unknown field `colour`");
    assert_at(&y, "big", "invalid type: string \"big\", expected u32");
    let extra = "tenant: t\nnetworks: []\nfunctions: []\nchains: []\nextra: 1\n";
    assert_at(extra, "1\n", "unknown field `extra`");
}

#[test]
fn vni_errors() {
    let y = GOOD.replace("vni: 100,", "vni: 16777216,");
    assert_at(&y, "16777216", "VNI 16777216 is outside 1..=16777215");
    let y = GOOD.replace("vni: 100,", "vni: 0,");
    assert_at(&y, "0, vteps: [127.0.0.31]", "VNI 0 is outside");
    let y = GOOD.replace("vni: 100,", "vni: 300,");
    assert_problem(&y, &at(&y, "300", 1), "VNI 300 is already network `out`'s");
    let y = GOOD.replace("vni: 100,", "vni: 9003,");
    assert_at(&y, "9003", "inside the transit pool 9000-9009");
}

#[test]
fn unknown_names_are_errors() {
    let y = GOOD.replace("to: web,", "to: wbe,");
    assert_at(&y, "wbe", "unknown network `wbe`");
    let y = GOOD.replace("hops: [r, lb]", "hops: [r, lbb]");
    assert_at(&y, "lbb", "unknown function `lbb`");
    let y = GOOD.replace("hops: [r, lb]", "hops: [r, web]");
    assert_problem(
        &y,
        &at(&y, "web", 3),
        "`web` is a network: hops are functions",
    );
    let y = GOOD.replace("from: out,", "from: r,");
    assert_at(&y, "r, to", "`r` is a function");
    let y = GOOD.replace("{out: 192.0.2.2}", "{outt: 192.0.2.2}");
    assert_at(&y, "192.0.2.2}", "unknown network `outt`");
}

#[test]
fn address_errors() {
    let y = GOOD.replace("{out: 192.0.2.2}", "{out: 192.0.3.2}");
    assert_at(
        &y,
        "192.0.3.2",
        "192.0.3.2 is outside network `out`'s subnet 192.0.2.0/24",
    );
    let y = GOOD.replace("{out: 192.0.2.2}", "{out: 192.0.2.1}");
    assert_problem(
        &y,
        &at(&y, "192.0.2.1", 1),
        "192.0.2.1 is already network `out`'s gateway",
    );
    let y = GOOD.replace("{out: 192.0.2.2}", "{out: 192.0.2.255}");
    assert_at(&y, "192.0.2.255", "broadcast address");
    let y = GOOD.replace("gateway: 192.0.2.1}", "gateway: 10.9.9.9}");
    assert_at(&y, "10.9.9.9", "gateway 10.9.9.9 is outside");
    let y = GOOD.replace(", addresses: {out: 192.0.2.2}}", "}");
    assert_at(
        &y,
        "{name: r",
        "`r` is a routed hop on network `out` and needs an address there",
    );
    let y = GOOD.replace("host: 127.0.0.23", "host: 127.0.0.21");
    assert_problem(
        &y,
        &at(&y, "127.0.0.21", 1),
        "host 127.0.0.21 is already function `r`'s",
    );
    let y = GOOD.replace("host: 127.0.0.23", "host: 127.0.0.31");
    assert_problem(&y, &at(&y, "127.0.0.31", 1), "is a VTEP of network `web`");
}

#[test]
fn overlapping_subnets_are_errors() {
    let y = GOOD
        .replace("subnet: 10.0.1.0/24}", "subnet: 192.0.2.128/25}")
        .replace("{web: 10.0.1.1}", "{web: 192.0.2.129}")
        .replace("10.0.1.11:80", "192.0.2.130:80");
    assert_at(
        &y,
        "192.0.2.128/25",
        "overlaps subnet 192.0.2.0/24 of `out`",
    );
    let y = GOOD.replace("vnis: 9000-9009}", "vnis: 9000-9009, prefix: 10.0.0.0/16}");
    assert_at(&y, "10.0.1.0/24", "overlaps the transit prefix");
    let y = GOOD.replace("subnet: 10.0.1.0/24}", "subnet: 10.0.1.1/24}");
    assert_at(&y, "10.0.1.1/24", "host bits set");
}

#[test]
fn mtu_must_fit_the_underlay() {
    let y = GOOD.replace("subnet: 10.0.1.0/24}", "subnet: 10.0.1.0/24, mtu: 1500}");
    assert_at(
        &y,
        "1500",
        "MTU 1500 does not fit the underlay's 1500 with 50 bytes of VXLAN: at most 1450",
    );
    let jumbo = y.replace("tenant: t\n", "tenant: t\nunderlay: {mtu: 1550}\n");
    assert_eq!(problems(&jumbo), Vec::<String>::new());
}

#[test]
fn transparent_hops_join_one_subnet() {
    let yaml = GOOD
        .replace(
            "  - {name: r, kind: router",
            "  - {name: bump, kind: firewall, mode: transparent, host: 127.0.0.24}\n  - {name: r, kind: router",
        )
        .replace("chains:\n", "chains:\n  - {name: wire, from: out, to: web, hops: [bump]}\n");
    assert_problem(
        &yaml,
        &at(&yaml, "bump", 1),
        "only transparent hops between networks `out` (192.0.2.0/24) and `web` (10.0.1.0/24)",
    );
}

#[test]
fn transit_pool_is_needed_for_adjacent_functions() {
    let yaml = GOOD.replace("transit: {vnis: 9000-9009}\n", "");
    assert_at(&yaml, "lb]", "are adjacent hops and need a transit segment");
    let y = GOOD.replace("9000-9009", "9009-9000");
    assert_at(&y, "9009-9000", "write FIRST-LAST");
}

#[test]
fn the_vnfs_own_checks_are_reported_at_the_chain_file_lines() {
    // vnf-lb refuses a pool a service names but nobody defines; the complaint lands on
    // that service's line in the chain file.
    let yaml = GOOD.replace("protocol: tcp, pool: p}", "protocol: tcp, pool: nope}");
    let found = problems(&yaml);
    let line = at(&yaml, "nope", 0);
    let line = line.split(':').next().expect("line");
    assert!(
        found
            .iter()
            .any(|p| p.starts_with(&format!("t.yaml:{line}:")) && p.contains("nope")),
        "{found:#?}"
    );
}

#[test]
fn chain_structure_errors() {
    let y = GOOD.replace("hops: [r, lb]", "hops: []");
    assert_at(&y, "[]}", "at least one hop");
    let y = GOOD.replace("hops: [r, lb]", "hops: [r, r]");
    assert_problem(&y, &at(&y, "r]", 0), "already a hop of this chain");
    let y = GOOD.replace("to: web,", "to: out,");
    assert_at(&y, "out, hops", "not back to `out`");
    let y = GOOD.replace("kind: router", "kind: switch");
    assert_at(&y, "switch", "unknown kind `switch`");
    assert_problem("tenant: t\n", "1:1", "missing field `networks`");
}
