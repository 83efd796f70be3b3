//! Home Assistant MQTT discovery as Home Assistant sees it: the retained documents a real subscriber
//! gets for the shipped PMS5003, NMEA GPS and key=value climate configs, checked key by key against
//! the keys, types and values Home Assistant's MQTT sensor and binary sensor documentation allows;
//! each document's state topic and value template tried on the reading that really arrives there;
//! and the empty retained documents that remove an entity on reload.

use std::time::Duration;

use rumqttc::QoS;
use ser2mqtt::simulate::{nmea_sentence, SensorKind, Simulator};
use serde_json::{json, Value};

use crate::support::*;

/// Keys Home Assistant's MQTT integration documents for every entity (the `availability`, `device`
/// and `origin` blocks, names and ids), then per platform.
const COMMON_KEYS: &[&str] = &[
    "availability",
    "availability_mode",
    "availability_template",
    "availability_topic",
    "default_entity_id",
    "device",
    "device_class",
    "enabled_by_default",
    "encoding",
    "entity_category",
    "entity_picture",
    "expire_after",
    "force_update",
    "icon",
    "json_attributes_template",
    "json_attributes_topic",
    "name",
    "object_id",
    "origin",
    "payload_available",
    "payload_not_available",
    "platform",
    "qos",
    "state_topic",
    "unique_id",
    "value_template",
];
const SENSOR_KEYS: &[&str] =
    &["last_reset_value_template", "options", "state_class", "suggested_display_precision", "unit_of_measurement"];
const BINARY_SENSOR_KEYS: &[&str] = &["off_delay", "payload_off", "payload_on"];
const DEVICE_KEYS: &[&str] = &[
    "configuration_url",
    "connections",
    "hw_version",
    "identifiers",
    "manufacturer",
    "model",
    "model_id",
    "name",
    "serial_number",
    "suggested_area",
    "sw_version",
    "via_device",
];
const ORIGIN_KEYS: &[&str] = &["name", "sw_version", "support_url"];
const AVAILABILITY_KEYS: &[&str] = &["topic", "payload_available", "payload_not_available", "value_template"];

/// Panics unless `doc` on `topic` is a discovery document Home Assistant accepts: the topic's form,
/// only documented keys with their documented types and values, the required ones present.
fn assert_valid(topic: &str, doc: &Value) {
    let levels: Vec<&str> = topic.split('/').collect();
    assert_eq!(levels.len(), 5, "<prefix>/<component>/<node_id>/<object_id>/config: {topic}");
    assert_eq!(levels[4], "config");
    let id_ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    assert!(id_ok(levels[2]) && id_ok(levels[3]), "node and object ids are [a-zA-Z0-9_-]: {topic}");
    let platform_keys = match levels[1] {
        "sensor" => SENSOR_KEYS,
        "binary_sensor" => BINARY_SENSOR_KEYS,
        other => panic!("unexpected component {other}"),
    };
    let obj = doc.as_object().unwrap_or_else(|| panic!("{topic}: not a JSON object"));
    for (key, value) in obj {
        assert!(
            COMMON_KEYS.contains(&key.as_str()) || platform_keys.contains(&key.as_str()),
            "{topic}: undocumented key {key}"
        );
        let string = || assert!(value.is_string(), "{topic}: {key} must be a string: {value}");
        match key.as_str() {
            "qos" => assert!(value.as_u64().is_some_and(|q| q <= 2), "{topic}: qos {value}"),
            "suggested_display_precision" => assert!(value.as_u64().is_some(), "{topic}: {key} {value}"),
            "availability_mode" => assert!(["all", "any", "latest"].contains(&value.as_str().unwrap()), "{topic}"),
            "entity_category" => assert!(["config", "diagnostic"].contains(&value.as_str().unwrap()), "{topic}"),
            "state_class" => {
                assert!(["measurement", "total", "total_increasing"].contains(&value.as_str().unwrap()), "{topic}")
            }
            "availability" => {
                for a in value.as_array().expect("availability is a list") {
                    let a = a.as_object().expect("availability entry is a mapping");
                    assert!(a.contains_key("topic"), "{topic}: availability entry without topic");
                    assert!(a.keys().all(|k| AVAILABILITY_KEYS.contains(&k.as_str())), "{topic}: {a:?}");
                    assert!(a.values().all(Value::is_string), "{topic}: {a:?}");
                }
            }
            "device" => {
                let d = value.as_object().expect("device is a mapping");
                assert!(d.keys().all(|k| DEVICE_KEYS.contains(&k.as_str())), "{topic}: device {d:?}");
                let ids = d["identifiers"].as_array().expect("identifiers is a list");
                assert!(!ids.is_empty() && ids.iter().all(Value::is_string), "{topic}");
                assert!(obj.contains_key("unique_id"), "{topic}: a device needs the entity's unique_id");
            }
            "origin" => {
                let o = value.as_object().expect("origin is a mapping");
                assert!(o.contains_key("name") && o.keys().all(|k| ORIGIN_KEYS.contains(&k.as_str())), "{topic}");
            }
            _ => string(),
        }
    }
    assert!(obj.contains_key("state_topic"), "{topic}: state_topic is required");
    assert!(!obj["state_topic"].as_str().unwrap().contains(['+', '#']), "{topic}: a state topic is not a filter");
}

/// What Home Assistant's template makes of `payload` for the value templates the gateway writes
/// (`None` renders as Home Assistant's "unknown").
fn render(template: Option<&Value>, payload: &str) -> String {
    let Some(t) = template.and_then(Value::as_str) else { return payload.to_string() };
    let re = regex::Regex::new(r"^\{\{ value_json(?:\.(\w+)|\['([^']+)'\])( \| default\(none\))? \}\}$").unwrap();
    let c = re.captures(t).unwrap_or_else(|| panic!("template not understood by this test: {t}"));
    let key = c.get(1).or(c.get(2)).unwrap().as_str();
    let doc: Value = serde_json::from_str(payload).expect("value_json needs a JSON payload");
    match (doc.get(key), c.get(3)) {
        (Some(v), _) => v.to_string(),
        (None, Some(_)) => "None".into(),
        (None, None) => panic!("`{key}` missing from {payload}: Home Assistant would log a template error"),
    }
}

/// What Home Assistant shows for the entity of `doc`, given the readings that arrived: the message
/// on its state topic through its value template.
fn state(doc: &Value, readings: &[Got]) -> String {
    let topic = doc["state_topic"].as_str().unwrap();
    let got = readings.iter().find(|g| g.topic == topic).unwrap_or_else(|| panic!("nothing on {topic}"));
    render(doc.get("value_template"), &got.payload)
}

/// Every retained document under `homeassistant/`, by topic, once `n` have arrived.
async fn documents(sub: &mut Subscriber, n: usize) -> Vec<(String, Value)> {
    let got = sub.take_on("homeassistant/", n).await;
    let extra = sub.drain_on("homeassistant/", Duration::from_millis(300)).await;
    assert!(extra.is_empty(), "more documents than expected: {extra:?}");
    got.into_iter().map(|g| (g.topic, serde_json::from_str(&g.payload).expect("JSON document"))).collect()
}

fn find<'a>(docs: &'a [(String, Value)], topic: &str) -> &'a Value {
    &docs.iter().find(|(t, _)| t == topic).unwrap_or_else(|| panic!("no document on {topic}")).1
}

fn availability(port: &str) -> Value {
    json!([
        { "topic": "garden-pi/status", "payload_available": "online", "payload_not_available": "offline" },
        { "topic": format!("garden-pi/{port}/availability"), "payload_available": "online", "payload_not_available": "offline" },
    ])
}

fn origin() -> Value {
    json!({ "name": "ser2mqtt", "sw_version": env!("CARGO_PKG_VERSION") })
}

#[tokio::test]
async fn pms5003_fields_are_announced_with_units_and_device_classes_and_their_state_carries_the_reading() {
    let mut pty = pty();
    let gw = start(shipped_config("pms5003.yaml", &[&pty.path])).await;
    let mut sub = subscribe(addr(&gw), &[("homeassistant/#", QoS::AtLeastOnce), ("sensors/#", QoS::AtLeastOnce)]).await;
    // 12 fields, each once (the per-field map gives pm1_0/pm2_5/pm10 their topics, the JSON map the
    // rest), plus the gateway's and the port's connectivity.
    let docs = documents(&mut sub, 14).await;
    for (topic, doc) in &docs {
        assert_valid(topic, doc);
    }
    let device = json!({
        "identifiers": ["garden-pi_air"], "name": "Particulate sensor", "manufacturer": "Plantower",
        "model": "PMS5003", "via_device": "garden-pi",
    });
    assert_eq!(
        find(&docs, "homeassistant/sensor/garden-pi/air_pm2_5/config"),
        &json!({
            "name": "PM2.5",
            "unique_id": "garden-pi_air_pm2_5",
            "state_topic": "sensors/garden-pi/air/pm2_5",
            "unit_of_measurement": "μg/m³",
            "device_class": "pm25",
            "state_class": "measurement",
            "qos": 1,
            "availability": availability("air"),
            "availability_mode": "all",
            "device": device,
            "origin": origin(),
        })
    );
    let counts = find(&docs, "homeassistant/sensor/garden-pi/air_particles_0_3um/config");
    assert_eq!(counts["state_topic"], "sensors/garden-pi/air/json");
    assert_eq!(counts["value_template"], "{{ value_json.particles_0_3um | default(none) }}");
    assert_eq!(
        find(&docs, "homeassistant/binary_sensor/garden-pi/status/config"),
        &json!({
            "name": "Status", "unique_id": "garden-pi_status", "state_topic": "garden-pi/status",
            "payload_on": "online", "payload_off": "offline", "device_class": "connectivity",
            "entity_category": "diagnostic",
            "device": { "identifiers": ["garden-pi"], "name": "garden-pi", "manufacturer": "ser2mqtt",
                        "model": "Serial-to-MQTT gateway", "sw_version": env!("CARGO_PKG_VERSION") },
            "origin": origin(),
        })
    );

    // Each entity's state topic and template give the value the frame carried.
    let mut sim = Simulator::new(SensorKind::Pms5003, 3);
    let frame = sim.next_frame();
    let atm_pm2_5 = u16::from_be_bytes([frame[12], frame[13]]).to_string();
    let count_0_3 = u16::from_be_bytes([frame[16], frame[17]]).to_string();
    pty.write(&frame).await;
    let readings = sub.take_on("sensors/", 4).await;
    let state = |doc: &Value| state(doc, &readings);
    assert_eq!(state(find(&docs, "homeassistant/sensor/garden-pi/air_pm2_5/config")), atm_pm2_5);
    assert_eq!(state(counts), count_0_3);

    // A client that comes later (Home Assistant restarting) gets them all as retained messages.
    let mut late = subscribe(addr(&gw), &[("homeassistant/#", QoS::AtLeastOnce)]).await;
    let again = late.take_on("homeassistant/", 14).await;
    assert!(again.iter().all(|g| g.retain), "discovery documents are retained");
    gw.shutdown().await;
}

#[tokio::test]
async fn gps_fields_come_from_the_maps_that_publish_them_and_an_absent_value_is_unknown() {
    let mut pty = pty();
    let gw = start(shipped_config("nmea-gps.yaml", &[&pty.path])).await;
    let mut sub = subscribe(addr(&gw), &[("homeassistant/#", QoS::AtLeastOnce), ("sensors/#", QoS::AtLeastOnce)]).await;
    // GGA map: lat, lon, fix, satellites, altitude (lat_dir, lon_dir skipped); JSON map: fix_time,
    // hdop (GGA) and status, speed_knots, course (RMC); talker and date skipped; 2 connectivity.
    let docs = documents(&mut sub, 12).await;
    for (topic, doc) in &docs {
        assert_valid(topic, doc);
    }
    let names: Vec<&str> = docs.iter().map(|(t, _)| t.split('/').nth(3).unwrap()).collect();
    for absent in ["gps_talker", "gps_lat_dir", "gps_sentence", "gps_date"] {
        assert!(!names.contains(&absent), "{absent} is not announced: {names:?}");
    }
    let lat = find(&docs, "homeassistant/sensor/garden-pi/gps_lat/config");
    assert_eq!(lat["state_topic"], "sensors/garden-pi/gps/lat");
    assert!(lat.get("value_template").is_none(), "a plain per-field payload is the state itself");
    assert_eq!(lat["unit_of_measurement"], "°");
    let speed = find(&docs, "homeassistant/sensor/garden-pi/gps_speed_knots/config");
    assert_eq!(speed["state_topic"], "sensors/garden-pi/gps/RMC");
    assert_eq!((&speed["device_class"], &speed["unit_of_measurement"]), (&json!("speed"), &json!("kn")));
    let hdop = find(&docs, "homeassistant/sensor/garden-pi/gps_hdop/config");
    assert_eq!(hdop["state_topic"], "sensors/garden-pi/gps/GGA");

    pty.write(&nmea_sentence("GPGGA,123519,4807.038,N,01131.000,E,1,08,,545.4,M,46.9,M,,")).await;
    pty.write(&nmea_sentence("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W")).await;
    let readings = sub.take_on("sensors/", 9).await;
    let state = |doc: &Value| state(doc, &readings);
    assert_eq!(state(lat), "48.1173", "decimal degrees");
    assert_eq!(state(speed), "22.4");
    assert_eq!(state(hdop), "None", "a GGA without HDOP is unknown, not a template error");
    gw.shutdown().await;
}

#[tokio::test]
async fn climate_values_in_json_payloads_are_read_through_value_json_value() {
    let mut pty = pty();
    let gw = start(shipped_config("arduino-kv.yaml", &[&pty.path])).await;
    let mut sub = subscribe(addr(&gw), &[("homeassistant/#", QoS::AtLeastOnce), ("sensors/#", QoS::AtLeastOnce)]).await;
    let docs = documents(&mut sub, 4).await;
    for (topic, doc) in &docs {
        assert_valid(topic, doc);
    }
    let temp = find(&docs, "homeassistant/sensor/garden-pi/climate_temp/config");
    assert_eq!(
        temp,
        &json!({
            "name": "Temperature",
            "unique_id": "garden-pi_climate_temp",
            "state_topic": "sensors/garden-pi/climate/temp",
            "value_template": "{{ value_json.value }}",
            "unit_of_measurement": "°C",
            "device_class": "temperature",
            "state_class": "measurement",
            "suggested_display_precision": 1,
            "qos": 1,
            "availability": availability("climate"),
            "availability_mode": "all",
            "device": { "identifiers": ["garden-pi_climate"], "name": "Climate sensor", "via_device": "garden-pi" },
            "origin": origin(),
        })
    );
    // The board resets on open and its first line is skipped.
    pty.write(b"boot\r\ntemp=21.5,hum=40\r\n").await;
    let got = sub.next_on("sensors/garden-pi/climate/temp").await;
    assert_eq!(render(temp.get("value_template"), &got.payload), "21.5");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_field_or_port_removed_on_reload_is_removed_from_home_assistant() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ser2mqtt.yaml");
    let (a, b) = (pty(), pty());
    let yaml = |fields: &str, with_b: bool| {
        let mut y = format!(
            "gateway: {{ name: gw }}\nbroker: {{ listeners: [{{ bind: \"127.0.0.1:0\" }}] }}\n\
             homeassistant: {{}}\nports:\n  - {{ name: a, device: {}, framing: {{ type: lines }}, decoder: {{ type: csv, columns: [x, y] }} }}\n",
            a.path.display()
        );
        if with_b {
            y += &format!(
                "  - {{ name: b, device: {}, framing: {{ type: lines }}, decoder: {{ type: csv, columns: [n] }} }}\n",
                b.path.display()
            );
        }
        y += &format!("maps:\n  - {{ port: a, fields: {fields}, topic: \"a/{{field}}\" }}\n");
        if with_b {
            y += "  - { port: b, topic: \"b/{field}\" }\n";
        }
        y
    };
    std::fs::write(&file, yaml("[x, y]", true)).unwrap();
    let mut gw = start(ser2mqtt::config::load(&file).unwrap()).await;
    let mut sub = subscribe(addr(&gw), &[("homeassistant/#", QoS::AtLeastOnce)]).await;
    // x, y, n; the gateway's status, a's and b's links.
    let before = documents(&mut sub, 6).await;
    assert!(before.iter().any(|(t, _)| t == "homeassistant/sensor/gw/a_y/config"));

    std::fs::write(&file, yaml("[x]", false)).unwrap();
    ser2mqtt::supervisor::reload(&mut gw, &file).await.unwrap();
    let after = sub.drain_on("homeassistant/", Duration::from_millis(500)).await;
    let mut emptied: Vec<&str> = after.iter().filter(|g| g.payload.is_empty()).map(|g| g.topic.as_str()).collect();
    emptied.sort();
    assert_eq!(
        emptied,
        [
            "homeassistant/binary_sensor/gw/b_link/config",
            "homeassistant/sensor/gw/a_y/config",
            "homeassistant/sensor/gw/b_n/config"
        ],
        "an empty retained document deletes each entity that went"
    );
    // And the broker keeps none of them: a later subscriber sees only what is left.
    let mut late = subscribe(addr(&gw), &[("homeassistant/#", QoS::AtLeastOnce)]).await;
    let left = late.drain_on("homeassistant/", Duration::from_millis(500)).await;
    let mut topics: Vec<&str> = left.iter().map(|g| g.topic.as_str()).collect();
    topics.sort();
    assert_eq!(
        topics,
        [
            "homeassistant/binary_sensor/gw/a_link/config",
            "homeassistant/binary_sensor/gw/status/config",
            "homeassistant/sensor/gw/a_x/config"
        ]
    );
    gw.shutdown().await;
}
