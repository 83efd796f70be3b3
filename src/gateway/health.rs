//! The gateway's health verdict, shared by the systemd watchdog and `/healthz`: a message's round
//! trip through the broker to a real client, a publisher that is alive and making progress, and none
//! of our tasks ended in a panic.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::publish::PUBLISHER_HEARTBEAT;
use crate::local_broker::LocalBroker;
use crate::tasks::Panics;

/// `/healthz` asks what the watchdog asks; a loopback round trip takes milliseconds, and this stays
/// well inside the few seconds a probe (Kubernetes, Prometheus' blackbox) allows.
const HEALTHZ_TIMEOUT: Duration = Duration::from_secs(2);

/// The health verdict, shared by the watchdog and `/healthz`.
#[derive(Clone)]
pub(super) struct Health {
    broker: Arc<LocalBroker>,
    /// Milliseconds since `epoch` when the publisher last completed a loop turn.
    pub(super) progress: Arc<AtomicU64>,
    pub(super) epoch: Instant,
    publisher_done: Arc<AtomicBool>,
    /// Our tasks that panicked; any makes the verdict unhealthy.
    pub(super) panics: Panics,
}

impl Health {
    pub(super) fn new(broker: Arc<LocalBroker>, panics: Panics) -> Health {
        Health {
            broker,
            progress: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
            publisher_done: Arc::new(AtomicBool::new(false)),
            panics,
        }
    }

    /// Held by the publisher task: the verdict turns unhealthy once it is dropped, a panic included.
    pub(super) fn publisher_guard(&self) -> DoneOnDrop {
        DoneOnDrop(self.publisher_done.clone())
    }

    /// The verdict as `/healthz` asks for it.
    pub(super) fn healthz(&self) -> crate::metrics::HealthCheck {
        let h = self.clone();
        Arc::new(move || {
            let h = h.clone();
            Box::pin(async move { h.check(HEALTHZ_TIMEOUT).await })
        })
    }

    pub(super) async fn check(&self, timeout: Duration) -> Result<(), String> {
        if let Some(task) = self.panics.first() {
            return Err(format!("a task panicked ({task})"));
        }
        if !self.broker.is_running() {
            return Err("the broker's server task has ended".into());
        }
        self.broker.round_trip(timeout).await.map_err(|e| e.to_string())?;
        let last = Duration::from_millis(self.progress.load(Ordering::Relaxed));
        let idle = self.epoch.elapsed().saturating_sub(last);
        if self.publisher_done.load(Ordering::Relaxed) {
            return Err("the publisher has stopped".into());
        }
        if idle > PUBLISHER_HEARTBEAT * 5 {
            return Err(format!("the publisher has made no progress for {idle:?}"));
        }
        Ok(())
    }
}

/// Sets its flag when dropped.
pub(super) struct DoneOnDrop(Arc<AtomicBool>);

impl Drop for DoneOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
