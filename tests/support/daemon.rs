//! Starting a real kvmboxd for a test and stopping it afterwards.
#![allow(dead_code, unreachable_pub)] // each test file uses a different part
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a failed test should panic

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running daemon, killed (SIGTERM) when dropped.
pub struct Daemon {
    pub child: Option<Child>,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `bin --applet kvmboxd --state-dir DIR/state` with `extra`
    /// arguments and waits for its socket.
    pub fn start(bin: &Path, dir: &Path, extra: &[&str]) -> Daemon {
        Daemon::start_in(&[], bin, dir, extra)
    }

    /// [`Daemon::start`] under `wrapper` (a program and its arguments that
    /// end by running the rest, such as `unshare --net …`).
    pub fn start_in(wrapper: &[&str], bin: &Path, dir: &Path, extra: &[&str]) -> Daemon {
        let state = dir.join("state");
        let socket = state.join("unix.socket");
        let log = dir.join("kvmboxd.log");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .args(["--applet", "kvmboxd", "--state-dir"])
            .arg(&state)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon {
            child: Some(child),
            state,
            socket,
            log,
        };
        let start = Instant::now();
        while !d.socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "daemon did not start: {}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// Where the TLS listener is bound (`HOST:PORT` as the daemon logs it),
    /// waiting up to 10 s for it to listen.
    pub fn https_address(&self) -> String {
        let start = Instant::now();
        loop {
            let log = self.log_text();
            if let Some(a) = log
                .lines()
                .rev()
                .find_map(|l| l.split("listening on https://").nth(1))
            {
                return a.trim().to_string();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no TCP listener: {log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn socket_mode(&self) -> u32 {
        std::fs::metadata(&self.socket)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    /// Whether the daemon process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// SIGTERM, and the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("daemon ignored SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether this test runs as root (the local-auth tests need real users).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Holds one idle connection to `socket` as `uid` (gid 0, the admin group
/// of these daemons) through a real peer (perl) that never says a word.
pub fn hold_as(uid: u32, socket: &Path) -> std::process::Child {
    use std::io::BufRead;
    let mut child = Command::new("setpriv")
        .args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            "0",
            "--clear-groups",
        ])
        .args(["perl", "-MIO::Socket::UNIX", "-e"])
        .arg(
            "$| = 1; my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die \"$!\\n\"; \
             print \"open\\n\"; sysread($s, my $b, 1); sleep 60",
        )
        .arg(socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "open\n");
    child
}
