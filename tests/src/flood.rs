//! Spoofed traffic for the flood benchmark: TCP SYNs and UDP datagrams from
//! random sources of 100.64.0.0/10 (shared address space, routed nowhere in
//! the test topology), built as whole Ethernet frames with correct IPv4,
//! TCP and UDP checksums, and sent at a paced rate on an `AF_PACKET` socket
//! of one interface (inside a namespace the benchmark created).

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// The spoofed sources' network: 100.64.0.0/10.
pub const SPOOF_NET: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
/// Its prefix length.
pub const SPOOF_PREFIX: u32 = 10;
/// Length of every frame (Ethernet + IPv4 + TCP SYN, or + UDP and 12 bytes).
pub const FRAME_LEN: usize = 54;
/// Frames per `sendmmsg` call at most.
pub const BATCH: usize = 64;
/// Length of either transport part: a TCP header without options, or a UDP
/// header and a 12-byte DNS query header.
const L4_LEN: u16 = 20;

/// A small, fast pseudo-random generator (xorshift64*): not for secrets.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; 0 is replaced).
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Whether `addr` lies in [`SPOOF_NET`]/[`SPOOF_PREFIX`].
#[must_use]
pub fn is_spoofed_source(addr: Ipv4Addr) -> bool {
    u32::from(addr) >> (32 - SPOOF_PREFIX) == u32::from(SPOOF_NET) >> (32 - SPOOF_PREFIX)
}

/// Makes the flood's frames: to `dst`, TCP SYNs to `tcp_port` and UDP
/// datagrams to `udp_port`, alternately, each from a random address of
/// 100.64.0.0/10 and a random port of 1024-65535.
pub struct FrameMaker {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    dst: Ipv4Addr,
    tcp_port: u16,
    udp_port: u16,
    rng: Rng,
    count: u64,
}

impl FrameMaker {
    /// A maker of frames from `src_mac` to `dst_mac` (the next hop) for `dst`.
    #[must_use]
    pub fn new(
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        dst: Ipv4Addr,
        (tcp_port, udp_port): (u16, u16),
        seed: u64,
    ) -> Self {
        Self {
            dst_mac,
            src_mac,
            dst,
            tcp_port,
            udp_port,
            rng: Rng::new(seed),
            count: 0,
        }
    }

    /// Writes the next frame into `frame`: even ones are TCP SYNs, odd ones UDP.
    pub fn fill(&mut self, frame: &mut [u8; FRAME_LEN]) {
        let udp = self.count % 2 == 1;
        self.count += 1;
        let r = self.rng.next_u64();
        #[allow(clippy::cast_possible_truncation)] // bit fields of one random word
        let (host, sport, id, seq) = (
            (r as u32) & ((1 << (32 - SPOOF_PREFIX)) - 1),
            1024 + ((r >> 22) as u16) % (65535 - 1024 + 1),
            (r >> 38) as u16,
            self.rng.next_u64() as u32,
        );
        let src = Ipv4Addr::from(u32::from(SPOOF_NET) | host);
        frame[0..6].copy_from_slice(&self.dst_mac);
        frame[6..12].copy_from_slice(&self.src_mac);
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let proto = if udp { 17 } else { 6 };
        let ip = &mut frame[14..34];
        ip[0] = 0x45;
        ip[1] = 0;
        ip[2..4].copy_from_slice(&(20 + L4_LEN).to_be_bytes());
        ip[4..6].copy_from_slice(&id.to_be_bytes());
        ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
        ip[8] = 64;
        ip[9] = proto;
        ip[10..12].copy_from_slice(&[0, 0]);
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&self.dst.octets());
        let c = fold(sum(ip, 0));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let l4 = &mut frame[34..54];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        if udp {
            l4[2..4].copy_from_slice(&self.udp_port.to_be_bytes());
            l4[4..6].copy_from_slice(&L4_LEN.to_be_bytes());
            l4[6..8].copy_from_slice(&[0, 0]);
            // A DNS query header: id, recursion desired, one question.
            l4[8..10].copy_from_slice(&seq.to_be_bytes()[..2]);
            l4[10..20].copy_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        } else {
            l4[2..4].copy_from_slice(&self.tcp_port.to_be_bytes());
            l4[4..8].copy_from_slice(&seq.to_be_bytes());
            l4[8..12].copy_from_slice(&[0, 0, 0, 0]);
            l4[12] = 5 << 4;
            l4[13] = 0x02; // SYN
            l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
            l4[16..20].copy_from_slice(&[0, 0, 0, 0]);
        }
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&src.octets());
        pseudo[4..8].copy_from_slice(&self.dst.octets());
        pseudo[9] = proto;
        pseudo[10..12].copy_from_slice(&L4_LEN.to_be_bytes());
        let mut c = fold(sum(l4, sum(&pseudo, 0)));
        if udp && c == 0 {
            c = 0xffff;
        }
        let at = if udp { 6 } else { 16 };
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
}

/// One's-complement sum of `data` (even length) added to `acc`.
fn sum(data: &[u8], acc: u32) -> u32 {
    data.chunks_exact(2)
        .fold(acc, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])))
}

fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    #[allow(clippy::cast_possible_truncation)] // folded to 16 bits above
    let s = s as u16;
    !s
}

/// What a paced send achieved.
#[derive(Clone, Copy, Debug, Default)]
pub struct SendReport {
    /// Frames the kernel accepted.
    pub sent: u64,
    /// `sendmmsg` calls the kernel refused (e.g. `ENOBUFS`) or cut short.
    /// Each gives up one frame of the schedule (the rest of its batch is
    /// made again), so this is also the number of frames not sent.
    pub refused: u64,
    /// How long the sending took.
    pub seconds: f64,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("a MAC address: {text:?}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("a MAC address has six bytes: {text:?}"))
}

/// Sends `maker`'s frames on `ifname` (in the calling thread's namespace) at
/// `rate` frames per second for `duration`, in batches of at most
/// [`BATCH`]; never more than `rate` times the elapsed time, and stops at
/// `duration` whether or not it kept up.
pub fn send_paced(
    ifname: &str,
    maker: &mut FrameMaker,
    rate: u64,
    duration: Duration,
) -> Result<SendReport> {
    let name = std::ffi::CString::new(ifname)?;
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {ifname}");
    }
    // Protocol 0: this socket receives nothing, it only sends.
    // SAFETY: plain socket creation; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("an AF_PACKET socket");
    }
    let result = send_on(fd, ifindex, maker, rate, duration);
    // SAFETY: our descriptor, closed once.
    unsafe { libc::close(fd) };
    result
}

fn send_on(
    fd: i32,
    ifindex: u32,
    maker: &mut FrameMaker,
    rate: u64,
    duration: Duration,
) -> Result<SendReport> {
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = u16::try_from(libc::AF_PACKET)?;
    to.sll_protocol = 0x0800u16.to_be();
    to.sll_ifindex = i32::try_from(ifindex)?;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&maker.dst_mac);
    let mut frames = vec![[0u8; FRAME_LEN]; BATCH];
    let mut iovs: Vec<libc::iovec> = frames
        .iter_mut()
        .map(|f| libc::iovec {
            iov_base: f.as_mut_ptr().cast(),
            iov_len: FRAME_LEN,
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: mmsghdr is plain data; zero is a valid start.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = (&raw mut to).cast();
            m.msg_hdr.msg_namelen =
                u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).expect("a small struct");
            m.msg_hdr.msg_iov = std::ptr::from_mut(iov);
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let mut report = SendReport::default();
    let started = Instant::now();
    loop {
        let elapsed = started.elapsed();
        if elapsed >= duration {
            break;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )] // rates and counts far below 2^52, positive
        let due = (elapsed.as_secs_f64() * rate as f64) as u64;
        let behind = due.saturating_sub(report.sent + report.refused);
        if behind == 0 {
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        let n = usize::try_from(behind).unwrap_or(BATCH).min(BATCH);
        for f in &mut frames[..n] {
            maker.fill(f);
        }
        // SAFETY: `msgs[..n]` point at live iovecs, frames and `to`.
        let rc = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), u32::try_from(n)?, 0) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => report.refused += 1,
                _ => return Err(err).context("sendmmsg"),
            }
        } else {
            let sent = u64::try_from(rc)?;
            report.sent += sent;
            if sent < n as u64 {
                report.refused += 1; // the one that failed; the rest go in the next batch
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{checksums_valid, dst_of, src_of};

    #[test]
    fn frames_are_syns_and_datagrams_from_the_shared_space_with_valid_checksums() {
        let mut maker = FrameMaker::new(
            [2, 0, 0, 0, 0, 0x11],
            [2, 0, 0, 0, 0, 0x30],
            Ipv4Addr::new(10, 96, 0, 10),
            (80, 53),
            42,
        );
        let mut frame = [0u8; FRAME_LEN];
        let mut sources = std::collections::BTreeSet::new();
        for i in 0..2000 {
            maker.fill(&mut frame);
            assert!(checksums_valid(&frame), "frame {i}: {frame:02x?}");
            let (src, sport) = src_of(&frame);
            assert!(is_spoofed_source(src), "{src}");
            assert!(sport >= 1024);
            sources.insert(src);
            let (dst, dport) = dst_of(&frame);
            assert_eq!(dst, Ipv4Addr::new(10, 96, 0, 10));
            if i % 2 == 0 {
                assert_eq!((frame[23], dport, frame[47]), (6, 80, 0x02), "a SYN");
            } else {
                assert_eq!((frame[23], dport), (17, 53), "a datagram");
                assert_eq!(u16::from_be_bytes([frame[38], frame[39]]), 20);
            }
            assert_eq!(&frame[..6], &[2, 0, 0, 0, 0, 0x11]);
        }
        assert!(sources.len() > 1900, "random sources: {}", sources.len());
    }

    #[test]
    fn spoofed_sources_are_the_shared_address_space_only() {
        assert!(is_spoofed_source(Ipv4Addr::new(100, 64, 0, 0)));
        assert!(is_spoofed_source(Ipv4Addr::new(100, 127, 255, 255)));
        assert!(!is_spoofed_source(Ipv4Addr::new(100, 128, 0, 0)));
        assert!(!is_spoofed_source(Ipv4Addr::new(192, 168, 50, 10)));
    }

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("02:aB:00:00:00:ff").unwrap(),
            [2, 0xab, 0, 0, 0, 0xff]
        );
        assert!(parse_mac("02:00:00").is_err());
        assert!(parse_mac("zz:00:00:00:00:00").is_err());
    }
}
