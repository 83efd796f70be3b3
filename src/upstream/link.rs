//! The connection to the cloud broker: TCP (or TLS), one MQTT 3.1.1 session with
//! `clean_session=false`, keepalive, the downlink, and reconnecting with backoff. It does the I/O
//! and nothing else: what to send and what an acknowledgement means is the outbox's.
//!
//! Packets are encoded and decoded with rumqttc's MQTT codec (`rumqttc::mqttbytes::v4`); rumqttc's
//! own event loop is not used, because it picks packet ids itself and forgets them with every
//! connection, which loses QoS 2 messages on a resumed session (see `outbox`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::conn::{connect, Ack, Conn, In, LinkError};
use super::settings::UpstreamSettings;
use crate::local_broker::LocalBroker;
use crate::store::{now_ms, Record, Store, StoreError};
use crate::topic_map::OutMessage;
use crate::upstream::outbox::Outbox;
use crate::upstream::writer::Acceptor;
use crate::upstream::BridgeStatus;

/// How often the link hands acknowledgements and stages to the writer and refreshes its status.
const TICK: Duration = Duration::from_millis(50);

/// How long a clean shutdown waits for the broker to acknowledge the final `offline`.
const GOODBYE_WAIT: Duration = Duration::from_secs(1);

pub(crate) struct Link {
    pub settings: Arc<UpstreamSettings>,
    pub store: Arc<Store>,
    pub writer: Acceptor,
    pub committed: Arc<Notify>,
    pub broker: Arc<LocalBroker>,
    pub status: watch::Sender<BridgeStatus>,
    pub cancel: CancellationToken,
    /// Warnings about messages the broker refused (MQTT 5), at most one per `REFUSAL_WARN_EVERY`.
    pub refusals: std::sync::Mutex<crate::logging::Every>,
}

/// A broker that refuses one message (an ACL, a quota) usually refuses them all: one warning per
/// this, with the count, not one per message.
pub(crate) const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(10);

enum End {
    Cancelled,
    Failed { error: String, connected: bool },
}

impl Link {
    pub async fn run(self) {
        let mut outbox = Outbox::new(self.settings.queue.inflight, self.settings.queue.replay_rate, Instant::now());
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.in_flight()).await {
            Ok(Ok(flights)) => {
                if !flights.is_empty() {
                    tracing::info!(messages = flights.len(), "QoS 2 messages in flight before the restart");
                }
                outbox.restore(flights);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "QoS 2 stages not read; their messages are sent again"),
            Err(e) => tracing::warn!(error = %e, "QoS 2 stages not read; their messages are sent again"),
        }
        // QoS 2 messages received from the cloud, PUBREC'd and not yet released (MQTT 3.1.1 §4.3.3
        // method B: delivered once, on first receipt).
        let mut held = HashSet::new();
        let mut backoff = self.settings.backoff_min;
        let mut last_logged: Option<String> = None;
        loop {
            let queue = self.store.status();
            self.status.send_modify(|s| s.queue = queue);
            let end = match connect(&self.settings).await {
                Ok((conn, session_present)) => self.session(conn, session_present, &mut outbox, &mut held).await,
                Err(e) => End::Failed { error: e.to_string(), connected: false },
            };
            outbox.disconnected();
            // Acknowledged before the link broke: deleted before the next connection reads the
            // backlog, so they are not sent again.
            self.writer.progress(outbox.take_acked(), outbox.take_refused(), outbox.take_stages(), true).await;
            match end {
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

    fn status_record(&self, payload: &'static str) -> Record {
        Record {
            topic: self.settings.status_topic.clone(),
            payload: payload.into(),
            qos: 1,
            retain: true,
            accepted_ms: now_ms(),
        }
    }

    async fn session(
        &self,
        mut conn: Conn,
        session_present: bool,
        outbox: &mut Outbox,
        held: &mut HashSet<u16>,
    ) -> End {
        let connected_at = Instant::now();
        let failed = |e: LinkError| End::Failed {
            error: format!("{e} (after {:.1?} connected)", connected_at.elapsed()),
            connected: true,
        };
        tracing::info!(broker = %self.status.borrow().broker, session_present, receive_maximum = ?conn.receive_maximum, "upstream connected");
        outbox.limit_window(conn.receive_maximum);
        if !session_present {
            held.clear();
        }
        let store = self.store.clone();
        let split = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let last = store.last_id()?;
            Ok((last, store.topic_counts(last)?))
        })
        .await;
        let (last, counts) = match split {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return failed(e.into()),
            Err(e) => return failed(e.into()),
        };
        if !counts.is_empty() {
            tracing::info!(messages = counts.values().sum::<u64>(), topics = counts.len(), "replaying backlog");
        }
        // Resends owed from the last connection go first, then the birth and the subscriptions.
        outbox.connected(session_present, last, counts, Instant::now());
        outbox.send_status(self.status_record("online"));
        outbox.send_subscribe(self.settings.downlink.iter().map(|d| (d.filter.clone(), d.qos)).collect());
        self.status.send_modify(|s| {
            s.connected = true;
            s.connects += 1;
            s.last_error = None;
            s.replaying = outbox.replaying();
        });
        let keepalive = self.settings.keepalive;
        let mut ping_at = Instant::now() + keepalive;
        let mut awaiting_pong = false;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_replaying = outbox.replaying();
        loop {
            if let Err(e) = self.fill(outbox, &mut conn).await {
                return failed(e);
            }
            if let Err(e) = conn.flush().await {
                return failed(e);
            }
            if was_replaying && !outbox.replaying() {
                tracing::info!("backlog replayed");
            }
            was_replaying = outbox.replaying();
            let wake = outbox.replay_wakeup(Instant::now()).unwrap_or(ping_at).min(ping_at);
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    self.goodbye(outbox, &mut conn, held).await;
                    return End::Cancelled;
                }
                p = conn.read() => match p {
                    Ok(p) => {
                        if matches!(p, In::PingResp) {
                            awaiting_pong = false;
                        }
                        if let Err(e) = self.incoming(p, outbox, &mut conn, held).await {
                            return failed(e);
                        }
                    }
                    Err(e) => return failed(e),
                },
                _ = self.committed.notified() => outbox.committed(),
                _ = tick.tick() => {
                    self.writer.progress(outbox.take_acked(), outbox.take_refused(), outbox.take_stages(), false).await;
                    let queue = self.store.status();
                    let replaying = outbox.replaying();
                    self.status.send_if_modified(|s| {
                        let changed = s.queue != queue || s.replaying != replaying;
                        s.queue = queue;
                        s.replaying = replaying;
                        changed
                    });
                }
                _ = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= ping_at {
                        if awaiting_pong {
                            return failed(LinkError::Silent(keepalive));
                        }
                        if let Err(e) = conn.ping() {
                            return failed(e);
                        }
                        awaiting_pong = true;
                        ping_at = Instant::now() + keepalive;
                    }
                }
            }
        }
    }

    /// Puts on the wire what the outbox allows now, reading the store as it asks.
    async fn fill(&self, outbox: &mut Outbox, conn: &mut Conn) -> Result<(), LinkError> {
        loop {
            if let Some(r) = outbox.next_read() {
                let store = self.store.clone();
                let rows = tokio::task::spawn_blocking(move || store.read(r.after, r.before, r.limit)).await??;
                outbox.rows(r, rows);
                continue;
            }
            match outbox.next_send(Instant::now()) {
                Some(s) => conn.put(&s),
                None if outbox.next_read().is_some() => continue,
                None => return Ok(()),
            }
        }
    }

    async fn incoming(
        &self,
        p: In,
        outbox: &mut Outbox,
        conn: &mut Conn,
        held: &mut HashSet<u16>,
    ) -> Result<(), LinkError> {
        match p {
            In::PubAck { pkid, refused: None } => {
                outbox.puback(pkid);
            }
            In::PubRec { pkid, refused: None } => {
                let rel = outbox.pubrec(pkid);
                conn.put(&rel);
            }
            // MQTT 5: the broker will not deliver it (not authorized, quota, bad topic…); sending it
            // again would be refused again, so it leaves the queue, counted as `refused`.
            In::PubAck { pkid, refused: Some(why) } | In::PubRec { pkid, refused: Some(why) } => {
                if let Some(topic) = outbox.refused(pkid) {
                    let mut warn = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
                    warn.note(1, |n| {
                        tracing::warn!(%topic, reason = %why, refused_since_last = n,
                            "the cloud broker refused a message ({n} since the last warning); dropped from the queue")
                    });
                }
            }
            In::PubComp { pkid } => outbox.pubcomp(pkid),
            In::SubAck { pkid, failed } => {
                outbox.suback(pkid);
                if failed {
                    tracing::warn!("the cloud broker refused a downlink subscription (check its ACL)");
                }
            }
            In::Publish { topic, payload, qos, retain, pkid } => match qos {
                0 => self.downlink(topic, payload, qos, retain).await,
                1 => {
                    self.downlink(topic, payload, qos, retain).await;
                    conn.ack(Ack::Qos1, pkid)?;
                }
                _ => {
                    if held.insert(pkid) {
                        self.downlink(topic, payload, qos, retain).await;
                    }
                    conn.ack(Ack::Received, pkid)?;
                }
            },
            In::PubRel { pkid } => {
                held.remove(&pkid);
                conn.ack(Ack::Complete, pkid)?;
            }
            In::Disconnect { reason: None } => return Err(LinkError::Closed),
            In::Disconnect { reason: Some(why) } => return Err(LinkError::Disconnected(why)),
            In::ConnAck { .. } | In::PingResp | In::Other(_) => {}
        }
        Ok(())
    }

    async fn downlink(&self, topic: String, payload: bytes::Bytes, qos: u8, retain: bool) {
        let Some(rule) = self.settings.downlink.iter().find(|d| rumqttc::matches(&topic, &d.filter)) else {
            return;
        };
        let topic = topic.strip_prefix(rule.strip_prefix.as_str()).unwrap_or(&topic).to_string();
        let msg = OutMessage { topic, payload, qos, retain };
        if let Err(e) = self.broker.publish(&msg).await {
            tracing::warn!(topic = %msg.topic, error = %e, "downlink message not published locally");
        }
    }

    /// Clean stop: retained `offline` (the will is not sent on a clean DISCONNECT), acknowledged
    /// within `GOODBYE_WAIT`, then DISCONNECT.
    async fn goodbye(&self, outbox: &mut Outbox, conn: &mut Conn, held: &mut HashSet<u16>) {
        outbox.send_status(self.status_record("offline"));
        let deadline = Instant::now() + GOODBYE_WAIT;
        loop {
            if self.fill(outbox, conn).await.is_err() || conn.flush().await.is_err() {
                break;
            }
            if !outbox.status_unacked() {
                break;
            }
            match tokio::time::timeout_at(deadline, conn.read()).await {
                Ok(Ok(p)) => {
                    if self.incoming(p, outbox, conn, held).await.is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        // Unacknowledged `offline`: no DISCONNECT, so the broker publishes the will (`offline`) instead.
        if !outbox.status_unacked() && conn.disconnect().is_ok() {
            // Long enough for a DISCONNECT to reach a live broker; a dead one is not waited for.
            let _ = tokio::time::timeout(Duration::from_millis(200), conn.flush()).await;
        }
    }
}
