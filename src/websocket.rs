//! The server side of an accepted websocket (RFC 6455), as much as
//! `/1.0/events` and an operation's streams (exec, console) need: messages
//! go out as they are handed over, data the peer sends is handed on, and
//! pings tell a live peer from one that vanished without closing (a dead TCP
//! peer sends no FIN, and an idle one would otherwise hold its slot for
//! ever).
//!
//! A peer is pinged after `every` of silence and dropped if it sends no
//! complete frame within `every` again (unless its [`Link`] says it may stay
//! silent). Pings are answered with pongs, a close frame with a close
//! frame; data frames go to the link's input, if it has one. Each
//! time `every` has passed the caller's identity is looked up again, and
//! the socket is closed once it is no longer trusted (removed from the
//! trust store, or revoked by the CA in PKI mode), as a request would be.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use smol::channel::{Receiver, Sender};
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::log::log;
use crate::rt::timed;

/// The largest frame a peer may send (a text message too: control
/// messages are small); binary data passes frame by frame.
const MAX_FRAME: usize = 64 * 1024;
/// Messages waiting in each direction of a [`Link`].
const LINK_QUEUE: usize = 16;

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Close codes (RFC 6455 §7.4.1).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
const CLOSE_POLICY_VIOLATION: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;

#[derive(PartialEq, Eq, thiserror::Error)]
pub(crate) enum Error {
    #[error("a client frame was not masked")]
    Unmasked,
    #[error("a frame of {0} bytes is larger than allowed")]
    TooBig(u64),
    #[error("unknown opcode {0:#x}")]
    Opcode(u8),
    #[error("a control frame was fragmented or longer than 125 bytes")]
    BadControl,
}

crate::debug_as_display!(Error);

impl Error {
    fn close_code(&self) -> u16 {
        match self {
            Error::TooBig(_) => CLOSE_TOO_BIG,
            _ => CLOSE_PROTOCOL_ERROR,
        }
    }
}

/// A frame from the peer, unmasked.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Close(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    /// Text, binary or a continuation (opcode 0, 1, 2), and whether it ends
    /// its message.
    Data {
        opcode: u8,
        fin: bool,
        payload: Vec<u8>,
    },
}

/// One whole message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Message {
    Text(Arc<[u8]>),
    Binary(Vec<u8>),
}

/// What an accepted websocket carries, as [`hold`] takes it.
#[derive(Debug)]
pub(crate) struct Session {
    out: Receiver<Message>,
    input: Option<Sender<Message>>,
    /// The end of `out` is the end of the stream (closed as normal), not
    /// a listener dropped for falling behind.
    finished: bool,
    /// Whether a peer that answers no ping is dropped. The control socket
    /// of an operation may have a client that never reads (and so never
    /// answers); the operation closes it when it ends.
    pinged: bool,
}

/// An accepted websocket's session, handed from the handler that accepted
/// it to the connection that serves it (inside its 101 response).
#[derive(Clone)]
pub(crate) struct Link(Arc<Mutex<Option<Session>>>);

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Link")
    }
}

impl PartialEq for Link {
    fn eq(&self, other: &Link) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Link {}

/// The handler's end of a websocket: messages to send, and what the peer
/// sends (ending when it closes). Dropping `out` closes the websocket.
#[derive(Debug)]
pub(crate) struct Ends {
    pub out: Sender<Message>,
    pub input: Receiver<Message>,
}

impl Link {
    /// A websocket sending what a listener of events is handed.
    pub(crate) fn events(out: Receiver<Message>) -> Link {
        Link::of(Session {
            out,
            input: None,
            finished: false,
            pinged: true,
        })
    }

    /// A two-way websocket and the handler's end of it; `pinged`: see
    /// [`Session`].
    pub(crate) fn pair(pinged: bool) -> (Link, Ends) {
        let (out_tx, out) = smol::channel::bounded(LINK_QUEUE);
        let (input, in_rx) = smol::channel::bounded(LINK_QUEUE);
        let link = Link::of(Session {
            out,
            input: Some(input),
            finished: true,
            pinged,
        });
        let ends = Ends {
            out: out_tx,
            input: in_rx,
        };
        (link, ends)
    }

    fn of(session: Session) -> Link {
        Link(Arc::new(Mutex::new(Some(session))))
    }

    /// The session, once.
    pub(crate) fn take(&self) -> Option<Session> {
        crate::rt::lock(&self.0).take()
    }
}

/// The first complete frame in `buf` and its length on the wire, or `None`
/// when more bytes are needed.
fn parse(buf: &[u8]) -> Result<Option<(Frame, usize)>, Error> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0F);
    if b1 & 0x80 == 0 {
        return Err(Error::Unmasked);
    }
    let (len, mut at) = match b1 & 0x7F {
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
    let is_control = opcode & 0x8 != 0;
    if is_control && (!fin || len > 125) {
        return Err(Error::BadControl);
    }
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_FRAME)
        .ok_or(Error::TooBig(len))?;
    let Some(mask) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    at += 4;
    let Some(payload) = buf.get(at..at + len) else {
        return Ok(None);
    };
    let unmasked = || {
        payload
            .iter()
            .zip(mask.iter().cycle())
            .map(|(b, m)| b ^ m)
            .collect()
    };
    let frame = match opcode {
        0x0..=0x2 => Frame::Data {
            opcode,
            fin,
            payload: unmasked(),
        },
        OP_CLOSE => Frame::Close(unmasked()),
        OP_PING => Frame::Ping(unmasked()),
        OP_PONG => Frame::Pong,
        op => return Err(Error::Opcode(op)),
    };
    Ok(Some((frame, at + len)))
}

/// A server frame (never masked) carrying at most 125 bytes.
fn control(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let payload = payload.get(..125).unwrap_or(payload);
    let mut out = vec![0x80 | opcode, payload.len() as u8];
    out.extend_from_slice(payload);
    out
}

/// A server message (never masked, never fragmented).
fn message(m: &Message) -> Vec<u8> {
    match m {
        Message::Text(t) => data(OP_TEXT, t),
        Message::Binary(b) => data(OP_BINARY, b),
    }
}

fn data(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(opcode, payload, None)
}

/// One whole frame: unmasked as a server sends it, or masked with `mask`
/// as a client must (RFC 6455 §5.3).
pub(crate) fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let bit = if mask.is_some() { 0x80 } else { 0 };
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n @ 0..=125 => out.push(bit | n as u8),
        n @ 126..=0xffff => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().zip(m.iter().cycle()).map(|(b, k)| b ^ k));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// What woke the loop of [`hold`].
enum Woke {
    Read(std::io::Result<usize>),
    /// A message to send; `None` once the sender has let go (the stream
    /// ended, or the events listener was dropped for falling behind).
    Message(Option<Message>),
}

/// Serves an accepted websocket, sending each message the session yields,
/// and handing on what the peer sends, until the peer closes it, breaks the
/// protocol, stays silent for `every` after being pinged, cannot take a
/// message within `every` (or leaves its input untaken as long), the
/// session's messages end, or `trusted` (asked again once `every` has
/// passed since it last was) says it may no longer have it.
pub(crate) async fn hold<S>(
    stream: &mut S,
    every: Duration,
    who: &str,
    trusted: impl Fn() -> bool,
    session: Session,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Session {
        out: messages,
        mut input,
        finished,
        pinged: drop_silent,
    } = session;
    // A text message being put together from its fragments (binary data
    // goes on frame by frame).
    let mut text: Option<Vec<u8>> = None;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut pinged = false;
    let mut checked = std::time::Instant::now();
    loop {
        // Timed by the clock, not by silence: a chatty peer is checked too.
        if checked.elapsed() >= every {
            if !trusted() {
                log!(Info, "websocket of {who} closed: no longer trusted");
                let code = CLOSE_POLICY_VIOLATION.to_be_bytes();
                let _ = send(stream, &control(OP_CLOSE, &code), every).await;
                return;
            }
            checked = std::time::Instant::now();
        }
        // A read is cancelled (by the timer, or by a message to send) only
        // before it returns data, so nothing is lost between iterations:
        // partial frames wait in `buf`.
        let read = async { Woke::Read(stream.read(&mut chunk).await) };
        let next = async { Woke::Message(messages.recv().await.ok()) };
        let n = match timed(every, smol::future::or(read, next)).await {
            Some(Woke::Message(Some(m))) => {
                if !send(stream, &message(&m), every).await {
                    log!(Info, "websocket of {who} dropped: it does not read");
                    return;
                }
                continue;
            }
            Some(Woke::Message(None)) if finished => {
                let code = CLOSE_NORMAL.to_be_bytes();
                let _ = send(stream, &control(OP_CLOSE, &code), every).await;
                return;
            }
            Some(Woke::Message(None)) => {
                log!(Info, "websocket of {who} dropped: it fell behind");
                let code = CLOSE_POLICY_VIOLATION.to_be_bytes();
                let _ = send(stream, &control(OP_CLOSE, &code), every).await;
                return;
            }
            Some(Woke::Read(Ok(0) | Err(_))) => return,
            Some(Woke::Read(Ok(n))) => n,
            None if pinged && drop_silent => {
                log!(Info, "websocket of {who} dropped: no answer to a ping");
                return;
            }
            None if pinged => continue,
            None => {
                pinged = true;
                if !send(stream, &control(OP_PING, b""), every).await {
                    return;
                }
                continue;
            }
        };
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        loop {
            let (frame, used) = match parse(&buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    log!(Info, "websocket of {who} closed: {e}");
                    let code = e.close_code().to_be_bytes();
                    let _ = send(stream, &control(OP_CLOSE, &code), every).await;
                    return;
                }
            };
            buf.drain(..used);
            // Any complete frame shows the peer is there.
            pinged = false;
            match frame {
                Frame::Close(payload) => {
                    // Echo the status code, as RFC 6455 §5.5.1 asks.
                    let code = payload.get(..2).unwrap_or_default();
                    let _ = send(stream, &control(OP_CLOSE, code), every).await;
                    return;
                }
                Frame::Ping(payload) => {
                    if !send(stream, &control(OP_PONG, &payload), every).await {
                        return;
                    }
                }
                Frame::Pong => {}
                Frame::Data {
                    opcode,
                    fin,
                    payload,
                } => {
                    let whole = match (opcode, text.as_mut()) {
                        (OP_TEXT, _) if fin => Some(Message::Text(payload.into())),
                        (OP_TEXT, _) => {
                            text = Some(payload);
                            None
                        }
                        (0, Some(t)) => {
                            if t.len() + payload.len() > MAX_FRAME {
                                log!(Info, "websocket of {who} closed: a text message too long");
                                let code = CLOSE_TOO_BIG.to_be_bytes();
                                let _ = send(stream, &control(OP_CLOSE, &code), every).await;
                                return;
                            }
                            t.extend_from_slice(&payload);
                            match fin {
                                true => text.take().map(|t| Message::Text(t.into())),
                                false => None,
                            }
                        }
                        _ => (!payload.is_empty()).then_some(Message::Binary(payload)),
                    };
                    if let (Some(m), Some(tx)) = (whole, input.as_ref()) {
                        match timed(every, tx.send(m)).await {
                            Some(Ok(())) => {}
                            // The handler is done with the input.
                            Some(Err(_)) => input = None,
                            None => {
                                log!(Info, "websocket of {who} dropped: its input is not taken");
                                return;
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8], limit: Duration) -> bool {
    matches!(
        timed(limit, async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await,
        Some(Ok(()))
    )
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a failed test should panic"
)]
mod tests {
    use super::*;

    /// A client frame: masked, as RFC 6455 requires.
    fn client(opcode: u8, payload: &[u8]) -> Vec<u8> {
        frame(opcode, payload, Some([1, 2, 3, 4]))
    }

    #[test]
    fn frames_are_unmasked_and_partial_ones_wait() {
        let ping = client(OP_PING, b"hi");
        assert_eq!(
            parse(&ping).unwrap(),
            Some((Frame::Ping(b"hi".to_vec()), ping.len()))
        );
        for cut in 0..ping.len() {
            assert_eq!(parse(&ping[..cut]).unwrap(), None, "{cut}");
        }
        let mut two = client(OP_CLOSE, &1000u16.to_be_bytes());
        two.extend(client(0x1, b"ignored"));
        let (frame, used) = parse(&two).unwrap().unwrap();
        assert_eq!(frame, Frame::Close(vec![0x03, 0xE8]));
        assert_eq!(
            parse(&two[used..]).unwrap().unwrap().0,
            Frame::Data {
                opcode: 1,
                fin: true,
                payload: b"ignored".to_vec()
            }
        );
        let long = client(0x2, &[7u8; 300]);
        let (frame, used) = parse(&long).unwrap().unwrap();
        assert_eq!(used, long.len());
        assert!(
            matches!(frame, Frame::Data { opcode: 2, fin: true, payload } if payload == [7u8; 300])
        );
        assert_eq!(
            parse(&client(OP_PONG, b"")).unwrap().unwrap().0,
            Frame::Pong
        );
    }

    #[test]
    fn broken_frames_are_refused() {
        let mut unmasked = client(OP_PING, b"");
        unmasked[1] &= 0x7F;
        assert_eq!(parse(&unmasked), Err(Error::Unmasked));
        assert_eq!(parse(&client(0x3, b"")), Err(Error::Opcode(3)));
        assert_eq!(parse(&client(OP_PING, &[0; 126])), Err(Error::BadControl));
        let mut fragmented = client(OP_PING, b"");
        fragmented[0] &= 0x7F;
        assert_eq!(parse(&fragmented), Err(Error::BadControl));
        // Refused from the header alone: nothing that large is buffered.
        let huge = [0x82, 0xFF, 0, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(parse(&huge), Err(Error::TooBig(1 << 32)));
        assert_eq!(Error::TooBig(1).close_code(), 1009);
    }

    #[test]
    fn server_control_frames_are_unmasked_and_short() {
        assert_eq!(control(OP_PING, b""), [0x89, 0x00]);
        assert_eq!(control(OP_CLOSE, &[3, 0xE8]), [0x88, 0x02, 3, 0xE8]);
        assert_eq!(control(OP_PONG, &[1; 200]).len(), 127);
    }
}
