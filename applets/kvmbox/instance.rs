//! `kvmbox launch|init|start|stop|restart|delete|image` and the
//! per-instance parts of `info` and `config`: LXD's instance calls
//! (<https://documentation.ubuntu.com/lxd/en/latest/rest-api/>), with the
//! async operations waited for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use argh::FromArgs;
use kvmbox::{
    api_path as path, Client, Device, ImageInfo, ImagesPost, InstancePut, InstancesPost, StatePut,
};
use serde_json::Value;

use super::output::{self, Format};
use super::{Ctx, Error};

/// Create and start an instance: `launch [IMAGE] NAME`.
#[derive(FromArgs)]
#[argh(subcommand, name = "launch")]
pub(crate) struct Launch {
    #[argh(option)]
    /// kernel to boot directly (no firmware, no disk needed)
    kernel: Option<PathBuf>,
    #[argh(option)]
    /// initrd for --kernel
    initrd: Option<PathBuf>,
    #[argh(option)]
    /// kernel command line for --kernel (default console=ttyS0)
    cmdline: Option<String>,
    #[argh(option)]
    /// an extra disk image (raw); repeatable: disk0, disk1, …
    disk: Vec<PathBuf>,
    #[argh(option)]
    /// virtual CPUs (limits.cpu, default 1)
    cpus: Option<u32>,
    #[argh(option)]
    /// memory, e.g. 256MiB or 2GiB (limits.memory, default 1GiB)
    memory: Option<String>,
    #[argh(option)]
    /// forward a host TCP port to the guest: [ADDR:]HOSTPORT:GUESTPORT,
    /// listening on 127.0.0.1 unless ADDR (IPv4) says where; repeatable
    forward: Vec<String>,
    #[argh(option)]
    /// put eth0 on this existing bridge instead of user-mode NAT
    network: Option<String>,
    #[argh(option, short = 'c')]
    /// any config key: KEY=VALUE, or KEY=@FILE for a file's content
    /// (e.g. security.privileged=true); repeatable
    config: Vec<String>,
    #[argh(option)]
    /// cloud-init user-data from this file (cloud-init.user-data)
    cloud_init: Option<PathBuf>,
    #[argh(positional)]
    /// [IMAGE] NAME
    args: Vec<String>,
}

/// Create an instance without starting it: `init [IMAGE] NAME`.
#[derive(FromArgs)]
#[argh(subcommand, name = "init")]
pub(crate) struct Init {
    #[argh(option)]
    /// kernel to boot directly (no firmware, no disk needed)
    kernel: Option<PathBuf>,
    #[argh(option)]
    /// initrd for --kernel
    initrd: Option<PathBuf>,
    #[argh(option)]
    /// kernel command line for --kernel (default console=ttyS0)
    cmdline: Option<String>,
    #[argh(option)]
    /// an extra disk image (raw); repeatable: disk0, disk1, …
    disk: Vec<PathBuf>,
    #[argh(option)]
    /// virtual CPUs (limits.cpu, default 1)
    cpus: Option<u32>,
    #[argh(option)]
    /// memory, e.g. 256MiB or 2GiB (limits.memory, default 1GiB)
    memory: Option<String>,
    #[argh(option)]
    /// forward a host TCP port to the guest: [ADDR:]HOSTPORT:GUESTPORT,
    /// listening on 127.0.0.1 unless ADDR (IPv4) says where; repeatable
    forward: Vec<String>,
    #[argh(option)]
    /// put eth0 on this existing bridge instead of user-mode NAT
    network: Option<String>,
    #[argh(option, short = 'c')]
    /// any config key: KEY=VALUE, or KEY=@FILE for a file's content
    /// (e.g. security.privileged=true); repeatable
    config: Vec<String>,
    #[argh(option)]
    /// cloud-init user-data from this file (cloud-init.user-data)
    cloud_init: Option<PathBuf>,
    #[argh(positional)]
    /// [IMAGE] NAME
    args: Vec<String>,
}

/// Start an instance.
#[derive(FromArgs)]
#[argh(subcommand, name = "start")]
pub(crate) struct Start {
    #[argh(positional)]
    name: String,
}

/// Stop an instance: ACPI power button, then forced after --timeout.
#[derive(FromArgs)]
#[argh(subcommand, name = "stop")]
pub(crate) struct Stop {
    #[argh(switch, short = 'f')]
    /// end QEMU at once, without asking the guest
    force: bool,
    #[argh(option, default = "30")]
    /// seconds the guest has to power off (default 30)
    timeout: u64,
    #[argh(positional)]
    name: String,
}

/// Restart an instance (stop as `stop` does, then start).
#[derive(FromArgs)]
#[argh(subcommand, name = "restart")]
pub(crate) struct Restart {
    #[argh(switch, short = 'f')]
    /// end QEMU at once, without asking the guest
    force: bool,
    #[argh(option, default = "30")]
    /// seconds the guest has to power off (default 30)
    timeout: u64,
    #[argh(positional)]
    name: String,
}

/// Delete an instance and everything it has on disk, or one snapshot
/// (NAME/SNAPSHOT).
#[derive(FromArgs)]
#[argh(subcommand, name = "delete")]
pub(crate) struct Delete {
    #[argh(switch, short = 'f')]
    /// delete even if it is running (QEMU is ended)
    force: bool,
    #[argh(positional)]
    name: String,
}

/// Manage images.
#[derive(FromArgs)]
#[argh(subcommand, name = "image")]
pub(crate) struct Image {
    #[argh(subcommand)]
    cmd: ImageCmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum ImageCmd {
    Copy(ImageCopy),
    Import(ImageImport),
    List(ImageList),
}

/// Have a daemon download an image from an image server:
/// `copy IMAGE_SERVER:ALIAS [REMOTE:]`.
#[derive(FromArgs)]
#[argh(subcommand, name = "copy")]
struct ImageCopy {
    #[argh(positional)]
    source: String,
    #[argh(positional)]
    target: Option<String>,
    #[argh(option)]
    /// the name instances are launched from (default: from the source's
    /// alias, debian/12 becoming debian-12)
    alias: Option<String>,
}

/// Copy a raw or qcow2 disk image into the image store.
#[derive(FromArgs)]
#[argh(subcommand, name = "import")]
struct ImageImport {
    #[argh(positional)]
    file: PathBuf,
    #[argh(option)]
    /// the name instances are launched from, [REMOTE:]ALIAS: on a remote
    /// other than local, the file is uploaded
    alias: String,
}

/// List images.
#[derive(FromArgs)]
#[argh(subcommand, name = "list")]
struct ImageList {
    /// table (default), json, yaml or csv
    #[argh(option, default = "Format::Table")]
    format: Format,
}

/// Manage an instance's devices.
#[derive(FromArgs)]
#[argh(subcommand, name = "device")]
pub(crate) struct DeviceCmd {
    #[argh(subcommand)]
    cmd: DeviceSub,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum DeviceSub {
    Add(DeviceAdd),
    Remove(DeviceRemove),
}

/// Add a device: `add NAME DEV disk source=PATH [readonly=true]`; on a
/// running VM a disk is hot-plugged.
#[derive(FromArgs)]
#[argh(subcommand, name = "add")]
struct DeviceAdd {
    #[argh(positional)]
    name: String,
    #[argh(positional)]
    device: String,
    #[argh(positional)]
    kind: String,
    #[argh(positional, greedy)]
    props: Vec<String>,
}

/// Remove a device; on a running VM a disk is unplugged.
#[derive(FromArgs)]
#[argh(subcommand, name = "remove")]
struct DeviceRemove {
    #[argh(positional)]
    name: String,
    #[argh(positional)]
    device: String,
}

/// On a terminal, shows the operation's `progress.percent` until it ends.
/// Follows operation `op` until it ends: a bar on a terminal; plain lines
/// of a download's progress otherwise.
fn show_progress(c: &mut Client, op: &Value, label: &str) {
    use std::io::{IsTerminal, Write};
    let mut err = std::io::stderr();
    let tty = err.is_terminal();
    let id = op.get("id").and_then(Value::as_str).unwrap_or_default();
    let mut last = String::new();
    // Off a terminal the daemon holds each look until the operation ends
    // or a second has passed, so a quick one is not waited on for longer.
    let look = if tty {
        path::operation(id)
    } else {
        format!("{}/wait?timeout=1", path::operation(id))
    };
    loop {
        let Ok(now) = c.call("GET", &look, None) else {
            break;
        };
        let percent = now
            .pointer("/metadata/progress/percent")
            .and_then(Value::as_u64);
        let text = now
            .pointer("/metadata/download_progress")
            .and_then(Value::as_str);
        // A bar of twenty steps, then the daemon's words (or the percentage).
        let bar = percent.map(|p| {
            let filled = "####################".get(..usize::try_from(p.min(100) / 5).unwrap_or(0));
            format!("[{:-<20}] ", filled.unwrap_or_default())
        });
        let words = text.map_or_else(|| percent.map(|p| format!("{p}%")), |t| Some(t.into()));
        let line = match (tty, words) {
            (true, Some(w)) => format!("\r{label}: {}{w}\x1b[K", bar.unwrap_or_default()),
            (false, Some(w)) if text.is_some() => format!("{label}: {w}\n"),
            _ => String::new(),
        };
        if line != last {
            let _ = err.write_all(line.as_bytes());
            let _ = err.flush();
            last = line;
        }
        if now.get("status_code").and_then(Value::as_u64) != Some(103) {
            break;
        }
        if tty {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    if tty && !last.is_empty() {
        let _ = writeln!(err);
    }
}

/// Has the daemon `c` pull `alias` from image server `server` (named
/// `name` as an image there); the image's fingerprint.
fn pull(
    c: &mut Client,
    server: String,
    alias: String,
    name: Option<String>,
) -> Result<String, Error> {
    let op = c.send("POST", path::IMAGES, &ImagesPost::pull(server, alias, name))?;
    show_progress(c, &op, "Retrieving image");
    let done = c.wait(op)?;
    let fp = done
        .get("fingerprint")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if done.get("existing").is_some() {
        println!("Image {fp} is in the image store already");
    }
    Ok(fp.to_string())
}

/// The image server and the image of `REMOTE:ALIAS`, if REMOTE is one.
fn on_image_server(arg: &str) -> Result<Option<(String, String)>, Error> {
    let (Some(remote), alias) = super::split_remote(arg) else {
        return Ok(None);
    };
    let remotes = kvmbox::Remotes::load(&kvmbox::config_dir())?;
    Ok(remotes.image_server(&remote).map(|url| (url, alias)))
}

fn absolute(p: &Path) -> Result<String, Error> {
    if kvmbox::is_stdio(p) {
        return Err(Error::Usage(
            "- (stdin) cannot be used here: the daemon opens this file by its path".into(),
        ));
    }
    std::fs::canonicalize(p)
        .map(|p| p.display().to_string())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Msg(format!("{} does not exist", p.display())),
            _ => Error::Msg(format!("{}: {e}", p.display())),
        })
}

/// A device from its properties. (Inserted one by one: collecting into a
/// map would compile a sort for it.)
fn device_of(props: &[(&str, &str)]) -> Device {
    let mut device = Device::new();
    for (k, v) in props {
        device.insert(k.to_string(), v.to_string());
    }
    device
}

struct CreateArgs<'a> {
    kernel: &'a Option<PathBuf>,
    initrd: &'a Option<PathBuf>,
    cmdline: &'a Option<String>,
    disk: &'a [PathBuf],
    cpus: Option<u32>,
    memory: &'a Option<String>,
    forward: &'a [String],
    network: &'a Option<String>,
    config: &'a [String],
    cloud_init: &'a Option<PathBuf>,
    args: &'a [String],
}

/// A text file named on the command line (a config value).
fn read_text(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("cannot read {}: {e}", path.display())))
}

/// POST /1.0/instances; the instance's name.
fn create(ctx: &Ctx, a: &CreateArgs<'_>) -> Result<String, Error> {
    let (image, name) = match a.args {
        [name] => (None, name.clone()),
        [image, name] => (Some(image.clone()), name.clone()),
        _ => return Err(Error::Usage("expected [IMAGE] NAME".into())),
    };
    let mut config = BTreeMap::new();
    if let Some(k) = a.kernel {
        config.insert("boot.kernel".to_string(), absolute(k)?);
    }
    if let Some(i) = a.initrd {
        config.insert("boot.initrd".to_string(), absolute(i)?);
    }
    if let Some(c) = a.cmdline {
        config.insert("boot.cmdline".to_string(), c.clone());
    }
    if let Some(n) = a.cpus {
        config.insert("limits.cpu".to_string(), n.to_string());
    }
    if let Some(m) = a.memory {
        config.insert("limits.memory".to_string(), m.clone());
    }
    if let Some(f) = a.cloud_init {
        config.insert("cloud-init.user-data".to_string(), read_text(f)?);
    }
    for kv in a.config {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--config {kv:?} is not KEY=VALUE")))?;
        let v = match v.strip_prefix('@') {
            Some(file) => read_text(Path::new(file))?,
            None => v.to_string(),
        };
        config.insert(k.to_string(), v);
    }
    let mut devices = BTreeMap::new();
    for (i, d) in a.disk.iter().enumerate() {
        devices.insert(
            format!("disk{i}"),
            device_of(&[("type", "disk"), ("source", &absolute(d)?)]),
        );
    }
    let nic = if let Some(bridge) = a.network {
        if !a.forward.is_empty() {
            return Err(Error::Usage(
                "--forward is for user-mode NAT, not with --network".into(),
            ));
        }
        device_of(&[("type", "nic"), ("nictype", "bridged"), ("parent", bridge)])
    } else if a.forward.is_empty() {
        device_of(&[("type", "nic"), ("nictype", "user")])
    } else {
        let forward = a.forward.join(",");
        device_of(&[("type", "nic"), ("nictype", "user"), ("forward", &forward)])
    };
    devices.insert("eth0".to_string(), nic);
    let (mut c, bare) = ctx.target(&name)?;
    let image = match image.as_deref().map(on_image_server).transpose()?.flatten() {
        Some((server, alias)) => Some(pull(&mut c, server, alias, None)?),
        None => image,
    };
    let body = InstancesPost::vm(bare, image, config, devices);
    let answer = c.send("POST", path::INSTANCES, &body)?;
    c.wait(answer)?;
    Ok(name)
}

fn state(ctx: &Ctx, name: &str, action: &str, force: bool, timeout: u64) -> Result<(), Error> {
    let body = StatePut {
        action: action.into(),
        timeout: i64::try_from(timeout).unwrap_or(i64::MAX),
        force,
        stateful: false,
    };
    let (mut c, name) = ctx.target(name)?;
    let answer = c.send("PUT", &path::instance_state(&name), &body)?;
    c.wait(answer)?;
    Ok(())
}

pub(crate) fn launch(ctx: &Ctx, a: &Launch) -> Result<(), Error> {
    let name = create(
        ctx,
        &CreateArgs {
            kernel: &a.kernel,
            initrd: &a.initrd,
            cmdline: &a.cmdline,
            disk: &a.disk,
            cpus: a.cpus,
            memory: &a.memory,
            forward: &a.forward,
            network: &a.network,
            config: &a.config,
            cloud_init: &a.cloud_init,
            args: &a.args,
        },
    )?;
    println!("Creating {name}");
    state(ctx, &name, "start", false, 0)?;
    println!("Starting {name}");
    Ok(())
}

pub(crate) fn init(ctx: &Ctx, a: &Init) -> Result<(), Error> {
    let name = create(
        ctx,
        &CreateArgs {
            kernel: &a.kernel,
            initrd: &a.initrd,
            cmdline: &a.cmdline,
            disk: &a.disk,
            cpus: a.cpus,
            memory: &a.memory,
            forward: &a.forward,
            network: &a.network,
            config: &a.config,
            cloud_init: &a.cloud_init,
            args: &a.args,
        },
    )?;
    println!("Creating {name}");
    Ok(())
}

pub(crate) fn start(ctx: &Ctx, a: &Start) -> Result<(), Error> {
    state(ctx, &a.name, "start", false, 0)
}

pub(crate) fn stop(ctx: &Ctx, a: &Stop) -> Result<(), Error> {
    state(ctx, &a.name, "stop", a.force, a.timeout)
}

pub(crate) fn restart(ctx: &Ctx, a: &Restart) -> Result<(), Error> {
    state(ctx, &a.name, "restart", a.force, a.timeout)
}

pub(crate) fn delete(ctx: &Ctx, a: &Delete) -> Result<(), Error> {
    let q = if a.force { "?force=true" } else { "" };
    let (mut c, name) = ctx.target(&a.name)?;
    let url = match super::snapshot::path_of(&name) {
        Some(snapshot) => snapshot,
        None if name.contains('/') => {
            return Err(Error::Usage(format!(
                "{name}: give NAME, or NAME/SNAPSHOT for a snapshot"
            )))
        }
        None => format!("{}{q}", path::instance(&name)),
    };
    let answer = c.call("DELETE", &url, None)?;
    c.wait(answer)?;
    Ok(())
}

pub(crate) fn image(ctx: &Ctx, a: &Image) -> Result<(), Error> {
    match &a.cmd {
        ImageCmd::Copy(cp) => {
            let Some((server, alias)) = on_image_server(&cp.source)? else {
                return Err(Error::Usage(format!(
                    "{:?} is not IMAGE_SERVER:ALIAS (see `kvmbox remote list`)",
                    cp.source
                )));
            };
            let target = super::remote_only(cp.target.as_deref())?;
            let mut c = ctx.connect_to(target.as_deref())?;
            let fp = pull(&mut c, server, alias, cp.alias.clone())?;
            println!("Image copied with fingerprint: {fp}");
        }
        ImageCmd::Import(i) => {
            let (remote, alias) = super::split_remote(&i.alias);
            let mut c = ctx.connect_to(remote.as_deref())?;
            let op = if super::is_local(remote.as_deref()) {
                // The daemon opens the file as the caller: nothing to send.
                let body = ImagesPost::from_path(absolute(&i.file)?.into(), alias);
                c.send("POST", path::IMAGES, &body)?
            } else {
                // A remote daemon cannot see this host's files: upload it.
                let mut f = std::fs::File::open(&i.file)
                    .map_err(|e| Error::Msg(format!("{}: {e}", i.file.display())))?;
                let len = f
                    .metadata()
                    .map_err(|e| Error::Msg(format!("{}: {e}", i.file.display())))?
                    .len();
                let name = i.file.file_name().unwrap_or_default().to_string_lossy();
                let headers = [
                    ("Content-Type", "application/octet-stream"),
                    ("X-LXD-filename", &*name),
                    ("X-LXD-aliases", &alias),
                ];
                c.upload(path::IMAGES, &mut f, len, &headers)?
            };
            show_progress(&mut c, &op, "Importing");
            let img = c.wait(op)?;
            println!(
                "Image imported with fingerprint: {}",
                img.get("fingerprint")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            );
        }
        ImageCmd::List(l) => {
            let list = ctx.connect()?.call("GET", path::IMAGES_FULL, None)?;
            let images: Vec<ImageInfo> = serde_json::from_value(list.clone()).map_err(|e| {
                Error::Msg(format!(
                    "the server sent an image list kvmbox cannot read: {e}"
                ))
            })?;
            let rows: Vec<Vec<String>> = images
                .iter()
                .map(|i| {
                    let aliases: Vec<&str> = i.aliases.iter().map(|a| a.name.as_str()).collect();
                    vec![
                        aliases.join(","),
                        i.fingerprint.chars().take(12).collect(),
                        i.properties.get("format").cloned().unwrap_or_default(),
                        i.size.to_string(),
                    ]
                })
                .collect();
            output::print(
                l.format,
                &list,
                &["ALIAS", "FINGERPRINT", "FORMAT", "SIZE"],
                &rows,
            );
        }
    }
    Ok(())
}

/// `kvmbox info NAME`.
pub(crate) fn info(ctx: &Ctx, name: &str, format: Format) -> Result<(), Error> {
    let (mut c, name) = ctx.target(name)?;
    let v = c.call(
        "GET",
        &format!("{}?recursion=1", path::instance(&name)),
        None,
    )?;
    let mut rows: Vec<Vec<String>> = [
        ("name", &["name"][..]),
        ("status", &["status"]),
        ("type", &["type"]),
        ("architecture", &["architecture"]),
        ("created", &["created_at"]),
        ("uuid", &["config", "volatile.uuid"]),
        ("pid", &["pid"]),
        ("uid", &["config", "volatile.idmap.base"]),
        ("accelerator", &["accelerator"]),
        ("security model", &["seclabel", "model"]),
        ("apparmor profile", &["seclabel", "label"]),
        ("apparmor mode", &["seclabel", "mode"]),
        ("profile loaded", &["seclabel", "loaded"]),
        ("confined", &["seclabel", "confined"]),
        ("unconfined because", &["seclabel", "reason"]),
    ]
    .iter()
    .map(|(k, p)| vec![k.to_string(), output::text(&v, p)])
    .collect();
    if let Some(cfg) = v.get("config").and_then(Value::as_object) {
        for (k, val) in cfg {
            if !k.starts_with("volatile.") {
                rows.push(vec![
                    format!("config {k}"),
                    val.as_str().unwrap_or_default().to_string(),
                ]);
            }
        }
    }
    if let Some(devs) = v.get("devices").and_then(Value::as_object) {
        for (k, d) in devs {
            let props: Vec<String> = d
                .as_object()
                .into_iter()
                .flatten()
                .map(|(pk, pv)| format!("{pk}={}", pv.as_str().unwrap_or_default()))
                .collect();
            rows.push(vec![format!("device {k}"), props.join(" ")]);
        }
    }
    output::print(format, &v, &["KEY", "VALUE"], &rows);
    Ok(())
}

/// `kvmbox config set NAME KEY VALUE`.
pub(crate) fn config_set(ctx: &Ctx, name: &str, key: &str, value: &str) -> Result<(), Error> {
    let (mut c, name) = ctx.target(name)?;
    let mut config = BTreeMap::new();
    config.insert(key.to_string(), value.to_string());
    let body = InstancePut {
        profiles: None,
        restore: None,
        config: Some(config),
        devices: None,
    };
    let answer = c.send("PATCH", &path::instance(&name), &body)?;
    c.wait(answer)?;
    Ok(())
}

pub(crate) fn device(ctx: &Ctx, a: &DeviceCmd) -> Result<(), Error> {
    match &a.cmd {
        DeviceSub::Add(d) => {
            let mut dev = Device::new();
            dev.insert("type".into(), d.kind.clone());
            for p in &d.props {
                let (k, v) = p
                    .split_once('=')
                    .ok_or_else(|| Error::Usage(format!("{p:?} is not KEY=VALUE")))?;
                let v = if k == "source" {
                    absolute(Path::new(v))?
                } else {
                    v.to_string()
                };
                dev.insert(k.into(), v);
            }
            let (mut c, name) = ctx.target(&d.name)?;
            let mut devices = BTreeMap::new();
            devices.insert(d.device.clone(), dev);
            let body = InstancePut {
                profiles: None,
                restore: None,
                config: None,
                devices: Some(devices),
            };
            let answer = c.send("PATCH", &path::instance(&name), &body)?;
            c.wait(answer)?;
            println!("Device {} added to {}", d.device, d.name);
        }
        DeviceSub::Remove(d) => {
            let (mut c, name) = ctx.target(&d.name)?;
            // The instance as it is, read as the body that puts it back.
            let inst: InstancePut = c.call_as("GET", &path::instance(&name), None)?;
            let mut devices = inst.devices.unwrap_or_default();
            if devices.remove(&d.device).is_none() {
                return Err(Error::Msg(format!(
                    "instance {} has no device {}",
                    d.name, d.device
                )));
            }
            let body = InstancePut {
                profiles: None,
                restore: None,
                config: None,
                devices: Some(devices),
            };
            let answer = c.send("PUT", &path::instance(&name), &body)?;
            c.wait(answer)?;
            println!("Device {} removed from {}", d.device, d.name);
        }
    }
    Ok(())
}
