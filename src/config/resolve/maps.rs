//! `maps:` → `TopicMap`s: the port a map reads, its topic and payload templates checked against
//! the fields that port's decoder can give.

use super::*;

pub(super) fn resolve_map(
    raw: &RawMap,
    path: &str,
    ports: &[PortSettings],
    all: &[String],
    p: &mut Problems,
) -> Option<TopicMap> {
    let start = p.count();
    let port = ports.iter().find(|x| *x.name == raw.port);
    if !all.contains(&raw.port) {
        let hint = suggest(&raw.port, all.iter().map(String::as_str))
            .map(|s| format!(", did you mean `{s}`?"))
            .unwrap_or_default();
        p.add(&format!("{path}.port"), format!("no port is named `{}`{hint} (ports: {})", raw.port, all.join(", ")));
    }
    // Fields this map can see; unknown when the port itself has problems (reported there).
    let fields: Option<BTreeSet<String>> = port.map(|x| x.field_names().into_iter().collect());
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
    // Per-frame JSON is stamped with `time` and `ts` (the receive time): a field of that name would be
    // overwritten without a word.
    if raw.publish == PublishUnit::PerFrame && payload == PayloadFormat::Json {
        for stamped in ["time", "ts"] {
            let published = raw.fields.as_ref().is_none_or(|f| f.iter().any(|n| n == stamped));
            if published && fields.as_ref().is_some_and(|f| f.contains(stamped)) {
                p.add(
                    &format!("{path}.port"),
                    format!(
                        "port `{}` decodes a field `{stamped}`, which per-frame JSON payloads use for the receive \
                         time: rename it in the decoder (e.g. `fix_{stamped}`) or leave it out with `fields:`",
                        raw.port
                    ),
                );
            }
        }
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
        qos: raw.qos.into(),
        retain: raw.retain,
    })
}
