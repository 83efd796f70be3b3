//! Bursts: several ports each given thousands of frames as fast as the pty takes them. The readers
//! wait for the publisher instead of dropping, so every reading reaches a subscriber, in order per port.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::QoS;

use crate::support::*;

async fn burst(ports: usize, frames: u32) {
    let mut ptys: Vec<Pty> = (0..ports).map(|_| pty()).collect();
    let mut yaml = String::from(
        // The local broker's per-subscriber queue is raised so that the broker, not the gateway's
        // reading pipeline, is never what limits this test.
        "broker: { listeners: [{ bind: \"127.0.0.1:0\" }], max_queue_len: 100000 }\nports:\n",
    );
    for (i, p) in ptys.iter().enumerate() {
        yaml += &format!(
            "  - {{ name: p{i}, device: {}, framing: {{ type: lines }}, decoder: {{ type: key_value, keys: [n], types: {{ n: number }} }} }}\n",
            p.path.display()
        );
    }
    yaml += "maps:\n";
    for i in 0..ports {
        yaml += &format!("  - {{ port: p{i}, topic: \"b/p{i}\", fields: [n], qos: 1 }}\n");
    }
    let gw = start(config_from(&yaml)).await;
    let mut sub = subscribe(addr(&gw), &[("b/#", QoS::AtLeastOnce)]).await;
    for (i, p) in ptys.iter().enumerate() {
        wait_for(&format!("p{i} open"), || {
            gw.stats().iter().any(|(n, s)| **n == *format!("p{i}") && s.opens.load(Ordering::Relaxed) > 0)
        })
        .await;
        let _ = p;
    }
    let writers = ptys.iter_mut().map(|p| async move {
        let text: String = (1..=frames).map(|n| format!("n={n}\n")).collect();
        for chunk in text.as_bytes().chunks(4096) {
            p.write(chunk).await;
        }
    });
    futures::future::join_all(writers).await;
    let mut last: HashMap<String, u32> = HashMap::new();
    let total = ports * frames as usize;
    for k in 0..total {
        let Some(g) = sub.next_within(WAIT).await else {
            panic!("{k} of {total} readings arrived; last per port: {last:?}");
        };
        let n = g.payload.parse::<f64>().unwrap_or_else(|_| panic!("plain number, got {:?}", g.payload)) as u32;
        let prev = last.insert(g.topic.clone(), n).unwrap_or(0);
        assert_eq!(n, prev + 1, "{}: readings in order, none missing", g.topic);
    }
    assert!(sub.next_within(Duration::from_millis(300)).await.is_none(), "nothing extra");
    for (name, s) in gw.stats() {
        assert_eq!(s.frames.load(Ordering::Relaxed), frames as u64, "{name}: every frame read");
        eprintln!("{name}: publisher_waits {}", s.publisher_waits.load(Ordering::Relaxed));
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn four_ports_of_5000_frame_bursts_arrive_whole_and_in_order() {
    burst(4, 5000).await;
}

/// Measurements for the README, not run by default (`tests/run.sh -- --ignored bursts::larger`):
/// with back pressure no burst size is lost inside the gateway; these sizes bound how long it takes.
#[tokio::test]
#[ignore]
async fn larger_one_port_of_50000() {
    burst(1, 50_000).await;
}

#[tokio::test]
#[ignore]
async fn larger_four_ports_of_20000() {
    burst(4, 20_000).await;
}

#[tokio::test]
#[ignore]
async fn larger_sixteen_ports_of_5000() {
    burst(16, 5_000).await;
}
