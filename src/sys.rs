//! The few system calls the standard library does not wrap, and the files
//! under /etc and /proc that stand in for a user database.
//!
//! This is the only module where `unsafe` is allowed; every block says why it
//! is sound. Everything here works in a static musl binary on a host with no
//! NSS, no passwd entries and no resolver.

pub(crate) mod fs;
mod net;
pub(crate) mod process;
mod tty;
mod user;

pub(crate) use net::{peer_cred, send_nosignal, PeerCred};
pub(crate) use tty::read_secret;
pub use tty::{window_size, RawTerminal};
pub(crate) use user::{group_gid, ids_unused, proc_groups, subuid_owner, IdInUse};

/// Sets the file-creation mask and returns the previous one.
pub(crate) fn umask(mask: u32) -> u32 {
    // SAFETY: umask(2) only changes this process's mask and cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

/// The effective user id of this process.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The effective group id of this process.
pub(crate) fn egid() -> u32 {
    // SAFETY: getegid(2) has no preconditions and cannot fail.
    unsafe { libc::getegid() }
}

/// Raises this process's soft limit on open files to its hard limit (a
/// service manager often leaves it at 1024) and returns the limit now in
/// force.
pub(crate) fn raise_fd_limit() -> std::io::Result<u64> {
    // SAFETY: rlimit is plain data; all-zero is a valid value for it.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit only reads `lim`, a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// The kernel's node name and release, from one uname(2): no path lookup
/// and no file to open, since `GET /1.0` asks for both on every call.
fn uts() -> Option<(String, String)> {
    // SAFETY: utsname is plain data (arrays of c_char), valid when zeroed.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname writes only into the struct it is given.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    // The kernel NUL-terminates each field; a field without a NUL is taken
    // whole rather than read past.
    let text = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).trim().to_string()
    };
    Some((text(&u.nodename), text(&u.release)))
}

/// The host name, as the kernel has it (no resolver involved), and the
/// running kernel's release (`uname -r`), from one uname(2).
pub(crate) fn names() -> (String, String) {
    let (host, release) = uts().unwrap_or_default();
    let host = if host.is_empty() {
        "localhost".to_string()
    } else {
        host
    };
    (host, release)
}

/// The host name alone; see [`names`].
pub(crate) fn hostname() -> String {
    names().0
}

/// Restores the default SIGPIPE action, so that a command-line applet whose
/// reader went away (`kvmbox-cert show … | head -1`) ends quietly like any
/// Unix tool instead of failing on EPIPE. Never call it in the daemon, which
/// must see EPIPE on a closed socket rather than die; the client writes to
/// its socket with [`send_nosignal`], so a daemon that hangs up is an error
/// it reports, not a silent death.
pub fn default_sigpipe() {
    // SAFETY: signal() with SIG_DFL installs no handler code; it only changes
    // this process's disposition for SIGPIPE and has no memory effects.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed test should panic")]
mod tests {
    #[test]
    fn uname_says_what_proc_says() {
        let proc = |f: &str| {
            std::fs::read_to_string(format!("/proc/sys/kernel/{f}"))
                .unwrap()
                .trim()
                .to_string()
        };
        let (host, release) = super::names();
        assert_eq!(host, proc("hostname"));
        assert_eq!(release, proc("osrelease"));
        assert_eq!(super::hostname(), host);
    }
}
