//! The discovery documents: one retained `<prefix>/sensor/<node_id>/<port>_<field>/config` per field
//! a map publishes (state topic and value template taken from the map itself), a connectivity
//! `binary_sensor` for the gateway and for each port, and empty retained documents that remove the
//! entities a reload took away. The format is Home Assistant's MQTT discovery as documented.

use std::collections::HashSet;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::{classes, object_id, FieldInfo, HomeAssistant, PortInfo};
use crate::serial::port::PortSettings;
use crate::topic_map::OutMessage;
use crate::topic_map::{PayloadFormat, PublishUnit, TopicMap};

/// Retained at QoS 1: Home Assistant reads them whenever it (re)subscribes.
const QOS: u8 = 1;

/// What the gateway announces, and why some maps could not be.
#[derive(Debug, Default)]
pub struct Announcement {
    pub messages: Vec<OutMessage>,
    /// One line per map (or `when` value) whose state topic depends on a field's varying value.
    pub notes: Vec<String>,
}

/// Where the documents come from: the gateway's names and topics, its ports and maps.
pub struct Source<'a> {
    pub gateway: &'a str,
    pub status_topic: &'a str,
    pub ports: &'a [PortSettings],
    pub maps: &'a [TopicMap],
}

/// Every document for `source`, in a stable order.
pub fn announce(ha: &HomeAssistant, source: &Source) -> Announcement {
    let node = ha.node_id(source.gateway);
    let origin = json!({ "name": "ser2mqtt", "sw_version": env!("CARGO_PKG_VERSION") });
    let gateway_device = json!({
        "identifiers": [node],
        "name": source.gateway,
        "manufacturer": "ser2mqtt",
        "model": "Serial-to-MQTT gateway",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    let mut out = Announcement::default();
    let mut doc = |component: &str, object: &str, body: Value| {
        out.messages.push(OutMessage {
            topic: format!("{}/{component}/{node}/{object}/config", ha.prefix),
            payload: Bytes::from(body.to_string()),
            qos: QOS,
            retain: true,
        });
    };
    doc(
        "binary_sensor",
        "status",
        json!({
            "name": "Status",
            "unique_id": format!("{node}_status"),
            "state_topic": source.status_topic,
            "payload_on": "online",
            "payload_off": "offline",
            "device_class": "connectivity",
            "entity_category": "diagnostic",
            "device": gateway_device,
            "origin": origin,
        }),
    );
    let no_info = PortInfo::default();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut notes = Vec::new();
    for port in source.ports {
        let info = ha.ports.get(&*port.name).unwrap_or(&no_info);
        let port_id = object_id(&port.name);
        let mut device = json!({
            "identifiers": [format!("{node}_{port_id}")],
            "name": info.name.clone().unwrap_or_else(|| port.name.to_string()),
        });
        for (key, value) in [("manufacturer", &info.manufacturer), ("model", &info.model)] {
            if let Some(v) = value {
                device[key] = json!(v);
            }
        }
        device["via_device"] = json!(node);
        let gateway_only = json!([{ "topic": source.status_topic, "payload_available": "online", "payload_not_available": "offline" }]);
        doc(
            "binary_sensor",
            &format!("{port_id}_link"),
            json!({
                "name": "Link",
                "unique_id": format!("{node}_{port_id}_link"),
                "state_topic": port.availability_topic,
                "payload_on": "online",
                "payload_off": "offline",
                "device_class": "connectivity",
                "entity_category": "diagnostic",
                "availability": gateway_only,
                "device": device,
                "origin": origin,
            }),
        );
        let availability = json!([
            { "topic": source.status_topic, "payload_available": "online", "payload_not_available": "offline" },
            { "topic": port.availability_topic, "payload_available": "online", "payload_not_available": "offline" },
        ]);
        for (i, map) in source.maps.iter().enumerate().filter(|(_, m)| *m.port == *port.name) {
            for case in cases(map, port) {
                let names = match &case {
                    Some(c) => port.field_names_where(&c.field, &c.value),
                    None => port.field_names(),
                };
                let fixed = |placeholder: &str, field: Option<&str>| -> Option<String> {
                    match placeholder {
                        "gateway" => Some(source.gateway.to_string()),
                        "port" => Some(port.name.to_string()),
                        "field" => field.map(String::from),
                        other => case.as_ref().filter(|c| c.field == other).map(|c| c.value.clone()),
                    }
                };
                // A value that names its own device (a Modbus slave) gets its own device and entities.
                let (device, prefix) = match &case {
                    Some(c) if c.distinct => {
                        let id = object_id(&c.value);
                        let mut d = device.clone();
                        d["identifiers"] = json!([format!("{node}_{port_id}_{id}")]);
                        d["name"] = json!(c.value);
                        (d, format!("{port_id}_{id}"))
                    }
                    _ => (device.clone(), port_id.clone()),
                };
                for name in names.iter().filter(|n| map.wanted(n)) {
                    // The case's field is the same in every message it covers: not a sensor.
                    if case.as_ref().is_some_and(|c| c.field == *name) || info.skip.contains(name) {
                        continue;
                    }
                    let (topic, template) = match (map.unit, map.payload) {
                        (PublishUnit::PerField, PayloadFormat::Plain) => {
                            (map.topic.render(|p| fixed(p, Some(name))), None)
                        }
                        (PublishUnit::PerField, PayloadFormat::Json) => {
                            (map.topic.render(|p| fixed(p, Some(name))), Some("{{ value_json.value }}".to_string()))
                        }
                        // A frame's JSON leaves out the fields it did not have (a GGA sentence without a
                        // fix): `none` makes that Home Assistant's "unknown" instead of a template warning.
                        (PublishUnit::PerFrame, _) => (
                            map.topic.render(|p| fixed(p, None)),
                            Some(format!("{{{{ {} | default(none) }}}}", json_path(name))),
                        ),
                    };
                    let Some(topic) = topic else {
                        let vars: Vec<String> = map
                            .topic
                            .placeholders()
                            .filter(|p| fixed(p, Some(name)).is_none())
                            .map(|v| format!("`{{{v}}}`"))
                            .collect();
                        let when =
                            case.as_ref().map(|c| format!(" when {} is {}", c.field, c.value)).unwrap_or_default();
                        let note = format!(
                            "map {i}{when}: its topic depends on {} (not one value), so it is not announced",
                            vars.join(", ")
                        );
                        if !notes.contains(&note) {
                            notes.push(note);
                        }
                        continue;
                    };
                    // One entity per field (and slave): the first map that publishes it gives its topic.
                    if !seen.insert((prefix.clone(), name.clone())) {
                        continue;
                    }
                    let field = info.fields.get(name).cloned().unwrap_or_default();
                    let mut body = sensor(&node, &prefix, name, &field, port.numeric(name), topic, template, map.qos);
                    body.insert("availability".into(), availability.clone());
                    body.insert("availability_mode".into(), json!("all"));
                    body.insert("device".into(), device.clone());
                    body.insert("origin".into(), origin.clone());
                    doc("sensor", &format!("{prefix}_{}", object_id(name)), Value::Object(body));
                }
            }
        }
    }
    out.notes = notes;
    out
}

/// One value of a field that a map's messages have in common: from its `when`, or from a topic
/// placeholder whose values the configuration lists (`distinct`: each value is its own device).
struct Case {
    field: String,
    value: String,
    distinct: bool,
}

/// The cases a map's documents are made for: one per `when` value, else one per value of the first
/// topic placeholder the port can enumerate (Modbus slave names), else one for every frame.
fn cases(map: &TopicMap, port: &PortSettings) -> Vec<Option<Case>> {
    if let Some(w) = &map.when {
        return w
            .values
            .iter()
            .map(|v| Some(Case { field: w.field.clone(), value: v.clone(), distinct: false }))
            .collect();
    }
    let listed = map.topic.placeholders().find_map(|p| port.values_of(p).map(|vs| (p.to_string(), vs)));
    match listed {
        Some((field, values)) => {
            values.into_iter().map(|value| Some(Case { field: field.clone(), value, distinct: true })).collect()
        }
        None => vec![None],
    }
}

/// A sensor's own keys (without availability, device and origin).
#[allow(clippy::too_many_arguments)]
fn sensor(
    node: &str,
    prefix: &str,
    name: &str,
    field: &FieldInfo,
    numeric: bool,
    topic: String,
    template: Option<String>,
    qos: u8,
) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("name".into(), json!(field.name.clone().unwrap_or_else(|| name.to_string())));
    body.insert("unique_id".into(), json!(format!("{node}_{prefix}_{}", object_id(name))));
    body.insert("state_topic".into(), json!(topic));
    if let Some(t) = template {
        body.insert("value_template".into(), json!(t));
    }
    if let Some(u) = &field.unit {
        body.insert("unit_of_measurement".into(), json!(classes::normalize_unit(u)));
    }
    if let Some(dc) = &field.device_class {
        body.insert("device_class".into(), json!(dc));
    }
    // A number (or a value with a unit) is a measurement unless said otherwise, so Home Assistant keeps
    // its long-term statistics; not where the device class allows no measurement (energy totals).
    let allows_measurement = field
        .device_class
        .as_deref()
        .is_none_or(|dc| classes::check(dc, field.unit.as_deref(), Some("measurement")).is_ok());
    let state_class = match &field.state_class {
        Some(sc) => Some(sc.as_str()),
        None if (numeric || field.unit.is_some()) && allows_measurement => Some("measurement"),
        None => None,
    };
    if let Some(sc) = state_class {
        body.insert("state_class".into(), json!(sc));
    }
    if let Some(p) = field.precision {
        body.insert("suggested_display_precision".into(), json!(p));
    }
    if let Some(icon) = &field.icon {
        body.insert("icon".into(), json!(icon));
    }
    body.insert("qos".into(), json!(qos));
    body
}

/// `value_json.name`, or `value_json['name']` where the name is not a template identifier.
fn json_path(name: &str) -> String {
    let identifier = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if identifier {
        format!("value_json.{name}")
    } else {
        format!("value_json['{}']", name.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// Empty retained documents for the topics of `old` that `new` no longer has: Home Assistant
/// deletes those entities.
pub fn removals(old: &[OutMessage], new: &[OutMessage]) -> Vec<OutMessage> {
    let kept: HashSet<&str> = new.iter().map(|m| m.topic.as_str()).collect();
    old.iter()
        .filter(|m| !kept.contains(m.topic.as_str()))
        .map(|m| OutMessage { topic: m.topic.clone(), payload: Bytes::new(), qos: QOS, retain: true })
        .collect()
}
