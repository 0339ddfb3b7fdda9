//! `POST /1.0/images` from an image server, as LXD pulls one
//! (`{"source": {"type": "image", "mode": "pull", "protocol":
//! "simplestreams", "server": URL, "alias" or "fingerprint": …}}`, what
//! `lxc image copy REMOTE:ALIAS TARGET: --vm` sends): the daemon reads the
//! server's catalogue, picks the newest virtual machine image of the alias
//! for this host's architecture, and downloads its metadata and disk,
//! checking each file's SHA-256 and size and LXD's fingerprint over both,
//! straight into the image store. The operation's metadata shows
//! `download_progress` as LXD's does, so lxc draws it.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::fault::{Blame, Fault};
use crate::fetch::{self, Fetcher, Url};
use crate::hostfile::Pin;
use crate::http::Response;
use crate::log::log;
use crate::server::operations::Progress;
use crate::server::reply::{error, operation, told};
use crate::server::state::Shared;
use crate::simplestreams::{self, File, Found};
use crate::vmm::instances;
use crate::wire::{path, ImagesPost, InstancesPost};

/// No byte from the server for this long fails the download.
const STALL: Duration = Duration::from_secs(30);
/// `index.json` is a few kilobytes; a products file a few megabytes (all
/// of images.linuxcontainers.org's is under 20 MiB).
const MAX_INDEX: u64 = 1 << 20;
const MAX_PRODUCTS: u64 = 64 << 20;
/// How long reading either may take in all.
const DOC_DEADLINE: Duration = Duration::from_secs(120);
/// The largest disk pulled (besides the store's free space).
const MAX_DISK: u64 = 256 << 30;
/// How many products files the index may make the daemon read.
const MAX_PRODUCTS_FILES: usize = 8;

#[derive(thiserror::Error)]
enum Error {
    #[error(transparent)]
    Fetch(#[from] fetch::Error),
    #[error(transparent)]
    Catalogue(#[from] simplestreams::Error),
    #[error(transparent)]
    Store(#[from] instances::Error),
}

crate::debug_as_display!(Error);

impl Blame for Error {
    fn fault(&self) -> Fault {
        match self {
            Error::Fetch(e) => e.fault(),
            Error::Catalogue(e) => e.fault(),
            Error::Store(e) => e.fault(),
        }
    }
}

/// Where an image on another server is: its URL, and the alias or
/// fingerprint asked for; a refusal when kvmbox cannot pull from it.
fn source(
    mode: &str,
    protocol: &str,
    server: &str,
    alias: &str,
    fingerprint: &str,
) -> Result<(Url, String), Response> {
    if !mode.is_empty() && mode != "pull" {
        return Err(error(400, "only \"pull\" mode copies images from a server"));
    }
    if protocol != "simplestreams" {
        return Err(error(
            400,
            "only simplestreams image servers can be pulled from",
        ));
    }
    let url = Url::parse(server).map_err(|e| error(400, &e.to_string()))?;
    // lxc puts an alias in `fingerprint` as well.
    let wanted = match fingerprint.is_empty() {
        true => alias,
        false => fingerprint,
    };
    if wanted.is_empty() || wanted.len() > 256 {
        return Err(error(400, "name the image by its alias or fingerprint"));
    }
    Ok((url, wanted.to_string()))
}

/// Starts pulling the image `b` names (its source is of type `image`).
pub(crate) fn pull(shared: &Arc<Shared>, b: ImagesPost) -> Response {
    let src = &b.source;
    if !matches!(src.image_type.as_str(), "" | "virtual-machine") {
        return error(400, "only virtual-machine images can be pulled");
    }
    let (url, wanted) = match source(
        &src.mode,
        &src.protocol,
        &src.server,
        &src.alias,
        &src.fingerprint,
    ) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let alias = b.aliases.first().map(|a| a.name.clone());
    if b.aliases.iter().any(|a| Some(&a.name) != alias.as_ref()) {
        return error(400, "give at most one alias");
    }
    let ex = match shared.instances.executor() {
        Ok(ex) => ex,
        Err(e) => return error(500, &told(&e)),
    };
    let s = shared.clone();
    let op =
        shared
            .ops
            .spawn_reporting(&ex, "Downloading image", BTreeMap::new(), |p| async move {
                // All of it blocks (sockets with timeouts, a file): one
                // blocking thread does it.
                smol::unblock(move || {
                    fetch_image(&s, &url, &wanted, alias, &p).map_err(|e| told(&e))
                })
                .await
            });
    operation(&op)
}

/// `POST /1.0/instances` whose source is an image on another server, as
/// `lxc launch images:debian/12 NAME --vm` sends it: the image is pulled
/// as [`pull`] does (or found in the store), then the instance is made on
/// it, in one operation. `pins` and `range` are the caller's checked disks
/// and the uid range, as for any creation.
pub(crate) fn launch(
    shared: &Arc<Shared>,
    b: InstancesPost,
    pins: BTreeMap<String, Pin>,
    range: String,
) -> Response {
    let Some(src) = &b.source else {
        return error(400, "no image source");
    };
    let (alias, fp) = (src.alias.as_deref(), src.fingerprint.as_deref());
    let (url, wanted) = match source(
        &src.mode,
        &src.protocol,
        &src.server,
        alias.unwrap_or_default(),
        fp.unwrap_or_default(),
    ) {
        Ok(s) => s,
        Err(r) => return r,
    };
    // Refused before the download: a name that cannot be given.
    if let Err(e) = crate::vmm::qemu::validate_name(&b.name) {
        return error(400, &e.to_string());
    }
    if shared.instances.record(&b.name).is_ok() {
        return error(409, &format!("instance {:?} already exists", b.name));
    }

    let ex = match shared.instances.executor() {
        Ok(ex) => ex,
        Err(e) => return error(500, &told(&e)),
    };
    let mut resources = BTreeMap::new();
    resources.insert("instances".to_string(), vec![path::instance(&b.name)]);
    let s = shared.clone();
    let (name, config, devices) = (b.name, b.config, b.devices);
    let op = shared
        .ops
        .spawn_reporting(&ex, "Creating instance", resources, |p| async move {
            let sh = s.clone();
            let got = smol::unblock(move || fetch_image(&sh, &url, &wanted, None, &p))
                .await
                .map_err(|e| told(&e))?;
            let fp = got
                .get("fingerprint")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default();
            let m = &s.instances;
            let reserved = m
                .reserve(&name, Some(fp), config, devices, &pins, &range)
                .map_err(|e| told(&e))?;
            m.create(reserved).await.map_err(|e| told(&e))?;
            s.events.lifecycle("instance-created", &name, json!({}));
            Ok(json!({}))
        });
    operation(&op)
}

fn fetch_image(
    shared: &Shared,
    url: &Url,
    wanted: &str,
    alias: Option<String>,
    progress: &Progress,
) -> Result<serde_json::Value, Error> {
    let fetcher = Fetcher::new(STALL)?;
    let found = resolve(&fetcher, url, wanted)?;
    let fp = found.fingerprint.as_str();
    let size = found.disk.size.to_string();
    // The same content again: it is there, and stays as it is.
    if shared
        .instances
        .images()?
        .iter()
        .any(|i| i.fingerprint == fp)
    {
        log!(Info, "image {fp} pulled again: it is in the store already");
        return Ok(json!({"fingerprint": fp, "size": size, "existing": "true"}));
    }
    // Without an alias asked for, one made from the name; if another
    // image has it (an older build, say), with the fingerprint's start.
    let alias = match alias {
        Some(a) => a,
        None => {
            let by_fp = fp.starts_with(&wanted.to_ascii_lowercase());
            let a = derive_alias(if by_fp { &found.name } else { wanted });
            match shared.instances.image_aliases()?.targets.contains_key(&a) {
                true => format!("{}-{}", a, fp.get(..12).unwrap_or(fp)),
                false => a,
            }
        }
    };
    // The last progress stays in the result: a client that looks only
    // now and then still sees how the download went.
    let mut text = String::new();
    let fetched = shared.instances.fetch_image(
        &url.show(&found.disk.path),
        &alias,
        (fp, found.disk.size),
        |file| Ok(download(&fetcher, url, &found, file, progress, &mut text)?),
    );
    let img = match fetched {
        // Another pull of the same image finished first: it is there.
        Err(instances::Error::Exists(_))
            if shared
                .instances
                .images()?
                .iter()
                .any(|i| i.fingerprint == fp) =>
        {
            log!(
                Info,
                "image {fp} was pulled at the same time by another request"
            );
            return Ok(json!({"fingerprint": fp, "size": size, "existing": "true"}));
        }
        other => other?,
    };
    log!(Info, "image {} pulled as {}", img.fingerprint, img.alias);
    Ok(json!({"fingerprint": fp, "size": size, "download_progress": text}))
}

/// The image `wanted` names in the catalogue of the server at `url`.
fn resolve(fetcher: &Fetcher, url: &Url, wanted: &str) -> Result<Found, Error> {
    let index = fetcher.get_all(url, "streams/v1/index.json", MAX_INDEX, DOC_DEADLINE)?;
    let arch = simplestreams::host_arch();
    for path in simplestreams::products_paths(&index)?
        .iter()
        .take(MAX_PRODUCTS_FILES)
    {
        let doc = fetcher.get_all(url, path, MAX_PRODUCTS, DOC_DEADLINE)?;
        if let Some(found) = simplestreams::find(path, &doc, wanted, arch, MAX_DISK)? {
            return Ok(found);
        }
    }
    Err(
        simplestreams::Error::NotFound(wanted.to_string(), format!("{arch} on {}", url.show("")))
            .into(),
    )
}

/// A store alias (a DNS label) for an image asked for as `name`:
/// `debian/12` becomes `debian-12`.
fn derive_alias(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().map(|c| c.to_ascii_lowercase()) {
        match c {
            'a'..='z' | '0'..='9' => out.push(c),
            _ if !out.is_empty() && !out.ends_with('-') => out.push('-'),
            _ => {}
        }
    }
    out.truncate(63);
    let out = out.trim_end_matches('-');
    match out.is_empty() {
        true => "image".into(),
        false => out.into(),
    }
}

/// Downloads the metadata (hashed, not kept) and the disk (into `file`),
/// each checked against its size and SHA-256 and both against the
/// fingerprint; the disk's size. `text` is left with the last progress.
fn download(
    fetcher: &Fetcher,
    url: &Url,
    found: &Found,
    file: &mut std::fs::File,
    progress: &Progress,
    text: &mut String,
) -> Result<u64, fetch::Error> {
    let mut combined = ring::digest::Context::new(&ring::digest::SHA256);
    let mut to = Report {
        progress,
        label: "metadata",
        text,
    };
    let mut sink = |_: &[u8]| Ok(());
    one(fetcher, url, &found.meta, &mut combined, &mut to, &mut sink)?;
    to.label = "rootfs";
    let mut sink = |chunk: &[u8]| file.write_all(chunk).map_err(fetch::Error::Write);
    one(fetcher, url, &found.disk, &mut combined, &mut to, &mut sink)?;
    let got = crate::pki::hex(combined.finish().as_ref());
    if got != found.fingerprint {
        let what = format!("{} and its metadata", url.show(&found.disk.path));
        return Err(fetch::Error::Hash(what, got, found.fingerprint.clone()));
    }
    Ok(found.disk.size)
}

/// Where a download's progress goes: the operation, as `LABEL: N% (RATE)`
/// (LXD's words), the last of which is kept in `text`.
struct Report<'a> {
    progress: &'a Progress,
    label: &'static str,
    text: &'a mut String,
}

/// Downloads `f`, hashing it into `combined` and handing it to `sink`.
fn one(
    fetcher: &Fetcher,
    url: &Url,
    f: &File,
    combined: &mut ring::digest::Context,
    to: &mut Report<'_>,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), fetch::Error>,
) -> Result<(), fetch::Error> {
    let mut own = ring::digest::Context::new(&ring::digest::SHA256);
    let mut body = fetcher.get(url, &f.path, f.size, true)?;
    let start = Instant::now();
    let mut shown = Instant::now();
    let mut done = 0u64;
    let mut last_percent = u64::MAX;
    body.each(|chunk| {
        own.update(chunk);
        combined.update(chunk);
        sink(chunk)?;
        done += chunk.len() as u64;
        let percent = done.saturating_mul(100).checked_div(f.size).unwrap_or(100);
        let due = shown.elapsed() >= Duration::from_millis(500) || done == f.size;
        if percent != last_percent && due {
            last_percent = percent;
            shown = Instant::now();
            let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
            let rate = done.saturating_mul(1000) / ms.max(1);
            *to.text = format!("{}: {percent}% ({}/s)", to.label, bytes(rate));
            to.progress.set(json!({
                "download_progress": to.text.as_str(),
                "progress": {"percent": percent, "done": done, "total": f.size},
            }));
        }
        Ok(())
    })?;
    let got = crate::pki::hex(own.finish().as_ref());
    if got != f.sha256 {
        return Err(fetch::Error::Hash(url.show(&f.path), got, f.sha256.clone()));
    }
    Ok(())
}

/// A byte count as LXD shows speeds (decimal units, two decimals).
fn bytes(n: u64) -> String {
    let mut unit = 1u64;
    for name in ["B", "kB", "MB", "GB"] {
        if n < unit.saturating_mul(1000) {
            let hundredths = n.saturating_mul(100) / unit;
            return format!("{}.{:02}{name}", hundredths / 100, hundredths % 100);
        }
        unit *= 1000;
    }
    format!("{}TB", n / unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_become_dns_labels() {
        assert_eq!(derive_alias("debian/12"), "debian-12");
        assert_eq!(derive_alias("Ubuntu/24.04/cloud"), "ubuntu-24-04-cloud");
        assert_eq!(derive_alias("//x//"), "x");
        assert_eq!(derive_alias("../../"), "image");
        assert_eq!(derive_alias(&"a/".repeat(100)).len(), 63);
        for name in ["debian/12", "-x-", &"é/".repeat(40), &"ab-".repeat(30)] {
            let a = derive_alias(name);
            assert!(crate::vmm::qemu::validate_name(&a).is_ok(), "{name} -> {a}");
        }
        assert_eq!(bytes(1_500_000), "1.50MB");
        assert_eq!(bytes(12), "12.00B");
        assert_eq!(bytes(999_999), "999.99kB");
        assert_eq!(bytes(u64::MAX), "18446744TB");
    }
}
