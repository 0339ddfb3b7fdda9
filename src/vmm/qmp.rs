//! A QMP client: QEMU's JSON monitor protocol over the VM's Unix socket.
//! Reference: <https://www.qemu.org/docs/master/interop/qmp-spec.html>.
//!
//! A session is a typestate: [`Qmp<Handshake>`] has read QEMU's greeting and
//! can only negotiate; [`Qmp<Ready>`] can run commands. Replies carry the id
//! we sent; events arriving between them are queued for [`Qmp::take_events`].
//! Lines are bounded and every wait has a time limit, so a misbehaving QEMU
//! can neither exhaust memory nor hang the daemon.

use std::collections::VecDeque;
use std::io;
use std::marker::PhantomData;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use smol::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use smol::net::unix::UnixStream;

use crate::fault::{Blame, Fault};

/// Longest line accepted from QEMU; real replies are a few KiB.
const MAX_LINE: usize = 1 << 20;
/// Events kept while nobody reads them; the oldest are dropped beyond this.
const MAX_EVENTS: usize = 256;
/// Default limit on one round trip.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong, split by who is at fault.
#[derive(thiserror::Error)]
pub enum Error {
    /// Host: the socket could not be reached.
    #[error("cannot connect to QMP socket {path}")]
    Connect { path: String, source: io::Error },
    /// Host: reading or writing failed.
    #[error("QMP connection failed")]
    Io(#[from] io::Error),
    /// Peer: QEMU closed the connection.
    #[error("QEMU closed the QMP connection")]
    Closed,
    /// Peer: no answer in time.
    #[error("QEMU did not answer {what} within {secs}s")]
    Timeout { what: String, secs: u64 },
    /// Peer: the message is not QMP.
    #[error("QEMU sent an invalid QMP message: {0}")]
    Protocol(String),
    /// Peer: a line beyond [`MAX_LINE`].
    #[error("QEMU sent a QMP line longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// Input or state: QEMU refused the command (bad argument, device busy…).
    #[error("QEMU refused {command}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

crate::debug_as_display!(Error);

impl Blame for Error {
    fn fault(&self) -> Fault {
        match self {
            Error::Connect { .. } | Error::Io(_) => Fault::Host,
            Error::Closed | Error::Timeout { .. } | Error::Protocol(_) | Error::LineTooLong => {
                Fault::Peer
            }
            Error::Command { .. } => Fault::Input,
        }
    }
}

/// An asynchronous QMP event (`SHUTDOWN`, `DEVICE_DELETED`, …).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: Value,
}

/// State: greeting read, capabilities not yet negotiated.
#[derive(Debug)]
pub(crate) enum Handshake {}
/// State: commands may be sent.
#[derive(Debug)]
pub(crate) enum Ready {}

/// One QMP session.
#[derive(Debug)]
pub(crate) struct Qmp<S> {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events read while waiting for replies, oldest first.
    events: VecDeque<Event>,
    /// Bytes of a line not yet complete, kept here so that a read cut off by
    /// a timeout does not lose them and desynchronise the stream.
    partial: Vec<u8>,
    next_id: u64,
    timeout: Duration,
    version: String,
    _state: PhantomData<S>,
}

async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    crate::rt::timed(limit, fut).await.unwrap_or_else(|| {
        Err(Error::Timeout {
            what: what.to_string(),
            secs: limit.as_secs(),
        })
    })
}

impl<S> Qmp<S> {
    /// QEMU's version from the greeting, e.g. `7.2.22`.
    pub(crate) fn version(&self) -> &str {
        &self.version
    }

    /// Reads one bounded line; `None` at end of stream.
    async fn read_line(&mut self) -> Result<Option<Vec<u8>>, Error> {
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                return if self.partial.is_empty() {
                    Ok(None)
                } else {
                    Err(Error::Closed)
                };
            }
            let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (buf.get(..i).unwrap_or_default(), Some(i + 1)),
                None => (buf, None),
            };
            if self.partial.len() + chunk.len() > MAX_LINE {
                return Err(Error::LineTooLong);
            }
            self.partial.extend_from_slice(chunk);
            let used = done.unwrap_or(buf.len());
            self.reader.consume(used);
            if done.is_some() {
                return Ok(Some(std::mem::take(&mut self.partial)));
            }
        }
    }

    /// Reads one message; events are queued and `None` returned for them.
    async fn read_message(&mut self) -> Result<Option<Map<String, Value>>, Error> {
        let line = self.read_line().await?.ok_or(Error::Closed)?;
        let v: Value = serde_json::from_slice(&line).map_err(|e| Error::Protocol(e.to_string()))?;
        let Value::Object(map) = v else {
            return Err(Error::Protocol("not a JSON object".into()));
        };
        if let Some(name) = map.get("event").and_then(Value::as_str) {
            if self.events.len() >= MAX_EVENTS {
                self.events.pop_front();
            }
            self.events.push_back(Event {
                name: name.to_string(),
                data: map.get("data").cloned().unwrap_or(Value::Null),
            });
            return Ok(None);
        }
        Ok(Some(map))
    }

    async fn send(&mut self, command: &str, args: Option<Value>) -> Result<Value, Error> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let (Some(a), Value::Object(m)) = (args, &mut msg) {
            m.insert("arguments".into(), a);
        }
        let mut line = serde_json::to_vec(&msg).map_err(|e| Error::Protocol(e.to_string()))?;
        line.push(b'\n');
        let limit = self.timeout;
        within(limit, command, async {
            self.writer.write_all(&line).await?;
            self.writer.flush().await?;
            loop {
                let Some(reply) = self.read_message().await? else {
                    continue;
                };
                // A reply to an older, timed-out command is stale: skip it.
                match reply.get("id") {
                    Some(v) if v.as_u64() != Some(id) => continue,
                    _ => {}
                }
                if let Some(ret) = reply.get("return") {
                    return Ok(ret.clone());
                }
                if let Some(err) = reply.get("error") {
                    let field =
                        |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                    return Err(Error::Command {
                        command: command.to_string(),
                        class: field("class"),
                        desc: field("desc"),
                    });
                }
                return Err(Error::Protocol(format!(
                    "reply to {command} has neither return nor error"
                )));
            }
        })
        .await
    }
}

impl Qmp<Handshake> {
    /// Connects and reads the greeting.
    pub(crate) async fn connect(path: &Path, timeout: Duration) -> Result<Self, Error> {
        let stream = within(timeout, "the connection", async {
            UnixStream::connect(path)
                .await
                .map_err(|source| Error::Connect {
                    path: path.display().to_string(),
                    source,
                })
        })
        .await?;
        Qmp::over(stream, timeout).await
    }

    /// Reads the greeting on an open stream to QEMU.
    pub(crate) async fn over(stream: UnixStream, timeout: Duration) -> Result<Self, Error> {
        let mut qmp = Qmp {
            reader: BufReader::new(stream.clone()),
            writer: stream,
            events: VecDeque::new(),
            partial: Vec::new(),
            next_id: 1,
            timeout,
            version: String::new(),
            _state: PhantomData::<Handshake>,
        };
        let greeting = within(timeout, "with a greeting", async {
            loop {
                if let Some(m) = qmp.read_message().await? {
                    return Ok(m);
                }
            }
        })
        .await?;
        let v = greeting
            .get("QMP")
            .and_then(|q| q.get("version"))
            .and_then(|v| v.get("qemu"))
            .ok_or_else(|| Error::Protocol("the first message is not a QMP greeting".into()))?;
        let part = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        qmp.version = format!("{}.{}.{}", part("major"), part("minor"), part("micro"));
        Ok(qmp)
    }

    /// Leaves capabilities negotiation mode; only then may commands run.
    pub(crate) async fn negotiate(mut self) -> Result<Qmp<Ready>, Error> {
        self.send("qmp_capabilities", None).await?;
        Ok(Qmp {
            reader: self.reader,
            writer: self.writer,
            events: self.events,
            partial: self.partial,
            next_id: self.next_id,
            timeout: self.timeout,
            version: self.version,
            _state: PhantomData,
        })
    }
}

/// `query-status`: the run state (`running`, `paused`, `shutdown`…).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub running: bool,
    pub state: String,
}

impl Qmp<Ready> {
    pub(crate) async fn query_status(&mut self) -> Result<Status, Error> {
        let r = self.send("query-status", None).await?;
        Ok(Status {
            running: r.get("running").and_then(Value::as_bool).unwrap_or(false),
            state: r
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string(),
        })
    }

    /// Presses the ACPI power button.
    pub(crate) async fn system_powerdown(&mut self) -> Result<(), Error> {
        self.send("system_powerdown", None).await.map(drop)
    }

    /// Asks QEMU to exit at once. QEMU may close the socket before or after
    /// its reply; both mean success.
    pub(crate) async fn quit(&mut self) -> Result<(), Error> {
        match self.send("quit", None).await {
            Ok(_) | Err(Error::Closed) => Ok(()),
            Err(Error::Io(e))
                if e.kind() == io::ErrorKind::BrokenPipe
                    || e.kind() == io::ErrorKind::ConnectionReset =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn blockdev_add(&mut self, options: Value) -> Result<(), Error> {
        self.send("blockdev-add", Some(options)).await.map(drop)
    }

    pub(crate) async fn blockdev_del(&mut self, node_name: &str) -> Result<(), Error> {
        self.send("blockdev-del", Some(json!({ "node-name": node_name })))
            .await
            .map(drop)
    }

    /// An internal snapshot `name` of the qcow2 node `node`, taken while
    /// the guest runs (its disk as a power cut would leave it).
    pub(crate) async fn snapshot_internal(&mut self, node: &str, name: &str) -> Result<(), Error> {
        self.send(
            "blockdev-snapshot-internal-sync",
            Some(json!({ "device": node, "name": name })),
        )
        .await
        .map(drop)
    }

    pub(crate) async fn snapshot_delete_internal(
        &mut self,
        node: &str,
        name: &str,
    ) -> Result<(), Error> {
        self.send(
            "blockdev-snapshot-delete-internal-sync",
            Some(json!({ "device": node, "name": name })),
        )
        .await
        .map(drop)
    }

    pub(crate) async fn device_add(&mut self, options: Value) -> Result<(), Error> {
        self.send("device_add", Some(options)).await.map(drop)
    }

    /// Requests removal; the guest must cooperate, see [`Self::wait_event`].
    pub(crate) async fn device_del(&mut self, id: &str) -> Result<(), Error> {
        self.send("device_del", Some(json!({ "id": id })))
            .await
            .map(drop)
    }

    /// `query-pci` of bus 0, as QEMU returns it.
    pub(crate) async fn query_pci(&mut self) -> Result<Value, Error> {
        self.send("query-pci", None).await
    }

    /// Events received so far, oldest first, emptying the queue.
    pub(crate) fn take_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    /// Waits for the first queued or incoming event that `matches`, removing
    /// it from the queue; other events stay queued.
    pub(crate) async fn wait_event(
        &mut self,
        limit: Duration,
        what: &str,
        matches: impl Fn(&Event) -> bool,
    ) -> Result<Event, Error> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(i) = self.events.iter().position(&matches) {
                if let Some(e) = self.events.remove(i) {
                    return Ok(e);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout {
                    what: what.to_string(),
                    secs: limit.as_secs(),
                });
            }
            within(left, what, async {
                // Any message at all is fine here: a stray reply is dropped,
                // an event lands in the queue for the check above.
                self.read_message().await.map(drop)
            })
            .await?;
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a failed test should panic"
)]
mod tests {
    use super::*;

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#;

    /// A fake QEMU: sends the greeting, then for each command received runs
    /// `script` which returns the lines to send back.
    fn fake(
        script: impl Fn(&Value) -> Vec<String> + Send + 'static,
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            let (mut s, _) = listener.accept().unwrap();
            writeln!(s, "{GREETING}").unwrap();
            let reader = std::io::BufReader::new(s.try_clone().unwrap());
            for line in reader.lines() {
                let Ok(line) = line else { return };
                let cmd: Value = serde_json::from_str(&line).unwrap();
                for out in script(&cmd) {
                    if s.write_all(out.as_bytes()).is_err() {
                        return;
                    }
                }
            }
        });
        (dir, path)
    }

    fn reply(cmd: &Value, ret: &str) -> String {
        format!("{{\"return\": {ret}, \"id\": {}}}\n", cmd["id"])
    }

    async fn ready(path: &Path) -> Qmp<Ready> {
        Qmp::connect(path, Duration::from_secs(2))
            .await
            .unwrap()
            .negotiate()
            .await
            .unwrap()
    }

    #[test]
    fn negotiates_and_queues_events_between_replies() {
        let (_d, path) = fake(|cmd| match cmd["execute"].as_str().unwrap() {
            "system_powerdown" => vec![
            "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"POWERDOWN\"}\n"
                .into(),
            reply(cmd, "{}"),
        ],
            "query-status" => vec![reply(
                cmd,
                r#"{"status": "running", "singlestep": false, "running": true}"#,
            )],
            _ => vec![reply(cmd, "{}")],
        });
        smol::block_on(async {
            let pending = Qmp::connect(&path, Duration::from_secs(2)).await.unwrap();
            assert_eq!(pending.version(), "7.2.22");
            let mut q = pending.negotiate().await.unwrap();
            q.system_powerdown().await.unwrap();
            assert_eq!(
                q.query_status().await.unwrap(),
                Status {
                    running: true,
                    state: "running".into()
                }
            );
            let ev = q.take_events();
            assert_eq!(ev.len(), 1);
            assert_eq!(ev[0].name, "POWERDOWN");
            assert!(q.take_events().is_empty());
        });
    }

    #[test]
    fn command_errors_are_input_faults() {
        let (_d, path) = fake(|cmd| {
            match cmd["execute"].as_str().unwrap() {
        "device_del" => vec![format!(
            "{{\"error\": {{\"class\": \"DeviceNotFound\", \"desc\": \"Device 'x' not found\"}}, \"id\": {}}}\n",
            cmd["id"]
        )],
        _ => vec![reply(cmd, "{}")],
    }
        });
        smol::block_on(async {
            let mut q = ready(&path).await;
            let e = q.device_del("x").await.unwrap_err();
            assert_eq!(e.fault(), Fault::Input);
            assert_eq!(
                e.to_string(),
                "QEMU refused device_del: Device 'x' not found"
            );
        });
    }

    #[test]
    fn waits_for_a_matching_event_keeping_others() {
        let (_d, path) = fake(|cmd| {
            match cmd["execute"].as_str().unwrap() {
        "device_del" => vec![
            reply(cmd, "{}"),
            "{\"event\": \"DEVICE_DELETED\", \"data\": {\"path\": \"/machine/peripheral/disk-a/virtio-backend\"}}\n".into(),
            "{\"event\": \"RTC_CHANGE\", \"data\": {}}\n".into(),
            "{\"event\": \"DEVICE_DELETED\", \"data\": {\"device\": \"disk-a\", \"path\": \"/machine/peripheral/disk-a\"}}\n".into(),
        ],
        _ => vec![reply(cmd, "{}")],
    }
        });
        smol::block_on(async {
            let mut q = ready(&path).await;
            q.device_del("disk-a").await.unwrap();
            let e = q
                .wait_event(Duration::from_secs(2), "DEVICE_DELETED", |e| {
                    e.name == "DEVICE_DELETED" && e.data["device"] == "disk-a"
                })
                .await
                .unwrap();
            assert_eq!(e.data["path"], "/machine/peripheral/disk-a");
            let rest: Vec<String> = q.take_events().into_iter().map(|e| e.name).collect();
            assert_eq!(rest, ["DEVICE_DELETED", "RTC_CHANGE"]);
        });
    }

    #[test]
    fn silence_is_a_timeout_not_a_hang() {
        let (_d, path) = fake(|cmd| match cmd["execute"].as_str().unwrap() {
            "query-status" => vec![],
            _ => vec![reply(cmd, "{}")],
        });
        smol::block_on(async {
            let mut q = Qmp::connect(&path, Duration::from_millis(300))
                .await
                .unwrap()
                .negotiate()
                .await
                .unwrap();
            let e = q.query_status().await.unwrap_err();
            assert!(matches!(e, Error::Timeout { .. }), "{e}");
            assert_eq!(e.fault(), Fault::Peer);
            let e = q
                .wait_event(Duration::from_millis(100), "SHUTDOWN", |_| false)
                .await
                .unwrap_err();
            assert!(matches!(e, Error::Timeout { .. }), "{e}");
        });
    }

    #[test]
    fn garbage_and_huge_lines_are_refused() {
        let (_d, path) = fake(|cmd| match cmd["execute"].as_str().unwrap() {
            "query-status" => vec!["not json\n".into()],
            "query-pci" => vec!["x".repeat(MAX_LINE + 10)],
            _ => vec![reply(cmd, "{}")],
        });
        smol::block_on(async {
            let mut q = ready(&path).await;
            assert!(matches!(
                q.query_status().await.unwrap_err(),
                Error::Protocol(_)
            ));
            assert!(matches!(
                q.query_pci().await.unwrap_err(),
                Error::LineTooLong
            ));
        });
    }

    #[test]
    fn no_greeting_or_no_socket() {
        let dir = tempfile::tempdir().unwrap();
        smol::block_on(async {
            let e = Qmp::connect(&dir.path().join("none.sock"), Duration::from_secs(1))
                .await
                .unwrap_err();
            assert!(matches!(e, Error::Connect { .. }));
            assert_eq!(e.fault(), Fault::Host);
        });
        let (_d, path) = fake(|_| vec![]);
        // A peer that closes after a non-QMP first line.
        let path2 = path.with_file_name("other.sock");
        let l = std::os::unix::net::UnixListener::bind(&path2).unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            let (mut s, _) = l.accept().unwrap();
            s.write_all(b"{\"hello\": 1}\n").unwrap();
        });
        smol::block_on(async {
            let e = Qmp::connect(&path2, Duration::from_secs(1))
                .await
                .unwrap_err();
            assert!(matches!(e, Error::Protocol(_)), "{e}");
        });
    }

    #[test]
    fn quit_accepts_a_closed_socket() {
        let (_d, path) = fake(|cmd| match cmd["execute"].as_str().unwrap() {
            "quit" => vec![reply(cmd, "{}")],
            _ => vec![reply(cmd, "{}")],
        });
        smol::block_on(async {
            let mut q = ready(&path).await;
            q.quit().await.unwrap();
        });
    }
}
