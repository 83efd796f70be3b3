//! Port availability as a subscriber sees it (retained `online`/`offline`), reopening after the device
//! goes away, and a device that is missing when the gateway starts.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::QoS;
use ser2mqtt::gateway::Gateway;

use crate::support::*;

fn yaml(device: &Path) -> String {
    format!(
        r#"
gateway: {{ name: gw }}
ports:
  - name: t
    device: {}
    framing: {{ type: lines }}
    decoder: {{ type: csv, columns: [v] }}
    silence_timeout: 1s
    reopen_backoff_max: 500ms
maps:
  - {{ port: t, topic: "x/{{field}}", qos: 1 }}
"#,
        device.display()
    )
}

/// Which pty a slave path names now: its device number and the time devpts created its inode. The
/// path alone is not enough: tests run in parallel in this process, and the kernel hands a freed pts
/// number to the next test's pty at once, under the same path and device number.
fn pty_identity(path: &Path) -> (u64, i64, i64) {
    let m = std::fs::metadata(path).expect("stat the pty slave");
    (m.rdev(), m.ctime(), m.ctime_nsec())
}

/// Open file descriptors of this process on the pty that `identity` names.
fn fds_on(identity: (u64, i64, i64)) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::metadata(e.ok()?.path()).ok())
        .filter(|m| (m.rdev(), m.ctime(), m.ctime_nsec()) == identity)
        .count()
}

#[tokio::test]
async fn offline_when_the_pty_closes_and_online_again_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("by-id-sensor");
    let first = pty();
    std::os::unix::fs::symlink(&first.path, &link).unwrap();
    let gw = start(config_from(&yaml(&link))).await;
    let mut sub = subscribe(addr(&gw), &[("gw/t/availability", QoS::AtLeastOnce), ("x/#", QoS::AtLeastOnce)]).await;
    let mut first = first;
    first.write(b"1\n").await;
    let a = sub.next_on("gw/t/availability").await;
    assert_eq!(a.payload, "online");
    assert_eq!(sub.next_on("x/").await.payload, "1");

    // Unplug: both ends of the pty go away.
    let first_pty = pty_identity(&first.path);
    assert!(fds_on(first_pty) >= 2, "the gateway and the test's slave end both hold the first pty");
    drop(first);
    assert_eq!(sub.next_on("gw/t/availability").await.payload, "offline");
    wait_for("the gateway closed its fd on the lost device", || fds_on(first_pty) == 0).await;

    // Plug back in: the stable link now points at a new pty, as udev would re-point /dev/serial/by-id.
    let mut second = pty();
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&second.path, &link).unwrap();
    wait_for("reopened", || gw.stats()[0].1.opens.load(Ordering::Relaxed) >= 2).await;
    second.write(b"2\n").await;
    assert_eq!(sub.next_on("gw/t/availability").await.payload, "online");
    assert_eq!(sub.next_on("x/").await.payload, "2");

    // A late subscriber sees the current state, retained.
    let mut late = subscribe(addr(&gw), &[("gw/t/availability", QoS::AtLeastOnce)]).await;
    let now = late.next_on("gw/t/availability").await;
    assert_eq!((now.payload.as_str(), now.retain), ("online", true));
    gw.shutdown().await;
}

#[tokio::test]
async fn offline_when_the_sensor_falls_silent() {
    let mut p = pty();
    let gw = start(config_from(&yaml(&p.path))).await;
    let mut sub = subscribe(addr(&gw), &[("gw/t/availability", QoS::AtLeastOnce)]).await;
    p.write(b"1\n").await;
    assert_eq!(sub.next_on("gw/t/availability").await.payload, "online");
    // silence_timeout is 1 s: no frames, so offline follows without the device closing.
    let off = sub.next_within(Duration::from_secs(5)).await.expect("offline after silence");
    assert_eq!(off.payload, "offline");
    p.write(b"2\n").await;
    assert_eq!(sub.next_on("gw/t/availability").await.payload, "online");
    gw.shutdown().await;
}

#[tokio::test]
async fn missing_device_at_start_is_retried_while_the_gateway_runs() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("not-plugged-in-yet");
    let gw = Gateway::start(config_from(&yaml(&link))).await.expect("starts without the device");
    let mut sub = subscribe(addr(&gw), &[("x/#", QoS::AtLeastOnce), ("gw/status", QoS::AtLeastOnce)]).await;
    assert_eq!(sub.next_on("gw/status").await.payload, "online", "the gateway is up although the port is not");
    // A port that never opened says so, as a lost one does.
    let mut avail = subscribe(addr(&gw), &[("gw/t/availability", QoS::AtLeastOnce)]).await;
    let got = avail.next_on("gw/t/availability").await;
    assert_eq!((got.payload.as_str(), got.retain), ("offline", true));
    wait_for("a few failed opens", || gw.stats()[0].1.open_failures.load(Ordering::Relaxed) >= 2).await;

    let mut p = pty();
    std::os::unix::fs::symlink(&p.path, &link).unwrap();
    wait_for("opened once it exists", || gw.stats()[0].1.opens.load(Ordering::Relaxed) >= 1).await;
    p.write(b"42\n").await;
    assert_eq!(sub.next_on("x/").await.payload, "42");
    assert_eq!(avail.next_on("gw/t/availability").await.payload, "online");
    gw.shutdown().await;
}

#[tokio::test]
async fn clean_shutdown_leaves_port_and_gateway_offline_retained() {
    let mut p = pty();
    let gw = start(config_from(&yaml(&p.path))).await;
    let a = addr(&gw);
    let mut sub = subscribe(a, &[("gw/#", QoS::AtLeastOnce)]).await;
    p.write(b"1\n").await;
    assert_eq!(sub.next_on("gw/t/availability").await.payload, "online");
    gw.shutdown().await;
    let mut seen = Vec::new();
    while let Some(g) = sub.next_within(Duration::from_secs(2)).await {
        if !g.topic.contains("/stats/") {
            seen.push((g.topic, g.payload));
        }
    }
    assert!(seen.contains(&("gw/t/availability".into(), "offline".into())), "{seen:?}");
    assert_eq!(seen.last(), Some(&("gw/status".into(), "offline".into())), "{seen:?}");
}

#[tokio::test]
async fn a_serial_device_server_over_tcp_is_read_and_reconnected() {
    use tokio::io::AsyncWriteExt;
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let device = format!("tcp://{}", server.local_addr().unwrap());
    let gw = Gateway::start(config_from(&yaml(Path::new(&device)))).await.unwrap();
    let mut sub = subscribe(addr(&gw), &[("x/#", QoS::AtLeastOnce), ("gw/t/availability", QoS::AtLeastOnce)]).await;
    let (mut conn, _) = tokio::time::timeout(WAIT, server.accept()).await.unwrap().unwrap();
    conn.write_all(b"1\n2\n").await.unwrap();
    assert_eq!(sub.next_on("gw/t/availability").await.payload, "online");
    assert_eq!(sub.take_on("x/", 2).await.iter().map(|g| g.payload.as_str()).collect::<Vec<_>>(), ["1", "2"]);
    // The device server drops the connection: offline, then the gateway connects again.
    drop(conn);
    assert_eq!(sub.next_on("gw/t/availability").await.payload, "offline");
    let (mut conn, _) = tokio::time::timeout(WAIT, server.accept()).await.unwrap().unwrap();
    conn.write_all(b"3\n").await.unwrap();
    assert_eq!(sub.next_on("x/").await.payload, "3");
    gw.shutdown().await;
}
