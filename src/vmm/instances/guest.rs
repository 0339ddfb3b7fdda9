//! Getting into a running instance: commands and files through its guest
//! agent, and its serial console.
//!
//! Unlike start and stop, these do not wait on the instance's lock: they
//! change nothing the daemon keeps, a long command must not hold up a stop,
//! and a stop ends them anyway (QEMU closes their sockets). They use the
//! [`Guest`] handles published when the VM starts or is adopted and
//! withdrawn when it stops. Guest agent requests take turns on the VM's one
//! agent connection, one round trip at a time.
#![allow(
    dead_code,
    reason = "the API's exec, file and console routes are the callers"
)]

use super::{current, Entry, Error, Manager};
use crate::log::log;
use crate::rt::lock;
use crate::vmm::console::{Console, Input, Output};
use crate::vmm::qga::{Agent, ExecRequest, ExecResult};
use crate::vmm::vm::Vm;

/// A running VM's ways in.
#[derive(Clone, Debug)]
pub(super) struct Guest {
    agent: Agent,
    /// `None` when the console socket could not be reached (a QEMU started
    /// by an older daemon has none).
    console: Option<Console>,
}

impl Manager {
    /// Connects the console of `vm` (just started or adopted), runs its pump
    /// on the daemon's executor, and publishes the ways in.
    pub(super) async fn open_guest(&self, e: &Entry, vm: &Vm, name: &str) {
        let console = match (vm.connect_console().await, self.host()) {
            (Ok((console, pump)), Ok(host)) => {
                host.ex.spawn(pump.run()).detach();
                Some(console)
            }
            (Err(err), _) => {
                let why = crate::error_chain(&err);
                log!(Warn, "instance {name}: no console: {why}");
                None
            }
            // Without an executor nobody would read the socket, and the
            // guest's console would stall: leave it unconnected.
            (Ok(_), Err(_)) => None,
        };
        *lock(&e.guest) = Some(Guest {
            agent: vm.agent(),
            console,
        });
    }

    fn guest(&self, name: &str) -> Result<Guest, Error> {
        let e = self.entry(name)?;
        current(&e)?;
        let guest = lock(&e.guest).clone();
        guest.ok_or_else(|| Error::Conflict(format!("instance {name:?} is not running")))
    }

    /// Runs a command in the guest and waits for it to exit.
    pub(crate) async fn exec(&self, name: &str, req: ExecRequest) -> Result<ExecResult, Error> {
        Ok(self.guest(name)?.agent.exec(&req).await?)
    }

    /// A guest file's content, refused beyond `limit` bytes.
    pub(crate) async fn read_file(
        &self,
        name: &str,
        path: &str,
        limit: usize,
    ) -> Result<Vec<u8>, Error> {
        Ok(self.guest(name)?.agent.read_file(path, limit).await?)
    }

    /// Creates or replaces a guest file.
    pub(crate) async fn write_file(
        &self,
        name: &str,
        path: &str,
        data: &[u8],
    ) -> Result<(), Error> {
        Ok(self.guest(name)?.agent.write_file(path, data).await?)
    }

    /// A new console viewer: guest output from now on, and input.
    pub(crate) fn attach_console(&self, name: &str) -> Result<(Output, Input), Error> {
        let console = self.guest(name)?.console.ok_or_else(|| {
            Error::Conflict(format!(
                "instance {name:?} has no console socket (its QEMU predates it): restart it"
            ))
        })?;
        Ok(console.attach()?)
    }
}
