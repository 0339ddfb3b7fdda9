//! `kvmbox admin init --preseed`: set a server up from a document, as
//! `lxd init --preseed` does
//! (<https://documentation.ubuntu.com/lxd/en/latest/howto/initialize/#non-interactive-configuration>).
//! The document and its steps are `src/preseed.rs`; this file reads it and
//! prints what each step did.

use argh::FromArgs;

use super::{remote_only, split_remote, Ctx, Error};

/// Server administration.
#[derive(FromArgs)]
#[argh(subcommand, name = "admin")]
pub(crate) struct Admin {
    #[argh(subcommand)]
    cmd: AdminCmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum AdminCmd {
    Init(Init),
}

/// Apply a preseed document: server config, trusted certificates, images
/// and instances. Applying it again changes nothing.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "init",
    note = "The document is JSON (which is also YAML):
  {{\"config\": {{KEY: VALUE}},
   \"certificates\": [{{\"name\", \"type\": \"client\", \"certificate\": PEM, \"role\", \"projects\"}}],
   \"images\": [{{\"alias\", \"path\"}}],
   \"instances\": [{{\"name\", \"source\": {{\"alias\"}}, \"config\", \"devices\", \"state\": \"running\"|\"stopped\"}}]}}
It is checked whole before anything is applied. Secrets (core.trust_password,
local.passphrase) are set only when unset. Each step prints created, updated or
unchanged."
)]
struct Init {
    /// read the document from FILE, or standard input when FILE is - or left out
    #[argh(switch)]
    preseed: bool,
    /// [FILE|-] [REMOTE:]
    #[argh(positional)]
    args: Vec<String>,
}

/// At most this much of a document is read.
const MAX_LEN: u64 = 16 * 1024 * 1024;

pub(crate) fn admin(ctx: &Ctx, a: Admin) -> Result<(), Error> {
    let AdminCmd::Init(init) = a.cmd;
    if !init.preseed {
        return Err(Error::Usage(
            "only non-interactive set-up is supported: give --preseed".into(),
        ));
    }
    let (mut file, mut remote) = (None, None);
    for arg in &init.args {
        match split_remote(arg) {
            (Some(_), rest) if rest.is_empty() && remote.is_none() => {
                remote = remote_only(Some(arg))?;
            }
            _ if file.is_none() => file = Some(arg.as_str()),
            _ => return Err(Error::Usage(format!("unexpected argument {arg:?}"))),
        }
    }
    let path = std::path::Path::new(file.unwrap_or("-"));
    let text = kvmbox::read_operand_string(path, MAX_LEN)
        .map_err(|e| Error::Msg(format!("cannot read {}: {e}", file.unwrap_or("stdin"))))?;
    // Checked whole before connecting: a bad document reaches no server.
    let plan = kvmbox::Preseed::parse(&text).map_err(|e| Error::Msg(kvmbox::error_chain(&e)))?;
    let mut client = ctx.connect_to(remote.as_deref())?;
    plan.apply(&mut client, |what, outcome| println!("{what}: {outcome}"))
        .map_err(|e| Error::Msg(kvmbox::error_chain(&e)))
}
