use super::*;
use serde_json::{json, Value};

const FP: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SHA: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const MAX: u64 = 1 << 40;

fn version(fp: &str, dir: &str) -> Value {
    json!({"items": {
        "lxd.tar.xz": {"ftype": "lxd.tar.xz", "path": format!("{dir}/lxd.tar.xz"),
            "sha256": SHA, "size": 100, "combined_disk-kvm-img_sha256": fp},
        "disk.qcow2": {"ftype": "disk-kvm.img", "path": format!("{dir}/disk.qcow2"),
            "sha256": SHA, "size": 1000},
        "root.tar.xz": {"ftype": "root.tar.xz", "path": format!("{dir}/rootfs.tar.xz"),
            "sha256": SHA, "size": 10}
    }})
}

fn catalogue(versions: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"format": "products:1.0", "products": {
        "debian:12:amd64:default": {"aliases": "debian/12/default,debian/12",
            "arch": "amd64", "os": "Debian", "versions": versions.clone()},
        "debian:12:arm64:default": {"aliases": "debian/12/default,debian/12",
            "arch": "arm64", "versions": versions}
    }}))
    .unwrap()
}

fn find_amd64(doc: &[u8], wanted: &str) -> Option<Found> {
    find("images.json", doc, wanted, "amd64", MAX).unwrap()
}

#[test]
fn picks_the_newest_vm_image_for_the_alias_and_arch() {
    let other = "c".repeat(64);
    let doc = catalogue(json!({
        "20240101_05:24": version(FP, "images/d/1"),
        "20240301_05:24": version(&other, "images/d/3"),
        "2024": version(&"d".repeat(64), "images/d/short"),
    }));
    let f = find_amd64(&doc, "debian/12").unwrap();
    assert_eq!(f.fingerprint, other);
    assert_eq!(f.serial, "20240301_05:24");
    assert_eq!(f.disk.path, "images/d/3/disk.qcow2");
    assert_eq!(f.meta.path, "images/d/3/lxd.tar.xz");
    assert_eq!(f.name, "debian/12/default");
    // With the architecture, and another architecture's own.
    assert_eq!(
        find_amd64(&doc, "debian/12/amd64").unwrap().fingerprint,
        other
    );
    assert!(find_amd64(&doc, "debian/12/arm64").is_none());
    let arm = find("x", &doc, "debian/12/arm64", "arm64", MAX).unwrap();
    assert_eq!(arm.unwrap().fingerprint, other);
    // By fingerprint (a prefix of eight or more hex digits), older too.
    assert_eq!(find_amd64(&doc, &FP[..12]).unwrap().fingerprint, FP);
    assert_eq!(
        find_amd64(&doc, &FP.to_uppercase()).unwrap().fingerprint,
        FP
    );
    assert!(find_amd64(&doc, &FP[..4]).is_none());
    assert!(find_amd64(&doc, "debian").is_none());
    assert!(find_amd64(&doc, "").is_none());
}

#[test]
fn a_fingerprint_prefix_of_two_images_is_refused() {
    let a = format!("{}1", "a".repeat(63));
    let doc = catalogue(json!({
        "20240101": version(FP, "i/1"),
        "20240102": version(&a, "i/2"),
    }));
    assert!(matches!(
        find("x", &doc, "aaaaaaaaaa", "amd64", MAX),
        Err(Error::Ambiguous(_))
    ));
}

#[test]
fn hostile_entries_are_skipped() {
    let mut bad_paths = Vec::new();
    for path in [
        "/etc/passwd",
        "../secret",
        "images/../../x",
        "images//x",
        "images/./x",
        "images/x y",
        "images/x\r\nHost: evil",
        "images/x?y",
        "images/x#y",
        "https://evil.example/x",
        "images/%2e%2e/x",
        "",
    ] {
        let mut v = version(FP, "ok");
        v["items"]["disk.qcow2"]["path"] = json!(path);
        bad_paths.push(v);
    }
    let mut hostile = Vec::new();
    for (item, key, value) in [
        ("disk.qcow2", "sha256", json!("short")),
        ("disk.qcow2", "sha256", json!(SHA.to_uppercase())),
        ("disk.qcow2", "sha256", json!(format!("{}g", &SHA[1..]))),
        ("disk.qcow2", "size", json!(0)),
        ("disk.qcow2", "size", json!(MAX + 1)),
        ("lxd.tar.xz", "combined_disk-kvm-img_sha256", json!("")),
        (
            "lxd.tar.xz",
            "combined_disk-kvm-img_sha256",
            json!("../../etc"),
        ),
        ("lxd.tar.xz", "path", json!("../lxd.tar.xz")),
        ("disk.qcow2", "ftype", json!("disk1.img")),
        ("lxd.tar.xz", "ftype", json!("lxd_combined.tar.gz")),
    ] {
        let mut v = version(FP, "ok");
        v["items"][item][key] = value;
        hostile.push(v);
    }
    for v in bad_paths.into_iter().chain(hostile) {
        let doc = catalogue(json!({ "20240101": v.clone() }));
        assert_eq!(find_amd64(&doc, "debian/12"), None, "{v}");
    }
    // The same entry, untouched, is found: the checks above are what
    // refused them.
    let doc = catalogue(json!({ "20240101": version(FP, "ok") }));
    assert!(find_amd64(&doc, "debian/12").is_some());
}

#[test]
fn documents_that_are_not_catalogues_fail() {
    for doc in [&b""[..], b"{", b"{\"products\": {", b"\xff"] {
        assert!(
            matches!(
                find("x", doc, "debian/12", "amd64", MAX),
                Err(Error::Json(..))
            ),
            "{}",
            String::from_utf8_lossy(doc)
        );
    }
    for doc in [&b"[]"[..], b"null", b"7", b"\"products\""] {
        assert!(
            matches!(
                find("x", doc, "debian/12", "amd64", MAX),
                Err(Error::NotCatalogue(_))
            ),
            "{}",
            String::from_utf8_lossy(doc)
        );
    }
    // Shapes that are wrong inside: nothing usable is found.
    for doc in [
        &br#"{"products": []}"#[..],
        br#"{"products": {"p": {"arch": 7, "aliases": "debian/12"}}}"#,
        br#"{"products": {"p": {"arch": "amd64", "aliases": ["debian/12"]}}}"#,
        br#"{"products": {"p": {"arch": "amd64", "aliases": "debian/12", "versions": []}}}"#,
        br#"{"products": {"p": {"arch": "amd64", "aliases": "debian/12",
            "versions": {"20240101": {"items": {"i": {"size": -1}}}}}}}"#,
        // Nothing for this host's architecture.
        br#"{"products": {"p": {"aliases": "debian/12", "arch": "s390x", "versions": {}}}}"#,
    ] {
        assert_eq!(
            find("x", doc, "debian/12", "amd64", MAX).unwrap(),
            None,
            "{}",
            String::from_utf8_lossy(doc)
        );
    }
    // A size that is not a whole number of bytes is refused too.
    for size in [json!(-1), json!(1.5), json!("1000"), json!(null)] {
        let mut v = version(FP, "ok");
        v["items"]["disk.qcow2"]["size"] = size.clone();
        let doc = catalogue(json!({ "20240101": v }));
        assert_eq!(find_amd64(&doc, "debian/12"), None, "{size}");
    }
}

#[test]
fn the_index_names_products_files() {
    let index = json!({"format": "index:1.0", "index": {
        "images": {"datatype": "image-downloads", "path": "streams/v1/images.json",
            "products": ["debian:12:amd64:default"]},
        "empty": {"datatype": "image-downloads", "path": "streams/v1/empty.json", "products": []},
        "other": {"datatype": "image-ids", "path": "streams/v1/ids.json", "products": ["x"]},
        "evil": {"datatype": "image-downloads", "path": "../../etc/passwd", "products": ["x"]},
        "abs": {"datatype": "image-downloads", "path": "/etc/passwd", "products": ["x"]}
    }});
    let paths = products_paths(&serde_json::to_vec(&index).unwrap()).unwrap();
    assert_eq!(paths, vec!["streams/v1/images.json".to_string()]);
    for bad in [
        &b"{}"[..],
        b"{\"index\": {}}",
        b"not json",
        b"{\"index\": []}",
    ] {
        assert!(
            products_paths(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let only_evil = json!({"index": {"e": {"datatype": "image-downloads",
        "path": "a/../../b", "products": ["x"]}}});
    assert!(matches!(
        products_paths(&serde_json::to_vec(&only_evil).unwrap()),
        Err(Error::NoProducts)
    ));
}

#[test]
fn architectures_by_lxds_names() {
    assert_eq!(arch_name("x86_64"), "amd64");
    assert_eq!(arch_name("aarch64"), "arm64");
    assert_eq!(arch_name("arm"), "armhf");
    assert_eq!(arch_name("riscv64"), "riscv64");
    assert!(same_arch("x86_64", "amd64") && same_arch("amd64", "amd64"));
    assert!(!same_arch("i386", "amd64") && !same_arch("", "amd64"));
}
