//! Credentials and topic ACLs on the embedded broker, as real clients meet them: CONNACK and SUBACK
//! codes, and publishes that are refused without reaching anyone.

use std::time::Duration;

use rumqttc::{ConnectReturnCode, QoS, SubscribeReasonCode};

use crate::support::*;

fn yaml(device: &std::path::Path) -> String {
    // The admin's password is stored only as an argon2 hash, as `ser2mqtt hash-password` prints it.
    let admin_hash = ser2mqtt::local_broker::hash_password("admin-secret").unwrap();
    format!(
        r##"
gateway: {{ name: gw }}
broker:
  listeners:
    - bind: 127.0.0.1:0
  users:
    - {{ username: lan, password: "lan-secret" }}
    - {{ username: admin, password_hash: "{admin_hash}" }}
  acl:
    - {{ user: lan, subscribe: ["sensors/#", "gw/#"] }}
    - {{ user: admin, subscribe: ["#"], publish: ["commands/#"] }}
ports:
  - name: t
    device: {device}
    framing: {{ type: lines }}
    decoder: {{ type: csv, columns: [v] }}
maps:
  - {{ port: t, topic: "sensors/{{field}}", qos: 1 }}
"##,
        device = device.display()
    )
}

fn creds(addr: std::net::SocketAddr, user: &str, pass: &str) -> rumqttc::MqttOptions {
    let mut o = options(addr, &format!("{user}-{}", fastrand::u32(..)));
    o.set_credentials(user, pass);
    o
}

#[tokio::test]
async fn wrong_password_and_anonymous_get_connack_5_when_users_are_configured() {
    let p = pty();
    let gw = start(config_from(&yaml(&p.path))).await;
    let a = addr(&gw);
    let wrong = subscribe_with(creds(a, "lan", "guess"), &[]).await.err();
    assert_eq!(wrong, Some(ConnectReturnCode::NotAuthorized));
    let unknown = subscribe_with(creds(a, "mallory", "lan-secret"), &[]).await.err();
    assert_eq!(unknown, Some(ConnectReturnCode::NotAuthorized));
    let anonymous = subscribe_with(options(a, "anon"), &[]).await.err();
    assert_eq!(anonymous, Some(ConnectReturnCode::NotAuthorized));
    assert!(subscribe_with(creds(a, "lan", "lan-secret"), &[]).await.is_ok());
    // A hashed password: the right one connects, a near miss does not.
    assert!(subscribe_with(creds(a, "admin", "admin-secret"), &[]).await.is_ok());
    let near = subscribe_with(creds(a, "admin", "admin-secret "), &[]).await.err();
    assert_eq!(near, Some(ConnectReturnCode::NotAuthorized));
    gw.shutdown().await;
}

#[tokio::test]
async fn acl_grants_and_refuses_subscriptions_and_drops_forbidden_publishes() {
    let mut p = pty();
    let gw = start(config_from(&yaml(&p.path))).await;
    let a = addr(&gw);
    let lan = subscribe_with(
        creds(a, "lan", "lan-secret"),
        &[("sensors/#", QoS::AtLeastOnce), ("commands/#", QoS::AtLeastOnce)],
    )
    .await
    .unwrap();
    assert_eq!(lan.suback, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce), SubscribeReasonCode::Failure]);
    let mut watcher = subscribe_with(creds(a, "admin", "admin-secret"), &[("#", QoS::AtLeastOnce)]).await.unwrap();

    // LAN users may read sensors but not write there: the fake reading reaches nobody.
    lan.client.publish("sensors/v", QoS::AtLeastOnce, false, "999").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.write(b"21\n").await;
    let got = watcher.next_on("sensors/").await;
    assert_eq!(got.payload, "21", "the forbidden publish was delivered");
    // The admin may publish commands.
    watcher.client.publish("commands/reboot", QoS::AtLeastOnce, false, "now").await.unwrap();
    assert_eq!(watcher.next_on("commands/").await.payload, "now");
    gw.shutdown().await;
}

/// A gateway with two loopback listeners (`open` lets anonymous clients in), the given users and
/// ACL rules, and one port `t` publishing `sensors/{field}`.
fn acl_yaml(device: &std::path::Path, open: u16, closed: u16, acl: &str) -> String {
    format!(
        r##"
gateway: {{ name: gw, stats_interval: 1s }}
broker:
  listeners:
    - {{ bind: "127.0.0.1:{open}", allow_anonymous: true }}
    - {{ bind: "127.0.0.1:{closed}", allow_anonymous: false }}
  users:
    - {{ username: plus, password: "p" }}
    - {{ username: one, password: "p" }}
    - {{ username: admin, password: "p" }}
  acl:
{acl}
ports:
  - {{ name: t, device: {device}, framing: {{ type: lines }}, decoder: {{ type: csv, columns: [v] }} }}
maps:
  - {{ port: t, topic: "sensors/{{field}}", qos: 1 }}
"##,
        device = device.display()
    )
}

async fn start_on_free_ports(device: &std::path::Path, acl: &str) -> (ser2mqtt::gateway::Gateway, u16, u16) {
    // A port picked free can be taken before the gateway binds it: try again with new ones.
    for _ in 0..5 {
        let (open, closed) = (free_port(), free_port());
        if let Ok(gw) = ser2mqtt::gateway::Gateway::start(config_from(&acl_yaml(device, open, closed, acl))).await {
            return (gw, open, closed);
        }
    }
    panic!("no free ports for the listeners");
}

fn at(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test]
async fn a_granted_filter_cannot_be_widened_by_the_client() {
    let mut p = pty();
    let acl = r##"    - { user: plus, subscribe: ["+"] }
    - { user: one, subscribe: ["sensors/+"] }
    - { user: admin, subscribe: ["#", "$SYS/#"], publish: ["#"] }"##;
    let (gw, open, _) = start_on_free_ports(&p.path, acl).await;
    let a = at(open);
    let granted = |q| SubscribeReasonCode::Success(q);
    // `+` admits one level only: `#` and `+/#` would reach every topic.
    let plus = subscribe_with(
        creds(a, "plus", "p"),
        &[("#", QoS::AtMostOnce), ("+/#", QoS::AtMostOnce), ("+", QoS::AtMostOnce)],
    )
    .await
    .unwrap();
    assert_eq!(plus.suback, vec![SubscribeReasonCode::Failure, SubscribeReasonCode::Failure, granted(QoS::AtMostOnce)]);
    let mut one = subscribe_with(
        creds(a, "one", "p"),
        &[("sensors/#", QoS::AtLeastOnce), ("sensors/+/+", QoS::AtLeastOnce), ("sensors/+", QoS::AtLeastOnce)],
    )
    .await
    .unwrap();
    assert_eq!(one.suback, vec![SubscribeReasonCode::Failure, SubscribeReasonCode::Failure, granted(QoS::AtLeastOnce)]);
    // `$` topics are never reached through a wildcard, only by naming them.
    let admin = subscribe_with(creds(a, "admin", "p"), &[("$SYS/#", QoS::AtMostOnce), ("+/broker", QoS::AtMostOnce)])
        .await
        .unwrap();
    assert_eq!(admin.suback, vec![granted(QoS::AtMostOnce), granted(QoS::AtMostOnce)]);

    // What a subscriber with `sensors/+` receives: one level, nothing deeper.
    admin.client.publish("sensors/a/b/c", QoS::AtLeastOnce, false, "deep").await.unwrap();
    p.write(b"7\n").await;
    let got = one.next_on("sensors/").await;
    assert_eq!((got.topic.as_str(), got.payload.as_str()), ("sensors/v", "7"));
    assert!(one.drain_on("sensors/", Duration::from_millis(500)).await.is_empty());
    gw.shutdown().await;
}

#[tokio::test]
async fn deny_rules_win_and_anonymous_rules_hold_per_listener() {
    let mut p = pty();
    let acl = r##"    - { user: "*", subscribe: ["#"] }
    - { user: "*", deny: true, subscribe: ["secret/#"], publish: ["sensors/#"] }
    - { anonymous: true, listener: "127.0.0.1:OPEN", publish: ["lan/#"] }
    - { user: admin, subscribe: ["#"], publish: ["#"] }"##;
    // The anonymous rule names the first listener by its bind; fill in the port once it is known.
    let mut started = None;
    for _ in 0..5 {
        let (o, c) = (free_port(), free_port());
        let text = acl_yaml(&p.path, o, c, &acl.replace("OPEN", &o.to_string()));
        if let Ok(gw) = ser2mqtt::gateway::Gateway::start(config_from(&text)).await {
            started = Some((gw, o));
            break;
        }
    }
    let (gw, open) = started.expect("free ports");
    let a = at(open);
    let anon = subscribe_with(
        options(a, "anon"),
        &[
            ("#", QoS::AtMostOnce),
            ("sensors/+", QoS::AtMostOnce),
            ("secret/x", QoS::AtMostOnce),
            ("lan/#", QoS::AtMostOnce),
        ],
    )
    .await
    .unwrap();
    let ok = SubscribeReasonCode::Success(QoS::AtMostOnce);
    // `#` could receive a denied topic, so it is refused; the narrower filters are not.
    assert_eq!(anon.suback, vec![SubscribeReasonCode::Failure, ok, SubscribeReasonCode::Failure, ok]);

    // The deny covers the admin too: `#` would reach secret/, so the admin names what it watches.
    let watch = [("sensors/#", QoS::AtLeastOnce), ("lan/#", QoS::AtLeastOnce), ("gw/#", QoS::AtLeastOnce)];
    let mut admin = subscribe_with(creds(a, "admin", "p"), &watch).await.unwrap();
    // Denied for everyone, the admin's allow included: a deny wins.
    admin.client.publish("sensors/fake", QoS::AtLeastOnce, false, "x").await.unwrap();
    anon.client.publish("sensors/fake", QoS::AtLeastOnce, false, "y").await.unwrap();
    // Allowed: anonymous publishing under lan/ on this listener.
    anon.client.publish("lan/hello", QoS::AtLeastOnce, false, "hi").await.unwrap();
    let got = admin.next_on("lan/").await;
    assert_eq!(got.payload, "hi");
    p.write(b"5\n").await;
    let got = admin.next_on("sensors/").await;
    assert_eq!((got.topic.as_str(), got.payload.as_str()), ("sensors/v", "5"), "the denied publishes reached nobody");
    // The same anonymous client on the other listener: that listener refuses anonymous connects.
    let closed = gw.broker_addrs()[1];
    assert_eq!(subscribe_with(options(closed, "anon2"), &[]).await.err(), Some(ConnectReturnCode::NotAuthorized));

    // Refusals are counted in the broker's stats.
    // (The first report seen may predate the publishes; the next ones, a second apart, catch up.)
    loop {
        let stats = admin.next_on("gw/status/stats/broker").await;
        let v: serde_json::Value = serde_json::from_str(&stats.payload).unwrap();
        if v["publishes_refused"] == 2 {
            assert_eq!(v["subscriptions_refused"], 2, "{v}");
            break;
        }
        assert!(v["publishes_refused"].as_u64().unwrap() < 2, "{v}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn shared_subscriptions_split_readings_between_group_members() {
    let mut p = pty();
    let gw = start(config_from(&format!(
        "gateway: {{ name: gw }}\nports:\n  - {{ name: t, device: {}, framing: {{ type: lines }}, decoder: {{ type: csv, columns: [v] }} }}\nmaps:\n  - {{ port: t, topic: \"sensors/{{field}}\", qos: 1 }}\n",
        p.path.display()
    )))
    .await;
    let a = addr(&gw);
    let mut one = subscribe(a, &[("$share/workers/sensors/#", QoS::AtLeastOnce)]).await;
    let mut two = subscribe(a, &[("$share/workers/sensors/#", QoS::AtLeastOnce)]).await;
    assert_eq!(one.suback, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    for i in 0..40 {
        p.write(format!("{i}\n").as_bytes()).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 40 {
        tokio::select! {
            g = one.next_within(WAIT) => seen.push((1, g.expect("a reading in time").payload)),
            g = two.next_within(WAIT) => seen.push((2, g.expect("a reading in time").payload)),
        }
    }
    let mut values: Vec<u32> = seen.iter().map(|(_, v)| v.parse().unwrap()).collect();
    values.sort_unstable();
    assert_eq!(values, (0..40).collect::<Vec<_>>(), "each reading to exactly one member");
    assert!(seen.iter().any(|(w, _)| *w == 1) && seen.iter().any(|(w, _)| *w == 2), "both members get a share");
    assert!(one.drain_on("sensors/", Duration::from_millis(300)).await.is_empty());
    gw.shutdown().await;
}
