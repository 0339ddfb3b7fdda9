//! `/1.0/images` and `/1.0/images/aliases`, in LXD's shapes: the image
//! store as `lxc image list`, `lxc image alias list` and `lxc init`
//! read it. An image has one alias, given when it is imported.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::json;

use super::instances::{too_slow, OPEN_TIMEOUT};
use crate::hostfile::{self, Need};
use crate::http::{Request, Response};
use crate::log::log;
use crate::server::auth::{opener, Identity};
use crate::server::reply::{body, error, fail, operation, sync, told};
use crate::server::state::Shared;
use crate::vmm::instances::Image;
use crate::wire::{path, AliasEntry, AliasInfo, ImageInfo, ImagesPost};

/// `img` as LXD shows an image.
fn info(img: &Image) -> ImageInfo {
    let created = crate::clock::rfc3339(img.created_at);
    ImageInfo {
        fingerprint: img.fingerprint.clone(),
        aliases: vec![AliasInfo {
            name: img.alias.clone(),
            description: String::new(),
        }],
        architecture: std::env::consts::ARCH.into(),
        kind: "virtual-machine".into(),
        size: img.size,
        filename: format!("{}.img", img.fingerprint),
        properties: BTreeMap::from([("format".to_string(), img.format.clone())]),
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

fn alias_of(img: &Image) -> AliasEntry {
    AliasEntry {
        name: img.alias.clone(),
        description: String::new(),
        target: img.fingerprint.clone(),
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
    match shared.instances.images() {
        Ok(list) if recursion => sync(json!(list.iter().map(alias_of).collect::<Vec<_>>())),
        Ok(list) => sync(json!(list
            .iter()
            .map(|i| path::image_alias(&i.alias))
            .collect::<Vec<_>>())),
        Err(e) => fail(&e),
    }
}

/// `GET /1.0/images/aliases/<name>`.
pub(crate) fn alias(shared: &Shared, name: &str) -> Response {
    match shared.instances.images() {
        Ok(list) => match list.iter().find(|i| i.alias == name) {
            Some(img) => sync(json!(alias_of(img))),
            None => error(404, &format!("image alias {name:?} not found")),
        },
        Err(e) => fail(&e),
    }
}

/// `POST /1.0/images` from a host file the caller may read.
pub(crate) async fn add(shared: &Arc<Shared>, id: &Identity, req: &Request) -> Response {
    let b: ImagesPost = match body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match b.source.kind.as_str() {
        "path" => {}
        "image" => return super::pull::pull(shared, b),
        _ => return error(400, "image sources are of type \"path\" or \"image\""),
    }
    let names: BTreeSet<&str> = b.aliases.iter().map(|a| a.name.as_str()).collect();
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
                    log!(Info, "image {} imported as {}", img.fingerprint, img.alias);
                    Ok(json!(img))
                }
                Err(e) => Err(told(&e)),
            }
        });
    operation(&op)
}
