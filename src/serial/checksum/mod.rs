//! Frame checksums: which bytes they cover, where they sit, how they are computed and compared, and
//! their settings as written under a port's `checksum:`.
//!
//! CRCs come from the `crc` crate's catalogue (no hand-written tables); the sums and XOR are one-line
//! folds. Positions may count from the end of the frame (negative), because sensors with variable-length
//! frames (NMEA) put the checksum last. A new algorithm is one variant of [`ChecksumKind`] with its
//! width and computation; the config's list of valid names follows from the enum.

use std::ops::Range;

use serde::de::{self, Deserializer};
use serde::Deserialize;

pub use crate::bytes::read_uint;
use crate::bytes::ByteOrder;

mod catalogue;
pub use catalogue::CrcAlgorithm;

/// A port's `checksum.type`: `none`, NMEA, the sums and XOR, or any CRC of the catalogue by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumKind {
    None,
    /// NMEA 0183: XOR of the bytes between `$` and `*`, as two hex digits after `*`.
    Nmea,
    Xor,
    Sum8,
    /// The two's complement of the 8-bit sum: what adds up to zero with it (Winsen MH-Z19B, ZE08).
    Sum8Neg,
    Sum16,
    Crc(CrcAlgorithm),
}

/// The kinds that are not CRCs, as written.
const PLAIN_KINDS: [(&str, ChecksumKind); 6] = [
    ("none", ChecksumKind::None),
    ("nmea", ChecksumKind::Nmea),
    ("xor", ChecksumKind::Xor),
    ("sum8", ChecksumKind::Sum8),
    ("sum8_neg", ChecksumKind::Sum8Neg),
    ("sum16", ChecksumKind::Sum16),
];

impl ChecksumKind {
    /// A kind by the name a config uses (`sum8`, `crc-16/modbus`, `CRC-8/NRSC-5`, `crc16_ccitt`…).
    pub fn named(name: &str) -> Option<ChecksumKind> {
        PLAIN_KINDS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, k)| *k)
            .or_else(|| CrcAlgorithm::find(name).map(ChecksumKind::Crc))
    }

    /// Width of the checksum value in bytes (0 for `none`).
    pub fn width(self) -> usize {
        match self {
            ChecksumKind::None => 0,
            ChecksumKind::Nmea | ChecksumKind::Xor | ChecksumKind::Sum8 | ChecksumKind::Sum8Neg => 1,
            ChecksumKind::Sum16 => 2,
            ChecksumKind::Crc(a) => a.width(),
        }
    }

    /// The checksum of `data` (0 for `none`; NMEA's is the XOR).
    pub fn compute(self, data: &[u8]) -> u32 {
        match self {
            ChecksumKind::None => 0,
            ChecksumKind::Nmea | ChecksumKind::Xor => data.iter().fold(0u8, |a, b| a ^ b) as u32,
            ChecksumKind::Sum8 => data.iter().fold(0u8, |a, b| a.wrapping_add(*b)) as u32,
            ChecksumKind::Sum8Neg => data.iter().fold(0u8, |a, b| a.wrapping_add(*b)).wrapping_neg() as u32,
            ChecksumKind::Sum16 => data.iter().fold(0u16, |a, b| a.wrapping_add(*b as u16)) as u32,
            ChecksumKind::Crc(a) => a.compute(data),
        }
    }
}

impl<'de> Deserialize<'de> for ChecksumKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        ChecksumKind::named(&name).ok_or_else(|| {
            let names: Vec<&str> = PLAIN_KINDS.iter().map(|(n, _)| *n).chain(CrcAlgorithm::names()).collect();
            let hint = crate::settings::suggest(&name.to_ascii_lowercase(), names.iter().copied())
                .map(|s| format!(", did you mean `{s}`?"))
                .unwrap_or_default();
            de::Error::custom(format!(
                "unknown checksum type `{name}`{hint} (valid: `none`, `nmea`, `xor`, `sum8`, `sum8_neg`, `sum16`, or a CRC by its \
                 catalogue name such as `crc-8/smbus`, `crc-8/nrsc-5`, `crc-16/modbus`, `crc-16/ibm-3740`, \
                 `crc-32/iso-hdlc`)"
            ))
        })
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
    /// Remove the checksum (NMEA: `*hh`) from the frame the decoder sees, e.g. a JSON line with a
    /// checksum after it.
    #[serde(default)]
    pub strip: bool,
}

fn default_true() -> bool {
    true
}

impl ChecksumSettings {
    /// The rule a port checks frames with; `None` for `type: none`.
    pub fn resolve(&self) -> Option<Checksum> {
        match self.kind {
            ChecksumKind::None => None,
            ChecksumKind::Nmea => Some(Checksum::Nmea { required: self.required, strip: self.strip }),
            kind => Some(Checksum::Generic {
                kind,
                start: self.start,
                end: self.end,
                at: self.at,
                byte_order: self.byte_order,
                encoding: self.encoding,
                strip: self.strip,
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
    Nmea { required: bool, strip: bool },
    /// Any other kind (never `None` or `Nmea`: [`ChecksumSettings::resolve`] makes those).
    Generic {
        kind: ChecksumKind,
        start: i64,
        end: Option<i64>,
        at: Option<i64>,
        byte_order: ByteOrder,
        encoding: ChecksumEncoding,
        strip: bool,
    },
}

fn index(len: usize, i: i64) -> Option<usize> {
    let v = if i < 0 { len as i64 + i } else { i };
    (0..=len as i64).contains(&v).then_some(v as usize)
}

impl Checksum {
    pub fn verify(&self, frame: &[u8]) -> Result<(), ChecksumError> {
        match self {
            Checksum::Nmea { required, .. } => verify_nmea(frame, *required),
            Checksum::Generic { kind, byte_order, encoding, .. } => {
                let (covered, field) = self.locate(frame)?;
                let found = match encoding {
                    ChecksumEncoding::Binary => read_uint(&frame[field.clone()], *byte_order),
                    ChecksumEncoding::Hex => parse_hex(&frame[field])?,
                };
                let computed = kind.compute(&frame[covered]);
                if found == computed {
                    Ok(())
                } else {
                    Err(ChecksumError::Mismatch { found, computed })
                }
            }
        }
    }

    /// The frame as the decoder should see it (after `verify` passed): without the checksum if
    /// `strip` is set.
    pub fn strip(&self, frame: bytes::Bytes) -> bytes::Bytes {
        match self {
            Checksum::Nmea { strip: true, .. } if frame.len() >= 3 && frame[frame.len() - 3] == b'*' => {
                frame.slice(..frame.len() - 3)
            }
            Checksum::Generic { strip: true, .. } => match self.locate(&frame) {
                Ok((_, field)) if field.end == frame.len() => frame.slice(..field.start),
                Ok((_, field)) if field.start == 0 => frame.slice(field.end..),
                Ok((_, field)) => [&frame[..field.start], &frame[field.end..]].concat().into(),
                Err(_) => frame,
            },
            _ => frame,
        }
    }

    /// (bytes covered, bytes of the checksum field) in `frame`.
    fn locate(&self, frame: &[u8]) -> Result<(Range<usize>, Range<usize>), ChecksumError> {
        let Checksum::Generic { kind, start, end, at, encoding, .. } = self else {
            return Err(ChecksumError::TooShort(frame.len()));
        };
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
        Ok((start..end, at..at + encoded))
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

    fn crc(name: &str) -> ChecksumKind {
        ChecksumKind::named(name).unwrap()
    }

    #[test]
    fn strip_removes_the_checksum_wherever_it_sits() {
        let mut json = br#"{"t":21.5}"#.to_vec();
        let sum = crc("crc-16/modbus").compute(&json) as u16;
        json.extend(sum.to_le_bytes());
        let mut c = generic(crc("crc-16/modbus"), 0, ByteOrder::Little);
        if let Checksum::Generic { strip, .. } = &mut c {
            *strip = true;
        }
        assert_eq!(c.verify(&json), Ok(()));
        assert_eq!(&c.strip(json.into())[..], br#"{"t":21.5}"#);
        let nmea = Checksum::Nmea { required: true, strip: true };
        assert_eq!(&nmea.strip(bytes::Bytes::from_static(b"$GPTXT,hi*1C"))[..], b"$GPTXT,hi");
        assert_eq!(&nmea.strip(bytes::Bytes::from_static(b"$GPTXT,hi"))[..], b"$GPTXT,hi");
    }

    #[test]
    fn kinds_by_catalogue_name_old_name_or_any_case() {
        let k: ChecksumKind = serde_yaml::from_str("CRC-8/NRSC-5").unwrap();
        assert_eq!(k.width(), 1);
        assert_eq!(serde_yaml::from_str::<ChecksumKind>("Sum8").unwrap(), ChecksumKind::Sum8);
        let e = serde_yaml::from_str::<ChecksumKind>("crc-16/modbos").unwrap_err().to_string();
        assert!(e.contains("unknown checksum type `crc-16/modbos`, did you mean `crc-16/modbus`?"), "{e}");
    }

    fn generic(kind: ChecksumKind, start: i64, order: ByteOrder) -> Checksum {
        Checksum::Generic {
            kind,
            start,
            end: None,
            at: None,
            byte_order: order,
            encoding: ChecksumEncoding::Binary,
            strip: false,
        }
    }

    #[test]
    fn nmea_sentence_from_the_standard() {
        let ok = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47";
        let c = Checksum::Nmea { required: true, strip: false };
        assert_eq!(c.verify(ok), Ok(()));
        let bad = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*48";
        assert!(matches!(c.verify(bad), Err(ChecksumError::Mismatch { found: 0x48, computed: 0x47 })));
        assert_eq!(c.verify(b"$GPTXT,hello"), Err(ChecksumError::Missing));
        assert_eq!(Checksum::Nmea { required: false, strip: false }.verify(b"$GPTXT,hello"), Ok(()));
    }

    #[test]
    fn modbus_crc_is_sent_low_byte_first() {
        // Read 2 holding registers from slave 1 at 0: CRC C4 0B per the Modbus spec examples.
        let frame = [0x01, 0x03, 0x00, 0x00, 0x00, 0x02, 0xC4, 0x0B];
        assert_eq!(generic(crc("crc-16/modbus"), 0, ByteOrder::Little).verify(&frame), Ok(()));
        assert!(generic(crc("crc-16/modbus"), 0, ByteOrder::Big).verify(&frame).is_err());
    }

    #[test]
    fn catalogue_check_values() {
        // The standard "123456789" check values of each catalogued CRC.
        let d = b"123456789";
        assert_eq!(crc("crc8").compute(d), 0xF4);
        assert_eq!(crc("crc16_modbus").compute(d), 0x4B37);
        assert_eq!(crc("crc16_ccitt").compute(d), 0x29B1);
        assert_eq!(crc("crc16_xmodem").compute(d), 0x31C3);
        assert_eq!(crc("crc32").compute(d), 0xCBF43926);
        assert_eq!(ChecksumKind::Sum8.compute(&[0xFF, 0x02]), 0x01);
        assert_eq!(ChecksumKind::Sum16.compute(&[0xFF, 0x02]), 0x101);
        // The MH-Z19B "read CO2" request from its datasheet: FF 01 86 00 00 00 00 00 79.
        assert_eq!(ChecksumKind::Sum8Neg.compute(&[0x01, 0x86, 0, 0, 0, 0, 0]), 0x79);
    }

    #[test]
    fn too_short_frames_are_errors_not_panics() {
        let c = generic(crc("crc-32/iso-hdlc"), 0, ByteOrder::Big);
        assert_eq!(c.verify(&[1, 2]), Err(ChecksumError::TooShort(2)));
        assert_eq!(c.verify(&[]), Err(ChecksumError::TooShort(0)));
    }
}
