//! cloud-init's NoCloud seed: when an instance has any cloud-init key, a
//! small FAT volume labelled `CIDATA` holding `meta-data`, `user-data`,
//! `vendor-data` and `network-config` is built afresh at each start and
//! given to the guest as a read-only disk (cloud-init finds it by its
//! label). Keys as LXD has them: `cloud-init.user-data`,
//! `cloud-init.vendor-data`, `cloud-init.network-config`, and the older
//! `user.user-data`, `user.vendor-data`, `user.network-config` and
//! `user.meta-data` (appended to the generated `meta-data`).

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::record::Record;
use super::Error;
use crate::store::{write_atomic, Overwrite};

/// The files of the seed, each with the keys that fill it, newest first.
const FILES: &[(&str, &[&str])] = &[
    ("user-data", &["cloud-init.user-data", "user.user-data"]),
    (
        "vendor-data",
        &["cloud-init.vendor-data", "user.vendor-data"],
    ),
    (
        "network-config",
        &["cloud-init.network-config", "user.network-config"],
    ),
];

/// The config keys that make an instance get a seed.
pub(crate) const KEYS: &[&str] = &[
    "cloud-init.user-data",
    "cloud-init.vendor-data",
    "cloud-init.network-config",
];

/// The seed's file name in the instance's directory.
const NAME: &str = "cidata.img";

/// What the seed of `rec` holds: (file name, content), or nothing when it
/// has no cloud-init key.
fn contents(rec: &Record) -> Option<Vec<(&'static str, Vec<u8>)>> {
    let mut files = Vec::new();
    for (file, keys) in FILES {
        if let Some(v) = keys.iter().find_map(|k| rec.config.get(*k)) {
            files.push((*file, v.clone().into_bytes()));
        }
    }
    if files.is_empty() && !rec.config.contains_key("user.meta-data") {
        return None;
    }
    // The uuid, not the name: cloud-init runs its once-per-instance steps
    // again when this changes, and a renamed instance is the same one.
    let mut meta = format!("instance-id: {}\nlocal-hostname: {}\n", rec.uuid, rec.name);
    if let Some(extra) = rec.config.get("user.meta-data") {
        meta.push_str(extra);
        meta.push('\n');
    }
    files.push(("meta-data", meta.into_bytes()));
    Some(files)
}

/// A FAT image holding `files`, labelled `CIDATA`.
fn image(files: &[(&str, Vec<u8>)]) -> std::io::Result<Vec<u8>> {
    let payload: usize = files.iter().map(|(_, c)| c.len()).sum();
    // FAT12 with room to spare for the tables and a cluster per file;
    // rounded to whole 512-byte sectors.
    let size = (payload * 2 + (1 << 20)).div_ceil(512) * 512;
    let mut disk = std::io::Cursor::new(vec![0u8; size]);
    fatfs::format_volume(
        &mut disk,
        fatfs::FormatVolumeOptions::new().volume_label(*b"CIDATA     "),
    )?;
    disk.seek(SeekFrom::Start(0))?;
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())?;
        for (name, content) in files {
            fs.root_dir().create_file(name)?.write_all(content)?;
        }
        fs.unmount()?;
    }
    Ok(disk.into_inner())
}

/// Writes the seed of `rec` into its directory `dir` and returns its path,
/// or removes a stale one and returns nothing when it has no cloud-init
/// key. Written whole under a new name and renamed, so QEMU never sees
/// half a seed, and the daemon never writes through a file its VM's uid
/// may own by now (it owns the seed once the VM started).
pub(crate) fn write(rec: &Record, dir: &Path) -> Result<Option<PathBuf>, Error> {
    let path = dir.join(NAME);
    let Some(files) = contents(rec) else {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::host("remove the old cloud-init seed", e))
            }
            _ => return Ok(None),
        }
    };
    let bytes = image(&files).map_err(|e| Error::host("build the cloud-init seed", e))?;
    write_atomic(&path, &bytes, 0o644, Overwrite::Replace)
        .map_err(|e| Error::host("write the cloud-init seed", e))?;
    Ok(Some(path))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed test should panic")]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::Read;

    fn rec(config: &[(&str, &str)]) -> Record {
        Record {
            name: "vm1".into(),
            uuid: "u-1".into(),
            created_at: 0,
            uid: 1_000_000,
            image: None,
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            devices: BTreeMap::new(),
            pins: BTreeMap::new(),
            snapshots: Vec::new(),
            pending: None,
        }
    }

    /// Reads `name` back from the FAT image at `path`.
    fn read(path: &Path, name: &str) -> String {
        let file = std::fs::File::open(path).unwrap();
        let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label(), "CIDATA");
        let mut out = String::new();
        fs.root_dir()
            .open_file(name)
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn the_seed_holds_each_key_and_newer_keys_win() {
        let dir = tempfile::tempdir().unwrap();
        let r = rec(&[
            ("cloud-init.user-data", "#cloud-config\nruncmd: [true]\n"),
            ("user.user-data", "#cloud-config\nold: true\n"),
            ("user.network-config", "version: 2\n"),
            ("user.meta-data", "public-keys: []"),
        ]);
        let path = write(&r, dir.path()).unwrap().unwrap();
        assert_eq!(read(&path, "user-data"), "#cloud-config\nruncmd: [true]\n");
        assert_eq!(read(&path, "network-config"), "version: 2\n");
        assert_eq!(
            read(&path, "meta-data"),
            "instance-id: u-1\nlocal-hostname: vm1\npublic-keys: []\n"
        );
        let file = std::fs::File::open(&path).unwrap();
        let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new()).unwrap();
        assert!(fs.root_dir().open_file("vendor-data").is_err());
    }

    #[test]
    fn no_key_no_seed_and_a_stale_one_goes() {
        let dir = tempfile::tempdir().unwrap();
        let with = rec(&[("cloud-init.vendor-data", "x")]);
        let path = write(&with, dir.path()).unwrap().unwrap();
        assert!(path.exists());
        assert_eq!(
            write(&rec(&[("limits.cpu", "2")]), dir.path()).unwrap(),
            None
        );
        assert!(!path.exists());
    }

    #[test]
    fn a_large_user_data_fits() {
        let dir = tempfile::tempdir().unwrap();
        let big = "#".repeat(900 * 1024);
        let path = write(&rec(&[("cloud-init.user-data", &big)]), dir.path())
            .unwrap()
            .unwrap();
        assert_eq!(read(&path, "user-data").len(), big.len());
    }
}
