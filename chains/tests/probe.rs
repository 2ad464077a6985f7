//! Synthetic hosts talking to each other, and to hand-made VXLAN, over loopback VTEPs.
//!
//! Everything stays in 127.0.0.0/8 and needs no root: each test has its own loopback
//! addresses (127.0.0.201..=127.0.0.218 and 127.0.0.221..=127.0.0.226), each VTEP on 4789.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use chains::probe::{HostSpec, ProbeError, SyntheticHost, derived_mac};
use ipnetwork::Ipv4Network;

fn lo(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// A host with VTEP 127.0.0.`vtep` and address `overlay`/24 on `vni`, flooding to `peers`.
fn host(vtep: u8, vni: u32, overlay: Ipv4Addr, peers: &[u8]) -> SyntheticHost {
    let mut spec = HostSpec::new(
        lo(vtep),
        vni,
        derived_mac(overlay),
        Ipv4Network::new(overlay, 24).expect("a /24"),
    );
    spec.peers = peers.iter().map(|p| lo(*p)).collect();
    SyntheticHost::new(spec).expect("the VTEP binds its loopback address")
}

/// A host serving HTTP on a thread until [`Serving::stop`].
struct Serving {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(SyntheticHost, Result<u64, ProbeError>)>,
}

impl Serving {
    fn start(mut h: SyntheticHost, port: u16, body: &str) -> Serving {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let body = body.to_string();
        let thread = thread::spawn(move || {
            let r = h.serve_http(port, &body, &flag);
            (h, r)
        });
        Serving { stop, thread }
    }

    fn stop(self) -> (SyntheticHost, u64) {
        self.stop.store(true, Relaxed);
        let (h, r) = self.thread.join().expect("the server thread ends");
        (h, r.expect("serve_http succeeds"))
    }
}

const WEB: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const BODY: &str = "served by web1 10.9.0.2\n";
const LONG: Duration = Duration::from_secs(5);

#[test]
fn hosts_on_one_segment_ping_connect_and_serve() {
    let clients: Vec<u8> = (211..=218).collect();
    let mut server_peers = vec![201];
    server_peers.extend(&clients);
    let server = host(202, 100, WEB, &server_peers);
    let mut client = host(201, 100, Ipv4Addr::new(10, 9, 0, 1), &[202]);
    let serving = Serving::start(server, 80, BODY);

    let ping = client.ping(WEB, 3, Duration::from_millis(50), Duration::from_secs(2));
    assert_eq!((ping.sent, ping.received), (3, 3), "{ping:?}");
    assert!(ping.avg_rtt().is_some());

    let web = SocketAddrV4::new(WEB, 80);
    let r = client.http_get(web, "web1", "/", LONG).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, BODY.as_bytes());
    assert_eq!(r.header("content-type"), Some("text/plain"));

    let closed = SocketAddrV4::new(WEB, 81);
    assert!(matches!(
        client.tcp_connect(closed, LONG),
        Err(ProbeError::Refused(a)) if a == closed
    ));
    let handshake = client.tcp_connect(web, LONG).unwrap();
    assert!(handshake < LONG);

    for i in 0..20 {
        let r = client
            .http_get(web, "web1", &format!("/seq/{i}"), LONG)
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, BODY.as_bytes()));
    }

    // Eight clients at once, each its own VTEP: more SYNs in flight than one listener.
    let start = Arc::new(std::sync::Barrier::new(clients.len()));
    let threads: Vec<_> = clients
        .iter()
        .map(|&c| {
            let start = start.clone();
            thread::spawn(move || {
                let mut h = host(c, 100, Ipv4Addr::new(10, 9, 0, c - 200), &[202]);
                start.wait();
                (0..3)
                    .map(|_| {
                        h.http_get(web, "web1", "/", LONG)
                            .map(|r| (r.status, r.body))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for t in threads {
        for r in t.join().unwrap() {
            assert_eq!(r.unwrap(), (200, BODY.as_bytes().to_vec()));
        }
    }

    let (server, served) = serving.stop();
    // tcp_connect's connection sent no request.
    assert_eq!(served, 1 + 20 + 8 * 3);
    let stats = server.stats();
    assert!(stats.echo_replies >= 3, "{stats:?}");
    assert_eq!((stats.rx_wrong_vni, stats.rx_malformed), (0, 0));
}

#[test]
fn another_vni_is_not_heard() {
    let b = host(204, 6, Ipv4Addr::new(10, 9, 1, 2), &[203]);
    let mut a = host(203, 5, Ipv4Addr::new(10, 9, 1, 1), &[204]);
    let serving = Serving::start(b, 80, "b\n");

    let short = Duration::from_millis(300);
    let ping = a.ping(
        Ipv4Addr::new(10, 9, 1, 2),
        2,
        Duration::from_millis(50),
        short,
    );
    assert_eq!((ping.sent, ping.received), (2, 0));
    let started = Instant::now();
    let r = a.tcp_connect(SocketAddrV4::new(Ipv4Addr::new(10, 9, 1, 2), 80), short);
    assert!(matches!(r, Err(ProbeError::Timeout(_))), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // Off the segment without a gateway: refused before anything is sent.
    let r = a.tcp_connect(SocketAddrV4::new(Ipv4Addr::new(10, 9, 7, 1), 80), short);
    assert!(matches!(r, Err(ProbeError::NoRoute(_))), "{r:?}");

    let (b, served) = serving.stop();
    assert_eq!(served, 0);
    assert!(b.stats().rx_wrong_vni > 0, "{:?}", b.stats());
    assert_eq!(b.stats().rx_frames, 0);
}

// Hand-made VXLAN from a plain UDP socket, as a kernel VTEP would send it.

const VNI: u32 = 77;
const PROBE_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 2, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 2, 99);
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x99, 0x01];

fn vxlan(vni: u32, frame: &[u8]) -> Vec<u8> {
    let v = vni.to_be_bytes();
    let mut d = vec![0x08, 0, 0, 0, v[1], v[2], v[3], 0];
    d.extend_from_slice(frame);
    d
}

fn ethernet(dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0, 6, 4, 0, 1];
    a.extend_from_slice(&PEER_MAC);
    a.extend_from_slice(&PEER_IP.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target.octets());
    ethernet([0xff; 6], 0x0806, &a)
}

/// RFC 1071 internet checksum.
fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn echo_request(dst_mac: [u8; 6], ident: u16, seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&ident.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(b"vxlan interop");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let len = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&len.to_be_bytes());
    ip.extend_from_slice(&PEER_IP.octets());
    ip.extend_from_slice(&PROBE_IP.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&icmp);
    ethernet(dst_mac, 0x0800, &ip)
}

/// The inner frames of VNI `vni` that reach `socket` within `wait`.
fn receive(socket: &UdpSocket, vni: u32, wait: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + wait;
    let mut frames = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("a nonzero timeout");
        let Ok((n, _)) = socket.recv_from(&mut buf) else {
            break;
        };
        assert!(n >= 8 + 14, "a runt datagram");
        assert_eq!(buf[0], 0x08, "I flag only");
        assert_eq!(buf[1..4], [0, 0, 0]);
        assert_eq!(buf[7], 0);
        let got = u32::from_be_bytes([0, buf[4], buf[5], buf[6]]);
        assert_eq!(got, vni, "replies carry the segment's VNI");
        frames.push(buf[8..n].to_vec());
    }
    frames
}

#[test]
fn hand_made_vxlan_arp_and_ping_are_answered() {
    let mut probe = host(221, VNI, PROBE_IP, &[222]);
    let probe_mac = derived_mac(PROBE_IP);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let t = thread::spawn(move || {
        while !flag.load(Relaxed) {
            probe.idle(Duration::from_millis(20));
        }
        probe
    });
    // The peer VTEP listens on the VXLAN port but sends from an ephemeral source port, as
    // Linux and our VNFs do (RFC 7348 §5: the source port is entropy): replies must come
    // to the listening port.
    let peer = UdpSocket::bind((lo(222), 4789)).unwrap();
    let sender = UdpSocket::bind((lo(222), 0)).unwrap();
    let vtep = SocketAddrV4::new(lo(221), 4789);

    // The wrong VNI: silence.
    sender
        .send_to(&vxlan(VNI + 1, &arp_request(PROBE_IP)), vtep)
        .unwrap();
    assert!(receive(&peer, VNI, Duration::from_millis(300)).is_empty());

    sender
        .send_to(&vxlan(VNI, &arp_request(PROBE_IP)), vtep)
        .unwrap();
    let frames = receive(&peer, VNI, Duration::from_millis(500));
    let reply = frames
        .iter()
        .find(|f| f[12..14] == [0x08, 0x06])
        .expect("an ARP reply");
    assert_eq!(reply[0..6], PEER_MAC);
    assert_eq!(reply[6..12], probe_mac);
    let arp = &reply[14..];
    assert_eq!(
        arp[0..8],
        [0, 1, 0x08, 0, 6, 4, 0, 2],
        "an Ethernet/IPv4 ARP reply"
    );
    assert_eq!(arp[8..14], probe_mac);
    assert_eq!(arp[14..18], PROBE_IP.octets());
    assert_eq!(arp[18..24], PEER_MAC);
    assert_eq!(arp[24..28], PEER_IP.octets());

    // An echo request gets its reply, also unicast to the learned VTEP.
    sender
        .send_to(&vxlan(VNI, &echo_request(probe_mac, 0x4242, 7)), vtep)
        .unwrap();
    let frames = receive(&peer, VNI, Duration::from_millis(500));
    let reply = frames
        .iter()
        .find(|f| f[12..14] == [0x08, 0x00])
        .expect("an echo reply");
    assert_eq!(reply[0..6], PEER_MAC);
    let ip = &reply[14..];
    assert_eq!(checksum(&ip[..20]), 0, "a valid IPv4 header checksum");
    assert_eq!(ip[12..16], PROBE_IP.octets());
    assert_eq!(ip[16..20], PEER_IP.octets());
    let icmp = &ip[20..];
    assert_eq!(checksum(icmp), 0, "a valid ICMP checksum");
    assert_eq!(icmp[0], 0, "echo reply");
    assert_eq!(icmp[4..8], [0x42, 0x42, 0, 7]);
    assert_eq!(&icmp[8..], b"vxlan interop");

    stop.store(true, Relaxed);
    let probe = t.join().unwrap();
    let stats = probe.stats();
    assert_eq!(
        (stats.rx_wrong_vni, stats.echo_replies),
        (1, 1),
        "{stats:?}"
    );
}
