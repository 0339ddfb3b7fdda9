//! What the guest tests share: the repository, files copied where a VM's
//! uid can read them, the cached Debian image, and a guard that ends a
//! test's QEMU however the test ends.
#![allow(dead_code, reason = "each test uses its own part")]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Copies `from` into `dir`, readable by the VM's uid (the clone's own
/// directories may not let it through).
pub(crate) fn copy_in(dir: &Path, from: &Path) -> PathBuf {
    let to = dir.join(from.file_name().unwrap());
    std::fs::copy(from, &to).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).unwrap();
    to
}

/// The Debian guest's directory (qemu-tests/debian/image.sh builds it
/// once), or nothing when not root: building it and per-VM uids need
/// root, and the test then skips, saying so.
pub(crate) fn debian_image() -> Option<PathBuf> {
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    if uid.ok() != Some(0) {
        eprintln!("SKIPPED: building the Debian guest and per-VM uids need root");
        return None;
    }
    let built = Command::new("sh")
        .arg(repo().join("qemu-tests/debian/image.sh"))
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    Some(PathBuf::from(
        String::from_utf8(built.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    ))
}

/// Ends a VM's QEMU when the test ends, passed or not, so that a failed
/// check leaves no guest running: the process of that pid, if it still
/// runs the VM of that uuid (the pid may be another process's by then).
pub(crate) struct Reap(pub(crate) u32, pub(crate) &'static str);

impl Drop for Reap {
    fn drop(&mut self) {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.0)).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(self.1) {
            let _ = Command::new("kill")
                .args(["-9", &self.0.to_string()])
                .status();
        }
    }
}
