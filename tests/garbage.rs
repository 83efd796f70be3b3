//! Garbled input between good frames, for every framing kind and checksum: only the garbled frames
//! are lost, the good ones arrive in order, and the drops are counted.

use std::sync::atomic::Ordering;

use rumqttc::QoS;
use ser2mqtt::serial::checksum::ChecksumKind;
use ser2mqtt::simulate::{SensorKind, Simulator};

use crate::support::*;

/// Writes `stream` through a pty into a gateway running `yaml` (device filled in) and returns the
/// payloads received on `x/#`, plus the port's garbled and decode-error counters.
async fn feed(yaml: &str, stream: &[u8], expect: usize) -> (Vec<String>, u64, u64) {
    let mut pty = pty();
    let yaml = yaml.replace("DEVICE", &pty.path.display().to_string());
    let gw = start(config_from(&yaml)).await;
    let mut sub = subscribe(addr(&gw), &[("x/#", QoS::AtLeastOnce)]).await;
    // In small pieces, as a UART delivers: frames split across reads must still be found.
    for chunk in stream.chunks(7) {
        pty.write(chunk).await;
    }
    let got: Vec<String> = sub.take_on("x/", expect).await.into_iter().map(|g| g.payload).collect();
    let extra = sub.drain_on("x/", std::time::Duration::from_millis(300)).await;
    assert!(extra.is_empty(), "more readings than good frames: {extra:?}");
    let s = &gw.stats()[0].1;
    let counts = (s.garbled.load(Ordering::Relaxed), s.decode_errors.load(Ordering::Relaxed));
    gw.shutdown().await;
    (got, counts.0, counts.1)
}

const NMEA_PORT: &str = r#"
ports:
  - name: gps
    device: DEVICE
    framing: { type: lines, delimiter: "\r\n", max_length: 82 }
    checksum: { type: nmea }
    decoder: { type: regex, patterns: ['^\$GPGGA,(?P<time>[^,]*),'], types: { time: string } }
maps:
  - { port: gps, topic: "x/{field}" }
"#;

#[tokio::test]
async fn lines_bad_checksum_overlong_line_and_noise_lose_only_those_lines() {
    let good = |t: &str| {
        ser2mqtt::simulate::nmea_sentence(&format!("GPGGA,{t},4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"))
    };
    let mut s = Vec::new();
    s.extend(good("000001"));
    s.extend(b"$GPGGA,000002,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*00\r\n"); // bad checksum
    s.extend(good("000003"));
    s.extend(vec![b'Z'; 300]); // line noise far longer than any sentence
    s.extend(b"\r\n");
    s.extend(good("000004"));
    s.extend(b"\x00\xff\xfe garbage without checksum\r\n");
    s.extend(good("000005"));
    let (got, garbled, _) = feed(NMEA_PORT, &s, 4).await;
    assert_eq!(got, ["000001", "000003", "000004", "000005"]);
    assert_eq!(garbled, 3, "bad checksum, over-long line, missing checksum");
}

#[tokio::test]
async fn fixed_length_with_header_resynchronises_after_garbage_and_bad_sums() {
    let yaml = r#"
ports:
  - name: d
    device: DEVICE
    framing: { type: fixed, length: 10, header: [0xAA, 0xC0], trailer: [0xAB] }
    checksum: { type: sum8, start: 2, end: 8, at: 8 }
    decoder: { type: binary, fields: [{ name: pm2_5, at: 2, type: u16, byte_order: little }] }
maps:
  - { port: d, topic: "x/{field}" }
"#;
    let frame = |v: u16| {
        let [a, b] = v.to_le_bytes();
        let mut f = vec![0xAA, 0xC0, a, b, 0, 0, 0xA1, 0x60];
        f.push(ChecksumKind::Sum8.compute(&f[2..8]) as u8);
        f.push(0xAB);
        f
    };
    let mut s = vec![0x13, 0x37, 0xAA]; // noise, including a lone header byte
    s.extend(frame(1));
    let mut bad = frame(2);
    bad[8] ^= 0xFF; // checksum broken
    s.extend(bad);
    s.extend(frame(3));
    s.extend(&frame(4)[..6]); // truncated: its tail is replaced by the next frame
    s.extend(frame(5));
    s.extend(frame(6));
    let (got, garbled, _) = feed(yaml, &s, 4).await;
    assert_eq!(got, ["1", "3", "5", "6"]);
    assert!(garbled >= 3, "noise, bad checksum and truncated frame counted: {garbled}");
}

#[tokio::test]
async fn length_prefixed_pms5003_survives_a_corrupted_length_and_a_flipped_bit() {
    let yaml = r#"
ports:
  - name: air
    device: DEVICE
    framing: { type: length_prefixed, header: "42 4D", length_offset: 2, length_width: 2, max_length: 64 }
    checksum: { type: sum16 }
    decoder: { type: binary, fields: [{ name: pm2_5, at: 12, type: u16 }] }
maps:
  - { port: air, topic: "x/{field}" }
"#;
    let mut sim = Simulator::new(SensorKind::Pms5003, 3);
    let frames: Vec<Vec<u8>> = (0..5).map(|_| sim.next_frame()).collect();
    let pm = |f: &Vec<u8>| u16::from_be_bytes([f[12], f[13]]).to_string();
    let mut s = frames[0].clone();
    let mut huge = frames[1].clone();
    huge[2] = 0xFF; // length field says 65k: impossible
    s.extend(huge);
    let mut flipped = frames[2].clone();
    flipped[12] ^= 0x04; // a bit error in the data: sum no longer matches
    s.extend(flipped);
    s.extend(b"\x42\x4D"); // a header with nothing after it, then a good frame
    s.extend(&frames[3]);
    s.extend(&frames[4]);
    let (got, garbled, _) = feed(yaml, &s, 3).await;
    assert_eq!(got, [pm(&frames[0]), pm(&frames[3]), pm(&frames[4])]);
    assert!(garbled >= 2, "{garbled}");
}

#[tokio::test]
async fn markers_with_escape_and_crc16_modbus() {
    // A SLIP-like framing: 0x7E … 0x7E, 0x7D escapes the next byte; CRC-16/MODBUS, low byte first.
    let yaml = r#"
ports:
  - name: m
    device: DEVICE
    framing: { type: markers, start: [0x7E], end: [0x7F], escape: 0x7D, max_length: 32 }
    checksum: { type: crc16_modbus, byte_order: little }
    decoder: { type: binary, fields: [{ name: v, at: 0, type: u16 }] }
maps:
  - { port: m, topic: "x/{field}" }
"#;
    let frame = |v: u16| {
        let mut body = v.to_be_bytes().to_vec();
        let crc = ChecksumKind::named("crc-16/modbus").unwrap().compute(&body) as u16;
        body.extend(crc.to_le_bytes());
        let mut f = vec![0x7E];
        for b in body {
            if (0x7D..=0x7F).contains(&b) {
                f.push(0x7D);
            }
            f.push(b);
        }
        f.push(0x7F);
        f
    };
    let mut s = b"junk".to_vec();
    s.extend(frame(0x7E7F)); // needs escaping
    let mut bad = frame(2);
    let n = bad.len();
    bad[n - 2] ^= 1;
    s.extend(bad);
    s.extend(&frame(3)[..3]); // cut short by the next start marker
    s.extend(frame(4));
    s.extend(vec![0x7E; 1]);
    s.extend(vec![0x11; 40]); // over-long
    s.extend(frame(5));
    let (got, garbled, _) = feed(yaml, &s, 3).await;
    assert_eq!(got, [0x7E7F.to_string(), "4".into(), "5".into()]);
    assert!(garbled >= 3, "{garbled}");
}

#[tokio::test]
async fn catalogue_crcs_old_names_and_xor_accept_good_and_drop_bad_frames() {
    // Old names (aliases), catalogue names in either case (Sensirion's CRC-8/NRSC-5, a 3-byte CRC).
    for kind in ["crc8", "crc16_ccitt", "crc16_xmodem", "crc32", "xor", "crc-8/nrsc-5", "CRC-24/OPENPGP"] {
        let algo = ChecksumKind::named(kind).unwrap();
        let yaml = format!(
            r#"
ports:
  - name: c
    device: DEVICE
    framing: {{ type: fixed, length: {len}, header: [0x55] }}
    checksum: {{ type: {kind}, start: 1 }}
    decoder: {{ type: binary, fields: [{{ name: v, at: 1, type: u16 }}] }}
maps:
  - {{ port: c, topic: "x/{{field}}" }}
"#,
            len = 3 + algo.width()
        );
        let frame = |v: u16| {
            let mut f = vec![0x55];
            f.extend(v.to_be_bytes());
            let c = algo.compute(&f[1..]);
            f.extend(&c.to_be_bytes()[4 - algo.width()..]);
            f
        };
        let mut s = frame(10);
        let mut bad = frame(11);
        bad[2] ^= 0x10;
        s.extend(bad);
        s.extend(frame(12));
        let (got, garbled, _) = feed(&yaml, &s, 2).await;
        assert_eq!(got, ["10", "12"], "{kind}");
        assert!(garbled >= 1, "{kind}");
    }
}

#[tokio::test]
async fn json_decoder_counts_undecodable_lines_and_keeps_going() {
    let yaml = r#"
ports:
  - name: j
    device: DEVICE
    framing: { type: lines }
    decoder: { type: json, fields: { t: /t, h: /sensor/h } }
maps:
  - { port: j, topic: "x/{field}" }
"#;
    let s = b"{\"t\":21.5,\"sensor\":{\"h\":48}}\n{\"t\":21.6,\n{\"t\":null,\"sensor\":{\"h\":49}}\n";
    let (got, garbled, decode_errors) = feed(yaml, s, 3).await;
    assert_eq!(got, ["21.5", "48", "49"]);
    assert_eq!((garbled, decode_errors), (0, 1));
}

#[tokio::test]
async fn a_stripped_checksum_leaves_the_decoder_a_clean_json_line() {
    let yaml = r#"
ports:
  - name: j
    device: DEVICE
    framing: { type: lines }
    checksum: { type: xor, encoding: hex, strip: true }
    decoder: { type: json, fields: { t: /t } }
maps:
  - { port: j, topic: "x/{field}" }
"#;
    let line = |t: &str| {
        let json = format!(r#"{{"t":{t}}}"#);
        format!("{json}{:02X}\n", ChecksumKind::Xor.compute(json.as_bytes())).into_bytes()
    };
    let mut s = line("21.5");
    s.extend(b"{\"t\":99}00\n"); // wrong checksum: dropped, not decoded
    s.extend(line("22"));
    let (got, garbled, decode_errors) = feed(yaml, &s, 2).await;
    assert_eq!(got, ["21.5", "22"]);
    assert_eq!((garbled, decode_errors), (1, 0));
}
