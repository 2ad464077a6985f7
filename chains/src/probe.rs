//! Synthetic tenant hosts for `vnfctl probe`.
//!
//! A probe is a fake VM on an overlay segment: it is its own VXLAN VTEP (RFC 7348) on a UDP
//! socket of the underlay, and runs a smoltcp interface (Ethernet medium) over it, so that a
//! chain can be pinged, connected to and served from without root, a kernel VTEP or a VM.
//!
//! Design:
//! - `VxlanPort` is the smoltcp device. A frame smoltcp sends gets the 8-byte VXLAN header
//!   and goes to the VTEP learned for its destination MAC, or, when that is broadcast,
//!   multicast or unknown, to every VTEP of the flood list (head-end replication, RFC 7348
//!   §4.2). A received datagram is checked (I flag, VNI), its inner source MAC learned
//!   against the outer source address (at the VXLAN port: the outer source port is only
//!   entropy, RFC 7348 §5), and the inner frame handed to smoltcp.
//! - The workspace builds smoltcp without `auto-icmp-echo-reply`, so the interface would not
//!   answer pings: the device answers echo requests for the host's address itself
//!   (`echo_reply`), before smoltcp sees them.
//! - One thread drives everything: poll the interface one received packet at a time, look at
//!   the sockets, then wait on the UDP socket for at most the interface's poll delay (capped
//!   at [`MAX_WAIT`]), so an idle probe sleeps instead of spinning.
//!
//! The underlay is whatever the UDP socket reaches; tests use 127.0.0.0/8 only.

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnetwork::Ipv4Network;
use smoltcp::iface::{Config, Interface, PollIngressSingleResult, SocketHandle, SocketSet};
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::{icmp, tcp};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, HardwareAddress, Icmpv4Packet,
    Icmpv4Repr, IpAddress, IpCidr, IpProtocol, Ipv4Packet, Ipv4Repr,
};

use overlay_io::Vni;
use overlay_io::wire::vxlan;

/// The IANA VXLAN port, the default of [`HostSpec::vxlan_port`].
pub const DEFAULT_VXLAN_PORT: u16 = vxlan::UDP_PORT;
/// The usual IP MTU of a segment over a 1500-byte underlay (1500 - 50 of VXLAN overhead).
pub const DEFAULT_MTU: usize = 1450;
/// Longest sleep between two polls: bounds how late a stop flag or deadline is seen.
pub const MAX_WAIT: Duration = Duration::from_millis(10);
/// Listening sockets [`SyntheticHost::serve_http`] keeps open: smoltcp resets a SYN that
/// finds no listener, so a burst of clients needs that many at once.
pub const LISTEN_POOL: usize = 32;

/// Ethernet header bytes that smoltcp counts in a device MTU (and the IP MTU does not).
const ETHERNET_HEADER: usize = 14;
/// Accepted IP MTUs: IPv4's 576 minimum up to what one UDP datagram carries.
const MTU_RANGE: std::ops::RangeInclusive<usize> = 576..=65000;
/// Received packets handled per poll before egress gets its turn.
const INGRESS_BURST: usize = 64;
/// Datagrams a device `receive` reads past (dropped or answered) before giving up for now.
const RECEIVE_TRIES: usize = 64;
/// Client ports: the IANA dynamic range.
const EPHEMERAL_FIRST: u16 = 49152;
const EPHEMERAL_COUNT: u16 = 16384;
/// Learned MACs are forgotten after this long without a packet (the Linux bridge default).
const FDB_AGE: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(300);
/// A bound on the learning table, against a flood of forged source MACs.
const FDB_MAX: usize = 4096;
/// Socket buffers: a client reads whole responses, a server writes small ones.
const CLIENT_BUF: usize = 64 * 1024;
const SERVER_RX_BUF: usize = 8 * 1024;
const SERVER_TX_BUF: usize = 32 * 1024;
/// Largest request head a server reads and response head a client accepts.
const MAX_HEAD: usize = 64 * 1024;
/// Largest response body a client keeps.
const MAX_BODY: usize = 16 << 20;
/// A server connection with no progress for this long is reset.
const CONN_IDLE: Duration = Duration::from_secs(30);
/// Server connections beyond this are reset, oldest first.
const MAX_SERVER_CONNS: usize = 1024;
/// How long a client waits for its closed connection to finish the FIN exchange.
const LINGER: Duration = Duration::from_millis(500);
/// Bytes of an echo request's data, as `ping` sends.
const PING_DATA: usize = 56;

/// What a synthetic host is: its place on the underlay and on the overlay segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// Local underlay address to bind (UDP).
    pub vtep: Ipv4Addr,
    /// VXLAN UDP port, bound locally and sent to ([`DEFAULT_VXLAN_PORT`] by default).
    pub vxlan_port: u16,
    /// The segment's VNI, 1..=16777215.
    pub vni: u32,
    /// The flood list: the segment's VTEPs, each reached at `peer:vxlan_port`.
    pub peers: Vec<Ipv4Addr>,
    /// The host's MAC (unicast).
    pub mac: [u8; 6],
    /// The host's address and the segment's prefix, e.g. 10.0.1.11/24.
    pub address: Ipv4Network,
    /// The default route, on the segment.
    pub gateway: Option<Ipv4Addr>,
    /// IP MTU of the segment, e.g. [`DEFAULT_MTU`].
    pub mtu: usize,
}

impl HostSpec {
    /// A spec with the default port and MTU, no peers and no gateway.
    pub fn new(vtep: Ipv4Addr, vni: u32, mac: [u8; 6], address: Ipv4Network) -> HostSpec {
        HostSpec {
            vtep,
            vxlan_port: DEFAULT_VXLAN_PORT,
            vni,
            peers: Vec::new(),
            mac,
            address,
            gateway: None,
            mtu: DEFAULT_MTU,
        }
    }
}

/// A locally administered unicast MAC (02:00 + the four address bytes), so that probes
/// named by their addresses need no MAC in the config.
pub fn derived_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x00, o[0], o[1], o[2], o[3]]
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Nothing answered in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The target answered the SYN with a reset: nothing listens on that port.
    #[error("connection to {0} refused")]
    Refused(SocketAddrV4),
    /// The connection was reset after it was established.
    #[error("connection to {0} reset")]
    Reset(SocketAddrV4),
    /// The target is neither on the segment nor reachable through a gateway.
    #[error("no route to {0}")]
    NoRoute(Ipv4Addr),
    /// The underlay socket failed.
    #[error("underlay socket: {0}")]
    Io(#[from] io::Error),
    /// The HTTP exchange was malformed.
    #[error("HTTP: {0}")]
    Http(String),
    /// smoltcp refused a socket operation (port 0, for one).
    #[error("socket: {0}")]
    Socket(String),
}

/// The outcome of [`SyntheticHost::ping`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PingReport {
    /// Echo requests sent.
    pub sent: u32,
    /// Echo replies received in time.
    pub received: u32,
    /// Round-trip time of each reply, in order.
    pub rtts: Vec<Duration>,
}

impl PingReport {
    /// The mean round-trip time, if any reply came.
    pub fn avg_rtt(&self) -> Option<Duration> {
        let n = u32::try_from(self.rtts.len()).ok().filter(|n| *n > 0)?;
        Some(self.rtts.iter().sum::<Duration>() / n)
    }
}

/// The outcome of [`SyntheticHost::http_get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// From the call to the last byte of the response (ARP and handshake included).
    pub elapsed: Duration,
}

impl HttpResponse {
    /// The first header field called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// Counters of a host's VTEP; every dropped datagram is counted under its reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeStats {
    /// Inner frames given to smoltcp.
    pub rx_frames: u64,
    /// Datagrams too short, without the I flag, or with an inner frame too short.
    pub rx_malformed: u64,
    /// Datagrams for another VNI.
    pub rx_wrong_vni: u64,
    /// Echo requests answered by the device.
    pub echo_replies: u64,
    /// Frames sent (each counted once however many VTEPs it was replicated to).
    pub tx_frames: u64,
    /// Frames sent to the whole flood list.
    pub tx_flooded: u64,
    /// Datagrams the underlay refused to send.
    pub tx_errors: u64,
}

/// Why a received datagram went no further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Discard {
    Malformed,
    WrongVni,
}

/// The inner frame of a VXLAN datagram for `vni`, or why there is none.
fn decap(datagram: &[u8], vni: Vni) -> Result<&[u8], Discard> {
    let packet = vxlan::Packet::new_checked(datagram).map_err(|_| Discard::Malformed)?;
    let repr = vxlan::Repr::parse(&packet).map_err(|e| match e {
        overlay_io::wire::Error::BadVni => Discard::WrongVni,
        _ => Discard::Malformed,
    })?;
    if repr.vni != vni {
        return Err(Discard::WrongVni);
    }
    let inner = packet.payload();
    if inner.len() < ETHERNET_HEADER {
        return Err(Discard::Malformed);
    }
    Ok(inner)
}

/// The echo reply to `frame` if it is an ICMP echo request to `ip` at `mac`.
///
/// RFC 1122 §3.2.2.6: "Every host MUST implement an ICMP Echo server function". The reply
/// goes back to the frame's source MAC, which is the sender on the segment or its router.
fn echo_reply(frame: &[u8], mac: EthernetAddress, ip: Ipv4Addr) -> Option<Vec<u8>> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.dst_addr() != mac || eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let caps = ChecksumCapabilities::default();
    let ip_packet = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip_packet.more_frags() || ip_packet.frag_offset() != 0 {
        return None;
    }
    let ip_in = Ipv4Repr::parse(&ip_packet, &caps).ok()?;
    let src = ip_in.src_addr;
    if ip_in.dst_addr != ip
        || ip_in.next_header != IpProtocol::Icmp
        || src.is_broadcast()
        || src.is_multicast()
        || src.is_unspecified()
        || !eth.src_addr().is_unicast()
    {
        return None;
    }
    let icmp_packet = Icmpv4Packet::new_checked(ip_packet.payload()).ok()?;
    let Icmpv4Repr::EchoRequest {
        ident,
        seq_no,
        data,
    } = Icmpv4Repr::parse(&icmp_packet, &caps).ok()?
    else {
        return None;
    };
    let icmp_out = Icmpv4Repr::EchoReply {
        ident,
        seq_no,
        data,
    };
    let ip_out = Ipv4Repr {
        src_addr: ip,
        dst_addr: src,
        next_header: IpProtocol::Icmp,
        payload_len: icmp_out.buffer_len(),
        hop_limit: 64,
    };
    let eth_out = EthernetRepr {
        src_addr: mac,
        dst_addr: eth.src_addr(),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buf = vec![0; eth_out.buffer_len() + ip_out.buffer_len() + icmp_out.buffer_len()];
    let mut eth_frame = EthernetFrame::new_unchecked(&mut buf[..]);
    eth_out.emit(&mut eth_frame);
    let mut ip_packet = Ipv4Packet::new_unchecked(eth_frame.payload_mut());
    ip_out.emit(&mut ip_packet, &caps);
    icmp_out.emit(
        &mut Icmpv4Packet::new_unchecked(ip_packet.payload_mut()),
        &caps,
    );
    Some(buf)
}

/// The VTEP: the smoltcp device over a UDP socket.
#[derive(Debug)]
struct VxlanPort {
    socket: UdpSocket,
    local: SocketAddrV4,
    vni: Vni,
    /// Where broadcast, multicast and unknown unicast go.
    flood: Vec<SocketAddrV4>,
    /// Learned inner MAC -> the VTEP it was last seen behind, and when.
    fdb: HashMap<EthernetAddress, (SocketAddrV4, smoltcp::time::Instant)>,
    mac: EthernetAddress,
    ip: Ipv4Addr,
    /// Device MTU as smoltcp counts it: the IP MTU plus the Ethernet header.
    mtu: usize,
    rx_buf: Vec<u8>,
    /// A `Cell` because the transmit token only holds a shared borrow of the port.
    stats: Cell<ProbeStats>,
}

impl VxlanPort {
    fn count(&self, f: impl FnOnce(&mut ProbeStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    fn learn(&mut self, mac: EthernetAddress, from: SocketAddrV4, now: smoltcp::time::Instant) {
        if self.fdb.len() >= FDB_MAX && !self.fdb.contains_key(&mac) {
            self.fdb.retain(|_, (_, seen)| now < *seen + FDB_AGE);
            if self.fdb.len() >= FDB_MAX {
                return;
            }
        }
        self.fdb.insert(mac, (from, now));
    }

    /// Check the datagram of `len` bytes in `rx_buf`; `true` if its inner frame is for smoltcp.
    fn accept(&mut self, len: usize, from: SocketAddrV4, now: smoltcp::time::Instant) -> bool {
        let inner = match decap(&self.rx_buf[..len], self.vni) {
            Ok(inner) => inner,
            Err(Discard::Malformed) => {
                self.count(|s| s.rx_malformed += 1);
                return false;
            }
            Err(Discard::WrongVni) => {
                self.count(|s| s.rx_wrong_vni += 1);
                return false;
            }
        };
        let src = EthernetFrame::new_unchecked(inner).src_addr();
        let reply = echo_reply(inner, self.mac, self.ip);
        // Anyone may talk to the probe; the flood list only says where floods go.
        // Learned against the sender's address at the VXLAN port: the outer source port
        // is flow entropy, not where that VTEP listens (RFC 7348 §5).
        if src.is_unicast() && src != self.mac {
            self.learn(src, SocketAddrV4::new(*from.ip(), self.local.port()), now);
        }
        if let Some(reply) = reply {
            self.send(now, reply.len(), |b| b.copy_from_slice(&reply));
            self.count(|s| s.echo_replies += 1);
            return false;
        }
        self.count(|s| s.rx_frames += 1);
        true
    }

    /// Encapsulate the `len`-byte frame `fill` writes and send it where its MAC is.
    fn send<R>(
        &self,
        now: smoltcp::time::Instant,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> R {
        let mut buf = vec![0; vxlan::HEADER_LEN + len];
        vxlan::Repr { vni: self.vni }.emit(&mut vxlan::Packet::new_unchecked(&mut buf[..]));
        let r = fill(&mut buf[vxlan::HEADER_LEN..]);
        let dst = EthernetFrame::new_checked(&buf[vxlan::HEADER_LEN..])
            .map(|f| f.dst_addr())
            .unwrap_or(EthernetAddress::BROADCAST);
        let learned = self
            .fdb
            .get(&dst)
            .filter(|(_, seen)| dst.is_unicast() && now < *seen + FDB_AGE)
            .map(|(vtep, _)| *vtep);
        let mut errors = 0;
        match learned {
            Some(vtep) => errors += u64::from(self.socket.send_to(&buf, vtep).is_err()),
            None => {
                for vtep in &self.flood {
                    errors += u64::from(self.socket.send_to(&buf, vtep).is_err());
                }
            }
        }
        self.count(|s| {
            s.tx_frames += 1;
            s.tx_flooded += u64::from(learned.is_none());
            s.tx_errors += errors;
        });
        r
    }
}

/// A received inner frame.
#[derive(Debug)]
struct RxToken<'a> {
    frame: &'a [u8],
}

/// Room for one frame to send.
#[derive(Debug)]
struct TxToken<'a> {
    port: &'a VxlanPort,
    now: smoltcp::time::Instant,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.frame)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        self.port.send(self.now, len, f)
    }
}

impl phy::Device for VxlanPort {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, now: smoltcp::time::Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        for _ in 0..RECEIVE_TRIES {
            // WouldBlock is the usual end; any other error (one reported for an earlier
            // send) also means nothing to read now.
            let (len, from) = self.socket.recv_from(&mut self.rx_buf).ok()?;
            let SocketAddr::V4(from) = from else { continue };
            if self.accept(len, from, now) {
                return Some((
                    RxToken {
                        frame: &self.rx_buf[vxlan::HEADER_LEN..len],
                    },
                    TxToken { port: self, now },
                ));
            }
        }
        None
    }

    fn transmit(&mut self, now: smoltcp::time::Instant) -> Option<TxToken<'_>> {
        Some(TxToken { port: self, now })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

/// A fake VM on an overlay segment: its own VTEP and a smoltcp interface.
pub struct SyntheticHost {
    address: Ipv4Network,
    gateway: Option<Ipv4Addr>,
    dev: VxlanPort,
    iface: Interface,
    sockets: SocketSet<'static>,
    epoch: Instant,
    next_port: u16,
    next_ident: u16,
}

impl std::fmt::Debug for SyntheticHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyntheticHost")
            .field("vtep", &self.dev.local)
            .field("vni", &self.dev.vni)
            .field("mac", &self.dev.mac)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

fn ts(epoch: Instant, now: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(now.saturating_duration_since(epoch).as_micros() as i64)
}

/// splitmix64: spreads a weak seed (a MAC, a clock) over all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Wait until `socket` is readable or `d` (rounded up to a millisecond) has passed.
fn wait_readable(socket: &UdpSocket, d: Duration) {
    let ms = d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    let mut p = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd for the duration of the call. An error (EINTR) only ends the
    // wait early, which the callers' loops absorb.
    unsafe { libc::poll(&mut p, 1, ms) };
}

fn tcp_socket(rx: usize, tx: usize) -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; rx]),
        tcp::SocketBuffer::new(vec![0; tx]),
    );
    // Probes measure latency: no Nagle, no delayed ACKs.
    s.set_nagle_enabled(false);
    s.set_ack_delay(None);
    s
}

impl SyntheticHost {
    /// A host as `spec` says, its VTEP bound to `spec.vtep:spec.vxlan_port`.
    ///
    /// Errors with `InvalidInput` on a VNI out of range, a multicast MAC, an MTU outside
    /// 576..=65000, port 0 or a gateway off the segment (smoltcp would panic on some).
    pub fn new(spec: HostSpec) -> io::Result<Self> {
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        let vni = Vni::new(spec.vni).map_err(|e| invalid(e.to_string()))?;
        let mac = EthernetAddress(spec.mac);
        if !mac.is_unicast() {
            return Err(invalid(format!("MAC {mac} is not unicast")));
        }
        if !MTU_RANGE.contains(&spec.mtu) {
            return Err(invalid(format!(
                "MTU {} is outside {MTU_RANGE:?}",
                spec.mtu
            )));
        }
        if spec.vxlan_port == 0 {
            return Err(invalid("VXLAN port 0".into()));
        }
        let ip = spec.address.ip();
        if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
            return Err(invalid(format!("{ip} is not a host address")));
        }
        if let Some(gw) = spec.gateway
            && (!spec.address.contains(gw) || gw == ip)
        {
            return Err(invalid(format!("gateway {gw} is not on {}", spec.address)));
        }
        let socket = UdpSocket::bind(SocketAddrV4::new(spec.vtep, spec.vxlan_port))?;
        socket.set_nonblocking(true)?;
        let SocketAddr::V4(local) = socket.local_addr()? else {
            return Err(invalid("VTEP bound to a non-IPv4 address".into()));
        };
        let mut flood: Vec<SocketAddrV4> = Vec::new();
        for p in &spec.peers {
            let a = SocketAddrV4::new(*p, spec.vxlan_port);
            // Flooding to ourselves would feed our own broadcasts back to smoltcp.
            if a != local && !flood.contains(&a) {
                flood.push(a);
            }
        }
        let mut dev = VxlanPort {
            socket,
            local,
            vni,
            flood,
            fdb: HashMap::new(),
            mac,
            ip,
            mtu: spec.mtu + ETHERNET_HEADER,
            rx_buf: vec![0; 65536],
            stats: Cell::new(ProbeStats::default()),
        };
        let epoch = Instant::now();
        // Sequence numbers and ports must differ between probes and between runs.
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mac_bits = spec.mac.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b));
        let seed = mix(mac_bits ^ clock.rotate_left(16) ^ u64::from(std::process::id()));
        let mut config = Config::new(HardwareAddress::Ethernet(mac));
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut dev, ts(epoch, epoch));
        iface.update_ip_addrs(|a| {
            // A fresh interface has room for one address.
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(ip), spec.address.prefix()));
        });
        if let Some(gw) = spec.gateway {
            iface
                .routes_mut()
                .add_default_ipv4_route(gw)
                .map_err(|_| invalid("route table full".into()))?;
        }
        Ok(SyntheticHost {
            address: spec.address,
            gateway: spec.gateway,
            dev,
            iface,
            sockets: SocketSet::new(Vec::new()),
            epoch,
            next_port: (seed % u64::from(EPHEMERAL_COUNT)) as u16,
            next_ident: (seed >> 16) as u16,
        })
    }

    /// The bound underlay address of the host's VTEP.
    pub fn vtep(&self) -> SocketAddrV4 {
        self.dev.local
    }

    /// The host's overlay address and prefix.
    pub fn address(&self) -> Ipv4Network {
        self.address
    }

    /// The VTEP's counters.
    pub fn stats(&self) -> ProbeStats {
        self.dev.stats.get()
    }

    /// ICMP echo `count` times, `interval` apart, each waiting at most `timeout` for its reply.
    ///
    /// A target with no route counts every request as sent and lost.
    pub fn ping(
        &mut self,
        target: Ipv4Addr,
        count: u32,
        interval: Duration,
        timeout: Duration,
    ) -> PingReport {
        let mut report = PingReport::default();
        if self.check_route(target).is_err() {
            report.sent = count;
            return report;
        }
        let ident = self.next_ident;
        self.next_ident = self.next_ident.wrapping_add(1);
        let buffer = || {
            icmp::PacketBuffer::new(
                vec![icmp::PacketMetadata::EMPTY; 8],
                vec![0; 8 * (PING_DATA + 64)],
            )
        };
        let mut socket = icmp::Socket::new(buffer(), buffer());
        if socket.bind(icmp::Endpoint::Ident(ident)).is_err() {
            return report;
        }
        let h = self.sockets.add(socket);
        let caps = ChecksumCapabilities::default();
        for i in 0..count {
            let seq_no = i as u16;
            let started = Instant::now();
            let request = Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data: &[0x5a; PING_DATA],
            };
            let s = self.sockets.get_mut::<icmp::Socket>(h);
            // A full buffer (replies to earlier ones pending ARP) loses this one.
            if let Ok(buf) = s.send(request.buffer_len(), IpAddress::Ipv4(target)) {
                request.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps);
            }
            report.sent += 1;
            let reply = self.run_until(started + timeout, |sockets| {
                let s = sockets.get_mut::<icmp::Socket>(h);
                while let Ok((data, from)) = s.recv() {
                    let Ok(packet) = Icmpv4Packet::new_checked(data) else {
                        continue;
                    };
                    if let Ok(Icmpv4Repr::EchoReply {
                        ident: id,
                        seq_no: seq,
                        ..
                    }) = Icmpv4Repr::parse(&packet, &caps)
                        && id == ident
                        && seq == seq_no
                        && from == IpAddress::Ipv4(target)
                    {
                        return Some(Instant::now());
                    }
                }
                None
            });
            if let Some(at) = reply {
                report.received += 1;
                report.rtts.push(at.saturating_duration_since(started));
            }
            if i + 1 < count {
                let next = started + interval;
                self.run_until(next, |_| None::<()>);
            }
        }
        self.sockets.remove(h);
        report
    }

    /// A TCP handshake to `target`; Ok(handshake time), Err(Refused) on RST, Err(Timeout)
    /// otherwise. Closes the connection after.
    ///
    /// The time runs from the call, so it includes ARP resolution on first contact.
    pub fn tcp_connect(
        &mut self,
        target: SocketAddrV4,
        timeout: Duration,
    ) -> Result<Duration, ProbeError> {
        let started = Instant::now();
        let h = self.open(target, 1024, 1024)?;
        let outcome = self.run_until(started + timeout, |sockets| {
            match sockets.get::<tcp::Socket>(h).state() {
                tcp::State::SynSent | tcp::State::SynReceived => None,
                // Only a reset closes a socket that never got established.
                tcp::State::Closed => Some(Err(ProbeError::Refused(target))),
                _ => Some(Ok(Instant::now())),
            }
        });
        match outcome {
            Some(Ok(at)) => {
                self.finish(h);
                Ok(at.saturating_duration_since(started))
            }
            Some(Err(e)) => {
                self.sockets.remove(h);
                Err(e)
            }
            None => {
                // Forget it silently: a reset to a peer that never answered helps no one.
                self.sockets.remove(h);
                Err(ProbeError::Timeout(format!(
                    "no answer from {target} within {timeout:?}"
                )))
            }
        }
    }

    /// One HTTP/1.1 GET with `Connection: close` (Host header = `host`), the response read
    /// until close or its length. Handles Content-Length, chunked and close-delimited bodies.
    pub fn http_get(
        &mut self,
        target: SocketAddrV4,
        host: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<HttpResponse, ProbeError> {
        let started = Instant::now();
        if [host, path]
            .iter()
            .any(|s| s.bytes().any(|b| b.is_ascii_control() || b == b' '))
        {
            return Err(ProbeError::Http(
                "host or path has spaces or control bytes".into(),
            ));
        }
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: vnfctl-probe\r\n\
             Accept: */*\r\nConnection: close\r\n\r\n"
        );
        let h = self.open(target, CLIENT_BUF, request.len().max(1024))?;
        let mut client = Client {
            target,
            request: request.into_bytes(),
            sent: 0,
            connected: false,
            response: ResponseParser::default(),
        };
        let outcome = self.run_until(started + timeout, |sockets| {
            client.step(sockets.get_mut::<tcp::Socket>(h))
        });
        match outcome {
            Some(Ok((status, headers, body))) => {
                let elapsed = started.elapsed();
                self.finish(h);
                Ok(HttpResponse {
                    status,
                    headers,
                    body,
                    elapsed,
                })
            }
            Some(Err(e)) => {
                self.abort(h);
                Err(e)
            }
            None if client.connected => {
                self.abort(h);
                Err(ProbeError::Timeout(format!(
                    "response from {target} incomplete after {timeout:?} ({} bytes)",
                    client.response.buf.len()
                )))
            }
            None => {
                self.sockets.remove(h);
                Err(ProbeError::Timeout(format!(
                    "no answer from {target} within {timeout:?}"
                )))
            }
        }
    }

    /// Serve HTTP on `port` until `stop` is set: every request gets `200 OK`,
    /// `Content-Type: text/plain` and `body`, then the connection is closed. Returns the
    /// number of requests served.
    ///
    /// [`LISTEN_POOL`] sockets listen at any time; each one a client takes is replaced at
    /// once. Pings are answered too (by the device).
    pub fn serve_http(
        &mut self,
        port: u16,
        body: &str,
        stop: &AtomicBool,
    ) -> Result<u64, ProbeError> {
        let mut server = Server {
            port,
            body: body.as_bytes().to_vec(),
            listeners: Vec::new(),
            conns: Vec::new(),
            served: 0,
        };
        for _ in 0..LISTEN_POOL {
            let socket = server.listener()?;
            server.listeners.push(self.sockets.add(socket));
        }
        while !stop.load(Relaxed) {
            self.poll(&mut |sockets| server.rearm(sockets));
            server.rearm(&mut self.sockets);
            // Something moved: poll again at once so that it leaves now.
            if !server.pump(&mut self.sockets, Instant::now()) {
                self.wait(MAX_WAIT);
            }
        }
        // Reset what is still open, so clients learn now rather than at their timeout.
        for c in &server.conns {
            self.sockets.get_mut::<tcp::Socket>(c.handle).abort();
        }
        self.poll(&mut |_| {});
        for h in server
            .conns
            .iter()
            .map(|c| c.handle)
            .chain(server.listeners.iter().copied())
        {
            self.sockets.remove(h);
        }
        Ok(server.served)
    }

    /// Run the interface (answer ARP and pings) for `d` without doing anything else.
    pub fn idle(&mut self, d: Duration) {
        self.run_until(Instant::now() + d, |_| None::<()>);
    }

    fn now(&self) -> smoltcp::time::Instant {
        ts(self.epoch, Instant::now())
    }

    /// Run the interface: received packets one at a time, calling `rearm` whenever one
    /// changed a socket's state (a listener taken by a SYN is replaced before the next
    /// SYN), then what is due out.
    fn poll(&mut self, rearm: &mut dyn FnMut(&mut SocketSet<'static>)) {
        let t = self.now();
        self.iface.poll_maintenance(t);
        for _ in 0..INGRESS_BURST {
            match self
                .iface
                .poll_ingress_single(t, &mut self.dev, &mut self.sockets)
            {
                PollIngressSingleResult::None => break,
                PollIngressSingleResult::PacketProcessed => {}
                PollIngressSingleResult::SocketStateChanged => rearm(&mut self.sockets),
            }
        }
        let _ = self.iface.poll_egress(t, &mut self.dev, &mut self.sockets);
    }

    /// Sleep until a datagram comes, the interface has something due, or `limit` (at most
    /// [`MAX_WAIT`]) passed.
    fn wait(&mut self, limit: Duration) {
        let t = self.now();
        let mut d = limit.min(MAX_WAIT);
        if let Some(due) = self.iface.poll_delay(t, &self.sockets) {
            d = d.min(Duration::from_micros(due.total_micros()));
        }
        if !d.is_zero() {
            wait_readable(&self.dev.socket, d);
        }
    }

    /// Run the interface until `done` says so or `deadline` passes.
    fn run_until<T>(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&mut SocketSet<'static>) -> Option<T>,
    ) -> Option<T> {
        loop {
            self.poll(&mut |_| {});
            if let Some(v) = done(&mut self.sockets) {
                // Send at once what `done` may have queued.
                self.poll(&mut |_| {});
                return Some(v);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            self.wait(deadline - now);
        }
    }

    fn check_route(&self, target: Ipv4Addr) -> Result<(), ProbeError> {
        if target == self.address.ip() || (!self.address.contains(target) && self.gateway.is_none())
        {
            return Err(ProbeError::NoRoute(target));
        }
        Ok(())
    }

    /// A client socket connecting to `target` from the next ephemeral port.
    fn open(
        &mut self,
        target: SocketAddrV4,
        rx: usize,
        tx: usize,
    ) -> Result<SocketHandle, ProbeError> {
        self.check_route(*target.ip())?;
        let mut s = tcp_socket(rx, tx);
        let port = EPHEMERAL_FIRST + self.next_port % EPHEMERAL_COUNT;
        self.next_port = self.next_port.wrapping_add(1);
        s.connect(
            self.iface.context(),
            (IpAddress::Ipv4(*target.ip()), target.port()),
            port,
        )
        .map_err(|e| ProbeError::Socket(format!("connect to {target}: {e}")))?;
        Ok(self.sockets.add(s))
    }

    /// Close a client connection gracefully, resetting it if the FIN exchange takes longer
    /// than [`LINGER`].
    fn finish(&mut self, h: SocketHandle) {
        self.sockets.get_mut::<tcp::Socket>(h).close();
        let closed = self.run_until(Instant::now() + LINGER, |sockets| {
            let state = sockets.get::<tcp::Socket>(h).state();
            matches!(state, tcp::State::Closed | tcp::State::TimeWait).then_some(())
        });
        if closed.is_none() {
            self.abort(h);
        } else {
            self.sockets.remove(h);
        }
    }

    /// Reset a client connection and forget it.
    fn abort(&mut self, h: SocketHandle) {
        self.sockets.get_mut::<tcp::Socket>(h).abort();
        self.poll(&mut |_| {});
        self.sockets.remove(h);
    }
}

/// The first header field called `name` (case-insensitive).
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// How a response body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// 1xx, 204 and 304 have none.
    Empty,
    Length(usize),
    Chunked,
    /// Read until the server closes.
    Close,
}

/// A response's status line and header fields.
#[derive(Debug)]
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
    len: usize,
    framing: Framing,
}

/// The head of the response at the start of `buf`, once it is all there.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, ProbeError> {
    let bad = |m: &str| ProbeError::Http(m.to_string());
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(bad("response head too long"));
        }
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(bad("status line is not HTTP/1.x"));
    }
    let status = parts
        .next()
        .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad("bad status code"))?;
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad("header line without a colon"));
        };
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else if let Some(te) = header(&headers, "transfer-encoding") {
        // Chunked must be the last coding; any other coding is delimited by close.
        let last = te.rsplit(',').next().unwrap_or_default().trim();
        if last.eq_ignore_ascii_case("chunked") {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else if let Some(cl) = header(&headers, "content-length") {
        let n: usize = cl.parse().map_err(|_| bad("bad Content-Length"))?;
        if n > MAX_BODY {
            return Err(bad("body too large"));
        }
        Framing::Length(n)
    } else {
        Framing::Close
    };
    Ok(Some(Head {
        status,
        headers,
        len: end + 4,
        framing,
    }))
}

/// Decodes a chunked body as it arrives (RFC 9112 §7.1), without rescanning.
#[derive(Debug, Default)]
struct Chunked {
    /// Offset in the body bytes of the next chunk-size line (or trailer line).
    pos: usize,
    body: Vec<u8>,
    in_trailers: bool,
}

impl Chunked {
    /// Take what `data` (all the body bytes so far) completes; `true` at the last chunk's end.
    fn feed(&mut self, data: &[u8]) -> Result<bool, ProbeError> {
        let bad = |m: &str| ProbeError::Http(m.to_string());
        loop {
            let rest = data.get(self.pos..).unwrap_or_default();
            let Some(eol) = find(rest, b"\r\n") else {
                if rest.len() > MAX_HEAD {
                    return Err(bad("chunk line too long"));
                }
                return Ok(false);
            };
            let line = &rest[..eol];
            let start = self.pos + eol + 2;
            if self.in_trailers {
                self.pos = start;
                if line.is_empty() {
                    return Ok(true);
                }
                continue;
            }
            let size = match line.iter().position(|b| *b == b';') {
                Some(i) => &line[..i],
                None => line,
            }
            .trim_ascii();
            if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
                return Err(bad("bad chunk size"));
            }
            let size = size.iter().fold(0usize, |n, d| {
                (n << 4) | (char::from(*d).to_digit(16).unwrap_or(0) as usize)
            });
            if size == 0 {
                self.pos = start;
                self.in_trailers = true;
                continue;
            }
            if self.body.len() + size > MAX_BODY {
                return Err(bad("body too large"));
            }
            let end = start + size;
            let Some(crlf) = data.get(end..end + 2) else {
                return Ok(false);
            };
            if crlf != b"\r\n" {
                return Err(bad("chunk not followed by CRLF"));
            }
            self.body.extend_from_slice(&data[start..end]);
            self.pos = end + 2;
        }
    }
}

/// A response as it arrives.
#[derive(Debug, Default)]
struct ResponseParser {
    buf: Vec<u8>,
    head: Option<Head>,
    chunked: Chunked,
}

type Parsed = (u16, Vec<(String, String)>, Vec<u8>);

impl ResponseParser {
    /// The response, once complete; `eof` says the server closed its side.
    fn poll(&mut self, eof: bool) -> Result<Option<Parsed>, ProbeError> {
        loop {
            if self.head.is_none() {
                let Some(head) = parse_head(&self.buf)? else {
                    return Ok(None);
                };
                // Interim responses (100 Continue, ...) precede the real one; 101 ends HTTP.
                if (100..200).contains(&head.status) && head.status != 101 {
                    self.buf.drain(..head.len);
                    continue;
                }
                self.head = Some(head);
            }
            let Some(head) = &self.head else {
                return Ok(None);
            };
            let body = &self.buf[head.len..];
            let done = match head.framing {
                Framing::Empty => Some(Vec::new()),
                Framing::Length(n) => (body.len() >= n).then(|| body[..n].to_vec()),
                Framing::Chunked => self
                    .chunked
                    .feed(body)?
                    .then(|| std::mem::take(&mut self.chunked.body)),
                Framing::Close => eof.then(|| body.to_vec()),
            };
            return Ok(done.map(|b| (head.status, head.headers.clone(), b)));
        }
    }
}

/// One `http_get` in progress.
#[derive(Debug)]
struct Client {
    target: SocketAddrV4,
    request: Vec<u8>,
    sent: usize,
    connected: bool,
    response: ResponseParser,
}

impl Client {
    /// Move bytes; the outcome once there is one.
    fn step(&mut self, sock: &mut tcp::Socket<'_>) -> Option<Result<Parsed, ProbeError>> {
        match sock.state() {
            tcp::State::SynSent | tcp::State::SynReceived => return None,
            tcp::State::Closed if !self.connected => {
                return Some(Err(ProbeError::Refused(self.target)));
            }
            _ => self.connected = true,
        }
        if self.sent < self.request.len()
            && let Ok(n) = sock.send_slice(&self.request[self.sent..])
        {
            self.sent += n;
        }
        let mut eof = false;
        let mut reset = false;
        let mut chunk = [0u8; 8192];
        loop {
            match sock.recv_slice(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    self.response.buf.extend_from_slice(&chunk[..n]);
                    if self.response.buf.len() > MAX_HEAD + MAX_BODY + MAX_HEAD {
                        return Some(Err(ProbeError::Http("response too large".into())));
                    }
                }
                Err(tcp::RecvError::Finished) => {
                    eof = true;
                    break;
                }
                Err(_) => {
                    reset = true;
                    break;
                }
            }
        }
        match self.response.poll(eof) {
            Ok(Some(r)) => Some(Ok(r)),
            Err(e) => Some(Err(e)),
            Ok(None) if reset => Some(Err(ProbeError::Reset(self.target))),
            Ok(None) if eof => Some(Err(ProbeError::Http(format!(
                "connection closed after {} bytes, before the response ended",
                self.response.buf.len()
            )))),
            Ok(None) => None,
        }
    }
}

/// One connection of [`SyntheticHost::serve_http`].
#[derive(Debug)]
struct ServerConn {
    handle: SocketHandle,
    request: Vec<u8>,
    /// The response and how much of it the socket took.
    response: Option<(Vec<u8>, usize)>,
    closing: bool,
    last: Instant,
}

/// The state of [`SyntheticHost::serve_http`].
#[derive(Debug)]
struct Server {
    port: u16,
    body: Vec<u8>,
    listeners: Vec<SocketHandle>,
    conns: Vec<ServerConn>,
    served: u64,
}

impl Server {
    fn listener(&self) -> Result<tcp::Socket<'static>, ProbeError> {
        let mut s = tcp_socket(SERVER_RX_BUF, SERVER_TX_BUF);
        s.listen(self.port)
            .map_err(|e| ProbeError::Socket(format!("listen on port {}: {e}", self.port)))?;
        Ok(s)
    }

    /// Listeners that got a SYN become connections, and a fresh listener takes their place.
    fn rearm(&mut self, sockets: &mut SocketSet<'static>) {
        for i in 0..self.listeners.len() {
            let h = self.listeners[i];
            if sockets.get::<tcp::Socket>(h).state() == tcp::State::Listen {
                continue;
            }
            // The port was listened on already, so a fresh socket cannot fail to.
            let Ok(fresh) = self.listener() else { continue };
            self.listeners[i] = sockets.add(fresh);
            self.conns.push(ServerConn {
                handle: h,
                request: Vec::new(),
                response: None,
                closing: false,
                last: Instant::now(),
            });
        }
    }

    fn response(&self, head: bool) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            self.body.len()
        )
        .into_bytes();
        if !head {
            r.extend_from_slice(&self.body);
        }
        r
    }

    /// Read requests, write responses, drop finished connections; `true` if bytes moved.
    fn pump(&mut self, sockets: &mut SocketSet<'static>, now: Instant) -> bool {
        let mut moved = false;
        while self.conns.len() > MAX_SERVER_CONNS {
            let c = self.conns.remove(0);
            sockets.get_mut::<tcp::Socket>(c.handle).abort();
        }
        let mut chunk = [0u8; 4096];
        for i in 0..self.conns.len() {
            let sock = sockets.get_mut::<tcp::Socket>(self.conns[i].handle);
            // No progress for long (a handshake never completed, a client gone): reset.
            if now.saturating_duration_since(self.conns[i].last) > CONN_IDLE {
                sock.abort();
                continue;
            }
            if matches!(sock.state(), tcp::State::SynReceived) {
                continue;
            }
            let mut eof = false;
            loop {
                match sock.recv_slice(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        moved = true;
                        let c = &mut self.conns[i];
                        c.last = now;
                        // Bytes after the request head (a body, a pipelined request) are
                        // read and dropped: the connection closes after one response.
                        if c.response.is_none() {
                            c.request.extend_from_slice(&chunk[..n]);
                        }
                    }
                    Err(tcp::RecvError::Finished) => {
                        eof = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let c = &mut self.conns[i];
            if c.response.is_none() {
                if find(&c.request, b"\r\n\r\n").is_some() {
                    let head = c.request.starts_with(b"HEAD ");
                    c.request = Vec::new();
                    self.served += 1;
                    let r = self.response(head);
                    self.conns[i].response = Some((r, 0));
                } else if c.request.len() > MAX_HEAD {
                    sock.abort();
                    continue;
                } else if eof && !c.closing {
                    sock.close();
                    c.closing = true;
                }
            }
            let c = &mut self.conns[i];
            if let Some((r, sent)) = &mut c.response {
                if *sent < r.len()
                    && let Ok(n) = sock.send_slice(&r[*sent..])
                    && n > 0
                {
                    *sent += n;
                    c.last = now;
                    moved = true;
                }
                if *sent == r.len() && !c.closing {
                    sock.close();
                    c.closing = true;
                }
            }
        }
        // A SYN-RECEIVED socket reset by its client goes back to LISTEN; a replacement
        // listens already, so it goes too.
        self.conns.retain(|c| {
            let state = sockets.get::<tcp::Socket>(c.handle).state();
            let done = matches!(
                state,
                tcp::State::Closed | tcp::State::TimeWait | tcp::State::Listen
            );
            if done {
                sockets.remove(c.handle);
            }
            !done
        });
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VNI: u32 = 0x1234;

    fn datagram(vni: u32, frame: &[u8]) -> Vec<u8> {
        let mut d = vec![
            0x08,
            0,
            0,
            0,
            (vni >> 16) as u8,
            (vni >> 8) as u8,
            vni as u8,
            0,
        ];
        d.extend_from_slice(frame);
        d
    }

    #[test]
    fn decap_checks_flag_vni_and_length() {
        let vni = Vni::new(VNI).unwrap();
        let frame = [0xffu8; 14];
        assert_eq!(decap(&datagram(VNI, &frame), vni), Ok(&frame[..]));
        assert_eq!(
            decap(&datagram(VNI + 1, &frame), vni),
            Err(Discard::WrongVni)
        );
        assert_eq!(decap(&datagram(0, &frame), vni), Err(Discard::WrongVni));
        assert_eq!(
            decap(&datagram(VNI, &frame[..13]), vni),
            Err(Discard::Malformed)
        );
        let mut no_i = datagram(VNI, &frame);
        no_i[0] = 0;
        assert_eq!(decap(&no_i, vni), Err(Discard::Malformed));
        assert_eq!(decap(&[0x08, 0, 0], vni), Err(Discard::Malformed));
    }

    // An echo request 10.0.0.2 -> 10.0.0.1, ident 0x0102, seq 3, data "hi".
    const ECHO_REQUEST: [u8; 44] = [
        0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00, // Ethernet
        0x45, 0, 0, 30, 0, 0, 0x40, 0, 64, 1, 0x26, 0xdd, 10, 0, 0, 2, 10, 0, 0, 1, // IPv4
        8, 0, 0x8e, 0x91, 0x01, 0x02, 0, 3, b'h', b'i', // ICMP
    ];

    #[test]
    fn echo_request_gets_a_reply_to_its_sender() {
        let mac = EthernetAddress([0x02, 0, 0, 0, 0, 0x01]);
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        let reply = echo_reply(&ECHO_REQUEST, mac, ip).expect("a reply");
        let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
        assert_eq!(eth.dst_addr(), EthernetAddress([0x02, 0, 0, 0, 0, 0x02]));
        assert_eq!(eth.src_addr(), mac);
        let caps = ChecksumCapabilities::default();
        let ipp = Ipv4Packet::new_checked(eth.payload()).unwrap();
        let ipr = Ipv4Repr::parse(&ipp, &caps).unwrap();
        assert_eq!(
            (ipr.src_addr, ipr.dst_addr),
            (ip, Ipv4Addr::new(10, 0, 0, 2))
        );
        let icmp = Icmpv4Repr::parse(&Icmpv4Packet::new_checked(ipp.payload()).unwrap(), &caps);
        assert_eq!(
            icmp.unwrap(),
            Icmpv4Repr::EchoReply {
                ident: 0x0102,
                seq_no: 3,
                data: b"hi"
            }
        );
        // Not for us: another address, another MAC, a bad checksum.
        assert!(echo_reply(&ECHO_REQUEST, mac, Ipv4Addr::new(10, 0, 0, 9)).is_none());
        assert!(echo_reply(&ECHO_REQUEST, EthernetAddress([2, 0, 0, 0, 0, 9]), ip).is_none());
        let mut bad = ECHO_REQUEST;
        bad[43] ^= 1;
        assert!(echo_reply(&bad, mac, ip).is_none());
    }

    #[test]
    fn responses_are_framed_by_length_chunks_or_close() {
        let mut p = ResponseParser::default();
        p.buf.extend_from_slice(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",
        );
        assert!(p.poll(false).unwrap().is_none());
        p.buf.extend_from_slice(b"lo");
        let (status, headers, body) = p.poll(false).unwrap().unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(header(&headers, "content-length"), Some("5"));

        let mut p = ResponseParser::default();
        p.buf.extend_from_slice(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nserv\r\n",
        );
        assert!(p.poll(false).unwrap().is_none());
        p.buf.extend_from_slice(b"3\r\ned\n\r\n0\r\nX-T: 1\r\n\r\n");
        assert_eq!(p.poll(false).unwrap().unwrap().2, b"served\n");

        let mut p = ResponseParser::default();
        p.buf
            .extend_from_slice(b"HTTP/1.0 404 Not Found\r\n\r\nnope");
        assert!(p.poll(false).unwrap().is_none());
        assert_eq!(p.poll(true).unwrap().unwrap().2, b"nope");

        for bad in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc",
        ] {
            let mut p = ResponseParser::default();
            p.buf.extend_from_slice(bad);
            assert!(p.poll(true).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
