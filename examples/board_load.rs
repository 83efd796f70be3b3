//! The board load of `bench/board.sh`: N pseudo-terminals, each written a `temp=…,hum=…` line at a
//! fixed rate, read by a contender (the ser2mqtt release binary with its embedded broker, or the
//! Python or Node-RED baseline with Mosquitto), every field counted at a TCP subscriber. Prints one line of
//! figures for the measured window: readings/s delivered, CPU µs per reading and CPU % of the
//! contender's processes (from /proc), RSS and peak RSS, and the latency from a line's write to
//! the pty to its `hum` field at the subscriber (p50, p99, p99.9, max; `hum` carries a sequence
//! number so each message is matched to its write), and the start-up: spawn to the first reading at
//! the subscriber (sensors write from the spawn on; the subscriber subscribes as soon as the broker
//! accepts, so the figure is exact to one line period).
//!
//! `--burst N` writes N lines per port as fast as each pty takes them instead of pacing them, and
//! measures the readings/s delivered from the first write to the last arrival. `--bridge MOSQUITTO`
//! adds a cloud: a Mosquitto on a free port that the contender forwards `bench/#` to at QoS 1 (ser2mqtt
//! through its upstream bridge and disk queue, the Python baseline through its Mosquitto's bridge).
//!
//! `floor MOSQUITTO` is no gateway but the least a line can go through on this machine: per port a
//! `mosquitto_pub -l` (C) reading the pty in raw mode and publishing each whole line as it comes to
//! `bench/p{i}/hum` on a Mosquitto. One message per line, not one per field: its `delivered` is 0.5
//! and its CPU per reading is per message; what it gives is the latency floor of the VM, the harness
//! and a C client and broker, against which the gateways' latencies are read.
//!
//! `--tcp` (ser2mqtt only) serves each sensor as a device server on a TCP port instead of a pty, and
//! `--runner "CMD ARGS"` starts the binary through CMD: together, an ARM build under qemu-user.
//!
//! Usage: board_load ser2mqtt BIN | python SCRIPT MOSQUITTO | nodered RED_JS MOSQUITTO | floor MOSQUITTO  [--ports N] [--hz N] [--secs N]
//!        [--burst N] [--bridge MOSQUITTO] [--tcp] [--runner "CMD ARGS"]

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::AsyncWriteExt;
use tokio_serial::{SerialPort, SerialStream};

mod support;
use support::pty;

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

/// (CPU time in ns, RSS KiB, peak RSS KiB, anonymous RSS KiB) of a process. RSS counts
/// the binary's and libraries' code pages too (clean, shared, reclaimable); the anonymous part is
/// the process's own heap and stacks.
fn sample(pid: u32) -> (u64, u64, u64, u64) {
    // The scheduler's own run time of every thread (ns, exact), not utime+stime: those are sampled
    // at the timer tick, and a gateway woken by timer-paced writes runs right at the tick, so they
    // overcount it (up to 10x at low rates on this VM). A thread that ends inside the window is missed.
    let ns: u64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (ns, kib("VmRSS:"), kib("VmHWM:"), kib("RssAnon:"))
}

/// (RSS, anonymous RSS) in KiB, summed over the processes, each read once.
fn memory(pids: &[u32]) -> (u64, u64) {
    pids.iter().map(|p| sample(*p)).fold((0, 0), |(r, a), s| (r + s.1, a + s.3))
}

/// A Mosquitto on `port` (loopback, anonymous, no persistence) with `extra` appended to its config,
/// written into `dir` as `name`; returns once it accepts connections.
fn mosquitto(bin: &str, dir: &std::path::Path, name: &str, port: u16, extra: &str) -> Child {
    let conf = dir.join(name);
    std::fs::write(&conf, format!("persistence false\nlistener {port} 127.0.0.1\nallow_anonymous true\n{extra}"))
        .unwrap();
    let child =
        Child(Command::new(bin).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    wait_port(port);
    child
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
    let usage = "usage: board_load ser2mqtt BIN | python SCRIPT MOSQUITTO | nodered RED_JS MOSQUITTO | floor MOSQUITTO [--ports N] [--hz N] [--secs N] [--burst N] [--bridge MOSQUITTO] [--tcp] [--runner \"CMD ARGS\"]";
    let opt = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (ports, hz, secs) = (opt("--ports", 16) as usize, opt("--hz", 100), opt("--secs", 20));
    let burst = opt("--burst", 0);
    let bridge = args.iter().position(|a| a == "--bridge").and_then(|i| args.get(i + 1)).cloned();
    let tcp = args.iter().any(|a| a == "--tcp");
    let runner: Vec<String> = args
        .iter()
        .position(|a| a == "--runner")
        .and_then(|i| args.get(i + 1))
        .map(|r| r.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    let mut masters = Vec::new();
    let mut slaves = Vec::new();
    let mut devices = Vec::new();
    for _ in 0..ports {
        if tcp {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            devices.push(format!("tcp://{}", listener.local_addr().unwrap()));
            masters.push(Sensor::Tcp(listener));
        } else {
            let (master, slave) = pty::pair();
            devices.push(slave.name().unwrap());
            masters.push(Sensor::Pty(master));
            slaves.push(slave);
        }
    }
    let port = free_port();
    let mut children = Vec::new();
    // The cloud, not measured: only the contender's processes are.
    let mut cloud = None;
    let cloud_port = free_port();
    if let Some(mosquitto) = &bridge {
        cloud = Some(self::mosquitto(mosquitto, dir.path(), "cloud.conf", cloud_port, ""));
    }
    let spawned = Instant::now();
    match args.first().map(String::as_str) {
        Some("ser2mqtt") => {
            let bin = args.get(1).expect(usage);
            let mut command = Command::new(runner.first().unwrap_or(bin));
            command.args(runner.iter().skip(1)).args((!runner.is_empty()).then_some(bin));
            let mut yaml = format!("broker: {{ listeners: [{{ bind: \"127.0.0.1:{port}\" }}] }}\n");
            if bridge.is_some() {
                yaml += &format!(
                    "gateway: {{ state_dir: {} }}\nupstream: {{ host: 127.0.0.1, port: {cloud_port}, forward: [{{ filter: \"bench/#\", qos: 1 }}] }}\n",
                    dir.path().display()
                );
            }
            yaml += "ports:\n";
            for (i, d) in devices.iter().enumerate() {
                yaml += &format!(
                    "  - {{ name: p{i}, device: {}, baud_rate: 115200, framing: {{ type: lines, delimiter: \"\\r\\n\" }}, decoder: {{ type: key_value, keys: [temp, hum] }} }}\n",
                    d
                );
            }
            yaml += "maps:\n";
            for i in 0..ports {
                yaml += &format!("  - {{ port: p{i}, topic: \"bench/{{port}}/{{field}}\" }}\n");
            }
            let conf = dir.path().join("gw.yaml");
            std::fs::write(&conf, yaml).unwrap();
            let c = command
                .args(["run", "--config"])
                .arg(&conf)
                .env("RUST_LOG", "error")
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            children.push(Child(c));
        }
        Some("floor") => {
            children.push(mosquitto(args.get(1).expect(usage), dir.path(), "m.conf", port, ""));
            for (i, d) in devices.iter().enumerate() {
                // Raw, as a serial program sets its port: no echo, no CR to LF, reads return what is there.
                let relay = format!(
                    "stty raw -echo < {d} && exec mosquitto_pub -h 127.0.0.1 -p {port} -l -t bench/p{i}/hum < {d}"
                );
                children.push(Child(Command::new("sh").arg("-c").arg(relay).spawn().unwrap()));
            }
        }
        Some(baseline @ ("python" | "nodered")) => {
            let (gateway, mosquitto) = (args.get(1).expect(usage), args.get(2).expect(usage));
            let bridged = match bridge {
                Some(_) => format!(
                    "connection cloud\naddress 127.0.0.1:{cloud_port}\ntopic bench/# out 1\ncleansession false\n"
                ),
                None => String::new(),
            };
            children.push(self::mosquitto(mosquitto, dir.path(), "m.conf", port, &bridged));
            let gw = if baseline == "python" {
                Command::new("python3").arg(gateway).arg("127.0.0.1").arg(port.to_string()).args(&devices).spawn()
            } else {
                let flows = dir.path().join("flows.json");
                std::fs::write(&flows, node_red_flow(&devices, port).to_string()).unwrap();
                Command::new("node")
                    .arg(gateway)
                    .args(["--userDir"])
                    .arg(dir.path())
                    .args(["--port", &free_port().to_string()])
                    .arg(&flows)
                    .stdout(Stdio::null())
                    .spawn()
            };
            children.push(Child(gw.unwrap()));
        }
        _ => panic!("{usage}"),
    }
    // Paced sensors write from the spawn on, as a board's sensors do when the gateway starts; a
    // burst starts once the subscriber is there, so that every line of it is counted.
    let written: Arc<Mutex<HashMap<(usize, u64), Instant>>> = Arc::default();
    let mut masters = Some(masters);
    if burst == 0 {
        paced_sensors(masters.take().unwrap(), hz, written.clone());
    }
    wait_port(port);

    // The subscriber: every field message counted, the first and the last arrival noted.
    let received = Arc::new(AtomicU64::new(0));
    let arrivals: Arc<Mutex<(Option<Instant>, Option<Instant>)>> = Arc::default();
    // Latencies (µs) seen during the measured window, matched through `written`.
    let latencies: Arc<Mutex<Vec<u64>>> = Arc::default();
    let measuring = Arc::new(AtomicBool::new(false));
    let (w, l, m, a) = (written.clone(), latencies.clone(), measuring.clone(), arrivals.clone());
    let mut o = MqttOptions::new("board-sub", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(o, 1024);
    client.subscribe("bench/#", QoS::AtMostOnce).await.unwrap();
    let r = received.clone();
    let (subscribed, on_suback) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut subscribed = Some(subscribed);
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = Instant::now();
                    r.fetch_add(1, Ordering::Relaxed);
                    {
                        let mut a = a.lock().unwrap();
                        a.0.get_or_insert(now);
                        a.1 = Some(now);
                    }
                    // bench/p{i}/hum carries the line's sequence number (the floor's, the whole line).
                    let mut levels = p.topic.split('/');
                    if let (Some(port), Some("hum")) = (levels.nth(1), levels.next()) {
                        let port = port.trim_start_matches('p').parse::<usize>().ok();
                        let seq = std::str::from_utf8(&p.payload)
                            .ok()
                            .and_then(|s| s.rsplit("hum=").next())
                            .and_then(|s| s.trim().parse::<u64>().ok());
                        if let (Some(port), Some(seq)) = (port, seq) {
                            let sent = w.lock().unwrap().remove(&(port, seq));
                            if let (Some(sent), true) = (sent, m.load(Ordering::Relaxed)) {
                                l.lock().unwrap().push(now.duration_since(sent).as_micros() as u64);
                            }
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(s) = subscribed.take() {
                        let _ = s.send(());
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    let _ = on_suback.await;
    let pids: Vec<u32> = children.iter().map(|c| c.0.id()).collect();
    let cpu = |pids: &[u32]| pids.iter().map(|p| sample(*p).0).sum::<u64>();
    let (got, elapsed, cpu_ns, rss_max, anon_max) = if let Some(masters) = masters {
        // A burst: wait until every reading arrived, or none came for IDLE.
        const IDLE: Duration = Duration::from_secs(5);
        let expected = ports as u64 * burst * 2;
        let (before, t0) = (cpu(&pids), Instant::now());
        for (i, m) in masters.into_iter().enumerate() {
            tokio::spawn(async move {
                let mut m = m.open().await;
                let mut lines = String::new();
                for n in 1..=burst {
                    lines += &format!("temp={}.{},hum={n}\r\n", 20 + (n % 10), i % 10);
                }
                let _ = m.write_all(lines.as_bytes()).await;
                // Kept open until the process ends: a closed master hangs the reader's line up.
                std::future::pending::<()>().await;
            });
        }
        let (mut rss_max, mut anon_max) = (0, 0);
        let mut last = (0, Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (rss, anon) = memory(&pids);
            (rss_max, anon_max) = (rss_max.max(rss), anon_max.max(anon));
            let n = received.load(Ordering::Relaxed);
            if n >= expected || (n == last.0 && last.1.elapsed() > IDLE) {
                break;
            }
            if n != last.0 {
                last = (n, Instant::now());
            }
        }
        let end = arrivals.lock().unwrap().1.unwrap_or(t0);
        (received.load(Ordering::Relaxed), end.duration_since(t0).as_secs_f64(), cpu(&pids) - before, rss_max, anon_max)
    } else {
        tokio::time::sleep(WARMUP).await;
        let (before, got_before) = (cpu(&pids), received.load(Ordering::Relaxed));
        measuring.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        let (mut rss_max, mut anon_max) = (0, 0);
        while t0.elapsed() < Duration::from_secs(secs) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (rss, anon) = memory(&pids);
            (rss_max, anon_max) = (rss_max.max(rss), anon_max.max(anon));
        }
        let elapsed = t0.elapsed().as_secs_f64();
        measuring.store(false, Ordering::Relaxed);
        (received.load(Ordering::Relaxed) - got_before, elapsed, cpu(&pids) - before, rss_max, anon_max)
    };
    let startup = arrivals.lock().unwrap().0.map(|t| t.duration_since(spawned).as_millis()).unwrap_or(0);
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_unstable();
    let pct =
        |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
    let peak: u64 = pids.iter().map(|p| sample(*p).2).sum();
    let cpu_s = cpu_ns as f64 / 1e9;
    let offered = if burst > 0 { (ports as u64 * burst * 2) as f64 } else { (ports as u64 * hz * 2) as f64 * elapsed };
    println!(
        "{} ports={ports} hz={} bridge={} readings_per_s={:.0} delivered={:.3} cpu_us_per_reading={:.2} cpu_percent={:.1} rss_kib={rss_max} peak_rss_kib={peak} anon_rss_kib={anon_max} latency_p50_us={} latency_p99_us={} latency_p999_us={} latency_max_us={} startup_ms={startup}",
        args[0],
        if burst > 0 { "burst".to_string() } else { hz.to_string() },
        bridge.is_some(),
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
    drop(cloud);
}

/// The Node-RED baseline's flow, as a user would wire it: per port a `serial in` node (line split at
/// `\n`), a function node that turns `temp=…,hum=…` into one message per field, and one `mqtt out`
/// node (QoS 0) to the Mosquitto broker.
fn node_red_flow(devices: &[String], port: u16) -> serde_json::Value {
    let mut nodes = vec![
        serde_json::json!({ "id": "tab", "type": "tab", "label": "bench" }),
        serde_json::json!({ "id": "broker", "type": "mqtt-broker", "broker": "127.0.0.1", "port": port.to_string(),
            "clientid": "nodered", "protocolVersion": "4", "keepalive": "60", "cleansession": true }),
        serde_json::json!({ "id": "out", "z": "tab", "type": "mqtt out", "broker": "broker", "qos": "0",
            "retain": "false", "wires": [] }),
    ];
    for (i, d) in devices.iter().enumerate() {
        let func = format!(
            "return [msg.payload.trim().split(',').map(kv => {{ const [k, v] = kv.split('='); return {{ topic: 'bench/p{i}/' + k, payload: v }}; }})];"
        );
        nodes.push(serde_json::json!({ "id": format!("conf{i}"), "type": "serial-port", "serialport": d,
            "serialbaud": "115200", "databits": "8", "parity": "none", "stopbits": "1", "waitfor": "",
            "newline": "\\n", "bin": "false", "out": "char", "addchar": "", "responsetimeout": "10000" }));
        nodes.push(serde_json::json!({ "id": format!("in{i}"), "z": "tab", "type": "serial in",
            "serial": format!("conf{i}"), "wires": [[format!("f{i}")]] }));
        nodes.push(serde_json::json!({ "id": format!("f{i}"), "z": "tab", "type": "function", "func": func,
            "outputs": 1, "wires": [["out"]] }));
    }
    serde_json::Value::Array(nodes)
}

/// Where a sensor writes: the master side of a pty, or (`--tcp`, for qemu, which cannot emulate the
/// serial ioctls) a device server's TCP socket that the gateway connects to as `tcp://`.
enum Sensor {
    Pty(SerialStream),
    Tcp(tokio::net::TcpListener),
}

impl Sensor {
    async fn open(self) -> Box<dyn tokio::io::AsyncWrite + Unpin + Send> {
        match self {
            Sensor::Pty(m) => Box::new(m),
            Sensor::Tcp(l) => {
                let (socket, _) = l.accept().await.unwrap();
                let _ = socket.set_nodelay(true);
                Box::new(socket)
            }
        }
    }
}

/// One line per port every 1/hz, paced from a common start; each write's time noted for the latency.
fn paced_sensors(masters: Vec<Sensor>, hz: u64, written: Arc<Mutex<HashMap<(usize, u64), Instant>>>) {
    let period = Duration::from_nanos(1_000_000_000 / hz);
    for (i, m) in masters.into_iter().enumerate() {
        let written = written.clone();
        tokio::spawn(async move {
            let mut m = m.open().await;
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
}
