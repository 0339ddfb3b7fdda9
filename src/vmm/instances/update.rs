//! Changing an instance's config and devices, live where it runs: disks are
//! hot-plugged (the AppArmor profile grants them first) and unplugged.

use std::collections::BTreeMap;
use std::time::Duration;

use super::record::{Device, Record};
use super::{current, save, Error, Manager};
use crate::hostfile::Pin;
use crate::log::log;
use crate::vmm::vm;

impl Manager {
    /// Replaces (`replace`) or merges config and devices. On a running VM,
    /// disks added are hot-plugged (profile first) and disks removed are
    /// unplugged; NICs cannot change while it runs; other config applies at
    /// the next start.
    pub(crate) async fn update(
        &self,
        name: &str,
        config: Option<BTreeMap<String, String>>,
        devices: Option<BTreeMap<String, Device>>,
        replace: bool,
        pins: &BTreeMap<String, Pin>,
    ) -> Result<(), Error> {
        let host = self.host()?;
        let e = self.entry(name)?;
        let mut guard = e.vm.lock().await;
        let old = current(&e)?;
        let mut new = old.clone();
        if let Some(c) = config {
            if replace {
                new.config = c;
            } else {
                for (k, v) in c {
                    if v.is_empty() {
                        new.config.remove(&k);
                    } else {
                        new.config.insert(k, v);
                    }
                }
            }
        }
        if let Some(d) = devices {
            if replace {
                new.devices = d;
            } else {
                new.devices.extend(d);
            }
        }
        new.take_pins(&old.pins, pins)?;
        new.validate()?;
        if let Some(vm) = guard.as_mut() {
            let nics = |r: &Record| -> Vec<(String, Device)> {
                r.devices
                    .iter()
                    .filter(|(_, d)| d.get("type").map(String::as_str) != Some("disk"))
                    .map(|(k, d)| (k.clone(), d.clone()))
                    .collect()
            };
            if nics(&old) != nics(&new) || old.devices.get("root") != new.devices.get("root") {
                return Err(Error::Conflict(format!(
                    "instance {name:?} is running: stop it to change its NICs or root disk"
                )));
            }
            let before = old.disks()?;
            let after = new.disks()?;
            for d in &before {
                let same = after.iter().any(|a| a.id == d.id && a.path == d.path);
                if !same {
                    vm.unplug_disk(&d.id, Duration::from_secs(10)).await?;
                    // Saved at once: the VM no longer has it.
                    let mut partial = current(&e)?;
                    partial.devices.remove(&d.id);
                    partial.release_pins(false);
                    save(&partial, &partial.dir(&host.state)).await?;
                    e.view.change(|v| v.record = partial);
                }
            }
            for d in &after {
                if before.iter().any(|b| b.id == d.id && b.path == d.path) {
                    continue;
                }
                if e.view.read(|v| v.seclabel.loaded) {
                    // The profile must grant the disk before QEMU opens it.
                    let mut args = vec![d.path.display().to_string()];
                    if d.read_only {
                        args.push("--readonly".into());
                    }
                    self.helper(&current(&e)?, "add-file", args).await?;
                }
                let dev = new.devices.get(&d.id);
                let source = dev.and_then(|dev| dev.get("source"));
                let pin = source.and_then(|s| new.pins.get(s));
                let (Some(dev), Some(source), Some(pin)) = (dev, source, pin) else {
                    return Err(vm::Error::Unpinned(d.path.clone()).into());
                };
                vm.hotplug_disk(d, pin).await?;
                let mut partial = current(&e)?;
                partial.devices.insert(d.id.clone(), dev.clone());
                partial.pins.insert(source.clone(), pin.clone());
                save(&partial, &partial.dir(&host.state)).await?;
                e.view.change(|v| v.record = partial);
                log!(Info, "instance {name}: disk {} hot-plugged", d.id);
            }
        }
        new.release_pins(false);
        save(&new, &new.dir(&host.state)).await?;
        e.view.change(|v| v.record = new);
        Ok(())
    }
}
