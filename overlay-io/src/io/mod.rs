//! Packet I/O backends.
//!
//! - [`udp`]: the VXLAN underlay (batched `recvmmsg`/`sendmmsg`, UDP GSO).
//! - [`afpacket`]: trunk and untagged interfaces (AF_PACKET, 802.1Q tags restored).
//! - [`tap`]: TAP devices.
//! - [`mem`]: the in-memory backend for deterministic tests.
//! - [`steer`]: the classic-BPF programs that keep a flow's two directions on one worker.

use std::io;
use std::os::fd::RawFd;

pub mod afpacket;
pub mod mem;
pub mod steer;
pub mod tap;
pub mod udp;

/// Receive buffer asked for on every datapath socket: bursts from many peers arrive
/// faster than one wakeup drains them.
pub const RCVBUF: i32 = 8 << 20;
/// Send buffer asked for on every datapath socket.
pub const SNDBUF: i32 = 4 << 20;

/// Set an integer socket option.
pub(crate) fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: passing a pointer to a live c_int with its size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Size a socket's buffers: beyond `net.core.rmem_max` when privileged (`SO_RCVBUFFORCE`),
/// else as far as the sysctl allows. Best effort: a small buffer only costs drops, which
/// [`socket_drops`] counts.
pub fn size_buffers(fd: RawFd) {
    if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF).is_err() {
        let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF);
    }
    if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, SNDBUF).is_err() {
        let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, SNDBUF);
    }
}

/// Packets the kernel dropped on this socket since it was opened because its receive
/// buffer was full (`SO_MEMINFO`, `SK_MEMINFO_DROPS`; Linux 3.19).
pub fn socket_drops(fd: RawFd) -> io::Result<u32> {
    // linux/sock_diag.h: SK_MEMINFO_DROPS is the 9th of SK_MEMINFO_VARS u32 values.
    const SK_MEMINFO_DROPS: usize = 8;
    let mut info = [0u32; 16];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is a live buffer of `len` bytes; the kernel writes at most that.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info[SK_MEMINFO_DROPS])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn drops_of_a_fresh_socket_are_zero() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        size_buffers(s.as_raw_fd());
        assert_eq!(socket_drops(s.as_raw_fd()).unwrap(), 0);
    }

    #[test]
    fn drops_count_a_full_receive_buffer() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        setsockopt_int(rx.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 4096).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        for _ in 0..200 {
            let _ = tx.send_to(&[0u8; 1000], to);
        }
        assert!(socket_drops(rx.as_raw_fd()).unwrap() > 0);
    }
}
