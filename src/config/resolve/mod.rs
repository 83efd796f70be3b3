//! Raw YAML → validated `Config`: deserializes each section on its own and checks what serde cannot
//! (references between ports and maps, template placeholders, ranges, safe broker defaults).

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_yaml::Value;

mod broker;
mod maps;
mod ports;

use broker::resolve_broker;
use maps::resolve_map;
use ports::resolve_port;

use super::raw::*;
use super::upstream::{resolve_upstream, RawUpstream, UpstreamSettings};
use super::{
    suggest, AclRule, BrokerSettings, Config, GatewaySettings, ListenerSettings, Location, PortSettings, Problems,
    Secret, DEFAULT_LISTENER,
};
use crate::local_broker::acl::{check_filter, Subject};
use crate::local_broker::front::FrontLimits;
use crate::local_broker::settings::{
    default_front_limits, DEFAULT_MAX_QUEUE_LEN, DEFAULT_MAX_RETAINED_BYTES, DEFAULT_MAX_SESSIONS,
};
use crate::topic_map::{Template, TopicMap, When, BUILTIN_PLACEHOLDERS};

pub(super) fn resolve(text: &str, p: &mut Problems) -> Option<Config> {
    let doc: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let location = e.location().map(|l| Location { line: l.line(), column: l.column() });
            p.add_at(location, "", format!("not valid YAML: {e}"));
            return None;
        }
    };
    let mut top = match doc {
        Value::Mapping(m) => m,
        Value::Null => Default::default(),
        _ => {
            p.add("", "the file must be a mapping with keys such as `ports:` and `maps:`");
            return None;
        }
    };
    for key in top.keys() {
        let name = key.as_str().unwrap_or("?");
        if !TOP_LEVEL_KEYS.contains(&name) {
            p.add(name, unknown_key_message(name, TOP_LEVEL_KEYS));
        }
    }
    let mut take = |k: &str| top.remove(k).unwrap_or(Value::Null);
    let (gateway_v, log_v, broker_v, upstream_v, ports_v, maps_v) =
        (take("gateway"), take("log"), take("broker"), take("upstream"), take("ports"), take("maps"));
    // `homeassistant:` with nothing under it turns discovery on with its defaults.
    let homeassistant_v = top.remove("homeassistant");
    let metrics_v = top.remove("metrics");

    let gateway: RawGateway = section(gateway_v, "gateway", p).unwrap_or_default();
    let log: RawLog = section(log_v, "log", p).unwrap_or_default();
    let broker: Option<RawBroker> = section(broker_v, "broker", p);
    let port_values = list(ports_v, "ports", p);
    let map_values = list(maps_v, "maps", p);

    let gateway = resolve_gateway(&gateway, p);
    if let Some(level) = &log.level {
        if let Err(why) = check_log_level(level) {
            p.add("log.level", why);
        }
    }
    let broker = broker.and_then(|b| resolve_broker(&b, p));
    let upstream = if upstream_v.is_null() {
        None
    } else {
        // As written (plus what it depends on): a reload compares it to know whether the bridge changed.
        let fingerprint = format!(
            "{}\n{:?}\n{}",
            gateway.name,
            gateway.state_dir,
            serde_yaml::to_string(&upstream_v).unwrap_or_default()
        );
        section::<RawUpstream>(upstream_v, "upstream", p)
            .and_then(|u| resolve_upstream(&u, &gateway.name, gateway.state_dir.as_deref(), p))
            .map(|u| UpstreamSettings { fingerprint, ..u })
    };

    // Names of every port, even those whose section failed, so maps are not blamed for it.
    let all_port_names: Vec<String> =
        port_values.iter().filter_map(|v| v.get("name").and_then(Value::as_str).map(String::from)).collect();
    let mut ports = Vec::new();
    let mut seen = HashSet::new();
    for (i, v) in port_values.into_iter().enumerate() {
        let path = format!("ports[{i}]");
        // What the user wrote for this port, plus the gateway name its topics depend on: equal
        // fingerprints mean a reload can leave the running port alone.
        let fingerprint = format!("{}\n{}", gateway.name, serde_yaml::to_string(&v).unwrap_or_default());
        if let Some(raw) = section::<RawPort>(v, &path, p) {
            if !seen.insert(raw.name.clone()) {
                p.add(&format!("{path}.name"), format!("port name `{}` is used twice; names must be unique", raw.name));
            }
            if let Some(mut port) = resolve_port(&raw, &path, &gateway, p) {
                port.fingerprint = fingerprint;
                ports.push(port);
            }
        }
    }
    let mut maps = Vec::new();
    for (i, v) in map_values.into_iter().enumerate() {
        let path = format!("maps[{i}]");
        if let Some(raw) = section::<RawMap>(v, &path, p) {
            if let Some(m) = resolve_map(&raw, &path, &ports, &all_port_names, p) {
                maps.push(m);
            }
        }
    }
    let homeassistant = homeassistant_v.and_then(|v| {
        let ha = section::<crate::homeassistant::HomeAssistant>(v, "homeassistant", p)?;
        let mut found = crate::settings::Problems::default();
        ha.check(&ports, &all_port_names, &mut found);
        place(p, "homeassistant", found);
        Some(ha)
    });
    let metrics = metrics_v.and_then(|v| {
        let m = section::<crate::metrics::MetricsSettings>(v, "metrics", p)?;
        if let Err(why) = m.addr() {
            p.add("metrics.bind", why);
        }
        Some(m)
    });
    Some(Config { gateway, log_level: log.level, broker: broker?, ports, maps, upstream, homeassistant, metrics })
}

/// A message for an unknown key, with the nearest valid one.
const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// A bare word must be a level: tracing would take `inof` as a target name and silence every line.
/// Anything with `=`, `,` or `:` is a filter (`info,ser2mqtt::serial=debug`), checked by tracing.
fn check_log_level(level: &str) -> Result<(), String> {
    let is_filter = level.contains(['=', ',', ':']);
    if !is_filter && !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
        return Err(crate::settings::unknown("log level", level, &LOG_LEVELS)
            + "; or a filter such as `info,ser2mqtt::serial=debug`");
    }
    tracing_subscriber::EnvFilter::try_new(level).map(|_| ()).map_err(|e| format!("`{level}` is not a log filter: {e}"))
}

/// Places a section's problems at their full key paths.
fn place(p: &mut Problems, path: &str, found: crate::settings::Problems) {
    for (key, message) in found.into_list() {
        let at = if key.is_empty() { path.to_string() } else { format!("{path}.{key}") };
        p.add(&at, message);
    }
}

fn unknown_key_message(name: &str, valid: &[&str]) -> String {
    crate::settings::unknown("key", name, valid)
}

/// Serde stops at a section's first mistake; `section` removes the key it was about and reads the
/// section again, so one run of `check` shows them all. The bound only stops a runaway loop: no
/// section has this many keys.
const MAX_PROBLEMS_PER_SECTION: usize = 50;

/// Deserializes one section; records every problem serde finds at its exact key. Keys removed for
/// their problems fall back to their defaults, so the checks after serde still run on the rest (the
/// file is refused all the same: any problem refuses it).
fn section<T: DeserializeOwned>(v: Value, path: &str, p: &mut Problems) -> Option<T> {
    let mut v = if v.is_null() { Value::Mapping(Default::default()) } else { v };
    let mut removed: Vec<String> = Vec::new();
    for _ in 0..MAX_PROBLEMS_PER_SECTION {
        let e = match serde_path_to_error::deserialize::<_, T>(v.clone()) {
            Ok(t) => return Some(t),
            Err(e) => e,
        };
        let mut full = path.to_string();
        for seg in e.path().iter() {
            match seg {
                serde_path_to_error::Segment::Seq { index } => full.push_str(&format!("[{index}]")),
                serde_path_to_error::Segment::Map { key } => {
                    full.push('.');
                    full.push_str(key);
                }
                serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {}
            }
        }
        let message = e.into_inner().to_string();
        let found = quoted_key(&v, &full[path.len()..], &message);
        // Found below a list inside a tagged enum: serde would report the removed key as the
        // enum's missing `type`, so stop reading this section here.
        let nested = found.as_deref().is_some_and(|k| k.contains(['.', '[']));
        if let Some(key) = found {
            full = format!("{full}.{key}");
        }
        if let Some(field) = message.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
            // A key removed for its own problem is missing now: already reported.
            if !removed.contains(&format!("{full}.{field}")) {
                let (at, message) = explain(&full, &message);
                p.add(&at, message);
            }
            return None;
        }
        let (at, message) = explain(&full, &message);
        p.add(&at, message);
        if nested || !remove_at(&mut v, &at[path.len()..]) {
            return None;
        }
        removed.push(at);
    }
    None
}

/// `ports[0].framing` → [("ports", Some(0)), ("framing", None)].
fn segments(rel: &str) -> impl Iterator<Item = (&str, Option<usize>)> {
    rel.split('.').filter(|s| !s.is_empty()).map(|part| match part.split_once('[') {
        Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
        None => (part, None),
    })
}

fn value_at<'a>(root: &'a Value, rel: &str) -> Option<&'a Value> {
    segments(rel).try_fold(root, |at, (key, index)| {
        let at = if key.is_empty() { at } else { at.get(key)? };
        index.map_or(Some(at), |i| at.get(i))
    })
}

/// Removes the mapping key `rel` points at; false if it is not a mapping key (a list item or the
/// section itself, whose removal would shift or hide everything else).
fn remove_at(root: &mut Value, rel: &str) -> bool {
    let Some((parent, key)) = rel.rsplit_once('.') else { return false };
    if key.contains('[') {
        return false;
    }
    let mut at = root;
    for (k, index) in segments(parent) {
        if !k.is_empty() {
            match at.get_mut(k) {
                Some(next) => at = next,
                None => return false,
            }
        }
        if let Some(i) = index {
            match at.get_mut(i) {
                Some(next) => at = next,
                None => return false,
            }
        }
    }
    at.as_mapping_mut().and_then(|m| m.remove(key)).is_some()
}

/// The key under `rel` (a path relative to `root`) whose value the message quotes, as a path
/// relative to `rel` (`fields[0].type`): a mapping is all serde can point at from inside an
/// internally tagged enum (`framing:`, `decoder:`).
fn quoted_key(root: &Value, rel: &str, message: &str) -> Option<String> {
    let quoted = |text: &str| message.contains(&format!("`{text}`")) || message.contains(&format!("\"{text}\""));
    fn find(v: &Value, quoted: &dyn Fn(&str) -> bool) -> Option<String> {
        match v {
            Value::Mapping(m) => m.iter().find_map(|(k, v)| {
                let key = k.as_str()?;
                let text = match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    _ => None,
                };
                match text {
                    Some(t) => quoted(&t).then(|| key.to_string()),
                    None => find(v, quoted).map(|sub| {
                        if sub.starts_with('[') {
                            format!("{key}{sub}")
                        } else {
                            format!("{key}.{sub}")
                        }
                    }),
                }
            }),
            Value::Sequence(items) => {
                items.iter().enumerate().find_map(|(i, v)| find(v, quoted).map(|sub| format!("[{i}].{sub}")))
            }
            _ => None,
        }
    }
    find(value_at(root, rel)?, &quoted)
}

/// Rewrites serde's message into one that says what would be valid; returns the path to point at.
fn explain(path: &str, message: &str) -> (String, String) {
    let backticked = |s: &str| -> Vec<String> { s.split('`').skip(1).step_by(2).map(String::from).collect() };
    for (prefix, what) in [("unknown field `", "key"), ("unknown variant `", "value")] {
        if message.starts_with(prefix) {
            let names = backticked(&message[prefix.len() - 1..]);
            let Some((typed, valid)) = names.split_first() else { break };
            let valid: Vec<&str> = valid.iter().map(String::as_str).collect();
            let list = valid.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ");
            let hint = match suggest(typed, valid.iter().copied()) {
                Some(s) => format!(", did you mean `{s}`?"),
                None => String::new(),
            };
            let at = if what == "key" && !path.ends_with(&format!(".{typed}")) {
                format!("{path}.{typed}")
            } else {
                path.to_string()
            };
            return (at, format!("unknown {what} `{typed}`{hint} (valid: {list})"));
        }
    }
    if let Some(field) = message.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
        let what = if field == "type" { " (the kind of framing or decoder)" } else { "" };
        return (path.into(), format!("missing key `{field}`{what}"));
    }
    (path.into(), message.to_string())
}

fn list(v: Value, path: &str, p: &mut Problems) -> Vec<Value> {
    match v {
        Value::Null => Vec::new(),
        Value::Sequence(s) => s,
        _ => {
            p.add(path, format!("`{path}` must be a list (items start with `- `)"));
            Vec::new()
        }
    }
}

fn topic_name_ok(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '+', '#', '{', '}', '\0'])
}

fn resolve_gateway(raw: &RawGateway, p: &mut Problems) -> GatewaySettings {
    if !topic_name_ok(&raw.name) {
        p.add("gateway.name", "must be non-empty and contain none of `/ + # { }` (it becomes a topic level)");
    }
    let status_topic = render_fixed(&raw.status_topic, "gateway.status_topic", &[("gateway", &raw.name)], p);
    let channel_capacity = NonZeroUsize::new(raw.channel_capacity).unwrap_or_else(|| {
        p.add("gateway.channel_capacity", "must be at least 1");
        NonZeroUsize::MIN
    });
    if raw.stats_interval.is_zero() {
        p.add("gateway.stats_interval", "must be longer than 0s, e.g. `30s`");
    }
    let command_filter = command_topics(raw, p);
    GatewaySettings {
        name: raw.name.clone(),
        status_topic,
        channel_capacity,
        stats_interval: raw.stats_interval,
        state_dir: raw.state_dir.clone(),
        command_topic: raw.command_topic.clone(),
        result_topic: raw.result_topic.clone(),
        command_filter,
    }
}

/// Checks the command and result topic templates; returns the filter that catches every command.
fn command_topics(raw: &RawGateway, p: &mut Problems) -> String {
    let vars = [("gateway", raw.name.as_str()), ("port", "port"), ("command", "command")];
    let wildcard = |level: &str| level == "{port}" || level == "{command}";
    for (key, text) in [("gateway.command_topic", &raw.command_topic), ("gateway.result_topic", &raw.result_topic)] {
        render_fixed(text, key, &vars, p);
        let whole_levels = text.split('/').all(|l| wildcard(l) || !(l.contains("{port}") || l.contains("{command}")));
        if !whole_levels || text.contains(['+', '#']) {
            p.add(
                key,
                "`{port}` and `{command}` must each be a whole topic level, e.g. `{gateway}/{port}/set/{command}`",
            );
        }
    }
    if !raw.command_topic.contains("{port}") || !raw.command_topic.contains("{command}") {
        p.add("gateway.command_topic", "must contain `{port}` and `{command}`, e.g. `{gateway}/{port}/set/{command}`");
    }
    raw.command_topic
        .split('/')
        .map(|l| if wildcard(l) { "+".to_string() } else { fill(l, &vars) })
        .collect::<Vec<_>>()
        .join("/")
}

/// A template checked already, filled in (empty if it did not parse).
fn fill(text: &str, vars: &[(&str, &str)]) -> String {
    Template::parse(text)
        .ok()
        .and_then(|t| t.render(|n| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string())))
        .unwrap_or_default()
}

/// Renders a template that may only use the given placeholders.
fn render_fixed(text: &str, path: &str, vars: &[(&str, &str)], p: &mut Problems) -> String {
    match Template::parse(text) {
        Ok(t) => {
            let allowed: Vec<&str> = vars.iter().map(|(k, _)| *k).collect();
            for name in t.placeholders() {
                if !allowed.contains(&name) {
                    p.add(
                        path,
                        format!("placeholder `{{{name}}}` is not available here (valid: {})", braces(&allowed)),
                    );
                }
            }
            t.render(|n| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string())).unwrap_or_default()
        }
        Err(e) => {
            p.add(path, e);
            String::new()
        }
    }
}

fn braces(names: &[&str]) -> String {
    names.iter().map(|n| format!("`{{{n}}}`")).collect::<Vec<_>>().join(", ")
}
