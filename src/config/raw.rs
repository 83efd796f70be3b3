//! The configuration file as typed by the user: serde structs that mirror the YAML one to one.
//!
//! Every struct denies unknown fields so a typo is an error, not a silently ignored key. Defaults live
//! in functions so the reference in the README and the code agree. Nothing here is checked beyond its
//! shape; `resolve` turns these into the validated form the gateway runs on.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use crate::bytes::ByteOrder;
pub use crate::decode::settings::DecoderSettings;
pub use crate::decode::{BinaryType, FieldKind};
pub use crate::qos::Qos;
pub use crate::serial::checksum::ChecksumSettings;
pub use crate::serial::framing::LengthCounts;
pub use crate::serial::port::{FlowControl, Parity};
pub use crate::topic_map::{PayloadFormat, PublishUnit};

/// The top-level keys, each kept as a raw YAML value so that one bad section does not hide the
/// problems in the others (every section is deserialized, and reported, on its own).
pub const TOP_LEVEL_KEYS: &[&str] =
    &["gateway", "log", "broker", "upstream", "ports", "maps", "homeassistant", "metrics"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    /// Fills `{gateway}` in topic templates; one name per board.
    #[serde(default = "default_gateway_name")]
    pub name: String,
    /// Retained `online`/`offline` for the gateway as a whole.
    #[serde(default = "default_status_topic")]
    pub status_topic: String,
    /// Readings waiting between the serial readers and the publisher. When it is full the readers stop
    /// reading until there is room (the bytes wait in the kernel's tty buffer); nothing is dropped.
    #[serde(default = "default_channel_capacity")]
    pub channel_capacity: usize,
    /// How often per-port counters are published (retained JSON under the status topic).
    #[serde(default = "default_stats_interval", with = "humantime_serde")]
    pub stats_interval: Duration,
    /// Where the gateway keeps its queue and last retained readings. With `upstream:` it defaults to
    /// `$STATE_DIRECTORY` or `/var/lib/ser2mqtt`; without, nothing is stored unless this is set.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Where clients publish a port's commands: `{gateway}`, `{port}`, `{command}` as whole levels.
    #[serde(default = "default_command_topic")]
    pub command_topic: String,
    /// Where each command's result goes: `{gateway}`, `{port}`, `{command}`.
    #[serde(default = "default_result_topic")]
    pub result_topic: String,
}

impl Default for RawGateway {
    fn default() -> Self {
        RawGateway {
            name: default_gateway_name(),
            status_topic: default_status_topic(),
            channel_capacity: default_channel_capacity(),
            stats_interval: default_stats_interval(),
            state_dir: None,
            command_topic: default_command_topic(),
            result_topic: default_result_topic(),
        }
    }
}

fn default_gateway_name() -> String {
    "ser2mqtt".into()
}
fn default_status_topic() -> String {
    "{gateway}/status".into()
}
fn default_command_topic() -> String {
    "{gateway}/{port}/set/{command}".into()
}
fn default_result_topic() -> String {
    "{gateway}/{port}/result/{command}".into()
}
fn default_channel_capacity() -> usize {
    // About 10 s of 100 frames/s: enough to ride out a slow subscriber burst without holding much RAM.
    1024
}
fn default_stats_interval() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter; `RUST_LOG` overrides it.
    pub level: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBroker {
    /// Where the embedded broker listens; none means 127.0.0.1:1883 only.
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    /// Users who may connect with a username and password.
    #[serde(default)]
    pub users: Vec<RawUser>,
    /// Topic rules; when any is given, everything not allowed is denied.
    #[serde(default)]
    pub acl: Vec<RawAclRule>,
    /// Messages queued per client before the broker drops them (and also caps how many retained
    /// messages one subscription receives).
    pub max_queue_len: Option<usize>,
    /// Concurrent client sessions the broker accepts.
    pub max_sessions: Option<usize>,
    /// Open connections per listener.
    pub max_connections: Option<usize>,
    /// From accept to a complete CONNECT packet.
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Largest MQTT packet accepted or sent.
    pub max_packet_size: Option<bytesize::ByteSize>,
    /// Bytes waiting for one slow client before its QoS 0 messages are dropped, then it is cut.
    pub max_client_buffer: Option<bytesize::ByteSize>,
    /// Retained topics kept at most (each a last value).
    pub max_retained: Option<usize>,
    /// Retained payload bytes kept at most, over all topics.
    pub max_retained_bytes: Option<bytesize::ByteSize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// `ADDR:PORT`, e.g. `0.0.0.0:1883`.
    pub bind: String,
    /// Clients without a username may connect. Required to be said explicitly for a non-loopback
    /// listener without users, as in Mosquitto 2.
    pub allow_anonymous: Option<bool>,
    /// MQTT over TLS (`local_broker::tls::ListenerTls`): certificate, key, optional client CA.
    #[serde(default)]
    pub tls: Option<crate::local_broker::tls::ListenerTls>,
    /// MQTT over WebSocket (`ws://`, or `wss://` with `tls`), for browser dashboards.
    #[serde(default)]
    pub websocket: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub username: String,
    /// An argon2 PHC string from `ser2mqtt hash-password` (preferred: the file then holds no password).
    #[serde(default)]
    pub password_hash: Option<String>,
    /// A plain-text password (quick setups; keep the file readable by the service only).
    #[serde(default)]
    pub password: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAclRule {
    /// A username, or `"*"` for every client (anonymous ones included).
    #[serde(default)]
    pub user: Option<String>,
    /// The rule is for clients that connected without a username.
    #[serde(default)]
    pub anonymous: bool,
    /// Only for clients connected to this listener (its `bind` as written).
    #[serde(default)]
    pub listener: Option<String>,
    /// Refuses what it names, whatever any other rule allows.
    #[serde(default)]
    pub deny: bool,
    /// Topic filters this user may subscribe to.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Topic filters this user may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPort {
    /// Fills `{port}` in topics; maps select ports by it.
    pub name: String,
    /// `/dev/ttyUSB0`, or better a stable link such as `/dev/serial/by-id/…`; or `tcp://HOST:PORT` for a
    /// serial device server in raw TCP mode (line settings then live on the server).
    pub device: PathBuf,
    #[serde(default = "default_baud_rate")]
    pub baud_rate: u32,
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    #[serde(default)]
    pub parity: Parity,
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    #[serde(default)]
    pub flow_control: FlowControl,
    // `framing`, `checksum` and `decoder` are read on their own (`serial::framing::Framing`,
    // `ChecksumSettings`, `DecoderSettings`), so a mistake in one does not hide the others' problems.
    #[serde(default)]
    pub framing: serde_yaml::Value,
    #[serde(default)]
    pub checksum: serde_yaml::Value,
    #[serde(default)]
    pub decoder: serde_yaml::Value,
    /// `serial::poll::PollSettings`, read on its own like `framing`.
    #[serde(default)]
    pub poll: serde_yaml::Value,
    /// A list of `command::CommandSettings`, each read on its own.
    #[serde(default)]
    pub commands: serde_yaml::Value,
    /// `transform::Transform`s applied to each frame's fields before maps see them.
    #[serde(default)]
    pub transforms: serde_yaml::Value,
    /// Regexes: frames matching one are counted as `ignored`, not decoded (a GPS's GSV sentences).
    #[serde(default)]
    pub ignore: Vec<String>,
    /// `serial::rs485::Rs485Settings`: RS-485 direction by RTS, done by the kernel.
    #[serde(default)]
    pub rs485: Option<crate::serial::rs485::Rs485Settings>,
    /// `modbus::ModbusSettings`: a Modbus RTU bus instead of `framing` and `decoder`.
    #[serde(default)]
    pub modbus: serde_yaml::Value,
    /// No valid frame for this long marks the port `offline`.
    #[serde(default = "default_silence_timeout", with = "humantime_serde")]
    pub silence_timeout: Duration,
    /// Retained `online`/`offline` for this port.
    #[serde(default = "default_availability_topic")]
    pub availability_topic: String,
    /// Frames to drop silently after each open (Arduino boards reset on open and print a partial line).
    #[serde(default)]
    pub skip_first_frames: u32,
    /// Longest wait between attempts to reopen a missing or failed port.
    #[serde(default = "default_reopen_max", with = "humantime_serde")]
    pub reopen_backoff_max: Duration,
}

fn default_baud_rate() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_silence_timeout() -> Duration {
    // Most sensors send every 1 s; ten missed frames is a dead sensor, not jitter.
    Duration::from_secs(10)
}
fn default_availability_topic() -> String {
    "{gateway}/{port}/availability".into()
}
fn default_reopen_max() -> Duration {
    // A re-plugged USB adapter is back within seconds; 30 s keeps a missing one from spamming logs.
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMap {
    /// The port whose frames this map publishes.
    pub port: String,
    /// Only frames whose field equals one of these values.
    #[serde(default)]
    pub when: Option<RawWhen>,
    /// The fields to publish; default all the decoder produced.
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    /// Topic template: `{gateway}`, `{port}`, `{field}` (per-field maps) and any decoded field.
    pub topic: String,
    #[serde(default)]
    pub publish: PublishUnit,
    /// Default: `plain` for per-field maps, `json` for per-frame maps.
    #[serde(default)]
    pub payload: Option<PayloadFormat>,
    #[serde(default)]
    pub qos: Qos,
    #[serde(default)]
    pub retain: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWhen {
    pub field: String,
    #[serde(default)]
    pub equals: Option<String>,
    #[serde(default, rename = "in")]
    pub one_of: Option<Vec<String>>,
}
