//! Bodies of the fuzz targets, shared by the coverage-guided fuzzer (`fuzz/`) and the corpus
//! replay test (`fuzz_corpus.rs`), so that both run the same code.
//!
//! - [`vxlan_decap`]: the router's L2 gateway end to end in memory ([`MemNet`]): arbitrary
//!   VXLAN datagrams from a few source VTEPs, and arbitrary frames on a trunk and on an
//!   access interface, with the invariants every output must keep whatever the input.
//! - [`wire_parsers`]: the VXLAN and 802.1Q parsers, the inner-flow hash and the VLAN tag
//!   push/pop of [`PacketBuf`] on arbitrary bytes, with emit -> parse round trips.
//! - [`router_path`]: the router's routed path (L3, ARP, ICMP, NAT, IRB, reloads, timers)
//!   end to end in memory, driven by a sequence of events per input ([`rp`]).
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

/// The `router_path` target: the router's routed path end to end in memory (VXLAN in, L3,
/// ARP, ICMP, NAT, IRB, reloads, timers), with the invariants every output keeps. One
/// fresh router per input; the input is a sequence of events ([`rp`] describes the
/// encoding), so a crash always reproduces on its own.
pub fn router_path(data: &[u8]) {
    rp::run(data);
}

/// The `router_path` target: its two configs, the input encoding and the checks.
///
/// An input is one header byte (bit 0: "warm" the ARP cache first with a request from each
/// neighbour host to its gateway address; bit 1: start on [`CONFIG_B`] instead of
/// [`CONFIG_A`]), then events until the bytes run out (at most [`MAX_EVENTS`]). Each event
/// starts with an opcode byte `op`:
///
/// - `op & 7` is the kind: 0-2 a structured IPv4 frame, 3 an ARP frame, 4 a raw inner
///   frame, 5 a raw VXLAN datagram (header included), 6 a clock step, 7 a reload;
/// - for packets, `(op >> 3) & 7` picks the ingress VNI and its VTEP from [`INGRESS`],
///   bit 6 sends from a stranger VTEP instead, and bit 7 queues the packet into a batch
///   that the next packet without bit 7 (or anything else) sends as one receive batch;
/// - for a clock step, `(op >> 3) & 7` indexes [`CLOCK_STEPS`]; for a reload, `(op >> 3) & 3`
///   is 0: the other config, 1: A, 2: B, 3: the current one again.
///
/// A structured IPv4 frame reads five bytes `m s d p q` and then what they ask for:
/// - `m`: bits 0-1 the destination MAC (0-1: the router's interface on the ingress port,
///   2: the destination host's, 3: broadcast); bits 2-3 the source MAC (3: the router's
///   own, spoofed; else the source host's); bits 4-5 the IP header (3: broken as the next
///   byte says: bad checksum, a total length past the end or a short one, a wrong version);
///   bits 6-7 the transport checksum (0-1 valid, 2 zero, 3 wrong);
/// - `s`, `d`: bits 0-4 the source and destination address from [`ADDRS`] (31: four raw
///   bytes follow); `s` bits 5-7 the TTL (64, 64, 1, 2, 0, 255, 3, raw byte); `d` bits 5-7
///   flags and fragment offset (none, none, DF, DF, MF, offset 1480, DF|MF, raw u16);
/// - `p`: bits 0-1 the protocol (UDP, TCP, ICMP, raw byte); bits 2-3 IP options (3: a
///   byte says how many words, raw bytes follow); bits 4-7 the payload length from
///   [`PAYLOAD_LENS`] (15: a raw u16, mod 2048);
/// - `q`: source and destination port from [`PORTS`] (low and high nibble; 15: raw u16);
///   also the ICMP identifier and sequence number;
/// - then TCP: a flags byte; ICMP: a type byte (bits 0-2: echo request twice, echo reply,
///   unreachable, time exceeded, timestamp, redirect, raw; bits 3-6: the code) and, for an
///   error, two bytes choosing the quoted packet's source/destination address and
///   protocol (so that an error about a translated flow can be made).
///
/// An ARP frame reads `a s t`: `a` bits 0-1 the operation (request, reply, request, raw
/// u16), bits 2-3 the Ethernet destination, bits 4-5 the sender MAC (the host's, the
/// router's, a group MAC), bit 6 gratuitous (target = sender), bit 7 truncated; `s`, `t`
/// the sender and target addresses. A raw frame reads a mode byte (bits 0-1: all raw, or
/// after an Ethernet header to the router's MAC with type IPv4, ARP, or IPv4 with the
/// header checksum fixed up) and a length byte; a raw datagram a length byte. A length byte
/// below 128 is the length, else `(b & 0x7f) * 16` (up to 2032).
pub mod rp {
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::OnceLock;
    use std::time::Duration;

    use overlay_io::datapath::config::PortKind;
    use overlay_io::fib::Decision;
    use overlay_io::io::mem::{MemNet, Sent};
    use overlay_io::l3::Attach;
    use overlay_io::nat::SnatRule;
    use overlay_io::pipeline::PortId;
    use overlay_io::wire::vxlan;
    use overlay_io::{Mac, is_group_mac};
    use vnf_router::{Router, RouterConfig, config};

    /// The first config: routed interfaces on VNIs 100 (`web`) and 200 (`db`, two subnets,
    /// an interface MTU below its port's), the external VNI 300 (`ext`), an IRB interface
    /// on bridge domain `lan` (VNIs 400 and 401, the smaller MTU 1200), VNI 500 joined but
    /// used by nothing; a default route, ECMP over two interfaces and over two IRB
    /// neighbours, prohibit, blackhole and unreachable routes; masquerade from a 2-address,
    /// 4-port pool, a floating address, two port forwards (one into the IRB subnet); small
    /// ARP, NAT and ICMP limits.
    pub const CONFIG_A: &str = r#"
underlay: {address: 198.18.0.1}
batch_size: 8
ports:
  - {name: web, vni: 100, flood: [198.18.0.2]}
  - {name: db, vni: 200, flood: [198.18.0.3], mtu: 1400}
  - {name: ext, vni: 300, flood: [198.18.0.4]}
  - {name: lan-a, vni: 400, flood: [198.18.0.5], max_entries: 4}
  - {name: lan-b, vni: 401, flood: [198.18.0.6, 198.18.0.7], mtu: 1200}
  - {name: spare, vni: 500, flood: [198.18.0.2]}
bridges:
  - {name: lan, ports: [lan-a, lan-b], max_macs: 4, ageing: 30}
interfaces:
  - {name: web, port: web, mac: "02:00:00:00:01:01", addresses: [10.0.1.1/24]}
  - {name: db, port: db, mac: "02:00:00:00:02:01", addresses: [10.0.2.1/24, 10.0.3.1/24], mtu: 1300}
  - {name: ext, port: ext, mac: "02:00:00:00:03:01", addresses: [192.0.2.2/24]}
  - {name: lan, bridge: lan, mac: "02:00:00:00:04:01", addresses: [10.0.4.1/24]}
routes:
  - {prefix: 0.0.0.0/0, via: [192.0.2.1]}
  - {prefix: 10.50.0.0/16, via: [10.0.1.9, 10.0.2.9]}
  - {prefix: 10.51.0.0/16, via: [10.0.4.8, 10.0.4.9]}
  - {prefix: 10.66.0.0/16, action: prohibit}
  - {prefix: 10.77.0.0/16, action: blackhole}
  - {prefix: 10.88.0.0/16, action: unreachable}
nat:
  pools: [{name: internet, addresses: [192.0.2.10, 192.0.2.11], ports: 20000-20003}]
  masquerade: [{sources: [10.0.0.0/16, 10.50.0.0/16], interface: ext, pool: internet, tenant: blue}]
  floating: [{external: 192.0.2.20, internal: 10.0.2.5, interface: ext, tenant: red}]
  port_forwards:
    - {protocol: tcp, address: 192.0.2.10, port: 2222, to: 10.0.1.7, to_port: 22}
    - {protocol: udp, address: 192.0.2.11, port: 5353, to: 10.0.4.7, to_port: 53}
  max_sessions: 12
  max_sessions_per_tenant: 8
  timeouts: {tcp_established: 60, tcp_transitory: 20, tcp_closed: 5, udp: 30, icmp: 10}
arp: {max_entries: 8, reachable: 30, max_held: 6, max_held_per_address: 2}
icmp: {rate: 50, burst: 5}
"#;

    /// The config a reload switches to and back from: the same ports (MTUs changed), the
    /// web interface's MAC changed, db's second subnet gone, a 500-byte MTU on the IRB
    /// interface (below the 576 bytes of a full ICMP error), ECMP on the default route,
    /// former ECMP/prohibit prefixes turned into blackhole/gateway routes, a smaller
    /// one-address pool, no floating address, a moved port forward, smaller caps.
    pub const CONFIG_B: &str = r#"
underlay: {address: 198.18.0.1}
batch_size: 8
ports:
  - {name: web, vni: 100, flood: [198.18.0.2]}
  - {name: db, vni: 200, flood: [198.18.0.3], mtu: 1400}
  - {name: ext, vni: 300, flood: [198.18.0.4]}
  - {name: lan-a, vni: 400, flood: [198.18.0.5], max_entries: 4}
  - {name: lan-b, vni: 401, flood: [198.18.0.6, 198.18.0.7]}
  - {name: spare, vni: 500, flood: [198.18.0.2]}
bridges:
  - {name: lan, ports: [lan-a, lan-b], max_macs: 2, ageing: 30}
interfaces:
  - {name: web, port: web, mac: "02:00:00:00:01:02", addresses: [10.0.1.1/24]}
  - {name: db, port: db, mac: "02:00:00:00:02:01", addresses: [10.0.2.1/24]}
  - {name: ext, port: ext, mac: "02:00:00:00:03:01", addresses: [192.0.2.2/24], mtu: 1400}
  - {name: lan, bridge: lan, mac: "02:00:00:00:04:01", addresses: [10.0.4.1/24], mtu: 500}
routes:
  - {prefix: 0.0.0.0/0, via: [192.0.2.1, 192.0.2.3]}
  - {prefix: 10.50.0.0/16, action: blackhole}
  - {prefix: 10.66.0.0/16, via: [10.0.2.9]}
  - {prefix: 10.88.0.0/16, action: prohibit}
nat:
  pools: [{name: internet, addresses: [192.0.2.10], ports: 20000-20001}]
  masquerade: [{sources: [10.0.1.0/24, 10.0.4.0/24], interface: ext, pool: internet, tenant: blue}]
  port_forwards:
    - {protocol: tcp, address: 192.0.2.10, port: 2222, to: 10.0.2.7, to_port: 22}
  max_sessions: 6
  max_sessions_per_tenant: 4
  timeouts: {udp: 10, icmp: 5}
arp: {max_entries: 3, reachable: 10, max_held: 6, max_held_per_address: 1}
icmp: {rate: 10, burst: 2}
"#;

    /// The most events one input runs.
    pub const MAX_EVENTS: usize = 256;

    /// Ingress (VNI, source VTEP) by `(op >> 3) & 7`: the four routed or bridged segments,
    /// the external one twice, VNI 500 (joined, no function) and VNI 999 (not joined).
    pub const INGRESS: [(u32, Ipv4Addr); 8] = [
        (100, Ipv4Addr::new(198, 18, 0, 2)),
        (200, Ipv4Addr::new(198, 18, 0, 3)),
        (300, Ipv4Addr::new(198, 18, 0, 4)),
        (400, Ipv4Addr::new(198, 18, 0, 5)),
        (401, Ipv4Addr::new(198, 18, 0, 6)),
        (300, Ipv4Addr::new(198, 18, 0, 4)),
        (500, Ipv4Addr::new(198, 18, 0, 2)),
        (999, Ipv4Addr::new(198, 18, 0, 2)),
    ];

    /// The VTEP that op bit 6 sends from: in no flood list.
    pub const STRANGER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 9);

    /// Seconds the clock moves by `(op >> 3) & 7` of a clock event: past the ARP retry,
    /// the ICMP token refill, NAT and ARP timeouts of both configs.
    pub const CLOCK_STEPS: [u64; 8] = [1, 1, 2, 5, 11, 31, 61, 301];

    /// IP payload lengths (after the transport header) by `p >> 4`: around the interfaces'
    /// MTUs (500 and 1200 on the IRB interface, 1300 on db, 1400 on its port) for UDP.
    pub const PAYLOAD_LENS: [usize; 15] = [
        0, 4, 18, 22, 64, 200, 472, 473, 548, 1172, 1173, 1272, 1273, 1372, 1472,
    ];

    /// Ports by nibble of `q` (15: a raw u16 follows).
    pub const PORTS: [u16; 15] = [
        53, 80, 22, 2222, 5353, 4000, 4001, 20000, 20001, 20002, 20003, 1024, 65535, 0, 8080,
    ];

    /// Addresses by five bits (31: four raw bytes follow). Indexes are named below.
    pub const ADDRS: [Ipv4Addr; 31] = [
        Ipv4Addr::new(10, 0, 1, 5),        // 0 web host
        Ipv4Addr::new(10, 0, 1, 7),        // 1 web host, port forward target (A)
        Ipv4Addr::new(10, 0, 1, 9),        // 2 web ECMP gateway
        Ipv4Addr::new(10, 0, 2, 5),        // 3 db host, floating internal (A)
        Ipv4Addr::new(10, 0, 2, 7),        // 4 db host, port forward target (B)
        Ipv4Addr::new(10, 0, 2, 9),        // 5 db ECMP gateway
        Ipv4Addr::new(10, 0, 3, 9),        // 6 db's second subnet (A)
        Ipv4Addr::new(10, 0, 4, 7),        // 7 IRB host, port forward target (A)
        Ipv4Addr::new(10, 0, 4, 8),        // 8 IRB ECMP gateway
        Ipv4Addr::new(192, 0, 2, 1),       // 9 default gateway
        Ipv4Addr::new(192, 0, 2, 3),       // 10 second default gateway (B)
        Ipv4Addr::new(198, 51, 100, 7),    // 11 internet host
        Ipv4Addr::new(203, 0, 113, 9),     // 12 internet host
        Ipv4Addr::new(192, 0, 2, 10),      // 13 pool, port forwards
        Ipv4Addr::new(192, 0, 2, 11),      // 14 pool (A), port forward (A)
        Ipv4Addr::new(192, 0, 2, 20),      // 15 floating (A)
        Ipv4Addr::new(10, 0, 1, 1),        // 16 router: web
        Ipv4Addr::new(10, 0, 2, 1),        // 17 router: db
        Ipv4Addr::new(10, 0, 3, 1),        // 18 router: db, second subnet (A)
        Ipv4Addr::new(192, 0, 2, 2),       // 19 router: ext
        Ipv4Addr::new(10, 0, 4, 1),        // 20 router: lan (IRB)
        Ipv4Addr::new(10, 50, 3, 3),       // 21 ECMP over two interfaces (A)
        Ipv4Addr::new(10, 51, 7, 7),       // 22 ECMP over two IRB neighbours (A)
        Ipv4Addr::new(10, 66, 1, 1),       // 23 prohibit (A)
        Ipv4Addr::new(10, 77, 1, 1),       // 24 blackhole (A)
        Ipv4Addr::new(10, 88, 1, 1),       // 25 unreachable (A), prohibit (B)
        Ipv4Addr::new(255, 255, 255, 255), // 26
        Ipv4Addr::new(10, 0, 4, 255),      // 27 IRB subnet broadcast
        Ipv4Addr::new(224, 0, 0, 5),       // 28 multicast
        Ipv4Addr::new(0, 0, 0, 0),         // 29
        Ipv4Addr::new(127, 0, 0, 1),       // 30
    ];

    /// Address indexes into [`ADDRS`] for seeds.
    pub mod addr {
        /// Web host.
        pub const WEB_HOST: u8 = 0;
        /// Web host that a port forward reaches (A).
        pub const WEB_FWD: u8 = 1;
        /// Web ECMP gateway.
        pub const WEB_GW: u8 = 2;
        /// Db host with the floating address (A).
        pub const DB_HOST: u8 = 3;
        /// Db ECMP gateway.
        pub const DB_GW: u8 = 5;
        /// IRB host.
        pub const LAN_HOST: u8 = 7;
        /// IRB ECMP gateway.
        pub const LAN_GW: u8 = 8;
        /// Default gateway.
        pub const EXT_GW: u8 = 9;
        /// Internet host.
        pub const INTERNET: u8 = 11;
        /// Pool address.
        pub const POOL: u8 = 13;
        /// Second pool address (A).
        pub const POOL2: u8 = 14;
        /// Floating address (A).
        pub const FLOATING: u8 = 15;
        /// The router on web.
        pub const R_WEB: u8 = 16;
        /// The router on db.
        pub const R_DB: u8 = 17;
        /// The router on ext.
        pub const R_EXT: u8 = 19;
        /// The router on the IRB interface.
        pub const R_LAN: u8 = 20;
        /// Behind ECMP over two interfaces (A).
        pub const ECMP: u8 = 21;
        /// Behind ECMP over two IRB neighbours (A).
        pub const ECMP_LAN: u8 = 22;
        /// Prohibit route (A).
        pub const PROHIBIT: u8 = 23;
        /// Blackhole route (A).
        pub const BLACKHOLE: u8 = 24;
        /// Unreachable route (A).
        pub const UNREACHABLE: u8 = 25;
        /// Limited broadcast.
        pub const BROADCAST: u8 = 26;
        /// Four raw bytes follow.
        pub const RAW: u8 = 31;
    }

    /// Port indexes into [`PORTS`] for seeds.
    pub mod port {
        /// 53.
        pub const DNS: u8 = 0;
        /// 80.
        pub const HTTP: u8 = 1;
        /// 22.
        pub const SSH: u8 = 2;
        /// 2222, the TCP port forward.
        pub const FWD_TCP: u8 = 3;
        /// 5353, the UDP port forward (A).
        pub const FWD_UDP: u8 = 4;
        /// 4000.
        pub const EPHEMERAL: u8 = 5;
        /// 4001.
        pub const EPHEMERAL2: u8 = 6;
        /// 20000, the first pool port.
        pub const POOL0: u8 = 7;
    }

    /// Event kinds (`op & 7`).
    pub mod kind {
        /// A structured IPv4 frame (also 1 and 2).
        pub const IPV4: u8 = 0;
        /// A structured ARP frame.
        pub const ARP: u8 = 3;
        /// A raw inner frame.
        pub const RAW_FRAME: u8 = 4;
        /// A raw VXLAN datagram.
        pub const RAW_VXLAN: u8 = 5;
        /// A clock step.
        pub const CLOCK: u8 = 6;
        /// A reload.
        pub const RELOAD: u8 = 7;
    }

    /// Bit 7 of a packet event's opcode: queue it into a batch.
    pub const BATCHED: u8 = 0x80;
    /// Bit 6 of a packet event's opcode: send it from [`STRANGER`].
    pub const FROM_STRANGER: u8 = 0x40;

    /// An opcode: `kind` with selector `sel` (ingress, clock step or reload target).
    pub const fn op(kind: u8, sel: u8) -> u8 {
        (kind & 7) | ((sel & 7) << 3)
    }

    /// The ingress indexes of [`INGRESS`] for seeds.
    pub mod ingress {
        /// VNI 100, `web`.
        pub const WEB: u8 = 0;
        /// VNI 200, `db`.
        pub const DB: u8 = 1;
        /// VNI 300, `ext`.
        pub const EXT: u8 = 2;
        /// VNI 400, `lan-a` (IRB domain).
        pub const LAN_A: u8 = 3;
        /// VNI 401, `lan-b` (IRB domain).
        pub const LAN_B: u8 = 4;
        /// VNI 500: joined, no function.
        pub const SPARE: u8 = 6;
        /// VNI 999: not joined.
        pub const UNJOINED: u8 = 7;
    }

    fn configs() -> &'static [RouterConfig; 2] {
        static CFGS: OnceLock<[RouterConfig; 2]> = OnceLock::new();
        CFGS.get_or_init(|| {
            let c = |y: &str| {
                let raw: config::RawConfig = serde_saphyr::from_str(y).expect("valid YAML");
                config::compile(&raw).expect("router_path config compiles")
            };
            [c(CONFIG_A), c(CONFIG_B)]
        })
    }

    /// A router over config A (0) or B (1), without the start-up step [`run`] takes.
    pub fn new_net(which: usize) -> MemNet<Router> {
        Router::in_memory(&configs()[which & 1]).expect("engine")
    }

    struct Reader<'a> {
        d: &'a [u8],
        at: usize,
    }

    impl<'a> Reader<'a> {
        fn done(&self) -> bool {
            self.at >= self.d.len()
        }
        fn u8(&mut self) -> u8 {
            let v = self.d.get(self.at).copied().unwrap_or(0);
            self.at += 1;
            v
        }
        fn u16(&mut self) -> u16 {
            u16::from_be_bytes([self.u8(), self.u8()])
        }
        fn take(&mut self, n: usize) -> &'a [u8] {
            let s = self.at.min(self.d.len());
            let e = self.at.saturating_add(n).min(self.d.len());
            self.at = self.at.saturating_add(n);
            &self.d[s..e]
        }
        fn addr(&mut self, i: u8) -> Ipv4Addr {
            match ADDRS.get(usize::from(i & 31)) {
                Some(a) => *a,
                None => Ipv4Addr::new(self.u8(), self.u8(), self.u8(), self.u8()),
            }
        }
        fn port(&mut self, i: u8) -> u16 {
            match PORTS.get(usize::from(i & 15)) {
                Some(p) => *p,
                None => self.u16(),
            }
        }
        /// A length byte: 0..=127 as is, else `(b & 0x7f) * 16` (up to 2032).
        fn len(&mut self) -> usize {
            let n = self.u8();
            if n & 0x80 != 0 {
                usize::from(n & 0x7f) * 16
            } else {
                usize::from(n)
            }
        }
    }

    /// The MAC a host with address `a` uses (stable, so ARP and the fdbs can learn it).
    pub fn host_mac(a: Ipv4Addr) -> Mac {
        let o = a.octets();
        [0x02, 0, 0, 0xa0, o[2], o[3]]
    }

    const BROADCAST_MAC: Mac = [0xff; 6];

    fn eth(dst: Mac, src: Mac, ethertype: u16) -> Vec<u8> {
        let mut f = Vec::with_capacity(1600);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    fn vxlan_datagram(vni: u32, frame: &[u8]) -> Vec<u8> {
        let mut d = vec![0x08, 0, 0, 0];
        d.extend_from_slice(&vni.to_be_bytes()[1..]);
        d.push(0);
        d.extend_from_slice(frame);
        d
    }

    /// The ones'-complement sum of `b` (RFC 1071), folded, not inverted: 0xffff over data
    /// that includes a correct checksum. Written here from scratch, not the datapath's.
    fn ones_sum(init: u32, b: &[u8]) -> u16 {
        let mut s = u64::from(init);
        for c in b.chunks(2) {
            s += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
        let (s, d) = (src.octets(), dst.octets());
        let w = |a: u8, b: u8| u32::from(u16::from_be_bytes([a, b]));
        w(s[0], s[1])
            + w(s[2], s[3])
            + w(d[0], d[1])
            + w(d[2], d[3])
            + u32::from(proto)
            + (len as u32 & 0xffff)
            + (len as u32 >> 16)
    }

    fn set_ip_checksum(ip: &mut [u8]) {
        let ihl = (usize::from(ip[0] & 0x0f) * 4).clamp(20, ip.len());
        ip[10..12].fill(0);
        let c = !ones_sum(0, &ip[..ihl]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
    }

    /// An IPv4 header as this target reads it.
    #[derive(Debug, Clone, Copy)]
    struct Ip {
        ihl: usize,
        total: usize,
        ttl: u8,
        proto: u8,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        fragment: bool,
        offset: u16,
    }

    /// A valid IPv4 header (version, lengths, checksum), or `None`.
    fn parse_ip(ip: &[u8]) -> Option<Ip> {
        if ip.len() < 20 || ip[0] >> 4 != 4 {
            return None;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if ihl < 20 || total < ihl || total > ip.len() || ones_sum(0, &ip[..ihl]) != 0xffff {
            return None;
        }
        let ff = u16::from_be_bytes([ip[6], ip[7]]);
        let a = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
        Some(Ip {
            ihl,
            total,
            ttl: ip[8],
            proto: ip[9],
            src: a(12),
            dst: a(16),
            fragment: ff & 0x3fff != 0,
            offset: ff & 0x1fff,
        })
    }

    /// The state of a packet's transport checksum, computed from scratch.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum L4 {
        Valid,
        Invalid,
        /// UDP without a checksum (zero, RFC 768).
        Absent,
        /// A fragment, a short transport header or another protocol: not judged.
        Unknown,
    }

    fn l4_state(ip: &[u8], h: &Ip) -> L4 {
        if h.fragment {
            return L4::Unknown;
        }
        let seg = &ip[h.ihl..h.total];
        let ok = |s: u16| if s == 0xffff { L4::Valid } else { L4::Invalid };
        match h.proto {
            17 if seg.len() >= 8 => {
                if seg[6..8] == [0, 0] {
                    L4::Absent
                } else {
                    ok(ones_sum(pseudo(h.src, h.dst, 17, seg.len()), seg))
                }
            }
            6 if seg.len() >= 20 => ok(ones_sum(pseudo(h.src, h.dst, 6, seg.len()), seg)),
            1 if seg.len() >= 8 => ok(ones_sum(0, seg)),
            _ => L4::Unknown,
        }
    }

    fn icmp_is_query(t: u8) -> bool {
        matches!(t, 0 | 8 | 13..=18)
    }

    fn icmp_is_error(t: u8) -> bool {
        matches!(t, 3 | 4 | 5 | 11 | 12)
    }

    /// What forwarding and NAT may not change in a packet: everything but the TTL, the
    /// checksums, the addresses, the ports (ICMP: identifier), and in an ICMP error its
    /// quoted header and ports. Equal for an input and the packet it was forwarded as.
    fn fingerprint(ip: &[u8], h: &Ip) -> Vec<u8> {
        let mut f = ip[..h.total].to_vec();
        f[8] = 0;
        f[10..20].fill(0);
        if h.offset == 0 {
            let l4 = &mut f[h.ihl..];
            let zero = |b: &mut [u8], r: std::ops::Range<usize>| {
                let end = r.end.min(b.len());
                if r.start < end {
                    b[r.start..end].fill(0);
                }
            };
            match h.proto {
                17 => {
                    zero(l4, 0..4);
                    zero(l4, 6..8);
                }
                6 => {
                    zero(l4, 0..4);
                    zero(l4, 16..18);
                }
                1 => {
                    zero(l4, 2..4);
                    match l4.first().copied() {
                        Some(t) if icmp_is_query(t) => zero(l4, 4..6),
                        Some(t) if icmp_is_error(t) => zero(l4, 8..8 + 68),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        f
    }

    /// One input packet as the router sees it after decapsulation.
    #[derive(Debug)]
    struct Inner {
        vni: u32,
        port: Option<PortId>,
        frame: Vec<u8>,
    }

    /// What produced a set of outputs.
    #[derive(Debug)]
    struct Cause<'a> {
        /// The packets of the receive batch (empty for a timer).
        inputs: &'a [Inner],
        /// Event number, for messages.
        event: usize,
    }

    /// A fragment out that matched no input by itself: kept until its siblings come.
    #[derive(Debug, Clone)]
    struct Frag {
        vni: u32,
        ip: Vec<u8>,
        h: Ip,
        event: usize,
    }

    #[derive(Debug)]
    struct Harness {
        net: MemNet<Router>,
        cur: usize,
        /// Configs whose state may still show: the current one and any used before in
        /// this input (held packets, sessions and announcements survive a reload).
        active: [bool; 2],
        /// Fingerprints of every valid IPv4 packet sent in: (TTL, transport checksum).
        records: HashMap<Vec<u8>, Vec<(u8, L4)>>,
        /// The same packets whole, to place a lone fragment.
        inputs_ip: Vec<(Vec<u8>, Ip)>,
        /// Fragments out waiting to be reassembled and matched.
        frags: Vec<Frag>,
        ip_id: u16,
        stats: std::cell::Cell<Stats>,
        max_held: usize,
        prev_arp: usize,
        prev_nat: usize,
        prev_tenants: [usize; 4],
        prev_bridge: usize,
        event: usize,
    }

    /// What the outputs of a run were found to be, so tests can tell that the checks ran.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Stats {
        /// Input frames bridged unchanged to another port of their domain.
        pub bridged: usize,
        /// ARP from the router.
        pub arp: usize,
        /// Forwarded packets matched to their input.
        pub forwarded: usize,
        /// Of those, translated (an address changed).
        pub translated: usize,
        /// Forwarded packets reassembled from fragments out and matched to their input.
        pub reassembled: usize,
        /// Fragments only matched to a slice of an input.
        pub lone_fragments: usize,
        /// ICMP the router answered with.
        pub icmp: usize,
    }

    /// Run one input (see the module docs).
    pub fn run(data: &[u8]) {
        run_stats(data);
    }

    /// [`run`], returning what the outputs were.
    pub fn run_stats(data: &[u8]) -> Stats {
        let Some((&head, rest)) = data.split_first() else {
            return Stats::default();
        };
        let mut h = Harness::new(usize::from(head >> 1 & 1));
        if head & 1 != 0 {
            h.warm();
        }
        let mut r = Reader { d: rest, at: 0 };
        let mut batch: Vec<(IpAddr, Vec<u8>)> = Vec::new();
        let batch_size = configs()[0].datapath.tuning.batch_size;
        let mut events = 0;
        while !r.done() && events < MAX_EVENTS {
            events += 1;
            h.event = events;
            let op = r.u8();
            let sel = (op >> 3) & 7;
            match op & 7 {
                k @ 0..=5 => {
                    let (vni, vtep) = INGRESS[usize::from(sel)];
                    let vtep = if op & FROM_STRANGER != 0 {
                        STRANGER
                    } else {
                        vtep
                    };
                    let port = vni_port(&configs()[h.cur], vni);
                    let d = match k {
                        0..=2 => vxlan_datagram(vni, &h.ipv4_frame(&mut r, port)),
                        3 => vxlan_datagram(vni, &h.arp_frame(&mut r, port)),
                        4 => vxlan_datagram(vni, &h.raw_frame(&mut r, port)),
                        _ => {
                            let n = r.len();
                            r.take(n).to_vec()
                        }
                    };
                    batch.push((IpAddr::V4(vtep), d));
                    if op & BATCHED == 0 || batch.len() >= batch_size {
                        h.flush(&mut batch);
                    }
                }
                6 => {
                    h.flush(&mut batch);
                    h.advance(Duration::from_secs(CLOCK_STEPS[usize::from(sel)]));
                }
                _ => {
                    h.flush(&mut batch);
                    let to = match sel & 3 {
                        0 => 1 - h.cur,
                        1 => 0,
                        2 => 1,
                        _ => h.cur,
                    };
                    h.reload(to);
                }
            }
        }
        h.flush(&mut batch);
        h.reassemble(true);
        h.stats.get()
    }

    fn vni_port(cfg: &RouterConfig, vni: u32) -> Option<PortId> {
        cfg.datapath
            .ports
            .iter()
            .position(|p| matches!(&p.kind, PortKind::Vni(c) if c.vni.get() == vni))
            .map(|i| PortId(i as u16))
    }

    /// The interfaces of `cfg` that send out of `port` (on it, or IRB on its domain).
    fn ifaces_on(cfg: &RouterConfig, port: PortId) -> impl Iterator<Item = usize> + '_ {
        cfg.routed
            .l3
            .interfaces
            .iter()
            .enumerate()
            .filter(move |(_, i)| attached(cfg, i.attach, port))
            .map(|(n, _)| n)
    }

    fn attached(cfg: &RouterConfig, a: Attach, port: PortId) -> bool {
        match a {
            Attach::Port(p) => p == port,
            Attach::Bridge(d) => cfg.bridges.get(d).is_some_and(|b| b.ports.contains(&port)),
        }
    }

    impl Harness {
        fn new(which: usize) -> Harness {
            let cfg = &configs()[which];
            let mut h = Harness {
                net: new_net(which),
                cur: which,
                active: [which == 0, which == 1],
                records: HashMap::new(),
                inputs_ip: Vec::new(),
                frags: Vec::new(),
                ip_id: 0,
                stats: std::cell::Cell::default(),
                max_held: cfg.routed.l3.arp.max_held,
                prev_arp: 0,
                prev_nat: 0,
                prev_tenants: [0; 4],
                prev_bridge: 0,
                event: 0,
            };
            // The first timer run: gratuitous ARP for every address. (The router's first
            // tick is due at the wall-clock time it was made, so step a whole second.)
            h.advance(Duration::from_secs(1));
            h
        }

        fn cfgs(&self) -> impl Iterator<Item = &'static RouterConfig> + '_ {
            configs()
                .iter()
                .zip(self.active)
                .filter(|(_, a)| *a)
                .map(|(c, _)| c)
        }

        /// Teach the router every neighbour: an ARP request from each host to its gateway.
        fn warm(&mut self) {
            use addr::*;
            for (ing, host, gw) in [
                (ingress::WEB, WEB_HOST, R_WEB),
                (ingress::WEB, WEB_GW, R_WEB),
                (ingress::DB, DB_HOST, R_DB),
                (ingress::DB, DB_GW, R_DB),
                (ingress::EXT, EXT_GW, R_EXT),
                (ingress::LAN_A, LAN_HOST, R_LAN),
                (ingress::LAN_B, LAN_GW, R_LAN),
            ] {
                let (vni, vtep) = INGRESS[usize::from(ing)];
                let (h, g) = (ADDRS[usize::from(host)], ADDRS[usize::from(gw)]);
                let mut f = eth(BROADCAST_MAC, host_mac(h), 0x0806);
                f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
                f.extend_from_slice(&host_mac(h));
                f.extend_from_slice(&h.octets());
                f.extend_from_slice(&[0; 6]);
                f.extend_from_slice(&g.octets());
                self.flush(&mut vec![(IpAddr::V4(vtep), vxlan_datagram(vni, &f))]);
            }
        }

        /// The MAC of the router's interface on `port` in the current config (web's if
        /// none).
        fn router_mac(&self, port: Option<PortId>) -> Mac {
            let cfg = &configs()[self.cur];
            let ifs = &cfg.routed.l3.interfaces;
            port.and_then(|p| ifaces_on(cfg, p).next())
                .map_or(ifs[0].mac, |i| ifs[i].mac)
        }

        fn ipv4_frame(&mut self, r: &mut Reader<'_>, port: Option<PortId>) -> Vec<u8> {
            let (m, s, d, p, q) = (r.u8(), r.u8(), r.u8(), r.u8(), r.u8());
            let src = r.addr(s);
            let dst = r.addr(d);
            let ttl = match s >> 5 {
                0 | 1 => 64,
                2 => 1,
                3 => 2,
                4 => 0,
                5 => 255,
                6 => 3,
                _ => r.u8(),
            };
            let frag: u16 = match d >> 5 {
                0 | 1 => 0,
                2 | 3 => 0x4000,
                4 => 0x2000,
                5 => 185,
                6 => 0x6000,
                _ => r.u16(),
            };
            let proto = match p & 3 {
                0 => 17,
                1 => 6,
                2 => 1,
                _ => r.u8(),
            };
            let opts: Vec<u8> = if (p >> 2) & 3 == 3 {
                let n = usize::from(r.u8() % 11) * 4;
                let mut o = r.take(n).to_vec();
                o.resize(n, 1);
                o
            } else {
                Vec::new()
            };
            let plen = match PAYLOAD_LENS.get(usize::from(p >> 4)) {
                Some(&n) => n,
                None => usize::from(r.u16() % 2048),
            };
            let sport = r.port(q);
            let dport = r.port(q >> 4);
            let payload: Vec<u8> = (0..plen).map(|i| (i as u8) ^ p).collect();
            let mut l4: Vec<u8> = Vec::with_capacity(plen + 48);
            let csum_at = match proto {
                17 => {
                    l4.extend_from_slice(&sport.to_be_bytes());
                    l4.extend_from_slice(&dport.to_be_bytes());
                    l4.extend_from_slice(&((8 + plen) as u16).to_be_bytes());
                    l4.extend_from_slice(&[0, 0]);
                    Some(6)
                }
                6 => {
                    let flags = r.u8();
                    l4.extend_from_slice(&sport.to_be_bytes());
                    l4.extend_from_slice(&dport.to_be_bytes());
                    l4.extend_from_slice(&[0, 0, 0x10, 0, 0, 0, 0x20, 0, 0x50, flags]);
                    l4.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
                    Some(16)
                }
                1 => {
                    let t = r.u8();
                    let ty = match t & 7 {
                        0 | 1 => 8,
                        2 => 0,
                        3 => 3,
                        4 => 11,
                        5 => 13,
                        6 => 5,
                        _ => r.u8(),
                    };
                    l4.extend_from_slice(&[ty, (t >> 3) & 0x0f, 0, 0]);
                    if icmp_is_error(ty) {
                        l4.extend_from_slice(&[0; 4]);
                        let (qa, qb) = (r.u8(), r.u8());
                        l4.extend_from_slice(&quoted(r, qa, qb, sport, dport));
                    } else {
                        l4.extend_from_slice(&sport.to_be_bytes());
                        l4.extend_from_slice(&dport.to_be_bytes());
                    }
                    Some(2)
                }
                _ => None,
            };
            l4.extend_from_slice(&payload);
            if let Some(at) = csum_at {
                let c = match proto {
                    1 => !ones_sum(0, &l4),
                    _ => !ones_sum(pseudo(src, dst, proto, l4.len()), &l4),
                };
                let c = match m >> 6 {
                    0 | 1 if proto == 17 && c == 0 => 0xffff,
                    0 | 1 => c,
                    2 => 0,
                    _ => c ^ 0x1234,
                };
                l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
            }
            let ihl = 20 + opts.len();
            let mut ip = vec![0u8; ihl];
            ip[0] = 0x40 | (ihl / 4) as u8;
            ip[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
            self.ip_id = self.ip_id.wrapping_add(1);
            ip[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
            ip[6..8].copy_from_slice(&frag.to_be_bytes());
            ip[8] = ttl;
            ip[9] = proto;
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            ip[20..].copy_from_slice(&opts);
            set_ip_checksum(&mut ip);
            ip.extend_from_slice(&l4);
            if (m >> 4) & 3 == 3 {
                let c = r.u8();
                match c & 3 {
                    0 => ip[10] ^= 0x40,
                    1 => {
                        let t = (ip.len() + 1 + usize::from(c >> 2)) as u16;
                        ip[2..4].copy_from_slice(&t.to_be_bytes());
                        set_ip_checksum(&mut ip);
                    }
                    2 => {
                        ip[2..4].copy_from_slice(&u16::from(c >> 2).to_be_bytes());
                        set_ip_checksum(&mut ip);
                    }
                    _ => {
                        ip[0] = (c & 0xf0) | (ip[0] & 0x0f);
                        set_ip_checksum(&mut ip);
                    }
                }
            }
            let rmac = self.router_mac(port);
            let dmac = match m & 3 {
                0 | 1 => rmac,
                2 => host_mac(dst),
                _ => BROADCAST_MAC,
            };
            let smac = if (m >> 2) & 3 == 3 {
                rmac
            } else {
                host_mac(src)
            };
            let mut f = eth(dmac, smac, 0x0800);
            f.extend_from_slice(&ip);
            f
        }

        fn arp_frame(&mut self, r: &mut Reader<'_>, port: Option<PortId>) -> Vec<u8> {
            let (a, s, t) = (r.u8(), r.u8(), r.u8());
            let spa = r.addr(s);
            let tpa = if a & 0x40 != 0 { spa } else { r.addr(t) };
            let rmac = self.router_mac(port);
            let op: u16 = match a & 3 {
                0 | 2 => 1,
                1 => 2,
                _ => r.u16(),
            };
            let edst = match (a >> 2) & 3 {
                1 => rmac,
                2 => host_mac(tpa),
                _ => BROADCAST_MAC,
            };
            let sha = match (a >> 4) & 3 {
                2 => rmac,
                3 => [0x01, 0, 0x5e, 0, 0, 1],
                _ => host_mac(spa),
            };
            let esrc = if is_group_mac(&sha) {
                host_mac(spa)
            } else {
                sha
            };
            let mut f = eth(edst, esrc, 0x0806);
            f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
            f.extend_from_slice(&op.to_be_bytes());
            f.extend_from_slice(&sha);
            f.extend_from_slice(&spa.octets());
            f.extend_from_slice(&if op == 2 { edst } else { [0; 6] });
            f.extend_from_slice(&tpa.octets());
            if a & 0x80 != 0 {
                f.truncate(14 + usize::from(r.u8()) % 28);
            }
            f
        }

        fn raw_frame(&mut self, r: &mut Reader<'_>, port: Option<PortId>) -> Vec<u8> {
            let mode = r.u8();
            let n = r.len();
            let body = r.take(n);
            let mut f = match mode & 3 {
                0 => Vec::new(),
                2 => eth(self.router_mac(port), host_mac(ADDRS[0]), 0x0806),
                _ => eth(self.router_mac(port), host_mac(ADDRS[0]), 0x0800),
            };
            f.extend_from_slice(body);
            if mode & 3 == 3 && f.len() >= 14 + 20 {
                set_ip_checksum(&mut f[14..]);
            }
            f
        }

        /// Send a batch in and check everything that comes out.
        fn flush(&mut self, batch: &mut Vec<(IpAddr, Vec<u8>)>) {
            if batch.is_empty() {
                return;
            }
            let (inputs, sent) = self.send(batch);
            batch.clear();
            self.check_all(&inputs, &sent);
        }

        /// Send a batch in; what went in (decapsulated) and what came out.
        fn send(&mut self, batch: &[(IpAddr, Vec<u8>)]) -> (Vec<Inner>, Vec<Sent>) {
            let cfg = &configs()[self.cur];
            let mut inputs = Vec::new();
            for (_, d) in batch.iter() {
                if d.len() < vxlan::HEADER_LEN {
                    continue;
                }
                let vni = u32::from_be_bytes([0, d[4], d[5], d[6]]);
                let frame = d[vxlan::HEADER_LEN..].to_vec();
                self.record(&frame);
                inputs.push(Inner {
                    vni,
                    port: vni_port(cfg, vni).filter(|_| d[0] & vxlan::FLAG_I != 0),
                    frame,
                });
            }
            let refs: Vec<(IpAddr, &[u8])> = batch.iter().map(|(v, d)| (*v, &d[..])).collect();
            let sent = self.net.vxlan_batch(&refs);
            (inputs, sent)
        }

        /// Check what a batch sent, then the tables.
        fn check_all(&mut self, inputs: &[Inner], sent: &[Sent]) {
            let cause = Cause {
                inputs,
                event: self.event,
            };
            let mut frags = Vec::new();
            for s in sent {
                self.check_output(s, &cause, &mut frags);
            }
            self.frags.extend(frags);
            self.reassemble(false);
            self.check_caps();
        }

        fn advance(&mut self, d: Duration) {
            let sent = self.net.advance(d);
            let cause = Cause {
                inputs: &[],
                event: self.event,
            };
            let mut frags = Vec::new();
            for s in &sent {
                self.check_output(s, &cause, &mut frags);
            }
            self.frags.extend(frags);
            self.reassemble(false);
            self.check_caps();
        }

        fn reload(&mut self, to: usize) {
            Router::reload_in_memory(&mut self.net, &configs()[to]).expect("reload");
            self.cur = to;
            self.active[to] = true;
            self.check_caps();
        }

        /// Remember a valid IPv4 packet sent in, to recognise it when forwarded.
        fn record(&mut self, frame: &[u8]) {
            if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
                return;
            }
            let ip = &frame[14..];
            if let Some(h) = parse_ip(ip) {
                let st = l4_state(ip, &h);
                self.records
                    .entry(fingerprint(ip, &h))
                    .or_default()
                    .push((h.ttl, st));
                self.inputs_ip.push((ip[..h.total].to_vec(), h));
            }
        }

        fn count(&self, f: impl FnOnce(&mut Stats)) {
            let mut s = self.stats.get();
            f(&mut s);
            self.stats.set(s);
        }

        fn iface_addr(&self, a: Ipv4Addr) -> bool {
            self.cfgs().any(|c| c.routed.l3.is_local(a))
        }

        fn owned(&self, a: Ipv4Addr) -> bool {
            self.iface_addr(a) || self.cfgs().any(|c| c.routed.nat.is_external(a))
        }

        /// Whether some route of an active config sends `dst` out of `port`.
        fn routes_via(&self, dst: Ipv4Addr, port: PortId) -> bool {
            self.cfgs().any(|c| {
                let l3 = &c.routed.l3;
                (0..4).any(|hash| {
                    matches!(l3.fib.lookup(dst, hash),
                        Decision::Forward { iface, .. } if attached(c, l3.interfaces[iface].attach, port))
                })
            })
        }

        fn check_output(&self, s: &Sent, cause: &Cause<'_>, frags: &mut Vec<Frag>) {
            let ev = cause.event;
            let Sent::Vxlan { dst, datagram, .. } = s else {
                panic!("event {ev}: a frame on a host interface, but no port uses one: {s:02x?}");
            };
            let d = datagram;
            assert!(
                d.len() >= vxlan::HEADER_LEN + 14,
                "event {ev}: short datagram {d:02x?}"
            );
            assert_eq!(
                d[0],
                vxlan::FLAG_I,
                "event {ev}: VXLAN flags: only the I bit"
            );
            assert_eq!(
                &d[1..4],
                &[0, 0, 0],
                "event {ev}: VXLAN reserved bytes 1..4"
            );
            assert_eq!(d[7], 0, "event {ev}: VXLAN reserved byte 7");
            let vni = u32::from_be_bytes([0, d[4], d[5], d[6]]);
            let cfg = &configs()[self.cur];
            let port = vni_port(cfg, vni)
                .unwrap_or_else(|| panic!("event {ev}: datagram on VNI {vni}, not joined"));
            let PortKind::Vni(vc) = &cfg.datapath.ports[usize::from(port.0)].kind else {
                unreachable!("vni_port returns VNI ports");
            };
            let local = cfg.datapath.underlay.as_ref().map(|u| u.local.ip());
            assert_ne!(
                Some(*dst),
                local,
                "event {ev}: VXLAN to our own VTEP address"
            );
            let inner = &d[vxlan::HEADER_LEN..];
            let dmac: Mac = inner[..6].try_into().expect("6 bytes");
            let smac: Mac = inner[6..12].try_into().expect("6 bytes");
            let fdb = self
                .net
                .engine()
                .vtep()
                .fdb(vc.vni)
                .expect("joined VNI has a table");
            match fdb.lookup(&dmac).filter(|_| !is_group_mac(&dmac)) {
                Some(ip) => assert_eq!(*dst, ip, "event {ev}: known MAC {dmac:02x?} on VNI {vni}"),
                None => assert!(
                    vc.flood.contains(dst),
                    "event {ev}: VNI {vni}: {dst} is neither learned for {dmac:02x?} nor in the flood list"
                ),
            }
            assert!(
                !is_group_mac(&smac),
                "event {ev}: group source MAC out: {inner:02x?}"
            );
            let port_mtu = self
                .cfgs()
                .map(|c| c.datapath.ports[usize::from(port.0)].mtu)
                .max()
                .unwrap_or(0) as usize;
            assert!(
                inner.len() - 14 <= port_mtu,
                "event {ev}: {} bytes out of VNI {vni} (port MTU {port_mtu})",
                inner.len() - 14
            );

            // Bridged: an input frame unchanged, from another port of a common bridge domain
            // (never back out of its own port). A frame equal to an input that is not that
            // must be the router's own (a spoofed input can equal, say, its announcement).
            let bridged = cause.inputs.iter().any(|i| {
                i.frame == inner
                    && i.port.is_some_and(|p| {
                        p != port
                            && self.cfgs().any(|c| {
                                c.bridges
                                    .iter()
                                    .any(|b| b.ports.contains(&p) && b.ports.contains(&port))
                            })
                    })
            });
            if bridged {
                self.count(|s| s.bridged += 1);
                return;
            }
            // Anything else is the router's own, from its interface on that port.
            let ifs: Vec<(&RouterConfig, usize)> = self
                .cfgs()
                .flat_map(|c| ifaces_on(c, port).map(move |i| (c, i)))
                .filter(|(c, i)| c.routed.l3.interfaces[*i].mac == smac)
                .collect();
            assert!(
                !ifs.is_empty(),
                "event {ev}: frame out of VNI {vni} that is neither an input bridged unchanged to another port of its domain nor sent by the router's interface there (source MAC {smac:02x?}): {inner:02x?}"
            );
            match u16::from_be_bytes([inner[12], inner[13]]) {
                0x0806 => self.check_arp(inner, vni, ev),
                0x0800 => self.check_ipv4(inner, port, vni, &ifs, cause, frags),
                t => panic!("event {ev}: the router sent ethertype {t:#06x} on VNI {vni}"),
            }
        }

        fn check_arp(&self, f: &[u8], vni: u32, ev: usize) {
            assert!(
                f.len() >= 42,
                "event {ev}: short ARP on VNI {vni}: {f:02x?}"
            );
            assert_eq!(&f[14..20], &[0, 1, 8, 0, 6, 4], "event {ev}: ARP header");
            let op = u16::from_be_bytes([f[20], f[21]]);
            assert!(op == 1 || op == 2, "event {ev}: ARP operation {op}");
            assert_eq!(
                &f[22..28],
                &f[6..12],
                "event {ev}: ARP sender MAC is not the source"
            );
            let spa = Ipv4Addr::new(f[28], f[29], f[30], f[31]);
            assert!(
                self.owned(spa),
                "event {ev}: the router claims {spa} in ARP on VNI {vni}, none of its addresses"
            );
            self.count(|s| s.arp += 1);
        }

        fn check_ipv4(
            &self,
            f: &[u8],
            port: PortId,
            vni: u32,
            ifs: &[(&RouterConfig, usize)],
            cause: &Cause<'_>,
            frags: &mut Vec<Frag>,
        ) {
            let ev = cause.event;
            let ip = &f[14..];
            let h = parse_ip(ip).unwrap_or_else(|| {
                panic!("event {ev}: malformed IPv4 header (version, lengths or checksum) out of VNI {vni}: {ip:02x?}")
            });
            assert_eq!(h.total, ip.len(), "event {ev}: bytes after the IPv4 packet");
            assert!(h.ttl >= 1, "event {ev}: TTL 0 out of VNI {vni}: {ip:02x?}");
            let mtu = ifs
                .iter()
                .map(|(c, i)| c.routed.l3.interfaces[*i].mtu)
                .max()
                .unwrap_or(0) as usize;
            assert!(
                h.total <= mtu,
                "event {ev}: a {}-byte IPv4 packet out of VNI {vni}, whose interface's MTU is {mtu}: {:02x?}",
                h.total,
                &ip[..h.ihl.min(ip.len())]
            );
            let dmac = &f[..6];
            assert!(
                !is_group_mac(&f[..6].try_into().expect("6 bytes")) && dmac != [0; 6],
                "event {ev}: routed IPv4 to MAC {dmac:02x?}"
            );
            let out_l4 = l4_state(ip, &h);
            let ins = self.forwarded_from(ip, &h);
            if !ins.is_empty() || h.fragment {
                // Forwarded: one of the inputs, TTL decremented, maybe translated (or a
                // fragment of one: checked once its siblings are in, see `reassemble`).
                assert!(
                    self.routes_via(h.dst, port),
                    "event {ev}: a packet to {} forwarded out of VNI {vni}, where no route for it leads: {ip:02x?}",
                    h.dst
                );
                if ins.is_empty() {
                    frags.push(Frag {
                        vni,
                        ip: ip.to_vec(),
                        h,
                        event: ev,
                    });
                } else {
                    check_l4(&ins, out_l4, ev, ip);
                    let translated = self.inputs_ip.iter().all(|(_, i)| {
                        (i.src, i.dst) != (h.src, h.dst) || i.ttl != h.ttl.wrapping_add(1)
                    });
                    self.count(|s| {
                        s.forwarded += 1;
                        s.translated += usize::from(translated);
                    });
                }
                return;
            }
            // Otherwise only ICMP the router answers with, on the port the cause came in by.
            assert!(
                h.proto == 1 && h.total >= h.ihl + 8,
                "event {ev}: IPv4 out of VNI {vni} that is neither a forwarded input (TTL one less; only addresses, ports and checksums changed) nor the router's ICMP: {ip:02x?}"
            );
            let t = ip[h.ihl];
            match t {
                0 => assert!(
                    self.owned(h.src),
                    "event {ev}: echo reply from {}, not ours",
                    h.src
                ),
                3 | 11 => assert!(
                    self.iface_addr(h.src),
                    "event {ev}: ICMP error from {}, not an interface address",
                    h.src
                ),
                _ => panic!("event {ev}: the router sent ICMP type {t}: {ip:02x?}"),
            }
            assert_eq!(out_l4, L4::Valid, "event {ev}: ICMP checksum: {ip:02x?}");
            assert_eq!(
                h.ttl, 64,
                "event {ev}: ICMP the router originates has TTL 64"
            );
            let from: Vec<u32> = cause.inputs.iter().map(|i| i.vni).collect();
            assert!(
                from.contains(&vni),
                "event {ev}: ICMP answer on VNI {vni}, but the packets came in on {from:?}"
            );
            self.count(|s| s.icmp += 1);
        }

        /// The transport checksum states of the inputs that `ip` is a forwarded copy of:
        /// same fingerprint, TTL one more.
        fn forwarded_from(&self, ip: &[u8], h: &Ip) -> Vec<L4> {
            self.records
                .get(&fingerprint(ip, h))
                .into_iter()
                .flatten()
                .filter(|(ttl, _)| u16::from(*ttl) == u16::from(h.ttl) + 1)
                .map(|(_, s)| *s)
                .collect()
        }

        /// Put the fragments out back together (per VNI, addresses, protocol and
        /// identification) and match each whole packet to an input like any forwarded
        /// packet. Fragments still incomplete wait; at the end of the input (`last`) each
        /// must at least carry a slice of an input's payload at its offset.
        fn reassemble(&mut self, last: bool) {
            let mut groups: Vec<Vec<Frag>> = Vec::new();
            for f in self.frags.drain(..) {
                let key = |g: &Frag| (g.vni, g.h.src, g.h.dst, g.h.proto, [g.ip[4], g.ip[5]]);
                match groups.iter_mut().find(|g| key(&g[0]) == key(&f)) {
                    Some(g) => {
                        if !g.iter().any(|x| x.ip == f.ip) {
                            g.push(f);
                        }
                    }
                    None => groups.push(vec![f]),
                }
            }
            for mut g in groups {
                g.sort_by_key(|f| f.h.offset);
                if let Some((whole, h)) = join(&g) {
                    let ins = self.forwarded_from(&whole, &h);
                    if !ins.is_empty() {
                        check_l4(&ins, l4_state(&whole, &h), g[0].event, &whole);
                        self.count(|s| s.reassembled += 1);
                        continue;
                    }
                }
                if !last {
                    self.frags.extend(g);
                    continue;
                }
                for f in &g {
                    assert!(
                        self.carries_input_slice(f),
                        "event {}: a fragment out of VNI {} that is part of no input (nor reassembles into one with its siblings): {:02x?}",
                        f.event,
                        f.vni,
                        f.ip
                    );
                    self.count(|s| s.lone_fragments += 1);
                }
            }
        }

        /// Whether a lone fragment is an input's payload slice at its offset (an input of
        /// the same protocol and identification, TTL one more); the transport header part
        /// of a first fragment is not compared (NAT may have changed it).
        fn carries_input_slice(&self, f: &Frag) -> bool {
            let out = &f.ip[f.h.ihl..f.h.total];
            let out_off = usize::from(f.h.offset) * 8;
            self.inputs_ip.iter().any(|(ip, h)| {
                let inp = &ip[h.ihl..h.total];
                let in_off = usize::from(h.offset) * 8;
                h.proto == f.h.proto
                    && ip[4..6] == f.ip[4..6]
                    && u16::from(h.ttl) == u16::from(f.h.ttl) + 1
                    && out_off >= in_off
                    && out_off - in_off + out.len() <= inp.len()
                    && out.iter().enumerate().all(|(k, b)| {
                        let at = out_off - in_off + k;
                        (in_off == 0 && at < 8 + 68) || inp[at] == *b
                    })
            })
        }

        /// No table grows past its cap (a cap lowered by a reload only stops growth).
        fn check_caps(&mut self) {
            let ev = self.event;
            let cfg = &configs()[self.cur];
            let shared = self.net.engine().nf().shared().clone();
            let st = shared.lock();
            let arp = st.nb.arp.len();
            let cap = cfg.routed.l3.arp.max_entries;
            assert!(
                arp <= cap || arp <= self.prev_arp,
                "event {ev}: the ARP cache grew to {arp} entries, past its cap {cap} (it had {})",
                self.prev_arp
            );
            let held = st.nb.arp.held();
            assert!(
                held <= self.max_held,
                "event {ev}: {held} packets held for ARP"
            );
            let nat = st.ext.table.len();
            let ncap = cfg.routed.nat.table.max_sessions;
            assert!(
                nat <= ncap || nat <= self.prev_nat,
                "event {ev}: {nat} NAT sessions, past the cap {ncap} (there were {})",
                self.prev_nat
            );
            assert_eq!(
                st.ext.table.sessions().count(),
                nat,
                "event {ev}: NAT session count"
            );
            let tcap = cfg.routed.nat.table.max_sessions_per_tenant;
            let mut tenants = [0; 4];
            for (t, n) in tenants.iter_mut().enumerate() {
                *n = st.ext.table.tenant_sessions(t as u32);
                assert!(
                    *n <= tcap || *n <= self.prev_tenants[t],
                    "event {ev}: tenant {t} has {n} NAT sessions, past the cap {tcap}"
                );
            }
            assert_eq!(
                tenants.iter().sum::<usize>(),
                nat,
                "event {ev}: per-tenant session counts"
            );
            if self.active.iter().filter(|a| **a).count() == 1 {
                // One config all along: every masquerade session holds a pool port.
                for m in &cfg.routed.nat.masquerade {
                    let SnatRule::Masquerade(pool) = &m.rule else {
                        continue;
                    };
                    for s in st.ext.table.sessions() {
                        let t = s.translated.src;
                        if pool.addrs.contains(&t.addr) && s.original.src.addr != t.addr {
                            assert!(
                                pool.ports.contains(&t.port),
                                "event {ev}: session {s:?} uses a port outside its pool"
                            );
                        }
                    }
                }
            }
            drop(st);
            let eng = self.net.engine();
            for p in &cfg.datapath.ports {
                if let PortKind::Vni(c) = &p.kind {
                    let fdb = eng.vtep().fdb(c.vni).expect("joined VNI has a table");
                    assert!(
                        fdb.learned_len() <= c.max_entries,
                        "event {ev}: VNI {} learned {} MACs, cap {}",
                        c.vni,
                        fdb.learned_len(),
                        c.max_entries
                    );
                }
            }
            let lan = eng.nf().bridge().fdb("lan").expect("bridge lan").len();
            let bcap = cfg.bridges[0].max_macs;
            assert!(
                lan <= bcap || lan <= self.prev_bridge,
                "event {ev}: bridge lan has {lan} MACs, cap {bcap}"
            );
            self.prev_arp = arp;
            self.prev_nat = nat;
            self.prev_tenants = tenants;
            self.prev_bridge = lan;
        }
    }

    /// A forwarded packet's transport checksum: right if the input's was, still absent if
    /// it was absent (`ins`: the states of the inputs it may be).
    fn check_l4(ins: &[L4], out: L4, ev: usize, ip: &[u8]) {
        if ins.iter().all(|s| *s == L4::Valid) {
            assert_eq!(
                out,
                L4::Valid,
                "event {ev}: transport checksum wrong after forwarding (NAT), though the input's was right: {ip:02x?}"
            );
        }
        if ins.iter().all(|s| *s == L4::Absent) {
            assert_eq!(
                out,
                L4::Absent,
                "event {ev}: UDP checksum invented: {ip:02x?}"
            );
        }
    }

    /// Fragments sorted by offset joined into one packet, if they are contiguous: the
    /// first one's header with the last one's More Fragments flag.
    fn join(g: &[Frag]) -> Option<(Vec<u8>, Ip)> {
        let first = g.first()?;
        let mut p = first.ip[..first.h.total].to_vec();
        let mut end = usize::from(first.h.offset) * 8 + (first.h.total - first.h.ihl);
        for f in &g[1..] {
            if usize::from(f.h.offset) * 8 != end {
                return None;
            }
            p.extend_from_slice(&f.ip[f.h.ihl..f.h.total]);
            end += f.h.total - f.h.ihl;
        }
        let total = u16::try_from(p.len()).ok()?;
        let last = g.last()?;
        let ff = u16::from_be_bytes([first.ip[6], first.ip[7]]);
        let ff = (ff & 0xdfff) | (u16::from_be_bytes([last.ip[6], last.ip[7]]) & 0x2000);
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[6..8].copy_from_slice(&ff.to_be_bytes());
        set_ip_checksum(&mut p);
        let h = parse_ip(&p)?;
        Some((p, h))
    }

    /// The header and first 8 bytes of the packet an ICMP error quotes.
    fn quoted(r: &mut Reader<'_>, qa: u8, qb: u8, sport: u16, dport: u16) -> Vec<u8> {
        let src = r.addr(qa);
        let dst = r.addr(qb);
        let proto = match qa >> 5 {
            0..=2 => 17,
            3 | 4 => 6,
            5 | 6 => 1,
            _ => r.u8(),
        };
        let mut q = vec![0u8; 20];
        q[0] = 0x45;
        let total = 28 + usize::from(qb >> 6) * 100;
        q[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        q[8] = 63;
        q[9] = proto;
        q[12..16].copy_from_slice(&src.octets());
        q[16..20].copy_from_slice(&dst.octets());
        set_ip_checksum(&mut q);
        if proto == 1 {
            let ty = if qb & 0x20 != 0 { 0 } else { 8 };
            q.extend_from_slice(&[ty, 0, 0, 0]);
            q.extend_from_slice(&sport.to_be_bytes());
            q.extend_from_slice(&dport.to_be_bytes());
            let c = !ones_sum(0, &q[20..]);
            q[22..24].copy_from_slice(&c.to_be_bytes());
        } else {
            q.extend_from_slice(&sport.to_be_bytes());
            q.extend_from_slice(&dport.to_be_bytes());
            q.extend_from_slice(&[0, 8, 0, 0]);
        }
        q
    }

    #[cfg(test)]
    mod tests {
        use std::panic::{AssertUnwindSafe, catch_unwind};

        use super::*;

        /// A warmed router, and what one input (encoded as a `router_path` event) sent.
        fn one(event: &[u8]) -> (Harness, Vec<Inner>, Vec<Sent>) {
            let mut h = Harness::new(0);
            h.warm();
            let mut r = Reader { d: event, at: 0 };
            let op = r.u8();
            let (vni, vtep) = INGRESS[usize::from((op >> 3) & 7)];
            let port = vni_port(&configs()[0], vni);
            let f = h.ipv4_frame(&mut r, port);
            let (inputs, sent) = h.send(&[(IpAddr::V4(vtep), vxlan_datagram(vni, &f))]);
            (h, inputs, sent)
        }

        fn rejects(h: &mut Harness, inputs: &[Inner], sent: Vec<Sent>) -> bool {
            catch_unwind(AssertUnwindSafe(|| {
                h.check_all(inputs, &sent);
                h.reassemble(true);
            }))
            .is_err()
        }

        /// Apply `f` to the inner frame of every datagram.
        fn tamper(sent: &[Sent], f: impl Fn(&mut Vec<u8>)) -> Vec<Sent> {
            sent.iter()
                .cloned()
                .map(|mut s| {
                    if let Sent::Vxlan { datagram, .. } = &mut s {
                        let mut inner = datagram.split_off(vxlan::HEADER_LEN);
                        f(&mut inner);
                        datagram.extend_from_slice(&inner);
                    }
                    s
                })
                .collect()
        }

        /// The invariants are not vacuous: real outputs pass, and each kind of corruption
        /// of them is caught.
        #[test]
        fn invariants_catch_corrupted_outputs() {
            use addr::*;
            // web host -> internet, masqueraded: UDP, valid checksums.
            let ev = [
                op(kind::IPV4, ingress::WEB),
                0,
                WEB_HOST,
                INTERNET,
                0x20,
                0x15,
            ];
            let (mut h, inputs, sent) = one(&ev);
            assert_eq!(sent.len(), 1, "{sent:?}");
            h.check_all(&inputs, &sent);
            let fix = |f: &mut Vec<u8>| set_ip_checksum(&mut f[14..]);
            let cases: Vec<(&str, Vec<Sent>)> = vec![
                (
                    "TTL not decremented",
                    tamper(&sent, |f| {
                        f[22] += 1;
                        fix(f);
                    }),
                ),
                ("IP checksum", tamper(&sent, |f| f[24] ^= 1)),
                ("UDP checksum not updated", tamper(&sent, |f| f[40] ^= 1)),
                (
                    "payload changed",
                    tamper(&sent, |f| {
                        let n = f.len() - 1;
                        f[n] ^= 1;
                    }),
                ),
                (
                    "IP id changed",
                    tamper(&sent, |f| {
                        f[18] ^= 1;
                        fix(f);
                    }),
                ),
                (
                    "source MAC of another interface",
                    tamper(&sent, |f| f[10] = 1),
                ),
                (
                    "TTL 0",
                    tamper(&sent, |f| {
                        f[22] = 0;
                        fix(f);
                    }),
                ),
                (
                    "broadcast destination MAC",
                    tamper(&sent, |f| f[..6].fill(0xff)),
                ),
                ("trailing bytes", tamper(&sent, |f| f.push(0))),
            ];
            for (what, bad) in cases {
                let (mut h, inputs, _) = one(&ev);
                assert!(rejects(&mut h, &inputs, bad), "{what}");
            }
            // Sent back out of VNI 100 (no route leads there), or on an unjoined VNI.
            let vni_to = |v: u32| {
                let mut s = sent.clone();
                if let Sent::Vxlan { datagram, dst, .. } = &mut s[0] {
                    datagram[4..7].copy_from_slice(&v.to_be_bytes()[1..]);
                    *dst = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
                }
                s
            };
            let (mut h, inputs, _) = one(&ev);
            assert!(
                rejects(&mut h, &inputs, vni_to(100)),
                "back to the ingress VNI"
            );
            let (mut h, inputs, _) = one(&ev);
            assert!(rejects(&mut h, &inputs, vni_to(999)), "unjoined VNI");

            // A 1400-byte UDP packet to db (interface MTU 1300) comes out in two fragments,
            // which reassemble to it; losing or changing one is caught.
            let ev = [
                op(kind::IPV4, ingress::WEB),
                0,
                WEB_HOST,
                DB_HOST,
                0xd0,
                0x05,
            ];
            let (mut h, inputs, sent) = one(&ev);
            assert_eq!(sent.len(), 2, "{sent:?}");
            h.check_all(&inputs, &sent);
            h.reassemble(true);
            assert_eq!(h.stats.get().reassembled, 1);
            let (mut h, inputs, _) = one(&ev);
            let mut changed = sent.clone();
            changed[1] = tamper(&sent[1..], |f| {
                let n = f.len() - 1;
                f[n] ^= 1;
            })
            .remove(0);
            assert!(
                rejects(&mut h, &inputs, changed),
                "fragment payload changed"
            );
            let (mut h, inputs, _) = one(&ev);
            let bigger = tamper(&sent[..1], |f| {
                let n = f.len() - 14;
                f.extend_from_slice(&[0; 8]);
                f[16..18].copy_from_slice(&((n + 8) as u16).to_be_bytes());
                fix(f);
            });
            assert!(rejects(&mut h, &inputs, bigger), "over the interface MTU");

            // A frame between two hosts of the IRB domain is bridged to VNI 401 (where the
            // warm-up taught the bridge the other host) unchanged; the same frame back out of
            // VNI 400, where it came in, is caught.
            let ev = [op(kind::IPV4, ingress::LAN_A), 2, LAN_HOST, LAN_GW, 0x20, 0];
            let (mut h, inputs, sent) = one(&ev);
            assert_eq!(sent.len(), 1, "to VNI 401: {sent:?}");
            h.check_all(&inputs, &sent);
            assert_eq!(h.stats.get().bridged, 1);
            let mut back = sent[..1].to_vec();
            if let Sent::Vxlan { datagram, dst, .. } = &mut back[0] {
                datagram[4..7].copy_from_slice(&400u32.to_be_bytes()[1..]);
                *dst = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 5));
            }
            let (mut h, inputs, _) = one(&ev);
            assert!(
                rejects(&mut h, &inputs, back),
                "bridged back to its own port"
            );

            // An echo reply must come from our address, back where the request came in.
            let ev = [
                op(kind::IPV4, ingress::WEB),
                0,
                WEB_HOST,
                R_WEB,
                0x02,
                0x05,
                0,
            ];
            let (mut h, inputs, sent) = one(&ev);
            assert_eq!(sent.len(), 1, "{sent:?}");
            h.check_all(&inputs, &sent);
            let (mut h, inputs, _) = one(&ev);
            let spoofed = tamper(&sent, |f| {
                f[26..30].copy_from_slice(&[10, 0, 1, 99]);
                fix(f);
            });
            assert!(
                rejects(&mut h, &inputs, spoofed),
                "echo reply from a stranger"
            );
        }
    }
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
