//! `kvmbox config`: server configuration and the trust store.

use std::collections::BTreeMap;

use argh::FromArgs;
use kvmbox::{api_path as path, CertificatePut, CertificatesPost, ServerPut};
use serde_json::{json, Value};

use super::output::{self, Format};
use super::{Ctx, Error};

/// At most this much of a certificate file is read.
const CERT_LIMIT: u64 = 1 << 20;

/// Show and change the server's configuration and trust store.
#[derive(FromArgs)]
#[argh(subcommand, name = "config")]
pub(crate) struct Config {
    #[argh(subcommand)]
    cmd: ConfigCmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum ConfigCmd {
    Get(Get),
    Set(Set),
    Unset(Unset),
    Show(Show),
    Trust(Trust),
    Device(super::instance::DeviceCmd),
}

/// Print one configuration value (empty if unset; secrets show as "true"):
/// get [REMOTE:] KEY.
#[derive(FromArgs)]
#[argh(subcommand, name = "get")]
struct Get {
    #[argh(positional)]
    args: Vec<String>,
}

/// Set a configuration value: `set [REMOTE:] KEY VALUE` for the server
/// (core.https_address IP:PORT, applied at once; core.pki_default_role
/// none|auditor|user|operator|admin; core.trust_password and
/// local.passphrase, both stored hashed), `set [REMOTE:]NAME KEY VALUE` for
/// instance NAME (limits.cpu, limits.memory, boot.*, security.*…). A VALUE
/// of `-` is read from stdin, or typed without echo at a terminal, so that a
/// secret stays out of the process list.
#[derive(FromArgs)]
#[argh(subcommand, name = "set")]
struct Set {
    #[argh(positional, greedy)]
    args: Vec<String>,
}

/// Unset a configuration value: unset [REMOTE:] KEY.
#[derive(FromArgs)]
#[argh(subcommand, name = "unset")]
struct Unset {
    #[argh(positional)]
    args: Vec<String>,
}

/// Show the whole configuration.
#[derive(FromArgs)]
#[argh(subcommand, name = "show")]
struct Show {
    /// the server, as REMOTE:
    #[argh(positional)]
    remote: Option<String>,
    /// table (default), json, yaml or csv
    #[argh(option, default = "Format::Table")]
    format: Format,
}

/// Manage trusted client certificates.
#[derive(FromArgs)]
#[argh(subcommand, name = "trust")]
struct Trust {
    #[argh(subcommand)]
    cmd: TrustCmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum TrustCmd {
    Add(TrustAdd),
    Edit(TrustEdit),
    List(TrustList),
    Remove(TrustRemove),
}

/// Trust a client certificate file, or with --name alone print a one-time
/// token for a client to add itself: add [REMOTE:][FILE].
#[derive(FromArgs)]
#[argh(subcommand, name = "add")]
struct TrustAdd {
    /// the certificate (PEM), as [REMOTE:]FILE (- for stdin); leave out for a token
    #[argh(positional)]
    file: Option<String>,
    /// the name to show for the client (required for a token)
    #[argh(option)]
    name: Option<String>,
    /// auditor, user, operator or admin (default admin)
    #[argh(option)]
    role: Option<kvmbox::Role>,
    /// projects the role is limited to, comma-separated (default all)
    #[argh(option)]
    projects: Option<String>,
    /// how long a token stays valid, in hours (default 24)
    #[argh(option)]
    expires_hours: Option<u64>,
}

/// Change a trusted certificate's role, projects or name: edit [REMOTE:]FP.
#[derive(FromArgs)]
#[argh(subcommand, name = "edit")]
struct TrustEdit {
    #[argh(positional)]
    fingerprint: String,
    /// auditor, user, operator or admin
    #[argh(option)]
    role: Option<kvmbox::Role>,
    /// projects the role is limited to, comma-separated; "" for all
    #[argh(option)]
    projects: Option<String>,
    /// a new name
    #[argh(option)]
    name: Option<String>,
}

/// List trusted certificates.
#[derive(FromArgs)]
#[argh(subcommand, name = "list")]
struct TrustList {
    /// the server, as REMOTE:
    #[argh(positional)]
    remote: Option<String>,
    /// table (default), json, yaml or csv
    #[argh(option, default = "Format::Table")]
    format: Format,
}

/// Stop trusting a certificate (a unique fingerprint prefix is enough):
/// remove [REMOTE:]FP.
#[derive(FromArgs)]
#[argh(subcommand, name = "remove")]
struct TrustRemove {
    #[argh(positional)]
    fingerprint: String,
}

fn server_config(ctx: &Ctx, remote: Option<&str>) -> Result<BTreeMap<String, Value>, Error> {
    let server = ctx.connect_to(remote)?.call("GET", path::SERVER, None)?;
    if server.get("auth").and_then(Value::as_str) != Some("trusted") {
        return Err(Error::Msg(ctx.untrusted_hint(remote).to_string()));
    }
    Ok(server
        .get("config")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default())
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `[REMOTE:] ARG…` with exactly `n` ARGs.
fn with_remote(
    args: Vec<String>,
    n: usize,
    usage: &str,
) -> Result<(Option<String>, Vec<String>), Error> {
    let (remote, rest) = match args.first().map(|a| super::split_remote(a)) {
        Some((Some(r), first)) if first.is_empty() => {
            (Some(r), args.get(1..).unwrap_or_default().to_vec())
        }
        _ => (None, args),
    };
    if rest.len() != n {
        return Err(Error::Usage(format!("usage: {usage}")));
    }
    Ok((remote, rest))
}

fn projects_list(p: Option<&str>) -> Option<Vec<String>> {
    p.map(|p| {
        p.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    })
}

pub(crate) fn config(ctx: &Ctx, args: Config) -> Result<(), Error> {
    match args.cmd {
        ConfigCmd::Get(Get { args }) => {
            let (remote, rest) = with_remote(args, 1, "kvmbox config get [REMOTE:] KEY")?;
            let config = server_config(ctx, remote.as_deref())?;
            let key = rest.concat();
            println!("{}", config.get(&key).map(as_text).unwrap_or_default());
        }
        ConfigCmd::Set(Set { args }) => {
            const USAGE: &str = "kvmbox config set [REMOTE:] KEY VALUE | [REMOTE:]NAME KEY VALUE";
            // Three words name an instance unless the first is a bare `REMOTE:`.
            if let [target, key, value] = args.as_slice() {
                if !super::split_remote(target).1.is_empty() {
                    return super::instance::config_set(ctx, target, key, value);
                }
            }
            let (remote, rest) = with_remote(args, 2, USAGE)?;
            let [key, mut value] = <[String; 2]>::try_from(rest)
                .map_err(|_| Error::Usage(format!("usage: {USAGE}")))?;
            if value == "-" {
                value = super::auth::read_secret(None, &format!("{key}: "))?;
            }
            if value.is_empty() {
                return Err(Error::Usage(format!(
                    "an empty value unsets: use `kvmbox config unset {key}`"
                )));
            }
            patch(ctx, remote.as_deref(), &key, &value)?;
        }
        ConfigCmd::Unset(Unset { args }) => {
            let (remote, rest) = with_remote(args, 1, "kvmbox config unset [REMOTE:] KEY")?;
            patch(ctx, remote.as_deref(), &rest.concat(), "")?
        }
        ConfigCmd::Show(Show { remote, format }) => {
            let remote = super::remote_only(remote.as_deref())?;
            let config = server_config(ctx, remote.as_deref())?;
            let rows: Vec<Vec<String>> = config
                .iter()
                .map(|(k, v)| vec![k.clone(), as_text(v)])
                .collect();
            output::print(format, &json!(config), &["KEY", "VALUE"], &rows);
        }
        ConfigCmd::Trust(Trust { cmd }) => match cmd {
            TrustCmd::List(l) => {
                let remote = super::remote_only(l.remote.as_deref())?;
                trust_list(ctx, remote.as_deref(), l.format)?
            }
            TrustCmd::Remove(r) => {
                let (remote, fp) = super::split_remote(&r.fingerprint);
                trust_remove(ctx, remote.as_deref(), &fp)?
            }
            TrustCmd::Add(a) => trust_add(ctx, a)?,
            TrustCmd::Edit(e) => trust_edit(ctx, e)?,
        },
        ConfigCmd::Device(d) => super::instance::device(ctx, &d)?,
    }
    Ok(())
}

fn patch(ctx: &Ctx, remote: Option<&str>, key: &str, value: &str) -> Result<(), Error> {
    ctx.connect_to(remote)?
        .send("PATCH", path::SERVER, &ServerPut::one(key, value))?;
    Ok(())
}

fn trust_add(ctx: &Ctx, a: TrustAdd) -> Result<(), Error> {
    let (remote, file) = match &a.file {
        Some(f) => {
            let (r, f) = super::split_remote(f);
            (r, (!f.is_empty()).then_some(f))
        }
        None => (None, None),
    };
    let mut body = CertificatesPost {
        name: a.name.clone().unwrap_or_default(),
        role: a.role,
        projects: projects_list(a.projects.as_deref()),
        ..CertificatesPost::client()
    };
    let mut client = ctx.connect_to(remote.as_deref())?;
    match file {
        Some(f) => {
            let pem = kvmbox::read_operand_string(std::path::Path::new(&f), CERT_LIMIT)
                .map_err(|e| Error::Msg(format!("cannot read {f}: {e}")))?;
            body.certificate = pem;
            client.send("POST", path::CERTIFICATES, &body)?;
            println!("Certificate {f} is now trusted.");
        }
        None => {
            if a.name.as_deref().unwrap_or_default().is_empty() {
                return Err(Error::Usage(
                    "give a certificate FILE, or --name for a token".into(),
                ));
            }
            body.token = true;
            body.expires_in = a.expires_hours.map(|h| h.saturating_mul(3600));
            let answer = client.send("POST", path::CERTIFICATES, &body)?;
            let out = client.wait(answer)?;
            let token = out.get("token").and_then(Value::as_str).unwrap_or_default();
            if token.is_empty() {
                return Err(Error::Msg("the server returned no token".into()));
            }
            eprintln!(
                "Token for {} (single use, expires {}):",
                a.name.unwrap_or_default(),
                out.get("expires_at").map(as_text).unwrap_or_default()
            );
            println!("{token}");
        }
    }
    Ok(())
}

fn trust_edit(ctx: &Ctx, e: TrustEdit) -> Result<(), Error> {
    let (remote, prefix) = super::split_remote(&e.fingerprint);
    let mut client = ctx.connect_to(remote.as_deref())?;
    let fp = resolve_fp(&mut client, &prefix)?;
    let projects = projects_list(e.projects.as_deref());
    let body = CertificatePut {
        name: e.name,
        role: e.role,
        restricted: projects.as_ref().map(|p| !p.is_empty()),
        projects,
    };
    client.send("PATCH", &path::certificate(&fp), &body)?;
    println!("Certificate {fp} changed.");
    Ok(())
}

fn trust_list(ctx: &Ctx, remote: Option<&str>, format: Format) -> Result<(), Error> {
    let list = ctx
        .connect_to(remote)?
        .call("GET", path::CERTIFICATES_FULL, None)?;
    let entries = list.as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let field = |k: &str| e.get(k).map(as_text).unwrap_or_default();
            let fp = field("fingerprint");
            let fp = if format == Format::Table {
                fp.chars().take(12).collect()
            } else {
                fp
            };
            let added = e
                .get("added")
                .and_then(Value::as_i64)
                .map(date)
                .unwrap_or_default();
            let projects = e
                .get("projects")
                .and_then(Value::as_array)
                .filter(|p| !p.is_empty())
                .map(|p| p.iter().map(as_text).collect::<Vec<_>>().join(","))
                .unwrap_or_else(|| "all".into());
            vec![
                field("name"),
                field("type"),
                field("role"),
                projects,
                fp,
                added,
            ]
        })
        .collect();
    output::print(
        format,
        &list,
        &["NAME", "TYPE", "ROLE", "PROJECTS", "FINGERPRINT", "ADDED"],
        &rows,
    );
    Ok(())
}

/// Seconds since the epoch as an RFC 3339 UTC date.
fn date(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// The one trusted fingerprint that starts with `prefix`.
fn resolve_fp(client: &mut kvmbox::Client, prefix: &str) -> Result<String, Error> {
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Usage(format!(
            "{prefix:?} is not a fingerprint (hex digits)"
        )));
    }
    let prefix = prefix.to_ascii_lowercase();
    let list = client.call("GET", path::CERTIFICATES, None)?;
    let matches: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|url| url.rsplit('/').next())
        .filter(|fp| fp.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    match <[String; 1]>::try_from(matches) {
        Ok([one]) => Ok(one),
        Err(m) if m.is_empty() => Err(Error::Msg(format!(
            "no trusted certificate has fingerprint {prefix}"
        ))),
        Err(_) => Err(Error::Msg(format!(
            "fingerprint {prefix} is ambiguous: give more digits"
        ))),
    }
}

fn trust_remove(ctx: &Ctx, remote: Option<&str>, prefix: &str) -> Result<(), Error> {
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Usage(format!(
            "{prefix:?} is not a fingerprint (hex digits)"
        )));
    }
    let mut client = ctx.connect_to(remote)?;
    let fp = resolve_fp(&mut client, prefix)?;
    client.call("DELETE", &path::certificate(&fp), None)?;
    println!("Removed certificate {fp}.");
    Ok(())
}
