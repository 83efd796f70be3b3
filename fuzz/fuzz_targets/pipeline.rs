//! Bytes from a serial line through framing, checksum, decoder and topic map, for every kind in
//! `fuzz/pipeline.yaml`: nothing panics, and every message has a topic a broker accepts.
#![no_main]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ser2mqtt::config::{self, Config};
use ser2mqtt::decode::Reading;
use ser2mqtt::serial::framing::{FrameCodec, FrameEvent};
use tokio_util::codec::Decoder;

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        config::parse(include_str!("../pipeline.yaml"), Path::new("pipeline.yaml")).expect("pipeline.yaml is valid")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else { return };
    let cfg = config();
    let port = &cfg.ports[pick as usize % cfg.ports.len()];
    let mut codec = FrameCodec::new(port.framing.clone(), port.checksum.clone());
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(event) = codec.decode_eof(&mut buf).expect("the codec never fails the stream") {
        let FrameEvent::Frame(frame) = event else { continue };
        assert!(frame.len() <= port.framing.max_frame(), "a frame longer than the framing allows");
        let Ok(fields) = port.decoder.decode(&frame) else { continue };
        let reading = Reading { port: Arc::clone(&port.name), fields, received: chrono::Utc::now() };
        for map in cfg.maps.iter().filter(|m| *m.port == *port.name) {
            map.messages(&cfg.gateway.name, &reading, &mut out);
        }
    }
    for m in out {
        assert!(!m.topic.is_empty() && m.topic.len() <= 65_535, "topic length {}", m.topic.len());
        assert!(!m.topic.contains(['+', '#', '\0']), "a topic a broker refuses: {:?}", m.topic);
    }
});
