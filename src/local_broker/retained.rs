//! The retained store's bounds: a count and a byte total from the config, wrapped around the
//! retainer plugin's storage. A new retained topic beyond either bound is not stored (the message
//! is still delivered live), and that is logged and counted; updating or clearing a topic already
//! stored always works. The gateway's own retained messages (availability, stats, readings) are
//! counted but never refused: the bounds are for what LAN clients retain. (The plugin's own count limit also refuses updates once full, and says so
//! only at warn level of the engine's log.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use rmqtt::retain::RetainStorage;
use rmqtt::types::{Retain, TopicFilter, TopicName};

/// Every refusal is logged up to this many times, then one in this many.
const LOG_EVERY: u64 = 100;

pub(super) struct Bounded {
    pub(super) inner: Box<dyn RetainStorage>,
    pub(super) max_messages: usize,
    pub(super) max_bytes: usize,
    /// Stored topics and their payload sizes, and the total.
    sizes: Mutex<(HashMap<TopicName, usize>, usize)>,
    pub(super) refused: std::sync::Arc<AtomicU64>,
}

impl Bounded {
    pub(super) fn new(
        inner: Box<dyn RetainStorage>,
        max_messages: usize,
        max_bytes: usize,
        refused: std::sync::Arc<AtomicU64>,
    ) -> Bounded {
        Bounded { inner, max_messages, max_bytes, sizes: Mutex::default(), refused }
    }
}

#[async_trait]
impl RetainStorage for Bounded {
    fn enable(&self) -> bool {
        self.inner.enable()
    }

    async fn set(&self, topic: &TopicName, retain: Retain, expiry: Option<Duration>) -> rmqtt::Result<()> {
        let len = retain.publish.payload.len();
        {
            let mut s = self.sizes.lock().unwrap();
            let (topics, bytes) = &mut *s;
            let old = topics.get(topic).copied();
            if len == 0 {
                if let Some(old) = topics.remove(topic) {
                    *bytes -= old;
                }
            } else {
                let total = *bytes - old.unwrap_or(0) + len;
                let new_topic = old.is_none();
                let over = (new_topic && topics.len() >= self.max_messages) || total > self.max_bytes;
                if over && !retain.from.is_system() {
                    let n = self.refused.fetch_add(1, Ordering::Relaxed);
                    if n < LOG_EVERY || n % LOG_EVERY == 0 {
                        tracing::warn!(topic = %topic, stored = topics.len(), bytes = *bytes,
                            max_retained = self.max_messages, max_retained_bytes = self.max_bytes,
                            refused_so_far = n + 1,
                            "retained store full: message delivered but not retained");
                    }
                    return Ok(());
                }
                topics.insert(topic.clone(), len);
                *bytes = total;
            }
        }
        self.inner.set(topic, retain, expiry).await
    }

    async fn get(&self, filter: &TopicFilter) -> rmqtt::Result<Vec<(TopicName, Retain)>> {
        self.inner.get(filter).await
    }

    async fn count(&self) -> isize {
        self.inner.count().await
    }

    async fn max(&self) -> isize {
        self.inner.max().await
    }
}
