//! Shared test parts, all real: pseudo-terminal pairs, the gateway started in-process on a free
//! loopback port, and MQTT subscribers that are real rumqttc clients over TCP.

#![allow(dead_code)]

pub mod cloud;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use ser2mqtt::config::{self, BrokerSettings, Config};
use ser2mqtt::gateway::Gateway;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_serial::SerialStream;

/// How long a test waits for something that should happen within milliseconds; generous because CI
/// machines are slow and a timeout here only decides how long a failing test takes to fail.
pub const WAIT: Duration = Duration::from_secs(10);

/// A pty pair: the test writes sensor bytes into `master`; the gateway opens `path` (the slave).
pub struct Pty {
    pub master: SerialStream,
    /// Held open so the pty lives even while the gateway has it closed; never read, and without the
    /// flock and TIOCEXCL a SerialStream would take, which would keep the gateway out.
    pub slave: std::os::fd::OwnedFd,
    pub path: PathBuf,
}

pub fn pty() -> Pty {
    use nix::fcntl::OFlag;
    use std::os::fd::{FromRawFd, IntoRawFd};
    // Both ends close-on-exec from the moment they exist: tests run in parallel threads, and a gateway,
    // socat or Mosquitto that another test forks in between would inherit them and keep the pty up
    // after this test drops it. (SerialStream::pair opens them without, and setting the flag after
    // leaves that window open.)
    let cloexec = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let master = nix::pty::posix_openpt(cloexec).expect("posix_openpt");
    nix::pty::grantpt(&master).expect("grantpt");
    nix::pty::unlockpt(&master).expect("unlockpt");
    let path = PathBuf::from(nix::pty::ptsname_r(&master).expect("ptsname"));
    let slave = nix::fcntl::open(&path, cloexec, nix::sys::stat::Mode::empty()).expect("open the pty slave");
    // Raw, as a serial line is, until the gateway sets its own: no echo back to the device and no
    // newline translation for bytes written before the gateway opens the port.
    let mut raw = nix::sys::termios::tcgetattr(&slave).expect("tcgetattr");
    nix::sys::termios::cfmakeraw(&mut raw);
    nix::sys::termios::tcsetattr(&slave, nix::sys::termios::SetArg::TCSANOW, &raw).expect("tcsetattr");
    // SAFETY: the fd is the open master end, owned here and handed over to the port.
    let port = unsafe { serialport::TTYPort::from_raw_fd(std::os::fd::OwnedFd::from(master).into_raw_fd()) };
    let master = SerialStream::try_from(port).expect("the master end as a SerialStream");
    Pty { master, slave, path }
}

impl Pty {
    pub async fn write(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).await.expect("write to pty");
        self.master.flush().await.expect("flush pty");
    }
}

/// A shipped config file, its ports on the given devices and its broker on a free loopback port.
pub fn shipped_config(name: &str, devices: &[&Path]) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs").join(name);
    let mut c = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    for (port, dev) in c.ports.iter_mut().zip(devices) {
        port.device = ser2mqtt::serial::port::Device::Serial(dev.to_path_buf());
    }
    c.broker = BrokerSettings::local_only(loopback0());
    c
}

/// A config from YAML text, broker on a free loopback port unless the text names listeners.
pub fn config_from(yaml: &str) -> Config {
    let mut c = config::parse(yaml, Path::new("test.yaml")).unwrap_or_else(|e| panic!("{e}"));
    if !yaml.contains("listeners") {
        c.broker = BrokerSettings::local_only(loopback0());
    }
    c
}

pub fn loopback0() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Starts the gateway and waits until every port has been opened once.
pub async fn start(config: Config) -> Gateway {
    let gw = Gateway::start(config).await.expect("gateway starts");
    wait_for("every port opened", || gw.stats().iter().all(|(_, s)| s.opens.load(Ordering::Relaxed) > 0)).await;
    gw
}

pub fn addr(gw: &Gateway) -> SocketAddr {
    gw.broker_addrs()[0]
}

pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A message as a subscriber saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Got {
    pub topic: String,
    pub payload: String,
    pub qos: QoS,
    pub retain: bool,
}

/// A real MQTT client subscribed to some filters; received messages queue up for the test.
pub struct Subscriber {
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Got>,
    pub suback: Vec<SubscribeReasonCode>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn options(addr: SocketAddr, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// Connects and subscribes; returns once the SUBACK arrived. Panics if the connection is refused.
pub async fn subscribe(addr: SocketAddr, filters: &[(&str, QoS)]) -> Subscriber {
    subscribe_with(options(addr, &format!("sub-{}", fastrand::u32(..))), filters).await.expect("connect")
}

/// As `subscribe`, with given options; `Err` carries the CONNACK code of a refused connection.
pub async fn subscribe_with(opts: MqttOptions, filters: &[(&str, QoS)]) -> Result<Subscriber, ConnectReturnCode> {
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let (tx, rx) = mpsc::unbounded_channel();
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    // Wait for the CONNACK first.
    loop {
        match tokio::time::timeout(WAIT, eventloop.poll()).await.expect("CONNACK in time") {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(ConnectionError::ConnectionRefused(code)) => return Err(code),
            Err(e) => panic!("connect failed: {e}"),
        }
    }
    for (f, q) in filters {
        client.subscribe(*f, *q).await.expect("subscribe");
    }
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let got = Got {
                        topic: p.topic.clone(),
                        payload: String::from_utf8_lossy(&p.payload).into_owned(),
                        qos: p.qos,
                        retain: p.retain,
                    };
                    let _ = tx.send(got);
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    let _ = ack_tx.send(s.return_codes);
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let mut suback = Vec::new();
    for _ in filters {
        suback.extend(tokio::time::timeout(WAIT, ack_rx.recv()).await.expect("SUBACK in time").expect("SUBACK"));
    }
    Ok(Subscriber { client, rx, suback, task })
}

impl Subscriber {
    /// The next message, or None if nothing arrives within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Got> {
        tokio::time::timeout(wait, self.rx.recv()).await.ok().flatten()
    }

    /// The next message whose topic starts with `prefix` (others are skipped), within WAIT in all:
    /// a stream of other messages must not keep a failing test waiting for ever.
    pub async fn next_on(&mut self, prefix: &str) -> Got {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let got = self.next_within(left).await.unwrap_or_else(|| panic!("no message on {prefix}* in time"));
            if got.topic.starts_with(prefix) {
                return got;
            }
        }
    }

    /// Exactly `n` messages on topics starting with `prefix`, in arrival order.
    pub async fn take_on(&mut self, prefix: &str, n: usize) -> Vec<Got> {
        let mut v = Vec::new();
        while v.len() < n {
            v.push(self.next_on(prefix).await);
        }
        v
    }

    /// Messages on `prefix` that arrive within `quiet` of each other, until silence.
    pub async fn drain_on(&mut self, prefix: &str, quiet: Duration) -> Vec<Got> {
        let mut v = Vec::new();
        while let Some(g) = self.next_within(quiet).await {
            if g.topic.starts_with(prefix) {
                v.push(g);
            }
        }
        v
    }
}

pub fn payloads(v: &[Got]) -> Vec<(&str, &str)> {
    v.iter().map(|g| (g.topic.as_str(), g.payload.as_str())).collect()
}

/// A free loopback port, for the binary's own listeners (a test process cannot ask it for port 0's
/// answer); the tiny race with other tests is accepted.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process this test started; killed (by its PID) and reaped when dropped, so a failing test
/// leaves nothing behind.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ser2mqtt run --config FILE` as a child process (stderr discarded), ended when the guard drops.
pub fn run_binary(config: &Path) -> ChildGuard {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ser2mqtt"))
        .args(["run", "--config"])
        .arg(config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start ser2mqtt");
    ChildGuard(child)
}

/// Waits until process `pid` has `device` open (its `/proc/PID/fd` links), e.g. a gateway's port.
pub async fn wait_device_open(pid: u32, device: &Path) {
    let holds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.flatten().any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == device)))
            .unwrap_or(false)
    };
    wait_for(&format!("process {pid} opens {}", device.display()), holds).await;
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_listening(addr: SocketAddr) {
    let deadline = std::time::Instant::now() + WAIT;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "nothing listened on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
