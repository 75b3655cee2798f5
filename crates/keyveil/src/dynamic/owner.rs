//! Who holds the other end of a plain loopback connection (to an OpenBao node over HTTP, to
//! PostgreSQL), read from the kernel's socket tables (`/proc/net/tcp`, `/proc/net/tcp6`) after
//! `connect` and before a byte is sent.
//!
//! The server side of a TCP connection is a socket of its own (in the accept queue, or accepted),
//! listed with the owner of the listening socket it came from: the uid is fixed when the
//! listener was created, so it is read from the very connection the token would travel on (no
//! gap between a check and the use). A listener of the broker's own uid may be any process of
//! that user (an agent holding the port while the `bao proxy` is down); a listener of another
//! user (a proxy run as a service user, root's) cannot be, unless that uid is one of the user's
//! subordinate uids (`/etc/subuid`): `newuidmap` lets the user (so the agent) run a listener
//! under any of them, in a user namespace of its own sharing the host's network, so those
//! count as the user's own ([`maybe_ours`]).

use std::net::{IpAddr, SocketAddr};

/// The uid owning the server side of the loopback connection from `local` to `peer`: `None`
/// when the kernel's tables do not list it (the connection is already gone).
pub(crate) fn server_uid(local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let in_table = |table: &str, local: SocketAddr, peer: SocketAddr| {
        let text = std::fs::read_to_string(table).ok()?;
        server_uid_in(&text, local, peer)
    };
    match (local, peer) {
        (SocketAddr::V4(l), SocketAddr::V4(p)) => {
            in_table("/proc/net/tcp", local, peer).or_else(|| {
                // A dual-stack IPv6 listener (`[::]`, as Go programs listen on `0.0.0.0:PORT`
                // or `:PORT`) holds its IPv4 connections in tcp6, as `::ffff:a.b.c.d`.
                let mapped = |a: std::net::SocketAddrV4| {
                    SocketAddr::new(IpAddr::V6(a.ip().to_ipv6_mapped()), a.port())
                };
                in_table("/proc/net/tcp6", mapped(l), mapped(p))
            })
        }
        _ => in_table("/proc/net/tcp6", local, peer),
    }
}

/// [`server_uid`] over the text of a socket table.
pub(crate) fn server_uid_in(text: &str, local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    // The server's row: its local address is our peer, its remote address is us.
    let want_local = encode(peer);
    let want_remote = encode(local);
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st queues timer retrnsmt uid ...
        let (l, r, uid) = (f.get(1)?, f.get(2)?, f.get(7)?);
        (l.eq_ignore_ascii_case(&want_local) && r.eq_ignore_ascii_case(&want_remote))
            .then(|| uid.parse().ok())
            .flatten()
    })
}

/// An address as the kernel prints it: each 32-bit word of the address in host byte order
/// (`%08X`), a colon, the port (`%04X`).
fn encode(a: SocketAddr) -> String {
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

/// Why a listener of `uid` may be a process the broker's user runs (an agent): `me` itself, a
/// uid of the user's `subordinate` ranges, or any uid when those ranges cannot be read (`Err`,
/// why). `None`: another user's.
pub(crate) fn maybe_ours(
    uid: u32,
    me: u32,
    subordinate: &Result<Vec<crate::subuid::Range>, String>,
) -> Option<String> {
    if uid == me {
        return Some(format!(
            "the port is held by a process of your own user (uid {uid}), which any program you run (an agent too) could be"
        ));
    }
    match subordinate {
        Ok(r) if crate::subuid::in_ranges(r, uid) => Some(format!(
            "the port is held by uid {uid}, one of your own user's subordinate uids (/etc/subuid), which any program you run (an agent too) can run a listener under"
        )),
        Ok(_) => None,
        Err(why) => Some(format!(
            "the port is held by uid {uid}, and {why} from another user's"
        )),
    }
}

/// What the reason of a connection refused by [`check_stream`] says once the caller adds
/// "; the … was not sent".
pub(crate) const NOT_SENT: &str = "was not sent";

/// What to do when a database's loopback port is refused by [`check_stream`].
pub(crate) const DB_OWNER_HINT: &str = "run the database as its own service user (as distribution packages do), or, for a server you run as yourself, allow it for this environment with `keyveil policy set ENV insecure-loopback on` (your factor)";

/// Whether `tcp`'s server side may be sent a secret: `Err` says why not (nothing is sent).
/// A listener of the broker's own user, or of one of its subordinate uids ([`maybe_ours`]),
/// only where `same_user` (the environment's `insecure-loopback` policy) allows it.
pub(crate) fn check_stream(tcp: &tokio::net::TcpStream, same_user: bool) -> Result<(), String> {
    let (Ok(local), Ok(peer)) = (tcp.local_addr(), tcp.peer_addr()) else {
        return Err("the connection has no address".to_owned());
    };
    let me = own_uid();
    let Some(uid) = server_uid(local, peer) else {
        return Err(
            "the kernel lists no listener for this connection; nothing was sent".to_owned(),
        );
    };
    if same_user {
        return Ok(());
    }
    let subordinate = if uid == me {
        Ok(Vec::new())
    } else {
        crate::subuid::ranges_of(me)
    };
    maybe_ours(uid, me, &subordinate).map_or(Ok(()), Err)
}

/// The broker's own (effective) uid.
pub(crate) fn own_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A live loopback connection: the server side is found, owned by this process's uid.
    #[test]
    fn the_server_side_of_a_live_connection_is_ours() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let got = server_uid(c.local_addr().unwrap(), c.peer_addr().unwrap());
        assert_eq!(got, Some(own_uid()));
        // A peer nobody is connected to finds nothing (so nothing is sent).
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(server_uid(c.local_addr().unwrap(), other), None);
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
        let got = server_uid(c.local_addr().unwrap(), c.peer_addr().unwrap());
        assert_eq!(got, Some(own_uid()));
    }

    /// Our uid and our subordinate uids are ours; another uid is not, unless our ranges cannot
    /// be read (then nothing tells them apart).
    #[test]
    fn subordinate_uids_count_as_ours() {
        let ranges: Result<Vec<_>, String> = Ok(vec![(100_000, 165_536)]);
        assert!(
            maybe_ours(1000, 1000, &ranges)
                .unwrap()
                .contains("your own user")
        );
        let sub = maybe_ours(100_000, 1000, &ranges).unwrap();
        assert!(sub.contains("subordinate"), "{sub}");
        assert!(maybe_ours(165_535, 1000, &ranges).is_some());
        assert_eq!(maybe_ours(165_536, 1000, &ranges), None);
        assert_eq!(maybe_ours(998, 1000, &ranges), None);
        let unknown: Result<Vec<_>, String> = Err("the file cannot be read, so x".to_owned());
        assert!(maybe_ours(998, 1000, &unknown).is_some());
    }

    /// Rows are matched on both ends, in the kernel's byte order.
    #[test]
    fn rows_match_on_both_ends() {
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let peer: SocketAddr = "127.0.0.1:8200".parse().unwrap();
        let row = |l: &str, r: &str, uid: u32| {
            format!(
                "   0: {l} {r} 01 00000000:00000000 00:00000000 00000000  {uid}        0 1234 1 0 20 4 30 10 -1\n"
            )
        };
        let text = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n{}{}",
            row(&encode(local), &encode(peer), 1000),
            row(&encode(peer), &encode(local), 998),
        );
        assert_eq!(server_uid_in(&text, local, peer), Some(998));
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
