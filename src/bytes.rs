//! Byte-level vocabulary shared by length prefixes, checksums and binary fields: byte order and
//! reading an unsigned integer from a slice in it.

use serde::Deserialize;

/// The order of a multi-byte integer's bytes on the wire.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ByteOrder {
    #[default]
    Big,
    Little,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_orders() {
        assert_eq!(read_uint(&[0x12, 0x34], ByteOrder::Big), 0x1234);
        assert_eq!(read_uint(&[0x12, 0x34], ByteOrder::Little), 0x3412);
        assert_eq!(read_uint(&[], ByteOrder::Big), 0);
    }
}
