//! The board load of `bench/board.sh`: N pseudo-terminals, each written a `temp=…,hum=…` line at a
//! fixed rate, read by a contender (the ser2mqtt release binary with its embedded broker, or the
//! Python baseline with Mosquitto), every field counted at a TCP subscriber. Prints one line of
//! figures for the measured window: readings/s delivered, CPU µs per reading and CPU % of the
//! contender's processes (from /proc), RSS and peak RSS, and the latency from a line's write to
//! the pty to its `hum` field at the subscriber (p50, p99, p99.9, max; `hum` carries a sequence
//! number so each message is matched to its write).
//!
//! Usage: board_load ser2mqtt BIN | python SCRIPT MOSQUITTO  [--ports N] [--hz N] [--secs N]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::AsyncWriteExt;
use tokio_serial::{SerialPort, SerialStream};

/// Time for the contender to open its ports and settle before the measured window.
const WARMUP: Duration = Duration::from_secs(3);

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// (utime + stime in clock ticks, RSS KiB, peak RSS KiB) of a process.
fn sample(pid: u32) -> (u64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces), numbered from 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (ticks, kib("VmRSS:"), kib("VmHWM:"))
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: board_load ser2mqtt BIN | python SCRIPT MOSQUITTO [--ports N] [--hz N] [--secs N]";
    let opt = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (ports, hz, secs) = (opt("--ports", 16) as usize, opt("--hz", 100), opt("--secs", 20));
    let dir = tempfile::tempdir().unwrap();
    let mut masters = Vec::new();
    let mut slaves = Vec::new();
    let mut devices = Vec::new();
    for _ in 0..ports {
        let (master, slave) = SerialStream::pair().expect("pty pair");
        devices.push(PathBuf::from(slave.name().unwrap()));
        masters.push(master);
        slaves.push(slave);
    }
    let port = free_port();
    let mut children = Vec::new();
    match args.first().map(String::as_str) {
        Some("ser2mqtt") => {
            let bin = args.get(1).expect(usage);
            let mut yaml = format!("broker: {{ listeners: [{{ bind: \"127.0.0.1:{port}\" }}] }}\nports:\n");
            for (i, d) in devices.iter().enumerate() {
                yaml += &format!(
                    "  - {{ name: p{i}, device: {}, baud_rate: 115200, framing: {{ type: lines, delimiter: \"\\r\\n\" }}, decoder: {{ type: key_value, keys: [temp, hum] }} }}\n",
                    d.display()
                );
            }
            yaml += "maps:\n";
            for i in 0..ports {
                yaml += &format!("  - {{ port: p{i}, topic: \"bench/{{port}}/{{field}}\" }}\n");
            }
            let conf = dir.path().join("gw.yaml");
            std::fs::write(&conf, yaml).unwrap();
            let c = Command::new(bin)
                .args(["run", "--config"])
                .arg(&conf)
                .env("RUST_LOG", "error")
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            children.push(Child(c));
        }
        Some("python") => {
            let (script, mosquitto) = (args.get(1).expect(usage), args.get(2).expect(usage));
            let conf = dir.path().join("m.conf");
            std::fs::write(&conf, format!("persistence false\nlistener {port} 127.0.0.1\nallow_anonymous true\n"))
                .unwrap();
            children.push(Child(
                Command::new(mosquitto)
                    .arg("-c")
                    .arg(&conf)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            ));
            wait_port(port);
            let py = Command::new("python3")
                .arg(script)
                .arg("127.0.0.1")
                .arg(port.to_string())
                .args(&devices)
                .spawn()
                .unwrap();
            children.push(Child(py));
        }
        _ => panic!("{usage}"),
    }
    wait_port(port);

    // The subscriber: every field message counted.
    let received = Arc::new(AtomicU64::new(0));
    // When each (port, sequence) line was written; latencies (µs) seen during the measured window.
    let written: Arc<Mutex<HashMap<(usize, u64), Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<u64>>> = Arc::default();
    let measuring = Arc::new(AtomicBool::new(false));
    let (w, l, m) = (written.clone(), latencies.clone(), measuring.clone());
    let mut o = MqttOptions::new("board-sub", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(o, 1024);
    client.subscribe("bench/#", QoS::AtMostOnce).await.unwrap();
    let r = received.clone();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = Instant::now();
                    r.fetch_add(1, Ordering::Relaxed);
                    // bench/p{i}/hum carries the line's sequence number.
                    let mut levels = p.topic.split('/');
                    if let (Some(port), Some("hum")) = (levels.nth(1), levels.next()) {
                        let port = port.trim_start_matches('p').parse::<usize>().ok();
                        let seq = std::str::from_utf8(&p.payload).ok().and_then(|s| s.trim().parse::<u64>().ok());
                        if let (Some(port), Some(seq)) = (port, seq) {
                            let sent = w.lock().unwrap().remove(&(port, seq));
                            if let (Some(sent), true) = (sent, m.load(Ordering::Relaxed)) {
                                l.lock().unwrap().push(now.duration_since(sent).as_micros() as u64);
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });

    // The sensors: one line per port every 1/hz, paced from a common start.
    let period = Duration::from_nanos(1_000_000_000 / hz);
    for (i, mut m) in masters.into_iter().enumerate() {
        let written = written.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            loop {
                tick.tick().await;
                n += 1;
                let line = format!("temp={}.{},hum={n}\r\n", 20 + (n % 10), i % 10);
                written.lock().unwrap().insert((i, n), Instant::now());
                if m.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
    tokio::time::sleep(WARMUP).await;
    let pids: Vec<u32> = children.iter().map(|c| c.0.id()).collect();
    let before: u64 = pids.iter().map(|p| sample(*p).0).sum();
    let got_before = received.load(Ordering::Relaxed);
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let mut rss_max = 0;
    while t0.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_max = rss_max.max(pids.iter().map(|p| sample(*p).1).sum());
    }
    let elapsed = t0.elapsed().as_secs_f64();
    measuring.store(false, Ordering::Relaxed);
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_unstable();
    let pct =
        |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
    let after: u64 = pids.iter().map(|p| sample(*p).0).sum();
    let got = received.load(Ordering::Relaxed) - got_before;
    let peak: u64 = pids.iter().map(|p| sample(*p).2).sum();
    // Clock ticks per second: 100 on Linux for every architecture this runs on.
    let cpu_s = (after - before) as f64 / 100.0;
    let offered = (ports as u64 * hz * 2) as f64 * elapsed;
    println!(
        "{} ports={ports} hz={hz} readings_per_s={:.0} delivered={:.3} cpu_us_per_reading={:.2} cpu_percent={:.1} rss_kib={rss_max} peak_rss_kib={peak} latency_p50_us={} latency_p99_us={} latency_p999_us={} latency_max_us={}",
        args[0],
        got as f64 / elapsed,
        got as f64 / offered,
        cpu_s * 1e6 / got.max(1) as f64,
        100.0 * cpu_s / elapsed,
        pct(0.5),
        pct(0.99),
        pct(0.999),
        lat.last().copied().unwrap_or(0),
    );
    drop(slaves);
}
