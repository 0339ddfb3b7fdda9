//! Getting into real guests under TCG, through the library's VM layer: the
//! Debian 12 guest of `qemu-tests/debian/image.sh` (systemd, getty on the
//! serial console, qemu-guest-agent) is booted once and everything is
//! checked on that one boot: commands and files through its guest agent,
//! and the console fan-out (viewers that read, one that detaches, one that
//! falls behind). Meanwhile the busybox guest of `qemu-tests/assets.sh`,
//! which has no agent, must give the clear error within the time limit.
//! Needs root (the image build, per-VM uids); skips, saying why, without.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a failed test should panic"
)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "support.rs"]
mod support;
use support::{copy_in, debian_image, repo, Reap};

use kvmbox::{
    read_console, Accel, AgentError, Boot, Disk, DiskFormat, ExecRequest, IdRange, Pin, Vm,
    VmConfig, VmSpec,
};

const DEBIAN_UUID: &str = "3a1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e60";
const BUSYBOX_UUID: &str = "3a1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e61";
/// Bytes the guest writes to its console at once: more than the log may
/// keep, so that it is trimmed.
const FLOOD: usize = 1_100_000;

fn spec(dir: &Path, uuid: &str, uid: u32, boot: Boot, memory: &str) -> VmSpec {
    VmSpec {
        config: VmConfig {
            name: "guest".into(),
            uuid: uuid.into(),
            cpus: 2,
            memory: memory.parse().unwrap(),
            accel: Accel::Tcg,
            boot,
            disks: vec![],
            nics: vec![],
            hotplug_ports: 0,
        },
        dir: dir.join("vm"),
        qemu: "qemu-system-x86_64".into(),
        run_as: IdRange {
            first: uid,
            count: 1,
        }
        .pick(&[])
        .unwrap(),
        pins: vec![],
        apparmor: None,
        start_timeout: Duration::from_secs(60),
    }
}

/// What a viewer that keeps reading has seen.
type Seen = Arc<Mutex<Vec<u8>>>;

/// How often `needle` occurs in what the viewer has seen.
fn count(seen: &Seen, needle: &str) -> usize {
    String::from_utf8_lossy(&seen.lock().unwrap())
        .matches(needle)
        .count()
}

/// Waits until the viewer has seen `needle` more than `before` times.
async fn wait_for(seen: &Seen, needle: &str, before: usize, limit: Duration) {
    let until = Instant::now() + limit;
    while count(seen, needle) <= before {
        if Instant::now() > until {
            let s = seen.lock().unwrap();
            let tail = String::from_utf8_lossy(&s[s.len().saturating_sub(3000)..]).into_owned();
            panic!("no {needle:?} on the console after {limit:?}:\n{tail}");
        }
        smol::Timer::after(Duration::from_millis(100)).await;
    }
}

fn run(words: &[&str]) -> ExecRequest {
    let mut r = ExecRequest::new(words.iter().map(|w| (*w).to_string()).collect());
    r.timeout = Duration::from_secs(60);
    r
}

#[test]
fn exec_files_and_console_in_a_real_guest() {
    let Some(img) = debian_image() else {
        return;
    };
    let busybox = repo().join("qemu-tests/cache");
    if !busybox.join("initrd.gz").is_file() {
        let why = "the busybox guest is missing: run qemu-tests/assets.sh";
        assert!(std::env::var_os("KVMBOX_REQUIRE_GUESTS").is_none(), "{why}");
        eprintln!("SKIPPED: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let uid = 2_200_000 + std::process::id() % 1000;

    // The Debian guest, on a copy of the image (the guest writes to it).
    let ddir = tmp.path().join("debian");
    std::fs::create_dir(&ddir).unwrap();
    std::fs::set_permissions(&ddir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let root = copy_in(&ddir, &img.join("root.qcow2"));
    let pin = Pin::of(&root).unwrap();
    let mut debian = spec(
        &ddir,
        DEBIAN_UUID,
        uid,
        Boot::Kernel {
            kernel: copy_in(&ddir, &img.join("vmlinuz")),
            initrd: Some(copy_in(&ddir, &img.join("initrd.img"))),
            cmdline: std::fs::read_to_string(img.join("cmdline"))
                .unwrap()
                .trim()
                .into(),
        },
        "1GiB",
    );
    debian.config.disks = vec![Disk {
        id: "root".into(),
        path: pin.real.clone(),
        format: DiskFormat::Qcow2,
        read_only: false,
    }];
    debian.pins = vec![pin];

    // The busybox guest: no agent in it.
    let bdir = tmp.path().join("busybox");
    std::fs::create_dir(&bdir).unwrap();
    std::fs::set_permissions(&bdir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let bb = spec(
        &bdir,
        BUSYBOX_UUID,
        uid + 1000,
        Boot::Kernel {
            kernel: copy_in(&bdir, &busybox.join("vmlinuz")),
            initrd: Some(copy_in(&bdir, &busybox.join("initrd.gz"))),
            cmdline: "console=ttyS0 quiet panic=-1".into(),
        },
        "256MiB",
    );

    smol::block_on(async {
        let t0 = Instant::now();
        let vm = Vm::spawn(&debian).await.unwrap();
        let _reap = Reap(vm.pid(), DEBIAN_UUID);
        let (console, pump) = vm.connect_console().await.unwrap();
        let pump = smol::spawn(pump.run());
        // A viewer that keeps reading, one that leaves at once, one that
        // never reads.
        let (out, input) = console.attach().unwrap();
        let seen = Seen::default();
        let gather = seen.clone();
        let reader = smol::spawn(async move {
            while let Some(b) = out.read().await {
                gather.lock().unwrap().extend_from_slice(&b);
            }
        });
        drop(console.attach().unwrap());
        let (stalled, _) = console.attach().unwrap();

        // While Debian boots: a guest without an agent answers nothing, and
        // that is a clear error within the agent's time limit, every time.
        let nobody = Vm::spawn(&bb).await.unwrap();
        let _reap_bb = Reap(nobody.pid(), BUSYBOX_UUID);
        let agent = nobody.agent();
        for _ in 0..2 {
            let t = Instant::now();
            let e = agent.ping().await.unwrap_err();
            assert!(matches!(e, AgentError::NoAgent(10)), "{e}");
            assert!(e.to_string().contains("start qemu-guest-agent"), "{e}");
            assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());
        }
        nobody.kill().await.unwrap();

        // The login prompt reaches the viewer; an empty line typed at it
        // brings another.
        wait_for(&seen, "debian login:", 0, Duration::from_secs(400)).await;
        eprintln!("login prompt after {:?}", t0.elapsed());
        let prompts = count(&seen, "debian login:");
        input.write(b"\r").await.unwrap();
        wait_for(&seen, "debian login:", prompts, Duration::from_secs(60)).await;
        let log = read_console(&debian.dir, 1 << 20).unwrap();
        assert!(log.contains("Debian GNU/Linux 12 (bookworm)"), "{log}");
        assert!(log.contains("debian login:"));

        // The agent: it may start a little after the login prompt.
        let agent = vm.agent();
        let until = Instant::now() + Duration::from_secs(120);
        while let Err(e) = agent.ping().await {
            assert!(Instant::now() < until, "the Debian guest's agent: {e}");
            smol::Timer::after(Duration::from_secs(1)).await;
        }
        let r = agent.exec(&run(&["cat", "/etc/os-release"])).await.unwrap();
        let text = String::from_utf8(r.stdout).unwrap();
        assert_eq!(r.status, 0, "{text}");
        assert!(
            text.contains("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\""),
            "{text}"
        );
        assert!(text.contains("\nID=debian\n"), "{text}");
        assert_eq!(
            agent
                .exec(&run(&["sh", "-c", "exit 7"]))
                .await
                .unwrap()
                .status,
            7
        );
        let mut req = run(&[
            "/bin/sh",
            "-c",
            "read x; echo \"$x $FOO\"; echo oops >&2; kill -9 $$",
        ]);
        req.env = vec!["FOO=bar".into()];
        req.stdin = b"hello\n".to_vec();
        let r = agent.exec(&req).await.unwrap();
        assert_eq!(
            (r.status, r.stdout.as_slice(), r.stderr.as_slice()),
            (137, &b"hello bar\n"[..], &b"oops\n"[..])
        );
        let e = agent.exec(&run(&["/no/such/program"])).await.unwrap_err();
        assert!(matches!(e, AgentError::Command { .. }), "{e}");

        // A file through guest-file-*: every byte value, several chunks.
        let data: Vec<u8> = (0..200_000_u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        agent.write_file("/tmp/kvmbox-io.bin", &data).await.unwrap();
        assert_eq!(
            agent
                .read_file("/tmp/kvmbox-io.bin", data.len())
                .await
                .unwrap(),
            data
        );
        let r = agent
            .exec(&run(&["stat", "-c", "%s", "/tmp/kvmbox-io.bin"]))
            .await
            .unwrap();
        assert_eq!(String::from_utf8(r.stdout).unwrap().trim(), "200000");
        let e = agent
            .read_file("/tmp/kvmbox-io.bin", data.len() - 1)
            .await
            .unwrap_err();
        assert!(matches!(e, AgentError::TooLarge { .. }), "{e}");
        let e = agent.read_file("/no/such/file", 10).await.unwrap_err();
        assert!(matches!(e, AgentError::Command { .. }), "{e}");

        // A flood on the console: the viewer that never read is dropped
        // once it has VIEWER_MAX bytes unread, the reading one gets it all,
        // and the log is trimmed to its tail as it grows.
        let t = Instant::now();
        let flood = format!(
            "head -c {FLOOD} /dev/zero | tr '\\0' x >/dev/ttyS0; echo FLOOD-END >/dev/ttyS0"
        );
        let mut req = run(&["sh", "-c", &flood]);
        req.timeout = Duration::from_secs(300);
        assert_eq!(agent.exec(&req).await.unwrap().status, 0);
        wait_for(&seen, "FLOOD-END", 0, Duration::from_secs(30)).await;
        eprintln!("{FLOOD} bytes through the console in {:?}", t.elapsed());
        let drained = async {
            let mut kept = 0;
            while let Some(b) = stalled.read().await {
                kept += b.len();
            }
            Some(kept)
        };
        let kept = smol::future::or(drained, async {
            smol::Timer::after(Duration::from_secs(10)).await;
            None
        })
        .await
        .expect("the viewer that never read was not dropped");
        assert!(kept <= 256 << 10, "{kept}");
        let xs = seen.lock().unwrap().iter().filter(|&&b| b == b'x').count();
        assert!(xs >= FLOOD, "the reading viewer saw {xs} of {FLOOD}");
        // Trimmed: the boot's first lines are gone, the flood's end is kept.
        let size = std::fs::metadata(debian.dir.join("qemu/console.log"))
            .unwrap()
            .len();
        assert!(size <= (1 << 20) + (128 << 10), "the log is {size} bytes");
        let log = read_console(&debian.dir, 2 << 20).unwrap();
        assert!(!log.contains("Linux version"), "the log was not trimmed");
        assert!(log.contains("FLOOD-END"));
        eprintln!("all checks after {:?}", t0.elapsed());

        // QEMU going away ends the pump and every viewer.
        vm.kill().await.unwrap();
        pump.await;
        reader.await;
        assert!(console.attach().is_err());
    });
}
