//! The upstream bridge: accepts messages into the durable store (group commit) and sends the queue
//! to the cloud broker over one rumqttc connection, deleting each message only once the broker has
//! acknowledged it.
//!
//! Each connection attempt gets a fresh rumqttc event loop: rumqttc's own pending list is dropped on
//! every failure and the store is the only source of what still has to go up. On (re)connect the queue
//! is split at its newest id: messages up to it are the *backlog*, replayed oldest first at
//! `replay_rate`; messages accepted afterwards are *live* and go out at once, unless their topic still
//! has backlog, in which case they wait behind it. So each upstream topic sees its messages in the
//! order they were accepted, while topics without backlog are not held up by a replay.
//!
//! Delivery is at least once: a message sent but not acknowledged before the link broke (or before
//! the gateway died) is sent again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing, QoS, TlsConfiguration,
    Transport,
};
use serde::Serialize;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::upstream::UpstreamSettings;
use crate::local_broker::LocalBroker;
use crate::store::{now_ms, QueueStatus, Queued, Record, Store, StoreError};
use crate::topic_map::OutMessage;

/// Largest MQTT packet either way. Serial readings are tiny; this only stops one odd message from
/// breaking every connection (rumqttc drops the connection on an oversize packet).
pub const MAX_PACKET: usize = 256 * 1024;

/// Messages waiting for the next group commit; the publisher waits when it is full, which pushes back
/// onto the serial readers' own bounded channel.
const ACCEPT_CAPACITY: usize = 4096;

/// Most messages in one commit; bounds the memory of one batch and the length of one transaction.
const MAX_BATCH: usize = 4096;

/// Longest an acknowledged message waits to be deleted when no new reading comes to share the commit.
const ACK_DEFER: Duration = Duration::from_secs(1);

/// How often the bridge refills its rate budget, deletes acknowledged messages and checks the queue.
const TICK: Duration = Duration::from_millis(50);

/// How long a clean shutdown waits for the broker to acknowledge the final `offline`.
const GOODBYE_WAIT: Duration = Duration::from_secs(1);

/// Messages read from the store at a time by the live cursor.
const READ_CHUNK: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the store task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What the bridge reports about itself (retained JSON on `{status_topic}/bridge`).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BridgeStatus {
    pub connected: bool,
    pub broker: String,
    pub connects: u64,
    pub last_error: Option<String>,
    /// Messages in the backlog still to replay on this connection.
    pub replaying: bool,
    pub queue: QueueStatus,
}

/// One unit of work for the group commit.
enum Job {
    Accept {
        queued: Option<Record>,
        retained: Option<Record>,
    },
    /// Acknowledged upstream: delete in the next commit; `done` is told once that commit is on disk.
    Acked {
        ids: Vec<i64>,
        done: Option<tokio::sync::oneshot::Sender<()>>,
    },
}

/// The accepting side: where the publisher hands messages over (and the bridge its acknowledgements).
#[derive(Clone)]
pub struct Acceptor {
    tx: mpsc::Sender<Job>,
    upstream: Option<Arc<UpstreamSettings>>,
}

impl Acceptor {
    /// Hands a local message over: queued for upstream if a forward rule takes it, and kept as the
    /// topic's last retained value if `keep_retained` and it is retained.
    pub async fn submit(&self, msg: &OutMessage, keep_retained: bool) {
        let accepted_ms = now_ms();
        let queued = self.upstream.as_ref().and_then(|u| u.route(&msg.topic, msg.retain)).and_then(|(t, q, r)| {
            if t.len() + msg.payload.len() + 16 > MAX_PACKET {
                tracing::warn!(topic = %msg.topic, bytes = msg.payload.len(), "message too large for upstream; not queued");
                return None;
            }
            Some(Record { topic: t, payload: msg.payload.clone(), qos: q, retain: r, accepted_ms })
        });
        let retained = (keep_retained && msg.retain).then(|| Record {
            topic: msg.topic.clone(),
            payload: msg.payload.clone(),
            qos: msg.qos,
            retain: true,
            accepted_ms,
        });
        if queued.is_none() && retained.is_none() {
            return;
        }
        if self.tx.send(Job::Accept { queued, retained }).await.is_err() {
            tracing::error!(topic = %msg.topic, "store writer has stopped; message not accepted");
        }
    }

    /// Queues acknowledged ids for deletion in the next commit; with `wait`, returns once it is done.
    async fn acked(&self, ids: Vec<i64>, wait: bool) {
        let (done, rx) = if wait {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        if self.tx.send(Job::Acked { ids, done }).await.is_ok() {
            if let Some(rx) = rx {
                let _ = rx.await;
            }
        }
    }
}

/// Starts the group-commit writer. `committed` is notified after every commit.
pub fn start_writer(
    store: Arc<Store>,
    upstream: Option<Arc<UpstreamSettings>>,
    commit_interval: Duration,
    committed: Arc<Notify>,
) -> (Acceptor, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(ACCEPT_CAPACITY);
    let task = tokio::spawn(write_loop(store, rx, commit_interval, committed));
    (Acceptor { tx, upstream }, task)
}

async fn write_loop(store: Arc<Store>, mut rx: mpsc::Receiver<Job>, every: Duration, committed: Arc<Notify>) {
    let mut open = true;
    while open {
        let Some(first) = rx.recv().await else { break };
        // Deleting acknowledged messages is not urgent (a crash before it only means a resend), so a
        // commit with nothing else in it waits up to `ACK_DEFER` to share the fsync of new readings.
        let urgent = |j: &Job| !matches!(j, Job::Acked { done: None, .. });
        let now = tokio::time::Instant::now();
        let mut deadline = now + if urgent(&first) { every } else { ACK_DEFER.max(every) };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(j)) => {
                    if urgent(&j) {
                        deadline = deadline.min(tokio::time::Instant::now() + every);
                    }
                    batch.push(j)
                }
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_) => break,
            }
        }
        let mut queued = Vec::with_capacity(batch.len());
        let mut retained: Vec<Record> = Vec::new();
        let mut acked = Vec::new();
        let mut waiting = Vec::new();
        for j in batch {
            match j {
                Job::Accept { queued: q, retained: r } => {
                    queued.extend(q);
                    if let Some(r) = r {
                        // Only the newest value per topic matters within one commit.
                        retained.retain(|o| o.topic != r.topic);
                        retained.push(r);
                    }
                }
                Job::Acked { ids, done } => {
                    acked.extend(ids);
                    waiting.extend(done);
                }
            }
        }
        let s = store.clone();
        let n = queued.len();
        let result = tokio::task::spawn_blocking(move || s.append(&queued, &retained, &acked)).await;
        for w in waiting {
            let _ = w.send(());
        }
        match result {
            Ok(Ok(out)) => {
                if out.dropped_oldest > 0 {
                    tracing::warn!(dropped = out.dropped_oldest, "queue full: oldest messages dropped");
                }
                if out.rejected > 0 {
                    tracing::warn!(rejected = out.rejected, "queue full: new messages rejected");
                }
                if out.expired > 0 {
                    tracing::warn!(expired = out.expired, "queued messages older than max_age dropped");
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, messages = n, "could not write to the queue; messages lost"),
            Err(e) => tracing::error!(error = %e, messages = n, "queue writer panicked; messages lost"),
        }
        committed.notify_one();
    }
}

/// Builds the rumqttc options for one connection attempt.
fn mqtt_options(s: &UpstreamSettings) -> MqttOptions {
    let mut o = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
    o.set_keep_alive(s.keepalive);
    o.set_clean_session(false);
    // Packet ids cycle through 4× our window, so a slow acknowledgement never meets a reused id.
    o.set_inflight(s.queue.inflight.saturating_mul(4).max(16));
    o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    o.set_last_will(LastWill::new(s.status_topic.clone(), "offline", QoS::AtLeastOnce, true));
    if let Some((u, p)) = &s.credentials {
        o.set_credentials(u.clone(), p.clone());
    }
    if let Some(tls) = &s.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls.clone())));
    }
    o
}

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// The running bridge.
pub struct Bridge {
    pub status: watch::Receiver<BridgeStatus>,
    task: JoinHandle<()>,
    cancel: CancellationToken,
}

impl Bridge {
    /// `writer` is where acknowledgements go to be deleted (in the writer's next commit).
    pub fn start(
        settings: Arc<UpstreamSettings>,
        store: Arc<Store>,
        writer: Acceptor,
        committed: Arc<Notify>,
        broker: Arc<LocalBroker>,
    ) -> Bridge {
        let initial = BridgeStatus {
            broker: format!("{}:{}", settings.host, settings.port),
            queue: store.status(),
            ..Default::default()
        };
        let (status_tx, status) = watch::channel(initial);
        let cancel = CancellationToken::new();
        let link = Link { settings, store, writer, committed, broker, status: status_tx, cancel: cancel.clone() };
        let task = tokio::spawn(link.run());
        Bridge { status, task, cancel }
    }

    /// Publishes `offline` upstream (if connected), disconnects and waits for the task.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

struct Link {
    settings: Arc<UpstreamSettings>,
    store: Arc<Store>,
    writer: Acceptor,
    committed: Arc<Notify>,
    broker: Arc<LocalBroker>,
    status: watch::Sender<BridgeStatus>,
    cancel: CancellationToken,
}

enum End {
    Cancelled,
    Failed { error: String, connected: bool },
}

impl Link {
    async fn run(self) {
        let mut backoff = self.settings.backoff_min;
        let mut last_logged: Option<String> = None;
        loop {
            let queue = self.store.status();
            self.status.send_modify(|s| s.queue = queue);
            let (client, eventloop) = AsyncClient::new(mqtt_options(&self.settings), self.channel_capacity());
            match self.session(client, eventloop).await {
                End::Cancelled => return,
                End::Failed { error, connected } => {
                    if connected {
                        backoff = self.settings.backoff_min;
                    }
                    // The same error on every retry is logged once, not every few seconds.
                    if last_logged.as_ref() != Some(&error) {
                        tracing::warn!(broker = %self.status.borrow().broker, %error, "upstream connection failed");
                        last_logged = Some(error.clone());
                    }
                    self.status.send_modify(|s| {
                        s.connected = false;
                        s.replaying = false;
                        s.last_error = Some(error);
                    });
                }
            }
            // Full jitter over the upper half: gateways that lost the same broker do not come back in step.
            let wait = backoff / 2 + backoff.mul_f64(fastrand::f64() / 2.0);
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(self.settings.backoff_max);
        }
    }

    fn channel_capacity(&self) -> usize {
        // Room for a full window of publishes plus birth, goodbye and downlink subscriptions, so
        // `try_publish` never finds the request channel full.
        self.settings.queue.inflight as usize * 2 + 16 + self.settings.downlink.len()
    }

    async fn session(&self, client: AsyncClient, mut el: EventLoop) -> End {
        el.network_options.set_connection_timeout(self.settings.connect_timeout.as_secs().max(1));
        // Connect: rumqttc connects on the first poll and yields the CONNACK.
        let session_present = loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return End::Cancelled,
                ev = el.poll() => match ev {
                    Ok(Event::Incoming(Incoming::ConnAck(ack))) => break ack.session_present,
                    Ok(_) => continue,
                    Err(e) => return End::Failed { error: describe(&e), connected: false },
                }
            }
        };
        let mut out = Sender::new(self, client);
        let connected_at = Instant::now();
        tracing::info!(broker = %self.status.borrow().broker, session_present, "upstream connected");
        out.birth();
        for d in &self.settings.downlink {
            if let Err(e) = out.client.try_subscribe(d.filter.clone(), qos(d.qos)) {
                tracing::warn!(filter = %d.filter, error = %e, "downlink subscription not sent");
            }
        }
        if let Err(e) = out.start_replay().await {
            return End::Failed { error: e.to_string(), connected: true };
        }
        self.status.send_modify(|s| {
            s.connected = true;
            s.connects += 1;
            s.last_error = None;
            s.replaying = out.replaying();
        });
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            if let Err(e) = out.fill().await {
                break End::Failed { error: e.to_string(), connected: true };
            }
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    out.goodbye(&mut el).await;
                    break End::Cancelled;
                }
                ev = el.poll() => match ev {
                    Ok(ev) => out.on_event(ev).await,
                    Err(e) => {
                        let up = connected_at.elapsed();
                        break End::Failed { error: format!("{} (after {up:.1?} connected)", describe(&e)), connected: true };
                    }
                },
                _ = self.committed.notified() => {}
                _ = tick.tick() => {
                    out.flush_acks(false).await;
                    let queue = self.store.status();
                    let replaying = out.replaying();
                    self.status.send_if_modified(|s| {
                        let changed = s.queue != queue || s.replaying != replaying;
                        s.queue = queue;
                        s.replaying = replaying;
                        changed
                    });
                }
            }
        };
        // Acknowledged before the link broke: deleted before the next connection reads the backlog,
        // so they are not sent again.
        out.flush_acks(true).await;
        result
    }
}

/// Per-connection sending state.
struct Sender<'a> {
    link: &'a Link,
    client: AsyncClient,
    /// Queue id (None for birth/goodbye) of each publish handed to rumqttc, in order; rumqttc reports
    /// the packet id it chose in the same order.
    awaiting_pkid: VecDeque<Option<i64>>,
    inflight: HashMap<u16, i64>,
    acked: Vec<i64>,
    /// Live cursor: the newest id looked at (sent, or left to the replay).
    live_pos: i64,
    /// Read ahead of `live_pos`, up to `live_read`.
    live_buf: VecDeque<Queued>,
    live_read: i64,
    /// Read ahead by the replay cursor (`replay_pos` is how far it has read).
    replay_buf: VecDeque<Queued>,
    /// Replay cursor: the newest backlog id read; None once the replay is over.
    replay_pos: Option<i64>,
    /// Per topic: messages behind the replay cursor that the replay still has to send.
    backlog: HashMap<String, u64>,
    /// Live messages sent ahead of the replay cursor, which the replay must skip.
    sent_live: HashSet<i64>,
    tokens: f64,
    refilled: Instant,
    saying_goodbye: bool,
    goodbye_pkid: Option<u16>,
}

impl<'a> Sender<'a> {
    fn new(link: &'a Link, client: AsyncClient) -> Self {
        Sender {
            link,
            client,
            awaiting_pkid: VecDeque::new(),
            inflight: HashMap::new(),
            acked: Vec::new(),
            live_pos: 0,
            live_buf: VecDeque::new(),
            live_read: 0,
            replay_buf: VecDeque::new(),
            replay_pos: None,
            backlog: HashMap::new(),
            sent_live: HashSet::new(),
            tokens: 0.0,
            refilled: Instant::now(),
            saying_goodbye: false,
            goodbye_pkid: None,
        }
    }

    fn replaying(&self) -> bool {
        self.replay_pos.is_some()
    }

    fn birth(&mut self) {
        let topic = self.link.settings.status_topic.clone();
        if self.client.try_publish(topic, QoS::AtLeastOnce, true, "online").is_ok() {
            self.awaiting_pkid.push_back(None);
        }
    }

    async fn start_replay(&mut self) -> Result<(), BridgeError> {
        let store = self.link.store.clone();
        let (last, counts) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let last = store.last_id()?;
            Ok((last, store.topic_counts(last)?))
        })
        .await??;
        self.live_pos = last;
        self.live_read = last;
        if counts.is_empty() {
            self.replay_pos = None;
        } else {
            tracing::info!(messages = counts.values().sum::<u64>(), topics = counts.len(), "replaying backlog");
            self.replay_pos = Some(0);
            self.backlog = counts;
        }
        Ok(())
    }

    fn outstanding(&self) -> usize {
        self.awaiting_pkid.len() + self.inflight.len()
    }

    fn room(&self) -> usize {
        (self.link.settings.queue.inflight as usize).saturating_sub(self.outstanding())
    }

    async fn read(&self, after: i64, before: i64, limit: usize) -> Result<Vec<Queued>, BridgeError> {
        let store = self.link.store.clone();
        Ok(tokio::task::spawn_blocking(move || store.read(after, before, limit)).await??)
    }

    fn send(&mut self, id: i64, r: &Record) -> bool {
        let payload = Bytes::clone(&r.payload);
        match self.client.try_publish(r.topic.clone(), qos(r.qos), r.retain, payload) {
            Ok(()) => {
                self.awaiting_pkid.push_back(Some(id));
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "publish request not taken; will retry");
                false
            }
        }
    }

    /// Sends what the window and the replay rate allow: live messages first, then backlog.
    async fn fill(&mut self) -> Result<(), BridgeError> {
        // Live: everything accepted since the connection came up, read ahead in chunks so that an
        // acknowledgement is answered from memory, not with a store read per message.
        while self.room() > 0 {
            if self.live_buf.is_empty() {
                let rows = self.read(self.live_read, i64::MAX, READ_CHUNK).await?;
                let Some(last) = rows.last() else { break };
                self.live_read = last.id;
                self.live_buf.extend(rows);
            }
            let Some(q) = self.live_buf.pop_front() else { break };
            let behind_backlog = self.replay_pos.is_some() && self.backlog.get(&q.record.topic).is_some_and(|n| *n > 0);
            if behind_backlog {
                // Same topic still has older messages to replay: it goes out with them, in order.
                *self.backlog.entry(q.record.topic.clone()).or_default() += 1;
            } else {
                if !self.send(q.id, &q.record) {
                    self.live_buf.push_front(q);
                    return Ok(());
                }
                if self.replay_pos.is_some() {
                    self.sent_live.insert(q.id);
                }
            }
            self.live_pos = q.id;
        }
        // Replay: oldest first, at most `replay_rate` per second, never past what the live side has
        // looked at (`live_pos`), so deferred live messages are sent by the replay, in order.
        let Some(mut pos) = self.replay_pos else { return Ok(()) };
        let rate = self.link.settings.queue.replay_rate as f64;
        let now = Instant::now();
        // At most a fifth of a second's worth saved up, so a replay does not start with a burst.
        self.tokens = (self.tokens + rate * now.duration_since(self.refilled).as_secs_f64()).min((rate / 5.0).max(1.0));
        self.refilled = now;
        while self.room() > 0 && self.tokens >= 1.0 {
            if self.replay_buf.is_empty() {
                let rows = self.read(pos, self.live_pos + 1, READ_CHUNK).await?;
                let Some(last) = rows.last() else {
                    tracing::info!("backlog replayed");
                    self.replay_pos = None;
                    self.backlog.clear();
                    self.sent_live.clear();
                    return Ok(());
                };
                pos = last.id;
                self.replay_pos = Some(pos);
                self.replay_buf.extend(rows);
            }
            let Some(q) = self.replay_buf.pop_front() else { break };
            if self.sent_live.remove(&q.id) {
                continue;
            }
            if !self.send(q.id, &q.record) {
                self.replay_buf.push_front(q);
                break;
            }
            self.tokens -= 1.0;
            if let Some(n) = self.backlog.get_mut(&q.record.topic) {
                *n = n.saturating_sub(1);
            }
        }
        Ok(())
    }

    async fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Outgoing(Outgoing::Publish(pkid)) => match self.awaiting_pkid.pop_front() {
                Some(Some(id)) if pkid == 0 => self.acked.push(id),
                Some(Some(id)) => {
                    self.inflight.insert(pkid, id);
                }
                // Birth or goodbye: only the goodbye's acknowledgement is waited for.
                Some(None) if self.saying_goodbye => self.goodbye_pkid = Some(pkid),
                Some(None) => {}
                None => {}
            },
            Event::Incoming(Incoming::PubAck(a)) => self.ack(a.pkid),
            Event::Incoming(Incoming::PubComp(c)) => self.ack(c.pkid),
            Event::Incoming(Incoming::Publish(p)) => self.downlink(p).await,
            _ => {}
        }
    }

    fn ack(&mut self, pkid: u16) {
        if let Some(id) = self.inflight.remove(&pkid) {
            self.acked.push(id);
        }
    }

    async fn downlink(&self, p: rumqttc::Publish) {
        let Some(rule) = self.link.settings.downlink.iter().find(|d| rumqttc::matches(&p.topic, &d.filter)) else {
            return;
        };
        let topic = p.topic.strip_prefix(rule.strip_prefix.as_str()).unwrap_or(&p.topic).to_string();
        let msg = OutMessage { topic, payload: p.payload, qos: p.qos as u8, retain: p.retain };
        if let Err(e) = self.link.broker.publish(&msg).await {
            tracing::warn!(topic = %msg.topic, error = %e, "downlink message not published locally");
        }
    }

    /// Hands acknowledged ids to the writer, which deletes them with its next commit: the delete
    /// shares the fsync of new readings instead of costing one of its own.
    async fn flush_acks(&mut self, wait: bool) {
        if self.acked.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.acked);
        self.link.writer.acked(ids, wait).await;
    }

    /// Clean stop: retained `offline` (the will is not sent on a clean DISCONNECT), acknowledged
    /// within `GOODBYE_WAIT`, then DISCONNECT.
    async fn goodbye(&mut self, el: &mut EventLoop) {
        let topic = self.link.settings.status_topic.clone();
        self.saying_goodbye = true;
        if self.client.try_publish(topic, QoS::AtLeastOnce, true, "offline").is_ok() {
            self.awaiting_pkid.push_back(None);
        }
        let deadline = tokio::time::Instant::now() + GOODBYE_WAIT;
        let mut acked = false;
        while !acked {
            match tokio::time::timeout_at(deadline, el.poll()).await {
                Ok(Ok(Event::Incoming(Incoming::PubAck(a)))) => {
                    acked = Some(a.pkid) == self.goodbye_pkid;
                    self.ack(a.pkid);
                }
                Ok(Ok(ev)) => self.on_event(ev).await,
                _ => break,
            }
        }
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(200), el.poll()).await;
        self.flush_acks(true).await;
    }
}

/// A connection error as a user should read it (rumqttc nests the TLS reason).
fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::Tls(t) => format!("TLS handshake failed: {t}"),
        ConnectionError::ConnectionRefused(code) => format!("broker refused the connection: {code:?}"),
        ConnectionError::Io(io) => format!("network: {io}"),
        ConnectionError::NetworkTimeout => "connect timed out".into(),
        other => other.to_string(),
    }
}
