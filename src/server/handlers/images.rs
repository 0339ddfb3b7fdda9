//! `/1.0/images` and `/1.0/images/aliases`, in LXD's shapes: the image
//! store as `lxc image list`, `lxc image alias`, `lxc image import` and
//! `lxc init` use it. Images come from a host file the caller may read, or
//! are uploaded (streamed to the store as they come, see [`upload`]); an
//! image has any number of aliases, each unique in the store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::instances::{too_slow, OPEN_TIMEOUT};
use std::io::Write;

use crate::hostfile::{self, Need};
use crate::http::{Body, ReadError, Request, Response, Stream};
use crate::log::log;
use crate::server::auth::{opener, Identity};
use crate::server::reply::{body, error, fail, operation, sync, told};
use crate::server::state::Shared;
use crate::vmm::instances::upload::{self, Upload};
use crate::vmm::instances::{image_free_space, AliasChange, Image, ImageAliases, Staged};
use crate::wire::{path, AliasEntry, AliasInfo, ImageInfo, ImagesPost};

/// `img` as LXD shows an image.
fn info(img: &Image) -> ImageInfo {
    let created = crate::clock::rfc3339(img.created_at);
    let mut properties = img.properties.clone();
    properties.insert("format".to_string(), img.format.clone());
    ImageInfo {
        fingerprint: img.fingerprint.clone(),
        aliases: img
            .aliases
            .iter()
            .map(|(name, description)| AliasInfo {
                name: name.clone(),
                description: description.clone(),
            })
            .collect(),
        architecture: if img.architecture.is_empty() {
            std::env::consts::ARCH.into()
        } else {
            img.architecture.clone()
        },
        kind: "virtual-machine".into(),
        size: img.size,
        filename: if img.filename.is_empty() {
            format!("{}.img", img.fingerprint)
        } else {
            img.filename.clone()
        },
        properties,
        public: false,
        auto_update: false,
        cached: false,
        profiles: vec!["default".into()],
        uploaded_at: created.clone(),
        created_at: created,
        expires_at: crate::clock::rfc3339(0),
        last_used_at: crate::clock::rfc3339(0),
    }
}

fn alias_of(name: &str, t: &ImageAliases) -> AliasEntry {
    AliasEntry {
        name: name.to_string(),
        description: t.descriptions.get(name).cloned().unwrap_or_default(),
        target: t.targets.get(name).cloned().unwrap_or_default(),
        kind: "virtual-machine".into(),
    }
}

/// `GET /1.0/images[?recursion=1]`.
pub(crate) fn list(shared: &Shared, recursion: bool) -> Response {
    match shared.instances.images() {
        Ok(list) if recursion => sync(json!(list.iter().map(info).collect::<Vec<_>>())),
        Ok(list) => sync(json!(list
            .iter()
            .map(|i| path::image(&i.fingerprint))
            .collect::<Vec<_>>())),
        Err(e) => fail(&e),
    }
}

/// `GET /1.0/images/<fingerprint or a unique prefix of it>`.
pub(crate) fn get(shared: &Shared, prefix: &str) -> Response {
    shared
        .instances
        .image(prefix)
        .map_or_else(|e| fail(&e), |img| sync(json!(info(&img))))
}

/// `DELETE /1.0/images/<fingerprint or prefix>`: an operation, as in LXD;
/// refused at once while an instance uses the image.
pub(crate) fn delete(shared: &Arc<Shared>, prefix: &str) -> Response {
    let ex = match shared.instances.executor() {
        Ok(ex) => ex,
        Err(e) => return fail(&e),
    };
    let img = match shared.instances.delete_image(prefix) {
        Ok(img) => img,
        Err(e) => return fail(&e),
    };
    let resources = BTreeMap::from([("images".to_string(), vec![path::image(&img.fingerprint)])]);
    let op = shared
        .ops
        .spawn(&ex, "Deleting image", resources, async { Ok(json!({})) });
    operation(&op)
}

/// `GET /1.0/images/aliases[?recursion=1]`.
pub(crate) fn aliases(shared: &Shared, recursion: bool) -> Response {
    match shared.instances.image_aliases() {
        Ok(t) if recursion => sync(json!(t
            .targets
            .keys()
            .map(|n| alias_of(n, &t))
            .collect::<Vec<_>>())),
        Ok(t) => sync(json!(t
            .targets
            .keys()
            .map(|n| path::image_alias(n))
            .collect::<Vec<_>>())),
        Err(e) => fail(&e),
    }
}

/// `GET /1.0/images/aliases/<name>`.
pub(crate) fn alias(shared: &Shared, name: &str) -> Response {
    match shared.instances.image_aliases() {
        Ok(t) if t.targets.contains_key(name) => sync(json!(alias_of(name, &t))),
        Ok(_) => error(404, &format!("image alias {name:?} not found")),
        Err(e) => fail(&e),
    }
}

/// A string field of an alias request (LXD's `ImageAliasesPost`,
/// `ImageAliasesEntryPut`, `ImageAliasesEntryPost`): `None` when left out.
fn field(b: &Value, key: &str) -> Result<Option<String>, Response> {
    match b.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(error(400, &format!("{key} must be a string"))),
    }
}

fn alias_body(req: &Request) -> Result<[Option<String>; 4], Response> {
    let b: Value = body(req)?;
    if !b.is_object() {
        return Err(error(400, "the body must be a JSON object"));
    }
    Ok([
        field(&b, "name")?,
        field(&b, "target")?,
        field(&b, "description")?,
        field(&b, "type")?,
    ])
}

fn changed(shared: &Shared, change: Result<AliasChange, Response>) -> Response {
    match change.map(|c| shared.instances.change_alias(c)) {
        Ok(Ok(())) => sync(json!({})),
        Ok(Err(e)) => fail(&e),
        Err(r) => r,
    }
}

/// `POST /1.0/images/aliases`: `{"name", "target", "description"}`.
pub(crate) fn alias_add(shared: &Shared, req: &Request) -> Response {
    changed(
        shared,
        alias_body(req).and_then(|[name, target, description, kind]| {
            // `container` or `virtual-machine`: all kvmbox's images are VMs.
            if kind.is_some_and(|k| !k.is_empty() && k != "virtual-machine") {
                return Err(error(400, "only virtual-machine images exist here"));
            }
            Ok(AliasChange::Add {
                name: name.unwrap_or_default(),
                target: target.unwrap_or_default(),
                description: description.unwrap_or_default(),
            })
        }),
    )
}

/// `DELETE /1.0/images/aliases/<name>`.
pub(crate) fn alias_delete(shared: &Shared, name: &str) -> Response {
    changed(shared, Ok(AliasChange::Delete { name: name.into() }))
}

/// `POST /1.0/images/aliases/<name>`: a new name, `{"name"}`.
pub(crate) fn alias_rename(shared: &Shared, name: &str, req: &Request) -> Response {
    changed(
        shared,
        alias_body(req).map(|[to, ..]| AliasChange::Rename {
            name: name.into(),
            to: to.unwrap_or_default(),
        }),
    )
}

/// `PUT` (`replace`: a description left out is emptied) or `PATCH`
/// `/1.0/images/aliases/<name>`: `{"target", "description"}`.
pub(crate) fn alias_update(shared: &Shared, name: &str, req: &Request, replace: bool) -> Response {
    changed(
        shared,
        alias_body(req).and_then(|[_, target, description, _]| {
            let target = target.filter(|t| !t.is_empty());
            if replace && target.is_none() {
                return Err(error(
                    400,
                    "give the alias a target (the image's fingerprint)",
                ));
            }
            Ok(AliasChange::Update {
                name: name.into(),
                target,
                description: description.or_else(|| replace.then(String::new)),
            })
        }),
    )
}

/// `POST /1.0/images` from a host file the caller may read.
pub(crate) async fn add(shared: &Arc<Shared>, id: &Identity, req: &Request) -> Response {
    let b: ImagesPost = match body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match b.source.kind.as_str() {
        "path" => from_path(shared, id, &b).await,
        "image" => super::pull::pull(shared, b),
        _ => error(
            400,
            "image sources are of type \"path\" or \"image\" (or upload the image)",
        ),
    }
}

/// `POST /1.0/images` with `{"source": {"type": "path", "path": …}}`.
async fn from_path(shared: &Arc<Shared>, id: &Identity, b: &ImagesPost) -> Response {
    let names: std::collections::BTreeSet<&str> =
        b.aliases.iter().map(|a| a.name.as_str()).collect();
    let [alias] = names.into_iter().collect::<Vec<_>>()[..] else {
        return error(400, "give exactly one alias");
    };
    if !b.source.path.is_absolute() {
        return error(400, "the image path must be absolute");
    }
    let who = match opener(id) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let source = b.source.path.clone();
    let opened = crate::rt::timed(
        OPEN_TIMEOUT,
        smol::unblock(move || hostfile::check(&source, &who, Need::Read)),
    )
    .await;
    let file = match opened {
        Some(Ok((file, _))) => file,
        Some(Err(e)) => return fail(&e),
        None => return too_slow(),
    };
    let ex = match shared.instances.executor() {
        Ok(ex) => ex,
        Err(e) => return fail(&e),
    };
    let (s, path, alias) = (shared.clone(), b.source.path.clone(), alias.to_string());
    let op = shared
        .ops
        .spawn_reporting(&ex, "Importing image", BTreeMap::new(), |p| async move {
            match s
                .instances
                .import_image(file, path, alias, move |m| p.set(m))
                .await
            {
                Ok(img) => {
                    log!(Info, "image {} imported", img.fingerprint);
                    Ok(done(&img))
                }
                Err(e) => Err(told(&e)),
            }
        });
    operation(&op)
}

/// What a finished import's operation says: LXD's `fingerprint` and
/// `size`, which `lxc image import` reads.
fn done(img: &Image) -> serde_json::Value {
    json!({"fingerprint": img.fingerprint, "size": img.size})
}

/// `POST /1.0/images` whose body is the image (see
/// [`crate::vmm::instances::upload`]): streamed to a file of its own in the
/// image store and hashed as it comes, never held in memory, bounded by
/// `images.max_upload_size` and the store's free space; each read bounded
/// by `timeout`. A body that stalls, ends early or goes past the bound
/// leaves nothing behind. The rest (reading the tarball or parts, probing,
/// naming) is the operation's.
pub(crate) async fn upload(
    shared: &Arc<Shared>,
    req: &Request,
    body: &mut Body<'_, Stream<'_>>,
    timeout: Duration,
) -> Response {
    let state = match shared.instances.state_dir() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let max = shared.settings().max_upload_size();
    let st = state.clone();
    let staging = smol::unblock(move || {
        let (staged, file) = Staged::new(&st)?;
        Ok::<_, crate::vmm::instances::Error>((staged, file, image_free_space(&st)?))
    });
    let (staged, mut file, free) = match staging.await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let bound = max.min(free);
    let too_large = || {
        error(
            413,
            &format!("the image is larger than the {bound} bytes an upload may be now (images.max_upload_size, free space)"),
        )
    };
    if body.limit(bound).is_err() {
        return too_large();
    }
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    // Written a MiB at a time, off the executor.
    let mut pending = Vec::new();
    let mut end = false;
    while !end {
        match crate::rt::timed(timeout, body.next()).await {
            Some(Ok(Some(c))) => {
                hash.update(&c);
                pending.extend_from_slice(&c);
            }
            Some(Ok(None)) => end = true,
            None => return error(408, "the upload stalled"),
            Some(Err(ReadError::Refused(413, _))) => return too_large(),
            Some(Err(ReadError::Refused(code, why))) => return error(code, why),
            Some(Err(e)) => return error(400, &format!("the upload did not arrive whole: {e}")),
        }
        if pending.len() >= 1 << 20 || end {
            let written = smol::unblock(move || {
                let r =
                    file.write_all(&pending)
                        .and_then(|()| if end { file.sync_all() } else { Ok(()) });
                pending.clear();
                (r, file, pending)
            })
            .await;
            if let (Err(e), ..) = written {
                return fail(&crate::vmm::instances::Error::host("write the upload", e));
            }
            (_, file, pending) = written;
        }
    }
    let ex = match shared.instances.executor() {
        Ok(ex) => ex,
        Err(e) => return fail(&e),
    };
    let fingerprint = crate::pki::hex(hash.finish().as_ref());
    let up = Upload::new(
        req.content_type.as_deref().unwrap_or_default(),
        &req.lxd_headers,
    );
    log!(Info, "image upload of {} bytes received", body.read());
    let op = shared
        .ops
        .spawn(&ex, "Importing image", BTreeMap::new(), async move {
            match smol::unblock(move || upload::ingest(&state, staged, fingerprint, up)).await {
                Ok(img) => {
                    log!(Info, "image {} uploaded", img.fingerprint);
                    Ok(done(&img))
                }
                Err(e) => Err(told(&e)),
            }
        });
    operation(&op)
}
