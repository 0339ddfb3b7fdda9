//! The image store, `STATE/images/`: disk images named by their
//! fingerprint, each with a small JSON record (format, size, properties),
//! and one table of aliases, `aliases.json`, each naming an image by its
//! fingerprint. The format is detected once, at import, by `qemu-img info`
//! and stated explicitly from then on (a raw image whose guest writes a
//! qcow2 header must never be read as qcow2).
//!
//! Images stored before aliases had a table of their own name their one
//! alias in their record: until the table is first written, those are the
//! aliases; the first write takes them in.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::record::ImageRef;
use super::Error;
use crate::store::{write_atomic, Overwrite};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Image {
    /// The one alias of a record written before the alias table.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub alias: String,
    pub fingerprint: String,
    pub format: String,
    pub size: u64,
    pub created_at: u64,
    /// LXD's name of the architecture it is for (empty: the host's).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub architecture: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// The name of the file it was uploaded as, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub filename: String,
    /// Its aliases, from the alias table (not stored in the record).
    #[serde(skip)]
    pub aliases: Vec<(String, String)>,
}

/// The alias table: each alias's image (by fingerprint), and the
/// descriptions of those that have one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Aliases {
    pub targets: BTreeMap<String, String>,
    #[serde(default)]
    pub descriptions: BTreeMap<String, String>,
}

impl Aliases {
    fn remove(&mut self, name: &str) -> Option<String> {
        self.descriptions.remove(name);
        self.targets.remove(name)
    }
}

/// What a new image is besides its disk: see [`commit`].
#[derive(Clone, Debug, Default)]
pub(crate) struct NewImage {
    /// SHA-256 of what was imported or uploaded, as LXD computes it.
    pub fingerprint: String,
    pub architecture: String,
    pub properties: BTreeMap<String, String>,
    pub filename: String,
    /// Seconds since the epoch; 0: now.
    pub created_at: u64,
    /// Aliases to give it; all are refused if one is taken.
    pub aliases: Vec<String>,
}

fn dir(state: &Path) -> PathBuf {
    state.join("images")
}

fn table_path(state: &Path) -> PathBuf {
    dir(state).join("aliases.json")
}

/// The images' records as stored, without their aliases.
fn records(state: &Path) -> Vec<Image> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir(state)).into_iter().flatten().flatten() {
        let p = e.path();
        let is_record = p.extension().is_some_and(|x| x == "json")
            && p.file_stem().is_some_and(|f| f != "aliases");
        if is_record {
            if let Some(img) = fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice::<Image>(&b).ok())
            {
                out.push(img);
            }
        }
    }
    out
}

/// The alias table: the file once it exists, before that the aliases of
/// the records written before it. Entries whose image is gone (a crash
/// between the steps of a deletion) are left out.
fn table(state: &Path, images: &[Image]) -> Result<Aliases, Error> {
    let mut table: Aliases = match fs::read(table_path(state)) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            Error::host(
                "read the image alias table",
                io::Error::other(e.to_string()),
            )
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Aliases {
            targets: images
                .iter()
                .filter(|i| !i.alias.is_empty())
                .map(|i| (i.alias.clone(), i.fingerprint.clone()))
                .collect(),
            descriptions: BTreeMap::new(),
        },
        Err(e) => return Err(Error::host("read the image alias table", e)),
    };
    let Aliases {
        targets,
        descriptions,
    } = &mut table;
    targets.retain(|_, t| images.iter().any(|i| i.fingerprint == *t));
    descriptions.retain(|n, _| targets.contains_key(n));
    Ok(table)
}

fn write_table(state: &Path, table: &Aliases) -> Result<(), Error> {
    let data = serde_json::to_vec_pretty(table).unwrap_or_default();
    write_atomic(&table_path(state), &data, 0o644, Overwrite::Replace)
        .map_err(|e| Error::host("write the image alias table", e))
}

/// Every image in the store, with its aliases.
pub(crate) fn list(state: &Path) -> Result<Vec<Image>, Error> {
    let mut images = records(state);
    let table = table(state, &images)?;
    for img in &mut images {
        img.aliases = table
            .targets
            .iter()
            .filter(|(_, t)| **t == img.fingerprint)
            .map(|(n, _)| {
                let d = table.descriptions.get(n).cloned().unwrap_or_default();
                (n.clone(), d)
            })
            .collect();
    }
    images.sort_by(|a, b| (&a.aliases, &a.fingerprint).cmp(&(&b.aliases, &b.fingerprint)));
    Ok(images)
}

/// Every alias, by name.
pub(crate) fn aliases(state: &Path) -> Result<Aliases, Error> {
    table(state, &records(state))
}

/// The image called `name` (an alias, or its whole fingerprint).
pub(crate) fn find(state: &Path, name: &str) -> Result<ImageRef, Error> {
    let images = records(state);
    let table = table(state, &images)?;
    let fingerprint = table.targets.get(name).map_or(name, String::as_str);
    images
        .into_iter()
        .find(|i| i.fingerprint == fingerprint)
        .map(|i| ImageRef {
            path: dir(state).join(format!("{}.img", i.fingerprint)),
            alias: name.to_string(),
            fingerprint: i.fingerprint,
            format: i.format,
        })
        .ok_or_else(|| Error::NotFound(format!("image {name:?}")))
}

/// The image whose fingerprint starts with `prefix`: refused when none or
/// more than one does.
pub(crate) fn by_prefix(state: &Path, prefix: &str) -> Result<Image, Error> {
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::NotFound(format!("image {prefix:?}")));
    }
    let mut found = list(state)?
        .into_iter()
        .filter(|i| i.fingerprint.starts_with(prefix));
    match (found.next(), found.next()) {
        (Some(img), None) => Ok(img),
        (None, _) => Err(Error::NotFound(format!("image {prefix:?}"))),
        (Some(_), Some(_)) => Err(Error::Invalid(format!(
            "more than one image's fingerprint starts with {prefix:?}: give more of it"
        ))),
    }
}

/// Removes `img` from the store: its aliases, then its record, then its
/// disk, so that a crash between the steps leaves at worst a disk nobody
/// lists, never a listed image without its disk.
pub(crate) fn remove(state: &Path, img: &Image) -> Result<(), Error> {
    let _serial = crate::rt::lock(&COMMIT);
    let images = records(state);
    let mut t = table(state, &images)?;
    let before = t.targets.len();
    t.targets.retain(|_, f| *f != img.fingerprint);
    if t.targets.len() != before || !table_path(state).exists() {
        write_table(state, &t)?;
    }
    let d = dir(state);
    fs::remove_file(d.join(format!("{}.json", img.fingerprint)))
        .map_err(|e| Error::host("remove the image's record", e))?;
    match fs::remove_file(d.join(format!("{}.img", img.fingerprint))) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(Error::host("remove the image's disk", e))
        }
        _ => Ok(()),
    }
}

/// Removes what imports and removals cut short by a crash leave in the
/// store: temporary copies, and disks without a record (a record is
/// written after its disk and removed before it) that no instance in
/// `used` has as its backing file.
pub(crate) fn tidy(state: &Path, used: &[PathBuf]) {
    let d = dir(state);
    crate::store::sweep(&d);
    for e in fs::read_dir(&d).into_iter().flatten().flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        let orphan = p.extension().is_some_and(|x| x == "img")
            && !p.with_extension("json").exists()
            && !used.contains(&p);
        if name.starts_with(".import-") || orphan {
            crate::log::log!(Info, "removing {}: an unfinished import", p.display());
            let _ = fs::remove_file(&p);
        }
    }
}

/// Checks an alias name: what an instance's image is named by.
fn check_alias(name: &str) -> Result<(), Error> {
    crate::vmm::qemu::validate_name(name)
        .map_err(|_| Error::Invalid(format!("invalid image alias {name:?}: use a DNS label")))
}

/// A change to the alias table, made under the store's lock.
#[derive(Debug)]
pub(crate) enum AliasChange {
    /// A new alias of the image `target` (a fingerprint or a unique
    /// prefix): refused if the name is taken.
    Add {
        name: String,
        target: String,
        description: String,
    },
    Delete {
        name: String,
    },
    /// A new name for an alias: refused if the new one is taken.
    Rename {
        name: String,
        to: String,
    },
    /// A new target or description for an alias; `None` keeps what is.
    Update {
        name: String,
        target: Option<String>,
        description: Option<String>,
    },
}

/// Applies `change` to the alias table. Targets are whole fingerprints of
/// images in the store (or a unique prefix of one).
pub(crate) fn change_alias(state: &Path, change: AliasChange) -> Result<(), Error> {
    let _serial = crate::rt::lock(&COMMIT);
    let images = records(state);
    let mut t = table(state, &images)?;
    let target = |prefix: &str| -> Result<String, Error> {
        let mut found = images
            .iter()
            .filter(|i| !prefix.is_empty() && i.fingerprint.starts_with(prefix));
        match (found.next(), found.next()) {
            (Some(i), None) => Ok(i.fingerprint.clone()),
            (None, _) => Err(Error::NotFound(format!("image {prefix:?}"))),
            (Some(_), Some(_)) => Err(Error::Invalid(format!(
                "more than one image's fingerprint starts with {prefix:?}: give more of it"
            ))),
        }
    };
    let missing = |name: &str| Error::NotFound(format!("image alias {name:?}"));
    match change {
        AliasChange::Add {
            name,
            target: to,
            description,
        } => {
            check_alias(&name)?;
            if t.targets.contains_key(&name) {
                return Err(Error::Exists(format!("image alias {name:?}")));
            }
            t.targets.insert(name.clone(), target(&to)?);
            t.descriptions.insert(name, description);
        }
        AliasChange::Delete { name } => {
            t.remove(&name).ok_or_else(|| missing(&name))?;
        }
        AliasChange::Rename { name, to } => {
            check_alias(&to)?;
            if t.targets.contains_key(&to) {
                return Err(Error::Exists(format!("image alias {to:?}")));
            }
            let description = t.descriptions.get(&name).cloned().unwrap_or_default();
            let fingerprint = t.remove(&name).ok_or_else(|| missing(&name))?;
            t.targets.insert(to.clone(), fingerprint);
            t.descriptions.insert(to, description);
        }
        AliasChange::Update {
            name,
            target: to,
            description,
        } => {
            let to = to.map(|f| target(&f)).transpose()?;
            let a = t.targets.get_mut(&name).ok_or_else(|| missing(&name))?;
            if let Some(to) = to {
                *a = to;
            }
            if let Some(d) = description {
                t.descriptions.insert(name, d);
            }
        }
    }
    write_table(state, &t)
}

/// What `qemu-img info` says about the copy at `path`: (format, another file it refers to — a backing or data file).
/// qemu-img runs as `nobody` when the daemon is root: an image that refers
/// to a device must not have root open it.
fn probe(path: &Path) -> Result<(String, Option<String>), Error> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("qemu-img");
    cmd.args(["info", "--output=json"]).arg(path);
    if crate::sys::euid() == 0 {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    let out = cmd
        .output()
        .map_err(|e| Error::host("run qemu-img (is qemu-utils installed?)", e))?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        let why = why.trim().replace(&path.display().to_string(), "the copy");
        return Err(Error::Invalid(format!(
            "not a disk image qemu-img can read: {why}"
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(Error::ImageInfo)?;
    let format = v
        .get("format")
        .and_then(|f| f.as_str())
        .unwrap_or_default()
        .to_string();
    let other = v
        .get("backing-filename")
        .or_else(|| v.pointer("/format-specific/data/data-file"))
        .and_then(|f| f.as_str())
        .map(str::to_string);
    Ok((format, other))
}

/// The uid and gid qemu-img probes imported images as.
const NOBODY: u32 = 65534;

/// Serialises the last step of imports (alias check, naming, record) and
/// every change to the alias table, so that two imports cannot both take
/// one alias or one fingerprint.
static COMMIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A file in the image store being written (an upload, a copy, a disk
/// taken out of a tarball): a name of its own, removed when this is
/// dropped, whatever happened (after [`commit`] it is a second link to the
/// stored disk).
#[derive(Debug)]
pub(crate) struct Staged(PathBuf);

impl Staged {
    /// A new, empty staged file in the store of `state`, open for writing.
    pub(crate) fn new(state: &Path) -> Result<(Staged, fs::File), Error> {
        let d = dir(state);
        fs::create_dir_all(&d).map_err(|e| Error::host("create the image store", e))?;
        // VMs' uids read images (as backing files) through this directory.
        let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o711));
        let path = d.join(format!(".import-{}", crate::uuid::new()));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::host("create a file in the image store", e))?;
        Ok((Staged(path), file))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// The bytes free in the image store of `state`.
pub(crate) fn free_space(state: &Path) -> Result<u64, Error> {
    let d = dir(state);
    fs::create_dir_all(&d).map_err(|e| Error::host("create the image store", e))?;
    fs::File::open(&d)
        .and_then(|dir| crate::sys::fs::free_space(&dir))
        .map_err(|e| Error::host("measure the image store's free space", e))
}

/// Copies `file` (opened from `source` as the caller, see
/// [`crate::hostfile::check`]) into the store as `alias`. The copy is hashed
/// as it is written, under a name of its own, and only then probed and
/// named, so a half-copied image never appears and nothing the caller can
/// swap is read. An image whose content is there already is refused, and
/// every error path removes only what this import made.
/// `progress(done, total)` is called as the copy goes.
pub(crate) fn import(
    state: &Path,
    file: fs::File,
    source: &Path,
    alias: &str,
    progress: &dyn Fn(u64, u64),
) -> Result<Image, Error> {
    check_alias(alias)?;
    if aliases(state)?.targets.contains_key(alias) {
        return Err(Error::Exists(format!("image alias {alias:?}")));
    }
    // A sparse file of many TiB reads fast: it must not fill the state dir.
    let size = file
        .metadata()
        .map_err(|e| Error::host(format!("read {}", source.display()), e))?
        .len();
    let free = free_space(state)?;
    if size > free {
        return Err(Error::Refused(format!(
            "{}: its {size} bytes do not fit in the {free} bytes free in the image store",
            source.display()
        )));
    }
    let (staged, dst) = Staged::new(state)?;
    let (fingerprint, _) = copy_hashed(file, dst, progress)
        .map_err(|e| Error::host(format!("copy {}", source.display()), e))?;
    let new = NewImage {
        fingerprint,
        aliases: vec![alias.to_string()],
        ..NewImage::default()
    };
    commit(state, &staged, new).map_err(|e| match e {
        Error::Invalid(why) => Error::Invalid(format!("{}: {why}", source.display())),
        e => e,
    })
}

/// Stores the disk written to `disk` (complete, synced) as the image
/// `new` describes: probed by qemu-img (raw or qcow2, referring to no
/// other file), then named by its fingerprint and given its aliases. An
/// image with this fingerprint already stored is refused and left as it
/// is; on any error nothing of the new image stays (`disk` itself goes
/// when it is dropped).
pub(crate) fn commit(state: &Path, disk: &Staged, new: NewImage) -> Result<Image, Error> {
    if new.fingerprint.len() != 64 || !new.fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Invalid(format!(
            "invalid fingerprint {:?}",
            new.fingerprint
        )));
    }
    for a in &new.aliases {
        check_alias(a)?;
    }
    // Backing files are opened by the VMs' uids, and qemu-img probes it
    // as nobody: read-only for everyone.
    fs::set_permissions(disk.path(), fs::Permissions::from_mode(0o444))
        .map_err(|e| Error::host("store the image", e))?;
    let (format, other) = probe(disk.path())?;
    if format != "raw" && format != "qcow2" {
        return Err(Error::Invalid(format!(
            "its format is {format:?}: only raw and qcow2 images can be imported"
        )));
    }
    if let Some(b) = other {
        return Err(Error::Invalid(format!(
            "it refers to another file ({b}): import a flattened image (qemu-img convert)"
        )));
    }
    let size = fs::metadata(disk.path())
        .map_err(|e| Error::host("read the new image", e))?
        .len();
    let _serial = crate::rt::lock(&COMMIT);
    let images = records(state);
    let mut t = table(state, &images)?;
    if images.iter().any(|i| i.fingerprint == new.fingerprint) {
        return Err(Error::Exists(format!(
            "an image with fingerprint {}",
            new.fingerprint
        )));
    }
    if let Some(a) = new.aliases.iter().find(|a| t.targets.contains_key(*a)) {
        return Err(Error::Exists(format!("image alias {a:?}")));
    }
    let d = dir(state);
    let fingerprint = new.fingerprint;
    let img_path = d.join(format!("{fingerprint}.img"));
    // A link, not a rename: it fails rather than replace an image that
    // instances may use as their backing file.
    fs::hard_link(disk.path(), &img_path).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => {
            Error::Exists(format!("an image with fingerprint {fingerprint}"))
        }
        _ => Error::host("store the image", e),
    })?;
    let mut image = Image {
        alias: String::new(),
        fingerprint: fingerprint.clone(),
        format,
        size,
        created_at: match new.created_at {
            0 => crate::clock::now(),
            t => t,
        },
        architecture: new.architecture,
        properties: new.properties,
        filename: new.filename,
        aliases: Vec::new(),
    };
    let meta = serde_json::to_vec_pretty(&image).unwrap_or_default();
    let meta_path = d.join(format!("{fingerprint}.json"));
    let written = write_atomic(&meta_path, &meta, 0o644, Overwrite::Refuse)
        .map_err(|e| Error::host("store the image", e))
        .and_then(|()| {
            if new.aliases.is_empty() {
                return Ok(());
            }
            for a in &new.aliases {
                t.targets.insert(a.clone(), fingerprint.clone());
            }
            write_table(state, &t).inspect_err(|_| {
                let _ = fs::remove_file(&meta_path);
            })
        });
    if let Err(e) = written {
        // The image file is this import's own: it was linked just now.
        let _ = fs::remove_file(&img_path);
        return Err(e);
    }
    image.aliases = new
        .aliases
        .into_iter()
        .map(|a| (a, String::new()))
        .collect();
    Ok(image)
}

/// Copies `src` to `dst`, hashing it: (SHA-256 in hex, size).
fn copy_hashed(
    mut src: fs::File,
    mut dst: fs::File,
    progress: &dyn Fn(u64, u64),
) -> io::Result<(String, u64)> {
    let total = src.metadata()?.len();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = buf.get(..n).unwrap_or_default();
        ctx.update(chunk);
        dst.write_all(chunk)?;
        size += n as u64;
        progress(size, total);
    }
    dst.sync_all()?;
    Ok((crate::pki::hex(ctx.finish().as_ref()), size))
}

/// Stores a disk that `fill` writes into a fresh file of the store (a
/// download): `fill` returns its size once the content is checked, and it
/// is committed as [`import`] commits a copy, probed, under `fingerprint` and
/// `alias`. `size` bytes must fit in the store first. Whatever fails, only
/// the new file goes; an image already stored is never replaced.
pub(crate) fn fetched(
    state: &Path,
    source: &str,
    alias: &str,
    (fingerprint, size): (&str, u64),
    fill: impl FnOnce(&mut fs::File) -> Result<u64, Error>,
) -> Result<Image, Error> {
    check_alias(alias)?;
    if aliases(state)?.targets.contains_key(alias) {
        return Err(Error::Exists(format!("image alias {alias:?}")));
    }
    let free = free_space(state)?;
    if size > free {
        return Err(Error::Refused(format!(
            "{source}: its {size} bytes do not fit in the {free} bytes free in the image store"
        )));
    }
    let (staged, mut f) = Staged::new(state)?;
    fill(&mut f)?;
    f.sync_all()
        .map_err(|e| Error::host("store the image", e))?;
    let new = NewImage {
        fingerprint: fingerprint.into(),
        aliases: vec![alias.to_string()],
        ..NewImage::default()
    };
    commit(state, &staged, new).map_err(|e| match e {
        Error::Invalid(why) => Error::Invalid(format!("{source}: {why}")),
        e => e,
    })
}

/// Makes `overlay` a qcow2 whose backing file is `image`, format stated.
pub(crate) fn overlay(image: &ImageRef, overlay: &Path) -> Result<(), Error> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", &image.format, "-b"])
        .arg(&image.path)
        .arg(overlay)
        .output()
        .map_err(|e| Error::host("run qemu-img (is qemu-utils installed?)", e))?;
    if !out.status.success() {
        return Err(Error::host(
            "create the root disk",
            io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a failed test should panic"
)]
mod tests {
    use super::*;

    /// A state dir that qemu-img, run as `nobody` under root, can read.
    fn state() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    fn staged(state: &Path, data: &[u8]) -> Staged {
        let (s, mut f) = Staged::new(state).unwrap();
        f.write_all(data).unwrap();
        s
    }

    fn new(fp: char, aliases: &[&str]) -> NewImage {
        NewImage {
            fingerprint: fp.to_string().repeat(64),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            ..NewImage::default()
        }
    }

    fn names(state: &Path) -> Vec<String> {
        aliases(state).unwrap().targets.into_keys().collect()
    }

    #[test]
    fn a_record_of_one_alias_is_read_then_taken_into_the_table() {
        let d = state();
        let s = d.path();
        fs::create_dir_all(dir(s)).unwrap();
        let fp = "a".repeat(64);
        let old = format!(
            r#"{{"alias":"old","fingerprint":"{fp}","format":"raw","size":1,"created_at":0}}"#
        );
        fs::write(dir(s).join(format!("{fp}.json")), old).unwrap();
        assert_eq!(names(s), ["old"]);
        assert_eq!(find(s, "old").unwrap().fingerprint, fp);
        let add = AliasChange::Add {
            name: "new".into(),
            target: "aaaa".into(),
            description: "d".into(),
        };
        change_alias(s, add).unwrap();
        assert_eq!(names(s), ["new", "old"]);
        assert_eq!(list(s).unwrap()[0].aliases.len(), 2);
        // Once the table exists, it alone says: a deleted legacy alias
        // stays deleted though the record still names it.
        change_alias(s, AliasChange::Delete { name: "old".into() }).unwrap();
        assert_eq!(names(s), ["new"]);
        assert!(find(s, "old").is_err());
    }

    #[test]
    fn alias_changes_are_checked() {
        let d = state();
        let s = d.path();
        commit(s, &staged(s, &[0; 4096]), new('a', &["one"])).unwrap();
        commit(s, &staged(s, &[1; 4096]), new('b', &["two"])).unwrap();
        let add = |name: &str, target: &str| AliasChange::Add {
            name: name.into(),
            target: target.into(),
            description: String::new(),
        };
        assert!(matches!(
            change_alias(s, add("one", "b")),
            Err(Error::Exists(_))
        ));
        assert!(matches!(
            change_alias(s, add("x", "c")),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            change_alias(s, add("x", "")),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            change_alias(s, add("Not_A_Label", "b")),
            Err(Error::Invalid(_))
        ));
        let rename = |name: &str, to: &str| AliasChange::Rename {
            name: name.into(),
            to: to.into(),
        };
        assert!(matches!(
            change_alias(s, rename("one", "two")),
            Err(Error::Exists(_))
        ));
        assert!(matches!(
            change_alias(s, rename("nope", "x")),
            Err(Error::NotFound(_))
        ));
        change_alias(s, rename("one", "uno")).unwrap();
        let retarget = AliasChange::Update {
            name: "uno".into(),
            target: Some("bb".into()),
            description: Some("moved".into()),
        };
        change_alias(s, retarget).unwrap();
        let t = aliases(s).unwrap();
        assert_eq!(t.targets["uno"], "b".repeat(64));
        assert_eq!(t.descriptions["uno"], "moved");
        assert_eq!(find(s, "uno").unwrap().fingerprint, "b".repeat(64));
        // Removing an image takes its aliases with it.
        remove(s, &by_prefix(s, "b").unwrap()).unwrap();
        assert!(names(s).is_empty());
    }

    #[test]
    fn a_commit_that_fails_leaves_the_store_as_it_was() {
        let d = state();
        let s = d.path();
        let first = staged(s, &[0; 4096]);
        let img = commit(s, &first, new('a', &["one"])).unwrap();
        assert_eq!((img.format.as_str(), img.size), ("raw", 4096));
        drop(first);
        let listing = || {
            let mut v: Vec<String> = fs::read_dir(dir(s))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let stored = listing();
        // The same fingerprint again, an alias taken, a bad fingerprint,
        // a disk that refers to another file.
        let again = commit(s, &staged(s, &[0; 4096]), new('a', &[]));
        assert!(matches!(again, Err(Error::Exists(_))), "{again:?}");
        let taken = commit(s, &staged(s, &[2; 4096]), new('c', &["one"]));
        assert!(matches!(taken, Err(Error::Exists(_))), "{taken:?}");
        let bad = commit(s, &staged(s, &[2; 4096]), new('x', &[]));
        assert!(matches!(bad, Err(Error::Invalid(_))), "{bad:?}");
        let backed = d.path().join("backed.qcow2");
        let made = Command::new("qemu-img")
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "-b",
                "/dev/null",
            ])
            .arg(&backed)
            .status()
            .unwrap();
        assert!(made.success());
        let refers = commit(s, &staged(s, &fs::read(&backed).unwrap()), new('d', &[]));
        assert!(matches!(refers, Err(Error::Invalid(_))), "{refers:?}");
        assert_eq!(listing(), stored);
        assert_eq!(
            fs::read(dir(s).join(format!("{}.img", "a".repeat(64)))).unwrap(),
            [0; 4096]
        );
    }
}
