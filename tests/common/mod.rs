//! A small fluent harness for driving the real binary (uutils' `new_ucmd!()`,
//! Firecracker's test framework): `applet("kvmbox-cert").args([...]).fails()
//! .stderr_contains("...")`.
//!
//! The binary under test is `$KVMBOX_BIN` when set (`make test` points it at
//! the shipped static build), else the one cargo built for this test run.
#![allow(dead_code, unreachable_pub)] // each test file uses a different part
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a failed test should panic

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The kvmbox executable under test.
pub fn bin() -> PathBuf {
    std::env::var_os("KVMBOX_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kvmbox")))
}

/// A command line for one applet, run without a symlink (`--applet NAME`).
pub fn applet(name: &str) -> Cmd {
    let mut cmd = Command::new(bin());
    cmd.arg("--applet").arg(name);
    Cmd { cmd, stdin: None }
}

/// Any other program (a real peer such as `openssl`).
pub fn program(name: &str) -> Cmd {
    Cmd {
        cmd: Command::new(name),
        stdin: None,
    }
}

pub struct Cmd {
    cmd: Command,
    stdin: Option<Vec<u8>>,
}

impl Cmd {
    pub fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.arg(a);
        self
    }
    pub fn args<I, S>(mut self, a: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(a);
        self
    }
    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }
    pub fn env_remove(mut self, k: &str) -> Self {
        self.cmd.env_remove(k);
        self
    }
    pub fn current_dir(mut self, d: impl AsRef<Path>) -> Self {
        self.cmd.current_dir(d);
        self
    }
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }
    /// Runs to completion and returns what it printed.
    pub fn run(mut self) -> Run {
        self.cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        self.cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = self
            .cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", self.cmd));
        if let Some(data) = self.stdin.take() {
            let mut pipe = child.stdin.take().unwrap();
            std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            });
        }
        let out = child.wait_with_output().unwrap();
        Run {
            desc: format!("{:?}", self.cmd),
            out,
        }
    }
    /// Runs and asserts exit code 0.
    pub fn succeeds(self) -> Run {
        let run = self.run();
        assert!(
            run.out.status.success(),
            "expected success: {}",
            run.describe()
        );
        run
    }
    /// Runs and asserts a non-zero exit code.
    pub fn fails(self) -> Run {
        let run = self.run();
        assert!(
            !run.out.status.success(),
            "expected failure: {}",
            run.describe()
        );
        run
    }
}

pub struct Run {
    desc: String,
    pub out: Output,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "{}\n  status: {}\n  stdout: {}\n  stderr: {}",
            self.desc,
            self.out.status,
            self.stdout(),
            self.stderr()
        )
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    pub fn code(&self) -> Option<i32> {
        self.out.status.code()
    }
    pub fn code_is(self, code: i32) -> Self {
        assert_eq!(self.code(), Some(code), "{}", self.describe());
        self
    }
    pub fn stdout_contains(self, s: &str) -> Self {
        assert!(
            self.stdout().contains(s),
            "stdout lacks {s:?}: {}",
            self.describe()
        );
        self
    }
    pub fn stderr_contains(self, s: &str) -> Self {
        assert!(
            self.stderr().contains(s),
            "stderr lacks {s:?}: {}",
            self.describe()
        );
        self
    }
    /// Errors are reported on exactly one line.
    pub fn stderr_one_line(self) -> Self {
        assert_eq!(
            self.stderr().trim_end().lines().count(),
            1,
            "{}",
            self.describe()
        );
        self
    }
}

/// A scratch directory removed when dropped.
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Asks for the `/1.0/events` websocket on `s` (RFC 6455's upgrade) and
/// reads the answer's head, which must be `101`.
pub fn upgrade_to_events(s: &mut (impl Read + Write + ?Sized)) {
    s.write_all(
        b"GET /1.0/events HTTP/1.1\r\nHost: kvmbox\r\nUpgrade: websocket\r\n\
          Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    s.flush().unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "), "{head:?}");
}
