//! Host files a caller names — a VM's disks, its kernel and initrd, an image
//! to import — which the daemon, as root, later reads, hands to a VM's uid
//! and gives back.
//!
//! A path is only a name, and whoever owns a directory on it can make it
//! name another file at any moment. So a path is checked once, by opening it
//! as the caller ([`check`]); what is kept is the file itself: its device and
//! inode, its owner and mode, and its real path ([`Pin`]). Every later use
//! goes through [`Pin::open`], which walks the real path without following
//! any link and refuses a file that is not the one checked.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fault::{Blame, Fault};
use crate::sys::fs::{self as sysfs, Creds};

/// Whom the daemon opens a file for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Opener {
    /// The daemon itself: its own files, and callers with full access to the
    /// host (local root, an unrestricted remote admin).
    Daemon,
    /// A local user: the kernel decides with this user's credentials.
    Caller(Creds),
}

/// What a caller must have of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// Read it (a kernel, an initrd, an image to import).
    Read,
    /// Own it (a disk: the daemon hands it to the VM's uid and back).
    Own,
}

/// A file as it was when checked. Stored with the instance that uses it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// Its path with every link resolved: what QEMU and the AppArmor profile
    /// are given, and what [`Pin::open`] walks.
    pub real: PathBuf,
    pub dev: u64,
    pub ino: u64,
    /// Owner and permission bits when checked: what it is given back.
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// Why a host file cannot be used.
#[derive(thiserror::Error)]
pub enum Error {
    #[error("{}: no such file", .0.display())]
    Missing(PathBuf),
    #[error("{}: not an absolute path", .0.display())]
    Relative(PathBuf),
    #[error("{}: the calling user cannot read it", .0.display())]
    Denied(PathBuf),
    #[error("{}: not a regular file", .0.display())]
    NotFile(PathBuf),
    #[error("{}: a disk must belong to the calling user", .0.display())]
    NotOwner(PathBuf),
    #[error("{}: only the daemon's own user may name host paths while it does not run as root", .0.display())]
    Unprivileged(PathBuf),
    #[error("{}: a link loop, or a link of /proc or /dev/fd, is on its path", .0.display())]
    Loop(PathBuf),
    #[error("{}: this kernel cannot open files as another user safely (openat2 needs Linux 5.6); only root may name host paths", .0.display())]
    OldKernel(PathBuf),
    #[error("{} is no longer the file that was checked ({why}); remove the device and add it again", path.display())]
    Changed { path: PathBuf, why: &'static str },
    #[error("cannot open {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

crate::debug_as_display!(Error);

impl Blame for Error {
    /// The caller named something it may not use, unless opening it failed
    /// for a reason of the host's.
    fn fault(&self) -> Fault {
        match self {
            Error::Io { .. } => Fault::Host,
            _ => Fault::Denied,
        }
    }
}

fn opened(path: &Path, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR) => Error::Missing(path.into()),
        Some(libc::EACCES | libc::EPERM) => Error::Denied(path.into()),
        Some(libc::ELOOP) => Error::Loop(path.into()),
        Some(libc::ENOSYS) => Error::OldKernel(path.into()),
        _ => Error::Io {
            path: path.into(),
            source: e,
        },
    }
}

/// Opens `path` as `who` would open it and pins the file: it must be a
/// regular file, and with [`Need::Own`] one that belongs to the caller. The
/// returned file is the one checked: read from it, never from the path.
pub(crate) fn check(path: &Path, who: &Opener, need: Need) -> Result<(File, Pin), Error> {
    if !path.is_absolute() {
        return Err(Error::Relative(path.into()));
    }
    let file = match who {
        Opener::Caller(c) if crate::sys::euid() == 0 => sysfs::open_as(c, path),
        Opener::Caller(c) if c.uid != crate::sys::euid() => {
            return Err(Error::Unprivileged(path.into()))
        }
        _ => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(path),
    }
    .map_err(|e| opened(path, e))?;
    let meta = file.metadata().map_err(|e| opened(path, e))?;
    if !meta.is_file() {
        return Err(Error::NotFile(path.into()));
    }
    if let (Opener::Caller(c), Need::Own) = (who, need) {
        if meta.uid() != c.uid {
            return Err(Error::NotOwner(path.into()));
        }
    }
    let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| opened(path, e))?;
    let pin = Pin {
        real,
        dev: meta.dev(),
        ino: meta.ino(),
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.mode() & 0o7777,
    };
    // The real path must lead to this file without a link: a file reached
    // only through /proc or a removed name cannot be found again safely.
    pin.open(&[meta.uid()])?;
    Ok((file, pin))
}

impl Pin {
    /// Pins a file the daemon itself chose (for the VM layer's own users).
    pub fn of(path: &Path) -> Result<Pin, Error> {
        check(path, &Opener::Daemon, Need::Read).map(|(_, pin)| pin)
    }

    /// The pinned file, found again at its real path without following any
    /// link, if it is still the same inode and belongs to one of `owners`
    /// (an inode number can be reused by a file of someone else).
    pub(crate) fn open(&self, owners: &[u32]) -> Result<File, Error> {
        let changed = |why| Error::Changed {
            path: self.real.clone(),
            why,
        };
        let fd = sysfs::open_nofollow(&self.real).map_err(|e| match e.raw_os_error() {
            // A component that is a link now gives ENOTDIR or ELOOP.
            Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP) => {
                changed("it is gone from its path, or a link is on the way")
            }
            _ => opened(&self.real, e),
        })?;
        let file = sysfs::reopen(&fd).map_err(|e| match e.raw_os_error() {
            // An O_PATH descriptor of a symbolic link cannot be reopened.
            Some(libc::ELOOP) => changed("it is a link now"),
            _ => opened(&self.real, e),
        })?;
        let meta = file.metadata().map_err(|e| opened(&self.real, e))?;
        if (meta.dev(), meta.ino()) != (self.dev, self.ino) || !meta.is_file() {
            return Err(changed("another file is at its path"));
        }
        if !owners.contains(&meta.uid()) {
            return Err(changed("another user owns it"));
        }
        Ok(file)
    }

    /// Hands the file to `uid:gid` (or only sets `mode`, with `None`), if it
    /// is still the pinned file and belongs to one of `owners`.
    pub(crate) fn chown(
        &self,
        owners: &[u32],
        ids: Option<(u32, u32)>,
        mode: u32,
    ) -> Result<(), Error> {
        self.set(owners, ids, mode, false)
    }

    /// Gives the file back to the owner and mode it had when checked, if it
    /// is still the pinned file and belongs to `holder` (the VM's uid it was
    /// handed to) or already to its owner. Whatever the holder granted
    /// itself in an access ACL goes first: owner and mode alone would leave
    /// it that access.
    pub(crate) fn give_back(&self, holder: u32) -> Result<(), Error> {
        self.set(
            &[holder, self.uid],
            Some((self.uid, self.gid)),
            self.mode,
            true,
        )
    }

    fn set(
        &self,
        owners: &[u32],
        ids: Option<(u32, u32)>,
        mode: u32,
        drop_acl: bool,
    ) -> Result<(), Error> {
        let file = self.open(owners)?;
        let io = |source| Error::Io {
            path: self.real.clone(),
            source,
        };
        if drop_acl {
            sysfs::remove_acl(&file).map_err(io)?;
        }
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(io)?;
        }
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed test should panic")]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_pin_refuses_what_replaced_its_file() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("e");
        std::fs::create_dir(&dir).unwrap();
        let f = dir.join("f");
        std::fs::write(&f, b"disk").unwrap();
        let (_, pin) = check(&f, &Opener::Daemon, Need::Own).unwrap();
        let me = crate::sys::euid();
        pin.open(&[me]).unwrap();
        assert!(matches!(pin.open(&[me + 1]), Err(Error::Changed { .. })));

        // The directory swapped for a link to one holding another `f`.
        let other = d.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("f"), b"secret").unwrap();
        std::fs::rename(&dir, d.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&other, &dir).unwrap();
        let e = pin.open(&[me]).unwrap_err();
        assert!(matches!(e, Error::Changed { .. }), "{e}");
        // A real directory with another file under the same name.
        std::fs::remove_file(&dir).unwrap();
        std::fs::rename(&other, &dir).unwrap();
        let e = pin.open(&[me]).unwrap_err();
        assert!(e.to_string().contains("another file"), "{e}");
        // The very file, put back, is accepted again.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::rename(d.path().join("moved"), &dir).unwrap();
        pin.open(&[me]).unwrap();
    }

    #[test]
    fn what_the_holder_granted_itself_goes_with_the_file() {
        if crate::sys::euid() != 0 {
            eprintln!("skipped: handing a file to another uid needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("disk");
        std::fs::write(&f, b"disk").unwrap();
        let (_, pin) = check(&f, &Opener::Daemon, Need::Own).unwrap();
        let vm = 4_000_000;
        pin.chown(&[pin.uid], Some((vm, vm)), 0o600).unwrap();
        let file = std::fs::File::open(&f).unwrap();
        if let Err(e) = sysfs::grant_acl(&file, vm) {
            eprintln!("skipped: no ACLs here ({e})");
            return;
        }
        assert!(sysfs::has_acl(&file));
        pin.give_back(vm).unwrap();
        assert!(!sysfs::has_acl(&file), "the ACL outlived the hand-back");
        let m = file.metadata().unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (pin.uid, pin.mode));
    }

    #[test]
    fn only_regular_files_are_pinned() {
        let d = tempfile::tempdir().unwrap();
        for p in [d.path().to_path_buf(), PathBuf::from("/dev/null")] {
            let e = check(&p, &Opener::Daemon, Need::Read).unwrap_err();
            assert!(matches!(e, Error::NotFile(_)), "{e}");
        }
        let e = check(&d.path().join("none"), &Opener::Daemon, Need::Read).unwrap_err();
        assert!(matches!(e, Error::Missing(_)), "{e}");
        assert!(check(Path::new("rel"), &Opener::Daemon, Need::Read).is_err());
        // A link is followed at the check (as the caller could), and the
        // pin names the real file.
        let real = d.path().join("real");
        std::fs::write(&real, b"x").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let (_, pin) = check(&link, &Opener::Daemon, Need::Read).unwrap();
        assert_eq!(pin.real, real.canonicalize().unwrap());
    }
}
