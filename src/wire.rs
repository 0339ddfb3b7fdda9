//! What travels between client and daemon, shared by both sides (and by
//! preseed, which is a client too): the rules of the API's paths, and the
//! bodies both sides read and write.

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("project {0:?} not found: kvmbox has only the default project")]
    UnknownProject(String),
}

/// Path parameters are names, fingerprints and uuids: nothing else gets in.
pub(crate) fn is_param(seg: &str) -> bool {
    !seg.is_empty()
        && seg.len() <= 128
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && seg != "."
        && seg != ".."
}

/// What a trusted certificate may do. Ordered: each role includes
/// everything below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only access.
    Auditor,
    /// Instance lifecycle: start, stop, console, snapshots.
    User,
    /// Also create, reconfigure and delete instances and images.
    Operator,
    /// Also server configuration and the trust store.
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auditor" => Ok(Role::Auditor),
            "user" => Ok(Role::User),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!(
                "unknown role {s:?}: use auditor, user, operator or admin"
            )),
        }
    }
}

/// The one project kvmbox has: LXD's `default`, where every instance,
/// image and operation lives. A certificate's project list may name only it.
pub(crate) const DEFAULT_PROJECT: &str = "default";

/// Refuses a project list that names anything but [`DEFAULT_PROJECT`].
pub(crate) fn check_projects(projects: &[String]) -> Result<(), Error> {
    match projects.iter().find(|p| *p != DEFAULT_PROJECT) {
        Some(p) => Err(Error::UnknownProject(p.clone())),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed test should panic")]
mod tests {
    use super::*;

    #[test]
    fn only_the_default_project_exists() {
        assert!(check_projects(&[]).is_ok());
        assert!(check_projects(&["default".into()]).is_ok());
        let e = check_projects(&["default".into(), "p1".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "project \"p1\" not found: kvmbox has only the default project"
        );
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::User);
        assert!(Role::User > Role::Auditor);
        assert_eq!("operator".parse::<Role>(), Ok(Role::Operator));
        assert!("root".parse::<Role>().is_err());
    }
}
