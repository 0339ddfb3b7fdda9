//! `kvmbox`: the client. Talks to kvmboxd's LXD-style REST API
//! (<https://documentation.ubuntu.com/lxd/en/latest/rest-api/>) over TLS,
//! presenting its own certificate: inside the daemon's Unix socket
//! (Multipass's model: <https://documentation.ubuntu.com/multipass/en/latest/explanation/authentication/>)
//! or over TCP to a remote added with `kvmbox remote add` (LXD's model).
//!
//! Its key pair and remotes live in `$KVMBOX_CONF`, else
//! `$HOME/.config/kvmbox`, else `$XDG_RUNTIME_DIR/kvmbox`, else
//! `/run/kvmbox-client-0` for root and `/tmp/kvmbox-client-<uid>` for
//! others; the key pair is made on first use. Each subcommand lives in
//! `kvmbox/`.

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;
use kvmbox::{Client, ClientError, ClientIdentity};

use crate::cli;

mod admin;
mod auth;
mod config;
mod guest;
mod info;
mod instance;
mod output;
mod remote;
mod snapshot;

const NAME: &str = "kvmbox";

/// The kvmbox client: drive a local kvmboxd.
#[derive(FromArgs)]
#[argh(
    note = "Environment: KVMBOX_SOCKET (the socket), KVMBOX_DIR (the daemon's state directory),
KVMBOX_CONF (this client's key, certificate and remotes; default
$HOME/.config/kvmbox, else $XDG_RUNTIME_DIR/kvmbox, else /run/kvmbox-client-0
for root and /tmp/kvmbox-client-<uid> for others).
Commands that target a server take a REMOTE: prefix (`kvmbox list edge1:`);
without one they use the default remote (`kvmbox remote switch`), at first the
local socket.
Exit codes: 0 ok, 1 failed, 2 bad command line. --version prints the version."
)]
struct Args {
    /// the daemon's Unix socket (default $KVMBOX_SOCKET, else
    /// $KVMBOX_DIR/unix.socket, else /var/lib/kvmbox/unix.socket)
    #[argh(option)]
    socket: Option<PathBuf>,
    #[argh(subcommand)]
    cmd: Cmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Cmd {
    Admin(admin::Admin),
    Info(info::Info),
    List(info::List),
    Authenticate(auth::Authenticate),
    Config(config::Config),
    Remote(remote::RemoteCmd),
    Launch(instance::Launch),
    Init(instance::Init),
    Start(instance::Start),
    Stop(instance::Stop),
    Restart(instance::Restart),
    Delete(instance::Delete),
    Console(guest::Console),
    Exec(guest::Exec),
    File(guest::File),
    Image(instance::Image),
    Snapshot(snapshot::Snapshot),
    Restore(snapshot::Restore),
    Rename(snapshot::Rename),
}

/// What a subcommand can fail with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Msg(String),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Not a failure of kvmbox: a command's exit status, passed on.
    #[error("exit status {0}")]
    Exit(u8),
}

/// What every subcommand gets: a way to reach the daemon.
pub(crate) struct Ctx {
    socket: PathBuf,
}

/// Splits a `REMOTE:` prefix off `arg` when what precedes the colon names
/// a remote (`edge1:vm1` → `edge1`, `vm1`; `edge1:` → `edge1`, ``).
pub(crate) fn split_remote(arg: &str) -> (Option<String>, String) {
    match arg.split_once(':') {
        Some((r, rest)) if kvmbox::valid_remote_name(r) => (Some(r.to_string()), rest.to_string()),
        _ => (None, arg.to_string()),
    }
}

/// A positional that may only be `REMOTE:`.
pub(crate) fn remote_only(arg: Option<&str>) -> Result<Option<String>, Error> {
    match arg {
        None => Ok(None),
        Some(a) => match split_remote(a) {
            (Some(r), rest) if rest.is_empty() => Ok(Some(r)),
            _ => Err(Error::Usage(format!("{a:?} is not REMOTE:"))),
        },
    }
}

/// Whether `remote` (None: the default one) is the local daemon, which
/// can open this host's files itself.
pub(crate) fn is_local(remote: Option<&str>) -> bool {
    let dir = kvmbox::config_dir();
    let default = kvmbox::Remotes::load(&dir)
        .map(|r| r.default_name().to_string())
        .unwrap_or_else(|_| kvmbox::LOCAL_REMOTE.to_string());
    remote.unwrap_or(&default) == kvmbox::LOCAL_REMOTE
}

impl Ctx {
    /// Connects to the default remote.
    pub(crate) fn connect(&self) -> Result<Client, Error> {
        self.connect_to(None)
    }

    /// Loads (or makes) this client's identity and connects to `remote`
    /// (None: the default one; `local`: the Unix socket).
    pub(crate) fn connect_to(&self, remote: Option<&str>) -> Result<Client, Error> {
        let dir = kvmbox::config_dir();
        let id = ClientIdentity::load_or_create(&dir)?;
        let remotes = kvmbox::Remotes::load(&dir)?;
        let name = remote.unwrap_or(remotes.default_name());
        if name == kvmbox::LOCAL_REMOTE {
            return Ok(Client::connect_unix(&self.socket, &id)?);
        }
        if remotes.image_server(name).is_some() {
            return Err(remote::image_server(name));
        }
        let r = remotes
            .remotes
            .get(name)
            .ok_or_else(|| remote::no_such(name))?;
        let trust = kvmbox::remote_trust(&dir, name, r)?;
        let (addr, host) = kvmbox::parse_address(&r.addr)?;
        Ok(Client::connect_tcp(&addr, &host, &id, &trust)?.0)
    }

    /// Connects for `[REMOTE:]NAME` and returns the bare NAME.
    pub(crate) fn target(&self, arg: &str) -> Result<(Client, String), Error> {
        let (remote, name) = split_remote(arg);
        if name.is_empty() {
            return Err(Error::Usage(format!("{arg:?} names no instance")));
        }
        Ok((self.connect_to(remote.as_deref())?, name))
    }

    /// What to tell a client that `remote` does not trust.
    pub(crate) fn untrusted_hint(&self, remote: Option<&str>) -> &'static str {
        let dir = kvmbox::config_dir();
        let default = kvmbox::Remotes::load(&dir)
            .map(|r| r.default_name().to_string())
            .unwrap_or_default();
        match remote.unwrap_or(&default) {
            kvmbox::LOCAL_REMOTE => kvmbox::UNTRUSTED_HINT,
            _ => kvmbox::REMOTE_UNTRUSTED_HINT,
        }
    }
}

pub(crate) fn main(args: &[String]) -> ExitCode {
    kvmbox::default_sigpipe();
    let args = match cli::parse::<Args>(NAME, args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let ctx = Ctx {
        socket: kvmbox::socket_path(args.socket.as_deref()),
    };
    let result = match args.cmd {
        Cmd::Admin(c) => admin::admin(&ctx, c),
        Cmd::Info(c) => info::info(&ctx, &c),
        Cmd::List(c) => info::list(&ctx, &c),
        Cmd::Authenticate(c) => auth::authenticate(&ctx, &c),
        Cmd::Config(c) => config::config(&ctx, c),
        Cmd::Remote(c) => remote::remote(&ctx, c),
        Cmd::Launch(c) => instance::launch(&ctx, &c),
        Cmd::Init(c) => instance::init(&ctx, &c),
        Cmd::Start(c) => instance::start(&ctx, &c),
        Cmd::Stop(c) => instance::stop(&ctx, &c),
        Cmd::Restart(c) => instance::restart(&ctx, &c),
        Cmd::Delete(c) => instance::delete(&ctx, &c),
        Cmd::Console(c) => guest::console(&ctx, &c),
        Cmd::Exec(c) => guest::exec(&ctx, &c),
        Cmd::File(c) => guest::file(&ctx, &c),
        Cmd::Image(c) => instance::image(&ctx, &c),
        Cmd::Snapshot(c) => snapshot::snapshot(&ctx, &c),
        Cmd::Restore(c) => snapshot::restore(&ctx, &c),
        Cmd::Rename(c) => snapshot::rename(&ctx, &c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Usage(m)) => cli::usage_error(NAME, &m),
        Err(Error::Exit(code)) => ExitCode::from(code),
        Err(e) => cli::fail(NAME, &kvmbox::error_chain(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_prefixes() {
        let s = |a: &str| split_remote(a);
        assert_eq!(s("edge1:"), (Some("edge1".into()), String::new()));
        assert_eq!(s("edge1:vm1"), (Some("edge1".into()), "vm1".into()));
        assert_eq!(s("vm1"), (None, "vm1".into()));
        assert_eq!(s("./a:b.pem"), (None, "./a:b.pem".into()));
        assert!(matches!(remote_only(Some("edge1:")), Ok(Some(r)) if r == "edge1"));
        assert!(remote_only(Some("edge1")).is_err());
        assert!(remote_only(Some("edge1:vm1")).is_err());
    }
}
