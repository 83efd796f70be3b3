//! Retained status reports on `{status_topic}/…`: per-port and broker counters every
//! `stats_interval`, and the bridge's state when it changes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::local_broker::LocalBroker;
use crate::serial::PortStats;
use crate::topic_map::OutMessage;
use crate::upstream::BridgeStatus;

/// Publishes every port's counters and the broker's, retained, every `every`, until cancelled.
pub(super) async fn report_stats(
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

/// Publishes the bridge's state, retained, when it changes (at most once a second, since the queue
/// depth changes with every reading) and at least every `every`.
pub(super) async fn report_bridge(
    broker: Arc<LocalBroker>,
    topic: String,
    mut status: watch::Receiver<BridgeStatus>,
    store: Arc<crate::store::Store>,
    every: Duration,
    cancel: CancellationToken,
) {
    // Fast enough to follow an outage by eye, slow enough not to add a message per reading.
    const MIN_SPACING: Duration = Duration::from_secs(1);
    loop {
        let mut snapshot = status.borrow_and_update().clone();
        // The queue's figures as of now: the link updates its status only when something happens,
        // and an idle queue's oldest message keeps ageing.
        snapshot.queue = store.status();
        let msg = OutMessage {
            topic: topic.clone(),
            payload: serde_json::to_vec(&snapshot).unwrap_or_default().into(),
            qos: 0,
            retain: true,
        };
        if broker.publish(&msg).await.is_err() {
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(MIN_SPACING) => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = tokio::time::timeout(every, status.changed()) => {
                if let Ok(Err(_)) = changed {
                    return;
                }
            }
        }
    }
}
