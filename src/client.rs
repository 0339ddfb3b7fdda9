//! The client side: its identity (a P-256 key and self-signed certificate
//! made on first use, SPEC M1/L3), where it keeps them, and a blocking HTTP
//! client over TLS that speaks LXD's envelope. Blocking on purpose: a CLI
//! makes one or two calls and exits. The remote issue reuses it over TCP.

use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::http::{self, Limits};
use crate::pki::{Cert, CertSpec, Curve, Key, Profile};
use crate::store::{write_atomic, Overwrite};
use crate::tls::ServerTrust;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot use client configuration directory {0} (KVMBOX_CONF names another)")]
    ConfDir(PathBuf, #[source] io::Error),
    #[error("{0} is not usable")]
    BadIdentity(PathBuf, #[source] crate::pki::Error),
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
    #[error("the daemon sent an invalid response: {0}")]
    Protocol(String),
}

/// Where the client keeps its key and certificate: `$KVMBOX_CONF`, else
/// `$HOME/.config/kvmbox`, else `$XDG_RUNTIME_DIR/kvmbox`, else
/// `/run/kvmbox-client-<uid>` (for root on hosts with no HOME and no passwd
/// entry, as in an initramfs).
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
    PathBuf::from(format!("/run/kvmbox-client-{}", crate::sys::euid()))
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

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, UnixStream>;

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
            .map_err(|e| Error::Protocol(e.to_string()))?;
        let conn = rustls::ClientConnection::new(config, name)
            .map_err(|e| Error::Tls(crate::tls::Error::Config(e)))?;
        let mut stream = rustls::StreamOwned::new(conn, sock);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(Client { stream })
    }

    /// The raw TLS stream (tests use it to send what no client would).
    pub fn raw(&mut self) -> &mut (impl Read + Write) {
        &mut self.stream
    }

    /// Sends a request and returns the status and decoded JSON body.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), Error> {
        let body = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        self.stream
            .write_all(&http::request_bytes(method, path, body.as_deref()))?;
        self.stream.flush()?;
        let limits = Limits {
            max_head: 64 * 1024,
            max_body: 64 * 1024 * 1024,
        };
        let (status, body) = http::read_response(&mut self.stream, limits)?;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| Error::Protocol(format!("body is not JSON ({e})")))?;
        Ok((status, value))
    }

    /// A request whose envelope is unwrapped: the metadata of a sync
    /// response, the operation of an async one, or the error.
    pub fn call(&mut self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Error> {
        let (status, mut v) = self.request(method, path, body)?;
        match v.get("type").and_then(Value::as_str) {
            Some("sync") | Some("async") => Ok(v
                .get_mut("metadata")
                .map(Value::take)
                .unwrap_or(Value::Null)),
            Some("error") => Err(Error::Api {
                status,
                message: v
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error")
                    .to_string(),
            }),
            _ => Err(Error::Protocol(format!(
                "status {status} without an envelope"
            ))),
        }
    }
}
