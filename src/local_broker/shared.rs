//! `$share/GROUP/FILTER` subscriptions: each message goes to one member of the group, round robin
//! over the members that are online (rmqtt's built-in choice answers "nobody", which drops them).

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use rmqtt::context::ServerContext;
use rmqtt::subscribe::SharedSubscription;
use rmqtt::types::{
    ClientId, Id, IsOnline, NodeId, SharedGroup, SubscriptionIdentifier, SubscriptionOptions, TopicName,
};

#[derive(Default)]
pub(super) struct RoundRobin {
    next: AtomicUsize,
}

type Member = (NodeId, ClientId, SubscriptionOptions, Option<Vec<SubscriptionIdentifier>>, Option<IsOnline>);

#[async_trait]
impl SharedSubscription for RoundRobin {
    fn is_supported(&self) -> bool {
        true
    }

    async fn choice(
        &self,
        _scx: &ServerContext,
        _group: &SharedGroup,
        _publisher: &Id,
        _topic: &TopicName,
        members: &[Member],
    ) -> Option<(usize, IsOnline)> {
        if members.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // Online members first; if none is, the message waits in an offline member's session.
        (0..members.len())
            .map(|k| (start + k) % members.len())
            .find(|&i| members[i].4 != Some(false))
            .map(|i| (i, true))
            .or(Some((start % members.len(), false)))
    }
}
