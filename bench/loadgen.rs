//! A load generator for kvmboxd, on smol: N concurrent clients, each
//! sending M requests over the Unix socket (TLS inside, as the kvmbox
//! client does), the LXD-compatible socket (plain HTTP) or TCP (TLS with a
//! client certificate the daemon trusts), on one keep-alive connection each
//! or with a fresh full handshake per request. Reads (`GET /1.0`, the
//! instance list with recursion, the operation list) mix with operations
//! (create a stopped instance, change its config, delete it). Prints
//! requests/s, latency percentiles and errors; with `--pid`, the daemon's
//! CPU time per request, open fds and RSS before and after. Also floods
//! (slowloris and idle connections against TCP) while it times `GET /1.0`
//! from root on the Unix socket, and holds open handshaken connections for
//! measuring memory per connection. An example, so the shipped binary does
//! not carry it. `loadgen --help` lists the flags.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a benchmark tool: a failure should stop it loudly"
)]

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_rustls::TlsConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use smol::LocalExecutor;

#[derive(argh::FromArgs)]
/// Load, floods and held connections against a running kvmboxd.
struct Args {
    /// unix:PATH (TLS inside), lxd:PATH (plain HTTP) or tcp:HOST:PORT (TLS)
    #[argh(option)]
    target: String,
    /// client certificate (PEM) the daemon trusts
    #[argh(option)]
    cert: Option<PathBuf>,
    /// its key (PEM, PKCS#8)
    #[argh(option)]
    key: Option<PathBuf>,
    /// concurrent clients (default 10)
    #[argh(option, default = "10")]
    clients: usize,
    /// requests per client (default 100)
    #[argh(option, default = "100")]
    requests: usize,
    /// a new connection and full TLS handshake for every request
    #[argh(switch)]
    fresh: bool,
    /// what to send: read (GET only), get10 (GET /1.0 only), mixed (reads
    /// and operations; needs --kernel)
    #[argh(option, default = "String::from(\"read\")")]
    mix: String,
    /// GET only this path (overrides --mix)
    #[argh(option)]
    path: Option<String>,
    /// with --path: send this many requests back to back on the
    /// connection before reading their answers (HTTP/1.1 pipelining;
    /// default 1, each answer read before the next request)
    #[argh(option, default = "1")]
    pipeline: usize,
    /// a file that stands as the instances' kernel (created instances are
    /// never started)
    #[argh(option)]
    kernel: Option<PathBuf>,
    /// the daemon's pid: its CPU time, fds and RSS are reported
    #[argh(option)]
    pid: Option<u32>,
    /// slowloris connections to hold against --flood-target while probing
    #[argh(option, default = "0")]
    slowloris: usize,
    /// idle connections to hold against --flood-target while probing
    #[argh(option, default = "0")]
    idle: usize,
    /// tcp:HOST:PORT to flood
    #[argh(option)]
    flood_target: Option<String>,
    /// how long the flood lasts, in seconds (default 5)
    #[argh(option, default = "5")]
    flood_secs: u64,
    /// open this many handshaken connections (one request each), print
    /// "held N" and keep them until stdin closes
    #[argh(option, default = "0")]
    hold: usize,
    /// write the figures as JSON to this file too
    #[argh(option)]
    json: Option<PathBuf>,
}

#[derive(Clone, Debug)]
enum Target {
    Unix(PathBuf, bool),
    Tcp(String),
}

impl Target {
    fn parse(s: &str) -> Target {
        if let Some(p) = s.strip_prefix("unix:") {
            Target::Unix(p.into(), true)
        } else if let Some(p) = s.strip_prefix("lxd:") {
            Target::Unix(p.into(), false)
        } else if let Some(a) = s.strip_prefix("tcp:") {
            Target::Tcp(a.to_string())
        } else {
            eprintln!("loadgen: --target {s}: expected unix:, lxd: or tcp:");
            std::process::exit(2);
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}
type Stream = Box<dyn Io>;

/// Accepts the server certificate without checking it: the daemon is
/// reached on loopback or a local socket that only it can create, and the
/// handshake signature is still verified, so the server does its full work.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config(cert: Option<&Path>, key: Option<&Path>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut config = match (cert, key) {
        (Some(c), Some(k)) => {
            let certs = pem::parse_many(std::fs::read(c).unwrap()).unwrap();
            let certs = certs
                .into_iter()
                .map(|p| CertificateDer::from(p.into_contents()))
                .collect();
            let key = pem::parse(std::fs::read(k).unwrap()).unwrap();
            let key = PrivateKeyDer::Pkcs8(key.into_contents().into());
            builder.with_client_auth_cert(certs, key).unwrap()
        }
        _ => builder.with_no_client_auth(),
    };
    // Every handshake a full one, as a new kvmbox or lxc process makes.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// Opens a connection and, unless it is the plain socket, does the TLS
/// handshake.
async fn connect(target: &Target, tls: &Arc<rustls::ClientConfig>) -> std::io::Result<Stream> {
    let name = ServerName::try_from("kvmbox").unwrap();
    let connector = TlsConnector::from(tls.clone());
    match target {
        Target::Unix(path, false) => {
            Ok(Box::new(smol::net::unix::UnixStream::connect(path).await?))
        }
        Target::Unix(path, true) => {
            let s = smol::net::unix::UnixStream::connect(path).await?;
            Ok(Box::new(connector.connect(name, s).await?))
        }
        Target::Tcp(addr) => {
            let s = smol::net::TcpStream::connect(addr.as_str()).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(connector.connect(name, s).await?))
        }
    }
}

/// One request and its response; the status and body.
async fn request(
    s: &mut Stream,
    buf: &mut Vec<u8>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, Vec<u8>)> {
    s.write_all(&head(method, path, body)).await?;
    s.flush().await?;
    response(s, buf).await
}

fn head(method: &str, path: &str, body: Option<&str>) -> Vec<u8> {
    let body = body.unwrap_or("");
    format!(
        "{method} {path} HTTP/1.1\r\nHost: kvmbox\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The next response on `s`: its status and body.
async fn response(s: &mut Stream, buf: &mut Vec<u8>) -> std::io::Result<(u16, Vec<u8>)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(n) = resp
            .parse(buf)
            .map_err(|e| std::io::Error::other(e.to_string()))?
        {
            let len = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                .unwrap_or(0);
            let status = resp.code.unwrap_or(0);
            while buf.len() < n + len {
                read_more(s, buf).await?;
            }
            let body = buf[n..n + len].to_vec();
            buf.drain(..n + len);
            return Ok((status, body));
        }
        read_more(s, buf).await?;
    }
}

async fn read_more(s: &mut Stream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 16384];
    let n = s.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// What one client's step sends.
fn step(
    mix: &str,
    client: usize,
    i: usize,
    kernel: &str,
) -> Vec<(&'static str, String, Option<String>)> {
    let reads = [
        "/1.0".to_string(),
        "/1.0/instances?recursion=1".to_string(),
        "/1.0/operations".to_string(),
    ];
    match mix {
        "get10" => vec![("GET", reads[0].clone(), None)],
        "read" => vec![("GET", reads[i % 3].clone(), None)],
        _ => {
            // Every fifth step is part of an instance's life: created
            // (stopped), its config changed, deleted.
            let name = format!("lg-{client}-{}", i / 15);
            match (i % 5 == 4).then_some((i / 5) % 3) {
                Some(0) => vec![(
                    "POST",
                    "/1.0/instances".into(),
                    Some(format!(
                        r#"{{"name":"{name}","type":"virtual-machine","source":{{"type":"none"}},"config":{{"boot.kernel":"{kernel}","limits.memory":"64MiB"}},"devices":{{}}}}"#
                    )),
                )],
                Some(1) => vec![(
                    "PATCH",
                    format!("/1.0/instances/{name}"),
                    Some(format!(r#"{{"config":{{"user.step":"{i}"}}}}"#)),
                )],
                Some(_) => vec![("DELETE", format!("/1.0/instances/{name}"), None)],
                None => vec![("GET", reads[i % 3].clone(), None)],
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: usize,
    first_errors: Vec<String>,
}

impl Tally {
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.first_errors.len() < 5 {
            self.first_errors.push(what);
        }
    }
}

/// An operation's id from a 202's body, to wait on.
fn operation_of(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let op = v.get("operation")?.as_str()?;
    Some(op.to_string())
}

async fn client(
    n: usize,
    args: Rc<Args>,
    target: Target,
    tls: Arc<rustls::ClientConfig>,
    tally: Rc<RefCell<Tally>>,
) {
    let kernel = args
        .kernel
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if let (Some(path), true) = (&args.path, args.pipeline > 1) {
        return pipelined(&args, path, &target, &tls, &tally).await;
    }
    let mut conn: Option<Stream> = None;
    let mut buf = Vec::new();
    for i in 0..args.requests {
        let steps = match &args.path {
            Some(p) => vec![("GET", p.clone(), None)],
            None => step(&args.mix, n, i, &kernel),
        };
        for (method, path, body) in steps {
            let t0 = Instant::now();
            let result = async {
                if conn.is_none() || args.fresh {
                    buf.clear();
                    conn = Some(connect(&target, &tls).await?);
                }
                let s = conn.as_mut().unwrap();
                let (status, body) = request(s, &mut buf, method, &path, body.as_deref()).await?;
                // An operation is done when the daemon says so.
                if status == 202 {
                    if let Some(op) = operation_of(&body) {
                        let (st, b) =
                            request(s, &mut buf, "GET", &format!("{op}/wait?timeout=30"), None)
                                .await?;
                        let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
                        let code = v["metadata"]["status_code"].as_u64().unwrap_or(0);
                        if st != 200 || code != 200 {
                            return Ok::<_, std::io::Error>((
                                st,
                                format!(
                                    "{method} {path}: operation {code}: {}",
                                    v["metadata"]["err"]
                                ),
                            ));
                        }
                    }
                }
                Ok((
                    status,
                    String::from_utf8_lossy(&body).chars().take(200).collect(),
                ))
            }
            .await;
            let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
            let mut t = tally.borrow_mut();
            match result {
                Ok((st, _)) if (200..300).contains(&st) => t.latencies_us.push(us),
                Ok((st, why)) => t.error(format!("{method} {path}: {st} {why}")),
                Err(e) => {
                    t.error(format!("{method} {path}: {e}"));
                    conn = None;
                }
            }
            if args.fresh {
                conn = None;
            }
        }
    }
    // An instance created in the last, cut-short cycle goes too, so that a
    // run leaves the daemon as it found it.
    let last = args.requests.saturating_sub(1);
    let last = last.saturating_sub((last + 1) % 5);
    if args.mix == "mixed" && args.requests >= 5 && last / 5 % 3 != 2 {
        let name = format!("lg-{n}-{}", last / 15);
        // On the client's own connection where it has one: a second one
        // from each client could pass the daemon's share for one address.
        let r = async {
            let mut s = match conn.take() {
                Some(s) => s,
                None => {
                    buf.clear();
                    connect(&target, &tls).await?
                }
            };
            let (st, body) = request(
                &mut s,
                &mut buf,
                "DELETE",
                &format!("/1.0/instances/{name}"),
                None,
            )
            .await?;
            if let (202, Some(op)) = (st, operation_of(&body)) {
                let (st, body) = request(
                    &mut s,
                    &mut buf,
                    "GET",
                    &format!("{op}/wait?timeout=30"),
                    None,
                )
                .await?;
                return Ok::<_, std::io::Error>((st, body));
            }
            Ok((st, body))
        }
        .await;
        match r {
            Ok((200, _)) => {}
            Ok((st, b)) => tally.borrow_mut().error(format!(
                "cleanup DELETE {name}: {st} {}",
                String::from_utf8_lossy(&b)
            )),
            Err(e) => tally
                .borrow_mut()
                .error(format!("cleanup DELETE {name}: {e}")),
        }
    }
}

/// `--pipeline`: GETs of `path` sent `args.pipeline` at a time on one
/// connection, each batch's answers read after it is sent. A request's
/// latency runs from its batch's sending to its answer.
async fn pipelined(
    args: &Args,
    path: &str,
    target: &Target,
    tls: &Arc<rustls::ClientConfig>,
    tally: &RefCell<Tally>,
) {
    let mut s = match connect(target, tls).await {
        Ok(s) => s,
        Err(e) => return tally.borrow_mut().error(format!("connect: {e}")),
    };
    let mut buf = Vec::new();
    let mut left = args.requests;
    while left > 0 {
        let n = left.min(args.pipeline);
        left -= n;
        let batch: Vec<u8> = (0..n).flat_map(|_| head("GET", path, None)).collect();
        let t0 = Instant::now();
        if let Err(e) = async {
            s.write_all(&batch).await?;
            s.flush().await
        }
        .await
        {
            return tally.borrow_mut().error(format!("GET {path}: {e}"));
        }
        for _ in 0..n {
            let r = response(&mut s, &mut buf).await;
            let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
            let mut t = tally.borrow_mut();
            match r {
                Ok((st, _)) if (200..300).contains(&st) => t.latencies_us.push(us),
                Ok((st, _)) => t.error(format!("GET {path}: {st}")),
                Err(e) => return t.error(format!("GET {path}: {e}")),
            }
        }
    }
}

/// The daemon's thread count.
fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The daemon's CPU ticks (user + system), open fds and RSS in KiB.
fn daemon_stats(pid: u32) -> (u64, usize, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may hold spaces.
    let rest = stat.rsplit_once(") ").map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (ticks, fds, rss)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The load run: prints one `key value` per line and returns them.
fn load(
    ex: &LocalExecutor<'_>,
    args: &Rc<Args>,
    target: &Target,
    tls: &Arc<rustls::ClientConfig>,
) -> Vec<(String, f64)> {
    // A short warm-up, so that what the daemon allocates once (caches,
    // its first TLS state) is not counted as growth.
    let warm = Rc::new(RefCell::new(Tally::default()));
    let mut warm_args = Args::clone_for_warmup(args);
    warm_args.requests = warm_args.requests.min(15);
    let warm_args = Rc::new(warm_args);
    smol::block_on(ex.run(async {
        let tasks: Vec<_> = (0..args.clients.min(4))
            .map(|n| {
                ex.spawn(client(
                    n + 100_000,
                    warm_args.clone(),
                    target.clone(),
                    tls.clone(),
                    warm.clone(),
                ))
            })
            .collect();
        for t in tasks {
            t.await;
        }
    }));
    let before = args.pid.map(daemon_stats);
    let threads_before = args.pid.map(threads).unwrap_or(0);
    let tally = Rc::new(RefCell::new(Tally::default()));
    let t0 = Instant::now();
    smol::block_on(ex.run(async {
        let tasks: Vec<_> = (0..args.clients)
            .map(|n| {
                ex.spawn(client(
                    n,
                    args.clone(),
                    target.clone(),
                    tls.clone(),
                    tally.clone(),
                ))
            })
            .collect();
        for t in tasks {
            t.await;
        }
    }));
    let wall = t0.elapsed().as_secs_f64();
    let mut t = tally.borrow_mut();
    t.latencies_us.sort_unstable();
    let ok = t.latencies_us.len();
    let mut out = vec![
        ("requests".to_string(), (ok + t.errors) as f64),
        ("errors".to_string(), t.errors as f64),
        ("seconds".to_string(), wall),
        ("requests_per_s".to_string(), ok as f64 / wall),
        ("p50_ms".to_string(), percentile(&t.latencies_us, 0.50)),
        ("p90_ms".to_string(), percentile(&t.latencies_us, 0.90)),
        ("p99_ms".to_string(), percentile(&t.latencies_us, 0.99)),
        ("max_ms".to_string(), percentile(&t.latencies_us, 1.0)),
    ];
    if let (Some(pid), Some((ticks0, fds0, rss0))) = (args.pid, before) {
        let (ticks1, _, _) = daemon_stats(pid);
        // Connections the clients closed are closed by the daemon as soon
        // as it reads their end; give it a moment to.
        let deadline = Instant::now() + Duration::from_secs(5);
        // The threads that file work ran on (smol's blocking pool) end
        // after a while idle, and their stacks go with them: RSS is read
        // once they are gone.
        let mut after = daemon_stats(pid);
        while (after.1 > fds0 || threads(pid) > threads_before) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            after = daemon_stats(pid);
        }
        let cpu_ms = (ticks1 - ticks0) as f64 * 1000.0 / clk_tck();
        out.push(("server_cpu_ms".into(), cpu_ms));
        out.push((
            "server_cpu_us_per_request".into(),
            cpu_ms * 1000.0 / ok.max(1) as f64,
        ));
        out.push(("fds_before".into(), fds0 as f64));
        out.push(("fds_after".into(), after.1 as f64));
        out.push(("rss_kib_before".into(), rss0 as f64));
        out.push(("rss_kib_after".into(), after.2 as f64));
        out.push(("threads_before".into(), threads_before as f64));
        out.push(("threads_after".into(), threads(pid) as f64));
    }
    for e in &t.first_errors {
        eprintln!("loadgen: error: {e}");
    }
    out
}

impl Args {
    fn clone_for_warmup(a: &Args) -> Args {
        Args {
            target: a.target.clone(),
            cert: a.cert.clone(),
            key: a.key.clone(),
            clients: a.clients,
            requests: a.requests,
            fresh: a.fresh,
            mix: a.mix.clone(),
            path: a.path.clone(),
            pipeline: a.pipeline,
            kernel: a.kernel.clone(),
            pid: a.pid,
            slowloris: 0,
            idle: 0,
            flood_target: None,
            flood_secs: 0,
            hold: 0,
            json: None,
        }
    }
}

/// Holds a connection that sends its request head a byte at a time, or
/// (`idle`) nothing at all, reconnecting whenever the daemon closes it,
/// until `until`.
async fn flooder(addr: String, tls: Arc<rustls::ClientConfig>, idle: bool, until: Instant) {
    let head = b"GET /1.0 HTTP/1.1\r\nHost: kvmbox\r\nX-Slow: ";
    while Instant::now() < until {
        if idle {
            if let Ok(mut s) = smol::net::TcpStream::connect(addr.as_str()).await {
                // Idle until the daemon closes it or the flood ends.
                let mut b = [0u8; 64];
                let left = until.saturating_duration_since(Instant::now());
                let _ = kvmbox_timed(left, s.read(&mut b)).await;
            } else {
                smol::Timer::after(Duration::from_millis(100)).await;
            }
            continue;
        }
        let Ok(mut s) = connect(&Target::Tcp(addr.clone()), &tls).await else {
            smol::Timer::after(Duration::from_millis(100)).await;
            continue;
        };
        let mut i = 0usize;
        while Instant::now() < until {
            let byte = head.get(i).copied().unwrap_or(b'a');
            if s.write_all(&[byte]).await.is_err() || s.flush().await.is_err() {
                break;
            }
            i += 1;
            smol::Timer::after(Duration::from_millis(500)).await;
        }
    }
}

async fn kvmbox_timed<T>(t: Duration, f: impl std::future::Future<Output = T>) -> Option<T> {
    smol::future::or(async { Some(f.await) }, async {
        smol::Timer::after(t).await;
        None
    })
    .await
}

/// The flood, and root's requests on the Unix socket while it runs.
fn flood(
    ex: &LocalExecutor<'_>,
    args: &Rc<Args>,
    target: &Target,
    tls: &Arc<rustls::ClientConfig>,
) -> Vec<(String, f64)> {
    let Some(addr) = args
        .flood_target
        .as_deref()
        .and_then(|t| t.strip_prefix("tcp:"))
    else {
        eprintln!("loadgen: --slowloris/--idle need --flood-target tcp:HOST:PORT");
        std::process::exit(2);
    };
    let until = Instant::now() + Duration::from_secs(args.flood_secs);
    let anon = tls_config(None, None);
    let tally = Rc::new(RefCell::new(Tally::default()));
    smol::block_on(ex.run(async {
        let mut tasks = Vec::new();
        for i in 0..args.slowloris + args.idle {
            tasks.push(ex.spawn(flooder(
                addr.to_string(),
                anon.clone(),
                i >= args.slowloris,
                until,
            )));
        }
        // Let the flood take its slots first.
        smol::Timer::after(Duration::from_millis(500)).await;
        let mut buf = Vec::new();
        while Instant::now() < until {
            let t0 = Instant::now();
            let r = async {
                let mut s = connect(target, tls).await?;
                request(&mut s, &mut buf, "GET", "/1.0", None).await
            };
            let r = kvmbox_timed(Duration::from_secs(10), r).await;
            buf.clear();
            let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
            match r {
                Some(Ok((200, _))) => tally.borrow_mut().latencies_us.push(us),
                Some(Ok((st, _))) => tally.borrow_mut().error(format!("probe: {st}")),
                Some(Err(e)) => tally.borrow_mut().error(format!("probe: {e}")),
                None => tally.borrow_mut().error("probe: no answer in 10 s".into()),
            }
            smol::Timer::after(Duration::from_millis(100)).await;
        }
        for t in tasks {
            t.await;
        }
    }));
    let mut t = tally.borrow_mut();
    t.latencies_us.sort_unstable();
    for e in &t.first_errors {
        eprintln!("loadgen: error: {e}");
    }
    vec![
        ("probe_ok".into(), t.latencies_us.len() as f64),
        ("probe_errors".into(), t.errors as f64),
        ("probe_p50_ms".into(), percentile(&t.latencies_us, 0.5)),
        ("probe_max_ms".into(), percentile(&t.latencies_us, 1.0)),
    ]
}

/// Opens `args.hold` connections, one request on each, and keeps them
/// open until stdin closes.
fn hold(ex: &LocalExecutor<'_>, args: &Rc<Args>, target: &Target, tls: &Arc<rustls::ClientConfig>) {
    let held = smol::block_on(ex.run(async {
        let mut held = Vec::new();
        for _ in 0..args.hold {
            let mut s = connect(target, tls).await.unwrap();
            let mut buf = Vec::new();
            let (st, _) = request(&mut s, &mut buf, "GET", "/1.0", None)
                .await
                .unwrap();
            assert_eq!(st, 200);
            held.push(s);
        }
        held
    }));
    println!("held {}", held.len());
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    drop(held);
}

fn main() {
    let args: Args = argh::from_env();
    let args = Rc::new(args);
    let target = Target::parse(&args.target);
    let tls = tls_config(args.cert.as_deref(), args.key.as_deref());
    let ex = LocalExecutor::new();
    let figures = if args.hold > 0 {
        hold(&ex, &args, &target, &tls);
        return;
    } else if args.slowloris + args.idle > 0 {
        flood(&ex, &args, &target, &tls)
    } else {
        load(&ex, &args, &target, &tls)
    };
    for (k, v) in &figures {
        println!("{k} {v:.3}");
    }
    if let Some(path) = &args.json {
        let map: serde_json::Map<String, serde_json::Value> = figures
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::json!(v)))
            .collect();
        std::fs::write(path, serde_json::Value::Object(map).to_string()).unwrap();
    }
}
