//! The image store, `STATE/images/`: imported disk images named by their
//! SHA-256, each with a small JSON record (alias, format). The format is
//! detected once, at import, by `qemu-img info` and stated explicitly from
//! then on (a raw image whose guest writes a qcow2 header must never be
//! read as qcow2).

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::record::ImageRef;
use super::Error;
use crate::store::{write_atomic, Overwrite};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Image {
    pub alias: String,
    pub fingerprint: String,
    pub format: String,
    pub size: u64,
    pub created_at: u64,
}

fn dir(state: &Path) -> PathBuf {
    state.join("images")
}

/// Every image in the store.
pub(crate) fn list(state: &Path) -> Vec<Image> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir(state)).into_iter().flatten().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            if let Some(img) = fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice::<Image>(&b).ok())
            {
                out.push(img);
            }
        }
    }
    out.sort_by(|a, b| a.alias.cmp(&b.alias));
    out
}

/// The image called `alias` (or with this fingerprint).
pub(crate) fn find(state: &Path, alias: &str) -> Result<ImageRef, Error> {
    list(state)
        .into_iter()
        .find(|i| i.alias == alias || i.fingerprint == alias)
        .map(|i| ImageRef {
            path: dir(state).join(format!("{}.img", i.fingerprint)),
            alias: i.alias,
            fingerprint: i.fingerprint,
            format: i.format,
        })
        .ok_or_else(|| Error::NotFound(format!("image {alias:?}")))
}

/// The image whose fingerprint starts with `prefix`: refused when none or
/// more than one does.
pub(crate) fn by_prefix(state: &Path, prefix: &str) -> Result<Image, Error> {
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::NotFound(format!("image {prefix:?}")));
    }
    let mut found = list(state)
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

/// Removes `img` from the store: its record first, so that a crash
/// between the two steps leaves at worst a disk nobody lists, never a
/// listed image without its disk.
pub(crate) fn remove(state: &Path, img: &Image) -> Result<(), Error> {
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

/// What `qemu-img info` says about the copy at `path` of the file named
/// `source`: (format, another file it refers to — a backing or data file).
/// qemu-img runs as `nobody` when the daemon is root: an image that refers
/// to a device must not have root open it.
fn probe(path: &Path, source: &Path) -> Result<(String, Option<String>), Error> {
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
            "{} is not a disk image qemu-img can read: {why}",
            source.display()
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

/// Serialises the last step of imports (alias check, naming, record), so
/// that two imports cannot both take one alias or one fingerprint.
static COMMIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
    crate::vmm::qemu::validate_name(alias)
        .map_err(|_| Error::Invalid(format!("invalid image alias {alias:?}: use a DNS label")))?;
    if find(state, alias).is_ok() {
        return Err(Error::Exists(format!("image {alias:?}")));
    }
    let d = dir(state);
    fs::create_dir_all(&d).map_err(|e| Error::host("create the image store", e))?;
    // VMs' uids read images (as backing files) through this directory.
    let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o711));
    // A sparse file of many TiB reads fast: it must not fill the state dir.
    let size = file
        .metadata()
        .map_err(|e| Error::host(format!("read {}", source.display()), e))?
        .len();
    let free = fs::File::open(&d)
        .and_then(|dir| crate::sys::fs::free_space(&dir))
        .map_err(|e| Error::host("measure the image store's free space", e))?;
    if size > free {
        return Err(Error::Refused(format!(
            "{}: its {size} bytes do not fit in the {free} bytes free in the image store",
            source.display()
        )));
    }
    let tmp = d.join(format!(".import-{}", crate::uuid::new()));
    let result = copy_hashed(file, &tmp, progress)
        .map_err(|e| Error::host(format!("copy {}", source.display()), e))
        .and_then(|copied| commit(&d, &tmp, source, alias, copied));
    // Whatever happened, the temporary name goes (after a commit it is a
    // second link to the stored image).
    let _ = fs::remove_file(&tmp);
    result
}

/// Probes the copy at `tmp` and stores it under its fingerprint.
fn commit(
    d: &Path,
    tmp: &Path,
    source: &Path,
    alias: &str,
    (fingerprint, size): (String, u64),
) -> Result<Image, Error> {
    let (format, other) = probe(tmp, source)?;
    let named = |what: String| Error::Invalid(format!("{}: {what}", source.display()));
    if format != "raw" && format != "qcow2" {
        return Err(named(format!(
            "its format is {format:?}: only raw and qcow2 images can be imported"
        )));
    }
    if let Some(b) = other {
        return Err(named(format!(
            "it refers to another file ({b}): import a flattened image (qemu-img convert)"
        )));
    }
    let _serial = crate::rt::lock(&COMMIT);
    let state = d.parent().unwrap_or(d);
    if find(state, alias).is_ok() {
        return Err(Error::Exists(format!("image {alias:?}")));
    }
    let img_path = d.join(format!("{fingerprint}.img"));
    // A link, not a rename: it fails rather than replace an image that
    // instances may use as their backing file.
    fs::hard_link(tmp, &img_path).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => {
            Error::Exists(format!("an image with fingerprint {fingerprint}"))
        }
        _ => Error::host("store the image", e),
    })?;
    let image = Image {
        alias: alias.into(),
        fingerprint: fingerprint.clone(),
        format,
        size,
        created_at: crate::clock::now(),
    };
    let meta = serde_json::to_vec_pretty(&image).unwrap_or_default();
    let meta_path = d.join(format!("{fingerprint}.json"));
    if let Err(e) = write_atomic(&meta_path, &meta, 0o644, Overwrite::Refuse) {
        // The image file is this import's own: it was linked just now.
        let _ = fs::remove_file(&img_path);
        return Err(Error::host("store the image", e));
    }
    Ok(image)
}

fn copy_hashed(
    mut src: fs::File,
    tmp: &Path,
    progress: &dyn Fn(u64, u64),
) -> io::Result<(String, u64)> {
    let total = src.metadata()?.len();
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)?;
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
    // Backing files are opened by the VMs' uids; read-only for everyone.
    dst.set_permissions(fs::Permissions::from_mode(0o444))?;
    Ok((crate::pki::hex(ctx.finish().as_ref()), size))
}

/// Stores a disk that `fill` writes into a fresh file of the store (a
/// download): `fill` returns its size once the content is checked, and it
/// is stored as [`import`] stores a copy, probed, under `fingerprint` and
/// `alias`. `size` bytes must fit in the store first. Whatever fails, only
/// the new file goes; an image already stored is never replaced.
pub(crate) fn fetched(
    state: &Path,
    source: &str,
    alias: &str,
    (fingerprint, size): (&str, u64),
    fill: impl FnOnce(&mut fs::File) -> Result<u64, Error>,
) -> Result<Image, Error> {
    crate::vmm::qemu::validate_name(alias)
        .map_err(|_| Error::Invalid(format!("invalid image alias {alias:?}: use a DNS label")))?;
    if find(state, alias).is_ok() {
        return Err(Error::Exists(format!("image {alias:?}")));
    }
    let d = dir(state);
    fs::create_dir_all(&d).map_err(|e| Error::host("create the image store", e))?;
    let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o711));
    let free = fs::File::open(&d)
        .and_then(|dir| crate::sys::fs::free_space(&dir))
        .map_err(|e| Error::host("measure the image store's free space", e))?;
    if size > free {
        return Err(Error::Refused(format!(
            "{source}: its {size} bytes do not fit in the {free} bytes free in the image store"
        )));
    }
    let tmp = d.join(format!(".fetch-{}", crate::uuid::new()));
    let result = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| Error::host("create a file in the image store", e))
        .and_then(|mut f| {
            let got = fill(&mut f)?;
            f.sync_all()
                .and_then(|()| f.set_permissions(fs::Permissions::from_mode(0o444)))
                .map_err(|e| Error::host("store the image", e))?;
            Ok(got)
        })
        .and_then(|got| {
            commit(
                &d,
                &tmp,
                Path::new(source),
                alias,
                (fingerprint.into(), got),
            )
        });
    let _ = fs::remove_file(&tmp);
    result
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
