//! The task tree: the embedded broker, one task per serial port, the publisher that applies topic
//! maps, and the stats reporter; started together, reconfigured in place, stopped in order under one
//! grace timeout.
//!
//! Shutdown order: cancel the port readers (each reports its port `offline`), let the publisher drain
//! what they sent, publish the gateway `offline`, then stop the broker. A reload replaces only the ports
//! whose configuration changed, and swaps the topic maps between two readings; the broker keeps running.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, PortSettings};
use crate::local_broker::{BrokerError, LocalBroker};
use crate::serial::port::PortEvent;
use crate::serial::{run_port, PortStats};
use crate::store::{Store, StoreError};
use crate::topic_map::{OutMessage, TopicMap};
use crate::upstream::{start_writer, Acceptor, Bridge, BridgeStatus};

/// Everything still running after this long in shutdown is abandoned (systemd's stop timeout is 90 s;
/// a gateway that needs more than a few seconds to flush is stuck, not busy).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Time for sessions to send out `offline` before the broker stops; loopback and LAN clients need
/// milliseconds, and this sits inside `SHUTDOWN_GRACE`.
const FINAL_FLUSH: Duration = Duration::from_millis(300);

/// How often an idle publisher still reports progress, so "no progress" means stuck, not quiet.
const PUBLISHER_HEARTBEAT: Duration = Duration::from_secs(1);

/// How long a port may take to be tried once (opened or failed) before the gateway calls itself ready.
const FIRST_OPEN_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("embedded broker failed")]
    Broker(#[from] BrokerError),
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
}

/// A running gateway.
pub struct Gateway {
    config: Config,
    broker: Arc<LocalBroker>,
    cancel: CancellationToken,
    ports: HashMap<Arc<str>, RunningPort>,
    tx: mpsc::Sender<PortEvent>,
    maps: watch::Sender<Arc<Vec<TopicMap>>>,
    publisher: JoinHandle<()>,
    /// Milliseconds since `epoch` when the publisher last completed a loop turn.
    publisher_progress: Arc<AtomicU64>,
    epoch: Instant,
    stats_list: watch::Sender<Vec<(Arc<str>, Arc<PortStats>)>>,
    durable: Option<Durable>,
}

/// The store, its group-commit writer and the upstream bridge, when configured.
struct Durable {
    store: Arc<Store>,
    acceptor: Acceptor,
    writer: JoinHandle<()>,
    bridge: Option<Bridge>,
    /// Feeds client publishes (forward rules with `from_clients`) to the acceptor.
    tap: Option<JoinHandle<()>>,
}

impl Gateway {
    /// Starts the broker (failing if a listener cannot bind), then the ports and the publisher.
    pub async fn start(config: Config) -> Result<Gateway, GatewayError> {
        let broker = Arc::new(LocalBroker::start(&config.broker).await?);
        for addr in broker.local_addrs() {
            tracing::info!(%addr, "MQTT broker listening");
        }
        broker.publish(&status(&config, true)).await?;
        let durable = match config.store_path() {
            Some(path) => Some(open_durable(&config, path, &broker).await?),
            None => None,
        };

        let cancel = CancellationToken::new();
        let (tx, rx) = mpsc::channel(config.gateway.channel_capacity.get());
        let (maps, maps_rx) = watch::channel(Arc::new(config.maps.clone()));
        let epoch = Instant::now();
        let progress = Arc::new(AtomicU64::new(0));
        let publisher = tokio::spawn(publish_loop(
            rx,
            broker.clone(),
            maps_rx,
            config.gateway.name.clone(),
            progress.clone(),
            epoch,
            durable.as_ref().map(|d| d.acceptor.clone()),
        ));
        if let Some(bridge) = durable.as_ref().and_then(|d| d.bridge.as_ref()) {
            let topic = format!("{}/bridge", config.gateway.status_topic);
            tokio::spawn(report_bridge(broker.clone(), topic, bridge.status.clone(), config.gateway.stats_interval));
        }
        let (stats_list, stats_rx) = watch::channel(Vec::new());
        let (b, topic, every, c) =
            (broker.clone(), config.gateway.status_topic.clone(), config.gateway.stats_interval, cancel.clone());
        tokio::spawn(async move { report_stats(b, topic, every, stats_rx, c).await });
        let mut gw = Gateway {
            config: config.clone(),
            broker,
            cancel,
            ports: HashMap::new(),
            tx,
            maps,
            publisher,
            publisher_progress: progress,
            epoch,
            stats_list,
            durable,
        };
        for port in config.ports {
            gw.spawn_port(port);
        }
        gw.publish_stats_list();
        Ok(gw)
    }

    fn spawn_port(&mut self, settings: PortSettings) {
        let stats = Arc::new(PortStats::default());
        let cancel = self.cancel.child_token();
        let task = tokio::spawn(run_port(settings.clone(), self.tx.clone(), stats.clone(), cancel.clone()));
        self.ports.insert(settings.name.clone(), RunningPort { settings, stats, cancel, task });
    }

    fn publish_stats_list(&self) {
        let mut list: Vec<_> = self.ports.values().map(|p| (p.settings.name.clone(), p.stats.clone())).collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        self.stats_list.send_replace(list);
    }

    pub fn broker_addrs(&self) -> &[SocketAddr] {
        self.broker.local_addrs()
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
        if !self.broker.is_running() {
            return Err("the broker's server task has ended".into());
        }
        self.broker.round_trip(timeout).await.map_err(|e| e.to_string())?;
        let last = Duration::from_millis(self.publisher_progress.load(Ordering::Relaxed));
        let idle = self.epoch.elapsed().saturating_sub(last);
        if idle > PUBLISHER_HEARTBEAT * 5 || self.publisher.is_finished() {
            return Err(format!("the publisher has made no progress for {idle:?}"));
        }
        Ok(())
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
        if new.gateway.name != self.config.gateway.name || new.gateway.status_topic != self.config.gateway.status_topic
        {
            report.needs_restart.push("gateway.name/status_topic".into());
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
                None => report.stopped.push(name.to_string()),
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
        let (broker, gateway, upstream) =
            (self.config.broker.clone(), self.config.gateway.clone(), self.config.upstream.clone());
        self.config = new;
        // Restart-only settings stay as they run until the restart.
        self.config.broker = broker;
        self.config.gateway = gateway;
        self.config.upstream = upstream;
        for list in [&mut report.started, &mut report.restarted, &mut report.stopped, &mut report.unchanged] {
            list.sort();
        }
        report
    }

    /// Stops in order (ports, publisher drain, `offline`, broker) within `SHUTDOWN_GRACE`.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let Gateway { config, broker, ports, tx, publisher, durable, .. } = self;
        drop(tx);
        let drain = async {
            for (_, p) in ports {
                let _ = p.task.await;
            }
            let _ = publisher.await;
            if let Some(d) = durable {
                if let Some(t) = d.tap {
                    t.abort();
                    let _ = t.await;
                }
                // The bridge says `offline` upstream and hands over its last acknowledgements; then
                // the writer, with every handle gone, commits what is left and ends.
                if let Some(b) = d.bridge {
                    b.stop().await;
                }
                drop(d.acceptor);
                let _ = d.writer.await;
            }
            if let Err(e) = broker.publish(&status(&config, false)).await {
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

fn status(config: &Config, online: bool) -> OutMessage {
    OutMessage {
        topic: config.gateway.status_topic.clone(),
        payload: Bytes::from_static(if online { b"online" } else { b"offline" }),
        qos: 1,
        retain: true,
    }
}

async fn publish_loop(
    mut rx: mpsc::Receiver<PortEvent>,
    broker: Arc<LocalBroker>,
    maps: watch::Receiver<Arc<Vec<TopicMap>>>,
    gateway: String,
    progress: Arc<AtomicU64>,
    epoch: Instant,
    durable: Option<Acceptor>,
) {
    let mut out = Vec::new();
    loop {
        progress.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        let ev = match tokio::time::timeout(PUBLISHER_HEARTBEAT, rx.recv()).await {
            Err(_) => continue,
            Ok(None) => return,
            Ok(Some(ev)) => ev,
        };
        match ev {
            PortEvent::Reading(r) => {
                let maps = maps.borrow().clone();
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
                    if let Some(d) = &durable {
                        d.submit(&msg, true).await;
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
                if let Some(d) = &durable {
                    // Forwarded upstream if a rule takes it, but not kept across restarts: after a
                    // restart the port reports its own state.
                    d.submit(&msg, false).await;
                }
            }
        }
    }
}

async fn report_stats(
    broker: Arc<LocalBroker>,
    status_topic: String,
    every: Duration,
    stats: watch::Receiver<Vec<(Arc<str>, Arc<PortStats>)>>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let list = stats.borrow().clone();
        for (name, s) in &list {
            let payload = serde_json::to_vec(&**s).unwrap_or_default();
            let msg = OutMessage {
                topic: format!("{status_topic}/stats/{name}"),
                payload: payload.into(),
                qos: 0,
                retain: true,
            };
            let _ = broker.publish(&msg).await;
        }
        let msg = OutMessage {
            topic: format!("{status_topic}/stats/broker"),
            payload: broker.stats_json().into(),
            qos: 0,
            retain: true,
        };
        let _ = broker.publish(&msg).await;
    }
}

/// Opens the store, republishes the retained readings it kept, and starts the writer and bridge.
async fn open_durable(
    config: &Config,
    path: std::path::PathBuf,
    broker: &Arc<LocalBroker>,
) -> Result<Durable, GatewayError> {
    let limits = config.upstream.as_ref().map(|u| u.queue.clone());
    let store =
        tokio::task::spawn_blocking(move || Store::open(&path, limits)).await.expect("store open does not panic")?;
    let store = Arc::new(store);
    let kept = {
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.retained()).await.expect("store read does not panic")?
    };
    // Kept values of topics no retained map produces any more (the map was removed or changed) are
    // not brought back; they are cleared below, once the writer runs.
    let (kept, orphaned): (Vec<_>, Vec<_>) =
        kept.into_iter().partition(|r| config.maps.iter().any(|m| m.retain && m.topic.could_be(&r.topic)));
    for r in &kept {
        let msg = OutMessage { topic: r.topic.clone(), payload: r.payload.clone(), qos: r.qos, retain: true };
        broker.publish(&msg).await?;
    }
    let q = store.status();
    tracing::info!(path = %store.path().display(), retained = kept.len(), queued = q.depth, bytes = q.bytes, "store opened");
    let upstream = config.upstream.clone().map(Arc::new);
    let committed = Arc::new(tokio::sync::Notify::new());
    let interval = upstream.as_ref().map(|u| u.queue.commit_interval).unwrap_or(Duration::from_millis(100));
    let (acceptor, writer) = start_writer(store.clone(), upstream.clone(), interval, committed.clone());
    for r in &orphaned {
        tracing::info!(topic = %r.topic, "retained value of a topic no map produces any more: cleared, not republished");
        // An empty retained message: deletes the kept value, and clears the cloud's copy too when a
        // forward rule takes the topic.
        let clear = OutMessage { topic: r.topic.clone(), payload: Bytes::new(), qos: r.qos, retain: true };
        acceptor.submit(&clear, true).await;
    }
    let mut tap = None;
    if let Some(u) = &upstream {
        let filters: Vec<String> = u.forward.iter().filter(|r| r.from_clients).map(|r| r.filter.clone()).collect();
        if !filters.is_empty() {
            // Same bound as the writer's own channel: a burst from clients waits here, then is dropped.
            let (mut rx, _dropped) = broker.tap_client_publishes(filters, 4096).await;
            let a = acceptor.clone();
            tap = Some(tokio::spawn(async move {
                while let Some(m) = rx.recv().await {
                    a.submit(&m, false).await;
                }
            }));
        }
    }
    let bridge = upstream.map(|u| Bridge::start(u, store.clone(), acceptor.clone(), committed, broker.clone()));
    Ok(Durable { store, acceptor, writer, bridge, tap })
}

/// Publishes the bridge's state, retained, when it changes (at most once a second, since the queue
/// depth changes with every reading) and at least every `every`.
async fn report_bridge(
    broker: Arc<LocalBroker>,
    topic: String,
    mut status: watch::Receiver<BridgeStatus>,
    every: Duration,
) {
    // Fast enough to follow an outage by eye, slow enough not to add a message per reading.
    const MIN_SPACING: Duration = Duration::from_secs(1);
    loop {
        let snapshot = status.borrow_and_update().clone();
        let msg = OutMessage {
            topic: topic.clone(),
            payload: serde_json::to_vec(&snapshot).unwrap_or_default().into(),
            qos: 0,
            retain: true,
        };
        if broker.publish(&msg).await.is_err() {
            return;
        }
        tokio::time::sleep(MIN_SPACING).await;
        if let Ok(Err(_)) = tokio::time::timeout(every, status.changed()).await {
            return;
        }
    }
}
