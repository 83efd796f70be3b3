//! Raw YAML → validated `Config`: deserializes each section on its own and checks what serde cannot
//! (references between ports and maps, template placeholders, ranges, safe broker defaults).

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::raw::*;
use super::upstream::{resolve_upstream, RawUpstream, UpstreamSettings};
use super::{
    suggest, AclRule, BrokerSettings, Config, GatewaySettings, ListenerSettings, Location, PortSettings, Problems,
    Secret, DEFAULT_LISTENER,
};
use crate::decode::{binary_width, BinaryField, FrameDecoder};
use crate::local_broker::acl::{check_filter, Subject};
use crate::local_broker::front::FrontLimits;
use crate::local_broker::settings::{
    default_front_limits, DEFAULT_MAX_QUEUE_LEN, DEFAULT_MAX_RETAINED_BYTES, DEFAULT_MAX_SESSIONS,
};
use crate::serial::framing::FramingSpec;
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

    let gateway: RawGateway = section(gateway_v, "gateway", p).unwrap_or_default();
    let log: RawLog = section(log_v, "log", p).unwrap_or_default();
    let broker: Option<RawBroker> = section(broker_v, "broker", p);
    let port_values = list(ports_v, "ports", p);
    let map_values = list(maps_v, "maps", p);

    let gateway = resolve_gateway(&gateway, p);
    if let Some(level) = &log.level {
        if tracing_subscriber::EnvFilter::try_new(level).is_err() {
            p.add("log.level", format!("`{level}` is not a log level: use error, warn, info, debug or trace"));
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
            if let Some(mut port) = resolve_port(&raw, &path, &gateway.name, p) {
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
    Some(Config { gateway, log_level: log.level, broker: broker?, ports, maps, upstream })
}

/// A message for an unknown key, with the nearest valid one.
fn unknown_key_message(name: &str, valid: &[&str]) -> String {
    let list = valid.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ");
    match suggest(name, valid.iter().copied()) {
        Some(s) => format!("unknown key `{name}`, did you mean `{s}`? (valid: {list})"),
        None => format!("unknown key `{name}` (valid: {list})"),
    }
}

/// Deserializes one section; on failure records the problem at the exact key and returns None.
fn section<T: DeserializeOwned>(v: Value, path: &str, p: &mut Problems) -> Option<T> {
    let v = if v.is_null() { Value::Mapping(Default::default()) } else { v };
    match serde_path_to_error::deserialize::<_, T>(v) {
        Ok(t) => Some(t),
        Err(e) => {
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
            let (at, message) = explain(&full, &e.into_inner().to_string());
            p.add(&at, message);
            None
        }
    }
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
    if message.contains("did not match any variant of untagged enum RawBytes") {
        return (path.into(), "expected bytes: a list like [0x42, 0x4D] or a hex string like \"42 4D\"".into());
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
    GatewaySettings {
        name: raw.name.clone(),
        status_topic,
        channel_capacity,
        stats_interval: raw.stats_interval,
        state_dir: raw.state_dir.clone(),
    }
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

fn resolve_broker(raw: &RawBroker, p: &mut Problems) -> Option<BrokerSettings> {
    let start = p.count();
    let mut listeners = Vec::new();
    let raw_listeners = if raw.listeners.is_empty() {
        vec![RawListener { bind: DEFAULT_LISTENER.into(), allow_anonymous: None }]
    } else {
        raw.listeners.clone()
    };
    for (i, l) in raw_listeners.iter().enumerate() {
        let path = format!("broker.listeners[{i}]");
        let Ok(addr) = l.bind.parse::<SocketAddr>() else {
            p.add(
                &format!("{path}.bind"),
                format!("`{}` is not ADDR:PORT, e.g. `0.0.0.0:1883` or `[::]:1883`", l.bind),
            );
            continue;
        };
        let loopback = addr.ip().is_loopback();
        if !loopback && raw.users.is_empty() && l.allow_anonymous != Some(true) {
            p.add(
                &path,
                format!(
                    "listener {addr} is reachable from the network but no `broker.users` are configured: add users, \
                     or set `allow_anonymous: true` to let anyone on the network connect"
                ),
            );
        }
        // Without users, a loopback listener is open to local clients (as a fresh Mosquitto 2 is);
        // once users exist, anonymous access is only what is asked for.
        let allow_anonymous = l.allow_anonymous.unwrap_or(loopback && raw.users.is_empty());
        listeners.push(ListenerSettings { addr, allow_anonymous });
    }
    let mut names = HashSet::new();
    for (i, u) in raw.users.iter().enumerate() {
        if u.username.is_empty() || !names.insert(u.username.as_str()) {
            p.add(&format!("broker.users[{i}].username"), "usernames must be non-empty and unique");
        }
        match (&u.password_hash, &u.password) {
            (Some(h), None) => {
                if let Err(e) = crate::local_broker::check_hash(h) {
                    p.add(
                        &format!("broker.users[{i}].password_hash"),
                        format!("not an argon2 hash ({e}); make one with `ser2mqtt hash-password`"),
                    );
                }
            }
            (None, Some(pw)) if pw.is_empty() => {
                p.add(&format!("broker.users[{i}].password"), "an empty password is not allowed")
            }
            (None, Some(_)) => {}
            _ => p.add(
                &format!("broker.users[{i}]"),
                "give exactly one of `password_hash` (from `ser2mqtt hash-password`) or `password`",
            ),
        }
    }
    let mut acl = Vec::new();
    for (i, r) in raw.acl.iter().enumerate() {
        let path = format!("broker.acl[{i}]");
        let rule_start = p.count();
        let subject = match (&r.user, r.anonymous) {
            (Some(u), false) if u == "*" => Subject::Everyone,
            (Some(u), false) => Subject::User(u.clone()),
            (None, true) => Subject::Anonymous,
            _ => {
                p.add(&path, "give exactly one of `user` (a name, or `\"*\"` for every client) or `anonymous: true`");
                Subject::Everyone
            }
        };
        let listener = r.listener.as_ref().and_then(|want| {
            let found = raw_listeners.iter().position(|l| &l.bind == want);
            if found.is_none() {
                let binds: Vec<String> = raw_listeners.iter().map(|l| format!("`{}`", l.bind)).collect();
                p.add(
                    &format!("{path}.listener"),
                    format!("`{want}` is not the `bind` of a listener; the listeners are {}", binds.join(", ")),
                );
            }
            found
        });
        if r.anonymous {
            let open = |l: &ListenerSettings| l.allow_anonymous;
            let reachable = match listener {
                Some(k) => listeners.get(k).is_some_and(open),
                None => listeners.iter().any(open),
            };
            if !reachable && p.count() == rule_start {
                p.add(
                    &path,
                    "no listener this rule applies to has `allow_anonymous: true`, so no anonymous client can use it",
                );
            }
        }
        if let Subject::User(u) = &subject {
            if !names.contains(u.as_str()) {
                let hint =
                    suggest(u, names.iter().copied()).map(|s| format!(", did you mean `{s}`?")).unwrap_or_default();
                p.add(
                    &format!("{path}.user"),
                    format!("`{u}` is not in `broker.users`{hint} (or use `\"*\"` for every client)"),
                );
            }
        }
        for (kind, filters) in [("subscribe", &r.subscribe), ("publish", &r.publish)] {
            for (j, f) in filters.iter().enumerate() {
                if let Err(e) = check_filter(f) {
                    p.add(&format!("{path}.{kind}[{j}]"), e);
                }
            }
        }
        if r.subscribe.is_empty() && r.publish.is_empty() {
            p.add(&path, "the rule names no `subscribe` or `publish` filters");
        }
        acl.push(AclRule {
            subject,
            listener,
            deny: r.deny,
            subscribe: r.subscribe.clone(),
            publish: r.publish.clone(),
        });
    }
    let nonzero = |v: Option<usize>, d: NonZeroUsize, key: &str, p: &mut Problems| match v {
        None => d,
        Some(n) => NonZeroUsize::new(n).unwrap_or_else(|| {
            p.add(&format!("broker.{key}"), "must be at least 1");
            d
        }),
    };
    let max_queue_len = nonzero(raw.max_queue_len, DEFAULT_MAX_QUEUE_LEN, "max_queue_len", p);
    let max_sessions = nonzero(raw.max_sessions, DEFAULT_MAX_SESSIONS, "max_sessions", p);
    let d = default_front_limits();
    let max_connections =
        nonzero(raw.max_connections, NonZeroUsize::new(d.max_connections).unwrap(), "max_connections", p);
    let connect_timeout = raw.connect_timeout.unwrap_or(d.connect_timeout);
    if connect_timeout.is_zero() {
        p.add("broker.connect_timeout", "must be longer than 0s (10s is the default)");
    }
    let bytes = |v: Option<bytesize::ByteSize>, d: usize, key: &str, min: usize, p: &mut Problems| {
        let n = v.map_or(d, |b| b.as_u64() as usize);
        if n < min {
            p.add(&format!("broker.{key}"), format!("must be at least {min} bytes"));
        }
        n
    };
    // 2 bytes is the smallest MQTT packet; 268,435,455 + 5 the largest the length field can say.
    let max_packet_size = bytes(raw.max_packet_size, d.max_packet_size, "max_packet_size", 64, p).min(268_435_460);
    let max_client_buffer = bytes(raw.max_client_buffer, d.max_client_buffer, "max_client_buffer", 1024, p);
    // At most max_queue_len by default: a new `#` subscriber receives every retained message only
    // if they all fit in its queue at once.
    let max_retained = nonzero(raw.max_retained, max_queue_len, "max_retained", p);
    if max_retained > max_queue_len {
        p.add(
            "broker.max_retained",
            format!(
                "{max_retained} is more than `max_queue_len` ({max_queue_len}): a subscriber to `#` would receive only \
                 {max_queue_len} of them; raise `max_queue_len` too"
            ),
        );
    }
    let max_retained_bytes = bytes(raw.max_retained_bytes, DEFAULT_MAX_RETAINED_BYTES, "max_retained_bytes", 1024, p);
    let front =
        FrontLimits { max_connections: max_connections.get(), connect_timeout, max_packet_size, max_client_buffer };
    (p.count() == start).then(|| BrokerSettings {
        listeners,
        users: raw
            .users
            .iter()
            .map(|u| {
                let secret = match (&u.password_hash, &u.password) {
                    (Some(h), _) => Secret::Hash(h.clone()),
                    (None, pw) => Secret::Plain(pw.clone().unwrap_or_default()),
                };
                (u.username.clone(), secret)
            })
            .collect(),
        acl,
        max_queue_len,
        max_sessions,
        front,
        max_retained,
        max_retained_bytes,
    })
}

fn bytes(raw: &RawBytes, path: &str, p: &mut Problems) -> Vec<u8> {
    match raw {
        RawBytes::List(v) => v.clone(),
        RawBytes::Hex(s) => {
            let digits: String = s.split_whitespace().map(|w| w.trim_start_matches("0x")).collect();
            if digits.len() % 2 == 1 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
                p.add(path, format!("`{s}` is not hex bytes, e.g. \"42 4D\""));
                return Vec::new();
            }
            (0..digits.len()).step_by(2).map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap_or(0)).collect()
        }
    }
}

fn resolve_port(raw: &RawPort, path: &str, gateway: &str, p: &mut Problems) -> Option<PortSettings> {
    let start = p.count();
    if !topic_name_ok(&raw.name) {
        p.add(&format!("{path}.name"), "must be non-empty and contain none of `/ + # { }`");
    }
    if let Some(addr) = crate::serial::port::tcp_device(&raw.device) {
        let ok = addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            p.add(
                &format!("{path}.device"),
                format!("`tcp://{addr}` needs a host and a port, e.g. `tcp://10.0.0.5:4001`"),
            );
        }
    }
    if raw.baud_rate == 0 {
        p.add(&format!("{path}.baud_rate"), "must be a positive rate such as 9600 or 115200");
    }
    if !(5..=8).contains(&raw.data_bits) {
        p.add(&format!("{path}.data_bits"), format!("{} is not valid: use 5, 6, 7 or 8", raw.data_bits));
    }
    if !(1..=2).contains(&raw.stop_bits) {
        p.add(&format!("{path}.stop_bits"), format!("{} is not valid: use 1 or 2", raw.stop_bits));
    }
    if raw.silence_timeout.is_zero() || raw.reopen_backoff_max.is_zero() {
        p.add(path, "`silence_timeout` and `reopen_backoff_max` must be longer than 0s");
    }
    let framing = resolve_framing(&raw.framing, &format!("{path}.framing"), p);
    let checksum = raw.checksum.as_ref().and_then(|c| c.resolve());
    let decoder = resolve_decoder(&raw.decoder, &format!("{path}.decoder"), framing.as_ref(), p);
    let availability_topic = render_fixed(
        &raw.availability_topic,
        &format!("{path}.availability_topic"),
        &[("gateway", gateway), ("port", &raw.name)],
        p,
    );
    if p.count() != start {
        return None;
    }
    Some(PortSettings {
        name: Arc::from(raw.name.as_str()),
        device: raw.device.clone(),
        baud_rate: raw.baud_rate,
        data_bits: raw.data_bits,
        parity: raw.parity,
        stop_bits: raw.stop_bits,
        flow_control: raw.flow_control,
        framing: framing?,
        checksum,
        decoder: Arc::new(decoder?),
        silence_timeout: raw.silence_timeout,
        availability_topic,
        skip_first_frames: raw.skip_first_frames,
        reopen_backoff_max: raw.reopen_backoff_max,
        fingerprint: String::new(),
    })
}

/// Frames larger than this are refused at load time: a UART frame of 64 KiB is a mistake.
const MAX_FRAME_LIMIT: usize = 65536;

fn resolve_framing(raw: &RawFraming, path: &str, p: &mut Problems) -> Option<FramingSpec> {
    let start = p.count();
    let max_ok = |max: usize, p: &mut Problems| {
        if max == 0 || max > MAX_FRAME_LIMIT {
            p.add(&format!("{path}.max_length"), format!("must be between 1 and {MAX_FRAME_LIMIT}"));
        }
    };
    let spec = match raw {
        RawFraming::Lines { delimiter, max_length } => {
            if delimiter.is_empty() {
                p.add(&format!("{path}.delimiter"), "must not be empty; write \"\\n\" or \"\\r\\n\" in double quotes");
            }
            max_ok(*max_length, p);
            FramingSpec::Lines { delimiter: delimiter.as_bytes().to_vec(), max_length: *max_length }
        }
        RawFraming::Fixed { length, header, trailer } => {
            let header = header.as_ref().map(|h| bytes(h, &format!("{path}.header"), p)).unwrap_or_default();
            let trailer = trailer.as_ref().map(|t| bytes(t, &format!("{path}.trailer"), p)).unwrap_or_default();
            if *length == 0 || *length > MAX_FRAME_LIMIT || header.len() + trailer.len() > *length {
                p.add(
                    &format!("{path}.length"),
                    format!("must be 1..={MAX_FRAME_LIMIT} and fit the header and trailer"),
                );
            }
            FramingSpec::Fixed { length: *length, header, trailer }
        }
        RawFraming::Markers { start: s, end, escape, max_length } => {
            let s = bytes(s, &format!("{path}.start"), p);
            let end = bytes(end, &format!("{path}.end"), p);
            if s.is_empty() || end.is_empty() {
                p.add(path, "`start` and `end` markers must not be empty");
            }
            max_ok(*max_length, p);
            FramingSpec::Markers { start: s, end, escape: *escape, max_length: *max_length }
        }
        RawFraming::LengthPrefixed {
            header,
            length_offset,
            length_width,
            length_byte_order,
            length_counts,
            length_adjust,
            max_length,
        } => {
            let before = p.count();
            let header = bytes(header, &format!("{path}.header"), p);
            if header.is_empty() && p.count() == before {
                p.add(
                    &format!("{path}.header"),
                    "must not be empty: the header is how frames are found again after garbage",
                );
            }
            if ![1, 2, 4].contains(length_width) {
                p.add(&format!("{path}.length_width"), format!("{length_width} is not valid: use 1, 2 or 4"));
            }
            max_ok(*max_length, p);
            FramingSpec::LengthPrefixed {
                header,
                length_offset: *length_offset,
                length_width: *length_width as usize,
                length_byte_order: *length_byte_order,
                length_counts: *length_counts,
                length_adjust: *length_adjust,
                max_length: *max_length,
            }
        }
    };
    (p.count() == start).then_some(spec)
}

fn resolve_decoder(
    raw: &RawDecoder,
    path: &str,
    framing: Option<&FramingSpec>,
    p: &mut Problems,
) -> Option<FrameDecoder> {
    let start = p.count();
    let check_types = |types: &std::collections::BTreeMap<String, FieldKind>, names: &[String], p: &mut Problems| {
        for t in types.keys() {
            if !names.contains(t) {
                let valid: Vec<&str> = names.iter().map(String::as_str).collect();
                p.add(
                    &format!("{path}.types.{t}"),
                    unknown_key_message(t, &valid).replace("unknown key", "no field named"),
                );
            }
        }
    };
    let decoder = match raw {
        RawDecoder::Regex { patterns, types } => {
            let mut compiled = Vec::new();
            if patterns.is_empty() {
                p.add(&format!("{path}.patterns"), "give at least one pattern");
            }
            for (i, pat) in patterns.iter().enumerate() {
                match regex::bytes::Regex::new(pat) {
                    Ok(re) if re.capture_names().flatten().next().is_none() => p.add(
                        &format!("{path}.patterns[{i}]"),
                        "has no named capture such as (?P<temp>[0-9.]+); only named captures become fields",
                    ),
                    Ok(re) => compiled.push(re),
                    Err(e) => {
                        // regex's message draws a caret under the pattern over several lines; keep its verdict.
                        let text = e.to_string();
                        let verdict = text.lines().last().unwrap_or_default().trim_start_matches("error: ");
                        p.add(&format!("{path}.patterns[{i}]"), format!("not a valid regex: {verdict}"))
                    }
                }
            }
            let d = FrameDecoder::Regex { patterns: compiled, types: types.clone() };
            check_types(types, &d.field_names(), p);
            d
        }
        RawDecoder::Csv { separator, columns, types } => {
            if !separator.is_ascii() {
                p.add(&format!("{path}.separator"), "must be a single ASCII character such as `,` or `;`");
            }
            if columns.iter().flatten().next().is_none() {
                p.add(&format!("{path}.columns"), "name at least one column (use `null` to skip a column)");
            }
            let d = FrameDecoder::Csv {
                separator: *separator as u8,
                columns: columns.iter().map(|c| c.as_deref().map(Arc::from)).collect(),
                types: types.clone(),
            };
            check_types(types, &d.field_names(), p);
            d
        }
        RawDecoder::KeyValue { pair_separator, separator, keys, types } => {
            if keys.is_empty() {
                p.add(&format!("{path}.keys"), "list the keys the sensor sends, e.g. [temp, hum]");
            }
            let d = FrameDecoder::KeyValue {
                pair_separator: *pair_separator,
                separator: *separator,
                keys: keys.iter().map(|k| Arc::from(k.as_str())).collect(),
                types: types.clone(),
            };
            check_types(types, &d.field_names(), p);
            d
        }
        RawDecoder::Json { fields } => {
            for (name, ptr) in fields {
                if !ptr.is_empty() && !ptr.starts_with('/') {
                    p.add(&format!("{path}.fields.{name}"), format!("`{ptr}` is not a JSON pointer; write `/{ptr}`"));
                }
            }
            FrameDecoder::Json { fields: fields.iter().map(|(k, v)| (Arc::from(k.as_str()), v.clone())).collect() }
        }
        RawDecoder::Binary { fields } => {
            let max = framing.map(FramingSpec::max_frame);
            let mut names = HashSet::new();
            let mut out = Vec::new();
            for (i, f) in fields.iter().enumerate() {
                let end = f.at + binary_width(f.kind);
                if !names.insert(f.name.as_str()) {
                    p.add(&format!("{path}.fields[{i}].name"), format!("field `{}` is defined twice", f.name));
                }
                if let Some(max) = max.filter(|m| end > *m) {
                    p.add(
                        &format!("{path}.fields[{i}].at"),
                        format!("bytes {}..{end} lie beyond the {max}-byte frame", f.at),
                    );
                }
                out.push(BinaryField {
                    name: Arc::from(f.name.as_str()),
                    at: f.at,
                    kind: f.kind,
                    byte_order: f.byte_order,
                    word_swap: f.word_swap,
                    scale: f.scale,
                    add: f.add,
                });
            }
            FrameDecoder::Binary { fields: out }
        }
    };
    (p.count() == start).then_some(decoder)
}

fn resolve_map(raw: &RawMap, path: &str, ports: &[PortSettings], all: &[String], p: &mut Problems) -> Option<TopicMap> {
    let start = p.count();
    let port = ports.iter().find(|x| *x.name == raw.port);
    if !all.contains(&raw.port) {
        let hint = suggest(&raw.port, all.iter().map(String::as_str))
            .map(|s| format!(", did you mean `{s}`?"))
            .unwrap_or_default();
        p.add(&format!("{path}.port"), format!("no port is named `{}`{hint} (ports: {})", raw.port, all.join(", ")));
    }
    // Fields this map can see; unknown when the port itself has problems (reported there).
    let fields: Option<BTreeSet<String>> = port.map(|x| x.decoder.field_names().into_iter().collect());
    let known = |name: &str, key: &str, p: &mut Problems| {
        if let Some(f) = &fields {
            if !f.contains(name) {
                let hint = suggest(name, f.iter().map(String::as_str))
                    .map(|s| format!(", did you mean `{s}`?"))
                    .unwrap_or_default();
                let list = f.iter().cloned().collect::<Vec<_>>().join(", ");
                p.add(
                    &format!("{path}.{key}"),
                    format!("the decoder of port `{}` has no field `{name}`{hint} (fields: {list})", raw.port),
                );
            }
        }
    };
    let when = raw.when.as_ref().and_then(|w| {
        known(&w.field, "when.field", p);
        match (&w.equals, &w.one_of) {
            (Some(v), None) => Some(When { field: w.field.clone(), values: vec![v.clone()] }),
            (None, Some(vs)) if !vs.is_empty() => Some(When { field: w.field.clone(), values: vs.clone() }),
            _ => {
                p.add(&format!("{path}.when"), "give exactly one of `equals: VALUE` or `in: [VALUES]`");
                None
            }
        }
    });
    for (i, f) in raw.fields.iter().flatten().enumerate() {
        known(f, &format!("fields[{i}]"), p);
    }
    let topic = match Template::parse(&raw.topic) {
        Ok(t) => {
            for name in t.placeholders() {
                if name == "field" {
                    if raw.publish == PublishUnit::PerFrame {
                        p.add(&format!("{path}.topic"), "`{field}` only exists in `publish: per_field` maps");
                    }
                } else if !BUILTIN_PLACEHOLDERS.contains(&name) {
                    known(name, "topic", p);
                }
            }
            Some(t)
        }
        Err(e) => {
            p.add(&format!("{path}.topic"), e);
            None
        }
    };
    let payload = raw.payload.unwrap_or(match raw.publish {
        PublishUnit::PerField => PayloadFormat::Plain,
        PublishUnit::PerFrame => PayloadFormat::Json,
    });
    if raw.publish == PublishUnit::PerFrame && payload == PayloadFormat::Plain {
        p.add(&format!("{path}.payload"), "a per-frame message carries several values: use `payload: json`");
    }
    if raw.qos > 2 {
        p.add(&format!("{path}.qos"), format!("{} is not an MQTT QoS: use 0, 1 or 2", raw.qos));
    }
    if p.count() != start {
        return None;
    }
    Some(TopicMap {
        port: Arc::from(raw.port.as_str()),
        when,
        fields: raw.fields.clone(),
        topic: topic?,
        unit: raw.publish,
        payload,
        qos: raw.qos,
        retain: raw.retain,
    })
}
