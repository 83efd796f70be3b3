//! The `upstream:` section: the cloud broker the gateway bridges to, which topics go up (and come
//! down), and the durable queue in between. Raw serde structs and their validation live together here
//! because nothing else in the configuration refers to them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use super::Problems;
use crate::local_broker::acl::check_filter;
use crate::qos::Qos;
pub use crate::store::{QueueSettings, SyncMode, WhenFull};
pub use crate::upstream::settings::{DownlinkRule, ForwardRule, RetainPolicy, UpstreamSettings};
pub use crate::upstream::tls::TlsSettings;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Host name or address of the cloud broker.
    pub host: String,
    /// `3.1.1` (default) or `5`.
    #[serde(default)]
    pub protocol: crate::upstream::settings::Protocol,
    /// Default 8883 with TLS, 1883 without.
    pub port: Option<u16>,
    /// `{gateway}` is filled in. The broker keeps the session under this id (clean_session=false),
    /// so it must be unique per gateway.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    #[serde(default = "default_keepalive", with = "humantime_serde")]
    pub keepalive: Duration,
    /// TCP connect, TLS handshake and CONNACK together must finish within this.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
    /// TLS is on unless `enabled: false` is written out; there is no "skip verification" switch.
    #[serde(default)]
    pub tls: TlsSettings,
    #[serde(default)]
    pub reconnect: RawReconnect,
    /// Retained `online` once connected, retained `offline` as the will and on a clean stop.
    #[serde(default = "default_status_topic")]
    pub status_topic: String,
    /// Which local topics go up; a message goes up once, by the first rule whose filter matches.
    #[serde(default = "default_forward")]
    pub forward: Vec<RawForward>,
    /// Cloud topics the gateway subscribes to and republishes into the local broker.
    #[serde(default)]
    pub downlink: Vec<RawDownlink>,
    #[serde(default)]
    pub queue: RawQueue,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReconnect {
    #[serde(default = "default_backoff_min", with = "humantime_serde")]
    pub min: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub max: Duration,
}

impl Default for RawReconnect {
    fn default() -> Self {
        RawReconnect { min: default_backoff_min(), max: default_backoff_max() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    /// Local topic filter (`sensors/#`).
    pub filter: String,
    /// Put in front of the local topic upstream; `{gateway}` is filled in (`sites/{gateway}/`).
    #[serde(default)]
    pub prefix: String,
    /// Upstream QoS. 0 leaves the queue as soon as it is written to the socket (no acknowledgement
    /// exists), so only 1 and 2 carry the no-loss promise.
    #[serde(default = "default_qos")]
    pub qos: Qos,
    #[serde(default)]
    pub retain: RetainPolicy,
    /// Also forward what MQTT clients of the embedded broker publish on this filter (not only the
    /// gateway's own readings). Off by default so a dashboard's commands stay local.
    #[serde(default)]
    pub from_clients: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDownlink {
    /// Cloud topic filter; `{gateway}` is filled in.
    pub filter: String,
    /// Removed from the front of the cloud topic before it is published locally.
    #[serde(default)]
    pub strip_prefix: String,
    #[serde(default = "default_qos")]
    pub qos: Qos,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    /// Where `queue.db` lives; default `$STATE_DIRECTORY` (set by systemd) or `/var/lib/ser2mqtt`.
    pub dir: Option<PathBuf>,
    /// Disk the queue may use (topics + payloads); `64 MiB` holds about a week of 10 readings/min.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// Readings older than this are dropped (counted) rather than sent.
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    #[serde(default)]
    pub when_full: WhenFull,
    /// Readings are written in one transaction per this interval: what a power cut can lose.
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    #[serde(default)]
    pub sync: SyncMode,
    /// Messages per second when replaying a backlog after an outage.
    #[serde(default = "default_replay_rate")]
    pub replay_rate: u32,
    /// Messages sent but not yet acknowledged.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
}

impl Default for RawQueue {
    fn default() -> Self {
        RawQueue {
            dir: None,
            max_bytes: default_max_bytes(),
            max_age: default_max_age(),
            when_full: WhenFull::default(),
            commit_interval: default_commit_interval(),
            sync: SyncMode::default(),
            replay_rate: default_replay_rate(),
            inflight: default_inflight(),
        }
    }
}

fn default_client_id() -> String {
    "ser2mqtt-{gateway}".into()
}
fn default_keepalive() -> Duration {
    // A dead link (black hole) is noticed within about 2 keepalives; 30 s is the common cloud choice.
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    // A TLS handshake over a slow cellular link takes a few seconds; longer means the link is bad.
    Duration::from_secs(10)
}
fn default_backoff_min() -> Duration {
    Duration::from_secs(1)
}
fn default_backoff_max() -> Duration {
    // Caps the wait after a long outage so recovery is noticed within a minute.
    Duration::from_secs(60)
}
fn default_status_topic() -> String {
    "{gateway}/status".into()
}
fn default_forward() -> Vec<RawForward> {
    vec![RawForward {
        filter: "#".into(),
        prefix: String::new(),
        qos: Qos::AT_LEAST_ONCE,
        retain: RetainPolicy::Keep,
        from_clients: false,
    }]
}
fn default_qos() -> Qos {
    Qos::AT_LEAST_ONCE
}
fn default_max_bytes() -> ByteSize {
    ByteSize::mib(64)
}
fn default_max_age() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_commit_interval() -> Duration {
    Duration::from_millis(100)
}
fn default_replay_rate() -> u32 {
    // Well above any serial sensor's rate, so a backlog shrinks; well below what a cloud broker
    // throttles (AWS IoT allows 100 publishes/s per connection by default — lower it there).
    500
}
fn default_inflight() -> u16 {
    100
}

/// The state directory when the config names none: systemd's `StateDirectory=`, else the FHS place.
pub fn default_state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .map(|v| PathBuf::from(v.to_string_lossy().split(':').next().unwrap_or_default()))
        .unwrap_or_else(|| PathBuf::from("/var/lib/ser2mqtt"))
}

pub(super) fn resolve_upstream(
    raw: &RawUpstream,
    gateway: &str,
    state_dir: Option<&Path>,
    p: &mut Problems,
) -> Option<UpstreamSettings> {
    let fill = |s: &str| s.replace("{gateway}", gateway);
    if raw.host.trim().is_empty() {
        p.add("upstream.host", "must name the cloud broker, e.g. `mqtt.example.com`");
    }
    let client_id = fill(&raw.client_id);
    if client_id.is_empty() || client_id.len() > 65535 {
        p.add("upstream.client_id", "must be non-empty (the cloud broker keeps the session under it)");
    }
    if raw.keepalive < Duration::from_secs(1) || raw.keepalive > Duration::from_secs(65535) {
        p.add("upstream.keepalive", "must be between 1s and 18h (MQTT counts it in whole seconds)");
    }
    if raw.connect_timeout < Duration::from_secs(1) {
        p.add("upstream.connect_timeout", "must be at least 1s");
    }
    if raw.reconnect.min.is_zero() || raw.reconnect.min > raw.reconnect.max {
        p.add("upstream.reconnect.min", "must be above 0s and no more than `reconnect.max`");
    }
    let credentials = match (&raw.username, &raw.password) {
        (Some(u), pw) => Some((u.clone(), pw.clone().unwrap_or_default())),
        (None, Some(_)) => {
            p.add("upstream.password", "a password needs a `username` as well");
            None
        }
        (None, None) => None,
    };
    let tls = if raw.tls.enabled {
        let mut found = crate::settings::Problems::default();
        let config = raw.tls.client_config(&mut found);
        for (key, message) in found.into_list() {
            p.add(&if key.is_empty() { "upstream.tls".to_string() } else { format!("upstream.tls.{key}") }, message);
        }
        config
    } else {
        None
    };
    let status_topic = fill(&raw.status_topic);
    if status_topic.is_empty() || status_topic.contains(['+', '#']) {
        p.add("upstream.status_topic", "must be a topic name without wildcards");
    }
    if raw.forward.is_empty() {
        p.add("upstream.forward", "needs at least one rule such as `- filter: \"#\"` (or remove `upstream:`)");
    }
    let mut forward = Vec::new();
    for (i, r) in raw.forward.iter().enumerate() {
        let path = format!("upstream.forward[{i}]");
        if let Err(e) = check_filter(&r.filter) {
            p.add(&format!("{path}.filter"), e);
        }
        let prefix = fill(&r.prefix);
        if prefix.contains(['+', '#']) {
            p.add(&format!("{path}.prefix"), "must not contain wildcards");
        }
        forward.push(ForwardRule {
            filter: r.filter.clone(),
            prefix,
            qos: r.qos.into(),
            retain: r.retain,
            from_clients: r.from_clients,
        });
    }
    let mut downlink = Vec::new();
    for (i, r) in raw.downlink.iter().enumerate() {
        let path = format!("upstream.downlink[{i}]");
        let filter = fill(&r.filter);
        if let Err(e) = check_filter(&filter) {
            p.add(&format!("{path}.filter"), e);
        }
        downlink.push(DownlinkRule { filter, strip_prefix: fill(&r.strip_prefix), qos: r.qos.into() });
    }
    let q = &raw.queue;
    if q.max_bytes.as_u64() < 1024 {
        p.add("upstream.queue.max_bytes", "must be at least 1 KiB");
    }
    if q.max_age.is_zero() {
        p.add("upstream.queue.max_age", "must be longer than 0s, e.g. `7d`");
    }
    if q.commit_interval > Duration::from_secs(10) {
        p.add("upstream.queue.commit_interval", "must be 10s or less (it is what a power cut can lose)");
    }
    if q.replay_rate == 0 {
        p.add("upstream.queue.replay_rate", "must be at least 1 message per second");
    }
    if q.inflight == 0 || q.inflight > 1000 {
        p.add("upstream.queue.inflight", "must be between 1 and 1000");
    }
    let dir = q.dir.clone().or_else(|| state_dir.map(Path::to_path_buf)).unwrap_or_else(default_state_dir);
    let queue = QueueSettings {
        path: dir.join("queue.db"),
        max_bytes: q.max_bytes.as_u64(),
        max_age: q.max_age,
        when_full: q.when_full,
        commit_interval: q.commit_interval,
        sync: q.sync,
        replay_rate: q.replay_rate,
        inflight: q.inflight,
    };
    let port = raw.port.unwrap_or(if tls.is_some() { 8883 } else { 1883 });
    Some(UpstreamSettings {
        host: raw.host.clone(),
        protocol: raw.protocol,
        port,
        client_id,
        keepalive: raw.keepalive,
        connect_timeout: raw.connect_timeout,
        credentials,
        tls,
        backoff_min: raw.reconnect.min,
        backoff_max: raw.reconnect.max,
        status_topic,
        forward,
        downlink,
        queue,
        fingerprint: String::new(),
    })
}
