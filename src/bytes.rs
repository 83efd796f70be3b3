//! Byte-level vocabulary shared by length prefixes, checksums and binary fields: byte order,
//! reading an unsigned integer from a slice in it, and bytes as a settings file writes them.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// The order of a multi-byte integer's bytes on the wire.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ByteOrder {
    #[default]
    Big,
    Little,
}

/// Bytes as upper-case hex pairs separated by spaces (`42 4D 00 1C`), as datasheets print them.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&format!("{b:02X}"));
    }
    s
}

/// Reads an unsigned integer of up to 4 significant bytes in the given byte order (longer slices
/// keep the low 32 bits).
pub fn read_uint(bytes: &[u8], order: ByteOrder) -> u32 {
    let fold = |a: u64, b: &u8| (a << 8) | *b as u64;
    let v = match order {
        ByteOrder::Big => bytes.iter().fold(0, fold),
        ByteOrder::Little => bytes.iter().rev().fold(0, fold),
    };
    v as u32
}

/// Bytes written in YAML either as a list of numbers (`[0x42, 0x4D]`) or a hex string (`"42 4D"`,
/// `"0x42 0x4D"`, `"424D"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HexBytes(pub Vec<u8>);

impl std::ops::Deref for HexBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// `"42 4D"` → `[0x42, 0x4D]`; None unless every byte is two hex digits.
pub fn parse_hex(text: &str) -> Option<Vec<u8>> {
    let digits: String = text.split_whitespace().map(|w| w.trim_start_matches("0x")).collect();
    if digits.len() % 2 == 1 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    (0..digits.len()).step_by(2).map(|i| u8::from_str_radix(&digits[i..i + 2], 16).ok()).collect()
}

impl<'de> Deserialize<'de> for HexBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = HexBytes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("bytes: a list like [0x42, 0x4D] or a hex string like \"42 4D\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HexBytes, E> {
                parse_hex(s).map(HexBytes).ok_or_else(|| E::custom(format!("`{s}` is not hex bytes, e.g. \"42 4D\"")))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<HexBytes, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(HexBytes(out))
            }
        }
        d.deserialize_any(Either)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_bytes_as_list_or_string() {
        let list: HexBytes = serde_yaml::from_str("[0x42, 77]").unwrap();
        let text: HexBytes = serde_yaml::from_str("\"0x42 4D\"").unwrap();
        assert_eq!((list.0, text.0), (vec![0x42, 0x4D], vec![0x42, 0x4D]));
        let bad = serde_yaml::from_str::<HexBytes>("\"4G\"").unwrap_err().to_string();
        assert!(bad.contains("`4G` is not hex bytes"), "{bad}");
        let number = serde_yaml::from_str::<HexBytes>("42").unwrap_err().to_string();
        assert!(number.contains("a list like [0x42, 0x4D]"), "{number}");
    }

    #[test]
    fn both_orders() {
        assert_eq!(read_uint(&[0x12, 0x34], ByteOrder::Big), 0x1234);
        assert_eq!(read_uint(&[0x12, 0x34], ByteOrder::Little), 0x3412);
        assert_eq!(read_uint(&[], ByteOrder::Big), 0);
    }
}
