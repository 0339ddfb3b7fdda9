//! Boots real guests under TCG through the library's VM layer: spawn →
//! guest marker → isolation checks → disk hotplug → re-adoption → graceful
//! stop, plus the failure cases. The guest assets come from
//! `qemu-tests/assets.sh`; without them every test prints why and skips
//! (`make test` builds them first and sets KVMBOX_REQUIRE_GUESTS, so there
//! a missing asset is a failure).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a failed test should panic"
)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kvmbox::{
    console_log, Accel, AccelMode, AppArmor, Boot, Disk, DiskFormat, IdRange, MemorySize, Nic, Pin,
    RunAs, Stopped, Vm, VmConfig, VmError, VmSpec,
};

const QEMU: &str = "qemu-system-x86_64";
const UUID: &str = "6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f";

/// The kernel and initrd, or `None` after saying why the test is skipped.
fn assets() -> Option<(PathBuf, PathBuf)> {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("qemu-tests/cache");
    let (k, i) = (cache.join("vmlinuz"), cache.join("initrd.gz"));
    if k.is_file() && i.is_file() {
        return Some((k, i));
    }
    let why = format!(
        "guest assets missing in {}: run qemu-tests/assets.sh",
        cache.display()
    );
    assert!(std::env::var_os("KVMBOX_REQUIRE_GUESTS").is_none(), "{why}");
    eprintln!("SKIPPED: {why}");
    None
}

/// A private scratch directory the VM's uid can traverse.
fn scratch() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    d
}

fn run_as() -> RunAs {
    if euid() == 0 {
        // A uid no account uses, so nothing else on the host can read the VM's files.
        IdRange {
            first: 2_100_000 + std::process::id() % 1000,
            count: 1,
        }
        .pick(&[])
        .unwrap()
    } else {
        eprintln!("not root: running QEMU as the current user (privileged mode)");
        RunAs::Privileged
    }
}

fn euid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    field(&status, "Uid:")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or("")
        .trim()
}

/// A VM booting `kernel` and `initrd` from copies in `dir` (a file that
/// does not exist is named as it is): the cache sits in the clone, whose
/// parents the VM's own uid may not be let through.
fn spec(dir: &Path, kernel: &Path, initrd: &Path) -> VmSpec {
    let copy = |from: &Path| {
        if !from.is_file() {
            return from.to_path_buf();
        }
        let to = dir.join(from.file_name().unwrap());
        std::fs::copy(from, &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).unwrap();
        to
    };
    let (kernel, initrd) = (&copy(kernel), &copy(initrd));
    VmSpec {
        config: VmConfig {
            name: "guest1".into(),
            uuid: UUID.into(),
            cpus: 1,
            memory: "256MiB".parse().unwrap(),
            accel: Accel::Tcg,
            boot: Boot::Kernel {
                kernel: kernel.into(),
                initrd: Some(initrd.into()),
                cmdline: "console=ttyS0 quiet panic=-1".into(),
            },
            disks: vec![],
            nics: vec![],
            hotplug_ports: 2,
        },
        dir: dir.join("vm"),
        qemu: QEMU.into(),
        run_as: run_as(),
        pins: vec![],
        apparmor: None,
        start_timeout: Duration::from_secs(20),
    }
}

/// Waits for `needle` in the VM's console log.
fn wait_console(dir: &Path, needle: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    let log = console_log(dir);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(needle) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "no {needle:?} in the console after {limit:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pids of processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(needle) {
            found.push(pid);
        }
    }
    found
}

/// The local addresses (as /proc/net/tcp writes them: hex, host byte
/// order) of the IPv4 sockets listening on `port`.
fn listeners(port: u16) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (addr, p) = f.get(1)?.split_once(':')?;
            (p == port && f.get(3) == Some(&"0A")).then(|| addr.to_string())
        })
        .collect()
}

#[test]
fn guest_lifecycle() {
    let Some((kernel, initrd)) = assets() else {
        return;
    };
    let tmp = scratch();
    let mut spec = spec(tmp.path(), &kernel, &initrd);
    // User-mode NAT with a forward: QEMU listens on the host port at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    spec.config.nics = vec![Nic::User {
        id: "eth0".into(),
        mac: None,
        forwards: vec![kvmbox::parse_forward(&format!("{port}:22")).unwrap()],
    }];
    let dir = spec.dir.clone();
    smol::block_on(async {
        let t = Instant::now();
        let mut vm = Vm::spawn(&spec).await.unwrap();
        let boot = wait_console(&dir, "KVMBOX-GUEST-READY", Duration::from_secs(60));
        eprintln!(
            "spawn → guest marker: {:?} (QEMU {})",
            t.elapsed().max(boot),
            vm.qemu_version()
        );
        let pid = vm.pid();

        // Isolation: the VM's own uid, seccomp filter mode, private files.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert_eq!(
            field(&status, "Seccomp:"),
            "2",
            "QEMU runs without its seccomp sandbox"
        );
        if let RunAs::Isolated { uid, gid } = spec.run_as {
            let uids: Vec<&str> = field(&status, "Uid:").split_whitespace().collect();
            assert_eq!(uids, vec![uid.to_string().as_str(); 4], "QEMU's uids");
            let gids: Vec<&str> = field(&status, "Gid:").split_whitespace().collect();
            assert_eq!(gids, vec![gid.to_string().as_str(); 4], "QEMU's gids");
            assert_eq!(
                field(&status, "Groups:"),
                "",
                "QEMU kept supplementary groups"
            );
            let meta = std::fs::metadata(dir.join("qemu")).unwrap();
            assert_eq!((meta.uid(), meta.mode() & 0o777), (uid, 0o700));
        }
        let st = vm.status().await.unwrap();
        assert!(st.running, "{st:?}");
        std::net::TcpStream::connect(("127.0.0.1", port))
            .expect("the port forward is not listening");
        assert_eq!(
            listeners(port),
            ["0100007F"],
            "a forward without an address listens on 127.0.0.1 only"
        );

        // Hotplug: a fresh qcow2 shows up in the guest.
        let img = tmp.path().join("data.qcow2");
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&img)
            .arg("16M")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "qemu-img: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pin = Pin::of(&img).unwrap();
        let data = Disk {
            id: "data".into(),
            path: pin.real.clone(),
            format: DiskFormat::Qcow2,
            read_only: false,
        };
        let t = Instant::now();
        vm.hotplug_disk(&data, &pin).await.unwrap();
        wait_console(&dir, "KVMBOX-DISK vda", Duration::from_secs(30));
        eprintln!("hotplug → disk seen in the guest: {:?}", t.elapsed());

        // A disk QEMU refuses (raw, said to be qcow2) goes back to its owner
        // at once: no record will name it.
        let raw = tmp.path().join("raw.img");
        std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
        std::fs::set_permissions(&raw, std::fs::Permissions::from_mode(0o640)).unwrap();
        let bad_pin = Pin::of(&raw).unwrap();
        let bad = Disk {
            id: "bad".into(),
            path: bad_pin.real.clone(),
            format: DiskFormat::Qcow2,
            read_only: false,
        };
        assert!(vm.hotplug_disk(&bad, &bad_pin).await.is_err());
        let meta = std::fs::metadata(&raw).unwrap();
        assert_eq!(
            (meta.uid(), meta.mode() & 0o7777),
            (bad_pin.uid, 0o640),
            "a refused disk stays with the VM"
        );

        // The daemon "restarts": the handle goes, the VM stays and is adopted.
        drop(vm);
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "QEMU died with its handle"
        );
        // A daemon cut off during a start leaves a QEMU that may not listen
        // on QMP yet: adoption waits for it rather than calling it lost.
        let (qmp, away) = (dir.join("qemu/qmp.sock"), dir.join("qemu/qmp.away"));
        std::fs::rename(&qmp, &away).unwrap();
        let back = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            std::fs::rename(&away, &qmp).unwrap();
        });
        let t = Instant::now();
        let vm = Vm::adopt(&dir, UUID, spec.run_as).await.unwrap();
        back.join().unwrap();
        assert!(t.elapsed() >= Duration::from_secs(1));
        assert_eq!(vm.pid(), pid);
        drop(vm);
        if let RunAs::Isolated { uid, gid } = spec.run_as {
            let other = RunAs::Isolated { uid: uid + 1, gid };
            let e = Vm::adopt(&dir, UUID, other).await.unwrap_err();
            assert!(e.to_string().ends_with("it runs under another uid"), "{e}");
        }
        let mut vm = Vm::adopt(&dir, UUID, spec.run_as).await.unwrap();
        assert_eq!(vm.pid(), pid);
        assert!(vm.status().await.unwrap().running);
        // Starting it a second time is refused while it runs.
        assert!(matches!(Vm::spawn(&spec).await, Err(VmError::AlreadyRunning(p)) if p == pid));

        // Still controllable: unplug the disk, then a graceful stop.
        vm.unplug_disk("data", Duration::from_secs(20))
            .await
            .unwrap();
        let t = Instant::now();
        assert_eq!(
            vm.stop(Duration::from_secs(60)).await.unwrap(),
            Stopped::Graceful
        );
        eprintln!("graceful stop: {:?}", t.elapsed());
        let console = std::fs::read_to_string(console_log(&dir)).unwrap();
        assert!(
            console.contains("KVMBOX-POWERDOWN"),
            "the guest never saw the power button:\n{console}"
        );
    });
    assert!(processes_with(UUID).is_empty(), "QEMU left running");
    for f in ["vm.pid", "qemu/qmp.sock", "qemu/qemu.pid"] {
        assert!(!dir.join(f).exists(), "{f} left behind");
    }
    smol::block_on(async {
        assert!(matches!(
            Vm::adopt(&dir, UUID, spec.run_as).await,
            Err(VmError::NotRunning)
        ));
    });
}

/// Not a test on its own: `vm_survives_its_daemon_being_killed` runs this
/// binary again with this one test selected, as a stand-in daemon that
/// starts a VM and is then SIGKILLed.
#[test]
fn stand_in_daemon() {
    let Some(tmp) = std::env::var_os("KVMBOX_STAND_IN_DIR") else {
        return;
    };
    let (kernel, initrd) = assets().unwrap();
    let tmp = PathBuf::from(tmp);
    let mut spec = spec(&tmp, &kernel, &initrd);
    spec.config.uuid = KILLED_UUID.into();
    spec.run_as = stand_in_identity();
    smol::block_on(async {
        let _vm = Vm::spawn(&spec).await.unwrap();
        std::fs::write(tmp.join("started"), b"").unwrap();
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}

const KILLED_UUID: &str = "cf1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f";

fn stand_in_identity() -> RunAs {
    match std::env::var("KVMBOX_STAND_IN_UID") {
        Ok(uid) => {
            let uid: u32 = uid.parse().unwrap();
            RunAs::Isolated { uid, gid: uid }
        }
        Err(_) => RunAs::Privileged,
    }
}

#[test]
fn vm_survives_its_daemon_being_killed() {
    let Some((_kernel, _initrd)) = assets() else {
        return;
    };
    let tmp = scratch();
    let mut daemon = Command::new(std::env::current_exe().unwrap());
    daemon
        .args(["--exact", "stand_in_daemon", "--nocapture"])
        .env("KVMBOX_STAND_IN_DIR", tmp.path());
    let run_as = if euid() == 0 {
        let uid = 2_150_000 + std::process::id() % 1000;
        daemon.env("KVMBOX_STAND_IN_UID", uid.to_string());
        RunAs::Isolated { uid, gid: uid }
    } else {
        RunAs::Privileged
    };
    let mut daemon = daemon.spawn().unwrap();
    let start = Instant::now();
    while !tmp.path().join("started").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the stand-in daemon never started its VM"
        );
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "the stand-in daemon failed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let dir = tmp.path().join("vm");
    wait_console(&dir, "KVMBOX-GUEST-READY", Duration::from_secs(60));
    daemon.kill().unwrap(); // SIGKILL: no chance to clean up
    daemon.wait().unwrap();
    // As if it died before recording the pid: QEMU's own pid file is the lead.
    std::fs::remove_file(dir.join("vm.pid")).unwrap();

    smol::block_on(async {
        // QEMU is no longer our child's child: adoption works through /proc.
        let mut vm = Vm::adopt(&dir, KILLED_UUID, run_as).await.unwrap();
        assert!(vm.status().await.unwrap().running);
        assert_eq!(
            vm.stop(Duration::from_secs(60)).await.unwrap(),
            Stopped::Graceful
        );
    });
    let console = std::fs::read_to_string(console_log(&dir)).unwrap();
    assert!(console.contains("KVMBOX-POWERDOWN"), "{console}");
    assert!(processes_with(KILLED_UUID).is_empty(), "QEMU left running");
}

#[test]
fn force_stop_of_a_guest_that_ignores_the_button() {
    let Some((kernel, initrd)) = assets() else {
        return;
    };
    let tmp = scratch();
    let mut spec = spec(tmp.path(), &kernel, &initrd);
    spec.config.uuid = "7f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f".into();
    // Without the init script the kernel panics and halts: no one presses back.
    if let Boot::Kernel { cmdline, .. } = &mut spec.config.boot {
        *cmdline = "console=ttyS0 quiet panic=0 rdinit=/nonexistent".into();
    }
    smol::block_on(async {
        let vm = Vm::spawn(&spec).await.unwrap();
        let pid = vm.pid();
        assert_eq!(
            vm.stop(Duration::from_secs(2)).await.unwrap(),
            Stopped::Forced
        );
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || processes_with(&spec.config.uuid).is_empty()
        );
    });
    assert!(
        processes_with(&spec.config.uuid).is_empty(),
        "QEMU left running"
    );
}

#[test]
fn disk_boot_runs_the_firmware_on_a_qcow2_root() {
    let Some((kernel, initrd)) = assets() else {
        return;
    };
    let tmp = scratch();
    let mut spec = spec(tmp.path(), &kernel, &initrd);
    spec.config.uuid = "bf1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f".into();
    let root = tmp.path().join("root.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&root)
        .arg("32M")
        .output()
        .unwrap();
    assert!(out.status.success());
    spec.config.boot = Boot::Disk;
    let pin = Pin::of(&root).unwrap();
    spec.config.disks = vec![Disk {
        id: "root".into(),
        path: pin.real.clone(),
        format: DiskFormat::Qcow2,
        read_only: false,
    }];
    spec.pins = vec![pin];
    smol::block_on(async {
        let mut vm = Vm::spawn(&spec).await.unwrap();
        assert!(vm.status().await.unwrap().running);
        if let RunAs::Isolated { uid, .. } = spec.run_as {
            let meta = std::fs::metadata(&root).unwrap();
            assert_eq!(
                (meta.uid(), meta.mode() & 0o777),
                (uid, 0o600),
                "the root disk is not the VM's own"
            );
        }
        vm.kill().await.unwrap();
    });
    assert!(processes_with(&spec.config.uuid).is_empty());
}

/// Runs `ip ARGS…`, which must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bridged_nic_gets_the_tap_from_the_daemon() {
    let Some((kernel, initrd)) = assets() else {
        return;
    };
    if euid() != 0 {
        eprintln!("SKIPPED: creating a bridge and a tap needs root");
        return;
    }
    let tmp = scratch();
    let mut spec = spec(tmp.path(), &kernel, &initrd);
    spec.config.uuid = "af1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f".into();
    let tag = std::process::id() % 100_000;
    let (br, tap) = (format!("kvbr{tag}"), format!("kvtap{tag}"));
    // What the daemon's network code does: a bridge, a tap on it.
    ip(&["link", "add", &br, "type", "bridge"]);
    ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
    ip(&["link", "set", &tap, "master", &br, "up"]);
    spec.config.nics = vec![Nic::Tap {
        id: "eth0".into(),
        mac: Some("52:54:00:00:00:01".into()),
        ifname: tap.clone(),
    }];
    let result = std::panic::catch_unwind(|| {
        smol::block_on(async {
            let vm = Vm::spawn(&spec).await.unwrap();
            // QEMU, running as the VM's uid, holds the tap it could not open itself.
            let fd3 = std::fs::read_link(format!("/proc/{}/fd/3", vm.pid())).unwrap();
            assert_eq!(fd3, Path::new("/dev/net/tun"));
            let carrier = std::fs::read_to_string(format!("/sys/class/net/{tap}/carrier")).unwrap();
            assert_eq!(
                carrier.trim(),
                "1",
                "the tap has no carrier: QEMU is not attached"
            );
            vm.kill().await.unwrap();
        })
    });
    let _ = Command::new("ip").args(["link", "del", &tap]).status();
    let _ = Command::new("ip").args(["link", "del", &br]).status();
    result.unwrap();

    // A tap that does not exist is refused before anything starts.
    spec.config.nics = vec![Nic::Tap {
        id: "eth0".into(),
        mac: None,
        ifname: "kvnone0".into(),
    }];
    let err = smol::block_on(Vm::spawn(&spec)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "tap device /sys/class/net/kvnone0 does not exist"
    );
}

#[test]
fn bad_input_leaves_nothing_behind() {
    let tmp = scratch();
    let k = tmp.path().join("vmlinuz");
    std::fs::write(&k, b"not a kernel").unwrap();
    let mut s = spec(tmp.path(), &tmp.path().join("missing-kernel"), &k);
    let err = smol::block_on(Vm::spawn(&s)).unwrap_err();
    assert!(
        matches!(err, VmError::Missing { what: "kernel", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("missing-kernel"), "{err}");
    assert!(!s.dir.exists(), "a failed start created the VM directory");

    let e = "12 parsecs".parse::<MemorySize>().unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid memory size \"12 parsecs\": expected a number with a unit such as 256MiB or 1GiB"
    );
    s.config.cpus = 0;
    let err = smol::block_on(Vm::spawn(&s)).unwrap_err();
    assert_eq!(
        kvmbox::error_chain(&err),
        "invalid VM configuration: cpu count 0 is outside 1..=255"
    );
    assert!(!s.dir.exists());

    // QEMU itself refuses: the error carries its message, nothing survives.
    s.config.cpus = 1;
    s.config.boot = Boot::Kernel {
        kernel: k.clone(),
        initrd: None,
        cmdline: String::new(),
    };
    s.config.uuid = "8f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f".into();
    let err = smol::block_on(Vm::spawn(&s)).unwrap_err();
    assert!(matches!(err, VmError::StartFailed { .. }), "{err}");
    eprintln!("QEMU start-up failure reads: {err}");
    assert!(!s.dir.join("vm.pid").exists() && !s.dir.join("qemu/qmp.sock").exists());
    assert!(processes_with(&s.config.uuid).is_empty());
}

#[test]
fn required_apparmor_label_that_cannot_be_applied_stops_the_start() {
    let tmp = scratch();
    let k = tmp.path().join("vmlinuz");
    std::fs::write(&k, b"never read: the child stops before exec").unwrap();
    let mut s = spec(tmp.path(), &k, &k);
    s.config.uuid = "9f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f".into();
    s.apparmor = Some(AppArmor {
        profile: "kvmbox-no-such-profile".into(),
        required: true,
    });
    let err = smol::block_on(Vm::spawn(&s)).unwrap_err();
    assert!(matches!(err, VmError::AppArmor(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "QEMU could not be confined by AppArmor profile kvmbox-no-such-profile and confinement is required"
    );
    assert!(!s.dir.join("vm.pid").exists());
    assert!(processes_with(&s.config.uuid).is_empty());
}

#[test]
fn adoption_refuses_a_process_that_is_not_the_vm() {
    let tmp = scratch();
    let dir = tmp.path().join("vm");
    std::fs::create_dir(&dir).unwrap();
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    std::fs::write(dir.join("vm.pid"), format!("{}\n", sleeper.id())).unwrap();
    let err = smol::block_on(Vm::adopt(&dir, UUID, RunAs::Privileged)).unwrap_err();
    assert!(matches!(err, VmError::NotOurs { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "process {} is not this VM's QEMU: it is not QEMU",
            sleeper.id()
        )
    );
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}

#[test]
fn auto_acceleration_is_probed_for_real() {
    let tmp = scratch();
    let t = Instant::now();
    let c = kvmbox::choose_accel(AccelMode::Auto, Path::new(QEMU), tmp.path());
    eprintln!(
        "accel auto → {} in {:?}: {}",
        c.accel,
        t.elapsed(),
        c.reason
    );
    assert!(!c.reason.is_empty());
    // This probe's own firmware path only: probes of daemons that other
    // tests run at the same time are not this test's business.
    let rom = tmp.path().join("kvm-probe.rom");
    assert!(
        processes_with(&rom.to_string_lossy()).is_empty(),
        "the probe QEMU was left running"
    );
}
