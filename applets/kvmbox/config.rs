//! `kvmbox config`: server configuration and the trust store.

use std::collections::BTreeMap;

use argh::FromArgs;
use serde_json::{json, Value};

use super::output::{self, Format};
use super::{Ctx, Error};

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

/// Print one configuration value (empty if unset; secrets show as "true").
#[derive(FromArgs)]
#[argh(subcommand, name = "get")]
struct Get {
    #[argh(positional)]
    key: String,
}

/// Set a configuration value: `set KEY VALUE` for the server (e.g.
/// local.passphrase), `set NAME KEY VALUE` for instance NAME.
#[derive(FromArgs)]
#[argh(subcommand, name = "set")]
struct Set {
    #[argh(positional, greedy)]
    args: Vec<String>,
}

/// Unset a configuration value.
#[derive(FromArgs)]
#[argh(subcommand, name = "unset")]
struct Unset {
    #[argh(positional)]
    key: String,
}

/// Show the whole configuration.
#[derive(FromArgs)]
#[argh(subcommand, name = "show")]
struct Show {
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
    List(TrustList),
    Remove(TrustRemove),
}

/// List trusted certificates.
#[derive(FromArgs)]
#[argh(subcommand, name = "list")]
struct TrustList {
    /// table (default), json, yaml or csv
    #[argh(option, default = "Format::Table")]
    format: Format,
}

/// Stop trusting a certificate (a unique fingerprint prefix is enough).
#[derive(FromArgs)]
#[argh(subcommand, name = "remove")]
struct TrustRemove {
    #[argh(positional)]
    fingerprint: String,
}

fn server_config(ctx: &Ctx) -> Result<BTreeMap<String, Value>, Error> {
    let server = ctx.connect()?.call("GET", "/1.0", None)?;
    if server.get("auth").and_then(Value::as_str) != Some("trusted") {
        return Err(Error::Msg(kvmbox::UNTRUSTED_HINT.to_string()));
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

pub(crate) fn config(ctx: &Ctx, args: Config) -> Result<(), Error> {
    match args.cmd {
        ConfigCmd::Get(Get { key }) => {
            let config = server_config(ctx)?;
            println!("{}", config.get(&key).map(as_text).unwrap_or_default());
        }
        ConfigCmd::Set(Set { args }) => {
            let (key, value) = match args.as_slice() {
                [name, key, value] => return super::instance::config_set(ctx, name, key, value),
                [key, value] => (key.clone(), value.clone()),
                _ => return Err(Error::Usage("expected [NAME] KEY VALUE".into())),
            };
            if value.is_empty() {
                return Err(Error::Usage(format!(
                    "an empty value unsets: use `kvmbox config unset {key}`"
                )));
            }
            patch(ctx, &key, &value)?;
        }
        ConfigCmd::Unset(Unset { key }) => patch(ctx, &key, "")?,
        ConfigCmd::Show(Show { format }) => {
            let config = server_config(ctx)?;
            let rows: Vec<Vec<String>> = config
                .iter()
                .map(|(k, v)| vec![k.clone(), as_text(v)])
                .collect();
            output::print(format, &json!(config), &["KEY", "VALUE"], &rows);
        }
        ConfigCmd::Trust(Trust {
            cmd: TrustCmd::List(l),
        }) => trust_list(ctx, l.format)?,
        ConfigCmd::Trust(Trust {
            cmd: TrustCmd::Remove(r),
        }) => trust_remove(ctx, &r.fingerprint)?,
        ConfigCmd::Device(d) => super::instance::device(ctx, &d)?,
    }
    Ok(())
}

fn patch(ctx: &Ctx, key: &str, value: &str) -> Result<(), Error> {
    ctx.connect()?
        .call("PATCH", "/1.0", Some(&json!({ "config": { key: value } })))?;
    Ok(())
}

fn trust_list(ctx: &Ctx, format: Format) -> Result<(), Error> {
    let list = ctx
        .connect()?
        .call("GET", "/1.0/certificates?recursion=1", None)?;
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
            vec![field("name"), field("type"), field("role"), fp, added]
        })
        .collect();
    output::print(
        format,
        &list,
        &["NAME", "TYPE", "ROLE", "FINGERPRINT", "ADDED"],
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

fn trust_remove(ctx: &Ctx, prefix: &str) -> Result<(), Error> {
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Usage(format!(
            "{prefix:?} is not a fingerprint (hex digits)"
        )));
    }
    let prefix = prefix.to_ascii_lowercase();
    let mut client = ctx.connect()?;
    let list = client.call("GET", "/1.0/certificates", None)?;
    let matches: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|url| url.rsplit('/').next())
        .filter(|fp| fp.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    let fp = match matches.as_slice() {
        [one] => one,
        [] => {
            return Err(Error::Msg(format!(
                "no trusted certificate has fingerprint {prefix}"
            )))
        }
        _ => {
            return Err(Error::Msg(format!(
                "fingerprint {prefix} is ambiguous: give more digits"
            )))
        }
    };
    client.call("DELETE", &format!("/1.0/certificates/{fp}"), None)?;
    println!("Removed certificate {fp}.");
    Ok(())
}
