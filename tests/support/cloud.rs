//! The "cloud" side of upstream tests, all real: a Mosquitto process on a free loopback port with its
//! own config file, a TCP proxy that can refuse or black-hole the link, and a throwaway CA (rcgen)
//! for TLS and mutual TLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{free_port, ChildGuard, WAIT};

fn mosquitto_bin() -> PathBuf {
    // Debian installs the broker in /usr/sbin, which is not on every user's PATH.
    ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("mosquitto"))
}

/// A Mosquitto broker this test started (killed by PID when dropped).
pub struct Mosquitto {
    pub port: u16,
    conf: PathBuf,
    child: Option<ChildGuard>,
}

impl Mosquitto {
    /// Plain MQTT on a free loopback port, anonymous allowed, no persistence (a restart forgets
    /// every session and retained message). `extra` is appended to the listener's settings.
    pub async fn start(dir: &Path, extra: &str) -> Mosquitto {
        // A port picked free can be taken by a parallel test before Mosquitto binds it: try again.
        for _ in 0..5 {
            let port = free_port();
            let conf = dir.join(format!("mosquitto-{port}.conf"));
            std::fs::write(
                &conf,
                format!("persistence false\nlistener {port} 127.0.0.1\nallow_anonymous true\n{extra}\n"),
            )
            .unwrap();
            let mut m = Mosquitto { port, conf, child: None };
            if m.spawn().await {
                return m;
            }
        }
        panic!("mosquitto did not start (is the `mosquitto` package installed?)");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    async fn spawn(&mut self) -> bool {
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run mosquitto");
        let mut child = ChildGuard(child);
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if std::net::TcpStream::connect(self.addr()).is_ok() {
                self.child = Some(child);
                return true;
            }
            if child.0.try_wait().unwrap().is_some() || std::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    /// Kills the broker (SIGKILL: no clean shutdown, nothing saved).
    pub fn kill(&mut self) {
        self.child = None;
    }

    /// Stops it with SIGTERM (Mosquitto saves its persistence file on the way out) and starts it
    /// again on the same port.
    pub async fn restart_gracefully(&mut self) {
        if let Some(mut c) = self.child.take() {
            Command::new("kill").args(["-TERM", &c.0.id().to_string()]).status().unwrap();
            let _ = c.0.wait();
        }
        self.restart().await;
    }

    /// Starts it again on the same port with the same config.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = std::time::Instant::now() + WAIT;
        // The old socket may linger for a moment; Mosquitto exits if it cannot bind, so retry.
        while !self.spawn().await {
            assert!(std::time::Instant::now() < deadline, "mosquitto did not restart on {}", self.port);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Mosquitto settings that keep sessions and queued messages in `dir` across a graceful restart.
pub fn persistence(dir: &Path) -> String {
    // Started as root, Mosquitto drops to the `mosquitto` user and then cannot write a root-owned
    // directory: it only logs the failure and restarts empty. A directory anyone may write avoids
    // that (the temp dir it sits in is the test's own).
    let state = dir.join("mosquitto-state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    format!("persistence true\npersistence_location {}/\n", state.display())
}

/// What the proxy does with the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Pass,
    /// The listening socket is closed (connections are refused) and open connections are closed.
    Refuse,
    /// Connections stay open (new ones are accepted) but no byte gets through, either way, ever
    /// again on those connections: a dead NAT entry or a pulled cable far away.
    BlackHole,
}

/// A fault-injecting TCP proxy on a free loopback port in front of `target`.
pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Link>,
    stop: CancellationToken,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, rx) = watch::channel(Link::Pass);
        let stop = CancellationToken::new();
        tokio::spawn(serve(Some(listener), addr, target, rx, stop.clone()));
        Proxy { addr, mode, stop }
    }

    pub fn set(&self, link: Link) {
        self.mode.send_replace(link);
    }
}

async fn serve(
    mut listener: Option<TcpListener>,
    addr: SocketAddr,
    target: SocketAddr,
    mut mode: watch::Receiver<Link>,
    stop: CancellationToken,
) {
    // Closing every connection at once (on Refuse) cancels this generation's token.
    let mut generation = stop.child_token();
    // While refusing, the port stays bound but not listening, so connections are refused and no other
    // test can be given the port meanwhile (a freed port was once handed to another test's broker,
    // and a "refused" link delivered to it).
    let mut reserved: Option<tokio::net::TcpSocket> = None;
    loop {
        let current = *mode.borrow_and_update();
        match (current, listener.is_some()) {
            (Link::Refuse, true) => {
                listener = None;
                generation.cancel();
                generation = stop.child_token();
                reserved = Some(loop {
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    socket.set_reuseaddr(true).unwrap();
                    match socket.bind(addr) {
                        Ok(()) => break socket,
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                });
            }
            (Link::Pass | Link::BlackHole, false) => {
                listener = Some(match reserved.take() {
                    Some(socket) => socket.listen(1024).unwrap(),
                    // Not reached: a listener is only closed by Refuse, which reserves the port.
                    None => TcpListener::bind(addr).await.unwrap(),
                });
            }
            _ => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            r = mode.changed() => if r.is_err() { return },
            accepted = async { listener.as_ref().unwrap().accept().await }, if listener.is_some() => {
                let Ok((client, _)) = accepted else { continue };
                let conn = generation.clone();
                let m = mode.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else { return };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, m.clone(), conn.clone()), pump(sr, cw, m, conn));
                });
            }
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Link>,
    conn: CancellationToken,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if *mode.borrow_and_update() != Link::Pass {
            // Swallowed from here on: hold both halves open without moving a byte.
            conn.cancelled().await;
            return;
        }
        tokio::select! {
            _ = conn.cancelled() => return,
            _ = mode.changed() => continue,
            n = from.read(&mut buf) => {
                let n = match n { Ok(0) | Err(_) => return, Ok(n) => n };
                if *mode.borrow() != Link::Pass {
                    conn.cancelled().await;
                    return;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// PEM files of a test CA, a server certificate for 127.0.0.1 signed by it, and a client
/// certificate signed by it.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub fn pki(dir: &Path, name: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
    let ca = ca_params.self_signed(&ca_key).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let mut sp = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    sp.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    sp.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = sp.signed_by(&server_key, &ca, &ca_key).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
    cp.distinguished_name.push(DnType::CommonName, "gateway");
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = cp.signed_by(&client_key, &ca, &ca_key).unwrap();

    let write = |file: &str, pem: String| {
        let p = dir.join(format!("{name}-{file}"));
        std::fs::write(&p, pem).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        server_cert: write("server.pem", server.pem()),
        server_key: write("server.key", server_key.serialize_pem()),
        client_cert: write("client.pem", client.pem()),
        client_key: write("client.key", client_key.serialize_pem()),
    }
}
