//! Bodies of the fuzz targets, shared by the coverage-guided fuzzer (`fuzz/`) and the corpus
//! replay test (`fuzz_corpus.rs`), so that both run the same code.
//!
//! - [`vxlan_decap`]: the router's L2 gateway end to end in memory ([`MemNet`]): arbitrary
//!   VXLAN datagrams from a few source VTEPs, and arbitrary frames on a trunk and on an
//!   access interface, with the invariants every output must keep whatever the input.
//! - [`wire_parsers`]: the VXLAN and 802.1Q parsers, the inner-flow hash and the VLAN tag
//!   push/pop of [`PacketBuf`] on arbitrary bytes, with emit -> parse round trips.
//!
//! Every body panics (through `assert!`) when an invariant breaks; that is what the fuzzer
//! reports as a crash.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;
use std::time::Duration;

use overlay_io::buf::{ETH_HEADER_LEN, MAX_FRAME, PacketBuf};
use overlay_io::datapath::config::PortKind;
use overlay_io::io::mem::{MemNet, Sent};
use overlay_io::pipeline::PortId;
use overlay_io::wire::smol::{EthernetProtocol, IpProtocol, Ipv4Packet, Ipv6Packet};
use overlay_io::wire::{checksum, flow, vlan, vxlan};
use overlay_io::{Vni, is_group_mac};
use vnf_router::{Router, RouterConfig, config};

/// The router the `vxlan_decap` target drives: two bridge domains over five VNIs, two VLANs
/// of one trunk and an access interface. VNI 200 has a tiny learning cap, short ageing and a
/// static entry; VNI 300 takes VXLAN only from two allowed VTEPs; VNI 400 has no flood list
/// and a small MTU; VNI 500 is joined but bridged to nothing.
pub const ROUTER_CONFIG: &str = r#"
underlay: {address: 198.18.0.1}
batch_size: 16
ports:
  - {name: blue, vni: 100, flood: [198.18.0.2, 198.18.0.3]}
  - name: green
    vni: 200
    flood: [198.18.0.4]
    max_entries: 3
    ageing: 5
    static_macs: [{mac: "02:00:00:00:00:fe", vtep: 198.18.0.5}]
  - {name: office, trunk: trunk0, vlan: 100}
  - name: red
    vni: 300
    flood: [198.18.0.6, 198.18.0.7]
    allowed_vteps: [198.18.0.7, 198.18.0.6]
  - {name: lab, trunk: trunk0, vlan: 300, mtu: 128}
  - {name: quiet, vni: 400, mtu: 100}
  - {name: lonely, vni: 500, flood: [198.18.0.2]}
  - {name: access, interface: access0}
bridges:
  - {name: blue-green, ports: [blue, green, office], max_macs: 6, ageing: 7}
  - {name: red-lab, ports: [red, lab, quiet, access]}
"#;

/// The trunk interface of [`ROUTER_CONFIG`] (VLANs 100 and 300, no native VLAN).
pub const TRUNK: &str = "trunk0";
/// The untagged interface of [`ROUTER_CONFIG`].
pub const ACCESS: &str = "access0";

/// Source VTEPs an input can claim: flood-list members, the two allowed on VNI 300, the
/// router's own address, a stranger and an IPv6 address on the IPv4 underlay.
pub const SOURCE_VTEPS: [IpAddr; 8] = [
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 3)),
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 4)),
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 6)),
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 7)),
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
];

/// Seconds the simulated clock moves before an input, by the top three bits of its first
/// byte: mostly not at all, sometimes past VNI 200's and the bridge's ageing, once past all.
pub const CLOCK_STEPS: [u64; 8] = [0, 0, 0, 0, 1, 3, 8, 400];

/// Input modes (low two bits of the first byte).
pub const MODE_VXLAN: u8 = 0;
/// A batch of VXLAN datagrams: records of `[vtep index, length (u16 BE), bytes]`.
pub const MODE_VXLAN_BATCH: u8 = 1;
/// A frame on the trunk interface.
pub const MODE_TRUNK: u8 = 2;
/// A frame on the access interface.
pub const MODE_ACCESS: u8 = 3;

/// The first byte of a `vxlan_decap` input: mode, source VTEP index, clock step index.
pub const fn control(mode: u8, vtep: u8, clock: u8) -> u8 {
    (mode & 3) | ((vtep & 7) << 2) | ((clock & 7) << 5)
}

fn router_config() -> &'static RouterConfig {
    static CFG: OnceLock<RouterConfig> = OnceLock::new();
    CFG.get_or_init(|| {
        let raw: config::RawConfig =
            serde_saphyr::from_str(ROUTER_CONFIG).expect("ROUTER_CONFIG is valid YAML");
        config::compile(&raw).expect("ROUTER_CONFIG compiles")
    })
}

/// A fresh router over [`ROUTER_CONFIG`], with empty tables and its own clock.
pub fn new_router_net() -> MemNet<Router> {
    Router::in_memory(router_config()).expect("engine")
}

thread_local! {
    static NET: RefCell<MemNet<Router>> = RefCell::new(new_router_net());
}

/// Set (to anything) in the environment, [`vxlan_decap`] uses a fresh router per input, as
/// the replay test does: `scripts/fuzz` sets it to minimise a crash (`cargo fuzz tmin` runs
/// many inputs in one process, and with a shared router a smaller input could "crash" only
/// because of what the previous ones left behind).
pub const FRESH_STATE_ENV: &str = "FUZZ_FRESH_STATE";

/// The `vxlan_decap` target as the fuzzer runs it: one router per thread, reused across
/// inputs, so that learning, caps and ageing build up state over a run (unless
/// [`FRESH_STATE_ENV`] is set).
pub fn vxlan_decap(data: &[u8]) {
    static FRESH: OnceLock<bool> = OnceLock::new();
    if *FRESH.get_or_init(|| std::env::var_os(FRESH_STATE_ENV).is_some()) {
        vxlan_decap_on(&mut new_router_net(), data);
    } else {
        NET.with(|n| vxlan_decap_on(&mut n.borrow_mut(), data));
    }
}

/// The `vxlan_decap` body on a given router (a fresh one per input for a deterministic
/// replay). `data[0]` is a [`control`] byte; the rest is one VXLAN datagram (UDP payload),
/// one frame, or a batch of datagrams.
pub fn vxlan_decap_on(net: &mut MemNet<Router>, data: &[u8]) {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let rest = &rest[..rest.len().min(MAX_FRAME)];
    let src = SOURCE_VTEPS[usize::from((ctl >> 2) & 7)];
    let step = CLOCK_STEPS[usize::from(ctl >> 5)];
    if step > 0 {
        net.advance(Duration::from_secs(step));
        check_caps(net);
    }
    let (inputs, sent) = match ctl & 3 {
        MODE_VXLAN => (vec![Input::Vxlan(src, rest)], net.vxlan_in(src, rest)),
        MODE_VXLAN_BATCH => {
            let batch = batch_records(rest);
            let sent = net.vxlan_batch(&batch);
            let inputs = batch.iter().map(|&(s, d)| Input::Vxlan(s, d)).collect();
            (inputs, sent)
        }
        MODE_TRUNK => (vec![Input::Frame(TRUNK, rest)], net.frame_in(TRUNK, rest)),
        _ => (vec![Input::Frame(ACCESS, rest)], net.frame_in(ACCESS, rest)),
    };
    check_outputs(net, &inputs, &sent);
    check_caps(net);
}

/// Split a batch into `[vtep index, length (u16 BE), bytes]` records (a short last record
/// takes what is left), at most one receive batch of them.
fn batch_records(mut rest: &[u8]) -> Vec<(IpAddr, &[u8])> {
    let mut out = Vec::new();
    while let [v, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (pkt, next) = tail.split_at(len);
        out.push((SOURCE_VTEPS[usize::from(v & 7)], pkt));
        rest = next;
        if out.len() == router_config().datapath.tuning.batch_size {
            break;
        }
    }
    out
}

enum Input<'a> {
    Vxlan(IpAddr, &'a [u8]),
    Frame(&'static str, &'a [u8]),
}

/// A frame that the router may have accepted, and the port it entered on.
#[derive(Debug)]
struct Ingress {
    port: PortId,
    frame: Vec<u8>,
}

fn port_of(pred: impl Fn(&PortKind) -> bool) -> Option<PortId> {
    let dp = &router_config().datapath;
    dp.ports
        .iter()
        .position(|p| pred(&p.kind))
        .map(|i| PortId(i as u16))
}

fn vni_port(vni: u32) -> Option<PortId> {
    port_of(|k| matches!(k, PortKind::Vni(c) if c.vni.get() == vni))
}

fn vlan_port(iface: &str, vid: u16) -> Option<PortId> {
    port_of(|k| matches!(k, PortKind::Vlan { iface: i, vid: v } if i == iface && *v == vid))
}

fn untagged_port(iface: &str) -> Option<PortId> {
    port_of(|k| matches!(k, PortKind::Untagged { iface: i } if i == iface))
}

fn ethertype(f: &[u8]) -> Option<u16> {
    (f.len() >= ETH_HEADER_LEN).then(|| u16::from_be_bytes([f[12], f[13]]))
}

fn src_is_group(f: &[u8]) -> bool {
    f.get(6).is_some_and(|b| b & 1 != 0)
}

/// A frame with its first 802.1Q tag removed.
fn untag(f: &[u8]) -> Vec<u8> {
    let mut v = f[..12].to_vec();
    v.extend_from_slice(&f[16..]);
    v
}

/// What RFC 7348 and 802.1Q allow in, from the config alone: a VXLAN datagram with the I
/// flag on a joined VNI from a VTEP the VNI allows, whose inner source MAC is unicast; a
/// frame whose VLAN (after an 802.1Q tag, or none/priority-tagged for the native port) has
/// a port on that interface and is not nested. Anything else must produce nothing.
fn ingress(input: &Input<'_>) -> Option<Ingress> {
    match *input {
        Input::Vxlan(src, d) => {
            if d.len() < vxlan::HEADER_LEN + ETH_HEADER_LEN || d[0] & vxlan::FLAG_I == 0 {
                return None;
            }
            let vni = u32::from_be_bytes([0, d[4], d[5], d[6]]);
            let port = vni_port(vni)?;
            let dp = &router_config().datapath;
            if let PortKind::Vni(c) = &dp.ports[usize::from(port.0)].kind
                && c.allowed_vteps.as_ref().is_some_and(|a| !a.contains(&src))
            {
                return None;
            }
            let frame = &d[vxlan::HEADER_LEN..];
            (!src_is_group(frame)).then(|| Ingress {
                port,
                frame: frame.to_vec(),
            })
        }
        Input::Frame(iface, f) => {
            let et = ethertype(f)?;
            if src_is_group(f) || et == vlan::TPID_QINQ {
                return None;
            }
            if et != vlan::TPID {
                return untagged_port(iface).map(|port| Ingress {
                    port,
                    frame: f.to_vec(),
                });
            }
            if f.len() < ETH_HEADER_LEN + vlan::TAG_LEN {
                return None;
            }
            let frame = untag(f);
            if matches!(ethertype(&frame), Some(vlan::TPID | vlan::TPID_QINQ)) {
                return None;
            }
            let vid = u16::from_be_bytes([f[14], f[15]]) & 0x0fff;
            let port = if vid == 0 {
                untagged_port(iface)
            } else {
                vlan_port(iface, vid)
            }?;
            Some(Ingress { port, frame })
        }
    }
}

/// The bridge domain a port belongs to.
fn domain_of(p: PortId) -> Option<usize> {
    router_config()
        .bridges
        .iter()
        .position(|d| d.ports.contains(&p))
}

/// Every output must be one accepted input's frame, unchanged but for the encapsulation
/// of the port it leaves by, leaving by another port of the same bridge domain.
fn check_outputs(net: &MemNet<Router>, inputs: &[Input<'_>], sent: &[Sent]) {
    let cands: Vec<Ingress> = inputs.iter().filter_map(ingress).collect();
    let dp = &router_config().datapath;
    let mut seen = BTreeSet::new();
    for s in sent {
        let (port, frame): (PortId, &[u8]) = match s {
            Sent::Vxlan { dst, datagram, .. } => {
                assert!(
                    datagram.len() >= vxlan::HEADER_LEN + ETH_HEADER_LEN,
                    "short datagram {datagram:02x?}"
                );
                assert_eq!(datagram[0], vxlan::FLAG_I, "flags: only the I bit");
                assert_eq!(&datagram[1..4], &[0, 0, 0], "reserved bytes 1..4");
                assert_eq!(datagram[7], 0, "reserved byte 7");
                let raw = u32::from_be_bytes([0, datagram[4], datagram[5], datagram[6]]);
                let port = vni_port(raw)
                    .unwrap_or_else(|| panic!("datagram on VNI {raw}, which is not joined"));
                let vni = Vni::new(raw).expect("joined VNIs are valid");
                let PortKind::Vni(c) = &dp.ports[usize::from(port.0)].kind else {
                    unreachable!("vni_port returns VNI ports");
                };
                let local = dp.underlay.as_ref().map(|u| u.local.ip());
                assert_ne!(
                    Some(*dst),
                    local,
                    "VXLAN sent to this router's own VTEP address"
                );
                let inner = &datagram[vxlan::HEADER_LEN..];
                let mut dmac = [0u8; 6];
                dmac.copy_from_slice(&inner[..6]);
                let fdb = net
                    .engine()
                    .vtep()
                    .fdb(vni)
                    .expect("joined VNI has a table");
                match fdb.lookup(&dmac).filter(|_| !is_group_mac(&dmac)) {
                    Some(ip) => assert_eq!(*dst, ip, "known MAC {dmac:02x?} on VNI {raw}"),
                    None => assert!(
                        c.flood.contains(dst),
                        "VNI {raw}: {dst} is neither learned for {dmac:02x?} nor in the flood list {:?}",
                        c.flood
                    ),
                }
                if inputs.len() == 1 {
                    assert!(
                        seen.insert((raw, *dst)),
                        "two copies of one frame to {dst} on VNI {raw}"
                    );
                }
                (port, inner)
            }
            Sent::Frame { iface, frame } if iface == TRUNK => {
                assert!(
                    frame.len() >= ETH_HEADER_LEN + vlan::TAG_LEN
                        && ethertype(frame) == Some(vlan::TPID),
                    "untagged frame on the trunk: {frame:02x?}"
                );
                let tci = u16::from_be_bytes([frame[14], frame[15]]);
                assert_eq!(tci & 0xf000, 0, "PCP/DEI set on egress");
                let port = vlan_port(TRUNK, tci)
                    .unwrap_or_else(|| panic!("VLAN {tci} on {TRUNK}, which no port carries"));
                let f: &[u8] = frame;
                (port, f)
            }
            Sent::Frame { iface, frame } if iface == ACCESS => {
                let port = untagged_port(ACCESS).expect("access port");
                let f: &[u8] = frame;
                (port, f)
            }
            Sent::Frame { iface, .. } => panic!("frame on unknown interface `{iface}`"),
        };
        let frame = match s {
            Sent::Frame { iface, .. } if iface == TRUNK => untag(frame),
            _ => frame.to_vec(),
        };
        assert!(
            frame.len() >= ETH_HEADER_LEN && !src_is_group(&frame),
            "malformed frame out: {frame:02x?}"
        );
        let mtu = dp.ports[usize::from(port.0)].mtu as usize;
        assert!(
            frame.len() - ETH_HEADER_LEN <= mtu,
            "{} bytes of payload out of port {} (MTU {mtu})",
            frame.len() - ETH_HEADER_LEN,
            port.0
        );
        let d = domain_of(port);
        assert!(
            cands.iter().any(|c| c.port != port
                && d.is_some()
                && domain_of(c.port) == d
                && c.frame == frame),
            "output on port {} ({s:02x?}) matches no accepted input in its bridge domain; accepted: {cands:02x?}",
            port.0
        );
    }
}

/// Neither the VTEP's per-VNI tables nor the bridge domains' tables grow past their caps.
fn check_caps(net: &MemNet<Router>) {
    let cfg = router_config();
    for p in &cfg.datapath.ports {
        if let PortKind::Vni(c) = &p.kind {
            let fdb = net
                .engine()
                .vtep()
                .fdb(c.vni)
                .expect("joined VNI has a table");
            assert!(
                fdb.learned_len() <= c.max_entries
                    && fdb.len() <= c.max_entries + c.static_entries.len(),
                "VNI {}: {} entries ({} learned), cap {} + {} static",
                c.vni,
                fdb.len(),
                fdb.learned_len(),
                c.max_entries,
                c.static_entries.len()
            );
            for (mac, _) in &c.static_entries {
                assert!(fdb.entry(mac).is_some(), "VNI {}: static entry lost", c.vni);
            }
        }
    }
    for d in &cfg.bridges {
        let fdb = net
            .engine()
            .nf()
            .bridge()
            .fdb(&d.name)
            .expect("bridge domain has a table");
        assert!(
            fdb.len() <= d.max_macs && fdb.learned_len() <= d.max_macs,
            "bridge {}: {} entries, cap {}",
            d.name,
            fdb.len(),
            d.max_macs
        );
    }
}

/// The `wire_parsers` target: parsers never panic on any bytes, and what they parse emits
/// back to the same bytes (up to what the format ignores).
pub fn wire_parsers(data: &[u8]) {
    vxlan_round_trip(data);
    vlan_round_trip(data);
    flow_hash_symmetric(data);
    buf_tag_round_trip(data);
    checksum_completion(data);
    l3_parsers(data);
}

/// The routed functions' IPv4, ARP and ICMP code on arbitrary bytes: never a panic, and
/// what they produce is well formed.
fn l3_parsers(data: &[u8]) {
    use overlay_io::{arp, icmp, ipv4};
    if let Ok(h) = ipv4::parse(data) {
        assert!(h.header_len >= 20 && h.header_len <= h.total_len && h.total_len <= data.len());
        assert_eq!(ipv4::checksum(&data[..h.header_len]), 0);
        let mut copy = data.to_vec();
        if ipv4::decrement_ttl(&mut copy) {
            assert_eq!(copy[8], data[8] - 1);
            assert_eq!(
                ipv4::checksum(&copy[..h.header_len]),
                0,
                "TTL decrement keeps the checksum valid"
            );
        }
        let mut out = [0u8; icmp::MAX_ERROR_LEN];
        if icmp::may_send_error(&h, data) {
            let n = icmp::build_error(
                icmp::IcmpError::TimeExceeded,
                std::net::Ipv4Addr::new(10, 0, 0, 254),
                &h,
                data,
                &mut out,
            )
            .expect("576 bytes always suffice");
            let e = ipv4::parse(&out[..n]).expect("the error is a valid IPv4 packet");
            assert_eq!(e.dst, h.src);
            assert_eq!(ipv4::checksum(&out[20..n]), 0, "ICMP checksum");
        }
        let mut echo = data.to_vec();
        if icmp::echo_reply_in_place(&mut echo) {
            let r = ipv4::parse(&echo).expect("the reply is valid");
            assert_eq!((r.src, r.dst), (h.dst, h.src));
        }
    }
    if let Some(a) = arp::Arp::parse(data) {
        let mut b = overlay_io::buf::PacketBuf::new();
        a.emit([0xff; 6], &mut b);
        assert_eq!(arp::Arp::parse(&b.bytes()[14..]), Some(a));
    }
}

fn vxlan_round_trip(data: &[u8]) {
    let Ok(p) = vxlan::Packet::new_checked(data) else {
        assert!(data.len() < vxlan::HEADER_LEN);
        return;
    };
    assert_eq!(p.payload().len(), data.len() - vxlan::HEADER_LEN);
    let Ok(repr) = vxlan::Repr::parse(&p) else {
        assert!(!p.i_flag() || p.vni_raw() == 0);
        return;
    };
    assert!(p.i_flag() && repr.vni.get() == p.vni_raw() && repr.vni.get() != 0);
    let mut out = data[..repr.buffer_len()].to_vec();
    repr.emit(&mut vxlan::Packet::new_unchecked(&mut out[..]));
    assert_eq!(out[0], vxlan::FLAG_I);
    assert_eq!(&out[1..4], &[0, 0, 0]);
    assert_eq!(&out[4..7], &data[4..7]);
    assert_eq!(out[7], 0);
    let again = vxlan::Repr::parse(&vxlan::Packet::new_unchecked(&out[..]));
    assert_eq!(again, Ok(repr));
}

fn vlan_round_trip(data: &[u8]) {
    let Ok(p) = vlan::Packet::new_checked(data) else {
        assert!(data.len() < vlan::HEADER_LEN);
        return;
    };
    let repr = vlan::Repr::parse(&p).expect("a whole tag always parses");
    assert!(repr.pcp < 8 && repr.vid < 4096);
    assert_eq!(p.payload().len(), data.len() - vlan::HEADER_LEN);
    let mut out = [0u8; vlan::HEADER_LEN];
    repr.emit(&mut vlan::Packet::new_unchecked(&mut out[..]));
    assert_eq!(
        &out[..],
        &data[..vlan::HEADER_LEN],
        "every tag bit round-trips"
    );
    assert_eq!(
        vlan::Repr::parse(&vlan::Packet::new_unchecked(&out[..])),
        Ok(repr)
    );
    assert_eq!(
        EthernetProtocol::from(u16::from(repr.ethertype)),
        repr.ethertype
    );
}

/// `flow_hash` is deterministic and symmetric: swapping the MAC addresses, the IP
/// addresses and the first two 16-bit words of the L4 header (the ports) hashes alike.
fn flow_hash_symmetric(data: &[u8]) {
    let h = flow::flow_hash(data);
    assert_eq!(h, flow::flow_hash(data));
    if data.len() < ETH_HEADER_LEN {
        return;
    }
    let mut f = data.to_vec();
    let (dst, src) = f.split_at_mut(6);
    dst.swap_with_slice(&mut src[..6]);
    let mut l3 = ETH_HEADER_LEN;
    let mut et = u16::from_be_bytes([f[12], f[13]]);
    if et == vlan::TPID && f.len() >= l3 + vlan::HEADER_LEN {
        et = u16::from_be_bytes([f[16], f[17]]);
        l3 += vlan::HEADER_LEN;
    }
    let ip = &mut f[l3..];
    let l4 = match et {
        0x0800 if ip.len() >= 20 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            swap_ranges(ip, 12, 16, 4);
            (ihl >= 20 && total >= ihl && total <= ip.len()).then_some((ihl, total))
        }
        0x86dd if ip.len() >= 40 => {
            let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            swap_ranges(ip, 8, 24, 16);
            (40 + plen <= ip.len()).then_some((40, 40 + plen))
        }
        _ => None,
    };
    if let Some((start, end)) = l4
        && end - start >= 4
    {
        swap_ranges(ip, start, start + 2, 2);
    }
    assert_eq!(
        flow::flow_hash(&f),
        h,
        "flow_hash is not symmetric: {data:02x?} vs {f:02x?}"
    );
}

/// `checksum::complete_partial` leaves a frame it refuses untouched and changes at most the
/// two bytes of the checksum field of one it completes; located with smoltcp's parsers, the
/// segment then sums, with the partial pseudo-header sum that was in the field, to zero
/// (RFC 1071 ones' complement).
fn checksum_completion(data: &[u8]) {
    let mut f = data.to_vec();
    let done = checksum::complete_partial(&mut f);
    let changed: Vec<usize> = (0..f.len()).filter(|&i| f[i] != data[i]).collect();
    if !done {
        assert!(changed.is_empty(), "refused, yet changed {changed:?}");
        return;
    }
    assert!(
        changed.len() <= 2 && changed.windows(2).all(|w| w[1] == w[0] + 1),
        "changed more than one 16-bit field: {changed:?}"
    );
    let Some(et) = ethertype(&f) else {
        panic!("completed a frame without an Ethernet header");
    };
    let (et, l3) = match et {
        vlan::TPID | vlan::TPID_QINQ if f.len() >= 18 => (u16::from_be_bytes([f[16], f[17]]), 18),
        _ => (et, ETH_HEADER_LEN),
    };
    let seg = match EthernetProtocol::from(et) {
        EthernetProtocol::Ipv4 => Ipv4Packet::new_checked(&f[l3..])
            .ok()
            .filter(|ip| !ip.more_frags() && ip.frag_offset() == 0)
            .map(|ip| {
                let hl = usize::from(ip.header_len());
                (ip.next_header(), l3 + hl, l3 + usize::from(ip.total_len()))
            }),
        EthernetProtocol::Ipv6 => Ipv6Packet::new_checked(&f[l3..]).ok().map(|ip| {
            let l4 = l3 + 40;
            (ip.next_header(), l4, l4 + usize::from(ip.payload_len()))
        }),
        _ => None,
    };
    let Some((proto, l4, end)) = seg else {
        return;
    };
    let field = match proto {
        IpProtocol::Tcp => 16,
        IpProtocol::Udp => 6,
        _ => panic!("completed a checksum of protocol {proto}"),
    };
    if end - l4 < field + 2 {
        return;
    }
    let at = l4 + field;
    assert!(
        changed.iter().all(|&i| i == at || i == at + 1),
        "changed {changed:?}, the checksum field is at {at}"
    );
    let partial = u16::from_be_bytes([data[at], data[at + 1]]);
    let mut sum = u64::from(partial);
    for c in f[l4..end].chunks(2) {
        sum += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    assert!(
        sum == 0xffff || sum == 0,
        "segment {l4}..{end} sums to {sum:#06x}, not ones'-complement zero"
    );
}

fn swap_ranges(b: &mut [u8], a: usize, c: usize, n: usize) {
    for i in 0..n {
        b.swap(a + i, c + i);
    }
}

/// `PacketBuf::pop_vlan_tag` removes exactly one 802.1Q tag and `push_vlan_tag` puts one
/// back; pushing then popping any VID restores the frame. VXLAN push/pull likewise.
fn buf_tag_round_trip(data: &[u8]) {
    let data = &data[..data.len().min(MAX_FRAME)];
    let mut b = PacketBuf::new();
    b.fill(data);
    assert_eq!(b.bytes(), data);
    match b.pop_vlan_tag() {
        Some(vid) => {
            assert!(data.len() >= ETH_HEADER_LEN + vlan::TAG_LEN);
            assert_eq!(ethertype(data), Some(vlan::TPID));
            assert_eq!(vid, u16::from_be_bytes([data[14], data[15]]) & 0x0fff);
            assert_eq!(b.bytes(), &untag(data)[..]);
            assert!(b.push_vlan_tag(vid));
            let mut want = data.to_vec();
            want[14] &= 0x0f;
            assert_eq!(b.bytes(), &want[..], "pop then push keeps all but PCP/DEI");
        }
        None => {
            assert!(
                ethertype(data) != Some(vlan::TPID) || data.len() < ETH_HEADER_LEN + vlan::TAG_LEN
            );
            assert_eq!(b.bytes(), data, "no tag popped, frame unchanged");
        }
    }

    b.fill(data);
    let vid = data
        .get(..2)
        .map_or(0, |v| u16::from_be_bytes([v[0], v[1]]));
    if b.push_vlan_tag(vid) {
        assert!(data.len() >= ETH_HEADER_LEN);
        let mut want = data[..12].to_vec();
        want.extend_from_slice(&vlan::TPID.to_be_bytes());
        want.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        want.extend_from_slice(&data[12..]);
        assert_eq!(b.bytes(), &want[..]);
        assert_eq!(b.pop_vlan_tag(), Some(vid & 0x0fff));
        assert_eq!(b.bytes(), data, "push then pop restores the frame");
    } else {
        assert!(data.len() < ETH_HEADER_LEN);
        assert_eq!(b.bytes(), data);
    }

    b.fill(data);
    let vni = Vni::new(flow::flow_hash(data) & Vni::MAX).unwrap_or(Vni::new(1).expect("1"));
    assert!(b.push_vxlan(vni));
    let p = vxlan::Packet::new_checked(b.bytes()).expect("a whole header was pushed");
    assert_eq!(vxlan::Repr::parse(&p), Ok(vxlan::Repr { vni }));
    assert_eq!(p.payload(), data);
    assert!(b.pull_front(vxlan::HEADER_LEN));
    assert_eq!(b.bytes(), data);
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use super::*;
    use crate::{arp_request, mac, tagged, udp_frame, vxlan};

    fn rejects(net: &MemNet<Router>, inputs: &[Input<'_>], sent: Vec<Sent>) -> bool {
        catch_unwind(AssertUnwindSafe(|| check_outputs(net, inputs, &sent))).is_err()
    }

    /// The invariants are not vacuous: real outputs pass, and each kind of corruption of
    /// them is caught.
    #[test]
    fn invariants_catch_corrupted_outputs() {
        let mut net = new_router_net();
        let from = SOURCE_VTEPS[0];
        let arp = arp_request(
            mac(1),
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
        );
        let d = vxlan(0x08, 100, &arp);
        let inputs = [Input::Vxlan(from, &d[..])];
        let sent = net.vxlan_in(from, &d);
        assert_eq!(sent.len(), 2, "VNI 200's one VTEP and VLAN 100: {sent:?}");
        check_outputs(&net, &inputs, &sent);

        let vx = |f: &dyn Fn(&mut IpAddr, &mut Vec<u8>)| {
            sent.iter()
                .cloned()
                .map(|mut s| {
                    if let Sent::Vxlan { dst, datagram, .. } = &mut s {
                        f(dst, datagram);
                    }
                    s
                })
                .collect::<Vec<_>>()
        };
        let fr = |f: &dyn Fn(&mut Vec<u8>)| {
            sent.iter()
                .cloned()
                .map(|mut s| {
                    if let Sent::Frame { frame, .. } = &mut s {
                        f(frame);
                    }
                    s
                })
                .collect::<Vec<_>>()
        };
        assert!(rejects(&net, &inputs, vx(&|_, d| d[0] = 0x0c)), "flags");
        assert!(rejects(&net, &inputs, vx(&|_, d| d[2] = 1)), "reserved");
        assert!(
            rejects(&net, &inputs, vx(&|_, d| d[6] = 44)),
            "VNI 300: other bridge"
        );
        assert!(
            rejects(&net, &inputs, vx(&|_, d| d[6] = 100)),
            "back to ingress"
        );
        assert!(
            rejects(&net, &inputs, vx(&|_, d| d[6] = 99)),
            "unjoined VNI"
        );
        assert!(
            rejects(&net, &inputs, vx(&|ip, _| *ip = SOURCE_VTEPS[1])),
            "VTEP outside VNI 200's flood list"
        );
        assert!(rejects(&net, &inputs, vx(&|_, d| d[30] ^= 1)), "payload");
        assert!(rejects(&net, &inputs, fr(&|f| f[15] = 44)), "VLAN 300");
        assert!(
            rejects(&net, &inputs, fr(&|f| f[15] = 7)),
            "VLAN nobody carries"
        );
        assert!(rejects(&net, &inputs, fr(&|f| f[14] |= 0x20)), "PCP");
        assert!(rejects(&net, &inputs, fr(&|f| *f = untag(f))), "tag lost");
        let mut dup = sent.clone();
        dup.push(sent[0].clone());
        assert!(rejects(&net, &inputs, dup), "two copies to one VTEP");

        // Nothing may come out of a datagram from a VTEP that VNI 300 does not allow.
        let d = vxlan(0x08, 300, &arp);
        let bad = [Input::Vxlan(from, &d[..])];
        let forged = vec![Sent::Frame {
            iface: TRUNK.into(),
            frame: tagged(&arp, 300),
        }];
        assert!(rejects(&net, &bad, forged.clone()), "disallowed VTEP");
        let ok = [Input::Vxlan(SOURCE_VTEPS[3], &d[..])];
        check_outputs(&net, &ok, &forged);

        // Learned unicast must go to the learned VTEP only.
        let reply = udp_frame(
            mac(2),
            mac(1),
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 0, 0, 1),
            7,
            7,
            b"",
        );
        let f = udp_frame(
            mac(3),
            mac(2),
            Ipv4Addr::new(10, 0, 0, 3),
            Ipv4Addr::new(10, 0, 0, 2),
            7,
            7,
            b"",
        );
        net.vxlan_in(SOURCE_VTEPS[2], &vxlan(0x08, 200, &reply));
        let t = tagged(&f, 100);
        let inputs = [Input::Frame(TRUNK, &t[..])];
        let sent = net.frame_in(TRUNK, &t);
        assert!(
            matches!(sent.as_slice(), [Sent::Vxlan { dst, .. }] if *dst == SOURCE_VTEPS[2]),
            "{sent:?}"
        );
        check_outputs(&net, &inputs, &sent);
        let mut flooded = sent.clone();
        if let Sent::Vxlan { dst, .. } = &mut flooded[0] {
            *dst = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 5));
        }
        assert!(rejects(&net, &inputs, flooded), "known MAC sent elsewhere");
    }
}
