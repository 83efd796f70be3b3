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
