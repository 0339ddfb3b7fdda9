//! `kvmbox`: the kvmbox client: drive a local or remote kvmboxd.
//!
//! Only its command line exists so far; running it reports that plainly.

use std::process::ExitCode;

use argh::FromArgs;

use crate::cli;

const NAME: &str = "kvmbox";

/// The kvmbox client: drive a local or remote kvmboxd.
#[derive(FromArgs)]
#[argh(note = "Exit codes: 0 ok, 1 failed, 2 bad command line. --version prints the version.")]
struct Args {}

pub(crate) fn main(args: &[String]) -> ExitCode {
    match cli::parse::<Args>(NAME, args) {
        Ok(Args {}) => cli::fail(NAME, "not available in this build yet"),
        Err(code) => code,
    }
}
