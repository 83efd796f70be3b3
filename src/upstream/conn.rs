//! The connection to the cloud broker as bytes: TCP or TLS, CONNECT/CONNACK within the connect
//! timeout, and reading and writing packets in the version the settings name (the translation is
//! `packets`'). What the packets mean is the link's and the outbox's.

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use rumqttc::mqttbytes::{self, QoS};
use rumqttc::v5::mqttbytes as m5;
use rumqttc::v5::mqttbytes::v5;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::outbox::Send;
use super::packets::{from_v4, from_v5, in_name, put_v4, put_v5};
pub(super) use super::packets::{Ack, In};
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
                Protocol::V311 => match v4::Packet::read(&mut self.rbuf, MAX_PACKET) {
                    Ok(p) => return Ok(from_v4(p)),
                    Err(mqttbytes::Error::InsufficientBytes(_)) => true,
                    Err(e) => return Err(e.into()),
                },
                Protocol::V5 => match v5::Packet::read(&mut self.rbuf, Some(MAX_PACKET as u32)) {
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
                let tls = tokio_rustls::TlsConnector::from(cfg.clone());
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
