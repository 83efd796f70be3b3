//! The connection to the cloud broker as bytes and packets: TCP or TLS, CONNECT/CONNACK within the
//! connect timeout, and reading and writing MQTT 3.1.1 or 5 packets with rumqttc's codecs, turned
//! into the few packets the link deals in (`In`), so the link and the outbox do not depend on the
//! version. What the packets mean is the link's and the outbox's.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::mqttbytes::{self, QoS};
use rumqttc::v5::mqttbytes as m5;
use rumqttc::v5::mqttbytes::v5;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::outbox::Send;
use super::settings::{Protocol, UpstreamSettings};
use super::MAX_PACKET;
use crate::store::StoreError;

/// Bytes read from the socket at a time (a chunk, not a bound: packets up to `MAX_PACKET` are
/// reassembled across reads).
const READ_CHUNK_BYTES: usize = 16 * 1024;

trait Io: AsyncRead + AsyncWrite + Unpin + std::marker::Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + std::marker::Send> Io for T {}

#[derive(Debug, thiserror::Error)]
pub(super) enum LinkError {
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("broker refused the connection: {0}")]
    Refused(String),
    #[error("broker closed the connection")]
    Closed,
    #[error("no answer from the broker within the keepalive ({0:?})")]
    Silent(Duration),
    #[error("sending to the broker stalled for {0:?}")]
    WriteStalled(Duration),
    #[error("broker sent a malformed packet: {0}")]
    Protocol(#[from] mqttbytes::Error),
    #[error("broker sent a malformed MQTT 5 packet: {0}")]
    Protocol5(#[from] m5::Error),
    #[error("broker disconnected: {0}")]
    Disconnected(String),
    #[error("broker sent {0} where a CONNACK was expected")]
    NotConnAck(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the store task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

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

/// One open connection: the stream and its buffers.
pub(super) struct Conn {
    io: Box<dyn Io>,
    protocol: Protocol,
    /// MQTT 5: the queue's `max_age`, which each message's expiry interval is what is left of.
    max_age: Duration,
    /// MQTT 5: the broker's Receive Maximum from its CONNACK (it disconnects a client that exceeds it).
    pub(super) receive_maximum: Option<u16>,
    rbuf: BytesMut,
    /// Encoded packets waiting for `flush`; the link writes acknowledgements straight into it.
    pub(super) wbuf: BytesMut,
    /// Longest a write may take before the link counts as dead (a black hole accepts bytes until the
    /// socket buffer is full, then never again).
    write_timeout: Duration,
}

impl Conn {
    /// The next packet. Cancel-safe: bytes read stay in `rbuf`.
    pub(super) async fn read(&mut self) -> Result<In, LinkError> {
        loop {
            let more = match self.protocol {
                Protocol::V311 => match v4::read(&mut self.rbuf, MAX_PACKET) {
                    Ok(p) => return Ok(from_v4(p)),
                    Err(mqttbytes::Error::InsufficientBytes(_)) => true,
                    Err(e) => return Err(e.into()),
                },
                Protocol::V5 => match v5::Packet::read(&mut self.rbuf, Some(MAX_PACKET)) {
                    Ok(p) => return Ok(from_v5(p)),
                    Err(m5::Error::InsufficientBytes(_)) => true,
                    Err(e) => return Err(e.into()),
                },
            };
            if more {
                self.rbuf.reserve(READ_CHUNK_BYTES);
                if self.io.read_buf(&mut self.rbuf).await? == 0 {
                    return Err(LinkError::Closed);
                }
            }
        }
    }

    /// Writes an acknowledgement of the broker's publish `pkid`.
    pub(super) fn ack(&mut self, ack: Ack, pkid: u16) -> Result<(), LinkError> {
        match (self.protocol, ack) {
            (Protocol::V311, Ack::Qos1) => v4::PubAck::new(pkid).write(&mut self.wbuf).map(drop)?,
            (Protocol::V311, Ack::Received) => v4::PubRec::new(pkid).write(&mut self.wbuf).map(drop)?,
            (Protocol::V311, Ack::Complete) => v4::PubComp::new(pkid).write(&mut self.wbuf).map(drop)?,
            (Protocol::V5, Ack::Qos1) => v5::PubAck::new(pkid, None).write(&mut self.wbuf).map(drop)?,
            (Protocol::V5, Ack::Received) => v5::PubRec::new(pkid, None).write(&mut self.wbuf).map(drop)?,
            (Protocol::V5, Ack::Complete) => v5::PubComp::new(pkid, None).write(&mut self.wbuf).map(drop)?,
        }
        Ok(())
    }

    pub(super) fn ping(&mut self) -> Result<(), LinkError> {
        match self.protocol {
            Protocol::V311 => v4::PingReq.write(&mut self.wbuf).map(drop)?,
            Protocol::V5 => v5::PingReq::write(&mut self.wbuf).map(drop)?,
        }
        Ok(())
    }

    /// A normal DISCONNECT (the broker then does not publish the will).
    pub(super) fn disconnect(&mut self) -> Result<(), LinkError> {
        match self.protocol {
            Protocol::V311 => v4::Disconnect.write(&mut self.wbuf).map(drop)?,
            Protocol::V5 => {
                v5::Disconnect::new(v5::DisconnectReasonCode::NormalDisconnection).write(&mut self.wbuf).map(drop)?
            }
        }
        Ok(())
    }

    pub(super) fn put(&mut self, s: &Send) {
        // Encoding into a BytesMut only fails for packets over the protocol's size, which the
        // acceptor refuses to queue.
        let r = match self.protocol {
            Protocol::V311 => put_v4(&mut self.wbuf, s).map_err(|e| e.to_string()),
            Protocol::V5 => put_v5(&mut self.wbuf, s, self.max_age).map_err(|e| e.to_string()),
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "packet not encoded; skipped");
        }
    }

    pub(super) async fn flush(&mut self) -> Result<(), LinkError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let write = async {
            self.io.write_all(&self.wbuf).await?;
            self.io.flush().await
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(r) => r?,
            Err(_) => return Err(LinkError::WriteStalled(self.write_timeout)),
        }
        self.wbuf.clear();
        Ok(())
    }
}

fn put_v4(buf: &mut BytesMut, s: &Send) -> Result<usize, mqttbytes::Error> {
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

fn put_v5(buf: &mut BytesMut, s: &Send, max_age: Duration) -> Result<usize, m5::Error> {
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

fn from_v4(p: v4::Packet) -> In {
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

fn from_v5(p: v5::Packet) -> In {
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

/// Opens the connection and completes CONNECT/CONNACK, all within `connect_timeout`.
pub(super) async fn connect(s: &UpstreamSettings) -> Result<(Conn, bool), LinkError> {
    let open = async {
        let tcp = TcpStream::connect((s.host.as_str(), s.port)).await?;
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = match &s.tls {
            None => Box::new(tcp),
            Some(cfg) => {
                let name = rustls::pki_types::ServerName::try_from(s.host.clone())
                    .map_err(|e| LinkError::Tls(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
                let tls = rumqttc::tokio_rustls::TlsConnector::from(cfg.clone());
                Box::new(tls.connect(name, tcp).await.map_err(LinkError::Tls)?)
            }
        };
        let mut conn = Conn {
            io,
            protocol: s.protocol,
            max_age: s.queue.max_age,
            receive_maximum: None,
            rbuf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            wbuf: BytesMut::new(),
            write_timeout: s.keepalive + s.connect_timeout,
        };
        let keep_alive = s.keepalive.as_secs().clamp(1, u16::MAX as u64) as u16;
        match s.protocol {
            Protocol::V311 => {
                let mut c = v4::Connect::new(s.client_id.clone());
                c.keep_alive = keep_alive;
                c.clean_session = false;
                c.last_will = Some(v4::LastWill::new(s.status_topic.clone(), "offline", QoS::AtLeastOnce, true));
                if let Some((u, p)) = &s.credentials {
                    c.set_login(u.clone(), p.clone());
                }
                c.write(&mut conn.wbuf)?;
            }
            Protocol::V5 => {
                // The session outlives the connection (0xFFFFFFFF: it never expires, as an MQTT 3.1.1
                // persistent session): what the broker holds for us must survive a cut.
                let properties =
                    v5::ConnectProperties { session_expiry_interval: Some(u32::MAX), ..v5::ConnectProperties::new() };
                let c = v5::Connect {
                    keep_alive,
                    client_id: s.client_id.clone(),
                    clean_start: false,
                    properties: Some(properties),
                };
                let will = v5::LastWill::new(s.status_topic.clone(), "offline", m5::QoS::AtLeastOnce, true, None);
                let login = s.credentials.as_ref().map(|(u, p)| v5::Login::new(u.clone(), p.clone()));
                c.write(&Some(will), &login, &mut conn.wbuf)?;
            }
        }
        conn.flush().await?;
        match conn.read().await? {
            In::ConnAck { session_present, refused: None, receive_maximum } => {
                conn.receive_maximum = receive_maximum;
                Ok((conn, session_present))
            }
            In::ConnAck { refused: Some(why), .. } => Err(LinkError::Refused(why)),
            other => Err(LinkError::NotConnAck(in_name(&other))),
        }
    };
    match tokio::time::timeout(s.connect_timeout, open).await {
        Ok(r) => r,
        Err(_) => Err(LinkError::ConnectTimeout),
    }
}

fn in_name(p: &In) -> &'static str {
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
