//! The connection to the cloud broker as bytes and packets: TCP or TLS, CONNECT/CONNACK within the
//! connect timeout, and reading and writing MQTT 3.1.1 packets with rumqttc's codec. What the packets
//! mean is the link's and the outbox's.

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{self, Packet};
use rumqttc::mqttbytes::{self, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::outbox::Send;
use super::settings::UpstreamSettings;
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
    #[error("broker refused the connection: {0:?}")]
    Refused(v4::ConnectReturnCode),
    #[error("broker closed the connection")]
    Closed,
    #[error("no answer from the broker within the keepalive ({0:?})")]
    Silent(Duration),
    #[error("sending to the broker stalled for {0:?}")]
    WriteStalled(Duration),
    #[error("broker sent a malformed packet: {0}")]
    Protocol(#[from] mqttbytes::Error),
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
    rbuf: BytesMut,
    /// Encoded packets waiting for `flush`; the link writes acknowledgements straight into it.
    pub(super) wbuf: BytesMut,
    /// Longest a write may take before the link counts as dead (a black hole accepts bytes until the
    /// socket buffer is full, then never again).
    write_timeout: Duration,
}

impl Conn {
    /// The next packet. Cancel-safe: bytes read stay in `rbuf`.
    pub(super) async fn read(&mut self) -> Result<Packet, LinkError> {
        loop {
            match v4::read(&mut self.rbuf, MAX_PACKET) {
                Ok(p) => return Ok(p),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {
                    self.rbuf.reserve(READ_CHUNK_BYTES);
                    if self.io.read_buf(&mut self.rbuf).await? == 0 {
                        return Err(LinkError::Closed);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub(super) fn put(&mut self, s: &Send) {
        // Encoding into a BytesMut only fails for packets over the protocol's size, which the
        // acceptor refuses to queue.
        let r = match s {
            Send::Publish { pkid, dup, record } => {
                let mut p = v4::Publish::from_bytes(record.topic.clone(), qos(record.qos), record.payload.clone());
                p.pkid = *pkid;
                p.dup = *dup;
                p.retain = record.retain;
                p.write(&mut self.wbuf)
            }
            Send::PubRel { pkid } => v4::PubRel::new(*pkid).write(&mut self.wbuf),
            Send::Subscribe { pkid, filters } => {
                let mut sub =
                    v4::Subscribe::new_many(filters.iter().map(|(f, q)| v4::SubscribeFilter::new(f.clone(), qos(*q))));
                sub.pkid = *pkid;
                sub.write(&mut self.wbuf)
            }
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
            rbuf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            wbuf: BytesMut::new(),
            write_timeout: s.keepalive + s.connect_timeout,
        };
        let mut c = v4::Connect::new(s.client_id.clone());
        c.keep_alive = s.keepalive.as_secs().clamp(1, u16::MAX as u64) as u16;
        c.clean_session = false;
        c.last_will = Some(v4::LastWill::new(s.status_topic.clone(), "offline", QoS::AtLeastOnce, true));
        if let Some((u, p)) = &s.credentials {
            c.set_login(u.clone(), p.clone());
        }
        c.write(&mut conn.wbuf)?;
        conn.flush().await?;
        match conn.read().await? {
            Packet::ConnAck(a) if a.code == v4::ConnectReturnCode::Success => Ok((conn, a.session_present)),
            Packet::ConnAck(a) => Err(LinkError::Refused(a.code)),
            other => Err(LinkError::NotConnAck(packet_name(&other))),
        }
    };
    match tokio::time::timeout(s.connect_timeout, open).await {
        Ok(r) => r,
        Err(_) => Err(LinkError::ConnectTimeout),
    }
}

pub(super) fn packet_name(p: &Packet) -> &'static str {
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
