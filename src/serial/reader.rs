//! Reading one open port: bytes → frames → readings for the publisher, availability from the first
//! good frame and the silence timeout, and warnings about bad input that name its likely cause (a
//! wrong delimiter, baud rate or checksum is what a new user meets first).

use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::framing::{Fixed, FrameCodec, FrameEvent, Framing, Garble, LengthPrefixed, Markers};
use super::port::{bump, PortEvent, PortSettings, PortStats};
use crate::decode::{FrameDecoder, Reading};

/// At most one warning about garbled input per port in this period (the counters keep the totals).
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Read buffer: a few frames of the largest size, so one read syscall carries several frames.
const READ_CAPACITY: usize = 4096;

/// Reads frames from `reader` until shutdown (`Ok`) or a read error / end of stream (`Err`).
/// Availability goes `online` at the first good frame and `offline` on silence or when this returns.
pub async fn read_frames<R: AsyncRead + Unpin>(
    reader: R,
    port: &PortSettings,
    tx: &mpsc::Sender<PortEvent>,
    stats: &PortStats,
    shutdown: &CancellationToken,
) -> Result<(), std::io::Error> {
    let codec = FrameCodec::new(port.framing.clone(), port.checksum.clone());
    let mut frames = FramedRead::with_capacity(reader, codec, READ_CAPACITY.max(port.framing.max_frame() * 2));
    let mut online = false;
    let mut skip = port.skip_first_frames;
    let mut warn = crate::logging::Every::new(WARN_EVERY);
    let silence = tokio::time::sleep(port.silence_timeout);
    tokio::pin!(silence);
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = &mut silence, if online => {
                online = false;
                tracing::warn!(port = %port.name, timeout = ?port.silence_timeout, "no valid frame within the silence timeout");
                if !availability(tx, port, false).await { break Ok(()) }
            }
            next = frames.next() => {
                let event = match next {
                    None => break Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "device closed")),
                    Some(Err(e)) => break Err(e),
                    Some(Ok(ev)) => ev,
                };
                let received = chrono::Utc::now();
                if let FrameEvent::Skipped { bytes } = event {
                    // More of a garbled run already counted: bytes only, and not a frame to skip.
                    bump(&stats.bytes_dropped, bytes as u64);
                    continue;
                }
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                let frame = match event {
                    FrameEvent::Frame(f) => f,
                    FrameEvent::Skipped { .. } => continue,
                    FrameEvent::Garbled { reason, bytes } => {
                        bump(&stats.garbled, 1);
                        bump(&stats.bytes_dropped, bytes as u64);
                        warn.note(1, |n| {
                            let hint = garbled_hint(&port.framing, &reason);
                            tracing::warn!(port = %port.name, ?reason, bytes, dropped_since_last = n,
                                "garbled input dropped ({n} since the last warning): {hint}")
                        });
                        continue;
                    }
                };
                let fields = match port.decoder.decode(&frame) {
                    Ok(f) => f,
                    Err(e) => {
                        bump(&stats.decode_errors, 1);
                        warn.note(1, |n| {
                            let hint = undecodable_hint(&port.decoder, &frame);
                            tracing::warn!(port = %port.name, error = %e, dropped_since_last = n,
                                "frame could not be decoded; dropped ({n} since the last warning){hint}")
                        });
                        continue;
                    }
                };
                bump(&stats.frames, 1);
                silence.as_mut().reset(tokio::time::Instant::now() + port.silence_timeout);
                if !online {
                    online = true;
                    if !availability(tx, port, true).await { break Ok(()) }
                }
                let reading = Reading { port: port.name.clone(), fields, received };
                match tx.try_send(PortEvent::Reading(reading)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(ev)) => {
                        bump(&stats.publisher_waits, 1);
                        // Not reading meanwhile: the bytes wait in the tty buffer, not in our memory.
                        tokio::select! {
                            _ = shutdown.cancelled() => break Ok(()),
                            sent = tx.send(ev) => if sent.is_err() { break Ok(()) },
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => break Ok(()),
                }
            }
        }
    };
    if online {
        availability(tx, port, false).await;
    }
    result
}

pub(super) async fn availability(tx: &mpsc::Sender<PortEvent>, port: &PortSettings, online: bool) -> bool {
    let ev = PortEvent::Availability { port: port.name.clone(), topic: port.availability_topic.clone(), online };
    tx.send(ev).await.is_ok()
}

/// The likely cause of garbled input, for the warning a user reads in the journal.
fn garbled_hint(framing: &Framing, reason: &Garble) -> String {
    match (framing, reason) {
        (Framing::Lines(l), Garble::TooLong) => format!(
            "more than {} bytes without the delimiter {:?}: wrong delimiter or baud rate?",
            l.max_length, l.delimiter
        ),
        (_, Garble::Unframed) => match framing {
            Framing::Fixed(Fixed { header, .. })
            | Framing::Markers(Markers { start: header, .. })
            | Framing::LengthPrefixed(LengthPrefixed { header, .. }) => {
                format!("bytes outside any frame (frames start with {}): wrong baud rate or framing?", hex(header))
            }
            Framing::Lines(_) => "bytes without a delimiter at the end of the stream".into(),
        },
        (_, Garble::TooLong) => "a frame longer than `max_length` (or a length field that says so)".into(),
        (_, Garble::BadTrailer) => "a frame whose trailer or end marker is not where it must be".into(),
        (_, Garble::BadChecksum(_)) => {
            "a frame failed its checksum: wrong checksum type or range, or noise on the line?".into()
        }
    }
}

/// For a text decoder handed a frame that is not text, the usual cause: the baud rate.
fn undecodable_hint(decoder: &FrameDecoder, frame: &[u8]) -> &'static str {
    let text = |b: &u8| b.is_ascii_graphic() || matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let binary = frame.iter().filter(|b| !text(b)).count();
    if !matches!(decoder, FrameDecoder::Binary { .. }) && binary * 10 > frame.len() {
        "; the frame is not text: wrong baud rate?"
    } else {
        ""
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
#[path = "reader_tests.rs"]
pub(crate) mod tests;
