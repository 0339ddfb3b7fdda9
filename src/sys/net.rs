//! Who is on the other end of a Unix socket.

use std::io;
use std::os::fd::AsRawFd;

/// The credentials the kernel recorded when the peer connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PeerCred {
    pub(crate) pid: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Supplementary groups at connect time (SO_PEERGROUPS), when the kernel
    /// provides them (Linux 4.13+); `None` means "ask /proc".
    pub(crate) groups: Option<Vec<u32>>,
}

/// SO_PEERGROUPS on every architecture we build for (asm-generic value);
/// the libc crate does not export it.
const SO_PEERGROUPS: libc::c_int = 59;

/// SO_PEERCRED (and SO_PEERGROUPS) of a connected Unix stream socket.
pub(crate) fn peer_cred(sock: &impl AsRawFd) -> io::Result<PeerCred> {
    let fd = sock.as_raw_fd();
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a valid, writable ucred and `len` holds its exact
    // size; the kernel writes at most `len` bytes and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCred {
        pid: u32::try_from(cred.pid).unwrap_or(0),
        uid: cred.uid,
        gid: cred.gid,
        groups: peer_groups(fd),
    })
}

fn peer_groups(fd: libc::c_int) -> Option<Vec<u32>> {
    // NGROUPS_MAX is 65536; start small and grow once if the kernel says so.
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    for _ in 0..2 {
        let mut len = libc::socklen_t::try_from(groups.len() * 4).ok()?;
        // SAFETY: `groups` is a writable buffer of exactly `len` bytes; the
        // kernel writes at most `len` bytes, or fails with ERANGE and stores
        // the size it needs in `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &raw mut len,
            )
        };
        let n = usize::try_from(len).ok()? / 4;
        if rc == 0 {
            groups.truncate(n);
            return Some(groups);
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) || n > 65536 {
            return None;
        }
        groups.resize(n, 0);
    }
    None
}

/// Writes to a connected socket with MSG_NOSIGNAL: a peer that has gone
/// is reported as EPIPE instead of killing this process with SIGPIPE,
/// which the command-line applets leave at its default for their output.
pub(crate) fn send_nosignal(sock: &impl AsRawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the whole
    // call, and send(2) only reads from it; a bad descriptor is an error.
    let n = unsafe {
        libc::send(
            sock.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_pair_sees_this_process() -> io::Result<()> {
        let (a, _b) = std::os::unix::net::UnixStream::pair()?;
        let cred = peer_cred(&a)?;
        assert_eq!(cred.pid, std::process::id());
        assert_eq!(cred.uid, crate::sys::euid());
        assert_eq!(cred.gid, crate::sys::egid());
        Ok(())
    }
}
