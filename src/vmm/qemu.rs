//! The QEMU command line, built from a VM description: no libvirt between
//! the daemon and QEMU.
//!
//! Everything a VM may do is spelled out here; nothing comes from QEMU's
//! defaults or a user config (`-nodefaults -no-user-config`), and the
//! process sandboxes itself with seccomp (`-sandbox on,…`) before the guest
//! runs. Reference: <https://www.qemu.org/docs/master/system/invocation.html>.

use std::ffi::OsString;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::vmm::accel::Accel;

/// Free PCIe root ports a VM gets for hotplug unless told otherwise. q35
/// cannot hot-add onto the root complex itself; each port takes one device.
pub const DEFAULT_HOTPLUG_PORTS: u8 = 4;
/// Bounds on `limits.cpu`.
pub(crate) const MAX_CPUS: u32 = 255;
/// Bounds on `limits.memory`.
pub(crate) const MIN_MEMORY: u64 = 32 << 20;
pub(crate) const MAX_MEMORY: u64 = 1 << 40;

/// Why a VM description cannot become a command line: always the input.
#[derive(thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("invalid memory size {0:?}: expected a number with a unit such as 256MiB or 1GiB")]
    MemorySyntax(String),
    #[error("memory size {0:?} is outside 32MiB..=1TiB")]
    MemoryRange(String),
    #[error("cpu count {0} is outside 1..={MAX_CPUS}")]
    Cpus(u32),
    #[error("invalid VM name {0:?}: use 1-63 lowercase letters, digits and '-', not starting or ending with '-'")]
    Name(String),
    #[error("invalid UUID {0:?}")]
    Uuid(String),
    #[error("invalid {what} path {path:?}: {why}")]
    Path {
        what: &'static str,
        path: PathBuf,
        why: &'static str,
    },
    #[error("invalid {what} {value:?}")]
    Value { what: &'static str, value: String },
    #[error(
        "invalid port forward {0:?}: expected [ADDR:]HOSTPORT:GUESTPORT, ADDR an IPv4 address"
    )]
    Forward(String),
    #[error("invalid port forward {0:?}: QEMU's user-mode network listens on IPv4 addresses only")]
    ForwardV6(String),
    #[error("duplicate device id {0:?}")]
    DuplicateId(String),
    #[error("kernel boot options (initrd, cmdline) need a kernel")]
    InitrdWithoutKernel,
}

crate::debug_as_display!(Error);

/// A memory size in bytes, parsed from LXD-style strings: `256MiB`, `1GiB`
/// (binary), `512MB`, `2GB` (decimal), or plain bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemorySize(u64);

impl MemorySize {
    pub fn bytes(self) -> u64 {
        self.0
    }
    pub fn from_mib(mib: u64) -> Result<Self, Error> {
        let s = format!("{mib}MiB");
        s.parse()
    }
}

impl FromStr for MemorySize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let syntax = || Error::MemorySyntax(s.to_string());
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| syntax())?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "TiB" | "T" => 1 << 40,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            _ => return Err(syntax()),
        };
        // QEMU sizes guest RAM in whole MiB; decimal units round down.
        let bytes = n.checked_mul(mult).ok_or_else(syntax)? & !((1 << 20) - 1);
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&bytes) {
            return Err(Error::MemoryRange(s.to_string()));
        }
        Ok(MemorySize(bytes))
    }
}

impl fmt::Display for MemorySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}MiB", self.0 >> 20)
    }
}

/// How the guest boots.
#[derive(Clone, Debug)]
pub enum Boot {
    /// Direct kernel boot, no firmware involved.
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// Firmware boots the first disk (`disks[0]`).
    Disk,
}

/// A disk image's format. Always stated, never probed: a raw image whose
/// guest wrote a qcow2 header must not be read as qcow2 (backing-file escape).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub(crate) fn driver(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// A virtio block device.
#[derive(Clone, Debug)]
pub struct Disk {
    /// Device name in kvmbox (`root`, `data`…): becomes the QEMU ids.
    pub id: String,
    pub path: PathBuf,
    pub format: DiskFormat,
    pub read_only: bool,
}

/// A network interface.
#[derive(Clone, Debug)]
pub enum Nic {
    /// QEMU's user-mode NAT with TCP port forwards.
    User {
        id: String,
        mac: Option<String>,
        forwards: Vec<Forward>,
    },
    /// An existing tap device, already on its bridge. The daemon opens it
    /// (QEMU's uid has no access to /dev/net/tun) and QEMU inherits the
    /// descriptor: see [`tap_fd`]. QEMU runs no scripts.
    Tap {
        id: String,
        mac: Option<String>,
        ifname: String,
    },
}

/// A host TCP port that QEMU's user-mode NAT forwards to a guest port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    /// Where QEMU listens. Loopback unless the forward names an address:
    /// a VM's port is not offered to the whole network by default.
    pub addr: Ipv4Addr,
    pub host: u16,
    pub guest: u16,
}

/// Parses `[ADDR:]HOSTPORT:GUESTPORT` as given to `--forward`. ADDR is an
/// IPv4 address (QEMU's `hostfwd` takes no other, see the `-netdev user`
/// documentation) and defaults to 127.0.0.1.
pub fn parse_forward(s: &str) -> Result<Forward, Error> {
    let bad = || Error::Forward(s.to_string());
    let (rest, g) = s.rsplit_once(':').ok_or_else(bad)?;
    let (addr, h) = match rest.rsplit_once(':') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let addr = match addr {
        None => Ipv4Addr::LOCALHOST,
        Some(a) if a.starts_with('[') || a.contains(':') => {
            return Err(Error::ForwardV6(s.to_string()))
        }
        Some(a) => a.parse().map_err(|_| bad())?,
    };
    let host: u16 = h.parse().map_err(|_| bad())?;
    let guest: u16 = g.parse().map_err(|_| bad())?;
    if host == 0 || guest == 0 {
        return Err(bad());
    }
    Ok(Forward { addr, host, guest })
}

/// Everything QEMU is told about one VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    pub name: String,
    pub uuid: String,
    pub cpus: u32,
    pub memory: MemorySize,
    pub accel: Accel,
    pub boot: Boot,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
    pub hotplug_ports: u8,
}

/// Files QEMU creates for a VM, all in its private directory.
#[derive(Clone, Debug)]
pub struct RunFiles {
    pub qmp: PathBuf,
    pub pidfile: PathBuf,
    /// The serial console's log, written by QEMU whoever is attached.
    pub console: PathBuf,
    /// The serial console itself (QEMU listens; the daemon attaches).
    pub console_socket: PathBuf,
    /// The guest agent's channel (QEMU listens; the daemon attaches).
    pub agent: PathBuf,
    /// QEMU's own stdout and stderr: what it says when it fails to start.
    pub stderr: PathBuf,
}

impl RunFiles {
    pub fn in_dir(dir: &Path) -> Self {
        RunFiles {
            qmp: dir.join("qmp.sock"),
            pidfile: dir.join("qemu.pid"),
            console: dir.join("console.log"),
            console_socket: dir.join("console.sock"),
            agent: dir.join("qga.sock"),
            stderr: dir.join("qemu.log"),
        }
    }
}

/// The descriptor number QEMU inherits the `n`th tap NIC (counting taps
/// only, in `nics` order) on.
pub(crate) fn tap_fd(n: usize) -> usize {
    3 + n
}

/// Id of the `n`th free hotplug root port.
pub(crate) fn hotplug_port(n: u8) -> String {
    format!("hp{n}")
}

/// QEMU ids of a disk: (block node, device).
pub(crate) fn disk_ids(id: &str) -> (String, String) {
    (format!("blk-{id}"), format!("disk-{id}"))
}

/// Checks a VM name: DNS-label rules, as LXD does for instance names.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::Name(name.to_string()))
    }
}

/// Device ids share the name rules (they end up in QEMU ids and guest paths).
pub(crate) fn validate_id(id: &str) -> Result<(), Error> {
    validate_name(id).map_err(|_| Error::Value {
        what: "device id",
        value: id.to_string(),
    })
}

fn validate_uuid(u: &str) -> Result<(), Error> {
    let groups: Vec<&str> = u.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    let ok = groups.len() == 5
        && groups.iter().zip(lens).all(|(g, l)| {
            g.len() == l
                && g.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Uuid(u.to_string()))
    }
}

fn validate_mac(what: &'static str, mac: &str) -> Result<(), Error> {
    let parts: Vec<&str> = mac.split(':').collect();
    if parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        Ok(())
    } else {
        Err(Error::Value {
            what,
            value: mac.to_string(),
        })
    }
}

/// A path that goes into a QEMU option: absolute, valid UTF-8, no control
/// characters; commas are escaped by [`opt_path`].
pub(crate) fn validate_path(what: &'static str, p: &Path) -> Result<String, Error> {
    let bad = |why| Error::Path {
        what,
        path: p.to_path_buf(),
        why,
    };
    let s = p.to_str().ok_or_else(|| bad("not UTF-8"))?;
    if !p.is_absolute() {
        return Err(bad("not absolute"));
    }
    if s.chars().any(char::is_control) {
        return Err(bad("contains control characters"));
    }
    Ok(s.to_string())
}

/// QEMU's option syntax splits on commas; a literal comma is doubled.
fn opt_path(s: &str) -> String {
    s.replace(',', ",,")
}

/// Checks the whole description; the command line is built only from a
/// description that passed.
pub(crate) fn validate(cfg: &VmConfig) -> Result<(), Error> {
    validate_name(&cfg.name)?;
    validate_uuid(&cfg.uuid)?;
    if !(1..=MAX_CPUS).contains(&cfg.cpus) {
        return Err(Error::Cpus(cfg.cpus));
    }
    if let Boot::Kernel {
        kernel,
        initrd,
        cmdline,
    } = &cfg.boot
    {
        validate_path("kernel", kernel)?;
        if let Some(i) = initrd {
            validate_path("initrd", i)?;
        }
        if cmdline.chars().any(char::is_control) {
            return Err(Error::Value {
                what: "kernel command line",
                value: cmdline.clone(),
            });
        }
    }
    if matches!(cfg.boot, Boot::Disk) && cfg.disks.is_empty() {
        return Err(Error::Value {
            what: "boot",
            value: "disk boot with no disk".into(),
        });
    }
    let mut ids = Vec::new();
    for d in &cfg.disks {
        validate_id(&d.id)?;
        validate_path("disk", &d.path)?;
        ids.push(d.id.as_str());
    }
    for n in &cfg.nics {
        let (id, mac) = match n {
            Nic::User { id, mac, .. } => (id, mac),
            Nic::Tap { id, mac, ifname } => {
                let ok = (1..16).contains(&ifname.len())
                    && ifname
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
                if !ok {
                    return Err(Error::Value {
                        what: "tap interface name",
                        value: ifname.clone(),
                    });
                }
                (id, mac)
            }
        };
        validate_id(id)?;
        if let Some(m) = mac {
            validate_mac("MAC address", m)?;
        }
        ids.push(id.as_str());
    }
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w.first() == w.get(1)) {
        return Err(Error::DuplicateId(
            w.first().copied().unwrap_or_default().to_string(),
        ));
    }
    Ok(())
}

/// The argv (without the program) that starts `cfg` with its run files in
/// `files`.
pub fn command_line(cfg: &VmConfig, files: &RunFiles) -> Result<Vec<OsString>, Error> {
    validate(cfg)?;
    let qmp = validate_path("QMP socket", &files.qmp)?;
    let pidfile = validate_path("pid file", &files.pidfile)?;
    let console = validate_path("console log", &files.console)?;
    let console_socket = validate_path("console socket", &files.console_socket)?;
    let agent = validate_path("guest agent socket", &files.agent)?;
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| (*s).to_string()));
    push(&["-name", &format!("guest={},debug-threads=on", cfg.name)]);
    push(&["-uuid", &cfg.uuid]);
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    push(&["-machine", "q35"]);
    match cfg.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&["-accel", "tcg"]),
    }
    push(&[
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]);
    push(&["-m", &format!("{}M", cfg.memory.bytes() >> 20)]);
    push(&["-smp", &cfg.cpus.to_string()]);
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", opt_path(&qmp)),
    ]);
    push(&["-pidfile", &pidfile]);
    // The serial console: a socket the daemon attaches to, which also logs
    // everything the guest writes, attached or not (logappend: QEMU then
    // writes with O_APPEND, so the daemon can trim the log under it).
    push(&[
        "-chardev",
        &format!(
            "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
            opt_path(&console_socket),
            opt_path(&console)
        ),
    ]);
    push(&["-serial", "chardev:serial0"]);
    // The guest agent's channel: the virtio-serial port name qemu-ga looks for.
    push(&[
        "-chardev",
        &format!(
            "socket,id=qga0,path={},server=on,wait=off",
            opt_path(&agent)
        ),
    ]);
    push(&["-device", "virtio-serial-pci,id=vser0"]);
    push(&[
        "-device",
        "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
    ]);
    // Entropy from the host, as LXD gives it: a guest gathers its own
    // slowly (very slowly under TCG on a busy host), and its boot waits
    // for it in getrandom (systemd, cloud-init, sshd's keys).
    push(&["-object", "rng-random,id=rng0,filename=/dev/urandom"]);
    push(&["-device", "virtio-rng-pci,rng=rng0"]);
    push(&["-msg", "timestamp=on"]);
    match &cfg.boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            push(&["-kernel", &validate_path("kernel", kernel)?]);
            if let Some(i) = initrd {
                push(&["-initrd", &validate_path("initrd", i)?]);
            }
            push(&["-append", cmdline]);
        }
        Boot::Disk => {}
    }
    for (i, d) in cfg.disks.iter().enumerate() {
        let (node, dev) = disk_ids(&d.id);
        let path = validate_path("disk", &d.path)?;
        push(&[
            "-blockdev",
            &format!(
                "driver={},node-name={node},read-only={},file.driver=file,file.filename={}",
                d.format.driver(),
                if d.read_only { "on" } else { "off" },
                opt_path(&path)
            ),
        ]);
        let boot = if i == 0 && matches!(cfg.boot, Boot::Disk) {
            ",bootindex=0"
        } else {
            ""
        };
        push(&[
            "-device",
            &format!("virtio-blk-pci,id={dev},drive={node}{boot}"),
        ]);
    }
    let mut taps = 0;
    for n in &cfg.nics {
        let (id, mac, netdev) = match n {
            Nic::User { id, mac, forwards } => {
                let fwd: String = forwards
                    .iter()
                    .map(|f| format!(",hostfwd=tcp:{}:{}-:{}", f.addr, f.host, f.guest))
                    .collect();
                (id, mac, format!("user,id=net-{id}{fwd}"))
            }
            Nic::Tap { id, mac, .. } => {
                let fd = tap_fd(taps);
                taps += 1;
                (id, mac, format!("tap,id=net-{id},fd={fd}"))
            }
        };
        push(&["-netdev", &netdev]);
        // No option ROM: direct kernel boot does not need iPXE, and QEMU
        // then opens no extra file.
        let mac = mac
            .as_ref()
            .map(|m| format!(",mac={m}"))
            .unwrap_or_default();
        push(&[
            "-device",
            &format!("virtio-net-pci,id=nic-{id},netdev=net-{id},romfile={mac}"),
        ]);
    }
    for n in 0..cfg.hotplug_ports {
        let chassis = u32::from(n) + 1;
        push(&[
            "-device",
            &format!(
                "pcie-root-port,id={},chassis={chassis},bus=pcie.0",
                hotplug_port(n)
            ),
        ]);
    }
    Ok(a.into_iter().map(OsString::from).collect())
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a failed test should panic"
)]
mod tests {
    use super::*;

    fn cfg() -> VmConfig {
        VmConfig {
            name: "web1".into(),
            uuid: "0b5c6c6e-2a4f-4d8e-9f57-3f4d0a1b2c3d".into(),
            cpus: 2,
            memory: "256MiB".parse().unwrap(),
            accel: Accel::Tcg,
            boot: Boot::Kernel {
                kernel: "/k/vmlinuz".into(),
                initrd: Some("/k/initrd.gz".into()),
                cmdline: "console=ttyS0".into(),
            },
            disks: vec![],
            nics: vec![],
            hotplug_ports: 2,
        }
    }

    fn argv(c: &VmConfig) -> Vec<String> {
        let files = RunFiles::in_dir(Path::new("/run/vm,1"));
        command_line(c, &files)
            .unwrap()
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    fn after<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn memory_sizes() {
        assert_eq!("256MiB".parse::<MemorySize>().unwrap().bytes(), 256 << 20);
        assert_eq!("1GiB".parse::<MemorySize>().unwrap().bytes(), 1 << 30);
        assert_eq!("2G".parse::<MemorySize>().unwrap().bytes(), 2 << 30);
        assert_eq!("1GB".parse::<MemorySize>().unwrap().bytes(), 953 << 20);
        assert_eq!("1024MB".parse::<MemorySize>().unwrap().bytes(), 976 << 20);
        for bad in [
            "",
            "MiB",
            "12 parsecs",
            "-1GiB",
            "1.5GiB",
            "99999999999999999999GiB",
        ] {
            assert!(
                matches!(bad.parse::<MemorySize>(), Err(Error::MemorySyntax(_))),
                "{bad}"
            );
        }
        for out in ["1MiB", "16MiB", "2TiB"] {
            assert!(
                matches!(out.parse::<MemorySize>(), Err(Error::MemoryRange(_))),
                "{out}"
            );
        }
        assert_eq!(MemorySize::from_mib(512).unwrap().to_string(), "512MiB");
    }

    #[test]
    fn base_line_is_locked_down() {
        let a = argv(&cfg());
        for f in ["-nodefaults", "-no-user-config"] {
            assert!(a.iter().any(|x| x == f), "{f}");
        }
        assert_eq!(after(&a, "-machine"), ["q35"]);
        assert_eq!(after(&a, "-accel"), ["tcg"]);
        assert_eq!(after(&a, "-display"), ["none"]);
        assert_eq!(
            after(&a, "-sandbox"),
            ["on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
        );
        assert_eq!(after(&a, "-m"), ["256M"]);
        assert_eq!(after(&a, "-smp"), ["2"]);
        // The comma in the directory name is doubled inside options.
        assert_eq!(
            after(&a, "-qmp"),
            ["unix:/run/vm,,1/qmp.sock,server=on,wait=off"]
        );
        assert_eq!(after(&a, "-pidfile"), ["/run/vm,1/qemu.pid"]);
        assert_eq!(
            after(&a, "-chardev"),
            [
                "socket,id=serial0,path=/run/vm,,1/console.sock,server=on,wait=off,\
                 logfile=/run/vm,,1/console.log,logappend=on",
                "socket,id=qga0,path=/run/vm,,1/qga.sock,server=on,wait=off",
            ]
        );
        assert_eq!(
            after(&a, "-object"),
            ["rng-random,id=rng0,filename=/dev/urandom"]
        );
        assert_eq!(after(&a, "-kernel"), ["/k/vmlinuz"]);
        assert_eq!(after(&a, "-initrd"), ["/k/initrd.gz"]);
        assert_eq!(after(&a, "-append"), ["console=ttyS0"]);
        assert_eq!(
            after(&a, "-device"),
            [
                "virtio-serial-pci,id=vser0",
                "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
                "virtio-rng-pci,rng=rng0",
                "pcie-root-port,id=hp0,chassis=1,bus=pcie.0",
                "pcie-root-port,id=hp1,chassis=2,bus=pcie.0"
            ]
        );
    }

    #[test]
    fn kvm_uses_the_host_cpu() {
        let mut c = cfg();
        c.accel = Accel::Kvm;
        let a = argv(&c);
        assert_eq!(after(&a, "-accel"), ["kvm"]);
        assert_eq!(after(&a, "-cpu"), ["host"]);
    }

    #[test]
    fn disks_and_nics() {
        let mut c = cfg();
        c.boot = Boot::Disk;
        c.hotplug_ports = 0;
        c.disks = vec![
            Disk {
                id: "root".into(),
                path: "/d/root.qcow2".into(),
                format: DiskFormat::Qcow2,
                read_only: false,
            },
            Disk {
                id: "data".into(),
                path: "/d/a,b.img".into(),
                format: DiskFormat::Raw,
                read_only: true,
            },
        ];
        c.nics = vec![
            Nic::User {
                id: "eth0".into(),
                mac: Some("52:54:00:12:34:56".into()),
                forwards: vec![
                    parse_forward("2222:22").unwrap(),
                    parse_forward("0.0.0.0:8080:80").unwrap(),
                ],
            },
            Nic::Tap {
                id: "eth1".into(),
                mac: None,
                ifname: "kvmbox-tap0".into(),
            },
        ];
        let a = argv(&c);
        assert_eq!(
        after(&a, "-blockdev"),
        [
            "driver=qcow2,node-name=blk-root,read-only=off,file.driver=file,file.filename=/d/root.qcow2",
            "driver=raw,node-name=blk-data,read-only=on,file.driver=file,file.filename=/d/a,,b.img",
        ]
    );
        assert_eq!(
            after(&a, "-netdev"),
            [
                "user,id=net-eth0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:0.0.0.0:8080-:80",
                "tap,id=net-eth1,fd=3",
            ]
        );
        assert_eq!(
            after(&a, "-device")[3..],
            [
                "virtio-blk-pci,id=disk-root,drive=blk-root,bootindex=0",
                "virtio-blk-pci,id=disk-data,drive=blk-data",
                "virtio-net-pci,id=nic-eth0,netdev=net-eth0,romfile=,mac=52:54:00:12:34:56",
                "virtio-net-pci,id=nic-eth1,netdev=net-eth1,romfile=",
            ]
        );
        assert!(after(&a, "-kernel").is_empty());
    }

    #[test]
    fn bad_input_is_refused() {
        let mut c = cfg();
        c.cpus = 0;
        assert_eq!(validate(&c), Err(Error::Cpus(0)));
        c.cpus = 256;
        assert_eq!(validate(&c), Err(Error::Cpus(256)));

        for name in ["", "-a", "a-", "Web", "a_b", "a.b", &"x".repeat(64)] {
            let mut c = cfg();
            c.name = name.to_string();
            assert!(matches!(validate(&c), Err(Error::Name(_))), "{name}");
        }
        let mut c = cfg();
        c.uuid = "not-a-uuid".into();
        assert!(matches!(validate(&c), Err(Error::Uuid(_))));

        let mut c = cfg();
        c.boot = Boot::Kernel {
            kernel: "relative/vmlinuz".into(),
            initrd: None,
            cmdline: String::new(),
        };
        assert!(matches!(
            validate(&c),
            Err(Error::Path { what: "kernel", .. })
        ));
        c.boot = Boot::Kernel {
            kernel: "/k\n/x".into(),
            initrd: None,
            cmdline: String::new(),
        };
        assert!(matches!(validate(&c), Err(Error::Path { .. })));
        c.boot = Boot::Kernel {
            kernel: "/k".into(),
            initrd: None,
            cmdline: "a\nb".into(),
        };
        assert!(matches!(validate(&c), Err(Error::Value { .. })));

        let mut c = cfg();
        let d = Disk {
            id: "data".into(),
            path: "/d".into(),
            format: DiskFormat::Raw,
            read_only: false,
        };
        c.disks = vec![d.clone(), d];
        assert_eq!(validate(&c), Err(Error::DuplicateId("data".into())));

        let mut c = cfg();
        c.nics = vec![Nic::Tap {
            id: "eth0".into(),
            mac: None,
            ifname: "br0,script=/x".into(),
        }];
        assert!(matches!(validate(&c), Err(Error::Value { .. })));
        c.nics = vec![Nic::User {
            id: "eth0".into(),
            mac: Some("zz".into()),
            forwards: vec![],
        }];
        assert!(matches!(validate(&c), Err(Error::Value { .. })));

        let mut c = cfg();
        c.boot = Boot::Disk;
        assert!(validate(&c).is_err());
    }

    #[test]
    fn forwards() {
        let f = |addr: [u8; 4], host, guest| Forward {
            addr: addr.into(),
            host,
            guest,
        };
        // Loopback unless an address is given.
        assert_eq!(parse_forward("2222:22"), Ok(f([127, 0, 0, 1], 2222, 22)));
        assert_eq!(
            parse_forward("192.0.2.7:8080:80"),
            Ok(f([192, 0, 2, 7], 8080, 80))
        );
        assert_eq!(parse_forward("0.0.0.0:1:2"), Ok(f([0, 0, 0, 0], 1, 2)));
        for bad in [
            "22",
            "0:22",
            "22:0",
            "a:b",
            "70000:1",
            "1:2:3",
            ":1:2",
            "host:1:2",
            "1.2.3.4:5",
        ] {
            assert_eq!(parse_forward(bad), Err(Error::Forward(bad.into())), "{bad}");
        }
        for v6 in ["[::1]:2222:22", "::1:2222:22"] {
            let e = parse_forward(v6).unwrap_err();
            assert!(e.to_string().contains("IPv4 addresses only"), "{e}");
        }
    }
}
