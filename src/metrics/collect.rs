//! What `/metrics` shows: the counters the gateway keeps anyway (per port, per Modbus slave, the
//! broker's front door and ACL, the disk queue, the bridge), read at scrape time and encoded as
//! OpenMetrics text by prometheus-client. Nothing is counted twice.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::sync::watch;

use crate::local_broker::LocalBroker;
use crate::serial::PortStats;
use crate::store::Store;
use crate::upstream::BridgeStatus;

/// Where the figures come from; cheap to clone.
#[derive(Clone)]
pub struct Sources {
    pub ports: watch::Receiver<Vec<(Arc<str>, Arc<PortStats>)>>,
    pub broker: Arc<LocalBroker>,
    pub store: Option<Arc<Store>>,
    pub bridge: Option<watch::Receiver<BridgeStatus>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("metrics::Sources")
    }
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// One counter family: a name (without `_total`), its help, and a value per label set.
fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, rows: &[(Vec<(&str, &str)>, u64)]) -> std::fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// A counter without labels.
fn counter1(enc: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let family = enc.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Counter)?;
    ConstCounter::new(value).encode(family)
}

/// A gauge without labels.
fn gauge1(enc: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> std::fmt::Result {
    let family = enc.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Gauge)?;
    ConstGauge::new(value).encode(family)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, rows: &[(Vec<(&str, &str)>, f64)]) -> std::fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Gauge)?;
    for (labels, value) in rows {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

type PortCounter = (&'static str, &'static str, fn(&PortStats) -> &AtomicU64);

/// Per-port counters: metric name, help (what exactly is counted), field.
const PORT_COUNTERS: &[PortCounter] = &[
    ("ser2mqtt_port_frames", "Frames that passed framing and checksum and were decoded", |s| &s.frames),
    (
        "ser2mqtt_port_garbled",
        "Frames or byte runs dropped by framing: unframed bytes, over-long frames, bad checksums",
        |s| &s.garbled,
    ),
    ("ser2mqtt_port_bytes_dropped", "Bytes that did not become a frame", |s| &s.bytes_dropped),
    ("ser2mqtt_port_decode_errors", "Frames the config claims but cannot decode", |s| &s.decode_errors),
    ("ser2mqtt_port_ignored", "Frames no pattern claims or an ignore rule matches", |s| &s.ignored),
    (
        "ser2mqtt_port_publisher_waits",
        "Times the reader waited for the publisher (readings held back, not dropped)",
        |s| &s.publisher_waits,
    ),
    ("ser2mqtt_port_opens", "Times the device was opened", |s| &s.opens),
    ("ser2mqtt_port_open_failures", "Failed attempts to open the device", |s| &s.open_failures),
    ("ser2mqtt_port_writes", "Requests written to the device: commands, polls and retries", |s| &s.writes),
    ("ser2mqtt_port_reply_timeouts", "Requests whose reply did not come within its timeout (each retry counts)", |s| {
        &s.reply_timeouts
    }),
    ("ser2mqtt_port_polls_unanswered", "Polls left unanswered after their retries", |s| &s.polls_unanswered),
];

type FrontCounter = (&'static str, &'static str, fn(&crate::local_broker::front::FrontCounters) -> &AtomicU64);

const BROKER_COUNTERS: &[FrontCounter] = &[
    ("ser2mqtt_broker_connections_accepted", "TCP connections accepted by the broker's listeners", |c| &c.accepted),
    (
        "ser2mqtt_broker_connections_refused",
        "Connections closed at once because a listener was at max_connections",
        |c| &c.refused_at_cap,
    ),
    ("ser2mqtt_broker_connect_timeouts", "Connections closed for not sending CONNECT within connect_timeout", |c| {
        &c.connect_timeouts
    }),
    ("ser2mqtt_broker_bad_protocol", "Connections closed for bytes that are not MQTT", |c| &c.bad_protocol),
    ("ser2mqtt_broker_oversized_packets", "Connections closed for a packet over max_packet_size", |c| {
        &c.oversized_packets
    }),
    ("ser2mqtt_broker_keepalive_timeouts", "Clients cut for silence past 1.5 times their keepalive", |c| {
        &c.keepalive_timeouts
    }),
    ("ser2mqtt_broker_qos0_dropped", "QoS 0 messages dropped for a client that was too slow", |c| &c.qos0_dropped),
    ("ser2mqtt_broker_slow_clients_cut", "Clients disconnected for holding max_client_buffer", |c| &c.slow_clients_cut),
    (
        "ser2mqtt_broker_tls_failures",
        "TLS handshakes that failed (unknown CA, missing client certificate, not TLS)",
        |c| &c.tls_failures,
    ),
];

impl Collector for Sources {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let ports = self.ports.borrow().clone();
        let online = |flag: &AtomicBool| if flag.load(Ordering::Relaxed) { 1.0 } else { 0.0 };
        let rows: Vec<_> = ports.iter().map(|(n, s)| (vec![("port", &**n)], online(&s.online))).collect();
        gauge(&mut enc, "ser2mqtt_port_online", "1 while the port's availability topic says online", &rows)?;
        for (name, help, field) in PORT_COUNTERS {
            let rows: Vec<_> = ports.iter().map(|(n, s)| (vec![("port", &**n)], load(field(s)))).collect();
            counter(&mut enc, name, help, &rows)?;
        }
        let slaves: Vec<(String, String, crate::modbus::SlaveCounters)> = ports
            .iter()
            .flat_map(|(n, s)| s.modbus.snapshot().into_iter().map(move |(slave, c)| (n.to_string(), slave, c)))
            .collect();
        if !slaves.is_empty() {
            type SlaveField = (&'static str, &'static str, fn(&crate::modbus::SlaveCounters) -> u64);
            const SLAVE: &[SlaveField] = &[
                ("ser2mqtt_modbus_requests", "Modbus requests sent to the slave", |c| c.requests),
                ("ser2mqtt_modbus_timeouts", "Modbus requests the slave did not answer in time", |c| c.timeouts),
                ("ser2mqtt_modbus_exceptions", "Exception replies (illegal address, device busy)", |c| c.exceptions),
                ("ser2mqtt_modbus_errors", "Replies that were not Modbus (bad CRC, wrong slave or function)", |c| {
                    c.errors
                }),
            ];
            for (name, help, field) in SLAVE {
                let rows: Vec<_> = slaves
                    .iter()
                    .map(|(p, s, c)| (vec![("port", p.as_str()), ("slave", s.as_str())], field(c)))
                    .collect();
                counter(&mut enc, name, help, &rows)?;
            }
        }

        let front = self.broker.front_counters();
        let open: &AtomicUsize = &front.connections;
        gauge1(
            &mut enc,
            "ser2mqtt_broker_connections",
            "Open client connections",
            open.load(Ordering::Relaxed) as f64,
        )?;
        for (name, help, field) in BROKER_COUNTERS {
            counter1(&mut enc, name, help, load(field(front)))?;
        }
        let acl = self.broker.acl_counters();
        counter1(
            &mut enc,
            "ser2mqtt_broker_subscriptions_refused",
            "Subscriptions the ACL refused",
            load(&acl.subscriptions_refused),
        )?;
        counter1(
            &mut enc,
            "ser2mqtt_broker_publishes_refused",
            "Client publishes the ACL refused",
            load(&acl.publishes_refused),
        )?;
        counter1(
            &mut enc,
            "ser2mqtt_broker_retained_refused",
            "Retained messages refused by max_retained or max_retained_bytes",
            self.broker.retained_refused(),
        )?;

        if let Some(store) = &self.store {
            let q = store.status();
            gauge1(
                &mut enc,
                "ser2mqtt_queue_depth",
                "Messages in the disk queue not yet delivered upstream",
                q.depth as f64,
            )?;
            gauge1(&mut enc, "ser2mqtt_queue_bytes", "Topic and payload bytes of the queued messages", q.bytes as f64)?;
            gauge1(
                &mut enc,
                "ser2mqtt_queue_oldest_age_seconds",
                "Age of the oldest queued message (0 when empty)",
                q.oldest_age_s.unwrap_or(0.0),
            )?;
            for (name, help, value) in [
                ("ser2mqtt_queue_accepted", "Messages accepted into the queue", q.accepted),
                ("ser2mqtt_queue_delivered", "Messages acknowledged by the upstream broker", q.delivered),
                ("ser2mqtt_queue_refused", "Messages the upstream broker refused (MQTT 5 reason codes)", q.refused),
                ("ser2mqtt_queue_dropped_full", "Oldest messages dropped to make room (max_bytes)", q.dropped_full),
                ("ser2mqtt_queue_dropped_age", "Messages dropped for being older than max_age", q.dropped_age),
                ("ser2mqtt_queue_rejected_full", "New messages refused because the queue was full", q.rejected_full),
                (
                    "ser2mqtt_queue_corrupted",
                    "Queued records whose CRC did not match; deleted and skipped",
                    q.corrupted,
                ),
                ("ser2mqtt_queue_not_queued", "Messages that could not be written to the queue at all", q.not_queued),
            ] {
                counter1(&mut enc, name, help, value)?;
            }
        }
        if let Some(bridge) = &self.bridge {
            let b = bridge.borrow().clone();
            gauge1(
                &mut enc,
                "ser2mqtt_upstream_connected",
                "1 while the bridge's session to the upstream broker is up",
                if b.connected { 1.0 } else { 0.0 },
            )?;
            counter1(
                &mut enc,
                "ser2mqtt_upstream_connects",
                "Sessions established with the upstream broker",
                b.connects,
            )?;
        }
        Ok(())
    }
}
