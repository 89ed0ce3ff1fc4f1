//! The id of the XDP program attached to an interface, from rtnetlink
//! (`RTM_GETLINK`, attribute `IFLA_XDP` / `IFLA_XDP_PROG_ID`): XDP has no
//! `BPF_PROG_QUERY`, and a program attached by another tool (`ip link set
//! xdp`, libxdp) is no BPF link the agent could enumerate.

use std::{io, os::fd::AsRawFd};

/// `IFLA_XDP`: the nested XDP attributes of a link.
const IFLA_XDP: u16 = 43;
/// `IFLA_XDP_PROG_ID`, inside [`IFLA_XDP`]: the attached program's id.
const IFLA_XDP_PROG_ID: u16 = 4;
/// `NLA_F_NESTED | NLA_F_NET_BYTEORDER`: flag bits of an attribute type.
const NLA_TYPE_MASK: u16 = !(1 << 15 | 1 << 14);
/// Length of `struct nlmsghdr`.
const NLMSG_HDR: usize = 16;
/// Length of `struct ifinfomsg`.
const IFINFOMSG: usize = 16;

/// The id of the XDP program attached to interface `ifindex`, if any.
pub fn attached_program(ifindex: u32) -> io::Result<Option<u32>> {
    let socket = crate::netlink::socket(libc::NETLINK_ROUTE)?;
    let request = get_link_request(ifindex);
    // SAFETY: a valid buffer and its length; the kernel is the destination
    // (an unbound netlink socket sends to pid 0).
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = vec![0u8; 64 * 1024];
    // SAFETY: a valid buffer and its length.
    let got = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            0,
        )
    };
    let got = usize::try_from(got).map_err(|_| io::Error::last_os_error())?;
    parse_reply(&reply[..got])
}

/// `RTM_GETLINK` for one interface.
fn get_link_request(ifindex: u32) -> Vec<u8> {
    let len = u32::try_from(NLMSG_HDR + IFINFOMSG).expect("32 bytes");
    let mut msg = Vec::with_capacity(NLMSG_HDR + IFINFOMSG);
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&libc::RTM_GETLINK.to_ne_bytes());
    let flags = u16::try_from(libc::NLM_F_REQUEST).expect("a u16 flag");
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    msg.push(0); // ifi_family: AF_UNSPEC
    msg.push(0); // padding
    msg.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    msg.extend_from_slice(&i32::try_from(ifindex).unwrap_or(0).to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // ifi_flags
    msg.extend_from_slice(&0u32.to_ne_bytes()); // ifi_change
    msg
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// The attributes `(type, payload)` packed in `buf` (4-byte aligned).
fn attributes(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let (Some(len), Some(kind)) = (u16_at(buf, 0), u16_at(buf, 2)) else {
            break;
        };
        let len = usize::from(len);
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((kind & NLA_TYPE_MASK, &buf[4..len]));
        buf = &buf[(len + 3) & !3..];
    }
    out
}

/// The program id in a `RTM_NEWLINK` reply, or the error of a `NLMSG_ERROR`.
fn parse_reply(reply: &[u8]) -> io::Result<Option<u32>> {
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "malformed rtnetlink reply");
    let len = usize::try_from(u32_at(reply, 0).ok_or_else(malformed)?).map_err(|_| malformed())?;
    let kind = u16_at(reply, 4).ok_or_else(malformed)?;
    let message = reply.get(..len).ok_or_else(malformed)?;
    if kind == u16::try_from(libc::NLMSG_ERROR).expect("a u16 type") {
        let errno = u32_at(message, NLMSG_HDR).ok_or_else(malformed)?;
        let errno = i32::from_ne_bytes(errno.to_ne_bytes());
        return Err(io::Error::from_raw_os_error(-errno));
    }
    if kind != libc::RTM_NEWLINK {
        return Err(malformed());
    }
    let attrs = message.get(NLMSG_HDR + IFINFOMSG..).ok_or_else(malformed)?;
    for (kind, payload) in attributes(attrs) {
        if kind == IFLA_XDP {
            for (inner, value) in attributes(payload) {
                if inner == IFLA_XDP_PROG_ID {
                    return Ok(u32_at(value, 0).filter(|&id| id != 0));
                }
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&u16::try_from(4 + payload.len()).unwrap().to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(payload);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    fn reply(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&u32::try_from(NLMSG_HDR + body.len()).unwrap().to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn the_program_id_is_read_from_the_nested_xdp_attribute() {
        let mut xdp = attr(1, &[1]); // IFLA_XDP_ATTACHED: driver
        xdp.extend(attr(IFLA_XDP_PROG_ID, &77u32.to_ne_bytes()));
        let mut body = vec![0; IFINFOMSG];
        body.extend(attr(3, b"eth0\0")); // IFLA_IFNAME
        body.extend(attr(IFLA_XDP | 1 << 15, &xdp)); // nested flag set
        let msg = reply(libc::RTM_NEWLINK, &body);
        assert_eq!(parse_reply(&msg).unwrap(), Some(77));
    }

    #[test]
    fn no_xdp_attribute_or_id_zero_is_none() {
        let mut body = vec![0; IFINFOMSG];
        body.extend(attr(3, b"eth0\0"));
        assert_eq!(parse_reply(&reply(libc::RTM_NEWLINK, &body)).unwrap(), None);
        body.extend(attr(IFLA_XDP, &attr(IFLA_XDP_PROG_ID, &0u32.to_ne_bytes())));
        assert_eq!(parse_reply(&reply(libc::RTM_NEWLINK, &body)).unwrap(), None);
    }

    #[test]
    fn an_error_reply_is_its_errno_and_garbage_is_refused() {
        let errno = (-libc::ENODEV).to_ne_bytes();
        let err = parse_reply(&reply(2, &errno)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
        assert!(parse_reply(&[1, 2, 3]).is_err());
        let mut truncated = reply(libc::RTM_NEWLINK, &[0; IFINFOMSG]);
        truncated[0] = 200;
        assert!(parse_reply(&truncated).is_err());
    }

    #[test]
    fn the_real_loopback_has_no_xdp_program() {
        // Loopback (index 1) exists in every network namespace.
        assert_eq!(attached_program(1).unwrap(), None);
    }
}
