//! The broker's TLS listener with real clients: `mosquitto_sub --cafile` receives readings over TLS,
//! a client that trusts another CA is refused, and with `client_ca` a client needs a certificate that
//! CA signed.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::Ordering;

use crate::support::cloud::{pki, Pki};
use crate::support::*;

fn yaml(device: &std::path::Path, server: &Pki, client_ca: Option<&std::path::Path>) -> String {
    let client_ca = client_ca.map(|c| format!(", client_ca: {}", c.display())).unwrap_or_default();
    format!(
        r#"
gateway: {{ name: gw }}
broker:
  listeners:
    - bind: "127.0.0.1:0"
      tls: {{ cert: {}, key: {}{client_ca} }}
ports:
  - {{ name: a, device: {}, framing: {{ type: lines }}, decoder: {{ type: csv, columns: [n] }} }}
maps:
  - {{ port: a, topic: "sensors/{{field}}", retain: true }}
"#,
        server.server_cert.display(),
        server.server_key.display(),
        device.display()
    )
}

/// `mosquitto_sub` for one message on `sensors/n`: over TLS trusting `ca` (plain MQTT without),
/// presenting `client` (certificate, key) if given. Runs on a blocking thread.
async fn sub_once(port: u16, ca: Option<&Path>, client: Option<(&Path, &Path)>) -> Output {
    let mut cmd = Command::new("mosquitto_sub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "sensors/n", "-C", "1", "-W", "10"]);
    if let Some(ca) = ca {
        cmd.arg("--cafile").arg(ca);
    }
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    tokio::task::spawn_blocking(move || cmd.output().expect("mosquitto_sub (mosquitto-clients) is installed"))
        .await
        .unwrap()
}

#[tokio::test]
async fn readings_reach_a_tls_subscriber_and_a_client_trusting_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (server, other) = (pki(dir.path(), "gw"), pki(dir.path(), "other"));
    let mut pty = pty();
    let gw = start(config_from(&yaml(&pty.path, &server, None))).await;
    let port = addr(&gw).port();
    pty.write(b"42\n").await;
    let counters = gw.broker();
    wait_for("the reading is retained", || gw.stats()[0].1.frames.load(Ordering::Relaxed) == 1).await;

    let ok = sub_once(port, Some(&server.ca), None).await;
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "42\n");

    let refused = sub_once(port, Some(&other.ca), None).await;
    assert!(!refused.status.success(), "a server certificate from an unknown CA is refused by the client");
    assert!(refused.stdout.is_empty());
    // Plain MQTT on a TLS port: the handshake fails and nothing is answered.
    let plain = sub_once(port, None, None).await;
    assert!(!plain.status.success() && plain.stdout.is_empty());
    wait_for("failed handshakes counted", || counters.front_counters().tls_failures.load(Ordering::Relaxed) >= 2).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn with_client_ca_a_client_needs_a_certificate_that_ca_signed() {
    let dir = tempfile::tempdir().unwrap();
    let (server, other) = (pki(dir.path(), "gw"), pki(dir.path(), "other"));
    let mut pty = pty();
    let gw = start(config_from(&yaml(&pty.path, &server, Some(&server.ca)))).await;
    let port = addr(&gw).port();
    pty.write(b"7\n").await;
    wait_for("the reading is retained", || gw.stats()[0].1.frames.load(Ordering::Relaxed) == 1).await;

    let without = sub_once(port, Some(&server.ca), None).await;
    assert!(!without.status.success() && without.stdout.is_empty(), "no client certificate: refused");
    let foreign = sub_once(port, Some(&server.ca), Some((&other.client_cert, &other.client_key))).await;
    assert!(!foreign.status.success() && foreign.stdout.is_empty(), "a certificate another CA signed: refused");
    let with = sub_once(port, Some(&server.ca), Some((&server.client_cert, &server.client_key))).await;
    assert!(with.status.success(), "{}", String::from_utf8_lossy(&with.stderr));
    assert_eq!(String::from_utf8_lossy(&with.stdout), "7\n");
    gw.shutdown().await;
}
