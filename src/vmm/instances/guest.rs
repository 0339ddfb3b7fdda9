//! Getting into a running instance: commands and files through its guest
//! agent, and its serial console.
//!
//! Unlike start and stop, these do not wait on the instance's lock: they
//! change nothing the daemon keeps, a long command must not hold up a stop,
//! and a stop ends them anyway (QEMU closes their sockets). They use the
//! [`Guest`] handles published when the VM starts or is adopted and
//! withdrawn when it stops. Guest agent requests take turns on the VM's one
//! agent connection, one round trip at a time.
#![allow(
    dead_code,
    reason = "the API's exec, file and console routes are the callers"
)]

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::store::Overwrite;

use super::{current, Entry, Error, Manager};
use crate::log::log;
use crate::rt::lock;
use crate::vmm::console::{Console, Input, Output};
use crate::vmm::qga::{Agent, ExecRequest, ExecResult};
use crate::vmm::vm::Vm;

/// The guest device of the serial console QEMU gives every VM (its first
/// serial port).
const CONSOLE_TTY: &str = "/dev/ttyS0";
/// How long a guest tool run for the daemon (stty, kill, mkdir…) may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(10);

/// A command running in a guest.
#[derive(Debug)]
pub(crate) struct Started {
    agent: Agent,
    pid: i64,
    timeout: Duration,
}

impl Started {
    /// Waits for the command to exit.
    pub(crate) async fn wait(&self) -> Result<ExecResult, Error> {
        Ok(self.agent.wait(self.pid, self.timeout).await?)
    }

    /// Sends signal `signal` to the command, with the guest's own `kill`:
    /// the agent has no call for it.
    pub(crate) async fn signal(&self, signal: i32) -> Result<(), Error> {
        if !(1..=64).contains(&signal) {
            return Err(Error::Invalid(format!("{signal} is not a signal number")));
        }
        let kill = format!("kill -{signal} {}", self.pid);
        tool(&self.agent, &["sh", "-c", &kill]).await.map(drop)
    }
}

/// A guest path, as [`Manager::read_path`] found it.
#[derive(Debug)]
pub(crate) struct GuestPath {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub content: Content,
}

#[derive(Debug)]
pub(crate) enum Content {
    File(Vec<u8>),
    /// The entries' names, without `.` and `..`.
    Directory(Vec<String>),
    /// The link's target.
    Symlink(String),
}

/// What [`Manager::write_path`] makes.
#[derive(Debug)]
pub(crate) enum Put<'a> {
    /// A file with this content, or this added at its end.
    File { data: &'a [u8], append: bool },
    /// A directory, and its missing parents.
    Directory,
    /// A symlink to this target, replacing what was there.
    Symlink(&'a str),
}

/// The owner and mode to give a guest path; `None`: as it comes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
}

/// The most recorded output files an instance keeps.
const MAX_OUTPUTS: usize = 200;

/// Whether `file` is a name [`Manager::record_output`] gives.
fn output_name(file: &str) -> bool {
    let stem = file
        .strip_suffix(".stdout")
        .or_else(|| file.strip_suffix(".stderr"))
        .and_then(|f| f.strip_prefix("exec_"));
    stem.is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
}

/// What [`DESCRIBE`] and [`REMOVE`] exit with when the path is not there.
const GONE: i32 = 44;
/// The guest's `sh` script that prints `$0`'s type, owner and mode
/// (`type|uid|gid|octal mode`), then a directory's entries, a line each,
/// or a symlink's target.
const DESCRIBE: &str = "[ -e \"$0\" ] || [ -L \"$0\" ] || exit 44
s=$(stat -c '%F|%u|%g|%a' -- \"$0\") || exit
echo \"$s\"
case ${s%%|*} in directory) exec ls -1A -- \"$0\";; 'symbolic link') exec readlink -- \"$0\";; esac";
/// The guest's `sh` script that removes `$0`, an empty directory or not.
const REMOVE: &str = "[ -e \"$0\" ] || [ -L \"$0\" ] || exit 44
if [ -d \"$0\" ] && [ ! -L \"$0\" ]; then exec rmdir -- \"$0\"; fi
exec rm -f -- \"$0\"";

/// A [`GONE`] exit as the path not found.
fn missing(e: Error, name: &str, path: &str) -> Error {
    match e {
        Error::GuestTool { status: GONE, .. } => {
            Error::NotFound(format!("{path} in instance {name:?}"))
        }
        e => e,
    }
}

/// Runs `argv`, one of the guest's own tools, for what the agent has no
/// call for: its standard output, or an error with what it said.
async fn tool(agent: &Agent, argv: &[&str]) -> Result<Vec<u8>, Error> {
    let mut req = ExecRequest::new(argv.iter().map(|s| s.to_string()).collect());
    req.timeout = TOOL_TIMEOUT;
    let r = agent.exec(&req).await?;
    match r.status {
        0 => Ok(r.stdout),
        status => Err(Error::GuestTool {
            tool: argv.first().copied().unwrap_or_default().into(),
            status,
            said: String::from_utf8_lossy(&r.stderr).trim().into(),
        }),
    }
}

/// A running VM's ways in.
#[derive(Clone, Debug)]
pub(super) struct Guest {
    agent: Agent,
    /// `None` when the console socket could not be reached (a QEMU started
    /// by an older daemon has none).
    console: Option<Console>,
}

/// The guest agent of instance `e`, while it runs.
pub(super) fn agent_of(e: &Entry) -> Option<Agent> {
    lock(&e.guest).as_ref().map(|g| g.agent.clone())
}

impl Manager {
    /// Connects the console of `vm` (just started or adopted), runs its pump
    /// on the daemon's executor, and publishes the ways in.
    pub(super) async fn open_guest(&self, e: &Entry, vm: &Vm, name: &str) {
        let console = match (vm.connect_console().await, self.host()) {
            (Ok((console, pump)), Ok(host)) => {
                host.ex.spawn(pump.run()).detach();
                Some(console)
            }
            (Err(err), _) => {
                let why = crate::error_chain(&err);
                log!(Warn, "instance {name}: no console: {why}");
                None
            }
            // Without an executor nobody would read the socket, and the
            // guest's console would stall: leave it unconnected.
            (Ok(_), Err(_)) => None,
        };
        *lock(&e.guest) = Some(Guest {
            agent: vm.agent(),
            console,
        });
    }

    fn guest(&self, name: &str) -> Result<Guest, Error> {
        let e = self.entry(name)?;
        current(&e)?;
        let guest = lock(&e.guest).clone();
        guest.ok_or_else(|| Error::Conflict(format!("instance {name:?} is not running")))
    }

    /// Runs a command in the guest and waits for it to exit.
    pub(crate) async fn exec(&self, name: &str, req: ExecRequest) -> Result<ExecResult, Error> {
        Ok(self.guest(name)?.agent.exec(&req).await?)
    }

    /// Starts a command in the guest, to be waited on and signalled.
    pub(crate) async fn exec_start(&self, name: &str, req: ExecRequest) -> Result<Started, Error> {
        let agent = self.guest(name)?.agent;
        let pid = agent.spawn(&req).await?;
        Ok(Started {
            agent,
            pid,
            timeout: req.timeout,
        })
    }

    /// Tells the guest's serial terminal its viewer's window size, so that
    /// what runs on it (a shell, an editor) lays out its lines for it: the
    /// serial line itself carries no size.
    pub(crate) async fn resize_console(
        &self,
        name: &str,
        cols: u16,
        rows: u16,
    ) -> Result<(), Error> {
        let (cols, rows) = (cols.to_string(), rows.to_string());
        let stty = ["stty", "-F", CONSOLE_TTY, "rows", &rows, "cols", &cols];
        tool(&self.guest(name)?.agent, &stty).await.map(drop)
    }

    /// What the guest path `path` is, with its content: a file's bytes
    /// (refused beyond `limit`), a directory's entries or a symlink's
    /// target. Lstat-like: a symlink is not followed.
    pub(crate) async fn read_path(
        &self,
        name: &str,
        path: &str,
        limit: usize,
    ) -> Result<GuestPath, Error> {
        let agent = self.guest(name)?.agent;
        let out = tool(&agent, &["sh", "-c", DESCRIBE, path])
            .await
            .map_err(|e| missing(e, name, path))?;
        let out = String::from_utf8_lossy(&out);
        let (head, rest) = out.split_once('\n').unwrap_or((&out, ""));
        let fields: Vec<&str> = head.split('|').collect();
        let (kind, uid, gid, mode) = match fields[..] {
            [kind, uid, gid, mode] => {
                (kind, uid.parse(), gid.parse(), u32::from_str_radix(mode, 8))
            }
            _ => {
                return Err(Error::GuestTool {
                    tool: "stat".into(),
                    status: 0,
                    said: format!("an answer that is not type|uid|gid|mode: {head:?}"),
                })
            }
        };
        let (Ok(uid), Ok(gid), Ok(mode)) = (uid, gid, mode) else {
            return Err(Error::GuestTool {
                tool: "stat".into(),
                status: 0,
                said: format!("an owner or mode that is not a number: {head:?}"),
            });
        };
        let content = match kind {
            "directory" => Content::Directory(rest.lines().map(str::to_string).collect()),
            "symbolic link" => Content::Symlink(rest.trim_end_matches('\n').to_string()),
            k if k.starts_with("regular") => Content::File(agent.read_file(path, limit).await?),
            k => {
                return Err(Error::Invalid(format!(
                    "{path} is a {k}: only files, directories and symlinks can be read"
                )))
            }
        };
        Ok(GuestPath {
            uid,
            gid,
            mode,
            content,
        })
    }

    /// Makes the guest path `path` what `put` says, then gives it the owner
    /// and mode asked for (the agent's file calls set neither).
    pub(crate) async fn write_path(
        &self,
        name: &str,
        path: &str,
        put: Put<'_>,
        owner: Owner,
    ) -> Result<(), Error> {
        let agent = self.guest(name)?.agent;
        match put {
            Put::File {
                data,
                append: false,
            } => agent.write_file(path, data).await?,
            Put::File { data, append: true } => agent.append_file(path, data).await?,
            Put::Directory => tool(&agent, &["mkdir", "-p", "--", path]).await.map(drop)?,
            Put::Symlink(target) => tool(&agent, &["ln", "-sfn", "--", target, path])
                .await
                .map(drop)?,
        };
        let mut script = String::new();
        if owner.uid.is_some() || owner.gid.is_some() {
            let (u, g) = (owner.uid.unwrap_or(0), owner.gid.unwrap_or(0));
            script.push_str(&format!("chown -h {u}:{g} -- \"$0\" && "));
        }
        // A symlink has no mode of its own.
        if let Some(mode) = owner.mode.filter(|_| !matches!(put, Put::Symlink(_))) {
            script.push_str(&format!("chmod {mode:o} -- \"$0\" && "));
        }
        if !script.is_empty() {
            script.push_str("true");
            tool(&agent, &["sh", "-c", &script, path]).await?;
        }
        Ok(())
    }

    /// Removes the guest file, symlink or empty directory `path`.
    pub(crate) async fn remove_path(&self, name: &str, path: &str) -> Result<(), Error> {
        let agent = self.guest(name)?.agent;
        tool(&agent, &["sh", "-c", REMOVE, path])
            .await
            .map(drop)
            .map_err(|e| missing(e, name, path))
    }

    /// Keeps a finished command's standard output and error, each in a
    /// file of its own in the instance's directory: their names. The
    /// oldest go beyond [`MAX_OUTPUTS`].
    pub(crate) fn record_output(&self, name: &str, r: &ExecResult) -> Result<[String; 2], Error> {
        let dir = self.outputs_dir(name)?;
        let (id, mut kept) = (crate::uuid::new(), self.outputs(name)?);
        let files = [format!("exec_{id}.stdout"), format!("exec_{id}.stderr")];
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .or_else(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .map_err(|e| Error::host("keep the command's output", e))?;
        for (file, data) in files.iter().zip([&r.stdout, &r.stderr]) {
            crate::store::write_atomic(&dir.join(file), data, 0o600, Overwrite::Refuse)
                .map_err(|e| Error::host("keep the command's output", e))?;
        }
        // Names start with a random id: age is the files' time.
        kept.sort_by_key(|f| fs::metadata(dir.join(f)).and_then(|m| m.modified()).ok());
        let excess = (kept.len() + 2).saturating_sub(MAX_OUTPUTS);
        for old in kept.iter().take(excess) {
            let _ = fs::remove_file(dir.join(old));
        }
        Ok(files)
    }

    /// The names of an instance's recorded outputs.
    pub(crate) fn outputs(&self, name: &str) -> Result<Vec<String>, Error> {
        let entries = match fs::read_dir(self.outputs_dir(name)?) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::host("list the recorded outputs", e)),
        };
        let names = entries.filter_map(|e| e.ok()?.file_name().into_string().ok());
        Ok(names.filter(|n| output_name(n)).collect())
    }

    /// A recorded output's content.
    pub(crate) fn output(&self, name: &str, file: &str) -> Result<Vec<u8>, Error> {
        let path = self.output_path(name, file)?;
        fs::read(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(format!("output {file:?}")),
            _ => Error::host("read the recorded output", e),
        })
    }

    pub(crate) fn remove_output(&self, name: &str, file: &str) -> Result<(), Error> {
        let path = self.output_path(name, file)?;
        fs::remove_file(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(format!("output {file:?}")),
            _ => Error::host("remove the recorded output", e),
        })
    }

    /// Where an instance's outputs are kept: root's, in the instance's own
    /// root-owned directory, so nothing there is the guest's or a user's.
    fn outputs_dir(&self, name: &str) -> Result<PathBuf, Error> {
        let rec = current(&*self.entry(name)?)?;
        Ok(rec.dir(&self.host()?.state).join("exec-output"))
    }

    fn output_path(&self, name: &str, file: &str) -> Result<PathBuf, Error> {
        match output_name(file) {
            true => Ok(self.outputs_dir(name)?.join(file)),
            false => Err(Error::NotFound(format!("output {file:?}"))),
        }
    }

    /// A new console viewer: guest output from now on, and input.
    pub(crate) fn attach_console(&self, name: &str) -> Result<(Output, Input), Error> {
        let console = self.guest(name)?.console.ok_or_else(|| {
            Error::Conflict(format!(
                "instance {name:?} has no console socket (its QEMU predates it): restart it"
            ))
        })?;
        Ok(console.attach()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_names_record_output_gives_are_served() {
        let id = crate::uuid::new();
        assert!(output_name(&format!("exec_{id}.stdout")));
        assert!(output_name(&format!("exec_{id}.stderr")));
        for bad in [
            "exec_.stdout",
            "exec_../x.stdout",
            "exec_a/b.stderr",
            "instance.json",
            "exec_abc.stdin",
            "../exec_abc.stdout",
            "exec_abc.stdout/..",
        ] {
            assert!(!output_name(bad), "{bad}");
        }
    }
}
