//! A port's `commands:`: how an MQTT payload becomes bytes for the device (constant bytes, an ASCII
//! template, binary fields encoded as the decoder reads them), a checksum appended, and an optional
//! reply that makes `ok` mean "the device answered".

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

pub use super::modbus::{ModbusCommand, WriteFunction};
use crate::bytes::{ByteOrder, HexBytes};
use crate::decode::{encode_binary, BinaryType};
use crate::serial::checksum::{ChecksumEncoding, ChecksumKind};
use crate::serial::request::ReplySpec;
use crate::settings::Problems;
use crate::topic_map::Template;

/// One entry of `commands:` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSettings {
    /// Fills `{command}` in the command and result topics.
    pub name: String,
    /// Constant bytes (`"FF 01 87 00 00 00 00 00"`): a command that takes no value.
    #[serde(default)]
    pub hex: Option<HexBytes>,
    /// An ASCII template: `"SET INTERVAL {value}\r\n"`, or JSON fields by name (`{interval}`).
    #[serde(default)]
    pub text: Option<String>,
    /// Parts written one after the other: `{ hex: … }`, `{ text: … }` or a binary field
    /// `{ field: NAME, type: u16, byte_order, scale, add }` taken from the payload.
    #[serde(default)]
    pub send: Vec<PartSettings>,
    /// Appended after the bytes: a checksum over them from `start`.
    #[serde(default)]
    pub checksum: Option<AppendChecksum>,
    /// Wait for the device's answer: `ok` only once it came.
    #[serde(default)]
    pub reply: Option<ReplySettings>,
    /// On a Modbus port: a write to a slave (functions 5, 6, 16) instead of bytes.
    #[serde(default)]
    pub modbus: Option<ModbusCommand>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartSettings {
    #[serde(default)]
    pub hex: Option<HexBytes>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub field: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<BinaryType>,
    #[serde(default)]
    pub byte_order: ByteOrder,
    /// The payload's value is divided by `scale` after `add` is taken off (the decoder's inverse).
    #[serde(default = "crate::settings::one")]
    pub scale: f64,
    #[serde(default)]
    pub add: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendChecksum {
    #[serde(rename = "type")]
    pub kind: ChecksumKind,
    /// First byte covered (MH-Z19B: 1, after the `FF` start byte).
    #[serde(default)]
    pub start: usize,
    #[serde(default)]
    pub byte_order: ByteOrder,
    #[serde(default)]
    pub encoding: ChecksumEncoding,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplySettings {
    #[serde(default = "default_reply_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The reply is the next frame starting with these bytes (default: the next frame).
    #[serde(default)]
    pub starts_with: HexBytes,
}

fn default_reply_timeout() -> Duration {
    // Serial sensors answer within tens of milliseconds; a second also covers a busy board.
    Duration::from_secs(1)
}

/// A command ready to run: its parts, checksum, reply, and its topics (filled in by `config`).
#[derive(Debug, Clone)]
pub struct Command {
    pub name: String,
    parts: Vec<Part>,
    checksum: Option<AppendChecksum>,
    pub reply: Option<ReplySpec>,
    /// A Modbus write instead of bytes.
    pub modbus: Option<ModbusCommand>,
    /// Where a client publishes it (`{gateway}/{port}/set/{command}` by default).
    pub topic: String,
    /// Where its result goes.
    pub result_topic: String,
}

#[derive(Debug, Clone)]
enum Part {
    Bytes(Vec<u8>),
    Text(Template),
    Field { name: String, kind: BinaryType, order: ByteOrder, scale: f64, add: f64 },
}

impl CommandSettings {
    /// The command, if the settings hold up; problems keyed relative to this entry.
    pub fn resolve(&self, p: &mut Problems) -> Option<Command> {
        let mut found = Problems::default();
        if self.name.is_empty() || self.name.contains(['/', '+', '#', '{', '}']) {
            found.add("name", "must be non-empty and contain none of `/ + # { }` (it becomes a topic level)");
        }
        let shorthand = [self.hex.is_some(), self.text.is_some(), !self.send.is_empty(), self.modbus.is_some()];
        if shorthand.iter().filter(|s| **s).count() != 1 {
            found.add("", "give exactly one of `hex`, `text` or `send` (the bytes the command writes)");
        }
        if let Some(m) = &self.modbus {
            if !(1..=247).contains(&m.slave) {
                found.add("modbus.slave", format!("{} is not a slave address: use 1 to 247", m.slave));
            }
            if m.function == WriteFunction::WriteRegister && m.kind.registers() != 1 {
                found.add(
                    "modbus.type",
                    "`write_register` writes one 16-bit register: use `write_registers` for 32-bit types",
                );
            }
            if m.scale == 0.0 {
                found.add("modbus.scale", "must not be 0");
            }
            if self.checksum.is_some() || self.reply.is_some() {
                found.add("modbus", "Modbus checks and answers itself: no `checksum` or `reply` here");
            }
        }
        let mut parts = Vec::new();
        if let Some(h) = &self.hex {
            parts.push(Part::Bytes(h.0.clone()));
        }
        if let Some(t) = &self.text {
            match Template::parse(t) {
                Ok(t) => parts.push(Part::Text(t)),
                Err(e) => found.add("text", e),
            }
        }
        for (i, s) in self.send.iter().enumerate() {
            let given = [s.hex.is_some(), s.text.is_some(), s.field.is_some()];
            if given.iter().filter(|g| **g).count() != 1 {
                found.add(format!("send[{i}]"), "give exactly one of `hex`, `text` or `field`");
                continue;
            }
            if let Some(h) = &s.hex {
                parts.push(Part::Bytes(h.0.clone()));
            } else if let Some(t) = &s.text {
                match Template::parse(t) {
                    Ok(t) => parts.push(Part::Text(t)),
                    Err(e) => found.add(format!("send[{i}].text"), e),
                }
            } else if let Some(name) = &s.field {
                let Some(kind) = s.kind else {
                    found.add(format!("send[{i}].type"), "a field needs its `type` (u8, u16, i16, u32, f32, …)");
                    continue;
                };
                if s.scale == 0.0 {
                    found.add(format!("send[{i}].scale"), "must not be 0");
                }
                parts.push(Part::Field { name: name.clone(), kind, order: s.byte_order, scale: s.scale, add: s.add });
            }
        }
        if let Some(c) = &self.checksum {
            if matches!(c.kind, ChecksumKind::None | ChecksumKind::Nmea) {
                found.add("checksum.type", "use a sum or a CRC here (for NMEA: `xor` with `encoding: hex`)");
            }
        }
        let ok = found.is_empty();
        for (k, m) in found.into_list() {
            p.add(k, m);
        }
        ok.then(|| Command {
            name: self.name.clone(),
            parts,
            checksum: self.checksum.clone(),
            reply: self
                .reply
                .as_ref()
                .map(|r| ReplySpec { timeout: r.timeout, starts_with: Bytes::from(r.starts_with.0.clone()) }),
            modbus: self.modbus.clone(),
            topic: String::new(),
            result_topic: String::new(),
        })
    }
}

/// The values a payload offers: `value` (the payload itself, or a JSON object's `value`) and, for a
/// JSON object, each of its fields; plus the request's `correlation`, if it gave one.
pub struct Payload {
    values: serde_json::Map<String, serde_json::Value>,
    pub correlation: Option<serde_json::Value>,
}

impl Payload {
    pub fn parse(payload: &[u8]) -> Result<Payload, String> {
        let text = std::str::from_utf8(payload).map_err(|_| "the payload is not UTF-8 text".to_string())?;
        let mut values = serde_json::Map::new();
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(mut m)) => {
                let correlation = m.remove("correlation");
                return Ok(Payload { values: m, correlation });
            }
            Ok(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                values.insert("value".into(), v);
            }
            _ => {
                values.insert("value".into(), serde_json::Value::String(text.trim().to_string()));
            }
        }
        Ok(Payload { values, correlation: None })
    }

    pub(super) fn text(&self, name: &str) -> Option<String> {
        match self.values.get(name)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            v => Some(v.to_string()),
        }
    }

    pub(super) fn number(&self, name: &str) -> Result<f64, String> {
        match self.values.get(name) {
            Some(serde_json::Value::Number(n)) => n.as_f64().ok_or_else(|| format!("`{name}` is not a number")),
            Some(serde_json::Value::String(s)) => {
                s.trim().parse().map_err(|_| format!("`{name}` is `{s}`, not a number"))
            }
            Some(other) => Err(format!("`{name}` is `{other}`, not a number")),
            None => Err(self.missing(name)),
        }
    }

    pub(super) fn missing(&self, name: &str) -> String {
        let has: Vec<&str> = self.values.keys().map(String::as_str).collect();
        format!(
            "the payload has no `{name}` (it has: {})",
            if has.is_empty() { "nothing".into() } else { has.join(", ") }
        )
    }
}

impl Command {
    /// The bytes for `payload`, or why the payload does not fit (then nothing is written).
    pub fn build(&self, payload: &Payload) -> Result<Bytes, String> {
        let mut out = Vec::new();
        for part in &self.parts {
            match part {
                Part::Bytes(b) => out.extend_from_slice(b),
                Part::Text(t) => {
                    if let Some(n) = t.placeholders().find(|n| payload.text(n).is_none()) {
                        return Err(payload.missing(n));
                    }
                    let text = t.render(|n| payload.text(n)).ok_or("the text template could not be filled")?;
                    out.extend_from_slice(text.as_bytes());
                }
                Part::Field { name, kind, order, scale, add } => {
                    let v = (payload.number(name)? - add) / scale;
                    out.extend(encode(name, v, *kind, *order)?);
                }
            }
        }
        if let Some(c) = &self.checksum {
            let covered =
                out.get(c.start..).ok_or_else(|| format!("the checksum starts at byte {}, past the end", c.start))?;
            let sum = c.kind.compute(covered);
            let width = c.kind.width();
            match c.encoding {
                ChecksumEncoding::Binary => {
                    let be = sum.to_be_bytes();
                    let mut bytes = be[4 - width..].to_vec();
                    if c.byte_order == ByteOrder::Little {
                        bytes.reverse();
                    }
                    out.extend(bytes);
                }
                ChecksumEncoding::Hex => out.extend(format!("{sum:0w$X}", w = width * 2).into_bytes()),
            }
        }
        Ok(Bytes::from(out))
    }
}

/// `v` as `kind` in `order`; an integer type takes the nearest whole number and must hold it.
fn encode(name: &str, v: f64, kind: BinaryType, order: ByteOrder) -> Result<Vec<u8>, String> {
    if !v.is_finite() {
        return Err(format!("`{name}` is not a finite number"));
    }
    let mut be = encode_binary(v, kind)
        .map_err(|(lo, hi)| format!("`{name}` = {v} does not fit {kind:?} ({lo}..={hi})").to_lowercase())?;
    if order == ByteOrder::Little {
        be.reverse();
    }
    Ok(be)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(yaml: &str) -> Command {
        let s: CommandSettings = serde_yaml::from_str(yaml).unwrap();
        let mut p = Problems::default();
        let c = s.resolve(&mut p);
        assert!(p.is_empty(), "{:?}", p.into_list());
        c.unwrap()
    }

    fn build(c: &Command, payload: &str) -> Result<Vec<u8>, String> {
        c.build(&Payload::parse(payload.as_bytes())?).map(|b| b.to_vec())
    }

    #[test]
    fn mh_z19b_zero_calibration_gets_its_datasheet_checksum() {
        let c = command("name: zero\nhex: \"FF 01 87 00 00 00 00 00\"\nchecksum: { type: sum8_neg, start: 1 }");
        assert_eq!(build(&c, "").unwrap(), [0xFF, 0x01, 0x87, 0, 0, 0, 0, 0, 0x78]);
    }

    #[test]
    fn text_templates_take_the_payload_or_json_fields() {
        let c = command("name: interval\ntext: \"SET INTERVAL {value}\\r\\n\"");
        assert_eq!(build(&c, "30").unwrap(), b"SET INTERVAL 30\r\n");
        assert_eq!(build(&c, r#"{"value": 45, "correlation": "a1"}"#).unwrap(), b"SET INTERVAL 45\r\n");
        let named = command("name: led\ntext: \"LED {r},{g},{b}\\n\"");
        assert_eq!(build(&named, r#"{"r":1,"g":2,"b":3}"#).unwrap(), b"LED 1,2,3\n");
        assert_eq!(build(&named, r#"{"r":1}"#).unwrap_err(), "the payload has no `g` (it has: r)");
    }

    #[test]
    fn binary_fields_are_the_decoders_inverse_and_are_range_checked() {
        let c = command(
            "name: range\nsend:\n  - hex: \"FF 01 99 00 00 00\"\n  - { field: value, type: u16 }\nchecksum: { type: sum8_neg, start: 1 }",
        );
        // MH-Z19B "detection range 5000 ppm", as its datasheet writes it.
        assert_eq!(build(&c, "5000").unwrap(), [0xFF, 0x01, 0x99, 0, 0, 0, 0x13, 0x88, 0xCB]);
        assert_eq!(build(&c, "70000").unwrap_err(), "`value` = 70000 does not fit u16 (0..=65535)");
        assert_eq!(build(&c, "warm").unwrap_err(), "`value` is `warm`, not a number");
        let scaled = command("name: t\nsend:\n  - { field: t, type: i16, byte_order: little, scale: 0.1 }");
        assert_eq!(build(&scaled, r#"{"t": -1.5}"#).unwrap(), (-15i16).to_le_bytes());
        let crc = command("name: c\nhex: \"01 06 00 01 00 03\"\nchecksum: { type: crc-16/modbus, byte_order: little }");
        assert_eq!(build(&crc, "").unwrap(), [0x01, 0x06, 0x00, 0x01, 0x00, 0x03, 0x98, 0x0B]);
    }

    #[test]
    fn exactly_one_way_to_say_the_bytes() {
        let s: CommandSettings = serde_yaml::from_str("name: x\nhex: \"01\"\ntext: \"a\"").unwrap();
        let mut p = Problems::default();
        assert!(s.resolve(&mut p).is_none());
        assert_eq!(p.into_list()[0].1, "give exactly one of `hex`, `text` or `send` (the bytes the command writes)");
    }
}
