//! AppArmor policy for VMs: checks a VM definition and writes the per-VM
//! profile `kvmbox-<uuid>` and its files list, then loads it with
//! `apparmor_parser` (libvirt's virt-aa-helper design).
//!
//! Policy language: <https://gitlab.com/apparmor/apparmor/-/wikis/AppArmor_Core_Policy_Reference>.
//!
//! The binary is static, so there is no libapparmor: the text is written here
//! and compiled by the system's `apparmor_parser`. That parser does not
//! normalise paths (`"/var/lib/../etc/passwd" r,` compiles and grants
//! /etc/passwd), so every path is resolved to the real file before any rule
//! is written, and paths holding anything beyond a small set of plain
//! characters are refused rather than escaped (see [`check`]).
//!
//! This crate deliberately depends on nothing but std, serde, thiserror and
//! ring's digest: it runs in the privileged helper, which must not reach
//! the TLS, HTTP or QMP code; being a crate of its own makes that a fact of
//! the build (a `use` of such code would not compile), checked by
//! `tests/sh/test_aa_helper.sh`.

mod check;
mod load;
mod render;

use std::fmt;
use std::path::PathBuf;

pub use check::{check, Disk, Host, Instance, Rule, RuleKind, Validated};
pub use load::{kernel_apparmor, Kernel, Parser};
pub use render::{
    files_list, granted_by_others, profile_from_template, profile_state, ProfileState, TEMPLATE,
};

/// The QEMU abstraction shipped in `profiles/`, for hosts where only the
/// binary is installed.
pub const ABSTRACTION: &str = include_str!("../../profiles/abstractions/kvmbox-qemu");

/// What can go wrong, split by who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The VM definition or command line is invalid; nothing was written.
    #[error("{0}")]
    Invalid(String),
    /// A path is refused by policy; nothing was written.
    #[error("{what} {path:?} is refused: {reason}")]
    Refused {
        what: String,
        path: String,
        reason: String,
    },
    /// A path could not be resolved on this host.
    #[error("cannot resolve {what} {path:?}")]
    Resolve {
        what: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The template lacks what the helper fills in.
    #[error("template {path} is unusable: {reason}")]
    Template { path: String, reason: String },
    /// Reading or writing a file failed on the host.
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Loading was required but the kernel has no AppArmor.
    #[error("AppArmor is required but the kernel has none: {0}")]
    NoAppArmor(String),
    /// apparmor_parser could not be started.
    #[error("cannot run {parser}")]
    Spawn {
        parser: String,
        #[source]
        source: std::io::Error,
    },
    /// apparmor_parser refused the profile or the kernel refused the load.
    #[error("{parser} {action} failed ({status}): {stderr}")]
    Parser {
        parser: String,
        action: &'static str,
        status: String,
        stderr: String,
    },
}

pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

/// A VM UUID in its one canonical form: 8-4-4-4-12 lowercase hex digits.
///
/// Only this form is accepted (not upper case, braces or a bare 32-digit
/// string) so that one VM can have only one profile name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uuid(String);

impl Uuid {
    /// Parses the canonical form, refusing anything else.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = || {
            invalid(format!(
                "invalid UUID {s:?}: expected 8-4-4-4-12 lowercase hex digits"
            ))
        };
        if s.len() != 36 {
            return Err(bad());
        }
        for (i, c) in s.chars().enumerate() {
            let ok = match i {
                8 | 13 | 18 | 23 => c == '-',
                _ => matches!(c, '0'..='9' | 'a'..='f'),
            };
            if !ok {
                return Err(bad());
            }
        }
        Ok(Self(s.to_string()))
    }

    /// The profile name, `kvmbox-<uuid>`.
    pub fn profile_name(&self) -> String {
        format!("kvmbox-{}", self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_accepts_only_the_canonical_form() {
        let good = "00000000-0000-0000-0000-0123456789ab";
        assert_eq!(
            Uuid::parse(good).map(|u| u.profile_name()).ok().as_deref(),
            Some("kvmbox-00000000-0000-0000-0000-0123456789ab")
        );
        for bad in [
            "",
            "00000000-0000-0000-0000-00000000000g", // bad digit
            "00000000-0000-0000-0000-0123456789abcdef", // too long
            "00000000-0000-0000-0000-0123456789a",  // too short
            "00000000-0000-0000-0000-0123456789AB", // upper case
            "000000000-000-0000-0000-0123456789ab", // hyphen misplaced
            "00000000_0000-0000-0000-0123456789ab",
            "{0000000-0000-0000-0000-0123456789ab",
            "00000000-0000-0000-0000-0123456789a\n",
            "00000000000000000000000123456789ab",
            "0000000é-0000-0000-0000-0123456789a",
        ] {
            assert!(Uuid::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shipped_profiles_have_what_the_helper_fills_in() {
        assert!(TEMPLATE.contains("KVMBOX_TEMPLATE"));
        assert!(TEMPLATE.lines().any(|l| l.trim() == "#KVMBOX_FILES"));
        assert!(ABSTRACTION.contains("/dev/kvm rw,"));
    }
}
