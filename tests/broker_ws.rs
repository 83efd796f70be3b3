//! MQTT over WebSocket listeners (what browser dashboards use) with a real WebSocket MQTT client
//! (rumqttc's): readings reach a `ws://` subscriber, its publishes reach TCP clients, and `wss://`
//! works with the listener's certificate.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

use crate::support::cloud::pki;
use crate::support::*;

fn yaml(device: &std::path::Path, listener: &str) -> String {
    format!(
        r#"
gateway: {{ name: gw }}
broker:
  listeners:
    - bind: "127.0.0.1:0"
    - {listener}
ports:
  - {{ name: a, device: {}, framing: {{ type: lines }}, decoder: {{ type: csv, columns: [n] }} }}
maps:
  - {{ port: a, topic: "sensors/{{field}}", retain: true }}
"#,
        device.display()
    )
}

/// A WebSocket client subscribed to `filter`; returns the client and the messages it gets.
async fn ws_subscriber(
    url: String,
    port: u16,
    transport: Transport,
    filter: &str,
) -> (AsyncClient, tokio::sync::mpsc::UnboundedReceiver<(String, String, bool)>) {
    let mut o = MqttOptions::new(format!("ws-{}", fastrand::u32(..)), url, port);
    o.set_transport(transport);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(o, 16);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(t) = subscribed_tx.take() {
                        let _ = t.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), String::from_utf8_lossy(&p.payload).into_owned(), p.retain));
                }
                Ok(_) => {}
                Err(e) => panic!("WebSocket client failed: {e}"),
            }
        }
    });
    tokio::time::timeout(WAIT, subscribed).await.expect("SUBACK over WebSocket in time").unwrap();
    (client, rx)
}

#[tokio::test]
async fn a_websocket_client_gets_readings_and_its_publishes_reach_tcp_clients() {
    let mut pty = pty();
    let gw = start(config_from(&yaml(&pty.path, r#"{ bind: "127.0.0.1:0", websocket: true }"#))).await;
    let (tcp, ws) = (gw.broker_addrs()[0], gw.broker_addrs()[1]);
    pty.write(b"1\n").await;
    let (client, mut rx) = ws_subscriber(format!("ws://{ws}/mqtt"), ws.port(), Transport::Ws, "sensors/#").await;
    let first = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(first, ("sensors/n".into(), "1".into(), true), "the retained reading, over WebSocket");
    pty.write(b"2\n").await;
    let live = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(live, ("sensors/n".into(), "2".into(), false));

    let mut sub = subscribe(tcp, &[("dash/#", QoS::AtLeastOnce)]).await;
    client.publish("dash/cmd", QoS::AtLeastOnce, false, "on").await.unwrap();
    assert_eq!(sub.next_on("dash/").await.payload, "on", "a browser's publish reaches a TCP client");
    gw.shutdown().await;
}

#[tokio::test]
async fn wss_serves_websocket_clients_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "gw");
    let mut pty = pty();
    let listener = format!(
        r#"{{ bind: "127.0.0.1:0", websocket: true, tls: {{ cert: {}, key: {} }} }}"#,
        pki.server_cert.display(),
        pki.server_key.display()
    );
    let gw = start(config_from(&yaml(&pty.path, &listener))).await;
    let wss = gw.broker_addrs()[1];
    pty.write(b"3\n").await;
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(&pki.ca).unwrap();
    for c in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let transport = Transport::wss_with_config(TlsConfiguration::Rustls(Arc::new(tls)));
    let (_client, mut rx) =
        ws_subscriber(format!("wss://localhost:{}/mqtt", wss.port()), wss.port(), transport, "sensors/#").await;
    let got = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(got, ("sensors/n".into(), "3".into(), true));
    gw.shutdown().await;
}
