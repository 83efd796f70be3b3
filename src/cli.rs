//! The command line: `run`, `check`, `demo`, `simulate`, as typed by the user.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_PATH;
use crate::simulate::SensorKind;

#[derive(Debug, Parser)]
#[command(
    name = "ser2mqtt",
    version,
    about = "Serial sensors to MQTT, with an embedded broker",
    after_help = "Exit status of `run`: 0 stopped cleanly; 64 the configuration is invalid or unreadable; \
69 a listener's address is in use; 73 the state directory or queue cannot be opened; 75 any other failure. \
`check` exits 0 for a valid file and 64 otherwise.\n\n\
Files: /etc/ser2mqtt/ser2mqtt.yaml (configuration), /var/lib/ser2mqtt/queue.db (upstream queue and \
retained readings). Documentation: /usr/share/doc/ser2mqtt/README.md."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Run {
        #[arg(long, short, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Validate a configuration file without starting anything (exit 0 valid, 64 invalid).
    Check {
        #[arg(long, short, default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Also check that each port's device exists and that `--user` may open it, without opening it
        /// (exit 69 if one is not usable).
        #[arg(long)]
        devices: bool,
        /// Who will run the gateway (`ser2mqtt` under the packaged unit). Default: the current user.
        #[arg(long, requires = "devices")]
        user: Option<String>,
    },
    /// Run the gateway on built-in simulated sensors (no hardware needed).
    Demo {
        /// Where the embedded broker listens.
        #[arg(long, default_value = "127.0.0.1:1883")]
        listen: SocketAddr,
    },
    /// Inspect the durable upstream queue (works while the gateway runs).
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Read a password from standard input (first line) and print its argon2 hash for
    /// `broker.users[].password_hash`.
    HashPassword,
    /// Run one frame through a port's framing, checksum, decoder, transforms and maps, and print what
    /// each step made of it and the exact topics and payloads (nothing is opened or published).
    Try {
        #[arg(long, short, default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// The port whose settings to use.
        #[arg(long)]
        port: String,
        /// The bytes as hex (`"42 4D 00 1C …"`).
        #[arg(long, conflicts_with = "line", required_unless_present = "line")]
        hex: Option<String>,
        /// A text line; the port's delimiter is added if it is a lines port.
        #[arg(long)]
        line: Option<String>,
    },
    /// Show a running gateway's frames live, as it reads them: bytes, checksum verdict, decoded values
    /// or why a frame was dropped (through the gateway's broker; the gateway keeps the device).
    Tap {
        #[arg(long, short, default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Only this port (default: every port).
        #[arg(long)]
        port: Option<String>,
        /// The gateway's broker (default: the config's first listener).
        #[arg(long)]
        broker: Option<SocketAddr>,
        /// A broker user whose ACL allows the live topics.
        #[arg(long, short)]
        username: Option<String>,
        #[arg(long, short = 'P', requires = "username")]
        password: Option<String>,
        /// Stop after this many frames.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Print this program's manual page (roff), for packaging.
    #[command(hide = true)]
    Manpage,
    /// Write a simulated sensor's frames to a serial device or pty.
    Simulate {
        #[arg(long, value_enum)]
        sensor: SensorKind,
        #[arg(long)]
        device: PathBuf,
        /// Frames per second; 0 writes as fast as the device takes them. Default: the sensor's own rate.
        #[arg(long)]
        rate: Option<f64>,
        /// Stop after this many frames.
        #[arg(long)]
        count: Option<u64>,
        #[arg(long, default_value_t = 9600)]
        baud: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Depth, bytes, oldest age and drop counters of the queue the configuration names.
    Status {
        #[arg(long, short, default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `ser2mqtt try`: what the port's pipeline makes of `input`, one line per step, as a user reads it.
pub fn try_frame(config: &crate::config::Config, port: &str, input: &[u8]) -> Result<Vec<String>, String> {
    use tokio_util::codec::Decoder;

    use crate::serial::framing::{FrameCodec, FrameEvent, Framing};

    let Some(p) = config.ports.iter().find(|p| &*p.name == port) else {
        let names: Vec<&str> = config.ports.iter().map(|p| &*p.name).collect();
        return Err(crate::settings::unknown("port", port, &names));
    };
    if p.modbus.is_some() {
        return Err(format!("port `{port}` is a Modbus bus: its frames are tokio-modbus's, not a byte stream"));
    }
    let mut bytes = bytes::BytesMut::from(input);
    if let Framing::Lines(l) = &p.framing {
        if !input.ends_with(l.delimiter.as_bytes()) {
            bytes.extend_from_slice(l.delimiter.as_bytes());
        }
    }
    let hex = crate::bytes::hex;
    let mut codec = FrameCodec::new(p.framing.clone(), p.checksum.clone());
    let mut out = Vec::new();
    while let Some(ev) = codec.decode_eof(&mut bytes).map_err(|e| e.to_string())? {
        let frame = match ev {
            FrameEvent::Frame(f) => f,
            FrameEvent::Garbled { reason, bytes } => {
                let why = match reason {
                    crate::serial::framing::Garble::BadChecksum(e, _) => e.to_string(),
                    other => format!("{other:?}"),
                };
                out.push(format!("garbled: {bytes} bytes dropped ({why})"));
                continue;
            }
            FrameEvent::Skipped { bytes } => {
                out.push(format!("garbled: {bytes} more bytes dropped"));
                continue;
            }
        };
        out.push(format!("frame: {} ({:?})", hex(&frame), String::from_utf8_lossy(&frame)));
        if p.ignore.iter().any(|r| r.is_match(&frame)) {
            out.push("ignored: matches an `ignore` rule".into());
            continue;
        }
        let mut fields = match p.decoder.decode(&frame) {
            Ok(f) => f,
            Err(e) => {
                out.push(format!("not decoded: {e}"));
                continue;
            }
        };
        for t in &p.transforms {
            t.apply(&mut fields);
        }
        let shown: Vec<String> = fields.iter().map(|(n, v)| format!("{n}={}", v.to_plain())).collect();
        out.push(format!("fields: {}", shown.join(", ")));
        let reading = crate::decode::Reading { port: p.name.clone(), fields, received: chrono::Utc::now() };
        let mut messages = Vec::new();
        for m in &config.maps {
            m.messages(&config.gateway.name, &reading, &mut messages);
        }
        if messages.is_empty() {
            out.push("no map publishes this frame".into());
        }
        for msg in messages {
            out.push(format!(
                "publish {}  {}  (qos {}, retain {})",
                msg.topic,
                String::from_utf8_lossy(&msg.payload),
                msg.qos,
                msg.retain
            ));
        }
    }
    Ok(out)
}
