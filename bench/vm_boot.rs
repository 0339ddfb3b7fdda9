//! Benchmark entry point for the VM layer: boots the test guest through
//! `Vm::spawn` and prints the wall time from the call to the guest's marker
//! in the console log (`marker_ms N`), then ends the VM. With `--argv` it
//! prints, one per line, the QEMU command line it would use; with `--raw` it
//! runs that very command itself, as a person would by hand (no uid drop, no
//! QMP), and times it with the same in-process poller, so that the two
//! numbers differ only by what kvmbox adds.
//! Usage: vm-boot KERNEL INITRD DIR [--argv | --raw]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark tool: a failure should stop it loudly"
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvmbox::{Accel, Boot, IdRange, RunAs, RunFiles, Vm, VmConfig, VmSpec};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kernel, initrd, dir, rest @ ..] = args.as_slice() else {
        eprintln!("usage: vm-boot KERNEL INITRD DIR [--argv | --raw]");
        std::process::exit(2);
    };
    let dir = PathBuf::from(dir);
    let config = VmConfig {
        name: "bench".into(),
        uuid: "5e7c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b".into(),
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
        hotplug_ports: kvmbox::DEFAULT_HOTPLUG_PORTS,
    };
    if rest.iter().any(|a| a == "--argv") {
        for a in kvmbox::command_line(&config, &RunFiles::in_dir(&dir)).unwrap() {
            println!("{}", a.to_string_lossy());
        }
        return;
    }
    if rest.iter().any(|a| a == "--raw") {
        let argv = kvmbox::command_line(&config, &RunFiles::in_dir(&dir)).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        let t = Instant::now();
        let mut qemu = std::process::Command::new("qemu-system-x86_64")
            .args(argv)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(dir.join("qemu.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("qemu.err")).unwrap())
            .spawn()
            .unwrap();
        wait_marker(&RunFiles::in_dir(&dir).console, t);
        println!("marker_ms {}", t.elapsed().as_millis());
        qemu.kill().unwrap();
        qemu.wait().unwrap();
        return;
    }
    let run_as = if std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .contains("\nUid:\t0\t")
    {
        IdRange {
            first: 2_200_000,
            count: 1,
        }
        .pick(&[])
        .unwrap()
    } else {
        RunAs::Privileged
    };
    let spec = VmSpec {
        config,
        dir: dir.clone(),
        qemu: "qemu-system-x86_64".into(),
        run_as,
        pins: vec![],
        apparmor: None,
        start_timeout: Duration::from_secs(30),
    };
    smol::block_on(async {
        let t = Instant::now();
        let vm = Vm::spawn(&spec).await.unwrap();
        wait_marker(&kvmbox::console_log(&dir), t);
        println!("marker_ms {}", t.elapsed().as_millis());
        vm.kill().await.unwrap();
    });
}

fn wait_marker(log: &Path, t: Instant) {
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("KVMBOX-GUEST-READY")
    {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no guest marker in {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
