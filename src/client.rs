//! The client side: a connection to a daemon (over its Unix socket or
//! TCP, always TLS) and the list of remotes a user has added.

pub(crate) mod connection;
pub(crate) mod remotes;
pub(crate) mod ws;
