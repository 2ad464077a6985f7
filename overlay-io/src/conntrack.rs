//! Connection tracking for stateful functions (sans-IO): which packets belong to a
//! connection the policy accepted, in the terms a firewall's rules use.
//!
//! It reads no clock (`now` is passed in) and changes no packet: [`Packet::parse`] reads what
//! tracking needs from an IPv4 packet that [`crate::ipv4::parse`] accepted, and
//! [`Conntrack::lookup`] classifies it. Nothing here panics on input.
//!
//! # States as the rules see them
//!
//! [`CtState`] has the meaning of Linux conntrack's `ctstate`:
//!
//! - **New**: the packet may start a connection and none exists (`conn: None`), or it goes
//!   the original way on a connection that has seen no reply yet (a retransmitted SYN, a
//!   second unanswered UDP datagram; `conn: Some`).
//! - **Established**: the connection has seen packets both ways; the first reply is
//!   Established itself.
//! - **Related**: an ICMP error (destination unreachable, source quench, redirect, time
//!   exceeded, parameter problem: RFC 792) about a packet of a tracked connection.
//! - **Invalid**, with an [`InvalidReason`]: truncated or malformed headers, fragments,
//!   impossible TCP flags, segments outside the TCP window or not allowed in the
//!   connection's state, TCP other than a SYN without a connection, ICMP replies and errors
//!   that belong to nothing. Counted per reason in [`CtStats::invalid`]; the connection is
//!   not changed.
//!
//! # How the caller uses it
//!
//! For each packet: [`Packet::parse`], then [`Conntrack::lookup`], which updates the
//! connection it belongs to (state, timer, counters). On `New` with `conn: None` the policy
//! decides; if it accepts, [`Conntrack::commit`] creates the connection in a zone (whose cap
//! it counts against) with a tag (the accepting rule's id). The caller calls
//! [`Conntrack::expire`] from its timer; each call does a bounded amount of work. On reload:
//! [`Conntrack::set_config`], then [`Conntrack::retain`] to cut the connections the new
//! policy no longer accepts. [`Conntrack::conns`] lists connections for the admin endpoint.
//!
//! A table is one address space: keys carry no zone, so two zones that reuse the same
//! addresses need two tables (the design runs one function per tenant).
//!
//! # TCP
//!
//! The state machine follows Linux `nf_conntrack_proto_tcp.c` (itself after RFC 793, now
//! RFC 9293 §3.3.2), except that the closing states are derived from which side sent a FIN
//! and whether the other side acknowledged it, rather than from the last flag seen:
//!
//! | state | meaning | default timeout |
//! | --- | --- | --- |
//! | `SynSent` | the opener's SYN | 120 s |
//! | `SynSent2` | SYNs both ways: simultaneous open (RFC 9293 §3.5) | 120 s |
//! | `SynRecv` | the SYN/ACK | 60 s |
//! | `Established` | the opener acknowledged the SYN/ACK | 7440 s |
//! | `FinWait` | one side sent FIN, not yet acknowledged | 120 s |
//! | `CloseWait` | one side's FIN acknowledged, the other side still sending (half-close) | 60 s |
//! | `LastAck` | FINs both ways, not both acknowledged | 30 s |
//! | `TimeWait` | FINs both ways, both acknowledged | 120 s |
//! | `Close` | a RST | 10 s |
//!
//! Linux keeps established connections 5 days; the default here is RFC 5382 REQ-5's
//! 2 h 4 min: longer than the 2 h keep-alive interval of RFC 1122 §4.2.3.6, so an idle
//! connection with keep-alives survives, while one whose peer vanished leaves the table the
//! same day instead of holding a slot that early drop may not take.
//!
//! - **Flags**: the valid combinations are Linux's `tcp_valid_flags` (PSH, ECE and CWR
//!   ignored): SYN, SYN+URG, SYN+ACK, RST, RST+ACK, FIN+ACK(+URG), ACK(+URG). Anything else
//!   (SYN+FIN, SYN+RST, no flags, FIN without ACK, ...) is [`InvalidReason::TcpFlags`].
//! - **No mid-stream pickup**: a segment other than a SYN without a connection is
//!   [`InvalidReason::NoConnection`]. With [`CtConfig::loose`], an ACK may start one
//!   (`Established` at once, windows not enforced, as Linux's `nf_conntrack_tcp_loose`);
//!   it can be dropped early until the other side answers.
//! - **Window tracking** after Guido van Rooij's "Real Stateful TCP Packet Filtering in IP
//!   Filter" and Linux `tcp_in_window`: per side, the highest sequence sent (`end`), the
//!   highest the peer allowed (`maxend`: its ack plus its window) and the largest window it
//!   advertised (`maxwin`, scaled). A segment must satisfy the four bounds
//!   `seq <= maxend` (I), `seq + len >= end - peer.maxwin` (II: retransmissions within a
//!   window), `ack <= peer.end` (III: nothing acknowledged that was not sent) and
//!   `ack >= peer.end - max(maxwin, 66000)` (IV), else it is
//!   [`InvalidReason::OutOfWindow`]. Window scaling follows RFC 7323 §2.2-2.3 (on only if both
//!   SYNs carried the option, never applied to a SYN's window, shift capped at 14).
//!   Simplified against Linux: SACK blocks are not read (only the cumulative ack is
//!   checked, so SACK traffic passes, a bogus SACK edge is not caught), no retransmission
//!   counting and no shortened "unacknowledged" timeout, no "ignore" class for
//!   slightly-out-of-window segments (they are Invalid), and the RST sequence is held
//!   to the window, not to RFC 5961's exact match (the endpoint does that).
//! - **Out of sync** (Linux's "ignore" transitions): a SYN on a connection past the
//!   handshake and a retransmitted SYN/ACK pass without changing anything, so the peer can
//!   answer with a challenge ACK (RFC 5961 §4) and the opener's RST closes the stale
//!   connection; an ACK answering a SYN (a half-open peer) passes likewise. A SYN on a
//!   connection in `TimeWait` or `Close` removes it and is `New`: the reopened
//!   connection goes through the policy again. Not done: Linux's resynchronisation when a
//!   SYN/ACK answers a SYN that was let through that way (endpoints that started over on
//!   the same ports without a RST passing): their segments are out of window until the
//!   old connection is reset or times out.
//!
//! # UDP, ICMP and other protocols
//!
//! - UDP is `Unreplied` until a reply, then `Replied`; a packet at least 2 s after the
//!   first makes it `Assured` (a stream, Linux 5.8+), with the longer timeout. A DNS
//!   exchange stays `Replied`, short-lived and droppable early.
//! - ICMP echo, timestamp, information and address mask requests (RFC 792, RFC 950) start
//!   a pseudo-connection keyed by the identifier; the matching reply type is its reply.
//!   In a [`Key`] the identifier is `sport` and the request's type is `dport`, both ways,
//!   so a request from either end starts its own connection. ICMP is never assured
//!   (Linux); other ICMP types are [`InvalidReason::IcmpType`].
//! - Other protocols (GRE, ESP, ...) are tracked by addresses and protocol like UDP, with
//!   one timeout (Linux's generic tracker never assures them; here they can be assured).
//!
//! # ICMP errors (Related)
//!
//! An error quotes the IP header and at least 8 bytes of the packet that caused it
//! (RFC 792). The quoted key is looked up as it travelled; the error is Related if a
//! connection matches, the error goes back to the quoted packet's source (Linux
//! `nf_conntrack_inet_error` checks the same: otherwise any host could make its packets
//! Related by quoting someone else's connection) and, for TCP, the quoted sequence number
//! is within a window of what that side sent (RFC 5927 §4.1). An error about an ICMP
//! error (RFC 1122 §3.2.2 forbids sending one) or quoting too little is
//! [`InvalidReason::IcmpError`]. Related packets neither refresh nor count on the
//! connection.
//!
//! # Fragments
//!
//! Tracking needs the transport header, which only the first fragment carries. The rule:
//!
//! - a non-first fragment is [`InvalidReason::Fragment`];
//! - a first fragment of TCP is too: the segment's length, which window tracking needs,
//!   is only known once it is reassembled;
//! - a first fragment of UDP, ICMP or another protocol is tracked like a whole packet
//!   (the ports are there) if its transport header is complete (else
//!   [`InvalidReason::Truncated`]: RFC 1858's tiny fragments).
//!
//! So a caller that wants fragmented traffic tracked reassembles first, as Linux does
//! (`nf_defrag_ipv4` runs before conntrack); one that does not may pass non-first fragments
//! by a stateless rule of its own (the receiver cannot reassemble without the first).
//!
//! # Caps and early drop
//!
//! [`CtConfig::max_conns`] caps the table and [`CtConfig::max_conns_per_zone`] each zone.
//! When a commit finds its zone or the table full, it drops an **early-drop candidate**,
//! oldest first: a connection that never completed (TCP that never reached
//! `Established`, UDP or another protocol not assured, any ICMP) or a TCP connection that
//! is closing for good (`LastAck`, `TimeWait`, `Close`). Established and half-closed
//! connections are never dropped for a new one, so a SYN flood only displaces half-open
//! connections. If no candidate exists the commit fails ([`CtError::ZoneFull`],
//! [`CtError::TableFull`]), counted. Candidates are kept in two lists (all zones and per
//! zone) in the order they became candidates, so finding one costs O(1).
//!
//! # Expiry
//!
//! A one-second timing wheel of 8192 slots (about 2 h 16 min a turn), as in
//! [`crate::nat`], with the lists threaded through the entries: refreshing a connection
//! costs nothing (when its slot comes up, an entry seen since is filed again under its new
//! deadline), a state change that changes the timeout files it again at once.
//! [`Conntrack::expire`] examines at most [`CtConfig::expire_budget`] entries per call
//! and steps over at most one turn of empty slots. Deadlines are in whole seconds, rounded
//! up: a connection goes at most about a second after its timeout.
//!
//! # Memory
//!
//! Measured on x86_64 (`memory_per_connection` test; the bench prints the same). A
//! connection is one 112-byte entry in a slab of 1024-entry chunks:
//!
//! | part | bytes |
//! | --- | --- |
//! | key: addresses, ports, protocol | 13 |
//! | state, flags, TCP window scales and per-side flags | 6 |
//! | zone, tag, created, last seen, handle generation | 20 |
//! | links: timing wheel, early-drop lists (all zones, own zone) | 24 |
//! | TCP window tracking, both sides (`end`, `maxend`, `maxwin`) | 24 |
//! | 48-bit packet and byte counters, both ways | 24 |
//! | padding | 1 |
//!
//! The index is an open-addressing table of 4-byte buckets (a 24-bit slot index under 8
//! bits of the hash), one per connection, hashed on a direction-independent key so that one
//! bucket serves both directions. It doubles when 3/4 full and, as removal leaves no
//! tombstones, churn never grows it: 3/8 to 3/4 full, 5.3 to 10.7 bytes per connection. So
//! **117 to 123 bytes per connection**, plus 32 KiB of wheel, at most 112 KiB of unused
//! chunk and about 20 bytes per zone: measured 123 bytes at 100,000 connections (the index has
//! just doubled there), about 120 MB for a million.
//!
//! # Limitations
//!
//! IPv4 only; no helpers or expectations (FTP, SIP: their data connections are New); no
//! NAT (the reply key is the original reversed; [`crate::nat`] keeps translations);
//! checksums are not verified (the endpoints do; offloaded packets carry partial ones); at
//! most 2^24 - 1 connections per table; keys carry no zone (see above).

use std::fmt;
use std::hash::BuildHasher;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use crate::ipv4::Header;
pub use crate::nat::Direction;

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// Slots in the timing wheel; one slot per second.
const WHEEL_SLOTS: u32 = 8192;
/// Entries per slab chunk: chunks never move, and at most one is partly used.
const CHUNK_BITS: u32 = 10;
const CHUNK: usize = 1 << CHUNK_BITS;
/// "No entry" in the lists.
const NIL: u32 = u32::MAX;
/// Tags a wheel entry's `prev` as "head of slot N": lets an entry leave the wheel without
/// knowing its slot. Entry indices stay below it.
const WHEEL_HEAD: u32 = 1 << 31;
/// An index bucket holds a slab index in its low 24 bits, under 8 bits of the key's hash.
const SLOT_BITS: u32 = 24;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;
/// An empty index bucket (slot `SLOT_MASK` is never used).
const EMPTY: u32 = u32::MAX;
/// Connections a table can hold: 2^24 - 1.
const MAX_ENTRIES: u32 = SLOT_MASK;
/// Buckets of the index once it holds anything.
const MIN_BUCKETS: usize = 1024;
/// Early drops one commit may do (more than one only after a cap was lowered).
const MAX_EVICTIONS: u32 = 8;
/// UDP seen both ways and still active this long after its first packet is a stream
/// (Linux `nf_conntrack_udp_packet`).
const STREAM_SECS: u32 = 2;
/// Linux `MAXACKWINDOW`: the smallest span bound IV allows below the peer's `end`.
const MIN_ACK_WINDOW: u32 = 66000;
/// RFC 7323 §2.3: a larger shift count is taken as 14.
const MAX_WSCALE: u8 = 14;
/// Mask of a 48-bit counter.
const MASK48: u64 = (1 << 48) - 1;

mod field {
    use core::ops::Range;

    // TCP (RFC 9293 §3.1).
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const TCP_SEQ: Range<usize> = 4..8;
    pub const TCP_ACK: Range<usize> = 8..12;
    pub const TCP_DATA_OFF: usize = 12;
    pub const TCP_FLAGS: usize = 13;
    pub const TCP_WINDOW: Range<usize> = 14..16;
    pub const TCP_MIN_HEADER: usize = 20;
    // UDP (RFC 768).
    pub const UDP_LEN: Range<usize> = 4..6;
    pub const UDP_HEADER: usize = 8;
    // ICMP (RFC 792): type, code, checksum, then the identifier of a query or the quoted
    // packet of an error after 4 more bytes.
    pub const ICMP_TYPE: usize = 0;
    pub const ICMP_CODE: usize = 1;
    pub const ICMP_ID: Range<usize> = 4..6;
    pub const ICMP_HEADER: usize = 8;
    // The IPv4 header quoted in an ICMP error (RFC 791).
    pub const IP_VER_IHL: usize = 0;
    pub const IP_FLAGS_FRAG: Range<usize> = 6..8;
    pub const IP_PROTOCOL: usize = 9;
    pub const IP_SRC: Range<usize> = 12..16;
    pub const IP_DST: Range<usize> = 16..20;
    pub const IP_MIN_HEADER: usize = 20;
    /// What RFC 792 asks an error to quote after the IP header: "64 bits of Data Datagram".
    pub const QUOTED_L4: usize = 8;
}

/// A connection's key as a packet travels: addresses, protocol and ports.
///
/// For ICMP queries `sport` is the identifier and `dport` the request's type (8 echo, 13
/// timestamp, 15 information, 17 address mask) in both directions; for protocols without
/// ports both are 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// IP protocol number.
    pub proto: u8,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Source port (ICMP query: identifier).
    pub sport: u16,
    /// Destination port (ICMP query: request type).
    pub dport: u16,
}

impl Key {
    /// The key of the other direction (TCP, UDP and other protocols; for an ICMP query
    /// only the addresses swap, see [`Key`]).
    pub const fn reversed(&self) -> Key {
        if self.proto == IPPROTO_ICMP {
            Key {
                src: self.dst,
                dst: self.src,
                ..*self
            }
        } else {
            Key {
                proto: self.proto,
                src: self.dst,
                dst: self.src,
                sport: self.dport,
                dport: self.sport,
            }
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.proto {
            IPPROTO_TCP | IPPROTO_UDP => {
                let name = if self.proto == IPPROTO_TCP {
                    "tcp"
                } else {
                    "udp"
                };
                write!(
                    f,
                    "{name} {}:{} -> {}:{}",
                    self.src, self.sport, self.dst, self.dport
                )
            }
            IPPROTO_ICMP => write!(
                f,
                "icmp {} -> {} type {} id {}",
                self.src, self.dst, self.dport, self.sport
            ),
            p => write!(f, "proto {p} {} -> {}", self.src, self.dst),
        }
    }
}

/// What tracking reads of a TCP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSegment {
    /// The flags byte (CWR ECE URG ACK PSH RST SYN FIN).
    pub flags: u8,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (meaningful with ACK).
    pub ack: u32,
    /// Window as sent (not scaled).
    pub window: u16,
    /// The window scale option's shift count (RFC 7323 §2.2), read on SYN segments only.
    pub wscale: Option<u8>,
}

impl TcpSegment {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;
    /// ECE (RFC 3168).
    pub const ECE: u8 = 0x40;
    /// CWR (RFC 3168).
    pub const CWR: u8 = 0x80;
}

/// The packet an ICMP error quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quoted {
    /// Its key as it travelled (from the host the error goes back to).
    pub key: Key,
    /// A quoted ICMP query: whether it was the reply.
    pub icmp_reply: bool,
    /// Quoted TCP: its sequence number (0 otherwise).
    pub tcp_seq: u32,
}

/// The transport part of a [`Packet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    /// TCP.
    Tcp(TcpSegment),
    /// UDP.
    Udp,
    /// An ICMP query or its reply (the identifier is in the key).
    IcmpQuery {
        /// ICMP type.
        ty: u8,
    },
    /// An ICMP error (types 3, 4, 5, 11, 12) and the packet it quotes.
    IcmpError {
        /// ICMP type.
        ty: u8,
        /// ICMP code.
        code: u8,
        /// The quoted packet.
        quoted: Quoted,
    },
    /// Another ICMP type (router advertisement, ...).
    IcmpOther {
        /// ICMP type.
        ty: u8,
        /// ICMP code.
        code: u8,
    },
    /// Another protocol: tracked by addresses.
    Other,
    /// A non-first fragment: no transport header.
    Fragment,
    /// A transport header that is cut short or malformed.
    Malformed(InvalidReason),
}

/// What tracking needs of one IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// Addresses, protocol and ports as the packet travels (an ICMP error's is its own
    /// outer addresses with ports 0).
    pub key: Key,
    /// The transport header.
    pub l4: L4,
    /// A fragment: More Fragments set or a non-zero offset.
    pub fragment: bool,
    /// Bytes of the IP packet (header and payload), for the counters.
    pub len: u16,
    /// Transport payload bytes in this packet: TCP or UDP data, an ICMP message's body.
    pub payload_len: u16,
}

fn be16(b: &[u8], r: Range<usize>) -> Option<u16> {
    b.get(r)?.try_into().ok().map(u16::from_be_bytes)
}

fn be32(b: &[u8], r: Range<usize>) -> Option<u32> {
    b.get(r)?.try_into().ok().map(u32::from_be_bytes)
}

fn addr(b: &[u8], r: Range<usize>) -> Option<Ipv4Addr> {
    let a: [u8; 4] = b.get(r)?.try_into().ok()?;
    Some(Ipv4Addr::from(a))
}

/// An ICMP query type's request type, and whether `ty` is the reply (RFC 792, RFC 950).
const fn icmp_query(ty: u8) -> Option<(u8, bool)> {
    match ty {
        8 => Some((8, false)),
        0 => Some((8, true)),
        13 => Some((13, false)),
        14 => Some((13, true)),
        15 => Some((15, false)),
        16 => Some((15, true)),
        17 => Some((17, false)),
        18 => Some((17, true)),
        _ => None,
    }
}

/// Destination unreachable, source quench, redirect, time exceeded, parameter problem.
const fn is_icmp_error(ty: u8) -> bool {
    matches!(ty, 3 | 4 | 5 | 11 | 12)
}

/// The window scale option among TCP options (RFC 7323 §2.2: kind 3, length 3).
fn window_scale(mut opts: &[u8]) -> Option<u8> {
    while let Some((&kind, rest)) = opts.split_first() {
        match kind {
            0 => return None,
            1 => opts = rest,
            _ => {
                let len = usize::from(*rest.first()?);
                if len < 2 || len > opts.len() {
                    return None;
                }
                if kind == 3 && len == 3 {
                    return opts.get(2).copied();
                }
                opts = &opts[len..];
            }
        }
    }
    None
}

impl Packet {
    /// Read a packet that [`crate::ipv4::parse`] accepted as `hdr`. Never fails: what cannot
    /// be tracked comes back as [`L4::Fragment`] or [`L4::Malformed`], and lookup makes it
    /// Invalid. Never panics, even if `hdr` does not describe `ip`.
    pub fn parse(ip: &[u8], hdr: &Header) -> Packet {
        let mut p = Packet {
            key: Key {
                proto: hdr.protocol,
                src: hdr.src,
                dst: hdr.dst,
                sport: 0,
                dport: 0,
            },
            l4: L4::Other,
            fragment: hdr.fragment,
            len: hdr.total_len.min(usize::from(u16::MAX)) as u16,
            payload_len: 0,
        };
        if hdr.fragment_offset != 0 {
            p.l4 = L4::Fragment;
            return p;
        }
        let Some(l4) = ip.get(hdr.header_len..hdr.total_len) else {
            p.l4 = L4::Malformed(InvalidReason::Truncated);
            return p;
        };
        let parsed = match hdr.protocol {
            IPPROTO_TCP => parse_tcp(l4, &mut p),
            IPPROTO_UDP => parse_udp(l4, &mut p),
            IPPROTO_ICMP => parse_icmp(l4, &mut p),
            _ => {
                p.payload_len = l4.len() as u16;
                Ok(())
            }
        };
        if let Err(reason) = parsed {
            p.l4 = L4::Malformed(reason);
        }
        p
    }
}

fn parse_tcp(l4: &[u8], p: &mut Packet) -> Result<(), InvalidReason> {
    if l4.len() < field::TCP_MIN_HEADER {
        return Err(InvalidReason::Truncated);
    }
    let data_off = usize::from(l4[field::TCP_DATA_OFF] >> 4) * 4;
    if data_off < field::TCP_MIN_HEADER {
        return Err(InvalidReason::Malformed);
    }
    let opts = l4
        .get(field::TCP_MIN_HEADER..data_off)
        .ok_or(InvalidReason::Truncated)?;
    let flags = l4[field::TCP_FLAGS];
    let get16 = |r| be16(l4, r).ok_or(InvalidReason::Truncated);
    let get32 = |r| be32(l4, r).ok_or(InvalidReason::Truncated);
    p.key.sport = get16(field::SRC_PORT)?;
    p.key.dport = get16(field::DST_PORT)?;
    p.l4 = L4::Tcp(TcpSegment {
        flags,
        seq: get32(field::TCP_SEQ)?,
        ack: get32(field::TCP_ACK)?,
        window: get16(field::TCP_WINDOW)?,
        // RFC 7323 §2.2: the option is only meaningful in SYN segments.
        wscale: if flags & TcpSegment::SYN != 0 {
            window_scale(opts)
        } else {
            None
        },
    });
    p.payload_len = (l4.len() - data_off) as u16;
    Ok(())
}

fn parse_udp(l4: &[u8], p: &mut Packet) -> Result<(), InvalidReason> {
    if l4.len() < field::UDP_HEADER {
        return Err(InvalidReason::Truncated);
    }
    let len = be16(l4, field::UDP_LEN).ok_or(InvalidReason::Truncated)?;
    p.key.sport = be16(l4, field::SRC_PORT).ok_or(InvalidReason::Truncated)?;
    p.key.dport = be16(l4, field::DST_PORT).ok_or(InvalidReason::Truncated)?;
    let len = usize::from(len);
    // RFC 768: the length covers header and data. A first fragment holds only part of it.
    if len < field::UDP_HEADER || (!p.fragment && len > l4.len()) {
        return Err(InvalidReason::Malformed);
    }
    p.l4 = L4::Udp;
    p.payload_len = (len.min(l4.len()) - field::UDP_HEADER) as u16;
    Ok(())
}

fn parse_icmp(l4: &[u8], p: &mut Packet) -> Result<(), InvalidReason> {
    if l4.len() < field::ICMP_HEADER {
        return Err(InvalidReason::Truncated);
    }
    let (ty, code) = (l4[field::ICMP_TYPE], l4[field::ICMP_CODE]);
    p.payload_len = (l4.len() - field::ICMP_HEADER) as u16;
    if let Some((request, _)) = icmp_query(ty) {
        p.key.sport = be16(l4, field::ICMP_ID).ok_or(InvalidReason::Truncated)?;
        p.key.dport = u16::from(request);
        p.l4 = L4::IcmpQuery { ty };
    } else if is_icmp_error(ty) {
        let quoted = parse_quoted(&l4[field::ICMP_HEADER..]).ok_or(InvalidReason::IcmpError)?;
        p.l4 = L4::IcmpError { ty, code, quoted };
    } else {
        p.l4 = L4::IcmpOther { ty, code };
    }
    Ok(())
}

/// The packet an ICMP error quotes: its IPv4 header and at least 8 bytes after it.
fn parse_quoted(inner: &[u8]) -> Option<Quoted> {
    let vihl = *inner.get(field::IP_VER_IHL)?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < field::IP_MIN_HEADER {
        return None;
    }
    // A quoted non-first fragment has no ports to match.
    if be16(inner, field::IP_FLAGS_FRAG)? & 0x1fff != 0 {
        return None;
    }
    let q4 = inner.get(ihl..)?;
    if q4.len() < field::QUOTED_L4 {
        return None;
    }
    let proto = *inner.get(field::IP_PROTOCOL)?;
    let mut q = Quoted {
        key: Key {
            proto,
            src: addr(inner, field::IP_SRC)?,
            dst: addr(inner, field::IP_DST)?,
            sport: 0,
            dport: 0,
        },
        icmp_reply: false,
        tcp_seq: 0,
    };
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            q.key.sport = be16(q4, field::SRC_PORT)?;
            q.key.dport = be16(q4, field::DST_PORT)?;
            if proto == IPPROTO_TCP {
                q.tcp_seq = be32(q4, field::TCP_SEQ)?;
            }
        }
        IPPROTO_ICMP => {
            // Only a query can be quoted: no error about an error (RFC 1122 §3.2.2).
            let (request, reply) = icmp_query(*q4.get(field::ICMP_TYPE)?)?;
            q.key.sport = be16(q4, field::ICMP_ID)?;
            q.key.dport = u16::from(request);
            q.icmp_reply = reply;
        }
        _ => {}
    }
    Some(q)
}

/// Why a packet is Invalid; each is one value of a metric label ([`InvalidReason::label`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum InvalidReason {
    /// A transport header cut short (also a first fragment too short to hold it,
    /// RFC 1858).
    Truncated,
    /// A TCP data offset below 5 words, a UDP length that does not fit, or a packet whose
    /// protocol does not match its connection's.
    Malformed,
    /// A non-first fragment, or any fragment of TCP: reassemble first.
    Fragment,
    /// An impossible TCP flag combination (SYN+FIN, SYN+RST, no flags, FIN without ACK...).
    TcpFlags,
    /// Nothing to belong to: TCP other than a SYN, an ICMP reply, an ICMP error quoting
    /// an untracked packet.
    NoConnection,
    /// A TCP segment the connection's state does not allow (an ACK or FIN before the
    /// SYN/ACK, a SYN/ACK from the opener, a SYN from the responder after the handshake).
    TcpState,
    /// A TCP segment outside the window (sequence or acknowledgment), or an ICMP error
    /// quoting a TCP sequence number outside it.
    OutOfWindow,
    /// An ICMP type that neither starts nor belongs to a connection.
    IcmpType,
    /// An ICMP error quoting too little, a fragment or an ICMP error, or sent to a host
    /// other than the quoted packet's source.
    IcmpError,
}

impl InvalidReason {
    /// How many reasons there are.
    pub const COUNT: usize = 9;

    /// Every reason, in label order.
    pub const ALL: [InvalidReason; Self::COUNT] = [
        InvalidReason::Truncated,
        InvalidReason::Malformed,
        InvalidReason::Fragment,
        InvalidReason::TcpFlags,
        InvalidReason::NoConnection,
        InvalidReason::TcpState,
        InvalidReason::OutOfWindow,
        InvalidReason::IcmpType,
        InvalidReason::IcmpError,
    ];

    /// The metric label value.
    pub const fn label(self) -> &'static str {
        match self {
            InvalidReason::Truncated => "truncated",
            InvalidReason::Malformed => "malformed",
            InvalidReason::Fragment => "fragment",
            InvalidReason::TcpFlags => "tcp_flags",
            InvalidReason::NoConnection => "no_connection",
            InvalidReason::TcpState => "tcp_state",
            InvalidReason::OutOfWindow => "out_of_window",
            InvalidReason::IcmpType => "icmp_type",
            InvalidReason::IcmpError => "icmp_error",
        }
    }
}

/// What a packet is to the rules (Linux `ctstate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CtState {
    /// Starts a connection, or goes the original way on one that has seen no reply.
    New,
    /// Belongs to a connection that has seen packets both ways.
    Established,
    /// An ICMP error about a tracked connection.
    Related,
    /// Belongs nowhere or breaks the protocol; why.
    Invalid(InvalidReason),
}

/// The TCP states (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TcpState {
    /// The opener's SYN seen.
    SynSent = 1,
    /// SYNs both ways (simultaneous open).
    SynSent2 = 2,
    /// The SYN/ACK seen.
    SynRecv = 3,
    /// The handshake completed.
    Established = 4,
    /// One side sent FIN, not yet acknowledged.
    FinWait = 5,
    /// One side's FIN acknowledged; the other side may still send.
    CloseWait = 6,
    /// FINs both ways, not both acknowledged.
    LastAck = 7,
    /// FINs both ways, both acknowledged.
    TimeWait = 8,
    /// Reset.
    Close = 9,
}

impl TcpState {
    const fn from_code(code: u8) -> Option<TcpState> {
        Some(match code {
            1 => TcpState::SynSent,
            2 => TcpState::SynSent2,
            3 => TcpState::SynRecv,
            4 => TcpState::Established,
            5 => TcpState::FinWait,
            6 => TcpState::CloseWait,
            7 => TcpState::LastAck,
            8 => TcpState::TimeWait,
            9 => TcpState::Close,
            _ => return None,
        })
    }
}

/// Entry state codes: 0 free, 1..=9 [`TcpState`], then the pseudo-connection states.
const S_FREE: u8 = 0;
const S_UNREPLIED: u8 = 10;
const S_REPLIED: u8 = 11;
const S_ASSURED: u8 = 12;

/// A connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnState {
    /// TCP.
    Tcp(TcpState),
    /// UDP, ICMP or another protocol: nothing seen the reply way yet.
    Unreplied,
    /// Seen both ways, not (yet) a stream.
    Replied,
    /// Seen both ways and active beyond its first 2 s (UDP and other protocols).
    Assured,
}

impl ConnState {
    /// How many states there are.
    pub const COUNT: usize = 12;

    /// Every state, in label order (the order of [`CtStats::by_state`]).
    pub const ALL: [ConnState; Self::COUNT] = [
        ConnState::Tcp(TcpState::SynSent),
        ConnState::Tcp(TcpState::SynSent2),
        ConnState::Tcp(TcpState::SynRecv),
        ConnState::Tcp(TcpState::Established),
        ConnState::Tcp(TcpState::FinWait),
        ConnState::Tcp(TcpState::CloseWait),
        ConnState::Tcp(TcpState::LastAck),
        ConnState::Tcp(TcpState::TimeWait),
        ConnState::Tcp(TcpState::Close),
        ConnState::Unreplied,
        ConnState::Replied,
        ConnState::Assured,
    ];

    /// The metric label value.
    pub const fn label(self) -> &'static str {
        match self {
            ConnState::Tcp(TcpState::SynSent) => "syn_sent",
            ConnState::Tcp(TcpState::SynSent2) => "syn_sent2",
            ConnState::Tcp(TcpState::SynRecv) => "syn_recv",
            ConnState::Tcp(TcpState::Established) => "established",
            ConnState::Tcp(TcpState::FinWait) => "fin_wait",
            ConnState::Tcp(TcpState::CloseWait) => "close_wait",
            ConnState::Tcp(TcpState::LastAck) => "last_ack",
            ConnState::Tcp(TcpState::TimeWait) => "time_wait",
            ConnState::Tcp(TcpState::Close) => "close",
            ConnState::Unreplied => "unreplied",
            ConnState::Replied => "replied",
            ConnState::Assured => "assured",
        }
    }

    /// Its position in [`ConnState::ALL`].
    pub const fn index(self) -> usize {
        self.code() as usize - 1
    }

    const fn code(self) -> u8 {
        match self {
            ConnState::Tcp(t) => t as u8,
            ConnState::Unreplied => S_UNREPLIED,
            ConnState::Replied => S_REPLIED,
            ConnState::Assured => S_ASSURED,
        }
    }

    const fn from_code(code: u8) -> ConnState {
        match TcpState::from_code(code) {
            Some(t) => ConnState::Tcp(t),
            None => match code {
                S_REPLIED => ConnState::Replied,
                S_ASSURED => ConnState::Assured,
                _ => ConnState::Unreplied,
            },
        }
    }
}

/// Timeouts by protocol and state. Whole seconds count; a connection goes at most about a
/// second after its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP `SynSent` and `SynSent2` (Linux: 120 s); also a connection picked up mid-stream
    /// until the other side answers.
    pub tcp_syn_sent: Duration,
    /// TCP `SynRecv` (Linux: 60 s).
    pub tcp_syn_recv: Duration,
    /// TCP `Established` (Linux: 5 days; here RFC 5382 REQ-5's 2 h 4 min).
    pub tcp_established: Duration,
    /// TCP `FinWait` (Linux: 120 s).
    pub tcp_fin_wait: Duration,
    /// TCP `CloseWait` (Linux: 60 s).
    pub tcp_close_wait: Duration,
    /// TCP `LastAck` (Linux: 30 s).
    pub tcp_last_ack: Duration,
    /// TCP `TimeWait` (Linux: 120 s, 2 MSL).
    pub tcp_time_wait: Duration,
    /// TCP `Close`, after a RST (Linux: 10 s).
    pub tcp_close: Duration,
    /// UDP unreplied or replied but not a stream (Linux: 30 s).
    pub udp_unreplied: Duration,
    /// UDP assured (Linux: 120 s since 5.8, 180 s before).
    pub udp_assured: Duration,
    /// ICMP queries (Linux: 30 s).
    pub icmp: Duration,
    /// Other protocols (Linux generic: 600 s).
    pub other: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_syn_sent: Duration::from_secs(120),
            tcp_syn_recv: Duration::from_secs(60),
            tcp_established: Duration::from_secs(7440),
            tcp_fin_wait: Duration::from_secs(120),
            tcp_close_wait: Duration::from_secs(60),
            tcp_last_ack: Duration::from_secs(30),
            tcp_time_wait: Duration::from_secs(120),
            tcp_close: Duration::from_secs(10),
            udp_unreplied: Duration::from_secs(30),
            udp_assured: Duration::from_secs(180),
            icmp: Duration::from_secs(30),
            other: Duration::from_secs(600),
        }
    }
}

/// Caps, timeouts and pickup of a [`Conntrack`]; may change on reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtConfig {
    /// Connections in the whole table (at most 2^24 - 1).
    pub max_conns: usize,
    /// Connections of one zone.
    pub max_conns_per_zone: usize,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Let a TCP ACK without a connection start one (mid-stream pickup; Linux
    /// `nf_conntrack_tcp_loose`). Off: only a SYN starts a connection.
    pub loose: bool,
    /// Wheel entries [`Conntrack::expire`] examines per call, at least 1.
    pub expire_budget: usize,
}

impl Default for CtConfig {
    fn default() -> Self {
        Self {
            max_conns: 1 << 20,
            max_conns_per_zone: 1 << 20,
            timeouts: Timeouts::default(),
            loose: false,
            expire_budget: 4096,
        }
    }
}

/// Why [`Conntrack::commit`] created no connection. The caller counts (they are also in
/// [`CtStats`]) and drops the packet; the table is unchanged but for early drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CtError {
    /// the packet cannot start a connection
    #[error("the packet cannot start a connection")]
    NotNew,
    /// the zone's connection cap is reached and none of its connections can go early
    #[error("the zone's connection cap is reached and none of its connections can go early")]
    ZoneFull,
    /// the connection table is full and no connection can go early
    #[error("the connection table is full and no connection can go early")]
    TableFull,
}

/// A handle on a connection; stale handles are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

/// What [`Conntrack::lookup`] says of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The state for the rules.
    pub state: CtState,
    /// The connection it belongs to (also given for an Invalid packet of a connection).
    pub conn: Option<ConnId>,
    /// Which way it goes on that connection (`Original` when there is none).
    pub dir: Direction,
}

/// One connection, for listing and [`Conntrack::retain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    /// Its handle.
    pub id: ConnId,
    /// The key of its original direction.
    pub key: Key,
    /// State.
    pub state: ConnState,
    /// Completed (TCP handshake, UDP stream): never dropped early while not closing.
    pub assured: bool,
    /// The zone it counts against.
    pub zone: u32,
    /// The tag given to [`Conntrack::commit`] (the accepting rule).
    pub tag: u32,
    /// Packets original way, reply way (48-bit, wrapping).
    pub packets: [u64; 2],
    /// IP bytes original way, reply way (48-bit, wrapping).
    pub bytes: [u64; 2],
    /// Since it was created (whole seconds).
    pub age: Duration,
    /// Until its timeout, if nothing more is seen (whole seconds).
    pub expires_in: Duration,
}

/// Counters of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtStats {
    /// Live connections.
    pub connections: usize,
    /// Live connections per state, in [`ConnState::ALL`] order.
    pub by_state: [usize; ConnState::COUNT],
    /// Connections created, ever.
    pub created: u64,
    /// Connections removed by expiry, ever.
    pub expired: u64,
    /// Connections dropped early to make room, ever.
    pub early_drops: u64,
    /// Connections removed by [`Conntrack::retain`] or [`Conntrack::remove`], ever.
    pub removed: u64,
    /// TCP connections in `TimeWait` or `Close` removed by a new SYN, ever.
    pub reopened: u64,
    /// Commits refused for [`CtError::TableFull`], ever.
    pub refused_table_full: u64,
    /// Commits refused for [`CtError::ZoneFull`], ever.
    pub refused_zone_full: u64,
    /// Invalid packets per reason, in [`InvalidReason::ALL`] order, ever.
    pub invalid: [u64; InvalidReason::COUNT],
}

impl CtStats {
    /// Live connections in a state.
    pub const fn state(&self, s: ConnState) -> usize {
        self.by_state[s.index()]
    }

    /// Invalid packets for a reason.
    pub const fn invalid_for(&self, r: InvalidReason) -> u64 {
        self.invalid[r as usize]
    }
}

/// A 48-bit counter in three 16-bit words: 2 bytes fewer than a `u64` and no 8-byte
/// alignment; 281 TB before it wraps.
#[derive(Debug, Clone, Copy, Default)]
struct Counter48([u16; 3]);

impl Counter48 {
    const ZERO: Counter48 = Counter48([0; 3]);

    fn get(self) -> u64 {
        u64::from(self.0[0]) | u64::from(self.0[1]) << 16 | u64::from(self.0[2]) << 32
    }

    fn add(&mut self, n: u64) {
        let v = self.get().wrapping_add(n) & MASK48;
        self.0 = [v as u16, (v >> 16) as u16, (v >> 32) as u16];
    }
}

/// Links of a doubly linked list threaded through the entries.
#[derive(Debug, Clone, Copy)]
struct Link {
    next: u32,
    prev: u32,
}

impl Link {
    const NIL: Link = Link {
        next: NIL,
        prev: NIL,
    };
}

/// Head and tail of a list of entries.
#[derive(Debug, Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
    };
}

/// Window tracking of one side of a TCP connection (Linux `ip_ct_tcp_state`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct TcpSide {
    /// Highest sequence number sent, plus one (data, SYN and FIN count).
    end: u32,
    /// Highest sequence number the peer allowed: its ack plus its window.
    maxend: u32,
    /// Largest window this side advertised, scaled; 0: nothing seen from this side yet.
    maxwin: u32,
}

/// Per-side TCP flags.
const TF_WSCALE: u8 = 1;
/// Skip the window checks (picked up mid-stream: the scale is unknown).
const TF_LIBERAL: u8 = 2;
const TF_FIN: u8 = 4;
const TF_FIN_ACKED: u8 = 8;
/// (Reply side, before it sent anything) an ACK answered the opener's SYN; its
/// acknowledgment number is kept in that side's unused `maxend`.
const TF_CHALLENGE: u8 = 16;

/// Entry flags.
const E_REPLIED: u8 = 1;
const E_ASSURED: u8 = 2;
/// On the early-drop lists.
const E_LISTED: u8 = 4;

/// One slot of the slab: a connection, or a free slot (state `S_FREE`, on the free list
/// through `wheel.next`).
#[derive(Debug, Clone, Copy)]
struct Entry {
    generation: u32,
    zone: u32,
    tag: u32,
    /// Seconds since the table's origin.
    created: u32,
    last_seen: u32,
    wheel: Link,
    drop_all: Link,
    drop_zone: Link,
    tcp: [TcpSide; 2],
    packets: [Counter48; 2],
    bytes: [Counter48; 2],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    proto: u8,
    state: u8,
    flags: u8,
    tcp_scale: [u8; 2],
    tcp_flags: [u8; 2],
}

impl Entry {
    const FREE: Entry = Entry {
        generation: 0,
        zone: 0,
        tag: 0,
        created: 0,
        last_seen: 0,
        wheel: Link::NIL,
        drop_all: Link::NIL,
        drop_zone: Link::NIL,
        tcp: [TcpSide {
            end: 0,
            maxend: 0,
            maxwin: 0,
        }; 2],
        packets: [Counter48::ZERO; 2],
        bytes: [Counter48::ZERO; 2],
        src: Ipv4Addr::UNSPECIFIED,
        dst: Ipv4Addr::UNSPECIFIED,
        sport: 0,
        dport: 0,
        proto: 0,
        state: S_FREE,
        flags: 0,
        tcp_scale: [0; 2],
        tcp_flags: [0; 2],
    };

    const fn key(&self) -> Key {
        Key {
            proto: self.proto,
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport: self.dport,
        }
    }

    const fn is_live(&self) -> bool {
        self.state != S_FREE
    }

    /// Early-drop candidate: never completed, or closing for good.
    const fn evictable(&self) -> bool {
        self.flags & E_ASSURED == 0
            || matches!(
                TcpState::from_code(self.state),
                Some(TcpState::LastAck | TcpState::TimeWait | TcpState::Close)
            )
    }
}

fn all_link(e: &mut Entry) -> &mut Link {
    &mut e.drop_all
}

fn zone_link(e: &mut Entry) -> &mut Link {
    &mut e.drop_zone
}

/// Entries in chunks that never move: no copy of the table when it grows, and at most one
/// chunk's worth of unused slots.
#[derive(Debug, Default)]
struct Slab {
    chunks: Vec<Box<[Entry]>>,
    /// Slots handed out so far (live or free).
    used: u32,
    /// Free list head.
    free: u32,
}

impl Slab {
    fn get(&self, i: u32) -> &Entry {
        &self.chunks[(i >> CHUNK_BITS) as usize][i as usize & (CHUNK - 1)]
    }

    fn get_mut(&mut self, i: u32) -> &mut Entry {
        &mut self.chunks[(i >> CHUNK_BITS) as usize][i as usize & (CHUNK - 1)]
    }

    /// A live entry by a caller's handle.
    fn by_id(&self, id: ConnId) -> Option<&Entry> {
        if id.index >= self.used {
            return None;
        }
        let e = self.get(id.index);
        (e.is_live() && e.generation == id.generation).then_some(e)
    }

    fn alloc(&mut self) -> Option<u32> {
        if self.free != NIL {
            let i = self.free;
            self.free = self.get(i).wheel.next;
            return Some(i);
        }
        if self.used >= MAX_ENTRIES {
            return None;
        }
        let i = self.used;
        if (i >> CHUNK_BITS) as usize >= self.chunks.len() {
            self.chunks
                .push(vec![Entry::FREE; CHUNK].into_boxed_slice());
        }
        self.used += 1;
        Some(i)
    }

    fn release(&mut self, i: u32) {
        let free = self.free;
        let e = self.get_mut(i);
        *e = Entry {
            generation: e.generation.wrapping_add(1),
            ..Entry::FREE
        };
        e.wheel.next = free;
        self.free = i;
    }
}

fn list_push(slab: &mut Slab, list: &mut List, i: u32, link: fn(&mut Entry) -> &mut Link) {
    let tail = list.tail;
    *link(slab.get_mut(i)) = Link {
        next: NIL,
        prev: tail,
    };
    if tail == NIL {
        list.head = i;
    } else {
        link(slab.get_mut(tail)).next = i;
    }
    list.tail = i;
}

fn list_unlink(slab: &mut Slab, list: &mut List, i: u32, link: fn(&mut Entry) -> &mut Link) {
    let Link { next, prev } = *link(slab.get_mut(i));
    if prev == NIL {
        list.head = next;
    } else {
        link(slab.get_mut(prev)).next = next;
    }
    if next == NIL {
        list.tail = prev;
    } else {
        link(slab.get_mut(next)).prev = prev;
    }
    *link(slab.get_mut(i)) = Link::NIL;
}

/// Slab indices by key hash: open addressing with linear probing, at most 3/4 full. A bucket
/// is a slab index under the top 8 bits of the key's hash, so a probe reads an entry that
/// does not match only once in 256 collisions. Removal shifts the following buckets back
/// (Knuth, TAOCP vol. 3 §6.4, Algorithm R) instead of leaving a tombstone, so churn never
/// makes the index grow: it stays 3/8 to 3/4 full, 4 bytes a bucket. (A hashbrown table
/// of `u32` under the churn of a SYN flood doubles once its tombstones use up its room,
/// and then holds 5 bytes a bucket at 7/32 to 7/16 full: up to 23 bytes a connection.)
#[derive(Debug, Default)]
struct Index {
    buckets: Box<[u32]>,
    len: usize,
}

impl Index {
    const fn tag(hash: u64) -> u32 {
        ((hash >> 56) as u32) << SLOT_BITS
    }

    /// The slot whose bucket has `hash`'s tag and that `eq` accepts.
    fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.buckets.is_empty() {
            return None;
        }
        let mask = self.buckets.len() - 1;
        let tag = Self::tag(hash);
        let mut pos = hash as usize & mask;
        loop {
            let b = self.buckets[pos];
            if b == EMPTY {
                return None;
            }
            if b & !SLOT_MASK == tag && eq(b & SLOT_MASK) {
                return Some(b & SLOT_MASK);
            }
            pos = (pos + 1) & mask;
        }
    }

    /// Add `slot` (not present) under `hash`; `rehash` gives the hash of a slot already in,
    /// for when the index doubles.
    fn insert(&mut self, hash: u64, slot: u32, rehash: impl Fn(u32) -> u64) {
        if (self.len + 1) * 4 > self.buckets.len() * 3 {
            let n = (self.buckets.len() * 2).max(MIN_BUCKETS);
            let old = std::mem::replace(&mut self.buckets, vec![EMPTY; n].into_boxed_slice());
            for &b in old.iter().filter(|&&b| b != EMPTY) {
                self.place(rehash(b & SLOT_MASK), b & SLOT_MASK);
            }
        }
        self.place(hash, slot);
        self.len += 1;
    }

    fn place(&mut self, hash: u64, slot: u32) {
        let mask = self.buckets.len() - 1;
        let mut pos = hash as usize & mask;
        while self.buckets[pos] != EMPTY {
            pos = (pos + 1) & mask;
        }
        self.buckets[pos] = Self::tag(hash) | slot;
    }

    /// Remove `slot`, inserted under `hash`; `rehash` gives the hash of the slots after it
    /// that may move back. Returns whether it was there.
    fn remove(&mut self, hash: u64, slot: u32, rehash: impl Fn(u32) -> u64) -> bool {
        if self.buckets.is_empty() {
            return false;
        }
        let mask = self.buckets.len() - 1;
        let want = Self::tag(hash) | slot;
        let mut hole = hash as usize & mask;
        loop {
            match self.buckets[hole] {
                EMPTY => return false,
                b if b == want => break,
                _ => hole = (hole + 1) & mask,
            }
        }
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let b = self.buckets[j];
            if b == EMPTY {
                break;
            }
            // `b` may fill the hole if the hole lies on its probe path, from its home
            // bucket to `j`.
            let home = rehash(b & SLOT_MASK) as usize & mask;
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.buckets[hole] = b;
                hole = j;
            }
        }
        self.buckets[hole] = EMPTY;
        self.len -= 1;
        true
    }

    const fn memory_bytes(&self) -> usize {
        self.buckets.len() * size_of::<u32>()
    }
}

/// The timing wheel: one list head per second.
#[derive(Debug)]
struct Wheel {
    heads: Box<[u32]>,
    /// The next tick `expire` processes.
    tick: u32,
}

impl Wheel {
    /// File entry `i` at `tick`, clamped to the turn ahead of the cursor.
    fn link(&mut self, slab: &mut Slab, i: u32, tick: u32) {
        let tick = tick.clamp(self.tick, self.tick.saturating_add(WHEEL_SLOTS - 1));
        let slot = tick % WHEEL_SLOTS;
        let head = self.heads[slot as usize];
        slab.get_mut(i).wheel = Link {
            next: head,
            prev: WHEEL_HEAD | slot,
        };
        if head != NIL {
            slab.get_mut(head).wheel.prev = i;
        }
        self.heads[slot as usize] = i;
    }

    fn unlink(&mut self, slab: &mut Slab, i: u32) {
        let Link { next, prev } = slab.get(i).wheel;
        if prev & WHEEL_HEAD != 0 {
            self.heads[(prev & !WHEEL_HEAD) as usize % WHEEL_SLOTS as usize] = next;
        } else {
            slab.get_mut(prev).wheel.next = next;
        }
        if next != NIL {
            slab.get_mut(next).wheel.prev = prev;
        }
    }
}

/// A zone's count and its early-drop candidates.
#[derive(Debug, Clone, Copy)]
struct Zone {
    conns: u32,
    drop: List,
}

/// TCP segment classes after the flag check (Linux `get_conntrack_index`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seg {
    Syn,
    SynAck,
    Fin,
    Ack,
    Rst,
}

/// Linux `tcp_valid_flags`: PSH, ECE and CWR do not matter; every other combination is
/// impossible.
const fn seg_class(flags: u8) -> Option<Seg> {
    const SYN: u8 = TcpSegment::SYN;
    const ACK: u8 = TcpSegment::ACK;
    const FIN: u8 = TcpSegment::FIN;
    const RST: u8 = TcpSegment::RST;
    const URG: u8 = TcpSegment::URG;
    let f = flags & (FIN | SYN | RST | ACK | URG);
    if f == SYN || f == SYN | URG {
        Some(Seg::Syn)
    } else if f == SYN | ACK {
        Some(Seg::SynAck)
    } else if f == RST || f == RST | ACK {
        Some(Seg::Rst)
    } else if f == FIN | ACK || f == FIN | ACK | URG {
        Some(Seg::Fin)
    } else if f == ACK || f == ACK | URG {
        Some(Seg::Ack)
    } else {
        None
    }
}

/// What a segment does to a connection before its window is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Invalid,
    /// Passes without changing anything (Linux `sIG`).
    Ignore,
    /// A new SYN on a finished connection: remove it, the SYN is New.
    Reopen,
    /// Check the window, then update.
    Track,
}

/// The transition table, after Linux `tcp_conntracks` (comments there explain each cell).
fn tcp_step(state: TcpState, dir: Direction, seg: Seg) -> Step {
    use Direction::{Original, Reply};
    use TcpState::*;
    match (dir, seg, state) {
        (_, Seg::Rst, _) => Step::Track,
        // A retransmitted SYN, or the opener answering the responder's SYN.
        (Original, Seg::Syn, SynSent | SynSent2) => Step::Track,
        (Original, Seg::Syn, TimeWait | Close) => Step::Reopen,
        // Out of sync or a stale connection: let the peer send its challenge ACK.
        (Original, Seg::Syn, _) => Step::Ignore,
        // Simultaneous open: the responder's own SYN.
        (Reply, Seg::Syn, SynSent | SynSent2) => Step::Track,
        (Reply, Seg::Syn, TimeWait) => Step::Reopen,
        (Reply, Seg::Syn, _) => Step::Invalid,
        (Original, Seg::SynAck, SynSent2 | SynRecv) => Step::Track,
        (Original, Seg::SynAck, _) => Step::Invalid,
        (Reply, Seg::SynAck, SynSent | SynSent2) => Step::Track,
        // A retransmitted or late SYN/ACK.
        (Reply, Seg::SynAck, _) => Step::Ignore,
        // Nothing but a SYN/ACK may answer a SYN; the opener waits for it.
        (_, Seg::Fin, SynSent | SynSent2) | (Original, Seg::Ack, SynSent | SynSent2) => {
            Step::Invalid
        }
        // A half-open peer, or a challenge ACK (RFC 5961 §4): the opener will RST.
        (Reply, Seg::Ack, SynSent | SynSent2) => Step::Ignore,
        (_, Seg::Fin | Seg::Ack, _) => Step::Track,
    }
}

/// `a` comes before `b` in sequence space (RFC 9293 §3.4, modulo 2^32).
const fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

const fn after(a: u32, b: u32) -> bool {
    before(b, a)
}

/// The TCP tracking state of both sides, copied out of an entry for one segment and
/// written back only if the segment passes.
#[derive(Debug, Clone, Copy, Default)]
struct Windows {
    side: [TcpSide; 2],
    scale: [u8; 2],
    flags: [u8; 2],
}

impl Windows {
    const fn of(e: &Entry) -> Windows {
        Windows {
            side: e.tcp,
            scale: e.tcp_scale,
            flags: e.tcp_flags,
        }
    }

    /// A side's first (or renewed) SYN: its window is not scaled (RFC 7323 §2.2).
    fn init_sender(&mut self, s: usize, seg: &TcpSegment, end: u32) {
        let r = 1 - s;
        self.side[s] = TcpSide {
            end,
            maxend: end,
            maxwin: u32::from(seg.window).max(1),
        };
        match seg.wscale {
            Some(shift) => {
                self.flags[s] |= TF_WSCALE;
                self.scale[s] = shift.min(MAX_WSCALE);
            }
            None => {
                self.flags[s] &= !TF_WSCALE;
                self.scale[s] = 0;
            }
        }
        // RFC 7323 §2.2: scaling is on in either direction only if both SYNs carried the
        // option; decided once the peer's SYN is seen.
        if self.side[r].maxwin != 0 && self.flags[s] & self.flags[r] & TF_WSCALE == 0 {
            self.scale = [0, 0];
        }
    }

    /// Linux `tcp_in_window`, simplified: initialise the sender if this is its first
    /// segment, check the four bounds, then advance `end`, `maxend` and `maxwin`.
    /// Returns whether the segment is acceptable.
    fn in_window(
        &mut self,
        s: usize,
        seg: &TcpSegment,
        payload: u16,
        class: Seg,
        state: TcpState,
    ) -> bool {
        let r = 1 - s;
        let syn = matches!(class, Seg::Syn | Seg::SynAck);
        let rst = class == Seg::Rst;
        let has_ack = seg.flags & TcpSegment::ACK != 0;
        let mut seq = seg.seq;
        // SYN and FIN each take a sequence number (RFC 9293 §3.4).
        let mut end = seq
            .wrapping_add(u32::from(payload))
            .wrapping_add(u32::from(syn))
            .wrapping_add(u32::from(class == Seg::Fin));
        let raw_win = u32::from(seg.window);
        if self.side[s].maxwin == 0 {
            if syn {
                self.init_sender(s, seg, end);
                if !has_ack {
                    return true; // the responder's SYN in a simultaneous open
                }
            } else {
                // The first segment of this side without a SYN: a RST answering the SYN,
                // or the answer to a connection picked up mid-stream.
                let win = (raw_win << self.scale[s]).max(1);
                self.side[s] = TcpSide {
                    end,
                    maxend: end.wrapping_add(win),
                    maxwin: win,
                };
                if self.side[r].maxwin == 0 {
                    self.side[r].end = seg.ack;
                    self.side[r].maxend = seg.ack;
                }
            }
        } else if syn
            && after(end, self.side[s].end)
            && matches!(
                state,
                TcpState::SynSent | TcpState::SynSent2 | TcpState::SynRecv
            )
        {
            // A SYN with a later initial sequence number: the sender started again
            // (RFC 9293 §3.4.1 lets it, with larger sequence numbers).
            self.init_sender(s, seg, end);
            if s == 1 && !has_ack {
                return true;
            }
        }
        // No ACK, or a RST+ACK with ack 0 (broken stacks): nothing acknowledged.
        let ack = if !has_ack || (rst && seg.ack == 0) {
            self.side[r].end
        } else {
            seg.ack
        };
        if rst && seq == 0 && state == TcpState::SynSent {
            // RFC 9293 §3.10.7.1: a RST answering a SYN may carry sequence number 0.
            seq = self.side[s].end;
            end = seq;
        }
        let (sd, rv) = (self.side[s], self.side[r]);
        let ack_span = sd.maxwin.max(MIN_ACK_WINDOW);
        let ok = !after(seq, sd.maxend)
            && (rv.maxwin == 0 || after(end, sd.end.wrapping_sub(rv.maxwin).wrapping_sub(1)))
            && !after(ack, rv.end)
            && after(ack, rv.end.wrapping_sub(ack_span).wrapping_sub(1));
        if !ok && (self.flags[s] | self.flags[r]) & TF_LIBERAL == 0 {
            return false;
        }
        let win = if syn {
            raw_win
        } else {
            raw_win << self.scale[s]
        };
        let sender = &mut self.side[s];
        sender.maxwin = sender.maxwin.max(win);
        if after(end, sender.end) {
            sender.end = end;
        }
        let sender_maxend = sender.maxend;
        let receiver = &mut self.side[r];
        if receiver.maxwin != 0 && after(end, sender_maxend) {
            // The sender went past what was allowed (liberal): widen what we assume.
            receiver.maxwin = receiver
                .maxwin
                .wrapping_add(end.wrapping_sub(sender_maxend));
        }
        if after(ack.wrapping_add(win), receiver.maxend.wrapping_sub(1)) {
            // A zero window still admits a one-byte probe (RFC 9293 §3.8.6.1).
            receiver.maxend = ack.wrapping_add(win).wrapping_add(u32::from(win == 0));
        }
        if class == Seg::Fin {
            self.flags[s] |= TF_FIN;
        }
        if has_ack && self.flags[r] & TF_FIN != 0 && !before(ack, self.side[r].end) {
            self.flags[r] |= TF_FIN_ACKED;
        }
        true
    }

    /// The state once the handshake is over: from the FINs each side sent and had
    /// acknowledged (RFC 9293 §3.6).
    fn closing(&self) -> TcpState {
        let fin = |s: usize| self.flags[s] & TF_FIN != 0;
        let acked = |s: usize| self.flags[s] & TF_FIN_ACKED != 0;
        match (fin(0), fin(1)) {
            (false, false) => TcpState::Established,
            (true, true) if acked(0) && acked(1) => TcpState::TimeWait,
            (true, true) => TcpState::LastAck,
            (first, _) => {
                if acked(if first { 0 } else { 1 }) {
                    TcpState::CloseWait
                } else {
                    TcpState::FinWait
                }
            }
        }
    }
}

const fn side(d: Direction) -> usize {
    match d {
        Direction::Original => 0,
        Direction::Reply => 1,
    }
}

const fn opposite(d: Direction) -> Direction {
    match d {
        Direction::Original => Direction::Reply,
        Direction::Reply => Direction::Original,
    }
}

/// A key to look up: ICMP queries match one orientation only, the others both.
#[derive(Debug, Clone, Copy)]
struct Probe {
    /// The key as stored: for ICMP, oriented from the requester.
    key: Key,
    hash: u64,
    /// ICMP: the direction the packet goes (requests the original way).
    exact: Option<Direction>,
}

/// The same hash for both directions of a connection, so one index entry serves both.
fn key_hash(hasher: &foldhash::fast::RandomState, k: &Key) -> u64 {
    let a = u64::from(u32::from(k.src)) << 16 | u64::from(k.sport);
    let b = u64::from(u32::from(k.dst)) << 16 | u64::from(k.dport);
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    hasher.hash_one(u128::from(hi) << 64 | u128::from(lo | u64::from(k.proto) << 48))
}

fn secs(d: Duration) -> u32 {
    d.as_secs().min(u64::from(u32::MAX / 4)) as u32
}

fn timeout_secs(t: &Timeouts, e: &Entry) -> u32 {
    let d = match TcpState::from_code(e.state) {
        Some(TcpState::SynSent | TcpState::SynSent2) => t.tcp_syn_sent,
        Some(TcpState::SynRecv) => t.tcp_syn_recv,
        Some(TcpState::Established) if e.flags & E_ASSURED != 0 => t.tcp_established,
        // Picked up mid-stream and never answered: no longer than an unanswered SYN.
        Some(TcpState::Established) => t.tcp_syn_sent,
        Some(TcpState::FinWait) => t.tcp_fin_wait,
        Some(TcpState::CloseWait) => t.tcp_close_wait,
        Some(TcpState::LastAck) => t.tcp_last_ack,
        Some(TcpState::TimeWait) => t.tcp_time_wait,
        Some(TcpState::Close) => t.tcp_close,
        None => match (e.proto, e.state) {
            (IPPROTO_ICMP, _) => t.icmp,
            (IPPROTO_UDP, S_ASSURED) => t.udp_assured,
            (IPPROTO_UDP, _) => t.udp_unreplied,
            _ => t.other,
        },
    };
    secs(d)
}

/// How a new connection starts.
#[derive(Debug, Clone, Copy)]
struct Init {
    state: u8,
    w: Windows,
    icmp: Option<Direction>,
}

/// Connection tracking state: connections indexed by their direction-independent key,
/// per-zone caps with early drop, and expiry on a timing wheel.
pub struct Conntrack {
    cfg: CtConfig,
    slab: Slab,
    /// Slab indices, hashed by [`key_hash`].
    index: Index,
    hasher: foldhash::fast::RandomState,
    zones: Map<u32, Zone>,
    /// Early-drop candidates of every zone, oldest first.
    drop_all: List,
    wheel: Wheel,
    origin: Option<Instant>,
    /// Whether the last `expire` stopped on its budget before catching up.
    behind: bool,
    stats: CtStats,
}

impl fmt::Debug for Conntrack {
    // The entries would drown any log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conntrack")
            .field("cfg", &self.cfg)
            .field("stats", &self.stats)
            .field("zones", &self.zones.len())
            .field("memory_bytes", &self.memory_bytes())
            .finish()
    }
}

impl Conntrack {
    /// An empty table.
    pub fn new(cfg: CtConfig) -> Self {
        Self {
            cfg,
            slab: Slab {
                free: NIL,
                ..Slab::default()
            },
            index: Index::default(),
            hasher: foldhash::fast::RandomState::default(),
            zones: Map::default(),
            drop_all: List::EMPTY,
            wheel: Wheel {
                heads: vec![NIL; WHEEL_SLOTS as usize].into_boxed_slice(),
                tick: 0,
            },
            origin: None,
            behind: false,
            stats: CtStats::default(),
        }
    }

    /// Replace caps, timeouts and pickup (reload); connections are kept, even over a
    /// lowered cap (later commits drop candidates, up to 8 each). A shortened timeout
    /// applies when a connection's wheel entry comes up, at the latest after the old one.
    pub fn set_config(&mut self, cfg: CtConfig) {
        self.cfg = cfg;
    }

    /// The current config.
    pub const fn config(&self) -> &CtConfig {
        &self.cfg
    }

    /// Live connections.
    pub const fn len(&self) -> usize {
        self.stats.connections
    }

    /// Whether there are none.
    pub const fn is_empty(&self) -> bool {
        self.stats.connections == 0
    }

    /// Live connections of a zone.
    pub fn zone_len(&self, zone: u32) -> usize {
        self.zones.get(&zone).map_or(0, |z| z.conns as usize)
    }

    /// Counters.
    pub const fn stats(&self) -> &CtStats {
        &self.stats
    }

    /// Bytes the table holds: entries (whole chunks), index, wheel and zones.
    pub fn memory_bytes(&self) -> usize {
        size_of::<Self>()
            + self.slab.chunks.len() * CHUNK * size_of::<Entry>()
            + self.slab.chunks.capacity() * size_of::<Box<[Entry]>>()
            + self.index.memory_bytes()
            + self.wheel.heads.len() * size_of::<u32>()
            + self.zones.allocation_size()
    }

    /// Classify a packet and update the connection it belongs to (state, timer, counters).
    /// Invalid packets change nothing but [`CtStats::invalid`].
    pub fn lookup(&mut self, pkt: &Packet, now: Instant) -> Verdict {
        let now_s = self.secs(now);
        match pkt.l4 {
            // No transport header, or (TCP) no segment length until reassembled.
            L4::Fragment => self.invalid(InvalidReason::Fragment, None, Direction::Original),
            L4::Tcp(_) if pkt.fragment => {
                self.invalid(InvalidReason::Fragment, None, Direction::Original)
            }
            L4::Malformed(reason) => self.invalid(reason, None, Direction::Original),
            L4::IcmpOther { .. } => {
                self.invalid(InvalidReason::IcmpType, None, Direction::Original)
            }
            L4::IcmpError { quoted, .. } => self.related(pkt, &quoted),
            L4::Tcp(seg) => {
                let Some(class) = seg_class(seg.flags) else {
                    return self.invalid(InvalidReason::TcpFlags, None, Direction::Original);
                };
                let probe = self.probe(pkt.key, None);
                match self.find(&probe) {
                    Some((i, dir)) => self.track_tcp(i, dir, &seg, class, pkt, now_s),
                    None if class == Seg::Syn || (class == Seg::Ack && self.cfg.loose) => NEW,
                    None => self.invalid(InvalidReason::NoConnection, None, Direction::Original),
                }
            }
            L4::IcmpQuery { ty } => {
                let Some((_, reply)) = icmp_query(ty) else {
                    return self.invalid(InvalidReason::IcmpType, None, Direction::Original);
                };
                let dir = if reply {
                    Direction::Reply
                } else {
                    Direction::Original
                };
                let probe = self.probe(pkt.key, Some(dir));
                match self.find(&probe) {
                    Some((i, dir)) => self.track_pseudo(i, dir, pkt, now_s),
                    None if !reply => NEW,
                    None => self.invalid(InvalidReason::NoConnection, None, Direction::Original),
                }
            }
            L4::Udp | L4::Other => {
                let probe = self.probe(pkt.key, None);
                match self.find(&probe) {
                    Some((i, dir)) => self.track_pseudo(i, dir, pkt, now_s),
                    None => NEW,
                }
            }
        }
    }

    /// Create the connection of a packet the policy accepted (lookup said New). `zone`
    /// is the cap it counts against, `tag` a label kept with it (the rule's id). If the
    /// zone or the table is full, the oldest early-drop candidate makes room; if there is
    /// none, the commit fails. If the connection exists already, its handle is returned.
    pub fn commit(
        &mut self,
        pkt: &Packet,
        zone: u32,
        tag: u32,
        now: Instant,
    ) -> Result<ConnId, CtError> {
        let now_s = self.secs(now);
        let init = self.initial(pkt).ok_or(CtError::NotNew)?;
        let probe = self.probe(pkt.key, init.icmp);
        if let Some((i, _)) = self.find(&probe) {
            return Ok(self.id(i));
        }
        self.make_room(zone)?;
        let Some(i) = self.slab.alloc() else {
            self.stats.refused_table_full += 1;
            return Err(CtError::TableFull);
        };
        let k = probe.key;
        let e = self.slab.get_mut(i);
        *e = Entry {
            generation: e.generation,
            zone,
            tag,
            created: now_s,
            last_seen: now_s,
            tcp: init.w.side,
            tcp_scale: init.w.scale,
            tcp_flags: init.w.flags,
            src: k.src,
            dst: k.dst,
            sport: k.sport,
            dport: k.dport,
            proto: k.proto,
            state: init.state,
            ..Entry::FREE
        };
        e.packets[0].add(1);
        e.bytes[0].add(u64::from(pkt.len));
        let Self {
            index,
            slab,
            hasher,
            ..
        } = self;
        index.insert(probe.hash, i, |j| key_hash(hasher, &slab.get(j).key()));
        self.zones
            .entry(zone)
            .or_insert(Zone {
                conns: 0,
                drop: List::EMPTY,
            })
            .conns += 1;
        self.stats.by_state[usize::from(init.state) - 1] += 1;
        self.stats.connections += 1;
        self.stats.created += 1;
        self.refile(i);
        self.sync_listed(i);
        Ok(self.id(i))
    }

    /// Remove timed-out connections until the wheel has caught up with `now`, in at most
    /// `max_rounds` calls of [`Conntrack::expire`]; returns how many were removed. What a
    /// timer calls.
    pub fn expire_all(&mut self, now: Instant, max_rounds: usize) -> usize {
        let mut removed = 0;
        for _ in 0..max_rounds.max(1) {
            removed += self.expire(now);
            if !self.behind {
                break;
            }
        }
        removed
    }

    /// Remove timed-out connections, examining at most `expire_budget` wheel entries;
    /// returns how many were removed. [`Conntrack::expire_all`] calls it until it has
    /// caught up.
    pub fn expire(&mut self, now: Instant) -> usize {
        let now_s = self.secs(now);
        if now_s.saturating_sub(self.wheel.tick) >= WHEEL_SLOTS {
            // Every slot is visited once in the last turn; nothing is lost by skipping.
            self.wheel.tick = now_s - WHEEL_SLOTS + 1;
        }
        let mut budget = self.cfg.expire_budget.max(1);
        let mut removed = 0;
        while self.wheel.tick <= now_s {
            let slot = (self.wheel.tick % WHEEL_SLOTS) as usize;
            loop {
                let i = self.wheel.heads[slot];
                if i == NIL {
                    break;
                }
                if budget == 0 {
                    self.behind = true;
                    self.stats.expired += removed as u64;
                    return removed;
                }
                budget -= 1;
                let e = self.slab.get(i);
                let deadline = e
                    .last_seen
                    .saturating_add(timeout_secs(&self.cfg.timeouts, e))
                    .saturating_add(1);
                if deadline <= now_s {
                    self.remove_entry(i);
                    removed += 1;
                } else {
                    // Seen since it was filed: file it under its new deadline (a later slot).
                    self.wheel.unlink(&mut self.slab, i);
                    self.wheel.link(&mut self.slab, i, deadline);
                }
            }
            self.wheel.tick += 1;
        }
        self.behind = false;
        self.stats.expired += removed as u64;
        removed
    }

    /// Keep only the connections `keep` accepts (after a reload: cut those the new
    /// policy would refuse); returns how many were removed.
    pub fn retain(&mut self, now: Instant, mut keep: impl FnMut(&ConnInfo) -> bool) -> usize {
        let now_s = self.secs(now);
        let mut n = 0;
        for i in 0..self.slab.used {
            if self.slab.get(i).is_live() && !keep(&self.info(i, now_s)) {
                self.remove_entry(i);
                n += 1;
            }
        }
        self.stats.removed += n as u64;
        n
    }

    /// Remove one connection; false if the handle is stale.
    pub fn remove(&mut self, id: ConnId) -> bool {
        if self.slab.by_id(id).is_none() {
            return false;
        }
        self.remove_entry(id.index);
        self.stats.removed += 1;
        true
    }

    /// A connection by handle, if it is still live.
    pub fn conn(&self, id: ConnId, now: Instant) -> Option<ConnInfo> {
        self.slab.by_id(id)?;
        Some(self.info(id.index, self.peek_secs(now)))
    }

    /// Every live connection, in slab order (for the admin listing).
    pub fn conns(&self, now: Instant) -> impl Iterator<Item = ConnInfo> + '_ {
        let now_s = self.peek_secs(now);
        (0..self.slab.used)
            .filter(|&i| self.slab.get(i).is_live())
            .map(move |i| self.info(i, now_s))
    }

    /// Seconds since the table's origin (the first `now` it saw).
    fn secs(&mut self, now: Instant) -> u32 {
        let origin = *self.origin.get_or_insert(now);
        secs(now.saturating_duration_since(origin))
    }

    fn peek_secs(&self, now: Instant) -> u32 {
        self.origin
            .map_or(0, |o| secs(now.saturating_duration_since(o)))
    }

    fn id(&self, i: u32) -> ConnId {
        ConnId {
            index: i,
            generation: self.slab.get(i).generation,
        }
    }

    fn info(&self, i: u32, now_s: u32) -> ConnInfo {
        let e = self.slab.get(i);
        let deadline = e
            .last_seen
            .saturating_add(timeout_secs(&self.cfg.timeouts, e));
        ConnInfo {
            id: self.id(i),
            key: e.key(),
            state: ConnState::from_code(e.state),
            assured: e.flags & E_ASSURED != 0,
            zone: e.zone,
            tag: e.tag,
            packets: [e.packets[0].get(), e.packets[1].get()],
            bytes: [e.bytes[0].get(), e.bytes[1].get()],
            age: Duration::from_secs(u64::from(now_s.saturating_sub(e.created))),
            expires_in: Duration::from_secs(u64::from(deadline.saturating_sub(now_s))),
        }
    }

    fn invalid(&mut self, reason: InvalidReason, conn: Option<ConnId>, dir: Direction) -> Verdict {
        self.stats.invalid[reason as usize] += 1;
        Verdict {
            state: CtState::Invalid(reason),
            conn,
            dir,
        }
    }

    fn probe(&self, key: Key, icmp: Option<Direction>) -> Probe {
        let (key, exact) = match icmp {
            Some(Direction::Reply) if key.proto == IPPROTO_ICMP => (key.reversed(), icmp),
            Some(_) if key.proto == IPPROTO_ICMP => (key, icmp),
            _ => (key, None),
        };
        Probe {
            key,
            hash: key_hash(&self.hasher, &key),
            exact,
        }
    }

    fn find(&self, p: &Probe) -> Option<(u32, Direction)> {
        let slab = &self.slab;
        let reversed = p.key.reversed();
        let i = self.index.find(p.hash, |i| {
            let k = slab.get(i).key();
            k == p.key || (p.exact.is_none() && k == reversed)
        })?;
        let dir = match p.exact {
            Some(d) => d,
            None if slab.get(i).key() == p.key => Direction::Original,
            None => Direction::Reply,
        };
        Some((i, dir))
    }

    /// The state a passing packet has: New the original way until a reply was seen.
    fn passing(&self, i: u32, dir: Direction) -> Verdict {
        let replied = self.slab.get(i).flags & E_REPLIED != 0;
        let state = if dir == Direction::Original && !replied {
            CtState::New
        } else {
            CtState::Established
        };
        Verdict {
            state,
            conn: Some(self.id(i)),
            dir,
        }
    }

    /// Record a packet of connection `i`: new state and flags, counters, refresh, and
    /// the timer and early-drop lists if they change.
    fn apply(&mut self, i: u32, state: u8, flags: u8, dir: Direction, len: u16, now_s: u32) {
        let old_timeout = timeout_secs(&self.cfg.timeouts, self.slab.get(i));
        let e = self.slab.get_mut(i);
        let old_state = e.state;
        e.state = state;
        e.flags = flags;
        e.packets[side(dir)].add(1);
        e.bytes[side(dir)].add(u64::from(len));
        e.last_seen = e.last_seen.max(now_s);
        if old_state != state {
            self.stats.by_state[usize::from(old_state) - 1] -= 1;
            self.stats.by_state[usize::from(state) - 1] += 1;
        }
        if timeout_secs(&self.cfg.timeouts, self.slab.get(i)) != old_timeout {
            self.refile(i);
        }
        self.sync_listed(i);
    }

    fn track_pseudo(&mut self, i: u32, dir: Direction, pkt: &Packet, now_s: u32) -> Verdict {
        let e = *self.slab.get(i);
        if TcpState::from_code(e.state).is_some() {
            return self.invalid(InvalidReason::Malformed, Some(self.id(i)), dir);
        }
        let (mut state, mut flags) = (e.state, e.flags);
        if dir == Direction::Reply {
            flags |= E_REPLIED;
            if state == S_UNREPLIED {
                state = S_REPLIED;
            }
        }
        if state == S_REPLIED
            && e.proto != IPPROTO_ICMP
            && now_s >= e.created.saturating_add(STREAM_SECS)
        {
            state = S_ASSURED;
            flags |= E_ASSURED;
        }
        self.apply(i, state, flags, dir, pkt.len, now_s);
        self.passing(i, dir)
    }

    fn track_tcp(
        &mut self,
        i: u32,
        dir: Direction,
        seg: &TcpSegment,
        class: Seg,
        pkt: &Packet,
        now_s: u32,
    ) -> Verdict {
        let e = *self.slab.get(i);
        let id = self.id(i);
        let Some(state) = TcpState::from_code(e.state) else {
            return self.invalid(InvalidReason::Malformed, Some(id), dir);
        };
        match tcp_step(state, dir, class) {
            Step::Invalid => self.invalid(InvalidReason::TcpState, Some(id), dir),
            Step::Reopen => {
                self.remove_entry(i);
                self.stats.reopened += 1;
                NEW
            }
            Step::Ignore => {
                // Counted, not refreshed: it proves nothing about the connection.
                let e = self.slab.get_mut(i);
                e.packets[side(dir)].add(1);
                e.bytes[side(dir)].add(u64::from(pkt.len));
                if state == TcpState::SynSent && class == Seg::Ack && e.tcp[1].maxwin == 0 {
                    // The opener will answer with <SEQ=SEG.ACK><CTL=RST> (RFC 9293
                    // §3.10.7.3): remember SEG.ACK to let that RST through.
                    e.tcp_flags[1] |= TF_CHALLENGE;
                    e.tcp[1].maxend = seg.ack;
                }
                self.passing(i, dir)
            }
            Step::Track => {
                let mut w = Windows::of(&e);
                // The opener's RST to an ACK that answered its SYN (a peer with a stale
                // connection, RFC 5961 §4): its sequence number is that ACK's, not ours.
                let answers_ack = class == Seg::Rst
                    && dir == Direction::Original
                    && state == TcpState::SynSent
                    && e.tcp[1].maxwin == 0
                    && e.tcp_flags[1] & TF_CHALLENGE != 0
                    && seg.seq == e.tcp[1].maxend;
                if !answers_ack && !w.in_window(side(dir), seg, pkt.payload_len, class, state) {
                    return self.invalid(InvalidReason::OutOfWindow, Some(id), dir);
                }
                let next = match (class, state) {
                    (Seg::Rst, _) => TcpState::Close,
                    (Seg::Syn, _) if dir == Direction::Reply => TcpState::SynSent2,
                    (Seg::Syn, _) => state,
                    (Seg::SynAck, _) => TcpState::SynRecv,
                    (_, TcpState::SynSent | TcpState::SynSent2 | TcpState::Close) => state,
                    (Seg::Ack, TcpState::SynRecv) if dir == Direction::Reply => state,
                    _ => w.closing(),
                };
                let mut flags = e.flags;
                if dir == Direction::Reply {
                    flags |= E_REPLIED;
                }
                let post_handshake = !matches!(
                    next,
                    TcpState::SynSent | TcpState::SynSent2 | TcpState::SynRecv | TcpState::Close
                );
                // Assured once the opener acknowledged the SYN/ACK, or, for a connection
                // picked up mid-stream, once the other side answered (Linux).
                let completes = match (state, dir) {
                    (TcpState::SynRecv, Direction::Original) => post_handshake,
                    (
                        TcpState::Established
                        | TcpState::FinWait
                        | TcpState::CloseWait
                        | TcpState::LastAck
                        | TcpState::TimeWait,
                        Direction::Reply,
                    ) => post_handshake,
                    _ => false,
                };
                if completes {
                    flags |= E_ASSURED;
                }
                let e = self.slab.get_mut(i);
                e.tcp = w.side;
                e.tcp_scale = w.scale;
                e.tcp_flags = w.flags;
                self.apply(i, next as u8, flags, dir, pkt.len, now_s);
                self.passing(i, dir)
            }
        }
    }

    /// An ICMP error: Related if it quotes a packet of a tracked connection and goes back
    /// to that packet's source.
    fn related(&mut self, pkt: &Packet, q: &Quoted) -> Verdict {
        let icmp = (q.key.proto == IPPROTO_ICMP).then_some(if q.icmp_reply {
            Direction::Reply
        } else {
            Direction::Original
        });
        let probe = self.probe(q.key, icmp);
        let Some((i, qdir)) = self.find(&probe) else {
            return self.invalid(InvalidReason::NoConnection, None, Direction::Original);
        };
        let (id, dir) = (self.id(i), opposite(qdir));
        if pkt.key.dst != q.key.src {
            return self.invalid(InvalidReason::IcmpError, Some(id), dir);
        }
        if q.key.proto == IPPROTO_TCP && !quoted_seq_ok(self.slab.get(i), qdir, q.tcp_seq) {
            return self.invalid(InvalidReason::OutOfWindow, Some(id), dir);
        }
        Verdict {
            state: CtState::Related,
            conn: Some(id),
            dir,
        }
    }

    /// The initial state of a connection `pkt` starts, if it may start one.
    fn initial(&self, pkt: &Packet) -> Option<Init> {
        let mut init = Init {
            state: S_UNREPLIED,
            w: Windows::default(),
            icmp: None,
        };
        match pkt.l4 {
            L4::Tcp(seg) if !pkt.fragment => {
                let payload = u32::from(pkt.payload_len);
                match seg_class(seg.flags)? {
                    Seg::Syn => {
                        let end = seg.seq.wrapping_add(payload).wrapping_add(1);
                        init.w.init_sender(0, &seg, end);
                        init.state = TcpState::SynSent as u8;
                    }
                    Seg::Ack if self.cfg.loose => {
                        // History lost: trust the packet, and do not enforce windows
                        // (the scale is unknown), as Linux does.
                        let end = seg.seq.wrapping_add(payload);
                        let win = u32::from(seg.window).max(1);
                        init.w.side[0] = TcpSide {
                            end,
                            maxend: end.wrapping_add(win),
                            maxwin: win,
                        };
                        init.w.flags = [TF_LIBERAL; 2];
                        init.state = TcpState::Established as u8;
                    }
                    _ => return None,
                }
            }
            L4::Udp | L4::Other => {}
            L4::IcmpQuery { ty } if pkt.key.proto == IPPROTO_ICMP => match icmp_query(ty) {
                Some((_, false)) => init.icmp = Some(Direction::Original),
                _ => return None,
            },
            _ => return None,
        }
        Some(init)
    }

    /// Drop early-drop candidates until the zone and the table have room.
    fn make_room(&mut self, zone: u32) -> Result<(), CtError> {
        let mut evicted = 0;
        while self.zone_len(zone) >= self.cfg.max_conns_per_zone {
            let head = self.zones.get(&zone).map_or(NIL, |z| z.drop.head);
            if head == NIL || evicted == MAX_EVICTIONS {
                self.stats.refused_zone_full += 1;
                return Err(CtError::ZoneFull);
            }
            self.remove_entry(head);
            self.stats.early_drops += 1;
            evicted += 1;
        }
        let cap = self.cfg.max_conns.min(MAX_ENTRIES as usize);
        while self.stats.connections >= cap {
            let head = self.drop_all.head;
            if head == NIL || evicted == MAX_EVICTIONS {
                self.stats.refused_table_full += 1;
                return Err(CtError::TableFull);
            }
            self.remove_entry(head);
            self.stats.early_drops += 1;
            evicted += 1;
        }
        Ok(())
    }

    /// File entry `i` in the wheel under its deadline.
    fn refile(&mut self, i: u32) {
        let e = self.slab.get(i);
        let deadline = e
            .last_seen
            .saturating_add(timeout_secs(&self.cfg.timeouts, e))
            .saturating_add(1);
        if e.wheel.prev != NIL {
            self.wheel.unlink(&mut self.slab, i);
        }
        self.wheel.link(&mut self.slab, i, deadline);
    }

    /// Put entry `i` on the early-drop lists or take it off, as it is a candidate or not.
    fn sync_listed(&mut self, i: u32) {
        let e = self.slab.get(i);
        let want = e.evictable();
        if want == (e.flags & E_LISTED != 0) {
            return;
        }
        let Some(z) = self.zones.get_mut(&e.zone) else {
            return;
        };
        if want {
            list_push(&mut self.slab, &mut self.drop_all, i, all_link);
            list_push(&mut self.slab, &mut z.drop, i, zone_link);
            self.slab.get_mut(i).flags |= E_LISTED;
        } else {
            list_unlink(&mut self.slab, &mut self.drop_all, i, all_link);
            list_unlink(&mut self.slab, &mut z.drop, i, zone_link);
            self.slab.get_mut(i).flags &= !E_LISTED;
        }
    }

    fn remove_entry(&mut self, i: u32) {
        let e = *self.slab.get(i);
        if !e.is_live() {
            return;
        }
        self.wheel.unlink(&mut self.slab, i);
        if let Some(z) = self.zones.get_mut(&e.zone) {
            if e.flags & E_LISTED != 0 {
                list_unlink(&mut self.slab, &mut self.drop_all, i, all_link);
                list_unlink(&mut self.slab, &mut z.drop, i, zone_link);
            }
            z.conns -= 1;
            if z.conns == 0 {
                self.zones.remove(&e.zone);
            }
        }
        let Self {
            index,
            slab,
            hasher,
            ..
        } = self;
        index.remove(key_hash(hasher, &e.key()), i, |j| {
            key_hash(hasher, &slab.get(j).key())
        });
        self.stats.by_state[usize::from(e.state) - 1] -= 1;
        self.stats.connections -= 1;
        self.slab.release(i);
    }
}

/// The verdict of a packet that may start a connection and has none.
const NEW: Verdict = Verdict {
    state: CtState::New,
    conn: None,
    dir: Direction::Original,
};

/// RFC 5927 §4.1: an ICMP error about TCP should quote a sequence number the sender may
/// have in flight: within a window (at least 66000 bytes) below what it sent.
fn quoted_seq_ok(e: &Entry, qdir: Direction, seq: u32) -> bool {
    let (s, r) = (side(qdir), 1 - side(qdir));
    let (sd, rv) = (e.tcp[s], e.tcp[r]);
    if sd.maxwin == 0 || (e.tcp_flags[s] | e.tcp_flags[r]) & TF_LIBERAL != 0 {
        return true;
    }
    let span = rv.maxwin.max(MIN_ACK_WINDOW);
    !after(seq, sd.maxend) && after(seq, sd.end.wrapping_sub(span).wrapping_sub(1))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap as StdMap;

    use proptest::prelude::*;

    use super::*;
    use crate::ipv4;

    const SYN: u8 = TcpSegment::SYN;
    const ACK: u8 = TcpSegment::ACK;
    const FIN: u8 = TcpSegment::FIN;
    const RST: u8 = TcpSegment::RST;
    const PSH: u8 = TcpSegment::PSH;
    const URG: u8 = TcpSegment::URG;
    const ECE: u8 = TcpSegment::ECE;
    const CWR: u8 = TcpSegment::CWR;

    const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

    /// 10.0.0.1:45522 -> 192.0.2.1:80, a Linux SYN: seq 0x1a2b3c4d, window 64240, options
    /// MSS 1460, SACK permitted, timestamps, NOP, window scale 7.
    const LINUX_SYN: [u8; 60] = [
        0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x52, 0x74, 0x0a, 0x00, 0x00,
        0x01, 0xc0, 0x00, 0x02, 0x01, // IPv4
        0xb1, 0xd2, 0x00, 0x50, 0x1a, 0x2b, 0x3c, 0x4d, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa,
        0xf0, 0x00, 0x00, 0x00, 0x00, // TCP
        0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x00, 0x01, 0xe2, 0x40, 0x00, 0x00, 0x00,
        0x00, 0x01, 0x03, 0x03, 0x07, // options
    ];

    fn host(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, n)
    }

    fn ip_packet(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, frag: u16, l4: &[u8]) -> Vec<u8> {
        let total = 20 + l4.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.octets());
        let c = ipv4::checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..].copy_from_slice(l4);
        p
    }

    #[allow(clippy::too_many_arguments)]
    fn tcp_header(
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
        win: u16,
        wscale: Option<u8>,
        payload: usize,
    ) -> Vec<u8> {
        let opts: Vec<u8> = wscale.map_or_else(Vec::new, |s| vec![1, 3, 3, s]);
        let hl = 20 + opts.len();
        let mut t = vec![0u8; hl + payload];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&ack.to_be_bytes());
        t[12] = ((hl / 4) << 4) as u8;
        t[13] = flags;
        t[14..16].copy_from_slice(&win.to_be_bytes());
        t[20..hl].copy_from_slice(&opts);
        t
    }

    fn parse(bytes: &[u8]) -> Packet {
        let hdr = ipv4::parse(bytes).unwrap();
        Packet::parse(bytes, &hdr)
    }

    fn udp_bytes(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: usize) -> Vec<u8> {
        let mut u = vec![0u8; 8 + payload];
        u[0..2].copy_from_slice(&src.1.to_be_bytes());
        u[2..4].copy_from_slice(&dst.1.to_be_bytes());
        u[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        ip_packet(IPPROTO_UDP, src.0, dst.0, 0, &u)
    }

    fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: usize) -> Packet {
        parse(&udp_bytes(src, dst, payload))
    }

    fn icmp_bytes(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, id: u16) -> Vec<u8> {
        let mut m = vec![0u8; 8 + 56];
        m[0] = ty;
        m[4..6].copy_from_slice(&id.to_be_bytes());
        ip_packet(IPPROTO_ICMP, src, dst, 0, &m)
    }

    fn icmp(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, id: u16) -> Packet {
        parse(&icmp_bytes(src, dst, ty, id))
    }

    /// An ICMP error from `from` to `to` quoting the first `quote` bytes of `about`.
    fn icmp_error(
        from: Ipv4Addr,
        to: Ipv4Addr,
        ty: u8,
        code: u8,
        about: &[u8],
        quote: usize,
    ) -> Packet {
        let mut m = vec![0u8; 8];
        m[0] = ty;
        m[1] = code;
        m.extend_from_slice(&about[..quote.min(about.len())]);
        parse(&ip_packet(IPPROTO_ICMP, from, to, 0, &m))
    }

    /// Two TCP endpoints: A (side 0) opens to B (side 1) through the table.
    struct Conv {
        ends: [(Ipv4Addr, u16); 2],
        /// The next sequence number each side sends.
        seq: [u32; 2],
        win: [u16; 2],
        wscale: [Option<u8>; 2],
    }

    impl Conv {
        fn new(n: u16) -> Conv {
            Conv {
                ends: [(host(1), 40000 + n), (SERVER, 80)],
                // A's sequence numbers wrap past 2^32 during the tests.
                seq: [
                    0xffff_f000u32.wrapping_add(u32::from(n) * 7919),
                    0x7000_0000 + u32::from(n),
                ],
                win: [65535, 65535],
                wscale: [None, None],
            }
        }

        fn bytes(&self, s: usize, flags: u8, seq: u32, ack: u32, len: usize) -> Vec<u8> {
            let (src, dst) = (self.ends[s], self.ends[1 - s]);
            let ws = if flags & SYN != 0 {
                self.wscale[s]
            } else {
                None
            };
            let l4 = tcp_header(src.1, dst.1, flags, seq, ack, self.win[s], ws, len);
            ip_packet(IPPROTO_TCP, src.0, dst.0, 0, &l4)
        }

        /// What side `s` would acknowledge: everything the other side sent.
        fn ack(&self, s: usize, flags: u8) -> u32 {
            if flags & ACK != 0 { self.seq[1 - s] } else { 0 }
        }

        /// The next segment of side `s` with `len` bytes; its sequence number advances.
        fn send(&mut self, s: usize, flags: u8, len: usize) -> Packet {
            let p = parse(&self.bytes(s, flags, self.seq[s], self.ack(s, flags), len));
            let used = len as u32 + u32::from(flags & SYN != 0) + u32::from(flags & FIN != 0);
            self.seq[s] = self.seq[s].wrapping_add(used);
            p
        }

        /// A segment of side `s` at sequence number `seq` (a retransmission); nothing moves.
        fn at(&self, s: usize, flags: u8, seq: u32, len: usize) -> Packet {
            parse(&self.bytes(s, flags, seq, self.ack(s, flags), len))
        }

        /// A segment with explicit sequence and acknowledgment numbers.
        fn raw(&self, s: usize, flags: u8, seq: u32, ack: u32, len: usize) -> Packet {
            parse(&self.bytes(s, flags, seq, ack, len))
        }

        /// The three-way handshake through `ct`.
        fn open(&mut self, ct: &mut Conntrack, zone: u32, now: Instant) -> ConnId {
            let syn = self.send(0, SYN, 0);
            assert_eq!(ct.lookup(&syn, now), NEW);
            let id = ct.commit(&syn, zone, 1, now).unwrap();
            let v = ct.lookup(&self.send(1, SYN | ACK, 0), now);
            assert_eq!(
                (v.state, v.conn, v.dir),
                (CtState::Established, Some(id), Direction::Reply)
            );
            let v = ct.lookup(&self.send(0, ACK, 0), now);
            assert_eq!(
                (v.state, v.dir),
                (CtState::Established, Direction::Original)
            );
            assert_eq!(st(ct, id), ConnState::Tcp(TcpState::Established));
            id
        }
    }

    fn st(ct: &Conntrack, id: ConnId) -> ConnState {
        ConnState::from_code(ct.slab.by_id(id).unwrap().state)
    }

    fn tcp(t: TcpState) -> ConnState {
        ConnState::Tcp(t)
    }

    fn invalid(r: InvalidReason) -> CtState {
        CtState::Invalid(r)
    }

    /// Seconds left before `id` times out.
    fn left(ct: &Conntrack, id: ConnId, now: Instant) -> u64 {
        ct.conn(id, now).unwrap().expires_in.as_secs()
    }

    fn expire_all(ct: &mut Conntrack, now: Instant) -> usize {
        let mut n = 0;
        loop {
            let k = ct.expire(now);
            n += k;
            if k < ct.cfg.expire_budget.max(1) {
                return n;
            }
        }
    }

    #[test]
    fn parses_a_linux_syn() {
        let p = parse(&LINUX_SYN);
        assert_eq!(
            p.key,
            Key {
                proto: IPPROTO_TCP,
                src: host(1),
                dst: SERVER,
                sport: 45522,
                dport: 80
            }
        );
        let seg = TcpSegment {
            flags: SYN,
            seq: 0x1a2b_3c4d,
            ack: 0,
            window: 64240,
            wscale: Some(7),
        };
        assert_eq!(p.l4, L4::Tcp(seg));
        assert_eq!((p.len, p.payload_len, p.fragment), (60, 0, false));
        assert_eq!(p.key.to_string(), "tcp 10.0.0.1:45522 -> 192.0.2.1:80");
        // The option is ignored without SYN (RFC 7323 §2.2).
        let mut ack = LINUX_SYN;
        ack[33] = ACK;
        assert!(matches!(
            parse(&ack).l4,
            L4::Tcp(TcpSegment { wscale: None, .. })
        ));
        // Every cut of the header is Truncated; a data offset under 5 words is Malformed.
        for n in 0..40 {
            let p = parse(&ip_packet(
                IPPROTO_TCP,
                host(1),
                SERVER,
                0,
                &LINUX_SYN[20..20 + n],
            ));
            assert_eq!(p.l4, L4::Malformed(InvalidReason::Truncated), "{n} bytes");
        }
        let mut l4 = LINUX_SYN[20..].to_vec();
        l4[12] = 0x40;
        let p = parse(&ip_packet(IPPROTO_TCP, host(1), SERVER, 0, &l4));
        assert_eq!(p.l4, L4::Malformed(InvalidReason::Malformed));
        let mut ct = Conntrack::new(CtConfig::default());
        assert_eq!(
            ct.lookup(&p, Instant::now()).state,
            invalid(InvalidReason::Malformed)
        );
    }

    #[test]
    fn handshake_data_and_fin_both_ways() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut ct = Conntrack::new(CtConfig::default());
        let mut c = Conv::new(1);

        let syn = c.send(0, SYN, 0);
        assert_eq!(ct.lookup(&syn, t0), NEW);
        let id = ct.commit(&syn, 7, 42, t0).unwrap();
        assert_eq!(st(&ct, id), tcp(TcpState::SynSent));
        assert_eq!(left(&ct, id, t0), 120);
        let v = ct.lookup(&c.send(1, SYN | ACK, 0), at(1));
        assert_eq!((v.state, v.dir), (CtState::Established, Direction::Reply));
        assert_eq!(st(&ct, id), tcp(TcpState::SynRecv));
        assert_eq!(left(&ct, id, at(1)), 60);
        assert!(
            ct.slab.by_id(id).unwrap().flags & E_LISTED != 0,
            "half-open"
        );
        ct.lookup(&c.send(0, ACK, 0), at(2));
        assert_eq!(st(&ct, id), tcp(TcpState::Established));
        assert_eq!(left(&ct, id, at(2)), 7440);
        assert!(ct.conn(id, at(2)).unwrap().assured);
        assert!(ct.slab.by_id(id).unwrap().flags & E_LISTED == 0);

        // Data both ways, across A's sequence number wrap.
        for _ in 0..5 {
            let v = ct.lookup(&c.send(0, PSH | ACK, 1000), at(3));
            assert_eq!(
                (v.state, v.dir),
                (CtState::Established, Direction::Original)
            );
            for _ in 0..3 {
                let v = ct.lookup(&c.send(1, ACK, 1400), at(3));
                assert_eq!(v.state, CtState::Established);
            }
        }
        // A closes its half; B acknowledges, keeps sending (half-close), then closes.
        let steps = [
            (0, FIN | ACK, 0, TcpState::FinWait, 120),
            (1, ACK, 0, TcpState::CloseWait, 60),
            (1, PSH | ACK, 500, TcpState::CloseWait, 60),
            (0, ACK, 0, TcpState::CloseWait, 60),
            (1, FIN | ACK, 0, TcpState::LastAck, 30),
            (0, ACK, 0, TcpState::TimeWait, 120),
            // The last ACK again (B retransmitted its FIN, say).
            (0, ACK, 0, TcpState::TimeWait, 120),
        ];
        for (s, flags, len, state, timeout) in steps {
            let v = ct.lookup(&c.send(s, flags, len), at(10));
            assert_eq!(v.state, CtState::Established, "{state:?}");
            assert_eq!(st(&ct, id), tcp(state));
            assert_eq!(left(&ct, id, at(10)), timeout, "{state:?}");
        }
        let info = ct.conn(id, at(10)).unwrap();
        assert_eq!((info.zone, info.tag, info.age.as_secs()), (7, 42, 10));
        assert_eq!(info.packets, [1 + 1 + 5 + 4, 1 + 15 + 3]);
        assert_eq!(info.bytes[0], 5 * (40 + 1000) + 6 * 40);
        assert_eq!(info.bytes[1], 15 * 1440 + 540 + 3 * 40);
        assert_eq!(info.key, syn.key);
        assert!(
            ct.slab.by_id(id).unwrap().flags & E_LISTED != 0,
            "closing: droppable"
        );
        assert_eq!(ct.stats().invalid.iter().sum::<u64>(), 0);

        assert_eq!(ct.expire(at(130)), 0);
        assert_eq!(ct.expire(at(131)), 1);
        assert!(ct.is_empty());
        assert_eq!(ct.stats().expired, 1);
        assert!(ct.conn(id, at(131)).is_none());
    }

    #[test]
    fn rst_closes_the_connection_and_must_be_in_window() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut ct = Conntrack::new(CtConfig::default());
        let mut c = Conv::new(2);
        let id = c.open(&mut ct, 0, t0);
        // A blind RST far from the window.
        let blind = c.raw(1, RST, c.seq[1].wrapping_add(10_000_000), 0, 0);
        assert_eq!(
            ct.lookup(&blind, t0).state,
            invalid(InvalidReason::OutOfWindow)
        );
        assert_eq!(st(&ct, id), tcp(TcpState::Established));
        let v = ct.lookup(&c.send(1, RST | ACK, 0), t0);
        assert_eq!((v.state, v.dir), (CtState::Established, Direction::Reply));
        assert_eq!(st(&ct, id), tcp(TcpState::Close));
        assert_eq!(left(&ct, id, t0), 10);
        // Late packets of a reset connection still match it.
        assert_eq!(
            ct.lookup(&c.send(0, ACK, 0), at(1)).state,
            CtState::Established
        );
        assert_eq!(st(&ct, id), tcp(TcpState::Close));
        assert_eq!(ct.expire(at(11)), 0);
        assert_eq!(ct.expire(at(12)), 1);

        // A closed port: RST+ACK with sequence number 0 answers the SYN (RFC 9293
        // §3.10.7.1).
        let mut c = Conv::new(3);
        let syn = c.send(0, SYN, 0);
        let id = ct.commit(&syn, 0, 1, at(12)).unwrap();
        let rst = c.raw(1, RST | ACK, 0, c.seq[0], 0);
        assert_eq!(ct.lookup(&rst, at(12)).state, CtState::Established);
        assert_eq!(st(&ct, id), tcp(TcpState::Close));
        assert_eq!(ct.stats().invalid_for(InvalidReason::OutOfWindow), 1);
    }

    #[test]
    fn retransmissions_pass_and_out_of_sync_segments_are_ignored() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut ct = Conntrack::new(CtConfig::default());
        let mut c = Conv::new(4);
        let isn = c.seq[0];
        let syn = c.send(0, SYN, 0);
        ct.lookup(&syn, t0);
        let id = ct.commit(&syn, 0, 1, t0).unwrap();
        // The SYN again: still New (no reply yet), same connection, timer refreshed.
        let v = ct.lookup(&c.at(0, SYN, isn, 0), at(100));
        assert_eq!((v.state, v.conn), (CtState::New, Some(id)));
        assert_eq!(ct.commit(&syn, 0, 1, at(100)), Ok(id));
        assert_eq!(left(&ct, id, at(100)), 120);
        assert_eq!(ct.len(), 1);
        // The SYN/ACK twice: the second passes without a change.
        let isn_b = c.seq[1];
        ct.lookup(&c.send(1, SYN | ACK, 0), at(101));
        let v = ct.lookup(&c.at(1, SYN | ACK, isn_b, 0), at(101));
        assert_eq!(v.state, CtState::Established);
        assert_eq!(st(&ct, id), tcp(TcpState::SynRecv));
        ct.lookup(&c.send(0, ACK, 0), at(101));
        assert_eq!(st(&ct, id), tcp(TcpState::Established));
        // A data segment and its retransmission.
        let seq = c.seq[0];
        ct.lookup(&c.send(0, PSH | ACK, 1200), at(102));
        let v = ct.lookup(&c.at(0, PSH | ACK, seq, 1200), at(102));
        assert_eq!(v.state, CtState::Established);
        // A late SYN/ACK and a new SYN on the established connection pass, unchanged and
        // unrefreshed (the peer answers a SYN with a challenge ACK, RFC 5961 §4).
        assert_eq!(
            ct.lookup(&c.at(1, SYN | ACK, isn_b, 0), at(200)).state,
            CtState::Established
        );
        let v = ct.lookup(&c.raw(0, SYN, 0x1234_5678, 0, 0), at(200));
        assert_eq!((v.state, v.conn), (CtState::Established, Some(id)));
        assert_eq!(st(&ct, id), tcp(TcpState::Established));
        assert_eq!(left(&ct, id, at(200)), 7440 - 98);
        // A SYN from the responder after the handshake is not allowed.
        let v = ct.lookup(&c.raw(1, SYN, 5, 0, 0), at(200));
        assert_eq!(v.state, invalid(InvalidReason::TcpState));
        assert_eq!(ct.stats().invalid.iter().sum::<u64>(), 1);
    }

    #[test]
    fn simultaneous_open() {
        let now = Instant::now();
        let mut ct = Conntrack::new(CtConfig::default());
        let mut c = Conv::new(5);
        let (isn_a, isn_b) = (c.seq[0], c.seq[1]);
        let syn = c.send(0, SYN, 0);
        let id = ct.commit(&syn, 0, 1, now).unwrap();
        // B's own SYN crosses A's (RFC 9293 §3.5).
        let v = ct.lookup(&c.send(1, SYN, 0), now);
        assert_eq!((v.state, v.dir), (CtState::Established, Direction::Reply));
        assert_eq!(st(&ct, id), tcp(TcpState::SynSent2));
        // Each answers the other's SYN with its own SYN again, now with ACK.
        ct.lookup(&c.at(0, SYN | ACK, isn_a, 0), now);
        assert_eq!(st(&ct, id), tcp(TcpState::SynRecv));
        let v = ct.lookup(&c.at(1, SYN | ACK, isn_b, 0), now);
        assert_eq!(v.state, CtState::Established);
        ct.lookup(&c.send(0, ACK, 0), now);
        ct.lookup(&c.send(1, ACK, 0), now);
        assert_eq!(st(&ct, id), tcp(TcpState::Established));
        assert!(ct.conn(id, now).unwrap().assured);
        assert_eq!(ct.stats().invalid.iter().sum::<u64>(), 0);
    }

    #[test]
    fn impossible_flags_and_wrong_states_are_invalid() {
        let now = Instant::now();
        let mut ct = Conntrack::new(CtConfig::default());
        let mut c = Conv::new(6);
        let bad = [
            SYN | FIN,
            SYN | RST,
            0,
            FIN,
            FIN | PSH | URG,
            SYN | FIN | PSH | URG,
            RST | FIN | ACK,
            SYN | ACK | URG,
            SYN | RST | ACK | FIN | PSH | URG,
        ];
        for flags in bad {
            let v = ct.lookup(&c.at(0, flags, c.seq[0], 0), now);
            assert_eq!(v.state, invalid(InvalidReason::TcpFlags), "{flags:#x}");
        }
        assert_eq!(
            ct.commit(&c.at(0, SYN | FIN, 1, 0), 0, 1, now),
            Err(CtError::NotNew)
        );
        // ECN setup SYN (RFC 3168 §6.1.1) is a SYN.
        assert_eq!(ct.lookup(&c.at(0, SYN | ECE | CWR, 1, 0), now), NEW);
        let id = c.open(&mut ct, 0, now);
        for flags in bad {
            let v = ct.lookup(&c.at(1, flags, c.seq[1], 0), now);
            assert_eq!((v.state, v.conn), (invalid(InvalidReason::TcpFlags), None));
        }
        assert_eq!(st(&ct, id), tcp(TcpState::Established));
        assert_eq!(
            ct.stats().invalid_for(InvalidReason::TcpFlags),
            2 * bad.len() as u64
        );

        // Before the SYN/ACK the opener may not ACK or FIN, and may not send a SYN/ACK.
        let mut c = Conv::new(7);
        let syn = c.send(0, SYN, 0);
        let id = ct.commit(&syn, 0, 1, now).unwrap();
        for flags in [ACK, FIN | ACK, SYN | ACK] {
            let v = ct.lookup(&c.at(0, flags, c.seq[0], 0), now);
            assert_eq!(v.state, invalid(InvalidReason::TcpState), "{flags:#x}");
        }
        assert_eq!(
            ct.lookup(&c.at(1, FIN | ACK, c.seq[1], 0), now).state,
            invalid(InvalidReason::TcpState)
        );
        assert_eq!(st(&ct, id), tcp(TcpState::SynSent));
    }

    #[test]
    fn no_mid_stream_pickup_unless_loose() {
        let now = Instant::now();
        let mut ct = Conntrack::new(CtConfig::default());
        let mut c = Conv::new(8);
        for flags in [ACK, PSH | ACK, FIN | ACK, RST, SYN | ACK] {
            let p = c.at(0, flags, c.seq[0], 100);
            assert_eq!(
                ct.lookup(&p, now).state,
                invalid(InvalidReason::NoConnection)
            );
            assert_eq!(ct.commit(&p, 0, 1, now), Err(CtError::NotNew));
        }
        assert!(ct.is_empty());

        ct.set_config(CtConfig {
            loose: true,
            ..CtConfig::default()
        });
        let mid = c.send(0, PSH | ACK, 100);
        assert_eq!(ct.lookup(&mid, now), NEW);
        let id = ct.commit(&mid, 0, 1, now).unwrap();
        assert_eq!(st(&ct, id), tcp(TcpState::Established));
        // Unanswered, it is droppable and short-lived.
        assert!(!ct.conn(id, now).unwrap().assured);
        assert_eq!(left(&ct, id, now), 120);
        assert_eq!(
            ct.lookup(&c.send(0, PSH | ACK, 100), now).state,
            CtState::New
        );
        let v = ct.lookup(&c.send(1, ACK, 0), now);
        assert_eq!((v.state, v.dir), (CtState::Established, Direction::Reply));
        assert!(ct.conn(id, now).unwrap().assured);
        assert_eq!(left(&ct, id, now), 7440);
        // The scale is unknown: windows are not enforced.
        let jump = c.raw(0, ACK, c.seq[0].wrapping_add(5_000_000), c.seq[1], 10);
        assert_eq!(ct.lookup(&jump, now).state, CtState::Established);
        // Only an ACK picks up.
        let mut d = Conv::new(9);
        let fin = d.send(0, FIN | ACK, 0);
        assert_eq!(
            ct.lookup(&fin, now).state,
            invalid(InvalidReason::NoConnection)
        );
    }

    #[test]
    fn out_of_window_segments_are_invalid() {
        let now = Instant::now();
        let mut ct = Conntrack::new(CtConfig::default());
        let mut c = Conv::new(10);
        c.win = [20000, 20000];
        let id = c.open(&mut ct, 0, now);
        let (a, b) = (c.seq[0], c.seq[1]);
        let cases = [
            // I: beyond what B allowed (ack + window).
            (
                "beyond the window",
                c.raw(0, ACK, a.wrapping_add(20001), b, 10),
            ),
            // II: older than B's largest window.
            ("stale data", c.raw(0, ACK, a.wrapping_sub(30000), b, 100)),
            // III: acknowledges data B never sent.
            ("ack of unsent data", c.raw(0, ACK, a, b.wrapping_add(1), 0)),
            // IV: acknowledges far below B's end.
            ("ancient ack", c.raw(0, ACK, a, b.wrapping_sub(70000), 0)),
            (
                "RST beyond the window",
                c.raw(1, RST, b.wrapping_add(20001), 0, 0),
            ),
        ];
        for (what, p) in &cases {
            let v = ct.lookup(p, now);
            assert_eq!(v.state, invalid(InvalidReason::OutOfWindow), "{what}");
            assert_eq!(v.conn, Some(id));
        }
        assert_eq!(ct.stats().invalid_for(InvalidReason::OutOfWindow), 5);
        assert_eq!(ct.conn(id, now).unwrap().packets, [2, 1], "not counted");
        // The window's last byte is fine; a whole window of data too.
        assert_eq!(
            ct.lookup(&c.raw(0, ACK, a.wrapping_add(20000), b, 0), now)
                .state,
            CtState::Established
        );
        assert_eq!(
            ct.lookup(&c.send(0, PSH | ACK, 20000), now).state,
            CtState::Established
        );
        // B acknowledges, then A may send the next window.
        ct.lookup(&c.send(1, ACK, 0), now);
        assert_eq!(
            ct.lookup(&c.send(0, PSH | ACK, 20000), now).state,
            CtState::Established
        );
        // A retransmission of unacknowledged data passes; of data a window older, not.
        let retx = c.raw(0, ACK, a.wrapping_add(20000), b, 1000);
        assert_eq!(ct.lookup(&retx, now).state, CtState::Established);
        let stale = c.raw(0, ACK, a, b, 1000);
        assert_eq!(
            ct.lookup(&stale, now).state,
            invalid(InvalidReason::OutOfWindow)
        );
        assert_eq!(st(&ct, id), tcp(TcpState::Established));
    }

    #[test]
    fn window_scaling_follows_rfc_7323() {
        let now = Instant::now();
        let bulk = |wscale: [Option<u8>; 2]| {
            let mut ct = Conntrack::new(CtConfig::default());
            let mut c = Conv::new(11);
            c.win = [512, 512];
            c.wscale = wscale;
            c.open(&mut ct, 0, now);
            // The SYN/ACK's window is never scaled: B opens the window with an ACK.
            ct.lookup(&c.send(1, ACK, 0), now);
            // 40 segments of 1460 bytes unacknowledged: 58400 of 512 << 7 = 65536 bytes.
            (0..40)
                .filter(|_| {
                    ct.lookup(&c.send(0, PSH | ACK, 1460), now).state == CtState::Established
                })
                .count()
        };
        assert_eq!(bulk([Some(7), Some(7)]), 40);
        // Only one side offered scaling: it is off both ways, the window is 512 bytes.
        assert_eq!(bulk([Some(7), None]), 1);
        assert_eq!(bulk([None, Some(7)]), 1);
        // A shift over 14 counts as 14 (RFC 7323 §2.3).
        let mut w = Windows::default();
        let seg = TcpSegment {
            flags: SYN,
            seq: 0,
            ack: 0,
            window: 100,
            wscale: Some(20),
        };
        w.init_sender(0, &seg, 1);
        assert_eq!(w.scale[0], 14);
    }

    #[test]
    fn a_syn_reopens_a_finished_connection() {
        let t0 = Instant::now();
        let mut ct = Conntrack::new(CtConfig::default());
        let mut c = Conv::new(12);
        let old = c.open(&mut ct, 3, t0);
        for (s, flags) in [(0, FIN | ACK), (1, FIN | ACK), (0, ACK)] {
            ct.lookup(&c.send(s, flags, 0), t0);
        }
        assert_eq!(st(&ct, old), tcp(TcpState::TimeWait));
        // The same ports again, with a later initial sequence number (RFC 1122 §4.2.2.13).
        c.seq[0] = c.seq[0].wrapping_add(1 << 20);
        let syn = c.send(0, SYN, 0);
        assert_eq!(ct.lookup(&syn, t0), NEW);
        assert!(ct.is_empty());
        assert_eq!(ct.stats().reopened, 1);
        let id = ct.commit(&syn, 3, 2, t0).unwrap();
        assert_ne!(id, old);
        assert!(ct.conn(old, t0).is_none());
        // After a RST, too.
        ct.lookup(&c.send(1, SYN | ACK, 0), t0);
        ct.lookup(&c.send(1, RST | ACK, 0), t0);
        assert_eq!(st(&ct, id), tcp(TcpState::Close));
        assert_eq!(ct.lookup(&c.send(0, SYN, 0), t0), NEW);
        assert_eq!(ct.stats().reopened, 2);
    }

    #[test]
    fn a_stale_peer_s_ack_to_a_syn_is_let_through_and_the_rst_closes() {
        let t0 = Instant::now();
        let mut ct = Conntrack::new(CtConfig::default());
        let mut c = Conv::new(13);
        let syn = c.send(0, SYN, 0);
        let id = ct.commit(&syn, 0, 1, t0).unwrap();
        // B still has an old connection on these ports: it answers the SYN with an ACK of
        // its own idea of A's sequence (RFC 5961 §4).
        let old_a = c.seq[0].wrapping_add(0x4000_0000);
        let challenge = c.raw(1, ACK, c.seq[1], old_a, 0);
        let v = ct.lookup(&challenge, t0);
        assert_eq!((v.state, v.dir), (CtState::Established, Direction::Reply));
        assert_eq!(st(&ct, id), tcp(TcpState::SynSent));
        // A answers <SEQ=SEG.ACK><CTL=RST> (RFC 9293 §3.10.7.3); a RST with another
        // sequence number is still out of the window.
        let wrong = c.raw(0, RST, old_a.wrapping_add(1), 0, 0);
        assert_eq!(
            ct.lookup(&wrong, t0).state,
            invalid(InvalidReason::OutOfWindow)
        );
        let v = ct.lookup(&c.raw(0, RST, old_a, 0, 0), t0);
        assert_eq!(v.state, CtState::New);
        assert_eq!(st(&ct, id), tcp(TcpState::Close));
        // A's next SYN starts over.
        assert_eq!(ct.lookup(&c.send(0, SYN, 0), t0), NEW);
    }

    #[test]
    fn udp_pseudo_connections() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut ct = Conntrack::new(CtConfig::default());
        let (client, dns) = ((host(2), 5353), (SERVER, 53));
        let q = udp(client, dns, 30);
        assert_eq!(q.payload_len, 30);
        assert_eq!(ct.lookup(&q, t0), NEW);
        let id = ct.commit(&q, 0, 1, t0).unwrap();
        assert_eq!(st(&ct, id), ConnState::Unreplied);
        assert_eq!(left(&ct, id, t0), 30);
        let v = ct.lookup(&q, t0);
        assert_eq!((v.state, v.conn), (CtState::New, Some(id)));
        let v = ct.lookup(&udp(dns, client, 100), t0);
        assert_eq!((v.state, v.dir), (CtState::Established, Direction::Reply));
        assert_eq!(st(&ct, id), ConnState::Replied);
        assert_eq!(ct.lookup(&q, at(1)).state, CtState::Established);
        // A question and its answer: Replied, short, droppable.
        assert!(!ct.conn(id, at(1)).unwrap().assured);
        assert_eq!(left(&ct, id, at(1)), 30);
        // Another port of the client is not part of it.
        assert_eq!(ct.lookup(&udp(dns, (host(2), 5354), 1), t0), NEW);

        // A stream: still going 2 s after its first packet, it is assured.
        let (a, b) = ((host(3), 4000), (SERVER, 4001));
        let s = ct.commit(&udp(a, b, 10), 0, 1, t0).unwrap();
        ct.lookup(&udp(b, a, 10), at(1));
        assert_eq!(st(&ct, s), ConnState::Replied);
        ct.lookup(&udp(a, b, 10), at(2));
        assert_eq!(st(&ct, s), ConnState::Assured);
        assert!(ct.conn(s, at(2)).unwrap().assured);
        assert_eq!(left(&ct, s, at(2)), 180);
        let stats = ct.stats();
        assert_eq!(stats.state(ConnState::Replied), 1);
        assert_eq!(stats.state(ConnState::Assured), 1);
        assert_eq!(ct.expire(at(31)), 0);
        assert_eq!(ct.expire(at(32)), 1);
        assert_eq!(ct.expire(at(183)), 1);
        assert!(ct.is_empty());
    }

    #[test]
    fn icmp_queries_are_pseudo_connections() {
        let t0 = Instant::now();
        let mut ct = Conntrack::new(CtConfig::default());
        let req = icmp(host(4), SERVER, 8, 7);
        assert_eq!(req.l4, L4::IcmpQuery { ty: 8 });
        assert_eq!(
            req.key.to_string(),
            "icmp 10.0.0.4 -> 192.0.2.1 type 8 id 7"
        );
        assert_eq!(ct.lookup(&req, t0), NEW);
        let id = ct.commit(&req, 0, 1, t0).unwrap();
        let v = ct.lookup(&icmp(SERVER, host(4), 0, 7), t0);
        assert_eq!(
            (v.state, v.conn, v.dir),
            (CtState::Established, Some(id), Direction::Reply)
        );
        assert_eq!(
            ct.lookup(&req, t0 + Duration::from_secs(5)).state,
            CtState::Established
        );
        assert_eq!(st(&ct, id), ConnState::Replied, "ICMP is never assured");
        assert_eq!(left(&ct, id, t0 + Duration::from_secs(5)), 30);
        // A reply nobody asked for.
        let v = ct.lookup(&icmp(SERVER, host(4), 0, 8), t0);
        assert_eq!(v.state, invalid(InvalidReason::NoConnection));
        assert_eq!(
            ct.commit(&icmp(SERVER, host(4), 0, 8), 0, 1, t0),
            Err(CtError::NotNew)
        );
        // The server pings back with the same identifier: its own connection.
        let back = icmp(SERVER, host(4), 8, 7);
        assert_eq!(ct.lookup(&back, t0), NEW);
        let id2 = ct.commit(&back, 0, 1, t0).unwrap();
        assert_ne!(id, id2);
        let v = ct.lookup(&icmp(host(4), SERVER, 0, 7), t0);
        assert_eq!((v.conn, v.dir), (Some(id2), Direction::Reply));
        // A timestamp request with that identifier is another query.
        assert_eq!(ct.lookup(&icmp(host(4), SERVER, 13, 7), t0), NEW);
        // Router advertisements and other types belong to nothing.
        let ra = icmp(ROUTER, host(4), 9, 0);
        assert_eq!(ra.l4, L4::IcmpOther { ty: 9, code: 0 });
        assert_eq!(ct.lookup(&ra, t0).state, invalid(InvalidReason::IcmpType));
        assert_eq!(ct.expire(t0 + Duration::from_secs(36)), 2);
    }

    #[test]
    fn icmp_errors_about_tracked_connections_are_related() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(60);
        let mut ct = Conntrack::new(CtConfig::default());
        let mut c = Conv::new(14);
        let id = c.open(&mut ct, 0, t0);
        let seq = c.seq[0];
        let data = c.bytes(0, PSH | ACK, seq, c.seq[1], 1400);
        ct.lookup(&parse(&data), t0);
        let before = ct.conn(id, later).unwrap();
        // A router on the path: fragmentation needed (RFC 1191) about A's segment.
        let frag_needed = icmp_error(ROUTER, host(1), 3, 4, &data, 28);
        let L4::IcmpError { quoted, .. } = frag_needed.l4 else {
            panic!("error")
        };
        assert_eq!(quoted.key, parse(&data).key);
        assert_eq!(quoted.tcp_seq, seq);
        let v = ct.lookup(&frag_needed, later);
        assert_eq!(
            (v.state, v.conn, v.dir),
            (CtState::Related, Some(id), Direction::Reply)
        );
        // Neither counted nor refreshed.
        assert_eq!(ct.conn(id, later).unwrap(), before);
        // The same error addressed to another host is not A's business.
        let misdirected = icmp_error(ROUTER, host(99), 3, 4, &data, 28);
        assert_eq!(
            ct.lookup(&misdirected, later).state,
            invalid(InvalidReason::IcmpError)
        );
        // About B's segment, going to B: the original way.
        let from_b = c.bytes(1, ACK, c.seq[1], c.seq[0], 0);
        let v = ct.lookup(&icmp_error(ROUTER, SERVER, 11, 0, &from_b, 28), later);
        assert_eq!((v.state, v.dir), (CtState::Related, Direction::Original));
        // Quoting a sequence number nowhere near the window (RFC 5927 §4.1).
        let blind = c.bytes(0, ACK, seq.wrapping_add(1 << 30), c.seq[1], 0);
        let v = ct.lookup(&icmp_error(ROUTER, host(1), 3, 4, &blind, 28), later);
        assert_eq!(v.state, invalid(InvalidReason::OutOfWindow));
        // Quoting a flow nobody tracks.
        let other = Conv::new(15).bytes(0, SYN, 1, 0, 0);
        let v = ct.lookup(&icmp_error(ROUTER, host(1), 3, 1, &other, 28), later);
        assert_eq!(v.state, invalid(InvalidReason::NoConnection));

        // UDP: the server's port unreachable.
        let dgram = udp_bytes((host(5), 999), (SERVER, 5000), 10);
        let u = ct.commit(&parse(&dgram), 0, 1, later).unwrap();
        let v = ct.lookup(&icmp_error(SERVER, host(5), 3, 3, &dgram, 28), later);
        assert_eq!((v.state, v.conn), (CtState::Related, Some(u)));
        // Traceroute-style: time exceeded quoting an echo request.
        let ping = icmp_bytes(host(6), SERVER, 8, 33);
        let p = ct.commit(&parse(&ping), 0, 1, later).unwrap();
        let v = ct.lookup(&icmp_error(ROUTER, host(6), 11, 0, &ping, 28), later);
        assert_eq!((v.state, v.conn), (CtState::Related, Some(p)));
        // An error about an error (RFC 1122 §3.2.2), and one quoting too little.
        let err = icmp_bytes(ROUTER, host(6), 3, 0);
        let p = icmp_error(ROUTER, host(6), 3, 1, &err, 28);
        assert_eq!(p.l4, L4::Malformed(InvalidReason::IcmpError));
        assert_eq!(
            ct.lookup(&p, later).state,
            invalid(InvalidReason::IcmpError)
        );
        let p = icmp_error(ROUTER, host(1), 3, 4, &data, 27);
        assert_eq!(
            ct.lookup(&p, later).state,
            invalid(InvalidReason::IcmpError)
        );
    }

    #[test]
    fn fragments_follow_the_documented_rule() {
        let now = Instant::now();
        let mut ct = Conntrack::new(CtConfig::default());
        // A non-first fragment: no ports.
        let tail = parse(&ip_packet(IPPROTO_UDP, host(7), SERVER, 185, &[0u8; 100]));
        assert_eq!((tail.l4, tail.fragment), (L4::Fragment, true));
        assert_eq!(
            ct.lookup(&tail, now).state,
            invalid(InvalidReason::Fragment)
        );
        assert_eq!(ct.commit(&tail, 0, 1, now), Err(CtError::NotNew));
        // The first fragment of TCP: its segment length is unknown.
        let l4 = tcp_header(1000, 80, SYN, 1, 0, 1000, None, 200);
        let head = parse(&ip_packet(IPPROTO_TCP, host(7), SERVER, 0x2000, &l4));
        assert!(matches!(head.l4, L4::Tcp(_)) && head.fragment);
        assert_eq!(
            ct.lookup(&head, now).state,
            invalid(InvalidReason::Fragment)
        );
        assert_eq!(ct.commit(&head, 0, 1, now), Err(CtError::NotNew));
        // The first fragment of a 3000-byte UDP datagram is tracked.
        let mut u = vec![0u8; 1480];
        u[0..2].copy_from_slice(&1000u16.to_be_bytes());
        u[2..4].copy_from_slice(&2000u16.to_be_bytes());
        u[4..6].copy_from_slice(&3008u16.to_be_bytes());
        let first = parse(&ip_packet(IPPROTO_UDP, host(7), SERVER, 0x2000, &u));
        assert_eq!((first.l4, first.payload_len), (L4::Udp, 1472));
        assert_eq!(ct.lookup(&first, now), NEW);
        assert!(ct.commit(&first, 0, 1, now).is_ok());
        // Too short to hold the TCP header (RFC 1858's tiny fragment).
        let tiny = parse(&ip_packet(IPPROTO_TCP, host(7), SERVER, 0x2000, &l4[..8]));
        assert_eq!(
            ct.lookup(&tiny, now).state,
            invalid(InvalidReason::Truncated)
        );
        assert_eq!(ct.stats().invalid_for(InvalidReason::Fragment), 2);
    }

    #[test]
    fn truncated_udp_and_icmp_are_invalid() {
        let now = Instant::now();
        let mut ct = Conntrack::new(CtConfig::default());
        let mut u = udp_bytes((host(8), 1), (SERVER, 2), 10);
        let cases: Vec<(Vec<u8>, InvalidReason)> = vec![
            (
                ip_packet(IPPROTO_UDP, host(8), SERVER, 0, &u[20..24]),
                InvalidReason::Truncated,
            ),
            (
                ip_packet(IPPROTO_ICMP, host(8), SERVER, 0, &[8, 0, 0, 0, 0]),
                InvalidReason::Truncated,
            ),
            (
                ip_packet(IPPROTO_UDP, host(8), SERVER, 0, &{
                    u[25] = 7; // length under the header
                    u[20..].to_vec()
                }),
                InvalidReason::Malformed,
            ),
            (
                ip_packet(IPPROTO_UDP, host(8), SERVER, 0, &{
                    u[25] = 19; // longer than the packet
                    u[20..].to_vec()
                }),
                InvalidReason::Malformed,
            ),
        ];
        // Found by `parse_never_panics_behind_a_valid_header`: a first fragment whose UDP
        // header is cut short but whose length field says 8.
        let cut = ip_packet(IPPROTO_UDP, host(8), SERVER, 0x2000, &[0, 0, 0, 0, 0, 8]);
        for (bytes, reason) in cases.iter().chain([&(cut, InvalidReason::Truncated)]) {
            let p = parse(bytes);
            assert_eq!(p.l4, L4::Malformed(*reason));
            assert_eq!(ct.lookup(&p, now).state, invalid(*reason));
            assert_eq!(ct.commit(&p, 0, 1, now), Err(CtError::NotNew));
        }
        // A header that does not describe the bytes.
        let hdr = Header {
            header_len: 20,
            total_len: 500,
            ttl: 1,
            protocol: IPPROTO_TCP,
            src: host(8),
            dst: SERVER,
            dont_fragment: false,
            fragment: false,
            fragment_offset: 0,
        };
        let p = Packet::parse(&u, &hdr);
        assert_eq!(p.l4, L4::Malformed(InvalidReason::Truncated));
    }

    /// A SYN from a spoofed source, built without bytes.
    fn spoofed_syn(n: u32) -> Packet {
        Packet {
            key: Key {
                proto: IPPROTO_TCP,
                src: Ipv4Addr::from(0xac10_0000 | (n >> 16)),
                dst: SERVER,
                sport: n as u16,
                dport: 80,
            },
            l4: L4::Tcp(TcpSegment {
                flags: SYN,
                seq: n.wrapping_mul(2_654_435_761),
                ack: 0,
                window: 64240,
                wscale: Some(7),
            }),
            fragment: false,
            len: 60,
            payload_len: 0,
        }
    }

    #[test]
    fn a_syn_flood_cannot_starve_established_connections() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let cfg = CtConfig {
            max_conns: 1000,
            ..CtConfig::default()
        };
        let mut ct = Conntrack::new(cfg);
        let mut convs: Vec<Conv> = (0..10).map(|n| Conv::new(100 + n)).collect();
        let ids: Vec<ConnId> = convs.iter_mut().map(|c| c.open(&mut ct, 0, t0)).collect();
        for n in 0..5000 {
            let syn = spoofed_syn(n);
            assert_eq!(ct.lookup(&syn, t0), NEW);
            ct.commit(&syn, 0, 9, t0).unwrap();
            assert!(ct.len() <= 1000);
        }
        assert_eq!(ct.len(), 1000);
        assert_eq!(ct.stats().early_drops, 5000 - 990);
        assert_eq!(ct.stats().refused_table_full, 0);
        assert_eq!(ct.stats().state(tcp(TcpState::SynSent)), 990);
        // The oldest half-open connections went first.
        assert_eq!(ct.lookup(&spoofed_syn(0), t0).conn, None);
        assert!(ct.lookup(&spoofed_syn(4999), t0).conn.is_some());
        // Every established connection survived and still passes traffic.
        for (c, id) in convs.iter_mut().zip(&ids) {
            let v = ct.lookup(&c.send(0, PSH | ACK, 100), at(1));
            assert_eq!((v.state, v.conn), (CtState::Established, Some(*id)));
        }
        // A new connection still gets in, displacing the oldest half-open one.
        let mut fresh = Conv::new(200);
        let fresh_id = fresh.open(&mut ct, 0, at(1));
        assert_eq!(ct.stats().early_drops, 5000 - 990 + 1);
        // The flood stops; its half-open connections time out; commits need no room.
        assert_eq!(expire_all(&mut ct, at(122)), 989);
        assert_eq!(ct.len(), 11);
        for n in 0..100 {
            ct.commit(&spoofed_syn(10_000 + n), 0, 9, at(122)).unwrap();
        }
        assert_eq!(ct.stats().early_drops, 5000 - 990 + 1);
        assert!(
            ids.iter()
                .chain([&fresh_id])
                .all(|&id| ct.conn(id, at(122)).is_some())
        );

        // A table full of established connections refuses, and keeps them.
        let mut ct = Conntrack::new(CtConfig {
            max_conns: 20,
            ..CtConfig::default()
        });
        let ids: Vec<ConnId> = (0..20)
            .map(|n| Conv::new(300 + n).open(&mut ct, 0, t0))
            .collect();
        assert_eq!(
            ct.commit(&spoofed_syn(1), 0, 9, t0),
            Err(CtError::TableFull)
        );
        assert_eq!(ct.stats().refused_table_full, 1);
        assert_eq!(ct.stats().early_drops, 0);
        assert!(ids.iter().all(|&id| ct.conn(id, t0).is_some()));
    }

    #[test]
    fn zone_caps_drop_early_within_the_zone() {
        let now = Instant::now();
        let cfg = CtConfig {
            max_conns: 14,
            max_conns_per_zone: 5,
            ..CtConfig::default()
        };
        let mut ct = Conntrack::new(cfg);
        // Zone 1: five established connections.
        let z1: Vec<ConnId> = (0..5)
            .map(|n| Conv::new(400 + n).open(&mut ct, 1, now))
            .collect();
        assert_eq!(
            ct.commit(&spoofed_syn(1), 1, 0, now),
            Err(CtError::ZoneFull)
        );
        assert_eq!(ct.stats().refused_zone_full, 1);
        // Zone 2: two established, then three half-open; the next half-open one displaces
        // the oldest half-open one of zone 2.
        let z2: Vec<ConnId> = (0..2)
            .map(|n| Conv::new(410 + n).open(&mut ct, 2, now))
            .collect();
        let half: Vec<ConnId> = (0..3)
            .map(|n| ct.commit(&spoofed_syn(n), 2, 0, now).unwrap())
            .collect();
        ct.commit(&spoofed_syn(3), 2, 0, now).unwrap();
        assert_eq!(ct.zone_len(2), 5);
        assert!(ct.conn(half[0], now).is_none());
        assert!(ct.conn(half[1], now).is_some());
        // Zone 3: UDP questions without answers are droppable too.
        for port in 0..4 {
            ct.commit(&udp((host(30), port), (SERVER, 53), 10), 3, 0, now)
                .unwrap();
        }
        assert_eq!(ct.len(), 14);
        // The table is full: a zone-4 commit takes the oldest candidate of any zone
        // (zone 2's second half-open connection).
        ct.commit(&udp((host(40), 1), (SERVER, 53), 10), 4, 0, now)
            .unwrap();
        assert!(ct.conn(half[1], now).is_none());
        assert_eq!((ct.zone_len(2), ct.zone_len(4)), (4, 1));
        assert_eq!(ct.stats().early_drops, 2);
        assert!(z1.iter().chain(&z2).all(|&id| ct.conn(id, now).is_some()));
        assert_eq!(ct.zone_len(1), 5);
    }

    #[test]
    fn lowered_caps_keep_connections() {
        let now = Instant::now();
        let mut ct = Conntrack::new(CtConfig::default());
        let est: Vec<ConnId> = (0..4)
            .map(|n| Conv::new(500 + n).open(&mut ct, 0, now))
            .collect();
        for port in 0..10 {
            ct.commit(&udp((host(50), port), (SERVER, 53), 10), 0, 0, now)
                .unwrap();
        }
        ct.set_config(CtConfig {
            max_conns_per_zone: 6,
            ..CtConfig::default()
        });
        assert_eq!(ct.len(), 14);
        // One commit drops at most 8 candidates (14 -> 6), then refuses.
        let q = |port| udp((host(51), port), (SERVER, 53), 10);
        assert_eq!(ct.commit(&q(1), 0, 0, now), Err(CtError::ZoneFull));
        assert_eq!((ct.len(), ct.stats().early_drops), (6, 8));
        ct.commit(&q(1), 0, 0, now).unwrap();
        assert_eq!((ct.len(), ct.stats().early_drops), (6, 9));
        // Below the established connections: the candidates go, the established stay.
        ct.set_config(CtConfig {
            max_conns_per_zone: 3,
            ..CtConfig::default()
        });
        assert_eq!(ct.commit(&q(2), 0, 0, now), Err(CtError::ZoneFull));
        assert_eq!((ct.len(), ct.stats().early_drops), (4, 11));
        assert!(est.iter().all(|&id| ct.conn(id, now).is_some()));
        assert_eq!(ct.stats().refused_zone_full, 2);
    }

    #[test]
    fn retain_and_listing() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut ct = Conntrack::new(CtConfig::default());
        let mut c = Conv::new(600);
        let a = c.open(&mut ct, 1, t0);
        let b = ct
            .commit(&udp((host(60), 1), (SERVER, 53), 10), 2, 7, t0)
            .unwrap();
        let d = ct.commit(&icmp(host(61), SERVER, 8, 1), 1, 7, t0).unwrap();
        ct.lookup(&c.send(0, PSH | ACK, 1000), at(3));
        let list: StdMap<ConnId, ConnInfo> = ct.conns(at(5)).map(|i| (i.id, i)).collect();
        assert_eq!(list.len(), 3);
        let info = list[&a];
        assert_eq!(info.key.to_string(), "tcp 10.0.0.1:40600 -> 192.0.2.1:80");
        assert_eq!(
            (info.state, info.zone, info.tag),
            (tcp(TcpState::Established), 1, 1)
        );
        assert_eq!((info.packets, info.bytes), ([3, 1], [40 + 40 + 1040, 40]));
        assert_eq!(
            (info.age.as_secs(), info.expires_in.as_secs()),
            (5, 7440 - 2)
        );
        assert_eq!(list[&b].state, ConnState::Unreplied);
        assert_eq!(list[&d].key.dport, 8);
        // Reload: the rule with tag 7 is gone.
        assert_eq!(ct.retain(at(5), |i| i.tag != 7), 2);
        assert_eq!(ct.len(), 1);
        assert_eq!(ct.stats().removed, 2);
        assert!(ct.conn(b, at(5)).is_none() && ct.conn(d, at(5)).is_none());
        assert_eq!(ct.lookup(&udp((host(60), 1), (SERVER, 53), 10), at(5)), NEW);
        // A stale handle does nothing, even once its slot is reused.
        let e = ct
            .commit(&udp((host(62), 1), (SERVER, 53), 10), 2, 8, at(5))
            .unwrap();
        assert!(!ct.remove(b));
        assert!(ct.conn(e, at(5)).is_some());
        assert!(ct.remove(e));
        assert_eq!(ct.stats().removed, 3);
        // Stale wheel entries of removed connections are harmless.
        assert_eq!(expire_all(&mut ct, at(8000)), 1);
        assert!(ct.is_empty());
    }

    #[test]
    fn expire_is_bounded_per_call() {
        let t0 = Instant::now();
        let mut ct = Conntrack::new(CtConfig {
            expire_budget: 10,
            ..CtConfig::default()
        });
        for port in 0..35 {
            ct.commit(&udp((host(70), port), (SERVER, 53), 1), 0, 0, t0)
                .unwrap();
        }
        let later = t0 + Duration::from_secs(40);
        let mut calls = Vec::new();
        while !ct.is_empty() {
            calls.push(ct.expire(later));
        }
        assert_eq!(calls, [10, 10, 10, 5]);
        assert_eq!(ct.stats().expired, 35);
        // Refreshed connections stay; after a long idle gap the wheel skips ahead.
        let id = ct
            .commit(&udp((host(70), 1), (SERVER, 53), 1), 0, 0, later)
            .unwrap();
        for s in (20..=200).step_by(20) {
            let now = later + Duration::from_secs(s);
            ct.lookup(&udp((host(70), 1), (SERVER, 53), 1), now);
            assert_eq!(ct.expire(now), 0);
        }
        assert!(ct.conn(id, later).is_some());
        assert_eq!(ct.expire(later + Duration::from_secs(100_000)), 1);
    }

    #[test]
    fn memory_per_connection() {
        let entry = size_of::<Entry>();
        // Index: one 4-byte bucket per connection, 3/8 to 3/4 full.
        let (best, worst) = (
            entry as f64 + 4.0 * 4.0 / 3.0,
            entry as f64 + 4.0 * 8.0 / 3.0,
        );
        println!("entry {entry} bytes; with the index {best:.1}..{worst:.1} bytes per connection");
        // Keep the module doc's numbers honest.
        assert!(entry <= 112, "entry {entry}");
        assert!(worst <= 123.0);
        let now = Instant::now();
        let mut ct = Conntrack::new(CtConfig::default());
        for n in 0..100_000 {
            ct.commit(&spoofed_syn(n), n % 16, 0, now).unwrap();
        }
        let per = ct.memory_bytes() as f64 / ct.len() as f64;
        println!(
            "measured: {per:.1} bytes per connection at 100,000 ({} bytes)",
            ct.memory_bytes()
        );
        assert!(per <= 128.0, "{per}");
        // Churn (a SYN flood at the cap) does not grow the index.
        ct.set_config(CtConfig {
            max_conns: 100_000,
            ..CtConfig::default()
        });
        let before = ct.memory_bytes();
        for n in 100_000..400_000 {
            ct.commit(&spoofed_syn(n), n % 16, 0, now).unwrap();
        }
        assert_eq!((ct.len(), ct.memory_bytes()), (100_000, before));
    }

    proptest! {
        /// The index against a map, with hashes crowded into a few buckets at the end of
        /// the table so that probe runs wrap around and removals shift across the end.
        #[test]
        fn index_matches_a_map(ops in prop::collection::vec((prop::bool::weighted(0.7), 0..1200u32, 0..16u64), 1..1500)) {
            let mut hashes = vec![0u64; 1200];
            let mut model: StdMap<u32, u64> = StdMap::new();
            let mut index = Index::default();
            for (n, (add, slot, spread)) in ops.into_iter().enumerate() {
                if add && !model.contains_key(&slot) {
                    // Homes in the last 16 buckets of whichever size; tags vary.
                    let h = u64::from(slot) << 56 | (u64::MAX >> 8) & !15 | spread;
                    hashes[slot as usize] = h;
                    model.insert(slot, h);
                    index.insert(h, slot, |j| hashes[j as usize]);
                } else if let Some(h) = model.remove(&slot) {
                    prop_assert!(index.remove(h, slot, |j| hashes[j as usize]));
                    prop_assert!(!index.remove(h, slot, |j| hashes[j as usize]));
                }
                prop_assert_eq!(index.len, model.len());
                prop_assert!(index.len * 4 <= index.buckets.len() * 3);
                if n % 100 == 0 {
                    for (&slot, &h) in &model {
                        prop_assert_eq!(index.find(h, |j| j == slot), Some(slot));
                    }
                }
            }
            for (&slot, &h) in &model {
                prop_assert_eq!(index.find(h, |j| j == slot), Some(slot));
            }
            let used = index.buckets.iter().filter(|&&b| b != EMPTY).count();
            prop_assert_eq!(used, model.len());
        }
    }

    // ---- Properties ----

    fn exercise(pkt: &Packet) {
        let now = Instant::now();
        let mut ct = Conntrack::new(CtConfig {
            loose: true,
            ..CtConfig::default()
        });
        let v = ct.lookup(pkt, now);
        if v == NEW {
            ct.commit(pkt, 0, 0, now).unwrap();
        } else {
            assert!(ct.commit(pkt, 0, 0, now).is_err() || matches!(pkt.l4, L4::Udp | L4::Other));
        }
        ct.lookup(pkt, now);
        let total: u64 = ct.stats().invalid.iter().sum();
        assert!(total <= 2);
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_bytes(
            bytes in prop::collection::vec(any::<u8>(), 0..120),
            header_len in 0usize..200,
            total_len in 0usize..200,
            offset in 0usize..100,
        ) {
            if let Ok(hdr) = ipv4::parse(&bytes) {
                exercise(&Packet::parse(&bytes, &hdr));
            }
            let hdr = Header {
                header_len,
                total_len,
                ttl: 1,
                protocol: bytes.first().copied().unwrap_or(6) % 3 * 8 % 23,
                src: host(1),
                dst: SERVER,
                dont_fragment: false,
                fragment: offset % 2 == 0,
                fragment_offset: offset % 3,
            };
            exercise(&Packet::parse(&bytes, &hdr));
        }

        #[test]
        fn parse_never_panics_behind_a_valid_header(
            proto in prop_oneof![Just(IPPROTO_ICMP), Just(IPPROTO_TCP), Just(IPPROTO_UDP), any::<u8>()],
            frag in prop_oneof![Just(0u16), Just(0x2000), Just(0x4000), any::<u16>()],
            l4 in prop::collection::vec(any::<u8>(), 0..100),
        ) {
            exercise(&parse(&ip_packet(proto, host(1), SERVER, frag, &l4)));
        }

        #[test]
        fn icmp_errors_never_panic(
            ty in prop_oneof![Just(3u8), Just(4), Just(5), Just(11), Just(12)],
            inner in prop::collection::vec(any::<u8>(), 0..60),
            vihl in prop_oneof![Just(0x45u8), any::<u8>()],
            proto in prop_oneof![Just(IPPROTO_ICMP), Just(IPPROTO_TCP), Just(IPPROTO_UDP), any::<u8>()],
        ) {
            let mut inner = inner;
            if inner.len() > 9 {
                inner[0] = vihl;
                inner[9] = proto;
            }
            let mut m = vec![ty, 0, 0, 0, 0, 0, 0, 0];
            m.extend_from_slice(&inner);
            exercise(&parse(&ip_packet(IPPROTO_ICMP, ROUTER, host(1), 0, &m)));
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Tcp {
            conv: usize,
            side: usize,
            flags: u8,
            len: u16,
            jitter: Option<i32>,
        },
        Udp {
            host: u8,
            port: u8,
            reply: bool,
        },
        Icmp {
            host: u8,
            reply: bool,
        },
        Error {
            conv: usize,
            side: usize,
        },
        Advance(u16),
        Expire,
        Retain(u8),
        Remove(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let flags = prop_oneof![
            3 => Just(SYN),
            2 => Just(SYN | ACK),
            6 => Just(ACK),
            3 => Just(PSH | ACK),
            2 => Just(FIN | ACK),
            1 => Just(RST),
            1 => Just(RST | ACK),
            1 => any::<u8>(),
        ];
        prop_oneof![
            10 => (0..8usize, 0..2usize, flags, prop_oneof![Just(0u16), 1..3000u16], prop::option::weighted(0.2, -100_000..100_000i32))
                .prop_map(|(conv, side, flags, len, jitter)| Op::Tcp { conv, side, flags, len, jitter }),
            3 => (1..6u8, 0..3u8, any::<bool>()).prop_map(|(host, port, reply)| Op::Udp { host, port, reply }),
            2 => (1..4u8, any::<bool>()).prop_map(|(host, reply)| Op::Icmp { host, reply }),
            1 => (0..8usize, 0..2usize).prop_map(|(conv, side)| Op::Error { conv, side }),
            2 => (0..200u16).prop_map(Op::Advance),
            1 => Just(Op::Expire),
            1 => any::<u8>().prop_map(Op::Retain),
            1 => any::<usize>().prop_map(Op::Remove),
        ]
    }

    fn walk(ct: &Conntrack, head: u32, link: fn(&Entry) -> Link) -> Vec<u32> {
        let mut out = Vec::new();
        let mut prev = NIL;
        let mut i = head;
        while i != NIL {
            let l = link(ct.slab.get(i));
            assert_eq!(l.prev, prev, "list links");
            out.push(i);
            prev = i;
            i = l.next;
            assert!(out.len() <= ct.slab.used as usize, "list cycle");
        }
        out
    }

    fn check_invariants(ct: &Conntrack) {
        let live: Vec<u32> = (0..ct.slab.used)
            .filter(|&i| ct.slab.get(i).is_live())
            .collect();
        let s = ct.stats();
        assert_eq!(live.len(), s.connections);
        assert_eq!(ct.index.len, live.len());
        assert!(s.connections <= ct.cfg.max_conns);
        assert_eq!(
            s.created - s.expired - s.early_drops - s.removed - s.reopened,
            s.connections as u64
        );
        let mut by_state = [0usize; ConnState::COUNT];
        let mut zones: StdMap<u32, (usize, usize)> = StdMap::new();
        let mut candidates = 0;
        for &i in &live {
            let e = ct.slab.get(i);
            by_state[usize::from(e.state) - 1] += 1;
            let z = zones.entry(e.zone).or_default();
            z.0 += 1;
            let icmp = (e.proto == IPPROTO_ICMP).then_some(Direction::Original);
            assert_eq!(
                ct.find(&ct.probe(e.key(), icmp)),
                Some((i, Direction::Original))
            );
            assert_eq!(e.evictable(), e.flags & E_LISTED != 0);
            if e.evictable() {
                candidates += 1;
                z.1 += 1;
            }
        }
        assert_eq!(by_state, s.by_state);
        assert_eq!(ct.zones.len(), zones.len());
        for (zone, (n, listed)) in &zones {
            assert_eq!(ct.zone_len(*zone), *n);
            assert!(*n <= ct.cfg.max_conns_per_zone);
            let list = walk(ct, ct.zones[zone].drop.head, |e| e.drop_zone);
            assert_eq!(list.len(), *listed);
            assert_eq!(
                list.last().copied().unwrap_or(NIL),
                ct.zones[zone].drop.tail
            );
            assert!(list.iter().all(|&i| ct.slab.get(i).zone == *zone));
        }
        let all = walk(ct, ct.drop_all.head, |e| e.drop_all);
        assert_eq!(all.len(), candidates);
        assert_eq!(all.last().copied().unwrap_or(NIL), ct.drop_all.tail);
        // Every live entry is filed in the wheel exactly once.
        let mut filed = 0;
        for (slot, &head) in ct.wheel.heads.iter().enumerate() {
            let mut prev = WHEEL_HEAD | slot as u32;
            let mut i = head;
            while i != NIL {
                let e = ct.slab.get(i);
                assert!(e.is_live());
                assert_eq!(e.wheel.prev, prev);
                filed += 1;
                prev = i;
                i = e.wheel.next;
            }
        }
        assert_eq!(filed, live.len());
        let mut free = 0;
        let mut i = ct.slab.free;
        while i != NIL {
            assert!(!ct.slab.get(i).is_live());
            free += 1;
            i = ct.slab.get(i).wheel.next;
        }
        assert_eq!(free + live.len(), ct.slab.used as usize);
    }

    /// Connections that an early drop must never take.
    fn protected(ct: &Conntrack) -> Vec<ConnId> {
        (0..ct.slab.used)
            .filter(|&i| ct.slab.get(i).is_live() && !ct.slab.get(i).evictable())
            .map(|i| ct.id(i))
            .collect()
    }

    proptest! {
        #[test]
        fn random_traffic_keeps_the_table_consistent(
            ops in prop::collection::vec(op(), 1..250),
            loose in any::<bool>(),
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut ct = Conntrack::new(CtConfig {
                max_conns: 10,
                max_conns_per_zone: 5,
                loose,
                expire_budget: 3,
                ..CtConfig::default()
            });
            let mut convs: Vec<Conv> = (0..8).map(|n| {
                let mut c = Conv::new(700 + n);
                c.ends[0].0 = host(1 + n as u8 % 3);
                c.wscale = [Some(n as u8 % 4), (n % 3 != 0).then_some(2)];
                c
            }).collect();
            for op in ops {
                let (pkt, zone) = match op {
                    Op::Tcp { conv, side, flags, len, jitter } => {
                        let c = &mut convs[conv];
                        let p = match jitter {
                            Some(j) => c.at(side, flags, c.seq[side].wrapping_add(j as u32), usize::from(len)),
                            None => c.send(side, flags, usize::from(len)),
                        };
                        (Some(p), conv as u32 % 3)
                    }
                    Op::Udp { host: h, port, reply } => {
                        let (a, b) = ((host(h), u16::from(port)), (SERVER, 53));
                        (Some(if reply { udp(b, a, 5) } else { udp(a, b, 5) }), u32::from(h) % 3)
                    }
                    Op::Icmp { host: h, reply } => {
                        let p = if reply { icmp(SERVER, host(h), 0, 1) } else { icmp(host(h), SERVER, 8, 1) };
                        (Some(p), u32::from(h) % 3)
                    }
                    Op::Error { conv, side } => {
                        let c = &convs[conv];
                        let about = c.bytes(side, ACK, c.seq[side].wrapping_sub(1), c.seq[1 - side], 0);
                        (Some(icmp_error(ROUTER, c.ends[side].0, 3, 4, &about, 28)), 0)
                    }
                    Op::Advance(s) => {
                        now += Duration::from_secs(u64::from(s));
                        (None, 0)
                    }
                    Op::Expire => {
                        ct.expire(now);
                        (None, 0)
                    }
                    Op::Retain(x) => {
                        ct.retain(now, |i| (i.key.sport as u8 ^ x) & 3 != 0);
                        (None, 0)
                    }
                    Op::Remove(pick) => {
                        let ids: Vec<ConnId> = ct.conns(now).map(|i| i.id).collect();
                        if !ids.is_empty() {
                            prop_assert!(ct.remove(ids[pick % ids.len()]));
                        }
                        (None, 0)
                    }
                };
                if let Some(pkt) = pkt {
                    let v = ct.lookup(&pkt, now);
                    if v == NEW {
                        let keep = protected(&ct);
                        let r = ct.commit(&pkt, zone, 0, now);
                        prop_assert!(matches!(r, Ok(_) | Err(CtError::ZoneFull | CtError::TableFull)), "{r:?}");
                        for id in keep {
                            prop_assert!(ct.conn(id, now).is_some(), "an assured connection was dropped early");
                        }
                        if let Ok(id) = r {
                            prop_assert_eq!(ct.lookup(&pkt, now).conn, Some(id));
                        }
                    }
                }
                check_invariants(&ct);
            }
            // Everything goes eventually.
            let end = now + Duration::from_secs(8000);
            for _ in 0..10_000 {
                if ct.is_empty() {
                    break;
                }
                ct.expire(end);
            }
            prop_assert!(ct.is_empty());
            check_invariants(&ct);
        }
    }
}
