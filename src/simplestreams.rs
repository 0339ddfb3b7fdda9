//! Simplestreams catalogues as LXD reads them
//! (<https://documentation.ubuntu.com/lxd/en/latest/reference/remote_image_servers/>):
//! `streams/v1/index.json` names the products files (`datatype`
//! `image-downloads`); a product has aliases (`debian/12,debian/bookworm`),
//! an architecture and versions named by their date serial, each with
//! items. A virtual machine image is a version's `lxd.tar.xz` metadata item
//! and its `disk-kvm.img` disk item; its LXD fingerprint is the metadata
//! item's `combined_disk-kvm-img_sha256`, the SHA-256 of the metadata file
//! followed by the disk.
//!
//! The catalogue comes from the network: every path, hash and size is
//! checked here before it is used, and an entry that fails a check is
//! skipped (as LXD skips what it cannot use) rather than trusted.

use serde_json::{Map, Value};

use crate::fault::{Blame, Fault};

#[derive(thiserror::Error)]
pub(crate) enum Error {
    #[error("{0} is not a simplestreams catalogue")]
    Json(String, #[source] serde_json::Error),
    #[error("{0} is not a simplestreams catalogue: it is not a JSON object")]
    NotCatalogue(String),
    #[error("the server's index names no usable products file")]
    NoProducts,
    #[error("the server has no virtual-machine image {0:?} for {1}")]
    NotFound(String, String),
    #[error("{0:?} matches more than one image: give more of the fingerprint")]
    Ambiguous(String),
}

crate::debug_as_display!(Error);

impl Blame for Error {
    fn fault(&self) -> Fault {
        match self {
            Error::NotFound(..) => Fault::Missing,
            Error::Ambiguous(_) => Fault::Input,
            Error::Json(..) | Error::NotCatalogue(_) | Error::NoProducts => Fault::Peer,
        }
    }
}

/// A file to download: where, its SHA-256 and its exact size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct File {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

/// A virtual machine image found in a catalogue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    /// LXD's fingerprint: the SHA-256 of `meta` then `disk`.
    pub fingerprint: String,
    pub meta: File,
    pub disk: File,
    /// The product's first alias (`debian/12`), or its key.
    pub name: String,
    /// The version's serial (`20240101_05:24`).
    pub serial: String,
}

/// The architecture name simplestreams servers give this host's
/// (LXD's `osarch` table, for the architectures kvmbox is built for).
pub(crate) fn host_arch() -> &'static str {
    arch_name(std::env::consts::ARCH)
}

fn arch_name(rust: &str) -> &str {
    match rust {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "armhf",
        other => other,
    }
}

/// LXD's other names for the same architectures.
fn same_arch(catalogue: &str, ours: &str) -> bool {
    let canonical = match catalogue {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "armv7l" | "armv7" | "arm" => "armhf",
        other => other,
    };
    canonical == ours
}

/// A path relative to the server's root that can go into a request line as
/// it is and stays below that root.
pub(crate) fn valid_path(p: &str) -> bool {
    p.len() <= 1024
        && p.bytes().all(crate::fetch::path_byte)
        && p.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

fn valid_sha256(h: &str) -> bool {
    h.len() == 64
        && h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The catalogue document `doc` (named `what` in errors), read as JSON
/// values: a typed reading would add code for each shape to the binary,
/// and every field is checked as it is used anyway.
fn parse(what: &str, doc: &[u8]) -> Result<Value, Error> {
    serde_json::from_slice(doc).map_err(|e| Error::Json(what.to_string(), e))
}

/// `v`'s members if it is an object (none otherwise).
fn members(v: Option<&Value>) -> impl Iterator<Item = (&String, &Value)> {
    v.and_then(Value::as_object).into_iter().flat_map(Map::iter)
}

/// The string `key` of `v` ("" when it is none).
fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// The products files `index.json` names, in its order.
pub(crate) fn products_paths(index: &[u8]) -> Result<Vec<String>, Error> {
    let index = parse("streams/v1/index.json", index)?;
    let paths: Vec<String> = members(index.get("index"))
        .filter(|(_, e)| {
            text(e, "datatype") == "image-downloads"
                && e.get("products")
                    .and_then(Value::as_array)
                    .is_some_and(|p| !p.is_empty())
        })
        .map(|(_, e)| text(e, "path"))
        .filter(|p| valid_path(p))
        .map(str::to_string)
        .collect();
    match paths.is_empty() {
        true => Err(Error::NoProducts),
        false => Ok(paths),
    }
}

/// `item` as a file to download, if every part of it is usable.
fn file(item: &Value, max: u64) -> Option<File> {
    let (path, sha256) = (text(item, "path"), text(item, "sha256"));
    let size = item.get("size").and_then(Value::as_u64)?;
    let ok = valid_path(path) && valid_sha256(sha256) && (1..=max).contains(&size);
    ok.then(|| File {
        path: path.to_string(),
        sha256: sha256.to_string(),
        size,
    })
}

/// The newest virtual machine image for `arch` in products file
/// `products` (named `what` in errors) whose alias is `wanted` (short,
/// or with the architecture: `debian/12/amd64`), or else whose fingerprint
/// starts with `wanted`. Disks over `max` bytes are not considered.
pub(crate) fn find(
    what: &str,
    products: &[u8],
    wanted: &str,
    arch: &str,
    max: u64,
) -> Result<Option<Found>, Error> {
    let doc = parse(what, products)?;
    if !doc.is_object() {
        return Err(Error::NotCatalogue(what.to_string()));
    }
    let hex = wanted.len() >= 8 && wanted.bytes().all(|b| b.is_ascii_hexdigit());
    let prefix = wanted.to_ascii_lowercase();
    let mut by_alias: Option<Found> = None;
    let mut by_fp: Vec<Found> = Vec::new();
    for (key, product) in members(doc.get("products")) {
        let product_arch = text(product, "arch");
        if !same_arch(product_arch, arch) {
            continue;
        }
        let aliases: Vec<&str> = text(product, "aliases")
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect();
        let alias_match = aliases
            .iter()
            .any(|a| *a == wanted || format!("{a}/{product_arch}") == wanted);
        for (serial, version) in members(product.get("versions")) {
            // LXD reads the first eight characters as the date.
            let dated = serial.len() >= 8 && serial.bytes().take(8).all(|b| b.is_ascii_digit());
            if !dated {
                continue;
            }
            let items = || members(version.get("items")).map(|(_, i)| i);
            let meta = items().find(|i| {
                text(i, "ftype") == "lxd.tar.xz"
                    && valid_sha256(text(i, "combined_disk-kvm-img_sha256"))
            });
            let disk = items().find(|i| text(i, "ftype") == "disk-kvm.img");
            let (Some(meta), Some(disk)) = (meta, disk) else {
                continue;
            };
            let (Some(meta_file), Some(disk_file)) = (file(meta, max), file(disk, max)) else {
                continue;
            };
            let found = Found {
                fingerprint: text(meta, "combined_disk-kvm-img_sha256").to_string(),
                meta: meta_file,
                disk: disk_file,
                name: aliases
                    .first()
                    .map_or_else(|| key.clone(), |a| a.to_string()),
                serial: serial.clone(),
            };
            if alias_match && by_alias.as_ref().is_none_or(|b| found.serial > b.serial) {
                by_alias = Some(found.clone());
            }
            if hex && found.fingerprint.starts_with(&prefix) {
                by_fp.push(found);
            }
        }
    }
    if by_alias.is_some() {
        return Ok(by_alias);
    }
    // One image may be listed twice (two products, two versions).
    match by_fp.pop() {
        Some(f) if by_fp.iter().any(|o| o.fingerprint != f.fingerprint) => {
            Err(Error::Ambiguous(wanted.to_string()))
        }
        found => Ok(found),
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a failed test should panic"
)]
mod tests;
