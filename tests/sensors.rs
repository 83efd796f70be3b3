//! Each shipped config in `configs/`, fed real sensor frames through a pty, as a subscriber sees it:
//! topics, payloads, QoS, retain flags and order.

use rumqttc::QoS;
use ser2mqtt::simulate::{nmea_sentence, SensorKind, Simulator};

use crate::support::*;

const GGA: &[u8] = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n";
const RMC: &[u8] = b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n";

#[tokio::test]
async fn nmea_gps_gga_fields_and_sentence_documents_in_order() {
    let mut pty = pty();
    let gw = start(shipped_config("nmea-gps.yaml", &[&pty.path])).await;
    let mut sub = subscribe(addr(&gw), &[("sensors/#", QoS::ExactlyOnce)]).await;
    let before = chrono::Utc::now().timestamp_millis();
    pty.write(GGA).await;
    pty.write(RMC).await;

    let got = sub.take_on("sensors/", 9).await;
    let fields: Vec<_> = payloads(&got[..7]);
    assert_eq!(
        fields,
        vec![
            ("sensors/garden-pi/gps/lat", "48.1173"),
            ("sensors/garden-pi/gps/lat_dir", "N"),
            ("sensors/garden-pi/gps/lon", "11.516667"),
            ("sensors/garden-pi/gps/lon_dir", "E"),
            ("sensors/garden-pi/gps/fix", "1"),
            ("sensors/garden-pi/gps/satellites", "8"),
            ("sensors/garden-pi/gps/altitude", "545.4"),
        ]
    );
    assert!(got[..7].iter().all(|g| g.qos == QoS::AtLeastOnce && !g.retain), "{got:?}");
    // Then one JSON document per sentence, QoS 0, in the order the sentences arrived.
    assert_eq!(got[7].topic, "sensors/garden-pi/gps/GGA");
    assert_eq!(got[8].topic, "sensors/garden-pi/gps/RMC");
    assert!(got[7..].iter().all(|g| g.qos == QoS::AtMostOnce));
    let rmc: serde_json::Value = serde_json::from_str(&got[8].payload).unwrap();
    assert_eq!(rmc["status"], "A");
    assert_eq!(rmc["speed_knots"], 22.4);
    assert_eq!(rmc["date"], "230394");
    // The fix time as the receiver sent it, apart from the receive time.
    assert_eq!(rmc["fix_time"], "123519");
    assert_eq!(rmc["lat"], 48.1173);
    // Stamped with the receive time, in both forms.
    let ts = rmc["ts"].as_i64().unwrap();
    assert!(ts >= before && ts <= chrono::Utc::now().timestamp_millis(), "ts {ts} not within the test");
    let time = chrono::DateTime::parse_from_rfc3339(rmc["time"].as_str().unwrap()).unwrap();
    assert_eq!(time.timestamp_millis(), ts);
    assert!(rmc["time"].as_str().unwrap().ends_with('Z') && rmc["time"].as_str().unwrap().len() == 24);
    gw.shutdown().await;
}

#[tokio::test]
async fn nmea_fix_without_position_publishes_only_present_fields() {
    let mut pty = pty();
    let gw = start(shipped_config("nmea-gps.yaml", &[&pty.path])).await;
    let mut sub = subscribe(addr(&gw), &[("sensors/garden-pi/gps/+", QoS::AtLeastOnce)]).await;
    // No fix yet: empty fields are legal NMEA and must be absent, not errors.
    pty.write(&nmea_sentence("GPGGA,123520,,,,,0,00,,,M,,M,,")).await;
    let got = sub.take_on("sensors/", 3).await;
    assert_eq!(
        payloads(&got),
        vec![
            ("sensors/garden-pi/gps/fix", "0"),
            ("sensors/garden-pi/gps/satellites", "0"),
            ("sensors/garden-pi/gps/GGA", &got[2].payload)
        ]
    );
    assert!(!got[2].payload.contains("\"lat\""));
    gw.shutdown().await;
}

#[tokio::test]
async fn pms5003_frames_decode_to_standard_and_atmospheric_values() {
    let mut pty = pty();
    let gw = start(shipped_config("pms5003.yaml", &[&pty.path])).await;
    let mut sub = subscribe(addr(&gw), &[("sensors/#", QoS::AtLeastOnce)]).await;
    let mut sim = Simulator::new(SensorKind::Pms5003, 7);
    let frames: Vec<Vec<u8>> = (0..3).map(|_| sim.next_frame()).collect();
    for f in &frames {
        pty.write(f).await;
    }
    let got = sub.take_on("sensors/", 12).await;
    for (i, f) in frames.iter().enumerate() {
        let word = |at: usize| u16::from_be_bytes([f[at], f[at + 1]]).to_string();
        let chunk = &got[i * 4..i * 4 + 4];
        assert_eq!(
            payloads(&chunk[..3]),
            vec![
                ("sensors/garden-pi/air/pm1_0", word(10).as_str()),
                ("sensors/garden-pi/air/pm2_5", word(12).as_str()),
                ("sensors/garden-pi/air/pm10", word(14).as_str()),
            ]
        );
        let doc: serde_json::Value = serde_json::from_str(&chunk[3].payload).unwrap();
        assert_eq!(doc["particles_0_3um"].to_string(), word(16));
        assert_eq!(doc["pm2_5_cf1"].to_string(), word(6));
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn sds011_little_endian_tenths() {
    let mut pty = pty();
    let gw = start(shipped_config("sds011.yaml", &[&pty.path])).await;
    let mut sub = subscribe(addr(&gw), &[("sensors/#", QoS::AtLeastOnce)]).await;
    pty.write(&[0xAA, 0xC0, 0xD4, 0x04, 0x3A, 0x0A, 0xA1, 0x60, 0x1D, 0xAB]).await;
    let got = sub.take_on("sensors/", 2).await;
    assert_eq!(
        payloads(&got),
        vec![("sensors/garden-pi/dust/pm2_5", "123.6"), ("sensors/garden-pi/dust/pm10", "261.8")]
    );
    assert!(got.iter().all(|g| g.qos == QoS::AtLeastOnce));
    gw.shutdown().await;
}

#[tokio::test]
async fn arduino_drops_the_partial_first_line_and_sends_json_values() {
    let mut pty = pty();
    let gw = start(shipped_config("arduino-kv.yaml", &[&pty.path])).await;
    let mut sub = subscribe(addr(&gw), &[("sensors/#", QoS::AtLeastOnce)]).await;
    // What a board prints as it resets on open: half a line, then good ones.
    pty.write(b"p=21.4\r\ntemp=21.50,hum=48.2\r\ntemp=21.55,hum=48.0\r\n").await;
    let got = sub.take_on("sensors/", 4).await;
    let values: Vec<(String, serde_json::Value)> = got
        .iter()
        .map(|g| (g.topic.clone(), serde_json::from_str::<serde_json::Value>(&g.payload).unwrap()["value"].clone()))
        .collect();
    assert_eq!(
        values,
        vec![
            ("sensors/garden-pi/climate/temp".into(), 21.5.into()),
            ("sensors/garden-pi/climate/hum".into(), 48.2.into()),
            ("sensors/garden-pi/climate/temp".into(), 21.55.into()),
            ("sensors/garden-pi/climate/hum".into(), 48.0.into()),
        ]
    );
    let stats = &gw.stats()[0].1;
    assert_eq!(stats.garbled.load(std::sync::atomic::Ordering::Relaxed), 0, "a skipped first line is not an alarm");
    gw.shutdown().await;
}

#[tokio::test]
async fn late_subscriber_gets_the_last_retained_reading_with_the_retain_flag() {
    let mut pty = pty();
    let gw = start(shipped_config("sds011.yaml", &[&pty.path])).await;
    let mut early = subscribe(addr(&gw), &[("sensors/#", QoS::AtLeastOnce)]).await;
    pty.write(&[0xAA, 0xC0, 0xD4, 0x04, 0x3A, 0x0A, 0xA1, 0x60, 0x1D, 0xAB]).await;
    pty.write(&[0xAA, 0xC0, 0x10, 0x00, 0x20, 0x00, 0xA1, 0x60, 0x31, 0xAB]).await;
    early.take_on("sensors/", 4).await;

    let mut late = subscribe(addr(&gw), &[("sensors/garden-pi/dust/#", QoS::AtLeastOnce)]).await;
    let mut got = late.take_on("sensors/", 2).await;
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(payloads(&got), vec![("sensors/garden-pi/dust/pm10", "3.2"), ("sensors/garden-pi/dust/pm2_5", "1.6")]);
    assert!(got.iter().all(|g| g.retain && g.qos == QoS::AtLeastOnce), "{got:?}");
    // The gateway's own status is retained too.
    let mut status = subscribe(addr(&gw), &[("garden-pi/status", QoS::AtLeastOnce)]).await;
    let s = status.next_on("garden-pi/status").await;
    assert_eq!((s.payload.as_str(), s.retain), ("online", true));
    gw.shutdown().await;
}

#[tokio::test]
async fn qos_2_map_is_delivered_exactly_once_at_qos_2() {
    let mut pty = pty();
    let yaml = format!(
        r#"
ports:
  - name: t
    device: {}
    framing: {{ type: lines }}
    decoder: {{ type: csv, columns: [a, b] }}
maps:
  - port: t
    topic: "x/{{field}}"
    qos: 2
"#,
        pty.path.display()
    );
    let gw = start(config_from(&yaml)).await;
    let mut sub = subscribe(addr(&gw), &[("x/#", QoS::ExactlyOnce)]).await;
    for i in 0..50 {
        pty.write(format!("{i},{}\n", i * 2).as_bytes()).await;
    }
    let got = sub.take_on("x/", 100).await;
    let expected: Vec<(String, String)> =
        (0..50).flat_map(|i| [("x/a".into(), i.to_string()), ("x/b".into(), (i * 2).to_string())]).collect();
    let actual: Vec<(String, String)> = got.iter().map(|g| (g.topic.clone(), g.payload.clone())).collect();
    assert_eq!(actual, expected);
    assert!(got.iter().all(|g| g.qos == QoS::ExactlyOnce));
    assert_eq!(sub.drain_on("x/", std::time::Duration::from_millis(300)).await, vec![], "no duplicates");
    gw.shutdown().await;
}

/// A shipped config for a sensor that answers only when asked, with the simulator answering on the
/// pty's other end, polled every 200 ms instead of the config's period.
async fn polled(
    config: &str,
    kind: SensorKind,
) -> (ser2mqtt::gateway::Gateway, Subscriber, tokio_util::sync::CancellationToken) {
    let p = pty();
    let mut c = shipped_config(config, &[&p.path]);
    c.ports[0].poll.as_mut().unwrap().every = std::time::Duration::from_millis(200);
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    let Pty { master, slave, .. } = p;
    tokio::spawn(async move {
        let _slave = slave; // the pty lives while the simulator does
        ser2mqtt::simulate::run(kind, master, 0.0, None, s).await
    });
    let gw = start(c).await;
    let sub = subscribe(addr(&gw), &[("sensors/#", QoS::AtLeastOnce), ("ser2mqtt/#", QoS::AtLeastOnce)]).await;
    (gw, sub, stop)
}

#[tokio::test]
async fn mhz19b_is_polled_and_takes_its_commands() {
    let (gw, mut sub, stop) = polled("mhz19b.yaml", SensorKind::Mhz19b).await;
    // The reading and `online`, in whichever order they came (`online` may be retained already).
    let (mut co2, mut temperature, mut online) = (None, None, None);
    while co2.is_none() || temperature.is_none() || online.is_none() {
        let g = sub.next_on("").await;
        match g.topic.as_str() {
            "sensors/ser2mqtt/co2/co2" => co2 = g.payload.parse::<u32>().ok(),
            "sensors/ser2mqtt/co2/temperature" => temperature = Some(g.payload),
            "ser2mqtt/co2/availability" => online = Some(g.payload),
            _ => {}
        }
    }
    assert!((400..460).contains(&co2.unwrap()), "{co2:?}");
    assert_eq!((temperature.as_deref(), online.as_deref()), (Some("21"), Some("online")));
    sub.client.publish("ser2mqtt/co2/set/range", QoS::AtLeastOnce, false, "5000").await.unwrap();
    let r: serde_json::Value = serde_json::from_str(&sub.next_on("ser2mqtt/co2/result/range").await.payload).unwrap();
    assert_eq!(r, serde_json::json!({"command": "range", "result": "ok"}));
    // Polls go on after the command.
    sub.next_on("sensors/ser2mqtt/co2/co2").await;
    let s = &gw.stats()[0].1;
    assert_eq!(s.decode_errors.load(std::sync::atomic::Ordering::Relaxed), 0);
    stop.cancel();
    gw.shutdown().await;
}

#[tokio::test]
async fn pms5003_in_passive_mode_is_polled_and_acknowledges_mode_changes() {
    let (gw, mut sub, stop) = polled("pms5003-passive.yaml", SensorKind::Pms5003Passive).await;
    let pm25: u32 = sub.next_on("sensors/ser2mqtt/air/pm2_5").await.payload.parse().unwrap();
    assert!((10..40).contains(&pm25), "{pm25}");
    sub.client.publish("ser2mqtt/air/set/passive", QoS::AtLeastOnce, false, r#"{"correlation": 7}"#).await.unwrap();
    let r: serde_json::Value = serde_json::from_str(&sub.next_on("ser2mqtt/air/result/passive").await.payload).unwrap();
    assert_eq!(
        r,
        serde_json::json!({"command": "passive", "correlation": 7, "result": "ok", "reply": "42 4D 00 04 E1 00 01 74"})
    );
    sub.next_on("sensors/ser2mqtt/air/pm2_5").await;
    let s = &gw.stats()[0].1;
    assert_eq!(s.decode_errors.load(std::sync::atomic::Ordering::Relaxed), 0, "the acknowledgement is not a reading");
    stop.cancel();
    gw.shutdown().await;
}

/// What a GPS sends besides GGA and RMC (satellites, DOP, course, time, vendor sentences) is ignored,
/// counted as such, and not a decode error.
#[tokio::test]
async fn nmea_sentences_no_map_wants_are_ignored_not_errors() {
    let mut pty = pty();
    let gw = start(shipped_config("nmea-gps.yaml", &[&pty.path])).await;
    let mut sub = subscribe(addr(&gw), &[("sensors/garden-pi/gps/satellites", QoS::AtLeastOnce)]).await;
    pty.write(GGA).await;
    for body in [
        "GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1",
        "GPGSV,2,1,08,01,40,083,46,02,17,308,41,12,07,344,39,14,22,228,45",
        "GPVTG,054.7,T,034.4,M,005.5,N,010.2,K",
        "GPGLL,4916.45,N,12311.12,W,225444,A",
        "GPZDA,201530.00,04,07,2002,00,00",
        "PGRMZ,246,f,3",
    ] {
        pty.write(&nmea_sentence(body)).await;
    }
    pty.write(GGA).await;
    assert_eq!(sub.take_on("sensors/", 2).await.len(), 2, "both GGA fixes published");
    let s = gw.stats()[0].1.clone();
    wait_for("six sentences ignored", || s.ignored.load(std::sync::atomic::Ordering::Relaxed) == 6).await;
    assert_eq!(s.decode_errors.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(s.garbled.load(std::sync::atomic::Ordering::Relaxed), 0);
    gw.shutdown().await;
}
