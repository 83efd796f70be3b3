//! The broker's front door: every LAN connection is accepted here and held to the limits the engine
//! lacks (rmqtt waits forever for a first byte, has no connection cap and feeds each session through
//! an unbounded channel), then spliced to the engine's own listener on loopback.
//!
//! Per connection: a connection cap per listener, a deadline for the whole CONNECT packet, CONNACK 1
//! for an unknown protocol level, a packet size limit both ways, the client's keepalive enforced at
//! 1.5×, and a bounded queue towards the client: when a subscriber stops reading, QoS 0 publishes
//! are dropped oldest first, and if what is left (QoS 1/2, acks) still exceeds the bound the client
//! is disconnected. Everything is counted in `FrontCounters`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod outgoing;
use outgoing::{engine_to_queue, queue_to_client, Outgoing, CUT, FLUSH};

/// The limits of one listener (from `broker:` in the config).
#[derive(Debug, Clone, PartialEq)]
pub struct FrontLimits {
    /// Open connections on this listener; one more is closed at once, with a log line.
    pub max_connections: usize,
    /// From accept to a complete CONNECT packet.
    pub connect_timeout: Duration,
    /// Largest MQTT packet either way (fixed header included).
    pub max_packet_size: usize,
    /// Bytes waiting for one client before QoS 0 publishes are dropped, then the client cut.
    pub max_client_buffer: usize,
}

/// What the front door did, since start, over all listeners.
#[derive(Debug, Default, serde::Serialize)]
pub struct FrontCounters {
    pub connections: AtomicUsize,
    pub accepted: AtomicU64,
    pub refused_at_cap: AtomicU64,
    pub connect_timeouts: AtomicU64,
    pub bad_protocol: AtomicU64,
    pub oversized_packets: AtomicU64,
    pub keepalive_timeouts: AtomicU64,
    pub qos0_dropped: AtomicU64,
    pub slow_clients_cut: AtomicU64,
    /// TLS handshakes that failed (wrong CA, no client certificate where one is required, not TLS).
    pub tls_failures: AtomicU64,
}

/// A client's transport before MQTT: TLS first or not, then MQTT directly or inside WebSocket
/// binary messages (browsers).
#[derive(Clone, Default)]
pub struct Transport {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub websocket: bool,
}

/// A client stream of whichever transport, once its handshakes are done.
trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// The WebSocket subprotocols MQTT clients ask for (MQTT 3.1.1 §6: `mqtt`; older clients `mqttv3.1`).
const WS_PROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Completes the TLS and WebSocket handshakes (the caller bounds them by the CONNECT deadline), or
/// says why not and returns `None`.
// The subprotocol callback's `Result<Response, ErrorResponse>` is tungstenite's signature, not ours.
#[allow(clippy::result_large_err)]
async fn handshake(
    socket: TcpStream,
    transport: &Transport,
    peer: SocketAddr,
    counters: &FrontCounters,
) -> Option<Box<dyn Duplex>> {
    let stream: Box<dyn Duplex> = match &transport.tls {
        None => Box::new(socket),
        Some(acceptor) => match acceptor.accept(socket).await {
            Ok(tls) => Box::new(tls),
            Err(e) => {
                counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%peer, error = %e, "TLS handshake failed; connection closed");
                return None;
            }
        },
    };
    if !transport.websocket {
        return Some(stream);
    }
    use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    let choose = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let asked = req.headers().get_all("sec-websocket-protocol");
        let offered: Vec<&str> =
            asked.iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim).collect();
        if let Some(p) = WS_PROTOCOLS.iter().find(|p| offered.contains(p)) {
            if let Ok(v) = p.parse() {
                resp.headers_mut().insert("sec-websocket-protocol", v);
            }
        }
        Ok(resp)
    };
    match async_tungstenite::tokio::accept_hdr_async(stream, choose).await {
        Ok(ws) => Some(Box::new(ws_stream_tungstenite::WsStream::new(ws))),
        Err(e) => {
            counters.bad_protocol.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, error = %e, "WebSocket handshake failed; connection closed");
            None
        }
    }
}

/// Accepts on `listener` until cancelled, splicing each accepted client to `engine`.
pub async fn serve(
    listener: TcpListener,
    transport: Transport,
    engine: SocketAddr,
    limits: FrontLimits,
    counters: Arc<FrontCounters>,
    cancel: CancellationToken,
) {
    let open = Arc::new(AtomicUsize::new(0));
    // Logged once per episode of being full, not once per refused socket (a scanner makes thousands).
    let mut full_logged = false;
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors (EMFILE) or similar: back off rather than spin; the health
                // probe, which connects like a client, reports the lockout meanwhile.
                tracing::warn!(error = %e, "broker listener cannot accept connections");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= limits.max_connections {
            counters.refused_at_cap.fetch_add(1, Ordering::Relaxed);
            if !full_logged {
                tracing::warn!(max_connections = limits.max_connections, %peer,
                    "broker listener is at its connection limit; new connections are closed until some end");
                full_logged = true;
            }
            drop(socket);
            continue;
        }
        full_logged = false;
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        let guard = OpenGuard::new(open.clone(), counters.clone());
        let (limits, counters, cancel, transport) =
            (limits.clone(), counters.clone(), cancel.clone(), transport.clone());
        // The CONNECT deadline runs from accept, so a TLS handshake that never ends is cut by it too.
        let deadline = Instant::now() + limits.connect_timeout;
        let _ = socket.set_nodelay(true);
        tokio::spawn(async move {
            let _guard = guard;
            let run = async {
                if transport.tls.is_none() && !transport.websocket {
                    // Plain MQTT over TCP, the common case, without the indirection of a boxed stream.
                    return connection(socket, peer, engine, &limits, &counters, deadline).await;
                }
                match tokio::time::timeout_at(deadline, handshake(socket, &transport, peer, &counters)).await {
                    Ok(Some(stream)) => connection(stream, peer, engine, &limits, &counters, deadline).await,
                    Ok(None) => {}
                    Err(_) => {
                        counters.connect_timeouts.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, "no TLS or WebSocket handshake in time; connection closed");
                    }
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = run => {}
            }
        });
    }
}

/// Counts an open connection for as long as it lives.
struct OpenGuard(Arc<AtomicUsize>, Arc<FrontCounters>);

impl OpenGuard {
    fn new(open: Arc<AtomicUsize>, counters: Arc<FrontCounters>) -> OpenGuard {
        open.fetch_add(1, Ordering::Relaxed);
        counters.connections.fetch_add(1, Ordering::Relaxed);
        OpenGuard(open, counters)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a packet ends: (header length, body length), once the fixed header is complete.
fn packet_len(buf: &[u8]) -> Result<Option<(usize, usize)>, ()> {
    let mut len = 0usize;
    for i in 0..4 {
        let Some(b) = buf.get(1 + i) else { return Ok(None) };
        len |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((2 + i, len)));
        }
    }
    Err(()) // a remaining length longer than 4 bytes is malformed
}

#[derive(Debug, PartialEq)]
enum Hello {
    /// A CONNECT packet (all its bytes) and the keepalive it asks for.
    Connect(Bytes, u16),
    /// A CONNECT with a protocol level this broker does not speak (answered with CONNACK 1).
    BadLevel,
    Malformed,
    TooBig,
}

/// Reads the first packet, which must be a CONNECT.
async fn read_connect(socket: &mut (impl AsyncRead + Unpin), max: usize) -> std::io::Result<Hello> {
    let mut buf = BytesMut::with_capacity(256);
    let (head, body) = loop {
        if socket.read_buf(&mut buf).await? == 0 {
            return Ok(Hello::Malformed);
        }
        match packet_len(&buf) {
            Err(()) => return Ok(Hello::Malformed),
            Ok(Some(lens)) => break lens,
            Ok(None) => {}
        }
    };
    if buf[0] != 0x10 {
        return Ok(Hello::Malformed);
    }
    if head + body > max {
        return Ok(Hello::TooBig);
    }
    while buf.len() < head + body {
        if socket.read_buf(&mut buf).await? == 0 {
            return Ok(Hello::Malformed);
        }
    }
    // Variable header: protocol name (length-prefixed), level, flags, keepalive.
    let v = &buf[head..head + body];
    let Some(name_len) = v.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize) else {
        return Ok(Hello::Malformed);
    };
    let (Some(name), Some(level), Some(ka)) =
        (v.get(2..2 + name_len), v.get(2 + name_len), v.get(4 + name_len..6 + name_len))
    else {
        return Ok(Hello::Malformed);
    };
    let known = matches!((name, *level), (b"MQTT", 4 | 5) | (b"MQIsdp", 3));
    if !known {
        return Ok(if name == b"MQTT" || name == b"MQIsdp" { Hello::BadLevel } else { Hello::Malformed });
    }
    let keepalive = u16::from_be_bytes([ka[0], ka[1]]);
    Ok(Hello::Connect(buf.freeze(), keepalive))
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut client: S,
    peer: SocketAddr,
    engine: SocketAddr,
    limits: &FrontLimits,
    counters: &FrontCounters,
    deadline: Instant,
) {
    let hello = match tokio::time::timeout_at(deadline, read_connect(&mut client, limits.max_packet_size)).await {
        Err(_) => {
            counters.connect_timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, timeout = ?limits.connect_timeout, "no CONNECT in time; connection closed");
            return;
        }
        Ok(Err(_)) => return,
        Ok(Ok(h)) => h,
    };
    let (connect, keepalive) = match hello {
        Hello::Connect(bytes, keepalive) => (bytes, keepalive),
        Hello::BadLevel => {
            counters.bad_protocol.fetch_add(1, Ordering::Relaxed);
            // CONNACK, return code 1: unacceptable protocol version (MQTT 3.1.1 §3.2.2.3).
            let _ = client.write_all(&[0x20, 0x02, 0x00, 0x01]).await;
            return;
        }
        Hello::Malformed => {
            counters.bad_protocol.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Hello::TooBig => {
            counters.oversized_packets.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, max_packet_size = limits.max_packet_size, "CONNECT larger than max_packet_size; connection closed");
            return;
        }
    };
    let Ok(mut upstream) = TcpStream::connect(engine).await else {
        tracing::warn!(%engine, "the broker engine's internal listener refused a connection");
        return;
    };
    let _ = upstream.set_nodelay(true);
    if upstream.write_all(&connect).await.is_err() {
        return;
    }
    let (cr, cw) = tokio::io::split(client);
    let (er, ew) = upstream.into_split();
    // MQTT 3.1.1 §3.1.2.10: one and a half times the keepalive without a packet ends the connection.
    let idle = (keepalive > 0).then(|| Duration::from_millis(keepalive as u64 * 1500));
    let queue = Arc::new(Outgoing::default());
    let down = async {
        let slow = engine_to_queue(er, queue.clone(), peer, limits, counters).await;
        // The engine closed (after a refusing CONNACK, say): what it sent still goes out, unless
        // the client was cut for not reading.
        queue.closed.store(if slow { CUT } else { FLUSH }, Ordering::Release);
        queue.ready.notify_one();
    };
    tokio::select! {
        _ = client_to_engine(cr, ew, idle, peer, limits, counters) => {}
        _ = async { tokio::join!(down, queue_to_client(cw, queue.clone())) } => {}
    }
}

async fn client_to_engine(
    mut from: impl AsyncRead + Unpin,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    idle: Option<Duration>,
    peer: SocketAddr,
    limits: &FrontLimits,
    counters: &FrontCounters,
) {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    // Bytes of the current packet still to come (its size was checked when its header arrived).
    let mut rest = 0usize;
    loop {
        let read = match idle {
            Some(t) => match tokio::time::timeout(t, from.read_buf(&mut buf)).await {
                Ok(r) => r,
                Err(_) => {
                    counters.keepalive_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "client silent for 1.5x its keepalive; connection closed");
                    return;
                }
            },
            None => from.read_buf(&mut buf).await,
        };
        if !matches!(read, Ok(n) if n > 0) {
            return;
        }
        // Walk packet boundaries only to check sizes; bytes pass through unchanged.
        let mut at = 0;
        loop {
            if rest > 0 {
                let take = rest.min(buf.len() - at);
                at += take;
                rest -= take;
                if rest > 0 {
                    break;
                }
            }
            match packet_len(&buf[at..]) {
                Err(()) => return,
                Ok(None) => break,
                Ok(Some((head, body))) => {
                    if head + body > limits.max_packet_size {
                        counters.oversized_packets.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(%peer, size = head + body, max_packet_size = limits.max_packet_size,
                            "packet larger than max_packet_size; connection closed");
                        return;
                    }
                    rest = head + body;
                }
            }
        }
        if to.write_all(&buf[..at]).await.is_err() {
            return;
        }
        buf.advance(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_lengths() {
        assert_eq!(packet_len(&[0x30]), Ok(None));
        assert_eq!(packet_len(&[0x30, 0x00]), Ok(Some((2, 0))));
        assert_eq!(packet_len(&[0x30, 0x7f]), Ok(Some((2, 127))));
        assert_eq!(packet_len(&[0x30, 0x80]), Ok(None));
        assert_eq!(packet_len(&[0x30, 0x80, 0x01]), Ok(Some((3, 128))));
        assert_eq!(packet_len(&[0x30, 0xff, 0xff, 0xff, 0x7f]), Ok(Some((5, 268_435_455))));
        assert_eq!(packet_len(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]), Err(()));
    }
}
