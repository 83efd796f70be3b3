//! Readings → MQTT messages: which readings a map takes, the topic it renders, the payload it builds,
//! and the QoS and retain flag it publishes with.
//!
//! Templates are parsed once at load time; a placeholder the decoder can never fill is a config error,
//! not a surprise at 3 a.m. Values substituted into topics have `/`, `+` and `#` replaced by `_` so a
//! reading can never create extra topic levels or wildcards.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use chrono::SecondsFormat;
use serde::Deserialize;

use crate::decode::{Reading, Value};

/// A map's `publish:`: one message per field or one per frame.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PublishUnit {
    /// One message per field.
    #[default]
    PerField,
    /// One message per frame carrying all selected fields.
    PerFrame,
}

/// A map's `payload:`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// The value as text: `21.5`, `true`, `A`.
    Plain,
    /// `{"value":…}` or the fields, plus `"time"` (RFC 3339, ms) and `"ts"` (unix ms).
    Json,
}

/// Placeholders every template may use whatever the decoder.
pub const BUILTIN_PLACEHOLDERS: &[&str] = &["gateway", "port"];

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    Placeholder(String),
}

/// A parsed topic template such as `sensors/{gateway}/{port}/{field}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let close = rest[open..].find('}').ok_or_else(|| format!("`{{` at byte {open} is never closed"))?;
            let name = &rest[open + 1..open + close];
            if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                return Err(format!("`{{{name}}}` is not a placeholder name (letters, digits, `_`)"));
            }
            parts.push(Part::Placeholder(name.to_string()));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err("`}` without a matching `{`".into());
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        if text.is_empty() {
            return Err("a topic cannot be empty".into());
        }
        if parts.iter().any(|p| matches!(p, Part::Literal(l) if l.contains(['+', '#', '\0']))) {
            return Err("a topic to publish to cannot contain `+`, `#` or NUL".into());
        }
        Ok(Template { parts })
    }

    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Placeholder(n) => Some(n.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Renders with `lookup`; `None` if a placeholder has no value.
    /// Whether some rendering of this template could be `topic` (each placeholder standing for one
    /// or more characters): how a retained topic kept from an earlier run is recognised as still
    /// mapped.
    pub fn could_be(&self, topic: &str) -> bool {
        fn from(parts: &[Part], rest: &str) -> bool {
            match parts.split_first() {
                None => rest.is_empty(),
                Some((Part::Literal(l), tail)) => rest.strip_prefix(l.as_str()).is_some_and(|r| from(tail, r)),
                Some((Part::Placeholder(_), tail)) => rest
                    .char_indices()
                    .skip(1)
                    .map(|(i, _)| i)
                    .chain([rest.len()])
                    .any(|i| !rest.is_empty() && from(tail, &rest[i..])),
            }
        }
        from(&self.parts, topic)
    }

    pub fn render<V: AsRef<str>>(&self, lookup: impl Fn(&str) -> Option<V>) -> Option<String> {
        // Sized for the usual topic at once: one allocation per rendered topic.
        let mut out = String::with_capacity(64);
        for p in &self.parts {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::Placeholder(n) => {
                    let v = lookup(n)?;
                    let v = v.as_ref();
                    // A value must not add levels or wildcards, and MQTT forbids NUL in a topic.
                    out.extend(v.chars().map(|c| if matches!(c, '/' | '+' | '#' | '\0') { '_' } else { c }));
                }
            }
        }
        Some(out)
    }
}

/// A message ready for a broker.
#[derive(Debug, Clone, PartialEq)]
pub struct OutMessage {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
}

/// Which readings a map takes.
#[derive(Debug, Clone)]
pub struct When {
    pub field: String,
    pub values: Vec<String>,
}

/// A resolved topic map.
#[derive(Debug, Clone)]
pub struct TopicMap {
    pub port: Arc<str>,
    pub when: Option<When>,
    pub fields: Option<Vec<String>>,
    pub topic: Template,
    pub unit: PublishUnit,
    pub payload: PayloadFormat,
    pub qos: u8,
    pub retain: bool,
}

impl TopicMap {
    pub fn selects(&self, reading: &Reading) -> bool {
        *reading.port == *self.port
            && self
                .when
                .as_ref()
                .is_none_or(|w| reading.get(&w.field).is_some_and(|v| w.values.iter().any(|x| *x == v.to_plain())))
    }

    /// Whether this map publishes the field `name`.
    pub fn wanted(&self, name: &str) -> bool {
        self.fields.as_ref().is_none_or(|f| f.iter().any(|x| x == name))
    }

    /// Appends this map's messages for `reading`. Returns how many readings' fields could not be
    /// published because a topic placeholder had no value in this frame.
    pub fn messages(&self, gateway: &str, reading: &Reading, out: &mut Vec<OutMessage>) -> usize {
        if !self.selects(reading) {
            return 0;
        }
        // Only JSON payloads carry the time; plain ones are not made to format it.
        let time = || reading.received.to_rfc3339_opts(SecondsFormat::Millis, true);
        let ts = reading.received.timestamp_millis();
        let lookup = |field, name: &str| placeholder(gateway, reading, field, name);
        let mut unmapped = 0;
        match self.unit {
            PublishUnit::PerField => {
                for (name, value) in reading.fields.iter().filter(|(n, _)| self.wanted(n)) {
                    let Some(topic) = self.topic.render(|p| lookup(Some(name), p)) else {
                        unmapped += 1;
                        continue;
                    };
                    let payload = match self.payload {
                        PayloadFormat::Plain => Bytes::from(value.to_plain()),
                        PayloadFormat::Json => {
                            let doc = serde_json::json!({ "value": value.to_json(), "time": time(), "ts": ts });
                            Bytes::from(doc.to_string())
                        }
                    };
                    out.push(OutMessage { topic, payload, qos: self.qos, retain: self.retain });
                }
            }
            PublishUnit::PerFrame => {
                let Some(topic) = self.topic.render(|p| lookup(None, p)) else {
                    return 1;
                };
                let mut doc = serde_json::Map::new();
                for (name, value) in reading.fields.iter().filter(|(n, _)| self.wanted(n)) {
                    doc.insert(name.to_string(), value.to_json());
                }
                doc.insert("time".into(), time().into());
                doc.insert("ts".into(), ts.into());
                let payload = Bytes::from(serde_json::Value::Object(doc).to_string());
                out.push(OutMessage { topic, payload, qos: self.qos, retain: self.retain });
            }
        }
        unmapped
    }
}

/// A placeholder's value for one message: borrowed where it is already text, so rendering a topic
/// allocates only the topic.
fn placeholder<'a>(gateway: &'a str, reading: &'a Reading, field: Option<&'a str>, name: &str) -> Option<Cow<'a, str>> {
    match name {
        "gateway" => Some(Cow::Borrowed(gateway)),
        "port" => Some(Cow::Borrowed(&*reading.port)),
        "field" => field.map(Cow::Borrowed),
        other => reading.get(other).map(|v| match v {
            Value::Text(t) => Cow::Borrowed(t.as_str()),
            v => Cow::Owned(v.to_plain()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_template_recognises_the_topics_it_could_render() {
        let t = Template::parse("site/{gateway}/{port}/{field}").unwrap();
        assert!(t.could_be("site/gw/gps/sats"));
        assert!(t.could_be("site/gw/gps/a/b"), "a value may hold a slash");
        assert!(!t.could_be("site/gw/gps/"), "a placeholder is never empty");
        assert!(!t.could_be("other/gw/gps/sats"));
        assert!(Template::parse("plain/topic").unwrap().could_be("plain/topic"));
        assert!(!Template::parse("plain/topic").unwrap().could_be("plain/topic2"));
        assert!(Template::parse("{port}").unwrap().could_be("x"));
    }

    fn reading() -> Reading {
        Reading {
            port: "gps".into(),
            fields: vec![
                ("sentence".into(), Value::Text("GGA".into())),
                ("sats".into(), Value::Int(8)),
                ("id".into(), Value::Text("a/b+#".into())),
            ],
            received: chrono::Utc.timestamp_millis_opt(1_700_000_000_123).unwrap(),
        }
    }

    fn map(topic: &str, unit: PublishUnit, payload: PayloadFormat) -> TopicMap {
        TopicMap {
            port: "gps".into(),
            when: Some(When { field: "sentence".into(), values: vec!["GGA".into()] }),
            fields: Some(vec!["sats".into()]),
            topic: Template::parse(topic).unwrap(),
            unit,
            payload,
            qos: 1,
            retain: true,
        }
    }

    #[test]
    fn per_field_plain_and_json() {
        let mut out = Vec::new();
        map("s/{gateway}/{port}/{field}", PublishUnit::PerField, PayloadFormat::Plain).messages(
            "gw",
            &reading(),
            &mut out,
        );
        assert_eq!(out[0].topic, "s/gw/gps/sats");
        assert_eq!(out[0].payload, "8");
        out.clear();
        map("s/{field}", PublishUnit::PerField, PayloadFormat::Json).messages("gw", &reading(), &mut out);
        assert_eq!(out[0].payload, r#"{"value":8,"time":"2023-11-14T22:13:20.123Z","ts":1700000000123}"#);
    }

    #[test]
    fn values_cannot_add_topic_levels_or_wildcards() {
        let mut out = Vec::new();
        map("s/{id}", PublishUnit::PerFrame, PayloadFormat::Json).messages("gw", &reading(), &mut out);
        assert_eq!(out[0].topic, "s/a_b__");
    }

    #[test]
    fn template_errors() {
        assert!(Template::parse("a/{b").unwrap_err().contains("never closed"));
        assert!(Template::parse("a/#").unwrap_err().contains("cannot contain"));
        assert!(Template::parse("a/{b c}").is_err());
    }
}
