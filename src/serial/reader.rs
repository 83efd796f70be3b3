//! Reading one open port: bytes → frames → readings for the publisher, availability from the first
//! good frame and the silence timeout, and warnings about bad input that name its likely cause (a
//! wrong delimiter, baud rate or checksum is what a new user meets first).

use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::framing::{Fixed, FrameCodec, FrameEvent, Framing, Garble, LengthPrefixed, Markers};
use super::port::{bump, PortEvent, PortSettings, PortStats};
use super::request::{PortRequest, ReplySpec, WRITE_TIMEOUT};
use crate::bytes::hex;
use crate::decode::{DecodeError, FrameDecoder, Reading};
use crate::live;

/// At most one warning about garbled input per port in this period (the counters keep the totals).
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Read buffer: a few frames of the largest size, so one read syscall carries several frames.
const READ_CAPACITY: usize = 4096;

/// Where a port task's events go and what it is asked to write.
pub struct Channels<'a> {
    pub tx: &'a mpsc::Sender<PortEvent>,
    pub stats: &'a PortStats,
    pub shutdown: &'a CancellationToken,
    pub requests: &'a mut mpsc::Receiver<PortRequest>,
}

/// A request written whose reply is awaited.
struct Pending {
    deadline: Instant,
    reply: ReplySpec,
    waiting: Waiting,
}

enum Waiting {
    Command(PortRequest),
    /// A poll, on its `attempt`th retry (0: the first request).
    Poll {
        attempt: u32,
    },
}

/// Reads frames from `reader` and writes requests and polls to `writer` until shutdown (`Ok`) or a
/// read or write error / end of stream (`Err`). Availability goes `online` at the first good frame and
/// `offline` on silence, after `poll.offline_after` unanswered polls, or when this returns. One
/// request at a time: the next is written once the previous one's reply came or timed out.
pub async fn read_frames<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    reader: R,
    mut writer: W,
    port: &PortSettings,
    io: Channels<'_>,
) -> Result<(), std::io::Error> {
    let Channels { tx, stats, shutdown, requests } = io;
    let codec = FrameCodec::new(port.framing.clone(), port.checksum.clone());
    let mut frames = FramedRead::with_capacity(reader, codec, READ_CAPACITY.max(port.framing.max_frame() * 2));
    let mut online = false;
    let mut skip = port.skip_first_frames;
    let mut warn = crate::logging::Every::new(WARN_EVERY);
    let silence = tokio::time::sleep(port.silence_timeout);
    tokio::pin!(silence);
    let mut polls = port.poll.as_ref().map(|p| {
        let mut t = tokio::time::interval(p.every);
        // A poll due while a command waits for its reply goes out after it, not in a burst later.
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut pending: Option<Pending> = None;
    // Polls in a row that went unanswered.
    let mut misses = 0u32;
    let result = loop {
        let deadline = pending.as_ref().map(|p| p.deadline);
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = &mut silence, if online => {
                online = false;
                tracing::warn!(port = %port.name, timeout = ?port.silence_timeout, "no valid frame within the silence timeout");
                if !availability(tx, port, stats, false).await { break Ok(()) }
            }
            Some(req) = requests.recv(), if pending.is_none() => {
                if req.modbus.is_some() {
                    // `check` refuses Modbus commands on other ports; this only guards the invariant.
                    req.answer(Err("a Modbus write on a port that is not a Modbus bus".into()));
                    continue;
                }
                if let Err(e) = write(&mut writer, &req.bytes).await {
                    req.answer(Err(format!("writing to the device failed: {e}")));
                    break Err(e);
                }
                bump(&stats.writes, 1);
                match req.reply.clone() {
                    Some(reply) => {
                        pending = Some(Pending { deadline: Instant::now() + reply.timeout, reply, waiting: Waiting::Command(req) });
                    }
                    None => req.answer(Ok(None)),
                }
            }
            _ = async { polls.as_mut().expect("guarded").tick().await }, if polls.is_some() && pending.is_none() => {
                let poll = port.poll.as_ref().expect("polls come from poll settings");
                write(&mut writer, &poll.request).await?;
                bump(&stats.writes, 1);
                let reply = poll.reply();
                pending = Some(Pending { deadline: Instant::now() + reply.timeout, reply, waiting: Waiting::Poll { attempt: 0 } });
            }
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                let Pending { reply, waiting, .. } = pending.take().expect("guarded");
                bump(&stats.reply_timeouts, 1);
                match waiting {
                    Waiting::Command(req) => req.answer(Err(format!("no reply within {:?}", reply.timeout))),
                    Waiting::Poll { attempt } => {
                        let poll = port.poll.as_ref().expect("polls come from poll settings");
                        if attempt < poll.retries {
                            write(&mut writer, &poll.request).await?;
                            bump(&stats.writes, 1);
                            pending = Some(Pending { deadline: Instant::now() + reply.timeout, reply, waiting: Waiting::Poll { attempt: attempt + 1 } });
                            continue;
                        }
                        misses += 1;
                        bump(&stats.polls_unanswered, 1);
                        if misses >= poll.offline_after && online {
                            online = false;
                            tracing::warn!(port = %port.name, polls = misses, "the sensor did not answer {misses} polls in a row");
                            if !availability(tx, port, stats, false).await { break Ok(()) }
                        }
                    }
                }
            }
            next = frames.next() => {
                let event = match next {
                    None => break Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "device closed")),
                    Some(Err(e)) => break Err(e),
                    Some(Ok(ev)) => ev,
                };
                let received = chrono::Utc::now();
                // `ser2mqtt tap` is watching this port: describe what becomes of this frame.
                let live = received.timestamp_millis() < stats.live_until.load(std::sync::atomic::Ordering::Relaxed);
                let trace = |event: live::Event| {
                    // A trace is best effort: dropped rather than wait for the publisher.
                    let _ = tx.try_send(PortEvent::Live(event.message(&port.live_topic)));
                };
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
                        if live {
                            let mut ev = live::Event::new(received, live::Verdict::Garbled);
                            if let Garble::BadChecksum(e, frame) = &reason {
                                ev = ev.bytes(frame).why(e.to_string());
                            } else {
                                ev = ev.why(format!("{bytes} bytes dropped: {}", garbled_hint(&port.framing, &reason)));
                            }
                            trace(ev);
                        }
                        warn.note(1, |n| {
                            let hint = garbled_hint(&port.framing, &reason);
                            tracing::warn!(port = %port.name, ?reason, bytes, dropped_since_last = n,
                                "garbled input dropped ({n} since the last warning): {hint}")
                        });
                        continue;
                    }
                };
                // A command's answer (an acknowledgement, say) need not be a reading.
                let mut command_reply = false;
                if pending.as_ref().is_some_and(|p| p.reply.matches(&frame)) {
                    match pending.take().expect("checked").waiting {
                        Waiting::Command(req) => {
                            req.answer(Ok(Some(frame.clone())));
                            command_reply = true;
                        }
                        Waiting::Poll { .. } => misses = 0,
                    }
                }
                if port.ignore.iter().any(|r| r.is_match(&frame)) {
                    bump(&stats.ignored, 1);
                    if live {
                        trace(live::Event::new(received, live::Verdict::Ignored).bytes(&frame).why("matches an `ignore` rule"));
                    }
                    continue;
                }
                let mut fields = match port.decoder.decode(&frame) {
                    Ok(f) => f,
                    Err(_) if command_reply => continue,
                    Err(DecodeError::NoMatch) => {
                        // Not an error: a GPS sends many sentences a config has no use for. Said only
                        // while no frame has matched since the port opened (a wrong pattern, then).
                        bump(&stats.ignored, 1);
                        if live {
                            trace(live::Event::new(received, live::Verdict::Ignored).bytes(&frame).why("no pattern or key of the decoder matches"));
                        }
                        if !online {
                            warn.note(1, |n| {
                                let hint = undecodable_hint(&port.decoder, &frame);
                                tracing::warn!(port = %port.name, ignored_since_last = n,
                                    "frames match none of the decoder's patterns or keys ({n} since the last warning); none has matched since the port opened{hint}")
                            });
                        }
                        continue;
                    }
                    Err(e) => {
                        bump(&stats.decode_errors, 1);
                        if live {
                            trace(live::Event::new(received, live::Verdict::DecodeError).bytes(&frame).why(e.to_string()));
                        }
                        warn.note(1, |n| {
                            let hint = undecodable_hint(&port.decoder, &frame);
                            tracing::warn!(port = %port.name, error = %e, dropped_since_last = n,
                                "frame could not be decoded; dropped ({n} since the last warning){hint}")
                        });
                        continue;
                    }
                };
                for t in &port.transforms {
                    t.apply(&mut fields);
                }
                bump(&stats.frames, 1);
                if live {
                    trace(live::Event::new(received, live::Verdict::Ok).bytes(&frame).fields(&fields));
                }
                silence.as_mut().reset(Instant::now() + port.silence_timeout);
                if !online {
                    online = true;
                    if !availability(tx, port, stats, true).await { break Ok(()) }
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
    if let Some(Pending { waiting: Waiting::Command(req), .. }) = pending {
        req.answer(Err("the port closed before the reply came".into()));
    }
    if online {
        availability(tx, port, stats, false).await;
    }
    result
}

/// Writes one request whole, within `WRITE_TIMEOUT`.
async fn write<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    let all = async {
        writer.write_all(bytes).await?;
        writer.flush().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, all).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the device took no bytes for 5 s")),
    }
}

pub(crate) async fn availability(
    tx: &mpsc::Sender<PortEvent>,
    port: &PortSettings,
    stats: &PortStats,
    online: bool,
) -> bool {
    stats.online.store(online, std::sync::atomic::Ordering::Relaxed);
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
        (_, Garble::BadChecksum(..)) => {
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

#[cfg(test)]
#[path = "reader_tests.rs"]
pub(crate) mod tests;
