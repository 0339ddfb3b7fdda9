//! Who the caller is and what it may do: every authorization decision of
//! the daemon is here or in the route table's columns (what each route
//! needs, and whether it acts inside a project).
//!
//! Every request carries an [`Identity`]: who the peer is (Unix socket
//! credentials, or a TCP address), the fingerprint of its TLS client
//! certificate, and the role the trust store gives it, if any. It is looked
//! up again for every request, so that a certificate removed from the
//! trust store stops working at once, on connections already open too.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use crate::hostfile::Opener;
use crate::http::{Request, Response};
use crate::log::log;
use crate::pki::Cert;
use crate::server::reply::error;
use crate::server::state::Shared;
use crate::server::trust::{Role, Standing, DEFAULT_PROJECT};
use crate::sys::fs::Creds;
use crate::sys::{self, PeerCred};
use crate::vmm::instances::Record;
use crate::wire::is_param;

/// What an untrusted client is told, wherever it is refused.
pub const UNTRUSTED_HINT: &str =
    "not authorized: this client is not trusted; run `kvmbox authenticate` with the local passphrase";

/// What a remote client that is not (or no longer) trusted is told.
pub const REMOTE_UNTRUSTED_HINT: &str = "not authorized: this client is not trusted by the \
     server (its certificate was never added, or was removed); ask an administrator for a \
     token (`kvmbox config trust add --name NAME`) and run `kvmbox remote add` again";

/// What a certificate the CA signed but the trust store does not list is
/// told while `core.pki_default_role` gives such certificates no role.
const PKI_NO_DEFAULT_ROLE: &str = "not authorized: this certificate is signed by the \
     server's CA but is not in the trust store, and core.pki_default_role is unset (none), so it \
     has no role; ask an administrator to trust it (`kvmbox config trust add`) or to set \
     core.pki_default_role";

/// What a caller on the LXD-compatible socket is told when it is neither
/// root nor in the admin group.
const LXD_SOCKET_REFUSED: &str =
    "not authorized: only root and the admin group may use this socket";

/// Who is calling.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    pub peer: Peer,
    /// The TLS client certificate (always present on the Unix socket, whose
    /// handshake requires one; optional over TCP).
    pub cert: Option<Cert>,
    /// `None` means untrusted.
    pub role: Option<Role>,
    /// Projects the role applies to; empty means all. Only `default`
    /// exists, so a list without it grants nothing inside a project.
    pub projects: Vec<String>,
    /// Why a certificate that could have been trusted was not (in PKI mode:
    /// no `core.pki_default_role`, an unusable CRL…): said instead of the
    /// usual hint. Only with `role: None`.
    pub refused: Option<String>,
}

/// Where the call comes from.
#[derive(Clone, Debug)]
pub(crate) enum Peer {
    /// The Unix socket, with the kernel's view of the caller.
    Local(PeerCred),
    /// The TCP listener, with the client's address.
    Remote(std::net::SocketAddr),
}

impl Identity {
    /// The key failed passphrase attempts are counted under: a uid (a
    /// subordinate one as its owner's), or a network peer as connection
    /// slots count it (an IPv6 peer by its /64).
    pub(crate) fn limiter_key(&self) -> String {
        match &self.peer {
            Peer::Local(c) => format!("uid:{}", crate::sys::subuid_owner(c.uid)),
            Peer::Remote(a) => format!("ip:{}", crate::server::admission::network_peer(a.ip())),
        }
    }

    /// What an untrusted caller is told: why, or how to become trusted from
    /// where it is.
    pub(crate) fn untrusted_hint(&self) -> &str {
        match (&self.refused, &self.peer) {
            (Some(why), _) => why,
            (None, Peer::Local(_)) => UNTRUSTED_HINT,
            (None, Peer::Remote(_)) => REMOTE_UNTRUSTED_HINT,
        }
    }

    /// Whether the certificate is limited to a list of projects.
    pub(crate) fn restricted(&self) -> bool {
        !self.projects.is_empty()
    }

    /// Whether the caller may do to the host what root can (LXD's "full
    /// access"): local root, or an admin over TLS whose certificate is not
    /// restricted to projects. A local admin is not: it is a user of this
    /// host, whose files the daemon opens only as that user would.
    pub(crate) fn full_access(&self) -> bool {
        match &self.peer {
            Peer::Local(c) => c.uid == 0,
            Peer::Remote(_) => self.admin_of_all(),
        }
    }

    /// Whether the caller administers the whole server: the admin role
    /// and no list of projects. It may act for others in the trust store
    /// (trust a certificate, issue a token).
    pub(crate) fn admin_of_all(&self) -> bool {
        self.role == Some(Role::Admin) && self.projects.is_empty()
    }

    /// Whether the caller may see the trust store's entry `e`: a
    /// certificate restricted to projects sees only its own, as in LXD.
    pub(crate) fn may_see(&self, e: &crate::server::trust::Entry) -> bool {
        !self.restricted()
            || self
                .cert
                .as_ref()
                .is_some_and(|c| c.fingerprint() == e.fingerprint)
    }

    pub(crate) fn describe(&self) -> String {
        match &self.peer {
            Peer::Local(c) => format!("uid {} (pid {})", c.uid, c.pid),
            Peer::Remote(a) => format!("{a}"),
        }
    }
}

/// What a route requires of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// Anyone who completed the TLS handshake.
    Anyone,
    /// A trusted caller with at least this role.
    Role(Role),
}

/// The project a request names: absent or empty is `default` (as in LXD;
/// Ansible always sends `project=`), and that is the only one there is.
pub(crate) fn project(req: &Request) -> Result<(), Response> {
    let name = req.query_param("project").unwrap_or_default();
    if name.is_empty() || name == DEFAULT_PROJECT {
        return Ok(());
    }
    if !is_param(name) {
        return Err(error(400, "invalid project name"));
    }
    Err(error(
        404,
        &crate::server::trust::Error::UnknownProject(name.to_string()).to_string(),
    ))
}

/// Checks `id` against what the route needs: the role, then for a
/// certificate restricted to projects, that its list names `default` on
/// project routes, and that it does not change the server (a client limited
/// to some projects must not reconfigure the server or the trust store
/// they all share).
pub(crate) fn authorize(id: &Identity, need: Need, scope: Scope) -> Result<(), Response> {
    let Need::Role(min) = need else {
        return Ok(());
    };
    let Some(role) = id.role else {
        return Err(error(403, id.untrusted_hint()));
    };
    if role < min {
        return Err(error(
            403,
            &format!("not authorized: this needs the {min:?} role").to_lowercase(),
        ));
    }
    if !id.restricted() {
        return Ok(());
    }
    if scope == Scope::Project {
        if !id.projects.iter().any(|p| p == DEFAULT_PROJECT) {
            return Err(error(
                403,
                &format!(
                    "not authorized: this certificate is restricted to projects {:?}, and \
                     kvmbox has only the default project",
                    id.projects
                ),
            ));
        }
    } else if min > Role::Auditor {
        return Err(error(
            403,
            "not authorized: a certificate restricted to projects cannot change the server",
        ));
    }
    Ok(())
}

/// Where a route acts: on the whole server, or inside the project a
/// request names (`?project=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    Server,
    Project,
}

impl Shared {
    /// A TCP client's identity, looked up for every request like
    /// [`Shared::identity`]: the trust store by fingerprint, else, in PKI
    /// mode, by public key (a re-signed copy of a listed or removed
    /// certificate is that certificate), else `core.pki_default_role`. In
    /// PKI mode every certificate passes the CA check again now
    /// (`intermediates` are the rest of the chain it sent), so a revocation
    /// reaches connections already open.
    pub(crate) fn remote_identity(
        &self,
        addr: std::net::SocketAddr,
        cert: &Option<Cert>,
        intermediates: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Identity {
        let mut id = Identity {
            peer: Peer::Remote(addr),
            cert: cert.clone(),
            role: None,
            projects: Vec::new(),
            refused: None,
        };
        let Some(cert) = cert else {
            return id;
        };
        let listed = match self.trust().lookup(cert, self.pki.is_some()) {
            Standing::Listed(e) => Some((e.role, e.projects.clone())),
            // Removed from the trust store: no role, whatever the CA says.
            Standing::Denied => return id,
            Standing::Unknown => None,
        };
        let Some(pki) = &self.pki else {
            if let Some((role, projects)) = listed {
                (id.role, id.projects) = (Some(role), projects);
            }
            return id;
        };
        let checked = match listed {
            // A listed certificate rests on the last CRLs that could be
            // read, whatever state server.crl is in now.
            Some(grant) => pki.check_listed(cert.der(), intermediates).map(|()| grant),
            None => {
                let Some(role) = self.settings().pki_default_role() else {
                    id.refused = Some(PKI_NO_DEFAULT_ROLE.to_string());
                    return id;
                };
                pki.check(cert.der(), intermediates)
                    .map(|()| (role, Vec::new()))
            }
        };
        match checked {
            Ok((role, projects)) => (id.role, id.projects) = (Some(role), projects),
            Err(e) => id.refused = Some(format!("not authorized: {}", crate::error_chain(&e))),
        }
        id
    }

    /// Who this connection's peer is, looked up again for every request so
    /// that a certificate removed from the trust store stops working at once.
    pub(crate) fn identity(&self, cred: &PeerCred, cert: &Option<Cert>) -> Identity {
        let (role, projects) = if cred.uid == 0 {
            // Local root can do anything to the host anyway (LXD's rule).
            (Some(Role::Admin), Vec::new())
        } else {
            cert.as_ref()
                .and_then(|c| {
                    self.trust()
                        .get(&c.fingerprint())
                        .map(|e| (Some(e.role), e.projects.clone()))
                })
                .unwrap_or((None, Vec::new()))
        };
        Identity {
            peer: Peer::Local(cred.clone()),
            cert: cert.clone(),
            role,
            projects,
            refused: None,
        }
    }

    /// Multipass's rule: until the socket has been opened, the first client from the
    /// admin group has its certificate trusted, and the socket becomes 0666.
    /// A caller on the LXD-compatible socket, known by its peer
    /// credentials alone (LXD's local model: whoever may open the socket
    /// administers the server). The socket is root:GROUP 0660; the group
    /// is checked again here, so that a loosened mode lets no one else in.
    /// A local admin still opens host files only as itself.
    pub(crate) fn lxd_identity(&self, cred: &PeerCred) -> Identity {
        let admin = cred.uid == 0 || in_group(cred, self.admin_gid);
        Identity {
            peer: Peer::Local(cred.clone()),
            cert: None,
            role: admin.then_some(Role::Admin),
            projects: Vec::new(),
            refused: (!admin).then(|| LXD_SOCKET_REFUSED.to_string()),
        }
    }

    pub(crate) fn first_client(&self, cred: &PeerCred, cert: &Cert) {
        if cred.uid == 0 || !in_group(cred, self.admin_gid) {
            return;
        }
        let mut settings = self.settings();
        if settings.local_socket_open() {
            return;
        }
        let name = format!("local-uid-{}", cred.uid);
        if let Err(e) = self.trust().add(cert, &name, Role::Admin) {
            log!(
                Error,
                "cannot trust the first client: {}",
                crate::error_chain(&e)
            );
            return;
        }
        if let Err(e) = settings.set_local_socket_open() {
            log!(Error, "{}", crate::error_chain(&e));
        }
        drop(settings);
        match std::fs::set_permissions(&self.socket, std::fs::Permissions::from_mode(0o666)) {
            Ok(()) => log!(
                Info,
                "first client (uid {}) trusted as {}; {} is now open to all users",
                cred.uid,
                cert.fingerprint(),
                self.socket.display()
            ),
            Err(e) => log!(
                Error,
                "cannot open {} to all users: {e}",
                self.socket.display()
            ),
        }
    }
}

/// Whether the peer is in group `gid`: the kernel's SO_PEERGROUPS snapshot
/// when there is one, else /proc/<pid>/status (whose uid must still be the
/// peer's, or the pid was reused and nothing is believed).
fn in_group(cred: &PeerCred, gid: u32) -> bool {
    if cred.gid == gid {
        return true;
    }
    match &cred.groups {
        Some(groups) => groups.contains(&gid),
        None => match sys::proc_groups(cred.pid) {
            Ok((uid, groups)) => uid == cred.uid && groups.contains(&gid),
            Err(_) => false,
        },
    }
}

/// Whom the daemon opens the host paths a caller names (kernel, initrd,
/// disks, an image to import) for. Local root and an admin of the whole
/// server over TLS (LXD's "full access") may name any file; another local
/// user only what the kernel lets that user open, with its own uid and
/// groups; any other remote caller, nothing (there is no uid to act as).
pub(crate) fn opener(id: &Identity) -> Result<Opener, Response> {
    match &id.peer {
        Peer::Local(c) if c.uid == 0 => Ok(Opener::Daemon),
        Peer::Local(c) => {
            let mut groups = match &c.groups {
                Some(g) => g.clone(),
                // No kernel list: /proc, if the pid is still the caller's.
                None => crate::sys::proc_groups(c.pid)
                    .ok()
                    .filter(|(uid, _)| *uid == c.uid)
                    .map(|(_, g)| g)
                    .unwrap_or_default(),
            };
            groups.push(c.gid);
            groups.sort_unstable();
            groups.dedup();
            Ok(Opener::Caller(Creds {
                uid: c.uid,
                gid: c.gid,
                groups,
            }))
        }
        Peer::Remote(_) if id.full_access() => Ok(Opener::Daemon),
        Peer::Remote(_) => Err(error(
            403,
            "not authorized: only an admin of all projects may name host paths remotely",
        )),
    }
}

/// Values that turn a protection off: only a caller with full access to
/// the host sets them (a privileged QEMU opens every path as root).
const LOOSENING: &[(&str, &str)] = &[
    ("security.privileged", "true"),
    ("security.apparmor", "off"),
];

/// Whether `id` may make a change to an instance (`current`, none when it
/// is made): without full access to the host, it may not turn a protection
/// off, nor touch an instance that runs privileged.
pub(crate) fn may_change(
    id: &Identity,
    config: &BTreeMap<String, String>,
    current: Option<&Record>,
) -> Result<(), Response> {
    if id.full_access() {
        return Ok(());
    }
    if let Some(r) = current.filter(|r| r.privileged()) {
        return Err(error(
            403,
            &format!(
                "not authorized: instance {:?} runs privileged: only root or an admin of \
                 all projects may change it",
                r.name
            ),
        ));
    }
    for (k, v) in LOOSENING {
        let now = current.and_then(|r| r.config.get(*k)).map(String::as_str);
        if config.get(*k).map(String::as_str) == Some(v) && now != Some(v) {
            return Err(error(
                403,
                &format!("not authorized: only root or an admin of all projects may set {k}={v}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed test should panic")]
mod tests {
    use super::*;

    #[test]
    fn group_membership_from_the_kernel_or_proc() {
        let cred = |gid, groups| PeerCred {
            pid: std::process::id(),
            uid: sys::euid(),
            gid,
            groups,
        };
        assert!(in_group(&cred(27, None), 27));
        assert!(in_group(&cred(100, Some(vec![4, 27])), 27));
        assert!(!in_group(&cred(100, Some(vec![4])), 27));
        // No kernel list: /proc of this very process is read.
        assert!(in_group(&cred(100, None), sys::egid()));
        let mut stale = cred(100, None);
        stale.uid = stale.uid.wrapping_add(1);
        assert!(
            !in_group(&stale, sys::egid()),
            "a reused pid is not believed"
        );
    }

    #[test]
    fn guesses_count_per_uid_ipv4_address_and_ipv6_64() {
        let key = |peer| {
            Identity {
                peer,
                cert: None,
                role: None,
                projects: Vec::new(),
                refused: None,
            }
            .limiter_key()
        };
        let remote = |a: &str| key(Peer::Remote(a.parse().unwrap()));
        assert_eq!(
            remote("[2001:db8:0:1::5]:40000"),
            remote("[2001:db8:0:1:ffff::9]:40001")
        );
        assert_ne!(
            remote("[2001:db8:0:1::5]:40000"),
            remote("[2001:db8:0:2::5]:40000")
        );
        assert_eq!(remote("192.0.2.1:1"), remote("192.0.2.1:2"));
        assert_ne!(remote("192.0.2.1:1"), remote("192.0.2.2:1"));
        let local = key(Peer::Local(crate::sys::PeerCred {
            pid: 1,
            uid: 0,
            gid: 0,
            groups: None,
        }));
        assert_ne!(local, remote("0.0.0.0:1"));
    }
}
