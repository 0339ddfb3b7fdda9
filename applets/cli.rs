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
    let strs = stdin_operand(args.iter().map(String::as_str).collect());
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

/// A lone `-` (standard input, POSIX utility guideline 13) is taken by argh
/// for an unknown option: when no option follows it, `--` is put before it.
fn stdin_operand(mut args: Vec<&str>) -> Vec<&str> {
    if let Some(i) = args.iter().position(|a| *a == "-" || *a == "--") {
        let rest = args.get(i + 1..).unwrap_or_default();
        if args.get(i) == Some(&"-") && !rest.iter().any(|a| a.starts_with('-')) {
            args.insert(i, "--");
        }
    }
    args
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

#[cfg(test)]
mod tests {
    use super::stdin_operand;

    #[test]
    fn a_lone_dash_is_an_operand() {
        let v = |a: &[&'static str]| stdin_operand(a.to_vec());
        assert_eq!(
            v(&["init", "--preseed", "-"]),
            ["init", "--preseed", "--", "-"]
        );
        assert_eq!(v(&["init", "-", "edge1:"]), ["init", "--", "-", "edge1:"]);
        assert_eq!(v(&["--", "-"]), ["--", "-"], "already ended");
        assert_eq!(v(&["-", "--help"]), ["-", "--help"], "an option follows");
        assert_eq!(v(&["a", "b"]), ["a", "b"]);
    }
}
