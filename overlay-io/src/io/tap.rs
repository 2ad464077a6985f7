//! Ethernet I/O through a TAP device: a VNF port that is an interface of the host itself.
//!
//! A TAP device is a virtual Ethernet interface whose other end is a file descriptor: what
//! the host transmits on the interface is read from the descriptor, and what is written to
//! the descriptor the host receives. It is how a VNF is plugged into a host's routing or a
//! Linux bridge without a physical port, and how tests give a datapath a real kernel peer.
//!
//! - **No batching in the kernel.** `/dev/net/tun` has no `recvmmsg`/`sendmmsg`: every frame
//!   costs one `read` or `write`. [`Tap::recv_batch`] reads until the device is empty or the
//!   batch is full, and [`Tap::send_batch`] writes frame by frame, so the interface is the
//!   same as [`AfPacket`](super::afpacket::AfPacket)'s even though the syscall count is not.
//! - **No packet information header** (`IFF_NO_PI`): each read or write is exactly one
//!   Ethernet frame.
//! - **VLAN tags are always inline**: the TAP driver writes a tag that the stack carried in
//!   metadata back into the frame it hands to `read`, so there is no auxdata to consult.
//! - **Truncation.** Depending on the kernel, a read into a too-short buffer returns the
//!   frame's full length or just what fit; reading one spare byte past the buffer tells
//!   either way. Such frames are counted in [`Tap::truncated`] and dropped.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use libc::c_void;

use super::afpacket::{ifreq_for, privileged_os_error, with_context};
use crate::buf::PacketBuf;

/// The clone device through which TAP interfaces are created.
const TUN_DEVICE: &std::ffi::CStr = c"/dev/net/tun";

/// An open TAP interface.
pub struct Tap {
    fd: OwnedFd,
    name: String,
    /// Frames dropped on receive because they were larger than a buffer.
    pub truncated: u64,
}

impl fmt::Debug for Tap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tap")
            .field("fd", &self.fd.as_raw_fd())
            .field("name", &self.name)
            .field("truncated", &self.truncated)
            .finish()
    }
}

impl Tap {
    /// Create (or attach to an existing persistent) TAP interface `name`, nonblocking. The
    /// interface goes away when the `Tap` is dropped unless it was made persistent.
    pub fn open(name: &str) -> io::Result<Tap> {
        let mut req = ifreq_for(name)?;
        // SAFETY: TUN_DEVICE is a NUL-terminated path.
        let raw = unsafe {
            libc::open(
                TUN_DEVICE.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(privileged_os_error(
                format_args!("opening /dev/net/tun for TAP {name}"),
                "CAP_NET_ADMIN",
            ));
        }
        // SAFETY: `raw` is a descriptor we just opened and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: `req` is a live ifreq with a NUL-terminated name and the flags set;
        // TUNSETIFF reads it and writes the final name back into it.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &raw mut req) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EPERM | libc::EACCES) => with_context(
                    err,
                    format_args!("creating TAP {name}: needs CAP_NET_ADMIN (run as root)"),
                ),
                Some(libc::EBUSY) => with_context(
                    err,
                    format_args!("creating TAP {name}: already open by another process"),
                ),
                Some(libc::EINVAL) => with_context(
                    err,
                    format_args!("creating TAP {name}: an interface of another kind has that name"),
                ),
                _ => with_context(err, format_args!("creating TAP {name}")),
            });
        }
        let name: Vec<u8> = req
            .ifr_name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        Ok(Tap {
            fd,
            name: String::from_utf8_lossy(&name).into_owned(),
            truncated: 0,
        })
    }

    /// A second handle on the same TAP queue (a duplicated descriptor), so that other
    /// threads can write to the device too. Frames read are split between the handles
    /// arbitrarily, so only one should read. The interface lives until both are dropped.
    pub fn try_clone(&self) -> io::Result<Tap> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| with_context(e, format_args!("duplicating TAP {}", self.name)))?;
        Ok(Tap {
            fd,
            name: self.name.clone(),
            truncated: 0,
        })
    }

    /// The interface name (as the kernel has it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Read frames into `bufs` (at most `bufs.len()`) until the device has no more; returns
    /// how many of `bufs`, from the front, now hold a frame (0 if none was waiting). One
    /// `read` per frame: TAP has no batched receive.
    pub fn recv_batch(&mut self, bufs: &mut [PacketBuf]) -> io::Result<usize> {
        let mut delivered = 0;
        while delivered < bufs.len() {
            let buf = &mut bufs[delivered];
            let area = buf.recv_area();
            let room = area.len();
            // A byte past the buffer tells a frame that did not fit from one that exactly
            // did, whether the kernel reports the frame's full length or only what it copied.
            let mut spill = [0u8; 1];
            let iov = [
                libc::iovec {
                    iov_base: area.as_mut_ptr().cast::<c_void>(),
                    iov_len: room,
                },
                libc::iovec {
                    iov_base: spill.as_mut_ptr().cast::<c_void>(),
                    iov_len: spill.len(),
                },
            ];
            // SAFETY: both iovecs cover live, writable memory of the lengths given: the
            // buffer's receive area and `spill`.
            let rc = unsafe { libc::readv(self.fd.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
            if rc < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    _ if delivered > 0 => break,
                    _ => {
                        return Err(with_context(err, format_args!("reading TAP {}", self.name)));
                    }
                }
            }
            let len = rc as usize;
            if len == 0 {
                break;
            }
            if len > room {
                self.truncated += 1;
                continue;
            }
            buf.reset();
            buf.set_received(len);
            delivered += 1;
        }
        Ok(delivered)
    }

    /// Write frames from `frames` to the device until the iterator ends or the kernel refuses
    /// one; returns how many were sent. The caller counts the rest as transmit errors. A full
    /// queue (`EAGAIN`, `ENOBUFS`) ends the call early; a frame the kernel refuses on its own
    /// (malformed, too long) is skipped. An error is returned only if nothing at all could
    /// be sent (for example while the interface is down: `EIO`). One `write` per frame.
    pub fn send_batch(&mut self, frames: &mut dyn Iterator<Item = &[u8]>) -> io::Result<usize> {
        let mut sent = 0;
        for frame in frames {
            loop {
                // SAFETY: `frame` is a live, readable region of `frame.len()` bytes.
                let rc = unsafe {
                    libc::write(
                        self.fd.as_raw_fd(),
                        frame.as_ptr().cast::<c_void>(),
                        frame.len(),
                    )
                };
                if rc >= 0 {
                    sent += 1;
                    break;
                }
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN | libc::ENOBUFS) => return Ok(sent),
                    Some(libc::EINVAL | libc::EMSGSIZE | libc::EFAULT) => break,
                    _ if sent > 0 => return Ok(sent),
                    _ => {
                        return Err(with_context(err, format_args!("writing TAP {}", self.name)));
                    }
                }
            }
        }
        Ok(sent)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, UdpSocket};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::io::afpacket::netns::Netns;

    const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

    fn rx_packets(ns: &Netns, dev: &str) -> u64 {
        let out = ns.exec(&["ip", "-s", "-j", "link", "show", "dev", dev]);
        let json: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
        json[0]["stats64"]["rx"]["packets"]
            .as_u64()
            .expect("rx packets in ip -s -j output")
    }

    /// Read from `tap` until a frame satisfies `pred`, or two seconds passed.
    fn wait_for(tap: &mut Tap, pred: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let mut bufs: Vec<PacketBuf> = (0..4).map(|_| PacketBuf::new()).collect();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let n = tap.recv_batch(&mut bufs).expect("recv_batch");
            if let Some(b) = bufs[..n].iter().find(|b| pred(b.bytes())) {
                return Some(b.bytes().to_vec());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    }

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        let err = Tap::open("").expect_err("empty name");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = Tap::open("sixteen-bytes-xx").expect_err("too long");
        assert!(err.to_string().contains("sixteen-bytes-xx"), "{err}");
    }

    #[test]
    fn unprivileged_open_says_what_is_needed() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            println!("skipped: only meaningful without root");
            return;
        }
        let err = Tap::open("ovtap9").expect_err("needs CAP_NET_ADMIN");
        assert!(err.to_string().contains("ovtap9"), "{err}");
        assert!(
            err.to_string()
                .contains("needs CAP_NET_ADMIN (run as root)"),
            "{err}"
        );
    }

    #[test]
    fn tap_exchanges_frames_with_the_kernel() {
        let Some(ns) = Netns::enter("tap") else {
            return;
        };
        let mut tap = Tap::open("ovtap0").expect("open tap");
        assert_eq!(tap.name(), "ovtap0");
        ns.exec(&["ip", "link", "set", "dev", "ovtap0", "mtu", "9500", "up"]);
        ns.exec(&["ip", "addr", "add", "198.18.0.1/24", "dev", "ovtap0"]);
        let peer = "02:00:00:00:00:02";
        ns.exec(&[
            "ip",
            "neigh",
            "add",
            "198.18.0.2",
            "lladdr",
            peer,
            "dev",
            "ovtap0",
        ]);

        // This thread is inside the namespace, so the socket is too.
        let sock = UdpSocket::bind((Ipv4Addr::new(198, 18, 0, 1), 0)).expect("bind in netns");

        // An unknown neighbour: the kernel asks for it with ARP on the tap.
        let _ = sock.send_to(b"hello", (Ipv4Addr::new(198, 18, 0, 3), 9));
        let arp = wait_for(&mut tap, |f| {
            f.len() >= 42
                && f[12..14] == [0x08, 0x06]
                && f[20..22] == [0, 1]
                && f[38..42] == [198, 18, 0, 3]
        });
        assert!(
            arp.is_some(),
            "no ARP request for 198.18.0.3 read from the tap"
        );

        // A known neighbour: the datagram itself, addressed to its MAC.
        sock.send_to(b"to the peer", (Ipv4Addr::new(198, 18, 0, 2), 9))
            .expect("send to peer");
        let udp = wait_for(&mut tap, |f| {
            f[0..6] == PEER_MAC && f.ends_with(b"to the peer")
        })
        .expect("the UDP frame read from the tap");
        assert_eq!(udp[12..14], [0x08, 0x00]);

        // A frame that just fits a buffer is delivered; one byte more is counted and dropped.
        let headers = 14 + 20 + 8;
        let mut exact = vec![0x44u8; crate::buf::MAX_FRAME - headers];
        exact[..5].copy_from_slice(b"exact");
        sock.send_to(&exact, (Ipv4Addr::new(198, 18, 0, 2), 9))
            .expect("send exact datagram");
        let got = wait_for(&mut tap, |f| f.get(headers..headers + 5) == Some(b"exact"));
        assert_eq!(got.map(|f| f.len()), Some(crate::buf::MAX_FRAME));
        let big = vec![0x55u8; crate::buf::MAX_FRAME - headers + 1];
        sock.send_to(&big, (Ipv4Addr::new(198, 18, 0, 2), 9))
            .expect("send big datagram");
        sock.send_to(b"after big", (Ipv4Addr::new(198, 18, 0, 2), 9))
            .expect("send to peer");
        assert!(wait_for(&mut tap, |f| f.ends_with(b"after big")).is_some());
        assert_eq!(tap.truncated, 1);

        // Frames written to the tap are received by the kernel.
        let before = rx_packets(&ns, "ovtap0");
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&PEER_MAC);
        frame.extend_from_slice(&[0x88, 0xb5]);
        frame.extend_from_slice(&[0u8; 46]);
        let frames = [frame.as_slice(), frame.as_slice()];
        let n = tap
            .send_batch(&mut frames[..1].iter().copied())
            .expect("send_batch");
        assert_eq!(n, 1);
        let mut writer = tap.try_clone().expect("try_clone");
        assert_eq!(writer.name(), "ovtap0");
        let n = writer
            .send_batch(&mut frames[1..].iter().copied())
            .expect("send_batch");
        assert_eq!(n, 1);
        let deadline = Instant::now() + Duration::from_secs(2);
        while rx_packets(&ns, "ovtap0") < before + 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(rx_packets(&ns, "ovtap0"), before + 2);
    }
}
