//! The daemon's side of AppArmor (SPEC A1–A9): it never writes policy
//! itself but runs `kvmbox-aa-helper` (this same executable under that
//! name) with the instance's definition on stdin, and reads its one-line
//! answer.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::apparmor::{self, Kernel};
use crate::log::log;

/// Where the helper lives and how it is told to work.
#[derive(Clone, Debug)]
pub(crate) struct Helper {
    /// The executable, run with argv[0] `kvmbox-aa-helper`.
    pub program: PathBuf,
    pub state_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// A parser instead of apparmor_parser (`KVMBOX_AA_PARSER`, for tests on
    /// kernels without AppArmor): the helper then loads regardless.
    pub parser: Option<String>,
}

/// Whether the kernel can confine QEMU, and why not.
pub(crate) fn kernel() -> Result<(), String> {
    match apparmor::kernel_apparmor() {
        Kernel::Enabled => Ok(()),
        Kernel::Absent(why) => Err(why),
    }
}

/// The helper of an installed system: `../libexec/kvmbox-aa-helper` beside
/// the daemon (a hard link, so that its own AppArmor profile attaches),
/// else this executable.
pub(crate) fn find_helper() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let installed = exe
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("libexec/kvmbox-aa-helper"));
    match installed {
        Some(p) if p.is_file() => p,
        _ => exe,
    }
}

impl Helper {
    /// Runs `kvmbox-aa-helper MODE [ARGS…]` for the profile of `uuid` in
    /// `profile_dir`, with `input` as its stdin; its stdout line, or its
    /// error line.
    pub(crate) fn run(
        &self,
        mode: &str,
        args: &[String],
        uuid: &str,
        profile_dir: &Path,
        required: bool,
        input: Option<&apparmor::Instance>,
    ) -> Result<String, String> {
        let mut cmd = Command::new(&self.program);
        cmd.arg0("kvmbox-aa-helper")
            .arg(mode)
            .args(args)
            .arg("--uuid")
            .arg(uuid)
            .arg("--profile-dir")
            .arg(profile_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--cache-dir")
            .arg(&self.cache_dir);
        let load = match (&self.parser, required) {
            (Some(p), _) => {
                cmd.arg("--parser").arg(p);
                "always"
            }
            (None, true) => "required",
            (None, false) => "auto",
        };
        cmd.arg("--apparmor").arg(load);
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.program.display()))?;
        if let (Some(def), Some(mut stdin)) = (input, child.stdin.take()) {
            let json = serde_json::to_vec(def).unwrap_or_default();
            // A helper that refused early closes stdin: its stderr says why.
            let _ = stdin.write_all(&json);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("kvmbox-aa-helper failed: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if out.status.success() {
            log!(Debug, "kvmbox-aa-helper {mode}: {stdout}");
            Ok(stdout)
        } else {
            let msg = stderr
                .lines()
                .last()
                .unwrap_or("no message")
                .trim_start_matches("kvmbox-aa-helper: ")
                .to_string();
            Err(msg)
        }
    }
}
