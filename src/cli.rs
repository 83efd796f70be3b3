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
