//! Opening files whose path a caller chose, without letting the path decide
//! more than the caller may: [`open_as`] opens a path with the caller's own
//! credentials (so the kernel decides, exactly as it would for the caller),
//! and [`open_nofollow`] walks an absolute path from `/` one component at a
//! time without following any symbolic link (so a directory swapped for a
//! link after a check cannot redirect the daemon).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

/// Whom a file is opened as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Creds {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Supplementary groups (the primary gid may be among them).
    pub(crate) groups: Vec<u32>,
}

/// Flags every open here adds: no controlling terminal, never block on a
/// FIFO or device, never leak into a child.
const SAFE: libc::c_int = libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC;

fn cstr(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

fn openat(dir: libc::c_int, name: &CString, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call;
    // openat(2) only reads it. No mode argument is needed: O_CREAT is never
    // among the flags passed here.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the absolute, normalised `path` as an `O_PATH` descriptor, following
/// no symbolic link in any component: a link anywhere is an error (ELOOP or
/// ENOTDIR), and `..` is refused. The final component, if it is a link, is
/// opened as the link itself, which the caller's `fstat` then tells apart.
/// An `O_PATH` descriptor opens nothing (no device is touched); use [`reopen`]
/// to read or change the file it names.
pub(crate) fn open_nofollow(path: &Path) -> io::Result<OwnedFd> {
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_string());
    if !path.is_absolute() {
        return Err(invalid("not an absolute path"));
    }
    let names: Vec<&std::ffi::OsStr> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(Ok(n)),
            Component::RootDir | Component::CurDir => None,
            Component::ParentDir | Component::Prefix(_) => Some(Err(())),
        })
        .collect::<Result<_, _>>()
        .map_err(|()| invalid("`..` in a path"))?;
    let mut dir = openat(
        libc::AT_FDCWD,
        &cstr(b"/")?,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
    )?;
    let last = names.len().saturating_sub(1);
    for (i, name) in names.iter().enumerate() {
        let mut flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        if i < last {
            flags |= libc::O_DIRECTORY;
        }
        dir = openat(dir.as_raw_fd(), &cstr(name.as_bytes())?, flags)?;
    }
    Ok(dir)
}

/// Opens the file an `O_PATH` descriptor names, read-only, through
/// `/proc/self/fd`: the kernel hands back that very inode, whatever its
/// path names by now.
pub(crate) fn reopen(fd: &OwnedFd) -> io::Result<File> {
    let link = cstr(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes())?;
    openat(libc::AT_FDCWD, &link, libc::O_RDONLY | SAFE).map(File::from)
}

/// Opens `path` read-only with `creds` instead of the daemon's: in a
/// short-lived thread whose own credentials (Linux keeps them per thread)
/// are changed with raw system calls, so the rest of the daemon keeps root.
/// Every component is checked by the kernel for the caller, symbolic links
/// are followed only as far as the caller could follow them, and dropping
/// root clears the thread's capabilities (no `CAP_DAC_OVERRIDE`).
pub(crate) fn open_as(creds: &Creds, path: &Path) -> io::Result<File> {
    let c_path = cstr(path.as_os_str().as_bytes())?;
    let creds = creds.clone();
    std::thread::Builder::new()
        .name("open-as".into())
        .spawn(move || {
            become_caller(&creds)?;
            openat(libc::AT_FDCWD, &c_path, libc::O_RDONLY | SAFE).map(File::from)
        })?
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the thread opening the file failed")))
}

// 32-bit Arm's plain set*id calls take 16-bit ids; its 32-bit ones are these.
#[cfg(not(target_arch = "arm"))]
use libc::{
    SYS_setgroups as SYS_SETGROUPS, SYS_setresgid as SYS_SETRESGID, SYS_setresuid as SYS_SETRESUID,
};
#[cfg(target_arch = "arm")]
use libc::{
    SYS_setgroups32 as SYS_SETGROUPS, SYS_setresgid32 as SYS_SETRESGID,
    SYS_setresuid32 as SYS_SETRESUID,
};

/// Gives the calling thread (only) the caller's groups, gid and uid. libc's
/// wrappers would change every thread of the process: these are the raw
/// system calls, which change only the calling one.
fn become_caller(creds: &Creds) -> io::Result<()> {
    let check = |r: libc::c_long| {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    let groups: Vec<libc::gid_t> = creds.groups.clone();
    // SAFETY: setgroups reads `groups.len()` gids from a live Vec; the set*id
    // calls take plain integers. Each affects only this thread's credentials.
    unsafe {
        check(libc::syscall(SYS_SETGROUPS, groups.len(), groups.as_ptr()))?;
        check(libc::syscall(
            SYS_SETRESGID,
            creds.gid,
            creds.gid,
            creds.gid,
        ))?;
        check(libc::syscall(
            SYS_SETRESUID,
            creds.uid,
            creds.uid,
            creds.uid,
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed test should panic")]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn no_link_is_followed_anywhere() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("f"), b"x").unwrap();
        std::os::unix::fs::symlink(&real, d.path().join("link")).unwrap();
        std::os::unix::fs::symlink(real.join("f"), real.join("flink")).unwrap();

        let fd = open_nofollow(&real.join("f")).unwrap();
        let meta = reopen(&fd).unwrap().metadata().unwrap();
        assert_eq!(meta.ino(), std::fs::metadata(real.join("f")).unwrap().ino());
        // A linked parent is refused; a linked last component is the link.
        assert!(open_nofollow(&d.path().join("link/f")).is_err());
        let l = open_nofollow(&real.join("flink")).unwrap();
        assert!(reopen(&l).is_err(), "an O_PATH link cannot be reopened");
        assert!(open_nofollow(&real.join("../real/f")).is_err());
        assert!(open_nofollow(Path::new("relative")).is_err());
    }

    #[test]
    fn open_as_ourselves_reads() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let me = Creds {
            uid: crate::sys::euid(),
            gid: crate::sys::egid(),
            groups: vec![crate::sys::egid()],
        };
        // Unprivileged, setgroups fails: that is an error, never a fallback.
        match open_as(&me, &f) {
            Ok(file) => assert_eq!(file.metadata().unwrap().len(), 1),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
        }
    }
}
