//! What every applet does the same way: parse its argh arguments, report an
//! error on one line, and map failures to the documented exit codes.
//!
//! Exit codes, for every applet: 0 success, 1 the operation failed (bad input
//! file, refused request, host problem), 2 the command line is wrong.

use std::process::ExitCode;

/// Exit code for a failed operation.
pub(crate) const FAILURE: u8 = 1;
/// Exit code for a command line that does not parse.
pub(crate) const USAGE: u8 = 2;

/// Parses `args` for applet `name`; `--help` prints usage and exits 0.
pub(crate) fn parse<T: argh::FromArgs>(name: &str, args: &[String]) -> Result<T, ExitCode> {
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    T::from_args(&[name], &strs).map_err(|early| match early.status {
        Ok(()) => {
            print!("{}", early.output);
            ExitCode::SUCCESS
        }
        Err(()) => {
            eprint!("{}", early.output);
            ExitCode::from(USAGE)
        }
    })
}

/// Prints `name: message` to stderr and returns the usage exit code.
pub(crate) fn usage_error(name: &str, message: &str) -> ExitCode {
    eprintln!("{name}: {message}");
    ExitCode::from(USAGE)
}

/// Prints `name: message` to stderr and returns the failure exit code.
pub(crate) fn fail(name: &str, message: &str) -> ExitCode {
    eprintln!("{name}: {message}");
    ExitCode::from(FAILURE)
}

/// Runs an applet body, printing its error chain on failure.
pub(crate) fn report<E: std::error::Error>(name: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(name, &kvmbox::error_chain(&e)),
    }
}
