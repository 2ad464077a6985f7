//! Steering packets to worker threads in the kernel, by a symmetric hash of the inner flow.
//!
//! Connection tracking, NAT sessions and learned state are per worker (see DESIGN.md,
//! "Workers"), so both directions of a flow must reach the same worker. The kernel already
//! spreads packets over a group of sockets — one per worker — and lets a classic BPF program
//! pick the socket; we give it one that hashes the *inner* flow symmetrically:
//!
//! ```text
//! IPv4:   h = src ^ dst                    (^ (sport ^ dport) for TCP/UDP, unfragmented)
//! IPv6:   h = src[0..4] ^ .. ^ dst[3]      (^ (sport ^ dport) when the next header is TCP/UDP)
//! other:  h = dst MAC[2..6] ^ src MAC[2..6]
//! worker = mix(h ^ h >> 16) % workers      (mix: multiply by 2^32/phi, keep bits 16..31)
//! ```
//!
//! XOR commutes, so swapping source and destination leaves every term unchanged. IPv4
//! fragments (offset or MF set) hash without ports, so all fragments of a datagram stay together.
//!
//! Two attach points run the same program, generated once by `flow_hash_program` from the
//! position of the inner Ethernet header, so they cannot diverge:
//!
//! - The UDP underlay: `SO_REUSEPORT` sockets on the VXLAN port with
//!   `SO_ATTACH_REUSEPORT_CBPF` ([`attach_reuseport`]). The kernel runs the program with the
//!   data pointer at the UDP payload, i.e. the 8-byte VXLAN header, so the inner frame starts
//!   at offset 8. The result indexes the group's sockets in bind order; an index past the
//!   end makes the kernel fall back to its own (asymmetric) hash.
//! - AF_PACKET trunk ports: a `PACKET_FANOUT_CBPF` group ([`join_fanout`]). The fanout runs
//!   before `packet_rcv` pushes the link-layer header back, so on receive the data pointer is
//!   at the *network* header. The program therefore addresses the frame relative to the MAC
//!   header through the `SKF_LL_OFF` window (linux/filter.h), which is right on both receive
//!   and transmit. By then the kernel has usually moved the outer 802.1Q tag into skb
//!   metadata; a tag still inline (an unstripped one, or the inner tag of QinQ) is skipped.
//!
//! A load past the end of the packet makes the kernel end the program with 0, i.e. worker 0:
//! runts and garbage are steered, never rejected.

use std::io;
use std::mem;
use std::os::fd::RawFd;

use libc::{c_int, c_void, sock_filter, sock_fprog};

/// Offset of the inner Ethernet header in a VXLAN UDP payload (RFC 7348 §5).
const VXLAN_HEADER_LEN: u32 = 8;

/// Offsets in the Ethernet frame and its IP headers.
mod field {
    /// The last 4 bytes of the destination MAC.
    pub const DST_MAC_LOW: u32 = 2;
    /// The last 4 bytes of the source MAC.
    pub const SRC_MAC_LOW: u32 = 8;
    /// EtherType (or TPID of an inline tag).
    pub const ETHERTYPE: u32 = 12;
    pub const ETH_HEADER_LEN: u32 = 14;
    pub const VLAN_TAG_LEN: u32 = 4;

    pub const IPV4_FRAG: u32 = 6;
    pub const IPV4_PROTO: u32 = 9;
    pub const IPV4_SRC: u32 = 12;
    pub const IPV4_DST: u32 = 16;

    pub const IPV6_NEXT_HEADER: u32 = 6;
    pub const IPV6_SRC: u32 = 8;
    pub const IPV6_HEADER_LEN: u32 = 40;
}

const ETHERTYPE_IPV4: u32 = 0x0800;
const ETHERTYPE_IPV6: u32 = 0x86dd;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
/// IPv4 More Fragments flag and fragment offset (RFC 791 §3.1).
const IPV4_MF_AND_OFFSET: u32 = 0x3fff;
/// 2^32 / golden ratio: spreads the folded hash before the modulo (Knuth's multiplicative hash).
const MIX: u32 = 0x9e37_79b1;

/// The program for `SO_ATTACH_REUSEPORT_CBPF` on the UDP sockets bound to the VXLAN port:
/// it returns the index (`0..workers`) of the socket that gets a datagram.
pub fn reuseport_program(workers: u32) -> Vec<sock_filter> {
    flow_hash_program(VXLAN_HEADER_LEN, workers)
}

/// The program for `PACKET_FANOUT_CBPF` on AF_PACKET sockets: the same hash as
/// [`reuseport_program`], over the frame itself.
pub fn fanout_program(workers: u32) -> Vec<sock_filter> {
    flow_hash_program(libc::SKF_LL_OFF as u32, workers)
}

/// Attach [`reuseport_program`] to the `SO_REUSEPORT` group of the UDP socket `fd` (any
/// member: the program belongs to the group). Sockets are indexed in the order they bound.
pub fn attach_reuseport(fd: RawFd, workers: u32) -> io::Result<()> {
    let mut prog = reuseport_program(workers);
    set_program(
        fd,
        libc::SOL_SOCKET,
        libc::SO_ATTACH_REUSEPORT_CBPF,
        &mut prog,
    )
    .map_err(|e| context(e, "attaching the reuseport steering program"))
}

/// Join the AF_PACKET socket `fd` (bound to an interface) to fanout group `group_id` in
/// `PACKET_FANOUT_CBPF` mode and attach [`fanout_program`]. Sockets are indexed in the order
/// they joined.
///
/// The group ignores outgoing packets (`PACKET_FANOUT_FLAG_IGNORE_OUTGOING`): a member's own
/// `PACKET_IGNORE_OUTGOING` does not apply once the group's hook replaces the socket's.
/// Every member must join with the same mode and flags, so only join through this function.
/// Until the program is attached (right after the join) the group sends everything to
/// member 0.
///
/// `group_id` 0 asks the kernel for a fresh group id no other socket in the namespace uses
/// (`PACKET_FANOUT_FLAG_UNIQUEID`, Linux 4.2), so two processes never share a group by
/// accident; read it back with [`fanout_id`] and give it to the other members.
pub fn join_fanout(fd: RawFd, group_id: u16, workers: u32) -> io::Result<()> {
    // linux/if_packet.h
    const PACKET_FANOUT_FLAG_UNIQUEID: u32 = 0x2000;
    let mut type_flags = libc::PACKET_FANOUT_CBPF | libc::PACKET_FANOUT_FLAG_IGNORE_OUTGOING;
    if group_id == 0 {
        type_flags |= PACKET_FANOUT_FLAG_UNIQUEID;
    }
    let arg = (u32::from(group_id) | (type_flags << 16)) as c_int;
    // SAFETY: `arg` is a live c_int and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_FANOUT,
            (&raw const arg).cast::<c_void>(),
            mem::size_of::<c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(context(
            io::Error::last_os_error(),
            format_args!("joining AF_PACKET fanout group {group_id}"),
        ));
    }
    let mut prog = fanout_program(workers);
    set_program(fd, libc::SOL_PACKET, libc::PACKET_FANOUT_DATA, &mut prog).map_err(|e| {
        context(
            e,
            format_args!("attaching the steering program to fanout group {group_id}"),
        )
    })
}

/// The id of the fanout group a socket joined (`getsockopt(PACKET_FANOUT)`: the id in the
/// low 16 bits).
pub fn fanout_id(fd: RawFd) -> io::Result<u16> {
    let mut v: c_int = 0;
    let mut len = mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: `v` is a live c_int and `len` its size; the kernel writes at most that.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_FANOUT,
            (&raw mut v).cast::<c_void>(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((v as u32 & 0xffff) as u16)
}

fn set_program(fd: RawFd, level: c_int, name: c_int, prog: &mut [sock_filter]) -> io::Result<()> {
    let fprog = sock_fprog {
        len: prog.len() as libc::c_ushort,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `prog.len()` instructions that outlive the call (the kernel
    // copies them) and the length passed is the size of `fprog`.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const fprog).cast::<c_void>(),
            mem::size_of::<sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn context(err: io::Error, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(err.kind(), format!("{what}: {err}"))
}

/// Generate the flow-hash program for a packet whose inner Ethernet header starts at `eth` in
/// the program's address space (wrapping, so that `SKF_LL_OFF` works as a base).
///
/// Scratch memory: `M[0]` holds the address hash while the ports are loaded.
fn flow_hash_program(eth: u32, workers: u32) -> Vec<sock_filter> {
    use libc::{
        BPF_A, BPF_ABS, BPF_ALU, BPF_AND, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K,
        BPF_LD, BPF_MEM, BPF_MISC, BPF_MOD, BPF_MUL, BPF_RET, BPF_RSH, BPF_ST, BPF_TAX, BPF_W,
        BPF_X, BPF_XOR,
    };
    let at = |off: u32| eth.wrapping_add(off);
    let workers = workers.max(1);

    let mut asm = Asm::default();
    let tagged = asm.label();
    let untagged = asm.label();
    let not_ctag = asm.label();
    let mac = asm.label();
    let mix = asm.label();

    // One inline tag (0x8100, or 0x88a8 of an unstripped QinQ outer tag) moves L3 by 4 bytes.
    asm.stmt(BPF_LD | BPF_H | BPF_ABS, at(field::ETHERTYPE));
    asm.jump(
        BPF_JMP | BPF_JEQ | BPF_K,
        u32::from(crate::wire::vlan::TPID),
        tagged,
        not_ctag,
    );
    asm.bind(not_ctag);
    asm.jump(
        BPF_JMP | BPF_JEQ | BPF_K,
        u32::from(crate::wire::vlan::TPID_QINQ),
        tagged,
        untagged,
    );

    for (label, l3) in [
        (untagged, field::ETH_HEADER_LEN),
        (tagged, field::ETH_HEADER_LEN + field::VLAN_TAG_LEN),
    ] {
        asm.bind(label);
        let l3 = at(l3);
        let ip = |off: u32| l3.wrapping_add(off);
        let v4 = asm.label();
        let not_v4 = asm.label();
        let v6 = asm.label();

        asm.stmt(BPF_LD | BPF_H | BPF_ABS, l3.wrapping_sub(2)); // EtherType
        asm.jump(BPF_JMP | BPF_JEQ | BPF_K, ETHERTYPE_IPV4, v4, not_v4);
        asm.bind(not_v4);
        asm.jump(BPF_JMP | BPF_JEQ | BPF_K, ETHERTYPE_IPV6, v6, mac);

        // IPv4: A = src ^ dst.
        asm.bind(v4);
        asm.stmt(BPF_LD | BPF_W | BPF_ABS, ip(field::IPV4_SRC));
        asm.stmt(BPF_MISC | BPF_TAX, 0);
        asm.stmt(BPF_LD | BPF_W | BPF_ABS, ip(field::IPV4_DST));
        asm.stmt(BPF_ALU | BPF_XOR | BPF_X, 0);
        let ports = asm.label();
        let addrs_only = asm.label();
        let not_tcp = asm.label();
        let unfragmented = asm.label();
        asm.stmt(BPF_ST, 0);
        asm.stmt(BPF_LD | BPF_B | BPF_ABS, ip(field::IPV4_PROTO));
        asm.jump(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_TCP, ports, not_tcp);
        asm.bind(not_tcp);
        asm.jump(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_UDP, ports, addrs_only);
        asm.bind(ports);
        asm.stmt(BPF_LD | BPF_H | BPF_ABS, ip(field::IPV4_FRAG));
        asm.jump(
            BPF_JMP | BPF_JSET | BPF_K,
            IPV4_MF_AND_OFFSET,
            addrs_only,
            unfragmented,
        );
        asm.bind(unfragmented);
        // X = IHL * 4; A = sport << 16 | dport.
        asm.stmt(libc::BPF_LDX | BPF_B | libc::BPF_MSH, l3);
        asm.stmt(BPF_LD | BPF_W | BPF_IND, l3);
        fold_ports_and_combine(&mut asm, mix);
        asm.bind(addrs_only);
        asm.stmt(BPF_LD | BPF_MEM, 0);
        asm.jump_always(mix);

        // IPv6: A = XOR of the eight 32-bit words of src and dst.
        asm.bind(v6);
        let words = 2 * 16 / 4;
        asm.stmt(BPF_LD | BPF_W | BPF_ABS, ip(field::IPV6_SRC));
        for w in 1..words {
            asm.stmt(BPF_MISC | BPF_TAX, 0);
            asm.stmt(BPF_LD | BPF_W | BPF_ABS, ip(field::IPV6_SRC + 4 * w));
            asm.stmt(BPF_ALU | BPF_XOR | BPF_X, 0);
        }
        let ports = asm.label();
        let addrs_only = asm.label();
        let not_tcp = asm.label();
        asm.stmt(BPF_ST, 0);
        asm.stmt(BPF_LD | BPF_B | BPF_ABS, ip(field::IPV6_NEXT_HEADER));
        asm.jump(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_TCP, ports, not_tcp);
        asm.bind(not_tcp);
        asm.jump(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_UDP, ports, addrs_only);
        asm.bind(ports);
        asm.stmt(BPF_LD | BPF_W | BPF_ABS, ip(field::IPV6_HEADER_LEN));
        fold_ports_and_combine(&mut asm, mix);
        asm.bind(addrs_only);
        asm.stmt(BPF_LD | BPF_MEM, 0);
        asm.jump_always(mix);
    }

    // Neither IPv4 nor IPv6 (ARP, LLDP, ...): A = the low 4 bytes of dst MAC ^ src MAC.
    asm.bind(mac);
    asm.stmt(BPF_LD | BPF_W | BPF_ABS, at(field::DST_MAC_LOW));
    asm.stmt(BPF_MISC | BPF_TAX, 0);
    asm.stmt(BPF_LD | BPF_W | BPF_ABS, at(field::SRC_MAC_LOW));
    asm.stmt(BPF_ALU | BPF_XOR | BPF_X, 0);

    // A = mix((A ^ A >> 16) & 0xffff) % workers.
    asm.bind(mix);
    asm.stmt(BPF_MISC | BPF_TAX, 0);
    asm.stmt(BPF_ALU | BPF_RSH | BPF_K, 16);
    asm.stmt(BPF_ALU | BPF_XOR | BPF_X, 0);
    asm.stmt(BPF_ALU | BPF_AND | BPF_K, 0xffff);
    asm.stmt(BPF_ALU | BPF_MUL | BPF_K, MIX);
    asm.stmt(BPF_ALU | BPF_RSH | BPF_K, 16);
    asm.stmt(BPF_ALU | BPF_MOD | BPF_K, workers);
    asm.stmt(BPF_RET | BPF_A, 0);
    asm.finish()
}

/// With `A = sport << 16 | dport`: `A = M[0] ^ (sport ^ dport)`, then jump to `mix`.
fn fold_ports_and_combine(asm: &mut Asm, mix: Label) {
    use libc::{
        BPF_ALU, BPF_AND, BPF_K, BPF_LD, BPF_MEM, BPF_MISC, BPF_RSH, BPF_TAX, BPF_X, BPF_XOR,
    };
    asm.stmt(BPF_MISC | BPF_TAX, 0);
    asm.stmt(BPF_ALU | BPF_RSH | BPF_K, 16);
    asm.stmt(BPF_ALU | BPF_XOR | BPF_X, 0);
    asm.stmt(BPF_ALU | BPF_AND | BPF_K, 0xffff);
    asm.stmt(BPF_MISC | BPF_TAX, 0);
    asm.stmt(BPF_LD | BPF_MEM, 0);
    asm.stmt(BPF_ALU | BPF_XOR | BPF_X, 0);
    asm.jump_always(mix);
}

/// A forward-only label in an [`Asm`] program.
#[derive(Debug, Clone, Copy)]
struct Label(usize);

/// A tiny cBPF assembler: instructions plus forward labels resolved in [`Asm::finish`], so
/// that jump offsets are never counted by hand.
#[derive(Default)]
struct Asm {
    code: Vec<sock_filter>,
    labels: Vec<Option<usize>>,
    /// (instruction, jump-if-true target, jump-if-false target); an unconditional jump has
    /// both the same and is resolved into `k`.
    fixups: Vec<(usize, Label, Label)>,
}

impl Asm {
    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    fn bind(&mut self, label: Label) {
        self.labels[label.0] = Some(self.code.len());
    }

    fn stmt(&mut self, code: u32, k: u32) {
        self.code.push(sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        });
    }

    fn jump(&mut self, code: u32, k: u32, jt: Label, jf: Label) {
        self.fixups.push((self.code.len(), jt, jf));
        self.stmt(code, k);
    }

    fn jump_always(&mut self, to: Label) {
        self.fixups.push((self.code.len(), to, to));
        self.stmt(libc::BPF_JMP | libc::BPF_JA, 0);
    }

    /// Resolve the jumps. The program shape is fixed, so a label left unbound or out of
    /// reach is a bug in the generator (and caught by the tests), not an input error.
    fn finish(mut self) -> Vec<sock_filter> {
        for &(at, jt, jf) in &self.fixups {
            let offset = |label: Label| -> u32 {
                let target = self.labels[label.0].expect("cBPF label bound");
                assert!(target > at, "cBPF jumps go forward");
                (target - at - 1) as u32
            };
            let insn = &mut self.code[at];
            if u32::from(insn.code) == libc::BPF_JMP | libc::BPF_JA {
                insn.k = offset(jt);
            } else {
                let (t, f) = (offset(jt), offset(jf));
                assert!(t <= 255 && f <= 255, "cBPF conditional jump within 255");
                insn.jt = t as u8;
                insn.jf = f as u8;
            }
        }
        assert!(self.code.len() <= libc::BPF_MAXINSNS as usize);
        self.code
    }
}

/// A userspace interpreter of classic BPF as the kernel runs it on a socket buffer, to test
/// the programs without a kernel.
#[cfg(test)]
pub(crate) mod interp {
    use libc::sock_filter;

    /// Run `prog` on a packet: `ll` is the frame from its link-layer header and the data
    /// pointer (offset 0 of absolute loads) is at `ll[data..]`. Like the kernel, a load out of
    /// bounds (or a division by zero) ends the program with 0. Never panics.
    pub(crate) fn run(prog: &[sock_filter], ll: &[u8], data: usize) -> u32 {
        use libc::*;
        let mut a: u32 = 0;
        let mut x: u32 = 0;
        let mut mem = [0u32; BPF_MEMWORDS as usize];
        let mut pc = 0usize;
        while let Some(insn) = prog.get(pc) {
            pc += 1;
            let code = u32::from(insn.code);
            let k = insn.k;
            let class = code & 0x07;
            let size = match code & 0x18 {
                BPF_W => 4,
                BPF_H => 2,
                _ => 1,
            };
            let mode = code & 0xe0;
            let src_x = code & BPF_X != 0;
            match class {
                BPF_LD => {
                    a = match mode {
                        BPF_ABS => match load(ll, data, k as i32, size) {
                            Some(v) => v,
                            None => return 0,
                        },
                        BPF_IND => match load(ll, data, x.wrapping_add(k) as i32, size) {
                            Some(v) => v,
                            None => return 0,
                        },
                        BPF_LEN => ll.len().saturating_sub(data) as u32,
                        BPF_IMM => k,
                        BPF_MEM => match mem.get(k as usize) {
                            Some(&v) => v,
                            None => return 0,
                        },
                        _ => return 0,
                    }
                }
                BPF_LDX => {
                    x = match mode {
                        BPF_IMM => k,
                        BPF_MEM => match mem.get(k as usize) {
                            Some(&v) => v,
                            None => return 0,
                        },
                        BPF_LEN => ll.len().saturating_sub(data) as u32,
                        BPF_MSH => match load(ll, data, k as i32, 1) {
                            Some(v) => (v & 0xf) << 2,
                            None => return 0,
                        },
                        _ => return 0,
                    }
                }
                BPF_ST | BPF_STX => match mem.get_mut(k as usize) {
                    Some(m) => *m = if class == BPF_ST { a } else { x },
                    None => return 0,
                },
                BPF_ALU => {
                    let operand = if src_x { x } else { k };
                    a = match code & 0xf0 {
                        BPF_ADD => a.wrapping_add(operand),
                        BPF_SUB => a.wrapping_sub(operand),
                        BPF_MUL => a.wrapping_mul(operand),
                        BPF_DIV => match a.checked_div(operand) {
                            Some(v) => v,
                            None => return 0,
                        },
                        BPF_MOD => match a.checked_rem(operand) {
                            Some(v) => v,
                            None => return 0,
                        },
                        BPF_OR => a | operand,
                        BPF_AND => a & operand,
                        BPF_XOR => a ^ operand,
                        BPF_LSH => a.checked_shl(operand).unwrap_or(0),
                        BPF_RSH => a.checked_shr(operand).unwrap_or(0),
                        BPF_NEG => a.wrapping_neg(),
                        _ => return 0,
                    }
                }
                BPF_JMP => {
                    let operand = if src_x { x } else { k };
                    let taken = match code & 0xf0 {
                        BPF_JA => {
                            pc = pc.saturating_add(k as usize);
                            continue;
                        }
                        BPF_JEQ => a == operand,
                        BPF_JGT => a > operand,
                        BPF_JGE => a >= operand,
                        BPF_JSET => a & operand != 0,
                        _ => return 0,
                    };
                    pc += usize::from(if taken { insn.jt } else { insn.jf });
                }
                BPF_RET => return if code & 0x18 == BPF_A { a } else { k },
                BPF_MISC => {
                    if code & 0xf8 == BPF_TXA {
                        a = x;
                    } else {
                        x = a;
                    }
                }
                _ => return 0,
            }
        }
        0
    }

    /// An absolute load as `bpf_skb_load_helper_*` does it: non-negative offsets from the
    /// data pointer, the `SKF_LL_OFF` window from the link-layer header; the network-header
    /// and ancillary windows are not modelled (they fail).
    fn load(ll: &[u8], data: usize, off: i32, size: usize) -> Option<u32> {
        let start = if off >= 0 {
            data.checked_add(off as usize)?
        } else if (libc::SKF_LL_OFF..libc::SKF_NET_OFF).contains(&off) {
            (off - libc::SKF_LL_OFF) as usize
        } else {
            return None;
        };
        let bytes = ll.get(start..start.checked_add(size)?)?;
        Some(bytes.iter().fold(0u32, |v, &b| v << 8 | u32::from(b)))
    }
}

/// Frames for the tests of this module and of the AF_PACKET fanout.
#[cfg(test)]
pub(crate) mod fixtures {
    pub(crate) const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    pub(crate) const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

    /// Ethernet (`MAC_A` to `MAC_B`) + IPv4 + 8 bytes of L4 (ports first), checksums zero.
    pub(crate) fn ipv4_frame(
        src: [u8; 4],
        dst: [u8; 4],
        proto: u8,
        sport: u16,
        dport: u16,
    ) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&MAC_B);
        f.extend_from_slice(&MAC_A);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0x45, 0, 0, 28, 0, 1, 0x40, 0, 64, proto, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0, 8, 0, 0]);
        f
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    use super::fixtures::{MAC_A, MAC_B, ipv4_frame};
    use super::interp::run;
    use super::*;

    fn ipv6_frame(src: Ipv6Addr, dst: Ipv6Addr, next: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&MAC_B);
        f.extend_from_slice(&MAC_A);
        f.extend_from_slice(&[0x86, 0xdd]);
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, next, 64]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0, 8, 0, 0]);
        f
    }

    /// Swap MACs, addresses and ports: the reply direction of `frame`.
    fn reverse(frame: &[u8]) -> Vec<u8> {
        let mut r = frame.to_vec();
        r[0..6].copy_from_slice(&frame[6..12]);
        r[6..12].copy_from_slice(&frame[0..6]);
        let (l3, et) = if frame[12..14] == [0x81, 0x00] {
            (18, [frame[16], frame[17]])
        } else {
            (14, [frame[12], frame[13]])
        };
        let (src, len, l4) = match et {
            [0x08, 0x00] => (l3 + 12, 4, l3 + usize::from(frame[l3] & 0xf) * 4),
            [0x86, 0xdd] => (l3 + 8, 16, l3 + 40),
            _ => return r,
        };
        r[src..src + len].copy_from_slice(&frame[src + len..src + 2 * len]);
        r[src + len..src + 2 * len].copy_from_slice(&frame[src..src + len]);
        r[l4..l4 + 2].copy_from_slice(&frame[l4 + 2..l4 + 4]);
        r[l4 + 2..l4 + 4].copy_from_slice(&frame[l4..l4 + 2]);
        r
    }

    fn tag(frame: &[u8], tpid: u16, tci: u16) -> Vec<u8> {
        let mut t = frame[..12].to_vec();
        t.extend_from_slice(&tpid.to_be_bytes());
        t.extend_from_slice(&tci.to_be_bytes());
        t.extend_from_slice(&frame[12..]);
        t
    }

    /// The fanout program as the kernel runs it on receive: data pointer at the L3 header.
    fn fanout(workers: u32, frame: &[u8]) -> u32 {
        run(&fanout_program(workers), frame, 14.min(frame.len()))
    }

    fn vxlan_payload(frame: &[u8]) -> Vec<u8> {
        let mut p = vec![0x08, 0, 0, 0, 0, 0x13, 0x89, 0];
        p.extend_from_slice(frame);
        p
    }

    /// A small deterministic generator (xorshift), so the tests need no extra crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn bytes<const N: usize>(&mut self) -> [u8; N] {
            let mut out = [0u8; N];
            for b in &mut out {
                *b = self.next() as u8;
            }
            out
        }
    }

    fn flows(n: usize) -> Vec<Vec<u8>> {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut out = Vec::new();
        for i in 0..n {
            let (sport, dport) = (rng.next() as u16, rng.next() as u16);
            let proto = if i % 2 == 0 { 6 } else { 17 };
            if i % 3 == 0 {
                let (s, d) = (rng.bytes::<16>(), rng.bytes::<16>());
                out.push(ipv6_frame(s.into(), d.into(), proto, sport, dport));
            } else {
                out.push(ipv4_frame(rng.bytes(), rng.bytes(), proto, sport, dport));
            }
        }
        out
    }

    #[test]
    fn programs_are_well_formed() {
        for workers in [0, 1, 2, 3, 8, 64] {
            for prog in [reuseport_program(workers), fanout_program(workers)] {
                assert!(prog.len() < 200);
                let last = prog.last().expect("non-empty program");
                assert_eq!(u32::from(last.code) & 0x07, libc::BPF_RET);
            }
        }
    }

    #[test]
    fn both_directions_of_a_flow_pick_the_same_worker() {
        for workers in [2, 3, 4, 7, 16] {
            for frame in flows(300) {
                let back = reverse(&frame);
                assert_ne!(frame, back);
                let w = fanout(workers, &frame);
                assert!(w < workers);
                assert_eq!(w, fanout(workers, &back), "frame {frame:02x?}");
                let tagged = tag(&frame, 0x8100, 100);
                assert_eq!(w, fanout(workers, &tagged), "an inline tag is skipped");
                assert_eq!(w, fanout(workers, &reverse(&tagged)));
                assert_eq!(w, fanout(workers, &tag(&frame, 0x88a8, 7)));
            }
        }
    }

    #[test]
    fn ports_and_addresses_both_count() {
        let a = [10, 0, 0, 1];
        let b = [10, 0, 0, 2];
        let workers = 4;
        let mut seen = [0usize; 4];
        for sport in 0..256u16 {
            let w = fanout(workers, &ipv4_frame(a, b, 6, 40000 + sport, 443));
            seen[w as usize] += 1;
        }
        assert!(
            seen.iter().all(|&n| n > 20),
            "ports spread one host pair: {seen:?}"
        );

        let mut seen = [0usize; 4];
        for host in 0..=255u8 {
            let w = fanout(workers, &ipv4_frame([10, 0, 1, host], b, 17, 5000, 53));
            seen[w as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 20), "hosts spread: {seen:?}");
    }

    #[test]
    fn flows_spread_over_workers() {
        for workers in [2, 4, 8] {
            let mut seen = vec![0usize; workers as usize];
            let frames = flows(800);
            for frame in &frames {
                seen[fanout(workers, frame) as usize] += 1;
            }
            let fair = frames.len() / workers as usize;
            assert!(
                seen.iter().all(|&n| n > fair / 2 && n < fair * 3 / 2),
                "{workers} workers: {seen:?}"
            );
        }
    }

    #[test]
    fn ipv4_fragments_hash_without_ports() {
        let workers = 16;
        let first = ipv4_frame([192, 0, 2, 1], [198, 51, 100, 7], 17, 1111, 2222);
        let mut first_mf = first.clone();
        first_mf[14 + 6] = 0x20; // MF, offset 0
        let mut later = first.clone();
        later[14 + 6] = 0x00;
        later[14 + 7] = 0xb9; // offset 185 * 8
        later[34..38].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]); // payload, not ports
        let addrs_only = ipv4_frame([192, 0, 2, 1], [198, 51, 100, 7], 47, 0, 0); // GRE
        let w = fanout(workers, &addrs_only);
        assert_eq!(fanout(workers, &first_mf), w);
        assert_eq!(fanout(workers, &later), w);
    }

    #[test]
    fn ipv6_without_ports_and_non_ip_frames() {
        let workers = 8;
        let s: Ipv6Addr = "2001:db8::1".parse().expect("address");
        let d: Ipv6Addr = "2001:db8::2".parse().expect("address");
        // ICMPv6: addresses only, still symmetric.
        let ping = ipv6_frame(s, d, 58, 0x8000, 0x1234);
        assert_eq!(fanout(workers, &ping), fanout(workers, &reverse(&ping)));

        // ARP reply A -> B and B -> A land together; the hash is the MACs' low 4 bytes.
        let mut arp = MAC_B.to_vec();
        arp.extend_from_slice(&MAC_A);
        arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
        arp.resize(42, 0);
        let w = fanout(workers, &arp);
        assert_eq!(w, fanout(workers, &reverse(&arp)));
        let low = |m: [u8; 6]| u32::from_be_bytes([m[2], m[3], m[4], m[5]]);
        let h = low(MAC_A) ^ low(MAC_B);
        let h = (h ^ h >> 16) & 0xffff;
        assert_eq!(w, (h.wrapping_mul(MIX) >> 16) % workers);
    }

    #[test]
    fn truncated_and_garbage_input_never_panics() {
        let mut samples = flows(6);
        samples.push(tag(&samples[0], 0x8100, 5));
        samples.push(tag(&samples[1], 0x88a8, 5));
        let workers = 5;
        let (rp, fp) = (reuseport_program(workers), fanout_program(workers));
        for frame in &samples {
            for len in 0..=frame.len() {
                let cut = &frame[..len];
                assert!(run(&fp, cut, 14.min(len)) < workers);
                assert!(run(&fp, cut, 0) < workers);
                assert!(run(&rp, &vxlan_payload(cut), 0) < workers);
                assert!(run(&rp, cut, 0) < workers);
            }
        }
        let mut rng = Rng(7);
        for _ in 0..2000 {
            let len = (rng.next() % 120) as usize;
            let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            assert!(run(&fp, &junk, (rng.next() % 20) as usize) < workers);
            assert!(run(&rp, &junk, 0) < workers);
        }
        // Not our programs: the interpreter itself must survive hostile code.
        let mut rng = Rng(99);
        for _ in 0..2000 {
            let prog: Vec<sock_filter> = (0..(rng.next() % 16))
                .map(|_| sock_filter {
                    code: rng.next() as u16,
                    jt: rng.next() as u8,
                    jf: rng.next() as u8,
                    k: rng.next() as u32,
                })
                .collect();
            run(&prog, &samples[0], 14);
        }
    }

    #[test]
    fn reuseport_on_vxlan_payload_equals_fanout_on_inner_frame() {
        for workers in [1, 2, 3, 8] {
            let rp = reuseport_program(workers);
            let mut frames = flows(200);
            frames.push(tag(&frames[0], 0x8100, 42));
            for frame in &frames {
                assert_eq!(
                    run(&rp, &vxlan_payload(frame), 0),
                    fanout(workers, frame),
                    "{frame:02x?}"
                );
                // On transmit the fanout data pointer is at the MAC header: same answer.
                assert_eq!(
                    run(&fanout_program(workers), frame, 0),
                    fanout(workers, frame)
                );
            }
        }
    }

    fn reuseport_socket(addr: SocketAddr) -> io::Result<socket2::Socket> {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        Ok(s)
    }

    /// The kernel's verifier accepts the program, and the kernel steers datagrams exactly as
    /// the interpreter predicts. Needs no privileges: loopback UDP only.
    #[test]
    fn kernel_steers_reuseport_datagrams_like_the_interpreter() {
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let first = reuseport_socket(any).expect("bind first socket");
        let addr = first
            .local_addr()
            .expect("local address")
            .as_socket()
            .expect("inet address");
        let second = reuseport_socket(addr).expect("bind second socket to the same port");
        let group: [UdpSocket; 2] = [first.into(), second.into()];
        attach_reuseport(group[0].as_raw_fd(), 2).expect("kernel accepts the program");
        // Attaching again (a reload) replaces the program.
        attach_reuseport(group[1].as_raw_fd(), 2).expect("kernel accepts the program again");

        let sender = UdpSocket::bind(any).expect("bind sender");
        let prog = reuseport_program(2);
        let mut hits = [0usize; 2];
        for (i, frame) in flows(24).iter().enumerate() {
            let mut payload = vxlan_payload(frame);
            payload.push(i as u8); // identifies the datagram
            let want = run(&prog, &payload, 0) as usize;
            sender.send_to(&payload, addr).expect("send");
            let deadline = Instant::now() + Duration::from_secs(2);
            let got = 'wait: loop {
                for (idx, sock) in group.iter().enumerate() {
                    let mut buf = [0u8; 256];
                    if let Ok(n) = sock.recv(&mut buf) {
                        assert_eq!(buf[..n], payload[..], "datagrams arrive in order");
                        break 'wait idx;
                    }
                }
                assert!(Instant::now() < deadline, "datagram {i} never arrived");
                std::thread::sleep(Duration::from_millis(1));
            };
            assert_eq!(
                got, want,
                "datagram {i} went to socket {got}, program says {want}"
            );
            hits[got] += 1;
        }
        assert!(hits.iter().all(|&n| n > 0), "both sockets used: {hits:?}");
    }
}
