//! The load balancer's host stack: a smoltcp interface on its own thread, where the L7
//! services terminate client connections ([`crate::proxy`]) and the health checks
//! ([`crate::health`]) and the proxy's backend connections start.
//!
//! The datapath hands it the packets for L7 services and for the host ports
//! ([`crate::config::HOST_PORTS`]) and routes what it sends ([`overlay_io::host`]). The
//! interface accepts any destination address (smoltcp's AnyIP with a default route via its
//! own address), so that listeners bind to the VIPs and connections leave from the address
//! of the interface toward each backend.
//!
//! One thread runs everything here, in a loop: poll the interface, move bytes between
//! sockets and state machines, start due health checks, sleep until the next packet or
//! timer. Sans-IO state machines keep it simple: each holds its own buffers and timers.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use smoltcp::iface::{
    Config as IfaceConfig, Interface, PollIngressSingleResult, SocketHandle, SocketSet,
};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint};

use overlay_io::host::{HostDevice, HostLink};

use crate::balancer::Shared;
use crate::config::{Affinity, HOST_PORTS, LbSettings, ServiceKind};
use crate::health::{self, CheckCfg, Outcome, Probe, Schedule, Tracker, Transition};
use crate::maglev;
use crate::proxy::{Event, ProxyConn};

/// Listening sockets kept open per L7 service: the accept backlog.
const BACKLOG: usize = 32;
/// Socket buffers, each direction.
const SOCKET_BUF: usize = 32 * 1024;
/// The longest the thread sleeps without a packet or timer.
const IDLE: Duration = Duration::from_millis(100);
/// How long a closing socket may linger before it is aborted.
const LINGER: Duration = Duration::from_secs(30);
/// Client handshakes in progress, all L7 services together; beyond, the oldest is dropped.
const MAX_HALF_OPEN: usize = 1024;
/// Packets the host stack takes in before it sends (a bound on one pass).
const INGRESS_BURST: usize = 256;
/// How long a client handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The L7 and health-check metrics, updated by the host thread.
#[derive(Debug, Clone)]
pub struct HostMetrics {
    /// `vnf_lb_http_responses_total{service,pool,backend,class}`.
    pub responses: IntCounterVec,
    /// `vnf_lb_request_duration_seconds{service}`.
    pub latency: HistogramVec,
    /// `vnf_lb_tls_handshakes_total{service,result}`.
    pub tls: IntCounterVec,
    /// `vnf_lb_proxy_connections{service}`.
    pub proxy_active: IntGaugeVec,
    /// `vnf_lb_proxy_connections_total{service}`.
    pub proxy_total: IntCounterVec,
    /// `vnf_lb_proxy_bytes_total{service,direction}`.
    pub proxy_bytes: IntCounterVec,
    /// `vnf_lb_health_checks_total{pool,backend,result}`.
    pub checks: IntCounterVec,
    /// `vnf_lb_proxy_refused_total{service}`: connections over `max_proxy_connections`.
    pub refused: IntCounterVec,
    /// `vnf_lb_proxy_half_open_dropped_total{service}`: handshakes dropped (too many, or
    /// too slow).
    pub half_open_dropped: IntCounterVec,
}

impl HostMetrics {
    /// Create and register.
    pub fn register(r: &Registry) -> prometheus::Result<HostMetrics> {
        let m = HostMetrics {
            responses: IntCounterVec::new(
                Opts::new(
                    "vnf_lb_http_responses_total",
                    "HTTP responses sent to clients by L7 services, by status class; backend is empty for answers the proxy made itself (503 without a backend, 400 for a bad request).",
                ),
                &["service", "pool", "backend", "class"],
            )?,
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "vnf_lb_request_duration_seconds",
                    "From a request's head received to its response's head sent, L7 services.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ]),
                &["service"],
            )?,
            tls: IntCounterVec::new(
                Opts::new(
                    "vnf_lb_tls_handshakes_total",
                    "TLS handshakes of HTTPS services, by result (ok, failed).",
                ),
                &["service", "result"],
            )?,
            proxy_active: IntGaugeVec::new(
                Opts::new(
                    "vnf_lb_proxy_connections",
                    "Open client connections of L7 services.",
                ),
                &["service"],
            )?,
            proxy_total: IntCounterVec::new(
                Opts::new(
                    "vnf_lb_proxy_connections_total",
                    "Client connections accepted by L7 services.",
                ),
                &["service"],
            )?,
            proxy_bytes: IntCounterVec::new(
                Opts::new(
                    "vnf_lb_proxy_bytes_total",
                    "Bytes of HTTP messages relayed by L7 services: `in` from clients, `out` to clients.",
                ),
                &["service", "direction"],
            )?,
            checks: IntCounterVec::new(
                Opts::new(
                    "vnf_lb_health_checks_total",
                    "Health checks by result (ok, failed).",
                ),
                &["pool", "backend", "result"],
            )?,
            refused: IntCounterVec::new(
                Opts::new(
                    "vnf_lb_proxy_refused_total",
                    "Client connections of L7 services refused because `lb.max_proxy_connections` were open.",
                ),
                &["service"],
            )?,
            half_open_dropped: IntCounterVec::new(
                Opts::new(
                    "vnf_lb_proxy_half_open_dropped_total",
                    "Client handshakes of L7 services dropped unfinished: more than 1024 at once (oldest first) or slower than 5 s (a SYN flood shows here).",
                ),
                &["service"],
            )?,
        };
        r.register(Box::new(m.responses.clone()))?;
        r.register(Box::new(m.latency.clone()))?;
        r.register(Box::new(m.tls.clone()))?;
        r.register(Box::new(m.proxy_active.clone()))?;
        r.register(Box::new(m.proxy_total.clone()))?;
        r.register(Box::new(m.proxy_bytes.clone()))?;
        r.register(Box::new(m.checks.clone()))?;
        r.register(Box::new(m.refused.clone()))?;
        r.register(Box::new(m.half_open_dropped.clone()))?;
        Ok(m)
    }
}

/// What the host thread runs with; swapped on reload.
#[derive(Debug)]
pub struct HostCfg {
    /// Pools and services.
    pub lb: LbSettings,
    /// TLS for HTTPS services.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Health of one backend as the host thread sees it (`GET /state/backends`).
#[derive(Debug, Clone)]
pub struct BackendHealth {
    /// Pool.
    pub pool: String,
    /// Backend.
    pub backend: String,
    /// Address.
    pub addr: SocketAddrV4,
    /// Up.
    pub up: bool,
    /// The last failure, if the last check failed.
    pub last_failure: Option<String>,
}

/// The handle the app keeps on the host thread.
#[derive(Debug)]
pub struct HostStack {
    cfg: Arc<ArcSwap<HostCfg>>,
    generation: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    health: Arc<Mutex<Vec<BackendHealth>>>,
    link: Arc<HostLink>,
}

impl HostStack {
    /// Start the host thread on `link` for the function `shared`.
    pub fn start(
        cfg: HostCfg,
        link: Arc<HostLink>,
        shared: Arc<Shared>,
        addr: Ipv4Addr,
        metrics: HostMetrics,
    ) -> std::io::Result<HostStack> {
        let cfg = Arc::new(ArcSwap::from_pointee(cfg));
        let generation = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let health = Arc::new(Mutex::new(Vec::new()));
        let mut host = Host::new(
            cfg.clone(),
            generation.clone(),
            link.clone(),
            shared,
            addr,
            metrics,
            health.clone(),
        );
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vnf-lb-host".into())
            .spawn(move || host.run(&s))?;
        Ok(HostStack {
            cfg,
            generation,
            stop,
            thread: Mutex::new(Some(thread)),
            health,
            link,
        })
    }

    /// Apply a new config: listeners, checks, L7 services.
    pub fn reload(&self, cfg: HostCfg) {
        self.cfg.store(Arc::new(cfg));
        self.generation.fetch_add(1, Relaxed);
        // Wake the thread: a packet-less wakeup is harmless.
        self.link.wake_host();
    }

    /// Backends' health as last checked.
    pub fn health(&self) -> Vec<BackendHealth> {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stop the thread and join it.
    pub fn shutdown(&self) {
        self.stop.store(true, Relaxed);
        self.link.wake_host();
        if let Some(t) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = t.join();
        }
    }
}

impl Drop for HostStack {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A proxied client connection.
#[derive(Debug)]
struct Conn {
    /// The config the connection was accepted under: its service and pool indices refer to
    /// it (a reload may reorder both).
    cfg: Arc<HostCfg>,
    service: usize,
    name: String,
    /// Names of the backends this connection used, by the id given to the proxy.
    backends: BTreeMap<usize, (String, String)>,
    conn: ProxyConn,
    client: SocketHandle,
    client_addr: SocketAddrV4,
    client_eof: bool,
    backend: Option<BackendSock>,
}

#[derive(Debug)]
struct BackendSock {
    handle: SocketHandle,
    backend: usize,
    port: u16,
    connected: bool,
    eof: bool,
}

/// A client connection whose handshake has not completed.
#[derive(Debug)]
struct HalfOpen {
    cfg: Arc<HostCfg>,
    service: usize,
    handle: SocketHandle,
    since: Instant,
}

/// A health check in flight.
#[derive(Debug)]
struct Check {
    pool: usize,
    backend: usize,
    handle: SocketHandle,
    port: u16,
    probe: Probe,
    connected: bool,
    eof: bool,
}

/// Health-check state of one backend, kept by name across reloads.
#[derive(Debug)]
struct Checked {
    tracker: Tracker,
    checked_once: bool,
    schedule: Schedule,
    in_flight: bool,
    last_failure: Option<String>,
}

struct Host {
    cfg: Arc<ArcSwap<HostCfg>>,
    generation: Arc<AtomicU64>,
    seen: u64,
    current: Arc<HostCfg>,
    link: Arc<HostLink>,
    shared: Arc<Shared>,
    dev: HostDevice,
    iface: Interface,
    sockets: SocketSet<'static>,
    epoch: Instant,
    /// Listening sockets per service index.
    listeners: Vec<Vec<SocketHandle>>,
    half_open: VecDeque<HalfOpen>,
    conns: Vec<Conn>,
    checks: Vec<Check>,
    checked: BTreeMap<(String, String), Checked>,
    closing: Vec<(SocketHandle, Instant, Option<u16>)>,
    ports_used: HashSet<u16>,
    next_port: u16,
    metrics: HostMetrics,
    health_out: Arc<Mutex<Vec<BackendHealth>>>,
    tls_client: Arc<rustls::ClientConfig>,
    events: Vec<Event>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("conns", &self.conns.len())
            .field("checks", &self.checks.len())
            .finish_non_exhaustive()
    }
}

fn ts(epoch: Instant, now: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(now.saturating_duration_since(epoch).as_micros() as i64)
}

fn new_socket() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; SOCKET_BUF]),
        tcp::SocketBuffer::new(vec![0; SOCKET_BUF]),
    );
    s.set_nagle_enabled(false);
    s.set_ack_delay(None);
    s
}

fn class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

impl Host {
    fn new(
        cfg: Arc<ArcSwap<HostCfg>>,
        generation: Arc<AtomicU64>,
        link: Arc<HostLink>,
        shared: Arc<Shared>,
        addr: Ipv4Addr,
        metrics: HostMetrics,
        health_out: Arc<Mutex<Vec<BackendHealth>>>,
    ) -> Host {
        let epoch = Instant::now();
        let mut dev = HostDevice::new(link.clone());
        let mut icfg = IfaceConfig::new(HardwareAddress::Ip);
        // Sequence numbers and the first local port: a seed that differs between runs, so
        // a restarted load balancer does not reuse its predecessor's connections' ports
        // and sequence numbers, which backends still hold in TIME_WAIT.
        let seed = run_seed();
        icfg.random_seed = seed;
        let mut iface = Interface::new(icfg, &mut dev, ts(epoch, epoch));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(addr), 32));
        });
        // AnyIP: every destination routed via our own address is ours (the VIPs).
        let _ = iface.routes_mut().add_default_ipv4_route(addr);
        iface.set_any_ip(true);
        let current = cfg.load_full();
        let mut h = Host {
            cfg,
            generation,
            seen: u64::MAX,
            current,
            link,
            shared,
            dev,
            iface,
            sockets: SocketSet::new(Vec::new()),
            epoch,
            listeners: Vec::new(),
            half_open: VecDeque::new(),
            conns: Vec::new(),
            checks: Vec::new(),
            checked: BTreeMap::new(),
            closing: Vec::new(),
            ports_used: HashSet::new(),
            // RFC 6056 §3.3.1-style: start at a random port of the range, then go up.
            next_port: HOST_PORTS.start()
                + (seed % (u64::from(*HOST_PORTS.end() - *HOST_PORTS.start()) + 1)) as u16,
            metrics,
            health_out,
            tls_client: crate::tls::insecure_client_config(),
            events: Vec::new(),
        };
        h.apply(epoch);
        h
    }

    /// Take a new config: listeners per L7 service, checks per backend.
    fn apply(&mut self, now: Instant) {
        self.seen = self.generation.load(Relaxed);
        self.current = self.cfg.load_full();
        // Listeners: close them all and listen again (established connections keep
        // their service's settings until they end).
        for l in std::mem::take(&mut self.listeners) {
            for h in l {
                self.sockets.remove(h);
            }
        }
        let lb = &self.current.lb;
        for s in &lb.services {
            let mut hs = Vec::new();
            if s.is_l7() {
                for _ in 0..BACKLOG {
                    let mut sock = new_socket();
                    if sock
                        .listen(IpListenEndpoint {
                            addr: Some(IpAddress::Ipv4(s.vip)),
                            port: s.port,
                        })
                        .is_ok()
                    {
                        hs.push(self.sockets.add(sock));
                    }
                }
            }
            self.listeners.push(hs);
        }
        // Checks: keep the state of backends that stay, by name.
        let mut keep = BTreeMap::new();
        for p in &lb.pools {
            let Some(chk) = &p.check else { continue };
            for (bi, b) in p.backends.iter().enumerate() {
                let key = (p.name.clone(), b.name.clone());
                let c = self.checked.remove(&key).unwrap_or_else(|| Checked {
                    tracker: Tracker::new(chk, false),
                    checked_once: false,
                    schedule: Schedule::new(chk, b.addr, bi, now),
                    in_flight: false,
                    last_failure: None,
                });
                keep.insert(key, c);
            }
        }
        self.checked = keep;
        // Checks in flight for backends that are gone are abandoned.
        let checked = &self.checked;
        let mut gone = Vec::new();
        self.checks.retain(|c| {
            let ok = lb
                .pools
                .get(c.pool)
                .and_then(|p| p.backends.get(c.backend).map(|b| (p, b)))
                .is_some_and(|(p, b)| checked.contains_key(&(p.name.clone(), b.name.clone())));
            if !ok {
                gone.push((c.handle, c.port));
            }
            ok
        });
        for (h, port) in gone {
            self.abort(h, Some(port));
        }
        self.publish_health();
    }

    fn publish_health(&self) {
        let lb = &self.current.lb;
        let mut out = Vec::new();
        for p in &lb.pools {
            for b in &p.backends {
                let c = self.checked.get(&(p.name.clone(), b.name.clone()));
                out.push(BackendHealth {
                    pool: p.name.clone(),
                    backend: b.name.clone(),
                    addr: b.addr,
                    up: c.is_none_or(|c| c.checked_once && c.tracker.is_up()),
                    last_failure: c.and_then(|c| c.last_failure.clone()),
                });
            }
        }
        *self
            .health_out
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = out;
    }

    fn alloc_port(&mut self) -> Option<u16> {
        // Sequential from a random start: ports come back only after the whole range (32768
        // connections), long after TIME_WAIT at rates below ~500 new connections a second.
        let span = u32::from(*HOST_PORTS.end() - *HOST_PORTS.start()) + 1;
        for _ in 0..span {
            let p = self.next_port;
            self.next_port = if p == *HOST_PORTS.end() {
                *HOST_PORTS.start()
            } else {
                p + 1
            };
            if self.ports_used.insert(p) {
                return Some(p);
            }
        }
        None
    }

    fn abort(&mut self, h: SocketHandle, port: Option<u16>) {
        self.sockets.get_mut::<tcp::Socket>(h).abort();
        self.closing.push((h, Instant::now() + LINGER, port));
    }

    fn close(&mut self, h: SocketHandle, port: Option<u16>, now: Instant) {
        self.sockets.get_mut::<tcp::Socket>(h).close();
        self.closing.push((h, now + LINGER, port));
    }

    /// Open a TCP connection from `src` to `dst`.
    fn connect(&mut self, src: Ipv4Addr, dst: SocketAddrV4) -> Option<(SocketHandle, u16)> {
        let port = self.alloc_port()?;
        let mut sock = new_socket();
        let remote = IpEndpoint::new(IpAddress::Ipv4(*dst.ip()), dst.port());
        let local = IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(src)),
            port,
        };
        if sock.connect(self.iface.context(), remote, local).is_err() {
            self.ports_used.remove(&port);
            return None;
        }
        Some((self.sockets.add(sock), port))
    }

    fn run(&mut self, stop: &AtomicBool) {
        let fd: RawFd = self.link.host_fd();
        while !stop.load(Relaxed) {
            let now = Instant::now();
            if self.generation.load(Relaxed) != self.seen {
                self.apply(now);
            }
            self.link.clear_host_wake();
            // Poll, pump, poll again so that what the state machines wrote leaves now.
            for _ in 0..4 {
                self.poll_iface();
                if !self.pump(Instant::now()) {
                    break;
                }
            }
            self.poll_iface();
            let wait = self.next_wakeup(Instant::now());
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd.
            unsafe { libc::poll(&mut p, 1, wait.as_millis().clamp(0, 1000) as i32) };
        }
    }

    /// Run the interface: received packets one at a time, so that a listener taken by a
    /// SYN is replaced before the next packet (smoltcp resets a SYN that finds no
    /// listener: a burst of SYNs would otherwise reset clients), then what is due out.
    fn poll_iface(&mut self) {
        let now = Instant::now();
        let t = ts(self.epoch, now);
        self.iface.poll_maintenance(t);
        for _ in 0..INGRESS_BURST {
            match self
                .iface
                .poll_ingress_single(t, &mut self.dev, &mut self.sockets)
            {
                PollIngressSingleResult::None => break,
                PollIngressSingleResult::PacketProcessed => {}
                PollIngressSingleResult::SocketStateChanged => {
                    self.rearm(now);
                }
            }
        }
        self.iface.poll_egress(t, &mut self.dev, &mut self.sockets);
    }

    fn next_wakeup(&mut self, now: Instant) -> Duration {
        let mut wait = IDLE;
        let t = ts(self.epoch, now);
        if let Some(d) = self.iface.poll_delay(t, &self.sockets) {
            wait = wait.min(Duration::from_micros(d.total_micros()));
        }
        let mut at = |i: Instant| wait = wait.min(i.saturating_duration_since(now));
        for c in &self.conns {
            if let Some(t) = c.conn.poll_timeout() {
                at(t);
            }
        }
        for c in &self.checks {
            at(c.probe.deadline());
        }
        for c in self.checked.values() {
            if !c.in_flight {
                at(c.schedule.next_due());
            }
        }
        if !self.closing.is_empty() {
            wait = wait.min(Duration::from_millis(50));
        }
        wait
    }

    /// One pass over everything; `true` if something moved.
    fn pump(&mut self, now: Instant) -> bool {
        let mut moved = self.accept(now);
        moved |= self.pump_conns(now);
        moved |= self.pump_checks(now);
        self.reap(now);
        moved
    }

    /// Listeners that got a SYN become half-open connections, and a fresh listener takes
    /// each one's place; `true` if any did.
    fn rearm(&mut self, now: Instant) -> bool {
        let mut moved = false;
        let cfg = self.current.clone();
        for (si, hs) in self.listeners.iter_mut().enumerate() {
            let Some(svc) = cfg.lb.services.get(si) else {
                continue;
            };
            for h in hs.iter_mut() {
                if self.sockets.get::<tcp::Socket>(*h).state() == tcp::State::Listen {
                    continue;
                }
                moved = true;
                self.half_open.push_back(HalfOpen {
                    cfg: cfg.clone(),
                    service: si,
                    handle: *h,
                    since: now,
                });
                let mut l = new_socket();
                let _ = l.listen(IpListenEndpoint {
                    addr: Some(IpAddress::Ipv4(svc.vip)),
                    port: svc.port,
                });
                *h = self.sockets.add(l);
            }
        }
        moved
    }

    /// Listeners that got a SYN become half-open connections (a fresh listener takes
    /// their place); half-open connections that complete the handshake become proxied
    /// connections. Half-open ones are bounded in number and age, oldest dropped first, so
    /// that a SYN flood cannot hold every listener or the connection cap.
    fn accept(&mut self, now: Instant) -> bool {
        let mut moved = self.rearm(now);
        while self.half_open.len() > MAX_HALF_OPEN
            || self
                .half_open
                .front()
                .is_some_and(|h| now.saturating_duration_since(h.since) >= HANDSHAKE_TIMEOUT)
        {
            let Some(h) = self.half_open.pop_front() else {
                break;
            };
            if let Some(svc) = h.cfg.lb.services.get(h.service) {
                self.metrics
                    .half_open_dropped
                    .with_label_values(&[&svc.name])
                    .inc();
            }
            self.abort(h.handle, None);
        }
        let mut k = 0;
        while k < self.half_open.len() {
            let h = &self.half_open[k];
            let sock = self.sockets.get_mut::<tcp::Socket>(h.handle);
            match sock.state() {
                tcp::State::SynReceived => {
                    k += 1;
                    continue;
                }
                tcp::State::Closed | tcp::State::TimeWait => {
                    let handle = h.handle;
                    self.half_open.remove(k);
                    self.sockets.remove(handle);
                    continue;
                }
                _ => {}
            }
            moved = true;
            let client = sock.remote_endpoint();
            let Some(h) = self.half_open.remove(k) else {
                break;
            };
            let (
                Some(svc),
                Some(IpEndpoint {
                    addr: IpAddress::Ipv4(a),
                    port,
                }),
            ) = (h.cfg.lb.services.get(h.service), client)
            else {
                self.abort(h.handle, None);
                continue;
            };
            let ServiceKind::L7(http) = &svc.kind else {
                self.abort(h.handle, None);
                continue;
            };
            if self.conns.len() >= h.cfg.lb.max_proxy_connections {
                self.metrics.refused.with_label_values(&[&svc.name]).inc();
                self.abort(h.handle, None);
                continue;
            }
            let tls = if http.https { h.cfg.tls.clone() } else { None };
            self.metrics
                .proxy_total
                .with_label_values(&[&svc.name])
                .inc();
            self.metrics
                .proxy_active
                .with_label_values(&[&svc.name])
                .inc();
            let client = SocketAddrV4::new(a, port);
            self.conns.push(Conn {
                conn: ProxyConn::new(http.clone(), tls, client, now),
                name: svc.name.clone(),
                service: h.service,
                cfg: h.cfg,
                backends: BTreeMap::new(),
                client: h.handle,
                client_addr: client,
                client_eof: false,
                backend: None,
            });
        }
        moved
    }

    fn pump_conns(&mut self, now: Instant) -> bool {
        let mut moved = false;
        let mut i = 0;
        while i < self.conns.len() {
            // Timers first, so that what they write (a 504) leaves in this pass.
            self.conns[i].conn.handle_timeout(now);
            moved |= self.pump_conn(i, now);
            let c = &mut self.conns[i];
            self.events.extend(c.conn.take_events());
            self.record_events(i);
            if self.conns[i].conn.is_done() {
                let c = self.conns.swap_remove(i);
                self.metrics
                    .proxy_active
                    .with_label_values(&[&c.name])
                    .dec();
                self.close(c.client, None, now);
                if let Some(b) = c.backend {
                    self.close(b.handle, Some(b.port), now);
                }
                moved = true;
                continue;
            }
            i += 1;
        }
        moved
    }

    fn record_events(&mut self, i: usize) {
        let c = &self.conns[i];
        let lb = &c.cfg.lb;
        let name = c.name.clone();
        for e in self.events.drain(..) {
            match e {
                Event::Request {
                    pool,
                    backend,
                    status,
                    latency,
                    bytes_in,
                    bytes_out,
                } => {
                    let pname = lb.pools.get(pool).map_or("", |p| p.name.as_str());
                    let bname = backend
                        .and_then(|b| c.backends.get(&b))
                        .map_or("", |(_, b)| b.as_str());
                    self.metrics
                        .responses
                        .with_label_values(&[&name, pname, bname, class(status)])
                        .inc();
                    self.metrics
                        .latency
                        .with_label_values(&[&name])
                        .observe(latency.as_secs_f64());
                    self.metrics
                        .proxy_bytes
                        .with_label_values(&[&name, "in"])
                        .inc_by(bytes_in);
                    self.metrics
                        .proxy_bytes
                        .with_label_values(&[&name, "out"])
                        .inc_by(bytes_out);
                }
                Event::TlsHandshake { ok, .. } => {
                    self.metrics
                        .tls
                        .with_label_values(&[name.as_str(), if ok { "ok" } else { "failed" }])
                        .inc();
                }
                Event::ClientError { status } => {
                    self.metrics
                        .responses
                        .with_label_values(&[&name, "", "", class(status)])
                        .inc();
                }
                Event::Timeout { .. } => {}
            }
        }
    }

    /// Move bytes of one connection; `true` if something moved.
    fn pump_conn(&mut self, i: usize, now: Instant) -> bool {
        let mut moved = false;
        // Client -> proxy.
        let c = &mut self.conns[i];
        let cs = self.sockets.get_mut::<tcp::Socket>(c.client);
        while cs.can_recv() {
            let n = cs
                .recv(|buf| {
                    let n = c.conn.client_recv(buf, now);
                    (n, n)
                })
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            moved = true;
        }
        if !c.client_eof && !cs.may_recv() && cs.state() != tcp::State::SynReceived {
            c.client_eof = true;
            if cs.state() == tcp::State::Closed {
                // Reset by the client.
                c.conn.client_failed(now);
            } else {
                c.conn.client_eof(now);
            }
            moved = true;
        }
        // Proxy -> client.
        let out = c.conn.client_output();
        if !out.is_empty() && cs.can_send() {
            let n = cs.send_slice(out).unwrap_or(0);
            if n > 0 {
                c.conn.client_consumed(n, now);
                moved = true;
            }
        }
        if c.conn.client_should_close()
            && c.conn.client_output().is_empty()
            && cs.state() != tcp::State::Closed
            && cs.may_send()
        {
            cs.close();
        }
        // A backend is wanted.
        if let Some(pool) = c.conn.backend_wanted() {
            moved = true;
            if let Some(b) = self.conns[i].backend.take() {
                self.close(b.handle, Some(b.port), now);
            }
            self.open_backend(i, pool, now);
        }
        let c = &mut self.conns[i];
        let Some(b) = c.backend.as_mut() else {
            return moved;
        };
        let bs = self.sockets.get_mut::<tcp::Socket>(b.handle);
        if !b.connected {
            match bs.state() {
                tcp::State::Established | tcp::State::CloseWait => {
                    b.connected = true;
                    c.conn.backend_connected(b.backend, now);
                    moved = true;
                }
                tcp::State::Closed | tcp::State::TimeWait => {
                    let b = c.backend.take();
                    c.conn.backend_failed(now);
                    if let Some(b) = b {
                        self.ports_used.remove(&b.port);
                        self.sockets.remove(b.handle);
                    }
                    return true;
                }
                _ => return moved,
            }
        }
        while bs.can_recv() {
            let n = bs
                .recv(|buf| {
                    let n = c.conn.backend_recv(buf, now);
                    (n, n)
                })
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            moved = true;
        }
        if !b.eof && !bs.may_recv() {
            b.eof = true;
            if bs.state() == tcp::State::Closed {
                // Reset by the backend.
                c.conn.backend_failed(now);
            } else {
                c.conn.backend_eof(now);
            }
            moved = true;
        }
        let out = c.conn.backend_output();
        if !out.is_empty() && bs.can_send() {
            let n = bs.send_slice(out).unwrap_or(0);
            if n > 0 {
                c.conn.backend_consumed(n, now);
                moved = true;
            }
        }
        if c.conn.backend_should_close() && c.conn.backend_output().is_empty() {
            let b = c.backend.take();
            if let Some(b) = b {
                self.close(b.handle, Some(b.port), now);
            }
            moved = true;
        }
        moved
    }

    fn open_backend(&mut self, i: usize, pool: usize, now: Instant) {
        let c = &self.conns[i];
        let Some(svc) = c.cfg.lb.services.get(c.service) else {
            self.conns[i].conn.backend_unavailable(now);
            return;
        };
        let pool_name = c.cfg.lb.pools.get(pool).map(|p| p.name.clone());
        let client = c.client_addr;
        let hash = match svc.affinity {
            Affinity::ClientIp => maglev::flow_hash((*client.ip()).into(), 0, svc.vip.into(), 0, 0),
            Affinity::None => maglev::flow_hash(
                (*client.ip()).into(),
                client.port(),
                svc.vip.into(),
                svc.port,
                6,
            ),
        };
        // The pool by name in the config the datapath applies (its tables and health),
        // which may be newer than the connection's.
        let chosen = {
            let mut st = self.shared.lock();
            let applied = st.applied().clone();
            applied
                .ext
                .pools
                .iter()
                .position(|p| Some(&p.name) == pool_name.as_ref())
                .and_then(|pi| {
                    let b = st.ext.pick(pi, hash)?;
                    if let Some(slot) = st.ext.backend_slot(pi, b)
                        && let Some(s) = st.ext.backends.get_mut(slot)
                    {
                        s.connections += 1;
                    }
                    let be = &applied.ext.pools[pi].backends[b];
                    Some((b, be.name.clone(), be.source, be.addr))
                })
        };
        let Some((b, bname, source, addr)) = chosen else {
            self.conns[i].conn.backend_unavailable(now);
            return;
        };
        match self.connect(source, addr) {
            Some((handle, port)) => {
                let c = &mut self.conns[i];
                c.backends.insert(b, (pool_name.unwrap_or_default(), bname));
                c.backend = Some(BackendSock {
                    handle,
                    backend: b,
                    port,
                    connected: false,
                    eof: false,
                });
            }
            None => self.conns[i].conn.backend_failed(now),
        }
    }

    fn pump_checks(&mut self, now: Instant) -> bool {
        let mut moved = false;
        // Start due checks.
        let cfg = self.current.clone();
        let mut due = Vec::new();
        for (pi, p) in cfg.lb.pools.iter().enumerate() {
            let Some(chk) = &p.check else { continue };
            for (bi, b) in p.backends.iter().enumerate() {
                // One check at a time per backend; a slot missed meanwhile is skipped.
                if let Some(c) = self.checked.get_mut(&(p.name.clone(), b.name.clone()))
                    && !c.in_flight
                    && c.schedule.poll(now)
                {
                    c.in_flight = true;
                    due.push((pi, bi, chk.clone()));
                }
            }
        }
        for (pi, bi, chk) in due {
            moved = true;
            let be = &cfg.lb.pools[pi].backends[bi];
            let tls = health::needs_tls(&chk.kind).then(|| self.tls_client.clone());
            let mut probe = Probe::new(&chk, be.addr, tls, now);
            if probe.outcome().is_some() {
                // A TLS setup error: nothing to connect.
                self.finish_check(pi, bi, probe.outcome());
                continue;
            }
            match self.connect(be.source, be.addr) {
                Some((handle, port)) => self.checks.push(Check {
                    pool: pi,
                    backend: bi,
                    handle,
                    port,
                    probe,
                    connected: false,
                    eof: false,
                }),
                None => {
                    probe.connect_failed(now);
                    self.finish_check(pi, bi, probe.outcome());
                }
            }
        }
        // Drive the ones in flight.
        let mut i = 0;
        while i < self.checks.len() {
            let c = &mut self.checks[i];
            let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
            if !c.connected {
                match s.state() {
                    tcp::State::Established | tcp::State::CloseWait => {
                        c.connected = true;
                        c.probe.connected(now);
                        moved = true;
                    }
                    tcp::State::Closed | tcp::State::TimeWait => c.probe.connect_failed(now),
                    _ => {}
                }
            }
            if c.connected {
                while s.can_recv() {
                    let n = s
                        .recv(|buf| {
                            let n = c.probe.recv(buf, now);
                            (n, n)
                        })
                        .unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    moved = true;
                }
                if !c.eof && !s.may_recv() {
                    c.eof = true;
                    c.probe.eof(now);
                }
                let out = c.probe.output();
                if !out.is_empty() && s.can_send() {
                    let n = s.send_slice(out).unwrap_or(0);
                    c.probe.consumed(n);
                }
            }
            c.probe.handle_timeout(now);
            if let Some(o) = c.probe.outcome() {
                let c = self.checks.swap_remove(i);
                // A check that is done is closed politely when it succeeded (so that the
                // backend does not log resets), aborted otherwise.
                if matches!(o, Outcome::Up) {
                    self.close(c.handle, Some(c.port), now);
                } else {
                    self.abort(c.handle, Some(c.port));
                }
                self.finish_check(c.pool, c.backend, Some(o));
                moved = true;
                continue;
            }
            i += 1;
        }
        moved
    }

    fn finish_check(&mut self, pool: usize, backend: usize, outcome: Option<Outcome>) {
        let cfg = self.current.clone();
        let (Some(p), Some(o)) = (cfg.lb.pools.get(pool), outcome) else {
            return;
        };
        let Some(b) = p.backends.get(backend) else {
            return;
        };
        let key = (p.name.clone(), b.name.clone());
        let Some(c) = self.checked.get_mut(&key) else {
            return;
        };
        c.in_flight = false;
        let ok = matches!(o, Outcome::Up);
        self.metrics
            .checks
            .with_label_values(&[
                p.name.as_str(),
                b.name.as_str(),
                if ok { "ok" } else { "failed" },
            ])
            .inc();
        c.last_failure = match &o {
            Outcome::Up => None,
            Outcome::Down(f) => Some(f.to_string()),
        };
        // The first result decides at once (a new backend need not wait `rise` checks,
        // nor a dead one `fall`); then rise and fall apply.
        let flip = if c.checked_once {
            c.tracker.record(ok)
        } else {
            c.checked_once = true;
            c.tracker = Tracker::new(p.check.as_ref().unwrap_or(&CheckCfg::default()), ok);
            Some(if ok { Transition::Up } else { Transition::Down })
        };
        let Some(t) = flip else {
            return;
        };
        let up = matches!(t, Transition::Up);
        let changed = {
            let mut st = self.shared.lock();
            let applied = st.applied().clone();
            st.ext.set_health(&applied.ext, &p.name, &b.name, up)
        };
        if changed {
            if up {
                tracing::info!(pool = %p.name, backend = %b.name, address = %b.addr, "backend up");
            } else {
                tracing::warn!(
                    pool = %p.name,
                    backend = %b.name,
                    address = %b.addr,
                    reason = c.last_failure.as_deref().unwrap_or(""),
                    "backend down"
                );
            }
        }
        self.publish_health();
    }

    /// Remove sockets that finished closing, or lingered too long.
    fn reap(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.closing.len() {
            let (h, deadline, port) = self.closing[i];
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            let done = matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait);
            if done || now >= deadline {
                if !done {
                    s.abort();
                }
                self.sockets.remove(h);
                if let Some(p) = port {
                    self.ports_used.remove(&p);
                }
                self.closing.swap_remove(i);
                continue;
            }
            i += 1;
        }
    }
}

/// A seed that differs between runs of the process: the clock's nanoseconds and the pid,
/// mixed (splitmix64's finaliser) so that close values give unrelated seeds.
fn run_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = nanos ^ (u64::from(std::process::id()) << 32);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
