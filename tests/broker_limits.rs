//! The broker's front door against hostile or broken LAN clients, over real sockets: silent sockets
//! closed at the CONNECT deadline, the connection cap (and the health probe noticing it), CONNACK 1
//! for an unknown protocol level, keepalive at 1.5×, the packet size limit, and a stalled subscriber
//! that costs bounded memory while a healthy one gets every message.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rumqttc::QoS;
use ser2mqtt::gateway::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// A gateway with one port (unused) and the given `broker:` settings on a loopback listener.
async fn gateway(broker: &str) -> (Gateway, Pty) {
    let p = pty();
    let yaml = format!(
        r#"
gateway: {{ name: gw, stats_interval: 1s }}
broker:
  listeners: [{{ bind: "127.0.0.1:0" }}]
{broker}
ports:
  - {{ name: t, device: {dev}, framing: {{ type: lines }}, decoder: {{ type: csv, columns: [v] }} }}
maps:
  - {{ port: t, topic: "sensors/{{field}}" }}
"#,
        dev = p.path.display()
    );
    (start(config_from(&yaml)).await, p)
}

/// An MQTT 3.1.1 CONNECT (clean session) with this client id, protocol level and keepalive.
fn connect_packet(id: &str, level: u8, keepalive: u16) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, 0x02];
    body.extend_from_slice(&keepalive.to_be_bytes());
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    packet(0x10, &body)
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(payload);
    packet(0x30, &body)
}

fn subscribe_packet(filter: &str) -> Vec<u8> {
    let mut body = vec![0, 1];
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(0);
    packet(0x82, &body)
}

/// Connects with a raw CONNECT and returns the socket after a CONNACK 0.
async fn raw_client(addr: SocketAddr, id: &str, keepalive: u16) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&connect_packet(id, 4, keepalive)).await.unwrap();
    let mut ack = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut ack)).await.expect("CONNACK in time").unwrap();
    assert_eq!(ack, [0x20, 2, 0, 0]);
    s
}

/// Waits until the server closes `s` (EOF or reset), reading and discarding what arrives.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let read_to_end = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_to_end).await.is_ok()
}

/// Time for a real client to get its CONNACK.
async fn connack_time(addr: SocketAddr) -> Duration {
    let t = Instant::now();
    let sub = subscribe_with(options(addr, &format!("probe-{}", fastrand::u32(..))), &[]).await;
    assert!(sub.is_ok(), "a normal client was refused");
    t.elapsed()
}

fn stats(gw: &Gateway) -> serde_json::Value {
    serde_json::from_slice(&gw.broker().stats_json()).unwrap()
}

/// 2,000 (and each a descriptor here and one in the gateway) needs more than a 1,024 soft limit.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < 8192 && hard > soft {
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(65536), hard).unwrap();
    }
}

#[tokio::test]
async fn silent_sockets_are_closed_at_the_connect_deadline_while_clients_keep_getting_in() {
    raise_fd_limit();
    let (gw, _p) = gateway("  connect_timeout: 3s\n  max_connections: 2100").await;
    let a = addr(&gw);
    let opened = Instant::now();
    let mut silent = Vec::new();
    let mut worst = Duration::ZERO;
    for i in 0..2000 {
        silent.push(TcpStream::connect(a).await.unwrap());
        if i % 250 == 0 {
            worst = worst.max(connack_time(a).await);
        }
    }
    worst = worst.max(connack_time(a).await);
    // Generous against a loaded machine; on an idle one it is a few milliseconds.
    assert!(worst < Duration::from_secs(2), "a normal client waited {worst:?} for its CONNACK");
    for s in &mut silent {
        assert!(closed_within(s, WAIT * 2).await, "a silent socket was held past the deadline");
    }
    assert!(opened.elapsed() >= Duration::from_secs(3), "closed before the deadline");
    assert_eq!(stats(&gw)["connect_timeouts"], 2000);
    assert!(connack_time(a).await < Duration::from_secs(2));
    gw.shutdown().await;
}

#[tokio::test]
async fn at_the_connection_cap_new_clients_are_closed_and_health_fails_until_room_returns() {
    let (gw, _p) = gateway("  connect_timeout: 2s\n  max_connections: 4").await;
    let a = addr(&gw);
    gw.health(WAIT).await.expect("healthy before");
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(a).await.unwrap());
    }
    // Give the accept loop the four before the fifth comes.
    wait_for("four connections held", || stats(&gw)["connections"] == 4).await;
    let mut fifth = TcpStream::connect(a).await.unwrap();
    assert!(closed_within(&mut fifth, WAIT).await, "the fifth connection was not closed");
    let unhealthy = gw.health(Duration::from_millis(500)).await;
    assert!(unhealthy.is_err(), "the health probe must fail while no new client gets in");
    // The deadline clears the silent sockets; the probe gets in again.
    for s in &mut silent {
        assert!(closed_within(s, WAIT).await);
    }
    wait_for("room again", || stats(&gw)["connections"] == 0).await;
    gw.health(WAIT).await.expect("healthy again");
    assert!(stats(&gw)["refused_at_cap"].as_u64().unwrap() >= 2, "the fifth and the probe were refused");
    gw.shutdown().await;
}

#[tokio::test]
async fn an_unknown_protocol_level_gets_connack_1() {
    let (gw, _p) = gateway("").await;
    let mut s = TcpStream::connect(addr(&gw)).await.unwrap();
    s.write_all(&connect_packet("v6", 6, 30)).await.unwrap();
    let mut ack = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut ack)).await.unwrap().unwrap();
    assert_eq!(ack, [0x20, 2, 0, 1], "CONNACK, unacceptable protocol version");
    assert!(closed_within(&mut s, WAIT).await);
    gw.shutdown().await;
}

#[tokio::test]
async fn keepalive_is_enforced_at_one_and_a_half_times() {
    let (gw, _p) = gateway("").await;
    let a = addr(&gw);
    // Both at once: a client that pings every 1.5 s with keepalive 2 s stays, while a silent one is
    // closed after 1.5 x 2 s, not before.
    let pinger = async {
        let mut pinger = raw_client(a, "pinger", 2).await;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            pinger.write_all(&[0xc0, 0]).await.unwrap();
            let mut pong = [0u8; 2];
            tokio::time::timeout(WAIT, pinger.read_exact(&mut pong)).await.unwrap().unwrap();
            assert_eq!(pong, [0xd0, 0]);
        }
    };
    let silent = async {
        let mut silent = raw_client(a, "silent", 2).await;
        let t = Instant::now();
        assert!(closed_within(&mut silent, WAIT).await);
        let after = t.elapsed();
        assert!(after >= Duration::from_millis(2900), "closed after {after:?}, before 1.5 x keepalive");
    };
    tokio::join!(pinger, silent);
    assert_eq!(stats(&gw)["keepalive_timeouts"], 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn packets_over_max_packet_size_close_the_connection() {
    let (gw, _p) = gateway("  max_packet_size: 1KiB").await;
    let a = addr(&gw);
    let mut sub = subscribe(a, &[("big/#", QoS::AtMostOnce)]).await;
    let mut s = raw_client(a, "big", 30).await;
    s.write_all(&publish_packet("big/ok", &[b'x'; 900])).await.unwrap();
    assert_eq!(sub.next_on("big/").await.payload.len(), 900);
    s.write_all(&publish_packet("big/no", &[b'x'; 2000])).await.unwrap();
    assert!(closed_within(&mut s, WAIT).await, "an oversized packet did not close the connection");
    assert!(sub.drain_on("big/", Duration::from_millis(300)).await.is_empty());
    assert_eq!(stats(&gw)["oversized_packets"], 1);
    gw.shutdown().await;
}

/// Resident memory of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_stalled_subscriber_costs_bounded_memory_and_a_healthy_one_gets_everything() {
    stalled_subscriber(20_000).await;
}

/// The issue's full figure, 200,000 x 2 KB (400 MB through the broker): a measurement, not part of
/// the default run (`tests/run.sh -- --ignored --nocapture stalled_subscriber_200k`).
#[tokio::test]
#[ignore]
async fn stalled_subscriber_200k() {
    stalled_subscriber(200_000).await;
}

async fn stalled_subscriber(n: usize) {
    // The gateway as its own process, so its memory is measured apart from the test's.
    let dir = tempfile::tempdir().unwrap();
    let p = pty();
    let port = free_port();
    let conf = dir.path().join("g.yaml");
    std::fs::write(
        &conf,
        format!(
            "gateway: {{ name: gw, stats_interval: 1s }}\nbroker: {{ listeners: [{{ bind: \"127.0.0.1:{port}\" }}] }}\nports:\n  - {{ name: t, device: {}, framing: {{ type: lines }}, decoder: {{ type: csv, columns: [v] }} }}\nmaps:\n  - {{ port: t, topic: \"s/{{field}}\" }}\n",
            p.path.display()
        ),
    )
    .unwrap();
    let gw = run_binary(&conf);
    let a = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(a).await;
    let pid = gw.0.id();

    // Stalled: subscribes to everything, then never reads again.
    let mut stalled = raw_client(a, "stalled", 0).await;
    stalled.write_all(&subscribe_packet("#")).await.unwrap();
    let mut suback = [0u8; 5];
    stalled.read_exact(&mut suback).await.unwrap();
    assert_eq!(suback, [0x90, 3, 0, 1, 0]);
    let mut healthy = subscribe(a, &[("load/#", QoS::AtMostOnce)]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = rss_kib(pid);

    // n x 2 KB at QoS 0, in batches of BATCH that the healthy subscriber takes before the next: it
    // keeps up by construction (its queue stays under max_client_buffer however loaded the machine
    // is), while the stalled one falls ever further behind.
    const BATCH: usize = 100;
    let publisher = subscribe(a, &[]).await;
    let payload = vec![b'p'; 2048];
    let mut got = 0;
    let mut peak = idle;
    for sent in (0..n).step_by(BATCH) {
        for i in sent..(sent + BATCH).min(n) {
            publisher.client.publish(format!("load/{}", i % 8), QoS::AtMostOnce, false, payload.clone()).await.unwrap();
        }
        while got < (sent + BATCH).min(n) {
            match healthy.next_within(WAIT).await {
                Some(g) if g.topic.starts_with("load/") => got += 1,
                Some(_) => {}
                None => panic!("the healthy subscriber stopped after {got} of {n}"),
            }
        }
        if sent % 1000 == 0 {
            peak = peak.max(rss_kib(pid));
        }
    }
    let _publisher = publisher;
    peak = peak.max(rss_kib(pid));
    let growth = peak.saturating_sub(idle);
    eprintln!("stalled subscriber: RSS idle {idle} KiB, peak {peak} KiB, growth {growth} KiB");
    // The stalled subscriber's share is bounded by max_client_buffer (256 KiB, twice) plus socket
    // buffers; without the bound it held every message (40 MB and more).
    assert!(growth < 24 * 1024, "RSS grew by {growth} KiB over idle {idle} KiB");
    // What the stalled subscriber missed is counted in the broker's stats.
    let mut stats = subscribe(a, &[("gw/status/stats/broker", QoS::AtMostOnce)]).await;
    loop {
        let v: serde_json::Value =
            serde_json::from_str(&stats.next_on("gw/status/stats/broker").await.payload).unwrap();
        if v["qos0_dropped"].as_u64().unwrap() > 0 {
            assert_eq!(v["slow_clients_cut"], 0, "QoS 0 only: dropped, not cut");
            break;
        }
    }
    drop(stalled);
    drop(gw);
}

#[tokio::test]
async fn the_retained_store_is_bounded_and_says_what_it_refused() {
    // The gateway's own retained topics (availability, stats) count but are never refused.
    let (gw, _p) = gateway("  max_retained: 6\n  max_retained_bytes: 4KiB").await;
    let a = addr(&gw);
    let publisher = subscribe(a, &[]).await;
    // Room for what the gateway retains plus a few: fill it from a client.
    for i in 1..=8 {
        publisher.client.publish(format!("r/{i}"), QoS::AtLeastOnce, true, format!("v{i}")).await.unwrap();
    }
    let refused = || stats(&gw)["retained_refused"].as_u64().unwrap();
    wait_for("retained refusals counted", || refused() > 0).await;
    let late = subscribe(a, &[("r/#", QoS::AtLeastOnce)]).await;
    let mut kept: Vec<String> = late_retained(late).await;
    kept.sort();
    let n = kept.len();
    let kept: Vec<String> = kept.iter().map(|e| e.split('=').next().unwrap().to_string()).collect();
    assert!(n > 0 && n < 8, "some kept, some refused: {kept:?}");
    assert_eq!(refused(), 8 - n as u64, "each refusal counted");
    // Updating a stored topic always works, full or not; clearing one makes room for a new one.
    publisher.client.publish("r/1", QoS::AtLeastOnce, true, "new").await.unwrap();
    publisher.client.publish(kept[1].clone(), QoS::AtLeastOnce, true, "").await.unwrap();
    publisher.client.publish("r/9", QoS::AtLeastOnce, true, "v9").await.unwrap();
    // A payload over the byte bound is delivered but not retained.
    publisher.client.publish(kept[2].clone(), QoS::AtLeastOnce, true, vec![b'x'; 5000]).await.unwrap();
    wait_for("the oversized update refused", || refused() == 8 - n as u64 + 1).await;
    let late = subscribe(a, &[("r/#", QoS::AtLeastOnce)]).await;
    let now = late_retained(late).await;
    assert!(now.contains(&"r/1=new".to_string()), "{now:?}");
    assert!(now.contains(&"r/9=v9".to_string()), "{now:?}");
    assert!(!now.iter().any(|e| e.starts_with(&format!("{}=", kept[1]))), "cleared: {now:?}");
    gw.shutdown().await;
}

/// The retained messages a new subscriber gets on `r/`, as `topic=payload`.
async fn late_retained(mut sub: Subscriber) -> Vec<String> {
    let got = sub.drain_on("r/", Duration::from_millis(500)).await;
    got.into_iter().filter(|g| g.retain).map(|g| format!("{}={}", g.topic, g.payload)).collect()
}

#[tokio::test]
async fn a_client_reconnecting_at_once_with_the_same_id_is_never_refused() {
    let (gw, _p) = gateway("").await;
    let a = addr(&gw);
    let mut refused = 0;
    let mut previous: Option<TcpStream> = None;
    for i in 0..300 {
        // The previous connection says DISCONNECT and the client comes straight back, or it drops
        // without one as the new one arrives (a phone switching networks, a device rebooting), or
        // it stays and is taken over; with clean and with persistent sessions.
        if i % 3 == 0 {
            if let Some(mut p) = previous.take() {
                p.write_all(&[0xe0, 0]).await.unwrap();
            }
        }
        let mut s = TcpStream::connect(a).await.unwrap();
        let mut connect = connect_packet("same-id", 4, 30);
        if i % 2 == 1 {
            connect[9] = 0; // connect flags: persistent session
        }
        s.write_all(&connect).await.unwrap();
        if i % 3 == 1 {
            drop(previous.take());
        }
        let mut ack = [0u8; 4];
        tokio::time::timeout(WAIT, s.read_exact(&mut ack)).await.expect("CONNACK in time").unwrap();
        assert_eq!(ack[..2], [0x20, 2], "a CONNACK");
        if ack[3] != 0 {
            refused += 1;
        }
        previous = Some(s);
    }
    assert_eq!(refused, 0, "{refused} of 300 reconnects refused");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_broker_full_of_sessions_is_still_healthy() {
    let (gw, _p) = gateway("  max_sessions: 2").await;
    let a = addr(&gw);
    let _one = subscribe(a, &[]).await;
    let _two = subscribe(a, &[]).await;
    let third = subscribe_with(options(a, "third"), &[]).await.err();
    assert_eq!(third, Some(rumqttc::ConnectReturnCode::ServiceUnavailable));
    // The probe's own connection is answered (CONNACK 3): the gateway is full, not broken, and a
    // watchdog restart would only drop the two clients.
    gw.health(WAIT).await.expect("healthy while full");
    gw.shutdown().await;
}

/// The next systemd notification on `sock`, if one comes within `wait`.
async fn notification(sock: &tokio::net::UnixDatagram, wait: Duration) -> Option<String> {
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(wait, sock.recv(&mut buf)).await.ok()?.unwrap();
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test]
async fn out_of_descriptors_the_watchdog_stops_until_the_sockets_are_gone() {
    raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let p = pty();
    let port = free_port();
    let conf = dir.path().join("g.yaml");
    // No connection cap in the way: the descriptor limit is what runs out here.
    std::fs::write(
        &conf,
        format!(
            "gateway: {{ name: gw }}\nbroker: {{ listeners: [{{ bind: \"127.0.0.1:{port}\" }}], max_connections: 5000, connect_timeout: 60s }}\nports:\n  - {{ name: t, device: {}, framing: {{ type: lines }}, decoder: {{ type: csv, columns: [v] }} }}\nmaps:\n  - {{ port: t, topic: \"s/{{field}}\" }}\n",
            p.path.display()
        ),
    )
    .unwrap();
    // As a unit without LimitNOFILE runs it: soft and hard limit 1,024.
    let child = std::process::Command::new("sh")
        .args(["-c", "ulimit -n 1024 && exec \"$0\" run --config \"$1\""])
        .arg(env!("CARGO_BIN_EXE_ser2mqtt"))
        .arg(&conf)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "600000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _gw = ChildGuard(child);
    assert!(notification(&sock, WAIT).await.unwrap().starts_with("READY=1"));
    assert_eq!(notification(&sock, WAIT).await.unwrap(), "WATCHDOG=1");

    let a = SocketAddr::from(([127, 0, 0, 1], port));
    let mut idle = Vec::new();
    for _ in 0..1100 {
        idle.push(TcpStream::connect(a).await.unwrap());
    }
    // Keep-alives stop once the gateway has accepted enough of them to run out of descriptors; the
    // connects above return before it has (a loaded machine takes seconds to accept a thousand), so
    // wait for a silence of five watchdog periods, bounded by WAIT, and then for it to last.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut during = 0;
    while notification(&sock, Duration::from_millis(1500)).await.is_some() {
        during += 1;
        assert!(tokio::time::Instant::now() < deadline, "{during} keep-alives in {WAIT:?} while out of descriptors");
    }
    assert_eq!(
        notification(&sock, Duration::from_secs(3)).await,
        None,
        "keep-alives resumed while no client could get in"
    );
    // The sockets go (closed here; at the CONNECT deadline otherwise): keep-alives come back.
    drop(idle);
    assert_eq!(notification(&sock, WAIT).await.as_deref(), Some("WATCHDOG=1"));
}
