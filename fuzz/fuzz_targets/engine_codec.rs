//! What every LAN client's bytes meet first inside the broker engine: rmqtt's MQTT codec (protocol
//! detection, 3.1.1 and 5), fed arbitrary bytes in arbitrary chunks, must return packets or errors
//! and never panic. Not our code, but the release build's panic strategy rests on it
//! (docs/architecture.md, "The release profile").
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use rmqtt_codec::{v3, v5, MqttCodec, MqttPacket};
use tokio_util::codec::Decoder;

/// The engine's limit is the front door's `max_packet_size`; a small one here reaches the size
/// checks often.
const MAX_PACKET: u32 = 4096;

fuzz_target!(|input: (u8, u8, &[u8])| {
    let (which, chunk, bytes) = input;
    let mut codec = match which % 3 {
        0 => MqttCodec::Version(VersionCodec),
        1 => MqttCodec::V3(v3::Codec::new(MAX_PACKET)),
        _ => MqttCodec::V5(v5::Codec::new(MAX_PACKET, MAX_PACKET)),
    };
    // As a socket delivers them: in chunks, decoding after each until the codec wants more.
    let chunk = chunk.max(1) as usize;
    let mut buf = BytesMut::new();
    for piece in bytes.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                // Detection reads the CONNECT without consuming it; the engine then decodes it, and
                // everything after, with the codec of the detected version.
                Ok(Some((MqttPacket::Version(v), _))) => {
                    codec = match v {
                        ProtocolVersion::MQTT3 => MqttCodec::V3(v3::Codec::new(MAX_PACKET)),
                        ProtocolVersion::MQTT5 => MqttCodec::V5(v5::Codec::new(MAX_PACKET, MAX_PACKET)),
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return, // the engine closes the connection
            }
        }
    }
});
