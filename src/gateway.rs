//! The task tree: the embedded broker, one task per serial port, the publisher that applies topic
//! maps, and the stats reporter; started together, stopped in order under one grace timeout.
//!
//! Shutdown order: cancel the port readers (each reports its port `offline`), let the publisher drain
//! what they sent, publish the gateway `offline`, then stop the broker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::local_broker::{BrokerError, LocalBroker};
use crate::serial::port::PortEvent;
use crate::serial::{run_port, PortStats};
use crate::topic_map::{OutMessage, TopicMap};

/// Everything still running after this long in shutdown is abandoned (systemd's stop timeout is 90 s;
/// a gateway that needs more than a few seconds to flush is stuck, not busy).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Time for sessions to send out `offline` before the broker stops; loopback and LAN clients need
/// milliseconds, and this sits inside `SHUTDOWN_GRACE`.
const FINAL_FLUSH: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("embedded broker failed")]
    Broker(#[from] BrokerError),
}

/// A running gateway.
pub struct Gateway {
    broker: Arc<LocalBroker>,
    cancel: CancellationToken,
    ports: TaskTracker,
    publisher: JoinHandle<()>,
    stats: Vec<(Arc<str>, Arc<PortStats>)>,
    status_topic: String,
}

impl Gateway {
    /// Starts the broker (failing if a listener cannot bind), then the ports and the publisher.
    pub async fn start(config: Config) -> Result<Gateway, GatewayError> {
        let broker = Arc::new(LocalBroker::start(&config.broker).await?);
        for addr in broker.local_addrs() {
            tracing::info!(%addr, "MQTT broker listening");
        }
        let status = OutMessage {
            topic: config.gateway.status_topic.clone(),
            payload: Bytes::from_static(b"online"),
            qos: 1,
            retain: true,
        };
        broker.publish(&status).await?;

        let cancel = CancellationToken::new();
        let (tx, rx) = mpsc::channel(config.gateway.channel_capacity.get());
        let ports = TaskTracker::new();
        let mut stats = Vec::new();
        for port in config.ports.iter().cloned() {
            let s = Arc::new(PortStats::default());
            stats.push((port.name.clone(), s.clone()));
            ports.spawn(run_port(port, tx.clone(), s, cancel.child_token()));
        }
        ports.close();
        drop(tx);
        let publisher =
            tokio::spawn(publish_loop(rx, broker.clone(), Arc::new(config.maps.clone()), config.gateway.name.clone()));
        let reporter = stats.clone();
        let (b, topic, every, c) =
            (broker.clone(), config.gateway.status_topic.clone(), config.gateway.stats_interval, cancel.clone());
        tokio::spawn(async move { report_stats(b, topic, every, reporter, c).await });
        Ok(Gateway { broker, cancel, ports, publisher, stats, status_topic: config.gateway.status_topic })
    }

    pub fn broker_addrs(&self) -> &[SocketAddr] {
        self.broker.local_addrs()
    }

    /// Per-port counters, by port name.
    pub fn stats(&self) -> &[(Arc<str>, Arc<PortStats>)] {
        &self.stats
    }

    pub fn broker_running(&self) -> bool {
        self.broker.is_running()
    }

    /// Stops in order (ports, publisher drain, `offline`, broker) within `SHUTDOWN_GRACE`.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let Gateway { broker, ports, publisher, status_topic, .. } = self;
        let drain = async {
            ports.wait().await;
            let _ = publisher.await;
            let offline =
                OutMessage { topic: status_topic, payload: Bytes::from_static(b"offline"), qos: 1, retain: true };
            if let Err(e) = broker.publish(&offline).await {
                tracing::warn!(error = %e, "could not publish offline status");
            }
            // Publishing only queues the message for each session; give connected subscribers a
            // moment to receive the last words before the broker disconnects them.
            tokio::time::sleep(FINAL_FLUSH).await;
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "shutdown grace period over; stopping anyway");
        }
        if let Some(b) = Arc::into_inner(broker) {
            b.stop().await;
        }
    }
}

/// Runs until `shutdown` completes, then stops the gateway.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<(), GatewayError> {
    let gateway = Gateway::start(config).await?;
    shutdown.await;
    tracing::info!("shutting down");
    gateway.shutdown().await;
    Ok(())
}

async fn publish_loop(
    mut rx: mpsc::Receiver<PortEvent>,
    broker: Arc<LocalBroker>,
    maps: Arc<Vec<TopicMap>>,
    gateway: String,
) {
    let mut out = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            PortEvent::Reading(r) => {
                let mut unmapped = 0;
                for m in maps.iter() {
                    unmapped += m.messages(&gateway, &r, &mut out);
                }
                if unmapped > 0 {
                    tracing::debug!(port = %r.port, unmapped, "topic placeholders without a value in this frame");
                }
                for msg in out.drain(..) {
                    if let Err(e) = broker.publish(&msg).await {
                        tracing::error!(topic = %msg.topic, error = %e, "reading not published");
                    }
                }
            }
            PortEvent::Availability { port, topic, online } => {
                let payload = Bytes::from_static(if online { b"online" } else { b"offline" });
                tracing::info!(%port, online, "port availability changed");
                let msg = OutMessage { topic, payload, qos: 1, retain: true };
                if let Err(e) = broker.publish(&msg).await {
                    tracing::error!(topic = %msg.topic, error = %e, "availability not published");
                }
            }
        }
    }
}

async fn report_stats(
    broker: Arc<LocalBroker>,
    status_topic: String,
    every: Duration,
    stats: Vec<(Arc<str>, Arc<PortStats>)>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (name, s) in &stats {
            let payload = serde_json::to_vec(&**s).unwrap_or_default();
            let msg = OutMessage {
                topic: format!("{status_topic}/stats/{name}"),
                payload: payload.into(),
                qos: 0,
                retain: true,
            };
            let _ = broker.publish(&msg).await;
        }
    }
}
