//! What an image upload's body holds, in the forms `lxc image import`
//! sends (LXD's `CreateImage`): a unified tarball (`metadata.yaml` and the
//! disk as `rootfs.img`), a `multipart/form-data` body whose parts are the
//! metadata tarball and the disk (`rootfs.img`), or, from kvmbox's own
//! client, the bare qcow2 or raw disk. The fingerprint is LXD's: SHA-256
//! of the whole body, or of the two parts' contents one after the other
//! for the multipart form. Tarballs are taken uncompressed only.
//!
//! The body is in the image store already (streamed there and hashed by
//! the daemon); what is read out of it is bounded: metadata in memory, the
//! disk into a file of its own in the store.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufReader, Read, Seek, Write};
use std::path::Path;

use super::image::{self, Image, NewImage, Staged};
use super::Error;

/// The largest metadata tarball (or `metadata.yaml`) taken: it is read
/// into memory, and LXD's are a few KiB.
const MAX_METADATA: u64 = 8 << 20;

/// The largest part head of a multipart body.
const MAX_PART_HEAD: usize = 8 << 10;

/// What came with an upload besides its body.
#[derive(Clone, Debug, Default)]
pub(crate) struct Upload {
    /// `Content-Type`: multipart (with its boundary) or anything else.
    pub content_type: String,
    /// `X-LXD-fingerprint`: what the uploader says the fingerprint is.
    pub fingerprint: Option<String>,
    /// `X-LXD-filename`.
    pub filename: String,
    /// `X-LXD-properties`, decoded: added to the metadata's.
    pub properties: BTreeMap<String, String>,
    /// `X-LXD-aliases` (comma-separated): aliases the new image gets.
    pub aliases: Vec<String>,
}

impl Upload {
    /// An upload described by `content_type` and LXD's headers
    /// (`x-lxd-` taken off their lower-case names).
    pub(crate) fn new(content_type: &str, headers: &[(String, String)]) -> Upload {
        let get = |k: &str| {
            headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        Upload {
            content_type: content_type.to_string(),
            fingerprint: get("fingerprint").map(str::to_ascii_lowercase),
            filename: get("filename").unwrap_or_default().to_string(),
            properties: get("properties").map(form_decode).unwrap_or_default(),
            aliases: get("aliases")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }
}

/// Stores the upload whose whole body is `body` (SHA-256 `body_sha`) as
/// an image. Whatever happens, `body` and every file made on the way go;
/// only a committed image stays.
pub(crate) fn ingest(
    state: &Path,
    body: Staged,
    body_sha: String,
    up: Upload,
) -> Result<Image, Error> {
    let file = fs::File::open(body.path()).map_err(|e| Error::host("read the upload", e))?;
    let (disk, fingerprint, meta) = match boundary(&up.content_type)? {
        Some(b) => split(state, file, &b)?,
        None => match sniff(&file)? {
            Kind::Tar => {
                let (disk, meta) = unified(state, file)?;
                (disk, body_sha, Some(meta))
            }
            Kind::Disk => (body, body_sha, None),
            Kind::Compressed(what) => {
                return Err(Error::Invalid(format!(
                    "a {what}-compressed upload cannot be taken: send an uncompressed tarball, \
                     or the qcow2 or raw disk itself"
                )))
            }
        },
    };
    if let Some(want) = &up.fingerprint {
        if *want != fingerprint {
            return Err(Error::Invalid(format!(
                "fingerprints don't match, got {fingerprint} expected {want}"
            )));
        }
    }
    let host = host_arch();
    let mut new = NewImage {
        fingerprint,
        architecture: host.to_string(),
        filename: up.filename,
        aliases: up.aliases,
        ..NewImage::default()
    };
    if let Some(m) = meta {
        if normal_arch(&m.architecture) != host {
            return Err(Error::Invalid(format!(
                "the image is for {:?}: this host runs {host} guests",
                m.architecture
            )));
        }
        new.created_at = m.creation_date;
        new.properties = m.properties;
    }
    new.properties.extend(up.properties);
    image::commit(state, &disk, new)
}

/// LXD's name of the host's architecture.
fn host_arch() -> &'static str {
    std::env::consts::ARCH
}

/// LXD's name of `arch`, which may be given by its Debian name.
fn normal_arch(arch: &str) -> &str {
    match arch {
        "amd64" | "x64" => "x86_64",
        "arm64" => "aarch64",
        "ppc64el" => "ppc64le",
        a => a,
    }
}

/// What a body that is not multipart holds, by its first bytes.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Tar,
    /// A qcow2 or raw disk (qemu-img tells which).
    Disk,
    Compressed(&'static str),
}

fn sniff(mut file: &fs::File) -> Result<Kind, Error> {
    let mut head = [0u8; 512];
    let mut n = 0;
    while n < head.len() {
        match file.read(head.get_mut(n..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(Error::host("read the upload", e)),
        }
    }
    file.rewind()
        .map_err(|e| Error::host("read the upload", e))?;
    Ok(kind_of(head.get(..n).unwrap_or_default()))
}

fn kind_of(head: &[u8]) -> Kind {
    const COMPRESSED: &[(&[u8], &str)] = &[
        (b"\x1f\x8b", "gzip"),
        (b"\xfd7zXZ\x00", "xz"),
        (b"\x28\xb5\x2f\xfd", "zstd"),
        (b"BZh", "bzip2"),
        (b"\x5d\x00\x00", "lzma"),
        (b"hsqs", "squashfs"),
    ];
    if head.get(257..262) == Some(b"ustar".as_slice()) {
        return Kind::Tar;
    }
    match COMPRESSED.iter().find(|(magic, _)| head.starts_with(magic)) {
        Some((_, what)) => Kind::Compressed(what),
        None => Kind::Disk,
    }
}

/// What `metadata.yaml` says that kvmbox keeps.
#[derive(Debug, Default, PartialEq, Eq)]
struct Metadata {
    architecture: String,
    creation_date: u64,
    properties: BTreeMap<String, String>,
}

/// The disk and metadata of a unified tarball: `rootfs.img` copied into
/// the store, `metadata.yaml` parsed.
fn unified(state: &Path, file: fs::File) -> Result<(Staged, Metadata), Error> {
    let mut disk = None;
    let mut src = BufReader::new(file);
    let meta = entries(&mut src, &mut |name, entry| {
        if name != "rootfs.img" {
            return Ok(false);
        }
        let (staged, mut out) = Staged::new(state)?;
        io::copy(entry, &mut out)
            .and_then(|_| out.sync_all())
            .map_err(|e| Error::host("copy the image's rootfs.img", e))?;
        disk = Some(staged);
        Ok(true)
    })?;
    let disk = disk.ok_or_else(|| {
        Error::Invalid(
            "the tarball has no rootfs.img: only virtual-machine images can be imported".into(),
        )
    })?;
    Ok((disk, meta))
}

/// Goes through a tarball's regular files: `metadata.yaml` is parsed, every
/// other is offered to `other` (by its name without a leading `./`), which
/// says whether it took it. A tarball without `metadata.yaml` is refused.
fn entries(
    src: &mut dyn Read,
    other: &mut dyn FnMut(&str, &mut dyn Read) -> Result<bool, Error>,
) -> Result<Metadata, Error> {
    let bad = |e: io::Error| Error::Invalid(format!("not a tarball that can be read: {e}"));
    let mut archive = tar::Archive::new(src);
    let mut meta = None;
    // Raw: GNU long names and PAX headers are not read into memory (the
    // tar crate would hold each whole, however large the upload says it
    // is), nor sparse maps built. Only plain files are wanted, and the two
    // names wanted are short; every other entry is skipped over.
    for entry in archive.entries().map_err(bad)?.raw(true) {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path_bytes().into_owned();
        let name = std::str::from_utf8(&path).unwrap_or_default();
        let name = name.trim_start_matches("./");
        if name == "metadata.yaml" {
            let mut text = String::new();
            entry
                .by_ref()
                .take(MAX_METADATA)
                .read_to_string(&mut text)
                .map_err(|e| Error::Invalid(format!("metadata.yaml cannot be read: {e}")))?;
            meta = Some(metadata(&text)?);
        } else {
            other(name, &mut entry)?;
        }
    }
    meta.ok_or_else(|| Error::Invalid("the image has no metadata.yaml".into()))
}

/// Reads the keys kvmbox keeps from `metadata.yaml`: `architecture`,
/// `creation_date` and the `properties` map of strings. LXD writes these
/// as plain `key: value` lines (properties indented under their key); a
/// YAML library would cost more than the rest of the upload code, so these
/// forms alone are read, and every other key (templates, expiry) is
/// skipped.
fn metadata(text: &str) -> Result<Metadata, Error> {
    let bad = |line: &str| Error::Invalid(format!("metadata.yaml: cannot read {line:?}"));
    let mut m = Metadata::default();
    let mut in_properties = false;
    for line in text.lines() {
        let content = line.split(" #").next().unwrap_or_default().trim_end();
        if content.trim().is_empty() || content.trim_start().starts_with('#') || content == "---" {
            continue;
        }
        let nested = content.starts_with([' ', '\t']);
        if !nested {
            in_properties = false;
        }
        let Some((key, value)) = content.trim().split_once(':') else {
            if nested {
                continue;
            }
            return Err(bad(line));
        };
        let (key, value) = (unquote(key.trim()), unquote(value.trim()));
        match (nested, key.as_str()) {
            (true, _) if in_properties => {
                m.properties.insert(key, value);
            }
            (true, _) => {}
            (false, "architecture") => m.architecture = value,
            (false, "creation_date") => {
                m.creation_date = value.parse().map_err(|_| bad(line))?;
            }
            (false, "properties") if value.is_empty() => in_properties = true,
            (false, "properties") if value == "{}" => {}
            (false, "properties") => return Err(bad(line)),
            (false, _) => {}
        }
    }
    if m.architecture.is_empty() {
        return Err(Error::Invalid("metadata.yaml names no architecture".into()));
    }
    Ok(m)
}

/// A YAML scalar without its quotes.
fn unquote(s: &str) -> String {
    let quoted = s.len() >= 2
        && ((s.starts_with('"') && s.ends_with('"')) || (s.starts_with('\'') && s.ends_with('\'')));
    match s.get(1..s.len().saturating_sub(1)) {
        Some(inner) if quoted => inner.to_string(),
        _ => s.to_string(),
    }
}

/// The boundary of a `multipart/form-data` content type; `None` for any
/// other type.
fn boundary(content_type: &str) -> Result<Option<String>, Error> {
    let mut params = content_type.split(';');
    let media = params.next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case("multipart/form-data") {
        return Ok(None);
    }
    params
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| unquote(v.trim()))
        // RFC 2046: 1 to 70 characters.
        .filter(|b| !b.is_empty() && b.len() <= 70)
        .map(Some)
        .ok_or_else(|| Error::Invalid("a multipart upload without a valid boundary".into()))
}

/// The split form: the `metadata` part (a tarball with `metadata.yaml`)
/// and the `rootfs.img` part (the disk), in that order. The fingerprint
/// is SHA-256 over both parts' contents, as LXD computes it.
fn split(
    state: &Path,
    file: fs::File,
    boundary: &str,
) -> Result<(Staged, String, Option<Metadata>), Error> {
    let mut parts = Parts::new(BufReader::new(file), boundary);
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    // Whatever comes before the first boundary is not part of any part.
    parts.copy(&mut io::sink(), None, u64::MAX)?;
    let name = parts.head()?;
    if name.as_deref() != Some("metadata") {
        return Err(Error::Invalid(
            "a multipart upload whose first part is not \"metadata\"".into(),
        ));
    }
    let mut tarball = Vec::new();
    parts.copy(&mut tarball, Some(&mut hash), MAX_METADATA)?;
    let meta = match kind_of(tarball.get(..512).unwrap_or(&tarball)) {
        Kind::Tar => entries(&mut tarball.as_slice(), &mut |_, _| Ok(false))?,
        Kind::Compressed(what) => {
            return Err(Error::Invalid(format!(
                "a {what}-compressed metadata tarball cannot be taken: send it uncompressed"
            )))
        }
        Kind::Disk => return Err(Error::Invalid("the metadata part is not a tarball".into())),
    };
    match parts.head()?.as_deref() {
        Some("rootfs.img") => {}
        Some("rootfs") => {
            return Err(Error::Invalid(
                "a container image (rootfs part): only virtual-machine images can be imported"
                    .into(),
            ))
        }
        _ => {
            return Err(Error::Invalid(
                "a multipart upload whose second part is not \"rootfs.img\"".into(),
            ))
        }
    }
    let (staged, out) = Staged::new(state)?;
    let mut out = io::BufWriter::with_capacity(1 << 20, out);
    parts.copy(&mut out, Some(&mut hash), u64::MAX)?;
    out.into_inner()
        .map_err(io::IntoInnerError::into_error)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::host("write the image's disk", e))?;
    if parts.head()?.is_some() {
        return Err(Error::Invalid(
            "a multipart upload with more than two parts".into(),
        ));
    }
    Ok((staged, crate::pki::hex(hash.finish().as_ref()), Some(meta)))
}

/// A `multipart/form-data` body read part by part (RFC 7578): each part's
/// head parsed by httparse, its content copied out up to the next
/// delimiter.
struct Parts<R> {
    src: R,
    buf: Vec<u8>,
    /// CRLF, `--`, the boundary.
    delimiter: Vec<u8>,
}

impl<R: Read> Parts<R> {
    fn new(src: R, boundary: &str) -> Self {
        Parts {
            src,
            // The first delimiter has no CRLF before it: give it one.
            buf: b"\r\n".to_vec(),
            delimiter: format!("\r\n--{boundary}").into_bytes(),
        }
    }

    fn truncated() -> Error {
        Error::Invalid("the multipart upload ends before its closing boundary".into())
    }

    /// Reads more; false at the end of the body.
    fn fill(&mut self) -> Result<bool, Error> {
        let mut chunk = vec![0u8; 256 << 10];
        let n = self
            .src
            .read(&mut chunk)
            .map_err(|e| Error::host("read the upload", e))?;
        self.buf
            .extend_from_slice(chunk.get(..n).unwrap_or_default());
        Ok(n > 0)
    }

    /// Copies the current part's content to `out` (and `hash`), up to the
    /// delimiter that ends it; more than `max` bytes are refused.
    fn copy(
        &mut self,
        out: &mut dyn Write,
        mut hash: Option<&mut ring::digest::Context>,
        max: u64,
    ) -> Result<(), Error> {
        let mut copied = 0u64;
        loop {
            let found = find(&self.buf, &self.delimiter);
            // Without a delimiter, all but what could be its start is content.
            let take = found.unwrap_or_else(|| {
                self.buf
                    .len()
                    .saturating_sub(self.delimiter.len().saturating_sub(1))
            });
            let data = self.buf.get(..take).unwrap_or_default();
            copied = copied.saturating_add(take as u64);
            if copied > max {
                return Err(Error::Invalid(format!("a multipart part over {max} bytes")));
            }
            if let Some(h) = hash.as_deref_mut() {
                h.update(data);
            }
            out.write_all(data)
                .map_err(|e| Error::host("copy the upload", e))?;
            self.buf.drain(..take);
            if found.is_some() {
                return Ok(());
            }
            if !self.fill()? {
                return Err(Self::truncated());
            }
        }
    }

    /// At a delimiter: the name of the part it opens (from its
    /// Content-Disposition), or `None` at the closing one.
    fn head(&mut self) -> Result<Option<String>, Error> {
        let d = self.delimiter.len();
        while self.buf.len() < d + 2 {
            if !self.fill()? {
                return Err(Self::truncated());
            }
        }
        match self.buf.get(d..d + 2) {
            Some(b"--") => return Ok(None),
            Some(b"\r\n") => {}
            _ => return Err(Error::Invalid("a malformed multipart delimiter".into())),
        }
        self.buf.drain(..d + 2);
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            match httparse::parse_headers(&self.buf, &mut headers) {
                Ok(httparse::Status::Complete((used, headers))) => {
                    let name = headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-disposition"))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .and_then(form_name);
                    self.buf.drain(..used);
                    return Ok(Some(name.unwrap_or_default()));
                }
                Ok(httparse::Status::Partial) if self.buf.len() <= MAX_PART_HEAD => {
                    if !self.fill()? {
                        return Err(Self::truncated());
                    }
                }
                _ => return Err(Error::Invalid("a malformed multipart part head".into())),
            }
        }
    }
}

/// Where `needle` (not empty) first is in `hay`: a scan for its first
/// byte, each hit compared whole, fast enough for any disk.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (first, _) = needle.split_first()?;
    let mut from = 0;
    while let Some(i) = hay.get(from..)?.iter().position(|b| b == first) {
        let at = from + i;
        if hay.get(at..)?.starts_with(needle) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The `name` parameter of a `form-data` Content-Disposition.
fn form_name(disposition: &str) -> Option<String> {
    let mut params = disposition.split(';');
    if !params.next()?.trim().eq_ignore_ascii_case("form-data") {
        return None;
    }
    params
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("name"))
        .map(|(_, v)| unquote(v.trim()))
}

/// `application/x-www-form-urlencoded` pairs, as `X-LXD-properties`
/// carries them; for a key given twice, the first value (as LXD takes).
pub(crate) fn form_decode(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for pair in s.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(percent_decode(k))
            .or_insert_with(|| percent_decode(v));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.clone().take(2).collect::<Vec<u8>>();
                let value = std::str::from_utf8(&hex)
                    .ok()
                    .filter(|h| h.len() == 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match value {
                    Some(v) => {
                        out.push(v);
                        bytes.nth(1);
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a failed test should panic"
)]
mod tests {
    use super::*;

    #[test]
    fn metadata_yaml_as_lxd_writes_it() {
        let m = metadata(
            "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: \"Busybox VM\"\n  os: 'busybox'\n  release: 1.36 # comment\ntemplates: {}\n",
        )
        .unwrap();
        assert_eq!(m.architecture, "x86_64");
        assert_eq!(m.creation_date, 1_700_000_000);
        assert_eq!(m.properties["description"], "Busybox VM");
        assert_eq!(m.properties["os"], "busybox");
        assert_eq!(m.properties["release"], "1.36");
        assert_eq!(m.properties.len(), 3);
        // Refused: no architecture, a date that is not a number, a line
        // that is not `key: value`, properties that are not a map.
        for bad in [
            "creation_date: 1\n",
            "architecture: x86_64\ncreation_date: soon\n",
            "architecture: x86_64\njust words\n",
            "architecture: x86_64\nproperties: [a, b]\n",
        ] {
            assert!(matches!(metadata(bad), Err(Error::Invalid(_))), "{bad:?}");
        }
    }

    #[test]
    fn long_names_and_pax_headers_are_skipped_not_read() {
        // Read whole (as the tar crate does unless told otherwise), a 1 MiB
        // GNU long name or PAX header would be held in memory and would
        // rename the entry after it.
        for kind in [tar::EntryType::GNULongName, tar::EntryType::XHeader] {
            let mut out = Vec::new();
            {
                let mut b = tar::Builder::new(&mut out);
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(kind);
                h.set_size(1 << 20);
                let filler = format!("path={}\n", "x".repeat(100));
                let data = filler.bytes().cycle().take(1 << 20).collect::<Vec<u8>>();
                b.append_data(&mut h, "././@LongLink", &data[..]).unwrap();
                let yaml = b"architecture: x86_64\n";
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(yaml.len() as u64);
                b.append_data(&mut h, "metadata.yaml", &yaml[..]).unwrap();
                b.finish().unwrap();
            }
            let m = entries(&mut &out[..], &mut |_, _| Ok(false)).unwrap();
            assert_eq!(m.architecture, "x86_64", "{kind:?}");
        }
    }

    #[test]
    fn body_kinds_by_their_first_bytes() {
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(kind_of(&tar), Kind::Tar);
        assert_eq!(kind_of(b"QFI\xfb\x00\x00\x00\x03"), Kind::Disk);
        assert_eq!(kind_of(b""), Kind::Disk);
        assert_eq!(kind_of(b"\x1f\x8b\x08"), Kind::Compressed("gzip"));
        assert_eq!(kind_of(b"\xfd7zXZ\x00\x00"), Kind::Compressed("xz"));
        assert_eq!(kind_of(b"\x28\xb5\x2f\xfd"), Kind::Compressed("zstd"));
    }

    #[test]
    fn content_types_and_headers() {
        assert_eq!(boundary("application/octet-stream").unwrap(), None);
        assert_eq!(
            boundary("multipart/form-data; boundary=abc123").unwrap(),
            Some("abc123".into())
        );
        assert_eq!(
            boundary("Multipart/Form-Data; charset=x; boundary=\"a b\"").unwrap(),
            Some("a b".into())
        );
        for bad in [
            "multipart/form-data",
            "multipart/form-data; boundary=",
            &format!("multipart/form-data; boundary={}", "x".repeat(71)),
        ] {
            assert!(boundary(bad).is_err(), "{bad:?}");
        }
        let up = Upload::new(
            "application/octet-stream",
            &[
                (
                    "properties".into(),
                    "os=Debian&description=a+b%2Fc&os=x&bad=%zz".into(),
                ),
                ("aliases".into(), "one, two,,".into()),
                ("fingerprint".into(), "ABC".into()),
            ],
        );
        assert_eq!(up.properties["os"], "Debian");
        assert_eq!(up.properties["description"], "a b/c");
        assert_eq!(up.properties["bad"], "%zz");
        assert_eq!(up.aliases, ["one", "two"]);
        assert_eq!(up.fingerprint.as_deref(), Some("abc"));
        assert_eq!(
            form_name("form-data; name=\"rootfs.img\"; filename=\"disk.qcow2\"").as_deref(),
            Some("rootfs.img")
        );
        assert_eq!(form_name("attachment; name=\"x\""), None);
    }

    fn multipart(parts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = b"preamble".to_vec();
        for (name, data) in parts {
            out.extend_from_slice(
                format!("\r\n--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"f\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
            );
            out.extend_from_slice(data);
        }
        out.extend_from_slice(b"\r\n--XyZ--\r\n");
        out
    }

    #[test]
    fn multipart_parts_are_read_across_reads() {
        // Content holding most of a delimiter, and a one-byte reader, so
        // that the delimiter is split across reads.
        let rootfs = b"data\r\n--XyNot the end\r\n--Xy".repeat(100);
        let body = multipart(&[("metadata", b"META"), ("rootfs.img", &rootfs)]);
        struct OneByte<'a>(&'a [u8]);
        impl Read for OneByte<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                match (self.0.split_first(), out.first_mut()) {
                    (Some((b, rest)), Some(o)) => {
                        *o = *b;
                        self.0 = rest;
                        Ok(1)
                    }
                    _ => Ok(0),
                }
            }
        }
        let mut p = Parts::new(OneByte(&body), "XyZ");
        p.copy(&mut io::sink(), None, u64::MAX).unwrap();
        assert_eq!(p.head().unwrap().as_deref(), Some("metadata"));
        let mut meta = Vec::new();
        p.copy(&mut meta, None, 16).unwrap();
        assert_eq!(meta, b"META");
        assert_eq!(p.head().unwrap().as_deref(), Some("rootfs.img"));
        let mut got = Vec::new();
        p.copy(&mut got, None, u64::MAX).unwrap();
        assert_eq!(got, rootfs);
        assert_eq!(p.head().unwrap(), None);
        // Truncated before the closing delimiter, or a part over its bound.
        let cut = &body[..body.len() - 12];
        let mut p = Parts::new(cut, "XyZ");
        p.copy(&mut io::sink(), None, u64::MAX).unwrap();
        p.head().unwrap();
        p.copy(&mut io::sink(), None, u64::MAX).unwrap();
        p.head().unwrap();
        assert!(p.copy(&mut io::sink(), None, u64::MAX).is_err());
        let mut p = Parts::new(body.as_slice(), "XyZ");
        p.copy(&mut io::sink(), None, u64::MAX).unwrap();
        p.head().unwrap();
        assert!(p.copy(&mut io::sink(), None, 3).is_err());
    }
}
