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

use std::net::SocketAddr;

/// The uid owning the server side of the loopback connection from `local` to `peer`: `None`
/// when the kernel's tables do not list it (the connection is already gone).
pub(crate) fn server_uid(local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    // The server's row: its own address is our peer, its remote address is us.
    crate::tcp_table::find(peer, local).map(|r| r.uid)
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

/// What to do when a loopback listener of another uid was refused because the user's
/// subordinate uid ranges cannot be read (that uid might be one the agent runs code under).
pub(crate) const SUBUID_UNREADABLE_HINT: &str = "make /etc/subuid readable (mode 0644) with one range a line, NAME_OR_UID:FIRST_UID:COUNT, as `newuidmap` reads it, then try again; or, for a server you run as yourself, allow it for this environment with `keyveil policy set ENV insecure-loopback on` (your factor)";

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

    /// A refusal says what to do next, and what that is depends on why: a listener of the
    /// user's own uid, or one that cannot be told apart because `/etc/subuid` is unreadable.
    #[test]
    fn a_refused_database_port_says_what_to_do() {
        let refused = |why: String| super::super::DynamicError::Connect {
            engine: "postgres",
            target: "u@127.0.0.1:5432/db".to_owned(),
            reason: format!("{why}; the admin password {NOT_SENT}"),
        };
        let unknown: Result<Vec<_>, String> = Err(format!(
            "/etc/subuid cannot be read (permission denied), {}",
            crate::subuid::SUBUID_MARK
        ));
        let e = refused(maybe_ours(998, 1000, &unknown).unwrap());
        let hint = e.hint().unwrap();
        assert!(hint.contains("make /etc/subuid readable"), "{hint}");
        let e = refused(maybe_ours(1000, 1000, &Ok(Vec::new())).unwrap());
        assert_eq!(e.hint(), Some(DB_OWNER_HINT));
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
}
