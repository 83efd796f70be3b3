//! A port's `transforms:`: what a decoded value becomes before maps build topics and payloads. NMEA's
//! `ddmm.mmmm` plus a hemisphere field becomes signed decimal degrees (what maps, Home Assistant and
//! InfluxDB expect); any number can be scaled, offset and rounded. A number stays a number.

use std::sync::Arc;

use serde::Deserialize;

use crate::decode::Value;
use crate::settings::Problems;

/// Decimal places kept of a converted coordinate: 1e-6 degrees is 0.11 m, finer than any GPS.
const DEGREE_DECIMALS: i32 = 6;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transform {
    /// The field changed.
    pub field: String,
    /// NMEA `ddmm.mmmm` (or `dddmm.mmmm`) to decimal degrees, negative when this field says `S` or `W`.
    #[serde(default)]
    pub nmea_degrees: Option<String>,
    /// Multiplied by, then `add` added.
    #[serde(default)]
    pub scale: Option<f64>,
    #[serde(default)]
    pub add: Option<f64>,
    /// Decimal places kept.
    #[serde(default)]
    pub round: Option<u8>,
}

impl Transform {
    /// What serde cannot check; `fields` are the names the port's decoder produces. Problems are keyed
    /// relative to this entry.
    pub fn check(&self, fields: &[String], p: &mut Problems) {
        let valid: Vec<&str> = fields.iter().map(String::as_str).collect();
        for (key, name) in [("field", Some(&self.field)), ("nmea_degrees", self.nmea_degrees.as_ref())] {
            if let Some(name) = name {
                if !valid.contains(&name.as_str()) {
                    p.add(
                        key,
                        crate::settings::unknown("field", name, &valid)
                            .replace("unknown field", "the decoder has no field"),
                    );
                }
            }
        }
        if self.nmea_degrees.is_none() && self.scale.is_none() && self.add.is_none() && self.round.is_none() {
            p.add("", "say what to do: `nmea_degrees`, `scale`, `add` or `round`");
        }
        if self.scale == Some(0.0) {
            p.add("scale", "must not be 0");
        }
    }

    /// Applies this transform to a frame's fields; a field that is absent or not a number is left alone.
    pub fn apply(&self, fields: &mut [(Arc<str>, Value)]) {
        let Some(i) = fields.iter().position(|(n, _)| **n == *self.field) else { return };
        let Some(mut v) = number(&fields[i].1) else { return };
        if let Some(h) = &self.nmea_degrees {
            let hemisphere = fields.iter().find(|(n, _)| **n == **h).map(|(_, v)| v.to_plain());
            let degrees = (v / 100.0).trunc();
            v = degrees + (v - degrees * 100.0) / 60.0;
            if matches!(hemisphere.as_deref(), Some("S" | "W")) {
                v = -v;
            }
            v = round(v, DEGREE_DECIMALS);
        }
        if let Some(s) = self.scale {
            v *= s;
        }
        if let Some(a) = self.add {
            v += a;
        }
        if let Some(d) = self.round {
            v = round(v, d as i32);
        }
        fields[i].1 = if v.fract() == 0.0 && v.abs() < 9.0e15 && self.nmea_degrees.is_none() {
            Value::Int(v as i64)
        } else {
            Value::Float(v)
        };
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        Value::Text(t) => t.trim().parse().ok(),
        Value::Bool(_) => None,
    }
}

fn round(v: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (v * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, Value)]) -> Vec<(Arc<str>, Value)> {
        pairs.iter().map(|(n, v)| (Arc::from(*n), v.clone())).collect()
    }

    #[test]
    fn nmea_coordinates_become_signed_decimal_degrees() {
        let t: Transform = serde_yaml::from_str("{ field: lat, nmea_degrees: lat_dir }").unwrap();
        let mut f = fields(&[("lat", Value::Float(5213.1439)), ("lat_dir", Value::Text("N".into()))]);
        t.apply(&mut f);
        assert_eq!(f[0].1, Value::Float(52.219065));
        let lon: Transform = serde_yaml::from_str("{ field: lon, nmea_degrees: lon_dir }").unwrap();
        let mut f = fields(&[("lon", Value::Text("01131.000".into())), ("lon_dir", Value::Text("W".into()))]);
        lon.apply(&mut f);
        assert_eq!(f[0].1, Value::Float(-11.516667));
    }

    #[test]
    fn scale_add_and_round_keep_numbers_numbers() {
        let t: Transform = serde_yaml::from_str("{ field: t, scale: 0.1, add: -40, round: 1 }").unwrap();
        let mut f = fields(&[("t", Value::Int(625))]);
        t.apply(&mut f);
        assert_eq!(f[0].1, Value::Float(22.5));
        let r: Transform = serde_yaml::from_str("{ field: n, round: 0 }").unwrap();
        let mut f = fields(&[("n", Value::Float(3.6))]);
        r.apply(&mut f);
        assert_eq!(f[0].1, Value::Int(4));
    }

    #[test]
    fn unknown_fields_are_named() {
        let t: Transform = serde_yaml::from_str("{ field: lattitude, nmea_degrees: lat_dir }").unwrap();
        let mut p = Problems::default();
        t.check(&["lat".into(), "lat_dir".into()], &mut p);
        let list = p.into_list();
        assert_eq!(list[0].0, "field");
        assert!(list[0].1.contains("did you mean `lat`"), "{list:?}");
    }
}
