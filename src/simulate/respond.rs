//! Simulated sensors that answer only when asked, byte for byte as their datasheets say:
//! - Winsen MH-Z19B: `FF 01 86 00 00 00 00 00 79` → `FF 86 hi lo temp+40 00 00 00 cs` (cs: the two's
//!   complement of the sum of bytes 1..7); `FF 01 87 …` (zero calibration) and `FF 01 99 …` (range) are
//!   taken without an answer, as the real sensor does.
//! - Plantower PMS5003 in passive mode: 7-byte commands `42 4D cmd dh dl sh sl` (16-bit sum): `E2`
//!   reads one frame; `E1 00/01` sets passive/active mode and `E4 00/01` sleep/wake, each acknowledged
//!   with an 8-byte frame as the sensor does. A request with a bad checksum gets no answer.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{SensorKind, Simulator};
use crate::serial::checksum::ChecksumKind;

/// An MH-Z19B answer carrying `ppm`.
pub fn co2_frame(ppm: u16) -> Vec<u8> {
    let mut f = vec![0xFF, 0x86, (ppm >> 8) as u8, ppm as u8, 21 + 40, 0, 0, 0];
    f.push(ChecksumKind::Sum8Neg.compute(&f[1..]) as u8);
    f
}

/// What the sensor makes of the bytes received so far: an answer, and how many bytes it consumed
/// (None: wait for more).
fn answer(kind: SensorKind, sim: &mut Simulator, buf: &[u8]) -> Option<(usize, Option<Vec<u8>>)> {
    match kind {
        SensorKind::Mhz19b => {
            let start = buf.iter().position(|b| *b == 0xFF)?;
            if start > 0 {
                return Some((start, None)); // noise before a command
            }
            let cmd = buf.get(..9)?;
            let valid = ChecksumKind::Sum8Neg.compute(&cmd[1..8]) as u8 == cmd[8] && cmd[1] == 0x01;
            let reply = (valid && cmd[2] == 0x86).then(|| sim.next_frame());
            Some((9, reply))
        }
        SensorKind::Pms5003Passive => {
            let start = buf.windows(2).position(|w| w == [0x42, 0x4D]);
            let Some(start) = start else { return (buf.len() > 1).then(|| (buf.len() - 1, None)) };
            if start > 0 {
                return Some((start, None));
            }
            let cmd = buf.get(..7)?;
            let sum = u16::from_be_bytes([cmd[5], cmd[6]]) as u32;
            if ChecksumKind::Sum16.compute(&cmd[..5]) != sum {
                return Some((7, None));
            }
            let reply = match cmd[2] {
                0xE2 => Some(sim.next_frame()),
                0xE1 | 0xE4 => {
                    let mut ack = vec![0x42, 0x4D, 0x00, 0x04, cmd[2], cmd[4]];
                    let s = ChecksumKind::Sum16.compute(&ack) as u16;
                    ack.extend(s.to_be_bytes());
                    Some(ack)
                }
                _ => None,
            };
            Some((7, reply))
        }
        // The others do not answer requests (the Modbus meter is `meter::serve`).
        _ => (!buf.is_empty()).then_some((buf.len(), None)),
    }
}

/// Answers requests read from `io` until shutdown, end of input, or `count` answers.
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    kind: SensorKind,
    mut io: S,
    count: Option<u64>,
    shutdown: CancellationToken,
) -> std::io::Result<u64> {
    let mut sim = Simulator::new(kind, 0x5e12);
    let mut buf = BytesMut::with_capacity(64);
    let mut answered = 0;
    while count.is_none_or(|c| answered < c) {
        while let Some((used, reply)) = answer(kind, &mut sim, &buf) {
            buf.advance(used);
            if let Some(r) = reply {
                io.write_all(&r).await?;
                io.flush().await?;
                answered += 1;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            n = io.read_buf(&mut buf) => if n? == 0 { break },
        }
    }
    Ok(answered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_mh_z19b_answers_a_read_and_takes_a_zero_calibration_silently() {
        let (mut host, sensor) = tokio::io::duplex(256);
        tokio::spawn(run(SensorKind::Mhz19b, sensor, None, CancellationToken::new()));
        host.write_all(&[0xFF, 0x01, 0x87, 0, 0, 0, 0, 0, 0x78]).await.unwrap();
        host.write_all(&[0xFF, 0x01, 0x86, 0, 0, 0, 0, 0, 0x79]).await.unwrap();
        let mut reply = [0u8; 9];
        host.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply[..2], [0xFF, 0x86], "only the read is answered");
        assert_eq!(ChecksumKind::Sum8Neg.compute(&reply[1..8]) as u8, reply[8]);
    }

    #[tokio::test]
    async fn a_passive_pms5003_answers_reads_and_acknowledges_mode_changes() {
        let (mut host, sensor) = tokio::io::duplex(256);
        tokio::spawn(run(SensorKind::Pms5003Passive, sensor, None, CancellationToken::new()));
        host.write_all(&[0x42, 0x4D, 0xE1, 0x00, 0x00, 0x01, 0x70]).await.unwrap();
        let mut ack = [0u8; 8];
        host.read_exact(&mut ack).await.unwrap();
        assert_eq!(ack, [0x42, 0x4D, 0x00, 0x04, 0xE1, 0x00, 0x01, 0x74]);
        host.write_all(&[0x42, 0x4D, 0xE2, 0x00, 0x00, 0x01, 0x71]).await.unwrap();
        let mut frame = [0u8; 32];
        host.read_exact(&mut frame).await.unwrap();
        assert_eq!(&frame[..4], [0x42, 0x4D, 0x00, 0x1C]);
    }
}
