//! Commands from MQTT to a device on a pty, as a LAN client sends them: the exact bytes on the wire
//! (checksums included), the result on the result topic, the ACL deciding who may send them, bad
//! payloads refused with nothing written, and concurrent commands never interleaved.

use std::time::Duration;

use rumqttc::QoS;
use tokio::io::AsyncReadExt;

use crate::support::*;

fn yaml(device: &std::path::Path, port: u16) -> String {
    format!(
        r##"
gateway: {{ name: gw }}
broker:
  listeners: [{{ bind: "127.0.0.1:{port}", allow_anonymous: false }}]
  users: [{{ username: admin, password: "p" }}, {{ username: viewer, password: "p" }}]
  acl:
    - {{ user: admin, subscribe: ["#"], publish: ["gw/+/set/#"] }}
    - {{ user: viewer, subscribe: ["#"] }}
ports:
  - name: co2
    device: {device}
    framing: {{ type: fixed, length: 9, header: "FF 86" }}
    checksum: {{ type: sum8_neg, start: 1 }}
    decoder: {{ type: binary, fields: [{{ name: co2, at: 2, type: u16 }}] }}
    commands:
      - {{ name: zero, hex: "FF 01 87 00 00 00 00 00", checksum: {{ type: sum8_neg, start: 1 }} }}
      - name: range
        send: [{{ hex: "FF 01 99 00 00 00" }}, {{ field: value, type: u16 }}]
        checksum: {{ type: sum8_neg, start: 1 }}
      - {{ name: read, hex: "FF 01 86 00 00 00 00 00 79", reply: {{ timeout: 2s, starts_with: "FF 86" }} }}
      - {{ name: note, text: "NOTE {{text}}\r\n" }}
maps:
  - {{ port: co2, topic: "gw/co2/{{field}}" }}
"##,
        device = device.display()
    )
}

async fn start_gateway(device: &std::path::Path) -> (ser2mqtt::gateway::Gateway, std::net::SocketAddr) {
    // A port picked free can be taken before the gateway binds it: try again with another.
    for _ in 0..5 {
        let port = free_port();
        if let Ok(gw) = ser2mqtt::gateway::Gateway::start(config_from(&yaml(device, port))).await {
            wait_for("the port opened", || gw.stats()[0].1.opens.load(std::sync::atomic::Ordering::Relaxed) > 0).await;
            let a = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            return (gw, a);
        }
    }
    panic!("no free port for the listener");
}

async fn client(a: std::net::SocketAddr, user: &str) -> Subscriber {
    let mut o = options(a, &format!("{user}-{}", fastrand::u32(..)));
    o.set_credentials(user, "p");
    subscribe_with(o, &[("gw/co2/#", QoS::AtLeastOnce)]).await.expect("connect")
}

/// The next `n` bytes the gateway wrote to the device, or what came within `wait`.
async fn written(p: &mut Pty, n: usize, wait: Duration) -> Vec<u8> {
    let mut buf = vec![0; n];
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + wait;
    while got < n {
        match tokio::time::timeout_at(deadline, p.master.read(&mut buf[got..])).await {
            Ok(Ok(k)) if k > 0 => got += k,
            _ => break,
        }
    }
    buf.truncate(got);
    buf
}

fn checked(mut f: Vec<u8>) -> Vec<u8> {
    let sum = f[1..].iter().fold(0u8, |a, b| a.wrapping_add(*b)).wrapping_neg();
    f.push(sum);
    f
}

async fn result(sub: &mut Subscriber, command: &str) -> serde_json::Value {
    let got = sub.next_on(&format!("gw/co2/result/{command}")).await;
    assert_eq!(got.qos, QoS::AtLeastOnce);
    serde_json::from_str(&got.payload).unwrap()
}

#[tokio::test]
async fn commands_write_exact_bytes_and_publish_their_result() {
    let mut p = pty();
    let (gw, a) = start_gateway(&p.path).await;
    let admin = client(a, "admin").await;
    let mut sub = client(a, "viewer").await;

    admin.client.publish("gw/co2/set/zero", QoS::AtLeastOnce, false, r#"{"correlation":"c1"}"#).await.unwrap();
    assert_eq!(written(&mut p, 9, WAIT).await, checked(vec![0xFF, 0x01, 0x87, 0, 0, 0, 0, 0]));
    assert_eq!(result(&mut sub, "zero").await, serde_json::json!({"command":"zero","correlation":"c1","result":"ok"}));

    // A binary field from a plain payload, encoded as the datasheet's u16, checksum after it.
    admin.client.publish("gw/co2/set/range", QoS::AtLeastOnce, false, "5000").await.unwrap();
    assert_eq!(written(&mut p, 9, WAIT).await, [0xFF, 0x01, 0x99, 0, 0, 0, 0x13, 0x88, 0xCB]);
    assert_eq!(result(&mut sub, "range").await["result"], "ok");

    // An ASCII template filled from a JSON field.
    admin.client.publish("gw/co2/set/note", QoS::AtLeastOnce, false, r#"{"text":"hello"}"#).await.unwrap();
    assert_eq!(written(&mut p, 12, WAIT).await, b"NOTE hello\r\n");
    assert_eq!(result(&mut sub, "note").await["result"], "ok");

    // With a reply: `ok` once the device answered, with the answer; the answer is a reading too.
    admin.client.publish("gw/co2/set/read", QoS::AtLeastOnce, false, "").await.unwrap();
    assert_eq!(written(&mut p, 9, WAIT).await, [0xFF, 0x01, 0x86, 0, 0, 0, 0, 0, 0x79]);
    p.write(&checked(vec![0xFF, 0x86, 0x01, 0x9A, 0x40, 0, 0, 0])).await;
    // The reading and the result, in either order (the command itself and `online` come too).
    let (mut reading, mut r) = (None, None);
    while reading.is_none() || r.is_none() {
        let g = sub.next_on("gw/co2/").await;
        match g.topic.as_str() {
            "gw/co2/co2" => reading = Some(g.payload),
            "gw/co2/result/read" => r = Some(serde_json::from_str::<serde_json::Value>(&g.payload).unwrap()),
            _ => {}
        }
    }
    assert_eq!(reading.as_deref(), Some("410"));
    let r = r.unwrap();
    assert_eq!((r["result"].as_str(), r["reply"].as_str()), (Some("ok"), Some("FF 86 01 9A 40 00 00 00 9F")));
    gw.shutdown().await;
}

#[tokio::test]
async fn bad_payloads_and_clients_the_acl_refuses_write_nothing() {
    let mut p = pty();
    let (gw, a) = start_gateway(&p.path).await;
    let admin = client(a, "admin").await;
    let viewer = client(a, "viewer").await;
    let mut sub = client(a, "admin").await;

    for (payload, reason) in [
        ("warm", "`value` is `warm`, not a number"),
        ("70000", "`value` = 70000 does not fit u16 (0..=65535)"),
        (r#"{"range": 5000}"#, "the payload has no `value` (it has: range)"),
    ] {
        admin.client.publish("gw/co2/set/range", QoS::AtLeastOnce, false, payload).await.unwrap();
        let r = result(&mut sub, "range").await;
        assert_eq!((r["result"].as_str(), r["reason"].as_str()), (Some("error"), Some(reason)), "{payload}");
    }
    // The ACL lets `viewer` subscribe only: its command is dropped before the gateway sees it.
    viewer.client.publish("gw/co2/set/zero", QoS::AtLeastOnce, false, "").await.unwrap();
    assert_eq!(written(&mut p, 9, Duration::from_millis(700)).await, b"", "nothing reaches the device");
    assert!(sub.drain_on("gw/co2/result/", Duration::from_millis(300)).await.is_empty());
    gw.shutdown().await;
}

#[tokio::test]
async fn concurrent_commands_are_written_whole_one_after_another() {
    let mut p = pty();
    let (gw, a) = start_gateway(&p.path).await;
    let mut senders = Vec::new();
    for _ in 0..4 {
        senders.push(client(a, "admin").await);
    }
    let mut sub = client(a, "viewer").await;
    let values = [1000u16, 2000, 5000, 10000];
    let sends = senders
        .iter()
        .zip(values)
        .map(|(s, v)| s.client.publish("gw/co2/set/range", QoS::AtLeastOnce, false, v.to_string()));
    futures::future::join_all(sends).await;
    let wire = written(&mut p, 36, WAIT).await;
    let mut seen: Vec<u16> = wire
        .chunks(9)
        .map(|c| {
            assert_eq!(&c[..6], [0xFF, 0x01, 0x99, 0, 0, 0], "a command starts where the last one ended: {wire:02X?}");
            assert_eq!(c[8], c[1..8].iter().fold(0u8, |a, b| a.wrapping_add(*b)).wrapping_neg());
            u16::from_be_bytes([c[6], c[7]])
        })
        .collect();
    seen.sort();
    assert_eq!(seen, values);
    for _ in 0..4 {
        assert_eq!(result(&mut sub, "range").await["result"], "ok");
    }
    gw.shutdown().await;
}
