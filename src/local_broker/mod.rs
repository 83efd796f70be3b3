//! The embedded MQTT broker (engine: rmqtt) and publishing into it from inside the process.
//!
//! This is the only module that knows the engine. Its interface is narrow on purpose — start with
//! listeners, publish with QoS and retain, health, stop — so a second engine (rumqttd) can sit behind a
//! cargo feature later. Engine facts this module designs around:
//! - retained messages need the `rmqtt-retainer` plugin, with `retained_message_ttl = 0` (never expire;
//!   otherwise they expire with the message expiry, 5 min by default);
//! - credentials and topic ACLs are our own hooks (`auth`, `acl`): rmqtt-acl compares plain-text
//!   passwords only and matches a requested filter against its rules as if it were a topic, so an
//!   allow of `+` granted `#`;
//! - in-process publish is `SessionState::forwards` (public but undocumented, hence the pinned minor
//!   version and the tests that cover it), which also stores retained messages; the `message_publish`
//!   hook chain before it matters only to our taps, so it runs only for topics a tap of in-process
//!   publishes wants;
//! - there is no shutdown API: dropping the run future closes the listeners, and sessions are kicked
//!   with their ids collected first (kicking while iterating the session map deadlocks).

pub mod acl;
mod auth;
pub mod front;
mod retained;
pub mod settings;
mod shared;
pub mod tls;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rmqtt::context::ServerContext;
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;
use rmqtt::session::SessionState;
use rmqtt::types::{ClientId, CodecPublish, From as MsgFrom, Id, Publish, QoS, UserName};
use rmqtt::utils::timestamp_millis;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod tap;
pub use auth::{check_hash, hash_password};

use crate::topic_map::OutMessage;
use settings::{AclRule, BrokerSettings, Secret};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: anyhow::Error,
    },
    #[error("broker plugin {plugin} failed to start")]
    Plugin {
        plugin: &'static str,
        #[source]
        source: anyhow::Error,
    },
    #[error("publish to {topic} failed: {reason}")]
    Publish { topic: String, reason: String },
    #[error("health probe: no round trip through the broker within {0:?}")]
    Unhealthy(Duration),
}

/// Where health probes travel. `$`-topics are not matched by `#`, so LAN subscribers never see them.
const HEALTH_TOPIC: &str = "$ser2mqtt/health";

/// A running embedded broker.
pub struct LocalBroker {
    scx: ServerContext,
    /// The addresses actually bound (port 0 in the config becomes a real port here).
    addrs: Vec<SocketAddr>,
    /// Who in-process messages come from, as subscribers and hooks see it.
    from: MsgFrom,
    server: JoinHandle<()>,
    /// The first listener as a client on this machine reaches it, and the probe's credentials.
    probe: (SocketAddr, String, String),
    /// One probe at a time (the watchdog and `ser2mqtt health` can overlap).
    probing: Mutex<()>,
    /// Keeps the password and ACL hooks registered for the broker's lifetime.
    _auth: Box<dyn rmqtt::hook::Register>,
    acl_counters: Arc<acl::AclCounters>,
    /// The rules, also for the taps: rmqtt runs `MessagePublish` hooks before its ACL check.
    acl: Arc<acl::Acl>,
    front_counters: Arc<front::FrontCounters>,
    /// New retained topics not stored because the retained store was at a bound.
    retained_refused: Arc<std::sync::atomic::AtomicU64>,
    /// Stops the front door's accept loops and ends every spliced connection.
    front_cancel: CancellationToken,
    /// Hooks added after start (the client-publish tap), kept registered for the broker's lifetime.
    taps: Mutex<Vec<Box<dyn rmqtt::hook::Register>>>,
    /// The filters of the taps that also take the gateway's own publishes: only a topic one of them
    /// matches needs the hook chain (see `publish_raw`).
    own_taps: std::sync::RwLock<Vec<String>>,
}

impl LocalBroker {
    /// Binds every listener and starts serving. Fails, naming the address, if one cannot be bound.
    pub async fn start(settings: &BrokerSettings) -> Result<LocalBroker, BrokerError> {
        // The health client's own credentials: random per start, never written anywhere.
        let probe_user = format!("ser2mqtt-probe-{:016x}", fastrand::u64(..));
        let probe_pass = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let scx = ServerContext::new()
            .mqtt_max_sessions(settings.max_sessions.get() as isize)
            // Never expire retained readings, and no count limit: the last value of every topic stays.
            .plugins_config_map_add(
                "rmqtt-retainer",
                "storage.type = \"ram\"\nretained_message_ttl = \"0m\"\nmax_retained_messages = 0\n",
            )
            .build()
            .await;
        *scx.extends.shared_subscription_mut().await = Box::new(shared::RoundRobin::default());
        rmqtt_retainer::register(&scx, true, false)
            .await
            .map_err(|source| BrokerError::Plugin { plugin: "rmqtt-retainer", source })?;
        let retained_refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
        {
            let mut slot = scx.extends.retain_mut().await;
            let plugin = std::mem::replace(&mut *slot, Box::new(rmqtt::retain::DefaultRetainStorage::new()));
            *slot = Box::new(retained::Bounded::new(
                plugin,
                settings.max_retained.get(),
                settings.max_retained_bytes,
                retained_refused.clone(),
            ));
        }
        let mut server = MqttServer::new(scx.clone());
        let mut addrs = Vec::new();
        let front_counters = Arc::new(front::FrontCounters::default());
        let front_cancel = CancellationToken::new();
        // Every public address first: each engine's port is the kernel's pick, and that pick may be
        // a port someone has just freed to hand to us (as tests do with their free ports).
        let mut publics = Vec::with_capacity(settings.listeners.len());
        for l in &settings.listeners {
            let public = tokio::net::TcpListener::bind(l.addr)
                .await
                .map_err(|e| BrokerError::Bind { addr: l.addr, source: e.into() })?;
            addrs.push(public.local_addr().map_err(|e| BrokerError::Bind { addr: l.addr, source: e.into() })?);
            publics.push(public);
        }
        for ((index, l), public) in settings.listeners.iter().enumerate().zip(publics) {
            // The engine listens on loopback only; LAN clients reach it through the front door,
            // which holds them to the limits the engine lacks.
            let engine = |addr| -> anyhow::Result<_> {
                let listener = Builder::new()
                    .name(format!("tcp/{}", l.addr))
                    .laddr(addr)
                    .allow_anonymous(l.allow_anonymous)
                    .max_packet_size(settings.front.max_packet_size as u32)
                    .max_mqueue_len(settings.max_queue_len.get())
                    // The engine writes each message on its own: without this, Nagle holds a
                    // message back on the loopback hop until the one before it is acknowledged.
                    .nodelay(true)
                    .bind()?
                    .tcp()?;
                let local = listener.local_addr()?;
                Ok((listener, local))
            };
            let (listener, engine_addr) = engine(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                .map_err(|source| BrokerError::Bind { addr: l.addr, source })?;
            // rmqtt keys listener settings by id, the configured port by default: two listeners on
            // port 0 would share one. Their index is unique, and is what ACL rules refer to.
            server = server.listener_by_id(listener, index as u16);
            let transport = front::Transport {
                tls: l.tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone())),
                websocket: l.websocket,
            };
            tokio::spawn(front::serve(
                public,
                transport,
                engine_addr,
                settings.front.clone(),
                front_counters.clone(),
                front_cancel.clone(),
            ));
        }
        let mut users = settings.users.clone();
        users.push((probe_user.clone(), Secret::Plain(probe_pass.clone())));
        let acl = Arc::new(acl_of(settings, &probe_user));
        let counters = Arc::new(acl::AclCounters::default());
        let register = scx.extends.hook_mgr().register();
        let auth = Box::new(auth::UserAuth { users: Arc::new(users) });
        register.add_priority(rmqtt::hook::Type::ClientAuthenticate, auth::PRIORITY, auth).await;
        for typ in [rmqtt::hook::Type::ClientSubscribeCheckAcl, rmqtt::hook::Type::MessagePublishCheckAcl] {
            let hook = Box::new(acl::AclHook { acl: acl.clone(), counters: counters.clone() });
            register.add_priority(typ, auth::PRIORITY, hook).await;
        }
        register.start().await;
        let server = server.build();
        let task = tokio::spawn(async move {
            if let Err(e) = server.run().await {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        });
        let from = MsgFrom::from_system(Id::new(
            scx.node.id(),
            0,
            None,
            None,
            ClientId::from("ser2mqtt-gateway"),
            Some(UserName::from("ser2mqtt")),
        ));
        let probe_addr = loopback(addrs[0]);
        Ok(LocalBroker {
            scx,
            addrs,
            from,
            server: task,
            probe: (probe_addr, probe_user, probe_pass),
            probing: Mutex::new(()),
            _auth: register,
            acl_counters: counters,
            acl: acl.clone(),
            front_counters,
            front_cancel,
            retained_refused,
            taps: Mutex::new(Vec::new()),
            own_taps: std::sync::RwLock::new(Vec::new()),
        })
    }

    /// Connects a fresh MQTT client to the first listener, as a LAN client would (so a listener at
    /// its connection cap or a process out of descriptors fails the probe), subscribes it to
    /// `HEALTH_TOPIC`, publishes a nonce in-process and waits until the client receives it: proof
    /// that new clients get in, sessions route and publish works.
    pub async fn round_trip(&self, timeout: Duration) -> Result<Duration, BrokerError> {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
        let _one = self.probing.lock().await;
        let start = Instant::now();
        let (addr, user, pass) = &self.probe;
        let mut opts =
            MqttOptions::new(format!("{user}-{:08x}", fastrand::u32(..)), addr.ip().to_string(), addr.port());
        opts.set_credentials(user.clone(), pass.clone());
        // Only needs to outlive one probe.
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(opts, 4);
        let nonce = Bytes::from(format!("{:016x}", fastrand::u64(..)));
        let wait = async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.try_subscribe(HEALTH_TOPIC, rumqttc::QoS::AtMostOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        self.publish_raw(HEALTH_TOPIC, nonce.clone(), QoS::AtMostOnce, false).await?;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.payload == nonce => return Ok(start.elapsed()),
                    Ok(_) => {}
                    // At `max_sessions` the engine answers CONNACK 3: new clients do get an answer,
                    // and restarting would only drop every client that is connected.
                    Err(rumqttc::ConnectionError::ConnectionRefused(
                        rumqttc::ConnectReturnCode::ServiceUnavailable,
                    )) => {
                        return Ok(start.elapsed());
                    }
                    Err(_) => return Err(BrokerError::Unhealthy(timeout)),
                }
            }
        };
        let result = tokio::time::timeout(timeout, wait).await.unwrap_or(Err(BrokerError::Unhealthy(timeout)));
        // A clean DISCONNECT, so the session ends now rather than at its keepalive.
        if result.is_ok() {
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
        }
        result
    }

    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Publishes into the broker as if a client had: subscribers get it with `qos` and, when `retain`
    /// is set, late subscribers get it from the retained store.
    pub async fn publish(&self, msg: &OutMessage) -> Result<(), BrokerError> {
        let qos = match msg.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        self.publish_raw(&msg.topic, msg.payload.clone(), qos, msg.retain).await
    }

    async fn publish_raw(&self, topic: &str, payload: Bytes, qos: QoS, retain: bool) -> Result<(), BrokerError> {
        let p =
            CodecPublish { dup: false, retain, qos, topic: topic.into(), packet_id: None, payload, properties: None };
        let p = <CodecPublish as Into<Publish>>::into(p).create_time(timestamp_millis());
        // The `message_publish` hooks registered are our taps, and the only ones that look at an
        // in-process publish are those in `own_taps` (the retained store is written by `forwards`
        // itself, not by a hook). A reading no such tap wants skips the chain, which took 8 % of a
        // 4-port burst's CPU (6.33 -> 5.80 us per reading; docs/architecture.md).
        let p = if self.own_tapped(topic) {
            self.scx.extends.hook_mgr().message_publish(None, self.from.clone(), &p).await.unwrap_or(p)
        } else {
            p
        };
        SessionState::forwards(&self.scx, self.from.clone(), p, false, None)
            .await
            .map_err(|e| BrokerError::Publish { topic: topic.to_string(), reason: e.to_string() })
    }

    /// Whether a tap that takes the gateway's own publishes wants `topic`.
    fn own_tapped(&self, topic: &str) -> bool {
        tap::wants(&self.own_taps.read().unwrap_or_else(|e| e.into_inner()), topic)
    }

    /// Messages that MQTT clients publish on topics matching `filters` (not the gateway's own, which
    /// it forwards itself). When the receiver falls `capacity` behind, messages are dropped, counted in
    /// the returned counter and logged: a slow disk must not stall the broker.
    pub async fn tap_client_publishes(
        &self,
        filters: Vec<String>,
        capacity: usize,
    ) -> (mpsc::Receiver<OutMessage>, Arc<std::sync::atomic::AtomicU64>) {
        self.tap(filters, capacity, false).await
    }

    /// Like `tap_client_publishes`, and also what the gateway publishes in-process (the downlink).
    pub async fn tap_publishes(
        &self,
        filters: Vec<String>,
        capacity: usize,
    ) -> (mpsc::Receiver<OutMessage>, Arc<std::sync::atomic::AtomicU64>) {
        self.tap(filters, capacity, true).await
    }

    async fn tap(
        &self,
        filters: Vec<String>,
        capacity: usize,
        include_own: bool,
    ) -> (mpsc::Receiver<OutMessage>, Arc<std::sync::atomic::AtomicU64>) {
        let (tx, rx) = mpsc::channel(capacity);
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        if include_own {
            self.own_taps.write().unwrap_or_else(|e| e.into_inner()).extend(filters.iter().cloned());
        }
        let register = self.scx.extends.hook_mgr().register();
        register
            .add(
                rmqtt::hook::Type::MessagePublish,
                Box::new(tap::ClientTap { filters, include_own, acl: self.acl.clone(), tx, dropped: dropped.clone() }),
            )
            .await;
        register.start().await;
        self.taps.lock().await.push(register);
        (rx, dropped)
    }

    /// Subscriptions and publishes the ACL refused since start.
    pub fn acl_counters(&self) -> &acl::AclCounters {
        &self.acl_counters
    }

    /// Connections and what the front door refused, dropped or cut since start.
    pub fn front_counters(&self) -> &front::FrontCounters {
        &self.front_counters
    }

    /// The broker's counters as one JSON object (the retained `{status_topic}/stats/broker`).
    pub fn stats_json(&self) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Stats<'a> {
            #[serde(flatten)]
            front: &'a front::FrontCounters,
            #[serde(flatten)]
            acl: &'a acl::AclCounters,
            retained_refused: u64,
        }
        let retained_refused = self.retained_refused.load(std::sync::atomic::Ordering::Relaxed);
        let stats = Stats { front: &self.front_counters, acl: &self.acl_counters, retained_refused };
        serde_json::to_vec(&stats).unwrap_or_default()
    }

    /// Retained messages refused by the retained-store bounds.
    pub fn retained_refused(&self) -> u64 {
        self.retained_refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// False once the broker's server task has ended.
    pub fn is_running(&self) -> bool {
        !self.server.is_finished()
    }

    /// Closes the listeners and disconnects every client.
    pub async fn stop(self) {
        self.close().await;
    }

    /// Closes the listeners and kicks every session, leaving the value in place (used by `stop`, and by
    /// tests that need a broker which has died under a running gateway).
    pub async fn close(&self) {
        self.front_cancel.cancel();
        self.server.abort();
        // Collect first: kicking while iterating the session map deadlocks.
        let ids: Vec<Id> = self.scx.extends.shared().await.iter().map(|e| e.id()).collect();
        for id in ids {
            let entry = self.scx.extends.shared().await.entry(id);
            if let Ok(mut e) = entry.try_lock().await {
                let _ = e.kick(true, true, true).await;
            }
        }
    }
}

/// Where to reach a listener from this machine: an unspecified bind address means its loopback.
fn loopback(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// The ACL the hooks enforce: none configured means open, except that the gateway's own health
/// client comes first either way, allowed on its probe topic only.
fn acl_of(settings: &BrokerSettings, probe_user: &str) -> acl::Acl {
    if settings.acl.is_empty() {
        return acl::Acl::open();
    }
    let mut rules = vec![acl::Rule {
        subject: acl::Subject::User(probe_user.to_string()),
        listener: None,
        deny: false,
        subscribe: vec![HEALTH_TOPIC.to_string()],
        publish: Vec::new(),
    }];
    rules.extend(settings.acl.iter().map(|r: &AclRule| acl::Rule {
        subject: r.subject.clone(),
        listener: r.listener.map(|k| k as u16),
        deny: r.deny,
        subscribe: r.subscribe.clone(),
        publish: r.publish.clone(),
    }));
    acl::Acl::new(rules)
}
