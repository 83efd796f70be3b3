//! The daemon's lifecycle around the gateway: systemd readiness and watchdog notifications, SIGHUP
//! reloads, and the stop signal.
//!
//! The notify protocol is one datagram per state change to the socket systemd names in `NOTIFY_SOCKET`.
//! The socket is passed in explicitly (read from the environment once, in `main`) so that several
//! gateways in one test process can each talk to their own socket. Keep-alives are sent only while the
//! gateway proves itself healthy: a probe makes a round trip through its broker to a real client and
//! the publisher is making progress. A wedged broker or pipeline stops them, and systemd restarts us.

use std::future::Future;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{self, Config};
use crate::gateway::{Gateway, GatewayError};

/// Sends sd_notify states; does nothing when not started by systemd.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, UnixAddr)>,
}

impl Notifier {
    /// No notifications (not under systemd).
    pub fn none() -> Notifier {
        Notifier { target: None }
    }

    /// Notifications to `socket` (a path, or `@name` for an abstract socket as systemd may give).
    pub fn to(socket: &str) -> std::io::Result<Notifier> {
        let addr = match socket.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                UnixAddr::from_abstract_name(name)?
            }
            None => UnixAddr::from_pathname(socket)?,
        };
        Ok(Notifier { target: Some((UnixDatagram::unbound()?, addr)) })
    }

    /// From `NOTIFY_SOCKET`, if set.
    pub fn from_env() -> Notifier {
        match std::env::var("NOTIFY_SOCKET") {
            Ok(s) if !s.is_empty() => Notifier::to(&s).unwrap_or_else(|e| {
                tracing::warn!(socket = %s, error = %e, "NOTIFY_SOCKET is unusable; no systemd notifications");
                Notifier::none()
            }),
            _ => Notifier::none(),
        }
    }

    pub fn notify(&self, state: &str) {
        if let Some((sock, addr)) = &self.target {
            if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
                tracing::warn!(error = %e, state, "systemd notification failed");
            }
        }
    }
}

/// The watchdog period systemd asks for (`WATCHDOG_USEC`, for this process if `WATCHDOG_PID` is set).
pub fn watchdog_from_env() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// How the gateway is supervised.
pub struct Supervision {
    /// Re-read on SIGHUP; `None` (the demo) ignores SIGHUP.
    pub config_path: Option<PathBuf>,
    pub notifier: Notifier,
    /// Keep-alives are sent at half this period, when healthy.
    pub watchdog: Option<Duration>,
}

impl Supervision {
    pub fn none() -> Supervision {
        Supervision { config_path: None, notifier: Notifier::none(), watchdog: None }
    }
}

/// Runs the gateway until `shutdown` completes: READY=1 once the broker listens and every port was
/// tried, keep-alives while healthy, reloads on SIGHUP, STOPPING=1 and an orderly stop at the end.
pub async fn run(config: Config, sup: Supervision, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
    let gw = Gateway::start(config).await?;
    supervise(gw, sup, shutdown).await;
    Ok(())
}

/// As `run`, for a gateway already started.
pub async fn supervise(mut gw: Gateway, sup: Supervision, shutdown: impl Future<Output = ()>) {
    // Installed first: SIGHUP's default action would end the process.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    gw.ports_tried().await;
    let status = ready_status(&gw);
    sup.notifier.notify(&format!("READY=1\nSTATUS={status}"));
    tracing::info!("ready: {status}");

    // Half the period, as sd_watchdog_enabled(3) advises; a day when there is no watchdog (never fires
    // in practice, keeps one select arm).
    let period = sup.watchdog.map_or(Duration::from_secs(86_400), |w| w / 2);
    let mut tick = tokio::time::interval(period);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = async { hup.as_mut()?.recv().await } => {
                match &sup.config_path {
                    Some(path) => {
                        match reload(&mut gw, path).await {
                            Ok(()) => sup.notifier.notify(&format!("STATUS=configuration reloaded; {}", ready_status(&gw))),
                            Err(why) => sup.notifier.notify(&format!("STATUS=reload refused, running configuration kept: {why}")),
                        }
                    }
                    None => tracing::info!("SIGHUP ignored: no configuration file to reload"),
                }
            }
            _ = tick.tick(), if sup.watchdog.is_some() => {
                // The probe must finish well inside the period or the keep-alive would come too late.
                match gw.health(period / 2).await {
                    Ok(()) => sup.notifier.notify("WATCHDOG=1"),
                    Err(e) => tracing::error!(error = %e, "unhealthy: withholding the watchdog keep-alive"),
                }
            }
        }
    }
    tracing::info!("shutting down");
    sup.notifier.notify("STOPPING=1");
    gw.shutdown().await;
}

/// What `systemctl status` shows once the gateway is up: where the broker listens and how many
/// ports are open (a port that failed to open is retried, and says `offline` meanwhile).
fn ready_status(gw: &Gateway) -> String {
    let ports = gw.stats();
    let open = ports.iter().filter(|(_, s)| s.opens.load(std::sync::atomic::Ordering::Relaxed) > 0).count();
    let addrs: Vec<String> = gw.broker_addrs().iter().map(|a| a.to_string()).collect();
    let mut text = format!("broker listening on {}; {open} of {} ports open", addrs.join(", "), ports.len());
    let failed: Vec<&str> = ports
        .iter()
        .filter(|(_, s)| s.opens.load(std::sync::atomic::Ordering::Relaxed) == 0)
        .map(|(n, _)| &**n)
        .collect();
    if !failed.is_empty() {
        text += &format!(" (retrying {})", failed.join(", "));
    }
    text
}

/// Re-reads `path`. A file with problems leaves the running configuration in place and logs every
/// problem; a valid one is applied. `Err` carries the first problem, for the status line.
pub async fn reload(gw: &mut Gateway, path: &Path) -> Result<(), String> {
    match config::load(path) {
        Err(e) => {
            tracing::error!(config = %path.display(), "reload refused, running configuration kept:\n{e}");
            Err(config::first_problem(&e))
        }
        Ok(new) => {
            let r = gw.reload(new).await;
            if let Some(why) = r.refused {
                tracing::warn!(config = %path.display(), "reload refused, running configuration kept: {why}");
                return Err(why);
            }
            tracing::info!(
                config = %path.display(),
                started = ?r.started,
                restarted = ?r.restarted,
                stopped = ?r.stopped,
                unchanged = ?r.unchanged,
                "configuration reloaded"
            );
            if !r.needs_restart.is_empty() {
                tracing::warn!(settings = ?r.needs_restart, "these settings take effect only after a restart");
            }
            Ok(())
        }
    }
}
