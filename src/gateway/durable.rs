//! The durable side, when a store is configured: the store (retained readings republished at
//! start, values of removed maps cleared), its group-commit writer, the client tap and the bridge.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::GatewayError;
use crate::config::Config;
use crate::local_broker::LocalBroker;
use crate::store::Store;
use crate::tasks::Panics;
use crate::topic_map::OutMessage;
use crate::upstream::{start_writer, Acceptor, Bridge};

/// The store, its group-commit writer and the upstream bridge, when configured.
pub(super) struct Durable {
    pub(super) store: Arc<Store>,
    pub(super) acceptor: Acceptor,
    writer: JoinHandle<()>,
    pub(super) bridge: Option<Bridge>,
    /// Feeds client publishes (forward rules with `from_clients`) to the acceptor.
    tap: Option<(JoinHandle<()>, CancellationToken)>,
}

impl Durable {
    /// Stops in order: the client tap drains what it holds, the bridge says `offline` upstream and
    /// hands over its last acknowledgements, then the writer, with every handle gone, commits what
    /// is left and ends.
    pub(super) async fn stop(self) {
        if let Some((task, cancel)) = self.tap {
            cancel.cancel();
            let _ = task.await;
        }
        if let Some(b) = self.bridge {
            b.stop().await;
        }
        drop(self.acceptor);
        let _ = self.writer.await;
    }
}

/// Opens the store, republishes the retained readings it kept, and starts the writer and bridge.
/// The bridge and the tap run on children of `cancel`.
pub(super) async fn open_durable(
    config: &Config,
    path: PathBuf,
    broker: &Arc<LocalBroker>,
    cancel: &CancellationToken,
    panics: &Panics,
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
    let (acceptor, writer) = start_writer(store.clone(), upstream.clone(), interval, committed.clone(), panics);
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
            let stop = cancel.child_token();
            let stopped = stop.clone();
            let task = panics.spawn("the clients' upstream tap", async move {
                loop {
                    tokio::select! {
                        m = rx.recv() => match m {
                            Some(m) => a.submit(&m, false).await,
                            None => return,
                        },
                        _ = stopped.cancelled() => break,
                    }
                }
                // Drained, not dropped: what clients published before the stop is still accepted.
                rx.close();
                while let Some(m) = rx.recv().await {
                    a.submit(&m, false).await;
                }
            });
            tap = Some((task, stop));
        }
    }
    let bridge = upstream.map(|u| {
        Bridge::start(u, store.clone(), acceptor.clone(), committed, broker.clone(), cancel.child_token(), panics)
    });
    Ok(Durable { store, acceptor, writer, bridge, tap })
}
