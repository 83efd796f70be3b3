//! A port's `decoder:` as written, and its check against the frame: regex patterns compile and name
//! their captures, `types:` name real fields, binary fields fit the largest frame. Adding a decoder
//! is one variant here and its arm in `FrameDecoder`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde::Deserialize;

use super::{binary_width, BinaryField, BinaryType, FieldKind, FrameDecoder};
use crate::bytes::ByteOrder;
use crate::settings::Problems;

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DecoderSettings {
    /// Named captures become fields; the first pattern that matches wins. Empty captures are absent.
    Regex {
        patterns: Vec<String>,
        #[serde(default)]
        types: BTreeMap<String, FieldKind>,
    },
    /// Columns of a separated line, named in order; `null` skips a column.
    Csv {
        #[serde(default = "default_separator")]
        separator: char,
        columns: Vec<Option<String>>,
        #[serde(default)]
        types: BTreeMap<String, FieldKind>,
    },
    /// `key=value` pairs; `keys` lists those the maps may use.
    KeyValue {
        #[serde(default = "default_separator")]
        pair_separator: char,
        #[serde(default = "default_kv_separator")]
        separator: char,
        keys: Vec<String>,
        #[serde(default)]
        types: BTreeMap<String, FieldKind>,
    },
    /// A JSON document; each field is a JSON pointer into it (`/t`, `/sensor/temp`), kept in file order.
    Json { fields: indexmap::IndexMap<String, String> },
    /// Fixed-position binary fields.
    Binary { fields: Vec<BinaryFieldSettings> },
}

fn default_separator() -> char {
    ','
}
fn default_kv_separator() -> char {
    '='
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinaryFieldSettings {
    pub name: String,
    /// Byte offset from the start of the frame.
    pub at: usize,
    #[serde(rename = "type")]
    pub kind: BinaryType,
    #[serde(default)]
    pub byte_order: ByteOrder,
    /// Swap 16-bit words of 32/64-bit values (Modbus "CDAB" register order).
    #[serde(default)]
    pub word_swap: bool,
    /// value = raw × scale + add
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub add: f64,
}

fn default_scale() -> f64 {
    1.0
}

impl DecoderSettings {
    /// The decoder, if the settings hold up; `frame_max` is the framing's largest frame (binary
    /// fields must lie inside it). Problems are keyed relative to `decoder:`.
    pub fn resolve(&self, frame_max: Option<usize>, p: &mut Problems) -> Option<FrameDecoder> {
        let check_types =
            |types: &std::collections::BTreeMap<String, FieldKind>, names: &[String], p: &mut Problems| {
                for t in types.keys() {
                    if !names.contains(t) {
                        let valid: Vec<&str> = names.iter().map(String::as_str).collect();
                        p.add(
                            format!("types.{t}"),
                            crate::settings::unknown("key", t, &valid).replace("unknown key", "no field named"),
                        );
                    }
                }
            };
        let decoder = match self {
            DecoderSettings::Regex { patterns, types } => {
                let mut compiled = Vec::new();
                if patterns.is_empty() {
                    p.add("patterns", "give at least one pattern");
                }
                for (i, pat) in patterns.iter().enumerate() {
                    match regex::bytes::Regex::new(pat) {
                        Ok(re) if re.capture_names().flatten().next().is_none() => p.add(
                            format!("patterns[{i}]"),
                            "has no named capture such as (?P<temp>[0-9.]+); only named captures become fields",
                        ),
                        Ok(re) => compiled.push(re),
                        Err(e) => {
                            // regex's message draws a caret under the pattern over several lines; keep its verdict.
                            let text = e.to_string();
                            let verdict = text.lines().last().unwrap_or_default().trim_start_matches("error: ");
                            p.add(format!("patterns[{i}]"), format!("not a valid regex: {verdict}"))
                        }
                    }
                }
                let d = FrameDecoder::Regex { patterns: compiled, types: types.clone() };
                check_types(types, &d.field_names(), p);
                d
            }
            DecoderSettings::Csv { separator, columns, types } => {
                if !separator.is_ascii() {
                    p.add("separator", "must be a single ASCII character such as `,` or `;`");
                }
                if columns.iter().flatten().next().is_none() {
                    p.add("columns", "name at least one column (use `null` to skip a column)");
                }
                let d = FrameDecoder::Csv {
                    separator: *separator as u8,
                    columns: columns.iter().map(|c| c.as_deref().map(Arc::from)).collect(),
                    types: types.clone(),
                };
                check_types(types, &d.field_names(), p);
                d
            }
            DecoderSettings::KeyValue { pair_separator, separator, keys, types } => {
                if keys.is_empty() {
                    p.add("keys", "list the keys the sensor sends, e.g. [temp, hum]");
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
            DecoderSettings::Json { fields } => {
                for (name, ptr) in fields {
                    if !ptr.is_empty() && !ptr.starts_with('/') {
                        p.add(format!("fields.{name}"), format!("`{ptr}` is not a JSON pointer; write `/{ptr}`"));
                    }
                }
                FrameDecoder::Json { fields: fields.iter().map(|(k, v)| (Arc::from(k.as_str()), v.clone())).collect() }
            }
            DecoderSettings::Binary { fields } => {
                let max = frame_max;
                let mut names = HashSet::new();
                let mut out = Vec::new();
                for (i, f) in fields.iter().enumerate() {
                    let end = f.at + binary_width(f.kind);
                    if !names.insert(f.name.as_str()) {
                        p.add(format!("fields[{i}].name"), format!("field `{}` is defined twice", f.name));
                    }
                    if let Some(max) = max.filter(|m| end > *m) {
                        p.add(
                            format!("fields[{i}].at"),
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
        p.is_empty().then_some(decoder)
    }
}
