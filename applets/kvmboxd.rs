//! `kvmboxd`: the kvmbox daemon. Serves LXD's `/1.0` REST API
//! (<https://documentation.ubuntu.com/lxd/en/latest/rest-api/>) over TLS
//! inside a Unix socket, with Multipass's local authentication
//! (<https://documentation.ubuntu.com/multipass/en/latest/explanation/authentication/>),
//! as plain HTTP on a second Unix socket for LXD's own tools (root and the
//! admin group only, as LXD's),
//! and over TCP on `core.https_address` or `--https` with LXD's trust model
//! (<https://documentation.ubuntu.com/lxd/en/latest/authentication/>; PKI
//! mode when `server.ca` is in the state directory at start).
//! Runs in the foreground; SIGTERM or SIGINT stop it cleanly, SIGHUP
//! re-reads the trust store and the server configuration. Under systemd's
//! `Type=notify` it says when it is ready (`NOTIFY_SOCKET`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;
use kvmbox::{DaemonOptions, LogLevel, LogTarget};

use crate::cli;

const NAME: &str = "kvmboxd";

/// The kvmbox daemon: runs VMs and serves the API.
#[derive(FromArgs)]
#[argh(note = "Environment: KVMBOX_DIR is the default state directory.
KVMBOX_AA_PARSER names a program kvmbox-aa-helper runs instead of apparmor_parser
(for tests; profiles are then compiled even where the kernel has no AppArmor).
NOTIFY_SOCKET (set by systemd for Type=notify) is told READY=1 once the daemon answers.
Signals: SIGTERM or SIGINT stop it; SIGHUP reads STATE/trust.json and STATE/daemon.json again.
Exit codes: 0 ok, 1 failed, 2 bad command line. --version prints the version.")]
struct Args {
    /// state directory (default $KVMBOX_DIR, else /var/lib/kvmbox)
    #[argh(option)]
    state_dir: Option<PathBuf>,
    /// the Unix socket (default STATE/unix.socket)
    #[argh(option)]
    socket: Option<PathBuf>,
    /// the LXD-compatible socket for LXD's own tools: plain HTTP, root and
    /// the admin group only (default STATE/lxd/unix.socket)
    #[argh(option)]
    lxd_socket: Option<PathBuf>,
    /// serve no LXD-compatible socket
    #[argh(switch)]
    no_lxd_socket: bool,
    /// admin group owning the socket (default: the first of sudo, admin,
    /// wheel that exists; unprivileged: your primary group)
    #[argh(option)]
    group: Option<String>,
    /// listen with TLS on this IP:PORT too (overrides core.https_address)
    #[argh(option)]
    https: Option<std::net::SocketAddr>,
    /// apply this preseed document (JSON: config, certificates, images,
    /// instances; - for stdin) before serving; a failure stops the daemon
    #[argh(option)]
    preseed: Option<PathBuf>,
    /// where the log goes: stderr (default) or syslog (/dev/log, facility
    /// daemon)
    #[argh(option, default = "LogTarget::Stderr")]
    log: LogTarget,
    /// the least severe lines logged: error, warn, info (default) or debug
    #[argh(option, default = "LogLevel::Info")]
    log_level: LogLevel,
    /// the syslog socket (default /dev/log)
    #[argh(option, hidden_help)]
    syslog_socket: Option<PathBuf>,
    /// seconds a client has to send a request, and that an idle connection stays open
    #[argh(option, default = "30", hidden_help)]
    timeout: u64,
    /// seconds a new connection has to complete its TLS handshake
    #[argh(option, default = "10", hidden_help)]
    handshake_timeout: u64,
    /// connections served at once
    #[argh(option, default = "128", hidden_help)]
    max_connections: usize,
}

pub(crate) fn main(args: &[String]) -> ExitCode {
    let args = match cli::parse::<Args>(NAME, args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    if args.timeout == 0 || args.handshake_timeout == 0 {
        return cli::usage_error(NAME, "a timeout must be at least 1 second");
    }
    kvmbox::set_log_level(args.log_level);
    if args.syslog_socket.is_some() && args.log != LogTarget::Syslog {
        return cli::usage_error(NAME, "--syslog-socket needs --log syslog");
    }
    let syslog = args
        .syslog_socket
        .unwrap_or_else(|| PathBuf::from(kvmbox::SYSLOG_SOCKET));
    if let Err(e) = kvmbox::set_log_target(args.log, &syslog) {
        return cli::report(NAME, Err::<(), _>(e));
    }
    let state_dir = args
        .state_dir
        .or_else(|| {
            std::env::var_os("KVMBOX_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("/var/lib/kvmbox"));
    if args.no_lxd_socket && args.lxd_socket.is_some() {
        return cli::usage_error(NAME, "--lxd-socket and --no-lxd-socket exclude each other");
    }
    let mut opts = DaemonOptions::new(state_dir);
    opts.socket = args.socket;
    if args.no_lxd_socket {
        opts.lxd_socket = None;
    } else if let Some(path) = args.lxd_socket {
        opts.lxd_socket = Some(path);
    }
    opts.group = args.group;
    opts.https = args.https;
    opts.preseed = args.preseed;
    opts.timeout = Duration::from_secs(args.timeout);
    opts.handshake_timeout = Duration::from_secs(args.handshake_timeout);
    opts.max_connections = args.max_connections.max(1);
    // Tests on kernels without AppArmor: profiles are compiled for real by
    // this program (e.g. a wrapper around `apparmor_parser -Q -K -T`).
    opts.aa_parser = std::env::var("KVMBOX_AA_PARSER")
        .ok()
        .filter(|p| !p.is_empty());
    cli::report(NAME, kvmbox::run_daemon(opts))
}
