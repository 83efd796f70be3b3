//! One serial port's task: open the device, read frames, decode them into readings, report
//! availability, and reopen with capped exponential backoff when the device is missing or fails.
//!
//! Back pressure, not drops: when the publisher is behind, the reader waits for room in the channel and
//! stops reading meanwhile, so the bytes wait in the kernel's tty buffer (and, with flow control, in
//! the device) as they would for any program that reads only as fast as it can use the data. A
//! reading that was framed and decoded is never dropped inside the gateway; `publisher_waits` counts
//! how often a reader had to wait.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::checksum::Checksum;
use super::framing::Framing;
use super::poll::PollSettings;
use super::reader::{availability, read_frames, Channels};
use super::request::PortRequest;
use crate::command::Command;
use crate::decode::FrameDecoder;
use crate::decode::Reading;

/// One serial port, resolved.
#[derive(Debug, Clone)]
pub struct PortSettings {
    pub name: Arc<str>,
    pub device: Device,
    pub baud_rate: u32,
    pub data_bits: tokio_serial::DataBits,
    pub parity: Parity,
    pub stop_bits: tokio_serial::StopBits,
    pub flow_control: FlowControl,
    pub framing: Framing,
    pub checksum: Option<Checksum>,
    pub decoder: Arc<FrameDecoder>,
    pub silence_timeout: Duration,
    /// Rendered: `{gateway}` and `{port}` filled in.
    pub availability_topic: String,
    /// `{status_topic}/live/{port}`: each frame and what became of it, while `ser2mqtt tap` asks.
    pub live_topic: String,
    pub skip_first_frames: u32,
    pub reopen_backoff_max: Duration,
    /// Requests written every `poll.every`, for sensors that answer only when asked.
    pub poll: Option<PollSettings>,
    /// Commands MQTT clients may send to the device, each on its own topic.
    pub commands: Vec<Arc<Command>>,
    /// A Modbus RTU bus: polled by `modbus::poll_bus` instead of read as a byte stream (`framing`
    /// and `decoder` are then unused).
    pub modbus: Option<Arc<crate::modbus::ModbusPort>>,
    /// Applied to each frame's fields, in order, before maps see them.
    pub transforms: Vec<crate::transform::Transform>,
    /// Frames matching one of these are counted as `ignored` and not decoded.
    pub ignore: Vec<regex::bytes::Regex>,
    /// The kernel's RS-485 mode, for a UART whose RTS drives the transceiver's direction.
    pub rs485: Option<super::rs485::Rs485Settings>,
    /// Identifies the port's configuration as written; a reload restarts the port only if it changed.
    pub fingerprint: String,
}

impl PortSettings {
    /// Every field this port's readings can carry.
    pub fn field_names(&self) -> Vec<String> {
        match &self.modbus {
            Some(m) => m.settings.field_names(),
            None => self.decoder.field_names(),
        }
    }

    /// The fields of the frames in which `field` is `value` (a map's `when`).
    pub fn field_names_where(&self, field: &str, value: &str) -> Vec<String> {
        match &self.modbus {
            Some(m) if field == "slave" => {
                let slave = m.settings.slaves.iter().zip(&m.plan).find(|(_, plan)| *plan.name == *value);
                let registers = slave.into_iter().flat_map(|(s, _)| s.registers.iter().map(|r| r.name.clone()));
                std::iter::once("slave".to_string()).chain(registers).collect()
            }
            Some(m) => m.settings.field_names(),
            None => self.decoder.field_names_where(field, value),
        }
    }

    /// Every value `field` can take, where the configuration says (a Modbus bus's slave names).
    pub fn values_of(&self, field: &str) -> Option<Vec<String>> {
        match &self.modbus {
            Some(m) if field == "slave" => Some(m.plan.iter().map(|s| s.name.to_string()).collect()),
            _ => None,
        }
    }

    /// Whether `name` is always a number.
    pub fn numeric(&self, name: &str) -> bool {
        match &self.modbus {
            Some(_) => name != "slave",
            // A transformed field is a number whenever the transform applied (it leaves text alone).
            None => self.decoder.numeric(name) || self.transforms.iter().any(|t| t.field == name),
        }
    }
}

/// A port's `parity:`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    #[default]
    None,
    Odd,
    Even,
}

/// A port's `flow_control:` (software: XON/XOFF; hardware: RTS/CTS).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FlowControl {
    #[default]
    None,
    Software,
    Hardware,
}

/// What a port task sends to the publisher.
#[derive(Debug)]
pub enum PortEvent {
    Reading(Reading),
    /// The port's availability topic should now say `online` (true) or `offline`.
    Availability {
        port: Arc<str>,
        topic: String,
        online: bool,
    },
    /// A message to publish as it is (a command's result), locally and upstream if a rule takes it.
    Message(crate::topic_map::OutMessage),
    /// A frame described for `ser2mqtt tap`: published locally only, never queued or forwarded.
    Live(crate::topic_map::OutMessage),
}

/// Counters for one port, shared with the stats publisher.
#[derive(Debug, Default, Serialize)]
pub struct PortStats {
    /// What the port's availability topic last said.
    pub online: std::sync::atomic::AtomicBool,
    /// Until when (unix ms) each frame is also described on the port's live topic (`ser2mqtt tap`).
    #[serde(skip)]
    pub live_until: std::sync::atomic::AtomicI64,
    pub frames: AtomicU64,
    /// Frames or byte runs dropped by framing: unframed bytes, over-long frames, bad checksums.
    pub garbled: AtomicU64,
    pub bytes_dropped: AtomicU64,
    pub decode_errors: AtomicU64,
    /// Frames no decoder pattern claims or an `ignore` rule matches (a GPS's GSV sentences): not errors.
    pub ignored: AtomicU64,
    /// Times this reader waited for the publisher (readings were held back, not dropped).
    pub publisher_waits: AtomicU64,
    pub opens: AtomicU64,
    pub open_failures: AtomicU64,
    /// Requests written to the device: commands, polls and their retries.
    pub writes: AtomicU64,
    /// Requests whose reply did not come within its timeout (each retry counts).
    pub reply_timeouts: AtomicU64,
    /// Polls left unanswered after their retries.
    pub polls_unanswered: AtomicU64,
    /// Per slave, on a Modbus port.
    #[serde(skip_serializing_if = "crate::modbus::BusCounters::is_empty")]
    pub modbus: crate::modbus::BusCounters,
}

pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// First backoff after a failed open; doubles up to the port's `reopen_backoff_max`.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// A port that keeps failing to open is mentioned again this often (the first failure of each kind
/// is logged at once): often enough to be seen in `journalctl -f`, rare enough not to flood it.
const FAILING_SUMMARY: Duration = Duration::from_secs(600);

/// Runs the port until `shutdown`; returns only then (or when the publisher is gone).
pub async fn run_port(
    port: PortSettings,
    tx: mpsc::Sender<PortEvent>,
    stats: Arc<PortStats>,
    shutdown: CancellationToken,
    mut requests: mpsc::Receiver<PortRequest>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut last_error: Option<String> = None;
    // Since when the port has been failing to open, and when that was last summarised.
    let mut failing: Option<(Instant, Instant)> = None;
    loop {
        match open(&port).await {
            Ok(device) => {
                bump(&stats.opens, 1);
                let resolved = match &port.device {
                    Device::Serial(path) => {
                        std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()).display().to_string()
                    }
                    tcp => tcp.to_string(),
                };
                tracing::info!(port = %port.name, device = %port.device, %resolved, "serial port opened");
                last_error = None;
                failing = None;
                backoff = FIRST_BACKOFF;
                let io = Channels { tx: &tx, stats: &stats, shutdown: &shutdown, requests: &mut requests };
                let result = match (device, &port.modbus) {
                    (Opened::Serial(s), Some(m)) => crate::modbus::poll_bus(s, &port, &m.plan, &m.settings, io).await,
                    (Opened::Tcp(t), Some(m)) => crate::modbus::poll_bus(t, &port, &m.plan, &m.settings, io).await,
                    (Opened::Serial(s), None) => read_frames(&s, &s, &port, io).await,
                    (Opened::Tcp(t), None) => {
                        let (r, w) = t.into_split();
                        read_frames(r, w, &port, io).await
                    }
                };
                // The stream (and its file descriptor) is dropped here, before any retry.
                match result {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(port = %port.name, device = %port.device, error = %e, "serial port lost; reopening")
                    }
                }
            }
            Err(e) => {
                bump(&stats.open_failures, 1);
                let msg = e.to_string();
                // Say it once per kind of failure, not every retry.
                if last_error.as_deref() != Some(&msg) {
                    let advice = match &port.device {
                        Device::Serial(path) => crate::advice::device(path, e.kind()).map(|a| format!("; {a}")),
                        Device::Tcp { .. } => None,
                    }
                    .unwrap_or_default();
                    tracing::warn!(port = %port.name, device = %port.device, error = %msg,
                        "cannot open serial port `{}` ({}): {msg}{advice}; retrying with backoff",
                        port.name, port.device);
                    last_error = Some(msg);
                }
                let now = Instant::now();
                match &mut failing {
                    None => {
                        failing = Some((now, now));
                        // A port that never opened is as offline as one that was lost (which
                        // says so when its reader returns).
                        if stats.opens.load(Ordering::Relaxed) == 0 && !availability(&tx, &port, &stats, false).await {
                            return;
                        }
                    }
                    Some((since, said)) if now.duration_since(*said) >= FAILING_SUMMARY => {
                        *said = now;
                        let tries = stats.open_failures.load(Ordering::Relaxed);
                        tracing::warn!(port = %port.name, device = %port.device, error = %e,
                            "serial port `{}` ({}) still cannot be opened after {:.0?} ({tries} attempts in all): {e}",
                            port.name, port.device, since.elapsed());
                    }
                    Some(_) => {}
                }
            }
        }
        let wait = tokio::time::sleep(backoff);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = &mut wait => break,
                // Commands meanwhile fail at once, saying why, rather than waiting for a device.
                Some(req) = requests.recv() => req.answer(Err(format!("port `{}` is not open ({})", port.name, port.device))),
            }
        }
        backoff = (backoff * 2).min(port.reopen_backoff_max);
    }
}

/// Where a port's bytes come from, decided once when the configuration is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    /// A serial device node or a link to one (`/dev/serial/by-id/…`, followed at every open).
    Serial(PathBuf),
    /// A serial device server (ser2net, ESP-Link, Moxa NPort…) in raw TCP mode: `tcp://HOST:PORT`.
    Tcp { host: String, port: u16 },
}

impl Device {
    /// Reads a port's `device:`; the error says what a `tcp://` address needs.
    pub fn parse(device: &std::path::Path) -> Result<Device, String> {
        let Some(addr) = device.to_str().and_then(|d| d.strip_prefix("tcp://")) else {
            return Ok(Device::Serial(device.to_path_buf()));
        };
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => match port.parse::<u16>() {
                Ok(port) => Ok(Device::Tcp { host: host.to_string(), port }),
                Err(_) => Err(format!("`tcp://{addr}` needs a host and a port, e.g. `tcp://10.0.0.5:4001`")),
            },
            _ => Err(format!("`tcp://{addr}` needs a host and a port, e.g. `tcp://10.0.0.5:4001`")),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Serial(path) => write!(f, "{}", path.display()),
            Device::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
        }
    }
}

/// An opened byte source.
enum Opened {
    Serial(super::stream::Serial),
    Tcp(tokio::net::TcpStream),
}

/// A device server that does not answer within this long is treated like a missing device (and
/// retried with backoff) instead of stalling the port task on the kernel's SYN timeout.
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

async fn open(port: &PortSettings) -> Result<Opened, std::io::Error> {
    match &port.device {
        Device::Tcp { host, port } => {
            // An IPv6 literal is written in brackets (`tcp://[fe80::1]:4001`), as in URLs.
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let connect = tokio::net::TcpStream::connect((host, *port));
            match tokio::time::timeout(TCP_CONNECT_TIMEOUT, connect).await {
                Ok(stream) => Ok(Opened::Tcp(stream?)),
                Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")),
            }
        }
        Device::Serial(path) => {
            let serial = open_serial(path, port).map_err(std::io::Error::from)?;
            if let Some(rs485) = &port.rs485 {
                super::rs485::enable(&serial, rs485).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot turn on RS-485 mode (TIOCSRS485): {e}; an adapter that switches direction itself needs no `rs485:`"))
                })?;
            }
            Ok(Opened::Serial(serial))
        }
    }
}

fn open_serial(path: &std::path::Path, port: &PortSettings) -> Result<super::stream::Serial, tokio_serial::Error> {
    let builder = tokio_serial::new(path.to_string_lossy(), port.baud_rate)
        .data_bits(port.data_bits)
        .parity(match port.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Odd => tokio_serial::Parity::Odd,
            Parity::Even => tokio_serial::Parity::Even,
        })
        .stop_bits(port.stop_bits)
        .flow_control(match port.flow_control {
            FlowControl::None => tokio_serial::FlowControl::None,
            FlowControl::Software => tokio_serial::FlowControl::Software,
            FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
        })
        // Exclusive (TIOCEXCL + flock): a second reader would steal bytes and garble both.
        .exclusive(true);
    super::stream::Serial::open(&builder)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A device that never appears, on paused time: each attempt is counted, the waits double from
    /// 250 ms to `reopen_backoff_max`, the port says `offline` once, and a summary comes every 10 min.
    #[tokio::test(start_paused = true)]
    async fn a_missing_device_is_retried_with_capped_doubling_backoff() {
        let mut port = crate::serial::reader::tests::port("type: lines", "type: csv\ncolumns: [a]");
        port.device = Device::Serial("/dev/ttyUSB_ser2mqtt_unit_missing".into());
        port.reopen_backoff_max = Duration::from_secs(30);
        let (tx, mut rx) = mpsc::channel(8);
        let stats = Arc::new(PortStats::default());
        let shutdown = CancellationToken::new();
        let (_requests, requests_rx) = mpsc::channel(1);
        let task = tokio::spawn(run_port(port, tx, stats.clone(), shutdown.clone(), requests_rx));
        // Attempts at 0, 0.25, 0.75, 1.75, 3.75, 7.75, 15.75, 31.75 s, then every 30 s.
        let start = tokio::time::Instant::now();
        for (at, attempts) in [(1.0, 3), (10.0, 6), (60.0, 8), (700.0, 30)] {
            tokio::time::sleep_until(start + Duration::from_secs_f64(at)).await;
            assert_eq!(stats.open_failures.load(Ordering::Relaxed), attempts, "by {at} s");
        }
        assert_eq!(stats.opens.load(Ordering::Relaxed), 0);
        match rx.try_recv() {
            Ok(PortEvent::Availability { online: false, .. }) => {}
            other => panic!("expected one `offline`, got {other:?}"),
        }
        assert!(rx.try_recv().is_err(), "`offline` is said once, not at every attempt");
        shutdown.cancel();
        task.await.unwrap();
    }

    #[test]
    fn devices_are_parsed_once_and_shown_as_written() {
        let serial = Device::parse(Path::new("/dev/serial/by-id/usb-FTDI-if00")).unwrap();
        assert_eq!(serial, Device::Serial("/dev/serial/by-id/usb-FTDI-if00".into()));
        let tcp = Device::parse(Path::new("tcp://10.0.0.5:4001")).unwrap();
        assert_eq!(tcp, Device::Tcp { host: "10.0.0.5".into(), port: 4001 });
        assert_eq!(tcp.to_string(), "tcp://10.0.0.5:4001");
        assert_eq!(Device::parse(Path::new("tcp://[::1]:4001")).unwrap().to_string(), "tcp://[::1]:4001");
        for bad in ["tcp://10.0.0.5", "tcp://:4001", "tcp://host:99999"] {
            let e = Device::parse(Path::new(bad)).unwrap_err();
            assert!(e.contains("needs a host and a port"), "{bad}: {e}");
        }
    }
}
