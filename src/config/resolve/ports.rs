//! `ports:` → `PortSettings`: line settings, framing, checksum and decoder, each checked against
//! the others (a binary field must fit the frame).

use tokio_serial::{DataBits, StopBits};

use super::*;
use crate::serial::framing::LengthField;
use crate::serial::port::Device;

pub(super) fn resolve_port(raw: &RawPort, path: &str, gateway: &str, p: &mut Problems) -> Option<PortSettings> {
    let start = p.count();
    if !topic_name_ok(&raw.name) {
        p.add(&format!("{path}.name"), "must be non-empty and contain none of `/ + # { }`");
    }
    let device = Device::parse(&raw.device).map_err(|e| p.add(&format!("{path}.device"), e)).ok();
    if raw.baud_rate == 0 {
        p.add(&format!("{path}.baud_rate"), "must be a positive rate such as 9600 or 115200");
    }
    let data_bits = match raw.data_bits {
        5 => Some(DataBits::Five),
        6 => Some(DataBits::Six),
        7 => Some(DataBits::Seven),
        8 => Some(DataBits::Eight),
        n => {
            p.add(&format!("{path}.data_bits"), format!("{n} is not valid: use 5, 6, 7 or 8"));
            None
        }
    };
    let stop_bits = match raw.stop_bits {
        1 => Some(StopBits::One),
        2 => Some(StopBits::Two),
        n => {
            p.add(&format!("{path}.stop_bits"), format!("{n} is not valid: use 1 or 2"));
            None
        }
    };
    if raw.silence_timeout.is_zero() || raw.reopen_backoff_max.is_zero() {
        p.add(path, "`silence_timeout` and `reopen_backoff_max` must be longer than 0s");
    }
    let framing = resolve_framing(&raw.framing, &format!("{path}.framing"), p);
    let checksum = raw.checksum.as_ref().and_then(|c| c.resolve());
    let mut found = crate::settings::Problems::default();
    let decoder = raw.decoder.resolve(framing.as_ref().map(FramingSpec::max_frame), &mut found);
    place(p, &format!("{path}.decoder"), found);
    let availability_topic = render_fixed(
        &raw.availability_topic,
        &format!("{path}.availability_topic"),
        &[("gateway", gateway), ("port", &raw.name)],
        p,
    );
    if p.count() != start {
        return None;
    }
    Some(PortSettings {
        name: Arc::from(raw.name.as_str()),
        device: device?,
        baud_rate: raw.baud_rate,
        data_bits: data_bits?,
        parity: raw.parity,
        stop_bits: stop_bits?,
        flow_control: raw.flow_control,
        framing: framing?,
        checksum,
        decoder: Arc::new(decoder?),
        silence_timeout: raw.silence_timeout,
        availability_topic,
        skip_first_frames: raw.skip_first_frames,
        reopen_backoff_max: raw.reopen_backoff_max,
        fingerprint: String::new(),
    })
}

/// Frames larger than this are refused at load time: a UART frame of 64 KiB is a mistake.
const MAX_FRAME_LIMIT: usize = 65536;

fn resolve_framing(raw: &RawFraming, path: &str, p: &mut Problems) -> Option<FramingSpec> {
    let start = p.count();
    let max_ok = |max: usize, p: &mut Problems| {
        if max == 0 || max > MAX_FRAME_LIMIT {
            p.add(&format!("{path}.max_length"), format!("must be between 1 and {MAX_FRAME_LIMIT}"));
        }
    };
    let spec = match raw {
        RawFraming::Lines { delimiter, max_length } => {
            if delimiter.is_empty() {
                p.add(&format!("{path}.delimiter"), "must not be empty; write \"\\n\" or \"\\r\\n\" in double quotes");
            }
            max_ok(*max_length, p);
            FramingSpec::Lines { delimiter: delimiter.as_bytes().to_vec(), max_length: *max_length }
        }
        RawFraming::Fixed { length, header, trailer } => {
            let header = header.as_ref().map(|h| bytes(h, &format!("{path}.header"), p)).unwrap_or_default();
            let trailer = trailer.as_ref().map(|t| bytes(t, &format!("{path}.trailer"), p)).unwrap_or_default();
            if *length == 0 || *length > MAX_FRAME_LIMIT || header.len() + trailer.len() > *length {
                p.add(
                    &format!("{path}.length"),
                    format!("must be 1..={MAX_FRAME_LIMIT} and fit the header and trailer"),
                );
            }
            FramingSpec::Fixed { length: *length, header, trailer }
        }
        RawFraming::Markers { start: s, end, escape, max_length } => {
            let s = bytes(s, &format!("{path}.start"), p);
            let end = bytes(end, &format!("{path}.end"), p);
            if s.is_empty() || end.is_empty() {
                p.add(path, "`start` and `end` markers must not be empty");
            }
            max_ok(*max_length, p);
            FramingSpec::Markers { start: s, end, escape: *escape, max_length: *max_length }
        }
        RawFraming::LengthPrefixed {
            header,
            length_offset,
            length_width,
            length_byte_order,
            length_counts,
            length_adjust,
            max_length,
        } => {
            let before = p.count();
            let header = bytes(header, &format!("{path}.header"), p);
            if header.is_empty() && p.count() == before {
                p.add(
                    &format!("{path}.header"),
                    "must not be empty: the header is how frames are found again after garbage",
                );
            }
            if ![1, 2, 4].contains(length_width) {
                p.add(&format!("{path}.length_width"), format!("{length_width} is not valid: use 1, 2 or 4"));
            }
            max_ok(*max_length, p);
            FramingSpec::LengthPrefixed {
                header,
                length: LengthField {
                    offset: *length_offset,
                    width: *length_width as usize,
                    order: *length_byte_order,
                    counts: *length_counts,
                    adjust: *length_adjust,
                },
                max_length: *max_length,
            }
        }
    };
    (p.count() == start).then_some(spec)
}
