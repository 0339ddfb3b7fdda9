#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a failed test should panic"
)]
use super::*;

fn cfg() -> VmConfig {
    VmConfig {
        name: "web1".into(),
        uuid: "0b5c6c6e-2a4f-4d8e-9f57-3f4d0a1b2c3d".into(),
        cpus: 2,
        memory: "256MiB".parse().unwrap(),
        accel: Accel::Tcg,
        boot: Boot::Kernel {
            kernel: "/k/vmlinuz".into(),
            initrd: Some("/k/initrd.gz".into()),
            cmdline: "console=ttyS0".into(),
        },
        disks: vec![],
        nics: vec![],
        hotplug_ports: 2,
    }
}

fn argv(c: &VmConfig) -> Vec<String> {
    let files = RunFiles::in_dir(Path::new("/run/vm,1"));
    command_line(c, &files)
        .unwrap()
        .into_iter()
        .map(|s| s.into_string().unwrap())
        .collect()
}

fn after<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
    a.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

#[test]
fn memory_sizes() {
    assert_eq!("256MiB".parse::<MemorySize>().unwrap().bytes(), 256 << 20);
    assert_eq!("1GiB".parse::<MemorySize>().unwrap().bytes(), 1 << 30);
    assert_eq!("2G".parse::<MemorySize>().unwrap().bytes(), 2 << 30);
    assert_eq!("1GB".parse::<MemorySize>().unwrap().bytes(), 953 << 20);
    assert_eq!("1024MB".parse::<MemorySize>().unwrap().bytes(), 976 << 20);
    for bad in [
        "",
        "MiB",
        "12 parsecs",
        "-1GiB",
        "1.5GiB",
        "99999999999999999999GiB",
    ] {
        assert!(
            matches!(bad.parse::<MemorySize>(), Err(Error::MemorySyntax(_))),
            "{bad}"
        );
    }
    for out in ["1MiB", "16MiB", "2TiB"] {
        assert!(
            matches!(out.parse::<MemorySize>(), Err(Error::MemoryRange(_))),
            "{out}"
        );
    }
    assert_eq!(MemorySize::from_mib(512).unwrap().to_string(), "512MiB");
}

#[test]
fn base_line_is_locked_down() {
    let a = argv(&cfg());
    for f in ["-nodefaults", "-no-user-config"] {
        assert!(a.iter().any(|x| x == f), "{f}");
    }
    assert_eq!(after(&a, "-machine"), ["q35"]);
    assert_eq!(after(&a, "-accel"), ["tcg"]);
    assert_eq!(after(&a, "-display"), ["none"]);
    assert_eq!(
        after(&a, "-sandbox"),
        ["on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
    );
    assert_eq!(after(&a, "-m"), ["256M"]);
    assert_eq!(after(&a, "-smp"), ["2"]);
    // The comma in the directory name is doubled inside options.
    assert_eq!(
        after(&a, "-qmp"),
        ["unix:/run/vm,,1/qmp.sock,server=on,wait=off"]
    );
    assert_eq!(after(&a, "-pidfile"), ["/run/vm,1/qemu.pid"]);
    assert_eq!(
        after(&a, "-chardev"),
        ["file,id=serial0,path=/run/vm,,1/console.log"]
    );
    assert_eq!(after(&a, "-kernel"), ["/k/vmlinuz"]);
    assert_eq!(after(&a, "-initrd"), ["/k/initrd.gz"]);
    assert_eq!(after(&a, "-append"), ["console=ttyS0"]);
    assert_eq!(
        after(&a, "-device"),
        [
            "pcie-root-port,id=hp0,chassis=1,bus=pcie.0",
            "pcie-root-port,id=hp1,chassis=2,bus=pcie.0"
        ]
    );
}

#[test]
fn kvm_uses_the_host_cpu() {
    let mut c = cfg();
    c.accel = Accel::Kvm;
    let a = argv(&c);
    assert_eq!(after(&a, "-accel"), ["kvm"]);
    assert_eq!(after(&a, "-cpu"), ["host"]);
}

#[test]
fn disks_and_nics() {
    let mut c = cfg();
    c.boot = Boot::Disk;
    c.hotplug_ports = 0;
    c.disks = vec![
        Disk {
            id: "root".into(),
            path: "/d/root.qcow2".into(),
            format: DiskFormat::Qcow2,
            read_only: false,
        },
        Disk {
            id: "data".into(),
            path: "/d/a,b.img".into(),
            format: DiskFormat::Raw,
            read_only: true,
        },
    ];
    c.nics = vec![
        Nic::User {
            id: "eth0".into(),
            mac: Some("52:54:00:12:34:56".into()),
            forwards: vec![
                parse_forward("2222:22").unwrap(),
                parse_forward("0.0.0.0:8080:80").unwrap(),
            ],
        },
        Nic::Tap {
            id: "eth1".into(),
            mac: None,
            ifname: "kvmbox-tap0".into(),
        },
    ];
    let a = argv(&c);
    assert_eq!(
        after(&a, "-blockdev"),
        [
            "driver=qcow2,node-name=blk-root,read-only=off,file.driver=file,file.filename=/d/root.qcow2",
            "driver=raw,node-name=blk-data,read-only=on,file.driver=file,file.filename=/d/a,,b.img",
        ]
    );
    assert_eq!(
        after(&a, "-netdev"),
        [
            "user,id=net-eth0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:0.0.0.0:8080-:80",
            "tap,id=net-eth1,fd=3",
        ]
    );
    assert_eq!(
        after(&a, "-device"),
        [
            "virtio-blk-pci,id=disk-root,drive=blk-root,bootindex=0",
            "virtio-blk-pci,id=disk-data,drive=blk-data",
            "virtio-net-pci,id=nic-eth0,netdev=net-eth0,romfile=,mac=52:54:00:12:34:56",
            "virtio-net-pci,id=nic-eth1,netdev=net-eth1,romfile=",
        ]
    );
    assert!(after(&a, "-kernel").is_empty());
}

#[test]
fn bad_input_is_refused() {
    let mut c = cfg();
    c.cpus = 0;
    assert_eq!(validate(&c), Err(Error::Cpus(0)));
    c.cpus = 256;
    assert_eq!(validate(&c), Err(Error::Cpus(256)));

    for name in ["", "-a", "a-", "Web", "a_b", "a.b", &"x".repeat(64)] {
        let mut c = cfg();
        c.name = name.to_string();
        assert!(matches!(validate(&c), Err(Error::Name(_))), "{name}");
    }
    let mut c = cfg();
    c.uuid = "not-a-uuid".into();
    assert!(matches!(validate(&c), Err(Error::Uuid(_))));

    let mut c = cfg();
    c.boot = Boot::Kernel {
        kernel: "relative/vmlinuz".into(),
        initrd: None,
        cmdline: String::new(),
    };
    assert!(matches!(
        validate(&c),
        Err(Error::Path { what: "kernel", .. })
    ));
    c.boot = Boot::Kernel {
        kernel: "/k\n/x".into(),
        initrd: None,
        cmdline: String::new(),
    };
    assert!(matches!(validate(&c), Err(Error::Path { .. })));
    c.boot = Boot::Kernel {
        kernel: "/k".into(),
        initrd: None,
        cmdline: "a\nb".into(),
    };
    assert!(matches!(validate(&c), Err(Error::Value { .. })));

    let mut c = cfg();
    let d = Disk {
        id: "data".into(),
        path: "/d".into(),
        format: DiskFormat::Raw,
        read_only: false,
    };
    c.disks = vec![d.clone(), d];
    assert_eq!(validate(&c), Err(Error::DuplicateId("data".into())));

    let mut c = cfg();
    c.nics = vec![Nic::Tap {
        id: "eth0".into(),
        mac: None,
        ifname: "br0,script=/x".into(),
    }];
    assert!(matches!(validate(&c), Err(Error::Value { .. })));
    c.nics = vec![Nic::User {
        id: "eth0".into(),
        mac: Some("zz".into()),
        forwards: vec![],
    }];
    assert!(matches!(validate(&c), Err(Error::Value { .. })));

    let mut c = cfg();
    c.boot = Boot::Disk;
    assert!(validate(&c).is_err());
}

#[test]
fn forwards() {
    let f = |addr: [u8; 4], host, guest| Forward {
        addr: addr.into(),
        host,
        guest,
    };
    // Loopback unless an address is given.
    assert_eq!(parse_forward("2222:22"), Ok(f([127, 0, 0, 1], 2222, 22)));
    assert_eq!(
        parse_forward("192.0.2.7:8080:80"),
        Ok(f([192, 0, 2, 7], 8080, 80))
    );
    assert_eq!(parse_forward("0.0.0.0:1:2"), Ok(f([0, 0, 0, 0], 1, 2)));
    for bad in [
        "22",
        "0:22",
        "22:0",
        "a:b",
        "70000:1",
        "1:2:3",
        ":1:2",
        "host:1:2",
        "1.2.3.4:5",
    ] {
        assert_eq!(parse_forward(bad), Err(Error::Forward(bad.into())), "{bad}");
    }
    for v6 in ["[::1]:2222:22", "::1:2222:22"] {
        let e = parse_forward(v6).unwrap_err();
        assert!(e.to_string().contains("IPv4 addresses only"), "{e}");
    }
}
