//! Log output: readable lines on stderr, level from the config unless `RUST_LOG` says otherwise.
//! The broker engine logs through the `log` crate; those records are bridged into tracing too.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Engine chatter (one line per client connect) is kept at warn unless asked for explicitly.
const QUIET_ENGINE: &str = "rmqtt=warn,rmqtt_net=warn,rmqtt_acl=warn,rmqtt_retainer=warn";

/// Installs the global subscriber; later calls (as in tests) are ignored.
pub fn init(level: Option<&str>) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::new(env),
        _ => EnvFilter::new(format!("{},{QUIET_ENGINE}", level.unwrap_or("info"))),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
