//! `kvmbox-cert`: EC keys, X.509 certificates and a small CA.
//!
//! Makes what the daemon and client make on first start (a self-signed P-256
//! identity), the CA and leaves of PKI mode, and prints SHA-256
//! fingerprints the way LXD shows them (RFC 5280 for the format; LXD's
//! security documentation for how they are used).
//!
//! A file operand `-` is standard input, or standard output for an output
//! (what is printed is written last, once every file is in place).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use argh::FromArgs;
use kvmbox::{
    is_stdio, read_operand, write_operand, Cert, CertProfile, CertSpec, Curve, Key, Overwrite,
};

use crate::cli;

const NAME: &str = "kvmbox-cert";

/// Make EC keys and certificates, run a small CA, show and check certificates.
#[derive(FromArgs)]
#[argh(
    note = "A file operand - is standard input, or standard output for --key and --cert.
Exit codes: 0 ok, 1 failed, 2 bad command line. --version prints the version."
)]
struct Args {
    #[argh(subcommand)]
    cmd: Cmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Cmd {
    Gen(Gen),
    Ca(Ca),
    Issue(Issue),
    Fingerprint(Fingerprint),
    Show(Show),
    Verify(Verify),
}

/// Generate a key and a self-signed certificate for TLS server and client use.
#[derive(FromArgs)]
#[argh(subcommand, name = "gen")]
struct Gen {
    /// where to write the private key (PKCS#8 PEM, mode 0600)
    #[argh(option)]
    key: PathBuf,
    /// where to write the certificate (PEM)
    #[argh(option)]
    cert: PathBuf,
    /// subject common name (default: kvmbox)
    #[argh(option, default = "String::from(\"kvmbox\")")]
    cn: String,
    /// p256 (default) or p384
    #[argh(option, default = "Curve::P256")]
    curve: Curve,
    /// validity in days (default 3650)
    #[argh(option, default = "3650")]
    days: u32,
    /// subject alternative name, a DNS name or an IP address (repeatable)
    #[argh(option)]
    san: Vec<String>,
    /// replace existing output files
    #[argh(switch)]
    force: bool,
}

/// Manage a certificate authority for PKI mode.
#[derive(FromArgs)]
#[argh(subcommand, name = "ca")]
struct Ca {
    #[argh(subcommand)]
    cmd: CaCmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum CaCmd {
    Init(CaInit),
}

/// Create a CA key and self-signed CA certificate.
#[derive(FromArgs)]
#[argh(subcommand, name = "init")]
struct CaInit {
    /// where to write the CA private key (PKCS#8 PEM, mode 0600)
    #[argh(option)]
    key: PathBuf,
    /// where to write the CA certificate (PEM)
    #[argh(option)]
    cert: PathBuf,
    /// subject common name (default: kvmbox CA)
    #[argh(option, default = "String::from(\"kvmbox CA\")")]
    cn: String,
    /// p256 (default) or p384
    #[argh(option, default = "Curve::P256")]
    curve: Curve,
    /// validity in days (default 3650)
    #[argh(option, default = "3650")]
    days: u32,
    /// replace existing output files
    #[argh(switch)]
    force: bool,
}

/// Issue a server or client certificate signed by a CA, with a new key.
#[derive(FromArgs)]
#[argh(subcommand, name = "issue")]
struct Issue {
    /// the CA's private key
    #[argh(option)]
    ca_key: PathBuf,
    /// the CA's certificate
    #[argh(option)]
    ca_cert: PathBuf,
    /// where to write the new private key (PKCS#8 PEM, mode 0600)
    #[argh(option)]
    key: PathBuf,
    /// where to write the new certificate (PEM)
    #[argh(option)]
    cert: PathBuf,
    /// subject common name
    #[argh(option)]
    cn: String,
    /// a TLS server certificate (extended key usage serverAuth)
    #[argh(switch)]
    server: bool,
    /// a TLS client certificate (extended key usage clientAuth)
    #[argh(switch)]
    client: bool,
    /// p256 (default) or p384
    #[argh(option, default = "Curve::P256")]
    curve: Curve,
    /// validity in days (default 3650)
    #[argh(option, default = "3650")]
    days: u32,
    /// subject alternative name, a DNS name or an IP address (repeatable)
    #[argh(option)]
    san: Vec<String>,
    /// replace existing output files
    #[argh(switch)]
    force: bool,
}

/// Print the SHA-256 fingerprint of a certificate (64 lowercase hex digits).
#[derive(FromArgs)]
#[argh(subcommand, name = "fingerprint")]
struct Fingerprint {
    /// certificate file (PEM)
    #[argh(positional)]
    cert: PathBuf,
}

/// Print a certificate's subject, issuer, validity, SANs, key type and fingerprint.
#[derive(FromArgs)]
#[argh(subcommand, name = "show")]
struct Show {
    /// certificate file (PEM)
    #[argh(positional)]
    cert: PathBuf,
    /// text (default) or json
    #[argh(option, default = "String::from(\"text\")")]
    format: String,
}

/// Exit 0 only if CERT is signed by a certificate in CA and valid now.
#[derive(FromArgs)]
#[argh(subcommand, name = "verify")]
struct Verify {
    /// CA certificate file (PEM; may hold several)
    #[argh(option)]
    ca: PathBuf,
    /// certificate file to check (PEM)
    #[argh(positional)]
    cert: PathBuf,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("cannot read {0}")]
    Read(String, #[source] std::io::Error),
    #[error("{0}")]
    Input(String, #[source] kvmbox::PkiError),
    #[error(transparent)]
    Pki(#[from] kvmbox::PkiError),
    #[error("{0} already exists (use --force to replace it)")]
    Exists(String),
    #[error("cannot write {0}")]
    Write(String, #[source] std::io::Error),
    #[error("{0}")]
    Usage(String),
}

pub(crate) fn main(args: &[String]) -> ExitCode {
    kvmbox::default_sigpipe();
    let args: Args = match cli::parse(NAME, args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    if let Cmd::Issue(i) = &args.cmd {
        if i.server == i.client {
            return cli::usage_error(NAME, "issue needs exactly one of --server or --client");
        }
    }
    cli::report(NAME, run(args.cmd))
}

fn run(cmd: Cmd) -> Result<(), Error> {
    match cmd {
        Cmd::Gen(g) => {
            let spec = CertSpec {
                cn: g.cn,
                sans: g.san,
                days: g.days,
                profile: CertProfile::SelfSigned,
            };
            make(&g.key, &g.cert, g.curve, g.force, |key| {
                spec.self_signed(key)
            })
        }
        Cmd::Ca(Ca {
            cmd: CaCmd::Init(c),
        }) => {
            let spec = CertSpec {
                cn: c.cn,
                sans: Vec::new(),
                days: c.days,
                profile: CertProfile::Ca,
            };
            make(&c.key, &c.cert, c.curve, c.force, |key| {
                spec.self_signed(key)
            })
        }
        Cmd::Issue(i) => {
            let ca = read_cert(&i.ca_cert)?;
            let ca_key = Key::from_pem(&read(&i.ca_key)?)
                .map_err(|e| Error::Input(format!("{}", i.ca_key.display()), e))?;
            let profile = if i.server {
                CertProfile::Server
            } else {
                CertProfile::Client
            };
            let spec = CertSpec {
                cn: i.cn,
                sans: i.san,
                days: i.days,
                profile,
            };
            make(&i.key, &i.cert, i.curve, i.force, |key| {
                spec.issue(key, &ca, &ca_key)
            })
        }
        Cmd::Fingerprint(f) => {
            println!("{}", read_cert(&f.cert)?.fingerprint());
            Ok(())
        }
        Cmd::Show(s) => show(&read_cert(&s.cert)?, &s.format),
        Cmd::Verify(v) => {
            let anchors = Cert::all_from_pem(&read(&v.ca)?)
                .map_err(|e| Error::Input(format!("{}", v.ca.display()), e))?;
            let cert = read_cert(&v.cert)?;
            cert.verify(&anchors)?;
            println!("{}: OK", v.cert.display());
            Ok(())
        }
    }
}

/// Generates a key, builds its certificate, then writes both — or neither:
/// outputs are checked before anything is made, and a failed second write
/// removes the first.
fn make(
    key_path: &Path,
    cert_path: &Path,
    curve: Curve,
    force: bool,
    build: impl FnOnce(&Key) -> Result<Cert, kvmbox::PkiError>,
) -> Result<(), Error> {
    if key_path == cert_path {
        return Err(Error::Usage(
            "--key and --cert must be different files (only one can be -)".into(),
        ));
    }
    let overwrite = if force {
        Overwrite::Replace
    } else {
        Overwrite::Refuse
    };
    if !force {
        for p in [key_path, cert_path] {
            if !is_stdio(p) && p.symlink_metadata().is_ok() {
                return Err(Error::Exists(p.display().to_string()));
            }
        }
    }
    let key = Key::generate(curve)?;
    let cert = build(&key)?;
    let mut outputs = [
        (key_path, key.to_pem(), 0o600),
        (cert_path, cert.to_pem(), 0o644),
    ];
    // Files first, stdout last: what is printed cannot be taken back.
    outputs.sort_by_key(|(p, ..)| is_stdio(p));
    let mut written = Vec::new();
    for (p, data, mode) in &outputs {
        if let Err(e) = write_operand(p, data.as_bytes(), *mode, overwrite) {
            for w in written {
                let _ = std::fs::remove_file(w);
            }
            return Err(match e.kind() {
                std::io::ErrorKind::AlreadyExists => Error::Exists(p.display().to_string()),
                _ => Error::Write(p.display().to_string(), e),
            });
        }
        if !is_stdio(p) {
            written.push(*p);
        }
    }
    Ok(())
}

/// At most this much of an input file is read (a CA bundle fits).
const INPUT_LIMIT: u64 = 16 * 1024 * 1024;

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    read_operand(path, INPUT_LIMIT).map_err(|e| Error::Read(path.display().to_string(), e))
}

fn read_cert(path: &Path) -> Result<Cert, Error> {
    Cert::from_pem(&read(path)?).map_err(|e| Error::Input(path.display().to_string(), e))
}

fn show(cert: &Cert, format: &str) -> Result<(), Error> {
    let info = cert.info()?;
    match format {
        "json" => {
            let json = serde_json::to_string_pretty(&info)
                .map_err(|e| Error::Usage(format!("cannot encode JSON: {e}")))?;
            println!("{json}");
        }
        "text" => {
            println!("Subject:     {}", info.subject);
            println!("Issuer:      {}", info.issuer);
            println!("Serial:      {}", info.serial);
            println!("Not before:  {}", info.not_before);
            println!("Not after:   {}", info.not_after);
            println!("SANs:        {}", info.sans.join(", "));
            println!("Key type:    {}", info.key_type);
            println!("CA:          {}", if info.is_ca { "yes" } else { "no" });
            println!("Fingerprint: {}", info.fingerprint);
        }
        other => {
            return Err(Error::Usage(format!(
                "unknown format {other:?}: use text or json"
            )))
        }
    }
    Ok(())
}
