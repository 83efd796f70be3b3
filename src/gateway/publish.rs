//! The publisher: port events in, topic maps applied, messages out to the broker and the durable
//! queue; and the gateway's own `online`/`offline` status message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::Config;
use crate::local_broker::LocalBroker;
use crate::serial::port::PortEvent;
use crate::topic_map::{OutMessage, TopicMap};
use crate::upstream::Acceptor;

/// How often an idle publisher still reports progress, so "no progress" means stuck, not quiet.
pub(super) const PUBLISHER_HEARTBEAT: Duration = Duration::from_secs(1);

/// The gateway's retained status message.
pub(super) fn status(config: &Config, online: bool) -> OutMessage {
    OutMessage {
        topic: config.gateway.status_topic.clone(),
        payload: Bytes::from_static(if online { b"online" } else { b"offline" }),
        qos: 1,
        retain: true,
    }
}

/// Runs until every sender of `rx` is gone and what they sent is published; `progress` holds the
/// milliseconds since `epoch` of the last loop turn (the watchdog's "publisher made progress").
pub(super) async fn publish_loop(
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
            PortEvent::Message(msg) => {
                if let Err(e) = broker.publish(&msg).await {
                    tracing::error!(topic = %msg.topic, error = %e, "message not published");
                }
                if let Some(d) = &durable {
                    d.submit(&msg, false).await;
                }
            }
            PortEvent::Live(msg) => {
                let _ = broker.publish(&msg).await;
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
