//! The handlers behind the route table, one file per API area.

pub(crate) mod certificates;
pub(crate) mod discovery;
pub(crate) mod guest;
pub(crate) mod images;
pub(crate) mod instances;
pub(crate) mod operations;
pub(crate) mod pull;
pub(crate) mod server;
