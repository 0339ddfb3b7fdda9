//! `kvmbox-aa-helper`: writes, loads and unloads the AppArmor profile of one
//! VM — the only program that writes policy (libvirt's virt-aa-helper
//! design). Policy language:
//! <https://gitlab.com/apparmor/apparmor/-/wikis/AppArmor_Core_Policy_Reference>.
//!
//! It starts by clearing its environment, reads only its arguments and stdin,
//! and checks everything (see `kvmbox_aa::check`) before it writes or
//! loads anything: a refused input leaves the profile directory untouched.
//!
//! # Interface for the daemon
//!
//! ```text
//! kvmbox-aa-helper MODE [PATH] [--uuid UUID] [--profile-dir DIR] [--state-dir DIR]
//!                  [--template FILE] [--parser PROG] [--cache-dir DIR]
//!                  [--apparmor auto|required|always] [--no-load] [--dry-run] [--readonly]
//! ```
//!
//! | MODE           | stdin | does                                                        |
//! |----------------|-------|-------------------------------------------------------------|
//! | `create`       | JSON  | write `kvmbox-<uuid>.files` and (unless edited) `kvmbox-<uuid>`, load (`-r`) |
//! | `replace`      | JSON  | the same (`apparmor_parser -r` loads or replaces)           |
//! | `add-file PATH`| JSON  | hot-plug: the files list plus PATH (`--readonly`), reload   |
//! | `show`         | JSON  | print what `create` would write; writes and loads nothing   |
//! | `remove`       | —     | unload `kvmbox-<uuid>` (`-R`); needs `--uuid`               |
//! | `delete`       | —     | unload, then remove both files; needs `--uuid`              |
//!
//! stdin (unknown fields are refused; `--uuid`, when given, must match):
//!
//! ```json
//! {"uuid": "0f8fad5b-d9cb-469f-a165-70867728950e", "name": "vm1",
//!  "dir": "/var/lib/kvmbox/instances/vm1",
//!  "disks": [{"path": "/var/lib/kvmbox/instances/vm1/root.qcow2", "readonly": false},
//!            {"path": "/var/lib/kvmbox/images/debian.qcow2", "readonly": true}],
//!  "hotplug": [{"path": "/srv/data.img", "readonly": false}],
//!  "kernel": "/boot/vmlinuz", "initrd": "/boot/initrd.img",
//!  "firmware": "/usr/share/OVMF/OVMF_CODE.fd", "nvram": "…/vm1/OVMF_VARS.fd",
//!  "qmp_socket": "…/vm1/qmp.sock", "pid_file": "…/vm1/qemu.pid",
//!  "log_file": "…/vm1/qemu.log", "taps": ["kvmbox-tap0"]}
//! ```
//!
//! Only `uuid`, `name` and `dir` are required. `dir` must be an existing
//! directory inside `--state-dir`; runtime files must be inside it; other
//! daemon state is refused except read-only disks under `STATE/images/`.
//! qcow2 backing files must be listed as read-only disks.
//!
//! On success stdout is one line: `kvmbox-<uuid> loaded`, `… unloaded`,
//! `… deleted` or `… not loaded: REASON` (no AppArmor in the kernel, or
//! `--no-load`); `show` and `--dry-run` print the files instead. Exit codes:
//! 0 ok, 1 refused or failed (one line on stderr), 2 bad command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use argh::FromArgs;
use kvmbox::{is_stdio, read_operand_string, write_atomic, Overwrite};
use kvmbox_aa as aa;

use crate::cli;

const NAME: &str = "kvmbox-aa-helper";
/// The definition and the template are small; anything bigger is not one.
const STDIN_LIMIT: u64 = 1 << 20;
/// Where installed abstractions live (`make install` copies profiles/ there).
const SYSTEM_POLICY: &str = "/etc/apparmor.d";

/// Write, load and unload the AppArmor profile kvmbox-<uuid> of one VM.
/// MODE is create, replace, add-file PATH, show, remove or delete; create,
/// replace, add-file and show read the VM definition (JSON) on stdin.
#[derive(FromArgs)]
#[argh(note = "Exit codes: 0 ok, 1 refused or failed, 2 bad command line.")]
struct Args {
    /// create, replace, add-file, show, remove or delete
    #[argh(positional)]
    mode: String,
    /// for add-file: the disk to add
    #[argh(positional)]
    path: Option<String>,
    /// the VM's UUID: required by remove and delete, checked against stdin otherwise
    #[argh(option)]
    uuid: Option<String>,
    /// for add-file: add the disk read-only
    #[argh(switch)]
    readonly: bool,
    /// print the profile and files list; write and load nothing
    #[argh(switch)]
    dry_run: bool,
    /// directory of the per-VM profiles (default /etc/apparmor.d/kvmbox)
    #[argh(option, default = "PathBuf::from(\"/etc/apparmor.d/kvmbox\")")]
    profile_dir: PathBuf,
    /// the daemon's state directory (default /var/lib/kvmbox)
    #[argh(option, default = "PathBuf::from(\"/var/lib/kvmbox\")")]
    state_dir: PathBuf,
    /// profile template (default PROFILE_DIR/TEMPLATE.qemu, else TEMPLATE.qemu
    /// beside PROFILE_DIR, else the built-in one); not -, stdin is the VM
    #[argh(option)]
    template: Option<PathBuf>,
    /// the apparmor_parser to run (default apparmor_parser from /usr/sbin or /sbin)
    #[argh(option, default = "String::from(\"apparmor_parser\")")]
    parser: String,
    /// apparmor_parser cache directory (default /var/cache/apparmor)
    #[argh(option, default = "PathBuf::from(\"/var/cache/apparmor\")")]
    cache_dir: PathBuf,
    /// write the files but do not run apparmor_parser
    #[argh(switch)]
    no_load: bool,
    /// auto: load when the kernel has AppArmor, else skip and say so;
    /// required: no AppArmor is an error; always: run the parser regardless
    #[argh(option, default = "String::from(\"auto\")")]
    apparmor: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Create,
    Replace,
    AddFile,
    Show,
    Remove,
    Delete,
}

pub(crate) fn main(args: &[String]) -> ExitCode {
    // Nothing inherited may steer a privileged program (PATH, LD_*, locale).
    for (key, _) in std::env::vars_os() {
        std::env::remove_var(key);
    }
    let args = match cli::parse::<Args>(NAME, args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let mode = match (args.mode.as_str(), args.path.is_some()) {
        ("create", false) => Mode::Create,
        ("replace", false) => Mode::Replace,
        ("add-file", true) => Mode::AddFile,
        ("show", false) => Mode::Show,
        ("remove", false) => Mode::Remove,
        ("delete", false) => Mode::Delete,
        ("add-file", false) => return cli::usage_error(NAME, "add-file needs a PATH"),
        (m, _) if ["create", "replace", "show", "remove", "delete"].contains(&m) => {
            return cli::usage_error(NAME, &format!("{m} takes no PATH"))
        }
        (m, _) => {
            return cli::usage_error(
                NAME,
                &format!(
                    "unknown mode {m:?}: use create, replace, add-file, show, remove or delete"
                ),
            )
        }
    };
    if !["auto", "required", "always"].contains(&args.apparmor.as_str()) {
        return cli::usage_error(NAME, "--apparmor takes auto, required or always");
    }
    if args.template.as_deref().is_some_and(is_stdio) {
        return cli::usage_error(
            NAME,
            "--template cannot be -: stdin carries the VM definition",
        );
    }
    if matches!(mode, Mode::Remove | Mode::Delete) && args.uuid.is_none() {
        return cli::usage_error(NAME, &format!("{} needs --uuid", args.mode));
    }
    match run(mode, &args) {
        Ok(line) => {
            if !line.is_empty() {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => cli::fail(NAME, &kvmbox::error_chain(&e)),
    }
}

/// Whether to run the parser, or why not.
fn load_decision(args: &Args) -> Result<Option<String>, aa::Error> {
    if args.no_load {
        return Ok(Some("--no-load".into()));
    }
    match (args.apparmor.as_str(), aa::kernel_apparmor()) {
        ("always", _) | (_, aa::Kernel::Enabled) => Ok(None),
        ("required", aa::Kernel::Absent(why)) => Err(aa::Error::NoAppArmor(why)),
        (_, aa::Kernel::Absent(why)) => Ok(Some(format!("the kernel has no AppArmor ({why})"))),
    }
}

fn parser(args: &Args, include_dirs: Vec<PathBuf>) -> aa::Parser {
    aa::Parser {
        program: args.parser.clone(),
        cache_dir: Some(args.cache_dir.clone()),
        include_dirs,
    }
}

fn run(mode: Mode, args: &Args) -> Result<String, aa::Error> {
    let dry = args.dry_run || mode == Mode::Show;
    let skip_load = if dry { None } else { load_decision(args)? };
    match mode {
        Mode::Remove | Mode::Delete => {
            let uuid = aa::Uuid::parse(args.uuid.as_deref().unwrap_or_default())?;
            return remove(mode, args, &uuid, skip_load, dry);
        }
        Mode::Create | Mode::Replace | Mode::AddFile | Mode::Show => {}
    }

    let inst = read_instance()?;
    if let Some(given) = &args.uuid {
        aa::Uuid::parse(given)?;
        if *given != inst.uuid {
            return Err(aa::Error::Invalid(format!(
                "--uuid {given} does not match the definition's uuid {:?}",
                inst.uuid
            )));
        }
    }
    let host = aa::Host {
        profile_dir: args.profile_dir.clone(),
        state_dir: args.state_dir.clone(),
    };
    let extra = args.path.as_ref().map(|p| aa::Disk {
        path: p.clone(),
        readonly: args.readonly,
    });
    let others = aa::granted_by_others(&args.profile_dir, &inst.uuid);
    let v = aa::check(&inst, &host, extra.as_ref(), &others)?;

    let name = v.uuid.profile_name();
    let profile_path = args.profile_dir.join(&name);
    let files_path = args.profile_dir.join(format!("{name}.files"));
    // The profile directory passed the plain-characters check in aa::check.
    let files_text = aa::files_list(&v);
    let (template, template_name) = template(args)?;
    let generated =
        aa::profile_from_template(&template, &template_name, &v, &files_path.to_string_lossy())?;
    let existing = read_optional(&profile_path)?;
    let state = aa::profile_state(existing.as_deref());
    let keep = state == aa::ProfileState::Edited;

    if dry {
        let shown = if keep {
            existing.unwrap_or_default()
        } else {
            generated
        };
        let note = if keep { " (edited: kept as is)" } else { "" };
        print!(
            "==> {}{note} <==\n{shown}\n==> {} <==\n{files_text}",
            profile_path.display(),
            files_path.display()
        );
        return Ok(String::new());
    }

    std::fs::create_dir_all(&args.profile_dir).map_err(|source| aa::Error::Io {
        action: "create",
        path: args.profile_dir.clone(),
        source,
    })?;
    let include_dirs = abstraction_fallback(&args.profile_dir)?;
    write(&files_path, &files_text)?;
    if keep {
        eprintln!(
            "{NAME}: keeping the edited profile {}",
            profile_path.display()
        );
        if !existing
            .unwrap_or_default()
            .contains(&format!("{name}.files"))
        {
            eprintln!(
                "{NAME}: warning: it does not include {}",
                files_path.display()
            );
        }
    } else {
        write(&profile_path, &generated)?;
    }
    match skip_load {
        Some(why) => Ok(format!("{name} not loaded: {why}")),
        None => {
            parser(args, include_dirs).load(&profile_path)?;
            Ok(format!("{name} loaded"))
        }
    }
}

fn remove(
    mode: Mode,
    args: &Args,
    uuid: &aa::Uuid,
    skip_load: Option<String>,
    dry: bool,
) -> Result<String, aa::Error> {
    let name = uuid.profile_name();
    let files = [
        args.profile_dir.join(format!("{name}.files")),
        args.profile_dir.join(&name),
    ];
    if dry {
        let mut out = format!("would unload {name}");
        if mode == Mode::Delete {
            for f in &files {
                out.push_str(&format!("\nwould remove {}", f.display()));
            }
        }
        return Ok(out);
    }
    let mut line = match &skip_load {
        Some(why) => format!("{name} not unloaded: {why}"),
        None => {
            parser(args, Vec::new()).unload(uuid)?;
            format!("{name} unloaded")
        }
    };
    if mode == Mode::Delete {
        for f in &files {
            match std::fs::remove_file(f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(aa::Error::Io {
                        action: "remove",
                        path: f.clone(),
                        source,
                    })
                }
            }
        }
        line.push_str("; files deleted");
    }
    Ok(line)
}

fn read_instance() -> Result<aa::Instance, aa::Error> {
    let text =
        read_operand_string(Path::new("-"), STDIN_LIMIT).map_err(|source| aa::Error::Io {
            action: "read",
            path: PathBuf::from("stdin"),
            source,
        })?;
    serde_json::from_str(&text)
        .map_err(|e| aa::Error::Invalid(format!("invalid VM definition on stdin: {e}")))
}

/// The template text and a name for messages: `--template`, else
/// PROFILE_DIR/TEMPLATE.qemu, else the one beside PROFILE_DIR (where
/// `make install` puts it: /etc/apparmor.d/TEMPLATE.qemu), else built-in.
fn template(args: &Args) -> Result<(String, String), aa::Error> {
    let installed = [
        Some(args.profile_dir.join("TEMPLATE.qemu")),
        args.profile_dir.parent().map(|d| d.join("TEMPLATE.qemu")),
    ];
    let path = match &args.template {
        Some(p) => p.clone(),
        None => match installed.into_iter().flatten().find(|p| p.is_file()) {
            Some(p) => p,
            None => return Ok((aa::TEMPLATE.to_string(), "built-in TEMPLATE.qemu".into())),
        },
    };
    let text = read_operand_string(&path, STDIN_LIMIT).map_err(|source| aa::Error::Io {
        action: "read",
        path: path.clone(),
        source,
    })?;
    Ok((text, path.display().to_string()))
}

/// Without an installed abstraction (only the binary is on this host), the
/// built-in one is written once to PROFILE_DIR/abstractions/ and that
/// directory is searched too; an existing copy there is never overwritten.
fn abstraction_fallback(profile_dir: &Path) -> Result<Vec<PathBuf>, aa::Error> {
    if Path::new(SYSTEM_POLICY)
        .join("abstractions/kvmbox-qemu")
        .is_file()
    {
        return Ok(Vec::new());
    }
    let local = profile_dir.join("abstractions/kvmbox-qemu");
    if !local.is_file() {
        let dir = profile_dir.join("abstractions");
        std::fs::create_dir_all(&dir).map_err(|source| aa::Error::Io {
            action: "create",
            path: dir,
            source,
        })?;
        write(&local, aa::ABSTRACTION)?;
    }
    Ok(vec![profile_dir.to_path_buf()])
}

fn read_optional(path: &Path) -> Result<Option<String>, aa::Error> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(aa::Error::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write(path: &Path, text: &str) -> Result<(), aa::Error> {
    write_atomic(path, text.as_bytes(), 0o644, Overwrite::Replace).map_err(|source| aa::Error::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}
