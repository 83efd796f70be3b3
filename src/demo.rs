//! `ser2mqtt demo`: the gateway on simulated sensors, so a newcomer sees readings within seconds.
//!
//! Each simulated sensor gets a pseudo-terminal pair; the simulator writes the real frame format into
//! the master side and the gateway opens the slave side by its path, exactly as it would a UART.

use std::net::SocketAddr;
use std::path::Path;

use tokio_serial::{SerialPort, SerialStream};
use tokio_util::sync::CancellationToken;

use crate::config::{self, BrokerSettings, Config, ConfigErrors};
use crate::gateway::GatewayError;
use crate::serial::port::Device;
use crate::simulate::{self, SensorKind};
use crate::supervisor::{self, Supervision};

/// The demo's configuration, shipped as `configs/demo.yaml`.
pub const DEMO_CONFIG: &str = include_str!("../configs/demo.yaml");

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("built-in demo configuration is invalid")]
    Config(#[from] ConfigErrors),
    #[error("cannot create a pseudo-terminal for the simulated {0:?} sensor")]
    Pty(SensorKind, #[source] tokio_serial::Error),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

fn sensor_for(port: &str) -> SensorKind {
    match port {
        "gps" => SensorKind::Nmea,
        "air" => SensorKind::Pms5003,
        "dust" => SensorKind::Sds011,
        "co2" => SensorKind::Mhz19b,
        "meter" => SensorKind::Sdm120,
        "air_passive" => SensorKind::Pms5003Passive,
        _ => SensorKind::Arduino,
    }
}

/// The demo config with its broker on `listen`.
pub fn demo_config(listen: SocketAddr) -> Result<Config, ConfigErrors> {
    let mut config = config::parse(DEMO_CONFIG, Path::new("configs/demo.yaml (built in)"))?;
    config.broker = BrokerSettings::local_only(listen);
    Ok(config)
}

/// Runs the demo until `shutdown` completes.
pub async fn run(listen: SocketAddr, shutdown: impl std::future::Future<Output = ()>) -> Result<(), DemoError> {
    let mut config = demo_config(listen)?;
    if !listen.ip().is_loopback() {
        tracing::warn!(%listen, "demo broker is reachable from the network without credentials");
    }
    let sims = CancellationToken::new();
    // The slave ends stay open here so the ptys live as long as the demo does.
    let mut slaves = Vec::new();
    for port in &mut config.ports {
        let kind = sensor_for(&port.name);
        let (master, slave) = SerialStream::pair().map_err(|e| DemoError::Pty(kind, e))?;
        port.device = Device::Serial(slave.name().unwrap_or_default().into());
        slaves.push(slave);
        let token = sims.clone();
        if kind == SensorKind::Sdm120 {
            tokio::spawn(simulate::meter::serve(master, vec![1], token));
        } else {
            tokio::spawn(async move { simulate::run(kind, master, kind.natural_rate(), None, token).await });
        }
    }
    eprintln!(
        "ser2mqtt demo: broker on {listen}; try   mosquitto_sub -h {} -p {} -t '#' -v",
        listen.ip(),
        listen.port()
    );
    let result = supervisor::run(config, Supervision::none(), shutdown).await;
    sims.cancel();
    Ok(result?)
}
