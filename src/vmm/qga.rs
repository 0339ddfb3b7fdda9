//! A client of the QEMU guest agent (`qemu-ga` in the guest), reached over
//! the VM's virtio-serial port `org.qemu.guest_agent.0`, which QEMU serves
//! on a Unix socket in the VM's run directory. Commands and their shapes:
//! QEMU's `qga/qapi-schema.json` (guest-sync-delimited, guest-exec,
//! guest-exec-status, guest-file-*).
//!
//! The channel is a plain byte stream with no greeting and no ids, whatever
//! an earlier client or a timed-out request left in it is still there. So a
//! conversation starts with `guest-sync-delimited`: a 0xFF byte first (the
//! agent drops any half-read request), then a random id; the agent answers
//! 0xFF and the id, and every line before that answer is stale. It is redone
//! after anything that may leave a reply in flight (timeout, cancellation,
//! a line too long).
//!
//! The guest is not trusted: every reply line is bounded ([`MAX_LINE`]),
//! decoded data is checked against what was asked for, and every call has a
//! time limit. A guest without a running agent accepts bytes and never
//! answers: that is [`Error::NoAgent`], after the time limit, never a hang.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Map, Value};
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::lock::Mutex as AsyncMutex;
use smol::net::unix::UnixStream;

use crate::fault::{Blame, Fault};
use crate::rt::timed;

/// Limit on one request: connecting, syncing if needed, and its reply.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest reply line accepted. It bounds the output an exec may capture
/// (base64 in one `guest-exec-status` reply): a command that prints more
/// should write a file, read back in chunks.
const MAX_LINE: usize = 4 << 20;
/// Bytes per `guest-file-read` / `guest-file-write`.
const CHUNK: usize = 48 << 10;
/// Largest standard input an exec takes (it travels in one request).
pub const MAX_STDIN: usize = 1 << 20;
/// How long an exec may run unless told otherwise.
const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(300);

/// What went wrong talking to the guest agent.
#[derive(thiserror::Error)]
pub enum Error {
    /// Host: the socket is not there (the VM is not running, or was started
    /// without the channel).
    #[error("cannot connect to the guest agent channel {}", path.display())]
    Connect { path: PathBuf, source: io::Error },
    /// Host: reading or writing the socket failed.
    #[error("guest agent connection failed")]
    Io(#[from] io::Error),
    /// Peer: nobody answers in the guest.
    #[error(
        "the guest agent did not answer within {0}s: install and start qemu-guest-agent \
         in the guest (it serves the virtio-serial port org.qemu.guest_agent.0)"
    )]
    NoAgent(u64),
    /// Peer: the agent answered the sync but not this request.
    #[error("the guest agent did not answer {what} within {secs}s")]
    Timeout { what: String, secs: u64 },
    /// Peer: QEMU closed the channel (the VM is going away).
    #[error("the guest agent channel was closed")]
    Closed,
    /// Peer: the reply is not what the schema says.
    #[error("the guest agent sent an invalid reply: {0}")]
    Protocol(String),
    /// Peer: a reply line beyond [`MAX_LINE`].
    #[error("the guest agent sent a reply longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// Input or guest state: the agent refused (no such file, command
    /// disabled…).
    #[error("the guest agent refused {command}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    /// Input: more data than the limit allows.
    #[error("{what} is larger than {limit} bytes")]
    TooLarge { what: &'static str, limit: usize },
    /// Input: a request that cannot be sent.
    #[error("invalid guest request: {0}")]
    Invalid(&'static str),
    /// The command still runs in the guest; the agent keeps its status.
    #[error("the command did not finish within {secs}s (it still runs in the guest as pid {pid})")]
    ExecTimeout { pid: i64, secs: u64 },
}

crate::debug_as_display!(Error);

impl Blame for Error {
    fn fault(&self) -> Fault {
        match self {
            Error::Connect { .. } | Error::Io(_) => Fault::Host,
            Error::NoAgent(_)
            | Error::Timeout { .. }
            | Error::Closed
            | Error::Protocol(_)
            | Error::LineTooLong => Fault::Peer,
            Error::Command { .. }
            | Error::TooLarge { .. }
            | Error::Invalid(_)
            | Error::ExecTimeout { .. } => Fault::Input,
        }
    }
}

/// A command to run in the guest.
#[derive(Clone, Debug)]
pub struct ExecRequest {
    /// Program and arguments; the agent searches `PATH` for the program.
    pub command: Vec<String>,
    /// `NAME=value` strings. Empty: the agent's own environment; otherwise
    /// exactly these.
    pub env: Vec<String>,
    /// Standard input, at most [`MAX_STDIN`] bytes; empty: none.
    pub stdin: Vec<u8>,
    /// How long to wait for the command to exit.
    pub timeout: Duration,
}

impl ExecRequest {
    /// `command` with no input, the agent's environment and a 5 min limit.
    pub fn new(command: Vec<String>) -> ExecRequest {
        ExecRequest {
            command,
            env: Vec::new(),
            stdin: Vec::new(),
            timeout: DEFAULT_EXEC_TIMEOUT,
        }
    }
}

/// How a guest command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecResult {
    /// Its exit code, or 128 + the signal that ended it (as shells report).
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The agent kept only the start of the output (it caps each stream).
    pub truncated: bool,
}

/// The guest agent of one VM. Clones share one connection: QEMU serves one
/// client at a time, so a VM has one `Agent` and requests take turns.
#[derive(Clone, Debug)]
pub struct Agent {
    path: PathBuf,
    timeout: Duration,
    conn: Arc<AsyncMutex<Option<Conn>>>,
}

/// One connection to the channel.
#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    /// Bytes read and not yet consumed; at most [`MAX_LINE`] plus one read.
    buf: Vec<u8>,
    /// One read's worth, on the heap: futures holding it stay small.
    chunk: Vec<u8>,
    /// Bytes up to the next newline or 0xFF are thrown away (the rest of a
    /// line found too long).
    skipping: bool,
    /// The stream is known to hold no stale reply. Cleared before each
    /// exchange and set after it, so that a request cut short (timeout,
    /// dropped future) forces the next one to resync.
    synced: bool,
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(field: &str, v: &Value) -> Result<Vec<u8>, Error> {
    let Some(text) = v.get(field) else {
        return Ok(Vec::new());
    };
    text.as_str()
        .and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok())
        .ok_or_else(|| Error::Protocol(format!("{field} is not base64")))
}

fn int(v: &Value, field: &str) -> Result<i64, Error> {
    v.get(field)
        .and_then(Value::as_i64)
        .ok_or_else(|| Error::Protocol(format!("no integer {field}")))
}

/// A random id for `guest-sync-delimited`, below 2^48 so that any JSON
/// reader keeps it exact.
fn sync_id() -> i64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b[2..]);
    i64::from_be_bytes(b)
}

impl Conn {
    /// The next non-empty line, without its newline. A 0xFF byte discards
    /// what came before it on the line: it is the sentinel the agent puts
    /// before a sync reply. A line beyond [`MAX_LINE`] is skipped to its
    /// end, and an error unless `skip_long`.
    async fn line(&mut self, skip_long: bool) -> Result<Vec<u8>, Error> {
        let mut scanned = 0;
        loop {
            let found = self
                .buf
                .get(scanned..)
                .and_then(|b| b.iter().position(|&c| c == b'\n' || c == 0xFF));
            if let Some(i) = found.map(|i| i + scanned) {
                let newline = self.buf.get(i) == Some(&b'\n');
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.truncate(i);
                scanned = 0;
                let skipped = std::mem::replace(&mut self.skipping, false);
                if newline && !skipped && !line.trim_ascii().is_empty() {
                    return Ok(line);
                }
                continue;
            }
            scanned = self.buf.len();
            if self.buf.len() > MAX_LINE {
                self.buf.clear();
                scanned = 0;
                self.skipping = true;
                if !skip_long {
                    return Err(Error::LineTooLong);
                }
            }
            let n = self.stream.read(&mut self.chunk).await?;
            if n == 0 {
                return Err(Error::Closed);
            }
            self.buf
                .extend_from_slice(self.chunk.get(..n).unwrap_or_default());
        }
    }

    async fn send(&mut self, msg: &Value, sentinel: bool) -> Result<(), Error> {
        let mut line = if sentinel { vec![0xFF] } else { Vec::new() };
        serde_json::to_writer(&mut line, msg).map_err(|e| Error::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.stream.write_all(&line).await?;
        Ok(self.stream.flush().await?)
    }

    /// `guest-sync-delimited`: everything up to the answer carrying our
    /// fresh id is stale and dropped.
    async fn sync(&mut self) -> Result<(), Error> {
        let id = sync_id();
        let msg = json!({ "execute": "guest-sync-delimited", "arguments": { "id": id } });
        self.send(&msg, true).await?;
        loop {
            let line = self.line(true).await?;
            let reply: Option<Value> = serde_json::from_slice(&line).ok();
            if reply.and_then(|r| r.get("return")?.as_i64()) == Some(id) {
                return Ok(());
            }
        }
    }

    async fn call(&mut self, command: &str, args: Option<Value>) -> Result<Value, Error> {
        let mut msg = Map::new();
        msg.insert("execute".into(), command.into());
        if let Some(a) = args {
            msg.insert("arguments".into(), a);
        }
        self.send(&Value::Object(msg), false).await?;
        let line = self.line(false).await?;
        let reply: Value =
            serde_json::from_slice(&line).map_err(|e| Error::Protocol(e.to_string()))?;
        let Value::Object(mut reply) = reply else {
            return Err(Error::Protocol("not a JSON object".into()));
        };
        if let Some(ret) = reply.remove("return") {
            return Ok(ret);
        }
        if let Some(err) = reply.get("error") {
            let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            return Err(Error::Command {
                command: command.to_string(),
                class: field("class"),
                desc: field("desc"),
            });
        }
        Err(Error::Protocol(format!(
            "reply to {command} has neither return nor error"
        )))
    }
}

impl Agent {
    /// The agent behind the channel socket `path`; nothing is connected
    /// before the first request.
    pub fn new(path: &Path, timeout: Duration) -> Agent {
        Agent {
            path: path.to_path_buf(),
            timeout,
            conn: Arc::new(AsyncMutex::new(None)),
        }
    }

    /// One request and its reply, resyncing first when needed. The
    /// connection is held only for this exchange.
    async fn request(&self, command: &str, args: Option<Value>) -> Result<Value, Error> {
        self.request_within(self.timeout, command, args).await
    }

    /// [`Agent::request`] with its own time limit.
    async fn request_within(
        &self,
        limit: Duration,
        command: &str,
        args: Option<Value>,
    ) -> Result<Value, Error> {
        let mut slot = self.conn.lock().await;
        // Whether the sync went through: a timeout before it means nobody
        // answers at all, after it that this request went unanswered.
        let mut synced = false;
        let exchange = async {
            let conn = match slot.as_mut() {
                Some(c) => c,
                // A Unix socket connects at once or fails: no wait here.
                None => slot.insert(Conn {
                    stream: UnixStream::connect(&self.path).await.map_err(|source| {
                        Error::Connect {
                            path: self.path.clone(),
                            source,
                        }
                    })?,
                    buf: Vec::new(),
                    chunk: vec![0; 16 << 10],
                    skipping: false,
                    synced: false,
                }),
            };
            if !std::mem::replace(&mut conn.synced, false) {
                conn.sync().await?;
            }
            synced = true;
            let reply = conn.call(command, args).await;
            conn.synced = matches!(reply, Ok(_) | Err(Error::Command { .. }));
            reply
        };
        let done = timed(limit, exchange).await;
        let secs = limit.as_secs();
        let result = done.unwrap_or_else(|| {
            Err(match synced {
                false => Error::NoAgent(secs),
                true => Error::Timeout {
                    what: command.to_string(),
                    secs,
                },
            })
        });
        if let Err(Error::Closed | Error::Io(_)) = result {
            // QEMU went away: the next request connects anew.
            *slot = None;
        }
        result
    }

    /// `guest-ping`: whether the agent answers at all.
    pub async fn ping(&self) -> Result<(), Error> {
        self.request("guest-ping", None).await.map(drop)
    }

    /// `guest-ping` bounded by `answer`: whether an agent answers at all,
    /// at the cost of `answer`, not of the full time limit, when none does.
    pub async fn ping_within(&self, answer: Duration) -> Result<(), Error> {
        self.request_within(answer, "guest-ping", None)
            .await
            .map(drop)
    }

    /// `guest-fsfreeze-freeze`: the number of filesystems frozen. Whatever
    /// the result, a freeze that was sent must be followed by
    /// [`Agent::thaw`].
    pub async fn freeze(&self) -> Result<u64, Error> {
        let r = self.request("guest-fsfreeze-freeze", None).await?;
        r.as_u64()
            .ok_or_else(|| Error::Protocol(format!("guest-fsfreeze-freeze answered {r}")))
    }

    /// `guest-fsfreeze-thaw`: the number of filesystems thawed.
    pub async fn thaw(&self) -> Result<u64, Error> {
        let r = self.request("guest-fsfreeze-thaw", None).await?;
        r.as_u64()
            .ok_or_else(|| Error::Protocol(format!("guest-fsfreeze-thaw answered {r}")))
    }

    /// Runs a command with `guest-exec`, then polls `guest-exec-status`
    /// until it exits or `req.timeout` passes.
    pub async fn exec(&self, req: &ExecRequest) -> Result<ExecResult, Error> {
        let pid = self.spawn(req).await?;
        self.wait(pid, req.timeout).await
    }

    /// Starts a command with `guest-exec`: its pid in the guest.
    pub async fn spawn(&self, req: &ExecRequest) -> Result<i64, Error> {
        let (program, args) = req
            .command
            .split_first()
            .ok_or(Error::Invalid("no command"))?;
        if req.stdin.len() > MAX_STDIN {
            return Err(Error::TooLarge {
                what: "standard input",
                limit: MAX_STDIN,
            });
        }
        // The agent hands these to exec as C strings.
        if req.command.iter().chain(&req.env).any(|s| s.contains('\0')) {
            return Err(Error::Invalid("a NUL byte in the command or environment"));
        }
        let mut a = Map::new();
        a.insert("path".into(), program.as_str().into());
        a.insert("arg".into(), args.into());
        a.insert("capture-output".into(), true.into());
        if !req.env.is_empty() {
            a.insert("env".into(), req.env.clone().into());
        }
        if !req.stdin.is_empty() {
            a.insert("input-data".into(), b64(&req.stdin).into());
        }
        int(&self.request("guest-exec", Some(a.into())).await?, "pid")
    }

    /// Polls `guest-exec-status` of `pid` until it exits or `timeout`
    /// passes.
    pub async fn wait(&self, pid: i64, timeout: Duration) -> Result<ExecResult, Error> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            let st = self
                .request("guest-exec-status", Some(json!({ "pid": pid })))
                .await?;
            if st.get("exited").and_then(Value::as_bool) == Some(true) {
                return exec_result(&st);
            }
            if Instant::now() + pause > deadline {
                return Err(Error::ExecTimeout {
                    pid,
                    secs: timeout.as_secs(),
                });
            }
            smol::Timer::after(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    async fn open(&self, path: &str, mode: &str) -> Result<i64, Error> {
        if !path.starts_with('/') || path.contains('\0') {
            return Err(Error::Invalid("a guest path must be absolute, without NUL"));
        }
        let h = self
            .request(
                "guest-file-open",
                Some(json!({ "path": path, "mode": mode })),
            )
            .await?;
        h.as_i64()
            .ok_or_else(|| Error::Protocol("guest-file-open returned no handle".into()))
    }

    async fn close(&self, handle: i64) -> Result<(), Error> {
        self.request("guest-file-close", Some(json!({ "handle": handle })))
            .await
            .map(drop)
    }

    /// The content of the guest file `path`, refused beyond `limit` bytes.
    pub async fn read_file(&self, path: &str, limit: usize) -> Result<Vec<u8>, Error> {
        let handle = self.open(path, "r").await?;
        let read = async {
            let mut out = Vec::new();
            loop {
                let r = self
                    .request(
                        "guest-file-read",
                        Some(json!({ "handle": handle, "count": CHUNK })),
                    )
                    .await?;
                let data = unb64("buf-b64", &r)?;
                if data.len() > CHUNK {
                    return Err(Error::Protocol(
                        "guest-file-read sent more than asked".into(),
                    ));
                }
                if out.len() + data.len() > limit {
                    return Err(Error::TooLarge {
                        what: "the guest file",
                        limit,
                    });
                }
                out.extend_from_slice(&data);
                // An empty read that is not EOF (a FIFO, say) ends it too:
                // the loop must not spin on a guest that never says EOF.
                if data.is_empty() || r.get("eof").and_then(Value::as_bool) != Some(false) {
                    return Ok(out);
                }
            }
        };
        let result = read.await;
        let closed = self.close(handle).await;
        let out = result?;
        closed?;
        Ok(out)
    }

    /// Creates or replaces the guest file `path` with `data`.
    pub async fn write_file(&self, path: &str, data: &[u8]) -> Result<(), Error> {
        self.write(path, data, "w").await
    }

    /// Adds `data` at the end of the guest file `path`, made if missing.
    pub async fn append_file(&self, path: &str, data: &[u8]) -> Result<(), Error> {
        self.write(path, data, "a").await
    }

    async fn write(&self, path: &str, data: &[u8], mode: &str) -> Result<(), Error> {
        let handle = self.open(path, mode).await?;
        let write = async {
            for chunk in data.chunks(CHUNK) {
                let mut rest = chunk;
                while !rest.is_empty() {
                    let r = self
                        .request(
                            "guest-file-write",
                            Some(json!({ "handle": handle, "buf-b64": b64(rest) })),
                        )
                        .await?;
                    let n = usize::try_from(int(&r, "count")?).unwrap_or(0);
                    rest = match rest.get(n..) {
                        Some(r) if n > 0 => r,
                        _ => {
                            return Err(Error::Protocol(format!(
                                "guest-file-write wrote {n} of {} bytes",
                                rest.len()
                            )))
                        }
                    };
                }
            }
            Ok(())
        };
        let result = write.await;
        // Closing flushes: its failure is a failed write.
        let closed = self.close(handle).await;
        result?;
        closed
    }
}

/// A `GuestExecStatus` of an exited process.
fn exec_result(st: &Value) -> Result<ExecResult, Error> {
    let code = match (st.get("exitcode"), st.get("signal")) {
        (Some(c), _) => c.as_i64(),
        (None, Some(s)) => s.as_i64().and_then(|s| s.checked_add(128)),
        (None, None) => None,
    };
    let status = code
        .and_then(|c| i32::try_from(c).ok())
        .ok_or_else(|| Error::Protocol("an exited process with no exit code or signal".into()))?;
    let flag = |k: &str| st.get(k).and_then(Value::as_bool) == Some(true);
    Ok(ExecResult {
        status,
        stdout: unb64("out-data", st)?,
        stderr: unb64("err-data", st)?,
        truncated: flag("out-truncated") || flag("err-truncated"),
    })
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a failed test should panic"
)]
mod tests {
    use super::*;
    use std::io::{BufRead, Write};
    use std::sync::Mutex;

    /// A script's answer that makes the fake hang up.
    const CLOSE: &[u8] = b"(close)";

    /// What the fake agent received: (0xFF before it, command).
    type Seen = Arc<Mutex<Vec<(bool, String)>>>;

    /// A fake agent on a socket: each request (any leading 0xFF taken off)
    /// goes to `script`, whose bytes are sent back; connections are served
    /// one after another, as QEMU does.
    fn fake(
        script: impl Fn(&Value) -> Vec<u8> + Send + 'static,
    ) -> (tempfile::TempDir, Agent, Seen) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let seen: Seen = Arc::default();
        let log = seen.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { return };
                let mut r = std::io::BufReader::new(s.try_clone().unwrap());
                let mut line = Vec::new();
                while r.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                    let sentinel = line.first() == Some(&0xFF);
                    let cmd: Value =
                        serde_json::from_slice(line.strip_prefix(&[0xFF]).unwrap_or(&line))
                            .unwrap();
                    line.clear();
                    let name = cmd["execute"].as_str().unwrap().to_string();
                    log.lock().unwrap().push((sentinel, name));
                    let out = script(&cmd);
                    if out == CLOSE || s.write_all(&out).is_err() {
                        break;
                    }
                }
            }
        });
        (dir, Agent::new(&path, Duration::from_millis(500)), seen)
    }

    fn ret(v: Value) -> Vec<u8> {
        format!("{}\n", json!({ "return": v })).into_bytes()
    }

    /// The agent's answer to a sync: the sentinel, then the id.
    fn synced(cmd: &Value) -> Vec<u8> {
        [&[0xFF][..], &ret(cmd["arguments"]["id"].clone())].concat()
    }

    fn names(seen: &Seen) -> Vec<String> {
        seen.lock()
            .unwrap()
            .iter()
            .map(|(_, n)| n.clone())
            .collect()
    }

    #[test]
    fn sync_skips_stale_replies_before_the_first_request() {
        let (_d, agent, seen) = fake(|cmd| match cmd["execute"].as_str().unwrap() {
            // What an earlier client left: a reply, half a line, an old
            // sync's answer, then ours.
            "guest-sync-delimited" => [
                &ret(json!({"pid": 1}))[..],
                b"{\"return\": {\"cou",
                &[0xFF],
                &ret(json!(12345)),
                &synced(cmd),
            ]
            .concat(),
            "guest-ping" => ret(json!({})),
            _ => Vec::new(),
        });
        smol::block_on(async {
            agent.ping().await.unwrap();
            agent.ping().await.unwrap();
        });
        // One sync, preceded by 0xFF; requests after it go without.
        assert_eq!(
            *seen.lock().unwrap(),
            [
                (true, "guest-sync-delimited".to_string()),
                (false, "guest-ping".into()),
                (false, "guest-ping".into())
            ]
        );
    }

    #[test]
    fn exec_polls_until_exit() {
        let polls = Arc::new(Mutex::new(0));
        let p = polls.clone();
        let (_d, agent, _) = fake(move |cmd| match cmd["execute"].as_str().unwrap() {
            "guest-sync-delimited" => synced(cmd),
            "guest-exec" => {
                let a = &cmd["arguments"];
                assert_eq!(a["path"], "sh");
                assert_eq!(a["arg"], json!(["-c", "exit 7"]));
                assert_eq!(a["env"], json!(["A=1"]));
                assert_eq!(a["input-data"], b64(b"in"));
                assert_eq!(a["capture-output"], true);
                ret(json!({"pid": 42}))
            }
            "guest-exec-status" => {
                assert_eq!(cmd["arguments"]["pid"], 42);
                let mut n = p.lock().unwrap();
                *n += 1;
                if *n < 3 {
                    ret(json!({"exited": false}))
                } else {
                    ret(json!({"exited": true, "exitcode": 7,
                        "out-data": b64(b"out\n"), "err-data": b64(b"err\n")}))
                }
            }
            _ => Vec::new(),
        });
        let mut req = ExecRequest::new(vec!["sh".into(), "-c".into(), "exit 7".into()]);
        req.env = vec!["A=1".into()];
        req.stdin = b"in".to_vec();
        let r = smol::block_on(agent.exec(&req)).unwrap();
        assert_eq!(
            r,
            ExecResult {
                status: 7,
                stdout: b"out\n".to_vec(),
                stderr: b"err\n".to_vec(),
                truncated: false
            }
        );
        assert_eq!(*polls.lock().unwrap(), 3);
    }

    #[test]
    fn exit_by_signal_and_bad_statuses() {
        let st = |v: Value| exec_result(&v);
        assert_eq!(
            st(json!({"exited": true, "signal": 9, "out-truncated": true}))
                .unwrap()
                .status,
            137
        );
        assert!(
            st(json!({"exited": true, "signal": 9, "out-truncated": true}))
                .unwrap()
                .truncated
        );
        for bad in [
            json!({"exited": true}),
            json!({"exited": true, "exitcode": "7"}),
            json!({"exited": true, "exitcode": 1_u64 << 40}),
            json!({"exited": true, "signal": i64::MAX}),
            json!({"exited": true, "exitcode": 0, "out-data": "not base64!"}),
            json!({"exited": true, "exitcode": 0, "err-data": 5}),
        ] {
            assert!(matches!(st(bad.clone()), Err(Error::Protocol(_))), "{bad}");
        }
    }

    #[test]
    fn requests_that_cannot_go_are_refused_before_sending() {
        let (_d, agent, seen) = fake(synced);
        smol::block_on(async {
            for (req, want) in [
                (ExecRequest::new(vec![]), "no command"),
                (ExecRequest::new(vec!["a\0b".into()]), "NUL"),
            ] {
                let e = agent.exec(&req).await.unwrap_err();
                assert!(e.to_string().contains(want), "{e}");
                assert_eq!(e.fault(), Fault::Input);
            }
            let mut big = ExecRequest::new(vec!["cat".into()]);
            big.stdin = vec![0; MAX_STDIN + 1];
            assert!(matches!(
                agent.exec(&big).await,
                Err(Error::TooLarge { .. })
            ));
            assert!(matches!(
                agent.read_file("etc/passwd", 10).await,
                Err(Error::Invalid(_))
            ));
        });
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn malformed_replies_are_errors_and_the_next_request_resyncs() {
        let n = Arc::new(Mutex::new(0));
        let c = n.clone();
        let (_d, agent, seen) = fake(move |cmd| match cmd["execute"].as_str().unwrap() {
            "guest-sync-delimited" => synced(cmd),
            "guest-ping" => {
                let mut n = c.lock().unwrap();
                *n += 1;
                match *n {
                    1 => b"not json\n".to_vec(),
                    2 => b"[1, 2]\n".to_vec(),
                    3 => b"{\"neither\": 1}\n".to_vec(),
                    4 => {
                        let e = json!({"error": {"class": "GenericError", "desc": "no"}});
                        format!("{e}\n").into_bytes()
                    }
                    _ => ret(json!({})),
                }
            }
            _ => Vec::new(),
        });
        smol::block_on(async {
            for _ in 0..3 {
                let e = agent.ping().await.unwrap_err();
                assert!(matches!(e, Error::Protocol(_)), "{e}");
            }
            // A refusal is an answer: the stream stays in step.
            let e = agent.ping().await.unwrap_err();
            assert_eq!(e.to_string(), "the guest agent refused guest-ping: no");
            agent.ping().await.unwrap();
        });
        let syncs = names(&seen)
            .iter()
            .filter(|n| *n == "guest-sync-delimited")
            .count();
        assert_eq!(syncs, 4, "{:?}", names(&seen));
    }

    #[test]
    fn an_oversized_reply_is_refused_and_skipped() {
        let n = Arc::new(Mutex::new(0));
        let c = n.clone();
        let (_d, agent, _) = fake(move |cmd| match cmd["execute"].as_str().unwrap() {
            "guest-sync-delimited" => synced(cmd),
            "guest-info" => {
                let mut n = c.lock().unwrap();
                *n += 1;
                if *n == 1 {
                    // Longer than any reply may be, and its end arrives
                    // only with the next sync's answer.
                    let mut huge = b"{\"return\": \"".to_vec();
                    huge.resize(MAX_LINE + 100, b'x');
                    huge
                } else {
                    ret(json!({"version": "7.2"}))
                }
            }
            _ => Vec::new(),
        });
        let agent = Agent {
            timeout: Duration::from_secs(5),
            ..agent
        };
        smol::block_on(async {
            let e = agent.request("guest-info", None).await.unwrap_err();
            assert!(matches!(e, Error::LineTooLong), "{e}");
            let v = agent.request("guest-info", None).await.unwrap();
            assert_eq!(v["version"], "7.2");
            let conn = agent.conn.lock().await;
            assert!(conn.as_ref().unwrap().buf.len() <= MAX_LINE);
        });
    }

    #[test]
    fn a_silent_guest_is_no_agent_and_a_slow_one_a_timeout() {
        let (_d, agent, seen) = fake(|_| Vec::new());
        smol::block_on(async {
            let t = Instant::now();
            let e = agent.ping().await.unwrap_err();
            assert!(t.elapsed() < Duration::from_secs(2));
            assert!(matches!(e, Error::NoAgent(_)), "{e}");
            assert!(e.to_string().contains("start qemu-guest-agent"), "{e}");
            assert_eq!(e.fault(), Fault::Peer);
            // Every try syncs again.
            agent.ping().await.unwrap_err();
        });
        assert_eq!(names(&seen), ["guest-sync-delimited"; 2]);

        let (_d, agent, seen) = fake(|cmd| match cmd["execute"].as_str().unwrap() {
            "guest-sync-delimited" => synced(cmd),
            _ => Vec::new(),
        });
        smol::block_on(async {
            let e = agent.ping().await.unwrap_err();
            assert!(matches!(e, Error::Timeout { .. }), "{e}");
            agent.ping().await.unwrap_err();
        });
        // The reply to the timed-out request may still come: resync first.
        assert_eq!(
            names(&seen),
            [
                "guest-sync-delimited",
                "guest-ping",
                "guest-sync-delimited",
                "guest-ping"
            ]
        );
    }

    #[test]
    fn files_go_in_chunks_and_are_always_closed() {
        let content: Vec<u8> = (0..CHUNK * 2 + 10).map(|i| (i % 251) as u8).collect();
        let data = Arc::new(Mutex::new((content.clone(), 0usize, Vec::new())));
        let d = data.clone();
        let (_d, agent, seen) = fake(move |cmd| {
            let a = &cmd["arguments"];
            let mut d = d.lock().unwrap();
            let (file, pos, written) = &mut *d;
            match cmd["execute"].as_str().unwrap() {
                "guest-sync-delimited" => synced(cmd),
                "guest-file-open" => {
                    *pos = 0;
                    if a["path"] == "/missing" {
                        let e = json!({"error": {"class": "GenericError", "desc": "No such file"}});
                        return format!("{e}\n").into_bytes();
                    }
                    ret(json!(7))
                }
                "guest-file-read" => {
                    let n = usize::try_from(a["count"].as_u64().unwrap()).unwrap();
                    let part = &file[*pos..(*pos + n).min(file.len())];
                    *pos += part.len();
                    ret(
                        json!({"count": part.len(), "buf-b64": b64(part), "eof": *pos == file.len()}),
                    )
                }
                "guest-file-write" => {
                    // Short writes: at most 1000 bytes at a time.
                    let buf = unb64("buf-b64", a).unwrap();
                    let n = buf.len().min(1000);
                    written.extend_from_slice(&buf[..n]);
                    ret(json!({"count": n, "eof": false}))
                }
                "guest-file-close" => ret(json!({})),
                _ => Vec::new(),
            }
        });
        let agent = Agent {
            timeout: Duration::from_secs(5),
            ..agent
        };
        smol::block_on(async {
            assert_eq!(agent.read_file("/f", 1 << 20).await.unwrap(), content);
            let e = agent.read_file("/f", CHUNK + 1).await.unwrap_err();
            assert!(matches!(e, Error::TooLarge { .. }), "{e}");
            let e = agent.read_file("/missing", 10).await.unwrap_err();
            assert!(e.to_string().contains("No such file"), "{e}");
            agent.write_file("/g", &content).await.unwrap();
        });
        assert_eq!(data.lock().unwrap().2, content);
        let n = names(&seen);
        let count = |c: &str| n.iter().filter(|x| *x == c).count();
        // Every handle opened was closed, the one over the limit too.
        assert_eq!(count("guest-file-open"), 4);
        assert_eq!(count("guest-file-close"), 3);
        assert!(count("guest-file-write") > content.len() / 1000);
    }

    #[test]
    fn a_closed_channel_is_reported_and_reconnected() {
        let (_d, agent, seen) = fake(|cmd| match cmd["execute"].as_str().unwrap() {
            "guest-sync-delimited" => synced(cmd),
            "guest-shutdown" => CLOSE.to_vec(),
            _ => ret(json!({})),
        });
        smol::block_on(async {
            agent.ping().await.unwrap();
            let e = agent.request("guest-shutdown", None).await.unwrap_err();
            assert!(matches!(e, Error::Closed), "{e}");
            agent.ping().await.unwrap();
        });
        assert_eq!(
            names(&seen),
            [
                "guest-sync-delimited",
                "guest-ping",
                "guest-shutdown",
                "guest-sync-delimited",
                "guest-ping"
            ]
        );
        let dir = tempfile::tempdir().unwrap();
        let none = Agent::new(&dir.path().join("qga.sock"), Duration::from_secs(1));
        let e = smol::block_on(none.ping()).unwrap_err();
        assert!(matches!(e, Error::Connect { .. }), "{e}");
        assert_eq!(e.fault(), Fault::Host);
    }
}
