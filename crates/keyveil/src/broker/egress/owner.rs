//! Who is at the other end of a loopback TCP connection to a run's proxy: the socket's inode
//! from `/proc/self/net/tcp` (the kernel's table of this network namespace), then the process
//! of the run's tree that holds a descriptor on it. Another process of the same user that read
//! the proxy's address from the child's environment holds no such descriptor and is refused.

use std::net::SocketAddr;

/// The inode of the socket whose local end is `peer` and remote end `local` (the connecting
/// side of a connection the proxy accepted), from the kernel's tables (`crate::tcp_table`).
/// `None`: not found (gone already, or not loopback IPv4/IPv6).
pub(crate) fn socket_inode(peer: SocketAddr, local: SocketAddr) -> Option<u64> {
    crate::tcp_table::find(peer, local).map(|r| r.inode)
}

/// The process of the tree rooted at `root` (the run's reaper and every descendant) that holds
/// a descriptor on socket `inode`, if one does.
pub(crate) fn holder_in_tree(root: i32, inode: u64) -> Option<i32> {
    let want = format!("socket:[{inode}]");
    let mut pids = vec![root];
    pids.extend(crate::reap::tree::descendants(root));
    pids.into_iter().find(|pid| {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        dir.flatten()
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == want.as_str()))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_connection_of_this_process_is_found_and_attributed_to_it() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, peer) = l.accept().unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
        let inode = socket_inode(peer, l.local_addr().unwrap()).unwrap();
        let me = i32::try_from(std::process::id()).unwrap();
        assert_eq!(holder_in_tree(me, inode), Some(me));
        // A tree that does not hold it (pid 1's descendants exclude nothing, so use a child
        // that holds no socket).
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        assert_eq!(holder_in_tree(pid, inode), None);
        let _ = child.kill();
        let _ = child.wait();
    }
}
