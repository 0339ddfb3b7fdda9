#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a failed test should panic"
)]
use super::*;

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#;

/// A fake QEMU: sends the greeting, then for each command received runs
/// `script` which returns the lines to send back.
fn fake(
    script: impl Fn(&Value) -> Vec<String> + Send + 'static,
) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        let (mut s, _) = listener.accept().unwrap();
        writeln!(s, "{GREETING}").unwrap();
        let reader = std::io::BufReader::new(s.try_clone().unwrap());
        for line in reader.lines() {
            let Ok(line) = line else { return };
            let cmd: Value = serde_json::from_str(&line).unwrap();
            for out in script(&cmd) {
                if s.write_all(out.as_bytes()).is_err() {
                    return;
                }
            }
        }
    });
    (dir, path)
}

fn reply(cmd: &Value, ret: &str) -> String {
    format!("{{\"return\": {ret}, \"id\": {}}}\n", cmd["id"])
}

async fn ready(path: &Path) -> Qmp<Ready> {
    Qmp::connect(path, Duration::from_secs(2))
        .await
        .unwrap()
        .negotiate()
        .await
        .unwrap()
}

#[test]
fn negotiates_and_queues_events_between_replies() {
    let (_d, path) = fake(|cmd| match cmd["execute"].as_str().unwrap() {
        "system_powerdown" => vec![
            "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"POWERDOWN\"}\n"
                .into(),
            reply(cmd, "{}"),
        ],
        "query-status" => vec![reply(
            cmd,
            r#"{"status": "running", "singlestep": false, "running": true}"#,
        )],
        _ => vec![reply(cmd, "{}")],
    });
    smol::block_on(async {
        let pending = Qmp::connect(&path, Duration::from_secs(2)).await.unwrap();
        assert_eq!(pending.version(), "7.2.22");
        let mut q = pending.negotiate().await.unwrap();
        q.system_powerdown().await.unwrap();
        assert_eq!(
            q.query_status().await.unwrap(),
            Status {
                running: true,
                state: "running".into()
            }
        );
        let ev = q.take_events();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].name, "POWERDOWN");
        assert!(q.take_events().is_empty());
    });
}

#[test]
fn command_errors_are_input_faults() {
    let (_d, path) = fake(|cmd| {
        match cmd["execute"].as_str().unwrap() {
        "device_del" => vec![format!(
            "{{\"error\": {{\"class\": \"DeviceNotFound\", \"desc\": \"Device 'x' not found\"}}, \"id\": {}}}\n",
            cmd["id"]
        )],
        _ => vec![reply(cmd, "{}")],
    }
    });
    smol::block_on(async {
        let mut q = ready(&path).await;
        let e = q.device_del("x").await.unwrap_err();
        assert_eq!(e.fault(), Fault::Input);
        assert_eq!(
            e.to_string(),
            "QEMU refused device_del: Device 'x' not found"
        );
    });
}

#[test]
fn waits_for_a_matching_event_keeping_others() {
    let (_d, path) = fake(|cmd| {
        match cmd["execute"].as_str().unwrap() {
        "device_del" => vec![
            reply(cmd, "{}"),
            "{\"event\": \"DEVICE_DELETED\", \"data\": {\"path\": \"/machine/peripheral/disk-a/virtio-backend\"}}\n".into(),
            "{\"event\": \"RTC_CHANGE\", \"data\": {}}\n".into(),
            "{\"event\": \"DEVICE_DELETED\", \"data\": {\"device\": \"disk-a\", \"path\": \"/machine/peripheral/disk-a\"}}\n".into(),
        ],
        _ => vec![reply(cmd, "{}")],
    }
    });
    smol::block_on(async {
        let mut q = ready(&path).await;
        q.device_del("disk-a").await.unwrap();
        let e = q
            .wait_event(Duration::from_secs(2), "DEVICE_DELETED", |e| {
                e.name == "DEVICE_DELETED" && e.data["device"] == "disk-a"
            })
            .await
            .unwrap();
        assert_eq!(e.data["path"], "/machine/peripheral/disk-a");
        let rest: Vec<String> = q.take_events().into_iter().map(|e| e.name).collect();
        assert_eq!(rest, ["DEVICE_DELETED", "RTC_CHANGE"]);
    });
}

#[test]
fn silence_is_a_timeout_not_a_hang() {
    let (_d, path) = fake(|cmd| match cmd["execute"].as_str().unwrap() {
        "query-status" => vec![],
        _ => vec![reply(cmd, "{}")],
    });
    smol::block_on(async {
        let mut q = Qmp::connect(&path, Duration::from_millis(300))
            .await
            .unwrap()
            .negotiate()
            .await
            .unwrap();
        let e = q.query_status().await.unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        assert_eq!(e.fault(), Fault::Peer);
        let e = q
            .wait_event(Duration::from_millis(100), "SHUTDOWN", |_| false)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
    });
}

#[test]
fn garbage_and_huge_lines_are_refused() {
    let (_d, path) = fake(|cmd| match cmd["execute"].as_str().unwrap() {
        "query-status" => vec!["not json\n".into()],
        "query-pci" => vec!["x".repeat(MAX_LINE + 10)],
        _ => vec![reply(cmd, "{}")],
    });
    smol::block_on(async {
        let mut q = ready(&path).await;
        assert!(matches!(
            q.query_status().await.unwrap_err(),
            Error::Protocol(_)
        ));
        assert!(matches!(
            q.query_pci().await.unwrap_err(),
            Error::LineTooLong
        ));
    });
}

#[test]
fn no_greeting_or_no_socket() {
    let dir = tempfile::tempdir().unwrap();
    smol::block_on(async {
        let e = Qmp::connect(&dir.path().join("none.sock"), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Connect { .. }));
        assert_eq!(e.fault(), Fault::Host);
    });
    let (_d, path) = fake(|_| vec![]);
    // A peer that closes after a non-QMP first line.
    let path2 = path.with_file_name("other.sock");
    let l = std::os::unix::net::UnixListener::bind(&path2).unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"{\"hello\": 1}\n").unwrap();
    });
    smol::block_on(async {
        let e = Qmp::connect(&path2, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Protocol(_)), "{e}");
    });
}

#[test]
fn quit_accepts_a_closed_socket() {
    let (_d, path) = fake(|cmd| match cmd["execute"].as_str().unwrap() {
        "quit" => vec![reply(cmd, "{}")],
        _ => vec![reply(cmd, "{}")],
    });
    smol::block_on(async {
        let mut q = ready(&path).await;
        q.quit().await.unwrap();
    });
}
