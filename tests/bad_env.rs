//! Bad environments a user's machine can present: a config the gateway may not read, a state
//! directory it may not write, a serial device it may not open. Each gives an error that names the
//! path and the fix. The gateway runs as an unprivileged user (`nobody` through `setpriv` when the
//! tests run as root, whom permissions do not stop; else as the current user).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::{free_port, ChildGuard};

/// How long a refused start or an expected log line may take on a loaded machine.
const WAIT: Duration = Duration::from_secs(20);

fn unprivileged() -> Command {
    let bin = env!("CARGO_BIN_EXE_ser2mqtt");
    if nix::unistd::Uid::effective().is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", bin]);
        c
    } else {
        Command::new(bin)
    }
}

/// A temp dir the unprivileged user can enter.
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn config(dir: &Path, device: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("gw.yaml");
    let yaml = format!(
        "broker:\n  listeners: [{{ bind: \"127.0.0.1:{}\" }}]\n{extra}\
         ports:\n  - {{ name: climate, device: {}, framing: {{ type: lines }}, decoder: {{ type: key_value, keys: [t] }} }}\n\
         maps:\n  - {{ port: climate, topic: \"x/{{field}}\" }}\n",
        free_port(),
        device.display()
    );
    std::fs::write(&path, yaml).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

/// Runs `run --config` to its end and returns (exit code, stderr).
fn run_to_end(config: &Path) -> (Option<i32>, String) {
    let out = unprivileged().args(["run", "--config"]).arg(config).stdin(Stdio::null()).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn an_unreadable_config_names_the_file_the_error_and_the_fix() {
    let dir = open_dir();
    let cfg = config(dir.path(), Path::new("/dev/null"), "");
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    if !nix::unistd::Uid::effective().is_root() {
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    let (code, err) = run_to_end(&cfg);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains(&format!("cannot read config file {}: Permission denied", cfg.display())), "{err}");
    assert!(err.contains("make it readable by"), "{err}");
}

#[test]
fn an_unwritable_state_directory_names_the_directory_and_the_fix() {
    let dir = open_dir();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    // Root-owned 0755 (or, as a plain user, 0555): the gateway's user cannot create the queue there.
    let mode = if nix::unistd::Uid::effective().is_root() { 0o755 } else { 0o555 };
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(mode)).unwrap();
    let extra = format!("gateway:\n  state_dir: {}\n", state.display());
    let cfg = config(dir.path(), Path::new("/dev/null"), &extra);
    let (code, err) = run_to_end(&cfg);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains(&format!("queue database {}", state.join("queue.db").display())), "{err}");
    assert!(err.contains("make it writable by") && err.contains(&state.display().to_string()), "{err}");
    // Said once, not repeated by every layer of the error chain.
    assert_eq!(err.matches("unable to open database file").count(), 1, "{err}");
}

#[test]
fn a_device_without_permission_names_port_device_and_the_group_to_join_and_the_gateway_keeps_running() {
    let dir = open_dir();
    let device = dir.path().join("ttyUSB9");
    std::fs::write(&device, b"").unwrap();
    std::fs::set_permissions(&device, std::fs::Permissions::from_mode(0o000)).unwrap();
    let cfg = config(dir.path(), &device, "");
    let child = unprivileged()
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let (tx, rx) = mpsc::channel();
    for pipe in [
        Box::new(child.0.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.0.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let deadline = std::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    let line = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("cannot open serial port") => break l,
            Ok(l) => seen.push(l),
            Err(_) => panic!("no open failure logged; saw:\n{}", seen.join("\n")),
        }
    };
    let want = format!("cannot open serial port `climate` ({}): Permission denied", device.display());
    assert!(line.contains(&want), "{line}");
    assert!(line.contains("sudo usermod -aG "), "{line}");
    assert!(child.0.try_wait().unwrap().is_none(), "the gateway must keep running and retry: {line}");
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).status();
        assert!(ok.is_ok_and(|s| s.success()), "mount a tmpfs at {}", at.display());
        Tmpfs(at.into())
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).status();
        assert!(ok.is_ok_and(|s| s.success()), "remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The state directory fills up while the cloud is unreachable: readings keep reaching local
/// subscribers, those that could not be queued are counted, and queueing resumes when space returns.
/// Needs root to mount a tmpfs; as a plain user it says so and checks nothing.
#[tokio::test]
async fn a_full_state_filesystem_keeps_local_publishing_counts_what_was_not_queued_and_recovers() {
    use crate::support::*;
    use rumqttc::QoS;
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED: mounting a small tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&dir.path().join("state"), "192k");
    let mut p = pty();
    // The cloud is a port nothing listens on: everything stays queued.
    let yaml = format!(
        "gateway: {{ state_dir: {} }}\n\
         ports:\n  - {{ name: s, device: {}, framing: {{ type: lines }}, decoder: {{ type: key_value, keys: [n, pad] }} }}\n\
         maps:\n  - {{ port: s, topic: \"full/s\", publish: per_frame, qos: 1 }}\n\
         upstream:\n  host: 127.0.0.1\n  port: {}\n  forward: [{{ filter: \"full/#\" }}]\n  queue: {{ commit_interval: 0s }}\n",
        fs.0.display(),
        p.path.display(),
        free_port()
    );
    let gw = start(config_from(&yaml)).await;
    let mut sub = subscribe(addr(&gw), &[("full/#", QoS::AtLeastOnce)]).await;
    let pad = "x".repeat(200);
    // What the stats topic shows: the counters in memory (on disk they wait for space).
    let status = || gw.queue_status().unwrap();
    let mut n = 0;
    // Write readings until the store reports some that could not be queued; each one must still
    // reach the local subscriber.
    while status().not_queued == 0 {
        n += 1;
        assert!(n < 3_000, "the 192 KiB filesystem never filled: {:?}", status());
        p.write(format!("n={n},pad={pad}\n").as_bytes()).await;
        let got = sub.next_on("full/s").await;
        assert!(got.payload.contains(&format!("\"n\":{n},")), "published locally in order: {}", got.payload);
    }
    let full = status();
    assert!(full.depth > 0 && full.accepted == full.depth, "{full:?}");
    // Space returns: new readings are queued again.
    fs.resize("8m");
    for _ in 0..20 {
        n += 1;
        p.write(format!("n={n},pad={pad}\n").as_bytes()).await;
        let got = sub.next_on("full/s").await;
        assert!(got.payload.contains(&format!("\"n\":{n},")), "{}", got.payload);
    }
    wait_for("queueing resumes", || status().depth >= full.depth + 20).await;
    let after = status();
    assert!(after.not_queued >= full.not_queued, "{after:?}");
    assert_eq!(after.accepted, after.depth, "every accepted message is still queued: {after:?}");
    gw.shutdown().await;
}
