//! The daemon's lifecycle: the systemd notify/watchdog protocol on a socket the test owns, and reloads
//! of the configuration file (bad files kept out, changed ports restarted, unchanged ports untouched).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::QoS;
use ser2mqtt::gateway::Gateway;
use ser2mqtt::supervisor::{self, Notifier, Supervision};
use tokio::net::UnixDatagram;

use crate::support::*;

fn yaml(a: &Path, topic: &str, extra_port: Option<&Path>) -> String {
    let mut y = format!(
        r#"
gateway: {{ name: gw }}
broker: {{ listeners: [{{ bind: "127.0.0.1:0" }}] }}
ports:
  - name: a
    device: {}
    framing: {{ type: lines }}
    decoder: {{ type: csv, columns: [n] }}
"#,
        a.display()
    );
    if let Some(b) = extra_port {
        y.push_str(&format!(
            "  - name: b\n    device: {}\n    framing: {{ type: lines }}\n    decoder: {{ type: csv, columns: [n] }}\n",
            b.display()
        ));
    }
    y.push_str(&format!("maps:\n  - {{ port: a, topic: \"{topic}/{{field}}\", qos: 1 }}\n"));
    if extra_port.is_some() {
        y.push_str("  - { port: b, topic: \"b/{field}\", qos: 1 }\n");
    }
    y
}

async fn next_state(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(WAIT, sock.recv(&mut buf)).await.expect("a notification in time").unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn ready_then_keepalives_while_healthy_none_once_the_broker_dies_and_stopping_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let p = pty();
    let gw = Gateway::start(config_from(&yaml(&p.path, "a", None))).await.unwrap();
    let broker = gw.broker();
    let sup = Supervision {
        config_path: None,
        notifier: Notifier::to(path.to_str().unwrap()).unwrap(),
        watchdog: Some(Duration::from_millis(400)),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(supervisor::supervise(gw, sup, async {
        let _ = stop_rx.await;
    }));

    assert!(next_state(&sock).await.starts_with("READY=1"));
    for _ in 0..3 {
        assert_eq!(next_state(&sock).await, "WATCHDOG=1");
    }
    // The engine dies under a running gateway: no more keep-alives, so systemd would restart us.
    broker.close().await;
    let mut buf = [0u8; 256];
    let mut after = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
        after.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // One keep-alive may already have been on its way when the broker was closed.
    assert!(after.iter().filter(|s| *s == "WATCHDOG=1").count() <= 1, "keep-alives went on: {after:?}");

    stop_tx.send(()).unwrap();
    assert_eq!(next_state(&sock).await, "STOPPING=1");
    task.await.unwrap();
}

/// A gateway started from `ser2mqtt.yaml` in its own directory (one port `a`, maps under `a/`), with a
/// subscriber to everything.
struct FromFile {
    _dir: tempfile::TempDir,
    file: std::path::PathBuf,
    p: Pty,
    gw: Gateway,
    sub: Subscriber,
}

async fn from_file() -> FromFile {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ser2mqtt.yaml");
    let p = pty();
    std::fs::write(&file, yaml(&p.path, "a", None)).unwrap();
    let gw = start(ser2mqtt::config::load(&file).unwrap()).await;
    let sub = subscribe(addr(&gw), &[("#", QoS::AtLeastOnce)]).await;
    FromFile { _dir: dir, file, p, gw, sub }
}

#[tokio::test]
async fn a_bad_file_is_refused_and_the_running_configuration_keeps_publishing() {
    let FromFile { _dir, file, mut p, mut gw, mut sub } = from_file().await;

    std::fs::write(&file, yaml(&p.path, "a", None).replace("type: lines", "type: line")).unwrap();
    let refused = supervisor::reload(&mut gw, &file).await;
    assert!(
        refused.as_ref().is_err_and(|why| why.contains("ser2mqtt.yaml")),
        "a bad file must not be applied: {refused:?}"
    );
    p.write(b"7\n").await;
    assert_eq!(sub.next_on("a/").await.payload, "7");
    assert_eq!(gw.stats()[0].1.opens.load(Ordering::Relaxed), 1, "the port was not touched");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_good_file_applies_new_maps_and_ports_without_losing_readings_on_unchanged_ports() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ser2mqtt.yaml");
    let (mut a, mut b) = (pty(), pty());
    std::fs::write(&file, yaml(&a.path, "old", None)).unwrap();
    let mut gw = start(ser2mqtt::config::load(&file).unwrap()).await;
    let mut sub =
        subscribe(addr(&gw), &[("old/#", QoS::AtLeastOnce), ("new/#", QoS::AtLeastOnce), ("b/#", QoS::AtLeastOnce)])
            .await;

    // Port a keeps sending through the reload; the map now publishes it under new/.
    let a_path = a.path.clone();
    let writer = tokio::spawn(async move {
        for i in 0..200 {
            a.write(format!("{i}\n").as_bytes()).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        a
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(&file, yaml(&a_path, "new", Some(&b.path))).unwrap();
    supervisor::reload(&mut gw, &file).await.unwrap();
    let _a = writer.await.unwrap();

    let got = sub.take_on("", 200).await;
    let numbers: Vec<String> = got.iter().map(|g| g.payload.clone()).collect();
    let expected: Vec<String> = (0..200).map(|i| i.to_string()).collect();
    assert_eq!(numbers, expected, "every reading of the unchanged port arrived, in order");
    assert!(got.first().unwrap().topic.starts_with("old/") && got.last().unwrap().topic.starts_with("new/"));
    let stats = gw.stats();
    assert_eq!(stats[0].1.opens.load(Ordering::Relaxed), 1, "port a was not reopened");

    b.write(b"5\n").await;
    assert_eq!(sub.next_on("b/").await.payload, "5", "the new port runs");
    gw.shutdown().await;
}

#[tokio::test]
async fn sighup_reloads_the_file_of_a_running_binary() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ser2mqtt.yaml");
    let mut p = pty();
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let dev = p.path.clone();
    let write = |topic: &str| std::fs::write(&file, yaml(&dev, topic, None).replace("127.0.0.1:0", &bind)).unwrap();
    write("before");
    let child = run_binary(&file);
    let a: std::net::SocketAddr = bind.parse().unwrap();
    wait_listening(a).await;
    let mut sub = subscribe(a, &[("before/#", QoS::AtLeastOnce), ("after/#", QoS::AtLeastOnce)]).await;
    p.write(b"1\n").await;
    assert_eq!(sub.next_on("before/").await.payload, "1");

    let hup = |pid: u32| Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap();
    // A broken file first: refused, the process keeps running with what it had.
    std::fs::write(&file, "ports: [").unwrap();
    assert!(hup(child.0.id()).success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.write(b"2\n").await;
    assert_eq!(sub.next_on("before/").await.payload, "2");

    write("after");
    assert!(hup(child.0.id()).success());
    // Keep writing until the new map is in place (the signal is handled asynchronously).
    let mut n = 3;
    let got = loop {
        p.write(format!("{n}\n").as_bytes()).await;
        n += 1;
        if let Some(g) = sub.next_within(Duration::from_millis(200)).await {
            if g.topic.starts_with("after/") {
                break g;
            }
        }
        assert!(n < 50, "the reloaded map never took effect");
    };
    assert_eq!(got.topic, "after/n");
}

#[tokio::test]
async fn a_port_whose_settings_changed_is_restarted_on_its_new_device() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ser2mqtt.yaml");
    let (mut first, mut second) = (pty(), pty());
    std::fs::write(&file, yaml(&first.path, "a", None)).unwrap();
    let mut gw = start(ser2mqtt::config::load(&file).unwrap()).await;
    let mut sub = subscribe(addr(&gw), &[("a/#", QoS::AtLeastOnce)]).await;
    first.write(b"1\n").await;
    assert_eq!(sub.next_on("a/").await.payload, "1");

    std::fs::write(&file, yaml(&second.path, "a", None)).unwrap();
    supervisor::reload(&mut gw, &file).await.unwrap();
    wait_for("the port reopened on the new device", || gw.stats()[0].1.opens.load(Ordering::Relaxed) == 1).await;
    second.write(b"2\n").await;
    assert_eq!(sub.next_on("a/").await.payload, "2");
    first.write(b"3\n").await; // the old device is no longer read
    assert_eq!(sub.next_within(Duration::from_millis(300)).await, None);
    gw.shutdown().await;
}

#[tokio::test]
async fn renaming_the_gateway_on_reload_moves_nothing_and_asks_for_a_restart() {
    let FromFile { _dir, file, mut p, mut gw, mut sub } = from_file().await;

    std::fs::write(&file, yaml(&p.path, "renamed", None).replace("name: gw", "name: other")).unwrap();
    let refused = supervisor::reload(&mut gw, &file).await;
    assert!(refused.as_ref().is_err_and(|why| why.contains("restart")), "{refused:?}");
    assert_eq!(gw.stats()[0].1.opens.load(Ordering::Relaxed), 1, "the port was not restarted");
    // The old maps still run, and nothing appears under the new name.
    p.write(b"7\n").await;
    let got = sub.next_on("a/").await;
    assert_eq!(got.payload, "7");
    let mut seen = Vec::new();
    while let Some(m) = sub.next_within(Duration::from_millis(300)).await {
        seen.push(m.topic);
    }
    assert!(!seen.iter().any(|t| t.starts_with("other/") || t.starts_with("renamed/")), "{seen:?}");
    gw.shutdown().await;
}
