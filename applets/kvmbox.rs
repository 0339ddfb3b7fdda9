//! `kvmbox`: the client. Talks to kvmboxd's LXD-style REST API
//! (<https://documentation.ubuntu.com/lxd/en/latest/rest-api/>) over TLS
//! inside the daemon's Unix socket, presenting its own certificate
//! (Multipass's model: <https://documentation.ubuntu.com/multipass/en/latest/explanation/authentication/>).
//!
//! Its key pair lives in `$KVMBOX_CONF`, else `$HOME/.config/kvmbox`, else
//! `$XDG_RUNTIME_DIR/kvmbox`, else `/run/kvmbox-client-<uid>`; it is made on
//! first use. Each subcommand lives in `kvmbox/`.

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;
use kvmbox::{Client, ClientError, ClientIdentity};

use crate::cli;

mod auth;
mod config;
mod info;
mod instance;
mod output;

const NAME: &str = "kvmbox";

/// The kvmbox client: drive a local kvmboxd.
#[derive(FromArgs)]
#[argh(
    note = "Environment: KVMBOX_SOCKET (the socket), KVMBOX_DIR (the daemon's state directory),
KVMBOX_CONF (this client's key and certificate; default $HOME/.config/kvmbox,
else $XDG_RUNTIME_DIR/kvmbox, else /run/kvmbox-client-<uid>).
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
    Info(info::Info),
    List(info::List),
    Authenticate(auth::Authenticate),
    Config(config::Config),
    Launch(instance::Launch),
    Init(instance::Init),
    Start(instance::Start),
    Stop(instance::Stop),
    Restart(instance::Restart),
    Delete(instance::Delete),
    Console(instance::Console),
    Image(instance::Image),
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
}

/// What every subcommand gets: a way to reach the daemon.
pub(crate) struct Ctx {
    socket: PathBuf,
}

impl Ctx {
    /// Loads (or makes) this client's identity and connects.
    pub(crate) fn connect(&self) -> Result<Client, Error> {
        let id = ClientIdentity::load_or_create(&kvmbox::config_dir())?;
        Ok(Client::connect_unix(&self.socket, &id)?)
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
        Cmd::Info(c) => info::info(&ctx, &c),
        Cmd::List(c) => info::list(&ctx, &c),
        Cmd::Authenticate(c) => auth::authenticate(&ctx, &c),
        Cmd::Config(c) => config::config(&ctx, c),
        Cmd::Launch(c) => instance::launch(&ctx, &c),
        Cmd::Init(c) => instance::init(&ctx, &c),
        Cmd::Start(c) => instance::start(&ctx, &c),
        Cmd::Stop(c) => instance::stop(&ctx, &c),
        Cmd::Restart(c) => instance::restart(&ctx, &c),
        Cmd::Delete(c) => instance::delete(&ctx, &c),
        Cmd::Console(c) => instance::console(&ctx, &c),
        Cmd::Image(c) => instance::image(&ctx, &c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Usage(m)) => cli::usage_error(NAME, &m),
        Err(e) => cli::fail(NAME, &kvmbox::error_chain(&e)),
    }
}
