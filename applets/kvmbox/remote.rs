//! `kvmbox remote`: the servers this client talks to (LXD's `lxc remote`,
//! <https://documentation.ubuntu.com/lxd/en/latest/authentication/>).
//!
//! `remote add` is LXD's flow: connect, show the server's certificate
//! fingerprint and have it confirmed (or compare it with `--fingerprint` or
//! a token's, or let `client.ca` vouch for it), send the password or token
//! if the server does not trust this client yet, check that it now does,
//! and pin the certificate. Nothing secret is sent before the server's
//! certificate is accepted, and nothing is ever asked without a terminal.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use argh::FromArgs;
use kvmbox::{
    api_path as path, CertificatesPost, Client, ClientIdentity, JoinToken, Remote, RemoteTrust,
    Remotes, IMAGES_REMOTE, IMAGES_URL, LOCAL_REMOTE, SIMPLESTREAMS,
};
use serde_json::{json, Value};

use super::output::{self, Format};
use super::{Ctx, Error};

/// Manage the servers this client talks to.
#[derive(FromArgs)]
#[argh(subcommand, name = "remote")]
pub(crate) struct RemoteCmd {
    #[argh(subcommand)]
    cmd: Sub,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Sub {
    Add(Add),
    List(List),
    Remove(Remove),
    Rename(Rename),
    Switch(Switch),
    GetDefault(GetDefault),
}

/// Add a remote server and have it trust this client.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "add",
    note = "HOST[:PORT] (port 8443 by default) may be left out with --token: the token names
the server's addresses and certificate fingerprint. An image server is added with
--protocol simplestreams and its https:// URL (`images` is images.linuxcontainers.org
until it is added otherwise); daemons check its certificate against the system's CAs. Without --accept-certificate,
--fingerprint, a token or a client.ca that signed the server's certificate, the
fingerprint is shown and confirmed on the terminal; without a terminal, that is
an error."
)]
struct Add {
    /// the remote's name
    #[argh(positional)]
    name: String,
    /// the server, HOST[:PORT]
    #[argh(positional)]
    host: Option<String>,
    /// trust the server's certificate without asking
    #[argh(switch)]
    accept_certificate: bool,
    /// the server certificate's SHA-256 fingerprint, to check it without asking
    #[argh(option)]
    fingerprint: Option<String>,
    /// read the server's trust password from this file (its first line; - for stdin)
    #[argh(option)]
    password_file: Option<PathBuf>,
    /// a one-time token from `kvmbox config trust add --name NAME`
    #[argh(option)]
    token: Option<String>,
    /// simplestreams for an image server (given as an https:// URL), which
    /// daemons download images from; kvmbox daemons need none
    #[argh(option)]
    protocol: Option<String>,
}

/// List remotes.
#[derive(FromArgs)]
#[argh(subcommand, name = "list")]
struct List {
    /// table (default), json, yaml or csv
    #[argh(option, default = "Format::Table")]
    format: Format,
}

/// Remove a remote (not the default one).
#[derive(FromArgs)]
#[argh(subcommand, name = "remove")]
struct Remove {
    #[argh(positional)]
    name: String,
}

/// Rename a remote.
#[derive(FromArgs)]
#[argh(subcommand, name = "rename")]
struct Rename {
    #[argh(positional)]
    old: String,
    #[argh(positional)]
    new: String,
}

/// Make a remote the default for commands without a REMOTE: prefix.
#[derive(FromArgs)]
#[argh(subcommand, name = "switch")]
struct Switch {
    #[argh(positional)]
    name: String,
}

/// Print the default remote.
#[derive(FromArgs)]
#[argh(subcommand, name = "get-default")]
struct GetDefault {}

pub(crate) fn remote(ctx: &Ctx, args: RemoteCmd) -> Result<(), Error> {
    let dir = kvmbox::config_dir();
    match args.cmd {
        Sub::Add(a) => add(&dir, a),
        Sub::List(l) => list(ctx, &dir, l.format),
        Sub::Remove(r) => remove(&dir, &r.name),
        Sub::Rename(r) => rename(&dir, &r.old, &r.new),
        Sub::Switch(s) => {
            let mut remotes = Remotes::load(&dir)?;
            if s.name != LOCAL_REMOTE && !remotes.remotes.contains_key(&s.name) {
                return Err(no_such(&s.name));
            }
            if remotes.image_server(&s.name).is_some() {
                return Err(image_server(&s.name));
            }
            remotes.default_remote = Some(s.name);
            remotes.save(&dir).map_err(Error::from)
        }
        Sub::GetDefault(GetDefault {}) => {
            println!("{}", Remotes::load(&dir)?.default_name());
            Ok(())
        }
    }
}

pub(crate) fn no_such(name: &str) -> Error {
    Error::Msg(format!(
        "there is no remote named {name:?}: see `kvmbox remote list`"
    ))
}

pub(crate) fn image_server(name: &str) -> Error {
    Error::Msg(format!(
        "{name} is an image server: daemons copy images from it (`kvmbox image copy \
         {name}:ALIAS`, `kvmbox launch {name}:ALIAS NAME`)"
    ))
}

/// Fingerprints as people paste them: any case, with or without colons.
fn normalise_fp(fp: &str) -> Result<String, Error> {
    let fp: String = fp
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Usage(format!(
            "{fp:?} is not a SHA-256 fingerprint (64 hex digits)"
        )));
    }
    Ok(fp)
}

fn ask(prompt: &str) -> Result<String, Error> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Error::Msg(format!("cannot read the answer: {e}")))?;
    Ok(line.trim().to_string())
}

fn add(dir: &std::path::Path, a: Add) -> Result<(), Error> {
    if a.name == LOCAL_REMOTE || !kvmbox::valid_remote_name(&a.name) {
        return Err(Error::Usage(format!(
            "{:?} cannot name a remote: use letters, digits, '-', '_', '.', not \"local\"",
            a.name
        )));
    }
    if a.accept_certificate && a.fingerprint.is_some() {
        return Err(Error::Usage(
            "give --accept-certificate or --fingerprint, not both".into(),
        ));
    }
    if a.password_file.is_some() && a.token.is_some() {
        return Err(Error::Usage(
            "give --password-file or --token, not both".into(),
        ));
    }
    let mut remotes = Remotes::load(dir)?;
    if remotes.remotes.contains_key(&a.name) {
        return Err(Error::Msg(format!(
            "remote {} already exists: `kvmbox remote remove {}` first",
            a.name, a.name
        )));
    }
    if let Some(p) = &a.protocol {
        return add_image_server(dir, remotes, a.name.clone(), p, &a);
    }
    let token = match &a.token {
        Some(t) => Some(JoinToken::decode(t).ok_or_else(|| {
            Error::Usage("the token is not one `kvmbox config trust add` made".into())
        })?),
        None => None,
    };
    let mut expected = match &a.fingerprint {
        Some(fp) => Some(normalise_fp(fp)?),
        None => None,
    };
    if let Some(t) = &token {
        let fp = normalise_fp(&t.fingerprint)?;
        if expected.as_ref().is_some_and(|e| *e != fp) {
            return Err(Error::Msg(
                "--fingerprint and the token name different server certificates".into(),
            ));
        }
        expected = Some(fp);
    }
    let candidates: Vec<String> = match (&a.host, &token) {
        (Some(h), _) => vec![h.clone()],
        (None, Some(t)) if !t.addresses.is_empty() => t.addresses.clone(),
        _ => {
            return Err(Error::Usage(
                "give HOST[:PORT] (or a token that names it)".into(),
            ))
        }
    };
    let id = ClientIdentity::load_or_create(dir)?;
    let ca = kvmbox::client_ca(dir)?;
    let mut last = None;
    let mut connected = None;
    for c in &candidates {
        let (addr, host) = kvmbox::parse_address(c).map_err(|e| Error::Usage(e.to_string()))?;
        match Client::connect_tcp(&addr, &host, &id, &RemoteTrust::Probe) {
            Ok((client, cert)) => {
                connected = Some((client, cert, addr, host));
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some((mut client, cert, addr, host)) = connected else {
        return Err(last.map_or_else(|| no_such(&a.name), Error::from));
    };
    let fp = cert.fingerprint();
    let via_ca = ca
        .as_ref()
        .is_some_and(|ca| cert.verify(ca).is_ok() && cert.valid_for_name(&host));
    if !via_ca {
        if let Some(want) = &expected {
            if *want != fp {
                return Err(Error::Msg(format!(
                    "the server at {addr} presented certificate {fp}, not the expected {want}: \
                     refusing it (wrong server, or a man-in-the-middle)"
                )));
            }
        } else if !a.accept_certificate {
            if !std::io::stdin().is_terminal() {
                return Err(Error::Msg(format!(
                    "the server's certificate fingerprint is {fp}; with no terminal to confirm \
                     it, pass --fingerprint {fp} (after checking it) or --accept-certificate"
                )));
            }
            eprintln!("Certificate fingerprint: {fp}");
            let answer = ask("ok (y/n/[fingerprint])? ")?;
            if answer != fp && !answer.eq_ignore_ascii_case("y") {
                return Err(Error::Msg("server certificate not accepted".into()));
            }
        }
    }
    let server = client.call("GET", path::SERVER, None)?;
    if server.get("auth").and_then(Value::as_str) != Some("trusted") {
        let body = if let Some(t) = &a.token {
            CertificatesPost::with_token(t.trim().to_string())
        } else if let Some(f) = &a.password_file {
            CertificatesPost::with_password(super::auth::secret_from(f)?)
        } else if std::io::stdin().is_terminal() {
            let secret = kvmbox::prompt_secret(&format!("Password or token for {}: ", a.name))
                .map_err(|e| Error::Msg(format!("cannot read the password: {e}")))?;
            if JoinToken::decode(&secret).is_some() {
                CertificatesPost::with_token(secret)
            } else {
                CertificatesPost::with_password(secret)
            }
        } else {
            return Err(Error::Msg(format!(
                "{addr} does not trust this client yet: give --token or --password-file"
            )));
        };
        client.send("POST", path::CERTIFICATES, &body)?;
        let server = client.call("GET", path::SERVER, None)?;
        if server.get("auth").and_then(Value::as_str) != Some("trusted") {
            return Err(Error::Msg(
                "the server accepted the secret but still does not trust this client".into(),
            ));
        }
    }
    if !via_ca {
        kvmbox::pin_remote(dir, &a.name, &cert)?;
    }
    remotes.remotes.insert(
        a.name.clone(),
        Remote {
            addr: addr.clone(),
            ca: via_ca,
            ..Remote::default()
        },
    );
    remotes.save(dir)?;
    let how = if via_ca {
        "signed by client.ca"
    } else {
        "pinned"
    };
    println!(
        "Remote {} added: {addr}, server certificate {fp} ({how}).",
        a.name
    );
    Ok(())
}

/// `remote add NAME URL --protocol simplestreams`: nothing to connect to
/// or trust here, the daemons fetch from it.
fn add_image_server(
    dir: &std::path::Path,
    mut remotes: Remotes,
    name: String,
    protocol: &str,
    a: &Add,
) -> Result<(), Error> {
    if protocol != SIMPLESTREAMS {
        return Err(Error::Usage(format!(
            "--protocol {protocol:?}: only \"simplestreams\" is known"
        )));
    }
    if a.accept_certificate
        || a.fingerprint.is_some()
        || a.password_file.is_some()
        || a.token.is_some()
    {
        return Err(Error::Usage(
            "an image server takes no certificate, password or token: daemons check it \
             against the system's CAs"
                .into(),
        ));
    }
    let url = match &a.host {
        Some(u) if u.starts_with("https://") && u.len() > "https://".len() => u.clone(),
        _ => return Err(Error::Usage("give the image server's https:// URL".into())),
    };
    let url = url.trim_end_matches('/').to_string();
    remotes.remotes.insert(
        name.clone(),
        Remote {
            addr: url.clone(),
            protocol: SIMPLESTREAMS.into(),
            ..Remote::default()
        },
    );
    remotes.save(dir)?;
    println!("Remote {name} added: image server {url}.");
    Ok(())
}

fn list(ctx: &Ctx, dir: &std::path::Path, format: Format) -> Result<(), Error> {
    let remotes = Remotes::load(dir)?;
    let default = remotes.default_name();
    let mut rows = vec![vec![
        LOCAL_REMOTE.to_string(),
        format!("unix://{}", ctx.socket.display()),
        "unix".into(),
        if default == LOCAL_REMOTE { "yes" } else { "" }.into(),
    ]];
    if !remotes.remotes.contains_key(IMAGES_REMOTE) {
        rows.push(vec![
            IMAGES_REMOTE.into(),
            IMAGES_URL.into(),
            SIMPLESTREAMS.into(),
            String::new(),
        ]);
    }
    for (name, r) in &remotes.remotes {
        let (url, auth) = match (r.protocol == SIMPLESTREAMS, r.ca) {
            (true, _) => (r.addr.clone(), SIMPLESTREAMS),
            (false, true) => (format!("https://{}", r.addr), "tls (client.ca)"),
            (false, false) => (format!("https://{}", r.addr), "tls (pinned)"),
        };
        rows.push(vec![
            name.clone(),
            url,
            auth.into(),
            if default == name { "yes" } else { "" }.into(),
        ]);
    }
    output::print(
        format,
        &json!(remotes),
        &["NAME", "URL", "AUTH", "DEFAULT"],
        &rows,
    );
    Ok(())
}

fn remove(dir: &std::path::Path, name: &str) -> Result<(), Error> {
    let mut remotes = Remotes::load(dir)?;
    if name == LOCAL_REMOTE {
        return Err(Error::Msg("the local remote cannot be removed".into()));
    }
    if remotes.remotes.remove(name).is_none() {
        return Err(no_such(name));
    }
    if remotes.default_name() == name {
        return Err(Error::Msg(format!(
            "{name} is the default remote: `kvmbox remote switch` to another first"
        )));
    }
    remotes.save(dir)?;
    let _ = std::fs::remove_file(kvmbox::remote_cert_path(dir, name));
    Ok(())
}

fn rename(dir: &std::path::Path, old: &str, new: &str) -> Result<(), Error> {
    let mut remotes = Remotes::load(dir)?;
    if new == LOCAL_REMOTE || !kvmbox::valid_remote_name(new) {
        return Err(Error::Usage(format!("{new:?} cannot name a remote")));
    }
    if remotes.remotes.contains_key(new) {
        return Err(Error::Msg(format!("remote {new} already exists")));
    }
    let Some(r) = remotes.remotes.remove(old) else {
        return Err(no_such(old));
    };
    let (from, to) = (
        kvmbox::remote_cert_path(dir, old),
        kvmbox::remote_cert_path(dir, new),
    );
    if from.exists() {
        std::fs::copy(&from, &to)
            .map_err(|e| Error::Msg(format!("cannot copy {}: {e}", from.display())))?;
    }
    remotes.remotes.insert(new.to_string(), r);
    if remotes.default_name() == old {
        remotes.default_remote = Some(new.to_string());
    }
    remotes.save(dir)?;
    let _ = std::fs::remove_file(&from);
    Ok(())
}
