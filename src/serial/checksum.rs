//! Frame checksums: which bytes they cover, where they sit, how they are computed and compared, and
//! their settings as written under a port's `checksum:`.
//!
//! CRCs come from the `crc` crate's catalogue (no hand-written tables); the sums and XOR are one-line
//! folds. Positions may count from the end of the frame (negative), because sensors with variable-length
//! frames (NMEA) put the checksum last. A new algorithm is one variant of [`ChecksumKind`] with its
//! width and computation; the config's list of valid names follows from the enum.

use crc::{Crc, CRC_16_IBM_3740, CRC_16_MODBUS, CRC_16_XMODEM, CRC_32_ISO_HDLC, CRC_8_SMBUS};
use serde::Deserialize;

pub use crate::bytes::read_uint;
use crate::bytes::ByteOrder;

const CRC8: Crc<u8> = Crc::<u8>::new(&CRC_8_SMBUS);
const CRC16_MODBUS: Crc<u16> = Crc::<u16>::new(&CRC_16_MODBUS);
/// "CRC-16/CCITT" as most sensor datasheets mean it: CCITT-FALSE, poly 0x1021, init 0xFFFF.
const CRC16_CCITT: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_3740);
/// CRC-16/XMODEM: poly 0x1021, init 0 (XMODEM, many Chinese sensor protocols, ZigBee).
const CRC16_XMODEM: Crc<u16> = Crc::<u16>::new(&CRC_16_XMODEM);
const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

/// A port's `checksum.type`: every algorithm the gateway knows, plus `none`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChecksumKind {
    None,
    /// NMEA 0183: XOR of the bytes between `$` and `*`, as two hex digits after `*`.
    Nmea,
    Xor,
    Sum8,
    Sum16,
    /// CRC-8/SMBUS.
    Crc8,
    Crc16Modbus,
    /// CRC-16/CCITT-FALSE (IBM-3740).
    Crc16Ccitt,
    /// CRC-16/XMODEM.
    Crc16Xmodem,
    /// CRC-32/ISO-HDLC (zlib, Ethernet).
    Crc32,
}

impl ChecksumKind {
    /// Width of the checksum value in bytes (0 for `none`).
    pub fn width(self) -> usize {
        match self {
            ChecksumKind::None => 0,
            ChecksumKind::Nmea | ChecksumKind::Xor | ChecksumKind::Sum8 | ChecksumKind::Crc8 => 1,
            ChecksumKind::Sum16 | ChecksumKind::Crc16Modbus | ChecksumKind::Crc16Ccitt | ChecksumKind::Crc16Xmodem => 2,
            ChecksumKind::Crc32 => 4,
        }
    }

    /// The checksum of `data` (0 for `none`; NMEA's is the XOR).
    pub fn compute(self, data: &[u8]) -> u32 {
        match self {
            ChecksumKind::None => 0,
            ChecksumKind::Nmea | ChecksumKind::Xor => data.iter().fold(0u8, |a, b| a ^ b) as u32,
            ChecksumKind::Sum8 => data.iter().fold(0u8, |a, b| a.wrapping_add(*b)) as u32,
            ChecksumKind::Sum16 => data.iter().fold(0u16, |a, b| a.wrapping_add(*b as u16)) as u32,
            ChecksumKind::Crc8 => CRC8.checksum(data) as u32,
            ChecksumKind::Crc16Modbus => CRC16_MODBUS.checksum(data) as u32,
            ChecksumKind::Crc16Ccitt => CRC16_CCITT.checksum(data) as u32,
            ChecksumKind::Crc16Xmodem => CRC16_XMODEM.checksum(data) as u32,
            ChecksumKind::Crc32 => CRC32.checksum(data),
        }
    }
}

/// How the checksum is written in the frame.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChecksumEncoding {
    /// The checksum is raw bytes in the frame.
    #[default]
    Binary,
    /// The checksum is written as uppercase or lowercase hex digits.
    Hex,
}

/// A port's `checksum:` section as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChecksumSettings {
    #[serde(rename = "type")]
    pub kind: ChecksumKind,
    /// First byte covered; negative counts from the end of the frame.
    #[serde(default)]
    pub start: i64,
    /// One past the last byte covered; negative counts from the end. Default: up to the checksum.
    pub end: Option<i64>,
    /// Where the checksum sits; negative counts from the end. Default: the last bytes of the frame.
    pub at: Option<i64>,
    #[serde(default)]
    pub byte_order: ByteOrder,
    #[serde(default)]
    pub encoding: ChecksumEncoding,
    /// For `nmea`: when false, a sentence without `*hh` is accepted unchecked.
    #[serde(default = "default_true")]
    pub required: bool,
}

fn default_true() -> bool {
    true
}

impl ChecksumSettings {
    /// The rule a port checks frames with; `None` for `type: none`.
    pub fn resolve(&self) -> Option<Checksum> {
        match self.kind {
            ChecksumKind::None => None,
            ChecksumKind::Nmea => Some(Checksum::Nmea { required: self.required }),
            kind => Some(Checksum::Generic {
                kind,
                start: self.start,
                end: self.end,
                at: self.at,
                byte_order: self.byte_order,
                encoding: self.encoding,
            }),
        }
    }
}

/// Why a frame failed its checksum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumError {
    #[error("checksum mismatch: frame says {found:#x}, bytes give {computed:#x}")]
    Mismatch { found: u32, computed: u32 },
    #[error("frame of {0} bytes is too short for its checksum")]
    TooShort(usize),
    #[error("checksum is not valid hex")]
    NotHex,
    #[error("checksum required but missing")]
    Missing,
}

/// A resolved checksum rule for one port.
#[derive(Debug, Clone)]
pub enum Checksum {
    /// NMEA 0183 `$…*hh`: XOR of the bytes between `$` and `*`.
    Nmea { required: bool },
    /// Any other kind (never `None` or `Nmea`: [`ChecksumSettings::resolve`] makes those).
    Generic {
        kind: ChecksumKind,
        start: i64,
        end: Option<i64>,
        at: Option<i64>,
        byte_order: ByteOrder,
        encoding: ChecksumEncoding,
    },
}

fn index(len: usize, i: i64) -> Option<usize> {
    let v = if i < 0 { len as i64 + i } else { i };
    (0..=len as i64).contains(&v).then_some(v as usize)
}

impl Checksum {
    pub fn verify(&self, frame: &[u8]) -> Result<(), ChecksumError> {
        match self {
            Checksum::Nmea { required } => verify_nmea(frame, *required),
            Checksum::Generic { kind, start, end, at, byte_order, encoding } => {
                let width = kind.width();
                let encoded = match encoding {
                    ChecksumEncoding::Binary => width,
                    ChecksumEncoding::Hex => width * 2,
                };
                let len = frame.len();
                let too_short = || ChecksumError::TooShort(len);
                let at = index(len, at.unwrap_or(-(encoded as i64))).ok_or_else(too_short)?;
                let end = match end {
                    Some(e) => index(len, *e).ok_or_else(too_short)?,
                    None => at,
                };
                let start = index(len, *start).ok_or_else(too_short)?;
                if start > end || at + encoded > len {
                    return Err(too_short());
                }
                let field = &frame[at..at + encoded];
                let found = match encoding {
                    ChecksumEncoding::Binary => read_uint(field, *byte_order),
                    ChecksumEncoding::Hex => parse_hex(field)?,
                };
                let computed = kind.compute(&frame[start..end]);
                if found == computed {
                    Ok(())
                } else {
                    Err(ChecksumError::Mismatch { found, computed })
                }
            }
        }
    }
}

fn verify_nmea(frame: &[u8], required: bool) -> Result<(), ChecksumError> {
    let len = frame.len();
    if len >= 4 && frame[len - 3] == b'*' {
        let body = frame.strip_prefix(b"$").or_else(|| frame.strip_prefix(b"!")).unwrap_or(frame);
        let body = &body[..body.len() - 3];
        let found = parse_hex(&frame[len - 2..])?;
        let computed = ChecksumKind::Nmea.compute(body);
        if found == computed {
            Ok(())
        } else {
            Err(ChecksumError::Mismatch { found, computed })
        }
    } else if required {
        Err(ChecksumError::Missing)
    } else {
        Ok(())
    }
}

fn parse_hex(bytes: &[u8]) -> Result<u32, ChecksumError> {
    let s = std::str::from_utf8(bytes).map_err(|_| ChecksumError::NotHex)?;
    u32::from_str_radix(s, 16).map_err(|_| ChecksumError::NotHex)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(kind: ChecksumKind, start: i64, order: ByteOrder) -> Checksum {
        Checksum::Generic { kind, start, end: None, at: None, byte_order: order, encoding: ChecksumEncoding::Binary }
    }

    #[test]
    fn nmea_sentence_from_the_standard() {
        let ok = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47";
        let c = Checksum::Nmea { required: true };
        assert_eq!(c.verify(ok), Ok(()));
        let bad = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*48";
        assert!(matches!(c.verify(bad), Err(ChecksumError::Mismatch { found: 0x48, computed: 0x47 })));
        assert_eq!(c.verify(b"$GPTXT,hello"), Err(ChecksumError::Missing));
        assert_eq!(Checksum::Nmea { required: false }.verify(b"$GPTXT,hello"), Ok(()));
    }

    #[test]
    fn modbus_crc_is_sent_low_byte_first() {
        // Read 2 holding registers from slave 1 at 0: CRC C4 0B per the Modbus spec examples.
        let frame = [0x01, 0x03, 0x00, 0x00, 0x00, 0x02, 0xC4, 0x0B];
        assert_eq!(generic(ChecksumKind::Crc16Modbus, 0, ByteOrder::Little).verify(&frame), Ok(()));
        assert!(generic(ChecksumKind::Crc16Modbus, 0, ByteOrder::Big).verify(&frame).is_err());
    }

    #[test]
    fn catalogue_check_values() {
        // The standard "123456789" check values of each catalogued CRC.
        let d = b"123456789";
        assert_eq!(ChecksumKind::Crc8.compute(d), 0xF4);
        assert_eq!(ChecksumKind::Crc16Modbus.compute(d), 0x4B37);
        assert_eq!(ChecksumKind::Crc16Ccitt.compute(d), 0x29B1);
        assert_eq!(ChecksumKind::Crc16Xmodem.compute(d), 0x31C3);
        assert_eq!(ChecksumKind::Crc32.compute(d), 0xCBF43926);
        assert_eq!(ChecksumKind::Sum8.compute(&[0xFF, 0x02]), 0x01);
        assert_eq!(ChecksumKind::Sum16.compute(&[0xFF, 0x02]), 0x101);
    }

    #[test]
    fn too_short_frames_are_errors_not_panics() {
        let c = generic(ChecksumKind::Crc32, 0, ByteOrder::Big);
        assert_eq!(c.verify(&[1, 2]), Err(ChecksumError::TooShort(2)));
        assert_eq!(c.verify(&[]), Err(ChecksumError::TooShort(0)));
    }
}
