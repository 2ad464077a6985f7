//! The UDP underlay: batched receive on the VXLAN port, batched send with GSO from a pool
//! of source-port sockets.
//!
//! Receive: one socket per worker bound to the VXLAN port (with `SO_REUSEPORT` and a
//! steering program when there are several workers, see [`super::steer`]), read with
//! `recvmmsg(2)`, one datagram per pre-allocated [`PacketBuf`].
//!
//! Send: RFC 7348 §5 wants the outer source port to carry a hash of the inner flow. A UDP
//! socket always sends from the port it is bound to, so the VTEP keeps a pool of sockets,
//! each bound by the kernel to an ephemeral port (so the ports lie in the host's ephemeral
//! range), and a flow's hash picks one. This needs no privilege, unlike a raw socket, and
//! keeps UDP GSO (`UDP_SEGMENT`, Linux 4.18): consecutive datagrams of one flow to one VTEP
//! with the same size leave in one `sendmmsg` entry whose iovecs point at the packet
//! buffers — no copy.

use std::io;
use std::mem::{MaybeUninit, size_of, zeroed};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::buf::PacketBuf;

/// The most datagrams one `recvmmsg`/`sendmmsg` call handles.
pub const MAX_BATCH: usize = 1024;
/// The kernel's limit of segments in one GSO packet (UDP_MAX_SEGMENTS).
const GSO_MAX_SEGMENTS: usize = 64;
/// The most bytes in one GSO packet (an IP datagram's payload).
const GSO_MAX_BYTES: usize = 65_000;

/// Large receive buffers for UDP GRO, per socket.
const GRO_BUFS: usize = 8;
/// The largest UDP payload a GRO super-datagram can have.
const GRO_BUF_LEN: usize = 65_536;

/// Receiving socket on the VXLAN port.
#[derive(Debug)]
pub struct UdpRx {
    sock: UdpSocket,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    gro: Option<Gro>,
}

/// UDP GRO (Linux 5.0): the kernel hands over several datagrams of one flow as one
/// buffer plus the segment size; they are split here into packet buffers (one copy each,
/// paid for by a fraction of the kernel's per-datagram work).
#[derive(Debug)]
struct Gro {
    bufs: Vec<Box<[u8]>>,
    cmsgs: Vec<[u64; 8]>,
    /// Datagrams received and not yet handed out: (buffer, length, segment size, source).
    pending: Vec<(usize, usize, usize, Option<IpAddr>)>,
    next: usize,
    offset: usize,
    /// Received buffers that held more than one datagram.
    coalesced: u64,
}

// SAFETY: the raw pointers in `hdrs`/`iovs` are only scratch space rewritten before each
// call; they never outlive a call and are not shared.
unsafe impl Send for UdpRx {}

impl UdpRx {
    /// Bind the VXLAN port. `reuseport` lets each worker bind its own socket; `gro` asks
    /// the kernel for UDP GRO (silently without it if the kernel refuses).
    pub fn bind(addr: SocketAddr, reuseport: bool, gro: bool) -> io::Result<UdpRx> {
        let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if reuseport {
            sock.set_reuse_port(true)?;
        }
        if addr.is_ipv6() {
            sock.set_only_v6(true)?;
        }
        super::size_buffers(sock.as_raw_fd());
        sock.bind(&SockAddr::from(addr)).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot bind the VXLAN port {addr}: {e}"))
        })?;
        sock.set_nonblocking(true)?;
        let gro = (gro
            && super::setsockopt_int(sock.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 1).is_ok())
        .then(|| Gro {
            bufs: (0..GRO_BUFS)
                .map(|_| vec![0u8; GRO_BUF_LEN].into_boxed_slice())
                .collect(),
            cmsgs: vec![[0u64; 8]; GRO_BUFS],
            pending: Vec::with_capacity(GRO_BUFS),
            next: 0,
            offset: 0,
            coalesced: 0,
        });
        // SAFETY: all-zero is a valid value of these plain C structs.
        let zero_hdr: libc::mmsghdr = unsafe { zeroed() };
        // SAFETY: as above.
        let zero_iov: libc::iovec = unsafe { zeroed() };
        // SAFETY: as above.
        let zero_addr: libc::sockaddr_storage = unsafe { zeroed() };
        Ok(UdpRx {
            sock: sock.into(),
            hdrs: vec![zero_hdr; MAX_BATCH],
            iovs: vec![zero_iov; MAX_BATCH],
            addrs: vec![zero_addr; MAX_BATCH],
            gro,
        })
    }

    /// Accept IPv6 VXLAN whose UDP checksum is zero (RFC 6935, with the conditions of
    /// RFC 6936 §5: both ends configured for it), as a Linux `vxlan` device with
    /// `udp6zerocsumtx` sends. Without it the kernel drops such datagrams before us.
    pub fn accept_zero_checksum6(&self) -> io::Result<()> {
        // linux/udp.h
        const UDP_NO_CHECK6_RX: i32 = 102;
        super::setsockopt_int(self.sock.as_raw_fd(), libc::SOL_UDP, UDP_NO_CHECK6_RX, 1)
    }

    /// Whether UDP GRO is on.
    pub fn gro(&self) -> bool {
        self.gro.is_some()
    }

    /// How many received buffers held several coalesced datagrams.
    pub fn gro_coalesced(&self) -> u64 {
        self.gro.as_ref().map_or(0, |g| g.coalesced)
    }

    /// The GRO path of [`recv_batch`](Self::recv_batch).
    fn recv_gro(&mut self, bufs: &mut [PacketBuf]) -> io::Result<usize> {
        let fd = self.sock.as_raw_fd();
        let Some(g) = self.gro.as_mut() else {
            return Ok(0);
        };
        if g.next >= g.pending.len() {
            g.pending.clear();
            g.next = 0;
            g.offset = 0;
            for i in 0..GRO_BUFS {
                self.iovs[i] = libc::iovec {
                    iov_base: g.bufs[i].as_mut_ptr().cast(),
                    iov_len: GRO_BUF_LEN,
                };
                self.hdrs[i].msg_hdr = libc::msghdr {
                    msg_name: (&raw mut self.addrs[i]).cast(),
                    msg_namelen: size_of::<libc::sockaddr_storage>() as libc::socklen_t,
                    msg_iov: &raw mut self.iovs[i],
                    msg_iovlen: 1,
                    msg_control: g.cmsgs[i].as_mut_ptr().cast(),
                    msg_controllen: size_of::<[u64; 8]>(),
                    msg_flags: 0,
                };
                self.hdrs[i].msg_len = 0;
            }
            // SAFETY: the first GRO_BUFS headers point at live iovecs over our own GRO
            // buffers, at sockaddr storage and at 64-byte control buffers.
            let r = unsafe { recvmmsg(fd, &mut self.hdrs, GRO_BUFS) }?;
            for i in 0..r {
                let h = &self.hdrs[i];
                let len = h.msg_len as usize;
                let seg = gro_segment(&h.msg_hdr).unwrap_or(len).max(1);
                if seg < len {
                    g.coalesced += 1;
                }
                g.pending.push((i, len, seg, sockaddr_ip(&self.addrs[i])));
            }
        }
        let mut out = 0;
        while out < bufs.len() && g.next < g.pending.len() {
            let (i, len, seg, src) = g.pending[g.next];
            let chunk = seg.min(len - g.offset);
            let b = &mut bufs[out];
            if chunk > crate::buf::MAX_FRAME {
                // Too big for a packet buffer: delivered empty, counted as malformed.
                b.fill(&[]);
            } else {
                b.fill(&g.bufs[i][g.offset..g.offset + chunk]);
            }
            b.port = Default::default();
            b.vtep = src;
            out += 1;
            g.offset += chunk;
            if g.offset >= len {
                g.next += 1;
                g.offset = 0;
            }
        }
        Ok(out)
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// The socket, for attaching a steering program.
    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }

    /// Receive up to `bufs.len()` datagrams without blocking; each buffer gets the datagram
    /// and `vtep` = the source address. Returns how many (0 when none are waiting).
    pub fn recv_batch(&mut self, bufs: &mut [PacketBuf]) -> io::Result<usize> {
        if self.gro.is_some() {
            return self.recv_gro(bufs);
        }
        let n = bufs.len().min(MAX_BATCH);
        for (i, b) in bufs.iter_mut().take(n).enumerate() {
            let area = b.recv_area();
            self.iovs[i] = libc::iovec {
                iov_base: area.as_mut_ptr().cast(),
                iov_len: area.len(),
            };
            self.hdrs[i].msg_hdr = libc::msghdr {
                msg_name: (&raw mut self.addrs[i]).cast(),
                msg_namelen: size_of::<libc::sockaddr_storage>() as libc::socklen_t,
                msg_iov: &raw mut self.iovs[i],
                msg_iovlen: 1,
                msg_control: std::ptr::null_mut(),
                msg_controllen: 0,
                msg_flags: 0,
            };
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: `hdrs[..n]` point at `n` live iovecs over buffers we borrow mutably for
        // the duration of the call, and at `addrs` entries large enough for any address.
        let got = unsafe { recvmmsg(self.sock.as_raw_fd(), &mut self.hdrs, n) }?;
        for (i, b) in bufs.iter_mut().take(got).enumerate() {
            let len = self.hdrs[i].msg_len as usize;
            let truncated = self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            // A truncated datagram is delivered empty: the VTEP counts it as malformed.
            b.set_received(if truncated { 0 } else { len });
            b.port = Default::default();
            b.vtep = sockaddr_ip(&self.addrs[i]);
        }
        Ok(got)
    }
}

impl AsRawFd for UdpRx {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

fn sockaddr_ip(ss: &libc::sockaddr_storage) -> Option<IpAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it can contain.
            let sin = unsafe { &*(std::ptr::from_ref(ss).cast::<libc::sockaddr_in>()) };
            Some(IpAddr::from(
                u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: as above for sockaddr_in6.
            let sin6 = unsafe { &*(std::ptr::from_ref(ss).cast::<libc::sockaddr_in6>()) };
            Some(IpAddr::from(sin6.sin6_addr.s6_addr))
        }
        _ => None,
    }
}

/// Outcome of a send.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TxStats {
    /// Datagrams the kernel took.
    pub sent: usize,
    /// Datagrams refused (each counted as a `tx_error` drop).
    pub failed: usize,
    /// `sendmmsg` calls made.
    pub calls: usize,
}

/// The sending side: a pool of sockets with distinct source ports.
#[derive(Debug)]
pub struct UdpTx {
    socks: Vec<UdpSocket>,
    ports: Vec<u16>,
    dst_port: u16,
    gso: bool,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<[u64; 4]>,
    /// Datagrams per message, for accounting partial sends.
    segs: Vec<usize>,
}

// SAFETY: see UdpRx.
unsafe impl Send for UdpTx {}

impl UdpTx {
    /// `count` sockets bound to `local_ip` on kernel-chosen ephemeral ports, sending to
    /// remote VTEPs on `dst_port`.
    pub fn open(local_ip: IpAddr, count: u16, dst_port: u16, gso: bool) -> io::Result<UdpTx> {
        let mut socks = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..count.max(1) {
            let addr = SocketAddr::new(local_ip, 0);
            let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            if addr.is_ipv6() {
                s.set_only_v6(true)?;
            }
            super::size_buffers(s.as_raw_fd());
            s.bind(&SockAddr::from(addr)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot bind a VXLAN source socket on {local_ip}: {e}"),
                )
            })?;
            s.set_nonblocking(true)?;
            if local_ip.is_ipv4() {
                // RFC 7348 §4.3: the outer packet must not be fragmented; set DF and let
                // the VTEP drop oversize frames itself (counted as mtu_exceeded).
                super::setsockopt_int(
                    s.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_MTU_DISCOVER,
                    libc::IP_PMTUDISC_PROBE,
                )?;
                // RFC 7348 §5 says the outer IPv4 UDP checksum SHOULD be zero, which
                // SO_NO_CHECK would give; but the kernel refuses UDP GSO on such a socket
                // (EINVAL), and GSO is worth far more (BENCHMARKS.md). So it is computed.
            } else {
                super::setsockopt_int(
                    s.as_raw_fd(),
                    libc::IPPROTO_IPV6,
                    libc::IPV6_MTU_DISCOVER,
                    libc::IP_PMTUDISC_PROBE,
                )?;
            }
            let s: UdpSocket = s.into();
            ports.push(s.local_addr()?.port());
            socks.push(s);
        }
        // SAFETY: all-zero is a valid value of these plain C structs.
        let zero_hdr: libc::mmsghdr = unsafe { zeroed() };
        // SAFETY: as above.
        let zero_iov: libc::iovec = unsafe { zeroed() };
        // SAFETY: as above.
        let zero_addr: libc::sockaddr_storage = unsafe { zeroed() };
        Ok(UdpTx {
            socks,
            ports,
            dst_port,
            gso,
            hdrs: vec![zero_hdr; MAX_BATCH],
            iovs: vec![zero_iov; MAX_BATCH],
            addrs: vec![zero_addr; MAX_BATCH],
            cmsgs: vec![[0u64; 4]; MAX_BATCH],
            segs: vec![0; MAX_BATCH],
        })
    }

    /// The source ports of the pool, in pool order.
    pub fn source_ports(&self) -> &[u16] {
        &self.ports
    }

    /// Whether GSO is in use (it is switched off if the kernel refuses it).
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Which socket a flow hash selects.
    #[inline]
    pub fn socket_for(&self, entropy: u32) -> usize {
        // Multiply-shift maps the hash onto the pool without a division.
        ((u64::from(entropy) * self.socks.len() as u64) >> 32) as usize
    }

    /// Send `n` datagrams; `item(i)` gives the i-th as `(socket index, destination,
    /// bytes)`. Items should come grouped by socket (a stable sort keeps each flow in
    /// order); each run of one socket becomes one `sendmmsg`, and each run of equal-size
    /// datagrams to one destination one GSO entry.
    pub fn send<'a>(
        &mut self,
        n: usize,
        item: impl Fn(usize) -> (usize, IpAddr, &'a [u8]),
    ) -> TxStats {
        let mut stats = TxStats::default();
        let last = self.socks.len() - 1;
        let mut i = 0;
        while i < n {
            let sock = item(i).0.min(last);
            let mut j = i;
            while j < n && item(j).0.min(last) == sock {
                j += 1;
            }
            self.send_run(sock, i, j, &item, &mut stats);
            i = j;
        }
        stats
    }

    fn send_run<'a>(
        &mut self,
        sock: usize,
        from: usize,
        to: usize,
        item: &impl Fn(usize) -> (usize, IpAddr, &'a [u8]),
        stats: &mut TxStats,
    ) {
        let items = |k: usize| {
            let (s, d, b) = item(from + k);
            (s, d, b)
        };
        let len = to - from;
        let mut k = 0;
        while k < len {
            // Fill as many messages as fit.
            let mut nmsg = 0;
            let mut niov = 0;
            while k < len && nmsg < MAX_BATCH && niov < MAX_BATCH {
                let (_, dst, first) = items(k);
                let seg = first.len();
                let mut n = 1;
                if self.gso {
                    let mut total = seg;
                    while k + n < len
                        && n < GSO_MAX_SEGMENTS
                        && niov + n < MAX_BATCH
                        && items(k + n).1 == dst
                        && items(k + n).2.len() <= seg
                        && total + items(k + n).2.len() <= GSO_MAX_BYTES
                    {
                        let next = items(k + n).2.len();
                        total += next;
                        let last = next < seg;
                        n += 1;
                        if last {
                            // Only the final segment may be shorter.
                            break;
                        }
                    }
                }
                for m in 0..n {
                    let b = items(k + m).2;
                    self.iovs[niov + m] = libc::iovec {
                        iov_base: b.as_ptr().cast_mut().cast(),
                        iov_len: b.len(),
                    };
                }
                let namelen =
                    write_sockaddr(&mut self.addrs[nmsg], SocketAddr::new(dst, self.dst_port));
                let (control, controllen) = if n > 1 {
                    (
                        self.cmsgs[nmsg].as_mut_ptr().cast(),
                        gso_cmsg(&mut self.cmsgs[nmsg], seg as u16),
                    )
                } else {
                    (std::ptr::null_mut(), 0)
                };
                self.hdrs[nmsg].msg_hdr = libc::msghdr {
                    msg_name: (&raw mut self.addrs[nmsg]).cast(),
                    msg_namelen: namelen,
                    msg_iov: &raw mut self.iovs[niov],
                    msg_iovlen: n,
                    msg_control: control,
                    msg_controllen: controllen,
                    msg_flags: 0,
                };
                self.segs[nmsg] = n;
                nmsg += 1;
                niov += n;
                k += n;
            }
            self.sendmmsg(sock, nmsg, stats);
        }
    }

    fn sendmmsg(&mut self, sock: usize, nmsg: usize, stats: &mut TxStats) {
        let fd = self.socks[sock].as_raw_fd();
        let mut done = 0;
        while done < nmsg {
            stats.calls += 1;
            // SAFETY: hdrs[done..nmsg] point at iovecs over buffers borrowed by the caller
            // for the duration of `send`, at filled sockaddrs and control buffers.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[done..].as_mut_ptr(),
                    (nmsg - done) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                let r = r as usize;
                stats.sent += self.segs[done..done + r].iter().sum::<usize>();
                done += r;
                continue;
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            let gso_refused = self.segs[done] > 1
                && matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::EIO | libc::ENOPROTOOPT)
                );
            if gso_refused && self.gso {
                tracing::warn!(error = %e, "the kernel refused UDP GSO; sending datagrams one by one");
                self.gso = false;
            }
            // Skip the message that failed and go on with the rest.
            tracing::debug!(error = %e, "VXLAN send failed");
            stats.failed += self.segs[done];
            done += 1;
        }
    }
}

/// `recvmmsg(2)` of up to `n` messages without blocking: how many arrived, 0 when none.
///
/// # Safety
/// The first `n` headers must point at live iovecs, names and control buffers that the
/// kernel may write for the duration of the call.
unsafe fn recvmmsg(fd: RawFd, hdrs: &mut [libc::mmsghdr], n: usize) -> io::Result<usize> {
    let n = n.min(hdrs.len());
    // SAFETY: the caller vouches for the first `n` headers; `n` is within `hdrs`.
    let r = unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if r >= 0 {
        return Ok(r as usize);
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
        _ => Err(e),
    }
}

/// The segment size of a GRO super-datagram, from its `UDP_GRO` control message.
fn gro_segment(mh: &libc::msghdr) -> Option<usize> {
    // SAFETY: `mh` was filled by recvmmsg; CMSG_FIRSTHDR/NXTHDR stay within
    // msg_control..msg_controllen and return null at the end.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(mh);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>());
                return usize::try_from(v).ok();
            }
            c = libc::CMSG_NXTHDR(mh, c);
        }
    }
    None
}

/// Write `UDP_SEGMENT` into a control buffer; returns its length.
fn gso_cmsg(buf: &mut [u64; 4], seg: u16) -> usize {
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
    debug_assert!(space <= size_of::<[u64; 4]>());
    let mut mh: libc::msghdr = unsafe_zeroed_msghdr();
    mh.msg_control = buf.as_mut_ptr().cast();
    mh.msg_controllen = space;
    // SAFETY: the msghdr points at `buf`, which is 8-byte aligned and `space` bytes long,
    // so CMSG_FIRSTHDR returns a pointer into it with room for one u16 cmsg.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&raw const mh);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
    }
    space
}

fn unsafe_zeroed_msghdr() -> libc::msghdr {
    let m = MaybeUninit::<libc::msghdr>::zeroed();
    // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
    unsafe { m.assume_init() }
}

fn write_sockaddr(ss: &mut libc::sockaddr_storage, addr: SocketAddr) -> libc::socklen_t {
    let sa = SockAddr::from(addr);
    let len = sa.len() as usize;
    // SAFETY: SockAddr holds a valid sockaddr of `len` bytes, which fits in a storage.
    unsafe {
        std::ptr::copy_nonoverlapping(
            sa.as_ptr().cast::<u8>(),
            std::ptr::from_mut(ss).cast::<u8>(),
            len,
        );
    }
    len as libc::socklen_t
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn recv_all(rx: &mut UdpRx, want: usize) -> Vec<Vec<u8>> {
        let mut bufs: Vec<PacketBuf> = (0..64).map(|_| PacketBuf::new()).collect();
        let mut out = Vec::new();
        for _ in 0..200 {
            let n = rx.recv_batch(&mut bufs).unwrap();
            for b in &bufs[..n] {
                assert_eq!(b.vtep, Some(LO));
                out.push(b.bytes().to_vec());
            }
            if out.len() >= want {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        out
    }

    #[test]
    fn batched_send_and_receive_with_gso() {
        let mut rx = UdpRx::bind(SocketAddr::new(LO, 0), false, false).unwrap();
        let port = rx.local_addr().unwrap().port();
        let mut tx = UdpTx::open(LO, 4, port, true).unwrap();
        assert_eq!(tx.source_ports().len(), 4);
        let payloads: Vec<Vec<u8>> = (0..10u8)
            .map(|i| vec![i; if i == 9 { 100 } else { 1400 }])
            .collect();
        let st = tx.send(payloads.len(), |i| (1, LO, &payloads[i][..]));
        assert_eq!(st.sent, 10, "{st:?}");
        assert_eq!(st.failed, 0);
        if tx.gso() {
            // Nine 1400-byte datagrams and a short tail: one GSO message, one call.
            assert_eq!(st.calls, 1);
        }
        let got = recv_all(&mut rx, 10);
        assert_eq!(got, payloads, "datagrams arrive whole and in order");
    }

    #[test]
    fn ipv6_underlay_round_trip() {
        let lo6 = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
        let Ok(mut rx) = UdpRx::bind(SocketAddr::new(lo6, 0), false, false) else {
            eprintln!("skipped: ipv6_underlay_round_trip: no IPv6 loopback on this machine");
            return;
        };
        let port = rx.local_addr().unwrap().port();
        let mut tx = UdpTx::open(lo6, 2, port, true).unwrap();
        let payloads: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1200]).collect();
        let st = tx.send(payloads.len(), |i| (0, lo6, &payloads[i][..]));
        assert_eq!(st.sent, 3, "{st:?}");
        let mut bufs: Vec<PacketBuf> = (0..8).map(|_| PacketBuf::new()).collect();
        let mut got = Vec::new();
        for _ in 0..200 {
            let n = rx.recv_batch(&mut bufs).unwrap();
            for b in &bufs[..n] {
                assert_eq!(b.vtep, Some(lo6));
                got.push(b.bytes().to_vec());
            }
            if got.len() >= 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, payloads);
    }

    #[test]
    fn gro_receive_splits_super_datagrams() {
        // On loopback the kernel coalesces a GSO send into one GRO buffer when the
        // receiver asked for it; either way every datagram must come out whole, in order.
        let mut rx = UdpRx::bind(SocketAddr::new(LO, 0), false, true).unwrap();
        assert!(rx.gro(), "this kernel supports UDP_GRO (5.0+)");
        let port = rx.local_addr().unwrap().port();
        let mut tx = UdpTx::open(LO, 1, port, true).unwrap();
        let payloads: Vec<Vec<u8>> = (0..40u8)
            .map(|i| vec![i; if i == 39 { 50 } else { 1400 }])
            .collect();
        let st = tx.send(payloads.len(), |i| (0, LO, &payloads[i][..]));
        assert_eq!(st.sent, 40);
        // Buffers fewer than the datagrams: the rest must wait for the next call.
        let mut bufs: Vec<PacketBuf> = (0..7).map(|_| PacketBuf::new()).collect();
        let mut got = Vec::new();
        for _ in 0..400 {
            let n = rx.recv_batch(&mut bufs).unwrap();
            got.extend(bufs[..n].iter().map(|b| {
                assert_eq!(b.vtep, Some(LO));
                b.bytes().to_vec()
            }));
            if got.len() >= 40 {
                break;
            }
            if n == 0 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        assert_eq!(got, payloads);
        assert!(rx.gro_coalesced() > 0, "the kernel coalesced the GSO send");
    }

    #[test]
    fn ipv6_zero_checksums_only_when_asked() {
        let lo6 = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
        let Ok(mut strict) = UdpRx::bind(SocketAddr::new(lo6, 0), false, false) else {
            eprintln!("skipped: ipv6_zero_checksums_only_when_asked: no IPv6 loopback here");
            return;
        };
        let mut lenient = UdpRx::bind(SocketAddr::new(lo6, 0), false, false).unwrap();
        lenient.accept_zero_checksum6().unwrap();
        // A sender that leaves the checksum zero, like `udp6zerocsumtx`.
        let tx = std::net::UdpSocket::bind("[::1]:0").unwrap();
        const UDP_NO_CHECK6_TX: i32 = 101;
        crate::io::setsockopt_int(tx.as_raw_fd(), libc::SOL_UDP, UDP_NO_CHECK6_TX, 1).unwrap();
        for rx in [&strict, &lenient] {
            tx.send_to(b"zero-checksum", rx.local_addr().unwrap())
                .unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut bufs: Vec<PacketBuf> = (0..4).map(|_| PacketBuf::new()).collect();
        assert_eq!(
            strict.recv_batch(&mut bufs).unwrap(),
            0,
            "dropped by default"
        );
        assert_eq!(
            lenient.recv_batch(&mut bufs).unwrap(),
            1,
            "accepted when asked"
        );
        assert_eq!(bufs[0].bytes(), b"zero-checksum");
    }

    #[test]
    fn source_sockets_have_distinct_ephemeral_ports() {
        let tx = UdpTx::open(LO, 8, 4789, true).unwrap();
        let mut p = tx.source_ports().to_vec();
        p.sort_unstable();
        p.dedup();
        assert_eq!(p.len(), 8);
        assert!(p.iter().all(|&x| x >= 1024));
        assert_eq!(tx.socket_for(0), 0);
        assert_eq!(tx.socket_for(u32::MAX), 7);
    }

    #[test]
    fn truncated_datagrams_are_delivered_empty() {
        let mut rx = UdpRx::bind(SocketAddr::new(LO, 0), false, false).unwrap();
        let port = rx.local_addr().unwrap().port();
        let mut tx = UdpTx::open(LO, 1, port, false).unwrap();
        let big = vec![7u8; crate::buf::MAX_FRAME + 100];
        let ok = vec![1u8; 64];
        let items = [&big[..], &ok[..]];
        let st = tx.send(2, |i| (0, LO, items[i]));
        assert_eq!(st.sent, 2);
        let got = recv_all(&mut rx, 2);
        assert_eq!(got, vec![vec![], ok]);
    }
}
