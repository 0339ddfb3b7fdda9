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
    let parsed = match T::from_args(&[name], &strs) {
        Err(early) if early.status.is_err() => dash_operands(name, &strs).ok_or(early),
        other => other,
    };
    parsed.map_err(|early| match early.status {
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

/// argh takes a lone `-` that no option takes as its value for an unknown
/// option, where POSIX (Utility Syntax Guidelines, 13) makes it an operand:
/// standard input, or output (see `kvmbox::read_operand`). A command line
/// that failed is parsed again with a `--` put just before the `-` argh
/// stopped at, where nothing moves: every operand keeps its place. Only when
/// every argument after it is an operand too (none starts with `-` but a
/// lone `-`), since `--` would make operands of options; otherwise the first
/// error stands. A `-` that parsed the first time is left alone, so an
/// option's value `-` and a greedy positional's (`config set KEY -`) stay as
/// they are.
fn dash_operands<T: argh::FromArgs>(name: &str, args: &[&str]) -> Option<T> {
    if args.contains(&"--") {
        return None;
    }
    // The `-` argh stopped at: the first it reads as an argument of its own,
    // not as an option's value. A `--help` in its place tells which: argh
    // takes it for help there, and for the value after an option that takes
    // one.
    let at = (0..args.len()).find(|&i| {
        args.get(i) == Some(&"-") && {
            let mut probe: Vec<&str> = args.get(..i).unwrap_or_default().to_vec();
            probe.push("--help");
            matches!(T::from_args(&[name], &probe), Err(e) if e.status.is_ok())
        }
    })?;
    let rest = args.get(at..).unwrap_or_default();
    if rest.iter().any(|a| a.starts_with('-') && *a != "-") {
        return None;
    }
    let mut v: Vec<&str> = args.get(..at).unwrap_or_default().to_vec();
    v.push("--");
    v.extend_from_slice(rest);
    T::from_args(&[name], &v).ok()
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
    #![allow(clippy::unwrap_used, reason = "a failed test should panic")]
    use argh::FromArgs;

    use super::dash_operands;

    /// One file operand, an option with a value, a switch.
    #[derive(FromArgs, Debug, PartialEq)]
    struct Cmd {
        #[argh(option)]
        /// a file
        ca: Option<String>,
        #[argh(option)]
        /// a value
        format: Option<String>,
        #[argh(switch)]
        /// a switch
        force: bool,
        #[argh(positional)]
        file: Option<String>,
    }

    /// A greedy positional, as `config set KEY VALUE…`.
    #[derive(FromArgs, Debug, PartialEq)]
    struct Greedy {
        #[argh(positional, greedy)]
        rest: Vec<String>,
    }

    /// Two operands, as `remote rename OLD NEW`.
    #[derive(FromArgs, Debug, PartialEq)]
    struct Rename {
        #[argh(positional)]
        old: String,
        #[argh(positional)]
        new: String,
    }

    /// Three operands and a greedy rest, as `config device add NAME DEV
    /// KIND PROPS…`.
    #[derive(FromArgs, Debug, PartialEq)]
    struct DeviceAdd {
        #[argh(switch)]
        /// a switch
        force: bool,
        #[argh(positional)]
        name: String,
        #[argh(positional)]
        device: String,
        #[argh(positional)]
        kind: String,
        #[argh(positional, greedy)]
        props: Vec<String>,
    }

    fn parse<T: FromArgs>(args: &[&str]) -> Result<T, ()> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        super::parse("t", &args).map_err(|_| ())
    }

    #[test]
    fn a_lone_dash_is_an_operand_wherever_it_stands() {
        let cmd = |ca: Option<&str>, file: Option<&str>, force| Cmd {
            ca: ca.map(Into::into),
            format: None,
            force,
            file: file.map(Into::into),
        };
        assert_eq!(parse::<Cmd>(&["-"]), Ok(cmd(None, Some("-"), false)));
        assert_eq!(
            parse::<Cmd>(&["--ca", "-"]),
            Ok(cmd(Some("-"), None, false))
        );
        assert_eq!(
            parse::<Cmd>(&["--ca", "-", "-"]),
            Ok(cmd(Some("-"), Some("-"), false))
        );
        assert_eq!(
            parse::<Cmd>(&["--force", "-"]),
            Ok(cmd(None, Some("-"), true))
        );
        // Options after the `-` would become operands behind a `--`: the
        // first error stands (options go first, as POSIX has them).
        assert!(parse::<Cmd>(&["-", "--format", "json"]).is_err());
        let c = parse::<Cmd>(&["--format", "json", "-"]).unwrap();
        assert_eq!(
            (c.file.as_deref(), c.format.as_deref()),
            (Some("-"), Some("json"))
        );
        // Still an error: two operands where one is taken.
        assert!(dash_operands::<Cmd>("t", &["-", "-"]).is_none());
        assert!(parse::<Cmd>(&["x", "-"]).is_err());
        // The user's own `--` is left as it is.
        assert_eq!(parse::<Cmd>(&["--", "-"]), Ok(cmd(None, Some("-"), false)));
        assert_eq!(
            parse::<Greedy>(&["k", "-"]),
            Ok(Greedy {
                rest: vec!["k".into(), "-".into()]
            })
        );
    }

    /// A `-` operand keeps its place among the others.
    #[test]
    fn a_lone_dash_does_not_move() {
        let rename = |old: &str, new: &str| Rename {
            old: old.into(),
            new: new.into(),
        };
        assert_eq!(parse::<Rename>(&["-", "foo"]), Ok(rename("-", "foo")));
        assert_eq!(parse::<Rename>(&["foo", "-"]), Ok(rename("foo", "-")));
        assert_eq!(parse::<Rename>(&["-", "-"]), Ok(rename("-", "-")));
        let add = |force, name: &str, device: &str, kind: &str, props: &[&str]| DeviceAdd {
            force,
            name: name.into(),
            device: device.into(),
            kind: kind.into(),
            props: props.iter().map(|p| p.to_string()).collect(),
        };
        assert_eq!(
            parse::<DeviceAdd>(&["vm", "-", "disk", "source=/x"]),
            Ok(add(false, "vm", "-", "disk", &["source=/x"]))
        );
        assert_eq!(
            parse::<DeviceAdd>(&["--force", "-", "d", "disk", "-"]),
            Ok(add(true, "-", "d", "disk", &["-"]))
        );
        // An option after the `-` is not made an operand.
        assert!(parse::<DeviceAdd>(&["vm", "-", "disk", "--force"]).is_err());
        assert!(parse::<DeviceAdd>(&["vm", "-", "disk", "a", "--force"]).is_err());
    }
}
