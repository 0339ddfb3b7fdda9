//! `kvmbox authenticate`: trust this client with the server's
//! `local.passphrase` (Multipass's `multipass authenticate`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use argh::FromArgs;
use kvmbox::{api_path as path, CertificatesPost};

use super::{Ctx, Error};

/// Make this client trusted, with the passphrase an administrator set in
/// local.passphrase.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "authenticate",
    note = "Without PASSPHRASE or --passphrase-file, the passphrase is prompted for on a
terminal, else read from standard input. Giving it as an argument shows it to
other users in the process list."
)]
pub(crate) struct Authenticate {
    /// the passphrase
    #[argh(positional)]
    passphrase: Option<String>,
    /// read the passphrase from this file (its first line; - for stdin)
    #[argh(option)]
    passphrase_file: Option<PathBuf>,
}

/// At most this much is read from a file or stdin.
const MAX_LEN: u64 = 4096;

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

fn passphrase(args: &Authenticate) -> Result<String, Error> {
    let pp = match (&args.passphrase, &args.passphrase_file) {
        (Some(_), Some(_)) => {
            return Err(Error::Usage(
                "give the passphrase as an argument or with --passphrase-file, not both".into(),
            ))
        }
        (Some(p), None) => p.clone(),
        (None, file) => read_secret(file.as_deref(), "Passphrase: ")?,
    };
    if pp.is_empty() {
        return Err(Error::Msg(
            "no passphrase given: pass it as an argument, with --passphrase-file, or on stdin"
                .into(),
        ));
    }
    Ok(pp)
}

/// A secret kept off the command line (where `ps` shows it): the first line
/// of `file` (`-` is stdin), else typed at a terminal without echo, else the
/// first line of stdin. Without a terminal nothing is prompted for.
pub(crate) fn read_secret(file: Option<&Path>, prompt: &str) -> Result<String, Error> {
    match file {
        Some(f) => secret_from(f),
        None if std::io::stdin().is_terminal() => kvmbox::prompt_secret(prompt)
            .map_err(|e| Error::Msg(format!("cannot read the secret: {e}"))),
        None => secret_from(Path::new("-")),
    }
}

/// The first line of `file`, or of stdin for `-`.
pub(crate) fn secret_from(file: &Path) -> Result<String, Error> {
    let text = kvmbox::read_operand_string(file, MAX_LEN).map_err(|e| {
        let what = if kvmbox::is_stdio(file) {
            "the secret from stdin".to_string()
        } else {
            file.display().to_string()
        };
        Error::Msg(format!("cannot read {what}: {e}"))
    })?;
    Ok(first_line(&text))
}

pub(crate) fn authenticate(ctx: &Ctx, args: &Authenticate) -> Result<(), Error> {
    let pp = passphrase(args)?;
    let mut client = ctx.connect()?;
    let server = client.call("GET", path::SERVER, None)?;
    if server.get("auth").and_then(|a| a.as_str()) == Some("trusted") {
        println!("This client is already trusted.");
        return Ok(());
    }
    client.send(
        "POST",
        path::CERTIFICATES,
        &CertificatesPost::with_password(pp),
    )?;
    let server = client.call("GET", path::SERVER, None)?;
    if server.get("auth").and_then(|a| a.as_str()) != Some("trusted") {
        return Err(Error::Msg(
            "the daemon accepted the passphrase but does not trust this client".into(),
        ));
    }
    println!("Authenticated: this client is now trusted.");
    Ok(())
}
