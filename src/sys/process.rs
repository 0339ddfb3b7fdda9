//! Starting and watching VM processes: fork/exec under another uid/gid in a
//! new session, with an optional AppArmor label applied on exec, and the
//! liveness checks and signals the VM layer needs afterwards.
//!
//! A VM is not tied to the daemon: it must outlive a daemon restart and be
//! adopted again. A helper the daemon runs for itself (the KVM probe) is
//! tied to it with `PR_SET_PDEATHSIG` instead: see [`Spawn::dies_with_thread`].

use std::ffi::{CString, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Exit code of a child that could not enter its required AppArmor profile.
/// Chosen outside QEMU's own codes (0, 1) and the shell's (126, 127).
pub(crate) const EXIT_APPARMOR: i32 = 97;
/// Exit code of a [`Spawn::dies_with_thread`] child whose parent was gone
/// before it could tie itself to it.
const EXIT_ORPHANED: i32 = 98;

/// What to run and as whom.
#[derive(Debug)]
pub(crate) struct Spawn {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    /// `Some((uid, gid))` drops to that identity with no supplementary groups.
    pub(crate) ids: Option<(u32, u32)>,
    /// Receives stdout and stderr; stdin is always /dev/null.
    pub(crate) log: File,
    /// `exec <profile>` is written to the kernel before exec.
    pub(crate) apparmor: Option<Label>,
    /// Descriptors the child inherits, as fds 3, 4, … in this order.
    pub(crate) fds: Vec<OwnedFd>,
    /// The child is SIGKILLed when the THREAD that spawns it ends (prctl(2):
    /// the parent is the creating thread), which includes the daemon being
    /// SIGKILLed. So set it only where the calling thread outlives the
    /// child's useful life, and never for a VM.
    pub(crate) dies_with_thread: bool,
}

/// Where inherited descriptors are parked before they are moved to 3, 4, …:
/// above any target, so that moving one never overwrites another.
const PARK_FD: RawFd = 64;
/// At most this many inherited descriptors (targets stay below [`PARK_FD`]).
const MAX_FDS: usize = 32;

/// An AppArmor profile to change to on exec.
#[derive(Clone, Debug)]
pub(crate) struct Label {
    pub(crate) profile: String,
    /// When set, a child that cannot apply the label exits with
    /// [`EXIT_APPARMOR`] instead of running unconfined.
    pub(crate) required: bool,
}

/// Starts the process and returns its pid.
pub(crate) fn spawn(spec: Spawn) -> io::Result<u32> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(spec.log.try_clone()?)
        .stderr(spec.log);
    if let Some((uid, gid)) = spec.ids {
        // std calls setgroups(0) before setgid/setuid when started as root,
        // so no supplementary group of the daemon survives.
        cmd.uid(uid).gid(gid);
    }
    // Everything the child needs is allocated here, before fork: between
    // fork and exec only async-signal-safe calls are allowed.
    if spec.fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many inherited descriptors",
        ));
    }
    let mut parked = Vec::with_capacity(spec.fds.len());
    for fd in &spec.fds {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new one
        // (or -1), which we take ownership of at once.
        let raw = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, PARK_FD) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        parked.push(unsafe { OwnedFd::from_raw_fd(raw) });
    }
    let moves: Vec<(RawFd, RawFd)> = parked
        .iter()
        .zip(3..)
        .map(|(fd, target)| (fd.as_raw_fd(), target))
        .collect();
    let label = match &spec.apparmor {
        Some(l) => Some((
            CString::new(format!("exec {}", l.profile))
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in profile name"))?,
            l.required,
        )),
        None => None,
    };
    let dies_with_thread = spec.dies_with_thread;
    // SAFETY: getpid has no preconditions and cannot fail.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (setsid, prctl, getppid, open, write, close,
    // _exit) on memory prepared before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // A session of its own: the daemon's terminal or process group
            // being signalled must not reach the VM.
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if dies_with_thread {
                // Kept across exec (QEMU is not set-uid), and set after std
                // changed uid/gid, which would clear it.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The daemon died between fork and prctl: the signal will
                // never come, so do not run at all.
                if libc::getppid() != parent {
                    libc::_exit(EXIT_ORPHANED);
                }
            }
            // dup2 leaves the new descriptor without FD_CLOEXEC: it survives exec.
            for &(from, to) in &moves {
                if libc::dup2(from, to) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // Nothing else the daemon inherited from its own parent (a
            // jobserver pipe, a socket from a service manager) reaches QEMU.
            // Marked close-on-exec rather than closed: std's exec-error pipe
            // must stay usable until exec.
            let first = 3 + moves.len() as libc::c_uint;
            if libc::syscall(
                libc::SYS_close_range,
                first,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) != 0
            {
                for fd in first..1024 {
                    libc::fcntl(fd as RawFd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            if let Some((line, required)) = &label {
                if !write_exec_label(line) && *required {
                    libc::_exit(EXIT_APPARMOR);
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(parked);
    // Dropping `Child` neither waits nor kills; `reap` collects the status.
    Ok(child.id())
}

/// Writes `exec <profile>` to the AppArmor exec attribute, new interface
/// first. Called in the forked child: raw syscalls only.
fn write_exec_label(line: &CString) -> bool {
    const PATHS: [&[u8]; 2] = [
        b"/proc/self/attr/apparmor/exec\0",
        b"/proc/self/attr/exec\0",
    ];
    let bytes = line.as_bytes();
    for path in PATHS {
        // SAFETY: `path` is NUL-terminated static data; open, write and close
        // are async-signal-safe and `bytes` outlives the calls.
        let ok = unsafe {
            let fd = libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                continue;
            }
            let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
            libc::close(fd);
            n == bytes.len() as isize
        };
        if ok {
            return true;
        }
    }
    false
}

/// An `ifreq` naming `ifname`, or an error if the name cannot be one.
fn ifreq(ifname: &str) -> io::Result<libc::ifreq> {
    let name = ifname.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // SAFETY: ifreq is plain old data for which all-zero bytes are valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(name) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// Ties a tool the daemon runs and waits for (qemu-img) to the thread that
/// waits, as [`Spawn::dies_with_thread`] ties the KVM probe: SIGKILL when
/// the daemon dies, so that no change of the dead daemon's goes on under
/// the next one.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    // SAFETY: getpid has no preconditions and cannot fail.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the forked child before exec (after std
    // changed uid/gid, which would clear the flag) and only makes
    // async-signal-safe calls (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The daemon died before prctl: the signal will never come.
            if libc::getppid() != parent {
                libc::_exit(EXIT_ORPHANED);
            }
            Ok(())
        });
    }
}

/// Creates the persistent tap `ifname`, puts it on `bridge` and brings it
/// up: the VM's bridged NIC, which QEMU then inherits through [`open_tap`].
pub(crate) fn create_tap(ifname: &str, bridge: &str) -> io::Result<()> {
    let tun = open_tap(ifname)?;
    // SAFETY: TUNSETPERSIST takes an int by value on an attached tun descriptor.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_int) } < 0 {
        return Err(io::Error::last_os_error());
    }
    drop(tun);
    let attached = (|| {
        // SAFETY: a plain socket call; the descriptor is owned at once.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = ifreq(ifname)?;
        // SAFETY: SIOCGIFINDEX reads the name and writes the index of one ifreq.
        if unsafe {
            libc::ioctl(
                sock.as_raw_fd(),
                libc::SIOCGIFINDEX as libc::Ioctl,
                &mut req,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the union member SIOCGIFINDEX just wrote.
        let index = unsafe { req.ifr_ifru.ifru_ifindex };
        let mut br = ifreq(bridge)?;
        br.ifr_ifru.ifru_ifindex = index;
        // SAFETY: SIOCBRADDIF reads one ifreq: the bridge's name, the port's index.
        if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRADDIF, &mut br) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write one ifreq.
        if unsafe {
            libc::ioctl(
                sock.as_raw_fd(),
                libc::SIOCGIFFLAGS as libc::Ioctl,
                &mut req,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the flags member SIOCGIFFLAGS just wrote.
        unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        // SAFETY: as above.
        if unsafe {
            libc::ioctl(
                sock.as_raw_fd(),
                libc::SIOCSIFFLAGS as libc::Ioctl,
                &mut req,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })();
    if attached.is_err() {
        let _ = delete_tap(ifname);
    }
    attached
}

/// Removes the persistent tap `ifname` (it goes once QEMU has closed it too).
pub(crate) fn delete_tap(ifname: &str) -> io::Result<()> {
    let tun = open_tap(ifname)?;
    // SAFETY: TUNSETPERSIST takes an int by value on an attached tun descriptor.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 0 as libc::c_int) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `SIOCBRADDIF` (linux/sockios.h); not in the libc crate for musl.
const SIOCBRADDIF: libc::Ioctl = 0x89a2;

/// Opens the existing tap device `ifname` for a VM to inherit: root opens
/// /dev/net/tun, so QEMU's uid needs no access to it.
pub(crate) fn open_tap(ifname: &str) -> io::Result<OwnedFd> {
    let name = ifname.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain old data for which all-zero bytes are valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(name) {
        *dst = src as libc::c_char;
    }
    // What libvirt asks for too: a tap, no packet info, virtio-net headers.
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is, on an
    // open /dev/net/tun descriptor.
    let r = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tun.into())
}

/// Whether a process has finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Running,
    Exited(Exit),
}

/// How a process ended, as far as the caller can know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Our child, which exited with this code.
    Code(i32),
    /// Our child, which a signal ended.
    Signal(i32),
    /// Not our child: only that it is gone.
    Unknown,
}

impl Exit {
    pub(crate) fn code(self) -> Option<i32> {
        match self {
            Exit::Code(c) => Some(c),
            _ => None,
        }
    }
}

/// Checks on `pid` without blocking, reaping it if it is our child.
pub(crate) fn state(pid: u32) -> State {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return State::Exited(Exit::Unknown);
    };
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid with WNOHANG only writes the status integer we own.
    let r = unsafe { libc::waitpid(raw, &mut status, libc::WNOHANG) };
    if r == raw {
        return State::Exited(if libc::WIFEXITED(status) {
            Exit::Code(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else {
            Exit::Unknown
        });
    }
    if r == 0 {
        return State::Running;
    }
    // Not our child (adopted after a daemon restart): ask /proc. A zombie
    // waiting for another parent counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => match stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
        {
            Some('Z' | 'X') | None => State::Exited(Exit::Unknown),
            Some(_) => State::Running,
        },
        Err(_) => State::Exited(Exit::Unknown),
    }
}

/// Sends `signal` to `pid`. A process that is already gone is not an error.
pub(crate) fn kill(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let raw = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    if raw <= 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to signal a process group",
        ));
    }
    // SAFETY: kill has no memory effects; raw > 0 so it targets one process.
    let r = unsafe { libc::kill(raw, signal) };
    sent_or_gone(r)
}

/// Whether the kernel's log says its out-of-memory killer ended `pid`
/// (`Killed process PID (…)`, from a cgroup's limit or the whole host's).
/// Reads the log without waiting; false when it cannot be read.
pub(crate) fn oom_killed(pid: u32) -> bool {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut log) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return false;
    };
    let needle = format!("Killed process {pid} (");
    let mut found = false;
    // One record per read; the oldest may be overwritten under us (EPIPE),
    // which only skips it. The end of the buffer is EAGAIN.
    let mut record = vec![0u8; 8192];
    loop {
        match log.read(&mut record) {
            Ok(0) => break,
            Ok(n) => {
                let text = String::from_utf8_lossy(record.get(..n).unwrap_or_default());
                found |= text.contains(&needle);
            }
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
            Err(_) => break,
        }
    }
    found
}

/// Kills process group `pgid`: a child started as a group leader and
/// everything it started. A group that is already gone is not an error.
pub(crate) fn kill_group(pgid: u32) -> io::Result<()> {
    let raw = libc::pid_t::try_from(pgid)
        .ok()
        .filter(|&g| g > 1)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pgid out of range"))?;
    // SAFETY: killpg has no memory effects; raw > 1 names one group, never
    // the caller's own (0) or every process (-1).
    let r = unsafe { libc::killpg(raw, libc::SIGKILL) };
    sent_or_gone(r)
}

/// The effective uid of the daemon.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// The result of a kill(2) or killpg(2) that returned `r`: a target that no
/// longer exists (ESRCH) is what the caller wanted too.
fn sent_or_gone(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a failed test should panic")]
    use super::*;

    #[test]
    fn spawned_child_is_reaped_with_its_exit_code() {
        let log = tempfile::tempfile().unwrap();
        let pid = spawn(Spawn {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "exit 7".into()],
            ids: None,
            log,
            apparmor: None,
            fds: vec![],
            dies_with_thread: false,
        })
        .unwrap();
        let mut st = state(pid);
        for _ in 0..200 {
            if st != State::Running {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            st = state(pid);
        }
        assert_eq!(st, State::Exited(Exit::Code(7)));
    }

    #[test]
    fn missing_program_is_an_error_not_a_child() {
        let log = tempfile::tempfile().unwrap();
        let err = spawn(Spawn {
            program: "/nonexistent/qemu".into(),
            args: vec![],
            ids: None,
            log,
            apparmor: None,
            fds: vec![],
            dies_with_thread: false,
        })
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn inherited_descriptors_arrive_as_3_and_4() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "first").unwrap();
        std::fs::write(&b, "second").unwrap();
        let fds = vec![
            File::open(&a).unwrap().into(),
            File::open(&b).unwrap().into(),
        ];
        let out = dir.path().join("out");
        let pid = spawn(Spawn {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "cat <&3; cat <&4; ls -l /proc/self/fd".into()],
            ids: None,
            log: File::create(&out).unwrap(),
            apparmor: None,
            fds,
            dies_with_thread: false,
        })
        .unwrap();
        while state(pid) == State::Running {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.starts_with("firstsecond"), "{text}");
        assert!(text.contains(" 3 -> ") && text.contains(" 4 -> "), "{text}");
        // cargo's jobserver pipe, inherited by this test, must not get through.
        assert!(!text.contains("pipe:"), "a descriptor leaked: {text}");
    }

    /// PDEATHSIG follows the spawning thread: when it ends, so does the
    /// child; without the flag the child lives on (as a VM must).
    #[test]
    fn a_tied_child_dies_with_its_thread() {
        let start = |tied| {
            std::thread::spawn(move || {
                spawn(Spawn {
                    program: "/bin/sleep".into(),
                    args: vec!["30".into()],
                    ids: None,
                    log: tempfile::tempfile().unwrap(),
                    apparmor: None,
                    fds: vec![],
                    dies_with_thread: tied,
                })
                .unwrap()
            })
            .join()
            .unwrap()
        };
        let (tied, free) = (start(true), start(false));
        let mut st = state(tied);
        for _ in 0..200 {
            if st != State::Running {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            st = state(tied);
        }
        let free_st = state(free);
        kill(free, libc::SIGKILL).unwrap();
        while state(free) == State::Running {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            st,
            State::Exited(Exit::Signal(libc::SIGKILL)),
            "the tied child outlived its thread"
        );
        assert_eq!(
            free_st,
            State::Running,
            "the untied child died with the thread"
        );
    }

    #[test]
    fn signalling_a_gone_process_is_fine() {
        assert!(kill(0, libc::SIGTERM).is_err());
        assert_eq!(state(u32::MAX), State::Exited(Exit::Unknown));
    }
}
