//! What is stored about an instance (`STATE/instances/<name>/instance.json`)
//! and how it becomes a [`VmSpec`]: config keys and devices are checked here,
//! once, so that a record on disk always describes a VM that can be built.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Error;
use crate::hostfile::{Need, Opener, Pin};
use crate::log::log;
use crate::vmm::accel::{Accel, AccelMode};
use crate::vmm::qemu::{self, Boot, Disk, DiskFormat, MemorySize, Nic, RunFiles, VmConfig};
use crate::vmm::vm::{RunAs, VmSpec};

/// Config keys an instance may have (besides `user.*`).
const KEYS: &[&str] = &[
    "limits.cpu",
    "limits.memory",
    "limits.accel",
    "boot.kernel",
    "boot.initrd",
    "boot.cmdline",
    "security.privileged",
    "security.apparmor",
    "snapshots.schedule",
    "snapshots.schedule.stopped",
    "snapshots.pattern",
    "snapshots.expiry",
];
/// The longest config value (cloud-init user-data is the large one).
const MAX_VALUE: usize = 1 << 20;
const DEFAULT_MEMORY: &str = "1GiB";
const DEFAULT_CMDLINE: &str = "console=ttyS0";

use super::snapshot::{Pending, Snapshot};
use super::{schedule, seed};
pub(crate) use crate::wire::Device;

/// The image an instance's root disk overlays.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImageRef {
    pub alias: String,
    pub fingerprint: String,
    pub path: PathBuf,
    /// `raw` or `qcow2`, detected once at import and stated from then on.
    pub format: String,
}

/// An instance as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Record {
    pub name: String,
    pub uuid: String,
    /// Unix seconds.
    pub created_at: u64,
    /// The uid (= gid) its QEMU runs as, taken from `instances.uid_range`
    /// at creation and kept for the instance's life, so its files stay its own.
    pub uid: u32,
    #[serde(default)]
    pub image: Option<ImageRef>,
    pub config: BTreeMap<String, String>,
    pub devices: BTreeMap<String, Device>,
    /// Each disk's source as it was checked when a caller named it, by
    /// `source`: the VM layer hands the file to the VM's uid, and it is
    /// given back when the disk leaves, only through this pin, never by
    /// following the path again.
    #[serde(default)]
    pub pins: BTreeMap<String, Pin>,
    /// Oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<Snapshot>,
    /// A snapshot change under way on the root disk, written before the
    /// disk is touched: a daemon that dies in the middle finishes it when
    /// it starts again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
}

/// `security.apparmor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AaMode {
    Auto,
    Required,
    Off,
}

impl Record {
    /// Reads a stored record. One written before disks were pinned has their
    /// first owners (`disk_owners`: uid, gid, mode by source) instead: each
    /// such disk is pinned now, if its path has no link on the way and the
    /// file belongs to that owner or to the instance's uid; a disk that
    /// cannot be is left without a pin, and the VM then refuses it until it
    /// is added again.
    pub(crate) fn from_json(bytes: &[u8]) -> serde_json::Result<Record> {
        let mut v: serde_json::Value = serde_json::from_slice(bytes)?;
        let legacy = v.as_object_mut().and_then(|o| o.remove("disk_owners"));
        let mut rec: Record = serde_json::from_value(v)?;
        if let Some(owners) = legacy {
            let owners: BTreeMap<String, (u32, u32, u32)> = serde_json::from_value(owners)?;
            rec.pin_legacy(&owners);
        }
        Ok(rec)
    }

    fn pin_legacy(&mut self, owners: &BTreeMap<String, (u32, u32, u32)>) {
        let sources: Vec<String> = self
            .disk_sources()
            .into_iter()
            .filter(|s| !self.pins.contains_key(*s))
            .map(str::to_string)
            .collect();
        for source in sources {
            let path = Path::new(&source);
            let pinned = crate::hostfile::check(path, &Opener::Daemon, Need::Read)
                .ok()
                .map(|(_, pin)| pin)
                .filter(|pin| pin.real == path);
            let Some(mut pin) = pinned else {
                log!(
                    Warn,
                    "instance {}: disk {source} cannot be pinned",
                    self.name
                );
                continue;
            };
            let first = owners.get(&source).copied();
            let first_uid = first.map_or(pin.uid, |(uid, _, _)| uid);
            if pin.uid != first_uid && pin.uid != self.uid {
                log!(
                    Warn,
                    "instance {}: disk {source} has another owner now",
                    self.name
                );
                continue;
            }
            if let Some((uid, gid, mode)) = first {
                (pin.uid, pin.gid, pin.mode) = (uid, gid, mode);
            }
            self.pins.insert(source, pin);
        }
    }

    pub(crate) fn dir(&self, state: &Path) -> PathBuf {
        instance_dir(state, &self.name)
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.config
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub(crate) fn privileged(&self) -> bool {
        self.get("security.privileged") == Some("true")
    }

    pub(crate) fn apparmor(&self) -> AaMode {
        match self.get("security.apparmor") {
            Some("required") => AaMode::Required,
            Some("off") => AaMode::Off,
            _ => AaMode::Auto,
        }
    }

    /// `limits.accel`; `auto` defers to the server's probe.
    pub(crate) fn accel_mode(&self) -> AccelMode {
        self.get("limits.accel")
            .and_then(|a| a.parse().ok())
            .unwrap_or(AccelMode::Auto)
    }

    /// The root overlay, when the instance was made from an image.
    pub(crate) fn root_disk(&self, state: &Path) -> Option<PathBuf> {
        self.image
            .as_ref()
            .map(|_| self.dir(state).join("root.qcow2"))
    }

    /// Disk devices other than the root, by name.
    pub(crate) fn disks(&self) -> Result<Vec<Disk>, Error> {
        let mut out = Vec::new();
        for (name, dev) in &self.devices {
            if dev.get("type").map(String::as_str) != Some("disk") || dev.contains_key("path") {
                continue;
            }
            let mut disk = disk_of(name, dev)?;
            if let Some(pin) = dev.get("source").and_then(|s| self.pins.get(s)) {
                disk.path.clone_from(&pin.real);
            }
            out.push(disk);
        }
        Ok(out)
    }

    /// The `source` of every disk device but the root.
    pub(crate) fn disk_sources(&self) -> Vec<&str> {
        self.devices
            .values()
            .filter(|d| d.get("type").map(String::as_str) == Some("disk"))
            .filter(|d| !d.contains_key("path"))
            .filter_map(|d| d.get("source").map(String::as_str))
            .collect()
    }

    /// Bridged NICs: (tap the daemon creates, (device, bridge)). The tap is
    /// named after the instance (`kb` + 8 hex digits of its UUID + the NIC's
    /// position) unless the device gives `host_name`.
    pub(crate) fn bridged(&self) -> Vec<(String, (String, String))> {
        let short: String = self
            .uuid
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(8)
            .collect();
        self.devices
            .iter()
            .filter(|(_, d)| d.get("type").map(String::as_str) == Some("nic"))
            .enumerate()
            .filter(|(_, (_, d))| d.get("nictype").map(String::as_str) == Some("bridged"))
            .map(|(i, (name, d))| {
                let tap = d
                    .get("host_name")
                    .cloned()
                    .unwrap_or_else(|| format!("kb{short}n{i}"));
                let parent = d.get("parent").cloned().unwrap_or_default();
                (tap, (name.clone(), parent))
            })
            .collect()
    }

    /// Takes the pin of every disk source from `old` (a source already in
    /// use keeps the pin it was checked with) or else `checked` (what the
    /// API checked for this change); a source with neither is refused.
    pub(crate) fn take_pins(
        &mut self,
        old: &BTreeMap<String, Pin>,
        checked: &BTreeMap<String, Pin>,
    ) -> Result<(), Error> {
        let mut pins = BTreeMap::new();
        for source in self.disk_sources() {
            let pin = old
                .get(source)
                .or_else(|| checked.get(source))
                .ok_or_else(|| {
                    Error::Invalid(format!("disk {source} was not checked for this caller"))
                })?;
            pins.insert(source.to_string(), pin.clone());
        }
        // Pins of sources this record drops stay until `release_pins`.
        for (k, v) in old {
            pins.entry(k.clone()).or_insert_with(|| v.clone());
        }
        self.pins = pins;
        Ok(())
    }

    /// Gives every disk back to the owner and mode it had, keeping the
    /// pins: a VM holds its disks only while its QEMU runs, and takes them
    /// again at its next start.
    pub(crate) fn give_disks_back(&self) {
        for (source, pin) in &self.pins {
            if let Err(e) = pin.give_back(self.uid) {
                log!(
                    Warn,
                    "instance {}: not giving {source} back: {}",
                    self.name,
                    crate::error_chain(&e)
                );
            }
        }
    }

    /// Gives the disks this record no longer uses (all of them with `all`)
    /// back to the owners they had, through their pins, and forgets them.
    pub(crate) fn release_pins(&mut self, all: bool) {
        let used: Vec<String> = if all {
            Vec::new()
        } else {
            self.disk_sources()
                .into_iter()
                .map(str::to_string)
                .collect()
        };
        let gone: Vec<String> = self
            .pins
            .keys()
            .filter(|k| !used.contains(k))
            .cloned()
            .collect();
        for source in gone {
            if let Some(pin) = self.pins.remove(&source) {
                if let Err(e) = pin.give_back(self.uid) {
                    log!(
                        Warn,
                        "instance {}: not giving {source} back: {}",
                        self.name,
                        crate::error_chain(&e)
                    );
                }
            }
        }
    }

    /// Checks config keys and devices; every error names what is wrong.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        qemu::validate_name(&self.name)?;
        for (k, v) in &self.config {
            check_config(k, v)?;
            if (k == "boot.kernel" || k == "boot.initrd") && !v.is_empty() {
                require_file(k, Path::new(v))?;
            }
        }
        if self.get("boot.kernel").is_none()
            && (self.get("boot.initrd").is_some() || self.get("boot.cmdline").is_some())
        {
            return Err(Error::Invalid(
                "boot.initrd and boot.cmdline need boot.kernel".into(),
            ));
        }
        for (name, dev) in &self.devices {
            check_device(name, dev)?;
            match dev.get("type").map(String::as_str) {
                Some("disk")
                    if dev.get("path").map(String::as_str) == Some("/") && self.image.is_none() =>
                {
                    return Err(Error::Invalid(format!(
                        "device {name}: a root disk needs an image"
                    )));
                }
                Some("disk") if dev.get("path").map(String::as_str) == Some("/") => {}
                Some("disk") => {
                    let d = disk_of(name, dev)?;
                    require_file(&format!("device {name}"), &d.path)?;
                }
                _ => {}
            }
        }
        if self.get("boot.kernel").is_none() && self.image.is_none() {
            return Err(Error::Invalid(
                "nothing to boot: give an image or boot.kernel (--kernel)".into(),
            ));
        }
        Ok(())
    }

    /// The VM this record describes, run as `identity` with `accel`.
    pub(crate) fn spec(&self, state: &Path, run_as: RunAs, accel: Accel) -> Result<VmSpec, Error> {
        self.validate()?;
        let cpus = self
            .get("limits.cpu")
            .map_or(Ok(1), str::parse)
            .map_err(|_| Error::Invalid("invalid limits.cpu".into()))?;
        let memory: MemorySize = self
            .get("limits.memory")
            .unwrap_or(DEFAULT_MEMORY)
            .parse()?;
        let boot = match self.get("boot.kernel") {
            Some(k) => Boot::Kernel {
                kernel: k.into(),
                initrd: self.get("boot.initrd").map(PathBuf::from),
                cmdline: self
                    .get("boot.cmdline")
                    .unwrap_or(DEFAULT_CMDLINE)
                    .to_string(),
            },
            None => Boot::Disk,
        };
        let mut disks = Vec::new();
        let mut pins: Vec<Pin> = self.pins.values().cloned().collect();
        if let Some(root) = self.root_disk(state) {
            // The daemon's own file, pinned like any other disk so that the
            // VM layer hands out nothing by path.
            let (_, pin) = crate::hostfile::check(&root, &Opener::Daemon, Need::Read)?;
            pins.push(pin);
            disks.push(Disk {
                id: "root".into(),
                path: root,
                format: DiskFormat::Qcow2,
                read_only: false,
            });
        }
        if let Some(seed) = seed::write(self, &self.dir(state))? {
            let (_, pin) = crate::hostfile::check(&seed, &Opener::Daemon, Need::Read)?;
            pins.push(pin);
            disks.push(Disk {
                id: "cidata".into(),
                path: seed,
                format: DiskFormat::Raw,
                read_only: true,
            });
        }
        disks.extend(self.disks()?);
        let mut nics = Vec::new();
        for (name, dev) in &self.devices {
            if dev.get("type").map(String::as_str) == Some("nic") {
                nics.push(nic_of(name, dev)?);
            }
        }
        let bridged = self.bridged();
        for nic in &mut nics {
            if let Nic::Tap { id, ifname, .. } = nic {
                if let Some((tap, _)) = bridged.iter().find(|(_, (dev, _))| dev == id) {
                    ifname.clone_from(tap);
                }
            }
        }
        let config = VmConfig {
            name: self.name.clone(),
            uuid: self.uuid.clone(),
            cpus,
            memory,
            accel,
            boot,
            disks,
            nics,
            hotplug_ports: qemu::DEFAULT_HOTPLUG_PORTS,
        };
        let dir = self.dir(state).join("vm");
        qemu::command_line(&config, &RunFiles::in_dir(&dir.join("qemu")))?;
        Ok(VmSpec {
            config,
            dir,
            qemu: PathBuf::from(format!("qemu-system-{}", std::env::consts::ARCH)),
            run_as,
            pins,
            apparmor: None,
            start_timeout: Duration::from_secs(30),
        })
    }
}

pub(crate) fn instance_dir(state: &Path, name: &str) -> PathBuf {
    state.join("instances").join(name)
}

fn require_file(what: &str, p: &Path) -> Result<(), Error> {
    if !p.is_absolute() {
        return Err(Error::Invalid(format!(
            "{what}: {} is not an absolute path",
            p.display()
        )));
    }
    if !p.is_file() {
        return Err(Error::Invalid(format!(
            "{what}: {} does not exist or is not a file",
            p.display()
        )));
    }
    Ok(())
}

/// Checks one config key and its value without looking at the host (what
/// a client can check before it sends anything; files are checked at create).
pub(crate) fn check_config(k: &str, v: &str) -> Result<(), Error> {
    if !KEYS.contains(&k) && !seed::KEYS.contains(&k) && !k.starts_with("user.") {
        return Err(Error::Invalid(format!("unknown configuration key {k:?}")));
    }
    // The record keeps every value and the seed is a small disk.
    if v.len() > MAX_VALUE {
        return Err(Error::Invalid(format!(
            "the value of {k} is {} bytes, more than {MAX_VALUE}",
            v.len()
        )));
    }
    let bad = |why: &str| Error::Invalid(format!("invalid value {v:?} for {k}: {why}"));
    match k {
        "limits.cpu" => {
            v.parse::<u32>().map_err(|_| bad("expected a number"))?;
        }
        "limits.memory" => {
            v.parse::<MemorySize>().map_err(Error::Memory)?;
        }
        "limits.accel" => {
            v.parse::<AccelMode>().map_err(Error::Accel)?;
        }
        "security.privileged" if !["true", "false", ""].contains(&v) => {
            return Err(bad("expected true or false"));
        }
        "security.apparmor" if !["auto", "required", "off", ""].contains(&v) => {
            return Err(bad("expected auto, required or off"));
        }
        "snapshots.schedule" => {
            schedule::Schedule::parse(v)?;
        }
        "snapshots.schedule.stopped" if !["true", "false", ""].contains(&v) => {
            return Err(bad("expected true or false"));
        }
        // As the next snapshot would be dated: one that could never be
        // taken is refused now, not at every snapshot.
        "snapshots.expiry" => {
            schedule::expiry(v, crate::clock::now())?;
        }
        "snapshots.pattern" if !v.is_empty() => {
            schedule::check_pattern(v, super::snapshot::check_name)?;
        }
        _ => {}
    }
    Ok(())
}

/// Checks one device's name, type and properties without looking at the host.
pub(crate) fn check_device(name: &str, dev: &Device) -> Result<(), Error> {
    qemu::validate_id(name)?;
    match dev.get("type").map(String::as_str) {
        Some("disk") if dev.get("path").map(String::as_str) == Some("/") => Ok(()),
        Some("disk") => disk_of(name, dev).map(|_| ()),
        Some("nic") => nic_of(name, dev).map(|_| ()),
        other => Err(Error::Invalid(format!(
            "device {name}: unsupported type {:?} (disk or nic)",
            other.unwrap_or_default()
        ))),
    }
}

/// A disk device: `source` (absolute path), `format` raw (default) or
/// qcow2, `readonly` true/false.
pub(crate) fn disk_of(name: &str, dev: &Device) -> Result<Disk, Error> {
    let bad = |why: String| Error::Invalid(format!("device {name}: {why}"));
    for k in dev.keys() {
        if !["type", "source", "format", "readonly"].contains(&k.as_str()) {
            return Err(bad(format!("unknown disk property {k:?}")));
        }
    }
    let source = dev
        .get("source")
        .ok_or_else(|| bad("a disk needs source=PATH".into()))?;
    let format = match dev.get("format").map(String::as_str) {
        None | Some("raw") => DiskFormat::Raw,
        Some("qcow2") => DiskFormat::Qcow2,
        Some(f) => return Err(bad(format!("format {f:?} is not raw or qcow2"))),
    };
    let read_only = match dev.get("readonly").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => return Err(bad(format!("readonly={v:?} is not true or false"))),
    };
    Ok(Disk {
        id: name.to_string(),
        path: PathBuf::from(source),
        format,
        read_only,
    })
}

/// A NIC device: `nictype` user (NAT, `forward=H:G,H:G`), bridged
/// (`parent=BRIDGE`: the daemon makes a tap on it) or tap (`host_name`, an
/// existing tap already on its bridge).
fn nic_of(name: &str, dev: &Device) -> Result<Nic, Error> {
    let bad = |why: String| Error::Invalid(format!("device {name}: {why}"));
    let mac = dev.get("hwaddr").cloned();
    match dev.get("nictype").map(String::as_str) {
        None | Some("user") => {
            let forwards = match dev.get("forward") {
                Some(f) if !f.is_empty() => f
                    .split(',')
                    .map(qemu::parse_forward)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|source| Error::Device {
                        name: name.to_string(),
                        source,
                    })?,
                _ => Vec::new(),
            };
            Ok(Nic::User {
                id: name.into(),
                mac,
                forwards,
            })
        }
        Some("tap") => Ok(Nic::Tap {
            id: name.into(),
            mac,
            ifname: dev
                .get("host_name")
                .cloned()
                .ok_or_else(|| bad("a tap NIC needs host_name=TAP".into()))?,
        }),
        Some("bridged") => {
            let parent = dev
                .get("parent")
                .filter(|p| {
                    (1..16).contains(&p.len())
                        && p.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                })
                .ok_or_else(|| bad("a bridged NIC needs parent=BRIDGE".into()))?;
            let _ = parent;
            Ok(Nic::Tap {
                id: name.into(),
                mac,
                // Replaced by the instance's own tap name in `spec`.
                ifname: dev.get("host_name").cloned().unwrap_or_else(|| "kb".into()),
            })
        }
        Some(t) => Err(bad(format!("nictype {t:?} is not user, bridged or tap"))),
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a failed test should panic"
)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            name: "vm1".into(),
            uuid: crate::uuid::new(),
            created_at: 0,
            uid: 1_000_000,
            image: None,
            config: BTreeMap::new(),
            devices: BTreeMap::new(),
            pins: BTreeMap::new(),
            snapshots: Vec::new(),
            pending: None,
        }
    }

    #[test]
    fn bad_config_is_refused_with_its_reason() {
        let mut r = record();
        let e = r.validate().unwrap_err().to_string();
        assert!(e.contains("nothing to boot"), "{e}");
        r.config
            .insert("boot.kernel".into(), "/nonexistent/vmlinuz".into());
        let e = r.validate().unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        r.config
            .insert("boot.kernel".into(), "/proc/self/exe".into());
        r.validate().unwrap();
        r.config.insert("limits.memory".into(), "12 bananas".into());
        let e = r.validate().unwrap_err().to_string();
        assert!(e.contains("limits.memory"), "{e}");
        r.config.remove("limits.memory");
        r.config.insert("limits.nope".into(), "1".into());
        assert!(r.validate().is_err());
        r.config.remove("limits.nope");
        let mut dev = Device::new();
        dev.insert("type".into(), "disk".into());
        r.devices.insert("data".into(), dev);
        let e = r.validate().unwrap_err().to_string();
        assert!(e.contains("source=PATH"), "{e}");
    }

    #[test]
    fn a_record_from_before_pins_has_its_disks_pinned_or_refused() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("disk.img");
        std::fs::write(&disk, b"disk").unwrap();
        let link = d.path().join("link.img");
        std::os::unix::fs::symlink(&disk, &link).unwrap();
        let mut r = record();
        for (name, path) in [("a", &disk), ("b", &link)] {
            let mut dev = Device::new();
            dev.insert("type".into(), "disk".into());
            dev.insert("source".into(), path.display().to_string());
            r.devices.insert(name.into(), dev);
        }
        let mut v = serde_json::to_value(&r).unwrap();
        let owners = serde_json::json!({
            disk.display().to_string(): [crate::sys::euid(), 7, 0o640],
            link.display().to_string(): [crate::sys::euid(), 7, 0o640],
        });
        v.as_object_mut().unwrap().remove("pins");
        v.as_object_mut()
            .unwrap()
            .insert("disk_owners".into(), owners);
        let old = serde_json::to_vec(&v).unwrap();
        let back = Record::from_json(&old).unwrap();
        let pin = &back.pins[&disk.display().to_string()];
        assert_eq!((pin.gid, pin.mode), (7, 0o640), "the first owner is kept");
        assert!(
            !back.pins.contains_key(&link.display().to_string()),
            "a path through a link is not pinned after the fact"
        );
        assert!(Record::from_json(b"{\"disk_owners\": 1}").is_err());
    }
}
