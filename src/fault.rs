//! Who is at fault when something fails: the caller, a peer the host
//! relies on, or the host itself (rustls splits its errors the same way).
//! What a failure's reader can do about it depends on which: a caller
//! fixes its request, an administrator fixes the host. Errors that can
//! reach a caller say which through [`Blame`]; the API turns that into its
//! status and into what it tells the caller (`server/reply.rs`), so no
//! layer below it needs to know HTTP.

/// Who caused an error. The first four are the caller's, each a way its
/// request can be wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The request is invalid: a bad value, a missing field, a refused
    /// command.
    Input,
    /// The request names something that does not exist.
    Missing,
    /// The request clashes with the state things are in (it exists
    /// already, it is running).
    Conflict,
    /// The request names something the caller may not use.
    Denied,
    /// A peer the host relies on (QEMU) misbehaved or went away.
    Peer,
    /// The host lacks something (a file, a permission, space).
    Host,
}

impl Fault {
    /// Whether the caller can fix it by asking differently.
    pub fn is_caller(self) -> bool {
        matches!(
            self,
            Fault::Input | Fault::Missing | Fault::Conflict | Fault::Denied
        )
    }
}

/// An error that says who caused it.
pub trait Blame: std::error::Error {
    fn fault(&self) -> Fault;
}
