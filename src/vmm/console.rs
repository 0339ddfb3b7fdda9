//! The serial console: one socket to QEMU, any number of viewers.
//!
//! QEMU's serial port is a socket chardev (QEMU listens) that also writes
//! all guest output to `console.log` (`logfile=`), so the log is complete
//! whether or not anyone, the daemon included, is connected. QEMU serves
//! one client at a time; the daemon is that client, and fans out:
//!
//! - a [`Pump`] (one task per VM, on the daemon's executor) reads all guest
//!   output and appends it to every viewer's buffer of unread bytes. It
//!   must never wait for a viewer: while nobody reads the socket QEMU stalls
//!   the guest's UART. So a viewer with [`VIEWER_MAX`] bytes unread is
//!   dropped (its reader gets what it had, then the end) and the others go
//!   on. Buffers, not queues of chunks: the UART sends byte by byte, and a
//!   buffer hands a viewer all that piled up in one read.
//! - a viewer ([`Console::attach`]) is an [`Output`] to read and an
//!   [`Input`] to type into the guest. Dropping either detaches it alone:
//!   the guest and the other viewers see nothing.
//!
//! The log is bounded by the pump: when it grows past [`LOG_MAX`] its last
//! [`LOG_KEEP`] bytes are kept and the rest dropped (QEMU appends with
//! `O_APPEND`, so it simply goes on after the kept tail). A few bytes QEMU
//! writes during that instant may be lost or land ahead of the tail; output
//! while no daemon runs is not trimmed until one does.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smol::channel::{self, Receiver, Sender, TrySendError};
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::lock::Mutex as AsyncMutex;
use smol::net::unix::UnixStream;

use crate::fault::{Blame, Fault};
use crate::rt::{lock, timed};

/// Unread bytes at which a viewer is dropped.
const VIEWER_MAX: usize = 256 << 10;
const READ_SIZE: usize = 4096;
/// Viewers of one VM at a time.
const MAX_VIEWERS: usize = 32;
/// The log is trimmed once it is larger than this…
const LOG_MAX: u64 = 1 << 20;
/// …to its last this many bytes.
const LOG_KEEP: u64 = 512 << 10;
/// Guest output between two looks at the log's size.
const CHECK_EVERY: usize = 64 << 10;
/// Limit on one write to the guest: a guest that reads no input stalls it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong on the console.
#[derive(thiserror::Error)]
pub enum Error {
    #[error("cannot connect to the console socket {}", path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("the console is closed: the VM stopped")]
    Closed,
    #[error("the console has {MAX_VIEWERS} viewers already")]
    Full,
    #[error("the guest took no console input for {}s", WRITE_TIMEOUT.as_secs())]
    Stalled,
    #[error("writing to the console failed")]
    Io(#[from] io::Error),
}

crate::debug_as_display!(Error);

impl Blame for Error {
    fn fault(&self) -> Fault {
        match self {
            Error::Closed | Error::Full => Fault::Conflict,
            Error::Stalled => Fault::Peer,
            Error::Connect { .. } | Error::Io(_) => Fault::Host,
        }
    }
}

/// One viewer as the pump sees it: its unread bytes, and a wake-up for its
/// reader (a channel of one: a wake-up pending is as good as two).
#[derive(Debug)]
struct Viewer {
    unread: Arc<Mutex<Vec<u8>>>,
    wake: Sender<()>,
}

/// What the pump and the viewers share.
#[derive(Debug)]
struct Shared {
    /// `None` once the pump has ended.
    viewers: Mutex<Option<Vec<Viewer>>>,
    /// The socket's writing half; the lock keeps one write whole.
    writer: AsyncMutex<UnixStream>,
}

/// A VM's console; clones share it.
#[derive(Clone, Debug)]
pub struct Console {
    shared: Arc<Shared>,
}

/// Reads guest output for the console's viewers; see the module docs.
#[derive(Debug)]
pub struct Pump {
    reader: UnixStream,
    shared: Arc<Shared>,
    log: PathBuf,
    /// Who must own the log (QEMU's uid) for the pump to trim it.
    log_owner: u32,
}

/// One viewer's guest output.
#[derive(Debug)]
pub struct Output {
    unread: Arc<Mutex<Vec<u8>>>,
    wake: Receiver<()>,
}

/// One viewer's way to type into the guest.
#[derive(Clone, Debug)]
pub struct Input(Arc<Shared>);

impl Console {
    /// Connects to the console socket `socket`. Output flows only while the
    /// returned [`Pump::run`] is driven. `log` is the chardev's log file,
    /// owned by uid `log_owner`.
    pub async fn connect(
        socket: &Path,
        log: &Path,
        log_owner: u32,
    ) -> Result<(Console, Pump), Error> {
        // A QEMU whose listen queue is full would leave connect pending.
        let stream = timed(WRITE_TIMEOUT, UnixStream::connect(socket))
            .await
            .unwrap_or_else(|| Err(io::ErrorKind::TimedOut.into()))
            .map_err(|source| Error::Connect {
                path: socket.to_path_buf(),
                source,
            })?;
        let shared = Arc::new(Shared {
            viewers: Mutex::new(Some(Vec::new())),
            writer: AsyncMutex::new(stream.clone()),
        });
        let pump = Pump {
            reader: stream,
            shared: shared.clone(),
            log: log.to_path_buf(),
            log_owner,
        };
        Ok((Console { shared }, pump))
    }

    /// A new viewer: guest output from now on, and input.
    pub fn attach(&self) -> Result<(Output, Input), Error> {
        let mut viewers = lock(&self.shared.viewers);
        let list = viewers.as_mut().ok_or(Error::Closed)?;
        // Viewers that left are otherwise swept only when the guest says
        // something: a quiet guest must not fill the list with them.
        list.retain(|v| !v.wake.is_closed());
        if list.len() >= MAX_VIEWERS {
            return Err(Error::Full);
        }
        let unread = Arc::new(Mutex::new(Vec::new()));
        let (wake, woken) = channel::bounded(1);
        list.push(Viewer {
            unread: unread.clone(),
            wake,
        });
        let out = Output {
            unread,
            wake: woken,
        };
        Ok((out, Input(self.shared.clone())))
    }
}

impl Output {
    /// Guest output that came since the last read, waiting for some; `None`
    /// once the VM has stopped or this viewer was dropped for falling behind.
    pub async fn read(&self) -> Option<Vec<u8>> {
        loop {
            let got = std::mem::take(&mut *lock(&self.unread));
            if !got.is_empty() {
                return Some(got);
            }
            if self.wake.recv().await.is_err() {
                // The pump let go of this viewer: what it left is the last.
                let got = std::mem::take(&mut *lock(&self.unread));
                return (!got.is_empty()).then_some(got);
            }
        }
    }
}

impl Input {
    /// Sends `bytes` to the guest's serial port, as typed.
    pub async fn write(&self, bytes: &[u8]) -> Result<(), Error> {
        let mut w = self.0.writer.lock().await;
        let sent = async {
            w.write_all(bytes).await?;
            w.flush().await
        };
        timed(WRITE_TIMEOUT, sent).await.ok_or(Error::Stalled)??;
        Ok(())
    }
}

impl Pump {
    /// Reads guest output until QEMU closes the socket, then ends every
    /// viewer's output.
    pub async fn run(mut self) {
        let mut buf = [0u8; READ_SIZE];
        let mut since_check = 0;
        while let Ok(n @ 1..) = self.reader.read(&mut buf).await {
            let chunk = buf.get(..n).unwrap_or_default();
            if let Some(list) = lock(&self.shared.viewers).as_mut() {
                list.retain(|v| {
                    let mut unread = lock(&v.unread);
                    if unread.len() + chunk.len() > VIEWER_MAX {
                        return false;
                    }
                    unread.extend_from_slice(chunk);
                    // Full: a wake-up is pending already. Closed: the
                    // viewer left.
                    !matches!(v.wake.try_send(()), Err(TrySendError::Closed(_)))
                });
            }
            since_check += n;
            if since_check >= CHECK_EVERY {
                since_check = 0;
                let (log, owner) = (self.log.clone(), self.log_owner);
                if let Err(e) = smol::unblock(move || trim_log(&log, owner)).await {
                    crate::log::log!(Warn, "cannot trim {}: {e}", self.log.display());
                }
            }
        }
        *lock(&self.shared.viewers) = None;
    }
}

/// Keeps the last [`LOG_KEEP`] bytes of `path` once it exceeds [`LOG_MAX`].
/// The file is in a directory QEMU's uid owns: it is opened without
/// following links and must be a plain file of `owner` with one name, so
/// that a planted link never makes root truncate another file.
fn trim_log(path: &Path, owner: u32) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.nlink() != 1 || meta.uid() != owner {
        return Err(io::Error::other("not a plain file of the VM's own"));
    }
    if meta.len() <= LOG_MAX {
        return Ok(());
    }
    file.seek(SeekFrom::Start(meta.len() - LOG_KEEP))?;
    let mut tail = Vec::new();
    (&mut file).take(LOG_KEEP).read_to_end(&mut tail)?;
    file.set_len(0)?;
    file.write_all(&tail)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed test should panic")]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn uid() -> u32 {
        fs::metadata("/proc/self").unwrap().uid()
    }

    #[test]
    fn viewers_share_output_and_a_slow_one_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("console.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        smol::block_on(async {
            let (console, pump) = Console::connect(&sock, &dir.path().join("log"), uid())
                .await
                .unwrap();
            let (mut qemu, _) = listener.accept().unwrap();
            let (fast, input) = console.attach().unwrap();
            let (slow, _) = console.attach().unwrap();
            let (gone, _) = console.attach().unwrap();
            drop(gone);
            let task = smol::spawn(pump.run());
            // Input from a viewer reaches QEMU's side.
            input.write(b"root\n").await.unwrap();
            let mut got = [0u8; 5];
            qemu.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"root\n");
            // Output piles up for a viewer that does not read, up to its
            // limit; beyond it that viewer is dropped, while the one that
            // reads gets everything and the pump never waits.
            let line = [b'x'; 1000];
            let mut sent = 0;
            let mut got = 0;
            while sent <= VIEWER_MAX + 10_000 {
                qemu.write_all(&line).unwrap();
                sent += line.len();
                while got < sent {
                    got += fast.read().await.unwrap().len();
                }
            }
            assert_eq!(got, sent);
            let mut slow_got = 0;
            while let Some(b) = slow.read().await {
                slow_got += b.len();
            }
            assert!(
                slow_got <= VIEWER_MAX && slow_got > VIEWER_MAX - 1000,
                "{slow_got}"
            );
            assert_eq!(lock(&console.shared.viewers).as_ref().unwrap().len(), 1);
            // Viewers that left make room even while the guest is silent.
            let many: Vec<_> = (1..MAX_VIEWERS)
                .map(|_| console.attach().unwrap())
                .collect();
            assert!(matches!(console.attach(), Err(Error::Full)));
            drop(many);
            let again: Vec<_> = (1..MAX_VIEWERS)
                .map(|_| console.attach().unwrap())
                .collect();
            drop(again);
            // QEMU going away ends the remaining viewers and refuses new ones.
            drop(qemu);
            task.await;
            assert!(fast.read().await.is_none());
            assert!(matches!(console.attach(), Err(Error::Closed)));
        });
    }

    #[test]
    fn the_log_keeps_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let head = vec![b'a'; usize::try_from(LOG_MAX).unwrap()];
        fs::write(&log, [head.as_slice(), b"the end"].concat()).unwrap();
        trim_log(&log, uid()).unwrap();
        let kept = fs::read(&log).unwrap();
        assert_eq!(kept.len() as u64, LOG_KEEP);
        assert!(kept.ends_with(b"aathe end"));
        // Small logs are left alone; a link or another owner's file is refused.
        trim_log(&log, uid()).unwrap();
        assert_eq!(fs::read(&log).unwrap(), kept);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&log, &link).unwrap();
        assert!(trim_log(&link, uid()).is_err());
        let hard = dir.path().join("hard");
        fs::hard_link(&log, &hard).unwrap();
        fs::write(&log, vec![b'b'; usize::try_from(LOG_MAX + 1).unwrap()]).unwrap();
        assert!(trim_log(&log, uid()).is_err());
        fs::remove_file(&hard).unwrap();
        assert!(trim_log(&log, uid().wrapping_add(1)).is_err());
        assert_eq!(fs::metadata(&log).unwrap().len(), LOG_MAX + 1);
    }
}
