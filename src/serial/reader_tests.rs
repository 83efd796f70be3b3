//! `read_frames` on paused time against an in-memory device (`tokio::io::duplex`): silence and
//! availability to the second, and warnings about bad input that name the likely cause.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::*;
use crate::decode::settings::DecoderSettings;
use crate::serial::poll::PollSettings;
use crate::serial::port::{Device, FlowControl, Parity};
use crate::serial::request::{PortRequest, ReplySpec};

const SILENCE: Duration = Duration::from_secs(10);

pub(crate) fn port(framing: &str, decoder: &str) -> PortSettings {
    let framing: Framing = serde_yaml::from_str(framing).unwrap();
    let decoder: DecoderSettings = serde_yaml::from_str(decoder).unwrap();
    let mut problems = crate::settings::Problems::default();
    let decoder = decoder.resolve(Some(framing.max_frame()), &mut problems).unwrap();
    PortSettings {
        name: Arc::from("p"),
        device: Device::Tcp { host: "test".into(), port: 1 },
        baud_rate: 9600,
        data_bits: tokio_serial::DataBits::Eight,
        parity: Parity::None,
        stop_bits: tokio_serial::StopBits::One,
        flow_control: FlowControl::None,
        framing,
        checksum: None,
        decoder: Arc::new(decoder),
        silence_timeout: SILENCE,
        availability_topic: "gw/p/availability".into(),
        live_topic: "gw/status/live/p".into(),
        skip_first_frames: 0,
        reopen_backoff_max: Duration::from_secs(30),
        poll: None,
        commands: Vec::new(),
        modbus: None,
        transforms: Vec::new(),
        ignore: Vec::new(),
        rs485: None,
        fingerprint: String::new(),
    }
}

fn text_port() -> PortSettings {
    port("type: lines\ndelimiter: \"\\n\"\nmax_length: 80", "type: key_value\nkeys: [t]")
}

/// What the test sees of a running reader: its events, counters and log lines.
struct Running {
    device: tokio::io::DuplexStream,
    requests: mpsc::Sender<PortRequest>,
    events: mpsc::Receiver<PortEvent>,
    stats: Arc<PortStats>,
    log: Arc<Mutex<Vec<u8>>>,
    _log_guard: tracing::subscriber::DefaultGuard,
    shutdown: CancellationToken,
}

#[derive(Clone)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn run(port: PortSettings) -> Running {
    let log = Arc::new(Mutex::new(Vec::new()));
    let writer = Log(log.clone());
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    let guard = tracing::subscriber::set_default(subscriber);
    let (device, ours) = tokio::io::duplex(64 * 1024);
    let (tx, events) = mpsc::channel(64);
    let stats = Arc::new(PortStats::default());
    let shutdown = CancellationToken::new();
    let (s, c) = (stats.clone(), shutdown.clone());
    let (requests, mut requests_rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let (r, w) = tokio::io::split(ours);
        let io = Channels { tx: &tx, stats: &s, shutdown: &c, requests: &mut requests_rx };
        read_frames(r, w, &port, io).await
    });
    Running { device, requests, events, stats, log, _log_guard: guard, shutdown }
}

impl Running {
    async fn next(&mut self) -> PortEvent {
        self.events.recv().await.expect("reader ended")
    }

    fn warnings(&self) -> Vec<String> {
        let text = String::from_utf8(self.log.lock().unwrap().clone()).unwrap();
        text.lines().filter(|l| l.contains("WARN")).map(String::from).collect()
    }

    fn count(&self, c: &std::sync::atomic::AtomicU64) -> u64 {
        let _ = &self.stats;
        c.load(Ordering::Relaxed)
    }
}

fn online(ev: &PortEvent) -> Option<bool> {
    match ev {
        PortEvent::Availability { online, .. } => Some(*online),
        PortEvent::Reading(_) | PortEvent::Message(_) | PortEvent::Live(_) => None,
    }
}

#[tokio::test(start_paused = true)]
async fn silence_marks_the_port_offline_after_exactly_the_timeout() {
    let mut r = run(text_port());
    r.device.write_all(b"t=21.5\n").await.unwrap();
    assert_eq!(online(&r.next().await), Some(true));
    assert!(matches!(r.next().await, PortEvent::Reading(_)));
    let quiet = Instant::now();
    assert_eq!(online(&r.next().await), Some(false));
    assert_eq!(quiet.elapsed(), SILENCE);
    assert!(r.warnings().iter().any(|w| w.contains("no valid frame within the silence timeout")), "{:?}", r.warnings());
    // The next frame brings it back.
    r.device.write_all(b"t=21.6\n").await.unwrap();
    assert_eq!(online(&r.next().await), Some(true));
    r.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn frames_inside_the_timeout_keep_the_port_online() {
    let mut r = run(text_port());
    for i in 0..20 {
        r.device.write_all(format!("t={i}\n").as_bytes()).await.unwrap();
        tokio::time::sleep(SILENCE - Duration::from_secs(1)).await;
    }
    let mut seen = Vec::new();
    while let Ok(ev) = r.events.try_recv() {
        seen.push(online(&ev));
    }
    assert_eq!(seen.iter().filter(|e| e.is_some()).count(), 1, "only the first `online`: {seen:?}");
    assert_eq!(seen.len(), 21);
    r.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_wrong_delimiter_is_warned_about_at_once_and_every_byte_is_counted() {
    let mut r = run(text_port());
    // The sensor ends its lines with CR only; the config says LF.
    let line = b"t=21.5\r";
    let mut fed = 0;
    while fed < 5_000 {
        r.device.write_all(line).await.unwrap();
        fed += line.len();
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let warnings = r.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("more than 80 bytes without the delimiter \"\\n\": wrong delimiter or baud rate?"),
        "{warnings:?}"
    );
    assert_eq!(r.count(&r.stats.garbled), 1, "one garbled run");
    // The run ends at the next LF; then a good line.
    r.device.write_all(b"\nt=22\n").await.unwrap();
    assert_eq!(online(&r.next().await), Some(true));
    assert!(matches!(r.next().await, PortEvent::Reading(_)));
    assert_eq!(r.count(&r.stats.bytes_dropped), fed as u64 + 1, "every byte that did not become a frame");
    assert_eq!(r.count(&r.stats.frames), 1);
    r.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn bytes_at_the_wrong_baud_rate_are_warned_about_once_per_period() {
    let mut r = run(text_port());
    // What a 9600 baud line read at 4800 looks like: high bytes, framing errors, the odd LF.
    let noise: Vec<u8> =
        (0..2_000u32).map(|i| if i % 60 == 59 { b'\n' } else { 0x80 | (i * 37 % 128) as u8 }).collect();
    r.device.write_all(&noise).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let warnings = r.warnings();
    assert_eq!(warnings.len(), 1, "rate-limited to one per {WARN_EVERY:?}: {warnings:?}");
    assert!(warnings[0].contains("the frame is not text: wrong baud rate?"), "{warnings:?}");
    let errors = r.count(&r.stats.ignored);
    assert_eq!(errors, 2_000 / 60, "each line is counted (as ignored: it matches no key)");
    // The next period gets one more warning, counting the lines held back since the first one.
    tokio::time::sleep(WARN_EVERY).await;
    r.device.write_all(&noise).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let warnings = r.warnings();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[1].contains(&format!("({errors} since the last warning)")), "{warnings:?}");
    assert!(r.events.try_recv().is_err(), "nothing published from noise");
    r.shutdown.cancel();
}

/// An MH-Z19B as the datasheet describes it: 9-byte frames `FF 86 …` with a two's-complement sum.
fn mhz19b_port() -> PortSettings {
    let mut p =
        port("type: fixed\nlength: 9\nheader: \"FF 86\"", "type: binary\nfields: [{ name: co2, at: 2, type: u16 }]");
    p.checksum = crate::serial::checksum::ChecksumSettings {
        kind: crate::serial::checksum::ChecksumKind::Sum8Neg,
        start: 1,
        end: None,
        at: None,
        byte_order: crate::bytes::ByteOrder::Big,
        encoding: crate::serial::checksum::ChecksumEncoding::Binary,
        required: true,
        strip: false,
    }
    .resolve();
    p.poll = Some(serde_yaml::from_str::<PollSettings>("every: 5s\nrequest: \"FF 01 86 00 00 00 00 00 79\"").unwrap());
    p.silence_timeout = Duration::from_secs(3600);
    p
}

const READ_CO2: [u8; 9] = [0xFF, 0x01, 0x86, 0, 0, 0, 0, 0, 0x79];

fn co2_answer(ppm: u16) -> Vec<u8> {
    let mut f = vec![0xFF, 0x86, (ppm >> 8) as u8, ppm as u8, 0x40, 0, 0, 0];
    f.push(crate::serial::checksum::ChecksumKind::Sum8Neg.compute(&f[1..]) as u8);
    f
}

impl Running {
    /// The next `n` bytes the port wrote to the device.
    async fn written(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        self.device.read_exact(&mut buf).await.unwrap();
        buf
    }
}

#[tokio::test(start_paused = true)]
async fn a_polled_sensor_is_asked_every_period_and_goes_offline_after_three_silent_polls() {
    let mut r = run(mhz19b_port());
    let start = Instant::now();
    for (i, ppm) in [412u16, 415].into_iter().enumerate() {
        assert_eq!(r.written(9).await, READ_CO2, "poll {i}");
        assert_eq!(start.elapsed(), Duration::from_secs(5 * i as u64), "polls are `every` apart");
        r.device.write_all(&co2_answer(ppm)).await.unwrap();
        if i == 0 {
            assert_eq!(online(&r.next().await), Some(true));
        }
        match r.next().await {
            PortEvent::Reading(reading) => assert_eq!(reading.fields[0].1, crate::decode::Value::Int(ppm as i64)),
            other => panic!("{other:?}"),
        }
    }
    // The sensor stops answering: each poll is tried twice (retries: 1), and the third silent poll
    // marks the port offline.
    for _ in 0..6 {
        assert_eq!(r.written(9).await, READ_CO2);
    }
    assert_eq!(online(&r.next().await), Some(false));
    assert_eq!(r.count(&r.stats.polls_unanswered), 3);
    assert_eq!(r.count(&r.stats.reply_timeouts), 6);
    assert!(r.warnings().iter().any(|w| w.contains("did not answer 3 polls in a row")), "{:?}", r.warnings());
    // It answers again: online.
    assert_eq!(r.written(9).await, READ_CO2);
    r.device.write_all(&co2_answer(420)).await.unwrap();
    assert_eq!(online(&r.next().await), Some(true));
    r.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_command_waits_for_the_poll_in_flight_and_gets_its_reply_or_a_timeout() {
    let mut r = run(mhz19b_port());
    assert_eq!(r.written(9).await, READ_CO2);
    // While the poll waits for its answer, a command comes ("read now", answered like a poll): it
    // is written only after the poll's answer.
    let read_now = bytes::Bytes::from_static(&READ_CO2);
    let reply = ReplySpec { timeout: Duration::from_secs(1), starts_with: bytes::Bytes::from_static(&[0xFF, 0x86]) };
    let (req, done) = PortRequest::new(read_now.clone(), Some(reply.clone()));
    r.requests.send(req).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut probe = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(1), r.device.read(&mut probe)).await.is_err(),
        "nothing written while the poll waits"
    );
    r.device.write_all(&co2_answer(500)).await.unwrap();
    assert_eq!(r.written(9).await, read_now, "then the command, whole");
    let ack = co2_answer(501);
    r.device.write_all(&ack).await.unwrap();
    assert_eq!(done.await.unwrap().unwrap().as_deref(), Some(&ack[..]));
    // No answer this time: an error after the reply's timeout, and the port carries on.
    let (req, done) = PortRequest::new(read_now.clone(), Some(reply));
    r.requests.send(req).await.unwrap();
    assert_eq!(r.written(9).await, read_now);
    let asked = Instant::now();
    assert_eq!(done.await.unwrap(), Err("no reply within 1s".to_string()));
    assert_eq!(asked.elapsed(), Duration::from_secs(1));
    r.shutdown.cancel();
}
