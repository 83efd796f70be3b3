//! What `ser2mqtt check` prints for a valid file: each listener, port and map, with an example topic
//! and payload rendered from the map's own template, so the user sees what subscribers will get.

use std::fmt::Write;
use std::path::Path;

use crate::decode::{Reading, Value};
use crate::serial::port::PortSettings;
use crate::topic_map::TopicMap;

use super::Config;

pub fn describe(config: &Config, file: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}: valid", file.display());
    let _ = writeln!(s, "gateway `{}`, status on {}", config.gateway.name, config.gateway.status_topic);
    for l in &config.broker.listeners {
        let auth = if l.allow_anonymous { "anonymous allowed" } else { "username and password required" };
        let tls = match &l.tls {
            Some(t) if t.settings.client_ca.is_some() => ", TLS, client certificate required",
            Some(_) => ", TLS",
            None => "",
        };
        let ws = if l.websocket { ", MQTT over WebSocket" } else { "" };
        let _ = writeln!(s, "broker listens on {} ({auth}{tls}{ws})", l.addr);
    }
    if let Some(m) = &config.metrics {
        let _ = writeln!(s, "metrics on http://{0}/metrics, health on http://{0}/healthz", m.bind);
    }
    if let Some(u) = &config.upstream {
        let tls = if u.tls.is_some() { "TLS" } else { "plain TCP, no TLS" };
        let tls = match u.protocol {
            crate::upstream::settings::Protocol::V311 => format!("MQTT 3.1.1, {tls}"),
            crate::upstream::settings::Protocol::V5 => format!("MQTT 5, {tls}"),
        };
        let _ = writeln!(
            s,
            "upstream {}:{} ({tls}) as client `{}`; status on {}",
            u.host, u.port, u.client_id, u.status_topic
        );
        for r in &u.forward {
            let from = if r.from_clients { "gateway readings and client publishes" } else { "gateway readings" };
            let _ = writeln!(s, "  forward {} ({from}) -> {}<topic> at QoS {}", r.filter, r.prefix, r.qos);
        }
        for d in &u.downlink {
            let _ = writeln!(s, "  downlink {} (minus `{}`) -> local broker", d.filter, d.strip_prefix);
        }
        let q = &u.queue;
        let _ = writeln!(
            s,
            "  queue {} up to {} bytes and {:?}; commits every {:?}; replay {} msg/s",
            q.path.display(),
            q.max_bytes,
            q.max_age,
            q.commit_interval,
            q.replay_rate
        );
    } else if let Some(dir) = &config.gateway.state_dir {
        let _ = writeln!(s, "retained readings kept in {}", dir.join("queue.db").display());
    }
    for p in &config.ports {
        let _ = writeln!(
            s,
            "port `{}`: {} at {} baud, fields: {}; availability on {}",
            p.name,
            p.device,
            p.baud_rate,
            p.field_names().join(", "),
            p.availability_topic
        );
        if let Some(poll) = &p.poll {
            let hex = crate::bytes::hex(&poll.request);
            let _ =
                writeln!(s, "  polled every {:?}: writes {}, waits {:?} for the answer", poll.every, hex, poll.timeout);
        }
        for slave in p.modbus.iter().flat_map(|m| &m.plan) {
            let reads: Vec<String> = slave
                .blocks
                .iter()
                .map(|b| format!("{:?} 0x{:04X}+{}", b.function, b.start, b.count).to_lowercase())
                .collect();
            let _ = writeln!(
                s,
                "  modbus slave {} `{}`: {} read(s): {}",
                slave.id,
                slave.name,
                reads.len(),
                reads.join(", ")
            );
        }
        for c in &p.commands {
            let _ = writeln!(s, "  command `{}`: publish on {}, result on {}", c.name, c.topic, c.result_topic);
        }
    }
    for (i, m) in config.maps.iter().enumerate() {
        let Some(port) = config.ports.iter().find(|p| p.name == m.port) else { continue };
        let _ = writeln!(s, "map {i} (port `{}`, qos {}, retain {}):", m.port, m.qos, m.retain);
        // One example per value a `when` accepts (the first three), each with the fields that frames
        // with that value have: a GGA map shows GGA's fields, not RMC's.
        let cases: Vec<Option<(&str, &str)>> = match &m.when {
            Some(w) => w.values.iter().take(3).map(|v| Some((w.field.as_str(), v.as_str()))).collect(),
            None => vec![None],
        };
        for case in &cases {
            if let (Some((field, value)), true) = (case, cases.len() > 1) {
                let _ = writeln!(s, "  when {field} is {value}:");
            }
            example(&mut s, config, port, m, *case);
        }
    }
    if let Some(ha) = &config.homeassistant {
        let source = crate::homeassistant::discovery::Source {
            gateway: &config.gateway.name,
            status_topic: &config.gateway.status_topic,
            ports: &config.ports,
            maps: &config.maps,
        };
        let a = crate::homeassistant::announce(ha, &source);
        let sensors: Vec<&str> =
            a.messages.iter().filter(|m| m.topic.contains("/sensor/")).map(|m| m.topic.as_str()).collect();
        let _ = writeln!(
            s,
            "Home Assistant discovery: {} sensors and {} connectivity sensors under {}/…/{}/",
            sensors.len(),
            a.messages.len() - sensors.len(),
            ha.prefix,
            ha.node_id(&config.gateway.name)
        );
        for note in &a.notes {
            let _ = writeln!(s, "  {note}");
        }
    }
    s
}

/// Renders the map's messages for an example frame: every field the frame can have, its value shown as
/// `<name>`, the `when` field set to the value given.
fn example(s: &mut String, config: &Config, port: &PortSettings, m: &TopicMap, case: Option<(&str, &str)>) {
    let names = match case {
        Some((field, value)) => port.field_names_where(field, value),
        None => port.field_names(),
    };
    let fields = names
        .into_iter()
        .map(|n| {
            let v = match case {
                Some((field, value)) if field == n => value.to_string(),
                _ => format!("<{n}>"),
            };
            (n.as_str().into(), Value::Text(v))
        })
        .collect();
    let reading = Reading { port: port.name.clone(), fields, received: chrono::Utc::now() };
    let mut out = Vec::new();
    m.messages(&config.gateway.name, &reading, &mut out);
    for msg in out.iter().take(3) {
        // A number's placeholder unquoted (`"pm2_5":<pm2_5>`), so the example shows its JSON type.
        let mut payload = String::from_utf8_lossy(&msg.payload).into_owned();
        if payload.starts_with('{') {
            for name in port.field_names().iter().filter(|n| port.numeric(n)) {
                payload = payload.replace(&format!("\"<{name}>\""), &format!("<{name}>"));
            }
        }
        let _ = writeln!(s, "  {}  {}", msg.topic, payload);
    }
    if out.len() > 3 {
        let _ = writeln!(s, "  … and {} more", out.len() - 3);
    }
}
