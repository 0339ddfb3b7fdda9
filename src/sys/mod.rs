//! The only place `unsafe` is allowed: thin wrappers over syscalls the
//! standard library does not offer, each block with its `// SAFETY:` reason.

pub(crate) mod process;
