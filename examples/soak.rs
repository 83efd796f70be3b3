//! The chaos soak: 16 simulated sensors on real ptys feed the real gateway binary, which bridges to
//! a real Mosquitto through a fault-injecting TCP proxy, while a driver cuts the link (refused and
//! black-holed), restarts the cloud broker, SIGKILLs and restarts the gateway and unplugs ptys. At
//! the end every sequence number written is looked for at a cloud subscriber: missing ones (and
//! whether each falls in the commit window before a SIGKILL), duplicates and order per topic, with
//! the gateway's RSS and open descriptors sampled once a second.
//!
//! Not part of the test run (it takes minutes); run by `bench/soak.sh`. Everything is on 127.0.0.1.
//! Usage: soak BIN [--secs N] [--ports N] [--hz N] [--qos 1|2] [--seed N] [--commit-interval MS]
//! (SOAK_KEEP=1 keeps the temp dir with the gateway's log and every arrival.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_serial::{SerialPort, SerialStream};

#[allow(dead_code)]
#[path = "../tests/support/cloud.rs"]
mod cloud;
mod support;
use support::pty;

use cloud::{persistence, Link, Mosquitto, Proxy};

/// How long the cloud helpers wait for a process to come up; generous on a loaded machine.
const WAIT: Duration = Duration::from_secs(10);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process the soak started; SIGKILLed by PID and reaped when dropped.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Args {
    bin: PathBuf,
    secs: u64,
    ports: usize,
    hz: u64,
    qos: u8,
    seed: u64,
    commit_ms: u64,
}

fn args() -> Args {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        bin: PathBuf::from(it.next().expect("usage: soak BIN [--secs N] [--ports N] [--hz N] [--qos 1|2] [--seed N]")),
        secs: 600,
        ports: 16,
        hz: 100,
        qos: 1,
        seed: 1,
        commit_ms: 100,
    };
    while let Some(flag) = it.next() {
        let v: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{flag} needs a number"));
        match flag.as_str() {
            "--secs" => a.secs = v,
            "--ports" => a.ports = v as usize,
            "--hz" => a.hz = v,
            "--qos" => a.qos = v as u8,
            "--seed" => a.seed = v,
            "--commit-interval" => a.commit_ms = v,
            _ => panic!("unknown flag {flag}"),
        }
    }
    assert!(matches!(a.qos, 1 | 2), "--qos 1 or 2");
    a
}

/// When each sequence number of one port was written (index = seq - 1).
type Written = Arc<Mutex<Vec<Instant>>>;

/// What the driver asks a sensor to do.
enum SensorCmd {
    /// Stop writing, wait for the gateway to read what is buffered, drop the pty (the device
    /// vanishes), and bring a new one up at the same path after the given time.
    Unplug(Duration),
    Stop,
}

/// A pty pair with the slave's path published as the stable symlink `link` (the gateway's device).
fn plug(link: &Path) -> (SerialStream, SerialStream) {
    let (master, slave) = pty::pair();
    let target = slave.name().expect("pty name");
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
    (master, slave)
}

/// One sensor: writes `seq\n` at `hz`, recording when each line was written.
async fn sensor(link: PathBuf, hz: u64, written: Written, mut cmds: mpsc::UnboundedReceiver<SensorCmd>) {
    let mut pty = Some(plug(&link));
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / hz));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let (master, _) = pty.as_mut().unwrap();
                seq += 1;
                // A pty holds a few KiB while the gateway is down; a full one blocks the sensor,
                // so nothing written is lost by the pty itself.
                master.write_all(format!("{seq}\n").as_bytes()).await.unwrap();
                written.lock().unwrap().push(Instant::now());
            }
            cmd = cmds.recv() => match cmd {
                Some(SensorCmd::Unplug(down)) => {
                    // Half a second for the gateway to read what it has not read yet: what the
                    // pty still holds when it vanishes is lost with the device, not by us.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    drop(pty.take());
                    let _ = std::fs::remove_file(&link);
                    tokio::time::sleep(down).await;
                    pty = Some(plug(&link));
                    tick.reset();
                }
                Some(SensorCmd::Stop) | None => return,
            }
        }
    }
}

/// What the cloud subscriber saw: (topic, sequence number) in arrival order.
type Seen = Arc<Mutex<Vec<(String, u64)>>>;

/// A persistent-session subscriber to `sites/#` at QoS 2 (no duplicates added between the cloud
/// and here), reconnecting through cloud restarts.
async fn subscriber(cloud: SocketAddr, seen: Seen) {
    let mut o = MqttOptions::new("soak-sub", cloud.ip().to_string(), cloud.port());
    o.set_clean_session(false);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut ev) = AsyncClient::new(o, 1024);
    loop {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(c))) if !c.session_present => {
                client.subscribe("sites/#", QoS::ExactlyOnce).await.unwrap();
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let n = std::str::from_utf8(&p.payload).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
                seen.lock().unwrap().push((p.topic.clone(), n));
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn config(dir: &Path, ports: usize, local: u16, up: SocketAddr, qos: u8, commit_ms: u64) -> String {
    let mut y = format!(
        r#"gateway: {{ name: gw, state_dir: "{dir}/state" }}
broker: {{ listeners: [{{ bind: "127.0.0.1:{local}" }}] }}
upstream:
  host: 127.0.0.1
  port: {up}
  tls: {{ enabled: false }}
  # A black hole is noticed within about 2 x keepalive; backoff kept short so cuts heal quickly.
  keepalive: 2s
  connect_timeout: 2s
  reconnect: {{ min: 200ms, max: 2s }}
  queue: {{ commit_interval: {commit_ms}ms }}
  forward: [{{ filter: "s/#", prefix: "sites/{{gateway}}/", qos: {qos} }}]
ports:
"#,
        dir = dir.display(),
        up = up.port()
    );
    for i in 0..ports {
        y += &format!(
            "  - {{ name: p{i}, device: \"{}/tty{i}\", framing: {{ type: lines }}, decoder: {{ type: csv, columns: [n] }}, reopen_backoff_max: 1s }}\n",
            dir.display()
        );
    }
    y += "maps:\n";
    for i in 0..ports {
        y += &format!("  - {{ port: p{i}, topic: \"s/p{i}/{{field}}\", qos: 1 }}\n");
    }
    y
}

struct Gateway {
    bin: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    child: Option<ChildGuard>,
}

impl Gateway {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(&self.bin)
            .args(["run", "--config"])
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the gateway");
        self.child = Some(ChildGuard(child));
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.0.id())
    }

    /// SIGKILL (ChildGuard's kill), then reaped.
    fn kill(&mut self) {
        self.child = None;
    }

    fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            Command::new("kill").args(["-TERM", &c.0.id().to_string()]).status().unwrap();
            let _ = c.0.wait();
        }
    }
}

/// (RSS in KiB, open descriptors) of a process, None once it is gone.
fn sample(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches(" kB").trim().parse().ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

#[derive(Default)]
struct Counts {
    refuse: u32,
    black_hole: u32,
    cloud_restart: u32,
    kill: u32,
    unplug: u32,
}

#[tokio::main]
async fn main() {
    let a = args();
    let bin = std::fs::canonicalize(&a.bin).expect("gateway binary");
    let tmp = tempfile::Builder::new()
        .prefix("soak-")
        .tempdir_in(std::env::var("TMPDIR").unwrap_or("/var/tmp".into()))
        .unwrap();
    let dir = tmp.path().to_path_buf();
    let mut rng = fastrand::Rng::with_seed(a.seed);
    let started = Instant::now();
    let t = move || started.elapsed().as_secs_f64();

    // The cloud keeps sessions across its restarts (SIGTERM saves them), with no cap on what it
    // queues for the subscriber while that one reconnects.
    let mut cloud = Mosquitto::start(&dir, &format!("{}max_queued_messages 0\n", persistence(&dir))).await;
    let proxy = Proxy::start(cloud.addr()).await;
    let seen: Seen = Arc::default();
    let sub = tokio::spawn(subscriber(cloud.addr(), seen.clone()));

    let mut sensors = Vec::new();
    let mut written = Vec::new();
    for i in 0..a.ports {
        let w: Written = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(sensor(dir.join(format!("tty{i}")), a.hz, w.clone(), rx));
        sensors.push(tx);
        written.push(w);
    }

    let local = free_port();
    let conf = dir.join("soak.yaml");
    std::fs::write(&conf, config(&dir, a.ports, local, proxy.addr, a.qos, a.commit_ms)).unwrap();
    let mut gw = Gateway { bin: bin.clone(), conf: conf.clone(), log: dir.join("gateway.log"), child: None };
    gw.start();

    // RSS/fd samples once a second: (time, rss KiB, fds).
    let samples: Arc<Mutex<Vec<(f64, u64, usize)>>> = Arc::default();
    let pid_now: Arc<Mutex<Option<u32>>> = Arc::new(Mutex::new(gw.pid()));
    {
        let (samples, pid_now) = (samples.clone(), pid_now.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let pid = *pid_now.lock().unwrap();
                if let Some((rss, fds)) = pid.and_then(sample) {
                    samples.lock().unwrap().push((t(), rss, fds));
                }
            }
        });
    }

    // (signal sent, process reaped) per SIGKILL.
    let mut kills: Vec<(Instant, Instant)> = Vec::new();
    let mut n = Counts::default();
    // The link is restored by a timer so other faults can happen while it is cut.
    let link_until: Arc<Mutex<Option<Instant>>> = Arc::default();
    let end = started + Duration::from_secs(a.secs);
    tokio::time::sleep(Duration::from_secs(3)).await;
    while Instant::now() + Duration::from_secs(12) < end {
        let event = rng.u32(0..100);
        match event {
            0..=39 => {
                let black = event >= 20;
                let secs = if black { rng.u64(2..9) } else { rng.u64(1..7) };
                if link_until.lock().unwrap().is_none() {
                    proxy.set(if black { Link::BlackHole } else { Link::Refuse });
                    if black {
                        n.black_hole += 1
                    } else {
                        n.refuse += 1
                    }
                    println!("{:7.1}s link {} for {secs}s", t(), if black { "black hole" } else { "refused" });
                    *link_until.lock().unwrap() = Some(Instant::now() + Duration::from_secs(secs));
                }
            }
            40..=54 => {
                println!("{:7.1}s cloud restart", t());
                cloud.restart_gracefully().await;
                n.cloud_restart += 1;
            }
            55..=79 => {
                let down = rng.u64(0..1500);
                println!("{:7.1}s gateway SIGKILL, restart after {down} ms", t());
                // Both ends: a line read after the signal went out but before it landed (a process
                // in an fsync dies only when that returns) is as lost as one read just before.
                let signalled = Instant::now();
                gw.kill();
                kills.push((signalled, Instant::now()));
                *pid_now.lock().unwrap() = None;
                tokio::time::sleep(Duration::from_millis(down)).await;
                gw.start();
                *pid_now.lock().unwrap() = gw.pid();
                n.kill += 1;
            }
            _ => {
                let port = rng.usize(0..a.ports);
                let down = Duration::from_millis(rng.u64(500..3000));
                println!("{:7.1}s unplug tty{port} for {down:?}", t());
                let _ = sensors[port].send(SensorCmd::Unplug(down));
                n.unplug += 1;
            }
        }
        // Faults 3-10 s apart; a cut link comes back when its time is up.
        let gap = Duration::from_millis(rng.u64(3000..10_000));
        let wake = Instant::now() + gap;
        while Instant::now() < wake {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let due = link_until.lock().unwrap().is_some_and(|u| Instant::now() >= u);
            if due {
                proxy.set(Link::Pass);
                *link_until.lock().unwrap() = None;
                println!("{:7.1}s link restored", t());
            }
        }
    }
    proxy.set(Link::Pass);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in &sensors {
        let _ = s.send(SensorCmd::Stop);
    }
    // Unplugged sensors finish their unplug first; give the last lines time to be read.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let produced: Vec<usize> = written.iter().map(|w| w.lock().unwrap().len()).collect();
    let total: usize = produced.iter().sum();
    let stopped = t();
    println!("{stopped:7.1}s sensors stopped, {total} readings written; draining",);

    // Drain: until every reading arrived or nothing new came for 30 s.
    let mut last = (0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got = seen.lock().unwrap().len();
        if got != last.0 {
            last = (got, Instant::now());
        }
        let have = unique(&seen.lock().unwrap());
        if have >= total || last.1.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    // When the last new reading arrived, counted from the sensors' stop.
    let drained = last.1.duration_since(started).as_secs_f64() - stopped;
    let status = Command::new(&bin).args(["queue", "status", "--json", "--config"]).arg(&conf).output().unwrap();
    gw.terminate();
    sub.abort();

    let ok = report(&a, &n, &kills, &written, &seen.lock().unwrap(), &samples.lock().unwrap(), drained);
    println!("\nqueue status at the end: {}", String::from_utf8_lossy(&status.stdout).trim());
    let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default();
    let errors = log.lines().filter(|l| l.contains("ERROR") || l.contains("panicked")).count();
    println!("gateway log: {} lines, {errors} ERROR/panic lines", log.lines().count());
    for l in log.lines().filter(|l| l.contains("panicked")).take(5) {
        println!("  {l}");
    }
    drop(cloud);
    if std::env::var_os("SOAK_KEEP").is_some() {
        // For a post-mortem: the gateway's log, its queue and every arrival, in order.
        let arrivals: String = seen.lock().unwrap().iter().map(|(t, n)| format!("{t} {n}\n")).collect();
        std::fs::write(dir.join("arrivals.txt"), arrivals).unwrap();
        println!("kept {}", tmp.keep().display());
    } else {
        drop(tmp);
    }
    if !ok {
        std::process::exit(1);
    }
}

fn unique(seen: &[(String, u64)]) -> usize {
    let mut s = std::collections::HashSet::new();
    seen.iter().filter(|(t, n)| s.insert((t.as_str(), *n))).count()
}

fn report(
    a: &Args,
    n: &Counts,
    kills: &[(Instant, Instant)],
    written: &[Written],
    seen: &[(String, u64)],
    samples: &[(f64, u64, usize)],
    drained: f64,
) -> bool {
    // The documented commit window: what was read in the last commit_interval before a SIGKILL.
    // The read itself lags the write by a few ms, so the check allows 50 ms on top.
    let window = Duration::from_millis(a.commit_ms + 50);
    let mut by_topic: HashMap<&str, Vec<u64>> = HashMap::new();
    for (topic, v) in seen {
        by_topic.entry(topic.as_str()).or_default().push(*v);
    }
    println!(
        "\n## soak: {} ports x {} Hz, {} s, QoS {} upstream, commit_interval {} ms, seed {}",
        a.ports, a.hz, a.secs, a.qos, a.commit_ms, a.seed
    );
    println!(
        "faults: {} refused, {} black holes, {} cloud restarts, {} gateway SIGKILLs, {} unplugs; last arrival {drained:.0} s after the sensors stopped\n",
        n.refuse, n.black_hole, n.cloud_restart, n.kill, n.unplug
    );
    println!("| port | written | arrived | missing | of which in a kill's commit window | duplicates | out of order |");
    println!("|---|---|---|---|---|---|---|");
    let mut tot = [0usize; 6];
    let mut worst_gap = Duration::ZERO;
    for (i, w) in written.iter().enumerate() {
        let times = w.lock().unwrap();
        let arrivals = by_topic.get(format!("sites/gw/s/p{i}/n").as_str()).cloned().unwrap_or_default();
        let mut first = vec![false; times.len() + 1];
        let (mut dups, mut disorder, mut high) = (0, 0, 0u64);
        for v in &arrivals {
            let v = *v as usize;
            if v == 0 || v > times.len() {
                continue;
            }
            if first[v] {
                dups += 1;
                continue;
            }
            first[v] = true;
            if (v as u64) < high {
                disorder += 1;
            }
            high = high.max(v as u64);
        }
        let missing: Vec<usize> = (1..=times.len()).filter(|v| !first[*v]).collect();
        let in_window = missing
            .iter()
            .filter(|v| {
                let w = times[*v - 1];
                // Read in the last commit interval before the signal, or while it was landing.
                kills.iter().any(|(signalled, reaped)| w <= *reaped && w + window >= *signalled)
            })
            .count();
        for v in &missing {
            let w = times[*v - 1];
            if let Some(k) = kills.iter().map(|(_, reaped)| reaped).filter(|k| **k >= w).min() {
                worst_gap = worst_gap.max(*k - w);
            }
        }
        let arrived = times.len() - missing.len();
        println!("| p{i} | {} | {arrived} | {} | {in_window} | {dups} | {disorder} |", times.len(), missing.len());
        for (k, x) in [times.len(), arrived, missing.len(), in_window, dups, disorder].into_iter().enumerate() {
            tot[k] += x;
        }
    }
    println!("| all | {} | {} | {} | {} | {} | {} |", tot[0], tot[1], tot[2], tot[3], tot[4], tot[5]);
    if tot[2] > 0 {
        println!("\nlongest time from a missing reading's write to the next SIGKILL: {worst_gap:?}");
    }
    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        let mut rss: Vec<u64> = samples.iter().map(|s| s.1).collect();
        rss.sort_unstable();
        let max_fd = samples.iter().map(|s| s.2).max().unwrap();
        println!(
            "\nRSS KiB: first {} median {} max {} last {}; open fds: first {} max {} last {} ({} samples)",
            first.1,
            rss[rss.len() / 2],
            rss[rss.len() - 1],
            last.1,
            first.2,
            max_fd,
            last.2,
            samples.len()
        );
        // Per minute, so growth over time shows.
        let mut line = String::from("RSS KiB / fds per minute (max):");
        let mut minute = 0;
        while let Some(max) = samples.iter().filter(|s| (s.0 / 60.0) as u64 == minute).map(|s| (s.1, s.2)).max() {
            line += &format!(" {}:{}/{}", minute, max.0, max.1);
            minute += 1;
        }
        println!("{line}");
    }
    let lost_outside = tot[2] - tot[3];
    println!(
        "\nverdict: {}",
        if lost_outside == 0 && tot[5] == 0 {
            "nothing lost outside a SIGKILL's commit window, order kept"
        } else {
            "LOSS OR DISORDER outside the documented limits"
        }
    );
    lost_outside == 0 && tot[5] == 0
}
