//! The kernel's tables of TCP sockets (`/proc/self/net/tcp`, `tcp6`; proc(5)): the row of one
//! end of a connection, with the uid that owns it and the socket's inode.
//!
//! Used to tell who is at the other end of a loopback connection: the owner of the server side
//! of a connection to an OpenBao node or a database (`dynamic/owner.rs`: a listener of the
//! broker's own user could be an agent), and the process holding the client side of a
//! connection to a run's egress proxy (`broker/egress/owner.rs`: only the run's tree may use
//! it). Reads only the caller's network namespace (`self`).

use std::net::{IpAddr, SocketAddr};

/// One socket of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Row {
    /// The uid owning the socket (for the server side of an accepted connection: the owner of
    /// the listener it came from).
    pub(crate) uid: u32,
    /// The socket's inode: `socket:[INODE]` is what `/proc/PID/fd/N` of its holders links to.
    pub(crate) inode: u64,
}

/// The row of the socket whose own address is `local` and whose remote address is `remote`;
/// `None` when the tables do not list it (gone already). An IPv4 pair not in `tcp` is also
/// looked for in `tcp6` as IPv4-mapped addresses (`::ffff:a.b.c.d`): a dual-stack IPv6
/// socket (`[::]`, as Go programs listen on `:PORT`) holds its IPv4 connections there.
pub(crate) fn find(local: SocketAddr, remote: SocketAddr) -> Option<Row> {
    let in_table = |table: &str, local: SocketAddr, remote: SocketAddr| {
        let text = std::fs::read_to_string(table).ok()?;
        find_in(&text, local, remote)
    };
    match (local, remote) {
        (SocketAddr::V4(l), SocketAddr::V4(r)) => in_table("/proc/self/net/tcp", local, remote)
            .or_else(|| {
                let mapped = |a: std::net::SocketAddrV4| {
                    SocketAddr::new(IpAddr::V6(a.ip().to_ipv6_mapped()), a.port())
                };
                in_table("/proc/self/net/tcp6", mapped(l), mapped(r))
            }),
        (SocketAddr::V6(_), SocketAddr::V6(_)) => in_table("/proc/self/net/tcp6", local, remote),
        _ => None,
    }
}

/// [`find`] over the text of one table (its heading line first, as the kernel prints it).
pub(crate) fn find_in(text: &str, local: SocketAddr, remote: SocketAddr) -> Option<Row> {
    let (want_local, want_remote) = (encode(local), encode(remote));
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st queues timer retrnsmt uid timeout inode ...
        let (l, r) = (f.get(1)?, f.get(2)?);
        if !(l.eq_ignore_ascii_case(&want_local) && r.eq_ignore_ascii_case(&want_remote)) {
            return None;
        }
        Some(Row {
            uid: f.get(7)?.parse().ok()?,
            inode: f.get(9)?.parse().ok()?,
        })
    })
}

/// An address as the kernel prints it: each 32-bit word of the address in host byte order
/// (`%08X`), a colon, the port (`%04X`).
pub(crate) fn encode(a: SocketAddr) -> String {
    let words: Vec<[u8; 4]> = match a.ip() {
        IpAddr::V4(v4) => vec![v4.octets()],
        IpAddr::V6(v6) => v6
            .octets()
            .chunks_exact(4)
            .map(|c| <[u8; 4]>::try_from(c).unwrap_or_default())
            .collect(),
    };
    let mut s: String = words
        .iter()
        .map(|w| format!("{:08X}", u32::from_ne_bytes(*w)))
        .collect();
    s.push_str(&format!(":{:04X}", a.port()));
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn own_uid() -> u32 {
        rustix::process::geteuid().as_raw()
    }

    /// Both ends of a live loopback connection are found, each with its own inode.
    #[test]
    fn both_ends_of_a_live_connection_are_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, b) = (c.local_addr().unwrap(), c.peer_addr().unwrap());
        let client = find(a, b).unwrap();
        let server = find(b, a).unwrap();
        assert_eq!((client.uid, server.uid), (own_uid(), own_uid()));
        assert_ne!(client.inode, server.inode);
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(find(a, other), None);
    }

    /// An IPv4 connection to a dual-stack IPv6 listener: its server side is listed in tcp6
    /// only (as `::ffff:127.0.0.1`), and is found there.
    #[test]
    fn an_ipv4_connection_to_a_dual_stack_listener_is_found() {
        // `[::]` with IPV6_V6ONLY off (Linux's default): skipped where IPv6 is off.
        let Ok(l) = std::net::TcpListener::bind("[::]:0") else {
            return;
        };
        let port = l.local_addr().unwrap().port();
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let got = find(c.peer_addr().unwrap(), c.local_addr().unwrap()).unwrap();
        assert_eq!(got.uid, own_uid());
    }

    /// Rows are matched on both ends, in the kernel's byte order; uid and inode are read from
    /// their columns.
    #[test]
    fn rows_match_on_both_ends() {
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let peer: SocketAddr = "127.0.0.1:8200".parse().unwrap();
        let row = |l: &str, r: &str, uid: u32, inode: u64| {
            format!(
                "   0: {l} {r} 01 00000000:00000000 00:00000000 00000000  {uid}        0 {inode} 1 0 20 4 30 10 -1\n"
            )
        };
        let text = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n{}{}",
            row(&encode(local), &encode(peer), 1000, 11),
            row(&encode(peer), &encode(local), 998, 22),
        );
        assert_eq!(
            find_in(&text, peer, local),
            Some(Row {
                uid: 998,
                inode: 22
            })
        );
        assert_eq!(find_in(&text, local, peer).map(|r| r.inode), Some(11));
        assert_eq!(
            encode(peer),
            format!("{:08X}:2008", u32::from_ne_bytes([127, 0, 0, 1]))
        );
        let v6: SocketAddr = "[::1]:8200".parse().unwrap();
        assert_eq!(
            encode(v6),
            format!(
                "000000000000000000000000{:08X}:2008",
                u32::from_ne_bytes([0, 0, 0, 1])
            )
        );
    }
}
