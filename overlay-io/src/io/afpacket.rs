//! Raw Ethernet I/O on one interface through an `AF_PACKET` socket: trunk and untagged ports.
//!
//! A trunk (or bridge) port must see every frame on the wire, whatever its MAC and VLAN, and
//! send frames with any source MAC: a `SOCK_RAW`/`ETH_P_ALL` packet socket bound to the
//! interface, in promiscuous mode, does both without a kernel bridge.
//!
//! - **Batches.** `recvmmsg`/`sendmmsg` move up to [`BATCH`] frames per system call. The
//!   message headers, I/O vectors and control buffers are allocated once, at open; a call
//!   only points them at the caller's buffers.
//! - **VLAN tags stay inline.** On receive the kernel moves the outer 802.1Q/802.1ad tag out
//!   of the frame into socket-buffer metadata (`skb_vlan_untag`, or the NIC's VLAN offload)
//!   and reports it in the `PACKET_AUXDATA` control message. We put it back where it was, so
//!   the datapath always sees tags inline, stripped or not. Inner tags (QinQ) are never
//!   stripped. On transmit an inline tag is sent as is.
//! - **Our own frames.** `PACKET_IGNORE_OUTGOING` keeps the socket from receiving what it
//!   (or anything else on the host) transmits on the interface, so a bridge never learns
//!   or forwards its own output.
//! - **Workers.** Several sockets on one interface can form a fanout group that steers each
//!   frame by a symmetric hash of its flow ([`super::steer`]), one socket per worker.
//! - **Offloads (`PACKET_VNET_HDR`).** A same-host sender (a veth peer) with TSO/GSO on
//!   hands us TCP super-frames of up to 64 KiB, and frames whose checksum it left partial.
//!   Every frame arrives behind a `virtio_net_hdr` that says so, into one of [`RX_BUFS`]
//!   64 KiB buffers; we finish the checksum, or cut the super-frame into MSS-sized segments
//!   ([`crate::wire::gso`]), before delivering frames to the caller's buffers. The segments
//!   of one super-frame may span several `recv_batch` calls. What cannot be segmented
//!   (legacy UFO, unparseable headers) is counted in [`AfPacket::gso_dropped`]. Every frame
//!   sent carries an all-zero header: no offload asked of the kernel.
//! - **Truncation.** A frame larger than a packet buffer (and not a super-frame) is counted
//!   in [`AfPacket::truncated`] and dropped, never delivered cut.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use libc::{c_int, c_uint, c_void};

use crate::buf::{MAX_FRAME, PacketBuf};
use crate::wire::gso::{self, F_NEEDS_CSUM, GSO_NONE, Plan, VNET_HDR_LEN, VnetHdr};
use crate::wire::vlan;

/// The most frames moved by one system call.
pub const BATCH: usize = 64;

/// How many frames one `recvmmsg` takes in, each into its own 64 KiB buffer.
pub const RX_BUFS: usize = 16;

/// A receive buffer: the virtio header, then the largest GSO frame (64 KiB of IP packet)
/// with its Ethernet header and tags. Anything larger is truncated and counted.
const RX_BUF_LEN: usize = VNET_HDR_LEN + 65_536 + 256;

/// `SOL_PACKET` option (linux/if_packet.h): frames carry a `virtio_net_hdr` in front.
const PACKET_VNET_HDR: c_int = 15;

/// The header sent in front of every frame: no checksum or segmentation offload.
static TX_VNET_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// Room for the `PACKET_AUXDATA` control message: `CMSG_SPACE(sizeof(tpacket_auxdata))` is
/// 40 bytes on 64-bit Linux; the tests check that it fits.
const CMSG_BUF_LEN: usize = 64;

/// A control-message buffer aligned for `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_BUF_LEN]);

/// A raw packet socket bound to one interface.
pub struct AfPacket {
    fd: OwnedFd,
    ifname: String,
    ifindex: i32,
    /// Frames dropped on receive because they were larger than a buffer.
    pub truncated: u64,
    /// Super-frames dropped on receive because they could not be segmented (legacy UFO,
    /// unparseable headers, segments larger than a buffer). They are too large to forward
    /// whole, so they are counted in [`truncated`](Self::truncated) too.
    pub gso_dropped: u64,
    rx_msgs: Box<[libc::mmsghdr]>,
    rx_iovs: Box<[libc::iovec]>,
    rx_cmsgs: Box<[CmsgBuf]>,
    /// [`RX_BUFS`] buffers of [`RX_BUF_LEN`] bytes, allocated at open.
    rx_bufs: Box<[Box<[u8]>]>,
    /// Frames received into `rx_bufs` and not yet (fully) delivered, from `rx_next` on.
    rx_pending: Vec<Pending>,
    rx_next: usize,
    tx_msgs: Box<[libc::mmsghdr]>,
    /// Two per message: [`TX_VNET_HDR`], then the frame.
    tx_iovs: Box<[libc::iovec]>,
}

/// A frame waiting in a receive buffer.
#[derive(Clone, Copy)]
struct Pending {
    /// Which of `rx_bufs`.
    slot: usize,
    /// Frame length, after the virtio header.
    len: usize,
    vnet: VnetHdr,
    aux: Option<libc::tpacket_auxdata>,
    /// For a super-frame, how it is cut, and the next segment to deliver.
    plan: Option<Plan>,
    next_seg: usize,
}

// SAFETY: the raw pointers inside the message arrays only ever point into this struct's own
// boxed arrays or at buffers borrowed for the duration of one `recv_batch`/`send_batch`
// call, which takes `&mut self`; nothing is shared with another thread.
unsafe impl Send for AfPacket {}

impl fmt::Debug for AfPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AfPacket")
            .field("fd", &self.fd.as_raw_fd())
            .field("ifname", &self.ifname)
            .field("ifindex", &self.ifindex)
            .field("truncated", &self.truncated)
            .field("gso_dropped", &self.gso_dropped)
            .finish_non_exhaustive()
    }
}

impl AfPacket {
    /// Open a promiscuous, nonblocking raw socket on interface `ifname`. With
    /// `fanout = Some((group, workers))` the socket joins fanout group `group`, steered over
    /// `workers` members by [`super::steer::fanout_program`]; members are indexed in the order
    /// they open.
    pub fn open(ifname: &str, fanout: Option<(u16, u32)>) -> io::Result<AfPacket> {
        let ifindex = ifindex_of(ifname)?;
        // Protocol 0: the socket receives nothing until bound to the interface below, so no
        // frame from another interface slips in between.
        // SAFETY: plain system call with constant arguments.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(privileged_os_error(
                format_args!("opening an AF_PACKET socket for {ifname}"),
                "CAP_NET_RAW",
            ));
        }
        // SAFETY: `raw` is a descriptor we just opened and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let what = |opt: &str| format!("{opt} on the AF_PACKET socket for {ifname}");
        set_int_opt(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)
            .map_err(|e| with_context(e, what("PACKET_IGNORE_OUTGOING")))?;
        set_int_opt(&fd, libc::SOL_PACKET, libc::PACKET_AUXDATA, 1)
            .map_err(|e| with_context(e, what("PACKET_AUXDATA")))?;
        set_int_opt(&fd, libc::SOL_PACKET, PACKET_VNET_HDR, 1)
            .map_err(|e| with_context(e, what("PACKET_VNET_HDR")))?;
        // The default 208 KiB overflows under a TCP burst; overflows are counted through
        // `super::socket_drops` as `rx_overrun`.
        super::size_buffers(fd.as_raw_fd());

        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = ifindex;
        // SAFETY: `addr` is a live sockaddr_ll and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast::<libc::sockaddr>(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(os_error(format_args!(
                "binding an AF_PACKET socket to {ifname}"
            )));
        }

        // SAFETY: packet_mreq is plain data; all-zero is a valid value.
        let mut mreq: libc::packet_mreq = unsafe { mem::zeroed() };
        mreq.mr_ifindex = ifindex;
        mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
        // SAFETY: `mreq` is a live packet_mreq and the length passed is its size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                (&raw const mreq).cast::<c_void>(),
                mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(os_error(format_args!(
                "putting {ifname} in promiscuous mode"
            )));
        }

        if let Some((group, workers)) = fanout {
            super::steer::join_fanout(fd.as_raw_fd(), group, workers)
                .map_err(|e| with_context(e, format_args!("on {ifname}")))?;
        }

        // SAFETY: mmsghdr and iovec are plain data (null pointers, zero lengths) when zeroed;
        // the pointers are set before every use.
        let zeroed = || unsafe { mem::zeroed::<libc::mmsghdr>() };
        // SAFETY: as above.
        let zeroed_iov = || unsafe { mem::zeroed::<libc::iovec>() };
        Ok(AfPacket {
            fd,
            ifname: ifname.to_owned(),
            ifindex,
            truncated: 0,
            gso_dropped: 0,
            rx_msgs: (0..RX_BUFS).map(|_| zeroed()).collect(),
            rx_iovs: (0..RX_BUFS).map(|_| zeroed_iov()).collect(),
            rx_cmsgs: vec![CmsgBuf([0; CMSG_BUF_LEN]); RX_BUFS].into_boxed_slice(),
            rx_bufs: (0..RX_BUFS)
                .map(|_| vec![0u8; RX_BUF_LEN].into_boxed_slice())
                .collect(),
            rx_pending: Vec::with_capacity(RX_BUFS),
            rx_next: 0,
            tx_msgs: (0..BATCH).map(|_| zeroed()).collect(),
            tx_iovs: (0..2 * BATCH).map(|_| zeroed_iov()).collect(),
        })
    }

    /// The interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The interface index the socket is bound to.
    pub fn ifindex(&self) -> i32 {
        self.ifindex
    }

    /// Turn off GRO and LRO on the interface, so the kernel hands up frames as they were
    /// on the wire. A datapath that forwards frames needs them no larger than the MTU; a
    /// GRO-merged 64 KiB TCP super-frame does not fit a packet buffer or the egress port.
    /// Returns whether either was on. Best effort: some drivers refuse, and say so.
    pub fn disable_receive_offloads(&self) -> io::Result<bool> {
        // linux/ethtool.h
        const ETHTOOL_GGRO: u32 = 0x2b;
        const ETHTOOL_SGRO: u32 = 0x2c;
        const ETHTOOL_GFLAGS: u32 = 0x25;
        const ETHTOOL_SFLAGS: u32 = 0x26;
        const ETH_FLAG_LRO: u32 = 1 << 15;
        let mut changed = false;
        let gro = self.ethtool(ETHTOOL_GGRO, 0)?;
        if gro != 0 {
            self.ethtool(ETHTOOL_SGRO, 0)?;
            changed = true;
        }
        let flags = self.ethtool(ETHTOOL_GFLAGS, 0)?;
        if flags & ETH_FLAG_LRO != 0 {
            self.ethtool(ETHTOOL_SFLAGS, flags & !ETH_FLAG_LRO)?;
            changed = true;
        }
        Ok(changed)
    }

    /// One `SIOCETHTOOL` get or set of a 32-bit value.
    fn ethtool(&self, cmd: u32, data: u32) -> io::Result<u32> {
        #[repr(C)]
        struct EthtoolValue {
            cmd: u32,
            data: u32,
        }
        let mut v = EthtoolValue { cmd, data };
        let mut req = ifreq_for(&self.ifname)?;
        req.ifr_ifru.ifru_data = (&raw mut v).cast();
        // SAFETY: `req` names the interface and points at `v`, a live ethtool_value that
        // the kernel reads and (for a get) writes; both outlive the call.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SIOCETHTOOL, &raw mut req) };
        if rc != 0 {
            return Err(os_error(format_args!(
                "ethtool command {cmd:#x} on {}",
                self.ifname
            )));
        }
        Ok(v.data)
    }

    /// The interface's current MTU (`SIOCGIFMTU`).
    pub fn mtu(&self) -> io::Result<u32> {
        let mut req = ifreq_for(&self.ifname)?;
        // SAFETY: `req` is a live ifreq holding a NUL-terminated name; SIOCGIFMTU writes
        // only `ifr_mtu` inside it.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SIOCGIFMTU, &raw mut req) };
        if rc != 0 {
            return Err(os_error(format_args!("reading the MTU of {}", self.ifname)));
        }
        // SAFETY: SIOCGIFMTU succeeded, so the kernel filled the `ifru_mtu` member.
        let mtu = unsafe { req.ifr_ifru.ifru_mtu };
        Ok(mtu as u32)
    }

    /// Receive up to `bufs.len()` (at most [`BATCH`]) frames without blocking; returns how
    /// many of `bufs`, from the front, now hold a frame (0 if none was waiting). VLAN tags the
    /// kernel stripped are back inline, partial checksums are complete and super-frames are
    /// cut into segments (the rest of a super-frame's segments come with the next calls).
    /// Frames larger than a buffer are dropped and counted in [`truncated`](Self::truncated),
    /// super-frames that cannot be cut in [`gso_dropped`](Self::gso_dropped).
    pub fn recv_batch(&mut self, bufs: &mut [PacketBuf]) -> io::Result<usize> {
        let n = bufs.len().min(BATCH);
        let mut out = 0;
        // A full receive may mean more is waiting: take in more, up to `n` frames in all.
        let mut may_refill = true;
        while out < n {
            if self.rx_next >= self.rx_pending.len() {
                if !may_refill {
                    break;
                }
                let want = (n - out).min(RX_BUFS);
                let got = self.receive(want)?;
                may_refill = got == RX_BUFS;
                if got == 0 {
                    break;
                }
                continue;
            }
            let p = &mut self.rx_pending[self.rx_next];
            let frame = &self.rx_bufs[p.slot][VNET_HDR_LEN..VNET_HDR_LEN + p.len];
            let buf = &mut bufs[out];
            buf.reset();
            match p.plan {
                None => {
                    self.rx_next += 1;
                    if p.len > MAX_FRAME {
                        self.truncated += 1;
                        continue;
                    }
                    buf.fill(frame);
                    // A local sender with checksum offload left the TCP/UDP checksum
                    // partial; we forward the frame elsewhere, so finish it as its NIC would
                    // have. The offsets count from the frame as received, before the tag.
                    if p.vnet.flags & F_NEEDS_CSUM != 0 {
                        gso::complete_csum(
                            buf.bytes_mut(),
                            usize::from(p.vnet.csum_start),
                            usize::from(p.vnet.csum_offset),
                        );
                    }
                }
                Some(plan) => {
                    let k = p.next_seg;
                    p.next_seg += 1;
                    if p.next_seg >= plan.segments() {
                        self.rx_next += 1;
                    }
                    match plan.write(frame, k, buf.recv_area()) {
                        Ok(len) => buf.set_received(len),
                        Err(_) => {
                            // Checked when received; never happens. Drop the rest of it.
                            self.gso_dropped += 1;
                            self.truncated += 1;
                            self.rx_next += usize::from(p.next_seg < plan.segments());
                            continue;
                        }
                    }
                }
            }
            if let Some(aux) = &p.aux {
                restore_vlan_tag(buf, aux);
            }
            out += 1;
        }
        Ok(out)
    }

    /// One `recvmmsg` of up to `want` (at most [`RX_BUFS`]) frames into the receive buffers,
    /// which must all have been delivered; the frames become the pending list. Returns how
    /// many frames the kernel handed over (dropped ones included).
    fn receive(&mut self, want: usize) -> io::Result<usize> {
        self.rx_pending.clear();
        self.rx_next = 0;
        let want = want.min(RX_BUFS);
        for i in 0..want {
            self.rx_iovs[i] = libc::iovec {
                iov_base: self.rx_bufs[i].as_mut_ptr().cast::<c_void>(),
                iov_len: RX_BUF_LEN,
            };
            let msg = &mut self.rx_msgs[i];
            msg.msg_len = 0;
            msg.msg_hdr.msg_name = ptr::null_mut();
            msg.msg_hdr.msg_namelen = 0;
            msg.msg_hdr.msg_iov = &raw mut self.rx_iovs[i];
            msg.msg_hdr.msg_iovlen = 1;
            msg.msg_hdr.msg_control = self.rx_cmsgs[i].0.as_mut_ptr().cast::<c_void>();
            msg.msg_hdr.msg_controllen = CMSG_BUF_LEN as _;
            msg.msg_hdr.msg_flags = 0;
        }
        let got = loop {
            // SAFETY: the first `want` headers point at `want` live iovecs, each covering one
            // of our own receive buffers of RX_BUF_LEN bytes, and at `want` control buffers
            // of CMSG_BUF_LEN bytes, all owned by `self`, borrowed mutably for this call.
            let rc = unsafe {
                libc::recvmmsg(
                    self.fd.as_raw_fd(),
                    self.rx_msgs.as_mut_ptr(),
                    want as c_uint,
                    libc::MSG_DONTWAIT,
                    ptr::null_mut(),
                )
            };
            if rc >= 0 {
                break rc as usize;
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::WouldBlock => return Ok(0),
                io::ErrorKind::Interrupted => continue,
                _ => {
                    return Err(with_context(
                        err,
                        format_args!("receiving on {}", self.ifname),
                    ));
                }
            }
        };

        for slot in 0..got {
            let msg = &self.rx_msgs[slot];
            let len = msg.msg_len as usize;
            if msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len > RX_BUF_LEN {
                self.truncated += 1;
                continue;
            }
            let Some(vnet) = VnetHdr::parse(&self.rx_bufs[slot][..len]) else {
                self.truncated += 1;
                continue;
            };
            let frame = &self.rx_bufs[slot][VNET_HDR_LEN..len];
            let plan = if vnet.gso_kind() == GSO_NONE {
                None
            } else {
                match Plan::new(frame, &vnet) {
                    Ok(plan) if plan.max_segment_len() <= MAX_FRAME => Some(plan),
                    _ => {
                        self.gso_dropped += 1;
                        self.truncated += 1;
                        continue;
                    }
                }
            };
            self.rx_pending.push(Pending {
                slot,
                len: frame.len(),
                vnet,
                aux: auxdata(&msg.msg_hdr),
                plan,
                next_seg: 0,
            });
        }
        Ok(got)
    }

    /// Send frames from `frames` on the interface, [`BATCH`] per system call, until the
    /// iterator ends or the kernel refuses one; returns how many were sent. The caller counts
    /// the rest as transmit errors. A full queue (`EAGAIN`, `ENOBUFS`) ends the call early;
    /// a frame the kernel refuses on its own (too long for the MTU, shorter than an Ethernet
    /// header) is skipped. An error is returned only if nothing at all could be sent.
    pub fn send_batch(&mut self, frames: &mut dyn Iterator<Item = &[u8]>) -> io::Result<usize> {
        let mut sent = 0;
        let mut exhausted = false;
        while !exhausted {
            let mut n = 0;
            while n < BATCH {
                let Some(frame) = frames.next() else {
                    exhausted = true;
                    break;
                };
                self.tx_iovs[2 * n] = libc::iovec {
                    iov_base: TX_VNET_HDR.as_ptr().cast_mut().cast::<c_void>(),
                    iov_len: VNET_HDR_LEN,
                };
                self.tx_iovs[2 * n + 1] = libc::iovec {
                    iov_base: frame.as_ptr().cast_mut().cast::<c_void>(),
                    iov_len: frame.len(),
                };
                let msg = &mut self.tx_msgs[n];
                msg.msg_len = 0;
                // Bound socket: no address sends on the bound interface.
                msg.msg_hdr.msg_name = ptr::null_mut();
                msg.msg_hdr.msg_namelen = 0;
                msg.msg_hdr.msg_iov = &raw mut self.tx_iovs[2 * n];
                msg.msg_hdr.msg_iovlen = 2;
                msg.msg_hdr.msg_control = ptr::null_mut();
                msg.msg_hdr.msg_controllen = 0;
                msg.msg_hdr.msg_flags = 0;
                n += 1;
            }
            let mut off = 0;
            while off < n {
                // SAFETY: headers `off..n` point at live iovec pairs that cover the static
                // zeroed virtio header and frames borrowed for `'a`, which outlives this
                // call; the kernel only reads them.
                let rc = unsafe {
                    libc::sendmmsg(
                        self.fd.as_raw_fd(),
                        self.tx_msgs[off..].as_mut_ptr(),
                        (n - off) as c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                if rc > 0 {
                    sent += rc as usize;
                    off += rc as usize;
                    continue;
                }
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN | libc::ENOBUFS) => return Ok(sent),
                    // This frame alone is bad: skip it.
                    Some(libc::EMSGSIZE | libc::EINVAL) => off += 1,
                    _ if sent > 0 => return Ok(sent),
                    _ => {
                        return Err(with_context(
                            err,
                            format_args!("sending on {}", self.ifname),
                        ));
                    }
                }
            }
        }
        Ok(sent)
    }
}

impl AsRawFd for AfPacket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The `PACKET_AUXDATA` control message of a received frame, if present.
fn auxdata(hdr: &libc::msghdr) -> Option<libc::tpacket_auxdata> {
    // SAFETY: `hdr` was filled by recvmmsg: `msg_control`/`msg_controllen` describe a live
    // control buffer holding well-formed control messages, which the CMSG_* macros walk
    // without leaving it.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(hdr) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is non-null and inside the control buffer (see above).
        let c = unsafe { &*cmsg };
        let len = mem::size_of::<libc::tpacket_auxdata>();
        // SAFETY: computing a length, no memory access.
        let need = unsafe { libc::CMSG_LEN(len as c_uint) } as usize;
        if c.cmsg_level == libc::SOL_PACKET
            && c.cmsg_type == libc::PACKET_AUXDATA
            && c.cmsg_len as usize >= need
        {
            // SAFETY: the message holds at least `len` data bytes (checked above); they may
            // be unaligned for tpacket_auxdata, hence read_unaligned.
            let aux = unsafe {
                ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::tpacket_auxdata>())
            };
            return Some(aux);
        }
        // SAFETY: as for CMSG_FIRSTHDR; returns null after the last message.
        cmsg = unsafe { libc::CMSG_NXTHDR(hdr, cmsg) };
    }
    None
}

/// Put back inline the VLAN tag the kernel moved into `aux`, keeping its PCP/DEI bits and
/// TPID (0x88a8 for an 802.1ad service tag). Kernels before 3.0 had no
/// `TP_STATUS_VLAN_VALID` and reported a tag by a non-zero TCI (libpcap's test too).
fn restore_vlan_tag(buf: &mut PacketBuf, aux: &libc::tpacket_auxdata) {
    let stripped = aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 || aux.tp_vlan_tci != 0;
    if !stripped {
        return;
    }
    let tpid = if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 && aux.tp_vlan_tpid != 0 {
        aux.tp_vlan_tpid
    } else {
        vlan::TPID
    };
    // A frame too short to hold MAC addresses cannot carry the tag; it stays as it came and
    // is dropped by whoever parses it.
    if buf.push_vlan_tag(aux.tp_vlan_tci & 0x0fff) {
        let tag = &mut buf.bytes_mut()[12..16];
        tag[0..2].copy_from_slice(&tpid.to_be_bytes());
        tag[2..4].copy_from_slice(&aux.tp_vlan_tci.to_be_bytes());
    }
}

fn set_int_opt(fd: &OwnedFd, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast::<c_void>(),
            mem::size_of::<c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn ifindex_of(ifname: &str) -> io::Result<i32> {
    let name = CString::new(ifname).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {ifname:?} contains a NUL byte"),
        )
    })?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(os_error(format_args!(
            "no network interface named {ifname:?}"
        )));
    }
    Ok(index as i32)
}

/// An `ifreq` naming `ifname`, for the `SIOCGIF*`/`TUNSETIFF` ioctls.
pub(crate) fn ifreq_for(ifname: &str) -> io::Result<libc::ifreq> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ || ifname.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "interface name {ifname:?} must be 1 to {} bytes without NUL",
                libc::IFNAMSIZ - 1
            ),
        ));
    }
    // SAFETY: ifreq is plain data (a name and a union of plain data); all-zero is valid.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(ifname.as_bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// `err` with `what` in front of its message.
pub(crate) fn with_context(err: io::Error, what: impl fmt::Display) -> io::Error {
    io::Error::new(err.kind(), format!("{what}: {err}"))
}

/// The last OS error, with context.
pub(crate) fn os_error(what: impl fmt::Display) -> io::Error {
    with_context(io::Error::last_os_error(), what)
}

/// The last OS error, with context and, for a permission error, the capability that is
/// missing: by far the most common cause when opening raw sockets and TAP devices.
pub(crate) fn privileged_os_error(what: impl fmt::Display, capability: &str) -> io::Error {
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => with_context(
            err,
            format_args!("{what}: needs {capability} (run as root)"),
        ),
        _ => with_context(err, what),
    }
}

/// Network namespaces for tests that need root.
#[cfg(test)]
pub(crate) mod netns {
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh network namespace that the current thread has entered; on drop the thread goes
    /// back to its original namespace and the namespace is deleted (with whatever interfaces
    /// are in it), on failure too. The root namespace is never touched.
    #[derive(Debug)]
    pub(crate) struct Netns {
        name: String,
        original: File,
    }

    impl Netns {
        /// Create and enter a namespace named `ovio-<tag>-<pid>-<n>`; `None` (after saying
        /// why) when not root.
        pub(crate) fn enter(tag: &str) -> Option<Netns> {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                println!("skipped: needs root (CAP_NET_ADMIN) for network namespaces");
                return None;
            }
            static SEQ: AtomicU32 = AtomicU32::new(0);
            let name = format!(
                "ovio-{tag}-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            );
            let original =
                File::open("/proc/thread-self/ns/net").expect("open the current network namespace");
            run(&["ip", "netns", "add", &name]);
            let ns = Netns { name, original };
            let file = File::open(format!("/var/run/netns/{}", ns.name)).expect("open new netns");
            // SAFETY: `file` is an open namespace descriptor; setns only changes this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            Some(ns)
        }

        /// Run `ip netns exec <ns> args...`, panicking with its output if it fails.
        pub(crate) fn exec(&self, args: &[&str]) -> String {
            let mut full = vec!["ip", "netns", "exec", &self.name];
            full.extend_from_slice(args);
            run(&full)
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            // SAFETY: `original` is the namespace descriptor opened in `enter`.
            let rc = unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                eprintln!("setns back: {}", std::io::Error::last_os_error());
            }
            let out = Command::new("ip")
                .args(["netns", "del", &self.name])
                .output();
            if !matches!(&out, Ok(o) if o.status.success()) {
                eprintln!("deleting netns {}: {out:?}", self.name);
            }
        }
    }

    fn run(args: &[&str]) -> String {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
        assert!(
            out.status.success(),
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::netns::Netns;
    use super::*;
    use crate::io::steer;

    const MARKER: [u8; 2] = [0x88, 0xb5]; // IEEE 802 local experimental EtherType 1
    const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
    const WAIT: Duration = Duration::from_secs(2);

    fn aux(status: u32, tci: u16, tpid: u16) -> libc::tpacket_auxdata {
        libc::tpacket_auxdata {
            tp_status: status,
            tp_len: 0,
            tp_snaplen: 0,
            tp_mac: 0,
            tp_net: 0,
            tp_vlan_tci: tci,
            tp_vlan_tpid: tpid,
        }
    }

    fn frame(tags: &[(u16, u16)], payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0xbb];
        f.extend_from_slice(&OUR_MAC);
        for &(tpid, tci) in tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&MARKER);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn control_buffer_fits_auxdata() {
        // SAFETY: computing a length, no memory access.
        let space = unsafe { libc::CMSG_SPACE(mem::size_of::<libc::tpacket_auxdata>() as u32) };
        assert!(space as usize <= CMSG_BUF_LEN);
        assert!(mem::align_of::<CmsgBuf>() >= mem::align_of::<libc::cmsghdr>());
    }

    #[test]
    fn stripped_tags_are_restored_inline() {
        let untagged = frame(&[], b"payload");
        let mut b = PacketBuf::new();

        // The kernel stripped a customer tag with PCP 5, VID 100.
        b.fill(&untagged);
        let status = libc::TP_STATUS_VLAN_VALID | libc::TP_STATUS_VLAN_TPID_VALID;
        restore_vlan_tag(&mut b, &aux(status, 0xa064, 0x8100));
        assert_eq!(b.bytes(), frame(&[(0x8100, 0xa064)], b"payload"));

        // An 802.1ad service tag, inner customer tag still inline.
        b.fill(&frame(&[(0x8100, 100)], b"payload"));
        restore_vlan_tag(&mut b, &aux(status, 200, 0x88a8));
        assert_eq!(
            b.bytes(),
            frame(&[(0x88a8, 200), (0x8100, 100)], b"payload")
        );

        // No TPID reported: a customer tag.
        b.fill(&untagged);
        restore_vlan_tag(&mut b, &aux(libc::TP_STATUS_VLAN_VALID, 7, 0));
        assert_eq!(b.bytes(), frame(&[(0x8100, 7)], b"payload"));

        // Priority-tagged (VID 0) is still a tag when the status says so.
        b.fill(&untagged);
        restore_vlan_tag(&mut b, &aux(libc::TP_STATUS_VLAN_VALID, 0x6000, 0));
        assert_eq!(b.bytes(), frame(&[(0x8100, 0x6000)], b"payload"));

        // Old kernels: no status bit, non-zero TCI.
        b.fill(&untagged);
        restore_vlan_tag(&mut b, &aux(0, 42, 0));
        assert_eq!(b.bytes(), frame(&[(0x8100, 42)], b"payload"));
    }

    #[test]
    fn unstripped_frames_are_left_alone() {
        let mut b = PacketBuf::new();
        for f in [frame(&[], b"x"), frame(&[(0x8100, 100)], b"x")] {
            b.fill(&f);
            restore_vlan_tag(&mut b, &aux(libc::TP_STATUS_USER, 0, 0));
            assert_eq!(b.bytes(), f);
        }
        // Too short for a tag: unchanged, no panic.
        b.fill(&[1, 2, 3]);
        restore_vlan_tag(&mut b, &aux(libc::TP_STATUS_VLAN_VALID, 5, 0x8100));
        assert_eq!(b.bytes(), [1, 2, 3]);
    }

    #[test]
    fn open_errors_name_the_interface() {
        let err = AfPacket::open("ovio-no-such0", None).expect_err("no such interface");
        assert!(err.to_string().contains("ovio-no-such0"), "{err}");
        let err = AfPacket::open("a-name-much-too-long-for-linux", None).expect_err("bad name");
        assert!(err.to_string().contains("a-name-much-too-long"), "{err}");
        assert!(ifreq_for("").is_err());
        assert!(ifreq_for("x\0y").is_err());
    }

    #[test]
    fn permission_errors_say_what_is_needed() {
        // SAFETY: writing this thread's errno, as a failed system call would.
        unsafe { *libc::__errno_location() = libc::EPERM };
        let err = privileged_os_error("opening an AF_PACKET socket for eth9", "CAP_NET_RAW");
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "opening an AF_PACKET socket for eth9: needs CAP_NET_RAW (run as root): "
            ),
            "{msg}"
        );
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn unprivileged_open_says_what_is_needed() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            println!("skipped: only meaningful without root");
            return;
        }
        // Fails at socket(), before anything touches the interface.
        let err = AfPacket::open("lo", None).expect_err("needs CAP_NET_RAW");
        assert!(
            err.to_string()
                .contains("lo: needs CAP_NET_RAW (run as root)"),
            "{err}"
        );
    }

    /// A veth pair `va`/`vb`, up, inside a fresh namespace.
    fn veth_pair(tag: &str, mtu: u32) -> Option<Netns> {
        let ns = Netns::enter(tag)?;
        let mtu = mtu.to_string();
        ns.exec(&[
            "ip", "link", "add", "name", "va", "type", "veth", "peer", "name", "vb",
        ]);
        for dev in ["va", "vb"] {
            ns.exec(&["ip", "link", "set", "dev", dev, "mtu", &mtu, "up"]);
        }
        Some(ns)
    }

    /// Receive until `want` frames from [`OUR_MAC`] arrived (over all sockets), or `wait`
    /// passed.
    fn recv_ours(socks: &mut [&mut AfPacket], want: usize, wait: Duration) -> Vec<Vec<Vec<u8>>> {
        let mut bufs: Vec<PacketBuf> = (0..8).map(|_| PacketBuf::new()).collect();
        let mut got = vec![Vec::new(); socks.len()];
        let deadline = Instant::now() + wait;
        while got.iter().map(Vec::len).sum::<usize>() < want && Instant::now() < deadline {
            for (i, sock) in socks.iter_mut().enumerate() {
                let n = sock.recv_batch(&mut bufs).expect("recv_batch");
                // Only our frames: the kernel sends its own (IPv6 DAD, MLD) on the veths.
                for b in &bufs[..n] {
                    if b.src_mac() == Some(OUR_MAC) {
                        got[i].push(b.bytes().to_vec());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        got
    }

    #[test]
    fn vlan_tags_arrive_inline_over_veth() {
        let Some(_ns) = veth_pair("afp", 9500) else {
            return;
        };
        let mut rx = AfPacket::open("va", None).expect("open va");
        let mut tx = AfPacket::open("vb", None).expect("open vb");
        assert!(rx.ifindex() > 0 && rx.ifindex() != tx.ifindex());
        assert_eq!(rx.mtu().expect("mtu"), 9500);

        let sent = [
            frame(&[], b"untagged"),
            frame(&[(0x8100, 100)], b"vid 100"),
            frame(&[(0x8100, 0xa064)], b"pcp 5 vid 100"),
            frame(&[(0x88a8, 200), (0x8100, 100)], b"qinq 200/100"),
        ];
        let n = tx
            .send_batch(&mut sent.iter().map(Vec::as_slice))
            .expect("send_batch");
        assert_eq!(n, sent.len());

        let got = recv_ours(&mut [&mut rx], sent.len(), WAIT);
        assert_eq!(got[0], sent, "tags inline, stripped by the kernel or not");
        assert_eq!(rx.truncated, 0);

        // PACKET_IGNORE_OUTGOING: the sender never sees its own frames.
        assert!(recv_ours(&mut [&mut tx], 1, Duration::from_millis(200))[0].is_empty());
    }

    #[test]
    fn oversized_frames_are_counted_not_delivered() {
        let Some(_ns) = veth_pair("afptrunc", 9500) else {
            return;
        };
        let mut rx = AfPacket::open("va", None).expect("open va");
        let mut tx = AfPacket::open("vb", None).expect("open vb");
        let header = frame(&[], b"").len();
        let exact = frame(&[], &vec![0x44; crate::buf::MAX_FRAME - header]);
        assert_eq!(exact.len(), crate::buf::MAX_FRAME);
        let big = frame(&[], &vec![0x55; crate::buf::MAX_FRAME - header + 1]);
        let small = frame(&[], b"small");
        let too_long = frame(&[], &vec![0x66; 9600]);
        let frames = [&exact, &big, &too_long, &small].map(Vec::as_slice);
        // The one over the MTU is refused by the kernel and skipped, the rest go.
        let n = tx.send_batch(&mut frames.into_iter()).expect("send_batch");
        assert_eq!(n, 3);
        let got = recv_ours(&mut [&mut rx], 2, WAIT);
        assert_eq!(
            got[0],
            vec![exact, small],
            "a frame that just fits is delivered"
        );
        assert_eq!(rx.truncated, 1);
    }

    /// Send `frame` from `tx` behind `vnet`, as a local sender with offloads would
    /// (`send_batch` always sends an all-zero header).
    fn send_with_vnet(tx: &AfPacket, vnet: &VnetHdr, frame: &[u8]) {
        let mut b = vec![0u8; VNET_HDR_LEN];
        assert!(vnet.emit(&mut b));
        b.extend_from_slice(frame);
        // SAFETY: `b` is a live buffer of `b.len()` bytes; the socket is bound.
        let rc = unsafe { libc::send(tx.as_raw_fd(), b.as_ptr().cast(), b.len(), 0) };
        assert_eq!(rc, b.len() as isize, "{}", io::Error::last_os_error());
    }

    /// The TCP/IPv4 pseudo-header sum of `frame` (network header at `l3`), folded.
    fn pseudo_v4(frame: &[u8], l3: usize) -> u16 {
        let mut s: u32 = frame[l3 + 12..l3 + 20]
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        s += (frame.len() - l3 - 20) as u32 + 6;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    fn assert_tcp_ok(f: &[u8], l3: usize) -> usize {
        use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket};
        let ip = Ipv4Packet::new_checked(&f[l3..]).expect("ipv4");
        assert!(ip.verify_checksum());
        let tcp = TcpPacket::new_checked(ip.payload()).expect("tcp");
        let (src, dst) = (
            IpAddress::Ipv4(ip.src_addr()),
            IpAddress::Ipv4(ip.dst_addr()),
        );
        assert!(tcp.verify_checksum(&src, &dst), "TCP checksum");
        tcp.payload().len()
    }

    #[test]
    fn super_frames_are_cut_and_checksums_completed() {
        use crate::wire::gso::fixtures::{payload, super_frame};
        use crate::wire::gso::{GSO_TCPV4, GSO_UDP};
        let Some(_ns) = veth_pair("afpgso", 1500) else {
            return;
        };
        let mut rx = AfPacket::open("va", None).expect("open va");
        let tx = AfPacket::open("vb", None).expect("open vb");
        let mss = 1000;
        for tags in [&[][..], &[100u16]] {
            let l3 = 14 + 4 * tags.len();
            let mut f = super_frame(tags, false, true, 0x18, &payload(3 * mss));
            f[6..12].copy_from_slice(&OUR_MAC);
            let pseudo = pseudo_v4(&f, l3);
            f[l3 + 36..l3 + 38].copy_from_slice(&pseudo.to_be_bytes());
            let vnet = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: (l3 + 40) as u16,
                gso_size: mss as u16,
                csum_start: (l3 + 20) as u16,
                csum_offset: 16,
            };
            send_with_vnet(&tx, &vnet, &f);
            let got = recv_ours(&mut [&mut rx], 3, WAIT);
            assert_eq!(got[0].len(), 3, "three segments ({tags:?})");
            for s in &got[0] {
                assert_eq!(s.len(), l3 + 40 + mss);
                assert_eq!(s[..l3], f[..l3], "tags inline");
                assert_eq!(assert_tcp_ok(s, l3), mss);
            }
        }

        // A single frame with a partial checksum.
        let mut f = super_frame(&[], false, true, 0x18, &payload(99));
        f[6..12].copy_from_slice(&OUR_MAC);
        smoltcp::wire::Ipv4Packet::new_unchecked(&mut f[14..]).fill_checksum();
        let pseudo = pseudo_v4(&f, 14);
        f[50..52].copy_from_slice(&pseudo.to_be_bytes());
        let vnet = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        send_with_vnet(&tx, &vnet, &f);
        let got = recv_ours(&mut [&mut rx], 1, WAIT);
        assert_eq!(got[0].len(), 1);
        assert_eq!(assert_tcp_ok(&got[0][0], 14), 99);
        assert_eq!((rx.truncated, rx.gso_dropped), (0, 0));

        // Legacy UFO is not cut: counted, not delivered. (Kernels without UFO refuse it.)
        let f = super_frame(&[], false, false, 0, &payload(3 * mss));
        let vnet = VnetHdr {
            gso_type: GSO_UDP,
            gso_size: mss as u16,
            ..VnetHdr::default()
        };
        let mut b = vec![0u8; VNET_HDR_LEN];
        assert!(vnet.emit(&mut b));
        b.extend_from_slice(&f);
        // SAFETY: `b` is a live buffer of `b.len()` bytes; the socket is bound.
        let rc = unsafe { libc::send(tx.as_raw_fd(), b.as_ptr().cast(), b.len(), 0) };
        if rc > 0 {
            recv_ours(&mut [&mut rx], 1, Duration::from_millis(200));
            assert_eq!(rx.gso_dropped, rx.truncated);
        }
    }

    #[test]
    fn fanout_steers_like_the_program() {
        let Some(_ns) = veth_pair("afpfan", 1500) else {
            return;
        };
        let workers = 2;
        let mut w0 = AfPacket::open("va", Some((7, workers))).expect("join fanout");
        let mut w1 = AfPacket::open("va", Some((7, workers))).expect("join fanout");
        let mut tx = AfPacket::open("vb", None).expect("open vb");

        let prog = steer::fanout_program(workers);
        let mut want = [Vec::new(), Vec::new()];
        for i in 0..32u8 {
            let mut f = steer::fixtures::ipv4_frame(
                [10, 1, 0, i],
                [10, 2, 0, 100 - i],
                17,
                1000 + u16::from(i),
                2000,
            );
            f[6..12].copy_from_slice(&OUR_MAC);
            // The kernel runs it with the data pointer at the network header.
            let w = steer::interp::run(&prog, &f, 14);
            want[w as usize].push(f);
        }
        assert!(!want[0].is_empty() && !want[1].is_empty());
        let all: Vec<&[u8]> = want.iter().flatten().map(Vec::as_slice).collect();
        assert_eq!(tx.send_batch(&mut all.into_iter()).expect("send"), 32);

        let got = recv_ours(&mut [&mut w0, &mut w1], 32, WAIT);
        assert_eq!(got[0].len() + got[1].len(), 32);
        assert_eq!(got[0], want[0], "worker 0");
        assert_eq!(got[1], want[1], "worker 1");
    }
}
