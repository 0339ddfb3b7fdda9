//! The client side of an operation's websocket (RFC 6455), as exec and
//! the console use them: one connection per websocket, upgraded from
//! `GET /1.0/operations/ID/websocket?secret=…`. Messages are small and
//! whole (the daemon never fragments); pings are answered as they come.

use std::io::{self, Read, Write};
use std::time::Duration;

use base64::Engine;
use ring::rand::SecureRandom;

use crate::client::connection::{Client, Error};

/// The largest message taken from the daemon.
const MAX_MESSAGE: usize = 1 << 20;
const MAX_HEAD: usize = 16 * 1024;

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A message from the daemon.
#[derive(Debug, PartialEq, Eq)]
pub enum WsMessage {
    /// Stream data.
    Binary(Vec<u8>),
    /// LXD's end of a stream when empty; control messages otherwise.
    Text(Vec<u8>),
}

/// An open websocket.
#[derive(Debug)]
pub struct WebSocket {
    client: Client,
    /// Bytes read and not yet made into a frame.
    buf: Vec<u8>,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b
}

impl Client {
    /// Upgrades this connection to the websocket at `path`.
    pub fn websocket(mut self, path: &str) -> Result<WebSocket, Error> {
        let key = base64::engine::general_purpose::STANDARD.encode(random::<16>());
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: kvmbox\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let stream = self.raw();
        stream.write_all(req.as_bytes())?;
        stream.flush()?;
        // Byte by byte up to the end of the head: frames may follow it at
        // once, and must stay unread.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > MAX_HEAD || stream.read(&mut byte)? == 0 {
                return Err(bad("the daemon ended the websocket handshake").into());
            }
            head.extend_from_slice(&byte);
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let _ = resp.parse(&head).map_err(|_| bad("a malformed response"))?;
        let status = resp.code.unwrap_or(0);
        if status == 101 {
            return Ok(WebSocket {
                client: self,
                buf: Vec::new(),
            });
        }
        // Refused: the error is in LXD's envelope, after the head.
        let len = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .unwrap_or(0)
            .min(MAX_HEAD);
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body)?;
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("the websocket was refused ({status})"));
        Err(Error::Api { status, message })
    }
}

impl WebSocket {
    /// Sends one message (masked, as a client must).
    fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let out = crate::websocket::frame(opcode, payload, Some(random()));
        let stream = self.client.raw();
        stream.write_all(&out)?;
        stream.flush()
    }

    /// Sends stream data.
    pub fn send_binary(&mut self, data: &[u8]) -> io::Result<()> {
        self.send(OP_BINARY, data)
    }

    /// Sends a control message.
    pub fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.send(OP_TEXT, text.as_bytes())
    }

    /// Closes this side (the end of a stream, or a detach).
    pub fn close(&mut self) -> io::Result<()> {
        self.send(OP_CLOSE, &1000u16.to_be_bytes())
    }

    /// Waits at most `limit` in each read from now on (`None`: no limit);
    /// [`WebSocket::recv`] then fails with `WouldBlock` or `TimedOut`
    /// and may be called again.
    pub fn set_read_timeout(&mut self, limit: Option<Duration>) -> io::Result<()> {
        self.client.set_read_timeout(limit)
    }

    /// The next message; `None` once the daemon closed the websocket.
    pub fn recv(&mut self) -> io::Result<Option<WsMessage>> {
        loop {
            if let Some((opcode, payload, used)) = frame(&self.buf)? {
                self.buf.drain(..used);
                match opcode {
                    OP_CLOSE => {
                        let _ = self.send(OP_CLOSE, payload.get(..2).unwrap_or_default());
                        return Ok(None);
                    }
                    OP_PING => self.send(OP_PONG, &payload)?,
                    OP_PONG => {}
                    OP_TEXT => return Ok(Some(WsMessage::Text(payload))),
                    _ => return Ok(Some(WsMessage::Binary(payload))),
                }
                continue;
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = match self.client.raw().read(&mut chunk) {
                Ok(n) => n,
                // A peer gone without a close frame ends the stream too.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(None);
            }
            self.buf
                .extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    }
}

/// The first whole frame in `buf` (from the server: unmasked): its opcode,
/// payload and length on the wire.
pub(crate) fn frame(buf: &[u8]) -> io::Result<Option<(u8, Vec<u8>, usize)>> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b1 & 0x80 != 0 {
        return Err(bad("the daemon masked a frame"));
    }
    let (len, at) = match b1 & 0x7F {
        126 => match buf.get(2..4).and_then(|b| <[u8; 2]>::try_from(b).ok()) {
            Some(b) => (u64::from(u16::from_be_bytes(b)), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => (u64::from_be_bytes(b), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let len = usize::try_from(len)
        .ok()
        .filter(|l| *l <= MAX_MESSAGE)
        .ok_or_else(|| bad("a websocket message too large"))?;
    Ok(buf
        .get(at..at + len)
        .map(|p| (b0 & 0x0F, p.to_vec(), at + len)))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a failed test should panic"
)]
mod tests {
    use super::*;

    #[test]
    fn server_frames_are_read_whole() {
        let mut f = vec![0x82, 126, 0x01, 0x00];
        f.extend(vec![7u8; 256]);
        for cut in 0..f.len() {
            assert_eq!(frame(&f[..cut]).unwrap(), None);
        }
        assert_eq!(frame(&f).unwrap(), Some((2, vec![7u8; 256], f.len())));
        assert_eq!(frame(&[0x81, 0]).unwrap(), Some((1, vec![], 2)));
        assert!(frame(&[0x82, 0x81, 0, 0, 0, 0, 1]).is_err());
    }
}
