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
///
/// No "magic" link (`/proc/self/fd/N`, `/dev/fd/N`) is followed: the thread
/// is the daemon's, so through them it would reach the daemon's own open
/// files past the directories that shut the caller out. That takes
/// `openat2` (Linux 5.6); without it, this fails rather than guess.
pub(crate) fn open_as(creds: &Creds, path: &Path) -> io::Result<File> {
    let c_path = cstr(path.as_os_str().as_bytes())?;
    let creds = creds.clone();
    std::thread::Builder::new()
        .name("open-as".into())
        .spawn(move || {
            become_caller(&creds)?;
            openat2_no_magic(&c_path, libc::O_RDONLY | SAFE).map(File::from)
        })?
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the thread opening the file failed")))
}

fn openat2_no_magic(path: &CString, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain data (three u64s); all-zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = u64::try_from(flags).unwrap_or_default();
    how.resolve = libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `path` is NUL-terminated and `how` a fully initialised
    // open_how whose size is passed along; openat2(2) only reads both.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd).map_err(|_| io::Error::other("openat2: bad descriptor"))?;
    // SAFETY: `fd` was just returned by openat2(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Removes the file's access ACL, if it has one: a uid that owned the file
/// for a while may have granted itself access there, which giving the file
/// back (owner and mode) would not take away.
pub(crate) fn remove_acl(file: &File) -> io::Result<()> {
    let name = cstr(b"system.posix_acl_access")?;
    // SAFETY: `name` is NUL-terminated and outlives the call; the descriptor
    // is open for the duration of the borrow.
    let r = unsafe { libc::fremovexattr(file.as_raw_fd(), name.as_ptr()) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // No ACL there, or a filesystem without them: nothing to remove.
        Some(libc::ENODATA | libc::EOPNOTSUPP) => Ok(()),
        _ => Err(e),
    }
}

/// Bytes an unprivileged writer may still use on the filesystem of `file`.
pub(crate) fn free_space(file: &File) -> io::Result<u64> {
    // SAFETY: statvfs is plain data; all-zero is a valid value for it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable statvfs and the descriptor is open.
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // The field types differ between targets (c_ulong on 32-bit ones).
    #[allow(
        clippy::useless_conversion,
        reason = "not the same type on every target"
    )]
    Ok(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
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

/// Grants `uid` read-write access through an access ACL, as a uid that owns
/// the file could (tests of [`remove_acl`]'s callers).
#[cfg(test)]
pub(crate) fn grant_acl(file: &File, uid: u32) -> io::Result<()> {
    // The kernel's xattr form of an ACL: version 2, then (tag, perm, id)
    // entries for the owner, `uid`, the group, the mask and others.
    let mut blob = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX),
        (0x02, 6, uid),
        (0x04, 4, u32::MAX),
        (0x10, 6, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        blob.extend_from_slice(&tag.to_le_bytes());
        blob.extend_from_slice(&perm.to_le_bytes());
        blob.extend_from_slice(&id.to_le_bytes());
    }
    let name = cstr(b"system.posix_acl_access")?;
    // SAFETY: `name` and `blob` are live for the call, which only reads them.
    let r = unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            name.as_ptr(),
            blob.as_ptr().cast(),
            blob.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the file has an access ACL.
#[cfg(test)]
pub(crate) fn has_acl(file: &File) -> bool {
    let Ok(name) = cstr(b"system.posix_acl_access") else {
        return false;
    };
    // SAFETY: a size query: no buffer is written with a length of 0.
    unsafe { libc::fgetxattr(file.as_raw_fd(), name.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
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
