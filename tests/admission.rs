//! What a connection must get past before it is served, against a real
//! kvmboxd: the network cannot crowd local users out of the Unix socket,
//! silent peers are dropped after the handshake timeout, an IPv6 peer is
//! counted by its /64 (connection slots and password guesses), a silent
//! events websocket is pinged and then dropped, and a client whose daemon
//! hangs up mid-request says so on one line instead of dying of SIGPIPE.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a failed test should panic

mod common;
#[path = "support/daemon.rs"]
mod daemon;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{applet, bin, program, Cmd};
use daemon::Daemon;
use kvmbox::{Client, ClientIdentity, RemoteTrust};

/// A peer that opens idle TCP connections and never says a word, then
/// reports how many the daemon closed, and when.
const IDLE_TCP: &str = r#"
use strict; use IO::Socket::IP; use IO::Select; use Time::HiRes qw(time);
$| = 1;
my ($host, $port, $n, $limit, @src) = @ARGV;
my @s;
for my $src (@src) {
    for (1 .. $n) {
        push @s, IO::Socket::IP->new(PeerHost => $host, PeerService => $port,
            LocalHost => $src, Proto => 'tcp') or die "connect from $src: $@\n";
    }
}
print "open ", scalar(@s), "\n";
my $t0 = time;
my $sel = IO::Select->new(@s);
while ($sel->count && time - $t0 < $limit) {
    for my $h ($sel->can_read(0.2)) {
        my $buf;
        $sel->remove($h) unless sysread($h, $buf, 4096);
    }
}
printf "closed %d after %.1f\n", @s - $sel->count, time - $t0;
"#;

/// Idle connections held by a real peer (perl); killed when dropped.
struct Idle {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Idle {
    /// `n` connections from each of `sources` to `host`:`port`, the peer
    /// run under `wrapper` (e.g. `nsenter --net=…`); waits until all are
    /// open. The peer watches them for `limit` seconds at most.
    fn open(wrapper: &[&str], host: &str, port: &str, n: usize, sources: &[&str]) -> Idle {
        let mut cmd = match wrapper.split_first() {
            Some((p, args)) => {
                let mut c = Command::new(p);
                c.args(args).arg("perl");
                c
            }
            None => Command::new("perl"),
        };
        let mut child = cmd
            .args(["-e", IDLE_TCP, host, port, &n.to_string(), "25"])
            .args(sources)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), format!("open {}", n * sources.len()));
        Idle { child, out }
    }

    /// How many the daemon closed, and after how many seconds.
    fn closed(&mut self) -> (usize, f64) {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.first(), Some(&"closed"), "{line}");
        (words[1].parse().unwrap(), words[3].parse().unwrap())
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A uid no account uses, for a local peer that is not root.
const UID: u32 = 61_237;

/// `kvmbox ARGS` against `d`, as root or as `uid` (with gid 0, the admin
/// group of these daemons), with a configuration directory of its own.
fn kvmbox(d: &Daemon, dir: &Path, uid: Option<u32>, args: &[&str]) -> Cmd {
    let conf = dir.join(format!("conf-{}", uid.unwrap_or(0)));
    if !conf.exists() {
        std::fs::create_dir(&conf).unwrap();
        if let Some(u) = uid {
            std::os::unix::fs::chown(&conf, Some(u), Some(0)).unwrap();
        }
    }
    let cmd = match uid {
        Some(u) => program("setpriv")
            .args(["--reuid", &u.to_string(), "--regid", "0", "--clear-groups"])
            .arg(bin())
            .args(["--applet", "kvmbox"]),
        None => applet("kvmbox"),
    };
    cmd.args(args)
        .env("KVMBOX_CONF", conf)
        .env("KVMBOX_SOCKET", &d.socket)
        .env_remove("HOME")
        .env_remove("XDG_RUNTIME_DIR")
}

/// A scratch directory other uids can pass through to the socket.
fn open_scratch() -> tempfile::TempDir {
    let scratch = common::scratch();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    scratch
}

fn skip_unless_root() -> bool {
    if daemon::is_root() {
        return false;
    }
    eprintln!("skipped: needs root (setpriv, other uids, network namespaces)");
    true
}

/// A request with curl (a real TLS client) from source address `from`,
/// run under `wrapper`: the status (None when no answer came), the body,
/// and how long it took.
fn curl(
    wrapper: &[&str],
    from: &str,
    url: &str,
    id: &Path,
    post: Option<&str>,
) -> (Option<u16>, String, Duration) {
    let (first, rest) = wrapper.split_first().unwrap_or((&"curl", &[]));
    let mut cmd = program(first).args(rest);
    if !wrapper.is_empty() {
        cmd = cmd.arg("curl");
    }
    cmd = cmd
        .args(["-sk", "--max-time", "20", "--interface", from])
        .arg("--cert")
        .arg(id.join("client.crt"))
        .arg("--key")
        .arg(id.join("client.key"))
        .args(["-w", "\n%{http_code}"]);
    if let Some(body) = post {
        cmd = cmd.args(["-H", "Content-Type: application/json", "--data", body]);
    }
    let start = Instant::now();
    let out = cmd.arg(url).run().stdout();
    let took = start.elapsed();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    let code = code.trim().parse().ok().filter(|c| *c != 0);
    (code, body.to_string(), took)
}

#[test]
fn the_network_cannot_crowd_out_the_unix_socket_and_silent_peers_go() {
    if skip_unless_root() {
        return;
    }
    let scratch = open_scratch();
    let dir = scratch.path();
    // Default timeouts: 10 s to handshake, 30 s for a request.
    let d = Daemon::start(
        &bin(),
        dir,
        &[
            "--group",
            "root",
            "--https",
            "127.0.0.1:0",
            "--max-connections",
            "8",
        ],
    );
    let addr = d.https_address();
    let port = addr.rsplit(':').next().unwrap();
    let id = dir.join("tcp-client");
    ClientIdentity::load_or_create(&id).unwrap();
    // Two connections (a quarter of 8) from each of four addresses: every
    // TCP slot is taken by peers that never start a handshake.
    let sources = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
    let mut idle = Idle::open(&[], "127.0.0.1", port, 2, &sources);
    let url = format!("https://{addr}/1.0");
    let (code, _, _) = curl(&[], "127.0.0.6", &url, &id, None);
    assert_eq!(code, None, "TCP should be full");
    // The Unix socket has slots of its own: root, and a trusted user who
    // is not root, are still served.
    kvmbox(&d, dir, None, &["info"])
        .succeeds()
        .stdout_contains("admin");
    kvmbox(&d, dir, Some(UID), &["info"]).succeeds();
    // The silent peers are dropped after the handshake timeout, well
    // before the request timeout, and TCP serves again.
    let (closed, secs) = idle.closed();
    eprintln!("{closed} silent connections closed after {secs} s");
    assert_eq!(closed, 8);
    assert!((5.0..20.0).contains(&secs), "closed after {secs} s");
    let (code, _, _) = curl(&[], "127.0.0.6", &url, &id, None);
    assert_eq!(code, Some(200));
    let log = d.log_text();
    assert!(log.contains("connections already open on TCP"), "{log}");
    assert!(log.contains("TLS handshake with 127.0.0.2"), "{log}");
}

#[test]
fn an_untrusted_client_cannot_keep_its_connection_alive() {
    let scratch = common::scratch();
    let dir = scratch.path();
    let d = Daemon::start(&bin(), dir, &["--https", "127.0.0.1:0", "--timeout", "2"]);
    let addr = d.https_address();
    let id = ClientIdentity::load_or_create(&dir.join("stranger")).unwrap();
    let (mut c, _) = Client::connect_tcp(&addr, "kvmbox", &id, &RemoteTrust::Probe).unwrap();
    // Asking who the server is, again and again on one connection: served
    // while the connection is young, then closed after an answer.
    let start = Instant::now();
    let mut answered = 0;
    while start.elapsed() < Duration::from_secs(8) {
        match c.request("GET", "/1.0", None) {
            Ok((200, v)) => {
                assert_eq!(v["metadata"]["auth"], "untrusted");
                answered += 1;
            }
            Ok((code, v)) => panic!("{code}: {v}"),
            Err(_) => break,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let held = start.elapsed();
    eprintln!("{answered} answers on one untrusted connection, closed after {held:?}");
    assert!(
        answered >= 2,
        "a client becoming trusted needs a few requests"
    );
    assert!(held < Duration::from_secs(6), "held for {held:?}");
}

/// Addresses in the namespace the daemon runs in: two /64s on loopback.
const NETNS_SETUP: &str = "ip link set lo up \
    && ip addr add 2001:db8:1::1/64 dev lo nodad \
    && ip addr add 2001:db8:1::2/64 dev lo nodad \
    && ip addr add 2001:db8:1::3/64 dev lo nodad \
    && ip addr add 2001:db8:2::1/64 dev lo nodad \
    && exec \"$@\"";

#[test]
fn ipv6_peers_count_by_their_64_for_slots_and_guesses() {
    if skip_unless_root() {
        return;
    }
    let scratch = open_scratch();
    let dir = scratch.path();
    // Its own network namespace, gone with the daemon: nothing on the
    // host's interfaces changes.
    let d = Daemon::start_in(
        &["unshare", "--net", "sh", "-c", NETNS_SETUP, "sh"],
        &bin(),
        dir,
        &[
            "--group",
            "root",
            "--https",
            "[2001:db8:1::1]:0",
            "--max-connections",
            "8",
        ],
    );
    let ns = format!("--net=/proc/{}/ns/net", d.child.as_ref().unwrap().id());
    let within = ["nsenter", ns.as_str()];
    let addr = d.https_address();
    let port = addr.rsplit(':').next().unwrap();
    let id = dir.join("guesser");
    ClientIdentity::load_or_create(&id).unwrap();
    let server = format!("https://{addr}/1.0");
    // Slots: 2001:db8:1::2 holds its /64's quarter of 8, so its neighbour
    // ::3 is refused while another /64 is served.
    let idle = Idle::open(&within, "2001:db8:1::1", port, 2, &["2001:db8:1::2"]);
    let (code, _, _) = curl(&within, "2001:db8:1::3", &server, &id, None);
    assert_eq!(code, None, "same /64: refused");
    let (code, _, _) = curl(&within, "2001:db8:2::1", &server, &id, None);
    assert_eq!(code, Some(200), "another /64: served");
    assert!(d.log_text().contains("too many open from 2001:db8:1::"));
    drop(idle);
    let start = Instant::now();
    while curl(&within, "2001:db8:1::3", &server, &id, None).0 != Some(200) {
        assert!(start.elapsed() < Duration::from_secs(10), "slots not freed");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Guesses: the trust password is set over the Unix socket.
    let admin = ClientIdentity::load_or_create(&dir.join("admin")).unwrap();
    Client::connect_unix(&d.socket, &admin)
        .unwrap()
        .call(
            "PATCH",
            "/1.0",
            Some(&serde_json::json!({"config": {"core.trust_password": "right"}})),
        )
        .unwrap();
    let certs = format!("https://{addr}/1.0/certificates");
    let guess = r#"{"type": "client", "password": "wrong"}"#;
    let try_from = |from: &str| curl(&within, from, &certs, &id, Some(guess));
    // Three free mistakes, a fourth that costs 1 s, a fifth that costs 2 s.
    let mut hashed = Vec::new();
    for i in 0..5 {
        if i == 4 {
            std::thread::sleep(Duration::from_millis(1100));
        }
        let (code, body, took) = try_from("2001:db8:1::2");
        assert_eq!(code, Some(403), "guess {i}: {body}");
        assert!(body.contains("wrong password"), "{body}");
        hashed.push(took);
    }
    // Within those 2 s, the whole /64 is refused before any hashing.
    let (code, body, refused) = try_from("2001:db8:1::3");
    assert_eq!(code, Some(429), "{body}");
    assert!(body.contains("too many failed attempts"), "{body}");
    let (code, body, other) = try_from("2001:db8:2::1");
    assert_eq!(code, Some(403), "another /64 guesses on: {body}");
    eprintln!(
        "wrong guess answered in {hashed:?}; refused guess in {refused:?}; other /64 in {other:?}"
    );
}

/// The upgrade request for the events websocket.
/// A client frame, masked as RFC 6455 requires (payload under 126 bytes).
fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    out
}

/// A byte stream both ways.
trait Duplex: Read + Write {}
impl<T: Read + Write> Duplex for T {}

/// Opens the events websocket on a fresh connection, then runs `peer` on
/// it in a thread whose result comes through the receiver (the caller
/// waits with a limit: a daemon that never closes must not hang the test).
fn events_socket<T: Send + 'static>(
    d: &Daemon,
    conf: PathBuf,
    peer: impl FnOnce(&mut dyn Duplex) -> T + Send + 'static,
) -> mpsc::Receiver<T> {
    let socket = d.socket.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let id = ClientIdentity::load_or_create(&conf).unwrap();
        let mut c = Client::connect_unix(&socket, &id).unwrap();
        let raw = c.raw();
        common::upgrade_to_events(raw);
        let _ = tx.send(peer(raw));
    });
    rx
}

/// Server frames until the connection ends: (opcode, payload, when).
fn next_frame(s: &mut dyn Duplex, start: Instant) -> Option<(u8, Vec<u8>, f64)> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).ok()?;
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let mut payload = vec![0u8; usize::from(head[1] & 0x7F)];
    s.read_exact(&mut payload).ok()?;
    Some((head[0] & 0x0F, payload, start.elapsed().as_secs_f64()))
}

#[test]
fn an_events_websocket_is_pinged_and_dropped_when_silent() {
    let scratch = common::scratch();
    let dir = scratch.path();
    let mut args = vec!["--timeout", "2"];
    if daemon::is_root() {
        args.extend(["--group", "root"]);
    }
    let d = Daemon::start(&bin(), dir, &args);
    // A peer that never answers: pinged after 2 s of silence, dropped 2 s
    // later.
    let silent = events_socket(&d, dir.join("silent"), |s| {
        let start = Instant::now();
        let mut frames = Vec::new();
        while let Some(f) = next_frame(s, start) {
            frames.push(f);
        }
        (frames, start.elapsed().as_secs_f64())
    });
    // A peer that answers every ping stays, then closes cleanly.
    let live = events_socket(&d, dir.join("live"), |s| {
        let start = Instant::now();
        let mut pings = 0;
        loop {
            let Some((op, payload, _)) = next_frame(s, start) else {
                return (pings, None, start.elapsed().as_secs_f64());
            };
            match op {
                0x9 if pings < 3 => {
                    pings += 1;
                    s.write_all(&masked(0xA, &payload)).unwrap();
                    s.flush().unwrap();
                }
                0x9 => {
                    s.write_all(&masked(0x8, &1000u16.to_be_bytes())).unwrap();
                    s.flush().unwrap();
                }
                0x8 => {
                    let after = next_frame(s, start);
                    assert!(after.is_none(), "{after:?}");
                    return (pings, Some(payload), start.elapsed().as_secs_f64());
                }
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    });
    let (frames, ended) = silent.recv_timeout(Duration::from_secs(15)).unwrap();
    assert_eq!(frames.len(), 1, "{frames:?}");
    let (op, ref payload, when) = frames[0];
    assert_eq!((op, payload.len()), (0x9, 0), "one ping");
    assert!((1.5..4.0).contains(&when), "pinged after {when} s");
    assert!((3.5..8.0).contains(&ended), "dropped after {ended} s");
    let (pings, close, ended) = live.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(pings, 3);
    assert_eq!(close, Some(vec![0x03, 0xE8]), "the close code echoed");
    assert!(ended > 7.0, "held while it answered: {ended} s");
    assert!(d.log_text().contains("no answer to a ping"));
}

#[test]
fn a_client_whose_daemon_hangs_up_mid_request_says_so_on_one_line() {
    let scratch = common::scratch();
    let dir = scratch.path();
    let mut args = vec!["--log-level", "debug"];
    if daemon::is_root() {
        args.extend(["--group", "root"]);
    }
    let d = Daemon::start(&bin(), dir, &args);
    // A request body over the daemon's limit: it answers 413 and closes
    // while the client is still writing.
    let big = "a".repeat(10 * 1024 * 1024);
    let doc = format!(r#"{{"config": {{"core.trust_password": "{big}"}}}}"#);
    let run = applet("kvmbox")
        .args(["admin", "init", "--preseed", "-"])
        .env("KVMBOX_CONF", dir.join("conf"))
        .env("KVMBOX_SOCKET", &d.socket)
        .stdin(doc)
        .run();
    assert_eq!(run.out.status.signal(), None, "killed by a signal");
    let run = run.code_is(1).stderr_one_line();
    assert!(run.stderr().starts_with("kvmbox: "), "{}", run.stderr());
    // What the daemon answered before it hung up is read and shown.
    run.stderr_contains("request body too large");
    assert!(d.log_text().contains("refused a request"));
}
