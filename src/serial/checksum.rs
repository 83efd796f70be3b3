//! Frame checksums: which bytes they cover, where they sit, how they are computed and compared.
//!
//! CRCs come from the `crc` crate's catalogue (no hand-written tables); the sums and XOR are one-line
//! folds. Positions may count from the end of the frame (negative), because sensors with variable-length
//! frames (NMEA) put the checksum last.

use crc::{Crc, CRC_16_IBM_3740, CRC_16_MODBUS, CRC_32_ISO_HDLC, CRC_8_SMBUS};

use crate::config::raw::{ByteOrder, ChecksumEncoding, ChecksumKind};

const CRC8: Crc<u8> = Crc::<u8>::new(&CRC_8_SMBUS);
const CRC16_MODBUS: Crc<u16> = Crc::<u16>::new(&CRC_16_MODBUS);
/// "CRC-16/CCITT" as most sensor datasheets mean it: CCITT-FALSE, poly 0x1021, init 0xFFFF.
const CRC16_CCITT: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_3740);
const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Xor,
    Sum8,
    Sum16,
    Crc8,
    Crc16Modbus,
    Crc16Ccitt,
    Crc32,
}

impl Algorithm {
    /// Maps the config's kind; `None` for `none` and for `nmea` (which is handled as a preset).
    pub fn from_kind(kind: ChecksumKind) -> Option<Algorithm> {
        Some(match kind {
            ChecksumKind::None | ChecksumKind::Nmea => return None,
            ChecksumKind::Xor => Algorithm::Xor,
            ChecksumKind::Sum8 => Algorithm::Sum8,
            ChecksumKind::Sum16 => Algorithm::Sum16,
            ChecksumKind::Crc8 => Algorithm::Crc8,
            ChecksumKind::Crc16Modbus => Algorithm::Crc16Modbus,
            ChecksumKind::Crc16Ccitt => Algorithm::Crc16Ccitt,
            ChecksumKind::Crc32 => Algorithm::Crc32,
        })
    }

    /// Width of the checksum value in bytes.
    pub fn width(self) -> usize {
        match self {
            Algorithm::Xor | Algorithm::Sum8 | Algorithm::Crc8 => 1,
            Algorithm::Sum16 | Algorithm::Crc16Modbus | Algorithm::Crc16Ccitt => 2,
            Algorithm::Crc32 => 4,
        }
    }

    pub fn compute(self, data: &[u8]) -> u32 {
        match self {
            Algorithm::Xor => data.iter().fold(0u8, |a, b| a ^ b) as u32,
            Algorithm::Sum8 => data.iter().fold(0u8, |a, b| a.wrapping_add(*b)) as u32,
            Algorithm::Sum16 => data.iter().fold(0u16, |a, b| a.wrapping_add(*b as u16)) as u32,
            Algorithm::Crc8 => CRC8.checksum(data) as u32,
            Algorithm::Crc16Modbus => CRC16_MODBUS.checksum(data) as u32,
            Algorithm::Crc16Ccitt => CRC16_CCITT.checksum(data) as u32,
            Algorithm::Crc32 => CRC32.checksum(data),
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
    Generic {
        algorithm: Algorithm,
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
            Checksum::Generic { algorithm, start, end, at, byte_order, encoding } => {
                let width = algorithm.width();
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
                let computed = algorithm.compute(&frame[start..end]);
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
        let computed = Algorithm::Xor.compute(body);
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

/// Reads an unsigned integer of 1..=8 bytes in the given byte order.
pub fn read_uint(bytes: &[u8], order: ByteOrder) -> u32 {
    let fold = |a: u64, b: &u8| (a << 8) | *b as u64;
    let v = match order {
        ByteOrder::Big => bytes.iter().fold(0, fold),
        ByteOrder::Little => bytes.iter().rev().fold(0, fold),
    };
    v as u32
}

fn parse_hex(bytes: &[u8]) -> Result<u32, ChecksumError> {
    let s = std::str::from_utf8(bytes).map_err(|_| ChecksumError::NotHex)?;
    u32::from_str_radix(s, 16).map_err(|_| ChecksumError::NotHex)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(algorithm: Algorithm, start: i64, order: ByteOrder) -> Checksum {
        Checksum::Generic {
            algorithm,
            start,
            end: None,
            at: None,
            byte_order: order,
            encoding: ChecksumEncoding::Binary,
        }
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
        assert_eq!(generic(Algorithm::Crc16Modbus, 0, ByteOrder::Little).verify(&frame), Ok(()));
        assert!(generic(Algorithm::Crc16Modbus, 0, ByteOrder::Big).verify(&frame).is_err());
    }

    #[test]
    fn catalogue_check_values() {
        // The standard "123456789" check values of each catalogued CRC.
        let d = b"123456789";
        assert_eq!(Algorithm::Crc8.compute(d), 0xF4);
        assert_eq!(Algorithm::Crc16Modbus.compute(d), 0x4B37);
        assert_eq!(Algorithm::Crc16Ccitt.compute(d), 0x29B1);
        assert_eq!(Algorithm::Crc32.compute(d), 0xCBF43926);
        assert_eq!(Algorithm::Sum8.compute(&[0xFF, 0x02]), 0x01);
        assert_eq!(Algorithm::Sum16.compute(&[0xFF, 0x02]), 0x101);
    }

    #[test]
    fn too_short_frames_are_errors_not_panics() {
        let c = generic(Algorithm::Crc32, 0, ByteOrder::Big);
        assert_eq!(c.verify(&[1, 2]), Err(ChecksumError::TooShort(2)));
        assert_eq!(c.verify(&[]), Err(ChecksumError::TooShort(0)));
    }
}
