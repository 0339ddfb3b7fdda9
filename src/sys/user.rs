//! Users and groups without a user database: /etc/passwd and /etc/group
//! read directly (what musl's static getgrnam does too), the subordinate
//! ids of /etc/subuid and /etc/subgid, and a process's groups from /proc.

use std::io;
use std::ops::RangeInclusive;
use std::path::Path;

/// A uid or gid some account already has.
#[derive(thiserror::Error)]
pub enum IdInUse {
    #[error("uid {id} belongs to user {name:?} in /etc/passwd")]
    User { name: String, id: u32 },
    #[error("gid {id} belongs to group {name:?} in /etc/group")]
    Group { name: String, id: u32 },
    /// A user namespace of `owner` may run as any id of the entry.
    #[error("{kind} {id} is a subordinate {kind} of {owner:?} in {} ({first}:{count})", kind.path())]
    Subordinate {
        kind: IdKind,
        owner: String,
        id: u32,
        first: u32,
        count: u32,
    },
    #[error("cannot read {path}")]
    Read {
        path: &'static str,
        #[source]
        source: io::Error,
    },
}

crate::debug_as_display!(IdInUse);

/// Which ids a subordinate range gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    Uid,
    Gid,
}

impl IdKind {
    /// The file that lists the ranges of this kind.
    fn path(self) -> &'static str {
        match self {
            IdKind::Uid => SUBUID,
            IdKind::Gid => SUBGID,
        }
    }
}

impl std::fmt::Display for IdKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IdKind::Uid => "uid",
            IdKind::Gid => "gid",
        })
    }
}

/// Refuses `ids` when a user in /etc/passwd or a group in /etc/group has a
/// uid or gid in it, or when a range of /etc/subuid (as uids) or /etc/subgid
/// (as gids) overlaps it: whoever owns that range can become those ids in a
/// user namespace of their own. A missing file holds nothing.
pub(crate) fn ids_unused(ids: RangeInclusive<u32>) -> Result<(), IdInUse> {
    if let Some((name, id)) = entry_in(&read("/etc/passwd")?, &ids) {
        return Err(IdInUse::User { name, id });
    }
    if let Some((name, id)) = entry_in(&read("/etc/group")?, &ids) {
        return Err(IdInUse::Group { name, id });
    }
    for kind in [IdKind::Uid, IdKind::Gid] {
        if let Some(r) = sub_ranges(&read(kind.path())?).find(|r| r.overlaps(&ids)) {
            return Err(IdInUse::Subordinate {
                kind,
                owner: r.owner.to_string(),
                id: r.first.max(*ids.start()),
                first: r.first,
                count: r.count,
            });
        }
    }
    Ok(())
}

const SUBUID: &str = "/etc/subuid";
const SUBGID: &str = "/etc/subgid";

/// The text of an account file; a missing one is empty.
fn read(path: &'static str) -> Result<String, IdInUse> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(IdInUse::Read { path, source }),
    }
}

/// The local user `uid` stands for: the owner's uid when `uid` is in an
/// /etc/subuid range (a process in the owner's user namespace, as
/// SO_PEERCRED shows it), else `uid` itself. Limits kept per uid count by it,
/// so that a user with 65,536 subordinate uids is still one user. An owner
/// that is neither a user in /etc/passwd nor a number, or files that cannot
/// be read, leave `uid` as it is.
pub(crate) fn subuid_owner(uid: u32) -> u32 {
    let Ok(subuid) = read(SUBUID) else {
        return uid;
    };
    let Some(owner) = sub_ranges(&subuid).find(|r| r.overlaps(&(uid..=uid))) else {
        return uid;
    };
    let passwd = read("/etc/passwd").unwrap_or_default();
    owner_uid(&passwd, owner.owner).unwrap_or(uid)
}

/// The uid of `owner` as /etc/subuid names it: a login name, or a uid.
fn owner_uid(passwd: &str, owner: &str) -> Option<u32> {
    entries(passwd)
        .find(|(name, _)| *name == owner)
        .map(|(_, uid)| uid)
        .or_else(|| owner.parse().ok())
}

/// One `owner:first:count` line of /etc/subuid or /etc/subgid.
#[derive(Debug, PartialEq, Eq)]
struct SubRange<'a> {
    owner: &'a str,
    first: u32,
    /// Never 0.
    count: u32,
}

impl SubRange<'_> {
    fn overlaps(&self, ids: &RangeInclusive<u32>) -> bool {
        // In u64: an entry may reach past u32::MAX.
        let end = u64::from(self.first) + u64::from(self.count);
        self.first <= *ids.end() && end > u64::from(*ids.start())
    }
}

/// The well-formed lines of a subuid or subgid file; others are skipped.
fn sub_ranges(text: &str) -> impl Iterator<Item = SubRange<'_>> {
    text.lines().filter_map(|line| {
        let mut fields = line.split(':');
        let owner = fields.next()?.trim();
        let first = fields.next()?.trim().parse().ok()?;
        let count = fields.next()?.trim().parse().ok()?;
        let well_formed =
            fields.next().is_none() && !owner.is_empty() && !owner.starts_with('#') && count > 0;
        well_formed.then_some(SubRange {
            owner,
            first,
            count,
        })
    })
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
    fn subordinate_ranges() {
        let text = "# comment\nalice:100000:65536\nbad:1:2:3\n:5:5\nzero:70000:0\n\
                    nan:x:5\n 1001 : 200000 : 10 \nhigh:4294967290:100\n";
        let all: Vec<_> = sub_ranges(text)
            .map(|r| (r.owner, r.first, r.count))
            .collect();
        assert_eq!(
            all,
            [
                ("alice", 100000, 65536),
                ("1001", 200000, 10),
                ("high", 4294967290, 100)
            ]
        );
        let hit =
            |ids: RangeInclusive<u32>| sub_ranges(text).find(|r| r.overlaps(&ids)).map(|r| r.owner);
        assert_eq!(hit(65536..=99999), None);
        assert_eq!(hit(65536..=100000), Some("alice"));
        assert_eq!(hit(165535..=165535), Some("alice"));
        assert_eq!(hit(165536..=199999), None);
        assert_eq!(hit(200009..=300000), Some("1001"));
        assert_eq!(hit(200010..=4294967289), None);
        assert_eq!(hit(u32::MAX..=u32::MAX), Some("high"));
        assert_eq!(hit(0..=u32::MAX), Some("alice"));
    }

    #[test]
    fn subordinate_uids_map_to_their_owner() {
        let passwd = "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/:/bin/sh\n";
        assert_eq!(owner_uid(passwd, "alice"), Some(1000));
        assert_eq!(owner_uid(passwd, "root"), Some(0));
        // subuid(5): the owner may be given as a uid.
        assert_eq!(owner_uid(passwd, "1234"), Some(1234));
        assert_eq!(owner_uid(passwd, "nobody-here"), None);
        assert_eq!(owner_uid("", "alice"), None);
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
