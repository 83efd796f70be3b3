//! Cutting a serial byte stream into frames: one `tokio_util::codec::Decoder` for every framing kind.
//!
//! The codec never fails the stream. Bytes that cannot be framed, over-long frames and frames that
//! fail their checksum come out as `FrameEvent::Garbled` so the reader can count them and carry on; the
//! codec then resynchronises on the next header, marker or delimiter. The buffer never holds more than
//! the largest frame the configuration allows (plus one read), so garbage cannot grow memory.

use bytes::{Buf, Bytes, BytesMut};
use memchr::memmem;
use tokio_util::codec::Decoder;

use super::checksum::{Checksum, ChecksumError};

mod settings;
pub use settings::{Fixed, Framing, LengthCounts, LengthPrefixed, Lines, Markers};

/// Why bytes were thrown away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Garble {
    /// Bytes before a header or start marker that belong to no frame.
    Unframed,
    /// A frame longer than the configured maximum (or a length field that says so).
    TooLong,
    /// A frame whose trailer or end marker is not where it must be.
    BadTrailer,
    /// The checksum failed; the frame as received, for `ser2mqtt tap`.
    BadChecksum(ChecksumError, Bytes),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameEvent {
    Frame(Bytes),
    /// A garbled run or candidate frame begins; `bytes` dropped so far.
    Garbled {
        reason: Garble,
        bytes: usize,
    },
    /// More bytes of the garbled run last reported (counted as dropped, not as another garbled frame).
    Skipped {
        bytes: usize,
    },
}

/// A framing codec with an optional checksum check.
#[derive(Debug)]
pub struct FrameCodec {
    spec: Framing,
    cutter: Cutter,
}

/// The codec's mutable state, apart from its (read-only) spec so both can be borrowed at once.
#[derive(Debug)]
struct Cutter {
    checksum: Option<Checksum>,
    /// Lines: an over-long line is being skipped until its delimiter.
    discarding: bool,
    /// After a rejected candidate frame, skipped bytes are part of that rejection, not new garbage.
    resyncing: bool,
}

impl FrameCodec {
    pub fn new(spec: Framing, checksum: Option<Checksum>) -> FrameCodec {
        FrameCodec { spec, cutter: Cutter { checksum, discarding: false, resyncing: false } }
    }
}

impl Cutter {
    /// The frame if its checksum (if any) holds (without the checksum, if the port strips it); else why not.
    fn check(&mut self, frame: Bytes) -> Result<Bytes, Garble> {
        match &self.checksum {
            None => Ok(frame),
            Some(c) => match c.verify(&frame) {
                Ok(()) => Ok(c.strip(frame)),
                Err(e) => Err(Garble::BadChecksum(e, frame)),
            },
        }
    }

    /// `check` as the event a reader sees, for a frame already taken off the buffer: a rejected
    /// frame counts all `wire` bytes it occupied (delimiter or markers included).
    fn checked(&mut self, frame: Bytes, wire: usize) -> FrameEvent {
        match self.check(frame) {
            Ok(f) => FrameEvent::Frame(f),
            Err(reason) => FrameEvent::Garbled { reason, bytes: wire },
        }
    }

    /// Drops bytes before `header`. Returns the event for dropped bytes, if any; afterwards either the
    /// buffer starts with the header or holds fewer bytes than it.
    fn sync(&mut self, buf: &mut BytesMut, header_len: usize, found: Option<usize>) -> Option<FrameEvent> {
        let skip = match found {
            Some(i) => i,
            None => buf.len().saturating_sub(header_len.saturating_sub(1)),
        };
        if skip == 0 {
            return None;
        }
        buf.advance(skip);
        // Bytes skipped after a rejected candidate, or while still looking, belong to the garbage
        // run already reported: counted, but not as another garbled frame.
        let continuing = if found.is_some() {
            std::mem::take(&mut self.resyncing)
        } else {
            std::mem::replace(&mut self.resyncing, true)
        };
        Some(if continuing {
            FrameEvent::Skipped { bytes: skip }
        } else {
            FrameEvent::Garbled { reason: Garble::Unframed, bytes: skip }
        })
    }

    /// Rejects the candidate at the start of `buf`: drop its first byte (counted here) and look for
    /// the next header, which may lie inside the rejected candidate; the bytes skipped on the way are
    /// counted by `sync` as part of this rejection.
    fn reject(&mut self, buf: &mut BytesMut, reason: Garble) -> FrameEvent {
        buf.advance(1);
        self.resyncing = true;
        FrameEvent::Garbled { reason, bytes: 1 }
    }

    fn decode_lines(&mut self, buf: &mut BytesMut, delim: &[u8], max: usize) -> Option<FrameEvent> {
        loop {
            match memmem::find(buf, delim) {
                Some(i) => {
                    let line = buf.split_to(i).freeze();
                    buf.advance(delim.len());
                    if std::mem::take(&mut self.discarding) {
                        // The tail of an over-long line already reported, with its delimiter.
                        return Some(FrameEvent::Skipped { bytes: line.len() + delim.len() });
                    }
                    if line.len() > max {
                        return Some(FrameEvent::Garbled { reason: Garble::TooLong, bytes: line.len() + delim.len() });
                    }
                    if line.is_empty() {
                        continue; // blank lines (e.g. CR LF read as two delimiters) carry nothing
                    }
                    return Some(self.checked(line, i + delim.len()));
                }
                None => {
                    if buf.len() > max + delim.len() {
                        // Keep a possible partial delimiter; drop the rest of the over-long line now,
                        // and say so at once: a wrong delimiter or baud rate shows before any
                        // delimiter arrives.
                        let keep = delim.len() - 1;
                        let n = buf.len() - keep;
                        buf.advance(n);
                        if std::mem::replace(&mut self.discarding, true) {
                            return Some(FrameEvent::Skipped { bytes: n });
                        }
                        return Some(FrameEvent::Garbled { reason: Garble::TooLong, bytes: n });
                    }
                    return None;
                }
            }
        }
    }

    fn decode_fixed(&mut self, buf: &mut BytesMut, len: usize, header: &[u8], trailer: &[u8]) -> Option<FrameEvent> {
        if !header.is_empty() {
            if let Some(ev) = self.sync(buf, header.len(), memmem::find(buf, header)) {
                return Some(ev);
            }
        }
        if buf.len() < len {
            return None;
        }
        if !buf[..len].ends_with(trailer) {
            return Some(self.reject(buf, Garble::BadTrailer));
        }
        let candidate = Bytes::copy_from_slice(&buf[..len]);
        match self.check(candidate) {
            Ok(f) => {
                buf.advance(len);
                self.resyncing = false;
                Some(FrameEvent::Frame(f))
            }
            Err(reason) => Some(self.reject(buf, reason)),
        }
    }

    fn decode_markers(
        &mut self,
        buf: &mut BytesMut,
        start: &[u8],
        end: &[u8],
        escape: Option<u8>,
        max: usize,
    ) -> Option<FrameEvent> {
        if let Some(ev) = self.sync(buf, start.len(), memmem::find(buf, start)) {
            return Some(ev);
        }
        if buf.len() < start.len() {
            return None;
        }
        let mut out = BytesMut::new();
        let mut i = start.len();
        while i < buf.len() {
            let b = buf[i];
            if Some(b) == escape {
                if i + 1 >= buf.len() {
                    return None; // wait for the escaped byte
                }
                out.extend_from_slice(&[buf[i + 1]]);
                i += 2;
            } else if buf[i..].starts_with(end) {
                buf.advance(i + end.len());
                self.resyncing = false;
                return Some(self.checked(out.freeze(), i + end.len()));
            } else if start != end && buf[i..].starts_with(start) {
                // A new frame began before this one ended: this one was cut short.
                buf.advance(i);
                return Some(FrameEvent::Garbled { reason: Garble::BadTrailer, bytes: i });
            } else if end.len() > 1 && buf.len() - i < end.len() && end.starts_with(&buf[i..]) {
                return None; // a partial end marker: wait for the rest
            } else {
                out.extend_from_slice(&[b]);
                i += 1;
            }
            if out.len() > max {
                return Some(self.reject(buf, Garble::TooLong));
            }
        }
        None
    }

    fn decode_length_prefixed(&mut self, buf: &mut BytesMut, length: &LengthPrefixed) -> Option<FrameEvent> {
        let header = &length.header;
        if let Some(ev) = self.sync(buf, header.len(), memmem::find(buf, header)) {
            return Some(ev);
        }
        let total = length.frame_len(buf)?;
        if total < length.field_end() as i64 || total > length.max_length as i64 {
            return Some(self.reject(buf, Garble::TooLong));
        }
        let total = total as usize;
        if buf.len() < total {
            return None;
        }
        let candidate = Bytes::copy_from_slice(&buf[..total]);
        match self.check(candidate) {
            Ok(f) => {
                buf.advance(total);
                self.resyncing = false;
                Some(FrameEvent::Frame(f))
            }
            Err(reason) => Some(self.reject(buf, reason)),
        }
    }
}

impl Decoder for FrameCodec {
    type Item = FrameEvent;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<FrameEvent>, std::io::Error> {
        let FrameCodec { spec, cutter } = self;
        Ok(match spec {
            Framing::Lines(l) => cutter.decode_lines(buf, l.delimiter.as_bytes(), l.max_length),
            Framing::Fixed(f) => cutter.decode_fixed(buf, f.length, &f.header, &f.trailer),
            Framing::Markers(m) => cutter.decode_markers(buf, &m.start, &m.end, m.escape, m.max_length),
            Framing::LengthPrefixed(l) => cutter.decode_length_prefixed(buf, l),
        })
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<FrameEvent>, std::io::Error> {
        match self.decode(buf)? {
            Some(ev) => Ok(Some(ev)),
            None if buf.is_empty() => Ok(None),
            None => {
                let n = buf.len();
                buf.clear();
                Ok(Some(FrameEvent::Garbled { reason: Garble::Unframed, bytes: n }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in chunks of `chunk` bytes, as reads from a UART would deliver it.
    fn cut(spec: Framing, input: &[u8], chunk: usize) -> Vec<FrameEvent> {
        let mut codec = FrameCodec::new(spec, None);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(ev) = codec.decode(&mut buf).unwrap() {
                out.push(ev);
            }
        }
        out
    }

    fn dropped(events: &[FrameEvent]) -> usize {
        events
            .iter()
            .map(|e| match e {
                FrameEvent::Garbled { bytes, .. } | FrameEvent::Skipped { bytes } => *bytes,
                FrameEvent::Frame(_) => 0,
            })
            .sum()
    }

    fn lines(max_length: usize) -> Framing {
        Framing::Lines(Lines { delimiter: "\n".into(), max_length })
    }

    #[test]
    fn an_overlong_line_is_counted_whole_once_and_the_next_line_survives() {
        let mut input = vec![b'x'; 10_000];
        input.extend(b"\nok\n");
        for chunk in [1, 7, 64, 4096, 20_000] {
            let ev = cut(lines(80), &input, chunk);
            let garbled = ev.iter().filter(|e| matches!(e, FrameEvent::Garbled { .. })).count();
            assert_eq!(garbled, 1, "chunk {chunk}: {ev:?}");
            assert_eq!(dropped(&ev), 10_001, "chunk {chunk}: every byte of the line and its delimiter");
            assert_eq!(ev.last(), Some(&FrameEvent::Frame(Bytes::from_static(b"ok"))), "chunk {chunk}");
        }
    }

    #[test]
    fn bytes_without_any_delimiter_are_reported_before_a_delimiter_comes() {
        let ev = cut(lines(80), &[b'x'; 5_000], 512);
        assert!(matches!(ev.first(), Some(FrameEvent::Garbled { reason: Garble::TooLong, .. })), "{ev:?}");
        // All but what could still be the start of a delimiter-terminated line is counted.
        assert!(dropped(&ev) >= 5_000 - 81, "{}", dropped(&ev));
    }
}

#[cfg(test)]
mod props;
