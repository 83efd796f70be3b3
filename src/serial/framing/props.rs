//! Property tests of the framing codecs: any split of a byte stream gives the same frames and the
//! same dropped-byte count, every input byte is either part of a frame or counted as dropped, and
//! garbage between good frames costs only the garbage.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

use super::{Fixed, FrameCodec, FrameEvent, Framing, LengthCounts, LengthPrefixed, Lines, Markers};
use crate::bytes::{ByteOrder, HexBytes};

/// What a reader makes of the events: frames in order, garbled-frame count, dropped bytes.
#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<Bytes>,
    garbled: usize,
    dropped: usize,
}

/// Feeds `input` cut at `cuts` (offsets, any order, out-of-range ones clamped), then ends the stream.
fn run(spec: &Framing, input: &[u8], cuts: &[usize]) -> Outcome {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    at.extend([0, input.len()]);
    at.sort_unstable();
    at.dedup();
    let mut codec = FrameCodec::new(spec.clone(), None);
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for w in at.windows(2) {
        buf.extend_from_slice(&input[w[0]..w[1]]);
        while let Some(ev) = codec.decode(&mut buf).unwrap() {
            events.push(ev);
        }
    }
    while let Some(ev) = codec.decode_eof(&mut buf).unwrap() {
        events.push(ev);
    }
    let mut out = Outcome { frames: Vec::new(), garbled: 0, dropped: 0 };
    for ev in events {
        match ev {
            FrameEvent::Frame(f) => out.frames.push(f),
            FrameEvent::Garbled { bytes, .. } => {
                out.garbled += 1;
                out.dropped += bytes;
            }
            FrameEvent::Skipped { bytes } => out.dropped += bytes,
        }
    }
    out
}

const PMS_HEADER: [u8; 2] = [0x42, 0x4D];

/// One spec of each kind, shaped like the sensors in SENSORS.md.
fn specs() -> Vec<Framing> {
    vec![
        Framing::Lines(Lines { delimiter: "\r\n".into(), max_length: 40 }),
        Framing::Fixed(Fixed { length: 10, header: HexBytes(vec![0xAA, 0xC0]), trailer: HexBytes(vec![0xAB]) }),
        Framing::Markers(Markers {
            start: HexBytes(vec![0x7E]),
            end: HexBytes(vec![0x7E]),
            escape: Some(0x7D),
            max_length: 32,
        }),
        Framing::Markers(Markers {
            start: HexBytes(b"<".to_vec()),
            end: HexBytes(b">\n".to_vec()),
            escape: None,
            max_length: 32,
        }),
        length_prefixed(),
    ]
}

/// PMS5003-like: `42 4D`, a big-endian length of the rest, at most 40 bytes in all.
fn length_prefixed() -> Framing {
    Framing::LengthPrefixed(LengthPrefixed {
        header: HexBytes(PMS_HEADER.to_vec()),
        length_offset: 2,
        length_width: 2,
        length_byte_order: ByteOrder::Big,
        length_counts: LengthCounts::Rest,
        length_adjust: 0,
        max_length: 40,
    })
}

/// Bytes drawn mostly from the specs' own delimiters, headers and markers, so that near-misses,
/// partial markers and bogus lengths are common rather than rare.
fn noisy_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => any::<u8>(),
        1 => Just(b'\r'),
        1 => Just(b'\n'),
        1 => Just(0xAA),
        1 => Just(0xC0),
        1 => Just(0xAB),
        1 => Just(0x7E),
        1 => Just(0x7D),
        1 => Just(0x42),
        1 => Just(0x4D),
        1 => Just(b'<'),
        1 => Just(b'>'),
    ];
    prop::collection::vec(byte, 0..max)
}

proptest! {
    /// However reads happen to cut the stream, the reader sees the same frames and counts the same.
    #[test]
    fn any_split_gives_the_same_frames_and_counts(
        input in noisy_bytes(400),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        for spec in specs() {
            let whole = run(&spec, &input, &[]);
            let split = run(&spec, &input, &cuts);
            prop_assert_eq!(&whole, &split, "{:?}", spec);
            let bytewise: Vec<usize> = (0..input.len()).collect();
            prop_assert_eq!(&whole, &run(&spec, &input, &bytewise), "{:?} fed one byte at a time", spec);
        }
    }

    /// Where a frame is its wire bytes (fixed, length-prefixed), every input byte is in a frame or
    /// counted as dropped: nothing vanishes and nothing is counted twice.
    #[test]
    fn every_byte_is_framed_or_counted(
        input in noisy_bytes(400),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        for spec in [specs()[1].clone(), length_prefixed()] {
            let out = run(&spec, &input, &cuts);
            let framed: usize = out.frames.iter().map(|f| f.len()).sum();
            prop_assert_eq!(framed + out.dropped, input.len(), "{:?}: {:?}", spec, out);
        }
    }

    /// Good frames with garbage between them: every frame survives, in order, and exactly the garbage
    /// bytes are counted as dropped.
    #[test]
    fn garbage_between_frames_costs_only_the_garbage(
        items in prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 0..30), prop::collection::vec(any::<u8>(), 0..30)),
            1..12,
        ),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        for kind in 0..4 {
            let (spec, wire, expected, garbage) = build(kind, &items);
            let out = run(&spec, &wire, &cuts);
            prop_assert_eq!(&out.frames, &expected, "{:?}", spec);
            prop_assert_eq!(out.dropped, garbage, "{:?}", spec);
        }
    }
}

/// Builds a stream of `items` (payload, garbage) for framing `kind`: returns the spec, the wire bytes,
/// the frames a reader must see and how many garbage bytes it must count.
fn build(kind: usize, items: &[(Vec<u8>, Vec<u8>)]) -> (Framing, Vec<u8>, Vec<Bytes>, usize) {
    let mut wire = Vec::new();
    let mut frames = Vec::new();
    let mut garbage = 0;
    let spec = match kind {
        0 => Framing::Lines(Lines { delimiter: "\n".into(), max_length: 40 }),
        1 => Framing::Markers(Markers {
            start: HexBytes(vec![0x7E]),
            end: HexBytes(vec![0x7E]),
            escape: Some(0x7D),
            max_length: 32,
        }),
        2 => length_prefixed(),
        _ => Framing::Fixed(Fixed { length: 8, header: HexBytes(vec![0xAA, 0xC0]), trailer: HexBytes(vec![0xAB]) }),
    };
    for (payload, junk) in items {
        match kind {
            0 => {
                // Garbage on a line-framed port is a line too long to be a reading.
                let line: Vec<u8> = payload.iter().map(|b| b'a' + b % 26).collect();
                if !line.is_empty() {
                    wire.extend(&line);
                    wire.push(b'\n');
                    frames.push(Bytes::from(line));
                }
                if !junk.is_empty() {
                    let long = vec![b'#'; 41 + junk.len()];
                    wire.extend(&long);
                    wire.push(b'\n');
                    garbage += long.len() + 1;
                }
            }
            1 => {
                // HDLC-like: 7E, payload with 7E and 7D escaped, 7E; garbage holds no 7E.
                let junk: Vec<u8> = junk.iter().copied().filter(|&b| b != 0x7E).collect();
                wire.extend(&junk);
                garbage += junk.len();
                wire.push(0x7E);
                for &b in payload {
                    if b == 0x7E || b == 0x7D {
                        wire.push(0x7D);
                    }
                    wire.push(b);
                }
                wire.push(0x7E);
                frames.push(Bytes::from(payload.clone()));
            }
            2 => {
                // Garbage without 0x42 cannot look like a header.
                let junk: Vec<u8> = junk.iter().copied().filter(|&b| b != 0x42).collect();
                wire.extend(&junk);
                garbage += junk.len();
                let mut frame = PMS_HEADER.to_vec();
                frame.extend((payload.len() as u16).to_be_bytes());
                frame.extend(payload);
                wire.extend(&frame);
                frames.push(Bytes::from(frame));
            }
            _ => {
                let junk: Vec<u8> = junk.iter().copied().filter(|&b| b != 0xAA).collect();
                wire.extend(&junk);
                garbage += junk.len();
                let mut frame = vec![0xAA, 0xC0];
                frame.extend(payload.iter().chain([0u8; 5].iter()).take(5));
                frame.push(0xAB);
                wire.extend(&frame);
                frames.push(Bytes::from(frame));
            }
        }
    }
    (spec, wire, frames, garbage)
}
