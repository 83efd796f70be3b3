//! The task tree: the embedded broker, one task per serial port, the publisher that applies topic
//! maps, the durable side (store writer, client tap, bridge) and the status reporters; started
//! together, reconfigured in place, stopped in order under one grace timeout.
//!
//! Every task runs on a child of the gateway's token: cancelling it stops them all, even if the
//! ordered shutdown below is cut short. Shutdown order: cancel the port readers (each reports its
//! port `offline`), let the publisher drain what they sent, stop the durable side (tap drained,
//! bridge `offline` upstream, last commit), publish the gateway `offline`, cancel the reporters
//! (tracked in one `TaskTracker`), then close the broker. A reload replaces only the ports whose
//! configuration changed, and swaps the topic maps between two readings; the broker keeps running.

mod durable;
mod health;
mod publish;
mod report;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::command::{Commands, QUEUE_PER_PORT};
use crate::config::{Config, PortSettings};
use crate::local_broker::{BrokerError, LocalBroker};
use crate::serial::port::PortEvent;
use crate::serial::{run_port, PortStats};
use crate::store::StoreError;
use crate::tasks::Panics;
use crate::topic_map::TopicMap;
use crate::upstream::BridgeStatus;
use durable::{open_durable, Durable};
use health::Health;
use publish::{publish_loop, status};

/// Everything still running after this long in shutdown is abandoned (systemd's stop timeout is 90 s;
/// a gateway that needs more than a few seconds to flush is stuck, not busy).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Time for sessions to send out `offline` before the broker stops; loopback and LAN clients need
/// milliseconds, and this sits inside `SHUTDOWN_GRACE`.
const FINAL_FLUSH: Duration = Duration::from_millis(300);

/// How long a port may take to be tried once (opened or failed) before the gateway calls itself ready.
const FIRST_OPEN_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("embedded broker failed")]
    Broker(#[from] BrokerError),
    #[error("cannot listen for /metrics on {addr}: {source}")]
    Metrics { addr: String, source: std::io::Error },
    #[error("cannot open the gateway's store")]
    Store(#[from] StoreError),
}

/// A port task and what it was started with.
struct RunningPort {
    settings: PortSettings,
    stats: Arc<PortStats>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// What a reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub started: Vec<String>,
    pub restarted: Vec<String>,
    pub stopped: Vec<String>,
    pub unchanged: Vec<String>,
    /// Settings that only take effect on restart (broker listeners, users, gateway name…).
    pub needs_restart: Vec<String>,
    /// Why nothing was applied: a change that would be half applied until a restart.
    pub refused: Option<String>,
}

/// A running gateway.
pub struct Gateway {
    config: Config,
    broker: Arc<LocalBroker>,
    /// The root of the task tree.
    cancel: CancellationToken,
    /// The reporters, which need no ordered stop.
    reporters: TaskTracker,
    ports: HashMap<Arc<str>, RunningPort>,
    tx: mpsc::Sender<PortEvent>,
    maps: watch::Sender<Arc<Vec<TopicMap>>>,
    publisher: JoinHandle<()>,
    /// The health verdict (watchdog and `/healthz`).
    health: Health,
    /// Where `/metrics` is served, if it is.
    metrics_addr: Option<SocketAddr>,
    stats_list: watch::Sender<Vec<(Arc<str>, Arc<PortStats>)>>,
    durable: Option<Durable>,
    /// Command topics of the running ports, and the task that carries commands out.
    commands: Commands,
    dispatcher: (JoinHandle<()>, CancellationToken),
    /// The Home Assistant discovery documents last published (retained), to remove what a reload drops.
    announced: Vec<crate::topic_map::OutMessage>,
}

impl Gateway {
    /// Starts the broker (failing if a listener cannot bind), then the ports and the publisher.
    pub async fn start(config: Config) -> Result<Gateway, GatewayError> {
        // Bound first: a busy address fails the start before anything else runs.
        let metrics_listener = match &config.metrics {
            Some(m) => Some(
                tokio::net::TcpListener::bind(&m.bind)
                    .await
                    .map_err(|source| GatewayError::Metrics { addr: m.bind.clone(), source })?,
            ),
            None => None,
        };
        let broker = Arc::new(LocalBroker::start(&config.broker).await?);
        for addr in broker.local_addrs() {
            tracing::info!(%addr, "MQTT broker listening");
        }
        broker.publish(&status(&config, true)).await?;
        let cancel = CancellationToken::new();
        let panics = Panics::default();
        let durable = match config.store_path() {
            Some(path) => Some(open_durable(&config, path, &broker, &cancel, &panics).await?),
            None => None,
        };

        let (tx, rx) = mpsc::channel(config.gateway.channel_capacity.get());
        let (maps, maps_rx) = watch::channel(Arc::new(config.maps.clone()));
        let health = Health::new(broker.clone(), panics.clone());
        let publisher = {
            let loop_ = publish_loop(
                rx,
                broker.clone(),
                maps_rx,
                config.gateway.name.clone(),
                health.progress.clone(),
                health.epoch,
                durable.as_ref().map(|d| d.acceptor.clone()),
            );
            // Set however the loop ends, a panic included.
            let done = health.publisher_guard();
            tokio::spawn(async move {
                let _done = done;
                loop_.await
            })
        };
        let reporters = TaskTracker::new();
        let every = config.gateway.stats_interval;
        if let Some((bridge, store)) = durable.as_ref().and_then(|d| d.bridge.as_ref().map(|b| (b, d.store.clone()))) {
            let topic = format!("{}/bridge", config.gateway.status_topic);
            let status = bridge.status.clone();
            reporters.spawn(report::report_bridge(broker.clone(), topic, status, store, every, cancel.child_token()));
        }
        let (stats_list, stats_rx) = watch::channel(Vec::new());
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(listener) = metrics_listener {
            let sources = crate::metrics::Sources {
                ports: stats_rx.clone(),
                broker: broker.clone(),
                store: durable.as_ref().map(|d| d.store.clone()),
                bridge: durable.as_ref().and_then(|d| d.bridge.as_ref()).map(|b| b.status.clone()),
            };
            reporters.spawn(crate::metrics::serve(listener, sources, health.healthz(), cancel.child_token()));
        }
        // A few requests a second at most (each tap renews every few seconds); more are dropped.
        let (live_rx, _dropped) =
            broker.tap_publishes(vec![crate::live::request_topic(&config.gateway.status_topic)], 16).await;
        reporters.spawn(crate::live::serve_requests(live_rx, stats_rx.clone(), cancel.child_token()));
        let topic = config.gateway.status_topic.clone();
        reporters.spawn(report::report_stats(broker.clone(), topic, every, stats_rx, cancel.child_token()));
        reporters.close();
        let commands = Commands::default();
        // Bounded like a port's own queue of commands, times a few ports: a client flooding command
        // topics gets its messages dropped (counted by the tap), never unbounded memory.
        let (command_rx, _dropped) =
            broker.tap_publishes(vec![config.gateway.command_filter.clone()], 4 * QUEUE_PER_PORT).await;
        let stop = cancel.child_token();
        let dispatcher =
            (panics.spawn("the command dispatcher", commands.clone().run(command_rx, tx.clone(), stop.clone())), stop);
        let mut gw = Gateway {
            config: config.clone(),
            broker,
            cancel,
            reporters,
            ports: HashMap::new(),
            tx,
            maps,
            publisher,
            health,
            metrics_addr,
            stats_list,
            durable,
            commands,
            dispatcher,
            announced: Vec::new(),
        };
        for port in config.ports {
            gw.spawn_port(port);
        }
        gw.publish_stats_list();
        gw.announce().await;
        Ok(gw)
    }

    fn spawn_port(&mut self, settings: PortSettings) {
        let stats = Arc::new(PortStats::default());
        let cancel = self.cancel.child_token();
        let (requests, requests_rx) = mpsc::channel(QUEUE_PER_PORT);
        self.commands.set_port(&settings.name, &settings.commands, &requests);
        let task = self.health.panics.spawn(
            format!("port {}", settings.name),
            run_port(settings.clone(), self.tx.clone(), stats.clone(), cancel.clone(), requests_rx),
        );
        self.ports.insert(settings.name.clone(), RunningPort { settings, stats, cancel, task });
    }

    /// Publishes the Home Assistant discovery documents of the running configuration (through the
    /// publisher, so forward rules take them upstream too), and empty ones for the entities it no
    /// longer has.
    async fn announce(&mut self) {
        let announcement = match &self.config.homeassistant {
            Some(ha) => {
                let c = &self.config;
                let source = crate::homeassistant::discovery::Source {
                    gateway: &c.gateway.name,
                    status_topic: &c.gateway.status_topic,
                    ports: &c.ports,
                    maps: &c.maps,
                };
                crate::homeassistant::announce(ha, &source)
            }
            None => Default::default(),
        };
        for note in &announcement.notes {
            tracing::info!("Home Assistant discovery: {note}");
        }
        let gone = crate::homeassistant::removals(&self.announced, &announcement.messages);
        if !gone.is_empty() {
            tracing::info!(removed = gone.len(), "Home Assistant entities removed");
        }
        for msg in gone.into_iter().chain(announcement.messages.iter().cloned()) {
            // Fails only when the publisher has stopped, i.e. during shutdown.
            let _ = self.tx.send(PortEvent::Message(msg)).await;
        }
        self.announced = announcement.messages;
    }

    fn publish_stats_list(&self) {
        let mut list: Vec<_> = self.ports.values().map(|p| (p.settings.name.clone(), p.stats.clone())).collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        self.stats_list.send_replace(list);
    }

    pub fn broker_addrs(&self) -> &[SocketAddr] {
        self.broker.local_addrs()
    }

    /// Where `/metrics` and `/healthz` are served, if `metrics:` is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Per-port counters, by port name (sorted).
    pub fn stats(&self) -> Vec<(Arc<str>, Arc<PortStats>)> {
        self.stats_list.borrow().clone()
    }

    /// Waits until every port has been tried once (opened or failed), at most `FIRST_OPEN_WAIT`.
    pub async fn ports_tried(&self) {
        let tried = || {
            self.ports
                .values()
                .all(|p| p.stats.opens.load(Ordering::Relaxed) + p.stats.open_failures.load(Ordering::Relaxed) > 0)
        };
        let deadline = Instant::now() + FIRST_OPEN_WAIT;
        while !tried() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Healthy when a message makes the round trip through the broker to a real client within
    /// `timeout`, and the publisher made progress recently.
    pub async fn health(&self, timeout: Duration) -> Result<(), String> {
        self.health.check(timeout).await
    }

    /// The embedded broker, shared (for callers that publish or probe it directly).
    pub fn broker(&self) -> Arc<LocalBroker> {
        self.broker.clone()
    }

    /// The upstream bridge's state, if one is configured.
    pub fn bridge_status(&self) -> Option<BridgeStatus> {
        self.durable.as_ref().and_then(|d| d.bridge.as_ref()).map(|b| b.status.borrow().clone())
    }

    /// The queue's figures, if the gateway keeps a store.
    pub fn queue_status(&self) -> Option<crate::store::QueueStatus> {
        self.durable.as_ref().map(|d| d.store.status())
    }

    /// Applies a new, already validated configuration without restarting the broker.
    pub async fn reload(&mut self, new: Config) -> ReloadReport {
        let mut report = ReloadReport::default();
        if new.broker != self.config.broker {
            report.needs_restart.push("broker".into());
        }
        if new.metrics != self.config.metrics {
            report.needs_restart.push("metrics".into());
        }
        if new.gateway.name != self.config.gateway.name
            || new.gateway.status_topic != self.config.gateway.status_topic
            || new.gateway.command_filter != self.config.gateway.command_filter
        {
            // Ports' availability topics are rendered with the name: applying the rest would move
            // them while the status topic stayed. Nothing is applied until a restart.
            report.needs_restart.push("gateway.name/status_topic/command_topic".into());
            report.refused = Some(format!(
                "gateway name, status topic or command topic changed (`{}` -> `{}`): restart to apply; nothing was reloaded",
                self.config.gateway.status_topic, new.gateway.status_topic
            ));
            return report;
        }
        let fingerprint = |c: &Config| c.upstream.as_ref().map(|u| u.fingerprint.clone());
        if fingerprint(&new) != fingerprint(&self.config) || new.gateway.state_dir != self.config.gateway.state_dir {
            report.needs_restart.push("upstream".into());
        }
        let wanted: HashMap<Arc<str>, &PortSettings> = new.ports.iter().map(|p| (p.name.clone(), p)).collect();
        let names: Vec<Arc<str>> = self.ports.keys().cloned().collect();
        for name in names {
            let same = wanted.get(&name).is_some_and(|w| {
                let running = &self.ports[&name].settings;
                w.fingerprint == running.fingerprint && w.device == running.device
            });
            if same {
                report.unchanged.push(name.to_string());
                continue;
            }
            if let Some(old) = self.ports.remove(&name) {
                // The old task reports its port offline as it stops and must release the device (opened
                // exclusively) before its replacement opens it.
                old.cancel.cancel();
                if tokio::time::timeout(SHUTDOWN_GRACE, old.task).await.is_err() {
                    tracing::warn!(port = %name, "old port task did not stop in time");
                }
            }
            match wanted.get(&name) {
                Some(w) => {
                    self.spawn_port((*w).clone());
                    report.restarted.push(name.to_string());
                }
                None => {
                    self.commands.remove_port(&name);
                    report.stopped.push(name.to_string());
                }
            }
        }
        for p in &new.ports {
            if !self.ports.contains_key(&p.name) {
                self.spawn_port(p.clone());
                report.started.push(p.name.to_string());
            }
        }
        self.maps.send_replace(Arc::new(new.maps.clone()));
        self.publish_stats_list();
        let (broker, gateway, upstream, metrics) = (
            self.config.broker.clone(),
            self.config.gateway.clone(),
            self.config.upstream.clone(),
            self.config.metrics.clone(),
        );
        self.config = new;
        self.config.metrics = metrics;
        // Restart-only settings stay as they run until the restart.
        self.config.broker = broker;
        self.config.gateway = gateway;
        self.config.upstream = upstream;
        self.announce().await;
        for list in [&mut report.started, &mut report.restarted, &mut report.stopped, &mut report.unchanged] {
            list.sort();
        }
        report
    }

    /// Stops in order (ports, publisher drain, durable side, `offline`, reporters) within
    /// `SHUTDOWN_GRACE`; then everything left is cancelled and the broker is closed, whatever else
    /// still holds it.
    pub async fn shutdown(self) {
        let Gateway { config, broker, cancel, reporters, ports, tx, publisher, durable, dispatcher, .. } = self;
        drop(tx);
        let drain = async {
            for p in ports.values() {
                p.cancel.cancel();
            }
            for (_, p) in ports {
                let _ = p.task.await;
            }
            // Commands still waiting were answered as their ports stopped; their results go out
            // through the publisher, which drains once the dispatcher has let go of its sender.
            dispatcher.1.cancel();
            let _ = dispatcher.0.await;
            let _ = publisher.await;
            if let Some(d) = durable {
                d.stop().await;
            }
            if let Err(e) = broker.publish(&status(&config, false)).await {
                tracing::warn!(error = %e, "could not publish offline status");
            }
            // Publishing only queues the message for each session; give connected subscribers a
            // moment to receive the last words before the broker disconnects them.
            tokio::time::sleep(FINAL_FLUSH).await;
            cancel.cancel();
            reporters.wait().await;
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "shutdown grace period over; stopping anyway");
        }
        cancel.cancel();
        broker.close().await;
    }
}
