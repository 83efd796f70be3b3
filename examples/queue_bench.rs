//! Durable queue benchmark (figures for the README and closing notes, not a test).
//!
//! `cargo run --release --example queue_bench -- DIR N MQTT_PORT [RATE]`
//!
//! Without RATE:
//! 1. Append: N readings handed to the group-commit writer as fast as it takes them, at the default
//!    policy (100 ms commits, fsync at each commit); messages/s until all are committed, and bytes
//!    the process wrote to the block device per reading (`/proc/self/io` write_bytes, which counts
//!    what reached the disk, WAL checkpoints included).
//! 2. Replay: the bridge then connects to a Mosquitto on 127.0.0.1:MQTT_PORT and sends the backlog
//!    with no rate limit (window 100, QoS 1); messages/s until the queue is empty.
//!
//! With RATE (readings/s): the bridge is connected first and N readings arrive at that pace, as from
//! a serial sensor; reports disk bytes per reading in that steady state (insert and delete commits).
//!
//! DIR must be on a real disk (not tmpfs) for the byte counts to mean anything.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ser2mqtt::config::upstream::UpstreamSettings;
use ser2mqtt::config::BrokerSettings;
use ser2mqtt::local_broker::LocalBroker;
use ser2mqtt::store::Store;
use ser2mqtt::topic_map::OutMessage;
use ser2mqtt::upstream::{start_writer, Bridge};

fn write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("write_bytes: ")?.trim().parse().ok()))
        .unwrap_or(0)
}

/// A typical per-frame JSON reading with its receive time, on one of four topics.
fn reading(i: u64) -> OutMessage {
    const PAYLOAD: &str = r#"{"pm1_0":3,"pm2_5":5,"pm10":7,"time":"2026-11-22T06:00:00.000Z","ts":1795327200000}"#;
    OutMessage { topic: format!("sensors/pms/{}", i % 4), payload: PAYLOAD.into(), qos: 1, retain: false }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(&args[1]);
    let n: u64 = args[2].parse().unwrap();
    let port: u16 = args[3].parse().unwrap();
    let rate: Option<f64> = args.get(4).map(|r| r.parse().unwrap());
    let yaml = format!(
        "upstream:\n  host: 127.0.0.1\n  port: {port}\n  tls: {{ enabled: false }}\n  client_id: bench-{}\n  \
         forward: [{{ filter: \"#\", prefix: \"bench/\", qos: 1 }}]\n  queue: {{ dir: \"{}\", replay_rate: 1000000, max_bytes: 1GiB{} }}\n",
        std::process::id(),
        dir.display(),
        std::env::var("QUEUE_EXTRA").unwrap_or_default()
    );
    let config = ser2mqtt::config::parse(&yaml, std::path::Path::new("bench.yaml")).unwrap();
    let up = Arc::new(config.upstream.unwrap());
    let store = Arc::new(Store::open(&up.queue.path, Some(up.queue.clone())).unwrap());
    let committed = Arc::new(tokio::sync::Notify::new());
    let (acceptor, writer) =
        start_writer(store.clone(), Some(up.clone()), up.queue.commit_interval, committed.clone(), &Default::default());

    if let Some(rate) = rate {
        let broker =
            Arc::new(LocalBroker::start(&BrokerSettings::local_only("127.0.0.1:0".parse().unwrap())).await.unwrap());
        let bridge = Bridge::start(
            up.clone(),
            store.clone(),
            acceptor.clone(),
            committed,
            broker,
            Default::default(),
            &Default::default(),
        );
        let mut st = bridge.status.clone();
        while !st.borrow_and_update().connected {
            st.changed().await.unwrap();
        }
        let before = write_bytes();
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        for i in 0..n {
            tick.tick().await;
            acceptor.submit(&reading(i), false).await;
        }
        while store.status().delivered < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let written = write_bytes() - before;
        println!("steady_rate {rate} disk_bytes_per_reading {:.0}", written as f64 / n as f64);
        bridge.stop().await;
        drop(acceptor);
        writer.await.unwrap();
        return;
    }
    let before = write_bytes();
    let t = Instant::now();
    for i in 0..n {
        acceptor.submit(&reading(i), false).await;
    }
    let bridge_writer = acceptor.clone();
    drop(acceptor);
    // The writer ends when every handle is gone: wait for the committed count instead.
    while store.status().accepted < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let append = t.elapsed();
    let written = write_bytes() - before;
    println!("append_msgs_per_s {:.0}", n as f64 / append.as_secs_f64());
    println!("disk_bytes_per_reading {:.1}", written as f64 / n as f64);
    println!("queue_depth {}", store.status().depth);

    let broker =
        Arc::new(LocalBroker::start(&BrokerSettings::local_only("127.0.0.1:0".parse().unwrap())).await.unwrap());
    let t = Instant::now();
    let bridge = Bridge::start(
        up as Arc<UpstreamSettings>,
        store.clone(),
        bridge_writer,
        committed,
        broker,
        Default::default(),
        &Default::default(),
    );
    // The bridge deletes acknowledged messages in batches every 50 ms; poll the store at that pace.
    while store.status().depth > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(t.elapsed() < Duration::from_secs(600), "replay did not finish");
    }
    let replay = t.elapsed();
    println!("replay_msgs_per_s {:.0}", n as f64 / replay.as_secs_f64());
    bridge.stop().await;
    writer.await.unwrap();
}
