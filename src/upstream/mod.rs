//! The upstream bridge: every message a forward rule takes is committed to the durable store
//! (`writer`), sent to the cloud broker over one MQTT session (`link`) in the order and under the
//! packet ids the `outbox` decides, and deleted only once the broker has acknowledged it.
//!
//! Delivery is at least once, and exactly once for QoS 2 across link cuts and broker restarts that
//! keep the session. Duplicates come only from a crash or power cut of the gateway (a message whose
//! acknowledgement or QoS 2 stage was not yet committed), or from a broker that lost the session
//! while a message was in flight.

mod conn;
pub mod link;
pub mod outbox;
mod packets;
pub mod settings;
pub mod tls;
pub mod writer;

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::local_broker::LocalBroker;
use crate::store::{QueueStatus, Store};
use settings::UpstreamSettings;

pub use writer::{start_writer, Acceptor};

/// Largest MQTT packet either way. Serial readings are tiny; this only stops one odd message from
/// breaking every connection.
pub const MAX_PACKET: usize = 256 * 1024;

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

/// The running bridge.
pub struct Bridge {
    pub status: watch::Receiver<BridgeStatus>,
    task: JoinHandle<()>,
    cancel: CancellationToken,
}

impl Bridge {
    /// `writer` is where acknowledgements go to be deleted (in the writer's next commit);
    /// `committed` is notified by the writer after each commit; `cancel` (a child of the gateway's
    /// token) stops it as `stop` does.
    pub fn start(
        settings: Arc<UpstreamSettings>,
        store: Arc<Store>,
        writer: Acceptor,
        committed: Arc<Notify>,
        broker: Arc<LocalBroker>,
        cancel: CancellationToken,
        panics: &crate::tasks::Panics,
    ) -> Bridge {
        let initial = BridgeStatus {
            broker: format!("{}:{}", settings.host, settings.port),
            queue: store.status(),
            ..Default::default()
        };
        let (status_tx, status) = watch::channel(initial);
        let refusals = std::sync::Mutex::new(crate::logging::Every::new(link::REFUSAL_WARN_EVERY));
        let link = link::Link {
            settings,
            store,
            writer,
            committed,
            broker,
            status: status_tx,
            cancel: cancel.clone(),
            refusals,
        };
        let task = panics.spawn("the upstream link", link.run());
        Bridge { status, task, cancel }
    }

    /// Publishes `offline` upstream (if connected), disconnects and waits for the task.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod model_tests;
