//! Worker threads over real sockets.
//!
//! Each worker is an OS thread that runs to completion: receive a batch from each of its
//! sockets, run the [`Engine`], send what it produced, and sleep in `poll(2)` only when
//! every socket was empty. With several workers, the kernel steers both directions of a
//! flow to the same worker ([`crate::io::steer`]): `SO_REUSEPORT` with a symmetric hash on
//! the underlay, `PACKET_FANOUT` with the same hash on AF_PACKET interfaces. TAP devices are
//! read by worker 0 and written by any worker.
//!
//! A reload builds a new [`Installed`] config and publishes it through an `ArcSwap`; each
//! worker picks it up between batches, keeping its learned tables. What would need new
//! sockets or threads (the underlay address, the set of interfaces, the worker count) is
//! refused with a message saying a restart is needed.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::buf::PacketBuf;
use crate::datapath::config::{DatapathConfig, IfaceKind};
use crate::datapath::engine::{Engine, Installed};
use crate::io::afpacket::AfPacket;
use crate::io::steer;
use crate::io::tap::Tap;
use crate::io::udp::{UdpRx, UdpTx};
use crate::metrics::{MetricsHub, SlotsExhausted, WorkerCounters};
use crate::pipeline::{DropReason, NetworkFunction};

/// The longest a worker sleeps before it looks at the stop flag and the config again.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// Why the datapath could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// A socket or device could not be opened.
    #[error("{what}: {source}")]
    Io {
        /// What was being opened.
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// The change needs new sockets or threads.
    #[error("{0} cannot change while running: restart the process to apply it")]
    NeedsRestart(&'static str),
    /// Too many distinct counter labels.
    #[error(transparent)]
    Slots(#[from] SlotsExhausted),
    /// A worker thread could not be spawned.
    #[error("cannot start a worker thread: {0}")]
    Spawn(io::Error),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DatapathError {
    let what = what.into();
    move |source| DatapathError::Io { what, source }
}

struct Generation<C> {
    id: u64,
    inst: Arc<Installed>,
    nf: Arc<C>,
}

struct Shared<C> {
    current: ArcSwap<Generation<C>>,
    stop: AtomicBool,
    running: AtomicUsize,
    next_id: AtomicU64,
}

/// Sockets of one worker.
struct WorkerIo {
    udp_rx: Option<UdpRx>,
    /// Each worker has its own pool of source-port sockets: no lock between workers.
    udp_tx: Option<UdpTx>,
    /// By interface index.
    ifaces: Vec<IfaceSlot>,
}

/// A worker's view of one host interface.
struct IfaceSlot {
    /// Its own socket: read and written (AF_PACKET, and the TAP on worker 0).
    own: Option<IfaceIo>,
    /// A TAP owned by worker 0: other workers write to a shared duplicate.
    shared: Option<Arc<Mutex<IfaceIo>>>,
}

enum IfaceIo {
    Packet(AfPacket),
    Tap(Tap),
}

impl IfaceIo {
    fn recv(&mut self, bufs: &mut [PacketBuf]) -> io::Result<usize> {
        match self {
            IfaceIo::Packet(p) => p.recv_batch(bufs),
            IfaceIo::Tap(t) => t.recv_batch(bufs),
        }
    }

    fn send(&mut self, frames: &mut dyn Iterator<Item = &[u8]>) -> io::Result<usize> {
        match self {
            IfaceIo::Packet(p) => p.send_batch(frames),
            IfaceIo::Tap(t) => t.send_batch(frames),
        }
    }

    /// Frames dropped so far because they did not fit a buffer.
    fn truncated(&self) -> u64 {
        match self {
            IfaceIo::Packet(p) => p.truncated,
            IfaceIo::Tap(t) => t.truncated,
        }
    }

    fn fd(&self) -> RawFd {
        match self {
            IfaceIo::Packet(p) => p.as_raw_fd(),
            IfaceIo::Tap(t) => t.as_raw_fd(),
        }
    }
}

/// A running datapath: worker threads around network function `NF`.
pub struct Datapath<NF: NetworkFunction> {
    shared: Arc<Shared<NF::Config>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    hub: Arc<MetricsHub>,
    workers: usize,
    source_ports: Vec<u16>,
}

impl<NF: NetworkFunction> std::fmt::Debug for Datapath<NF> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl<NF: NetworkFunction + 'static> Datapath<NF> {
    /// Open every socket and device, then start the workers. `make` builds each worker's
    /// network function. Errors (a port in use, a missing interface, no privilege) are
    /// returned before any thread starts.
    pub fn start<F>(
        dp: Arc<DatapathConfig>,
        nf_cfg: Arc<NF::Config>,
        hub: Arc<MetricsHub>,
        make: F,
    ) -> Result<Datapath<NF>, DatapathError>
    where
        F: Fn(&Arc<NF::Config>, Arc<WorkerCounters>) -> NF + Send + Sync + 'static,
    {
        let inst = Arc::new(Installed::new(dp.clone(), &hub)?);
        let workers = dp.tuning.workers;
        let ios = open_io(&dp, workers)?;
        let source_ports = ios
            .first()
            .and_then(|w| w.udp_tx.as_ref())
            .map(|t| t.source_ports().to_vec())
            .unwrap_or_default();
        let shared = Arc::new(Shared {
            current: ArcSwap::from_pointee(Generation {
                id: 0,
                inst,
                nf: nf_cfg,
            }),
            stop: AtomicBool::new(false),
            running: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        });
        let make = Arc::new(make);
        let mut threads = Vec::new();
        for (w, io) in ios.into_iter().enumerate() {
            let worker_shared = shared.clone();
            let counters = hub.add_worker();
            let make = make.clone();
            let h = std::thread::Builder::new()
                .name(format!("dp-worker-{w}"))
                .spawn(move || worker_loop(worker_shared, io, counters, &*make))
                .map_err(DatapathError::Spawn);
            match h {
                Ok(h) => threads.push(h),
                Err(e) => {
                    shared.stop.store(true, Ordering::Relaxed);
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Datapath {
            shared,
            threads: Mutex::new(threads),
            hub,
            workers,
            source_ports,
        })
    }

    /// Swap in a new config. Learned tables survive; what needs new sockets is refused.
    pub fn reload(
        &self,
        dp: Arc<DatapathConfig>,
        nf_cfg: Arc<NF::Config>,
    ) -> Result<(), DatapathError> {
        let cur = self.shared.current.load();
        let (u_old, if_old, t_old) = cur.inst.dp.io_shape();
        let (u_new, if_new, t_new) = dp.io_shape();
        if u_old != u_new {
            return Err(DatapathError::NeedsRestart(
                "the underlay (address, port, source_ports, gso, gro, ipv6_zero_checksum)",
            ));
        }
        if if_old != if_new {
            return Err(DatapathError::NeedsRestart(
                "the set of trunk, untagged and TAP interfaces",
            ));
        }
        if t_old != t_new {
            return Err(DatapathError::NeedsRestart("`workers` or `batch_size`"));
        }
        let inst = Arc::new(Installed::new(dp, &self.hub)?);
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.shared.current.store(Arc::new(Generation {
            id,
            inst,
            nf: nf_cfg,
        }));
        Ok(())
    }

    /// Whether every worker is running.
    pub fn is_ready(&self) -> bool {
        !self.shared.stop.load(Ordering::Relaxed)
            && self.shared.running.load(Ordering::Relaxed) == self.workers
    }

    /// The metrics hub.
    pub fn hub(&self) -> &Arc<MetricsHub> {
        &self.hub
    }

    /// The outer UDP source ports VXLAN is sent from.
    pub fn source_ports(&self) -> &[u16] {
        &self.source_ports
    }

    /// Stop the workers and wait for them.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl<NF: NetworkFunction> Drop for Datapath<NF> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

fn open_io(dp: &DatapathConfig, workers: usize) -> Result<Vec<WorkerIo>, DatapathError> {
    let ifaces = dp.ifaces();
    // Fanout group per interface: worker 0 asks the kernel for a unique id, the others join it.
    let mut fanout_groups: Vec<u16> = vec![0; ifaces.len()];
    let mut per_worker: Vec<WorkerIo> = Vec::new();
    let mut tap_dups: Vec<Option<Arc<Mutex<IfaceIo>>>> = vec![None; ifaces.len()];
    for w in 0..workers {
        let (udp_rx, udp_tx) = match &dp.underlay {
            Some(u) => (
                Some({
                    let rx = UdpRx::bind(u.local, workers > 1, u.gro)
                        .map_err(io_err(format!("VXLAN port {}", u.local)))?;
                    if u.ipv6_zero_checksum {
                        rx.accept_zero_checksum6()
                            .map_err(io_err("accepting zero IPv6 UDP checksums"))?;
                    }
                    rx
                }),
                Some(
                    UdpTx::open(u.local.ip(), u.source_ports, u.local.port(), u.gso)
                        .map_err(io_err(format!("VXLAN source sockets on {}", u.local.ip())))?,
                ),
            ),
            None => (None, None),
        };
        let mut slots = Vec::new();
        for (k, (name, kind)) in ifaces.iter().enumerate() {
            let own = match kind {
                IfaceKind::Packet => {
                    let fanout = (workers > 1).then_some((fanout_groups[k], workers as u32));
                    let p = AfPacket::open(name, fanout)
                        .map_err(io_err(format!("interface {name}")))?;
                    if workers > 1 && w == 0 {
                        fanout_groups[k] = steer::fanout_id(p.as_raw_fd())
                            .map_err(io_err(format!("reading the fanout group of {name}")))?;
                    }
                    if w == 0 {
                        match p.disable_receive_offloads() {
                            Ok(true) => tracing::info!(
                                interface = %name,
                                "turned GRO/LRO off: a forwarding port needs frames as they were on the wire"
                            ),
                            Ok(false) => {}
                            Err(e) => tracing::warn!(
                                interface = %name,
                                error = %e,
                                "cannot turn GRO/LRO off; super-frames will be dropped as oversize"
                            ),
                        }
                    }
                    Some(IfaceIo::Packet(p))
                }
                IfaceKind::Tap if w == 0 => {
                    let t = Tap::open(name).map_err(io_err(format!("TAP {name}")))?;
                    if workers > 1 {
                        let dup = t.try_clone().map_err(io_err(format!("TAP {name}")))?;
                        tap_dups[k] = Some(Arc::new(Mutex::new(IfaceIo::Tap(dup))));
                    }
                    Some(IfaceIo::Tap(t))
                }
                IfaceKind::Tap => None,
            };
            slots.push(IfaceSlot { own, shared: None });
        }
        per_worker.push(WorkerIo {
            udp_rx,
            udp_tx,
            ifaces: slots,
        });
    }
    for w in per_worker.iter_mut().skip(1) {
        for (k, slot) in w.ifaces.iter_mut().enumerate() {
            slot.shared = tap_dups[k].clone();
        }
    }
    if workers > 1
        && let Some(first) = per_worker.first().and_then(|w| w.udp_rx.as_ref())
    {
        steer::attach_reuseport(first.as_raw_fd(), workers as u32)
            .map_err(io_err("attaching the worker steering program"))?;
    }
    Ok(per_worker)
}

fn worker_loop<NF, F>(
    shared: Arc<Shared<NF::Config>>,
    mut io: WorkerIo,
    counters: Arc<WorkerCounters>,
    make: &F,
) where
    NF: NetworkFunction,
    F: Fn(&Arc<NF::Config>, Arc<WorkerCounters>) -> NF,
{
    let mut generation = shared.current.load_full();
    let nf = make(&generation.nf, counters.clone());
    let mut engine = Engine::new(generation.inst.clone(), nf, counters.clone());
    let batch = generation.inst.dp.tuning.batch_size;
    let mut rx: Vec<PacketBuf> = (0..batch).map(|_| PacketBuf::new()).collect();
    let mut udp_items: Vec<(usize, usize)> = Vec::with_capacity(batch * 4);
    let mut pollfds: Vec<libc::pollfd> = Vec::new();
    if let Some(u) = &io.udp_rx {
        pollfds.push(libc::pollfd {
            fd: u.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }
    for i in io.ifaces.iter().filter_map(|s| s.own.as_ref()) {
        pollfds.push(libc::pollfd {
            fd: i.fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }
    // Kernel drop counters of our receiving sockets, read once a second.
    let drop_fds: Vec<RawFd> = pollfds.iter().map(|p| p.fd).collect();
    // The function's own wakeup (its host stack's output) is polled too; the function
    // clears it when it sends (`handle_timeout` runs `poll_transmit` when due).
    if let Some(fd) = engine.nf().wake_fd() {
        pollfds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
    }
    let mut drops_seen: Vec<u32> = vec![0; drop_fds.len()];
    let mut next_drop_check = Instant::now();
    // A socket error repeats on every iteration (an interface gone down, say): log it
    // at most once a second.
    let mut last_warn: Option<Instant> = None;
    let mut warn = |what: &str, e: &std::io::Error| {
        let now = Instant::now();
        if last_warn.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            last_warn = Some(now);
            tracing::warn!(error = %e, "{what} failed (repeats are logged once a second)");
        }
    };
    shared.running.fetch_add(1, Ordering::Relaxed);
    while !shared.stop.load(Ordering::Relaxed) {
        {
            let g = shared.current.load();
            if g.id != generation.id {
                generation = arc_swap::Guard::into_inner(g);
                engine.reconfigure(generation.inst.clone(), &generation.nf);
            }
        }
        let now = Instant::now();
        engine.clear();
        engine.handle_timeout(now);
        if engine.has_output() {
            // Frames the function originated on a timer (ARP retries and the like).
            flush(&engine, &rx[..0], &mut io, &mut udp_items);
        }
        if now >= next_drop_check {
            next_drop_check = now + Duration::from_secs(1);
            for (fd, seen) in drop_fds.iter().zip(drops_seen.iter_mut()) {
                if let Ok(d) = crate::io::socket_drops(*fd) {
                    counters.drops[DropReason::RxOverrun.index()]
                        .add(u64::from(d.wrapping_sub(*seen)));
                    *seen = d;
                }
            }
        }
        let mut busy = false;
        if let Some(u) = io.udp_rx.as_mut() {
            match u.recv_batch(&mut rx) {
                Ok(0) => {}
                Ok(n) => {
                    busy = true;
                    engine.clear();
                    engine.rx_underlay(&mut rx[..n], now);
                    flush(&engine, &rx[..n], &mut io, &mut udp_items);
                }
                Err(e) => warn("VXLAN receive", &e),
            }
        }
        for k in 0..io.ifaces.len() {
            let Some(ifc) = io.ifaces[k].own.as_mut() else {
                continue;
            };
            let truncated = ifc.truncated();
            let got = ifc.recv(&mut rx);
            let over = ifc.truncated() - truncated;
            if over > 0 {
                counters.drops[DropReason::Oversize.index()].add(over);
            }
            match got {
                Ok(0) => {}
                Ok(n) => {
                    busy = true;
                    engine.clear();
                    engine.rx_iface(k as u16, &mut rx[..n], now);
                    flush(&engine, &rx[..n], &mut io, &mut udp_items);
                }
                Err(e) => warn("interface receive", &e),
            }
        }
        if !busy {
            let wait = engine.poll_timeout().map_or(IDLE_POLL, |t| {
                t.saturating_duration_since(Instant::now()).min(IDLE_POLL)
            });
            for p in &mut pollfds {
                p.revents = 0;
            }
            // SAFETY: `pollfds` is a live array of `len` pollfd structs.
            unsafe {
                libc::poll(
                    pollfds.as_mut_ptr(),
                    pollfds.len() as libc::nfds_t,
                    wait.as_millis().max(1) as i32,
                );
            }
        }
    }
    shared.running.fetch_sub(1, Ordering::Relaxed);
}

fn flush<NF: NetworkFunction>(
    engine: &Engine<NF>,
    rx: &[PacketBuf],
    io: &mut WorkerIo,
    items: &mut Vec<(usize, usize)>,
) {
    let counters = engine.counters();
    let out = &engine.out;
    if !out.udp.is_empty()
        && let Some(tx) = io.udp_tx.as_mut()
    {
        items.clear();
        items.extend(
            out.udp
                .iter()
                .enumerate()
                .map(|(i, o)| (tx.socket_for(o.entropy), i)),
        );
        // Group by socket; the sort is stable, so every flow keeps its order.
        items.sort_by_key(|x| x.0);
        let st = tx.send(items.len(), |k| {
            let (s, i) = items[k];
            (s, out.udp[i].dst, engine.bytes(rx, out.udp[i].buf))
        });
        counters.drops[DropReason::TxError.index()].add(st.failed as u64);
    }
    if out.frames.is_empty() {
        return;
    }
    for (k, slot) in io.ifaces.iter_mut().enumerate() {
        let want = out
            .frames
            .iter()
            .filter(|f| usize::from(f.iface) == k)
            .count();
        if want == 0 {
            continue;
        }
        let mut frames = out
            .frames
            .iter()
            .filter(|f| usize::from(f.iface) == k)
            .map(|f| engine.bytes(rx, f.buf));
        let sent = match (slot.own.as_mut(), slot.shared.as_ref()) {
            (Some(own), _) => own.send(&mut frames),
            (None, Some(shared)) => shared
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .send(&mut frames),
            (None, None) => Ok(0),
        };
        counters.drops[DropReason::TxError.index()]
            .add(want.saturating_sub(sent.unwrap_or(0)) as u64);
    }
}
