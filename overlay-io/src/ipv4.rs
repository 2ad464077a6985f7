//! IPv4 forwarding helpers shared by every routed function (router, routed firewall,
//! load balancer): header validation as RFC 1812 §5.2.2 asks of a router, TTL decrement
//! with the incremental checksum update of RFC 1624, and a token bucket for ICMP errors
//! (RFC 1812 §4.3.2.8: a router "SHOULD be able to limit the rate at which it generates
//! ICMP error messages").

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::pipeline::DropReason;

mod field {
    use core::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const TOTAL_LEN: Range<usize> = 2..4;
    pub const FLAGS_FRAG: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

/// The minimum IPv4 header.
pub const MIN_HEADER_LEN: usize = 20;
/// Don't Fragment.
const FLAG_DF: u16 = 0x4000;
/// More Fragments.
const FLAG_MF: u16 = 0x2000;

/// What a router needs to know of an IPv4 header, read once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Header length in bytes (20..=60).
    pub header_len: usize,
    /// Total length from the header (header and payload).
    pub total_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// Protocol number.
    pub protocol: u8,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Don't Fragment set.
    pub dont_fragment: bool,
    /// A fragment (More Fragments set or a non-zero offset).
    pub fragment: bool,
    /// Fragment offset in bytes.
    pub fragment_offset: usize,
}

/// Check an IPv4 header the way RFC 1812 §5.2.2 asks a router to before forwarding:
/// long enough, version 4, header length at least 20 bytes, total length at least the
/// header length and no more than the bytes received, and a correct checksum. Bytes after
/// `total_len` (Ethernet padding) are allowed. Never panics.
pub fn parse(ip: &[u8]) -> Result<Header, DropReason> {
    if ip.len() < MIN_HEADER_LEN {
        return Err(DropReason::IpMalformed);
    }
    let vihl = ip[field::VER_IHL];
    let header_len = usize::from(vihl & 0x0f) * 4;
    let tl = &ip[field::TOTAL_LEN];
    let total_len = usize::from(u16::from_be_bytes([tl[0], tl[1]]));
    if vihl >> 4 != 4
        || header_len < MIN_HEADER_LEN
        || total_len < header_len
        || total_len > ip.len()
    {
        return Err(DropReason::IpMalformed);
    }
    if checksum(&ip[..header_len]) != 0 {
        return Err(DropReason::IpMalformed);
    }
    let ff = u16::from_be_bytes([ip[field::FLAGS_FRAG.start], ip[field::FLAGS_FRAG.start + 1]]);
    let src: [u8; 4] = ip[field::SRC]
        .try_into()
        .map_err(|_| DropReason::IpMalformed)?;
    let dst: [u8; 4] = ip[field::DST]
        .try_into()
        .map_err(|_| DropReason::IpMalformed)?;
    let fragment_offset = usize::from(ff & 0x1fff) * 8;
    // A fragment whose data would end past the largest datagram (RFC 791: 65535 bytes)
    // cannot be reassembled, and re-fragmenting it would wrap the offset field.
    if fragment_offset + (total_len - header_len) > usize::from(u16::MAX) {
        return Err(DropReason::IpMalformed);
    }
    Ok(Header {
        header_len,
        total_len,
        ttl: ip[field::TTL],
        protocol: ip[field::PROTOCOL],
        src: Ipv4Addr::from(src),
        dst: Ipv4Addr::from(dst),
        dont_fragment: ff & FLAG_DF != 0,
        fragment: ff & (FLAG_MF | 0x1fff) != 0,
        fragment_offset,
    })
}

/// Decrement the TTL of a header that [`parse`] accepted and patch its checksum in place
/// (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), where m is the 16-bit word holding TTL and
/// protocol). Returns `false`, changing nothing, if the TTL is 0 or 1: the packet must not
/// be forwarded (RFC 1812 §5.3.1) and earns an ICMP time exceeded.
pub fn decrement_ttl(ip: &mut [u8]) -> bool {
    if ip.len() < MIN_HEADER_LEN || ip[field::TTL] <= 1 {
        return false;
    }
    let old = u16::from_be_bytes([ip[field::TTL], ip[field::PROTOCOL]]);
    ip[field::TTL] -= 1;
    let new = u16::from_be_bytes([ip[field::TTL], ip[field::PROTOCOL]]);
    let hc = u16::from_be_bytes([ip[field::CHECKSUM.start], ip[field::CHECKSUM.start + 1]]);
    let sum = u64::from(!hc) + u64::from(!old) + u64::from(new);
    let folded = crate::wire::checksum::fold(sum);
    ip[field::CHECKSUM].copy_from_slice(&(!folded).to_be_bytes());
    true
}

pub use crate::wire::checksum::internet as checksum;

/// Split an IPv4 packet (header `hdr`, DF clear) into fragments of at most `mtu` bytes
/// (RFC 791 §3.2, RFC 1812 §5.2.6) and hand each, a whole IPv4 packet, to `emit`. The first
/// fragment keeps every option; later ones only the options with the copied flag. Offsets
/// add to the packet's own (a fragment may be fragmented again) and the last fragment keeps
/// the packet's More Fragments flag. Returns the number of fragments, or 0 (nothing
/// emitted) if `mtu` cannot carry the header and 8 bytes of data.
pub fn fragment(ip: &[u8], hdr: &Header, mtu: usize, mut emit: impl FnMut(&[u8])) -> usize {
    let hl = hdr.header_len;
    let Some(packet) = ip.get(..hdr.total_len) else {
        return 0;
    };
    let payload = &packet[hl..];
    // Options copied into later fragments (RFC 791: "copied flag" is the option type's top bit).
    let mut later_hdr = [0u8; 60];
    later_hdr[..MIN_HEADER_LEN].copy_from_slice(&packet[..MIN_HEADER_LEN]);
    let mut later_len = MIN_HEADER_LEN;
    let opts = &packet[MIN_HEADER_LEN..hl];
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => break,
            1 => i += 1,
            t => {
                let len = usize::from(opts.get(i + 1).copied().unwrap_or(0));
                if len < 2 || i + len > opts.len() {
                    break;
                }
                if t & 0x80 != 0 {
                    later_hdr[later_len..later_len + len].copy_from_slice(&opts[i..i + len]);
                    later_len += len;
                }
                i += len;
            }
        }
    }
    // Pad to a multiple of 4 with End of Option List.
    let later_len = later_len.div_ceil(4) * 4;
    let base_offset = hdr.fragment_offset;
    let ff = u16::from_be_bytes([packet[6], packet[7]]);
    let more = ff & FLAG_MF != 0;
    let mut out = [0u8; crate::buf::MAX_FRAME];
    let mut pos = 0;
    let mut n = 0;
    while pos < payload.len() {
        let h = if pos == 0 { hl } else { later_len };
        if mtu < h + 8 {
            return 0;
        }
        let room = (mtu - h) & !7;
        let take = room.min(payload.len() - pos);
        let last = pos + take == payload.len();
        let header = if pos == 0 {
            &packet[..hl]
        } else {
            &later_hdr[..later_len]
        };
        out[..h].copy_from_slice(header);
        out[0] = 0x40 | (h / 4) as u8;
        let total = (h + take) as u16;
        out[2..4].copy_from_slice(&total.to_be_bytes());
        let off = ((base_offset + pos) / 8) as u16 & 0x1fff;
        let flags = if !last || more { FLAG_MF } else { 0 };
        out[6..8].copy_from_slice(&(flags | off).to_be_bytes());
        out[10..12].fill(0);
        let c = checksum(&out[..h]);
        out[10..12].copy_from_slice(&c.to_be_bytes());
        out[h..h + take].copy_from_slice(&payload[pos..pos + take]);
        emit(&out[..h + take]);
        pos += take;
        n += 1;
    }
    n
}

/// A token bucket: `rate` events per second on average, bursts of up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_sec: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate_per_sec),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: None,
        }
    }

    /// Take a token if one is left at `now`.
    pub fn allow(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now
                .saturating_duration_since(last)
                .min(Duration::from_secs(3600));
            self.tokens = (self.tokens + dt.as_secs_f64() * self.rate).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // 20-byte header: 10.0.0.1 -> 10.0.0.2, UDP, TTL 64, total length 28, DF.
    const HDR: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 10, 0, 0, 1, 10, 0,
        0, 2, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    fn with_checksum(mut h: [u8; 28]) -> [u8; 28] {
        h[10] = 0;
        h[11] = 0;
        let c = checksum(&h[..20]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    #[test]
    fn parses_a_valid_header() {
        let h = with_checksum(HDR);
        let p = parse(&h).unwrap();
        assert_eq!(p.src, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.dst, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(
            (p.ttl, p.protocol, p.total_len, p.header_len),
            (64, 17, 28, 20)
        );
        assert!(p.dont_fragment && !p.fragment);
    }

    #[test]
    fn refuses_what_rfc1812_refuses() {
        let good = with_checksum(HDR);
        let mut bad_sum = good;
        bad_sum[11] ^= 1;
        let mut v6 = HDR;
        v6[0] = 0x65;
        let mut short_ihl = HDR;
        short_ihl[0] = 0x44;
        let mut too_long = HDR;
        too_long[3] = 29;
        let mut too_short = HDR;
        too_short[3] = 19;
        for h in [
            bad_sum,
            with_checksum(v6),
            with_checksum(short_ihl),
            with_checksum(too_long),
            with_checksum(too_short),
        ] {
            assert_eq!(parse(&h), Err(DropReason::IpMalformed));
        }
        assert_eq!(parse(&good[..19]), Err(DropReason::IpMalformed));
    }

    #[test]
    fn fragments_are_recognised() {
        let mut h = HDR;
        h[6] = 0x20; // MF
        assert!(parse(&with_checksum(h)).unwrap().fragment);
        let mut h = HDR;
        h[6] = 0x00;
        h[7] = 0x10; // offset 16 * 8
        let p = parse(&with_checksum(h)).unwrap();
        assert!(p.fragment && !p.dont_fragment);
        assert_eq!(p.fragment_offset, 128);
    }

    #[test]
    fn ttl_one_is_not_forwarded() {
        let mut h = HDR;
        h[8] = 1;
        let mut h = with_checksum(h);
        assert!(!decrement_ttl(&mut h));
        assert_eq!(h[8], 1);
    }

    proptest! {
        #[test]
        fn incremental_checksum_matches_a_full_recompute(ttl in 2u8..=255, proto in any::<u8>(), id in any::<u16>(), src in any::<u32>()) {
            let mut h = HDR;
            h[8] = ttl;
            h[9] = proto;
            h[4..6].copy_from_slice(&id.to_be_bytes());
            h[12..16].copy_from_slice(&src.to_be_bytes());
            let mut h = with_checksum(h);
            prop_assert!(decrement_ttl(&mut h));
            prop_assert_eq!(h[8], ttl - 1);
            prop_assert_eq!(checksum(&h[..20]), 0, "checksum still verifies");
            prop_assert_eq!(with_checksum(h), h, "same as recomputing it");
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse(&bytes);
            let mut b = bytes.clone();
            let _ = decrement_ttl(&mut b);
        }
    }

    #[test]
    fn token_bucket_limits_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3);
        assert_eq!((0..10).filter(|_| b.allow(t0)).count(), 3, "a burst of 3");
        assert!(!b.allow(t0 + Duration::from_millis(50)));
        assert!(
            b.allow(t0 + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert_eq!(
            (0..10)
                .filter(|_| b.allow(t0 + Duration::from_secs(60)))
                .count(),
            3,
            "never more than the burst"
        );
    }

    #[test]
    fn fragments_reassemble_and_respect_the_mtu() {
        let mut p = vec![0u8; 24 + 3000];
        p[0] = 0x46; // one option word
        let n = p.len() as u16;
        p[2..4].copy_from_slice(&n.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 0, 1, 5]);
        p[16..20].copy_from_slice(&[10, 0, 2, 5]);
        p[20..24].copy_from_slice(&[0x07, 3, 4, 0]); // record route: not copied
        for (i, b) in p[24..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let c = checksum(&p[..24]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let hdr = parse(&p).unwrap();
        let mut frags = Vec::new();
        let n = fragment(&p, &hdr, 1400, |f| frags.push(f.to_vec()));
        assert_eq!(n, 3);
        let mut data = Vec::new();
        for (i, f) in frags.iter().enumerate() {
            let h = parse(f).expect("valid fragment header");
            assert!(f.len() <= 1400);
            assert_eq!(h.fragment_offset, data.len());
            assert_eq!(
                h.header_len,
                if i == 0 { 24 } else { 20 },
                "option not copied"
            );
            let mf = u16::from_be_bytes([f[6], f[7]]) & FLAG_MF != 0;
            assert_eq!(mf, i < 2);
            data.extend_from_slice(&f[h.header_len..]);
        }
        assert_eq!(data, &p[24..]);
        assert_eq!(
            fragment(&p, &hdr, 30, |_| {}),
            0,
            "MTU too small for header + 8"
        );
        // A copied option (type 0x83) goes into every fragment.
        p[20] = 0x83;
        p[10..12].fill(0);
        let c = checksum(&p[..24]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let hdr = parse(&p).unwrap();
        let mut lens = Vec::new();
        fragment(&p, &hdr, 1400, |f| lens.push(parse(f).unwrap().header_len));
        assert_eq!(lens, vec![24, 24, 24]);
    }

    #[test]
    fn a_fragment_ending_past_the_largest_datagram_is_malformed() {
        let mut p = vec![0u8; 1400];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&1400u16.to_be_bytes());
        p[6..8].copy_from_slice(&(FLAG_MF | (65088 / 8) as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(
            parse(&p),
            Err(DropReason::IpMalformed),
            "65088 + 1380 > 65535"
        );
        p[6..8].copy_from_slice(&(FLAG_MF | (64152 / 8) as u16).to_be_bytes());
        p[10..12].fill(0);
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(parse(&p).is_ok(), "64152 + 1380 = 65532 fits");
    }
}
