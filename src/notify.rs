//! Readiness and status for a service manager that asks for them by
//! `NOTIFY_SOCKET` (systemd's `Type=notify`, sd_notify(3)): one datagram
//! of `KEY=value` lines per change, to a socket path or, for a name that
//! starts with `@`, a Linux abstract socket.

use std::ffi::OsString;
use std::os::unix::net::{SocketAddr, UnixDatagram};

#[derive(thiserror::Error)]
pub(crate) enum Error {
    #[error("NOTIFY_SOCKET={0:?} is not a Unix socket path or an abstract name")]
    Address(OsString),
    #[error("cannot notify the service manager at {0:?}")]
    Send(OsString, #[source] std::io::Error),
}

crate::debug_as_display!(Error);

/// The service manager's socket, if one asked.
pub(crate) struct Notifier {
    name: OsString,
    addr: SocketAddr,
    sock: UnixDatagram,
}

impl Notifier {
    /// Takes `NOTIFY_SOCKET` out of the environment, so that nothing the
    /// daemon starts (QEMU, the AppArmor helper) inherits a way to speak for
    /// it. Call it before any thread starts. `Ok(None)`: nobody asked.
    pub(crate) fn from_env() -> Result<Option<Notifier>, Error> {
        let Some(name) = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        std::env::remove_var("NOTIFY_SOCKET");
        let bytes = name.as_encoded_bytes();
        let addr = match bytes.first() {
            Some(b'/') => SocketAddr::from_pathname(&name).ok(),
            Some(b'@') => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(bytes.get(1..).unwrap_or_default()).ok()
            }
            _ => None,
        };
        let addr = addr.ok_or_else(|| Error::Address(name.clone()))?;
        let sock = UnixDatagram::unbound().map_err(|e| Error::Send(name.clone(), e))?;
        Ok(Some(Notifier { name, addr, sock }))
    }

    /// Sends `state`, newline-separated `KEY=value` assignments.
    pub(crate) fn send(&self, state: &str) -> Result<(), Error> {
        self.sock
            .send_to_addr(state.as_bytes(), &self.addr)
            .map(drop)
            .map_err(|e| Error::Send(self.name.clone(), e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        reason = "a failed test should panic"
    )]
    use super::*;

    // One test: the environment is the whole process's.
    #[test]
    fn path_and_abstract_sockets_get_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        std::env::set_var("NOTIFY_SOCKET", &path);
        let n = Notifier::from_env().unwrap().unwrap();
        assert!(std::env::var_os("NOTIFY_SOCKET").is_none());
        n.send("READY=1\nSTATUS=up").unwrap();
        let mut buf = [0; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=up");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("kvmbox-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        std::env::set_var("NOTIFY_SOCKET", format!("@{name}"));
        Notifier::from_env()
            .unwrap()
            .unwrap()
            .send("STOPPING=1")
            .unwrap();
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");

        assert!(Notifier::from_env().unwrap().is_none());
        std::env::set_var("NOTIFY_SOCKET", "vsock:2:1234");
        assert!(matches!(Notifier::from_env(), Err(Error::Address(_))));
    }
}
