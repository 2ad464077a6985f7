//! The link between a function's datapath and its own host stack (smoltcp).
//!
//! A routed function forwards packets in its workers; the few that are for the function
//! itself as an end host (a load balancer's L7 listeners, the replies to its health
//! checks) go to a host stack that runs on its own thread ([`crate::routed::Step::Deliver`]).
//! That stack's packets come back to the workers, which route them like any packet the
//! function originates: route lookup, ARP, the egress port and the underlay
//! ([`crate::routed`]'s `poll_transmit`).
//!
//! [`HostLink`] carries IPv4 packets both ways in two bounded queues and wakes the other
//! side through an `eventfd`: the host thread polls [`HostLink::host_fd`], the workers poll
//! [`HostLink::datapath_fd`] besides their sockets
//! ([`crate::pipeline::NetworkFunction::wake_fd`]). [`HostDevice`] is the smoltcp device
//! over the link (IP medium: the workers do the Ethernet and ARP part).
//!
//! This is the slow path (DESIGN.md: smoltcp is never on the forwarding path): packets are
//! copied into owned buffers, recycled through a free list.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use smoltcp::phy::{self, DeviceCapabilities, Medium};

/// Packets each queue holds by default: a few round trips of a busy proxy.
pub const DEFAULT_QUEUE: usize = 4096;

/// A non-blocking `eventfd` (a counter the kernel makes pollable).
#[derive(Debug)]
struct EventFd(OwnedFd);

impl EventFd {
    fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd has no memory arguments; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. A full counter (EAGAIN) is still
        // readable, which is all a wakeup needs.
        unsafe {
            libc::write(
                self.0.as_raw_fd(),
                (&raw const one).cast::<libc::c_void>(),
                8,
            )
        };
    }

    fn clear(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; EAGAIN (nothing pending) is fine.
        unsafe { libc::read(self.0.as_raw_fd(), (&raw mut v).cast::<libc::c_void>(), 8) };
    }
}

/// One direction: packets and their spare buffers.
#[derive(Debug, Default)]
struct Queue {
    packets: VecDeque<Vec<u8>>,
    free: Vec<Vec<u8>>,
}

fn lock(q: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    q.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counters of a link.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Packets the workers handed to the host stack.
    pub to_host: AtomicU64,
    /// Packets the host stack sent.
    pub from_host: AtomicU64,
    /// Packets dropped because the host stack's queue was full.
    pub to_host_dropped: AtomicU64,
    /// Packets dropped because the workers' queue was full.
    pub from_host_dropped: AtomicU64,
}

/// The two queues between the workers and the host stack.
#[derive(Debug)]
pub struct HostLink {
    to_host: Mutex<Queue>,
    from_host: Mutex<Queue>,
    /// Whether `from_host` may hold packets: lets the workers skip its lock.
    out_pending: AtomicBool,
    host_wake: EventFd,
    dp_wake: EventFd,
    cap: usize,
    mtu: usize,
    /// Counters.
    pub stats: LinkStats,
}

/// Take a buffer from the free list (or a new one) holding `data`.
fn filled(q: &mut Queue, data: &[u8]) -> Vec<u8> {
    let mut b = q.free.pop().unwrap_or_default();
    b.clear();
    b.extend_from_slice(data);
    b
}

impl HostLink {
    /// A link whose queues hold `cap` packets each, for a stack whose packets are at most
    /// `mtu` bytes.
    pub fn new(cap: usize, mtu: usize) -> io::Result<Arc<HostLink>> {
        Ok(Arc::new(HostLink {
            to_host: Mutex::new(Queue::default()),
            from_host: Mutex::new(Queue::default()),
            out_pending: AtomicBool::new(false),
            host_wake: EventFd::new()?,
            dp_wake: EventFd::new()?,
            cap: cap.max(1),
            mtu,
            stats: LinkStats::default(),
        }))
    }

    /// The largest packet the host stack may send.
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// Readable when the host stack has packets to read.
    pub fn host_fd(&self) -> RawFd {
        self.host_wake.0.as_raw_fd()
    }

    /// Readable when the workers have packets to send.
    pub fn datapath_fd(&self) -> RawFd {
        self.dp_wake.0.as_raw_fd()
    }

    /// A worker hands an IPv4 packet to the host stack; `false` (counted) when its queue
    /// is full.
    pub fn deliver(&self, ip: &[u8]) -> bool {
        let mut q = lock(&self.to_host);
        if q.packets.len() >= self.cap {
            self.stats.to_host_dropped.fetch_add(1, Relaxed);
            return false;
        }
        let b = filled(&mut q, ip);
        let was_empty = q.packets.is_empty();
        q.packets.push_back(b);
        drop(q);
        self.stats.to_host.fetch_add(1, Relaxed);
        if was_empty {
            self.host_wake.signal();
        }
        true
    }

    /// Wake the host stack without a packet (its config changed, or it should stop).
    pub fn wake_host(&self) {
        self.host_wake.signal();
    }

    /// The host stack takes the next packet for it.
    pub fn recv(&self) -> Option<Vec<u8>> {
        lock(&self.to_host).packets.pop_front()
    }

    /// The host stack reads its wakeup: call before draining with [`HostLink::recv`], so
    /// that a packet queued after the drain wakes it again.
    pub fn clear_host_wake(&self) {
        self.host_wake.clear();
    }

    /// Give a buffer back for reuse (after [`HostLink::recv`]).
    pub fn recycle(&self, b: Vec<u8>) {
        let mut q = lock(&self.to_host);
        if q.free.len() < 256 {
            q.free.push(b);
        }
    }

    /// The host stack sends a packet built by `f` into a `len`-byte buffer; `false`
    /// (counted) when the workers' queue is full.
    pub fn send_with<R>(&self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> (R, bool) {
        let mut b = lock(&self.from_host).free.pop().unwrap_or_default();
        b.clear();
        b.resize(len, 0);
        let r = f(&mut b);
        let mut q = lock(&self.from_host);
        if q.packets.len() >= self.cap {
            q.free.push(b);
            drop(q);
            self.stats.from_host_dropped.fetch_add(1, Relaxed);
            return (r, false);
        }
        let was_empty = q.packets.is_empty();
        q.packets.push_back(b);
        drop(q);
        self.stats.from_host.fetch_add(1, Relaxed);
        self.out_pending.store(true, Relaxed);
        if was_empty {
            self.dp_wake.signal();
        }
        (r, true)
    }

    /// Whether the host stack has packets for the workers to send.
    pub fn has_output(&self) -> bool {
        self.out_pending.load(Relaxed)
    }

    /// A worker sends what the host stack queued, at most `max` packets, each through `f`;
    /// `f` returns `false` to stop and keep that packet for the next call.
    pub fn take_output(&self, max: usize, mut f: impl FnMut(&[u8]) -> bool) {
        if !self.has_output() {
            return;
        }
        // Clear the wakeup first: a packet queued after this signals again.
        self.dp_wake.clear();
        let mut q = lock(&self.from_host);
        for _ in 0..max {
            let Some(p) = q.packets.pop_front() else {
                break;
            };
            if !f(&p) {
                q.packets.push_front(p);
                break;
            }
            if q.free.len() < 256 {
                q.free.push(p);
            }
        }
        self.out_pending.store(!q.packets.is_empty(), Relaxed);
    }
}

/// The smoltcp device over a [`HostLink`] (IP medium).
#[derive(Debug)]
pub struct HostDevice {
    link: Arc<HostLink>,
}

impl HostDevice {
    /// A device on `link`.
    pub fn new(link: Arc<HostLink>) -> HostDevice {
        HostDevice { link }
    }
}

/// A received packet.
#[derive(Debug)]
pub struct RxToken<'a> {
    link: &'a HostLink,
    packet: Vec<u8>,
}

/// Room for one packet to send.
#[derive(Debug)]
pub struct TxToken<'a> {
    link: &'a HostLink,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let r = f(&self.packet);
        self.link.recycle(self.packet);
        r
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        // A full queue drops the packet, as a full NIC ring would; TCP retransmits.
        self.link.send_with(len, f).0
    }
}

impl phy::Device for HostDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(
        &mut self,
        _timestamp: smoltcp::time::Instant,
    ) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let packet = self.link.recv()?;
        Some((
            RxToken {
                link: &self.link,
                packet,
            },
            TxToken { link: &self.link },
        ))
    }

    fn transmit(&mut self, _timestamp: smoltcp::time::Instant) -> Option<TxToken<'_>> {
        Some(TxToken { link: &self.link })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.link.mtu;
        caps.max_burst_size = Some(64);
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    #[test]
    fn packets_cross_both_ways_and_wake_the_other_side() {
        let link = HostLink::new(2, 1500).unwrap();
        assert!(!readable(link.host_fd()));
        assert!(link.deliver(b"one"));
        assert!(link.deliver(b"two"));
        assert!(!link.deliver(b"three"), "the queue holds two");
        assert_eq!(link.stats.to_host_dropped.load(Relaxed), 1);
        assert!(readable(link.host_fd()));
        link.clear_host_wake();
        assert!(!readable(link.host_fd()));
        assert_eq!(link.recv().unwrap(), b"one");
        assert_eq!(link.recv().unwrap(), b"two");
        assert!(link.recv().is_none());

        assert!(!link.has_output());
        assert!(link.send_with(3, |b| b.copy_from_slice(b"abc")).1);
        assert!(link.send_with(3, |b| b.copy_from_slice(b"def")).1);
        assert!(link.has_output());
        assert!(readable(link.datapath_fd()));
        let mut got = Vec::new();
        // The first call takes one and refuses the second: it stays queued.
        link.take_output(8, |p| {
            if got.is_empty() {
                got.push(p.to_vec());
                true
            } else {
                false
            }
        });
        assert!(link.has_output());
        link.take_output(8, |p| {
            got.push(p.to_vec());
            true
        });
        assert_eq!(got, vec![b"abc".to_vec(), b"def".to_vec()]);
        assert!(!link.has_output());
        assert!(!readable(link.datapath_fd()));
    }
}
