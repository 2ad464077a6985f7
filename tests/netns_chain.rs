//! End to end: one chain file, planned and run by `vnfctl`, between a client on an 802.1Q
//! VLAN behind Open vSwitch and nginx servers on kernel VXLAN hypervisors.
//!
//! ```text
//!  ext: 192.0.2.50/24 (eth0)           the client: curl, ping, wrk
//!   | veth
//!  ovs: OVS bridge br0, userspace datapath (netdev): p1 access tag=100, p2 trunk trunks=100
//!   | veth (802.1Q VID 100)
//!  vnf: trunk0                         one `vnfctl up` supervisor, three instances:
//!       edge (vnf-router, 198.18.0.1)  outside = trunk0 VLAN 100, 192.0.2.2;
//!                                      floating 192.0.2.10 <-> VIP 10.0.9.10
//!       fw   (vnf-firewall, .2)        inbound: tcp 80 and ICMP echo, default drop
//!       lb   (vnf-lb, .3)              VIP 10.0.9.10: 80 http -> pool web, 8080 tcp -> alt
//!       ul0 198.18.0.1-3/24            (transit VNIs 16000000-16000099 between them)
//!   | veth
//!  uls: Linux bridge br0, the underlay 198.18.0.0/24
//!   |                    |                    |
//!  hv1 198.18.0.11     hv2 .12              hv3 .13      kernel vxlan vx0, VNI 5001,
//!  web1 10.0.1.11      web2 10.0.1.12       web3 10.0.1.13   flooding to the lb (.3);
//!  nginx :80 :8080     nginx :80 :8080      nginx (in the pool only after an apply)
//! ```
//!
//! The chain `outside -> edge -> fw -> lb -> web` is one YAML file in the test's work
//! directory; every instance config comes from `vnfctl plan`/`up`, none is written by hand.
//! All three instances share the namespace `vnf`, each on its own underlay address, so the
//! transit VXLAN between them stays inside it and only the `web` VNI crosses the underlay.
//!
//! The tests: `chain_file_validates_and_plans` (no root: validate, plan, promtool);
//! `chain_serves_vlan_clients_and_is_scraped` (traffic, the firewall's deny, Prometheus,
//! `status`, `down`); `chain_apply_under_load` (an apply while a download and a request
//! loop run, an invalid apply, an apply an instance refuses); and
//! `chain_instances_restart_after_sigkill` (each instance SIGKILLed under a request loop;
//! the outage is printed).
//!
//! Checksums: OVS (AF_PACKET) and the VNFs relay frames in userspace, so senders compute
//! TCP checksums in software (`ethtool -K ... tx off` on the client's and hypervisors'
//! interfaces), as in `ovs_vlan.rs` and `netns_lb.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vnf_tests::netns::{
    Family, Netns, Ovs, Proc, Switch, WorkDir, bin, have_root, have_tool, hypervisor, ping,
    quiet_ipv6, serial, sh, underlay_node, underlay_switch, veth, wait_for,
};

/// The chain's public address (the router's floating address for the VIP).
const FLOATING: &str = "192.0.2.10";
/// The client's address on the external VLAN.
const CLIENT: &str = "192.0.2.50";
/// The size of `/big`, the long download.
const BIG_BYTES: u64 = 24 * 1024 * 1024;
/// The download's rate limit: `/big` takes about 6 s.
const BIG_RATE: &str = "4M";
/// Prometheus's listener inside the `vnf` namespace.
const PROMETHEUS: &str = "127.0.0.1:9090";
/// The instances, in plan order, with their admin endpoints.
const INSTANCES: [(&str, &str); 3] = [
    ("edge", "198.18.0.1:9100"),
    ("fw", "198.18.0.2:9100"),
    ("lb", "198.18.0.3:9100"),
];
/// The web servers: name, address, underlay node.
const WEBS: [(&str, &str, u8); 3] = [
    ("web1", "10.0.1.11", 11),
    ("web2", "10.0.1.12", 12),
    ("web3", "10.0.1.13", 13),
];

/// What differs between the versions of the chain file.
#[derive(Debug, Clone, Copy, Default)]
struct Edits {
    /// web3 in both pools and hv3 among the web network's VTEPs.
    web3: bool,
    /// The firewall accepts tcp 8080 inbound.
    open_8080: bool,
    /// Invalid: the web network's VNI is 0.
    vni_zero: bool,
    /// Invalid (for vnf-lb's own check): the 8080 service's pool does not exist.
    no_such_pool: bool,
    /// Valid, but refused by vnf-lb's reload: an HTTPS service with certificate files
    /// that do not exist (and, so that there is something to roll back, a firewall rule
    /// for tcp 443).
    bad_tls: bool,
}

/// The chain file.
fn chain_yaml(e: Edits) -> String {
    let vteps = if e.web3 {
        "198.18.0.11, 198.18.0.12, 198.18.0.13"
    } else {
        "198.18.0.11, 198.18.0.12"
    };
    let vni = if e.vni_zero { 0 } else { 5001 };
    let mut fw_rules = String::from(
        "        - {name: http, protocol: tcp, dst_ports: [80], action: accept}\n\
         \x20       - {name: ping, protocol: icmp, icmp_type: 8, action: accept}\n",
    );
    if e.open_8080 {
        fw_rules
            .push_str("        - {name: alt, protocol: tcp, dst_ports: [8080], action: accept}\n");
    }
    if e.bad_tls {
        fw_rules
            .push_str("        - {name: https, protocol: tcp, dst_ports: [443], action: accept}\n");
    }
    let backends = |port: u16| {
        let n = if e.web3 { 3 } else { 2 };
        WEBS[..n]
            .iter()
            .map(|(name, addr, _)| {
                format!("          - {{name: {name}, address: \"{addr}:{port}\"}}\n")
            })
            .collect::<String>()
    };
    let alt_pool = if e.no_such_pool { "nosuch" } else { "alt" };
    let mut services = format!(
        "      - {{name: www, vip: 10.0.9.10, port: 80, protocol: http, pool: web}}\n\
         \x20     - {{name: alt, vip: 10.0.9.10, port: 8080, protocol: tcp, pool: {alt_pool}}}\n"
    );
    if e.bad_tls {
        services.push_str(
            "      - {name: secure, vip: 10.0.9.10, port: 443, protocol: https, pool: web}\n\
             \x20   tls: {certificates: [{cert: /nonexistent.pem, key: /nonexistent.key}]}\n",
        );
    }
    let health = "{check: http, path: /healthz, interval: 500ms, timeout: 300ms, rise: 1, fall: 2}";
    format!(
        "# The netns_chain test's tenant: external VLAN 100 -> edge -> fw -> lb -> web.\n\
         tenant: shop\n\
         transit:\n\
         \x20 vnis: 16000000-16000099\n\
         networks:\n\
         \x20 - name: outside\n\
         \x20   external: {{trunk: trunk0, vlan: 100}}\n\
         \x20   subnet: 192.0.2.0/24\n\
         \x20   gateway: 192.0.2.1\n\
         \x20 - name: web\n\
         \x20   vni: {vni}\n\
         \x20   vteps: [{vteps}]\n\
         \x20   subnet: 10.0.1.0/24\n\
         functions:\n\
         \x20 - name: edge\n\
         \x20   kind: router\n\
         \x20   host: 198.18.0.1\n\
         \x20   addresses: {{outside: 192.0.2.2}}\n\
         \x20   nat:\n\
         \x20     masquerade: [{{from: [web], to: outside}}]\n\
         \x20     floating: [{{network: outside, external: {FLOATING}, internal: 10.0.9.10}}]\n\
         \x20 - name: fw\n\
         \x20   kind: firewall\n\
         \x20   host: 198.18.0.2\n\
         \x20   inbound:\n\
         \x20     default: drop\n\
         \x20     rules:\n\
         {fw_rules}\
         \x20   outbound: {{default: accept}}\n\
         \x20 - name: lb\n\
         \x20   kind: lb\n\
         \x20   host: 198.18.0.3\n\
         \x20   addresses: {{web: 10.0.1.1}}\n\
         \x20   pools:\n\
         \x20     - name: web\n\
         \x20       health: {health}\n\
         \x20       backends:\n\
         {}\
         \x20     - name: alt\n\
         \x20       health: {health}\n\
         \x20       backends:\n\
         {}\
         \x20   services:\n\
         {services}\
         chains:\n\
         \x20 - name: web-in\n\
         \x20   from: outside\n\
         \x20   to: web\n\
         \x20   hops: [edge, fw, lb]\n",
        backends(80),
        backends(8080),
    )
}

/// The 1-based line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no `{needle}` in:\n{text}"))
        + 1
}

/// Stdout and stderr of a finished command, together.
fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Seconds since the Unix epoch, as the request loops' `$EPOCHREALTIME` counts them.
fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Every file of a directory by name (the plan directory: to prove nothing changed).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect()
}

/// One instance in `status.json`.
#[derive(Debug, Clone, PartialEq)]
struct InstanceState {
    pid: Option<u32>,
    state: String,
    restarts: u32,
}

/// The instances of a `status.json` by name (a small, tolerant reader of the
/// supervisor's JSON: one object per instance, each starting with its `name`).
fn parse_status(json: &str) -> BTreeMap<String, InstanceState> {
    let flat: String = json.chars().filter(|c| !c.is_whitespace()).collect();
    let field = |obj: &str, key: &str| -> Option<String> {
        let at = obj.find(&format!("\"{key}\":"))? + key.len() + 3;
        let rest = &obj[at..];
        let v = if let Some(s) = rest.strip_prefix('"') {
            &s[..s.find('"')?]
        } else {
            &rest[..rest.find([',', '}']).unwrap_or(rest.len())]
        };
        Some(v.to_string())
    };
    let Some(at) = flat.find("\"instances\":[") else {
        return BTreeMap::new();
    };
    flat[at..]
        .split("{\"name\":")
        .skip(1)
        .filter_map(|obj| {
            let obj = format!("{{\"name\":{obj}");
            let name = field(&obj, "name")?;
            Some((
                name,
                InstanceState {
                    pid: field(&obj, "pid").and_then(|p| p.parse().ok()),
                    state: field(&obj, "state").unwrap_or_default(),
                    restarts: field(&obj, "restarts")
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(0),
                },
            ))
        })
        .collect()
}

/// The sum of the samples of metric `name` whose labels contain every `filter` string.
fn metric_sum(metrics: &str, name: &str, filter: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter(|l| filter.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// `(labels of the series, value)` of every result of a Prometheus instant query's JSON.
fn prom_results(json: &str) -> Vec<(String, f64)> {
    json.split("{\"metric\":")
        .skip(1)
        .filter_map(|r| {
            let labels = r[..r.find('}')?].to_string();
            let v = &r[r.find("\"value\":[")? + 9..];
            let v = &v[v.find(",\"")? + 2..];
            Some((labels, v[..v.find('"')?].parse().ok()?))
        })
        .collect()
}

/// One request of a request loop: start and end (epoch seconds), curl's exit code and the
/// first line of the body.
#[derive(Debug, Clone)]
struct Sample {
    start: f64,
    end: f64,
    rc: i32,
    body: String,
}

impl Sample {
    fn ok(&self) -> bool {
        self.rc == 0 && self.body.starts_with("web")
    }
}

/// A request loop in `ext`: `curl -f` of a URL every `interval`, one line per request.
#[derive(Debug)]
struct Loop {
    proc: Proc,
    log: PathBuf,
}

impl Loop {
    fn start(w: &World, name: &str, url: &str, interval: &str, connect: &str, max: &str) -> Loop {
        let log = w.dir.join(format!("{name}.samples"));
        let script = w.dir.join("loop.sh");
        let proc = w.ext.spawn(&format!(
            "bash {} {url} {} {interval} {connect} {max}",
            script.display(),
            log.display()
        ));
        let l = Loop { proc, log };
        assert!(
            wait_for(Duration::from_secs(10), || l
                .samples()
                .iter()
                .any(Sample::ok)),
            "request loop {name}: no success in 10 s: {:?}",
            l.samples()
        );
        l
    }

    fn samples(&self) -> Vec<Sample> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut w = l.splitn(4, ' ');
                Some(Sample {
                    start: w.next()?.parse().ok()?,
                    end: w.next()?.parse().ok()?,
                    rc: w.next()?.parse().ok()?,
                    body: w.next().unwrap_or("").trim().to_string(),
                })
            })
            .collect()
    }

    /// Stop it; every complete sample.
    fn stop(mut self) -> Vec<Sample> {
        self.proc.signal(libc::SIGKILL);
        let _ = self.proc.wait_timeout(Duration::from_secs(5));
        self.samples()
    }
}

/// The request loop's script: `loop.sh URL OUT INTERVAL CONNECT_TIMEOUT MAX_TIME`.
const LOOP_SH: &str = r#"url=$1; out=$2; ival=$3; ct=$4; mt=$5
export LC_ALL=C
while :; do
  t0=$EPOCHREALTIME
  body=$(curl -s -f --connect-timeout "$ct" -m "$mt" "$url")
  rc=$?
  t1=$EPOCHREALTIME
  echo "$t0 $t1 $rc ${body%%$'\n'*}" >> "$out"
  sleep "$ival"
done
"#;

/// A tally of request-loop bodies.
fn tally(samples: &[Sample]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for s in samples.iter().filter(|s| s.ok()) {
        *t.entry(s.body.clone()).or_default() += 1;
    }
    t
}

/// A web server: its hypervisor namespace and nginx.
#[derive(Debug)]
struct Web {
    _nginx: Proc,
    _ns: Netns,
}

impl Web {
    /// Hypervisor `node` with a kernel VTEP on VNI 5001 flooding to the lb (198.18.0.3),
    /// `addr`/24 on `vx0` with the lb as default gateway, and nginx answering `/` and
    /// `/healthz` on ports 80 and 8080 and `/big` on port 80.
    fn new(sw: &Switch, dir: &Path, (name, addr, node): (&str, &str, u8)) -> Web {
        let ns = hypervisor(sw, node, 5001, &[3]);
        ns.run("ip addr flush dev vx0");
        ns.run(&format!("ip addr add {addr}/24 dev vx0"));
        ns.run("ip route add default via 10.0.1.1 dev vx0");
        let d = dir.display();
        let conf = dir.join(format!("nginx-{name}.conf"));
        let error = dir.join(format!("nginx-{name}-error.log"));
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
                 \x20 access_log off;\n\
                 \x20 keepalive_requests 100000;\n\
                 \x20 client_body_temp_path {d}/nginx-{name}-body;\n\
                 \x20 proxy_temp_path {d}/nginx-{name}-proxy;\n\
                 \x20 fastcgi_temp_path {d}/nginx-{name}-fastcgi;\n\
                 \x20 uwsgi_temp_path {d}/nginx-{name}-uwsgi;\n\
                 \x20 scgi_temp_path {d}/nginx-{name}-scgi;\n\
                 \x20 server {{\n\
                 \x20   listen {addr}:80 backlog=1024;\n\
                 \x20   location / {{ return 200 \"{name}\\n\"; }}\n\
                 \x20   location = /healthz {{ return 200 \"ok\\n\"; }}\n\
                 \x20   location = /big {{ alias {d}/big.bin; }}\n\
                 \x20 }}\n\
                 \x20 server {{\n\
                 \x20   listen {addr}:8080 backlog=1024;\n\
                 \x20   location / {{ return 200 \"{name} 8080\\n\"; }}\n\
                 \x20   location = /healthz {{ return 200 \"ok\\n\"; }}\n\
                 \x20 }}\n\
                 }}\n",
                error.display()
            ),
        )
        .expect("write nginx config");
        let nginx = ns.spawn_logged(
            &format!("nginx -c {} -e {}", conf.display(), error.display()),
            Some(&error.with_extension("out")),
        );
        let listening = wait_for(Duration::from_secs(10), || {
            ns.sh(&format!("ss -Hltn | grep -q '{addr}:8080'"))
                .status
                .success()
        });
        assert!(
            listening,
            "nginx {name} did not start:\n{}",
            std::fs::read_to_string(&error).unwrap_or_default()
        );
        Web {
            _nginx: nginx,
            _ns: ns,
        }
    }
}

/// The running chain: `vnfctl down` on drop (then the namespace's drop kills whatever is
/// left), and the logs printed if the test failed.
#[derive(Debug)]
struct Chain {
    ns: String,
    state: PathBuf,
}

impl Drop for Chain {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.state.join("logs");
            let mut names: Vec<PathBuf> = std::fs::read_dir(&logs)
                .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
                .unwrap_or_default();
            names.sort();
            for log in names {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "---- {} (last 40 lines) ----\n{}",
                    log.display(),
                    lines[lines.len().saturating_sub(40)..].join("\n")
                );
            }
            eprintln!(
                "---- status.json ----\n{}",
                std::fs::read_to_string(self.state.join("status.json")).unwrap_or_default()
            );
        }
        let _ = sh(&format!(
            "timeout 30 ip netns exec {} {} down --state {}",
            self.ns,
            bin("vnfctl").display(),
            self.state.display()
        ));
    }
}

/// The whole topology with the chain up. Fields drop in order: the chain (`vnfctl down`),
/// Prometheus, the client, the web servers, the `vnf` namespace, OVS and its namespace,
/// the underlay switch, the work dir.
#[derive(Debug)]
struct World {
    _chain: Chain,
    prometheus: Option<Proc>,
    ext: Netns,
    _webs: Vec<Web>,
    vnf: Netns,
    _ovs: Ovs,
    _ovs_ns: Netns,
    _sw: Switch,
    file: PathBuf,
    state: PathBuf,
    dir: WorkDir,
}

/// Every tool the namespace tests need (`have_tool` prints the missing one).
fn tools(test: &str, extra: &[&str]) -> bool {
    [
        "ip",
        "bridge",
        "ethtool",
        "ss",
        "ping",
        "curl",
        "bash",
        "nginx",
        "ovsdb-tool",
        "ovsdb-server",
        "ovs-vswitchd",
        "ovs-vsctl",
    ]
    .iter()
    .chain(extra)
    .all(|t| have_tool(test, t))
}

impl World {
    /// Build everything, `vnfctl up` the chain (version `edits`) and return once the client
    /// gets answers from web1 and web2.
    fn new(test: &str, edits: Edits) -> World {
        let t0 = Instant::now();
        let dir = WorkDir::new(test);
        std::fs::write(dir.join("loop.sh"), LOOP_SH).expect("write loop.sh");
        std::fs::File::create(dir.join("big.bin"))
            .and_then(|f| f.set_len(BIG_BYTES))
            .expect("write big.bin");
        let file = dir.join("chain.yaml");
        std::fs::write(&file, chain_yaml(edits)).expect("write chain file");
        let state = dir.join("state");

        let sw = underlay_switch(Family::V4);
        let vnf = underlay_node(&sw, "vnf", 1);
        let chain = Chain {
            ns: vnf.name.clone(),
            state: state.clone(),
        };
        for n in [2, 3] {
            vnf.run(&format!("ip addr add 198.18.0.{n}/24 dev ul0"));
        }
        // UDP GSO super-packets leave the veth segmented, as a NIC would send them.
        vnf.run("ethtool -K ul0 tx off tx-udp-segmentation off");
        let webs: Vec<Web> = WEBS.iter().map(|w| Web::new(&sw, &dir, *w)).collect();

        // The external VLAN: ext -- p1 (access, VLAN 100) OVS p2 (trunk) -- trunk0 in vnf.
        let ovs_ns = Netns::new("ovs");
        let ext = Netns::new("ext");
        for ns in [&ovs_ns, &ext] {
            quiet_ipv6(ns);
        }
        veth(&ovs_ns, "p1", &ext, "eth0");
        veth(&ovs_ns, "p2", &vnf, "trunk0");
        ext.run(&format!("ip addr add {CLIENT}/24 dev eth0"));
        ext.run("ethtool -K eth0 tx off");
        let ovs = Ovs::start(&dir.join("ovs"), &ovs_ns);
        ovs.vsctl("add-br br0 -- set bridge br0 datapath_type=netdev");
        ovs.vsctl("add-port br0 p1 tag=100");
        ovs.vsctl("add-port br0 p2 trunks=100");

        let w = World {
            _chain: chain,
            prometheus: None,
            ext,
            _webs: webs,
            vnf,
            _ovs: ovs,
            _ovs_ns: ovs_ns,
            _sw: sw,
            file,
            state,
            dir,
        };
        let up = w.vnfctl(&format!(
            "up {} --state {} --bin-dir {} --scrape-interval 1s --wait 30",
            w.file.display(),
            w.state.display(),
            bin("vnfctl").parent().expect("bin dir").display()
        ));
        assert!(up.status.success(), "vnfctl up failed:\n{}", text(&up));
        eprintln!("{}", text(&up).trim_end());

        // Warm-up: ARP through OVS and the router, then both backends answering.
        let pinged = wait_for(Duration::from_secs(15), || {
            w.ext
                .sh(&format!("ping -n -c 1 -W 1 {FLOATING}"))
                .status
                .success()
        });
        assert!(
            pinged,
            "ext cannot ping {FLOATING}:\n{}",
            ping(&w.ext, &format!("-c 1 -W 1 {FLOATING}")).1
        );
        let mut seen = BTreeMap::new();
        let both = wait_for(Duration::from_secs(15), || {
            let (rc, body) = w.get("/", 80);
            if rc == 0 {
                *seen.entry(body).or_insert(0) += 1;
            }
            seen.contains_key("web1") && seen.contains_key("web2")
        });
        assert!(both, "web1 and web2 did not both answer: {seen:?}");
        eprintln!("{test}: chain up and serving in {:.1?}", t0.elapsed());
        w
    }

    /// `vnfctl ARGS` inside the `vnf` namespace (where the admin endpoints are).
    fn vnfctl(&self, args: &str) -> Output {
        sh(&format!(
            "timeout 60 {}{} {args}",
            self.vnf.exec(),
            bin("vnfctl").display()
        ))
    }

    /// `vnfctl apply` of chain file version `edits`.
    fn apply(&self, edits: Edits) -> Output {
        std::fs::write(&self.file, chain_yaml(edits)).expect("write chain file");
        self.vnfctl(&format!(
            "apply {} --state {} --scrape-interval 1s",
            self.file.display(),
            self.state.display()
        ))
    }

    fn plan_dir(&self) -> PathBuf {
        self.state.join("plan")
    }

    /// The supervisor's view of the instances.
    fn status(&self) -> BTreeMap<String, InstanceState> {
        parse_status(&std::fs::read_to_string(self.state.join("status.json")).unwrap_or_default())
    }

    /// An instance's `/metrics`.
    fn metrics(&self, instance: &str) -> String {
        let admin = INSTANCES
            .iter()
            .find(|(n, _)| *n == instance)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no instance {instance}"));
        let out = self
            .vnf
            .sh(&format!("curl -sf -m 5 http://{admin}/metrics"));
        assert!(
            out.status.success(),
            "{instance}: no /metrics:\n{}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `GET http://FLOATING:port/path` from the client: (curl's exit code, body trimmed).
    fn get(&self, path: &str, port: u16) -> (i32, String) {
        let out = self
            .ext
            .sh(&format!("curl -s -f -m 3 http://{FLOATING}:{port}{path}"));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    }

    /// `GET /` on port 80 and 8080 both answer 200 from a web server.
    fn serving(&self) -> bool {
        [80, 8080].iter().all(|p| {
            let (rc, body) = self.get("/", *p);
            rc == 0 && body.starts_with("web")
        })
    }

    /// Start Prometheus in the `vnf` namespace on the plan's `prometheus.yml`.
    fn start_prometheus(&mut self) {
        let config = self.plan_dir().join("prometheus.yml");
        let log = self.dir.join("prometheus.log");
        let p = self.vnf.spawn_logged(
            &format!(
                "prometheus --config.file={} --storage.tsdb.path={} --web.listen-address={PROMETHEUS}",
                config.display(),
                self.dir.join("tsdb").display()
            ),
            Some(&log),
        );
        self.prometheus = Some(p);
    }

    /// An instant query to Prometheus: (labels, value) of each series, empty if it does
    /// not answer (yet).
    fn query(&self, q: &str) -> Vec<(String, f64)> {
        let out = self.vnf.sh(&format!(
            "curl -s -m 3 -G --data-urlencode 'query={q}' http://{PROMETHEUS}/api/v1/query"
        ));
        prom_results(&String::from_utf8_lossy(&out.stdout))
    }

    /// The processes left in the `vnf` namespace: (pid, command name).
    fn processes(&self) -> Vec<(u32, String)> {
        sh(&format!("ip netns pids {}", self.vnf.name))
            .stdout
            .split(|b| *b == b'\n')
            .filter_map(|l| std::str::from_utf8(l).ok()?.trim().parse::<u32>().ok())
            .filter_map(|pid| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
                Some((pid, comm.trim().to_string()))
            })
            .collect()
    }
}

/// The value of each function's series in a query result, by the `function` label.
fn by_function(results: &[(String, f64)]) -> BTreeMap<String, f64> {
    results
        .iter()
        .filter_map(|(labels, v)| {
            let at = labels.find("\"function\":\"")? + 12;
            let f = &labels[at..];
            Some((f[..f.find('"')?].to_string(), *v))
        })
        .collect()
}

/// `vnfctl validate` accepts the chain; `vnfctl plan --scrape-interval 1s` writes the
/// manifest, the three configs and `prometheus.yml` (deterministically), which `promtool`
/// accepts; an invalid VNI and a service of a pool that does not exist are reported at
/// their `FILE:LINE:COLUMN`. No root needed.
#[test]
fn chain_file_validates_and_plans() {
    const TEST: &str = "chain_file_validates_and_plans";
    let dir = WorkDir::new(TEST);
    let file = dir.join("chain.yaml");
    let vnfctl = bin("vnfctl");
    std::fs::write(&file, chain_yaml(Edits::default())).expect("write chain file");

    let out = sh(&format!("{} validate {}", vnfctl.display(), file.display()));
    assert!(
        out.status.success(),
        "validate refused the chain:\n{}",
        text(&out)
    );
    assert!(
        text(&out).contains("ok: tenant shop, instances: 1 router, 1 firewall, 1 lb"),
        "{}",
        text(&out)
    );

    let plan = dir.join("plan");
    let out = sh(&format!(
        "{} plan {} --out {} --scrape-interval 1s",
        vnfctl.display(),
        file.display(),
        plan.display()
    ));
    assert!(out.status.success(), "plan failed:\n{}", text(&out));
    eprintln!("{}", text(&out).trim_end());
    let files = snapshot(&plan);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "edge.yaml",
            "fw.yaml",
            "lb.yaml",
            "plan.yaml",
            "prometheus.yml"
        ],
        "plan dir"
    );
    let read = |n: &str| String::from_utf8_lossy(&files[n]).into_owned();
    let manifest = read("plan.yaml");
    for (name, admin) in INSTANCES {
        assert!(
            manifest.contains(&format!("- name: {name}"))
                && manifest.contains(&format!("admin: {admin}")),
            "plan.yaml lacks {name} at {admin}:\n{manifest}"
        );
    }
    let edge = read("edge.yaml");
    assert!(
        edge.contains("trunk: trunk0") && edge.contains("vlan: 100"),
        "edge.yaml has no VLAN 100 port on trunk0:\n{edge}"
    );
    let lb = read("lb.yaml");
    assert!(
        lb.contains("vni: 5001") && lb.contains("10.0.1.11:80") && !lb.contains("10.0.1.13"),
        "lb.yaml:\n{lb}"
    );
    let prom_yml = read("prometheus.yml");
    assert!(prom_yml.contains("scrape_interval: 1s"), "{prom_yml}");
    for (name, admin) in INSTANCES {
        assert!(
            prom_yml.contains(&format!("\"{admin}\""))
                && prom_yml.contains(&format!("function: {name}")),
            "prometheus.yml lacks {name}:\n{prom_yml}"
        );
    }
    // The same file gives the same plan, byte for byte.
    let again = dir.join("plan2");
    let out = sh(&format!(
        "{} plan {} --out {} --scrape-interval 1s",
        vnfctl.display(),
        file.display(),
        again.display()
    ));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(snapshot(&again), files, "planning twice gave two plans");

    if have_tool(TEST, "promtool") {
        let out = sh(&format!(
            "promtool check config {}",
            plan.join("prometheus.yml").display()
        ));
        assert!(
            out.status.success(),
            "promtool refused prometheus.yml:\n{}",
            text(&out)
        );
        eprintln!("{}", text(&out).trim_end());
    }

    // Invalid versions: every problem at its line.
    for (edits, needle, what) in [
        (
            Edits {
                vni_zero: true,
                ..Edits::default()
            },
            "vni: 0",
            "networks[1].vni",
        ),
        (
            Edits {
                no_such_pool: true,
                ..Edits::default()
            },
            "pool: nosuch",
            "pool",
        ),
    ] {
        let bad = dir.join("bad.yaml");
        let yaml = chain_yaml(edits);
        std::fs::write(&bad, &yaml).expect("write chain file");
        let out = sh(&format!("{} validate {}", vnfctl.display(), bad.display()));
        let msg = text(&out);
        let at = format!("{}:{}:", bad.display(), line_of(&yaml, needle));
        assert!(
            out.status.code() == Some(1) && msg.contains(&at) && msg.contains(what),
            "validate of a chain with `{needle}`: want exit 1 and `{at}COLUMN: {what}...`, got {}:\n{msg}",
            out.status
        );
        eprintln!("invalid chain: {}", msg.lines().next().unwrap_or_default());
    }
}

/// The client on VLAN 100 pings and fetches through edge, fw and lb (the trunk carries the
/// echoes tagged 100); 40 requests are all answered, by web1 and web2; wrk sees no error;
/// port 8080 (served by the lb) stays closed by the firewall, which counts the drops; a
/// real Prometheus on the plan's `prometheus.yml` finds every instance up with traffic
/// counted; `vnfctl status` shows all running and ready; `vnfctl down` leaves nothing.
#[test]
fn chain_serves_vlan_clients_and_is_scraped() {
    const TEST: &str = "chain_serves_vlan_clients_and_is_scraped";
    let _g = serial();
    if !have_root(TEST) || !tools(TEST, &["tcpdump", "wrk", "prometheus", "promtool"]) {
        return;
    }
    let t0 = Instant::now();
    let mut w = World::new(TEST, Edits::default());

    // Ping the floating address (the firewall accepts ICMP echo; the lb answers for the
    // VIP) while capturing the trunk: the echoes cross it tagged with VLAN 100.
    let cap_log = w.dir.join("trunk.txt");
    let mut tcpdump = w
        .vnf
        .spawn_logged("tcpdump -nn -e -l -i trunk0", Some(&cap_log));
    assert!(
        wait_for(Duration::from_secs(10), || std::fs::read_to_string(
            &cap_log
        )
        .is_ok_and(|s| s.contains("listening on"))),
        "tcpdump did not start"
    );
    let (received, out) = ping(&w.ext, &format!("-c 10 -i 0.1 -W 1 {FLOATING}"));
    assert_eq!(received, 10, "ping {FLOATING}:\n{out}");
    std::thread::sleep(Duration::from_millis(200));
    tcpdump.signal(libc::SIGINT);
    let _ = tcpdump.wait_timeout(Duration::from_secs(5));
    let cap = std::fs::read_to_string(&cap_log).unwrap_or_default();
    let tagged = |l: &&str| l.contains("ethertype 802.1Q") && l.contains("vlan 100,");
    let count = |what: &str| {
        cap.lines()
            .filter(|l| tagged(l) && l.contains(what))
            .count()
    };
    let requests = count(&format!("{CLIENT} > {FLOATING}: ICMP echo request"));
    let replies = count(&format!("{FLOATING} > {CLIENT}: ICMP echo reply"));
    let untagged: Vec<&str> = cap
        .lines()
        .filter(|l| l.contains(" > ") && !tagged(l))
        .collect();
    assert!(
        requests >= 10 && replies >= 10 && untagged.is_empty(),
        "trunk0: {requests} tagged echo requests, {replies} tagged replies, untagged {untagged:#?}\n{cap}"
    );
    println!(
        "ping {FLOATING}: 10/10 answered; trunk0 carried {requests} requests and {replies} replies tagged VLAN 100"
    );

    // 40 requests, one connection each: all answered, by both servers.
    let out = w.ext.sh(&format!(
        "for i in $(seq 40); do curl -s -f -m 5 http://{FLOATING}/ || echo FAILED; done"
    ));
    let bodies = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut by_body: BTreeMap<&str, usize> = BTreeMap::new();
    for l in bodies.lines() {
        *by_body.entry(l.trim()).or_default() += 1;
    }
    assert_eq!(
        by_body.values().sum::<usize>(),
        40,
        "40 requests: {by_body:?}"
    );
    assert!(
        by_body.keys().all(|b| *b == "web1" || *b == "web2")
            && by_body.get("web1").is_some_and(|n| *n >= 5)
            && by_body.get("web2").is_some_and(|n| *n >= 5),
        "40 requests to http://{FLOATING}/ should all be answered, by web1 and web2: {by_body:?}"
    );
    println!("40 curl requests to http://{FLOATING}/: {by_body:?}");

    // wrk: keep-alive connections through the L7 service, no error.
    let out = w
        .ext
        .sh(&format!("wrk -t1 -c4 -d3s --timeout 2s http://{FLOATING}/"));
    let wrk = text(&out);
    assert!(out.status.success(), "wrk failed:\n{wrk}");
    let requests: u64 = wrk
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ")?.0.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        requests >= 40 && !wrk.contains("Socket errors") && !wrk.contains("Non-2xx"),
        "wrk: want >= 40 requests, no errors:\n{wrk}"
    );
    println!("wrk -c4 -d3s: {requests} requests, no socket errors, no non-2xx");

    // Port 8080: the lb serves it (a tcp service), the firewall does not let it through.
    let fw_before = w.metrics("fw");
    let drops_before = metric_sum(&fw_before, "vnf_drops_total", &["reason=\"policy_drop\""]);
    let default_before = metric_sum(
        &fw_before,
        "vnf_fw_rule_packets_total",
        &["from=\"upstream\"", "to=\"downstream\"", "rule=\"default\""],
    );
    let started = Instant::now();
    let (rc, body) = w.get("/", 8080);
    let took = started.elapsed();
    assert!(
        rc == 28 && body.is_empty(),
        "http://{FLOATING}:8080/ should time out (dropped by the firewall): curl exit {rc}, body `{body}`"
    );
    let fw_after = w.metrics("fw");
    let drops_after = metric_sum(&fw_after, "vnf_drops_total", &["reason=\"policy_drop\""]);
    let default_after = metric_sum(
        &fw_after,
        "vnf_fw_rule_packets_total",
        &["from=\"upstream\"", "to=\"downstream\"", "rule=\"default\""],
    );
    assert!(
        drops_after > drops_before && default_after > default_before,
        "the firewall should count the dropped SYNs: policy_drop {drops_before} -> {drops_after}, \
         default rule {default_before} -> {default_after}"
    );
    println!(
        "http://{FLOATING}:8080/: timed out after {:.1} s; fw policy_drop {drops_before} -> {drops_after}",
        took.as_secs_f64()
    );
    let lb = w.metrics("lb");
    assert!(
        metric_sum(&lb, "vnf_lb_backend_up", &["pool=\"alt\""]) == 2.0,
        "the lb's alt pool (port 8080) should be up behind the firewall:\n{lb}"
    );

    // Real Prometheus on the plan's prometheus.yml, inside the namespace.
    let prom_yml = w.plan_dir().join("prometheus.yml");
    let out = sh(&format!("promtool check config {}", prom_yml.display()));
    assert!(
        out.status.success(),
        "promtool check config:\n{}",
        text(&out)
    );
    w.start_prometheus();
    let all_up = |r: &BTreeMap<String, f64>| {
        INSTANCES
            .iter()
            .all(|(n, _)| r.get(*n).is_some_and(|v| *v == 1.0))
    };
    let mut up = BTreeMap::new();
    let scraped = wait_for(Duration::from_secs(30), || {
        up = by_function(&w.query("up"));
        all_up(&up)
    });
    assert!(
        scraped,
        "Prometheus: `up` should be 1 for edge, fw and lb: {up:?}\n{}",
        std::fs::read_to_string(w.dir.join("prometheus.log")).unwrap_or_default()
    );
    let mut rx = BTreeMap::new();
    let counted = wait_for(Duration::from_secs(15), || {
        rx = by_function(&w.query("sum by (function) (vnf_port_rx_packets_total)"));
        INSTANCES
            .iter()
            .all(|(n, _)| rx.get(*n).is_some_and(|v| *v > 0.0))
    });
    assert!(
        counted,
        "Prometheus: vnf_port_rx_packets_total by function: {rx:?}"
    );
    let vx = by_function(&w.query("sum by (function) (vnf_vxlan_rx_packets_total)"));
    assert!(
        INSTANCES
            .iter()
            .all(|(n, _)| vx.get(*n).is_some_and(|v| *v > 0.0)),
        "Prometheus: vnf_vxlan_rx_packets_total by function: {vx:?}"
    );
    println!("Prometheus: up {up:?}; rx packets {rx:?}; vxlan rx packets {vx:?}");
    drop(w.prometheus.take());

    // status: three instances running and ready.
    let out = w.vnfctl(&format!("status --state {}", w.state.display()));
    let status = text(&out);
    println!("{}", status.trim_end());
    assert!(out.status.success(), "vnfctl status:\n{status}");
    for (name, _) in INSTANCES {
        assert!(
            status.lines().any(|l| l.starts_with(&format!("{name} "))
                && l.contains(" running ")
                && l.contains(" ready ")),
            "vnfctl status: {name} should be running and ready:\n{status}"
        );
    }

    // down: nothing of the chain is left in the namespace.
    let before: Vec<(u32, String)> = w.processes();
    assert!(
        before.iter().filter(|(_, c)| c.starts_with("vnf-")).count() == 3,
        "three instances should run: {before:?}"
    );
    let out = w.vnfctl(&format!("down --state {}", w.state.display()));
    assert!(out.status.success(), "vnfctl down:\n{}", text(&out));
    let left: Vec<(u32, String)> = w
        .processes()
        .into_iter()
        .filter(|(_, c)| c.starts_with("vnf"))
        .collect();
    assert!(
        left.is_empty(),
        "left after vnfctl down: {left:?} (before: {before:?})"
    );
    let (rc, _) = w.get("/", 80);
    assert_ne!(rc, 0, "the chain still answers after down");
    println!("vnfctl down: no vnf-* or vnfctl process left in the namespace");
    eprintln!("{TEST}: {:.1?}", t0.elapsed());
}

/// `vnfctl apply` while a rate-limited download and a request loop run: web3 joins the
/// pool and the VNI, the firewall opens 8080; both instances are reloaded in place (same
/// pids), 8080 answers, web3 serves, the download completes whole and no request fails.
/// Then two invalid files (a VNI of 0; a pool that does not exist) change nothing, and a
/// file vnf-lb refuses at reload (missing certificate files) is rolled back, firewall
/// included.
#[test]
fn chain_apply_under_load() {
    const TEST: &str = "chain_apply_under_load";
    let _g = serial();
    if !have_root(TEST) || !tools(TEST, &[]) {
        return;
    }
    let t0 = Instant::now();
    let w = World::new(TEST, Edits::default());
    let pids = |w: &World| {
        w.status()
            .into_iter()
            .map(|(n, s)| (n, s.pid))
            .collect::<BTreeMap<_, _>>()
    };
    let before = pids(&w);
    assert_eq!(before.len(), 3, "status.json: {:?}", w.status());

    // A long download and a request loop, both through the chain.
    let dl_log = w.dir.join("download.log");
    let mut download = w.ext.spawn_logged(
        &format!(
            "curl -s -S -o /dev/null --limit-rate {BIG_RATE} -w '%{{size_download}} %{{http_code}}\\n' http://{FLOATING}/big"
        ),
        Some(&dl_log),
    );
    let requests = Loop::start(
        &w,
        "apply",
        &format!("http://{FLOATING}/"),
        "0.05",
        "3",
        "5",
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        download.running(),
        "the download ended early: {}",
        std::fs::read_to_string(&dl_log).unwrap_or_default()
    );

    // (a) web3 joins the pool and its hypervisor the VNI, (b) the firewall opens 8080.
    let good = Edits {
        web3: true,
        open_8080: true,
        ..Edits::default()
    };
    let applied = Instant::now();
    let out = w.apply(good);
    let took = applied.elapsed();
    let msg = text(&out);
    println!(
        "vnfctl apply ({:.0} ms):\n{}",
        took.as_secs_f64() * 1e3,
        msg.trim_end()
    );
    assert!(out.status.success(), "vnfctl apply failed:\n{msg}");
    for want in [
        "~ fw (firewall): config changes",
        "~ lb (lb): config changes",
        "+     - 8080",
        "+     address: 10.0.1.13:80",
        "reloaded fw",
        "reloaded lb",
    ] {
        assert!(msg.contains(want), "apply output lacks `{want}`:\n{msg}");
    }
    assert!(!msg.contains("~ edge"), "edge does not change:\n{msg}");
    assert!(
        download.running(),
        "the download should still be running after the apply (make it longer)"
    );
    assert_eq!(
        pids(&w),
        before,
        "an apply reloads in place: no instance restarts"
    );

    let mut opened = (0, String::new());
    assert!(
        wait_for(Duration::from_secs(5), || {
            opened = w.get("/", 8080);
            opened.0 == 0 && opened.1.starts_with("web")
        }),
        "http://{FLOATING}:8080/ after opening it: {opened:?}"
    );
    let mut seen = BTreeMap::new();
    let web3 = wait_for(Duration::from_secs(15), || {
        let (rc, body) = w.get("/", 80);
        *seen.entry(format!("{rc} {body}")).or_insert(0) += 1;
        rc == 0 && body == "web3"
    });
    assert!(web3, "web3 did not serve after the apply: {seen:?}");
    println!("after apply: :8080 answered `{}`; web3 serves", opened.1);

    let code = download.wait_timeout(Duration::from_secs(40));
    let dl = std::fs::read_to_string(&dl_log).unwrap_or_default();
    assert_eq!(
        (code, dl.trim()),
        (Some(0), format!("{BIG_BYTES} 200").as_str()),
        "the long download across the apply: curl exit {code:?}, `size code` {dl}"
    );
    let samples = requests.stop();
    let failed: Vec<&Sample> = samples.iter().filter(|s| !s.ok()).collect();
    let t = tally(&samples);
    println!(
        "download of {BIG_BYTES} bytes across the apply: complete; request loop: {} requests, {} failed, {t:?}",
        samples.len(),
        failed.len()
    );
    assert!(
        failed.is_empty() && samples.len() >= 20,
        "request loop across the apply: {} requests, failures: {failed:?}",
        samples.len()
    );
    assert!(
        t.contains_key("web3"),
        "the request loop never reached web3: {t:?}"
    );

    // Invalid versions: refused before anything changes.
    let plan_before = snapshot(&w.plan_dir());
    let status_before = w.status();
    for (edits, needle) in [
        (
            Edits {
                vni_zero: true,
                ..good
            },
            "vni: 0",
        ),
        (
            Edits {
                no_such_pool: true,
                ..good
            },
            "pool: nosuch",
        ),
    ] {
        let yaml = chain_yaml(edits);
        let out = w.apply(edits);
        let msg = text(&out);
        let at = format!("{}:{}:", w.file.display(), line_of(&yaml, needle));
        println!("invalid apply (`{needle}`):\n{}", msg.trim_end());
        assert!(
            out.status.code() == Some(1) && msg.contains(&at) && msg.contains("nothing changed"),
            "apply of an invalid chain (`{needle}`): want exit 1 and `{at}COLUMN: ...`, got {}:\n{msg}",
            out.status
        );
        assert!(snapshot(&w.plan_dir()) == plan_before, "the plan changed");
        assert_eq!(w.status(), status_before, "the instances changed");
        assert!(w.serving(), "traffic stopped after an invalid apply");
    }

    // An HTTPS service whose certificate files do not exist: valid on paper, refused by
    // vnf-lb's reload after the firewall took its new config; both roll back.
    let reloads = |w: &World, i: &str, result: &str| {
        metric_sum(
            &w.metrics(i),
            "vnf_config_reloads_total",
            &[&format!("result=\"{result}\"")],
        )
    };
    let (fw_ok, lb_err) = (reloads(&w, "fw", "ok"), reloads(&w, "lb", "error"));
    let out = w.apply(Edits {
        bad_tls: true,
        ..good
    });
    let msg = text(&out);
    println!("refused apply:\n{}", msg.trim_end());
    assert_eq!(
        out.status.code(),
        Some(1),
        "an apply vnf-lb refuses must fail:\n{msg}"
    );
    for want in [
        "reloaded fw",
        "lb refused its new config",
        "nonexistent",
        "rolled back fw",
        "apply refused",
    ] {
        assert!(
            msg.contains(want),
            "refused apply output lacks `{want}`:\n{msg}"
        );
    }
    let plan_after = snapshot(&w.plan_dir());
    for (name, bytes) in &plan_before {
        assert!(
            plan_after.get(name) == Some(bytes),
            "{name} should be back to the previous plan:\n{}",
            String::from_utf8_lossy(plan_after.get(name).map_or(&[][..], |b| &b[..]))
        );
    }
    assert_eq!(
        plan_after.len(),
        plan_before.len(),
        "files of the plan: {:?}",
        plan_after.keys()
    );
    assert_eq!(w.status(), status_before, "the instances changed");
    assert_eq!(
        reloads(&w, "fw", "ok"),
        fw_ok + 2.0,
        "fw: reloaded and rolled back"
    );
    assert_eq!(
        reloads(&w, "lb", "error"),
        lb_err + 1.0,
        "lb: one refused reload"
    );
    assert!(w.serving(), "traffic stopped after a refused apply");
    // The firewall runs its old rules again: 443 (the refused version's rule) is dropped
    // again rather than answered by the lb with a RST.
    let (rc, _) = w.get("/", 443);
    assert_eq!(
        rc, 28,
        "tcp 443 should be dropped by the rolled-back firewall (curl exit {rc})"
    );
    eprintln!("{TEST}: {:.1?}", t0.elapsed());
}

/// Each instance in turn (lb, edge, fw) is SIGKILLed under a request loop (a new
/// connection every 20 ms, 200 ms connect timeout): the supervisor restarts it (new pid,
/// one restart) and traffic resumes; the outage, from the kill to the end of the first
/// successful request started after it, is printed; once traffic is back, no request of
/// the 3 s after the kill fails (a restarted vnf-lb once reused the source ports of its
/// predecessor's health checks, which the backends still held in TIME_WAIT, and requests
/// stalled a second after the restart).
#[test]
fn chain_instances_restart_after_sigkill() {
    const TEST: &str = "chain_instances_restart_after_sigkill";
    let _g = serial();
    if !have_root(TEST) || !tools(TEST, &[]) {
        return;
    }
    let t0 = Instant::now();
    let w = World::new(TEST, Edits::default());
    let requests = Loop::start(
        &w,
        "sigkill",
        &format!("http://{FLOATING}/"),
        "0.02",
        "0.2",
        "0.5",
    );
    let mut report = Vec::new();
    // The settling window: failures up to this long after a kill are the kill's.
    const WINDOW: f64 = 3.0;
    for (name, _) in [INSTANCES[2], INSTANCES[0], INSTANCES[1]] {
        std::thread::sleep(Duration::from_millis(500));
        let old = w.status()[name].clone();
        let pid = old
            .pid
            .unwrap_or_else(|| panic!("{name} has no pid: {old:?}"));
        assert_eq!(old.state, "running", "{name}: {old:?}");
        let killed_at = now_epoch();
        // SAFETY: kill has no memory preconditions; the pid is the instance's, from the
        // supervisor's status of a chain this test started.
        let rc = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill -9 {pid} ({name})");

        let mut now = old.clone();
        let back = wait_for(Duration::from_secs(15), || {
            now = w.status()[name].clone();
            now.pid.is_some_and(|p| p != pid)
                && now.restarts == old.restarts + 1
                && now.state == "running"
        });
        assert!(back, "{name} was not restarted: {now:?}");
        // The outage: from the kill to the end of the first successful request that
        // started after it.
        let mut first = None;
        let resumed = wait_for(Duration::from_secs(15), || {
            first = requests
                .samples()
                .into_iter()
                .find(|s| s.start >= killed_at && s.ok());
            first.is_some()
        });
        let Some(first) = first.filter(|_| resumed) else {
            panic!(
                "{name}: traffic did not resume within 15 s of the SIGKILL: {:?}",
                requests
                    .samples()
                    .iter()
                    .filter(|s| s.end >= killed_at)
                    .collect::<Vec<_>>()
            )
        };
        let outage = first.end - killed_at;
        assert!(outage < 15.0, "{name}: outage {outage:.2} s");
        // Then the seconds after: traffic stays back.
        let settle = killed_at + WINDOW - now_epoch();
        if settle > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(settle));
        }
        let samples = requests.samples();
        let window: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.end >= killed_at && s.start < killed_at + WINDOW)
            .collect();
        let failed: Vec<&&Sample> = window.iter().filter(|s| !s.ok()).collect();
        let failed_before = failed.iter().filter(|s| s.start < first.start).count();
        let failed_after: Vec<&&&Sample> = failed.iter().filter(|s| s.start >= first.end).collect();
        let last_failure = failed.iter().map(|s| s.end - killed_at).fold(0.0, f64::max);
        let new_pid = now.pid.unwrap_or_default();
        // The supervisor's own account: `NAME: pid N ready after M ms`.
        let sup = std::fs::read_to_string(w.state.join("logs/supervisor.log")).unwrap_or_default();
        let ready_ms = sup
            .lines()
            .find_map(|l| {
                l.split_once(&format!("{name}: pid {new_pid} ready after "))?
                    .1
                    .strip_suffix(" ms")
            })
            .unwrap_or("?")
            .to_string();
        println!(
            "{name} SIGKILL: restarted as pid {new_pid} (restarts {}, ready {ready_ms} ms after its \
             start); traffic back after {outage:.2} s ({failed_before} requests failed before); \
             in the {WINDOW} s after the kill: {} requests, {} failed, the last failure ending \
             {last_failure:.2} s after the kill",
            now.restarts,
            window.len(),
            failed.len()
        );
        assert!(
            failed_after.is_empty(),
            "{name}: requests failed after traffic was back: {failed_after:?}"
        );
        report.push((name, outage, failed.len()));
    }
    let samples = requests.stop();
    println!(
        "request loop: {} requests, {} failed; {:?}",
        samples.len(),
        samples.iter().filter(|s| !s.ok()).count(),
        tally(&samples)
    );
    let out = w.vnfctl(&format!("status --state {}", w.state.display()));
    let status = text(&out);
    println!("{}", status.trim_end());
    for (name, _) in INSTANCES {
        assert!(
            status.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.first() == Some(&name) && f.get(2) == Some(&"running") && f.get(4) == Some(&"1")
            }),
            "vnfctl status: {name} should be running with 1 restart:\n{status}"
        );
    }
    assert!(
        out.status.success(),
        "vnfctl status after the restarts:\n{status}"
    );
    eprintln!("{TEST}: {report:?} in {:.1?}", t0.elapsed());
}
