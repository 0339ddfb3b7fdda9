//! Loading and unloading with the system's `apparmor_parser`, and finding out
//! whether the kernel has AppArmor at all.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{Error, Uuid};

/// The only PATH children see: the helper runs with an empty environment.
const SAFE_PATH: &str = "/usr/sbin:/sbin:/usr/bin:/bin";

/// Whether the running kernel enforces AppArmor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kernel {
    Enabled,
    /// Not available, and why (for the message).
    Absent(String),
}

/// Looks at the module parameter and securityfs, as `aa-enabled` does.
pub fn kernel_apparmor() -> Kernel {
    const ENABLED: &str = "/sys/module/apparmor/parameters/enabled";
    const FS: &str = "/sys/kernel/security/apparmor";
    match std::fs::read_to_string(ENABLED) {
        Err(_) => Kernel::Absent(format!("{ENABLED} is absent")),
        Ok(v) if v.trim() != "Y" => Kernel::Absent(format!("{ENABLED} is {:?}", v.trim())),
        Ok(_) if !Path::new(FS).is_dir() => {
            Kernel::Absent(format!("{FS} is missing (securityfs not mounted?)"))
        }
        Ok(_) => Kernel::Enabled,
    }
}

/// The kernel's list of loaded profiles, one `name (mode)` a line.
const KERNEL_PROFILES: &str = "/sys/kernel/security/apparmor/profiles";

/// Whether profile `name` is in the kernel's list `text`.
fn listed(text: &str, name: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(" ("))
    })
}

/// How to run `apparmor_parser`.
#[derive(Clone, Debug)]
pub struct Parser {
    /// The program; a bare name is looked up in /usr/sbin, /sbin, /usr/bin, /bin.
    pub program: String,
    /// Cache directory (`-L`); compiled policy is written there (`-W`).
    pub cache_dir: Option<PathBuf>,
    /// Extra include directories (`-I`), searched for `<abstractions/…>`.
    pub include_dirs: Vec<PathBuf>,
}

impl Parser {
    fn command(&self) -> Command {
        let program = if self.program.contains('/') {
            PathBuf::from(&self.program)
        } else {
            SAFE_PATH
                .split(':')
                .map(|d| Path::new(d).join(&self.program))
                .find(|p| p.is_file())
                .unwrap_or_else(|| PathBuf::from(&self.program))
        };
        let mut cmd = Command::new(program);
        cmd.env_clear().env("PATH", SAFE_PATH).env("LC_ALL", "C");
        cmd
    }

    /// Loads or replaces the profile in `file` (`apparmor_parser -r`).
    pub fn load(&self, file: &Path) -> Result<(), Error> {
        let mut cmd = self.command();
        cmd.arg("-r");
        if let Some(dir) = &self.cache_dir {
            cmd.arg("-W").arg("-L").arg(dir);
        }
        for dir in &self.include_dirs {
            cmd.arg("-I").arg(dir);
        }
        cmd.arg(file);
        self.run(cmd, "load", None)
    }

    /// Unloads the profile named after `uuid` (`apparmor_parser -R`).
    ///
    /// The parser only needs the name, so it gets a one-line stub on stdin:
    /// unloading works even when the file on disk is gone or broken.
    ///
    /// A profile the kernel does not have loaded is unloaded already: that
    /// is success, not the parser's error (a VM stopped earlier, then
    /// deleted, must not keep its files for want of an unload).
    pub fn unload(&self, uuid: &Uuid) -> Result<(), Error> {
        if let Ok(list) = std::fs::read_to_string(KERNEL_PROFILES) {
            if !listed(&list, &uuid.profile_name()) {
                return Ok(());
            }
        }
        let mut cmd = self.command();
        cmd.arg("-R");
        let stub = format!("profile {} {{\n}}\n", uuid.profile_name());
        self.run(cmd, "unload", Some(stub))
    }

    fn run(
        &self,
        mut cmd: Command,
        action: &'static str,
        stdin: Option<String>,
    ) -> Result<(), Error> {
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let spawn_err = |source| Error::Spawn {
            parser: self.program.clone(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A parser that exits early closes the pipe; its status says why.
            let _ = pipe.write_all(text.as_bytes());
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(Error::Parser {
            parser: self.program.clone(),
            action,
            status: out.status.to_string(),
            stderr: stderr.split_whitespace().collect::<Vec<_>>().join(" "),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_profile_is_listed_by_its_whole_name() {
        let list = "kvmbox-00000000-0000-0000-0000-0123456789ab (enforce)\nkvmboxd (complain)\n";
        assert!(super::listed(
            list,
            "kvmbox-00000000-0000-0000-0000-0123456789ab"
        ));
        assert!(super::listed(list, "kvmboxd"));
        assert!(!super::listed(list, "kvmbox"), "a prefix is not the name");
        assert!(!super::listed(
            list,
            "kvmbox-00000000-0000-0000-0000-0123456789ac"
        ));
        assert!(!super::listed("", "kvmboxd"));
    }
}
