//! `ser2mqtt tap`'s gateway side: while a tap asks (a request on `{status_topic}/live/request`), each
//! frame a port reads is described on `{status_topic}/live/{port}`: its bytes, the verdict (ok,
//! garbled, ignored, decode error), why, and the decoded values. The running gateway keeps its
//! device; nothing is traced while no tap asks.

pub mod client;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::decode::Value;
use crate::serial::PortStats;
use crate::topic_map::OutMessage;

/// A tap asks for this long at most; it renews its request while it runs, so a tap that was killed
/// stops costing the gateway anything within this.
pub const MAX_SECONDS: u64 = 60;

/// Where a port's frames are described.
pub fn topic(status_topic: &str, port: &str) -> String {
    format!("{status_topic}/live/{port}")
}

/// Where a tap asks for them.
pub fn request_topic(status_topic: &str) -> String {
    format!("{status_topic}/live/request")
}

/// A tap's request: describe `port`'s frames (every port's if none) for `seconds`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    #[serde(default)]
    pub port: Option<String>,
    pub seconds: u64,
}

/// What became of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Framed, checked, decoded: published.
    Ok,
    /// Dropped by framing or its checksum.
    Garbled,
    /// No pattern claims it, or an `ignore` rule matches: not an error.
    Ignored,
    /// Claimed by the decoder but not decodable.
    DecodeError,
}

/// One frame as `ser2mqtt tap` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Event {
    /// When the frame was cut from the byte stream (RFC 3339, ms).
    pub time: String,
    pub verdict: Verdict,
    /// The frame's bytes, as hex (absent where framing dropped bytes it does not keep).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Decoded and transformed values, in the decoder's order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Event {
    pub fn new(received: chrono::DateTime<chrono::Utc>, verdict: Verdict) -> Event {
        let time = received.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        Event { time, verdict, hex: None, why: None, fields: None }
    }

    pub fn bytes(mut self, bytes: &[u8]) -> Event {
        self.hex = Some(crate::bytes::hex(bytes));
        self
    }

    pub fn why(mut self, why: impl Into<String>) -> Event {
        self.why = Some(why.into());
        self
    }

    pub fn fields(mut self, fields: &[(Arc<str>, Value)]) -> Event {
        self.fields = Some(fields.iter().map(|(n, v)| (n.to_string(), v.to_json())).collect());
        self
    }

    /// As published on the port's live topic: QoS 0, not retained (a trace, not a state).
    pub fn message(&self, topic: &str) -> OutMessage {
        let payload = serde_json::to_vec(self).unwrap_or_default();
        OutMessage { topic: topic.to_string(), payload: Bytes::from(payload), qos: 0, retain: false }
    }
}

/// Applies taps' requests (already through the broker's ACL) to the running ports until `rx` ends.
pub async fn serve_requests(
    mut rx: mpsc::Receiver<OutMessage>,
    ports: watch::Receiver<Vec<(Arc<str>, Arc<PortStats>)>>,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return,
            msg = rx.recv() => match msg {
                Some(m) => m,
                None => return,
            },
        };
        let Ok(req) = serde_json::from_slice::<Request>(&msg.payload) else {
            tracing::debug!(topic = %msg.topic, "live request is not {{\"port\":…,\"seconds\":…}}; ignored");
            continue;
        };
        let until = chrono::Utc::now().timestamp_millis() + 1000 * req.seconds.min(MAX_SECONDS) as i64;
        for (name, stats) in ports.borrow().iter() {
            if req.port.as_deref().is_none_or(|p| p == &**name) {
                stats.live_until.store(until, Ordering::Relaxed);
            }
        }
    }
}
