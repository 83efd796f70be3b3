//! `framing:` as written in a port's settings: one struct per framing kind, with the checks serde
//! cannot make. The codec in `super` reads these structs directly; there is no second copy.

use serde::Deserialize;

use crate::bytes::{read_uint, ByteOrder, HexBytes};
use crate::settings::Problems;

/// Frames larger than this are refused at load time: a UART frame of 64 KiB is a mistake.
const MAX_FRAME_LIMIT: usize = 65536;

/// How a port's byte stream is cut into frames.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Framing {
    /// Text or binary records ended by a delimiter (`"\n"`, `"\r\n"`, …); the delimiter is removed.
    Lines(Lines),
    /// Every frame has the same length, optionally starting with a header and ending with a trailer
    /// (both used to find frame boundaries again after garbage).
    Fixed(Fixed),
    /// A frame runs from a start marker to an end marker; an escape byte makes the next byte literal.
    Markers(Markers),
    /// A header, then a length field saying how long the frame is.
    LengthPrefixed(LengthPrefixed),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lines {
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    #[serde(default = "default_max_length")]
    pub max_length: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixed {
    pub length: usize,
    #[serde(default)]
    pub header: HexBytes,
    #[serde(default)]
    pub trailer: HexBytes,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Markers {
    pub start: HexBytes,
    pub end: HexBytes,
    #[serde(default)]
    pub escape: Option<u8>,
    #[serde(default = "default_max_length")]
    pub max_length: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LengthPrefixed {
    pub header: HexBytes,
    /// Offset of the length field from the start of the frame.
    pub length_offset: usize,
    /// 1, 2 or 4 bytes.
    pub length_width: u8,
    #[serde(default)]
    pub length_byte_order: ByteOrder,
    /// What the length counts: the bytes after the length field (`rest`) or the whole frame.
    #[serde(default)]
    pub length_counts: LengthCounts,
    /// Added to the length to get the real size (e.g. a trailing checksum it does not count).
    #[serde(default)]
    pub length_adjust: i64,
    #[serde(default = "default_max_length")]
    pub max_length: usize,
}

/// What a length prefix counts: the bytes after the length field, or the whole frame.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LengthCounts {
    #[default]
    Rest,
    Frame,
}

fn default_delimiter() -> String {
    "\n".into()
}

fn default_max_length() -> usize {
    // Longer than any sensor line we know (NMEA is 82), short enough that garbage cannot grow memory.
    512
}

impl LengthPrefixed {
    /// Where the length field ends.
    pub(super) fn field_end(&self) -> usize {
        self.length_offset + self.length_width as usize
    }

    /// The whole frame's length as the field says it, once `buf` holds the field.
    pub(super) fn frame_len(&self, buf: &[u8]) -> Option<i64> {
        let end = self.field_end();
        let field = read_uint(buf.get(self.length_offset..end)?, self.length_byte_order) as i64;
        Some(match self.length_counts {
            LengthCounts::Rest => end as i64 + field + self.length_adjust,
            LengthCounts::Frame => field + self.length_adjust,
        })
    }
}

impl Framing {
    /// The largest frame this framing can produce.
    pub fn max_frame(&self) -> usize {
        match self {
            Framing::Lines(Lines { max_length, .. })
            | Framing::Markers(Markers { max_length, .. })
            | Framing::LengthPrefixed(LengthPrefixed { max_length, .. }) => *max_length,
            Framing::Fixed(f) => f.length,
        }
    }

    /// What serde cannot check; problems are keyed relative to `framing:`.
    pub fn check(&self, p: &mut Problems) {
        let max_ok = |max: usize, p: &mut Problems| {
            if max == 0 || max > MAX_FRAME_LIMIT {
                p.add("max_length", format!("must be between 1 and {MAX_FRAME_LIMIT}"));
            }
        };
        match self {
            Framing::Lines(l) => {
                if l.delimiter.is_empty() {
                    p.add("delimiter", "must not be empty; write \"\\n\" or \"\\r\\n\" in double quotes");
                }
                max_ok(l.max_length, p);
            }
            Framing::Fixed(f) => {
                if f.length == 0 || f.length > MAX_FRAME_LIMIT || f.header.len() + f.trailer.len() > f.length {
                    p.add("length", format!("must be 1..={MAX_FRAME_LIMIT} and fit the header and trailer"));
                }
            }
            Framing::Markers(m) => {
                if m.start.is_empty() || m.end.is_empty() {
                    p.add("", "`start` and `end` markers must not be empty");
                }
                max_ok(m.max_length, p);
            }
            Framing::LengthPrefixed(l) => {
                if l.header.is_empty() {
                    p.add("header", "must not be empty: the header is how frames are found again after garbage");
                }
                if ![1, 2, 4].contains(&l.length_width) {
                    p.add("length_width", format!("{} is not valid: use 1, 2 or 4", l.length_width));
                }
                max_ok(l.max_length, p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Vec<(String, String)> {
        let framing: Framing = serde_yaml::from_str(yaml).unwrap();
        let mut p = Problems::default();
        framing.check(&mut p);
        p.into_list()
    }

    #[test]
    fn each_kind_reads_with_its_defaults() {
        let f: Framing = serde_yaml::from_str("type: lines").unwrap();
        assert_eq!(f, Framing::Lines(Lines { delimiter: "\n".into(), max_length: 512 }));
        let f: Framing = serde_yaml::from_str("type: fixed\nlength: 10\nheader: \"AA C0\"\ntrailer: [0xAB]").unwrap();
        assert_eq!(
            f,
            Framing::Fixed(Fixed { length: 10, header: HexBytes(vec![0xAA, 0xC0]), trailer: HexBytes(vec![0xAB]) })
        );
        let f: Framing =
            serde_yaml::from_str("type: length_prefixed\nheader: \"42 4D\"\nlength_offset: 2\nlength_width: 2")
                .unwrap();
        assert_eq!(f.max_frame(), 512);
    }

    #[test]
    fn what_serde_cannot_see_is_named_by_key() {
        assert_eq!(check("type: lines\ndelimiter: \"\"\nmax_length: 0").len(), 2);
        let p = check("type: length_prefixed\nheader: []\nlength_offset: 2\nlength_width: 3");
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["header", "length_width"], "{p:?}");
        assert_eq!(check("type: fixed\nlength: 2\nheader: \"AA BB\"\ntrailer: [1]")[0].0, "length");
    }

    #[test]
    fn an_unknown_key_inside_a_kind_is_refused() {
        let e = serde_yaml::from_str::<Framing>("type: lines\ndelimeter: \"\\n\"").unwrap_err().to_string();
        assert!(e.contains("unknown field `delimeter`"), "{e}");
    }
}
