//! The broker's settings as the gateway runs them (resolved from `broker:` by `config`): listeners,
//! users and their secrets, ACL rules, and the limits with their defaults and the reasons for them.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use super::acl::Subject;
use super::front::FrontLimits;

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerSettings {
    pub addr: SocketAddr,
    pub allow_anonymous: bool,
    /// Clients speak TLS first.
    pub tls: Option<super::tls::ServerTls>,
    /// MQTT inside WebSocket binary messages (after TLS, if any).
    pub websocket: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AclRule {
    pub subject: Subject,
    /// Index into `BrokerSettings::listeners` the rule is limited to.
    pub listener: Option<usize>,
    pub deny: bool,
    pub subscribe: Vec<String>,
    pub publish: Vec<String>,
}

/// How a user's password is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// An argon2 PHC string (`$argon2id$v=19$…`), verified with the argon2 crate.
    Hash(String),
    Plain(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BrokerSettings {
    pub listeners: Vec<ListenerSettings>,
    pub users: Vec<(String, Secret)>,
    pub acl: Vec<AclRule>,
    pub max_queue_len: NonZeroUsize,
    pub max_sessions: NonZeroUsize,
    /// Per-listener connection limits, enforced in front of the engine.
    pub front: FrontLimits,
    /// Bounds of the retained store: topics, and payload bytes in total.
    pub max_retained: NonZeroUsize,
    pub max_retained_bytes: usize,
}

/// The broker's listener when the config names none: loopback only, as Mosquitto 2 does.
pub const DEFAULT_LISTENER: &str = "127.0.0.1:1883";

impl BrokerSettings {
    /// Loopback only, anonymous allowed (nothing off the machine can reach it).
    pub fn local_only(addr: SocketAddr) -> BrokerSettings {
        BrokerSettings {
            listeners: vec![ListenerSettings { addr, allow_anonymous: true, tls: None, websocket: false }],
            users: Vec::new(),
            acl: Vec::new(),
            max_queue_len: DEFAULT_MAX_QUEUE_LEN,
            max_sessions: DEFAULT_MAX_SESSIONS,
            front: default_front_limits(),
            max_retained: DEFAULT_MAX_QUEUE_LEN,
            max_retained_bytes: DEFAULT_MAX_RETAINED_BYTES,
        }
    }
}

// Safe for a Pi-class board; both are per-broker limits in the rmqtt engine.
/// rmqtt caps how many retained messages reach one subscription at queue + inflight; 4096 leaves room
/// for a few thousand retained sensor topics.
pub const DEFAULT_MAX_QUEUE_LEN: NonZeroUsize = NonZeroUsize::new(4096).unwrap();
/// Sessions on a LAN gateway: dashboards, loggers, a few phones. Bounds memory if a client misbehaves.
pub const DEFAULT_MAX_SESSIONS: NonZeroUsize = NonZeroUsize::new(256).unwrap();
/// 16 MiB of last values: 4,096 topics (the default count, `max_queue_len`) of 4 KiB each, a small
/// share of a 512 MiB board.
pub const DEFAULT_MAX_RETAINED_BYTES: usize = 16 * 1024 * 1024;

/// The front door's defaults. 256 connections per listener matches `max_sessions`; each takes three
/// descriptors (client, splice, engine side), well inside the unit's `LimitNOFILE`. A scanner's
/// silent socket is gone after 10 s (Mosquitto and EMQX allow about as long for a CONNECT). 1 MiB
/// packets are the engine's own default. 256 KiB waiting per client is ~100 readings of a chatty
/// sensor; all 256 clients stalled at once then hold at most ~128 MiB (twice the buffer each: one
/// batch being written, one queued), and a single stalled one ~0.5 MiB.
pub fn default_front_limits() -> FrontLimits {
    FrontLimits {
        max_connections: 256,
        connect_timeout: Duration::from_secs(10),
        max_packet_size: 1024 * 1024,
        max_client_buffer: 256 * 1024,
    }
}
