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

/// What `qemu-img info` says about `path`: (format, backing file).
pub(crate) fn probe(path: &Path) -> Result<(String, Option<String>), Error> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
        .output()
        .map_err(|e| Error::host("run qemu-img (is qemu-utils installed?)", e))?;
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "{} is not a disk image qemu-img can read: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::Invalid(format!("qemu-img info: {e}")))?;
    let format = v
        .get("format")
        .and_then(|f| f.as_str())
        .unwrap_or_default()
        .to_string();
    let backing = v
        .get("backing-filename")
        .and_then(|f| f.as_str())
        .map(str::to_string);
    Ok((format, backing))
}

/// Copies `source` into the store as `alias`. The copy is hashed as it is
/// written and only then named, so a half-copied image never appears.
/// `progress(done, total)` is called as the copy goes.
pub(crate) fn import(
    state: &Path,
    source: &Path,
    alias: &str,
    progress: &dyn Fn(u64, u64),
) -> Result<Image, Error> {
    crate::qemu::validate_name(alias)
        .map_err(|_| Error::Invalid(format!("invalid image alias {alias:?}: use a DNS label")))?;
    if find(state, alias).is_ok() {
        return Err(Error::Exists(format!("image {alias:?}")));
    }
    let (format, backing) = probe(source)?;
    if format != "raw" && format != "qcow2" {
        return Err(Error::Invalid(format!(
            "{} is {format:?}: only raw and qcow2 images can be imported",
            source.display()
        )));
    }
    if let Some(b) = backing {
        return Err(Error::Invalid(format!(
            "{} has a backing file ({b}): import a flattened image (qemu-img convert)",
            source.display()
        )));
    }
    let d = dir(state);
    fs::create_dir_all(&d).map_err(|e| Error::host("create the image store", e))?;
    // VMs' uids read images (as backing files) through this directory.
    let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o711));
    let tmp = d.join(format!(".import-{}", std::process::id()));
    let result = copy_hashed(source, &tmp, progress);
    let (fingerprint, size) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(Error::host(format!("copy {}", source.display()), e));
        }
    };
    let img_path = d.join(format!("{fingerprint}.img"));
    let image = Image {
        alias: alias.into(),
        fingerprint: fingerprint.clone(),
        format,
        size,
        created_at: crate::trust::now(),
    };
    let meta = serde_json::to_vec_pretty(&image).unwrap_or_default();
    let done = fs::rename(&tmp, &img_path).and_then(|()| {
        write_atomic(
            &d.join(format!("{fingerprint}.json")),
            &meta,
            0o644,
            Overwrite::Refuse,
        )
    });
    if let Err(e) = done {
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(&img_path);
        return Err(match e.kind() {
            io::ErrorKind::AlreadyExists => {
                Error::Exists(format!("an image with fingerprint {fingerprint}"))
            }
            _ => Error::host("store the image", e),
        });
    }
    Ok(image)
}

fn copy_hashed(
    source: &Path,
    tmp: &Path,
    progress: &dyn Fn(u64, u64),
) -> io::Result<(String, u64)> {
    let mut src = fs::File::open(source)?;
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
