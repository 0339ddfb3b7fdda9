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
//! come on websocket 0 when it ends. The guest agent runs commands as root:
//! `user` and `group` other than 0 are refused; `cwd` is honoured through
//! `sh -c 'cd …'`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::http::{Extra, Request, Response};
use crate::server::operations::Fds;
use crate::server::reply::{body, error, fail, operation, sync, told};
use crate::server::state::Shared;
use crate::vmm::qga::{self, ExecRequest};
use crate::websocket::{Ends, Message};
use crate::wire::{path, ConsolePost, ExecPost};

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

/// Answers one request; `param` is the path's `{}`.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    req: &Request,
    call: Call,
    param: &str,
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
    if b.record_output {
        return error(400, "record-output is not supported: use the websockets");
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
        // Nobody attaches: no input, and the output goes nowhere (LXD's
        // behaviour without record-output).
        let op = shared
            .ops
            .spawn(&ex, description, resources(name), async move {
                let r = s.instances.exec(&n, run).await.map_err(|e| told(&e))?;
                Ok(json!({ "return": r.status }))
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
    if interactive {
        // No terminal: what is typed is read (so the websocket never
        // stalls) and dropped.
        let typed = &term.input;
        let exec = shared.instances.exec(&name, run);
        let drain = async {
            while typed.recv().await.is_ok() {}
            std::future::pending().await
        };
        let r = smol::future::or(exec, drain).await.map_err(|e| told(&e))?;
        let mut out = r.stdout;
        out.extend_from_slice(&r.stderr);
        send_all(&term, &crlf(&out)).await;
        return Ok(json!({ "return": r.status }));
    }
    let stdout = fds.connected("1").await.ok_or_else(|| not_connected("1"))?;
    let stderr = fds.connected("2").await.ok_or_else(|| not_connected("2"))?;
    run.stdin = read_input(&term).await?;
    let r = shared
        .instances
        .exec(&name, run)
        .await
        .map_err(|e| told(&e))?;
    let mut errors = r.stderr;
    if r.truncated {
        errors.extend_from_slice(b"kvmbox: the guest agent kept only the start of the output\n");
    }
    send_all(&stdout, &r.stdout).await;
    send_all(&stderr, &errors).await;
    Ok(json!({ "return": r.status }))
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
                    // Window sizes: a serial console has none.
                    Woke::Typed(Some(Message::Text(_))) | Woke::Control(Some(_)) => {}
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
    match shared.instances.read_file(name, &path, FILE_MAX).await {
        Ok(data) => {
            shared
                .events
                .lifecycle("instance-file-retrieved", name, json!({ "path": path }));
            // The agent tells no owner or mode: those headers are left out,
            // which LXD's clients take as unknown.
            let mut headers = octet_stream();
            headers.push(("X-LXD-type", "file".into()));
            Response::raw(data, headers)
        }
        Err(e) => fail(&e),
    }
}

async fn file_post(shared: &Arc<Shared>, req: &Request, name: &str) -> Response {
    let path = match guest_path(req) {
        Ok(p) => p,
        Err(r) => return r,
    };
    match req.lxd_header("type").unwrap_or("file") {
        "" | "file" => {}
        t => return error(400, &format!("only files can be pushed, not a {t}")),
    }
    match req.lxd_header("write").unwrap_or("overwrite") {
        "" | "overwrite" => {}
        w => {
            return error(
                400,
                &format!("write mode {w:?} is not supported: use overwrite"),
            )
        }
    }
    // Owner and mode: numbers, applied after the write (-1: leave it).
    let id = |h: &str| match req.lxd_header(h).filter(|v| !v.is_empty() && *v != "-1") {
        None => Ok(None),
        Some(v) => v.parse::<u32>().map(Some).map_err(|_| h.to_string()),
    };
    let mode = match req.lxd_header("mode").filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => u32::from_str_radix(v.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .map(Some)
            .ok_or_else(|| "mode".to_string()),
    };
    let (uid, gid, mode) = match (id("uid"), id("gid"), mode) {
        (Ok(u), Ok(g), Ok(m)) => (u, g, m),
        (Err(h), _, _) | (_, Err(h), _) | (_, _, Err(h)) => {
            return error(400, &format!("invalid X-LXD-{h} header"))
        }
    };
    if let Err(r) = running(shared, name) {
        return r;
    }
    let m = &shared.instances;
    if let Err(e) = m.write_file(name, &path, &req.body).await {
        return fail(&e);
    }
    // guest-file-* has no owner or mode: the tools in the guest set them.
    let mut script = String::new();
    if uid.is_some() || gid.is_some() {
        let (u, g) = (uid.unwrap_or(0), gid.unwrap_or(0));
        script.push_str(&format!("chown {u}:{g} \"$0\" && "));
    }
    if let Some(mode) = mode {
        script.push_str(&format!("chmod {mode:o} \"$0\" && "));
    }
    if !script.is_empty() {
        script.push_str("true");
        let run = ExecRequest::new(vec!["sh".into(), "-c".into(), script, path.clone()]);
        match m.exec(name, run).await {
            Ok(r) if r.status == 0 => {}
            Ok(r) => {
                let why = String::from_utf8_lossy(&r.stderr);
                return error(
                    400,
                    &format!(
                        "the file was written, but not its owner or mode: {}",
                        why.trim()
                    ),
                );
            }
            Err(e) => return fail(&e),
        }
    }
    shared
        .events
        .lifecycle("instance-file-pushed", name, json!({ "path": path }));
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
