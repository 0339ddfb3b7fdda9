//! Entry points for the fuzz targets of `fuzz/`: each takes arbitrary bytes
//! and feeds them to the code that reads that input from a peer, a file or a
//! client, the way the daemon or the client does. Built only for fuzzing
//! (`--cfg fuzzing`, which cargo-fuzz sets) and for the unit tests, which
//! replay the committed corpora and every input a fuzzer once crashed on
//! (`fuzz/corpus/`, `fuzz/regressions/`); the shipped binary has none of it.
//!
//! An entry point may return errors of the code it calls: only a panic, an
//! abort or a hang is a finding.

#![allow(missing_docs, reason = "one line per target says what it feeds")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The names of the targets, as `fuzz/fuzz_targets/<name>.rs` has them.
pub const TARGETS: &[&str] = &[
    "aa",
    "http",
    "json",
    "pki",
    "preseed",
    "qga",
    "qmp",
    "tokens",
    "websocket",
];

/// Runs target `name` on `data`; false if there is no such target.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "aa" => aa(data),
        "http" => http(data),
        "json" => json(data),
        "pki" => pki(data),
        "preseed" => preseed(data),
        "qga" => qga(data),
        "qmp" => qmp(data),
        "tokens" => tokens(data),
        "websocket" => websocket(data),
        _ => return false,
    }
    true
}

/// A scratch directory of this process, made once.
fn scratch() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        // Millions of runs: only errors are worth a line.
        #[cfg(fuzzing)]
        crate::log::set_level(crate::log::LogLevel::Error);
        let dir = std::env::temp_dir().join(format!("kvmbox-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(dir.join("state/vm"));
        let _ = std::fs::write(dir.join("state/vm/disk.img"), b"");
        let _ = std::fs::write(dir.join("disk.img"), b"");
        dir
    })
}

/// HTTP requests as a connection reads them, pipelined, with bodies framed
/// by Content-Length or chunked; then the same bytes as a response.
pub fn http(data: &[u8]) {
    let limits = crate::http::Limits {
        max_head: 4096,
        max_body: 64 * 1024,
    };
    smol::block_on(async {
        let mut stream = smol::io::Cursor::new(data);
        let mut buf = Vec::new();
        while let Ok(req) = crate::http::read_request(&mut stream, &mut buf, limits).await {
            let _ = req.query_param("recursion");
            let _ = req.lxd_header("type");
        }
    });
    let _ = crate::http::read_response(&mut std::io::Cursor::new(data), limits);
}

fn parse<T: DeserializeOwned>(data: &[u8]) -> Option<T> {
    serde_json::from_slice(data).ok()
}

fn check_config(config: &BTreeMap<String, String>) {
    for (k, v) in config {
        let _ = crate::vmm::instances::check_config(k, v);
    }
}

fn check_devices(devices: &BTreeMap<String, crate::wire::Device>) {
    for (name, dev) in devices {
        let _ = crate::vmm::instances::check_device(name, dev);
    }
}

/// Every JSON body the API takes, checked as its handler checks it before
/// anything is done; a stored instance record; an answer as the client
/// opens it.
pub fn json(data: &[u8]) {
    use crate::wire::*;
    if let Some(b) = parse::<InstancesPost>(data) {
        check_config(&b.config);
        check_devices(&b.devices);
        let _ = crate::vmm::qemu::validate_name(&b.name);
    }
    if let Some(b) = parse::<InstancePut>(data) {
        check_config(&b.config.unwrap_or_default());
        check_devices(&b.devices.unwrap_or_default());
    }
    let _ = parse::<StatePut>(data);
    let _ = parse::<SnapshotsPost>(data);
    let _ = parse::<SnapshotPost>(data);
    let _ = parse::<ImagesPost>(data);
    if let Some(b) = parse::<CertificatesPost>(data) {
        let _ = check_projects(&b.projects.unwrap_or_default());
        pki(b.certificate.as_bytes());
    }
    if let Some(b) = parse::<CertificatePut>(data) {
        let _ = check_projects(&b.projects.unwrap_or_default());
    }
    let _ = parse::<ServerPut>(data);
    let _ = parse::<ExecPost>(data);
    let _ = parse::<ConsolePost>(data);
    if let Some(rec) = parse::<crate::vmm::instances::Record>(data) {
        let _ = rec.validate();
    }
    let _ = open::<serde_json::Value>(200, data);
    let _ = open::<serde_json::Value>(400, data);
}

/// A VM definition as the AppArmor helper reads it on stdin, checked and
/// rendered into a profile; an existing profile as the helper reads it.
pub fn aa(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = kvmbox_aa::profile_state(Some(text));
    let _ = kvmbox_aa::Uuid::parse(text);
    let host = kvmbox_aa::Host {
        profile_dir: scratch().join("profiles"),
        state_dir: scratch().join("state"),
    };
    // `STATE` stands for the state directory, whose name changes with each
    // run, so that inputs can name the files inside it.
    let text = text.replace("STATE", &host.state_dir.display().to_string());
    let Ok(inst) = serde_json::from_str::<kvmbox_aa::Instance>(&text) else {
        return;
    };
    let extra = inst.disks.first().cloned();
    let others = BTreeMap::from([(scratch().join("disk.img").display().to_string(), true)]);
    for extra in [None, extra.as_ref()] {
        if let Ok(v) = kvmbox_aa::check(&inst, &host, extra, &others) {
            let _ = kvmbox_aa::files_list(&v);
            let template = include_str!("../profiles/TEMPLATE.qemu");
            let _ = kvmbox_aa::profile_from_template(template, "TEMPLATE.qemu", &v, "/files");
        }
    }
}

/// A preseed document, parsed and checked.
pub fn preseed(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(p) = crate::preseed::Preseed::parse(text) {
            for step in p.steps() {
                let _ = step.describe();
            }
        }
    }
}

/// Certificates and keys in PEM or DER, everything read from them, and a
/// trust store file holding them.
pub fn pki(data: &[u8]) {
    use crate::pki::{Cert, Key};
    let _ = Key::from_pem(data);
    let mut certs = Cert::all_from_pem(data).unwrap_or_default();
    if let Ok(c) = Cert::from_der(data) {
        certs.push(c);
    }
    for c in &certs {
        let _ = c.fingerprint();
        let _ = c.to_pem();
        let _ = c.validity();
        let _ = c.key_fingerprint();
        let _ = c.info();
        let _ = c.valid_for_name("kvmbox.example");
        let _ = c.verify(&certs);
    }
    let path = scratch().join("trust.json");
    if std::fs::write(&path, data).is_ok() {
        if let Ok(store) = crate::server::trust::TrustStore::open(&path) {
            for c in &certs {
                let _ = store.is_denied(c);
                let _ = store.lookup(c, true);
            }
            let _ = store.entries().count();
        }
    }
}

/// A join token as `kvmbox remote add` reads it, and the daemon's file of
/// pending tokens.
pub fn tokens(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::server::tokens::JoinToken::decode(text);
    }
    let path = scratch().join("tokens.json");
    if std::fs::write(&path, data).is_ok() {
        if let Ok(mut t) = crate::server::tokens::Tokens::open(&path) {
            let _ = t.redeem("secret", 0);
        }
    }
}

/// One end of a socket pair whose peer sends `data`, then ends its side.
fn peer_sending(data: &[u8]) -> Option<(smol::net::unix::UnixStream, std::thread::JoinHandle<()>)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().ok()?;
    let data = data.to_vec();
    // A thread, so that replies longer than the socket buffer flow while
    // the client reads; what the client writes is read and dropped.
    let peer = std::thread::spawn(move || {
        use std::io::Write;
        let mut theirs = theirs;
        let _ = theirs.write_all(&data);
        let _ = theirs.shutdown(std::net::Shutdown::Write);
        let _ = std::io::copy(&mut theirs, &mut std::io::sink());
    });
    let ours = smol::net::unix::UnixStream::try_from(ours).ok()?;
    Some((ours, peer))
}

/// What a QEMU may send on QMP: the greeting, replies and events.
pub fn qmp(data: &[u8]) {
    let Some((stream, peer)) = peer_sending(data) else {
        return;
    };
    smol::block_on(async {
        use crate::vmm::qmp::Qmp;
        let limit = Duration::from_secs(5);
        let Ok(qmp) = Qmp::over(stream, limit).await else {
            return;
        };
        let _ = qmp.version();
        let Ok(mut qmp) = qmp.negotiate().await else {
            return;
        };
        let _ = qmp.query_status().await;
        let _ = qmp.query_pci().await;
        let _ = qmp.take_events();
        let _ = qmp
            .wait_event(Duration::from_millis(10), "an event", |e| {
                e.name == "SHUTDOWN"
            })
            .await;
        let _ = qmp.device_del("nic0").await;
        let _ = qmp.quit().await;
    });
    let _ = peer.join();
}

/// What a guest agent may send: the answer to the first sync, then `data`
/// as the replies to a request chosen by its first byte.
pub fn qga(data: &[u8]) {
    use crate::vmm::qga::{Agent, ExecRequest};
    let Some((&op, replies)) = data.split_first() else {
        return;
    };
    let path = scratch().join(format!("qga-{:?}.sock", std::thread::current().id()));
    let _ = std::fs::remove_file(&path);
    let Ok(listener) = smol::net::unix::UnixListener::bind(&path) else {
        return;
    };
    let agent_side = async {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        // The sync request: 0xFF, then a JSON line with the id to echo.
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).await.is_ok_and(|n| n == 1) && b != *b"\n" {
            line.extend_from_slice(&b);
        }
        let id = serde_json::from_slice::<serde_json::Value>(line.get(1..).unwrap_or_default())
            .ok()
            .and_then(|v| v.pointer("/arguments/id").and_then(|i| i.as_i64()))
            .unwrap_or(0);
        let mut out = vec![0xFF];
        out.extend_from_slice(format!("{{\"return\": {id}}}\n").as_bytes());
        out.extend_from_slice(replies);
        let _ = s.write_all(&out).await;
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = [0u8; 4096];
        while s.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    };
    let client_side = async {
        let agent = Agent::new(&path, Duration::from_secs(5));
        match op % 4 {
            0 => drop(agent.ping().await),
            1 => {
                let mut req = ExecRequest::new(vec!["true".into()]);
                req.timeout = Duration::from_millis(50);
                drop(agent.exec(&req).await)
            }
            2 => drop(agent.read_file("/etc/hostname", 1 << 16).await),
            _ => drop(agent.write_file("/tmp/f", &[7u8; 100]).await),
        }
    };
    // The client's requests are what is run: the agent's side serves
    // them for as long as they last, not longer (a request refused before
    // it connects would leave it waiting).
    let agent_side = async {
        agent_side.await;
        smol::future::pending::<()>().await
    };
    smol::block_on(smol::future::or(client_side, agent_side));
}

/// A peer that sends `data` and takes whatever is written to it.
struct Feed<'a>(smol::io::Cursor<&'a [u8]>);

impl AsyncRead for Feed<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Feed<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Websocket frames as the daemon reads them from a client (fragments put
/// together, control frames answered), and as the client reads them from
/// the daemon.
pub fn websocket(data: &[u8]) {
    let _ = scratch();
    use crate::websocket::{hold, Link};
    let (link, ends) = Link::pair(true);
    if let Some(session) = link.take() {
        let mut feed = Feed(smol::io::Cursor::new(data));
        let serve = async {
            hold(&mut feed, Duration::from_secs(5), "fuzz", || true, session).await;
        };
        let input = ends.input.clone();
        let drain = async move { while input.recv().await.is_ok() {} };
        smol::block_on(smol::future::zip(serve, drain));
    }
    drop(ends);
    let mut rest = data;
    while let Ok(Some((_, _, used))) = crate::client::ws::frame(rest) {
        match rest.get(used..) {
            Some(r) if used > 0 => rest = r,
            _ => break,
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a failed test should panic"
)]
mod tests {
    use super::*;

    /// Every committed seed and every input a fuzzer once found a fault
    /// with goes through its target again: a fixed fault stays fixed.
    #[test]
    fn corpora_and_regressions_replay() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut replayed = 0;
        for kind in ["corpus", "regressions"] {
            let Ok(dirs) = std::fs::read_dir(root.join(kind)) else {
                continue;
            };
            for dir in dirs {
                let dir = dir.unwrap();
                let target = dir.file_name().into_string().unwrap();
                assert!(TARGETS.contains(&target.as_str()), "{kind}/{target}");
                for input in std::fs::read_dir(dir.path()).unwrap() {
                    let input = input.unwrap().path();
                    let data = std::fs::read(&input).unwrap();
                    eprintln!("{}", input.display());
                    assert!(run(&target, &data));
                    replayed += 1;
                }
            }
        }
        let _ = std::fs::remove_dir_all(scratch());
        assert!(replayed >= TARGETS.len(), "only {replayed} inputs replayed");
    }
}
