//! `/metrics` and `/healthz` over real HTTP: the counters a Prometheus server reads (parsed as it
//! parses them) equal what happened on the wire, and `/healthz` gives the watchdog's verdict.

use std::collections::HashMap;
use std::net::SocketAddr;

use rumqttc::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// One HTTP/1.1 GET: the status code, the content type and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to the metrics listener");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut raw = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut raw)).await.expect("response in time").unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(String::from))
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// `/metrics` parsed by a Prometheus text-format parser: value by `name{label="value",…}`.
async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, content_type, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    assert!(body.ends_with("# EOF\n"), "an OpenMetrics exposition ends with # EOF");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            labels.sort();
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                other => panic!("unexpected sample type {other:?}"),
            };
            let name = if labels.is_empty() { s.metric } else { format!("{}{{{}}}", s.metric, labels.join(",")) };
            (name, value)
        })
        .collect()
}

fn config(device: &std::path::Path) -> ser2mqtt::config::Config {
    config_from(&format!(
        r#"
metrics: {{ bind: "127.0.0.1:0" }}
ports:
  - name: a
    device: {}
    framing: {{ type: lines, delimiter: "\r\n" }}
    checksum: {{ type: nmea }}
    decoder: {{ type: regex, patterns: ['^\$T,(?P<t>[^*]+)'] }}
maps:
  - {{ port: a, topic: "t/{{field}}" }}
"#,
        device.display()
    ))
}

#[tokio::test]
async fn metrics_count_what_happened_to_each_port_and_the_broker() {
    let mut pty = pty();
    let gw = start(config(&pty.path)).await;
    let metrics = gw.metrics_addr().expect("metrics served");
    let mut sub = subscribe(addr(&gw), &[("t/#", QoS::AtLeastOnce)]).await;
    for t in ["1", "2", "3"] {
        pty.write(&ser2mqtt::simulate::nmea_sentence(&format!("T,{t}"))).await;
    }
    pty.write(b"$T,4*00\r\n").await; // a bad checksum: garbled
    pty.write(&ser2mqtt::simulate::nmea_sentence("X,5")).await; // checked, but no pattern claims it: ignored
    let got = sub.take_on("t/", 3).await;
    assert_eq!(payloads(&got), [("t/t", "1"), ("t/t", "2"), ("t/t", "3")]);
    wait_for("the last two frames counted", || {
        let s = &gw.stats()[0].1;
        s.garbled.load(std::sync::atomic::Ordering::Relaxed) == 1
            && s.ignored.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;

    let m = scrape(metrics).await;
    let port = |name: &str| m.get(&format!("{name}{{port=\"a\"}}")).copied().unwrap_or_else(|| panic!("{name}: {m:?}"));
    assert_eq!(port("ser2mqtt_port_frames_total"), 3.0);
    assert_eq!(port("ser2mqtt_port_garbled_total"), 1.0);
    assert_eq!(port("ser2mqtt_port_ignored_total"), 1.0);
    assert_eq!(port("ser2mqtt_port_decode_errors_total"), 0.0);
    assert_eq!(port("ser2mqtt_port_opens_total"), 1.0);
    assert_eq!(port("ser2mqtt_port_online"), 1.0);
    // The subscriber, and the gateway's own health probe client when one is connected.
    assert!(m["ser2mqtt_broker_connections"] >= 1.0, "{m:?}");
    assert!(m["ser2mqtt_broker_connections_accepted_total"] >= 1.0);
    assert_eq!(m["ser2mqtt_broker_subscriptions_refused_total"], 0.0);
    assert!(!m.keys().any(|k| k.starts_with("ser2mqtt_queue_")), "no queue without a store");

    let (status, _, body) = get(metrics, "/nothing").await;
    assert_eq!((status, body.as_str()), (404, "GET /metrics or /healthz\n"));
    gw.shutdown().await;
}

#[tokio::test]
async fn healthz_is_the_watchdog_verdict_and_turns_unhealthy_with_the_broker() {
    let pty = pty();
    let gw = start(config(&pty.path)).await;
    let metrics = gw.metrics_addr().unwrap();
    assert_eq!(get(metrics, "/healthz").await, (200, "text/plain".into(), "ok\n".into()));
    gw.broker().close().await;
    let (status, _, body) = get(metrics, "/healthz").await;
    assert_eq!(status, 503);
    assert_eq!(body, "unhealthy: the broker's server task has ended\n");
    assert_eq!(gw.health(std::time::Duration::from_secs(1)).await.unwrap_err(), "the broker's server task has ended");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_busy_metrics_address_fails_the_start_before_the_broker_runs() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    let pty = pty();
    let mut c = config(&pty.path);
    c.metrics = Some(ser2mqtt::metrics::MetricsSettings { bind: busy.to_string() });
    let err = ser2mqtt::gateway::Gateway::start(c).await.err().expect("refused");
    assert!(err.to_string().starts_with(&format!("cannot listen for /metrics on {busy}")), "{err}");
}
