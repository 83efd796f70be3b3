//! Every CRC of the `crc` crate's catalogue whose value fills whole bytes (8, 16, 24 and 32 bits),
//! by its catalogue name (`crc-8/nrsc-5`, `crc-16/modbus`, …), plus the names this gateway used
//! before and a few names datasheets use, as aliases.

use crc::{Algorithm, Crc, NoTable};

/// A CRC from the catalogue: its name and its parameters.
#[derive(Clone, Copy)]
pub struct CrcAlgorithm {
    pub name: &'static str,
    params: Params,
}

#[derive(Clone, Copy)]
enum Params {
    W8(&'static Algorithm<u8>),
    W16(&'static Algorithm<u16>),
    W32(&'static Algorithm<u32>),
}

impl std::fmt::Debug for CrcAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for CrcAlgorithm {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for CrcAlgorithm {}

impl CrcAlgorithm {
    /// Width of the value in bytes.
    pub fn width(self) -> usize {
        let bits = match self.params {
            Params::W8(a) => a.width,
            Params::W16(a) => a.width,
            Params::W32(a) => a.width,
        };
        (bits as usize).div_ceil(8)
    }

    /// Bit by bit, without a lookup table: sensor frames are tens of bytes, and a table per port
    /// would cost more memory than the time it saves.
    pub fn compute(self, data: &[u8]) -> u32 {
        match self.params {
            Params::W8(a) => Crc::<u8, NoTable>::new(a).checksum(data) as u32,
            Params::W16(a) => Crc::<u16, NoTable>::new(a).checksum(data) as u32,
            Params::W32(a) => Crc::<u32, NoTable>::new(a).checksum(data),
        }
    }

    /// The algorithm a name or alias stands for (case does not matter).
    pub fn find(name: &str) -> Option<CrcAlgorithm> {
        let name = name.to_ascii_lowercase();
        let name = ALIASES.iter().find(|(alias, _)| *alias == name).map_or(name.as_str(), |(_, real)| real);
        CATALOGUE.iter().find(|a| a.name == name).copied()
    }

    /// Every catalogue name, then every alias.
    pub fn names() -> impl Iterator<Item = &'static str> {
        CATALOGUE.iter().map(|a| a.name).chain(ALIASES.iter().map(|(alias, _)| *alias))
    }
}

/// Older names of this gateway, and names datasheets use for a catalogue entry.
const ALIASES: &[(&str, &str)] = &[
    ("crc8", "crc-8/smbus"),
    ("crc16_modbus", "crc-16/modbus"),
    ("crc16_ccitt", "crc-16/ibm-3740"),
    ("crc16_xmodem", "crc-16/xmodem"),
    ("crc32", "crc-32/iso-hdlc"),
    ("crc-16/ccitt-false", "crc-16/ibm-3740"),
    ("crc-16/x-25", "crc-16/ibm-sdlc"),
    ("crc-8/maxim", "crc-8/maxim-dow"),
    ("crc-32c", "crc-32/iscsi"),
    ("crc-32", "crc-32/iso-hdlc"),
];

macro_rules! catalogue {
    ($($w:ident $c:ident $name:literal),* $(,)?) => {
        const CATALOGUE: &[CrcAlgorithm] = &[$(CrcAlgorithm { name: $name, params: Params::$w(&crc::$c) }),*];
    };
}

catalogue! {
    W16 CRC_16_ARC "crc-16/arc",
    W16 CRC_16_CDMA2000 "crc-16/cdma2000",
    W16 CRC_16_CMS "crc-16/cms",
    W16 CRC_16_DDS_110 "crc-16/dds-110",
    W16 CRC_16_DECT_R "crc-16/dect-r",
    W16 CRC_16_DECT_X "crc-16/dect-x",
    W16 CRC_16_DNP "crc-16/dnp",
    W16 CRC_16_EN_13757 "crc-16/en-13757",
    W16 CRC_16_GENIBUS "crc-16/genibus",
    W16 CRC_16_GSM "crc-16/gsm",
    W16 CRC_16_IBM_3740 "crc-16/ibm-3740",
    W16 CRC_16_IBM_SDLC "crc-16/ibm-sdlc",
    W16 CRC_16_ISO_IEC_14443_3_A "crc-16/iso-iec-14443-3-a",
    W16 CRC_16_KERMIT "crc-16/kermit",
    W16 CRC_16_LJ1200 "crc-16/lj1200",
    W16 CRC_16_M17 "crc-16/m17",
    W16 CRC_16_MAXIM_DOW "crc-16/maxim-dow",
    W16 CRC_16_MCRF4XX "crc-16/mcrf4xx",
    W16 CRC_16_MODBUS "crc-16/modbus",
    W16 CRC_16_NRSC_5 "crc-16/nrsc-5",
    W16 CRC_16_OPENSAFETY_A "crc-16/opensafety-a",
    W16 CRC_16_OPENSAFETY_B "crc-16/opensafety-b",
    W16 CRC_16_PROFIBUS "crc-16/profibus",
    W16 CRC_16_RIELLO "crc-16/riello",
    W16 CRC_16_SPI_FUJITSU "crc-16/spi-fujitsu",
    W16 CRC_16_T10_DIF "crc-16/t10-dif",
    W16 CRC_16_TELEDISK "crc-16/teledisk",
    W16 CRC_16_TMS37157 "crc-16/tms37157",
    W16 CRC_16_UMTS "crc-16/umts",
    W16 CRC_16_USB "crc-16/usb",
    W16 CRC_16_XMODEM "crc-16/xmodem",
    W32 CRC_24_BLE "crc-24/ble",
    W32 CRC_24_FLEXRAY_A "crc-24/flexray-a",
    W32 CRC_24_FLEXRAY_B "crc-24/flexray-b",
    W32 CRC_24_INTERLAKEN "crc-24/interlaken",
    W32 CRC_24_LTE_A "crc-24/lte-a",
    W32 CRC_24_LTE_B "crc-24/lte-b",
    W32 CRC_24_OPENPGP "crc-24/openpgp",
    W32 CRC_24_OS_9 "crc-24/os-9",
    W32 CRC_32_AIXM "crc-32/aixm",
    W32 CRC_32_AUTOSAR "crc-32/autosar",
    W32 CRC_32_BASE91_D "crc-32/base91-d",
    W32 CRC_32_BZIP2 "crc-32/bzip2",
    W32 CRC_32_CD_ROM_EDC "crc-32/cd-rom-edc",
    W32 CRC_32_CKSUM "crc-32/cksum",
    W32 CRC_32_ISCSI "crc-32/iscsi",
    W32 CRC_32_ISO_HDLC "crc-32/iso-hdlc",
    W32 CRC_32_JAMCRC "crc-32/jamcrc",
    W32 CRC_32_MEF "crc-32/mef",
    W32 CRC_32_MPEG_2 "crc-32/mpeg-2",
    W32 CRC_32_XFER "crc-32/xfer",
    W8 CRC_8_AUTOSAR "crc-8/autosar",
    W8 CRC_8_BLUETOOTH "crc-8/bluetooth",
    W8 CRC_8_CDMA2000 "crc-8/cdma2000",
    W8 CRC_8_DARC "crc-8/darc",
    W8 CRC_8_DVB_S2 "crc-8/dvb-s2",
    W8 CRC_8_GSM_A "crc-8/gsm-a",
    W8 CRC_8_GSM_B "crc-8/gsm-b",
    W8 CRC_8_HITAG "crc-8/hitag",
    W8 CRC_8_I_432_1 "crc-8/i-432-1",
    W8 CRC_8_I_CODE "crc-8/i-code",
    W8 CRC_8_LTE "crc-8/lte",
    W8 CRC_8_MAXIM_DOW "crc-8/maxim-dow",
    W8 CRC_8_MIFARE_MAD "crc-8/mifare-mad",
    W8 CRC_8_NRSC_5 "crc-8/nrsc-5",
    W8 CRC_8_OPENSAFETY "crc-8/opensafety",
    W8 CRC_8_ROHC "crc-8/rohc",
    W8 CRC_8_SAE_J1850 "crc-8/sae-j1850",
    W8 CRC_8_SMBUS "crc-8/smbus",
    W8 CRC_8_TECH_3250 "crc-8/tech-3250",
    W8 CRC_8_WCDMA "crc-8/wcdma"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_gives_its_catalogue_check_value() {
        // The catalogue's `check` is the CRC of "123456789": a wrong width or mapping shows here.
        for a in CATALOGUE {
            let check = match a.params {
                Params::W8(p) => p.check as u32,
                Params::W16(p) => p.check as u32,
                Params::W32(p) => p.check,
            };
            assert_eq!(a.compute(b"123456789"), check, "{}", a.name);
        }
        assert_eq!(CATALOGUE.len(), 71);
    }

    #[test]
    fn aliases_and_case() {
        assert_eq!(CrcAlgorithm::find("CRC-8/NRSC-5").unwrap().compute(&[0xBE, 0xEF]), 0x92, "Sensirion SHT3x example");
        assert_eq!(CrcAlgorithm::find("crc16_ccitt").unwrap().name, "crc-16/ibm-3740");
        assert_eq!(CrcAlgorithm::find("crc-24/openpgp").unwrap().width(), 3);
        assert!(CrcAlgorithm::find("crc-16/nope").is_none());
        for (alias, real) in ALIASES {
            assert!(CrcAlgorithm::find(real).is_some(), "{alias} -> {real}");
        }
    }
}
