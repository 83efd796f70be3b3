//! A `MessagePublish` hook that copies what MQTT clients publish on chosen filters to the gateway
//! (for the upstream bridge). Publishes made in-process by the gateway itself have no session and are
//! left out: the gateway hands those to the bridge directly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use tokio::sync::mpsc;

use crate::topic_map::OutMessage;

pub(super) struct ClientTap {
    pub(super) filters: Vec<String>,
    pub(super) tx: mpsc::Sender<OutMessage>,
    pub(super) dropped: Arc<AtomicU64>,
}

#[async_trait]
impl Handler for ClientTap {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        let Parameter::MessagePublish(Some(_session), _from, publish) = param else { return (true, acc) };
        let p = &publish.inner;
        let topic: &str = &p.topic;
        // `$` topics (the health probe's, broker internals) never leave the gateway.
        if topic.starts_with('$') || !self.filters.iter().any(|f| rumqttc::matches(topic, f)) {
            return (true, acc);
        }
        let msg =
            OutMessage { topic: topic.to_string(), payload: p.payload.clone(), qos: p.qos as u8, retain: p.retain };
        if self.tx.try_send(msg).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(topic, dropped = n, "client message for upstream dropped: the queue writer is behind");
            }
        }
        (true, acc)
    }
}
