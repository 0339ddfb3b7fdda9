//! Getting into a running instance, in LXD's shapes
//! (<https://documentation.ubuntu.com/lxd/en/latest/rest-api/>):
//! `POST …/exec` and `POST …/console` start websocket operations,
//! `GET|DELETE …/console` read and clear the console log, `GET|POST
//! …/files` move guest files, and `GET /1.0/operations/ID/websocket` is
//! where the clients of those operations connect.
//!
//! Commands and files go through the QEMU guest agent, which has no
//! terminal and no streams: a command gets its whole standard input when it
//! starts and gives its output when it ends. So exec reads the client's
//! standard input (websocket 0) to its end, at most [`qga::MAX_STDIN`]
//! bytes, before the command starts, then sends standard output and error
//! (websockets 1 and 2) once it exited. An interactive exec (websockets 0
//! and control) gets no terminal: the command starts at once with empty
//! standard input, what is typed is read and dropped, and its output and
//! errors, merged, with line ends made `\r\n` for the client's raw terminal,
//! come on websocket 0 when it ends. Signals asked for on the `control`
//! websocket are sent with the guest's own `kill`, and a console's window
//! size is set with its `stty`: the agent has calls for neither.
//! Directories, symlinks and removal use the guest's tools the same way.
//! The guest agent runs commands as root:
//! `user` and `group` other than 0 are refused; `cwd` is honoured through
//! `sh -c 'cd …'`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::http::{Extra, Request, Response};
use crate::log::log;
use crate::server::operations::Fds;
use crate::server::reply::{body, error, fail, operation, sync, told};
use crate::server::state::Shared;
use crate::vmm::instances::{Content, Owner, Put, Started};
use crate::vmm::qga::{self, ExecRequest};
use crate::websocket::{Ends, Message};
use crate::wire::{path, ConsolePost, Control, ExecPost};

/// Which endpoint a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    /// `POST /1.0/instances/<name>/exec`
    Exec,
    /// `POST /1.0/instances/<name>/console`
    Console,
    /// `GET /1.0/instances/<name>/console`: the log, as raw bytes.
    ConsoleLog,
    /// `DELETE /1.0/instances/<name>/console`
    ConsoleClear,
    /// `GET /1.0/instances/<name>/files?path=…`
    FileGet,
    /// `POST /1.0/instances/<name>/files?path=…`
    FilePost,
    /// `DELETE /1.0/instances/<name>/files?path=…`
    FileDelete,
    /// `GET /1.0/instances/<name>/logs/exec-output`: the recorded outputs.
    Outputs,
    /// `GET /1.0/instances/<name>/logs/exec-output/<file>`
    Output,
    /// `DELETE /1.0/instances/<name>/logs/exec-output/<file>`
    OutputDelete,
    /// `GET /1.0/operations/<id>/websocket?secret=…`
    Websocket,
}

/// The largest guest file read; a pushed file is bounded by the request
/// body limit (4 MiB by default) the same way.
const FILE_MAX: usize = 4 << 20;
/// How long a command through the API may run.
const EXEC_TIMEOUT: Duration = Duration::from_secs(3600);
/// Output goes to a websocket in messages of this size.
const OUT_CHUNK: usize = 32 << 10;
/// The environment a command gets unless the request sets these (LXD's).
const DEFAULT_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("USER", "root"),
    ("LANG", "C.UTF-8"),
];

/// Answers one request; `param` and `sub` are the path's `{}`s.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    req: &Request,
    call: Call,
    param: &str,
    sub: &str,
) -> Response {
    let m = &shared.instances;
    match call {
        Call::Exec => exec(shared, req, param),
        Call::Console => console(shared, req, param),
        Call::ConsoleLog => match m.console(param) {
            Ok(text) => Response::raw(text.into_bytes(), octet_stream()),
            Err(e) => fail(&e),
        },
        Call::ConsoleClear => match m.clear_console(param) {
            Ok(()) => sync(json!({})),
            Err(e) => fail(&e),
        },
        Call::FileGet => file_get(shared, req, param).await,
        Call::FilePost => file_post(shared, req, param).await,
        Call::FileDelete => file_delete(shared, req, param).await,
        Call::Outputs => match m.outputs(param) {
            Ok(files) => sync(json!(files
                .iter()
                .map(|f| path::exec_output(param, f))
                .collect::<Vec<_>>())),
            Err(e) => fail(&e),
        },
        Call::Output => match m.output(param, sub) {
            Ok(data) => Response::raw(data, octet_stream()),
            Err(e) => fail(&e),
        },
        Call::OutputDelete => match m.remove_output(param, sub) {
            Ok(()) => sync(json!({})),
            Err(e) => fail(&e),
        },
        Call::Websocket => websocket(shared, req, param),
    }
}

fn octet_stream() -> Vec<(&'static str, String)> {
    vec![("Content-Type", "application/octet-stream".into())]
}

/// Refuses what cannot be done to an instance that is not running.
fn running(shared: &Shared, name: &str) -> Result<(), Response> {
    match shared.instances.get(name, false) {
        Err(e) => Err(fail(&e)),
        Ok(v) if v.get("status").and_then(Value::as_str) == Some("Running") => Ok(()),
        Ok(_) => Err(error(400, &format!("instance {name:?} is not running"))),
    }
}

fn resources(name: &str) -> BTreeMap<String, Vec<String>> {
    BTreeMap::from([("instances".to_string(), vec![path::instance(name)])])
}

fn exec(shared: &Arc<Shared>, req: &Request, name: &str) -> Response {
    let b: ExecPost = match body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if b.command.is_empty() {
        return error(400, "no command given");
    }
    if b.user != 0 || b.group != 0 {
        return error(
            400,
            "the guest agent runs commands as root: user and group cannot be chosen",
        );
    }
    if let Err(r) = running(shared, name) {
        return r;
    }
    let ex = match shared.instances.executor() {
        Ok(ex) => ex,
        Err(e) => return fail(&e),
    };
    let mut env: BTreeMap<String, String> = DEFAULT_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.extend(b.environment);
    let command = match b.cwd.as_str() {
        "" => b.command.clone(),
        cwd => ["sh", "-c", "cd \"$0\" && exec \"$@\"", cwd]
            .iter()
            .map(|s| s.to_string())
            .chain(b.command.iter().cloned())
            .collect(),
    };
    let mut run = ExecRequest::new(command);
    run.env = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    run.timeout = EXEC_TIMEOUT;
    shared
        .events
        .lifecycle("instance-exec", name, json!({ "command": b.command }));
    let (s, n) = (shared.clone(), name.to_string());
    let description = "Executing command";
    if !b.wait_for_websocket {
        // Nobody attaches: no input, and the output is kept for
        // `…/logs/exec-output` (record-output) or goes nowhere, as in LXD.
        let record = b.record_output;
        let op = shared
            .ops
            .spawn(&ex, description, resources(name), async move {
                let r = s.instances.exec(&n, run).await.map_err(|e| told(&e))?;
                if !record {
                    return Ok(json!({ "return": r.status }));
                }
                let [out, err] = s.instances.record_output(&n, &r).map_err(|e| told(&e))?;
                let output =
                    json!({ "1": path::exec_output(&n, &out), "2": path::exec_output(&n, &err) });
                Ok(json!({ "return": r.status, "output": output }))
            });
        return operation(&op);
    }
    let interactive = b.interactive;
    let fds: &[&str] = match interactive {
        true => &["0", "control"],
        false => &["0", "1", "2", "control"],
    };
    let op = shared
        .ops
        .spawn_websocket(&ex, description, resources(name), fds, move |fds| {
            run_exec(s, n, run, interactive, fds)
        });
    operation(&op)
}

fn not_connected(fd: &str) -> String {
    format!("the client did not connect websocket {fd}")
}

async fn run_exec(
    shared: Arc<Shared>,
    name: String,
    mut run: ExecRequest,
    interactive: bool,
    fds: Fds,
) -> Result<Value, String> {
    let term = fds.connected("0").await.ok_or_else(|| not_connected("0"))?;
    let mut outputs = None;
    if !interactive {
        let stdout = fds.connected("1").await.ok_or_else(|| not_connected("1"))?;
        let stderr = fds.connected("2").await.ok_or_else(|| not_connected("2"))?;
        run.stdin = read_input(&term).await?;
        outputs = Some((stdout, stderr));
    }
    let started = shared
        .instances
        .exec_start(&name, run)
        .await
        .map_err(|e| told(&e))?;
    let signals = forward_signals(&fds, &started);
    let exited = async { started.wait().await.map_err(|e| told(&e)) };
    let Some((stdout, stderr)) = outputs else {
        // No terminal: what is typed is read (so the websocket never
        // stalls) and dropped.
        let drain = async {
            while term.input.recv().await.is_ok() {}
            std::future::pending().await
        };
        let r = smol::future::or(exited, smol::future::or(drain, signals)).await?;
        let mut out = r.stdout;
        out.extend_from_slice(&r.stderr);
        send_all(&term, &crlf(&out)).await;
        return Ok(json!({ "return": r.status }));
    };
    let r = smol::future::or(exited, signals).await?;
    let mut errors = r.stderr;
    if r.truncated {
        errors.extend_from_slice(b"kvmbox: the guest agent kept only the start of the output\n");
    }
    send_all(&stdout, &r.stdout).await;
    send_all(&stderr, &errors).await;
    Ok(json!({ "return": r.status }))
}

/// A message of a `control` websocket, if it is one.
fn control_of(m: &Message) -> Option<Control> {
    match m {
        Message::Text(t) => serde_json::from_slice(t).ok(),
        Message::Binary(b) => serde_json::from_slice(b).ok(),
    }
}

/// Sends the command the signals its client asks for on the `control`
/// websocket (a window size means nothing without a terminal). Never ends:
/// the command's exit does.
async fn forward_signals<T>(fds: &Fds, started: &Started) -> T {
    if let Some(control) = fds.connected("control").await {
        while let Ok(m) = control.input.recv().await {
            let Some(c) = control_of(&m).filter(|c| c.command == "signal") else {
                continue;
            };
            if let Err(e) = started.signal(c.signal).await {
                log!(
                    Info,
                    "signal {} not sent: {}",
                    c.signal,
                    crate::error_chain(&e)
                );
            }
        }
    }
    std::future::pending().await
}

/// A client's standard input, to its end (the websocket closed, or an
/// empty text message, LXD's end of a stream).
async fn read_input(term: &Ends) -> Result<Vec<u8>, String> {
    let mut input = Vec::new();
    while let Ok(Message::Binary(b)) = term.input.recv().await {
        if input.len() + b.len() > qga::MAX_STDIN {
            return Err(format!(
                "standard input is larger than {} bytes: the guest agent takes it in one piece",
                qga::MAX_STDIN
            ));
        }
        input.extend_from_slice(&b);
    }
    Ok(input)
}

/// Sends `data` on a websocket, then LXD's end of stream (an empty text
/// message). A client that went away is not waited for.
async fn send_all(ws: &Ends, data: &[u8]) {
    for chunk in data.chunks(OUT_CHUNK) {
        if ws.out.send(Message::Binary(chunk.to_vec())).await.is_err() {
            return;
        }
    }
    let _ = ws.out.send(Message::Text(Arc::from(&b""[..]))).await;
}

/// `\n` as a terminal's output processing makes it, for a raw terminal.
fn crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 16);
    let mut last = 0u8;
    for &b in data {
        if b == b'\n' && last != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        last = b;
    }
    out
}

fn console(shared: &Arc<Shared>, req: &Request, name: &str) -> Response {
    let b: ConsolePost = match body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if !b.kind.is_empty() && b.kind != "console" {
        return error(400, "only the serial console (type console) is available");
    }
    if let Err(r) = running(shared, name) {
        return r;
    }
    let ex = match shared.instances.executor() {
        Ok(ex) => ex,
        Err(e) => return fail(&e),
    };
    // Attached now: a full console or a stopped VM is refused here.
    let (output, input) = match shared.instances.attach_console(name) {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    shared
        .events
        .lifecycle("instance-console", name, json!({"type": "console"}));
    let (s, n, tasks) = (shared.clone(), name.to_string(), ex.clone());
    // Sizes are set in the background: the console goes on meanwhile.
    let resize = move |(cols, rows): (u16, u16)| {
        let (s, n) = (s.clone(), n.clone());
        let set = async move {
            if let Err(e) = s.instances.resize_console(&n, cols, rows).await {
                log!(
                    Info,
                    "instance {n}: console size not set: {}",
                    crate::error_chain(&e)
                );
            }
        };
        tasks.spawn(set).detach();
    };
    let size = |w: u32, h: u32| Some((u16::try_from(w).ok()?, u16::try_from(h).ok()?));
    if let Some(first) = size(b.width, b.height).filter(|(w, h)| *w > 0 && *h > 0) {
        resize(first);
    }
    let op = shared.ops.spawn_websocket(
        &ex,
        "Showing console",
        resources(name),
        &["0", "control"],
        move |fds| async move {
            let (term, control) =
                smol::future::zip(fds.connected("0"), fds.connected("control")).await;
            let term = term.ok_or_else(|| not_connected("0"))?;
            let control = control.ok_or_else(|| not_connected("control"))?;
            enum Woke {
                Guest(Option<Vec<u8>>),
                Typed(Option<Message>),
                Control(Option<Message>),
            }
            loop {
                let guest = async { Woke::Guest(output.read().await) };
                let typed = async { Woke::Typed(term.input.recv().await.ok()) };
                let ctl = async { Woke::Control(control.input.recv().await.ok()) };
                match smol::future::or(guest, smol::future::or(typed, ctl)).await {
                    Woke::Guest(Some(b)) => {
                        if term.out.send(Message::Binary(b)).await.is_err() {
                            break;
                        }
                    }
                    Woke::Typed(Some(Message::Binary(b))) => {
                        if input.write(&b).await.is_err() {
                            break;
                        }
                    }
                    Woke::Control(Some(m)) => {
                        if let Some(size) = control_of(&m).and_then(|c| c.size()) {
                            resize(size);
                        }
                    }
                    Woke::Typed(Some(Message::Text(_))) => {}
                    // The VM stopped, this viewer fell too far behind, or
                    // the client detached (closed the control socket or
                    // the terminal).
                    Woke::Guest(None) | Woke::Typed(None) | Woke::Control(None) => break,
                }
            }
            Ok(json!({}))
        },
    );
    operation(&op)
}

/// The `path` query parameter, from the guest's root: `lxc file pull`
/// sends it without its leading `/`, which LXD takes as from the root too.
fn guest_path(req: &Request) -> Result<String, Response> {
    let raw = req
        .query_param("path")
        .unwrap_or_default()
        .replace('+', " ");
    let path = crate::server::filter::unescape(&raw);
    if path.is_empty() || path.contains('\0') {
        return Err(error(400, "a path in the guest is needed"));
    }
    Ok(match path.starts_with('/') {
        true => path,
        false => format!("/{path}"),
    })
}

async fn file_get(shared: &Arc<Shared>, req: &Request, name: &str) -> Response {
    let path = match guest_path(req) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if let Err(r) = running(shared, name) {
        return r;
    }
    let found = match shared.instances.read_path(name, &path, FILE_MAX).await {
        Ok(f) => f,
        Err(e) => return fail(&e),
    };
    shared
        .events
        .lifecycle("instance-file-retrieved", name, json!({ "path": path }));
    let mut headers = vec![
        ("X-LXD-uid", found.uid.to_string()),
        ("X-LXD-gid", found.gid.to_string()),
        ("X-LXD-mode", format!("{:04o}", found.mode)),
    ];
    let (kind, mut response) = match found.content {
        // As LXD: the entries as a JSON list, the others as raw bytes.
        Content::Directory(entries) => ("directory", sync(json!(entries))),
        Content::File(data) => ("file", Response::raw(data, octet_stream())),
        Content::Symlink(target) => ("symlink", Response::raw(target.into(), octet_stream())),
    };
    headers.push(("X-LXD-type", kind.into()));
    let extra = response.extra.get_or_insert_with(Box::default);
    extra.headers.extend(headers);
    response
}

/// The owner and mode a push asks for, from its `X-LXD-uid`, `-gid` and
/// `-mode` headers (absent or -1: leave it).
fn owner_of(req: &Request) -> Result<Owner, Response> {
    let id = |h: &'static str| match req.lxd_header(h).filter(|v| !v.is_empty() && *v != "-1") {
        None => Ok(None),
        Some(v) => v.parse::<u32>().map(Some).map_err(|_| h),
    };
    let mode = match req
        .lxd_header("mode")
        .filter(|v| !v.is_empty() && *v != "-1")
    {
        None => Ok(None),
        Some(v) => u32::from_str_radix(v.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .map(Some)
            .ok_or("mode"),
    };
    match (id("uid"), id("gid"), mode) {
        (Ok(uid), Ok(gid), Ok(mode)) => Ok(Owner { uid, gid, mode }),
        (Err(h), _, _) | (_, Err(h), _) | (_, _, Err(h)) => {
            Err(error(400, &format!("invalid X-LXD-{h} header")))
        }
    }
}

async fn file_post(shared: &Arc<Shared>, req: &Request, name: &str) -> Response {
    let path = match guest_path(req) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let append = match req.lxd_header("write").unwrap_or_default() {
        "" | "overwrite" => false,
        "append" => true,
        w => return error(400, &format!("write mode {w:?}: use overwrite or append")),
    };
    let put = match req.lxd_header("type").unwrap_or_default() {
        "" | "file" => Put::File {
            data: &req.body,
            append,
        },
        "directory" => Put::Directory,
        "symlink" => match std::str::from_utf8(&req.body) {
            Ok(t) if !t.is_empty() && !t.contains('\0') => Put::Symlink(t),
            _ => {
                return error(
                    400,
                    "a symlink's target (the body) must be text, without NUL",
                )
            }
        },
        t => return error(400, &format!("type {t:?}: use file, directory or symlink")),
    };
    let owner = match owner_of(req) {
        Ok(o) => o,
        Err(r) => return r,
    };
    if let Err(r) = running(shared, name) {
        return r;
    }
    if let Err(e) = shared.instances.write_path(name, &path, put, owner).await {
        return fail(&e);
    }
    shared
        .events
        .lifecycle("instance-file-pushed", name, json!({ "path": path }));
    sync(json!({}))
}

async fn file_delete(shared: &Arc<Shared>, req: &Request, name: &str) -> Response {
    let path = match guest_path(req) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if let Err(r) = running(shared, name) {
        return r;
    }
    if let Err(e) = shared.instances.remove_path(name, &path).await {
        return fail(&e);
    }
    shared
        .events
        .lifecycle("instance-file-deleted", name, json!({ "path": path }));
    sync(json!({}))
}

/// Connects a client to a websocket of a running operation, by its secret.
fn websocket(shared: &Arc<Shared>, req: &Request, id: &str) -> Response {
    let Some(key) = &req.websocket_key else {
        return error(400, "this is served as a websocket only");
    };
    let secret = req.query_param("secret").unwrap_or_default();
    match shared.ops.connect(id, secret) {
        Some(link) => {
            let mut resp = Response::websocket_accept(key);
            resp.extra = Some(Box::new(Extra {
                headers: Vec::new(),
                websocket: Some(link),
            }));
            resp
        }
        None => error(
            403,
            "no such websocket: a wrong secret, one used already, or the operation ended",
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed test should panic")]
mod tests {
    use super::*;

    #[test]
    fn output_for_a_raw_terminal_ends_lines_with_crlf() {
        assert_eq!(crlf(b"a\nb\r\nc\n"), b"a\r\nb\r\nc\r\n");
        assert_eq!(crlf(b""), b"");
    }
}
