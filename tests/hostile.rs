//! Hostile input against a running daemon: each is refused, and the daemon
//! keeps serving afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a failed test should panic

mod common;
#[path = "support/daemon.rs"]
mod daemon;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::program;
use daemon::Daemon;
use kvmbox::{Client, ClientIdentity};

/// The group the daemon runs with: root's when privileged, else our own.
fn start(dir: &Path, extra: &[&str]) -> Daemon {
    let mut args = vec!["--timeout", "2", "--log-level", "debug"];
    if daemon::is_root() {
        args.extend(["--group", "root"]);
    }
    args.extend(extra);
    Daemon::start(&common::bin(), dir, &args)
}

fn client(d: &Daemon, conf: &Path) -> Client {
    let id = ClientIdentity::load_or_create(conf).unwrap();
    Client::connect_unix(&d.socket, &id).unwrap()
}

/// The daemon still answers a normal request.
fn still_serves(d: &mut Daemon, conf: &Path) {
    assert!(d.alive(), "daemon died: {}", d.log_text());
    let (status, body) = client(d, conf).request("GET", "/", None).unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["metadata"][0], "/1.0");
}

/// Reads until EOF or `limit`, returning what came.
fn read_all(r: &mut impl Read, limit: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    (out, start.elapsed())
}

fn openssl(d: &Daemon, cert: Option<(&Path, &Path)>, request: &str) -> String {
    let mut cmd = program("openssl")
        .args(["s_client", "-quiet", "-unix"])
        .arg(&d.socket);
    if let Some((c, k)) = cert {
        cmd = cmd.arg("-cert").arg(c).arg("-key").arg(k);
    }
    cmd.stdin(request.to_string()).run().stdout()
}

#[test]
fn hostile_input_is_refused_and_the_daemon_survives() {
    let scratch = common::scratch();
    let dir = scratch.path();
    let conf = dir.join("conf");
    let mut d = start(dir, &[]);
    still_serves(&mut d, &conf);

    // Garbage bytes where a TLS handshake belongs: the connection is closed.
    let mut raw = UnixStream::connect(&d.socket).unwrap();
    raw.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    raw.write_all(b"\x00\xffGET / HTTP/1.1\r\n\r\n garbage \x16\x03\x01\xff\xff")
        .unwrap();
    let (got, took) = read_all(&mut raw, Duration::from_secs(10));
    assert!(
        took < Duration::from_secs(5),
        "garbage connection left open"
    );
    assert!(!String::from_utf8_lossy(&got).contains("HTTP/1.1 200"));
    still_serves(&mut d, &conf);

    // Garbage inside TLS: a 400 envelope.
    let mut c = client(&d, &conf);
    c.raw()
        .write_all(b"\x01\x02 not http at all\r\n\r\n")
        .unwrap();
    let (got, _) = read_all(c.raw(), Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains(r#""type":"error""#), "{text}");
    still_serves(&mut d, &conf);

    // A 10 MB header: 431 as soon as the bound is passed, not 10 MB of memory.
    let mut c = client(&d, &conf);
    let mut sent = 0usize;
    let _ = c.raw().write_all(b"GET / HTTP/1.1\r\nX-Big: ");
    let chunk = vec![b'a'; 64 * 1024];
    while sent < 10 * 1024 * 1024 {
        if c.raw().write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let (got, _) = read_all(c.raw(), Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got);
    assert!(
        sent < 10 * 1024 * 1024,
        "the daemon read all 10 MB of header"
    );
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
    still_serves(&mut d, &conf);

    // Slowloris: a header dribbled one byte at a time is cut off by the
    // request timeout (2 s here) instead of holding a slot forever.
    let mut c = client(&d, &conf);
    let start = Instant::now();
    let _ = c.raw().write_all(b"GET / HTTP/1.1\r\n");
    let mut closed = false;
    while start.elapsed() < Duration::from_secs(10) {
        if c.raw()
            .write_all(b"X")
            .and_then(|()| c.raw().flush())
            .is_err()
        {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(closed, "slowloris connection still open after 10 s");
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "took {:?}",
        start.elapsed()
    );
    still_serves(&mut d, &conf);

    // The same on a keep-alive connection, where one timer serves every
    // wait: a first request taking 1.5 of its 2 s leaves the timer set
    // for its end; the wait for the next request, from 1.5 s, must neither
    // end then (at 2 s) nor outlive its own 2 s.
    let mut c = client(&d, &conf);
    let start = Instant::now();
    c.raw().write_all(b"GET / HTTP/1.1\r\n").unwrap();
    c.raw().flush().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    c.raw().write_all(b"Host: x\r\n\r\n").unwrap();
    c.raw().flush().unwrap();
    let (got, _) = read_all(c.raw(), Duration::from_millis(300));
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let mut closed = None;
    while start.elapsed() < Duration::from_secs(10) {
        if c.raw()
            .write_all(b"X")
            .and_then(|()| c.raw().flush())
            .is_err()
        {
            closed = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let closed = closed.expect("keep-alive connection still open after 10 s");
    assert!(
        closed >= Duration::from_millis(3000) && closed < Duration::from_secs(7),
        "closed after {closed:?}, not about 3.5 s"
    );
    still_serves(&mut d, &conf);

    // A chunked body is read whole (a PATCH of nothing, in three chunks);
    // one whose chunks never end is cut off by the same timeout.
    let mut c = client(&d, &conf);
    c.raw()
        .write_all(
            b"PATCH /1.0 HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
              3\r\n{\"c\r\n9\r\nonfig\": {\r\n2\r\n}}\r\n0\r\n\r\n",
        )
        .unwrap();
    let (got, _) = read_all(c.raw(), Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let mut c = client(&d, &conf);
    let start = Instant::now();
    let _ = c
        .raw()
        .write_all(b"PATCH /1.0 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    let mut closed = false;
    while start.elapsed() < Duration::from_secs(10) {
        if c.raw()
            .write_all(b"1\r\n \r\n")
            .and_then(|()| c.raw().flush())
            .is_err()
        {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(closed, "endless chunked body still read after 10 s");
    still_serves(&mut d, &conf);

    // Invalid JSON and wrongly typed JSON: 400 with an error envelope, nothing changed.
    let mut c = client(&d, &conf);
    for body in [
        "{not json",
        r#"{"config": {"local.passphrase": ["x"]}}"#,
        r#"{"config": {"no.such.key": "1"}}"#,
        r#"{"bogus": 1}"#,
    ] {
        let (status, v) = c
            .request(
                "PATCH",
                "/1.0",
                Some(&serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.into()))),
            )
            .unwrap();
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["type"], "error");
        assert_eq!(v["error_code"], 400);
    }
    // A raw invalid JSON body, byte for byte.
    let mut c = client(&d, &conf);
    c.raw()
        .write_all(b"POST /1.0/certificates HTTP/1.1\r\nContent-Length: 5\r\n\r\n{oops")
        .unwrap();
    let (got, _) = read_all(c.raw(), Duration::from_millis(500));
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 400"));
    let (_, info) = client(&d, &conf).request("GET", "/1.0", None).unwrap();
    assert_eq!(info["metadata"]["config"], serde_json::json!({}));
    // A body larger than the bound: 413.
    let mut c = client(&d, &conf);
    c.raw()
        .write_all(b"PUT /1.0 HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n")
        .unwrap();
    let (got, _) = read_all(c.raw(), Duration::from_millis(500));
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 413"));
    // Unknown path and method.
    let mut c = client(&d, &conf);
    assert_eq!(
        c.request("GET", "/1.0/../../etc/passwd", None).unwrap().0,
        404
    );
    assert_eq!(c.request("DELETE", "/1.0", None).unwrap().0, 405);
    still_serves(&mut d, &conf);

    // A real peer: openssl with an EC client certificate gets an answer
    // (so the refusals below are about the certificate, not the tool).
    let cert_dir = dir.join("certs");
    std::fs::create_dir(&cert_dir).unwrap();
    let (ec_crt, ec_key) = (cert_dir.join("ec.crt"), cert_dir.join("ec.key"));
    common::applet("kvmbox-cert")
        .args(["gen", "--key"])
        .arg(&ec_key)
        .arg("--cert")
        .arg(&ec_crt)
        .succeeds();
    let req = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let ok = openssl(&d, Some((&ec_crt, &ec_key)), req);
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");

    // TLS without a client certificate: refused in the handshake.
    let none = openssl(&d, None, req);
    assert!(!none.contains("HTTP/1.1"), "{none}");
    still_serves(&mut d, &conf);

    // A client certificate on an RSA key: refused in the handshake.
    let (rsa_crt, rsa_key) = (cert_dir.join("rsa.crt"), cert_dir.join("rsa.key"));
    program("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=rsa",
            "-keyout",
        ])
        .arg(&rsa_key)
        .arg("-out")
        .arg(&rsa_crt)
        .succeeds();
    let rsa = openssl(&d, Some((&rsa_crt, &rsa_key)), req);
    assert!(!rsa.contains("HTTP/1.1"), "{rsa}");
    // The daemon offers only ECDSA signature schemes, so a client whose key is
    // RSA either sends no certificate or has it refused as not EC.
    let failures = d.log_text().matches("TLS handshake with uid").count();
    assert!(failures >= 2, "{}", d.log_text());

    // An expired EC certificate: refused as well.
    let (old_crt, old_key) = (cert_dir.join("old.crt"), cert_dir.join("old.key"));
    program("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=old",
            "-not_before",
            "20000101000000Z",
            "-not_after",
            "20010101000000Z",
            "-keyout",
        ])
        .arg(&old_key)
        .arg("-out")
        .arg(&old_crt)
        .run();
    if old_crt.exists() {
        let old = openssl(&d, Some((&old_crt, &old_key)), req);
        assert!(!old.contains("HTTP/1.1"), "{old}");
    }
    still_serves(&mut d, &conf);

    let status = d.stop();
    assert!(status.success());
}

#[test]
fn connection_count_is_bounded() {
    let scratch = common::scratch();
    let dir = scratch.path();
    let conf = dir.join("conf");
    if !daemon::is_root() {
        // Unprivileged, every connection is this uid's: it may hold a
        // quarter of the slots (one of three), and the next is closed at
        // once instead of queueing without bound.
        let mut d = start(dir, &["--max-connections", "3"]);
        let held = UnixStream::connect(&d.socket).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let id = ClientIdentity::load_or_create(&conf).unwrap();
        assert!(Client::connect_unix(&d.socket, &id).is_err());
        drop(held);
        std::thread::sleep(Duration::from_millis(200));
        still_serves(&mut d, &conf);
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    // Default timeouts, so that the silent holders stay for the test.
    let mut d = Daemon::start(
        &common::bin(),
        dir,
        &["--group", "root", "--max-connections", "4"],
    );
    // Four uids hold a slot each (a quarter of four): all are taken…
    let mut held: Vec<_> = (0..4)
        .map(|i| daemon::hold_as(61_300 + i, &d.socket))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // …so a fifth uid is closed at once, and told so on one line.
    let other = dir.join("conf-other");
    std::fs::create_dir(&other).unwrap();
    std::os::unix::fs::chown(&other, Some(61_304), Some(0)).unwrap();
    let socket = d.socket.clone();
    let as_other = || {
        program("setpriv")
            .args(["--reuid", "61304", "--regid", "0", "--clear-groups"])
            .arg(common::bin())
            .args(["--applet", "kvmbox", "info"])
            .env("KVMBOX_CONF", &other)
            .env("KVMBOX_SOCKET", &socket)
    };
    as_other().fails().code_is(1).stderr_one_line();
    // Root is never refused.
    still_serves(&mut d, &conf);
    for h in &mut held {
        let _ = h.kill();
        let _ = h.wait();
    }
    held.clear();
    std::thread::sleep(Duration::from_millis(200));
    as_other().succeeds();
    assert!(d.log_text().contains("connections already open"));
}

#[test]
fn state_is_created_private_and_the_server_certificate_regenerated() {
    let scratch = common::scratch();
    let dir = scratch.path();
    let mut d = start(dir, &[]);
    let key = d.state.join("server.key");
    let crt = d.state.join("server.crt");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let first = std::fs::read(&crt).unwrap();
    let info = common::applet("kvmbox-cert")
        .arg("show")
        .arg(&crt)
        .succeeds()
        .stdout();
    assert!(info.contains("DNS:kvmbox"), "{info}");
    assert!(d.stop().success());
    // Same certificate on restart; a new one once removed (LXD's rule).
    let mut d = start(dir, &[]);
    assert_eq!(std::fs::read(&crt).unwrap(), first);
    assert!(d.stop().success());
    std::fs::remove_file(&crt).unwrap();
    let mut d = start(dir, &[]);
    assert_ne!(std::fs::read(&crt).unwrap(), first);
    // A second daemon on the same socket is refused, the first keeps serving.
    common::applet("kvmboxd")
        .arg("--state-dir")
        .arg(&d.state)
        .fails()
        .stderr_contains("already listening")
        .stderr_one_line();
    still_serves(&mut d, &dir.join("conf"));
    assert!(d.stop().success());
    // An existing directory others can write to is refused, and left as is.
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    common::applet("kvmboxd")
        .arg("--state-dir")
        .arg(&shared)
        .fails()
        .stderr_contains("not be writable by others")
        .stderr_one_line();
    assert_eq!(
        std::fs::metadata(&shared).unwrap().permissions().mode() & 0o777,
        0o777
    );
    assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 0);
}

#[test]
fn keep_alive_and_pipelined_requests_share_one_connection() {
    let scratch = common::scratch();
    let dir = scratch.path();
    let conf = dir.join("conf");
    let d = start(dir, &[]);
    let mut c = client(&d, &conf);
    for _ in 0..3 {
        assert_eq!(c.request("GET", "/1.0", None).unwrap().0, 200);
    }
    // Two requests in one write, the second closing: two answers, then EOF.
    c.raw()
        .write_all(
            b"GET / HTTP/1.1\r\n\r\nGET /1.0/instances HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let (got, _) = read_all(c.raw(), Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    assert!(text.contains("Connection: close"), "{text}");
}
