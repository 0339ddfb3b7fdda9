//! `kvmbox exec|console|file`: getting into a running instance through
//! LXD's exec, console and files calls
//! (<https://documentation.ubuntu.com/lxd/en/latest/rest-api/>), whose
//! operations stream over websockets.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;
use kvmbox::{api_path as path, ConsolePost, Control, ExecPost, WebSocket, WsMessage};
use serde_json::Value;

use super::{split_remote, Ctx, Error};

/// Run a command in an instance through its guest agent:
/// `exec [REMOTE:]NAME -- CMD [ARG…]`.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "exec",
    note = "The guest agent has no terminal: standard input (unless it is a terminal, or -n)
is read to its end and handed to the command when it starts; its output and
errors come when it exits. The exit status is the command's."
)]
pub(crate) struct Exec {
    #[argh(option)]
    /// environment variable KEY=VALUE for the command; repeatable
    env: Vec<String>,
    #[argh(option)]
    /// directory in the guest to run the command in
    cwd: Option<String>,
    #[argh(switch, short = 'n')]
    /// give the command no standard input
    no_stdin: bool,
    #[argh(positional)]
    /// [REMOTE:]NAME, then the command and its arguments (after --)
    args: Vec<String>,
}

/// Attach to an instance's serial console (Ctrl-a q detaches).
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "console",
    note = "On a terminal the console is interactive (raw mode; Ctrl-a q detaches);
otherwise guest output is streamed to standard output and standard input is
typed into the guest."
)]
pub(crate) struct Console {
    #[argh(switch)]
    /// print the console log and exit
    show_log: bool,
    #[argh(positional)]
    name: String,
}

/// Move files in and out of an instance through its guest agent.
#[derive(FromArgs)]
#[argh(subcommand, name = "file")]
pub(crate) struct File {
    #[argh(subcommand)]
    cmd: FileCmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum FileCmd {
    Push(Push),
    Pull(Pull),
}

/// Copy a file into an instance: `file push SRC [REMOTE:]NAME/PATH`.
#[derive(FromArgs)]
#[argh(subcommand, name = "push")]
struct Push {
    #[argh(option)]
    /// mode of the guest file, in octal (default: the local file's)
    mode: Option<String>,
    #[argh(option)]
    /// owner uid of the guest file (default root)
    uid: Option<u32>,
    #[argh(option)]
    /// owner gid of the guest file (default root)
    gid: Option<u32>,
    #[argh(positional)]
    /// the local file (- for standard input)
    src: PathBuf,
    #[argh(positional)]
    /// [REMOTE:]NAME/PATH
    dest: String,
}

/// Copy a file out of an instance: `file pull [REMOTE:]NAME/PATH DEST`.
#[derive(FromArgs)]
#[argh(subcommand, name = "pull")]
struct Pull {
    #[argh(positional)]
    /// [REMOTE:]NAME/PATH
    src: String,
    #[argh(positional)]
    /// the local file or directory (- for standard output)
    dest: PathBuf,
}

/// Connects websocket `fd` of operation `op`.
fn websocket(ctx: &Ctx, remote: Option<&str>, op: &Value, fd: &str) -> Result<WebSocket, Error> {
    let id = op.get("id").and_then(Value::as_str).unwrap_or_default();
    let secret = op
        .pointer(&format!("/metadata/fds/{fd}"))
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Msg(format!("the daemon gave no websocket {fd}")))?;
    let path = path::operation_websocket(id, secret);
    Ok(ctx.connect_to(remote)?.websocket(&path)?)
}

/// Copies a websocket's stream to `out` until its end.
fn copy_out(mut ws: WebSocket, mut out: impl Write) -> std::io::Result<()> {
    while let Some(m) = ws.recv()? {
        match m {
            WsMessage::Binary(b) => {
                out.write_all(&b)?;
                out.flush()?;
            }
            WsMessage::Text(t) if t.is_empty() => break,
            WsMessage::Text(_) => {}
        }
    }
    Ok(())
}

pub(crate) fn exec(ctx: &Ctx, a: &Exec) -> Result<(), Error> {
    const USAGE: &str = "kvmbox exec [REMOTE:]NAME -- CMD [ARG…]";
    let (target, command) = match a.args.split_first() {
        Some((t, c)) if !c.is_empty() => (t, c),
        _ => return Err(Error::Usage(USAGE.into())),
    };
    let (remote, name) = split_remote(target);
    let remote = remote.as_deref();
    let mut environment = std::collections::BTreeMap::new();
    for kv in &a.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--env {kv:?} is not KEY=VALUE")))?;
        environment.insert(k.to_string(), v.to_string());
    }
    let body = ExecPost {
        command: command.to_vec(),
        environment,
        wait_for_websocket: true,
        cwd: a.cwd.clone().unwrap_or_default(),
        ..ExecPost::default()
    };
    let op = ctx
        .connect_to(remote)?
        .send("POST", &path::instance_exec(&name), &body)?;
    let mut stdin_ws = websocket(ctx, remote, &op, "0")?;
    let stdout_ws = websocket(ctx, remote, &op, "1")?;
    let stderr_ws = websocket(ctx, remote, &op, "2")?;
    let control = websocket(ctx, remote, &op, "control")?;
    forward_signals(control)?;
    let out = std::thread::spawn(move || copy_out(stdout_ws, std::io::stdout()));
    let err = std::thread::spawn(move || copy_out(stderr_ws, std::io::stderr()));
    let stdin = std::io::stdin();
    if !a.no_stdin && !stdin.is_terminal() {
        let mut lock = stdin.lock();
        let mut buf = vec![0u8; 32 << 10];
        loop {
            let n = lock.read(&mut buf)?;
            // A send that fails: the daemon refused the input (too
            // large), and the operation says why.
            if n == 0
                || stdin_ws
                    .send_binary(buf.get(..n).unwrap_or_default())
                    .is_err()
            {
                break;
            }
        }
    }
    let _ = stdin_ws.close();
    // The streams end when the command has; a broken one shows in the
    // operation's result.
    let _ = out.join();
    let _ = err.join();
    // The first connection has idled out by now: a fresh one waits.
    let meta = ctx.connect_to(remote)?.wait(op)?;
    match meta.get("return").and_then(Value::as_i64) {
        Some(0) => Ok(()),
        Some(code) => Err(Error::Exit(u8::try_from(code).unwrap_or(1))),
        None => Err(Error::Msg("the daemon gave no exit status".into())),
    }
}

/// Signals that stop a command when it runs here are sent to it in the
/// guest instead. The third of one kind ends this client too, for a guest
/// that does not answer.
fn forward_signals(mut control: WebSocket) -> Result<(), Error> {
    use async_signal::{Signal, Signals};
    let kinds = [Signal::Int, Signal::Term, Signal::Hup, Signal::Quit];
    let mut signals = Signals::new(kinds)?;
    std::thread::spawn(move || {
        let mut seen = std::collections::BTreeMap::new();
        while let Some(Ok(sig)) = smol::block_on(smol::stream::StreamExt::next(&mut signals)) {
            let n = sig as i32;
            let times = seen.entry(n).or_insert(0u8);
            *times += 1;
            if *times >= 3 {
                std::process::exit(128 + n);
            }
            let msg = serde_json::to_string(&Control::signal(n)).unwrap_or_default();
            if control.send_text(&msg).is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// Ctrl-a, then q: detach.
const CTRL_A: u8 = 0x01;

pub(crate) fn console(ctx: &Ctx, a: &Console) -> Result<(), Error> {
    let (remote, name) = split_remote(&a.name);
    let remote = remote.as_deref();
    let mut c = ctx.connect_to(remote)?;
    let mut stdout = std::io::stdout();
    if a.show_log {
        let log = c.fetch("GET", &path::instance_console(&name), None, &[])?;
        stdout.write_all(&log)?;
        return Ok(());
    }
    let raw_terminal = std::io::stdin().is_terminal();
    let mut size = kvmbox::window_size().filter(|_| raw_terminal);
    let (width, height) = size.map_or((0, 0), |(w, h)| (w.into(), h.into()));
    let body = ConsolePost {
        kind: "console".into(),
        width,
        height,
    };
    let op = c.send("POST", &path::instance_console(&name), &body)?;
    let mut control = websocket(ctx, remote, &op, "control")?;
    let mut term = websocket(ctx, remote, &op, "0")?;
    let raw = match raw_terminal {
        true => {
            eprint!("To detach from the console, press: <ctrl>+a q\r\n");
            Some(kvmbox::RawTerminal::enter()?)
        }
        false => None,
    };
    // Standard input is read on its own thread; the websocket is served
    // on this one, between short waits for guest output.
    let (tx, typed) = std::sync::mpsc::sync_channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        let mut stdin = std::io::stdin().lock();
        while let Ok(n @ 1..) = stdin.read(&mut buf) {
            if tx.send(buf.get(..n).unwrap_or_default().to_vec()).is_err() {
                break;
            }
        }
    });
    term.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut after_ctrl_a = false;
    let result = 'session: loop {
        match term.recv() {
            Ok(Some(WsMessage::Binary(b))) => {
                stdout.write_all(&b)?;
                stdout.flush()?;
            }
            Ok(Some(WsMessage::Text(_))) => {}
            // The daemon ended it: the VM stopped.
            Ok(None) => break 'session Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => break 'session Err(e.into()),
        }
        // The window's size, looked at as often as output is: a resize
        // reaches the guest's terminal within a wait.
        let now = kvmbox::window_size().filter(|_| raw_terminal);
        if let Some((w, h)) = now.filter(|s| Some(*s) != size) {
            let msg = serde_json::to_string(&Control::resize(w, h)).unwrap_or_default();
            if let Err(e) = control.send_text(&msg) {
                break 'session Err(e.into());
            }
            size = now;
        }
        while let Ok(bytes) = typed.try_recv() {
            let mut send = Vec::with_capacity(bytes.len() + 1);
            for b in bytes {
                match (after_ctrl_a, b) {
                    (true, b'q') => {
                        let _ = term.send_binary(&send);
                        let _ = control.close();
                        break 'session Ok(());
                    }
                    (true, b) => {
                        send.extend_from_slice(&[CTRL_A, b]);
                        after_ctrl_a = false;
                    }
                    (false, CTRL_A) => after_ctrl_a = true,
                    (false, b) => send.push(b),
                }
            }
            if !send.is_empty() {
                if let Err(e) = term.send_binary(&send) {
                    break 'session Err(e.into());
                }
            }
        }
    };
    drop(raw);
    result
}

/// `[REMOTE:]NAME/PATH` as the remote, the name and the absolute path.
fn guest_file(arg: &str) -> Result<(Option<String>, String, String), Error> {
    let (remote, rest) = split_remote(arg);
    match rest.split_once('/') {
        Some((name, p)) if !name.is_empty() && !p.is_empty() => {
            Ok((remote, name.to_string(), format!("/{p}")))
        }
        _ => Err(Error::Usage(format!("{arg:?} is not [REMOTE:]NAME/PATH"))),
    }
}

pub(crate) fn file(ctx: &Ctx, a: &File) -> Result<(), Error> {
    match &a.cmd {
        FileCmd::Push(p) => {
            let (remote, name, guest) = guest_file(&p.dest)?;
            let (data, local_mode) = if kvmbox::is_stdio(&p.src) {
                let mut data = Vec::new();
                std::io::stdin().read_to_end(&mut data)?;
                (data, 0o644)
            } else {
                use std::os::unix::fs::PermissionsExt;
                let read = |e: std::io::Error| Error::Msg(format!("{}: {e}", p.src.display()));
                let meta = std::fs::metadata(&p.src).map_err(read)?;
                (
                    std::fs::read(&p.src).map_err(read)?,
                    meta.permissions().mode() & 0o7777,
                )
            };
            let mode = match &p.mode {
                Some(m) => u32::from_str_radix(m, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| Error::Usage(format!("--mode {m:?} is not an octal mode")))?,
                None => local_mode,
            };
            let (uid, gid, mode) = (
                p.uid.unwrap_or(0).to_string(),
                p.gid.unwrap_or(0).to_string(),
                format!("{mode:04o}"),
            );
            let headers = [
                ("X-LXD-type", "file"),
                ("X-LXD-write", "overwrite"),
                ("X-LXD-uid", uid.as_str()),
                ("X-LXD-gid", gid.as_str()),
                ("X-LXD-mode", mode.as_str()),
            ];
            ctx.connect_to(remote.as_deref())?.fetch(
                "POST",
                &path::instance_file(&name, &guest),
                Some(&data),
                &headers,
            )?;
            Ok(())
        }
        FileCmd::Pull(p) => {
            let (remote, name, guest) = guest_file(&p.src)?;
            let data = ctx.connect_to(remote.as_deref())?.fetch(
                "GET",
                &path::instance_file(&name, &guest),
                None,
                &[],
            )?;
            if kvmbox::is_stdio(&p.dest) {
                std::io::stdout().write_all(&data)?;
                return Ok(());
            }
            let dest = match p.dest.is_dir() {
                true => p.dest.join(guest.rsplit('/').next().unwrap_or_default()),
                false => p.dest.clone(),
            };
            std::fs::write(&dest, data).map_err(|e| Error::Msg(format!("{}: {e}", dest.display())))
        }
    }
}
