//! Simulated sensors that speak the real frame formats (see SENSORS.md): an NMEA 0183 GPS, a Plantower
//! PMS5003, a Nova SDS011 and an Arduino-style key=value line sensor, which send on their own, and
//! sensors that answer only when asked (`respond`): a Winsen MH-Z19B and a PMS5003 in passive mode.
//! They feed the demo, the tests and the benchmarks, and `ser2mqtt simulate` runs them on a real
//! serial device or pty.
//!
//! Values wander slowly like real readings; checksums are computed with the same code the gateway
//! checks them with, so a simulator frame is valid exactly when a real sensor's would be.

use std::time::Duration;

use chrono::{Timelike, Utc};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::serial::checksum::ChecksumKind;

pub mod meter;
pub mod respond;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SensorKind {
    /// NMEA 0183 GPS: a GGA and an RMC sentence per fix.
    Nmea,
    /// Plantower PMS5003: 32-byte frame, 0x42 0x4D, 16-bit sum.
    Pms5003,
    /// Nova SDS011: 10-byte frame, 0xAA 0xC0 … 0xAB, 8-bit sum.
    Sds011,
    /// Arduino-style `temp=21.50,hum=48.2` lines.
    Arduino,
    /// Winsen MH-Z19B CO₂ sensor: answers `FF 01 86 …` with its reading; takes zero and range commands.
    Mhz19b,
    /// Plantower PMS5003 in passive mode: answers `42 4D E2 …`; takes mode and sleep commands.
    Pms5003Passive,
    /// Eastron SDM120 energy meter, Modbus RTU slave 1: input registers as float32.
    Sdm120,
}

impl SensorKind {
    /// How often the real sensor sends (frames per second).
    pub fn natural_rate(self) -> f64 {
        1.0
    }

    /// Whether it speaks only when spoken to.
    pub fn answers_only(self) -> bool {
        matches!(self, SensorKind::Mhz19b | SensorKind::Pms5003Passive | SensorKind::Sdm120)
    }
}

/// Produces successive frames of one sensor.
pub struct Simulator {
    kind: SensorKind,
    seq: u64,
    rng: fastrand::Rng,
}

impl Simulator {
    pub fn new(kind: SensorKind, seed: u64) -> Simulator {
        Simulator { kind, seq: 0, rng: fastrand::Rng::with_seed(seed) }
    }

    /// The next frame, exactly as the sensor would put it on the wire.
    pub fn next_frame(&mut self) -> Vec<u8> {
        self.seq += 1;
        match self.kind {
            SensorKind::Nmea => self.nmea(),
            SensorKind::Pms5003 | SensorKind::Pms5003Passive => self.pms5003(),
            // A Modbus slave has no frames of its own: `meter::serve` answers requests.
            SensorKind::Sdm120 => Vec::new(),
            SensorKind::Sds011 => self.sds011(),
            SensorKind::Mhz19b => respond::co2_frame(400 + (self.seq % 50) as u16 + self.rng.u16(0..5)),
            SensorKind::Arduino => {
                let t = 21.5 + (self.seq % 40) as f64 * 0.05 - self.rng.f64() * 0.1;
                let h = 48.2 + self.rng.f64();
                format!("temp={t:.2},hum={h:.1}\r\n").into_bytes()
            }
        }
    }

    fn nmea(&mut self) -> Vec<u8> {
        let now = Utc::now();
        let time =
            format!("{:02}{:02}{:02}.{:02}", now.hour(), now.minute(), now.second(), now.nanosecond() / 10_000_000);
        let lat = 4807.038 + (self.seq % 1000) as f64 * 0.0001;
        let lon = 1131.000 + self.rng.f64() * 0.001;
        let sats = 6 + self.rng.u8(0..6);
        let gga = format!("GPGGA,{time},{lat:.4},N,{lon:09.4},E,1,{sats:02},0.9,545.4,M,46.9,M,,");
        let rmc = format!("GPRMC,{time},A,{lat:.4},N,{lon:09.4},E,0.5,54.7,{},,,A", now.format("%d%m%y"));
        let mut out = nmea_sentence(&gga);
        out.extend(nmea_sentence(&rmc));
        out
    }

    fn pms5003(&mut self) -> Vec<u8> {
        let pm25 = 10 + (self.seq % 20) as u16 + self.rng.u16(0..3);
        let words = [pm25 - 3, pm25, pm25 + 4, pm25 - 3, pm25, pm25 + 4, 1500, 450, 80, 10, 2, 1, 0x9700];
        let mut f = vec![0x42, 0x4D, 0x00, 0x1C];
        for w in words {
            f.extend_from_slice(&w.to_be_bytes());
        }
        let sum = ChecksumKind::Sum16.compute(&f) as u16;
        f.extend_from_slice(&sum.to_be_bytes());
        f
    }

    fn sds011(&mut self) -> Vec<u8> {
        let pm25 = 120 + (self.seq % 50) as u16 + self.rng.u16(0..5);
        let pm10 = pm25 * 2;
        let [a, b] = pm25.to_le_bytes();
        let [c, d] = pm10.to_le_bytes();
        let mut f = vec![0xAA, 0xC0, a, b, c, d, 0xA1, 0x60];
        f.push(ChecksumKind::Sum8.compute(&f[2..8]) as u8);
        f.push(0xAB);
        f
    }
}

/// `$` + body + `*hh` + CR LF, with the NMEA XOR checksum.
pub fn nmea_sentence(body: &str) -> Vec<u8> {
    format!("${body}*{:02X}\r\n", ChecksumKind::Xor.compute(body.as_bytes())).into_bytes()
}

/// Writes `kind`'s frames to `out` at `rate` frames per second (0 = as fast as the writer takes them),
/// stopping after `count` frames if given, or at shutdown. Returns the number of frames written. A
/// sensor that answers only when asked answers what it reads from `out` instead (`rate` unused).
pub async fn run<W: AsyncRead + AsyncWrite + Unpin>(
    kind: SensorKind,
    mut out: W,
    rate: f64,
    count: Option<u64>,
    shutdown: CancellationToken,
) -> std::io::Result<u64> {
    if kind.answers_only() {
        return respond::run(kind, out, count, shutdown).await;
    }
    let mut sim = Simulator::new(kind, 0x5e12);
    let mut tick = (rate > 0.0).then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / rate)));
    let mut written = 0;
    while count.is_none_or(|c| written < c) {
        if let Some(t) = tick.as_mut() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = t.tick() => {}
            }
        } else if shutdown.is_cancelled() {
            break;
        }
        out.write_all(&sim.next_frame()).await?;
        written += 1;
    }
    out.flush().await?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serial::checksum::Checksum;

    #[test]
    fn frames_carry_valid_checksums() {
        let nmea = Simulator::new(SensorKind::Nmea, 1).next_frame();
        let text = String::from_utf8(nmea).unwrap();
        for line in text.split("\r\n").filter(|l| !l.is_empty()) {
            assert_eq!(Checksum::Nmea { required: true, strip: false }.verify(line.as_bytes()), Ok(()), "{line}");
        }
        let pms = Simulator::new(SensorKind::Pms5003, 1).next_frame();
        assert_eq!(pms.len(), 32);
        assert_eq!(ChecksumKind::Sum16.compute(&pms[..30]), u16::from_be_bytes([pms[30], pms[31]]) as u32);
        let sds = Simulator::new(SensorKind::Sds011, 1).next_frame();
        assert_eq!((sds.len(), sds[0], sds[9]), (10, 0xAA, 0xAB));
        assert_eq!(ChecksumKind::Sum8.compute(&sds[2..8]), sds[8] as u32);
    }
}
