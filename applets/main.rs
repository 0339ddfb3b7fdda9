//! The one kvmbox executable: picks an applet by the name it was called by,
//! busybox-style (toybox `main.c`, uutils `coreutils.rs`).
//!
//! `kvmboxd`, `kvmbox`, `kvmbox-aa-helper` and `kvmbox-cert` are symlinks to
//! the same file. Without a symlink, `kvmbox --applet NAME ARGS…` runs any
//! applet; `kvmbox --list-applets` and `kvmbox --install DIR` list and create
//! the links.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;

mod cli;
mod kvmbox;
mod kvmbox_aa_helper;
mod kvmbox_cert;
mod kvmboxd;

/// An applet's entry point: its arguments after the name, and its exit code.
type Main = fn(&[String]) -> ExitCode;

/// Every applet, sorted by name (a unit test keeps it so).
const APPLETS: &[(&str, Main)] = &[
    ("kvmbox", kvmbox::main),
    ("kvmbox-aa-helper", kvmbox_aa_helper::main),
    ("kvmbox-cert", kvmbox_cert::main),
    ("kvmboxd", kvmboxd::main),
];

fn find(name: &str) -> Option<Main> {
    APPLETS
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .and_then(|i| APPLETS.get(i))
        .map(|(_, f)| *f)
}

fn names() -> String {
    APPLETS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let called = argv
        .first()
        .map(Path::new)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .unwrap_or("kvmbox")
        .to_string();
    let rest = argv.get(1..).unwrap_or_default();
    dispatch(&called, rest)
}

fn dispatch(called: &str, rest: &[String]) -> ExitCode {
    // The multicall switches belong to the binary, not to an applet, so they
    // work under the plain name and under any unknown one.
    let multicall = called == "kvmbox" || find(called).is_none();
    if multicall {
        match rest.first().map(String::as_str) {
            Some("--list-applets") => {
                for (name, _) in APPLETS {
                    println!("{name}");
                }
                return ExitCode::SUCCESS;
            }
            Some("--install") => return install(rest.get(1..).unwrap_or_default()),
            Some("--applet") => {
                return match rest.get(1) {
                    Some(name) => run(name, rest.get(2..).unwrap_or_default()),
                    None => {
                        cli::usage_error("kvmbox", &format!("--applet needs a name: {}", names()))
                    }
                }
            }
            _ => {}
        }
    }
    run(called, rest)
}

fn run(name: &str, args: &[String]) -> ExitCode {
    let Some(main) = find(name) else {
        return cli::usage_error(
            "kvmbox",
            &format!("unknown applet {name:?}; the applets are: {}", names()),
        );
    };
    if args.first().map(String::as_str) == Some("--version") {
        println!("{name} {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    main(args)
}

/// Creates one symlink per applet in DIR, pointing at this executable.
fn install(args: &[String]) -> ExitCode {
    let [dir] = args else {
        return cli::usage_error("kvmbox", "usage: kvmbox --install DIR");
    };
    let target = match std::env::current_exe() {
        Ok(t) => t,
        Err(e) => return cli::fail("kvmbox", &format!("cannot find this executable: {e}")),
    };
    for (name, _) in APPLETS {
        let link = Path::new(dir).join(name);
        if link == target {
            continue;
        }
        // Replace a stale link, never a regular file someone put there.
        if link
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            let _ = std::fs::remove_file(&link);
        }
        if let Err(e) = std::os::unix::fs::symlink(&target, &link) {
            return cli::fail("kvmbox", &format!("cannot create {}: {e}", link.display()));
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applet_table_is_sorted_and_unique() {
        let names: Vec<&str> = APPLETS.iter().map(|(n, _)| *n).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
    }

    #[test]
    fn every_applet_is_found_by_name() {
        for (name, _) in APPLETS {
            assert!(find(name).is_some(), "{name}");
        }
        assert!(find("kvmbox-nope").is_none());
    }
}
