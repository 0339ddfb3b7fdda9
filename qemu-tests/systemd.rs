//! kvmboxd as a systemd service, for real: the Debian 12 guest of
//! `qemu-tests/debian/image.sh` is booted once (TCG), and what
//! `make install PREFIX=/usr` writes (the static binary, its `kvmboxd`
//! link, the unit) is put into it through its guest agent. Then systemd
//! runs the unit: `systemctl start` returns only once the daemon said
//! READY=1 and the daemon answers at once, with its status, no
//! no_new_privs and the unit's capability bounding set; `systemctl reload`
//! re-reads the configuration, a bad one is logged at the journal's error
//! priority; `systemctl stop` is clean. The sandboxing score of
//! `systemd-analyze security` is printed. Needs root; skips, saying why,
//! without.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a failed test should panic"
)]

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "support.rs"]
mod support;
use support::{copy_in, debian_image, repo, Reap};

use kvmbox::{
    Accel, Agent, Boot, Disk, DiskFormat, ExecRequest, IdRange, Pin, Vm, VmConfig, VmSpec,
};

const UUID: &str = "3a1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e70";
/// The unit's CapabilityBoundingSet: CHOWN, DAC_OVERRIDE, FOWNER, KILL,
/// SETGID, SETUID, NET_BIND_SERVICE, NET_ADMIN, MAC_ADMIN.
const CAP_BOUNDING: &str = "00000002000014eb";

/// Runs `script` with `sh -c` in the guest; its status and stdout, with
/// stderr appended to the panic message of a caller that expects 0.
async fn sh(agent: &Agent, script: &str) -> (i32, String, String) {
    let mut req = ExecRequest::new(vec!["/bin/sh".into(), "-c".into(), script.into()]);
    req.timeout = Duration::from_secs(180);
    let r = agent.exec(&req).await.unwrap();
    (
        r.status,
        String::from_utf8_lossy(&r.stdout).into_owned(),
        String::from_utf8_lossy(&r.stderr).into_owned(),
    )
}

/// Like [`sh`], for a script that must succeed: its stdout.
async fn ok(agent: &Agent, script: &str) -> String {
    let (status, out, err) = sh(agent, script).await;
    assert_eq!(status, 0, "{script}:\n{out}{err}");
    out
}

/// `systemctl show` of the unit's properties, as `NAME=value` lines.
async fn show(agent: &Agent) -> String {
    ok(
        agent,
        "systemctl show -p ActiveState -p SubState -p StatusText -p MainPID -p Result \
         -p ExecMainStatus kvmboxd",
    )
    .await
}

fn prop<'a>(shown: &'a str, name: &str) -> &'a str {
    shown
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name} in:\n{shown}"))
}

#[test]
fn kvmboxd_as_a_systemd_service_in_a_real_guest() {
    let Some(img) = debian_image() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();

    // What make install writes, as the guest should have it.
    let dest = tmp.path().join("root");
    // Cargo points CARGO at the test toolchain's own cargo: make must
    // choose its release toolchain itself, as when run from a shell.
    let made = Command::new("make")
        .env_remove("CARGO")
        .arg("-s")
        .arg("-C")
        .arg(repo())
        .arg("install")
        .arg(format!("DESTDIR={}", dest.display()))
        .arg("PREFIX=/usr")
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "make install: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let binary = std::fs::read(dest.join("usr/bin/kvmbox")).unwrap();
    let unit = std::fs::read(dest.join("usr/lib/systemd/system/kvmboxd.service")).unwrap();

    // The guest, on a copy of the image (the cached one stays as built).
    let dir = tmp.path().join("debian");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let root = copy_in(&dir, &img.join("root.qcow2"));
    let pin = Pin::of(&root).unwrap();
    let spec = VmSpec {
        config: VmConfig {
            name: "systemd".into(),
            uuid: UUID.into(),
            cpus: 2,
            memory: "1GiB".parse().unwrap(),
            accel: Accel::Tcg,
            boot: Boot::Kernel {
                kernel: copy_in(&dir, &img.join("vmlinuz")),
                initrd: Some(copy_in(&dir, &img.join("initrd.img"))),
                cmdline: std::fs::read_to_string(img.join("cmdline"))
                    .unwrap()
                    .trim()
                    .into(),
            },
            disks: vec![Disk {
                id: "root".into(),
                path: pin.real.clone(),
                format: DiskFormat::Qcow2,
                read_only: false,
            }],
            nics: vec![],
            hotplug_ports: 0,
        },
        dir: dir.join("vm"),
        qemu: "qemu-system-x86_64".into(),
        run_as: IdRange {
            first: 2_300_000 + std::process::id() % 1000,
            count: 1,
        }
        .pick(&[])
        .unwrap(),
        pins: vec![pin],
        apparmor: None,
        start_timeout: Duration::from_secs(60),
    };

    smol::block_on(async {
        let t0 = Instant::now();
        let vm = Vm::spawn(&spec).await.unwrap();
        let _reap = Reap(vm.pid(), UUID);
        let agent = vm.agent();
        let until = Instant::now() + Duration::from_secs(420);
        while let Err(e) = agent.ping().await {
            assert!(Instant::now() < until, "the Debian guest's agent: {e}");
            smol::Timer::after(Duration::from_secs(2)).await;
        }
        eprintln!("guest agent up after {:?}", t0.elapsed());

        // Installed as make install would have.
        let t = Instant::now();
        agent.write_file("/usr/bin/kvmbox", &binary).await.unwrap();
        agent
            .write_file("/usr/lib/systemd/system/kvmboxd.service", &unit)
            .await
            .unwrap();
        ok(
            &agent,
            "chmod 755 /usr/bin/kvmbox && chmod 644 /usr/lib/systemd/system/kvmboxd.service && \
             ln -f /usr/bin/kvmbox /usr/sbin/kvmboxd && ln -sf kvmbox /usr/bin/kvmbox-cert && \
             systemctl daemon-reload",
        )
        .await;
        eprintln!("installed in {:?}", t.elapsed());
        let shown = show(&agent).await;
        assert_eq!(prop(&shown, "ActiveState"), "inactive", "{shown}");

        // Type=notify: start returns once READY=1 came, and then the daemon
        // answers at once (no retry here).
        let t = Instant::now();
        ok(&agent, "systemctl start kvmboxd").await;
        eprintln!("systemctl start took {:?}", t.elapsed());
        let info = ok(&agent, "kvmbox info").await;
        assert!(info.contains("trusted"), "{info}");
        assert_eq!(
            ok(&agent, "kvmbox list --format csv").await.trim(),
            "name,state,type"
        );
        let shown = show(&agent).await;
        assert_eq!(prop(&shown, "ActiveState"), "active", "{shown}");
        assert_eq!(prop(&shown, "SubState"), "running", "{shown}");
        assert_eq!(
            prop(&shown, "StatusText"),
            "serving on /var/lib/kvmbox/unix.socket",
            "{shown}"
        );
        let pid = prop(&shown, "MainPID").to_string();
        // AppArmor refuses profile transitions under no_new_privs: the
        // sandboxing must not have set it. The bounding set is the unit's.
        let status = ok(&agent, &format!("cat /proc/{pid}/status")).await;
        assert!(status.contains("\nNoNewPrivs:\t0\n"), "{status}");
        assert!(
            status.contains(&format!("\nCapBnd:\t{CAP_BOUNDING}\n")),
            "{status}"
        );
        let mode = ok(&agent, "stat -c %a /var/lib/kvmbox").await;
        assert_eq!(mode.trim(), "711");

        // Reload: a configuration written by hand takes effect, same
        // process, back to ready.
        agent
            .write_file(
                "/var/lib/kvmbox/daemon.json",
                br#"{"config": {"core.https_address": "127.0.0.1:8443"}, "local_socket_open": false}"#,
            )
            .await
            .unwrap();
        ok(&agent, "systemctl reload kvmboxd").await;
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let got = ok(&agent, "kvmbox config get core.https_address").await;
            if got.trim() == "127.0.0.1:8443" {
                break;
            }
            assert!(Instant::now() < until, "not re-read: {got:?}");
            smol::Timer::after(Duration::from_secs(1)).await;
        }
        let shown = show(&agent).await;
        assert_eq!(prop(&shown, "ActiveState"), "active", "{shown}");
        assert_eq!(prop(&shown, "MainPID"), pid, "{shown}");
        assert_eq!(
            prop(&shown, "StatusText"),
            "serving on /var/lib/kvmbox/unix.socket",
            "{shown}"
        );
        // One that does not parse: refused, at the journal's error priority
        // (the daemon marks its lines when stderr is the journal).
        agent
            .write_file("/var/lib/kvmbox/daemon.json", b"{\"config\": ")
            .await
            .unwrap();
        ok(&agent, "systemctl reload kvmboxd").await;
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let errs = ok(&agent, "journalctl -u kvmboxd -p err -o cat --no-pager").await;
            if errs.contains("error: reload failed, keeping what was in force") {
                break;
            }
            assert!(Instant::now() < until, "no error in the journal:\n{errs}");
            smol::Timer::after(Duration::from_secs(1)).await;
        }
        let errs = ok(&agent, "journalctl -u kvmboxd -p warning -o cat --no-pager").await;
        assert!(
            !errs.contains("ready: serving"),
            "info logged as a warning:\n{errs}"
        );
        let got = ok(&agent, "kvmbox config get core.https_address").await;
        assert_eq!(got.trim(), "127.0.0.1:8443");

        // The sandboxing as systemd rates it, for the record.
        let (_, security, _) = sh(&agent, "systemd-analyze security --no-pager kvmboxd").await;
        let score = security
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("no score:\n{security}"));
        eprintln!("systemd-analyze security kvmboxd: {score}");

        // Stop: SIGTERM, a clean exit.
        ok(&agent, "systemctl stop kvmboxd").await;
        let shown = show(&agent).await;
        assert_eq!(prop(&shown, "ActiveState"), "inactive", "{shown}");
        assert_eq!(prop(&shown, "Result"), "success", "{shown}");
        assert_eq!(prop(&shown, "ExecMainStatus"), "0", "{shown}");
        let journal = ok(&agent, "journalctl -u kvmboxd -o cat --no-pager").await;
        assert!(
            journal.contains("received SIGTERM, shutting down"),
            "{journal}"
        );
        eprintln!("journal:\n{journal}");
        eprintln!("all checks after {:?}", t0.elapsed());
        vm.kill().await.unwrap();
    });
}
