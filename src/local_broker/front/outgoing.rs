//! The queue between the engine and one LAN client: packets read from the engine as fast as it sends
//! them (so rmqtt's unbounded per-session channel never fills), held within `max_client_buffer`
//! (oldest QoS 0 publishes dropped first, the client cut if QoS 1/2 alone exceed it), and written to
//! the client at the client's pace.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use super::{packet_len, FrontCounters, FrontLimits};

/// `Outgoing::closed`, 0 while the engine side is open: it has closed, or the client is being cut.
pub(super) const FLUSH: u8 = 1;
pub(super) const CUT: u8 = 2;

/// A last flush after the engine closed gets this long: a live client takes milliseconds for a
/// CONNACK, a stalled one must not keep the connection.
const FINAL_FLUSH: Duration = Duration::from_secs(5);

/// Packets waiting for one client, and their size in bytes.
#[derive(Default)]
pub(super) struct Outgoing {
    pub packets: Mutex<(VecDeque<Bytes>, usize)>,
    pub ready: Notify,
    pub closed: std::sync::atomic::AtomicU8,
}

fn is_qos0_publish(packet: &[u8]) -> bool {
    packet[0] >> 4 == 3 && (packet[0] >> 1) & 3 == 0
}

/// What `Outgoing::admit` did with a batch of packets.
#[derive(Debug, PartialEq)]
pub(super) struct Admitted {
    /// QoS 0 publishes dropped to make room.
    pub dropped: u64,
    /// Bytes waiting after that.
    pub waiting: usize,
    /// Still more than the bound: QoS 1/2 and acks alone exceed it.
    pub over: bool,
}

impl Outgoing {
    /// Queues `batch`; past `max` bytes, drops the oldest QoS 0 publishes first (a newer reading
    /// replaces an older one) until the queue fits again or none are left.
    pub(super) fn admit(&self, batch: Vec<Bytes>, max: usize) -> Admitted {
        let mut q = self.packets.lock().unwrap();
        let (packets, bytes) = &mut *q;
        for p in batch {
            *bytes += p.len();
            packets.push_back(p);
        }
        let mut dropped = 0;
        if *bytes > max {
            packets.retain(|p| {
                if *bytes > max && is_qos0_publish(p) {
                    *bytes -= p.len();
                    dropped += 1;
                    false
                } else {
                    true
                }
            });
        }
        Admitted { dropped, waiting: *bytes, over: *bytes > max }
    }
}

/// Reads the engine's packets for this client as fast as they come (so the engine never backs up
/// into its unbounded channel) and queues them within `max_client_buffer`.
pub(super) async fn engine_to_queue(
    mut from: tokio::net::tcp::OwnedReadHalf,
    queue: Arc<Outgoing>,
    peer: SocketAddr,
    limits: &FrontLimits,
    counters: &FrontCounters,
) -> bool {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        match from.read_buf(&mut buf).await {
            Ok(n) if n > 0 => {}
            _ => return false,
        }
        let mut complete = Vec::new();
        loop {
            match packet_len(&buf) {
                Err(()) => return false,
                Ok(Some((head, body))) if buf.len() >= head + body => {
                    complete.push(buf.split_to(head + body).freeze());
                }
                _ => break,
            }
        }
        if complete.is_empty() {
            continue;
        }
        let admitted = queue.admit(complete, limits.max_client_buffer);
        if admitted.dropped > 0 {
            let n = counters.qos0_dropped.fetch_add(admitted.dropped, Ordering::Relaxed);
            if n == 0 {
                tracing::warn!(%peer, max_client_buffer = limits.max_client_buffer,
                    "a subscriber is not keeping up: QoS 0 messages to it are being dropped (counted as qos0_dropped)");
            }
        }
        if admitted.over {
            counters.slow_clients_cut.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, waiting = admitted.waiting, max_client_buffer = limits.max_client_buffer,
                "a subscriber is not reading its QoS 1/2 messages; disconnected");
            return true;
        }
        queue.ready.notify_one();
    }
}

/// What `queue_to_client` gathers before a write: a batch of small publishes (the usual case, a few
/// dozen bytes each) goes out in one send instead of one send per packet; a packet this big or
/// bigger is written straight through.
const WRITE_BUFFER: usize = 8 * 1024;

pub(super) async fn queue_to_client(to: impl tokio::io::AsyncWrite + Unpin, queue: Arc<Outgoing>) {
    let mut to = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, to);
    loop {
        // Read before draining: once FLUSH is seen, every packet the engine sent is in the queue.
        let state = queue.closed.load(Ordering::Acquire);
        let batch: Vec<Bytes> = {
            let mut q = queue.packets.lock().unwrap();
            q.1 = 0;
            q.0.drain(..).collect()
        };
        if state == CUT {
            return;
        }
        if batch.is_empty() {
            if state == FLUSH {
                let _ = to.shutdown().await;
                return;
            }
            queue.ready.notified().await;
            continue;
        }
        // Flushed after each batch: the buffer, and a TLS stream that may hold encrypted bytes back.
        let write = async {
            for p in &batch {
                to.write_all(p).await?;
            }
            to.flush().await
        };
        let done = if state == FLUSH { tokio::time::timeout(FINAL_FLUSH, write).await.ok() } else { Some(write.await) };
        if !matches!(done, Some(Ok(()))) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(qos: u8, len: usize) -> Bytes {
        let mut p = vec![0x30 | (qos << 1), (len - 2) as u8];
        p.resize(len, 0);
        Bytes::from(p)
    }

    #[test]
    fn publishes_are_told_apart_from_other_packets() {
        assert!(is_qos0_publish(&[0x30, 0]));
        assert!(is_qos0_publish(&[0x31, 0]), "retain flag");
        assert!(!is_qos0_publish(&[0x32, 0]), "QoS 1");
        assert!(!is_qos0_publish(&[0x90, 0]), "SUBACK");
    }

    #[test]
    fn past_the_bound_the_oldest_qos0_go_first_and_qos1_stays() {
        let q = Outgoing::default();
        let first = q.admit(vec![publish(0, 10), publish(1, 10), publish(0, 10)], 25);
        assert_eq!(first, Admitted { dropped: 1, waiting: 20, over: false });
        let kept: Vec<u8> = q.packets.lock().unwrap().0.iter().map(|p| p[0]).collect();
        assert_eq!(kept, [0x32, 0x30], "the older QoS 0 went, the QoS 1 and the newer QoS 0 stayed");
        let second = q.admit(vec![publish(1, 10), publish(1, 10)], 25);
        assert_eq!(second, Admitted { dropped: 1, waiting: 30, over: true }, "QoS 1 alone exceeds the bound");
    }
}
