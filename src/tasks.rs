//! Our long-lived tasks, spawned so that a panic in one is seen: recorded by name, logged, and turned
//! into an unhealthy verdict (so the systemd watchdog restarts the service).
//!
//! Why not `panic = "abort"`: the release build unwinds, so a panic in the engine's handling of one LAN
//! connection (rmqtt's packet decoding, which our fuzz targets do not reach) ends that connection, not
//! the gateway and everyone's sessions with it. But tokio catches a task's panic too, and a port
//! reader or the queue writer that panicked would otherwise leave the gateway half dead while its
//! health check still passed.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use tokio::task::JoinHandle;

/// The tasks that ended in a panic, each as "name: message". Cheap to clone; all clones share it.
#[derive(Clone, Default, Debug)]
pub struct Panics(Arc<Mutex<Vec<String>>>);

impl Panics {
    /// Spawns `task`; if it panics, `name` and the panic's message are recorded and logged.
    pub fn spawn<F>(&self, name: impl Into<String>, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (name, panics) = (name.into(), self.clone());
        tokio::spawn(async move {
            if let Err(panic) = AssertUnwindSafe(task).catch_unwind().await {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".into());
                tracing::error!(task = %name, panic = %message, "a gateway task panicked; the health check fails from now on, so a watchdog restarts the service");
                panics.0.lock().unwrap_or_else(|e| e.into_inner()).push(format!("{name}: {message}"));
            }
        })
    }

    /// The first task that panicked, if any.
    pub fn first(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).first().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_recorded_by_name_and_a_finished_one_is_not() {
        let panics = Panics::default();
        panics.spawn("quiet", async {}).await.expect("a caught panic still ends the task normally");
        assert_eq!(panics.first(), None);
        let n = 3;
        panics
            .spawn("port t", async move {
                let v: Vec<u8> = Vec::new();
                let _ = v[n];
            })
            .await
            .unwrap();
        let got = panics.first().expect("recorded");
        assert!(got.starts_with("port t: index out of bounds"), "{got}");
        panics.spawn("port u", async { panic!("boom") }).await.unwrap();
        assert_eq!(panics.first().as_deref(), Some(got.as_str()), "the first one is what health reports");
        assert_eq!(panics.0.lock().unwrap().last().map(String::as_str), Some("port u: boom"));
    }
}
