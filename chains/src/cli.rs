//! What each `vnfctl` subcommand does (main.rs only parses the command line).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use overlay_io::daemon::Diagnostic;

use crate::manifest::{Kind, MANIFEST, Manifest};
use crate::plan::{self, Options, Plan};
use crate::{admin_client, apply, probe, spec, supervise};

/// Where state directories live by default: `.vnfctl/TENANT` under the current directory.
pub const STATE_ROOT: &str = ".vnfctl";

/// Read a chain file (bounded: a chain file is small).
pub fn read_chain(file: &Path) -> anyhow::Result<String> {
    let meta =
        std::fs::metadata(file).with_context(|| format!("{}: cannot read", file.display()))?;
    if meta.len() > spec::MAX_FILE_BYTES as u64 {
        bail!(
            "{}: {} bytes: a chain file may have at most {}",
            file.display(),
            meta.len(),
            spec::MAX_FILE_BYTES
        );
    }
    std::fs::read_to_string(file).with_context(|| format!("{}: cannot read", file.display()))
}

fn print_diagnostics(diagnostics: &[Diagnostic]) {
    for d in diagnostics {
        eprintln!("{d}");
    }
    let n = diagnostics.len();
    eprintln!("{n} problem{} found", if n == 1 { "" } else { "s" });
}

/// Plan `file`, printing its problems if it has any.
pub fn plan_file(file: &Path, scrape_interval: &str) -> anyhow::Result<Option<Plan>> {
    let text = read_chain(file)?;
    let options = Options {
        scrape_interval: scrape_interval.to_string(),
    };
    match plan::plan(file, &text, &options) {
        Ok(plan) => Ok(Some(plan)),
        Err(diagnostics) => {
            print_diagnostics(&diagnostics);
            Ok(None)
        }
    }
}

/// `vnfctl validate FILE...`.
pub fn validate(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    for file in files {
        match plan_file(file, "15s")? {
            Some(plan) => {
                let (mut routers, mut firewalls, mut lbs) = (0, 0, 0);
                for i in &plan.manifest.instances {
                    match i.kind {
                        crate::manifest::Kind::Router => routers += 1,
                        crate::manifest::Kind::Firewall => firewalls += 1,
                        crate::manifest::Kind::Lb => lbs += 1,
                    }
                }
                println!(
                    "{}: ok: tenant {}, instances: {routers} router, {firewalls} firewall, {lbs} lb; transit segments: {}",
                    file.display(),
                    plan.manifest.tenant,
                    plan.transit_links.len()
                );
            }
            None => ok = false,
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Write `plan` into `dir`: every file, atomically each; files of instances the previous
/// plan there had and this one has not are removed.
pub fn write_plan(plan: &Plan, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let old = Manifest::read(dir).ok();
    let files = plan.files();
    for (name, text) in &files {
        write_atomic(&dir.join(name), text)?;
    }
    if let Some(old) = old {
        for i in &old.instances {
            if !files.iter().any(|(n, _)| *n == i.config) {
                let _ = std::fs::remove_file(dir.join(&i.config));
            }
        }
    }
    Ok(())
}

/// Write a file by renaming a temporary one over it, so a reader (a VNF reloading) never
/// sees half of it.
pub fn write_atomic(file: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = file.with_extension("tmp~");
    std::fs::write(&tmp, text).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("{}: cannot write", file.display()))
}

/// `vnfctl plan FILE`.
pub fn plan(
    file: &Path,
    out: Option<&Path>,
    scrape_interval: &str,
    stdout: bool,
) -> anyhow::Result<ExitCode> {
    let Some(plan) = plan_file(file, scrape_interval)? else {
        return Ok(ExitCode::FAILURE);
    };
    if stdout {
        for (name, text) in plan.files() {
            println!("--- {name}");
            print!("{text}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let dir = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(format!("plan-{}", plan.manifest.tenant)));
    write_plan(&plan, &dir)?;
    print!("{}", plan.summary());
    println!(
        "wrote {} files to {} ({MANIFEST}, one config per instance, prometheus.yml)",
        plan.files().len(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The state directory: given, or `.vnfctl/TENANT` of the chain file, or the only one
/// under `.vnfctl`.
pub fn resolve_state(file: Option<&Path>, state: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(s) = state {
        return Ok(s);
    }
    if let Some(file) = file {
        let text = read_chain(file)?;
        let (spec, _) = spec::parse(file, &text);
        if spec.tenant.is_empty() {
            bail!("{}: no tenant name in it: give --state", file.display());
        }
        return Ok(Path::new(STATE_ROOT).join(spec.tenant));
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(STATE_ROOT)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    match entries.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "no chain is running from this directory (no {STATE_ROOT}/): give the chain file or --state"
        ),
        _ => bail!(
            "several chains in {STATE_ROOT}/ ({}): give the chain file or --state",
            entries
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A Prometheus duration for `--scrape-interval`: a number and a unit (`ms`, `s`, `m`,
/// `h`), e.g. `15s` — checked here, or Prometheus would refuse the generated file.
pub fn parse_interval(s: &str) -> Result<String, String> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    let ok = !number.is_empty()
        && number.parse::<u32>().is_ok_and(|n| n > 0)
        && ["ms", "s", "m", "h"].contains(&unit);
    ok.then(|| s.to_string())
        .ok_or_else(|| format!("`{s}`: write a number and ms, s, m or h, e.g. 15s"))
}

/// Options of `up` that say how to run the instances.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The state directory (default .vnfctl/TENANT).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Where vnf-router, vnf-firewall and vnf-lb are (default: beside vnfctl, then PATH).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Log level of the instances (their --log-level).
    #[arg(long)]
    pub log_level: Option<String>,
    /// Scrape interval written into prometheus.yml.
    #[arg(long, default_value = "15s", value_parser = parse_interval)]
    pub scrape_interval: String,
}

fn supervise_options(state: PathBuf, run: &RunArgs) -> supervise::Options {
    supervise::Options {
        state,
        bin_dir: run.bin_dir.clone(),
        log_level: run.log_level.clone(),
    }
}

/// `vnfctl up FILE`.
pub fn up(
    file: &Path,
    run: &RunArgs,
    foreground: bool,
    wait: Duration,
) -> anyhow::Result<ExitCode> {
    let Some(plan) = plan_file(file, &run.scrape_interval)? else {
        return Ok(ExitCode::FAILURE);
    };
    let state = run
        .state
        .clone()
        .unwrap_or_else(|| Path::new(STATE_ROOT).join(&plan.manifest.tenant));
    if let Some(pid) = supervise::is_running(&state) {
        bail!(
            "tenant {} is already up (supervisor pid {pid}, state {}): use `vnfctl apply` to change it or `vnfctl down` first",
            plan.manifest.tenant,
            state.display()
        );
    }
    // Every instance's binary must exist before anything starts.
    for kind in plan::kinds() {
        if plan.manifest.instances.iter().any(|i| i.kind == kind) {
            supervise::find_binary(kind.binary(), run.bin_dir.as_deref())?;
        }
    }
    write_plan(&plan, &supervise::plan_dir(&state))?;
    print!("{}", plan.summary());
    let options = supervise_options(state.clone(), run);
    if foreground {
        println!(
            "running in the foreground (Ctrl-C stops the chain); logs in {}",
            state.join("logs").display()
        );
        supervise::run_foreground(&options)?;
        return Ok(ExitCode::SUCCESS);
    }
    let started = Instant::now();
    supervise::start_detached(&options, &["supervise".to_string()], wait)?;
    println!(
        "tenant {} is up: {} instances ready in {:.1}s; state in {} (`vnfctl status`, `vnfctl down`)",
        plan.manifest.tenant,
        plan.manifest.instances.len(),
        started.elapsed().as_secs_f64(),
        state.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `vnfctl down`.
pub fn down(state: &Path) -> anyhow::Result<ExitCode> {
    if supervise::stop(state, Duration::from_secs(15))? {
        println!("stopped the chain in {}", state.display());
    } else {
        println!("no chain was running in {}", state.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `vnfctl supervise` (what `up` runs in the background).
pub fn supervise(
    state: PathBuf,
    bin_dir: Option<PathBuf>,
    log_level: Option<String>,
) -> anyhow::Result<ExitCode> {
    supervise::run_foreground(&supervise::Options {
        state,
        bin_dir,
        log_level,
    })?;
    Ok(ExitCode::SUCCESS)
}

/// One instance's line of `vnfctl status`: readiness and key counters from its admin
/// endpoint.
fn instance_counters(admin: SocketAddr, kind: Kind) -> (String, String) {
    let timeout = Duration::from_millis(500);
    let ready = match admin_client::get(admin, "/readyz", timeout) {
        Ok((200, _)) => "ready",
        Ok(_) => "not ready",
        Err(_) => "no answer",
    };
    let Ok((200, metrics)) = admin_client::get(admin, "/metrics", timeout) else {
        return (ready.into(), "-".into());
    };
    let sum = |name: &str| admin_client::metric_sum(&metrics, name, &[]).unwrap_or(0.0);
    let mut out = format!(
        "rx {} tx {} drops {}",
        sum("vnf_port_rx_packets_total"),
        sum("vnf_port_tx_packets_total"),
        sum("vnf_drops_total")
    );
    match kind {
        Kind::Router => {
            let _ = write!(out, " nat_sessions {}", sum("vnf_nat_sessions"));
        }
        Kind::Firewall => {
            let _ = write!(out, " connections {}", sum("vnf_conntrack_connections"));
        }
        Kind::Lb => {
            let total = metrics
                .lines()
                .filter(|l| l.starts_with("vnf_lb_backend_up{"))
                .count();
            let _ = write!(
                out,
                " backends_up {}/{total} connections {}",
                sum("vnf_lb_backend_up"),
                sum("vnf_lb_backend_connections_active")
            );
        }
    }
    (ready.into(), out)
}

/// `vnfctl status`.
pub fn status(state: &Path) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::read(&supervise::plan_dir(state))
        .with_context(|| format!("no chain planned in {} (run `vnfctl up`)", state.display()))?;
    let running = supervise::is_running(state);
    let status = supervise::read_status(state).ok();
    match running {
        Some(pid) => println!(
            "tenant {}: supervisor pid {pid}, state {}",
            manifest.tenant,
            state.display()
        ),
        None => println!(
            "tenant {}: not running (state {})",
            manifest.tenant,
            state.display()
        ),
    }
    println!(
        "{:<14} {:<9} {:<9} {:>8} {:>8}  {:<10} {:<21} counters",
        "INSTANCE", "KIND", "PROCESS", "PID", "RESTARTS", "HEALTH", "ADMIN"
    );
    let mut healthy = running.is_some();
    for i in &manifest.instances {
        let s = status
            .as_ref()
            .and_then(|s| s.instances.iter().find(|x| x.name == i.name));
        let (process, pid, restarts) = match (running, s) {
            (Some(_), Some(s)) => (
                s.state.to_string(),
                s.pid.map_or("-".into(), |p| p.to_string()),
                s.restarts.to_string(),
            ),
            _ => ("stopped".into(), "-".into(), "-".into()),
        };
        let (health, counters) = if running.is_some() {
            instance_counters(i.admin, i.kind)
        } else {
            ("-".into(), "-".into())
        };
        healthy &= health == "ready";
        println!(
            "{:<14} {:<9} {:<9} {:>8} {:>8}  {:<10} {:<21} {counters}",
            i.name,
            i.kind.name(),
            process,
            pid,
            restarts,
            health,
            i.admin.to_string()
        );
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `vnfctl apply FILE`.
pub fn apply(
    file: &Path,
    state: Option<PathBuf>,
    dry_run: bool,
    scrape_interval: &str,
) -> anyhow::Result<ExitCode> {
    let Some(plan) = plan_file(file, scrape_interval)? else {
        println!("nothing changed");
        return Ok(ExitCode::FAILURE);
    };
    let state = state.unwrap_or_else(|| Path::new(STATE_ROOT).join(&plan.manifest.tenant));
    let outcome = apply::apply(&plan, &state, dry_run, &mut std::io::stdout())?;
    Ok(if outcome {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Options of `vnfctl probe`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// The chain file (for the network's VNI, subnet, gateway and VTEPs).
    pub file: PathBuf,
    /// The network to join.
    #[arg(long)]
    pub network: String,
    /// This probe's VTEP address: one of the network's `vteps`.
    #[arg(long)]
    pub vtep: Ipv4Addr,
    /// The synthetic host's address on the network.
    #[arg(long)]
    pub address: Ipv4Addr,
    /// Its default gateway (default: the address of the routed function on the network,
    /// else the network's gateway).
    #[arg(long)]
    pub gateway: Option<Ipv4Addr>,
    /// What to do.
    #[command(subcommand)]
    pub action: ProbeAction,
}

/// What a probe does.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ProbeAction {
    /// ICMP echo; exit 1 if no reply came.
    Ping {
        /// The address to ping.
        target: Ipv4Addr,
        /// How many echo requests.
        #[arg(long, default_value_t = 3)]
        count: u32,
        /// Seconds to wait for each reply.
        #[arg(long, default_value_t = 2.0)]
        timeout: f64,
    },
    /// A TCP handshake: `open`, `refused` (RST) or `filtered` (no answer); exit 0 only for
    /// `open` (or for the state given with --expect).
    Tcp {
        /// ADDRESS:PORT.
        target: SocketAddrV4,
        /// Seconds to wait.
        #[arg(long, default_value_t = 2.0)]
        timeout: f64,
        /// The outcome that makes the exit status 0: open, refused or filtered.
        #[arg(long, default_value = "open")]
        expect: String,
    },
    /// HTTP GETs; prints each status line and a tally of the bodies; exit 1 if any failed.
    Http {
        /// http://ADDRESS[:PORT]/PATH.
        url: String,
        /// How many requests, one after another.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Seconds to wait for each.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
        /// Print only the tally.
        #[arg(long)]
        quiet: bool,
    },
    /// Serve HTTP until SIGINT/SIGTERM: every request gets 200 and "served by NAME ADDRESS".
    Serve {
        /// The port.
        #[arg(long, default_value_t = 80)]
        port: u16,
        /// The name in the body (default: the address).
        #[arg(long)]
        name: Option<String>,
    },
}

/// The synthetic host a probe runs: the network's facts from the chain file.
fn probe_host(args: &ProbeArgs) -> anyhow::Result<probe::SyntheticHost> {
    let text = read_chain(&args.file)?;
    let (spec, diags) = spec::parse(&args.file, &text);
    if !diags.is_empty() {
        print_diagnostics(&diags.sorted());
        bail!("{}: fix the chain file first", args.file.display());
    }
    let Some((_, net)) = spec.networks.iter().find(|(_, n)| n.name == args.network) else {
        bail!(
            "no network `{}` in {} (networks: {})",
            args.network,
            args.file.display(),
            spec.networks
                .iter()
                .map(|(_, n)| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let Some(vni) = net.vni else {
        bail!(
            "network `{}` is external: a probe joins overlay (`vni`) networks",
            net.name
        );
    };
    let vni = u32::try_from(vni)
        .ok()
        .filter(|v| (1..=0xff_ffff).contains(v))
        .with_context(|| format!("network `{}`: VNI {vni} is outside 1..=16777215", net.name))?;
    let subnet: ipnetwork::Ipv4Network = net
        .subnet
        .parse()
        .with_context(|| format!("network `{}`: bad subnet", net.name))?;
    if !subnet.contains(args.address) {
        bail!(
            "{} is outside network `{}`'s subnet {subnet}",
            args.address,
            net.name
        );
    }
    if !net.vteps.contains(&args.vtep) {
        bail!(
            "{} is not one of network `{}`'s vteps ({}): the functions would not flood to it",
            args.vtep,
            net.name,
            net.vteps
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // The network's functions are where its frames go; its other hypervisors too.
    let mut peers: Vec<Ipv4Addr> = net
        .vteps
        .iter()
        .copied()
        .filter(|v| *v != args.vtep)
        .collect();
    let mut routed_here = None;
    for f in spec.functions_on(&net.name) {
        peers.push(f.common.host);
        if routed_here.is_none() {
            routed_here = f.common.addresses.get(&net.name).copied();
        }
    }
    let gateway = args.gateway.or(routed_here).or(net.gateway);
    let mtu = net
        .mtu
        .unwrap_or(spec.underlay.mtu.saturating_sub(plan::VXLAN_OVERHEAD));
    let host_spec = probe::HostSpec {
        vtep: args.vtep,
        vxlan_port: spec.underlay.port,
        vni,
        peers,
        mac: probe::derived_mac(args.address),
        address: ipnetwork::Ipv4Network::new(args.address, subnet.prefix())?,
        gateway,
        mtu: mtu as usize,
    };
    probe::SyntheticHost::new(host_spec)
        .with_context(|| format!("cannot bind VTEP {}:{}", args.vtep, spec.underlay.port))
}

fn parse_url(url: &str) -> anyhow::Result<(SocketAddrV4, String, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("`{url}`: write http://ADDRESS[:PORT]/PATH"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let target = match authority.parse::<SocketAddrV4>() {
        Ok(a) => a,
        Err(_) => SocketAddrV4::new(
            authority
                .parse()
                .with_context(|| format!("`{authority}`: an IPv4 address, with :PORT or not"))?,
            80,
        ),
    };
    Ok((target, authority.to_string(), path))
}

/// `vnfctl probe`.
pub fn probe(args: &ProbeArgs) -> anyhow::Result<ExitCode> {
    let secs = |s: f64| Duration::from_secs_f64(s.clamp(0.01, 3600.0));
    let mut host = probe_host(args)?;
    match &args.action {
        ProbeAction::Ping {
            target,
            count,
            timeout,
        } => {
            let report = host.ping(*target, *count, Duration::from_millis(200), secs(*timeout));
            for (k, rtt) in report.rtts.iter().enumerate() {
                println!(
                    "reply from {target}: seq={k} time={:.2} ms",
                    rtt.as_secs_f64() * 1e3
                );
            }
            println!(
                "{target}: {} sent, {} received{}",
                report.sent,
                report.received,
                report.avg_rtt().map_or(String::new(), |r| format!(
                    ", average {:.2} ms",
                    r.as_secs_f64() * 1e3
                ))
            );
            Ok(if report.received > 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        ProbeAction::Tcp {
            target,
            timeout,
            expect,
        } => {
            if !["open", "refused", "filtered"].contains(&expect.as_str()) {
                bail!("--expect {expect}: use open, refused or filtered");
            }
            let outcome = match host.tcp_connect(*target, secs(*timeout)) {
                Ok(t) => {
                    println!("{target}: open (handshake {:.2} ms)", t.as_secs_f64() * 1e3);
                    "open"
                }
                Err(probe::ProbeError::Refused(_)) => {
                    println!("{target}: refused (RST)");
                    "refused"
                }
                Err(probe::ProbeError::Timeout(_)) => {
                    println!("{target}: filtered (no answer in {timeout}s)");
                    "filtered"
                }
                Err(e) => bail!("{target}: {e}"),
            };
            Ok(if outcome == expect {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        ProbeAction::Http {
            url,
            count,
            timeout,
            quiet,
        } => {
            let (target, authority, path) = parse_url(url)?;
            let mut tally: BTreeMap<String, u32> = BTreeMap::new();
            let mut failed = 0;
            for k in 0..*count {
                match host.http_get(target, &authority, &path, secs(*timeout)) {
                    Ok(r) => {
                        let body = String::from_utf8_lossy(&r.body).trim().to_string();
                        if !quiet {
                            println!(
                                "{k:>4}: {} {:.1} ms  {body}",
                                r.status,
                                r.elapsed.as_secs_f64() * 1e3
                            );
                        }
                        *tally.entry(format!("{} {body}", r.status)).or_default() += 1;
                    }
                    Err(e) => {
                        failed += 1;
                        if !quiet {
                            println!("{k:>4}: failed: {e}");
                        }
                    }
                }
            }
            println!(
                "{count} requests to {url}: {} answered, {failed} failed",
                count - failed
            );
            for (body, n) in &tally {
                println!("  {n:>5}  {body}");
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        ProbeAction::Serve { port, name } => {
            static STOP: AtomicBool = AtomicBool::new(false);
            extern "C" fn on_signal(_: libc::c_int) {
                STOP.store(true, Ordering::SeqCst);
            }
            for sig in [libc::SIGINT, libc::SIGTERM] {
                // SAFETY: installing a handler that only stores to an atomic, which is
                // async-signal-safe.
                unsafe {
                    libc::signal(sig, on_signal as *const () as libc::sighandler_t);
                }
            }
            let name = name.clone().unwrap_or_else(|| args.address.to_string());
            let body = format!("served by {name} {}\n", args.address);
            println!(
                "{name}: serving HTTP on {}:{port} (VTEP {}, network {})",
                args.address, args.vtep, args.network
            );
            let served = host.serve_http(*port, &body, &STOP)?;
            println!("{name}: served {served} requests");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `vnfctl image FILE --out DIR`: VM images of the chain's kinds and a seed per instance.
pub fn image(
    file: &Path,
    out: PathBuf,
    bin_dir: Option<PathBuf>,
    cache: Option<PathBuf>,
    qcow2: bool,
) -> anyhow::Result<ExitCode> {
    let Some(plan) = plan_file(file, "15s")? else {
        return Ok(ExitCode::FAILURE);
    };
    let options = crate::image::ImageOptions {
        out,
        bin_dir,
        cache: cache.unwrap_or_else(crate::image::ImageOptions::default_cache),
        qcow2,
        source_date_epoch: crate::image::ImageOptions::source_date_epoch_from_env()?,
    };
    let started = Instant::now();
    let report = crate::image::build(&plan, &options, &mut std::io::stderr())?;
    print!("{report}");
    println!(
        "built {} files in {} in {:.1}s",
        report.outputs.len(),
        options.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
