//! Frames → named, typed values: regex captures, CSV columns, key=value pairs, JSON pointers and
//! fixed-position binary fields.
//!
//! A decoder knows, before any frame arrives, every field name it can produce (`field_names`), so
//! topic templates can be checked when the configuration loads. Absent values (an empty NMEA field,
//! an unmatched optional capture, a JSON null) are left out of the reading rather than made up.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use regex::bytes::Regex;
use serde::Deserialize;

use crate::bytes::ByteOrder;

mod capture;
mod encode;
pub mod settings;

pub use encode::encode_binary;

/// What a text field's value becomes (`types:` of the regex, CSV and key=value decoders).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    /// A number if it parses as one, `true`/`false` as a bool, otherwise a string.
    #[default]
    Auto,
    Number,
    String,
    Bool,
}

/// A binary field's wire type.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BinaryType {
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F32,
    F64,
}

/// A decoded value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
}

impl Value {
    /// The value as a plain MQTT payload or topic segment.
    pub fn to_plain(&self) -> String {
        match self {
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Text(s) => s.clone(),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Int(i) => (*i).into(),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into),
            Value::Bool(b) => (*b).into(),
            Value::Text(s) => s.clone().into(),
        }
    }
}

/// One decoded frame: the port it came from, its fields in decoder order, and when it was received.
#[derive(Debug, Clone)]
pub struct Reading {
    pub port: Arc<str>,
    pub fields: Vec<(Arc<str>, Value)>,
    /// Taken when the frame was cut from the byte stream, before any queueing.
    pub received: DateTime<Utc>,
}

impl Reading {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(n, _)| &**n == name).map(|(_, v)| v)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("no pattern matched")]
    NoMatch,
    #[error("field `{field}`: `{text}` is not a {kind}")]
    BadValue { field: String, text: String, kind: &'static str },
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("not valid CSV: {0}")]
    Csv(String),
    #[error("field `{field}` needs bytes {at}..{end}, frame has {len}")]
    Short { field: String, at: usize, end: usize, len: usize },
}

type Types = BTreeMap<String, FieldKind>;

#[derive(Debug)]
pub struct BinaryField {
    pub name: Arc<str>,
    pub at: usize,
    pub kind: BinaryType,
    pub byte_order: ByteOrder,
    pub word_swap: bool,
    pub scale: f64,
    pub add: f64,
}

/// A resolved decoder.
#[derive(Debug)]
pub enum FrameDecoder {
    Regex { patterns: Vec<Regex>, types: Types },
    Csv { separator: u8, columns: Vec<Option<Arc<str>>>, types: Types },
    KeyValue { pair_separator: char, separator: char, keys: Vec<Arc<str>>, types: Types },
    Json { fields: Vec<(Arc<str>, String)> },
    Binary { fields: Vec<BinaryField> },
}

impl FrameDecoder {
    /// Whether `name` always decodes to a number (binary fields, `types: { name: number }`).
    pub fn numeric(&self, name: &str) -> bool {
        match self {
            FrameDecoder::Binary { fields } => fields.iter().any(|f| &*f.name == name),
            FrameDecoder::Regex { types, .. }
            | FrameDecoder::Csv { types, .. }
            | FrameDecoder::KeyValue { types, .. } => types.get(name) == Some(&FieldKind::Number),
            FrameDecoder::Json { .. } => false,
        }
    }

    /// Every field name this decoder can produce.
    pub fn field_names(&self) -> Vec<String> {
        let mut names: Vec<String> = match self {
            FrameDecoder::Regex { patterns, .. } => {
                patterns.iter().flat_map(|p| p.capture_names().flatten().map(String::from)).collect()
            }
            FrameDecoder::Csv { columns, .. } => columns.iter().flatten().map(|c| c.to_string()).collect(),
            FrameDecoder::KeyValue { keys, .. } => keys.iter().map(|k| k.to_string()).collect(),
            FrameDecoder::Json { fields } => fields.iter().map(|(n, _)| n.to_string()).collect(),
            FrameDecoder::Binary { fields } => fields.iter().map(|f| f.name.to_string()).collect(),
        };
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        names
    }

    /// The fields of the frames in which `field` can be `value`: for a regex decoder, those of the
    /// patterns whose group `field` can match `value`; for the others, every field.
    pub fn field_names_where(&self, field: &str, value: &str) -> Vec<String> {
        let FrameDecoder::Regex { patterns, .. } = self else { return self.field_names() };
        let mut names: Vec<String> = patterns
            .iter()
            .filter(|p| capture::can_capture(p.as_str(), field, value))
            .flat_map(|p| p.capture_names().flatten().map(String::from))
            .collect();
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        names
    }

    pub fn decode(&self, frame: &[u8]) -> Result<Vec<(Arc<str>, Value)>, DecodeError> {
        match self {
            FrameDecoder::Regex { patterns, types } => decode_regex(patterns, types, frame),
            FrameDecoder::Csv { separator, columns, types } => decode_csv(*separator, columns, types, frame),
            FrameDecoder::KeyValue { pair_separator, separator, keys, types } => {
                decode_key_value(*pair_separator, *separator, keys, types, frame)
            }
            FrameDecoder::Json { fields } => decode_json(fields, frame),
            FrameDecoder::Binary { fields } => {
                fields.iter().map(|f| Ok((f.name.clone(), read_binary(f, frame)?))).collect()
            }
        }
    }
}

/// Types a text value; `None` when the text is empty (an absent field).
fn typed(name: &str, text: &str, kind: FieldKind) -> Result<Option<Value>, DecodeError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let bad = |kind| DecodeError::BadValue { field: name.to_string(), text: text.to_string(), kind };
    let number = |t: &str| t.parse::<i64>().map(Value::Int).or_else(|_| t.parse::<f64>().map(Value::Float));
    Ok(Some(match kind {
        FieldKind::Auto => number(text).unwrap_or_else(|_| match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::Text(text.to_string()),
        }),
        FieldKind::Number => number(text).map_err(|_| bad("number"))?,
        FieldKind::Bool => match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "on" | "yes" => Value::Bool(true),
            "false" | "0" | "off" | "no" => Value::Bool(false),
            _ => return Err(bad("bool")),
        },
        FieldKind::String => Value::Text(text.to_string()),
    }))
}

fn kind_of(types: &Types, name: &str) -> FieldKind {
    types.get(name).copied().unwrap_or_default()
}

fn decode_regex(patterns: &[Regex], types: &Types, frame: &[u8]) -> Result<Vec<(Arc<str>, Value)>, DecodeError> {
    for re in patterns {
        let Some(caps) = re.captures(frame) else { continue };
        let mut out = Vec::new();
        for name in re.capture_names().flatten() {
            if let Some(m) = caps.name(name) {
                let text = String::from_utf8_lossy(m.as_bytes());
                if let Some(v) = typed(name, &text, kind_of(types, name))? {
                    out.push((Arc::from(name), v));
                }
            }
        }
        return Ok(out);
    }
    Err(DecodeError::NoMatch)
}

fn decode_csv(
    sep: u8,
    columns: &[Option<Arc<str>>],
    types: &Types,
    frame: &[u8],
) -> Result<Vec<(Arc<str>, Value)>, DecodeError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .delimiter(sep)
        .flexible(true)
        // A frame is one record; the default 8 KiB buffer would be allocated per frame for nothing.
        .buffer_capacity(frame.len().max(16))
        .from_reader(frame);
    let mut record = csv::StringRecord::new();
    match reader.read_record(&mut record) {
        Ok(true) => {}
        Ok(false) => return Ok(Vec::new()),
        Err(e) => return Err(DecodeError::Csv(e.to_string())),
    }
    let mut out = Vec::new();
    for (name, text) in columns.iter().zip(record.iter()) {
        if let Some(name) = name {
            if let Some(v) = typed(name, text, kind_of(types, name))? {
                out.push((name.clone(), v));
            }
        }
    }
    Ok(out)
}

fn decode_key_value(
    pair_sep: char,
    sep: char,
    keys: &[Arc<str>],
    types: &Types,
    frame: &[u8],
) -> Result<Vec<(Arc<str>, Value)>, DecodeError> {
    let text = String::from_utf8_lossy(frame);
    let mut out = Vec::new();
    for pair in text.split(pair_sep) {
        let Some((k, v)) = pair.split_once(sep) else { continue };
        // Keys not declared are ignored: maps may only use declared keys, and a typo in the sensor
        // sketch should not create topics nobody asked for.
        if let Some(name) = keys.iter().find(|n| &***n == k.trim()) {
            if let Some(v) = typed(name, v, kind_of(types, name))? {
                out.push((name.clone(), v));
            }
        }
    }
    if out.is_empty() && !keys.is_empty() {
        return Err(DecodeError::NoMatch);
    }
    Ok(out)
}

fn decode_json(fields: &[(Arc<str>, String)], frame: &[u8]) -> Result<Vec<(Arc<str>, Value)>, DecodeError> {
    let doc: serde_json::Value = serde_json::from_slice(frame).map_err(|e| DecodeError::Json(e.to_string()))?;
    let mut out = Vec::new();
    for (name, pointer) in fields {
        let v = match doc.pointer(pointer) {
            // Absent, null or empty: no value, as an empty text field is (never `""` or zero).
            None | Some(serde_json::Value::Null) => continue,
            Some(serde_json::Value::String(s)) if s.is_empty() => continue,
            Some(serde_json::Value::Bool(b)) => Value::Bool(*b),
            Some(serde_json::Value::Number(n)) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Some(serde_json::Value::String(s)) => Value::Text(s.clone()),
            Some(other) => Value::Text(other.to_string()),
        };
        out.push((name.clone(), v));
    }
    Ok(out)
}

pub fn binary_width(kind: BinaryType) -> usize {
    match kind {
        BinaryType::U8 | BinaryType::I8 => 1,
        BinaryType::U16 | BinaryType::I16 => 2,
        BinaryType::U32 | BinaryType::I32 | BinaryType::F32 => 4,
        BinaryType::U64 | BinaryType::I64 | BinaryType::F64 => 8,
    }
}

fn read_binary(f: &BinaryField, frame: &[u8]) -> Result<Value, DecodeError> {
    let width = binary_width(f.kind);
    let end = f.at + width;
    let bytes = frame.get(f.at..end).ok_or_else(|| DecodeError::Short {
        field: f.name.to_string(),
        at: f.at,
        end,
        len: frame.len(),
    })?;
    // Normalise to big-endian, then undo a Modbus-style word swap.
    let mut b = [0u8; 8];
    b[..width].copy_from_slice(bytes);
    if f.byte_order == ByteOrder::Little {
        b[..width].reverse();
    }
    if f.word_swap && width >= 4 {
        let words: Vec<[u8; 2]> = b[..width].chunks(2).rev().map(|c| [c[0], c[1]]).collect();
        for (i, w) in words.iter().enumerate() {
            b[i * 2..i * 2 + 2].copy_from_slice(w);
        }
    }
    let raw: f64 = match f.kind {
        BinaryType::U8 => b[0] as f64,
        BinaryType::I8 => b[0] as i8 as f64,
        BinaryType::U16 => u16::from_be_bytes([b[0], b[1]]) as f64,
        BinaryType::I16 => i16::from_be_bytes([b[0], b[1]]) as f64,
        BinaryType::U32 => u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f64,
        BinaryType::I32 => i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f64,
        BinaryType::F32 => f32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f64,
        BinaryType::U64 => u64::from_be_bytes(b) as f64,
        BinaryType::I64 => i64::from_be_bytes(b) as f64,
        BinaryType::F64 => f64::from_be_bytes(b),
    };
    let is_float = matches!(f.kind, BinaryType::F32 | BinaryType::F64);
    // Dividing by 10 instead of multiplying by 0.1 keeps 1236 × 0.1 at 123.6 rather than 123.60000000000001.
    let inverse = 1.0 / f.scale;
    let scaled = if f.scale != 0.0 && f.scale < 1.0 && (inverse - inverse.round()).abs() < 1e-9 {
        raw / inverse.round()
    } else {
        raw * f.scale
    };
    let v = scaled + f.add;
    // Integers stay integers unless a scale or offset made them fractional.
    if !is_float && v.fract() == 0.0 && v.abs() < 9.0e15 {
        Ok(Value::Int(v as i64))
    } else {
        Ok(Value::Float(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, at: usize, kind: BinaryType, order: ByteOrder, scale: f64) -> BinaryField {
        BinaryField { name: name.into(), at, kind, byte_order: order, word_swap: false, scale, add: 0.0 }
    }

    #[test]
    fn sds011_little_endian_scaled() {
        let frame = [0xAA, 0xC0, 0xD4, 0x04, 0x3A, 0x0A, 0xA1, 0x60, 0x1D, 0xAB];
        let d = FrameDecoder::Binary {
            fields: vec![
                field("pm25", 2, BinaryType::U16, ByteOrder::Little, 0.1),
                field("pm10", 4, BinaryType::U16, ByteOrder::Little, 0.1),
            ],
        };
        let v = d.decode(&frame).unwrap();
        assert_eq!(v[0].1, Value::Float(123.6));
        assert_eq!(v[1].1, Value::Float(261.8));
    }

    #[test]
    fn word_swapped_float() {
        // 1.5f32 = 0x3FC00000, sent as CDAB: 00 00 3F C0
        let mut f = field("x", 0, BinaryType::F32, ByteOrder::Big, 1.0);
        f.word_swap = true;
        assert_eq!(read_binary(&f, &[0x00, 0x00, 0x3F, 0xC0]).unwrap(), Value::Float(1.5));
    }

    #[test]
    fn empty_nmea_fields_are_absent() {
        let re = Regex::new(r"^\$(?P<talker>..)GGA,(?P<time>[^,]*),(?P<lat>[^,]*)").unwrap();
        let d = FrameDecoder::Regex { patterns: vec![re], types: Types::new() };
        let v = d.decode(b"$GPGGA,,,").unwrap();
        assert_eq!(v, vec![(Arc::from("talker"), Value::Text("GP".into()))]);
    }

    #[test]
    fn typed_values_report_the_field() {
        let err = typed("hum", "abc", FieldKind::Number).unwrap_err();
        assert_eq!(err.to_string(), "field `hum`: `abc` is not a number");
    }

    #[test]
    fn empty_json_strings_are_absent_like_null() {
        let d = FrameDecoder::Json {
            fields: vec![("a".into(), "/a".into()), ("b".into(), "/b".into()), ("c".into(), "/c".into())],
        };
        let v = d.decode(br#"{"a":"","b":null,"c":"x"}"#).unwrap();
        assert_eq!(v, vec![(Arc::from("c"), Value::Text("x".into()))]);
    }
}
