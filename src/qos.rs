//! MQTT quality of service as the configuration writes it (`0`, `1`, `2`), checked once where the
//! file is read; the running code carries the checked number.

use serde::Deserialize;

/// A QoS level that is known to be 0, 1 or 2.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u8")]
pub struct Qos(u8);

impl Qos {
    /// The forward and downlink rules' default.
    pub const AT_LEAST_ONCE: Qos = Qos(1);
}

impl TryFrom<u8> for Qos {
    type Error = String;
    fn try_from(n: u8) -> Result<Qos, String> {
        if n <= 2 {
            Ok(Qos(n))
        } else {
            Err(format!("{n} is not an MQTT QoS: use 0, 1 or 2"))
        }
    }
}

impl From<Qos> for u8 {
    fn from(q: Qos) -> u8 {
        q.0
    }
}

#[cfg(test)]
mod tests {
    use super::Qos;

    #[test]
    fn only_0_1_and_2() {
        assert_eq!(u8::from(Qos::try_from(2).unwrap()), 2);
        assert_eq!(Qos::try_from(3).unwrap_err(), "3 is not an MQTT QoS: use 0, 1 or 2");
        let q: Qos = serde_yaml::from_str("1").unwrap();
        assert_eq!(q, Qos::AT_LEAST_ONCE);
        assert!(serde_yaml::from_str::<Qos>("7").unwrap_err().to_string().contains("7 is not an MQTT QoS"));
    }
}
