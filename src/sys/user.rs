//! Users and groups without a user database: /etc/passwd and /etc/group
//! read directly (what musl's static getgrnam does too) and a process's
//! groups from /proc.

use std::io;
use std::ops::RangeInclusive;
use std::path::Path;

/// A uid or gid some account already has.
#[derive(Debug, thiserror::Error)]
pub enum IdInUse {
    #[error("uid {id} belongs to user {name:?} in /etc/passwd")]
    User { name: String, id: u32 },
    #[error("gid {id} belongs to group {name:?} in /etc/group")]
    Group { name: String, id: u32 },
    #[error("cannot read {path}")]
    Read {
        path: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Refuses `ids` when a user in /etc/passwd or a group in /etc/group has a
/// uid or gid in it. A missing file holds no account.
pub(crate) fn ids_unused(ids: RangeInclusive<u32>) -> Result<(), IdInUse> {
    let read = |path: &'static str| match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(IdInUse::Read { path, source }),
    };
    if let Some((name, id)) = entry_in(&read("/etc/passwd")?, &ids) {
        return Err(IdInUse::User { name, id });
    }
    if let Some((name, id)) = entry_in(&read("/etc/group")?, &ids) {
        return Err(IdInUse::Group { name, id });
    }
    Ok(())
}

/// The (name, id) of every `name:x:id:…` line of a passwd or group file
/// whose id is a number.
fn entries(text: &str) -> impl Iterator<Item = (&str, u32)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let _password = fields.next()?;
            Some((name, fields.next()?.trim().parse().ok()?))
        })
}

/// The first entry (passwd and group files alike) whose id is in `ids`.
fn entry_in(text: &str, ids: &RangeInclusive<u32>) -> Option<(String, u32)> {
    entries(text)
        .find(|(_, id)| ids.contains(id))
        .map(|(name, id)| (name.to_string(), id))
}

/// The gid of group `name` in the group file at `path` (normally /etc/group).
pub(crate) fn group_gid(path: &Path, name: &str) -> io::Result<Option<u32>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(parse_group(&text, name))
}

fn parse_group(text: &str, name: &str) -> Option<u32> {
    entries(text).find(|(n, _)| *n == name).map(|(_, gid)| gid)
}

/// The real uid and all groups (primary and supplementary) of process `pid`,
/// from /proc/<pid>/status. The uid lets callers check that the pid still
/// belongs to the peer they think it does.
pub(crate) fn proc_groups(pid: u32) -> io::Result<(u32, Vec<u32>)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable"))
}

fn parse_status(text: &str) -> Option<(u32, Vec<u32>)> {
    let field = |key: &str| {
        text.lines().find_map(|l| l.strip_prefix(key)).map(|rest| {
            rest.split_whitespace()
                .filter_map(|n| n.parse::<u32>().ok())
        })
    };
    let uid = field("Uid:")?.next()?;
    let mut groups: Vec<u32> = field("Groups:")?.collect();
    if let Some(gid) = field("Gid:")?.next() {
        groups.push(gid);
    }
    Some((uid, groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_file_lookup() {
        let text = "root:x:0:\n# comment\nsudo:x:27:alice,bob\nwheel:x:notanumber:\nkvm:x:993:";
        assert_eq!(parse_group(text, "sudo"), Some(27));
        assert_eq!(parse_group(text, "kvm"), Some(993));
        assert_eq!(parse_group(text, "wheel"), None);
        assert_eq!(parse_group(text, "su"), None);
        assert_eq!(parse_group("garbage", "garbage"), None);
    }

    #[test]
    fn accounts_in_a_range() {
        let passwd =
            "root:x:0:0::/root:/bin/sh\n# x:x:70000:\nbad:x:nan:1\nkb:x:70000:70000::/:/bin/sh\n";
        assert_eq!(entry_in(passwd, &(65536..=69999)), None);
        assert_eq!(
            entry_in(passwd, &(65536..=70000)),
            Some(("kb".into(), 70000))
        );
        assert_eq!(entry_in(passwd, &(0..=0)), Some(("root".into(), 0)));
        assert_eq!(entry_in("", &(0..=u32::MAX)), None);
    }

    #[test]
    fn status_groups() {
        let text =
            "Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nGroups:\t27 44 \n";
        assert_eq!(parse_status(text), Some((1000, vec![27, 44, 100])));
        assert_eq!(parse_status("Name: x\n"), None);
    }

    #[test]
    fn this_process_has_its_groups() -> io::Result<()> {
        let (uid, groups) = proc_groups(std::process::id())?;
        assert_eq!(uid, crate::sys::euid());
        assert!(groups.contains(&crate::sys::egid()));
        Ok(())
    }
}
