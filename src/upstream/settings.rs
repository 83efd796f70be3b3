//! The bridge's settings as it runs them (`upstream:` resolved by `config`): broker, TLS, backoff,
//! and the forward and downlink rules, with the routing of a local message by the forward rules.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::store::QueueSettings;

/// `upstream.protocol`: the MQTT version spoken to the cloud broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1.1: what every broker speaks.
    #[default]
    V311,
    /// MQTT 5: each message carries its accept time as a user property and expires upstream when the
    /// queue would have dropped it; refusals come with reason codes.
    V5,
}

impl<'de> Deserialize<'de> for Protocol {
    /// `5` (a YAML number), `"5"`, `5.0` or `"3.1.1"`.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(f64),
            Text(String),
        }
        match Written::deserialize(d)? {
            Written::Number(5.0) => Ok(Protocol::V5),
            Written::Text(t) if t == "5" || t == "5.0" => Ok(Protocol::V5),
            Written::Text(t) if t == "3.1.1" => Ok(Protocol::V311),
            Written::Number(n) => {
                Err(serde::de::Error::custom(format!("MQTT {n} is not spoken here: use `3.1.1` or `5`")))
            }
            Written::Text(t) => {
                Err(serde::de::Error::custom(format!("MQTT `{t}` is not spoken here: use `3.1.1` or `5`")))
            }
        }
    }
}

/// The validated `upstream:` section.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub host: String,
    pub protocol: Protocol,
    pub port: u16,
    pub client_id: String,
    pub keepalive: Duration,
    pub connect_timeout: Duration,
    pub credentials: Option<(String, String)>,
    /// None: plain TCP (written out as `tls: {enabled: false}`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub status_topic: String,
    pub forward: Vec<ForwardRule>,
    pub downlink: Vec<DownlinkRule>,
    pub queue: QueueSettings,
    /// The section as written; equal fingerprints mean a reload leaves the bridge alone.
    pub fingerprint: String,
}

/// One `forward:` rule: local topics matching `filter` go upstream under `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRule {
    pub filter: String,
    pub prefix: String,
    pub qos: u8,
    pub retain: RetainPolicy,
    pub from_clients: bool,
}

impl UpstreamSettings {
    /// The upstream topic, QoS and retain flag for a local message, if a rule takes it.
    pub fn route(&self, topic: &str, retain: bool) -> Option<(String, u8, bool)> {
        let rule = self.forward.iter().find(|r| rumqttc::matches(topic, &r.filter))?;
        let retain = match rule.retain {
            RetainPolicy::Keep => retain,
            RetainPolicy::Always => true,
            RetainPolicy::Never => false,
        };
        Some((format!("{}{topic}", rule.prefix), rule.qos, retain))
    }
}

/// One `downlink:` rule: cloud topics matching `filter` are republished locally without `strip_prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownlinkRule {
    pub filter: String,
    pub strip_prefix: String,
    pub qos: u8,
}

/// A forward rule's `retain:`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetainPolicy {
    /// As the local message had it.
    #[default]
    Keep,
    Always,
    Never,
}
