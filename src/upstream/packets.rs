//! The packets the link deals in, whichever the MQTT version: what comes from the broker (`In`),
//! the acknowledgements it sends (`Ack`), and their translation to and from rumqttc's 3.1.1 and 5
//! codecs, with MQTT 5's publish properties (`accepted_at`, expiry from `max_age`) and reason codes.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::mqttbytes::{self, QoS};
use rumqttc::v5::mqttbytes as m5;
use rumqttc::v5::mqttbytes::v5;

use super::outbox::Send;

/// A packet from the broker, whichever the version.
#[derive(Debug)]
pub(super) enum In {
    /// `receive_maximum`: MQTT 5, how many QoS 1/2 messages the broker takes unacknowledged.
    ConnAck {
        session_present: bool,
        refused: Option<String>,
        receive_maximum: Option<u16>,
    },
    /// `refused`: an MQTT 5 reason code of 0x80 or more (the broker will not deliver it).
    PubAck {
        pkid: u16,
        refused: Option<String>,
    },
    PubRec {
        pkid: u16,
        refused: Option<String>,
    },
    PubRel {
        pkid: u16,
    },
    PubComp {
        pkid: u16,
    },
    SubAck {
        failed: bool,
        pkid: u16,
    },
    Publish {
        topic: String,
        payload: Bytes,
        qos: u8,
        retain: bool,
        pkid: u16,
    },
    PingResp,
    Disconnect {
        reason: Option<String>,
    },
    Other(&'static str),
}

/// An acknowledgement the link sends.
#[derive(Debug, Clone, Copy)]
pub(super) enum Ack {
    /// PUBACK: a QoS 1 message arrived.
    Qos1,
    /// PUBREC: a QoS 2 message arrived (held until its PUBREL).
    Received,
    /// PUBCOMP: a QoS 2 exchange is complete.
    Complete,
}

pub(super) fn put_v4(buf: &mut BytesMut, s: &Send) -> Result<usize, mqttbytes::Error> {
    match s {
        Send::Publish { pkid, dup, record } => {
            let mut p = v4::Publish::from_bytes(record.topic.clone(), qos(record.qos), record.payload.clone());
            p.pkid = *pkid;
            p.dup = *dup;
            p.retain = record.retain;
            p.write(buf)
        }
        Send::PubRel { pkid } => v4::PubRel::new(*pkid).write(buf),
        Send::Subscribe { pkid, filters } => {
            let mut sub =
                v4::Subscribe::new_many(filters.iter().map(|(f, q)| v4::SubscribeFilter::new(f.clone(), qos(*q))));
            sub.pkid = *pkid;
            sub.write(buf)
        }
    }
}

/// The MQTT 5 user property naming when the gateway accepted a message (RFC 3339, ms).
pub const ACCEPTED_AT: &str = "accepted_at";

pub(super) fn put_v5(buf: &mut BytesMut, s: &Send, max_age: Duration) -> Result<usize, m5::Error> {
    match s {
        Send::Publish { pkid, dup, record } => {
            let accepted = chrono::DateTime::from_timestamp_millis(record.accepted_ms).unwrap_or_default();
            let age = Duration::from_millis((chrono::Utc::now().timestamp_millis() - record.accepted_ms).max(0) as u64);
            // What is left of `max_age`, so the cloud broker drops it when the queue would have (at
            // least a second: the interval is in whole seconds, and 0 would mean "never").
            let expiry = max_age.saturating_sub(age).as_secs().clamp(1, u32::MAX as u64) as u32;
            let properties = v5::PublishProperties {
                message_expiry_interval: Some(expiry),
                user_properties: vec![(
                    ACCEPTED_AT.to_string(),
                    accepted.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                )],
                ..Default::default()
            };
            let p = v5::Publish {
                dup: *dup,
                qos: qos5(record.qos),
                retain: record.retain,
                topic: Bytes::copy_from_slice(record.topic.as_bytes()),
                pkid: *pkid,
                payload: record.payload.clone(),
                properties: Some(properties),
            };
            p.write(buf)
        }
        Send::PubRel { pkid } => v5::PubRel::new(*pkid, None).write(buf),
        Send::Subscribe { pkid, filters } => {
            let mut sub =
                v5::Subscribe::new_many(filters.iter().map(|(f, q)| v5::Filter::new(f.clone(), qos5(*q))), None);
            sub.pkid = *pkid;
            sub.write(buf)
        }
    }
}

fn qos5(q: u8) -> m5::QoS {
    match q {
        0 => m5::QoS::AtMostOnce,
        1 => m5::QoS::AtLeastOnce,
        _ => m5::QoS::ExactlyOnce,
    }
}

pub(super) fn from_v4(p: v4::Packet) -> In {
    match p {
        v4::Packet::ConnAck(a) => In::ConnAck {
            session_present: a.session_present,
            refused: (a.code != v4::ConnectReturnCode::Success).then(|| format!("{:?}", a.code)),
            receive_maximum: None,
        },
        v4::Packet::PubAck(a) => In::PubAck { pkid: a.pkid, refused: None },
        v4::Packet::PubRec(r) => In::PubRec { pkid: r.pkid, refused: None },
        v4::Packet::PubRel(r) => In::PubRel { pkid: r.pkid },
        v4::Packet::PubComp(c) => In::PubComp { pkid: c.pkid },
        v4::Packet::SubAck(a) => In::SubAck {
            pkid: a.pkid,
            failed: a.return_codes.iter().any(|c| matches!(c, v4::SubscribeReasonCode::Failure)),
        },
        v4::Packet::Publish(p) => {
            In::Publish { topic: p.topic, payload: p.payload, qos: p.qos as u8, retain: p.retain, pkid: p.pkid }
        }
        v4::Packet::PingResp => In::PingResp,
        v4::Packet::Disconnect => In::Disconnect { reason: None },
        other => In::Other(packet_name(&other)),
    }
}

pub(super) fn from_v5(p: v5::Packet) -> In {
    // Reason codes below 0x80 are successes (0x10: delivered, but no one subscribes).
    let refused = |ok: bool, code: String| (!ok).then_some(code);
    match p {
        v5::Packet::ConnAck(a) => In::ConnAck {
            session_present: a.session_present,
            refused: refused(a.code == v5::ConnectReturnCode::Success, format!("{:?}", a.code)),
            receive_maximum: a.properties.and_then(|p| p.receive_max),
        },
        v5::Packet::PubAck(a) => In::PubAck {
            pkid: a.pkid,
            refused: refused(
                matches!(a.reason, v5::PubAckReason::Success | v5::PubAckReason::NoMatchingSubscribers),
                format!("{:?}", a.reason),
            ),
        },
        v5::Packet::PubRec(r) => In::PubRec {
            pkid: r.pkid,
            refused: refused(
                matches!(r.reason, v5::PubRecReason::Success | v5::PubRecReason::NoMatchingSubscribers),
                format!("{:?}", r.reason),
            ),
        },
        v5::Packet::PubRel(r) => In::PubRel { pkid: r.pkid },
        v5::Packet::PubComp(c) => In::PubComp { pkid: c.pkid },
        v5::Packet::SubAck(a) => In::SubAck {
            pkid: a.pkid,
            failed: a.return_codes.iter().any(|c| !matches!(c, v5::SubscribeReasonCode::Success(_))),
        },
        v5::Packet::Publish(p) => In::Publish {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload,
            qos: p.qos as u8,
            retain: p.retain,
            pkid: p.pkid,
        },
        v5::Packet::PingResp(_) => In::PingResp,
        v5::Packet::Disconnect(d) => In::Disconnect { reason: Some(format!("{:?}", d.reason_code)) },
        v5::Packet::Connect(..) => In::Other("CONNECT"),
        v5::Packet::PingReq(_) => In::Other("PINGREQ"),
        v5::Packet::Auth(_) => In::Other("AUTH"),
        v5::Packet::Subscribe(_) => In::Other("SUBSCRIBE"),
        v5::Packet::Unsubscribe(_) => In::Other("UNSUBSCRIBE"),
        v5::Packet::UnsubAck(_) => In::Other("UNSUBACK"),
    }
}

pub(super) fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

pub(super) fn in_name(p: &In) -> &'static str {
    match p {
        In::ConnAck { .. } => "CONNACK",
        In::PubAck { .. } => "PUBACK",
        In::PubRec { .. } => "PUBREC",
        In::PubRel { .. } => "PUBREL",
        In::PubComp { .. } => "PUBCOMP",
        In::SubAck { .. } => "SUBACK",
        In::Publish { .. } => "PUBLISH",
        In::PingResp => "PINGRESP",
        In::Disconnect { .. } => "DISCONNECT",
        In::Other(name) => name,
    }
}

fn packet_name(p: &v4::Packet) -> &'static str {
    use v4::Packet;
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}
