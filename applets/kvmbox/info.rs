//! `kvmbox info` and `kvmbox list`.

use argh::FromArgs;
use kvmbox::api_path as path;

use super::output::{self, text, Format};
use super::{Ctx, Error};

/// Show the server (version, authentication, certificate, drivers), or
/// with NAME an instance (state, AppArmor profile and confinement).
#[derive(FromArgs)]
#[argh(subcommand, name = "info")]
pub(crate) struct Info {
    /// an instance as [REMOTE:]NAME, or a server as REMOTE: (default: the
    /// default remote's server)
    #[argh(positional)]
    target: Option<String>,
    /// table (default), json, yaml or csv
    #[argh(option, default = "Format::Table")]
    format: Format,
}

/// List instances.
#[derive(FromArgs)]
#[argh(subcommand, name = "list")]
pub(crate) struct List {
    /// the server, as REMOTE: (default: the default remote)
    #[argh(positional)]
    remote: Option<String>,
    /// table (default), json, yaml or csv
    #[argh(option, default = "Format::Table")]
    format: Format,
}

pub(crate) fn info(ctx: &Ctx, args: &Info) -> Result<(), Error> {
    let (remote, name) = match args.target.as_deref().map(super::split_remote) {
        Some((remote, name)) => (remote, name),
        None => (None, String::new()),
    };
    if !name.is_empty() {
        return super::instance::info(ctx, args.target.as_deref().unwrap_or_default(), args.format);
    }
    let server = ctx
        .connect_to(remote.as_deref())?
        .call("GET", path::SERVER, None)?;
    if text(&server, &["auth"]) != "trusted" {
        return Err(Error::Msg(
            ctx.untrusted_hint(remote.as_deref()).to_string(),
        ));
    }
    let fields = [
        ("auth", &["auth"][..]),
        ("auth_role", &["auth_role"]),
        ("api_version", &["api_version"]),
        ("server_name", &["environment", "server_name"]),
        ("server_version", &["environment", "server_version"]),
        ("kernel_version", &["environment", "kernel_version"]),
        (
            "certificate_fingerprint",
            &["environment", "certificate_fingerprint"],
        ),
        ("security_driver", &["environment", "security_driver"]),
        ("accelerator", &["environment", "accelerator"]),
        ("accelerator_reason", &["environment", "accelerator_reason"]),
        (
            "security_driver_reason",
            &["environment", "security_driver_reason"],
        ),
    ];
    let rows: Vec<Vec<String>> = fields
        .iter()
        .map(|(name, path)| vec![name.to_string(), text(&server, path)])
        .collect();
    output::print(args.format, &server, &["KEY", "VALUE"], &rows);
    Ok(())
}

/// What a table of instances shows of each: the rest of the object is
/// skipped while reading, not built.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct Row {
    name: String,
    status: String,
    #[serde(rename = "type")]
    kind: String,
}

pub(crate) fn list(ctx: &Ctx, args: &List) -> Result<(), Error> {
    let remote = super::remote_only(args.remote.as_deref())?;
    let mut client = ctx.connect_to(remote.as_deref())?;
    const HEADERS: [&str; 3] = ["NAME", "STATE", "TYPE"];
    if matches!(args.format, Format::Json | Format::Yaml) {
        let list = client.call("GET", path::INSTANCES_FULL, None)?;
        output::print(args.format, &list, &HEADERS, &[]);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = client
        .call_as::<Vec<Row>>("GET", path::INSTANCES_FULL, None)?
        .into_iter()
        .map(|r| vec![r.name, r.status, r.kind])
        .collect();
    output::print(args.format, &serde_json::Value::Null, &HEADERS, &rows);
    Ok(())
}
