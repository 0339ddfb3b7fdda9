//! The client side: its identity (a P-256 key and self-signed certificate
//! made on first use, as Multipass and LXD clients do), where it keeps them, and a blocking HTTP
//! client over TLS that speaks LXD's envelope. Blocking on purpose: a CLI
//! makes one or two calls and exits. Remote access reuses it over TCP.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::http::{self, Limits};
use crate::pki::{Cert, CertSpec, Curve, Key, Profile};
use crate::store::{write_atomic, Overwrite};
use crate::tls::ServerTrust;
use crate::wire::Exchange;

#[derive(thiserror::Error)]
pub enum Error {
    #[error("cannot use client configuration directory {0} (KVMBOX_CONF names another)")]
    ConfDir(PathBuf, #[source] io::Error),
    #[error("{0} is not usable")]
    BadIdentity(PathBuf, #[source] crate::pki::Error),
    #[error(transparent)]
    File(#[from] crate::store::Error),
    #[error("remote {0} is checked by client.ca, which is gone")]
    NoCa(String),
    #[error("{0:?} is not HOST[:PORT]")]
    BadAddress(String),
    #[error("cannot create the client certificate")]
    Identity(#[source] crate::pki::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::Error),
    #[error("cannot connect to {path}: {hint}")]
    Connect {
        path: PathBuf,
        hint: String,
        #[source]
        source: io::Error,
    },
    #[error("connection to the daemon failed")]
    Io(#[from] io::Error),
    /// The daemon answered with an error envelope.
    #[error("{message}")]
    Api { status: u16, message: String },
    #[error("the daemon sent a body that is not JSON")]
    NotJson(#[source] serde_json::Error),
    #[error("the daemon sent no metadata")]
    NoMetadata(#[source] serde_json::Error),
    #[error("the daemon sent status {0} without an envelope")]
    NoEnvelope(u16),
    #[error("the server sent no certificate")]
    NoCert,
    #[error("the server sent a certificate that is not X.509")]
    BadCert(#[source] crate::pki::Error),
    /// Not expected: the name is a constant when the address is none.
    #[error("{0:?} cannot name a TLS server")]
    ServerName(&'static str),
    #[error("cannot connect to {addr}")]
    ConnectTcp {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "the certificate of {addr} has changed: pinned {pinned}, presented {presented}; \
         this may be a man-in-the-middle attack. If the server was reinstalled, check the \
         new fingerprint with its administrator, then `kvmbox remote remove` and add it again"
    )]
    CertChanged {
        addr: String,
        pinned: String,
        presented: String,
    },
    #[error("the certificate of {addr} is not signed by the CA in client.ca for that name")]
    NotCaSigned { addr: String },
    #[error("TLS handshake with {addr} failed")]
    Handshake {
        addr: String,
        #[source]
        source: io::Error,
    },
}

crate::debug_as_display!(Error);

/// Where the client keeps its key and certificate: `$KVMBOX_CONF`, else
/// `$HOME/.config/kvmbox`, else `$XDG_RUNTIME_DIR/kvmbox`, else
/// `/run/kvmbox-client-0` for root (an initramfs has no HOME and no passwd
/// entry) and `/tmp/kvmbox-client-<uid>` for other users (who cannot write
/// /run; the directory must then be theirs, or it is refused).
pub fn config_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = env("KVMBOX_CONF") {
        return d;
    }
    if let Some(h) = env("HOME") {
        return h.join(".config").join("kvmbox");
    }
    if let Some(r) = env("XDG_RUNTIME_DIR") {
        return r.join("kvmbox");
    }
    match crate::sys::euid() {
        0 => PathBuf::from("/run/kvmbox-client-0"),
        uid => PathBuf::from(format!("/tmp/kvmbox-client-{uid}")),
    }
}

/// Prompts on the terminal for a secret, without echo.
pub fn prompt_secret(prompt: &str) -> io::Result<String> {
    crate::sys::read_secret(prompt)
}

/// The daemon's socket: `--socket`, else `$KVMBOX_SOCKET`, else
/// `$KVMBOX_DIR/unix.socket`, else `/var/lib/kvmbox/unix.socket`.
pub fn socket_path(flag: Option<&Path>) -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    flag.map(Path::to_path_buf)
        .or_else(|| env("KVMBOX_SOCKET"))
        .or_else(|| env("KVMBOX_DIR").map(|d| d.join("unix.socket")))
        .unwrap_or_else(|| PathBuf::from("/var/lib/kvmbox/unix.socket"))
}

/// The client's key pair.
#[derive(Debug)]
pub struct ClientIdentity {
    pub cert: Cert,
    key: Key,
}

impl ClientIdentity {
    /// Reads `dir/client.{key,crt}`, creating the directory (0700) and a
    /// fresh pair if they do not exist yet.
    pub fn load_or_create(dir: &Path) -> Result<ClientIdentity, Error> {
        let conf = |e| Error::ConfDir(dir.to_path_buf(), e);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(conf)?;
        // A shared fallback location could have been made by someone else.
        let meta = std::fs::symlink_metadata(dir).map_err(conf)?;
        if !meta.is_dir() || meta.uid() != crate::sys::euid() {
            return Err(conf(io::Error::other("not a directory owned by this user")));
        }
        let (kp, cp) = (dir.join("client.key"), dir.join("client.crt"));
        if kp.exists() && cp.exists() {
            let key = Key::from_pem(&std::fs::read(&kp).map_err(conf)?)
                .map_err(|e| Error::BadIdentity(kp.clone(), e))?;
            let cert = Cert::from_pem(&std::fs::read(&cp).map_err(conf)?)
                .map_err(|e| Error::BadIdentity(cp.clone(), e))?;
            return Ok(ClientIdentity { cert, key });
        }
        let key = Key::generate(Curve::P256).map_err(Error::Identity)?;
        let cert = CertSpec {
            cn: format!("kvmbox-client@{}", crate::sys::hostname()),
            sans: Vec::new(),
            days: 3650,
            profile: Profile::SelfSigned,
        }
        .self_signed(&key)
        .map_err(Error::Identity)?;
        write_atomic(&kp, key.to_pem().as_bytes(), 0o600, Overwrite::Replace).map_err(conf)?;
        write_atomic(&cp, cert.to_pem().as_bytes(), 0o644, Overwrite::Replace).map_err(conf)?;
        let _ = std::fs::set_permissions(&cp, std::fs::Permissions::from_mode(0o644));
        Ok(ClientIdentity { cert, key })
    }
}

/// A byte stream TLS runs over: the Unix socket or TCP.
trait Transport: Read + Write + Send + std::fmt::Debug {
    fn set_read_timeout(&self, limit: Option<Duration>) -> io::Result<()>;
}
impl Transport for NoSigPipe<UnixStream> {
    fn set_read_timeout(&self, limit: Option<Duration>) -> io::Result<()> {
        self.0.set_read_timeout(limit)
    }
}
impl Transport for NoSigPipe<TcpStream> {
    fn set_read_timeout(&self, limit: Option<Duration>) -> io::Result<()> {
        self.0.set_read_timeout(limit)
    }
}

/// A socket written with MSG_NOSIGNAL. The applets keep SIGPIPE's default
/// action so that `kvmbox … | head -1` ends quietly; without this, a daemon
/// that closes the connection mid-request (it refused the connection, or a
/// request too large) would kill the client with SIGPIPE and no message.
#[derive(Debug)]
struct NoSigPipe<S>(S);

impl<S: Read> Read for NoSigPipe<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<S: std::os::fd::AsRawFd> Write for NoSigPipe<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        crate::sys::send_nosignal(&self.0, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, Box<dyn Transport>>;

/// How a remote's server certificate is checked.
#[derive(Clone, Debug)]
pub enum RemoteTrust {
    /// First contact: accept any EC certificate and report it, so that the
    /// caller can show or compare its fingerprint before sending anything.
    Probe,
    /// The certificate must have this fingerprint (pinned at `remote add`).
    Pinned(String),
    /// PKI mode: the certificate must be issued by one of these CAs for the
    /// host name or address connected to.
    Ca(Vec<Cert>),
}

/// Splits `HOST[:PORT]` (also `https://HOST:PORT`, `[v6]:PORT`) into a
/// connectable `host:port` and the bare host; the port defaults to 8443.
pub fn parse_address(text: &str) -> Result<(String, String), Error> {
    let t = text
        .strip_prefix("https://")
        .unwrap_or(text)
        .trim_end_matches('/');
    let bad = || Error::BadAddress(text.to_string());
    if t.is_empty() || t.contains(['/', '@', ' ']) {
        return Err(bad());
    }
    let (host, port) = if let Some(rest) = t.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        match after {
            "" => (h.to_string(), 8443),
            p => (
                h.to_string(),
                p.strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(bad)?,
            ),
        }
    } else if t.matches(':').count() > 1 {
        (t.to_string(), 8443) // a bare IPv6 address
    } else if let Some((h, p)) = t.split_once(':') {
        (h.to_string(), p.parse::<u16>().map_err(|_| bad())?)
    } else {
        (t.to_string(), 8443)
    };
    if host.is_empty() {
        return Err(bad());
    }
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok((addr, host))
}

/// One keep-alive connection to the daemon.
#[derive(Debug)]
pub struct Client {
    stream: TlsStream,
}

impl Client {
    /// Connects to the daemon's Unix socket and completes the TLS handshake.
    pub fn connect_unix(path: &Path, id: &ClientIdentity) -> Result<Client, Error> {
        let sock = UnixStream::connect(path).map_err(|source| Error::Connect {
            path: path.to_path_buf(),
            hint: match source.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    "is kvmboxd running? (--socket or KVMBOX_SOCKET name another socket)".into()
                }
                io::ErrorKind::PermissionDenied => "permission denied: until its first client \
                    is trusted the socket is open only to its admin group"
                    .into(),
                _ => source.to_string(),
            },
            source,
        })?;
        // Long enough for an operation wait, short enough not to hang forever.
        sock.set_read_timeout(Some(Duration::from_secs(3700)))?;
        sock.set_write_timeout(Some(Duration::from_secs(60)))?;
        let config = crate::tls::client_config(&id.cert, &id.key, ServerTrust::LocalSocket)?;
        let name = rustls::pki_types::ServerName::try_from("kvmbox")
            .map_err(|_| Error::ServerName("kvmbox"))?;
        let conn = rustls::ClientConnection::new(config, name)
            .map_err(|e| Error::Tls(crate::tls::Error::Config(e)))?;
        let mut stream =
            rustls::StreamOwned::new(conn, Box::new(NoSigPipe(sock)) as Box<dyn Transport>);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(Client { stream })
    }

    /// Connects to a remote daemon over TCP (`addr` as [`parse_address`]
    /// makes it) and completes the TLS handshake, checking the server as
    /// `trust` says. Returns the server's certificate too.
    pub fn connect_tcp(
        addr: &str,
        host: &str,
        id: &ClientIdentity,
        trust: &RemoteTrust,
    ) -> Result<(Client, Cert), Error> {
        use std::net::ToSocketAddrs;
        let conn_err = |source| Error::ConnectTcp {
            addr: addr.to_string(),
            source,
        };
        let targets: Vec<_> = addr.to_socket_addrs().map_err(conn_err)?.collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        let mut sock = None;
        for t in targets {
            match TcpStream::connect_timeout(&t, Duration::from_secs(10)) {
                Ok(s) => {
                    sock = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let sock = sock.ok_or_else(|| conn_err(last))?;
        sock.set_read_timeout(Some(Duration::from_secs(3700)))?;
        sock.set_write_timeout(Some(Duration::from_secs(60)))?;
        let _ = sock.set_nodelay(true);
        let seen = Arc::new(Mutex::new(None));
        let server_trust = match trust {
            RemoteTrust::Probe => ServerTrust::Probe,
            RemoteTrust::Pinned(fp) => ServerTrust::Pinned(fp.clone()),
            RemoteTrust::Ca(ca) => ServerTrust::Ca(ca.clone(), host.to_string()),
        };
        let config =
            crate::tls::remote_client_config(&id.cert, &id.key, server_trust, seen.clone())?;
        // The name is checked by the verifier (pinning or the CA), not by
        // rustls; an address that is no DNS name still needs a ServerName.
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .or_else(|_| rustls::pki_types::ServerName::try_from("kvmbox".to_string()))
            .map_err(|_| Error::ServerName("kvmbox"))?;
        let conn = rustls::ClientConnection::new(config, name)
            .map_err(|e| Error::Tls(crate::tls::Error::Config(e)))?;
        let mut stream =
            rustls::StreamOwned::new(conn, Box::new(NoSigPipe(sock)) as Box<dyn Transport>);
        while stream.conn.is_handshaking() {
            if let Err(source) = stream.conn.complete_io(&mut stream.sock) {
                let presented: Option<Vec<u8>> = seen.lock().ok().and_then(|g| g.clone());
                return Err(match (trust, presented) {
                    (RemoteTrust::Pinned(pinned), Some(der)) => {
                        let presented = Cert::from_der(&der)
                            .map(|c| c.fingerprint())
                            .unwrap_or_default();
                        if &presented != pinned {
                            Error::CertChanged {
                                addr: addr.to_string(),
                                pinned: pinned.clone(),
                                presented,
                            }
                        } else {
                            Error::Handshake {
                                addr: addr.to_string(),
                                source,
                            }
                        }
                    }
                    (RemoteTrust::Ca(_), Some(_)) => Error::NotCaSigned {
                        addr: addr.to_string(),
                    },
                    _ => Error::Handshake {
                        addr: addr.to_string(),
                        source,
                    },
                });
            }
        }
        let der = stream
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .ok_or(Error::NoCert)?;
        let cert = Cert::from_der(&der).map_err(Error::BadCert)?;
        Ok((Client { stream }, cert))
    }

    /// The raw TLS stream (tests use it to send what no client would).
    pub fn raw(&mut self) -> &mut (impl Read + Write) {
        &mut self.stream
    }

    /// Waits at most `limit` in each read from now on.
    pub(crate) fn set_read_timeout(&mut self, limit: Option<Duration>) -> io::Result<()> {
        self.stream.sock.set_read_timeout(limit)
    }

    /// A request whose answer is not JSON (a console log, a file), with
    /// `headers` (LXD's `X-LXD-*`) and a raw `body`: the answer's body, or
    /// the error the daemon gave.
    pub fn fetch(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Result<Vec<u8>, Error> {
        let mut all = vec![("Content-Type", "application/octet-stream")];
        all.extend_from_slice(headers);
        let sent = self
            .stream
            .write_all(&http::request_bytes_with(method, path, body, &all))
            .and_then(|()| self.stream.flush());
        let limits = Limits {
            max_head: 64 * 1024,
            max_body: 64 * 1024 * 1024,
        };
        let (status, body) = match sent {
            Ok(()) => http::read_response(&mut self.stream, limits)?,
            Err(e) if hung_up(&e) => http::read_response(&mut ReadOnly(&mut self.stream), limits)
                .map_err(|_| Error::Io(e))?,
            Err(e) => return Err(e.into()),
        };
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("the daemon answered {status}"));
        Err(Error::Api { status, message })
    }

    /// `POST path` with the `len` bytes of `body` streamed as they are
    /// read (an image upload), with `headers`: the answer's envelope
    /// opened, as [`Client::call`] does.
    pub fn upload(
        &mut self,
        path: &str,
        body: &mut dyn Read,
        len: u64,
        headers: &[(&str, &str)],
    ) -> Result<Value, Error> {
        let limits = Limits {
            max_head: 64 * 1024,
            max_body: 64 * 1024 * 1024,
        };
        let head = http::request_head("POST", path, len, headers);
        let sent = self
            .stream
            .write_all(&head)
            .and_then(|()| io::copy(&mut body.take(len), &mut self.stream))
            .and_then(|n| match n == len {
                true => self.stream.flush(),
                false => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file is shorter than it was",
                )),
            });
        let (status, answer) = match sent {
            Ok(()) => http::read_response(&mut self.stream, limits)?,
            // The daemon may have refused the upload before reading it all.
            Err(e) if hung_up(&e) => http::read_response(&mut ReadOnly(&mut self.stream), limits)
                .map_err(|_| Error::Io(e))?,
            Err(e) => return Err(e.into()),
        };
        Ok(crate::wire::open(status, &answer)?)
    }

    /// Sends a request and returns the status and decoded JSON body.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), Error> {
        let body = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        let (status, body) = self.exchange(method, path, body.as_deref())?;
        let value = serde_json::from_slice(&body).map_err(Error::NotJson)?;
        Ok((status, value))
    }

    /// A request whose envelope is unwrapped: the metadata of a sync
    /// response, the operation of an async one, or the error.
    pub fn call(&mut self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Error> {
        self.call_as(method, path, body)
    }

    /// [`Client::call`], with the metadata decoded into `T` (fields it does
    /// not name are skipped, not built).
    pub fn call_as<T: serde::de::DeserializeOwned>(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, Error> {
        let body = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        crate::wire::call(self, method, path, body.as_deref())
    }

    /// [`Client::call`] with a typed body (one of the API's request
    /// bodies, such as [`crate::wire::InstancesPost`]).
    pub fn send<B: serde::Serialize + ?Sized>(
        &mut self,
        method: &str,
        path: &str,
        body: &B,
    ) -> Result<Value, Error> {
        let body = serde_json::to_vec(body).unwrap_or_default();
        crate::wire::call(self, method, path, Some(&body))
    }

    /// Waits for the operation `answer` (what [`Client::call`] returned)
    /// started, if it started one: the operation's metadata once it
    /// succeeded, or its error. Any other answer is handed back.
    pub fn wait(&mut self, answer: Value) -> Result<Value, Error> {
        crate::wire::settle(self, answer)
    }
}

impl Exchange for Client {
    type Error = Error;

    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), Error> {
        let limits = Limits {
            max_head: 64 * 1024,
            max_body: 64 * 1024 * 1024,
        };
        let sent = self
            .stream
            .write_all(&http::request_bytes(method, path, body))
            .and_then(|()| self.stream.flush());
        match sent {
            Ok(()) => Ok(http::read_response(&mut self.stream, limits)?),
            // The daemon may have answered and hung up before reading all
            // of the request (a body over its limit): its answer says why.
            Err(e) if hung_up(&e) => http::read_response(&mut ReadOnly(&mut self.stream), limits)
                .map_err(|_| Error::Io(e)),
            Err(e) => Err(e.into()),
        }
    }
}

impl From<crate::wire::Error> for Error {
    fn from(e: crate::wire::Error) -> Error {
        use crate::wire::Error as Wire;
        match e {
            Wire::Refused { status, message } => Error::Api { status, message },
            Wire::NotJson(e) => Error::NotJson(e),
            Wire::NoMetadata(e) => Error::NoMetadata(e),
            Wire::NoEnvelope(status) => Error::NoEnvelope(status),
            e @ Wire::UnknownProject(_) => Error::Api {
                status: 404,
                message: e.to_string(),
            },
        }
    }
}

/// What is left to read on a TLS stream whose writing side has failed:
/// `StreamOwned::read` would first try to send what is still queued, and
/// fail again, so records are read and decrypted here directly.
struct ReadOnly<'a>(&'a mut TlsStream);

impl Read for ReadOnly<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.conn.reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
            if self.0.conn.read_tls(&mut self.0.sock)? == 0 {
                return Ok(0);
            }
            self.0
                .conn
                .process_new_packets()
                .map_err(io::Error::other)?;
        }
    }
}

/// Whether a write failed because the peer closed the connection.
fn hung_up(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed test should panic")]
mod tests {
    use super::*;

    #[test]
    fn addresses_as_people_write_them() {
        let ok = |t: &str| parse_address(t).unwrap();
        assert_eq!(ok("edge1"), ("edge1:8443".into(), "edge1".into()));
        assert_eq!(
            ok("10.0.0.5:9443"),
            ("10.0.0.5:9443".into(), "10.0.0.5".into())
        );
        assert_eq!(ok("https://edge1:1/"), ("edge1:1".into(), "edge1".into()));
        assert_eq!(ok("[::1]:8443"), ("[::1]:8443".into(), "::1".into()));
        assert_eq!(ok("[fe80::1]"), ("[fe80::1]:8443".into(), "fe80::1".into()));
        assert_eq!(ok("::1"), ("[::1]:8443".into(), "::1".into()));
        for bad in [
            "",
            ":8443",
            "edge1:",
            "edge1:99999",
            "a/b",
            "u@h",
            "[::1",
            "[::1]x",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }
}
