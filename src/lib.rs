//! ser2mqtt: serial/UART sensors → MQTT, with an embedded broker.
//!
//! Data flows one way:
//! serial device → `serial::framing` (bytes → frames, checksums) → `decode` (frames → typed fields)
//! → `serial::port` (one task per port: readings + availability, bounded channel)
//! → `topic_map` (readings → topic, payload, QoS, retain) → `local_broker` (rmqtt, in-process).
//! Upstream: `upstream::writer` commits what the forward rules take into `store` (SQLite), and
//! `upstream::link` sends it to the cloud broker in the order `upstream::outbox` decides.
//! `config` turns the YAML file into validated settings (every problem at once, with its position);
//! `gateway` owns the task tree, reloads and orderly shutdown; `supervisor` the daemon's lifecycle
//! (systemd notify and watchdog, SIGHUP); `demo` and `simulate` provide sensors for
//! people without hardware; `logging` sets up tracing; `advice` turns OS errors on paths into fixes; `tasks` spawns our long-lived tasks so a panic in one fails the health check. `main.rs` only parses the command line.

pub mod advice;
pub mod bytes;
pub mod cli;
pub mod command;
pub mod config;
pub mod decode;
pub mod demo;
pub mod gateway;
pub mod homeassistant;
pub mod live;
pub mod local_broker;
pub mod logging;
pub mod metrics;
pub mod modbus;
pub mod pem;
pub mod qos;
pub mod serial;
pub mod settings;
pub mod simulate;
pub mod store;
pub mod supervisor;
pub mod tasks;
pub mod topic_map;
pub mod transform;
pub mod upstream;
