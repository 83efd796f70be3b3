//! `ser2mqtt tap` against a running gateway: the real binary, through the gateway's broker, shows
//! each frame's bytes and verdict (ok with values, a bad checksum, an ignored sentence) while the
//! gateway keeps reading the device and publishing.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;

use rumqttc::QoS;
use ser2mqtt::simulate::nmea_sentence;

use crate::support::*;

#[tokio::test]
async fn tap_shows_good_garbled_and_ignored_frames_while_the_gateway_keeps_publishing() {
    let dir = tempfile::tempdir().unwrap();
    let mut pty = pty();
    let yaml = format!(
        r#"
gateway: {{ name: gw }}
broker: {{ listeners: [{{ bind: "127.0.0.1:0" }}] }}
ports:
  - name: gps
    device: {}
    framing: {{ type: lines, delimiter: "\r\n" }}
    checksum: {{ type: nmea }}
    decoder: {{ type: regex, patterns: ['^\$GPGGA,(?P<fix_time>[^,]*),(?P<lat>[^,]*),(?P<lat_dir>[NS])'] }}
    transforms: [{{ field: lat, nmea_degrees: lat_dir }}]
maps:
  - {{ port: gps, topic: "gps/{{field}}" }}
"#,
        pty.path.display()
    );
    let file = dir.path().join("gw.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let gw = start(ser2mqtt::config::load(&file).unwrap()).await;
    let broker = addr(&gw);
    let mut sub = subscribe(broker, &[("gps/#", QoS::AtLeastOnce)]).await;

    let tap = Command::new(env!("CARGO_BIN_EXE_ser2mqtt"))
        .args(["tap", "--port", "gps", "--count", "3", "--broker", &broker.to_string(), "--config"])
        .arg(&file)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut tap = ChildGuard(tap);
    let stats = gw.stats()[0].1.clone();
    wait_for("the tap's request reached the port", || {
        stats.live_until.load(Ordering::Relaxed) > chrono::Utc::now().timestamp_millis()
    })
    .await;

    pty.write(&nmea_sentence("GPGGA,123519,4807.038,N")).await;
    pty.write(b"$GPGGA,123519,4807.038,N*00\r\n").await;
    pty.write(&nmea_sentence("GPGSV,3,1,11")).await;
    // The gateway still reads the device and publishes while tapped.
    assert_eq!(
        payloads(&sub.take_on("gps/", 3).await),
        [("gps/fix_time", "123519"), ("gps/lat", "48.1173"), ("gps/lat_dir", "N")]
    );

    let stdout = tap.0.stdout.take().unwrap();
    let lines =
        tokio::task::spawn_blocking(move || BufReader::new(stdout).lines().map(Result::unwrap).collect::<Vec<_>>());
    let status = tokio::task::spawn_blocking(move || tap.0.wait()).await.unwrap().unwrap();
    assert!(status.success());
    let out = lines.await.unwrap().join("\n");
    let good = r#"  gps  ok  "$GPGGA,123519,4807.038,N*"#;
    assert!(out.contains(good), "{out}");
    assert!(out.contains("              fix_time=123519 lat=48.1173 lat_dir=\"N\""), "{out}");
    assert!(out.contains("  gps  GARBLED  \"$GPGGA,123519,4807.038,N*00\"\n"), "{out}");
    assert!(out.contains("checksum mismatch: frame says 0x0, bytes give 0x"), "{out}");
    assert!(out.contains("  gps  ignored  \"$GPGSV,3,1,11*"), "{out}");
    assert!(out.contains("no pattern or key of the decoder matches"), "{out}");
    gw.shutdown().await;
}

#[test]
fn tap_names_a_port_the_config_does_not_have() {
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/nmea-gps.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_ser2mqtt"))
        .args(["tap", "--port", "gsp", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown port `gsp`, did you mean `gps`?"));
}
