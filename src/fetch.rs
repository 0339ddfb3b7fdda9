//! HTTPS GET for image servers: one request per connection, the response
//! head parsed by httparse, the body streamed to the caller with every
//! bound checked as it comes (RFC 9110/9112 for the HTTP parts).
//!
//! Public servers are trusted through the system's CA bundle:
//! `$SSL_CERT_FILE` when set (as OpenSSL and Go read it), else Debian's
//! `/etc/ssl/certs/ca-certificates.crt`. Only `https` is spoken, redirects
//! are refused (the URL the caller gave is the only host contacted), and a
//! chunked body is refused: image servers send a `Content-Length`, and a
//! body without one ends when the connection does.
//!
//! Blocking on purpose: a socket read timeout is the stall timeout, and the
//! daemon runs a download on a blocking thread anyway (it writes a file).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::fault::{Blame, Fault};

/// Debian's (and Ubuntu's, Alpine's) bundle of trusted CAs.
const DEFAULT_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The longest response head read.
const MAX_HEAD: usize = 16 * 1024;

#[derive(thiserror::Error)]
pub(crate) enum Error {
    #[error("{0:?} is not an https:// URL this daemon can fetch from")]
    Url(String),
    #[error("cannot read the trusted CA certificates in {}", .0.display())]
    CaFile(PathBuf, #[source] io::Error),
    #[error("{} holds no usable CA certificate", .0.display())]
    NoCa(PathBuf),
    #[error("TLS configuration failed")]
    Tls(#[from] rustls::Error),
    #[error("cannot connect to {0}")]
    Connect(String, #[source] io::Error),
    #[error("{0}: no data for {1} seconds: the server stalled")]
    Stalled(String, u64),
    #[error("{0}: took longer than {1} seconds")]
    TooSlow(String, u64),
    #[error("reading {0} failed")]
    Io(String, #[source] io::Error),
    #[error("{0}: the server's answer is not HTTP/1.1")]
    BadHead(String),
    #[error("{0}: the server answered {1} {2}")]
    Status(String, u16, String),
    #[error("{0}: the server redirects to {1:?}; redirects are not followed")]
    Redirect(String, String),
    #[error("{0}: chunked or encoded bodies are not supported")]
    Encoding(String),
    #[error("{0}: more than the {1} bytes expected")]
    TooBig(String, u64),
    #[error("{0}: the body ended after {1} of {2} bytes")]
    Truncated(String, u64, u64),
    #[error("{0}: its SHA-256 is {1}, not {2} as the server's catalogue says")]
    Hash(String, String, String),
    #[error("cannot write the download")]
    Write(#[source] io::Error),
}

crate::debug_as_display!(Error);

impl Blame for Error {
    fn fault(&self) -> Fault {
        match self {
            Error::Url(_) => Fault::Input,
            Error::Status(_, 404, _) => Fault::Missing,
            Error::CaFile(..) | Error::NoCa(_) | Error::Tls(_) | Error::Write(_) => Fault::Host,
            _ => Fault::Peer,
        }
    }
}

/// An `https://HOST[:PORT][/PATH]` URL, split once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Url {
    host: String,
    port: u16,
    /// The path below which relative paths are joined, without a trailing
    /// slash ("" for the root).
    base: String,
}

impl Url {
    /// Accepts only what can go into a request line and a Host header as it
    /// is: no user info, query, fragment, spaces or control characters.
    pub(crate) fn parse(s: &str) -> Result<Url, Error> {
        let bad = || Error::Url(s.to_string());
        let rest = s.strip_prefix("https://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if !path.bytes().all(path_byte) {
            return Err(bad());
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6.split_once(']').ok_or_else(bad)?;
                h.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
                (h, after.strip_prefix(':'))
            }
            None => match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
        if !host_ok {
            return Err(bad());
        }
        let port = match port {
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?,
            None => 443,
        };
        Ok(Url {
            host: host.to_ascii_lowercase(),
            port,
            base: path.trim_end_matches('/').to_string(),
        })
    }

    /// The request target of `rel`, a path relative to this URL (checked by
    /// the caller for what it may hold).
    fn target(&self, rel: &str) -> String {
        format!("{}/{}", self.base, rel.trim_start_matches('/'))
    }

    /// `rel` as a full URL, for messages.
    pub(crate) fn show(&self, rel: &str) -> String {
        match self.host.contains(':') {
            true => format!("https://[{}]:{}{}", self.host, self.port, self.target(rel)),
            false => format!("https://{}:{}{}", self.host, self.port, self.target(rel)),
        }
    }
}

/// Bytes a path may hold here: RFC 3986's unreserved and a few sub-delims,
/// nothing that needs quoting or ends the request line.
pub(crate) fn path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~:+@,=/".contains(&b)
}

/// Fetches from one server with the system's trusted CAs.
pub(crate) struct Fetcher {
    config: Arc<rustls::ClientConfig>,
    /// No byte for this long fails the transfer.
    stall: Duration,
}

impl Fetcher {
    pub(crate) fn new(stall: Duration) -> Result<Fetcher, Error> {
        let path = std::env::var_os("SSL_CERT_FILE")
            .filter(|p| !p.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_CA_FILE), PathBuf::from);
        let pem = std::fs::read(&path).map_err(|e| Error::CaFile(path.clone(), e))?;
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots
            .add_parsable_certificates(CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok));
        if added == 0 {
            return Err(Error::NoCa(path));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Fetcher {
            config: Arc::new(config),
            stall,
        })
    }

    /// Sends `GET rel` to `url`'s server and reads the response head; the
    /// body is at most `max` bytes (exactly `max` when `exact`).
    pub(crate) fn get(&self, url: &Url, rel: &str, max: u64, exact: bool) -> Result<Body, Error> {
        let shown = url.show(rel);
        let conn_err = |e| Error::Connect(format!("{}:{}", url.host, url.port), e);
        let addrs: Vec<_> = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .map_err(conn_err)?
            .collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        let mut tcp = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, self.stall) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = tcp.ok_or_else(|| conn_err(last))?;
        tcp.set_read_timeout(Some(self.stall))
            .and_then(|()| tcp.set_write_timeout(Some(self.stall)))
            .map_err(conn_err)?;
        let name = ServerName::try_from(url.host.clone()).map_err(|_| Error::Url(shown.clone()))?;
        let tls = rustls::ClientConnection::new(self.config.clone(), name)?;
        let mut body = Body {
            stream: rustls::StreamOwned::new(tls, tcp),
            shown,
            stall: self.stall.as_secs(),
            pending: Vec::new(),
            left: max,
            want: max,
            exact,
        };
        let host = match url.host.contains(':') {
            true => format!("[{}]", url.host),
            false => url.host.clone(),
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {host}:{}\r\nUser-Agent: kvmbox/{}\r\n\
             Accept-Encoding: identity\r\nConnection: close\r\n\r\n",
            url.target(rel),
            url.port,
            env!("CARGO_PKG_VERSION"),
        );
        let sent = body
            .stream
            .write_all(request.as_bytes())
            .and_then(|()| body.stream.flush());
        sent.map_err(|e| body.io(e))?;
        body.head()?;
        Ok(body)
    }

    /// The whole body of `GET rel`, at most `max` bytes, within `deadline`.
    pub(crate) fn get_all(
        &self,
        url: &Url,
        rel: &str,
        max: u64,
        deadline: Duration,
    ) -> Result<Vec<u8>, Error> {
        let start = Instant::now();
        let mut body = self.get(url, rel, max, false)?;
        let mut out = Vec::new();
        body.each(|chunk| {
            if start.elapsed() > deadline {
                return Err(Error::TooSlow(url.show(rel), deadline.as_secs()));
            }
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(out)
    }
}

/// A response body being read.
pub(crate) struct Body {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    shown: String,
    stall: u64,
    /// Body bytes read with the head.
    pending: Vec<u8>,
    /// How many more bytes may come.
    left: u64,
    /// The bound, or the exact length expected.
    want: u64,
    /// The body must be exactly `want` bytes long.
    exact: bool,
}

impl Body {
    fn io(&self, e: io::Error) -> Error {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                Error::Stalled(self.shown.clone(), self.stall)
            }
            _ => Error::Io(self.shown.clone(), e),
        }
    }

    /// Reads and checks the response head: 200 with a length that fits.
    fn head(&mut self) -> Result<(), Error> {
        let mut buf = vec![0u8; MAX_HEAD];
        let mut got = 0;
        loop {
            let Some(free) = buf.get_mut(got..).filter(|f| !f.is_empty()) else {
                return Err(Error::BadHead(self.shown.clone()));
            };
            let n = self.stream.read(free).map_err(|e| self.io(e))?;
            if n == 0 {
                return Err(Error::BadHead(self.shown.clone()));
            }
            got += n;
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            let filled = buf.get(..got).unwrap_or_default();
            let used = match resp.parse(filled) {
                Ok(httparse::Status::Complete(used)) => used,
                Ok(httparse::Status::Partial) => continue,
                Err(_) => return Err(Error::BadHead(self.shown.clone())),
            };
            let code = resp.code.unwrap_or(0);
            let (mut len, mut encoded, mut location) = (None, false, "");
            for h in resp.headers.iter() {
                let v = std::str::from_utf8(h.value).unwrap_or_default().trim();
                let is = |name: &str| h.name.eq_ignore_ascii_case(name);
                if is("content-length") {
                    // Two different lengths are a smuggling attempt, not a choice.
                    let n: u64 = v.parse().map_err(|_| Error::BadHead(self.shown.clone()))?;
                    if len.is_some_and(|l| l != n) {
                        return Err(Error::BadHead(self.shown.clone()));
                    }
                    len = Some(n);
                } else if is("transfer-encoding") || is("content-encoding") {
                    encoded |= v != "identity";
                } else if is("location") {
                    location = v;
                }
            }
            if (300..400).contains(&code) {
                return Err(Error::Redirect(self.shown.clone(), location.to_string()));
            }
            if code != 200 {
                let reason = resp.reason.unwrap_or_default().to_string();
                return Err(Error::Status(self.shown.clone(), code, reason));
            }
            if encoded {
                return Err(Error::Encoding(self.shown.clone()));
            }
            if let Some(len) = len {
                if len > self.want {
                    return Err(Error::TooBig(self.shown.clone(), self.want));
                }
                if self.exact && len < self.want {
                    return Err(Error::Truncated(self.shown.clone(), len, self.want));
                }
                self.left = len;
                self.want = len;
                self.exact = true;
            }
            self.pending = filled.get(used..).unwrap_or_default().to_vec();
            return Ok(());
        }
    }

    /// Hands each piece of the body to `sink`, checking its length.
    pub(crate) fn each(
        &mut self,
        mut sink: impl FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut buf = std::mem::take(&mut self.pending);
        let mut n = buf.len();
        buf.resize(buf.len().max(1 << 20), 0);
        loop {
            if n > 0 {
                if n as u64 > self.left {
                    return Err(Error::TooBig(self.shown.clone(), self.want));
                }
                self.left -= n as u64;
                sink(buf.get(..n).unwrap_or_default())?;
            }
            if self.exact && self.left == 0 {
                return Ok(());
            }
            n = match self.stream.read(&mut buf) {
                Ok(n) => n,
                // A server closing without TLS's close_notify: the end of a
                // body whose length was not told; the checks below judge it.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(self.io(e)),
            };
            if n == 0 {
                return match self.exact {
                    true => Err(Error::Truncated(
                        self.shown.clone(),
                        self.want - self.left,
                        self.want,
                    )),
                    false => Ok(()),
                };
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed test should panic")]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("https://images.example.org").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.base.as_str()),
            ("images.example.org", 443, "")
        );
        assert_eq!(u.target("streams/v1/index.json"), "/streams/v1/index.json");
        let u = Url::parse("https://127.0.0.1:8443/mirror/").unwrap();
        assert_eq!(u.show("a/b"), "https://127.0.0.1:8443/mirror/a/b");
        let u = Url::parse("https://[::1]:9/").unwrap();
        assert_eq!(u.show("x"), "https://[::1]:9/x");
        for bad in [
            "http://example.org",
            "https://",
            "https://user@host/",
            "https://host:0",
            "https://host:99999",
            "https://host:x",
            "https://host/a b",
            "https://host/a?q",
            "https://host/a#f",
            "https://host/a\r\nX: y",
            "https://ho st",
            "https://[nothex]:1",
            "https://[::1",
            "ftp://host",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }
}
