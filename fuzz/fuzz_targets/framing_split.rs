//! Framing codecs fed the same bytes whole and cut at fuzzer-chosen points: the same frames and the
//! same counts either way, and (where a frame is its wire bytes) every byte framed or counted.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use ser2mqtt::bytes::{ByteOrder, HexBytes};
use ser2mqtt::serial::framing::{Fixed, FrameCodec, FrameEvent, Framing, LengthCounts, LengthPrefixed, Lines, Markers};
use tokio_util::codec::Decoder;

fn spec(pick: u8) -> Framing {
    match pick % 5 {
        0 => Framing::Lines(Lines { delimiter: "\r\n".into(), max_length: 40 }),
        1 => Framing::Fixed(Fixed { length: 10, header: HexBytes(vec![0xAA, 0xC0]), trailer: HexBytes(vec![0xAB]) }),
        2 => Framing::Markers(Markers { start: HexBytes(vec![0x7E]), end: HexBytes(vec![0x7E]), escape: Some(0x7D), max_length: 32 }),
        3 => Framing::Markers(Markers { start: HexBytes(b"<".to_vec()), end: HexBytes(b">\n".to_vec()), escape: None, max_length: 32 }),
        _ => Framing::LengthPrefixed(LengthPrefixed {
            header: HexBytes(vec![0x42, 0x4D]),
            length_offset: 2,
            length_width: 2,
            length_byte_order: if pick & 0x80 == 0 { ByteOrder::Big } else { ByteOrder::Little },
            length_counts: if pick & 0x40 == 0 { LengthCounts::Rest } else { LengthCounts::Frame },
            length_adjust: (pick & 0x0F) as i64 - 4,
            max_length: 40,
        }),
    }
}

/// Frames, garbled count and dropped bytes, feeding `input` in pieces of the given sizes.
fn run(spec: &Framing, input: &[u8], pieces: &[u8]) -> (Vec<Bytes>, usize, usize) {
    let mut codec = FrameCodec::new(spec.clone(), None);
    let mut buf = BytesMut::new();
    let (mut frames, mut garbled, mut dropped) = (Vec::new(), 0, 0);
    let mut tally = |ev: FrameEvent| match ev {
        FrameEvent::Frame(f) => frames.push(f),
        FrameEvent::Garbled { bytes, .. } => {
            garbled += 1;
            dropped += bytes;
        }
        FrameEvent::Skipped { bytes } => dropped += bytes,
    };
    let mut rest = input;
    let mut sizes = pieces.iter().cycle();
    while !rest.is_empty() {
        let n = if pieces.is_empty() { rest.len() } else { (*sizes.next().unwrap() as usize).clamp(1, rest.len()) };
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        while let Some(ev) = codec.decode(&mut buf).unwrap() {
            tally(ev);
        }
    }
    while let Some(ev) = codec.decode_eof(&mut buf).unwrap() {
        tally(ev);
    }
    (frames, garbled, dropped)
}

fuzz_target!(|data: &[u8]| {
    // [spec][number of piece sizes][piece sizes…][stream…]
    let Some((&pick, rest)) = data.split_first() else { return };
    let Some((&k, rest)) = rest.split_first() else { return };
    let k = (k as usize % 16).min(rest.len());
    let (pieces, input) = rest.split_at(k);
    let spec = spec(pick);
    let whole = run(&spec, input, &[]);
    assert_eq!(whole, run(&spec, input, pieces), "{spec:?}");
    if matches!(spec, Framing::Fixed(_) | Framing::LengthPrefixed(_)) {
        let framed: usize = whole.0.iter().map(|f| f.len()).sum();
        assert_eq!(framed + whole.2, input.len(), "{spec:?}: a byte neither framed nor counted");
    }
});
