//! HTTP/1.1 messages, just enough for a JSON API: heads parsed by httparse,
//! request bodies framed by Content-Length or chunked (as `lxc file push`
//! and `lxc image import` send them), every size bounded so that a hostile
//! peer costs a fixed amount of memory. Timeouts are the caller's (the server
//! races each read against a timer).

use std::io::{self, Read, Write};

use smol::io::{AsyncRead, AsyncReadExt};

/// Size bounds for one message.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Request line (or status line) plus headers, in bytes.
    pub max_head: usize,
    /// Body, in bytes.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_head: 16 * 1024,
            max_body: 4 * 1024 * 1024,
        }
    }
}

const MAX_HEADERS: usize = 64;

/// The longest chunk-size line (size and extensions) taken: sizes have at
/// most 16 hex digits, and extensions are ignored, so more is an attack.
const MAX_CHUNK_LINE: usize = 256;

/// A parsed request.
#[derive(Debug)]
pub(crate) struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub query: String,
    /// `Content-Type`, as sent.
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// `Sec-WebSocket-Key` of a request to upgrade to a websocket.
    pub websocket_key: Option<String>,
    /// LXD's own headers (`X-LXD-*`, names in lower case), the only ones
    /// a handler reads (file uploads carry type, owner and mode in them).
    pub lxd_headers: Vec<(String, String)>,
}

impl Request {
    /// The value of query parameter `key`, if present.
    pub(crate) fn query_param(&self, key: &str) -> Option<&str> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then_some(v)
        })
    }

    /// The value of header `X-LXD-<name>` (`name` in lower case).
    pub(crate) fn lxd_header(&self, name: &str) -> Option<&str> {
        self.lxd_headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why no request came out of the stream.
#[derive(thiserror::Error)]
pub(crate) enum ReadError {
    /// The peer closed the connection between requests.
    #[error("connection closed")]
    Closed,
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The peer sent something we refuse; answer with this status and close.
    #[error("{1}")]
    Refused(u16, &'static str),
}

crate::debug_as_display!(ReadError);

/// Reads one request, body and all. `buf` carries bytes read past the
/// previous request (pipelining) and keeps those past this one.
#[cfg(any(test, fuzzing))]
pub(crate) async fn read_request<R: AsyncRead + Unpin + ?Sized>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    limits: Limits,
) -> Result<Request, ReadError> {
    let head = read_head(stream, buf, limits).await?;
    read_rest(stream, buf, head, limits).await
}

/// Reads the body of the request `head` opens into memory, bounded by
/// `max_body`.
pub(crate) async fn read_rest<R: AsyncRead + Unpin + ?Sized>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    head: Head,
    limits: Limits,
) -> Result<Request, ReadError> {
    let (req, framing) = head.split();
    let mut reader = Body::new(stream, buf, framing, limits);
    reader.limit(limits.max_body as u64)?;
    let mut body = Vec::new();
    while let Some(chunk) = reader.next().await? {
        body.extend_from_slice(&chunk);
    }
    Ok(Request { body, ..req })
}

/// Reads a request's head, leaving its body in `buf` and the stream: the
/// caller decides from the head how the body is read (into memory, or
/// streamed with [`Body`]).
pub(crate) async fn read_head<R: AsyncRead + Unpin + ?Sized>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    limits: Limits,
) -> Result<Head, ReadError> {
    loop {
        // The parser's header table (2 KiB) only lives in this block, so
        // that it is not kept in the task across the read below.
        {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(buf) {
                Ok(httparse::Status::Complete(head_len)) => {
                    if head_len > limits.max_head {
                        return Err(ReadError::Refused(431, "request header too large"));
                    }
                    let head = head_of(&req)?;
                    buf.drain(..head_len);
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) => {
                    if buf.len() > limits.max_head {
                        return Err(ReadError::Refused(431, "request header too large"));
                    }
                }
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(ReadError::Refused(431, "too many request headers"))
                }
                Err(_) => return Err(ReadError::Refused(400, "malformed request")),
            }
        }
        if read_into(stream, buf, HEAD_READ).await? == 0 {
            return Err(if buf.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Refused(400, "truncated request")
            });
        }
    }
}

/// How much one read of a request head asks for: a whole head, as clients
/// send them, in one read.
pub(crate) const HEAD_READ: usize = 2048;

/// How much one read of a body asks for at most.
const BODY_READ: usize = 16 * 1024;

/// Reads at most `max` bytes onto the end of `buf`, straight into its spare
/// room: a buffer on the stack would be part of every connection's task
/// (an async fn keeps its locals across `.await`), held while the
/// connection idles. If the read is cancelled (a timeout), `buf` is left as
/// it was.
async fn read_into<R: AsyncRead + Unpin + ?Sized>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    /// Cuts `buf` back to what was read when dropped, however the read ends.
    struct Filled<'a> {
        buf: &'a mut Vec<u8>,
        keep: usize,
    }
    impl Drop for Filled<'_> {
        fn drop(&mut self) {
            self.buf.truncate(self.keep);
        }
    }
    let start = buf.len();
    let mut f = Filled { buf, keep: start };
    f.buf.resize(start.saturating_add(max), 0);
    let n = stream
        .read(f.buf.get_mut(start..).unwrap_or_default())
        .await?;
    f.keep = start.saturating_add(n);
    Ok(n)
}

/// A request's head: what routing decides on before any body is read.
#[derive(Debug)]
pub(crate) struct Head {
    pub method: String,
    pub path: String,
    pub query: String,
    /// `Content-Type`, as sent.
    pub content_type: Option<String>,
    body: Framing,
    keep_alive: bool,
    websocket_key: Option<String>,
    lxd_headers: Vec<(String, String)>,
}

impl Head {
    /// The request without its body, and how the body is framed.
    pub(crate) fn split(self) -> (Request, Framing) {
        let req = Request {
            method: self.method,
            path: self.path,
            query: self.query,
            content_type: self.content_type,
            body: Vec::new(),
            keep_alive: self.keep_alive,
            websocket_key: self.websocket_key,
            lxd_headers: self.lxd_headers,
        };
        (req, self.body)
    }
}

/// How a request's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(u64),
    Chunked,
}

fn head_of(req: &httparse::Request<'_, '_>) -> Result<Head, ReadError> {
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(ReadError::Refused(400, "malformed request"));
    };
    if !target.starts_with('/') {
        return Err(ReadError::Refused(400, "request target must be a path"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut content_length: Option<u64> = None;
    let mut content_type = None;
    let mut chunked = false;
    let mut connection = None;
    let mut upgrade = false;
    let mut websocket_key = None;
    let mut lxd_headers = Vec::new();
    for h in req.headers.iter() {
        let lower = h.name.to_ascii_lowercase();
        if let (Some(name), Ok(value)) =
            (lower.strip_prefix("x-lxd-"), std::str::from_utf8(h.value))
        {
            lxd_headers.push((name.to_string(), value.trim().to_string()));
            continue;
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(ReadError::Refused(400, "invalid Content-Length"))?;
            if content_length.is_some_and(|m| m != n) {
                return Err(ReadError::Refused(400, "conflicting Content-Length"));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("content-type") {
            content_type = std::str::from_utf8(h.value)
                .ok()
                .map(|v| v.trim().to_string());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only `chunked` alone: a list of codings, or one named twice,
            // is where request smuggling hides.
            if chunked {
                return Err(ReadError::Refused(400, "repeated Transfer-Encoding"));
            }
            if !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(ReadError::Refused(
                    501,
                    "only the chunked Transfer-Encoding is supported",
                ));
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = h.value.eq_ignore_ascii_case(b"websocket");
        } else if h.name.eq_ignore_ascii_case("sec-websocket-key") {
            // 16 random bytes in base64: anything else is not a key.
            websocket_key = std::str::from_utf8(h.value)
                .ok()
                .filter(|k| {
                    k.len() == 24
                        && k.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
                })
                .map(str::to_string);
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection = std::str::from_utf8(h.value)
                .ok()
                .map(str::to_ascii_lowercase);
        }
    }
    // RFC 9112 lets Transfer-Encoding win over Content-Length; a request
    // with both is refused instead, since a proxy in front may have read
    // it the other way. HTTP/1.0 has no chunked coding.
    let body = match (chunked, content_length) {
        (true, Some(_)) => {
            return Err(ReadError::Refused(
                400,
                "both Content-Length and Transfer-Encoding",
            ))
        }
        (true, None) if version == 0 => {
            return Err(ReadError::Refused(400, "chunked body in HTTP/1.0"))
        }
        (true, None) => Framing::Chunked,
        (false, len) => Framing::Length(len.unwrap_or(0)),
    };
    let keep_alive = match (version, connection.as_deref()) {
        (_, Some(c)) if c.contains("close") => false,
        (1, _) => true,
        (_, Some(c)) => c.contains("keep-alive"),
        _ => false,
    };
    Ok(Head {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        content_type,
        body,
        keep_alive,
        websocket_key: websocket_key.filter(|_| upgrade),
        lxd_headers,
    })
}

/// What an upload's body is read from, whatever the connection is.
pub(crate) type Stream<'a> = dyn AsyncRead + Unpin + Send + 'a;

/// How many bytes of data earn a body one more byte of framing.
const DATA_PER_FRAMING: u64 = 256;

/// A request body as it comes in, chunk by chunk: framed by
/// Content-Length or chunked (RFC 9112 section 7.1), its data bounded by
/// `max` and what frames it (size lines, extensions, trailers) by
/// `max_framing`, so that a stream of tiny chunks cannot make the server
/// read without end. The caller bounds the time of each [`Body::next`].
pub(crate) struct Body<'a, R: ?Sized> {
    stream: &'a mut R,
    buf: &'a mut Vec<u8>,
    state: BodyState,
    max: u64,
    read: u64,
    framing: usize,
    max_framing: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyState {
    /// This many bytes of a Content-Length body are still to come.
    Length(u64),
    /// A chunk's size line is next.
    ChunkSize,
    /// This many bytes of a chunk's data are still to come.
    ChunkData(u64),
    /// The CRLF after a chunk's data is next.
    ChunkEnd,
    Done,
}

impl<'a, R: AsyncRead + Unpin + ?Sized> Body<'a, R> {
    /// The body framed by `framing`, next in `buf` and `stream`; what
    /// frames it is bounded by `limits.max_head`, its data by
    /// [`Body::limit`] (unbounded until then).
    pub(crate) fn new(
        stream: &'a mut R,
        buf: &'a mut Vec<u8>,
        framing: Framing,
        limits: Limits,
    ) -> Self {
        let state = match framing {
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::ChunkSize,
        };
        Body {
            stream,
            buf,
            state,
            max: u64::MAX,
            read: 0,
            framing: 0,
            max_framing: limits.max_head,
        }
    }

    /// Bounds the data to `max` bytes: refused at once when the
    /// Content-Length says more, else as soon as a chunk goes past it.
    pub(crate) fn limit(&mut self, max: u64) -> Result<(), ReadError> {
        if matches!(self.state, BodyState::Length(n) if n > max) {
            return Err(ReadError::Refused(413, "request body too large"));
        }
        self.max = max;
        Ok(())
    }

    /// Whether the whole body has been read (the connection can carry
    /// another request).
    pub(crate) fn finished(&self) -> bool {
        self.state == BodyState::Done
    }

    /// Bytes of the body read so far.
    pub(crate) fn read(&self) -> u64 {
        self.read
    }

    /// The next piece of the body, `None` at its end.
    pub(crate) async fn next(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        loop {
            match self.state {
                BodyState::Done => return Ok(None),
                BodyState::Length(0) => self.state = BodyState::Done,
                BodyState::Length(left) => {
                    let data = self.take(left).await?;
                    self.state = BodyState::Length(left - data.len() as u64);
                    return Ok(Some(data));
                }
                BodyState::ChunkSize => self.chunk_size().await?,
                BodyState::ChunkData(left) => {
                    let data = self.take(left).await?;
                    let left = left - data.len() as u64;
                    self.state = if left == 0 {
                        BodyState::ChunkEnd
                    } else {
                        BodyState::ChunkData(left)
                    };
                    return Ok(Some(data));
                }
                BodyState::ChunkEnd => {
                    while self.buf.len() < 2 {
                        fill(self.stream, self.buf).await?;
                    }
                    if self.buf.get(..2) != Some(b"\r\n".as_slice()) {
                        return Err(ReadError::Refused(400, "chunk not ended by CRLF"));
                    }
                    self.buf.drain(..2);
                    self.frame(2)?;
                    self.state = BodyState::ChunkSize;
                }
            }
        }
    }

    /// Up to `left` bytes of data, reading more when none are buffered.
    async fn take(&mut self, left: u64) -> Result<Vec<u8>, ReadError> {
        if self.buf.is_empty() {
            fill(self.stream, self.buf).await?;
        }
        let n = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(self.buf.len());
        self.read += n as u64;
        Ok(self.buf.drain(..n).collect())
    }

    /// Counts `n` bytes of framing. Besides `max_framing`, a body may spend
    /// one byte on framing per [`DATA_PER_FRAMING`] bytes of data read: a
    /// long upload in the chunks clients send (Go's are 32 KiB with 8
    /// bytes around each) is taken, a stream of tiny chunks is not.
    fn frame(&mut self, n: usize) -> Result<(), ReadError> {
        self.framing = self.framing.saturating_add(n);
        let earned = usize::try_from(self.read / DATA_PER_FRAMING).unwrap_or(usize::MAX);
        if self.framing > self.max_framing.saturating_add(earned) {
            return Err(ReadError::Refused(400, "invalid chunk size"));
        }
        Ok(())
    }

    /// Reads a chunk-size line; at the last chunk, the trailer fields
    /// too, which are dropped.
    async fn chunk_size(&mut self) -> Result<(), ReadError> {
        let (used, size) = loop {
            match httparse::parse_chunk_size(self.buf) {
                // httparse takes an empty size as 0: a size needs a digit.
                Ok(httparse::Status::Complete(c))
                    if self.buf.first().is_some_and(u8::is_ascii_hexdigit) =>
                {
                    break c
                }
                Ok(httparse::Status::Partial) if self.buf.len() <= MAX_CHUNK_LINE => {
                    fill(self.stream, self.buf).await?
                }
                _ => return Err(ReadError::Refused(400, "invalid chunk size")),
            }
        };
        if used > MAX_CHUNK_LINE {
            return Err(ReadError::Refused(400, "invalid chunk size"));
        }
        self.frame(used)?;
        self.buf.drain(..used);
        if size > 0 {
            if size.saturating_add(self.read) > self.max {
                return Err(ReadError::Refused(413, "request body too large"));
            }
            self.state = BodyState::ChunkData(size);
            return Ok(());
        }
        // Trailer fields are read and dropped, up to the empty line; they
        // earn nothing from the data, and are bounded as a head is.
        let mut trailers = 0usize;
        loop {
            let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                if self.buf.len() > self.max_framing {
                    return Err(ReadError::Refused(431, "request trailers too large"));
                }
                fill(self.stream, self.buf).await?;
                continue;
            };
            self.buf.drain(..end + 2);
            trailers = trailers.saturating_add(end + 2);
            if trailers > self.max_framing {
                return Err(ReadError::Refused(431, "request trailers too large"));
            }
            if end == 0 {
                self.state = BodyState::Done;
                return Ok(());
            }
        }
    }
}

/// Reads more of the request into `buf`.
async fn fill<R: AsyncRead + Unpin + ?Sized>(
    stream: &mut R,
    buf: &mut Vec<u8>,
) -> Result<(), ReadError> {
    if read_into(stream, buf, BODY_READ).await? == 0 {
        return Err(ReadError::Refused(400, "truncated request body"));
    }
    Ok(())
}

/// A response: a status and a body, JSON unless `extra` says otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// What few answers need beyond a JSON body.
    pub extra: Option<Box<Extra>>,
}

/// A raw body's headers, or the websocket an accepted upgrade serves.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct Extra {
    /// Sent as they are; a `Content-Type` among them replaces JSON's.
    pub headers: Vec<(&'static str, String)>,
    /// For a 101: the operation's end of the websocket (none: events).
    pub websocket: Option<crate::websocket::Link>,
}

/// RFC 6455's fixed suffix for the accept key.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

impl Response {
    /// `101 Switching Protocols` to a websocket, for `Sec-WebSocket-Key` `key`.
    pub(crate) fn websocket_accept(key: &str) -> Response {
        use base64::Engine;
        let digest = ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            format!("{key}{WEBSOCKET_GUID}").as_bytes(),
        );
        Response {
            status: 101,
            body: base64::engine::general_purpose::STANDARD
                .encode(digest.as_ref())
                .into_bytes(),
            extra: None,
        }
    }

    /// 200 with a body that is not JSON, with `headers`.
    pub(crate) fn raw(body: Vec<u8>, headers: Vec<(&'static str, String)>) -> Response {
        Response {
            status: 200,
            body,
            extra: Some(Box::new(Extra {
                headers,
                websocket: None,
            })),
        }
    }

    /// The bytes on the wire.
    pub(crate) fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        if self.status == 101 {
            // The body of a 101 is the accept key; nothing follows the head.
            let mut out = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ".to_vec();
            out.extend_from_slice(&self.body);
            out.extend_from_slice(b"\r\n\r\n");
            return out;
        }
        let headers = self.extra.as_ref().map(|e| e.headers.as_slice());
        let headers = headers.unwrap_or_default();
        // One buffer of the final size, not a head grown step by step and
        // then copied: allocations of a few KiB are what cost most here.
        let mut out = Vec::with_capacity(self.body.len() + 256);
        let _ = write!(out, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            out.extend_from_slice(b"Content-Type: application/json\r\n");
        }
        for (k, v) in headers {
            let _ = write!(out, "{k}: {v}\r\n");
        }
        let _ = write!(
            out,
            "Content-Length: {}\r\nConnection: {}\r\n\r\n",
            self.body.len(),
            if keep_alive { "keep-alive" } else { "close" },
        );
        out.extend_from_slice(&self.body);
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes a request (client side).
pub(crate) fn request_bytes(method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    request_bytes_with(method, path, body, &[("Content-Type", "application/json")])
}

/// Writes a request with `headers` (client side).
pub(crate) fn request_bytes_with(
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Vec<u8> {
    let body = body.unwrap_or_default();
    let mut out = request_head(method, path, body.len() as u64, headers);
    out.extend_from_slice(body);
    out
}

/// A request's head, for a body of `len` bytes sent after it (client side).
pub(crate) fn request_head(
    method: &str,
    path: &str,
    len: u64,
    headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: kvmbox\r\nUser-Agent: kvmbox/{}\r\nAccept: application/json\r\n",
        env!("CARGO_PKG_VERSION"),
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {len}\r\n\r\n"));
    head.into_bytes()
}

/// Reads one response (client side, blocking): its status and body.
pub(crate) fn read_response<R: Read>(stream: &mut R, limits: Limits) -> io::Result<(u16, Vec<u8>)> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut buf = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = resp.code.ok_or_else(|| bad("response without a status"))?;
                let mut len = None;
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        len = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|s| s.trim().parse::<usize>().ok());
                    }
                }
                let len = len.ok_or_else(|| bad("response without a valid Content-Length"))?;
                if len > limits.max_body {
                    return Err(bad("response body too large"));
                }
                let mut body: Vec<u8> = buf.get(n..).unwrap_or_default().to_vec();
                if body.len() < len {
                    let mut rest = vec![0u8; len - body.len()];
                    stream.read_exact(&mut rest)?;
                    body.extend_from_slice(&rest);
                }
                body.truncate(len);
                return Ok((status, body));
            }
            Ok(httparse::Status::Partial) if buf.len() <= limits.max_head => {}
            Ok(httparse::Status::Partial) => return Err(bad("response header too large")),
            Err(e) => return Err(bad(&format!("malformed response ({e})"))),
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the daemon closed the connection",
            ));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
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

    fn parse(input: &[u8], limits: Limits) -> (Result<Request, ReadError>, Vec<u8>) {
        let mut stream = smol::io::Cursor::new(input.to_vec());
        let mut buf = Vec::new();
        let r = smol::future::block_on(read_request(&mut stream, &mut buf, limits));
        (r, buf)
    }

    fn refused(r: Result<Request, ReadError>) -> u16 {
        match r {
            Err(ReadError::Refused(code, _)) => code,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn parses_and_keeps_pipelined_bytes() {
        let (r, rest) = parse(
            b"PATCH /1.0?recursion=1&x HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET / HTTP/1.1\r\n",
            Limits::default(),
        );
        let r = r.unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("PATCH", "/1.0"));
        assert_eq!(r.query_param("recursion"), Some("1"));
        assert_eq!(r.query_param("x"), Some(""));
        assert_eq!(r.query_param("y"), None);
        assert_eq!(r.body, b"{}");
        assert!(r.keep_alive);
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn connection_close_and_http10() {
        let (r, _) = parse(
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            Limits::default(),
        );
        assert!(!r.unwrap().keep_alive);
        let (r, _) = parse(b"GET / HTTP/1.0\r\n\r\n", Limits::default());
        assert!(!r.unwrap().keep_alive);
    }

    #[test]
    fn bounds_and_garbage() {
        let small = Limits {
            max_head: 64,
            max_body: 8,
        };
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(100));
        assert_eq!(refused(parse(long.as_bytes(), small).0), 431);
        // Never terminated: refused as soon as the bound is passed.
        let endless = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(100));
        assert_eq!(refused(parse(endless.as_bytes(), small).0), 431);
        let big = b"PUT / HTTP/1.1\r\nContent-Length: 9\r\n\r\n123456789";
        assert_eq!(refused(parse(big, small).0), 413);
        let many: String = (0..100).map(|i| format!("H{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(refused(parse(many.as_bytes(), Limits::default()).0), 431);
        assert_eq!(
            refused(parse(b"\x16\x03\x01\x00\xff\x00garbage\r\n\r\n", small).0),
            400
        );
        assert_eq!(
            refused(parse(b"GET http://x/ HTTP/1.1\r\n\r\n", small).0),
            400
        );
        let te = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(refused(parse(te, small).0), 501);
        for cl in ["-1", "1x", "", "99999999999999999999999"] {
            let req = format!("POST / HTTP/1.1\r\nContent-Length: {cl}\r\n\r\n");
            assert_eq!(refused(parse(req.as_bytes(), small).0), 400, "{cl}");
        }
        let dup = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(refused(parse(dup, small).0), 400);
        assert_eq!(refused(parse(b"GET / HTTP/1.1\r\n", small).0), 400);
        assert_eq!(
            refused(parse(b"PUT / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", small).0),
            400
        );
        assert!(matches!(parse(b"", small).0, Err(ReadError::Closed)));
    }

    fn chunked(body: &str) -> String {
        format!("POST /1.0/images HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
    }

    #[test]
    fn chunked_bodies_are_read_whole_with_the_next_request_kept() {
        let wire = chunked("4;ext=1\r\nRust\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\nGET /");
        let (r, rest) = parse(wire.as_bytes(), Limits::default());
        assert_eq!(r.unwrap().body, b"Rust0123456789");
        assert_eq!(rest, b"GET /");
        // Delivered a byte at a time, it reads the same.
        let mut slow = Slow(wire.as_bytes().to_vec(), 0);
        let mut buf = Vec::new();
        let r = smol::future::block_on(read_request(&mut slow, &mut buf, Limits::default()));
        assert_eq!(r.unwrap().body, b"Rust0123456789");
    }

    /// A reader that never has anything.
    struct Silent;

    impl AsyncRead for Silent {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            std::task::Poll::Pending
        }
    }

    #[test]
    fn a_read_cut_short_by_its_timeout_leaves_the_buffer_as_it_was() {
        // The server tells an idle connection (nothing read) from a
        // request that stalled by whether the buffer is empty.
        for start in [&b""[..], b"GET / HT"] {
            let (mut buf, mut silent) = (start.to_vec(), Silent);
            let read = read_request(&mut silent, &mut buf, Limits::default());
            let polled = smol::future::block_on(smol::future::poll_once(Box::pin(read)));
            assert!(polled.is_none());
            assert_eq!(buf, start);
        }
        // And the future that waits holds no read buffer of its own.
        let (mut buf, mut silent) = (Vec::new(), Silent);
        let read = read_request(&mut silent, &mut buf, Limits::default());
        assert!(
            std::mem::size_of_val(&read) < 1024,
            "{}",
            std::mem::size_of_val(&read)
        );
    }

    /// A reader that hands out one byte per read.
    struct Slow(Vec<u8>, usize);

    impl AsyncRead for Slow {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            out: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let i = self.1;
            let n = match (self.0.get(i), out.first_mut()) {
                (Some(b), Some(o)) => {
                    *o = *b;
                    1
                }
                _ => 0,
            };
            self.1 += n;
            std::task::Poll::Ready(Ok(n))
        }
    }

    #[test]
    fn hostile_chunked_bodies_are_refused() {
        let small = Limits {
            max_head: 256,
            max_body: 16,
        };
        for (body, code) in [
            ("zz\r\nab\r\n0\r\n\r\n", 400), // not hex
            ("\r\nab\r\n0\r\n\r\n", 400),   // no size at all
            ("-1\r\nab\r\n0\r\n\r\n", 400), // negative
            ("11111111111111111\r\n", 400), // 17 digits: overflow
            ("ffffffffffffffff\r\n", 413),  // fits u64, not the body
            ("11\r\n", 413),                // 17 bytes > 16
            ("2\r\nabc\r\n0\r\n\r\n", 400), // longer than said
            ("2\r\nab0\r\n\r\n", 400),      // no CRLF after data
            ("2\r\nab\r\n", 400),           // truncated
            ("2\r\nab\r\n0\r\nX: y", 400),  // trailers truncated
        ] {
            let (r, _) = parse(chunked(body).as_bytes(), small);
            assert_eq!(refused(r), code, "{body:?}");
        }
        // An endless extension, and endless tiny chunks, stop at the bounds.
        let long = format!("1;{}\r\na\r\n0\r\n\r\n", "x".repeat(1000));
        assert_eq!(refused(parse(chunked(&long).as_bytes(), small).0), 400);
        let many = "1\r\na\r\n".repeat(100);
        assert_eq!(refused(parse(chunked(&many).as_bytes(), small).0), 413);
        assert!(parse(chunked("0;x\r\n\r\n").as_bytes(), small).0.is_ok());
        let framing = format!(
            "{}0\r\n\r\n",
            "1;aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\na\r\n".repeat(10)
        );
        assert_eq!(refused(parse(chunked(&framing).as_bytes(), small).0), 400);
        // Framing grows with the data: a body of many 4 KiB chunks (8 bytes
        // of framing each, far past max_head in all) is read whole.
        let roomy = Limits {
            max_head: 256,
            max_body: 1 << 20,
        };
        let data = "x".repeat(4096);
        let long = format!("{}0\r\n\r\n", format!("1000\r\n{data}\r\n").repeat(200));
        let r = parse(chunked(&long).as_bytes(), roomy).0.unwrap();
        assert_eq!(r.body.len(), 200 * 4096);
        // But not one byte of data per chunk, however long the body.
        let tiny = format!("{}0\r\n\r\n", "1\r\na\r\n".repeat(20000));
        assert_eq!(refused(parse(chunked(&tiny).as_bytes(), roomy).0), 400);
        let trailers = format!("0\r\n{}\r\n", "X: y\r\n".repeat(100));
        assert_eq!(refused(parse(chunked(&trailers).as_bytes(), small).0), 431);
        // Both framings, a repeated coding, or chunked in HTTP/1.0.
        for head in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(refused(parse(head.as_bytes(), small).0), 400, "{head:?}");
        }
    }

    /// Streams the body of the request in `wire` with the bound `max`:
    /// the pieces read, or the refusal's status.
    fn stream(wire: &[u8], max: u64) -> Result<Vec<u8>, u16> {
        let mut src = Slow(wire.to_vec(), 0);
        let mut buf = Vec::new();
        smol::future::block_on(async {
            let head = read_head(&mut src, &mut buf, Limits::default())
                .await
                .unwrap();
            let (_, framing) = head.split();
            let mut body = Body::new(&mut src, &mut buf, framing, Limits::default());
            let code = |e| match e {
                ReadError::Refused(c, _) => c,
                _ => 0,
            };
            body.limit(max).map_err(code)?;
            let mut out = Vec::new();
            while let Some(piece) = body.next().await.map_err(code)? {
                assert!(!piece.is_empty());
                out.extend_from_slice(&piece);
            }
            assert!(body.finished());
            assert_eq!(body.read(), out.len() as u64);
            Ok(out)
        })
    }

    #[test]
    fn bodies_stream_in_pieces_within_their_bound() {
        let sized = b"POST /1.0/images HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789";
        assert_eq!(stream(sized, 10).unwrap(), b"0123456789");
        // A Content-Length over the bound is refused before any is read.
        assert_eq!(stream(sized, 9), Err(413));
        let wire = chunked("4\r\nRust\r\nA\r\n0123456789\r\n0\r\n\r\n");
        assert_eq!(stream(wire.as_bytes(), 14).unwrap(), b"Rust0123456789");
        // Chunked: refused at the chunk that goes past the bound.
        assert_eq!(stream(wire.as_bytes(), 13), Err(413));
        // Cut short, either way.
        assert_eq!(stream(&sized[..sized.len() - 1], 10), Err(400));
        let cut = chunked("4\r\nRust\r\nA\r\n01234");
        assert_eq!(stream(cut.as_bytes(), 100), Err(400));
    }

    #[test]
    fn response_round_trip() {
        let resp = Response {
            status: 403,
            body: br#"{"a":1}"#.to_vec(),
            extra: None,
        };
        let wire = resp.to_bytes(true);
        let (status, body) = read_response(&mut &wire[..], Limits::default()).unwrap();
        assert_eq!((status, body), (403, resp.body));
        let req = request_bytes("GET", "/1.0", None);
        assert!(req.starts_with(b"GET /1.0 HTTP/1.1\r\n"));
    }

    #[test]
    fn websocket_accept_key_is_rfc_6455s() {
        // The example handshake of RFC 6455 section 1.3.
        let resp = Response::websocket_accept("dGhlIHNhbXBsZSBub25jZQ==");
        let wire = String::from_utf8(resp.to_bytes(true)).unwrap();
        assert!(wire.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(wire.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"));
        let key_of = |raw: &[u8]| parse(raw, Limits::default()).0.unwrap().websocket_key;
        let up = b"GET /1.0/events HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        assert_eq!(key_of(up).as_deref(), Some("dGhlIHNhbXBsZSBub25jZQ=="));
        // No Upgrade header, or a key that is not one: no websocket.
        assert_eq!(
            key_of(
                b"GET /1.0/events HTTP/1.1\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            ),
            None
        );
        assert_eq!(key_of(b"GET /1.0/events HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Key: c2hvcnQ=\r\n\r\n"), None);
    }
}
