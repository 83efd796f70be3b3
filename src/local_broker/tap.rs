//! A `MessagePublish` hook that copies what is published on chosen filters to the gateway: what MQTT
//! clients publish (for the upstream bridge, which gets the gateway's own messages directly), and for
//! commands also what the gateway publishes in-process (the downlink's messages from the cloud).
//! rmqtt 0.24 runs `MessagePublish` hooks *before* its ACL check, so the tap applies the ACL itself: a
//! client's publish the ACL refuses is neither forwarded upstream nor taken as a command.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use tokio::sync::mpsc;

use crate::topic_map::OutMessage;

/// Whether a tap on `filters` takes `topic`: `$` topics (the health probe's, broker internals) never
/// leave the gateway; others when one of the filters matches.
pub(super) fn wants(filters: &[String], topic: &str) -> bool {
    !topic.starts_with('$') && filters.iter().any(|f| rumqttc::matches(topic, f))
}

pub(super) struct ClientTap {
    pub(super) filters: Vec<String>,
    /// Also what the gateway publishes in-process (the downlink's messages from the cloud).
    pub(super) include_own: bool,
    pub(super) acl: Arc<super::acl::Acl>,
    pub(super) tx: mpsc::Sender<OutMessage>,
    pub(super) dropped: Arc<AtomicU64>,
}

#[async_trait]
impl Handler for ClientTap {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        let Parameter::MessagePublish(session, _from, publish) = param else { return (true, acc) };
        if session.is_none() && !self.include_own {
            return (true, acc);
        }
        let p = &publish.inner;
        let topic: &str = &p.topic;
        if !wants(&self.filters, topic) {
            return (true, acc);
        }
        if let Some(s) = session {
            if !self.acl.may_publish(s.id.username.as_deref(), s.id.lid, topic) {
                return (true, acc); // the ACL hook drops it, counts it and logs it
            }
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
